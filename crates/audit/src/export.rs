//! One file that holds a log, for verification elsewhere with only the log's public key:
//! JSON lines, a header, then every signed checkpoint, then every record in order.
//!
//! ```text
//! {"format":"twinguard-audit-export","version":1,"origin":"twinguard/audit/…","records":N,"checkpoints":M}
//! {"checkpoint":"twinguard/audit/…\n1042\n…"}
//! {"seq":1,"ts_ms":…,"kind":"run_started","body":"{…}","leaf":"…"}
//! ```

use std::io::{BufRead, Read, Write};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::{AuditError, LogCheck, Record, Verification, origin_for};

pub const FORMAT: &str = "twinguard-audit-export";
pub const VERSION: u32 = 1;
/// Longest line read from an export (a record's body is at most this).
pub const MAX_LINE: usize = 64 * 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub origin: String,
    pub records: u64,
    pub checkpoints: u64,
}

#[derive(Serialize, Deserialize)]
struct CheckpointLine {
    checkpoint: String,
}

fn io(name: &str, e: impl std::fmt::Display) -> AuditError {
    AuditError::Io {
        path: name.to_string(),
        message: e.to_string(),
    }
}

/// Writes an export; `records` are read lazily, so a log of any length streams through.
pub fn write<W: Write>(
    out: &mut W,
    name: &str,
    header: &Header,
    checkpoints: &[String],
    records: impl IntoIterator<Item = Result<Record, AuditError>>,
) -> Result<u64, AuditError> {
    write_line(out, name, header)?;
    for note in checkpoints {
        write_line(
            out,
            name,
            &CheckpointLine {
                checkpoint: note.clone(),
            },
        )?;
    }
    let mut n = 0u64;
    for r in records {
        write_line(out, name, &r?)?;
        n += 1;
    }
    out.flush().map_err(|e| io(name, e))?;
    Ok(n)
}

fn write_line<W: Write, T: Serialize>(out: &mut W, name: &str, v: &T) -> Result<(), AuditError> {
    serde_json::to_writer(&mut *out, v).map_err(|e| io(name, e))?;
    out.write_all(b"\n").map_err(|e| io(name, e))
}

/// Reads one line of at most [`MAX_LINE`] bytes; `None` at the end.
fn next_line<R: BufRead>(
    r: &mut R,
    name: &str,
    line_no: u64,
    buf: &mut Vec<u8>,
) -> Result<Option<()>, AuditError> {
    buf.clear();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', buf)
        .map_err(|e| io(name, e))?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > MAX_LINE {
        return Err(io(
            name,
            format!("line {line_no} is longer than {MAX_LINE} bytes"),
        ));
    }
    Ok(Some(()))
}

fn parse<'a, T: Deserialize<'a>>(
    buf: &'a [u8],
    name: &str,
    line_no: u64,
    what: &str,
) -> Result<T, AuditError> {
    serde_json::from_slice(buf).map_err(|e| io(name, format!("line {line_no} is not {what}: {e}")))
}

/// Verifies an export with only the log's public key (and any checkpoints kept from
/// earlier, in `held`).
pub fn verify<R: BufRead>(
    mut r: R,
    name: &str,
    key: &VerifyingKey,
    held: &[(String, String)],
) -> Result<Verification, AuditError> {
    let mut buf = Vec::new();
    next_line(&mut r, name, 1, &mut buf)?.ok_or_else(|| io(name, "is empty"))?;
    let header: Header = parse(&buf, name, 1, "a twinguard audit export header")?;
    if header.format != FORMAT || header.version != VERSION {
        return Err(io(
            name,
            format!(
                "is {} version {}, not {FORMAT} version {VERSION}",
                header.format, header.version
            ),
        ));
    }
    let origin = origin_for(key);
    if header.origin != origin {
        return Err(io(
            name,
            format!(
                "is an export of the log {}, and the key given is the key of {origin}",
                header.origin
            ),
        ));
    }
    let mut notes: Vec<(String, String)> = Vec::new();
    let mut line_no = 1u64;
    for _ in 0..header.checkpoints {
        line_no += 1;
        next_line(&mut r, name, line_no, &mut buf)?.ok_or_else(|| {
            io(
                name,
                format!("ends at line {line_no}, inside its checkpoints"),
            )
        })?;
        let c: CheckpointLine = parse(&buf, name, line_no, "a checkpoint")?;
        notes.push((c.checkpoint, format!("{name} line {line_no}")));
    }
    notes.extend(held.iter().cloned());
    let mut check = LogCheck::new(key, &notes);
    let mut read = 0u64;
    loop {
        line_no += 1;
        if next_line(&mut r, name, line_no, &mut buf)?.is_none() {
            break;
        }
        let rec: Record = parse(&buf, name, line_no, "an audit record")?;
        read += 1;
        if !check.record(&rec) {
            break;
        }
    }
    let mut v = check.finish();
    if v.problem.is_none() && read != header.records {
        v.problem = Some(crate::Problem {
            seq: read + 1,
            what: format!(
                "the export announces {} records and holds {read} (cut short or padded)",
                header.records
            ),
        });
    }
    Ok(v)
}
