//! The TOML configuration: schema (serde), defaults, and the checks that
//! turn a bad file into one sentence naming the key and the file. The rest
//! of certswap sees only the validated [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::probe::{KeyFamily, Target};

mod names;
mod split;

pub use names::{host_form, stem_form};

/// Where the config is read from when neither `--config` nor
/// `CERTSWAP_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/certswap/certswap.toml";
/// A config of thousands of sites is well under this.
const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// Why a config file is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: `{key}` {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// Another user could have written the config file (see
    /// [`crate::owner`]).
    #[error(transparent)]
    Untrusted(crate::owner::OwnerError),
    #[error("{path}: no site named `{name}` (sites: {known})")]
    UnknownSite {
        path: PathBuf,
        name: String,
        known: String,
    },
}

/// Which web server the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    Nginx,
    Apache,
    /// HAProxy 2.2+ in master-worker mode (`-W`/`-Ws`): certificates are
    /// replaced in memory over its runtime API (`stats_socket`).
    Haproxy,
}

/// How a site's files are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Rename new files over the configured paths.
    InPlace,
    /// The configured paths are symlinks into a versioned directory flipped
    /// by one rename (not built yet: refused with a clear message).
    Managed,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<PathBuf>,
    /// `[server]` (one table) or `[[server]]` (named entries): read by
    /// [`resolve_servers`], which gives each form its own messages.
    server: toml::Value,
    #[serde(default)]
    probe: RawProbe,
    #[serde(default, rename = "site")]
    sites: Vec<RawSite>,
    #[serde(default)]
    agent: RawAgent,
    #[serde(default, rename = "source")]
    sources: Vec<RawSource>,
    #[serde(default)]
    trust: RawTrust,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    #[serde(default)]
    extra_roots: Vec<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    /// `[[server]]` entries: what each site's `server` names.
    name: Option<String>,
    kind: ServerKind,
    binary: Option<PathBuf>,
    config: Option<PathBuf>,
    prefix: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    reload_command: Option<Vec<String>>,
    /// haproxy: the admin-level stats socket (`stats socket … level admin`).
    stats_socket: Option<PathBuf>,
    /// haproxy: the master CLI socket (`-S`), for `reload`.
    master_socket: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    timeout: Option<String>,
    deadline: Option<String>,
    consecutive: Option<u32>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    name: String,
    #[serde(default)]
    names: Vec<String>,
    cert: PathBuf,
    key: PathBuf,
    chain: Option<PathBuf>,
    #[serde(default)]
    endpoints: Vec<String>,
    mode: Option<Mode>,
    /// Further cert/key pairs of the same vhost (dual RSA + ECDSA).
    #[serde(default)]
    pair: Vec<RawPair>,
    /// The `[[server]]` entry that serves the site (default: the only one).
    server: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPair {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    interval: Option<String>,
    metrics_listen: Option<String>,
    host_id: Option<String>,
    fix_drift: Option<bool>,
}

/// Which kind of `[[source]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SourceKind {
    Inbox,
    Http,
    Certbot,
    #[serde(rename = "acme.sh")]
    AcmeSh,
    #[serde(rename = "aliyun-cas")]
    AliyunCas,
    #[serde(rename = "tencent-ssl")]
    TencentSsl,
}

/// One `[[source]]` as written; the keys allowed depend on `kind`, checked
/// in [`resolve_sources`] so the message can name the key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    kind: SourceKind,
    name: Option<String>,
    // inbox
    path: Option<PathBuf>,
    debounce: Option<String>,
    // http
    url: Option<String>,
    ca_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    allow_insecure_http: Option<bool>,
    timeout: Option<String>,
    // aliyun-cas / tencent-ssl
    access_key_id: Option<String>,
    access_key_secret_file: Option<PathBuf>,
    secret_id: Option<String>,
    secret_key_file: Option<PathBuf>,
    endpoint: Option<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from, for messages.
    pub path: PathBuf,
    pub state_dir: PathBuf,
    /// The server the commands and the agent drive: the only one, or the
    /// one a config scoped by [`Config::for_server`] is about.
    pub server: ServerConfig,
    /// Every server of the host (`[server]`: one; `[[server]]`: each
    /// entry), in config order. `server` is one of them.
    pub servers: Vec<ServerConfig>,
    pub probe: ProbeConfig,
    pub sites: Vec<Site>,
    /// `[agent]`: the daemon's schedule and endpoints (`certswap run`).
    pub agent: AgentConfig,
    /// `[[source]]`: where the agent finds renewed bundles.
    pub sources: Vec<SourceConfig>,
    /// `[trust] extra_roots`: internal CAs trusted besides the public roots.
    pub extra_roots: Vec<PathBuf>,
    /// `sites` by name, built on the first lookup.
    names: names::Index,
}

/// `[agent]`.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Poll / rescan / expiry / drift period, jittered ±10% by the agent.
    pub interval: Duration,
    /// Where to serve Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// This host's id for rollout buckets; None = /etc/machine-id, else
    /// the hostname (resolved by the agent).
    pub host_id: Option<String>,
    /// When served ≠ on disk: reload and verify instead of only reporting.
    pub fix_drift: bool,
}

/// One `[[source]]`.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    Inbox(InboxSource),
    Http(HttpSource),
    /// `kind = "certbot"` or `kind = "acme.sh"`.
    Acme(AcmeSource),
    /// `kind = "aliyun-cas"` or `kind = "tencent-ssl"`.
    Cloud(CloudSource),
}

impl SourceConfig {
    /// The name used in logs and the `source` metric label.
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Inbox(s) => &s.name,
            SourceConfig::Http(s) => &s.name,
            SourceConfig::Acme(s) => &s.name,
            SourceConfig::Cloud(s) => &s.name,
        }
    }
}

/// `kind = "certbot"` (`path` = certbot's config dir, its `live/NAME`
/// lineages) or `kind = "acme.sh"` (`path` = acme.sh's home, its
/// `DOMAIN[_ecc]/` dirs): what the ACME client renewed, installed by the
/// agent even when the deploy hook failed or never ran.
#[derive(Debug, Clone)]
pub struct AcmeSource {
    pub name: String,
    pub client: Client,
    pub path: PathBuf,
}

/// Which certificate vendor a [`CloudSource`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// Alibaba Cloud Certificate Management Service (CAS).
    Aliyun,
    /// Tencent Cloud SSL certificates.
    Tencent,
}

impl Vendor {
    /// The `kind` as written in the config.
    pub fn kind(self) -> &'static str {
        match self {
            Vendor::Aliyun => "aliyun-cas",
            Vendor::Tencent => "tencent-ssl",
        }
    }
}

/// `kind = "aliyun-cas"` / `kind = "tencent-ssl"`: certificates issued in
/// the vendor's console, pulled through its API ([`crate::source::cloud`]).
#[derive(Debug, Clone)]
pub struct CloudSource {
    pub name: String,
    pub vendor: Vendor,
    /// `access_key_id` / `secret_id` (not a secret: shown in messages).
    pub key_id: String,
    /// `access_key_secret_file` / `secret_key_file`: root's, 0600.
    pub secret_file: PathBuf,
    /// `https://HOST[:PORT]/`.
    pub endpoint: reqwest::Url,
    pub ca_file: Option<PathBuf>,
    /// Bound on each request, body included.
    pub timeout: Duration,
}

/// Which ACME client renewed a certificate (a source's `kind`, the deploy
/// hook's caller). Here and not in `hook`, which uses the config: no
/// import cycle (issue 13); `hook::Client` names the same type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Client {
    #[serde(rename = "certbot")]
    Certbot,
    #[serde(rename = "acme.sh")]
    AcmeSh,
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Client::Certbot => "certbot",
            Client::AcmeSh => "acme.sh",
        })
    }
}

/// `kind = "inbox"`: a directory watched for bundles and vendor zips.
#[derive(Debug, Clone)]
pub struct InboxSource {
    pub name: String,
    pub path: PathBuf,
    /// A file is acted on only once nothing changed it for this long.
    pub debounce: Duration,
}

/// `kind = "http"`: a manifest (DESIGN.md) on an HTTPS host.
#[derive(Debug, Clone)]
pub struct HttpSource {
    pub name: String,
    pub url: String,
    /// Trust anchors instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Sent as `Authorization: Bearer <contents>`.
    pub token_file: Option<PathBuf>,
    /// mTLS client certificate and key (both or neither).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Allow `http://` (tests on loopback only).
    pub allow_insecure_http: bool,
    /// Bound on each request, body included.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The `[[server]]` entry's `name`; for a single `[server]` table its
    /// `name` if given, else the kind ("nginx").
    pub name: String,
    pub kind: ServerKind,
    pub binary: PathBuf,
    pub config: PathBuf,
    pub prefix: Option<PathBuf>,
    pub pid_file: PathBuf,
    pub reload_command: Option<Vec<String>>,
    /// haproxy only: the admin-level runtime API socket. Without it every
    /// install reloads.
    pub stats_socket: Option<PathBuf>,
    /// haproxy only: the master CLI socket; its `reload` is the fallback
    /// (else SIGUSR2 to the master, or `reload_command`).
    pub master_socket: Option<PathBuf>,
}

/// `probe.timeout` when the config gives none and the deadline is longer.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Bound on one connect + handshake (default: 5 s, or the deadline
    /// when that is shorter).
    pub timeout: Duration,
    /// Bound on the whole wait-until-served after a reload.
    pub deadline: Duration,
    /// Fresh handshakes in a row that must serve the new leaf.
    pub consecutive: u32,
    /// Trust anchors for the trust verdict instead of the system roots.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Site {
    /// Also the default SNI name and the state directory's name.
    pub name: String,
    /// Further names the site must keep serving.
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A separate chain file (apache `SSLCertificateChainFile` style).
    pub chain: Option<PathBuf>,
    pub endpoints: Vec<Target>,
    pub mode: Mode,
    /// `[[site.pair]]`: further (cert, key) pairs the vhost serves, e.g. an
    /// RSA pair beside an ECDSA one. An install replaces the pair whose key
    /// type matches the new certificate's.
    pub pairs: Vec<(PathBuf, PathBuf)>,
    /// Every cert/key slot of the site: (`cert`, `key`) first, then each
    /// pair, with its key type resolved once when the config is read.
    pub slots: Vec<Slot>,
    /// The name of the site's state under `state_dir` (journal, versions):
    /// the site name, or `NAME__rsa` / `NAME__ecdsa` for one pair of a
    /// dual-certificate site, so each pair keeps its own history.
    pub store_key: String,
    /// The name of the server that serves the site ([`ServerConfig::name`]).
    pub server: String,
    /// The key type a probe of this site asks for: `Any`, or the pair's
    /// type for one pair of a dual-certificate site (the server shows the
    /// leaf of the type the client's signature schemes allow).
    pub key_family: KeyFamily,
}

/// One cert/key slot of a site: the files the server reads for one of its
/// certificates, and that certificate's key type — what a probe of the
/// slot asks for, so the server shows this leaf and not its sibling's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Resolved once when the config is read, from the leaf `cert` holds:
    /// `Any` for a site with one slot (the server has only that leaf to
    /// show) and for a file that cannot be read.
    pub key_family: KeyFamily,
}

impl Site {
    /// The slot whose certificate has key type `family`.
    pub fn slot(&self, family: KeyFamily) -> Option<&Slot> {
        self.slots.iter().find(|s| s.key_family == family)
    }

    /// `name` followed by `names`: every name the new cert must cover.
    pub fn all_names(&self) -> Vec<String> {
        let mut all = vec![self.name.clone()];
        all.extend(self.names.iter().cloned());
        all
    }
}

impl Config {
    /// Read and validate the config at `path`. It says what root writes
    /// where, so it must be a regular file (not a symlink) that only root
    /// can change, in directories only root can change. Readable by others
    /// is fine: it holds no secret by design (secrets live in `*_file`s,
    /// checked where they are read).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = crate::owner::read_trusted("config file", path, MAX_CONFIG_BYTES).map_err(
            |e| match e {
                crate::owner::OwnerError::Io { source, .. } => ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                },
                other => ConfigError::Untrusted(other),
            },
        )?;
        let text = String::from_utf8(bytes).map_err(|_| ConfigError::Read {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "stream did not contain valid UTF-8",
            ),
        })?;
        // Runs no program: a site without `endpoints` gets them when a
        // command opens the host (`crate::host::discover_endpoints`).
        Config::parse(&text, path)
    }

    /// Validate config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = split::parse(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: one_line(&e),
        })?;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };

        let state_dir = raw
            .state_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/certswap"));
        if !state_dir.is_absolute() {
            return Err(invalid("state_dir", "must be an absolute path".into()));
        }

        let servers = resolve_servers(raw.server, &invalid)?;

        let duration = |key: &str, v: Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(s) => humantime::parse_duration(&s)
                .map_err(|e| invalid(key, format!("is not a duration like \"5s\": {e}"))),
        };
        let deadline = duration(
            "probe.deadline",
            raw.probe.deadline,
            Duration::from_secs(30),
        )?;
        // A handshake may not outlast the whole wait: without an explicit
        // timeout, a short deadline (`deadline = "4s"`) shortens it too.
        let probe = ProbeConfig {
            timeout: duration(
                "probe.timeout",
                raw.probe.timeout,
                DEFAULT_PROBE_TIMEOUT.min(deadline),
            )?,
            deadline,
            consecutive: raw.probe.consecutive.unwrap_or(3),
            ca_file: raw.probe.ca_file,
        };
        if probe.consecutive == 0 {
            return Err(invalid("probe.consecutive", "must be at least 1".into()));
        }
        if probe.timeout.is_zero() || probe.deadline < probe.timeout {
            return Err(invalid(
                "probe.deadline",
                "must be at least as long as probe.timeout, and both above zero".into(),
            ));
        }

        let mut sites: Vec<Site> = Vec::with_capacity(raw.sites.len());
        // The names seen so far: a set, because a scan of `sites` per site
        // is quadratic (a third of `status` at 10,000 sites).
        let mut names: std::collections::HashSet<String> =
            std::collections::HashSet::with_capacity(raw.sites.len());
        for (i, s) in raw.sites.into_iter().enumerate() {
            let key = |k: &str| format!("site[{i}].{k}");
            if let Err(why) = check_site_name(&s.name) {
                return Err(invalid(&key("name"), why));
            }
            if !names.insert(s.name.clone()) {
                return Err(invalid(
                    &key("name"),
                    format!("repeats the site name {:?}", s.name),
                ));
            }
            let pair_paths = s
                .pair
                .iter()
                .flat_map(|p| [("pair.cert", Some(&p.cert)), ("pair.key", Some(&p.key))]);
            for (k, p) in [
                ("cert", Some(&s.cert)),
                ("key", Some(&s.key)),
                ("chain", s.chain.as_ref()),
            ]
            .into_iter()
            .chain(pair_paths)
            {
                if let Some(p) = p
                    && !p.is_absolute()
                {
                    return Err(invalid(
                        &key(k),
                        format!("must be an absolute path, not {p:?}"),
                    ));
                }
            }
            // No endpoints: `host::discover_endpoints` finds them in the server's config.
            let mut endpoints = Vec::new();
            for e in &s.endpoints {
                let t = Target::parse(e, Some(&s.name)).map_err(|err| {
                    invalid(&key("endpoints"), format!("has a bad entry {e:?}: {err}"))
                })?;
                endpoints.push(t);
            }
            let server = match (&s.server, servers.as_slice()) {
                (Some(n), _) if servers.iter().any(|v| v.name == *n) => n.clone(),
                (Some(n), _) => {
                    return Err(invalid(
                        &key("server"),
                        format!(
                            "names no [[server]] entry: {n:?} (servers: {})",
                            server_names(&servers)
                        ),
                    ));
                }
                (None, [only]) => only.name.clone(),
                (None, _) => {
                    return Err(invalid(
                        &key("server"),
                        format!(
                            "is required when the host has several servers (servers: {})",
                            server_names(&servers)
                        ),
                    ));
                }
            };
            let pairs: Vec<(PathBuf, PathBuf)> =
                s.pair.into_iter().map(|p| (p.cert, p.key)).collect();
            let slots = slots_of(&s.cert, &s.key, &pairs);
            sites.push(Site {
                server,
                store_key: s.name.clone(),
                key_family: KeyFamily::Any,
                name: s.name,
                names: s.names.iter().map(|n| n.to_ascii_lowercase()).collect(),
                cert: s.cert,
                key: s.key,
                chain: s.chain,
                endpoints,
                mode: s.mode.unwrap_or(Mode::InPlace),
                pairs,
                slots,
            });
        }

        let agent = resolve_agent(raw.agent, &invalid)?;
        let sources = resolve_sources(raw.sources, &invalid)?;
        let extra_roots = raw.trust.extra_roots;
        if let Some(p) = extra_roots.iter().find(|p| !p.is_absolute()) {
            return Err(invalid(
                "trust.extra_roots",
                format!("must hold absolute paths, not {p:?}"),
            ));
        }

        Ok(Config {
            path: path.to_path_buf(),
            state_dir,
            server: servers[0].clone(),
            servers,
            probe,
            sites,
            agent,
            sources,
            extra_roots,
            names: names::Index::default(),
        })
    }

    /// This config scoped to one server: `server` is it and `sites` are
    /// its sites (one batch per server; the state dir, probe and sources
    /// stay shared). None for a name that is not a server.
    pub fn for_server(&self, name: &str) -> Option<Config> {
        let server = self.servers.iter().find(|s| s.name == name)?.clone();
        let mut scoped = self.clone();
        scoped.sites.retain(|s| s.server == server.name);
        scoped.server = server;
        Some(scoped)
    }

    /// [`Config::for_server`] for every server, in config order: the
    /// configs one agent pass runs a batch for each.
    pub fn per_server(&self) -> Vec<Config> {
        self.servers
            .iter()
            .filter_map(|s| self.for_server(&s.name))
            .collect()
    }

    /// The site called `name`, or an error listing the known ones.
    pub fn site(&self, name: &str) -> Result<&Site, ConfigError> {
        self.find_site(name)
            .ok_or_else(|| ConfigError::UnknownSite {
                path: self.path.clone(),
                name: name.to_string(),
                known: if self.sites.is_empty() {
                    "none".into()
                } else {
                    self.sites
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })
    }
}

/// The slots of a site with `cert`/`key` and further `pairs`, each key
/// type resolved here, once: a site with one slot has nothing to tell
/// apart (`Any`, no file read); a dual site's slot gets the key type of the
/// leaf its file holds now (`Any` when it cannot be read: then no bundle
/// matches that slot, and the error names its files).
fn slots_of(cert: &Path, key: &Path, pairs: &[(PathBuf, PathBuf)]) -> Vec<Slot> {
    let all = std::iter::once((cert.to_path_buf(), key.to_path_buf())).chain(pairs.iter().cloned());
    all.map(|(cert, key)| {
        let key_family = match pairs.is_empty() {
            true => KeyFamily::Any,
            false => crate::bundle::read_leaf(&cert)
                .map(|leaf| KeyFamily::of(&leaf.key_kind))
                .unwrap_or(KeyFamily::Any),
        };
        Slot {
            cert,
            key,
            key_family,
        }
    })
    .collect()
}

fn server_names(servers: &[ServerConfig]) -> String {
    servers
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `[server]` (one table, the contract since the start) or `[[server]]`
/// (named entries, at least one, names unique).
fn resolve_servers(
    value: toml::Value,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Vec<ServerConfig>, ConfigError> {
    let raw = |key: &str, v: toml::Value| -> Result<RawServer, ConfigError> {
        v.try_into::<RawServer>()
            .map_err(|e| invalid(key, e.message().trim().to_string()))
    };
    match value {
        toml::Value::Table(_) => {
            let server = resolve_server(raw("server", value)?, "server", &invalid)?;
            Ok(vec![server])
        }
        toml::Value::Array(entries) if !entries.is_empty() => {
            let mut out: Vec<ServerConfig> = Vec::with_capacity(entries.len());
            for (i, v) in entries.into_iter().enumerate() {
                let key = format!("server[{i}]");
                let r = raw(&key, v)?;
                let Some(name) = r.name.clone() else {
                    return Err(invalid(
                        &format!("{key}.name"),
                        "is required in a [[server]] entry (e.g. name = \"edge\")".into(),
                    ));
                };
                if let Err(why) = check_server_name(&name) {
                    return Err(invalid(&format!("{key}.name"), why));
                }
                if out.iter().any(|s| s.name == name) {
                    return Err(invalid(
                        &format!("{key}.name"),
                        format!("repeats the server name {name:?}"),
                    ));
                }
                out.push(resolve_server(r, &key, &invalid)?);
            }
            Ok(out)
        }
        _ => Err(invalid(
            "server",
            "must be a [server] table or [[server]] entries".into(),
        )),
    }
}

/// A server name: letters, digits, '-', '_' (it appears in messages and
/// site entries, never in paths).
fn check_server_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a server name: use letters, digits, '-' and '_'"
        ))
    }
}

fn resolve_server(
    raw: RawServer,
    table: &str,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<ServerConfig, ConfigError> {
    // Debian's package paths; RHEL users set them in the config.
    let (binary, config, pid_file) = match raw.kind {
        ServerKind::Nginx => ("/usr/sbin/nginx", "/etc/nginx/nginx.conf", "/run/nginx.pid"),
        ServerKind::Apache => (
            "/usr/sbin/apache2",
            "/etc/apache2/apache2.conf",
            "/run/apache2/apache2.pid",
        ),
        // Debian's unit: `haproxy -Ws -f $CONFIG -p /run/haproxy.pid`.
        ServerKind::Haproxy => (
            "/usr/sbin/haproxy",
            "/etc/haproxy/haproxy.cfg",
            "/run/haproxy.pid",
        ),
    };
    for (key, value) in [
        ("stats_socket", &raw.stats_socket),
        ("master_socket", &raw.master_socket),
    ] {
        let key = format!("{table}.{key}");
        match value {
            Some(_) if raw.kind != ServerKind::Haproxy => {
                return Err(invalid(&key, "is for kind = \"haproxy\" only".into()));
            }
            Some(p) if !p.is_absolute() => {
                return Err(invalid(
                    &key,
                    format!("must be an absolute path, not {p:?}"),
                ));
            }
            _ => {}
        }
    }
    if let Some(cmd) = &raw.reload_command
        && cmd.is_empty()
    {
        return Err(invalid(
            &format!("{table}.reload_command"),
            "must name a program, e.g. [\"systemctl\", \"reload\", \"nginx\"]".into(),
        ));
    }
    let name = match raw.name {
        Some(n) => {
            check_server_name(&n).map_err(|why| invalid(&format!("{table}.name"), why))?;
            n
        }
        None => kind_name(raw.kind).to_string(),
    };
    Ok(ServerConfig {
        name,
        kind: raw.kind,
        binary: raw.binary.unwrap_or_else(|| binary.into()),
        config: raw.config.unwrap_or_else(|| config.into()),
        prefix: raw.prefix,
        pid_file: raw.pid_file.unwrap_or_else(|| pid_file.into()),
        reload_command: raw.reload_command,
        stats_socket: raw.stats_socket,
        master_socket: raw.master_socket,
    })
}

/// The kind as the config spells it.
pub fn kind_name(kind: ServerKind) -> &'static str {
    match kind {
        ServerKind::Nginx => "nginx",
        ServerKind::Apache => "apache",
        ServerKind::Haproxy => "haproxy",
    }
}

fn parse_duration(
    key: &str,
    v: Option<String>,
    default: Duration,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(&s)
            .map_err(|e| invalid(key, format!("is not a duration like \"15m\": {e}"))),
    }
}

fn resolve_agent(
    raw: RawAgent,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<AgentConfig, ConfigError> {
    let interval = parse_duration(
        "agent.interval",
        raw.interval,
        Duration::from_secs(15 * 60),
        invalid,
    )?;
    if interval < Duration::from_secs(1) {
        return Err(invalid("agent.interval", "must be at least 1s".into()));
    }
    let metrics_listen = match raw.metrics_listen {
        None => None,
        Some(s) => Some(s.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "agent.metrics_listen",
                format!("{s:?} is not an address like \"127.0.0.1:9899\""),
            )
        })?),
    };
    if let Some(id) = &raw.host_id
        && (id.trim().is_empty() || id.chars().any(char::is_control))
    {
        return Err(invalid(
            "agent.host_id",
            "must be a non-empty name without control characters".into(),
        ));
    }
    Ok(AgentConfig {
        interval,
        metrics_listen,
        host_id: raw.host_id,
        fix_drift: raw.fix_drift.unwrap_or(false),
    })
}

fn resolve_sources(
    raw: Vec<RawSource>,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Vec<SourceConfig>, ConfigError> {
    let mut out: Vec<SourceConfig> = Vec::with_capacity(raw.len());
    for (i, s) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("source[{i}].{k}");
        let absolute = |k: &str, p: &Option<PathBuf>| match p {
            Some(p) if !p.is_absolute() => Err(invalid(
                &key(k),
                format!("must be an absolute path, not {p:?}"),
            )),
            _ => Ok(()),
        };
        let not_for = |k: &str, set: bool, kind: &str| {
            if set {
                Err(invalid(
                    &key(k),
                    format!("does not apply to kind = \"{kind}\""),
                ))
            } else {
                Ok(())
            }
        };
        let is_cloud = matches!(s.kind, SourceKind::AliyunCas | SourceKind::TencentSsl);
        if !is_cloud {
            let kind = match s.kind {
                SourceKind::Inbox => "inbox",
                SourceKind::Http => "http",
                SourceKind::Certbot => "certbot",
                _ => "acme.sh",
            };
            for (k, set) in [
                ("access_key_id", s.access_key_id.is_some()),
                ("access_key_secret_file", s.access_key_secret_file.is_some()),
                ("secret_id", s.secret_id.is_some()),
                ("secret_key_file", s.secret_key_file.is_some()),
                ("endpoint", s.endpoint.is_some()),
            ] {
                not_for(k, set, kind)?;
            }
        }
        let source = match s.kind {
            SourceKind::AliyunCas | SourceKind::TencentSsl => {
                let (vendor, id_key, file_key, default_host) = if s.kind == SourceKind::AliyunCas {
                    (
                        Vendor::Aliyun,
                        "access_key_id",
                        "access_key_secret_file",
                        "cas.aliyuncs.com",
                    )
                } else {
                    (
                        Vendor::Tencent,
                        "secret_id",
                        "secret_key_file",
                        "ssl.tencentcloudapi.com",
                    )
                };
                let kind = vendor.kind();
                let (id, file, other_id, other_file) = if vendor == Vendor::Aliyun {
                    (
                        s.access_key_id,
                        s.access_key_secret_file,
                        ("secret_id", s.secret_id.is_some()),
                        ("secret_key_file", s.secret_key_file.is_some()),
                    )
                } else {
                    (
                        s.secret_id,
                        s.secret_key_file,
                        ("access_key_id", s.access_key_id.is_some()),
                        ("access_key_secret_file", s.access_key_secret_file.is_some()),
                    )
                };
                for (k, set) in [
                    other_id,
                    other_file,
                    ("path", s.path.is_some()),
                    ("debounce", s.debounce.is_some()),
                    ("url", s.url.is_some()),
                    ("token_file", s.token_file.is_some()),
                    ("client_cert", s.client_cert.is_some()),
                    ("client_key", s.client_key.is_some()),
                    ("allow_insecure_http", s.allow_insecure_http.is_some()),
                ] {
                    not_for(k, set, kind)?;
                }
                let Some(key_id) = id.map(|i| i.trim().to_string()).filter(|i| !i.is_empty())
                else {
                    return Err(invalid(
                        &key(id_key),
                        format!("is missing: a {kind} source needs the key id"),
                    ));
                };
                let Some(secret_file) = file else {
                    return Err(invalid(
                        &key(file_key),
                        format!(
                            "is missing: a {kind} source reads its secret from a file (0600, root's)"
                        ),
                    ));
                };
                absolute(file_key, &Some(secret_file.clone()))?;
                absolute("ca_file", &s.ca_file)?;
                let ep = s.endpoint.unwrap_or_else(|| default_host.to_string());
                let ep_url = if ep.contains("://") {
                    ep.clone()
                } else {
                    format!("https://{ep}/")
                };
                let endpoint = match reqwest::Url::parse(&ep_url) {
                    Ok(u)
                        if u.scheme() == "https"
                            && u.host_str().is_some()
                            && u.query().is_none() =>
                    {
                        u
                    }
                    Ok(_) => {
                        return Err(invalid(
                            &key("endpoint"),
                            format!(
                                "{:?} is not a host or an https:// URL without a query",
                                crate::redact::url_str(&ep)
                            ),
                        ));
                    }
                    Err(e) => {
                        return Err(invalid(
                            &key("endpoint"),
                            format!(
                                "{:?} is not a host or a URL: {e}",
                                crate::redact::url_str(&ep)
                            ),
                        ));
                    }
                };
                let timeout =
                    parse_duration(&key("timeout"), s.timeout, Duration::from_secs(30), invalid)?;
                if timeout.is_zero() {
                    return Err(invalid(&key("timeout"), "must be above zero".into()));
                }
                SourceConfig::Cloud(CloudSource {
                    name: s.name.unwrap_or_else(|| format!("{kind}:{key_id}")),
                    vendor,
                    key_id,
                    secret_file,
                    endpoint,
                    ca_file: s.ca_file,
                    timeout,
                })
            }
            SourceKind::Certbot | SourceKind::AcmeSh => {
                let (client, default) = if s.kind == SourceKind::Certbot {
                    (Client::Certbot, "/etc/letsencrypt")
                } else {
                    (Client::AcmeSh, "/root/.acme.sh")
                };
                let kind = if s.kind == SourceKind::Certbot {
                    "certbot"
                } else {
                    "acme.sh"
                };
                for (k, set) in [
                    ("debounce", s.debounce.is_some()),
                    ("url", s.url.is_some()),
                    ("ca_file", s.ca_file.is_some()),
                    ("token_file", s.token_file.is_some()),
                    ("client_cert", s.client_cert.is_some()),
                    ("client_key", s.client_key.is_some()),
                    ("allow_insecure_http", s.allow_insecure_http.is_some()),
                    ("timeout", s.timeout.is_some()),
                ] {
                    not_for(k, set, kind)?;
                }
                absolute("path", &s.path)?;
                let path = s.path.unwrap_or_else(|| PathBuf::from(default));
                SourceConfig::Acme(AcmeSource {
                    name: s
                        .name
                        .unwrap_or_else(|| format!("{kind}:{}", path.display())),
                    client,
                    path,
                })
            }
            SourceKind::Inbox => {
                for (k, set) in [
                    ("url", s.url.is_some()),
                    ("ca_file", s.ca_file.is_some()),
                    ("token_file", s.token_file.is_some()),
                    ("client_cert", s.client_cert.is_some()),
                    ("client_key", s.client_key.is_some()),
                    ("allow_insecure_http", s.allow_insecure_http.is_some()),
                    ("timeout", s.timeout.is_some()),
                ] {
                    not_for(k, set, "inbox")?;
                }
                let Some(path) = s.path else {
                    return Err(invalid(
                        &key("path"),
                        "is missing: an inbox needs the directory to watch".into(),
                    ));
                };
                absolute("path", &Some(path.clone()))?;
                let debounce = parse_duration(
                    &key("debounce"),
                    s.debounce,
                    Duration::from_secs(2),
                    invalid,
                )?;
                SourceConfig::Inbox(InboxSource {
                    name: s
                        .name
                        .unwrap_or_else(|| format!("inbox:{}", path.display())),
                    path,
                    debounce,
                })
            }
            SourceKind::Http => {
                not_for("path", s.path.is_some(), "http")?;
                not_for("debounce", s.debounce.is_some(), "http")?;
                let Some(url) = s.url else {
                    return Err(invalid(
                        &key("url"),
                        "is missing: an http source needs the manifest URL".into(),
                    ));
                };
                let allow_insecure_http = s.allow_insecure_http.unwrap_or(false);
                let parsed = reqwest::Url::parse(&url).map_err(|e| {
                    invalid(
                        &key("url"),
                        format!("{:?} is not a URL: {e}", crate::redact::url_str(&url)),
                    )
                })?;
                match parsed.scheme() {
                    "https" => {}
                    "http" if allow_insecure_http => {}
                    "http" => {
                        return Err(invalid(
                            &key("url"),
                            format!(
                                "{:?} is not https (set allow_insecure_http = true only for tests on loopback)",
                                crate::redact::url(&parsed)
                            ),
                        ));
                    }
                    other => {
                        return Err(invalid(
                            &key("url"),
                            format!("has the scheme {other:?}; only https is supported"),
                        ));
                    }
                }
                if parsed.host_str().is_none() {
                    return Err(invalid(
                        &key("url"),
                        format!("{:?} names no host", crate::redact::url(&parsed)),
                    ));
                }
                for (k, p) in [
                    ("ca_file", &s.ca_file),
                    ("token_file", &s.token_file),
                    ("client_cert", &s.client_cert),
                    ("client_key", &s.client_key),
                ] {
                    absolute(k, p)?;
                }
                if s.client_cert.is_some() != s.client_key.is_some() {
                    return Err(invalid(
                        &key(if s.client_cert.is_some() {
                            "client_key"
                        } else {
                            "client_cert"
                        }),
                        "is missing: client_cert and client_key go together".into(),
                    ));
                }
                let timeout =
                    parse_duration(&key("timeout"), s.timeout, Duration::from_secs(30), invalid)?;
                if timeout.is_zero() {
                    return Err(invalid(&key("timeout"), "must be above zero".into()));
                }
                // The label drops user info and query: they may be secrets.
                let label = crate::redact::label(&parsed);
                SourceConfig::Http(HttpSource {
                    name: s.name.unwrap_or(label),
                    url,
                    ca_file: s.ca_file,
                    token_file: s.token_file,
                    client_cert: s.client_cert,
                    client_key: s.client_key,
                    allow_insecure_http,
                    timeout,
                })
            }
        };
        if out.iter().any(|o| o.name() == source.name()) {
            return Err(invalid(
                &key("name"),
                format!("repeats the source name {:?}", source.name()),
            ));
        }
        out.push(source);
    }
    Ok(out)
}

/// Site names become directory names under `state_dir` (invariant 8), so
/// only host-name characters and a leading `*.` wildcard are allowed.
pub fn check_site_name(name: &str) -> Result<(), String> {
    let body = name.strip_prefix("*.").unwrap_or(name);
    let ok = !body.is_empty()
        && name.len() <= 253
        && !body.starts_with('.')
        && !body.contains("..")
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a site name: use a host name (letters, digits, '.', '-', '_', optionally starting with \"*.\")"
        ))
    }
}

/// toml's errors span several lines with a source excerpt; keep the first
/// line plus the reason so the message stays one sentence.
fn one_line(e: &toml::de::Error) -> String {
    let mut msg = e.message().trim().to_string();
    if let Some(span) = e.span() {
        msg = format!("{msg} (at byte {})", span.start);
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config, ConfigError> {
        Config::parse(t, Path::new("/etc/certswap/test.toml"))
    }

    const MIN: &str = r#"
state_dir = "/tmp/st"
[server]
kind = "nginx"
[[site]]
name = "www.example.com"
cert = "/etc/ssl/a.pem"
key = "/etc/ssl/a.key"
endpoints = ["127.0.0.1:443", "alt.example.com@127.0.0.1:8443"]
"#;

    #[test]
    fn one_server_table_keeps_working_and_names_itself_after_its_kind() {
        let c = parse(MIN).expect("valid");
        assert_eq!(c.servers.len(), 1);
        assert_eq!(c.server.name, "nginx");
        assert_eq!(c.sites[0].server, "nginx");
        assert_eq!(c.per_server().len(), 1);
    }

    const TWO: &str = r#"
state_dir = "/tmp/st"
[[server]]
name = "edge"
kind = "haproxy"
stats_socket = "/run/haproxy-admin.sock"
[[server]]
name = "web"
kind = "nginx"
[[site]]
name = "a.example.com"
server = "edge"
cert = "/etc/haproxy/a.pem"
key = "/etc/haproxy/a.pem"
endpoints = ["127.0.0.1:443"]
[[site]]
name = "b.example.com"
server = "web"
cert = "/etc/ssl/b.pem"
key = "/etc/ssl/b.key"
endpoints = ["127.0.0.1:8443"]
"#;

    #[test]
    fn named_servers_each_get_their_sites() {
        let c = parse(TWO).expect("valid");
        let names: Vec<&str> = c.servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["edge", "web"]);
        assert_eq!(c.servers[0].binary, PathBuf::from("/usr/sbin/haproxy"));
        assert_eq!(
            c.servers[0].stats_socket.as_deref(),
            Some(Path::new("/run/haproxy-admin.sock"))
        );
        let per = c.per_server();
        assert_eq!(per.len(), 2);
        assert_eq!(per[0].server.kind, ServerKind::Haproxy);
        assert_eq!(per[0].sites.len(), 1);
        assert_eq!(per[0].sites[0].name, "a.example.com");
        assert_eq!(per[1].server.kind, ServerKind::Nginx);
        assert_eq!(per[1].sites[0].name, "b.example.com");
        assert!(c.for_server("nope").is_none());
    }

    #[test]
    fn server_mistakes_name_the_key() {
        let no_site_server = TWO.replace("server = \"web\"\n", "");
        let e = parse(&no_site_server).expect_err("ambiguous").to_string();
        assert!(
            e.contains("`site[1].server` is required") && e.contains("edge, web"),
            "{e}"
        );
        let unknown = TWO.replace("server = \"web\"", "server = \"db\"");
        let e = parse(&unknown).expect_err("unknown").to_string();
        assert!(
            e.contains("`site[1].server` names no [[server]] entry: \"db\""),
            "{e}"
        );
        let twice = TWO.replace("name = \"web\"", "name = \"edge\"");
        let e = parse(&twice).expect_err("twice").to_string();
        assert!(e.contains("`server[1].name` repeats"), "{e}");
        let unnamed = TWO.replace("name = \"web\"\n", "");
        let e = parse(&unnamed).expect_err("unnamed").to_string();
        assert!(e.contains("`server[1].name` is required"), "{e}");
        let stray = TWO.replace(
            "kind = \"nginx\"",
            "kind = \"nginx\"\nstats_socket = \"/x.sock\"",
        );
        let e = parse(&stray).expect_err("stray").to_string();
        assert!(
            e.contains("`server[1].stats_socket` is for kind = \"haproxy\" only"),
            "{e}"
        );
        let typo = MIN.replace("kind = \"nginx\"", "kind = \"nginx\"\nbinnary = \"/x\"");
        let e = parse(&typo).expect_err("typo").to_string();
        assert!(e.contains("`server`") && e.contains("binnary"), "{e}");
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MIN).expect("valid");
        assert_eq!(c.server.binary, PathBuf::from("/usr/sbin/nginx"));
        assert_eq!(c.probe.consecutive, 3);
        assert_eq!(c.probe.deadline, Duration::from_secs(30));
        let s = c.site("www.example.com").expect("site");
        assert_eq!(s.mode, Mode::InPlace);
        assert_eq!(s.endpoints[0].sni, "www.example.com");
        assert_eq!(s.endpoints[1].sni, "alt.example.com");
        assert_eq!(s.endpoints[1].addr, "127.0.0.1:8443");
    }

    #[test]
    fn unknown_key_names_the_key_and_file() {
        let e = parse(&MIN.replace("kind = \"nginx\"", "kind = \"nginx\"\nbinnary = \"/x\""))
            .expect_err("unknown key");
        let msg = e.to_string();
        assert!(msg.contains("/etc/certswap/test.toml"), "{msg}");
        assert!(msg.contains("binnary"), "{msg}");
    }

    #[test]
    fn a_short_deadline_alone_shortens_the_default_handshake_timeout() {
        let c = parse(&format!("{MIN}\n[probe]\ndeadline = \"4s\"\n")).expect("deadline alone");
        assert_eq!(c.probe.deadline, Duration::from_secs(4));
        assert_eq!(c.probe.timeout, Duration::from_secs(4));
        let c = parse(MIN).expect("defaults");
        assert_eq!(c.probe.timeout, Duration::from_secs(5));
        // An explicit timeout longer than the deadline is still a mistake.
        let e = parse(&format!(
            "{MIN}\n[probe]\ndeadline = \"4s\"\ntimeout = \"6s\"\n"
        ))
        .expect_err("timeout over deadline");
        assert!(e.to_string().contains("probe.deadline"), "{e}");
    }

    #[test]
    fn bad_duration_names_the_key() {
        let e = parse(&format!("{MIN}\n[probe]\ntimeout = \"soon\"\n")).expect_err("bad");
        assert!(e.to_string().contains("probe.timeout"), "{e}");
    }

    #[test]
    fn site_name_with_slash_is_refused() {
        let e =
            parse(&MIN.replace("www.example.com\"\ncert", "../etc\"\ncert")).expect_err("bad name");
        assert!(e.to_string().contains("site[0].name"), "{e}");
    }

    #[test]
    fn a_repeated_site_name_is_refused_naming_the_second_entry() {
        let other = "[[site]]\nname = \"other.example.com\"\ncert = \"/etc/ssl/o.pem\"\nkey = \"/etc/ssl/o.key\"\nendpoints = [\"127.0.0.1:443\"]\n";
        let again = "[[site]]\nname = \"www.example.com\"\ncert = \"/etc/ssl/b.pem\"\nkey = \"/etc/ssl/b.key\"\nendpoints = [\"127.0.0.1:443\"]\n";
        let e = parse(&format!("{MIN}{other}{again}")).expect_err("repeated name");
        let e = e.to_string();
        assert!(
            e.contains("site[2].name") && e.contains("repeats the site name \"www.example.com\""),
            "{e}"
        );
        parse(&format!("{MIN}{other}")).expect("distinct names are fine");
    }

    #[test]
    fn relative_paths_are_refused() {
        let e = parse(&MIN.replace("/etc/ssl/a.key", "a.key")).expect_err("relative");
        assert!(e.to_string().contains("site[0].key"), "{e}");
    }

    #[test]
    fn agent_and_sources_parse_with_defaults() {
        let c = parse(&format!(
            "{MIN}\n[agent]\ninterval = \"2s\"\nmetrics_listen = \"127.0.0.1:9899\"\n\
             [[source]]\nkind = \"inbox\"\npath = \"/var/lib/certswap/inbox\"\n\
             [[source]]\nkind = \"http\"\nurl = \"https://certs.example.com/m.json?sig=x\"\n"
        ))
        .expect("valid");
        assert_eq!(c.agent.interval, Duration::from_secs(2));
        assert!(!c.agent.fix_drift);
        assert_eq!(c.sources.len(), 2);
        match &c.sources[1] {
            SourceConfig::Http(h) => {
                assert_eq!(h.name, "https://certs.example.com/m.json");
                assert_eq!(h.timeout, Duration::from_secs(30));
            }
            other => panic!("{other:?}"),
        }
        let none = parse(MIN).expect("valid");
        assert_eq!(none.agent.interval, Duration::from_secs(900));
        assert!(none.sources.is_empty());
    }

    #[test]
    fn certbot_and_acme_sh_sources_default_to_the_clients_own_dirs() {
        let c = parse(&format!(
            "{MIN}\n[[source]]\nkind = \"certbot\"\n[[source]]\nkind = \"acme.sh\"\n\
             [[source]]\nkind = \"certbot\"\npath = \"/srv/le\"\nname = \"le2\"\n"
        ))
        .expect("valid");
        let got: Vec<(String, crate::hook::Client, PathBuf)> = c
            .sources
            .iter()
            .map(|s| match s {
                SourceConfig::Acme(a) => (a.name.clone(), a.client, a.path.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        use crate::hook::Client::{AcmeSh, Certbot};
        assert_eq!(
            got,
            vec![
                (
                    "certbot:/etc/letsencrypt".into(),
                    Certbot,
                    "/etc/letsencrypt".into()
                ),
                (
                    "acme.sh:/root/.acme.sh".into(),
                    AcmeSh,
                    "/root/.acme.sh".into()
                ),
                ("le2".into(), Certbot, "/srv/le".into()),
            ]
        );
        let e = parse(&format!(
            "{MIN}\n[[source]]\nkind = \"acme.sh\"\nurl = \"https://x/m\"\n"
        ))
        .expect_err("url on acme.sh");
        assert!(e.to_string().contains("source[0].url"), "{e}");
        let e = parse(&format!(
            "{MIN}\n[[source]]\nkind = \"certbot\"\npath = \"le\"\n"
        ))
        .expect_err("relative");
        assert!(e.to_string().contains("absolute"), "{e}");
    }

    #[test]
    fn plain_http_source_is_refused_unless_allowed() {
        let src = "\n[[source]]\nkind = \"http\"\nurl = \"http://127.0.0.1:1/m.json\"\n";
        let e = parse(&format!("{MIN}{src}")).expect_err("http");
        assert!(e.to_string().contains("source[0].url"), "{e}");
        parse(&format!("{MIN}{src}allow_insecure_http = true\n")).expect("allowed");
    }

    #[test]
    fn source_keys_of_the_other_kind_are_named() {
        let e = parse(&format!(
            "{MIN}\n[[source]]\nkind = \"inbox\"\npath = \"/in\"\nurl = \"https://x/m\"\n"
        ))
        .expect_err("url on inbox");
        assert!(e.to_string().contains("source[0].url"), "{e}");
        let e = parse(&format!(
            "{MIN}\n[[source]]\nkind = \"http\"\nurl = \"https://x/m\"\nclient_cert = \"/a.pem\"\n"
        ))
        .expect_err("cert without key");
        assert!(e.to_string().contains("source[0].client_key"), "{e}");
        let e = parse(&format!("{MIN}\n[agent]\ninterval = \"soon\"\n")).expect_err("bad");
        assert!(e.to_string().contains("agent.interval"), "{e}");
    }

    #[test]
    fn endpoints_may_be_left_out_for_discovery() {
        let c = parse(&MIN.replace(
            "endpoints = [\"127.0.0.1:443\", \"alt.example.com@127.0.0.1:8443\"]\n",
            "",
        ))
        .expect("valid without endpoints");
        assert!(c.sites[0].endpoints.is_empty());
    }

    #[test]
    fn extra_roots_must_be_absolute() {
        let c = parse(&format!(
            "{MIN}\n[trust]\nextra_roots = [\"/etc/certswap/ca.pem\"]\n"
        ))
        .expect("valid");
        assert_eq!(c.extra_roots, vec![PathBuf::from("/etc/certswap/ca.pem")]);
        let e =
            parse(&format!("{MIN}\n[trust]\nextra_roots = [\"ca.pem\"]\n")).expect_err("relative");
        assert!(e.to_string().contains("trust.extra_roots"), "{e}");
    }

    #[test]
    fn unknown_site_lists_known_ones() {
        let c = parse(MIN).expect("valid");
        let e = c.site("nope").expect_err("unknown");
        assert!(e.to_string().contains("www.example.com"), "{e}");
    }
}
