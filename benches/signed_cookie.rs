//! The signed session cookie alone (issue [shape-2]): `take` checks the HMAC of the cookie a
//! request brings, `set` signs the one a response sends. Plain (unsigned) cookies are the
//! baseline, so the difference is what signing costs; `take/old-key` verifies with the second key
//! of two (key rotation: the first key is tried and fails first).
//!
//! Run with `cargo bench --bench signed_cookie` (about half a minute). Timings on a shared
//! machine are noisy; `SECRET=1 bench/instructions.sh` counts instructions per request.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use http::header::{COOKIE, HeaderValue};
use session_proxy::config::RawConfig;
use session_proxy::cookie::{Presented, SessionCookie};
use session_proxy::session::SessionId;

const NEW: &str = "0123456789abcdef0123456789abcdef-new";
const OLD: &str = "0123456789abcdef0123456789abcdef-old";

fn cookies(toml: &str) -> SessionCookie {
    let cookie = RawConfig::from_toml("bench", toml)
        .and_then(|raw| raw.validate("bench"))
        .unwrap_or_else(|e| panic!("bench config: {e}"))
        .cookie;
    SessionCookie::new(cookie)
}

/// What a browser sends back for `set`: the session cookie among two others.
fn cookie_header(set: &HeaderValue) -> HeaderValue {
    let value = set.to_str().unwrap_or_default();
    let pair = value.split(';').next().unwrap_or_default();
    HeaderValue::from_str(&format!("theme=dark; {pair}; _ga=GA1.2.3"))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn take(
    c: &mut Criterion,
    name: &str,
    cookies: &SessionCookie,
    header: &HeaderValue,
    want: &Presented,
) {
    c.bench_function(name, |b| {
        b.iter_batched_ref(
            || {
                let mut h = HeaderMap::new();
                h.insert(COOKIE, header.clone());
                h
            },
            |h| {
                let presented = cookies.take(h);
                debug_assert_eq!(&presented, want);
                presented
            },
            BatchSize::SmallInput,
        )
    });
}

fn signed_cookie(c: &mut Criterion) {
    let id = SessionId::generate().unwrap_or_else(|e| panic!("{e}"));
    let max_age = "max_age = \"12h\"\n";
    let plain = cookies(&format!("[cookie]\n{max_age}"));
    let old = cookies(&format!("[cookie]\nsecret = \"{OLD}\"\n{max_age}"));
    let rotated = cookies(&format!(
        "[cookie]\nsecret = [\"{NEW}\", \"{OLD}\"]\n{max_age}"
    ));
    let sent = |cookies: &SessionCookie| {
        cookie_header(&cookies.set(&id).unwrap_or_else(|| panic!("no Set-Cookie")))
    };

    take(
        c,
        "signed_cookie/take/plain",
        &plain,
        &sent(&plain),
        &Presented::Valid(id),
    );
    take(
        c,
        "signed_cookie/take/signed",
        &rotated,
        &sent(&rotated),
        &Presented::Valid(id),
    );
    take(
        c,
        "signed_cookie/take/old-key",
        &rotated,
        &sent(&old),
        &Presented::OldKey(id),
    );
    let forged = HeaderValue::from_str(&format!("session_id={}{id}", "A".repeat(43) + "="))
        .unwrap_or_else(|e| panic!("{e}"));
    take(
        c,
        "signed_cookie/take/forged",
        &rotated,
        &forged,
        &Presented::Invalid,
    );
    c.bench_function("signed_cookie/set/plain", |b| {
        b.iter(|| plain.set(black_box(&id)))
    });
    c.bench_function("signed_cookie/set/signed", |b| {
        b.iter(|| rotated.set(black_box(&id)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = signed_cookie
}
criterion_main!(benches);
