//! Fields written ahead of their event: a caller that holds an event's values before it emits
//! the event writes them here as text, and [`Line`](super::Line) copies that text into the line
//! instead of visiting the event's fields one `dyn Visit` call at a time.
//!
//! Worth its code only for a line that every request logs at the default level: the proxy's
//! access line (`proxy/log.rs`, where the saving is measured). Logging knows no caller: the
//! caller names the event's target, and the names of the fields it writes are the key.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::fmt::format::Writer;

use super::fields::{is_bare, write_bare};

/// Set once a [`Line`](super::Line) exists: without one (the JSON format), nothing would copy
/// a prewritten text, so [`prewrite`] does not write it.
pub(super) static LINE_IN_USE: AtomicBool = AtomicBool::new(false);

/// One event's fields as text, waiting for that event to be formatted on this thread: what
/// [`prewrite`] hands its caller to write into.
#[derive(Debug)]
pub struct FieldsText {
    /// Whether `text` waits for its event.
    waiting: bool,
    /// The event's target.
    target: &'static str,
    /// The fields written, in order: with `target`, what tells the event that carries them.
    names: Vec<&'static str>,
    text: String,
}

impl FieldsText {
    /// Writes a string field as [`PlainFields`](super::PlainFields) would; `None` if `value`
    /// needs quoting (the visitor's job: the event is then visited as usual).
    pub fn str(&mut self, name: &'static str, value: &str) -> Option<()> {
        is_bare(value).then(|| self.field(name, value))
    }

    /// Writes an integer field as [`PlainFields`](super::PlainFields) would.
    pub fn u64(&mut self, name: &'static str, value: u64) {
        self.field(name, itoa::Buffer::new().format(value));
    }

    fn field(&mut self, name: &'static str, value: &str) {
        // Into a `String`: cannot fail.
        let _ = write_bare(&mut self.text, self.names.is_empty(), name, value);
        self.names.push(name);
    }
}

thread_local! {
    static PREWRITTEN: RefCell<FieldsText> = const {
        RefCell::new(FieldsText {
            waiting: false,
            target: "",
            names: Vec::new(),
            text: String::new(),
        })
    };
}

/// Fields written ahead of their event. Whatever happens to the event (filtered out, formatted
/// by another format, or inside a span, where [`Line`](super::Line) hands over), the text is
/// dropped with this guard, so no other event can pick it up.
#[must_use = "the prewritten fields are dropped with the guard: emit the event first"]
#[derive(Debug)]
pub struct Prewritten(());

impl Drop for Prewritten {
    fn drop(&mut self) {
        PREWRITTEN.with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                p.waiting = false;
            }
        });
    }
}

/// Has `write` write the fields of the next event of `target` on this thread, in the event's
/// order, when a [`Line`](super::Line) will format it; `None` if none will, or if `write`
/// returns `None` (a value to quote). The event then uses the text only if its field names are
/// the ones written, in the same order. Emit the event while the guard lives.
pub fn prewrite(
    target: &'static str,
    write: impl FnOnce(&mut FieldsText) -> Option<()>,
) -> Option<Prewritten> {
    if !LINE_IN_USE.load(Ordering::Relaxed) {
        return None;
    }
    PREWRITTEN.with(|p| {
        let mut p = p.try_borrow_mut().ok()?;
        p.waiting = false;
        p.target = target;
        p.names.clear();
        p.text.clear();
        write(&mut p)?;
        p.waiting = true;
        Some(Prewritten(()))
    })
}

/// Writes the prewritten fields if they are this event's; `false` if not (nothing written).
pub(super) fn write_prewritten(
    writer: &mut Writer<'_>,
    meta: &tracing::Metadata<'_>,
) -> Result<bool, fmt::Error> {
    PREWRITTEN.with(|p| {
        let Ok(mut p) = p.try_borrow_mut() else {
            return Ok(false);
        };
        let fields = meta.fields();
        if !p.waiting
            || meta.target() != p.target
            || fields.len() != p.names.len()
            || !fields.iter().map(|f| f.name()).eq(p.names.iter().copied())
        {
            return Ok(false);
        }
        p.waiting = false;
        writer.write_str(&p.text).map(|()| true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::testing::both_lines;

    const TARGET: &str = "some::target";

    /// The fields `message`, `method` and `status`.
    fn ahead(message: &str, method: &str) -> Option<Prewritten> {
        prewrite(TARGET, |t| {
            t.str("message", message)?;
            t.str("method", method)?;
            t.u64("status", 9);
            Some(())
        })
    }

    /// A prewritten text is used once, by its own event only: not by another of its target,
    /// nor by one of another target, nor by one of its target with other field names; never
    /// after its guard is dropped; never when a value needs quoting.
    #[test]
    fn a_prewritten_text_is_used_once_by_its_own_event_only() {
        let (ours, _) = both_lines(|| {
            let _p = ahead("written", "AHEAD");
            tracing::info!(target: TARGET, message = "another", status = 1u64);
            tracing::info!(target: "other", message = "eight", method = "GET", status = 1u64);
            tracing::info!(target: TARGET, message = "eight", method = "GET", id = 1u64);
            tracing::info!(target: TARGET, message = "eight", method = "GET", status = 1u64);
            tracing::info!(target: TARGET, message = "after", method = "GET", status = 1u64);
            drop(ahead("dropped", "AHEAD"));
            tracing::info!(target: TARGET, message = "eight", method = "GET", status = 1u64);
            assert!(ahead("two words", "AHEAD").is_none());
            tracing::info!(target: TARGET, message = "eight", method = "GET", status = 1u64);
        });
        let lines: Vec<&str> = ours.lines().map(|l| &l[26..]).collect();
        assert_eq!(
            lines,
            [
                "Z  INFO some::target: another status=1",
                "Z  INFO other: eight method=GET status=1",
                "Z  INFO some::target: eight method=GET id=1",
                "Z  INFO some::target: written method=AHEAD status=9",
                "Z  INFO some::target: after method=GET status=1",
                "Z  INFO some::target: eight method=GET status=1",
                "Z  INFO some::target: eight method=GET status=1",
            ]
        );
    }
}
