//! Signing and verifying a model: an in-toto statement (the model's files as subjects, the
//! manifest as predicate) in a DSSE envelope signed with the publisher's Ed25519 key.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::{FileDigest, Manifest, digests, signature_path};
use crate::trust::TrustPolicy;
use crate::{MAX_META, ModelError, read_bounded};

pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://twinguard.dev/model-manifest/v1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub payload: String,
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    pub signatures: Vec<Sig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sig {
    pub keyid: String,
    pub sig: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub statement_type: String,
    pub subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    pub predicate: Manifest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subject {
    pub name: String,
    pub digest: BTreeMap<String, String>,
}

/// DSSE's pre-authentication encoding: what is signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut m = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    m.extend_from_slice(payload);
    m
}

/// A key's id: `ed25519:` and the first 8 bytes of SHA-256 of the public key, hex.
pub fn key_id(key: &VerifyingKey) -> String {
    let d = Sha256::digest(key.as_bytes());
    format!("ed25519:{}", hex::encode(d.get(..8).unwrap_or_default()))
}

/// Signs `manifest` over the model's files as they are now.
pub fn sign(model: &Path, manifest: &Manifest, key: &SigningKey) -> Result<Envelope, ModelError> {
    manifest
        .check()
        .map_err(|e| ModelError::invalid(model, format!("manifest: {e}")))?;
    let files = digests(model)?;
    for named in manifest.named_files() {
        if !files.iter().any(|f| f.name == named) {
            return Err(ModelError::invalid(
                model,
                format!("the manifest names {named:?}, which is not a file of the model"),
            ));
        }
    }
    let statement = Statement {
        statement_type: STATEMENT_TYPE.into(),
        subject: files
            .iter()
            .map(|f| Subject {
                name: f.name.clone(),
                digest: BTreeMap::from([("sha256".to_string(), f.sha256.clone())]),
            })
            .collect(),
        predicate_type: PREDICATE_TYPE.into(),
        predicate: manifest.clone(),
    };
    let payload =
        serde_json::to_vec(&statement).map_err(|e| ModelError::invalid(model, e.to_string()))?;
    let sig = key.sign(&pae(PAYLOAD_TYPE, &payload)).to_bytes();
    Ok(Envelope {
        payload: B64.encode(&payload),
        payload_type: PAYLOAD_TYPE.into(),
        signatures: vec![Sig {
            keyid: key_id(&key.verifying_key()),
            sig: B64.encode(sig),
        }],
    })
}

/// A model whose signature, publisher and files all check out.
#[derive(Debug, Clone, Serialize)]
pub struct Signed {
    pub manifest: Manifest,
    /// SHA-256 of the signed statement: the model's identity in every record.
    pub digest: String,
    pub publisher: String,
    pub key_id: String,
    pub files: Vec<FileDigest>,
}

/// Verifies a model against the trust policy; the error says why it is refused.
pub fn verify(model: &Path, trust: &TrustPolicy) -> Result<Signed, ModelError> {
    let sig_path = signature_path(model);
    if !sig_path.exists() {
        return Err(ModelError::Refused(format!(
            "{} is unsigned (no {})",
            model.display(),
            sig_path.display()
        )));
    }
    let bytes = read_bounded(&sig_path, MAX_META)?;
    let env: Envelope = serde_json::from_slice(&bytes)
        .map_err(|e| ModelError::invalid(&sig_path, format!("is not a DSSE envelope: {e}")))?;
    if env.payload_type != PAYLOAD_TYPE {
        return Err(ModelError::invalid(
            &sig_path,
            format!("payload type {:?} is not {PAYLOAD_TYPE}", env.payload_type),
        ));
    }
    let payload = B64
        .decode(&env.payload)
        .map_err(|e| ModelError::invalid(&sig_path, format!("payload is not base64: {e}")))?;
    let message = pae(&env.payload_type, &payload);
    // The signature first: nothing in an unverified payload is believed.
    let mut known_key = None;
    let mut signer = None;
    for s in &env.signatures {
        for p in trust.publishers_with_key_id(&s.keyid) {
            known_key = Some(p.name.clone());
            let ok = B64
                .decode(&s.sig)
                .ok()
                .and_then(|b| <[u8; 64]>::try_from(b).ok())
                .is_some_and(|b| {
                    p.key
                        .verify_strict(&message, &Signature::from_bytes(&b))
                        .is_ok()
                });
            if ok {
                signer = Some((p, s.keyid.clone()));
            }
        }
    }
    let Some((publisher, keyid)) = signer else {
        return Err(ModelError::Refused(match known_key {
            Some(name) => format!(
                "{}: the signature of publisher {name} does not verify: the manifest was altered after signing",
                model.display()
            ),
            None => format!(
                "{}: signed by {}, a key no trusted publisher holds",
                model.display(),
                env.signatures
                    .iter()
                    .map(|s| s.keyid.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }));
    };
    let statement: Statement = serde_json::from_slice(&payload).map_err(|e| {
        ModelError::invalid(
            &sig_path,
            format!("payload is not an in-toto statement: {e}"),
        )
    })?;
    if statement.statement_type != STATEMENT_TYPE || statement.predicate_type != PREDICATE_TYPE {
        return Err(ModelError::invalid(
            &sig_path,
            format!(
                "statement {} / {} is not a twinguard model manifest",
                statement.statement_type, statement.predicate_type
            ),
        ));
    }
    let manifest = statement.predicate.clone();
    manifest
        .check()
        .map_err(|e| ModelError::invalid(&sig_path, format!("manifest: {e}")))?;
    if manifest.publisher != publisher.name {
        return Err(ModelError::Refused(format!(
            "{}: the manifest names publisher {:?} but it is signed by {}",
            model.display(),
            manifest.publisher,
            publisher.name
        )));
    }
    if !publisher.kinds.iter().any(|k| k == &manifest.kind) {
        return Err(ModelError::Refused(format!(
            "{}: publisher {} may ship {}, not {} models",
            model.display(),
            publisher.name,
            publisher.kinds.join(", "),
            manifest.kind
        )));
    }
    let files = digests(model)?;
    for s in &statement.subject {
        let signed = s.digest.get("sha256").map(String::as_str).unwrap_or("");
        match files.iter().find(|f| f.name == s.name) {
            None => {
                return Err(ModelError::Refused(format!(
                    "{}: signed file {} is missing",
                    model.display(),
                    s.name
                )));
            }
            Some(f) if f.sha256 != signed => {
                return Err(ModelError::Refused(format!(
                    "{}: file {} was altered after signing (SHA-256 {}, signed {})",
                    model.display(),
                    s.name,
                    f.sha256,
                    signed
                )));
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = files
        .iter()
        .find(|f| !statement.subject.iter().any(|s| s.name == f.name))
    {
        return Err(ModelError::Refused(format!(
            "{}: file {} is not in the signed manifest",
            model.display(),
            extra.name
        )));
    }
    for named in manifest.named_files() {
        if !files.iter().any(|f| f.name == named) {
            return Err(ModelError::Refused(format!(
                "{}: the manifest names {named:?}, which is not a file of the model",
                model.display()
            )));
        }
    }
    Ok(Signed {
        manifest,
        digest: hex::encode(Sha256::digest(&payload)),
        publisher: publisher.name.clone(),
        key_id: keyid,
        files,
    })
}
