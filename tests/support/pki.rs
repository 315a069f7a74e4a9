//! Test PKI generated at test time with rcgen (STYLE habit 8: fixtures from
//! code, no expiring PEM files checked in).
//!
//! ```ignore
//! let root = Ca::new("Test Root");
//! let int = root.intermediate("Test Issuing CA");
//! let old = int.leaf(&["a.test", "www.a.test"]).days(-300, 20).build();
//! let new = int.leaf(&["a.test", "www.a.test"]).days(-1, 385).build();
//! let (cert, key) = pki::write(dir.path(), "a.test", &old);
//! ```
//!
//! All keys are ECDSA P-256 (ring cannot generate RSA keys). Every
//! certificate gets a random serial, so two leaves for the same key differ.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// A certificate authority: a self-signed root ([`Ca::new`]) or an
/// intermediate under another CA ([`Ca::intermediate`]).
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
    /// This CA's certificate and the intermediates above it, nearest first,
    /// without the root. Empty for a root.
    chain: Vec<String>,
    root_pem: String,
}

impl Ca {
    /// A self-signed root CA with subject `CN=name, O=name`, valid from 30
    /// days ago for ten years.
    pub fn new(name: &str) -> Ca {
        let key = new_key();
        let params = ca_params(name);
        let cert = params.self_signed(&key).expect("self-sign root CA");
        let cert_pem = cert.pem();
        Ca {
            params,
            key,
            root_pem: cert_pem.clone(),
            cert_pem,
            chain: Vec::new(),
        }
    }

    /// An intermediate CA signed by this CA.
    pub fn intermediate(&self, name: &str) -> Ca {
        let key = new_key();
        let mut params = ca_params(name);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer())
            .expect("sign intermediate CA");
        let cert_pem = cert.pem();
        let mut chain = vec![cert_pem.clone()];
        chain.extend(self.chain.iter().cloned());
        Ca {
            params,
            key,
            cert_pem,
            chain,
            root_pem: self.root_pem.clone(),
        }
    }

    /// This CA's own certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// This CA's private key (PKCS#8 PEM).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The root certificate of this CA's hierarchy (PEM): the trust anchor
    /// to hand to `--ca` / `[probe] ca_file`.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The certificates a leaf issued by this CA must be served with: this
    /// CA and the intermediates above it, nearest first, without the root.
    /// Empty for a root.
    pub fn chain_pem(&self) -> String {
        self.chain.concat()
    }

    /// SHA-256 of this CA's certificate DER, lowercase hex.
    pub fn sha256(&self) -> String {
        pem_sha256(&self.cert_pem).expect("own certificate parses")
    }

    /// Start building a leaf for `names` (the first is also the CN).
    /// Defaults: valid from one day ago for 365 days, EKU serverAuth.
    pub fn leaf(&self, names: &[&str]) -> LeafBuilder<'_> {
        assert!(!names.is_empty(), "a leaf needs at least one name");
        let now = now_seconds();
        LeafBuilder {
            ca: self,
            names: names.iter().map(|n| n.to_string()).collect(),
            not_before: now - Duration::days(1),
            not_after: now + Duration::days(365),
            key_pem: None,
            ca_flag: false,
            eku_client_only: false,
            policies: Vec::new(),
        }
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }
}

/// Options of one leaf; finish with [`LeafBuilder::build`].
pub struct LeafBuilder<'a> {
    ca: &'a Ca,
    names: Vec<String>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    key_pem: Option<String>,
    ca_flag: bool,
    eku_client_only: bool,
    policies: Vec<Vec<u64>>,
}

impl LeafBuilder<'_> {
    /// notBefore = now + `not_before` days, notAfter = now + `not_after`
    /// days (negative = in the past), e.g. `.days(-1, 90)`, or
    /// `.days(-100, -10)` for an expired leaf, `.days(5, 90)` for one not
    /// yet valid.
    pub fn days(mut self, not_before: i64, not_after: i64) -> Self {
        let now = now_seconds();
        self.not_before = now + Duration::days(not_before);
        self.not_after = now + Duration::days(not_after);
        self
    }

    /// An exact notBefore (truncated to whole seconds, UTC).
    pub fn not_before(mut self, at: OffsetDateTime) -> Self {
        self.not_before = whole_seconds(at);
        self
    }

    /// An exact notAfter (truncated to whole seconds, UTC).
    pub fn not_after(mut self, at: OffsetDateTime) -> Self {
        self.not_after = whole_seconds(at);
        self
    }

    /// Reuse an existing private key (PKCS#8 PEM), as an own-CSR renewal
    /// does, instead of generating a new one.
    pub fn key(mut self, key_pem: &str) -> Self {
        self.key_pem = Some(key_pem.to_string());
        self
    }

    /// Mark the leaf `CA:TRUE` (a CA certificate used as an end entity).
    pub fn ca_flag(mut self) -> Self {
        self.ca_flag = true;
        self
    }

    /// Extended key usage clientAuth only (no serverAuth).
    pub fn eku_client_only(mut self) -> Self {
        self.eku_client_only = true;
        self
    }

    /// Add a certificatePolicies OID, e.g. `&[2, 23, 140, 1, 2, 1]` (DV),
    /// `&[2, 23, 140, 1, 2, 2]` (OV), `&[2, 23, 140, 1, 1]` (EV).
    pub fn policy(mut self, oid: &[u64]) -> Self {
        self.policies.push(oid.to_vec());
        self
    }

    pub fn build(self) -> Leaf {
        let key = match &self.key_pem {
            Some(pem) => KeyPair::from_pem(pem).expect("parse the given key PEM"),
            None => new_key(),
        };
        let mut params = CertificateParams::new(self.names.clone()).expect("valid leaf names");
        params
            .distinguished_name
            .push(DnType::CommonName, self.names[0].as_str());
        params.serial_number = Some(random_serial());
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if self.eku_client_only {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        };
        if self.ca_flag {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages.push(KeyUsagePurpose::KeyCertSign);
        }
        if !self.policies.is_empty() {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    &[2, 5, 29, 32],
                    certificate_policies_der(&self.policies),
                ));
        }
        let cert = params
            .signed_by(&key, &self.ca.issuer())
            .expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            chain_pem: self.ca.chain_pem(),
            sha256: hex(ring::digest::digest(&ring::digest::SHA256, cert.der()).as_ref()),
            not_before: self.not_before,
            not_after: self.not_after,
            names: self.names,
        }
    }
}

/// A generated end-entity certificate with its key.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The leaf alone (PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
    /// The issuing intermediates, nearest first, without the root (PEM;
    /// empty when the root signed the leaf).
    pub chain_pem: String,
    /// SHA-256 of the leaf DER, lowercase hex — what a probe must see.
    pub sha256: String,
    pub not_before: OffsetDateTime,
    /// Whole seconds, UTC: exactly what the certificate says.
    pub not_after: OffsetDateTime,
    /// SANs; the first is also the CN.
    pub names: Vec<String>,
}

impl Leaf {
    /// Leaf followed by its chain: the nginx `NAME.pem` a vendor hands out.
    pub fn fullchain_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.chain_pem)
    }

    /// notAfter as RFC 3339 (`2027-06-01T00:00:00Z`), for
    /// `--expect-not-after`.
    pub fn not_after_rfc3339(&self) -> String {
        self.not_after
            .format(&time::format_description::well_known::Rfc3339)
            .expect("format notAfter")
    }
}

/// Write `dir/NAME.pem` (full chain) and `dir/NAME.key` (mode 0600);
/// returns (cert path, key path). Overwrites existing files.
pub fn write(dir: &Path, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    fs::write(&cert, leaf.fullchain_pem()).unwrap_or_else(|e| panic!("write {cert:?}: {e}"));
    write_key(&key, &leaf.key_pem);
    (cert, key)
}

/// A new 2048-bit RSA key (PKCS#8 PEM) from the openssl CLI (ring cannot
/// generate RSA keys), kept as `DIR/NAME.rsa.key`.
pub fn rsa_key_pem(dir: &Path, name: &str) -> String {
    genpkey(
        &dir.join(format!("{name}.rsa.key")),
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    )
}

/// A new private key (PKCS#8 PEM) from `openssl genpkey ARGS`, kept at `p`.
pub fn genpkey(p: &Path, args: &[&str]) -> String {
    let mut all: Vec<&std::ffi::OsStr> = vec!["genpkey".as_ref()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    all.extend(["-out".as_ref(), p.as_os_str()]);
    openssl(&all);
    fs::read_to_string(p).expect("read key")
}

/// Run `openssl ARGS`; panics with its output when it fails.
pub fn openssl<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Write a private key file with mode 0600 (also when it already existed).
pub fn write_key(path: &Path, key_pem: &str) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {path:?}: {e}"));
    f.write_all(key_pem.as_bytes())
        .unwrap_or_else(|e| panic!("write {path:?}: {e}"));
}

/// SHA-256 of the file's bytes, lowercase hex (to prove a file did not
/// change). For the fingerprint of the certificate inside a PEM file use
/// [`leaf_sha256_file`].
pub fn sha256_file(path: &Path) -> String {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref())
}

/// SHA-256 of the DER of the first certificate in a PEM file, lowercase hex
/// (comparable with [`Leaf::sha256`]).
pub fn leaf_sha256_file(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    pem_sha256(&text).unwrap_or_else(|| panic!("{path:?}: no CERTIFICATE block"))
}

/// SHA-256 of the DER of the first `CERTIFICATE` block in `text`.
pub fn pem_sha256(text: &str) -> Option<String> {
    let blocks = pem::parse_many(text).ok()?;
    let cert = blocks.iter().find(|p| p.tag() == "CERTIFICATE")?;
    Some(hex(ring::digest::digest(
        &ring::digest::SHA256,
        cert.contents(),
    )
    .as_ref()))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn new_key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate P-256 key")
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SANs");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    let now = now_seconds();
    params.not_before = now - Duration::days(30);
    params.not_after = now + Duration::days(3650);
    params
}

fn random_serial() -> SerialNumber {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("random serial");
    // Positive, and a fixed length.
    bytes[0] = (bytes[0] & 0x7f) | 0x10;
    SerialNumber::from(bytes.to_vec())
}

fn now_seconds() -> OffsetDateTime {
    whole_seconds(OffsetDateTime::now_utc())
}

fn whole_seconds(at: OffsetDateTime) -> OffsetDateTime {
    at.to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .expect("zero nanoseconds")
}

/// certificatePolicies: SEQUENCE OF PolicyInformation { policyIdentifier }.
fn certificate_policies_der(oids: &[Vec<u64>]) -> Vec<u8> {
    let infos: Vec<u8> = oids
        .iter()
        .flat_map(|oid| der(0x30, &der(0x06, &oid_body(oid))))
        .collect();
    der(0x30, &infos)
}

fn oid_body(oid: &[u64]) -> Vec<u8> {
    assert!(oid.len() >= 2, "an OID has at least two arcs");
    let mut out = Vec::new();
    let mut arcs = vec![oid[0] * 40 + oid[1]];
    arcs.extend_from_slice(&oid[2..]);
    for arc in arcs {
        let mut groups = vec![(arc & 0x7f) as u8];
        let mut rest = arc >> 7;
        while rest > 0 {
            groups.push((rest & 0x7f) as u8 | 0x80);
            rest >>= 7;
        }
        out.extend(groups.iter().rev());
    }
    out
}

fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = body.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(body);
    out
}
