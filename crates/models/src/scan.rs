//! The scanner: reads every file of a model and reports, with locations, credentials,
//! URLs, host names and IP addresses, ONNX custom-operator domains, external-data
//! references and metadata entries, and code-carrying formats (pickle, executables,
//! scripts). Credentials, code, custom operators, external data and endpoints the
//! manifest does not declare refuse a model; metadata entries are listed.

use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use regex::bytes::Regex;
use serde::Serialize;

use crate::manifest::model_files;
use crate::{MAX_FILE, ModelError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Listed for the reviewer.
    Info,
    /// Refuses the model.
    Refuse,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub file: String,
    /// Byte offset in the file, where there is one.
    pub offset: Option<u64>,
    /// credential, url, host, ip, code, custom_operator, external_data, metadata, format
    pub what: String,
    pub detail: String,
    pub severity: Severity,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub files: usize,
    pub bytes: u64,
    pub seconds: f64,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn refusals(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Refuse)
    }
}

struct Pattern {
    what: &'static str,
    name: &'static str,
    re: Regex,
    /// Show only the first characters of what matched (a secret is not copied into a
    /// report).
    redact: bool,
}

#[allow(
    clippy::expect_used,
    reason = "the patterns are constants, tested by every scan test"
)]
fn patterns() -> &'static [Pattern] {
    static P: OnceLock<Vec<Pattern>> = OnceLock::new();
    P.get_or_init(|| {
        let p = |what, name, re: &str, redact| Pattern {
            what,
            name,
            // ASCII classes and word boundaries: the files are bytes, not UTF-8.
            re: Regex::new(&format!("(?-u){re}")).expect("scanner pattern"),
            redact,
        };
        vec![
            p("credential", "AWS access key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", true),
            p("credential", "private key", r"-----BEGIN [A-Z ]*PRIVATE KEY-----", false),
            p(
                "credential",
                "JSON web token",
                r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
                true,
            ),
            p("credential", "GitHub token", r"\bgh[pousr]_[A-Za-z0-9]{36}\b", true),
            p("credential", "Slack token", r"\bxox[abprs]-[A-Za-z0-9-]{10,}", true),
            p("credential", "Google API key", r"\bAIza[0-9A-Za-z_-]{35}\b", true),
            p(
                "credential",
                "storage account key",
                r"(?i)\b(?:AccountKey|SharedAccessKey)=[A-Za-z0-9+/=]{20,}",
                true,
            ),
            p(
                "credential",
                "password",
                r#"(?i)\b(?:password|passwd|pwd)\b["']?\s*[=:]\s*["']?[^\s"',;]{3,}"#,
                true,
            ),
            p(
                "credential",
                "secret or API key",
                r#"(?i)\b(?:api[_-]?key|secret|access[_-]?token|auth[_-]?token)\b["']?\s*[=:]\s*["']?[A-Za-z0-9_\-+/=]{8,}"#,
                true,
            ),
            p(
                "credential",
                "connection string with a password",
                r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]+:[^\s/@]+@[^\s/]+",
                true,
            ),
            p(
                "url",
                "URL",
                r#"(?i)\b(?:https?|ftp|wss?|mqtts?|opc\.tcp|s3|gs|tcp|amqps?)://[^\s"'<>\x00-\x1f\\]+"#,
                false,
            ),
            p(
                "ip",
                "IPv4 address",
                r"\b(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}\b",
                false,
            ),
            p(
                "host",
                "host name",
                // Lower case only: host names are written so, and in weights a mixed-case
                // "xY9.IO" turns up by chance every few hundred megabytes.
                r"\b(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9-]{3,63}\.(?:com|net|org|io|cloud|internal|local|corp|lan|dev|ai)\b",
                false,
            ),
        ]
    })
}

fn holds_credential(text: &[u8]) -> bool {
    patterns()
        .iter()
        .any(|p| p.what == "credential" && p.re.is_match(text))
}

const CHUNK: usize = 8 << 20;
const OVERLAP: usize = 4096;

/// Code-carrying formats, by name and by the first bytes.
fn code_format(name: &str, head: &[u8]) -> Option<&'static str> {
    let ext = name.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    let by_ext = match ext.as_str() {
        "pkl" | "pickle" | "joblib" | "dill" | "sav" => {
            Some("a Python pickle (runs code when loaded)")
        }
        "pt" | "pth" | "ckpt" | "bin" if head.starts_with(b"PK\x03\x04") => {
            Some("a PyTorch archive (pickle inside: runs code when loaded)")
        }
        "py" | "pyc" | "sh" | "bash" | "bat" | "cmd" | "ps1" | "js" | "rb" | "pl" => {
            Some("a script")
        }
        "so" | "dll" | "dylib" | "exe" | "jar" | "class" | "wasm" => Some("executable code"),
        _ => None,
    };
    by_ext.or(match head {
        [0x80, 2..=5, ..] => Some("a Python pickle (runs code when loaded)"),
        [0x7f, b'E', b'L', b'F', ..] => Some("an ELF executable"),
        [b'M', b'Z', ..] => Some("a Windows executable"),
        [0xcf, 0xfa, 0xed, 0xfe, ..] | [0xfe, 0xed, 0xfa, 0xcf, ..] => Some("a Mach-O executable"),
        [b'#', b'!', ..] => Some("a script"),
        [0x00, b'a', b's', b'm', ..] => Some("WebAssembly"),
        _ => None,
    })
}

fn excerpt(m: &[u8], redact: bool) -> String {
    let text = String::from_utf8_lossy(m);
    if redact {
        let shown: String = text.chars().take(6).collect();
        format!("{shown}… ({} bytes)", m.len())
    } else {
        text.chars().take(120).collect()
    }
}

/// Whether an endpoint found is one the manifest declares.
fn declared(found: &str, endpoints: &[String]) -> bool {
    let f = found.to_ascii_lowercase();
    endpoints.iter().any(|e| {
        let e = e.to_ascii_lowercase();
        !e.is_empty() && (f.starts_with(&e) || e.contains(&f))
    })
}

/// Text shorter than this inside binary data is not read: a run of a few printable bytes
/// turns up by chance in weights, and nothing the scanner looks for is that short.
const MIN_RUN: usize = 8;

fn printable(b: u8) -> bool {
    (0x20..=0x7e).contains(&b) || b == b'\t' || b == b'\n' || b == b'\r'
}

/// The runs of printable ASCII of at least [`MIN_RUN`] bytes, as (start, end): what
/// `strings` would show. Credentials, endpoints and the like are text.
fn text_runs(data: &[u8]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = None;
    for (i, &b) in data.iter().enumerate() {
        match (printable(b), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                if i - s >= MIN_RUN {
                    runs.push((s, i));
                }
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start
        && data.len() - s >= MIN_RUN
    {
        runs.push((s, data.len()));
    }
    runs
}

#[allow(
    clippy::expect_used,
    reason = "the patterns are constants, tested by every scan test"
)]
fn pattern_set() -> &'static regex::bytes::RegexSet {
    static S: OnceLock<regex::bytes::RegexSet> = OnceLock::new();
    S.get_or_init(|| {
        regex::bytes::RegexSet::new(patterns().iter().map(|p| p.re.as_str()))
            .expect("scanner patterns")
    })
}

/// Finds the patterns in `data` (at `base` in the file), keeping matches that start
/// before `until`.
fn scan_bytes(
    file: &str,
    base: u64,
    data: &[u8],
    until: usize,
    endpoints: &[String],
    out: &mut Vec<Finding>,
) {
    for (start, end) in text_runs(data) {
        let Some(run) = data.get(start..end) else {
            continue;
        };
        // One pass tells which patterns occur at all; only those are located.
        for i in pattern_set().matches(run).iter() {
            if let Some(p) = patterns().get(i) {
                scan_run(p, file, base, start, run, until, endpoints, out);
            }
        }
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site, the scan loop's state"
)]
fn scan_run(
    p: &Pattern,
    file: &str,
    base: u64,
    run_start: usize,
    run: &[u8],
    until: usize,
    endpoints: &[String],
    out: &mut Vec<Finding>,
) {
    {
        for m in p.re.find_iter(run) {
            let at = run_start + m.start();
            if at >= until {
                continue;
            }
            let text = excerpt(m.as_bytes(), p.redact);
            let severity = match p.what {
                "credential" => Severity::Refuse,
                _ if declared(&String::from_utf8_lossy(m.as_bytes()), endpoints) => Severity::Info,
                _ => Severity::Refuse,
            };
            let detail = if severity == Severity::Info {
                format!("{}: {text} (declared)", p.name)
            } else if p.what == "credential" {
                format!("{}: {text}", p.name)
            } else {
                format!("{}: {text} (not among the manifest's endpoints)", p.name)
            };
            out.push(Finding {
                file: file.to_string(),
                offset: Some(base + at as u64),
                what: p.what.into(),
                detail,
                severity,
            });
        }
    }
}

/// Scans every file of a model. `endpoints`: the URLs and hosts the manifest declares.
pub fn scan(model: &Path, endpoints: &[String]) -> Result<Report, ModelError> {
    let t = Instant::now();
    let files = model_files(model)?;
    let mut findings = Vec::new();
    let mut bytes = 0u64;
    for (name, path) in &files {
        let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        let mut buf = vec![0u8; CHUNK + OVERLAP];
        let mut kept = 0usize;
        let mut base = 0u64;
        let mut first = true;
        let mut whole: Option<Vec<u8>> =
            name.to_ascii_lowercase().ends_with(".onnx").then(Vec::new);
        loop {
            let want = buf.len() - kept;
            let n = read_full(&mut f, buf.get_mut(kept..).unwrap_or_default())
                .map_err(|e| ModelError::io(path, e))?;
            let data = buf.get(..kept + n).unwrap_or_default();
            let last = n < want;
            if first {
                if let Some(kind) = code_format(name, data) {
                    findings.push(Finding {
                        file: name.clone(),
                        offset: Some(0),
                        what: "code".into(),
                        detail: format!("{name} is {kind}"),
                        severity: Severity::Refuse,
                    });
                }
                first = false;
            }
            // Matches starting in the last OVERLAP bytes are left to the next chunk,
            // which sees them whole from its start.
            let until = if last {
                data.len()
            } else {
                data.len() - OVERLAP.min(data.len())
            };
            scan_bytes(name, base, data, until, endpoints, &mut findings);
            if let Some(w) = whole.as_mut() {
                w.extend_from_slice(data.get(kept..).unwrap_or_default());
                if w.len() as u64 > MAX_FILE {
                    // Protobuf caps an ONNX file at 2 GiB: this one cannot be one.
                    whole = None;
                    findings.push(Finding {
                        file: name.clone(),
                        offset: None,
                        what: "format".into(),
                        detail: format!("{name} is larger than the 2 GiB an ONNX file can be"),
                        severity: Severity::Refuse,
                    });
                }
            }
            bytes += n as u64;
            if bytes > MAX_FILE * 4 {
                return Err(ModelError::invalid(model, "is larger than 8 GiB"));
            }
            if last {
                break;
            }
            let len = data.len();
            base += until as u64;
            buf.copy_within(until..len, 0);
            kept = len - until;
        }
        if let Some(w) = whole {
            onnx_findings(name, &w, &mut findings);
        }
    }
    findings.sort_by(|a, b| {
        (&a.file, a.offset, &a.what, &a.detail).cmp(&(&b.file, b.offset, &b.what, &b.detail))
    });
    findings.dedup();
    Ok(Report {
        files: files.len(),
        bytes,
        seconds: t.elapsed().as_secs_f64(),
        findings,
    })
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(buf.get_mut(n..).unwrap_or_default())? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn onnx_findings(name: &str, bytes: &[u8], out: &mut Vec<Finding>) {
    let f = |what: &str, detail: String, severity| Finding {
        file: name.to_string(),
        offset: None,
        what: what.into(),
        detail,
        severity,
    };
    match crate::onnx::facts(bytes) {
        Err(e) => out.push(f("format", format!("{name} {e}"), Severity::Refuse)),
        Ok(facts) => {
            for (at, domain) in facts.custom_domains {
                out.push(f(
                    "custom_operator",
                    format!("{at} uses operator domain {domain:?}, outside the ONNX standard (needs code outside the runtime)"),
                    Severity::Refuse,
                ));
            }
            for (tensor, location) in facts.external_data {
                out.push(f(
                    "external_data",
                    format!("{tensor} reads its data from {location:?}, outside the signed file"),
                    Severity::Refuse,
                ));
            }
            for (k, v) in facts.metadata {
                let shown = if holds_credential(v.as_bytes()) || holds_credential(k.as_bytes()) {
                    "(a credential: see its finding)".to_string()
                } else {
                    v.chars().take(120).collect::<String>()
                };
                out.push(f("metadata", format!("{k} = {shown}"), Severity::Info));
            }
        }
    }
}
