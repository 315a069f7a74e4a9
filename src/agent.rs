//! `certswap run`: the daemon. It sleeps on a timer and on inbox events,
//! and each time it wakes it runs one *pass*:
//!
//! 1. host lock free? (another certswap changing files = skip this pass);
//!    on the first pass, repair every site from its journal;
//! 2. read the sources: inbox scans (every pass), HTTPS manifests (full
//!    passes, with backoff after failures);
//! 3. install everything ready as ONE batch ([`crate::batch::install_items`]:
//!    one config test, one reload, concurrent probes, per-site rollback);
//! 4. move inbox files to `done/` or `failed/`, remember manifest ETags;
//! 5. full passes only: expiry check (30 / 10 days / expired) and drift
//!    check (served ≠ on disk), reload and verify when `fix_drift = true`.
//!
//! Full passes run every `[agent] interval`, jittered ±10% so a fleet does
//! not hit its source in step; an inbox event runs an inbox-only pass after
//! the inbox's debounce.
//!
//! What the environment broke is tried again soon, not an interval later
//! (invariant 10): a bundle whose install failed on the config test, the
//! reload, the disk, an endpoint or the clock ([`Settlement::Retry`])
//! waits — logged, and `certswap_bundle_waiting{source,site,reason}` — and
//! a *retry pass* runs after 30 s, 60 s, … at most the interval (a
//! certificate not valid yet: at its notBefore). Its manifest's ETag is
//! not saved meanwhile, so a restart tries it too. Only a verdict on the
//! bytes ([`Settlement::Refused`]) refuses them. A pass that could not run
//! at all (state dir, work dir, descriptors) is run again after 2 s, 4 s,
//! … at most a minute. SIGTERM/SIGINT let the pass in flight finish (an
//! install is finished or rolled back, never cut) and exit 0; SIGHUP
//! re-reads the config. Metrics are served on `metrics_listen`.
//!
//! The loop itself is async on a current-thread runtime (signals, timers,
//! the metrics endpoint); a pass is blocking code on the blocking pool, as
//! the install pipeline is.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use time::OffsetDateTime;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::batch::{self, Item};
use crate::config::{AcmeSource, CloudSource, Config, InboxSource, SourceConfig};
use crate::install::{Env, InstallError};
use crate::metrics::WaitingLabel;
use crate::metrics::{Metrics, ResultLabel, SiteLabel};
use crate::probe;
use crate::report::{Outcome, ResultKind, Retryable, Settlement};
use crate::server;
use crate::source::acme;
use crate::source::cloud;
use crate::source::http::{self, FetchError, HttpState};
use crate::source::inbox::{self, Found};
use crate::source::{self as src, Candidate, WorkDir};
use crate::status;
use crate::store::{Store, StoreError};

/// Why the agent could not start or had to stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot listen for metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up the agent: {what}: {source}")]
    Setup {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("a pass of the agent crashed: {0}")]
    Crashed(String),
    #[error("{0}")]
    Inbox(#[from] inbox::InboxError),
}

/// Options of `certswap run` that are not config.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// One pass, then exit.
    pub once: bool,
}

/// Log line format of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One line per event, for people (the default).
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// How many handshakes the drift check keeps in flight.
const DRIFT_CONCURRENCY: usize = 64;
/// A pass that could not run is tried again after this, doubling…
const PASS_RETRY_FIRST: Duration = Duration::from_secs(2);
/// …up to this (or the interval, if shorter).
const PASS_RETRY_MAX: Duration = Duration::from_secs(60);
/// A pass re-checks its stop flag this often while waiting on the network.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Run the agent with the config at `config_path` (re-read on SIGHUP),
/// logging human-readable lines at `info` (or `CERTSWAP_LOG`) to stderr.
pub fn run(config_path: &Path, opts: RunOptions) -> Result<(), AgentError> {
    run_logged(config_path, opts, LogFormat::Human)
}

/// [`run`] with the log format of `--log-format`. A daemon logs at `info`
/// by default (the CLI's default is `warn`); `CERTSWAP_LOG` overrides.
pub fn run_logged(
    config_path: &Path,
    opts: RunOptions,
    format: LogFormat,
) -> Result<(), AgentError> {
    let dispatch = log_dispatch(format);
    tracing::dispatcher::with_default(&dispatch, || run_inner(config_path, opts))
}

fn log_dispatch(format: LogFormat) -> tracing::Dispatch {
    use tracing_subscriber::EnvFilter;
    let filter =
        || EnvFilter::try_from_env("CERTSWAP_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    match format {
        LogFormat::Human => tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                // Colours for a terminal only (not journald or a file), and
                // never with NO_COLOR.
                .with_ansi(crate::report::colour_stderr())
                .with_env_filter(filter())
                .finish(),
        ),
        LogFormat::Json => tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .json()
                .with_ansi(false)
                .with_writer(std::io::stderr)
                .with_env_filter(filter())
                .finish(),
        ),
    }
}

fn run_inner(config_path: &Path, opts: RunOptions) -> Result<(), AgentError> {
    bound_the_heap();
    // One provider for rustls and reqwest, before any client is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The agent opens the host here: endpoints left out are discovered.
    let cfg = crate::host::load(config_path)?;
    // An inbox that is the server's certificate directory would have its
    // live files moved away: refused before anything runs.
    inbox::check_placement(&cfg)?;
    Store::open(&cfg.state_dir)?;
    WorkDir::clean_stale(&cfg.state_dir);
    let agent = Agent::new(config_path, cfg);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| AgentError::Setup {
            what: "tokio runtime",
            source,
        })?;
    rt.block_on(main_loop(agent, opts.once))
}

/// glibc malloc settings for a long-lived agent, set before any thread
/// starts. Measured at 10,000 sites (RSS after pass 1 / pass 10,
/// docs/performance.md "Agent RSS"): 52 / 56 MB with the defaults, 44 /
/// 44 with a fixed mmap threshold, 43 / 44 with one arena, 35 / 36 with
/// both. The causes:
/// - glibc raises its mmap threshold to the size of each large block
///   freed (up to 32 MB), so later large blocks — the TOML parse of the
///   config (a 13 MB token list), each metrics scrape (~5 MB of text), a
///   pass's 10,000-row vectors — come from the heap, whose pages stay
///   resident after they are freed. A fixed threshold keeps them in
///   their own mappings, given back at free.
/// - each thread that allocates (the runtime's, the pass thread, the
///   watcher) gets its own arena, and each keeps its own freed pages;
///   the agent does not allocate from threads at once enough for one
///   arena to be contended.
fn bound_the_heap() {
    /// Blocks from this size on get their own mapping (glibc's initial
    /// default, no longer raised).
    const MMAP_THRESHOLD: i32 = 128 * 1024;
    // SAFETY: mallopt only changes the allocator's parameters; called
    // first in `certswap run`, before the agent starts any thread. A
    // refused setting (return 0) leaves glibc's default.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// What the agent keeps between passes.
struct Agent {
    config_path: PathBuf,
    /// Shared with each pass: a pass holds it without a copy of every
    /// site (at 10,000 sites, with the per-server copy below, ~14 MB of
    /// the agent's RSS).
    cfg: Arc<Config>,
    host_id: String,
    metrics: Arc<Metrics>,
    /// Per HTTP source, by name.
    http: HashMap<String, HttpState>,
    /// Every site was repaired from its journal once.
    recovered: bool,
    /// (site, leaf SHA-256) from a certbot/acme.sh store that an install
    /// rejected: not offered again until the client renews.
    acme_refused: HashSet<(String, String)>,
    /// Passes in a row that could not run (their retry backs off).
    pass_failures: u32,
    /// Per inbox source: retries in a row of bundles left in the inbox.
    inbox_failures: HashMap<String, u32>,
    /// `certswap_bundle_waiting` rows set per source, to clear them later.
    waiting_shown: HashMap<String, Vec<WaitingLabel>>,
    /// The last pass's probers: the next one carries over the trust
    /// verdicts it used ([`crate::host::probers_after`]).
    probers: Option<crate::probe::Probers>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PassKind {
    /// Every source, expiry and drift.
    Full,
    /// The inbox only (after an inbox event).
    Inbox,
    /// The inbox and the HTTP sources whose retry is due.
    Retry,
}

#[derive(Debug, Default)]
struct PassReport {
    /// When an inbox group that was still being written should be seen again.
    inbox_recheck: Option<SystemTime>,
    /// When a waiting bundle (or a failed fetch) should be tried again.
    retry_at: Option<SystemTime>,
    /// The pass could not run: run it again soon.
    failed: bool,
}

impl PassReport {
    fn retry_by(&mut self, t: SystemTime) {
        self.retry_at = Some(self.retry_at.map_or(t, |r| r.min(t)));
    }
}

impl Agent {
    fn new(config_path: &Path, cfg: Config) -> Agent {
        let cfg = Arc::new(cfg);
        let mut a = Agent {
            config_path: config_path.to_path_buf(),
            host_id: String::new(),
            cfg: cfg.clone(),
            metrics: Arc::new(Metrics::new()),
            http: HashMap::new(),
            recovered: false,
            acme_refused: HashSet::new(),
            pass_failures: 0,
            inbox_failures: HashMap::new(),
            waiting_shown: HashMap::new(),
            probers: None,
        };
        a.apply(cfg);
        a
    }

    /// Take `cfg` as the config (start and SIGHUP): host id, source states.
    fn apply(&mut self, cfg: Arc<Config>) {
        self.host_id = host_id(&cfg);
        self.metrics.set_host_id(&self.host_id);
        let mut http = HashMap::new();
        for s in &cfg.sources {
            if let SourceConfig::Http(h) = s {
                let state = match self.http.remove(&h.name) {
                    Some(old) => old,
                    None => HttpState::load(&cfg.state_dir, h),
                };
                http.insert(h.name.clone(), state);
            }
        }
        self.http = http;
        // Every source's error counter exists from the start (at 0), so
        // `rate()` and `increase()` see the first error.
        for s in &cfg.sources {
            let _ = self
                .metrics
                .source_errors
                .get_or_create(&crate::metrics::SourceLabel {
                    source: s.name().to_string(),
                });
        }
        self.cfg = cfg;
    }

    /// SIGHUP: re-read the config; a broken file keeps the old config.
    fn reload(&mut self) {
        let loaded = crate::host::load(&self.config_path).map_err(|e| e.to_string());
        let checked = loaded.and_then(|cfg| {
            inbox::check_placement(&cfg)
                .map(|()| cfg)
                .map_err(|e| e.to_string())
        });
        match checked {
            Ok(cfg) => {
                if cfg.agent.metrics_listen != self.cfg.agent.metrics_listen {
                    tracing::warn!(
                        "agent.metrics_listen changed: it takes effect when the agent restarts"
                    );
                }
                self.apply(Arc::new(cfg));
                // An operator's SIGHUP often follows a fix: try every
                // source now instead of waiting out its backoff.
                for state in self.http.values_mut() {
                    state.retry_at = None;
                }
                tracing::info!(config = %self.config_path.display(), "config re-read (SIGHUP)");
            }
            Err(e) => tracing::error!("config not re-read, keeping the one in use: {e}"),
        }
    }

    fn inbox_debounce(&self) -> Duration {
        self.cfg
            .sources
            .iter()
            .filter_map(|s| match s {
                SourceConfig::Inbox(i) => Some(i.debounce),
                SourceConfig::Http(_) | SourceConfig::Acme(_) | SourceConfig::Cloud(_) => None,
            })
            .max()
            .unwrap_or(Duration::from_secs(2))
    }

    /// One pass (steps 1–5 of the module doc). Blocking.
    fn pass(&mut self, kind: PassKind, stop: &AtomicBool) -> PassReport {
        let mut report = PassReport::default();
        self.metrics.passes.inc();
        let cfg = Arc::clone(&self.cfg);
        let store = match Store::open(&cfg.state_dir) {
            Ok(s) => s,
            Err(e) => return self.pass_failed(report, &e.to_string()),
        };
        let probers = match crate::host::probers_after(&cfg, self.probers.as_ref()) {
            Ok(p) => p,
            Err(e) => return self.pass_failed(report, &e.to_string()),
        };
        self.probers = Some(probers.clone());
        let server = server::from_config(&cfg.server);
        let env = Env {
            config: &cfg,
            server: server.as_ref(),
            probers: &probers,
            store: &store,
        };
        // One batch per server (issue 18): each `[[server]]` with its own
        // sites, config test and reload (none for haproxy). The whole
        // config (`env`) reads the sources, whose bundles may be for any.
        // With one server its scoped config is the whole one: borrowed,
        // not copied.
        let per_server: Vec<Config> = match cfg.servers.len() {
            1 => Vec::new(),
            _ => cfg.per_server(),
        };
        let scoped: Vec<(&Config, Box<dyn server::WebServer>)> = match per_server.is_empty() {
            true => vec![(&*cfg, server::from_config(&cfg.server))],
            false => per_server
                .iter()
                .map(|c| (c, server::from_config(&c.server)))
                .collect(),
        };
        let envs: Vec<Env<'_>> = scoped
            .iter()
            .map(|(c, s)| Env {
                config: c,
                server: s.as_ref(),
                probers: &probers,
                store: &store,
            })
            .collect();

        // 1. the host lock: busy means another certswap is changing files.
        match store.lock() {
            Ok(lock) => {
                if !self.recovered {
                    self.recovered = true;
                    for e in &envs {
                        if let Err(err) = batch::recover_host(e) {
                            self.recovered = false;
                            tracing::error!("repair from the journals failed: {err}");
                        }
                    }
                }
                drop(lock);
            }
            Err(StoreError::Locked { .. }) => {
                tracing::info!(
                    "another certswap holds the host lock; this pass is skipped and runs again in a few seconds"
                );
                self.metrics.skipped_passes.inc();
                let again = SystemTime::now() + self.inbox_debounce().max(Duration::from_secs(5));
                if kind == PassKind::Inbox {
                    report.inbox_recheck = Some(again);
                } else {
                    report.failed = true;
                    report.retry_by(again);
                }
                return report;
            }
            Err(e) => return self.pass_failed(report, &e.to_string()),
        }

        let work = match WorkDir::create(&cfg.state_dir) {
            Ok(w) => w,
            Err(e) => {
                let why = format!(
                    "cannot create a private work directory under {}: {e}",
                    WorkDir::root(&cfg.state_dir).display()
                );
                return self.pass_failed(report, &why);
            }
        };
        self.pass_failures = 0;

        // 2. sources.
        let mut pending: Vec<Pending> = Vec::new();
        // HTTP sources read in this pass (their bookkeeping ends it).
        let mut fetched: Vec<String> = Vec::new();
        for s in &cfg.sources {
            match s {
                SourceConfig::Inbox(i) => {
                    if let Some(at) = self.read_inbox(i, &cfg, &work, &mut pending) {
                        report.inbox_recheck = Some(report.inbox_recheck.map_or(at, |r| r.min(at)));
                    }
                }
                SourceConfig::Http(h) if kind != PassKind::Inbox => {
                    if self.read_http(h, kind, &cfg, &work, stop, &mut pending) {
                        fetched.push(h.name.clone());
                    }
                }
                SourceConfig::Http(_) => {}
                // Cheap when nothing was renewed (one read per lineage):
                // every pass, as the inbox.
                SourceConfig::Acme(a) => self.read_acme(a, &cfg, &work, &mut pending),
                // API calls per look: full passes (once an interval) and
                // retry passes (a bundle of it may wait), not inbox events.
                SourceConfig::Cloud(c) if kind != PassKind::Inbox => {
                    self.read_cloud(c, &cfg, &work, stop, &mut pending)
                }
                SourceConfig::Cloud(_) => {}
            }
        }

        // 3–4. one batch, then each bundle's bookkeeping.
        let mut inbox_waiting = InboxWaiting::new();
        if stop.load(Ordering::SeqCst) {
            tracing::info!("stopping: the bundles found in this pass are left for the next start");
        } else if self.install(&env, &envs, pending, &mut inbox_waiting) {
            // The lock was taken between our look and the batch: soon again.
            let at = SystemTime::now() + self.inbox_debounce().max(Duration::from_secs(5));
            report.inbox_recheck = Some(report.inbox_recheck.map_or(at, |r| r.min(at)));
        }
        // What waits, and when it is tried again.
        for name in &fetched {
            if let Some(at) = self.finish_http_source(name, cfg.agent.interval) {
                report.retry_by(at);
            }
        }
        for s in &cfg.sources {
            let (name, kept) = match s {
                SourceConfig::Inbox(i) => (&i.name, "it stays in the inbox"),
                SourceConfig::Acme(a) => (&a.name, "the ACME client's store keeps it"),
                SourceConfig::Cloud(c) => (&c.name, "the vendor keeps it"),
                SourceConfig::Http(_) => continue,
            };
            let waiting = inbox_waiting.remove(name).unwrap_or_default();
            if let Some(at) = self.finish_inbox_source(name, kept, waiting, cfg.agent.interval) {
                report.retry_by(at);
            }
        }

        self.renewal_waiting(&cfg);

        // 5. expiry (metrics every pass, so an install shows at once; the
        //    log lines on full passes) and drift.
        self.expiry(&cfg, kind == PassKind::Full);
        if kind == PassKind::Full && !stop.load(Ordering::SeqCst) {
            for e in &envs {
                self.drift(e);
            }
        }
        self.metrics.last_pass.set(crate::metrics::now_unix());
        report
    }

    /// The pass could not run (its state dir, the prober, a work
    /// directory; often: no descriptors left). Say so, count it, and have
    /// it run again within seconds, not an interval later.
    fn pass_failed(&mut self, mut report: PassReport, why: &str) -> PassReport {
        self.pass_failures = self.pass_failures.saturating_add(1);
        let wait = PASS_RETRY_FIRST
            .saturating_mul(1u32 << self.pass_failures.saturating_sub(1).min(16))
            .min(PASS_RETRY_MAX)
            .min(self.cfg.agent.interval.max(Duration::from_secs(1)));
        tracing::error!("pass skipped: {why}; trying again in {}", secs(wait));
        self.metrics.failed_passes.inc();
        report.failed = true;
        report.retry_by(SystemTime::now() + wait);
        report
    }

    /// End of a pass for an HTTP source that was read: back off while
    /// anything of it waits, show what waits (log and metric), forget the
    /// backoff once everything is settled. Returns when to try again.
    fn finish_http_source(&mut self, name: &str, interval: Duration) -> Option<SystemTime> {
        let state = self.http.get_mut(name)?;
        let waiting: Vec<(String, &'static str, String)> = state
            .waiting
            .iter()
            .map(|(site, (reason, why))| (site.clone(), *reason, why.clone()))
            .collect();
        let labels = waiting
            .iter()
            .map(|(site, reason, _)| WaitingLabel {
                source: name.to_string(),
                site: site.clone(),
                reason: reason.to_string(),
            })
            .collect();
        self.show_waiting(name, labels);
        let state = self.http.get_mut(name)?;
        if waiting.is_empty() && !state.fetch_failed {
            state.succeeded();
            return None;
        }
        let now = SystemTime::now();
        let not_before = state.not_before.take();
        state.failed(now, interval);
        if let Some(nb) = not_before {
            // Valid from then on (one second later, for clocks that round).
            state.retry_by(nb.max(now) + Duration::from_secs(1));
        }
        let at = state.retry_at?;
        let wait = secs(at.duration_since(now).unwrap_or_default());
        for (site, reason, why) in &waiting {
            tracing::warn!(
                source = %name, site = %site, reason = %reason,
                "bundle waiting: {why}; it is not refused, trying again in {wait}"
            );
        }
        Some(at)
    }

    /// End of a pass for an inbox: bundles left in it for a retry are shown
    /// and back off like an HTTP source's. Returns when to look again.
    fn finish_inbox_source(
        &mut self,
        name: &str,
        kept: &str,
        waiting: Vec<(String, Retryable, String)>,
        interval: Duration,
    ) -> Option<SystemTime> {
        let labels = waiting
            .iter()
            .map(|(site, why, _)| WaitingLabel {
                source: name.to_string(),
                site: site.clone(),
                reason: why.as_str().to_string(),
            })
            .collect();
        self.show_waiting(name, labels);
        if waiting.is_empty() {
            self.inbox_failures.remove(name);
            return None;
        }
        let n = self.inbox_failures.entry(name.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let wait = http::RETRY_FIRST
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(interval.max(Duration::from_secs(1)));
        for (site, reason, why) in &waiting {
            tracing::warn!(
                source = %name, site = %site, reason = reason.as_str(),
                "bundle waiting: {why}; {kept}, trying again in {}", secs(wait)
            );
        }
        Some(SystemTime::now() + wait)
    }

    /// Replace the `certswap_bundle_waiting` rows of `source` with `labels`.
    fn show_waiting(&mut self, source: &str, labels: Vec<WaitingLabel>) {
        for old in self.waiting_shown.remove(source).unwrap_or_default() {
            self.metrics.bundle_waiting.remove(&old);
        }
        for l in &labels {
            self.metrics.bundle_waiting.get_or_create(l).set(1);
        }
        if !labels.is_empty() {
            self.waiting_shown.insert(source.to_string(), labels);
        }
    }

    /// Scan one inbox: refused bundles go to `failed/` now, ready ones to
    /// `pending`. Returns when to look again at groups still being written.
    fn read_inbox(
        &self,
        i: &InboxSource,
        cfg: &Config,
        work: &WorkDir,
        pending: &mut Vec<Pending>,
    ) -> Option<SystemTime> {
        if let Err(e) = src::mkdir_private_all(&i.path) {
            tracing::error!(source = %i.name, "cannot create the inbox {}: {e}", i.path.display());
            self.metrics.source_error(&i.name);
            return None;
        }
        // Only root may be able to put files here (docs/reliability.md).
        if let Err(e) = inbox::check_dirs(i) {
            tracing::error!(source = %i.name, "{e}");
            self.metrics.source_error(&i.name);
            return None;
        }
        let scan = match inbox::scan(i, cfg, work, SystemTime::now()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(source = %i.name, "cannot read the inbox {}: {e}", i.path.display());
                self.metrics.source_error(&i.name);
                return None;
            }
        };
        self.metrics.source_ok(&i.name);
        for (found, why) in scan.refused {
            tracing::warn!(source = %i.name, bundle = %found.label, "refused: {why}");
            self.metrics.source_error(&i.name);
            quarantine(i, cfg, &found, &why);
        }
        for (found, why) in scan.left {
            tracing::warn!(source = %i.name, bundle = %found.label, "not installed and left where it is: {why}");
            self.metrics.source_error(&i.name);
        }
        for (found, why) in scan.waiting {
            tracing::info!(source = %i.name, bundle = %found.label, "waiting: {why} (write to a dot-file and rename it into the inbox)");
        }
        for (found, candidate) in scan.ready {
            tracing::info!(source = %i.name, bundle = %found.label, site = %candidate.site, "bundle ready");
            pending.push(Pending {
                candidate,
                origin: Origin::Inbox {
                    source: i.clone(),
                    found,
                },
            });
        }
        scan.recheck_at
    }

    /// Read one certbot/acme.sh store: every site whose lineage holds a
    /// newer certificate than the installed one gets it in `pending` (a
    /// lineage already installed costs no install).
    fn read_acme(&self, a: &AcmeSource, cfg: &Config, work: &WorkDir, pending: &mut Vec<Pending>) {
        let list = match acme::scan(a) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(source = %a.name, "{e}");
                self.metrics.source_error(&a.name);
                return;
            }
        };
        let mut ok = true;
        let mut lineages = Vec::new();
        for r in list {
            match r {
                Ok(l) => lineages.push(l),
                // certbot moving its links: seen again on the next pass.
                Err(e @ acme::AcmeError::InProgress { .. }) => {
                    tracing::info!(source = %a.name, "{e}")
                }
                Err(e) => {
                    tracing::warn!(source = %a.name, "{e}");
                    ok = false;
                }
            }
        }
        for n in acme::newer_for_sites(cfg, &lineages) {
            let sha = n.lineage.leaf.sha256.clone();
            if self
                .acme_refused
                .contains(&(n.site.name.clone(), sha.clone()))
            {
                continue;
            }
            match acme::candidate(&n, work) {
                Ok(candidate) => {
                    tracing::info!(
                        source = %a.name, lineage = %n.lineage.label, site = %n.site.name,
                        "the ACME client holds a newer certificate than the installed one"
                    );
                    pending.push(Pending {
                        candidate,
                        origin: Origin::Acme {
                            source: a.name.clone(),
                            cert_sha256: sha,
                        },
                    });
                }
                Err(e @ acme::AcmeError::InProgress { .. }) => {
                    tracing::info!(source = %a.name, "{e}")
                }
                Err(e) => {
                    tracing::warn!(source = %a.name, site = %n.site.name, "{e}");
                    ok = false;
                }
            }
        }
        if ok {
            self.metrics.source_ok(&a.name);
        } else {
            self.metrics.source_error(&a.name);
        }
    }

    /// Look at one vendor account (Alibaba Cloud CAS, Tencent Cloud SSL):
    /// every site whose newest issued certificate ends later than the
    /// installed one gets it in `pending`, checked. An authentication error
    /// is one sentence naming the source, once per pass; the installed
    /// certificates stay.
    fn read_cloud(
        &self,
        c: &CloudSource,
        cfg: &Config,
        work: &WorkDir,
        stop: &AtomicBool,
        pending: &mut Vec<Pending>,
    ) {
        let secret = match cloud::read_secret(c) {
            Ok(s) => s,
            Err(e @ cloud::CloudError::Unsafe(_)) => {
                tracing::error!(source = %c.name, "source skipped: {e}; nothing is fetched from it until that is fixed");
                self.metrics.source_error(&c.name);
                self.metrics.source_skipped(&c.name, "unsafe_file", true);
                return;
            }
            Err(e) => {
                tracing::error!(source = %c.name, "{e}");
                self.metrics.source_error(&c.name);
                return;
            }
        };
        self.metrics.source_skipped(&c.name, "unsafe_file", false);
        let refused = &self.acme_refused;
        let skip = |site: &str, id: &str| refused.contains(&(site.to_string(), format!("id:{id}")));
        let scanned = probe::block_on(or_stop(cloud::scan(c, cfg, &secret, work, &skip), stop));
        drop(secret);
        let scan = match scanned {
            None => {
                tracing::info!(source = %c.name, "stopping: the look at the vendor was abandoned");
                return;
            }
            Some(Err(e @ cloud::CloudError::Transient { .. })) => {
                tracing::warn!(source = %c.name, "{e}; keeping the installed certificates, trying again on the next pass");
                self.metrics.source_error(&c.name);
                return;
            }
            Some(Err(e)) => {
                tracing::error!(source = %c.name, "{e}; the installed certificates stay");
                self.metrics.source_error(&c.name);
                return;
            }
            Some(Ok(s)) => s,
        };
        for (site, why) in &scan.skipped {
            tracing::info!(source = %c.name, site = %site, "nothing to install: {why}");
        }
        for why in &scan.refused {
            tracing::warn!(source = %c.name, "{why}");
        }
        if scan.refused.is_empty() {
            self.metrics.source_ok(&c.name);
        } else {
            self.metrics.source_error(&c.name);
        }
        for (candidate, _sha, id) in scan.found {
            tracing::info!(source = %c.name, site = %candidate.site, certificate = %id, "the vendor holds a newer certificate than the installed one");
            pending.push(Pending {
                candidate,
                origin: Origin::Cloud {
                    source: c.clone(),
                    id,
                },
            });
        }
    }

    /// `certswap_renewal_waiting{site}`: 1 while the ACME client holds a
    /// newer certificate than the one installed (what `status` shows).
    fn renewal_waiting(&self, cfg: &Config) {
        let waiting = acme::waiting(cfg);
        for site in &cfg.sites {
            let w = waiting.iter().any(|w| w.site == site.name);
            self.metrics
                .renewal_waiting
                .get_or_create(&SiteLabel {
                    site: site.name.clone(),
                })
                .set(i64::from(w));
        }
    }

    /// Fetch one manifest (with backoff and the stop flag). True when it
    /// was read, so the end of the pass does its bookkeeping
    /// ([`Agent::finish_http_source`]).
    fn read_http(
        &mut self,
        h: &crate::config::HttpSource,
        kind: PassKind,
        cfg: &Config,
        work: &WorkDir,
        stop: &AtomicBool,
        pending: &mut Vec<Pending>,
    ) -> bool {
        let Some(state) = self.http.get_mut(&h.name) else {
            return false;
        };
        let now = SystemTime::now();
        if kind == PassKind::Retry && state.retry_at.is_none() {
            return false;
        }
        if !state.due(now) {
            if kind == PassKind::Full {
                let wait = state
                    .retry_at
                    .and_then(|t| t.duration_since(now).ok())
                    .unwrap_or_default();
                tracing::info!(source = %h.name, "backing off after {} failures; next try in {}", state.failures, secs(wait));
            }
            return false;
        }
        let fetched = probe::block_on(or_stop(
            http::fetch(h, state, cfg, &self.host_id, work),
            stop,
        ));
        let Some(fetched) = fetched else {
            tracing::info!(source = %h.name, "stopping: the fetch was abandoned");
            return false;
        };
        state.fetch_failed = false;
        state.not_before = None;
        if !matches!(fetched, Err(FetchError::Unsafe(_))) {
            self.metrics.source_skipped(&h.name, "unsafe_file", false);
        }
        match fetched {
            Err(FetchError::Unsafe(e)) => {
                tracing::error!(source = %h.name, "source skipped: {e}; nothing is fetched from it until that is fixed");
                self.metrics.source_error(&h.name);
                self.metrics.source_skipped(&h.name, "unsafe_file", true);
                // Looked at again on the next full pass.
                state.retry_at = None;
                false
            }
            Err(e @ FetchError::Transient(_)) => {
                tracing::warn!(source = %h.name, "{e}; keeping the installed certificate, retrying on a later pass");
                self.metrics.source_error(&h.name);
                // What waited still waits; the end of the pass backs off.
                state.fetch_failed = true;
                true
            }
            Err(e) => {
                // Only a new manifest or config fixes it: the next full pass.
                tracing::warn!(source = %h.name, "{e}");
                self.metrics.source_error(&h.name);
                state.waiting.clear();
                true
            }
            Ok(f) if f.not_modified => {
                tracing::info!(source = %h.name, "the manifest is not modified (304)");
                self.metrics.source_ok(&h.name);
                // Its ETag is saved only once nothing of it waited.
                state.waiting.clear();
                true
            }
            Ok(f) => {
                state.waiting.clear();
                for why in &f.permanent {
                    tracing::warn!(source = %h.name, "{why}");
                    self.metrics.source_error(&h.name);
                }
                for (site, why) in &f.transient {
                    tracing::warn!(source = %h.name, "{why}; keeping the installed certificate, retrying on a later pass");
                    self.metrics.source_error(&h.name);
                    state
                        .waiting
                        .insert(site.clone(), (Retryable::Source.as_str(), why.clone()));
                }
                let complete = f.transient.is_empty();
                if complete {
                    self.metrics.source_ok(&h.name);
                }
                let run = Arc::new(HttpRun {
                    source: h.clone(),
                    etag: f.etag,
                    complete: AtomicBool::new(complete),
                });
                if f.candidates.is_empty() {
                    finish_http(&run, &cfg.state_dir, state);
                }
                for c in f.candidates {
                    tracing::info!(source = %h.name, site = %c.candidate.site, "bundle downloaded and checked");
                    pending.push(Pending {
                        candidate: c.candidate,
                        origin: Origin::Http {
                            run: run.clone(),
                            cert_sha256: c.cert_sha256,
                            not_before: c.not_before,
                        },
                    });
                }
                true
            }
        }
    }

    /// Step 3–4: install the ready bundles as one batch and settle each.
    /// True when the batch found the host lock taken (try again soon).
    /// Inbox bundles left for a retry are added to `inbox_waiting`.
    fn install(
        &mut self,
        env: &Env<'_>,
        envs: &[Env<'_>],
        pending: Vec<Pending>,
        inbox_waiting: &mut InboxWaiting,
    ) -> bool {
        let mut lock_busy = false;
        // The manifests these bundles came from: their ETag is remembered
        // at the end if every bundle of theirs was settled.
        let mut runs: Vec<Arc<HttpRun>> = Vec::new();
        for p in &pending {
            if let Origin::Http { run, .. } = &p.origin
                && !runs.iter().any(|r| Arc::ptr_eq(r, run))
            {
                runs.push(run.clone());
            }
        }
        // One bundle per site per batch; another for the same site waits
        // for the next pass.
        let mut seen = HashSet::new();
        let mut items_of: Vec<Pending> = Vec::new();
        let mut deferred: Vec<Pending> = Vec::new();
        for p in pending {
            if seen.insert(p.candidate.site.clone()) {
                items_of.push(p);
            } else {
                tracing::info!(site = %p.candidate.site, "a second bundle for the same site waits for the next pass");
                deferred.push(p);
            }
        }
        // Already installed: same leaf on disk (an inbox copy of what is there).
        let mut todo = Vec::new();
        for p in items_of {
            let site = env.config.site(&p.candidate.site).ok();
            let installed = site.and_then(src::installed_leaf_sha256);
            if installed.is_some() && installed == p.candidate.leaf_sha256 {
                tracing::info!(site = %p.candidate.site, "this certificate is installed already; nothing to do");
                self.settle(&p, None, inbox_waiting);
            } else {
                todo.push(p);
            }
        }
        for p in &deferred {
            self.wait(
                p,
                Retryable::Busy,
                "another bundle for the same site was installed first in this pass",
                inbox_waiting,
            );
        }
        // One batch per server, each over its own sites (`envs`).
        for e in envs {
            let group: Vec<&Pending> = todo
                .iter()
                .filter(|p| e.config.site(&p.candidate.site).is_ok())
                .collect();
            if group.is_empty() {
                continue;
            }
            let mut items = Vec::new();
            for p in &group {
                // Matched against this config in this pass: always found.
                if let Ok(site) = e.config.site(&p.candidate.site) {
                    items.push(Item {
                        site,
                        files: p.candidate.files(),
                    });
                }
            }
            tracing::info!(
                bundles = items.len(),
                server = %e.config.server.name,
                "installing as one batch"
            );
            let result = batch::install_items(e, &items, false, false);
            lock_busy |= self.settle_batch(e, &group, result, inbox_waiting);
        }
        for run in runs {
            if let Some(state) = self.http.get_mut(&run.source.name) {
                finish_http(&run, &env.config.state_dir, state);
            }
        }
        lock_busy
    }

    /// The bookkeeping of one server's batch: each bundle's outcome, or
    /// (the batch could not run) why they all wait. True when the host
    /// lock was busy.
    fn settle_batch(
        &mut self,
        env: &Env<'_>,
        group: &[&Pending],
        result: Result<Vec<Outcome>, InstallError>,
        inbox_waiting: &mut InboxWaiting,
    ) -> bool {
        let mut busy = false;
        match result {
            Ok(outcomes) => {
                for (p, out) in group.iter().zip(outcomes) {
                    if out.result == ResultKind::Verified {
                        // A failed deploy hook of this site is settled.
                        crate::hook::clear_failure(&env.config.state_dir, &out.site);
                    }
                    self.record(&out, &p.candidate);
                    self.settle(p, Some(&out), inbox_waiting);
                }
            }
            Err(InstallError::Store(StoreError::Locked { .. })) => {
                tracing::info!(
                    "another certswap took the host lock; the bundles wait for the next pass"
                );
                self.metrics.skipped_passes.inc();
                for p in group {
                    self.wait(
                        p,
                        Retryable::Busy,
                        "another certswap held the host lock",
                        inbox_waiting,
                    );
                }
                busy = true;
            }
            Err(e) => {
                // Nothing of the bundles was judged: the environment failed.
                tracing::error!("the batch could not run; its bundles wait for a retry: {e}");
                let why = match &e {
                    InstallError::NotServing { .. } => Retryable::Endpoint,
                    InstallError::Store(_) => Retryable::Disk,
                    InstallError::Recover { .. } => Retryable::Reload,
                    _ => Retryable::Busy,
                };
                let sentence = e.to_string();
                for p in group {
                    self.metrics.site_error(&p.candidate.site);
                    self.wait(p, why, &sentence, inbox_waiting);
                }
            }
        }
        busy
    }

    /// Metrics and a log line for one outcome.
    fn record(&self, out: &Outcome, candidate: &Candidate) {
        let result = match out.result {
            ResultKind::Verified => "verified",
            ResultKind::RolledBack => "rolled_back",
            ResultKind::Rejected => "rejected",
            ResultKind::DryRun => "dry_run",
            ResultKind::Valid => "valid",
            ResultKind::AlreadyInstalled => "already_installed",
        };
        self.metrics
            .installs
            .get_or_create(&ResultLabel {
                site: out.site.clone(),
                result: result.into(),
            })
            .inc();
        // What the install's last handshakes saw is what is served now.
        for row in &out.served {
            if let Some(na) = row.not_after.as_deref().and_then(unix_of_rfc3339) {
                let endpoint = format!("{}@{}", row.sni, row.endpoint);
                self.metrics
                    .served(&out.site, &endpoint, row.sha256.as_deref(), na);
            }
        }
        match out.result {
            ResultKind::Verified => {
                self.metrics
                    .last_install
                    .get_or_create(&SiteLabel {
                        site: out.site.clone(),
                    })
                    .set(crate::metrics::now_unix());
                let na = out
                    .new
                    .as_ref()
                    .map(|l| l.not_after.as_str())
                    .unwrap_or("?");
                tracing::info!(site = %out.site, not_after = %na, "installed and verified: the new certificate is served");
            }
            // Settled: the bundle is what the site has and serves.
            ResultKind::AlreadyInstalled => tracing::info!(
                site = %out.site,
                "already installed and served; nothing was changed"
            ),
            _ => tracing::warn!(
                site = %out.site,
                result,
                "not installed: {}",
                candidate.describe(out.error.as_deref().unwrap_or("no reason given"))
            ),
        }
    }

    /// Move an inbox bundle to done/ or failed/, or note a refused HTTP
    /// bundle so it is not fetched again — or, when the environment kept
    /// it from being installed ([`Settlement::Retry`]), leave it waiting.
    /// `out` None = nothing to install.
    fn settle(&mut self, p: &Pending, out: Option<&Outcome>, inbox_waiting: &mut InboxWaiting) {
        let why = |o: &Outcome| {
            p.candidate
                .describe(o.error.as_deref().unwrap_or("the bundle was not installed"))
        };
        let failure = match out.map(|o| (o, o.settlement())) {
            None | Some((_, Settlement::Done)) => None,
            Some((o, Settlement::Refused)) => Some(why(o)),
            Some((o, Settlement::Retry(r))) => {
                self.wait(p, r, &why(o), inbox_waiting);
                return;
            }
        };
        match &p.origin {
            Origin::Inbox { source, found } => match &failure {
                Some(why) => quarantine(source, &self.cfg, found, why),
                None => match inbox::finish(source, &self.cfg, found, None) {
                    Ok(dir) => tracing::info!(bundle = %found.label, "moved to {}", dir.display()),
                    Err(e) => {
                        tracing::error!(bundle = %found.label, "cannot move the bundle to done/: {e}")
                    }
                },
            },
            // Only a verdict on the bundle itself refuses it for good
            // (invariant 10): anything else is retried.
            Origin::Acme { cert_sha256, .. } => {
                if failure.is_some() {
                    self.acme_refused
                        .insert((p.candidate.site.clone(), cert_sha256.clone()));
                }
            }
            Origin::Cloud { source, id, .. } => {
                if failure.is_some() {
                    self.acme_refused
                        .insert((p.candidate.site.clone(), format!("id:{id}")));
                    cloud::refuse(&self.cfg.state_dir, source, id);
                }
            }
            Origin::Http {
                run, cert_sha256, ..
            } => {
                if failure.is_some()
                    && let Some(state) = self.http.get_mut(&run.source.name)
                {
                    state
                        .refused
                        .insert((p.candidate.site.clone(), cert_sha256.clone()));
                }
            }
        }
    }

    /// `p` was not installed for a reason of the environment: keep it for
    /// a retry. An HTTP bundle keeps its manifest unsettled (no ETag is
    /// saved); an inbox bundle stays in the inbox.
    fn wait(
        &mut self,
        p: &Pending,
        why: Retryable,
        sentence: &str,
        inbox_waiting: &mut InboxWaiting,
    ) {
        let site = p.candidate.site.clone();
        match &p.origin {
            Origin::Inbox { source, .. } => inbox_waiting
                .entry(source.name.clone())
                .or_default()
                .push((site, why, sentence.to_string())),
            // The lineage stays in the client's store: read again then.
            Origin::Acme { source, .. } => inbox_waiting.entry(source.clone()).or_default().push((
                site,
                why,
                sentence.to_string(),
            )),
            Origin::Cloud { source, .. } => inbox_waiting
                .entry(source.name.clone())
                .or_default()
                .push((site, why, sentence.to_string())),
            Origin::Http {
                run, not_before, ..
            } => {
                run.complete.store(false, Ordering::SeqCst);
                if let Some(state) = self.http.get_mut(&run.source.name) {
                    state
                        .waiting
                        .insert(site, (why.as_str(), sentence.to_string()));
                    if why == Retryable::NotYetValid
                        && let Some(nb) = not_before
                    {
                        state.not_before = Some(state.not_before.map_or(*nb, |t| t.min(*nb)));
                    }
                }
            }
        }
    }

    /// Expiry of what is on disk: metrics, and (with `log`) a line in
    /// status's `expiring` / `critical` / `expired` states ([`expiry_state`]).
    fn expiry(&self, cfg: &Config, log: bool) {
        let now = OffsetDateTime::now_utc();
        for site in &cfg.sites {
            let label = SiteLabel {
                site: site.name.clone(),
            };
            let leaf = match crate::bundle::read_leaf(&site.cert) {
                Ok(leaf) => leaf,
                Err(e) => {
                    if log {
                        tracing::warn!(site = %site.name, "the installed certificate cannot be read: {e}");
                    }
                    continue;
                }
            };
            let (days, state) = expiry_state(leaf.not_after, now);
            self.metrics
                .cert_not_after
                .get_or_create(&label)
                .set(leaf.not_after.unix_timestamp());
            self.metrics.days_left.get_or_create(&label).set(days);
            let na = crate::cert::rfc3339(leaf.not_after);
            if !log {
                continue;
            }
            match state {
                status::State::Expired => {
                    tracing::error!(site = %site.name, not_after = %na, "the installed certificate has EXPIRED")
                }
                status::State::Critical => {
                    tracing::error!(site = %site.name, not_after = %na, days_left = days, "the installed certificate is critical: renew it now")
                }
                status::State::Expiring => {
                    tracing::warn!(site = %site.name, not_after = %na, days_left = days, "the installed certificate expires soon")
                }
                status::State::Ok | status::State::Error => {}
            }
        }
    }

    /// Drift: what each endpoint serves vs the leaf on disk, as `status
    /// --probe` computes it ([`status::probe_rows`]: one row per slot, so
    /// both pairs of a dual site), turned into metrics and log lines. With
    /// `fix_drift`, reload (after a config test) and verify.
    fn drift(&self, env: &Env<'_>) {
        let cfg = env.config;
        let rows = status::probe_rows(cfg, env.probers, DRIFT_CONCURRENCY);
        let mut drifting: Vec<&status::SiteStatus> = Vec::new();
        let mut first_of_site: Option<&str> = None;
        for row in &rows {
            // The endpoint metric keeps its one series per (site,
            // endpoint): the site's first row, its `cert`'s.
            let first = first_of_site != Some(row.name.as_str());
            first_of_site = Some(row.name.as_str());
            for e in &row.served {
                let endpoint = format!("{}@{}", e.sni, e.endpoint);
                match &e.seen {
                    Ok(leaf) if first => self.metrics.served(
                        &row.name,
                        &endpoint,
                        Some(&leaf.sha256),
                        leaf.not_after.unix_timestamp(),
                    ),
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(site = %row.name, endpoint = %endpoint, "no handshake: {err}")
                    }
                }
            }
            for (e, leaf) in row.drifted() {
                tracing::warn!(
                    site = %row.name, endpoint = %format!("{}@{}", e.sni, e.endpoint),
                    "drift: the endpoint serves {} (notAfter {}), not the certificate on disk",
                    leaf.sha256,
                    crate::cert::rfc3339(leaf.not_after)
                );
            }
            if row.drift == Some(true) {
                drifting.push(row);
            }
        }
        // By name: when a failed reload leaves every site drifting, a scan
        // of `drifting` per site is 10,000² comparisons a pass.
        let drifting_sites: HashSet<&str> = drifting.iter().map(|r| r.name.as_str()).collect();
        for site in &cfg.sites {
            let d = drifting_sites.contains(site.name.as_str());
            self.metrics
                .drift
                .get_or_create(&SiteLabel {
                    site: site.name.clone(),
                })
                .set(i64::from(d));
        }
        if cfg.agent.fix_drift && !drifting.is_empty() {
            self.fix_drift(env, &drifting);
        }
    }

    /// Reload once for every drifting row of [`Agent::drift`], then prove
    /// each row's leaf on disk is served (probed with the row's key type).
    fn fix_drift(&self, env: &Env<'_>, drifting: &[&status::SiteStatus]) {
        let _lock = match env.store.lock() {
            Ok(l) => l,
            Err(e) => {
                tracing::info!("drift not fixed this pass: {e}");
                return;
            }
        };
        // No reload without a passing config test (invariant 4); a server
        // that is not running is started (the one restore of service).
        let by_name: HashMap<&str, &crate::config::Site> = env
            .config
            .sites
            .iter()
            .map(|s| (s.name.as_str(), s))
            .collect();
        let sites: Vec<&crate::config::Site> = drifting
            .iter()
            .filter_map(|row| by_name.get(row.name.as_str()).copied())
            .collect();
        if let Err(e) = crate::service::restore_service(env.server, &sites) {
            tracing::error!("drift not fixed: {}", e.into_server_error());
            return;
        }
        tracing::info!(
            "fix_drift: reloaded {} to serve the certificates on disk",
            env.server.name()
        );
        let mut remains: HashSet<&str> = HashSet::new();
        for row in drifting {
            let (Some(site), Ok(disk)) = (by_name.get(row.name.as_str()).copied(), &row.installed)
            else {
                continue;
            };
            let w = crate::wait::wait_one(
                env.server,
                &env.config.probe,
                env.probers.of(row.family),
                &site.endpoints,
                &disk.sha256,
            );
            match w.failure {
                None => {
                    tracing::info!(site = %site.name, "drift fixed: the certificate on disk is served")
                }
                Some(why) => {
                    remains.insert(site.name.as_str());
                    tracing::error!(site = %site.name, "drift remains after the reload: {why}")
                }
            }
        }
        for row in drifting {
            if !remains.contains(row.name.as_str()) {
                self.metrics
                    .drift
                    .get_or_create(&SiteLabel {
                        site: row.name.clone(),
                    })
                    .set(0);
            }
        }
    }
}

/// A bundle found in this pass and where it came from.
struct Pending {
    candidate: Candidate,
    origin: Origin,
}

enum Origin {
    Inbox {
        source: InboxSource,
        found: Found,
    },
    Http {
        run: Arc<HttpRun>,
        cert_sha256: String,
        /// The leaf's notBefore: a certificate not valid yet is retried then.
        not_before: Option<SystemTime>,
    },
    /// A certificate of a vendor account (Alibaba Cloud, Tencent Cloud).
    Cloud {
        source: CloudSource,
        /// The vendor's certificate id.
        id: String,
    },
    /// A certbot lineage / acme.sh domain dir.
    Acme {
        /// The `[[source]]` name.
        source: String,
        cert_sha256: String,
    },
}

/// Per inbox source: (site, why, sentence) of each bundle left for a retry.
type InboxWaiting = HashMap<String, Vec<(String, Retryable, String)>>;

/// One fetch of one manifest in this pass.
struct HttpRun {
    source: crate::config::HttpSource,
    /// The manifest's ETag: saved only if `complete` stays true.
    etag: Option<String>,
    /// Every bundle of it was settled (none left for a retry).
    complete: AtomicBool,
}

fn finish_http(run: &HttpRun, state_dir: &Path, state: &mut HttpState) {
    if run.complete.load(Ordering::SeqCst) && run.etag.is_some() && run.etag != state.etag {
        state.save_etag(state_dir, &run.source, run.etag.clone());
    }
}

/// A wait as people read it: "30 s", "2 min 30 s".
fn secs(d: Duration) -> String {
    let s = d.as_secs().max(1);
    if s < 60 {
        format!("{s} s")
    } else if s % 60 == 0 {
        format!("{} min", s / 60)
    } else {
        format!("{} min {} s", s / 60, s % 60)
    }
}

fn quarantine(source: &InboxSource, cfg: &Config, found: &Found, why: &str) {
    match inbox::finish(source, cfg, found, Some(why)) {
        Ok(dir) => {
            tracing::warn!(bundle = %found.label, "moved to {} with its reason", dir.display())
        }
        Err(e) => tracing::error!(bundle = %found.label, "cannot move the bundle to failed/: {e}"),
    }
}

fn unix_of_rfc3339(s: &str) -> Option<i64> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp)
}

/// `[agent] host_id`, else /etc/machine-id, else the host name.
fn host_id(cfg: &Config) -> String {
    if let Some(id) = &cfg.agent.host_id {
        return id.clone();
    }
    for path in [
        "/etc/machine-id",
        "/proc/sys/kernel/hostname",
        "/etc/hostname",
    ] {
        if let Ok(b) = crate::fsio::read_limited(Path::new(path), 4096)
            && let Ok(s) = String::from_utf8(b)
            && !s.trim().is_empty()
        {
            return s.trim().to_string();
        }
    }
    "unknown-host".into()
}

/// `f`, or None as soon as `stop` is set.
async fn or_stop<F: std::future::Future>(f: F, stop: &AtomicBool) -> Option<F::Output> {
    let stopped = async {
        while !stop.load(Ordering::SeqCst) {
            tokio::time::sleep(STOP_POLL).await;
        }
    };
    tokio::select! {
        r = f => Some(r),
        () = stopped => None,
    }
}

/// Days left and state of a leaf expiring at `not_after`: status's
/// [`status::days_left`] and [`status::state_of`], so the agent's metric,
/// its expiry log and `status` cannot disagree.
fn expiry_state(not_after: OffsetDateTime, now: OffsetDateTime) -> (i64, status::State) {
    let days = status::days_left(not_after, now);
    (days, status::state_of(days))
}

/// `interval` ± up to 10%, so a fleet's agents drift apart.
fn jittered(interval: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    let r = match ring::rand::SystemRandom::new().fill(&mut b) {
        Ok(()) => u32::from_be_bytes(b),
        Err(_) => u32::MAX / 2,
    };
    // r / u32::MAX in [0, 1] → factor in [0.9, 1.1].
    let factor = 0.9 + 0.2 * (f64::from(r) / f64::from(u32::MAX));
    interval.mul_f64(factor)
}

fn instant_of(t: SystemTime) -> Instant {
    Instant::now() + t.duration_since(SystemTime::now()).unwrap_or_default()
}

/// The signals the agent reacts to.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

enum Sig {
    Stop(&'static str),
    Reload,
}

impl Signals {
    fn new() -> Result<Signals, AgentError> {
        let mk = |k| {
            signal(k).map_err(|source| AgentError::Setup {
                what: "signal handler",
                source,
            })
        };
        Ok(Signals {
            term: mk(SignalKind::terminate())?,
            int: mk(SignalKind::interrupt())?,
            hup: mk(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> Sig {
        tokio::select! {
            _ = self.term.recv() => Sig::Stop("SIGTERM"),
            _ = self.int.recv() => Sig::Stop("SIGINT"),
            _ = self.hup.recv() => Sig::Reload,
        }
    }
}

/// Run one pass on the blocking pool while still answering signals:
/// SIGTERM/SIGINT set the stop flag (the pass finishes what it started),
/// SIGHUP is remembered. Returns (agent, report, stop asked, reload asked).
async fn run_pass(
    agent: Agent,
    kind: PassKind,
    stop: &Arc<AtomicBool>,
    signals: &mut Signals,
) -> Result<(Agent, PassReport, bool, bool), AgentError> {
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    let flag = stop.clone();
    let mut agent = agent;
    let mut handle = PassThread::run(move || {
        tracing::dispatcher::with_default(&dispatch, || {
            let r = agent.pass(kind, &flag);
            (agent, r)
        })
    })?;
    let mut reload = false;
    loop {
        tokio::select! {
            res = &mut handle => {
                let (agent, report) = res.map_err(|_| AgentError::Crashed("the pass thread panicked".into()))?;
                return Ok((agent, report, stop.load(Ordering::SeqCst), reload));
            }
            sig = signals.recv() => match sig {
                Sig::Stop(name) => {
                    if !stop.swap(true, Ordering::SeqCst) {
                        tracing::info!("{name}: finishing the pass in flight, then exiting");
                    }
                }
                Sig::Reload => reload = true,
            },
        }
    }
}

/// The one thread every pass runs on (blocking code, off the runtime).
/// A pass builds its working set — every site's status and handshake —
/// and frees it at the end; glibc's malloc keeps what a thread freed in
/// that thread's arena. On tokio's blocking pool successive passes landed
/// on different threads, each arena kept a pass's peak, and RSS grew to a
/// multiple of one pass's working set (110 MB instead of 43 MB at 10,000
/// sites, docs/performance.md).
struct PassThread {
    jobs: std::sync::Mutex<std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>>,
}

impl PassThread {
    /// Run `f` on the pass thread (started on first use); its result, or
    /// an error when `f` panicked.
    fn run<R: Send + 'static>(
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<R>, AgentError> {
        static THREAD: std::sync::OnceLock<PassThread> = std::sync::OnceLock::new();
        let thread = match THREAD.get() {
            Some(t) => t,
            None => {
                let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
                std::thread::Builder::new()
                    .name("certswap-pass".into())
                    .spawn(move || rx.into_iter().for_each(|job| job()))
                    .map_err(|source| AgentError::Setup {
                        what: "pass thread",
                        source,
                    })?;
                THREAD.get_or_init(|| PassThread {
                    jobs: std::sync::Mutex::new(tx),
                })
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Box<dyn FnOnce() + Send> = Box::new(move || {
            let r = f();
            // Give the pass's freed working set back to the OS before the
            // agent sleeps until the next one: glibc returns only the top
            // of an arena by itself, the rest stays resident between
            // passes (at 10,000 sites ~10 MB, docs/performance.md).
            // SAFETY: malloc_trim only releases free pages of the
            // allocator's own arenas; it touches no live allocation.
            unsafe { nix::libc::malloc_trim(0) };
            let _ = tx.send(r);
        });
        // A send fails only when the thread is gone (a pass panicked):
        // then the receiver reports it.
        let _ = crate::par::lock(&thread.jobs).send(job);
        Ok(rx)
    }
}

/// The inbox watches, and which directory each inbox path was when it was
/// watched: an inbox replaced by `mv inbox old && mkdir inbox` keeps its
/// path but is another directory, which inotify does not follow.
struct InboxWatch {
    _watchers: Vec<notify::RecommendedWatcher>,
    /// (inbox path, (dev, ino) when watched).
    dirs: Vec<(PathBuf, Option<(u64, u64)>)>,
}

fn dir_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl InboxWatch {
    /// After each pass: an inbox path that is now another directory (or
    /// was gone and is back) is watched again, with a warning, and looked
    /// at at once for what was dropped into it in the meantime.
    fn refresh(&mut self, cfg: &Config, wake: &Arc<Notify>) {
        let replaced: Vec<&PathBuf> = self
            .dirs
            .iter()
            .filter(|(p, id)| dir_identity(p) != *id)
            .map(|(p, _)| p)
            .collect();
        if replaced.is_empty() {
            return;
        }
        for p in replaced {
            tracing::warn!(
                "the inbox {} was replaced by another directory (or removed); watching the directory now at that path",
                inbox::shown(p)
            );
        }
        *self = watch_inboxes(cfg, wake);
        wake.notify_one();
    }
}

/// Watch every inbox; an event wakes `wake`. Failures are logged: the
/// interval rescan still finds the files.
fn watch_inboxes(cfg: &Config, wake: &Arc<Notify>) -> InboxWatch {
    use notify::Watcher;
    use notify::event::{AccessKind, AccessMode, EventKind};
    let mut out = Vec::new();
    let mut dirs = Vec::new();
    for s in &cfg.sources {
        let SourceConfig::Inbox(i) = s else { continue };
        if let Err(e) = src::mkdir_private_all(&i.path) {
            tracing::error!(source = %i.name, "cannot create the inbox {}: {e}", i.path.display());
            continue;
        }
        dirs.push((i.path.clone(), dir_identity(&i.path)));
        let wake = wake.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else {
                // Lost events (queue overflow): rescan.
                wake.notify_one();
                return;
            };
            match ev.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
                // Our own reads of the inbox must not wake us again.
                EventKind::Access(_) => return,
                _ => {}
            }
            let ours = |p: &PathBuf| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !inbox::ignored(n))
            };
            if ev.paths.is_empty() || ev.paths.iter().any(ours) {
                wake.notify_one();
            }
        };
        let watched = notify::recommended_watcher(handler).and_then(|mut w| {
            w.watch(&i.path, notify::RecursiveMode::NonRecursive)
                .map(|()| w)
        });
        match watched {
            Ok(w) => {
                tracing::info!(source = %i.name, "watching {}", i.path.display());
                out.push(w);
            }
            Err(e) => tracing::warn!(
                source = %i.name,
                "cannot watch {} ({e}); it is rescanned every interval only",
                i.path.display()
            ),
        }
    }
    InboxWatch {
        _watchers: out,
        dirs,
    }
}

/// Every source's watches: the inboxes (watched again when replaced) and
/// the ACME stores.
struct SourceWatch {
    inboxes: InboxWatch,
    _acme: Vec<notify::RecommendedWatcher>,
}

impl SourceWatch {
    fn refresh(&mut self, cfg: &Config, wake: &Arc<Notify>) {
        self.inboxes.refresh(cfg, wake);
    }
}

fn watch_sources(cfg: &Config, wake: &Arc<Notify>) -> SourceWatch {
    SourceWatch {
        inboxes: watch_inboxes(cfg, wake),
        _acme: watch_acme_stores(cfg, wake),
    }
}

/// Watch every certbot `live/` dir and acme.sh home (recursively: a
/// renewal re-points `live/NAME/*` or rewrites `DOMAIN/*.cer`); an event
/// wakes `wake` for a pass after the debounce, so a renewal whose hook
/// failed is installed within seconds. Failures are logged: every
/// interval's pass still reads the store.
fn watch_acme_stores(cfg: &Config, wake: &Arc<Notify>) -> Vec<notify::RecommendedWatcher> {
    use notify::Watcher;
    use notify::event::EventKind;
    let mut out = Vec::new();
    for s in &cfg.sources {
        let SourceConfig::Acme(a) = s else { continue };
        let (dir, client) = (a.path.clone(), a.client);
        let watched_dir = match client {
            crate::hook::Client::Certbot => dir.join("live"),
            crate::hook::Client::AcmeSh => dir,
        };
        let wake = wake.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else {
                wake.notify_one();
                return;
            };
            // Our own reads must not wake us again.
            if matches!(ev.kind, EventKind::Access(_)) {
                return;
            }
            // acme.sh's home also holds its log and account files.
            let ours = |p: &PathBuf| match client {
                crate::hook::Client::Certbot => true,
                crate::hook::Client::AcmeSh => {
                    p.extension().is_some_and(|e| e == "cer" || e == "key")
                }
            };
            if ev.paths.is_empty() || ev.paths.iter().any(ours) {
                wake.notify_one();
            }
        };
        let watched = notify::recommended_watcher(handler).and_then(|mut w| {
            w.watch(&watched_dir, notify::RecursiveMode::Recursive)
                .map(|()| w)
        });
        match watched {
            Ok(w) => {
                tracing::info!(source = %a.name, "watching {}", watched_dir.display());
                out.push(w);
            }
            Err(e) => tracing::warn!(
                source = %a.name,
                "cannot watch {} ({e}); it is read every interval only",
                watched_dir.display()
            ),
        }
    }
    out
}

async fn main_loop(agent: Agent, once: bool) -> Result<(), AgentError> {
    let mut agent = agent;
    let mut signals = Signals::new()?;
    let stop = Arc::new(AtomicBool::new(false));

    if let Some(addr) = agent.cfg.agent.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Metrics { addr, source })?;
        tracing::info!("metrics on http://{addr}/metrics");
        tokio::spawn(crate::metrics::serve(listener, agent.metrics.clone()));
    }
    tracing::info!(
        host_id = %agent.host_id,
        sources = agent.cfg.sources.len(),
        sites = agent.cfg.sites.len(),
        "certswap agent started{}",
        if once { " (one pass)" } else { "" }
    );

    if once {
        return run_once(agent, &stop, &mut signals).await;
    }

    let wake = Arc::new(Notify::new());
    let mut watchers = watch_sources(&agent.cfg, &wake);
    let mut next_full = Instant::now();
    let mut inbox_at: Option<Instant> = None;
    // A retry of what the environment broke, or of a pass that could not run.
    let mut retry_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let kind = if next_full <= now {
            PassKind::Full
        } else if inbox_at.is_some_and(|t| t <= now) {
            PassKind::Inbox
        } else if retry_at.is_some_and(|t| t <= now) {
            PassKind::Retry
        } else {
            let until = [inbox_at, retry_at]
                .into_iter()
                .flatten()
                .fold(next_full, Instant::min);
            tokio::select! {
                () = tokio::time::sleep_until(until) => continue,
                () = wake.notified() => {
                    if inbox_at.is_none() {
                        inbox_at = Some(Instant::now() + agent.inbox_debounce());
                    }
                    continue;
                }
                sig = signals.recv() => match sig {
                    Sig::Stop(name) => {
                        tracing::info!("{name}: exiting");
                        break;
                    }
                    Sig::Reload => {
                        agent.reload();
                        drop(watchers);
                        watchers = watch_sources(&agent.cfg, &wake);
                        next_full = Instant::now();
                        continue;
                    }
                },
            }
        };
        if kind == PassKind::Full {
            next_full = Instant::now() + jittered(agent.cfg.agent.interval);
        }
        // Every pass scans the inboxes and reads the HTTP sources that are
        // due: it does what a pending inbox or retry pass would.
        inbox_at = None;
        retry_at = None;
        let (a, report, stopping, reload) = run_pass(agent, kind, &stop, &mut signals).await?;
        agent = a;
        watchers.refresh(&agent.cfg, &wake);
        if let Some(t) = report.inbox_recheck {
            let t = instant_of(t);
            inbox_at = Some(inbox_at.map_or(t, |i| i.min(t)));
        }
        if let Some(t) = report.retry_at.map(instant_of) {
            if report.failed && kind == PassKind::Full {
                // A full pass that could not run is run again in full, soon.
                next_full = next_full.min(t);
            } else {
                retry_at = Some(retry_at.map_or(t, |r| r.min(t)));
            }
        }
        if stopping {
            break;
        }
        if reload {
            agent.reload();
            drop(watchers);
            watchers = watch_sources(&agent.cfg, &wake);
            next_full = Instant::now();
        }
    }
    drop(watchers);
    tracing::info!("certswap agent stopped");
    Ok(())
}

/// `run --once`: one full pass; inbox files still being written when it
/// looked are waited for (a few debounce periods at most), then it exits.
async fn run_once(
    agent: Agent,
    stop: &Arc<AtomicBool>,
    signals: &mut Signals,
) -> Result<(), AgentError> {
    let limit = Instant::now() + agent.inbox_debounce() * 4 + Duration::from_secs(2);
    let (mut agent, mut report, mut stopping, _) =
        run_pass(agent, PassKind::Full, stop, signals).await?;
    while let Some(t) = report.inbox_recheck.map(instant_of) {
        if stopping || t > limit {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep_until(t) => {}
            sig = signals.recv() => if let Sig::Stop(_) = sig { break },
        }
        (agent, report, stopping, _) = run_pass(agent, PassKind::Inbox, stop, signals).await?;
    }
    drop(agent);
    tracing::info!("certswap agent: one pass done");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_uses_the_status_states_at_their_boundaries() {
        use status::State;
        use time::Duration as D;
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
        for (left, days, want) in [
            (D::days(31), 31, State::Ok),
            (D::days(31) - D::SECOND, 30, State::Expiring),
            (D::days(11) - D::SECOND, 10, State::Critical),
            (D::ZERO, 0, State::Critical),
            (D::nanoseconds(-1), -1, State::Expired),
            // 12 hours past expiry: −1 (the metric once said 0).
            (D::hours(-12), -1, State::Expired),
        ] {
            assert_eq!(expiry_state(now + left, now), (days, want), "{left}");
        }
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let base = Duration::from_secs(900);
        for _ in 0..200 {
            let j = jittered(base);
            assert!(
                j >= Duration::from_secs(810) && j <= Duration::from_secs(990),
                "{j:?}"
            );
        }
    }
}
