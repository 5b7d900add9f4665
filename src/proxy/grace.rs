//! `session.regenerate_grace`: what an id regenerated away still does. A regenerate leaves an
//! [`Alias`] under the old handle (built here, written by the store's regenerate); a request
//! whose id the store no longer holds follows it ([`follow`]): within the grace to the new
//! session, whose id (sealed under the old one) it then carries; after it, a stale use
//! (counted, logged at warn, audited, and with `session.on_stale_use = "revoke"` the user's
//! sessions ended). An alias whose new session is gone (destroyed, revoked, expired) is dead:
//! a Destroy or Revoke ends the grace at once without touching the alias.

use std::time::Duration;

use super::State;
use super::ctx::RequestCtx;
use super::session::Active;
use crate::config::OnStaleUse;
use crate::error::ProxyError;
use crate::outcome::Ended;
use crate::session::{Handle, SessionId};
use crate::store::{Alias, Loaded, StoreError, now_ms, users};

/// What an id the store holds no session for turned out to be.
pub enum Followed {
    /// No alias: an unknown id (a release before handles may still hold it).
    Unknown,
    /// Within the grace: the session it moved to, under its new id.
    To(Active),
    /// An alias past its grace (a stale use, reported here) or naming a session that ended:
    /// the request gets a fresh session.
    Dead,
}

/// The alias for a regenerate of `old` to `new` at `now`, or `None` with no grace.
pub fn alias(
    state: &State,
    old: &SessionId,
    new: &SessionId,
    now: u64,
) -> Result<Option<Alias>, StoreError> {
    let grace = state.config.session.regenerate_grace;
    if grace.is_zero() {
        return Ok(None);
    }
    let until = now.saturating_add(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX));
    Alias::new(old, new, until).map(Some)
}

/// Tells the sockets of `old`, regenerated away, that its session ended: at once with no grace,
/// else once the grace is over (the old id still reaches the session until then).
pub fn regenerated(state: &State, old: Handle) {
    let grace = state.config.session.regenerate_grace;
    if grace.is_zero() {
        state.sockets.ended(&old, Ended::Regenerated);
        return;
    }
    let sockets = state.sockets.clone();
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        sockets.ended(&old, Ended::Regenerated);
    });
}

/// Follows the alias under `handle` (the presented `id`'s), if any; with no grace configured,
/// [`Followed::Unknown`] without a store call.
pub async fn follow(
    state: &State,
    id: &SessionId,
    handle: &Handle,
    ctx: &RequestCtx,
) -> Result<Followed, ProxyError> {
    if state.config.session.regenerate_grace == Duration::ZERO {
        return Ok(Followed::Unknown);
    }
    let Some(alias) = state.store.alias(handle).await? else {
        return Ok(Followed::Unknown);
    };
    let now = now_ms();
    let record = match state.store.load_or_expired(&alias.new).await? {
        Loaded::Live(record) => record,
        Loaded::Expired { user } => {
            state.audit.expired(&ctx.request_id, &alias.new, user);
            state.sockets.ended(&alias.new, Ended::Expired);
            return Ok(Followed::Dead);
        }
        Loaded::Missing => return Ok(Followed::Dead),
    };
    if alias.in_grace(now) {
        let Some(new_id) = alias.open(id) else {
            tracing::warn!(old = %handle, "an alias of a regenerated session did not open; starting a new session");
            return Ok(Followed::Dead);
        };
        tracing::debug!(old = %handle, new = %alias.new, "a regenerated-away id within its grace");
        return Ok(Followed::To(Active {
            id: new_id,
            handle: alias.new,
            record: Some(record),
            // The response hands out the new id.
            resign: true,
        }));
    }
    state.metrics.stale_use();
    let user = state
        .config
        .session
        .user_key
        .as_ref()
        .and_then(|k| k.user_of(&record.data));
    tracing::warn!(
        old = %handle,
        new = %alias.new,
        "possibly suspicious activity: a session id regenerated away was used after its grace \
         (session.regenerate_grace); starting a new session"
    );
    state
        .audit
        .stale_use(&ctx.request_id, handle, &alias.new, user.clone());
    if state.config.session.on_stale_use == OnStaleUse::Revoke
        && let Some(user) = user
    {
        revoke(state, &user, ctx).await;
    }
    Ok(Followed::Dead)
}

/// `session.on_stale_use = "revoke"`: ends every session of `user`. A failure is logged: the
/// request itself goes on with a fresh session.
async fn revoke(state: &State, user: &str, ctx: &RequestCtx) {
    match users::revoke(&*state.store, user, None).await {
        Ok(ended) => {
            for h in &ended {
                state.audit.destroyed(
                    &ctx.request_id,
                    h,
                    crate::audit::Reason::Revoked,
                    Some(user),
                );
                state.sockets.ended(h, Ended::Revoked);
            }
            tracing::warn!(
                revoked = ended.len(),
                "ended every session of the user of a stale session id (session.on_stale_use)"
            );
        }
        Err(error) => {
            tracing::warn!(%error, "could not end the sessions of the user of a stale session id (session.on_stale_use)");
        }
    }
}
