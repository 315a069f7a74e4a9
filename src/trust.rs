//! Trust: which roots visitors' clients accept, and the verdict on a chain
//! (path to a root, valid now, valid for the name, complete on its own).
//! One judge serves the probe (what is served) and validation (what is
//! about to be installed), so "trusted" means the same in both places.
//!
//! Anchors: Mozilla's root list (`webpki-roots`, what public clients
//! trust), the operating system's store, and `[trust] extra_roots` for
//! internal PKI — or, with `--ca` / `probe.ca_file`, only the given file.
//! Path building is rustls-webpki's; no AIA fetching, no local
//! intermediates: a chain is judged on what it carries.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::cert::CertInfo;

/// Why trust anchors could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    #[error("{path}: cannot read the CA file: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}: no PEM CERTIFICATE block found")]
    Empty { path: PathBuf },
}

/// A set of trust anchors and the verifier built on them.
#[derive(Clone)]
pub struct TrustStore {
    verifier: Option<Arc<WebPkiServerVerifier>>,
    anchors: usize,
    describe: String,
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustStore({}, {} anchors)", self.describe, self.anchors)
    }
}

/// The verdict on one chain for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub trusted: bool,
    /// Why not, in words (None when trusted).
    pub error: Option<String>,
    /// False when the chain stops short of a root it does not carry: the
    /// intermediate for `missing_issuer` is missing.
    pub chain_complete: bool,
    pub missing_issuer: Option<String>,
}

impl TrustStore {
    /// What public clients trust: Mozilla's roots, the system's, plus `extra`.
    pub fn public(extra: &[PathBuf]) -> Result<TrustStore, TrustError> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!("system trust store: {e}");
        }
        let _ = roots.add_parsable_certificates(found.certs);
        for path in extra {
            add_file(&mut roots, path)?;
        }
        Ok(TrustStore::build(roots, "public roots"))
    }

    /// Only the certificates of `path` (an internal CA, a test root).
    pub fn only(path: &Path) -> Result<TrustStore, TrustError> {
        let mut roots = RootCertStore::empty();
        add_file(&mut roots, path)?;
        Ok(TrustStore::build(roots, &path.display().to_string()))
    }

    fn build(roots: RootCertStore, describe: &str) -> TrustStore {
        let anchors = roots.len();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // Fails only on an empty store: then nothing is trusted, honestly.
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .ok();
        TrustStore {
            verifier,
            anchors,
            describe: describe.to_string(),
        }
    }

    /// Judge `leaf` + `chain` (as certswap parsed them) for `name` now.
    pub fn judge(&self, leaf: &CertInfo, chain: &[CertInfo], name: &str) -> Verdict {
        let sni = name.trim_start_matches('[').trim_end_matches(']');
        let server_name = match sni.parse::<std::net::IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => match ServerName::try_from(sni.to_string()) {
                Ok(n) => n,
                Err(_) => {
                    return Verdict {
                        trusted: false,
                        error: Some(format!("{name:?} is not a DNS name")),
                        chain_complete: true,
                        missing_issuer: None,
                    };
                }
            },
        };
        let inter: Vec<CertificateDer<'_>> = chain.iter().map(|c| c.der.clone()).collect();
        let mut all = vec![leaf.clone()];
        all.extend(chain.iter().cloned());
        self.judge_der(&leaf.der, &inter, &server_name, &all)
    }

    /// Judge DER as a server sent it; `parsed` is the same chain, leaf first.
    pub fn judge_der(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        parsed: &[CertInfo],
    ) -> Verdict {
        let Some(v) = &self.verifier else {
            return Verdict {
                trusted: false,
                error: Some("no trust anchors".into()),
                chain_complete: true,
                missing_issuer: None,
            };
        };
        match v.verify_server_cert(leaf, intermediates, name, &[], UnixTime::now()) {
            Ok(_) => Verdict {
                trusted: true,
                error: None,
                chain_complete: true,
                missing_issuer: None,
            },
            Err(e) => {
                let unknown = matches!(
                    e,
                    rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
                );
                let (error, missing_issuer) = match parsed.last() {
                    Some(last) if unknown => self.no_path(last, parsed.len()),
                    _ => (reason(&e), None),
                };
                Verdict {
                    trusted: false,
                    error: Some(error),
                    chain_complete: missing_issuer.is_none(),
                    missing_issuer,
                }
            }
        }
    }

    /// Why there is no path to a trusted root, from the certificate the
    /// chain ends at (`last`, of `len` certificates): the sentence, and the
    /// issuer that is missing from the chain (None when the chain carries
    /// its own root).
    fn no_path(&self, last: &CertInfo, len: usize) -> (String, Option<String>) {
        let store = &self.describe;
        if last.self_issued {
            // The chain is complete: it ends in a root, just not one that
            // clients here trust (a private CA, a test CA, a self-signed
            // certificate). Name it, so nobody hunts for an intermediate.
            let why = if len == 1 {
                format!(
                    "the certificate {} is self-signed and not in the trust store ({store})",
                    last.subject
                )
            } else {
                format!(
                    "the chain ends in the self-signed root {}, which is not in the trust store ({store})",
                    last.subject
                )
            };
            return (why, None);
        }
        // The chain stops at a certificate whose issuer it does not carry.
        // That issuer is either an intermediate the bundle lacks or a root
        // clients here do not trust (pebble's, a private CA's): the chain
        // alone cannot tell which, so say both.
        let issuer = &last.issuer;
        (
            format!(
                "the chain does not reach a trusted root: intermediate for {issuer} missing, \
                 or {issuer} is a root that is not in the trust store ({store})"
            ),
            Some(issuer.clone()),
        )
    }
}

fn add_file(roots: &mut RootCertStore, path: &Path) -> Result<(), TrustError> {
    let fail = |reason: String| TrustError::File {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let before = roots.len();
    for (i, cert) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        let cert = cert.map_err(|e| fail(format!("certificate {}: {e}", i + 1)))?;
        roots
            .add(cert)
            .map_err(|e| fail(format!("certificate {}: {e}", i + 1)))?;
    }
    if roots.len() == before {
        return Err(TrustError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// A rustls verification error in the words a user reads.
fn reason(err: &rustls::Error) -> String {
    let rustls::Error::InvalidCertificate(e) = err else {
        return err.to_string();
    };
    let when = |t: &UnixTime| {
        i64::try_from(t.as_secs())
            .ok()
            .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
            .map(crate::cert::rfc3339)
            .unwrap_or_else(|| format!("{} (UNIX)", t.as_secs()))
    };
    match e {
        CertificateError::UnknownIssuer => "unknown issuer (no path to a trusted root)".into(),
        CertificateError::Expired => "certificate expired".into(),
        CertificateError::ExpiredContext { not_after, .. } => {
            format!("certificate expired (not valid after {})", when(not_after))
        }
        CertificateError::NotValidYet => "certificate not valid yet".into(),
        CertificateError::NotValidYetContext { not_before, .. } => {
            format!(
                "certificate not valid yet (not before {})",
                when(not_before)
            )
        }
        CertificateError::NotValidForName => "certificate not valid for the SNI name".into(),
        // Its Display already names the expected and presented names.
        CertificateError::NotValidForNameContext { .. } => e.to_string(),
        CertificateError::BadSignature => "bad signature in the chain".into(),
        CertificateError::Revoked => "certificate revoked".into(),
        CertificateError::BadEncoding => "certificate badly encoded".into(),
        CertificateError::UnhandledCriticalExtension => {
            "certificate has an unknown critical extension".into()
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "certificate not allowed for server authentication (extended key usage)".into()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::testpki;

    fn pem_file(dir: &Path, certs: &[&CertInfo]) -> PathBuf {
        let path = dir.join("roots.pem");
        let text: String = certs.iter().map(|c| c.to_pem()).collect();
        std::fs::write(&path, text).expect("write roots");
        path
    }

    #[test]
    fn an_untrusted_self_signed_root_is_named_not_called_a_missing_intermediate() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tmp = tempfile::tempdir().expect("tempdir");
        let trusted = testpki::root("the trusted root");
        let store = TrustStore::only(&pem_file(tmp.path(), &[&trusted.cert])).expect("store");

        let other = testpki::root("Pebble Root CA 5c3e5a");
        let inter = testpki::intermediate("Pebble Intermediate CA", &other);
        let leaf = testpki::sign_leaf(&testpki::leaf_params(&["a.test"]), &testpki::p256(), &inter);

        // The chain carries its untrusted root.
        let v = store.judge(&leaf, &[inter.cert.clone(), other.cert.clone()], "a.test");
        let why = v.error.clone().expect("not trusted");
        assert!(!v.trusted);
        assert!(
            why.contains("self-signed root") && why.contains("Pebble Root CA 5c3e5a"),
            "{why}"
        );
        assert!(why.contains("not in the trust store"), "{why}");
        assert!(!why.contains("missing"), "{why}");
        assert!(v.chain_complete, "{v:?}");

        // The chain stops below that root: both possibilities are named.
        let v = store.judge(&leaf, std::slice::from_ref(&inter.cert), "a.test");
        let why = v.error.clone().expect("not trusted");
        assert!(why.contains("intermediate for"), "{why}");
        assert!(
            why.contains("or CN=Pebble Root CA 5c3e5a")
                || why.contains("Pebble Root CA 5c3e5a, O="),
            "{why}"
        );
        assert!(
            why.contains("is a root that is not in the trust store"),
            "{why}"
        );
        assert!(!v.chain_complete);

        // A self-signed leaf.
        let key = testpki::p256();
        let params = testpki::leaf_params(&["self.test"]);
        let cert = params.self_signed(&key).expect("self-sign");
        let selfie = CertInfo::from_der(cert.der()).expect("parse");
        let v = store.judge(&selfie, &[], "self.test");
        let why = v.error.expect("not trusted");
        assert!(
            why.contains("is self-signed and not in the trust store"),
            "{why}"
        );
    }
}
