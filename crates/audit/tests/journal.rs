//! A running twinguard's appends go through the append journal: they reach SQLite whole
//! and in order, survive a crash, make way for another process's appends, and are refused
//! while the log cannot be written.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a test failure"
)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use audit::{AuditStore, Entry, SqliteStore, check_proof, record_leaf};
use ed25519_dalek::SigningKey;
use rusqlite::Connection;
use serde_json::json;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[9u8; 32])
}

fn entries(from: u64, n: u64) -> Vec<Entry> {
    (from..from + n)
        .map(|i| {
            Entry::new(
                1_000 + i as i64,
                "decision",
                json!({"n": i, "note": "a\tb\nc"}),
            )
        })
        .collect()
}

/// The store as a running twinguard opens it.
fn running(path: &Path) -> SqliteStore {
    SqliteStore::open(path, key())
        .unwrap()
        .with_append_journal()
        .unwrap()
}

/// A fresh log's path, in a directory removed with the guard.
fn fresh() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    (dir, path)
}

fn journal_of(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}.appends", db.display()))
}

fn verify(path: &Path) -> audit::Verification {
    SqliteStore::verify_file(path, &key().verifying_key(), &[]).unwrap()
}

/// The bodies of the stored records, in order.
fn stored_ns(path: &Path) -> Vec<u64> {
    let conn = Connection::open(path).unwrap();
    let mut s = conn
        .prepare("SELECT body FROM audit WHERE kind = 'decision' ORDER BY seq")
        .unwrap();
    s.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|b| {
            serde_json::from_str::<serde_json::Value>(&b.unwrap()).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn journaled_appends_reach_the_database_whole_and_in_order() {
    let (_dir, path) = fresh();
    let mut store = running(&path);
    // 600 records, two to an append: more than two tiles of 256 leaves.
    let mut n = 0;
    let mut head = None;
    while n < 600 {
        head = Some(store.append(&entries(n, 2)).unwrap());
        n += 2;
    }
    assert_eq!(store.records(), 600);
    assert_eq!(store.head(), head);
    // Reads through the store wait for the database to hold everything.
    let proof = store.prove_inclusion(599, None).unwrap();
    check_proof(&audit::Proof::Inclusion(proof), &key().verifying_key()).unwrap();
    let v = store.verify(&key().verifying_key()).unwrap();
    assert_eq!((v.records, v.problem.clone()), (600, None));
    assert_eq!(v.head, head);
    drop(store);
    // Closed cleanly: the database alone holds every record, the journal is empty.
    assert_eq!(std::fs::metadata(journal_of(&path)).unwrap().len(), 0);
    assert_eq!(stored_ns(&path), (0..600).collect::<Vec<_>>());
    let reopened = SqliteStore::open(&path, key()).unwrap();
    assert_eq!(reopened.head(), head);
}

/// The lines a crashed twinguard would have left for records `from..` after a log of
/// `stored` records, in the journal's documented format.
fn journal_lines(stored: u64, from: u64, n: u64) -> String {
    let mut text = String::new();
    for (k, e) in entries(from, n).iter().enumerate() {
        let seq = stored + 1 + k as u64;
        let body = e.body();
        let leaf = record_leaf(seq, e.ts_ms, &e.kind, body);
        text.push_str(&format!(
            "{seq}\t{}\t{}\t{}\t{body}\n",
            e.ts_ms,
            e.kind,
            hex::encode(leaf)
        ));
    }
    text
}

#[test]
fn what_a_crash_left_in_the_journal_goes_into_the_log_at_the_next_opening() {
    let (_dir, path) = fresh();
    let mut store = SqliteStore::open(&path, key()).unwrap();
    store.append(&entries(0, 5)).unwrap();
    drop(store);
    // Records 4 and 5 again (already stored: skipped), 6 to 8 new, and a line cut short
    // mid-write; then the zeros a running writer leaves after the journal's end, and
    // behind them what they hide (never read: the journal ends at its first zero byte).
    let mut text = journal_lines(3, 3, 2);
    text.push_str(&journal_lines(5, 5, 3));
    text.push_str("9\t1009\tdecis");
    text.push_str("\0\0\0");
    text.push_str(&journal_lines(8, 8, 1));
    text.push_str("not a line\n");
    std::fs::write(journal_of(&path), &text).unwrap();

    let store = SqliteStore::open(&path, key()).unwrap();
    assert_eq!(
        store.records(),
        9,
        "eight decisions and the recovery's own record"
    );
    drop(store);
    assert_eq!(stored_ns(&path), (0..8).collect::<Vec<_>>());
    assert_eq!(std::fs::metadata(journal_of(&path)).unwrap().len(), 0);
    let v = verify(&path);
    assert_eq!((v.records, v.problem), (9, None));
    let rec = SqliteStore::newest_record_of(&path, &["audit_journal_recovered"])
        .unwrap()
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(rec.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["records_recovered"], 3);
    assert_eq!(body["bytes_cut_short"], "9\t1009\tdecis".len());
}

#[test]
fn a_journal_that_does_not_continue_the_log_is_refused_and_kept() {
    let (_dir, path) = fresh();
    let mut store = SqliteStore::open(&path, key()).unwrap();
    store.append(&entries(0, 2)).unwrap();
    drop(store);
    // Record 3's body edited after its leaf was taken.
    let altered = journal_lines(2, 2, 2).replacen("\"n\":2", "\"n\":7", 1);
    std::fs::write(journal_of(&path), &altered).unwrap();
    let e = SqliteStore::open(&path, key()).err().unwrap().to_string();
    assert!(
        e.contains("audit.db.appends") && e.contains("record 3") && e.contains("left in place"),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(journal_of(&path)).unwrap(), altered);
    // A gap: the journal starts past the log's end.
    std::fs::write(journal_of(&path), journal_lines(4, 4, 1)).unwrap();
    let e = SqliteStore::open(&path, key()).err().unwrap().to_string();
    assert!(e.contains("record 5"), "{e}");
    // Garbage is named by its line.
    std::fs::write(journal_of(&path), "3\tnot a time\tdecision\n").unwrap();
    let e = SqliteStore::open(&path, key()).err().unwrap().to_string();
    assert!(e.contains("line 1"), "{e}");
    assert_eq!(verify(&path).records, 2);
}

#[test]
fn another_process_appends_beside_a_running_writer() {
    let (_dir, path) = fresh();
    let mut running = running(&path);
    // A second opening of the file locks it as another process would (`flock` locks
    // belong to each opening).
    let mut other = SqliteStore::open(&path, key()).unwrap();
    let mut n = 0;
    for round in 0..5 {
        for _ in 0..20 {
            running.append(&entries(n, 1)).unwrap();
            n += 1;
        }
        // The running writer yields the lock, the other appends after all it wrote,
        let head = other.append(&entries(n, 3)).unwrap();
        n += 3;
        assert_eq!(head.seq, n, "round {round}");
        // and the running writer takes it back and continues after the other's records.
        let head = running.append(&entries(n, 1)).unwrap();
        n += 1;
        assert_eq!(head.seq, n, "round {round}");
    }
    running.checkpoint().unwrap();
    let head = running.head();
    drop(running);
    drop(other);
    assert_eq!(stored_ns(&path), (0..n).collect::<Vec<_>>());
    let v = verify(&path);
    assert_eq!((v.records, v.problem), (n, None));
    assert_eq!(v.head, head);
}

#[test]
fn appends_are_refused_while_the_log_cannot_be_written_and_none_accepted_is_lost() {
    let (_dir, path) = fresh();
    let mut store = running(&path);
    store.append(&entries(0, 1)).unwrap();
    store.checkpoint().unwrap();
    // Someone else holds SQLite's write lock past the store's patience.
    let blocker = Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut accepted = 1;
    let start = Instant::now();
    let refusal = loop {
        match store.append(&entries(accepted, 1)) {
            Ok(_) => accepted += 1,
            Err(e) => break e.to_string(),
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "appends were still accepted with the log unwritable"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        refusal.contains("cannot be written") && refusal.contains("wait in the journal"),
        "{refusal}"
    );
    let why = store.unavailable().expect("the store says it cannot write");
    assert!(why.contains("locked"), "{why}");
    blocker.execute_batch("COMMIT").unwrap();
    drop(blocker);
    // The writer retries; appends are taken again once it has caught up.
    let start = Instant::now();
    while store.append(&entries(accepted, 1)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the log never recovered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    accepted += 1;
    assert_eq!(store.unavailable(), None);
    drop(store);
    assert_eq!(stored_ns(&path), (0..accepted).collect::<Vec<_>>());
    assert_eq!(verify(&path).problem, None);
}

#[test]
fn a_kind_that_cannot_stand_in_a_journal_line_is_refused() {
    let (_dir, path) = fresh();
    let mut store = SqliteStore::open(&path, key()).unwrap();
    for kind in ["", "deci\tsion", "decision\n"] {
        let e = store
            .append(&[Entry::new(1, kind, json!({}))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("control characters"), "{e}");
    }
    assert_eq!(store.records(), 0);
}

/// Set in the child process of the kill test: the log it writes.
const CHILD_LOG: &str = "AUDIT_JOURNAL_TEST_CHILD_LOG";

/// Kills the child when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A record whose line is longer than any of `entries`.
fn long_entry(n: u64) -> Entry {
    Entry::new(
        1_000 + n as i64,
        "decision",
        json!({"n": n, "note": "x".repeat(2_000)}),
    )
}

#[test]
fn a_writer_killed_after_its_journal_was_emptied_loses_no_accepted_record() {
    const NAME: &str = "a_writer_killed_after_its_journal_was_emptied_loses_no_accepted_record";
    if let Some(path) = std::env::var_os(CHILD_LOG) {
        kill_test_child(Path::new(&path));
    }
    let (_dir, path) = fresh();
    let mut child = Killed(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_LOG, &path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let accepted: u64 = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        // The harness prints the test's name first, on the same line.
        .find_map(|l| {
            l.split("accepted ")
                .nth(1)
                .map(|n| n.trim().parse().unwrap())
        })
        .expect("the child process ended before its appends were accepted");
    // Killed with records in the journal that SQLite does not hold.
    drop(child);
    let store = SqliteStore::open(&path, key()).unwrap();
    drop(store);
    assert_eq!(accepted, 105);
    assert_eq!(stored_ns(&path), (0..accepted).collect::<Vec<_>>());
    let rec = SqliteStore::newest_record_of(&path, &["audit_journal_recovered"])
        .unwrap()
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(rec.body.as_deref().unwrap()).unwrap();
    assert_eq!(
        (
            body["records_recovered"].as_u64(),
            body["bytes_cut_short"].as_u64()
        ),
        (Some(5), Some(0))
    );
    let v = verify(&path);
    assert_eq!((v.records, v.problem), (accepted + 1, None));
}

/// The kill test's child: a running writer appends long records, waits until its journal
/// has been emptied (SQLite holds them), then, with SQLite's write lock held elsewhere,
/// appends five short records in one append, says so, and waits to be killed. Were the
/// emptied journal's old lines left behind the new ones, the next opening would read
/// them after the new lines.
fn kill_test_child(path: &Path) -> ! {
    let mut store = running(path);
    for n in 0..100 {
        store.append(&[long_entry(n)]).unwrap();
    }
    let journal = journal_of(path);
    let start = Instant::now();
    loop {
        let bytes = std::fs::read(&journal).unwrap();
        // Emptied in place: the file keeps its length, and starts with a zero byte.
        if bytes.len() > 100 * 2_000 && bytes.first() == Some(&0) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the journal was not emptied in place ({} bytes, first {:?})",
            bytes.len(),
            bytes.first()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let blocker = Connection::open(path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    store.append(&entries(100, 5)).unwrap();
    println!("accepted 105");
    // Killed long before this; the bound only keeps a broken test from hanging.
    std::thread::sleep(Duration::from_secs(120));
    std::process::exit(1)
}
