//! Facts of one X.509 certificate, read once from its DER: names, dates,
//! key, spec (domain type, validation type, brand) and fingerprints. Every
//! other module asks these facts instead of parsing certificates itself.

use std::fmt;
use std::net::IpAddr;

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use time::macros::format_description;
use x509_parser::certificate::X509Certificate;
use x509_parser::der_parser::{oid, oid::Oid};
use x509_parser::error::X509Error;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_DOMAIN_COMPONENT, OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384,
    OID_NIST_EC_P521, OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS, OID_PKCS9_EMAIL_ADDRESS,
    OID_SIG_ED25519, OID_X509_COMMON_NAME, OID_X509_COUNTRY_NAME, OID_X509_LOCALITY_NAME,
    OID_X509_ORGANIZATION_NAME, OID_X509_ORGANIZATIONAL_UNIT, OID_X509_STATE_OR_PROVINCE_NAME,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::RSAPublicKey;
use x509_parser::x509::{SubjectPublicKeyInfo, X509Name};

/// Why a certificate's DER could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The bytes are not a DER X.509 certificate.
    #[error("not a valid X.509 certificate: {0}")]
    Parse(String),
    /// The bytes are not a DER SubjectPublicKeyInfo (a public key).
    #[error("not a valid public key (SubjectPublicKeyInfo): {0}")]
    PublicKey(String),
}

/// The public key type of a certificate (or a private key).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// RSA with the modulus size in bits.
    Rsa {
        bits: usize,
    },
    /// ECDSA on a named curve ("P-256", "P-384", ...).
    Ec {
        curve: String,
    },
    Ed25519,
    Other {
        oid: String,
    },
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::Rsa { bits } => write!(f, "RSA-{bits}"),
            KeyKind::Ec { curve } => write!(f, "ECDSA {curve}"),
            KeyKind::Ed25519 => f.write_str("Ed25519"),
            KeyKind::Other { oid } => write!(f, "key algorithm {oid}"),
        }
    }
}

/// DV / OV / EV from the CA/Browser Forum policy OIDs 2.23.140.1.2.1 / .2.2 / .1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Validation {
    DV,
    OV,
    EV,
    /// No CA/B Forum policy OID (internal CAs, self-signed).
    Unknown,
}

impl fmt::Display for Validation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Validation::DV => "DV",
            Validation::OV => "OV",
            Validation::EV => "EV",
            Validation::Unknown => "no CA/B Forum validation policy",
        })
    }
}

/// Single name, several names, or at least one wildcard name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainType {
    Single,
    Multi,
    Wildcard,
}

impl fmt::Display for DomainType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DomainType::Single => "single-name",
            DomainType::Multi => "multi-name",
            DomainType::Wildcard => "wildcard",
        })
    }
}

/// The result of checking whether one certificate issued another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuerCheck {
    /// Names match and the signature verifies with the issuer's key.
    Signed,
    /// Names match but the signature algorithm is one ring cannot verify
    /// (e.g. ECDSA P-521, SHA-1 with a key outside ring's limits), so only
    /// the names link the two.
    NamesOnly,
    /// Names differ, or the signature does not verify.
    NotSigned,
}

/// The facts certswap needs of one certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub der: CertificateDer<'static>,
    /// Lowercase hex SHA-256 of the DER: the identity certswap compares.
    pub sha256: String,
    /// RFC 4514-ish one-line subject, e.g. "CN=www.example.com, O=Example".
    pub subject: String,
    pub issuer: String,
    /// The issuer's organisation (O=), the "brand" of DESIGN.md.
    pub issuer_org: Option<String>,
    /// Serial as uppercase hex without separators (as `openssl x509 -serial`).
    pub serial: String,
    /// DNS names from the SAN extension, lowercased, in order; IP SANs as
    /// their text form. Falls back to the subject CN when there is no SAN.
    pub names: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// basicConstraints CA=true.
    pub is_ca: bool,
    /// No EKU extension, or an EKU that includes serverAuth (or anyEKU).
    pub server_auth: bool,
    pub key_kind: KeyKind,
    /// DER of the SubjectPublicKeyInfo, to compare with a private key.
    pub spki_der: Vec<u8>,
    pub validation: Validation,
    pub domain_type: DomainType,
    /// Subject and issuer DER are equal (a self-issued certificate).
    pub self_issued: bool,
}

// OIDs are compared as their DER bytes: turning each into dotted text
// first cost ~1.4 µs per certificate, a bulk probe's every handshake.
const OID_POLICY_EV: Oid<'static> = oid!(2.23.140.1.1);
const OID_POLICY_DV: Oid<'static> = oid!(2.23.140.1.2.1);
const OID_POLICY_OV: Oid<'static> = oid!(2.23.140.1.2.2);

const NANOS_PER_DAY: i128 = 86_400 * 1_000_000_000;

/// Whole days from `now` until `not_after`, rounded down: 30 days and 23
/// hours is 30, one second past notAfter is -1. So `days_left < 0` exactly
/// when the certificate has expired. The one days-left of certswap:
/// `status`, the agent's `certswap_cert_days_left` and its expiry log.
pub fn days_left(not_after: OffsetDateTime, now: OffsetDateTime) -> i64 {
    let days = (not_after - now)
        .whole_nanoseconds()
        .div_euclid(NANOS_PER_DAY);
    // Certificate dates end in 9999: the clamp is for the type, not for data.
    i64::try_from(days).unwrap_or(if days < 0 { i64::MIN } else { i64::MAX })
}

impl CertInfo {
    /// Parse one DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertInfo, CertError> {
        let x509 = parse(der)?;
        let tbs = &x509.tbs_certificate;

        let names = names_of(&x509)?;
        let is_ca = tbs
            .basic_constraints()
            .map_err(|e| CertError::Parse(format!("basicConstraints: {e}")))?
            .is_some_and(|bc| bc.value.ca);
        let server_auth = match tbs
            .extended_key_usage()
            .map_err(|e| CertError::Parse(format!("extendedKeyUsage: {e}")))?
        {
            None => true,
            Some(eku) => eku.value.server_auth || eku.value.any,
        };
        let domain_type = domain_type_of(&names);

        Ok(CertInfo {
            der: CertificateDer::from(der.to_vec()),
            sha256: sha256_hex(der),
            subject: name_text(&tbs.subject),
            issuer: name_text(&tbs.issuer),
            issuer_org: first_str(tbs.issuer.iter_organization()),
            serial: serial_hex(tbs.raw_serial()),
            names,
            not_before: tbs.validity.not_before.to_datetime(),
            not_after: tbs.validity.not_after.to_datetime(),
            is_ca,
            server_auth,
            key_kind: key_kind(&tbs.subject_pki),
            spki_der: tbs.subject_pki.raw.to_vec(),
            validation: validation_of(&x509),
            domain_type,
            self_issued: tbs.subject.as_raw() == tbs.issuer.as_raw(),
        })
    }

    /// Whether this certificate is valid for `name` (DNS name or IP text),
    /// RFC 6125: a wildcard covers exactly one left-most label.
    pub fn covers(&self, name: &str) -> bool {
        let wanted = normalize_name(name);
        if wanted.is_empty() {
            return false;
        }
        // An IP is only ever matched by an IP SAN, compared as addresses so
        // that "::1" and "0:0:0:0:0:0:0:1" are the same name.
        if let Ok(ip) = wanted.parse::<IpAddr>() {
            return self
                .names
                .iter()
                .any(|n| n.parse::<IpAddr>().is_ok_and(|have| have == ip));
        }
        self.names
            .iter()
            .any(|have| dns_name_matches(&normalize_name(have), &wanted))
    }

    /// Whole days from `now` until notAfter, rounded down ([`days_left`]).
    pub fn days_left(&self, now: OffsetDateTime) -> i64 {
        days_left(self.not_after, now)
    }

    /// Whether `issuer` signed this certificate (signature check with the
    /// issuer's public key, names compared too).
    pub fn is_signed_by(&self, issuer: &CertInfo) -> bool {
        self.check_issuer(issuer) == IssuerCheck::Signed
    }

    /// Like [`CertInfo::is_signed_by`], but tells a failed signature apart
    /// from one ring has no algorithm for, so a caller can still link a
    /// chain by names (with a warning) instead of calling it broken.
    pub fn check_issuer(&self, issuer: &CertInfo) -> IssuerCheck {
        // Both parsed before from the same bytes, so these cannot fail; a
        // failure here just means "not linked".
        let (Ok(this), Ok(signer)) = (parse(&self.der), parse(&issuer.der)) else {
            return IssuerCheck::NotSigned;
        };
        // Byte-equal DNs, as webpki compares them: CAs copy the issuer's
        // subject verbatim into the certificates they sign.
        if this.tbs_certificate.issuer.as_raw() != signer.tbs_certificate.subject.as_raw() {
            return IssuerCheck::NotSigned;
        }
        match this.verify_signature(Some(signer.public_key())) {
            Ok(()) => IssuerCheck::Signed,
            Err(X509Error::SignatureUnsupportedAlgorithm) => IssuerCheck::NamesOnly,
            Err(_) => IssuerCheck::NotSigned,
        }
    }

    /// PEM text of this certificate ("-----BEGIN CERTIFICATE-----...").
    pub fn to_pem(&self) -> String {
        // LF line endings: the files are read by nginx/apache on Unix, and
        // the pem crate defaults to CRLF.
        pem::encode_config(
            &pem::Pem::new("CERTIFICATE", self.der.to_vec()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }
}

/// The facts of a leaf that `status` and the agent's drift check show,
/// read with the checks of [`CertInfo::from_der`] (the same bytes fail with
/// the same error) but without what they never show: subject, serial,
/// copies of the DER and of the public key. At 10,000 sites those were a
/// third of each certificate's parse.
#[derive(Debug, Clone)]
pub struct LeafFacts {
    /// Lowercase hex SHA-256 of the DER ([`CertInfo::sha256`]).
    pub sha256: String,
    /// The issuer's organisation (O=), or its whole DN when it has none.
    pub issuer: String,
    pub not_after: OffsetDateTime,
    pub domain_type: DomainType,
    pub validation: Validation,
    pub key_kind: KeyKind,
}

impl LeafFacts {
    /// Parse one DER certificate (errors as [`CertInfo::from_der`]'s).
    pub fn from_der(der: &[u8]) -> Result<LeafFacts, CertError> {
        let x509 = parse(der)?;
        let tbs = &x509.tbs_certificate;
        // The checks of `CertInfo::from_der`, in its order.
        let names = names_of(&x509)?;
        tbs.basic_constraints()
            .map_err(|e| CertError::Parse(format!("basicConstraints: {e}")))?;
        tbs.extended_key_usage()
            .map_err(|e| CertError::Parse(format!("extendedKeyUsage: {e}")))?;
        Ok(LeafFacts {
            sha256: sha256_hex(der),
            issuer: first_str(tbs.issuer.iter_organization())
                .unwrap_or_else(|| name_text(&tbs.issuer)),
            not_after: tbs.validity.not_after.to_datetime(),
            domain_type: domain_type_of(&names),
            validation: validation_of(&x509),
            key_kind: key_kind(&tbs.subject_pki),
        })
    }
}

/// The key type of a DER SubjectPublicKeyInfo, e.g. one derived from a
/// private key, so keys and certificates are described the same way.
pub fn key_kind_of_spki(spki_der: &[u8]) -> Result<KeyKind, CertError> {
    match SubjectPublicKeyInfo::from_der(spki_der) {
        Ok(([], spki)) => Ok(key_kind(&spki)),
        Ok(_) => Err(CertError::PublicKey(
            "trailing bytes after the public key".into(),
        )),
        Err(e) => Err(CertError::PublicKey(e.to_string())),
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex_lower(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// A date the way `openssl x509 -noout -dates` prints it:
/// `Jun  1 00:00:00 2027 GMT`.
pub fn openssl_date(t: OffsetDateTime) -> String {
    let utc = t.to_offset(time::UtcOffset::UTC);
    let fmt = format_description!(
        "[month repr:short] [day padding:space] [hour]:[minute]:[second] [year] GMT"
    );
    // Formatting only fails for years outside what the description can
    // print; certificates end by 9999, so the fallback is for safety only.
    utc.format(&fmt).unwrap_or_else(|_| utc.to_string())
}

/// RFC 3339 in UTC with a `Z`, e.g. `2027-06-01T00:00:00Z`.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let utc = t.to_offset(time::UtcOffset::UTC);
    let fmt = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    utc.format(&fmt).unwrap_or_else(|_| utc.to_string())
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    match X509Certificate::from_der(der) {
        Ok(([], x509)) => Ok(x509),
        // Bytes after the certificate mean the input was not what it claims
        // (two DER certificates glued together, a truncated PEM decode).
        Ok(_) => Err(CertError::Parse(
            "trailing bytes after the certificate".into(),
        )),
        Err(e) => Err(CertError::Parse(e.to_string())),
    }
}

fn names_of(x509: &X509Certificate<'_>) -> Result<Vec<String>, CertError> {
    let san = x509
        .tbs_certificate
        .subject_alternative_name()
        .map_err(|e| CertError::Parse(format!("subjectAltName: {e}")))?;
    let Some(san) = san else {
        // Pre-SAN certificates (and some internal CAs) name the host only in
        // the CN; clients stopped honouring that, but the old cert's names
        // must still be known to check a renewal keeps them.
        return Ok(common_name(&x509.tbs_certificate.subject)
            .map(|cn| vec![cn.to_ascii_lowercase()])
            .unwrap_or_default());
    };
    let mut names = Vec::new();
    for gn in &san.value.general_names {
        match gn {
            GeneralName::DNSName(dns) => names.push(dns.to_ascii_lowercase()),
            GeneralName::IPAddress(bytes) => {
                if let Some(ip) = ip_from_bytes(bytes) {
                    names.push(ip.to_string());
                }
            }
            // e-mail, URI, directory names do not name a TLS server.
            _ => {}
        }
    }
    Ok(names)
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

fn common_name(name: &X509Name<'_>) -> Option<String> {
    first_str(name.iter_common_name())
}

/// `name` exactly as x509-parser's `Display` writes it ("CN=a, O=b", " + "
/// between the attributes of one RDN), without its two map lookups and
/// three `format!`s per attribute: ~1 µs per name, two names in every
/// handshake of a bulk probe. Only for the attributes and string types
/// nearly every certificate uses; any other name goes through
/// x509-parser itself.
pub fn name_text(name: &X509Name<'_>) -> String {
    let mut out = String::with_capacity(name.as_raw().len());
    for rdn in name.iter() {
        if !out.is_empty() {
            out.push_str(", ");
        }
        for (i, attr) in rdn.iter().enumerate() {
            let (Some(abbrev), Some(value)) = (abbrev(attr.attr_type()), plain(attr.attr_value()))
            else {
                return name.to_string();
            };
            if i > 0 {
                out.push_str(" + ");
            }
            out.push_str(abbrev);
            out.push('=');
            out.push_str(value);
        }
    }
    out
}

/// x509-parser's abbreviation of the attributes it abbreviates.
fn abbrev(oid: &Oid<'_>) -> Option<&'static str> {
    [
        (&OID_X509_COMMON_NAME, "CN"),
        (&OID_X509_ORGANIZATION_NAME, "O"),
        (&OID_X509_COUNTRY_NAME, "C"),
        (&OID_X509_ORGANIZATIONAL_UNIT, "OU"),
        (&OID_X509_LOCALITY_NAME, "L"),
        (&OID_X509_STATE_OR_PROVINCE_NAME, "ST"),
        (&OID_DOMAIN_COMPONENT, "DC"),
        (&OID_PKCS9_EMAIL_ADDRESS, "Email"),
    ]
    .into_iter()
    .find_map(|(known, a)| (known == oid).then_some(a))
}

/// A value x509-parser writes as its bytes: one of the common string types,
/// valid UTF-8.
fn plain<'a>(value: &'a x509_parser::der_parser::asn1_rs::Any<'_>) -> Option<&'a str> {
    use x509_parser::der_parser::asn1_rs::Tag;
    matches!(
        value.tag(),
        Tag::PrintableString | Tag::Utf8String | Tag::Ia5String
    )
    .then(|| std::str::from_utf8(value.data).ok())
    .flatten()
}

fn first_str<'a, 'b: 'a>(
    mut it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'b>>,
) -> Option<String> {
    it.next()
        .and_then(|atv| atv.as_str().ok())
        .map(str::to_owned)
}

fn serial_hex(raw: &[u8]) -> String {
    // openssl prints the INTEGER's magnitude: the 0x00 DER adds to keep a
    // serial positive is not part of it.
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    let s = hex_lower(&raw[start..]).to_ascii_uppercase();
    if s.is_empty() { "00".to_owned() } else { s }
}

fn key_kind(spki: &SubjectPublicKeyInfo<'_>) -> KeyKind {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_PKCS1_RSAENCRYPTION || *alg == OID_PKCS1_RSASSAPSS {
        match RSAPublicKey::from_der(&spki.subject_public_key.data) {
            Ok((_, rsa)) => KeyKind::Rsa {
                bits: bit_length(rsa.modulus),
            },
            Err(_) => KeyKind::Other {
                oid: alg.to_id_string(),
            },
        }
    } else if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = match spki.algorithm.parameters.as_ref().map(|p| p.as_oid()) {
            Some(Ok(c)) if c == OID_EC_P256 => "P-256".to_owned(),
            Some(Ok(c)) if c == OID_NIST_EC_P384 => "P-384".to_owned(),
            Some(Ok(c)) if c == OID_NIST_EC_P521 => "P-521".to_owned(),
            Some(Ok(c)) => c.to_id_string(),
            _ => "unnamed curve".to_owned(),
        };
        KeyKind::Ec { curve }
    } else if *alg == OID_SIG_ED25519 {
        KeyKind::Ed25519
    } else {
        KeyKind::Other {
            oid: alg.to_id_string(),
        }
    }
}

/// Bits of a big-endian unsigned integer. x509-parser's own `key_size` is
/// wrong for moduli without a leading zero byte, hence this.
pub(crate) fn bit_length(be: &[u8]) -> usize {
    match be.iter().position(|b| *b != 0) {
        None => 0,
        Some(i) => (be.len() - i - 1) * 8 + (8 - be[i].leading_zeros() as usize),
    }
}

fn validation_of(x509: &X509Certificate<'_>) -> Validation {
    let mut found = Validation::Unknown;
    for ext in x509.tbs_certificate.extensions() {
        if let ParsedExtension::CertificatePolicies(policies) = ext.parsed_extension() {
            for p in policies {
                // EV certificates often carry the OV or DV OID too (and the
                // CA's own EV OID): the strongest one decides.
                let v = match &p.policy_id {
                    id if *id == OID_POLICY_EV => Validation::EV,
                    id if *id == OID_POLICY_OV => Validation::OV,
                    id if *id == OID_POLICY_DV => Validation::DV,
                    _ => continue,
                };
                found = stronger(found, v);
            }
        }
    }
    found
}

fn stronger(a: Validation, b: Validation) -> Validation {
    let rank = |v: Validation| match v {
        Validation::Unknown => 0,
        Validation::DV => 1,
        Validation::OV => 2,
        Validation::EV => 3,
    };
    if rank(b) > rank(a) { b } else { a }
}

fn domain_type_of(names: &[String]) -> DomainType {
    if names.iter().any(|n| n.starts_with("*.")) {
        return DomainType::Wildcard;
    }
    let mut distinct: Vec<&str> = names.iter().map(String::as_str).collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() > 1 {
        DomainType::Multi
    } else {
        DomainType::Single
    }
}

/// Lowercase, without one trailing dot: "WWW.Example.COM." and
/// "www.example.com" are the same DNS name.
fn normalize_name(name: &str) -> String {
    let name = name.trim();
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// RFC 6125 §6.4: exact match, or a `*` that is the whole left-most label
/// and stands for exactly one non-empty label. Partial-label wildcards
/// (`f*.example.com`) and wildcards over a bare TLD (`*.com`) never match.
fn dns_name_matches(have: &str, wanted: &str) -> bool {
    if have.is_empty() {
        return false;
    }
    if have == wanted {
        // A wildcard name asked for as itself (an old cert's `*.example.com`)
        // is kept by the same wildcard; any other `*` is not a usable name.
        return !have.contains('*') || is_wildcard(have);
    }
    if !is_wildcard(have) {
        return false;
    }
    let suffix = &have[1..]; // ".example.com"
    match wanted.strip_suffix(suffix) {
        Some(label) => !label.is_empty() && !label.contains('.') && !label.contains('*'),
        None => false,
    }
}

fn is_wildcard(name: &str) -> bool {
    name.strip_prefix("*.")
        .is_some_and(|rest| rest.contains('.') && !rest.contains('*'))
}

fn hex_lower(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0x0f)] as char);
    }
    s
}

/// Test PKI built with rcgen at test time (STYLE.md: fixtures from code),
/// shared by the tests of cert, bundle and validate.
#[cfg(test)]
pub(crate) mod testpki {
    use std::path::Path;
    use std::process::Command;

    use rcgen::{
        BasicConstraints, CertificateParams, CustomExtension, DnType, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    use time::{Duration, OffsetDateTime};

    use super::CertInfo;

    /// A CA that can sign: its certificate and an rcgen issuer.
    pub struct Ca {
        pub cert: CertInfo,
        pub issuer: Issuer<'static, KeyPair>,
    }

    pub fn p256() -> KeyPair {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate P-256 key")
    }

    /// An RSA key made by the openssl CLI (ring cannot generate RSA keys).
    /// Returns the PKCS#8 PEM text.
    pub fn openssl_rsa_pem(dir: &Path, bits: u32) -> String {
        let path = dir.join(format!("rsa{bits}.key"));
        let out = Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
            .arg(format!("rsa_keygen_bits:{bits}"))
            .arg("-out")
            .arg(&path)
            .output()
            .expect("run openssl genpkey");
        assert!(out.status.success(), "openssl genpkey failed: {out:?}");
        std::fs::read_to_string(&path).expect("read generated RSA key")
    }

    fn ca_params(name: &str) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, format!("{name} Org"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = OffsetDateTime::now_utc() - Duration::days(365);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(3650);
        params
    }

    /// A self-signed root CA.
    pub fn root(name: &str) -> Ca {
        let key = p256();
        let params = ca_params(name);
        let cert = params.self_signed(&key).expect("self-sign root");
        Ca {
            cert: CertInfo::from_der(cert.der()).expect("parse root"),
            issuer: Issuer::new(params, key),
        }
    }

    /// An intermediate CA signed by `parent`.
    pub fn intermediate(name: &str, parent: &Ca) -> Ca {
        let key = p256();
        let params = ca_params(name);
        let cert = params
            .signed_by(&key, &parent.issuer)
            .expect("sign intermediate");
        Ca {
            cert: CertInfo::from_der(cert.der()).expect("parse intermediate"),
            issuer: Issuer::new(params, key),
        }
    }

    /// Leaf parameters valid from yesterday for 90 days, CN = first name.
    pub fn leaf_params(names: &[&str]) -> CertificateParams {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(90);
        params
    }

    pub fn sign_leaf(params: &CertificateParams, key: &KeyPair, ca: &Ca) -> CertInfo {
        let cert = params.signed_by(key, &ca.issuer).expect("sign leaf");
        CertInfo::from_der(cert.der()).expect("parse leaf")
    }

    /// A certificatePolicies extension holding one policy OID (dotted).
    pub fn policy_extension(oid: &str) -> CustomExtension {
        let oid_der = der_oid(oid);
        let info = der_tlv(0x30, &oid_der);
        CustomExtension::from_oid_content(&[2, 5, 29, 32], der_tlv(0x30, &info))
    }

    pub fn der_oid(dotted: &str) -> Vec<u8> {
        let arcs: Vec<u64> = dotted.split('.').map(|a| a.parse().expect("arc")).collect();
        let mut body = vec![(arcs[0] * 40 + arcs[1]) as u8];
        for &arc in &arcs[2..] {
            let mut chunk = vec![(arc & 0x7f) as u8];
            let mut rest = arc >> 7;
            while rest > 0 {
                chunk.push(((rest & 0x7f) as u8) | 0x80);
                rest >>= 7;
            }
            chunk.reverse();
            body.extend(chunk);
        }
        der_tlv(0x06, &body)
    }

    pub fn der_tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        assert!(body.len() < 128, "short-form DER lengths only");
        let mut out = vec![tag, body.len() as u8];
        out.extend_from_slice(body);
        out
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{ExtendedKeyUsagePurpose, KeyPair, PublicKeyData, SerialNumber};
    use time::macros::datetime;

    use super::testpki::*;
    use super::*;

    fn with_names(names: &[&str]) -> CertInfo {
        let ca = root("Names CA");
        sign_leaf(&leaf_params(names), &p256(), &ca)
    }

    #[test]
    fn facts_of_a_leaf() {
        let ca = root("Facts CA");
        let mut params = leaf_params(&["WWW.Example.com", "example.com", "192.0.2.7", "::1"]);
        params.serial_number = Some(SerialNumber::from_slice(&[0x00, 0xab, 0x01]));
        params.not_before = datetime!(2026-06-01 00:00:00 UTC);
        params.not_after = datetime!(2027-06-01 00:00:00 UTC);
        let key = p256();
        let leaf = sign_leaf(&params, &key, &ca);

        assert_eq!(
            leaf.names,
            ["www.example.com", "example.com", "192.0.2.7", "::1"]
        );
        assert_eq!(leaf.subject, "CN=WWW.Example.com");
        assert_eq!(leaf.issuer, "CN=Facts CA, O=Facts CA Org");
        assert_eq!(leaf.issuer_org.as_deref(), Some("Facts CA Org"));
        assert_eq!(leaf.serial, "AB01");
        assert_eq!(leaf.not_before, datetime!(2026-06-01 00:00:00 UTC));
        assert_eq!(leaf.not_after, datetime!(2027-06-01 00:00:00 UTC));
        assert!(!leaf.is_ca);
        assert!(leaf.server_auth);
        assert_eq!(
            leaf.key_kind,
            KeyKind::Ec {
                curve: "P-256".into()
            }
        );
        assert_eq!(leaf.spki_der, key.subject_public_key_info());
        assert_eq!(leaf.validation, Validation::Unknown);
        assert_eq!(leaf.domain_type, DomainType::Multi);
        assert!(!leaf.self_issued);
        assert_eq!(leaf.sha256, sha256_hex(&leaf.der));
        assert_eq!(leaf.sha256.len(), 64);

        assert!(ca.cert.is_ca);
        assert!(ca.cert.self_issued);
    }

    #[test]
    fn leaf_facts_are_the_cert_info_facts() {
        let ca = root("Leaf Facts CA");
        // An issuer without O=: the DN stands in for the brand.
        let bare = {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "Bare CA");
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let key = p256();
            let cert = params.self_signed(&key).expect("bare CA");
            Ca {
                cert: CertInfo::from_der(cert.der()).expect("bare CA info"),
                issuer: rcgen::Issuer::new(params, key),
            }
        };
        let mut ev = leaf_params(&["*.a.test", "a.test"]);
        ev.custom_extensions = vec![policy_extension("2.23.140.1.1")];
        let cases = [
            sign_leaf(&leaf_params(&["one.test"]), &p256(), &ca),
            sign_leaf(&leaf_params(&["a.test", "b.test"]), &p256(), &ca),
            sign_leaf(&ev, &p256(), &ca),
            sign_leaf(&leaf_params(&["bare.test"]), &p256(), &bare),
            ca.cert.clone(),
        ];
        for info in &cases {
            let facts = LeafFacts::from_der(&info.der).expect("facts");
            assert_eq!(facts.sha256, info.sha256);
            let brand = info
                .issuer_org
                .clone()
                .unwrap_or_else(|| info.issuer.clone());
            assert_eq!(facts.issuer, brand);
            assert_eq!(facts.not_after, info.not_after);
            assert_eq!(facts.domain_type, info.domain_type);
            assert_eq!(facts.validation, info.validation);
            assert_eq!(facts.key_kind, info.key_kind);
        }
        assert_eq!(
            LeafFacts::from_der(&cases[3].der).expect("bare").issuer,
            "CN=Bare CA"
        );
        assert_eq!(cases[2].validation, Validation::EV);
        // Broken bytes fail as CertInfo::from_der fails.
        let der = &cases[0].der;
        for bad in [&der[..der.len() / 2], &[0x30, 0x03, 0x02, 0x01, 0x01][..]] {
            let want = CertInfo::from_der(bad).expect_err("broken").to_string();
            let got = LeafFacts::from_der(bad).expect_err("broken").to_string();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn cn_is_the_name_without_san() {
        let ca = root("CN CA");
        let mut params = leaf_params(&[]);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Legacy.Example.com");
        let leaf = sign_leaf(&params, &p256(), &ca);
        assert_eq!(leaf.names, ["legacy.example.com"]);
        assert_eq!(leaf.domain_type, DomainType::Single);
    }

    #[test]
    fn domain_type_wildcard_and_single() {
        assert_eq!(
            with_names(&["*.example.com", "example.com"]).domain_type,
            DomainType::Wildcard
        );
        assert_eq!(
            with_names(&["www.example.com"]).domain_type,
            DomainType::Single
        );
    }

    #[test]
    fn name_text_is_the_text_x509_parser_writes() {
        let atv =
            |oid: &str, tag: u8, v: &[u8]| der_tlv(0x30, &[der_oid(oid), der_tlv(tag, v)].concat());
        let rdn = |atvs: &[Vec<u8>]| der_tlv(0x31, &atvs.concat());
        let name = |rdns: &[Vec<u8>]| der_tlv(0x30, &rdns.concat());
        let cn = |v: &str| atv("2.5.4.3", 0x0c, v.as_bytes());
        let cases = [
            name(&[]),
            name(&[rdn(&[cn("www.example.com")])]),
            name(&[
                rdn(&[atv("2.5.4.6", 0x13, b"US")]),
                rdn(&[atv("2.5.4.10", 0x0c, b"Let's Encrypt")]),
                rdn(&[cn("R11")]),
            ]),
            // One RDN of two attributes; DC as IA5String.
            name(&[
                rdn(&[cn("a"), atv("2.5.4.11", 0x0c, b"b")]),
                rdn(&[atv("0.9.2342.19200300.100.1.25", 0x16, b"example")]),
            ]),
            name(&[
                rdn(&[atv("1.2.840.113549.1.9.1", 0x16, b"a@example.com")]),
                rdn(&[atv("2.5.4.7", 0x0c, b"Berlin")]),
                rdn(&[atv("2.5.4.8", 0x13, b"Berlin")]),
            ]),
            // x509-parser's own path: an attribute it does not abbreviate
            // (serialNumber), a BMPString, a T61String, a value that is
            // not a string, bytes that are not UTF-8.
            name(&[rdn(&[atv("2.5.4.5", 0x13, b"1234")]), rdn(&[cn("x")])]),
            name(&[rdn(&[atv("2.5.4.3", 0x1e, &[0, b'h', 0, b'i'])])]),
            name(&[rdn(&[atv("2.5.4.3", 0x14, b"t61")])]),
            name(&[rdn(&[atv("2.5.4.3", 0x02, &[1, 2])])]),
            name(&[rdn(&[cn("ok"), atv("2.5.4.3", 0x0c, &[0xff, 0xfe])])]),
        ];
        for der in cases {
            let (rest, parsed) = X509Name::from_der(&der).expect("a name");
            assert!(rest.is_empty());
            assert_eq!(name_text(&parsed), parsed.to_string(), "{der:02x?}");
        }
        // And in a certificate, as CertInfo keeps them.
        let leaf = with_names(&["www.example.com"]);
        let x509 = parse(&leaf.der).expect("parse");
        assert_eq!(leaf.subject, x509.tbs_certificate.subject.to_string());
        assert_eq!(leaf.issuer, x509.tbs_certificate.issuer.to_string());
    }

    #[test]
    fn validation_from_policy_oids() {
        let ca = root("Policy CA");
        for (oid, want) in [
            ("2.23.140.1.2.1", Validation::DV),
            ("2.23.140.1.2.2", Validation::OV),
            ("2.23.140.1.1", Validation::EV),
            ("1.3.6.1.4.1.99999.1", Validation::Unknown),
        ] {
            let mut params = leaf_params(&["www.example.com"]);
            params.custom_extensions = vec![policy_extension(oid)];
            let leaf = sign_leaf(&params, &p256(), &ca);
            assert_eq!(leaf.validation, want, "policy {oid}");
        }
    }

    #[test]
    fn eku_server_auth() {
        let ca = root("EKU CA");
        let mut params = leaf_params(&["www.example.com"]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        assert!(!sign_leaf(&params, &p256(), &ca).server_auth);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        assert!(sign_leaf(&params, &p256(), &ca).server_auth);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::Any];
        assert!(sign_leaf(&params, &p256(), &ca).server_auth);
    }

    #[test]
    fn key_kinds() {
        let ca = root("Kinds CA");
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("p384");
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
        let params = leaf_params(&["www.example.com"]);
        assert_eq!(
            sign_leaf(&params, &p384, &ca).key_kind,
            KeyKind::Ec {
                curve: "P-384".into()
            }
        );
        assert_eq!(sign_leaf(&params, &ed, &ca).key_kind, KeyKind::Ed25519);

        let dir = tempfile::tempdir().expect("tempdir");
        let rsa = KeyPair::from_pem(&openssl_rsa_pem(dir.path(), 2048)).expect("rsa key");
        let leaf = sign_leaf(&params, &rsa, &ca);
        assert_eq!(leaf.key_kind, KeyKind::Rsa { bits: 2048 });
        assert_eq!(
            key_kind_of_spki(&leaf.spki_der).expect("spki"),
            KeyKind::Rsa { bits: 2048 }
        );
    }

    #[test]
    fn garbage_is_a_parse_error() {
        assert!(matches!(
            CertInfo::from_der(b"not a certificate"),
            Err(CertError::Parse(_))
        ));
        let leaf = with_names(&["www.example.com"]);
        let mut glued = leaf.der.to_vec();
        glued.extend_from_slice(&leaf.der);
        assert!(matches!(
            CertInfo::from_der(&glued),
            Err(CertError::Parse(_))
        ));
        let truncated = &leaf.der[..leaf.der.len() - 10];
        assert!(CertInfo::from_der(truncated).is_err());
    }

    #[test]
    fn covers_exact_and_case_insensitive() {
        let c = with_names(&["www.example.com", "Mail.Example.com"]);
        assert!(c.covers("www.example.com"));
        assert!(c.covers("WWW.EXAMPLE.COM"));
        assert!(c.covers("mail.example.com"));
        assert!(c.covers("www.example.com."));
        assert!(!c.covers("example.com"));
        assert!(!c.covers("ww.example.com"));
        assert!(!c.covers(""));
    }

    #[test]
    fn covers_wildcard_one_label_only() {
        let c = with_names(&["*.example.com"]);
        assert!(c.covers("a.example.com"));
        assert!(c.covers("A.Example.COM"));
        assert!(c.covers("*.example.com"));
        assert!(!c.covers("a.b.example.com"));
        assert!(!c.covers("example.com"));
        assert!(!c.covers(".example.com"));
        assert!(!c.covers("a.example.org"));
        assert!(!c.covers("*.b.example.com"));
        assert!(!c.covers("192.0.2.1"));
    }

    #[test]
    fn covers_no_partial_label_wildcard() {
        let c = with_names(&["f*.example.com", "*.com"]);
        assert!(!c.covers("foo.example.com"));
        assert!(!c.covers("f.example.com"));
        assert!(!c.covers("f*.example.com"));
        assert!(!c.covers("example.com"));
    }

    #[test]
    fn covers_ip_addresses() {
        let c = with_names(&["192.0.2.7", "2001:db8::1", "www.example.com"]);
        assert!(c.covers("192.0.2.7"));
        assert!(c.covers("2001:DB8:0:0:0:0:0:1"));
        assert!(!c.covers("192.0.2.8"));
        assert!(!c.covers("::1"));
        // A DNS name that looks like the IP's text is not the IP.
        let dns = with_names(&["www.example.com"]);
        assert!(!dns.covers("192.0.2.7"));
    }

    #[test]
    fn signed_by_checks_names_and_signature() {
        let root_ca = root("Sig Root");
        let inter = intermediate("Sig Inter", &root_ca);
        let leaf = sign_leaf(&leaf_params(&["www.example.com"]), &p256(), &inter);
        assert!(leaf.is_signed_by(&inter.cert));
        assert!(inter.cert.is_signed_by(&root_ca.cert));
        assert!(root_ca.cert.is_signed_by(&root_ca.cert));
        assert!(!leaf.is_signed_by(&root_ca.cert));
        assert!(!inter.cert.is_signed_by(&inter.cert));

        // Same name, different key: names match, signature does not.
        let impostor = root("Sig Inter");
        assert_eq!(leaf.check_issuer(&impostor.cert), IssuerCheck::NotSigned);
    }

    #[test]
    fn pem_round_trip() {
        let leaf = with_names(&["www.example.com"]);
        let pem_text = leaf.to_pem();
        assert!(pem_text.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(pem_text.ends_with("-----END CERTIFICATE-----\n"));
        assert!(!pem_text.contains('\r'));
        let back = pem::parse(&pem_text).expect("parse pem");
        assert_eq!(back.contents(), leaf.der.as_ref());
    }

    #[test]
    fn openssl_date_format() {
        assert_eq!(
            openssl_date(datetime!(2027-06-01 00:00:00 UTC)),
            "Jun  1 00:00:00 2027 GMT"
        );
        assert_eq!(
            openssl_date(datetime!(2026-12-25 13:05:09 UTC)),
            "Dec 25 13:05:09 2026 GMT"
        );
        assert_eq!(
            openssl_date(datetime!(2027-06-01 02:00:00 +02:00)),
            "Jun  1 00:00:00 2027 GMT"
        );
    }

    #[test]
    fn rfc3339_format() {
        assert_eq!(
            rfc3339(datetime!(2027-06-01 00:00:00.123 UTC)),
            "2027-06-01T00:00:00Z"
        );
        assert_eq!(
            rfc3339(datetime!(2027-06-01 02:30:00 +02:00)),
            "2027-06-01T00:30:00Z"
        );
    }

    #[test]
    fn days_left_counts_whole_days() {
        let mut c = with_names(&["www.example.com"]);
        c.not_after = datetime!(2027-06-01 00:00:00 UTC);
        assert_eq!(c.days_left(datetime!(2027-05-01 12:00:00 UTC)), 30);
        assert_eq!(c.days_left(datetime!(2027-06-03 00:00:00 UTC)), -2);
    }

    #[test]
    fn days_left_is_negative_as_soon_as_the_certificate_expired() {
        // The metric used to truncate toward zero (12 hours past notAfter
        // was 0 days left) while `status` said -1 (expired): one rule now.
        let mut c = with_names(&["www.example.com"]);
        c.not_after = datetime!(2027-06-01 00:00:00 UTC);
        let now = datetime!(2027-06-01 12:00:00 UTC);
        assert_eq!(c.days_left(now), -1);
        assert_eq!(days_left(c.not_after, now), -1);
        assert_eq!(c.days_left(datetime!(2027-06-01 00:00:01 UTC)), -1);
        assert_eq!(c.days_left(datetime!(2027-05-31 23:59:59 UTC)), 0);
    }

    #[test]
    fn bit_length_of_moduli() {
        assert_eq!(bit_length(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(bit_length(&[0x80, 0x00]), 16);
        assert_eq!(bit_length(&[0x01, 0x00]), 9);
        assert_eq!(bit_length(&[]), 0);
    }

    #[test]
    fn serial_strips_sign_byte() {
        assert_eq!(serial_hex(&[0x00, 0xff, 0x0a]), "FF0A");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[0x7f]), "7F");
    }
}
