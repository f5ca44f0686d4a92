//! The data directory: per-install keys and secrets, the device registry, the audit
//! database. Every key is generated on first use on this machine; nothing is built in.
//!
//! ```text
//! DATA_DIR/
//!   audit.db                the Merkle tree audit log, its checkpoints and the quarantine
//!   keys/audit.key          signs the audit head            (0600)
//!   keys/audit.pub
//!   keys/actuation.key      signs commands to the plant     (0600)
//!   keys/actuation.pub      what the plant trusts for commands
//!   keys/agent-NAME.key     one per in-process agent        (0600)
//!   edge/DEVICE.key         the simulated edge devices' keys (0600; they live on the edge)
//!   devices.toml            device registry: id, asset, public key
//!   agents.toml             external agents: public key, scope, revoked
//!   users.toml              people: role, Argon2id password hash, API token SHA-256 (0600)
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
    /// A single Ed25519 public key valid forever (short form of one `keys` entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyEntry>,
}

/// One key of a device: an Ed25519 public key or a file holding an HMAC secret (64+ hex
/// characters), with its validity window in milliseconds since the epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ed25519: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after_ms: Option<i64>,
}

/// An external agent: its Ed25519 public key and what its tokens may reach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    pub public_key: String,
    pub kinds: Vec<String>,
    pub assets: Vec<String>,
    #[serde(default)]
    pub revoked: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentsFile {
    #[serde(default)]
    agents: BTreeMap<String, AgentEntry>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: BTreeMap<String, api::accounts::Account>,
}

/// Names the built-in agents use; an external agent may not take them.
pub const BUILT_IN_AGENTS: [&str; 2] = ["maintenance", "optimiser"];

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

    pub fn root(&self) -> &Path {
        &self.root
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

    pub fn users_path(&self) -> PathBuf {
        self.root.join("users.toml")
    }

    /// People's accounts (none when the file is absent).
    pub fn users(&self) -> Result<BTreeMap<String, api::accounts::Account>> {
        let path = self.users_path();
        if !path.exists() {
            return Ok(BTreeMap::new());
        }
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let file: UsersFile = toml::from_str(&text)
            .with_context(|| format!("user accounts {} are not valid", path.display()))?;
        Ok(file.users)
    }

    /// Writes people's accounts (mode 0600, atomically).
    pub fn write_users(&self, users: &BTreeMap<String, api::accounts::Account>) -> Result<()> {
        let text = toml::to_string(&UsersFile {
            users: users.clone(),
        })?;
        let tmp = self.root.join("users.toml.tmp");
        write_private(
            &tmp,
            &format!("# twinguard user accounts: roles, password hashes, token hashes\n{text}"),
        )?;
        fs::rename(&tmp, self.users_path())
            .with_context(|| format!("cannot write {}", self.users_path().display()))
    }

    pub fn agents_path(&self) -> PathBuf {
        self.root.join("agents.toml")
    }

    /// The external agents (none when the file is absent).
    pub fn agents(&self) -> Result<BTreeMap<String, AgentEntry>> {
        let path = self.agents_path();
        if !path.exists() {
            return Ok(BTreeMap::new());
        }
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let file: AgentsFile = toml::from_str(&text)
            .with_context(|| format!("agent registry {} is not valid", path.display()))?;
        Ok(file.agents)
    }

    /// Writes the external agents (atomically: a running twinguard never reads half a file).
    pub fn write_agents(&self, agents: &BTreeMap<String, AgentEntry>) -> Result<()> {
        let text = toml::to_string(&AgentsFile {
            agents: agents.clone(),
        })?;
        let path = self.agents_path();
        let tmp = self.root.join("agents.toml.tmp");
        fs::write(
            &tmp,
            format!("# twinguard agent registry: external agents, their keys and scopes\n{text}"),
        )
        .with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    /// The device registry file (`devices.toml`).
    pub fn registry_path(&self) -> PathBuf {
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
        Ok(reg.devices)
    }

    /// The registry as ingest uses it: every key parsed and checked, HMAC secrets read.
    pub fn registry(&self) -> Result<Vec<ingest::Device>> {
        let path = self.registry_path();
        let mut out = Vec::new();
        for (id, d) in self.devices()? {
            let mut keys = Vec::new();
            if let Some(pk) = &d.public_key {
                let key = keys::parse_public(
                    pk,
                    &format!("{}: devices.{id}.public_key", path.display()),
                )?;
                keys.push(ingest::DeviceKey {
                    id: format!("{id}#0"),
                    material: ingest::KeyMaterial::Ed25519(key),
                    not_before_ms: None,
                    not_after_ms: None,
                });
            }
            for (i, k) in d.keys.iter().enumerate() {
                let at = format!("{}: devices.{id}.keys[{i}] ({})", path.display(), k.id);
                let material = match (&k.ed25519, &k.hmac_secret_file) {
                    (Some(pk), None) => ingest::KeyMaterial::Ed25519(keys::parse_public(
                        pk,
                        &format!("{at}.ed25519"),
                    )?),
                    (None, Some(file)) => {
                        let p = self.root.join(file);
                        let text = fs::read_to_string(&p).with_context(|| {
                            format!("{at}: cannot read HMAC secret {}", p.display())
                        })?;
                        let secret = hex::decode(text.trim())
                            .with_context(|| format!("{at}: {} is not hex", p.display()))?;
                        if secret.len() < 32 {
                            bail!(
                                "{at}: HMAC secret in {} is {} bytes, at least 32 are needed",
                                p.display(),
                                secret.len()
                            );
                        }
                        ingest::KeyMaterial::HmacSha256(secret)
                    }
                    _ => bail!("{at}: needs exactly one of ed25519 or hmac_secret_file"),
                };
                keys.push(ingest::DeviceKey {
                    id: k.id.clone(),
                    material,
                    not_before_ms: k.not_before_ms,
                    not_after_ms: k.not_after_ms,
                });
            }
            if keys.is_empty() {
                bail!("{}: device {id} has no key", path.display());
            }
            out.push(ingest::Device {
                id,
                asset: d.asset,
                keys,
            });
        }
        Ok(out)
    }

    /// Writes the device registry (atomically: a running twinguard never reads half a file).
    fn write_registry(&self, devices: &BTreeMap<String, DeviceEntry>) -> Result<()> {
        let text = toml::to_string(&RegistryFile {
            devices: devices.clone(),
        })?;
        let tmp = self.root.join("devices.toml.tmp");
        fs::write(
            &tmp,
            format!(
                "# twinguard device registry: devices whose signed frames are accepted\n{text}"
            ),
        )
        .with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, self.registry_path())
            .with_context(|| format!("cannot write {}", self.registry_path().display()))
    }

    /// Rotates a device's key at `now_ms`: the edge gets a new key, the registry accepts it
    /// from now on and keeps accepting the old ones until `now_ms + overlap_ms`. Returns the
    /// old key (the edge no longer uses it) and the new key's id.
    pub fn rotate_device_key(
        &self,
        device: &str,
        now_ms: i64,
        overlap_ms: i64,
    ) -> Result<(SigningKey, String)> {
        let mut devices = self.devices()?;
        let entry = devices.get_mut(device).with_context(|| {
            format!(
                "device {device:?} is not in the registry {}",
                self.registry_path().display()
            )
        })?;
        if let Some(pk) = entry.public_key.take() {
            entry.keys.insert(
                0,
                KeyEntry {
                    id: format!("{device}#0"),
                    ed25519: Some(pk),
                    hmac_secret_file: None,
                    not_before_ms: None,
                    not_after_ms: None,
                },
            );
        }
        for k in entry
            .keys
            .iter_mut()
            .filter(|k| k.not_after_ms.is_none_or(|t| t > now_ms + overlap_ms))
        {
            k.not_after_ms = Some(now_ms + overlap_ms);
        }
        let n = entry.keys.len() + 1;
        let edge = self.root.join("edge");
        let current = edge.join(format!("{device}.key"));
        let old = keys::load(&current)?;
        // The registry learns the new key before the edge starts sealing with it, so that
        // a running twinguard never sees a frame sealed with a key it does not know yet.
        let next = edge.join(format!("{device}.key.next"));
        let new = keys::load_or_create(&next)?;
        let id = format!("{device}#{n}");
        entry.keys.push(KeyEntry {
            id: id.clone(),
            ed25519: Some(keys::public_hex(&new.verifying_key())),
            hmac_secret_file: None,
            not_before_ms: Some(now_ms),
            not_after_ms: None,
        });
        self.write_registry(&devices)?;
        let retired = edge.join(format!("{device}.key.{n}.retired"));
        fs::rename(&current, &retired)
            .with_context(|| format!("cannot move {} aside", current.display()))?;
        fs::rename(&next, &current)
            .with_context(|| format!("cannot put the new key in {}", current.display()))?;
        Ok((old, id))
    }

    /// Revokes a device, or one of its keys. A revoked device leaves the registry: its
    /// frames are refused as from an unknown device. A revoked key leaves the device's
    /// keys: frames sealed with it are refused whatever time they carry (a key whose window
    /// ended is refused only for frames dated after it, and whoever holds the key chooses
    /// the date). Returns the ids of the keys removed.
    pub fn revoke_device(&self, device: &str, key: Option<&str>) -> Result<Vec<String>> {
        let mut devices = self.devices()?;
        let path = self.registry_path();
        let entry = devices.get_mut(device).with_context(|| {
            format!(
                "device {device:?} is not in the registry {}",
                path.display()
            )
        })?;
        let mut ids: Vec<String> = entry.keys.iter().map(|k| k.id.clone()).collect();
        if entry.public_key.is_some() {
            ids.insert(0, format!("{device}#0"));
        }
        let removed = match key {
            None => {
                devices.remove(device);
                ids
            }
            Some(id) => {
                if !ids.iter().any(|k| k == id) {
                    bail!(
                        "device {device} has no key {id:?} in {} (its keys: {})",
                        path.display(),
                        ids.join(", ")
                    );
                }
                if ids.len() == 1 {
                    bail!(
                        "{id} is the only key of device {device}: revoke the device instead \
                         (twinguard device revoke {device}), or rotate its key first"
                    );
                }
                if id == format!("{device}#0") {
                    entry.public_key = None;
                } else {
                    entry.keys.retain(|k| k.id != id);
                }
                vec![id.to_string()]
            }
        };
        self.write_registry(&devices)?;
        Ok(removed)
    }

    /// Enrols the plant's edge devices: each gets a key on the edge side and its public key
    /// goes into the registry. Existing entries are kept.
    pub fn enrol_edge_devices(&self, plant: &Plant) -> Result<BTreeMap<String, DeviceEntry>> {
        let mut devices = self.devices()?;
        let mut changed = false;
        for a in &plant.assets {
            if devices.contains_key(&a.device) {
                continue; // already enrolled: its keys change only by rotation
            }
            let key = self.edge_key(&a.device)?;
            devices.insert(
                a.device.clone(),
                DeviceEntry {
                    asset: a.id.clone(),
                    public_key: None,
                    keys: vec![KeyEntry {
                        id: format!("{}#1", a.device),
                        ed25519: Some(keys::public_hex(&key.verifying_key())),
                        hmac_secret_file: None,
                        not_before_ms: None,
                        not_after_ms: None,
                    }],
                },
            );
            changed = true;
        }
        if changed {
            self.write_registry(&devices)?;
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
