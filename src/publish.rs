//! The publisher's side of a fleet: `certswap manifest build DIR` turns a
//! folder of renewals into the manifest agents poll
//! ([`crate::manifest`]), checked with the agent's own parsing
//! ([`crate::bundle`]) and rules ([`crate::validate::validate_unattached`]).
//!
//! Layout (one folder per site, one per renewal, the newest name wins):
//!
//! ```text
//! DIR/www.example.com/2027-06-01/fullchain.pem   leaf + intermediates
//! DIR/www.example.com/2027-06-01/privkey.pem     absent when the key stays on the servers
//! DIR/manifest.json                              written here
//! ```
//!
//! 1. list the site folders (sorted; hidden ones and files skipped), each
//!    name a host name;
//! 2. per site, the newest renewal folder holding `fullchain.pem`;
//! 3. read each file once (≤ 1 MiB), hash those bytes and parse the same
//!    bytes, so what is checked is what the SHA-256 in the manifest names;
//! 4. apply every rule that needs no installed certificate;
//! 5. only when every site passed: write the manifest atomically (temp
//!    file, fsync, rename, fsync the folder). One bad site → an error and
//!    the old manifest untouched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use crate::bundle::{self, Bundle, BundleError};
use crate::cert::{self, sha256_hex};
use crate::fsio::{self, Perms};
use crate::manifest::{self, Manifest, ManifestBundle, ManifestError, Rollout};
use crate::validate::{self, ValidationError};

/// The certificate file of a renewal folder.
pub const CERT_FILE: &str = "fullchain.pem";
/// The key file of a renewal folder (optional).
pub const KEY_FILE: &str = "privkey.pem";

/// What to publish besides the files.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The rollout percent of every site not in `site_percent`.
    pub percent: u32,
    /// Per-site rollout percents; a site not in DIR is an error.
    pub site_percent: BTreeMap<String, u32>,
    /// Write `"paused": true`: no agent installs from the manifest.
    pub paused: bool,
}

/// Why no manifest was written. Each names the file or folder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// DIR is missing or not a folder.
    #[error("{path}: not a directory")]
    NotADir { path: PathBuf },
    /// A folder could not be listed or a file not read.
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A site folder whose name is not a host name.
    #[error("{path}: {name:?} is not a site name (a host name)")]
    SiteName { path: PathBuf, name: String },
    /// A file that does not parse as a certificate or key.
    #[error("{0}")]
    Bundle(#[from] BundleError),
    /// A rule of [`crate::validate`] refused a site's renewal.
    #[error("{path}: {source}")]
    Invalid {
        path: PathBuf,
        source: ValidationError,
    },
    /// A percent above 100.
    #[error("rollout percent {0} is not in 0..100")]
    Percent(u32),
    /// `--site-percent` named a site DIR has no renewal for.
    #[error("--site-percent names sites without a renewal in {dir}: {names}")]
    UnknownSites { dir: PathBuf, names: String },
    /// The manifest could not be written.
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The manifest in DIR does not parse.
    #[error("{path}: {source}")]
    Manifest {
        path: PathBuf,
        source: ManifestError,
    },
}

/// One published site, for the summary line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub site: String,
    /// The renewal folder's name.
    pub renewal: String,
    pub has_key: bool,
    pub not_after: String,
    /// SHA-256 of the leaf's DER: what an agent that took it serves.
    pub leaf_sha256: String,
    pub percent: u32,
    pub warnings: Vec<String>,
}

/// A checked manifest, not yet written.
#[derive(Debug, Clone)]
pub struct Built {
    pub manifest: Manifest,
    pub rows: Vec<Row>,
    /// Site folders without any renewal, each a sentence.
    pub skipped: Vec<String>,
}

impl Built {
    /// Set one site's percent (the rollout's waves).
    pub fn set_percent(&mut self, site: &str, percent: u32) {
        for b in self.manifest.bundles.iter_mut().filter(|b| b.site == site) {
            b.rollout = Some(Rollout {
                percent: Some(percent),
                paused: false,
            });
        }
        for r in self.rows.iter_mut().filter(|r| r.site == site) {
            r.percent = percent;
        }
    }
}

/// `DIR/manifest.json`.
pub fn manifest_path(dir: &Path) -> PathBuf {
    dir.join(manifest::FILE_NAME)
}

/// Steps 1–4: the manifest DIR describes, checked; nothing is written.
pub fn build(dir: &Path, opts: &Options) -> Result<Built, PublishError> {
    for p in std::iter::once(&opts.percent).chain(opts.site_percent.values()) {
        if *p > 100 {
            return Err(PublishError::Percent(*p));
        }
    }
    if !dir.is_dir() {
        return Err(PublishError::NotADir {
            path: dir.to_path_buf(),
        });
    }
    let now = OffsetDateTime::now_utc();
    let mut percents = opts.site_percent.clone();
    let mut built = Built {
        manifest: Manifest {
            version: manifest::VERSION,
            paused: opts.paused,
            bundles: Vec::new(),
        },
        rows: Vec::new(),
        skipped: Vec::new(),
    };
    // 1. the site folders.
    for site in sorted_names(dir)? {
        let site_dir = dir.join(&site);
        if site.starts_with('.') || !site_dir.is_dir() {
            continue;
        }
        if !is_site_name(&site) {
            return Err(PublishError::SiteName {
                path: site_dir,
                name: site,
            });
        }
        // 2. its newest renewal.
        let Some(renewal) = newest_renewal(&site_dir)? else {
            built.skipped.push(format!(
                "{}: no DATE/{CERT_FILE}, skipped",
                site_dir.display()
            ));
            continue;
        };
        let percent = percents.remove(&site).unwrap_or(opts.percent);
        let (bundle, row) = site_bundle(dir, &site, &renewal, percent, now)?;
        built.manifest.bundles.push(bundle);
        built.rows.push(row);
    }
    if !percents.is_empty() {
        return Err(PublishError::UnknownSites {
            dir: dir.to_path_buf(),
            names: percents.into_keys().collect::<Vec<_>>().join(", "),
        });
    }
    Ok(built)
}

/// Steps 3–4 for one site's renewal folder.
fn site_bundle(
    dir: &Path,
    site: &str,
    renewal: &str,
    percent: u32,
    now: OffsetDateTime,
) -> Result<(ManifestBundle, Row), PublishError> {
    let rel = format!("{site}/{renewal}");
    let cert_path = dir.join(&rel).join(CERT_FILE);
    let key_path = dir.join(&rel).join(KEY_FILE);
    // 3. one read per file: the hashed bytes are the parsed bytes.
    let cert_bytes = read(&cert_path)?;
    let certs = bundle::parse_certs_bytes(&cert_path, &cert_bytes)?;
    let mut certs = certs.into_iter();
    let leaf = certs.next().ok_or_else(|| BundleError::NoCertificate {
        path: cert_path.clone(),
    })?;
    let key_bytes = match key_path.try_exists() {
        Ok(true) => Some(read(&key_path)?),
        Ok(false) => None,
        Err(source) => {
            return Err(PublishError::Read {
                path: key_path,
                source,
            });
        }
    };
    let key = match &key_bytes {
        Some(b) => Some(bundle::parse_key_bytes(&key_path, b)?),
        None => None,
    };
    let mut b = Bundle {
        leaf,
        chain: certs.collect(),
        key,
        cert_path: cert_path.clone(),
        key_path: key_bytes.as_ref().map(|_| key_path.clone()),
    };
    // 4. the rules; the site's name must be covered.
    let names = [site.to_ascii_lowercase()];
    let report = validate::validate_unattached(&mut b, &names, now).map_err(|source| {
        PublishError::Invalid {
            path: cert_path.clone(),
            source,
        }
    })?;
    let not_after = cert::rfc3339(b.leaf.not_after);
    let has_key = key_bytes.is_some();
    let bundle = ManifestBundle {
        site: site.to_string(),
        cert: format!("{rel}/{CERT_FILE}"),
        cert_sha256: Some(sha256_hex(&cert_bytes)),
        key: has_key.then(|| format!("{rel}/{KEY_FILE}")),
        key_sha256: key_bytes.as_deref().map(sha256_hex),
        chain: None,
        chain_sha256: None,
        not_after: Some(not_after.clone()),
        paused: false,
        rollout: Some(Rollout {
            percent: Some(percent),
            paused: false,
        }),
    };
    let row = Row {
        site: site.to_string(),
        renewal: renewal.to_string(),
        has_key,
        not_after,
        leaf_sha256: b.leaf.sha256.clone(),
        percent,
        warnings: report.warnings,
    };
    Ok((bundle, row))
}

/// Step 5: replace `DIR/manifest.json` atomically, mode 0644 (the web
/// server serving the folder reads it).
pub fn write(dir: &Path, m: &Manifest) -> Result<PathBuf, PublishError> {
    let path = manifest_path(dir);
    fsio::write_atomic(&path, &manifest::to_bytes(m), Perms::own(0o644)).map_err(|source| {
        PublishError::Write {
            path: path.clone(),
            source,
        }
    })?;
    Ok(path)
}

/// The manifest DIR holds now, if any.
pub fn read_current(dir: &Path) -> Result<Option<Manifest>, PublishError> {
    let path = manifest_path(dir);
    let bytes = match fsio::read_limited(&path, crate::source::http::MAX_MANIFEST_BYTES) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PublishError::Read { path, source }),
    };
    manifest::parse(&bytes)
        .map(Some)
        .map_err(|source| PublishError::Manifest { path, source })
}

fn read(path: &Path) -> Result<Vec<u8>, PublishError> {
    fsio::read_limited(path, bundle::MAX_FILE_BYTES).map_err(|source| {
        if source.kind() == std::io::ErrorKind::InvalidData {
            PublishError::Bundle(BundleError::TooLarge {
                path: path.to_path_buf(),
            })
        } else {
            PublishError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

fn sorted_names(dir: &Path) -> Result<Vec<String>, PublishError> {
    let rd = std::fs::read_dir(dir).map_err(|source| PublishError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut names = Vec::new();
    for e in rd {
        let e = e.map_err(|source| PublishError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// The last (by name) non-hidden subfolder holding `fullchain.pem`: dated
/// names (`2027-06-01`) sort by date.
fn newest_renewal(site_dir: &Path) -> Result<Option<String>, PublishError> {
    Ok(sorted_names(site_dir)?
        .into_iter()
        .rfind(|n| !n.starts_with('.') && site_dir.join(n).join(CERT_FILE).is_file()))
}

/// A host name, optionally `*.` first: letters, digits, `_`, `-`, `.`,
/// not starting or ending with `.`/`-`, no `..`. It becomes a path of the
/// manifest, which agents refuse when it leaves the manifest's folder.
pub fn is_site_name(s: &str) -> bool {
    let body = s.strip_prefix("*.").unwrap_or(s);
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    !body.is_empty()
        && !body.contains("..")
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && edge_ok(body.chars().next())
        && edge_ok(body.chars().next_back())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_names_are_host_names() {
        for ok in ["www.example.com", "*.w.test", "a", "a_b.test", "x-1.test"] {
            assert!(is_site_name(ok), "{ok}");
        }
        for bad in [
            "", ".a", "a.", "a..b", "-a", "a/b", "..", "*.", "a b", "*.*.a",
        ] {
            assert!(!is_site_name(bad), "{bad}");
        }
    }
}
