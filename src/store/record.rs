//! [`Record`], the stored session every backend keeps, and its JSON (as the fs and Redis stores
//! keep it): written by hand in the bytes serde wrote, read by serde.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Meta, Result, Sealer, StoreError};
use crate::session::Handle;

/// One stored session.
///
/// A new field must be added in five places, which the compiler does not all point to: this
/// struct; the JSON writer (`Record::json_tail` and `JSON_TAIL_MAX`); the JSON reader
/// (`StoredRecord` and [`Record::from_json`]); the sqlite store's columns (a migration in
/// `sqlite/schema.rs` and its row reads and writes); and the admin and CLI view
/// (`ShownSession` in `sweeper.rs`). Per-session metadata goes in [`Meta`] instead: one place.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The session data: the text of a JSON object, kept as text so a read costs no parse.
    pub data: Arc<str>,
    /// Unix milliseconds.
    pub created_at: u64,
    /// Last change of `data`, unix milliseconds.
    pub updated_at: u64,
    /// The session is dead at this instant (unix milliseconds).
    pub expires_at: u64,
    /// Bumped by every write, so optimistic stores can detect a concurrent one.
    pub version: u64,
    /// Everything else kept about the session (remember-me, device, first return).
    pub meta: Meta,
}

impl Record {
    pub fn is_live(&self, now: u64) -> bool {
        self.expires_at > now
    }

    /// The JSON the file and Redis stores keep, and the admin listing shows.
    ///
    /// Written by hand, in the bytes `serde_json` wrote for it before (fields in this order,
    /// no spaces), so records on disk and in Redis read the same either way. `data` goes in as
    /// the text it is: it is a valid JSON object by construction (a merge's output, or text a
    /// backend validated on reading it back), so copying it through a parser would only
    /// re-check it.
    pub fn to_json(&self) -> Result<String> {
        let meta = self.meta_json(&Sealer::default(), None)?;
        let pieces = self.json_pieces(meta.as_deref());
        let mut out = String::with_capacity(pieces.iter().map(|p| p.as_str().len()).sum());
        for piece in &pieces {
            out.push_str(piece.as_str());
        }
        Ok(out)
    }

    /// [`Record::to_json`] in pieces, for a writer that takes them one at a time (the
    /// Redis store writes them straight into its command): `{"data":`, the data, the times,
    /// the meta (`meta`: [`Record::meta_json`]) and the closing brace.
    pub(crate) fn json_pieces<'a>(&'a self, meta: Option<&'a str>) -> [JsonPiece<'a>; 5] {
        debug_assert!(
            Record::check_data(&self.data).is_ok(),
            "a record's data is a JSON object: {:?}",
            self.data
        );
        self.json_pieces_with(&self.data, meta)
    }

    /// [`Record::json_pieces`] with `data` in place of the record's: the JSON value a
    /// [`Sealer::seal_json`] made of it (the data itself, or its sealed form as a string).
    pub(crate) fn json_pieces_with<'a>(
        &self,
        data: &'a str,
        meta: Option<&'a str>,
    ) -> [JsonPiece<'a>; 5] {
        [
            JsonPiece::Str(JSON_HEAD),
            JsonPiece::Str(data),
            JsonPiece::Tail(self.json_tail()),
            JsonPiece::Str(if meta.is_some() { r#","meta":"# } else { "" }),
            JsonPiece::Str(meta.map_or("}", |m| m)),
        ]
    }

    /// The JSON value of `meta` a backend stores for `id` (sealed as a JSON string when
    /// `sealer` is on), ending in the record's closing brace; `None` when there is nothing to
    /// store (the JSON then leaves `meta` out, as records before it had none).
    pub(crate) fn meta_json(&self, sealer: &Sealer, id: Option<&Handle>) -> Result<Option<String>> {
        if self.meta.is_empty() {
            return Ok(None);
        }
        let text = self.meta.to_json()?;
        let mut value = match id {
            Some(id) if sealer.is_on() => sealer.seal_json(&text, id)?.into_owned(),
            _ => text,
        };
        value.push('}');
        Ok(Some(value))
    }

    /// The meta's text as a store that keeps it in a column of its own holds it for `id`
    /// (sealed when `sealer` is on); `None` when there is nothing to store.
    pub(crate) fn meta_column(&self, sealer: &Sealer, id: &Handle) -> Result<Option<String>> {
        if self.meta.is_empty() {
            return Ok(None);
        }
        let text = self.meta.to_json()?;
        Ok(Some(sealer.seal(&text, id)?.into_owned()))
    }

    /// The JSON a backend stores for `id`: [`Record::to_json`] with the data (and meta) sealed
    /// by `sealer` (as JSON strings), or as they are when sealing is off.
    pub fn to_stored_json(&self, sealer: &Sealer, id: &Handle) -> Result<String> {
        let data = sealer.seal_json(&self.data, id)?;
        let meta = self.meta_json(sealer, Some(id))?;
        let pieces = self.json_pieces_with(&data, meta.as_deref());
        let mut out = String::with_capacity(pieces.iter().map(|p| p.as_str().len()).sum());
        for piece in &pieces {
            out.push_str(piece.as_str());
        }
        Ok(out)
    }

    /// The bytes of the JSON after `data`: the four integers.
    fn json_tail(&self) -> JsonTail {
        let mut tail = JsonTail::default();
        let mut int = itoa::Buffer::new();
        for (name, value) in [
            (&br#","created_at":"#[..], self.created_at),
            (br#","updated_at":"#, self.updated_at),
            (br#","expires_at":"#, self.expires_at),
            (br#","version":"#, self.version),
        ] {
            tail.push(name);
            tail.push(int.format(value).as_bytes());
        }
        tail
    }

    /// The record a backend read back for `id`. One that does not parse is logged at `error`
    /// and counts as missing, so one bad file or value cannot lock a client out of the site
    /// (they get a fresh session); it is left where it is for inspection. The log names the id
    /// by its prefix only: the whole id is a bearer credential.
    ///
    /// Sealed data is opened with `sealer`; one that does not open is missing too (the sealer
    /// counted and logged it), and plain data (stored before a key was set) reads as it is.
    pub fn from_stored(bytes: &[u8], id: &Handle, sealer: &Sealer) -> Option<Record> {
        Record::readable(Record::from_sealed_json(bytes, sealer, id), id).flatten()
    }

    /// [`Record::from_json`], opening sealed data: `Ok(None)` for sealed data that does not
    /// open (already counted and logged by the sealer), an error for JSON that is not a record.
    pub fn from_sealed_json(bytes: &[u8], sealer: &Sealer, id: &Handle) -> Result<Option<Record>> {
        let s: StoredRecord<'_> =
            serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let raw = s.data.get();
        let meta = match s.meta.map(RawValue::get) {
            None => Meta::default(),
            Some(m) if !m.starts_with('"') => Meta::from_json(m)?,
            Some(m) => match sealer.open_json(m, id) {
                Ok(text) => Meta::from_json(&text)?,
                Err(super::seal::Unreadable) => return Ok(None),
            },
        };
        if !raw.starts_with('"') {
            return Record::from_parts(raw, &s, meta).map(Some);
        }
        match sealer.open_json(raw, id) {
            Ok(data) if data.starts_with('{') => {
                Ok(Some(Record::assemble(Arc::from(data), &s, meta)))
            }
            Ok(_) => Err(StoreError::Corrupt("data is not a JSON object".to_owned())),
            Err(super::seal::Unreadable) => Ok(None),
        }
    }

    /// The one rule for a record a backend could not read back, however it keeps records
    /// (whole JSON, or columns): logged, and treated as missing.
    pub(crate) fn readable<T>(record: Result<T>, id: &Handle) -> Option<T> {
        record
            .inspect_err(|error| {
                tracing::error!(%error, ?id, "unreadable stored session treated as missing")
            })
            .ok()
    }

    /// `data` as a backend that keeps it apart from the times holds it: valid JSON and an
    /// object, or the record is [`StoreError::Corrupt`].
    pub(crate) fn check_data(data: &str) -> Result<()> {
        serde_json::from_str::<&RawValue>(data).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if !data.starts_with('{') {
            return Err(StoreError::Corrupt("data is not a JSON object".to_owned()));
        }
        Ok(())
    }

    /// Reads what [`Record::to_json`] writes, and any other JSON spelling of it (spaces,
    /// another field order) that an earlier version or a hand edit left. `data` is borrowed
    /// from `bytes` while it is checked, then copied once into the record.
    pub fn from_json(bytes: &[u8]) -> Result<Record> {
        let s: StoredRecord<'_> =
            serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let meta = s
            .meta
            .map_or(Ok(Meta::default()), |m| Meta::from_json(m.get()))?;
        Record::from_parts(s.data.get(), &s, meta)
    }

    /// The `expires_at` of a stored record's JSON, without reading its data (which may be
    /// sealed under a key no longer configured); `None` if it is no record.
    pub(crate) fn expires_at_of(bytes: &[u8]) -> Option<u64> {
        serde_json::from_slice::<StoredRecord<'_>>(bytes)
            .ok()
            .map(|s| s.expires_at)
    }

    /// The record of a parsed JSON whose data is `data`, a JSON object's text.
    fn from_parts(data: &str, s: &StoredRecord<'_>, meta: Meta) -> Result<Record> {
        if !data.starts_with('{') {
            return Err(StoreError::Corrupt("data is not a JSON object".to_owned()));
        }
        Ok(Record::assemble(Arc::from(data), s, meta))
    }

    fn assemble(data: Arc<str>, s: &StoredRecord<'_>, meta: Meta) -> Record {
        Record {
            data,
            created_at: s.created_at,
            updated_at: s.updated_at,
            expires_at: s.expires_at,
            version: s.version,
            meta,
        }
    }
}

/// What a record's JSON starts with.
const JSON_HEAD: &str = r#"{"data":"#;

/// The longest [`Record::json_tail`]: the field names (53 bytes), four `u64`s of up to 20
/// digits each.
const JSON_TAIL_MAX: usize = 53 + 4 * 20;

/// The end of a record's JSON, on the stack: it is short and written once per save.
pub(crate) struct JsonTail {
    buf: [u8; JSON_TAIL_MAX],
    len: usize,
}

impl Default for JsonTail {
    fn default() -> Self {
        JsonTail {
            buf: [0; JSON_TAIL_MAX],
            len: 0,
        }
    }
}

impl JsonTail {
    fn push(&mut self, bytes: &[u8]) {
        // Sized for the longest tail there is, so this never runs out of room.
        if let Some(room) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            room.copy_from_slice(bytes);
            self.len += bytes.len();
        }
    }

    fn as_str(&self) -> &str {
        // Only ASCII names and digits were pushed.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// One piece of a record's JSON ([`Record::json_pieces`]).
pub(crate) enum JsonPiece<'a> {
    Str(&'a str),
    Tail(JsonTail),
}

impl JsonPiece<'_> {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            JsonPiece::Str(s) => s,
            JsonPiece::Tail(t) => t.as_str(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRecord<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
    created_at: u64,
    updated_at: u64,
    expires_at: u64,
    version: u64,
    #[serde(borrow, default)]
    meta: Option<&'a RawValue>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[test]
    fn record_json_round_trip() {
        let r = Record {
            data: Arc::from(r#"{"k":[1,{}],"s":"é"}"#),
            created_at: 1,
            updated_at: 2,
            expires_at: 3,
            version: 4,
            meta: Default::default(),
        };
        assert_eq!(
            Record::from_json(r.to_json().unwrap().as_bytes()).unwrap(),
            r
        );
        assert!(
            Record::from_json(
                br#"{"data":[1],"created_at":1,"updated_at":2,"expires_at":3,"version":4}"#
            )
            .is_err()
        );
        assert!(Record::from_json(b"{").is_err());
    }

    /// A record's meta goes in its JSON (after the times, left out when empty) and, with a
    /// sealer on, sealed like its data, for the handle it is stored under.
    #[test]
    fn meta_round_trips_plain_and_sealed() {
        let r = Record {
            data: Arc::from(r#"{"a":1}"#),
            created_at: 1,
            updated_at: 2,
            expires_at: 3,
            version: 4,
            meta: Meta {
                remember: 5,
                returned: true,
                created_ip: Some("192.0.2.1".parse().unwrap()),
                user_agent: Some(Arc::from("ua")),
                ..Meta::default()
            },
        };
        let json = r.to_json().unwrap();
        assert!(json.ends_with(r#","version":4,"meta":{"remember":5,"returned":true,"created_ip":"192.0.2.1","user_agent":"ua"}}"#), "{json}");
        assert_eq!(Record::from_json(json.as_bytes()).unwrap(), r);
        let id = crate::session::SessionId::generate().unwrap().handle();
        let sealer = Sealer::new(&["k".repeat(32)], Default::default()).unwrap();
        let stored = r.to_stored_json(&sealer, &id).unwrap();
        assert!(!stored.contains("192.0.2.1"), "{stored}");
        assert_eq!(
            Record::from_stored(stored.as_bytes(), &id, &sealer),
            Some(r)
        );
    }

    /// The JSON the file and Redis stores kept before `to_json` was written by hand:
    /// `serde_json` over this struct. The hand-written one must give the same bytes.
    #[derive(Serialize)]
    struct SerdeRecord<'a> {
        data: &'a RawValue,
        created_at: u64,
        updated_at: u64,
        expires_at: u64,
        version: u64,
    }

    #[test]
    fn record_json_is_byte_for_byte_what_serde_wrote() {
        for (data, n) in [
            ("{}", 0),
            (
                r#"{"k":[1,{}],"s":"é\"\u00e9","n":null,"f":1.5e300}"#,
                1_767_225_600_000,
            ),
            (r#"{ "spaced" : [ 1 , 2 ] }"#, u64::MAX),
        ] {
            let r = Record {
                data: Arc::from(data),
                created_at: n,
                updated_at: n / 3,
                expires_at: n.saturating_add(1),
                version: n / 7,
                meta: Default::default(),
            };
            let raw: &RawValue = serde_json::from_str(data).unwrap();
            let serde = serde_json::to_string(&SerdeRecord {
                data: raw,
                created_at: r.created_at,
                updated_at: r.updated_at,
                expires_at: r.expires_at,
                version: r.version,
            })
            .unwrap();
            let json = r.to_json().unwrap();
            assert_eq!(json, serde);
            assert_eq!(Record::from_json(json.as_bytes()).unwrap(), r);
        }
    }

    /// Records as earlier versions (or a hand edit) stored them still load: any field order,
    /// spaces, escapes inside `data` kept as they were written.
    #[test]
    fn a_record_stored_by_earlier_code_still_loads() {
        let want = |data: &str| Record {
            data: Arc::from(data),
            created_at: 1_767_225_600_000,
            updated_at: 1_767_225_600_001,
            expires_at: 1_767_227_400_000,
            version: 12,
            meta: Default::default(),
        };
        let stored = br#"{"data":{"user":"ada","cart":[1,2],"s":"\u00e9\n"},"created_at":1767225600000,"updated_at":1767225600001,"expires_at":1767227400000,"version":12}"#;
        assert_eq!(
            Record::from_json(stored).unwrap(),
            want(r#"{"user":"ada","cart":[1,2],"s":"\u00e9\n"}"#)
        );
        let edited = br#" { "version" : 12, "expires_at":1767227400000,
            "data" : {"a": 1} , "updated_at":1767225600001, "created_at":1767225600000 } "#;
        assert_eq!(Record::from_json(edited).unwrap(), want(r#"{"a": 1}"#));
        for bad in [
            &br#"{"data":{},"created_at":1,"updated_at":2,"expires_at":3}"#[..],
            br#"{"data":{},"created_at":1,"updated_at":2,"expires_at":3,"version":4,"x":0}"#,
            br#"{"data":{},"created_at":-1,"updated_at":2,"expires_at":3,"version":4}"#,
            br#"{"data":"{}","created_at":1,"updated_at":2,"expires_at":3,"version":4}"#,
            br#"{"data":{},"created_at":1,"updated_at":2,"expires_at":3,"version":4"#,
            b"\xff",
        ] {
            assert!(
                Record::from_json(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
