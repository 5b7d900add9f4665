//! One integration-test binary (one link step, matklad's advice). Every test starts real
//! servers on 127.0.0.1:0: the test app, the proxy, and for Redis a `redis-server`.

mod support;

/// The header protocol: each request and response header, precedence, stripping.
mod protocol;

/// The golden fixtures in tests/fixtures/protocol/: exact `X-Session` values and what each
/// instruction leaves stored, through the real proxy.
mod fixtures;

/// Every cookie option, renew_missing, signed cookies.
mod cookies;

/// 502, 504, 503 and hostile input.
mod errors;

/// Concurrent updates of one session keep every change.
mod concurrency;

/// 256 MiB bodies stream through the proxy binary with flat memory.
mod streaming;

/// SIGTERM/SIGINT drain, fs persistence across restarts.
mod shutdown;

/// `check`, config errors and exit codes, `--help`.
mod cli;

/// Idle/absolute timeouts, coalesced touches, the sweeper, `sessions prune`.
mod lifetime;

/// The Redis store on real `redis-server` processes (one server, and a three-node cluster).
#[cfg(feature = "redis")]
mod redis;
