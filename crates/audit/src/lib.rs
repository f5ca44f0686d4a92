//! The append-only, hash-chained audit log and the quarantine of rejected frames.
//!
//! Every record's hash covers its sequence number, time, kind, body and the previous
//! record's hash, so an edit, deletion, insertion or reordering breaks the chain at the
//! first record touched. The newest (sequence, hash) pair is kept as a *head* signed with
//! the install's audit key, so that cutting records off the end is detected too.
//!
//! Storage sits behind [`AuditStore`]; [`SqliteStore`] is the default. A later Merkle-tree
//! log (RFC 9162 style checkpoints and proofs) replaces the chain behind the same trait.

mod sqlite;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use sqlite::{DEFAULT_QUARANTINE_CAP, SqliteStore};

/// Hash that precedes the first record.
pub const GENESIS: [u8; 32] = [0u8; 32];

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit database {path}: {message}")]
    Open { path: String, message: String },
    #[error("audit database {path}: {message}")]
    Io { path: String, message: String },
    #[error("audit body for {kind} is not valid JSON: {message}")]
    Body { kind: String, message: String },
}

/// One event to record.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub ts_ms: i64,
    pub kind: String,
    pub body: serde_json::Value,
}

impl Entry {
    pub fn new(ts_ms: i64, kind: &str, body: serde_json::Value) -> Entry {
        Entry {
            ts_ms,
            kind: kind.to_string(),
            body,
        }
    }
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    pub seq: u64,
    pub ts_ms: i64,
    pub kind: String,
    pub body: String,
    #[serde(with = "hex_bytes")]
    pub prev_hash: [u8; 32],
    #[serde(with = "hex_bytes")]
    pub hash: [u8; 32],
}

/// The newest record, as signed by the audit key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Head {
    pub seq: u64,
    #[serde(with = "hex_bytes")]
    pub hash: [u8; 32],
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

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verification {
    pub records: u64,
    pub head: Option<Head>,
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
    fn verify(&self, key: &VerifyingKey) -> Result<Verification, AuditError>;
}

/// The chain hash of one record.
pub fn record_hash(seq: u64, ts_ms: i64, kind: &str, body: &str, prev: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"twinguard/audit/v1\0");
    h.update(seq.to_be_bytes());
    h.update(ts_ms.to_be_bytes());
    h.update((kind.len() as u64).to_be_bytes());
    h.update(kind.as_bytes());
    h.update((body.len() as u64).to_be_bytes());
    h.update(body.as_bytes());
    h.update(prev);
    h.finalize().into()
}

fn head_message(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut m = b"twinguard/audit-head/v1\0".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

pub fn sign_head(key: &SigningKey, head: &Head) -> [u8; 64] {
    key.sign(&head_message(head.seq, &head.hash)).to_bytes()
}

pub fn head_signature_ok(key: &VerifyingKey, head: &Head, sig: &[u8; 64]) -> bool {
    key.verify_strict(
        &head_message(head.seq, &head.hash),
        &Signature::from_bytes(sig),
    )
    .is_ok()
}

/// Checks a sequence of stored records (in storage order) against the chain rules and the
/// signed head. Shared by every store so that they agree on what "intact" means.
pub fn check_chain<I>(
    records: I,
    signed_head: Option<(Head, [u8; 64])>,
    key: &VerifyingKey,
) -> Verification
where
    I: IntoIterator<Item = Record>,
{
    let mut prev = GENESIS;
    let mut count = 0u64;
    let mut last: Option<Head> = None;
    for (expected_seq, r) in (1u64..).zip(records) {
        count += 1;
        let problem = if r.seq != expected_seq {
            if r.seq > expected_seq {
                Some(format!(
                    "record {expected_seq} is missing (next stored record is {})",
                    r.seq
                ))
            } else {
                Some(format!(
                    "record {} is out of order (expected {expected_seq})",
                    r.seq
                ))
            }
        } else if r.prev_hash != prev {
            Some("its previous-hash does not match the record before it (inserted, reordered or edited)".to_string())
        } else if record_hash(r.seq, r.ts_ms, &r.kind, &r.body, &r.prev_hash) != r.hash {
            Some("its contents do not match its hash (edited)".to_string())
        } else {
            None
        };
        if let Some(what) = problem {
            return Verification {
                records: count,
                head: last,
                problem: Some(Problem {
                    seq: expected_seq,
                    what,
                }),
            };
        }
        prev = r.hash;
        last = Some(Head {
            seq: r.seq,
            hash: r.hash,
        });
    }
    let problem = match (&signed_head, &last) {
        (None, None) => None,
        (None, Some(_)) => Some(Problem {
            seq: 1,
            what: "the signed head is missing".into(),
        }),
        (Some((head, sig)), _) if !head_signature_ok(key, head, sig) => Some(Problem {
            seq: head.seq,
            what: "the head's signature does not verify with the audit key".into(),
        }),
        (Some((head, _)), None) => Some(Problem {
            seq: 1,
            what: format!(
                "the signed head names record {} but no records are stored",
                head.seq
            ),
        }),
        (Some((head, _)), Some(last)) if head.seq > last.seq => Some(Problem {
            seq: last.seq + 1,
            what: format!(
                "records {}..={} are missing (the signed head names record {})",
                last.seq + 1,
                head.seq,
                head.seq
            ),
        }),
        (Some((head, _)), Some(last)) if head != last => Some(Problem {
            seq: last.seq,
            what: "the newest record does not match the signed head".into(),
        }),
        _ => None,
    };
    Verification {
        records: count,
        head: last,
        problem,
    }
}

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }
}

impl Head {
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }
}
