//! Opening the host: what a command that changes or probes sites needs
//! besides the config file — the endpoints a site leaves out of the
//! config, discovered from its server's own config (`nginx -T` /
//! `apache2ctl -S`), then the web server, the prober and the store.
//! `Config::load` runs no program; [`load`] does, for the CLI's commands
//! that install, roll back, adopt or probe and for the agent (at start and
//! on SIGHUP) alike.

use crate::config::{Config, ConfigError, ServerConfig, ServerKind, Site};
use crate::discover;
use crate::install::Env;
use crate::probe::{Ending, KeyFamily, ProbeError, Prober, Probers, Target};
use crate::server::{self, WebServer};
use crate::store::{Store, StoreError};
use crate::trust::TrustStore;

/// Why the host could not be opened (exit 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an [`Env`] borrows: the server, prober and store of a config.
pub struct Host {
    server: Box<dyn WebServer>,
    probers: Probers,
    store: Store,
}

/// The config at `path` as a command that opens the host sees it: loaded
/// ([`Config::load`]), with the endpoints it leaves out discovered.
pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
    let mut cfg = Config::load(path)?;
    discover_endpoints(&mut cfg)?;
    Ok(cfg)
}

impl Host {
    /// Open the server, the prober and the store of `cfg` (from [`load`]).
    pub fn open(cfg: &Config) -> Result<Host, HostError> {
        Ok(Host {
            server: server::from_config(&cfg.server),
            probers: probers(cfg)?,
            store: Store::open(&cfg.state_dir)?,
        })
    }

    /// The environment of one run, borrowing the host and `cfg`.
    pub fn env<'a>(&'a self, cfg: &'a Config) -> Env<'a> {
        Env {
            config: cfg,
            server: self.server.as_ref(),
            probers: &self.probers,
            store: &self.store,
        }
    }
}

/// A prober per key type for `cfg` ([`prober`]), built once: what a run
/// gets a slot's prober from ([`Env::prober_for`]).
pub fn probers(cfg: &Config) -> Result<Probers, ProbeError> {
    probers_after(cfg, None)
}

/// [`probers`] built again for the next agent pass: the anchors are read
/// again, and the trust verdicts of `previous` that its pass used are
/// carried over when they are the same anchors ([`TrustStore::carry_over`]).
pub fn probers_after(cfg: &Config, previous: Option<&Probers>) -> Result<Probers, ProbeError> {
    Probers::new(&prober(cfg, previous)?)
}

/// The prober a config asks for: `probe.ca_file` alone when set, else
/// the public roots plus `[trust] extra_roots`. On a host with an HAProxy
/// its connections end politely ([`Ending::Polite`]): HAProxy logs every
/// other ending as a failed handshake.
fn prober(cfg: &Config, previous: Option<&Probers>) -> Result<Prober, ProbeError> {
    let (trust, path) = match cfg.probe.ca_file.as_deref() {
        Some(ca) => (TrustStore::only(ca), ca.display().to_string()),
        None => (
            TrustStore::public(&cfg.extra_roots),
            "trust.extra_roots".to_string(),
        ),
    };
    let mut trust = trust.map_err(|e| ProbeError::CaFile {
        path,
        reason: e.to_string(),
    })?;
    if let Some(p) = previous {
        trust.carry_over(p.of(KeyFamily::Any).trust());
    }
    let prober = Prober::with_trust(trust, cfg.probe.timeout)?;
    if cfg.servers.iter().any(|s| s.kind == ServerKind::Haproxy) {
        return prober.with_ending(Ending::Polite);
    }
    Ok(prober)
}

/// Sites without `endpoints` get the ones their server's own config
/// gives them (`certswap discover`): matched by site name or any of
/// its names. Runs a server's config dump only when one of its sites
/// needs it.
pub fn discover_endpoints(cfg: &mut Config) -> Result<(), ConfigError> {
    for server in cfg.servers.clone() {
        discover_endpoints_of(cfg, &server)?;
    }
    Ok(())
}

/// [`discover_endpoints`] for the sites of `server`.
fn discover_endpoints_of(cfg: &mut Config, server: &ServerConfig) -> Result<(), ConfigError> {
    let mine = |s: &Site| s.server == server.name;
    if cfg
        .sites
        .iter()
        .filter(|s| mine(s))
        .all(|s| !s.endpoints.is_empty())
    {
        return Ok(());
    }
    let found = discover::discover(server).map_err(|e| ConfigError::Invalid {
        path: cfg.path.clone(),
        key: "site.endpoints".into(),
        message: format!("is missing for some site and cannot be discovered: {e}"),
    })?;
    for (i, site) in cfg.sites.iter_mut().enumerate() {
        if !site.endpoints.is_empty() || !mine(site) {
            continue;
        }
        let names = site.all_names();
        let hit = found
            .iter()
            .find(|d| names.iter().any(|n| *n == d.name || d.names.contains(n)));
        let Some(hit) = hit.filter(|d| !d.endpoints.is_empty()) else {
            return Err(ConfigError::Invalid {
                path: cfg.path.clone(),
                key: format!("site[{i}].endpoints"),
                message: format!(
                    "is missing and no TLS server block / vhost for {} was found in {}; list them: endpoints = [\"127.0.0.1:443\"]",
                    site.name,
                    server.config.display()
                ),
            });
        };
        for e in &hit.endpoints {
            let t = Target::parse(e, Some(&site.name)).map_err(|err| ConfigError::Invalid {
                path: cfg.path.clone(),
                key: format!("site[{i}].endpoints"),
                message: format!("discovered a bad endpoint {e:?}: {err}"),
            })?;
            site.endpoints.push(t);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::KeyFamily;

    fn config(kinds: &[&str]) -> Config {
        let mut t = String::new();
        for (i, k) in kinds.iter().enumerate() {
            t.push_str(&format!("[[server]]\nname = \"s{i}\"\nkind = \"{k}\"\n"));
        }
        Config::parse(&t, std::path::Path::new("/etc/certswap/test.toml")).expect("config")
    }

    #[test]
    fn a_host_with_an_haproxy_probes_politely() {
        for (kinds, ending) in [
            (&["nginx"][..], Ending::Abrupt),
            (&["apache", "nginx"][..], Ending::Abrupt),
            (&["haproxy"][..], Ending::Polite),
            (&["nginx", "haproxy"][..], Ending::Polite),
        ] {
            let probers = probers(&config(kinds)).expect("probers");
            for family in [KeyFamily::Any, KeyFamily::Rsa, KeyFamily::Ecdsa] {
                assert_eq!(probers.of(family).ending(), ending, "{kinds:?}");
            }
        }
    }
}
