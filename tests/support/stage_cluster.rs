//! A second throwaway PostgreSQL cluster provisioned exactly like the
//! world's `stage` environment (same upstream users and passwords, the
//! sample schema, the identity marker), so a test can point the proxy's
//! `stage` at it and stop or restart the whole cluster without touching
//! the cluster every other test of the binary shares. Also: waiting for the
//! proxy's `tierwarden_upstream_up{env="stage"}` and `/readyz` to agree.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use tierwarden::quickstart::layout::{environments, upstream_user, Paths, UpstreamKind};
use tierwarden::quickstart::provision::{provision, EnvPasswords};
use tierwarden::quickstart::{free_port, PgCluster};

use crate::support::{world, Proxy};

/// A throwaway cluster provisioned like the world's `stage` (same users and
/// passwords), so the proxy's stage environment can point at it.
pub struct StageCluster {
    cluster: Option<PgCluster>,
    _dir: tempfile::TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl StageCluster {
    /// initdb, start and provision like `stage`.
    pub async fn start() -> StageCluster {
        let dir = tempfile::Builder::new()
            .prefix("tierwarden-faults-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let path = dir.path().join("pg");
        let port = free_port();
        let cluster = tokio::task::spawn_blocking(move || {
            let mut c = PgCluster::init_or_reuse(&path, port).expect("initdb");
            c.start().expect("second cluster starts");
            c
        })
        .await
        .expect("blocking task");
        let paths = Paths::new(&world().dir);
        let pw = |k| {
            let file: PathBuf = paths.upstream_password(&upstream_user("stage", k));
            std::fs::read_to_string(file)
                .expect("stage password file")
                .trim()
                .to_string()
        };
        let (owner, rw, ro, monitor) = (
            pw(UpstreamKind::Owner),
            pw(UpstreamKind::Rw),
            pw(UpstreamKind::Ro),
            pw(UpstreamKind::Monitor),
        );
        let plan = environments(20_000)
            .into_iter()
            .find(|e| e.name == "stage")
            .expect("stage plan");
        let passwords = EnvPasswords {
            owner: &owner,
            rw: &rw,
            ro: &ro,
            monitor: &monitor,
        };
        provision(&cluster, &[(plan, passwords)])
            .await
            .expect("provisioned like stage");
        StageCluster {
            cluster: Some(cluster),
            _dir: dir,
            port,
        }
    }

    /// `pg_ctl stop -m fast`.
    pub async fn stop(&mut self) {
        let mut c = self.cluster.take().expect("cluster");
        let c = tokio::task::spawn_blocking(move || {
            c.stop().expect("pg_ctl stop");
            c
        })
        .await
        .expect("blocking task");
        self.cluster = Some(c);
    }

    /// `pg_ctl start` again (same port and data).
    pub async fn restart(&mut self) {
        let mut c = self.cluster.take().expect("cluster");
        let c = tokio::task::spawn_blocking(move || {
            c.start().expect("pg_ctl start");
            c
        })
        .await
        .expect("blocking task");
        self.cluster = Some(c);
    }
}

async fn stage_up_metric(p: &Proxy) -> Option<bool> {
    let (_, body) = p.http_get("/metrics").await;
    if body.contains("tierwarden_upstream_up{env=\"stage\"} 1") {
        Some(true)
    } else if body.contains("tierwarden_upstream_up{env=\"stage\"} 0") {
        Some(false)
    } else {
        None
    }
}

/// Polls (bounded, 60 s) until the stage metric and /readyz say `up`.
pub async fn wait_ready(p: &Proxy, up: bool) {
    for _ in 0..600 {
        let (status, _) = p.http_get("/readyz").await;
        if stage_up_metric(p).await == Some(up) && (status == 200) == up {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("stage upstream never reported up={up}");
}
