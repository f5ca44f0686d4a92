//! Model admission: what a model is (its signed manifest), who may ship which kind (the
//! trust policy), what is inside it (the scanner), and which models a plant runs (the
//! registry), and the runtime for ONNX graphs. The binary runs twinguard's own detector
//! and RUL files itself.
//!
//! A model is a directory of files or a single file. Its publisher signs a manifest that
//! lists every file's SHA-256 with its name, kind, intended use, limitations, training
//! data digest and metrics, as an in-toto statement in a DSSE envelope (the shape OpenSSF
//! model signing uses) with an Ed25519 key.

pub mod dsse;
pub mod manifest;
pub mod onnx;
pub mod registry;
pub mod runtime;
pub mod scan;
pub mod trust;

use std::io::Read;
use std::path::Path;

pub use dsse::{Envelope, Signed, Statement};
pub use manifest::{FileDigest, Manifest, OnnxInterface};
pub use registry::{Entry as RegistryEntry, Registry, State};
pub use scan::{Finding, Severity};
pub use trust::TrustPolicy;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("refused: {0}")]
    Refused(String),
}

impl ModelError {
    pub fn io(path: &Path, e: impl std::fmt::Display) -> ModelError {
        ModelError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }

    pub fn invalid(path: &Path, message: impl Into<String>) -> ModelError {
        ModelError::Invalid {
            path: path.display().to_string(),
            message: message.into(),
        }
    }
}

/// Largest file of a model read (and hashed, and scanned).
pub const MAX_FILE: u64 = 2 * 1024 * 1024 * 1024;
/// Largest manifest, signature or registry file read.
pub const MAX_META: u64 = 4 * 1024 * 1024;

/// Reads a small file, refusing one larger than `max`.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, ModelError> {
    let f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut buf = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ModelError::io(path, e))?;
    if buf.len() as u64 > max {
        return Err(ModelError::invalid(
            path,
            format!("is larger than the {max} bytes read"),
        ));
    }
    Ok(buf)
}

/// SHA-256 of a file, streamed.
pub fn file_sha256(path: &Path) -> Result<String, ModelError> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| ModelError::io(path, e))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > MAX_FILE {
            return Err(ModelError::invalid(
                path,
                format!("is larger than the {MAX_FILE} bytes a model file may be"),
            ));
        }
        h.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hex::encode(h.finalize()))
}
