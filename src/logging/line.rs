//! The text line: tracing-subscriber's default `Full` format without colours, byte for byte,
//! written by hand so that the date and time are formatted once per second per thread rather
//! than once per line (bench/PROFILE.md, "\[perf\] log line and session work").

use std::fmt;
use std::sync::atomic::Ordering;

use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{Format, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::FormatTime as _;
use tracing_subscriber::registry::LookupSpan;

use super::prewrite::{LINE_IN_USE, write_prewritten};

/// The text line of an event: `2026-01-02T03:04:05.678901Z  INFO target: message k=v ...`,
/// exactly as tracing-subscriber's default (`Full`) format writes it without colours, but
/// without formatting the date and time anew for every line. See the module doc.
#[derive(Debug)]
pub struct Line {
    /// For what this format does not write itself.
    full: Format,
}

impl Default for Line {
    fn default() -> Self {
        // From now on an access line is worth prewriting: this format will copy it.
        LINE_IN_USE.store(true, Ordering::Relaxed);
        Line {
            full: Format::default(),
        }
    }
}

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if writer.has_ansi_escapes() || event.is_log() || ctx.event_scope().is_some() {
            return self.full.format_event(ctx, writer, event);
        }
        let meta = event.metadata();
        timestamp(&mut writer)?;
        writer.write_str(match *meta.level() {
            Level::TRACE => "TRACE ",
            Level::DEBUG => "DEBUG ",
            Level::INFO => " INFO ",
            Level::WARN => " WARN ",
            Level::ERROR => "ERROR ",
        })?;
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        if !write_prewritten(&mut writer, meta)? {
            ctx.format_fields(writer.by_ref(), event)?;
        }
        writer.write_char('\n')
    }
}

/// `YYYY-MM-DDTHH:MM:SS.` of one second, as tracing-subscriber's `SystemTime` timer writes it.
struct Second {
    unix: u64,
    text: String,
}

thread_local! {
    /// The second this thread last logged in.
    static SECOND: std::cell::RefCell<Second> = const {
        std::cell::RefCell::new(Second { unix: u64::MAX, text: String::new() })
    };
}

/// The date and time of `unix`, up to the seconds' `.`; `None` outside years 0 to 9999, which
/// tracing-subscriber writes with a sign.
fn second_text(unix: u64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix).ok()?).ok()?;
    if !(0..=9999).contains(&t.year()) {
        return None;
    }
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

/// Writes the timestamp and the space after it: the cached second, then the microseconds.
fn timestamp(writer: &mut Writer<'_>) -> fmt::Result {
    let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) else {
        return full_timestamp(writer);
    };
    let unix = since.as_secs();
    let cached = SECOND.with(|cell| {
        let Ok(mut second) = cell.try_borrow_mut() else {
            return Ok(false);
        };
        if second.unix != unix {
            let Some(text) = second_text(unix) else {
                return Ok(false);
            };
            *second = Second { unix, text };
        }
        writer.write_str(&second.text).map(|()| true)
    })?;
    if !cached {
        return full_timestamp(writer);
    }
    let micros = since.subsec_micros();
    let mut digits = [b'0', b'0', b'0', b'0', b'0', b'0', b'Z', b' '];
    let mut rest = micros;
    for d in digits[..6].iter_mut().rev() {
        // A digit: below 10, so the cast cannot truncate.
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    writer.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?)
}

/// The timestamp as tracing-subscriber writes it, for the cases the cache does not cover.
fn full_timestamp(writer: &mut Writer<'_>) -> fmt::Result {
    if tracing_subscriber::fmt::time::SystemTime
        .format_time(writer)
        .is_err()
    {
        writer.write_str("<unknown time>")?;
    }
    writer.write_char(' ')
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_cached_second_is_the_default_timers() {
        for unix in [
            0,
            951_782_400,
            1_767_225_599,
            4_102_444_800,
            253_402_300_799,
        ] {
            let at = std::time::UNIX_EPOCH + Duration::from_secs(unix);
            let t = time::OffsetDateTime::from(at);
            let expect = t
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
            // RFC 3339 without fractions: `...:SSZ`; ours ends in the `.` before them.
            assert_eq!(
                second_text(unix).unwrap(),
                format!("{}.", &expect[..19]),
                "{unix}"
            );
        }
        assert_eq!(second_text(253_402_300_800), None);
    }
}
