//! The log: stderr through a background writer, one `key=value` line per event.
//!
//! The access log is `info`, the default level, so its cost is paid on every request
//! (bench/PROFILE.md, "\[perf\] log line and session work"). What keeps it low:
//! - [`Line`] writes the text line itself: the timestamp's date and time formatted once per
//!   second per thread, then level, target and fields straight into tracing-subscriber's
//!   reused per-thread buffer. The line is byte for byte what tracing-subscriber's default
//!   `Full` format writes without colours; anything that format would write differently (ANSI
//!   colours on a terminal, a span around the event, a record from the `log` crate) is handed
//!   to that format itself.
//! - [`PlainFields`] writes a plain string or integer field as is, where tracing-subscriber's
//!   default formats every field through `Debug`.
//! - [`Batch`]: the request path appends the finished line to one shared buffer (no
//!   allocation per line); a background thread writes the whole buffer with one `write` per
//!   batch and lingers a millisecond before each, so a busy proxy wakes it about once per
//!   millisecond rather than once per line.
//! - [`prewrite()`]: a caller that logs one line on every request can write that line's fields
//!   ahead as text, which [`Line`] copies instead of visiting the event field by field. Generic:
//!   the caller states the target and the field names and writes the values ([`AheadFields`];
//!   the access line, `proxy/log.rs`).

mod batch;
mod fields;
mod line;
mod prewrite;
mod switch;

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

pub use batch::{Batch, LogGuard};
pub use fields::PlainFields;
pub use line::Line;
pub use prewrite::{AheadFields, FieldsText, Prewritten, prewrite};
pub use switch::{Switch, format, set_format};

/// Installs the global subscriber: `RUST_LOG` (default `info`), ANSI colours on a terminal only,
/// lines in `format` until [`set_format`] (a reload) changes it. Keep the guard until exit:
/// dropping it writes the lines still queued.
///
/// Not lossy: if stderr falls behind, requests wait rather than lines being dropped.
pub fn init(format: crate::config::LogFormat) -> LogGuard {
    use std::io::IsTerminal as _;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = Batch::spawn(std::io::stderr());
    set_format(format);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .fmt_fields(PlainFields)
        .event_format(Switch::default())
        .init();
    guard
}

/// The text subscriber [`init`] installs, writing to `writer` without colours: for benchmarks
/// and tests that need the real line without a global subscriber.
pub fn text_subscriber<W>(filter: EnvFilter, writer: W) -> impl Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .fmt_fields(PlainFields)
        .event_format(Line::default())
        .finish()
}

/// The JSON subscriber [`init`] installs with `[log] format = "json"`, writing to `writer`:
/// tracing-subscriber's own JSON, the event's fields at the top level of each object. Also what
/// `main` writes its own stdout lines with in JSON mode, so both are one format.
pub fn json_subscriber<W>(filter: EnvFilter, writer: W) -> impl Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .json()
        .flatten_event(true)
        .finish()
}

/// What the tests of logging and of its callers share: the lines an event produces.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::{Arc, Mutex};

    use super::*;
    use tracing::Level;

    pub(crate) struct Sink(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines `event` produces through the subscriber [`init`] installs (no colours), and
    /// through tracing-subscriber's default format with the same fields, timestamps included.
    pub(crate) fn both_lines(event: impl Fn()) -> (String, String) {
        let ours = Arc::new(Mutex::new(Vec::new()));
        let sink = ours.clone();
        let subscriber = text_subscriber(EnvFilter::new("trace"), move || Sink(sink.clone()));
        tracing::subscriber::with_default(subscriber, &event);
        let theirs = Arc::new(Mutex::new(Vec::new()));
        let sink = theirs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_writer(move || Sink(sink.clone()))
            .with_ansi(false)
            .fmt_fields(PlainFields)
            .finish();
        tracing::subscriber::with_default(subscriber, &event);
        let text = |b: &Arc<Mutex<Vec<u8>>>| {
            String::from_utf8(b.lock().map(|b| b.clone()).unwrap_or_default()).unwrap()
        };
        (text(&ours), text(&theirs))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::testing::{Sink, both_lines};

    /// `Line` writes what tracing-subscriber's own format writes, byte for byte but the
    /// microseconds (taken a moment apart): every level, a span around the event (handed
    /// over), a record of the `log` crate (handed over).
    #[test]
    fn the_line_is_the_default_formats_line() {
        let _ = tracing_log::LogTracer::init();
        let event = || {
            tracing::info!(
                method = "GET",
                path = "/a",
                status = 200u16,
                latency_us = 17u64,
                request_id = "0123abcd",
                spaced = "two words",
                "request"
            );
            tracing::trace!("t");
            tracing::debug!(n = -1i64, "d");
            tracing::warn!(error = %"x y", "request failed");
            tracing::error!(ok = false, "e");
            tracing::info_span!("conn", peer = "127.0.0.1")
                .in_scope(|| tracing::info!(k = 1u64, "in a span"));
            log::info!(target: "some::crate", "from log {}", 1);
        };
        // Retried when the two runs straddle a second.
        for _ in 0..3 {
            let (ours, theirs) = both_lines(event);
            assert_eq!(ours.lines().count(), 7, "{ours}");
            let mut same_second = true;
            for (a, b) in ours.lines().zip(theirs.lines()) {
                // `2026-01-02T03:04:05.` then six digits of microseconds and `Z `.
                assert_eq!(a.len(), b.len(), "{a}\n{b}");
                same_second &= a[..20] == b[..20];
                assert!(a[20..26].bytes().all(|c| c.is_ascii_digit()), "{a}");
                assert_eq!(a[26..], b[26..]);
            }
            if same_second {
                let first = ours.lines().next().unwrap();
                assert!(
                    first.ends_with(
                        "Z  INFO session_proxy::logging::tests: request method=GET path=/a \
                         status=200 latency_us=17 request_id=0123abcd spaced=\"two words\""
                    ),
                    "{first}"
                );
                // As today: PlainFields writes the `log.` fields the default visitor would skip.
                assert!(
                    ours.contains("Z  INFO some::crate: from log 1 log.target="),
                    "{ours}"
                );
                assert!(
                    ours.contains("conn{peer=127.0.0.1}: session_proxy"),
                    "{ours}"
                );
                return;
            }
        }
        panic!("never the same second thrice");
    }

    /// `proxy/log.rs` passes the message as a `message = "..."` string field: the text line and
    /// the JSON object are those of a format-string message.
    #[test]
    fn a_message_field_writes_what_a_message_string_writes() {
        let field = || tracing::info!(message = "request", a = 1u64, b = "x y");
        let string = || tracing::info!(a = 1u64, b = "x y", "request");
        let text = |event: &dyn Fn()| {
            let (ours, theirs) = both_lines(event);
            (ours[27..].to_owned(), theirs[27..].to_owned())
        };
        assert_eq!(text(&field), text(&string));
        assert!(text(&field).0.ends_with(": request a=1 b=\"x y\"\n"));
        let json = |event: &dyn Fn()| {
            let out = Arc::new(Mutex::new(Vec::new()));
            let sink = out.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || Sink(sink.clone()))
                .json()
                .flatten_event(true)
                .finish();
            tracing::subscriber::with_default(subscriber, event);
            let bytes = out.lock().unwrap().clone();
            let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            v.as_object_mut().unwrap().remove("timestamp");
            v
        };
        assert_eq!(json(&field), json(&string));
        assert_eq!(json(&field)["message"], "request");
    }
}
