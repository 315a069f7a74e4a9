//! The TOML configuration: schema (serde), defaults, and the checks that
//! turn a bad file into one sentence naming the key and the file. The rest
//! of certswap sees only the validated [`Config`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::probe::Target;

/// Where the config is read from when neither `--config` nor
/// `CERTSWAP_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/certswap/certswap.toml";

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
    server: RawServer,
    #[serde(default)]
    probe: RawProbe,
    #[serde(default, rename = "site")]
    sites: Vec<RawSite>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    kind: ServerKind,
    binary: Option<PathBuf>,
    config: Option<PathBuf>,
    prefix: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    reload_command: Option<Vec<String>>,
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
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from, for messages.
    pub path: PathBuf,
    pub state_dir: PathBuf,
    pub server: ServerConfig,
    pub probe: ProbeConfig,
    pub sites: Vec<Site>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub kind: ServerKind,
    pub binary: PathBuf,
    pub config: PathBuf,
    pub prefix: Option<PathBuf>,
    pub pid_file: PathBuf,
    pub reload_command: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Bound on one connect + handshake.
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
}

impl Site {
    /// `name` followed by `names`: every name the new cert must cover.
    pub fn all_names(&self) -> Vec<String> {
        let mut all = vec![self.name.clone()];
        all.extend(self.names.iter().cloned());
        all
    }
}

impl Config {
    /// Read and validate the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Validate config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
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

        let server = resolve_server(raw.server, &invalid)?;

        let duration = |key: &str, v: Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(s) => humantime::parse_duration(&s)
                .map_err(|e| invalid(key, format!("is not a duration like \"5s\": {e}"))),
        };
        let probe = ProbeConfig {
            timeout: duration("probe.timeout", raw.probe.timeout, Duration::from_secs(5))?,
            deadline: duration(
                "probe.deadline",
                raw.probe.deadline,
                Duration::from_secs(30),
            )?,
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
        for (i, s) in raw.sites.into_iter().enumerate() {
            let key = |k: &str| format!("site[{i}].{k}");
            if let Err(why) = check_site_name(&s.name) {
                return Err(invalid(&key("name"), why));
            }
            if sites.iter().any(|o| o.name == s.name) {
                return Err(invalid(
                    &key("name"),
                    format!("repeats the site name {:?}", s.name),
                ));
            }
            for (k, p) in [
                ("cert", Some(&s.cert)),
                ("key", Some(&s.key)),
                ("chain", s.chain.as_ref()),
            ] {
                if let Some(p) = p
                    && !p.is_absolute()
                {
                    return Err(invalid(
                        &key(k),
                        format!("must be an absolute path, not {p:?}"),
                    ));
                }
            }
            if s.endpoints.is_empty() {
                return Err(invalid(
                    &key("endpoints"),
                    "must list at least one \"host:port\" to probe".into(),
                ));
            }
            let mut endpoints = Vec::new();
            for e in &s.endpoints {
                let t = Target::parse(e, Some(&s.name)).map_err(|err| {
                    invalid(&key("endpoints"), format!("has a bad entry {e:?}: {err}"))
                })?;
                endpoints.push(t);
            }
            sites.push(Site {
                name: s.name,
                names: s.names.iter().map(|n| n.to_ascii_lowercase()).collect(),
                cert: s.cert,
                key: s.key,
                chain: s.chain,
                endpoints,
                mode: s.mode.unwrap_or(Mode::InPlace),
            });
        }

        Ok(Config {
            path: path.to_path_buf(),
            state_dir,
            server,
            probe,
            sites,
        })
    }

    /// The site called `name`, or an error listing the known ones.
    pub fn site(&self, name: &str) -> Result<&Site, ConfigError> {
        self.sites
            .iter()
            .find(|s| s.name == name)
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

fn resolve_server(
    raw: RawServer,
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
    };
    if let Some(cmd) = &raw.reload_command
        && cmd.is_empty()
    {
        return Err(invalid(
            "server.reload_command",
            "must name a program, e.g. [\"systemctl\", \"reload\", \"nginx\"]".into(),
        ));
    }
    Ok(ServerConfig {
        kind: raw.kind,
        binary: raw.binary.unwrap_or_else(|| binary.into()),
        config: raw.config.unwrap_or_else(|| config.into()),
        prefix: raw.prefix,
        pid_file: raw.pid_file.unwrap_or_else(|| pid_file.into()),
        reload_command: raw.reload_command,
    })
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
    fn relative_paths_are_refused() {
        let e = parse(&MIN.replace("/etc/ssl/a.key", "a.key")).expect_err("relative");
        assert!(e.to_string().contains("site[0].key"), "{e}");
    }

    #[test]
    fn unknown_site_lists_known_ones() {
        let c = parse(MIN).expect("valid");
        let e = c.site("nope").expect_err("unknown");
        assert!(e.to_string().contains("www.example.com"), "{e}");
    }
}
