//! The wait of step 7 (and of every proof after a rollback): many sites'
//! endpoints probed until each serves its expected leaf on `consecutive`
//! fresh handshakes in a row, concurrently, within the probe deadline,
//! with the server watched so that one that died ends the wait early.
//! Below the engine ([`crate::batch`]), recovery and adopt, which use it
//! (issue 13: no import cycle).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cert;
use crate::config::ProbeConfig;
use crate::failpoint;
use crate::par::lock;
use crate::probe::{self, Served, Target};
use crate::report::ServedRow;
use crate::server::WebServer;

/// Sites waited on at once. Each site's wait makes `consecutive` handshakes
/// spaced ~50 ms apart, so most of a wait is sleeping: 256 sites keep ~64
/// handshakes in flight, the sweet spot measured in DESIGN.md.
const SITES_IN_FLIGHT: usize = 256;
/// The gate of the wait after the reload ([`first_new_answer`]): sites
/// sampled, the pause between two looks (one sample each, in turn), and
/// the batch size from which it is worth it.
const GATE_SAMPLE: usize = 4;
const GATE_EVERY: Duration = Duration::from_millis(10);
const GATE_MIN_SITES: usize = 16;
/// The per-address gate may use at most this fraction of the deadline.
const GATE_DEADLINE_SHARE: u32 = 3;
/// Handshakes in flight for a one-shot probe of many endpoints.
pub(crate) const PROBE_CONCURRENCY: usize = 64;
/// How often the wait looks at the server: one that died on its reload
/// (apache) ends the wait within this time, not at the deadline.
const ALIVE_EVERY: Duration = Duration::from_secs(1);

/// One handshake per target, on one engine per core ([`crate::engines`])
/// beside the gate's own checks on this runtime: this is a bulk probe of
/// every site on the critical path, and on a busy host one engine gets
/// one thread's share of the cores (docs/performance.md, "Fifth pass").
/// The engines run on the runtime's blocking pool, so the runtime (and
/// the wait) does not end before their handshakes do.
async fn first_looks_of(
    all: Vec<(probe::Prober, Target)>,
) -> Vec<Result<Served, probe::ProbeError>> {
    let looks =
        tokio::task::spawn_blocking(move || crate::engines::probe_each(&all, PROBE_CONCURRENCY));
    match looks.await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled with the runtime: no looks, every site gets the full rule.
        Err(_) => Vec::new(),
    }
}

/// What a wait saw: the rows of the last handshakes, and why it failed.
pub(crate) struct Waited {
    pub(crate) rows: Vec<ServedRow>,
    /// None when every target served the expected leaf.
    pub(crate) failure: Option<String>,
}

/// Why a wait for `sha` on `targets` failed, from its last handshakes.
pub(crate) fn describe_mismatch(
    last: &[Result<Served, probe::ProbeError>],
    targets: &[Target],
    sha: &str,
    deadline: Duration,
    consecutive: u32,
) -> String {
    let mut parts = Vec::new();
    for (r, t) in last.iter().zip(targets) {
        match r {
            Ok(s) if s.leaf.sha256 == sha => {}
            Ok(s) => parts.push(format!(
                "{t} serves {} (sha256 {}, notAfter {})",
                s.leaf.subject,
                short(&s.leaf.sha256),
                cert::rfc3339(s.leaf.not_after)
            )),
            Err(e) => parts.push(e.to_string()),
        }
    }
    if parts.is_empty() {
        parts.push("it was served, but not on enough consecutive handshakes".into());
    }
    format!(
        "the expected certificate (sha256 {}) was not served on {consecutive} consecutive handshakes within {deadline:?}: {}",
        short(sha),
        parts.join("; ")
    )
}

/// Targets that must all serve the leaf `sha`, as `prober` (the site's
/// key type) sees them.
pub(crate) struct Wait {
    pub(crate) targets: Vec<Target>,
    pub(crate) sha: String,
    pub(crate) prober: probe::Prober,
}

pub(crate) struct WaitResult {
    pub(crate) waited: Waited,
    /// From the start of the wait until this one ended.
    pub(crate) ms: u64,
}

/// ONE concurrent wait over every `waits` entry (each: every target serves
/// its sha on `consecutive` fresh handshakes in a row), with at most
/// [`SITES_IN_FLIGHT`] entries waited on at once, all within the configured
/// deadline, on one current-thread runtime. The server is looked at every
/// [`ALIVE_EVERY`]: if it died, every entry still waiting fails with why.
///
/// `new`: the wait for the new leaves after the reload, which first passes
/// the gate of [`first_new_answer`].
pub(crate) fn wait_all(
    server: &dyn WebServer,
    pc: &ProbeConfig,
    waits: &[Wait],
    new: bool,
) -> Vec<WaitResult> {
    let started = Instant::now();
    let until = started + pc.deadline;
    let consecutive = pc.consecutive;
    let slots: Mutex<Vec<Option<(probe::WaitOutcome, u64)>>> =
        Mutex::new(waits.iter().map(|_| None).collect());

    let work = async {
        if new && waits.len() >= GATE_MIN_SITES {
            let opened = first_new_answer(waits, started + pc.deadline / 2).await;
            tracing::info!(phase = %"settle", ms = ms(started), opened, "batch phase");
        }
        if new {
            failpoint::hit("mid-probe");
        }
        // Old workers answering after a reload are a property of a socket,
        // not of a name: once `consecutive` fresh handshakes in a row for
        // several names on one address served their new leaves, the old
        // workers there no longer accept, and one matching fresh handshake
        // per site proves the rest. A site whose single check saw anything
        // else first is held to the full rule.
        let gated = new && consecutive > 1 && waits.len() >= GATE_MIN_SITES;
        let sliced = waits.len() < GATE_MIN_SITES;
        let (settled, first_looks) = if gated {
            // The gate only saves time: it must never eat the deadline of
            // the sites behind an address that does not settle (a load
            // balancer, a wrong port) — those get the full rule instead.
            let gate_until = until.min(Instant::now() + pc.deadline / GATE_DEADLINE_SHARE);
            // Meanwhile every site's single check. A match can only come
            // from a new worker (old ones hold the old config in memory),
            // so it counts once its address has settled; anything else is
            // checked again below.
            let all: Vec<(probe::Prober, Target)> = waits
                .iter()
                .flat_map(|w| w.targets.iter().map(|t| (w.prober.clone(), t.clone())))
                .collect();
            tokio::join!(
                settled_addrs(waits, consecutive, gate_until),
                first_looks_of(all)
            )
        } else {
            (HashSet::new(), Vec::new())
        };
        let mut first_looks = first_looks.into_iter();
        let mut tasks = tokio::task::JoinSet::new();
        let mut pending = waits.iter().enumerate();
        loop {
            while tasks.len() < SITES_IN_FLIGHT {
                let Some((i, w)) = pending.next() else { break };
                let looked: Vec<_> = first_looks.by_ref().take(w.targets.len()).collect();
                let settled_here = w.targets.iter().all(|t| settled.contains(&t.addr));
                let matched = !looked.is_empty()
                    && looked.len() == w.targets.len()
                    && looked
                        .iter()
                        .all(|r| r.as_ref().is_ok_and(|served| served.leaf.sha256 == w.sha));
                if settled_here && matched {
                    let o = probe::WaitOutcome {
                        ok: true,
                        handshakes: looked.len(),
                        last: looked,
                    };
                    lock(&slots)[i] = Some((o, ms(started)));
                    continue;
                }
                let prober = w.prober.clone();
                let targets = w.targets.clone();
                let sha = w.sha.clone();
                let left = until.saturating_duration_since(Instant::now());
                let quick = targets.iter().all(|t| settled.contains(&t.addr));
                tasks.spawn(async move {
                    if quick {
                        let o = probe::wait_until_served(&prober, &targets, &sha, 1, left).await;
                        // One handshake per target, each a match: proven.
                        if o.ok && o.handshakes == targets.len() {
                            return (i, o, ms(started));
                        }
                    }
                    // A small wait (one site's install or rollback) probes
                    // in slices: each starts again from the shortest
                    // backoff, so a leaf served right after a long run of
                    // old answers is seen within ~10 ms, not after a
                    // 250 ms pause. A big one keeps its backoff: fewer
                    // handshakes on a server still loading its config.
                    loop {
                        let left = until.saturating_duration_since(Instant::now());
                        let slice = match sliced {
                            true => left.min(ALIVE_EVERY),
                            false => left,
                        };
                        let o =
                            probe::wait_until_served(&prober, &targets, &sha, consecutive, slice)
                                .await;
                        if o.ok || Instant::now() >= until {
                            return (i, o, ms(started));
                        }
                    }
                });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            match joined {
                Ok((i, o, took)) => lock(&slots)[i] = Some((o, took)),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => {}
            }
        }
    };
    let watchdog = async {
        loop {
            tokio::time::sleep(ALIVE_EVERY).await;
            if let Err(e) = server.check_alive() {
                return e;
            }
        }
    };
    let died = probe::block_on(async {
        tokio::select! {
            () = work => None,
            e = watchdog => Some(e.to_string()),
        }
    });

    let slots = slots.into_inner().unwrap_or_else(|p| p.into_inner());
    waits
        .iter()
        .zip(slots)
        .map(|(w, slot)| {
            let Some((o, took)) = slot else {
                let why = died
                    .clone()
                    .unwrap_or_else(|| "the wait was cancelled".to_string());
                return WaitResult {
                    waited: Waited {
                        rows: Vec::new(),
                        failure: Some(why),
                    },
                    ms: ms(started),
                };
            };
            let rows = rows_of(&o, &w.targets);
            let failure = match (&died, o.ok) {
                // Seen served on consecutive handshakes before the server
                // died: proven.
                (_, true) => None,
                (Some(why), false) => Some(why.clone()),
                (None, false) => Some(describe_mismatch(
                    &o.last,
                    &w.targets,
                    &w.sha,
                    pc.deadline,
                    consecutive,
                )),
            };
            WaitResult {
                waited: Waited { rows, failure },
                ms: took,
            }
        })
        .collect()
}

/// [`wait_all`] for one set of targets that must serve `sha` as `prober`
/// sees them (the proofs of adopt and of the agent's drift repair).
pub(crate) fn wait_one(
    server: &dyn WebServer,
    pc: &ProbeConfig,
    prober: &probe::Prober,
    targets: &[Target],
    sha: &str,
) -> Waited {
    let wait = Wait {
        targets: targets.to_vec(),
        sha: sha.to_string(),
        prober: prober.clone(),
    };
    match wait_all(server, pc, &[wait], false).pop() {
        Some(w) => w.waited,
        None => unreachable!("wait_all gives one result per wait"),
    }
}

fn rows_of(o: &probe::WaitOutcome, targets: &[Target]) -> Vec<ServedRow> {
    o.last
        .iter()
        .zip(targets)
        .map(|(r, t)| ServedRow::of(t, r))
        .collect()
}

/// The addresses where old workers are gone: for each address, up to
/// `consecutive` sampled sites each served their new leaf on `consecutive`
/// fresh handshakes in a row (checked concurrently, bounded by `until`).
async fn settled_addrs(waits: &[Wait], consecutive: u32, until: Instant) -> HashSet<String> {
    let mut samples: HashMap<String, Vec<(Target, String, probe::Prober)>> = HashMap::new();
    for w in waits {
        for t in &w.targets {
            let list = samples.entry(t.addr.clone()).or_default();
            if list.len() < consecutive as usize {
                list.push((t.clone(), w.sha.clone(), w.prober.clone()));
            }
        }
    }
    // Every sample concurrently: each alone spans the time old workers
    // may linger (`consecutive` handshakes spaced by the probe engine).
    let mut checks = tokio::task::JoinSet::new();
    for (addr, list) in samples {
        for (t, sha, prober) in list {
            let addr = addr.clone();
            checks.spawn(async move {
                let left = until.saturating_duration_since(Instant::now());
                let o = probe::wait_until_served(
                    &prober,
                    std::slice::from_ref(&t),
                    &sha,
                    consecutive,
                    left,
                )
                .await;
                (addr, o.ok)
            });
        }
    }
    let mut failed = HashSet::new();
    let mut seen = HashSet::new();
    while let Some(r) = checks.join_next().await {
        if let Ok((addr, ok)) = r {
            if !ok {
                failed.insert(addr.clone());
            }
            seen.insert(addr);
        }
    }
    let settled: HashSet<String> = seen.difference(&failed).cloned().collect();
    settled
}

/// The gate of a big wait after a reload: look at a few sites, spread over
/// the batch, lightly until one of them answers with its new leaf (the
/// reloaded config is live), or until `until`. nginx and apache switch
/// every virtual host at once, and until then hundreds of waits polling
/// the old workers would take CPU from the server while it loads the new
/// config. Only an optimisation: every site is still proven on its own.
/// Measured: 4 full handshakes every ~25 ms before, one peek every 10 ms
/// now; settle median 1845 → 1764 ms over 8 batches of 1000 each
/// (docs/performance.md).
async fn first_new_answer(waits: &[Wait], until: Instant) -> bool {
    let step = (waits.len() / GATE_SAMPLE).max(1);
    let sample: Vec<(Target, String, probe::Prober)> = waits
        .iter()
        .step_by(step)
        .take(GATE_SAMPLE)
        .filter_map(|w| {
            w.targets
                .first()
                .map(|t| (t.clone(), w.sha.clone(), w.prober.clone()))
        })
        .collect();
    if sample.is_empty() {
        return false;
    }
    // One look every GATE_EVERY, the samples in turn, each a peek: the
    // server is loading its config on one core meanwhile, and the gate
    // only needs to see which leaf is served (every site is still proven
    // by full handshakes after it). A sample that does not answer holds
    // up only its own turn: a sample with a look in flight is skipped.
    let mut busy = vec![false; sample.len()];
    let mut next = 0;
    let mut tick = tokio::time::interval(GATE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut looks = tokio::task::JoinSet::new();
    let end = tokio::time::sleep_until(until.into());
    tokio::pin!(end);
    loop {
        tokio::select! {
            _ = tick.tick(), if busy.contains(&false) => {
                let mut turn = (0..sample.len()).map(|k| (next + k) % sample.len());
                let Some(i) = turn.find(|&i| !busy[i]) else { continue };
                next = i + 1;
                busy[i] = true;
                let (t, sha, prober) = sample[i].clone();
                // Bounded by the prober's timeout, and by `end`: returning
                // drops `looks`, which aborts the looks still in flight.
                looks.spawn(async move {
                    let new = matches!(
                        prober.peek(&t).await,
                        Ok(s) if s.leaf.sha256.eq_ignore_ascii_case(&sha)
                    );
                    (i, new)
                });
            }
            Some(r) = looks.join_next(), if !looks.is_empty() => match r {
                Ok((_, true)) => return true,
                Ok((i, false)) => busy[i] = false,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => {}
            },
            () = &mut end => return false,
        }
    }
}

pub(crate) fn ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

fn short(sha: &str) -> &str {
    sha.get(..16).unwrap_or(sha)
}
