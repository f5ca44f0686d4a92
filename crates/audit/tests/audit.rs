//! The audit log detects and locates every kind of tampering.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a test failure"
)]

use audit::{AuditStore, Entry, Quarantined, SqliteStore};
use ed25519_dalek::SigningKey;
use rusqlite::{Connection, params};
use serde_json::json;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn filled(n: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let mut store = SqliteStore::open(&path, key()).unwrap();
    for batch in 0..n / 5 {
        let entries: Vec<Entry> = (0..5)
            .map(|i| {
                Entry::new(
                    (batch * 5 + i) as i64,
                    "detection",
                    json!({"n": batch * 5 + i}),
                )
            })
            .collect();
        store.append(&entries).unwrap();
    }
    (dir, path)
}

fn verify(path: &std::path::Path) -> audit::Verification {
    SqliteStore::verify_file(path, &key().verifying_key()).unwrap()
}

fn exec(path: &std::path::Path, sql: &str) {
    Connection::open(path).unwrap().execute_batch(sql).unwrap();
}

#[test]
fn intact_log_verifies_and_survives_reopen() {
    let (_d, path) = filled(20);
    let v = verify(&path);
    assert_eq!(v.problem, None);
    assert_eq!(v.records, 20);
    let mut store = SqliteStore::open(&path, key()).unwrap();
    assert_eq!(store.records(), 20);
    store
        .append(&[Entry::new(99, "approval", json!({"by": "ana"}))])
        .unwrap();
    let v = verify(&path);
    assert_eq!(v.problem, None);
    assert_eq!(v.head.unwrap().seq, 21);
}

#[test]
fn edit_is_located() {
    let (_d, path) = filled(20);
    exec(&path, "UPDATE audit SET body = '{\"n\":999}' WHERE seq = 7");
    let p = verify(&path).problem.unwrap();
    assert_eq!(p.seq, 7);
    assert!(p.what.contains("edited"), "{}", p.what);
}

#[test]
fn deletion_is_located() {
    let (_d, path) = filled(20);
    exec(&path, "DELETE FROM audit WHERE seq = 12");
    let p = verify(&path).problem.unwrap();
    assert_eq!(p.seq, 12);
    assert!(p.what.contains("missing"), "{}", p.what);
}

#[test]
fn tail_truncation_is_located() {
    let (_d, path) = filled(20);
    exec(&path, "DELETE FROM audit WHERE seq > 17");
    let p = verify(&path).problem.unwrap();
    assert_eq!(p.seq, 18);
}

#[test]
fn insertion_with_renumbering_is_located() {
    let (_d, path) = filled(10);
    // Shift records 5.. up by one and insert a forged record 5 that chains from 4.
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch("UPDATE audit SET seq = seq + 1000 WHERE seq >= 5; UPDATE audit SET seq = seq - 999 WHERE seq >= 1005;").unwrap();
    let prev: Vec<u8> = conn
        .query_row("SELECT hash FROM audit WHERE seq = 4", [], |r| r.get(0))
        .unwrap();
    let prev: [u8; 32] = prev.try_into().unwrap();
    let h = audit::record_hash(5, 0, "approval", "{}", &prev);
    conn.execute(
        "INSERT INTO audit (seq, ts_ms, kind, body, prev_hash, hash) VALUES (5, 0, 'approval', '{}', ?1, ?2)",
        params![&prev[..], &h[..]],
    )
    .unwrap();
    drop(conn);
    let p = verify(&path).problem.unwrap();
    assert!(p.seq == 5 || p.seq == 6, "{p:?}");
}

#[test]
fn reordering_is_located() {
    let (_d, path) = filled(10);
    // Swap the contents of records 3 and 4 (keeping their sequence numbers).
    exec(
        &path,
        "UPDATE audit SET seq = -3 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = 4; UPDATE audit SET seq = 4 WHERE seq = -3;",
    );
    let p = verify(&path).problem.unwrap();
    assert_eq!(p.seq, 3);
}

#[test]
fn forged_head_is_detected() {
    let (_d, path) = filled(10);
    exec(&path, "UPDATE head SET seq = 9");
    let p = verify(&path).problem.unwrap();
    assert!(p.what.contains("signature"), "{}", p.what);
}

#[test]
fn corrupt_or_foreign_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(
        &garbage,
        b"this is not sqlite at all, just some bytes that go on and on",
    )
    .unwrap();
    let e = SqliteStore::open(&garbage, key())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("garbage.db"), "{e}");
    let foreign = dir.path().join("foreign.db");
    exec(&foreign, "CREATE TABLE t (x)");
    let e = SqliteStore::open(&foreign, key())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("another application"), "{e}");
    let e = SqliteStore::verify_file(&dir.path().join("none.db"), &key().verifying_key())
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn quarantine_keeps_the_bytes() {
    let (_d, path) = filled(5);
    let mut store = SqliteStore::open(&path, key()).unwrap();
    let head = store
        .append(&[Entry::new(
            1,
            "frame_rejected",
            json!({"reason": "bad_signature"}),
        )])
        .unwrap();
    store
        .quarantine(
            &Quarantined {
                ts_ms: 1,
                topic: "t".into(),
                reason: "bad_signature".into(),
                detail: "x".into(),
                bytes: vec![1, 2, 3],
            },
            head.seq,
        )
        .unwrap();
    let conn = Connection::open(&path).unwrap();
    let (bytes, seq): (Vec<u8>, i64) = conn
        .query_row("SELECT bytes, audit_seq FROM quarantine", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(bytes, vec![1, 2, 3]);
    assert_eq!(seq as u64, head.seq);
}

#[test]
fn a_full_quarantine_keeps_the_record_but_not_the_bytes() {
    let (_d, path) = filled(5);
    let item = |n: u8| Quarantined {
        ts_ms: 1,
        topic: "t".into(),
        reason: "bad_signature".into(),
        detail: format!("frame {n}"),
        bytes: vec![n; 3],
    };
    let mut store = SqliteStore::open(&path, key())
        .unwrap()
        .with_quarantine_cap(5);
    assert!(store.quarantine(&item(1), 1).unwrap());
    assert!(!store.quarantine(&item(2), 2).unwrap());
    // The count survives a reopen.
    let mut store = SqliteStore::open(&path, key())
        .unwrap()
        .with_quarantine_cap(5);
    assert!(!store.quarantine(&item(3), 3).unwrap());
    let conn = Connection::open(&path).unwrap();
    let rows: Vec<(String, usize)> = conn
        .prepare("SELECT detail, LENGTH(bytes) FROM quarantine ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as usize)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0], ("frame 1".to_string(), 3));
    assert!(
        rows[1].0.contains("quarantine full") && rows[1].1 == 0,
        "{rows:?}"
    );
    assert!(
        rows[2].0.contains("quarantine full") && rows[2].1 == 0,
        "{rows:?}"
    );
}
