//! The session phases: `load` before the upstream call, `save` after it. `save` makes at most
//! one store call on the session, so a request's effect on its session is one atomic step in
//! the store. With `session.user_key`, that write may be followed by the user's: the app's
//! `X-Session-Revoke` ([`revoke`]) or the `session.max_per_user` eviction ([`evict`]), each
//! the one place the proxy destroys other sessions of a user.

use std::net::IpAddr;
use std::time::Duration;

use http::HeaderValue;

use super::State;
use super::ctx::RequestCtx;
use super::flood::{self, Verdict};
use super::grace::{self, Followed};
use crate::audit::{Event, Reason};
use crate::cookie::Presented;
use crate::error::ProxyError;
use crate::outcome::{Ended, SessionState, StoreWrite};
use crate::protocol::{Instructions, Revoke};
use crate::session::{Handle, SessionId};
use crate::store::{Loaded, Meta, Record, StoreError, Update, Visit, users};

/// The session as the request found it.
pub struct Active {
    pub id: SessionId,
    /// The id's [`Handle`], computed once: the store, the audit log and the app's
    /// `X-Session-Handle` name the session by it.
    pub handle: Handle,
    /// `None` for a session this request started.
    pub record: Option<Record>,
    /// The cookie kept this id but was signed with an older key: the response re-sets it,
    /// signed with the current one, even when nothing else would set it.
    pub resign: bool,
}

/// Loads the presented session, or starts a new one. A client never chooses its id unless
/// `renew_missing = false` (werkzeug's option) and the id is well formed.
pub async fn load(
    state: &State,
    presented: Presented,
    ctx: &mut RequestCtx,
) -> Result<Active, ProxyError> {
    let current = match presented {
        Presented::Valid(id) | Presented::OldKey(id) => {
            let resign = matches!(presented, Presented::OldKey(_));
            let handle = id.handle();
            let loaded = match state.store.load_or_expired(&handle).await? {
                // An id regenerated away (its alias first: a stale use must never be adopted
                // or renewed; an id with an alias was issued by this release, so no release
                // before handles holds it), else perhaps kept by a release before handles,
                // under the id: moved on first load.
                Loaded::Missing => match grace::follow(state, &id, &handle, ctx).await? {
                    Followed::To(active) => {
                        ctx.session = SessionState::Existing;
                        return Ok(active);
                    }
                    Followed::Dead => {
                        let current = fresh()?;
                        ctx.session = SessionState::New;
                        return Ok(current);
                    }
                    Followed::Unknown => state.store.adopt_legacy(&id, &handle).await?,
                },
                loaded => loaded,
            };
            let record = match loaded {
                Loaded::Live(record) => Some(record),
                Loaded::Expired { user } => {
                    state.audit.expired(&ctx.request_id, &handle, user);
                    state.sockets.ended(&handle, Ended::Expired);
                    None
                }
                Loaded::Missing => None,
            };
            match record {
                Some(record) => Active {
                    id,
                    handle,
                    record: Some(record),
                    resign,
                },
                None if !state.config.session.renew_missing => Active {
                    id,
                    handle,
                    record: None,
                    resign,
                },
                None => {
                    tracing::debug!("unknown or expired session id; starting a new session");
                    fresh()?
                }
            }
        }
        Presented::Invalid => {
            tracing::warn!(
                cookie = state.cookies.name(),
                "possibly suspicious activity: malformed or badly signed session cookie"
            );
            fresh()?
        }
        Presented::Absent => fresh()?,
    };
    ctx.session = if current.record.is_some() {
        SessionState::Existing
    } else {
        SessionState::New
    };
    Ok(current)
}

fn fresh() -> Result<Active, ProxyError> {
    let id = SessionId::generate()?;
    Ok(Active {
        id,
        handle: id.handle(),
        record: None,
        resign: false,
    })
}

/// Who made the request, as a session's device notes it ([`Meta`]).
#[derive(Debug, Default)]
pub struct Client {
    /// The client's address, as the forwarding rules trust it.
    pub ip: Option<IpAddr>,
    /// Its `User-Agent` (a cheap clone of the request's); read when a session is created.
    pub user_agent: Option<HeaderValue>,
}

/// The session after the request's write.
pub enum After {
    /// Left as it was loaded (no write, a refused change, a session never stored).
    Unchanged,
    /// Written: the handle of its id (a new one after a regenerate) and the record.
    Stored(Handle, Record),
    Destroyed,
    /// Gone before it could be saved.
    Vanished,
}

/// What [`save`] did: the `Set-Cookie` to send, if any, and the session after it.
pub struct Saved {
    pub cookie: Option<HeaderValue>,
    pub after: After,
}

impl Saved {
    /// The stored session the response leaves the client in (its handle and record), if any:
    /// the one a WebSocket opened by this response lives under.
    pub fn live(self, current: &Active) -> Option<(Handle, Record)> {
        match self.after {
            After::Stored(handle, record) => Some((handle, record)),
            After::Unchanged => current.record.clone().map(|r| (current.handle, r)),
            After::Destroyed | After::Vanished => None,
        }
    }
}

/// Carries out the instructions with exactly one store operation on the session (or none),
/// then the user's revoke or eviction, and returns the `Set-Cookie` to send, if any. A cookie
/// signed with an older key is re-set whenever the id stays (no store write for that alone); a
/// destroyed, regenerated or vanished session is not. Every session this ends is announced to
/// its WebSockets (`Sockets::ended`).
pub async fn save(
    state: &State,
    current: &Active,
    (instructions, client): (Instructions, Client),
    now: u64,
    ctx: &mut RequestCtx,
) -> Result<Saved, ProxyError> {
    let revoke = instructions.revoke;
    let (cookie, after) = write(state, current, (instructions, client), now, ctx).await?;
    let done = |cookie, after| Ok(Saved { cookie, after });
    let Some(key) = &state.config.session.user_key else {
        if revoke.is_some() {
            tracing::warn!(
                "ignored X-Session-Revoke: session.user_key is not set, so no session has a user"
            );
        }
        return done(cookie, after);
    };
    // Most responses neither revoke nor can evict: the user is not even looked up.
    if revoke.is_none() && state.config.session.max_per_user.is_none() {
        return done(cookie, after);
    }
    let loaded = current.record.as_ref();
    let before = loaded.and_then(|r| key.user_of(&r.data));
    let (user, id) = match &after {
        After::Stored(handle, r)
            if loaded.is_some_and(|l| std::sync::Arc::ptr_eq(&l.data, &r.data)) =>
        {
            (before.clone(), Some(*handle))
        }
        After::Stored(handle, r) => (key.user_of(&r.data), Some(*handle)),
        After::Unchanged => (before.clone(), loaded.map(|_| current.handle)),
        // Destroy beats data changes: the user is the one the session had.
        After::Destroyed => (before.clone(), None),
        After::Vanished => (None, None),
    };
    if let Some(revoke) = revoke {
        let Some(user) = user else {
            tracing::debug!("X-Session-Revoke on a session with no user: nothing to revoke");
            return done(cookie, after);
        };
        let except = match revoke {
            Revoke::Others => id,
            Revoke::All => None,
            Revoke::One(target) => {
                // Boxed: rare, and its state would otherwise grow every save's future.
                Box::pin(revoke_one(state, &user, &target, id.as_ref(), ctx)).await?;
                return done(cookie, after);
            }
        };
        self::revoke(state, &user, except.as_ref(), ctx).await?;
        if revoke == Revoke::All {
            ctx.write = StoreWrite::Destroyed;
            return done(state.cookies.expire(), After::Destroyed);
        }
        return done(cookie, after);
    }
    if let (Some(max), Some(user), Some(id), After::Stored(..)) =
        (state.config.session.max_per_user, &user, id, &after)
        && Some(user.as_str()) != before.as_deref()
        && let Err(error) = evict(state, user, &id, max, ctx).await
    {
        // The session itself was saved; the limit is enforced at the user's next sign-in.
        tracing::warn!(%error, "could not evict a user's oldest sessions (session.max_per_user)");
    }
    done(cookie, after)
}

/// `X-Session-Revoke`: destroys the sessions of `user` but `except`; returns their handles.
async fn revoke(
    state: &State,
    user: &str,
    except: Option<&Handle>,
    ctx: &RequestCtx,
) -> Result<Vec<Handle>, StoreError> {
    let destroyed = users::revoke(&*state.store, user, except).await?;
    for id in &destroyed {
        state
            .audit
            .destroyed(&ctx.request_id, id, Reason::Revoked, Some(user));
        state.sockets.ended(id, Ended::Revoked);
    }
    tracing::info!(
        revoked = destroyed.len(),
        "the app revoked its user's sessions (X-Session-Revoke)"
    );
    Ok(destroyed)
}

/// `X-Session-Revoke: <handle>`: destroys the session `target` if it is another live session
/// of `user`; a handle of another user's session (or this one's) is refused: logged, nothing
/// ends. The owner is read from the stored record, never taken from the app.
async fn revoke_one(
    state: &State,
    user: &str,
    target: &Handle,
    this: Option<&Handle>,
    ctx: &RequestCtx,
) -> Result<(), StoreError> {
    if this == Some(target) {
        tracing::warn!(
            "refused X-Session-Revoke of the session's own handle (X-Session-Destroy ends it)"
        );
        return Ok(());
    }
    let key = state.config.session.user_key.as_ref();
    let Some(record) = state.store.load(target).await? else {
        tracing::debug!("X-Session-Revoke of a handle with no live session: nothing to revoke");
        return Ok(());
    };
    if key.and_then(|k| k.user_of(&record.data)).as_deref() != Some(user) {
        tracing::warn!(
            target = %target.as_str(),
            "refused X-Session-Revoke of a session that is not the same user's"
        );
        return Ok(());
    }
    if state.store.delete(target).await? {
        state
            .audit
            .destroyed(&ctx.request_id, target, Reason::Revoked, Some(user));
        state.sockets.ended(target, Ended::Revoked);
        tracing::info!("the app revoked one of its user's sessions (X-Session-Revoke)");
    }
    Ok(())
}

/// `session.max_per_user`: `keep` was just given to `user`; destroys the user's least recently
/// used other sessions over `max`; returns their handles.
async fn evict(
    state: &State,
    user: &str,
    keep: &Handle,
    max: usize,
    ctx: &RequestCtx,
) -> Result<Vec<Handle>, StoreError> {
    let destroyed = users::evict(&*state.store, user, keep, max).await?;
    for id in &destroyed {
        state
            .audit
            .destroyed(&ctx.request_id, id, Reason::Evicted, Some(user));
        state.sockets.ended(id, Ended::Evicted);
    }
    if !destroyed.is_empty() {
        tracing::info!(
            evicted = destroyed.len(),
            max,
            "evicted a user's least recently used sessions (session.max_per_user)"
        );
    }
    Ok(destroyed)
}

/// The one store operation on the session; the cookie to send and what the session is now.
async fn write(
    state: &State,
    current: &Active,
    (instructions, client): (Instructions, Client),
    now: u64,
    ctx: &mut RequestCtx,
) -> Result<(Option<HeaderValue>, After), ProxyError> {
    let cookies = &state.cookies;
    let store = &state.store;
    let modifies = instructions.modifies();
    let lifetime = state.config.session.lifetime;
    let remember = instructions.remember.map(|asked| {
        if asked > lifetime.remember_max {
            tracing::warn!(
                ?asked,
                max = ?lifetime.remember_max,
                "X-Session-Remember over session.remember_max: capped"
            );
        }
        lifetime.remember_ms(asked)
    });
    // The user agent only for a session this request may create: no copy on the hot path.
    let user_agent = match (&current.record, &client.user_agent) {
        (None, Some(ua)) => Some(Meta::user_agent(ua.as_bytes())),
        _ => None,
    };
    let update = Update {
        change: instructions.change,
        base: current.record.clone(),
        now,
        lifetime,
        max_size: state.config.session.max_size,
        extends: true,
        visit: Some(Visit {
            ip: client.ip,
            user_agent,
            remember,
        }),
    };

    if instructions.destroy {
        if current.record.is_some() && store.delete(&current.handle).await? {
            let user = state
                .audit
                .is_on()
                .then(|| user_of(state, current.record.as_ref()));
            state.audit.destroyed(
                &ctx.request_id,
                &current.handle,
                Reason::App,
                user.flatten().as_deref(),
            );
        }
        if current.record.is_some() {
            state.sockets.ended(&current.handle, Ended::Destroyed);
        }
        ctx.write = StoreWrite::Destroyed;
        return Ok((cookies.expire(), After::Destroyed));
    }

    // Create and Regenerate hand out an id; a write that keeps it re-sends the cookie only
    // when its expiry slides (see `SessionCookie::resend_on_write`).
    let mut hands_out_id = true;
    let result = match &current.record {
        // werkzeug's should_save: a new session is stored only when modified.
        None if !modifies => return Ok((resign(state, current), After::Unchanged)),
        None if throttled(state, &client) => {
            ctx.write = StoreWrite::Throttled;
            return Ok((None, After::Unchanged));
        }
        None => {
            // Regenerate always yields a server-made id, even for a session that adopted a
            // client's id under `renew_missing = false`.
            let id = if instructions.regenerate {
                SessionId::generate()?
            } else {
                current.id
            };
            let handle = if id == current.id {
                current.handle
            } else {
                id.handle()
            };
            create(state, id, handle, &update, ctx).await
        }
        Some(_) if instructions.regenerate => {
            let new_id = SessionId::generate()?;
            let new_handle = new_id.handle();
            ctx.write = StoreWrite::Regenerated;
            let alias = grace::alias(state, &current.id, &new_id, now)?;
            store
                .regenerate_aliased(&current.handle, &new_handle, &update, alias.as_ref())
                .await
                .map(|r| r.map(|r| (new_id, new_handle, r)))
        }
        Some(record) if update.change.is_some() || update.needs_touch(record) => {
            hands_out_id = false;
            ctx.write = if update.change.is_some() {
                StoreWrite::Updated
            } else {
                StoreWrite::Touched
            };
            store
                .update(&current.handle, &update)
                .await
                .map(|r| r.map(|r| (current.id, current.handle, r)))
        }
        Some(_) => return Ok((resign(state, current), After::Unchanged)),
    };
    if let Ok(Some((_, handle, r))) = &result {
        // The event (its key names collected) only when the audit log is on: a save is on the
        // request path.
        let change = update.change.as_ref();
        let event = || match ctx.write {
            StoreWrite::Created => Some(Event::created(change)),
            StoreWrite::Updated => Some(Event::of_change(change)),
            StoreWrite::Regenerated => Some(Event::regenerated(current.handle, change)),
            _ => None,
        };
        if state.audit.is_on()
            && let Some(event) = event()
        {
            state
                .audit
                .saved(&ctx.request_id, handle, event, || user_of(state, Some(r)));
        }
    }
    if ctx.write == StoreWrite::Regenerated && matches!(result, Ok(Some(_))) {
        grace::regenerated(state, current.handle);
    }
    match result {
        Ok(Some((id, handle, r))) => {
            // A remembered session's persistent cookie slides with every write; one that
            // stops being remembered gets the configured cookie back once.
            let was_remembered = current.record.as_ref().is_some_and(|r| r.meta.remember > 0);
            let cookie = if r.meta.remember > 0 {
                cookies.set_remembered(&id, Duration::from_millis(r.meta.remember))
            } else if hands_out_id || cookies.resend_on_write() || was_remembered {
                cookies.set(&id)
            } else {
                resign(state, current)
            };
            Ok((cookie, After::Stored(handle, r)))
        }
        Ok(None) => {
            // Destroyed or expired by another request meanwhile: nothing is resurrected.
            tracing::debug!("session vanished before it could be saved");
            if current.record.is_some() {
                state.sockets.ended(&current.handle, Ended::Gone);
            }
            ctx.write = StoreWrite::Vanished;
            Ok((None, After::Vanished))
        }
        Err(e @ StoreError::TooLarge { .. }) => {
            tracing::warn!(error = %e, "ignored a session change from the upstream");
            ctx.write = StoreWrite::Refused;
            Ok((resign(state, current), After::Unchanged))
        }
        Err(e) => Err(e.into()),
    }
}

/// The user `record` names, with `session.user_key`: for the audit log only.
fn user_of(state: &State, record: Option<&Record>) -> Option<String> {
    let key = state.config.session.user_key.as_ref()?;
    key.user_of(&record?.data)
}

/// The cookie for the kept id, signed with the current key, when the request's was signed
/// with an older one.
fn resign(state: &State, current: &Active) -> Option<HeaderValue> {
    if !current.resign {
        return None;
    }
    match current.record.as_ref().map_or(0, |r| r.meta.remember) {
        0 => state.cookies.set(&current.id),
        ms => state
            .cookies
            .set_remembered(&current.id, Duration::from_millis(ms)),
    }
}

/// Whether `limits.new_sessions_per_ip` keeps this client from creating a session now.
fn throttled(state: &State, client: &Client) -> bool {
    let (Some(cap), Some(ip)) = (&state.new_sessions, client.ip) else {
        return false;
    };
    match cap.check(ip) {
        Verdict::Create => false,
        Verdict::Refuse { tell } => {
            if tell {
                tracing::warn!(
                    client = %flood::prefix(ip),
                    "client over limits.new_sessions_per_ip: answering without a new session (logged once a minute per client)"
                );
            }
            true
        }
    }
}

/// Stores a new session; on the (astronomically unlikely) id collision, retries with a new id.
async fn create(
    state: &State,
    id: SessionId,
    handle: Handle,
    update: &Update,
    ctx: &mut RequestCtx,
) -> Result<Option<(SessionId, Handle, Record)>, StoreError> {
    let record = update.create()?;
    let (mut id, mut handle) = (id, handle);
    for _ in 0..4 {
        if state.store.create(&handle, &record).await? {
            ctx.write = StoreWrite::Created;
            return Ok(Some((id, handle, record)));
        }
        id = SessionId::generate().map_err(|e| StoreError::Backend(Box::new(e)))?;
        handle = id.handle();
    }
    Err(StoreError::IdCollision)
}
