//! The append journal and the append lock of a SQLite audit log.
//!
//! A running twinguard (a store opened with [`SqliteStore::with_append_journal`]) writes
//! each append as lines of one file beside the database, `<db>.appends`, with one
//! `write`, and a thread of the store's own copies them into SQLite in group commits.
//! The journal is as durable as a SQLite commit with `synchronous=NORMAL` (it survives the
//! process, not the machine losing power), so a guard decision waits for one system call
//! instead of SQLite's locks and page writes. Lines leave the journal only once SQLite
//! holds them; whoever next takes the append lock replays what a crashed owner left.
//!
//! One line per record, fields separated by tabs:
//! `seq \t ts_ms \t kind \t leaf (64 hex digits) \t body (compact JSON)\n`. Compact JSON
//! escapes tabs, line breaks and every other control character inside strings, and kinds
//! may hold none, so a line splits unambiguously and holds no zero byte. A last line
//! without its line break was cut short by a crash mid-write (an append that had not
//! returned) and is dropped.
//!
//! The journal ends at its first zero byte (or the file's end). A running store writes
//! the journal from its start over zeros it wrote beforehand (the file is preallocated),
//! and once SQLite holds every line it empties the journal by writing zeros over them
//! and starts again from the start, instead of truncating the file: an append then
//! overwrites pages the file already has rather than making the file system allocate
//! new ones. Timed alone, that took a `write`'s median from 4–5 µs to under 3 and its
//! p99 from 16–18 to 8–12 (docs/benchmarks.md, "the journal overwritten in place").
//!
//! The append lock is an advisory lock (`flock`) on the journal file. Every writer of the
//! log holds it while it appends; a running twinguard holds it for as long as it runs and
//! yields it when another process announces that it waits (a shared lock on
//! `<db>.appends-wait`), then takes it back and catches up with what that process
//! appended.
//!
//! [`SqliteStore::with_append_journal`]: crate::SqliteStore::with_append_journal

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::merkle::Hash;

/// One record as the journal and the database hold it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub seq: u64,
    pub ts_ms: i64,
    pub kind: String,
    pub body: String,
    pub leaf: Hash,
}

/// The most journal a recovery reads (a crash leaves at most the appends of the moment
/// before it: the thread keeps the journal a few milliseconds behind).
pub(crate) const MAX_JOURNAL_BYTES: u64 = 1 << 30;

/// A journal SQLite has caught up with is emptied once it reaches this size (or when
/// appends pause): emptying it holds appends back for a moment.
pub(crate) const EMPTY_AT_BYTES: u64 = 1 << 20;

/// A running store's journal is made this long (zeros) when it takes the append lock, so
/// that appends up to [`EMPTY_AT_BYTES`] and beyond overwrite the file's own pages.
pub(crate) const PREALLOCATED_BYTES: u64 = 2 * EMPTY_AT_BYTES;

/// How long a writer waits for the append lock before reporting who holds it.
pub(crate) const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn journal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".appends");
    PathBuf::from(p)
}

pub(crate) fn wait_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".appends-wait");
    PathBuf::from(p)
}

/// Opens (or creates) a file of the journal's pair for locking, reading and writing at
/// an offset (not in append mode, in which Linux would ignore the offset).
pub(crate) fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// Zeros, written a chunk at a time.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// The chunk in which a journal is preallocated: one page. Linux caches a file in folios
/// as large as the write that creates them, and every later write into a folio walks all
/// of its blocks: an append into 2 MiB of zeros written at once took 7 µs at the median
/// where one into zeros written a page at a time took under 3 (docs/benchmarks.md).
const PREALLOCATE_CHUNK: usize = 4 * 1024;

/// Writes zeros over bytes `from..to` of `file`, at most `chunk` bytes a write.
fn zero(file: &File, from: u64, to: u64, chunk: usize) -> std::io::Result<()> {
    let chunk = chunk.min(ZEROS.len());
    let mut at = from;
    while at < to {
        let n = usize::try_from(to - at).map_or(chunk, |n| n.min(chunk));
        file.write_all_at(ZEROS.get(..n).unwrap_or(&ZEROS), at)?;
        at += n as u64;
    }
    Ok(())
}

/// Empties a journal whose lines take its first `len` bytes: zeros over them, or, if
/// that fails, the file truncated. An error means neither worked, and the journal may
/// then end anywhere before `len`: nothing may be written after it until a rewind works.
pub(crate) fn rewind(file: &File, len: u64) -> std::io::Result<()> {
    zero(file, 0, len, ZEROS.len()).or_else(|_| file.set_len(0))
}

/// Readies an empty journal for a store that starts writing it: truncated, then
/// [`PREALLOCATED_BYTES`] of zeros. Whatever an earlier rewind that failed halfway left
/// after the first zero byte is gone, so every byte after the journal's end is zero. The
/// zeros only save time later: if writing them fails, the file stays empty.
pub(crate) fn reset(file: &File) -> std::io::Result<()> {
    file.set_len(0)?;
    if zero(file, 0, PREALLOCATED_BYTES, PREALLOCATE_CHUNK).is_err() {
        file.set_len(0)?;
    }
    Ok(())
}

/// Whether a record kind can stand in a journal line.
pub(crate) fn kind_is_plain(kind: &str) -> bool {
    !kind.is_empty() && !kind.chars().any(char::is_control)
}

/// The rows' lines, appended to `buf`.
pub(crate) fn encode(rows: &[Row], buf: &mut Vec<u8>) {
    for r in rows {
        // Writing to a Vec cannot fail.
        let _ = write!(
            buf,
            "{}\t{}\t{}\t{}\t",
            r.seq,
            r.ts_ms,
            r.kind,
            hex::encode(r.leaf)
        );
        buf.extend_from_slice(r.body.as_bytes());
        buf.push(b'\n');
    }
}

/// The rows of a journal's bytes (up to the first zero byte), and how many bytes at its
/// end were cut short (a line without its line break). A malformed whole line is an error
/// naming it.
pub(crate) fn parse(bytes: &[u8]) -> Result<(Vec<Row>, usize), String> {
    let (bytes, _) = bytes.split_at(journal_end(bytes));
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let (lines, torn) = bytes.split_at(whole);
    let mut rows = Vec::new();
    for (i, line) in lines
        .strip_suffix(b"\n")
        .unwrap_or(lines)
        .split(|&b| b == b'\n')
        .enumerate()
    {
        if whole == 0 {
            break;
        }
        let n = i + 1;
        let text = std::str::from_utf8(line).map_err(|_| format!("line {n} is not UTF-8"))?;
        let mut f = text.splitn(5, '\t');
        let mut field = |what: &str| {
            f.next().ok_or_else(|| {
                format!(
                    "line {n} has no {what} (want seq, time, kind, leaf, body separated by tabs)"
                )
            })
        };
        let seq = field("sequence number")?;
        let ts = field("time")?;
        let kind = field("kind")?;
        let leaf = field("leaf hash")?;
        let body = field("body")?;
        let seq: u64 = seq
            .parse()
            .map_err(|_| format!("line {n}: sequence number {seq:?} is not a whole number"))?;
        let ts_ms: i64 = ts
            .parse()
            .map_err(|_| format!("line {n}: time {ts:?} is not a whole number of ms"))?;
        let leaf: Hash = hex::decode(leaf)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| format!("line {n}: leaf {leaf:?} is not 64 hex digits"))?;
        rows.push(Row {
            seq,
            ts_ms,
            kind: kind.to_string(),
            body: body.to_string(),
            leaf,
        });
    }
    Ok((rows, torn.len()))
}

/// Where a journal's bytes end: at the first zero byte, or their end.
fn journal_end(bytes: &[u8]) -> usize {
    bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len())
}

/// Someone announced that they wait for the append lock.
pub(crate) fn someone_waits(wait: &File) -> bool {
    match wait.try_lock() {
        Ok(()) => {
            let _ = wait.unlock();
            false
        }
        Err(TryLockError::WouldBlock) => true,
        Err(TryLockError::Error(_)) => false,
    }
}

/// Takes the append lock on `journal`. When it is held elsewhere, announces the wait (a
/// shared lock on `wait_path`, which a running owner sees and yields to) and polls until
/// `timeout`.
pub(crate) fn acquire(journal: &File, wait_path: &Path, timeout: Duration) -> Result<(), String> {
    match journal.try_lock() {
        Ok(()) => return Ok(()),
        Err(TryLockError::WouldBlock) => {}
        Err(TryLockError::Error(e)) => return Err(format!("cannot lock its journal: {e}")),
    }
    let wait = open(wait_path).map_err(|e| format!("cannot open {}: {e}", wait_path.display()))?;
    wait.lock_shared()
        .map_err(|e| format!("cannot lock {}: {e}", wait_path.display()))?;
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_micros(500));
        match journal.try_lock() {
            Ok(()) => return Ok(()),
            Err(TryLockError::WouldBlock) if start.elapsed() < timeout => {}
            Err(TryLockError::WouldBlock) => {
                return Err(format!(
                    "another process has held its append lock for {} s (a twinguard that does not yield it?)",
                    timeout.as_secs()
                ));
            }
            Err(TryLockError::Error(e)) => return Err(format!("cannot lock its journal: {e}")),
        }
    }
}

/// Takes the append lock back after yielding it: every process announced as waiting goes
/// first, then the lock is taken as [`acquire`] does.
pub(crate) fn reacquire(
    journal: &File,
    wait: &File,
    wait_path: &Path,
    timeout: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    while someone_waits(wait) && start.elapsed() < timeout {
        std::thread::sleep(Duration::from_micros(500));
    }
    acquire(journal, wait_path, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: u64, body: &str) -> Row {
        Row {
            seq,
            ts_ms: 1_700_000_000_000 + seq as i64,
            kind: "decision".into(),
            body: body.into(),
            leaf: [seq as u8; 32],
        }
    }

    #[test]
    fn lines_read_back_as_written() {
        let rows = vec![
            row(1, r#"{"a":"x\ty\nz"}"#),
            row(2, "{}"),
            row(3, r#"[1,2]"#),
        ];
        let mut buf = Vec::new();
        encode(&rows, &mut buf);
        assert_eq!(parse(&buf).unwrap(), (rows, 0));
        assert_eq!(parse(b"").unwrap(), (vec![], 0));
    }

    #[test]
    fn a_line_cut_short_is_dropped_and_counted() {
        let mut buf = Vec::new();
        encode(&[row(1, "{}"), row(2, r#"{"k":1}"#)], &mut buf);
        let cut = buf.len() - 4;
        let (rows, torn) = parse(&buf[..cut]).unwrap();
        assert_eq!(rows, vec![row(1, "{}")]);
        assert_eq!(torn, buf.len() - 4 - rows_len(&rows));
    }

    fn rows_len(rows: &[Row]) -> usize {
        let mut b = Vec::new();
        encode(rows, &mut b);
        b.len()
    }

    #[test]
    fn the_journal_ends_at_its_first_zero_byte() {
        let mut buf = Vec::new();
        encode(&[row(1, "{}"), row(2, r#"{"k":1}"#)], &mut buf);
        let first = rows_len(&[row(1, "{}")]);
        // Zeros after whole lines, and after a line cut short, hide whatever follows.
        let mut after_whole = buf.clone();
        after_whole.extend_from_slice(b"\0\0garbage\n");
        assert_eq!(
            parse(&after_whole).unwrap(),
            (vec![row(1, "{}"), row(2, r#"{"k":1}"#)], 0)
        );
        let mut after_torn = buf.get(..first + 5).unwrap().to_vec();
        after_torn.extend_from_slice(&[0; 4]);
        after_torn.extend_from_slice(&buf);
        assert_eq!(parse(&after_torn).unwrap(), (vec![row(1, "{}")], 5));
        assert_eq!(parse(&[0; 16]).unwrap(), (vec![], 0));
    }

    #[test]
    fn a_rewound_journal_is_zeros_where_its_lines_were() {
        let dir = tempfile::tempdir().unwrap();
        let file = open(&dir.path().join("j")).unwrap();
        reset(&file).unwrap();
        assert_eq!(file.metadata().unwrap().len(), PREALLOCATED_BYTES);
        let mut buf = Vec::new();
        encode(&[row(1, "{}"), row(2, "{}")], &mut buf);
        file.write_all_at(&buf, 0).unwrap();
        let mut back = vec![0; buf.len() + 8];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(parse(&back).unwrap().0.len(), 2);
        rewind(&file, buf.len() as u64).unwrap();
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(back.iter().all(|&b| b == 0));
        assert_eq!(file.metadata().unwrap().len(), PREALLOCATED_BYTES);
    }

    #[test]
    fn a_malformed_line_is_named() {
        let e = parse(b"1\t2\tk\tzz\t{}\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("leaf"), "{e}");
        let mut buf = Vec::new();
        encode(&[row(1, "{}")], &mut buf);
        buf.extend_from_slice(b"x\t2\tk\n");
        let e = parse(&buf).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }
}
