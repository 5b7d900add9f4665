//! The fields of a text line: a plain string or integer written as is, where
//! tracing-subscriber's default formats every field through `Debug`; anything that needs quoting
//! or escaping still goes through tracing-subscriber's own visitor.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{RecordFields, VisitOutput as _};
use tracing_subscriber::fmt::format::{DefaultVisitor, FormatFields, Writer};

/// The default field format (`name=value`, separated by spaces, the message first and bare),
/// except that a string made only of characters that need no quoting, and any integer or bool,
/// is written directly instead of through `Debug`. Everything else (text with spaces, quotes,
/// backslashes or control characters; errors; `Debug` values) goes to tracing-subscriber's own
/// visitor, which quotes it and escapes terminal control sequences, so a client-supplied value
/// can never forge a line or a field.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainFields;

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = PlainVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct PlainVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

/// Printable ASCII other than space, `"` and `\`: nothing a reader could take for a separator,
/// a quote or an escape.
pub(super) fn is_bare(value: &str) -> bool {
    // A fold, not `all`: without the early exit the loop vectorizes.
    !value.is_empty()
        && value.bytes().fold(true, |bare, b| {
            bare & (b.is_ascii_graphic() & (b != b'"') & (b != b'\\'))
        })
}

/// Writes one field whose `value` needs no quoting, as the visitor does: ` name=value`, without
/// the space before the `first` field and without the name of the message. The prewritten
/// fields (`prewrite.rs`) are written by this too, so both are the same bytes.
#[inline]
pub(super) fn write_bare(
    out: &mut impl fmt::Write,
    first: bool,
    name: &str,
    value: &str,
) -> fmt::Result {
    if !first {
        out.write_char(' ')?;
    }
    if name != "message" {
        out.write_str(name)?;
        out.write_char('=')?;
    }
    out.write_str(value)
}

impl PlainVisitor<'_> {
    /// Writes ` name=` (or nothing before the message) and then `value`, which needs no quoting.
    fn bare(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            self.result = write_bare(&mut self.writer, self.first, field.name(), value);
        }
        self.first = false;
    }

    /// Hands one field to tracing-subscriber's visitor, for its quoting and escaping.
    fn default(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.first);
        record(&mut visitor);
        self.result = visitor.finish();
        self.first = false;
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if is_bare(value) {
            self.bare(field, value);
        } else {
            self.default(|v| v.record_str(field, value));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.bare(field, itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.bare(field, itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.bare(field, if value { "true" } else { "false" });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.default(|v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.default(|v| v.record_debug(field, value));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::logging::testing::Sink;

    /// The line `event` produces with `fields`, without timestamp, level or target.
    fn line<N>(fields: N, event: impl FnOnce()) -> String
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Sink(sink.clone()))
            .with_ansi(false)
            .without_time()
            .with_level(false)
            .with_target(false)
            .fmt_fields(fields)
            .finish();
        tracing::subscriber::with_default(subscriber, event);
        let bytes = out.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).trim_end().to_owned()
    }

    #[test]
    fn plain_values_are_bare_and_the_rest_as_tracing_writes_it() {
        let event = || {
            let error = std::io::Error::other("disk \"full\"");
            tracing::info!(
                method = "GET",
                path = "/a/b?",
                status = 200u16,
                latency_us = 17u64,
                delta = -3i64,
                new = true,
                empty = "",
                spaced = "two words",
                quoted = "say \"hi\"",
                escape = "\u{1b}[31mred",
                error = &error as &(dyn std::error::Error + 'static),
                debug = ?Some(1),
                "request"
            )
        };
        assert_eq!(
            line(PlainFields, event),
            "request method=GET path=/a/b? status=200 latency_us=17 delta=-3 new=true \
             empty=\"\" spaced=\"two words\" quoted=\"say \\\"hi\\\"\" \
             escape=\"\\u{1b}[31mred\" error=disk \"full\" debug=Some(1)"
        );
    }

    #[test]
    fn a_message_with_spaces_is_written_as_the_default_writes_it() {
        let event = || tracing::info!(deadline = "30s", "shutting down: no new connections");
        let default = line(tracing_subscriber::fmt::format::DefaultFields::new(), event);
        assert_eq!(
            default,
            "shutting down: no new connections deadline=\"30s\""
        );
        // The one difference: a plain string field loses its quotes.
        assert_eq!(
            line(PlainFields, event),
            "shutting down: no new connections deadline=30s"
        );
    }
}
