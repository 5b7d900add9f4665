//! One integration-test binary (one link step, matklad's advice). Every test starts real
//! servers on 127.0.0.1:0: the test app (`support/app.rs`), the proxy, and for Redis a
//! `redis-server`. A request reads in two parts: what the client sends
//! (`get(addr, path).client_sends(..)`, or a `Browser` with its cookie jar) and how the test app
//! answers (`.app_responds_with(..)`, `.app_takes_ms(..)`, `.app_status(..)`).

/// The harness (no tests): the test app, the proxy in-process or as the binary, the clients.
mod support;

/// The header protocol: each request and response header, precedence, stripping, and what else
/// passes through (cookies, X-Forwarded-*, hop-by-hop headers, bodies, HTTP/2).
mod protocol;

/// The golden fixtures in tests/fixtures/protocol/: exact `X-Session` values and what each
/// instruction leaves stored, through the real proxy.
mod fixtures;

/// Every cookie option, renew_missing, signed cookies, several session cookies in one request.
mod cookies;

/// Cookie key rotation: lists of secrets, re-signing, secret_file and the environment variable,
/// SIGHUP reloads in the binary (a keep-alive connection open throughout), the per-key metric.
mod keys;

/// 502 (app down), 504 (app too slow), 503 (store failing at load or at save), hostile cookies.
mod errors;

/// Concurrent updates of one session keep every change (memory and fs stores).
mod concurrency;

/// 256 MiB bodies stream through the proxy binary with flat memory.
mod streaming;

/// Request buffering, the buffers' total, the minimum body rate, max_body_size, 100-continue.
mod buffering;

/// The binary under signals: SIGTERM/SIGINT drain, fs persistence across restarts, the access log.
mod shutdown;

/// `check`, config errors and exit codes, `--help`.
mod cli;

/// Idle/absolute timeouts, coalesced touches, the sweeper, `sessions prune`.
mod lifetime;

/// The admin listener: the JSON API on every store, the token, probes, metrics, the CLI.
mod admin;

/// The admin API against docs/src/admin-openapi.yaml: every route, every status, every JSON answer.
mod openapi;

/// `session.skip`: static paths with no store call and no session headers.
mod skip;

/// The Python WSGI adapter with the real interpreter, behind the real proxy.
mod python;

/// Restart and upgrade with nothing refused: the handoff over `upgrade_socket` under load
/// (sqlite and Redis), plain SO_REUSEPORT, systemd socket activation.
mod restart;

/// The deploy files, checked by their own tools (systemd-analyze, nginx -t, kubernetes-validate
/// on the rendered kustomization) and against each other.
mod deploy;

/// The image (Dockerfile) built with podman from a static build and run: the quickstart's flow,
/// the HEALTHCHECK, the non-root store, SIGTERM.
mod container;

/// The admin web page in a real headless Chromium over WebDriver: token, list, patch, delete, XSS.
mod admin_page;

/// The fs store's listing index: files removed behind its back, a reopened directory.
mod listing;

/// The `SessionStore` contract, expanded for every store (memory, fs, sqlite, Redis, Redis Cluster).
mod store_contract;

/// Sessions per user: revoke others/all, the admin's user routes, max_per_user, two proxies on
/// one Redis, a dead id never listed, the index bounded and rebuilt, the CLI.
mod users;

/// The sqlite store through the binary: SIGKILL mid-storm, schema version, two processes on
/// one file, unwritable paths, a full disk, the sweeper and `sessions prune`.
mod sqlite;

/// `sessions copy` between every pair of persistent stores; memory refused.
mod copy;

/// Session data encrypted at rest: no data value in any store's bytes, plain records upgraded,
/// removed keys unreadable (counted, kept), restart, rotation and SIGHUP through the binary,
/// the key from the environment, `sessions copy` re-encrypting and decrypting.
mod sealing;

/// `[limits]`: silent connections closed, the connection cap, 431/414, body timeouts (408), a
/// malformed body as the client's 400, HTTP/2 streams per connection.
mod limits;

/// The reserved prefix in every spelling, both ways, in headers and trailers, h1 and h2; the
/// session cookie only the proxy may set.
mod reserved;

/// Concurrent regenerates of one session leave one new id; racing updates never set a dead id.
mod regenerate;

/// `session.regenerate_grace` through the proxy: the old cookie within the grace, a stale use
/// after it (metric, audit, `on_stale_use = "revoke"`), destroy, two proxies on one Redis.
mod grace;

/// The aliases a regenerate leaves, as a store contract for every backend.
mod store_alias;

/// Host by RFC 9112/9113, CONNECT refused, forged forwarding headers removed or overwritten;
/// `trusted_proxies`: a listed peer's X-Forwarded-For and Forwarded chains kept and extended.
mod forwarding;

/// A raw-TCP app whose response framing is ambiguous (CL+TE, an unasked 101): a 502.
mod upstream_framing;

/// WebSocket and raw `Upgrade` pass-through: session work on the handshake, bytes both ways,
/// refused upgrades, bad 101s, closes from either side, idle tunnels, SIGTERM with one open.
mod upgrade;

/// [sessions-2] part 3: a WebSocket closes when its session ends (every end, on this proxy
/// within a second, on another within `socket_recheck`, an expiry), and its traffic keeps the
/// session alive; memory, sqlite and Redis.
mod sockets;

/// The quickstart (examples/counter.rs) in headless Chromium: counter, login, logout, HttpOnly,
/// a WebSocket from the page.
mod e2e;

/// Integers beyond 64 bits and long decimals survive Update and Replace digit for digit.
mod numbers;

/// SIGTERM closes connections with nothing in flight at once (h2 that never reads, half a head).
mod drain;

/// The audit log: exact lines for a scripted sequence, no id or value in it, logrotate's SIGHUP,
/// nothing lost at SIGTERM, a full queue dropping and counting, an unopenable path refused.
mod audit;
/// `[tls]`: HTTPS with ALPN h2/http1.1, Secure cookies, X-Forwarded-Proto, bad files (exit 2),
/// SIGHUP certificate reload, silent TLS clients cut by the handshake timeout.
mod tls;

/// Raw-TCP request smuggling attempts: 400, connection closed, nothing smuggled reaches the app.
mod smuggling;

/// `store.on_error`: fail_closed (503 + Retry-After, app not called) and fail_open, on a
/// Redis that is stopped under the proxy.
#[cfg(feature = "redis")]
mod store_down;

/// The PostgreSQL store on a real PostgreSQL (initdb and postgres started by the tests).
#[cfg(feature = "postgres")]
mod postgres;
/// The Redis store on real `redis-server` processes (one server, and a three-node cluster).
#[cfg(feature = "redis")]
mod redis;

/// Issue [at-rest]: a Redis written by the release before handles (tests/fixtures/previous)
/// keeps every session through the proxy and `sessions migrate`, on a server and a cluster.
#[cfg(feature = "redis")]
mod upgrade_redis;

/// The upstream connection pool, counted from the app: reuse, the idle cap, connections the
/// app closes or asks to close, a response cut off by the client; origin-form targets and Host.
mod pool;

/// `[assertion]`: the signed `X-Session-Assertion` the app verifies against the JWKS, over
/// HTTP/1.1 and HTTP/2; `assertion jwks`; the key file openssl reads; SIGHUP rotation.
mod assertion;

/// [at-rest]: after a run of logins through the binary, no bearer id anywhere at rest (store
/// files, keys and values, logs, the audit log, /metrics, admin answers), on every backend.
mod at_rest;

/// [at-rest]: a sqlite file and an fs directory written by the previous release
/// (`tests/fixtures/previous`) migrate at open with nothing lost.
mod upgrade_store;

/// [sessions-2]: remember-me, devices (revoke one, `X-Session-Devices`) and
/// `session.first_lifetime`, on memory, sqlite and Redis.
mod records;

/// [ops] part 2: SIGHUP reloads the whole configuration for new requests; in-flight requests
/// finish under the old one; restart-only settings are named and kept; a broken file changes
/// nothing.
mod reload;

/// `[tracing]`: OpenTelemetry spans to a real OTLP/HTTP receiver, `traceparent` at the app.
mod tracing;
