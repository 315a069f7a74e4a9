//! apache discovery: read the config files the way httpd does — logical
//! lines (`\` continuations), `#` comment lines, case-insensitive
//! directives, quoted arguments, `Define` / `${VAR}`, `Include` /
//! `IncludeOptional` (globs and directories, relative to ServerRoot) —
//! and turn every `<VirtualHost>` with `SSLEngine on` into a
//! [`DiscoveredSite`]. No apache needs to run.
//!
//! Conditional sections (`<IfModule>`, `<IfDefine>`, ...) are read as if
//! their condition held; `<Macro>` bodies are skipped (they only become
//! config through `Use`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{
    ConfigRef, DiscoverError, DiscoveredSite, MAX_INCLUDE_DEPTH, endpoint, fnmatch, has_glob,
    is_wildcard, pick_names, push_unique,
};

/// The TLS virtual hosts of the apache config at `path`. `server_root` is
/// the initial ServerRoot (apache's `-d`); a `ServerRoot` directive in the
/// config overrides it; without either, the config file's directory.
pub fn parse_config(
    path: &Path,
    server_root: Option<&Path>,
) -> Result<Vec<DiscoveredSite>, DiscoverError> {
    let root = server_root
        .map(Path::to_path_buf)
        .or_else(|| path.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("/"));
    let path = root.join(path);
    let mut reader = Reader {
        server_root: root,
        defines: HashMap::new(),
        global: Scope::default(),
        listens: Vec::new(),
        vhosts: Vec::new(),
        current: None,
        sections: Vec::new(),
        active: Vec::new(),
    };
    reader.read_file(&path, 0, None)?;
    Ok(reader.finish())
}

/// A path-like argument as written, after `${VAR}` substitution.
#[derive(Debug, Clone)]
struct Value {
    raw: String,
    /// A `${VAR}` no `Define` set.
    unresolved: Option<String>,
    /// Where it is written: (directive, file, line, column, text as written).
    at: Option<(String, PathBuf, usize, usize, String)>,
}

/// Directives that matter here, for the main server or one vhost.
#[derive(Debug, Default, Clone)]
struct Scope {
    ssl_engine: Option<bool>,
    certs: Vec<Value>,
    keys: Vec<Value>,
    chain: Option<Value>,
    server_name: Option<Value>,
    aliases: Vec<Value>,
    notes: Vec<String>,
}

#[derive(Debug)]
struct Vhost {
    addrs: Vec<String>,
    source: String,
    scope: Scope,
}

/// An open `<Section>`: lowercased name and where it was opened.
#[derive(Debug)]
struct Open {
    name: String,
    file: PathBuf,
    line: usize,
}

struct Reader {
    server_root: PathBuf,
    defines: HashMap<String, String>,
    global: Scope,
    /// `Listen` addresses: (host, port).
    listens: Vec<(Option<String>, u16)>,
    vhosts: Vec<Vhost>,
    current: Option<Vhost>,
    sections: Vec<Open>,
    /// Files being read (canonical), for cycle detection.
    active: Vec<PathBuf>,
}

impl Reader {
    /// Read one file; `from` is the Include that named it.
    fn read_file(
        &mut self,
        path: &Path,
        depth: usize,
        from: Option<(&Path, usize)>,
    ) -> Result<(), DiscoverError> {
        let (from_file, from_line) = from.unwrap_or((path, 0));
        if depth > MAX_INCLUDE_DEPTH {
            return Err(DiscoverError::IncludeDepth {
                file: from_file.to_path_buf(),
                line: from_line,
                limit: MAX_INCLUDE_DEPTH,
            });
        }
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if self.active.contains(&canonical) {
            return Err(DiscoverError::IncludeCycle {
                file: from_file.to_path_buf(),
                line: from_line,
                path: path.to_path_buf(),
            });
        }
        let bytes = std::fs::read(path).map_err(|source| DiscoverError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let open_before = self.sections.len();
        self.active.push(canonical);
        let result = logical_lines(&text)
            .into_iter()
            .try_for_each(|(line, l)| self.line(path, line, &l, depth));
        self.active.pop();
        result?;
        // httpd requires a section to close in the file that opened it.
        if self.sections.len() > open_before
            && let Some(open) = self.sections.pop()
        {
            return Err(DiscoverError::Syntax {
                file: open.file,
                line: open.line,
                message: format!("<{}> is not closed in this file", open.name),
            });
        }
        Ok(())
    }

    fn in_macro(&self) -> bool {
        self.sections.iter().any(|s| s.name == "macro")
    }

    fn scope(&mut self) -> &mut Scope {
        match &mut self.current {
            Some(v) => &mut v.scope,
            None => &mut self.global,
        }
    }

    /// One logical line.
    fn line(
        &mut self,
        file: &Path,
        line: usize,
        text: &str,
        depth: usize,
    ) -> Result<(), DiscoverError> {
        let written = first_arg_at(text);
        let text = text.trim();
        if text.is_empty() || text.starts_with('#') {
            return Ok(());
        }
        let syntax = |message: String| DiscoverError::Syntax {
            file: file.to_path_buf(),
            line,
            message,
        };

        // Sections.
        if let Some(name) = text.strip_prefix("</") {
            let name = name.trim_end_matches('>').trim().to_ascii_lowercase();
            let open = self
                .sections
                .pop()
                .ok_or_else(|| syntax(format!("</{name}> without an opening section")))?;
            if open.name != name {
                return Err(syntax(format!(
                    "</{name}> closes <{}> opened at {}:{}",
                    open.name,
                    open.file.display(),
                    open.line
                )));
            }
            if name == "virtualhost"
                && !self.in_macro()
                && let Some(v) = self.current.take()
            {
                self.vhosts.push(v);
            }
            return Ok(());
        }
        if let Some(rest) = text.strip_prefix('<') {
            let rest = rest.strip_suffix('>').unwrap_or(rest);
            let (name, args) = split_name(rest);
            let name = name.to_ascii_lowercase();
            if name == "virtualhost" && !self.in_macro() {
                if self.current.is_some() {
                    return Err(syntax("<VirtualHost> cannot be nested".into()));
                }
                let args = self.substitute(args);
                self.current = Some(Vhost {
                    addrs: words(&args),
                    source: format!("{}:{line}", file.display()),
                    scope: Scope::default(),
                });
            }
            self.sections.push(Open {
                name,
                file: file.to_path_buf(),
                line,
            });
            return Ok(());
        }
        if self.in_macro() {
            return Ok(());
        }

        // Directives.
        let (name, args) = split_name(text);
        let name = name.to_ascii_lowercase();
        let args = words(&self.substitute(args));
        let Some(first) = args.first().cloned() else {
            return Ok(());
        };
        let value = |raw: &str| Value {
            raw: raw.to_string(),
            unresolved: find_var(raw),
            at: written
                .clone()
                .map(|(col, w)| (name.clone(), file.to_path_buf(), line, col, w)),
        };
        match name.as_str() {
            "define" => {
                let v = args.get(1).cloned().unwrap_or_default();
                self.defines.insert(first, v);
            }
            "undefine" => {
                self.defines.remove(&first);
            }
            "serverroot" if self.current.is_none() => {
                self.server_root = self.server_root.join(first);
            }
            "include" | "includeoptional" => {
                let optional = name == "includeoptional";
                let directive = if optional {
                    "IncludeOptional"
                } else {
                    "Include"
                };
                self.include(directive, &first, optional, file, line, depth)?;
            }
            "listen" => {
                if let Some((host, Some(port))) = parse_addr(&first) {
                    push_unique(&mut self.listens, (host, port));
                }
            }
            "servername" => self.scope().server_name = Some(value(&first)),
            "serveralias" => {
                let aliases: Vec<Value> = args.iter().map(|a| value(a)).collect();
                self.scope().aliases.extend(aliases);
            }
            "sslengine" => {
                let on = first.eq_ignore_ascii_case("on");
                if first.eq_ignore_ascii_case("optional") {
                    push_unique(
                        &mut self.scope().notes,
                        "SSLEngine optional (TLS upgrade, no TLS handshake on connect); not probed"
                            .into(),
                    );
                }
                self.scope().ssl_engine = Some(on);
            }
            "sslcertificatefile" => self.scope().certs.push(value(&first)),
            "sslcertificatekeyfile" => self.scope().keys.push(value(&first)),
            "sslcertificatechainfile" => self.scope().chain = Some(value(&first)),
            _ => {}
        }
        Ok(())
    }

    /// `${VAR}` replaced by Define'd values; unknown ones stay as written.
    fn substitute(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            match after.find('}') {
                Some(end) => {
                    let name = &after[..end];
                    match self.defines.get(name) {
                        Some(v) => out.push_str(v),
                        None => out.push_str(&rest[i..i + 2 + end + 1]),
                    }
                    rest = &after[end + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out
    }

    fn include(
        &mut self,
        directive: &str,
        pattern: &str,
        optional: bool,
        file: &Path,
        line: usize,
        depth: usize,
    ) -> Result<(), DiscoverError> {
        let err = |reason: String| DiscoverError::Include {
            file: file.to_path_buf(),
            line,
            directive: directive.to_string(),
            pattern: pattern.to_string(),
            reason,
        };
        if let Some(var) = find_var(pattern) {
            if optional {
                tracing::warn!(
                    "{}:{line}: IncludeOptional {pattern} uses {var}, which no Define sets; skipped",
                    file.display()
                );
                return Ok(());
            }
            return Err(err(format!("uses {var}, which no Define sets")));
        }
        let full = self.server_root.join(pattern);
        let files = match expand_include(&full) {
            Ok(files) => files,
            Err(_) if optional => return Ok(()),
            Err(why) => return Err(err(why)),
        };
        if files.is_empty() && !optional {
            return Err(err("no file matches the wildcard".into()));
        }
        for f in files {
            self.read_file(&f, depth + 1, Some((file, line)))?;
        }
        Ok(())
    }

    /// Every vhost with TLS as a site.
    fn finish(self) -> Vec<DiscoveredSite> {
        self.vhosts.iter().filter_map(|v| self.site(v)).collect()
    }

    fn site(&self, v: &Vhost) -> Option<DiscoveredSite> {
        let g = &self.global;
        let s = &v.scope;
        let mut notes = s.notes.clone();
        match (s.ssl_engine, g.ssl_engine) {
            (Some(true), _) => {}
            (None, Some(true)) => notes.push("SSLEngine on inherited from the main server".into()),
            _ => return None,
        }

        // 1. Endpoints.
        let mut endpoints = Vec::new();
        let mut first_port = None;
        for addr in &v.addrs {
            let Some((host, port)) = parse_addr(addr) else {
                push_unique(
                    &mut notes,
                    format!("VirtualHost address {addr} not understood"),
                );
                continue;
            };
            let ports: Vec<u16> = match port {
                Some(p) => vec![p],
                None => {
                    let ports: Vec<u16> = self.listens.iter().map(|(_, p)| *p).collect();
                    push_unique(
                        &mut notes,
                        if ports.is_empty() {
                            format!("VirtualHost {addr} has no port and there is no Listen")
                        } else {
                            format!("VirtualHost {addr} has no port; using the Listen ports")
                        },
                    );
                    ports
                }
            };
            for port in ports {
                first_port.get_or_insert(port);
                for ep in self.endpoints_for(host.as_deref(), port) {
                    push_unique(&mut endpoints, ep);
                }
            }
        }

        // 2. Names.
        let mut candidates = Vec::new();
        let server_name = match (&s.server_name, &g.server_name) {
            (Some(n), _) => Some(n),
            (None, Some(n)) => {
                notes.push("no ServerName in the vhost; the main server's applies".into());
                Some(n)
            }
            (None, None) => None,
        };
        if let Some(n) = server_name {
            match &n.unresolved {
                Some(var) => push_unique(
                    &mut notes,
                    format!("ServerName uses {var}, which no Define sets; left out"),
                ),
                None => candidates.push(host_of_server_name(&n.raw)),
            }
        }
        for a in &s.aliases {
            if let Some(var) = &a.unresolved {
                push_unique(
                    &mut notes,
                    format!("ServerAlias uses {var}, which no Define sets; left out"),
                );
            } else if a.raw.starts_with("*.") && !has_glob(&a.raw[2..]) || !has_glob(&a.raw) {
                candidates.push(a.raw.clone());
            } else {
                push_unique(
                    &mut notes,
                    format!("ServerAlias {} is a pattern; left out", a.raw),
                );
            }
        }
        let (name, names) = pick_names(&candidates);
        let name = name.unwrap_or_else(|| format!("default-{}", first_port.unwrap_or(443)));

        // 3. Files: the vhost's, else the main server's.
        let (certs, keys) = if s.certs.is_empty() && !g.certs.is_empty() {
            notes.push("SSLCertificateFile inherited from the main server".into());
            let keys = if s.keys.is_empty() { &g.keys } else { &s.keys };
            (&g.certs, keys)
        } else {
            let keys = if s.keys.is_empty() && s.certs.is_empty() {
                &g.keys
            } else if s.keys.is_empty() && !g.keys.is_empty() {
                notes.push("SSLCertificateKeyFile inherited from the main server".into());
                &g.keys
            } else {
                &s.keys
            };
            (&s.certs, keys)
        };
        if certs.is_empty() {
            notes.push(
                "SSLEngine on but no SSLCertificateFile in the vhost or the main server".into(),
            );
        }
        let mut cert_paths = Vec::new();
        let mut pairs = Vec::new();
        let mut first_key = None;
        for (i, c) in certs.iter().enumerate() {
            let cert = self.resolve(c, "SSLCertificateFile", &mut notes);
            let key = match keys.get(i) {
                Some(k) => self.resolve(k, "SSLCertificateKeyFile", &mut notes),
                None => {
                    if let Some(c) = &cert {
                        push_unique(
                            &mut notes,
                            format!(
                                "no SSLCertificateKeyFile for {}: the key is expected inside that file",
                                c.display()
                            ),
                        );
                    }
                    cert.clone()
                }
            };
            if i == 0 {
                first_key = key.clone();
            }
            if let (Some(c), Some(k)) = (&cert, &key) {
                pairs.push((c.clone(), k.clone()));
            }
            cert_paths.push(cert);
        }
        let chain = s
            .chain
            .as_ref()
            .or(g.chain.as_ref())
            .and_then(|c| self.resolve(c, "SSLCertificateChainFile", &mut notes));

        // Where each resolved path is written, for `certswap adopt`.
        let mut refs = Vec::new();
        let written = certs
            .iter()
            .chain(keys.iter())
            .chain(s.chain.as_ref().or(g.chain.as_ref()));
        for v in written {
            if let (Some((directive, file, line, col, raw)), None) = (&v.at, &v.unresolved) {
                refs.push(ConfigRef {
                    directive: directive.clone(),
                    path: self.server_root.join(&v.raw),
                    file: file.clone(),
                    line: *line,
                    col: *col,
                    raw: raw.clone(),
                });
            }
        }

        Some(DiscoveredSite {
            name,
            names,
            cert: cert_paths.first().cloned().flatten(),
            key: first_key,
            chain,
            pairs,
            endpoints,
            source: v.source.clone(),
            notes,
            refs,
            acme: Vec::new(),
            server: None,
        })
    }

    /// Where to connect for a vhost address: a wildcard on a port apache
    /// listens on only at specific addresses uses those addresses.
    fn endpoints_for(&self, host: Option<&str>, port: u16) -> Vec<String> {
        if !is_wildcard(host) {
            return vec![endpoint(host, port)];
        }
        let specific: Vec<String> = self
            .listens
            .iter()
            .filter(|(h, p)| *p == port && !is_wildcard(h.as_deref()))
            .map(|(h, p)| endpoint(h.as_deref(), *p))
            .collect();
        let any_wildcard = self
            .listens
            .iter()
            .any(|(h, p)| *p == port && is_wildcard(h.as_deref()));
        if specific.is_empty() || any_wildcard {
            vec![endpoint(None, port)]
        } else {
            specific
        }
    }

    /// A file path relative to the (final) ServerRoot, or a note.
    fn resolve(&self, v: &Value, directive: &str, notes: &mut Vec<String>) -> Option<PathBuf> {
        if let Some(var) = &v.unresolved {
            push_unique(
                notes,
                format!("{directive} uses {var}, which no Define sets; cannot resolve"),
            );
            return None;
        }
        Some(self.server_root.join(&v.raw))
    }
}

/// Files an Include names, in httpd's order: glob matches sorted, a
/// directory's files (recursively, sorted). Err when nothing by that name
/// exists.
fn expand_include(full: &Path) -> Result<Vec<PathBuf>, String> {
    let text = full.to_string_lossy();
    let candidates: Vec<PathBuf> = if has_glob(&text) {
        let mut bases = vec![PathBuf::new()];
        for comp in full.components() {
            let c = comp.as_os_str().to_string_lossy();
            if !has_glob(&c) {
                bases.iter_mut().for_each(|b| b.push(comp));
                continue;
            }
            let mut next = Vec::new();
            for b in &bases {
                let Ok(dir) = std::fs::read_dir(b) else {
                    continue;
                };
                let mut hits: Vec<PathBuf> = dir
                    .filter_map(Result::ok)
                    .filter(|e| fnmatch(&c, &e.file_name().to_string_lossy()))
                    .map(|e| e.path())
                    .collect();
                hits.sort();
                next.extend(hits);
            }
            bases = next;
        }
        bases.into_iter().filter(|p| p.exists()).collect()
    } else if full.exists() {
        vec![full.to_path_buf()]
    } else {
        return Err("no such file or directory".into());
    };
    let mut out = Vec::new();
    for c in candidates {
        dir_files(&c, 0, &mut out);
    }
    Ok(out)
}

/// `path` itself, or every file below the directory `path`, sorted.
fn dir_files(path: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if !path.is_dir() {
        out.push(path.to_path_buf());
        return;
    }
    if depth >= MAX_INCLUDE_DEPTH {
        return;
    }
    let Ok(dir) = std::fs::read_dir(path) else {
        return;
    };
    let mut entries: Vec<PathBuf> = dir.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for e in entries {
        dir_files(&e, depth + 1, out);
    }
}

/// (line number of the first physical line, logical line) with `\`
/// continuations joined.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut start = 0;
    let mut continuing = false;
    for (i, l) in text.lines().enumerate() {
        if !continuing {
            start = i + 1;
        }
        if l.ends_with('\\') && !l.ends_with("\\\\") {
            cur.push_str(&l[..l.len() - 1]);
            continuing = true;
            continue;
        }
        cur.push_str(l);
        out.push((start, std::mem::take(&mut cur)));
        continuing = false;
    }
    if continuing {
        out.push((start, cur));
    }
    out
}

/// The first argument of a directive line as written: (column in
/// characters, text with its quotes).
fn first_arg_at(line: &str) -> Option<(usize, String)> {
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    while i < chars.len() && !chars[i].is_whitespace() {
        i += 1;
    }
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    let start = i;
    let q = *chars.get(i)?;
    if q == '"' || q == '\'' {
        i += 1;
        while i < chars.len() && chars[i] != q {
            i += if chars[i] == '\\' { 2 } else { 1 };
        }
        i = (i + 1).min(chars.len());
    } else {
        while i < chars.len() && !chars[i].is_whitespace() {
            i += 1;
        }
    }
    Some((start, chars[start..i].iter().collect()))
}

/// `Name rest of line` → ("Name", "rest of line").
fn split_name(s: &str) -> (&str, &str) {
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// httpd's `ap_getword_conf`: whitespace-separated words, `"..."` or
/// `'...'` quoting with `\"` / `\'` for the quote inside.
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(c) = chars.next() else {
            break;
        };
        let mut w = String::new();
        if c == '"' || c == '\'' {
            while let Some(ch) = chars.next() {
                if ch == '\\' && chars.peek() == Some(&c) {
                    w.push(c);
                    chars.next();
                } else if ch == c {
                    break;
                } else {
                    w.push(ch);
                }
            }
        } else {
            w.push(c);
            while let Some(ch) = chars.next_if(|c| !c.is_whitespace()) {
                w.push(ch);
            }
        }
        out.push(w);
    }
    out
}

/// A leftover `${NAME}`, as written.
fn find_var(s: &str) -> Option<String> {
    let i = s.find("${")?;
    let end = s[i..].find('}')?;
    Some(s[i..i + end + 1].to_string())
}

/// `addr[:port]`, `[v6][:port]`, `port` (Listen), `*`, `*:*`,
/// `_default_:443` → (host, port); None when the port is not a number.
fn parse_addr(a: &str) -> Option<(Option<String>, Option<u16>)> {
    let port = |p: &str| -> Option<Option<u16>> {
        if p == "*" {
            Some(None)
        } else {
            p.parse::<u16>().ok().filter(|p| *p != 0).map(Some)
        }
    };
    if let Some(rest) = a.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let p = match after.strip_prefix(':') {
            Some(p) => port(p)?,
            None => None,
        };
        return Some((Some(h.to_string()), p));
    }
    if a.chars().all(|c| c.is_ascii_digit()) {
        return Some((None, port(a)?));
    }
    match a.rsplit_once(':') {
        Some((h, p)) => Some((Some(h.to_string()), port(p)?)),
        None => Some((Some(a.to_string()), None)),
    }
}

/// `ServerName [scheme://]host[:port]` → host.
fn host_of_server_name(s: &str) -> String {
    let s = s.split_once("://").map(|(_, r)| r).unwrap_or(s);
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_string();
    }
    match s.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h.to_string(),
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(dir: &Path, rel: &str, text: &str) -> PathBuf {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("mkdir");
        }
        fs::write(&p, text).expect("write");
        p
    }

    fn by_name<'a>(sites: &'a [DiscoveredSite], name: &str) -> &'a DiscoveredSite {
        sites
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no site {name} in {sites:#?}"))
    }

    #[test]
    fn vhost_with_chain_ifmodule_and_aliases() {
        let d = tempfile::tempdir().expect("tempdir");
        let conf = write(
            d.path(),
            "httpd.conf",
            "# main\nListen 443\n<IfModule mod_ssl.c>\n  <VirtualHost *:443 [::]:443>\n    ServerName https://Www.Example.com:443\n    ServerAlias example.com \\\n        alt.example.com *.example.com www.example.*\n    sslengine ON\n    SSLCertificateFile \"/etc/ssl/my certs/www_public.crt\"\n    SSLCertificateKeyFile /etc/ssl/www.key\n    SSLCertificateChainFile ssl/www_chain.crt\n  </VirtualHost>\n</IfModule>\n<VirtualHost *:80>\n  ServerName www.example.com\n</VirtualHost>\n",
        );
        let sites = parse_config(&conf, Some(Path::new("/etc/apache2"))).expect("parse");
        assert_eq!(sites.len(), 1, "{sites:#?}");
        let s = &sites[0];
        assert_eq!(s.name, "www.example.com");
        assert_eq!(
            s.names,
            vec!["example.com", "alt.example.com", "*.example.com"]
        );
        assert_eq!(s.endpoints, vec!["127.0.0.1:443"]);
        assert_eq!(
            s.cert.as_deref(),
            Some(Path::new("/etc/ssl/my certs/www_public.crt"))
        );
        assert_eq!(s.key.as_deref(), Some(Path::new("/etc/ssl/www.key")));
        assert_eq!(
            s.chain.as_deref(),
            Some(Path::new("/etc/apache2/ssl/www_chain.crt"))
        );
        assert_eq!(s.source, format!("{}:4", conf.display()));
        assert!(
            s.notes.iter().any(|n| n.contains("www.example.*")),
            "{:?}",
            s.notes
        );
        // Where adopt would change each path.
        let at: Vec<_> = s
            .refs
            .iter()
            .map(|r| (r.directive.as_str(), r.line, r.col, r.raw.as_str()))
            .collect();
        assert_eq!(
            at,
            vec![
                (
                    "sslcertificatefile",
                    9,
                    23,
                    "\"/etc/ssl/my certs/www_public.crt\""
                ),
                ("sslcertificatekeyfile", 10, 26, "/etc/ssl/www.key"),
                ("sslcertificatechainfile", 11, 28, "ssl/www_chain.crt"),
            ]
        );
        assert_eq!(s.refs[2].path, Path::new("/etc/apache2/ssl/www_chain.crt"));
    }

    #[test]
    fn includes_globs_directories_and_defines() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path();
        let conf = write(
            root,
            "httpd.conf",
            "Define SSLDIR /srv/ssl\nListen 127.0.0.1:8443 https\nInclude sites/*.conf\nIncludeOptional missing/*.conf\nIncludeOptional nothing-here.conf\nInclude extra\n",
        );
        write(
            root,
            "sites/b.conf",
            "<VirtualHost *:8443>\nServerName b.test\nSSLEngine on\nSSLCertificateFile ${SSLDIR}/b.pem\n</VirtualHost>\n",
        );
        write(
            root,
            "sites/a.conf",
            "<VirtualHost 10.0.0.1:443>\nServerName a.test\nSSLEngine on\nSSLCertificateFile ${NOPE}/a.pem\nSSLCertificateKeyFile ${SSLDIR}/a.key\n</VirtualHost>\n",
        );
        write(root, "sites/.hidden.conf", "<VirtualHost *:1>\n");
        write(
            root,
            "extra/sub/c.conf",
            "<VirtualHost _default_:8443>\nSSLEngine on\nSSLCertificateFile c.pem\nSSLCertificateKeyFile c.key\n</VirtualHost>\n",
        );
        let sites = parse_config(&conf, None).expect("parse");
        let names: Vec<_> = sites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["a.test", "b.test", "default-8443"]);

        let a = by_name(&sites, "a.test");
        assert_eq!(a.endpoints, vec!["10.0.0.1:443"]);
        assert_eq!(a.cert, None);
        assert!(
            a.notes.iter().any(|n| n.contains("${NOPE}")),
            "{:?}",
            a.notes
        );
        let b = by_name(&sites, "b.test");
        // A wildcard vhost on a port apache listens on only at 127.0.0.1.
        assert_eq!(b.endpoints, vec!["127.0.0.1:8443"]);
        assert_eq!(b.cert.as_deref(), Some(Path::new("/srv/ssl/b.pem")));
        // No key file: the key is in the cert file.
        assert_eq!(b.key, b.cert);
        assert!(b.notes.iter().any(|n| n.contains("key is expected")));
        let c = by_name(&sites, "default-8443");
        assert_eq!(c.cert, Some(root.join("c.pem")));
    }

    #[test]
    fn global_ssl_settings_are_inherited_and_dual_certs_paired() {
        let d = tempfile::tempdir().expect("tempdir");
        let conf = write(
            d.path(),
            "httpd.conf",
            "ServerRoot /etc/httpd\nServerName main.test\nSSLEngine on\nSSLCertificateFile /s/main.pem\nSSLCertificateKeyFile /s/main.key\n<VirtualHost *:443>\n</VirtualHost>\n<VirtualHost *:8443>\nServerName dual.test\nSSLCertificateFile /s/rsa.pem\nSSLCertificateKeyFile /s/rsa.key\nSSLCertificateFile /s/ec.pem\nSSLCertificateKeyFile /s/ec.key\n</VirtualHost>\n<VirtualHost *:8444>\nServerName off.test\nSSLEngine off\n</VirtualHost>\n",
        );
        let sites = parse_config(&conf, None).expect("parse");
        assert_eq!(sites.len(), 2, "{sites:#?}");
        let m = by_name(&sites, "main.test");
        assert_eq!(m.cert.as_deref(), Some(Path::new("/s/main.pem")));
        assert!(m.notes.iter().any(|n| n.contains("inherited")));
        let dual = by_name(&sites, "dual.test");
        assert_eq!(
            dual.pairs,
            vec![
                ("/s/rsa.pem".into(), "/s/rsa.key".into()),
                ("/s/ec.pem".into(), "/s/ec.key".into())
            ]
        );
    }

    #[test]
    fn include_errors_name_the_file() {
        let d = tempfile::tempdir().expect("tempdir");
        let conf = write(d.path(), "httpd.conf", "\nInclude nope/*.conf\n");
        fs::create_dir_all(d.path().join("nope")).expect("mkdir");
        let e = parse_config(&conf, None).expect_err("no match");
        let msg = e.to_string();
        assert!(msg.contains("httpd.conf:2"), "{msg}");
        assert!(msg.contains("nope/*.conf"), "{msg}");

        let conf = write(d.path(), "loop.conf", "Include loop.conf\n");
        let e = parse_config(&conf, None).expect_err("cycle");
        assert!(matches!(e, DiscoverError::IncludeCycle { .. }), "{e}");

        let conf = write(d.path(), "open.conf", "<VirtualHost *:443>\nSSLEngine on\n");
        let e = parse_config(&conf, None).expect_err("unclosed");
        assert!(e.to_string().contains("open.conf:1"), "{e}");

        let conf = write(d.path(), "stray.conf", "</VirtualHost>\n");
        assert!(parse_config(&conf, None).is_err());

        let e = parse_config(&d.path().join("absent.conf"), None).expect_err("absent");
        assert!(matches!(e, DiscoverError::Read { .. }), "{e}");
    }

    #[test]
    fn include_depth_is_limited() {
        let d = tempfile::tempdir().expect("tempdir");
        for i in 0..=MAX_INCLUDE_DEPTH + 1 {
            write(
                d.path(),
                &format!("f{i}.conf"),
                &format!("Include f{}.conf\n", i + 1),
            );
        }
        let e = parse_config(&d.path().join("f0.conf"), None).expect_err("too deep");
        assert!(matches!(e, DiscoverError::IncludeDepth { .. }), "{e}");
    }

    #[test]
    fn macros_are_skipped_and_words_parsed() {
        let d = tempfile::tempdir().expect("tempdir");
        let conf = write(
            d.path(),
            "httpd.conf",
            "<Macro VHost $name>\n<VirtualHost *:443>\nServerName $name\nSSLEngine on\n</VirtualHost>\n</Macro>\n",
        );
        assert!(parse_config(&conf, None).expect("parse").is_empty());
        assert_eq!(
            words(r#"a "b c" 'd \' e' f"g"#),
            vec!["a", "b c", "d ' e", "f\"g"]
        );
        assert_eq!(host_of_server_name("[::1]:443"), "::1");
        assert_eq!(parse_addr("*:*"), Some((Some("*".into()), None)));
        assert_eq!(parse_addr("[::]:443"), Some((Some("::".into()), Some(443))));
    }
}
