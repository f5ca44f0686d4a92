//! `twinguard audit`: verify the log (the data directory's, or an export offline), prove a
//! record's inclusion or the log's consistency with a checkpoint someone kept, check such
//! proofs with only the public key, hand out checkpoints, export, and prune.

use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use audit::{AuditStore, Proof, SqliteStore, Verification};
use clap::Subcommand;
use ed25519_dalek::VerifyingKey;

use crate::core::format_time;
use crate::datadir::DataDir;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Rebuild the Merkle tree from the records and check it against every signed
    /// checkpoint (and any you kept); exits 1 and names the first bad record or range.
    Verify {
        #[arg(long, default_value = "twinguard-data")]
        data_dir: PathBuf,
        /// Verify this export (`audit export`) instead of the data directory's log.
        #[arg(long)]
        export: Option<PathBuf>,
        /// The log's public key (`keys/audit.pub`); by default the data directory's.
        #[arg(long)]
        key: Option<PathBuf>,
        /// A checkpoint note kept from earlier: the log must still extend it (repeatable).
        #[arg(long = "checkpoint")]
        held: Vec<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Prove that record `--seq` is in the log (inclusion), or that the log extends a
    /// checkpoint you kept (`--from-checkpoint`, consistency); writes the proof as JSON.
    Prove {
        #[arg(long, default_value = "twinguard-data")]
        data_dir: PathBuf,
        #[arg(long, conflicts_with = "from_checkpoint")]
        seq: Option<u64>,
        /// Prove against the checkpoint of exactly this many records (default: the newest).
        #[arg(long, requires = "seq")]
        size: Option<u64>,
        #[arg(long)]
        from_checkpoint: Option<PathBuf>,
        /// Where to write the proof (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a proof file with only the log's public key.
    CheckProof {
        proof: PathBuf,
        /// The log's public key file (hex, as in `keys/audit.pub`).
        #[arg(long)]
        key: PathBuf,
    },
    /// Print the newest signed checkpoint: keep it, and the log can never be rewritten
    /// behind your back (`audit verify --checkpoint FILE`).
    Checkpoint {
        #[arg(long, default_value = "twinguard-data")]
        data_dir: PathBuf,
        /// Sign a checkpoint of every record first (a running twinguard signs its own).
        #[arg(long)]
        sign: bool,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write the whole log, its checkpoints included, to one JSON-lines file that
    /// verifies elsewhere with only the public key.
    Export {
        #[arg(long, default_value = "twinguard-data")]
        data_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Apply retention now: records older than this many days lose their bodies (their
    /// leaves stay, so every proof stays checkable).
    Prune {
        #[arg(long, default_value = "twinguard-data")]
        data_dir: PathBuf,
        #[arg(long)]
        older_than_days: u32,
    },
}

/// Reads a small text file (a key, a checkpoint, a proof, a password), refusing one over
/// `max` bytes.
pub(crate) fn read_text(path: &Path, max: usize, what: &str) -> Result<String> {
    let bytes = models::read_bounded(path, max as u64)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    String::from_utf8(bytes).with_context(|| format!("{what} {} is not UTF-8 text", path.display()))
}

fn public_key(path: &Path) -> Result<VerifyingKey> {
    let text = read_text(path, 1024, "public key")?;
    Ok(frames::keys::parse_public(
        &text,
        &path.display().to_string(),
    )?)
}

fn held_notes(paths: &[PathBuf]) -> Result<Vec<(String, String)>> {
    paths
        .iter()
        .map(|p| {
            Ok((
                read_text(p, audit::checkpoint::MAX_NOTE, "checkpoint")?,
                p.display().to_string(),
            ))
        })
        .collect()
}

/// The data directory's log, opened for writing with its own key (never creating one).
fn open_store(dir: &DataDir) -> Result<SqliteStore> {
    let key_path = dir.root().join("keys").join("audit.key");
    if !key_path.exists() {
        bail!(
            "{} has no audit key ({}): it is not a twinguard data directory",
            dir.root().display(),
            key_path.display()
        );
    }
    let db = dir.audit_db();
    if !db.exists() {
        bail!(
            "{} has no audit log ({})",
            dir.root().display(),
            db.display()
        );
    }
    Ok(SqliteStore::open(&db, frames::keys::load(&key_path)?)?)
}

fn write_out(out: Option<&Path>, text: &str) -> Result<()> {
    match out {
        Some(p) => std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display())),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

fn describe(name: &str, v: &Verification) -> String {
    match &v.problem {
        Some(p) => format!(
            "audit log {name} FAILED verification at record {}: {}",
            p.seq, p.what
        ),
        None => {
            let newest = v.latest.as_ref().map_or_else(
                || "no checkpoint".to_string(),
                |c| {
                    format!(
                        "newest of {} records signed {}",
                        c.size,
                        format_time(c.timestamp_ms)
                    )
                },
            );
            format!(
                "audit log {name} verified: {} records, root {}; {} checkpoints match ({newest}); {} records newer than it; {} pruned",
                v.records,
                v.head.as_ref().map_or_else(|| "-".into(), |h| h.hash_hex()),
                v.checkpoints,
                v.unanchored,
                v.pruned
            )
        }
    }
}

pub fn run(command: AuditCommand) -> Result<ExitCode> {
    match command {
        AuditCommand::Verify {
            data_dir,
            export,
            key,
            held,
            json,
        } => {
            let held = held_notes(&held)?;
            let (name, v) = match export {
                Some(file) => {
                    let key = match &key {
                        Some(k) => public_key(k)?,
                        None => DataDir::open(&data_dir)?.public_key("audit")?,
                    };
                    let f = std::fs::File::open(&file)
                        .with_context(|| format!("cannot read export {}", file.display()))?;
                    let name = file.display().to_string();
                    let v = audit::export::verify(BufReader::new(f), &name, &key, &held)?;
                    (name, v)
                }
                None => {
                    let dir = DataDir::open(&data_dir)?;
                    let key = match &key {
                        Some(k) => public_key(k)?,
                        None => dir.public_key("audit")?,
                    };
                    let v = SqliteStore::verify_file(&dir.audit_db(), &key, &held)?;
                    (dir.audit_db().display().to_string(), v)
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{}", describe(&name, &v));
            }
            Ok(if v.problem.is_none() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        AuditCommand::Prove {
            data_dir,
            seq,
            size,
            from_checkpoint,
            out,
        } => {
            let dir = DataDir::open(&data_dir)?;
            let mut store = open_store(&dir)?;
            let proof = match (seq, from_checkpoint) {
                (Some(seq), None) => Proof::Inclusion(store.prove_inclusion(seq, size)?),
                (None, Some(file)) => {
                    let held = read_text(&file, audit::checkpoint::MAX_NOTE, "checkpoint")?;
                    Proof::Consistency(store.prove_consistency(&held)?)
                }
                _ => bail!("give --seq N (inclusion) or --from-checkpoint FILE (consistency)"),
            };
            // A proof made here is checked here too, as anyone else would.
            let said = audit::check_proof(&proof, &dir.public_key("audit")?);
            write_out(
                out.as_deref(),
                &format!("{}\n", serde_json::to_string_pretty(&proof)?),
            )?;
            match said {
                Ok(s) => {
                    eprintln!("twinguard: {s}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("twinguard: the proof does not hold: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        AuditCommand::CheckProof { proof, key } => {
            let key = public_key(&key)?;
            let text = read_text(&proof, audit::MAX_PROOF, "proof")?;
            let proof: Proof = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a twinguard audit proof", proof.display()))?;
            match audit::check_proof(&proof, &key) {
                Ok(s) => {
                    println!("proof holds: {s}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("proof FAILS: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        AuditCommand::Checkpoint {
            data_dir,
            sign,
            out,
        } => {
            let dir = DataDir::open(&data_dir)?;
            let mut store = open_store(&dir)?;
            if sign {
                store.checkpoint()?;
            }
            let note = store.checkpoint_note(None)?.with_context(|| {
                format!(
                    "{} has no checkpoint yet (`--sign` makes one)",
                    dir.audit_db().display()
                )
            })?;
            write_out(out.as_deref(), &note)?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Export { data_dir, out } => {
            let dir = DataDir::open(&data_dir)?;
            let key = dir.public_key("audit")?;
            let f = std::fs::File::create(&out)
                .with_context(|| format!("cannot write {}", out.display()))?;
            let mut w = BufWriter::new(f);
            let n = SqliteStore::export_file(
                &dir.audit_db(),
                &key,
                &mut w,
                &out.display().to_string(),
            )?;
            eprintln!(
                "twinguard: {n} records written to {}; verify it with `twinguard audit verify --export {} --key {}`",
                out.display(),
                out.display(),
                dir.root().join("keys").join("audit.pub").display()
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Prune {
            data_dir,
            older_than_days,
        } => {
            let dir = DataDir::open(&data_dir)?;
            let mut store = open_store(&dir)?;
            let now = crate::demo::wall_clock_ms();
            let before = now - i64::from(older_than_days) * 86_400_000;
            let n = store.prune(before)?;
            if n > 0 {
                store.append(&[audit::Entry::new(
                    now,
                    "audit_pruned",
                    serde_json::json!({ "records": n, "older_than_ms": before }),
                )])?;
                store.checkpoint()?;
            }
            println!(
                "{n} records older than {} lost their bodies (their leaves, and every proof, remain)",
                format_time(before)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
