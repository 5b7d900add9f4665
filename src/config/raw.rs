//! The config file as written: every field optional, unknown keys refused. Flags overwrite these
//! fields before validation, so a flag and a file value get the same checks.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, DurationSpec};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub shutdown_timeout: Option<DurationSpec>,
    pub trust_forwarded_headers: Option<bool>,
    #[serde(default)]
    pub cookie: RawCookie,
    #[serde(default)]
    pub session: RawSession,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub upstream_timeouts: RawTimeouts,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCookie {
    pub name: Option<String>,
    pub max_age: Option<DurationSpec>,
    pub expires: Option<String>,
    pub path: Option<String>,
    pub domain: Option<String>,
    pub secure: Option<bool>,
    pub http_only: Option<bool>,
    pub same_site: Option<String>,
    pub secret: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSession {
    pub header_prefix: Option<String>,
    pub renew_missing: Option<bool>,
    pub max_size: Option<u64>,
    pub idle_timeout: Option<DurationSpec>,
    pub absolute_timeout: Option<DurationSpec>,
    pub touch_interval: Option<DurationSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub kind: Option<String>,
    pub timeout: Option<DurationSpec>,
    pub sweep_interval: Option<DurationSpec>,
    // fs
    pub path: Option<PathBuf>,
    pub filename_template: Option<String>,
    pub mode: Option<u32>,
    pub fsync: Option<bool>,
    // redis
    pub url: Option<String>,
    pub key_prefix: Option<String>,
    pub cluster: Option<bool>,
    pub nodes: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<DurationSpec>,
    pub response: Option<DurationSpec>,
}

impl RawConfig {
    /// Reads and parses a TOML file (no validation yet).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::from_toml(&file, &text)
    }

    pub fn from_toml(file: &str, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }
}
