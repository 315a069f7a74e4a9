//! Steps 1–3 and the commit point for many sites at once (a batch), in
//! the order and with the guarantees of one site's ([`SiteStore::begin`],
//! [`Txn::try_commit`]), but with the syncs grouped: one syncfs(2) per
//! filesystem per step instead of one fsync per file and per directory
//! (~8 per site staged and 2 committed; docs/performance.md has what each
//! option costs on a real disk). The order:
//!
//! 1. every site writes its undo copy, `undo/meta.json`, its staged files
//!    and its journal under the temporary name, none of them synced;
//! 2. syncfs of the state dir's and every target directory's filesystem:
//!    the data of all of them is durable;
//! 3. each journal is renamed into place;
//! 4. syncfs of the state dir's filesystem: the journals (and `undo/`'s
//!    names) are durable — before any target is renamed (step 4 of the
//!    module docs, [`Txn::swap_unsynced`], then one fsync per directory).
//!
//! A crash before 4 ends leaves at most staged files and undo copies
//! without a journal, or a complete journal of a change whose targets are
//! untouched: recovery drops or undoes either, as for one site. The
//! commit: every undo copy renamed out of `undo/`, then one syncfs; a site
//! whose rename failed is handed back open ([`CommitFailed`]), as by
//! [`Txn::try_commit`]. Managed changes (their own journal rename) take
//! the one-site path inside the same calls.

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;

use super::{CommitFailed, NewFile, Op, SiteStore, StoreError, SyncMode, Txn, io_err};
use crate::failpoint;
use crate::fsio;
use crate::par;

/// One site's change for [`begin_all`].
#[derive(Debug)]
pub struct Change {
    pub store: SiteStore,
    pub op: Op,
    pub files: Vec<NewFile>,
}

/// [`SiteStore::begin`] for every change, on up to `threads` threads, with
/// the syncs grouped (module docs). Results in the order of `changes`; a
/// site that fails is taken back (nothing of it stays beside its targets)
/// and does not stop the others, but a failed sync fails all of them.
/// `written` runs once every file is written, before the syncs: from there
/// on the stage mostly waits for the disk, and the caller may use the
/// cores.
pub fn begin_all(
    changes: Vec<Change>,
    threads: usize,
    written: impl FnOnce(),
) -> Vec<Result<Txn, StoreError>> {
    let mut clock = Steps::start(changes.len());
    // 1. Write, unsynced.
    let mut staged = par::map(changes, threads, |c| {
        c.store.begin_with(c.op, &c.files, SyncMode::Later)
    });
    written();
    let mut roots: Vec<PathBuf> = Vec::new();
    let mut filesystems: Vec<PathBuf> = Vec::new();
    for txn in staged.iter().flatten() {
        let root = txn.site.root.clone();
        if !roots.contains(&root) {
            filesystems.push(root.clone());
            roots.push(root);
        }
        for f in &txn.journal.files {
            let dir = fsio::parent_of(&f.target);
            if !filesystems.contains(&dir) {
                filesystems.push(dir);
            }
        }
    }
    if roots.is_empty() {
        return staged;
    }
    clock.done("write");
    // 2. The data of every file written, durable.
    if let Err(e) = fsio::sync_filesystems(&filesystems) {
        return fail_all(staged, &roots[0], e);
    }
    clock.done("sync-data");
    // 3. The journals into place.
    let staged_len = staged.len();
    staged = par::map(staged, threads, |r| {
        let txn = r?;
        let (tmp, path) = (txn.site.journal_tmp_path(), txn.site.journal_path());
        match std::fs::rename(&tmp, &path) {
            Ok(()) => Ok(txn),
            Err(e) => {
                txn.unstage();
                Err(io_err(&path, "write the journal")(e))
            }
        }
    });
    debug_assert_eq!(staged.len(), staged_len);
    clock.done("rename-journals");
    // 4. The journals durable, before any target moves.
    if let Err(e) = fsio::sync_filesystems(&roots) {
        return fail_all(staged, &roots[0], e);
    }
    clock.done("sync-journals");
    failpoint::hit("after-stage");
    staged
}

/// A sync failed: nothing is durable, so no site may go on. Take every
/// site back and fail each with the error.
fn fail_all(
    staged: Vec<Result<Txn, StoreError>>,
    path: &std::path::Path,
    e: io::Error,
) -> Vec<Result<Txn, StoreError>> {
    staged
        .into_iter()
        .map(|r| {
            let txn = r?;
            txn.unstage();
            Err(io_err(path, "make the staged files durable")(
                io::Error::new(e.kind(), e.to_string()),
            ))
        })
        .collect()
}

/// [`Txn::try_commit`] for every change, with one sync for all the commit
/// points (module docs). Results in the order of `txns`. An in-place site
/// keeps `keep + 1` earlier versions here, not `keep`: removing the one
/// beyond costs ~0.2 ms of the disk per site (~2 s at 10,000 sites, at
/// the end of the batch), so it waits for the next batch's [`Pruning`],
/// which runs while the server loads its new config. A site in `pruned`
/// had at most `keep` before this commit, so its versions are not listed
/// again; any other is pruned to `keep + 1` here.
pub fn commit_all(
    txns: Vec<Txn>,
    keep: usize,
    threads: usize,
    pruned: &Pruned,
) -> Vec<Result<(), CommitFailed>> {
    enum Point {
        /// Managed, or failed before its rename: settled.
        Done(Result<(), CommitFailed>),
        /// Its undo copy left `undo/`; durable after the sync.
        Renamed(Txn),
    }
    let mut clock = Steps::start(txns.len());
    let points = par::map(txns, threads, |txn| {
        if txn.journal.flip.is_some() {
            return Point::Done(txn.try_commit(keep));
        }
        let j = txn.site.journal_path();
        let renamed = failpoint::fail("commit")
            .map_err(io_err(&j, "commit the change"))
            .and_then(|()| txn.retire_undo(SyncMode::Later));
        match renamed {
            Ok(()) => Point::Renamed(txn),
            Err(error) if !txn.committed_on_disk() => Point::Done(Err(CommitFailed {
                error,
                open: Some(Box::new(txn)),
            })),
            Err(error) => {
                tracing::warn!("the commit point was reached despite: {error}");
                Point::Renamed(txn)
            }
        }
    });
    clock.done("commit-renames");
    let mut roots: Vec<PathBuf> = Vec::new();
    for p in &points {
        if let Point::Renamed(txn) = p
            && !roots.contains(&txn.site.root)
        {
            roots.push(txn.site.root.clone());
        }
    }
    if !roots.is_empty() {
        // The renames happened: as for one site, a failed sync after them
        // leaves the changes standing as far as recovery can tell.
        if let Err(e) = fsio::sync_filesystems(&roots) {
            tracing::warn!("the commit point was reached despite: syncfs failed: {e}");
        }
        failpoint::hit("after-commit");
    }
    clock.done("commit-sync");
    let done = par::map(points, threads, |p| match p {
        Point::Done(r) => r,
        Point::Renamed(txn) => {
            let pruned = pruned.0.contains(&txn.site.dir);
            txn.finish_commit(keep + 1, pruned)
                .map_err(|error| CommitFailed { error, open: None })
        }
    });
    clock.done("commit-finish");
    done
}

/// Remove every site's in-place versions beyond the newest `keep`
/// ([`SiteStore::prune_versions`]) on up to `threads` threads at the
/// lowest CPU priority, in the background: what an earlier batch's
/// [`commit_all`] left. A batch starts it once the server is reloading
/// (the wait for its new workers is seconds of a core or more that
/// certswap does not use) and joins it before its commit. Only versions
/// already beyond `keep` go, so a change that fails after this loses none
/// of the `keep` a site had. Best effort: a version that stays is logged
/// and goes next time.
pub struct Pruning(Option<std::thread::JoinHandle<Pruned>>);

/// The sites a [`Pruning`] left with at most its `keep` versions (by store
/// dir), for [`commit_all`].
#[derive(Debug, Default)]
pub struct Pruned(HashSet<PathBuf>);

impl Pruning {
    pub fn start(sites: Vec<SiteStore>, keep: usize, threads: usize) -> Pruning {
        let work = move || {
            // Helper threads inherit the niceness of the thread that
            // starts them.
            crate::priority::Background::default().lower();
            let mut clock = Steps::start(sites.len());
            let done = par::map(sites, threads, |site| match site.prune_versions(keep) {
                Ok(()) => Some(site.dir),
                Err(e) => {
                    tracing::warn!(site = %site.name, "old versions not removed: {e}");
                    None
                }
            });
            clock.done("prune");
            Pruned(done.into_iter().flatten().collect())
        };
        Pruning(
            std::thread::Builder::new()
                .name("certswap-prune".into())
                .spawn(work)
                .ok(),
        )
    }

    /// Wait for it to end: the sites it pruned (none if its thread could
    /// not start).
    pub fn join(mut self) -> Pruned {
        match self.0.take().map(|h| h.join()) {
            Some(Ok(pruned)) => pruned,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => Pruned::default(),
        }
    }
}

impl Drop for Pruning {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

/// Wall time of each step, logged at info level (`-v`) beside the batch's
/// phases: `store step step=sync-data ms=41 sites=1000`.
struct Steps(std::time::Instant, usize);

impl Steps {
    fn start(sites: usize) -> Steps {
        Steps(std::time::Instant::now(), sites)
    }

    fn done(&mut self, step: &str) {
        let ms = self.0.elapsed().as_millis();
        tracing::info!(step = %step, ms, sites = self.1, "store step");
        self.0 = std::time::Instant::now();
    }
}
