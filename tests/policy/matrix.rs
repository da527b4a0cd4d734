//! The corpus matrix: every statement of `tierwarden::policy::corpus_all()`
//! through the real proxy, for every (role, environment) pair of the default
//! matrix whose level is not `none`, with the simple protocol (`simple_query`)
//! and the extended protocol (`prepare`, then execute when it has no
//! parameters). Each statement runs between `BEGIN` and `ROLLBACK` sent as
//! separate (pipelined) messages so nothing persists; errors from the
//! database (missing tables, "cannot run inside a transaction block", …) are
//! fine: only "denied by tierwarden" vs "not denied" is compared with the
//! verdict of the real `Classifier` + `decide()` for that subject.
//!
//! EXECUTE of an SQL-prepared statement is judged on the body remembered at
//! PREPARE (`Statement::executed_with`: the more dangerous of body and
//! parameters); a name the proxy has not seen allowed is denied. The model
//! below mirrors that bookkeeping per connection.
//!
//! Skipped here, covered elsewhere: statements holding a NUL byte (no driver
//! can send them; `raw_query_with_embedded_nul` in policy.rs). COPY … STDIN/
//! STDOUT entries run: their targets do not exist (checked first), so the
//! server fails them before copy mode; real COPY through the proxy is
//! exercised in `copy_directions_follow_the_level`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tierwarden::policy::{
    corpus_all, decide, Classifier, Decision, Level, Statement, Subject, Tier,
};
use tokio_postgres::Client;

use crate::support::{self, world, Proxy};

/// The SPEC §4 default matrix (dev, test, stage, prod).
pub const DEFAULT_MATRIX: &[(&str, [Level; 4])] = {
    use Level::{Controlled, Migrate, None, Ro, Rw};
    &[
        ("dev_user", [Rw, None, None, None]),
        ("test_runner", [Rw, Rw, None, None]),
        ("ci_migrator", [Rw, Rw, Rw, Migrate]),
        ("app_runtime", [Rw, Rw, Rw, Rw]),
        ("auditor", [Ro, Ro, Ro, Ro]),
        ("human_admin", [Rw, Rw, Rw, Controlled]),
    ]
};

pub const ENVS: [&str; 4] = ["dev", "test", "stage", "prod"];

/// One (role, env) pair to run.
#[derive(Clone, Copy, Debug)]
pub struct Pair {
    pub role: &'static str,
    pub env: &'static str,
    pub level: Level,
    pub tier: Tier,
    pub migrations: bool,
}

impl Pair {
    pub fn subject(&self) -> Subject<'static> {
        Subject {
            role: self.role,
            env: self.env,
            tier: self.tier,
            level: self.level,
            break_glass: false,
            migrations_role: self.migrations,
        }
    }
}

/// Every pair of the generated config whose level is not none; asserts the
/// config carries the SPEC default matrix.
pub fn pairs() -> Vec<Pair> {
    let cfg = world().config();
    let mut out = Vec::new();
    for (i, env) in ENVS.iter().enumerate() {
        let tier = cfg.environments[*env].tier;
        for (role, levels) in DEFAULT_MATRIX {
            let level = cfg.roles[*role].level_in(env);
            assert_eq!(
                level, levels[i],
                "{role}@{env}: config differs from SPEC §4"
            );
            if level != Level::None {
                out.push(Pair {
                    role,
                    env,
                    level,
                    tier,
                    migrations: cfg.roles[*role].migrations,
                });
            }
        }
    }
    out
}

/// The proxy's view of SQL-prepared statements of one connection, mirrored.
#[derive(Default)]
struct Model {
    prepared: HashMap<String, Statement>,
}

impl Model {
    /// Expected verdict: true when the proxy must deny `sql`.
    fn denied(&self, cls: &Classifier, sql: &str, subject: &Subject<'_>) -> bool {
        let classified = cls.classify(sql);
        let mut here: HashMap<&str, &Statement> = HashMap::new();
        let mut denied = false;
        for s in classified.statements.iter() {
            let eff = match &s.execute_name {
                Some(name) => match here.get(name.as_str()).copied().or(self.prepared.get(name)) {
                    Some(body) => body.executed_with(s),
                    None => Statement::unclassified(),
                },
                None => s.clone(),
            };
            denied |= matches!(decide(&eff, subject), Decision::Deny(_));
            if let Some(name) = &s.prepare_name {
                here.insert(name, s);
            }
        }
        denied
    }

    /// After an allowed message: PREPARE / DEALLOCATE / DISCARD ALL bookkeeping.
    fn allowed(&mut self, cls: &Classifier, sql: &str) {
        for s in cls.classify(sql).statements.iter() {
            if let Some(name) = &s.prepare_name {
                self.prepared.insert(name.clone(), s.clone());
            }
            match &s.deallocate {
                Some(Some(name)) => {
                    self.prepared.remove(name);
                }
                Some(None) => self.prepared.clear(),
                None => {}
            }
            if s.summary.eq_ignore_ascii_case("DISCARD ALL") {
                self.prepared.clear();
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Simple,
    Extended,
}

/// One disagreement between the proxy and the policy.
#[derive(Debug)]
pub struct Mismatch {
    pub role: &'static str,
    pub env: &'static str,
    pub proto: Proto,
    pub sql: &'static str,
    pub expected_denied: bool,
    pub observed: String,
}

/// What a run of the matrix did.
#[derive(Debug, Default)]
pub struct Report {
    pub mismatches: Vec<Mismatch>,
    pub runs: usize,
    pub denied: usize,
    pub skipped: usize,
    pub reconnects: usize,
}

fn observed(r: &Result<(), tokio_postgres::Error>) -> (bool, String) {
    match r {
        Ok(()) => (false, "ok".into()),
        Err(e) => (
            support::is_denial(e),
            match e.as_db_error() {
                Some(d) => format!("{} {}", d.code().code(), d.message()),
                None => e.to_string(),
            },
        ),
    }
}

async fn run_simple(c: &Client, sql: &str) -> Result<(), tokio_postgres::Error> {
    let (b, r, e) = tokio::join!(
        c.simple_query("BEGIN"),
        c.simple_query(sql),
        c.simple_query("ROLLBACK")
    );
    b.expect("BEGIN");
    let _ = e;
    r.map(|_| ())
}

async fn run_extended(c: &Client, sql: &str) -> Result<(), tokio_postgres::Error> {
    let (b, st) = tokio::join!(c.batch_execute("BEGIN"), c.prepare(sql));
    b.expect("BEGIN");
    let r = match st {
        Ok(st) if st.params().is_empty() => c.query(&st, &[]).await.map(|_| ()),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    };
    let _ = c.batch_execute("ROLLBACK").await;
    r
}

/// Connect, retrying twice: the machine running the suite may be loaded
/// enough for a 10 s connect timeout (failed attempts are printed).
async fn connect(p: &Proxy, pair: Pair) -> Client {
    let mut last = None;
    for attempt in 0..3u64 {
        match p.connect(pair.role, pair.env).await {
            Ok(c) => return c,
            Err(e) => {
                println!(
                    "{}@{} connect attempt {attempt} failed: {e:?}",
                    pair.role, pair.env
                );
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
            }
        }
    }
    panic!("{}@{} never connected: {last:?}", pair.role, pair.env)
}

/// Run the whole corpus for one pair with one protocol.
async fn run_pair(p: &Proxy, cls: &Classifier, pair: Pair, proto: Proto) -> Report {
    let mut rep = Report::default();
    let subject = pair.subject();
    let mut model = Model::default();
    let mut c = connect(p, pair).await;
    for &(sql, _class) in corpus_all() {
        if sql.contains('\0') {
            rep.skipped += 1;
            continue;
        }
        let expected = model.denied(cls, sql, &subject);
        let r = tokio::time::timeout(Duration::from_secs(30), async {
            match proto {
                Proto::Simple => run_simple(&c, sql).await,
                Proto::Extended => run_extended(&c, sql).await,
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{}@{} {proto:?}: {sql} hung", pair.role, pair.env));
        let (denied, text) = observed(&r);
        rep.runs += 1;
        rep.denied += usize::from(denied);
        if !denied {
            model.allowed(cls, sql);
        }
        if denied != expected {
            rep.mismatches.push(Mismatch {
                role: pair.role,
                env: pair.env,
                proto,
                sql,
                expected_denied: expected,
                observed: text,
            });
        }
        if sql.contains("advisory") {
            let _ = c.simple_query("SELECT pg_advisory_unlock_all()").await;
        }
        if c.is_closed() {
            rep.reconnects += 1;
            model = Model::default();
            c = connect(p, pair).await;
        }
    }
    rep
}

/// Corpus COPY targets and other names that must not exist, so no statement
/// enters copy mode or changes real data.
const MUST_NOT_EXIST: &[&str] = &["t", "s", "pgbench_accounts", "users", "sessions"];

/// Run every pair with both protocols (eight concurrent streams).
pub async fn run_all(p: &Proxy) -> (Report, Duration) {
    for env in ENVS {
        let su = world().superuser(&world().database(env)).await;
        for name in MUST_NOT_EXIST {
            let row = su
                .query_one("SELECT to_regclass($1) IS NULL", &[name])
                .await
                .expect("regclass");
            assert!(row.get::<_, bool>(0), "relation {name} exists in {env}");
        }
    }
    let cls = Classifier::new(&world().config().policy);
    let all = pairs();
    let started = Instant::now();
    // One stream per (environment, protocol): pairs of one environment run
    // in sequence so at most two sessions share a database at a time.
    let streams = ENVS
        .iter()
        .flat_map(|env| [(*env, Proto::Simple), (*env, Proto::Extended)])
        .map(|(env, proto)| {
            let mine: Vec<Pair> = all.iter().copied().filter(|x| x.env == env).collect();
            let cls = &cls;
            async move {
                let mut rep = Report::default();
                for pair in mine {
                    let r = run_pair(p, cls, pair, proto).await;
                    rep.runs += r.runs;
                    rep.denied += r.denied;
                    rep.skipped += r.skipped;
                    rep.reconnects += r.reconnects;
                    rep.mismatches.extend(r.mismatches);
                }
                rep
            }
        });
    let mut total = Report::default();
    for r in futures_util::future::join_all(streams).await {
        total.runs += r.runs;
        total.denied += r.denied;
        total.skipped += r.skipped;
        total.reconnects += r.reconnects;
        total.mismatches.extend(r.mismatches);
    }
    (total, started.elapsed())
}
