//! What a running proxy re-reads on SIGHUP: the whole configuration ([`Reloader`]: every
//! setting but those [`Config::keep_restart_only`] keeps), with the files it names: the cookie
//! and store keys, the TLS certificate and key, and the assertion key. What is opened rather
//! than read is opened again when its settings changed, before anything changes: the audit log
//! and the trace exporter (the ones replaced finish their queues, [`Background`]), the
//! assertion's key, and the store in the same place ([`Reload`](crate::store::Reload)).
//!
//! `main.rs` listens for SIGHUP before the store opens or a port is bound, so a SIGHUP is never
//! the signal's default action (which ends the process). A reload that fails is logged at
//! `error` with its reason and leaves what is in use as it was: a half-written file never takes
//! the listener or the sessions down.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::signal::unix::Signal;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin::Admin;
use crate::assertion::Signer;
use crate::config::cli::Options;
use crate::config::{Config, ConfigError};
use crate::proxy::Live;
use crate::proxy::State;
use crate::secrets::{SigningToggled, warn_if_store_keys_world_readable, warn_if_world_readable};
use crate::store::seal::KeyError;
use crate::store::{ExpiredSink, StoreError, Sweeper};
use crate::telemetry::Telemetry;

/// Why a reload left the configuration as it was.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The operator's: the config file, the secrets file or a flag is refused, with the reason.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The operator's: a reload may change the keys, not whether there are any.
    #[error(transparent)]
    SigningToggled(#[from] SigningToggled),
    /// The operator's (a reload may not turn encryption on or off), or ours.
    #[error(transparent)]
    StoreKeys(#[from] KeyError),
    /// The operator's: the assertion key file cannot be read, created or used.
    #[error(transparent)]
    AssertionKey(#[from] crate::assertion::KeyError),
    /// The operator's: the new `audit.path` cannot be opened for appending.
    #[error(transparent)]
    Audit(#[from] crate::audit::OpenError),
    /// The operator's: the new `[tracing]` exporter cannot be built.
    #[error(transparent)]
    Tracing(#[from] crate::telemetry::BuildError),
    /// The store cannot be opened again with its new settings: the operator's, or the store's.
    #[error("the store cannot be opened with its new settings: {0}")]
    Store(#[source] StoreError),
    /// Ours: the task that read the files did not finish.
    #[error("the reload did not finish: {0}")]
    Aborted(#[source] tokio::task::JoinError),
}

/// The proxy's background tasks, the ones started with it and those a reload starts: the audit
/// log's writers and the trace exporters (one a reload replaced finishes its queue and
/// returns), and the store's sweeper (one a reload replaced is stopped). At exit they are
/// stopped and the writers waited for, within a bound. Clones share the tasks.
#[derive(Clone)]
pub struct Background(Arc<Mutex<Tasks>>);

impl Default for Background {
    fn default() -> Self {
        Background(Arc::new(Mutex::new(Tasks {
            audit: JoinSet::new(),
            traces: JoinSet::new(),
            sweeper: None,
            serving: false,
            stop_traces: watch::Sender::new(false),
        })))
    }
}

struct Tasks {
    audit: JoinSet<()>,
    traces: JoinSet<()>,
    /// The sweeper of the store in force, if it needs one.
    sweeper: Option<Sweep>,
    /// Set by [`Background::start`]: tasks run from then on.
    serving: bool,
    /// Set at exit: an exporter's queue stays open while a request may still end a span in
    /// it, so every exporter is told when to send what it holds and return.
    stop_traces: watch::Sender<bool>,
}

impl Background {
    fn tasks(&self) -> std::sync::MutexGuard<'_, Tasks> {
        // A panic while the lock was held left nothing half-done: each step is one push.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts `sweeper` in place of the one there, if any: run from [`start`](Self::start) on.
    pub fn sweeper(&self, sweeper: Option<Sweeper>) {
        let mut tasks = self.tasks();
        let next = match sweeper {
            Some(s) if tasks.serving => Some(Sweep::Running(tokio::spawn(s.run()).abort_handle())),
            Some(s) => Some(Sweep::Waiting(s)),
            None => None,
        };
        if let Some(Sweep::Running(old)) = std::mem::replace(&mut tasks.sweeper, next) {
            old.abort();
        }
    }

    /// The proxy serves: the sweeper runs (a reload's too, if one came first).
    pub fn start(&self) {
        let mut tasks = self.tasks();
        tasks.serving = true;
        if let Some(Sweep::Waiting(s)) = tasks.sweeper.take() {
            tasks.sweeper = Some(Sweep::Running(tokio::spawn(s.run()).abort_handle()));
        }
    }

    /// Runs an audit log's writer until its [`Audit`](crate::audit::Audit) lets it go.
    pub fn audit(&self, writer: crate::audit::Writer) {
        let mut tasks = self.tasks();
        while tasks.audit.try_join_next().is_some() {}
        tasks.audit.spawn(writer.run());
    }

    /// Runs a trace exporter until [`stop_traces`](Self::stop_traces).
    pub fn traces(&self, exporter: crate::telemetry::Exporter) {
        let mut tasks = self.tasks();
        while tasks.traces.try_join_next().is_some() {}
        let mut stop = tasks.stop_traces.subscribe();
        tasks.traces.spawn(exporter.run(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }));
    }

    /// Tells every exporter to send what it holds and waits for them, for at most `limit`;
    /// `false` if they did not finish in time.
    pub async fn stop_traces(&self, limit: Duration) -> bool {
        let running = {
            let mut tasks = self.tasks();
            tasks.stop_traces.send_replace(true);
            std::mem::take(&mut tasks.traces)
        };
        join_within(running, limit).await
    }

    /// Waits, for at most `limit`, for the audit writers to write and fsync what their
    /// queues hold ([`Audit::close`](crate::audit::Audit::close) lets them go); `false` if they
    /// did not finish in time.
    pub async fn finish_audit(&self, limit: Duration) -> bool {
        let running = std::mem::take(&mut self.tasks().audit);
        join_within(running, limit).await
    }
}

/// Waits for every task of `set`, for at most `limit`; `false` if they did not finish in time.
async fn join_within(mut set: JoinSet<()>, limit: Duration) -> bool {
    tokio::time::timeout(limit, async { while set.join_next().await.is_some() {} })
        .await
        .is_ok()
}

/// A sweeper, before and after the proxy serves.
enum Sweep {
    Waiting(Sweeper),
    Running(tokio::task::AbortHandle),
}

/// What the sweeper reports of each session it removes: an `expired` audit line, and the
/// WebSockets open under it closed.
pub fn sweep_reports(state: &State) -> ExpiredSink {
    let audit = state.audit.clone();
    let ends = state.session_ends();
    Arc::new(move |id: &crate::session::Handle, user: Option<&str>| {
        audit.swept(id, user);
        ends.ended(id, crate::outcome::Ended::Expired);
    })
}

/// What a reload put in force.
#[derive(Debug)]
pub struct Applied {
    /// The changed settings that take a restart (kept as they were), as the file names them.
    pub restart: Vec<&'static str>,
    /// Cookie keys in use now (0: cookies are not signed).
    pub cookie_keys: usize,
    /// Store encryption keys in use now (0: the store is not encrypted).
    pub store_keys: usize,
}

/// Puts a reloaded configuration in force in a running proxy: the state every new request and
/// connection takes, the admin routes' settings, the cookie keys and the store's encryption
/// keys. Clones share the proxy they reload.
#[derive(Clone)]
pub struct Reloader {
    pub(crate) live: Live,
    pub(crate) admin: Arc<Admin>,
    pub(crate) background: Background,
    pub(crate) store: crate::store::Reload,
}

impl Reloader {
    /// Applies `config` (read and validated as at start) to requests and connections that
    /// start from now on; requests in flight finish under the state they began with. Settings
    /// that take a restart stay as they are; those `config` changed are returned, as the file
    /// names them. Refused whole, with nothing changed, when the new keys would turn cookie
    /// signing or store encryption on or off, or what a changed setting needs opened cannot be
    /// (the audit log, the trace exporter, the assertion key, the store with its new settings;
    /// an assertion key that was rotated before the store failed stays rotated).
    pub async fn apply(&self, mut config: Config) -> Result<Applied, ReloadError> {
        let current = self.live.current();
        // Read and checked by the validation: the new files, if TLS stays on.
        let certs = config.tls.as_ref().map(|t| t.certs.clone());
        let kept = current.config.keep_restart_only(&mut config);
        // Nothing changes until every check passed.
        let ring = current.cookies.keys();
        ring.check(&config.cookie.keys)?;
        let secrets: Vec<&[u8]> = config
            .store
            .encryption_keys
            .iter()
            .map(|s| s.as_str().as_bytes())
            .collect();
        self.store.sealer().check(&secrets)?;
        // What a changed setting needs opened is opened before anything changes, so that one
        // that cannot be is refused with the rest: the audit file (created), the exporter, the
        // assertion key (read or created), and last the store.
        let audit = if config.audit != current.config.audit {
            Some(current.audit.prepare(config.audit.as_ref()).await?)
        } else {
            None
        };
        let telemetry = match (&config.tracing, config.tracing != current.config.tracing) {
            (_, false) => None,
            (None, true) => Some(None),
            (Some(tracing), true) => Some(Some(Telemetry::open(
                tracing,
                config.store.kind.name(),
                current.metrics.trace_dropped(),
            )?)),
        };
        // On or off: a new signer (its key file read, or created, as at start), or none.
        let signer = match (&current.assertion, &config.assertion) {
            (Some(signer), Some(assertion)) => {
                if signer.reconfigure(assertion)? {
                    tracing::info!(kid = %signer.kid(), "assertion: SIGHUP: new key in use");
                }
                None
            }
            (None, Some(assertion)) => Some(Some(Arc::new(Signer::open(assertion)?))),
            (Some(_), None) => Some(None),
            (None, None) => None,
        };
        // Last of what may fail: opening the store again can change the file (sqlite reindexes
        // a new user key), which must not happen for a reload refused after it.
        let store = if current.config.store.reopens(&config.store) {
            Some(
                self.store
                    .open(&config.store)
                    .await
                    .map_err(ReloadError::Store)?,
            )
        } else {
            None
        };
        let store_keys = self.store.sealer().replace(&secrets)?;
        let cookie_keys = ring.replace(config.cookie.keys.clone())?;
        if let (Some(tls), Some(certs)) = (&config.tls, certs) {
            tls.certs.adopt(&certs);
            tracing::info!(
                cert = %tls.certs.cert_path().display(),
                key = %tls.certs.key_path().display(),
                "tls: SIGHUP: certificate and key reloaded"
            );
        }
        self.store.apply(&config.store);
        crate::logging::set_format(config.log_format);
        if let Some(prepared) = audit {
            if let Some(writer) = current.audit.replace(prepared) {
                self.background.audit(writer);
            }
            match &config.audit {
                Some(a) => {
                    tracing::info!(path = %a.path.display(), queue = a.queue, "audit: SIGHUP: the log goes on in this file")
                }
                None => tracing::info!("audit: SIGHUP: the audit log is off"),
            }
        }
        self.admin.reconfigure(config.clone());
        let mut state = current.reloaded(config);
        if let Some((store, sweeper)) = store {
            state.store = store.clone();
            self.admin.set_store(store);
            self.background
                .sweeper(sweeper.map(|s| s.reporting_to(sweep_reports(&state))));
            tracing::info!(
                "store: SIGHUP: opened again with its new settings; new requests use it"
            );
        }
        if let Some(signer) = signer {
            match &signer {
                Some(s) => {
                    tracing::info!(kid = %s.kid(), "assertion: SIGHUP: new requests carry X-Session-Assertion")
                }
                None => tracing::info!("assertion: SIGHUP: the assertion is off"),
            }
            self.admin.set_assertion(signer.clone());
            state.assertion = signer;
        }
        if let Some(telemetry) = telemetry {
            state.telemetry = telemetry.map(|(telemetry, exporter)| {
                self.background.traces(exporter);
                Arc::new(telemetry)
            });
            match &state.config.tracing {
                Some(t) => {
                    tracing::info!(endpoint = %t.endpoint, sample_ratio = t.sample_ratio, "tracing: SIGHUP: new requests' spans go to this collector")
                }
                None => tracing::info!("tracing: SIGHUP: traces are off"),
            }
        }
        self.live.replace(state);
        Ok(Applied {
            restart: kept,
            cookie_keys,
            store_keys,
        })
    }

    /// Reads the configuration again as the start did (`options`: the same file and flags, so
    /// the new one gets exactly the checks the first one got; the files are read on the
    /// blocking pool) and [`apply`](Self::apply)s it.
    pub async fn reload(&self, options: Arc<Options>) -> Result<Applied, ReloadError> {
        let config = tokio::task::spawn_blocking(move || options.load())
            .await
            .map_err(ReloadError::Aborted)??;
        warn_if_world_readable(&config.cookie);
        warn_if_store_keys_world_readable(&config.store);
        self.apply(config).await
    }

    /// Reloads on every SIGHUP that `hangup` receives, until the process exits. A refused
    /// reload is logged with its reason and counted in `cookie_reloads_total`; what is in use
    /// stays.
    pub async fn on_hangup(self, mut hangup: Signal, options: Options) {
        let options = Arc::new(options);
        while hangup.recv().await.is_some() {
            let ring = self.live.current().cookies.keys();
            match self.reload(options.clone()).await {
                Ok(Applied {
                    restart,
                    cookie_keys,
                    store_keys,
                }) => {
                    ring.count_reload(true);
                    if restart.is_empty() {
                        tracing::info!(cookie_keys, store_keys, "SIGHUP: configuration reloaded");
                    } else {
                        let restart = restart.join(", ");
                        tracing::warn!(
                            cookie_keys,
                            store_keys,
                            %restart,
                            "SIGHUP: configuration reloaded, but these changed settings take a restart and are kept as they were"
                        );
                    }
                }
                Err(ReloadError::Config(ConfigError::Parse { file, .. })) => {
                    // toml's message quotes the line it stopped at, which may hold a secret.
                    ring.count_reload(false);
                    tracing::error!(
                        %file,
                        "SIGHUP: the config file is not valid TOML (`session-proxy check` shows where); nothing reloaded, the configuration in use is kept"
                    );
                }
                Err(error) => {
                    ring.count_reload(false);
                    tracing::error!(%error, "SIGHUP: configuration not reloaded; the one in use is kept");
                }
            }
        }
    }
}
