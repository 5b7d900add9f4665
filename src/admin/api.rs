//! The JSON API: list, show, patch and delete sessions; a user's sessions (list, revoke); the
//! probes; `/metrics`.
//!
//! Every answer is JSON (never HTML: session data is user-controlled), every bad input a 4xx
//! with `{"error": "..."}`, a store that is down a 503 with the reason. An admin read never
//! counts as activity: it neither touches nor extends a session.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::Value;

use super::Admin;
use crate::audit::{Event, Reason};
use crate::outcome::Ended;
use crate::session::UserKey;
use crate::session::{DataChange, Handle, NotAHandle};
use crate::store::{self, Blame, Record, StoreError, Update};

/// The most sessions one page may hold, and how many it holds when the caller does not say.
pub const MAX_LIMIT: usize = 1000;
pub const DEFAULT_LIMIT: usize = 50;

pub(super) fn routes() -> Router<Arc<Admin>> {
    Router::new()
        .route("/sessions", get(list))
        .route("/sessions/{handle}", get(show).patch(patch).delete(delete))
        .route(
            "/users/{user}/sessions",
            get(user_sessions).delete(revoke_user),
        )
}

/// An admin request that failed, and whose fault it was (the status says).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match (&e, e.blame()) {
            (StoreError::TooLarge { .. }, _) => StatusCode::PAYLOAD_TOO_LARGE,
            (_, Blame::Caller) => StatusCode::BAD_REQUEST,
            (_, Blame::Store) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message }).to_string();
        json_response(self.status, body)
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn json_ok<T: Serialize>(value: &T) -> Result<Response, ApiError> {
    let body = serde_json::to_string(value).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the answer: {e}"),
        )
    })?;
    Ok(json_response(StatusCode::OK, body))
}

/// A session's handle in a path or query. A session id is refused without being echoed (it is
/// a bearer credential): the admin API names sessions by handle only, and `sessions show --id`
/// on the proxy's host finds a session from its id.
fn parse_handle(text: &str) -> Result<Handle, ApiError> {
    Handle::named(text).map_err(|why| match why {
        NotAHandle::AnId => ApiError::bad(
            "that is a session id, not a handle: the admin API names sessions by handle \
             (`session-proxy sessions show --id` finds one from its id)",
        ),
        NotAHandle::Malformed => ApiError::bad(format!("{text:?} is not a session handle")),
    })
}

#[derive(Serialize)]
struct Listed<'a> {
    handle: &'a str,
    /// The session's user under `session.user_key` (absent without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    created_at: u64,
    updated_at: u64,
    expires_at: u64,
    /// Bytes of the session's JSON text.
    size: usize,
    /// `X-Session-Remember` in ms (0: the configured lifetime).
    remember: u64,
    /// The device: the last write for the client (0 before they were kept), the addresses,
    /// the user agent.
    last_seen: u64,
    created_ip: Option<std::net::IpAddr>,
    last_ip: Option<std::net::IpAddr>,
    user_agent: Option<&'a str>,
}

impl<'a> Listed<'a> {
    fn new(handle: &'a Handle, r: &'a Record, key: Option<&UserKey>) -> Self {
        Listed {
            handle: handle.as_str(),
            user: key.and_then(|k| k.plain_user_of(&r.data)),
            created_at: r.created_at,
            updated_at: r.updated_at,
            expires_at: r.expires_at,
            size: r.data.len(),
            remember: r.meta.remember,
            last_seen: r.meta.last_seen,
            created_ip: r.meta.created_ip,
            last_ip: r.meta.last_ip,
            user_agent: r.meta.user_agent.as_deref(),
        }
    }
}

#[derive(Serialize)]
struct ListPage<'a> {
    sessions: Vec<Listed<'a>>,
    next_cursor: Option<String>,
}

/// `GET /sessions?limit=N&cursor=C`.
async fn list(
    State(admin): State<Arc<Admin>>,
    ConnectInfo(operator): ConnectInfo<SocketAddr>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::bad(e.body_text()))?;
    let mut limit = DEFAULT_LIMIT;
    let mut cursor: Option<String> = None;
    for (key, value) in pairs {
        match key.as_str() {
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad(format!(
                            "limit {value:?} is not a whole number from 1 to {MAX_LIMIT}"
                        ))
                    })?;
            }
            "cursor" => cursor = Some(value),
            other => return Err(ApiError::bad(format!("unknown parameter {other:?}"))),
        }
    }
    let page = admin.store().list(cursor.as_deref(), limit).await?;
    admin
        .audit
        .admin(operator, "GET /sessions", None, || Event::Read);
    let config = admin.config();
    let key = config.session.user_key.as_ref();
    let sessions = page
        .sessions
        .iter()
        .map(|(handle, r)| Listed::new(handle, r, key))
        .collect();
    json_ok(&ListPage {
        sessions,
        next_cursor: page.next,
    })
}

/// The user named in a `/users/{user}/...` path, on a proxy that has a user index.
fn user_index(admin: &Admin, user: &str) -> Result<(), ApiError> {
    if admin.config().session.user_key.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "there is no user index: set session.user_key",
        ));
    }
    if user.is_empty() {
        return Err(ApiError::bad("the user is empty"));
    }
    Ok(())
}

/// `GET /users/{user}/sessions`: every live session of one user, in the shape of a
/// `GET /sessions` page (never a next page), oldest first.
async fn user_sessions(
    State(admin): State<Arc<Admin>>,
    Path(user): Path<String>,
) -> Result<Response, ApiError> {
    user_index(&admin, &user)?;
    let user = admin.config().session.indexed_user(&user);
    let mut found = admin.store().user_sessions(&user).await?;
    found.sort_by_key(|(id, r)| (r.created_at, *id));
    let config = admin.config();
    let key = config.session.user_key.as_ref();
    let sessions = found
        .iter()
        .map(|(handle, r)| Listed::new(handle, r, key))
        .collect();
    json_ok(&ListPage {
        sessions,
        next_cursor: None,
    })
}

#[derive(Serialize)]
struct Revoked {
    revoked: usize,
}

/// `DELETE /users/{user}/sessions[?except=HANDLE]`: signs the user out everywhere (but `except`,
/// say the operator's own session or the one the user is on). Answers how many were destroyed.
async fn revoke_user(
    State(admin): State<Arc<Admin>>,
    ConnectInfo(operator): ConnectInfo<SocketAddr>,
    Path(user): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    user_index(&admin, &user)?;
    let Query(pairs) = query.map_err(|e| ApiError::bad(e.body_text()))?;
    let mut except = None;
    for (key, value) in pairs {
        match key.as_str() {
            "except" => except = Some(parse_handle(&value)?),
            other => return Err(ApiError::bad(format!("unknown parameter {other:?}"))),
        }
    }
    let user = admin.config().session.indexed_user(&user);
    let destroyed = revoke(&admin, &user, except.as_ref()).await?;
    tracing::info!(%operator, revoked = destroyed.len(), "admin revoked a user's sessions");
    for id in &destroyed {
        admin.ends.ended(id, Ended::Revoked);
        admin
            .audit
            .admin_on_user(operator, "DELETE /users/{user}/sessions", id, &user, || {
                Event::Destroyed(Reason::Revoked)
            });
    }
    json_ok(&Revoked {
        revoked: destroyed.len(),
    })
}

/// The admin's one way to revoke a user's sessions; returns the handles destroyed.
async fn revoke(
    admin: &Admin,
    user: &str,
    except: Option<&Handle>,
) -> Result<Vec<Handle>, StoreError> {
    store::users::revoke(&*admin.store(), user, except).await
}

/// `GET /sessions/{handle}`: the whole record, data included.
async fn show(
    State(admin): State<Arc<Admin>>,
    ConnectInfo(operator): ConnectInfo<SocketAddr>,
    Path(handle): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_handle(&handle)?;
    let record =
        admin.store().load(&id).await?.ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "no live session with this handle")
        })?;
    admin
        .audit
        .admin(operator, "GET /sessions/{handle}", Some(&id), || {
            Event::Read
        });
    Ok(json_response(
        StatusCode::OK,
        store::session_json(&id, &record)?,
    ))
}

/// `PATCH /sessions/{handle}`: a JSON merge patch, applied exactly as `X-Session-Update` is (same
/// code, same size limit, atomic against concurrent requests). An operator's edit is not the
/// user's activity, so the session's deadline stays where it was.
async fn patch(
    State(admin): State<Arc<Admin>>,
    ConnectInfo(operator): ConnectInfo<SocketAddr>,
    Path(handle): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = parse_handle(&handle)?;
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let patch = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return Err(ApiError::bad(
                "the body must be a JSON object (a merge patch)",
            ));
        }
        Err(e) => return Err(ApiError::bad(format!("the body is not JSON: {e}"))),
    };
    let config = admin.config();
    let session = &config.session;
    let update = Update {
        change: Some(DataChange::Patch(patch)),
        base: None,
        now: store::now_ms(),
        lifetime: session.lifetime,
        max_size: session.max_size,
        extends: false,
        visit: None,
    };
    let record =
        admin.store().update(&id, &update).await?.ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "no live session with this handle")
        })?;
    tracing::info!(%operator, handle = %id, "admin patched a session");
    admin
        .audit
        .admin(operator, "PATCH /sessions/{handle}", Some(&id), || {
            Event::of_change(update.change.as_ref())
        });
    Ok(json_response(
        StatusCode::OK,
        store::session_json(&id, &record)?,
    ))
}

/// `DELETE /sessions/{handle}`: the user's next request starts a fresh session.
async fn delete(
    State(admin): State<Arc<Admin>>,
    ConnectInfo(operator): ConnectInfo<SocketAddr>,
    Path(handle): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_handle(&handle)?;
    if !admin.store().delete(&id).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no live session with this handle",
        ));
    }
    admin.ends.ended(&id, Ended::Admin);
    tracing::info!(%operator, handle = %id, "admin deleted a session");
    admin
        .audit
        .admin(operator, "DELETE /sessions/{handle}", Some(&id), || {
            Event::Destroyed(Reason::Admin)
        });
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Liveness: the process serves. Checks nothing else, on purpose: a store outage must not get
/// a healthy proxy restarted.
pub(super) async fn healthz() -> Response {
    json_response(StatusCode::OK, r#"{"status":"ok"}"#.to_owned())
}

/// The assertion's public keys (`[assertion]`), as a JWKS: no secret, so no token. Not cached
/// (`no-store`, like every admin answer): an app that meets an unknown `kid` refetches and must
/// get the new key at once.
pub(super) async fn jwks(State(admin): State<Arc<Admin>>) -> Response {
    let signer = admin.assertion.load();
    let Some(signer) = signer.as_deref() else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "no assertion keys: [assertion] key_file is not set",
        )
        .into_response();
    };
    json_response(StatusCode::OK, signer.jwks())
}

/// Readiness: the store answers a probe within `store.timeout`, and no drain has started.
pub(super) async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    if admin.is_draining() {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "draining: shutting down")
            .into_response();
    }
    // A load of a handle nobody holds: reads the store, touches no session.
    let probe = match Handle::generate() {
        Ok(id) => admin.store().load(&id).await.map(|_| ()),
        Err(e) => Err(StoreError::Backend(Box::new(e))),
    };
    match probe {
        Ok(()) => json_response(StatusCode::OK, r#"{"status":"ready"}"#.to_owned()),
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the session store is not answering: {e}"),
        )
        .into_response(),
    }
}

/// `GET /metrics`: the Prometheus (OpenMetrics) text exposition.
pub(super) async fn metrics(State(admin): State<Arc<Admin>>) -> Result<Response, ApiError> {
    let text = admin.metrics.encode(admin.store().count()).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {e}"),
        )
    })?;
    let mut resp = (StatusCode::OK, text).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(resp)
}

pub(super) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such admin route")
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this admin route",
    )
}
