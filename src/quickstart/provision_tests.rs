//! Least privilege, checked against the machine's real PostgreSQL: each
//! upstream user connects with its password and tries what it must and must
//! not be able to do.

use super::*;
use crate::quickstart::cluster::free_port;
use crate::quickstart::layout::environments;
use tokio_postgres::error::SqlState;

async fn connect(
    c: &PgCluster,
    user: &str,
    pw: &str,
    db: &str,
) -> Result<Client, tokio_postgres::Error> {
    let dsn = format!(
        "host=127.0.0.1 port={} user={user} password={pw} dbname={db}",
        c.port
    );
    let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

fn code(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.as_db_error().map(|d| d.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_user_gets_exactly_its_privileges() {
    let tmp = tempfile::Builder::new()
        .prefix("tw-prov-")
        .tempdir_in("/tmp")
        .unwrap();
    let mut cluster = PgCluster::init_or_reuse(&tmp.path().join("pg"), free_port()).unwrap();
    cluster.start().unwrap();
    let envs = environments(6432);
    let (dev, prod) = (envs[0].clone(), envs[3].clone());
    let plan = vec![
        (
            dev.clone(),
            EnvPasswords {
                owner: "devOwner1",
                rw: "devRw1",
                ro: "devRo1",
                monitor: "devMon1",
            },
        ),
        (
            prod.clone(),
            EnvPasswords {
                owner: "prodOwner1",
                rw: "prodRw1",
                ro: "prodRo1",
                monitor: "prodMon1",
            },
        ),
    ];
    provision(&cluster, &plan).await.unwrap();
    // Idempotent: a restart provisions again without error or duplicate rows.
    provision(&cluster, &plan).await.unwrap();

    let su = cluster.connect_superuser("app_prod").await.unwrap();
    let row = su
        .query_one(
            "SELECT shobj_description(oid, 'pg_database'), pg_get_userbyid(datdba)::text \
             FROM pg_database WHERE datname = 'app_prod'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "tierwarden:env=prod");
    assert_eq!(row.get::<_, String>(1), "tw_prod_owner");
    let n: i64 = su
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3, "sample rows inserted once");
    let owners: Vec<String> = su
        .query(
            "SELECT DISTINCT pg_get_userbyid(relowner)::text FROM pg_class \
             WHERE relnamespace = 'public'::regnamespace",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(owners, vec!["tw_prod_owner".to_string()]);
    let flags = su
        .query_one(
            "SELECT bool_or(rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls) \
             FROM pg_roles WHERE rolname LIKE 'tw\\_%'",
            &[],
        )
        .await
        .unwrap();
    assert!(!flags.get::<_, bool>(0));

    // The owner: ddl in public and new schemas.
    let owner = connect(&cluster, "tw_prod_owner", "prodOwner1", "app_prod")
        .await
        .unwrap();
    owner
        .batch_execute(
            "CREATE TABLE later (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);\n\
             CREATE SCHEMA billing;\n\
             CREATE TABLE billing.invoices (id serial PRIMARY KEY, total int);",
        )
        .await
        .unwrap();

    // The DML user: reads and writes everything created later, sequences included; no ddl.
    let rw = connect(&cluster, "tw_prod_rw", "prodRw1", "app_prod")
        .await
        .unwrap();
    rw.batch_execute(
        "INSERT INTO later (v) VALUES ('x');\n\
         INSERT INTO billing.invoices (total) VALUES (5);\n\
         INSERT INTO orders (account_id, amount_cents) VALUES (1, 10);\n\
         UPDATE accounts SET name = name WHERE id = 1;\n\
         DELETE FROM orders WHERE amount_cents = 10;\n\
         SELECT nextval('orders_id_seq');",
    )
    .await
    .unwrap();
    let e = rw
        .batch_execute("CREATE TABLE nope (id int)")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    let e = rw.batch_execute("CREATE SCHEMA nope").await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    let e = rw.batch_execute("DROP TABLE later").await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE));

    // The read-only user: reads everything (also created later), writes nothing.
    let ro = connect(&cluster, "tw_prod_ro", "prodRo1", "app_prod")
        .await
        .unwrap();
    let n: i64 = ro
        .query_one(
            "SELECT count(*) FROM later JOIN billing.invoices ON true",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    ro.query_one("SELECT last_value FROM orders_id_seq", &[])
        .await
        .unwrap();
    for stmt in [
        "INSERT INTO accounts (email, name) VALUES ('x@y', 'x')",
        "UPDATE later SET v = 'y'",
        "SELECT nextval('orders_id_seq')",
        "CREATE TABLE nope (id int)",
    ] {
        let e = ro.batch_execute(stmt).await.unwrap_err();
        assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{stmt}");
    }

    // The monitor: sees other users' wait events (pg_monitor), reads no table.
    let mon = connect(&cluster, "tw_prod_monitor", "prodMon1", "app_prod")
        .await
        .unwrap();
    // (`ro` is still connected; without pg_monitor its state reads NULL.)
    let visible: i64 = mon
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE usename = 'tw_prod_ro' AND state IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(visible >= 1, "pg_monitor shows other users' activity");
    for stmt in [
        "SELECT * FROM public.accounts",
        "CREATE TABLE public.nope (id int)",
    ] {
        let e = mon.batch_execute(stmt).await.unwrap_err();
        assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{stmt}");
    }

    // Environments are walled off: no cross-environment CONNECT, no maintenance db.
    for (user, pw, db) in [
        ("tw_dev_owner", "devOwner1", "app_prod"),
        ("tw_dev_ro", "devRo1", "app_prod"),
        ("tw_prod_rw", "prodRw1", "app_dev"),
        ("tw_prod_owner", "prodOwner1", "postgres"),
        ("tw_dev_monitor", "devMon1", "app_prod"),
    ] {
        let e = connect(&cluster, user, pw, db).await.unwrap_err();
        assert_eq!(
            code(&e),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{user} -> {db}"
        );
    }
    // Wrong password: refused (SCRAM verifiers made by auth::verifier work).
    assert!(connect(&cluster, "tw_dev_ro", "devRo2", "app_dev")
        .await
        .is_err());
    let dev_ro = connect(&cluster, "tw_dev_ro", "devRo1", "app_dev")
        .await
        .unwrap();
    let name: String = dev_ro
        .query_one("SELECT name FROM accounts WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "Grace Hopper (dev)");
    cluster.stop().unwrap();
}

#[test]
fn grant_sql_names_only_the_environments_own_users() {
    let envs = environments(6432);
    let sql = grant_statements(&envs[1]);
    assert!(sql.contains("ALTER SCHEMA public OWNER TO tw_test_owner;"));
    assert!(sql.contains(
        "FOR ROLE tw_test_owner GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO tw_test_rw;"
    ));
    for other in ["dev", "stage", "prod"] {
        assert!(
            !sql.contains(&format!("tw_{other}_")),
            "{other} leaked into test grants"
        );
    }
}
