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
    /// DIR holds no site with a renewal.
    #[error("{0}: no SITE/DATE/fullchain.pem to roll out")]
    Nothing(PathBuf),
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
    // One instant for every query of the snapshot.
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .ok();
    let query = |q: &'static str| prom.query_at(q, at);
    let mut s = Snapshot::default();
    for x in query("certswap_host_info").await? {
        s.alive.insert(key_of(&x), x.label("host_id").to_string());
    }
    for x in query("up == 0").await? {
        s.down.insert(key_of(&x));
    }
    for x in query("certswap_served_leaf_info").await? {
        s.served
            .entry((key_of(&x), x.label("site").to_string()))
            .or_default()
            .insert(
                x.label("endpoint").to_string(),
                x.label("sha256").to_string(),
            );
    }
    for x in query("certswap_drift").await? {
        s.drift
            .insert((key_of(&x), x.label("site").to_string()), x.value);
    }
    for x in query(ROLLED_BACK).await? {
        s.rollbacks
            .insert((key_of(&x), x.label("site").to_string()), x.value);
    }
    for x in query("certswap_cert_not_after_seconds").await? {
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
        // An agent that restarted counts its rollbacks from 0 again: lower
        // its baseline, so its next rollback is seen.
        for (ks, b) in &mut self.baseline {
            if s.alive.contains_key(&ks.0) {
                let now = s.rollbacks.get(ks).copied().unwrap_or(0.0);
                if now < *b {
                    *b = now;
                }
            }
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

/// One wave's hosts as one poll sees them.
struct WaveView {
    /// Agents with at least one target site in the wave.
    hosts: usize,
    /// Agents of the wave with every site proven.
    done: usize,
    pending: Vec<Failure>,
    rolled_back: Vec<Failure>,
}

impl WaveView {
    /// Failures a person should look at now: rollbacks, and hosts missing
    /// or drifting (an old leaf is only "not yet").
    fn failed(&self) -> usize {
        self.rolled_back.len()
            + self
                .pending
                .iter()
                .filter(|f| f.why.starts_with("missing") || f.why.starts_with("drift"))
                .count()
    }
}

/// Judge the wave at `percent` on `snap`.
fn judge(
    snap: &Snapshot,
    fleet: &Fleet,
    targets: &BTreeMap<String, String>,
    percent: u32,
) -> WaveView {
    let wave = fleet.wave(targets, percent);
    let hosts: BTreeSet<&Key> = wave.iter().map(|(k, _)| k).collect();
    let mut view = WaveView {
        hosts: hosts.len(),
        done: 0,
        pending: Vec::new(),
        rolled_back: Vec::new(),
    };
    for (k, site) in &wave {
        let fail = |why: String| Failure {
            host_id: fleet.hosts.get(k).cloned().unwrap_or_default(),
            instance: k.1.clone(),
            site: site.clone(),
            why,
        };
        match state_of(snap, fleet, k, site, &targets[site]) {
            State::Done => {}
            State::Pending(why) => view.pending.push(fail(why)),
            State::RolledBack(why) => view.rolled_back.push(fail(why)),
        }
    }
    let not_done: BTreeSet<&str> = view
        .pending
        .iter()
        .chain(&view.rolled_back)
        .map(|f| f.instance.as_str())
        .collect();
    view.done = view.hosts - not_done.len();
    view
}

/// A rollout in progress: what it publishes and what it knows.
struct Run<'a> {
    plan: &'a Plan,
    built: Built,
    /// The manifest DIR held when the rollout started.
    current: Option<Manifest>,
    /// Target site → the new leaf's SHA-256.
    targets: BTreeMap<String, String>,
    prom: Client,
    fleet: Fleet,
}

fn say(out: &mut dyn Write, line: &str) -> Result<(), RolloutError> {
    writeln!(out, "{line}").map_err(RolloutError::Output)
}

async fn run_async(plan: &Plan, out: &mut dyn Write) -> Result<Verdict, RolloutError> {
    let mut run = Run::start(plan).await?;
    for (site, leaf) in &run.targets {
        say(
            out,
            &format!(
                "rollout of {site}: new leaf {}; {} hosts known to {}",
                short(leaf),
                run.fleet.hosts.len(),
                run.prom.shown()
            ),
        )?;
    }
    // 3. wave by wave.
    for (i, &percent) in plan.waves.iter().enumerate() {
        if let Some(failures) = run.wave(i, percent, out).await? {
            return run.pause(percent, failures, out);
        }
    }
    let last = plan.waves.last().copied().unwrap_or(100);
    say(
        out,
        &format!("rollout done: every wave proven, the manifest is at {last}%"),
    )?;
    Ok(Verdict::Done)
}

impl Run<'_> {
    /// Steps 1–2.
    async fn start(plan: &Plan) -> Result<Run<'_>, RolloutError> {
        let built = publish::build(&plan.dir, &Options::default())?;
        let mut targets: BTreeMap<String, String> = BTreeMap::new();
        for r in &built.rows {
            if plan.sites.is_empty() || plan.sites.contains(&r.site) {
                targets.insert(r.site.clone(), r.leaf_sha256.clone());
            }
        }
        if targets.is_empty() {
            return Err(RolloutError::Nothing(plan.dir.clone()));
        }
        if let Some(site) = plan.sites.iter().find(|s| !targets.contains_key(*s)) {
            return Err(RolloutError::UnknownSite {
                dir: plan.dir.clone(),
                site: site.clone(),
            });
        }
        let current = publish::read_current(&plan.dir)?;
        let prom = Client::new(&plan.prometheus, Duration::from_secs(10))?;
        let mut fleet = Fleet::default();
        let hosts = format!("last_over_time(certswap_host_info[{LOOKBACK}])");
        for x in prom.query(&hosts).await? {
            fleet
                .hosts
                .insert(key_of(&x), x.label("host_id").to_string());
        }
        let sites = format!("last_over_time(certswap_cert_not_after_seconds[{LOOKBACK}])");
        for x in prom.query(&sites).await? {
            fleet
                .sites
                .entry(key_of(&x))
                .or_default()
                .insert(x.label("site").to_string());
        }
        let snap = snapshot(&prom).await?;
        fleet.learn(&snap);
        fleet.baseline = snap.rollbacks;
        if fleet.hosts.is_empty() {
            return Err(RolloutError::NoHosts(prom.shown().to_string()));
        }
        Ok(Run {
            plan,
            built,
            current,
            targets,
            prom,
            fleet,
        })
    }

    /// Step 3 for wave `i`: None once proven for the soak, else the
    /// failures that stop the rollout.
    async fn wave(
        &mut self,
        i: usize,
        percent: u32,
        out: &mut dyn Write,
    ) -> Result<Option<Vec<Failure>>, RolloutError> {
        let n = self.plan.waves.len();
        publish::write(&self.plan.dir, &self.manifest_at(percent, false))?;
        let started = Instant::now();
        let mut soaked_since: Option<Instant> = None;
        let mut last_line = String::new();
        loop {
            let failures = match snapshot(&self.prom).await {
                Ok(snap) => {
                    self.fleet.learn(&snap);
                    let view = judge(&snap, &self.fleet, &self.targets, percent);
                    let line = format!(
                        "wave {}/{n} ({percent}%): {} done / {} in wave / {} failed",
                        i + 1,
                        view.done,
                        view.hosts,
                        view.failed()
                    );
                    if line != last_line {
                        let at = started.elapsed().as_secs_f64();
                        say(out, &format!("{line}  [{at:.1} s]"))?;
                        last_line = line;
                    }
                    // 4. a rollback stops the rollout at once.
                    if !view.rolled_back.is_empty() {
                        return Ok(Some(view.rolled_back));
                    }
                    if !view.pending.is_empty() {
                        soaked_since = None;
                    } else if soaked_since.get_or_insert_with(Instant::now).elapsed()
                        >= self.plan.soak
                    {
                        say(
                            out,
                            &format!(
                                "wave {}/{n} ({percent}%) proven on {} hosts in {:.1} s (soak {:?})",
                                i + 1,
                                view.hosts,
                                started.elapsed().as_secs_f64(),
                                self.plan.soak
                            ),
                        )?;
                        return Ok(None);
                    }
                    view.pending
                }
                Err(e) => {
                    soaked_since = None;
                    vec![Failure {
                        host_id: "-".into(),
                        instance: "-".into(),
                        site: "-".into(),
                        why: format!("Prometheus did not answer: {e}"),
                    }]
                }
            };
            // 4. not proven in time.
            if started.elapsed() >= self.plan.deadline {
                return Ok(Some(failures));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Step 4: the manifest at `percent`, paused; the failures printed.
    fn pause(
        &self,
        percent: u32,
        failures: Vec<Failure>,
        out: &mut dyn Write,
    ) -> Result<Verdict, RolloutError> {
        let path = publish::write(&self.plan.dir, &self.manifest_at(percent, true))?;
        say(
            out,
            &format!(
                "rollout paused at {percent}%: {} wrote \"paused\": true; failed hosts:",
                path.display()
            ),
        )?;
        for f in &failures {
            say(
                out,
                &format!("  {} ({}) {}: {}", f.host_id, f.instance, f.site, f.why),
            )?;
        }
        Ok(Verdict::Paused { percent, failures })
    }

    /// The manifest to write: the target sites' new bundles at `percent`,
    /// every other site's entry as the current manifest has it.
    fn manifest_at(&self, percent: u32, paused: bool) -> Manifest {
        let mut b = self.built.clone();
        for site in self.targets.keys() {
            b.set_percent(site, percent);
        }
        let mut bundles: Vec<_> = b
            .manifest
            .bundles
            .into_iter()
            .filter(|x| self.targets.contains_key(&x.site))
            .collect();
        if let Some(cur) = &self.current {
            bundles.extend(
                cur.bundles
                    .iter()
                    .filter(|x| !self.targets.contains_key(&x.site))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: &str) -> Key {
        ("certswap".to_string(), i.to_string())
    }

    #[test]
    fn a_wave_is_the_hosts_below_the_percent_and_each_is_judged_by_its_metrics() {
        let site = "a.test";
        let ids: Vec<String> = (0..40).map(|i| format!("h{i}")).collect();
        let mut fleet = Fleet::default();
        for id in &ids {
            fleet.hosts.insert(key(id), id.clone());
            fleet.sites.entry(key(id)).or_default().insert(site.into());
        }
        let targets = BTreeMap::from([(site.to_string(), "new".to_string())]);
        let in_wave: Vec<&String> = ids
            .iter()
            .filter(|h| manifest::bucket(h, site) < 30)
            .collect();
        assert!(in_wave.len() >= 3, "pick other ids: {in_wave:?}");
        let (ok, old, rolled) = (in_wave[0], in_wave[1], in_wave[2]);
        let mut snap = Snapshot::default();
        for id in &ids {
            snap.alive.insert(key(id), id.clone());
            let sha = if id == old { "old" } else { "new" };
            snap.served.insert(
                (key(id), site.into()),
                BTreeMap::from([(format!("{site}@x:443"), sha.to_string())]),
            );
        }
        snap.rollbacks.insert((key(rolled), site.into()), 1.0);
        let view = judge(&snap, &fleet, &targets, 30);
        assert_eq!(view.hosts, in_wave.len());
        assert_eq!(view.done, in_wave.len() - 2, "{ok} and the others are done");
        assert_eq!(view.rolled_back.len(), 1);
        assert_eq!(&view.rolled_back[0].host_id, rolled);
        assert_eq!(view.pending.len(), 1);
        assert!(
            view.pending[0].why.contains("old certificate"),
            "{:?}",
            view.pending
        );
        // A restart resets the counter below its baseline: no rollback.
        fleet.baseline.insert((key(rolled), site.into()), 3.0);
        snap.alive.remove(&key(ok));
        let view = judge(&snap, &fleet, &targets, 30);
        assert!(view.rolled_back.is_empty());
        assert!(
            view.pending
                .iter()
                .any(|f| &f.host_id == ok && f.why.starts_with("missing")),
            "{:?}",
            view.pending
        );
        assert_eq!(view.failed(), 1);
        // …and once it is seen at 1 again after the reset, a rise is a rollback.
        snap.alive.insert(key(ok), ok.clone());
        fleet.learn(&snap);
        assert_eq!(fleet.baseline[&(key(rolled), site.into())], 1.0);
        snap.rollbacks.insert((key(rolled), site.into()), 2.0);
        assert_eq!(judge(&snap, &fleet, &targets, 30).rolled_back.len(), 1);
    }

    #[test]
    fn waves_must_rise_within_1_to_100() {
        assert_eq!(parse_waves("5,25,100").expect("ok"), vec![5, 25, 100]);
        assert_eq!(parse_waves("10%, 100%").expect("ok"), vec![10, 100]);
        for bad in ["", "25,5", "0,100", "5,101", "5,5", "a"] {
            assert!(parse_waves(bad).is_err(), "{bad}");
        }
    }
}
