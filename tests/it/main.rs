//! One integration-test binary (one link step, matklad's advice). Every test starts real
//! servers on 127.0.0.1:0: the test upstream app, the proxy, and for Redis a `redis-server`.

mod support;

/// The header protocol: each request and response header, precedence, stripping.
mod protocol;
