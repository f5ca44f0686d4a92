//! SQLite storage for the audit log (the default store).

use std::path::Path;

use ed25519_dalek::{SigningKey, VerifyingKey};
use rusqlite::{Connection, OptionalExtension, params};

use crate::{
    AuditError, AuditStore, Entry, Head, Quarantined, Record, Verification, check_chain,
    record_hash, sign_head,
};

const SCHEMA_VERSION: i64 = 1;
const APPLICATION_ID: i64 = 0x7467_6175; // "tgau"

pub struct SqliteStore {
    conn: Connection,
    path: String,
    key: SigningKey,
    head: Option<Head>,
    records: u64,
    /// Bytes of rejected frames kept so far, and the most that will be kept.
    quarantined_bytes: u64,
    quarantine_cap: u64,
}

/// Bytes of rejected frames kept in the quarantine by default (a flood of forged frames
/// cannot fill the disk; past the cap each rejection is still recorded, without its bytes).
pub const DEFAULT_QUARANTINE_CAP: u64 = 256 * 1024 * 1024;

impl SqliteStore {
    /// Opens (or creates) the audit database at `path`, signing heads with `key`.
    pub fn open(path: &Path, key: SigningKey) -> Result<SqliteStore, AuditError> {
        let name = path.display().to_string();
        let open_err = |message: String| AuditError::Open {
            path: name.clone(),
            message,
        };
        let conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        init(&conn).map_err(|e| open_err(e.to_string()))?;
        let app: i64 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(|e| open_err(format!("is not a readable SQLite database: {e}")))?;
        if app != APPLICATION_ID {
            return Err(open_err(format!(
                "is a SQLite database of another application (application_id {app:#x})"
            )));
        }
        let (records, head) = {
            let records: i64 = conn
                .query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))
                .map_err(|e| open_err(e.to_string()))?;
            let head = read_head(&conn).map_err(|e| open_err(e.to_string()))?;
            (records as u64, head.map(|(h, _)| h))
        };
        let quarantined_bytes: i64 = conn
            .query_row(
                "SELECT COALESCE(SUM(LENGTH(bytes)), 0) FROM quarantine",
                [],
                |r| r.get(0),
            )
            .map_err(|e| open_err(e.to_string()))?;
        Ok(SqliteStore {
            conn,
            path: name,
            key,
            head,
            records,
            quarantined_bytes: quarantined_bytes.max(0) as u64,
            quarantine_cap: DEFAULT_QUARANTINE_CAP,
        })
    }

    /// Sets the most bytes of rejected frames the quarantine keeps.
    pub fn with_quarantine_cap(mut self, bytes: u64) -> SqliteStore {
        self.quarantine_cap = bytes;
        self
    }

    /// Opens an existing database read-only, for verification without the signing key.
    pub fn verify_file(path: &Path, key: &VerifyingKey) -> Result<Verification, AuditError> {
        let name = path.display().to_string();
        let open_err = |message: String| AuditError::Open {
            path: name.clone(),
            message,
        };
        if !path.exists() {
            return Err(open_err("does not exist".into()));
        }
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| open_err(e.to_string()))?;
        let app: i64 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(|e| open_err(format!("is not a readable SQLite database: {e}")))?;
        if app != APPLICATION_ID {
            return Err(open_err("is not a twinguard audit database".into()));
        }
        verify_conn(&conn, key).map_err(|e| open_err(e.to_string()))
    }

    fn io(&self, e: rusqlite::Error) -> AuditError {
        AuditError::Io {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

fn init(conn: &Connection) -> rusqlite::Result<()> {
    // twinguard is the log's only writer: a lock held elsewhere is a fault to report at
    // once (nothing then executes), not to wait out while the core stands still.
    conn.busy_timeout(std::time::Duration::from_millis(200))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: i64 = conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    if version == 0 && tables == 0 {
        conn.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID};
             PRAGMA user_version = {SCHEMA_VERSION};
             CREATE TABLE audit (
                 seq INTEGER PRIMARY KEY,
                 ts_ms INTEGER NOT NULL,
                 kind TEXT NOT NULL,
                 body TEXT NOT NULL,
                 prev_hash BLOB NOT NULL,
                 hash BLOB NOT NULL
             );
             CREATE TABLE head (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 seq INTEGER NOT NULL,
                 hash BLOB NOT NULL,
                 sig BLOB NOT NULL
             );
             CREATE TABLE quarantine (
                 id INTEGER PRIMARY KEY,
                 ts_ms INTEGER NOT NULL,
                 topic TEXT NOT NULL,
                 reason TEXT NOT NULL,
                 detail TEXT NOT NULL,
                 bytes BLOB NOT NULL,
                 audit_seq INTEGER NOT NULL
             );"
        ))?;
    }
    Ok(())
}

fn read_head(conn: &Connection) -> rusqlite::Result<Option<(Head, [u8; 64])>> {
    conn.query_row("SELECT seq, hash, sig FROM head WHERE id = 1", [], |r| {
        let seq: i64 = r.get(0)?;
        let hash: Vec<u8> = r.get(1)?;
        let sig: Vec<u8> = r.get(2)?;
        Ok((seq, hash, sig))
    })
    .optional()
    .map(|o| {
        o.map(|(seq, hash, sig)| {
            let mut h = [0u8; 32];
            let mut s = [0u8; 64];
            // Wrong lengths leave zeros, which then fail verification instead of panicking.
            if hash.len() == 32 {
                h.copy_from_slice(&hash);
            }
            if sig.len() == 64 {
                s.copy_from_slice(&sig);
            }
            (
                Head {
                    seq: seq.max(0) as u64,
                    hash: h,
                },
                s,
            )
        })
    })
}

fn verify_conn(conn: &Connection, key: &VerifyingKey) -> rusqlite::Result<Verification> {
    let mut stmt =
        conn.prepare("SELECT seq, ts_ms, kind, body, prev_hash, hash FROM audit ORDER BY rowid")?;
    let rows = stmt.query_map([], |r| {
        let to32 = |v: Vec<u8>| {
            let mut a = [0u8; 32];
            if v.len() == 32 {
                a.copy_from_slice(&v);
            }
            a
        };
        let seq: i64 = r.get(0)?;
        Ok(Record {
            seq: seq.max(0) as u64,
            ts_ms: r.get(1)?,
            kind: r.get(2)?,
            body: r.get(3)?,
            prev_hash: to32(r.get(4)?),
            hash: to32(r.get(5)?),
        })
    })?;
    let mut records = Vec::new();
    for r in rows {
        records.push(r?);
    }
    Ok(check_chain(records, read_head(conn)?, key))
}

impl AuditStore for SqliteStore {
    fn append(&mut self, entries: &[Entry]) -> Result<Head, AuditError> {
        let mut seq = self.head.as_ref().map_or(0, |h| h.seq);
        let mut prev = self.head.as_ref().map_or(crate::GENESIS, |h| h.hash);
        let tx = self.conn.transaction().map_err(|e| AuditError::Io {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO audit (seq, ts_ms, kind, body, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(|e| AuditError::Io {
                    path: self.path.clone(),
                    message: e.to_string(),
                })?;
            for e in entries {
                seq += 1;
                let body = serde_json::to_string(&e.body).map_err(|err| AuditError::Body {
                    kind: e.kind.clone(),
                    message: err.to_string(),
                })?;
                let hash = record_hash(seq, e.ts_ms, &e.kind, &body, &prev);
                stmt.execute(params![
                    seq as i64,
                    e.ts_ms,
                    e.kind,
                    body,
                    &prev[..],
                    &hash[..]
                ])
                .map_err(|err| AuditError::Io {
                    path: self.path.clone(),
                    message: err.to_string(),
                })?;
                prev = hash;
            }
        }
        let head = Head { seq, hash: prev };
        let sig = sign_head(&self.key, &head);
        tx.prepare_cached(
            "INSERT INTO head (id, seq, hash, sig) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, sig = excluded.sig",
        )
        .and_then(|mut stmt| stmt.execute(params![seq as i64, &prev[..], &sig[..]]))
        .map_err(|e| AuditError::Io {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        tx.commit().map_err(|e| AuditError::Io {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        self.records += entries.len() as u64;
        self.head = Some(head.clone());
        Ok(head)
    }

    fn quarantine(&mut self, item: &Quarantined, audit_seq: u64) -> Result<bool, AuditError> {
        let len = item.bytes.len() as u64;
        let keep = self.quarantined_bytes + len <= self.quarantine_cap;
        let (bytes, detail): (&[u8], String) = if keep {
            (&item.bytes, item.detail.clone())
        } else {
            (
                &[],
                format!("{} (quarantine full: {len} bytes not kept)", item.detail),
            )
        };
        self.conn
            .execute(
                "INSERT INTO quarantine (ts_ms, topic, reason, detail, bytes, audit_seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![item.ts_ms, item.topic, item.reason, detail, bytes, audit_seq as i64],
            )
            .map_err(|e| self.io(e))?;
        if keep {
            self.quarantined_bytes += len;
        }
        Ok(keep)
    }

    fn head(&self) -> Option<Head> {
        self.head.clone()
    }

    fn records(&self) -> u64 {
        self.records
    }

    fn verify(&self, key: &VerifyingKey) -> Result<Verification, AuditError> {
        verify_conn(&self.conn, key).map_err(|e| self.io(e))
    }
}
