//! The upstream's session instructions and their precedence: Destroy beats everything, Replace
//! beats Update, Regenerate composes with the data change (the changed data moves to the new
//! id). A malformed value is dropped and reported, never a failed request.

use super::codec::{CodecError, parse_object};
use crate::session::DataChange;

/// Everything the upstream asked for in one response, after precedence is applied.
///
/// Precedence: Destroy beats everything; Replace beats Update; Regenerate composes with the data
/// change (the changed data moves to the new id).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Instructions {
    pub destroy: bool,
    pub regenerate: bool,
    pub change: Option<DataChange>,
}

impl Instructions {
    /// Whether the upstream asked to modify the session at all (werkzeug's `modified`).
    pub fn modifies(&self) -> bool {
        self.destroy || self.regenerate || self.change.is_some()
    }
}

/// The raw instruction header values taken off an upstream response (see `headers.rs`).
#[derive(Debug, Default)]
pub struct RawInstructions {
    pub update: Option<Vec<u8>>,
    pub replace: Option<Vec<u8>>,
    pub destroy: bool,
    pub regenerate: bool,
}

/// Applies precedence and parsing. A malformed Update/Replace is dropped and reported; the rest
/// of the instructions still apply (a bad Update must not also cancel a Destroy).
pub fn parse_instructions(raw: &RawInstructions) -> (Instructions, Vec<CodecError>) {
    let mut errors = Vec::new();
    let mut out = Instructions {
        destroy: raw.destroy,
        regenerate: raw.regenerate,
        change: None,
    };
    if raw.destroy {
        // Destroy beats everything: nothing else is even parsed.
        out.regenerate = false;
        return (out, errors);
    }
    if let Some(value) = &raw.replace {
        match parse_object("replace", value) {
            Ok(map) => out.change = Some(DataChange::Replace(map)),
            Err(e) => errors.push(e),
        }
    }
    if out.change.is_none()
        && let Some(value) = &raw.update
    {
        match parse_object("update", value) {
            Ok(map) => out.change = Some(DataChange::Patch(map)),
            Err(e) => errors.push(e),
        }
    }
    (out, errors)
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
        };
        let (i, e) = parse_instructions(&raw);
        assert!(e.is_empty());
        assert_eq!(
            i,
            Instructions {
                destroy: true,
                regenerate: false,
                change: None
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
}
