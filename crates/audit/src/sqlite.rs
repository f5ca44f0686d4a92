//! SQLite storage for the audit log (the default store).
//!
//! Tables: `audit` (one row per record: its fields and leaf hash), `tile` (the hash of
//! every complete run of 256 leaves, so that proofs at ten million records read one tile
//! of leaves and a few hundred kilobytes of tile hashes, never the log), `checkpoint`
//! (every signed checkpoint note) and `quarantine`. The tiles are derived data: a proof
//! built from a wrong tile fails to verify against the signed checkpoint, and
//! verification never reads them.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{SigningKey, VerifyingKey};
use rusqlite::{Connection, OptionalExtension, params};

use crate::journal::{self, Row};
use crate::merkle::{self, Frontier, Hash, Subtrees};
use crate::{
    AuditError, AuditStore, Checkpoint, ConsistencyProof, Entry, Head, InclusionProof, LogCheck,
    Quarantined, Record, Verification, origin_for, record_leaf,
};

const SCHEMA_VERSION: i64 = 2;
const APPLICATION_ID: i64 = 0x7467_6175; // "tgau"
/// Leaves per tile: 2^8.
const TILE_BITS: u32 = 8;
const TILE: u64 = 1 << TILE_BITS;

/// When checkpoints are signed: after `every` of wall-clock time or `records` new records,
/// whichever comes first (and on [`AuditStore::checkpoint`]). An append signs one itself
/// only as the first of an opening of the store and at `records`; the time is kept by
/// whoever calls [`AuditStore::checkpoint_if_due`] (the core does, every second), so that
/// an append, which a guard decision waits for, never waits for a signature besides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckpointPolicy {
    pub every: Duration,
    pub records: u64,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            every: Duration::from_secs(1),
            records: 100_000,
        }
    }
}

pub struct SqliteStore {
    conn: Connection,
    path: String,
    key: SigningKey,
    origin: String,
    tree: Tree,
    head: Option<Head>,
    latest: Option<Checkpoint>,
    last_checkpoint: Option<Instant>,
    policy: CheckpointPolicy,
    /// Bytes of rejected frames kept so far, and the most that will be kept.
    quarantined_bytes: u64,
    quarantine_cap: u64,
    /// Stopped with the store (see `Drop`).
    wal: Option<WalCheckpointer>,
    journal: Journal,
}

/// The append lock and, for a store that keeps an append journal
/// ([`SqliteStore::with_append_journal`]), the journal and the thread that copies it into
/// SQLite.
struct Journal {
    path: PathBuf,
    wait_path: PathBuf,
    shared: Arc<Shared>,
    writer: Option<IndexWriter>,
    /// The lines of the append being written (kept to reuse its allocation).
    buf: Vec<u8>,
}

/// What the store and its index writer share.
struct Shared {
    state: Mutex<JournalState>,
    changed: Condvar,
}

struct JournalState {
    /// The journal; its `flock` is the append lock.
    file: File,
    /// The wait file, whose shared locks announce processes waiting for the append lock.
    wait: File,
    /// This store holds the append lock between appends (a store with a journal).
    owned: bool,
    /// Where the journal's lines end and the next append's go; every byte after it is
    /// zero or past the file's end.
    len: u64,
    /// The newest record in the journal, and the newest SQLite holds, as far as this
    /// store wrote them.
    journaled: u64,
    written: u64,
    /// Why the index writer cannot write (it retries); appends are refused meanwhile.
    failed: Option<String>,
}

fn lock(shared: &Shared) -> MutexGuard<'_, JournalState> {
    shared.state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The thread that copies journaled appends into SQLite, and the way to feed and stop it.
struct IndexWriter {
    tx: Option<mpsc::Sender<Batch>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One append's rows and the tiles they complete.
struct Batch {
    rows: Vec<Row>,
    tiles: Vec<(u64, Hash)>,
}

/// The thread that copies the WAL into the database, and the way to stop it.
struct WalCheckpointer {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Drop for SqliteStore {
    /// A store closed cleanly leaves the database file whole: the checkpointer thread is
    /// stopped and joined (its connection closed), and the WAL is copied in and emptied,
    /// so the file alone holds every record and checkpoint (for a copy handed to an
    /// auditor). If a reader holds the WAL, it stays beside the file, which SQLite reads
    /// together.
    fn drop(&mut self) {
        // The index writer copies what is left of the journal, and the journal is
        // emptied only once SQLite holds all of it.
        if let Some(mut w) = self.journal.writer.take() {
            drop(w.tx.take());
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
            let mut st = lock(&self.journal.shared);
            if st.owned && st.written >= st.journaled && st.failed.is_none() {
                let _ = st.file.set_len(0);
            }
            if st.owned {
                let _ = st.file.unlock();
                st.owned = false;
            }
        }
        if let Some(w) = self.wal.take() {
            drop(w.stop);
            let _ = w.thread.join();
        }
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }
}

/// Bytes of rejected frames kept in the quarantine by default (a flood of forged frames
/// cannot fill the disk; past the cap each rejection is still recorded, without its bytes).
pub const DEFAULT_QUARANTINE_CAP: u64 = 256 * 1024 * 1024;

/// The writer's view of the tree: the roots of complete tiles and of every complete
/// power-of-two run of them above, the leaves of the unfinished tile, and the frontier for
/// the current root.
#[derive(Default)]
struct Tree {
    /// `levels[0]`: tile hashes (256 leaves each); `levels[k]`: runs of 2^k tiles.
    levels: Vec<Vec<Hash>>,
    tail: Vec<Hash>,
    frontier: Frontier,
}

impl Tree {
    fn size(&self) -> u64 {
        self.frontier.size()
    }

    fn complete_tiles(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    fn add_tile(&mut self, tile: Hash) {
        let mut h = tile;
        let mut level = 0usize;
        loop {
            if self.levels.len() <= level {
                self.levels.push(Vec::new());
            }
            let Some(row) = self.levels.get_mut(level) else {
                return;
            };
            row.push(h);
            if row.len() % 2 == 1 {
                return;
            }
            let n = row.len();
            match (row.get(n - 2), row.get(n - 1)) {
                (Some(l), Some(r)) => h = merkle::node_hash(l, r),
                _ => return,
            }
            level += 1;
        }
    }

    /// A complete aligned subtree of at least a tile, if known.
    fn perfect(&self, lo: u64, n: u64) -> Option<Hash> {
        if n < TILE || !n.is_power_of_two() || !lo.is_multiple_of(n) {
            return None;
        }
        let level = (n.trailing_zeros() - TILE_BITS) as usize;
        let idx = usize::try_from(lo >> n.trailing_zeros()).ok()?;
        self.levels.get(level)?.get(idx).copied()
    }
}

/// The tree over the database: complete subtrees from the tiles, leaves from the records
/// (one tile's worth at a time, cached).
struct DbTree<'a> {
    conn: &'a Connection,
    tree: &'a Tree,
    tiles: HashMap<u64, Vec<Hash>>,
}

impl DbTree<'_> {
    fn tile_leaves(&mut self, idx: u64) -> rusqlite::Result<&[Hash]> {
        if idx == self.tree.complete_tiles() {
            return Ok(&self.tree.tail);
        }
        if !self.tiles.contains_key(&idx) {
            let mut stmt = self.conn.prepare_cached(
                "SELECT leaf FROM audit WHERE seq > ?1 AND seq <= ?2 ORDER BY seq",
            )?;
            let leaves = stmt
                .query_map(
                    params![(idx * TILE) as i64, ((idx + 1) * TILE) as i64],
                    |r| r.get::<_, Vec<u8>>(0),
                )?
                .map(|l| l.map(|v| to32(&v)))
                .collect::<rusqlite::Result<Vec<Hash>>>()?;
            self.tiles.insert(idx, leaves);
        }
        Ok(self.tiles.get(&idx).map_or(&[][..], |v| &v[..]))
    }
}

impl Subtrees for DbTree<'_> {
    type Error = rusqlite::Error;

    fn subtree(&mut self, lo: u64, hi: u64) -> rusqlite::Result<Hash> {
        let n = hi.saturating_sub(lo);
        if n == 0 {
            return Ok(merkle::EMPTY_ROOT);
        }
        if let Some(h) = self.tree.perfect(lo, n) {
            return Ok(h);
        }
        if lo / TILE == (hi - 1) / TILE {
            let base = lo / TILE * TILE;
            let leaves = self.tile_leaves(lo / TILE)?;
            return Ok(merkle::range_root(leaves, lo - base, hi - base));
        }
        let k = merkle::split(n);
        let left = self.subtree(lo, lo + k)?;
        let right = self.subtree(lo + k, hi)?;
        Ok(merkle::node_hash(&left, &right))
    }
}

fn to32(v: &[u8]) -> Hash {
    // A wrong length leaves zeros, which then fail verification instead of panicking.
    v.try_into().unwrap_or([0u8; 32])
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl SqliteStore {
    /// Opens (or creates) the audit database at `path`, signing checkpoints with `key`.
    pub fn open(path: &Path, key: SigningKey) -> Result<SqliteStore, AuditError> {
        let name = path.display().to_string();
        let open_err = |message: String| AuditError::Open {
            path: name.clone(),
            message,
        };
        let conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        init(&conn).map_err(|e| open_err(e.to_string()))?;
        check_identity(&conn).map_err(open_err)?;
        let tree = load_tree(&conn).map_err(open_err)?;
        let origin = origin_for(&key.verifying_key());
        let latest = latest_note(&conn)
            .map_err(|e| open_err(e.to_string()))?
            .map(|note| {
                Checkpoint::open(&note, &key.verifying_key())
                    .map_err(|e| open_err(format!("its newest checkpoint: {e}")))
            })
            .transpose()?;
        let quarantined_bytes: i64 = conn
            .query_row(
                "SELECT COALESCE(SUM(LENGTH(bytes)), 0) FROM quarantine",
                [],
                |r| r.get(0),
            )
            .map_err(|e| open_err(e.to_string()))?;
        let head = (tree.size() > 0).then(|| Head {
            seq: tree.size(),
            hash: tree.frontier.root(),
        });
        let jpath = journal::journal_path(path);
        let wait_path = journal::wait_path(path);
        let file = journal::open(&jpath)
            .map_err(|e| open_err(format!("cannot open its journal {}: {e}", jpath.display())))?;
        let wait = journal::open(&wait_path).map_err(|e| {
            open_err(format!(
                "cannot open its wait file {}: {e}",
                wait_path.display()
            ))
        })?;
        let size = tree.size();
        let mut store = SqliteStore {
            conn,
            path: name,
            key,
            origin,
            tree,
            head,
            latest,
            last_checkpoint: None,
            policy: CheckpointPolicy::default(),
            quarantined_bytes: quarantined_bytes.max(0) as u64,
            quarantine_cap: DEFAULT_QUARANTINE_CAP,
            wal: wal_checkpointer(path),
            journal: Journal {
                path: jpath,
                wait_path,
                shared: Arc::new(Shared {
                    state: Mutex::new(JournalState {
                        file,
                        wait,
                        owned: false,
                        len: 0,
                        journaled: size,
                        written: size,
                        failed: None,
                    }),
                    changed: Condvar::new(),
                }),
                writer: None,
                buf: Vec::new(),
            },
        };
        // What a crashed twinguard left in the journal goes into the log now, unless a
        // live one holds the append lock (then the journal is its own).
        let shared = Arc::clone(&store.journal.shared);
        let st = lock(&shared);
        if st.file.try_lock().is_ok() {
            let recovered = store.recover(&st.file);
            let _ = st.file.unlock();
            recovered?;
        }
        drop(st);
        Ok(store)
    }

    /// Makes this store the log's running writer: it holds the append lock (yielding it
    /// to a process that waits for it, such as `twinguard device rotate`), and an append
    /// returns once its records are in the journal (one `write`); a thread of the store's
    /// own copies them into SQLite in group commits. Whatever reads SQLite through this
    /// store (proofs, checkpoints, verification) waits for that thread first; other
    /// processes see the log a few milliseconds behind. If SQLite cannot be written,
    /// appends are refused (nothing that waits for one goes ahead) and the journal keeps
    /// what was accepted until the thread, which retries, or the next opening writes it.
    pub fn with_append_journal(mut self) -> Result<SqliteStore, AuditError> {
        let shared = Arc::clone(&self.journal.shared);
        let mut st = lock(&shared);
        journal::acquire(&st.file, &self.journal.wait_path, journal::LOCK_TIMEOUT)
            .map_err(|m| self.journal_err(m))?;
        let ready = self.recover(&st.file).and_then(|()| {
            journal::reset(&st.file).map_err(|e| self.journal_err(e))?;
            let conn = Connection::open(&self.path).map_err(|e| self.io(e))?;
            init(&conn).map_err(|e| self.io(e))?;
            Ok(conn)
        });
        let conn = match ready {
            Ok(c) => c,
            Err(e) => {
                let _ = st.file.unlock();
                return Err(e);
            }
        };
        st.owned = true;
        st.journaled = self.tree.size();
        st.written = self.tree.size();
        drop(st);
        let wait = lock(&self.journal.shared)
            .wait
            .try_clone()
            .map_err(|e| self.journal_err(e))?;
        let (tx, rx) = mpsc::channel();
        let name = self.path.clone();
        let shared = Arc::clone(&self.journal.shared);
        let thread = std::thread::Builder::new()
            .name("audit-index".into())
            .spawn(move || index_writer(conn, &shared, &wait, &rx, &name))
            .map_err(|e| self.io(format!("cannot start the thread writing the log: {e}")))?;
        self.journal.writer = Some(IndexWriter {
            tx: Some(tx),
            thread: Some(thread),
        });
        Ok(self)
    }

    fn journal_err(&self, message: impl std::fmt::Display) -> AuditError {
        AuditError::Io {
            path: self.journal.path.display().to_string(),
            message: message.to_string(),
        }
    }

    /// Waits until SQLite holds every record this store has journaled.
    fn sync(&self) -> Result<(), AuditError> {
        if self.journal.writer.is_none() {
            return Ok(());
        }
        let mut st = lock(&self.journal.shared);
        while st.written < st.journaled {
            if let Some(m) = &st.failed {
                return Err(self.journal_err(format!(
                    "records {}..={} wait in the journal: the log cannot be written: {m}",
                    st.written + 1,
                    st.journaled
                )));
            }
            st = self
                .journal
                .shared
                .changed
                .wait_timeout(st, Duration::from_millis(100))
                .map_or_else(|e| e.into_inner().0, |(g, _)| g);
        }
        Ok(())
    }

    /// Writes into the log what a journal holds beyond it (a twinguard that stopped
    /// without copying it), checking every line against the leaf it carries, then empties
    /// the journal. Called with the append lock held. A journal that does not continue
    /// the log is reported and left in place.
    fn recover(&mut self, file: &File) -> Result<(), AuditError> {
        let len = file.metadata().map_err(|e| self.journal_err(e))?.len();
        let mut first = [0u8];
        if len == 0 || (file.read_exact_at(&mut first, 0).is_ok() && first == [0]) {
            // Empty: the journal ends at its first zero byte.
            return Ok(());
        }
        if len > journal::MAX_JOURNAL_BYTES {
            return Err(self.journal_err(format!(
                "holds {len} bytes, more than a journal can ({} bytes); it is left in place",
                journal::MAX_JOURNAL_BYTES
            )));
        }
        let mut bytes = vec![0u8; len as usize];
        file.read_exact_at(&mut bytes, 0)
            .map_err(|e| self.journal_err(e))?;
        let (rows, torn) = journal::parse(&bytes)
            .map_err(|m| self.journal_err(format!("{m}; the journal is left in place")))?;
        self.reload()?;
        let stored = self.tree.size();
        let rest: Vec<Row> = rows.into_iter().filter(|r| r.seq > stored).collect();
        let replayed = rest.len();
        if !rest.is_empty() {
            let items = rest
                .iter()
                .map(|r| (r.ts_ms, r.kind.clone(), r.body.clone()))
                .collect();
            self.append_direct(items, Some(&rest))?;
        }
        file.set_len(0).map_err(|e| self.journal_err(e))?;
        if replayed > 0 || torn > 0 {
            let body = serde_json::json!({
                "journal": self.journal.path.display().to_string(),
                "records_recovered": replayed,
                "bytes_cut_short": torn,
            });
            let item = (
                now_ms(),
                "audit_journal_recovered".to_string(),
                body.to_string(),
            );
            self.append_direct(vec![item], None)?;
        }
        Ok(())
    }

    /// Takes the append lock back if this store yielded it, and catches up with what the
    /// process it yielded to appended.
    fn take_back_lock(&mut self) -> Result<(), AuditError> {
        let shared = Arc::clone(&self.journal.shared);
        let mut st = lock(&shared);
        if st.owned {
            return Ok(());
        }
        let (file, wait) = (&st.file, &st.wait);
        journal::reacquire(file, wait, &self.journal.wait_path, journal::LOCK_TIMEOUT)
            .map_err(|m| self.journal_err(m))?;
        let caught_up = self.recover(&st.file).and_then(|()| {
            journal::reset(&st.file).map_err(|e| self.journal_err(e))?;
            if stored_records(&self.conn).map_err(|e| self.io(e))? != self.tree.size() {
                self.reload()?;
            }
            Ok(())
        });
        if let Err(e) = caught_up {
            let _ = st.file.unlock();
            return Err(e);
        }
        st.owned = true;
        st.len = 0;
        st.journaled = self.tree.size();
        st.written = self.tree.size();
        Ok(())
    }

    /// Appends with the append lock taken for this append alone (a store without a
    /// journal: a command beside a running twinguard, which yields the lock to it).
    fn append_locked(&mut self, items: Vec<Item>) -> Result<Head, AuditError> {
        let shared = Arc::clone(&self.journal.shared);
        let st = lock(&shared);
        journal::acquire(&st.file, &self.journal.wait_path, journal::LOCK_TIMEOUT)
            .map_err(|m| self.journal_err(m))?;
        let r = self
            .recover(&st.file)
            .and_then(|()| self.append_direct(items, None));
        let _ = st.file.unlock();
        r.map(|(head, _)| head)
    }

    /// Appends through the journal: one `write`, then the rows go to the index writer.
    fn append_journaled(&mut self, items: Vec<Item>) -> Result<Head, AuditError> {
        self.take_back_lock()?;
        let size = self.tree.size() + items.len() as u64;
        if checkpoint_due(
            &self.policy,
            self.latest.as_ref(),
            self.last_checkpoint,
            size,
            false,
        ) {
            // Signing happens in SQLite's transaction: let the writer catch up first.
            self.sync()?;
            let (head, _) = self.append_direct(items, None)?;
            let mut st = lock(&self.journal.shared);
            st.journaled = head.seq;
            st.written = head.seq;
            return Ok(head);
        }
        let mut frontier = self.tree.frontier.clone();
        let (rows, tiles) = rows_for(self.tree.complete_tiles(), &mut frontier, items);
        let leaves: Vec<Hash> = rows.iter().map(|r| r.leaf).collect();
        if !rows.is_empty() {
            self.journal.buf.clear();
            journal::encode(&rows, &mut self.journal.buf);
            let mut st = lock(&self.journal.shared);
            if let Some(m) = &st.failed {
                let m = format!(
                    "the log cannot be written ({m}); records {}..={} wait in the journal",
                    st.written + 1,
                    st.journaled
                );
                drop(st);
                return Err(self.journal_err(m));
            }
            if let Err(e) = st.file.write_all_at(&self.journal.buf, st.len) {
                // Cut off whatever part of the lines went in: the append did not happen.
                let _ = st.file.set_len(st.len);
                drop(st);
                return Err(self.journal_err(e));
            }
            st.len += self.journal.buf.len() as u64;
            st.journaled = frontier.size();
        }
        let sent = rows.is_empty()
            || self
                .journal
                .writer
                .as_ref()
                .and_then(|w| w.tx.as_ref())
                .is_some_and(|tx| {
                    tx.send(Batch {
                        rows,
                        tiles: tiles.clone(),
                    })
                    .is_ok()
                });
        // The journal holds the records: the tree takes them whatever happens next.
        let head = self.apply(frontier, &leaves, tiles);
        if !sent {
            let mut st = lock(&self.journal.shared);
            st.failed = Some("the thread writing the log has stopped".into());
            drop(st);
            return Err(self.journal_err(
                "the thread writing the log has stopped; the journal keeps the records for the next opening",
            ));
        }
        Ok(head)
    }

    /// The tree in memory takes rows that are durable.
    fn apply(&mut self, frontier: Frontier, leaves: &[Hash], tiles: Vec<(u64, Hash)>) -> Head {
        self.tree.frontier = frontier;
        for leaf in leaves {
            self.tree.tail.push(*leaf);
            if self.tree.tail.len() as u64 == TILE {
                self.tree.tail.clear();
            }
        }
        for (_, t) in tiles {
            self.tree.add_tile(t);
        }
        let head = Head {
            seq: self.tree.size(),
            hash: self.tree.frontier.root(),
        };
        self.head = Some(head.clone());
        head
    }

    /// Appends in one SQLite transaction (the append lock held), first catching up with
    /// another process's appends. `expect`: the rows a journal says these are (their
    /// numbers and leaves must come out the same).
    fn append_direct(
        &mut self,
        items: Vec<Item>,
        expect: Option<&[Row]>,
    ) -> Result<(Head, Vec<Row>), AuditError> {
        let path = self.path.clone();
        let io = |e: rusqlite::Error| AuditError::Io {
            path: path.clone(),
            message: e.to_string(),
        };
        // Another process may have appended since this one last did (`twinguard device
        // rotate` beside a running twinguard): under the write lock, catch up first.
        let mut attempts = 0;
        let tx = loop {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(io)?;
            let stored = stored_records(&tx).map_err(io)?;
            if stored == self.tree.size() {
                break tx;
            }
            drop(tx);
            attempts += 1;
            if attempts > 3 {
                return Err(AuditError::Io {
                    path: self.path.clone(),
                    message: format!(
                        "another process keeps appending to this log (it holds {stored} records, this one expected {})",
                        self.tree.size()
                    ),
                });
            }
            self.reload()?;
        };
        // Work on a copy of the tree's growing edge (one hash per set bit of its size): a
        // failed transaction leaves the tree in memory as the database is.
        let mut frontier = self.tree.frontier.clone();
        let (rows, tiles) = rows_for(self.tree.complete_tiles(), &mut frontier, items);
        if let Some(want) = expect {
            let differs = rows
                .iter()
                .zip(want)
                .find(|(got, want)| got.seq != want.seq || got.leaf != want.leaf);
            if let Some((got, want)) = differs {
                return Err(AuditError::Io {
                    path: self.journal.path.display().to_string(),
                    message: format!(
                        "does not continue the log: its line for record {} would be record {} with another leaf hash (the journal or the log was altered); the journal is left in place",
                        want.seq, got.seq
                    ),
                });
            }
        }
        let due = checkpoint_due(
            &self.policy,
            self.latest.as_ref(),
            self.last_checkpoint,
            frontier.size(),
            false,
        );
        insert_rows(&tx, &rows, &tiles).map_err(io)?;
        // The tree in memory changes only once the data is durable.
        let checkpoint = if due {
            Some(Self::sign_checkpoint(&tx, &self.key, &self.origin, &frontier).map_err(io)?)
        } else {
            None
        };
        tx.commit().map_err(io)?;
        let leaves: Vec<Hash> = rows.iter().map(|r| r.leaf).collect();
        let head = self.apply(frontier, &leaves, tiles);
        if let Some((cp, _)) = checkpoint {
            self.latest = Some(cp);
            self.last_checkpoint = Some(Instant::now());
        }
        Ok((head, rows))
    }

    /// Sets the most bytes of rejected frames the quarantine keeps.
    pub fn with_quarantine_cap(mut self, bytes: u64) -> SqliteStore {
        self.quarantine_cap = bytes;
        self
    }

    pub fn with_checkpoints(mut self, policy: CheckpointPolicy) -> SqliteStore {
        self.policy = policy;
        self
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Opens an existing database read-only and verifies it without the signing key, also
    /// against checkpoints someone kept (`held`: note text and where it came from).
    pub fn verify_file(
        path: &Path,
        key: &VerifyingKey,
        held: &[(String, String)],
    ) -> Result<Verification, AuditError> {
        let conn = open_read_only(path)?;
        let name = path.display().to_string();
        verify_conn(&conn, key, held).map_err(|e| AuditError::Io {
            path: name,
            message: e.to_string(),
        })
    }

    /// How many records of each kind the log holds, read-only.
    pub fn kind_counts(path: &Path) -> Result<std::collections::BTreeMap<String, u64>, AuditError> {
        let conn = open_read_only(path)?;
        let name = path.display().to_string();
        conn.prepare("SELECT kind, COUNT(*) FROM audit GROUP BY kind")
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
                })?
                .collect()
            })
            .map_err(|e| AuditError::Io {
                path: name,
                message: e.to_string(),
            })
    }

    /// The newest record of a kind, if any.
    pub fn newest_of_kind(&self, kind: &str) -> Result<Option<u64>, AuditError> {
        self.sync()?;
        self.conn
            .query_row("SELECT MAX(seq) FROM audit WHERE kind = ?1", [kind], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .map(|v| v.map(|s| s.max(0) as u64))
            .map_err(|e| self.io(e))
    }

    /// The newest record in the log at `path` whose kind is one of `kinds`, searched from
    /// the newest back (read-only: another process may be appending).
    pub fn newest_record_of(path: &Path, kinds: &[&str]) -> Result<Option<Record>, AuditError> {
        let conn = open_read_only(path)?;
        let marks = vec!["?"; kinds.len()].join(",");
        conn.query_row(
            &format!(
                "SELECT seq, ts_ms, kind, body, leaf FROM audit WHERE kind IN ({marks}) ORDER BY seq DESC LIMIT 1"
            ),
            rusqlite::params_from_iter(kinds),
            row_record,
        )
        .optional()
        .map_err(|e| AuditError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Writes the log to `out` as an export that verifies with only the public key.
    pub fn export_file<W: std::io::Write>(
        path: &Path,
        key: &VerifyingKey,
        out: &mut W,
        out_name: &str,
    ) -> Result<u64, AuditError> {
        let conn = open_read_only(path)?;
        let name = path.display().to_string();
        let io = |e: rusqlite::Error| AuditError::Io {
            path: name.clone(),
            message: e.to_string(),
        };
        // One read transaction: the export is one consistent snapshot even while
        // twinguard appends.
        conn.execute_batch("BEGIN").map_err(io)?;
        let notes = all_notes(&conn).map_err(io)?;
        let records = stored_records(&conn).map_err(io)?;
        let header = crate::export::Header {
            format: crate::export::FORMAT.into(),
            version: crate::export::VERSION,
            origin: origin_for(key),
            records,
            checkpoints: notes.len() as u64,
        };
        let mut stmt = conn
            .prepare("SELECT seq, ts_ms, kind, body, leaf FROM audit ORDER BY seq")
            .map_err(io)?;
        let rows = stmt.query_map([], row_record).map_err(io)?;
        crate::export::write(out, out_name, &header, &notes, rows.map(|r| r.map_err(io)))
    }

    fn io(&self, e: impl std::fmt::Display) -> AuditError {
        AuditError::Io {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// The sizes of every stored checkpoint, ascending.
    pub fn checkpoint_sizes(&self) -> Result<Vec<u64>, AuditError> {
        self.sync()?;
        self.conn
            .prepare("SELECT size FROM checkpoint ORDER BY size")
            .and_then(|mut s| {
                s.query_map([], |r| r.get::<_, i64>(0))?
                    .map(|r| r.map(|v| v.max(0) as u64))
                    .collect()
            })
            .map_err(|e| self.io(e))
    }

    /// The signed note of the checkpoint of exactly `size` records, or of the newest.
    pub fn checkpoint_note(&self, size: Option<u64>) -> Result<Option<String>, AuditError> {
        self.sync()?;
        match size {
            None => latest_note(&self.conn).map_err(|e| self.io(e)),
            Some(s) => self
                .conn
                .query_row(
                    "SELECT note FROM checkpoint WHERE size = ?1",
                    [s as i64],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| self.io(e)),
        }
    }

    /// Proves record `seq` is in the log of the newest checkpoint (or of the checkpoint of
    /// `size` records), signing a checkpoint first when none covers it yet.
    pub fn prove_inclusion(
        &mut self,
        seq: u64,
        size: Option<u64>,
    ) -> Result<InclusionProof, AuditError> {
        self.sync()?;
        if seq == 0 || seq > self.tree.size() {
            return Err(AuditError::Proof(format!(
                "there is no record {seq}: the log holds records 1..={}",
                self.tree.size()
            )));
        }
        if size.is_none() && self.latest.as_ref().is_none_or(|c| c.size < seq) {
            self.checkpoint()?;
        }
        let note = self.checkpoint_note(size)?.ok_or_else(|| {
            AuditError::Proof(format!(
                "there is no checkpoint of {} records",
                size.unwrap_or(seq)
            ))
        })?;
        let cp = Checkpoint::open(&note, &self.key.verifying_key())
            .map_err(|e| AuditError::Proof(e.to_string()))?;
        if cp.size < seq {
            return Err(AuditError::Proof(format!(
                "the checkpoint of {} records does not cover record {seq}",
                cp.size
            )));
        }
        let record = self
            .conn
            .query_row(
                "SELECT seq, ts_ms, kind, body, leaf FROM audit WHERE seq = ?1",
                [seq as i64],
                row_record,
            )
            .map_err(|e| self.io(e))?;
        let mut t = DbTree {
            conn: &self.conn,
            tree: &self.tree,
            tiles: HashMap::new(),
        };
        let proof = merkle::inclusion_proof(&mut t, seq - 1, cp.size).map_err(|e| self.io(e))?;
        Ok(InclusionProof {
            record,
            tree_size: cp.size,
            proof,
            checkpoint: note,
        })
    }

    /// Proves that the log of the newest checkpoint extends the one of `old` (a signed
    /// note someone kept); fails, saying so, when it does not.
    pub fn prove_consistency(&mut self, old: &str) -> Result<ConsistencyProof, AuditError> {
        self.sync()?;
        let key = self.key.verifying_key();
        let old_cp = Checkpoint::open(old, &key).map_err(|e| AuditError::Proof(e.to_string()))?;
        if self
            .latest
            .as_ref()
            .is_none_or(|c| c.size < self.tree.size())
        {
            self.checkpoint()?;
        }
        let new = self
            .checkpoint_note(None)?
            .ok_or_else(|| AuditError::Proof("the log has no checkpoint yet".to_string()))?;
        let new_cp = Checkpoint::open(&new, &key).map_err(|e| AuditError::Proof(e.to_string()))?;
        if old_cp.size > new_cp.size {
            return Err(AuditError::Proof(format!(
                "the checkpoint held is of {} records and the log has {}: records were removed",
                old_cp.size, new_cp.size
            )));
        }
        let mut t = DbTree {
            conn: &self.conn,
            tree: &self.tree,
            tiles: HashMap::new(),
        };
        let proof =
            merkle::consistency_proof(&mut t, old_cp.size, new_cp.size).map_err(|e| self.io(e))?;
        Ok(ConsistencyProof {
            old: old.to_string(),
            new,
            proof,
        })
    }

    /// Rereads the tree and the newest checkpoint from the database.
    fn reload(&mut self) -> Result<(), AuditError> {
        self.tree = load_tree(&self.conn).map_err(|m| self.io(m))?;
        self.latest = latest_note(&self.conn)
            .map_err(|e| self.io(e))?
            .map(|note| Checkpoint::open(&note, &self.key.verifying_key()))
            .transpose()
            .map_err(|e| self.io(format!("its newest checkpoint: {e}")))?;
        Ok(())
    }

    fn due(&self) -> bool {
        checkpoint_due(
            &self.policy,
            self.latest.as_ref(),
            self.last_checkpoint,
            self.tree.size(),
            true,
        )
    }

    /// Signs and stores a checkpoint of the tree whose edge is `frontier` (inside the
    /// caller's transaction).
    fn sign_checkpoint(
        conn: &Connection,
        key: &SigningKey,
        origin: &str,
        frontier: &Frontier,
    ) -> rusqlite::Result<(Checkpoint, String)> {
        let cp = Checkpoint {
            origin: origin.to_string(),
            size: frontier.size(),
            root: frontier.root(),
            timestamp_ms: now_ms(),
        };
        let note = cp.sign(key);
        conn.prepare_cached(
            "INSERT INTO checkpoint (size, ts_ms, note) VALUES (?1, ?2, ?3)
             ON CONFLICT(size) DO NOTHING",
        )?
        .execute(params![cp.size as i64, cp.timestamp_ms, note])?;
        Ok((cp, note))
    }
}

/// A record to append: its time, kind and body as JSON text.
type Item = (i64, String, String);

/// The rows of `items` numbered on from the tree's edge `frontier` (which they advance),
/// and the tiles they complete (`tiles`: how many the tree had).
fn rows_for(tiles: u64, frontier: &mut Frontier, items: Vec<Item>) -> (Vec<Row>, Vec<(u64, Hash)>) {
    let mut rows = Vec::with_capacity(items.len());
    let mut done = Vec::new();
    for (ts_ms, kind, body) in items {
        let seq = frontier.size() + 1;
        let leaf = record_leaf(seq, ts_ms, &kind, &body);
        // A tile's root falls out of the frontier's merges when its last leaf arrives: no
        // append hashes a whole tile over again.
        if let Some(h) = frontier.push_completing(leaf, TILE_BITS) {
            done.push((tiles + done.len() as u64, h));
        }
        rows.push(Row {
            seq,
            ts_ms,
            kind,
            body,
            leaf,
        });
    }
    (rows, done)
}

fn insert_rows(conn: &Connection, rows: &[Row], tiles: &[(u64, Hash)]) -> rusqlite::Result<()> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO audit (seq, ts_ms, kind, body, leaf) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for r in rows {
        insert.execute(params![r.seq as i64, r.ts_ms, r.kind, r.body, &r.leaf[..]])?;
    }
    let mut tile = conn.prepare_cached("INSERT INTO tile (idx, hash) VALUES (?1, ?2)")?;
    for (idx, h) in tiles {
        tile.execute(params![*idx as i64, &h[..]])?;
    }
    Ok(())
}

/// Copies journaled appends into SQLite: whatever has arrived, in one transaction (a
/// group commit), then empties the journal once SQLite holds all of it, and yields the
/// append lock when another process waits for it. A failed write is retried every 10 ms
/// (each try waits out SQLite's busy timeout) and reported through `failed` meanwhile. Ends when the store drops its sender, after
/// writing what is left.
fn index_writer(
    mut conn: Connection,
    shared: &Shared,
    wait: &File,
    rx: &mpsc::Receiver<Batch>,
    name: &str,
) {
    let mut pending: Vec<Batch> = Vec::new();
    let mut stopping = false;
    let mut busy = false;
    loop {
        if busy {
            // While appends keep coming, collect them on a timer: a sender wakes a
            // receiver blocked in `recv` with a system call, which the append would pay.
            std::thread::sleep(Duration::from_millis(1));
        } else {
            match rx.recv_timeout(Duration::from_millis(10)) {
                Ok(b) => pending.push(b),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => stopping = true,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(b) => pending.push(b),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    stopping = true;
                    break;
                }
            }
        }
        busy = !pending.is_empty();
        if let Some(last) = pending
            .iter()
            .rev()
            .find_map(|b| b.rows.last())
            .map(|r| r.seq)
        {
            let written = write_batches(&mut conn, &pending);
            if written.is_ok() {
                // Freed before taking the state that appends wait for. Freed under it,
                // a millisecond's rows (allocated by the appending thread) held the
                // appends up often enough to set their p99 (docs/benchmarks.md).
                pending.clear();
            }
            let mut st = lock(shared);
            match written {
                Ok(()) => {
                    st.written = last;
                    st.failed = None;
                    shared.changed.notify_all();
                }
                Err(e) => {
                    st.failed = Some(format!("audit database {name}: {e}"));
                    shared.changed.notify_all();
                    drop(st);
                    if stopping {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        }
        // The journal is emptied (appends wait meanwhile) when it has grown large, when
        // appends pause, and before the lock is yielded; asking whether anyone waits is a
        // system call, made without holding the state.
        let waiting = journal::someone_waits(wait);
        let mut st = lock(shared);
        if st.owned
            && st.written >= st.journaled
            && (waiting || !busy || st.len >= journal::EMPTY_AT_BYTES)
        {
            // SQLite holds every line, so no write has failed since the last that worked
            // (which cleared `failed`): only a rewind can have set it.
            if st.len > 0 {
                match journal::rewind(&st.file, st.len) {
                    Ok(()) => {
                        st.len = 0;
                        st.failed = None;
                    }
                    Err(e) => {
                        st.failed = Some(format!("audit journal of {name}: cannot empty it: {e}"));
                    }
                }
            }
            if waiting {
                let _ = st.file.unlock();
                st.owned = false;
            }
        }
        drop(st);
        if stopping {
            return;
        }
    }
}

/// How many records the database holds (the newest record's number).
fn stored_records(conn: &Connection) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM audit")?
        .query_row([], |r| r.get::<_, i64>(0))
        .map(|n| n.max(0) as u64)
}

/// One transaction holding every batch, which must continue the stored log.
fn write_batches(conn: &mut Connection, batches: &[Batch]) -> Result<(), String> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    let stored = stored_records(&tx).map_err(|e| e.to_string())?;
    if let Some(first) = batches.iter().find_map(|b| b.rows.first())
        && first.seq != stored + 1
    {
        return Err(format!(
            "it holds {stored} records, so record {} cannot follow (another process appended without the append lock)",
            first.seq
        ));
    }
    for b in batches {
        insert_rows(&tx, &b.rows, &b.tiles).map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(|e| e.to_string())
}

/// Copies the write-ahead log into the database every second from a connection of its own
/// (a passive SQLite checkpoint, which never blocks the writer), so that appends never
/// pay for it: SQLite's own automatic checkpoint runs inside the commit that crosses its
/// threshold, a pause of milliseconds in the middle of a guard decision. Ends when the
/// returned sender is dropped. None if the thread cannot start (SQLite then keeps the WAL
/// until the last connection closes, and the store still works).
fn wal_checkpointer(path: &Path) -> Option<WalCheckpointer> {
    let conn = Connection::open(path).ok()?;
    let (stop, rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("audit-wal".into())
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                rx.recv_timeout(Duration::from_secs(1))
            {
                // A checkpoint that fails (busy) is retried a second later; the WAL only
                // grows meanwhile.
                let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            }
        })
        .ok()?;
    Some(WalCheckpointer { stop, thread })
}

/// A log of `size` records needs a checkpoint: some are uncovered, and `records` of them
/// are, or this opening of the store has signed none, or (`timed`) `every` has passed
/// since it last did. Appends are not timed: a command that appends one record and exits
/// leaves it covered, and the core's tick keeps the interval.
fn checkpoint_due(
    policy: &CheckpointPolicy,
    latest: Option<&Checkpoint>,
    last: Option<Instant>,
    size: u64,
    timed: bool,
) -> bool {
    let covered = latest.map_or(0, |c| c.size);
    let elapsed = |t: Instant| timed && t.elapsed() >= policy.every;
    size > covered && (size - covered >= policy.records || last.is_none_or(elapsed))
}

fn open_read_only(path: &Path) -> Result<Connection, AuditError> {
    let name = path.display().to_string();
    let open_err = |message: String| AuditError::Open {
        path: name.clone(),
        message,
    };
    if !path.exists() {
        return Err(open_err("does not exist".into()));
    }
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| open_err(e.to_string()))?;
    check_identity(&conn).map_err(open_err)?;
    Ok(conn)
}

fn init(conn: &Connection) -> rusqlite::Result<()> {
    // twinguard is the log's only writer: a lock held elsewhere is a fault to report at
    // once (nothing then executes), not to wait out while the core stands still.
    conn.busy_timeout(Duration::from_millis(200))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: i64 = conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // The WAL is copied into the database by the store's own thread (`wal_checkpointer`).
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    if version == 0 && tables == 0 {
        conn.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID};
             PRAGMA user_version = {SCHEMA_VERSION};
             CREATE TABLE audit (
                 seq INTEGER PRIMARY KEY,
                 ts_ms INTEGER NOT NULL,
                 kind TEXT NOT NULL,
                 body TEXT,
                 leaf BLOB NOT NULL
             );
             CREATE TABLE tile (
                 idx INTEGER PRIMARY KEY,
                 hash BLOB NOT NULL
             );
             CREATE TABLE checkpoint (
                 size INTEGER PRIMARY KEY,
                 ts_ms INTEGER NOT NULL,
                 note TEXT NOT NULL
             );
             CREATE TABLE quarantine (
                 id INTEGER PRIMARY KEY,
                 ts_ms INTEGER NOT NULL,
                 topic TEXT NOT NULL,
                 reason TEXT NOT NULL,
                 detail TEXT NOT NULL,
                 bytes BLOB NOT NULL,
                 audit_seq INTEGER NOT NULL
             );"
        ))?;
    }
    Ok(())
}

/// Refuses a file that is not a twinguard audit log of this schema, saying what it is.
fn check_identity(conn: &Connection) -> Result<(), String> {
    let app: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| format!("is not a readable SQLite database: {e}"))?;
    if app != APPLICATION_ID {
        return Err(format!(
            "is a SQLite database of another application (application_id {app:#x}), not a twinguard audit log"
        ));
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    match version {
        SCHEMA_VERSION => Ok(()),
        1 => Err("is a hash-chained audit log of an earlier twinguard (schema 1), which this version does not read or extend: keep it with the twinguard that wrote it and give this one a new data directory".into()),
        v => Err(format!("has audit schema {v}; this twinguard reads schema {SCHEMA_VERSION}")),
    }
}

fn load_tree(conn: &Connection) -> Result<Tree, String> {
    let mut tree = Tree::default();
    let tiles: Vec<Hash> = conn
        .prepare("SELECT idx, hash FROM tile ORDER BY idx")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| e.to_string())?
        .into_iter()
        .enumerate()
        .map(|(i, (idx, h))| {
            if idx == i as i64 {
                Ok(to32(&h))
            } else {
                Err(format!(
                    "its tile index skips from {} to {idx} (run `twinguard audit verify`)",
                    i as i64 - 1
                ))
            }
        })
        .collect::<Result<_, String>>()?;
    let records = stored_records(conn).map_err(|e| e.to_string())?;
    let tiled = tiles.len() as u64 * TILE;
    if tiled > records {
        return Err(format!(
            "its tree index covers {tiled} records but only {records} are stored: records were removed (run `twinguard audit verify`)"
        ));
    }
    for t in &tiles {
        tree.add_tile(*t);
    }
    tree.tail = conn
        .prepare("SELECT leaf FROM audit WHERE seq > ?1 ORDER BY seq")
        .and_then(|mut s| {
            s.query_map([tiled as i64], |r| r.get::<_, Vec<u8>>(0))?
                .map(|l| l.map(|v| to32(&v)))
                .collect::<rusqlite::Result<Vec<Hash>>>()
        })
        .map_err(|e| e.to_string())?;
    if tree.tail.len() as u64 >= TILE || tiled + tree.tail.len() as u64 != records {
        return Err(format!(
            "its records are not numbered 1..={records} without gaps, or its tree index is behind them (run `twinguard audit verify`)"
        ));
    }
    // The frontier of a tree of n leaves: the roots of its perfect subtrees, largest first.
    let mut stack = Vec::new();
    let mut lo = 0u64;
    let t = DbTree {
        conn,
        tree: &tree,
        tiles: HashMap::new(),
    };
    let mut t = t;
    for bit in (0..64).rev() {
        let n = 1u64 << bit;
        if records & n != 0 {
            stack.push(t.subtree(lo, lo + n).map_err(|e| e.to_string())?);
            lo += n;
        }
    }
    tree.frontier = Frontier::from_parts(records, stack);
    Ok(tree)
}

fn latest_note(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT note FROM checkpoint ORDER BY size DESC LIMIT 1",
        [],
        |r| r.get(0),
    )
    .optional()
}

fn all_notes(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    conn.prepare("SELECT note FROM checkpoint ORDER BY size")?
        .query_map([], |r| r.get(0))?
        .collect()
}

fn row_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let seq: i64 = r.get(0)?;
    Ok(Record {
        seq: seq.max(0) as u64,
        ts_ms: r.get(1)?,
        kind: r.get(2)?,
        body: r.get(3)?,
        leaf: to32(&r.get::<_, Vec<u8>>(4)?),
    })
}

fn verify_conn(
    conn: &Connection,
    key: &VerifyingKey,
    held: &[(String, String)],
) -> rusqlite::Result<Verification> {
    let mut notes: Vec<(String, String)> = all_notes(conn)?
        .into_iter()
        .map(|n| (n, "stored".to_string()))
        .collect();
    notes.extend(held.iter().cloned());
    let mut check = LogCheck::new(key, &notes);
    let mut stmt = conn.prepare("SELECT seq, ts_ms, kind, body, leaf FROM audit ORDER BY rowid")?;
    for r in stmt.query_map([], row_record)? {
        if !check.record(&r?) {
            break;
        }
    }
    Ok(check.finish())
}

impl AuditStore for SqliteStore {
    fn append(&mut self, entries: &[Entry]) -> Result<Head, AuditError> {
        let items = entries
            .iter()
            .map(|e| {
                if !journal::kind_is_plain(&e.kind) {
                    return Err(AuditError::Body {
                        kind: e.kind.clone(),
                        message: "a record kind must be non-empty and hold no control characters"
                            .into(),
                    });
                }
                Ok((e.ts_ms, e.kind.clone(), e.body().to_string()))
            })
            .collect::<Result<Vec<Item>, AuditError>>()?;
        if self.journal.writer.is_some() {
            self.append_journaled(items)
        } else {
            self.append_locked(items)
        }
    }

    fn quarantine(&mut self, item: &Quarantined, audit_seq: u64) -> Result<bool, AuditError> {
        let len = item.bytes.len() as u64;
        let keep = self.quarantined_bytes + len <= self.quarantine_cap;
        let (bytes, detail): (&[u8], String) = if keep {
            (&item.bytes, item.detail.clone())
        } else {
            (
                &[],
                format!("{} (quarantine full: {len} bytes not kept)", item.detail),
            )
        };
        self.conn
            .execute(
                "INSERT INTO quarantine (ts_ms, topic, reason, detail, bytes, audit_seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![item.ts_ms, item.topic, item.reason, detail, bytes, audit_seq as i64],
            )
            .map_err(|e| self.io(e))?;
        if keep {
            self.quarantined_bytes += len;
        }
        Ok(keep)
    }

    fn head(&self) -> Option<Head> {
        self.head.clone()
    }

    fn records(&self) -> u64 {
        self.tree.size()
    }

    fn checkpoint(&mut self) -> Result<Option<Checkpoint>, AuditError> {
        // Nothing to commit to: an empty log, or one the newest checkpoint covers.
        if self.latest.as_ref().map_or(0, |c| c.size) >= self.tree.size() {
            return Ok(None);
        }
        if self.journal.writer.is_some() {
            self.take_back_lock()?;
            self.sync()?;
        }
        let path = self.path.clone();
        let io = |e: rusqlite::Error| AuditError::Io {
            path: path.clone(),
            message: e.to_string(),
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(io)?;
        let stored = stored_records(&tx).map_err(io)?;
        if stored != self.tree.size() {
            return Err(AuditError::Io {
                path: self.path.clone(),
                message: format!(
                    "the log grew from {} to {stored} records since it was opened here (a running twinguard signs its own checkpoints)",
                    self.tree.size()
                ),
            });
        }
        let (cp, _) =
            Self::sign_checkpoint(&tx, &self.key, &self.origin, &self.tree.frontier).map_err(io)?;
        tx.commit().map_err(io)?;
        self.latest = Some(cp.clone());
        self.last_checkpoint = Some(Instant::now());
        Ok(Some(cp))
    }

    fn checkpoint_if_due(&mut self) -> Result<Option<Checkpoint>, AuditError> {
        if self.due() {
            self.checkpoint()
        } else {
            Ok(None)
        }
    }

    fn latest_checkpoint(&self) -> Option<Checkpoint> {
        self.latest.clone()
    }

    fn prune(&mut self, before_ms: i64) -> Result<u64, AuditError> {
        self.sync()?;
        let covered = self.latest.as_ref().map_or(0, |c| c.size) as i64;
        let tx = self.conn.transaction().map_err(|e| AuditError::Io {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let n = tx
            .execute(
                "UPDATE audit SET body = NULL WHERE ts_ms < ?1 AND seq <= ?2 AND body IS NOT NULL",
                params![before_ms, covered],
            )
            .and_then(|n| {
                tx.execute("DELETE FROM quarantine WHERE ts_ms < ?1", [before_ms])?;
                Ok(n)
            })
            .and_then(|n| tx.commit().map(|()| n))
            .map_err(|e| AuditError::Io {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        let q: i64 = self
            .conn
            .query_row(
                "SELECT COALESCE(SUM(LENGTH(bytes)), 0) FROM quarantine",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.io(e))?;
        self.quarantined_bytes = q.max(0) as u64;
        Ok(n as u64)
    }

    fn unavailable(&self) -> Option<String> {
        self.journal.writer.as_ref()?;
        let failed = lock(&self.journal.shared).failed.clone()?;
        Some(format!(
            "audit database {}: the log cannot be written ({failed}); what was accepted waits in {}",
            self.path,
            self.journal.path.display()
        ))
    }

    fn verify(&self, key: &VerifyingKey) -> Result<Verification, AuditError> {
        self.sync()?;
        verify_conn(&self.conn, key, &[]).map_err(|e| self.io(e))
    }
}
