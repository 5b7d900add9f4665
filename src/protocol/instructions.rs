//! The upstream's session instructions and their precedence: Destroy beats everything, Replace
//! beats Update, Regenerate composes with the data change (the changed data moves to the new
//! id), Revoke comes after all of them (see [`Revoke`]); Remember goes with the session's write
//! (and with a Regenerate, to the new id). A malformed value is dropped and reported, never a
//! failed request.

use std::time::Duration;

use super::codec::{CodecError, parse_object};
use crate::session::{DataChange, Handle};

/// Everything the upstream asked for in one response, after precedence is applied.
///
/// Precedence: Destroy beats everything; Replace beats Update; Regenerate composes with the data
/// change (the changed data moves to the new id).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Instructions {
    pub destroy: bool,
    pub regenerate: bool,
    pub change: Option<DataChange>,
    pub revoke: Option<Revoke>,
    /// `X-Session-Remember`: keep the session this long (a persistent cookie, this idle
    /// timeout); zero returns it to the configured defaults. Not yet capped.
    pub remember: Option<Duration>,
}

/// `X-Session-Revoke`: sign the session's user out of other sessions. It runs after the
/// session's own write, against the user the session has then: `others` with an Update that
/// sets the user revokes that user's other sessions; with Destroy (which beats every data
/// change) it is the user the session had. A session with no user revokes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoke {
    /// Every other session of the user (after a password change, say).
    Others,
    /// Every session of the user, this one included: the response also clears the cookie.
    All,
    /// The one session of this handle, if it is another session of the same user (a "sign
    /// out that device" button); another user's is refused.
    One(Handle),
}

/// An instruction the proxy could not read; it is dropped and counted, the others still apply.
#[derive(Debug, thiserror::Error)]
pub enum InstructionError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("revoke: {0:?} is not \"others\", \"all\" or a session's handle")]
    Revoke(String),
    #[error("remember: {0:?} is not a duration like \"30d\", \"12h\" or \"0\"")]
    Remember(String),
}

impl Instructions {
    /// Whether the upstream asked to modify the session at all (werkzeug's `modified`).
    pub fn modifies(&self) -> bool {
        self.destroy || self.regenerate || self.change.is_some() || self.remember.is_some()
    }
}

/// The raw instruction header values taken off an upstream response (see `headers.rs`).
#[derive(Debug, Default)]
pub struct RawInstructions {
    pub update: Option<Vec<u8>>,
    pub replace: Option<Vec<u8>>,
    pub destroy: bool,
    pub regenerate: bool,
    pub revoke: Option<Vec<u8>>,
    pub remember: Option<Vec<u8>>,
}

/// Applies precedence and parsing. A malformed Update/Replace is dropped and reported; the rest
/// of the instructions still apply (a bad Update must not also cancel a Destroy).
pub fn parse_instructions(raw: &RawInstructions) -> (Instructions, Vec<InstructionError>) {
    let mut errors = Vec::new();
    let mut out = Instructions {
        destroy: raw.destroy,
        regenerate: raw.regenerate,
        change: None,
        revoke: None,
        remember: None,
    };
    if let Some(value) = &raw.revoke {
        match parse_revoke(value) {
            Some(revoke) => out.revoke = Some(revoke),
            None => errors.push(InstructionError::Revoke(
                String::from_utf8_lossy(value).into_owned(),
            )),
        }
    }
    if raw.destroy {
        // Destroy beats everything: nothing else is even parsed.
        out.regenerate = false;
        return (out, errors);
    }
    if let Some(value) = &raw.remember {
        match parse_remember(value) {
            Some(d) => out.remember = Some(d),
            None => errors.push(InstructionError::Remember(
                String::from_utf8_lossy(value).into_owned(),
            )),
        }
    }
    if let Some(value) = &raw.replace {
        match parse_object("replace", value) {
            Ok(map) => out.change = Some(DataChange::Replace(map)),
            Err(e) => errors.push(e.into()),
        }
    }
    if out.change.is_none()
        && let Some(value) = &raw.update
    {
        match parse_object("update", value) {
            Ok(map) => out.change = Some(DataChange::Patch(map)),
            Err(e) => errors.push(e.into()),
        }
    }
    (out, errors)
}

/// `others` or `all`, any case, or a session's handle; blanks around ignored.
fn parse_revoke(value: &[u8]) -> Option<Revoke> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.eq_ignore_ascii_case("others") {
        Some(Revoke::Others)
    } else if text.eq_ignore_ascii_case("all") {
        Some(Revoke::All)
    } else {
        Handle::parse(text).map(Revoke::One)
    }
}

/// A duration as the config writes one (`"30d"`, `"12h 30m"`), or a whole number of seconds
/// (`0`: back to the defaults).
fn parse_remember(value: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().map(Duration::from_secs);
    }
    humantime::parse_duration(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value, json};

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn precedence() {
        let raw = RawInstructions {
            update: Some(br#"{"u":1}"#.to_vec()),
            replace: Some(br#"{"r":1}"#.to_vec()),
            destroy: true,
            regenerate: true,
            revoke: Some(b" Others ".to_vec()),
            remember: None,
        };
        let (i, e) = parse_instructions(&raw);
        assert!(e.is_empty());
        assert_eq!(
            i,
            Instructions {
                destroy: true,
                regenerate: false,
                change: None,
                revoke: Some(Revoke::Others),
                remember: None,
            }
        );

        let raw = RawInstructions {
            destroy: false,
            ..raw
        };
        let (i, _) = parse_instructions(&raw);
        assert_eq!(i.change, Some(DataChange::Replace(obj(json!({"r":1})))));
        assert!(i.regenerate);

        let raw = RawInstructions {
            replace: Some(b"bad".to_vec()),
            ..raw
        };
        let (i, e) = parse_instructions(&raw);
        assert_eq!(i.change, Some(DataChange::Patch(obj(json!({"u":1})))));
        assert_eq!(e.len(), 1);
    }

    /// Remember takes the config's durations and whole seconds; a bad one is dropped and
    /// reported; Destroy drops it.
    #[test]
    fn remember_is_a_duration() {
        for (value, want) in [
            (&b"30d"[..], Duration::from_secs(30 * 86400)),
            (b" 12h 30m ", Duration::from_secs(45000)),
            (b"0", Duration::ZERO),
            (b"3600", Duration::from_secs(3600)),
        ] {
            let raw = RawInstructions {
                remember: Some(value.to_vec()),
                ..Default::default()
            };
            let (i, e) = parse_instructions(&raw);
            assert!(e.is_empty(), "{value:?}");
            assert_eq!(i.remember, Some(want));
            assert!(i.modifies());
        }
        for bad in [&b"forever"[..], b"", b"-1", b"\xff"] {
            let raw = RawInstructions {
                remember: Some(bad.to_vec()),
                ..Default::default()
            };
            let (i, e) = parse_instructions(&raw);
            assert!(matches!(e[..], [InstructionError::Remember(_)]), "{bad:?}");
            assert_eq!(i.remember, None);
        }
        let raw = RawInstructions {
            remember: Some(b"30d".to_vec()),
            destroy: true,
            ..Default::default()
        };
        assert_eq!(parse_instructions(&raw).0.remember, None);
    }

    /// A bad Revoke is dropped and reported; it cancels nothing else.
    #[test]
    fn revoke_is_others_or_all() {
        for (value, want) in [
            (&b"all"[..], Some(Revoke::All)),
            (b"ALL", Some(Revoke::All)),
            (b"others", Some(Revoke::Others)),
            (
                b" z9Lx-tdaGXjaCkRIg9tyUUFLE58x9aBHBMKR_bDhdeY ",
                Handle::parse("z9Lx-tdaGXjaCkRIg9tyUUFLE58x9aBHBMKR_bDhdeY").map(Revoke::One),
            ),
        ] {
            let raw = RawInstructions {
                revoke: Some(value.to_vec()),
                ..Default::default()
            };
            let (i, e) = parse_instructions(&raw);
            assert!(e.is_empty());
            assert_eq!(i.revoke, want);
        }
        for bad in [&b"everyone"[..], b"", b"\xff", b"others,all"] {
            let raw = RawInstructions {
                revoke: Some(bad.to_vec()),
                update: Some(br#"{"u":1}"#.to_vec()),
                ..Default::default()
            };
            let (i, e) = parse_instructions(&raw);
            assert_eq!(e.len(), 1, "{bad:?}");
            assert!(matches!(e[0], InstructionError::Revoke(_)));
            assert_eq!((i.revoke, i.change.is_some()), (None, true));
        }
    }
}
