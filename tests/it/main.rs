//! One integration-test binary (one link step, matklad's advice). Every test starts real
//! servers on 127.0.0.1:0: the test upstream app, the proxy, and for Redis a `redis-server`.

mod support;

/// The header protocol: each request and response header, precedence, stripping.
mod protocol;

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

/// The `SessionStore` contract, expanded for every store (memory, fs, Redis, Redis Cluster).
mod store_contract;

/// The fs store's listing index: files removed behind its back, a reopened directory.
mod listing;

/// The Redis store on real `redis-server` processes (one server, and a three-node cluster).
#[cfg(feature = "redis")]
mod redis;
