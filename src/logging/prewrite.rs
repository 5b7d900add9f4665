//! Fields written ahead of their event: a caller that holds an event's values before it emits
//! the event writes them here as text, and [`Line`](super::Line) copies that text into the line
//! instead of visiting the event's fields one `dyn Visit` call at a time.
//!
//! Worth its code only for a line that every request logs at the default level: the proxy's
//! access line (`proxy/log.rs`, where the saving is measured). Logging knows no caller: the
//! caller states the event's target and field names ([`AheadFields`]), the key that tells its
//! event; as constants, because comparing them at run time cost a third of the saving.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::fmt::format::Writer;

use super::fields::{is_bare, write_bare};

/// Set once a [`Line`](super::Line) exists: without one (the JSON format), nothing would copy
/// a prewritten text, so [`prewrite`] does not write it.
pub(super) static LINE_IN_USE: AtomicBool = AtomicBool::new(false);

/// An event whose fields its caller writes ahead of it: the event's target and field names, in
/// order, as constants, so that telling the event among all others costs a few compares.
pub trait AheadFields {
    /// The event's target.
    const TARGET: &'static str;
    /// The event's field names, in its order; [`FieldsText`] names the values by these.
    const NAMES: &'static [&'static str];
    /// Writes the fields, in the order of [`NAMES`](Self::NAMES) and with those names; `None`
    /// to write none.
    fn write(&self, out: &mut FieldsText) -> Option<()>;
}

/// One event's fields as text, waiting for that event to be formatted on this thread: what
/// [`prewrite`] hands [`AheadFields::write`] to write into.
#[derive(Debug)]
pub struct FieldsText {
    /// Whether `text` waits for its event.
    waiting: bool,
    /// Whether an event is the one `text` waits for: [`AheadFields`]'s target and names.
    is_its_event: fn(&tracing::Metadata<'_>) -> bool,
    /// The names of the values written and to write, in order.
    names: &'static [&'static str],
    written: usize,
    text: String,
}

impl FieldsText {
    /// Writes the next field, a string, as [`PlainFields`](super::PlainFields) would; `None` if
    /// `value` needs quoting (the visitor's job: the event is then visited as usual).
    #[inline]
    pub fn str(&mut self, name: &'static str, value: &str) -> Option<()> {
        if !is_bare(value) {
            return None;
        }
        self.field(name, value)
    }

    /// Writes the next field, an integer, as [`PlainFields`](super::PlainFields) would.
    #[inline]
    pub fn u64(&mut self, name: &'static str, value: u64) -> Option<()> {
        self.field(name, itoa::Buffer::new().format(value))
    }

    /// `name` is the next of [`AheadFields::NAMES`] (asserted in tests, not paid for in a
    /// release build: a literal name here is written as a constant); `None` past the last.
    #[inline]
    fn field(&mut self, name: &'static str, value: &str) -> Option<()> {
        debug_assert_eq!(self.names.get(self.written), Some(&name));
        if self.written >= self.names.len() {
            return None;
        }
        // Into a `String`: cannot fail.
        let _ = write_bare(&mut self.text, self.written == 0, name, value);
        self.written += 1;
        Some(())
    }
}

/// Whether `meta` is the event of `F`: its target and its field names.
fn is_event_of<F: AheadFields>(meta: &tracing::Metadata<'_>) -> bool {
    let fields = meta.fields();
    meta.target() == F::TARGET
        && fields.len() == F::NAMES.len()
        && fields.iter().map(|f| f.name()).eq(F::NAMES.iter().copied())
}

/// Before any [`prewrite`].
fn no_event(_: &tracing::Metadata<'_>) -> bool {
    false
}

thread_local! {
    static PREWRITTEN: RefCell<FieldsText> = const {
        RefCell::new(FieldsText {
            waiting: false,
            is_its_event: no_event,
            names: &[],
            written: 0,
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

/// Writes `fields` ahead of their event, the next one on this thread with their target and
/// names, when a [`Line`](super::Line) will format it; `None` if none will, or if a value
/// needs quoting, or if not every name got its value. Emit the event while the guard lives.
pub fn prewrite<F: AheadFields>(fields: &F) -> Option<Prewritten> {
    if !LINE_IN_USE.load(Ordering::Relaxed) {
        return None;
    }
    PREWRITTEN.with(|p| {
        let mut p = p.try_borrow_mut().ok()?;
        p.waiting = false;
        p.is_its_event = is_event_of::<F>;
        p.names = F::NAMES;
        p.written = 0;
        p.text.clear();
        fields.write(&mut p)?;
        if p.written != F::NAMES.len() {
            return None;
        }
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
        if !p.waiting || !(p.is_its_event)(meta) {
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

    /// Three fields: `message`, `method`, `status`.
    struct Three(&'static str, &'static str);

    impl AheadFields for Three {
        const TARGET: &'static str = "some::target";
        const NAMES: &'static [&'static str] = &["message", "method", "status"];
        fn write(&self, out: &mut FieldsText) -> Option<()> {
            out.str("message", self.0)?;
            out.str("method", self.1)?;
            out.u64("status", 9)
        }
    }

    const TARGET: &str = Three::TARGET;

    fn ahead(message: &'static str, method: &'static str) -> Option<Prewritten> {
        prewrite(&Three(message, method))
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
            struct Short;
            impl AheadFields for Short {
                const TARGET: &'static str = TARGET;
                const NAMES: &'static [&'static str] = Three::NAMES;
                fn write(&self, out: &mut FieldsText) -> Option<()> {
                    out.str("message", "short")
                }
            }
            assert!(prewrite(&Short).is_none());
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
