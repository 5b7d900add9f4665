//! `[limits]`: what one client may make the proxy hold (connections, head and body sizes and
//! times, HTTP/2 streams, idle upgraded sockets). Each value has a default and an upper bound,
//! since a limit set too high undoes itself; `bounded`, the check of a timeout, lives here as
//! this section alone uses it.

use std::num::NonZeroU32;
use std::time::Duration;

use super::origin::{Origin, count};
use super::raw::RawLimits;
use super::{ConfigError, DurationSpec};

/// `[limits]`: every resource a client can make the proxy hold is bounded here, so that slow,
/// silent or numerous clients cost a known amount and are answered clearly (408, 414, 431) or
/// disconnected, instead of holding sockets, memory or app workers without end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Connections served at once; one more is accepted and closed at once.
    pub max_connections: usize,
    /// From accept to the first request head (HTTP/1.1 and HTTP/2 alike).
    pub handshake_timeout: Duration,
    /// HTTP/1.1: the time a client has to send one request head.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub keep_alive_timeout: Duration,
    /// Bytes of one request head: HTTP/1.1 request line and headers, or an HTTP/2 header list.
    pub max_head_size: usize,
    /// Bytes of the request target.
    pub max_uri_length: usize,
    /// Header fields in one request.
    pub max_headers: usize,
    /// The longest wait for the next piece of a request body.
    pub body_idle_timeout: Duration,
    /// The time a client has to send a whole request body.
    pub body_timeout: Duration,
    /// Bytes of a request body read whole before the app is asked (0: none is).
    pub request_buffer: u64,
    /// Bytes all buffered bodies together may hold; a body that would go over streams.
    pub request_buffer_total: u64,
    /// Bytes per second a body must keep up, over a sliding window of `body_min_rate_grace`,
    /// once that grace has passed (0: no minimum).
    pub body_min_rate: u64,
    /// How long a body may go below `body_min_rate` at its start, and the window it is
    /// measured over after that.
    pub body_min_rate_grace: Duration,
    /// Bytes of one request body; more is a 413 (`None`: no limit).
    pub max_body_size: Option<u64>,
    /// HTTP/2 streams one connection may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: a PING after this long without a frame from the client.
    pub h2_keep_alive_interval: Duration,
    /// HTTP/2: a PING not answered within this closes the connection.
    pub h2_keep_alive_timeout: Duration,
    /// An upgraded connection (a WebSocket) that moves no byte either way for this long is
    /// closed. Its own limit: a socket waits far longer than a keep-alive connection does.
    pub upgrade_idle_timeout: Duration,
    /// New sessions one client address (an IPv6 /64) may make (`None`: no cap).
    pub new_sessions_per_ip: Option<Rate>,
}

/// `count` per `per`, written `"120/m"` (`s`, `m` or `h`): a burst of `count`, refilled evenly
/// over `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Duration,
}

impl Rate {
    /// Parses `"N/s"`, `"N/m"` or `"N/h"`, N from 1 to 1,000,000.
    pub fn parse(text: &str) -> Result<Rate, String> {
        let wrong = || format!("{text:?} is not a rate: expected N/s, N/m or N/h, as in \"120/m\"");
        let (count, unit) = text.split_once('/').ok_or_else(wrong)?;
        let count: u32 = count.trim().parse().map_err(|_| wrong())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(wrong()),
        };
        match NonZeroU32::new(count) {
            Some(count) if count.get() <= 1_000_000 => Ok(Rate { count, per }),
            _ => Err(format!("{text:?}: the count must be from 1 to 1000000")),
        }
    }
}

/// A positive duration of `key`, at most `max` (a longer wait would undo the limit).
fn bounded(
    at: &Origin,
    key: &'static str,
    spec: &Option<DurationSpec>,
    default: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let value = at.duration(key, spec, default)?;
    at.positive(key, value)?;
    if value > max {
        return Err(at.bad(
            key,
            format!("must be at most {}", humantime::format_duration(max)),
        ));
    }
    Ok(value)
}

pub(super) fn limits(at: &Origin, l: RawLimits) -> Result<Limits, ConfigError> {
    const MINUTE: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);
    let max_connections = count(
        at,
        "limits.max_connections",
        l.max_connections,
        4096,
        1..=1_000_000,
    )?;
    let handshake_timeout = bounded(
        at,
        "limits.handshake_timeout",
        &l.handshake_timeout,
        Duration::from_secs(10),
        MINUTE,
    )?;
    let header_read_timeout = bounded(
        at,
        "limits.header_read_timeout",
        &l.header_read_timeout,
        Duration::from_secs(10),
        MINUTE,
    )?;
    let keep_alive_timeout = bounded(
        at,
        "limits.keep_alive_timeout",
        &l.keep_alive_timeout,
        Duration::from_secs(15),
        HOUR,
    )?;
    // hyper's HTTP/1.1 buffer must hold one head, and it is at least 8 KiB.
    let max_head_size = count(
        at,
        "limits.max_head_size",
        l.max_head_size,
        64 * 1024,
        8192..=1024 * 1024,
    )?;
    let max_uri_length = count(
        at,
        "limits.max_uri_length",
        l.max_uri_length,
        8192,
        16..=max_head_size,
    )?;
    let max_headers = count(at, "limits.max_headers", l.max_headers, 100, 8..=10_000)?;
    let body_idle_timeout = bounded(
        at,
        "limits.body_idle_timeout",
        &l.body_idle_timeout,
        Duration::from_secs(30),
        HOUR,
    )?;
    let body_timeout = bounded(
        at,
        "limits.body_timeout",
        &l.body_timeout,
        Duration::from_secs(300),
        Duration::from_secs(24 * 3600),
    )?;
    const GIB: u64 = 1024 * 1024 * 1024;
    let request_buffer = count(
        at,
        "limits.request_buffer",
        l.request_buffer,
        1024 * 1024,
        0..=GIB,
    )?;
    let request_buffer_total = count(
        at,
        "limits.request_buffer_total",
        l.request_buffer_total,
        256 * 1024 * 1024,
        request_buffer..=64 * GIB,
    )?;
    let body_min_rate = count(at, "limits.body_min_rate", l.body_min_rate, 1024, 0..=GIB)?;
    let body_min_rate_grace = bounded(
        at,
        "limits.body_min_rate_grace",
        &l.body_min_rate_grace,
        Duration::from_secs(10),
        HOUR,
    )?;
    let max_body_size = match l.max_body_size {
        None => None,
        Some(v) => Some(count(at, "limits.max_body_size", Some(v), v, 1..=u64::MAX)?),
    };
    let h2_max_concurrent_streams = count(
        at,
        "limits.h2_max_concurrent_streams",
        l.h2_max_concurrent_streams,
        100,
        1..=10_000,
    )?;
    let h2_keep_alive_interval = bounded(
        at,
        "limits.h2_keep_alive_interval",
        &l.h2_keep_alive_interval,
        Duration::from_secs(20),
        HOUR,
    )?;
    let h2_keep_alive_timeout = bounded(
        at,
        "limits.h2_keep_alive_timeout",
        &l.h2_keep_alive_timeout,
        Duration::from_secs(20),
        HOUR,
    )?;
    let upgrade_idle_timeout = bounded(
        at,
        "limits.upgrade_idle_timeout",
        &l.upgrade_idle_timeout,
        Duration::from_secs(300),
        Duration::from_secs(24 * 3600),
    )?;
    let new_sessions_per_ip = l
        .new_sessions_per_ip
        .as_deref()
        .map(Rate::parse)
        .transpose()
        .map_err(|m| at.bad("limits.new_sessions_per_ip", m))?;
    // Every value is range-checked above, within usize and u32 on any platform this builds for.
    let usize_of = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    Ok(Limits {
        max_connections: usize_of(max_connections),
        handshake_timeout,
        header_read_timeout,
        keep_alive_timeout,
        max_head_size: usize_of(max_head_size),
        max_uri_length: usize_of(max_uri_length),
        max_headers: usize_of(max_headers),
        body_idle_timeout,
        body_timeout,
        request_buffer,
        request_buffer_total,
        body_min_rate,
        body_min_rate_grace,
        max_body_size,
        h2_max_concurrent_streams: u32::try_from(h2_max_concurrent_streams).unwrap_or(u32::MAX),
        h2_keep_alive_interval,
        h2_keep_alive_timeout,
        upgrade_idle_timeout,
        new_sessions_per_ip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_a_count_per_second_minute_or_hour() {
        let rate = Rate::parse("120/m").unwrap();
        assert_eq!((rate.count.get(), rate.per), (120, Duration::from_secs(60)));
        assert_eq!(Rate::parse("1/s").unwrap().per, Duration::from_secs(1));
        assert_eq!(Rate::parse("5/h").unwrap().per, Duration::from_secs(3600));
        for bad in ["0/m", "120", "120/d", "-1/s", "x/m", "2000000/s", "/m"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }
}
