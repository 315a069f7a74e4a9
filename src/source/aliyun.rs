//! Alibaba Cloud Certificate Management Service (`kind = "aliyun-cas"`, API
//! version 2020-04-07, RPC style) as a source: `ListUserCertificateOrder`
//! (`OrderType=CERT`, `Status=ISSUED`, paged) lists the issued
//! certificates, `GetUserCertificateDetail` gives the PEM certificate and,
//! when Alibaba generated the CSR, the key. Every request is a POST with its
//! parameters in the query, signed with ACS3-HMAC-SHA256 (signature V3):
//! see [`authorization`].

use std::collections::BTreeMap;

use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;

use crate::config::CloudSource;
use crate::source::cloud::{
    self, CloudError, Detail, Issued, hex, hmac_sha256, percent_encode, sha256_hex,
};

const VERSION: &str = "2020-04-07";
const PAGE: u64 = 50;

/// `k=v&…` sorted by key, both percent-encoded (RFC 3986).
pub fn canonical_query(query: &BTreeMap<String, String>) -> String {
    query
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The canonical request: method, `/`, the query, the signed headers
/// (lowercase names, sorted: `BTreeMap`), their names, the payload hash.
pub fn canonical_request(
    method: &str,
    query: &BTreeMap<String, String>,
    headers: &BTreeMap<String, String>,
    payload_hash: &str,
) -> String {
    let canon: String = headers
        .iter()
        .map(|(k, v)| format!("{k}:{}\n", v.trim()))
        .collect();
    let signed = headers.keys().cloned().collect::<Vec<_>>().join(";");
    format!(
        "{method}\n/\n{}\n{canon}\n{signed}\n{payload_hash}",
        canonical_query(query)
    )
}

/// `ACS3-HMAC-SHA256 Credential=…,SignedHeaders=…,Signature=…` for the
/// request whose signed headers are `headers` (all of them are signed).
pub fn authorization(
    key_id: &str,
    secret: &str,
    method: &str,
    query: &BTreeMap<String, String>,
    headers: &BTreeMap<String, String>,
    payload_hash: &str,
) -> String {
    let canonical = canonical_request(method, query, headers, payload_hash);
    let sts = format!("ACS3-HMAC-SHA256\n{}", sha256_hex(canonical.as_bytes()));
    let signed = headers.keys().cloned().collect::<Vec<_>>().join(";");
    format!(
        "ACS3-HMAC-SHA256 Credential={key_id},SignedHeaders={signed},Signature={}",
        hex(&hmac_sha256(secret.as_bytes(), sts.as_bytes()))
    )
}

fn acs_date(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn nonce() -> String {
    let mut b = [0u8; 16];
    // The nonce only has to be unique; a failing RNG falls back to the clock.
    if SystemRandom::new().fill(&mut b).is_err() {
        let n = OffsetDateTime::now_utc().unix_timestamp_nanos();
        b = n.to_be_bytes();
    }
    hex(&b)
}

const AUTH_CODES: &[&str] = &[
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "Forbidden",
    "NoPermission",
    "InvalidSecurityToken",
];

async fn call(
    src: &CloudSource,
    http: &reqwest::Client,
    secret: &str,
    action: &str,
    params: &[(&str, String)],
) -> Result<serde_json::Value, CloudError> {
    let query: BTreeMap<String, String> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let host = cloud::host_header(&src.endpoint);
    let build = || {
        let empty = sha256_hex(b"");
        let headers: BTreeMap<String, String> = [
            ("host", host.clone()),
            ("x-acs-action", action.to_string()),
            ("x-acs-content-sha256", empty.clone()),
            ("x-acs-date", acs_date(OffsetDateTime::now_utc())),
            ("x-acs-signature-nonce", nonce()),
            ("x-acs-version", VERSION.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let auth = authorization(&src.key_id, secret, "POST", &query, &headers, &empty);
        let mut url = src.endpoint.clone();
        url.set_query(Some(&canonical_query(&query)));
        let mut req = http.post(url).header("Authorization", auth);
        for (k, v) in &headers {
            if k != "host" {
                req = req.header(k.as_str(), v.as_str());
            }
        }
        Ok(req)
    };
    let throttled =
        |_: u16, body: &[u8]| error_code(body).is_some_and(|c| c.starts_with("Throttling"));
    let (status, bytes) = cloud::send(src, &build, &throttled).await?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        CloudError::transient(
            &src.name,
            format!("{action}: the answer (HTTP {status}) is not JSON: {e}"),
        )
    })?;
    if status != 200 || v.get("Code").is_some_and(|c| c.is_string()) {
        let code = v
            .get("Code")
            .and_then(|c| c.as_str())
            .map(cloud::vendor_text)
            .unwrap_or_else(|| "?".into());
        let message = v
            .get("Message")
            .and_then(|c| c.as_str())
            .map(cloud::vendor_text)
            .unwrap_or_default();
        if AUTH_CODES.iter().any(|a| code.starts_with(a)) {
            return Err(CloudError::Auth {
                name: src.name.clone(),
                code,
                message,
            });
        }
        if code.starts_with("ServiceUnavailable") || code.starts_with("InternalError") {
            return Err(CloudError::transient(
                &src.name,
                format!("{action}: {code}: {message}"),
            ));
        }
        return Err(CloudError::permanent(
            &src.name,
            format!("{action}: HTTP {status}, {code}: {message}"),
        ));
    }
    Ok(v)
}

fn error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("Code")?.as_str().map(str::to_string)
}

fn id_of(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// Every issued certificate, page by page.
pub async fn list(
    src: &CloudSource,
    http: &reqwest::Client,
    secret: &str,
) -> Result<Vec<Issued>, CloudError> {
    let mut out = Vec::new();
    let mut page = 1u64;
    // Counted from what arrived: the server may cap ShowSize lower.
    let mut seen = 0u64;
    loop {
        let params = [
            ("OrderType", "CERT".to_string()),
            ("Status", "ISSUED".to_string()),
            ("CurrentPage", page.to_string()),
            ("ShowSize", PAGE.to_string()),
        ];
        let v = call(src, http, secret, "ListUserCertificateOrder", &params).await?;
        let total = v.get("TotalCount").and_then(|t| t.as_u64()).unwrap_or(0);
        let list = v
            .get("CertificateOrderList")
            .and_then(|c| c.as_array())
            .cloned()
            .unwrap_or_default();
        let n = list.len() as u64;
        for c in list {
            let Some(id) = c.get("CertificateId").and_then(id_of) else {
                continue;
            };
            let end = c
                .get("CertEndTime")
                .and_then(|t| t.as_i64())
                .and_then(|ms| OffsetDateTime::from_unix_timestamp(ms / 1000).ok())
                .or_else(|| {
                    c.get("EndDate")
                        .and_then(|t| t.as_str())
                        .and_then(cloud::parse_vendor_time)
                });
            let Some(end) = end else { continue };
            let mut names = Vec::new();
            if let Some(cn) = c.get("CommonName").and_then(|d| d.as_str()) {
                names.push(cn.to_ascii_lowercase());
            }
            if let Some(sans) = c.get("Sans").and_then(|d| d.as_str()) {
                names.extend(
                    sans.split(',')
                        .map(|s| s.trim().to_ascii_lowercase())
                        .filter(|s| !s.is_empty()),
                );
            }
            let sm2 = c
                .get("Algorithm")
                .and_then(|a| a.as_str())
                .is_some_and(|a| a.eq_ignore_ascii_case("SM2"));
            out.push(Issued {
                id,
                names,
                not_after: end,
                sm2,
            });
        }
        seen += n;
        if n == 0 || seen >= total || page >= cloud::MAX_PAGES {
            break;
        }
        page += 1;
    }
    Ok(out)
}

/// The PEM certificate and key of `id`.
pub async fn detail(
    src: &CloudSource,
    http: &reqwest::Client,
    secret: &str,
    id: &str,
) -> Result<Detail, CloudError> {
    let v = call(
        src,
        http,
        secret,
        "GetUserCertificateDetail",
        &[("CertId", id.to_string())],
    )
    .await?;
    Detail::from_answer(&src.name, id, &v, "Cert", "Key")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Alibaba Cloud's worked example in "V3 request structure and
    /// signature" (help.aliyun.com/zh/sdk/product-overview/
    /// v3-request-structure-and-signature): ECS RunInstances, POST, two
    /// query parameters, empty body, fixed date and nonce, AccessKey
    /// `YourAccessKeyId` / `YourAccessKeySecret`.
    #[test]
    fn acs3_signer_reproduces_alibabas_worked_example() {
        let query: BTreeMap<String, String> = [
            (
                "ImageId",
                "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd",
            ),
            ("RegionId", "cn-shanghai"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let empty = sha256_hex(b"");
        assert_eq!(
            empty,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let headers: BTreeMap<String, String> = [
            ("host", "ecs.cn-shanghai.aliyuncs.com"),
            ("x-acs-action", "RunInstances"),
            ("x-acs-content-sha256", empty.as_str()),
            ("x-acs-date", "2023-10-26T10:22:32Z"),
            ("x-acs-signature-nonce", "3156853299f313e23d1673dc12e1703d"),
            ("x-acs-version", "2014-05-26"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            canonical_request("POST", &query, &headers, &empty),
            "POST\n/\nImageId=win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd&RegionId=cn-shanghai\n\
             host:ecs.cn-shanghai.aliyuncs.com\nx-acs-action:RunInstances\n\
             x-acs-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-acs-date:2023-10-26T10:22:32Z\nx-acs-signature-nonce:3156853299f313e23d1673dc12e1703d\n\
             x-acs-version:2014-05-26\n\n\
             host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            authorization(
                "YourAccessKeyId",
                "YourAccessKeySecret",
                "POST",
                &query,
                &headers,
                &empty
            ),
            "ACS3-HMAC-SHA256 Credential=YourAccessKeyId,SignedHeaders=host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,Signature=06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        );
    }
}
