//! `prepare` end to end against the machine's real PostgreSQL (without the
//! proxy: upstream logins are checked directly).

use super::*;
use std::os::unix::fs::MetadataExt;

/// A base with five consecutive free ports.
fn free_port_base() -> u16 {
    for _ in 0..50 {
        let base = free_port();
        if base > 1024 && base < 65000 && check_ports_free(base, base + 4).is_ok() {
            return base;
        }
    }
    panic!("no five consecutive free ports");
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_then_restart_keeps_everything() {
    let tmp = tempfile::Builder::new()
        .prefix("tw-qs-")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = tmp.path().join("qs");
    let args = QuickstartArgs {
        dir: dir.clone(),
        port_base: free_port_base(),
    };
    let p = prepare(&args).await.unwrap();
    assert_eq!(p.envs, ["dev", "test", "stage", "prod"]);
    assert!(p.cluster.is_running());
    assert!(
        !p.json_path.exists(),
        "quickstart.json only after write_ready"
    );
    write_ready(&p).unwrap();
    let on_disk: serde_json::Value =
        serde_json::from_slice(&fs::read(&p.json_path).unwrap()).unwrap();
    assert_eq!(on_disk, p.json);
    assert_eq!(mode(&p.json_path), 0o600);
    assert_eq!(mode(&p.config_path), 0o600);
    assert_eq!(mode(&p.dir.join("secrets")), 0o700);
    for f in fs::read_dir(p.dir.join("secrets")).unwrap() {
        let f = f.unwrap().path();
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    assert_eq!(
        p.json["environments"]["stage"]["port"],
        serde_json::json!(args.port_base + 2)
    );
    assert_eq!(
        p.json["admin_url"],
        format!("http://127.0.0.1:{}", args.port_base + 4)
    );
    assert_eq!(p.json["urls"].as_object().unwrap().len(), 19);

    // The generated config loads and validates with the real loader.
    let cfg = crate::config::load(&p.config_path).unwrap();
    assert_eq!(cfg.environments.len(), 4);
    assert_eq!(
        cfg.environments["prod"].upstream.users["rw"].user,
        "tw_prod_rw"
    );
    assert_eq!(
        cfg.environments["dev"].upstream.users["rw"].user,
        "tw_dev_owner"
    );
    assert_eq!(cfg.environments["prod"].upstream.port, p.cluster.port);
    assert!(cfg.environments["prod"].tls_required());
    assert!(!cfg.environments["dev"].tls_required());
    assert!(cfg.roles["dev_user"].developer && cfg.roles["ci_migrator"].migrations);
    assert_eq!(cfg.identities.len(), 6);
    let text = fs::read_to_string(&p.config_path).unwrap();
    let passwords = p.json["identities"]["auditor"]["passwords"]
        .as_object()
        .unwrap()
        .clone();
    for pw in passwords.values() {
        assert!(
            !text.contains(pw.as_str().unwrap()),
            "identity password in config"
        );
    }
    // Identity verifiers match the passwords in quickstart.json.
    for (role, ident) in &cfg.identities {
        let pws = &p.json["identities"][role]["passwords"];
        for (env, v) in &ident.verifiers {
            let v: Verifier = v.parse().unwrap();
            assert!(
                v.verify_password(pws[env].as_str().unwrap()),
                "{role}@{env}"
            );
        }
    }
    // Every upstream login in the config works against its own database.
    for (name, env) in &cfg.environments {
        for (key, u) in &env.upstream.users {
            let pw = crate::config::resolve_secret(u, &p.dir).unwrap().unwrap();
            let dsn = format!(
                "host=127.0.0.1 port={} user={} password={pw} dbname={}",
                env.upstream.port, u.user, env.upstream.database
            );
            let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("{name}.{key}: {e}"));
            tokio::spawn(conn);
            let marker: String = client
                .query_one("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = current_database()", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(marker, format!("tierwarden:env={name}"));
        }
    }
    let pg_port = p.cluster.port;
    let data_dir = p.cluster.data_dir.clone();
    let first_json = p.json.clone();
    clear_ready(&p).unwrap();
    assert!(!p.json_path.exists());
    drop(p); // stops the cluster
    assert!(postgres_pids_for(&data_dir).is_empty());

    // Restart: same passwords, same cluster port, ready again.
    let p2 = prepare(&args).await.unwrap();
    assert_eq!(p2.cluster.port, pg_port);
    assert_eq!(p2.json, first_json);
    write_ready(&p2).unwrap();
    assert!(p2.json_path.exists());
    let uid = fs::metadata(&p2.cluster.data_dir).unwrap().uid();
    if nix::unistd::Uid::effective().is_root() {
        assert_ne!(uid, 0, "the cluster must not be owned by root");
    }
}

#[tokio::test]
async fn busy_proxy_port_is_refused_before_anything_starts() {
    let tmp = tempfile::Builder::new()
        .prefix("tw-qs-")
        .tempdir_in("/tmp")
        .unwrap();
    let base = free_port_base();
    let _taken = TcpListener::bind(("127.0.0.1", base + 3)).unwrap();
    let err = prepare(&QuickstartArgs {
        dir: tmp.path().join("qs"),
        port_base: base,
    })
    .await
    .unwrap_err();
    assert!(matches!(err, QuickstartError::PortInUse { port, .. } if port == base + 3));
    assert_eq!(err.exit_code(), 2);
    assert!(!tmp.path().join("qs/pgdata").exists());
}

#[tokio::test]
async fn port_base_without_room_is_refused() {
    let err = prepare(&QuickstartArgs {
        dir: PathBuf::from("/nonexistent-unused"),
        port_base: 65533,
    })
    .await
    .unwrap_err();
    assert!(matches!(err, QuickstartError::InvalidPortBase(65533)));
}
