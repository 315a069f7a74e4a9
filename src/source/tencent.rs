//! Tencent Cloud SSL certificates (`kind = "tencent-ssl"`, API version
//! 2019-12-05, service `ssl`) as a source: `DescribeCertificates` lists the
//! issued certificates (paged, 100 a page), `DescribeCertificateDetail`
//! gives the PEM certificate and, when Tencent generated the CSR, the
//! private key. Every request is a JSON POST signed with TC3-HMAC-SHA256
//! (Tencent's "signature v3"): see [`authorization`].

use time::OffsetDateTime;

use crate::config::CloudSource;
use crate::source::cloud::{self, CloudError, Detail, Issued, hex, hmac_sha256, sha256_hex};

const SERVICE: &str = "ssl";
const VERSION: &str = "2019-12-05";
const CONTENT_TYPE: &str = "application/json; charset=utf-8";
const PAGE: u64 = 100;

/// The canonical request of a JSON POST to `/` (signed headers
/// `content-type;host`).
pub fn canonical_request(host: &str, payload: &[u8]) -> String {
    format!(
        "POST\n/\n\ncontent-type:{CONTENT_TYPE}\nhost:{host}\n\ncontent-type;host\n{}",
        sha256_hex(payload)
    )
}

/// The string to sign for `canonical` at `timestamp` (UTC date scope).
pub fn string_to_sign(timestamp: i64, service: &str, canonical: &str) -> String {
    format!(
        "TC3-HMAC-SHA256\n{timestamp}\n{}/{service}/tc3_request\n{}",
        utc_date(timestamp),
        sha256_hex(canonical.as_bytes())
    )
}

/// Hex HMAC of `string_to_sign` under the key derived from `secret_key`,
/// the UTC date and the service.
pub fn signature(secret_key: &str, timestamp: i64, service: &str, string_to_sign: &str) -> String {
    let date = utc_date(timestamp);
    let k_date = hmac_sha256(format!("TC3{secret_key}").as_bytes(), date.as_bytes());
    let k_service = hmac_sha256(&k_date, service.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"tc3_request");
    hex(&hmac_sha256(&k_signing, string_to_sign.as_bytes()))
}

/// The `Authorization` header of a JSON POST of `payload` to `host`.
pub fn authorization(
    secret_id: &str,
    secret_key: &str,
    host: &str,
    service: &str,
    timestamp: i64,
    payload: &[u8],
) -> String {
    let sts = string_to_sign(timestamp, service, &canonical_request(host, payload));
    format!(
        "TC3-HMAC-SHA256 Credential={secret_id}/{}/{service}/tc3_request, SignedHeaders=content-type;host, Signature={}",
        utc_date(timestamp),
        signature(secret_key, timestamp, service, &sts)
    )
}

fn utc_date(timestamp: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(timestamp).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

/// One call: `action` with the JSON `body`; the `Response` object of a
/// successful answer.
async fn call(
    src: &CloudSource,
    http: &reqwest::Client,
    secret: &str,
    action: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, CloudError> {
    let payload = body.to_string().into_bytes();
    let host = cloud::host_header(&src.endpoint);
    let build = || {
        let ts = OffsetDateTime::now_utc().unix_timestamp();
        Ok(http
            .post(src.endpoint.clone())
            .header(
                "Authorization",
                authorization(&src.key_id, secret, &host, SERVICE, ts, &payload),
            )
            .header("Content-Type", CONTENT_TYPE)
            .header("X-TC-Action", action)
            .header("X-TC-Version", VERSION)
            .header("X-TC-Timestamp", ts.to_string())
            .body(payload.clone()))
    };
    let throttled = |_: u16, body: &[u8]| {
        error_code(body).is_some_and(|c| c.starts_with("RequestLimitExceeded"))
    };
    let (status, bytes) = cloud::send(src, &build, &throttled).await?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        CloudError::transient(
            &src.name,
            format!("{action}: the answer (HTTP {status}) is not JSON: {e}"),
        )
    })?;
    let resp = v
        .get("Response")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    if let Some(err) = resp.get("Error") {
        let code = err
            .get("Code")
            .and_then(|c| c.as_str())
            .map(cloud::vendor_text)
            .unwrap_or_else(|| "?".into());
        let message = err
            .get("Message")
            .and_then(|c| c.as_str())
            .map(cloud::vendor_text)
            .unwrap_or_default();
        if code.starts_with("AuthFailure") || code.starts_with("UnauthorizedOperation") {
            return Err(CloudError::Auth {
                name: src.name.clone(),
                code,
                message,
            });
        }
        if code.starts_with("InternalError") || code == "ResourceUnavailable" {
            return Err(CloudError::transient(
                &src.name,
                format!("{action}: {code}: {message}"),
            ));
        }
        return Err(CloudError::permanent(
            &src.name,
            format!("{action}: {code}: {message}"),
        ));
    }
    if status != 200 {
        return Err(CloudError::permanent(
            &src.name,
            format!("{action}: the vendor answered HTTP {status}"),
        ));
    }
    Ok(resp)
}

fn error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.pointer("/Response/Error/Code")?
        .as_str()
        .map(str::to_string)
}

/// Every issued certificate (status 1), page by page.
pub async fn list(
    src: &CloudSource,
    http: &reqwest::Client,
    secret: &str,
) -> Result<Vec<Issued>, CloudError> {
    let mut out = Vec::new();
    let mut offset = 0u64;
    let mut pages = 0u64;
    loop {
        let body = serde_json::json!({"Offset": offset, "Limit": PAGE, "CertificateStatus": [1]});
        let resp = call(src, http, secret, "DescribeCertificates", &body).await?;
        let total = resp.get("TotalCount").and_then(|t| t.as_u64()).unwrap_or(0);
        let certs = resp
            .get("Certificates")
            .and_then(|c| c.as_array())
            .cloned()
            .unwrap_or_default();
        let n = certs.len() as u64;
        for c in certs {
            let Some(id) = c.get("CertificateId").and_then(|i| i.as_str()) else {
                continue;
            };
            let Some(end) = c
                .get("CertEndTime")
                .and_then(|t| t.as_str())
                .and_then(cloud::parse_vendor_time)
            else {
                continue;
            };
            let mut names: Vec<String> = Vec::new();
            if let Some(d) = c.get("Domain").and_then(|d| d.as_str()) {
                names.push(d.to_ascii_lowercase());
            }
            for s in c
                .get("SubjectAltName")
                .and_then(|s| s.as_array())
                .into_iter()
                .flatten()
            {
                if let Some(s) = s.as_str() {
                    names.push(s.to_ascii_lowercase());
                }
            }
            let sm2 = c
                .get("EncryptAlgorithm")
                .and_then(|a| a.as_str())
                .is_some_and(|a| a.eq_ignore_ascii_case("SM2"));
            out.push(Issued {
                id: id.to_string(),
                names,
                not_after: end,
                sm2,
            });
        }
        offset += n;
        pages += 1;
        if n == 0 || offset >= total || pages >= cloud::MAX_PAGES {
            break;
        }
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
    let resp = call(
        src,
        http,
        secret,
        "DescribeCertificateDetail",
        &serde_json::json!({"CertificateId": id}),
    )
    .await?;
    Detail::from_answer(
        &src.name,
        id,
        &resp,
        "CertificatePublicKey",
        "CertificatePrivateKey",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tencent's worked example in "Signature v3" (CVM DescribeInstances,
    /// timestamp 1551113065, SecretKey Gu5t9xGARNpq86cd98joQYCN3EXAMPLE):
    /// the hashed payload, canonical request, string to sign and signature
    /// the documentation prints.
    #[test]
    fn tc3_signer_reproduces_tencents_worked_example() {
        let payload = br#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;
        assert_eq!(
            sha256_hex(payload),
            "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
        );
        let canonical = canonical_request("cvm.tencentcloudapi.com", payload);
        assert_eq!(
            canonical,
            "POST\n/\n\ncontent-type:application/json; charset=utf-8\nhost:cvm.tencentcloudapi.com\n\ncontent-type;host\n35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
        );
        let sts = string_to_sign(1551113065, "cvm", &canonical);
        assert_eq!(
            sts,
            "TC3-HMAC-SHA256\n1551113065\n2019-02-25/cvm/tc3_request\n5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
        );
        assert_eq!(
            signature("Gu5t9xGARNpq86cd98joQYCN3EXAMPLE", 1551113065, "cvm", &sts),
            "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
        assert_eq!(
            authorization(
                "AKIDEXAMPLE",
                "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
                "cvm.tencentcloudapi.com",
                "cvm",
                1551113065,
                payload
            ),
            "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2019-02-25/cvm/tc3_request, SignedHeaders=content-type;host, Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
    }
}
