//! The admin API against its contract, docs/src/admin-openapi.yaml: every route src/admin/ builds
//! is described there, and the binary on a real store is called on every route for every
//! status the document lists (success and each error); each JSON answer is validated against
//! the document's schema by Python's `jsonschema` (installed by .ci/run; never skipped).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;

use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};

use crate::support::{App, Browser, ProxyProcess, Resp, handle, request};

const DOC: &str = "docs/src/admin-openapi.yaml";
const TOKEN: &str = "openapi-test-admin-token-0123";

/// The routes src/admin/ builds, as (path, method): every `.route("path", get(..).patch(..))`
/// of its source. Read from the source because axum's Router cannot list its routes.
fn routed() -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for file in ["src/admin/mod.rs", "src/admin/api.rs", "src/admin/page.rs"] {
        let text = std::fs::read_to_string(file).unwrap();
        for call in text.split(".route(").skip(1) {
            let path = call.split('"').nth(1).unwrap().to_owned();
            // The handlers, up to the next route or the end of the builder chain.
            let handlers = call.split(";").next().unwrap();
            for method in ["get", "post", "put", "patch", "delete"] {
                let called = |prefix: &str| handlers.contains(&format!("{prefix}{method}("));
                if called("(") || called(" ") || called(".") || called("\n") {
                    routes.insert((path.clone(), method.to_owned()));
                }
            }
        }
    }
    routes
}

/// What one call showed: the route as the document names it, the status, the answer.
struct Seen {
    path: &'static str,
    method: Method,
    resp: Resp,
}

struct Calls {
    admin: SocketAddr,
    seen: Vec<Seen>,
}

impl Calls {
    async fn call(
        &mut self,
        route: &'static str,
        method: Method,
        path: &str,
        token: bool,
        body: &str,
    ) -> Value {
        let auth = format!("Bearer {TOKEN}");
        let headers: &[(&str, &str)] = if token {
            &[("authorization", auth.as_str())]
        } else {
            &[]
        };
        let resp = request(self.admin, method.clone(), path)
            .client_sends(headers)
            .body(Bytes::from(body.to_owned()))
            .await;
        let json = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        self.seen.push(Seen {
            path: route,
            method,
            resp,
        });
        json
    }
}

fn observations(seen: &[Seen]) -> Vec<Value> {
    seen.iter()
        .map(|s| {
            let content_type = s
                .resp
                .headers
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = content_type
                .as_deref()
                .filter(|t| *t == "application/json")
                .map(|_| serde_json::from_slice::<Value>(&s.resp.body).unwrap());
            json!({
                "path": s.path,
                "method": s.method.as_str().to_lowercase(),
                "status": s.resp.status.as_u16().to_string(),
                "content_type": content_type,
                "body": body,
                "empty": s.resp.body.is_empty(),
            })
        })
        .collect()
}

/// Checks the observations against the document (see the module doc); `unexercised` lists the
/// (path, method, status) the test cannot provoke.
const CHECK: &str = r##"
import json, sys, yaml
from jsonschema import Draft202012Validator
doc = yaml.safe_load(open(sys.argv[1]))
seen = json.load(open(sys.argv[2]))
routed = {tuple(r) for r in json.load(open(sys.argv[3]))}
unexercised = {tuple(r) for r in json.load(open(sys.argv[4]))}
problems = []
components = doc["components"]
for name, schema in components["schemas"].items():
    Draft202012Validator.check_schema(schema)
def resolve(obj):
    while "$ref" in obj:
        ref = obj["$ref"].split("/")[1:]
        obj = doc
        for part in ref:
            obj = obj[part]
    return obj
documented = set()
for path, item in doc["paths"].items():
    for method, op in item.items():
        if method == "parameters":
            continue
        for status in op["responses"]:
            documented.add((path, method, status))
doc_routes = {(p, m) for (p, m, _) in documented}
for r in sorted(routed - doc_routes):
    problems.append(f"routed but not in the document: {r[1].upper()} {r[0]}")
for r in sorted(doc_routes - routed):
    problems.append(f"in the document but not routed: {r[1].upper()} {r[0]}")
exercised = set()
error = {"$ref": "#/components/schemas/Error", "components": components}
for s in seen:
    key = (s["path"], s["method"], s["status"])
    where = f'{s["method"].upper()} {s["path"]} -> {s["status"]}'
    if s["path"] == "(fallback)":
        schema = error
    else:
        exercised.add(key)
        if key not in documented:
            problems.append(f"answered but not documented: {where}")
            continue
        response = resolve(doc["paths"][s["path"]][s["method"]]["responses"][s["status"]])
        content = response.get("content")
        if content is None:
            if not s["empty"]:
                problems.append(f"{where}: documented without a body, answered with one")
            continue
        if s["content_type"] is None or s["content_type"].split(";")[0] not in content:
            problems.append(f'{where}: content type {s["content_type"]}, documented {list(content)}')
            continue
        schema = content[s["content_type"].split(";")[0]].get("schema")
        if schema is None:
            continue
        schema = dict(schema, components=components)
    if s["body"] is None:
        problems.append(f"{where}: not JSON")
        continue
    for e in Draft202012Validator(schema).iter_errors(s["body"]):
        problems.append(f'{where}: {e.message} at {list(e.absolute_path)} in {json.dumps(s["body"])[:300]}')
for key in sorted(documented - exercised - unexercised):
    problems.append(f"documented but never exercised: {key[1].upper()} {key[0]} -> {key[2]}")
print(f"{len(seen)} answers checked, {len(exercised)} of {len(documented)} documented responses exercised")
if problems:
    print("\n".join(problems))
    sys.exit(1)
"##;

fn check(seen: &[Seen], unexercised: &[(&str, &str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, value: &Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, value.to_string()).unwrap();
        path
    };
    let seen = write("seen.json", &Value::Array(observations(seen)));
    let routed = write("routed.json", &json!(routed()));
    let unexercised = write("unexercised.json", &json!(unexercised));
    let out = Command::new("python3")
        .args(["-c", CHECK, DOC])
        .args([&seen, &routed, &unexercised])
        .output()
        .unwrap_or_else(|e| panic!("python3 cannot be run ({e}); this test never skips"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the admin API does not match {DOC}:\n{stdout}{stderr}\n(python3 needs jsonschema and \
         PyYAML: .ci/run installs them)"
    );
    eprintln!("{stdout}");
}

/// A session of `user` made through the proxy; its handle.
async fn session_of(proxy: SocketAddr, user: &str) -> String {
    let mut b = Browser::new(proxy, "session_id");
    b.get("/")
        .app_responds_with(&[("X-Session-Update", &format!(r#"{{"user":"{user}"}}"#))])
        .await;
    handle(&b.cookie.clone().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_route_answers_as_the_openapi_document_says() {
    let app = App::start().await;
    let upstream = format!("http://{}", app.addr);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nkind = \"sqlite\"\npath = \"{db}\"\n[session]\nuser_key = \"user\"\n\
             max_size = 1024\n[assertion]\nkey_file = \"{key}\"\n",
            db = dir.path().join("s.db").display(),
            key = dir.path().join("assertion.pem").display(),
        ),
    )
    .unwrap();
    let (config, token) = (config.display().to_string(), token.display().to_string());
    // The full proxy: sqlite, a user index, the assertion, a token.
    let full = ProxyProcess::spawn(&[
        "--config",
        &config,
        "--upstream",
        &upstream,
        "--admin-listen",
        "127.0.0.1:0",
        "--admin-token-file",
        &token,
    ]);
    let ada = session_of(full.addr, "ada").await;
    let ada2 = session_of(full.addr, "ada").await;
    let bob = session_of(full.addr, "bob").await;
    let unknown = "A".repeat(43);
    let mut c = Calls {
        admin: full.admin.unwrap(),
        seen: Vec::new(),
    };
    let (get, patch, delete) = (Method::GET, Method::PATCH, Method::DELETE);
    for (route, token) in [
        ("/healthz", false),
        ("/readyz", false),
        ("/.well-known/jwks.json", false),
        ("/", false),
        ("/admin.js", false),
        ("/admin.css", false),
        ("/openapi.yaml", false),
        ("/metrics", true),
        ("/metrics", false),
    ] {
        c.call(route, get.clone(), route, token, "").await;
    }
    let served = &c
        .seen
        .iter()
        .find(|s| s.path == "/openapi.yaml")
        .unwrap()
        .resp
        .body;
    assert_eq!(
        served,
        &std::fs::read(DOC).unwrap(),
        "/openapi.yaml is not {DOC}"
    );
    let page = c
        .call("/sessions", get.clone(), "/sessions?limit=2", true, "")
        .await;
    assert_eq!(page["sessions"].as_array().unwrap().len(), 2, "{page}");
    assert!(page["next_cursor"].is_string(), "{page}");
    for bad in ["/sessions?limit=0", "/sessions?colour=red"] {
        c.call("/sessions", get.clone(), bad, true, "").await;
    }
    c.call("/sessions", get.clone(), "/sessions", false, "")
        .await;

    let one = "/sessions/{handle}";
    let shown = c
        .call(one, get.clone(), &format!("/sessions/{ada}"), true, "")
        .await;
    assert_eq!(shown["data"], json!({"user": "ada"}));
    let patched = c
        .call(
            one,
            patch.clone(),
            &format!("/sessions/{ada}"),
            true,
            r#"{"n":1}"#,
        )
        .await;
    assert_eq!(patched["data"], json!({"user": "ada", "n": 1}));
    let big = format!(r#"{{"big":"{}"}}"#, "x".repeat(2000));
    c.call(one, patch.clone(), &format!("/sessions/{ada}"), true, &big)
        .await;
    for body in ["not json", "[1]"] {
        c.call(one, patch.clone(), &format!("/sessions/{ada}"), true, body)
            .await;
    }
    for method in [get.clone(), patch.clone(), delete.clone()] {
        for (path, token) in [
            (format!("/sessions/{unknown}"), true),
            ("/sessions/not-a-handle".to_owned(), true),
            // An id (32 characters) is refused without being echoed.
            (format!("/sessions/{}", "b".repeat(32)), true),
            (format!("/sessions/{bob}"), false),
        ] {
            c.call(one, method.clone(), &path, token, "{}").await;
        }
    }
    c.call(one, delete.clone(), &format!("/sessions/{bob}"), true, "")
        .await;

    let user = "/users/{user}/sessions";
    let listed = c
        .call(user, get.clone(), "/users/ada/sessions", true, "")
        .await;
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 2, "{listed}");
    c.call(user, get.clone(), "/users/ada/sessions", false, "")
        .await;
    c.call(
        user,
        delete.clone(),
        "/users/ada/sessions?except=x",
        true,
        "",
    )
    .await;
    c.call(user, delete.clone(), "/users/ada/sessions", false, "")
        .await;
    let revoked = c
        .call(
            user,
            delete.clone(),
            &format!("/users/ada/sessions?except={ada2}"),
            true,
            "",
        )
        .await;
    assert_eq!(revoked, json!({"revoked": 1}));
    // The fallbacks: a path not routed, a method a routed path does not take.
    c.call("(fallback)", get.clone(), "/nowhere", true, "")
        .await;
    c.call("(fallback)", Method::PUT, "/sessions", true, "")
        .await;
    let mut seen = c.seen;

    // Without a user index or assertion keys: those routes are 404s.
    let bare = ProxyProcess::spawn(&[
        "--store",
        "memory",
        "--upstream",
        &upstream,
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let mut c = Calls {
        admin: bare.admin.unwrap(),
        seen: Vec::new(),
    };
    c.call(
        "/.well-known/jwks.json",
        get.clone(),
        "/.well-known/jwks.json",
        false,
        "",
    )
    .await;
    c.call(user, get.clone(), "/users/ada/sessions", false, "")
        .await;
    c.call(user, delete.clone(), "/users/ada/sessions", false, "")
        .await;
    seen.append(&mut c.seen);
    drop((full, bare));

    // An answer that cannot be encoded is no state a test can put the proxy in.
    let mut unexercised = vec![("/metrics", "get", "500")];
    // The 503s need a store that fails: Redis, stopped under the proxy.
    if cfg!(feature = "redis") {
        #[cfg(feature = "redis")]
        seen.append(&mut store_down(&upstream).await);
    } else {
        unexercised.extend(
            [
                ("/readyz", "get"),
                ("/sessions", "get"),
                (one, "get"),
                (one, "patch"),
                (one, "delete"),
                (user, "get"),
                (user, "delete"),
            ]
            .map(|(p, m)| (p, m, "503")),
        );
    }
    check(&seen, &unexercised);
}

/// The 503s: every route that reads the store, on a Redis stopped under the proxy.
#[cfg(feature = "redis")]
async fn store_down(upstream: &str) -> Vec<Seen> {
    let mut redis = crate::support::redis::RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"500ms\"\n\
             [session]\nuser_key = \"user\"\n",
            redis.url()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let proxy = ProxyProcess::spawn(&[
        "--config",
        &config,
        "--upstream",
        upstream,
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let handle = session_of(proxy.addr, "ada").await;
    redis.stop();
    let mut c = Calls {
        admin: proxy.admin.unwrap(),
        seen: Vec::new(),
    };
    let one = format!("/sessions/{handle}");
    for (route, method, path) in [
        ("/readyz", Method::GET, "/readyz"),
        ("/sessions", Method::GET, "/sessions"),
        ("/sessions/{handle}", Method::GET, one.as_str()),
        ("/sessions/{handle}", Method::PATCH, one.as_str()),
        ("/sessions/{handle}", Method::DELETE, one.as_str()),
        ("/users/{user}/sessions", Method::GET, "/users/ada/sessions"),
        (
            "/users/{user}/sessions",
            Method::DELETE,
            "/users/ada/sessions",
        ),
    ] {
        c.call(route, method, path, false, "{}").await;
    }
    drop(proxy);
    c.seen
}
