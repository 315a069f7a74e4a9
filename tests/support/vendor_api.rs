//! A fake vendor account behind a real HTTPS server on 127.0.0.1 (rustls,
//! its own rcgen CA as the source's `ca_file`): the part of Tencent Cloud
//! SSL (2019-12-05: DescribeCertificates, DescribeCertificateDetail) and of
//! Alibaba Cloud CAS (2020-04-07: ListUserCertificateOrder,
//! GetUserCertificateDetail) that certswap uses, paged, with throttling on
//! demand. Every request's signature is checked here with this file's own
//! reading of the vendors' documented algorithms (TC3-HMAC-SHA256,
//! ACS3-HMAC-SHA256), not with certswap's code; a request that fails it is
//! answered as the vendor would and counted.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ring::{digest, hmac};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::support::pki::{Ca, Leaf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Tencent,
    Aliyun,
}

/// One certificate of the fake account.
#[derive(Debug, Clone)]
pub struct FakeCert {
    pub id: String,
    /// What the list call says (may differ from the certificate, to test
    /// that certswap checks the bytes).
    pub names: Vec<String>,
    pub not_after: OffsetDateTime,
    pub cert_pem: String,
    /// None: the key was never uploaded (own CSR).
    pub key_pem: Option<String>,
    /// Listed as an SM2 (Chinese national algorithm) certificate.
    pub sm2: bool,
}

impl FakeCert {
    pub fn of(id: &str, leaf: &Leaf) -> FakeCert {
        FakeCert {
            id: id.to_string(),
            names: leaf.names.clone(),
            not_after: leaf.not_after,
            cert_pem: leaf.fullchain_pem(),
            key_pem: Some(leaf.key_pem.clone()),
            sm2: false,
        }
    }
}

/// One request the API saw.
#[derive(Debug, Clone)]
pub struct Call {
    pub action: String,
    /// The JSON body (Tencent) or the query parameters (Aliyun).
    pub params: BTreeMap<String, String>,
    pub signature_ok: bool,
}

struct State {
    api: Api,
    key_id: String,
    secret: String,
    certs: Vec<FakeCert>,
    max_page: usize,
    throttle: u32,
    calls: Vec<Call>,
    nonces: HashSet<String>,
}

pub struct VendorApi {
    pub port: u16,
    pub ca_file: PathBuf,
    state: Arc<Mutex<State>>,
}

impl VendorApi {
    /// Serve the account of `key_id` / `secret`; `dir` receives
    /// `vendor-ca.pem`. Pages hold at most 2 certificates.
    pub fn start(dir: &Path, api: Api, key_id: &str, secret: &str) -> VendorApi {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let ca = Ca::new("certswap test vendor API CA");
        let leaf = ca.leaf(&["127.0.0.1", "localhost"]).build();
        let ca_file = dir.join("vendor-ca.pem");
        fs::write(&ca_file, ca.cert_pem()).expect("write vendor CA");
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("leaf PEM");
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key PEM");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server cert");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind vendor API");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(State {
            api,
            key_id: key_id.to_string(),
            secret: secret.to_string(),
            certs: Vec::new(),
            max_page: 2,
            throttle: 0,
            calls: Vec::new(),
            nonces: HashSet::new(),
        }));
        crate::agent_util::serve_tls(listener, acceptor, state.clone(), serve);
        VendorApi {
            port,
            ca_file,
            state,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}/", self.port)
    }

    /// Issue `cert` "in the console".
    pub fn add(&self, cert: FakeCert) {
        self.state.lock().expect("state").certs.push(cert);
    }

    /// Answer the next `n` requests with the vendor's throttling error.
    pub fn throttle(&self, n: u32) {
        self.state.lock().expect("state").throttle = n;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().expect("state").calls.clone()
    }

    pub fn actions(&self) -> Vec<String> {
        self.calls().into_iter().map(|c| c.action).collect()
    }

    pub fn clear_calls(&self) {
        self.state.lock().expect("state").calls.clear();
    }
}

fn sha256_hex(b: &[u8]) -> String {
    digest::digest(&digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn mac(key: &[u8], data: &str) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
        .as_ref()
        .to_vec()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `%XX` decoding of a query component (`+` is a literal plus in RFC 3986).
fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 3986 encoding as Alibaba's signature document specifies it.
fn pct_encode(s: &str) -> String {
    const KEEP: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~";
    s.bytes()
        .map(|b| {
            if KEEP.contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `Key=Value, Key=Value` (Tencent) or `Key=Value,Key=Value` (Alibaba)
/// after the algorithm name.
fn auth_fields(auth: &str, algorithm: &str) -> Option<BTreeMap<String, String>> {
    let rest = auth.strip_prefix(algorithm)?.trim();
    Some(
        rest.split(',')
            .filter_map(|kv| kv.trim().split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// Tencent's TC3-HMAC-SHA256, from the document: the request's own signed
/// headers, its body, its X-TC-Timestamp (within 5 minutes, date in UTC).
fn tc3_ok(st: &State, headers: &BTreeMap<String, String>, body: &[u8]) -> Result<(), &'static str> {
    let auth = headers
        .get("authorization")
        .ok_or("AuthFailure.SignatureFailure")?;
    let f = auth_fields(auth, "TC3-HMAC-SHA256").ok_or("AuthFailure.SignatureFailure")?;
    let cred = f.get("Credential").ok_or("AuthFailure.SignatureFailure")?;
    let parts: Vec<&str> = cred.split('/').collect();
    if parts.len() != 4 || parts[2] != "ssl" || parts[3] != "tc3_request" {
        return Err("AuthFailure.SignatureFailure");
    }
    if parts[0] != st.key_id {
        return Err("AuthFailure.SecretIdNotFound");
    }
    let ts: i64 = headers
        .get("x-tc-timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or("AuthFailure.SignatureFailure")?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    if (now - ts).abs() > 300 {
        return Err("AuthFailure.SignatureExpire");
    }
    let t = OffsetDateTime::from_unix_timestamp(ts).map_err(|_| "AuthFailure.SignatureFailure")?;
    let date = format!("{}-{:02}-{:02}", t.year(), t.month() as u8, t.day());
    if parts[1] != date {
        return Err("AuthFailure.SignatureFailure");
    }
    let signed = f
        .get("SignedHeaders")
        .ok_or("AuthFailure.SignatureFailure")?;
    let names: Vec<&str> = signed.split(';').collect();
    if !names.contains(&"content-type") || !names.contains(&"host") {
        return Err("AuthFailure.SignatureFailure");
    }
    let mut canon_headers = String::new();
    for n in &names {
        let v = headers.get(*n).ok_or("AuthFailure.SignatureFailure")?;
        canon_headers += &format!("{n}:{}\n", v.trim().to_lowercase());
    }
    let canonical = ["POST", "/", "", &canon_headers, signed, &sha256_hex(body)].join("\n");
    let to_sign = format!(
        "TC3-HMAC-SHA256\n{ts}\n{date}/ssl/tc3_request\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let key = ["ssl", "tc3_request"].iter().fold(
        mac(format!("TC3{}", st.secret).as_bytes(), &date),
        |k, part| mac(&k, part),
    );
    if f.get("Signature").map(String::as_str) == Some(to_hex(&mac(&key, &to_sign)).as_str()) {
        Ok(())
    } else {
        Err("AuthFailure.SignatureFailure")
    }
}

/// Alibaba's ACS3-HMAC-SHA256, from the document: canonical query from
/// the request line (decoded, re-encoded, sorted), the signed headers, the
/// body hash (which must match x-acs-content-sha256), a fresh nonce.
fn acs3_ok(
    st: &mut State,
    query: &str,
    headers: &BTreeMap<String, String>,
    body: &[u8],
) -> Result<(), &'static str> {
    let auth = headers.get("authorization").ok_or("IncompleteSignature")?;
    let f = auth_fields(auth, "ACS3-HMAC-SHA256").ok_or("IncompleteSignature")?;
    if f.get("Credential") != Some(&st.key_id) {
        return Err("InvalidAccessKeyId.NotFound");
    }
    let signed = f.get("SignedHeaders").ok_or("IncompleteSignature")?;
    let names: Vec<&str> = signed.split(';').collect();
    for must in [
        "host",
        "x-acs-action",
        "x-acs-content-sha256",
        "x-acs-date",
        "x-acs-signature-nonce",
        "x-acs-version",
    ] {
        if !names.contains(&must) {
            return Err("IncompleteSignature");
        }
    }
    let hashed = sha256_hex(body);
    if headers.get("x-acs-content-sha256") != Some(&hashed) {
        return Err("SignatureDoesNotMatch");
    }
    let nonce = headers
        .get("x-acs-signature-nonce")
        .cloned()
        .unwrap_or_default();
    if !st.nonces.insert(nonce) {
        return Err("SignatureNonceUsed");
    }
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (pct_encode(&pct_decode(k)), pct_encode(&pct_decode(v)))
        })
        .collect();
    pairs.sort();
    let canon_query = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut canon_headers = String::new();
    for n in &names {
        let v = headers.get(*n).ok_or("IncompleteSignature")?;
        canon_headers += &format!("{n}:{}\n", v.trim());
    }
    let canonical = ["POST", "/", &canon_query, &canon_headers, signed, &hashed].join("\n");
    let to_sign = format!("ACS3-HMAC-SHA256\n{}", sha256_hex(canonical.as_bytes()));
    if f.get("Signature").map(String::as_str)
        == Some(to_hex(&mac(st.secret.as_bytes(), &to_sign)).as_str())
    {
        Ok(())
    } else {
        Err("SignatureDoesNotMatch")
    }
}

fn beijing(t: OffsetDateTime) -> String {
    let b = t.to_offset(time::macros::offset!(+8));
    format!(
        "{}-{:02}-{:02} {:02}:{:02}:{:02}",
        b.year(),
        b.month() as u8,
        b.day(),
        b.hour(),
        b.minute(),
        b.second()
    )
}

/// Answer one request: (HTTP status, JSON body).
fn answer(
    st: &mut State,
    query: &str,
    headers: &BTreeMap<String, String>,
    body: &[u8],
) -> (u16, Value) {
    let api = st.api;
    let action = match api {
        Api::Tencent => headers.get("x-tc-action").cloned(),
        Api::Aliyun => headers.get("x-acs-action").cloned(),
    }
    .unwrap_or_default();
    let params: BTreeMap<String, String> = match api {
        Api::Tencent => serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .map(|o| o.into_iter().map(|(k, v)| (k, v.to_string())).collect())
            .unwrap_or_default(),
        Api::Aliyun => query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (pct_decode(k), pct_decode(v)))
            .collect(),
    };
    let verdict = match api {
        Api::Tencent => tc3_ok(st, headers, body),
        Api::Aliyun => acs3_ok(st, query, headers, body),
    };
    st.calls.push(Call {
        action: action.clone(),
        params: params.clone(),
        signature_ok: verdict.is_ok(),
    });
    let tencent_err = |code: &str| json!({"Response": {"Error": {"Code": code, "Message": format!("{code} (test vendor API)")}, "RequestId": "req-1"}});
    let aliyun_err = |code: &str| json!({"Code": code, "Message": format!("{code} (test vendor API)"), "RequestId": "req-1"});
    if let Err(code) = verdict {
        return match api {
            Api::Tencent => (200, tencent_err(code)),
            Api::Aliyun => (400, aliyun_err(code)),
        };
    }
    if st.throttle > 0 {
        st.throttle -= 1;
        return match api {
            Api::Tencent => (200, tencent_err("RequestLimitExceeded")),
            Api::Aliyun => (400, aliyun_err("Throttling.User")),
        };
    }
    let num = |k: &str, d: usize| {
        params
            .get(k)
            .map(|v| v.trim_matches('"'))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(d)
    };
    let find = |id: &str| {
        st.certs
            .iter()
            .find(|c| c.id == id.trim_matches('"'))
            .cloned()
    };
    match (api, action.as_str()) {
        (Api::Tencent, "DescribeCertificates") => {
            let offset = num("Offset", 0);
            let limit = num("Limit", 20).min(st.max_page);
            let page: Vec<Value> = st
                .certs
                .iter()
                .skip(offset)
                .take(limit)
                .map(|c| {
                    json!({
                        "CertificateId": c.id, "Domain": c.names[0], "SubjectAltName": c.names,
                        "CertEndTime": beijing(c.not_after), "Status": 1, "EncryptAlgorithm": if c.sm2 { "SM2" } else { "ECC" },
                    })
                })
                .collect();
            (
                200,
                json!({"Response": {"TotalCount": st.certs.len(), "Certificates": page, "RequestId": "req-2"}}),
            )
        }
        (Api::Tencent, "DescribeCertificateDetail") => {
            match params.get("CertificateId").and_then(|i| find(i)) {
                Some(c) => (
                    200,
                    json!({"Response": {"CertificateId": c.id, "CertificatePublicKey": c.cert_pem,
                    "CertificatePrivateKey": c.key_pem.unwrap_or_default(), "RequestId": "req-3"}}),
                ),
                None => (200, tencent_err("FailedOperation.CertificateNotFound")),
            }
        }
        (Api::Aliyun, "ListUserCertificateOrder") => {
            if params.get("OrderType").map(String::as_str) != Some("CERT")
                || params.get("Status").map(String::as_str) != Some("ISSUED")
            {
                return (400, aliyun_err("InvalidParameter"));
            }
            let page_no = num("CurrentPage", 1).max(1);
            let size = num("ShowSize", 50).min(st.max_page);
            let page: Vec<Value> = st
                .certs
                .iter()
                .skip((page_no - 1) * size)
                .take(size)
                .map(|c| {
                    json!({
                        "CertificateId": c.id.parse::<u64>().unwrap_or(0), "CommonName": c.names[0],
                        "Sans": c.names.join(","), "CertEndTime": c.not_after.unix_timestamp() * 1000,
                        "Status": "ISSUED", "Algorithm": if c.sm2 { "SM2" } else { "ECC" },
                    })
                })
                .collect();
            (
                200,
                json!({"TotalCount": st.certs.len(), "CurrentPage": page_no, "ShowSize": size, "CertificateOrderList": page, "RequestId": "req-2"}),
            )
        }
        (Api::Aliyun, "GetUserCertificateDetail") => {
            match params.get("CertId").and_then(|i| find(i)) {
                Some(c) => (
                    200,
                    json!({"Id": c.id, "Cert": c.cert_pem, "Key": c.key_pem.unwrap_or_default(), "RequestId": "req-3"}),
                ),
                None => (400, aliyun_err("NotFound")),
            }
        }
        _ => match api {
            Api::Tencent => (200, tencent_err("InvalidAction")),
            Api::Aliyun => (404, aliyun_err("InvalidAction.NotFound")),
        },
    }
}

async fn serve(
    mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    st: Arc<Mutex<State>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match tls.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let target = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let query = target
        .split_once('?')
        .map(|(_, q)| q.to_string())
        .unwrap_or_default();
    let mut headers = BTreeMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        match tls.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let (status, value) = {
        let mut s = st.lock().expect("state");
        answer(&mut s, &query, &headers, &body)
    };
    let bytes = serde_json::to_vec(&value).expect("json");
    let out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        if status == 200 { "OK" } else { "Error" },
        bytes.len()
    );
    let _ = tls.write_all(out.as_bytes()).await;
    let _ = tls.write_all(&bytes).await;
    let _ = tls.flush().await;
    let _ = tls.shutdown().await;
}
