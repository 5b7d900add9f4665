//! The one function that computes a record's next state ([`Update::apply`]) and a session's
//! first record ([`Update::create`]). Every backend calls these under its own atomicity, so all
//! of them agree on merge, size and expiry rules.

use std::sync::Arc;

use super::{Record, Result, StoreError};
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
        let expires_at = if self.extends {
            self.lifetime.expiry(current.created_at, self.now)
        } else {
            current.expires_at
        };
        Ok(Record {
            data,
            created_at: current.created_at,
            updated_at,
            expires_at,
            version: current.version.wrapping_add(1),
        })
    }

    /// Whether a read-only use of `record` at `now` should write, to move the deadline by at
    /// least one touch interval. Derived from `expires_at`, so no extra field is stored.
    pub fn needs_touch(&self, record: &Record) -> bool {
        self.lifetime.expiry(record.created_at, self.now)
            >= record
                .expires_at
                .saturating_add(ms(self.lifetime.touch_interval).max(1))
    }

    /// A first record, for a session that was never stored.
    pub fn create(&self) -> Result<Record> {
        let data = match &self.change {
            None => "{}".to_owned(),
            Some(change) => apply_change("{}", change, self.max_size)?,
        };
        Ok(Record {
            data: Arc::from(data),
            created_at: self.now,
            updated_at: self.now,
            expires_at: self.lifetime.expiry(self.now, self.now),
            version: 1,
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
        };
        let cur = Record {
            data: Arc::from(r#"{"a":1}"#),
            created_at: 1,
            updated_at: 1,
            expires_at: 500,
            version: 7,
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
        };
        let r = Record {
            data: Arc::from("{}"),
            created_at: 0,
            updated_at: 0,
            expires_at: 1000,
            version: 1,
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
}
