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
    let proxy = Proxy::open(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    // One line on stdout, so scripts and tests learn the port when listening on :0.
    println!("session-proxy listening on http://{addr} -> http://{upstream}");
    proxy.serve(listener, downstream::shutdown_signal()).await;
    Ok(())
}

async fn sessions(
    config: session_proxy::config::Config,
    command: SessionsCommand,
) -> anyhow::Result<()> {
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
    }
    Ok(())
}
