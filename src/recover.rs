//! The one owner of recovery: putting a site's old files back, restoring
//! service when the server may have loaded the new ones (ONE config test,
//! then reload, or start a server that died), closing the journals kept
//! open for that reload, and proving the old leaves are served again
//! (invariant 6). Used on a failed step and a failed commit of the engine
//! ([`crate::batch`]), and at the start of every command that changes files
//! after a crash ([`recover_host`]: from the journals).
//!
//! ```text
//! put back   Txn::abort (a failed step)  |  SiteStore::recover (a journal)
//! service    service::restore_service: config test → alive? → reload : start (once)
//! close      SiteStore::close_reloaded, for the changes that needed it
//! prove      one wait: every endpoint serves its old leaf again
//! ```
//!
//! The server steps themselves are [`crate::service`]'s.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::bundle;
use crate::config::{Config, Site};
use crate::failpoint;
use crate::install::{Env, InstallError, pair_site, site_targets};
use crate::par;
use crate::probe::{self, Prober, Target};
use crate::report::ServedRow;
use crate::server;
use crate::service::{RestoreFailed, restore_service};
use crate::store::{Op, Recovery, SiteStore, StoreError, Txn};
use crate::wait::{Wait, wait_all};

/// Put the old files of an open change back ([`Txn::abort`]). After a
/// reload was sent, that is journaled first: recovery must then reload even
/// with every old file in place, and the change stays open until the
/// reload with the old files was tried ([`settle`]). A failure to journal
/// only warns: putting the old files back matters more.
pub(crate) fn put_back(mut txn: Txn, reloaded: bool) -> Result<(), StoreError> {
    if reloaded && let Err(e) = txn.mark_reloaded() {
        tracing::warn!("cannot journal the reload before restoring: {e}");
    }
    txn.abort()
}

/// A site whose old files are back, waiting for [`settle`].
pub(crate) struct Restored {
    /// The site (one pair of a dual site): what service is restored for.
    pub(crate) site: Site,
    pub(crate) store: SiteStore,
    /// The server may have loaded the new files: service is restored, and
    /// the change stays open until that was tried.
    pub(crate) reloaded: bool,
    /// Each endpoint and the leaf it must serve again.
    pub(crate) proof: Vec<(Target, String)>,
    /// Probes with the site's key type.
    pub(crate) prober: Prober,
}

/// What [`settle`] found for one restored site.
pub(crate) struct Settled {
    /// In words, in order; the last says whether the old leaf is served.
    pub(crate) problems: Vec<String>,
    /// The last handshakes of the proof.
    pub(crate) rows: Vec<ServedRow>,
    /// Every endpoint serves its old leaf again.
    pub(crate) proven: bool,
}

/// When [`settle`] runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    /// After a failed step or commit: a failure to restore service is told
    /// in the outcome, and the journals are closed (the outcome said it).
    FailedChange,
    /// At the start of a command, from the journals: a failure to restore
    /// service stops the command and keeps the journals open, so the next
    /// command tries again.
    AtStart,
}

/// ONE restore of service for all the `restored` sites that need it, their
/// journals closed, then ONE wait proving every old leaf is served again.
/// [`When::AtStart`]: a failed restore of service ends it there (`Err`),
/// with the journals open and nothing proven.
pub(crate) fn settle(
    env: &Env<'_>,
    restored: &[Restored],
    when: When,
) -> Result<Vec<Settled>, RestoreFailed> {
    let mut settled: Vec<Settled> = restored
        .iter()
        .map(|_| Settled {
            problems: Vec::new(),
            rows: Vec::new(),
            proven: true,
        })
        .collect();
    if restored.iter().any(|r| r.reloaded) {
        if when == When::FailedChange {
            failpoint::hit(failpoint::AFTER_RESTORE);
        }
        let sites: Vec<&Site> = restored
            .iter()
            .filter(|r| r.reloaded)
            .map(|r| &r.site)
            .collect();
        let problem = match restore_service(env.server, &sites) {
            Ok(()) => None,
            Err(e) if when == When::AtStart => return Err(e),
            Err(e) => Some(e.to_string()),
        };
        for (r, s) in restored
            .iter()
            .zip(&mut settled)
            .filter(|(r, _)| r.reloaded)
        {
            s.problems.extend(problem.clone());
            if let Err(e) = r.store.close_reloaded() {
                s.problems.push(format!(
                    "closing the journal failed: {e}; the next certswap command reloads once more"
                ));
            }
        }
    }
    let mut waits = Vec::new();
    let mut owners = Vec::new();
    for (i, r) in restored.iter().enumerate() {
        for (sha, targets) in group_by_sha(&r.proof) {
            owners.push(i);
            waits.push(Wait {
                targets,
                sha,
                prober: r.prober.clone(),
            });
        }
    }
    for (i, w) in owners
        .into_iter()
        .zip(wait_all(env.server, &env.config.probe, &waits, false))
    {
        settled[i].rows.extend(w.waited.rows);
        if let Some(why) = w.waited.failure {
            settled[i].proven = false;
            settled[i]
                .problems
                .push(format!("the old certificate is NOT served again: {why}"));
        }
    }
    Ok(settled)
}

/// The targets of `proof` grouped by the leaf each must serve: one wait
/// per leaf.
fn group_by_sha(proof: &[(Target, String)]) -> Vec<(String, Vec<Target>)> {
    let mut groups: Vec<(String, Vec<Target>)> = Vec::new();
    for (t, sha) in proof {
        match groups.iter_mut().find(|(s, _)| s == sha) {
            Some((_, ts)) => ts.push(t.clone()),
            None => groups.push((sha.clone(), vec![t.clone()])),
        }
    }
    groups
}

/// Finish or undo a change a crash interrupted, for every site of the host
/// with an open change, not only `site` ([`recover_host`]): one config
/// test and reload if the server may have loaded any of them, then the
/// restored leaves proven served. What was done for `site`.
pub fn recover_site(env: &Env<'_>, site: &Site) -> Result<Recovery, InstallError> {
    // Every open change on the host first: a site that a crashed batch left
    // half-swapped would fail this one's config test.
    if let Some(r) = recover_host(env)?.remove(&site.store_key) {
        return Ok(r);
    }
    // A pair whose files the host-wide pass could not read.
    let mut found = recover_sites(env, &[site])?;
    Ok(found.pop().unwrap_or(Recovery::Clean))
}

/// Every site of the config as the store keeps them: a dual-certificate
/// site once per pair (each has its own journal), the others as they are.
/// A pair whose files cannot be read now is left to its own commands.
pub fn stored_sites(config: &Config) -> Vec<Site> {
    let mut out = Vec::new();
    for s in &config.sites {
        if s.pairs.is_empty() {
            out.push(s.clone());
            continue;
        }
        for family in [probe::KeyFamily::Rsa, probe::KeyFamily::Ecdsa] {
            if let Ok(pair) = pair_site(s, family) {
                out.push(pair);
            }
        }
    }
    out
}

/// Repair every open change on the host ([`recover_sites`] over
/// [`stored_sites`]): the sites share one server config, so a site that a
/// crashed batch left half-swapped fails the config test of any other
/// site's repair until it is repaired too. What was done, by store key.
pub fn recover_host(env: &Env<'_>) -> Result<HashMap<String, Recovery>, InstallError> {
    let sites = stored_sites(env.config);
    let refs: Vec<&Site> = sites.iter().collect();
    let found = recover_sites(env, &refs)?;
    Ok(sites
        .iter()
        .map(|s| s.store_key.clone())
        .zip(found)
        .collect())
}

/// Repair every site in `sites` from its journal, with ONE config test and
/// reload for all the sites whose server may have loaded an interrupted
/// change (a crash in the middle of a batch leaves one journal per site),
/// then prove their restored leaves are served ([`settle`]). The caller
/// holds the host lock. Returns what recovery did, per site, in order.
pub fn recover_sites(env: &Env<'_>, sites: &[&Site]) -> Result<Vec<Recovery>, InstallError> {
    let targets_of =
        |site: &Site| -> Vec<PathBuf> { site_targets(site).into_iter().map(|(_, p)| p).collect() };
    // Every journal is checked against the config before any site is
    // repaired: a forged one stops the repair with nothing changed.
    // (Each site's check and repair touch only its own files: on all
    // cores, one store dir per thread; 10,000 sites took 0.4 s in one.)
    let distinct = distinct_stores(sites);
    let threads = if distinct { REPAIR_THREADS } else { 1 };
    let checked = par::map(sites.to_vec(), threads, |site| {
        env.store
            .site(&site.store_key)
            .check_journal(&targets_of(site))
    });
    let looked = checked
        .into_iter()
        .collect::<Result<Vec<_>, StoreError>>()?;
    // A repair may end in a reload (or a start): before it restores a
    // file, the pid file must not name another process. A server that is
    // not running is fine here: it may have died on the interrupted
    // change's reload, and is started once the old files are back.
    if let Some((open, _)) = sites.iter().zip(&looked).find(|(_, l)| l.is_open())
        && let Err(e) = env.server.preflight()
        && !server::is_not_running(&e)
    {
        return Err(InstallError::Recover {
            site: open.name.clone(),
            source: e,
        });
    }
    let mut found = Vec::with_capacity(sites.len());
    let mut reload = Vec::new();
    // What the check found still stands (the host lock), unless a store
    // comes twice: then the first repair of it changed what the second
    // must look at again.
    let recovered = par::map(sites.iter().zip(looked).collect(), threads, |(site, l)| {
        let store = env.store.site(&site.store_key);
        match distinct {
            true => store.recover_checked(&targets_of(site), l),
            false => store.recover(&targets_of(site)),
        }
    });
    for (site, r) in sites.iter().zip(recovered) {
        let r = r?;
        match &r {
            Recovery::Clean => {}
            Recovery::RolledBack { op, reload: again } => {
                tracing::warn!(
                    site = %site.name,
                    "an interrupted {} was rolled back: the previous files are restored",
                    op_name(op)
                );
                if *again {
                    reload.push(*site);
                }
            }
            Recovery::Completed { op } => tracing::warn!(
                site = %site.name,
                "an interrupted {} had committed; finished it",
                op_name(op)
            ),
        }
        found.push(r);
    }
    if reload.is_empty() {
        return Ok(found);
    }
    // As after any rollback, prove the restored leaves are what is served
    // before the command goes on (invariant 6): the leaf each site's file
    // holds again.
    let restored: Vec<Restored> = reload
        .iter()
        .map(|site| Restored {
            site: (*site).clone(),
            store: env.store.site(&site.store_key),
            reloaded: true,
            proof: match bundle::read_leaf(&site.cert) {
                Ok(leaf) => site
                    .endpoints
                    .iter()
                    .map(|t| (t.clone(), leaf.sha256.clone()))
                    .collect(),
                Err(_) => Vec::new(),
            },
            prober: env.prober_for(site).clone(),
        })
        .collect();
    let settled = settle(env, &restored, When::AtStart).map_err(|e| InstallError::Recover {
        site: name_list(reload.iter().map(|s| s.name.as_str())),
        source: e.into_server_error(),
    })?;
    for (site, s) in reload.iter().zip(settled) {
        for p in s.problems {
            tracing::warn!(site = %site.name, "after recovery: {p}");
        }
    }
    Ok(found)
}

/// Threads for the repair of many sites: its per-site work is mostly
/// lookups of paths that do not exist, on the cores.
const REPAIR_THREADS: usize = 4;

/// No two of `sites` share a store dir (a site listed twice would be
/// repaired twice at once).
fn distinct_stores(sites: &[&Site]) -> bool {
    let mut seen = std::collections::HashSet::with_capacity(sites.len());
    sites.iter().all(|s| seen.insert(s.store_key.as_str()))
}

/// `a, b, c and 17 more`.
pub(crate) fn name_list<'n>(names: impl Iterator<Item = &'n str>) -> String {
    let names: Vec<&str> = names.collect();
    match names.len() {
        0..=5 => names.join(", "),
        n => format!("{} and {} more", names[..5].join(", "), n - 5),
    }
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Install => "install",
        Op::Rollback { .. } => "rollback",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_list_is_short() {
        assert_eq!(name_list(["a", "b"].into_iter()), "a, b");
        let many: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
        assert_eq!(
            name_list(many.iter().map(String::as_str)),
            "s0, s1, s2, s3, s4 and 3 more"
        );
    }
}
