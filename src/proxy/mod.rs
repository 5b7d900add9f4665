//! The request pipeline. Its phases are named after pingora's: `request_filter` (strip and
//! read the cookie), `load_session`, `upstream_request_filter` (add the session headers),
//! the upstream call, `upstream_response_filter` (take the instructions, save, set the cookie),
//! and `logging` (one line per request).
//!
//! Architecture invariant: at most one store operation per request, made only after the
//! upstream has answered; a failed save turns the response into a 503, so a client never gets a
//! cookie for a session that was not stored.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, SET_COOKIE};
use http::{Request, Response};
use hyper::body::Incoming;

use crate::config::Config;
use crate::cookie::{Cookies, Presented};
use crate::error::{self, ProxyBody, ProxyError};
use crate::protocol::codec;
use crate::protocol::headers::{ProtocolHeaders, strip_hop_by_hop};
use crate::session::{Instructions, SessionId};
use crate::store::{self, Record, SessionStore, StoreError, Update};
use crate::upstream::{Peer, Upstream};

/// Everything a request needs, built once at start and shared by every connection.
pub struct State {
    pub config: Config,
    pub headers: ProtocolHeaders,
    pub cookies: Cookies,
    pub store: Arc<dyn SessionStore>,
    pub upstream: Upstream,
}

impl State {
    pub fn new(
        config: Config,
        store: Arc<dyn SessionStore>,
    ) -> Result<Self, crate::protocol::InvalidPrefix> {
        Ok(State {
            headers: ProtocolHeaders::new(&config.session.header_prefix)?,
            cookies: Cookies::new(config.cookie.clone()),
            upstream: Upstream::new(&config),
            store,
            config,
        })
    }

    /// Runs one store call under `store.timeout`, so a stuck store costs a 503, not a hang.
    async fn timed<T>(
        &self,
        call: impl Future<Output = store::Result<T>>,
    ) -> Result<T, StoreError> {
        if self.store.never_waits() {
            return call.await;
        }
        let limit = self.config.store.timeout;
        tokio::time::timeout(limit, call)
            .await
            .map_err(|_| StoreError::Timeout(limit))?
    }
}

/// The session as the request found it.
struct Current {
    id: SessionId,
    /// `None` for a session this request started.
    record: Option<Record>,
}

/// What the log line reports about the request; filled in as the phases run.
struct RequestCtx {
    /// "new" or "existing"; empty before the session is loaded.
    session: &'static str,
    /// The store write this request made: "none" until one is made.
    saved: &'static str,
}

impl Default for RequestCtx {
    fn default() -> Self {
        RequestCtx {
            session: "",
            saved: "none",
        }
    }
}

/// The service function: never fails; every error becomes a response here.
pub async fn handle(
    state: Arc<State>,
    peer: Peer,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let method = req.method().clone();
    // The path only: a query string may carry secrets.
    let path = req.uri().path().to_owned();
    let mut ctx = RequestCtx::default();
    let result = pipeline(&state, &peer, req, &mut ctx).await;
    let (resp, err) = match result {
        Ok(resp) => (resp, None),
        Err(e) => (error::response(&e), Some(e)),
    };
    // logging phase
    // Whole microseconds: an integer field costs a fraction of `Duration`'s decimal `Debug`.
    let latency_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    let status = resp.status().as_u16();
    let (session, saved) = (ctx.session, ctx.saved);
    match &err {
        None => tracing::info!(
            method = method.as_str(),
            path = path.as_str(),
            status,
            latency_us,
            session,
            saved,
            "request"
        ),
        Some(e) => {
            tracing::warn!(method = method.as_str(), path = path.as_str(), status, latency_us, session, saved, error = %e, "request failed")
        }
    }
    Ok(resp)
}

async fn pipeline(
    state: &State,
    peer: &Peer,
    mut req: Request<Incoming>,
    ctx: &mut RequestCtx,
) -> Result<Response<ProxyBody>, ProxyError> {
    // request_filter: strip what the client may not send, then take the session cookie.
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    if state.headers.strip_reserved(headers) > 0 {
        tracing::debug!("stripped client-supplied session protocol headers");
    }
    let presented = state.cookies.take(headers);

    let now = store::now_ms();
    let current = load_session(state, presented).await?;
    ctx.session = if current.record.is_some() {
        "existing"
    } else {
        "new"
    };

    // upstream_request_filter
    let expires = current.record.as_ref().map_or_else(
        || state.config.session.lifetime.expiry(now, now),
        |r| r.expires_at,
    );
    let data = current.record.as_ref().map_or("{}", |r| &r.data);
    let h = &state.headers;
    let headers = req.headers_mut();
    // base64url text and ids are always valid header values; these never fail.
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(codec::encode_session(data))) {
        headers.insert(h.session.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(current.id.as_str()) {
        headers.insert(h.id.clone(), v);
    }
    let new = if current.record.is_some() { "0" } else { "1" };
    headers.insert(h.new.clone(), HeaderValue::from_static(new));
    headers.insert(h.expires.clone(), HeaderValue::from(expires / 1000));
    state.upstream.rewrite(&mut req, peer);

    let mut resp = state.upstream.send(req).await?;

    // upstream_response_filter
    strip_hop_by_hop(resp.headers_mut());
    let raw = state.headers.take_instructions(resp.headers_mut());
    let (instructions, errors) = codec::parse_instructions(&raw);
    for e in errors {
        tracing::warn!(error = %e, "ignored a malformed session instruction from the upstream");
    }
    // The clock as of saving: the app may have taken a while, and expiry is judged now.
    if let Some(cookie) = save(state, &current, instructions, store::now_ms(), ctx).await? {
        resp.headers_mut().append(SET_COOKIE, cookie);
    }
    Ok(resp.map(http_body_util::Either::Left))
}

/// Loads the presented session, or starts a new one. A client never chooses its id unless
/// `renew_missing = false` (werkzeug's option) and the id is well formed.
async fn load_session(state: &State, presented: Presented) -> Result<Current, ProxyError> {
    match presented {
        Presented::Valid(id) => match state.timed(state.store.load(&id)).await? {
            Some(record) => Ok(Current {
                id,
                record: Some(record),
            }),
            None if !state.config.session.renew_missing => Ok(Current { id, record: None }),
            None => {
                tracing::debug!("unknown or expired session id; starting a new session");
                fresh()
            }
        },
        Presented::Invalid => {
            tracing::warn!(
                cookie = state.cookies.name(),
                "possibly suspicious activity: malformed or badly signed session cookie"
            );
            fresh()
        }
        Presented::None => fresh(),
    }
}

fn fresh() -> Result<Current, ProxyError> {
    Ok(Current {
        id: SessionId::generate()?,
        record: None,
    })
}

/// Carries out the instructions with exactly one store operation (or none), and returns the
/// `Set-Cookie` to send, if any.
async fn save(
    state: &State,
    current: &Current,
    instructions: Instructions,
    now: u64,
    ctx: &mut RequestCtx,
) -> Result<Option<HeaderValue>, ProxyError> {
    let cookies = &state.cookies;
    let modifies = instructions.modifies();
    let update = Update {
        change: instructions.change,
        base: current.record.clone(),
        now,
        lifetime: state.config.session.lifetime,
        max_size: state.config.session.max_size,
    };

    if instructions.destroy {
        if current.record.is_some() {
            state.timed(state.store.delete(&current.id)).await?;
        }
        ctx.saved = "destroyed";
        return Ok(cookies.expire());
    }

    let result = match &current.record {
        // werkzeug's should_save: a new session is stored only when modified.
        None if !modifies => return Ok(None),
        None => {
            // Regenerate always yields a server-made id, even for a session that adopted a
            // client's id under `renew_missing = false`.
            let id = if instructions.regenerate {
                SessionId::generate()?
            } else {
                current.id
            };
            create(state, id, &update, ctx).await
        }
        Some(_) if instructions.regenerate => {
            let new_id = SessionId::generate()?;
            ctx.saved = "regenerated";
            state
                .timed(state.store.regenerate(&current.id, &new_id, &update))
                .await
                .map(|r| r.map(|_| new_id))
        }
        Some(record) if update.change.is_some() || update.lifetime.needs_touch(record, now) => {
            ctx.saved = if update.change.is_some() {
                "updated"
            } else {
                "touched"
            };
            state
                .timed(state.store.update(&current.id, &update))
                .await
                .map(|r| r.map(|_| current.id))
        }
        Some(_) => return Ok(None),
    };
    match result {
        Ok(Some(id)) => Ok(cookies.set(&id)),
        Ok(None) => {
            // Destroyed or expired by another request meanwhile: nothing is resurrected.
            tracing::debug!("session vanished before it could be saved");
            ctx.saved = "vanished";
            Ok(None)
        }
        Err(e @ StoreError::TooLarge { .. }) => {
            tracing::warn!(error = %e, "ignored a session change from the upstream");
            ctx.saved = "refused";
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Stores a new session; on the (astronomically unlikely) id collision, retries with a new id.
async fn create(
    state: &State,
    id: SessionId,
    update: &Update,
    ctx: &mut RequestCtx,
) -> Result<Option<SessionId>, StoreError> {
    let record = update.create()?;
    let mut id = id;
    for _ in 0..4 {
        if state.timed(state.store.create(&id, &record)).await? {
            ctx.saved = "created";
            return Ok(Some(id));
        }
        id = SessionId::generate().map_err(|e| StoreError::Backend(Box::new(e)))?;
    }
    Err(StoreError::Corrupt(
        "no free session id after 4 tries".to_owned(),
    ))
}
