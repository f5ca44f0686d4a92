//! Ed25519 keys: generation from the operating system's generator and key files.
//!
//! A secret key file holds 64 hex characters and is created with mode 0600; a public key
//! is written as 64 hex characters. Secrets are never printed: a [`KeyError`] names the
//! file and what is wrong with it, never its contents.

use std::fs;
use std::io::Write;
use std::path::Path;

use ed25519_dalek::{SigningKey, VerifyingKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} does not hold 64 hex characters")]
    Format { path: String },
    #[error("{what} is not a valid Ed25519 public key (64 hex characters)")]
    BadPublic { what: String },
    #[error("the operating system's random generator failed: {0}")]
    Random(String),
}

/// A fresh key from the operating system's generator.
pub fn generate() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Random bytes, hex encoded (tokens, passwords).
pub fn random_hex(bytes: usize) -> Result<String, KeyError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(hex::encode(buf))
}

/// Loads the secret key at `path`, creating it (mode 0600) if it does not exist.
pub fn load_or_create(path: &Path) -> Result<SigningKey, KeyError> {
    if path.exists() {
        return load(path);
    }
    let key = generate()?;
    let write_err = |source| KeyError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(write_err)?;
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(write_err)?;
    f.write_all(hex::encode(key.to_bytes()).as_bytes())
        .map_err(write_err)?;
    Ok(key)
}

pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
    let text = fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| KeyError::Format {
            path: path.display().to_string(),
        })?;
    Ok(SigningKey::from_bytes(&bytes))
}

pub fn public_hex(key: &VerifyingKey) -> String {
    hex::encode(key.to_bytes())
}

pub fn parse_public(hex_text: &str, what: &str) -> Result<VerifyingKey, KeyError> {
    let bad = || KeyError::BadPublic {
        what: what.to_string(),
    };
    let bytes: [u8; 32] = hex::decode(hex_text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad())?;
    // Small-order keys would let one signature verify for many messages.
    if key.is_weak() {
        return Err(bad());
    }
    Ok(key)
}
