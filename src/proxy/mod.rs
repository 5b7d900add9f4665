//! The request pipeline. `handle` calls the phases in order, each a function of its own, named
//! after pingora's: `request_filter` (strip, take the cookie), `session::load`,
//! `upstream_request_filter` (add the session headers, rewrite for the upstream), the upstream
//! call, `upstream_response_filter` (take the instructions), `session::save` (the one store
//! call, the cookie), and `log::logging` (one line per request). An agreed upgrade ends in a
//! 101 that carries a `tunnel::Tunnel` for the connection task to run.
//!
//! Architecture invariant: at most one store operation per request, made only after the
//! upstream has answered; a failed save turns the response into a 503, so a client never gets a
//! cookie for a session that was not stored.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use http::header::{CONTENT_LENGTH, EXPECT, HOST, HeaderValue, SET_COOKIE, UPGRADE, USER_AGENT};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Body as _, Incoming};

use crate::assertion::{Claims, Signer};
use crate::audit::Audit;
use crate::config::{Config, OnStoreError};
use crate::cookie::{Presented, SessionCookie};
use crate::error::{ClientError, ProxyError};
use crate::forwarding::{Peer, client_ip};
use crate::http::{
    Buffering, Buffers, ForwardBody, RequestBody, Trailers, X_REQUEST_ID, keep_upgrade,
    requested_upgrade, strip_hop_by_hop,
};
use crate::metrics::{Metrics, Rejected};
use crate::outcome::{SessionState, StoreWrite};
use crate::protocol::{Instructions, ProtocolHeaders, codec, parse_instructions};
use crate::store::{self, SessionEnds, SessionStore};
use crate::telemetry::{Phase, Telemetry};
use crate::upstream::{ResponseBody, Upstream};

mod ctx;
mod devices;
mod flood;
mod grace;
mod log;
mod response;
mod session;
mod sockets;
mod tunnel;

pub use response::{ProxyBody, full};

pub use log::{AccessFields, served};
pub use sockets::Sockets;
pub use tunnel::Tunnel;

pub use ctx::RequestCtx;

use flood::NewSessions;
use session::Active;

/// Everything a request needs, built once at start and shared by every connection.
pub struct State {
    pub config: Config,
    /// Shared with every body that filters trailers.
    pub headers: Arc<ProtocolHeaders>,
    pub cookies: SessionCookie,
    /// Behind `store::Timed`: every call is bounded by `store.timeout`.
    pub store: Arc<dyn SessionStore>,
    pub upstream: Upstream,
    pub metrics: Arc<Metrics>,
    /// Off unless `[audit] path` is set ([`Proxy::open`](crate::Proxy::open) sets it).
    pub audit: Audit,
    /// Signs `X-Session-Assertion`; off unless `[assertion] key_file` is set
    /// ([`Proxy::open`](crate::Proxy::open) sets it).
    pub assertion: Option<Arc<Signer>>,
    /// The request buffers' budget (`limits.request_buffer_total`).
    pub buffers: Buffers,
    /// The tunnels open under a session, closed when it ends ([`Sockets::run`] rechecks them).
    pub sockets: Arc<Sockets>,
    /// `limits.new_sessions_per_ip`, when set.
    pub new_sessions: Option<Arc<NewSessions>>,
    /// Spans per request; off unless `[tracing]` is on ([`Proxy::open`](crate::Proxy::open)
    /// sets it).
    pub telemetry: Option<Arc<Telemetry>>,
}

/// The state in force, swapped whole by a reload: each request takes the one current when it
/// starts and finishes under it, so no request sees half of two configurations.
#[derive(Clone)]
pub struct Live(Arc<ArcSwap<State>>);

impl Live {
    pub fn new(state: State) -> Self {
        Live(Arc::new(ArcSwap::from_pointee(state)))
    }

    /// The state new requests and connections get now.
    pub fn current(&self) -> Arc<State> {
        self.0.load_full()
    }

    /// Puts `state` in force for every request that starts from now on.
    pub fn replace(&self, state: State) {
        self.0.store(Arc::new(state));
    }
}

impl State {
    pub fn new(config: Config, store: Arc<dyn SessionStore>, metrics: Arc<Metrics>) -> Self {
        State {
            headers: Arc::new(config.session.headers.clone()),
            cookies: SessionCookie::metered(config.cookie.clone(), &metrics),
            upstream: Upstream::new(&config),
            buffers: Buffers::new(&config.limits),
            new_sessions: NewSessions::new(config.limits.new_sessions_per_ip),
            store,
            metrics,
            config,
            audit: Audit::off(),
            assertion: None,
            sockets: Arc::default(),
            telemetry: None,
        }
    }

    /// This state under `config` (a reload's, already checked): the store, metrics, audit log,
    /// assertion signer, sockets, tracer and cookie key ring stay the same objects; the upstream pool,
    /// the buffers' budget and the per-address cap stay too unless their settings changed.
    pub fn reloaded(&self, config: Config) -> State {
        let old = &self.config;
        let upstream = self
            .upstream
            .reconfigured(old, &config)
            .unwrap_or_else(|| Upstream::new(&config));
        let buffers = if (old.limits.request_buffer, old.limits.request_buffer_total)
            == (
                config.limits.request_buffer,
                config.limits.request_buffer_total,
            ) {
            self.buffers.clone()
        } else {
            Buffers::new(&config.limits)
        };
        let new_sessions = if old.limits.new_sessions_per_ip == config.limits.new_sessions_per_ip {
            self.new_sessions.clone()
        } else {
            NewSessions::new(config.limits.new_sessions_per_ip)
        };
        State {
            headers: Arc::new(config.session.headers.clone()),
            cookies: self.cookies.reconfigured(config.cookie.clone()),
            upstream,
            buffers,
            new_sessions,
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            config,
            audit: self.audit.clone(),
            assertion: self.assertion.clone(),
            sockets: self.sockets.clone(),
            telemetry: self.telemetry.clone(),
        }
    }

    /// Where the admin API and the sweeper announce the sessions they end, so the sockets
    /// open under them close.
    pub fn session_ends(&self) -> SessionEnds {
        let sockets = self.sockets.clone();
        SessionEnds::new(move |handle, why| sockets.ended(handle, why))
    }
}

/// The service function: never fails; every error becomes a response here.
pub async fn handle(
    state: Arc<State>,
    peer: Arc<Peer>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let mut ctx = RequestCtx::new(&req);
    if let Some(telemetry) = &state.telemetry {
        ctx.trace = Some(telemetry.start(req.headers(), &ctx.method, &ctx.path));
    }
    // Boxed: hyper moves the service future into its in-flight slot, and the pipeline's
    // state machine is the bulk of it. With the device fields it grew enough that the move
    // cost 8,262 instructions of memcpy per call; boxed, the whole process is 65,856 per
    // request against 73,281 (bench/instructions.sh, write mix).
    let mut resp = match Box::pin(pipeline(&state, &peer, req, &mut ctx)).await {
        Ok(resp) => resp,
        Err(e) => {
            let resp = response::response(&e);
            ctx.error = Some(e);
            resp
        }
    };
    resp.headers_mut()
        .insert(X_REQUEST_ID, ctx.request_id.clone());
    let status = resp.status();
    state
        .metrics
        .request(status.as_u16(), ctx.start.elapsed(), ctx.write);
    if let Some(trace) = ctx.trace.take() {
        let fault = ctx.error.as_ref().map(|e| e.fault().as_str());
        trace.finish(
            status.as_u16(),
            ctx.session.as_str(),
            ctx.write.as_str(),
            fault,
        );
    }
    log::logging(&ctx, status);
    Ok(resp)
}

async fn pipeline(
    state: &State,
    peer: &Peer,
    mut req: Request<Incoming>,
    ctx: &mut RequestCtx,
) -> Result<Response<ProxyBody>, ProxyError> {
    let upgrade = requested_upgrade(&req);
    let presented = request_filter(state, &mut req)?;
    req.headers_mut()
        .insert(X_REQUEST_ID, ctx.request_id.clone());
    // Asked for in HTTP/1.1: forwarded with its `Upgrade`, and the client's side taken now,
    // before the request is handed on.
    let client_upgrade = upgrade.map(|protocols| {
        keep_upgrade(req.headers_mut(), protocols);
        hyper::upgrade::on(&mut req)
    });
    // The body first: a buffered one is read whole before the store or the app is asked.
    let limits = &state.config.limits;
    let req = req.map(|b| RequestBody::new(b, state.headers.clone(), limits));
    let mut req = buffer(state, req).await?;
    // A skipped path (static assets) costs no store call; the cookie was still taken out.
    let current = if state.config.session.skip.matches(&ctx.path) {
        ctx.session = SessionState::Skipped;
        None
    } else {
        if let Some(trace) = &mut ctx.trace {
            trace.begin(Phase::Load);
        }
        let loaded = session::load(state, presented, ctx).await;
        if let (Some(trace), Ok(_)) = (&mut ctx.trace, &loaded) {
            trace.end("session.state", ctx.session.as_str());
        }
        match loaded {
            Ok(current) => Some(current),
            Err(ProxyError::Store(error)) if fail_open(state) => {
                tracing::warn!(%error, "session store failed; forwarding without a session (store.on_error = \"fail_open\")");
                ctx.session = SessionState::Unavailable;
                None
            }
            Err(e) => return Err(e),
        }
    };
    // Who the client is, for the session's device: read before the forwarding headers change.
    let client = current.as_ref().map(|current| session::Client {
        ip: Some(client_ip(
            req.headers(),
            peer,
            &state.config.trusted_proxies,
        )),
        user_agent: current
            .record
            .is_none()
            .then(|| req.headers().get(USER_AGENT).cloned())
            .flatten(),
    });
    if let Some(current) = &current
        && state.config.session.devices_path.matches(&ctx.path)
    {
        // Boxed: rare, and its state would otherwise grow every request's future.
        match Box::pin(devices::header(state, current)).await {
            Ok(Some(v)) => {
                req.headers_mut().insert(state.headers.devices.clone(), v);
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "could not list the user's sessions (X-Session-Devices)")
            }
        }
    }
    match &current {
        Some(current) => upstream_request_filter(state, peer, &mut req, current, ctx),
        None => {
            if ctx.session == SessionState::Unavailable {
                let unavailable = state.headers.unavailable.clone();
                req.headers_mut()
                    .insert(unavailable, HeaderValue::from_static("1"));
            }
            state.upstream.rewrite(&mut req, peer);
        }
    }
    if let Some(trace) = &mut ctx.trace {
        trace.begin(Phase::Upstream);
        trace.inject(req.headers_mut());
    }
    let sent = Instant::now();
    let answer = state.upstream.send(req).await;
    state.metrics.upstream(sent.elapsed());
    if let (Some(trace), Ok(resp)) = (&mut ctx.trace, &answer) {
        trace.end(
            "http.response.status_code",
            i64::from(resp.status().as_u16()),
        );
    }
    let mut resp = answer.inspect_err(|e| {
        if let Some(how) = e.upstream_failure() {
            state.metrics.upstream_failed(how);
        }
    })?;
    // `send` let a 101 through only for an upgrade the request offered.
    let switched = match client_upgrade {
        Some(client) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => resp
            .headers()
            .get(UPGRADE)
            .cloned()
            .map(|protocols| (client, hyper::upgrade::on(&mut resp), protocols)),
        _ => None,
    };
    let instructions = upstream_response_filter(state, &mut resp);
    // Without a session (skipped, or fail_open) nothing is saved: the stored one stays as it was.
    let mut under = None;
    if let Some(current) = &current {
        // The clock as of saving: the app may have taken a while, and expiry is judged now.
        let client = client.unwrap_or_default();
        if let Some(trace) = &mut ctx.trace {
            trace.begin(Phase::Save);
        }
        // Boxed: its state (records, the update) would otherwise be moved with every
        // request's future (measured: bench/instructions.sh).
        let saved = Box::pin(session::save(
            state,
            current,
            (instructions, client),
            store::now_ms(),
            ctx,
        ));
        let saved = saved.await;
        if let (Some(trace), Ok(_)) = (&mut ctx.trace, &saved) {
            trace.end("session.write", ctx.write.as_str());
        }
        match saved {
            Ok(saved) => {
                if let Some(cookie) = saved.cookie.clone() {
                    resp.headers_mut().append(SET_COOKIE, cookie);
                }
                // A socket lives under the session the 101 leaves its client in.
                if switched.is_some() {
                    under = saved.live(current).map(|(handle, record)| tunnel::Under {
                        sockets: state.sockets.clone(),
                        handle,
                        record,
                    });
                }
            }
            Err(ProxyError::Store(error)) if fail_open(state) => {
                // The app's answer goes out as it is; the cookie is neither set nor cleared.
                tracing::warn!(%error, "saving the session failed; answering without it (store.on_error = \"fail_open\")");
                ctx.write = StoreWrite::None;
            }
            Err(e) => return Err(e),
        }
    }
    // The session work is done (a failed save above answered 503 and dropped the app's side).
    if let Some((client, upstream, protocols)) = switched {
        let idle = state.config.limits.upgrade_idle_timeout;
        let metrics = state.metrics.clone();
        return Ok(tunnel::switch(
            resp, client, upstream, protocols, idle, metrics, under,
        ));
    }
    let reserved = state.headers.clone();
    Ok(resp.map(|b| http_body_util::Either::Left(Trailers::new(b, reserved))))
}

/// Reads the body whole when it fits a buffer (`limits.request_buffer`, within the total), so
/// the app gets it at once with its `Content-Length` (and no `Expect`: hyper answered the
/// client's `100-continue` when the reading began); else the body streams as it comes.
async fn buffer(
    state: &State,
    req: Request<RequestBody>,
) -> Result<Request<ForwardBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let (body, how) = state
        .buffers
        .read(body)
        .await
        .map_err(|e| ProxyError::Client(e.kind))?;
    match how {
        Buffering::Whole => {
            parts.headers.remove(EXPECT);
            if let Some(len) = body.whole_length() {
                parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
            }
        }
        Buffering::Overflowed => state.metrics.buffer_overflowed(),
        Buffering::Streamed => {}
    }
    Ok(Request::from_parts(parts, body))
}

/// Whether a store failure lets the request through without a session (`store.on_error`).
fn fail_open(state: &State) -> bool {
    state.config.store.on_error == OnStoreError::FailOpen
}

/// Refuses what no app should be handed (RFC 9112 §3.2's Host rules, CONNECT, targets and
/// header lists over `[limits]`) before the store or the app is asked, strips what a client
/// may not send, then takes the session cookie out of the request.
fn request_filter(state: &State, req: &mut Request<Incoming>) -> Result<Presented, ClientError> {
    let limits = &state.config.limits;
    if req.method() == Method::CONNECT {
        return Err(ClientError::Connect);
    }
    let uri = req.uri();
    let target = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if target > limits.max_uri_length {
        return Err(ClientError::UriTooLong);
    }
    // hyper counts HTTP/1.1 fields itself (`max_headers`); HTTP/2 header lists only in bytes.
    if req.headers().len() > limits.max_headers {
        return Err(ClientError::TooManyHeaders);
    }
    // A declared length over the limit is refused before a byte of the body is read.
    if let Some(max) = limits.max_body_size
        && req.body().size_hint().lower() > max
    {
        return Err(ClientError::BodyTooLarge);
    }
    check_host(req)?;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    if state.headers.strip_reserved(headers) > 0 {
        tracing::debug!("stripped client-supplied session protocol headers");
    }
    Ok(state.cookies.take(headers))
}

/// Adds the session headers and points the request at the upstream.
fn upstream_request_filter(
    state: &State,
    peer: &Peer,
    req: &mut Request<ForwardBody>,
    current: &Active,
    ctx: &RequestCtx,
) {
    let now = store::now_ms();
    // A new session, if stored, lives `first_lifetime` until its client returns.
    let expires = current.record.as_ref().map_or_else(
        || state.config.session.lifetime.expiry_of(now, now, 0, false),
        |r| r.expires_at,
    );
    let data = current.record.as_ref().map_or("{}", |r| &r.data);
    let h = &state.headers;
    let headers = req.headers_mut();
    // base64url text and ids are always valid header values; these never fail.
    if let Some(v) = codec::session_header(data) {
        // Signed over the exact value the app receives, so the data is bound to the token.
        if let Some(signer) = &state.assertion {
            let user = state.config.session.user_key.as_ref();
            let claims = Claims::new(
                ctx.request_id.to_str().unwrap_or_default(),
                &current.handle,
                current.record.is_none(),
                v.as_bytes(),
                user.and_then(|key| key.plain_user_of(data)),
            );
            headers.insert(h.assertion.clone(), signer.sign(&claims));
        }
        headers.insert(h.session.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(current.id.as_str()) {
        headers.insert(h.id.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(current.handle.as_str()) {
        headers.insert(h.handle.clone(), v);
    }
    let new = if current.record.is_some() { "0" } else { "1" };
    headers.insert(h.new.clone(), HeaderValue::from_static(new));
    headers.insert(h.expires.clone(), HeaderValue::from(expires / 1000));
    state.upstream.rewrite(req, peer);
}

/// Takes every reserved header off the response and parses the instructions among them. An
/// app's `Set-Cookie` for the session cookie goes too: only the proxy sets that cookie, so an
/// app (buggy, or made to echo input) can never fix a client's session id.
fn upstream_response_filter(state: &State, resp: &mut Response<ResponseBody>) -> Instructions {
    strip_hop_by_hop(resp.headers_mut());
    if state.cookies.strip_set_cookie(resp.headers_mut()) {
        tracing::warn!(
            cookie = state.cookies.name(),
            "dropped the upstream's Set-Cookie for the session cookie"
        );
    }
    let raw = state.headers.take_instructions(resp.headers_mut());
    let (instructions, errors) = parse_instructions(&raw);
    for e in errors {
        state.metrics.rejected(Rejected::Malformed);
        tracing::warn!(error = %e, "ignored a malformed session instruction from the upstream");
    }
    instructions
}

/// The `Host` a request names, judged by RFC 9112 §3.2: exactly one, and a valid
/// `uri-host [":" port]` (no userinfo, no path). HTTP/1.0 may leave it out.
pub fn check_host(req: &Request<Incoming>) -> Result<(), ClientError> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(ClientError::DuplicateHost);
    }
    match first {
        None if req.version() == Version::HTTP_11 => Err(ClientError::MissingHost),
        // HTTP/2 carries the host in `:authority`, which hyper puts in the URI.
        None if req.version() == Version::HTTP_2 && req.uri().authority().is_none() => {
            Err(ClientError::MissingHost)
        }
        None => Ok(()),
        Some(v) if v.is_empty() => Ok(()),
        Some(v) => match Authority::try_from(v.as_bytes()) {
            Ok(a) if !a.as_str().contains('@') => Ok(()),
            _ => Err(ClientError::InvalidHost),
        },
    }
}
