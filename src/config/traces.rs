//! `[tracing]`: OpenTelemetry traces, exported over OTLP/HTTP (protobuf); off unless an
//! endpoint is set, in the file or by the standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_ENDPOINT` variables (`cli.rs` applies them, like flags, over the file).
//! Only the values are checked here: whether a collector answers is never a reason to refuse
//! to start, since spans are best effort.

use http::Uri;

use super::ConfigError;
use super::origin::{Origin, count};
use super::raw::RawTracing;

/// The service name spans carry unless `service_name` (or `OTEL_SERVICE_NAME`) says otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "session-proxy";

/// `[tracing]`: where spans go, which requests are traced, and how many spans may wait.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// The OTLP/HTTP traces URL, used as written (e.g. `http://collector:4318/v1/traces`).
    pub endpoint: Uri,
    /// `service.name` of every span.
    pub service_name: String,
    /// The share of new traces recorded (0.0..=1.0); a trace the client started keeps the
    /// client's decision (its `traceparent`'s sampled flag).
    pub sample_ratio: f64,
    /// Spans queued for the exporter at most; one more is dropped and counted, never waited for.
    pub queue: usize,
}

/// `[tracing]`: off without `otlp_endpoint`.
pub(super) fn tracing(at: &Origin, t: RawTracing) -> Result<Option<TracingConfig>, ConfigError> {
    let Some(endpoint) = t.otlp_endpoint else {
        for (key, set) in [
            ("tracing.service_name", t.service_name.is_some()),
            ("tracing.sample_ratio", t.sample_ratio.is_some()),
            ("tracing.queue", t.queue.is_some()),
        ] {
            if set {
                return Err(at.bad(key, "has no effect without tracing.otlp_endpoint"));
            }
        }
        return Ok(None);
    };
    let endpoint = parse_endpoint(&endpoint).map_err(|m| at.bad("tracing.otlp_endpoint", m))?;
    let service_name = t
        .service_name
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
    if service_name.trim().is_empty() {
        return Err(at.bad("tracing.service_name", "must not be empty"));
    }
    let sample_ratio = t.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        return Err(at.bad(
            "tracing.sample_ratio",
            format!("{sample_ratio} is outside 0..=1"),
        ));
    }
    let queue = count(at, "tracing.queue", t.queue, 2048, 1..=1_000_000)?;
    Ok(Some(TracingConfig {
        endpoint,
        service_name,
        sample_ratio,
        queue: usize::try_from(queue).unwrap_or(usize::MAX),
    }))
}

/// An absolute `http://` URL with a host. `https` is refused: the exporter's client has no
/// TLS (one crypto provider, and a collector is normally a sidecar or node agent reached in
/// plain HTTP); a remote collector is reached through a local one.
fn parse_endpoint(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some_and(|h| !h.is_empty()) => Ok(uri),
        Some("https") => Err(format!(
            "{text:?}: https is not supported (the exporter speaks plain HTTP); \
             send to a local collector that forwards over TLS"
        )),
        _ => Err(format!(
            "{text:?} is not an http:// URL with a host, like \"http://collector:4318/v1/traces\""
        )),
    }
}

/// The traces endpoint the standard variables name, if any: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
/// as written, else `OTEL_EXPORTER_OTLP_ENDPOINT` as a base to which `/v1/traces` is added (the
/// OTLP exporter specification's rule).
pub(super) fn endpoint_from_env(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    let set = |name| var(name).filter(|v: &String| !v.trim().is_empty());
    set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| {
        set("OTEL_EXPORTER_OTLP_ENDPOINT")
            .map(|base| format!("{}/v1/traces", base.trim().trim_end_matches('/')))
    })
}

#[cfg(test)]
mod tests {
    use super::super::validate::check;
    use super::*;

    #[test]
    fn off_without_an_endpoint_and_defaults_when_on() {
        assert_eq!(check("").unwrap().tracing, None);
        let on = check("[tracing]\notlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"")
            .unwrap()
            .tracing
            .unwrap();
        assert_eq!(on.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(on.service_name, "session-proxy");
        assert_eq!((on.sample_ratio, on.queue), (1.0, 2048));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key, says) in [
            (
                "otlp_endpoint = \"collector:4318\"",
                "tracing.otlp_endpoint",
                "http://",
            ),
            (
                "otlp_endpoint = \"https://c/v1/traces\"",
                "tracing.otlp_endpoint",
                "https",
            ),
            (
                "otlp_endpoint = \"http://c\"\nsample_ratio = 1.5",
                "tracing.sample_ratio",
                "0..=1",
            ),
            (
                "otlp_endpoint = \"http://c\"\nsample_ratio = -0.1",
                "tracing.sample_ratio",
                "0..=1",
            ),
            (
                "otlp_endpoint = \"http://c\"\nservice_name = \" \"",
                "tracing.service_name",
                "empty",
            ),
            ("sample_ratio = 0.5", "tracing.sample_ratio", "without"),
        ] {
            let err = check(&format!("[tracing]\n{text}")).unwrap_err();
            assert!(err.starts_with(&format!("t.toml: `{key}`: ")), "{err}");
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn the_standard_variables_name_the_endpoint() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(endpoint_from_env(env(&[])), None);
        assert_eq!(
            endpoint_from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")])).unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            endpoint_from_env(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/x"),
            ]))
            .unwrap(),
            "http://t:1/x"
        );
    }
}
