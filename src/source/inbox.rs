//! The inbox source: a directory where people or tools drop renewed
//! bundles — `SITE.pem` (+ `SITE.key`, + `SITE_chain.crt`), or a vendor zip
//! for nginx (`*.pem` + `*.key`) or apache (`*_public.crt` + `*_chain.crt`
//! + `*.key`) under any name (`12345_www.example.com_nginx.zip`).
//!
//! One scan:
//! 1. list the top level; dot-files, `*.tmp` and directories are not ours;
//! 2. group loose files by stem; every zip is a group of its own;
//! 3. groups are acted on only once nothing in the inbox changed for
//!    `debounce` (the newest mtime/ctime is older), so a burst of files is
//!    one batch; a cert without its key waits
//!    for the key unless it matches the key already installed (own CSR),
//!    for at most [`KEY_GRACE_DEBOUNCES`] × debounce;
//! 4. its files are read without following symlinks, size-limited, and
//!    written under fixed names into the pass's private work directory —
//!    zip entries are read into memory with limits and never used as paths;
//! 5. it is matched to a site by file stem, else by the leaf's names.
//!
//! After the batch, [`finish`] moves the group's files to
//! `done/STAMP/` or `failed/STAMP/` (with `reason.txt`).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::bundle::MAX_FILE_BYTES;
use crate::config::{Config, InboxSource};
use crate::fsio::{self, Perms};
use crate::source::{Candidate, WorkDir, leaf_of, match_site, mkdir_private_all, write_part};

/// A zip may hold at most this many entries.
pub const MAX_ZIP_ENTRIES: usize = 16;
/// Each zip entry (uncompressed) may be at most this large.
pub const MAX_ZIP_ENTRY_BYTES: u64 = MAX_FILE_BYTES;
/// All entries of a zip together, uncompressed, and the zip file itself.
pub const MAX_ZIP_TOTAL_BYTES: u64 = 4 * 1024 * 1024;
/// A cert without a key waits this many debounce periods for its key.
pub const KEY_GRACE_DEBOUNCES: u32 = 15;

/// One bundle found in the inbox: the files that move together afterwards.
#[derive(Debug, Clone)]
pub struct Found {
    /// The stem of loose files, or the zip's file name: for logs.
    pub label: String,
    pub files: Vec<PathBuf>,
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Ready to install.
    pub ready: Vec<(Found, Candidate)>,
    /// Refused before any install (bad zip, no matching site, …): to be
    /// moved to `failed/` with the reason.
    pub refused: Vec<(Found, String)>,
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

/// Look at the inbox once (steps 1–5 of the module doc).
pub fn scan(src: &InboxSource, cfg: &Config, work: &WorkDir, now: SystemTime) -> io::Result<Scan> {
    let mut out = Scan::default();
    let mut loose: BTreeMap<String, Group> = BTreeMap::new();
    let mut zips: Vec<(PathBuf, SystemTime)> = Vec::new();

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
        let changed = changed_at(&meta);
        if strip_suffix_ignore_case(&name, ".zip").is_some() {
            zips.push((path, changed));
            continue;
        }
        let Some((stem, part)) = classify(&name) else {
            tracing::debug!(file = %path.display(), "inbox: not a bundle file name; left alone");
            continue;
        };
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
    let newest = loose
        .values()
        .filter_map(|g| g.changed)
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

    // 3–5. loose groups.
    for (stem, g) in &loose {
        let found = Found {
            label: stem.clone(),
            files: g.files(),
        };
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
            Err(why) => out.refused.push((found, why)),
        }
    }

    // 3–5. zips.
    for (zip, _) in zips {
        let found = Found {
            label: file_name(&zip),
            files: vec![zip.clone()],
        };
        match zip_candidate(cfg, work, &zip) {
            Ok(c) => out.ready.push((found, c)),
            Err(why) => out.refused.push((found, why)),
        }
    }
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Read a file in the inbox: not through a symlink, a regular file, at most
/// `limit` bytes.
fn read_inbox_file(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let f: File = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP) => {
                format!(
                    "{}: is a symbolic link; put the file itself in the inbox",
                    path.display()
                )
            }
            _ => format!("{}: cannot read: {e}", path.display()),
        })?;
    let meta = f
        .metadata()
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: is not a regular file", path.display()));
    }
    let mut bytes = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "{}: file is larger than the {} limit",
            path.display(),
            human_size(limit)
        ));
    }
    Ok(bytes)
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
) -> Result<Candidate, String> {
    for (what, files) in [
        ("certificate", &g.cert),
        ("key", &g.key),
        ("chain", &g.chain),
    ] {
        if files.len() > 1 {
            return Err(format!(
                "{} {what} files for {stem:?} ({}); leave one",
                files.len(),
                files
                    .iter()
                    .map(|p| file_name(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    let dir = work
        .bundle_dir()
        .map_err(|e| format!("cannot create a private work directory: {e}"))?;
    let mut parts = Parts::default();
    for (src, slot) in [
        (g.cert.first(), &mut parts.cert),
        (g.key.first(), &mut parts.key),
        (g.chain.first(), &mut parts.chain),
    ] {
        if let Some(src) = src {
            let bytes = read_inbox_file(src, MAX_FILE_BYTES)?;
            *slot = Some((bytes, src.display().to_string()));
        }
    }
    let shown = g
        .cert
        .first()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| stem.to_string());
    parts
        .into_candidate(cfg, &dir, &[stem])
        .map_err(|why| format!("{shown}: {why}"))
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
fn zip_candidate(cfg: &Config, work: &WorkDir, zip_path: &Path) -> Result<Candidate, String> {
    let shown = zip_path.display().to_string();
    let bytes = read_inbox_file(zip_path, MAX_ZIP_TOTAL_BYTES)?;
    let entries = zip_entries(bytes, &shown)?;

    // Classify by suffix; anything else (a README) is not part of the bundle.
    let mut parts = Parts::default();
    let mut stems: Vec<String> = Vec::new();
    for (name, data) in entries {
        let Some((stem, part)) = classify(&name) else {
            continue;
        };
        let slot = match part {
            Part::Cert => &mut parts.cert,
            Part::Key => &mut parts.key,
            Part::Chain => &mut parts.chain,
        };
        if let Some((_, other)) = slot {
            return Err(format!(
                "{shown}: holds two {} files ({}, {name}); expected one",
                match part {
                    Part::Cert => "certificate",
                    Part::Key => "key",
                    Part::Chain => "chain",
                },
                other.rsplit(':').next().unwrap_or(other)
            ));
        }
        if part == Part::Cert {
            stems.insert(0, stem.to_string());
        } else {
            stems.push(stem.to_string());
        }
        *slot = Some((data, format!("{shown}:{name}")));
    }
    if parts.cert.is_none() {
        return Err(format!(
            "{shown}: holds no certificate (expected NAME.pem for nginx, or NAME_public.crt with NAME_chain.crt for apache)"
        ));
    }
    let zip_stem = file_name(zip_path);
    let zip_stem = strip_suffix_ignore_case(&zip_stem, ".zip").unwrap_or(&zip_stem);
    stems.push(zip_stem.to_string());
    let stems: Vec<&str> = stems.iter().map(String::as_str).collect();
    let dir = work
        .bundle_dir()
        .map_err(|e| format!("cannot create a private work directory: {e}"))?;
    parts
        .into_candidate(cfg, &dir, &stems)
        .map_err(|why| format!("{shown}: {why}"))
}

/// The entries of a vendor zip, in memory: at most [`MAX_ZIP_ENTRIES`],
/// each at most [`MAX_ZIP_ENTRY_BYTES`] as really inflated (a declared size
/// can lie), [`MAX_ZIP_TOTAL_BYTES`] in all; names that are plain file
/// names; no links or directories. Otherwise the one sentence why, naming
/// `shown`. Bytes in, so the fuzzer runs exactly this (fuzz/harness.rs).
pub fn zip_entries(bytes: Vec<u8>, shown: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
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
pub fn finish(src: &InboxSource, found: &Found, failure: Option<&str>) -> io::Result<PathBuf> {
    let base = src
        .path
        .join(if failure.is_some() { "failed" } else { "done" });
    mkdir_private_all(&base)?;
    let dir = unique_stamp_dir(&base)?;
    for f in &found.files {
        let to = dir.join(file_name(f));
        match fs::rename(f, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(file = %f.display(), "inbox: the file went away before it could be moved");
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(why) = failure {
        let mut text = why.trim().to_string();
        text.push('\n');
        fsio::create_new(&dir.join("reason.txt"), text.as_bytes(), Perms::own(0o600))?;
    }
    let _ = fsio::fsync_dir(&dir);
    let _ = fsio::fsync_dir(&src.path);
    Ok(dir)
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
