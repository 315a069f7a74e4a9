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
//!
//! A store remembers its verdicts (`Verdicts`): a batch judges each new
//! chain when it checks the bundle and again in every handshake that
//! proves it served, and the agent judges the same served chains every
//! pass. A verdict is a function of the chain's bytes, the name, the
//! anchors and the time, and the time only matters at the validity
//! boundaries of the chain's certificates: a remembered verdict is reused
//! until the next of them, never across one. The agent's next pass
//! builds its store again (the CA file and the system's store may have
//! changed) and carries the verdicts over when the anchors are the same
//! ones ([`TrustStore::carry_over`]), keeping only those the pass before
//! used.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::cert::CertInfo;
use crate::par::lock;

/// Why trust anchors could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    #[error("{path}: cannot read the CA file: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}: no PEM CERTIFICATE block found")]
    Empty { path: PathBuf },
}

/// A set of trust anchors and the verifier built on them. Clones share
/// the verifier and the verdicts it reached.
#[derive(Clone)]
pub struct TrustStore {
    verifier: Option<Arc<WebPkiServerVerifier>>,
    anchors: usize,
    describe: String,
    /// A SHA-256 of every anchor: stores with the same anchors reach the
    /// same verdicts.
    anchors_id: [u8; 32],
    verdicts: Arc<Verdicts>,
}

/// At most this many verdicts are remembered (a host's chains, new and
/// old, for 10,000 sites, with room); past it they are all forgotten.
const VERDICTS_KEPT: usize = 1 << 16;

/// The verdicts a store reached, by chain and name.
#[derive(Default)]
struct Verdicts {
    by_chain: Mutex<HashMap<[u8; 32], Remembered>>,
    /// How many verdicts were reached by verifying, not remembered.
    verified: AtomicUsize,
}

impl Verdicts {
    /// The verdict on `key` reached at or before `now` that still stands.
    fn recall(&self, key: &[u8; 32], now: UnixTime) -> Option<Verdict> {
        let t = now.as_secs();
        let mut kept = lock(&self.by_chain);
        let r = kept.get_mut(key)?;
        if !(r.at <= t && t < r.until) {
            return None;
        }
        r.used = true;
        Some(r.verdict.clone())
    }

    /// Forget every verdict not used since the last prune: what a pass did
    /// not look at (a chain no longer served) is not kept for ever.
    fn prune(&self) {
        let mut kept = lock(&self.by_chain);
        kept.retain(|_, r| std::mem::replace(&mut r.used, false));
    }

    /// Remember `verdict` on `key` (the chain `parsed`), reached at `now`.
    fn keep(&self, key: [u8; 32], verdict: &Verdict, parsed: &[CertInfo], now: UnixTime) {
        self.verified.fetch_add(1, Ordering::Relaxed);
        let t = now.as_secs();
        let remembered = Remembered {
            verdict: verdict.clone(),
            used: true,
            at: t,
            until: next_boundary(parsed, t),
        };
        let mut kept = lock(&self.by_chain);
        if kept.len() >= VERDICTS_KEPT {
            kept.clear();
        }
        kept.insert(key, remembered);
    }
}

struct Remembered {
    verdict: Verdict,
    /// Recalled or reached since the last [`Verdicts::prune`].
    used: bool,
    /// When it was reached (UNIX seconds) …
    at: u64,
    /// … and the first second it may be different: the next validity
    /// boundary of one of the chain's certificates.
    until: u64,
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
        let anchors_id = digest_parts(roots.roots.iter().flat_map(|a| {
            let constraints = a.name_constraints.as_ref().map(|c| c.as_ref());
            [
                a.subject.as_ref(),
                a.subject_public_key_info.as_ref(),
                constraints.unwrap_or_default(),
                if constraints.is_some() { b"c" } else { b"" },
            ]
        }));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // Fails only on an empty store: then nothing is trusted, honestly.
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .ok();
        TrustStore {
            verifier,
            anchors,
            describe: describe.to_string(),
            anchors_id,
            verdicts: Arc::default(),
        }
    }

    /// Take over the verdicts `older` reached and used since it last took
    /// some over, when it judged against the same anchors (a store built
    /// again for the next pass); with other anchors this store starts
    /// afresh.
    pub fn carry_over(&mut self, older: &TrustStore) {
        if older.anchors_id == self.anchors_id {
            older.verdicts.prune();
            self.verdicts = older.verdicts.clone();
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
        self.judge_der(&leaf.der, &inter, &server_name, &all, UnixTime::now())
    }

    /// Judge DER as a server sent it at `now`; `parsed` is the same chain,
    /// leaf first. Remembered when this chain was judged for this name
    /// before and no certificate of it has become valid or expired since
    /// (module docs).
    pub fn judge_der(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        parsed: &[CertInfo],
        now: UnixTime,
    ) -> Verdict {
        let key = chain_key(leaf, intermediates, name);
        if let Some(v) = self.verdicts.recall(&key, now) {
            return v;
        }
        let verdict = match &self.verifier {
            None => Verdict {
                trusted: false,
                error: Some("no trust anchors".into()),
                chain_complete: true,
                missing_issuer: None,
            },
            Some(v) => match v.verify_server_cert(leaf, intermediates, name, &[], now) {
                Ok(_) => Verdict {
                    trusted: true,
                    error: None,
                    chain_complete: true,
                    missing_issuer: None,
                },
                Err(e) => self.why_not(&e, parsed),
            },
        };
        self.verdicts.keep(key, &verdict, parsed, now);
        verdict
    }

    /// The verdict on a chain (`parsed`) the verifier refused with `e`.
    fn why_not(&self, e: &rustls::Error, parsed: &[CertInfo]) -> Verdict {
        let unknown = matches!(
            e,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        );
        let (error, missing_issuer) = match parsed.last() {
            Some(last) if unknown => self.no_path(last, parsed.len()),
            _ => (reason(e), None),
        };
        Verdict {
            trusted: false,
            error: Some(error),
            chain_complete: missing_issuer.is_none(),
            missing_issuer,
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

/// What a verdict depends on besides the anchors and the time: the name
/// and every certificate's bytes, in order.
fn chain_key(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    name: &ServerName<'_>,
) -> [u8; 32] {
    let name = name.to_str();
    let certs = std::iter::once(leaf)
        .chain(intermediates)
        .map(|d| d.as_ref());
    digest_parts(std::iter::once(name.as_bytes()).chain(certs))
}

/// SHA-256 of `parts`, each prefixed with its length, so that no two
/// different lists of parts hash alike.
fn digest_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finish().as_ref());
    out
}

/// The first second after `t` at which a certificate of `chain` becomes
/// valid (its notBefore) or stops being valid (the second after its
/// notAfter): until then a verdict reached at `t` stands.
fn next_boundary(chain: &[CertInfo], t: u64) -> u64 {
    chain
        .iter()
        .flat_map(|c| {
            [
                c.not_before.unix_timestamp(),
                c.not_after.unix_timestamp().saturating_add(1),
            ]
        })
        .filter_map(|b| u64::try_from(b).ok())
        .filter(|&b| b > t)
        .min()
        .unwrap_or(u64::MAX)
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

    #[test]
    fn a_verdict_is_remembered_until_a_certificate_of_the_chain_changes_validity() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = testpki::root("the trusted root");
        let store = TrustStore::only(&pem_file(tmp.path(), &[&root.cert])).expect("store");

        // Valid from 100 s after `t0`, on whole seconds as X.509 has them.
        let t0 = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
        let mut params = testpki::leaf_params(&["a.test"]);
        params.not_before =
            time::OffsetDateTime::from_unix_timestamp(t0 as i64 + 100).expect("time");
        let leaf = testpki::sign_leaf(&params, &testpki::p256(), &root);
        let chain = [leaf.clone()];
        let name = ServerName::try_from("a.test").expect("name");
        let at = |t: u64| {
            store.judge_der(
                &leaf.der,
                &[],
                &name,
                &chain,
                UnixTime::since_unix_epoch(std::time::Duration::from_secs(t)),
            )
        };
        let verified = || store.verdicts.verified.load(Ordering::Relaxed);

        let early = at(t0);
        assert!(!early.trusted, "{early:?}");
        assert!(
            early
                .error
                .as_deref()
                .is_some_and(|e| e.contains("not valid yet")),
            "{early:?}"
        );
        assert_eq!(verified(), 1);
        // Before the boundary: the same verdict, not verified again.
        assert_eq!(at(t0 + 99), early);
        assert_eq!(verified(), 1);
        // At it: verified again, and now trusted.
        let valid = at(t0 + 100);
        assert!(valid.trusted, "{valid:?}");
        assert_eq!(verified(), 2);
        assert_eq!(at(t0 + 200), valid);
        assert_eq!(verified(), 2);
        // A clock that went back is not trusted to the old verdict.
        let back = at(t0 + 50);
        assert!(!back.trusted, "{back:?}");
        assert_eq!(verified(), 3);

        // Another name, another verdict; a clone shares what was reached.
        let other = ServerName::try_from("b.test").expect("name");
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(t0 + 300));
        let wrong = store.clone().judge_der(&leaf.der, &[], &other, &chain, now);
        assert!(!wrong.trusted, "{wrong:?}");
        assert_eq!(verified(), 4);
        assert_eq!(
            store.clone().judge_der(&leaf.der, &[], &other, &chain, now),
            wrong
        );
        assert_eq!(verified(), 4);

        // The same leaf with a different chain is judged on its own.
        let inter = testpki::intermediate("an intermediate", &root);
        let with = store.judge_der(
            &leaf.der,
            std::slice::from_ref(&inter.cert.der),
            &name,
            &chain,
            now,
        );
        assert!(with.trusted, "{with:?}");
        assert_eq!(verified(), 5);
    }

    #[test]
    fn verdicts_carry_over_to_a_store_with_the_same_anchors_and_only_the_used_ones() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = testpki::root("the trusted root");
        let roots = pem_file(tmp.path(), &[&root.cert]);
        let leaf = |name: &str| {
            testpki::sign_leaf(&testpki::leaf_params(&[name]), &testpki::p256(), &root)
        };
        let (a, b) = (leaf("a.test"), leaf("b.test"));
        let judge = |store: &TrustStore, l: &CertInfo, name: &str| store.judge(l, &[], name);
        let verified = |store: &TrustStore| store.verdicts.verified.load(Ordering::Relaxed);

        let first = TrustStore::only(&roots).expect("store");
        assert!(judge(&first, &a, "a.test").trusted);
        assert!(judge(&first, &b, "b.test").trusted);
        assert_eq!(verified(&first), 2);

        // The next pass: both remembered, then only `a` looked at.
        let mut second = TrustStore::only(&roots).expect("store");
        second.carry_over(&first);
        assert!(judge(&second, &a, "a.test").trusted);
        assert_eq!(verified(&second), 2, "a is remembered");

        // The pass after: `b` went unused for a pass and is forgotten.
        let mut third = TrustStore::only(&roots).expect("store");
        third.carry_over(&second);
        assert!(judge(&third, &b, "b.test").trusted);
        assert_eq!(verified(&third), 3, "b was verified again");
        assert!(judge(&third, &a, "a.test").trusted);
        assert_eq!(
            verified(&third),
            3,
            "a, used in the pass before, is still remembered"
        );

        // Other anchors: nothing is carried over.
        let other = testpki::root("another root");
        let mut elsewhere = TrustStore::only(&pem_file(tmp.path(), &[&other.cert])).expect("store");
        elsewhere.carry_over(&third);
        assert!(!judge(&elsewhere, &a, "a.test").trusted);
        assert_eq!(verified(&elsewhere), 1);
        assert_eq!(verified(&third), 3);
    }
}
