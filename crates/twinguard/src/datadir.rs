//! The data directory: per-install keys and secrets, the device registry, the audit
//! database. Every key is generated on first use on this machine; nothing is built in.
//!
//! ```text
//! DATA_DIR/
//!   audit.db                the hash-chained audit log and the quarantine
//!   keys/audit.key          signs the audit head            (0600)
//!   keys/audit.pub
//!   keys/actuation.key      signs commands to the plant     (0600)
//!   keys/actuation.pub      what the plant trusts for commands
//!   keys/agent-NAME.key     one per in-process agent        (0600)
//!   edge/DEVICE.key         the simulated edge devices' keys (0600; they live on the edge)
//!   devices.toml            device registry: id, asset, public key
//!   secrets/operator.token  operator API token              (0600)
//!   secrets/mqtt.toml       embedded broker credentials     (0600)
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ed25519_dalek::{SigningKey, VerifyingKey};
use frames::keys;
use plant_model::Plant;
use serde::{Deserialize, Serialize};

pub struct DataDir {
    pub root: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    devices: BTreeMap<String, DeviceEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEntry {
    pub asset: String,
    pub public_key: String,
}

/// Credentials of the embedded broker's accounts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSecrets {
    pub users: BTreeMap<String, String>,
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

impl DataDir {
    pub fn open(root: &Path) -> Result<DataDir> {
        if root.exists() && !root.is_dir() {
            bail!(
                "data directory {} exists and is not a directory",
                root.display()
            );
        }
        fs::create_dir_all(root)
            .with_context(|| format!("cannot create data directory {}", root.display()))?;
        Ok(DataDir {
            root: root.to_path_buf(),
        })
    }

    pub fn audit_db(&self) -> PathBuf {
        self.root.join("audit.db")
    }

    /// A twinguard key, created on first use; its public half is written beside it.
    pub fn key(&self, name: &str) -> Result<SigningKey> {
        let path = self.root.join("keys").join(format!("{name}.key"));
        let key = keys::load_or_create(&path)?;
        let public = self.root.join("keys").join(format!("{name}.pub"));
        if !public.exists() {
            fs::write(&public, keys::public_hex(&key.verifying_key()))
                .with_context(|| format!("cannot write {}", public.display()))?;
        }
        Ok(key)
    }

    pub fn public_key(&self, name: &str) -> Result<VerifyingKey> {
        let path = self.root.join("keys").join(format!("{name}.pub"));
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(keys::parse_public(&text, &path.display().to_string())?)
    }

    /// The simulated edge device's own key (kept under edge/, as it would live on the device).
    pub fn edge_key(&self, device: &str) -> Result<SigningKey> {
        Ok(keys::load_or_create(
            &self.root.join("edge").join(format!("{device}.key")),
        )?)
    }

    fn registry_path(&self) -> PathBuf {
        self.root.join("devices.toml")
    }

    /// Reads the device registry (empty when absent).
    pub fn devices(&self) -> Result<BTreeMap<String, DeviceEntry>> {
        let path = self.registry_path();
        if !path.exists() {
            return Ok(BTreeMap::new());
        }
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let reg: RegistryFile = toml::from_str(&text)
            .with_context(|| format!("device registry {} is not valid", path.display()))?;
        for (id, d) in &reg.devices {
            keys::parse_public(
                &d.public_key,
                &format!("{}: devices.{id}.public_key", path.display()),
            )?;
        }
        Ok(reg.devices)
    }

    /// Enrols the plant's edge devices: each gets a key on the edge side and its public key
    /// goes into the registry. Existing entries are kept.
    pub fn enrol_edge_devices(&self, plant: &Plant) -> Result<BTreeMap<String, DeviceEntry>> {
        let mut devices = self.devices()?;
        let mut changed = false;
        for a in &plant.assets {
            let key = self.edge_key(&a.device)?;
            let public_key = keys::public_hex(&key.verifying_key());
            let entry = DeviceEntry {
                asset: a.id.clone(),
                public_key,
            };
            let same = devices
                .get(&a.device)
                .is_some_and(|d| d.public_key == entry.public_key && d.asset == entry.asset);
            if !same {
                devices.insert(a.device.clone(), entry);
                changed = true;
            }
        }
        if changed {
            let text = toml::to_string(&RegistryFile {
                devices: devices.clone(),
            })?;
            fs::write(
                self.registry_path(),
                format!(
                    "# twinguard device registry: devices whose signed frames are accepted\n{text}"
                ),
            )
            .with_context(|| format!("cannot write {}", self.registry_path().display()))?;
        }
        Ok(devices)
    }

    /// The operator API token, created on first use.
    pub fn operator_token(&self) -> Result<String> {
        let path = self.root.join("secrets").join("operator.token");
        if path.exists() {
            let t = fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let t = t.trim().to_string();
            if t.len() < 32 {
                bail!(
                    "operator token in {} is shorter than 32 characters",
                    path.display()
                );
            }
            return Ok(t);
        }
        let t = keys::random_hex(32)?;
        write_private(&path, &t)?;
        Ok(t)
    }

    /// Credentials for the embedded broker's accounts, created on first use.
    pub fn mqtt_secrets(&self, users: &[&str]) -> Result<MqttSecrets> {
        let path = self.root.join("secrets").join("mqtt.toml");
        let mut s = if path.exists() {
            let text = fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?
        } else {
            MqttSecrets {
                users: BTreeMap::new(),
            }
        };
        let mut changed = !path.exists();
        for u in users {
            if !s.users.contains_key(*u) {
                s.users.insert(u.to_string(), keys::random_hex(16)?);
                changed = true;
            }
        }
        if changed {
            write_private(&path, &toml::to_string(&s)?)?;
        }
        Ok(s)
    }
}
