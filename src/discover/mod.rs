//! `certswap discover`: read the web server's effective config and describe
//! every TLS server block / virtual host as a [`DiscoveredSite`], printable
//! as `[[site]]` TOML a user can paste into certswap's config
//! ([`to_toml`]) or as JSON ([`to_json`]).
//!
//! This file owns the shared types, the output formats and the small
//! helpers both readers use (names, endpoints, glob matching). The readers:
//! - [`nginx`]  runs `nginx -T` and parses the dump it prints.
//! - [`apache`] reads the config files itself, following `Include`s.
//! - [`haproxy`] reads haproxy.cfg's TLS `bind` lines (`crt`, `crt-list`).
//! - [`acme`]   marks paths an ACME client owns (certbot's `live/`
//!   symlinks, acme.sh's domain directories): `certswap adopt` material.

pub mod acme;
pub mod apache;
pub mod haproxy;
pub mod nginx;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::config::{ServerConfig, ServerKind, check_site_name};
use crate::probe::Target;

/// One TLS server block (nginx) or `SSLEngine on` virtual host (apache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredSite {
    /// The first usable `server_name` / `ServerName`, lowercased; else
    /// `default-<port>`.
    pub name: String,
    /// The other names (`server_name` / `ServerAlias`), lowercased,
    /// deduplicated, without `name`.
    pub names: Vec<String>,
    /// The first certificate file (nginx: full chain).
    pub cert: Option<PathBuf>,
    /// The key paired with `cert`.
    pub key: Option<PathBuf>,
    /// apache `SSLCertificateChainFile`.
    pub chain: Option<PathBuf>,
    /// Every resolvable (cert, key) pair in order; more than one when the
    /// block serves several certificates (dual RSA + ECDSA).
    pub pairs: Vec<(PathBuf, PathBuf)>,
    /// `host:port` to probe; wildcard addresses become `127.0.0.1`.
    pub endpoints: Vec<String>,
    /// `file:line` of the block.
    pub source: String,
    /// What a user should know: unresolved variables, inherited files,
    /// `default_server`, skipped names.
    pub notes: Vec<String>,
    /// Where in the server's config each resolved cert/key/chain path is
    /// written (what `certswap adopt` changes).
    pub refs: Vec<ConfigRef>,
    /// The site's files that an ACME client owns (filled by [`discover`]
    /// from the file system; the parsers leave it empty).
    pub acme: Vec<acme::AcmePath>,
    /// The `[[server]]` entry the site was found on, when the config has
    /// several (printed as the block's `server = …`).
    pub server: Option<String>,
}

/// One path-valued directive in the server's config: where it is and how
/// its argument is written, so it can be replaced exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRef {
    /// `ssl_certificate`, `SSLCertificateFile`, ...
    pub directive: String,
    /// The path as resolved.
    pub path: PathBuf,
    /// The config file, as the server names it.
    pub file: PathBuf,
    /// 1-based line of the argument.
    pub line: usize,
    /// 0-based column (in characters) where the argument starts.
    pub col: usize,
    /// The argument as written (quotes included).
    pub raw: String,
}

/// Why the server's config could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoverError {
    /// The server binary could not be started.
    #[error("cannot run {binary} to dump its config: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    /// `nginx -T` exited non-zero (the config does not pass its own test).
    #[error("`{command}` failed ({status}): {output}")]
    Dump {
        command: String,
        status: String,
        output: String,
    },
    /// `nginx -T` succeeded but printed no `# configuration file` dump.
    #[error("`{command}` printed no \"# configuration file\" dump on stdout")]
    EmptyDump { command: String },
    /// A config file cannot be read.
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An `Include` names nothing that exists, or cannot be resolved.
    #[error("{file}:{line}: {directive} {pattern}: {reason}")]
    Include {
        file: PathBuf,
        line: usize,
        directive: String,
        pattern: String,
        reason: String,
    },
    /// Includes nest deeper than the limit.
    #[error("{file}:{line}: includes nest deeper than {limit} files")]
    IncludeDepth {
        file: PathBuf,
        line: usize,
        limit: usize,
    },
    /// A file includes itself, directly or through others.
    #[error("{file}:{line}: including {path} again would loop")]
    IncludeCycle {
        file: PathBuf,
        line: usize,
        path: PathBuf,
    },
    /// A section is not closed, closed twice or nested where it cannot be.
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: PathBuf,
        line: usize,
        message: String,
    },
}

/// How deep includes may nest before discovery gives up.
pub const MAX_INCLUDE_DEPTH: usize = 16;

/// The TLS sites of the server `cfg` describes. nginx: its `-T` dump
/// (`prefix` is `-p`); apache: its config files (`prefix` is `-d`, the
/// initial ServerRoot).
pub fn discover(cfg: &ServerConfig) -> Result<Vec<DiscoveredSite>, DiscoverError> {
    let mut sites = match cfg.kind {
        ServerKind::Nginx => nginx::discover(cfg)?,
        ServerKind::Apache => apache::parse_config(&cfg.config, cfg.prefix.as_deref())?,
        ServerKind::Haproxy => haproxy::parse_config(&cfg.config)?,
    };
    mark_acme(&mut sites);
    Ok(sites)
}

/// Fill [`DiscoveredSite::acme`]: which of each site's files an ACME
/// client owns (looked at on disk, see [`acme`]).
pub fn mark_acme(sites: &mut [DiscoveredSite]) {
    for s in sites {
        s.acme = [&s.cert, &s.key, &s.chain]
            .into_iter()
            .flatten()
            .filter_map(|p| acme::classify(p))
            .collect();
    }
}

/// The comment `discover` prints for a file an ACME client owns.
pub fn acme_advice(site: &str, what: &str, a: &acme::AcmePath) -> String {
    format!("{what} is {}; run certswap adopt --site {site}", a.why())
}

/// Which role ("cert", "key", "chain") `path` plays for `site`.
fn role_of(site: &DiscoveredSite, path: &Path) -> &'static str {
    if site.cert.as_deref() == Some(path) {
        "cert"
    } else if site.key.as_deref() == Some(path) {
        "key"
    } else {
        "chain"
    }
}

/// The sites as commented `[[site]]` blocks. A block that certswap's config
/// would not accept as is (no cert or key, a relative path, no endpoint, a
/// repeated name) is printed commented out with the reason.
pub fn to_toml(sites: &[DiscoveredSite]) -> String {
    let mut out = String::new();
    out.push_str("# TLS sites found by `certswap discover`.\n");
    out.push_str("# Check each block, then paste it into certswap.toml.\n");
    if sites.is_empty() {
        out.push_str("# No TLS server block or virtual host was found.\n");
        return out;
    }
    let mut seen: Vec<(String, String)> = Vec::new();
    for site in sites {
        out.push('\n');
        out.push_str(&format!(
            "# {} (from {})\n",
            one_line(&site.name),
            one_line(&site.source)
        ));
        for note in &site.notes {
            out.push_str(&format!("# note: {}\n", one_line(note)));
        }
        for a in &site.acme {
            let advice = acme_advice(&site.name, role_of(site, &a.path), a);
            out.push_str(&format!("# {}\n", one_line(&advice)));
        }
        let (endpoints, mut problems) = toml_endpoints(site);
        problems.extend(site_problems(site));
        if let Some((_, first)) = seen.iter().find(|(n, _)| *n == site.name) {
            problems.push(format!(
                "the name {} is already the site from {first}; site names must be unique",
                site.name
            ));
        }
        let prefix = if problems.is_empty() {
            seen.push((site.name.clone(), site.source.clone()));
            ""
        } else {
            for p in &problems {
                out.push_str(&format!("# not usable as is: {}\n", one_line(p)));
            }
            "# "
        };
        let mut line = |s: String| {
            out.push_str(prefix);
            out.push_str(&s);
            out.push('\n');
        };
        line("[[site]]".into());
        line(format!("name = {}", toml_str(&site.name)));
        if let Some(server) = &site.server {
            line(format!("server = {}", toml_str(server)));
        }
        if !site.names.is_empty() {
            line(format!("names = {}", toml_array(&site.names)));
        }
        line(format!("cert = {}", toml_path(site.cert.as_deref())));
        line(format!("key = {}", toml_path(site.key.as_deref())));
        if let Some(chain) = &site.chain {
            line(format!("chain = {}", toml_path(Some(chain))));
        }
        line(format!("endpoints = {}", toml_array(&endpoints)));
        // Dual certificates (RSA + ECDSA on one vhost): each further pair is
        // renewed on its own, the one whose key type matches the new cert.
        for (cert, key) in site.pairs.iter().skip(1) {
            line("[[site.pair]]".into());
            line(format!("cert = {}", toml_path(Some(cert))));
            line(format!("key = {}", toml_path(Some(key))));
        }
    }
    out
}

/// The sites as `{"sites": [{...}]}`.
pub fn to_json(sites: &[DiscoveredSite]) -> serde_json::Value {
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let list: Vec<serde_json::Value> = sites
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "names": s.names,
                "cert": path(&s.cert),
                "key": path(&s.key),
                "chain": path(&s.chain),
                "pairs": s.pairs.iter().map(|(c, k)| json!({
                    "cert": c.display().to_string(),
                    "key": k.display().to_string(),
                })).collect::<Vec<_>>(),
                "endpoints": s.endpoints,
                "server": s.server,
                "source": s.source,
                "notes": s.notes,
                "acme": s.acme.iter().map(|a| json!({
                    "role": role_of(s, &a.path),
                    "client": a.client,
                    "path": a.path.display().to_string(),
                    "target": a.target.as_ref().map(|t| t.display().to_string()),
                    "lineage": a.lineage.display().to_string(),
                    "advice": acme_advice(&s.name, role_of(s, &a.path), a),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "sites": list })
}

/// Why certswap's config would refuse this site (other than endpoints).
fn site_problems(site: &DiscoveredSite) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(why) = check_site_name(&site.name) {
        problems.push(why);
    }
    for (what, p) in [
        ("cert", site.cert.as_deref()),
        ("key", site.key.as_deref()),
        ("chain", site.chain.as_deref()),
    ] {
        match p {
            None if what != "chain" => problems.push(format!("no resolvable {what} path")),
            Some(p) if !p.is_absolute() => {
                problems.push(format!("the {what} path {} is not absolute", p.display()))
            }
            Some(p) if p.to_str().is_none() => {
                problems.push(format!("the {what} path {} is not UTF-8", p.display()))
            }
            _ => {}
        }
    }
    problems
}

/// The endpoints as certswap's config will read them. A name rustls cannot
/// send as SNI (a wildcard) gets another of the site's names as
/// `sni@host:port`; when there is none, that is a problem.
fn toml_endpoints(site: &DiscoveredSite) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    if site.endpoints.is_empty() {
        problems.push("no TLS endpoint (listen / VirtualHost address) was found".into());
    }
    let mut out = Vec::new();
    for ep in &site.endpoints {
        if Target::parse(ep, Some(&site.name)).is_ok() {
            out.push(ep.clone());
            continue;
        }
        let alt = site
            .names
            .iter()
            .map(|n| format!("{n}@{ep}"))
            .find(|cand| Target::parse(cand, None).is_ok());
        match alt {
            Some(cand) => out.push(cand),
            None => {
                problems.push(format!(
                    "cannot probe {ep} with SNI {}: write it as \"HOST@{ep}\" with a name the certificate covers",
                    site.name
                ));
                out.push(ep.clone());
            }
        }
    }
    (out, problems)
}

/// A TOML basic string. JSON string escapes (`\"`, `\\`, `\n`, `\uXXXX`)
/// are all valid TOML escapes, so serde_json does the quoting.
fn toml_str(s: &str) -> String {
    // JSON's escapes are TOML's, except that TOML also forbids a raw DEL.
    serde_json::Value::String(s.to_string())
        .to_string()
        .replace('\u{7f}', "\\u007f")
}

fn toml_path(p: Option<&Path>) -> String {
    match p {
        Some(p) => toml_str(&p.to_string_lossy()),
        None => "\"\"".into(),
    }
}

fn toml_array(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// Notes, names and paths go into `#` comments, where TOML allows no
/// control character but tab: keep each on one line and make the others
/// visible as escapes (a config file may hold anything).
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' | '\r' => " ".to_string(),
            '\t' => "\t".to_string(),
            c if c.is_control() => c.escape_unicode().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// Split candidate names into (name, other names): lowercased, empty and
/// `_` dropped, deduplicated in order.
pub(crate) fn pick_names(candidates: &[String]) -> (Option<String>, Vec<String>) {
    let mut seen = HashSet::new();
    let mut all = Vec::new();
    for c in candidates {
        let c = c.trim().to_ascii_lowercase();
        if c.is_empty() || c == "_" {
            continue;
        }
        if seen.insert(c.clone()) {
            all.push(c);
        }
    }
    let mut it = all.into_iter();
    let first = it.next();
    (first, it.collect())
}

/// `host:port` to probe. Wildcard addresses (see [`is_wildcard`]) become
/// `127.0.0.1`; other IPv6 addresses get brackets.
pub(crate) fn endpoint(host: Option<&str>, port: u16) -> String {
    match host.map(unbracket) {
        Some(h) if !is_wildcard(Some(h)) && h.contains(':') => format!("[{h}]:{port}"),
        Some(h) if !is_wildcard(Some(h)) => format!("{h}:{port}"),
        _ => format!("127.0.0.1:{port}"),
    }
}

/// No address, `*`, `0.0.0.0`, `::` / `[::]` and apache's `_default_` mean
/// "every address".
pub(crate) fn is_wildcard(host: Option<&str>) -> bool {
    matches!(
        host.map(unbracket),
        None | Some("" | "*" | "0.0.0.0" | "::" | "_default_")
    )
}

fn unbracket(h: &str) -> &str {
    h.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(h)
}

/// Push `item` unless it is already there.
pub(crate) fn push_unique<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// Does `s` contain a shell wildcard (`*`, `?`, `[`)?
pub(crate) fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// fnmatch(3) for one path component: `*`, `?`, `[a-z]`, `[!x]`/`[^x]`,
/// `\` escapes. A leading `.` in `name` must be matched literally (glob(3)
/// and apache's `APR_FNM_PERIOD`).
pub(crate) fn fnmatch(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // No real glob or file name is this long; the bound keeps the
    // recursion (at most P + N deep) small whatever a config holds.
    if p.len() > MAX_GLOB_CHARS || n.len() > MAX_GLOB_CHARS {
        return false;
    }
    let mut memo = vec![None; (p.len() + 1) * (n.len() + 1)];
    match_at(&p, &n, 0, 0, &mut memo)
}

const MAX_GLOB_CHARS: usize = 1024;

/// Does `p[pi..]` match `n[ni..]`? Memoised on (pi, ni): a pattern with
/// many `*` would otherwise backtrack exponentially (a fuzzer found one).
fn match_at(p: &[char], n: &[char], pi: usize, ni: usize, memo: &mut [Option<bool>]) -> bool {
    let key = pi * (n.len() + 1) + ni;
    if let Some(v) = memo[key] {
        return v;
    }
    let v = match p.get(pi) {
        None => ni == n.len(),
        Some('*') => (ni..=n.len()).any(|j| match_at(p, n, pi + 1, j, memo)),
        Some('?') => ni < n.len() && match_at(p, n, pi + 1, ni + 1, memo),
        Some('[') => match n.get(ni) {
            None => false,
            Some(&ch) => match class_match(&p[pi + 1..], ch) {
                Some((true, after)) => match_at(p, n, p.len() - after.len(), ni + 1, memo),
                Some((false, _)) => false,
                // No closing ']': a literal '['.
                None => ch == '[' && match_at(p, n, pi + 1, ni + 1, memo),
            },
        },
        Some('\\') if pi + 1 < p.len() => {
            ni < n.len() && n[ni] == p[pi + 1] && match_at(p, n, pi + 2, ni + 1, memo)
        }
        Some(&c) => ni < n.len() && n[ni] == c && match_at(p, n, pi + 1, ni + 1, memo),
    };
    memo[key] = Some(v);
    v
}

/// Match `ch` against the class after a `[`; returns (matched, pattern
/// after the `]`), None when the class is not closed.
fn class_match(p: &[char], ch: char) -> Option<(bool, &[char])> {
    let (negate, mut i) = match p.first() {
        Some('!' | '^') => (true, 1),
        _ => (false, 0),
    };
    let mut hit = false;
    let mut first = true;
    while i < p.len() {
        let c = p[i];
        if c == ']' && !first {
            return Some((hit != negate, &p[i + 1..]));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if (c..=p[i + 2]).contains(&ch) {
                hit = true;
            }
            i += 3;
        } else {
            if c == ch {
                hit = true;
            }
            i += 1;
        }
    }
    None
}

/// Match a whole path against a pattern component by component (`*` never
/// crosses `/`).
pub(crate) fn path_match(pattern: &Path, path: &Path) -> bool {
    let pc: Vec<_> = pattern.components().collect();
    let nc: Vec<_> = path.components().collect();
    pc.len() == nc.len()
        && pc.iter().zip(&nc).all(
            |(p, n)| match (p.as_os_str().to_str(), n.as_os_str().to_str()) {
                (Some(p), Some(n)) => fnmatch(p, n),
                _ => p == n,
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn site(name: &str) -> DiscoveredSite {
        DiscoveredSite {
            name: name.into(),
            names: vec![format!("www.{name}")],
            cert: Some(format!("/etc/ssl/{name}.pem").into()),
            key: Some(format!("/etc/ssl/{name}.key").into()),
            chain: None,
            pairs: vec![(
                format!("/etc/ssl/{name}.pem").into(),
                format!("/etc/ssl/{name}.key").into(),
            )],
            endpoints: vec!["127.0.0.1:443".into(), "[::1]:8443".into()],
            source: "/etc/nginx/nginx.conf:3".into(),
            notes: vec!["default_server".into()],
            refs: Vec::new(),
            acme: Vec::new(),
            server: None,
        }
    }

    fn parse_with_header(toml: &str) -> Config {
        let text = format!("state_dir = \"/tmp/st\"\n[server]\nkind = \"nginx\"\n{toml}");
        Config::parse(&text, Path::new("/tmp/discovered.toml"))
            .unwrap_or_else(|e| panic!("config refused the snippet: {e}\n{toml}"))
    }

    #[test]
    fn toml_of_resolvable_sites_is_accepted_by_config() {
        let mut b = site("b.test");
        b.chain = Some("/etc/ssl/b_chain.crt".into());
        b.notes.push("a note\nwith a newline".into());
        let text = to_toml(&[site("a.test"), b]);
        let cfg = parse_with_header(&text);
        assert_eq!(cfg.sites.len(), 2);
        let a = cfg.site("a.test").expect("a.test");
        assert_eq!(a.names, vec!["www.a.test".to_string()]);
        assert_eq!(a.endpoints.len(), 2);
        assert_eq!(a.endpoints[1].addr, "[::1]:8443");
        let b = cfg.site("b.test").expect("b.test");
        assert_eq!(b.chain.as_deref(), Some(Path::new("/etc/ssl/b_chain.crt")));
    }

    #[test]
    fn unresolved_and_repeated_sites_are_commented_out() {
        let mut unresolved = site("c.test");
        unresolved.cert = None;
        unresolved.pairs.clear();
        unresolved
            .notes
            .push("ssl_certificate uses variable $ssl_server_name; cannot resolve".into());
        let repeated = site("a.test");
        let text = to_toml(&[site("a.test"), unresolved, repeated]);
        let cfg = parse_with_header(&text);
        assert_eq!(cfg.sites.len(), 1, "{text}");
        assert!(text.contains("# [[site]]\n# name = \"c.test\""), "{text}");
        assert!(text.contains("$ssl_server_name"), "{text}");
        assert!(text.contains("already the site from"), "{text}");
    }

    #[test]
    fn wildcard_name_probes_with_another_name() {
        let mut s = site("x.test");
        s.name = "*.x.test".into();
        s.names = vec!["x.test".into()];
        let text = to_toml(&[s]);
        let cfg = parse_with_header(&text);
        assert_eq!(cfg.sites[0].endpoints[0].sni, "x.test", "{text}");
    }

    #[test]
    fn json_lists_every_field() {
        let v = to_json(&[site("a.test")]);
        let s = &v["sites"][0];
        assert_eq!(s["name"], "a.test");
        assert_eq!(s["cert"], "/etc/ssl/a.test.pem");
        assert_eq!(s["chain"], serde_json::Value::Null);
        assert_eq!(s["pairs"][0]["key"], "/etc/ssl/a.test.key");
        assert_eq!(s["endpoints"][1], "[::1]:8443");
        assert_eq!(s["notes"][0], "default_server");
    }

    #[test]
    fn control_characters_in_names_and_paths_still_give_valid_toml() {
        let mut site = DiscoveredSite {
            name: "a\u{1}b\u{7f}.test".into(),
            names: vec!["c\u{7f}.test".into()],
            cert: Some(PathBuf::from("/etc/ssl/\u{8}a.pem")),
            key: Some(PathBuf::from("/etc/ssl/a.key")),
            chain: None,
            pairs: Vec::new(),
            endpoints: vec!["127.0.0.1:443".into()],
            source: "/etc/nginx/x\u{0}.conf:1".into(),
            notes: vec!["odd \u{1b}[31m note".into()],
            refs: Vec::new(),
            acme: Vec::new(),
            server: None,
        };
        let text = to_toml(std::slice::from_ref(&site));
        text.parse::<toml::Table>()
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        site.name = "a.test".into();
        let text = to_toml(&[site]);
        text.parse::<toml::Table>()
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
    }

    #[test]
    fn empty_list_says_so() {
        assert!(to_toml(&[]).contains("No TLS server block"));
    }

    #[test]
    fn names_and_endpoints() {
        let (first, rest) = pick_names(&[
            "_".into(),
            "A.Test".into(),
            "".into(),
            "b.test".into(),
            "a.test".into(),
        ]);
        assert_eq!(first.as_deref(), Some("a.test"));
        assert_eq!(rest, vec!["b.test".to_string()]);
        assert_eq!(endpoint(None, 443), "127.0.0.1:443");
        assert_eq!(endpoint(Some("[::]"), 443), "127.0.0.1:443");
        assert_eq!(endpoint(Some("::1"), 443), "[::1]:443");
        assert_eq!(endpoint(Some("10.0.0.1"), 8443), "10.0.0.1:8443");
        assert!(is_wildcard(Some("*")));
        assert!(!is_wildcard(Some("127.0.0.1")));
    }

    #[test]
    fn glob_matching() {
        assert!(fnmatch("*.conf", "a.conf"));
        assert!(!fnmatch("*.conf", ".hidden.conf"));
        assert!(fnmatch("[ab]?.conf", "b1.conf"));
        assert!(fnmatch("[!a]*", "b"));
        assert!(!fnmatch("[!a]*", "a"));
        assert!(fnmatch("[a-c]", "b"));
        assert!(fnmatch("a\\*", "a*"));
        assert!(!fnmatch("a\\*", "ab"));
        assert!(fnmatch("[x", "[x"));
        // Many stars against a long name that does not match: linear, not
        // exponential (this hung before memoisation).
        let stars = "*a".repeat(40) + "b";
        assert!(!fnmatch(&stars, &"a".repeat(200)));
        assert!(path_match(
            Path::new("/etc/nginx/sites/*.conf"),
            Path::new("/etc/nginx/sites/x.conf")
        ));
        assert!(!path_match(
            Path::new("/etc/nginx/*.conf"),
            Path::new("/etc/nginx/sites/x.conf")
        ));
    }
}
