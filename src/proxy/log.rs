//! The logging phase: one access-log line per request, at `info` when it was served or the
//! client was refused (a client's garbage is routine, not an alarm), and at `warn` when the
//! proxy answered for a failure of its own side; every failure names whose fault it was.

use http::StatusCode;

use super::ctx::RequestCtx;
use crate::error::Fault;
use crate::logging::{self, AccessFields};

/// The target of every line here; `logging::served`, which logs a served request's, names it
/// too (`logging::ACCESS_TARGET`).
#[cfg(test)]
const TARGET: &str = module_path!();

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
        None => logging::served(&AccessFields {
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

#[cfg(test)]
mod tests {
    /// `logging::served` names this module as its target, as the other lines here do.
    #[test]
    fn the_served_line_has_this_modules_target() {
        assert_eq!(crate::logging::ACCESS_TARGET, super::TARGET);
    }
}
