//! The one function that computes a record's next state ([`Update::apply`]) and a session's
//! first record ([`Update::create`]). Every backend calls these under its own atomicity, so all
//! of them agree on merge, size and expiry rules.

use std::sync::Arc;

use super::{Meta, Record, Result, StoreError, Visit};
use crate::session::{DataChange, Lifetime, ms};

/// A write to an existing session: an optional data change plus the refreshed expiry.
#[derive(Debug, Clone)]
pub struct Update {
    pub change: Option<DataChange>,
    /// The record as this request loaded it, if it did. Optimistic stores (Redis) try a
    /// compare-and-set against its `version` first and re-read only when another write came
    /// in between; stores that lock ignore it.
    pub base: Option<Record>,
    pub now: u64,
    pub lifetime: Lifetime,
    pub max_size: usize,
    /// Whether this write is the user's activity and moves the idle deadline. An operator's
    /// edit through the admin API is not: the session dies when it would have.
    pub extends: bool,
    /// The client's request this write is made for (`None`: the admin's, a socket's): it
    /// marks the session returned and notes the device in its [`Meta`].
    pub visit: Option<Visit>,
}

impl Update {
    /// The next state of `current`. Every backend calls this, under its own atomicity.
    pub fn apply(&self, current: &Record) -> Result<Record> {
        let (data, updated_at) = match &self.change {
            None => (current.data.clone(), current.updated_at),
            Some(change) => (
                Arc::from(apply_change(&current.data, change, self.max_size)?),
                self.now,
            ),
        };
        let meta = self.next_meta(&current.meta);
        let expires_at = if self.extends {
            self.expiry(current.created_at, &meta)
        } else {
            current.expires_at
        };
        Ok(Record {
            data,
            created_at: current.created_at,
            updated_at,
            expires_at,
            version: current.version.wrapping_add(1),
            meta,
        })
    }

    /// `meta` after this write: activity (a request with the cookie, socket traffic) marks the
    /// session returned; a client's request notes when and from where, and its
    /// `X-Session-Remember` sets or clears the choice. No allocation.
    fn next_meta(&self, meta: &Meta) -> Meta {
        let mut next = meta.clone();
        next.returned |= self.extends;
        if let Some(visit) = &self.visit {
            next.last_seen = self.now;
            if visit.ip.is_some() {
                next.last_ip = visit.ip;
            }
            if let Some(remember) = visit.remember {
                next.remember = remember;
            }
        }
        next
    }

    /// When a session created at `created_at`, with `meta`, used now, dies.
    fn expiry(&self, created_at: u64, meta: &Meta) -> u64 {
        self.lifetime
            .expiry_of(created_at, self.now, meta.remember, meta.returned)
    }

    /// Whether a read-only use of `record` at `now` should write, to move the deadline by at
    /// least one touch interval (derived from `expires_at`, so no extra field is stored), to
    /// mark it returned (its client's first request with the cookie) or to change its
    /// `X-Session-Remember`.
    pub fn needs_touch(&self, record: &Record) -> bool {
        if let Some(visit) = &self.visit
            && (!record.meta.returned || visit.remember.is_some_and(|r| r != record.meta.remember))
        {
            return true;
        }
        let returned = record.meta.returned || self.extends;
        self.lifetime
            .expiry_of(record.created_at, self.now, record.meta.remember, returned)
            >= record
                .expires_at
                .saturating_add(ms(self.lifetime.touch_interval).max(1))
    }

    /// A first record, for a session that was never stored: not yet returned (so
    /// `session.first_lifetime` bounds it), its device noted.
    pub fn create(&self) -> Result<Record> {
        let data = match &self.change {
            None => "{}".to_owned(),
            Some(change) => apply_change("{}", change, self.max_size)?,
        };
        let meta = match &self.visit {
            None => Meta::default(),
            Some(visit) => Meta {
                remember: visit.remember.unwrap_or(0),
                returned: false,
                last_seen: self.now,
                created_ip: visit.ip,
                last_ip: visit.ip,
                user_agent: visit.user_agent.clone(),
            },
        };
        Ok(Record {
            data: Arc::from(data),
            created_at: self.now,
            updated_at: self.now,
            expires_at: self.expiry(self.now, &meta),
            version: 1,
            meta,
        })
    }
}

fn apply_change(data: &str, change: &DataChange, max: usize) -> Result<String> {
    // The change itself is valid JSON (the codec parsed it); only the stored text can fail.
    let text = change
        .apply_to_text(data)
        .map_err(|e| StoreError::Corrupt(format!("stored session data: {e}")))?;
    if text.len() > max {
        return Err(StoreError::TooLarge {
            size: text.len(),
            max,
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn lifetime(idle: u64, abs: Option<u64>, touch: u64) -> Lifetime {
        Lifetime::in_ms(idle, abs, touch)
    }

    #[test]
    fn apply_merges_and_bounds() {
        let u = Update {
            change: Some(DataChange::Patch(
                json!({"b":2,"a":null}).as_object().unwrap().clone(),
            )),
            base: None,
            now: 10,
            lifetime: lifetime(1000, None, 100),
            max_size: 64,
            extends: true,
            visit: None,
        };
        let cur = Record {
            data: Arc::from(r#"{"a":1}"#),
            created_at: 1,
            updated_at: 1,
            expires_at: 500,
            version: 7,
            meta: Default::default(),
        };
        let next = u.apply(&cur).unwrap();
        assert_eq!(&*next.data, r#"{"b":2}"#);
        assert_eq!(
            (
                next.created_at,
                next.updated_at,
                next.expires_at,
                next.version
            ),
            (1, 10, 1010, 8)
        );

        let big = Update {
            change: Some(DataChange::Replace(
                json!({"x":"y".repeat(100)}).as_object().unwrap().clone(),
            )),
            ..u
        };
        assert!(matches!(big.apply(&cur), Err(StoreError::TooLarge { .. })));
    }

    #[test]
    fn a_read_touches_when_the_deadline_moves_by_an_interval() {
        let at = |now| Update {
            change: None,
            base: None,
            now,
            lifetime: lifetime(1000, Some(5000), 100),
            max_size: 64,
            extends: true,
            visit: None,
        };
        let r = Record {
            data: Arc::from("{}"),
            created_at: 0,
            updated_at: 0,
            expires_at: 1000,
            version: 1,
            meta: Default::default(),
        };
        assert!(!at(50).needs_touch(&r));
        assert!(at(100).needs_touch(&r));
        // Capped by the absolute deadline: touching would not move it.
        let capped = Record {
            expires_at: 5000,
            ..r
        };
        assert!(!at(4900).needs_touch(&capped));
    }

    fn visit(remember: Option<u64>) -> Option<Visit> {
        Some(Visit {
            ip: Some("192.0.2.7".parse().unwrap()),
            user_agent: Some(Arc::from("ua")),
            remember,
        })
    }

    /// A new session lives `first_lifetime` until its client returns; the first return marks
    /// it (a write even when no touch is due) and the idle timeout applies from then on.
    #[test]
    fn first_lifetime_until_the_cookie_comes_back() {
        let mut life = lifetime(1000, None, 100);
        life.first_lifetime = Some(Duration::from_millis(50));
        let at = |now, visit| Update {
            change: None,
            base: None,
            now,
            lifetime: life,
            max_size: 64,
            extends: true,
            visit,
        };
        let created = at(0, visit(None)).create().unwrap();
        assert_eq!(created.expires_at, 50);
        assert!(!created.meta.returned);
        assert_eq!(created.meta.created_ip, created.meta.last_ip);
        assert_eq!(created.meta.user_agent.as_deref(), Some("ua"));
        let back = at(10, visit(None));
        assert!(back.needs_touch(&created));
        let returned = back.apply(&created).unwrap();
        assert!(returned.meta.returned);
        assert_eq!((returned.expires_at, returned.meta.last_seen), (1010, 10));
        assert!(!at(20, visit(None)).needs_touch(&returned));
        // The admin's edit marks nothing and keeps the deadline.
        let admin = Update {
            extends: false,
            visit: None,
            ..at(20, None)
        };
        assert_eq!(admin.apply(&created).unwrap().meta, created.meta);
    }

    /// Remember sets the idle timeout (under `remember_absolute`), writes when it changes,
    /// and 0 returns to the configured one.
    #[test]
    fn remember_sets_the_idle_timeout() {
        let mut life = lifetime(1000, Some(3000), 100);
        life.remember_absolute = Some(Duration::from_millis(20_000));
        let at = |now, remember| Update {
            change: None,
            base: None,
            now,
            lifetime: life,
            max_size: 64,
            extends: true,
            visit: visit(remember),
        };
        let r = at(0, Some(10_000)).create().unwrap();
        assert_eq!((r.meta.remember, r.expires_at), (10_000, 10_000));
        let r = at(1, None).apply(&r).unwrap();
        assert_eq!(r.expires_at, 10_001);
        assert!(!at(2, Some(10_000)).needs_touch(&r));
        assert!(at(2, Some(0)).needs_touch(&r));
        assert_eq!(at(15_000, None).apply(&r).unwrap().expires_at, 20_000);
        let forgot = at(2, Some(0)).apply(&r).unwrap();
        assert_eq!((forgot.meta.remember, forgot.expires_at), (0, 1002));
        assert_eq!(
            life.remember_ms(Duration::from_secs(365 * 86400)),
            ms(life.remember_max)
        );
    }
}
