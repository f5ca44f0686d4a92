//! The audit log detects and locates every kind of tampering, and proves what it holds.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a test failure"
)]

use audit::{
    AuditStore, Checkpoint, CheckpointPolicy, Entry, Proof, Quarantined, SqliteStore, check_proof,
    merkle,
};
use ed25519_dalek::SigningKey;
use rusqlite::{Connection, params};
use serde_json::json;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn append_n(store: &mut SqliteStore, from: u64, n: u64) {
    for batch in (from..from + n).collect::<Vec<_>>().chunks(5) {
        let entries: Vec<Entry> = batch
            .iter()
            .map(|i| Entry::new(*i as i64, "detection", json!({"n": i})))
            .collect();
        store.append(&entries).unwrap();
    }
}

/// A log of `n` records, closed with a checkpoint of all of them (as twinguard does when
/// it stops).
fn filled(n: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let mut store = SqliteStore::open(&path, key()).unwrap();
    append_n(&mut store, 0, n);
    store.checkpoint().unwrap();
    (dir, path)
}

fn verify(path: &std::path::Path) -> audit::Verification {
    SqliteStore::verify_file(path, &key().verifying_key(), &[]).unwrap()
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
    assert_eq!(v.unanchored, 0);
    assert_eq!(v.latest.as_ref().unwrap().size, 20);
    let mut store = SqliteStore::open(&path, key()).unwrap();
    assert_eq!(store.records(), 20);
    store
        .append(&[Entry::new(99, "approval", json!({"by": "ana"}))])
        .unwrap();
    let v = verify(&path);
    assert_eq!(v.problem, None);
    assert_eq!(v.head.unwrap().seq, 21);
}

/// An append (a guard decision waits for it) signs a checkpoint only as the first of an
/// opening and at the record count; the interval is kept by `checkpoint_if_due`, which the core
/// calls every second.
#[test]
fn appends_leave_the_interval_to_checkpoint_if_due() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let mut store = SqliteStore::open(&path, key())
        .unwrap()
        .with_checkpoints(CheckpointPolicy {
            every: std::time::Duration::ZERO,
            records: 1000,
        });
    append_n(&mut store, 0, 5);
    assert_eq!(store.latest_checkpoint().unwrap().size, 5);
    append_n(&mut store, 5, 20);
    assert_eq!(store.latest_checkpoint().unwrap().size, 5);
    assert_eq!(store.checkpoint_if_due().unwrap().unwrap().size, 25);
    assert!(store.checkpoint_if_due().unwrap().is_none());
    let v = verify(&path);
    assert_eq!((v.checkpoints, v.unanchored, v.problem), (2, 0, None));
    // A command that opens the log, appends and exits leaves its record covered.
    drop(store);
    let mut store = SqliteStore::open(&path, key()).unwrap();
    append_n(&mut store, 25, 1);
    assert_eq!(store.latest_checkpoint().unwrap().size, 26);
    append_n(&mut store, 26, 1);
    assert_eq!(store.latest_checkpoint().unwrap().size, 26);
}

#[test]
fn checkpoints_follow_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let mut store = SqliteStore::open(&path, key())
        .unwrap()
        .with_checkpoints(CheckpointPolicy {
            every: std::time::Duration::from_secs(3600),
            records: 50,
        });
    // The first append is checkpointed at once, then every 50 records.
    append_n(&mut store, 0, 5);
    assert_eq!(store.latest_checkpoint().unwrap().size, 5);
    append_n(&mut store, 5, 45);
    assert_eq!(store.latest_checkpoint().unwrap().size, 5);
    append_n(&mut store, 50, 5);
    assert_eq!(store.latest_checkpoint().unwrap().size, 55);
    assert!(store.checkpoint_if_due().unwrap().is_none());
    append_n(&mut store, 55, 5);
    let v = verify(&path);
    assert_eq!((v.checkpoints, v.unanchored, v.problem), (2, 5, None));
    assert_eq!(store.checkpoint().unwrap().unwrap().size, 60);
    assert!(store.checkpoint().unwrap().is_none());
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
fn an_edit_with_its_leaf_recomputed_breaks_the_signed_checkpoint() {
    let (_d, path) = filled(20);
    let leaf = audit::record_leaf(7, 6, "detection", "{\"n\":999}");
    Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE audit SET body = '{\"n\":999}', leaf = ?1 WHERE seq = 7",
            params![&leaf[..]],
        )
        .unwrap();
    let p = verify(&path).problem.unwrap();
    // Records 1..=5 are under the first checkpoint, still intact; the change is after.
    assert_eq!(p.seq, 6, "{p:?}");
    assert!(p.what.contains("6..=20"), "{}", p.what);
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
    assert!(p.what.contains("18..=20 are missing"), "{}", p.what);
}

#[test]
fn insertion_with_renumbering_is_located() {
    let (_d, path) = filled(10);
    // Shift records 5.. up by one and insert a forged record 5 with a correct leaf.
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch("UPDATE audit SET seq = seq + 1000 WHERE seq >= 5; UPDATE audit SET seq = seq - 999 WHERE seq >= 1005;").unwrap();
    let leaf = audit::record_leaf(5, 0, "approval", "{}");
    conn.execute(
        "INSERT INTO audit (seq, ts_ms, kind, body, leaf) VALUES (5, 0, 'approval', '{}', ?1)",
        params![&leaf[..]],
    )
    .unwrap();
    drop(conn);
    // Record 5 is under the first checkpoint (of 5 records): the range it names holds it.
    let p = verify(&path).problem.unwrap();
    assert!(p.what.contains("1..=5 do not match"), "{p:?}");
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
fn forged_or_removed_checkpoints_are_detected() {
    let (_d, path) = filled(10);
    exec(
        &path,
        "UPDATE checkpoint SET note = replace(note, char(10) || '10' || char(10), char(10) || '9' || char(10)) WHERE size = 10",
    );
    let p = verify(&path).problem.unwrap();
    assert!(p.what.contains("signature"), "{}", p.what);
    let (_d, path) = filled(10);
    exec(&path, "DELETE FROM checkpoint");
    let p = verify(&path).problem.unwrap();
    assert!(p.what.contains("no signed checkpoint"), "{}", p.what);
}

#[test]
fn a_checkpoint_kept_from_earlier_catches_a_rewritten_history() {
    let (_d, path) = filled(20);
    let held = SqliteStore::open(&path, key())
        .unwrap()
        .checkpoint_note(None)
        .unwrap()
        .unwrap();
    // Someone with write access to the database (but not the key) rewrites record 7 with
    // its leaf recomputed, and removes every stored checkpoint that would show it.
    let leaf = audit::record_leaf(7, 6, "detection", "{\"n\":999}");
    let conn = Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE audit SET body = '{\"n\":999}', leaf = ?1 WHERE seq = 7",
        params![&leaf[..]],
    )
    .unwrap();
    conn.execute_batch("DELETE FROM checkpoint; DELETE FROM tile;")
        .unwrap();
    drop(conn);
    let held = [(held, "held.checkpoint".to_string())];
    let v = SqliteStore::verify_file(&path, &key().verifying_key(), &held).unwrap();
    let p = v.problem.unwrap();
    assert!(p.what.contains("held.checkpoint"), "{}", p.what);
    assert_eq!(p.seq, 1);
}

#[test]
fn proofs_verify_with_only_the_public_key_across_tiles_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let public = key().verifying_key();
    let mut store = SqliteStore::open(&path, key()).unwrap();
    append_n(&mut store, 0, 300);
    store.checkpoint().unwrap();
    let old = store.checkpoint_note(None).unwrap().unwrap();
    drop(store);
    // Reopened: the tree is rebuilt from the tiles and the unfinished tile's leaves.
    let mut store = SqliteStore::open(&path, key()).unwrap();
    append_n(&mut store, 300, 500);
    store.checkpoint().unwrap();
    let leaves: Vec<merkle::Hash> = Connection::open(&path)
        .unwrap()
        .prepare("SELECT leaf FROM audit ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|l| l.unwrap().try_into().unwrap())
        .collect();
    assert_eq!(store.head().unwrap().hash, merkle::root(&leaves));
    for seq in [1u64, 2, 255, 256, 257, 300, 511, 512, 513, 700, 800] {
        let p = store.prove_inclusion(seq, None).unwrap();
        assert_eq!(p.tree_size, 800);
        let text = serde_json::to_string(&Proof::Inclusion(p.clone())).unwrap();
        let back: Proof = serde_json::from_str(&text).unwrap();
        let said = check_proof(&back, &public).unwrap();
        assert!(said.contains(&format!("record {seq} ")), "{said}");
        // A record shown with other contents does not verify.
        let mut forged = p.clone();
        forged.record.body = Some("{\"n\":-1}".into());
        forged.record.leaf = forged.record.computed_leaf().unwrap();
        assert!(check_proof(&Proof::Inclusion(forged), &public).is_err());
    }
    // Against the older checkpoint too.
    let p = store.prove_inclusion(299, Some(300)).unwrap();
    assert!(check_proof(&Proof::Inclusion(p), &public).is_ok());
    assert!(store.prove_inclusion(301, Some(300)).is_err());
    assert!(store.prove_inclusion(801, None).is_err());
    let c = store.prove_consistency(&old).unwrap();
    let said = check_proof(&Proof::Consistency(c.clone()), &public).unwrap();
    assert!(said.contains("extends the log of 300"), "{said}");
    // A proof that pretends the old log had other contents fails.
    let mut other = c.clone();
    let mut cp = Checkpoint::open(&other.old, &public).unwrap();
    cp.root[0] ^= 1;
    other.old = cp.sign(&key());
    assert!(check_proof(&Proof::Consistency(other), &public).is_err());
    // And no proof verifies with another key.
    let stranger = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
    assert!(check_proof(&Proof::Consistency(c), &stranger).is_err());
}

#[test]
fn an_export_verifies_offline_and_shows_tampering() {
    let (_d, path) = filled(40);
    let public = key().verifying_key();
    let mut out = Vec::new();
    let n = SqliteStore::export_file(&path, &public, &mut out, "log.jsonl").unwrap();
    assert_eq!(n, 40);
    let v = audit::export::verify(&out[..], "log.jsonl", &public, &[]).unwrap();
    assert_eq!((v.records, v.problem), (40, None));
    let text = String::from_utf8(out).unwrap();
    let edited = text.replace("{\\\"n\\\":17}", "{\\\"n\\\":71}");
    assert_ne!(edited, text);
    let p = audit::export::verify(edited.as_bytes(), "log.jsonl", &public, &[])
        .unwrap()
        .problem
        .unwrap();
    assert_eq!(p.seq, 18);
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines[..lines.len() - 3].join("\n");
    let p = audit::export::verify(cut.as_bytes(), "log.jsonl", &public, &[])
        .unwrap()
        .problem
        .unwrap();
    assert!(p.what.contains("missing"), "{}", p.what);
    let stranger = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
    let e = audit::export::verify(text.as_bytes(), "log.jsonl", &stranger, &[]).unwrap_err();
    assert!(e.to_string().contains("log.jsonl"), "{e}");
    let e = audit::export::verify(&b"not json\n"[..], "x.jsonl", &public, &[]).unwrap_err();
    assert!(e.to_string().contains("line 1"), "{e}");
}

#[test]
fn pruning_keeps_the_proofs_checkable() {
    let (_d, path) = filled(30);
    let mut store = SqliteStore::open(&path, key()).unwrap();
    assert_eq!(store.prune(10).unwrap(), 10);
    let v = verify(&path);
    assert_eq!((v.pruned, v.problem), (10, None));
    let public = key().verifying_key();
    assert!(
        check_proof(
            &Proof::Inclusion(store.prove_inclusion(20, None).unwrap()),
            &public
        )
        .is_ok()
    );
    let e = check_proof(
        &Proof::Inclusion(store.prove_inclusion(3, None).unwrap()),
        &public,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("pruned"), "{e}");
    // A pruned record's leaf still counts: changing it breaks the checkpoint.
    exec(&path, "UPDATE audit SET leaf = zeroblob(32) WHERE seq = 3");
    assert!(verify(&path).problem.is_some());
}

#[test]
fn corrupt_foreign_or_old_databases_are_a_clear_error() {
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
    let old = dir.path().join("old.db");
    exec(
        &old,
        "PRAGMA application_id = 1952932213; PRAGMA user_version = 1; CREATE TABLE audit (seq INTEGER PRIMARY KEY);",
    );
    let e = SqliteStore::open(&old, key()).err().unwrap().to_string();
    assert!(e.contains("schema 1"), "{e}");
    let e = SqliteStore::verify_file(&dir.path().join("none.db"), &key().verifying_key(), &[])
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

#[test]
fn two_writers_on_one_log_keep_it_whole() {
    let (_d, path) = filled(10);
    let mut a = SqliteStore::open(&path, key()).unwrap();
    let mut b = SqliteStore::open(&path, key()).unwrap();
    append_n(&mut a, 10, 3);
    append_n(&mut b, 13, 300);
    append_n(&mut a, 313, 2);
    assert_eq!(a.records(), 315);
    a.checkpoint().unwrap();
    let v = verify(&path);
    assert_eq!((v.records, v.problem), (315, None));
    assert_eq!(a.head(), v.head);
}

#[test]
fn an_empty_log_has_nothing_to_checkpoint_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let mut store = SqliteStore::open(&path, key()).unwrap();
    assert!(store.checkpoint().unwrap().is_none());
    let v = verify(&path);
    assert_eq!((v.records, v.problem), (0, None));
    append_n(&mut store, 0, 3);
    store.checkpoint().unwrap();
    assert_eq!(verify(&path).problem, None);
}

#[test]
fn a_store_closed_cleanly_leaves_every_record_in_the_database_file_alone() {
    let (dir, path) = filled(30);
    // `filled` dropped its store: the WAL was copied in, so the file alone (as someone
    // copying it for an auditor would take it) holds all thirty records and the
    // checkpoint of them.
    let wal = dir.path().join("audit.db-wal");
    assert!(
        !wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0,
        "the WAL still holds data"
    );
    let copy = dir.path().join("copy.db");
    std::fs::copy(&path, &copy).unwrap();
    let v = verify(&copy);
    assert_eq!((v.records, v.problem), (30, None));
    assert_eq!(v.latest.unwrap().size, 30);
}
