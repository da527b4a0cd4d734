//! Tests of the throwaway cluster against the machine's real PostgreSQL.

use super::*;
use crate::quickstart::runner::postgres_pids_for;

#[test]
fn free_port_is_bindable() {
    let port = free_port();
    assert_ne!(port, 0);
    assert!(TcpListener::bind(("127.0.0.1", port)).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_start_connect_stop_reuse() {
    let tmp = tempfile::Builder::new()
        .prefix("tw-cluster-")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = tmp.path().join("pg");
    let port = free_port();
    let mut c = PgCluster::init_or_reuse(&dir, port).unwrap();
    assert!(c.data_dir.join("PG_VERSION").exists());
    let pw_file = c.dir.join("superuser.password");
    assert_eq!(
        fs::metadata(&pw_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    c.start().unwrap();
    assert!(c.is_running());
    assert_eq!(postgres_pids_for(&c.data_dir).len(), 1);

    let client = c.connect_superuser("postgres").await.unwrap();
    let row = client
        .query_one(
            "select 1::int4, current_user::text, current_setting('listen_addresses')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert_eq!(row.get::<_, String>(1), SUPERUSER);
    assert_eq!(row.get::<_, String>(2), "127.0.0.1");
    let hba: i64 = client
        .query_one(
            "select count(*) from pg_hba_file_rules where auth_method <> 'scram-sha-256'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(hba, 0, "every pg_hba rule uses scram-sha-256");

    // A wrong password is refused (SCRAM, not trust).
    let bad = format!("host=127.0.0.1 port={port} user={SUPERUSER} password=wrong dbname=postgres");
    assert!(tokio_postgres::connect(&bad, tokio_postgres::NoTls)
        .await
        .is_err());
    drop(client);

    c.stop().unwrap();
    c.stop().unwrap(); // idempotent
    assert!(!c.is_running());
    assert!(postgres_pids_for(&c.data_dir).is_empty());
    let password = c.superuser_password.clone();
    drop(c);

    // Reuse on another port with the same password.
    let port2 = free_port();
    let mut c = PgCluster::init_or_reuse(&dir, port2).unwrap();
    assert_eq!(c.superuser_password, password);
    c.start().unwrap();
    let client = c.connect_superuser("postgres").await.unwrap();
    let row = client
        .query_one("select current_setting('port')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), port2.to_string());
    drop(client);
    let data_dir = c.data_dir.clone();
    drop(c); // Drop stops it.
    assert!(postgres_pids_for(&data_dir).is_empty());
}

#[test]
fn port_in_use_is_reported() {
    let tmp = tempfile::Builder::new()
        .prefix("tw-cluster-")
        .tempdir_in("/tmp")
        .unwrap();
    let taken = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut c = PgCluster::init_or_reuse(&tmp.path().join("pg"), port).unwrap();
    match c.start() {
        Err(ClusterError::PortInUse(p)) => assert_eq!(p, port),
        other => panic!("expected PortInUse, got {other:?}"),
    }
    assert!(!c.is_running());
}

#[test]
fn a_crashed_run_is_restarted() {
    let tmp = tempfile::Builder::new()
        .prefix("tw-cluster-")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = tmp.path().join("pg");
    let mut first = PgCluster::init_or_reuse(&dir, free_port()).unwrap();
    first.start().unwrap();
    // Simulate a crash of the owning process: forget the cluster without stopping.
    std::mem::forget(first);
    let mut second = PgCluster::init_or_reuse(&dir, free_port()).unwrap();
    second.start().unwrap();
    assert_eq!(postgres_pids_for(&second.data_dir).len(), 1);
    second.stop().unwrap();
    assert!(postgres_pids_for(&second.data_dir).is_empty());
}
