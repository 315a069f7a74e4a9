//! Where the agent's bundles come from: an inbox directory ([`inbox`]),
//! an HTTPS manifest ([`http`]), and the stores of the ACME clients
//! (certbot lineages, acme.sh domain dirs: [`acme`]). A source turns what it finds into
//! [`Candidate`]s — files in a private work directory under `state_dir`,
//! matched to one configured site — that the agent installs as one batch.
//!
//! Nothing a source reads from outside (a zip entry name, a manifest path,
//! a site name in a manifest) ever becomes a path: parts are written under
//! fixed names (`cert.pem`, `key.pem`, `chain.pem`) in the work directory
//! (invariant 8).

pub mod acme;
pub mod aliyun;
pub mod cloud;
pub mod http;
pub mod inbox;
pub mod tencent;

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cert::CertInfo;
use crate::config::{Config, Site};
use crate::fsio::{self, Perms};

/// A bundle ready to install on one site. The files live in the pass's
/// [`WorkDir`] (zip parts, downloads) or in the inbox itself (loose files).
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The configured site it was matched to.
    pub site: String,
    pub cert: PathBuf,
    pub key: Option<PathBuf>,
    pub chain: Option<PathBuf>,
    /// SHA-256 of the leaf, when it could be read before installing.
    pub leaf_sha256: Option<String>,
    /// How each file is named in messages (work-dir path → what a person
    /// knows it as: `12345_www_nginx.zip:www.pem`, a URL).
    pub display: Vec<(PathBuf, String)>,
}

impl Candidate {
    /// `message` with work-directory paths replaced by what a person knows
    /// the files as (a zip entry, a URL).
    pub fn describe(&self, message: &str) -> String {
        let mut out = message.to_string();
        for (path, name) in &self.display {
            out = out.replace(&path.display().to_string(), name);
        }
        out
    }
}

/// A private directory (0700) for one pass under `state_dir/agent/work/`,
/// removed with everything in it on drop.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    next: AtomicU64,
}

impl WorkDir {
    /// The parent of every pass's work directory.
    pub fn root(state_dir: &Path) -> PathBuf {
        state_dir.join("agent").join("work")
    }

    /// Remove what a crashed earlier agent left under [`WorkDir::root`].
    pub fn clean_stale(state_dir: &Path) {
        let root = WorkDir::root(state_dir);
        if let Ok(entries) = fs::read_dir(&root) {
            for e in entries.flatten() {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }

    /// Create a fresh work directory for one pass.
    pub fn create(state_dir: &Path) -> io::Result<WorkDir> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let root = WorkDir::root(state_dir);
        mkdir_private_all(&root)?;
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = root.join(format!("pass-{}-{n}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path)?;
        }
        fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(WorkDir {
            path,
            next: AtomicU64::new(0),
        })
    }

    /// A new empty private subdirectory for one bundle.
    pub fn bundle_dir(&self) -> io::Result<PathBuf> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dir = self.path.join(format!("b{n}"));
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Create `dir` and its missing parents with mode 0700 (in `fsio`, which
/// the deploy hook uses too).
pub use crate::fsio::mkdir_private_all;

/// Write one part of a bundle under its fixed name, 0600 from the first byte.
pub fn write_part(dir: &Path, fixed_name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    let path = dir.join(fixed_name);
    fsio::create_new(&path, bytes, Perms::own(0o600))?;
    Ok(path)
}

/// The first certificate in PEM or DER `bytes` (owned by `bundle`).
pub use crate::bundle::leaf_of;

/// SHA-256 of the leaf installed for `site` now, if it can be read.
pub fn installed_leaf_sha256(site: &Site) -> Option<String> {
    crate::bundle::read_certs(&site.cert)
        .ok()
        .and_then(|certs| certs.into_iter().next())
        .map(|c| c.sha256)
}

/// A name reduced for comparison with file names: lowercase, `.`/`-` as
/// `_`, `*` as `star` (vendors write `www_example_com`, `STAR_example_com`).
fn normalize(name: &str) -> String {
    name.to_ascii_lowercase()
        .replace('*', "star")
        .replace(['.', '-'], "_")
}

/// The site whose name a file stem names: exactly, or as a `_`-separated
/// part of it (`12345_www.example.com_nginx`); the longest such name wins.
/// None when no site, or two equally long ones, match.
pub fn site_by_stem<'a>(cfg: &'a Config, stem: &str) -> Option<&'a Site> {
    if let Some(s) = cfg.sites.iter().find(|s| s.name.eq_ignore_ascii_case(stem)) {
        return Some(s);
    }
    let stem = normalize(stem);
    let mut best: Vec<&Site> = Vec::new();
    for site in &cfg.sites {
        let n = normalize(&site.name);
        let found = stem.match_indices(&n).any(|(i, _)| {
            let before = i == 0 || stem.as_bytes()[i - 1] == b'_';
            let end = i + n.len();
            let after = end == stem.len() || stem.as_bytes()[end] == b'_';
            before && after
        });
        if !found {
            continue;
        }
        match best.first() {
            Some(b) if normalize(&b.name).len() > n.len() => {}
            Some(b) if normalize(&b.name).len() == n.len() => best.push(site),
            _ => best = vec![site],
        }
    }
    match best.as_slice() {
        [one] => Some(one),
        _ => None,
    }
}

/// The site whose every name the leaf covers. Err says why none or which
/// several, as one sentence.
pub fn site_by_names<'a>(cfg: &'a Config, leaf: &CertInfo) -> Result<&'a Site, String> {
    let fits: Vec<&Site> = cfg
        .sites
        .iter()
        .filter(|s| s.all_names().iter().all(|n| leaf.covers(n)))
        .collect();
    match fits.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "no configured site matches: the file name names none, and the certificate's names ({}) do not cover every name of any site",
            leaf.names.join(", ")
        )),
        several => Err(format!(
            "the certificate's names fit several sites ({}); name the file after the site, e.g. {}.pem",
            several
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            several[0].name
        )),
    }
}

/// Match by the stems first (in order), then by the leaf's names.
pub fn match_site<'a>(
    cfg: &'a Config,
    stems: &[&str],
    leaf: Option<&CertInfo>,
) -> Result<&'a Site, String> {
    for stem in stems {
        if let Some(site) = site_by_stem(cfg, stem) {
            return Ok(site);
        }
    }
    match leaf {
        Some(leaf) => site_by_names(cfg, leaf),
        None => Err(format!(
            "no configured site is named {} and the certificate cannot be read to match its names",
            stems
                .first()
                .map(|s| format!("{s:?}"))
                .unwrap_or_else(|| "by the file".into())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(names: &[&str]) -> Config {
        let mut t = String::from("state_dir = \"/tmp/st\"\n[server]\nkind = \"nginx\"\n");
        for n in names {
            t.push_str(&format!(
                "[[site]]\nname = \"{n}\"\ncert = \"/c/{n}.pem\"\nkey = \"/c/{n}.key\"\nendpoints = [\"probe.test@127.0.0.1:443\"]\n"
            ));
        }
        Config::parse(&t, Path::new("/x.toml")).expect("config")
    }

    #[test]
    fn stems_with_vendor_prefixes_find_their_site() {
        let c = cfg(&["www.example.com", "example.com", "*.example.org"]);
        let name = |s: &str| site_by_stem(&c, s).map(|s| s.name.clone());
        assert_eq!(name("www.example.com").as_deref(), Some("www.example.com"));
        assert_eq!(
            name("12345_www.example.com_nginx").as_deref(),
            Some("www.example.com")
        );
        assert_eq!(name("www_example_com").as_deref(), Some("www.example.com"));
        assert_eq!(name("example_com").as_deref(), Some("example.com"));
        assert_eq!(name("STAR_example_org").as_deref(), Some("*.example.org"));
        assert_eq!(name("wwwXexample.com"), None);
        assert_eq!(name("other.test"), None);
    }
}
