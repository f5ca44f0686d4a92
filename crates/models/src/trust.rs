//! Which publishers' keys are trusted, for which kinds of model (`models/trust.toml` in
//! the data directory). No file, or a publisher not in it: nothing is trusted.
//!
//! ```toml
//! [[publisher]]
//! name = "acme-ml"
//! key = "3b6a27bc…"          # Ed25519 public key, hex
//! kinds = ["detector", "rul"]
//! ```

use std::path::Path;

use ed25519_dalek::VerifyingKey;
use serde::Deserialize;

use crate::manifest::KINDS;
use crate::{MAX_META, ModelError, read_bounded};

#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    pub publishers: Vec<Publisher>,
}

#[derive(Debug, Clone)]
pub struct Publisher {
    pub name: String,
    pub key: VerifyingKey,
    pub kinds: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    publisher: Vec<PublisherFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublisherFile {
    name: String,
    key: String,
    kinds: Vec<String>,
}

impl TrustPolicy {
    /// Reads the policy; a missing file is the empty policy (nothing trusted).
    pub fn load(path: &Path) -> Result<TrustPolicy, ModelError> {
        if !path.exists() {
            return Ok(TrustPolicy::default());
        }
        let bytes = read_bounded(path, MAX_META)?;
        let text =
            String::from_utf8(bytes).map_err(|_| ModelError::invalid(path, "is not UTF-8 text"))?;
        TrustPolicy::parse(&text).map_err(|e| ModelError::invalid(path, e))
    }

    pub fn parse(text: &str) -> Result<TrustPolicy, String> {
        let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut publishers = Vec::new();
        for (i, p) in f.publisher.into_iter().enumerate() {
            let at = format!("publisher {} ({:?})", i + 1, p.name);
            if p.name.trim().is_empty() {
                return Err(format!("{at}: name is empty"));
            }
            let key: [u8; 32] = hex::decode(p.key.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("{at}: key is not a 32-byte Ed25519 public key in hex"))?;
            let key = VerifyingKey::from_bytes(&key)
                .map_err(|e| format!("{at}: key is not a valid Ed25519 point: {e}"))?;
            if let Some(k) = p.kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
                return Err(format!(
                    "{at}: kind {k:?} is not one of {}",
                    KINDS.join(", ")
                ));
            }
            publishers.push(Publisher {
                name: p.name,
                key,
                kinds: p.kinds,
            });
        }
        Ok(TrustPolicy { publishers })
    }

    pub fn publishers_with_key_id<'a>(
        &'a self,
        keyid: &'a str,
    ) -> impl Iterator<Item = &'a Publisher> + 'a {
        self.publishers
            .iter()
            .filter(move |p| crate::dsse::key_id(&p.key) == keyid)
    }
}
