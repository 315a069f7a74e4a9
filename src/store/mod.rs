//! What certswap keeps on disk for each site, and every change it makes to
//! a site's files: take the host lock, copy the current files aside (undo),
//! stage the new files next to their targets, journal, rename them into
//! place, and either commit (the undo copy becomes a backup version) or
//! restore the undo copy. [`SiteStore::recover`] repairs whatever a crash
//! left, for every site of the host, at the start of every command that
//! changes files (`batch::recover_host`).
//!
//! Layout under `state_dir` (directories 0700):
//! ```text
//! lock                          flock(2): one certswap changes files at a time
//! sites/SITE/journal.json       present only while a change is open
//! sites/SITE/undo/              the files as they were before the open change
//! sites/SITE/versions/000007/   earlier versions, newest last (keep K)
//! ```
//! Order of a change, each step durable before the next (kubelet
//! AtomicWriter style, numbers as in DESIGN.md step 3–4 and 8):
//!   1. undo copy in `undo/`: a hard link to each current file (a copy,
//!      0600, when the state dir is on another filesystem), fsynced —
//!      without a journal, recovery removes it;
//!   2. new files staged as `.NAME.certswap-new` beside each target;
//!   3. journal written (phase `staged`) — before the first rename, so a
//!      missing journal always means no target was touched;
//!   4. staged files renamed over the targets, each directory fsynced
//!      once (a batch: once for all its sites). No journal write: from the
//!      first rename on, recovery sees a new file in place and reloads
//!      after restoring; `reloading` is written only before old files are
//!      put back after a reload was sent, and such a change stays open
//!      (journal and undo copy) until the reload with the old files was
//!      tried ([`SiteStore::close_reloaded`]);
//!   5. commit: the undo copy leaves `undo/` by one rename, to the next
//!      `versions/N` (or `undo.done`, dropped, when there was no old file),
//!      both directories fsynced — the commit point: a journal without
//!      `undo/` is a committed change (managed mode: journal phase
//!      `committed`). Then old versions are pruned and the journal goes,
//!      with no fsync: either coming back only makes recovery finish again.
//!      An abort removes the journal before `undo/`, for the same reason.
//!
//! A batch keeps this order with the syncs of steps 1–3 and 5 grouped,
//! one syncfs(2) per filesystem for all its sites (`bulk.rs`:
//! [`begin_all`], [`commit_all`]).
//!
//! The commit point allocates nothing: what it needs exists before the
//! first rename of step 4 — `versions/` is created in step 1, and a
//! managed change's `committed` journal is written in step 3 beside the
//! journal (`.journal.json.commit`) and renamed over it at the commit. So
//! a state dir out of inodes or blocks fails a change before any target
//! moved, not after the server serves the new files. A commit that fails
//! anyway (an I/O error) hands the still-open change back
//! ([`CommitFailed`]) for the caller to undo and prove.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

mod bulk;
mod managed;

pub use bulk::{Change, Pruned, Pruning, begin_all, commit_all};

use crate::cert::sha256_hex;
use crate::failpoint;
use crate::fsio::{self, Perms};
use crate::owner;

/// How many earlier versions a site keeps by default.
pub const KEEP_VERSIONS: usize = 3;
/// Suffix of files staged beside their targets.
pub const STAGED_SUFFIX: &str = ".certswap-new";
const RESTORE_SUFFIX: &str = ".certswap-restore";
/// Where a committed change's undo copy goes when it is not kept.
const UNDO_DONE: &str = "undo.done";
/// A version being removed (`versions/.pruned-NNNNNN`), out of every listing.
const PRUNED_PREFIX: &str = ".pruned-";
/// Suffix of the managed journal's `committed` record, written before the
/// flip and renamed over the journal at the commit point.
const COMMIT_SUFFIX: &str = ".commit";
/// Cert and key files are small; anything bigger is not ours to copy.
const MAX_TARGET_BYTES: u64 = crate::bundle::MAX_FILE_BYTES;
/// A journal names a few files; anything bigger was not written by us.
const MAX_JOURNAL_BYTES: u64 = 1024 * 1024;
/// How the state dir and its directories are named in a refusal.
const STATE_DIR: &str = "state dir";

/// Why the store could not do its part. Each names the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{path}: cannot {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error(
        "another certswap is changing certificates on this host (lock {path} is held); try again when it has finished"
    )]
    Locked { path: PathBuf },
    #[error(
        "{path} is a symlink; in-place mode replaces regular files only (point the config at the real file, or use mode = \"managed\")"
    )]
    TargetIsSymlink { path: PathBuf },
    /// A file an ACME client owns (certbot's `live/` link, acme.sh's
    /// directory): neither mode may replace it without breaking the
    /// client's own renewals.
    #[error(
        "{path} is {why}; run `certswap adopt --site {site}` to move the server onto certswap's own copies"
    )]
    AcmeOwned {
        path: PathBuf,
        why: String,
        site: String,
    },
    #[error(
        "{path}: the directory is writable by other users, so certswap will not put a key there"
    )]
    UnsafeDir { path: PathBuf },
    #[error(
        "{path}: the saved copy does not match its journal (sha256 differs); refusing to restore it"
    )]
    Corrupt { path: PathBuf },
    #[error("{path}: the journal cannot be read: {reason}")]
    BadJournal { path: PathBuf, reason: String },
    #[error("site {site} has no earlier version to go back to (none in {path})")]
    NoVersion { site: String, path: PathBuf },
    /// The state dir, one of its directories or the journal could have
    /// been written by another user (see [`crate::owner`]).
    #[error(transparent)]
    Untrusted(#[from] crate::owner::OwnerError),
    /// A journal (or the undo or version record beside it) names a path
    /// that is not one of the site's configured files or its own store.
    #[error(
        "{journal} names {wants}, which is neither a configured file of site {site} nor a version in its store, so certswap changed nothing: someone else may have written it; an operator must look at it and remove it once the site's files are right"
    )]
    ForeignJournal {
        journal: PathBuf,
        wants: PathBuf,
        site: String,
    },
}

fn io_err(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> StoreError + use<> {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        path,
        action,
        source,
    }
}

/// The part of a site a file plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Cert,
    Key,
    Chain,
}

impl Role {
    fn file_name(self) -> &'static str {
        match self {
            Role::Cert => "cert",
            Role::Key => "key",
            Role::Chain => "chain",
        }
    }

    /// Mode for a file that replaces nothing: keys private, certs public.
    fn default_perms(self) -> Perms {
        match self {
            Role::Key => Perms::own(0o600),
            Role::Cert | Role::Chain => Perms::own(0o644),
        }
    }
}

/// One file a change writes.
#[derive(Debug, Clone)]
pub struct NewFile {
    pub role: Role,
    pub target: PathBuf,
    pub bytes: Vec<u8>,
}

/// A file as it was before a change (or in a saved version).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedFile {
    pub role: Role,
    pub target: PathBuf,
    /// None when the target did not exist.
    pub sha256: Option<String>,
    pub perms: Option<Perms>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedMeta {
    created: String,
    files: Vec<SavedFile>,
}

/// What a change is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Install,
    /// Going back to the named version, which is dropped on commit.
    Rollback {
        version: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// From before the first rename until the commit point (in place: until
    /// `undo/` is gone). Recovery puts the old files back, and reloads if
    /// any new file was in place.
    Staged,
    /// Written by earlier builds after the swap; still read.
    Swapped,
    /// A reload was sent and the old files are being put back: recovery
    /// reloads even when every old file is already in place.
    Reloading,
    /// Managed mode's commit point (and in-place mode's in earlier builds).
    Committed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JournalFile {
    role: Role,
    target: PathBuf,
    staged: PathBuf,
    old_sha256: Option<String>,
    new_sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Journal {
    version: u32,
    site: String,
    op: Op,
    phase: Phase,
    started: String,
    files: Vec<JournalFile>,
    /// Managed mode: the version `live/SITE` pointed at before, and the one
    /// this change flips it to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    flip: Option<Flip>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Flip {
    old: String,
    new: String,
}

/// The whole state directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Held while a command changes files; released on drop.
#[derive(Debug)]
pub struct Lock {
    _flock: Flock<File>,
}

/// What [`SiteStore::check_journal`] found of a site's open change.
#[derive(Debug)]
pub struct Looked {
    /// The journal, checked against the site's targets.
    journal: Option<Journal>,
    /// `undo/`, `undo.tmp`, `undo.done` or a managed archive exists.
    leftovers: bool,
}

impl Looked {
    /// A change of the site is open (its journal exists).
    pub fn is_open(&self) -> bool {
        self.journal.is_some()
    }
}

/// What recovery found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// No interrupted change.
    Clean,
    /// An interrupted change was undone; the old files are back. When
    /// `reload` is set the server may have loaded the new files, so the
    /// caller must config-test and reload.
    RolledBack { op: Op, reload: bool },
    /// The change had reached its commit point; housekeeping finished.
    Completed { op: Op },
}

impl Store {
    /// Open (creating if needed, mode 0700) the state directory. Whoever
    /// can write it can make recovery write and remove files as root, so
    /// it, every directory above it and the directories certswap keeps in
    /// it must be real directories only root can change; one that is not
    /// is refused before anything is created or read (DESIGN invariant 9).
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        if std::fs::symlink_metadata(root).is_err() {
            // Missing: create it only where no other user could have
            // prepared or could later rename it.
            owner::trusted_to_create(STATE_DIR, root)?;
            mkdir_private(root)?;
        }
        owner::trusted_dir(STATE_DIR, root)?;
        for sub in ["sites", "archive", "live", "agent"] {
            owner::trusted_subdir(STATE_DIR, &root.join(sub))?;
        }
        mkdir_private(&root.join("sites"))?;
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    /// Take the host-wide lock without waiting: a second certswap fails fast.
    pub fn lock(&self) -> Result<Lock, StoreError> {
        let path = self.root.join("lock");
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&path)
            .map_err(io_err(&path, "open the lock file"))?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(flock) => Ok(Lock { _flock: flock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(StoreError::Locked { path }),
            Err((_, e)) => Err(StoreError::Io {
                path,
                action: "lock",
                source: e.into(),
            }),
        }
    }

    /// The store of one site. `name` must have passed
    /// [`crate::config::check_site_name`] (it becomes a directory name).
    pub fn site(&self, name: &str) -> SiteStore {
        let dir_name = name.replace('*', "_wildcard_");
        SiteStore {
            name: name.to_string(),
            dir: self.root.join("sites").join(&dir_name),
            root: self.root.clone(),
            dir_name,
        }
    }
}

/// One site's journal, undo copy and versions.
#[derive(Debug, Clone)]
pub struct SiteStore {
    name: String,
    /// The site's name as a directory name.
    dir_name: String,
    root: PathBuf,
    dir: PathBuf,
}

/// An open change: files staged, journal written. Dropping it without
/// [`Txn::commit`] or [`Txn::abort`] leaves the journal for recovery, which
/// is exactly what a crash does.
#[derive(Debug)]
pub struct Txn {
    site: SiteStore,
    journal: Journal,
}

/// A saved earlier version of a site's files.
#[derive(Debug, Clone)]
pub struct Version {
    pub id: String,
    pub dir: PathBuf,
    pub created: String,
    pub files: Vec<SavedFile>,
}

impl SiteStore {
    fn journal_path(&self) -> PathBuf {
        self.dir.join("journal.json")
    }
    /// Where [`fsio::write_atomic`] writes the journal before renaming it.
    fn journal_tmp_path(&self) -> PathBuf {
        fsio::sibling(&self.journal_path(), ".tmp")
    }
    fn undo_dir(&self) -> PathBuf {
        self.dir.join("undo")
    }
    fn versions_dir(&self) -> PathBuf {
        self.dir.join("versions")
    }
    fn commit_record_path(&self) -> PathBuf {
        fsio::sibling(&self.journal_path(), COMMIT_SUFFIX)
    }

    /// Whether a change of this site is open (its journal exists): the
    /// next command's recovery will finish or undo it.
    pub fn has_open_change(&self) -> bool {
        std::fs::symlink_metadata(self.journal_path()).is_ok()
    }

    /// Finish or undo a change a crash interrupted, and remove staged files
    /// left beside `targets`. Idempotent: running it twice does nothing more.
    ///
    /// The journal is input like any other: it is first checked against
    /// `targets` (the site's configured files, [`SiteStore::check_journal`])
    /// and refused, with nothing changed, when it names anything else.
    pub fn recover(&self, targets: &[PathBuf]) -> Result<Recovery, StoreError> {
        let looked = self.check_journal(targets)?;
        self.recover_checked(targets, looked)
    }

    /// [`SiteStore::recover`] with what [`SiteStore::check_journal`] found
    /// (the caller holds the host lock since, so it still stands).
    pub fn recover_checked(
        &self,
        targets: &[PathBuf],
        looked: Looked,
    ) -> Result<Recovery, StoreError> {
        let outcome = match looked.journal {
            // No journal means no target was touched: drop any undo
            // copy or staged file a crash before the journal left.
            None if looked.leftovers => {
                remove_dir_durable(&self.undo_dir())?;
                remove_dir_durable(&self.dir.join("undo.tmp"))?;
                remove_dir_durable(&self.dir.join(UNDO_DONE))?;
                self.remove_managed_leftovers()?;
                Recovery::Clean
            }
            // Nothing of a change in the store dir (the common case, ten
            // thousand times a batch at 10,000 sites): only the staged
            // link outside it, and the staged files beside the targets
            // below.
            None => {
                self.remove_managed_leftovers()?;
                Recovery::Clean
            }
            // Past the commit point: the journal says so (managed mode),
            // or the undo copy has left undo/ (in place).
            Some(j)
                if j.phase == Phase::Committed
                    || (j.flip.is_none() && !self.undo_dir().exists()) =>
            {
                let op = j.op.clone();
                Txn {
                    site: self.clone(),
                    journal: j,
                }
                .finish_commit(KEEP_VERSIONS, false)?;
                Recovery::Completed { op }
            }
            Some(j) => {
                let op = j.op.clone();
                let mut txn = Txn {
                    site: self.clone(),
                    journal: j,
                };
                // The server may have loaded the new files when any of them
                // is in place (a crash after the swap or the reload), or when
                // the journal says a reload was sent before the old files
                // were being put back. Then the change stays open until the
                // caller has reloaded ([`SiteStore::close_reloaded`]).
                let reload = txn.journal.phase >= Phase::Swapped || txn.swapped_in()?;
                if reload && txn.journal.phase != Phase::Reloading {
                    txn.mark_reloaded()?;
                }
                txn.abort()?;
                Recovery::RolledBack { op, reload }
            }
        };
        for t in targets {
            for suffix in [STAGED_SUFFIX, RESTORE_SUFFIX] {
                let p = fsio::sibling(t, suffix);
                fsio::durable_remove(&p).map_err(io_err(&p, "remove a leftover staged file"))?;
            }
        }
        Ok(outcome)
    }

    /// Close a change that [`Txn::abort`] left open for the reload that
    /// puts the server back on the old files (journal `reloading`); call it
    /// once that reload was tried. Any other open change is left alone.
    pub fn close_reloaded(&self) -> Result<(), StoreError> {
        match self.read_journal()? {
            Some(j) if j.phase == Phase::Reloading => self.close_change(),
            _ => Ok(()),
        }
    }

    /// Remove the journal, then the undo copy: the journal first, because a
    /// journal without `undo/` means committed.
    fn close_change(&self) -> Result<(), StoreError> {
        let j = self.journal_path();
        fsio::durable_remove(&j).map_err(io_err(&j, "remove the journal"))?;
        remove_commit_record(self);
        remove_dir_durable(&self.undo_dir())
    }

    /// Check, changing nothing, that recovery of this site would only
    /// touch `targets` (the site's configured files) and its own store:
    /// the site's directories are real directories only root can change,
    /// and the journal (if any) and its undo record name only `targets`,
    /// each staged beside its target, and version ids of this store. Run
    /// for every site before any is repaired (`batch::recover_sites`), so a
    /// forged journal stops the repair before the first file moves.
    /// What it found goes to [`SiteStore::recover_checked`].
    pub fn check_journal(&self, targets: &[PathBuf]) -> Result<Looked, StoreError> {
        let mut leftovers = false;
        for (dir, left) in [
            (self.dir.clone(), false),
            (self.undo_dir(), true),
            (self.dir.join("undo.tmp"), true),
            (self.dir.join(UNDO_DONE), true),
            (self.versions_dir(), false),
            (self.root.join("archive").join(&self.dir_name), true),
        ] {
            let exists = owner::trusted_subdir(STATE_DIR, &dir)?;
            leftovers |= left && exists;
        }
        let journal = self.checked_journal(targets)?;
        Ok(Looked { journal, leftovers })
    }

    /// The journal, if any, checked against `targets` (once the site's
    /// directories are: [`SiteStore::check_journal`]).
    fn checked_journal(&self, targets: &[PathBuf]) -> Result<Option<Journal>, StoreError> {
        let Some(j) = self.read_journal()? else {
            return Ok(None);
        };
        let path = self.journal_path();
        let foreign = |journal: &Path, wants: &Path| StoreError::ForeignJournal {
            journal: journal.to_path_buf(),
            wants: wants.to_path_buf(),
            site: self.name.clone(),
        };
        for f in &j.files {
            if !targets.contains(&f.target) {
                return Err(foreign(&path, &f.target));
            }
            if f.staged != fsio::sibling(&f.target, STAGED_SUFFIX) {
                return Err(foreign(&path, &f.staged));
            }
        }
        // Version ids become paths that are removed or linked to: six
        // digits, nothing that could climb out of the store.
        let versions = match &j.flip {
            Some(_) => self.root.join("archive").join(&self.dir_name),
            None => self.versions_dir(),
        };
        let mut ids: Vec<&str> = Vec::new();
        if let Op::Rollback { version } = &j.op {
            ids.push(version);
        }
        if let Some(flip) = &j.flip {
            ids.extend([flip.old.as_str(), flip.new.as_str()]);
        }
        for id in ids {
            if !is_version_id(id) {
                return Err(foreign(&path, &versions.join(id)));
            }
            owner::trusted_subdir(STATE_DIR, &versions.join(id))?;
        }
        // The undo record says where each saved file goes back to.
        let undo = self.undo_dir();
        if j.flip.is_none()
            && undo.is_dir()
            && let Ok(meta) = read_meta(&undo)
        {
            for s in &meta.files {
                if !targets.contains(&s.target) {
                    return Err(foreign(&undo.join("meta.json"), &s.target));
                }
            }
        }
        Ok(Some(j))
    }

    fn read_journal(&self) -> Result<Option<Journal>, StoreError> {
        let path = self.journal_path();
        // Never through a symlink, only a regular file root wrote.
        let (file, meta) = match owner::open_nofollow("journal", &path) {
            Ok(opened) => opened,
            Err(owner::OwnerError::Io { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        owner::trusted_file_meta("journal", &path, &meta)?;
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(file, MAX_JOURNAL_BYTES + 1), &mut bytes)
            .map_err(io_err(&path, "read the journal"))?;
        if bytes.len() as u64 > MAX_JOURNAL_BYTES {
            return Err(StoreError::BadJournal {
                path,
                reason: format!("larger than {MAX_JOURNAL_BYTES} bytes"),
            });
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::BadJournal {
                path,
                reason: e.to_string(),
            })
    }

    /// Steps 1–3: save the current files, stage `files` beside their
    /// targets, write the journal. Nothing a server reads has changed yet.
    pub fn begin(&self, op: Op, files: Vec<NewFile>) -> Result<Txn, StoreError> {
        let txn = self.begin_with(op, &files, SyncMode::Now)?;
        failpoint::hit("after-stage");
        Ok(txn)
    }

    /// [`SiteStore::begin`] without the failpoint, synced as `sync` says.
    fn begin_with(&self, op: Op, files: &[NewFile], sync: SyncMode) -> Result<Txn, StoreError> {
        mkdir_private(&self.dir)?;
        for f in files {
            check_acme(&self.name, &f.target)?;
            check_target(f)?;
        }
        self.prepare(op, files, sync).inspect_err(|_| {
            self.unstage(
                files
                    .iter()
                    .map(|f| fsio::sibling(&f.target, STAGED_SUFFIX)),
            );
        })
    }

    /// Take back what a failed stage wrote (`staged`: the staged files):
    /// no target was touched (the journal is the last step), so a failed
    /// stage (disk full, a refused chown) leaves no trace beside the
    /// targets.
    fn unstage(&self, staged: impl IntoIterator<Item = PathBuf>) {
        for p in staged {
            let _ = fsio::durable_remove(&p);
        }
        // The journal first: a journal without undo/ means committed.
        let _ = fsio::durable_remove(&self.journal_path());
        let _ = fsio::durable_remove(&self.journal_tmp_path());
        let _ = remove_dir_durable(&self.undo_dir());
    }

    /// Steps 1–3 of [`SiteStore::begin`]. With [`SyncMode::Later`] nothing is
    /// fsynced and the journal is left under its temporary name
    /// ([`SiteStore::journal_tmp_path`]): the caller syncs, renames it
    /// into place and syncs again ([`begin_all`]).
    fn prepare(&self, op: Op, files: &[NewFile], sync: SyncMode) -> Result<Txn, StoreError> {
        // 1. The undo copy. It needs no temporary name: until the journal
        //    exists, recovery removes whatever is in undo/. And versions/,
        //    where the commit renames it: the commit allocates nothing.
        let undo = self.undo_dir();
        remove_dir_durable(&self.dir.join("undo.tmp"))?;
        remove_dir_durable(&undo)?;
        mkdir_private(&self.versions_dir())?;
        mkdir_private(&undo)?;
        let mut saved = Vec::new();
        for f in files {
            saved.push(save_copy(f.role, &f.target, &undo, sync)?);
        }
        write_meta(&undo, &saved, sync)?;

        // 2. Stage, with the mode and owner of the file each one replaces.
        let mut journal_files = Vec::new();
        for (f, old) in files.iter().zip(&saved) {
            let staged = fsio::sibling(&f.target, STAGED_SUFFIX);
            fsio::durable_remove(&staged).map_err(io_err(&staged, "remove an old staged file"))?;
            let perms = old.perms.unwrap_or_else(|| f.role.default_perms());
            sync.create(&staged, &f.bytes, perms)
                .map_err(io_err(&staged, "stage the new file"))?;
            journal_files.push(JournalFile {
                role: f.role,
                target: f.target.clone(),
                staged,
                old_sha256: old.sha256.clone(),
                new_sha256: sha256_hex(&f.bytes),
            });
        }

        // 3. The journal, before the first rename.
        match sync {
            SyncMode::Now => Txn::start(self, op, journal_files, None),
            SyncMode::Later => Txn::start_unsynced(self, op, journal_files),
        }
    }

    /// Remove the saved versions beyond the newest `keep`, oldest first.
    /// Each leaves the list by one rename before its files go: a removal
    /// cut short (a crash; a batch prunes for seconds) leaves a directory
    /// no listing reads, not a version without its record, which would
    /// fail every `rollback` of the site. No fsync: a version that comes
    /// back after a power loss goes at the next prune, as do leftovers.
    pub fn prune_versions(&self, keep: usize) -> Result<(), StoreError> {
        let dir = self.versions_dir();
        let names = dir_names(&dir)?;
        for name in names.iter().filter(|n| n.starts_with(PRUNED_PREFIX)) {
            remove_dir(&dir.join(name))?;
        }
        let ids = sorted_ids(names);
        for id in &ids[..ids.len().saturating_sub(keep)] {
            let (from, gone) = (dir.join(id), dir.join(format!("{PRUNED_PREFIX}{id}")));
            std::fs::rename(&from, &gone).map_err(io_err(&from, "remove"))?;
            remove_dir(&gone)?;
        }
        Ok(())
    }

    /// Saved versions, oldest first.
    pub fn versions(&self) -> Result<Vec<Version>, StoreError> {
        let dir = self.versions_dir();
        let ids = version_ids(&dir)?;
        let mut out = Vec::new();
        for id in ids {
            let vdir = dir.join(&id);
            let meta = read_meta(&vdir)?;
            out.push(Version {
                id,
                dir: vdir,
                created: meta.created,
                files: meta.files,
            });
        }
        Ok(out)
    }

    /// The newest saved version, as files to write back. Its record is
    /// input too: a version that would write anything but `targets` (the
    /// site's configured files, by role) is refused.
    pub fn previous(
        &self,
        targets: &[(Role, PathBuf)],
    ) -> Result<(Version, Vec<NewFile>), StoreError> {
        let v = self
            .versions()?
            .pop()
            .ok_or_else(|| StoreError::NoVersion {
                site: self.name.clone(),
                path: self.versions_dir(),
            })?;
        if let Some(s) = v
            .files
            .iter()
            .find(|s| !targets.iter().any(|(r, t)| *r == s.role && *t == s.target))
        {
            return Err(StoreError::ForeignJournal {
                journal: v.dir.join("meta.json"),
                wants: s.target.clone(),
                site: self.name.clone(),
            });
        }
        let files = load_saved(&v.dir, &v.files, Role::file_name)?;
        Ok((v, files))
    }
}

impl Txn {
    /// The change of `site` in phase `staged`, its journal not yet written.
    fn staged(site: &SiteStore, op: Op, files: Vec<JournalFile>, flip: Option<Flip>) -> Txn {
        Txn {
            site: site.clone(),
            journal: Journal {
                version: 1,
                site: site.name.clone(),
                op,
                phase: Phase::Staged,
                started: now_rfc3339(),
                files,
                flip,
            },
        }
    }

    /// Open a change in phase `staged`: its journal is written (durably)
    /// before this returns, i.e. before any target is renamed.
    fn start(
        site: &SiteStore,
        op: Op,
        files: Vec<JournalFile>,
        flip: Option<Flip>,
    ) -> Result<Txn, StoreError> {
        let txn = Txn::staged(site, op, files, flip);
        txn.write_journal()?;
        if txn.journal.flip.is_some() {
            // The managed commit point is this record renamed over the
            // journal: written now, it needs no inode or block later.
            let mut committed = txn.journal.clone();
            committed.phase = Phase::Committed;
            let path = site.commit_record_path();
            let bytes =
                serde_json::to_vec_pretty(&committed).map_err(|e| StoreError::BadJournal {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            fsio::durable_remove(&path).map_err(io_err(&path, "remove an old commit record"))?;
            fsio::create_new(&path, &bytes, Perms::own(0o600))
                .map_err(io_err(&path, "write the commit record"))?;
            let dir = &site.dir;
            fsio::fsync_dir(dir).map_err(io_err(dir, "fsync"))?;
        }
        Ok(txn)
    }

    /// [`Txn::start`] for in-place changes of a batch: the journal is
    /// written, unsynced, under its temporary name only ([`begin_all`]
    /// makes it durable, renames it into place and makes that durable).
    fn start_unsynced(
        site: &SiteStore,
        op: Op,
        files: Vec<JournalFile>,
    ) -> Result<Txn, StoreError> {
        let txn = Txn::staged(site, op, files, None);
        let tmp = site.journal_tmp_path();
        let bytes = txn.journal_bytes()?;
        fsio::durable_remove(&tmp).map_err(io_err(&tmp, "remove an old journal"))?;
        fsio::create_new_unsynced(&tmp, &bytes, Perms::own(0o600))
            .map_err(io_err(&tmp, "write the journal"))?;
        Ok(txn)
    }

    fn journal_bytes(&self) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec_pretty(&self.journal).map_err(|e| StoreError::BadJournal {
            path: self.site.journal_path(),
            reason: e.to_string(),
        })
    }

    fn write_journal(&self) -> Result<(), StoreError> {
        let path = self.site.journal_path();
        let bytes = self.journal_bytes()?;
        fsio::write_atomic(&path, &bytes, Perms::own(0o600))
            .map_err(io_err(&path, "write the journal"))
    }

    /// Take back a staged change whose targets were never renamed
    /// ([`SiteStore::unstage`]).
    fn unstage(self) {
        let staged = self.journal.files.iter().map(|f| f.staged.clone());
        self.site.unstage(staged);
    }

    /// The SHA-256 each target had before this change (None: did not exist).
    pub fn old_sha256(&self, role: Role) -> Option<&str> {
        self.journal
            .files
            .iter()
            .find(|f| f.role == role)
            .and_then(|f| f.old_sha256.as_deref())
    }

    /// Step 4: rename every staged file over its target, durably. The
    /// journal stays `staged`: from the first rename on, recovery sees the
    /// new files in place and reloads after putting the old ones back.
    pub fn swap(&mut self) -> Result<(), StoreError> {
        let dirs = self.swap_unsynced()?;
        fsync_dirs(&dirs)?;
        failpoint::hit("after-swap");
        Ok(())
    }

    /// [`Txn::swap`] without the directory fsyncs: returns the directories
    /// the caller must fsync (once each, for a whole batch) before it
    /// relies on the swap, e.g. before a commit.
    pub fn swap_unsynced(&mut self) -> Result<Vec<PathBuf>, StoreError> {
        if let Some(flip) = self.journal.flip.clone() {
            // Managed: one rename flips cert, key and chain together.
            self.site.point_live_at(&flip.new)?;
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        for f in &self.journal.files {
            std::fs::rename(&f.staged, &f.target)
                .map_err(io_err(&f.target, "rename the new file into place"))?;
            let dir = fsio::parent_of(&f.target);
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
            match f.role {
                Role::Cert => failpoint::hit("after-rename-cert"),
                Role::Key => failpoint::hit("after-rename-key"),
                Role::Chain => failpoint::hit("after-rename-chain"),
            }
        }
        Ok(dirs)
    }

    /// Whether any new file of this change is in place (in-place: a target
    /// no longer holds its old bytes; managed: `live/SITE` points at the
    /// new version).
    fn swapped_in(&self) -> Result<bool, StoreError> {
        if let Some(flip) = &self.journal.flip {
            return Ok(self.site.managed_current()?.as_deref() == Some(flip.new.as_str()));
        }
        for f in &self.journal.files {
            if current_sha256(&f.target)? != f.old_sha256 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Before old files are put back after a reload was sent: the server
    /// may run the new files while the disk holds the old ones, so a crash
    /// from here on must still end in a reload.
    pub fn mark_reloaded(&mut self) -> Result<(), StoreError> {
        self.journal.phase = Phase::Reloading;
        self.write_journal()
    }

    /// Step 8: the change stands. Keep `keep` versions.
    pub fn commit(self, keep: usize) -> Result<(), StoreError> {
        self.try_commit(keep).map_err(|f| f.error)
    }

    /// [`Txn::commit`], handing the change back when the commit point was
    /// not reached: the new files are in place and the journal would make
    /// the next command undo them, so the caller undoes them now and
    /// proves the old leaf served (or says what is served).
    pub fn try_commit(mut self, keep: usize) -> Result<(), CommitFailed> {
        if let Err(error) = self.commit_point() {
            if !self.committed_on_disk() {
                return Err(CommitFailed {
                    error,
                    open: Some(Box::new(self)),
                });
            }
            // The rename happened and a later fsync failed: the change
            // stands as far as recovery can tell, so it is finished.
            tracing::warn!("the commit point was reached despite: {error}");
        }
        failpoint::hit("after-commit");
        self.finish_commit(keep, false)
            .map_err(|error| CommitFailed { error, open: None })
    }

    /// The commit point: one rename, of nothing newly allocated.
    fn commit_point(&mut self) -> Result<(), StoreError> {
        let j = self.site.journal_path();
        failpoint::fail("commit").map_err(io_err(&j, "commit the change"))?;
        if self.journal.flip.is_some() {
            // Managed: the `committed` record written in step 3 replaces
            // the journal.
            let rec = self.site.commit_record_path();
            fsio::durable_rename(&rec, &j).map_err(io_err(&j, "commit the journal"))?;
            self.journal.phase = Phase::Committed;
            Ok(())
        } else {
            // In place, the commit point is one rename: the undo copy
            // leaves undo/, and a journal without undo/ is committed.
            self.retire_undo(SyncMode::Now)
        }
    }

    /// Whether recovery would find this change committed, as it reads the
    /// disk now (an unreadable journal: not committed).
    fn committed_on_disk(&self) -> bool {
        if self.journal.flip.is_some() {
            matches!(self.site.read_journal(), Ok(Some(j)) if j.phase == Phase::Committed)
        } else {
            !self.site.undo_dir().exists()
        }
    }

    /// The in-place commit point: move undo/ to the next `versions/N` (or,
    /// when it holds nothing worth keeping, to `undo.done` to be dropped),
    /// durably ([`SyncMode::Later`]: the caller syncs, [`commit_all`]).
    fn retire_undo(&self, sync: SyncMode) -> Result<(), StoreError> {
        let site = &self.site;
        let undo = site.undo_dir();
        let keep = self.journal.op == Op::Install
            && read_meta(&undo)?.files.iter().any(|f| f.sha256.is_some());
        let dest = if keep {
            let vdir = site.versions_dir();
            mkdir_private(&vdir)?;
            vdir.join(next_version_id(&vdir)?)
        } else {
            let done = site.dir.join(UNDO_DONE);
            remove_dir(&done)?;
            done
        };
        std::fs::rename(&undo, &dest).map_err(io_err(&undo, "save the previous version"))?;
        if sync == SyncMode::Later {
            return Ok(());
        }
        let parent = fsio::parent_of(&dest);
        fsio::fsync_dir(&parent).map_err(io_err(&parent, "fsync"))?;
        if parent != site.dir {
            fsio::fsync_dir(&site.dir).map_err(io_err(&site.dir, "fsync"))?;
        }
        Ok(())
    }

    /// Everything after the commit point; idempotent, as recovery may run
    /// it again.
    /// `pruned`: the site has at most `keep` versions already (a batch's
    /// [`Pruning`] ran before the commit added one), so no listing.
    fn finish_commit(self, keep: usize, pruned: bool) -> Result<(), StoreError> {
        if let Some(flip) = &self.journal.flip {
            self.site
                .finish_managed_commit(&self.journal.op, flip, keep)?;
            remove_commit_record(&self.site);
            let j = self.site.journal_path();
            return fsio::durable_remove(&j).map_err(io_err(&j, "remove the journal"));
        }
        let site = &self.site;
        // A journal marked `committed` by an earlier build may still have
        // its undo copy in place.
        if site.undo_dir().exists() {
            self.retire_undo(SyncMode::Now)?;
        }
        remove_dir(&site.dir.join(UNDO_DONE))?;
        if let Op::Rollback { version } = &self.journal.op {
            // Durable: the version gone back to must not come back as an
            // earlier one.
            remove_dir_durable(&site.versions_dir().join(version))?;
        }
        if !pruned {
            site.prune_versions(keep)?;
        }
        // The journal goes last and needs no fsync either: a journal that
        // comes back finds undo/ gone and makes recovery run this again.
        let j = site.journal_path();
        match std::fs::remove_file(&j) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_err(&j, "remove the journal")(e))
            }
            _ => Ok(()),
        }
    }

    /// The site's store.
    pub fn store(&self) -> &SiteStore {
        &self.site
    }

    /// Put back the files as they were before this change (the undo copy),
    /// the same durable way, then close the change — unless the journal
    /// says `reloading` ([`Txn::mark_reloaded`]): then the journal and the
    /// undo copy stay until [`SiteStore::close_reloaded`], called once the
    /// server has been reloaded with the old files, so that a crash before
    /// that reload still ends in one.
    pub fn abort(self) -> Result<(), StoreError> {
        let keep_open = self.journal.phase == Phase::Reloading;
        if let Some(flip) = &self.journal.flip {
            self.site.abort_managed(&self.journal.op, flip)?;
            if keep_open {
                return Ok(());
            }
            let j = self.site.journal_path();
            fsio::durable_remove(&j).map_err(io_err(&j, "remove the journal"))?;
            remove_commit_record(&self.site);
            return Ok(());
        }
        let site = &self.site;
        let undo = site.undo_dir();
        let meta = read_meta(&undo)?;
        for f in &self.journal.files {
            fsio::durable_remove(&f.staged).map_err(io_err(&f.staged, "remove the staged file"))?;
            let saved = meta
                .files
                .iter()
                .find(|s| s.role == f.role && s.target == f.target);
            match saved.and_then(|s| s.sha256.as_deref().map(|h| (s, h))) {
                None => {
                    // The target did not exist before this change.
                    fsio::durable_remove(&f.target)
                        .map_err(io_err(&f.target, "remove the new file"))?;
                }
                Some((s, hash)) => {
                    if current_sha256(&f.target)?.as_deref() == Some(hash) {
                        continue; // never renamed, or already restored
                    }
                    let src = undo.join(s.role.file_name());
                    let bytes = std::fs::read(&src).map_err(io_err(&src, "read the saved copy"))?;
                    if sha256_hex(&bytes) != hash {
                        return Err(StoreError::Corrupt { path: src });
                    }
                    let tmp = fsio::sibling(&f.target, RESTORE_SUFFIX);
                    fsio::durable_remove(&tmp)
                        .map_err(io_err(&tmp, "remove an old restore file"))?;
                    let perms = restore_perms(s.perms, s.role, &f.target);
                    fsio::create_new(&tmp, &bytes, perms)
                        .map_err(io_err(&tmp, "write the restored file"))?;
                    fsio::durable_rename(&tmp, &f.target)
                        .map_err(io_err(&f.target, "restore the previous file"))?;
                }
            }
        }
        if keep_open {
            return Ok(());
        }
        site.close_change()
    }
}

/// The mode and owner a file put back by [`Txn::abort`] gets. The undo
/// record is input (it sits in the state dir), so it cannot ask for more
/// than the file it replaces has now: permission bits only (no setuid,
/// setgid or sticky), no bit the present file lacks beyond the owner's
/// read/write (invariant 3 for restores), and an owner only if it is
/// root, certswap itself, or the present file's owner — else root's. A
/// genuine record asks for exactly what the staged file was given, so
/// nothing changes for it.
fn restore_perms(saved: Option<Perms>, role: Role, target: &Path) -> Perms {
    let saved = saved.unwrap_or_else(|| role.default_perms());
    let own = Perms::own(0o600);
    let now = Perms::of(target).ok();
    let mut mode = saved.mode & 0o777;
    if let Some(now) = now {
        mode &= now.mode | 0o600;
    }
    let uid = if saved.uid == 0 || saved.uid == own.uid || now.is_some_and(|n| n.uid == saved.uid) {
        saved.uid
    } else {
        own.uid
    };
    let gid = if saved.gid == 0 || saved.gid == own.gid || now.is_some_and(|n| n.gid == saved.gid) {
        saved.gid
    } else {
        own.gid
    };
    Perms { mode, uid, gid }
}

/// A version directory's name: six ASCII digits.
fn is_version_id(id: &str) -> bool {
    id.len() == 6 && id.bytes().all(|b| b.is_ascii_digit())
}

/// A commit that failed ([`Txn::try_commit`]).
#[derive(Debug)]
pub struct CommitFailed {
    pub error: StoreError,
    /// The change, still open, when the commit point was not reached: the
    /// new files are in place and the journal would undo them.
    /// (Boxed: a Txn carries its whole journal.)
    pub open: Option<Box<Txn>>,
}

/// Drop a managed change's unused commit record once the change is closed
/// (a leftover is harmless: the next change writes its own first).
fn remove_commit_record(site: &SiteStore) {
    let _ = std::fs::remove_file(site.commit_record_path());
}

/// Refuse targets certswap must not replace in place (DESIGN invariant 8
/// and the key-safety rule): symlinks, and key dirs others can write to.
fn check_target(f: &NewFile) -> Result<(), StoreError> {
    if let Ok(m) = std::fs::symlink_metadata(&f.target)
        && m.file_type().is_symlink()
    {
        return Err(StoreError::TargetIsSymlink {
            path: f.target.clone(),
        });
    }
    check_target_dir(&f.target)
}

/// Refuse a target an ACME client owns, with the command that fixes it.
fn check_acme(site: &str, target: &Path) -> Result<(), StoreError> {
    match crate::discover::acme::classify(target) {
        Some(a) => Err(StoreError::AcmeOwned {
            path: target.to_path_buf(),
            why: a.why(),
            site: site.to_string(),
        }),
        None => Ok(()),
    }
}

/// The directory of `target` must not be writable by everyone (without the
/// sticky bit): anyone could swap the file, or the link, under the server.
fn check_target_dir(target: &Path) -> Result<(), StoreError> {
    let dir = fsio::parent_of(target);
    let m = std::fs::metadata(&dir).map_err(io_err(&dir, "read the target directory"))?;
    use std::os::unix::fs::PermissionsExt;
    let mode = m.permissions().mode();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(StoreError::UnsafeDir { path: dir });
    }
    Ok(())
}

/// The version directories (six digits) in `dir`, oldest first; none when
/// `dir` does not exist.
/// The id after the newest version in `dir` ("000001" in an empty one).
fn next_version_id(dir: &Path) -> Result<String, StoreError> {
    let n = version_ids(dir)?
        .last()
        .and_then(|id| id.parse::<u64>().ok())
        .map_or(1, |n| n + 1);
    Ok(format!("{n:06}"))
}

fn version_ids(dir: &Path) -> Result<Vec<String>, StoreError> {
    dir_names(dir).map(sorted_ids)
}

/// Every entry's name in `dir`; none when `dir` does not exist.
fn dir_names(dir: &Path) -> Result<Vec<String>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir, "list versions")(e)),
    };
    Ok(entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

/// The version ids among `names`, oldest first.
fn sorted_ids(names: Vec<String>) -> Vec<String> {
    let mut ids: Vec<String> = names.into_iter().filter(|n| is_version_id(n)).collect();
    ids.sort();
    ids
}

fn current_sha256(path: &Path) -> Result<Option<String>, StoreError> {
    match fsio::read_limited(path, MAX_TARGET_BYTES) {
        Ok(b) => Ok(Some(sha256_hex(&b))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path, "read")(e)),
    }
}

/// Save the file at `target` as `dir/ROLE` (if it exists) and describe it.
///
/// A hard link when the state dir is on the same filesystem: the swap
/// renames a new file over `target`, so the old inode lives on only under
/// `dir`, and nothing is copied. The hash and mode are read through the
/// link, so they describe exactly what was saved even if `target` was
/// replaced meanwhile. Otherwise (another filesystem, protected_hardlinks)
/// a copy, private to root whatever the original's mode: it may be a key.
/// `dir` lives in the 0700 state dir either way; [`write_meta`] fsyncs it.
fn save_copy(
    role: Role,
    target: &Path,
    dir: &Path,
    sync: SyncMode,
) -> Result<SavedFile, StoreError> {
    let dest = dir.join(role.file_name());
    let linked = match sync {
        SyncMode::Now => fsio::link_synced(target, &dest).is_ok(),
        SyncMode::Later => std::fs::hard_link(target, &dest).is_ok(),
    };
    let source = if linked { &dest } else { target };
    let bytes = match fsio::read_limited(source, MAX_TARGET_BYTES) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(SavedFile {
                role,
                target: target.to_path_buf(),
                sha256: None,
                perms: None,
            });
        }
        Err(e) => return Err(io_err(target, "read the installed file")(e)),
    };
    let perms = Perms::of(source).map_err(io_err(target, "read the mode of"))?;
    if !linked {
        sync.create(&dest, &bytes, Perms::own(0o600))
            .map_err(io_err(&dest, "save a copy"))?;
    }
    Ok(SavedFile {
        role,
        target: target.to_path_buf(),
        sha256: Some(sha256_hex(&bytes)),
        perms: Some(perms),
    })
}

/// Read the saved files of a version directory back, checking each
/// against its recorded hash; `name_of` gives a role's file name there.
fn load_saved(
    dir: &Path,
    files: &[SavedFile],
    name_of: fn(Role) -> &'static str,
) -> Result<Vec<NewFile>, StoreError> {
    let mut out = Vec::new();
    for s in files {
        let Some(hash) = &s.sha256 else { continue };
        let src = dir.join(name_of(s.role));
        let bytes = std::fs::read(&src).map_err(io_err(&src, "read the saved version"))?;
        if &sha256_hex(&bytes) != hash {
            return Err(StoreError::Corrupt { path: src });
        }
        out.push(NewFile {
            role: s.role,
            target: s.target.clone(),
            bytes,
        });
    }
    Ok(out)
}

fn write_meta(dir: &Path, files: &[SavedFile], sync: SyncMode) -> Result<(), StoreError> {
    let meta = SavedMeta {
        created: now_rfc3339(),
        files: files.to_vec(),
    };
    let path = dir.join("meta.json");
    let bytes = serde_json::to_vec_pretty(&meta).map_err(|e| StoreError::BadJournal {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    sync.create(&path, &bytes, Perms::own(0o600))
        .map_err(io_err(&path, "write"))?;
    match sync {
        SyncMode::Now => fsio::fsync_dir(dir).map_err(io_err(dir, "fsync")),
        SyncMode::Later => Ok(()),
    }
}

/// When what a stage writes becomes durable: as each file is written (one
/// site), or all at once by the caller ([`begin_all`], a batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncMode {
    Now,
    Later,
}

impl SyncMode {
    fn create(self, path: &Path, bytes: &[u8], perms: Perms) -> io::Result<()> {
        match self {
            SyncMode::Now => fsio::create_new(path, bytes, perms),
            SyncMode::Later => fsio::create_new_unsynced(path, bytes, perms),
        }
    }
}

fn read_meta(dir: &Path) -> Result<SavedMeta, StoreError> {
    let path = dir.join("meta.json");
    let bytes = std::fs::read(&path).map_err(io_err(&path, "read"))?;
    serde_json::from_slice(&bytes).map_err(|e| StoreError::BadJournal {
        path,
        reason: e.to_string(),
    })
}

fn mkdir_private(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(io_err(dir, "create the directory")(e)),
    }
}

/// fsync each directory once (the swap of a batch: one fsync of a
/// directory that holds the files of many sites).
pub fn fsync_dirs(dirs: &[PathBuf]) -> Result<(), StoreError> {
    let mut done: Vec<&PathBuf> = Vec::new();
    for dir in dirs {
        if !done.contains(&dir) {
            fsio::fsync_dir(dir).map_err(io_err(dir, "fsync"))?;
            done.push(dir);
        }
    }
    Ok(())
}

/// Remove a directory tree if it exists; the caller fsyncs its parent.
fn remove_dir(dir: &Path) -> Result<(), StoreError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(dir, "remove")(e)),
        _ => Ok(()),
    }
}

fn remove_dir_durable(dir: &Path) -> Result<(), StoreError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {
            fsio::fsync_dir(&fsio::parent_of(dir)).map_err(io_err(dir, "fsync the parent of"))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(dir, "remove")(e)),
    }
}

fn now_rfc3339() -> String {
    crate::cert::rfc3339(time::OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        cert: PathBuf,
        key: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let ssl = dir.path().join("ssl");
        std::fs::create_dir(&ssl).expect("mkdir");
        let cert = ssl.join("a.pem");
        let key = ssl.join("a.key");
        std::fs::write(&cert, b"old cert").expect("write");
        std::fs::write(&key, b"old key").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let store = Store::open(&dir.path().join("state")).expect("store");
        Fixture {
            _dir: dir,
            store,
            cert,
            key,
        }
    }

    fn new_files(f: &Fixture, tag: &str) -> Vec<NewFile> {
        vec![
            NewFile {
                role: Role::Cert,
                target: f.cert.clone(),
                bytes: format!("{tag} cert").into_bytes(),
            },
            NewFile {
                role: Role::Key,
                target: f.key.clone(),
                bytes: format!("{tag} key").into_bytes(),
            },
        ]
    }

    fn targets(f: &Fixture) -> Vec<(Role, PathBuf)> {
        vec![(Role::Cert, f.cert.clone()), (Role::Key, f.key.clone())]
    }

    fn read(p: &Path) -> String {
        String::from_utf8(std::fs::read(p).expect("read")).expect("utf8")
    }

    #[test]
    fn a_bulk_stage_and_commit_keep_every_step_of_one_site() {
        let f = fixture();
        // A second site whose target is a symlink: refused, the first goes on.
        let ssl = f.cert.parent().expect("ssl").to_path_buf();
        std::os::unix::fs::symlink(&f.cert, ssl.join("b.pem")).expect("symlink");
        let (a, b) = (f.store.site("a.test"), f.store.site("b.test"));
        let changes = vec![
            Change {
                store: a.clone(),
                op: Op::Install,
                files: new_files(&f, "new"),
            },
            Change {
                store: b.clone(),
                op: Op::Install,
                files: vec![NewFile {
                    role: Role::Cert,
                    target: ssl.join("b.pem"),
                    bytes: b"b cert".to_vec(),
                }],
            },
        ];
        let mut staged = begin_all(changes, 4, || ()).into_iter();
        let mut txn = staged.next().expect("a").expect("a stages");
        assert!(matches!(
            staged.next().expect("b"),
            Err(StoreError::TargetIsSymlink { .. })
        ));
        // Staged and journalled under its real name, targets untouched.
        assert!(a.has_open_change() && !b.has_open_change());
        assert!(!a.journal_tmp_path().exists());
        assert_eq!(read(&f.cert), "old cert");
        assert_eq!(leftovers(&f).len(), 2, "{:?}", leftovers(&f));
        let dirs = txn.swap_unsynced().expect("swap");
        fsync_dirs(&dirs).expect("fsync");
        assert_eq!(read(&f.cert), "new cert");
        let done = commit_all(vec![txn], KEEP_VERSIONS, 4, &Pruned::default());
        assert!(done.into_iter().all(|r| r.is_ok()));
        assert!(!a.has_open_change());
        let versions = a.versions().expect("versions");
        assert_eq!(versions.len(), 1);
        assert_eq!(read(&versions[0].dir.join("key")), "old key");
        assert!(leftovers(&f).is_empty(), "{:?}", leftovers(&f));
    }

    fn leftovers(f: &Fixture) -> Vec<String> {
        std::fs::read_dir(f.cert.parent().expect("parent"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect()
    }

    #[test]
    fn the_undo_copy_is_a_hard_link_on_one_filesystem_and_a_private_copy_across() {
        use std::os::unix::fs::MetadataExt;
        // One filesystem: the old inode itself is kept, nothing is copied.
        let f = fixture();
        let site = f.store.site("a.test");
        let txn = site
            .begin(Op::Install, new_files(&f, "new"))
            .expect("begin");
        let saved = site.undo_dir().join("key");
        let (a, b) = (
            std::fs::metadata(&f.key).expect("key"),
            std::fs::metadata(&saved).expect("saved"),
        );
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()), "a hard link");
        txn.abort().expect("abort");
        assert_eq!(std::fs::metadata(&f.key).expect("key").nlink(), 1);

        // Another filesystem (/dev/shm is tmpfs here): a 0600 copy.
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() || std::fs::metadata(shm).map(|m| m.dev()).ok() == Some(a.dev()) {
            eprintln!("skipped the cross-filesystem half: no separate /dev/shm");
            return;
        }
        let other = tempfile::tempdir_in(shm).expect("shm dir");
        let key = other.path().join("b.key");
        std::fs::write(&key, b"old key").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let site = f.store.site("b.test");
        let files = vec![NewFile {
            role: Role::Key,
            target: key.clone(),
            bytes: b"new key".to_vec(),
        }];
        let mut txn = site.begin(Op::Install, files).expect("begin");
        let saved = site.undo_dir().join("key");
        assert_ne!(
            std::fs::metadata(&saved).expect("saved").dev(),
            std::fs::metadata(&key).expect("key").dev()
        );
        assert_eq!(Perms::of(&saved).expect("perms").mode, 0o600);
        txn.swap().expect("swap");
        txn.commit(KEEP_VERSIONS).expect("commit");
        assert_eq!(read(&key), "new key");
        assert_eq!(Perms::of(&key).expect("perms").mode, 0o640, "mode kept");
        let v = site
            .previous(&[(Role::Key, key.clone())])
            .expect("a version")
            .1;
        assert_eq!(v[0].bytes, b"old key");
    }

    #[test]
    fn commit_installs_keeps_mode_and_saves_a_version() {
        let f = fixture();
        let site = f.store.site("a.test");
        let mut txn = site
            .begin(Op::Install, new_files(&f, "new"))
            .expect("begin");
        assert_eq!(read(&f.cert), "old cert", "staging must not touch targets");
        txn.swap().expect("swap");
        txn.commit(KEEP_VERSIONS).expect("commit");
        assert_eq!(read(&f.cert), "new cert");
        assert_eq!(read(&f.key), "new key");
        assert_eq!(
            Perms::of(&f.key).expect("perms").mode,
            0o640,
            "key mode copied"
        );
        let versions = site.versions().expect("versions");
        assert_eq!(versions.len(), 1);
        assert!(leftovers(&f).is_empty(), "{:?}", leftovers(&f));
        assert!(!site.journal_path().exists());
    }

    #[test]
    fn abort_restores_the_old_bytes() {
        let f = fixture();
        let site = f.store.site("a.test");
        let mut txn = site
            .begin(Op::Install, new_files(&f, "new"))
            .expect("begin");
        txn.swap().expect("swap");
        txn.abort().expect("abort");
        assert_eq!(read(&f.cert), "old cert");
        assert_eq!(read(&f.key), "old key");
        assert_eq!(Perms::of(&f.key).expect("perms").mode, 0o640);
        assert!(site.versions().expect("versions").is_empty());
        assert!(leftovers(&f).is_empty());
    }

    #[test]
    fn recovery_undoes_a_change_left_open_at_each_step() {
        // (crash point, whether recovery must reload)
        let cases = [
            ("staged", false),
            ("cert renamed", true),
            ("swapped", true),
            ("swapped, old phase `swapped` journalled", true),
            ("reloaded, old files already back", true),
        ];
        for (step, reload) in cases {
            let f = fixture();
            let site = f.store.site("a.test");
            let mut txn = site
                .begin(Op::Install, new_files(&f, "new"))
                .expect("begin");
            match step {
                "staged" => {}
                "cert renamed" => {
                    let staged = txn.journal.files[0].staged.clone();
                    std::fs::rename(staged, &f.cert).expect("rename");
                }
                "swapped" => txn.swap().expect("swap"),
                "swapped, old phase `swapped` journalled" => {
                    txn.swap().expect("swap");
                    txn.journal.phase = Phase::Swapped;
                    txn.write_journal().expect("mark");
                }
                _ => {
                    txn.swap().expect("swap");
                    txn.mark_reloaded().expect("mark");
                    std::fs::write(&f.cert, "old cert").expect("put back");
                    std::fs::write(&f.key, "old key").expect("put back");
                }
            }
            drop(txn); // like a crash: the journal stays
            let r = site
                .recover(&[f.cert.clone(), f.key.clone()])
                .expect("recover");
            assert_eq!(
                r,
                Recovery::RolledBack {
                    op: Op::Install,
                    reload
                },
                "{step}"
            );
            assert_eq!(read(&f.cert), "old cert", "{step}");
            assert_eq!(read(&f.key), "old key", "{step}");
            assert!(leftovers(&f).is_empty(), "{step}: {:?}", leftovers(&f));
            if reload {
                // Open until the caller's reload was tried: a crash before
                // it repeats the reload (and finds the files already back).
                assert!(site.journal_path().exists(), "{step}");
                assert_eq!(
                    site.recover(&[f.cert.clone(), f.key.clone()])
                        .expect("again"),
                    Recovery::RolledBack {
                        op: Op::Install,
                        reload: true
                    },
                    "{step}"
                );
                assert_eq!(read(&f.cert), "old cert", "{step}");
                site.close_reloaded().expect("close");
            }
            assert_eq!(
                site.recover(&[f.cert.clone(), f.key.clone()])
                    .expect("again"),
                Recovery::Clean,
                "{step}"
            );
            assert!(!site.undo_dir().exists(), "{step}");
        }
    }

    #[test]
    fn recovery_after_the_commit_point_keeps_the_new_files() {
        // The commit point now (undo/ gone to versions/) and the one of
        // earlier builds (journal phase `committed`, undo/ still there).
        for old_style in [false, true] {
            let f = fixture();
            let site = f.store.site("a.test");
            let mut txn = site
                .begin(Op::Install, new_files(&f, "new"))
                .expect("begin");
            txn.swap().expect("swap");
            if old_style {
                txn.journal.phase = Phase::Committed;
                txn.write_journal().expect("journal");
            } else {
                txn.retire_undo(SyncMode::Now).expect("commit point");
            }
            drop(txn); // a crash: the journal stays
            assert!(site.journal_path().exists());
            let r = site
                .recover(&[f.cert.clone(), f.key.clone()])
                .expect("recover");
            assert_eq!(r, Recovery::Completed { op: Op::Install }, "{old_style}");
            assert_eq!(read(&f.cert), "new cert");
            assert_eq!(site.versions().expect("versions").len(), 1);
            assert!(!site.journal_path().exists() && !site.undo_dir().exists());
            assert_eq!(
                site.recover(&[f.cert.clone(), f.key.clone()])
                    .expect("again"),
                Recovery::Clean
            );
        }
    }

    #[test]
    fn recovery_without_a_journal_removes_staged_files_with_or_without_an_undo_copy() {
        // A crash after the undo copy and a staged file, before the journal
        // (the store dir has leftovers); and a staged file alone, as a
        // crash of a repair between its two removals leaves it.
        for undo in [true, false] {
            let f = fixture();
            let site = f.store.site("a.test");
            let txn = site
                .begin(Op::Install, new_files(&f, "new"))
                .expect("begin");
            let staged = fsio::sibling(&f.cert, STAGED_SUFFIX);
            std::fs::write(&staged, "new cert").expect("stage");
            std::fs::remove_file(site.journal_path()).expect("no journal");
            drop(txn);
            if !undo {
                std::fs::remove_dir_all(site.undo_dir()).expect("no undo");
            }
            let targets = [f.cert.clone(), f.key.clone()];
            let looked = site.check_journal(&targets).expect("check");
            assert!(!looked.is_open() && looked.leftovers == undo, "{undo}");
            assert_eq!(
                site.recover_checked(&targets, looked).expect("recover"),
                Recovery::Clean
            );
            assert!(leftovers(&f).is_empty(), "{undo}: {:?}", leftovers(&f));
            assert!(!site.undo_dir().exists(), "{undo}");
            assert_eq!(
                (read(&f.cert), read(&f.key)),
                ("old cert".into(), "old key".into())
            );
        }
    }

    #[test]
    fn rollback_goes_back_one_version_and_pops_it() {
        let f = fixture();
        let site = f.store.site("a.test");
        for tag in ["v2", "v3"] {
            let mut txn = site.begin(Op::Install, new_files(&f, tag)).expect("begin");
            txn.swap().expect("swap");
            txn.commit(KEEP_VERSIONS).expect("commit");
        }
        let (v, files) = site.previous(&targets(&f)).expect("previous");
        assert_eq!(String::from_utf8_lossy(&files[0].bytes), "v2 cert");
        let mut txn = site
            .begin(Op::Rollback { version: v.id }, files)
            .expect("begin");
        txn.swap().expect("swap");
        txn.commit(KEEP_VERSIONS).expect("commit");
        assert_eq!(read(&f.cert), "v2 cert");
        assert_eq!(site.versions().expect("versions").len(), 1);
        let (_, files) = site.previous(&targets(&f)).expect("previous");
        assert_eq!(String::from_utf8_lossy(&files[0].bytes), "old cert");
    }

    #[test]
    fn only_the_last_versions_are_kept() {
        let f = fixture();
        let site = f.store.site("a.test");
        for i in 0..5 {
            let mut txn = site
                .begin(Op::Install, new_files(&f, &format!("v{i}")))
                .expect("begin");
            txn.swap().expect("swap");
            txn.commit(KEEP_VERSIONS).expect("commit");
        }
        let ids: Vec<String> = site
            .versions()
            .expect("versions")
            .into_iter()
            .map(|v| v.id)
            .collect();
        assert_eq!(ids, vec!["000003", "000004", "000005"]);
    }

    #[test]
    fn a_batch_leaves_one_more_version_for_the_next_batch_to_prune() {
        let f = fixture();
        let site = f.store.site("a.test");
        let ids = |site: &SiteStore| -> Vec<String> {
            site.versions()
                .expect("versions")
                .into_iter()
                .map(|v| v.id)
                .collect()
        };
        let batch = |i: usize| {
            let change = Change {
                store: site.clone(),
                op: Op::Install,
                files: new_files(&f, &format!("v{i}")),
            };
            let mut txn = begin_all(vec![change], 4, || ())
                .pop()
                .expect("one")
                .expect("stages");
            fsync_dirs(&txn.swap_unsynced().expect("swap")).expect("fsync");
            txn
        };
        for i in 0..5 {
            let txn = batch(i);
            assert!(commit_all(vec![txn], KEEP_VERSIONS, 4, &Pruned::default())[0].is_ok());
        }
        // keep + 1: the oldest waits for the next batch.
        assert_eq!(ids(&site), ["000002", "000003", "000004", "000005"]);

        // The next batch prunes while it waits for the server: only what
        // is beyond keep already, so a change that fails keeps all three.
        let txn = batch(5);
        Pruning::start(vec![site.clone()], KEEP_VERSIONS, 4).join();
        assert_eq!(ids(&site), ["000003", "000004", "000005"]);
        txn.abort().expect("abort");
        assert_eq!(ids(&site), ["000003", "000004", "000005"]);
        assert_eq!(read(&f.cert), "v4 cert");

        // A site with nothing beyond keep loses nothing, and a missing
        // versions dir is no error.
        Pruning::start(vec![site.clone(), f.store.site("b.test")], KEEP_VERSIONS, 4).join();
        assert_eq!(ids(&site), ["000003", "000004", "000005"]);

        // A removal cut short (its record gone first) is out of the list,
        // so rollback still reads every version, and the next prune ends it.
        let cut = site.versions_dir().join(".pruned-000002");
        std::fs::create_dir(&cut).expect("mkdir");
        std::fs::write(cut.join("cert"), "v1 cert").expect("write");
        assert_eq!(ids(&site), ["000003", "000004", "000005"]);
        assert!(site.previous(&targets(&f)).is_ok());
        site.prune_versions(KEEP_VERSIONS).expect("prune");
        assert!(!cut.exists());
        assert_eq!(ids(&site), ["000003", "000004", "000005"]);

        // A site the batch's Pruning left at keep is not listed again at
        // its commit: keep + 1 after it, as without the Pruning.
        let txn = batch(6);
        let pruned = Pruning::start(vec![site.clone()], KEEP_VERSIONS, 4).join();
        assert!(commit_all(vec![txn], KEEP_VERSIONS, 4, &pruned)[0].is_ok());
        assert_eq!(ids(&site), ["000003", "000004", "000005", "000006"]);
        // (Told so, it takes the word: the listing is what it skips.)
        let txn = batch(7);
        assert!(commit_all(vec![txn], KEEP_VERSIONS, 4, &pruned)[0].is_ok());
        assert_eq!(ids(&site).len(), KEEP_VERSIONS + 2);
        let txn = batch(8);
        assert!(commit_all(vec![txn], KEEP_VERSIONS, 4, &Pruned::default())[0].is_ok());
        assert_eq!(ids(&site), ["000005", "000006", "000007", "000008"]);
    }

    #[test]
    fn a_corrupt_undo_copy_is_not_restored() {
        let f = fixture();
        let site = f.store.site("a.test");
        let mut txn = site
            .begin(Op::Install, new_files(&f, "new"))
            .expect("begin");
        txn.swap().expect("swap");
        std::fs::write(site.undo_dir().join("cert"), b"tampered").expect("write");
        assert!(matches!(txn.abort(), Err(StoreError::Corrupt { .. })));
        assert_eq!(read(&f.cert), "new cert", "nothing half-restored");
    }

    #[test]
    fn symlink_targets_and_world_writable_dirs_are_refused() {
        let f = fixture();
        let site = f.store.site("a.test");
        let real = f.cert.with_file_name("real.pem");
        std::fs::rename(&f.cert, &real).expect("mv");
        std::os::unix::fs::symlink(&real, &f.cert).expect("symlink");
        let e = site
            .begin(Op::Install, new_files(&f, "new"))
            .expect_err("symlink");
        assert!(matches!(e, StoreError::TargetIsSymlink { .. }), "{e}");
        std::fs::remove_file(&f.cert).expect("rm");
        std::fs::rename(&real, &f.cert).expect("mv back");

        let dir = f.cert.parent().expect("parent");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = site
            .begin(Op::Install, new_files(&f, "new"))
            .expect_err("unsafe dir");
        assert!(matches!(e, StoreError::UnsafeDir { .. }), "{e}");
        assert_eq!(read(&f.cert), "old cert");
    }

    #[test]
    fn a_second_lock_fails_fast() {
        let f = fixture();
        let _held = f.store.lock().expect("first");
        assert!(matches!(f.store.lock(), Err(StoreError::Locked { .. })));
    }
}
