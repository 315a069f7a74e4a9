//! Steps 1–2 of DESIGN.md's pipeline for one change, and what the engine
//! ([`crate::batch`]) needs to know about a site before it changes files:
//!
//! ```text
//! 1 bundle → 2 validate → 3 stage → 4 swap → 5 configtest → 6 reload → 7 probe → 8 commit
//! └──────── here ─────┘   └──────────────── crate::batch (once) ──────────────────────┘
//! ```
//!
//! [`check`] and [`check_full`] parse a bundle and apply every rule
//! against what the site has installed; [`new_files`] and
//! [`saved_version`] say which bytes an install or a rollback writes;
//! [`Env`] is what a run borrows from the host; [`InstallError`] the
//! environment errors (exit 2). `certswap install` and `rollback` are a
//! batch of one through the engine's steps 3–8 ([`crate::batch::install_one`],
//! [`crate::batch::rollback_one`]).

use std::path::PathBuf;
use std::time::Instant;

use time::OffsetDateTime;

use crate::bundle::{self, Bundle, Files};
use crate::cert::CertInfo;
use crate::config::{Config, Mode, Site};
use crate::failpoint;
pub use crate::matcher::{pair_family, pair_site};
use crate::probe::{KeyFamily, Prober, Probers};
use crate::report::{Leaf, Outcome, ResultKind, Retryable, ServedRow};
use crate::server::{ServerError, WebServer};
use crate::store::{NewFile, Op, Role, SiteStore, Store, StoreError};
use crate::trust::TrustStore;
use crate::validate::{self, Installed};

/// A failure before any file changed (exit 2): the environment, not the bundle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("before changing anything: {target} does not answer: {reason}; nothing was changed")]
    NotServing { target: String, reason: String },
    #[error(transparent)]
    Probe(crate::probe::ProbeError),
    #[error("recovering an interrupted change of {site}: {source}")]
    Recover { site: String, source: ServerError },
    /// The server cannot be reloaded safely (its pid file does not name the
    /// proven server): refused before any file moved.
    #[error("before changing anything: {0}; nothing was changed")]
    Server(ServerError),
    /// Preflight truth: what an endpoint serves is not the certificate the
    /// site's file holds, so changing the file would prove nothing.
    #[error(
        "before changing anything: {} serves {} (sha256 {}), but {} holds {} (sha256 {}): the \
         server does not read that file, or has not loaded it since it changed; nothing was \
         changed (check the site's cert path, or use --force to install and reload anyway)",
        .0.endpoint, .0.served_subject, .0.served_sha256, .0.file.display(), .0.file_subject,
        .0.file_sha256
    )]
    ServedIsNotOnDisk(Box<Mismatch>),
    /// The bundle is the installed certificate, and every endpoint showed
    /// it once, but not on enough handshakes in a row.
    #[error(
        "before changing anything: site {site} has this certificate installed, but it is not \
         proven served: {reason}; nothing was changed (use --force to install it again and reload)"
    )]
    NotProvenServed { site: String, reason: String },
    /// In-place mode cannot swap a link (certbot's `live/` files are links
    /// into `archive/`, moved by certbot itself on every renewal).
    #[error(
        "{path} is a symlink to {points_to}, and site {site} replaces its files in place, which \
         works on regular files only; nothing was changed. Give the site its own copies \
         (`certswap adopt --site {site}`, or copy the files and point the server config at the \
         copies), or set mode = \"managed\" for the site"
    )]
    SymlinkTarget {
        site: String,
        path: PathBuf,
        points_to: String,
    },
}

/// An endpoint's served leaf and the leaf of the site's certificate file,
/// when they differ.
#[derive(Debug)]
pub struct Mismatch {
    pub endpoint: String,
    pub served_subject: String,
    pub served_sha256: String,
    pub file: PathBuf,
    pub file_subject: String,
    pub file_sha256: String,
}

/// What the pipeline needs from the host: config, server, probers, store.
pub struct Env<'a> {
    pub config: &'a Config,
    pub server: &'a dyn WebServer,
    /// One prober per key type, built once when the host is opened.
    pub probers: &'a Probers,
    pub store: &'a Store,
}

impl Env<'_> {
    /// The prober of `site` — a site, or one slot of a dual site as
    /// [`pair_site`] gives it, asking for that slot's key type: the one
    /// place the engine, recovery and the commands get a prober from.
    pub fn prober_for(&self, site: &Site) -> &Prober {
        self.probers.of(site.key_family)
    }

    /// The prober offering every key type.
    pub fn prober(&self) -> &Prober {
        self.probers.of(KeyFamily::Any)
    }
}

/// Steps 1–2 only (`certswap check`, and the start of every install):
/// parse the bundle and apply every rule against what `site` has installed
/// (or, without a site, against nothing). Touches nothing. Returns the
/// bundle when it may be installed; otherwise `out` ends rejected.
pub fn check(site: Option<&Site>, files: &Files, force: bool, out: &mut Outcome) -> Option<Bundle> {
    check_with(site, files, force, None, out)
}

/// [`check`], plus the trust rule when `trust` is given: a site whose
/// installed chain clients trust must get a chain they trust too, judged on
/// the chain the bundle carries (no AIA fetching). A bundle that is the
/// installed certificate is refused here ("is the one installed already");
/// install and batches ask [`check_full`] instead, and look at what is
/// served.
pub fn check_with(
    site: Option<&Site>,
    files: &Files,
    force: bool,
    trust: Option<&TrustStore>,
    out: &mut Outcome,
) -> Option<Bundle> {
    let checked = check_full(site, files, force, trust, out);
    match (&checked.bundle, checked.same, force) {
        (Some(b), true, false) => {
            out.reject(
                validate::ValidationError::SameAsInstalled {
                    subject: b.leaf.subject.clone(),
                    sha256: b.leaf.sha256.clone(),
                }
                .to_string(),
            );
            None
        }
        _ => checked.bundle,
    }
}

/// What steps 1–2 found, for the callers that go on to install.
pub(crate) struct Checked {
    /// The bundle, when it may go on (also when it is the installed one:
    /// then `same`).
    pub(crate) bundle: Option<Bundle>,
    /// The bundle is what the site has now: the same leaf, chain and key.
    /// Without --force, the rules after "must extend" were not applied.
    pub(crate) same: bool,
    /// The site's certificate file and the leaf it holds now.
    pub(crate) on_disk: Option<OnDisk>,
}

/// The leaf a site's certificate file holds: what its endpoints should be
/// serving before anything changes.
#[derive(Debug, Clone)]
pub(crate) struct OnDisk {
    pub(crate) file: PathBuf,
    pub(crate) sha256: String,
    pub(crate) subject: String,
}

/// Steps 1–2: a site whose file in-place mode cannot replace is refused
/// first (with the real reason, before any rule about the bundle), then
/// the bundle is parsed and every rule applied. The installed certificate
/// offered again is not refused here but marked `same`.
pub(crate) fn check_full(
    site: Option<&Site>,
    files: &Files,
    force: bool,
    trust: Option<&TrustStore>,
    out: &mut Outcome,
) -> Checked {
    let started = Instant::now();
    let mut checked = Checked {
        bundle: None,
        same: false,
        on_disk: None,
    };
    if let Some(e) = site.and_then(symlinked_target) {
        out.reject(e.to_string());
        return checked;
    }

    // 1. bundle: parse the files.
    let mut bundle = match files.load() {
        Ok(b) => b,
        Err(e) => {
            out.reject(e.to_string());
            return checked;
        }
    };

    // 2. validate against what is installed now.
    let (installed, installed_chain, names) = match site {
        Some(site) => {
            let (mut installed, chain, read_warnings) = read_installed_with_chain(site);
            out.warnings.extend(read_warnings);
            // The installed key matters for an own-CSR renewal and to tell
            // the installed bundle offered again; otherwise the bundle's
            // key replaces it unread (its parse is a P-256 point
            // multiplication, a tenth of a batch's check).
            if bundle.key.is_none() || holds_leaf(&installed, &bundle) {
                match read_installed_key(site) {
                    Ok(key) => installed.key = key,
                    Err(why) => out.warnings.push(why),
                }
            }
            (installed, chain, site.all_names())
        }
        None => (Installed::default(), Vec::new(), Vec::new()),
    };
    out.old = installed.leaf.as_ref().map(Leaf::of);
    out.new = Some(Leaf::of(&bundle.leaf));
    checked.on_disk = site.zip(installed.leaf.as_ref()).map(|(s, l)| OnDisk {
        file: s.cert.clone(),
        sha256: l.sha256.clone(),
        subject: l.subject.clone(),
    });
    let ctx = validate::Context {
        site_names: &names,
        installed: &installed,
        now: OffsetDateTime::now_utc(),
        force,
    };
    let report = if failpoint::skip_validation() {
        Ok(validate::Report::default())
    } else {
        validate::validate(&mut bundle, &ctx)
    };
    out.timings_ms.validate = ms(started);
    match report {
        Ok(r) => {
            out.warnings.extend(r.warnings);
            out.days_added = r.days_added;
            if let Some(trust) = trust
                && let Err(why) = trust_rule(
                    trust,
                    &names,
                    &installed,
                    &installed_chain,
                    &bundle,
                    force,
                    out,
                )
            {
                out.reject(why);
                return checked;
            }
            out.result = ResultKind::DryRun;
            checked.same =
                site.is_some_and(|s| is_installed(s, &installed, &installed_chain, &bundle));
            checked.bundle = Some(bundle);
        }
        // Every rule before "must extend" passed; whether it is also what
        // the site serves is for the caller to find out.
        Err(e @ validate::ValidationError::SameAsInstalled { .. }) => {
            match site.is_some_and(|s| is_installed(s, &installed, &installed_chain, &bundle)) {
                true => {
                    out.result = ResultKind::DryRun;
                    checked.same = true;
                    checked.bundle = Some(bundle);
                }
                // The same leaf with another chain or key: a repair that
                // --force allows, not a re-run.
                false => out.reject(e.to_string()),
            }
        }
        Err(e) => {
            // The host's clock, not the bundle: the same bytes pass later.
            if matches!(e, validate::ValidationError::NotYetValid { .. }) {
                out.retry_because(Retryable::NotYetValid);
            }
            out.reject(e.to_string());
        }
    }
    checked
}

/// The site's certificate file holds the bundle's leaf already.
fn holds_leaf(installed: &Installed, bundle: &Bundle) -> bool {
    installed
        .leaf
        .as_ref()
        .is_some_and(|l| l.sha256 == bundle.leaf.sha256)
}

/// Installing `bundle` on `site` would write what the site has now: the
/// same leaf, the same chain (or a separate chain file left as it is), and
/// an installed key that belongs to the leaf.
fn is_installed(
    site: &Site,
    installed: &Installed,
    installed_chain: &[CertInfo],
    bundle: &Bundle,
) -> bool {
    let leaf_same = holds_leaf(installed, bundle);
    let key_same = installed
        .key
        .as_ref()
        .is_some_and(|k| k.spki_der == bundle.leaf.spki_der);
    let shas = |c: &[CertInfo]| c.iter().map(|c| c.sha256.clone()).collect::<Vec<_>>();
    let chain_same = (site.chain.is_some() && bundle.chain.is_empty())
        || shas(installed_chain) == shas(&bundle.chain);
    leaf_same && key_same && chain_same
}

/// A target of an in-place site that is a symlink: in-place mode swaps
/// regular files only, whatever the bundle, so this is said before any
/// rule about the bundle (certbot's `live/` links are the usual case, and
/// "not later than the installed one" would hide it).
pub fn symlinked_target(site: &Site) -> Option<InstallError> {
    // A file an ACME client owns (certbot's live/ link, acme.sh's dir) is
    // refused in both modes, with adopt as the fix: managed mode would
    // re-point certbot's own links and break its next renewal.
    let targets = site_targets(site);
    if let Some((path, a)) = targets
        .iter()
        .find_map(|(_, p)| crate::discover::acme::classify(p).map(|a| (p.clone(), a)))
    {
        return Some(InstallError::Store(StoreError::AcmeOwned {
            path,
            why: a.why(),
            site: site.name.clone(),
        }));
    }
    if site.mode != Mode::InPlace {
        return None;
    }
    targets.into_iter().find_map(|(_, path)| {
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if !meta.file_type().is_symlink() {
            return None;
        }
        let points_to = std::fs::read_link(&path)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|e| format!("an unreadable target ({e})"));
        Some(InstallError::SymlinkTarget {
            site: site.name.clone(),
            path,
            points_to,
        })
    })
}

/// The trust rule (step 2, after the per-certificate rules): never make
/// the site worse for visitors. If the installed chain is trusted for the
/// site's name, the new one must be too; an untrusted site (internal CA,
/// self-signed) only gets a warning. `--force` turns the refusal into a
/// warning.
fn trust_rule(
    trust: &TrustStore,
    names: &[String],
    installed: &Installed,
    installed_chain: &[CertInfo],
    bundle: &Bundle,
    force: bool,
    out: &mut Outcome,
) -> Result<(), String> {
    // A wildcard site name is judged by a name it covers.
    let Some(name) = names.first().map(|n| n.replace("*.", "wildcard-check.")) else {
        return Ok(());
    };
    let new = trust.judge(&bundle.leaf, &bundle.chain, &name);
    if new.trusted {
        return Ok(());
    }
    let why = new.error.unwrap_or_else(|| "not trusted".into());
    let was_trusted = installed
        .leaf
        .as_ref()
        .is_some_and(|leaf| trust.judge(leaf, installed_chain, &name).trusted);
    if was_trusted && !force {
        return Err(format!(
            "the new certificate would not be trusted by clients for {name} although the installed one is: {why} (use --force to install anyway)"
        ));
    }
    out.warnings.push(format!(
        "the new certificate is not trusted for {name}: {why}"
    ));
    Ok(())
}

/// The first endpoint in `rows` that serves a leaf other than the one the
/// site's certificate file holds, as the refusal naming both.
pub(crate) fn served_is_not_on_disk(
    on_disk: Option<&OnDisk>,
    rows: &[ServedRow],
) -> Option<InstallError> {
    let disk = on_disk?;
    rows.iter().find_map(|r| {
        let served = r.sha256.as_deref()?;
        (served != disk.sha256).then(|| {
            InstallError::ServedIsNotOnDisk(Box::new(Mismatch {
                endpoint: format!("{}@{}", r.sni, r.endpoint),
                served_subject: r.subject.clone().unwrap_or_default(),
                served_sha256: served.to_string(),
                file: disk.file.clone(),
                file_subject: disk.subject.clone(),
                file_sha256: disk.sha256.clone(),
            }))
        })
    })
}

/// What a rollback of `site` installs: its newest saved version, as the
/// op, the files and the sha256 of their leaf; `out` gets the old and new
/// leaves. None when the saved version holds no readable certificate
/// (then `out` is rejected with why).
pub(crate) fn saved_version(
    site: &Site,
    site_store: &SiteStore,
    out: &mut Outcome,
) -> Result<Option<(Op, Vec<NewFile>, String)>, InstallError> {
    let (version, files) = match site.mode {
        Mode::InPlace => site_store.previous(&site_targets(site))?,
        Mode::Managed => site_store.previous_managed()?,
    };
    let Some(leaf) = files
        .iter()
        .find(|f| f.role == Role::Cert)
        .and_then(|f| bundle::leaf_of(&f.bytes))
    else {
        out.reject(format!(
            "the saved version {} of {} holds no readable certificate",
            version.id, site.name
        ));
        return Ok(None);
    };
    let (installed, _) = read_installed(site);
    out.old = installed.leaf.as_ref().map(Leaf::of);
    out.new = Some(Leaf::of(&leaf));
    let op = Op::Rollback {
        version: version.id,
    };
    Ok(Some((op, files, leaf.sha256)))
}

/// Every file the server reads for `site`, with its role. A combined PEM
/// (HAProxy's: `key` is the `cert` file) is one file, in the cert role.
pub(crate) fn site_targets(site: &Site) -> Vec<(Role, PathBuf)> {
    let mut t = vec![(Role::Cert, site.cert.clone())];
    if !is_combined(site) {
        t.push((Role::Key, site.key.clone()));
    }
    if let Some(chain) = &site.chain {
        t.push((Role::Chain, chain.clone()));
    }
    t
}

/// What the site's certificate files hold now (not its key: that is
/// [`read_installed_key`]), for validation. Unreadable installed files are
/// not fatal (the new bundle may be the repair), but said.
pub(crate) fn read_installed(site: &Site) -> (Installed, Vec<String>) {
    let (installed, _, warnings) = read_installed_with_chain(site);
    (installed, warnings)
}

/// [`read_installed`], plus the installed chain certificates themselves
/// (for the trust rule).
fn read_installed_with_chain(site: &Site) -> (Installed, Vec<CertInfo>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut installed = Installed::default();
    let mut chain_certs = Vec::new();
    if site.cert.exists() {
        match bundle::read_certs(&site.cert) {
            Ok(mut certs) if !certs.is_empty() => {
                installed.leaf = Some(certs.remove(0));
                installed.chain_len = certs.len();
                chain_certs = certs;
            }
            Ok(_) => {}
            Err(e) => warnings.push(format!(
                "the installed certificate cannot be read, so it is not compared: {e}"
            )),
        }
    }
    if let Some(chain) = &site.chain
        && chain.exists()
    {
        match bundle::read_certs(chain) {
            Ok(c) => {
                installed.chain_len += c.len();
                chain_certs.extend(c);
            }
            Err(e) => warnings.push(format!("the installed chain cannot be read: {e}")),
        }
    }
    (installed, chain_certs, warnings)
}

/// The key the site's key file holds now; None when there is no file, a
/// warning when it cannot be read.
fn read_installed_key(site: &Site) -> Result<Option<bundle::KeyMaterial>, String> {
    if !site.key.exists() {
        return Ok(None);
    }
    bundle::read_key(&site.key)
        .map(Some)
        .map_err(|e| format!("the installed key cannot be read: {e}"))
}

/// The site's key lives in its cert file: one combined PEM (cert, chain,
/// key), as HAProxy reads it.
pub(crate) fn is_combined(site: &Site) -> bool {
    site.key == site.cert
}

/// The bytes each of the site's files gets from `bundle`: a full chain in
/// `cert`, or leaf in `cert` and chain in `chain` when the site has one.
/// A combined PEM ([`is_combined`]) gets the full chain and then the key:
/// the bundle's, or for an own-CSR renewal the one the file holds now
/// (validation proved it matches the new leaf).
pub(crate) fn new_files(site: &Site, bundle: &Bundle) -> Vec<NewFile> {
    let mut files = Vec::new();
    let mut cert_pem = match &site.chain {
        Some(_) => bundle.leaf.to_pem(),
        None => bundle.fullchain_pem(),
    };
    if is_combined(site) {
        let key = match &bundle.key {
            Some(k) => Some(k.pem.clone()),
            None => bundle::read_key(&site.cert).ok().map(|k| k.pem),
        };
        if let Some(key) = key {
            if !cert_pem.ends_with('\n') {
                cert_pem.push('\n');
            }
            cert_pem.push_str(&key);
        }
    }
    files.push(NewFile {
        role: Role::Cert,
        target: site.cert.clone(),
        bytes: cert_pem.into_bytes(),
    });
    if let Some(key) = bundle.key.as_ref().filter(|_| !is_combined(site)) {
        files.push(NewFile {
            role: Role::Key,
            target: site.key.clone(),
            bytes: key.pem.clone().into_bytes(),
        });
    }
    // A bundle without a chain leaves a separate chain file as it is (the
    // validation warned that clients may see an incomplete chain).
    if let Some(chain) = &site.chain
        && !bundle.chain.is_empty()
    {
        files.push(NewFile {
            role: Role::Chain,
            target: chain.clone(),
            bytes: bundle.chain_pem().into_bytes(),
        });
    }
    files
}

fn ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}
