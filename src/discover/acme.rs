//! Is a certificate path one an ACME client owns? certbot's
//! `live/NAME/*.pem` symlinks and acme.sh's domain directories cannot be
//! swapped in place by certswap (a symlink is refused; acme.sh rewrites its
//! files itself on every renewal), so `discover` marks such sites and
//! `certswap adopt` moves them onto certswap's own copies.
//!
//! The rule looks at the file system, not at a fixed root, so a lineage
//! anywhere (`--config-dir` of certbot, a test's temp dir) is found:
//!
//! - **certbot**: `ROOT/live/NAME/FILE.pem` is a symlink whose target,
//!   resolved against its directory, is `ROOT/archive/NAME/FILEN.pem`
//!   (same ROOT and NAME, the same file stem followed by a version number):
//!   how certbot's `storage.py` lays out every lineage
//!   (`live/NAME/fullchain.pem -> ../../archive/NAME/fullchain1.pem`).
//! - **acme.sh**: a regular file in a domain directory `DIR` (named
//!   `DOMAIN` or `DOMAIN_ecc`) that holds acme.sh's `DOMAIN.conf`, the file
//!   being one of `fullchain.cer`, `ca.cer`, `DOMAIN.cer`, `DOMAIN.key`.
//! - Paths under the default roots (`/etc/letsencrypt/live/`,
//!   `/root/.acme.sh/`) are marked even when the files cannot be read.

use std::path::{Component, Path, PathBuf};

/// Which ACME client owns a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AcmeClient {
    Certbot,
    #[serde(rename = "acme.sh")]
    AcmeSh,
}

/// A configured path that belongs to an ACME client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmePath {
    pub client: AcmeClient,
    /// The path as configured.
    pub path: PathBuf,
    /// certbot: the archive file the `live/` link points at now.
    pub target: Option<PathBuf>,
    /// certbot: `ROOT/live/NAME`; acme.sh: the domain directory.
    pub lineage: PathBuf,
}

impl AcmePath {
    /// Why in-place swaps do not fit this path, in a few words.
    pub fn why(&self) -> String {
        match (self.client, &self.target) {
            (AcmeClient::Certbot, Some(t)) => format!(
                "certbot's live/ symlink ({} -> {}): in-place swaps cannot replace it",
                self.path.display(),
                t.display()
            ),
            (AcmeClient::Certbot, None) => format!(
                "in certbot's live/ directory ({}): in-place swaps cannot replace certbot's symlinks",
                self.path.display()
            ),
            (AcmeClient::AcmeSh, _) => format!(
                "in acme.sh's domain directory ({}): acme.sh rewrites it in place on every renewal",
                self.path.display()
            ),
        }
    }
}

/// The ACME client that owns `path`, if any (see the module comment).
pub fn classify(path: &Path) -> Option<AcmePath> {
    // One lstat for both clients' rules: a batch asks this of every target.
    let meta = std::fs::symlink_metadata(path).ok();
    meta.as_ref()
        .and_then(|m| certbot(path, m).or_else(|| acme_sh(path, m)))
        .or_else(|| by_default_root(path))
}

fn certbot(path: &Path, meta: &std::fs::Metadata) -> Option<AcmePath> {
    if !meta.file_type().is_symlink() {
        return None;
    }
    let dir = path.parent()?;
    let name = dir.file_name()?;
    let live = dir.parent()?;
    if live.file_name()? != "live" {
        return None;
    }
    let root = live.parent()?;
    let link = std::fs::read_link(path).ok()?;
    let target = normalize(&dir.join(&link));
    if target.parent()? != root.join("archive").join(name) {
        return None;
    }
    // fullchain.pem -> fullchain7.pem
    let stem = path.file_stem()?.to_str()?;
    let ext = path.extension().and_then(|e| e.to_str());
    let t_stem = target.file_stem()?.to_str()?;
    let t_ext = target.extension().and_then(|e| e.to_str());
    let number = t_stem.strip_prefix(stem)?;
    if ext != t_ext || number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(AcmePath {
        client: AcmeClient::Certbot,
        path: path.to_path_buf(),
        target: Some(target),
        lineage: dir.to_path_buf(),
    })
}

fn acme_sh(path: &Path, meta: &std::fs::Metadata) -> Option<AcmePath> {
    if !meta.is_file() {
        return None;
    }
    let dir = path.parent()?;
    let dir_name = dir.file_name()?.to_str()?;
    let domain = dir_name.strip_suffix("_ecc").unwrap_or(dir_name);
    if !dir.join(format!("{domain}.conf")).is_file() {
        return None;
    }
    let file = path.file_name()?.to_str()?;
    let known = [
        "fullchain.cer".to_string(),
        "ca.cer".to_string(),
        format!("{domain}.cer"),
        format!("{domain}.key"),
    ];
    if !known.iter().any(|k| k == file) {
        return None;
    }
    Some(AcmePath {
        client: AcmeClient::AcmeSh,
        path: path.to_path_buf(),
        target: None,
        lineage: dir.to_path_buf(),
    })
}

fn by_default_root(path: &Path) -> Option<AcmePath> {
    let (client, root) = [
        (AcmeClient::Certbot, "/etc/letsencrypt/live"),
        (AcmeClient::AcmeSh, "/root/.acme.sh"),
    ]
    .into_iter()
    .find(|(_, root)| path.starts_with(root))?;
    let rest = path.strip_prefix(root).ok()?;
    let lineage = Path::new(root).join(rest.components().next()?);
    Some(AcmePath {
        client,
        path: path.to_path_buf(),
        target: None,
        lineage,
    })
}

/// `a/b/../c` → `a/c`, without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_certbot_lineage_anywhere_is_found_and_lookalikes_are_not() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().join("le");
        std::fs::create_dir_all(root.join("live/a.test")).expect("mkdir");
        std::fs::create_dir_all(root.join("archive/a.test")).expect("mkdir");
        std::fs::write(root.join("archive/a.test/fullchain3.pem"), "x").expect("write");
        let live = root.join("live/a.test/fullchain.pem");
        symlink("../../archive/a.test/fullchain3.pem", &live).expect("link");
        let got = classify(&live).expect("a lineage");
        assert_eq!(got.client, AcmeClient::Certbot);
        assert_eq!(
            got.target.as_deref(),
            Some(root.join("archive/a.test/fullchain3.pem").as_path())
        );
        assert!(got.why().contains("live/ symlink"), "{}", got.why());

        // A link elsewhere, a link to another name's archive, a plain file.
        let other = root.join("live/a.test/privkey.pem");
        symlink("/etc/ssl/privkey.pem", &other).expect("link");
        assert_eq!(classify(&other), None);
        let wrong = root.join("live/a.test/chain.pem");
        symlink("../../archive/b.test/chain1.pem", &wrong).expect("link");
        assert_eq!(classify(&wrong), None);
        let plain = d.path().join("plain.pem");
        std::fs::write(&plain, "x").expect("write");
        assert_eq!(classify(&plain), None);
        // The default root is marked even when nothing can be read.
        let def = classify(Path::new("/etc/letsencrypt/live/x.test/fullchain.pem")).expect("x");
        assert_eq!(def.lineage, Path::new("/etc/letsencrypt/live/x.test"));
    }

    #[test]
    fn an_acme_sh_domain_directory_is_found() {
        let d = tempfile::tempdir().expect("tempdir");
        let dom = d.path().join("a.test_ecc");
        std::fs::create_dir_all(&dom).expect("mkdir");
        for f in ["a.test.conf", "fullchain.cer", "a.test.key", "notes.txt"] {
            std::fs::write(dom.join(f), "x").expect("write");
        }
        assert_eq!(
            classify(&dom.join("fullchain.cer")).map(|a| a.client),
            Some(AcmeClient::AcmeSh)
        );
        assert!(classify(&dom.join("a.test.key")).is_some());
        assert_eq!(classify(&dom.join("notes.txt")), None);
    }
}
