//! session-proxy: an HTTP reverse proxy that gives server-side sessions to an app that has none.
//!
//! [`Proxy::open`] validates nothing (that is [`config`]'s job) but opens the store and builds
//! the shared state; [`Proxy::serve`] runs it on a listener the caller bound, so tests can bind
//! `127.0.0.1:0` and learn the port before any request is sent.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod config;
pub mod cookie;
pub mod downstream;
pub mod error;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod proxy;
#[cfg(test)]
mod robustness;
pub mod session;
pub mod store;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use config::Config;
use store::SessionStore;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the session store: {0}")]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Header(#[from] protocol::InvalidPrefix),
}

/// A proxy ready to serve: config validated, store open.
pub struct Proxy {
    state: Arc<proxy::State>,
    sweeper: Option<store::Sweeper>,
}

impl Proxy {
    pub async fn open(config: Config) -> Result<Self, StartError> {
        let opened = store::open(&config.store).await?;
        let metrics = Arc::new(metrics::Metrics::new(
            &opened.metrics,
            opened.store.count().is_some(),
        ));
        Ok(Proxy {
            state: Arc::new(proxy::State::new(config, opened.store, metrics)?),
            sweeper: opened.sweeper,
        })
    }

    pub fn store(&self) -> Arc<dyn SessionStore> {
        self.state.store.clone()
    }

    /// Serves on `listener` until `shutdown` completes, then drains (see [`downstream::serve`]).
    /// Also runs the expiry sweeper for stores that need one.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) {
        let sweeper = self.sweeper.map(|s| tokio::spawn(s.run()));
        let deadline = self.state.config.shutdown_timeout;
        downstream::serve(listener, self.state, shutdown, deadline).await;
        if let Some(sweeper) = sweeper {
            sweeper.abort();
        }
    }
}
