//! The binary: parse the command line, set up logging, hand over to the library. Errors print
//! once, with their cause chain; exit code 2 means the configuration was refused, 1 a runtime
//! failure.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use session_proxy::config::cli::{Cli, Command, SessionsCommand};
use session_proxy::{Proxy, downstream, store};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Flushes the last log lines when main returns, on every path.
    let _log = session_proxy::logging::init();
    let config = match cli.options.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("session-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("session-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            None | Some(Command::Run) => run(config).await,
            Some(Command::Check) => {
                // Also opens the store, so a bad directory or unreachable Redis shows now.
                store::open(&config.store).await?;
                println!("configuration ok");
                Ok(())
            }
            Some(Command::Sessions { command }) => sessions(config, command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("session-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: session_proxy::config::Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let upstream = config.upstream.clone();
    let admin_listen = config.admin.as_ref().map(|a| a.listen);
    let proxy = Proxy::open(config).await?;
    let bind = |addr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
    };
    let listener = bind(listen).await?;
    let admin = match admin_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    // One line on stdout per listener, so scripts and tests learn the ports when listening on
    // :0. The proxy's comes first.
    println!(
        "session-proxy listening on http://{} -> http://{upstream}",
        listener.local_addr()?
    );
    if let Some(admin) = &admin {
        println!("session-proxy admin on http://{}", admin.local_addr()?);
    }
    proxy
        .serve_with_admin(listener, admin, downstream::shutdown_signal())
        .await;
    Ok(())
}

fn parse_id(text: &str) -> anyhow::Result<session_proxy::session::SessionId> {
    session_proxy::session::SessionId::parse(text)
        .ok_or_else(|| anyhow::anyhow!("{text:?} is not a session id (32 characters of base64url)"))
}

async fn sessions(
    config: session_proxy::config::Config,
    command: SessionsCommand,
) -> anyhow::Result<()> {
    if matches!(config.store.kind, session_proxy::config::StoreKind::Memory) {
        anyhow::bail!(
            "the memory store lives inside the running proxy; there is nothing to reach from \
             here. Use the admin API (`[admin] listen`) or a persistent store (fs, redis)"
        );
    }
    let store = store::open(&config.store).await?.store;
    match command {
        SessionsCommand::Prune => {
            let removed = store.prune(store::now_ms()).await?;
            println!("removed {removed} expired sessions");
        }
        SessionsCommand::List { limit } => {
            let mut out = std::io::stdout().lock();
            store::walk(&*store, limit, |id, record| {
                writeln!(out, "{}", store::session_json(&id, &record)?)?;
                Ok(())
            })
            .await?;
        }
        SessionsCommand::Show { id } => {
            let id = parse_id(&id)?;
            match store.load(&id).await? {
                Some(record) => println!("{}", store::session_json(&id, &record)?),
                None => anyhow::bail!("no live session with this id"),
            }
        }
        SessionsCommand::Delete { id } => {
            if !store.delete(&parse_id(&id)?).await? {
                anyhow::bail!("no live session with this id");
            }
            println!("deleted");
        }
    }
    Ok(())
}
