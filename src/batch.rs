//! `certswap install --batch DIR` and the agent's batches: the pipeline of
//! DESIGN.md for many sites at once, with the server steps done ONCE for
//! all of them. Numbers are the steps of DESIGN.md (steps 1–2 in [`crate::install`]):
//!
//! ```text
//! 1–2  check every bundle (in parallel; touches nothing)
//!        rejected → its outcome, out of the batch;  --dry-run stops here
//!      take the host lock, repair every site from its journal (one reload
//!        for all the repairs)
//! 3    stage every site (I/O threads), while ONE bulk probe, running on
//!        through step 5, notes what every endpoint serves now (the server
//!        reads the new files only at the reload)
//! 4    swap every site (I/O threads), one fsync per directory
//! 5    ONE config test; a site whose endpoint did not answer gets its old
//!        files back, refused before the server ever loaded anything (then
//!        the config is tested again); config test fails: restore every
//!        site, no reload, prove old
//! 6    ONE reload (from the swap on, recovery reloads: new files in place)
//! 7    ONE concurrent wait: every endpoint of every site serves its new leaf
//!        on `consecutive` fresh handshakes (after a light gate that waits
//!        for the reloaded config to answer at all)
//! 8    commit the sites that verified; restore the others, config test,
//!      ONE second reload, prove their old leaves are served again (exit 3)
//! ```
//!
//! This is THE engine: `certswap install` is a batch of one
//! ([`install_one`]), `rollback` one rollback change per site
//! ([`rollback_one`], [`rollback_sites`]), the deploy hook every site the
//! certificate covers ([`install_each`]), `install --batch` and the agent
//! N ([`install_items`]). Steps 3–8 exist here only.
//!
//! **The one rule for a site whose endpoint does not answer before the
//! change** (install, batch, hook and agent alike): the site is refused —
//! `rejected`, retryable (`endpoint`), the sentence names the endpoint and
//! says nothing was changed — before the server loads anything of it (no
//! file of it is left changed, no reload is sent for it), and the other
//! sites of the run go on. When no site of the run answers at all (a batch
//! of one included), the server is down: the run fails with that sentence,
//! exit 2.
//!
//! Install's rule ([`install_each`], `strict`: `certswap install`, the
//! deploy hook, `rollback --site`) differs only in how a site's *other*
//! environment refusals are reported — a served leaf its file does not
//! hold, the installed certificate not proven served, a symlinked target,
//! a store error at staging, no earlier version: that site's `Err` (exit
//! 2), judged before any of its files moves — where a batch rejects it.
//!
//! Each phase logs its wall time at info level (`-v`), e.g.
//! `batch phase phase=wait ms=1834 sites=1000`; docs/performance.md says
//! where the time of a 1000-site batch goes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::bundle::{Bundle, Files};
use crate::config::{Config, Mode, Site};
use crate::failpoint;
use crate::install::{self, Env, InstallError};
use crate::matcher::{self, Hint, MatchError};
use crate::par;
use crate::priority::Background;
use crate::probe::{self, Target};
pub use crate::recover::recover_host;
pub use crate::recover::stored_sites;
use crate::recover::{self, recover_sites};
use crate::report::{Outcome, ResultKind, Retryable, ServedRow};
use crate::service;
use crate::store::{self, NewFile, Op, Recovery, SiteStore, StoreError, Txn};
use crate::trust::TrustStore;
use crate::wait::{PROBE_CONCURRENCY, Wait, ms, wait_all};

/// Threads for staging, swapping, committing and restoring: each site costs
/// ~10–20 fsyncs, and concurrent fsyncs share the filesystem journal's
/// commits (≈4× the throughput of one thread on this box's ext4).
const IO_THREADS: usize = 16;
/// One bundle of a batch, for one configured site.
#[derive(Debug, Clone)]
pub struct Item<'a> {
    pub site: &'a Site,
    pub files: Files,
}

/// Install every bundle found in `dir` for the sites of the config, as one
/// batch. A bundle is `SITE.pem` (or `SITE_public.crt`), with `SITE.key`
/// and `SITE_chain.crt` when present, where SITE names a configured site
/// as [`crate::matcher::by_stem`] reads it (`*` may be spelt `_wildcard_`
/// or `STAR`), or, when it names none, the site the certificate covers
/// ([`crate::matcher`]). Files with other names and hidden files are
/// ignored.
///
/// One outcome per site found, sorted by name. A bundle file for a name
/// that is not a configured site, a key or chain without its cert, or two
/// certs for one site is a *rejected* outcome naming the file(s).
///
/// A directory without any bundle is not an error: it returns no outcome
/// (exit 0; `--json` prints no line) and logs a warning. An inbox that was
/// emptied by the last run is the normal case for a cron job, and a
/// mistyped directory fails anyway (it cannot be listed).
pub fn install_dir(
    env: &Env<'_>,
    dir: &Path,
    force: bool,
    dry_run: bool,
) -> Result<Vec<Outcome>, InstallError> {
    let (items, mut outcomes) = scan_dir(env.config, dir)?;
    if items.is_empty() && outcomes.is_empty() {
        tracing::warn!(
            "{}: no bundle (SITE.pem) for any configured site; nothing to install",
            dir.display()
        );
        return Ok(outcomes);
    }
    outcomes.extend(install_items(env, &items, force, dry_run)?);
    outcomes.sort_by(|a, b| a.site.cmp(&b.site));
    Ok(outcomes)
}

/// [`install_dir`] on a host with several `[[server]]` entries: the
/// bundles of `dir` matched against every site of `full`, then one batch
/// per server (`envs`: each scoped to one server, [`Config::for_server`]).
pub fn install_dir_per_server(
    full: &Config,
    envs: &[Env<'_>],
    dir: &Path,
    force: bool,
    dry_run: bool,
) -> Result<Vec<Outcome>, InstallError> {
    let (items, mut outcomes) = scan_dir(full, dir)?;
    if items.is_empty() && outcomes.is_empty() {
        tracing::warn!(
            "{}: no bundle (SITE.pem) for any configured site; nothing to install",
            dir.display()
        );
        return Ok(outcomes);
    }
    for env in envs {
        let mine: Vec<Item<'_>> = items
            .iter()
            .filter(|it| it.site.server == env.config.server.name)
            .cloned()
            .collect();
        if !mine.is_empty() {
            outcomes.extend(install_items(env, &mine, force, dry_run)?);
        }
    }
    outcomes.sort_by(|a, b| a.site.cmp(&b.site));
    Ok(outcomes)
}

/// Install `items` as one batch (see the module docs): one outcome per
/// item, in the order of `items`. Err only for a failure of the host, not
/// of a site: the lock is held by another certswap, a repair from a
/// journal failed, or no endpoint of any site answers before the change.
///
/// A dual-certificate site (`[[site.pair]]`) joins the batch as the pair
/// its bundle's key type chooses ([`install::pair_site`]): a site of its
/// own there, with its own journal, probed with only its key type's
/// signature schemes so that the server shows that leaf and not its
/// sibling. A bundle whose key type no pair has is rejected.
pub fn install_items(
    env: &Env<'_>,
    items: &[Item<'_>],
    force: bool,
    dry_run: bool,
) -> Result<Vec<Outcome>, InstallError> {
    Ok(run_items(env, items, force, dry_run, false)?
        .into_iter()
        .map(|(out, _)| out)
        .collect())
}

/// [`install_items`] with the per-site rule of `certswap install`, for
/// the deploy hook: a site the batch refuses for its environment (an
/// endpoint that serves what the file does not hold, the installed
/// certificate not proven served, a symlinked target, the store failing at
/// staging) is that site's `Err`, not a rejection, and is refused before
/// any of its files moves. A site whose endpoint does not answer follows
/// the one rule of the module docs (rejected; the run's `Err` when no site
/// answers). The server steps are still done once for all the sites (one
/// config test, one reload).
pub fn install_each(
    env: &Env<'_>,
    items: &[Item<'_>],
    force: bool,
) -> Result<Vec<Result<Outcome, InstallError>>, InstallError> {
    Ok(run_items(env, items, force, false, true)?
        .into_iter()
        .map(|(out, err)| match err {
            Some(e) => Err(e),
            None => Ok(out),
        })
        .collect())
}

/// `certswap install --site NAME`: a batch of one item with install's
/// rule ([`install_each`]), so the one site goes through the same steps
/// 3–8 as every batch. `dry_run` stops after steps 1–2.
pub fn install_one(
    env: &Env<'_>,
    item: Item<'_>,
    force: bool,
    dry_run: bool,
) -> Result<Outcome, InstallError> {
    let mut runs = run_items(env, &[item], force, dry_run, true)?;
    one(runs.pop())
}

/// The one result of a batch of one.
fn one(run: Option<Run>) -> Result<Outcome, InstallError> {
    match run {
        Some((_, Some(e))) => Err(e),
        Some((out, None)) => Ok(out),
        None => unreachable!("a batch gives one outcome per item"),
    }
}

/// An outcome, with the environment error that refused the site when the
/// caller asked for install's rule (`strict`).
type Run = (Outcome, Option<InstallError>);

/// Resolve the pair of every dual-certificate item, then run the batch.
fn run_items(
    env: &Env<'_>,
    items: &[Item<'_>],
    force: bool,
    dry_run: bool,
    strict: bool,
) -> Result<Vec<Run>, InstallError> {
    let pairs: Vec<Option<Result<Site, MatchError>>> = items
        .iter()
        .map(|it| {
            (!it.site.pairs.is_empty()).then(|| {
                install::pair_family(it.site, &it.files.cert)
                    .and_then(|family| install::pair_site(it.site, family))
            })
        })
        .collect();
    let mut outs: Vec<Option<Run>> = items.iter().map(|_| None).collect();
    let mut batch = Vec::new();
    let mut in_batch = Vec::new();
    for (i, (it, pair)) in items.iter().zip(&pairs).enumerate() {
        let site = match pair {
            None => it.site,
            Some(Ok(pair)) => pair,
            Some(Err(why)) => {
                let mut out = Outcome::new(&it.site.name);
                out.reject(why.to_string());
                outs[i] = Some((out, None));
                continue;
            }
        };
        batch.push(Item { site, ..it.clone() });
        in_batch.push(i);
    }
    let mut errs: Vec<Option<InstallError>> = batch.iter().map(|_| None).collect();
    let done = install_batch(env, &batch, force, dry_run, strict, &mut errs)?;
    for ((i, out), err) in in_batch.into_iter().zip(done).zip(errs) {
        outs[i] = Some((out, err.filter(|_| strict)));
    }
    Ok(outs.into_iter().flatten().collect())
}

/// [`install_items`] once every item names the site (or pair) it replaces:
/// the batch proper. `errs[i]`: the environment error that refused item
/// `i`, kept for [`install_each`]; with `strict` a site whose endpoints
/// refuse it is refused before staging, as `install` does.
fn install_batch(
    env: &Env<'_>,
    items: &[Item<'_>],
    force: bool,
    dry_run: bool,
    strict: bool,
    errs: &mut [Option<InstallError>],
) -> Result<Vec<Outcome>, InstallError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let mut clock = Clock::start();
    let trust = env.prober().trust();
    // 1–2. bundle and validate, before the lock: a batch that is rejected
    //      as a whole writes nothing, not even a lock file (invariant 1).
    let (mut outs, checks): (Vec<Outcome>, Vec<install::Checked>) =
        par::map(items.iter().collect(), par::cpu_threads(), |it| {
            check_item(it, force, trust)
        })
        .into_iter()
        .unzip();
    let mut bundles = Vec::with_capacity(checks.len());
    // Per item: its bundle is the installed certificate; what the site's
    // file holds now (the preflight truth check compares it with what is
    // served).
    let mut same = Vec::with_capacity(checks.len());
    let mut on_disk = Vec::with_capacity(checks.len());
    for c in checks {
        bundles.push(c.bundle);
        same.push(c.same);
        on_disk.push(c.on_disk);
    }
    // The real reason of a refused symlinked target, as install says it.
    for (i, it) in items.iter().enumerate() {
        if bundles[i].is_none() {
            errs[i] = install::symlinked_target(it.site);
        }
    }
    let accepted: Vec<bool> = bundles.iter().map(Option::is_some).collect();
    let collide = conflicts(items, &accepted);
    let collided: HashSet<usize> = collide.iter().map(|(i, _)| *i).collect();
    for (i, why) in collide {
        bundles[i] = None;
        outs[i].reject(why);
        // The config makes these bundles collide, not their bytes.
        outs[i].retry_because(Retryable::Busy);
    }
    clock.done("check", items.len());
    // The installed certificate again: a dry run does not probe.
    for i in (0..items.len()).filter(|&i| dry_run && same[i] && bundles[i].is_some()) {
        outs[i].warnings.push(
            "this is the certificate installed already; an install would only prove it is served"
                .into(),
        );
    }
    // A site a crash left half-changed may have rejected its bundle for
    // the half-done files: it is repaired first and judged again (the
    // retry of an interrupted install).
    let interrupted = || {
        items
            .iter()
            .any(|it| env.store.site(&it.site.store_key).has_open_change())
    };
    if dry_run || (bundles.iter().all(Option::is_none) && !interrupted()) {
        return Ok(outs);
    }

    let _lock = env.store.lock()?;

    // Repair what a crash left, then check again the sites a repair
    // changed: the installed files the bundle was compared with are back.
    let sites: Vec<&Site> = items.iter().map(|it| it.site).collect();
    let repaired = recover_for(env, &sites)?;
    for i in (0..items.len()).filter(|i| !collided.contains(i)) {
        let r = repaired.get(&items[i].site.store_key);
        if r.is_some_and(|r| *r != Recovery::Clean) {
            let c;
            (outs[i], c) = check_item(&items[i], force, trust);
            (bundles[i], same[i], on_disk[i]) = (c.bundle, c.same, c.on_disk);
            if bundles[i].is_none() {
                errs[i] = install::symlinked_target(items[i].site);
            }
        }
    }
    let accepted: Vec<usize> = (0..items.len()).filter(|&i| bundles[i].is_some()).collect();
    if accepted.is_empty() {
        return Ok(outs);
    }
    // The installed certificate again: settled when every endpoint serves
    // it (nothing staged, no reload); otherwise refused, unless --force
    // installs it again.
    let again: Vec<usize> = accepted.iter().copied().filter(|&i| same[i]).collect();
    let only_again = again.len() == accepted.len();
    if !again.is_empty() {
        let mut found = already_installed(env, items, &again, &bundles, &on_disk);
        // As below: when no endpoint of any site answers, the server is
        // down, and that is an error of the batch, not of its sites.
        if only_again
            && found
                .iter()
                .all(|r| matches!(r, Err(InstallError::NotServing { .. })))
            && let Some(Err(e)) = found.pop()
        {
            return Err(e);
        }
        for (i, r) in again.into_iter().zip(found) {
            match r {
                Ok(rows) => {
                    outs[i].served = rows;
                    outs[i].result = ResultKind::AlreadyInstalled;
                    bundles[i] = None;
                }
                Err(e) if force && !matches!(e, InstallError::NotServing { .. }) => outs[i]
                    .warnings
                    .push(format!("{e} — installing anyway because of --force")),
                Err(e) => {
                    outs[i].reject(e.to_string());
                    errs[i] = Some(e);
                    bundles[i] = None;
                }
            }
        }
    }
    let accepted: Vec<usize> = accepted
        .into_iter()
        .filter(|&i| bundles[i].is_some())
        .collect();
    clock.done("repair", accepted.len());

    let mut staging = Vec::new();
    for &i in &accepted {
        if let Some(bundle) = bundles[i].take() {
            let site = items[i].site;
            staging.push(Staging {
                idx: i,
                site,
                store: env.store.site(&site.store_key),
                op: Op::Install,
                new_sha: bundle.leaf.sha256.clone(),
                files: install::new_files(site, &bundle),
            });
        }
    }
    let run = Run3 {
        same: &same,
        on_disk: &on_disk,
        force,
        strict,
    };
    apply_staged(env, run, outs, errs, staging, clock)
}

/// `certswap rollback --site A --site B …`: put the newest saved version
/// of every site back as ONE batch — one config test, one reload, one
/// wait, and the sites that do not verify restored with one second reload
/// — each proven on its own. `sites` are stored sites (a dual site's pair
/// as [`install::pair_site`] gives it). One outcome per site, in order; a
/// site without a saved version, or two entries sharing a file, is
/// rejected with the reason. Err only for a failure of the host (lock,
/// repair, the server's pid file).
pub fn rollback_sites(env: &Env<'_>, sites: &[&Site]) -> Result<Vec<Outcome>, InstallError> {
    Ok(rollback_run(env, sites, false)?
        .into_iter()
        .map(|(out, _)| out)
        .collect())
}

/// `certswap rollback --site NAME` (or one pair of a dual site): a
/// rollback batch of one, with install's rule (a site without an earlier
/// version, or whose store fails, is the command's error, exit 2).
pub fn rollback_one(env: &Env<'_>, site: &Site) -> Result<Outcome, InstallError> {
    let mut runs = rollback_run(env, &[site], true)?;
    one(runs.pop())
}

/// [`rollback_sites`], keeping the environment error that refused a site
/// when `strict`.
fn rollback_run(env: &Env<'_>, sites: &[&Site], strict: bool) -> Result<Vec<Run>, InstallError> {
    let clock = Clock::start();
    let _lock = env.store.lock()?;
    recover_for(env, sites)?;
    let items: Vec<Item<'_>> = sites
        .iter()
        .map(|site| Item {
            site,
            files: Files {
                cert: site.cert.clone(),
                key: None,
                chain: None,
            },
        })
        .collect();
    let mut outs: Vec<Outcome> = sites.iter().map(|s| Outcome::new(&s.name)).collect();
    let mut errs: Vec<Option<InstallError>> = sites.iter().map(|_| None).collect();
    let mut saved = Vec::with_capacity(sites.len());
    for (i, site) in sites.iter().enumerate() {
        let store = env.store.site(&site.store_key);
        saved.push(match install::saved_version(site, &store, &mut outs[i]) {
            Ok(found) => found.map(|f| (store, f)),
            Err(e) => {
                outs[i].reject(e.to_string());
                errs[i] = Some(e);
                None
            }
        });
    }
    let accepted: Vec<bool> = saved.iter().map(Option::is_some).collect();
    for (i, why) in conflicts(&items, &accepted) {
        saved[i] = None;
        outs[i].reject(why);
    }
    let mut staging = Vec::new();
    for (i, found) in saved.into_iter().enumerate() {
        if let Some((store, (op, files, new_sha))) = found {
            staging.push(Staging {
                idx: i,
                site: sites[i],
                store,
                op,
                new_sha,
                files,
            });
        }
    }
    if !staging.is_empty() {
        // No preflight truth check: the site's file is what goes away.
        let n = sites.len();
        let (same, on_disk) = (vec![false; n], vec![None; n]);
        let run = Run3 {
            same: &same,
            on_disk: &on_disk,
            force: false,
            strict,
        };
        outs = apply_staged(env, run, outs, &mut errs, staging, clock)?;
    }
    Ok(outs
        .into_iter()
        .zip(errs)
        .map(|(out, e)| (out, e.filter(|_| strict)))
        .collect())
}

/// Repair every open change on the host before a run touches `sites`
/// ([`recover_host`]), and the sites of the run the host-wide pass could
/// not list (a pair whose files cannot be read now). What was done, by
/// store key.
fn recover_for(env: &Env<'_>, sites: &[&Site]) -> Result<HashMap<String, Recovery>, InstallError> {
    let mut found = recover_host(env)?;
    let rest: Vec<&Site> = sites
        .iter()
        .copied()
        .filter(|s| !found.contains_key(&s.store_key))
        .collect();
    if !rest.is_empty() {
        let done = recover_sites(env, &rest)?;
        found.extend(rest.iter().map(|s| s.store_key.clone()).zip(done));
    }
    Ok(found)
}

/// What steps 3–8 of a batch need besides the sites: per outcome index
/// whether the bundle is the installed certificate and what the site's
/// file holds (the preflight truth check).
struct Run3<'r> {
    same: &'r [bool],
    on_disk: &'r [Option<install::OnDisk>],
    force: bool,
    /// Install's rule: see [`install_each`].
    strict: bool,
}

/// Steps 3–8 for every staged site, the server steps once for all of
/// them (install and rollback alike: the module docs).
fn apply_staged(
    env: &Env<'_>,
    run: Run3<'_>,
    mut outs: Vec<Outcome>,
    errs: &mut [Option<InstallError>],
    mut staging: Vec<Staging<'_>>,
    mut clock: Clock,
) -> Result<Vec<Outcome>, InstallError> {
    let Run3 {
        same,
        on_disk,
        force,
        strict,
    } = run;
    // 3. stage every site (I/O threads).
    // ONE bulk probe of what every endpoint serves now, the proof target
    // of a rollback, runs alongside the stage's syncs and the config test:
    // the server reads the new files only at the reload, and the
    // handshakes use the CPU that the syncs and the config test (one core)
    // leave.
    // With install's rule (`strict`) the probe ends before staging, and a
    // site it refuses is refused before any of its files moves.
    let mut judged: HashMap<usize, Before> = HashMap::new();
    if strict {
        let mut probed = BeforeProbe::plan(env, &staging).results();
        let mut kept = Vec::with_capacity(staging.len());
        let mut silent = None;
        let mut answered = answered_already(&outs);
        for st in staging {
            let mine = probed.remove(&st.idx).unwrap_or_default();
            let (same, on_disk) = (same[st.idx], on_disk[st.idx].as_ref());
            match judge_before(st.site, mine, same, on_disk, force, &mut outs[st.idx]) {
                Ok(before) => {
                    answered = true;
                    judged.insert(st.idx, before);
                    kept.push(st);
                }
                Err(e) => {
                    outs[st.idx].reject(e.to_string());
                    outs[st.idx].retry_because(Retryable::Endpoint);
                    match e {
                        // The one rule for a site that does not answer:
                        // rejected, as in any batch (module docs).
                        InstallError::NotServing { .. } => {
                            silent.get_or_insert(e);
                        }
                        e => {
                            answered = true;
                            errs[st.idx] = Some(e);
                        }
                    }
                }
            }
        }
        if let Some(e) = silent
            && !answered
        {
            return Err(e);
        }
        staging = kept;
    }
    // The one reload must reach the proven server: checked before any
    // site is staged.
    if !staging.is_empty() {
        env.server.preflight().map_err(InstallError::Server)?;
    }
    // It starts once the staged files are written: the writes are work of
    // the cores (inode allocation, directory locks) that the handshakes
    // would slow; the syncs after them and the config test (one core)
    // leave room (docs/performance.md).
    let mut before_probe = (!strict).then(|| BeforeProbe::plan(env, &staging));
    let staged = stage_all(staging, || {
        if let Some(p) = before_probe.as_mut() {
            p.start();
        }
    });
    clock.done("stage", staged.len());

    let mut batch = Batch {
        env,
        outs,
        open: Vec::new(),
        restored: Vec::new(),
    };
    let mut to_swap = Vec::new();
    for st in staged {
        let out = &mut batch.outs[st.idx];
        out.timings_ms.swap = st.ms;
        match st.txn {
            Err(why) => {
                out.reject(format!(
                    "before changing anything: {why}; nothing was changed"
                ));
                out.retry_because(Retryable::Disk);
                errs[st.idx] = Some(InstallError::Store(why));
            }
            Ok(txn) => to_swap.push((
                Open {
                    idx: st.idx,
                    site: st.site,
                    store: st.store,
                    new_sha: st.new_sha,
                    before: Vec::new(),
                },
                txn,
            )),
        }
    }

    // 4. swap every site, then fsync each directory once: the targets of
    //    a host's sites share a few directories.
    let mut failed = Vec::new();
    let mut dirs = Vec::new();
    let swapped = par::map(to_swap, IO_THREADS, |(open, mut txn)| {
        let t = Instant::now();
        let r = txn.swap_unsynced();
        (open, txn, ms(t), r)
    });
    for (open, txn, t, r) in swapped {
        batch.outs[open.idx].timings_ms.swap += t;
        match r {
            Ok(d) => {
                dirs.extend(d);
                batch.open.push((open, txn));
            }
            Err(e) => failed.push((open, txn, e.to_string())),
        }
    }
    // fsync_dirs fsyncs each distinct directory once.
    if let Err(e) = store::fsync_dirs(&dirs) {
        // Not durable: no site may go on to a reload it could lose.
        batch.each_open(|o| o.retry_because(Retryable::Disk));
        batch.restore_open(&e.to_string(), false);
    }
    failpoint::hit("after-swap");
    for (o, _, _) in &failed {
        batch.outs[o.idx].retry_because(Retryable::Disk);
    }
    batch.restore(failed, false);
    clock.done("swap", batch.open.len());
    if batch.open.is_empty() {
        return Ok(batch.finish());
    }

    // 5. ONE config test (the bulk probe of what is served still runs).
    let t = Instant::now();
    let tested = service::configtest(env.server);
    batch.each_open(|o| o.timings_ms.configtest = ms(t));
    clock.done("configtest", batch.open.len());
    let mut probed = before_probe.map(BeforeProbe::results).unwrap_or_default();
    clock.done("probe-before", batch.open.len());

    // A site whose endpoint does not answer gets its old files back before
    // the server ever loads the new ones: refused, nothing changed. When
    // no site answers at all the server is down: an error.
    // A site whose endpoint serves a leaf its file does not hold is refused
    // the same way (preflight truth), unless --force.
    let mut refused = Vec::new();
    let mut first_refusal = None;
    let mut answered = answered_already(&batch.outs);
    for (mut open, txn) in std::mem::take(&mut batch.open) {
        // Judged before staging already (`strict`).
        if let Some(before) = judged.remove(&open.idx) {
            answered = true;
            open.before = before;
            batch.open.push((open, txn));
            continue;
        }
        let mine = probed.remove(&open.idx).unwrap_or_default();
        let (same, on_disk) = (same[open.idx], on_disk[open.idx].as_ref());
        match judge_before(
            open.site,
            mine,
            same,
            on_disk,
            force,
            &mut batch.outs[open.idx],
        ) {
            Ok(before) => {
                answered = true;
                open.before = before;
                batch.open.push((open, txn));
            }
            Err(e @ InstallError::NotServing { .. }) => {
                refused.push((open, txn, e.to_string()));
                first_refusal.get_or_insert(e);
            }
            Err(e) => {
                answered = true;
                refused.push((open, txn, e.to_string()));
            }
        }
    }
    let put_back = !refused.is_empty();
    let aborted = par::map(refused, IO_THREADS, |(open, txn, why)| {
        let r = txn.abort();
        (open, why, r)
    });
    for (open, why, r) in aborted {
        let out = &mut batch.outs[open.idx];
        out.reject(why);
        out.retry_because(Retryable::Endpoint);
        if let Err(e) = r {
            add_problem(
                out,
                format!(
                    "putting the old files back failed: {e}; the next certswap command repairs it"
                ),
            );
        }
    }
    if let Some(e) = first_refusal
        && batch.open.is_empty()
        && !answered
    {
        return Err(e);
    }
    if batch.open.is_empty() {
        // Every site was refused and has its old files back: no reload.
        return Ok(batch.finish());
    }
    if let Err(e) = tested {
        batch.each_open(|o| o.retry_because(Retryable::ConfigTest));
        batch.restore_open(&e.to_string(), false);
        return Ok(batch.finish());
    }
    if put_back {
        // Files changed since the test: no reload without a passing test
        // of exactly what it loads (invariant 4).
        if let Err(e) = service::configtest(env.server) {
            batch.each_open(|o| o.retry_because(Retryable::ConfigTest));
            batch.restore_open(&e.to_string(), false);
            return Ok(batch.finish());
        }
    }
    failpoint::hit("after-configtest");

    // 6. ONE reload (haproxy: the in-memory update of the changed files,
    //    `WebServer::apply`). From the swap on, new files are in place, so
    //    recovery reloads after a crash (src/store/mod.rs).
    let t = Instant::now();
    let changed: Vec<&Site> = batch.open.iter().map(|(o, _)| o.site).collect();
    let reloaded = service::load_new(env.server, &changed);
    batch.each_open(|o| o.timings_ms.reload = ms(t));
    clock.done("reload", batch.open.len());
    if let Err(e) = reloaded {
        // A failed signal may still have reached the server (apache can
        // die on it): restore, then test, reload or start, prove.
        batch.each_open(|o| o.retry_because(Retryable::Reload));
        batch.restore_open(&e.to_string(), true);
        return Ok(batch.finish());
    }
    failpoint::hit("after-reload");
    // The versions beyond keep that earlier batches left go while the
    // server loads its new config (store::commit_all keeps one more).
    let pruning = store::Pruning::start(
        batch.open.iter().map(|(o, _)| o.store.clone()).collect(),
        store::KEEP_VERSIONS,
        IO_THREADS,
    );

    // 7. ONE wait over every endpoint of every site (invariant 5).
    let waits: Vec<Wait> = batch
        .open
        .iter()
        .map(|(o, _)| Wait {
            targets: o.site.endpoints.clone(),
            sha: o.new_sha.clone(),
            prober: env.prober_for(o.site).clone(),
        })
        .collect();
    let waited = wait_all(env.server, &env.config.probe, &waits, true);
    clock.done("wait", waits.len());
    let pruned = pruning.join();

    // 8. commit the sites that verified; restore the others. (Committing
    //    each site while the wait goes on was measured slower: the commits'
    //    fsyncs cost CPU that the handshakes need, docs/performance.md.)
    let mut verified = Vec::new();
    let mut unverified = Vec::new();
    for ((open, txn), w) in std::mem::take(&mut batch.open).into_iter().zip(waited) {
        let out = &mut batch.outs[open.idx];
        out.timings_ms.probe = w.ms;
        out.served = w.waited.rows;
        // Served, and not worse for visitors than before: an endpoint
        // whose old chain clients accepted must not end up with one they
        // reject.
        let failure = w
            .waited
            .failure
            .or_else(|| got_worse(&open.before, &out.served));
        match failure {
            None => verified.push((open, txn)),
            Some(why) => unverified.push((open, txn, why)),
        }
    }
    // One sync for all the commit points (store::commit_all).
    let (opens, txns): (Vec<_>, Vec<_>) = verified.into_iter().unzip();
    let committed = opens.into_iter().zip(store::commit_all(
        txns,
        store::KEEP_VERSIONS,
        IO_THREADS,
        &pruned,
    ));
    // A failed commit (the commit point allocates nothing, so not for want
    // of space): past the commit point the site stands; before it, its new
    // files join the restore and its old leaf is proven like any other
    // unverified site (exit 3), never left for a later command to undo.
    for (open, r) in committed {
        let out = &mut batch.outs[open.idx];
        match r {
            Ok(()) => out.result = ResultKind::Verified,
            Err(store::CommitFailed { error, open: None }) => {
                out.result = ResultKind::Verified;
                out.warnings.push(format!(
                    "the new certificate is served and the change is committed, but finishing it failed ({error}); the next certswap command finishes it"
                ));
            }
            Err(store::CommitFailed {
                error,
                open: Some(txn),
            }) => {
                // The disk, not the bundle: the same bytes may pass later.
                out.retry_because(Retryable::Disk);
                unverified.push((
                open,
                *txn,
                format!(
                    "the new certificate was served, but the change could not be committed ({error}), so it is rolled back"
                ),
                ))
            }
        }
    }
    clock.done("commit", batch.outs.len());
    batch.restore(unverified, true);
    Ok(batch.finish())
}

/// A site of the run was proven serving its certificate already: the
/// server answers, so a silent endpoint is that site's refusal, not the
/// run's error.
fn answered_already(outs: &[Outcome]) -> bool {
    outs.iter()
        .any(|o| o.result == ResultKind::AlreadyInstalled)
}

/// What each endpoint of a site served before the change, with the
/// verdict on it (the proof target of a rollback, and what the served
/// chain must not get worse than).
type Before = Vec<(Target, ServedRow)>;

/// A site whose files are being changed.
struct Open<'a> {
    /// Its outcome in [`Batch::outs`].
    idx: usize,
    site: &'a Site,
    store: SiteStore,
    new_sha: String,
    /// What a rollback must prove.
    before: Before,
}

/// A site about to be staged.
struct Staging<'a> {
    idx: usize,
    site: &'a Site,
    store: SiteStore,
    /// Install, or back to a saved version.
    op: Op,
    new_sha: String,
    files: Vec<NewFile>,
}

/// A site after step 3: its open change, or why staging failed (then no
/// target was touched).
struct Staged<'a> {
    idx: usize,
    site: &'a Site,
    store: SiteStore,
    new_sha: String,
    ms: u64,
    txn: Result<Txn, StoreError>,
}

/// Step 3 for one site (any thread: touches only its own files).
fn stage(s: Staging<'_>) -> Staged<'_> {
    let t = Instant::now();
    let txn = match s.site.mode {
        Mode::InPlace => s.store.begin(s.op, s.files),
        Mode::Managed => s
            .store
            .begin_managed(s.op, s.files, &install::site_targets(s.site)),
    };
    Staged {
        idx: s.idx,
        site: s.site,
        store: s.store,
        new_sha: s.new_sha,
        ms: ms(t),
        txn,
    }
}

/// Step 3 for every site: the in-place ones through the store's bulk
/// stage (one sync per filesystem for all of them, [`store::begin_all`]),
/// managed ones each on its own ([`stage`]). In input order. `written`
/// runs once every file is written, before the in-place sites' syncs.
fn stage_all<'a>(staging: Vec<Staging<'a>>, written: impl FnOnce()) -> Vec<Staged<'a>> {
    let t = Instant::now();
    let (in_place, managed): (Vec<_>, Vec<_>) = staging
        .into_iter()
        .partition(|s| matches!(s.site.mode, Mode::InPlace));
    let mut staged = par::map(managed, IO_THREADS, stage);
    let mut sites = Vec::with_capacity(in_place.len());
    let mut changes = Vec::with_capacity(in_place.len());
    for s in in_place {
        changes.push(store::Change {
            store: s.store.clone(),
            op: s.op,
            files: s.files,
        });
        sites.push((s.idx, s.site, s.store, s.new_sha));
    }
    let txns = store::begin_all(changes, IO_THREADS, written);
    let ms = ms(t);
    staged.extend(
        sites
            .into_iter()
            .zip(txns)
            .map(|((idx, site, store, new_sha), txn)| Staged {
                idx,
                site,
                store,
                new_sha,
                ms,
                txn,
            }),
    );
    staged.sort_by_key(|s| s.idx);
    staged
}

/// The state of one batch from the first swap on.
struct Batch<'e, 'a> {
    env: &'e Env<'e>,
    outs: Vec<Outcome>,
    open: Vec<(Open<'a>, Txn)>,
    /// Sites whose old files are back, by outcome index, for the proof.
    restored: Vec<(usize, recover::Restored)>,
}

impl Batch<'_, '_> {
    fn each_open(&mut self, mut f: impl FnMut(&mut Outcome)) {
        for (o, _) in &self.open {
            f(&mut self.outs[o.idx]);
        }
    }

    /// Restore every open site with one reason.
    fn restore_open(&mut self, why: &str, after_reload: bool) {
        let open = std::mem::take(&mut self.open);
        let failed = open
            .into_iter()
            .map(|(o, txn)| (o, txn, why.to_string()))
            .collect();
        self.restore(failed, after_reload);
    }

    /// Put the old files of each site back (in parallel); each outcome
    /// ends rolled back with its reason. The proof comes in [`Batch::finish`].
    fn restore(&mut self, failed: Vec<(Open<'_>, Txn, String)>, after_reload: bool) {
        let aborted = par::map(failed, IO_THREADS, |(o, txn, why)| {
            let r = recover::put_back(txn, after_reload);
            (o, why, r)
        });
        for (o, why, r) in aborted {
            let out = &mut self.outs[o.idx];
            out.result = ResultKind::RolledBack;
            add_problem(out, why);
            match r {
                Ok(()) => self.restored.push((
                    o.idx,
                    recover::Restored {
                        site: o.site.clone(),
                        store: o.store,
                        reloaded: after_reload,
                        proof: o
                            .before
                            .iter()
                            .map(|(t, row)| (t.clone(), row.sha256.clone().unwrap_or_default()))
                            .collect(),
                        prober: self.env.prober_for(o.site).clone(),
                    },
                )),
                Err(e) => add_problem(out, format!("RESTORING THE OLD FILES FAILED: {e}")),
            }
        }
    }

    /// Recovery of every restored site ([`recover::settle`]): ONE restore
    /// of service if a site needs it, then ONE wait proving every old leaf
    /// is served again (invariant 6).
    fn finish(mut self) -> Vec<Outcome> {
        if self.restored.is_empty() {
            return self.outs;
        }
        let mut clock = Clock::start();
        let (idx, restored): (Vec<usize>, Vec<recover::Restored>) =
            std::mem::take(&mut self.restored).into_iter().unzip();
        // After a failed change, a failed restore of service is told in
        // each outcome: settle goes on to the proof.
        let settled = match recover::settle(self.env, &restored, recover::When::FailedChange) {
            Ok(s) => s,
            Err(e) => {
                for &i in &idx {
                    add_problem(&mut self.outs[i], e.to_string());
                }
                return self.outs;
            }
        };
        for (i, s) in idx.iter().zip(settled) {
            let out = &mut self.outs[*i];
            out.served = s.rows;
            for p in s.problems {
                add_problem(out, p);
            }
            if s.proven {
                // Say it: the operator reading this wants to know the site is fine.
                add_problem(
                    out,
                    "the old certificate is served again (proven by fresh handshakes)".into(),
                );
            }
        }
        clock.done("rollback", idx.len());
        self.outs
    }
}

/// Why the new served chain is worse than the old one for some endpoint:
/// it was trusted, complete and valid for its name, and now is not.
fn got_worse(before: &[(Target, ServedRow)], after: &[ServedRow]) -> Option<String> {
    for (t, old) in before {
        let Some(new) = after
            .iter()
            .find(|r| r.endpoint == t.addr && r.sni == t.sni)
        else {
            continue;
        };
        if old.acceptable() && !new.acceptable() {
            let why = match (&new.trust_error, new.chain_complete, new.names_ok) {
                (_, Some(false), _) => {
                    "its chain is incomplete (an intermediate is missing)".to_string()
                }
                (_, _, Some(false)) => format!("it is not valid for {}", t.sni),
                (Some(e), _, _) => e.clone(),
                _ => "clients would not trust it".to_string(),
            };
            return Some(format!(
                "{t} now serves the new certificate, but clients would reject it where they accepted the old one: {why}"
            ));
        }
    }
    None
}

/// Steps 1–2 for one item, with the trust rule of `certswap install`.
fn check_item(it: &Item<'_>, force: bool, trust: &TrustStore) -> (Outcome, install::Checked) {
    let mut out = Outcome::new(&it.site.name);
    let checked = install::check_full(Some(it.site), &it.files, force, Some(trust), &mut out);
    (out, checked)
}

/// For the items `idx` whose bundle is their site's installed certificate:
/// is it served? As in [`install::served_as_installed`] — one handshake per
/// endpoint (all at once), then `consecutive` in a row (one concurrent
/// wait) — with the rows of the last handshakes, or why not.
fn already_installed(
    env: &Env<'_>,
    items: &[Item<'_>],
    idx: &[usize],
    bundles: &[Option<Bundle>],
    on_disk: &[Option<install::OnDisk>],
) -> Vec<Result<Vec<ServedRow>, InstallError>> {
    let jobs: Vec<(probe::Prober, Target)> = idx
        .iter()
        .flat_map(|&i| {
            let site = items[i].site;
            let prober = env.prober_for(site);
            site.endpoints.iter().map(|t| (prober.clone(), t.clone()))
        })
        .collect();
    let mut first = crate::engines::probe_each(&jobs, PROBE_CONCURRENCY).into_iter();
    let mut found: Vec<Option<Result<Vec<ServedRow>, InstallError>>> = Vec::new();
    let mut waits = Vec::new();
    let mut waiting = Vec::new();
    for &i in idx {
        let site = items[i].site;
        let looked: Vec<_> = site.endpoints.iter().zip(first.by_ref()).collect();
        let silent = looked.iter().find_map(|(t, r)| {
            r.as_ref().err().map(|e| InstallError::NotServing {
                target: t.to_string(),
                reason: e.to_string(),
            })
        });
        let rows: Vec<ServedRow> = looked.iter().map(|(t, r)| ServedRow::of(t, r)).collect();
        match (silent, bundles[i].as_ref()) {
            (Some(e), _) => found.push(Some(Err(e))),
            (None, None) => found.push(Some(Err(not_proven(site, "no bundle".into())))),
            (None, Some(b)) => match install::served_is_not_on_disk(on_disk[i].as_ref(), &rows) {
                Some(e) => found.push(Some(Err(e))),
                None => {
                    waiting.push(found.len());
                    found.push(None);
                    waits.push(Wait {
                        targets: site.endpoints.clone(),
                        sha: b.leaf.sha256.clone(),
                        prober: env.prober_for(site).clone(),
                    });
                }
            },
        }
    }
    for (k, w) in waiting
        .into_iter()
        .zip(wait_all(env.server, &env.config.probe, &waits, false))
    {
        let i = idx[k];
        found[k] = Some(match w.waited.failure {
            None => Ok(w.waited.rows),
            Some(reason) => Err(install::served_is_not_on_disk(
                on_disk[i].as_ref(),
                &w.waited.rows,
            )
            .unwrap_or_else(|| not_proven(items[i].site, reason))),
        });
    }
    found
        .into_iter()
        .zip(idx)
        .map(|(r, &i)| {
            r.unwrap_or_else(|| Err(not_proven(items[i].site, "the wait was cancelled".into())))
        })
        .collect()
}

fn not_proven(site: &Site, reason: String) -> InstallError {
    InstallError::NotProvenServed {
        site: site.name.clone(),
        reason,
    }
}

/// What a batch cannot do safely, as (item, why) refusals: two bundles
/// for one site (which one is meant?), and two sites that share a file
/// (one swap would undo the other; invariant 2). `accepted[i]`: item `i`
/// passed its checks.
fn conflicts(items: &[Item<'_>], accepted: &[bool]) -> Vec<(usize, String)> {
    let mut per_site: HashMap<&str, usize> = HashMap::new();
    for it in items {
        *per_site.entry(it.site.name.as_str()).or_default() += 1;
    }
    let mut refused = Vec::new();
    let mut owner: HashMap<PathBuf, &str> = HashMap::new();
    for (i, it) in items.iter().enumerate() {
        let n = per_site[it.site.name.as_str()];
        if n > 1 {
            refused.push((
                i,
                format!(
                    "{n} bundles for {} in one batch ({}); which one is meant is unclear, so none is installed",
                    it.site.name,
                    it.files.cert.display()
                ),
            ));
            continue;
        }
        if !accepted[i] {
            continue;
        }
        let targets = install::site_targets(it.site);
        if let Some((path, other)) = targets
            .iter()
            .find_map(|(_, p)| owner.get(p).map(|o| (p, *o)))
        {
            refused.push((
                i,
                format!(
                    "{} is also a file of site {other} in this batch; install them one at a time",
                    path.display()
                ),
            ));
            continue;
        }
        for (_, path) in targets {
            owner.insert(path, &it.site.name);
        }
    }
    refused
}

/// The bulk probe of what every endpoint of the staged sites serves before
/// the change, on its own thread. Dropped without [`BeforeProbe::results`]
/// (a batch that ends early), it still waits for the thread: no handshake
/// outlives the batch.
struct BeforeProbe {
    /// (site's outcome index, endpoint), in probe order.
    targets: Vec<(usize, Target)>,
    /// The handshakes to make, until [`BeforeProbe::start`].
    jobs: Vec<(probe::Prober, Target)>,
    thread: Option<std::thread::JoinHandle<Vec<Result<probe::Served, probe::ProbeError>>>>,
    /// The thread's priority: lowest while the stage's syncs, the swap and
    /// the config test run beside it, normal once the batch waits for it.
    priority: Arc<Background>,
}

type Probed = HashMap<usize, Vec<(Target, Result<probe::Served, probe::ProbeError>)>>;

impl BeforeProbe {
    /// The probe of the endpoints of `staging`, not started yet.
    fn plan(env: &Env<'_>, staging: &[Staging<'_>]) -> BeforeProbe {
        let targets: Vec<(usize, Target)> = staging
            .iter()
            .flat_map(|s| s.site.endpoints.iter().map(move |t| (s.idx, t.clone())))
            .collect();
        let jobs: Vec<(probe::Prober, Target)> = staging
            .iter()
            .flat_map(|s| {
                let prober = env.prober_for(s.site);
                s.site.endpoints.iter().map(|t| (prober.clone(), t.clone()))
            })
            .collect();
        BeforeProbe {
            targets,
            jobs,
            thread: None,
            priority: Arc::default(),
        }
    }

    /// Start the handshakes on their own thread (once), at the lowest
    /// priority until [`BeforeProbe::results`]: the config test beside
    /// them is the critical path (crate::priority).
    fn start(&mut self) {
        if self.thread.is_some() {
            return;
        }
        let jobs = std::mem::take(&mut self.jobs);
        let priority = self.priority.clone();
        self.thread = Some(std::thread::spawn(move || {
            priority.lower();
            probe::block_on(probe::peek_each(&jobs, PROBE_CONCURRENCY))
        }));
    }

    /// What each site's endpoints served, by outcome index.
    fn results(mut self) -> Probed {
        self.priority.restore();
        self.start();
        let results = self.join();
        let mut per_site: Probed = HashMap::new();
        for ((idx, t), r) in std::mem::take(&mut self.targets).into_iter().zip(results) {
            per_site.entry(idx).or_default().push((t, r));
        }
        per_site
    }

    fn join(&mut self) -> Vec<Result<probe::Served, probe::ProbeError>> {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => Vec::new(),
        }
    }
}

impl Drop for BeforeProbe {
    fn drop(&mut self) {
        // The batch now waits for it: no longer background work.
        self.priority.restore();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Step 5's judgment of one site on what its endpoints served before the
/// change: what a rollback must prove; or the refusal — an endpoint that
/// does not answer, or (preflight truth, unless --force, then a warning in
/// `out`) one serving a leaf the site's file does not hold. `same`: the
/// bundle is the installed certificate, already found not served and
/// forced through.
fn judge_before(
    site: &Site,
    probed: Vec<(Target, Result<probe::Served, probe::ProbeError>)>,
    same: bool,
    on_disk: Option<&install::OnDisk>,
    force: bool,
    out: &mut Outcome,
) -> Result<Before, InstallError> {
    let before = before_of(site, &mut probed.into_iter())?;
    let rows: Vec<ServedRow> = before.iter().map(|(_, r)| r.clone()).collect();
    let untrue = match same {
        true => None,
        false => install::served_is_not_on_disk(on_disk, &rows),
    };
    match untrue {
        Some(e) if !force => Err(e),
        Some(e) => {
            out.warnings
                .push(format!("{e} — installing anyway because of --force"));
            Ok(before)
        }
        None => Ok(before),
    }
}

/// What the endpoints of `site` served, taken from the bulk probe's
/// results (in the order of the sites' endpoints); the first endpoint that
/// did not answer refuses the site.
fn before_of(
    site: &Site,
    probed: &mut impl Iterator<Item = (Target, Result<probe::Served, probe::ProbeError>)>,
) -> Result<Before, InstallError> {
    let mut before = Vec::new();
    let mut refused = None;
    for _ in &site.endpoints {
        let Some((t, r)) = probed.next() else { break };
        match &r {
            Ok(_) => before.push((t.clone(), ServedRow::of(&t, &r))),
            Err(e) => {
                refused.get_or_insert(InstallError::NotServing {
                    target: t.to_string(),
                    reason: e.to_string(),
                });
            }
        }
    }
    match refused {
        None => Ok(before),
        Some(e) => Err(e),
    }
}

/// The bundles in `dir`: items for configured sites, and rejected outcomes
/// for files that name no site or do not make a bundle.
fn scan_dir<'c>(
    config: &'c Config,
    dir: &Path,
) -> Result<(Vec<Item<'c>>, Vec<Outcome>), InstallError> {
    #[derive(Default)]
    struct Found {
        certs: Vec<PathBuf>,
        key: Option<PathBuf>,
        chain: Option<PathBuf>,
    }
    let io = |source| {
        InstallError::Store(StoreError::Io {
            path: dir.to_path_buf(),
            action: "list the bundles in the batch directory",
            source,
        })
    };
    let mut found: BTreeMap<String, Found> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            tracing::warn!("{}: not UTF-8, ignored", path.display());
            continue;
        };
        // Follows symlinks (certbot's live/ is all links); skips dirs.
        if name.starts_with('.') || !path.is_file() {
            continue;
        }
        let (stem, slot) = if let Some(s) = name.strip_suffix("_chain.crt") {
            (s, 2)
        } else if let Some(s) = name.strip_suffix("_public.crt") {
            (s, 0)
        } else if let Some(s) = name.strip_suffix(".pem") {
            (s, 0)
        } else if let Some(s) = name.strip_suffix(".key") {
            (s, 1)
        } else {
            tracing::debug!("{}: not a bundle file name, ignored", path.display());
            continue;
        };
        let f = found.entry(stem.to_string()).or_default();
        match slot {
            0 => f.certs.push(path),
            1 => f.key = Some(path),
            _ => f.chain = Some(path),
        }
    }

    let mut items = Vec::new();
    let mut rejected = Vec::new();
    for (stem, f) in found {
        let mut reject = |why: String| {
            let mut out = Outcome::new(&stem);
            out.reject(why);
            rejected.push(out);
        };
        let all: Vec<String> = f
            .certs
            .iter()
            .chain(&f.key)
            .chain(&f.chain)
            .map(|p| p.display().to_string())
            .collect();
        // The one matcher: the stem names the site, or the certificate's
        // names cover it (read only when the stem names none).
        let leaf = || match f.certs.as_slice() {
            [cert] => crate::bundle::read_leaf(cert).ok(),
            _ => None,
        };
        let site = match matcher::by_stem(config, &stem) {
            Some(site) => Ok(site),
            None => matcher::one(config, Hint::Stems(&[stem.as_str()]), leaf().as_ref()),
        };
        let site = match site {
            Ok(site) => site,
            Err(e @ MatchError::Several { .. }) => {
                reject(format!(
                    "{}: {e}; nothing was changed for it",
                    all.join(", ")
                ));
                continue;
            }
            Err(_) => {
                reject(format!(
                    "{}: `{stem}` is not a site of {}; nothing was changed for it",
                    all.join(", "),
                    config.path.display()
                ));
                continue;
            }
        };
        match f.certs.as_slice() {
            [cert] => items.push(Item {
                site,
                files: Files {
                    cert: cert.clone(),
                    key: f.key,
                    chain: f.chain,
                },
            }),
            [] => reject(format!(
                "{}: there is no {stem}.pem beside it, so there is nothing to install for {}",
                all.join(", "),
                site.name
            )),
            _ => reject(format!(
                "{}: two certificates for {}; keep one",
                all.join(", "),
                site.name
            )),
        }
    }
    Ok((items, rejected))
}

fn add_problem(out: &mut Outcome, why: String) {
    out.error = Some(match out.error.take() {
        Some(e) => format!("{e}; {why}"),
        None => why,
    });
}

/// Wall time per phase of a batch, logged at info level (`-v`) for
/// operators and `scripts/bench`: `batch phase phase=wait ms=1834 sites=1000`.
struct Clock(Instant);

impl Clock {
    fn start() -> Clock {
        Clock(Instant::now())
    }

    fn done(&mut self, phase: &str, sites: usize) {
        tracing::info!(phase = %phase, ms = ms(self.0), sites, "batch phase");
        self.0 = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> Config {
        let ssl = dir.join("ssl");
        let mut t = format!(
            "state_dir = \"{}\"\n[server]\nkind = \"nginx\"\n",
            dir.join("state").display()
        );
        for name in ["a.test", "b.test", "c.test", "*.w.test", "shares.test"] {
            let file = name.replace('*', "_wildcard_");
            // shares.test uses a.test's key file: a conflict in one batch.
            let key = if name == "shares.test" {
                "a.test"
            } else {
                &file
            };
            let sni = name.replace('*', "x");
            t.push_str(&format!(
                "[[site]]\nname = \"{name}\"\ncert = \"{}\"\nkey = \"{}\"\nendpoints = [\"{sni}@127.0.0.1:443\"]\n",
                ssl.join(format!("{file}.pem")).display(),
                ssl.join(format!("{key}.key")).display(),
            ));
        }
        Config::parse(&t, &dir.join("certswap.toml")).expect("test config parses")
    }

    fn touch(dir: &Path, names: &[&str]) {
        for n in names {
            std::fs::write(dir.join(n), b"x").expect("write");
        }
    }

    #[test]
    fn scan_dir_pairs_files_by_site_and_rejects_strays() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cfg = config(tmp.path());
        let inbox = tmp.path().join("inbox");
        std::fs::create_dir_all(inbox.join("sub.pem")).expect("mkdir");
        touch(
            &inbox,
            &[
                "a.test.pem",
                "a.test.key",
                "b.test_public.crt",
                "b.test_chain.crt",
                "c.test.key",
                "_wildcard_.w.test.pem",
                "nosuch.test.pem",
                "README.txt",
                ".hidden.pem",
            ],
        );
        let (items, rejected) = scan_dir(&cfg, &inbox).expect("scan");
        let got: Vec<(&str, String, bool, bool)> = items
            .iter()
            .map(|it| {
                (
                    it.site.name.as_str(),
                    it.files
                        .cert
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    it.files.key.is_some(),
                    it.files.chain.is_some(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "*.w.test",
                    "_wildcard_.w.test.pem".to_string(),
                    false,
                    false
                ),
                ("a.test", "a.test.pem".to_string(), true, false),
                ("b.test", "b.test_public.crt".to_string(), false, true),
            ]
        );
        let why: BTreeMap<&str, &str> = rejected
            .iter()
            .map(|o| (o.site.as_str(), o.error.as_deref().unwrap_or_default()))
            .collect();
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(why["c.test"].contains("no c.test.pem beside it"), "{why:?}");
        assert!(why["nosuch.test"].contains("nosuch.test.pem"), "{why:?}");
        assert!(why["nosuch.test"].contains("is not a site of"), "{why:?}");
        assert!(rejected.iter().all(|o| o.result == ResultKind::Rejected));
    }

    #[test]
    fn scan_dir_maps_a_bundle_to_the_site_the_inbox_would() {
        use crate::cert::testpki;
        let tmp = tempfile::tempdir().expect("tempdir");
        let cfg = config(tmp.path());
        let dir = tmp.path().join("batch");
        std::fs::create_dir_all(&dir).expect("mkdir");
        // A vendor's file name, and certbot's name with a b.test leaf in it.
        touch(&dir, &["12345_a.test_nginx.pem", "STAR_w_test.pem"]);
        let ca = testpki::root("scan root");
        let leaf = testpki::sign_leaf(&testpki::leaf_params(&["b.test"]), &testpki::p256(), &ca);
        std::fs::write(dir.join("fullchain.pem"), leaf.to_pem()).expect("write");
        let two = testpki::sign_leaf(
            &testpki::leaf_params(&["a.test", "c.test"]),
            &testpki::p256(),
            &ca,
        );
        std::fs::write(dir.join("cert.pem"), two.to_pem()).expect("write");
        let (items, rejected) = scan_dir(&cfg, &dir).expect("scan");
        let mut got: Vec<(&str, String)> = items
            .iter()
            .map(|it| {
                let file = it
                    .files
                    .cert
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned());
                (it.site.name.as_str(), file.unwrap_or_default())
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("*.w.test", "STAR_w_test.pem".to_string()),
                ("a.test", "12345_a.test_nginx.pem".to_string()),
                ("b.test", "fullchain.pem".to_string()),
            ]
        );
        // A leaf that fits several sites needs a file named after one.
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        let why = rejected[0].error.as_deref().unwrap_or_default();
        assert!(
            why.contains("fit several sites") && why.contains("cert.pem"),
            "{why}"
        );
    }

    #[test]
    fn scan_dir_refuses_two_certs_for_one_site_and_a_missing_dir() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cfg = config(tmp.path());
        touch(tmp.path(), &["a.test.pem", "a.test_public.crt"]);
        let (items, rejected) = scan_dir(&cfg, tmp.path()).expect("scan");
        assert!(items.is_empty());
        assert_eq!(rejected.len(), 1);
        assert!(
            rejected[0]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("two certificates for a.test")),
            "{:?}",
            rejected[0].error
        );

        let e = scan_dir(&cfg, &tmp.path().join("missing")).expect_err("an error");
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn conflicts_refuse_a_site_twice_and_shared_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cfg = config(tmp.path());
        let site = |n: &str| cfg.sites.iter().find(|s| s.name == n).expect("site");
        let item = |n: &str, file: &str| Item {
            site: site(n),
            files: Files {
                cert: PathBuf::from(file),
                key: None,
                chain: None,
            },
        };
        let items = [
            item("a.test", "1.pem"),
            item("b.test", "2.pem"),
            item("b.test", "3.pem"),
            item("shares.test", "4.pem"),
            item("c.test", "5.pem"),
        ];
        let refused = conflicts(&items, &[true, true, true, true, false]);
        let idx: Vec<usize> = refused.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, vec![1, 2, 3], "{refused:?}");
        assert!(refused[0].1.contains("2 bundles for b.test"), "{refused:?}");
        assert!(
            refused[2].1.contains("also a file of site a.test"),
            "{refused:?}"
        );
        // A rejected a.test frees its files for shares.test.
        let refused = conflicts(&items[..4], &[false, false, false, true]);
        assert_eq!(refused.len(), 2, "{refused:?}");
    }
}
