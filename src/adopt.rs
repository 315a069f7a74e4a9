//! `certswap adopt --site NAME`: move a site off an ACME client's files
//! (certbot's `live/NAME/*.pem` symlinks, acme.sh's domain directory) onto
//! certswap's own copies, so in-place swaps (or managed mode) work on it.
//! Nothing about the certificate changes, only where the server reads it.
//!
//! Without `--apply` it only reads: the copies it would make, and every
//! line it would change in the server's config (found by `discover`) and in
//! certswap's own config, as `file:line`, old line, new line. With
//! `--apply`, numbered as in the body:
//!
//! 1. the host lock; an earlier adopt a crash left open is undone first;
//! 2. every endpoint must serve the lineage's leaf now (else nothing could
//!    prove that nothing changed);
//! 3. the undo record `state_dir/adopt/SITE/record.json` (phase
//!    `applying`) with the old and the new bytes of every file it rewrites
//!    (`files/N.old`, `files/N.new`, 0600) — before anything else is written;
//! 4. the copies, in `DIR/certswap/SITE/` beside the server's main config
//!    file (root, directory 0755, certificates 0644, key 0600), created
//!    exclusively; with `--managed` they become links into
//!    `state_dir/live/SITE/` at once (the store's managed adoption);
//! 5. each server config file: the new text beside it, renamed over it
//!    (a symlinked file such as `sites-enabled/x -> ../sites-available/x`
//!    is rewritten where it really lives);
//! 6. the config test (failure: the old files back, no reload, exit 3);
//! 7. the record says `reloading`, then the reload through the server's
//!    [`crate::server::WebServer`] (as install does);
//! 8. fresh handshakes prove the same leaf is served (failure: old files
//!    back, config test, reload, the old state proven, exit 3);
//! 9. certswap.toml: only the site's `cert`/`key`/`chain` (and `mode`)
//!    lines are replaced, by text, so comments stay; the result must parse
//!    and differ in nothing else — otherwise adopt refuses before step 3;
//! 10. the record says `done` and stays: it is what `certswap rollback
//!    --site NAME` undoes while no install has happened since.
//!
//! Rollback and the repair of a crashed adopt go the same way backwards:
//! the old bytes back (only where a file still holds exactly what adopt
//! wrote), config test, reload, the leaf of the restored paths proven, the
//! copies removed, the record removed. A rollback that cannot prove the
//! old state puts adopt's lines back instead (see `revert`).

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cert::sha256_hex;
use crate::config::{Config, Mode, Site};
use crate::discover::{self, ConfigRef, acme};
use crate::fsio::{self, Perms};
use crate::install::{self, Env};
use crate::owner;
use crate::probe::{self, Target};
use crate::report::{Leaf, Outcome, ResultKind, ServedRow};
use crate::service::RestoreFailed;
use crate::store::Role;

/// Largest config file adopt rewrites.
const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;
/// Largest certificate or key file it copies.
const MAX_CERT_BYTES: u64 = crate::bundle::MAX_FILE_BYTES;
const STAGED_SUFFIX: &str = ".certswap-new";

/// Why adopt did nothing (exit 2): each names the site, file or line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdoptError {
    /// None of the site's files belongs to an ACME client.
    #[error(
        "site {site}: none of its files ({paths}) is in a certbot lineage or an acme.sh directory; nothing to adopt"
    )]
    NotInLineage { site: String, paths: String },
    /// Dual-certificate sites are not handled.
    #[error(
        "site {site} has several cert/key pairs; adopt handles one pair (change the lines by hand)"
    )]
    Pairs { site: String },
    /// The server's config does not read the path.
    #[error("no directive in the {server} config ({config}) reads {path}; nothing there to change")]
    NoDirective {
        server: &'static str,
        config: PathBuf,
        path: PathBuf,
    },
    #[error(transparent)]
    Discover(#[from] discover::DiscoverError),
    #[error(transparent)]
    Owner(#[from] owner::OwnerError),
    #[error("{path}: cannot {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    /// A directive is not written where discovery said.
    #[error(
        "{file}:{line}: expected {expected} at column {col}, found {found:?}; change that line by hand"
    )]
    Edit {
        file: PathBuf,
        line: usize,
        col: usize,
        expected: String,
        found: String,
    },
    /// certswap.toml cannot be changed by replacing lines.
    #[error("{path}: cannot change site {site} by replacing lines: {reason}")]
    ConfigEdit {
        path: PathBuf,
        site: String,
        reason: String,
    },
    /// What is served is not what the lineage holds.
    #[error(
        "{target} serves sha256 {served}, not the certificate in {path} (sha256 {disk}); adopt keeps what is served, so reload the server onto its files first"
    )]
    Served {
        target: String,
        served: String,
        path: PathBuf,
        disk: String,
    },
    /// An endpoint does not answer.
    #[error("before changing anything: {target} does not answer: {reason}; nothing was changed")]
    NotServing { target: String, reason: String },
    /// A file to copy holds no certificate.
    #[error("{path}: holds no readable certificate")]
    NoCert { path: PathBuf },
    /// The undo record cannot be read.
    #[error("{path}: the adopt record cannot be read: {reason}")]
    Record { path: PathBuf, reason: String },
    /// A file changed since adopt wrote it: rollback will not clobber it.
    #[error(
        "{path} changed since `certswap adopt` wrote it; put these lines back by hand: {lines}"
    )]
    Changed { path: PathBuf, lines: String },
    /// A copy exists already with other bytes.
    #[error(
        "{path} exists already; adopt never overwrites a file (remove it or pick another site name)"
    )]
    Exists { path: PathBuf },
    /// A crash left an adopt open; the plan would describe a half state.
    #[error(
        "an adopt of {site} was interrupted; `certswap rollback --site {site}` (or `certswap adopt --site {site} --apply`) undoes it first"
    )]
    Interrupted { site: String },
    /// Two of the site's files have one file name.
    #[error(
        "site {site}: two of its files would both be copied to {path}; change the lines by hand"
    )]
    SameName { site: String, path: PathBuf },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Install(#[from] install::InstallError),
    #[error(transparent)]
    Probe(#[from] probe::ProbeError),
}

fn io_err(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> AdoptError + use<> {
    let path = path.to_path_buf();
    move |source| AdoptError::Io {
        path,
        action,
        source,
    }
}

fn without_newline(l: &str) -> String {
    l.trim_end_matches(['\n', '\r']).to_string()
}

/// One line adopt changes (without its line end; `old` is empty for a
/// line adopt adds).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LineChange {
    pub file: PathBuf,
    pub line: usize,
    pub old: String,
    pub new: String,
}

/// One copy adopt makes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyPlan {
    pub role: Role,
    pub from: PathBuf,
    pub to: PathBuf,
    pub mode: String,
    #[serde(skip)]
    bytes: Vec<u8>,
    #[serde(skip)]
    perms: Option<Perms>,
}

/// A file adopt rewrites, with both texts.
#[derive(Debug, Clone)]
struct FileChange {
    /// The file as named in messages (what the server or the user named).
    shown: PathBuf,
    /// Where it really is (symlinks resolved); what is rewritten.
    real: PathBuf,
    old: Vec<u8>,
    new: Vec<u8>,
    perms: Perms,
    lines: Vec<LineChange>,
}

/// Everything `adopt` would do, computed without changing anything.
#[derive(Debug, Clone)]
pub struct Plan {
    pub site: String,
    pub client: acme::AcmeClient,
    pub lineage: PathBuf,
    pub managed: bool,
    pub copies_dir: PathBuf,
    pub copies: Vec<CopyPlan>,
    /// The leaf the site serves, before and after.
    pub leaf_sha256: String,
    files: Vec<FileChange>,
}

impl Plan {
    /// Every line that changes, server config first, certswap.toml last.
    pub fn changes(&self) -> Vec<LineChange> {
        self.files.iter().flat_map(|f| f.lines.clone()).collect()
    }
}

/// How an adopt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdoptResult {
    /// Without `--apply`: nothing was changed.
    Plan,
    Adopted,
    /// Adopted before (its record is in the state dir).
    AlreadyAdopted,
    /// Refused before anything changed (only in JSON; exit 2).
    Rejected,
    /// `--apply` failed after files moved: the old files are back.
    RolledBack,
}

/// What `certswap adopt` prints.
#[derive(Debug, Clone, Serialize)]
pub struct AdoptReport {
    pub site: String,
    pub result: AdoptResult,
    pub client: Option<acme::AcmeClient>,
    pub lineage: Option<PathBuf>,
    pub mode: &'static str,
    pub copies: Vec<CopyPlan>,
    pub changes: Vec<LineChange>,
    pub served: Vec<ServedRow>,
    pub error: Option<String>,
}

impl AdoptReport {
    /// Refused with `why` before anything changed.
    pub fn rejected(site: &str, why: String) -> AdoptReport {
        AdoptReport {
            site: site.to_string(),
            result: AdoptResult::Rejected,
            client: None,
            lineage: None,
            mode: "in-place",
            copies: Vec::new(),
            changes: Vec::new(),
            served: Vec::new(),
            error: Some(why),
        }
    }

    fn of(plan: &Plan, result: AdoptResult) -> AdoptReport {
        AdoptReport {
            site: plan.site.clone(),
            result,
            client: Some(plan.client),
            lineage: Some(plan.lineage.clone()),
            mode: if plan.managed { "managed" } else { "in-place" },
            copies: plan.copies.clone(),
            changes: plan.changes(),
            served: Vec::new(),
            error: None,
        }
    }

    /// 0, or 3 when the apply was rolled back.
    pub fn exit_code(&self) -> u8 {
        match self.result {
            AdoptResult::RolledBack => 3,
            AdoptResult::Rejected => 2,
            _ => 0,
        }
    }

    /// The text a person reads.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let lineage = self
            .lineage
            .as_ref()
            .map(|l| format!(" (from {})", l.display()))
            .unwrap_or_default();
        s.push_str(&match self.result {
            AdoptResult::Plan => format!(
                "adopt plan for {}{lineage}: nothing was changed\n",
                self.site
            ),
            AdoptResult::Adopted => format!(
                "adopted: {} reads its own copies now ({} mode); the served certificate did not change\n",
                self.site, self.mode
            ),
            AdoptResult::AlreadyAdopted => {
                format!("already adopted: {} reads certswap's copies\n", self.site)
            }
            AdoptResult::RolledBack => format!(
                "rolled back: {} reads its old files again; nothing was adopted\n",
                self.site
            ),
            AdoptResult::Rejected => format!("rejected: nothing was changed for {}\n", self.site),
        });
        for c in &self.copies {
            s.push_str(&format!(
                "  copy   {} -> {} (mode {})\n",
                c.from.display(),
                c.to.display(),
                c.mode
            ));
        }
        for c in &self.changes {
            s.push_str(&format!("  change {}:{}\n", c.file.display(), c.line));
            if !c.old.is_empty() {
                s.push_str(&format!("    - {}\n", c.old));
            }
            s.push_str(&format!("    + {}\n", c.new));
        }
        for r in &self.served {
            if let (Some(h), Some(na)) = (&r.sha256, &r.not_after) {
                s.push_str(&format!(
                    "  served: {}@{}  notAfter {na}  sha256 {h}\n",
                    r.sni, r.endpoint
                ));
            }
        }
        if let Some(e) = &self.error {
            s.push_str(&format!("  reason: {e}\n"));
        }
        if self.result == AdoptResult::Plan {
            s.push_str(&format!(
                "  run `certswap adopt --site {} --apply{}` to make these changes (config test, reload, verified by handshakes; `certswap rollback --site {}` undoes it)\n",
                self.site,
                if self.mode == "managed" { " --managed" } else { "" },
                self.site
            ));
        }
        s
    }
}

/// The directory name of a site under `state_dir/adopt/` and the copies dir.
fn dir_name(site: &str) -> String {
    site.replace('*', "_wildcard_")
}

fn record_dir(cfg: &Config, site: &Site) -> PathBuf {
    cfg.state_dir.join("adopt").join(dir_name(&site.store_key))
}

/// Where the copies of `site` go: `certswap/SITE/` beside the server's
/// main config file (`/etc/nginx/certswap/www.example.com/`), on the
/// file system the server's config is on and inside what the packaged
/// unit may write.
pub fn copies_dir(cfg: &Config, site: &Site) -> PathBuf {
    let conf = match (&cfg.server.prefix, cfg.server.config.is_absolute()) {
        (Some(p), false) => p.join(&cfg.server.config),
        _ => cfg.server.config.clone(),
    };
    fsio::parent_of(&conf)
        .join("certswap")
        .join(dir_name(&site.name))
}

/// Work out everything adopt would do for `site`; reads only.
pub fn plan(cfg: &Config, site: &Site, managed: bool) -> Result<Plan, AdoptError> {
    if !site.pairs.is_empty() {
        return Err(AdoptError::Pairs {
            site: site.name.clone(),
        });
    }
    let targets = install::site_targets(site);
    let owned: Vec<(Role, PathBuf, acme::AcmePath)> = targets
        .iter()
        .filter_map(|(r, p)| acme::classify(p).map(|a| (*r, p.clone(), a)))
        .collect();
    let Some((_, _, first)) = owned.first() else {
        return Err(AdoptError::NotInLineage {
            site: site.name.clone(),
            paths: targets
                .iter()
                .map(|(_, p)| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let (client, lineage) = (first.client, first.lineage.clone());

    // The copies: the bytes the server reads now, through the lineage's
    // links, from files only root can change.
    let dir = copies_dir(cfg, site);
    let mut copies = Vec::new();
    let mut leaf_sha256 = None;
    for (role, path, _) in &owned {
        let real = std::fs::canonicalize(path).map_err(io_err(path, "resolve"))?;
        let bytes = owner::read_trusted("certificate file", &real, MAX_CERT_BYTES)?;
        if *role == Role::Cert {
            let leaf =
                crate::bundle::leaf_of(&bytes).ok_or(AdoptError::NoCert { path: path.clone() })?;
            leaf_sha256 = Some(leaf.sha256);
        }
        let name = path.file_name().unwrap_or(path.as_os_str());
        if copies.iter().any(|c: &CopyPlan| c.to == dir.join(name)) {
            return Err(AdoptError::SameName {
                site: site.name.clone(),
                path: dir.join(name),
            });
        }
        let mode = if *role == Role::Key { 0o600 } else { 0o644 };
        copies.push(CopyPlan {
            role: *role,
            from: path.clone(),
            to: dir.join(name),
            mode: format!("{mode:04o}"),
            bytes,
            perms: Some(Perms::own(mode)),
        });
    }
    let leaf_sha256 = match leaf_sha256 {
        Some(s) => s,
        // Only the key is in a lineage: the leaf is the site's cert file.
        None => {
            let bytes = fsio::read_limited(&site.cert, MAX_CERT_BYTES)
                .map_err(io_err(&site.cert, "read"))?;
            crate::bundle::leaf_of(&bytes)
                .ok_or(AdoptError::NoCert {
                    path: site.cert.clone(),
                })?
                .sha256
        }
    };

    // Every directive of the server's config that reads a copied path.
    let found = discover::discover(&cfg.server)?;
    let mut refs: Vec<(ConfigRef, PathBuf)> = Vec::new();
    for c in &copies {
        let mut any = false;
        for r in found.iter().flat_map(|s| s.refs.iter()) {
            if r.path != c.from {
                continue;
            }
            any = true;
            if !refs
                .iter()
                .any(|(x, _)| x.file == r.file && x.line == r.line && x.col == r.col)
            {
                refs.push((r.clone(), c.to.clone()));
            }
        }
        if !any {
            return Err(AdoptError::NoDirective {
                server: server_name(cfg),
                config: cfg.server.config.clone(),
                path: c.from.clone(),
            });
        }
    }
    let mut files = server_changes(&refs)?;
    files.push(certswap_change(cfg, site, &copies, managed)?);
    Ok(Plan {
        site: site.name.clone(),
        client,
        lineage,
        managed,
        copies_dir: dir,
        copies,
        leaf_sha256,
        files,
    })
}

fn server_name(cfg: &Config) -> &'static str {
    crate::config::kind_name(cfg.server.kind)
}

/// The new text of every server config file, each directive's argument
/// replaced where discovery found it (checked against the file on disk).
fn server_changes(refs: &[(ConfigRef, PathBuf)]) -> Result<Vec<FileChange>, AdoptError> {
    let mut files: Vec<PathBuf> = Vec::new();
    for (r, _) in refs {
        if !files.contains(&r.file) {
            files.push(r.file.clone());
        }
    }
    let mut out = Vec::new();
    for file in files {
        let real = std::fs::canonicalize(&file).map_err(io_err(&file, "resolve"))?;
        let old = owner::read_trusted("server config", &real, MAX_CONFIG_BYTES)?;
        let perms = Perms::of(&real).map_err(io_err(&real, "read the mode of"))?;
        let text = String::from_utf8_lossy(&old).into_owned();
        let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
        let mut mine: Vec<&(ConfigRef, PathBuf)> =
            refs.iter().filter(|(r, _)| r.file == file).collect();
        // Right to left, so earlier columns on one line stay valid.
        mine.sort_by_key(|(r, _)| std::cmp::Reverse((r.line, r.col)));
        let mut changed: Vec<(usize, String)> = Vec::new();
        for (r, new_path) in mine {
            let Some(l) = lines.get_mut(r.line.wrapping_sub(1)) else {
                return Err(edit_error(&file, r, ""));
            };
            let chars: Vec<char> = l.chars().collect();
            let raw: Vec<char> = r.raw.chars().collect();
            let end = r.col + raw.len();
            if chars.get(r.col..end) != Some(raw.as_slice()) {
                return Err(edit_error(&file, r, l));
            }
            if !changed.iter().any(|(n, _)| *n == r.line) {
                changed.push((r.line, l.clone()));
            }
            let mut next: String = chars[..r.col].iter().collect();
            next.push_str(&quote_like(&r.raw, new_path));
            next.extend(chars[end..].iter());
            *l = next;
        }
        changed.sort();
        let new: String = lines.concat();
        let line_changes = changed
            .into_iter()
            .map(|(n, old_line)| LineChange {
                file: file.clone(),
                line: n,
                old: without_newline(&old_line),
                new: without_newline(&lines[n - 1]),
            })
            .collect();
        out.push(FileChange {
            shown: file,
            real,
            old,
            new: new.into_bytes(),
            perms,
            lines: line_changes,
        });
    }
    Ok(out)
}

fn edit_error(file: &Path, r: &ConfigRef, line: &str) -> AdoptError {
    AdoptError::Edit {
        file: file.to_path_buf(),
        line: r.line,
        col: r.col,
        expected: r.raw.clone(),
        found: line.trim_end().to_string(),
    }
}

/// `path` written the way `raw` was: in the same quotes, or bare when it
/// needs none (nginx and apache read `"..."` with `\"` and `\\` escapes).
fn quote_like(raw: &str, path: &Path) -> String {
    let p = path.to_string_lossy();
    let q = match raw.chars().next() {
        Some(c @ ('"' | '\'')) => Some(c),
        _ if p.contains(|c: char| c.is_whitespace() || ";{}#\"'\\$".contains(c)) => Some('"'),
        _ => None,
    };
    match q {
        None => p.into_owned(),
        Some(q) => {
            let mut s = String::new();
            s.push(q);
            for c in p.chars() {
                if c == q || c == '\\' {
                    s.push('\\');
                }
                s.push(c);
            }
            s.push(q);
            s
        }
    }
}

/// certswap.toml with the site's `cert`/`key`/`chain` (and `mode`) lines
/// replaced by the copies' paths.
fn certswap_change(
    cfg: &Config,
    site: &Site,
    copies: &[CopyPlan],
    managed: bool,
) -> Result<FileChange, AdoptError> {
    let path = &cfg.path;
    let real = std::fs::canonicalize(path).map_err(io_err(path, "resolve"))?;
    let old = owner::read_trusted("config", &real, MAX_CONFIG_BYTES)?;
    let perms = Perms::of(&real).map_err(io_err(&real, "read the mode of"))?;
    let text = String::from_utf8_lossy(&old).into_owned();
    let mut set: Vec<(&str, String)> = copies
        .iter()
        .map(|c| {
            let key = match c.role {
                Role::Cert => "cert",
                Role::Key => "key",
                Role::Chain => "chain",
            };
            (key, c.to.to_string_lossy().into_owned())
        })
        .collect();
    let mode = if managed { Mode::Managed } else { site.mode };
    if managed && site.mode != Mode::Managed {
        set.push(("mode", "managed".into()));
    }
    let err = |reason: String| AdoptError::ConfigEdit {
        path: path.clone(),
        site: site.name.clone(),
        reason,
    };
    let (new, lines) = edit_site_lines(&text, &site.name, &set).map_err(err)?;
    // The edit must mean exactly this: the site's paths (and mode) moved,
    // every other setting and site the same.
    let before = Config::parse(&text, path).map_err(|e| err(e.to_string()))?;
    let after = Config::parse(&new, path).map_err(|e| err(e.to_string()))?;
    let mut want = before.sites.clone();
    for s in want.iter_mut().filter(|s| s.name == site.name) {
        for c in copies {
            match c.role {
                Role::Cert => s.cert = c.to.clone(),
                Role::Key => s.key = c.to.clone(),
                Role::Chain => s.chain = Some(c.to.clone()),
            }
        }
        s.mode = mode;
        // Its one slot names the same files (adopt refuses a dual site).
        if let Some(slot) = s.slots.first_mut() {
            slot.cert = s.cert.clone();
            slot.key = s.key.clone();
        }
    }
    if format!("{want:?}") != format!("{:?}", after.sites) {
        return Err(err(
            "replacing the lines would change more than the site's paths".into(),
        ));
    }
    Ok(FileChange {
        shown: path.clone(),
        real,
        old,
        new: new.into_bytes(),
        perms,
        lines: lines
            .into_iter()
            .map(|(line, old, new)| LineChange {
                file: path.clone(),
                line,
                old: without_newline(&old),
                new: without_newline(&new),
            })
            .collect(),
    })
}

/// (1-based line, old line, new line) of certswap.toml.
type TomlLineChange = (usize, String, String);

/// In TOML `text`, the `[[site]]` table whose `name` is `site` gets each
/// `key = "value"` of `set`: its line replaced (indentation kept), or
/// added after the table's `key`/`cert` line. Returns the new text and
/// the (line, old, new) changes; Err when the table or a line to replace
/// is not there in a simple `key = value` form.
fn edit_site_lines(
    text: &str,
    site: &str,
    set: &[(&str, String)],
) -> Result<(String, Vec<TomlLineChange>), String> {
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
    // The [[site]] tables: (first line index, end index).
    let mut tables: Vec<(usize, usize)> = Vec::new();
    let mut open: Option<usize> = None;
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            if let Some(s) = open.take() {
                tables.push((s, i));
            }
            if t.starts_with("[[site]]") {
                open = Some(i + 1);
            }
        }
    }
    if let Some(s) = open {
        tables.push((s, lines.len()));
    }
    let key_of = |l: &str| -> Option<(String, toml::Value)> {
        let table: toml::Table = toml::from_str(l).ok()?;
        let (k, v) = table.into_iter().next()?;
        Some((k, v))
    };
    let mut hits = tables.iter().filter(|(s, e)| {
        lines[*s..*e]
            .iter()
            .any(|l| key_of(l).is_some_and(|(k, v)| k == "name" && v.as_str() == Some(site)))
    });
    let (Some(&(start, end)), None) = (hits.next(), hits.next()) else {
        return Err(format!("no single [[site]] table with name = {site:?}"));
    };
    let mut changes = Vec::new();
    let mut inserted = 0usize;
    for (key, value) in set {
        let end = end + inserted;
        let new_line = |indent: &str| {
            format!(
                "{indent}{key} = {}\n",
                serde_json::Value::String(value.clone())
            )
        };
        let found = (start..end).find(|&i| key_of(&lines[i]).is_some_and(|(k, _)| k == *key));
        match found {
            Some(i) => {
                let old = lines[i].clone();
                let indent: String = old.chars().take_while(|c| c.is_whitespace()).collect();
                lines[i] = new_line(&indent);
                changes.push((i + 1, old, lines[i].clone()));
            }
            None if *key == "mode" || *key == "chain" => {
                let after = (start..end)
                    .rfind(|&i| key_of(&lines[i]).is_some_and(|(k, _)| k == "key" || k == "cert"))
                    .ok_or_else(|| format!("the table of {site} has no `key` line"))?;
                lines.insert(after + 1, new_line(""));
                inserted += 1;
                // Line numbers of later changes move down by one.
                for c in changes.iter_mut().filter(|c| c.0 > after + 1) {
                    c.0 += 1;
                }
                changes.push((after + 2, String::new(), lines[after + 1].clone()));
            }
            None => return Err(format!("no `{key} = ...` line in the table of {site}")),
        }
    }
    changes.sort();
    Ok((lines.concat(), changes))
}

// ---------------------------------------------------------------------------
// The undo record.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    /// Going from the old files to the adopted ones.
    Applying,
    /// The reload with the adopted files was (maybe) sent.
    Reloading,
    /// Adopted; kept for `rollback`.
    Done,
    /// Going back (rollback, or the repair of a failed apply).
    Reverting,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RecFile {
    /// As named in messages.
    shown: PathBuf,
    /// What is rewritten.
    real: PathBuf,
    /// `files/N.old` / `files/N.new` in the record directory.
    old_copy: PathBuf,
    new_copy: PathBuf,
    old_sha256: String,
    new_sha256: String,
    perms: Perms,
    lines: Vec<LineChange>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RecCopy {
    path: PathBuf,
    sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    version: u32,
    site: String,
    phase: Phase,
    managed: bool,
    created: String,
    copies_dir: PathBuf,
    copies: Vec<RecCopy>,
    files: Vec<RecFile>,
    /// The store's state of the site when adopt was done: in-place version
    /// ids, or the managed live version. While it is unchanged, the adopt
    /// is the site's last change, and `rollback` undoes it.
    #[serde(default)]
    versions: Vec<String>,
    #[serde(default)]
    managed_current: Option<String>,
    /// The leaf served before and after adopt (the copies' certificate).
    #[serde(default)]
    leaf_sha256: Option<String>,
    #[serde(skip)]
    dir: PathBuf,
}

impl Record {
    fn path(dir: &Path) -> PathBuf {
        dir.join("record.json")
    }

    fn load(dir: &Path) -> Result<Option<Record>, AdoptError> {
        let path = Record::path(dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path, "read")(e)),
        };
        let mut r: Record = serde_json::from_slice(&bytes).map_err(|e| AdoptError::Record {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        r.dir = dir.to_path_buf();
        Ok(Some(r))
    }

    fn save(&self) -> Result<(), AdoptError> {
        let path = Record::path(&self.dir);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| AdoptError::Record {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        fsio::write_atomic(&path, &bytes, Perms::own(0o600)).map_err(io_err(&path, "write"))
    }

    fn set_phase(&mut self, phase: Phase) -> Result<(), AdoptError> {
        self.phase = phase;
        self.save()
    }

    /// Remove the record and its saved texts (the last step of an undo).
    fn remove(&self) -> Result<(), AdoptError> {
        let path = Record::path(&self.dir);
        fsio::durable_remove(&path).map_err(io_err(&path, "remove"))?;
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&self.dir, "remove")(e)),
            _ => fsio::fsync_dir(&fsio::parent_of(&self.dir))
                .map_err(io_err(&self.dir, "fsync the parent of")),
        }
    }
}

fn mkdir(dir: &Path, mode: u32) -> Result<(), AdoptError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(io_err(dir, "create the directory"))
}

/// Replace `real` by `bytes` (new file beside it, then rename) with `perms`.
fn replace_file(real: &Path, bytes: &[u8], perms: Perms) -> Result<(), AdoptError> {
    let tmp = fsio::sibling(real, STAGED_SUFFIX);
    fsio::durable_remove(&tmp).map_err(io_err(&tmp, "remove an old staged file"))?;
    fsio::create_new(&tmp, bytes, perms).map_err(io_err(&tmp, "stage the new file"))?;
    fsio::durable_rename(&tmp, real).map_err(io_err(real, "rename the new file into place"))
}

fn sha_of(path: &Path) -> Option<String> {
    fsio::read_limited(path, MAX_CONFIG_BYTES)
        .ok()
        .map(|b| sha256_hex(&b))
}

/// The site's state in the store now (see [`Record::versions`]).
fn store_state(env: &Env<'_>, site: &Site) -> (Vec<String>, Option<String>) {
    let s = env.store.site(&site.store_key);
    let versions = s
        .versions()
        .map(|v| v.into_iter().map(|v| v.id).collect())
        .unwrap_or_default();
    (versions, s.managed_current().ok().flatten())
}

// ---------------------------------------------------------------------------
// The commands.

/// `certswap adopt --site NAME` without `--apply`: the plan, nothing
/// written (not even the state dir is created).
pub fn show(cfg: &Config, site: &Site, managed: bool) -> Result<AdoptReport, AdoptError> {
    match Record::load(&record_dir(cfg, site))? {
        Some(r) if r.phase == Phase::Done => return Ok(done_report(&r)),
        Some(_) => {
            return Err(AdoptError::Interrupted {
                site: site.name.clone(),
            });
        }
        None => {}
    }
    let plan = plan(cfg, site, managed)?;
    Ok(AdoptReport::of(&plan, AdoptResult::Plan))
}

fn done_report(r: &Record) -> AdoptReport {
    AdoptReport {
        site: r.site.clone(),
        result: AdoptResult::AlreadyAdopted,
        client: None,
        lineage: None,
        mode: if r.managed { "managed" } else { "in-place" },
        copies: Vec::new(),
        changes: r.files.iter().flat_map(|f| f.lines.clone()).collect(),
        served: Vec::new(),
        error: None,
    }
}

/// `certswap adopt --site NAME --apply`.
pub fn apply(env: &Env<'_>, site: &Site, managed: bool) -> Result<AdoptReport, AdoptError> {
    // 1. One certswap at a time; what a crash left open is repaired first.
    let _lock = env.store.lock()?;
    let dir = record_dir(env.config, site);
    match Record::load(&dir)? {
        Some(r) if r.phase == Phase::Done => return Ok(done_report(&r)),
        Some(r) => {
            let out = revert(env, site, r, "an earlier adopt was interrupted")?;
            // Undone only when its record is gone (the old state proven).
            if Record::load(&dir)?.is_some() {
                return Err(AdoptError::Record {
                    path: Record::path(&dir),
                    reason: out.error.unwrap_or_default(),
                });
            }
        }
        None => {}
    }
    crate::recover::recover_site(env, site)?;
    let plan = plan(env.config, site, managed)?;
    let mut report = AdoptReport::of(&plan, AdoptResult::Adopted);

    // 2. What is served must be what the lineage holds.
    let results = crate::engines::probe_all(env.prober(), &site.endpoints, 64);
    for (t, r) in site.endpoints.iter().zip(results) {
        match r {
            Err(e) => {
                return Err(AdoptError::NotServing {
                    target: t.to_string(),
                    reason: e.to_string(),
                });
            }
            Ok(s) if s.leaf.sha256 != plan.leaf_sha256 => {
                return Err(AdoptError::Served {
                    target: t.to_string(),
                    served: s.leaf.sha256,
                    path: site.cert.clone(),
                    disk: plan.leaf_sha256.clone(),
                });
            }
            Ok(_) => {}
        }
    }
    for c in &plan.copies {
        if std::fs::symlink_metadata(&c.to).is_ok() {
            return Err(AdoptError::Exists { path: c.to.clone() });
        }
    }

    // 3. The undo record, with both texts of every file, before anything.
    mkdir(&dir.join("files"), 0o700)?;
    let mut files = Vec::new();
    for (i, f) in plan.files.iter().enumerate() {
        let old_copy = dir.join("files").join(format!("{i}.old"));
        let new_copy = dir.join("files").join(format!("{i}.new"));
        for (p, b) in [(&old_copy, &f.old), (&new_copy, &f.new)] {
            fsio::durable_remove(p).map_err(io_err(p, "remove"))?;
            fsio::create_new(p, b, Perms::own(0o600)).map_err(io_err(p, "save"))?;
        }
        files.push(RecFile {
            shown: f.shown.clone(),
            real: f.real.clone(),
            old_copy,
            new_copy,
            old_sha256: sha256_hex(&f.old),
            new_sha256: sha256_hex(&f.new),
            perms: f.perms,
            lines: f.lines.clone(),
        });
    }
    fsio::fsync_dir(&dir.join("files")).map_err(io_err(&dir, "fsync"))?;
    let mut rec = Record {
        version: 1,
        site: site.name.clone(),
        phase: Phase::Applying,
        managed,
        created: crate::cert::rfc3339(time::OffsetDateTime::now_utc()),
        copies_dir: plan.copies_dir.clone(),
        copies: plan
            .copies
            .iter()
            .map(|c| RecCopy {
                path: c.to.clone(),
                sha256: sha256_hex(&c.bytes),
            })
            .collect(),
        files,
        versions: Vec::new(),
        managed_current: None,
        leaf_sha256: Some(plan.leaf_sha256.clone()),
        dir: dir.clone(),
    };
    rec.save()?;

    let fail = |rec: Record,
                reloaded: bool,
                why: String,
                mut report: AdoptReport|
     -> Result<AdoptReport, AdoptError> {
        let mut rec = rec;
        if reloaded && rec.phase != Phase::Reloading {
            let _ = rec.set_phase(Phase::Reloading);
        }
        report.result = AdoptResult::RolledBack;
        match revert(env, site, rec, &why) {
            Ok(out) => {
                report.served = out.served;
                report.error = out.error;
            }
            // Files may have moved: still exit 3, and say how it is finished.
            Err(e) => {
                report.error = Some(format!(
                    "{why}; PUTTING THE OLD FILES BACK FAILED: {e}; the next `certswap adopt` or `certswap rollback` of {} finishes it",
                    site.name
                ));
            }
        }
        Ok(report)
    };

    // 4. The copies (then, with --managed, links into live/SITE).
    if let Err(e) = make_copies(env, site, &plan) {
        return fail(rec, false, e.to_string(), report);
    }
    // 5. The server's config files (certswap.toml, the last, waits for the proof).
    let split = rec.files.len().saturating_sub(1);
    let (server_files, own_file) = (rec.files[..split].to_vec(), rec.files[split..].to_vec());
    for f in server_files {
        if let Err(e) = write_new(&f) {
            return fail(rec, false, e.to_string(), report);
        }
    }

    // 6. No reload without a passing config test.
    if let Err(e) = crate::service::configtest(env.server) {
        return fail(rec, false, e.to_string(), report);
    }
    crate::failpoint::hit("adopt-after-configtest");

    // 7. Reload, journaled first.
    if let Err(e) = rec.set_phase(Phase::Reloading) {
        return fail(rec, false, e.to_string(), report);
    }
    // The server's own config changed (new paths): a reload, never an
    // in-memory update of the old names (no sites).
    if let Err(e) = crate::service::load_new(env.server, &[]) {
        return fail(rec, true, e.to_string(), report);
    }
    crate::failpoint::hit("adopt-after-reload");

    // 8. The same leaf, on consecutive fresh handshakes.
    let waited = crate::wait::wait_one(
        env.server,
        &env.config.probe,
        env.prober(),
        &site.endpoints,
        &plan.leaf_sha256,
    );
    report.served = waited.rows;
    if let Some(why) = waited.failure {
        return fail(rec, true, why, report);
    }

    // 9. certswap's own config, last: only now do its paths name the copies.
    for f in own_file {
        if sha_of(&f.real).as_deref() != Some(f.old_sha256.as_str()) {
            let why = format!("{} changed while adopting", f.shown.display());
            return fail(rec, true, why, report);
        }
        if let Err(e) = write_new(&f) {
            return fail(rec, true, e.to_string(), report);
        }
    }

    // 10. Done: kept for rollback.
    let mut adopted = site.clone();
    for c in &plan.copies {
        match c.role {
            Role::Cert => adopted.cert = c.to.clone(),
            Role::Key => adopted.key = c.to.clone(),
            Role::Chain => adopted.chain = Some(c.to.clone()),
        }
    }
    (rec.versions, rec.managed_current) = store_state(env, &adopted);
    if let Err(e) = rec.set_phase(Phase::Done) {
        // Without `done` the next command would undo it: do it now.
        return fail(rec, true, e.to_string(), report);
    }
    Ok(report)
}

/// Put adopt's text of `f` in place (from the record, so what is written
/// is exactly what the record says).
fn write_new(f: &RecFile) -> Result<(), AdoptError> {
    let bytes = std::fs::read(&f.new_copy).map_err(io_err(&f.new_copy, "read"))?;
    if sha256_hex(&bytes) != f.new_sha256 {
        return Err(AdoptError::Record {
            path: f.new_copy.clone(),
            reason: "the saved text does not match its record (sha256 differs)".into(),
        });
    }
    replace_file(&f.real, &bytes, f.perms)
}

/// Step 4: the copies, root's, key 0600; `--managed` turns them into links
/// into `state_dir/live/SITE/` (same bytes).
fn make_copies(env: &Env<'_>, site: &Site, plan: &Plan) -> Result<(), AdoptError> {
    let parent = fsio::parent_of(&plan.copies_dir);
    if let Some(top) = parent.parent() {
        owner::trusted_dir("server config directory", top)?;
    }
    mkdir(&plan.copies_dir, 0o755)?;
    owner::trusted_dir("copies directory", &plan.copies_dir)?;
    for c in &plan.copies {
        let perms = c.perms.unwrap_or_else(|| Perms::own(0o600));
        fsio::create_new(&c.to, &c.bytes, perms).map_err(io_err(&c.to, "write the copy"))?;
    }
    fsio::fsync_dir(&plan.copies_dir).map_err(io_err(&plan.copies_dir, "fsync"))?;
    if plan.managed {
        let targets: Vec<(Role, PathBuf)> =
            plan.copies.iter().map(|c| (c.role, c.to.clone())).collect();
        env.store.site(&site.store_key).adopt_managed(&targets)?;
    }
    Ok(())
}

/// Remove what adopt made in the copies directory: its files (when they
/// still hold what it wrote) or its links into the state dir, then the
/// directory if empty.
fn remove_copies(env: &Env<'_>, rec: &Record) -> Result<(), AdoptError> {
    for c in &rec.copies {
        let Ok(meta) = std::fs::symlink_metadata(&c.path) else {
            continue;
        };
        let ours = if meta.file_type().is_symlink() {
            std::fs::read_link(&c.path).is_ok_and(|t| t.starts_with(&env.config.state_dir))
        } else {
            sha_of(&c.path).as_deref() == Some(c.sha256.as_str())
        };
        if ours {
            fsio::durable_remove(&c.path).map_err(io_err(&c.path, "remove the copy"))?;
        }
    }
    match std::fs::remove_dir(&rec.copies_dir) {
        Ok(()) => {
            let _ = fsio::fsync_dir(&fsio::parent_of(&rec.copies_dir));
        }
        Err(e) => tracing::debug!("{}: left in place: {e}", rec.copies_dir.display()),
    }
    // `certswap/` itself, when this was its last site.
    let _ = std::fs::remove_dir(fsio::parent_of(&rec.copies_dir));
    Ok(())
}

/// Is undoing an adopt what `certswap rollback --site` should do? Yes
/// while the adopt record is there and no install changed the site since.
pub fn is_last_change(env: &Env<'_>, site: &Site) -> Result<bool, AdoptError> {
    let Some(rec) = Record::load(&record_dir(env.config, site))? else {
        return Ok(false);
    };
    if rec.phase != Phase::Done {
        return Ok(true); // an interrupted adopt: rollback finishes undoing it
    }
    Ok(store_state(env, site) == (rec.versions.clone(), rec.managed_current.clone()))
}

/// `certswap rollback --site NAME` after an adopt: the old lines back,
/// config test, reload, the restored files' leaf proven served.
pub fn rollback(env: &Env<'_>, site: &Site) -> Result<Outcome, AdoptError> {
    let _lock = env.store.lock()?;
    // An install a crash left open on the copies is finished first.
    crate::recover::recover_site(env, site)?;
    let dir = record_dir(env.config, site);
    let Some(rec) = Record::load(&dir)? else {
        return Err(AdoptError::Record {
            path: Record::path(&dir),
            reason: "not found".into(),
        });
    };
    // Nothing is changed unless every file still holds what adopt wrote.
    if rec.phase == Phase::Done {
        for f in &rec.files {
            if sha_of(&f.real).as_deref() != Some(f.new_sha256.as_str()) {
                return Err(AdoptError::Changed {
                    path: f.shown.clone(),
                    lines: f
                        .lines
                        .iter()
                        .map(|l| format!("line {}: {}", l.line, l.old.trim_end()))
                        .collect::<Vec<_>>()
                        .join("; "),
                });
            }
        }
    }
    revert(env, site, rec, "")
}

/// Go back to the files as they were before adopt: restore every file that
/// holds what adopt wrote, config test, reload when the server may have
/// read adopt's files, prove the restored leaf is served, then remove the
/// copies and the record. `why` (if any) is the reason an apply failed.
///
/// The copies go only once the old state is proven: until then the server
/// may still hold them open, or need them at its next reload. A rollback
/// of a finished adopt that cannot be proven puts adopt's lines back (the
/// state that was serving); a failed apply or a crash whose undo cannot be
/// proven keeps its record, so the next command tries again.
fn revert(env: &Env<'_>, site: &Site, mut rec: Record, why: &str) -> Result<Outcome, AdoptError> {
    let mut out = Outcome::new(&site.name);
    let mut problems: Vec<String> = Vec::new();
    if !why.is_empty() {
        problems.push(why.to_string());
    }
    let undoing_done = rec.phase == Phase::Done;
    let reload = matches!(rec.phase, Phase::Reloading | Phase::Done | Phase::Reverting);
    out.old = served_leaf(env, &site.endpoints);
    if rec.phase != Phase::Reverting {
        rec.set_phase(Phase::Reverting)?;
    }
    for f in &rec.files {
        let staged = fsio::sibling(&f.real, STAGED_SUFFIX);
        fsio::durable_remove(&staged).map_err(io_err(&staged, "remove a staged file"))?;
        if sha_of(&f.real).as_deref() != Some(f.new_sha256.as_str()) {
            continue; // never written, or already back
        }
        let bytes = std::fs::read(&f.old_copy).map_err(io_err(&f.old_copy, "read"))?;
        if sha256_hex(&bytes) != f.old_sha256 {
            return Err(AdoptError::Record {
                path: f.old_copy.clone(),
                reason: "the saved copy does not match its record (sha256 differs)".into(),
            });
        }
        replace_file(&f.real, &bytes, f.perms)?;
    }
    // The site as the restored certswap.toml names it: its cert is the
    // proof target (the lineage may have been renewed meanwhile).
    let restored = Config::load(&env.config.path)
        .ok()
        .and_then(|c| c.sites.into_iter().find(|s| s.name == site.name))
        .unwrap_or_else(|| site.clone());
    let expect = fsio::read_limited(&restored.cert, MAX_CERT_BYTES)
        .ok()
        .and_then(|b| crate::bundle::leaf_of(&b));
    out.new = expect.as_ref().map(Leaf::of);
    let mut tested = true;
    if reload {
        // The one restore of service: config test, then reload or start.
        let t = std::time::Instant::now();
        match crate::service::restore_service(env.server, &[]) {
            Ok(()) => {}
            Err(RestoreFailed::ConfigTest(e)) => {
                tested = false;
                problems.push(format!(
                    "after restoring the old lines the config test fails, so no reload was sent: {e}"
                ));
            }
            Err(RestoreFailed::Reload(e)) => {
                problems.push(format!("reloading with the old lines failed: {e}"));
            }
        }
        out.timings_ms.reload = t.elapsed().as_millis() as u64;
    }
    let t = std::time::Instant::now();
    let proven = match (&expect, tested) {
        (_, false) => false,
        (Some(leaf), true) => {
            let w = crate::wait::wait_one(
                env.server,
                &env.config.probe,
                env.prober(),
                &site.endpoints,
                &leaf.sha256,
            );
            out.served = w.rows;
            match w.failure {
                None => true,
                Some(f) => {
                    problems.push(format!("the old files' certificate is NOT served: {f}"));
                    false
                }
            }
        }
        (None, true) => {
            problems.push(format!(
                "{} holds no readable certificate to prove",
                restored.cert.display()
            ));
            false
        }
    };
    out.timings_ms.probe = t.elapsed().as_millis() as u64;
    out.result = ResultKind::RolledBack;

    if !proven && undoing_done {
        // `rollback` could not prove the old state: adopt's state was
        // serving, so it comes back whole.
        problems.push(reapply(env, site, &mut rec, reload && tested));
        out.error = Some(problems.join("; "));
        return Ok(out);
    }
    if !proven {
        problems.push(format!(
            "the copies and the undo record are kept; the next `certswap rollback --site {}` tries again",
            site.name
        ));
        out.error = Some(problems.join("; "));
        return Ok(out);
    }
    remove_copies(env, &rec)?;
    rec.remove()?;
    out.warnings.push(format!(
        "undid `certswap adopt`: {} reads {} again",
        server_name(env.config),
        restored.cert.display()
    ));
    if why.is_empty() && problems.is_empty() {
        out.result = ResultKind::Verified;
    } else {
        problems.push("the old certificate is served again (proven by fresh handshakes)".into());
        out.error = Some(problems.join("; "));
    }
    Ok(out)
}

/// A rollback of an adopt failed: adopt's texts back, reload if the old
/// ones were loaded, the copies' leaf proven, the record `done` again.
/// Returns the sentence that says how it ended.
fn reapply(env: &Env<'_>, site: &Site, rec: &mut Record, reloaded: bool) -> String {
    for f in &rec.files {
        if sha_of(&f.real).as_deref() == Some(f.old_sha256.as_str())
            && let Err(e) = write_new(f)
        {
            return format!(
                "PUTTING THE ADOPTED LINES BACK FAILED: {e}; the next `certswap rollback --site {}` tries again",
                site.name
            );
        }
    }
    if reloaded {
        if let Err(e) = crate::service::restore_service(env.server, &[]) {
            let e = e.into_server_error();
            return format!("the adopted lines are back, but reloading failed: {e}");
        }
    }
    if let Err(e) = rec.set_phase(Phase::Done) {
        return format!("the adopted lines are back, but the record was not updated: {e}");
    }
    match rec.leaf_sha256.as_deref() {
        Some(sha) => match crate::wait::wait_one(env.server, &env.config.probe, env.prober(), &site.endpoints, sha).failure {
            None => "the rollback of the adopt was undone: the copies are served again (proven by fresh handshakes)".into(),
            Some(f) => format!("the adopted lines are back, but the copies' certificate is NOT served: {f}"),
        },
        None => "the adopted lines are back".into(),
    }
}

/// What the first endpoint serves now (for the outcome's `old`).
fn served_leaf(env: &Env<'_>, targets: &[Target]) -> Option<Leaf> {
    let t = targets.first()?;
    probe::block_on(env.prober().probe(t))
        .ok()
        .map(|s| Leaf::of(&s.leaf))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = "state_dir = \"/tmp/st\"\n[server]\nkind = \"nginx\"\n\n# the shop\n[[site]]\nname = \"a.test\"\n  cert = \"/le/live/a.test/fullchain.pem\"   # certbot\n  key = \"/le/live/a.test/privkey.pem\"\nendpoints = [\"127.0.0.1:443\"]\n\n[[site]]\nname = \"b.test\"\ncert = \"/le/live/a.test/fullchain.pem\"\nkey = \"/le/live/a.test/privkey.pem\"\nendpoints = [\"127.0.0.1:443\"]\n";

    #[test]
    fn only_the_sites_path_lines_change_and_comments_stay() {
        let set = [
            (
                "cert",
                "/etc/nginx/certswap/a.test/fullchain.pem".to_string(),
            ),
            ("key", "/etc/nginx/certswap/a.test/privkey.pem".to_string()),
            ("mode", "managed".to_string()),
        ];
        let (new, changes) = edit_site_lines(TOML, "a.test", &set).expect("edit");
        assert!(new.contains("# the shop\n"), "{new}");
        assert!(new.contains("  cert = \"/etc/nginx/certswap/a.test/fullchain.pem\"\n"));
        assert!(new.contains("mode = \"managed\"\n"));
        // b.test keeps the lineage paths.
        assert_eq!(
            new.matches("/le/live/a.test/fullchain.pem").count(),
            1,
            "{new}"
        );
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert_eq!(changes[0].0, 8);
        assert_eq!(
            changes[2],
            (10, String::new(), "mode = \"managed\"\n".into())
        );
        let err = edit_site_lines(TOML, "c.test", &set).expect_err("no such site");
        assert!(err.contains("c.test"), "{err}");
    }

    #[test]
    fn paths_keep_the_quoting_they_were_written_with() {
        let p = Path::new("/etc/nginx/certswap/a b/x.pem");
        assert_eq!(
            quote_like("\"/le/x.pem\"", p),
            "\"/etc/nginx/certswap/a b/x.pem\""
        );
        assert_eq!(quote_like("/le/x.pem", Path::new("/e/x.pem")), "/e/x.pem");
        assert_eq!(
            quote_like("/le/x.pem", p),
            "\"/etc/nginx/certswap/a b/x.pem\""
        );
        assert_eq!(quote_like("'/le'", Path::new("/it's")), "'/it\\'s'");
    }
}
