//! `twinguard model`: publishers sign models; a plant trusts publishers for kinds of
//! model, scans and admits models (signature, scanner, golden run), runs them in shadow,
//! promotes one with an approver, rolls back in one command, and exports an ML-BOM. Every
//! admission, refusal, promotion and rollback is recorded in the audit log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use audit::AuditStore;
use clap::Subcommand;
use models::manifest::{Manifest, signature_path};
use models::{ModelError, Registry, RegistryEntry, State, TrustPolicy};
use serde_json::{Value, json};

use crate::datadir::DataDir;
use crate::demo::wall_clock_ms;

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Make a publisher's signing key (FILE, private, 0600) and its public half (FILE.pub).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a model (a directory, or a single file) with a publisher's key: an in-toto
    /// statement of every file's SHA-256 and the manifest, in a DSSE envelope.
    Sign {
        model: PathBuf,
        /// The manifest (JSON: name, version, kind, publisher, entry, intended_use,
        /// limitations, training_data, metrics, endpoints, golden).
        #[arg(long)]
        manifest: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// Trust a publisher's key for kinds of model (detector, rul, onnx).
    Trust {
        #[arg(long)]
        name: String,
        /// The publisher's public key file (hex).
        #[arg(long)]
        key: PathBuf,
        /// Comma-separated.
        #[arg(long)]
        kinds: String,
        #[arg(long, default_value = "twinguard-data")]
        data_dir: PathBuf,
    },
    /// Check a model's signature and files against the trust policy.
    Verify {
        model: PathBuf,
        #[arg(long, default_value = "twinguard-data")]
        data_dir: PathBuf,
    },
    /// Read every file of a model and report credentials, endpoints, code, ONNX custom
    /// operators, external data and metadata, with locations; exits 1 on any refusal.
    Scan {
        model: PathBuf,
        /// URLs or hosts the model is documented to contain (default: its manifest's, if
        /// signed).
        #[arg(long)]
        endpoint: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Admit a model: signature and trusted publisher, scanner, golden run against the
    /// manifest's thresholds; it then runs in shadow until an approver promotes it.
    Admit {
        model: PathBuf,
        #[arg(long, default_value = "twinguard-data")]
        data_dir: PathBuf,
    },
    /// The admitted models and their states.
    List {
        #[arg(long, default_value = "twinguard-data")]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Make a shadow model the active one (an approver, with their password).
    Promote {
        name: String,
        version: String,
        #[command(flatten)]
        approver: Approver,
    },
    /// Put back the model that was active before (an approver, with their password).
    Rollback {
        name: String,
        #[command(flatten)]
        approver: Approver,
    },
    /// A CycloneDX 1.6 ML-BOM of the running system: the admitted models with their
    /// datasets and metrics, and twinguard's own dependencies.
    Bom {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "twinguard-data")]
        data_dir: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct Approver {
    /// The approver's account (role approver or admin).
    #[arg(long)]
    approver: String,
    /// A file whose first line is the approver's password.
    #[arg(long)]
    password_file: PathBuf,
    #[arg(long, default_value = "twinguard-data")]
    data_dir: PathBuf,
}

fn models_dir(dir: &DataDir) -> PathBuf {
    dir.root().join("models")
}

fn trust_path(dir: &DataDir) -> PathBuf {
    models_dir(dir).join("trust.toml")
}

fn registry_path(dir: &DataDir) -> PathBuf {
    models_dir(dir).join("registry.json")
}

/// The records that change the registry; each carries the SHA-256 of the registry file
/// it left (`registry_sha256`).
const REGISTRY_CHANGES: [&str; 3] = ["model_admitted", "model_promoted", "model_rolled_back"];

/// Writes the registry and records the change with the file's new digest.
fn save_registry(dir: &DataDir, registry: &Registry, kind: &str, mut body: Value) -> Result<()> {
    let path = registry_path(dir);
    registry.save(&path)?;
    let sha = models::file_sha256(&path)?;
    if let Some(o) = body.as_object_mut() {
        o.insert("registry_sha256".into(), sha.into());
    }
    record(dir, kind, body)
}

/// The registry, refused unless it is the file the audit log's last registry change
/// left: a registry edited outside twinguard (a shadow version made active without an
/// approver, a retired one brought back) runs nothing.
pub fn load_registry(dir: &DataDir) -> Result<Registry> {
    let path = registry_path(dir);
    let db = dir.audit_db();
    let last = if db.exists() {
        audit::SqliteStore::newest_record_of(&db, &REGISTRY_CHANGES)?
    } else {
        None
    };
    let Some(last) = last else {
        if path.exists() {
            bail!(
                "{} was not written by twinguard: the audit log records no change to the model registry",
                path.display()
            );
        }
        return Ok(Registry::default());
    };
    if last.computed_leaf() != Some(last.leaf) && last.body.is_some() {
        bail!(
            "audit record {} ({}) was altered: its leaf hash does not match it (`twinguard audit verify` locates the change)",
            last.seq,
            last.kind
        );
    }
    let Some(body) = &last.body else {
        tracing::warn!(
            seq = last.seq,
            "the last change to the model registry is older than the audit retention: the registry file cannot be checked against it"
        );
        return Ok(Registry::load(&path)?);
    };
    let expected = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|b| b.get("registry_sha256").and_then(Value::as_str).map(str::to_string))
        .with_context(|| {
            format!(
                "audit record {} ({}) carries no registry digest: it was written by an earlier twinguard; admit the models again into a new data directory",
                last.seq, last.kind
            )
        })?;
    if !path.exists() {
        bail!(
            "{} is missing, but audit record {} ({}) changed it",
            path.display(),
            last.seq,
            last.kind
        );
    }
    let actual = models::file_sha256(&path)?;
    if actual != expected {
        bail!(
            "{} was changed outside twinguard: its SHA-256 is {actual}, and the audit log's last registry change (record {}, {}) left {expected}",
            path.display(),
            last.seq,
            last.kind
        );
    }
    Ok(Registry::load(&path)?)
}

fn record(dir: &DataDir, kind: &str, body: Value) -> Result<()> {
    let mut store = audit::SqliteStore::open(&dir.audit_db(), dir.key("audit")?)?;
    store.append(&[audit::Entry::new(wall_clock_ms(), kind, body)])?;
    store.checkpoint()?;
    Ok(())
}

/// Checks the approver's account, role and password; returns their name.
fn authenticate(a: &Approver, dir: &DataDir) -> Result<String> {
    let users = dir.users()?;
    let account = users.get(&a.approver).with_context(|| {
        format!(
            "no account {:?} in {}",
            a.approver,
            dir.users_path().display()
        )
    })?;
    if !account.role.held().contains(&"approver") {
        bail!(
            "{} is {}: promoting and rolling back models takes an approver",
            a.approver,
            account.role.as_str()
        );
    }
    let text = crate::audit_cmd::read_text(&a.password_file, 4096, "password file")?;
    let password = text.lines().next().unwrap_or("");
    let ok = account
        .password_hash
        .as_deref()
        .is_some_and(|phc| api::accounts::check_password(phc, password));
    if !ok {
        bail!("wrong password for {}", a.approver);
    }
    Ok(a.approver.clone())
}

/// Copies a model (its files and signature) under `to`.
fn copy_model(model: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    let copy = |from: &Path, rel: &str| -> Result<()> {
        let dest = to.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(from, &dest)
            .with_context(|| format!("cannot copy {} to {}", from.display(), dest.display()))?;
        Ok(())
    };
    for (rel, path) in models::manifest::model_files(model)? {
        copy(&path, &rel)?;
    }
    let sig = signature_path(model);
    let sig_name = if model.is_dir() {
        models::manifest::SIGNATURE_FILE.to_string()
    } else {
        sig.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    };
    copy(&sig, &sig_name)
}

/// The admitted copy of a registry entry, verified again (a copy changed since admission
/// is refused like any other altered model).
pub fn load_admitted(dir: &DataDir, e: &RegistryEntry) -> Result<(PathBuf, models::Signed)> {
    let root = dir.root().join(&e.path);
    let model = if root.join(models::manifest::SIGNATURE_FILE).exists() {
        root.clone()
    } else {
        root.join(&e.entry)
    };
    let trust = TrustPolicy::load(&trust_path(dir))?;
    let signed = models::dsse::verify(&model, &trust)?;
    if signed.digest != e.digest {
        bail!(
            "the admitted copy of {} {} has digest {}, the registry {}",
            e.name,
            e.version,
            signed.digest,
            e.digest
        );
    }
    let entry_path = if model.is_dir() {
        model.join(&e.entry)
    } else {
        model
    };
    Ok((entry_path, signed))
}

fn golden_run(model: &Path, m: &Manifest) -> Result<BTreeMap<String, f64>, String> {
    let g = m
        .golden
        .as_ref()
        .ok_or("the manifest declares no golden data set: admission runs every model on one")?;
    let base = if model.is_dir() {
        model.to_path_buf()
    } else {
        model.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let entry = if model.is_dir() {
        model.join(&m.entry)
    } else {
        model.to_path_buf()
    };
    let results = match m.kind.as_str() {
        "detector" => crate::detect_cmd::golden(&entry, &base.join(&g.data)),
        "rul" => {
            let truth = g
                .truth
                .as_ref()
                .ok_or("a rul model's golden data set needs its truth file (golden.truth)")?;
            crate::rul_cmd::golden(&entry, &base.join(&g.data), &base.join(truth))
        }
        "onnx" => {
            let interface = m
                .onnx
                .as_ref()
                .ok_or("an onnx model's manifest declares no interface (onnx)")?;
            crate::detect_cmd::golden_onnx(&entry, interface, &base.join(&g.data))
        }
        other => {
            return Err(format!(
                "this build runs no {other} model, so its golden run cannot be made"
            ));
        }
    }
    .map_err(|e| format!("the golden run failed: {e:#}"))?;
    for (metric, bound) in &g.thresholds {
        let value = results.get(metric).ok_or_else(|| {
            format!(
                "threshold on {metric}, which a {} golden run does not measure ({})",
                m.kind,
                results.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        if let Some(why) = bound.broken_by(*value) {
            return Err(format!("golden {metric}: {why}"));
        }
    }
    Ok(results)
}

fn print_findings(report: &models::scan::Report) {
    for f in &report.findings {
        let at = f.offset.map_or_else(String::new, |o| format!(" @{o}"));
        let mark = match f.severity {
            models::Severity::Refuse => "REFUSE",
            models::Severity::Info => "info",
        };
        println!("  {mark:<6} {}{at}  {}: {}", f.file, f.what, f.detail);
    }
}

/// The admission's refusal: recorded, printed, exit 1.
fn refuse(dir: &DataDir, model: &Path, manifest: Option<&Manifest>, why: &str) -> Result<ExitCode> {
    record(
        dir,
        "model_refused",
        json!({
            "model": model.display().to_string(),
            "name": manifest.map(|m| m.name.clone()),
            "version": manifest.map(|m| m.version.clone()),
            "why": why,
        }),
    )?;
    println!("model {} REFUSED: {why}", model.display());
    Ok(ExitCode::from(1))
}

pub fn run(command: ModelCommand) -> Result<ExitCode> {
    match command {
        ModelCommand::Keygen { out } => {
            if out.exists() {
                bail!("{} exists; a key is never overwritten", out.display());
            }
            let key = frames::keys::load_or_create(&out)?;
            let public = PathBuf::from(format!("{}.pub", out.display()));
            std::fs::write(&public, frames::keys::public_hex(&key.verifying_key()))
                .with_context(|| format!("cannot write {}", public.display()))?;
            println!(
                "publisher key {} (keep it secret), public key {} (give it to plants) id {}",
                out.display(),
                public.display(),
                models::dsse::key_id(&key.verifying_key())
            );
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::Sign {
            model,
            manifest,
            key,
        } => {
            let bytes = models::read_bounded(&manifest, models::MAX_META)?;
            let m = Manifest::parse(&bytes, &manifest)?;
            let key = frames::keys::load(&key)?;
            let env = models::dsse::sign(&model, &m, &key)?;
            let sig = signature_path(&model);
            std::fs::write(&sig, serde_json::to_vec_pretty(&env)?)
                .with_context(|| format!("cannot write {}", sig.display()))?;
            println!(
                "{} {} signed by {}: {}",
                m.name,
                m.version,
                models::dsse::key_id(&key.verifying_key()),
                sig.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::Trust {
            name,
            key,
            kinds,
            data_dir,
        } => {
            let dir = DataDir::open(&data_dir)?;
            let public = crate::audit_cmd::read_text(&key, 1024, "public key")?;
            // A key file is one hex key and nothing else (its text goes into trust.toml).
            frames::keys::parse_public(&public, &key.display().to_string())?;
            let kinds: Vec<String> = kinds
                .split(',')
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty())
                .collect();
            let path = trust_path(&dir);
            std::fs::create_dir_all(models_dir(&dir))?;
            let mut text = if path.exists() {
                std::fs::read_to_string(&path)?
            } else {
                "# Publishers whose models this plant admits, and for which kinds.\n".into()
            };
            text.push_str(&format!(
                "\n[[publisher]]\nname = {}\nkey = \"{}\"\nkinds = {}\n",
                toml_string(&name),
                public.trim(),
                serde_json::to_string(&kinds)?
            ));
            // Validate before writing: a broken trust file trusts nobody.
            TrustPolicy::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
            std::fs::write(&path, &text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            record(
                &dir,
                "model_publisher_trusted",
                json!({ "publisher": name, "key": public.trim(), "kinds": kinds }),
            )?;
            println!("publisher {name} trusted for {}", kinds.join(", "));
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::Verify { model, data_dir } => {
            let dir = DataDir::open(&data_dir)?;
            let trust = TrustPolicy::load(&trust_path(&dir))?;
            match models::dsse::verify(&model, &trust) {
                Ok(s) => {
                    println!(
                        "{} {} ({}) signed by {} ({}); digest {}; {} files intact",
                        s.manifest.name,
                        s.manifest.version,
                        s.manifest.kind,
                        s.publisher,
                        s.key_id,
                        s.digest,
                        s.files.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(ModelError::Refused(why)) => {
                    println!("REFUSED: {why}");
                    Ok(ExitCode::from(1))
                }
                Err(e) => Err(e.into()),
            }
        }
        ModelCommand::Scan {
            model,
            endpoint,
            json,
        } => {
            let report = models::scan::scan(&model, &endpoint)?;
            let refusals = report.refusals().count();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{}: {} files, {} bytes in {:.3} s ({:.0} MB/s); {} findings, {refusals} refusing it",
                    model.display(),
                    report.files,
                    report.bytes,
                    report.seconds,
                    report.bytes as f64 / 1e6 / report.seconds.max(1e-9),
                    report.findings.len()
                );
                print_findings(&report);
            }
            Ok(if refusals == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        ModelCommand::Admit { model, data_dir } => {
            let dir = DataDir::open(&data_dir)?;
            let trust = TrustPolicy::load(&trust_path(&dir))?;
            let signed = match models::dsse::verify(&model, &trust) {
                Ok(s) => s,
                Err(ModelError::Refused(why)) => return refuse(&dir, &model, None, &why),
                Err(e) => return refuse(&dir, &model, None, &e.to_string()),
            };
            let m = signed.manifest.clone();
            println!(
                "  signature  {} {} ({}) by {}, {} files intact",
                m.name,
                m.version,
                m.kind,
                signed.publisher,
                signed.files.len()
            );
            let report = models::scan::scan(&model, &m.endpoints)?;
            print_findings(&report);
            if let Some(f) = report.refusals().next() {
                let why = format!(
                    "the scanner refuses it: {} in {}{}",
                    f.detail,
                    f.file,
                    f.offset
                        .map_or_else(String::new, |o| format!(" at byte {o}"))
                );
                return refuse(&dir, &model, Some(&m), &why);
            }
            println!(
                "  scanner    {} bytes, nothing refused ({} listed)",
                report.bytes,
                report.findings.len()
            );
            let golden = match golden_run(&model, &m) {
                Ok(g) => g,
                Err(why) => return refuse(&dir, &model, Some(&m), &why),
            };
            println!("  golden     {}", serde_json::to_string(&golden)?);
            let mut registry = load_registry(&dir)?;
            let rel = format!("models/store/{}/{}", m.name, m.version);
            let entry = RegistryEntry {
                name: m.name.clone(),
                version: m.version.clone(),
                kind: m.kind.clone(),
                publisher: signed.publisher.clone(),
                digest: signed.digest.clone(),
                path: rel.clone(),
                entry: m.entry.clone(),
                state: State::Shadow,
                admitted_ms: wall_clock_ms(),
                promoted_ms: None,
                promoted_by: None,
                replaced: None,
                golden: golden.clone(),
                intended_use: m.intended_use.clone(),
                limitations: m.limitations.clone(),
                training_data_sha256: m.training_data.sha256.clone(),
                metrics: m.metrics.clone(),
            };
            if let Err(why) = registry.admit(entry) {
                return refuse(&dir, &model, Some(&m), &why);
            }
            copy_model(&model, &dir.root().join(&rel))?;
            save_registry(
                &dir,
                &registry,
                "model_admitted",
                json!({
                    "name": m.name, "version": m.version, "kind": m.kind,
                    "digest": signed.digest, "publisher": signed.publisher,
                    "golden": golden, "scanner_findings": report.findings.len(),
                }),
            )?;
            println!(
                "model {} {} admitted, in shadow (digest {}); `twinguard model promote {} {}` makes it active",
                m.name, m.version, signed.digest, m.name, m.version
            );
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::List { data_dir, json } => {
            let dir = DataDir::open(&data_dir)?;
            // Shown even when it fails its check, which is said first.
            let registry = match load_registry(&dir) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("WARNING: {e:#}; nothing in it will run");
                    Registry::load(&registry_path(&dir))?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&registry)?);
            } else {
                println!(
                    "{:<24} {:<10} {:<9} {:<8} {:<14} digest",
                    "name", "version", "kind", "state", "publisher"
                );
                for e in &registry.models {
                    println!(
                        "{:<24} {:<10} {:<9} {:<8} {:<14} {}",
                        e.name,
                        e.version,
                        e.kind,
                        format!("{:?}", e.state).to_lowercase(),
                        e.publisher,
                        e.digest.get(..16).unwrap_or(&e.digest)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::Promote {
            name,
            version,
            approver,
        } => {
            let dir = DataDir::open(&approver.data_dir)?;
            let by = authenticate(&approver, &dir)?;
            let mut registry = load_registry(&dir)?;
            // The copy that becomes active is checked again first.
            let e = registry
                .find(&name, &version)
                .cloned()
                .with_context(|| format!("{name} {version} is not admitted"))?;
            load_admitted(&dir, &e)?;
            let replaced = registry
                .promote(&name, &version, &by, wall_clock_ms())
                .map_err(anyhow::Error::msg)?;
            save_registry(
                &dir,
                &registry,
                "model_promoted",
                json!({ "name": name, "version": version, "digest": e.digest, "by": by, "replaced": replaced }),
            )?;
            println!(
                "{name} {version} is active{}",
                replaced.map_or_else(String::new, |r| format!(" ({r} retired)"))
            );
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::Rollback { name, approver } => {
            let dir = DataDir::open(&approver.data_dir)?;
            let by = authenticate(&approver, &dir)?;
            let mut registry = load_registry(&dir)?;
            let (from, to) = registry
                .rollback(&name, &by, wall_clock_ms())
                .map_err(anyhow::Error::msg)?;
            save_registry(
                &dir,
                &registry,
                "model_rolled_back",
                json!({ "name": name, "from": from, "to": to, "by": by }),
            )?;
            println!("{name}: {from} retired, {to} active again");
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::Bom { out, data_dir } => {
            let dir = DataDir::open(&data_dir)?;
            let registry = Registry::load(&registry_path(&dir))?;
            let bom = crate::bom::cyclonedx(&registry)?;
            std::fs::write(&out, serde_json::to_string_pretty(&bom)?)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "CycloneDX 1.6 ML-BOM of {} models and {} dependencies: {}",
                registry.models.len(),
                bom.get("components")
                    .and_then(Value::as_array)
                    .map_or(0, |c| c.len())
                    .saturating_sub(registry.models.len() * 2),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// An admitted model of the kind a setting needs, verified again from its copy.
fn admitted_of_kind(
    dir: &DataDir,
    e: &RegistryEntry,
    kind: &str,
    setting: &str,
) -> Result<(PathBuf, models::Signed)> {
    if e.kind != kind {
        bail!(
            "{setting} {}: {} {} is a {} model, not a {kind} model",
            e.name,
            e.name,
            e.version,
            e.kind
        );
    }
    load_admitted(dir, e).with_context(|| format!("{setting} {}: {} {}", e.name, e.name, e.version))
}

/// The multivariate detector the core runs, with its identity and its shadow: the
/// registry's (`[detect] registry_model`), else a model file or learning in the twin.
pub fn core_detector(
    config: &twinguard_config::Config,
    config_path: Option<&Path>,
    dir: &DataDir,
    plant: &plant_model::Plant,
) -> Result<(
    Option<detect::live::Live>,
    Option<crate::core::ModelRef>,
    Option<crate::core::ShadowModel>,
)> {
    Ok(match registry_detector(config, dir, plant)? {
        Some(r) => {
            let (live, model) = r.active.unzip();
            (live, model, r.shadow)
        }
        None => (
            crate::demo::multivariate(config, config_path, plant)?,
            None,
            None,
        ),
    })
}

/// The pump's RUL estimate the core runs, and its shadow: the registry's
/// (`[predict] registry_model`), else a model file allowed unadmitted (no shadow).
pub fn core_pump_health(
    config: &twinguard_config::Config,
    config_path: Option<&Path>,
    dir: &DataDir,
) -> Result<(
    Option<crate::pump_health::PumpHealth>,
    Option<crate::core::PumpShadow>,
)> {
    match registry_pump_health(config, dir)? {
        Some((active, shadow)) => Ok((active, shadow)),
        None => Ok((crate::demo::pump_health(config, config_path)?, None)),
    }
}

/// The registry's detector for the twin: the active version watching, the shadow beside.
pub struct RegistryDetector {
    pub active: Option<(detect::live::Live, crate::core::ModelRef)>,
    pub shadow: Option<crate::core::ShadowModel>,
}

/// The admitted detector model of `[detect] registry_model`: its active version (to watch
/// with) and its shadow version (to run beside it), each verified again from its admitted
/// copy. None when the configuration names no registry model.
pub fn registry_detector(
    config: &twinguard_config::Config,
    dir: &DataDir,
    plant: &plant_model::Plant,
) -> Result<Option<RegistryDetector>> {
    let Some(name) = &config.detect.registry_model else {
        return Ok(None);
    };
    let name = name.get_ref();
    let registry = load_registry(dir)?;
    let load = |e: &RegistryEntry| -> Result<(detect::live::Live, crate::core::ModelRef)> {
        let options = crate::demo::live_options(config);
        let (live, signed) = if e.kind == "onnx" {
            // An ONNX graph watches as its signed interface says.
            let (path, signed) = admitted_of_kind(dir, e, "onnx", "detect.registry_model")?;
            let interface = signed.manifest.onnx.as_ref().with_context(|| {
                format!(
                    "model {}: its manifest declares no onnx interface",
                    path.display()
                )
            })?;
            crate::demo::check_columns(&interface.columns, &path, plant)?;
            let rows = crate::detect_cmd::OnnxRows::load(&path, interface)?;
            (
                detect::live::Live::watching_external(Box::new(rows), options),
                signed,
            )
        } else {
            let (path, signed) = admitted_of_kind(dir, e, "detector", "detect.registry_model")?;
            let model = crate::detect_cmd::load_model(&path)?;
            crate::demo::check_columns(&model.columns, &path, plant)?;
            let live = detect::live::Live::watching(model, options)
                .map_err(|e| anyhow::anyhow!("model {}: {e}", path.display()))?;
            (live, signed)
        };
        Ok((
            live,
            crate::core::ModelRef {
                name: e.name.clone(),
                version: e.version.clone(),
                digest: signed.digest,
            },
        ))
    };
    let active = registry.active(name).map(load).transpose()?;
    let shadow = registry
        .shadow(name)
        .map(load)
        .transpose()?
        .map(|(live, r)| crate::core::ShadowModel::new(live, r));
    if active.is_none() && shadow.is_none() {
        bail!(
            "detect.registry_model {name}: no version of it is admitted in {} (`twinguard model list`)",
            registry_path(dir).display()
        );
    }
    Ok(Some(RegistryDetector { active, shadow }))
}

/// The pump's RUL models of `[predict] registry_model`: the registry's active version
/// (to estimate and warn with) and its shadow version (to estimate beside it), each
/// verified again from its admitted copy. None when the configuration names none.
pub fn registry_pump_health(
    config: &twinguard_config::Config,
    dir: &DataDir,
) -> Result<
    Option<(
        Option<crate::pump_health::PumpHealth>,
        Option<crate::core::PumpShadow>,
    )>,
> {
    let Some(name) = &config.predict.registry_model else {
        return Ok(None);
    };
    let name = name.get_ref();
    let registry = load_registry(dir)?;
    let load =
        |e: &RegistryEntry| -> Result<(crate::pump_health::PumpHealth, crate::core::ModelRef)> {
            let (path, signed) = admitted_of_kind(dir, e, "rul", "predict.registry_model")?;
            let model = crate::rul_cmd::load_model(&path)?;
            crate::pump_health::check_model(&model).map_err(|msg| {
                anyhow::anyhow!(
                    "predict.registry_model {:?} version {}: {msg}",
                    e.name,
                    e.version
                )
            })?;
            let model_ref = crate::core::ModelRef {
                name: e.name.clone(),
                version: e.version.clone(),
                digest: signed.digest.clone(),
            };
            let health = crate::pump_health::PumpHealth::new(
                model,
                signed.digest,
                *config.predict.horizon_h.get_ref(),
            )
            .admitted(model_ref.clone());
            Ok((health, model_ref))
        };
    let active = registry
        .active(name)
        .map(load)
        .transpose()?
        .map(|(health, _)| health);
    let shadow = registry
        .shadow(name)
        .map(load)
        .transpose()?
        .map(|(health, model)| crate::core::PumpShadow::new(health, model));
    if active.is_none() && shadow.is_none() {
        bail!(
            "predict.registry_model {name}: no version of it is admitted in {} (`twinguard model list`)",
            registry_path(dir).display()
        );
    }
    Ok(Some((active, shadow)))
}
