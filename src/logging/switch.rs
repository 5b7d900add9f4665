//! The format the log writes in, switched while serving (`[log] format`, changed by a SIGHUP
//! reload): the installed subscriber is one, global and for the whole process, so its event
//! format reads the format in force from one atomic per line rather than being rebuilt.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::Line;
use crate::config::LogFormat;

/// `true` while `[log] format = "json"` is in force.
static JSON: AtomicBool = AtomicBool::new(false);

/// Puts `format` in force for every line from now on.
pub fn set_format(format: LogFormat) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
}

/// The format in force.
pub fn format() -> LogFormat {
    if JSON.load(Ordering::Relaxed) {
        LogFormat::Json
    } else {
        LogFormat::Text
    }
}

/// The event format [`init`](super::init) installs: [`Line`] for `text`, tracing-subscriber's
/// JSON (the event's fields at the top level) for `json`.
///
/// The JSON lines leave out the span around an event: the proxy makes no `tracing` spans of
/// its own, and a span's fields are formatted once, when it opens, by the fields formatter
/// of the text format (tracing-subscriber's JSON would parse them back as JSON).
pub struct Switch {
    text: Line,
    json: Format<Json>,
}

impl Default for Switch {
    fn default() -> Self {
        Switch {
            text: Line::default(),
            json: tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false),
        }
    }
}

impl<S, N> FormatEvent<S, N> for Switch
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if JSON.load(Ordering::Relaxed) {
            self.json.format_event(ctx, writer, event)
        } else {
            self.text.format_event(ctx, writer, event)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::EnvFilter;

    use super::*;
    use crate::logging::PlainFields;
    use crate::logging::testing::Sink;

    /// One subscriber, two formats: each line is in the format in force when it is written,
    /// and a span around a JSON line is left out rather than parsed (it would panic).
    #[test]
    fn each_line_takes_the_format_in_force() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("info"))
            .with_writer(move || Sink(sink.clone()))
            .with_ansi(false)
            .fmt_fields(PlainFields)
            .event_format(Switch::default())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            set_format(LogFormat::Text);
            tracing::info!(a = 1u64, "first");
            set_format(LogFormat::Json);
            tracing::info_span!("conn", peer = "127.0.0.1")
                .in_scope(|| tracing::info!(a = 2u64, b = "x y", "second"));
            set_format(LogFormat::Text);
            tracing::info!(a = 3u64, "third");
        });
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].ends_with("INFO session_proxy::logging::switch::tests: first a=1"));
        let json: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(json["message"], "second");
        assert_eq!(json["a"], 2);
        assert_eq!(json["b"], "x y");
        assert_eq!(json["level"], "INFO");
        assert!(json.get("span").is_none(), "{json}");
        assert!(lines[2].ends_with("third a=3"), "{}", lines[2]);
    }
}
