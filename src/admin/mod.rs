//! The admin listener: a JSON API to inspect and manage sessions, health and readiness probes,
//! Prometheus metrics, and a web page, on an address of its own (never the public listener,
//! which forwards every path to the app).
//!
//! Routed by axum, which sits on the same hyper and tokio as the proxy path; the public path
//! does not go through it and stays as lean as it was.
//!
//! Security: without a token the listener may bind only a loopback address (checked in
//! config). With a token, every route but the probes, the JWKS, the static page and the API's
//! OpenAPI document (`/openapi.yaml`) needs `Authorization: Bearer <token>`, compared in constant
//! time. The page holds no data: it calls the API with the token the operator types, kept in
//! `sessionStorage`, so there is no admin cookie and no CSRF surface.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use subtle::ConstantTimeEq as _;

use crate::assertion::Signer;
use crate::audit::Audit;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{SessionEnds, SessionStore};

mod api;
mod page;

pub use api::ApiError;

/// What every admin handler shares.
pub struct Admin {
    /// Replaced by a reload that reopens the store; each call takes the one in force.
    store: ArcSwap<Arc<dyn SessionStore>>,
    pub(crate) metrics: Arc<Metrics>,
    /// Replaced whole by a reload; each call reads the one in force.
    config: ArcSwap<Config>,
    /// Set when SIGTERM starts the drain: `/readyz` answers 503 from then on, so a load
    /// balancer stops sending before connections close.
    draining: AtomicBool,
    /// Every admin action is an audit line with the operator's address.
    pub(crate) audit: Audit,
    /// The assertion's public keys, served at `/.well-known/jwks.json`; a reload may turn the
    /// assertion on or off.
    pub(crate) assertion: ArcSwapOption<Signer>,
    /// Told of every session an admin call ends, so the WebSockets open under it close.
    pub(crate) ends: SessionEnds,
}

impl Admin {
    pub fn new(store: Arc<dyn SessionStore>, metrics: Arc<Metrics>, config: Config) -> Self {
        Admin {
            store: ArcSwap::from_pointee(store),
            metrics,
            config: ArcSwap::from_pointee(config),
            draining: AtomicBool::new(false),
            audit: Audit::off(),
            assertion: ArcSwapOption::empty(),
            ends: SessionEnds::default(),
        }
    }

    /// The store in force.
    pub(crate) fn store(&self) -> Arc<dyn SessionStore> {
        Arc::clone(&self.store.load())
    }

    /// Puts a reopened store in force for the calls that start from now on.
    pub fn set_store(&self, store: Arc<dyn SessionStore>) {
        self.store.store(Arc::new(store));
    }

    /// The configuration in force.
    pub(crate) fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Puts a reload's configuration in force for the calls that start from now on (the
    /// token with it).
    pub fn reconfigure(&self, config: Config) {
        self.config.store(Arc::new(config));
    }

    /// Where the sessions an admin call deletes or revokes are announced (no one unless set).
    pub fn with_ends(mut self, ends: SessionEnds) -> Self {
        self.ends = ends;
        self
    }

    /// The audit log the admin actions go to (off unless set).
    pub fn with_audit(mut self, audit: Audit) -> Self {
        self.audit = audit;
        self
    }

    /// The signer whose public keys `/.well-known/jwks.json` serves (404 without one).
    pub fn with_assertion(self, assertion: Option<Arc<Signer>>) -> Self {
        self.set_assertion(assertion);
        self
    }

    /// Serves `assertion`'s public keys from now on (none: 404).
    pub fn set_assertion(&self, assertion: Option<Arc<Signer>>) {
        self.assertion.store(assertion);
    }

    /// From now on `/readyz` says the process is going away.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// The admin routes. The probes, the JWKS and the static files (the page, the OpenAPI document)
/// are open; the rest sit behind the token.
pub fn router(admin: Arc<Admin>) -> Router {
    let guarded = api::routes()
        .route("/metrics", get(api::metrics))
        .route_layer(middleware::from_fn_with_state(admin.clone(), require_token));
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        // Public keys only: open like the probes, so an app needs no admin token.
        .route("/.well-known/jwks.json", get(api::jwks))
        .merge(page::routes())
        .merge(guarded)
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(middleware::from_fn(hardening_headers))
        .with_state(admin)
}

/// Serves the admin routes on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    admin: Arc<Admin>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let app = router(admin).into_make_service_with_connect_info::<SocketAddr>();
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(%error, "the admin listener failed");
    }
}

async fn require_token(State(admin): State<Arc<Admin>>, req: Request, next: Next) -> Response {
    let config = admin.config();
    let Some(token) = config.admin.as_ref().and_then(|a| a.token.as_ref()) else {
        return next.run(req).await;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .map(<[u8]>::trim_ascii);
    // Constant time in the token's content; a wrong length is refused as fast as any other.
    let ok = presented.is_some_and(|p| bool::from(p.ct_eq(token.as_bytes())));
    if ok {
        return next.run(req).await;
    }
    let mut resp = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong admin token: send Authorization: Bearer <token>",
    )
    .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"session-proxy admin\""),
    );
    resp
}

/// Sent on every admin response: session data is written by users, so nothing here may be
/// sniffed into markup, framed, or leak its URL.
async fn hardening_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ));
    resp
}
