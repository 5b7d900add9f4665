//! The logging phase: one access-log line per request, at `info` when it was served or the
//! client was refused (a client's garbage is routine, not an alarm), and at `warn` when the
//! proxy answered for a failure of its own side; every failure names whose fault it was.

use http::StatusCode;

use super::ctx::RequestCtx;
use crate::error::Fault;
use crate::logging::{self, AheadFields, FieldsText};

pub fn logging(ctx: &RequestCtx, status: StatusCode) {
    // Whole microseconds: an integer field costs a fraction of `Duration`'s decimal `Debug`.
    let latency_us = u64::try_from(ctx.start.elapsed().as_micros()).unwrap_or(u64::MAX);
    let status = status.as_u16();
    let (method, path) = (ctx.method.as_str(), ctx.path.as_str());
    let (session, saved) = (ctx.session.as_str(), ctx.write.as_str());
    // Well formed by construction (ctx.rs): plain ASCII, written as it is.
    let request_id = ctx.request_id.to_str().unwrap_or("-");
    // The message as a `&str` field, not a format string: the line and the JSON object are the
    // same (a field named `message` is the message), but a string needs no `core::fmt` pass.
    match &ctx.error {
        None => served(&AccessFields {
            message: "request",
            method,
            path,
            status,
            latency_us,
            session,
            saved,
            request_id,
        }),
        Some(e) if e.fault() == Fault::Client => tracing::info!(
            message = "request refused",
            method,
            path,
            status,
            latency_us,
            session,
            saved,
            request_id,
            fault = Fault::Client.as_str(),
            error = %e
        ),
        Some(e) => tracing::warn!(
            message = "request failed",
            method,
            path,
            status,
            latency_us,
            session,
            saved,
            request_id,
            fault = e.fault().as_str(),
            error = %e
        ),
    }
}

/// Logs the line of a served request, the one every request but a failed one logs. The proxy
/// and `benches/hot_path.rs` both call this, so the benchmark measures the line the proxy writes.
///
/// Its fields are written ahead ([`logging::prewrite`]) when the line will be written at all,
/// and the event carries them too, for any other format or subscriber. Kept because it pays:
/// `LOG=info bench/instructions.sh` (memory store, write mix; bench/PROFILE.md, "shape-2: the
/// access line's prewrite") counted 59,354, 59,355, 59,475 and 59,564 instructions per request
/// with it, 60,334, 60,551, 60,557 and 60,537 with the line's fields visited one by one: 1,058
/// on the means, against a bar of 1,000: a thin margin (runs of one build differ by up to 217),
/// so remeasure after any change here or in `logging/prewrite.rs`.
pub fn served(f: &AccessFields<'_>) {
    // The global maximum (one load), not `enabled!` (a call into the filter): a filter that
    // drops this target alone at `info` costs a prewrite for nothing, never a wrong line.
    let _prewritten = if tracing::Level::INFO <= tracing::level_filters::LevelFilter::current() {
        logging::prewrite(f)
    } else {
        None
    };
    tracing::info!(
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

/// The fields of a served request's line, in the order of its event.
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

/// The event of [`served`]: its target (this module, as for every line here) and its fields'
/// names, in its order. The line uses the prewritten text only for an event with these (the
/// test below checks the two lines are the same), so a field added to the event and not here
/// costs the saving, never a wrong line.
impl AheadFields for AccessFields<'_> {
    const TARGET: &'static str = module_path!();
    const NAMES: &'static [&'static str] = &[
        "message",
        "method",
        "path",
        "status",
        "latency_us",
        "session",
        "saved",
        "request_id",
    ];

    fn write(&self, out: &mut FieldsText) -> Option<()> {
        out.str("message", self.message)?;
        out.str("method", self.method)?;
        out.str("path", self.path)?;
        out.u64("status", self.status.into())?;
        out.u64("latency_us", self.latency_us)?;
        out.str("session", self.session)?;
        out.str("saved", self.saved)?;
        out.str("request_id", self.request_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::testing::both_lines;

    /// The target of the lines `served` writes.
    const TARGET: &str = "session_proxy::proxy::log";

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
            let _p = logging::prewrite(&base);
            tracing::info!(target: TARGET, message = "another", status = 1u64);
            tracing::info!(
                target: TARGET,
                message = "eight",
                method = "GET",
                path = "/",
                status = 1u64,
                latency_us = 1u64,
                session = "new",
                saved = "none",
                id = "x"
            );
            tracing::info!(target: TARGET, message = "after", status = 2u64);
        });
        assert!(ours.contains(": another status=1\n"), "{ours}");
        assert!(
            ours.contains(": eight method=GET path=/ status=1"),
            "{ours}"
        );
        assert!(ours.contains(": after status=2\n"), "{ours}");
    }
}
