//! nginx discovery: run `nginx -T` (config test + dump of every file it
//! read, on stdout), split the dump into files, tokenize them the way
//! nginx's `ngx_conf_read_token` does, follow `include`s through the dumped
//! files, and turn every `http { server { ... } }` that listens with TLS
//! into a [`DiscoveredSite`].
//!
//! Relative paths (`include`, `ssl_certificate`) resolve against nginx's
//! conf prefix: the directory of the main config file (which itself is
//! relative to `-p PREFIX` when relative).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{
    ConfigRef, DiscoverError, DiscoveredSite, MAX_INCLUDE_DEPTH, endpoint, has_glob, path_match,
    pick_names, push_unique,
};
use crate::config::ServerConfig;

/// Run `BINARY -T -q [-p PREFIX] -c CONFIG` and parse its dump.
pub fn discover(cfg: &ServerConfig) -> Result<Vec<DiscoveredSite>, DiscoverError> {
    let mut cmd = Command::new(&cfg.binary);
    cmd.arg("-T").arg("-q");
    if let Some(p) = &cfg.prefix {
        cmd.arg("-p").arg(p);
    }
    cmd.arg("-c").arg(&cfg.config);
    cmd.stdin(Stdio::null());
    let command = format!(
        "{} -T -q{} -c {}",
        cfg.binary.display(),
        cfg.prefix
            .as_ref()
            .map(|p| format!(" -p {}", p.display()))
            .unwrap_or_default(),
        cfg.config.display()
    );
    let out = cmd.output().map_err(|source| DiscoverError::Spawn {
        binary: cfg.binary.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(DiscoverError::Dump {
            command,
            status: out.status.to_string(),
            output: summarize(&String::from_utf8_lossy(&out.stderr)),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.lines().any(|l| header_path(l).is_some()) {
        return Err(DiscoverError::EmptyDump { command });
    }
    let prefix = cfg
        .prefix
        .clone()
        .or_else(|| cfg.config.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("/"));
    Ok(parse_dump(&text, &prefix))
}

/// The TLS server blocks of an `nginx -T` dump. The first dumped file is
/// the main config; when its path is relative it is taken relative to
/// `prefix` (nginx's `-p`). Relative paths in the config resolve against
/// the main config's directory, as nginx does.
pub fn parse_dump(text: &str, prefix: &Path) -> Vec<DiscoveredSite> {
    let files: Vec<DumpFile> = split_dump(text)
        .into_iter()
        .enumerate()
        .map(|(i, (path, body))| DumpFile {
            path: prefix.join(path),
            items: parse_items(&tokenize(&body), i),
        })
        .collect();
    let Some(main) = files.first() else {
        return Vec::new();
    };
    let conf_dir = main
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| prefix.to_path_buf());
    let dump = Dump {
        files: &files,
        conf_dir,
    };
    let mut sites = Vec::new();
    for top in dump.expand(&main.items) {
        if top.name == "http"
            && let Some(block) = &top.block
        {
            sites.extend(dump.http_sites(block));
        }
    }
    sites
}

/// One dumped file, parsed.
struct DumpFile {
    path: PathBuf,
    items: Vec<Directive>,
}

/// `name args... ;` or `name args... { block }`.
#[derive(Debug)]
struct Directive {
    name: String,
    args: Vec<String>,
    /// Where each argument is written: (line, column, raw text).
    at: Vec<(usize, usize, String)>,
    /// Index of the file in the dump.
    file: usize,
    line: usize,
    block: Option<Vec<Directive>>,
}

/// `# configuration file /etc/nginx/nginx.conf:` → the path.
fn header_path(line: &str) -> Option<&str> {
    line.strip_prefix("# configuration file ")?
        .strip_suffix(':')
}

/// (path, contents) of every dumped file. nginx writes a newline after each
/// file's contents; that one is dropped again.
fn split_dump(text: &str) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = Vec::new();
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches('\n').trim_end_matches('\r');
        if let Some(path) = header_path(bare) {
            files.push((path.to_string(), String::new()));
        } else if let Some((_, body)) = files.last_mut() {
            body.push_str(line);
        }
    }
    for (_, body) in &mut files {
        if body.ends_with('\n') {
            body.pop();
        }
    }
    files
}

#[derive(Debug, PartialEq)]
enum Tok {
    Word(Word),
    Semi,
    Open,
    Close,
}

/// A word as nginx reads it, and where and how it is written.
#[derive(Debug, Clone, PartialEq)]
struct Word {
    text: String,
    /// The characters of the file it was read from (quotes included).
    raw: String,
    /// 0-based column (characters) of its first character.
    col: usize,
}

/// Tokens with their line numbers. Words end at whitespace, `;` or `{`
/// (not `${`); `#` starts a comment only where a token could start; quoted
/// strings and `\` escapes as in nginx. Malformed input (an unclosed quote)
/// ends the token at the end of the text: the dump passed `nginx -t`.
fn tokenize(text: &str) -> Vec<(Tok, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    // Index of the first character of the current line.
    let mut line_start = 0;
    let mut i = 0;
    let word = |chars: &[char], text: String, from: usize, to: usize, col: usize| Word {
        text,
        raw: chars[from..to.min(chars.len())].iter().collect(),
        col,
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\n' => {
                line += 1;
                i += 1;
                line_start = i;
            }
            c if c.is_whitespace() => i += 1,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            ';' | '{' | '}' => {
                let tok = match c {
                    ';' => Tok::Semi,
                    '{' => Tok::Open,
                    _ => Tok::Close,
                };
                out.push((tok, line));
                i += 1;
            }
            '"' | '\'' => {
                let start = line;
                let (from, col) = (i, i - line_start);
                let mut text = String::new();
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        if chars[i + 1] == '\n' {
                            line += 1;
                            line_start = i + 2;
                        }
                        unescape(chars[i + 1], &mut text);
                        i += 2;
                        continue;
                    }
                    if chars[i] == '\n' {
                        line += 1;
                        line_start = i + 1;
                    }
                    text.push(chars[i]);
                    i += 1;
                }
                i += 1; // the closing quote
                out.push((Tok::Word(word(&chars, text, from, i, col)), start));
            }
            _ => {
                let start = line;
                let (from, col) = (i, i - line_start);
                let mut text = String::new();
                while i < chars.len() {
                    let ch = chars[i];
                    if ch == '\\' && i + 1 < chars.len() {
                        if chars[i + 1] == '\n' {
                            line += 1;
                            line_start = i + 2;
                        }
                        unescape(chars[i + 1], &mut text);
                        i += 2;
                        continue;
                    }
                    let var_brace = ch == '{' && text.ends_with('$');
                    if ch.is_whitespace() || ch == ';' || (ch == '{' && !var_brace) {
                        break;
                    }
                    text.push(ch);
                    i += 1;
                }
                out.push((Tok::Word(word(&chars, text, from, i, col)), start));
            }
        }
    }
    out
}

/// nginx keeps `\x` as is except for quotes, backslash, t, r, n.
fn unescape(c: char, word: &mut String) {
    match c {
        '"' | '\'' | '\\' => word.push(c),
        't' => word.push('\t'),
        'r' => word.push('\r'),
        'n' => word.push('\n'),
        other => {
            word.push('\\');
            word.push(other);
        }
    }
}

/// One open block while parsing: its directives so far, and the head
/// (words, line) that opened it (None for the file's top level).
type Frame = (Vec<Directive>, Option<(Vec<(Word, usize)>, usize)>);

/// Blocks nested deeper than this are dropped: real configs nest a few
/// levels, and the tree is dropped recursively.
const MAX_NESTING: usize = 64;

/// Build the directive tree of one file without recursion (a hostile dump
/// cannot exhaust the stack). Unbalanced braces are closed leniently.
fn parse_items(tokens: &[(Tok, usize)], file: usize) -> Vec<Directive> {
    let mut stack: Vec<Frame> = vec![(Vec::new(), None)];
    let mut words: Vec<(Word, usize)> = Vec::new();
    let mut first_line = 0;
    // Open blocks beyond MAX_NESTING, skipped with their contents.
    let mut too_deep = 0usize;
    for (tok, line) in tokens {
        if too_deep > 0 {
            match tok {
                Tok::Open => too_deep += 1,
                Tok::Close => too_deep -= 1,
                _ => {}
            }
            continue;
        }
        match tok {
            Tok::Word(w) => {
                if words.is_empty() {
                    first_line = *line;
                }
                words.push((w.clone(), *line));
            }
            Tok::Semi => {
                if let Some(d) = directive(std::mem::take(&mut words), file, first_line, None)
                    && let Some((items, _)) = stack.last_mut()
                {
                    items.push(d);
                }
            }
            Tok::Open if stack.len() > MAX_NESTING => {
                words.clear();
                too_deep = 1;
            }
            Tok::Open => {
                let head = std::mem::take(&mut words);
                let line = if head.is_empty() { *line } else { first_line };
                stack.push((Vec::new(), Some((head, line))));
            }
            Tok::Close => {
                words.clear();
                close_frame(&mut stack, file);
            }
        }
    }
    while stack.len() > 1 {
        close_frame(&mut stack, file);
    }
    stack.pop().map(|(items, _)| items).unwrap_or_default()
}

fn close_frame(stack: &mut Vec<Frame>, file: usize) {
    if stack.len() < 2 {
        return; // a stray '}'
    }
    if let Some((items, Some((head, line)))) = stack.pop()
        && let Some(d) = directive(head, file, line, Some(items))
        && let Some((parent, _)) = stack.last_mut()
    {
        parent.push(d);
    }
}

fn directive(
    mut words: Vec<(Word, usize)>,
    file: usize,
    line: usize,
    block: Option<Vec<Directive>>,
) -> Option<Directive> {
    if words.is_empty() {
        return None;
    }
    let (name, _) = words.remove(0);
    Some(Directive {
        name: name.text,
        args: words.iter().map(|(w, _)| w.text.clone()).collect(),
        at: words.into_iter().map(|(w, l)| (l, w.col, w.raw)).collect(),
        file,
        line,
        block,
    })
}

/// A `listen` directive.
#[derive(Debug, Clone)]
struct Listen {
    /// None for a wildcard (`443`, `*:443`).
    host: Option<String>,
    port: u16,
    ssl: bool,
    default_server: bool,
    /// HTTP/3 over UDP: not a TCP TLS endpoint.
    quic: bool,
    text: String,
}

impl Listen {
    /// Sockets nginx shares between server blocks: `ssl` on one applies to
    /// all blocks listening on the same address and port.
    fn socket(&self) -> (String, u16) {
        let host = match self.host.as_deref() {
            None | Some("*") => "0.0.0.0".to_string(),
            Some(h) => h.to_ascii_lowercase(),
        };
        (host, self.port)
    }
}

/// Parse `listen ADDR[:PORT] [flags]`; Err says why it is not probed.
fn parse_listen(args: &[String]) -> Result<Listen, String> {
    let Some(addr) = args.first() else {
        return Err("listen has no address".into());
    };
    if addr.starts_with("unix:") {
        return Err(format!("listen {addr} is a unix socket; not probed"));
    }
    let bad_port = || format!("listen {addr} has no usable port");
    let parse_port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0);
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad_port)?;
        let port = match after.strip_prefix(':') {
            Some(p) => parse_port(p).ok_or_else(bad_port)?,
            None => 80,
        };
        (Some(format!("[{h}]")), port)
    } else if addr.chars().all(|c| c.is_ascii_digit()) {
        (None, parse_port(addr).ok_or_else(bad_port)?)
    } else if let Some((h, p)) = addr.rsplit_once(':') {
        (Some(h.to_string()), parse_port(p).ok_or_else(bad_port)?)
    } else {
        (Some(addr.clone()), 80)
    };
    let host = host.filter(|h| h != "*");
    let flag = |f: &str| args[1..].iter().any(|a| a == f);
    Ok(Listen {
        host,
        port,
        ssl: flag("ssl"),
        default_server: flag("default_server") || flag("default"),
        quic: flag("quic"),
        text: addr.clone(),
    })
}

/// The parsed dump plus where relative paths resolve.
struct Dump<'a> {
    files: &'a [DumpFile],
    conf_dir: PathBuf,
}

/// What the `http` block gives every server block that does not override it.
struct HttpDefaults<'a> {
    certs: Vec<&'a Directive>,
    keys: Vec<&'a Directive>,
    ssl_on: bool,
}

impl<'a> Dump<'a> {
    /// `items` with every `include` replaced by the directives of the
    /// dumped files it names, recursively.
    fn expand(&self, items: &'a [Directive]) -> Vec<&'a Directive> {
        let mut out = Vec::new();
        let mut active = Vec::new();
        self.expand_into(items, &mut active, &mut out);
        out
    }

    fn expand_into(
        &self,
        items: &'a [Directive],
        active: &mut Vec<usize>,
        out: &mut Vec<&'a Directive>,
    ) {
        for d in items {
            if d.name != "include" || d.block.is_some() {
                out.push(d);
                continue;
            }
            let Some(pattern) = d.args.first() else {
                continue;
            };
            if active.len() >= MAX_INCLUDE_DEPTH {
                tracing::warn!(
                    "{}:{}: includes nest deeper than {MAX_INCLUDE_DEPTH}; not followed",
                    self.files[d.file].path.display(),
                    d.line
                );
                continue;
            }
            for f in self.include_targets(pattern) {
                if active.contains(&f) {
                    continue;
                }
                active.push(f);
                self.expand_into(&self.files[f].items, active, out);
                active.pop();
            }
        }
    }

    /// The dumped files an `include` pattern names, in glob order.
    fn include_targets(&self, pattern: &str) -> Vec<usize> {
        let full = self.conf_dir.join(pattern);
        let mut hits: Vec<usize> = (0..self.files.len())
            .filter(|&i| {
                let p = &self.files[i].path;
                if has_glob(pattern) {
                    path_match(&full, p)
                } else {
                    *p == full
                }
            })
            .collect();
        hits.sort_by(|&a, &b| {
            self.files[a]
                .path
                .as_os_str()
                .cmp(self.files[b].path.as_os_str())
        });
        hits.dedup();
        if hits.is_empty() {
            tracing::debug!("include {pattern}: no dumped file matches");
        }
        hits
    }

    fn source(&self, d: &Directive) -> String {
        format!("{}:{}", self.files[d.file].path.display(), d.line)
    }

    /// The TLS sites of one `http` block.
    fn http_sites(&self, http: &'a [Directive]) -> Vec<DiscoveredSite> {
        let items = self.expand(http);
        let defaults = HttpDefaults {
            certs: items
                .iter()
                .copied()
                .filter(|d| d.name == "ssl_certificate")
                .collect(),
            keys: items
                .iter()
                .copied()
                .filter(|d| d.name == "ssl_certificate_key")
                .collect(),
            ssl_on: items.iter().any(|d| is_ssl_on(d)),
        };
        let servers: Vec<(&Directive, Vec<&Directive>)> = items
            .iter()
            .filter(|d| d.name == "server")
            .filter_map(|d| d.block.as_ref().map(|b| (*d, self.expand(b))))
            .collect();
        // nginx ORs the `ssl` flag over every block on the same socket.
        let mut ssl_sockets = HashSet::new();
        for (_, body) in &servers {
            for d in body.iter().filter(|d| d.name == "listen") {
                if let Ok(l) = parse_listen(&d.args)
                    && l.ssl
                {
                    ssl_sockets.insert(l.socket());
                }
            }
        }
        servers
            .iter()
            .filter_map(|(head, body)| self.server_site(head, body, &defaults, &ssl_sockets))
            .collect()
    }

    /// One server block as a site, None when it does not listen with TLS.
    fn server_site(
        &self,
        head: &Directive,
        body: &[&'a Directive],
        defaults: &HttpDefaults<'a>,
        ssl_sockets: &HashSet<(String, u16)>,
    ) -> Option<DiscoveredSite> {
        let mut notes = Vec::new();
        let own = |name: &str| -> Vec<&'a Directive> {
            body.iter().copied().filter(|d| d.name == name).collect()
        };
        let own_certs = own("ssl_certificate");
        let ssl_on = body.iter().any(|d| is_ssl_on(d)) || defaults.ssl_on;

        // 1. Listens with TLS.
        let mut endpoints = Vec::new();
        let mut first_port = None;
        for d in body.iter().filter(|d| d.name == "listen") {
            let l = match parse_listen(&d.args) {
                Ok(l) => l,
                Err(why) => {
                    push_unique(&mut notes, why);
                    continue;
                }
            };
            if l.quic {
                continue;
            }
            let tls = if l.ssl || ssl_on {
                true
            } else if ssl_sockets.contains(&l.socket()) {
                push_unique(
                    &mut notes,
                    format!(
                        "listen {} has no `ssl` flag here; another server block sets it on the same address",
                        l.text
                    ),
                );
                true
            } else if l.port == 443 && !own_certs.is_empty() {
                push_unique(
                    &mut notes,
                    format!(
                        "listen {} has no `ssl` flag; nginx may serve plain HTTP there",
                        l.text
                    ),
                );
                true
            } else {
                false
            };
            if !tls {
                continue;
            }
            first_port.get_or_insert(l.port);
            push_unique(&mut endpoints, endpoint(l.host.as_deref(), l.port));
            if l.default_server {
                push_unique(&mut notes, "default_server".to_string());
            }
        }
        let port = first_port?;
        if body.iter().any(|d| is_ssl_on(d)) {
            push_unique(
                &mut notes,
                "uses the deprecated `ssl on` directive".to_string(),
            );
        }

        // 2. Names.
        let mut candidates = Vec::new();
        for d in body.iter().filter(|d| d.name == "server_name") {
            for n in &d.args {
                server_name_candidates(n, &mut candidates, &mut notes);
            }
        }
        let (name, names) = pick_names(&candidates);
        let name = name.unwrap_or_else(|| format!("default-{port}"));

        // 3. Certificates and keys, inherited from `http` when the block
        //    has none (nginx merges each list as a whole).
        let pick = |own: Vec<&'a Directive>,
                    inherited: &[&'a Directive],
                    what: &str,
                    notes: &mut Vec<String>| {
            if own.is_empty() && !inherited.is_empty() {
                push_unique(notes, format!("{what} inherited from the http block"));
                inherited.to_vec()
            } else {
                own
            }
        };
        let cert_dirs = pick(own_certs, &defaults.certs, "ssl_certificate", &mut notes);
        let key_dirs = pick(
            own("ssl_certificate_key"),
            &defaults.keys,
            "ssl_certificate_key",
            &mut notes,
        );
        let certs: Vec<Option<PathBuf>> = cert_dirs
            .iter()
            .map(|d| self.resolve(d, &mut notes))
            .collect();
        let keys: Vec<Option<PathBuf>> = key_dirs
            .iter()
            .map(|d| self.resolve(d, &mut notes))
            .collect();
        if certs.is_empty() {
            notes.push("no ssl_certificate in the server block or the http block".into());
        } else if keys.len() != certs.len() {
            notes.push(format!(
                "{} ssl_certificate but {} ssl_certificate_key directives",
                certs.len(),
                keys.len()
            ));
        }
        let pairs = certs
            .iter()
            .zip(&keys)
            .filter_map(|(c, k)| Some((c.clone()?, k.clone()?)))
            .collect();
        let refs = cert_dirs
            .iter()
            .zip(&certs)
            .chain(key_dirs.iter().zip(&keys))
            .filter_map(|(d, p)| self.config_ref(d, p.as_ref()?))
            .collect();

        Some(DiscoveredSite {
            name,
            names,
            cert: certs.first().cloned().flatten(),
            key: keys.first().cloned().flatten(),
            chain: None,
            pairs,
            endpoints,
            source: self.source(head),
            notes,
            refs,
            acme: Vec::new(),
            server: None,
        })
    }

    /// Where the path argument of `d` (resolved to `path`) is written.
    fn config_ref(&self, d: &Directive, path: &Path) -> Option<ConfigRef> {
        let (line, col, raw) = d.at.first()?.clone();
        Some(ConfigRef {
            directive: d.name.clone(),
            path: path.to_path_buf(),
            file: self.files[d.file].path.clone(),
            line,
            col,
            raw,
        })
    }

    /// The file an `ssl_certificate(_key)` names, or a note saying why not.
    fn resolve(&self, d: &Directive, notes: &mut Vec<String>) -> Option<PathBuf> {
        let Some(raw) = d.args.first() else {
            push_unique(notes, format!("{} without a path", d.name));
            return None;
        };
        if let Some(var) = find_variable(raw) {
            push_unique(
                notes,
                format!("{} uses variable {var}; cannot resolve", d.name),
            );
            return None;
        }
        if raw.starts_with("data:") {
            push_unique(
                notes,
                format!(
                    "{} holds the PEM inline (data:); certswap swaps files only",
                    d.name
                ),
            );
            return None;
        }
        if raw.starts_with("engine:") {
            push_unique(
                notes,
                format!(
                    "{} {raw} is an OpenSSL engine key; certswap swaps files only",
                    d.name
                ),
            );
            return None;
        }
        Some(self.conf_dir.join(raw))
    }
}

fn is_ssl_on(d: &Directive) -> bool {
    d.name == "ssl" && d.args.first().is_some_and(|a| a.eq_ignore_ascii_case("on"))
}

/// Add the usable names a `server_name` argument stands for.
fn server_name_candidates(n: &str, out: &mut Vec<String>, notes: &mut Vec<String>) {
    if n.starts_with('~') {
        push_unique(
            notes,
            format!("server_name {n} is a regular expression; left out"),
        );
    } else if n.contains('$') {
        push_unique(notes, format!("server_name {n} uses a variable; left out"));
    } else if let Some(base) = n.strip_prefix('.') {
        // ".example.com" is example.com and *.example.com.
        out.push(base.to_string());
        out.push(format!("*.{base}"));
    } else if n.ends_with(".*") {
        push_unique(
            notes,
            format!("server_name {n} has a trailing wildcard; left out"),
        );
    } else {
        out.push(n.to_string());
    }
}

/// The first nginx variable in `s` (`$name` or `${name}`), as written.
fn find_variable(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b != b'$' {
            continue;
        }
        let rest = &s[i + 1..];
        if let Some(inner) = rest.strip_prefix('{') {
            let name = inner.split('}').next().unwrap_or_default();
            return Some(format!("${name}"));
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            return Some(format!("${name}"));
        }
    }
    None
}

/// The `[emerg]`/`[alert]` lines of nginx's stderr (else the first few),
/// joined into one line.
fn summarize(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let marked: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("[emerg]") || l.contains("[alert]") || l.contains("[crit]"))
        .collect();
    let picked = if marked.is_empty() { lines } else { marked };
    if picked.is_empty() {
        "(no output)".into()
    } else {
        picked.into_iter().take(3).collect::<Vec<_>>().join(" | ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(files: &[(&str, &str)]) -> String {
        let mut s = String::new();
        for (path, body) in files {
            s.push_str(&format!("# configuration file {path}:\n{body}\n"));
        }
        s
    }

    fn one(files: &[(&str, &str)]) -> Vec<DiscoveredSite> {
        parse_dump(&dump(files), Path::new("/etc/nginx"))
    }

    fn by_name<'a>(sites: &'a [DiscoveredSite], name: &str) -> &'a DiscoveredSite {
        sites
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no site {name} in {sites:#?}"))
    }

    #[test]
    fn tokenizer_handles_quotes_comments_and_escapes() {
        let toks = tokenize("a \"b c\" 'd;e' f\\ g # comment ; {\n${x}y h#i {\n}\n\"q\\\"r\"");
        let words: Vec<_> = toks
            .iter()
            .map(|(t, l)| match t {
                Tok::Word(w) => format!("{}@{l}", w.text),
                Tok::Semi => format!(";@{l}"),
                Tok::Open => format!("{{@{l}"),
                Tok::Close => format!("}}@{l}"),
            })
            .collect();
        assert_eq!(
            words,
            vec![
                "a@1", "b c@1", "d;e@1", "f\\ g@1", "${x}y@2", "h#i@2", "{@2", "}@3", "q\"r@4"
            ]
        );
    }

    #[test]
    fn several_names_listens_and_default_server() {
        let sites = one(&[(
            "/etc/nginx/nginx.conf",
            "events {}\nhttp {\n  server {\n    listen 443 ssl default_server;\n    listen [::]:443 ssl;\n    listen 127.0.0.1:8443 ssl http2;\n    listen 80;\n    server_name A.test www.a.test;\n    server_name alt.a.test a.test;\n    ssl_certificate /etc/ssl/a.pem;\n    ssl_certificate_key /etc/ssl/a.key;\n  }\n}\n",
        )]);
        assert_eq!(sites.len(), 1);
        let a = &sites[0];
        assert_eq!(a.name, "a.test");
        assert_eq!(a.names, vec!["www.a.test", "alt.a.test"]);
        assert_eq!(a.endpoints, vec!["127.0.0.1:443", "127.0.0.1:8443"]);
        assert_eq!(a.cert.as_deref(), Some(Path::new("/etc/ssl/a.pem")));
        assert_eq!(a.key.as_deref(), Some(Path::new("/etc/ssl/a.key")));
        assert_eq!(a.pairs.len(), 1);
        assert_eq!(a.source, "/etc/nginx/nginx.conf:3");
        assert!(
            a.notes.contains(&"default_server".to_string()),
            "{:?}",
            a.notes
        );
    }

    #[test]
    fn plain_http_blocks_are_skipped_and_wildcards_kept() {
        let sites = one(&[(
            "/etc/nginx/nginx.conf",
            "http { server { listen 80; server_name plain.test; }\n server { listen *:443 ssl; listen [::1]:443 ssl; server_name _ ; ssl_certificate c; ssl_certificate_key k; } }",
        )]);
        assert_eq!(sites.len(), 1);
        assert_eq!(sites[0].name, "default-443");
        assert_eq!(sites[0].endpoints, vec!["127.0.0.1:443", "[::1]:443"]);
        // Relative paths resolve against the main config's directory.
        assert_eq!(sites[0].cert.as_deref(), Some(Path::new("/etc/nginx/c")));
    }

    #[test]
    fn includes_are_followed_in_glob_order() {
        let sites = one(&[
            (
                "/etc/nginx/nginx.conf",
                "http {\n  include mime.types;\n  include sites/*.conf; # the sites\n}\n",
            ),
            ("/etc/nginx/mime.types", "types { text/html html; }"),
            (
                "/etc/nginx/sites/b.conf",
                "server { listen 443 ssl; server_name b.test; include snippets/tls.conf; }",
            ),
            (
                "/etc/nginx/sites/a.conf",
                "# a\n\nserver {\n listen 8443 ssl;\n server_name a.test;\n ssl_certificate \"/etc/ssl/my certs/a.pem\";\n ssl_certificate_key '/etc/ssl/a.key';\n}",
            ),
            (
                "/etc/nginx/snippets/tls.conf",
                "ssl_certificate /etc/ssl/b.pem; ssl_certificate_key /etc/ssl/b.key;",
            ),
        ]);
        let names: Vec<_> = sites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["a.test", "b.test"]);
        let a = by_name(&sites, "a.test");
        assert_eq!(a.source, "/etc/nginx/sites/a.conf:3");
        assert_eq!(
            a.cert.as_deref(),
            Some(Path::new("/etc/ssl/my certs/a.pem"))
        );
        let b = by_name(&sites, "b.test");
        assert_eq!(b.key.as_deref(), Some(Path::new("/etc/ssl/b.key")));
    }

    #[test]
    fn include_cycles_do_not_hang() {
        let sites = one(&[
            (
                "/etc/nginx/nginx.conf",
                "http { include loop.conf; server { listen 443 ssl; server_name x.test; ssl_certificate /c; ssl_certificate_key /k; } }",
            ),
            (
                "/etc/nginx/loop.conf",
                "include loop.conf; include loop.conf;",
            ),
        ]);
        assert_eq!(sites.len(), 1);
    }

    #[test]
    fn variables_are_noted_not_resolved() {
        let sites = one(&[(
            "/etc/nginx/nginx.conf",
            "http { server { listen 443 ssl; server_name v.test $hostname ~^(?<x>.+)\\.test$;\n ssl_certificate /etc/ssl/$ssl_server_name.crt; ssl_certificate_key /etc/ssl/${ssl_server_name}.key; } }",
        )]);
        let v = &sites[0];
        assert_eq!(v.name, "v.test");
        assert!(v.names.is_empty());
        assert_eq!(v.cert, None);
        assert_eq!(v.key, None);
        assert!(v.pairs.is_empty());
        assert!(
            v.notes
                .contains(&"ssl_certificate uses variable $ssl_server_name; cannot resolve".into()),
            "{:?}",
            v.notes
        );
        assert!(v.notes.iter().any(|n| n.contains("regular expression")));
        assert!(v.notes.iter().any(|n| n.contains("$hostname")));
    }

    #[test]
    fn refs_say_where_each_path_is_written() {
        let sites = one(&[(
            "/etc/nginx/nginx.conf",
            "http { server { listen 443 ssl; server_name r.test;\n  ssl_certificate \"/le/live/r.test/fullchain.pem\"; ssl_certificate_key /le/live/r.test/privkey.pem; } }",
        )]);
        let r = &sites[0].refs;
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(r[0].directive, "ssl_certificate");
        assert_eq!((r[0].line, r[0].col), (2, 18));
        assert_eq!(r[0].raw, "\"/le/live/r.test/fullchain.pem\"");
        assert_eq!(r[0].path, Path::new("/le/live/r.test/fullchain.pem"));
        assert_eq!(r[1].directive, "ssl_certificate_key");
        assert_eq!(r[1].raw, "/le/live/r.test/privkey.pem");
        assert_eq!(r[1].file, Path::new("/etc/nginx/nginx.conf"));
        let line: String = "  ssl_certificate \"/le/live/r.test/fullchain.pem\"; ssl_certificate_key /le/live/r.test/privkey.pem; } }".chars().skip(r[1].col).take(r[1].raw.chars().count()).collect();
        assert_eq!(line, r[1].raw);
    }

    #[test]
    fn dual_certificates_become_pairs() {
        let sites = one(&[(
            "/etc/nginx/nginx.conf",
            "http { server { listen 443 ssl; server_name d.test;\n ssl_certificate /s/rsa.pem; ssl_certificate_key /s/rsa.key;\n ssl_certificate /s/ec.pem; ssl_certificate_key /s/ec.key; } }",
        )]);
        let d = &sites[0];
        assert_eq!(
            d.pairs,
            vec![
                ("/s/rsa.pem".into(), "/s/rsa.key".into()),
                ("/s/ec.pem".into(), "/s/ec.key".into())
            ]
        );
        assert_eq!(d.cert.as_deref(), Some(Path::new("/s/rsa.pem")));
    }

    #[test]
    fn http_level_certificate_is_inherited() {
        let sites = one(&[(
            "/etc/nginx/nginx.conf",
            "http { ssl_certificate /s/wild.pem; ssl_certificate_key /s/wild.key;\n server { listen 443 ssl; server_name .example.com; }\n server { listen 443 ssl; server_name own.test; ssl_certificate /s/own.pem; ssl_certificate_key /s/own.key; } }",
        )]);
        let w = by_name(&sites, "example.com");
        assert_eq!(w.names, vec!["*.example.com"]);
        assert_eq!(w.cert.as_deref(), Some(Path::new("/s/wild.pem")));
        assert!(
            w.notes.iter().any(|n| n.contains("inherited")),
            "{:?}",
            w.notes
        );
        let o = by_name(&sites, "own.test");
        assert_eq!(o.cert.as_deref(), Some(Path::new("/s/own.pem")));
        assert!(!o.notes.iter().any(|n| n.contains("inherited")));
    }

    #[test]
    fn ssl_flag_is_shared_per_socket_and_443_heuristic() {
        let sites = one(&[(
            "/etc/nginx/nginx.conf",
            "http {\n server { listen 8443 ssl; server_name a.test; ssl_certificate /a; ssl_certificate_key /ak; }\n server { listen 8443; server_name b.test; ssl_certificate /b; ssl_certificate_key /bk; }\n server { listen 443; server_name c.test; ssl_certificate /c; ssl_certificate_key /ck; }\n server { listen 8080; server_name d.test; ssl_certificate /d; ssl_certificate_key /dk; } }",
        )]);
        let names: Vec<_> = sites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["a.test", "b.test", "c.test"]);
        assert!(by_name(&sites, "b.test").notes[0].contains("another server block"));
        assert!(by_name(&sites, "c.test").notes[0].contains("plain HTTP"));
    }

    #[test]
    fn relative_main_config_uses_prefix() {
        let text = "# configuration file conf/nginx.conf:\nhttp { server { listen 443 ssl; ssl_certificate a.pem; ssl_certificate_key a.key; } }\n";
        let sites = parse_dump(text, Path::new("/srv/ngx"));
        assert_eq!(
            sites[0].cert.as_deref(),
            Some(Path::new("/srv/ngx/conf/a.pem"))
        );
    }

    #[test]
    fn garbage_does_not_panic() {
        for text in [
            "",
            "no header at all",
            "# configuration file /x:\n}}}{{{ \"unterminated",
            "# configuration file /x:\nhttp { server { listen ; listen [::; listen :0 ssl; listen unix:/s ssl; } ",
        ] {
            let _ = parse_dump(text, Path::new("/"));
        }
        let deep = format!("# configuration file /x:\n{}", "{".repeat(100_000));
        assert!(parse_dump(&deep, Path::new("/")).is_empty());
    }
}
