//! The HTTPS source: a manifest (DESIGN.md, "HTTP source manifest") on any
//! static HTTPS host, read with reqwest over rustls (the one ring provider).
//!
//! One fetch:
//! 1. GET the manifest with `If-None-Match` (the ETag of the last manifest
//!    that was handled completely); 304 = nothing to do;
//! 2. for each bundle of a configured site: skip when paused (manifest or
//!    bundle) or when this host is not in the rollout wave
//!    (`bucket(host_id, site) < percent`, see [`bucket`]);
//! 3. resolve its paths against the manifest URL, refusing any that leave
//!    the manifest's directory (`..`, another host or scheme);
//! 4. download with size limits and timeouts, check `cert_sha256` /
//!    `key_sha256` / `chain_sha256` before anything else looks at the bytes;
//! 5. a leaf already on disk is a no-op; otherwise the parts are written
//!    under fixed names into the pass's private work directory.
//!
//! A 5xx, a timeout, a truncated body or a checksum mismatch is *transient*:
//! logged, counted, and retried with backoff (30 s, doubling, at most the
//! agent's interval; the ETag is not remembered, so the next GET is a full
//! one). The old cert stays. A bundle that the environment kept from being
//! installed (config test, reload, disk, clock: [`crate::report::Settlement`])
//! waits the same way; only a verdict on its bytes refuses it.
//!
//! Secrets: the token file and the client key must be readable by root
//! only, the CA file and client certificate writable by root only
//! ([`crate::owner`]); otherwise the source is skipped with the reason.
//! A URL is printed only through [`crate::redact`] (no user info, no
//! query), and reqwest errors are stripped of theirs.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};

use crate::cert::sha256_hex;
use crate::config::{Config, HttpSource};
use crate::fsio::{self, Perms};
use crate::redact;
use crate::source::{Candidate, WorkDir, installed_leaf_sha256, leaf_of, write_part};

/// The manifest may be at most this large.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// Each downloaded file may be at most this large (DESIGN.md step 1).
pub const MAX_FILE_BYTES: u64 = crate::bundle::MAX_FILE_BYTES;
/// First wait after a failure; it doubles up to the agent's interval.
pub const RETRY_FIRST: Duration = Duration::from_secs(30);
/// Largest secret file read (token, client key).
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// The rollout bucket, defined with the manifest's format.
pub use crate::manifest::bucket;
use crate::manifest::{Manifest, ManifestBundle};

/// What the agent remembers of one HTTP source between passes.
#[derive(Debug, Default)]
pub struct HttpState {
    /// ETag of the last manifest handled completely.
    pub etag: Option<String>,
    /// Consecutive fetches (or bundles of them) that must be retried.
    pub failures: u32,
    /// Not before this time again (backoff); None = at the next pass.
    pub retry_at: Option<SystemTime>,
    /// Bundles (site, cert_sha256) refused by a verdict on their bytes:
    /// not tried again until the manifest offers other bytes.
    pub refused: HashSet<(String, String)>,
    /// Sites whose bundle waits for a retry, with the reason (the
    /// `reason` label of `certswap_bundle_waiting`) and the sentence.
    pub waiting: HashMap<String, (&'static str, String)>,
    /// This pass's fetch failed (network, 5xx…): back off.
    pub fetch_failed: bool,
    /// The earliest notBefore of a waiting certificate not valid yet.
    pub not_before: Option<SystemTime>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Persisted {
    url: String,
    etag: Option<String>,
}

impl HttpState {
    fn file(state_dir: &Path, src: &HttpSource) -> PathBuf {
        let id = sha256_hex(src.name.as_bytes());
        state_dir
            .join("agent")
            .join(format!("http-{}.json", &id[..16]))
    }

    /// The state saved by an earlier agent (only the ETag survives).
    pub fn load(state_dir: &Path, src: &HttpSource) -> HttpState {
        let etag = fsio::read_limited(&HttpState::file(state_dir, src), 64 * 1024)
            .ok()
            .and_then(|b| serde_json::from_slice::<Persisted>(&b).ok())
            .filter(|p| p.url == src.url)
            .and_then(|p| p.etag);
        HttpState {
            etag,
            ..HttpState::default()
        }
    }

    /// Remember `etag` as the last manifest handled completely.
    pub fn save_etag(&mut self, state_dir: &Path, src: &HttpSource, etag: Option<String>) {
        self.etag = etag;
        let p = Persisted {
            url: src.url.clone(),
            etag: self.etag.clone(),
        };
        let path = HttpState::file(state_dir, src);
        let result = serde_json::to_vec(&p)
            .map_err(std::io::Error::other)
            .and_then(|b| {
                crate::source::mkdir_private_all(&crate::fsio::parent_of(&path))?;
                fsio::write_atomic(&path, &b, Perms::own(0o600))
            });
        if let Err(e) = result {
            tracing::warn!(source = %src.name, "cannot save the manifest ETag to {}: {e}", path.display());
        }
    }

    /// Backoff: whether the source may be fetched at `now`.
    pub fn due(&self, now: SystemTime) -> bool {
        self.retry_at.is_none_or(|t| t <= now)
    }

    /// Something must be retried: wait 30 s, 60 s, 120 s… but never more
    /// than `interval` (a full pass would come then anyway). Returns the
    /// wait.
    pub fn failed(&mut self, now: SystemTime, interval: Duration) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let doublings = self.failures.saturating_sub(1).min(16);
        let wait = RETRY_FIRST
            .saturating_mul(1u32 << doublings)
            .min(interval.max(Duration::from_secs(1)));
        self.retry_at = Some(now + wait);
        wait
    }

    /// Retry no later than `t` (a certificate that becomes valid then).
    pub fn retry_by(&mut self, t: SystemTime) {
        self.retry_at = Some(self.retry_at.map_or(t, |r| r.min(t)));
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }
}

/// A bundle of the manifest ready to install.
#[derive(Debug, Clone)]
pub struct HttpCandidate {
    pub candidate: Candidate,
    pub cert_sha256: String,
    /// The leaf's notBefore, when it could be read: a certificate not
    /// valid yet is tried again right then.
    pub not_before: Option<SystemTime>,
}

/// What one fetch found.
#[derive(Debug, Default)]
pub struct Fetched {
    /// 304: the manifest did not change.
    pub not_modified: bool,
    pub candidates: Vec<HttpCandidate>,
    /// ETag of this manifest: remember it once the candidates are handled,
    /// if `transient` stays empty.
    pub etag: Option<String>,
    /// Problems worth retrying (network, 5xx, checksum): the site and one
    /// sentence each.
    pub transient: Vec<(String, String)>,
    /// Problems of the manifest itself that only a new manifest fixes.
    pub permanent: Vec<String>,
}

/// Why a fetch could not even read the manifest. Every message names
/// URLs only as [`redact::url`] prints them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// Worth retrying: network, timeout, 5xx, truncated body.
    #[error("{0}")]
    Transient(String),
    /// The source is misconfigured or the manifest is unusable.
    #[error("{0}")]
    Permanent(String),
    /// A file of the source's config (token, client key, CA, client
    /// certificate) may have been read or written by another user: the
    /// source is skipped until it is fixed.
    #[error("{0}")]
    Unsafe(#[from] crate::owner::OwnerError),
}

/// Steps 1–5 of the module doc for one source.
pub async fn fetch(
    src: &HttpSource,
    state: &HttpState,
    cfg: &Config,
    host_id: &str,
    work: &WorkDir,
) -> Result<Fetched, FetchError> {
    let base = Url::parse(&src.url)
        .map_err(|e| FetchError::Permanent(format!("{}: not a URL: {e}", src.name)))?;
    // What messages call the manifest: no user info, no query.
    let shown = redact::url(&base);
    let token = token(src)?;
    let client = client(src)?;

    // 1. the manifest, conditional on the last complete one.
    let mut req = client.get(base.clone());
    if let Some(etag) = &state.etag {
        req = req.header(reqwest::header::IF_NONE_MATCH, etag.as_str());
    }
    if let Some(t) = &token {
        req = req.bearer_auth(t);
    }
    let got = get_limited(req, &shown, MAX_MANIFEST_BYTES).await?;
    if got.status == StatusCode::NOT_MODIFIED {
        return Ok(Fetched {
            not_modified: true,
            etag: state.etag.clone(),
            ..Fetched::default()
        });
    }
    let manifest: Manifest = crate::manifest::parse(&got.body)
        .map_err(|e| FetchError::Permanent(format!("{shown}: {e}")))?;
    let mut out = Fetched {
        etag: got.etag,
        ..Fetched::default()
    };
    if manifest.paused {
        tracing::info!(source = %src.name, "the manifest is paused: no installs from it");
        return Ok(out);
    }

    for b in &manifest.bundles {
        // 2. ours, not paused, in the wave, not refused before.
        let Ok(site) = crate::matcher::one(cfg, crate::matcher::Hint::Site(&b.site), None) else {
            tracing::debug!(source = %src.name, site = %b.site, "not a site of this host");
            continue;
        };
        let rollout = b.rollout.as_ref();
        if b.paused || rollout.is_some_and(|r| r.paused) {
            tracing::info!(source = %src.name, site = %site.name, "rollout paused: not installed");
            continue;
        }
        let percent = rollout.and_then(|r| r.percent).unwrap_or(100);
        if percent > 100 {
            out.permanent.push(format!(
                "{shown}: bundle for {}: rollout.percent {percent} is above 100",
                site.name
            ));
            continue;
        }
        let bucket = bucket(host_id, &site.name);
        if bucket >= percent {
            tracing::info!(
                source = %src.name, site = %site.name,
                "not in this rollout wave yet (bucket {bucket} of host {host_id:?} is not below {percent}%)"
            );
            continue;
        }
        let Some(cert_sha) = b.cert_sha256.as_deref().map(normalize_hex) else {
            out.permanent.push(format!(
                "{shown}: bundle for {} has no cert_sha256; refusing to install unchecked bytes",
                site.name
            ));
            continue;
        };
        if state
            .refused
            .contains(&(site.name.clone(), cert_sha.clone()))
        {
            tracing::debug!(source = %src.name, site = %site.name, "this bundle was refused before; waiting for a new one");
            continue;
        }
        match bundle(&client, token.as_deref(), &base, b, &cert_sha, site, work).await {
            Ok(Some(c)) => out.candidates.push(c),
            Ok(None) => {}
            Err(FetchError::Transient(why)) => out.transient.push((site.name.clone(), why)),
            Err(e) => out.permanent.push(e.to_string()),
        }
    }
    Ok(out)
}

/// Steps 3–5 for one bundle. Ok(None) when it is already installed.
async fn bundle(
    client: &reqwest::Client,
    token: Option<&str>,
    base: &Url,
    b: &ManifestBundle,
    cert_sha: &str,
    site: &crate::config::Site,
    work: &WorkDir,
) -> Result<Option<HttpCandidate>, FetchError> {
    let for_site = |why: String| format!("{}: bundle for {}: {why}", redact::url(base), site.name);
    let want = |field: &str, path: &Option<String>, sha: &Option<String>| match (path, sha) {
        (None, _) => Ok(None),
        (Some(p), Some(s)) => Ok(Some((p.clone(), normalize_hex(s)))),
        (Some(_), None) => Err(FetchError::Permanent(for_site(format!(
            "has {field} but no {field}_sha256; refusing to install unchecked bytes"
        )))),
    };
    let key = want("key", &b.key, &b.key_sha256)?;
    let chain = want("chain", &b.chain, &b.chain_sha256)?;

    // 3–4. the certificate first: if it is installed already, stop here.
    let cert_url = resolve(base, &b.cert).map_err(|e| FetchError::Permanent(for_site(e)))?;
    let cert_bytes = download(client, token, &cert_url, cert_sha).await?;
    let leaf = leaf_of(&cert_bytes);
    // 5. already installed: same leaf on disk.
    if let (Some(leaf), Some(installed)) = (&leaf, installed_leaf_sha256(site))
        && leaf.sha256 == installed
    {
        tracing::info!(site = %site.name, "the manifest's certificate is installed already");
        return Ok(None);
    }
    let not_before = leaf.as_ref().map(|l| SystemTime::from(l.not_before));
    let mut parts = vec![("cert.pem", cert_bytes, cert_url)];
    for (fixed, part) in [("key.pem", key), ("chain.pem", chain)] {
        if let Some((rel, sha)) = part {
            let url = resolve(base, &rel).map_err(|e| FetchError::Permanent(for_site(e)))?;
            let bytes = download(client, token, &url, &sha).await?;
            parts.push((fixed, bytes, url));
        }
    }

    let dir = work.bundle_dir().map_err(|e| {
        FetchError::Transient(format!("cannot create a private work directory: {e}"))
    })?;
    let mut c = Candidate {
        site: site.name.clone(),
        cert: PathBuf::new(),
        key: None,
        chain: None,
        leaf_sha256: leaf.map(|l| l.sha256),
        display: Vec::new(),
    };
    for (fixed, bytes, url) in parts {
        let p = write_part(&dir, fixed, &bytes).map_err(|e| {
            FetchError::Transient(format!("cannot write to the private work directory: {e}"))
        })?;
        c.display.push((p.clone(), redact::url(&url)));
        match fixed {
            "cert.pem" => c.cert = p,
            "key.pem" => c.key = Some(p),
            _ => c.chain = Some(p),
        }
    }
    Ok(Some(HttpCandidate {
        candidate: c,
        cert_sha256: cert_sha.to_string(),
        not_before,
    }))
}

/// `rel` against the manifest URL; refused when it leaves the manifest's
/// directory: a `..` segment (also percent-encoded), another scheme, host
/// or port, or a path outside the manifest's directory.
pub fn resolve(base: &Url, rel: &str) -> Result<Url, String> {
    if rel.is_empty() {
        return Err("has an empty path".into());
    }
    let path_part = rel.split(['?', '#']).next().unwrap_or(rel);
    let dotdot = path_part.split(['/', '\\']).any(|seg| {
        let s = seg.to_ascii_lowercase().replace("%2e", ".");
        s == ".."
    });
    if dotdot || path_part.contains('\\') {
        return Err(format!(
            "the path {rel:?} contains `..` or `\\`; bundle paths must stay below the manifest"
        ));
    }
    let url = base
        .join(rel)
        .map_err(|e| format!("the path {rel:?} is not a URL path: {e}"))?;
    let dir = match base.path().rfind('/') {
        Some(i) => &base.path()[..=i],
        None => "/",
    };
    let same_origin = url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default()
        && url.username() == base.username()
        && url.password() == base.password();
    if !same_origin {
        return Err(format!(
            "the path {:?} points to another host or scheme ({}); bundles must come from the manifest's host",
            redact::url_str(rel),
            redact::url(&url)
        ));
    }
    if !url.path().starts_with(dir) {
        return Err(format!(
            "the path {:?} leaves the manifest's directory {dir}",
            redact::url_str(rel)
        ));
    }
    Ok(url)
}

/// GET `url` (≤ [`MAX_FILE_BYTES`]) and check its SHA-256.
async fn download(
    client: &reqwest::Client,
    token: Option<&str>,
    url: &Url,
    sha: &str,
) -> Result<Vec<u8>, FetchError> {
    let mut req = client.get(url.clone());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let shown = redact::url(url);
    let got = get_limited(req, &shown, MAX_FILE_BYTES).await?;
    if got.status != StatusCode::OK {
        return Err(FetchError::Permanent(format!(
            "{shown}: answered {} where the file was expected",
            got.status
        )));
    }
    let have = sha256_hex(&got.body);
    if have != sha {
        return Err(FetchError::Transient(format!(
            "{shown}: the download's sha256 is {have}, not the manifest's {sha}; it was not used"
        )));
    }
    Ok(got.body)
}

struct Got {
    status: StatusCode,
    etag: Option<String>,
    body: Vec<u8>,
}

/// Send `req`, read at most `limit` bytes of a 200 body. 304 is returned
/// as is; 5xx and transport errors are transient; other statuses are not.
/// `url` is the redacted URL, for messages.
async fn get_limited(
    req: reqwest::RequestBuilder,
    url: &str,
    limit: u64,
) -> Result<Got, FetchError> {
    let mut resp = req
        .send()
        .await
        .map_err(|e| FetchError::Transient(format!("{url}: {}", redact::reqwest_error(e))))?;
    let status = resp.status();
    if status == StatusCode::NOT_MODIFIED {
        return Ok(Got {
            status,
            etag: None,
            body: Vec::new(),
        });
    }
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return Err(FetchError::Transient(format!(
            "{url}: the server answered {status}"
        )));
    }
    if status != StatusCode::OK {
        return Err(FetchError::Permanent(format!(
            "{url}: the server answered {status}"
        )));
    }
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(FetchError::Permanent(format!(
            "{url}: the body is larger than the {} KiB limit",
            limit / 1024
        )));
    }
    let etag = resp
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() as u64 > limit {
                    return Err(FetchError::Permanent(format!(
                        "{url}: the body is larger than the {} KiB limit",
                        limit / 1024
                    )));
                }
            }
            Ok(None) => break,
            Err(e) => {
                return Err(FetchError::Transient(format!(
                    "{url}: the body could not be read completely ({} bytes arrived): {}",
                    body.len(),
                    redact::reqwest_error(e)
                )));
            }
        }
    }
    Ok(Got { status, etag, body })
}

fn normalize_hex(s: &str) -> String {
    s.chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase()
}

/// The bearer token, read fresh each pass so a rotated token is picked
/// up; refused when another user may read or write it.
fn token(src: &HttpSource) -> Result<Option<String>, FetchError> {
    let Some(path) = &src.token_file else {
        return Ok(None);
    };
    let bytes = read_checked("token file", path, MAX_SECRET_BYTES, true)?;
    let t = String::from_utf8(bytes)
        .map_err(|_| FetchError::Permanent(format!("{}: the token is not UTF-8", path.display())))?
        .trim()
        .to_string();
    if t.is_empty() {
        return Err(FetchError::Permanent(format!(
            "{}: the token file is empty",
            path.display()
        )));
    }
    Ok(Some(t))
}

/// One reqwest client for a source: rustls with the process's ring
/// provider, its trust anchors, its client certificate, no redirects (a
/// redirect could lead off the manifest's host), HTTPS only unless allowed.
fn client(src: &HttpSource) -> Result<reqwest::Client, FetchError> {
    // reqwest panics at build time without a process-wide provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |p: &Path, what: &'static str| read_checked(what, p, MAX_FILE_BYTES, false);
    let mut b = reqwest::Client::builder()
        .timeout(src.timeout)
        .connect_timeout(src.timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .https_only(!src.allow_insecure_http)
        .user_agent(concat!("certswap/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &src.ca_file {
        let pem = read(ca, "CA file")?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            FetchError::Permanent(format!("{}: not PEM certificates: {e}", ca.display()))
        })?;
        if certs.is_empty() {
            return Err(FetchError::Permanent(format!(
                "{}: holds no certificate",
                ca.display()
            )));
        }
        b = b.tls_certs_only(certs);
    }
    if let (Some(cert), Some(key)) = (&src.client_cert, &src.client_key) {
        let mut pem = read_checked("client key", key, MAX_SECRET_BYTES, true)?;
        pem.push(b'\n');
        pem.extend(read(cert, "client certificate")?);
        let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
            FetchError::Permanent(format!(
                "{} / {}: not a usable client certificate and key: {e}",
                cert.display(),
                key.display()
            ))
        })?;
        b = b.identity(id);
    }
    b.build().map_err(|e| {
        FetchError::Permanent(format!(
            "{}: cannot set up the HTTPS client: {}",
            src.name,
            redact::reqwest_error(e)
        ))
    })
}

/// Read a file of the source's config through [`crate::owner`]: a secret
/// (token, client key) readable by root only, the others (CA file, client
/// certificate) writable by root only, never through a symlink. A file that
/// is merely missing or unreadable is a config problem (`Permanent`); one
/// another user may have read or changed is `Unsafe`.
fn read_checked(
    what: &'static str,
    path: &Path,
    limit: u64,
    secret: bool,
) -> Result<Vec<u8>, FetchError> {
    use crate::owner::{self, OwnerError};
    let r = if secret {
        owner::read_secret(what, path, limit)
    } else {
        // A CA file is often a symlink (/etc/ssl/certs/NAME.pem): follow it
        // only when the directory holding the link is trusted too, then
        // check the file it names.
        owner::trusted_dir(what, &fsio::parent_of(path)).and_then(|()| {
            let real = std::fs::canonicalize(path).map_err(|source| OwnerError::Io {
                what,
                path: path.to_path_buf(),
                source,
            })?;
            owner::read_trusted(what, &real, limit)
        })
    };
    r.map_err(|e| match e {
        OwnerError::Io { .. } | OwnerError::TooLarge { .. } => FetchError::Permanent(e.to_string()),
        other => FetchError::Unsafe(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_is_stable_and_in_range() {
        // Pinned: changing the hash would reshuffle every fleet's waves.
        assert_eq!(
            bucket("web-17", "www.example.com"),
            bucket("web-17", "www.example.com")
        );
        for i in 0..200 {
            assert!(bucket(&format!("h{i}"), "a.test") < 100);
        }
        let d = ring::digest::digest(&ring::digest::SHA256, b"web-17/www.example.com");
        let b = d.as_ref();
        assert_eq!(
            bucket("web-17", "www.example.com"),
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) % 100
        );
    }

    #[test]
    fn paths_that_leave_the_manifest_are_refused() {
        let base = Url::parse("https://certs.example.com/fleet/manifest.json").expect("url");
        let ok = resolve(&base, "www.example.com/2027/fullchain.pem").expect("inside");
        assert_eq!(
            ok.as_str(),
            "https://certs.example.com/fleet/www.example.com/2027/fullchain.pem"
        );
        resolve(&base, "https://certs.example.com/fleet/a.pem").expect("same dir, absolute");
        for bad in [
            "../secret.pem",
            "a/../../x.pem",
            "a/%2e%2e/%2E%2E/x.pem",
            "https://evil.example/fleet/a.pem",
            "//evil.example/fleet/a.pem",
            "/other/a.pem",
            "http://certs.example.com/fleet/a.pem",
            "https://certs.example.com:8443/fleet/a.pem",
            "a\\..\\x.pem",
        ] {
            assert!(resolve(&base, bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn backoff_doubles_from_30_seconds_up_to_the_interval() {
        let mut s = HttpState::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let interval = Duration::from_secs(900);
        let waits: Vec<u64> = (0..7).map(|_| s.failed(now, interval).as_secs()).collect();
        assert_eq!(waits, vec![30, 60, 120, 240, 480, 900, 900]);
        assert!(!s.due(now));
        assert!(s.due(now + interval));
        s.retry_by(now + Duration::from_secs(5));
        assert_eq!(s.retry_at, Some(now + Duration::from_secs(5)));
        s.succeeded();
        assert!(s.due(now));
        assert_eq!(s.failures, 0);
    }
}
