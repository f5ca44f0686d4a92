//! The OPC UA certificate trust list: `own/` (this application's instance certificate),
//! `trusted/` and `rejected/`, in the directory layout async-opcua (and most OPC UA stacks)
//! use. An unknown peer certificate is written to `rejected/` by the stack and the
//! connection is refused; an operator moves it to `trusted/` with [`trust`] after checking
//! its thumbprint out of band.

use std::path::{Path, PathBuf};

use opcua::crypto::X509;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Largest certificate file read (a certificate is a few KiB).
const MAX_CERT_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path} is not a DER X.509 certificate: {message}")]
    BadCertificate { path: PathBuf, message: String },
    #[error(
        "no {state} certificate has a thumbprint starting with {prefix:?} (see `twinguard pki list`)"
    )]
    NotFound { state: &'static str, prefix: String },
    #[error("thumbprint prefix {prefix:?} matches {count} certificates; give more digits")]
    Ambiguous { prefix: String, count: usize },
    #[error("a thumbprint prefix needs at least 8 hex digits, got {0:?}")]
    ShortPrefix(String),
}

/// Where a certificate sits in the trust list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertState {
    Own,
    Trusted,
    Rejected,
}

impl CertState {
    fn dir(self) -> &'static str {
        match self {
            CertState::Own => "own",
            CertState::Trusted => "trusted",
            CertState::Rejected => "rejected",
        }
    }
}

/// One certificate of the trust list.
#[derive(Debug, Clone, Serialize)]
pub struct CertEntry {
    pub state: CertState,
    pub file: PathBuf,
    pub subject: String,
    /// SHA-1 thumbprint, as OPC UA names certificates (and as the file names use).
    pub thumbprint: String,
    /// SHA-256 fingerprint of the DER bytes (what provenance records).
    pub sha256: String,
    pub not_after: String,
}

/// SHA-256 fingerprint (lower-case hex) of a certificate's DER bytes.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Describes a DER certificate.
pub fn describe(der: &[u8], state: CertState, file: PathBuf) -> Result<CertEntry, PkiError> {
    let cert = X509::from_der(der).map_err(|e| PkiError::BadCertificate {
        path: file.clone(),
        message: e.to_string(),
    })?;
    Ok(CertEntry {
        state,
        subject: cert.subject_name(),
        thumbprint: cert.thumbprint().as_hex_string().to_lowercase(),
        sha256: sha256_fingerprint(der),
        not_after: cert
            .not_after()
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|_| "unknown".into()),
        file,
    })
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, PkiError> {
    let io = |e: std::io::Error| PkiError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_CERT_BYTES {
        return Err(PkiError::BadCertificate {
            path: path.to_path_buf(),
            message: format!("{len} bytes, more than the {MAX_CERT_BYTES} a certificate may have"),
        });
    }
    std::fs::read(path).map_err(io)
}

fn list_state(pki: &Path, state: CertState) -> Result<Vec<CertEntry>, PkiError> {
    let dir = pki.join(state.dir());
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(PkiError::Io {
                path: dir,
                message: e.to_string(),
            });
        }
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(|err| PkiError::Io {
            path: dir.clone(),
            message: err.to_string(),
        })?;
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("der") {
            continue;
        }
        let der = read_bounded(&path)?;
        out.push(describe(&der, state, path)?);
    }
    out.sort_by(|a, b| {
        a.subject
            .cmp(&b.subject)
            .then(a.thumbprint.cmp(&b.thumbprint))
    });
    Ok(out)
}

/// Every certificate in the trust list: own, trusted, rejected.
pub fn list(pki: &Path) -> Result<Vec<CertEntry>, PkiError> {
    let mut all = list_state(pki, CertState::Own)?;
    all.extend(list_state(pki, CertState::Trusted)?);
    all.extend(list_state(pki, CertState::Rejected)?);
    Ok(all)
}

fn find(pki: &Path, state: CertState, prefix: &str) -> Result<CertEntry, PkiError> {
    let prefix = prefix.trim().to_lowercase().replace(':', "");
    if prefix.len() < 8 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(PkiError::ShortPrefix(prefix));
    }
    let mut hits: Vec<CertEntry> = list_state(pki, state)?
        .into_iter()
        .filter(|c| c.thumbprint.starts_with(&prefix) || c.sha256.starts_with(&prefix))
        .collect();
    match hits.len() {
        0 => Err(PkiError::NotFound {
            state: state.dir(),
            prefix,
        }),
        1 => Ok(hits.remove(0)),
        count => Err(PkiError::Ambiguous { prefix, count }),
    }
}

fn move_to(pki: &Path, entry: &CertEntry, state: CertState) -> Result<PathBuf, PkiError> {
    let dir = pki.join(state.dir());
    std::fs::create_dir_all(&dir).map_err(|e| PkiError::Io {
        path: dir.clone(),
        message: e.to_string(),
    })?;
    let name = entry
        .file
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("{}.der", entry.thumbprint)));
    let to = dir.join(name);
    std::fs::rename(&entry.file, &to).map_err(|e| PkiError::Io {
        path: entry.file.clone(),
        message: e.to_string(),
    })?;
    Ok(to)
}

/// Moves a rejected certificate (by thumbprint prefix, SHA-1 or SHA-256) to `trusted/`.
pub fn trust(pki: &Path, prefix: &str) -> Result<CertEntry, PkiError> {
    let mut entry = find(pki, CertState::Rejected, prefix)?;
    entry.file = move_to(pki, &entry, CertState::Trusted)?;
    entry.state = CertState::Trusted;
    Ok(entry)
}

/// Moves a trusted certificate to `rejected/`: connections to or from it are refused.
pub fn reject(pki: &Path, prefix: &str) -> Result<CertEntry, PkiError> {
    let mut entry = find(pki, CertState::Trusted, prefix)?;
    entry.file = move_to(pki, &entry, CertState::Rejected)?;
    entry.state = CertState::Rejected;
    Ok(entry)
}

/// Adds a certificate to `trusted/` directly (for an installer that exchanged certificates
/// out of band, as the demo does between its own plant server and twinguard).
pub fn add_trusted(pki: &Path, der: &[u8]) -> Result<CertEntry, PkiError> {
    let probe = describe(der, CertState::Trusted, PathBuf::new())?;
    let dir = pki.join("trusted");
    std::fs::create_dir_all(&dir).map_err(|e| PkiError::Io {
        path: dir.clone(),
        message: e.to_string(),
    })?;
    let cert = X509::from_der(der).map_err(|e| PkiError::BadCertificate {
        path: PathBuf::new(),
        message: e.to_string(),
    })?;
    let file = dir.join(opcua::crypto::CertificateStore::cert_file_name(&cert));
    std::fs::write(&file, der).map_err(|e| PkiError::Io {
        path: file.clone(),
        message: e.to_string(),
    })?;
    Ok(CertEntry { file, ..probe })
}

/// This application's own instance certificate (DER), if one has been created.
pub fn own_certificate(pki: &Path) -> Result<Vec<u8>, PkiError> {
    read_bounded(&pki.join("own").join("cert.der"))
}
