//! `certswap rollout DIR --prometheus URL --waves 5,25,100`: a renewal
//! published in DIR ([`crate::publish`]) rolled out wave by wave, each wave
//! proven on the fleet before the next, with no coordinator: the agents
//! report to Prometheus, and a wave's hosts are the ones whose
//! [`crate::manifest::bucket`] of their reported `host_id` is below the
//! percent — the rule each agent applies to itself.
//!
//! 1. build the manifest from DIR (every rule of `manifest build`); the
//!    target sites (all, or `--site`) get the new leaf, other sites keep
//!    their entry of the current manifest as it is;
//! 2. ask Prometheus which hosts exist (`certswap_host_info`, over the last
//!    hour), which sites each has (`certswap_cert_not_after_seconds`), and
//!    each host's rollback count now (`certswap_install_total{result=
//!    "rolled_back"}`) as the baseline;
//! 3. per wave: write the manifest at the wave's percent (atomically, the
//!    `manifest build` writer), then poll Prometheus until every host of
//!    the wave serves the new leaf on every endpoint it reports
//!    (`certswap_served_leaf_info`) without drift (`certswap_drift`) and
//!    is scraped (`up`, `certswap_host_info`), continuously for the soak;
//! 4. a rollback on a host of the wave at any moment, or a host of the wave
//!    still not proven at the wave's deadline (old leaf, drift, missing):
//!    write the manifest again with `"paused": true` (valid for the hosts
//!    that took it: nothing is undone), print each failed host and why, and
//!    report [`Verdict::Paused`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::manifest::{self, Manifest};
use crate::prometheus::{Client, PromError, Sample};
use crate::publish::{self, Built, Options, PublishError};

/// How often Prometheus is asked during a wave.
pub const POLL: Duration = Duration::from_secs(1);
/// How far back a host counts as part of the fleet.
const LOOKBACK: &str = "1h";

/// What to roll out, how.
#[derive(Debug, Clone)]
pub struct Plan {
    pub dir: PathBuf,
    /// Prometheus's base URL (credentials allowed, never printed).
    pub prometheus: String,
    /// Rollout percents, rising, the last usually 100.
    pub waves: Vec<u32>,
    /// How long a wave must stay proven before the next one.
    pub soak: Duration,
    /// How long a wave may take to be proven.
    pub deadline: Duration,
    /// The sites to roll out; empty = every site in DIR.
    pub sites: Vec<String>,
}

/// Why the rollout could not run (nothing about the fleet's health).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutError {
    #[error("{0}")]
    Publish(#[from] PublishError),
    #[error("{0}")]
    Prometheus(#[from] PromError),
    /// `--waves` not rising, empty, or above 100.
    #[error("--waves {0}: expected rising percents in 1..100, e.g. 5,25,100")]
    Waves(String),
    /// `--site` names a site DIR has no renewal for.
    #[error("{dir}: no renewal of site {site}")]
    UnknownSite { dir: PathBuf, site: String },
    /// Prometheus has no certswap agent at all: a wave could not be proven.
    #[error(
        "{0}: no certswap_host_info series in the last {LOOKBACK}: is Prometheus scraping the agents' metrics_listen?"
    )]
    NoHosts(String),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// Progress could not be printed.
    #[error("cannot print progress: {0}")]
    Output(std::io::Error),
}

/// A host of a wave that did not take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub host_id: String,
    /// Prometheus's `instance` label of the host's agent.
    pub instance: String,
    pub site: String,
    /// From the host's metrics, one sentence.
    pub why: String,
}

/// How a rollout ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every wave proven; the manifest is at the last wave's percent.
    Done,
    /// Stopped at `percent`; the manifest is paused.
    Paused {
        percent: u32,
        failures: Vec<Failure>,
    },
}

/// Parse `--waves` ("5,25,100").
pub fn parse_waves(s: &str) -> Result<Vec<u32>, RolloutError> {
    let bad = || RolloutError::Waves(s.to_string());
    let waves = s
        .split(',')
        .map(|w| {
            w.trim()
                .trim_end_matches('%')
                .parse::<u32>()
                .map_err(|_| bad())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rising = waves.windows(2).all(|w| w[0] < w[1]);
    if waves.is_empty() || !rising || waves.iter().any(|w| *w == 0 || *w > 100) {
        return Err(bad());
    }
    Ok(waves)
}

/// Run `plan`, printing progress to `out`.
pub fn run(plan: &Plan, out: &mut dyn Write) -> Result<Verdict, RolloutError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RolloutError::Runtime)?;
    rt.block_on(run_async(plan, out))
}

/// The state of one (host, site) of a wave at one poll.
enum State {
    Done,
    /// Not proven yet; the sentence says why.
    Pending(String),
    /// A rollback: the wave fails at once.
    RolledBack(String),
}

/// One key per agent: Prometheus's `job` and `instance`.
type Key = (String, String);

fn key_of(s: &Sample) -> Key {
    (s.label("job").to_string(), s.label("instance").to_string())
}

/// What Prometheus says about the fleet at one moment.
#[derive(Default)]
struct Snapshot {
    /// Agents scraped now → host_id.
    alive: HashMap<Key, String>,
    /// Targets Prometheus failed to scrape.
    down: BTreeSet<Key>,
    /// (agent, site) → endpoint → served leaf SHA-256.
    served: HashMap<(Key, String), BTreeMap<String, String>>,
    drift: HashMap<(Key, String), f64>,
    rollbacks: HashMap<(Key, String), f64>,
    sites: HashMap<Key, BTreeSet<String>>,
}

async fn snapshot(prom: &Client) -> Result<Snapshot, PromError> {
    let mut s = Snapshot::default();
    for x in prom.query("certswap_host_info").await? {
        s.alive.insert(key_of(&x), x.label("host_id").to_string());
    }
    for x in prom.query("up == 0").await? {
        s.down.insert(key_of(&x));
    }
    for x in prom.query("certswap_served_leaf_info").await? {
        s.served
            .entry((key_of(&x), x.label("site").to_string()))
            .or_default()
            .insert(
                x.label("endpoint").to_string(),
                x.label("sha256").to_string(),
            );
    }
    for x in prom.query("certswap_drift").await? {
        s.drift
            .insert((key_of(&x), x.label("site").to_string()), x.value);
    }
    for x in prom.query(ROLLED_BACK).await? {
        s.rollbacks
            .insert((key_of(&x), x.label("site").to_string()), x.value);
    }
    for x in prom.query("certswap_cert_not_after_seconds").await? {
        s.sites
            .entry(key_of(&x))
            .or_default()
            .insert(x.label("site").to_string());
    }
    Ok(s)
}

const ROLLED_BACK: &str = "certswap_install_total{result=\"rolled_back\"}";

/// The fleet as far as this rollout has seen it.
#[derive(Default)]
struct Fleet {
    hosts: BTreeMap<Key, String>,
    sites: HashMap<Key, BTreeSet<String>>,
    /// Rollbacks per (agent, site) when the rollout started.
    baseline: HashMap<(Key, String), f64>,
}

impl Fleet {
    fn learn(&mut self, s: &Snapshot) {
        for (k, id) in &s.alive {
            self.hosts.insert(k.clone(), id.clone());
        }
        for (k, sites) in &s.sites {
            self.sites
                .entry(k.clone())
                .or_default()
                .extend(sites.iter().cloned());
        }
    }

    /// (agent, site) pairs of the wave at `percent` among `targets`.
    fn wave(&self, targets: &BTreeMap<String, String>, percent: u32) -> Vec<(Key, String)> {
        let mut out = Vec::new();
        for (k, host_id) in &self.hosts {
            let Some(sites) = self.sites.get(k) else {
                continue;
            };
            for site in targets.keys() {
                if sites.contains(site) && manifest::bucket(host_id, site) < percent {
                    out.push((k.clone(), site.clone()));
                }
            }
        }
        out
    }
}

fn state_of(snap: &Snapshot, fleet: &Fleet, key: &Key, site: &str, new_leaf: &str) -> State {
    let ks = (key.clone(), site.to_string());
    let now = snap.rollbacks.get(&ks).copied().unwrap_or(0.0);
    let before = fleet.baseline.get(&ks).copied().unwrap_or(0.0);
    // A counter below its baseline was reset by a restart: no new rollback.
    if now > before {
        return State::RolledBack(format!(
            "rolled back: {ROLLED_BACK} rose from {before} to {now}; it serves the old certificate"
        ));
    }
    if snap.down.contains(key) {
        return State::Pending("missing: Prometheus cannot scrape its metrics (up == 0)".into());
    }
    if !snap.alive.contains_key(key) {
        return State::Pending("missing: it reports no certswap_host_info now".into());
    }
    let Some(endpoints) = snap.served.get(&ks).filter(|e| !e.is_empty()) else {
        return State::Pending(
            "no endpoint reports a served leaf (certswap_served_leaf_info)".into(),
        );
    };
    let old: Vec<String> = endpoints
        .iter()
        .filter(|(_, sha)| sha.as_str() != new_leaf)
        .map(|(e, sha)| format!("{e} serves {}", short(sha)))
        .collect();
    if !old.is_empty() {
        return State::Pending(format!(
            "still the old certificate: {} (new leaf {})",
            old.join(", "),
            short(new_leaf)
        ));
    }
    if snap.drift.get(&ks).is_some_and(|d| *d > 0.0) {
        return State::Pending("drift: certswap_drift is 1 (served ≠ on disk)".into());
    }
    State::Done
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

async fn run_async(plan: &Plan, out: &mut dyn Write) -> Result<Verdict, RolloutError> {
    // 1. the manifest's bundles, checked.
    let built = publish::build(&plan.dir, &Options::default())?;
    let mut targets: BTreeMap<String, String> = BTreeMap::new();
    for r in &built.rows {
        if plan.sites.is_empty() || plan.sites.contains(&r.site) {
            targets.insert(r.site.clone(), r.leaf_sha256.clone());
        }
    }
    for s in &plan.sites {
        if !targets.contains_key(s) {
            return Err(RolloutError::UnknownSite {
                dir: plan.dir.clone(),
                site: s.clone(),
            });
        }
    }
    let current = publish::read_current(&plan.dir)?;
    let prom = Client::new(&plan.prometheus, Duration::from_secs(10))?;

    // 2. the fleet, and each host's rollbacks before this rollout.
    let mut fleet = Fleet::default();
    for x in prom
        .query(&format!("last_over_time(certswap_host_info[{LOOKBACK}])"))
        .await?
    {
        fleet
            .hosts
            .insert(key_of(&x), x.label("host_id").to_string());
    }
    for x in prom
        .query(&format!(
            "last_over_time(certswap_cert_not_after_seconds[{LOOKBACK}])"
        ))
        .await?
    {
        fleet
            .sites
            .entry(key_of(&x))
            .or_default()
            .insert(x.label("site").to_string());
    }
    let snap = snapshot(&prom).await?;
    fleet.learn(&snap);
    fleet.baseline = snap.rollbacks.clone();
    if fleet.hosts.is_empty() {
        return Err(RolloutError::NoHosts(prom.shown().to_string()));
    }
    let say =
        |out: &mut dyn Write, line: String| writeln!(out, "{line}").map_err(RolloutError::Output);
    for (site, leaf) in &targets {
        say(
            out,
            format!(
                "rollout of {site}: new leaf {}; {} hosts known to {}",
                short(leaf),
                fleet.hosts.len(),
                prom.shown()
            ),
        )?;
    }

    // 3. wave by wave.
    let n = plan.waves.len();
    for (i, &percent) in plan.waves.iter().enumerate() {
        let m = manifest_at(&built, current.as_ref(), &targets, percent, false);
        publish::write(&plan.dir, &m)?;
        let started = Instant::now();
        let mut soaked_since: Option<Instant> = None;
        let mut last_line = String::new();
        let mut last_failures: Vec<Failure> = Vec::new();
        loop {
            let snap = match snapshot(&prom).await {
                Ok(s) => Some(s),
                Err(e) => {
                    last_failures = vec![Failure {
                        host_id: "-".into(),
                        instance: "-".into(),
                        site: "-".into(),
                        why: format!("Prometheus did not answer: {e}"),
                    }];
                    None
                }
            };
            if let Some(snap) = &snap {
                fleet.learn(snap);
                let wave = fleet.wave(&targets, percent);
                let hosts: BTreeSet<&Key> = wave.iter().map(|(k, _)| k).collect();
                let mut pending: Vec<Failure> = Vec::new();
                let mut rolled: Vec<Failure> = Vec::new();
                for (k, site) in &wave {
                    let fail = |why: String| Failure {
                        host_id: fleet.hosts.get(k).cloned().unwrap_or_default(),
                        instance: k.1.clone(),
                        site: site.clone(),
                        why,
                    };
                    match state_of(snap, &fleet, k, site, &targets[site]) {
                        State::Done => {}
                        State::Pending(why) => pending.push(fail(why)),
                        State::RolledBack(why) => rolled.push(fail(why)),
                    }
                }
                let not_done: BTreeSet<&str> = pending
                    .iter()
                    .chain(&rolled)
                    .map(|f| f.instance.as_str())
                    .collect();
                let failed = rolled.len()
                    + pending
                        .iter()
                        .filter(|f| f.why.starts_with("missing") || f.why.starts_with("drift"))
                        .count();
                let line = format!(
                    "wave {}/{n} ({percent}%): {} done / {} in wave / {failed} failed",
                    i + 1,
                    hosts.len() - not_done.len(),
                    hosts.len()
                );
                if line != last_line {
                    say(
                        out,
                        format!("{line}  [{:.1} s]", started.elapsed().as_secs_f64()),
                    )?;
                    last_line = line;
                }
                if !rolled.is_empty() {
                    return pause(
                        plan,
                        &built,
                        current.as_ref(),
                        &targets,
                        percent,
                        rolled,
                        out,
                    );
                }
                if pending.is_empty() {
                    let since = *soaked_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= plan.soak {
                        say(
                            out,
                            format!(
                                "wave {}/{n} ({percent}%) proven on {} hosts in {:.1} s (soak {:?})",
                                i + 1,
                                hosts.len(),
                                started.elapsed().as_secs_f64(),
                                plan.soak
                            ),
                        )?;
                        break;
                    }
                } else {
                    soaked_since = None;
                }
                last_failures = pending;
            }
            if started.elapsed() >= plan.deadline {
                // 4. not proven in time.
                return pause(
                    plan,
                    &built,
                    current.as_ref(),
                    &targets,
                    percent,
                    last_failures,
                    out,
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
    say(
        out,
        format!(
            "rollout done: every wave proven, the manifest is at {}%",
            plan.waves[n - 1]
        ),
    )?;
    Ok(Verdict::Done)
}

/// Step 4: the manifest at `percent`, paused; the failures printed.
fn pause(
    plan: &Plan,
    built: &Built,
    current: Option<&Manifest>,
    targets: &BTreeMap<String, String>,
    percent: u32,
    failures: Vec<Failure>,
    out: &mut dyn Write,
) -> Result<Verdict, RolloutError> {
    let m = manifest_at(built, current, targets, percent, true);
    let path = publish::write(&plan.dir, &m)?;
    let w =
        |out: &mut dyn Write, line: String| writeln!(out, "{line}").map_err(RolloutError::Output);
    w(
        out,
        format!(
            "rollout paused at {percent}%: {} wrote \"paused\": true; failed hosts:",
            path.display()
        ),
    )?;
    for f in &failures {
        w(
            out,
            format!("  {} ({}) {}: {}", f.host_id, f.instance, f.site, f.why),
        )?;
    }
    Ok(Verdict::Paused { percent, failures })
}

/// The manifest to write: the target sites' new bundles at `percent`,
/// every other site's entry as the current manifest has it.
fn manifest_at(
    built: &Built,
    current: Option<&Manifest>,
    targets: &BTreeMap<String, String>,
    percent: u32,
    paused: bool,
) -> Manifest {
    let mut b = built.clone();
    for site in targets.keys() {
        b.set_percent(site, percent);
    }
    let mut bundles: Vec<_> = b
        .manifest
        .bundles
        .into_iter()
        .filter(|x| targets.contains_key(&x.site))
        .collect();
    if let Some(cur) = current {
        bundles.extend(
            cur.bundles
                .iter()
                .filter(|x| !targets.contains_key(&x.site))
                .cloned(),
        );
    }
    bundles.sort_by(|a, b| a.site.cmp(&b.site));
    Manifest {
        version: manifest::VERSION,
        paused,
        bundles,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_must_rise_within_1_to_100() {
        assert_eq!(parse_waves("5,25,100").expect("ok"), vec![5, 25, 100]);
        assert_eq!(parse_waves("10%, 100%").expect("ok"), vec![10, 100]);
        for bad in ["", "25,5", "0,100", "5,101", "5,5", "a"] {
            assert!(parse_waves(bad).is_err(), "{bad}");
        }
    }
}
