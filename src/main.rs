//! The binary: parse the command line, set up logging, hand over to the library. Errors print
//! once, with their cause chain; exit code 2 means the configuration was refused, 1 a runtime
//! failure.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use session_proxy::config::cli::{AssertionCommand, Cli, Command, ConfigCommand, SessionsCommand};
use session_proxy::config::{LogFormat, StoreConfig, StoreKind};
use session_proxy::{Proxy, Stop, downstream, listen, store};

fn main() -> ExitCode {
    // First, while this is the only thread: it takes LISTEN_FDS and LISTEN_PID out of the
    // environment (systemd socket activation).
    let inherited = listen::Inherited::from_env();
    let cli = Cli::parse();
    // Needs no configuration: printed before one is read.
    if let Some(Command::Config {
        command: ConfigCommand::Reference,
    }) = cli.command
    {
        print!("{}", session_proxy::config::reference::render());
        return ExitCode::SUCCESS;
    }
    // The config decides the log's format, so it is read first; its errors go to stderr as
    // they always did.
    let config = match cli.options.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("session-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    // Flushes the last log lines when main returns, on every path.
    let _log = session_proxy::logging::init(config.log_format);
    // `sessions copy` names its two stores on the command line: refused like a config.
    let copy = match &cli.command {
        Some(Command::Sessions {
            command:
                SessionsCommand::Copy {
                    from,
                    to,
                    from_key_file,
                    to_key_file,
                    to_plain,
                },
        }) => match copy_stores(
            &cli.options,
            (from, from_key_file.as_deref()),
            (to, to_key_file.as_deref(), *to_plain),
        ) {
            Ok(stores) => Some(stores),
            Err(e) => {
                eprintln!("session-proxy: {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
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
        if let Some((from, to)) = copy {
            return copy_sessions(&from, &to).await;
        }
        match cli.command {
            None | Some(Command::Run) => run(config, cli.options, inherited).await,
            Some(Command::Check) => {
                // Also opens the store, so a bad directory or unreachable Redis shows now.
                store::open(&config.store).await?;
                if let Some(audit) = &config.audit {
                    session_proxy::audit::open_file(&audit.path).await?;
                }
                // Reads the assertion key (creating it if missing, as a start would).
                if let Some(assertion) = &config.assertion {
                    session_proxy::assertion::Signer::open(assertion)?;
                }
                say("configuration ok", || tracing::info!("configuration ok"));
                Ok(())
            }
            Some(Command::Sessions { command }) => sessions(config, command).await,
            Some(Command::Health { url }) => {
                let url = health_url(config.admin.as_ref(), url.as_deref())?;
                let status = health(&url).await?;
                say("healthy", || tracing::info!(url = %url, status, "healthy"));
                Ok(())
            }
            // Answered before the configuration was read.
            Some(Command::Config { .. }) => Ok(()),
            Some(Command::Assertion {
                command: AssertionCommand::Jwks,
            }) => {
                let Some(assertion) = &config.assertion else {
                    anyhow::bail!("[assertion] key_file is not set: there are no assertion keys");
                };
                let signer = session_proxy::assertion::Signer::open(assertion)?;
                println!("{}", signer.jwks());
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Refused for a setting (an unopenable audit log): the same exit as a bad config.
        Err(e) if is_config_error(&e) => {
            fail(&e);
            ExitCode::from(2)
        }
        Err(e) => {
            fail(&e);
            ExitCode::FAILURE
        }
    }
}

/// Writes a line for the operator on stdout: `message` as it is, or with `[log] format =
/// "json"` in force (a reload may change it) the tracing `event` (the same message, with fields) as one JSON object in the log's
/// own format, so that every line the process writes is JSON (containers and journald merge
/// stdout with the log on stderr).
fn say(message: &str, event: impl FnOnce()) {
    if session_proxy::logging::format() == LogFormat::Text {
        println!("{message}");
        return;
    }
    let stdout = session_proxy::logging::json_subscriber(
        tracing_subscriber::EnvFilter::new("info"),
        std::io::stdout,
    );
    tracing::subscriber::with_default(stdout, event);
}

/// Writes why the process stops on stderr: `session-proxy: {error}`, or with `[log] format =
/// "json"` in force an `error` event in the log's JSON format.
fn fail(error: &anyhow::Error) {
    if session_proxy::logging::format() == LogFormat::Json {
        tracing::error!(error = format!("{error:#}"), "session-proxy stops");
    } else {
        eprintln!("session-proxy: {error:#}");
    }
}

/// What `health` asks: `url` as given, else `/healthz` on the admin listener, an unspecified
/// address (`0.0.0.0`, `::`) asked on the loopback of its family.
fn health_url(
    admin: Option<&session_proxy::config::AdminConfig>,
    url: Option<&str>,
) -> anyhow::Result<http::Uri> {
    let text = match (url, admin) {
        (Some(url), _) => url.to_owned(),
        (None, Some(admin)) => {
            let mut at = admin.listen;
            if at.ip().is_unspecified() {
                at.set_ip(match at {
                    std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            format!("http://{at}/healthz")
        }
        (None, None) => anyhow::bail!(
            "health: admin.listen is not set, so there is no /healthz to ask: turn the admin \
             listener on or give the URL"
        ),
    };
    let uri: http::Uri = text
        .parse()
        .map_err(|e| anyhow::anyhow!("health: {text} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        anyhow::bail!("health: {text}: only http://host:port/path URLs are asked");
    }
    Ok(uri)
}

/// One `GET` of `url` over HTTP/1.1 with `Connection: close`, within 5 s: the status when it is
/// 200, else an error naming what came back. Enough HTTP for a probe of our own admin
/// listener; no redirects, no TLS.
async fn health(url: &http::Uri) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let authority = url
        .authority()
        .ok_or_else(|| anyhow::anyhow!("health: {url} names no host"))?;
    // `host()` keeps an IPv6 address's brackets; the resolver wants it bare.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((host, port)).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        // The status line is all that is read: `HTTP/1.1 200 OK`.
        let mut head = [0u8; 64];
        let mut got = 0;
        while got < head.len() && !head[..got].contains(&b'\n') {
            match stream.read(&mut head[got..]).await? {
                0 => break,
                n => got += n,
            }
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&head[..got]).into_owned())
    };
    let head = tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("health: {url} did not answer within 5s"))?
        .map_err(|e| anyhow::anyhow!("health: {url}: {e}"))?;
    let line = head.lines().next().unwrap_or("").trim();
    match line.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()) {
        Some(200) => Ok(200),
        _ => anyhow::bail!("health: {url} answered {line:?}, not 200"),
    }
}

fn is_config_error(e: &anyhow::Error) -> bool {
    e.downcast_ref::<session_proxy::StartError>()
        .is_some_and(session_proxy::StartError::is_config)
        || e.downcast_ref::<session_proxy::audit::OpenError>()
            .is_some()
        || e.downcast_ref::<session_proxy::assertion::KeyError>()
            .is_some()
}

async fn run(
    config: session_proxy::config::Config,
    options: session_proxy::config::cli::Options,
    inherited: listen::Inherited,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // First, before the store opens or a port is bound: from here on a SIGHUP reloads the
    // configuration instead of ending the process (the signal's default action).
    let hangup = signal(SignalKind::hangup())
        .map_err(|e| anyhow::anyhow!("cannot listen for SIGHUP: {e}"))?;
    session_proxy::secrets::warn_if_world_readable(&config.cookie);
    session_proxy::secrets::warn_if_store_keys_world_readable(&config.store);
    let listen = config.listen;
    let upstream = config.upstream.clone();
    let admin_listen = config.admin.as_ref().map(|a| a.listen);
    let upgrade_socket = config.upgrade_socket.clone();
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let proxy = Proxy::open(config).await?;
    tokio::spawn(proxy.reloader().on_hangup(hangup, options));
    // After the store opened: a running proxy hands its listeners over only to a process that
    // is ready to serve on them.
    let wanted = listen::Wanted {
        public: listen,
        admin: admin_listen,
        upgrade_socket: upgrade_socket.as_deref(),
    };
    let mut listeners = listen::acquire(wanted, inherited).await?;
    // The predecessor, if any, drains from here; this process offers its listeners to the next.
    let offer = listeners.serving().await?;
    let (listener, admin) = (&listeners.public, listeners.admin.as_ref());
    let (public_from, admin_from) = listeners.sources;
    tracing::info!(
        listener = "public",
        address = %listener.local_addr()?,
        source = public_from.as_str(),
        "listening socket"
    );
    if let (Some(admin), Some(source)) = (admin, admin_from) {
        tracing::info!(
            listener = "admin",
            address = %admin.local_addr()?,
            source = source.as_str(),
            "listening socket"
        );
    }
    // One line on stdout per listener, so scripts and tests learn the ports when listening on
    // :0. The proxy's comes first.
    let listening = format!("{scheme}://{}", listener.local_addr()?);
    let upstream = format!("http://{upstream}");
    let message = format!("session-proxy listening on {listening} -> {upstream}");
    say(&message, || {
        tracing::info!(listen = listening, upstream, "{message}")
    });
    if let Some(admin) = &admin {
        let admin = format!("http://{}", admin.local_addr()?);
        let message = format!("session-proxy admin on {admin}");
        say(&message, || tracing::info!(admin, "{message}"));
    }
    let shutdown = async move {
        let handed_over = async {
            match offer {
                Some(offer) => offer.handed_over().await,
                None => std::future::pending().await,
            }
        };
        // Whichever comes first, the offer (and its copies of the sockets) is dropped here.
        tokio::select! {
            () = downstream::shutdown_signal() => Stop::Drain,
            () = handed_over => Stop::HandedOver,
        }
    };
    proxy
        .serve_until(listeners.public, listeners.admin, shutdown)
        .await;
    Ok(())
}

/// The session a `show` or `delete` names: by its handle, or (`--id`) by its id, hashed here.
/// An id is never echoed back: it is a bearer credential.
fn named(handle: Option<&str>, id: Option<&str>) -> anyhow::Result<session_proxy::session::Handle> {
    use session_proxy::session::{Handle, NotAHandle, SessionId};
    if let Some(id) = id {
        return SessionId::parse(id)
            .map(|id| id.handle())
            .ok_or_else(|| anyhow::anyhow!("--id: not a session id (32 characters of base64url)"));
    }
    let text = handle.unwrap_or_default();
    Handle::named(text).map_err(|why| match why {
        NotAHandle::AnId => {
            anyhow::anyhow!("that is a session id, not a handle: pass it as --id ID")
        }
        NotAHandle::Malformed => {
            anyhow::anyhow!("{text:?} is not a session handle (43 characters of base64url)")
        }
    })
}

async fn sessions(
    config: session_proxy::config::Config,
    command: SessionsCommand,
) -> anyhow::Result<()> {
    if matches!(config.store.kind, session_proxy::config::StoreKind::Memory) {
        anyhow::bail!(
            "the memory store lives inside the running proxy; there is nothing to reach from \
             here. Use the admin API (`[admin] listen`) or a persistent store (sqlite, fs, redis)"
        );
    }
    if let SessionsCommand::Migrate = command {
        return migrate(&config.store).await;
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
        SessionsCommand::Show { handle, id } => {
            let handle = named(handle.as_deref(), id.as_deref())?;
            match store.load(&handle).await? {
                Some(record) => println!("{}", store::session_json(&handle, &record)?),
                None => anyhow::bail!("no live session with this handle"),
            }
        }
        SessionsCommand::Delete { handle, id } => {
            let handle = named(handle.as_deref(), id.as_deref())?;
            if !store.delete(&handle).await? {
                anyhow::bail!("no live session with this handle");
            }
            println!("deleted");
        }
        SessionsCommand::User { user } => {
            let user = config.session.indexed_user(&user);
            let mut found = store.user_sessions(&user).await?;
            found.sort_by_key(|(id, r)| (r.created_at, *id));
            let mut out = std::io::stdout().lock();
            for (id, record) in found {
                writeln!(out, "{}", store::session_json(&id, &record)?)?;
            }
        }
        SessionsCommand::Revoke { user } => {
            let user = config.session.indexed_user(&user);
            let destroyed = store::users::revoke(&*store, &user, None).await?;
            println!("revoked {} sessions", destroyed.len());
        }
        // Handled before the configured store is opened: it names its own two.
        SessionsCommand::Copy { .. } => {}
        // Handled before: it opens the store its own way.
        SessionsCommand::Migrate => {}
    }
    Ok(())
}

/// `sessions migrate`: Redis moves what a release before handles left under session ids;
/// sqlite and fs did their migration when opened, so opening them is all there is to do.
async fn migrate(config: &StoreConfig) -> anyhow::Result<()> {
    match &config.kind {
        #[cfg(feature = "redis")]
        StoreKind::Redis(redis) => {
            let store =
                store::redis::RedisStore::open_indexed(redis.clone(), config.users.clone()).await?;
            let done = store.migrate().await?;
            println!(
                "moved {} sessions to their handles ({} expired and removed, {} unreadable or \
                 already moved and removed, {} user-index entries rewritten); the store is \
                 marked migrated: proxies started from now on skip the lookup of old keys",
                done.moved, done.expired, done.dropped, done.members
            );
        }
        StoreKind::Sqlite(_) => {
            store::open(config).await?;
            println!(
                "the sqlite file is migrated when it is opened: it is up to date, nothing to do"
            );
        }
        StoreKind::Fs(_) => {
            store::open(config).await?;
            println!(
                "the fs directory is migrated when it is opened: it is up to date, nothing to do"
            );
        }
        StoreKind::Postgres(_) => {
            store::open(config).await?;
            println!(
                "the postgres schema is migrated when it is opened: it is up to date, nothing to do"
            );
        }
        // Refused by `sessions` before this is reached; without the feature, `open` says why.
        _ => {
            store::open(config).await?;
        }
    }
    Ok(())
}

/// The two stores of `sessions copy`. The memory store is refused on either side: a new
/// process's is empty, and what is copied into it is gone when the command exits.
///
/// Each store's encryption keys are the configured ones unless a key file (or `--to-plain`)
/// says otherwise, so a copy re-encrypts (or decrypts) between stores with different keys.
fn copy_stores(
    options: &session_proxy::config::cli::Options,
    (from, from_keys): (&str, Option<&std::path::Path>),
    (to, to_keys, to_plain): (&str, Option<&std::path::Path>, bool),
) -> anyhow::Result<(StoreConfig, StoreConfig)> {
    use session_proxy::config::cli::StoreKeys;
    let from_keys = from_keys.map_or(StoreKeys::Configured, |f| {
        StoreKeys::File("--from-key-file", f)
    });
    let to_keys = match (to_keys, to_plain) {
        (_, true) => StoreKeys::Plain,
        (Some(f), false) => StoreKeys::File("--to-key-file", f),
        (None, false) => StoreKeys::Configured,
    };
    let (from, to) = (
        options.store_with_keys(from, from_keys)?,
        options.store_with_keys(to, to_keys)?,
    );
    if matches!(from.kind, StoreKind::Memory) {
        anyhow::bail!(
            "--from memory: the memory store lives inside a running proxy, so there is nothing \
             to copy from here; copy from a persistent store (sqlite:, fs:, redis://, postgres://)"
        );
    }
    if matches!(to.kind, StoreKind::Memory) {
        anyhow::bail!(
            "--to memory: sessions copied into a memory store die with this command; copy to \
             a persistent store (sqlite:, fs:, redis://, postgres://)"
        );
    }
    Ok((from, to))
}

/// Streams every live session of `from` into `to`, one page at a time (never the whole store
/// in memory). Create-if-absent: a session `to` already has is left as it is, so a re-run
/// copies nothing new and an interrupted copy can simply be run again. A page's creates run
/// a few dozen at a time: a store that commits in groups (sqlite) then writes dozens per commit,
/// and none waits in a queue long enough to hit `store.timeout`.
async fn copy_sessions(from: &StoreConfig, to: &StoreConfig) -> anyhow::Result<()> {
    const PAGE: usize = 500;
    const IN_FLIGHT: usize = 64;
    let source = store::open(from).await?.store;
    let target = store::open(to).await?.store;
    let (mut copied, mut present) = (0u64, 0u64);
    let mut cursor: Option<String> = None;
    loop {
        let page = source.list(cursor.as_deref(), PAGE).await?;
        let mut creates = tokio::task::JoinSet::new();
        let mut sessions = page.sessions.into_iter();
        loop {
            while creates.len() < IN_FLIGHT
                && let Some((id, record)) = sessions.next()
            {
                let target = target.clone();
                creates.spawn(async move { target.create(&id, &record).await });
            }
            let Some(created) = creates.join_next().await else {
                break;
            };
            if created?? {
                copied += 1;
            } else {
                present += 1;
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    println!("copied {copied} sessions ({present} already there)");
    Ok(())
}
