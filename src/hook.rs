//! `certswap deploy-hook`: the last step of a renewal by certbot or
//! acme.sh. Reads the renewed files from the environment the client gives
//! its hook, finds the configured sites the certificate belongs to, and
//! installs + verifies it on all of them as ONE batch ([`crate::batch`]):
//! one config test and one reload for every site a SAN certificate covers,
//! each site still proven and reported on its own, with the per-site rule
//! of `install` (a site its environment refuses is an error, exit 2).
//!
//! What the clients export (checked against their sources):
//!
//! | client | hook | variables |
//! |---|---|---|
//! | certbot | `--deploy-hook CMD`, once per renewed lineage | `RENEWED_LINEAGE` (the `live/NAME` dir with `fullchain.pem`, `privkey.pem`), `RENEWED_DOMAINS` (space-separated) |
//! | acme.sh | `--reloadcmd CMD` (`_installcert`, run in the domain dir) | `CERT_PATH` (leaf, `DOMAIN.cer`), `CERT_KEY_PATH`, `CA_CERT_PATH` (`ca.cer`, intermediates), `CERT_FULLCHAIN_PATH` (`fullchain.cer`), `Le_Domain` (the main domain only) |
//!
//! A site belongs to the renewal when the renewed leaf covers the site's
//! name (its SANs, wildcards included), or the client named the site's name
//! among the renewed domains (then a certificate that does not cover it is
//! rejected by the rules of `install`, with the reason, instead of being
//! skipped in silence). No site → an error naming the domains, exit 2,
//! nothing changed.
//!
//! Re-runs are safe: a site that already has the renewed certificate and
//! serves it ends "already installed and served" (exit 0, nothing written,
//! no reload), so the hook can be retried after a partial failure.

use std::path::PathBuf;

use crate::batch::{self, Item};
use crate::bundle::{self, BundleError, Files};
use crate::cert::CertInfo;
use crate::config::{Config, Site};
use crate::install::{Env, InstallError};
use crate::report::Outcome;

/// Which ACME client handed over the renewal (defined with the config's
/// sources, below this module).
pub use crate::config::Client;

/// The renewed files and names, as the client's environment gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    pub client: Client,
    /// Leaf, or leaf followed by its chain.
    pub cert: PathBuf,
    /// Separate intermediates (acme.sh without a full chain file).
    pub chain: Option<PathBuf>,
    pub key: PathBuf,
    /// Lowercased, without a trailing dot; may be empty (then the leaf's
    /// names are used in messages).
    pub domains: Vec<String>,
}

impl Renewal {
    /// The renewed files, as the engine takes them.
    pub fn files(&self) -> Files {
        Files {
            cert: self.cert.clone(),
            key: Some(self.key.clone()),
            chain: self.chain.clone(),
        }
    }
}

/// Why the hook could not start an install (exit 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    /// Neither client's variables are set.
    #[error(
        "deploy-hook found neither certbot's RENEWED_LINEAGE nor acme.sh's CERT_PATH/CERT_FULLCHAIN_PATH in its environment; \
         run it as `certbot renew --deploy-hook \"certswap deploy-hook\"` or `acme.sh --install-cert -d DOMAIN --reloadcmd \"certswap deploy-hook\"`"
    )]
    NoRenewal,
    /// The client's variables are there, but not all that are needed.
    #[error(
        "deploy-hook: {client} set {have} but not {missing}; cannot tell which key belongs to the certificate"
    )]
    Incomplete {
        client: Client,
        have: &'static str,
        missing: &'static str,
    },
    /// The renewed certificate file is unreadable.
    #[error("deploy-hook: the renewed certificate from {client}: {source}")]
    Cert {
        client: Client,
        source: Box<BundleError>,
    },
    /// No configured site is covered by the renewed certificate.
    #[error(
        "deploy-hook: the renewed certificate for {domains} ({client}) belongs to no site of {config} \
         (sites: {known}); nothing was changed"
    )]
    NoSite {
        client: Client,
        domains: String,
        config: PathBuf,
        known: String,
    },
    /// An install stopped before changing anything (lock held, server not
    /// answering, ...); `others` says how the other sites of this renewal ended.
    #[error("deploy-hook: installing on {site}: {source}{others}")]
    Install {
        site: String,
        source: Box<InstallError>,
        others: String,
    },
}

impl Renewal {
    /// Read certbot's or acme.sh's hook variables through `vars` (certbot's
    /// win when both are set). Empty values count as unset.
    pub fn from_env(vars: &dyn Fn(&str) -> Option<String>) -> Result<Renewal, HookError> {
        let var = |k: &str| vars(k).filter(|v| !v.trim().is_empty());

        if let Some(lineage) = var("RENEWED_LINEAGE") {
            let lineage = PathBuf::from(lineage);
            return Ok(Renewal {
                client: Client::Certbot,
                cert: lineage.join("fullchain.pem"),
                chain: None,
                key: lineage.join("privkey.pem"),
                domains: domain_list(&var("RENEWED_DOMAINS").unwrap_or_default()),
            });
        }

        let fullchain = var("CERT_FULLCHAIN_PATH");
        let leaf = var("CERT_PATH");
        if fullchain.is_none() && leaf.is_none() {
            return Err(HookError::NoRenewal);
        }
        let Some(key) = var("CERT_KEY_PATH") else {
            return Err(HookError::Incomplete {
                client: Client::AcmeSh,
                have: if fullchain.is_some() {
                    "CERT_FULLCHAIN_PATH"
                } else {
                    "CERT_PATH"
                },
                missing: "CERT_KEY_PATH",
            });
        };
        // The full chain file when there is one; else the leaf and the
        // intermediates of `ca.cer`, which `install` puts back together.
        let (cert, chain) = match (fullchain, leaf) {
            (Some(full), _) => (PathBuf::from(full), None),
            (None, Some(leaf)) => (PathBuf::from(leaf), var("CA_CERT_PATH").map(PathBuf::from)),
            (None, None) => return Err(HookError::NoRenewal),
        };
        Ok(Renewal {
            client: Client::AcmeSh,
            cert,
            chain,
            key: PathBuf::from(key),
            domains: domain_list(&var("Le_Domain").unwrap_or_default()),
        })
    }
}

/// Install the renewal described by the environment `vars` on every site
/// it belongs to. One outcome per site, in config order; the caller prints
/// them and exits non-zero unless all are verified or already installed
/// and served (so the ACME client reports the failure).
pub fn deploy(
    env: &Env<'_>,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Outcome>, HookError> {
    deploy_with(env, vars, false)
}

/// [`deploy`] with `force` passed to every install, as `install --force`
/// (`certswap deploy-hook --force`). Running the hook again with the
/// lineage that is installed and served is a success without --force:
/// each site ends "already installed and served", nothing written, no
/// reload.
pub fn deploy_with(
    env: &Env<'_>,
    vars: &dyn Fn(&str) -> Option<String>,
    force: bool,
) -> Result<Vec<Outcome>, HookError> {
    let renewal = Renewal::from_env(vars)?;
    let cert_err = |source| HookError::Cert {
        client: renewal.client,
        source: Box::new(source),
    };
    let leaf = bundle::read_leaf(&renewal.cert).map_err(cert_err)?;

    let hint = crate::matcher::Hint::Domains(&renewal.domains);
    let Ok(sites) = crate::matcher::sites(env.config, hint, Some(&leaf)) else {
        return Err(no_site(env.config, &renewal, &leaf));
    };

    for site in &sites {
        tracing::info!(
            client = %renewal.client,
            site = %site.name,
            cert = %describe(&renewal),
            "deploy-hook: installing the renewed certificate"
        );
    }
    let items: Vec<Item<'_>> = sites
        .iter()
        .map(|site| Item {
            site,
            files: renewal.files(),
        })
        .collect();
    // One run for every site: a failure of the host (lock held, a repair
    // that failed, ...) is every site's failure.
    let results = match batch::install_each(env, &items, force) {
        Ok(results) => results,
        Err(e) => {
            let why = e.to_string();
            for site in &sites {
                record_failure(env, &renewal, &leaf, site, why.clone());
            }
            return Err(HookError::Install {
                site: sites[0].name.clone(),
                source: Box::new(e),
                others: String::new(),
            });
        }
    };

    let mut outcomes: Vec<Outcome> = Vec::with_capacity(sites.len());
    let mut failed: Option<(String, InstallError)> = None;
    for (site, result) in sites.iter().zip(results) {
        // One site's environment error does not keep the others from their
        // renewal; it is reported (exit 2) with how the others ended.
        note_result(env, &renewal, &leaf, site, &result);
        match result {
            Ok(out) => outcomes.push(out),
            Err(e) if failed.is_none() => failed = Some((site.name.clone(), e)),
            Err(e) => tracing::error!(site = %site.name, "deploy-hook: {e}"),
        }
    }
    match failed {
        None => Ok(outcomes),
        Some((site, source)) => Err(HookError::Install {
            site,
            source: Box::new(source),
            others: summary(&outcomes),
        }),
    }
}

/// The last deploy-hook run for one site that failed on its environment
/// (config test, reload, probe, lock: rolled back or exit 2 — the failures
/// that must be retried; a rejected bundle writes nothing), kept in
/// `state_dir/hook/SITE.json` until an install of the site succeeds: `status` shows
/// it as the reason a site is waiting, and names the client's store to
/// look in even when no certbot/acme.sh source is configured.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HookFailure {
    pub site: String,
    /// RFC 3339, UTC.
    pub at: String,
    pub client: Client,
    /// `RENEWED_LINEAGE` (certbot) or the domain dir (acme.sh).
    pub dir: PathBuf,
    /// SHA-256 of the leaf the hook was given.
    pub leaf_sha256: String,
    /// The sentence the hook printed for this site.
    pub reason: String,
}

impl HookFailure {
    /// The client's store the lineage lives in: certbot's config dir
    /// (`CONFIG/live/NAME` → `CONFIG`), acme.sh's home (`HOME/DOMAIN`).
    pub fn store(&self) -> Option<(Client, PathBuf)> {
        let up = match self.client {
            Client::Certbot => self.dir.parent()?.parent()?,
            Client::AcmeSh => self.dir.parent()?,
        };
        Some((self.client, up.to_path_buf()))
    }
}

/// `state_dir/hook/SITE.json` (site names are file-name safe: config.rs).
fn failure_path(state_dir: &std::path::Path, site: &str) -> PathBuf {
    state_dir.join("hook").join(format!("{site}.json"))
}

/// The recorded failure of `site`, if any (unreadable = none).
pub fn read_failure(state_dir: &std::path::Path, site: &str) -> Option<HookFailure> {
    let bytes = crate::owner::read_trusted(
        "hook failure record",
        &failure_path(state_dir, site),
        64 * 1024,
    )
    .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The recorded failures of the sites named `sites`, in that order: one
/// listing of the record directory, then a read of each record in it,
/// instead of an open per site (10,000 failed opens on a 10,000-site host
/// without a record, a tenth of `status`).
pub fn read_failures<'a>(
    state_dir: &std::path::Path,
    sites: impl Iterator<Item = &'a str>,
) -> Vec<HookFailure> {
    let dir = state_dir.join("hook");
    let present: std::collections::HashSet<std::ffi::OsString> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.filter_map(|e| Some(e.ok()?.file_name())).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        // Not listable (but perhaps searchable): the records one by one.
        Err(_) => return sites.filter_map(|s| read_failure(state_dir, s)).collect(),
    };
    if present.is_empty() {
        return Vec::new();
    }
    sites
        .filter(|s| present.contains(std::ffi::OsStr::new(&format!("{s}.json"))))
        .filter_map(|s| read_failure(state_dir, s))
        .collect()
}

/// Forget `site`'s failure (a later install of it succeeded).
pub fn clear_failure(state_dir: &std::path::Path, site: &str) {
    let path = failure_path(state_dir, site);
    if path.exists()
        && let Err(e) = crate::fsio::durable_remove(&path)
    {
        tracing::warn!(site, "cannot remove {}: {e}", path.display());
    }
}

/// Record the failure or clear the old one after an install of the hook.
fn note_result(
    env: &Env<'_>,
    renewal: &Renewal,
    leaf: &CertInfo,
    site: &Site,
    result: &Result<Outcome, InstallError>,
) {
    let state_dir = &env.config.state_dir;
    let reason = match result {
        Ok(out) if out.result.exit_code() == 0 => {
            clear_failure(state_dir, &site.name);
            return;
        }
        // A rejected bundle changes no byte, the state dir included
        // (invariant 1); certbot has the reason from the hook's exit 1.
        Ok(out) if out.result == crate::report::ResultKind::Rejected => return,
        Ok(out) => out
            .error
            .clone()
            .unwrap_or_else(|| "the certificate was not installed".into()),
        Err(e) => e.to_string(),
    };
    record_failure(env, renewal, leaf, site, reason);
}

/// Write `state_dir/hook/SITE.json` for a failure the hook must be retried for.
fn record_failure(env: &Env<'_>, renewal: &Renewal, leaf: &CertInfo, site: &Site, reason: String) {
    // The renewal is the installed certificate (refused as not proven
    // served, say): nothing is waiting, so there is nothing to record, and
    // the refusal's "nothing was changed" holds for the state dir too.
    if crate::bundle::read_leaf(&site.cert).is_ok_and(|c| c.sha256 == leaf.sha256) {
        return;
    }
    let state_dir = &env.config.state_dir;
    let record = HookFailure {
        site: site.name.clone(),
        at: crate::cert::rfc3339(time::OffsetDateTime::now_utc()),
        client: renewal.client,
        dir: crate::fsio::parent_of(&renewal.cert),
        leaf_sha256: leaf.sha256.clone(),
        reason,
    };
    let dir = state_dir.join("hook");
    let written = crate::fsio::mkdir_private_all(&dir).and_then(|()| {
        let bytes = serde_json::to_vec_pretty(&record).map_err(std::io::Error::other)?;
        crate::fsio::write_atomic(
            &failure_path(state_dir, &site.name),
            &bytes,
            crate::fsio::Perms::own(0o600),
        )
    });
    if let Err(e) = written {
        tracing::error!(site = %site.name, "cannot record the failed deploy in {}: {e}", dir.display());
    }
}

fn no_site(config: &Config, renewal: &Renewal, leaf: &CertInfo) -> HookError {
    let domains = if renewal.domains.is_empty() {
        &leaf.names
    } else {
        &renewal.domains
    };
    HookError::NoSite {
        client: renewal.client,
        domains: domains.join(", "),
        config: config.path.clone(),
        known: if config.sites.is_empty() {
            "none".into()
        } else {
            config
                .sites
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        },
    }
}

/// "; other sites of this renewal: a verified, b rejected" (or nothing).
fn summary(outcomes: &[Outcome]) -> String {
    if outcomes.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = outcomes
        .iter()
        .map(|o| {
            let kind = serde_json::to_value(o.result)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            format!("{} {kind}", o.site)
        })
        .collect();
    format!("; other sites of this renewal: {}", parts.join(", "))
}

/// `RENEWED_DOMAINS` / `Le_Domain` → names (whitespace or commas between).
fn domain_list(s: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in s.split(|c: char| c.is_whitespace() || c == ',') {
        let d = normalize(d);
        if !d.is_empty() && !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// The path a renewal's certificate is read from, for messages.
pub fn describe(r: &Renewal) -> String {
    match &r.chain {
        Some(chain) => format!("{} + {}", r.cert.display(), chain.display()),
        None => r.cert.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;
    use crate::cert::testpki;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn failures_of_many_sites_are_read_from_one_listing() {
        let state = tempfile::tempdir().expect("tempdir");
        let names = ["a.test", "b.test", "c.test", "d.test"];
        // No record directory: nothing, without an open per site.
        assert!(read_failures(state.path(), names.iter().copied()).is_empty());
        let dir = state.path().join("hook");
        crate::fsio::mkdir_private_all(&dir).expect("mkdir");
        assert!(read_failures(state.path(), names.iter().copied()).is_empty());
        for site in ["c.test", "a.test"] {
            let record = HookFailure {
                site: site.into(),
                at: "2027-01-01T11:00:00Z".into(),
                client: Client::Certbot,
                dir: format!("/etc/letsencrypt/live/{site}").into(),
                leaf_sha256: "ab".repeat(32),
                reason: format!("{site}: nginx config test failed"),
            };
            let bytes = serde_json::to_vec_pretty(&record).expect("json");
            crate::fsio::write_atomic(
                &failure_path(state.path(), site),
                &bytes,
                crate::fsio::Perms::own(0o600),
            )
            .expect("write");
        }
        // Not a record of a configured site: ignored as before.
        std::fs::write(dir.join("other.test.json"), b"{}").expect("write");
        let got = read_failures(state.path(), names.iter().copied());
        let sites: Vec<&str> = got.iter().map(|f| f.site.as_str()).collect();
        assert_eq!(sites, ["a.test", "c.test"], "in the order of the names");
        let one_by_one: Vec<HookFailure> = names
            .iter()
            .filter_map(|s| read_failure(state.path(), s))
            .collect();
        assert_eq!(got, one_by_one);
    }

    #[test]
    fn certbot_lineage_and_domains() {
        let vars = env_of(&[
            ("RENEWED_LINEAGE", "/etc/letsencrypt/live/example.com"),
            (
                "RENEWED_DOMAINS",
                "example.com  WWW.Example.com. example.com",
            ),
        ]);
        let r = Renewal::from_env(&vars).expect("certbot");
        assert_eq!(r.client, Client::Certbot);
        assert_eq!(
            r.cert,
            PathBuf::from("/etc/letsencrypt/live/example.com/fullchain.pem")
        );
        assert_eq!(
            r.key,
            PathBuf::from("/etc/letsencrypt/live/example.com/privkey.pem")
        );
        assert_eq!(r.chain, None);
        assert_eq!(r.domains, vec!["example.com", "www.example.com"]);
    }

    #[test]
    fn certbot_without_domains_still_works() {
        let vars = env_of(&[("RENEWED_LINEAGE", "/l/x"), ("RENEWED_DOMAINS", "")]);
        let r = Renewal::from_env(&vars).expect("certbot");
        assert!(r.domains.is_empty());
    }

    const ACME: &[(&str, &str)] = &[
        (
            "CERT_PATH",
            "/root/.acme.sh/example.com_ecc/example.com.cer",
        ),
        (
            "CERT_KEY_PATH",
            "/root/.acme.sh/example.com_ecc/example.com.key",
        ),
        ("CA_CERT_PATH", "/root/.acme.sh/example.com_ecc/ca.cer"),
        (
            "CERT_FULLCHAIN_PATH",
            "/root/.acme.sh/example.com_ecc/fullchain.cer",
        ),
        ("Le_Domain", "example.com"),
    ];

    #[test]
    fn acme_sh_prefers_the_full_chain() {
        let r = Renewal::from_env(&env_of(ACME)).expect("acme.sh");
        assert_eq!(r.client, Client::AcmeSh);
        assert_eq!(
            r.cert,
            PathBuf::from("/root/.acme.sh/example.com_ecc/fullchain.cer")
        );
        assert_eq!(r.chain, None);
        assert_eq!(
            r.key,
            PathBuf::from("/root/.acme.sh/example.com_ecc/example.com.key")
        );
        assert_eq!(r.domains, vec!["example.com"]);
    }

    #[test]
    fn acme_sh_leaf_plus_ca_without_full_chain() {
        let vars: Vec<(&str, &str)> = ACME
            .iter()
            .copied()
            .filter(|(k, _)| *k != "CERT_FULLCHAIN_PATH")
            .collect();
        let r = Renewal::from_env(&env_of(&vars)).expect("acme.sh");
        assert_eq!(
            r.cert,
            PathBuf::from("/root/.acme.sh/example.com_ecc/example.com.cer")
        );
        assert_eq!(
            r.chain,
            Some(PathBuf::from("/root/.acme.sh/example.com_ecc/ca.cer"))
        );
        assert!(describe(&r).ends_with("example.com.cer + /root/.acme.sh/example.com_ecc/ca.cer"));
    }

    #[test]
    fn certbot_wins_when_both_are_set() {
        let mut vars: Vec<(&str, &str)> = ACME.to_vec();
        vars.push(("RENEWED_LINEAGE", "/etc/letsencrypt/live/a"));
        let r = Renewal::from_env(&env_of(&vars)).expect("both");
        assert_eq!(r.client, Client::Certbot);
    }

    #[test]
    fn nothing_set_names_both_clients() {
        let e = Renewal::from_env(&env_of(&[("CERT_PATH", "  ")])).expect_err("none");
        let msg = e.to_string();
        assert!(matches!(e, HookError::NoRenewal), "{msg}");
        assert!(msg.contains("RENEWED_LINEAGE"), "{msg}");
        assert!(msg.contains("CERT_PATH"), "{msg}");
    }

    #[test]
    fn acme_sh_without_key_is_named() {
        let e = Renewal::from_env(&env_of(&[("CERT_FULLCHAIN_PATH", "/a/fullchain.cer")]))
            .expect_err("no key");
        assert!(e.to_string().contains("CERT_KEY_PATH"), "{e}");
    }

    fn config(sites: &[&str]) -> Config {
        let mut t = String::from("state_dir = \"/tmp/st\"\n[server]\nkind = \"nginx\"\n");
        for s in sites {
            t.push_str(&format!(
                "[[site]]\nname = \"{s}\"\ncert = \"/etc/ssl/{n}.pem\"\nkey = \"/etc/ssl/{n}.key\"\n\
                 endpoints = [\"probe.test@127.0.0.1:443\"]\n",
                n = s.replace('*', "_")
            ));
        }
        Config::parse(&t, Path::new("/etc/certswap/certswap.toml")).expect("config")
    }

    fn leaf(names: &[&str]) -> CertInfo {
        let ca = testpki::root("hook test root");
        testpki::sign_leaf(&testpki::leaf_params(names), &testpki::p256(), &ca)
    }

    #[test]
    fn no_site_names_domains_config_and_sites() {
        let cfg = config(&["www.example.com"]);
        let r = Renewal {
            client: Client::Certbot,
            cert: "/l/fullchain.pem".into(),
            chain: None,
            key: "/l/privkey.pem".into(),
            domains: vec![],
        };
        let msg = no_site(&cfg, &r, &leaf(&["a.test", "b.test"])).to_string();
        assert!(msg.contains("a.test, b.test"), "{msg}");
        assert!(msg.contains("/etc/certswap/certswap.toml"), "{msg}");
        assert!(msg.contains("www.example.com"), "{msg}");
        assert!(msg.contains("nothing was changed"), "{msg}");
    }
}
