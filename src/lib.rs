//! session-proxy: an HTTP reverse proxy that gives server-side sessions to an app that has none.
//!
//! The product is the `session-proxy` binary; this library is what it is built from, public so
//! that the binary, the example app (`examples/counter.rs`, which runs the proxy in its own
//! process), the benchmarks (`bench/tools`) and the integration tests (`tests/it`) drive the
//! same code a deployment runs. It is not published and makes no semver promise: a module is
//! `pub` because one of those callers needs it, not as an invitation to build on it. The
//! contracts that are stable are the ones outside Rust: the header protocol
//! ([`protocol`]), the configuration file (every key in [`config::reference`], rendered as
//! `docs/src/configuration.md`), the admin API (`docs/src/admin-openapi.yaml`) and the store
//! formats.
//!
//! What a caller uses: [`config`] turns `proxy.toml` and the flags into a validated
//! [`config::Config`] (every error names the key at fault); [`Proxy::open`] validates nothing
//! but opens the store and builds the shared state; [`Proxy::serve`] runs it on a listener the
//! caller bound, so tests can bind `127.0.0.1:0` and learn the port before any request is
//! sent; [`downstream::shutdown_signal`] is the SIGINT/SIGTERM future the binary passes it.
//! [`store`] is the session-store seam (the [`store::SessionStore`] trait and its sqlite, fs,
//! memory and Redis backends), public so that the CLI's `sessions` commands and the store
//! contract tests call the stores directly.
//!
//! The other modules are the layers of the request path, each public for its tests and
//! benchmarks rather than for reuse: [`session`] (ids, handles, lifetimes), [`cookie`],
//! [`protocol`] (header names and the wire encoding, in one place), [`forwarding`],
//! [`upstream`], [`proxy`], [`admin`], [`metrics`], [`audit`], [`assertion`], [`tls`],
//! [`logging`], [`reload`]. ARCHITECTURE.md gives their floors: a module imports only what
//! stands below it. A session id is a bearer credential and never leaves through any of them:
//! stores, logs, metrics and the admin API name a session by its [`session::Handle`].
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod admin;
pub mod assertion;
pub mod audit;
pub mod config;
pub mod cookie;
pub mod downstream;
pub mod error;
pub mod forwarding;
pub mod http;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod outcome;
pub mod protocol;
pub mod proxy;
pub mod reload;
#[cfg(test)]
mod robustness;
pub mod secrets;
pub mod session;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use config::Config;
use store::SessionStore;

/// How long the exit waits for the audit log's last batch to be written and fsynced.
const AUDIT_FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long the exit waits for the last spans to reach the OTLP collector.
const TRACES_FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the session store: {0}")]
    Store(#[from] store::StoreError),
    /// The audit log cannot be opened: a setting to fix, like a bad config.
    #[error(transparent)]
    Audit(#[from] audit::OpenError),
    /// The assertion key file cannot be read, created or used: a setting to fix.
    #[error(transparent)]
    Assertion(#[from] assertion::KeyError),
    /// The `[tracing]` exporter cannot be built: a setting to fix.
    #[error(transparent)]
    Tracing(#[from] telemetry::BuildError),
}

impl StartError {
    /// Whether the operator's configuration is at fault (exit code 2).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            StartError::Audit(_) | StartError::Assertion(_) | StartError::Tracing(_)
        )
    }
}

/// Why a serving proxy stops accepting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM or SIGINT: drain, the admin listener last.
    Drain,
    /// A new process serves on the listeners now (`upgrade_socket`): drain, the admin
    /// listener at once.
    HandedOver,
}

/// A proxy ready to serve: config validated, store open.
pub struct Proxy {
    live: proxy::Live,
    /// The admin routes' shared state, built here so that a reload reaches it.
    admin: Arc<admin::Admin>,
    /// The audit log's writer, run while serving; `None` with `[audit]` off.
    audit: Option<audit::Writer>,
    /// The trace exporter, run while serving; `None` with `[tracing]` off.
    traces: Option<telemetry::Exporter>,
    /// Where the sweeper, the audit writers and the trace exporters run, those above and a
    /// reload's.
    background: reload::Background,
    /// What a reload changes in the store: its timeout, sweep interval and keys, or the store
    /// itself.
    store: store::Reload,
}

impl Proxy {
    pub async fn open(config: Config) -> Result<Self, StartError> {
        let signer = match &config.assertion {
            Some(a) => Some(Arc::new(assertion::Signer::open(a)?)),
            None => None,
        };
        let opened = store::open(&config.store).await?;
        let metrics = Arc::new(metrics::Metrics::new(
            &opened.metrics,
            opened.store.count().is_some(),
        ));
        let (audit, writer) =
            audit::Audit::open(config.audit.as_ref(), metrics.audit_dropped()).await?;
        let (telemetry, traces) = match &config.tracing {
            Some(t) => {
                let kind = config.store.kind.name();
                let (telemetry, exporter) =
                    telemetry::Telemetry::open(t, kind, metrics.trace_dropped())?;
                (Some(telemetry), Some(exporter))
            }
            None => (None, None),
        };
        let store = opened.reload;
        let mut state = proxy::State::new(config, opened.store, metrics);
        state.audit = audit;
        state.assertion = signer;
        state.telemetry = telemetry.map(Arc::new);
        // The sweeper's removals are `expired` lines too, and close the sockets they held.
        let background = reload::Background::default();
        background.sweeper(
            opened
                .sweeper
                .map(|sweeper| sweeper.reporting_to(reload::sweep_reports(&state))),
        );
        let admin = Arc::new(
            admin::Admin::new(
                state.store.clone(),
                state.metrics.clone(),
                state.config.clone(),
            )
            .with_audit(state.audit.clone())
            .with_assertion(state.assertion.clone())
            .with_ends(state.session_ends()),
        );
        Ok(Proxy {
            live: proxy::Live::new(state),
            admin,
            audit: writer,
            traces,
            background,
            store,
        })
    }

    pub fn store(&self) -> Arc<dyn SessionStore> {
        self.live.current().store.clone()
    }

    /// What puts a reloaded configuration in force while this proxy serves (the binary's
    /// SIGHUP).
    pub fn reloader(&self) -> reload::Reloader {
        reload::Reloader {
            live: self.live.clone(),
            admin: self.admin.clone(),
            background: self.background.clone(),
            store: self.store.clone(),
        }
    }

    /// Serves on `listener` until `shutdown` completes, then drains (see [`downstream::serve`]).
    /// Also runs the expiry sweeper for stores that need one, the audit log's writer, and the
    /// recheck of the sessions that hold WebSockets ([`proxy::Sockets::run`]).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) {
        self.serve_with_admin(listener, None, shutdown).await;
    }

    /// [`serve`](Self::serve), plus the admin routes on `admin` (bound by the caller from
    /// `[admin] listen`). The admin listener outlives the public one's drain, so `/readyz`
    /// can say "draining" while in-flight requests finish.
    pub async fn serve_with_admin(
        self,
        listener: tokio::net::TcpListener,
        admin: Option<tokio::net::TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) {
        self.serve_until(listener, admin, async {
            shutdown.await;
            Stop::Drain
        })
        .await;
    }

    /// [`serve_with_admin`](Self::serve_with_admin), told by `shutdown` why it stops: after a
    /// [`Stop::HandedOver`] the admin listener closes at once too (its socket serves on in
    /// the new process), after a [`Stop::Drain`] it outlives the drain.
    pub async fn serve_until(
        self,
        listener: tokio::net::TcpListener,
        admin: Option<tokio::net::TcpListener>,
        shutdown: impl Future<Output = Stop>,
    ) {
        let state = self.live.current();
        let sockets = tokio::spawn(state.sockets.clone().run(self.live.clone()));
        let background = self.background;
        background.start();
        if let Some(writer) = self.audit {
            background.audit(writer);
        }
        if let Some(exporter) = self.traces {
            background.traces(exporter);
        }
        let routes = self.admin;
        let (stop_admin, admin_stopped) = tokio::sync::watch::channel(false);
        let admin_task = admin.map(|l| {
            let mut stopped = admin_stopped;
            tokio::spawn(admin::serve(l, routes.clone(), async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }))
        });
        // The deadline in force at start: a drain's length is the process's, not a request's.
        let deadline = state.config.shutdown_timeout;
        let draining = async {
            let stop = shutdown.await;
            routes.start_draining();
            if stop == Stop::HandedOver {
                let _ = stop_admin.send(true);
            }
        };
        drop(state);
        downstream::serve(listener, self.live.clone(), draining, deadline).await;
        let _ = stop_admin.send(true);
        if let Some(task) = admin_task {
            // Admin requests are short; one that hangs does not hold the exit.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), task).await;
        }
        background.sweeper(None);
        sockets.abort();
        // The spans of the drained requests, sent within a bound: a collector that hangs
        // cannot hold the exit.
        if !background.stop_traces(TRACES_FLUSH_LIMIT).await {
            tracing::warn!(limit = ?TRACES_FLUSH_LIMIT, "the last spans were not exported in time");
        }
        // Last: every event the requests and admin calls above queued is written and fsynced.
        // Bounded, so a disk that hangs in fsync cannot hold the exit for ever.
        self.live.current().audit.close();
        if !background.finish_audit(AUDIT_FLUSH_LIMIT).await {
            tracing::error!(
                limit = ?AUDIT_FLUSH_LIMIT,
                "the audit log did not finish writing in time; its last events may be lost"
            );
        }
    }
}
