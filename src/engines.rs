//! The bulk look on one probe engine per core: every target of a command
//! (`probe --targets`, `status --probe` and the agent's drift check, a
//! batch's look at what is already served) probed once.
//!
//! An engine is what [`crate::probe`] measured fastest: a current-thread
//! runtime driving its share of the handshakes in flight. Engines share no
//! runtime and wake no other thread; they only share the next index to
//! take, so a faster engine takes more. One engine is bound by its own
//! core (~0.16 ms of client CPU per handshake against nginx's ~0.18 ms):
//! beside a server on the same cores it leaves CPU idle that a second
//! engine uses (docs/performance.md, "Fifth pass").
//!
//! The wait after a reload makes its one look per site here too, beside
//! its gate (on an idle box no faster than one engine, on a busy one
//! ~0.1 s faster per 1000 sites: two threads' share of the cores, not
//! one); its repeated checks stay on its own runtime. What stays on one
//! engine: the look before a change (it runs at a low priority beside
//! the config test, [`crate::priority`]).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::par;
use crate::probe::{self, Look, ProbeError, Prober, Served, Target};

/// Below this many targets per engine a second engine costs more (a
/// thread, a runtime, its epoll) than it saves.
const MIN_TARGETS_PER_ENGINE: usize = 64;

/// At most this many engines, whatever the core count: past it the server
/// under test, not the client, is what a bulk look waits on.
const MAX_ENGINES: usize = 8;

/// Probe every target with `prober`, at most `concurrency` handshakes in
/// flight over all engines (0 is taken as 1); results in the order of
/// `targets`.
pub fn probe_all(
    prober: &Prober,
    targets: &[Target],
    concurrency: usize,
) -> Vec<Result<Served, ProbeError>> {
    probe_all_into(prober, targets, concurrency, |_, r| r)
}

/// [`probe_all`], each result handed to `keep` on its engine as soon as
/// its handshake ends (as [`probe_each_into`]): `probe --targets` renders
/// its rows there, beside the handshakes, instead of after the last one.
pub fn probe_all_into<R: Send>(
    prober: &Prober,
    targets: &[Target],
    concurrency: usize,
    keep: impl Fn(usize, Result<Served, ProbeError>) -> R + Sync,
) -> Vec<R> {
    run(targets.len(), concurrency, |i| (prober, &targets[i]), keep)
}

/// [`probe_all`] with a prober per target (each site's own key type,
/// [`probe::Probers`]), so one bulk look also covers the pairs of
/// dual-certificate sites.
pub fn probe_each(
    jobs: &[(Prober, Target)],
    concurrency: usize,
) -> Vec<Result<Served, ProbeError>> {
    probe_each_into(jobs, concurrency, |_, r| r)
}

/// [`probe_each`], each result handed to `keep` (with its index) on its
/// engine as soon as its handshake ends: what the caller keeps of it, in
/// input order. A caller that needs a few fields of 10,000 answers then
/// never holds 10,000 parsed chains at once (the agent's drift check).
pub fn probe_each_into<R: Send>(
    jobs: &[(Prober, Target)],
    concurrency: usize,
    keep: impl Fn(usize, Result<Served, ProbeError>) -> R + Sync,
) -> Vec<R> {
    run(jobs.len(), concurrency, |i| (&jobs[i].0, &jobs[i].1), keep)
}

/// How many engines a look at `n` targets with `concurrency` in flight
/// runs on: one per core this process may use, each with at least
/// [`MIN_TARGETS_PER_ENGINE`] targets and one handshake in flight.
pub fn count(n: usize, concurrency: usize) -> usize {
    par::cpu_threads()
        .min(MAX_ENGINES)
        .min(concurrency.max(1))
        .min(n / MIN_TARGETS_PER_ENGINE)
        .max(1)
}

fn run<'a, R: Send>(
    n: usize,
    concurrency: usize,
    job: impl Fn(usize) -> (&'a Prober, &'a Target) + Sync,
    keep: impl Fn(usize, Result<Served, ProbeError>) -> R + Sync,
) -> Vec<R> {
    if n == 0 {
        return Vec::new();
    }
    let engines = count(n, concurrency);
    // The in-flight bound is the caller's, over all engines.
    let each = concurrency.max(1).div_ceil(engines);
    let next = AtomicUsize::new(0);
    let engine = |_: usize| {
        let pending = std::iter::from_fn(|| {
            let i = next.fetch_add(1, Ordering::Relaxed);
            (i < n).then_some(i)
        });
        probe::block_on(probe::probe_jobs(
            pending,
            each,
            Look::Handshake,
            &job,
            &keep,
        ))
    };
    let done = par::map((0..engines).collect(), engines, engine);
    probe::in_order(n, done.into_iter().flatten(), &job, &keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_look_spreads_over_the_cores_only_when_each_engine_has_enough_to_do() {
        let cores = par::cpu_threads().min(MAX_ENGINES);
        assert_eq!(count(0, 64), 1);
        assert_eq!(count(1, 64), 1);
        assert_eq!(count(2 * MIN_TARGETS_PER_ENGINE - 1, 64), 1);
        assert_eq!(count(10_000, 64), cores);
        assert_eq!(count(10_000, 1), 1, "one in flight is one engine");
        assert_eq!(count(10_000, 0), 1);
    }
}
