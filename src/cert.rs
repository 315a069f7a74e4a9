//! Facts of one X.509 certificate, read once from its DER: names, dates,
//! key, spec (domain type, validation type, brand) and fingerprints. Every
//! other module asks these facts instead of parsing certificates itself.

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

/// Why a certificate's DER could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The bytes are not a DER X.509 certificate.
    #[error("not a valid X.509 certificate: {0}")]
    Parse(String),
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

/// DV / OV / EV from the CA/Browser Forum policy OIDs 2.23.140.1.2.1 / .2.2 / .1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Validation {
    DV,
    OV,
    EV,
    /// No CA/B Forum policy OID (internal CAs, self-signed).
    Unknown,
}

/// Single name, several names, or at least one wildcard name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainType {
    Single,
    Multi,
    Wildcard,
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

impl CertInfo {
    /// Parse one DER certificate.
    pub fn from_der(_der: &[u8]) -> Result<CertInfo, CertError> {
        todo!()
    }

    /// Whether this certificate is valid for `name` (DNS name or IP text),
    /// RFC 6125: a wildcard covers exactly one left-most label.
    pub fn covers(&self, _name: &str) -> bool {
        todo!()
    }

    /// Whole days from `now` until notAfter (negative once expired).
    pub fn days_left(&self, now: OffsetDateTime) -> i64 {
        (self.not_after - now).whole_days()
    }

    /// Whether `issuer` signed this certificate (signature check with the
    /// issuer's public key, names compared too).
    pub fn is_signed_by(&self, _issuer: &CertInfo) -> bool {
        todo!()
    }

    /// PEM text of this certificate ("-----BEGIN CERTIFICATE-----...").
    pub fn to_pem(&self) -> String {
        todo!()
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(_bytes: &[u8]) -> String {
    todo!()
}

/// A date the way `openssl x509 -noout -dates` prints it:
/// `Jun  1 00:00:00 2027 GMT`.
pub fn openssl_date(_t: OffsetDateTime) -> String {
    todo!()
}

/// RFC 3339 in UTC with a `Z`, e.g. `2027-06-01T00:00:00Z`.
pub fn rfc3339(_t: OffsetDateTime) -> String {
    todo!()
}
