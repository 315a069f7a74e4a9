//! `certswap status`: every configured site at a glance — installed
//! notAfter, days left, state, issuer, spec — and with `--probe` what each
//! endpoint serves and whether that drifted from what is on disk.
//!
//! 1. **Disk.** One row per slot: a site's `cert`, and for a dual-certificate
//!    site each `[[site.pair]]` cert too (so its RSA leaf is visible beside
//!    the ECDSA one). Each cert file is read once and only its
//!    first certificate (what nginx and apache serve as the leaf) is parsed;
//!    its key type is the row's `key_type`.
//!    Days left are whole days until notAfter, rounded down, so a negative
//!    number means expired. The state comes from DESIGN.md's thresholds:
//!    `expiring` at ≤ [`EXPIRING_DAYS`] days (the renewal window is open),
//!    `critical` at ≤ [`CRITICAL_DAYS`], `expired` after notAfter, and
//!    `error` when the file cannot be read as a certificate.
//! 2. **Probe** (optional). One fresh handshake per endpoint of every row,
//!    a dual site's rows each offering only its slot's key type (the server
//!    shows the leaf of the type the client allows), all rows at once on one current-thread runtime with
//!    [`PROBE_CONCURRENCY`] handshakes in flight.
//! 3. **Drift.** A row drifts when an endpoint serves a leaf other than the
//!    one on disk: renewed but never reloaded, the most common way a
//!    renewal fails. This is the one drift rule: the agent's drift check
//!    calls [`probe_rows`] and turns [`SiteStatus::drifted`] into its
//!    metrics and logs.
//!
//! 4. **Waiting.** A site is waiting when a certbot/acme.sh store (a
//!    configured source, or the one a failed deploy hook named) holds a
//!    newer certificate for it than the installed one — renewed but never
//!    installed — shown with the last deploy-hook failure's reason
//!    ([`crate::source::acme::waiting`]).
//!
//! Status only reads: the configured cert files, the ACME stores'
//! certificates (never a key) and the hook failure records in the state
//! dir; it writes nothing.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{PemObject, SectionKind};
use time::OffsetDateTime;

use crate::bundle::MAX_FILE_BYTES;
use crate::cert::{DomainType, LeafFacts, Validation, rfc3339};
use crate::config::Config;
use crate::probe::{KeyFamily, ProbeError, Prober, Probers, Served, Target};

/// At this many days left or fewer a site is `expiring`: the vendors open
/// renewal 30 days before expiry.
pub const EXPIRING_DAYS: i64 = 30;
/// At this many days left or fewer a site is `critical`: OV/EV issuance can
/// take two working days, and owners should leave 3–10.
pub const CRITICAL_DAYS: i64 = 10;
/// Handshakes in flight with `--probe` (the sweet spot measured in DESIGN.md).
pub const PROBE_CONCURRENCY: usize = 64;

/// Issuer text longer than this is cut in the text table (JSON has it whole).
const ISSUER_COLUMN_MAX: usize = 32;
/// Hex digits of a SHA-256 shown in a text problem line.
const SHA_SHOWN: usize = 16;

/// Why status could not be collected at all (per-site problems are rows).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// The prober could not be built (the configured CA file is unusable).
    #[error("{0}")]
    Probe(#[from] ProbeError),
}

/// Why a site's installed cert file gives no certificate. The row names the
/// file; these say why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertFileError {
    /// Missing, not readable by this user, a directory...
    #[error("cannot read: {0}")]
    Read(std::io::Error),
    /// Over [`MAX_FILE_BYTES`]: no certificate file is that big.
    #[error("file is larger than the 1 MiB limit")]
    TooLarge,
    /// Empty or only whitespace (a truncated write, an emptied file).
    #[error("file is empty")]
    Empty,
    /// Neither a PEM certificate block nor a DER certificate.
    #[error("no certificate found (expected PEM 'BEGIN CERTIFICATE' or DER)")]
    NoCertificate,
    /// PEM with a private key but no certificate (key and cert swapped?).
    #[error("holds a private key but no certificate")]
    KeyOnly,
    /// A broken PEM block or an unparsable certificate. Never echoes file
    /// content (the file may hold a key).
    #[error("{0}")]
    Malformed(String),
}

/// The state of one site, worst first in [`State::needs_attention`] terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// More than [`EXPIRING_DAYS`] days left.
    Ok,
    /// At most [`EXPIRING_DAYS`] days left: the renewal window is open.
    Expiring,
    /// At most [`CRITICAL_DAYS`] days left.
    Critical,
    /// Past notAfter.
    Expired,
    /// The cert file is missing or unreadable.
    Error,
}

impl State {
    /// The word in the table and the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Expiring => "expiring",
            State::Critical => "critical",
            State::Expired => "expired",
            State::Error => "error",
        }
    }
}

/// Whole days from `now` until `not_after`, rounded down (one rule for
/// `status`, the agent's metric and its expiry log: [`crate::cert::days_left`]).
pub use crate::cert::days_left;

/// The state for a number of days left (see [`days_left`]).
pub fn state_of(days_left: i64) -> State {
    if days_left < 0 {
        State::Expired
    } else if days_left <= CRITICAL_DAYS {
        State::Critical
    } else if days_left <= EXPIRING_DAYS {
        State::Expiring
    } else {
        State::Ok
    }
}

/// The facts of the installed leaf that status shows.
#[derive(Debug, Clone)]
pub struct Installed {
    pub not_after: OffsetDateTime,
    pub days_left: i64,
    /// Lowercase hex SHA-256 of the leaf DER, compared with what is served.
    pub sha256: String,
    /// The issuer's organisation, or its whole DN when it has none.
    pub issuer: String,
    pub domain_type: DomainType,
    pub validation: Validation,
    /// The leaf's key type (`Any` for a key neither RSA nor ECDSA).
    pub key_family: KeyFamily,
}

/// What one endpoint served on one fresh handshake.
#[derive(Debug, Clone)]
pub struct ServedLeaf {
    pub sha256: String,
    pub not_after: OffsetDateTime,
    pub trusted: bool,
    /// Why the served chain is not trusted (None when trusted).
    pub trust_error: Option<String>,
}

/// One endpoint of a site and its handshake.
#[derive(Debug)]
pub struct ServedStatus {
    /// `host:port`.
    pub endpoint: String,
    pub sni: String,
    pub seen: Result<ServedLeaf, ProbeError>,
}

/// One row: one slot (cert/key pair) of a configured site — a plain site
/// has one, a dual-certificate site one per pair.
#[derive(Debug)]
pub struct SiteStatus {
    pub name: String,
    /// The cert file read (the site's `cert`, or a `[[site.pair]]` cert).
    pub file: PathBuf,
    /// The site has more than one slot: the text names the row's key type.
    pub dual: bool,
    /// The key type its probe asks for ([`crate::config::Slot::key_family`]): the
    /// slot's for a dual site, so a re-probe (the agent's `fix_drift`)
    /// asks for the same leaf.
    pub family: KeyFamily,
    pub state: State,
    pub installed: Result<Installed, CertFileError>,
    /// One per endpoint with `--probe`, in config order; empty without.
    pub served: Vec<ServedStatus>,
    /// [`drift_of`]: `Some(true)` when a served leaf is not the one on disk, `Some(false)`
    /// when every answer matched; None without a probe, without a readable
    /// cert file, or when no endpoint answered.
    pub drift: Option<bool>,
    /// The ACME client holds a newer certificate than the installed one.
    pub waiting: Option<crate::source::acme::Waiting>,
}

impl SiteStatus {
    /// The key type of this row's leaf on disk (None when unreadable).
    pub fn key_family(&self) -> Option<KeyFamily> {
        self.installed.as_ref().ok().map(|i| i.key_family)
    }

    /// The name in the text: the site's, and for a dual site its row's key
    /// type (`shop.test [rsa]`), so the two rows can be told apart.
    fn label(&self) -> String {
        match (self.dual, self.key_family().and_then(key_type_word)) {
            (true, Some(k)) => format!("{} [{k}]", self.name),
            _ => self.name.clone(),
        }
    }

    /// The endpoints that answered with a leaf other than the one on disk
    /// (none when the cert file is unreadable): the one drift rule.
    pub fn drifted(&self) -> impl Iterator<Item = (&ServedStatus, &ServedLeaf)> {
        let disk = self.installed.as_ref().ok().map(|i| i.sha256.as_str());
        self.served.iter().filter_map(move |e| {
            let leaf = e.seen.as_ref().ok()?;
            (!leaf.sha256.eq_ignore_ascii_case(disk?)).then_some((e, leaf))
        })
    }

    /// Not ok, drifted, or an endpoint that gave no handshake.
    pub fn needs_attention(&self) -> bool {
        self.state != State::Ok
            || self.waiting.is_some()
            || self.drift == Some(true)
            || self.served.iter().any(|s| s.seen.is_err())
    }
}

/// The whole report.
#[derive(Debug)]
pub struct StatusReport {
    /// One per configured site, in config order.
    pub sites: Vec<SiteStatus>,
    /// Whether endpoints were probed (`--probe`).
    pub probed: bool,
}

impl StatusReport {
    /// 0 when every site is ok (no drift, nothing waiting, every endpoint
    /// answered), 1 when any needs attention — for cron and monitoring.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.sites.iter().any(SiteStatus::needs_attention))
    }

    /// An aligned table, then one line per problem, then a summary line.
    pub fn to_text(&self) -> String {
        if self.sites.is_empty() {
            return "no sites configured\n".to_string();
        }
        let mut headers = vec!["NAME", "NOT AFTER", "DAYS", "STATE", "ISSUER", "SPEC"];
        if self.probed {
            headers.extend(["SERVED", "DRIFT"]);
        }
        let rows: Vec<Vec<String>> = self.sites.iter().map(|s| self.text_row(s)).collect();
        let mut out = table(&headers, &rows, &[2]);

        let mut problems = String::new();
        for site in &self.sites {
            problem_lines(site, &mut problems);
        }
        if !problems.is_empty() {
            out.push('\n');
            out.push_str(&problems);
        }
        // Counted by site, not by row: a dual site is one site.
        let mut names: Vec<&str> = self.sites.iter().map(|s| s.name.as_str()).collect();
        names.dedup();
        let total = names.len();
        let mut attention: Vec<&str> = self
            .sites
            .iter()
            .filter(|s| s.needs_attention())
            .map(|s| s.name.as_str())
            .collect();
        attention.dedup();
        let attention = attention.len();
        let _ = if attention == 0 {
            writeln!(out, "\nall {total} sites ok")
        } else {
            writeln!(out, "\n{attention} of {total} sites need attention")
        };
        out
    }

    /// `{"sites": [{"name", "file", "key_type", "not_after", "days_left",
    /// "state", "issuer", "spec", "served", "drift", "error"}]}`, one object
    /// per slot (a dual site has one per pair, with the same name).
    pub fn to_json(&self) -> serde_json::Value {
        let sites: Vec<serde_json::Value> = self.sites.iter().map(site_json).collect();
        serde_json::json!({ "sites": sites })
    }

    fn text_row(&self, s: &SiteStatus) -> Vec<String> {
        let dash = || "-".to_string();
        let mut row = vec![s.label()];
        match &s.installed {
            Ok(i) => row.extend([
                rfc3339(i.not_after),
                i.days_left.to_string(),
                state_text(s),
                ellipsize(&i.issuer, ISSUER_COLUMN_MAX),
                spec_text(i),
            ]),
            Err(_) => row.extend([dash(), dash(), state_text(s), dash(), dash()]),
        }
        if self.probed {
            let answered = s.served.iter().filter(|e| e.seen.is_ok()).count();
            let untrusted = s
                .served
                .iter()
                .any(|e| e.seen.as_ref().is_ok_and(|l| !l.trusted));
            let mut served = format!("{answered}/{}", s.served.len());
            if untrusted {
                served.push_str(" untrusted");
            }
            row.push(served);
            row.push(
                match s.drift {
                    Some(true) => "YES",
                    Some(false) => "no",
                    None => "-",
                }
                .to_string(),
            );
        }
        row
    }
}

/// Collect the status of every site of `cfg`; `probe` adds handshakes.
pub fn collect(cfg: &Config, probe: bool) -> Result<StatusReport, StatusError> {
    // Build the prober first: an unusable CA file is an error of the whole
    // command, and should be reported before any work is done.
    let prober = if probe {
        Some(crate::host::probers(cfg)?)
    } else {
        None
    };
    let now = OffsetDateTime::now_utc();
    let files = cert_files(cfg);

    let (installed, waiting, served) = match &prober {
        // 1. Disk on every core (at 10,000 sites the reads and parses are
        //    most of `status`), 4. waiting.
        None => (
            read_installed(&files, now, crate::par::cpu_threads()),
            crate::source::acme::waiting(cfg),
            None,
        ),
        // 2. Probe on this thread while 1 and 4 read the files on another:
        //    the probe needs only the config (endpoints, key types), so the
        //    disk work hides in the handshakes' time instead of adding to it.
        Some(probers) => {
            let jobs = jobs_of(cfg, probers);
            std::thread::scope(|s| {
                let disk = std::thread::Builder::new()
                    .name("certswap-status-disk".into())
                    .spawn_scoped(s, || {
                        (
                            read_installed(&files, now, 1),
                            crate::source::acme::waiting(cfg),
                        )
                    });
                let served = probe_jobs(&jobs, PROBE_CONCURRENCY);
                let (installed, waiting) = match disk {
                    Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                    // No thread to be had: read them here, after the probe.
                    Err(_) => (
                        read_installed(&files, now, 1),
                        crate::source::acme::waiting(cfg),
                    ),
                };
                (installed, waiting, Some(served))
            })
        }
    };

    // 3. Drift, per row.
    let mut sites = rows_of(cfg, installed, served);

    // 4. Waiting, on the site's first row (its `cert`'s).
    if !waiting.is_empty() {
        let mut first: std::collections::HashMap<&str, usize> =
            std::collections::HashMap::with_capacity(sites.len());
        for (i, s) in sites.iter().enumerate() {
            first.entry(s.name.as_str()).or_insert(i);
        }
        let at: Vec<Option<usize>> = waiting
            .iter()
            .map(|w| first.get(w.site.as_str()).copied())
            .collect();
        for (w, i) in waiting.into_iter().zip(at) {
            if let Some(i) = i {
                sites[i].waiting = Some(w);
            }
        }
    }

    Ok(StatusReport {
        sites,
        probed: probe,
    })
}

/// Steps 1–3 without the ACME stores: one row per slot of every site of
/// `cfg`, each probed with its own key type through `prober` with
/// `concurrency` handshakes in flight, and its drift. The agent's drift
/// check is this. One thread reads the files: the agent keeps its passes
/// on one thread, so one malloc arena holds their working set
/// (docs/performance.md, "Agent RSS").
pub fn probe_rows(cfg: &Config, probers: &Probers, concurrency: usize) -> Vec<SiteStatus> {
    let installed = read_installed(&cert_files(cfg), OffsetDateTime::now_utc(), 1);
    let served = probe_jobs(&jobs_of(cfg, probers), concurrency);
    rows_of(cfg, installed, Some(served))
}

/// Below this many cert files per thread, another thread is not worth
/// its start.
const FILES_PER_THREAD: usize = 256;

/// Every slot's cert file, in row order (site by site, slot by slot).
fn cert_files(cfg: &Config) -> Vec<&Path> {
    cfg.sites
        .iter()
        .flat_map(|s| s.slots.iter().map(|slot| slot.cert.as_path()))
        .collect()
}

/// Step 1, disk: the installed leaf of each of `files`, in order, read on up to
/// `threads` threads, each with one reused buffer. Each thread keeps only
/// a leaf's [`Installed`] facts: the parsed certificate is freed where it
/// was made.
fn read_installed(
    files: &[&Path],
    now: OffsetDateTime,
    threads: usize,
) -> Vec<Result<Installed, CertFileError>> {
    let read = |part: &[&Path]| -> Vec<Result<Installed, CertFileError>> {
        let mut buf = Vec::new();
        part.iter()
            .map(|p| read_leaf(p, &mut buf).map(|info| installed_of(info, now)))
            .collect()
    };
    let threads = threads.min(files.len() / FILES_PER_THREAD).max(1);
    if threads == 1 {
        return read(files);
    }
    let chunk = files.len().div_ceil(threads);
    crate::par::map(files.chunks(chunk).collect(), threads, read)
        .into_iter()
        .flatten()
        .collect()
}

/// The handshakes of every row, rows in config order (site by site, slot
/// by slot), each row's endpoints in order: one job per endpoint, probed
/// with the slot's key type — a dual site's slot gets its own (resolved
/// when the config was read), or the server may show the other slot's leaf.
fn jobs_of(cfg: &Config, probers: &Probers) -> Vec<(Prober, Target)> {
    cfg.sites
        .iter()
        .flat_map(|site| {
            site.slots.iter().flat_map(move |slot| {
                let prober = probers.of(slot.key_family);
                site.endpoints
                    .iter()
                    .map(move |t| (prober.clone(), t.clone()))
            })
        })
        .collect()
}

/// Step 2, the probe: every job in one go, results in order.
fn probe_jobs(jobs: &[(Prober, Target)], concurrency: usize) -> Vec<ServedStatus> {
    // Each answer becomes its row's few fields as soon as it arrives: the
    // parsed chains of 10,000 handshakes are never held at once.
    crate::engines::probe_each_into(jobs, concurrency, |i, seen| served_status(&jobs[i].1, seen))
}

/// The rows of `cfg` from each slot's `installed` leaf (in
/// [`cert_files`] order) and, after a probe, the `served` answers (in
/// [`jobs_of`] order); then step 3, drift.
fn rows_of(
    cfg: &Config,
    installed: Vec<Result<Installed, CertFileError>>,
    served: Option<Vec<ServedStatus>>,
) -> Vec<SiteStatus> {
    let mut installed = installed.into_iter();
    let mut served = served.map(Vec::into_iter);
    let mut rows = Vec::with_capacity(installed.len());
    for site in &cfg.sites {
        let dual = !site.pairs.is_empty();
        for slot in &site.slots {
            // As many as there are slots: both were made from this config.
            let Some(leaf) = installed.next() else {
                return rows;
            };
            let state = match &leaf {
                Ok(i) => state_of(i.days_left),
                Err(_) => State::Error,
            };
            let mut row = SiteStatus {
                name: site.name.clone(),
                file: slot.cert.clone(),
                dual,
                family: slot.key_family,
                state,
                installed: leaf,
                served: Vec::new(),
                drift: None,
                waiting: None,
            };
            if let Some(served) = served.as_mut() {
                row.served = served.by_ref().take(site.endpoints.len()).collect();
                row.drift = drift_of(&row);
            }
            rows.push(row);
        }
    }
    rows
}

fn installed_of(info: LeafFacts, now: OffsetDateTime) -> Installed {
    // Move the strings out: no copies per site.
    let LeafFacts {
        sha256,
        issuer,
        not_after,
        domain_type,
        validation,
        key_kind,
    } = info;
    Installed {
        not_after,
        days_left: days_left(not_after, now),
        sha256,
        issuer,
        domain_type,
        validation,
        key_family: KeyFamily::of(&key_kind),
    }
}

fn served_status(target: &Target, seen: Result<Served, ProbeError>) -> ServedStatus {
    ServedStatus {
        endpoint: target.addr.clone(),
        sni: target.sni.clone(),
        seen: seen.map(|s| ServedLeaf {
            sha256: s.leaf.sha256,
            not_after: s.leaf.not_after,
            trusted: s.trusted,
            trust_error: s.trust_error,
        }),
    }
}

/// Some(true) when any answer is not the leaf on disk
/// ([`SiteStatus::drifted`]), Some(false) when all answers are; None when
/// there is nothing to compare (no readable cert file, no answer).
pub fn drift_of(row: &SiteStatus) -> Option<bool> {
    row.installed.as_ref().ok()?;
    if !row.served.iter().any(|e| e.seen.is_ok()) {
        return None;
    }
    Some(row.drifted().next().is_some())
}

/// `"rsa"` / `"ecdsa"` for `status --json`'s `key_type` (None for `Any`).
pub fn key_type_word(k: KeyFamily) -> Option<&'static str> {
    match k {
        KeyFamily::Rsa => Some("rsa"),
        KeyFamily::Ecdsa => Some("ecdsa"),
        KeyFamily::Any => None,
    }
}

/// The first certificate of a cert file (PEM or DER), read with `buf` as
/// scratch space. Later certificates (the chain) are not decoded: the first
/// is what the server serves as its leaf.
pub fn read_leaf(path: &Path, buf: &mut Vec<u8>) -> Result<LeafFacts, CertFileError> {
    let file = File::open(path).map_err(CertFileError::Read)?;
    let meta = file.metadata().map_err(CertFileError::Read)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(CertFileError::TooLarge);
    }
    buf.clear();
    // Bounded also for files that grow while read, and non-regular files.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(buf)
        .map_err(CertFileError::Read)?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(CertFileError::TooLarge);
    }
    leaf_of(buf)
}

/// The first certificate in `bytes` (PEM: the first CERTIFICATE block;
/// otherwise one DER certificate).
fn leaf_of(bytes: &[u8]) -> Result<LeafFacts, CertFileError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(CertFileError::Empty);
    }
    if !contains(bytes, b"-----BEGIN ") {
        return LeafFacts::from_der(bytes).map_err(|e| {
            // Every DER certificate starts with a SEQUENCE tag.
            if bytes.first() == Some(&0x30) {
                CertFileError::Malformed(format!("not a valid DER certificate ({e})"))
            } else {
                CertFileError::NoCertificate
            }
        });
    }
    let mut key_seen = false;
    for (index, item) in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes).enumerate() {
        let block = index + 1;
        let (kind, der) = item.map_err(|e| {
            CertFileError::Malformed(match e {
                rustls_pki_types::pem::Error::MissingSectionEnd { .. } => {
                    format!("truncated PEM: block #{block} has no END line")
                }
                rustls_pki_types::pem::Error::Base64Decode(_) => {
                    format!("malformed PEM: block #{block} has corrupt base64 content")
                }
                _ => format!("malformed PEM at block #{block}"),
            })
        })?;
        match kind {
            SectionKind::Certificate => {
                return LeafFacts::from_der(&der)
                    .map_err(|e| CertFileError::Malformed(format!("first certificate: {e}")));
            }
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey => {
                key_seen = true;
            }
            _ => {}
        }
    }
    Err(if key_seen || contains(bytes, b"PRIVATE KEY-----") {
        CertFileError::KeyOnly
    } else {
        CertFileError::NoCertificate
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn validation_word(v: Validation) -> &'static str {
    match v {
        Validation::DV => "DV",
        Validation::OV => "OV",
        Validation::EV => "EV",
        Validation::Unknown => "unknown",
    }
}

fn domain_word(d: DomainType) -> &'static str {
    match d {
        DomainType::Single => "single",
        DomainType::Multi => "multi",
        DomainType::Wildcard => "wildcard",
    }
}

fn spec_text(i: &Installed) -> String {
    format!(
        "{} {}",
        domain_word(i.domain_type),
        validation_word(i.validation)
    )
}

/// The STATE cell: the state, and `waiting` when a renewal is not installed.
fn state_text(s: &SiteStatus) -> String {
    match (&s.waiting, s.state) {
        (None, state) => state.as_str().to_string(),
        (Some(_), State::Ok) => "waiting".to_string(),
        (Some(_), state) => format!("{}+waiting", state.as_str()),
    }
}

/// `"waiting"` of a waiting site in `status --json`: what is waiting
/// where, and the last deploy-hook failure (null when none was recorded).
fn waiting_json(w: &Option<crate::source::acme::Waiting>) -> serde_json::Value {
    let Some(w) = w else {
        return serde_json::Value::Null;
    };
    serde_json::json!({
        "source": w.source,
        "sha256": w.sha256,
        "not_after": rfc3339(w.not_after),
        "last_failure": w.failure.as_ref().map(|f| serde_json::json!({
            "at": f.at,
            "client": f.client,
            "sha256": f.leaf_sha256,
            "reason": f.reason,
        })),
    })
}

fn site_json(s: &SiteStatus) -> serde_json::Value {
    let mut v = site_json_base(s);
    // Only on a waiting site: the object of every other site is unchanged.
    if let (Some(_), Some(obj)) = (&s.waiting, v.as_object_mut()) {
        obj.insert("waiting".into(), waiting_json(&s.waiting));
    }
    v
}

fn site_json_base(s: &SiteStatus) -> serde_json::Value {
    let served: Vec<serde_json::Value> = s
        .served
        .iter()
        .map(|e| match &e.seen {
            Ok(leaf) => serde_json::json!({
                "endpoint": e.endpoint,
                "sni": e.sni,
                "sha256": leaf.sha256,
                "not_after": rfc3339(leaf.not_after),
                "trusted": leaf.trusted,
                "error": null,
            }),
            Err(err) => serde_json::json!({
                "endpoint": e.endpoint,
                "sni": e.sni,
                "sha256": null,
                "not_after": null,
                "trusted": null,
                "error": err.to_string(),
            }),
        })
        .collect();
    let file = s.file.display().to_string();
    let key_type = s.key_family().and_then(key_type_word);
    match &s.installed {
        Ok(i) => serde_json::json!({
            "name": s.name,
            "file": file,
            "key_type": key_type,
            "not_after": rfc3339(i.not_after),
            "days_left": i.days_left,
            "state": s.state.as_str(),
            "issuer": i.issuer,
            "spec": {
                "domain": domain_word(i.domain_type),
                "validation": validation_word(i.validation),
            },
            "served": served,
            "drift": s.drift,
            "error": null,
        }),
        Err(err) => serde_json::json!({
            "name": s.name,
            "file": file,
            "key_type": key_type,
            "not_after": null,
            "days_left": null,
            "state": s.state.as_str(),
            "issuer": null,
            "spec": null,
            "served": served,
            "drift": s.drift,
            "error": format!("{file}: {err}"),
        }),
    }
}

/// The lines below the table for one site: each problem, then notes.
fn problem_lines(s: &SiteStatus, out: &mut String) {
    let name = &s.label();
    match &s.installed {
        Err(err) => {
            let _ = writeln!(out, "{name}: {}: {err}", s.file.display());
        }
        Ok(i) => {
            let when = rfc3339(i.not_after);
            let d = i.days_left;
            let _ = match s.state {
                State::Expiring => writeln!(
                    out,
                    "{name}: expiring: {d} days left (notAfter {when}); the renewal window is open"
                ),
                State::Critical => writeln!(
                    out,
                    "{name}: critical: {d} days left (notAfter {when}); renew and install now"
                ),
                State::Expired => writeln!(out, "{name}: expired: notAfter {when} has passed"),
                State::Ok | State::Error => Ok(()),
            };
            for (e, leaf) in s.drifted() {
                let _ = writeln!(
                    out,
                    "{name}: drift: {}@{} serves {}… (notAfter {}) but {} holds {}… (notAfter {when}): renewed but not reloaded?",
                    e.sni,
                    e.endpoint,
                    short_sha(&leaf.sha256),
                    rfc3339(leaf.not_after),
                    s.file.display(),
                    short_sha(&i.sha256),
                );
            }
        }
    }
    if let Some(w) = &s.waiting {
        let _ = write!(
            out,
            "{name}: waiting: {} holds a newer certificate ({}…, notAfter {}) than the installed one: renewed but not installed",
            w.source,
            short_sha(&w.sha256),
            rfc3339(w.not_after),
        );
        let _ = match &w.failure {
            Some(f) => writeln!(out, "; the deploy hook failed at {}: {}", f.at, f.reason),
            None => writeln!(
                out,
                "; the agent installs it on its next pass when the store is a [[source]]"
            ),
        };
    }
    for e in &s.served {
        match &e.seen {
            Err(err) => {
                let _ = writeln!(out, "{name}: unreachable: {err}");
            }
            Ok(leaf) if !leaf.trusted => {
                let why = leaf.trust_error.as_deref().unwrap_or("not trusted");
                let _ = writeln!(
                    out,
                    "{name}: note: {}@{} serves an untrusted chain: {why}",
                    e.sni, e.endpoint
                );
            }
            Ok(_) => {}
        }
    }
}

fn short_sha(sha: &str) -> &str {
    sha.get(..SHA_SHOWN).unwrap_or(sha)
}

/// `s` cut to `max` characters, the last one an ellipsis.
fn ellipsize(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut cut: String = s.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Columns padded to their widest cell, two spaces apart; the columns in
/// `right` aligned right; no trailing spaces.
fn table(headers: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let start = out.len();
        for (col, (cell, &w)) in cells.zip(&widths).enumerate() {
            if col > 0 {
                out.push_str("  ");
            }
            let pad = w.saturating_sub(cell.chars().count());
            if right.contains(&col) {
                out.extend(std::iter::repeat_n(' ', pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        let trimmed = out[start..].trim_end().len();
        out.truncate(start + trimmed);
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use time::Duration;
    use time::macros::datetime;

    use super::*;
    use crate::cert::testpki::*;

    const NOW: OffsetDateTime = datetime!(2027-01-01 12:00:00 UTC);

    fn state_at(after_now: Duration) -> (i64, State) {
        let d = days_left(NOW + after_now, NOW);
        (d, state_of(d))
    }

    #[test]
    fn thresholds_at_exact_day_boundaries() {
        let day = Duration::DAY;
        let sec = Duration::SECOND;
        assert_eq!(state_at(day * 31), (31, State::Ok));
        assert_eq!(state_at(day * 31 - sec), (30, State::Expiring));
        assert_eq!(state_at(day * 30), (30, State::Expiring));
        assert_eq!(state_at(day * 11), (11, State::Expiring));
        assert_eq!(state_at(day * 11 - sec), (10, State::Critical));
        assert_eq!(state_at(day * 10), (10, State::Critical));
        assert_eq!(state_at(day), (1, State::Critical));
        // notAfter itself is still inside the validity period (RFC 5280).
        assert_eq!(state_at(Duration::ZERO), (0, State::Critical));
        assert_eq!(state_at(Duration::nanoseconds(-1)), (-1, State::Expired));
        assert_eq!(state_at(-sec), (-1, State::Expired));
        assert_eq!(state_at(-day), (-1, State::Expired));
        assert_eq!(state_at(-day - sec), (-2, State::Expired));
    }

    #[test]
    fn thresholds_are_the_design_numbers() {
        assert_eq!(state_of(EXPIRING_DAYS + 1), State::Ok);
        assert_eq!(state_of(EXPIRING_DAYS), State::Expiring);
        assert_eq!(state_of(CRITICAL_DAYS + 1), State::Expiring);
        assert_eq!(state_of(CRITICAL_DAYS), State::Critical);
        assert_eq!(state_of(0), State::Critical);
        assert_eq!(state_of(-1), State::Expired);
        assert_eq!((EXPIRING_DAYS, CRITICAL_DAYS), (30, 10));
    }

    fn installed(days: i64, sha: &str) -> Installed {
        let not_after = NOW + Duration::days(days) + Duration::HOUR;
        Installed {
            not_after,
            days_left: days_left(not_after, NOW),
            sha256: sha.repeat(64),
            issuer: "Example Trust Services".into(),
            domain_type: DomainType::Multi,
            validation: Validation::OV,
            key_family: KeyFamily::Ecdsa,
        }
    }

    fn site(name: &str, installed: Result<Installed, CertFileError>) -> SiteStatus {
        let state = match &installed {
            Ok(i) => state_of(i.days_left),
            Err(_) => State::Error,
        };
        SiteStatus {
            name: name.into(),
            file: PathBuf::from(format!("/etc/nginx/ssl/{name}.pem")),
            dual: false,
            family: KeyFamily::Any,
            state,
            installed,
            served: Vec::new(),
            drift: None,
            waiting: None,
        }
    }

    fn served(sha: &str, trusted: bool) -> ServedStatus {
        ServedStatus {
            endpoint: "127.0.0.1:443".into(),
            sni: "a.test".into(),
            seen: Ok(ServedLeaf {
                sha256: sha.repeat(64),
                not_after: NOW + Duration::days(90),
                trusted,
                trust_error: (!trusted).then(|| "unknown issuer".to_string()),
            }),
        }
    }

    fn unreachable() -> ServedStatus {
        ServedStatus {
            endpoint: "127.0.0.1:9".into(),
            sni: "a.test".into(),
            seen: Err(ProbeError::Connect {
                target: "a.test@127.0.0.1:9".into(),
                source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            }),
        }
    }

    fn missing() -> CertFileError {
        CertFileError::Read(std::io::Error::from(std::io::ErrorKind::NotFound))
    }

    fn report(probed: bool) -> StatusReport {
        StatusReport {
            sites: vec![
                site("a.test", Ok(installed(90, "a"))),
                site("expiring.example.com", Ok(installed(20, "b"))),
                site("c.test", Ok(installed(5, "c"))),
                site("d.test", Ok(installed(-3, "d"))),
                site("e.test", Err(missing())),
            ],
            probed,
        }
    }

    #[test]
    fn drift_compares_every_answer_with_disk() {
        let drift = |installed: Result<Installed, CertFileError>, served: Vec<ServedStatus>| {
            let mut row = site("a.test", installed);
            row.served = served;
            (drift_of(&row), row.drifted().count())
        };
        let disk = || Ok(installed(90, "a"));
        assert_eq!(drift(disk(), vec![served("a", true)]), (Some(false), 0));
        assert_eq!(
            drift(disk(), vec![served("a", true), served("b", true)]),
            (Some(true), 1)
        );
        assert_eq!(
            drift(disk(), vec![unreachable(), served("a", true)]),
            (Some(false), 0)
        );
        assert_eq!(drift(disk(), vec![unreachable()]), (None, 0));
        assert_eq!(drift(disk(), vec![]), (None, 0));
        assert_eq!(drift(Err(missing()), vec![served("a", true)]), (None, 0));
    }

    #[test]
    fn exit_code_zero_only_when_nothing_needs_attention() {
        let mut r = StatusReport {
            sites: vec![site("a.test", Ok(installed(90, "a")))],
            probed: true,
        };
        assert_eq!(r.exit_code(), 0);
        r.sites[0].served = vec![served("a", false)];
        r.sites[0].drift = Some(false);
        assert_eq!(r.exit_code(), 0, "untrusted alone is a note");
        r.sites[0].served.push(unreachable());
        assert_eq!(r.exit_code(), 1, "an endpoint without a handshake");
        r.sites[0].served = vec![served("b", true)];
        r.sites[0].drift = Some(true);
        assert_eq!(r.exit_code(), 1, "drift");
        for (days, want) in [(31, 0), (30, 1), (10, 1), (-1, 1)] {
            let r = StatusReport {
                sites: vec![site("a.test", Ok(installed(days, "a")))],
                probed: false,
            };
            assert_eq!(r.exit_code(), want, "{days} days");
        }
        assert_eq!(report(false).exit_code(), 1);
        let empty = StatusReport {
            sites: Vec::new(),
            probed: false,
        };
        assert_eq!(empty.exit_code(), 0);
        assert_eq!(empty.to_text(), "no sites configured\n");
    }

    #[test]
    fn text_is_an_aligned_table_with_problem_lines() {
        let text = report(false).to_text();
        let lines: Vec<&str> = text.lines().collect();
        let header = lines[0];
        assert!(header.starts_with("NAME  "), "{text}");
        assert!(!header.contains("SERVED"), "{text}");
        // Every column starts where its header starts.
        let col = |h: &str| header.find(h).expect(h);
        for row in &lines[1..6] {
            for h in ["NOT AFTER", "DAYS", "STATE", "ISSUER", "SPEC"] {
                assert_eq!(&row[col(h) - 2..col(h)], "  ", "{h}: {text}");
            }
        }
        let row_a = lines[1];
        assert!(row_a.starts_with("a.test "), "{text}");
        assert_eq!(&row_a[col("STATE")..col("STATE") + 2], "ok", "{text}");
        assert_eq!(
            &row_a[col("ISSUER")..col("ISSUER") + 22],
            "Example Trust Services"
        );
        assert!(row_a[col("SPEC")..].starts_with("multi OV"), "{text}");
        // DAYS is right-aligned under its header's right edge.
        let days_end = col("DAYS") + 4;
        assert_eq!(&row_a[days_end - 2..days_end], "90", "{text}");
        assert_eq!(&lines[4][days_end - 2..days_end], "-3", "{text}");
        assert_eq!(&lines[5][days_end - 1..days_end], "-", "{text}");
        assert_eq!(&lines[5][col("STATE")..col("STATE") + 5], "error");
        for (i, state) in [(2, "expiring"), (3, "critical"), (4, "expired")] {
            assert!(lines[i][col("STATE")..].starts_with(state), "{text}");
        }
        assert!(lines.iter().all(|l| l.trim_end() == *l), "trailing spaces");

        assert!(
            text.contains("expiring.example.com: expiring: 20 days left"),
            "{text}"
        );
        assert!(text.contains("c.test: critical: 5 days left"), "{text}");
        assert!(text.contains("d.test: expired: notAfter"), "{text}");
        assert!(
            text.contains("e.test: /etc/nginx/ssl/e.test.pem: cannot read"),
            "{text}"
        );
        assert!(!text.contains("a.test:"), "ok site has no problem line");
        assert!(text.ends_with("\n4 of 5 sites need attention\n"), "{text}");
    }

    #[test]
    fn text_with_probe_shows_served_and_drift() {
        let mut r = report(true);
        r.sites[0].served = vec![served("a", true), served("z", true)];
        r.sites[0].drift = Some(true);
        r.sites[1].served = vec![unreachable()];
        r.sites[2].served = vec![served("c", false)];
        r.sites[2].drift = Some(false);
        let text = r.to_text();
        let lines: Vec<&str> = text.lines().collect();
        let header = lines[0];
        assert!(
            header.contains("  SPEC      SERVED  ") && header.ends_with("  DRIFT"),
            "{text}"
        );
        let served_col = header.find("SERVED").expect("SERVED");
        let drift_col = header.find("DRIFT").expect("DRIFT");
        assert!(lines[1][served_col..].starts_with("2/2"), "{text}");
        assert_eq!(&lines[1][drift_col..], "YES", "{text}");
        assert!(lines[2][served_col..].starts_with("0/1"), "{text}");
        assert_eq!(&lines[2][drift_col..], "-", "{text}");
        assert!(
            lines[3][served_col..].starts_with("1/1 untrusted"),
            "{text}"
        );
        assert_eq!(&lines[3][drift_col..], "no", "{text}");
        assert!(
            text.contains(&format!(
                "a.test: drift: a.test@127.0.0.1:443 serves {}… (notAfter",
                "z".repeat(16)
            )),
            "{text}"
        );
        assert!(
            text.contains("/etc/nginx/ssl/a.test.pem holds aaaaaaaaaaaaaaaa…"),
            "{text}"
        );
        assert!(
            text.contains(
                "expiring.example.com: unreachable: a.test@127.0.0.1:9: TCP connect failed"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "c.test: note: a.test@127.0.0.1:443 serves an untrusted chain: unknown issuer"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_waiting_site_needs_attention_and_says_why() {
        let mut r = report(false);
        r.sites.retain(|s| s.state == State::Ok);
        assert!(!r.sites.is_empty());
        assert_eq!(r.exit_code(), 0);
        r.sites[0].waiting = Some(crate::source::acme::Waiting {
            site: r.sites[0].name.clone(),
            source: "certbot live/a.test".into(),
            sha256: "ab".repeat(32),
            not_after: NOW + Duration::days(90),
            failure: Some(crate::hook::HookFailure {
                site: r.sites[0].name.clone(),
                at: "2027-01-01T11:00:00Z".into(),
                client: crate::hook::Client::Certbot,
                dir: "/etc/letsencrypt/live/a.test".into(),
                leaf_sha256: "ab".repeat(32),
                reason: "nginx config test failed".into(),
            }),
        });
        assert_eq!(r.exit_code(), 1);
        let text = r.to_text();
        assert!(text.contains(" waiting "), "{text}");
        assert!(
            text.contains("certbot live/a.test holds a newer certificate (abababab"),
            "{text}"
        );
        assert!(
            text.contains(
                "the deploy hook failed at 2027-01-01T11:00:00Z: nginx config test failed"
            ),
            "{text}"
        );
        let j = r.to_json();
        let w = &j["sites"][0]["waiting"];
        assert_eq!(w["source"], "certbot live/a.test");
        assert_eq!(w["last_failure"]["client"], "certbot");
        assert_eq!(w["last_failure"]["reason"], "nginx config test failed");
        if let Some(other) = j["sites"].as_array().and_then(|a| a.get(1)) {
            assert!(other.get("waiting").is_none(), "{other}");
        }
    }

    #[test]
    fn json_shape() {
        let mut r = report(true);
        r.sites[0].served = vec![served("a", true), unreachable()];
        r.sites[0].drift = Some(false);
        let j = r.to_json();
        let obj = j.as_object().expect("object");
        assert_eq!(obj.keys().collect::<Vec<_>>(), ["sites"]);
        let sites = j["sites"].as_array().expect("sites");
        assert_eq!(sites.len(), 5);
        let mut keys: Vec<&str> = sites[0]
            .as_object()
            .expect("site")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "days_left",
                "drift",
                "error",
                "file",
                "issuer",
                "key_type",
                "name",
                "not_after",
                "served",
                "spec",
                "state"
            ]
        );
        let a = &sites[0];
        assert_eq!(a["name"], "a.test");
        assert_eq!(a["file"], "/etc/nginx/ssl/a.test.pem");
        assert_eq!(a["days_left"], 90);
        assert_eq!(a["state"], "ok");
        assert_eq!(a["not_after"], "2027-04-01T13:00:00Z");
        assert_eq!(a["issuer"], "Example Trust Services");
        assert_eq!(
            a["spec"],
            serde_json::json!({"domain": "multi", "validation": "OV"})
        );
        assert_eq!(a["drift"], false);
        assert_eq!(a["key_type"], "ecdsa");
        assert!(a["error"].is_null());
        let ok = &a["served"][0];
        let mut served_keys: Vec<&str> = ok
            .as_object()
            .expect("served")
            .keys()
            .map(String::as_str)
            .collect();
        served_keys.sort_unstable();
        assert_eq!(
            served_keys,
            ["endpoint", "error", "not_after", "sha256", "sni", "trusted"]
        );
        assert_eq!(ok["endpoint"], "127.0.0.1:443");
        assert_eq!(ok["sni"], "a.test");
        assert_eq!(ok["sha256"], "a".repeat(64));
        assert_eq!(ok["trusted"], true);
        assert!(ok["error"].is_null());
        let down = &a["served"][1];
        assert!(down["sha256"].is_null() && down["trusted"].is_null());
        assert!(
            down["error"]
                .as_str()
                .expect("error")
                .contains("TCP connect failed")
        );

        assert_eq!(sites[1]["state"], "expiring");
        assert_eq!(sites[2]["state"], "critical");
        assert_eq!(sites[3]["state"], "expired");
        assert_eq!(sites[3]["days_left"], -3);
        assert!(sites[1]["drift"].is_null(), "no answers: no drift verdict");
        let e = &sites[4];
        assert_eq!(e["state"], "error");
        for k in [
            "not_after",
            "days_left",
            "issuer",
            "spec",
            "drift",
            "key_type",
        ] {
            assert!(e[k].is_null(), "{k}: {e}");
        }
        assert_eq!(e["served"], serde_json::json!([]));
        assert!(
            e["error"]
                .as_str()
                .expect("error")
                .starts_with("/etc/nginx/ssl/e.test.pem: cannot read"),
            "{e}"
        );

        // Without --probe: no answers, drift null.
        let j = report(false).to_json();
        assert_eq!(j["sites"][0]["served"], serde_json::json!([]));
        assert!(j["sites"][0]["drift"].is_null());
    }

    #[test]
    fn long_issuer_is_cut_in_the_table_only() {
        let mut i = installed(90, "a");
        i.issuer = "CN=A Very Long Issuing Authority Name, OU=Operations".into();
        let r = StatusReport {
            sites: vec![site("a.test", Ok(i))],
            probed: false,
        };
        let text = r.to_text();
        assert!(
            text.contains("CN=A Very Long Issuing Authorit…  multi OV"),
            "{text}"
        );
        assert_eq!(
            r.to_json()["sites"][0]["issuer"],
            "CN=A Very Long Issuing Authority Name, OU=Operations"
        );
    }

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
            let path = self.dir.path().join(name);
            let mut f = File::create(&path).expect("create");
            f.write_all(bytes.as_ref()).expect("write");
            path
        }
    }

    #[test]
    fn read_leaf_takes_the_first_certificate_only() {
        let files = Files {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let root_ca = root("Status Root");
        let inter = intermediate("Status Inter", &root_ca);
        let mut params = leaf_params(&["*.a.test", "a.test"]);
        params.custom_extensions = vec![policy_extension("2.23.140.1.2.2")];
        let key = p256();
        let leaf = sign_leaf(&params, &key, &inter);
        let mut buf = Vec::new();

        // Full chain, with a broken block after the leaf: never decoded.
        let chain = files.write(
            "chain.pem",
            leaf.to_pem() + &inter.cert.to_pem() + "-----BEGIN CERTIFICATE-----\n!!!\n",
        );
        let got = read_leaf(&chain, &mut buf).expect("leaf");
        assert_eq!(got.sha256, leaf.sha256);
        let i = installed_of(got, NOW);
        assert_eq!(i.issuer, "Status Inter Org");
        assert_eq!(i.domain_type, DomainType::Wildcard);
        assert_eq!(i.validation, Validation::OV);

        let der = files.write("leaf.der", leaf.der.as_ref());
        assert_eq!(read_leaf(&der, &mut buf).expect("der").sha256, leaf.sha256);

        // A combined key + cert file: the key is skipped, not echoed.
        let combined = files.write("combined.pem", key.serialize_pem() + &leaf.to_pem());
        assert_eq!(
            read_leaf(&combined, &mut buf).expect("combined").sha256,
            leaf.sha256
        );
    }

    #[test]
    fn read_leaf_says_why_a_file_is_no_certificate() {
        let files = Files {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let mut buf = Vec::new();
        let err = |path: &Path, buf: &mut Vec<u8>| {
            read_leaf(path, buf)
                .expect_err("not a certificate")
                .to_string()
        };
        let missing = files.dir.path().join("missing.pem");
        assert!(err(&missing, &mut buf).starts_with("cannot read: "));
        assert!(err(files.dir.path(), &mut buf).starts_with("cannot read: "));
        assert_eq!(
            err(&files.write("e.pem", "\n \n"), &mut buf),
            "file is empty"
        );
        assert!(err(&files.write("t.txt", "hello"), &mut buf).starts_with("no certificate"));
        let key = p256().serialize_pem();
        let key_msg = err(&files.write("k.pem", &key), &mut buf);
        assert_eq!(key_msg, "holds a private key but no certificate");
        let leaf = sign_leaf(&leaf_params(&["a.test"]), &p256(), &root("R"));
        let pem_text = leaf.to_pem();
        let cut = files.write("cut.pem", &pem_text[..pem_text.len() - 40]);
        assert!(err(&cut, &mut buf).contains("truncated PEM"));
        let half = files.write("half.der", &leaf.der[..leaf.der.len() / 2]);
        assert!(err(&half, &mut buf).contains("not a valid DER certificate"));
        let mut big = pem_text.into_bytes();
        big.resize(MAX_FILE_BYTES as usize + 1, b'\n');
        let big = files.write("big.pem", big);
        assert_eq!(err(&big, &mut buf), "file is larger than the 1 MiB limit");
    }
}
