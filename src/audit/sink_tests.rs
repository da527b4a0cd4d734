//! Tests for the sink (chain, restart, health, shutdown, config) and for
//! `verify_file` on files written through the sink, then damaged.

use super::record::{line_hash, AuditRecord, EventKind, Outcome, GENESIS_PREV};
use super::sink::{spawn_writer, AuditConfig, FsyncPolicy, Target, MAX_TEXT_BYTES};
use super::tail::chain_start;
use super::*;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn rec(i: usize) -> AuditRecord {
    let mut r = AuditRecord::new(EventKind::Statement, "prod", "alice", Outcome::Ok);
    r.role = Some("app_runtime".into());
    r.level = Some("rw".into());
    r.class = Some("write".into());
    r.statement = Some(format!("INSERT INTO t VALUES ($1) -- {i}"));
    r.with_duration(Duration::from_micros(1234))
}

fn cfg(path: &Path) -> AuditConfig {
    let mut c = AuditConfig::new(path);
    c.flush_interval = Duration::from_millis(10);
    c
}

async fn write_records(path: &Path, n: usize) {
    let (h, task) = AuditSink::start(cfg(path)).unwrap();
    for i in 0..n {
        h.log(rec(i)).unwrap();
    }
    h.shutdown().await;
    task.await.unwrap();
}

fn lines(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes.last(), Some(&b'\n'));
    bytes[..bytes.len() - 1]
        .split(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    std::fs::write(path, out).unwrap();
}

/// Polls `cond` (yielding to the runtime) for up to 10 s of wall time.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..1000 {
        if cond() {
            return true;
        }
        crate::timers::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn hundred_records_chain_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_records(&path, 100).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let ls = lines(&path);
    assert_eq!(ls.len(), 100);
    let mut prev = GENESIS_PREV.to_string();
    for (i, l) in ls.iter().enumerate() {
        let r: AuditRecord = serde_json::from_slice(l).unwrap();
        assert_eq!(r.seq, i as u64);
        assert_eq!(r.prev, prev);
        assert_eq!(
            r.statement.as_deref(),
            Some(&*format!("INSERT INTO t VALUES ($1) -- {i}"))
        );
        prev = line_hash(l);
    }
    assert_eq!(
        verify_file(&path).unwrap(),
        VerifyReport::Ok { records: 100 }
    );
}

#[tokio::test]
async fn flipped_byte_is_reported_at_the_next_link() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_records(&path, 100).await;
    let mut ls = lines(&path);
    // Line 50 (index 49): change one digit inside the statement text.
    let l = &mut ls[49];
    let pos = l.windows(5).position(|w| w == b"-- 49").unwrap() + 3;
    l[pos] = b'7';
    write_lines(&path, &ls);
    match verify_file(&path).unwrap() {
        VerifyReport::Broken { line, seq, reason } => {
            assert_eq!(line, 51);
            assert_eq!(seq, Some(50));
            assert!(
                reason.contains("record 50 was modified or record 51's link is broken"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn flipped_byte_that_breaks_json_is_reported_on_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_records(&path, 100).await;
    let mut ls = lines(&path);
    ls[29][0] = b'['; // line 30 no longer starts an object
    write_lines(&path, &ls);
    let report = verify_file(&path).unwrap();
    assert!(
        matches!(&report, VerifyReport::Broken { line: 30, seq: None, reason } if reason.contains("not a valid record")),
        "{report:?}"
    );
}

#[tokio::test]
async fn deleted_line_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_records(&path, 100).await;
    let mut ls = lines(&path);
    ls.remove(60); // seq 60, line 61
    write_lines(&path, &ls);
    match verify_file(&path).unwrap() {
        VerifyReport::Broken { line, seq, reason } => {
            assert_eq!((line, seq), (61, Some(61)));
            assert!(reason.contains("seq 61 does not follow seq 59"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Removing the first line is detected too.
    let mut ls = lines(&path);
    ls.remove(0);
    write_lines(&path, &ls);
    let report = verify_file(&path).unwrap();
    assert!(
        matches!(
            report,
            VerifyReport::Broken {
                line: 1,
                seq: Some(1),
                ..
            }
        ),
        "{report:?}"
    );
}

#[tokio::test]
async fn truncated_last_line_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_records(&path, 100).await;
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 20).unwrap();
    drop(f);
    let report = verify_file(&path).unwrap();
    assert!(
        matches!(
            report,
            VerifyReport::Broken {
                line: 100,
                seq: None,
                ..
            }
        ),
        "{report:?}"
    );
    // Losing only the final newline loses nothing: still intact.
    write_records(&dir.path().join("b.jsonl"), 3).await;
    let b = dir.path().join("b.jsonl");
    let bytes = std::fs::read(&b).unwrap();
    std::fs::write(&b, &bytes[..bytes.len() - 1]).unwrap();
    assert_eq!(verify_file(&b).unwrap(), VerifyReport::Ok { records: 3 });
}

#[tokio::test]
async fn empty_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.jsonl");
    std::fs::write(&path, b"").unwrap();
    assert_eq!(verify_file(&path).unwrap(), VerifyReport::Ok { records: 0 });
    let missing = verify_file(&dir.path().join("nope"));
    assert!(matches!(missing, Err(AuditError::Io { .. })));
}

#[tokio::test]
async fn restart_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_records(&path, 3).await;
    write_records(&path, 2).await;
    assert_eq!(verify_file(&path).unwrap(), VerifyReport::Ok { records: 5 });
    let last: AuditRecord = serde_json::from_slice(lines(&path).last().unwrap()).unwrap();
    assert_eq!(last.seq, 4);
    // A complete last line that only lacks its newline also continues.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    write_records(&path, 1).await;
    assert_eq!(verify_file(&path).unwrap(), VerifyReport::Ok { records: 6 });
}

#[tokio::test]
async fn corrupt_tail_starts_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_records(&path, 3).await;
    let partial = br#"{"v":1,"seq":3,"prev":"00"#;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(partial).unwrap();
    drop(f);
    write_records(&path, 2).await;
    let ls = lines(&path);
    assert_eq!(ls.len(), 7);
    assert_eq!(ls[3], partial.to_vec());
    let restart: AuditRecord = serde_json::from_slice(&ls[4]).unwrap();
    assert_eq!(restart.kind, EventKind::ChainRestart);
    assert_eq!(restart.seq, 0);
    assert_eq!(restart.prev, line_hash(partial));
    assert!(restart.detail.unwrap().contains("unterminated"));
    let next: AuditRecord = serde_json::from_slice(&ls[5]).unwrap();
    assert_eq!((next.seq, next.prev), (1, line_hash(&ls[4])));
    // The damage stays visible to verify.
    let report = verify_file(&path).unwrap();
    assert!(
        matches!(
            report,
            VerifyReport::Broken {
                line: 4,
                seq: None,
                ..
            }
        ),
        "{report:?}"
    );
}

#[test]
fn chain_start_cases() {
    use super::tail::Tail;
    let empty = chain_start(None);
    assert_eq!((empty.next_seq, empty.prev.as_str()), (0, GENESIS_PREV));
    let good = br#"{"v":1,"seq":41,"prev":"0000000000000000000000000000000000000000000000000000000000000000","x":1}"#;
    let s = chain_start(Some(Tail {
        line: good.to_vec(),
        terminated: true,
    }));
    assert_eq!(
        (s.next_seq, s.prev, s.preamble, s.restart),
        (42, line_hash(good), vec![], None)
    );
    let s = chain_start(Some(Tail {
        line: br#"{"v":2,"seq":1,"prev":"x"}"#.to_vec(),
        terminated: true,
    }));
    assert!(s.restart.unwrap().contains("unsupported record version 2"));
}

#[tokio::test]
async fn directory_path_fails_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let res = AuditSink::start(cfg(dir.path()));
    assert!(matches!(res, Err(AuditError::Io { .. })));
}

#[tokio::test]
async fn dev_full_makes_the_sink_unhealthy() {
    let (h, _task) = AuditSink::start(cfg(Path::new("/dev/full"))).unwrap();
    assert!(h.healthy());
    h.log(rec(0)).unwrap();
    assert_eq!(h.flush().await, Err(AuditUnavailable::Unhealthy));
    assert!(!h.healthy());
    assert_eq!(h.log(rec(1)), Err(AuditUnavailable::Unhealthy));
}

#[tokio::test]
async fn dev_full_flips_health_on_the_flush_tick() {
    let (h, _task) = AuditSink::start(cfg(Path::new("/dev/full"))).unwrap();
    h.log(rec(0)).unwrap();
    assert!(eventually(|| !h.healthy()).await);
}

/// A target that fails on demand, after accepting `partial` bytes once.
#[derive(Clone, Default)]
struct Flaky {
    out: Arc<Mutex<Vec<u8>>>,
    fail: Arc<AtomicBool>,
    partial: Arc<AtomicUsize>,
    syncs: Arc<AtomicUsize>,
}

impl Write for Flaky {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let part = self.partial.swap(0, Ordering::SeqCst);
        if part > 0 {
            let n = part.min(buf.len());
            self.out.lock().unwrap().extend_from_slice(&buf[..n]);
            return Ok(n);
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected failure"));
        }
        self.out.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Target for Flaky {
    fn sync(&mut self) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn failed_write_recovers_without_losing_or_doubling_bytes() {
    let t = Flaky::default();
    let c = cfg(Path::new("flaky"));
    let (h, _task) = spawn_writer(t.clone(), chain_start(None), &c, FsyncPolicy::Never);
    h.log(rec(0)).unwrap();
    h.flush().await.unwrap();
    t.fail.store(true, Ordering::SeqCst);
    t.partial.store(30, Ordering::SeqCst); // half a record lands, then errors
    h.log(rec(1)).unwrap();
    assert_eq!(h.flush().await, Err(AuditUnavailable::Unhealthy));
    assert!(!h.healthy());
    assert_eq!(h.log(rec(2)), Err(AuditUnavailable::Unhealthy));
    t.fail.store(false, Ordering::SeqCst);
    assert!(eventually(|| h.healthy()).await, "retry on the tick");
    h.log(rec(3)).unwrap();
    h.flush().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.jsonl");
    std::fs::write(&path, t.out.lock().unwrap().as_slice()).unwrap();
    assert_eq!(verify_file(&path).unwrap(), VerifyReport::Ok { records: 3 });
    let texts: Vec<String> = lines(&path)
        .iter()
        .map(|l| {
            serde_json::from_slice::<AuditRecord>(l)
                .unwrap()
                .statement
                .unwrap()
        })
        .collect();
    assert!(
        texts[1].ends_with("-- 1") && texts[2].ends_with("-- 3"),
        "{texts:?}"
    );
}

#[tokio::test]
async fn fsync_always_syncs_each_batch_and_never_does_not() {
    for (policy, expect_sync) in [(FsyncPolicy::Always, true), (FsyncPolicy::Never, false)] {
        let t = Flaky::default();
        let (h, task) = spawn_writer(t.clone(), chain_start(None), &cfg(Path::new("x")), policy);
        h.log(rec(0)).unwrap();
        h.flush().await.unwrap();
        h.shutdown().await;
        task.await.unwrap();
        assert_eq!(
            t.syncs.load(Ordering::SeqCst) > 0,
            expect_sync,
            "{policy:?}"
        );
    }
}

/// A target whose writes block until released.
#[derive(Clone)]
struct Stuck {
    gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

impl Write for Stuck {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (lock, cv) = &*self.gate;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Target for Stuck {
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn stalled_write_makes_the_sink_unhealthy_until_it_returns() {
    let t = Stuck {
        gate: Arc::new((Mutex::new(false), std::sync::Condvar::new())),
    };
    let mut c = cfg(Path::new("stuck"));
    c.stall_timeout = Duration::from_millis(20);
    let (h, _task) = spawn_writer(t.clone(), chain_start(None), &c, FsyncPolicy::Never);
    h.log(rec(0)).unwrap();
    assert!(eventually(|| !h.healthy()).await);
    assert_eq!(h.log(rec(1)), Err(AuditUnavailable::Unhealthy));
    *t.gate.0.lock().unwrap() = true;
    t.gate.1.notify_all();
    assert!(eventually(|| h.healthy()).await);
}

#[tokio::test]
async fn full_queue_refuses_without_blocking() {
    let t = Flaky::default();
    let mut c = cfg(Path::new("q"));
    c.queue = 2;
    let (h, _task) = spawn_writer(t, chain_start(None), &c, FsyncPolicy::Never);
    // Current-thread runtime: the writer cannot run between these calls.
    h.log(rec(0)).unwrap();
    h.log(rec(1)).unwrap();
    assert_eq!(h.log(rec(2)), Err(AuditUnavailable::QueueFull));
    h.flush().await.unwrap();
    h.log(rec(3)).unwrap();
}

#[tokio::test]
async fn shutdown_drains_records_from_every_clone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let (h, task) = AuditSink::start(cfg(&path)).unwrap();
    let other = h.clone();
    for i in 0..50 {
        other.log(rec(i)).unwrap();
    }
    h.shutdown().await;
    task.await.unwrap();
    assert_eq!(
        verify_file(&path).unwrap(),
        VerifyReport::Ok { records: 50 }
    );
    assert!(!other.healthy());
    assert_eq!(other.log(rec(99)), Err(AuditUnavailable::Closed));
    assert_eq!(other.flush().await, Err(AuditUnavailable::Closed));
}

#[tokio::test]
async fn long_text_is_capped() {
    let t = Flaky::default();
    let (h, _task) = spawn_writer(
        t.clone(),
        chain_start(None),
        &cfg(Path::new("c")),
        FsyncPolicy::Never,
    );
    let mut r = rec(0);
    r.statement = Some("é".repeat(MAX_TEXT_BYTES)); // 2 bytes per char
    h.log(r).unwrap();
    h.flush().await.unwrap();
    let out = t.out.lock().unwrap().clone();
    let back: AuditRecord = serde_json::from_slice(&out[..out.len() - 1]).unwrap();
    let s = back.statement.unwrap();
    assert!(s.ends_with(&format!("…[truncated, {} bytes]", 2 * MAX_TEXT_BYTES)));
    assert!(s.len() < MAX_TEXT_BYTES + 64);
}

#[test]
fn config_from_toml() {
    let c: AuditConfig = toml::from_str(r#"path = "/var/log/a.jsonl""#).unwrap();
    assert_eq!(c, AuditConfig::new("/var/log/a.jsonl"));
    assert_eq!(c.fsync, FsyncPolicy::Interval(Duration::from_secs(1)));
    assert_eq!(
        (c.flush_interval, c.queue),
        (Duration::from_millis(200), 65536)
    );
    let c: AuditConfig = toml::from_str(
        "path = \"a\"\nfsync = \"interval\"\nfsync_interval_ms = 50\nflush_interval_ms = 20\nqueue = 8",
    )
    .unwrap();
    assert_eq!(c.fsync, FsyncPolicy::Interval(Duration::from_millis(50)));
    assert_eq!((c.flush_interval, c.queue), (Duration::from_millis(20), 8));
    let c: AuditConfig = toml::from_str("path = \"a\"\nfsync = \"always\"").unwrap();
    assert_eq!(c.fsync, FsyncPolicy::Always);
    let c: AuditConfig = toml::from_str("path = \"a\"\nfsync = \"never\"").unwrap();
    assert_eq!(c.fsync, FsyncPolicy::Never);
    for (bad, msg) in [
        (
            "fsync = \"always\"\nfsync_interval_ms = 5",
            "only valid with",
        ),
        ("fsync = \"sometimes\"", "expected \"always\""),
        ("queue = 0", "queue must be greater than 0"),
        ("flush_interval_ms = 0", "flush_interval_ms must be greater"),
        ("colour = 1", "unknown field"),
    ] {
        let err = toml::from_str::<AuditConfig>(&format!("path = \"a\"\n{bad}")).unwrap_err();
        assert!(err.to_string().contains(msg), "{bad}: {err}");
    }
}
