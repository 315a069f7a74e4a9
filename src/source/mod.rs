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
    /// The bundle's files, as the engine takes them.
    pub fn files(&self) -> crate::bundle::Files {
        crate::bundle::Files {
            cert: self.cert.clone(),
            key: self.key.clone(),
            chain: self.chain.clone(),
        }
    }

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
    crate::bundle::read_leaf(&site.cert).ok().map(|c| c.sha256)
}

/// The one site a bundle with file `stems` and `leaf` is for
/// ([`crate::matcher`]'s rule), or the sentence why none is.
pub fn match_site<'a>(
    cfg: &'a Config,
    stems: &[&str],
    leaf: Option<&CertInfo>,
) -> Result<&'a Site, String> {
    crate::matcher::one(cfg, crate::matcher::Hint::Stems(stems), leaf).map_err(|e| e.to_string())
}
