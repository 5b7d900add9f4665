//! The access line's prewrite: a served request's fields written as text ahead of their event,
//! which [`Line`](super::Line)(super::Line) copies instead of visiting the event field by field.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::fmt::format::Writer;

use super::fields::is_bare;

/// Set once a [`Line`](super::Line) exists: without one (the JSON format), nothing would copy a prewritten
/// line, so [`prewrite`] does not write it.
pub(super) static LINE_IN_USE: AtomicBool = AtomicBool::new(false);

/// The access line's target (`proxy/log.rs`): with its field names, what tells [`Line`](super::Line) an
/// event is the one whose fields were prewritten.
pub const ACCESS_TARGET: &str = "session_proxy::proxy::log";

/// Logs the line of a served request, the one every request but a failed one logs: its fields
/// are written ahead (`prewrite`) when the line will be written at all, and the event carries
/// them too, for any other format or subscriber. The proxy and `benches/hot_path.rs` both call
/// this, so the benchmark measures the line the proxy writes.
pub fn served(f: &AccessFields<'_>) {
    // The global maximum (one load), not `enabled!` (a call into the filter): a filter that
    // drops this target alone at `info` costs a prewrite for nothing, never a wrong line.
    let _prewritten = if tracing::Level::INFO <= tracing::level_filters::LevelFilter::current() {
        prewrite(f)
    } else {
        None
    };
    tracing::info!(
        target: ACCESS_TARGET,
        message = f.message,
        method = f.method,
        path = f.path,
        status = f.status,
        latency_us = f.latency_us,
        session = f.session,
        saved = f.saved,
        request_id = f.request_id
    );
}

/// The fields of the access line (`proxy/log.rs`), in the order of its event.
#[derive(Debug, Clone, Copy)]
pub struct AccessFields<'a> {
    pub message: &'static str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub latency_us: u64,
    pub session: &'a str,
    pub saved: &'a str,
    pub request_id: &'a str,
}

impl AccessFields<'_> {
    /// The event's field names, in order: with [`ACCESS_TARGET`], what tells [`Line`](super::Line) it is
    /// this one.
    const NAMES: [&'static str; 8] = [
        "message",
        "method",
        "path",
        "status",
        "latency_us",
        "session",
        "saved",
        "request_id",
    ];
}

/// The access line's fields as text, waiting for their event to be formatted on this thread.
struct Prewrite {
    /// Whether `text` waits for its event.
    waiting: bool,
    text: String,
}

thread_local! {
    static PREWRITTEN: RefCell<Prewrite> = const {
        RefCell::new(Prewrite { waiting: false, text: String::new() })
    };
}

/// The access line's fields written ahead of their event, exactly as [`PlainFields`](super::PlainFields) would
/// write them; [`Line`](super::Line) copies them into the line instead of visiting the event's eight fields
/// one `dyn Visit` call at a time (about 3k instructions a line). Whatever happens to the
/// event (filtered out, formatted by another format, or inside a span, where [`Line`](super::Line) hands
/// over), the text is dropped with this guard, so no other event can pick it up.
#[must_use = "the prewritten fields are dropped with the guard: emit the event first"]
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

/// Writes `fields` ahead of the access-line event that carries them, when a [`Line`](super::Line) will
/// format it and every value is bare (anything to quote goes through the visitor, which knows
/// how). Emit the event while the guard lives.
fn prewrite(fields: &AccessFields<'_>) -> Option<Prewritten> {
    if !LINE_IN_USE.load(Ordering::Relaxed) {
        return None;
    }
    let all_bare = [
        fields.message,
        fields.method,
        fields.path,
        fields.session,
        fields.saved,
        fields.request_id,
    ]
    .iter()
    .all(|v| is_bare(v));
    if !all_bare {
        return None;
    }
    PREWRITTEN.with(|p| {
        let mut p = p.try_borrow_mut().ok()?;
        let text = &mut p.text;
        text.clear();
        let (mut status, mut latency) = (itoa::Buffer::new(), itoa::Buffer::new());
        for (name, value) in [
            ("", fields.message),
            (" method=", fields.method),
            (" path=", fields.path),
            (" status=", status.format(fields.status)),
            (" latency_us=", latency.format(fields.latency_us)),
            (" session=", fields.session),
            (" saved=", fields.saved),
            (" request_id=", fields.request_id),
        ] {
            text.push_str(name);
            text.push_str(value);
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
        let fields = meta.fields();
        if !p.waiting
            || meta.target() != ACCESS_TARGET
            || fields.len() != AccessFields::NAMES.len()
            || !fields.iter().map(|f| f.name()).eq(AccessFields::NAMES)
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
    use crate::logging::tests::both_lines;

    /// The prewritten line is the one the fields' visitor writes, byte for byte (the timestamps'
    /// microseconds aside), for bare values and for values it must hand to the visitor instead.
    #[test]
    fn the_prewritten_line_is_the_visitors_line() {
        let id = "6f1c0e2b9a8d4f3e2d1c0b9a8f7e6d5c";
        let base = AccessFields {
            message: "request",
            method: "GET",
            path: "/account/settings",
            status: 200,
            latency_us: 1234,
            session: "existing",
            saved: "updated",
            request_id: id,
        };
        let cases = [
            base,
            AccessFields {
                method: "PURGE",
                path: "/",
                status: 404,
                latency_us: 0,
                session: "new",
                saved: "created",
                request_id: "req-1.A_b",
                ..base
            },
            AccessFields {
                latency_us: u64::MAX,
                status: 101,
                ..base
            },
            AccessFields {
                path: "/two words",
                ..base
            },
            AccessFields {
                path: "/say\"hi\"\\",
                ..base
            },
            AccessFields {
                path: "/caf\u{e9}",
                ..base
            },
            AccessFields {
                session: "",
                ..base
            },
        ];
        for fields in cases {
            // Retried when the two runs straddle a second.
            let (ours, theirs) = (0..3)
                .map(|_| both_lines(|| served(&fields)))
                .find(|(a, b)| a.get(..20) == b.get(..20))
                .unwrap();
            assert_eq!(ours.len(), theirs.len(), "{ours}{theirs}");
            assert_eq!(ours[26..], theirs[26..]);
            assert!(ours[26..].starts_with("Z  INFO session_proxy::proxy::log: request "));
        }
        // A prewritten line is used once, by its own event only: not by others of its target.
        let (ours, _) = both_lines(|| {
            let _p = prewrite(&base);
            tracing::info!(target: ACCESS_TARGET, message = "another", status = 1u64);
            tracing::info!(
                target: ACCESS_TARGET,
                message = "eight",
                method = "GET",
                path = "/",
                status = 1u64,
                latency_us = 1u64,
                session = "new",
                saved = "none",
                id = "x"
            );
            tracing::info!(target: ACCESS_TARGET, message = "after", status = 2u64);
        });
        assert!(ours.contains(": another status=1\n"), "{ours}");
        assert!(
            ours.contains(": eight method=GET path=/ status=1"),
            "{ours}"
        );
        assert!(ours.contains(": after status=2\n"), "{ours}");
    }
}
