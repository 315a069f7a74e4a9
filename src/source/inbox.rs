//! The inbox source: a directory where people or tools drop renewed
//! bundles — `SITE.pem` (+ `SITE.key`, + `SITE_chain.crt`), or a vendor zip
//! for nginx (`*.pem` + `*.key`) or apache (`*_public.crt` + `*_chain.crt`
//! + `*.key`) under any name (`12345_www.example.com_nginx.zip`).
//!
//! Who may write here (docs/reliability.md, "The inbox"): only root. The
//! inbox, `done/` and `failed/` must be real directories that only root can
//! change ([`check_dirs`], every pass, else the source is skipped), and the
//! inbox must not be, or contain, a directory the server reads its
//! certificates from ([`check_placement`], at start and on SIGHUP). Every
//! file must be a regular file of root's that nobody else can write,
//! checked on the open descriptor; another user's file is left where it is
//! and logged, never installed and never moved (moving it would be root
//! acting on a stranger's file; leaving it loses nothing).
//!
//! One scan:
//! 1. list the top level; dot-files, `*.tmp` and directories are not ours
//!    (a writer should write `.NAME` and rename it, as Maildir does);
//! 2. group loose files by stem; every zip is a group of its own;
//! 3. groups are acted on only once nothing in the inbox changed for
//!    `debounce` (the newest mtime/ctime is older), so a burst of files is
//!    one batch; a cert without its key waits
//!    for the key unless it matches the key already installed (own CSR),
//!    for at most [`KEY_GRACE_DEBOUNCES`] × debounce;
//! 4. its files are read without following symlinks or blocking,
//!    size-limited, checked for owner and mode on the descriptor, and must
//!    look whole (size and mtime unchanged across the read, every PEM block
//!    closed, a zip with its end record): a file still being written waits,
//!    it is not quarantined. Then they are written under fixed names into
//!    the pass's private work directory — zip entries are read into memory
//!    with limits and never used as paths;
//! 5. it is matched to a site by file stem, else by the leaf's names.
//!
//! After the batch, [`finish`] moves the group's files to `done/STAMP/`
//! (without the files that hold a private key: that is installed, and kept
//! in the store's versions; only the newest [`DONE_KEEP`] entries stay) or
//! `failed/STAMP/` (with `reason.txt`). A configured target is never moved.
//! File names reach logs and messages only through [`shown`], so a newline
//! in a name cannot forge a log line.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Cursor, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::bundle::MAX_FILE_BYTES;
use crate::config::{Config, InboxSource};
use crate::fsio::{self, Perms};
use crate::owner::{self, OwnerError};
use crate::source::{Candidate, WorkDir, leaf_of, match_site, write_part};

/// A zip may hold at most this many entries.
pub const MAX_ZIP_ENTRIES: usize = 16;
/// Each zip entry (uncompressed) may be at most this large.
pub const MAX_ZIP_ENTRY_BYTES: u64 = MAX_FILE_BYTES;
/// All entries of a zip together, uncompressed, and the zip file itself.
pub const MAX_ZIP_TOTAL_BYTES: u64 = 4 * 1024 * 1024;
/// A cert without a key waits this many debounce periods for its key.
pub const KEY_GRACE_DEBOUNCES: u32 = 15;
/// `done/` keeps this many of its newest entries; older ones are removed.
/// They are a receipt, not a backup: the store keeps the versions.
pub const DONE_KEEP: usize = 20;

/// Why an inbox cannot be used at all. Each names the path and the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError {
    /// The inbox, `done/` or `failed/` could be changed by another user, or
    /// is a symlink.
    #[error("inbox source {source_name}: {err}; the inbox is skipped until this is fixed")]
    Untrusted {
        source_name: String,
        err: OwnerError,
    },
    /// The inbox is (or holds) a directory the server reads certificates
    /// from: processing it would move the live files away.
    #[error(
        "inbox source {source_name}: the inbox {inbox} {relation} {dir} ({what}); an inbox must be a directory of its own, or certswap would move the live files out from under the server (choose another path)"
    )]
    Overlaps {
        source_name: String,
        inbox: PathBuf,
        relation: &'static str,
        dir: PathBuf,
        what: String,
    },
}

/// `path` as it may appear in a log line or a message: control characters
/// (a newline, an escape) written as `\n`, `\u{1b}`, so a file name cannot
/// forge a line or colour a terminal.
pub fn shown(path: &Path) -> String {
    escape(&path.to_string_lossy())
}

/// [`shown`] for a name that is not a path (a zip entry).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `path` with symlinks resolved as far as it exists, the rest appended
/// (an inbox or a target need not exist yet).
fn canonical_lenient(path: &Path) -> PathBuf {
    let mut tail: Vec<Component<'_>> = Vec::new();
    let mut cur = path;
    loop {
        if let Ok(real) = fs::canonicalize(cur) {
            let mut out = real;
            for c in tail.iter().rev() {
                match c {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::CurDir => {}
                    other => out.push(other),
                }
            }
            return out;
        }
        match (cur.parent(), cur.components().next_back()) {
            (Some(parent), Some(last)) => {
                tail.push(last);
                cur = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// Every configured file the server reads, with what it is for messages.
fn configured_targets(cfg: &Config) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for site in &cfg.sites {
        let mut add = |p: &Path, role: &str| {
            out.push((
                p.to_path_buf(),
                format!("which holds the {role} of site {}", site.name),
            ));
        };
        add(&site.cert, "certificate");
        add(&site.key, "key");
        if let Some(c) = &site.chain {
            add(c, "chain");
        }
        for (c, k) in &site.pairs {
            add(c, "certificate");
            add(k, "key");
        }
    }
    out
}

/// The canonical paths of every configured target, and of the file a
/// managed target's symlink leads to: files an inbox pass never moves.
fn target_files(cfg: &Config) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (p, _) in configured_targets(cfg) {
        out.push(canonical_lenient(&p));
        if let Ok(parent) = fs::canonicalize(fsio::parent_of(&p))
            && let Some(name) = p.file_name()
        {
            out.push(parent.join(name));
        }
    }
    out
}

/// At start and on SIGHUP: no inbox may be a directory a configured
/// cert/key/chain lives in (as configured or behind its symlink), nor
/// contain one, nor be or lie in the managed `live/` and `archive/`
/// directories of the state dir. Canonical paths are compared, so a
/// symlinked inbox or target is seen for what it is.
pub fn check_placement(cfg: &Config) -> Result<(), InboxError> {
    let mut dirs: Vec<(PathBuf, String, bool)> = Vec::new();
    for (p, what) in configured_targets(cfg) {
        let configured = canonical_lenient(&fsio::parent_of(&p));
        let real = canonical_lenient(&p);
        dirs.push((configured, what.clone(), false));
        dirs.push((fsio::parent_of(&real), what, false));
    }
    for managed in ["live", "archive"] {
        dirs.push((
            canonical_lenient(&cfg.state_dir.join(managed)),
            format!("the state dir's managed `{managed}/` versions"),
            true,
        ));
    }
    for s in &cfg.sources {
        let crate::config::SourceConfig::Inbox(i) = s else {
            continue;
        };
        let inbox = canonical_lenient(&i.path);
        for (dir, what, inside_too) in &dirs {
            let relation = if &inbox == dir {
                "is"
            } else if dir.starts_with(&inbox) {
                "contains"
            } else if *inside_too && inbox.starts_with(dir) {
                "is inside"
            } else {
                continue;
            };
            return Err(InboxError::Overlaps {
                source_name: i.name.clone(),
                inbox: i.path.clone(),
                relation,
                dir: dir.clone(),
                what: what.clone(),
            });
        }
    }
    Ok(())
}

/// Every pass, before the inbox is read: it, `done/` and `failed/` (those
/// that exist) are real directories only root can change, in directories
/// only root can change.
pub fn check_dirs(src: &InboxSource) -> Result<(), InboxError> {
    let untrusted = |err| InboxError::Untrusted {
        source_name: src.name.clone(),
        err,
    };
    owner::trusted_dir("inbox", &src.path).map_err(untrusted)?;
    for (what, sub) in [("inbox done/", "done"), ("inbox failed/", "failed")] {
        let dir = src.path.join(sub);
        match fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            _ => owner::trusted_dir(what, &dir).map_err(untrusted)?,
        }
    }
    Ok(())
}

/// One bundle found in the inbox: the files that move together afterwards.
#[derive(Debug, Clone)]
pub struct Found {
    /// The stem of loose files, or the zip's file name, escaped: for logs.
    pub label: String,
    pub files: Vec<PathBuf>,
    /// Those of `files` that hold a private key: removed, not kept, once
    /// the bundle is installed.
    pub secret: Vec<PathBuf>,
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Ready to install.
    pub ready: Vec<(Found, Candidate)>,
    /// Refused before any install (bad zip, no matching site, …): to be
    /// moved to `failed/` with the reason.
    pub refused: Vec<(Found, String)>,
    /// Not acted on and left where they are, with the reason: another
    /// user's file, a configured target.
    pub left: Vec<(Found, String)>,
    /// Still being written (or stalled mid-write): looked at again later.
    pub waiting: Vec<(Found, String)>,
    /// The earliest moment a group that is still being written, or waiting
    /// for its key, should be looked at again.
    pub recheck_at: Option<SystemTime>,
}

/// What a loose file is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Cert,
    Key,
    Chain,
}

/// `(stem, part)` of a loose file name, None for names that are not ours.
fn classify(name: &str) -> Option<(&str, Part)> {
    for (suffix, part) in [
        ("_public.crt", Part::Cert),
        ("_chain.crt", Part::Chain),
        (".key", Part::Key),
        (".pem", Part::Cert),
        (".crt", Part::Cert),
        (".cer", Part::Cert),
    ] {
        if let Some(stem) = strip_suffix_ignore_case(name, suffix)
            && !stem.is_empty()
        {
            return Some((stem, part));
        }
    }
    None
}

fn strip_suffix_ignore_case<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = name.len().checked_sub(suffix.len())?;
    let (stem, tail) = (name.get(..cut)?, name.get(cut..)?);
    tail.eq_ignore_ascii_case(suffix).then_some(stem)
}

/// Files in the inbox that are never acted on.
pub fn ignored(name: &str) -> bool {
    name.starts_with('.') || strip_suffix_ignore_case(name, ".tmp").is_some()
}

/// The newest change of a file: ctime cannot be set back by a copy tool,
/// mtime covers a filesystem that does not keep ctime.
fn changed_at(meta: &fs::Metadata) -> SystemTime {
    let at = |secs: i64, nsec: i64| {
        UNIX_EPOCH + Duration::new(secs.max(0) as u64, nsec.clamp(0, 999_999_999) as u32)
    };
    at(meta.ctime(), meta.ctime_nsec()).max(at(meta.mtime(), meta.mtime_nsec()))
}

#[derive(Default)]
struct Group {
    cert: Vec<PathBuf>,
    key: Vec<PathBuf>,
    chain: Vec<PathBuf>,
    changed: Option<SystemTime>,
}

impl Group {
    fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self
            .cert
            .iter()
            .chain(&self.key)
            .chain(&self.chain)
            .cloned()
            .collect();
        v.sort();
        v
    }
}

/// Why a group is not ready, and what happens to it.
enum NotReady {
    /// A verdict on the bytes: to `failed/` with this reason.
    Bad(String),
    /// Another user's file, or not a regular file of root's: left in place.
    Untrusted(String),
    /// Still being written: looked at again later.
    Incomplete(String),
}

impl From<String> for NotReady {
    fn from(why: String) -> NotReady {
        NotReady::Bad(why)
    }
}

/// Look at the inbox once (steps 1–5 of the module doc).
pub fn scan(src: &InboxSource, cfg: &Config, work: &WorkDir, now: SystemTime) -> io::Result<Scan> {
    let mut out = Scan::default();
    let mut loose: BTreeMap<String, Group> = BTreeMap::new();
    let mut zips: Vec<(PathBuf, SystemTime)> = Vec::new();
    let targets = target_files(cfg);
    let untrusted_found = |path: &Path, why: String, out: &mut Scan| {
        out.left.push((
            Found {
                label: shown(&PathBuf::from(path.file_name().unwrap_or_default())),
                files: vec![path.to_path_buf()],
                secret: Vec::new(),
            },
            why,
        ));
    };
    // Stems with a file that is not root's: the whole group stays.
    let mut tainted: BTreeMap<String, String> = BTreeMap::new();

    // 1–2. list and group.
    for entry in fs::read_dir(&src.path)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if ignored(&name) {
            continue;
        }
        let path = entry.path();
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(_) => continue, // gone since the listing
        };
        if meta.is_dir() {
            continue; // done/, failed/, and whatever else is not a bundle
        }
        if targets.contains(&canonical_lenient(&path)) {
            untrusted_found(
                &path,
                format!(
                    "{} is a file the server reads (a configured target); it is never moved or installed from the inbox",
                    shown(&path)
                ),
                &mut out,
            );
            continue;
        }
        // Owner and mode by lstat now (and again on the open descriptor):
        // another user's file is not read at all. A symlink is read (and
        // refused) below, like any file that is not a regular one.
        let untrusted = match owner::trusted_file_meta("inbox file", &path, &meta) {
            Err(e @ (OwnerError::Owner { .. } | OwnerError::Writable { .. })) => Some(e),
            _ => None,
        };
        let changed = changed_at(&meta);
        if strip_suffix_ignore_case(&name, ".zip").is_some() {
            match untrusted {
                Some(e) => untrusted_found(&path, escape(&e.to_string()), &mut out),
                None => zips.push((path, changed)),
            }
            continue;
        }
        let Some((stem, part)) = classify(&name) else {
            tracing::debug!(file = %shown(&path), "inbox: not a bundle file name; left alone");
            continue;
        };
        if let Some(e) = untrusted {
            tainted.insert(stem.to_string(), escape(&e.to_string()));
        }
        let g = loose.entry(stem.to_string()).or_default();
        match part {
            Part::Cert => g.cert.push(path),
            Part::Key => g.key.push(path),
            Part::Chain => g.chain.push(path),
        }
        g.changed = Some(g.changed.map_or(changed, |c| c.max(changed)));
    }

    // 3. the inbox as a whole must be quiet for `debounce`: files dropped
    //    together settle together and are installed as one batch.
    //    Another user's files do not count: touching one must not hold
    //    the inbox back.
    let newest = loose
        .iter()
        .filter(|(stem, _)| !tainted.contains_key(*stem))
        .filter_map(|(_, g)| g.changed)
        .chain(zips.iter().map(|(_, c)| *c))
        .max();
    if let Some(newest) = newest
        && newest + src.debounce > now
    {
        out.recheck_at = Some(newest + src.debounce);
        return Ok(out);
    }
    let recheck = |at: SystemTime, out: &mut Scan| {
        out.recheck_at = Some(out.recheck_at.map_or(at, |r| r.min(at)));
    };
    // A group that looked half-written is looked at again later, backing
    // off with its age (a writer that stalled for an hour is not looked at
    // every second): after its age, at least a debounce, at most 10 min.
    let retry_at = |changed: SystemTime| {
        let age = now.duration_since(changed).unwrap_or_default();
        now + age.clamp(
            src.debounce.max(Duration::from_secs(1)),
            Duration::from_secs(600),
        )
    };

    // 3–5. loose groups.
    for (stem, g) in &loose {
        let mut found = Found {
            label: escape(stem),
            files: g.files(),
            secret: Vec::new(),
        };
        if let Some(why) = tainted.get(stem) {
            // Not even opened: another user's file is not read as root.
            out.left.push((found, why.clone()));
            continue;
        }
        found.secret = found
            .files
            .iter()
            .filter(|f| g.key.contains(f) || file_holds_key(f))
            .cloned()
            .collect();
        let changed = g.changed.unwrap_or(now);
        if g.cert.is_empty() {
            // A key or chain alone: its certificate is still to come.
            continue;
        }
        match loose_candidate(cfg, work, stem, g) {
            Ok(c) if c.key.is_none() && g.key.is_empty() && !matches_installed_key(cfg, &c) => {
                // Possibly the first half of a pair: wait for the key, but
                // not forever (then validation says what is wrong).
                let give_up = changed + src.debounce * KEY_GRACE_DEBOUNCES;
                if give_up > now {
                    recheck(give_up, &mut out);
                    continue;
                }
                out.ready.push((found, c));
            }
            Ok(c) => out.ready.push((found, c)),
            Err(NotReady::Bad(why)) => out.refused.push((found, why)),
            Err(NotReady::Untrusted(why)) => out.left.push((found, why)),
            Err(NotReady::Incomplete(why)) => {
                recheck(retry_at(changed), &mut out);
                out.waiting.push((found, why));
            }
        }
    }

    // 3–5. zips.
    for (zip, changed) in zips {
        let mut found = Found {
            label: shown(&PathBuf::from(zip.file_name().unwrap_or_default())),
            files: vec![zip.clone()],
            secret: Vec::new(),
        };
        match zip_candidate(cfg, work, &zip) {
            Ok((c, holds_key)) => {
                if holds_key {
                    found.secret.push(zip.clone());
                }
                out.ready.push((found, c))
            }
            Err(NotReady::Bad(why)) => out.refused.push((found, why)),
            Err(NotReady::Untrusted(why)) => out.left.push((found, why)),
            Err(NotReady::Incomplete(why)) => {
                recheck(retry_at(changed), &mut out);
                out.waiting.push((found, why));
            }
        }
    }
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Bytes that hold a private key (PEM); a `.key` file is one by its name.
fn holds_key(bytes: &[u8]) -> bool {
    bytes.windows(16).any(|w| w == b"PRIVATE KEY-----")
}

fn file_holds_key(path: &Path) -> bool {
    owner::open_nofollow("inbox file", path)
        .ok()
        .and_then(|(f, _)| {
            let mut b = Vec::new();
            f.take(MAX_FILE_BYTES).read_to_end(&mut b).ok().map(|_| b)
        })
        .is_some_and(|b| holds_key(&b))
}

/// Size, mtime and ctime: unchanged across a read means no one wrote
/// while it was read.
fn stamp(meta: &fs::Metadata) -> (u64, u64, i64, i64, i64, i64) {
    (
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    )
}

/// Read a file in the inbox (step 4): opened without following a symlink
/// and without blocking, a regular file of root's that nobody else can
/// write (checked on the descriptor, so it cannot be swapped after the
/// check), at most `limit` bytes, and not changed while it was read.
fn read_inbox_file(path: &Path, limit: u64) -> Result<Vec<u8>, NotReady> {
    let name = shown(path);
    let (mut f, meta) = owner::open_nofollow("inbox file", path).map_err(|e| match e {
        OwnerError::Symlink { .. } => NotReady::Bad(format!(
            "{name}: is a symbolic link; put the file itself in the inbox"
        )),
        other => NotReady::Bad(escape(&other.to_string())),
    })?;
    match owner::trusted_file_meta("inbox file", path, &meta) {
        Ok(()) => {}
        Err(e @ OwnerError::Kind { .. }) => {
            return Err(NotReady::Bad(format!(
                "{name}: is not a regular file ({})",
                escape(&e.to_string())
            )));
        }
        Err(e) => return Err(NotReady::Untrusted(escape(&e.to_string()))),
    }
    let mut bytes = Vec::new();
    (&mut f)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| NotReady::Bad(format!("{name}: cannot read: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(NotReady::Bad(format!(
            "{name}: file is larger than the {} limit",
            human_size(limit)
        )));
    }
    // The second look: a writer that is still at it changes size or mtime.
    let after = f
        .metadata()
        .map_err(|e| NotReady::Bad(format!("{name}: cannot read: {e}")))?;
    if stamp(&after) != stamp(&meta) || after.size() != bytes.len() as u64 {
        return Err(NotReady::Incomplete(format!(
            "{name} changed while it was read: it is still being written"
        )));
    }
    if bytes.is_empty() {
        return Err(NotReady::Incomplete(format!(
            "{name} is empty: it is still being written"
        )));
    }
    Ok(bytes)
}

/// PEM or DER bytes that end before their last object does: a writer
/// that has not finished (or stalled). One sentence, or None when whole.
fn looks_cut_short(bytes: &[u8]) -> Option<&'static str> {
    let find = |hay: &[u8], needle: &[u8]| -> Option<usize> {
        hay.windows(needle.len()).rposition(|w| w == needle)
    };
    if let Some(begin) = find(bytes, b"-----BEGIN ") {
        let rest = &bytes[begin..];
        return match find(rest, b"-----END ") {
            Some(end) if rest[end..].windows(5).skip(9).any(|w| w == b"-----") => None,
            _ => Some("ends inside a PEM block"),
        };
    }
    // DER: a SEQUENCE whose declared length runs past the end.
    if bytes.first() == Some(&0x30) && bytes.len() >= 2 {
        let (len, header) = match bytes[1] {
            n if n < 0x80 => (usize::from(n), 2),
            n @ 0x81..=0x84 => {
                let k = usize::from(n & 0x7f);
                let Some(raw) = bytes.get(2..2 + k) else {
                    return Some("ends inside a DER header");
                };
                (
                    raw.iter().fold(0usize, |a, b| (a << 8) | usize::from(*b)),
                    2 + k,
                )
            }
            _ => return None,
        };
        if header + len > bytes.len() {
            return Some("ends before its DER length says");
        }
    }
    None
}

fn human_size(n: u64) -> String {
    format!("{} MiB", n / (1024 * 1024))
}

/// Copy a loose group into the work dir and match it to a site.
fn loose_candidate(
    cfg: &Config,
    work: &WorkDir,
    stem: &str,
    g: &Group,
) -> Result<Candidate, NotReady> {
    for (what, files) in [
        ("certificate", &g.cert),
        ("key", &g.key),
        ("chain", &g.chain),
    ] {
        if files.len() > 1 {
            return Err(NotReady::Bad(format!(
                "{} {what} files for {:?} ({}); leave one",
                files.len(),
                escape(stem),
                files
                    .iter()
                    .map(|p| shown(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let mut parts = Parts::default();
    for (src, slot) in [
        (g.cert.first(), &mut parts.cert),
        (g.key.first(), &mut parts.key),
        (g.chain.first(), &mut parts.chain),
    ] {
        if let Some(src) = src {
            let bytes = read_inbox_file(src, MAX_FILE_BYTES)?;
            if let Some(why) = looks_cut_short(&bytes) {
                return Err(NotReady::Incomplete(format!(
                    "{} {why}: it is still being written",
                    shown(src)
                )));
            }
            *slot = Some((bytes, shown(src)));
        }
    }
    let dir = work
        .bundle_dir()
        .map_err(|e| format!("cannot create a private work directory: {e}"))?;
    let shown_cert = g
        .cert
        .first()
        .map(|p| shown(p))
        .unwrap_or_else(|| escape(stem));
    Ok(parts
        .into_candidate(cfg, &dir, &[stem])
        .map_err(|why| format!("{shown_cert}: {why}"))?)
}

/// The parts of one bundle in memory, each with the name a person knows.
#[derive(Default)]
struct Parts {
    cert: Option<(Vec<u8>, String)>,
    key: Option<(Vec<u8>, String)>,
    chain: Option<(Vec<u8>, String)>,
}

impl Parts {
    /// Match a site, then write the parts under fixed names into `dir`.
    fn into_candidate(self, cfg: &Config, dir: &Path, stems: &[&str]) -> Result<Candidate, String> {
        let Some((cert_bytes, cert_name)) = self.cert else {
            return Err("holds no certificate".into());
        };
        let leaf = leaf_of(&cert_bytes);
        let site = match_site(cfg, stems, leaf.as_ref())?;
        let mut display = Vec::new();
        let write =
            |fixed: &str, bytes: &[u8], name: String, display: &mut Vec<(PathBuf, String)>| {
                let p = write_part(dir, fixed, bytes)
                    .map_err(|e| format!("cannot write to the private work directory: {e}"))?;
                display.push((p.clone(), name));
                Ok::<PathBuf, String>(p)
            };
        let cert = write("cert.pem", &cert_bytes, cert_name, &mut display)?;
        let key = match self.key {
            Some((b, n)) => Some(write("key.pem", &b, n, &mut display)?),
            None => None,
        };
        let chain = match self.chain {
            Some((b, n)) => Some(write("chain.pem", &b, n, &mut display)?),
            None => None,
        };
        Ok(Candidate {
            site: site.name.clone(),
            cert,
            key,
            chain,
            leaf_sha256: leaf.map(|l| l.sha256),
            display,
        })
    }
}

/// Own-CSR renewal: a cert alone whose public key is the installed key's.
fn matches_installed_key(cfg: &Config, c: &Candidate) -> bool {
    let Ok(site) = cfg.site(&c.site) else {
        return false;
    };
    let Ok(certs) = crate::bundle::read_certs(&c.cert) else {
        return false;
    };
    let Some(leaf) = certs.first() else {
        return false;
    };
    // A combined cert+key PEM carries its own key.
    if crate::bundle::read_key(&c.cert).is_ok() {
        return true;
    }
    crate::bundle::read_key(&site.key).is_ok_and(|k| k.spki_der == leaf.spki_der)
}

/// Why a zip entry name may not even be looked at further.
fn bad_entry_name(raw: &[u8], name: &str) -> Option<&'static str> {
    if name.is_empty() || raw.is_empty() {
        return Some("has an empty name");
    }
    if raw.contains(&0) {
        return Some("has a NUL byte in its name");
    }
    if raw.starts_with(b"/") || raw.starts_with(b"\\") || name.starts_with('/') {
        return Some("is an absolute path");
    }
    if raw.windows(2).any(|w| w == b"..") || name.contains("..") {
        return Some("contains `..`");
    }
    if raw.contains(&b'/') || raw.contains(&b'\\') || name.contains('/') || name.contains('\\') {
        return Some("is a path, not a file name");
    }
    if name.contains(':') {
        return Some("has a drive or stream separator `:`");
    }
    None
}

/// Read a vendor zip (steps 4–5): entries into memory with limits, checked
/// names, classified by suffix, matched to a site.
fn zip_candidate(
    cfg: &Config,
    work: &WorkDir,
    zip_path: &Path,
) -> Result<(Candidate, bool), NotReady> {
    let shown_zip = shown(zip_path);
    let bytes = read_inbox_file(zip_path, MAX_ZIP_TOTAL_BYTES)?;
    // A zip's directory is at its end: without the end record the writer
    // has not finished (a copy that stalled), which is not a verdict.
    if end_record(&bytes).is_none() {
        return Err(NotReady::Incomplete(format!(
            "{shown_zip} has no zip end record yet: it is still being written"
        )));
    }
    let entries = zip_entries(bytes, &shown_zip)?;

    // Classify by suffix; anything else (a README) is not part of the bundle.
    let mut parts = Parts::default();
    let mut stems: Vec<String> = Vec::new();
    let mut secret = false;
    for (name, data) in entries {
        secret |= holds_key(&data);
        let Some((stem, part)) = classify(&name) else {
            continue;
        };
        secret |= part == Part::Key;
        let slot = match part {
            Part::Cert => &mut parts.cert,
            Part::Key => &mut parts.key,
            Part::Chain => &mut parts.chain,
        };
        if let Some((_, other)) = slot {
            return Err(NotReady::Bad(format!(
                "{shown_zip}: holds two {} files ({}, {}); expected one",
                match part {
                    Part::Cert => "certificate",
                    Part::Key => "key",
                    Part::Chain => "chain",
                },
                other.rsplit(':').next().unwrap_or(other),
                escape(&name)
            )));
        }
        if part == Part::Cert {
            stems.insert(0, stem.to_string());
        } else {
            stems.push(stem.to_string());
        }
        *slot = Some((data, format!("{shown_zip}:{}", escape(&name))));
    }
    if parts.cert.is_none() {
        return Err(NotReady::Bad(format!(
            "{shown_zip}: holds no certificate (expected NAME.pem for nginx, or NAME_public.crt with NAME_chain.crt for apache)"
        )));
    }
    let zip_stem = file_name(zip_path);
    let zip_stem = strip_suffix_ignore_case(&zip_stem, ".zip").unwrap_or(&zip_stem);
    stems.push(zip_stem.to_string());
    let stems: Vec<&str> = stems.iter().map(String::as_str).collect();
    let dir = work
        .bundle_dir()
        .map_err(|e| format!("cannot create a private work directory: {e}"))?;
    let c = parts
        .into_candidate(cfg, &dir, &stems)
        .map_err(|why| format!("{shown_zip}: {why}"))?;
    Ok((c, secret))
}

/// The offset of a zip's end-of-central-directory record: the last
/// `PK\x05\x06` within the final 64 KiB + 22 bytes whose comment length
/// reaches exactly to the end (as readers search for it).
fn end_record(bytes: &[u8]) -> Option<usize> {
    const SIG: &[u8] = b"PK\x05\x06";
    let from = bytes.len().saturating_sub(22 + 65535);
    (from..=bytes.len().checked_sub(22)?).rev().find(|&i| {
        bytes[i..].starts_with(SIG) && {
            let comment = usize::from(u16::from_le_bytes([bytes[i + 20], bytes[i + 21]]));
            i + 22 + comment == bytes.len()
        }
    })
}

/// The names in a zip's central directory as written, one per entry, read
/// from the bytes themselves: the zip crate keys its entries by name, so
/// two entries of one name would silently be one. None when the directory
/// cannot be walked (zip64, or it does not add up).
fn central_names(bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let eocd = end_record(bytes)?;
    let u16_at = |i: usize| -> Option<usize> {
        Some(usize::from(u16::from_le_bytes([
            *bytes.get(i)?,
            *bytes.get(i + 1)?,
        ])))
    };
    let u32_at = |i: usize| -> Option<usize> {
        let b = bytes.get(i..i + 4)?;
        usize::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok()
    };
    let count = u16_at(eocd + 10)?;
    let mut at = u32_at(eocd + 16)?;
    if count == 0xFFFF || at == 0xFFFF_FFFF {
        return None; // zip64: the real values are elsewhere
    }
    let mut names = Vec::with_capacity(count.min(MAX_ZIP_ENTRIES + 1));
    for _ in 0..count {
        if bytes.get(at..at + 4)? != b"PK\x01\x02" {
            return None;
        }
        let (name_len, extra, comment) = (u16_at(at + 28)?, u16_at(at + 30)?, u16_at(at + 32)?);
        names.push(bytes.get(at + 46..at + 46 + name_len)?.to_vec());
        at += 46 + name_len + extra + comment;
        if names.len() > MAX_ZIP_ENTRIES {
            break; // over the limit anyway; said below
        }
    }
    Some(names)
}

/// Refuse a zip that names one entry twice, naming it.
fn refuse_duplicate_names(bytes: &[u8], shown_zip: &str) -> Result<(), String> {
    let Some(names) = central_names(bytes) else {
        return Err(format!(
            "{shown_zip}: its central directory cannot be read entry by entry (zip64, or it does not add up), so duplicate entry names cannot be ruled out; refused"
        ));
    };
    let mut seen: Vec<&[u8]> = Vec::new();
    for n in &names {
        if seen.contains(&n.as_slice()) {
            return Err(format!(
                "{shown_zip}: the zip entry {:?} appears twice; which one is meant cannot be told, so the bundle is refused",
                String::from_utf8_lossy(n)
            ));
        }
        seen.push(n);
    }
    Ok(())
}

/// The entries of a vendor zip, in memory: at most [`MAX_ZIP_ENTRIES`],
/// each at most [`MAX_ZIP_ENTRY_BYTES`] as really inflated (a declared size
/// can lie), [`MAX_ZIP_TOTAL_BYTES`] in all; names that are plain file
/// names; no links or directories. Otherwise the one sentence why, naming
/// `shown`. Bytes in, so the fuzzer runs exactly this (fuzz/harness.rs).
pub fn zip_entries(bytes: Vec<u8>, shown: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    if end_record(&bytes).is_some() {
        refuse_duplicate_names(&bytes, shown)?;
    }
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| format!("{shown}: not a readable zip archive: {e}"))?;
    if archive.len() > MAX_ZIP_ENTRIES {
        return Err(format!(
            "{shown}: holds {} entries, more than the limit of {MAX_ZIP_ENTRIES}; refused",
            archive.len()
        ));
    }
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    let mut total = 0u64;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| format!("{shown}: entry {i} cannot be read: {e}"))?;
        let name = entry.name().to_string();
        if let Some(why) = bad_entry_name(entry.name_raw(), &name) {
            return Err(format!(
                "{shown}: the zip entry {name:?} {why}; zip entries are never written by their names, so the bundle is refused"
            ));
        }
        let link = entry.unix_mode().is_some_and(|m| m & 0o170000 == 0o120000);
        if link || entry.is_symlink() {
            return Err(format!(
                "{shown}: the zip entry {name:?} is a symbolic link; the bundle is refused"
            ));
        }
        if entry.is_dir() {
            return Err(format!(
                "{shown}: the zip entry {name:?} is a directory; the bundle is refused"
            ));
        }
        if entry.size() > MAX_ZIP_ENTRY_BYTES {
            return Err(format!(
                "{shown}: the zip entry {name:?} is larger than the {} limit",
                human_size(MAX_ZIP_ENTRY_BYTES)
            ));
        }
        // The declared size can lie: bound what is actually inflated.
        let mut data = Vec::new();
        (&mut entry)
            .take(MAX_ZIP_ENTRY_BYTES + 1)
            .read_to_end(&mut data)
            .map_err(|e| format!("{shown}: the zip entry {name:?} cannot be read: {e}"))?;
        if data.len() as u64 > MAX_ZIP_ENTRY_BYTES {
            return Err(format!(
                "{shown}: the zip entry {name:?} is larger than the {} limit",
                human_size(MAX_ZIP_ENTRY_BYTES)
            ));
        }
        total += data.len() as u64;
        if total > MAX_ZIP_TOTAL_BYTES {
            return Err(format!(
                "{shown}: the zip entries add up to more than the {} limit",
                human_size(MAX_ZIP_TOTAL_BYTES)
            ));
        }
        entries.push((name, data));
    }
    Ok(entries)
}

/// Move a processed group out of the inbox: to `done/STAMP/`, or to
/// `failed/STAMP/` with `reason.txt` holding `failure`. Returns the dir.
///
/// `done/` keeps no private key: a file that holds one is removed once its
/// bundle is installed (the key is in place, and the store keeps the
/// versions it replaces), and `removed.txt` says so; only the newest
/// [`DONE_KEEP`] entries of `done/` are kept. `failed/` keeps everything:
/// it is the operator's evidence. A configured target is never moved, and
/// `done/` or `failed/` must be a real directory only root can change.
pub fn finish(
    src: &InboxSource,
    cfg: &Config,
    found: &Found,
    failure: Option<&str>,
) -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let (what, sub) = match failure {
        Some(_) => ("inbox failed/", "failed"),
        None => ("inbox done/", "done"),
    };
    let base = src.path.join(sub);
    // mkdir does not follow a symlink left there; the check refuses one.
    match fs::DirBuilder::new().mode(0o700).create(&base) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    owner::trusted_dir(what, &base).map_err(|e| io::Error::other(e.to_string()))?;
    let targets = target_files(cfg);
    let dir = unique_stamp_dir(&base)?;
    let mut removed = Vec::new();
    for f in &found.files {
        if targets.contains(&canonical_lenient(f)) {
            tracing::warn!(file = %shown(f), "inbox: a configured target is never moved; left in place");
            continue;
        }
        if failure.is_none() && found.secret.contains(f) {
            match fs::remove_file(f) {
                Ok(()) => removed.push(file_name(f)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        let to = dir.join(file_name(f));
        match fs::rename(f, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(file = %shown(f), "inbox: the file went away before it could be moved");
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(why) = failure {
        let mut text = why.trim().to_string();
        text.push('\n');
        fsio::create_new(&dir.join("reason.txt"), text.as_bytes(), Perms::own(0o600))?;
    } else if !removed.is_empty() {
        let text: String = removed
            .iter()
            .map(|n| {
                format!(
                    "{}: held a private key; removed once installed (the key is in place, and the store keeps the versions it replaces)\n",
                    escape(n)
                )
            })
            .collect();
        fsio::create_new(&dir.join("removed.txt"), text.as_bytes(), Perms::own(0o600))?;
    }
    let _ = fsio::fsync_dir(&dir);
    let _ = fsio::fsync_dir(&src.path);
    if failure.is_none() {
        prune(&base, DONE_KEEP);
    }
    Ok(dir)
}

/// Remove all but the newest `keep` stamp directories of `base` (their
/// names sort by time: `20261103T120501Z`, `…Z-2`). Only real directories
/// named like a stamp are touched.
fn prune(base: &Path, keep: usize) {
    let Ok(rd) = fs::read_dir(base) else { return };
    let mut stamps: Vec<(String, u32, PathBuf)> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let (stamp, n) = match name.split_once('-') {
                Some((s, n)) => (s.to_string(), n.parse().ok()?),
                None => (name.clone(), 1),
            };
            let ok = stamp.len() == 16
                && stamp.as_bytes()[8] == b'T'
                && stamp.ends_with('Z')
                && stamp[..8].bytes().all(|b| b.is_ascii_digit());
            ok.then(|| (stamp, n, e.path()))
        })
        .collect();
    stamps.sort();
    let excess = stamps.len().saturating_sub(keep);
    for (_, _, dir) in stamps.into_iter().take(excess) {
        if let Err(e) = fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %shown(&dir), "inbox: cannot remove an old done/ entry: {e}");
        }
    }
}

/// `base/20261103T120501Z`, or with `-2`, `-3`… when taken.
fn unique_stamp_dir(base: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let now = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    for n in 1..1000 {
        let name = if n == 1 {
            stamp.clone()
        } else {
            format!("{stamp}-{n}")
        };
        let dir = base.join(name);
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("{}: no free stamp directory", base.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_classified() {
        assert_eq!(classify("a.test.pem"), Some(("a.test", Part::Cert)));
        assert_eq!(classify("a.test.key"), Some(("a.test", Part::Key)));
        assert_eq!(classify("a.test_chain.crt"), Some(("a.test", Part::Chain)));
        assert_eq!(classify("a.test_public.crt"), Some(("a.test", Part::Cert)));
        assert_eq!(classify("README.txt"), None);
        assert!(ignored(".a.test.pem"));
        assert!(ignored("a.test.pem.tmp"));
        assert!(!ignored("a.test.pem"));
    }

    #[test]
    fn names_are_escaped_for_logs() {
        assert_eq!(
            shown(Path::new("/in/a\nERROR x\u{1b}[31m.pem")),
            "/in/a\\nERROR x\\u{1b}[31m.pem"
        );
        assert_eq!(escape("www.exämple.com.pem"), "www.exämple.com.pem");
    }

    #[test]
    fn cut_short_pem_der_and_zip_are_told_from_whole_ones() {
        let pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        assert_eq!(looks_cut_short(pem), None);
        assert!(looks_cut_short(&pem[..20]).is_some());
        assert!(looks_cut_short(&pem[..pem.len() - 8]).is_some());
        // A second block cut short after a whole first one.
        let two = [&pem[..], &pem[..30]].concat();
        assert!(looks_cut_short(&two).is_some());
        // DER: a SEQUENCE of 0x0200 bytes with only 3 present.
        assert!(looks_cut_short(&[0x30, 0x82, 0x02, 0x00, 1, 2, 3]).is_some());
        assert_eq!(looks_cut_short(&[0x30, 0x03, 1, 2, 3]), None);
        // Garbage is not "still being written": validation says what it is.
        assert_eq!(looks_cut_short(b"hello"), None);

        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        w.start_file("a.pem", zip::write::SimpleFileOptions::default())
            .expect("entry");
        std::io::Write::write_all(&mut w, b"x").expect("write");
        let zip = w.finish().expect("finish").into_inner();
        assert!(end_record(&zip).is_some());
        assert!(end_record(&zip[..zip.len() - 1]).is_none());
        assert_eq!(central_names(&zip), Some(vec![b"a.pem".to_vec()]));
    }

    #[test]
    fn canonical_lenient_resolves_what_exists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = fs::canonicalize(dir.path()).expect("canonical");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        assert_eq!(canonical_lenient(&link.join("x/y")), real.join("x/y"));
        assert_eq!(canonical_lenient(&link.join("x/../z")), real.join("z"));
    }

    #[test]
    fn prune_keeps_the_newest_stamps_and_nothing_else_is_touched() {
        let dir = tempfile::tempdir().expect("tempdir");
        for n in [
            "20261103T120501Z",
            "20261103T120501Z-2",
            "20261103T120501Z-10",
            "20251103T120501Z",
        ] {
            fs::create_dir(dir.path().join(n)).expect("mkdir");
        }
        fs::create_dir(dir.path().join("keep-me")).expect("mkdir");
        prune(dir.path(), 2);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .expect("read")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec!["20261103T120501Z-10", "20261103T120501Z-2", "keep-me"]
        );
    }

    #[test]
    fn a_configured_target_is_never_read_or_moved_by_an_inbox_pass() {
        // check_placement refuses such an inbox at start; this is the
        // second line, for a config that changed under a running agent.
        let dir = tempfile::tempdir().expect("tempdir");
        let ssl = dir.path().join("ssl");
        fs::create_dir(&ssl).expect("mkdir");
        let cert = ssl.join("a.test.pem");
        fs::write(&cert, "live bytes").expect("write");
        let text = format!(
            "state_dir = {:?}\n[server]\nkind = \"nginx\"\n[[site]]\nname = \"a.test\"\ncert = {:?}\nkey = {:?}\nendpoints = [\"127.0.0.1:443\"]\n[[source]]\nkind = \"inbox\"\npath = {:?}\n",
            dir.path().join("state"),
            cert,
            ssl.join("a.test.key"),
            ssl
        );
        let cfg = Config::parse(&text, Path::new("/x.toml")).expect("config");
        let e = check_placement(&cfg).expect_err("the inbox is the cert dir");
        assert!(e.to_string().contains(" is "), "{e}");
        let crate::config::SourceConfig::Inbox(src) = &cfg.sources[0] else {
            panic!("inbox source");
        };
        let work = WorkDir::create(&dir.path().join("state")).expect("work");
        let past = SystemTime::now() + Duration::from_secs(3600);
        let scan = scan(src, &cfg, &work, past).expect("scan");
        assert!(scan.ready.is_empty() && scan.refused.is_empty());
        assert_eq!(scan.left.len(), 1, "{:?}", scan.left);
        let found = Found {
            label: "a.test".into(),
            files: vec![cert.clone()],
            secret: vec![cert.clone()],
        };
        finish(src, &cfg, &found, None).expect("finish");
        assert_eq!(fs::read(&cert).expect("still there"), b"live bytes");
    }

    #[test]
    fn dangerous_entry_names_are_caught() {
        for bad in [
            "../x.pem",
            "/etc/x.pem",
            "a/b.pem",
            "..",
            "a\\b.key",
            "c:x.pem",
            "",
        ] {
            assert!(bad_entry_name(bad.as_bytes(), bad).is_some(), "{bad:?}");
        }
        assert!(bad_entry_name(b"www.example.com.pem", "www.example.com.pem").is_none());
    }
}
