//! The session phases: `load` before the upstream call, `save` after it. `save` makes at most
//! one store call, so a request's effect on its session is one atomic step in the store.

use http::HeaderValue;

use super::State;
use super::ctx::{RequestCtx, SessionState, StoreWrite};
use crate::audit::Reason;
use crate::cookie::Presented;
use crate::error::ProxyError;
use crate::protocol::Instructions;
use crate::session::SessionId;
use crate::store::{Record, StoreError, Update};

/// The session as the request found it.
pub struct Current {
    pub id: SessionId,
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
) -> Result<Current, ProxyError> {
    let current = match presented {
        Presented::Valid(id) | Presented::OldKey(id) => {
            let resign = matches!(presented, Presented::OldKey(_));
            match state.store.load(&id).await? {
                Some(record) => Current {
                    id,
                    record: Some(record),
                    resign,
                },
                None if !state.config.session.renew_missing => Current {
                    id,
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
        Presented::None => fresh()?,
    };
    ctx.session = if current.record.is_some() {
        SessionState::Existing
    } else {
        SessionState::New
    };
    Ok(current)
}

fn fresh() -> Result<Current, ProxyError> {
    Ok(Current {
        id: SessionId::generate()?,
        record: None,
        resign: false,
    })
}

/// Carries out the instructions with exactly one store operation (or none), and returns the
/// `Set-Cookie` to send, if any. A cookie signed with an older key is re-set whenever the id
/// stays (no store write for that alone); a destroyed, regenerated or vanished session is not.
pub async fn save(
    state: &State,
    current: &Current,
    instructions: Instructions,
    now: u64,
    ctx: &mut RequestCtx,
) -> Result<Option<HeaderValue>, ProxyError> {
    let cookies = &state.cookies;
    let store = &state.store;
    let modifies = instructions.modifies();
    let update = Update {
        change: instructions.change,
        base: current.record.clone(),
        now,
        lifetime: state.config.session.lifetime,
        max_size: state.config.session.max_size,
        extends: true,
    };

    if instructions.destroy {
        if current.record.is_some() && store.delete(&current.id).await? {
            state.audit.destroyed(ctx, &current.id, Reason::App);
        }
        ctx.write = StoreWrite::Destroyed;
        return Ok(cookies.expire());
    }

    // Create and Regenerate hand out an id; a write that keeps it re-sends the cookie only
    // when its expiry slides (see `Cookies::resend_on_write`).
    let mut hands_out_id = true;
    let result = match &current.record {
        // werkzeug's should_save: a new session is stored only when modified.
        None if !modifies => return Ok(resign(state, current)),
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
            ctx.write = StoreWrite::Regenerated;
            store
                .regenerate(&current.id, &new_id, &update)
                .await
                .map(|r| r.map(|_| new_id))
        }
        Some(record) if update.change.is_some() || update.lifetime.needs_touch(record, now) => {
            hands_out_id = false;
            ctx.write = if update.change.is_some() {
                StoreWrite::Updated
            } else {
                StoreWrite::Touched
            };
            store
                .update(&current.id, &update)
                .await
                .map(|r| r.map(|_| current.id))
        }
        Some(_) => return Ok(resign(state, current)),
    };
    if let Ok(Some(id)) = &result {
        state
            .audit
            .saved(ctx, &current.id, id, update.change.as_ref());
    }
    match result {
        Ok(Some(id)) if hands_out_id || cookies.resend_on_write() => Ok(cookies.set(&id)),
        Ok(Some(_)) => Ok(resign(state, current)),
        Ok(None) => {
            // Destroyed or expired by another request meanwhile: nothing is resurrected.
            tracing::debug!("session vanished before it could be saved");
            ctx.write = StoreWrite::Vanished;
            Ok(None)
        }
        Err(e @ StoreError::TooLarge { .. }) => {
            tracing::warn!(error = %e, "ignored a session change from the upstream");
            ctx.write = StoreWrite::Refused;
            Ok(resign(state, current))
        }
        Err(e) => Err(e.into()),
    }
}

/// The cookie for the kept id, signed with the current key, when the request's was signed
/// with an older one.
fn resign(state: &State, current: &Current) -> Option<HeaderValue> {
    current
        .resign
        .then(|| state.cookies.set(&current.id))
        .flatten()
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
        if state.store.create(&id, &record).await? {
            ctx.write = StoreWrite::Created;
            return Ok(Some(id));
        }
        id = SessionId::generate().map_err(|e| StoreError::Backend(Box::new(e)))?;
    }
    Err(StoreError::IdCollision)
}
