//! The logging phase: one access-log line per request, at `info` when it was served and at
//! `warn` with the error when the proxy answered for it.

use http::StatusCode;

use super::ctx::RequestCtx;

pub fn logging(ctx: &RequestCtx, status: StatusCode) {
    // Whole microseconds: an integer field costs a fraction of `Duration`'s decimal `Debug`.
    let latency_us = u64::try_from(ctx.start.elapsed().as_micros()).unwrap_or(u64::MAX);
    let status = status.as_u16();
    let (method, path) = (ctx.method.as_str(), ctx.path.as_str());
    let (session, saved) = (ctx.session.as_str(), ctx.write.as_str());
    match &ctx.error {
        None => tracing::info!(method, path, status, latency_us, session, saved, "request"),
        Some(e) => tracing::warn!(
            method,
            path,
            status,
            latency_us,
            session,
            saved,
            error = %e,
            "request failed"
        ),
    }
}
