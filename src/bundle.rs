//! Reading a certificate bundle from files: PEM or DER certificates (leaf
//! first, then chain), an optional private key, an optional separate chain
//! file. Size-limited, encrypted keys refused. Nothing here touches disk
//! beyond reading the named files.

use std::path::{Path, PathBuf};

use rustls_pki_types::PrivateKeyDer;

use crate::cert::{CertInfo, KeyKind};

/// The largest input file certswap reads (DESIGN.md step 1).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Why a bundle could not be read. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: file is larger than the 1 MiB limit")]
    TooLarge { path: PathBuf },
    #[error("{path}: file is empty")]
    Empty { path: PathBuf },
    #[error("{path}: no certificate found (expected PEM 'BEGIN CERTIFICATE' or DER)")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error(
        "{path}: the private key is encrypted; certswap needs an unencrypted key (decrypt it with `openssl pkey -in KEY -out KEY.plain`)"
    )]
    EncryptedKey { path: PathBuf },
    #[error("{path}: no private key found")]
    NoKey { path: PathBuf },
    #[error("{path}: holds a private key where a certificate was expected")]
    KeyInsteadOfCert { path: PathBuf },
    #[error("{path}: holds {count} private keys; expected one")]
    SeveralKeys { path: PathBuf, count: usize },
}

/// A private key as read, with the PEM text certswap will write.
#[derive(Debug)]
pub struct KeyMaterial {
    pub der: PrivateKeyDer<'static>,
    /// PEM text to install (the input PEM block, or DER converted to PEM).
    pub pem: String,
    /// DER of the matching SubjectPublicKeyInfo (derived with rustls/ring).
    pub spki_der: Vec<u8>,
    pub kind: KeyKind,
}

/// A parsed bundle: leaf, chain (as given, leaf's issuer first), key.
#[derive(Debug)]
pub struct Bundle {
    pub leaf: CertInfo,
    pub chain: Vec<CertInfo>,
    pub key: Option<KeyMaterial>,
    /// Where each part came from, for messages.
    pub cert_path: PathBuf,
    pub key_path: Option<PathBuf>,
}

impl Bundle {
    /// Leaf followed by the chain, as PEM: the content of a full-chain file.
    pub fn fullchain_pem(&self) -> String {
        todo!()
    }

    /// The chain only, as PEM (for an apache-style separate chain file).
    pub fn chain_pem(&self) -> String {
        todo!()
    }
}

/// Read a bundle. `cert` may hold the leaf alone or leaf + chain (PEM, or a
/// single DER certificate); `chain` adds more chain certificates; `key` is
/// the private key (PEM PKCS#8 / PKCS#1 / SEC1, or DER).
pub fn load(
    _cert: &Path,
    _chain: Option<&Path>,
    _key: Option<&Path>,
) -> Result<Bundle, BundleError> {
    todo!()
}

/// Read the certificates in one file (PEM or DER). Used for installed files too.
pub fn read_certs(_path: &Path) -> Result<Vec<CertInfo>, BundleError> {
    todo!()
}

/// Read one private key file.
pub fn read_key(_path: &Path) -> Result<KeyMaterial, BundleError> {
    todo!()
}
