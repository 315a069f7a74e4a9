//! The ACME clients' own stores as sources: certbot's lineages
//! (`CONFIG/live/NAME/{cert,chain,fullchain,privkey}.pem`, symlinks into
//! `CONFIG/archive/NAME/*N.pem`) and acme.sh's domain directories
//! (`HOME/DOMAIN[_ecc]/{DOMAIN.cer, DOMAIN.key, ca.cer, fullchain.cer}`).
//! What the client renewed is installed by the agent even when the deploy
//! hook failed, was never configured, or the host was down; `status` reads
//! the same to show a site as *waiting*.
//!
//! One look at a store:
//! 1. the store dir (and every dir above it) must be root's and writable
//!    by nobody else ([`owner::trusted_dir`]);
//! 2. certbot: `live/NAME` and `archive/NAME` are trusted like the store;
//!    each `live/NAME` link must resolve to a file directly inside
//!    `archive/NAME`, and `fullchain` and `privkey` must be the same
//!    version N (else certbot is moving the links: looked at again on the
//!    next pass); acme.sh: the domain dir is trusted, its files are real
//!    files (no symlink is followed);
//! 3. the leaf is read (size-limited, on the open descriptor) and matched
//!    to sites by the deploy hook's rule ([`crate::matcher::covered`]);
//! 4. a site is given the newest lineage whose leaf ends later than the
//!    installed one: a lineage already installed costs a read, no install;
//! 5. only then is the key read (0600: [`owner::read_secret`]), checked
//!    against the leaf, and both written under fixed names into the pass's
//!    work dir, so the install reads exactly the bytes that were checked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::bundle::{self, BundleError, MAX_FILE_BYTES};
use crate::cert::CertInfo;
use crate::config::{AcmeSource, Config, Site, SourceConfig};
use crate::hook::Client;
use crate::owner::{self, OwnerError};
use crate::source::{Candidate, WorkDir, write_part};

/// Why one lineage (or the whole store) cannot be used now.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    /// An owner, mode, symlink or size check failed.
    #[error("{0}")]
    Owner(#[from] OwnerError),
    /// The store or a lineage dir cannot be listed.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A `live/` link leaves the lineage's own archive dir.
    #[error(
        "{link} points to {target}, outside the lineage's archive {archive}: not certbot's layout, not used"
    )]
    Outside {
        link: PathBuf,
        target: PathBuf,
        archive: PathBuf,
    },
    /// The certificate or key does not parse.
    #[error("{0}")]
    Bundle(#[from] BundleError),
    /// Key and certificate of the lineage are of different versions or do
    /// not match: the client is writing them; looked at again next pass.
    #[error(
        "{lineage}: {why}; the ACME client may be writing it, looked at again on the next pass"
    )]
    InProgress { lineage: String, why: String },
    /// The pass's work dir cannot take the copies.
    #[error("cannot copy {lineage} into the work dir: {source}")]
    Work {
        lineage: String,
        source: std::io::Error,
    },
}

/// One lineage / domain dir whose leaf was read.
#[derive(Debug, Clone)]
pub struct Lineage {
    pub client: Client,
    /// `live/NAME` or `DOMAIN_ecc`: how a person knows it, for messages.
    pub label: String,
    /// The full chain (or leaf) file actually read.
    pub cert: PathBuf,
    /// Intermediates in a separate file (acme.sh without `fullchain.cer`).
    pub chain: Option<PathBuf>,
    pub key: PathBuf,
    pub leaf: CertInfo,
    cert_bytes: Vec<u8>,
}

/// Every lineage of the store `src`. Err: the store itself is unusable;
/// a lineage that is not is an `Err` in the list, the others still count.
pub fn scan(src: &AcmeSource) -> Result<Vec<Result<Lineage, AcmeError>>, AcmeError> {
    scan_store(src.client, &src.path)
}

fn scan_store(client: Client, dir: &Path) -> Result<Vec<Result<Lineage, AcmeError>>, AcmeError> {
    let what = match client {
        Client::Certbot => "certbot config dir",
        Client::AcmeSh => "acme.sh home",
    };
    owner::trusted_dir(what, dir)?;
    let list = match client {
        Client::Certbot => dir.join("live"),
        Client::AcmeSh => dir.to_path_buf(),
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AcmeError::Io { path, source }
    };
    let mut names: Vec<String> = Vec::new();
    let entries = match std::fs::read_dir(&list) {
        Ok(e) => e,
        // certbot before its first certificate has no live/ yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && client == Client::Certbot => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(io(&list)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(&list))?;
        // Directories only (certbot's README, acme.sh's script and logs are
        // files); a symlinked directory is not followed.
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        match entry.file_name().into_string() {
            Ok(name) if is_dir && !name.starts_with('.') => names.push(name),
            _ => {}
        }
    }
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let found = match client {
            Client::Certbot => certbot_lineage(dir, &name).map(Some),
            Client::AcmeSh => acmesh_domain(dir, &name),
        };
        match found {
            Ok(Some(l)) => out.push(Ok(l)),
            Ok(None) => {}
            Err(e) => out.push(Err(e)),
        }
    }
    Ok(out)
}

/// `live/NAME/FILE` → its target, which must be inside `archive/NAME`.
fn resolve_in_archive(live: &Path, file: &str, archive: &Path) -> Result<PathBuf, AcmeError> {
    let link = live.join(file);
    let target = std::fs::canonicalize(&link).map_err(|source| AcmeError::Io {
        path: link.clone(),
        source,
    })?;
    if target.parent() != Some(archive) {
        return Err(AcmeError::Outside {
            link,
            target,
            archive: archive.to_path_buf(),
        });
    }
    Ok(target)
}

/// `fullchain12.pem` → 12.
fn version_of(path: &Path, stem: &str) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix(stem)?
        .strip_suffix(".pem")?
        .parse()
        .ok()
}

fn certbot_lineage(config_dir: &Path, name: &str) -> Result<Lineage, AcmeError> {
    let label = format!("live/{name}");
    let live = config_dir.join("live").join(name);
    let archive_link = config_dir.join("archive").join(name);
    // Both: whoever could write live/NAME could re-point its links.
    owner::trusted_dir("certbot live dir", &live)?;
    owner::trusted_dir("certbot archive dir", &archive_link)?;
    let archive = std::fs::canonicalize(&archive_link).map_err(|source| AcmeError::Io {
        path: archive_link.clone(),
        source,
    })?;
    let cert = resolve_in_archive(&live, "fullchain.pem", &archive)?;
    let key = resolve_in_archive(&live, "privkey.pem", &archive)?;
    let (vc, vk) = (version_of(&cert, "fullchain"), version_of(&key, "privkey"));
    if vc.is_none() || vc != vk {
        return Err(AcmeError::InProgress {
            lineage: label,
            why: format!(
                "fullchain.pem is {} but privkey.pem is {}",
                cert.display(),
                key.display()
            ),
        });
    }
    read_leaf(Client::Certbot, label, cert, None, key)
}

/// `HOME/DOMAIN[_ecc]`; None for acme.sh's own dirs (`ca`, `dnsapi`, …)
/// that hold no `DOMAIN.cer`.
fn acmesh_domain(home: &Path, dir_name: &str) -> Result<Option<Lineage>, AcmeError> {
    let domain = dir_name.strip_suffix("_ecc").unwrap_or(dir_name);
    let dir = home.join(dir_name);
    let leaf_file = dir.join(format!("{domain}.cer"));
    let full = dir.join("fullchain.cer");
    if std::fs::symlink_metadata(&leaf_file).is_err() && std::fs::symlink_metadata(&full).is_err() {
        return Ok(None);
    }
    owner::trusted_dir("acme.sh domain dir", &dir)?;
    let key = dir.join(format!("{domain}.key"));
    let (cert, chain) = if std::fs::symlink_metadata(&full).is_ok() {
        (full, None)
    } else {
        let ca = dir.join("ca.cer");
        let chain = std::fs::symlink_metadata(&ca).is_ok().then_some(ca);
        (leaf_file, chain)
    };
    read_leaf(Client::AcmeSh, dir_name.to_string(), cert, chain, key).map(Some)
}

fn read_leaf(
    client: Client,
    label: String,
    cert: PathBuf,
    chain: Option<PathBuf>,
    key: PathBuf,
) -> Result<Lineage, AcmeError> {
    let what = match client {
        Client::Certbot => "certbot certificate",
        Client::AcmeSh => "acme.sh certificate",
    };
    let cert_bytes = owner::read_trusted(what, &cert, MAX_FILE_BYTES)?;
    let leaf = bundle::parse_certs_bytes(&cert, &cert_bytes)?
        .into_iter()
        .next()
        .ok_or_else(|| BundleError::NoCertificate { path: cert.clone() })?;
    Ok(Lineage {
        client,
        label,
        cert,
        chain,
        key,
        leaf,
        cert_bytes,
    })
}

/// A lineage that holds a newer certificate than the one installed on `site`.
#[derive(Debug, Clone)]
pub struct Newer<'a> {
    pub site: &'a Site,
    pub lineage: Lineage,
}

/// For every site, the newest of `lineages` that belongs to it (the hook's
/// rule, [`crate::matcher::covered`]) and ends later than the installed leaf (any, when the installed
/// one cannot be read). Config order.
pub fn newer_for_sites<'a>(cfg: &'a Config, lineages: &[Lineage]) -> Vec<Newer<'a>> {
    let mut out: Vec<Newer<'a>> = Vec::new();
    // Site name → its entry in `out`: thousands of lineages on big hosts.
    let mut at: HashMap<&str, usize> = HashMap::new();
    for l in lineages {
        for site in crate::matcher::covered(cfg, &l.leaf, &[]) {
            let installed = installed_like(site, &l.leaf);
            let newer = match &installed {
                Some(i) => i.sha256 != l.leaf.sha256 && l.leaf.not_after > i.not_after,
                None => true,
            };
            if !newer {
                continue;
            }
            match at.get(site.name.as_str()).map(|&i| &mut out[i]) {
                Some(n) if n.lineage.leaf.not_after >= l.leaf.not_after => {}
                Some(n) => n.lineage = l.clone(),
                None => {
                    at.insert(&site.name, out.len());
                    out.push(Newer {
                        site,
                        lineage: l.clone(),
                    });
                }
            }
        }
    }
    let position: HashMap<&str, usize> = cfg
        .sites
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    out.sort_by_key(|n| position.get(n.site.name.as_str()).copied());
    out
}

/// The installed leaf a renewal `like` would replace: on a
/// dual-certificate site the pair of its key type (each pair is renewed by
/// its own lineage; the site's `cert` when no pair has that type), else
/// the site's `cert`.
fn installed_like(site: &Site, like: &CertInfo) -> Option<CertInfo> {
    let first = bundle::read_leaf(&site.cert).ok();
    if site.pairs.is_empty() {
        return first;
    }
    let family = crate::probe::KeyFamily::of(&like.key_kind);
    crate::matcher::pair_site(site, family)
        .ok()
        .and_then(|pair| bundle::read_leaf(&pair.cert).ok())
        .or(first)
}

/// Step 5: the key is read and checked, cert and key copied under fixed
/// names into `work`.
pub fn candidate(n: &Newer<'_>, work: &WorkDir) -> Result<Candidate, AcmeError> {
    let l = &n.lineage;
    let what = match l.client {
        Client::Certbot => "certbot private key",
        Client::AcmeSh => "acme.sh private key",
    };
    let key_bytes = owner::read_secret(what, &l.key, MAX_FILE_BYTES)?;
    let key = bundle::parse_key_bytes(&l.key, &key_bytes)?;
    if key.spki_der != l.leaf.spki_der {
        return Err(AcmeError::InProgress {
            lineage: l.label.clone(),
            why: format!(
                "{} does not belong to the certificate in {}",
                l.key.display(),
                l.cert.display()
            ),
        });
    }
    let chain_bytes = match &l.chain {
        Some(c) => Some(owner::read_trusted(
            "acme.sh chain file",
            c,
            MAX_FILE_BYTES,
        )?),
        None => None,
    };
    let work_err = |source| AcmeError::Work {
        lineage: l.label.clone(),
        source,
    };
    let dir = work.bundle_dir().map_err(work_err)?;
    let cert = write_part(&dir, "cert.pem", &l.cert_bytes).map_err(work_err)?;
    let keyp = write_part(&dir, "key.pem", &key_bytes).map_err(work_err)?;
    let chain = match chain_bytes {
        Some(b) => Some(write_part(&dir, "chain.pem", &b).map_err(work_err)?),
        None => None,
    };
    let mut display = vec![
        (cert.clone(), l.cert.display().to_string()),
        (keyp.clone(), l.key.display().to_string()),
    ];
    if let (Some(w), Some(c)) = (&chain, &l.chain) {
        display.push((w.clone(), c.display().to_string()));
    }
    Ok(Candidate {
        site: n.site.name.clone(),
        cert,
        key: Some(keyp),
        chain,
        leaf_sha256: Some(l.leaf.sha256.clone()),
        display,
    })
}

/// A site whose ACME client holds a newer certificate than the installed
/// one, and the last deploy-hook failure for it (if any).
#[derive(Debug, Clone)]
pub struct Waiting {
    pub site: String,
    /// `certbot live/NAME` / `acme.sh DOMAIN_ecc`.
    pub source: String,
    pub sha256: String,
    pub not_after: time::OffsetDateTime,
    pub failure: Option<crate::hook::HookFailure>,
}

/// Every site that is waiting: a configured certbot/acme.sh source, or the
/// store a failed deploy hook named, holds a newer certificate than the
/// installed one. Reads certificates only, never a key; a store that
/// cannot be read counts as holding nothing.
pub fn waiting(cfg: &Config) -> Vec<Waiting> {
    let mut stores: Vec<(Client, PathBuf)> = cfg
        .sources
        .iter()
        .filter_map(|s| match s {
            SourceConfig::Acme(a) => Some((a.client, a.path.clone())),
            _ => None,
        })
        .collect();
    let failures =
        crate::hook::read_failures(&cfg.state_dir, cfg.sites.iter().map(|s| s.name.as_str()));
    for f in &failures {
        if let Some(store) = f.store()
            && !stores.contains(&store)
        {
            stores.push(store);
        }
    }
    let mut lineages = Vec::new();
    for (client, dir) in &stores {
        if let Ok(list) = scan_store(*client, dir) {
            lineages.extend(list.into_iter().flatten());
        }
    }
    newer_for_sites(cfg, &lineages)
        .into_iter()
        .map(|n| Waiting {
            site: n.site.name.clone(),
            source: format!("{} {}", n.lineage.client, n.lineage.label),
            sha256: n.lineage.leaf.sha256.clone(),
            not_after: n.lineage.leaf.not_after,
            failure: failures.iter().find(|f| f.site == n.site.name).cloned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;
    use crate::cert::testpki;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// A leaf for `names` and its key, as PEM.
    fn pair(names: &[&str]) -> (String, String) {
        let ca = testpki::root("acme source test root");
        let key = testpki::p256();
        let leaf = testpki::sign_leaf(&testpki::leaf_params(names), &key, &ca);
        (leaf.to_pem(), key.serialize_pem())
    }

    /// certbot's layout: `archive/NAME/{fullchain,privkey}N.pem` and
    /// `live/NAME/*.pem` relative symlinks into it, keys 0600.
    fn certbot_dir(name: &str, version: u32) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let config = tmp.path().join("letsencrypt");
        let (archive, live) = (
            config.join("archive").join(name),
            config.join("live").join(name),
        );
        std::fs::create_dir_all(&archive).expect("mkdir archive");
        std::fs::create_dir_all(&live).expect("mkdir live");
        let (cert, key) = pair(&[name]);
        std::fs::write(archive.join(format!("fullchain{version}.pem")), cert).expect("cert");
        let k = archive.join(format!("privkey{version}.pem"));
        std::fs::write(&k, key).expect("key");
        chmod(&k, 0o600);
        for f in ["fullchain", "privkey"] {
            symlink(
                format!("../../archive/{name}/{f}{version}.pem"),
                live.join(format!("{f}.pem")),
            )
            .expect("symlink");
        }
        std::fs::write(config.join("live/README"), "certbot's").expect("README");
        (tmp, config)
    }

    fn source(client: Client, path: &Path) -> AcmeSource {
        AcmeSource {
            name: "test".into(),
            client,
            path: path.to_path_buf(),
        }
    }

    fn only(list: Vec<Result<Lineage, AcmeError>>) -> Result<Lineage, AcmeError> {
        let mut list = list;
        assert_eq!(list.len(), 1, "{list:?}");
        list.remove(0)
    }

    #[test]
    fn a_certbot_lineage_is_read_through_its_links_into_its_archive() {
        let (_tmp, config) = certbot_dir("a.test", 3);
        let l = only(scan(&source(Client::Certbot, &config)).expect("scan")).expect("lineage");
        assert_eq!(l.label, "live/a.test");
        assert!(l.cert.ends_with("archive/a.test/fullchain3.pem"), "{l:?}");
        assert!(l.leaf.covers("a.test"));
    }

    #[test]
    fn a_live_link_that_leaves_its_archive_is_refused() {
        let (tmp, config) = certbot_dir("a.test", 1);
        let elsewhere = tmp.path().join("elsewhere.pem");
        std::fs::copy(config.join("archive/a.test/fullchain1.pem"), &elsewhere).expect("copy");
        let link = config.join("live/a.test/fullchain.pem");
        std::fs::remove_file(&link).expect("rm");
        symlink(&elsewhere, &link).expect("symlink");
        let e = only(scan(&source(Client::Certbot, &config)).expect("scan")).expect_err("outside");
        assert!(matches!(e, AcmeError::Outside { .. }), "{e}");
        assert!(
            e.to_string().contains("outside the lineage's archive"),
            "{e}"
        );
    }

    #[test]
    fn links_of_two_versions_are_a_renewal_in_progress() {
        let (_tmp, config) = certbot_dir("a.test", 1);
        let archive = config.join("archive/a.test");
        std::fs::copy(
            archive.join("fullchain1.pem"),
            archive.join("fullchain2.pem"),
        )
        .expect("cp");
        let link = config.join("live/a.test/fullchain.pem");
        std::fs::remove_file(&link).expect("rm");
        symlink("../../archive/a.test/fullchain2.pem", &link).expect("symlink");
        let e = only(scan(&source(Client::Certbot, &config)).expect("scan")).expect_err("moving");
        assert!(matches!(e, AcmeError::InProgress { .. }), "{e}");
    }

    #[test]
    fn a_store_others_can_write_is_not_read() {
        let (_tmp, config) = certbot_dir("a.test", 1);
        chmod(&config, 0o777);
        let e = scan(&source(Client::Certbot, &config)).expect_err("world-writable");
        assert!(e.to_string().contains("chmod go-w"), "{e}");
    }

    #[test]
    fn a_live_dir_others_can_write_is_not_read() {
        let (_tmp, config) = certbot_dir("a.test", 1);
        chmod(&config.join("live/a.test"), 0o777);
        let e = only(scan(&source(Client::Certbot, &config)).expect("scan")).expect_err("0777");
        assert!(e.to_string().contains("certbot live dir"), "{e}");
    }

    fn one_site(name: &str, state: &Path, ssl: &Path) -> Config {
        let t = format!(
            "state_dir = {state:?}\n[server]\nkind = \"nginx\"\n[[site]]\nname = \"{name}\"\n\
             cert = {c:?}\nkey = {k:?}\nendpoints = [\"127.0.0.1:443\"]\n",
            c = ssl.join("site.pem"),
            k = ssl.join("site.key"),
        );
        Config::parse(&t, Path::new("/x.toml")).expect("config")
    }

    #[test]
    fn a_key_others_can_read_is_not_copied() {
        let (tmp, config) = certbot_dir("a.test", 1);
        let key = config.join("archive/a.test/privkey1.pem");
        chmod(&key, 0o644);
        let cfg = one_site("a.test", &tmp.path().join("state"), tmp.path());
        let l = only(scan(&source(Client::Certbot, &config)).expect("scan")).expect("lineage");
        let newer = newer_for_sites(&cfg, std::slice::from_ref(&l));
        assert_eq!(
            newer.len(),
            1,
            "nothing installed yet: the lineage is newer"
        );
        let work = WorkDir::create(&tmp.path().join("state")).expect("work dir");
        let e = candidate(&newer[0], &work).expect_err("readable key");
        assert!(e.to_string().contains("readable by everyone"), "{e}");
        chmod(&key, 0o600);
        let c = candidate(&newer[0], &work).expect("0600 key");
        assert_eq!(c.site, "a.test");
        assert_eq!(c.leaf_sha256.as_deref(), Some(l.leaf.sha256.as_str()));
    }

    #[test]
    fn an_installed_lineage_is_not_newer() {
        let (tmp, config) = certbot_dir("a.test", 1);
        let cfg = one_site("a.test", &tmp.path().join("state"), tmp.path());
        std::fs::copy(
            config.join("archive/a.test/fullchain1.pem"),
            tmp.path().join("site.pem"),
        )
        .expect("install");
        let l = only(scan(&source(Client::Certbot, &config)).expect("scan")).expect("lineage");
        assert!(newer_for_sites(&cfg, &[l]).is_empty());
    }

    #[test]
    fn acme_sh_domain_dirs_are_read_and_its_own_dirs_skipped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = tmp.path().join(".acme.sh");
        let dom = home.join("b.test_ecc");
        std::fs::create_dir_all(&dom).expect("mkdir");
        std::fs::create_dir_all(home.join("ca")).expect("mkdir ca");
        std::fs::write(home.join("acme.sh.log"), "log").expect("log");
        let (cert, key) = pair(&["b.test"]);
        std::fs::write(dom.join("fullchain.cer"), &cert).expect("cert");
        std::fs::write(dom.join("b.test.cer"), &cert).expect("cert");
        std::fs::write(dom.join("b.test.key"), key).expect("key");
        chmod(&dom.join("b.test.key"), 0o600);
        let l = only(scan(&source(Client::AcmeSh, &home)).expect("scan")).expect("domain");
        assert_eq!(l.label, "b.test_ecc");
        assert!(l.cert.ends_with("fullchain.cer"));
        assert!(l.key.ends_with("b.test.key"));

        // A symlinked certificate file is not followed.
        std::fs::remove_file(dom.join("fullchain.cer")).expect("rm");
        symlink(tmp.path().join("x.pem"), dom.join("fullchain.cer")).expect("symlink");
        let e = only(scan(&source(Client::AcmeSh, &home)).expect("scan")).expect_err("symlink");
        assert!(e.to_string().contains("symlink"), "{e}");
    }
}
