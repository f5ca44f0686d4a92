//! The append-only audit log, a Merkle tree log in the manner of RFC 9162, and the
//! quarantine of rejected frames.
//!
//! Every record is a leaf: its hash covers its sequence number, time, kind and body. The
//! leaves form a Merkle tree ([`merkle`]); at a configured interval the tree's size and
//! root are signed with the install's audit key as a [`Checkpoint`]. From the store come an
//! inclusion proof for any record and a consistency proof between any two checkpoints, both
//! checkable by anyone holding the log's public key ([`check_proof`]). Verification
//! ([`LogCheck`]) rebuilds the tree from the stored records and names the first record that
//! was edited, removed, inserted or moved, or the range of records a signed checkpoint no
//! longer matches; a checkpoint someone kept from earlier is checked the same way, so a
//! rewritten history cannot pass for the one they were shown.
//!
//! Records older than the retention period lose their bodies but keep their leaf hashes,
//! so proofs over them stay checkable.
//!
//! Storage sits behind [`AuditStore`]; [`SqliteStore`] is the default. [`export`] writes a
//! log to one file that verifies offline with only the public key.

pub mod checkpoint;
pub mod export;
#[cfg(feature = "sqlite")]
mod journal;
pub mod merkle;
#[cfg(feature = "sqlite")]
mod sqlite;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

pub use checkpoint::{Checkpoint, NoteError, origin_for};
pub use merkle::Hash;
#[cfg(feature = "sqlite")]
pub use sqlite::{CheckpointPolicy, DEFAULT_QUARANTINE_CAP, SqliteStore};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit database {path}: {message}")]
    Open { path: String, message: String },
    #[error("audit database {path}: {message}")]
    Io { path: String, message: String },
    #[error("audit body for {kind} is not valid JSON: {message}")]
    Body { kind: String, message: String },
    #[error("audit proof: {0}")]
    Proof(String),
}

/// One event to record. Its body is held as compact JSON text, the form the leaf hash
/// covers.
#[derive(Debug, Clone)]
pub struct Entry {
    pub ts_ms: i64,
    pub kind: String,
    body: String,
}

impl Entry {
    pub fn new(ts_ms: i64, kind: &str, body: serde_json::Value) -> Entry {
        Entry {
            ts_ms,
            kind: kind.to_string(),
            body: body.to_string(),
        }
    }

    /// An entry whose body is `body` written straight to JSON text, without building a
    /// `serde_json::Value` of it first (one of the costs of a guard decision's append).
    pub fn of<T: Serialize + ?Sized>(
        ts_ms: i64,
        kind: &str,
        body: &T,
    ) -> Result<Entry, AuditError> {
        Ok(Entry {
            ts_ms,
            kind: kind.to_string(),
            body: serde_json::to_string(body).map_err(|e| AuditError::Body {
                kind: kind.to_string(),
                message: e.to_string(),
            })?,
        })
    }

    /// The body as JSON text.
    pub fn body(&self) -> &str {
        &self.body
    }
}

/// A stored record: a leaf of the tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub ts_ms: i64,
    pub kind: String,
    /// The event as JSON text; `None` once retention has pruned it (the leaf stays).
    pub body: Option<String>,
    #[serde(with = "hex_bytes")]
    pub leaf: Hash,
}

impl Record {
    /// The leaf hash its contents give (what `leaf` must be); `None` when pruned.
    pub fn computed_leaf(&self) -> Option<Hash> {
        self.body
            .as_deref()
            .map(|b| record_leaf(self.seq, self.ts_ms, &self.kind, b))
    }
}

/// The log's size and tree root now (the root of the first `seq` records).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Head {
    pub seq: u64,
    #[serde(with = "hex_bytes")]
    pub hash: Hash,
}

impl Head {
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }
}

/// A rejected frame kept for investigation.
#[derive(Debug, Clone, Serialize)]
pub struct Quarantined {
    pub ts_ms: i64,
    pub topic: String,
    pub reason: String,
    pub detail: String,
    #[serde(skip)]
    pub bytes: Vec<u8>,
}

/// What verification found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verification {
    pub records: u64,
    /// Size and root of the tree the stored records make.
    pub head: Option<Head>,
    /// Signed checkpoints found and matched.
    pub checkpoints: u64,
    /// The newest signed checkpoint.
    pub latest: Option<Checkpoint>,
    /// Records newer than the newest checkpoint: intact as far as can be told, but a
    /// checkpoint does not yet commit the log to them.
    pub unanchored: u64,
    /// Records whose bodies retention removed (their leaves are still checked).
    pub pruned: u64,
    /// The first problem found, if any.
    pub problem: Option<Problem>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    /// The first record that is wrong or missing.
    pub seq: u64,
    pub what: String,
}

/// Where audit records live. Implementations must append atomically: a batch is stored
/// whole or not at all.
pub trait AuditStore: Send {
    fn append(&mut self, entries: &[Entry]) -> Result<Head, AuditError>;
    /// Keeps a rejected frame; returns false when the quarantine is full and only the
    /// rejection's description (not the bytes) was kept.
    fn quarantine(&mut self, item: &Quarantined, audit_seq: u64) -> Result<bool, AuditError>;
    fn head(&self) -> Option<Head>;
    fn records(&self) -> u64;
    /// Signs a checkpoint of every record now, unless the newest already covers them.
    fn checkpoint(&mut self) -> Result<Option<Checkpoint>, AuditError>;
    /// Signs a checkpoint if the configured interval has passed with records uncovered.
    fn checkpoint_if_due(&mut self) -> Result<Option<Checkpoint>, AuditError>;
    fn latest_checkpoint(&self) -> Option<Checkpoint>;
    /// Removes the bodies of records older than `before_ms` that a checkpoint covers, and
    /// the quarantined frames of the same age. Their leaves stay, so every proof and
    /// checkpoint remains checkable. Returns the records pruned.
    fn prune(&mut self, before_ms: i64) -> Result<u64, AuditError>;
    fn verify(&self, key: &VerifyingKey) -> Result<Verification, AuditError>;
    /// Why the store cannot write what it has accepted, if it knows already (a store that
    /// writes behind an append: the next append would be refused with this reason).
    fn unavailable(&self) -> Option<String> {
        None
    }
}

/// The bytes a record's leaf hash is taken over.
pub fn leaf_data(seq: u64, ts_ms: i64, kind: &str, body: &str) -> Vec<u8> {
    let mut d = Vec::with_capacity(48 + kind.len() + body.len());
    d.extend_from_slice(b"twinguard/audit/v2\0");
    d.extend_from_slice(&seq.to_be_bytes());
    d.extend_from_slice(&ts_ms.to_be_bytes());
    d.extend_from_slice(&(kind.len() as u64).to_be_bytes());
    d.extend_from_slice(kind.as_bytes());
    d.extend_from_slice(&(body.len() as u64).to_be_bytes());
    d.extend_from_slice(body.as_bytes());
    d
}

/// A record's leaf hash (RFC 9162: SHA-256 of 0x00 and the leaf data).
pub fn record_leaf(seq: u64, ts_ms: i64, kind: &str, body: &str) -> Hash {
    merkle::leaf_hash(&leaf_data(seq, ts_ms, kind, body))
}

/// Checks a log record by record, in storage order, against its signed checkpoints, with
/// memory for 64 hashes whatever the log's length. Shared by every store and the export
/// reader so that they agree on what "intact" means.
pub struct LogCheck {
    frontier: merkle::Frontier,
    /// Verified checkpoints, ascending by size, with where each came from.
    checkpoints: Vec<(Checkpoint, String)>,
    next: usize,
    last_ok: u64,
    pruned: u64,
    matched: u64,
    problem: Option<Problem>,
}

impl LogCheck {
    /// `notes`: signed checkpoint notes and where each came from ("stored", a file name);
    /// each must be signed by `key`.
    pub fn new(key: &VerifyingKey, notes: &[(String, String)]) -> LogCheck {
        let mut check = LogCheck {
            frontier: merkle::Frontier::default(),
            checkpoints: Vec::new(),
            next: 0,
            last_ok: 0,
            pruned: 0,
            matched: 0,
            problem: None,
        };
        for (note, from) in notes {
            match Checkpoint::open(note, key) {
                Ok(cp) => check.checkpoints.push((cp, from.clone())),
                Err(e) => {
                    let size = note
                        .lines()
                        .nth(1)
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(0);
                    check.fail(size, format!("a checkpoint ({from}, size {size}): {e}"));
                }
            }
        }
        // A checkpoint of the empty tree commits to nothing (any log extends it), as long as
        // it says so.
        if let Some((c, from)) = check
            .checkpoints
            .iter()
            .find(|(c, _)| c.size == 0 && c.root != merkle::EMPTY_ROOT)
        {
            let what = format!(
                "a checkpoint of no records ({from}) has a root other than the empty tree's: {}",
                c.root_hex()
            );
            check.fail(1, what);
        }
        check.checkpoints.retain(|(c, _)| c.size > 0);
        check.checkpoints.sort_by_key(|(c, _)| c.size);
        let disagreements: Vec<String> = check
            .checkpoints
            .windows(2)
            .filter_map(|pair| match pair {
                [(a, from_a), (b, from_b)] if a.size == b.size && a.root != b.root => Some(format!(
                    "two checkpoints of size {} disagree ({from_a}: root {}, {from_b}: root {}): the log was rewritten after one of them was signed",
                    a.size,
                    a.root_hex(),
                    b.root_hex()
                )),
                _ => None,
            })
            .collect();
        for what in disagreements {
            check.fail(1, what);
        }
        check
    }

    fn fail(&mut self, seq: u64, what: String) {
        if self.problem.is_none() {
            self.problem = Some(Problem { seq, what });
        }
    }

    /// False once a problem is found (the rest need not be read).
    pub fn record(&mut self, r: &Record) -> bool {
        if self.problem.is_some() {
            return false;
        }
        let expected = self.frontier.size() + 1;
        if r.seq != expected {
            let what = if r.seq > expected {
                format!(
                    "record {expected} is missing (next stored record is {})",
                    r.seq
                )
            } else {
                format!("record {} is out of order (expected {expected})", r.seq)
            };
            self.fail(expected, what);
            return false;
        }
        match r.computed_leaf() {
            Some(leaf) if leaf != r.leaf => {
                self.fail(
                    r.seq,
                    "its contents do not match its leaf hash (edited)".to_string(),
                );
                return false;
            }
            Some(_) => {}
            None => self.pruned += 1,
        }
        self.frontier.push(r.leaf);
        let size = self.frontier.size();
        while let Some((cp, from)) = self.checkpoints.get(self.next) {
            if cp.size != size {
                break;
            }
            if self.frontier.root() != cp.root {
                let what = format!(
                    "records {}..={size} do not match the checkpoint of size {size} ({from}, signed {} UTC): one of them was edited, inserted, removed or moved and its leaf hash recomputed",
                    self.last_ok + 1,
                    format_utc(cp.timestamp_ms)
                );
                let seq = self.last_ok + 1;
                self.fail(seq, what);
                return false;
            }
            self.last_ok = size;
            self.matched += 1;
            self.next += 1;
        }
        true
    }

    pub fn finish(mut self) -> Verification {
        let records = self.frontier.size();
        if self.problem.is_none() {
            if let Some((cp, from)) = self.checkpoints.get(self.next) {
                let what = format!(
                    "records {}..={} are missing (the checkpoint of size {} ({from}) covers them)",
                    records + 1,
                    cp.size,
                    cp.size
                );
                self.fail(records + 1, what);
            } else if records > 0 && self.checkpoints.is_empty() {
                self.fail(
                    1,
                    "no signed checkpoint covers the log (its checkpoints were removed)".into(),
                );
            }
        }
        let latest = self.checkpoints.last().map(|(c, _)| c.clone());
        Verification {
            records,
            head: (records > 0).then(|| Head {
                seq: records,
                hash: self.frontier.root(),
            }),
            checkpoints: self.matched,
            unanchored: records.saturating_sub(latest.as_ref().map_or(0, |c| c.size)),
            latest,
            pruned: self.pruned,
            problem: self.problem,
        }
    }
}

/// An inclusion proof: this record is in the log the checkpoint commits to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InclusionProof {
    pub record: Record,
    pub tree_size: u64,
    #[serde(with = "hex_list")]
    pub proof: Vec<Hash>,
    /// The signed checkpoint note.
    pub checkpoint: String,
}

/// A consistency proof: the log the newer checkpoint commits to extends the older one's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsistencyProof {
    pub old: String,
    pub new: String,
    #[serde(with = "hex_list")]
    pub proof: Vec<Hash>,
}

/// A proof as written to a file by `twinguard audit prove`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Proof {
    Inclusion(InclusionProof),
    Consistency(ConsistencyProof),
}

/// Longest proof file read.
pub const MAX_PROOF: usize = 64 * 1024 * 1024;

/// Checks a proof with only the log's public key; the answer says what it proves.
pub fn check_proof(proof: &Proof, key: &VerifyingKey) -> Result<String, AuditError> {
    let err = |m: String| AuditError::Proof(m);
    match proof {
        Proof::Inclusion(p) => {
            let cp = Checkpoint::open(&p.checkpoint, key).map_err(|e| err(e.to_string()))?;
            let leaf = p.record.computed_leaf().ok_or_else(|| {
                err(format!(
                    "record {} has no body (pruned): its contents cannot be shown",
                    p.record.seq
                ))
            })?;
            if leaf != p.record.leaf {
                return Err(err(format!(
                    "record {}'s contents do not match its leaf hash",
                    p.record.seq
                )));
            }
            if p.tree_size != cp.size {
                return Err(err(format!(
                    "the proof is for a tree of {} records, the checkpoint is of {}",
                    p.tree_size, cp.size
                )));
            }
            let index =
                p.record.seq.checked_sub(1).ok_or_else(|| {
                    err("record 0 does not exist (records count from 1)".to_string())
                })?;
            if merkle::verify_inclusion(&leaf, index, cp.size, &p.proof, &cp.root) {
                Ok(format!(
                    "record {} ({}) is in the log {} of {} records, root {}, signed {} UTC",
                    p.record.seq,
                    p.record.kind,
                    cp.origin,
                    cp.size,
                    cp.root_hex(),
                    format_utc(cp.timestamp_ms)
                ))
            } else {
                Err(err(format!(
                    "record {} is not in the log the checkpoint of size {} commits to",
                    p.record.seq, cp.size
                )))
            }
        }
        Proof::Consistency(p) => {
            let old = Checkpoint::open(&p.old, key).map_err(|e| err(format!("old {e}")))?;
            let new = Checkpoint::open(&p.new, key).map_err(|e| err(format!("new {e}")))?;
            if merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &p.proof) {
                Ok(format!(
                    "the log of {} records (root {}) extends the log of {} records (root {}) unchanged",
                    new.size,
                    new.root_hex(),
                    old.size,
                    old.root_hex()
                ))
            } else {
                Err(err(format!(
                    "the log of {} records does not extend the checkpoint of {} records: records up to {} were rewritten",
                    new.size, old.size, old.size
                )))
            }
        }
    }
}

/// `2026-01-01 06:30:00` (UTC) from milliseconds since the epoch.
pub fn format_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

mod hex_bytes {
    use serde::Deserialize;

    pub fn serialize<S: serde::Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(&s)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

mod hex_list {
    use serde::Deserialize;

    pub fn serialize<S: serde::Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(hex::encode))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        if v.len() > 128 {
            return Err(serde::de::Error::custom("a proof has at most 128 hashes"));
        }
        v.iter()
            .map(|s| {
                hex::decode(s)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
            })
            .collect()
    }
}
