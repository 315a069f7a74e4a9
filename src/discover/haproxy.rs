//! HAProxy's side of `certswap discover`: read haproxy.cfg (no dump: HAProxy
//! has none), and make one site of every certificate a TLS `bind` loads —
//! `crt FILE`, `crt DIR` (every certificate file in it), `crt-list FILE`
//! (each line a file, its SNI filters the names), `crt-base` applied to
//! relative paths as HAProxy does. A file's key is `FILE.key` beside it
//! when that exists, else the file itself (the combined PEM). A `crt NAME`
//! that does not exist but has `NAME.rsa` / `NAME.ecdsa` beside it is a
//! multi-certificate bundle: one site with a pair per key type. Names come
//! from the SNI filters, else from the certificate on disk.

use std::path::{Path, PathBuf};

use super::{ConfigRef, DiscoverError, DiscoveredSite, endpoint, pick_names, push_unique};

/// The key types HAProxy loads as a bundle when `crt NAME` names none.
const BUNDLE_EXTS: [&str; 3] = ["rsa", "ecdsa", "dsa"];
/// Files in a `crt` directory that are parts of another file, not certificates.
const PART_EXTS: [&str; 4] = ["key", "ocsp", "issuer", "sctl"];

/// One word of a config line and the column (in characters) it starts at.
struct Word {
    text: String,
    col: usize,
    raw: String,
}

/// Split a line the way HAProxy does: whitespace separates, `"…"` and
/// `'…'` quote, `\` escapes, `#` outside quotes starts a comment.
fn words(line: &str) -> Vec<Word> {
    let mut out = Vec::new();
    let mut cur: Option<Word> = None;
    let mut quote: Option<char> = None;
    let mut chars = line.chars().enumerate().peekable();
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            (None, '#') => break,
            (None, c) if c.is_whitespace() => {
                out.extend(cur.take());
                continue;
            }
            _ => {}
        }
        let w = cur.get_or_insert_with(|| Word {
            text: String::new(),
            col: i,
            raw: String::new(),
        });
        w.raw.push(c);
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (q, '\\') if q != Some('\'') => {
                if let Some((_, n)) = chars.next() {
                    w.raw.push(n);
                    w.text.push(n);
                }
            }
            _ => w.text.push(c),
        }
    }
    out.extend(cur);
    out
}

/// A certificate a bind loads, with where the config names it.
struct Loaded {
    /// The `crt` / `crt-list` argument as HAProxy resolves it.
    path: PathBuf,
    /// SNI filters from a crt-list line (empty: the certificate's names).
    filters: Vec<String>,
    /// The `crt` word naming this file itself (for `certswap adopt`).
    reference: Option<ConfigRef>,
}

/// The sites of the HAProxy config at `path`.
pub fn parse_config(path: &Path) -> Result<Vec<DiscoveredSite>, DiscoverError> {
    let text = std::fs::read_to_string(path).map_err(|source| DiscoverError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(parse_text(&text, path))
}

/// [`parse_config`] on text already read; `path` names it in `source`.
pub fn parse_text(text: &str, path: &Path) -> Vec<DiscoveredSite> {
    let mut sites: Vec<DiscoveredSite> = Vec::new();
    let mut crt_base: Option<PathBuf> = None;
    let mut section = String::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let w = words(line);
        let Some(first) = w.first() else { continue };
        match first.text.as_str() {
            "global" | "defaults" | "frontend" | "listen" | "backend" | "peers" | "resolvers"
            | "userlist" | "program" | "http-errors" | "mailers" | "ring" | "cache" => {
                section = first.text.clone();
                continue;
            }
            "crt-base" if section == "global" => {
                crt_base = w.get(1).map(|b| PathBuf::from(&b.text));
                continue;
            }
            "bind" if section == "frontend" || section == "listen" => {}
            _ => continue,
        }
        let args = &w[1..];
        if !args.iter().any(|a| a.text == "ssl") {
            continue;
        }
        let source = format!("{}:{line_no}", path.display());
        let mut notes = Vec::new();
        let endpoints = bind_endpoints(args.first().map(|a| a.text.as_str()), &mut notes);
        let mut loaded = Vec::new();
        let mut i = 1;
        while i < args.len() {
            let kw = args[i].text.as_str();
            if let ("crt" | "crt-list", Some(v)) = (kw, args.get(i + 1)) {
                let p = resolve(&v.text, crt_base.as_deref(), &mut notes);
                if kw == "crt" {
                    let reference = ConfigRef {
                        directive: "crt".into(),
                        path: p.clone(),
                        file: path.to_path_buf(),
                        line: line_no,
                        col: v.col,
                        raw: v.raw.clone(),
                    };
                    expand_crt(&p, Some(reference), &mut loaded, &mut notes);
                } else {
                    read_crt_list(&p, crt_base.as_deref(), &mut loaded, &mut notes);
                }
                i += 2;
            } else {
                i += 1;
            }
        }
        for l in loaded {
            add_site(&mut sites, l, &endpoints, &source, &notes);
        }
    }
    sites
}

/// `ADDR:PORT[,ADDR:PORT…]` of a bind as endpoints to probe; unix sockets,
/// `fd@` and port ranges are noted and skipped.
fn bind_endpoints(spec: Option<&str>, notes: &mut Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    for part in spec.unwrap_or_default().split(',') {
        let part = part
            .strip_prefix("ipv4@")
            .or_else(|| part.strip_prefix("ipv6@"))
            .unwrap_or(part);
        let Some((host, port)) = part.rsplit_once(':') else {
            notes.push(format!("bind address {part} is not HOST:PORT; skipped"));
            continue;
        };
        match port.parse::<u16>() {
            Ok(port) if !part.contains('@') => {
                push_unique(
                    &mut out,
                    endpoint(Some(host).filter(|h| !h.is_empty()), port),
                );
            }
            _ => notes.push(format!("bind address {part} cannot be probed; skipped")),
        }
    }
    out
}

/// A `crt` or crt-list path as HAProxy reads it: relative ones under
/// `crt-base`.
fn resolve(p: &str, base: Option<&Path>, notes: &mut Vec<String>) -> PathBuf {
    let p = PathBuf::from(p);
    match base {
        Some(b) if p.is_relative() => b.join(p),
        None if p.is_relative() => {
            notes.push(format!(
                "{} is relative to HAProxy's working directory (no crt-base)",
                p.display()
            ));
            p
        }
        _ => p,
    }
}

/// The certificates `crt PATH` loads: the file, every certificate file of
/// a directory, or a bundle's `.rsa`/`.ecdsa` files (kept as one entry,
/// expanded into pairs by [`add_site`]).
fn expand_crt(
    p: &Path,
    reference: Option<ConfigRef>,
    out: &mut Vec<Loaded>,
    notes: &mut Vec<String>,
) {
    if p.is_dir() {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(p) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                notes.push(format!("cannot list {}: {e}", p.display()));
                return;
            }
        };
        files.sort();
        for f in files {
            let ext = f.extension().and_then(|e| e.to_str()).unwrap_or_default();
            if PART_EXTS.contains(&ext) || !f.is_file() {
                continue;
            }
            // A bundle's members in a directory are one site, by base name.
            let entry = if BUNDLE_EXTS.contains(&ext) {
                f.with_extension("")
            } else {
                f
            };
            if !out.iter().any(|l| l.path == entry) {
                out.push(Loaded {
                    path: entry,
                    filters: Vec::new(),
                    reference: None,
                });
            }
        }
        return;
    }
    out.push(Loaded {
        path: p.to_path_buf(),
        filters: Vec::new(),
        reference,
    });
}

/// A crt-list: `PATH [SSL OPTIONS] [SNI FILTER…]` per line.
fn read_crt_list(p: &Path, base: Option<&Path>, out: &mut Vec<Loaded>, notes: &mut Vec<String>) {
    let text = match std::fs::read_to_string(p) {
        Ok(t) => t,
        Err(e) => {
            notes.push(format!("cannot read the crt-list {}: {e}", p.display()));
            return;
        }
    };
    for line in text.lines() {
        let w = words(line);
        let Some(first) = w.first() else { continue };
        let path = resolve(&first.text, base, notes);
        // `[alpn h2 …]` may span words; the filters follow its `]`.
        let mut rest = w[1..].iter().map(|w| w.text.as_str()).peekable();
        if rest.peek().is_some_and(|s| s.starts_with('[')) {
            for s in rest.by_ref() {
                if s.ends_with(']') {
                    break;
                }
            }
        }
        let filters: Vec<String> = rest
            .filter(|f| !f.starts_with('!'))
            .map(str::to_string)
            .collect();
        let before = out.len();
        expand_crt(&path, None, out, notes);
        for l in &mut out[before..] {
            l.filters = filters.clone();
        }
    }
}

/// The (cert, key) files of one loaded entry: the file and its key, or a
/// bundle's members; empty when none exists.
fn pairs_of(p: &Path) -> Vec<(PathBuf, PathBuf)> {
    let with_key = |c: PathBuf| {
        let mut k = c.clone().into_os_string();
        k.push(".key");
        let k = PathBuf::from(k);
        if k.is_file() { (c, k) } else { (c.clone(), c) }
    };
    if p.is_file() {
        return vec![with_key(p.to_path_buf())];
    }
    BUNDLE_EXTS
        .iter()
        .map(|ext| {
            let mut m = p.as_os_str().to_owned();
            m.push(format!(".{ext}"));
            PathBuf::from(m)
        })
        .filter(|m| m.is_file())
        .map(with_key)
        .collect()
}

/// Add `l` as a site (or add the bind's endpoints to the site that already
/// has its file).
fn add_site(
    sites: &mut Vec<DiscoveredSite>,
    l: Loaded,
    endpoints: &[String],
    source: &str,
    bind_notes: &[String],
) {
    let pairs = pairs_of(&l.path);
    let first_cert = pairs.first().map(|(c, _)| c.clone());
    if let Some(s) = sites
        .iter_mut()
        .find(|s| first_cert.is_some() && s.cert == first_cert)
    {
        for e in endpoints {
            push_unique(&mut s.endpoints, e.clone());
        }
        return;
    }
    let mut notes = bind_notes.to_vec();
    let mut candidates = l.filters.clone();
    if candidates.is_empty() {
        match first_cert.as_deref().map(crate::bundle::read_leaf) {
            Some(Ok(leaf)) => candidates = leaf.names,
            Some(Err(e)) => {
                notes.push(format!("the certificate cannot be read for its names: {e}"))
            }
            None => notes.push(format!("{} does not exist", l.path.display())),
        }
    }
    // A wildcard cannot be a site name; a plain name first, if any.
    candidates.sort_by_key(|n| n.contains('*'));
    let (name, names) = pick_names(&candidates);
    let name = name.unwrap_or_else(|| {
        let port = endpoints
            .first()
            .and_then(|e| e.rsplit(':').next())
            .unwrap_or("0");
        format!("default-{port}")
    });
    if pairs.len() > 1 {
        notes.push(format!(
            "a multi-certificate bundle ({}.rsa / .ecdsa): one pair per key type",
            l.path.display()
        ));
    }
    sites.push(DiscoveredSite {
        name,
        names,
        cert: first_cert,
        key: pairs.first().map(|(_, k)| k.clone()),
        chain: None,
        pairs: if pairs.len() > 1 { pairs } else { Vec::new() },
        endpoints: endpoints.to_vec(),
        source: source.to_string(),
        notes,
        refs: l.reference.into_iter().collect(),
        acme: Vec::new(),
        server: None,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_cert(path: &Path, names: &[&str], with_key: bool) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params")
                .self_signed(&key)
                .expect("cert");
        let mut pem = cert.pem();
        if with_key {
            pem.push_str(&key.serialize_pem());
        }
        std::fs::write(path, pem).expect("write cert");
    }

    #[test]
    fn words_quote_escape_and_comment() {
        let w = words(r#"  bind :443 ssl crt "/a b/x.pem" crt /c\ d.pem # crt /no"#);
        let t: Vec<&str> = w.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(
            t,
            [
                "bind",
                ":443",
                "ssl",
                "crt",
                "/a b/x.pem",
                "crt",
                "/c d.pem"
            ]
        );
        assert_eq!(w[4].col, 20);
        assert_eq!(w[4].raw, "\"/a b/x.pem\"");
    }

    #[test]
    fn crt_file_dir_list_and_bundle_become_sites() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path();
        write_cert(&p.join("a.pem"), &["a.test", "www.a.test"], true);
        std::fs::create_dir(p.join("certs")).expect("mkdir");
        write_cert(&p.join("certs/b.crt"), &["b.test"], false);
        write_cert(&p.join("certs/b.crt.key"), &["unused"], false);
        write_cert(&p.join("d.pem.rsa"), &["d.test"], true);
        write_cert(&p.join("d.pem.ecdsa"), &["d.test"], true);
        write_cert(&p.join("c.pem"), &["ignored.test"], true);
        std::fs::write(
            p.join("list.txt"),
            "# comment\nc.pem [alpn h2 ssl-min-ver TLSv1.2] c.test *.c.test !bad.test\nd.pem\n",
        )
        .expect("list");
        let cfg = format!(
            "global\n  crt-base {base}\n  stats socket /run/x.sock level admin\n\
             frontend plain\n  bind :80\n\
             frontend tls\n  bind 127.0.0.1:8443,[::1]:8443 ssl crt a.pem crt {base}/certs\n\
             listen other\n  bind *:9443 ssl crt-list {base}/list.txt\n  bind *:9444 ssl crt a.pem\n",
            base = p.display()
        );
        let sites = parse_text(&cfg, Path::new("/etc/haproxy/haproxy.cfg"));
        let names: Vec<&str> = sites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["a.test", "b.test", "c.test", "d.test"],
            "{sites:#?}"
        );
        let a = &sites[0];
        assert_eq!(a.names, ["www.a.test"]);
        assert_eq!(a.cert.as_deref(), Some(p.join("a.pem").as_path()));
        assert_eq!(a.key, a.cert, "combined PEM: the key is the cert file");
        assert_eq!(
            a.endpoints,
            ["127.0.0.1:8443", "[::1]:8443", "127.0.0.1:9444"]
        );
        assert_eq!(a.source, "/etc/haproxy/haproxy.cfg:7");
        assert_eq!(a.refs.len(), 1);
        assert_eq!(a.refs[0].raw, "a.pem");
        let b = &sites[1];
        assert_eq!(b.key.as_deref(), Some(p.join("certs/b.crt.key").as_path()));
        let c = &sites[2];
        assert_eq!(
            c.names,
            ["*.c.test"],
            "filters name the site, `!` ones dropped"
        );
        assert_eq!(c.endpoints, ["127.0.0.1:9443"]);
        let dual = &sites[3];
        assert_eq!(
            dual.pairs,
            [
                (p.join("d.pem.rsa"), p.join("d.pem.rsa")),
                (p.join("d.pem.ecdsa"), p.join("d.pem.ecdsa"))
            ]
        );
        let toml = super::super::to_toml(&sites);
        assert!(toml.contains("[[site.pair]]"), "{toml}");
        assert!(!toml.contains("# [[site]]"), "every block usable: {toml}");
    }

    #[test]
    fn missing_files_and_odd_binds_are_noted_not_fatal() {
        let cfg = "frontend f\n  bind unix@/run/x.sock ssl crt /nonexistent/x.pem\n  bind :443 ssl crt rel.pem\n";
        let sites = parse_text(cfg, Path::new("/h.cfg"));
        assert_eq!(sites.len(), 2);
        assert!(sites[0].endpoints.is_empty());
        assert!(sites[0].cert.is_none());
        assert!(
            sites[1].notes.iter().any(|n| n.contains("relative")),
            "{:?}",
            sites[1].notes
        );
        for garbage in [
            "bind",
            "frontend\n bind ssl crt",
            "\"\\",
            "frontend f\n bind :x ssl crt-list",
        ] {
            let _ = parse_text(garbage, Path::new("/h.cfg"));
        }
    }
}
