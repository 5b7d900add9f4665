//! The protocol's header names (built once from the configured prefix) and the rules that
//! strip the reserved namespace. Hop-by-hop and forwarding names live in `http.rs`.
//!
//! The protocol names are built once from the configured prefix. The whole prefix is reserved:
//! inbound, every client header that starts with it is removed before ours are added (so a client
//! can never forge session data); outbound, every upstream header that starts with it is removed
//! before the client sees the response (linkerd's strip-then-set rule).
//!
//! "Starts with" reads `_` as `-`: many app servers (CGI, WSGI, Rack, PHP) turn both into the
//! same `HTTP_X_SESSION_ID` variable, so `X_Session_Id` would otherwise reach the app as the
//! real thing.

use http::header::{HeaderMap, HeaderName};

use super::instructions::RawInstructions;

/// The protocol's header names, derived once from `[session] header_prefix`.
#[derive(Debug, Clone)]
pub struct ProtocolHeaders {
    /// Lowercase, as `HeaderName`s are, with every `_` written `-`.
    prefix: String,
    pub session: HeaderName,
    pub id: HeaderName,
    /// The session's handle (its public name, as the stores and the admin API know it).
    pub handle: HeaderName,
    pub new: HeaderName,
    pub expires: HeaderName,
    /// Sent instead of the session headers when the store failed and `store.on_error =
    /// "fail_open"` let the request through without a session.
    pub unavailable: HeaderName,
    /// The signed assertion of the session (`[assertion]`), for the app to verify.
    pub assertion: HeaderName,
    /// The user's live sessions, on a `session.devices_path` request.
    pub devices: HeaderName,
    update: HeaderName,
    replace: HeaderName,
    destroy: HeaderName,
    regenerate: HeaderName,
    revoke: HeaderName,
    remember: HeaderName,
}

/// The configured prefix cannot start a valid header name.
#[derive(Debug, thiserror::Error)]
#[error("header_prefix {0:?} is not a valid header name")]
pub struct InvalidPrefix(String);

impl ProtocolHeaders {
    pub fn new(prefix: &str) -> Result<Self, InvalidPrefix> {
        let lower = prefix.to_ascii_lowercase();
        let name = |suffix: &str| {
            HeaderName::from_bytes(format!("{lower}{suffix}").as_bytes())
                .map_err(|_| InvalidPrefix(prefix.to_owned()))
        };
        if lower.is_empty() {
            return Err(InvalidPrefix(prefix.to_owned()));
        }
        Ok(ProtocolHeaders {
            session: name("")?,
            id: name("-id")?,
            handle: name("-handle")?,
            new: name("-new")?,
            expires: name("-expires")?,
            unavailable: name("-unavailable")?,
            assertion: name("-assertion")?,
            devices: name("-devices")?,
            remember: name("-remember")?,
            update: name("-update")?,
            replace: name("-replace")?,
            destroy: name("-destroy")?,
            regenerate: name("-regenerate")?,
            revoke: name("-revoke")?,
            prefix: lower.replace('_', "-"),
        })
    }

    /// Whether `name` is in the reserved namespace: it starts with the prefix, `_` read as `-`
    /// (names are lowercase already). One pass over the prefix's bytes, no allocation.
    pub fn reserved(&self, name: &HeaderName) -> bool {
        let name = name.as_str().as_bytes();
        name.len() >= self.prefix.len()
            && name
                .iter()
                .zip(self.prefix.as_bytes())
                .all(|(n, p)| n == p || (*n == b'_' && *p == b'-'))
    }

    /// Removes every header in the reserved namespace; returns how many distinct names went.
    pub fn strip_reserved(&self, headers: &mut HeaderMap) -> usize {
        // Most messages carry none: look before collecting anything.
        if !headers.keys().any(|n| self.reserved(n)) {
            return 0;
        }
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|n| self.reserved(n))
            .cloned()
            .collect();
        for name in &names {
            headers.remove(name);
        }
        names.len()
    }

    /// Removes every reserved header from an upstream response and returns the instructions
    /// among them. With a repeated header the last value wins.
    pub fn take_instructions(&self, headers: &mut HeaderMap) -> RawInstructions {
        let mut raw = RawInstructions::default();
        // Which reserved names were there: the instructions', and any other.
        let mut seen = [false; 6];
        let mut others = false;
        // One pass over every value (a name's values come one after another, in order, so the
        // last one seen is the last one sent), with no lookup per name; then strip them all.
        for (name, value) in headers.iter() {
            if !self.reserved(name) {
                continue;
            }
            if *name == self.update {
                seen[0] = true;
                raw.update = Some(value.as_bytes().to_vec());
            } else if *name == self.replace {
                seen[1] = true;
                raw.replace = Some(value.as_bytes().to_vec());
            } else if *name == self.destroy {
                seen[2] = true;
                raw.destroy = true;
            } else if *name == self.regenerate {
                seen[3] = true;
                raw.regenerate = true;
            } else if *name == self.revoke {
                seen[4] = true;
                raw.revoke = Some(value.as_bytes().to_vec());
            } else if *name == self.remember {
                seen[5] = true;
                raw.remember = Some(value.as_bytes().to_vec());
            } else {
                others = true;
            }
        }
        if others {
            self.strip_reserved(headers);
        } else {
            // Only instructions (the usual case): removed by name, with no second pass over
            // the headers and no list of names to build.
            let names = [
                &self.update,
                &self.replace,
                &self.destroy,
                &self.regenerate,
                &self.revoke,
                &self.remember,
            ];
            for (name, seen) in names.into_iter().zip(seen) {
                if seen {
                    headers.remove(name);
                }
            }
        }
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn reserved_prefix_is_case_insensitive_and_whole() {
        let p = ProtocolHeaders::new("X-Session").unwrap();
        let mut h = HeaderMap::new();
        for n in [
            "x-session",
            "x-session-id",
            "x-sessionfoo",
            "x-session-update",
            "x-other",
        ] {
            h.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        assert_eq!(p.strip_reserved(&mut h), 4);
        assert!(h.contains_key("x-other"));
    }

    #[test]
    fn instructions_last_value_wins_and_every_reserved_header_goes() {
        let p = ProtocolHeaders::new("X-Session").unwrap();
        let mut h = HeaderMap::new();
        h.append("x-session-update", HeaderValue::from_static(r#"{"a":1}"#));
        h.append("content-type", HeaderValue::from_static("text/plain"));
        h.append("x-session-update", HeaderValue::from_static(r#"{"a":2}"#));
        h.append("x-session-replace", HeaderValue::from_static(r#"{"r":1}"#));
        h.append("x-session-regenerate", HeaderValue::from_static("1"));
        h.append("x-session-revoke", HeaderValue::from_static("all"));
        h.append("x-session-revoke", HeaderValue::from_static("others"));
        h.append("x-session-other", HeaderValue::from_static("x"));
        h.append("x-session-remember", HeaderValue::from_static("30d"));
        let raw = p.take_instructions(&mut h);
        assert_eq!(raw.remember.as_deref(), Some(&b"30d"[..]));
        assert_eq!(raw.revoke.as_deref(), Some(&b"others"[..]));
        assert_eq!(raw.update.as_deref(), Some(&br#"{"a":2}"#[..]));
        assert_eq!(raw.replace.as_deref(), Some(&br#"{"r":1}"#[..]));
        assert!(raw.regenerate && !raw.destroy);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("content-type"));

        let mut h = HeaderMap::new();
        h.append("x-session-destroy", HeaderValue::from_static("1"));
        h.append("x-session-remember", HeaderValue::from_static("0"));
        let raw = p.take_instructions(&mut h);
        assert!(raw.destroy && raw.update.is_none() && h.is_empty());
    }

    #[test]
    fn underscore_spellings_are_reserved_too() {
        for prefix in ["X-Session", "x_session"] {
            let p = ProtocolHeaders::new(prefix).unwrap();
            let mut h = HeaderMap::new();
            for n in [
                "x_session",
                "x_session_id",
                "x-session_update",
                "X_SESSION-NEW",
                "x_other",
            ] {
                h.insert(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_static("1"),
                );
            }
            assert_eq!(p.strip_reserved(&mut h), 4, "{prefix}");
            assert!(h.contains_key("x_other"));
        }
    }

    #[test]
    fn bad_prefix_rejected() {
        assert!(ProtocolHeaders::new("").is_err());
        assert!(ProtocolHeaders::new("X Session").is_err());
    }
}
