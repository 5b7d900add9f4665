//! The files in `deploy/` are checked as their tools check them: the systemd units (the
//! service, the socket, the handoff's template) with `systemd-analyze verify`, the nginx
//! snippet with `nginx -t`, the Kubernetes manifests rendered as `kubectl kustomize` does and
//! checked by kubernetes-validate (and against each other). No file ships unchecked. The image itself is
//! built and run in `container.rs`.

use std::process::Command;

use serde_json::Value;

use crate::support::ProxyProcess;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(cmd: &mut Command, what: &str) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{what} cannot be run ({e}): install it or run .ci/run"))
}

/// [`run`] that must succeed.
fn run_ok(cmd: &mut Command, what: &str) -> std::process::Output {
    let out = run(cmd, what);
    assert!(out.status.success(), "{what}: {}", output_text(&out));
    out
}

/// What a command printed, stdout then stderr.
fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The built session-proxy binary with `args`.
fn session_proxy(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_session-proxy"))
        .args(args)
        .output()
        .unwrap()
}

/// Copies the units `files` of deploy/ into a directory, pointed at the binary just built
/// (what `cargo install` would put at /usr/local/bin), and runs `systemd-analyze verify` on
/// `units` there: it must pass without a word.
fn verify_units(files: &[&str], units: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let installed = "ExecStart=/usr/local/bin/session-proxy ";
    for file in files {
        let unit = std::fs::read_to_string(format!("{ROOT}/deploy/{file}")).unwrap();
        let here = if file.ends_with(".service") {
            assert!(unit.contains(installed), "{file}");
            unit.replace(
                installed,
                &format!("ExecStart={} ", env!("CARGO_BIN_EXE_session-proxy")),
            )
        } else {
            unit
        };
        std::fs::write(dir.path().join(file), here).unwrap();
    }
    let out = run(
        Command::new("systemd-analyze")
            .arg("verify")
            .args(units.iter().map(|u| dir.path().join(u))),
        "systemd-analyze (Debian's systemd package)",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // An unknown or misspelt key is only a warning: any output at all fails the check.
    assert!(stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn the_systemd_unit_verifies_without_a_warning() {
    verify_units(&["session-proxy.service"], &["session-proxy.service"]);
}

/// Socket activation: the socket unit with the service it starts.
#[test]
fn the_socket_unit_verifies_with_its_service() {
    verify_units(
        &["session-proxy.socket", "session-proxy.service"],
        &["session-proxy.socket", "session-proxy.service"],
    );
}

/// The handoff recipe: the template unit, verified as the instances it is started as.
#[test]
fn the_handoff_template_unit_verifies_as_its_instances() {
    let unit = std::fs::read_to_string(format!("{ROOT}/deploy/session-proxy@.service")).unwrap();
    assert!(unit.contains("--upgrade-socket /run/session-proxy/upgrade.sock"));
    assert!(unit.contains("RuntimeDirectoryPreserve=yes"));
    verify_units(
        &["session-proxy@.service"],
        &["session-proxy@a.service", "session-proxy@b.service"],
    );
}

#[test]
fn the_nginx_snippet_passes_nginx_t() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let out = run(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=app.example.com", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        "openssl",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snippet = std::fs::read_to_string(format!("{ROOT}/deploy/nginx-tls-front.conf"))
        .unwrap()
        .replace(
            "/etc/ssl/certs/app.example.com.pem",
            &cert.display().to_string(),
        )
        .replace(
            "/etc/ssl/private/app.example.com.key",
            &key.display().to_string(),
        );
    let include = dir.path().join("session-proxy.conf");
    std::fs::write(&include, snippet).unwrap();
    let main = dir.path().join("nginx.conf");
    std::fs::write(
        &main,
        format!(
            "pid {pid};\nerror_log stderr;\nevents {{}}\nhttp {{\n  access_log off;\n  include {inc};\n}}\n",
            pid = dir.path().join("nginx.pid").display(),
            inc = include.display()
        ),
    )
    .unwrap();
    let out = run(
        Command::new("nginx")
            .arg("-t")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&main),
        "nginx (Debian's nginx package)",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("test is successful"), "{stderr}");
    assert!(!stderr.contains("[warn]"), "{stderr}");
}

/// The `health` subcommand (the image's HEALTHCHECK): exit 0 when the admin listener answers
/// 200, from the URL given or from `admin.listen` in the config; 1 for any other answer, for
/// none, and when there is nothing to ask.
#[test]
fn the_health_subcommand_asks_the_admin_listener() {
    let proxy = ProxyProcess::spawn(&["--store", "memory", "--admin-listen", "127.0.0.1:0"]);
    let admin = proxy.admin.unwrap();
    for path in ["/healthz", "/readyz"] {
        let out = session_proxy(&["health", &format!("http://{admin}{path}")]);
        assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "healthy\n");
    }
    // No URL: /healthz on the configured admin listener.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, format!("[admin]\nlisten = \"{admin}\"\n")).unwrap();
    let out = session_proxy(&["--config", config.to_str().unwrap(), "health"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));

    let out = session_proxy(&["health", &format!("http://{admin}/nowhere")]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("answered \"HTTP/1.1 404 Not Found\", not 200"),
        "{}",
        output_text(&out)
    );
    let out = session_proxy(&["health"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("admin.listen is not set"),
        "{}",
        output_text(&out)
    );
    drop(proxy);
    // Nothing listens there any more.
    let out = session_proxy(&["health", &format!("http://{admin}/healthz")]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
}

/// YAML documents as JSON values, by python3's PyYAML (kubernetes-validate's own dependency,
/// so .ci/run installs it with that).
fn yaml_documents(path: &std::path::Path) -> Vec<Value> {
    let out = run_ok(
        Command::new("python3")
            .args([
                "-c",
                "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
            ])
            .arg(path),
        "python3 with PyYAML",
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The one element of `list` (a JSON array) whose `key` is `value`.
fn named<'a>(list: &'a Value, key: &str, value: &str) -> &'a Value {
    list.as_array()
        .and_then(|l| l.iter().find(|v| v[key] == value))
        .unwrap_or_else(|| panic!("no {key} = {value:?} in {list}"))
}

/// The pod's volume of `kind` (`secret`, `configMap`).
fn volume<'a>(pod: &'a Value, kind: &str) -> &'a Value {
    pod["volumes"]
        .as_array()
        .and_then(|l| l.iter().find(|v| v[kind].is_object()))
        .unwrap_or_else(|| panic!("no {kind} volume in {pod}"))
}

/// deploy/kubernetes: rendered as `kubectl kustomize` renders it (tests/it/support/kustomize.py); kubernetes-validate checks every object
/// (and the example Secret) against the Kubernetes API's schemas, strictly (an unknown field
/// fails); and the objects agree with each other, with the image and with the proxy: the
/// ConfigMap's proxy.toml is a valid configuration, the probes ask `/healthz` and `/readyz` on
/// its admin listener, the grace period outlasts the preStop sleep plus `shutdown_timeout`, the
/// key files it names are the Secret's items, the ports are its listeners'.
#[test]
fn the_kubernetes_manifests_render_validate_and_agree() {
    let dir = tempfile::tempdir().unwrap();
    let k8s = std::path::Path::new(ROOT).join("deploy/kubernetes");
    // Rendered as `kubectl kustomize` does for the fields the kustomization uses (the script
    // refuses any other): Debian 12's kubectl is too old for it, and no registry here has one.
    let out = run_ok(
        Command::new("python3")
            .arg(format!("{ROOT}/tests/it/support/kustomize.py"))
            .arg(&k8s),
        "python3 with PyYAML",
    );
    let rendered = dir.path().join("rendered.yaml");
    std::fs::write(&rendered, &out.stdout).unwrap();
    let example_secret = k8s.join("secret.example.yaml");
    run_ok(
        Command::new("kubernetes-validate")
            .args(["--strict", "--quiet"])
            .arg(&rendered)
            .arg(&example_secret),
        "kubernetes-validate (PyPI)",
    );

    let objects = Value::Array(yaml_documents(&rendered));
    let deployment = named(&objects, "kind", "Deployment");
    let config_map = named(&objects, "kind", "ConfigMap");
    let service = named(&objects, "kind", "Service");
    let budget = named(&objects, "kind", "PodDisruptionBudget");
    let secret = &yaml_documents(&example_secret)[0];
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];

    // The ConfigMap's proxy.toml, validated as the proxy does at start, with the key files it
    // names written here (the example Secret's values are too short on purpose).
    let text = config_map["data"]["proxy.toml"].as_str().unwrap();
    let toml: toml::Value = toml::from_str(text).unwrap();
    let keys_volume = volume(pod, "secret");
    let keys_mount = named(
        &container["volumeMounts"],
        "name",
        keys_volume["name"].as_str().unwrap(),
    )["mountPath"]
        .as_str()
        .unwrap();
    let local = dir.path().join("keys");
    std::fs::create_dir(&local).unwrap();
    let mut mounted = std::collections::BTreeSet::new();
    assert_eq!(
        keys_volume["secret"]["secretName"],
        secret["metadata"]["name"]
    );
    for item in keys_volume["secret"]["items"].as_array().unwrap() {
        let key = item["key"].as_str().unwrap();
        assert!(
            secret["stringData"].get(key).is_some(),
            "the Secret has no key {key:?}"
        );
        let path = item["path"].as_str().unwrap();
        mounted.insert(format!("{keys_mount}/{path}"));
        std::fs::write(local.join(path), "k".repeat(48)).unwrap();
    }
    let files: std::collections::BTreeSet<String> = [
        &toml["cookie"]["secret_file"],
        &toml["store"]["encryption_key_file"],
        &toml["admin"]["token_file"],
    ]
    .iter()
    .map(|v| v.as_str().unwrap().to_owned())
    .collect();
    assert_eq!(
        files, mounted,
        "the key files proxy.toml names are the Secret's items"
    );
    let here = dir.path().join("proxy.toml");
    std::fs::write(
        &here,
        text.replace(keys_mount, &local.display().to_string()),
    )
    .unwrap();
    session_proxy::config::RawConfig::from_file(&here)
        .unwrap()
        .validate("proxy.toml")
        .unwrap_or_else(|e| panic!("the ConfigMap's proxy.toml: {e}"));

    // Mounted where the image's ENTRYPOINT looks, under the name kustomize gave it.
    let config_volume = volume(pod, "configMap");
    assert_eq!(
        config_volume["configMap"]["name"],
        config_map["metadata"]["name"]
    );
    let config_mount = named(
        &container["volumeMounts"],
        "name",
        config_volume["name"].as_str().unwrap(),
    );
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap();
    let config_path = format!("{}/proxy.toml", config_mount["mountPath"].as_str().unwrap());
    assert!(
        dockerfile.contains(&format!(
            "ENTRYPOINT [\"/session-proxy\", \"--config\", \"{config_path}\"]"
        )),
        "the image's ENTRYPOINT names {config_path}"
    );

    // Ports: the container's are the listeners'; the admin listener is reachable by the
    // kubelet (not loopback) and the Service targets only the public one.
    let port = |name: &str| {
        named(&container["ports"], "name", name)["containerPort"]
            .as_u64()
            .unwrap()
    };
    let listen: std::net::SocketAddr = toml["listen"].as_str().unwrap().parse().unwrap();
    let admin: std::net::SocketAddr = toml["admin"]["listen"].as_str().unwrap().parse().unwrap();
    assert_eq!(port("http"), u64::from(listen.port()));
    assert_eq!(port("admin"), u64::from(admin.port()));
    assert!(
        !admin.ip().is_loopback(),
        "the kubelet probes the pod's address"
    );
    let service_ports = service["spec"]["ports"].as_array().unwrap();
    assert_eq!(service_ports.len(), 1, "{service}");
    assert_eq!(service_ports[0]["targetPort"], "http");

    // The probes: /healthz and /readyz on the admin port; `health` (the HEALTHCHECK's check)
    // gets a 200 for each from the real binary's admin listener.
    let proxy = ProxyProcess::spawn(&["--store", "memory", "--admin-listen", "127.0.0.1:0"]);
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], "admin", "{probe}");
        let out = session_proxy(&["health", &format!("http://{}{path}", proxy.admin.unwrap())]);
        assert!(out.status.success(), "{}", output_text(&out));
    }
    drop(proxy);

    // The grace period outlasts what SIGTERM starts: the preStop sleep, then the drain.
    let shutdown = humantime::parse_duration(toml["shutdown_timeout"].as_str().unwrap()).unwrap();
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > pre_stop + shutdown.as_secs(),
        "terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + shutdown_timeout {shutdown:?}"
    );

    // The Deployment, the Service and the budget select the same pods; the budget leaves a
    // voluntary disruption room to happen.
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for selector in [
        &deployment["spec"]["selector"]["matchLabels"],
        &service["spec"]["selector"],
        &budget["spec"]["selector"]["matchLabels"],
    ] {
        for (k, v) in selector.as_object().unwrap() {
            assert_eq!(
                &labels[k], v,
                "selector {selector} against the pod's labels {labels}"
            );
        }
    }
    let replicas = deployment["spec"]["replicas"].as_u64().unwrap();
    let min_available = budget["spec"]["minAvailable"].as_u64().unwrap();
    assert!(min_available < replicas, "{min_available} of {replicas}");

    // The image's user, as the pod runs it, non-root.
    let passwd = std::fs::read_to_string(format!("{ROOT}/deploy/container/passwd")).unwrap();
    let uid = passwd
        .lines()
        .find_map(|l| l.strip_prefix("session-proxy:x:"))
        .and_then(|rest| rest.split(':').next())
        .unwrap();
    assert_eq!(pod["securityContext"]["runAsUser"].to_string(), uid);
    assert!(dockerfile.contains(&format!("\nUSER {uid}:{uid}\n")));
}

/// compose.yaml: valid against the compose specification's schema (check-jsonschema's copy),
/// and in step with the Dockerfile and the image's configuration: the proxy is the image's last
/// stage, `app` the `counter` stage on the port and under the name the configuration's
/// `upstream` names, the published port the configuration's `listen`, and the stop grace period
/// longer than the default `shutdown_timeout`.
#[test]
fn compose_yaml_validates_and_matches_the_image() {
    let compose = std::path::Path::new(ROOT).join("compose.yaml");
    run_ok(
        Command::new("check-jsonschema")
            .args(["--builtin-schema", "vendor.compose-spec"])
            .arg(&compose),
        "check-jsonschema (PyPI)",
    );
    let compose = &yaml_documents(&compose)[0];
    let services = &compose["services"];
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap();
    let image_config: toml::Value = toml::from_str(
        &std::fs::read_to_string(format!("{ROOT}/deploy/container/proxy.toml")).unwrap(),
    )
    .unwrap();

    assert_eq!(
        services["proxy"]["build"], ".",
        "the Dockerfile's last stage"
    );
    let target = services["app"]["build"]["target"].as_str().unwrap();
    assert!(dockerfile.contains(&format!("\nFROM scratch AS {target}\n")));
    let upstream: http::Uri = image_config["upstream"].as_str().unwrap().parse().unwrap();
    assert!(
        services.get(upstream.host().unwrap()).is_some(),
        "the image's upstream {upstream} names a service"
    );
    assert!(dockerfile.contains(&format!(
        "ENTRYPOINT [\"/counter\", \"--app-only\", \"0.0.0.0:{}\"]",
        upstream.port_u16().unwrap()
    )));
    let listen: std::net::SocketAddr = image_config["listen"].as_str().unwrap().parse().unwrap();
    let published = services["proxy"]["ports"][0].as_str().unwrap();
    assert!(
        published.ends_with(&format!(":{}", listen.port())),
        "{published}"
    );
    let grace = humantime::parse_duration(services["proxy"]["stop_grace_period"].as_str().unwrap())
        .unwrap();
    let default = session_proxy::config::RawConfig::default()
        .validate("(defaults)")
        .unwrap()
        .shutdown_timeout;
    assert!(grace > default, "{grace:?} <= shutdown_timeout {default:?}");
}
