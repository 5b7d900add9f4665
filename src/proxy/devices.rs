//! `X-Session-Devices`: on a `session.devices_path` request, the current user's live sessions
//! (read through the user index), so the app can show a "your sessions" page without the admin
//! token. Base64url JSON, like `X-Session`.

use std::cmp::Reverse;
use std::net::IpAddr;

use http::HeaderValue;
use serde::Serialize;

use super::State;
use super::session::Active;
use crate::protocol::codec;
use crate::store::StoreError;

/// At most this many sessions when `session.max_per_user` is not set.
const DEFAULT_MAX: usize = 50;

/// One session as `X-Session-Devices` lists it.
#[derive(Serialize)]
struct Device<'a> {
    handle: &'a str,
    created_at: u64,
    last_seen: u64,
    created_ip: Option<IpAddr>,
    last_ip: Option<IpAddr>,
    user_agent: Option<&'a str>,
    current: bool,
}

/// The header's value for the session `current`: `None` when it has no user (or is new).
/// Sessions most recently seen first, this one always among them; at most `max_per_user`
/// (50 without it).
pub async fn header(state: &State, current: &Active) -> Result<Option<HeaderValue>, StoreError> {
    let session = &state.config.session;
    let (Some(key), Some(record)) = (&session.user_key, &current.record) else {
        return Ok(None);
    };
    let Some(user) = key.user_of(&record.data) else {
        return Ok(None);
    };
    let mut sessions = state.store.user_sessions(&user).await?;
    sessions.sort_by_key(|(handle, r)| {
        (
            *handle != current.handle,
            Reverse(r.meta.last_seen.max(r.created_at)),
        )
    });
    sessions.truncate(session.max_per_user.unwrap_or(DEFAULT_MAX));
    let devices: Vec<Device<'_>> = sessions
        .iter()
        .map(|(handle, r)| Device {
            handle: handle.as_str(),
            created_at: r.created_at,
            last_seen: r.meta.last_seen.max(r.created_at),
            created_ip: r.meta.created_ip,
            last_ip: r.meta.last_ip,
            user_agent: r.meta.user_agent.as_deref(),
            current: *handle == current.handle,
        })
        .collect();
    let json = serde_json::to_string(&devices).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(codec::session_header(&json))
}
