//! Where a value came from: the file being validated, and the checks several sections share (a
//! duration, a positive one, a count within a range), so that each error names the file and the
//! key it is about and says it the same way.

use std::time::Duration;

use super::{ConfigError, DurationSpec};

/// The file being validated, so that every error can say where it came from.
pub(super) struct Origin<'a>(pub(super) &'a str);

impl Origin<'_> {
    pub(super) fn bad(&self, key: &'static str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.0.to_owned(),
            key,
            message: message.into(),
        }
    }

    pub(super) fn duration(
        &self,
        key: &'static str,
        spec: &Option<DurationSpec>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        Ok(self.optional_duration(key, spec)?.unwrap_or(default))
    }

    /// A zero timeout or interval would fail every call or spin.
    pub(super) fn positive(&self, key: &'static str, value: Duration) -> Result<(), ConfigError> {
        if value.is_zero() {
            Err(self.bad(key, "must be positive"))
        } else {
            Ok(())
        }
    }

    pub(super) fn optional_duration(
        &self,
        key: &'static str,
        spec: &Option<DurationSpec>,
    ) -> Result<Option<Duration>, ConfigError> {
        spec.as_ref()
            .map(DurationSpec::parse)
            .transpose()
            .map_err(|m| self.bad(key, m))
    }
}

/// A whole number of `key` within `range`.
pub(super) fn count(
    at: &Origin,
    key: &'static str,
    value: Option<u64>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let value = value.unwrap_or(default);
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(at.bad(
            key,
            format!("{value} is outside {}..={}", range.start(), range.end()),
        ))
    }
}
