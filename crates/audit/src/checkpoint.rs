//! Signed checkpoints: the log's size and tree root at a moment, in the C2SP
//! `tlog-checkpoint` text format, signed as a C2SP signed note with the install's audit key
//! (Ed25519). A checkpoint handed to someone commits the log to every record it covers: a
//! later log that does not extend it fails the consistency proof.
//!
//! ```text
//! twinguard/audit/3f2a…          origin: names this log (from its public key)
//! 1042                           tree size
//! q0Zz…=                         root, base64
//! timestamp 1764151200000        extension line: when it was signed (ms since the epoch)
//!
//! — twinguard/audit/3f2a… AbCd…  key id (4 bytes) and signature, base64
//! ```

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;

/// Longest checkpoint note accepted (they are a few hundred bytes).
pub const MAX_NOTE: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    #[serde(with = "crate::hex_bytes")]
    pub root: Hash,
    pub timestamp_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("checkpoint is {0} bytes, more than the {MAX_NOTE} accepted")]
    TooLong(usize),
    #[error("checkpoint is malformed: {0}")]
    Malformed(String),
    #[error("checkpoint carries no signature by the audit key of {0}")]
    NotSigned(String),
    #[error("checkpoint's signature does not verify with the audit key of {0}")]
    BadSignature(String),
}

/// The log's name, derived from its public key, so that two installs never share one.
pub fn origin_for(key: &VerifyingKey) -> String {
    let d = Sha256::digest(key.as_bytes());
    format!(
        "twinguard/audit/{}",
        hex::encode(d.get(..8).unwrap_or_default())
    )
}

/// The signed-note key id: the first four bytes of SHA-256(name ‖ "\n" ‖ 0x01 ‖ key).
fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n\x01");
    h.update(key.as_bytes());
    let d: [u8; 32] = h.finalize().into();
    [d[0], d[1], d[2], d[3]]
}

impl Checkpoint {
    /// The signed text (every line ends with a newline).
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\ntimestamp {}\n",
            self.origin,
            self.size,
            B64.encode(self.root),
            self.timestamp_ms
        )
    }

    /// The whole signed note.
    pub fn sign(&self, key: &SigningKey) -> String {
        let body = self.body();
        let sig = key.sign(body.as_bytes()).to_bytes();
        let mut blob = key_id(&self.origin, &key.verifying_key()).to_vec();
        blob.extend_from_slice(&sig);
        format!("{body}\n\u{2014} {} {}\n", self.origin, B64.encode(blob))
    }

    pub fn root_hex(&self) -> String {
        hex::encode(self.root)
    }

    /// Reads a signed note and checks its signature by `key` (the log's key: its origin is
    /// derived from it). Bounded; never panics.
    pub fn open(note: &str, key: &VerifyingKey) -> Result<Checkpoint, NoteError> {
        if note.len() > MAX_NOTE {
            return Err(NoteError::TooLong(note.len()));
        }
        let origin = origin_for(key);
        let bad = |m: &str| NoteError::Malformed(m.to_string());
        let (body, sigs) = note
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line between the text and its signatures"))?;
        let body = format!("{body}\n");
        let mut lines = body.lines();
        let named = lines.next().ok_or_else(|| bad("no origin line"))?;
        let size: u64 = lines
            .next()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| bad("the second line is not a tree size"))?;
        let root: Hash = lines
            .next()
            .and_then(|l| B64.decode(l).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("the third line is not a base64 SHA-256 root"))?;
        let timestamp_ms = lines
            .find_map(|l| l.strip_prefix("timestamp "))
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        if named != origin {
            return Err(NoteError::NotSigned(format!(
                "{origin} (this checkpoint is of {named})"
            )));
        }
        let id = key_id(&origin, key);
        let mut found = false;
        for line in sigs.lines().filter(|l| !l.is_empty()) {
            let rest = line
                .strip_prefix("\u{2014} ")
                .ok_or_else(|| bad("a signature line does not start with an em dash"))?;
            let (name, blob) = rest
                .split_once(' ')
                .ok_or_else(|| bad("a signature line has no signature"))?;
            let blob = B64
                .decode(blob)
                .map_err(|_| bad("a signature is not base64"))?;
            if name != origin || blob.get(..4) != Some(&id[..]) {
                continue;
            }
            found = true;
            let sig: [u8; 64] = blob
                .get(4..)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| bad("the signature is not 64 bytes"))?;
            if key
                .verify_strict(body.as_bytes(), &Signature::from_bytes(&sig))
                .is_ok()
            {
                return Ok(Checkpoint {
                    origin,
                    size,
                    root,
                    timestamp_ms,
                });
            }
        }
        Err(if found {
            NoteError::BadSignature(origin)
        } else {
            NoteError::NotSigned(origin)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code: a panic is a test failure")]
mod tests {
    use super::*;

    #[test]
    fn a_signed_checkpoint_opens_and_any_change_is_refused() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let other = SigningKey::from_bytes(&[4u8; 32]);
        let cp = Checkpoint {
            origin: origin_for(&key.verifying_key()),
            size: 1042,
            root: [9u8; 32],
            timestamp_ms: 1_764_151_200_000,
        };
        let note = cp.sign(&key);
        assert_eq!(Checkpoint::open(&note, &key.verifying_key()).unwrap(), cp);
        let e = Checkpoint::open(&note.replace("\n1042\n", "\n1043\n"), &key.verifying_key());
        assert!(matches!(e, Err(NoteError::BadSignature(_))), "{e:?}");
        let e = Checkpoint::open(&note, &other.verifying_key());
        assert!(matches!(e, Err(NoteError::NotSigned(_))), "{e:?}");
        for junk in ["", "x\n\n", "a\nb\nc\n\n— a b\n", &"x".repeat(MAX_NOTE + 1)] {
            assert!(Checkpoint::open(junk, &key.verifying_key()).is_err());
        }
    }
}
