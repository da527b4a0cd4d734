//! The deployment examples in config/deploy/ stay consistent with the code:
//! the Kubernetes sidecar (its embedded tierwarden.toml passes
//! `tierwarden check --offline`; probes, ports, secrets and the Prometheus
//! annotations match that configuration) and the docker-compose file (every
//! bind-mounted file exists, each proxy's APP_ENV, secrets, upstream service
//! and ports match compose/tierwarden.toml, which passes `check --offline`;
//! `promtool check config` accepts the compose Prometheus configuration with
//! the real alert rules). YAML is read with python3 + PyYAML (skipped, with a
//! note, where PyYAML is not installed).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tierwarden::config::{parse_str, Config};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/deploy")
}

/// Every YAML document of `path` as JSON; `None` when PyYAML is missing.
fn yaml_docs(path: &Path) -> Option<Vec<Value>> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml\n\
             json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
        ])
        .arg(path)
        .output();
    let out = match out {
        Ok(o) => o,
        Err(_) => {
            eprintln!("python3 not installed: {} not parsed", path.display());
            return None;
        }
    };
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No module named 'yaml'") {
        eprintln!("PyYAML not installed: {} not parsed", path.display());
        return None;
    }
    assert!(out.status.success(), "{}: {err}", path.display());
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON from python");
    Some(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// `tierwarden check --offline` must accept `path`; returns the parsed config.
fn check_offline(path: &Path) -> Config {
    let out = Command::new(env!("CARGO_BIN_EXE_tierwarden"))
        .args(["check", "--offline", "--config"])
        .arg(path)
        .output()
        .expect("tierwarden check runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(path).expect("config text");
    parse_str(path, &text).expect("config parses")
}

fn port_of(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap_or("")
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn kubernetes_sidecar_matches_its_configuration() {
    let Some(docs) = yaml_docs(&deploy_dir().join("kubernetes/sidecar.yaml")) else {
        return;
    };
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("ConfigMap");
    let dep = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("Deployment");
    let dir = tempfile::tempdir().expect("tmp");
    let toml_path = dir.path().join("tierwarden.toml");
    let toml_text = cm["data"]["tierwarden.toml"]
        .as_str()
        .expect("tierwarden.toml key");
    std::fs::write(&toml_path, toml_text).expect("write");
    let cfg = check_offline(&toml_path);
    assert_eq!(
        cfg.environments.len(),
        1,
        "a sidecar guards one environment"
    );
    let (env_name, env) = cfg.environments.iter().next().expect("one env");
    assert!(
        env.listen.starts_with("127.0.0.1:"),
        "client listener must stay inside the pod"
    );
    let admin_port = port_of(cfg.admin.listen.as_deref().expect("admin listener")).to_string();

    let pod = &dep["spec"]["template"];
    let spec = &pod["spec"];
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(
        ann["prometheus.io/port"].as_str(),
        Some(admin_port.as_str())
    );
    assert_eq!(
        pod["metadata"]["labels"]["tierwarden.io/tier"],
        env.tier.as_str()
    );

    let all: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec[*k].as_array())
        .flatten()
        .collect();
    let tw = all
        .iter()
        .find(|c| c["name"] == "tierwarden")
        .expect("tierwarden container");
    let args = strs(&tw["args"]);
    let env_arg = args
        .iter()
        .position(|a| a == "--env")
        .map(|i| args[i + 1].clone());
    assert_eq!(env_arg.as_deref(), Some(env_name.as_str()));
    let metrics_port = tw["ports"][0]["containerPort"]
        .as_u64()
        .map(|p| p.to_string());
    assert_eq!(metrics_port.as_deref(), Some(admin_port.as_str()));
    assert_eq!(tw["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(tw["livenessProbe"]["httpGet"]["path"], "/healthz");

    // Secrets: every password_env comes from a secretKeyRef, every
    // password_file lives under a mounted secret volume.
    let envs: Vec<&Value> = tw["env"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let mounts = tw["volumeMounts"].as_array().expect("mounts");
    let volumes = spec["volumes"].as_array().expect("volumes");
    for (level, u) in &env.upstream.users {
        if let Some(var) = &u.password_env {
            let e = envs
                .iter()
                .find(|e| e["name"] == var.as_str())
                .unwrap_or_else(|| panic!("{level}: {var} not set in the pod"));
            assert!(
                e["valueFrom"]["secretKeyRef"].is_object(),
                "{var} not from a Secret"
            );
        }
        if let Some(file) = &u.password_file {
            let m = mounts
                .iter()
                .find(|m| file.starts_with(m["mountPath"].as_str().unwrap_or("-")))
                .unwrap_or_else(|| panic!("{level}: {} not mounted", file.display()));
            let vol = volumes
                .iter()
                .find(|v| v["name"] == m["name"])
                .expect("volume");
            assert!(
                vol["secret"].is_object(),
                "{} not from a Secret",
                file.display()
            );
        }
    }
    let cm_name = cm["metadata"]["name"].as_str().expect("ConfigMap name");
    assert!(volumes.iter().any(|v| v["configMap"]["name"] == cm_name));
    // The app reaches the proxy on loopback, on the environment's port.
    let app = all
        .iter()
        .find(|c| c["name"] != "tierwarden")
        .expect("app container");
    let app_env = |k: &str| {
        app["env"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["name"] == k))
            .and_then(|e| e["value"].as_str())
            .map(str::to_string)
    };
    assert_eq!(app_env("PGHOST").as_deref(), Some("127.0.0.1"));
    assert_eq!(app_env("PGPORT").as_deref(), Some(port_of(&env.listen)));
}

#[test]
fn compose_file_matches_its_configuration() {
    let dir = deploy_dir();
    let Some(docs) = yaml_docs(&dir.join("docker-compose.yml")) else {
        return;
    };
    let compose = &docs[0];
    let services = compose["services"].as_object().expect("services");
    let cfg = check_offline(&dir.join("compose/tierwarden.toml"));
    let admin_port = port_of(cfg.admin.listen.as_deref().expect("admin listener")).to_string();

    // Every bind-mounted file or directory exists.
    for (name, svc) in services {
        for v in strs(&svc["volumes"]) {
            let src = v.split(':').next().unwrap_or("");
            if src.starts_with('.') || src.starts_with('/') {
                assert!(
                    dir.join(src).exists(),
                    "service {name} mounts missing {src}"
                );
            }
        }
    }
    let top_secrets = compose["secrets"].as_object().expect("top-level secrets");
    let mut served = BTreeSet::new();
    for (name, svc) in services.iter().filter(|(n, _)| n.starts_with("proxy-")) {
        let env_name = svc["environment"]["APP_ENV"].as_str().expect("APP_ENV");
        let env = cfg
            .environments
            .get(env_name)
            .unwrap_or_else(|| panic!("{name}: APP_ENV {env_name} is not configured"));
        served.insert(env_name.to_string());
        let svc_secrets = strs(&svc["secrets"]);
        for (level, u) in &env.upstream.users {
            if let Some(var) = &u.password_env {
                assert!(
                    svc["environment"][var.as_str()].is_string(),
                    "{name}: {level} needs {var}"
                );
            }
            if let Some(file) = &u.password_file {
                let secret = file
                    .strip_prefix("/run/secrets")
                    .ok()
                    .and_then(|p| p.to_str())
                    .unwrap_or_else(|| panic!("{name}: {} is not a Docker secret", file.display()));
                assert!(
                    svc_secrets.iter().any(|s| s == secret),
                    "{name}: secret {secret}"
                );
                assert!(
                    top_secrets.contains_key(secret),
                    "secret {secret} not declared"
                );
            }
        }
        let port = port_of(&env.listen);
        assert!(
            strs(&svc["ports"])
                .iter()
                .any(|p| p.ends_with(&format!(":{port}"))),
            "{name}: listener port {port} not published"
        );
        // The upstream is a compose service whose database and marker match.
        let pg = &services
            .get(&env.upstream.host)
            .unwrap_or_else(|| panic!("{name}: upstream host {} is no service", env.upstream.host));
        assert_eq!(
            pg["environment"]["POSTGRES_DB"],
            env.upstream.database.as_str()
        );
        assert_eq!(pg["environment"]["TW_ENV"], env_name);
    }
    let configured: BTreeSet<String> = cfg.environments.keys().cloned().collect();
    assert_eq!(served, configured, "one proxy per environment");

    // Prometheus scrapes every proxy's admin listener, with the tier label.
    let prom_path = dir.join("compose/prometheus.yml");
    let prom = &yaml_docs(&prom_path).expect("parsed once already")[0];
    let jobs = prom["scrape_configs"].as_array().expect("scrape_configs");
    for env_name in &served {
        let target = format!("proxy-{env_name}:{admin_port}");
        let job = jobs
            .iter()
            .flat_map(|j| j["static_configs"].as_array().cloned().unwrap_or_default())
            .find(|s| strs(&s["targets"]).contains(&target))
            .unwrap_or_else(|| panic!("no scrape target {target}"));
        assert_eq!(job["labels"]["env"], env_name.as_str());
        assert_eq!(
            job["labels"]["tier"],
            cfg.environments[env_name].tier.as_str()
        );
    }
    promtool_check(&prom_path);
}

/// `promtool check config` on a copy laid out as in the Prometheus container
/// (prometheus.yml next to alerts/).
fn promtool_check(prom: &Path) {
    if Command::new("promtool").arg("--version").output().is_err() {
        eprintln!("promtool not installed: Prometheus configuration not checked");
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::copy(prom, tmp.path().join("prometheus.yml")).expect("copy");
    let alerts = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/alerts");
    std::fs::create_dir(tmp.path().join("alerts")).expect("mkdir");
    for e in std::fs::read_dir(alerts).expect("alerts dir") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "yml") {
            std::fs::copy(
                &p,
                tmp.path().join("alerts").join(p.file_name().expect("name")),
            )
            .expect("copy rule file");
        }
    }
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(tmp.path().join("prometheus.yml"))
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
