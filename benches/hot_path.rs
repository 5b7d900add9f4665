//! Micro-benchmarks of the pieces every proxied request runs through, in pipeline order:
//! the session id, the cookie, the `X-Session` codec, the merge patch, one store write, the
//! whole session phase of one request, the signed assertion (`[assertion]`), the access-log
//! line, and the sealing of session data at rest (`store.encryption_key`).
//! The load benchmark (`bench/load.sh`) measures the whole proxy; these say where its time goes.
//!
//! Run with `cargo bench` (about two minutes), or `cargo bench -- codec` for one group.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, SamplingMode, criterion_group, criterion_main};
use http::HeaderMap;
use http::header::{COOKIE, HeaderValue};
use serde_json::{Value, json};
use session_proxy::config::{Config, Lifetime, RawConfig};
use session_proxy::cookie::{Presented, SessionCookie};
use session_proxy::logging::{Batch, text_subscriber};
use session_proxy::protocol::codec::{
    decode_session, encode_session, parse_object, session_header,
};
use session_proxy::protocol::{ProtocolHeaders, parse_instructions};
use session_proxy::proxy::{AccessFields, served};
use session_proxy::session::{DataChange, Handle, SessionId};
use session_proxy::store::fs::FsStore;
use session_proxy::store::memory::MemoryStore;
use session_proxy::store::{Record, Sealer, SessionStore, Update, now_ms};

/// ~200 bytes of session JSON, the size the load benchmark's sessions have.
fn session_json() -> String {
    json!({ "visits": 41, "user": "ada", "profile": "p".repeat(150) }).to_string()
}

fn config(toml: &str) -> Config {
    RawConfig::from_toml("bench", toml)
        .and_then(|raw| raw.validate("bench"))
        .unwrap_or_else(|e| panic!("bench config: {e}"))
}

fn record(data: &str) -> Record {
    let now = now_ms();
    Record {
        data: Arc::from(data),
        created_at: now,
        updated_at: now,
        expires_at: now + 86_400_000,
        version: 1,
        meta: Default::default(),
    }
}

fn visits_patch() -> DataChange {
    match json!({ "visits": 42 }) {
        Value::Object(map) => DataChange::Patch(map),
        _ => unreachable!(),
    }
}

fn update(change: Option<DataChange>, lifetime: Lifetime, max_size: usize) -> Update {
    Update {
        change,
        base: None,
        now: now_ms(),
        lifetime,
        max_size,
        extends: true,
        visit: None,
    }
}

fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

fn ids(c: &mut Criterion) {
    let mut g = c.benchmark_group("id");
    g.bench_function("generate", |b| b.iter(Handle::generate));
    let id = Handle::generate().unwrap_or_else(|e| panic!("{e}"));
    let text = id.to_string();
    g.bench_function("parse", |b| b.iter(|| Handle::parse(black_box(&text))));
    g.finish();
}

fn cookies(c: &mut Criterion) {
    let id = SessionId::generate().unwrap_or_else(|e| panic!("{e}"));
    let plain = SessionCookie::new(config("").cookie);
    let signed = SessionCookie::new(
        config("[cookie]\nsecret = \"0123456789abcdef0123456789abcdef\"\nmax_age = \"12h\"\n")
            .cookie,
    );
    let mut g = c.benchmark_group("cookie");
    for (name, cookies) in [("plain", &plain), ("signed", &signed)] {
        let set = cookies.set(&id).unwrap_or_else(|| panic!("no Set-Cookie"));
        // What a browser sends back: the session cookie among two others.
        let value = set.to_str().unwrap_or_default();
        let pair = value.split(';').next().unwrap_or_default();
        let header = HeaderValue::from_str(&format!("theme=dark; {pair}; _ga=GA1.2.3"))
            .unwrap_or_else(|e| panic!("{e}"));
        g.bench_function(format!("take/{name}"), |b| {
            b.iter_batched_ref(
                || {
                    let mut h = HeaderMap::new();
                    h.insert(COOKIE, header.clone());
                    h
                },
                |h| {
                    let presented = cookies.take(h);
                    debug_assert_eq!(presented, Presented::Valid(id));
                    presented
                },
                BatchSize::SmallInput,
            )
        });
        g.bench_function(format!("set/{name}"), |b| {
            b.iter(|| cookies.set(black_box(&id)))
        });
    }
    // The session's handle, computed once per request from the cookie's id ([at-rest]).
    g.bench_function("handle", |b| b.iter(|| black_box(&id).handle()));
    g.finish();
}

fn codec(c: &mut Criterion) {
    let data = session_json();
    let encoded = encode_session(&data);
    let raw_patch = br#"{"visits":42}"#;
    let mut g = c.benchmark_group("codec");
    g.bench_function("encode_session/200B", |b| {
        b.iter(|| encode_session(black_box(&data)))
    });
    g.bench_function("decode_session/200B", |b| {
        b.iter(|| decode_session(black_box(encoded.as_bytes())))
    });
    g.bench_function("parse_object/raw", |b| {
        b.iter(|| parse_object("update", black_box(raw_patch)))
    });
    let b64 = encode_session(std::str::from_utf8(raw_patch).unwrap_or_default());
    g.bench_function("parse_object/base64", |b| {
        b.iter(|| parse_object("update", black_box(b64.as_bytes())))
    });
    g.finish();
}

fn merge(c: &mut Criterion) {
    let cfg = config("");
    let current = record(&session_json());
    let patch = visits_patch();
    let mut g = c.benchmark_group("merge");
    g.bench_function("apply_to/value", |b| {
        let value: Value = serde_json::from_str(&current.data).unwrap_or_default();
        b.iter_batched_ref(
            || value.clone(),
            |v| patch.apply_to(v),
            BatchSize::SmallInput,
        )
    });
    // What every store does per write: parse the stored text, merge, serialise, check the size.
    let u = update(
        Some(patch.clone()),
        cfg.session.lifetime,
        cfg.session.max_size,
    );
    g.bench_function("update_apply/200B", |b| {
        b.iter(|| u.apply(black_box(&current)))
    });
    let touch = update(None, cfg.session.lifetime, cfg.session.max_size);
    g.bench_function("update_apply/touch", |b| {
        b.iter(|| touch.apply(black_box(&current)))
    });
    g.finish();
}

fn stores(c: &mut Criterion) {
    let cfg = config("");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let data = session_json();
    let patch = visits_patch();
    let u = update(Some(patch), cfg.session.lifetime, cfg.session.max_size);

    let mut g = c.benchmark_group("store");
    let memory = MemoryStore::default();
    let ids: Vec<Handle> = (0..10_000)
        .map(|_| Handle::generate().unwrap_or_else(|e| panic!("{e}")))
        .collect();
    rt.block_on(async {
        for id in &ids {
            let ok = memory.create(id, &record(&data)).await;
            assert!(matches!(ok, Ok(true)));
        }
    });
    // What `block_on` itself costs, to subtract from the store numbers below.
    g.bench_function("block_on/ready", |b| {
        b.iter(|| rt.block_on(async { black_box(1) }))
    });
    let mut i = 0;
    g.bench_function("memory/load", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            rt.block_on(memory.load(&ids[i]))
        })
    });
    g.bench_function("memory/update", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            rt.block_on(memory.update(&ids[i], &u))
        })
    });
    g.finish();

    // One fs write is 10 µs to several ms: fewer samples, each one iteration or a few.
    let mut g = c.benchmark_group("store/fs");
    g.sampling_mode(SamplingMode::Flat).sample_size(20);
    for fsync in [false, true] {
        let dir = tempfile::Builder::new()
            .prefix("session-proxy-bench")
            .tempdir_in(std::env::var_os("CARGO_TARGET_TMPDIR").unwrap_or_else(|| "target".into()))
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let fs_cfg = config(&format!(
            "[store]\nkind = \"fs\"\npath = {:?}\nfsync = {fsync}\n",
            dir.path().display().to_string()
        ));
        let session_proxy::config::StoreKind::Fs(fs_config) = fs_cfg.store.kind.clone() else {
            panic!("not an fs store config");
        };
        let store = rt
            .block_on(FsStore::open(fs_config))
            .unwrap_or_else(|e| panic!("fs store: {e}"));
        let fs_ids = &ids[..100];
        rt.block_on(async {
            for id in fs_ids {
                let ok = store.create(id, &record(&data)).await;
                assert!(matches!(ok, Ok(true)));
            }
        });
        let name = if fsync { "fsync" } else { "no_fsync" };
        let mut j = 0;
        g.bench_function(format!("load/{name}"), |b| {
            b.iter(|| {
                j = (j + 1) % fs_ids.len();
                rt.block_on(store.load(&fs_ids[j]))
            })
        });
        g.bench_function(format!("update/{name}"), |b| {
            b.iter(|| {
                j = (j + 1) % fs_ids.len();
                rt.block_on(store.update(&fs_ids[j], &u))
            })
        });
    }
    g.finish();
}

/// Session data encrypted at rest (issue [at-rest], part 3: encrypt + decrypt of a 200-byte
/// session within 2 µs): AES-256-GCM seal and open of the load benchmark's session, as a store
/// does per write and per read; the sealer off (the no-op every store runs without a key); and
/// the memory store's load and update with a key, beside `store/memory/*` without one.
fn sealing(c: &mut Criterion) {
    // The load benchmark's session, its profile padded to exactly 200 bytes.
    let data = json!({ "visits": 41, "user": "ada", "profile": "p".repeat(161) }).to_string();
    assert_eq!(data.len(), 200);
    let id = Handle::generate().unwrap_or_else(|e| panic!("{e}"));
    let counter = prometheus_client::metrics::counter::Counter::default();
    let on = Sealer::new(&["bench-store-key-0123456789abcdef-0123456789"], counter)
        .unwrap_or_else(|e| panic!("{e}"));
    let off = Sealer::default();
    let sealed = on
        .seal(&data, &id)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_owned();
    let mut g = c.benchmark_group("seal");
    g.bench_function(format!("{}B/seal+open", data.len()), |b| {
        b.iter(|| {
            let s = on
                .seal(black_box(&data), &id)
                .unwrap_or_else(|e| panic!("{e}"));
            let o = on.open(&s, &id).unwrap_or_else(|_| panic!("did not open"));
            black_box(o.len())
        })
    });
    g.bench_function(format!("{}B/seal", data.len()), |b| {
        b.iter(|| black_box(on.seal(black_box(&data), &id).map(|s| s.len())))
    });
    g.bench_function(format!("{}B/open", data.len()), |b| {
        b.iter(|| black_box(on.open(black_box(&sealed), &id).map(|s| s.len())))
    });
    g.bench_function("off/seal+open", |b| {
        b.iter(|| {
            let s = off
                .seal(black_box(&data), &id)
                .unwrap_or_else(|e| panic!("{e}"));
            let o = off.open(&s, &id).unwrap_or_else(|_| panic!("did not open"));
            black_box(o.len())
        })
    });
    g.finish();

    // As `store/memory/*` measures the store without a key (`block_on` and the same data).
    let cfg = config("");
    let u = update(
        Some(visits_patch()),
        cfg.session.lifetime,
        cfg.session.max_size,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let data = session_json();
    let mut g = c.benchmark_group("store");
    let memory = MemoryStore::sealed(None, on);
    let ids: Vec<Handle> = (0..10_000)
        .map(|_| Handle::generate().unwrap_or_else(|e| panic!("{e}")))
        .collect();
    rt.block_on(async {
        for id in &ids {
            assert!(matches!(memory.create(id, &record(&data)).await, Ok(true)));
        }
    });
    let mut i = 0;
    g.bench_function("memory_sealed/load", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            rt.block_on(memory.load(&ids[i]))
        })
    });
    g.bench_function("memory_sealed/update", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            rt.block_on(memory.update(&ids[i], &u))
        })
    });
    g.finish();
}

/// A future that is ready at once (the memory store's), run without a runtime, so the phase
/// bench below measures the session work and not `block_on`.
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(f).poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => panic!("the memory store never waits"),
    }
}

/// The session work of one request that updates its ~200-byte session, as `proxy::pipeline`
/// does it: take and check the cookie, load, encode `X-Session`, take and parse the app's
/// instructions, merge and save, and build `Set-Cookie` (sent on every write here: `max_age`
/// makes the expiry slide). Not in it: hyper, the upstream call, the access line.
fn session_phase(c: &mut Criterion) {
    let headers = ProtocolHeaders::new("X-Session").unwrap_or_else(|e| panic!("{e}"));
    let data = session_json();
    let mut g = c.benchmark_group("session_phase");
    for (name, toml) in [
        ("plain", ""),
        (
            "signed",
            "[cookie]\nsecret = \"0123456789abcdef0123456789abcdef\"\nmax_age = \"12h\"\n",
        ),
    ] {
        let cfg = config(toml);
        let cookies = SessionCookie::new(cfg.cookie.clone());
        let store = MemoryStore::default();
        let id = SessionId::generate().unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            ready(store.create(&id.handle(), &record(&data))),
            Ok(true)
        ));
        let set = cookies.set(&id).unwrap_or_else(|| panic!("no Set-Cookie"));
        let pair = set
            .to_str()
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default();
        let mut request = HeaderMap::new();
        request.insert(
            COOKIE,
            HeaderValue::from_str(&format!("theme=dark; {pair}")).unwrap_or_else(|e| panic!("{e}")),
        );
        request.insert("accept", HeaderValue::from_static("text/html"));
        let mut response = HeaderMap::new();
        response.insert("content-type", HeaderValue::from_static("text/plain"));
        response.insert(
            "x-session-update",
            HeaderValue::from_static(r#"{"visits":42}"#),
        );
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || (request.clone(), response.clone()),
                |(request, response)| {
                    let Presented::Valid(id) = cookies.take(request) else {
                        panic!("the cookie did not verify")
                    };
                    let handle = id.handle();
                    let record = ready(store.load(&handle)).ok().flatten();
                    let text = record.as_ref().map_or("{}", |r| &r.data);
                    let session = session_header(text);
                    request.insert(
                        "x-session",
                        session.unwrap_or_else(|| panic!("no X-Session")),
                    );
                    let raw = headers.take_instructions(response);
                    let (instructions, _) = parse_instructions(&raw);
                    let u = Update {
                        change: instructions.change,
                        base: record,
                        now: now_ms(),
                        lifetime: cfg.session.lifetime,
                        max_size: cfg.session.max_size,
                        extends: true,
                        visit: None,
                    };
                    let saved = ready(store.update(&handle, &u));
                    assert!(matches!(saved, Ok(Some(_))));
                    cookies.set(&id)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// One access-log line (the fields and target of `proxy/log.rs`'s `info` line) through the
/// text subscriber `logging::init` installs: formatted only (written to `io::sink`), and
/// formatted and queued for the background writer (which writes to `io::sink`).
/// `[assertion]`'s cost per request: the claims (the handle and `sdh`, two SHA-256), the JSON,
/// base64url and the Ed25519 signature; beside it the signature alone (the floor) and
/// jsonwebtoken's own `encode`, which parses the PKCS#8 key again on every call.
fn assertion(c: &mut Criterion) {
    use session_proxy::assertion::{Claims, Signer};
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let key_file = dir.path().join("assertion.pem");
    let config = session_proxy::config::AssertionConfig {
        key_file: key_file.clone(),
        audience: "http://127.0.0.1:8000".into(),
        issuer: "session-proxy".into(),
        ttl: Duration::from_secs(60),
    };
    let signer = Signer::open(&config).unwrap_or_else(|e| panic!("{e}"));
    let id = Handle::generate().unwrap_or_else(|e| panic!("{e}"));
    let header = session_header(&session_json()).unwrap_or_else(|| panic!("header"));
    let rid = "0123456789abcdef0123456789abcdef";
    let mut g = c.benchmark_group("assertion");
    g.bench_function("claims", |b| {
        b.iter(|| Claims::new(rid, black_box(&id), false, header.as_bytes(), None))
    });
    g.bench_function("claims_and_sign/200B", |b| {
        b.iter(|| {
            let claims = Claims::new(rid, black_box(&id), false, header.as_bytes(), None);
            signer.sign(&claims)
        })
    });
    let pem = std::fs::read(&key_file).unwrap_or_else(|e| panic!("{e}"));
    let der = {
        use rustls_pki_types::pem::PemObject as _;
        rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem)
            .unwrap_or_else(|e| panic!("{e}"))
            .secret_pkcs8_der()
            .to_vec()
    };
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
        .unwrap_or_else(|e| panic!("{e}"));
    let message = signer
        .sign(&Claims::new(rid, &id, false, header.as_bytes(), None))
        .to_str()
        .map(|t| t.rsplit_once('.').map_or(t, |(m, _)| m).to_owned())
        .unwrap_or_default();
    g.bench_function("ed25519_sign_only", |b| {
        b.iter(|| pair.sign(black_box(message.as_bytes())))
    });
    let key = jsonwebtoken::EncodingKey::from_ed_der(&der);
    let jwt_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    g.bench_function("jsonwebtoken_encode", |b| {
        b.iter(|| {
            let claims = Claims::new(rid, black_box(&id), false, header.as_bytes(), None);
            jsonwebtoken::encode(&jwt_header, &claims, &key)
        })
    });
    g.finish();
}

fn access_line(c: &mut Criterion) {
    // The line the proxy logs for a served request (`proxy::served`).
    let line = || {
        let ctx_path = String::from("/account/settings");
        let f = AccessFields {
            message: "request",
            method: "GET",
            path: ctx_path.as_str(),
            status: 200,
            latency_us: black_box(1234u64),
            session: "existing",
            saved: "updated",
            request_id: "6f1c0e2b9a8d4f3e2d1c0b9a8f7e6d5c",
        };
        served(&f);
    };
    let mut g = c.benchmark_group("access_line");
    let filter = || tracing_subscriber::EnvFilter::new("info");
    let formatted = text_subscriber(filter(), std::io::sink);
    tracing::subscriber::with_default(formatted, || {
        g.bench_function("format", |b| b.iter(line));
    });
    let (batch, guard) = Batch::spawn(std::io::sink());
    let queued = text_subscriber(filter(), batch);
    tracing::subscriber::with_default(queued, || {
        g.bench_function("format_and_queue", |b| b.iter(line));
    });
    drop(guard);
    // What `RUST_LOG=warn` costs the line: the filtered-out event.
    let filtered = text_subscriber(tracing_subscriber::EnvFilter::new("warn"), std::io::sink);
    tracing::subscriber::with_default(filtered, || {
        g.bench_function("filtered_out", |b| b.iter(line));
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = ids, cookies, codec, merge, stores, session_phase, assertion, access_line, sealing
}
criterion_main!(benches);
