//! What the two certificate-vendor sources share ([`super::aliyun`],
//! [`super::tencent`]): the HMAC-SHA256 / SHA-256 helpers of their request
//! signatures (ring), the HTTPS client (rustls, `ca_file`, timeouts, no
//! redirects, as the `http` source), the secret file (0600, through
//! [`crate::owner::read_secret`]), the selection rule ("for each site, the
//! newest issued certificate whose names cover the site's names and that
//! ends later than the installed one"), and the seen-state under
//! `state_dir/agent/cloud/` (certificate ids refused for good, so an
//! unchanged account costs one list call per interval and no detail call).
//!
//! A vendor answer never becomes a path: the certificate and key are
//! written under fixed names into the pass's work dir (invariant 8), and
//! the secret never enters a message, a log line or the state dir.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ring::{digest, hmac};
use time::OffsetDateTime;

use crate::bundle::{self, MAX_FILE_BYTES};
use crate::config::{CloudSource, Config, Site, Vendor};
use crate::owner::{self, OwnerError};
use crate::source::{Candidate, WorkDir, write_part};

/// Secrets are short; a larger file is not one.
const MAX_SECRET_BYTES: u64 = 4096;
/// One answer of a vendor API (a detail holds cert, chain and key).
pub const MAX_ANSWER_BYTES: u64 = 1024 * 1024;
/// Throttling answers are retried this many times, waiting 1 s, 2 s, 4 s.
const THROTTLE_RETRIES: u32 = 3;
/// A list is read at most this many pages deep (a vendor answering the
/// same page forever must not hold the pass).
pub const MAX_PAGES: u64 = 200;

/// Why a vendor source could not be read (or one certificate not used).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CloudError {
    /// The secret file (or the CA file) failed an owner/mode check.
    #[error("{0}")]
    Unsafe(OwnerError),
    /// The vendor refused the credentials or the permission.
    #[error(
        "source {name}: the vendor refused the request ({code}: {message}); check the key id, the secret file and the account's read permission"
    )]
    Auth {
        name: String,
        code: String,
        message: String,
    },
    /// Worth retrying on a later pass: network, 5xx, throttling.
    #[error("source {name}: {why}")]
    Transient { name: String, why: String },
    /// Only a fix of the config or the account helps.
    #[error("source {name}: {why}")]
    Permanent { name: String, why: String },
}

/// A vendor's error message as shown in ours: one line, at most 200
/// characters (it is outside input).
pub fn vendor_text(s: &str) -> String {
    let one: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match one.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &one[..i]),
        None => one,
    }
}

impl CloudError {
    pub fn transient(source: &str, why: impl Into<String>) -> CloudError {
        CloudError::Transient {
            name: source.to_string(),
            why: why.into(),
        }
    }
    pub fn permanent(source: &str, why: impl Into<String>) -> CloudError {
        CloudError::Permanent {
            name: source.to_string(),
            why: why.into(),
        }
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

/// HMAC-SHA256 of `msg` under `key`.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&k, msg).as_ref().to_vec()
}

/// RFC 3986 percent-encoding of everything but the unreserved characters
/// (`A-Z a-z 0-9 - _ . ~`), as both vendors' canonical forms want.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The secret, read fresh each pass (a rotated secret is picked up), root's
/// and 0600 only; trailing whitespace dropped.
pub fn read_secret(src: &CloudSource) -> Result<String, CloudError> {
    let what = match src.vendor {
        Vendor::Aliyun => "Alibaba Cloud access key secret file",
        Vendor::Tencent => "Tencent Cloud secret key file",
    };
    let bytes =
        owner::read_secret(what, &src.secret_file, MAX_SECRET_BYTES).map_err(|e| match e {
            OwnerError::Io { .. } | OwnerError::TooLarge { .. } => {
                CloudError::permanent(&src.name, e.to_string())
            }
            other => CloudError::Unsafe(other),
        })?;
    let s = String::from_utf8(bytes)
        .map_err(|_| {
            CloudError::permanent(
                &src.name,
                format!("{}: the secret is not UTF-8", src.secret_file.display()),
            )
        })?
        .trim()
        .to_string();
    if s.is_empty() {
        return Err(CloudError::permanent(
            &src.name,
            format!("{}: the secret file is empty", src.secret_file.display()),
        ));
    }
    Ok(s)
}

/// One reqwest client for a vendor source: rustls with ring, its CA file
/// (for a TLS-inspecting proxy or the tests) or the system roots, no
/// redirects, HTTPS only.
pub fn client(src: &CloudSource) -> Result<reqwest::Client, CloudError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .timeout(src.timeout)
        .connect_timeout(src.timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .https_only(true)
        .user_agent(concat!("certswap/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &src.ca_file {
        let pem = owner::trusted_dir("CA file", &crate::fsio::parent_of(ca))
            .and_then(|()| {
                let real = std::fs::canonicalize(ca).map_err(|source| OwnerError::Io {
                    what: "CA file",
                    path: ca.clone(),
                    source,
                })?;
                owner::read_trusted("CA file", &real, MAX_FILE_BYTES)
            })
            .map_err(|e| match e {
                OwnerError::Io { .. } | OwnerError::TooLarge { .. } => {
                    CloudError::permanent(&src.name, e.to_string())
                }
                other => CloudError::Unsafe(other),
            })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            CloudError::permanent(
                &src.name,
                format!("{}: not PEM certificates: {e}", ca.display()),
            )
        })?;
        b = b.tls_certs_only(certs);
    }
    b.build().map_err(|e| {
        CloudError::permanent(
            &src.name,
            format!(
                "cannot set up the HTTPS client: {}",
                crate::redact::reqwest_error(e)
            ),
        )
    })
}

/// `host[:port]` of the endpoint, as the `Host` header carries it (signed).
pub fn host_header(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

/// Send `req` (retrying `Throttling` answers a few times with a growing
/// wait), read at most [`MAX_ANSWER_BYTES`], and return (status, body).
/// `throttled` tells a throttling answer by status and body.
pub async fn send(
    src: &CloudSource,
    build: &dyn Fn() -> Result<reqwest::RequestBuilder, CloudError>,
    throttled: &dyn Fn(u16, &[u8]) -> bool,
) -> Result<(u16, Vec<u8>), CloudError> {
    let mut wait = Duration::from_secs(1);
    let mut attempt = 0;
    loop {
        let mut resp = build()?.send().await.map_err(|e| {
            CloudError::transient(
                &src.name,
                format!("{}: {}", src.endpoint, crate::redact::reqwest_error(e)),
            )
        })?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    body.extend_from_slice(&c);
                    if body.len() as u64 > MAX_ANSWER_BYTES {
                        return Err(CloudError::permanent(
                            &src.name,
                            format!("{}: the answer is larger than 1 MiB", src.endpoint),
                        ));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(CloudError::transient(
                        &src.name,
                        format!(
                            "{}: the answer could not be read completely: {}",
                            src.endpoint,
                            crate::redact::reqwest_error(e)
                        ),
                    ));
                }
            }
        }
        if throttled(status, &body) {
            attempt += 1;
            if attempt > THROTTLE_RETRIES {
                return Err(CloudError::transient(
                    &src.name,
                    "the vendor kept answering Throttling; tried again on a later pass",
                ));
            }
            tracing::info!(source = %src.name, "the vendor answered Throttling; trying again in {} s", wait.as_secs());
            tokio::time::sleep(wait).await;
            wait *= 2;
            continue;
        }
        if status >= 500 {
            return Err(CloudError::transient(
                &src.name,
                format!("{}: the vendor answered {status}", src.endpoint),
            ));
        }
        return Ok((status, body));
    }
}

/// One issued certificate as the list call describes it.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The vendor's certificate id.
    pub id: String,
    /// Names the list gives (common name and SANs), lowercase.
    pub names: Vec<String>,
    pub not_after: OffsetDateTime,
    /// A Chinese SM2 certificate: not servable by nginx/apache with OpenSSL.
    pub sm2: bool,
}

impl Issued {
    /// `name` is covered by one of the names (exact or one-label wildcard).
    fn covers(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.names.iter().any(|n| {
            n == &name
                || n.strip_prefix("*.").is_some_and(|base| {
                    name.split_once('.')
                        .is_some_and(|(first, rest)| !first.is_empty() && rest == base)
                })
        })
    }
}

/// What the selection decided for one site.
#[derive(Debug, Clone)]
pub struct Choice<'a> {
    pub site: &'a Site,
    /// The certificate to install, if any.
    pub pick: Option<Issued>,
    /// Why (or why not), one sentence.
    pub why: String,
}

/// For every site: the newest issued certificate whose names cover every
/// name of the site and that ends later than the installed leaf; a
/// refused id (seen-state) is skipped. Config order.
pub fn select<'a>(
    cfg: &'a Config,
    issued: &[Issued],
    refused: &BTreeSet<String>,
) -> Vec<Choice<'a>> {
    let mut out = Vec::new();
    for site in &cfg.sites {
        let installed = bundle::read_leaf(&site.cert).ok().map(|c| c.not_after);
        let names = site.all_names();
        let covering: Vec<&Issued> = issued
            .iter()
            .filter(|i| names.iter().all(|n| i.covers(n)))
            .collect();
        let partial: Vec<&Issued> = issued
            .iter()
            .filter(|i| names.iter().any(|n| i.covers(n)) && !names.iter().all(|n| i.covers(n)))
            .collect();
        let newest = covering
            .iter()
            .filter(|i| !i.sm2 && !refused.contains(&i.id))
            .filter(|i| installed.is_none_or(|na| i.not_after > na))
            .max_by_key(|i| i.not_after);
        let (pick, why) = match newest {
            Some(i) => (
                Some((*i).clone()),
                format!(
                    "certificate {} ends {} , later than the installed one",
                    i.id,
                    crate::cert::rfc3339(i.not_after)
                )
                .replace(" ,", ","),
            ),
            None => {
                let why = if let Some(sm2) = covering.iter().find(|i| i.sm2) {
                    format!(
                        "certificate {} is an SM2 (Chinese national algorithm) certificate, which nginx and apache with OpenSSL cannot serve; it is not installed",
                        sm2.id
                    )
                } else if let Some(r) = covering.iter().find(|i| refused.contains(&i.id)) {
                    format!(
                        "certificate {} was refused before (see the earlier log) and is not tried again",
                        r.id
                    )
                } else if !covering.is_empty() {
                    "no issued certificate ends later than the installed one".to_string()
                } else if let Some(p) = partial.first() {
                    let missing: Vec<&String> = names.iter().filter(|n| !p.covers(n)).collect();
                    format!(
                        "certificate {} does not cover {} of the site's names ({}); it is not installed",
                        p.id,
                        missing.len(),
                        missing
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                } else {
                    "no issued certificate covers the site's names".to_string()
                };
                (None, why)
            }
        };
        out.push(Choice { site, pick, why });
    }
    out
}

/// The certificate and (optional) key a detail call returned.
#[derive(Debug)]
pub struct Detail {
    pub cert_pem: String,
    pub key_pem: Option<String>,
}

impl Detail {
    /// The PEM fields `cert` and `key` of a detail answer `v` (each vendor
    /// names them its own way). No certificate is a verdict on that id; an
    /// empty key means the key stayed on the server (own CSR).
    pub fn from_answer(
        source: &str,
        id: &str,
        v: &serde_json::Value,
        cert: &str,
        key: &str,
    ) -> Result<Detail, CloudError> {
        let cert_pem = v
            .get(cert)
            .and_then(|c| c.as_str())
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                CloudError::permanent(
                    source,
                    format!("certificate {id}: the answer holds no certificate"),
                )
            })?
            .to_string();
        let key_pem = v
            .get(key)
            .and_then(|c| c.as_str())
            .filter(|c| !c.trim().is_empty())
            .map(str::to_string);
        Ok(Detail { cert_pem, key_pem })
    }
}

/// Why one certificate's detail cannot be installed: a verdict on those
/// bytes (refused for good, remembered in the seen-state).
#[derive(Debug)]
pub struct Refusal(pub String);

/// Check the detail of `pick` for `site` and write it into `work`: the
/// leaf must parse completely, cover the site's names, and the key (the
/// vendor's, or the installed one when the vendor keeps none) must match.
pub fn candidate(
    src: &CloudSource,
    site: &Site,
    pick: &Issued,
    detail: &Detail,
    work: &WorkDir,
) -> Result<Result<(Candidate, String), Refusal>, CloudError> {
    let label = format!("{} certificate {}", src.name, pick.id);
    let as_path = PathBuf::from(&label);
    let certs = match bundle::parse_certs_bytes(&as_path, detail.cert_pem.as_bytes()) {
        Ok(c) if !c.is_empty() => c,
        Ok(_) => {
            return Ok(Err(Refusal(format!(
                "{label}: the answer holds no certificate"
            ))));
        }
        Err(e) => {
            return Ok(Err(Refusal(format!(
                "{label}: the certificate in the answer cannot be read ({e})"
            ))));
        }
    };
    // A truncated PEM may still parse its first blocks: the text must end
    // with a complete block.
    if !detail
        .cert_pem
        .trim_end()
        .ends_with("-----END CERTIFICATE-----")
    {
        return Ok(Err(Refusal(format!(
            "{label}: the certificate in the answer is truncated (no END line after the last block)"
        ))));
    }
    let leaf = &certs[0];
    let missing: Vec<String> = site
        .all_names()
        .into_iter()
        .filter(|n| !leaf.covers(n))
        .collect();
    if !missing.is_empty() {
        return Ok(Err(Refusal(format!(
            "{label}: the certificate does not cover {} of site {} (it names {})",
            missing.join(", "),
            site.name,
            leaf.names.join(", ")
        ))));
    }
    // The list's end date is not trusted either: the bytes must be newer.
    let installed = bundle::read_leaf(&site.cert).ok();
    if let Some(i) = installed
        && leaf.not_after <= i.not_after
    {
        return Ok(Err(Refusal(format!(
            "{label}: the certificate ends {}, not later than the installed one ({}); it is not installed",
            crate::cert::rfc3339(leaf.not_after),
            crate::cert::rfc3339(i.not_after)
        ))));
    }
    let key_spki = match &detail.key_pem {
        Some(k) => match bundle::parse_key_bytes(&as_path, k.as_bytes()) {
            Ok(km) => Some(km.spki_der),
            Err(_) => {
                return Ok(Err(Refusal(format!(
                    "{label}: the private key in the answer cannot be read"
                ))));
            }
        },
        None => None,
    };
    let matches = match &key_spki {
        Some(s) => *s == leaf.spki_der,
        // Own CSR: the key stays on the server; it must be the installed one.
        None => bundle::read_key(&site.key).is_ok_and(|k| k.spki_der == leaf.spki_der),
    };
    if !matches {
        let whose = if key_spki.is_some() {
            "the private key in the answer"
        } else {
            "the installed key"
        };
        return Ok(Err(Refusal(format!(
            "{label}: {whose} does not belong to the certificate; it is not installed"
        ))));
    }
    let work_err = |e: std::io::Error| {
        CloudError::transient(&src.name, format!("cannot write into the work dir: {e}"))
    };
    let dir = work.bundle_dir().map_err(work_err)?;
    let cert = write_part(&dir, "cert.pem", detail.cert_pem.as_bytes()).map_err(work_err)?;
    let key = match &detail.key_pem {
        Some(k) => Some(write_part(&dir, "key.pem", k.as_bytes()).map_err(work_err)?),
        None => None,
    };
    let mut display = vec![(cert.clone(), format!("{label} (certificate)"))];
    if let Some(k) = &key {
        display.push((k.clone(), format!("{label} (key)")));
    }
    Ok(Ok((
        Candidate {
            site: site.name.clone(),
            cert,
            key,
            chain: None,
            leaf_sha256: Some(leaf.sha256.clone()),
            display,
        },
        leaf.sha256.clone(),
    )))
}

/// `state_dir/agent/cloud/<source name, reduced to [A-Za-z0-9._-]>.refused`:
/// one refused certificate id a line.
fn seen_file(state_dir: &Path, src: &CloudSource) -> PathBuf {
    let safe: String = src
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    state_dir
        .join("agent")
        .join("cloud")
        .join(format!("{safe}.refused"))
}

/// The ids refused for good; a missing or unreadable file is none.
pub fn load_refused(state_dir: &Path, src: &CloudSource) -> BTreeSet<String> {
    std::fs::read_to_string(seen_file(state_dir, src))
        .map(|t| {
            t.lines()
                .map(str::to_string)
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Remember `id` as refused (written atomically, 0600).
pub fn save_refused(state_dir: &Path, src: &CloudSource, refused: &BTreeSet<String>) {
    let path = seen_file(state_dir, src);
    if let Some(dir) = path.parent()
        && let Err(e) = super::mkdir_private_all(dir)
    {
        tracing::warn!(source = %src.name, "cannot remember refused certificates: {e}");
        return;
    }
    let text: String = refused.iter().map(|i| format!("{i}\n")).collect();
    if let Err(e) =
        crate::fsio::write_atomic(&path, text.as_bytes(), crate::fsio::Perms::own(0o600))
    {
        tracing::warn!(source = %src.name, "cannot remember refused certificates in {}: {e}", path.display());
    }
}

/// The list of issued certificates of `src`.
pub async fn list(
    src: &CloudSource,
    http: &reqwest::Client,
    secret: &str,
) -> Result<Vec<Issued>, CloudError> {
    match src.vendor {
        Vendor::Aliyun => super::aliyun::list(src, http, secret).await,
        Vendor::Tencent => super::tencent::list(src, http, secret).await,
    }
}

/// The certificate (and key, if the vendor holds it) of `id`.
pub async fn detail(
    src: &CloudSource,
    http: &reqwest::Client,
    secret: &str,
    id: &str,
) -> Result<Detail, CloudError> {
    match src.vendor {
        Vendor::Aliyun => super::aliyun::detail(src, http, secret, id).await,
        Vendor::Tencent => super::tencent::detail(src, http, secret, id).await,
    }
}

/// What one look at a vendor account found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Checked bundles to install: candidate, leaf SHA-256, certificate id.
    pub found: Vec<(Candidate, String, String)>,
    /// Certificates refused for good in this look (already remembered).
    pub refused: Vec<String>,
    /// Per site, why nothing is installed from this source.
    pub skipped: Vec<(String, String)>,
}

/// One look at `src`: one list call (paged), then a detail call only for a
/// site's pick; each detail is checked and written into `work`. An id
/// refused here is added to the seen-state. `skip(site, id)` tells a pick
/// an earlier install refused.
pub async fn scan(
    src: &CloudSource,
    cfg: &Config,
    secret: &str,
    work: &WorkDir,
    skip: &(dyn Fn(&str, &str) -> bool + Sync),
) -> Result<Scan, CloudError> {
    let http = client(src)?;
    let issued = list(src, &http, secret).await?;
    let mut refused = load_refused(&cfg.state_dir, src);
    let mut out = Scan::default();
    let choices = select(cfg, &issued, &refused);
    let mut changed = false;
    for ch in choices {
        let Some(pick) = ch.pick else {
            out.skipped.push((ch.site.name.clone(), ch.why));
            continue;
        };
        if skip(&ch.site.name, &pick.id) {
            continue;
        }
        let d = detail(src, &http, secret, &pick.id).await?;
        match candidate(src, ch.site, &pick, &d, work)? {
            Ok((c, sha)) => out.found.push((c, sha, pick.id.clone())),
            Err(Refusal(why)) => {
                refused.insert(pick.id.clone());
                changed = true;
                out.refused.push(why);
            }
        }
    }
    if changed {
        save_refused(&cfg.state_dir, src, &refused);
    }
    Ok(out)
}

/// Remember that an install refused certificate `id` of `src` (a verdict
/// on its bytes): it is not fetched again.
pub fn refuse(state_dir: &Path, src: &CloudSource, id: &str) {
    let mut refused = load_refused(state_dir, src);
    if refused.insert(id.to_string()) {
        save_refused(state_dir, src, &refused);
    }
}

/// One row of `certswap sources`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanRow {
    pub source: String,
    pub kind: &'static str,
    pub site: String,
    /// The certificate that would be installed now.
    pub certificate_id: Option<String>,
    pub not_after: Option<String>,
    pub install: bool,
    pub why: String,
}

/// What `src` would install now, read-only: the list call and the
/// selection; nothing is downloaded or written.
pub async fn plan(src: &CloudSource, cfg: &Config) -> Result<Vec<PlanRow>, CloudError> {
    let secret = read_secret(src)?;
    let http = client(src)?;
    let issued = list(src, &http, &secret).await?;
    let refused = load_refused(&cfg.state_dir, src);
    Ok(select(cfg, &issued, &refused)
        .into_iter()
        .map(|c| PlanRow {
            source: src.name.clone(),
            kind: src.vendor.kind(),
            site: c.site.name.clone(),
            certificate_id: c.pick.as_ref().map(|p| p.id.clone()),
            not_after: c.pick.as_ref().map(|p| crate::cert::rfc3339(p.not_after)),
            install: c.pick.is_some(),
            why: c.why,
        })
        .collect())
}

/// Parse `2024-05-01 12:00:00` (the vendors' console time, Beijing time,
/// UTC+8) or an RFC 3339 time.
pub fn parse_vendor_time(s: &str) -> Option<OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t);
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(s.trim(), &fmt)
        .ok()
        .map(|p| p.assume_offset(time::macros::offset!(+8)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        assert_eq!(percent_encode("a b*c~d/é+="), "a%20b%2Ac~d%2F%C3%A9%2B%3D");
    }

    #[test]
    fn wildcards_cover_one_label_only() {
        let i = Issued {
            id: "1".into(),
            names: vec!["*.example.com".into()],
            not_after: OffsetDateTime::UNIX_EPOCH,
            sm2: false,
        };
        assert!(i.covers("www.example.com"));
        assert!(!i.covers("a.b.example.com"));
        assert!(!i.covers("example.com"));
    }

    fn parse(extra: &str) -> Result<Config, String> {
        let t = format!(
            "state_dir = \"/tmp/st\"\n[server]\nkind = \"nginx\"\n[[site]]\nname = \"a.test\"\n\
             cert = \"/c/a.pem\"\nkey = \"/c/a.key\"\nendpoints = [\"127.0.0.1:443\"]\n[[source]]\n{extra}"
        );
        Config::parse(&t, Path::new("/x.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn vendor_sources_are_configured_with_a_key_id_a_secret_file_and_an_endpoint() {
        let cfg = parse(
            "kind = \"tencent-ssl\"\nsecret_id = \"AKIDx\"\nsecret_key_file = \"/etc/certswap/t.secret\"\n",
        )
        .expect("tencent");
        let crate::config::SourceConfig::Cloud(c) = &cfg.sources[0] else {
            panic!("not a cloud source");
        };
        assert_eq!(c.endpoint.as_str(), "https://ssl.tencentcloudapi.com/");
        assert_eq!(c.name, "tencent-ssl:AKIDx");
        let cfg = parse(
            "kind = \"aliyun-cas\"\naccess_key_id = \"LTAIx\"\naccess_key_secret_file = \"/s\"\nendpoint = \"https://proxy.example:8443/\"\n",
        )
        .expect("aliyun");
        let crate::config::SourceConfig::Cloud(c) = &cfg.sources[0] else {
            panic!("not a cloud source");
        };
        assert_eq!(c.vendor, Vendor::Aliyun);
        assert_eq!(host_header(&c.endpoint), "proxy.example:8443");

        let e = parse("kind = \"tencent-ssl\"\nsecret_id = \"AKIDx\"\n").expect_err("no file");
        assert!(
            e.contains("secret_key_file") && e.contains("missing"),
            "{e}"
        );
        let e = parse("kind = \"tencent-ssl\"\nsecret_id = \"x\"\nsecret_key_file = \"/s\"\naccess_key_id = \"y\"\n")
            .expect_err("other vendor's key");
        assert!(
            e.contains("access_key_id") && e.contains("does not apply"),
            "{e}"
        );
        let e = parse("kind = \"inbox\"\npath = \"/in\"\nsecret_id = \"x\"\n").expect_err("inbox");
        assert!(
            e.contains("secret_id") && e.contains("does not apply"),
            "{e}"
        );
        let e = parse("kind = \"aliyun-cas\"\naccess_key_id = \"x\"\naccess_key_secret_file = \"/s\"\nendpoint = \"http://cas.example/\"\n")
            .expect_err("http");
        assert!(e.contains("endpoint"), "{e}");
    }

    #[test]
    fn console_times_are_beijing_time() {
        let t = parse_vendor_time("2025-01-01 08:00:00").expect("time");
        assert_eq!(t.unix_timestamp(), 1_735_689_600);
    }
}
