//! Reading a certificate bundle from files: PEM or DER certificates (leaf
//! first, then chain), an optional private key, an optional separate chain
//! file. Size-limited, encrypted keys refused. Nothing here touches disk
//! beyond reading the named files.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{self, PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::cert::{self, CertInfo, KeyKind};

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
    #[error(
        "{path}: the private key is a {bits}-bit RSA key, which is too weak; at least 2048 bits are required"
    )]
    WeakKey { path: PathBuf, bits: usize },
}

/// A private key as read, with the PEM text certswap will write.
///
/// `Debug` is written by hand so that no key bytes reach a log line.
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

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("der", &"[secret key elided]")
            .field("pem", &"[secret key elided]")
            .field("spki_sha256", &cert::sha256_hex(&self.spki_der))
            .field("kind", &self.kind)
            .finish()
    }
}

impl Bundle {
    /// Leaf followed by the chain, as PEM: the content of a full-chain file.
    pub fn fullchain_pem(&self) -> String {
        std::iter::once(&self.leaf)
            .chain(&self.chain)
            .map(CertInfo::to_pem)
            .collect()
    }

    /// The chain only, as PEM (for an apache-style separate chain file).
    pub fn chain_pem(&self) -> String {
        self.chain.iter().map(CertInfo::to_pem).collect()
    }
}

/// The files of one bundle: what `install`, a batch item, the deploy hook
/// and `check` hand to [`load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// Leaf, or leaf followed by its chain (PEM or DER).
    pub cert: PathBuf,
    /// Without a key the cert must match the installed key (own CSR).
    pub key: Option<PathBuf>,
    /// A separate chain file (vendor `SITE_chain.crt`, acme.sh's `ca.cer`).
    pub chain: Option<PathBuf>,
}

impl Files {
    /// [`load`] these files.
    pub fn load(&self) -> Result<Bundle, BundleError> {
        load(&self.cert, self.chain.as_deref(), self.key.as_deref())
    }
}

/// Read a bundle. `cert` may hold the leaf alone or leaf + chain (PEM, or a
/// single DER certificate); `chain` adds more chain certificates; `key` is
/// the private key (PEM PKCS#8 / PKCS#1 / SEC1, or DER).
///
/// Without `key`, a private key block inside the `cert` file (a combined
/// cert+key PEM) is used as the key.
pub fn load(cert: &Path, chain: Option<&Path>, key: Option<&Path>) -> Result<Bundle, BundleError> {
    let cert_bytes = read_limited(cert)?;
    let parsed = parse_certs(cert, &cert_bytes)?;
    let mut certs = parsed.certs.into_iter();
    let leaf = certs.next().ok_or_else(|| BundleError::NoCertificate {
        path: cert.to_path_buf(),
    })?;
    let mut chain_certs: Vec<CertInfo> = certs.collect();
    if let Some(chain_path) = chain {
        chain_certs.extend(read_certs(chain_path)?);
    }

    let (key, key_path) = match key {
        Some(key_path) => (Some(read_key(key_path)?), Some(key_path.to_path_buf())),
        None if parsed.has_key => (
            Some(parse_key(cert, &cert_bytes)?),
            Some(cert.to_path_buf()),
        ),
        None => (None, None),
    };

    Ok(Bundle {
        leaf,
        chain: chain_certs,
        key,
        cert_path: cert.to_path_buf(),
        key_path,
    })
}

/// Read the certificates in one file (PEM or DER). Used for installed files too.
pub fn read_certs(path: &Path) -> Result<Vec<CertInfo>, BundleError> {
    let bytes = read_limited(path)?;
    Ok(parse_certs(path, &bytes)?.certs)
}

/// The first certificate in the bytes of a file, PEM or DER: the leaf a
/// server serves from it. None when there is none or it does not parse.
/// The one reader of "the first certificate" (issue 13); the chain after
/// it is not decoded.
pub fn leaf_of(bytes: &[u8]) -> Option<CertInfo> {
    match CertificateDer::pem_slice_iter(bytes).next() {
        Some(Ok(der)) => CertInfo::from_der(&der).ok(),
        Some(Err(_)) => None,
        None => CertInfo::from_der(bytes).ok(),
    }
}

/// The first certificate of the file at `path`, read with the size cap
/// ([`MAX_FILE_BYTES`]) and the messages of [`read_certs`].
pub fn read_leaf(path: &Path) -> Result<CertInfo, BundleError> {
    read_certs(path)?
        .into_iter()
        .next()
        .ok_or_else(|| BundleError::NoCertificate {
            path: path.to_path_buf(),
        })
}

/// Read one private key file.
pub fn read_key(path: &Path) -> Result<KeyMaterial, BundleError> {
    let bytes = read_limited(path)?;
    parse_key(path, &bytes)
}

/// The certificates in the bytes of one file (PEM or DER), with the same
/// limits and messages as [`read_certs`]; `path` only names the input in
/// messages. For bytes that did not come from a file (and the fuzzers).
pub fn parse_certs_bytes(path: &Path, bytes: &[u8]) -> Result<Vec<CertInfo>, BundleError> {
    check_size_and_blank(path, bytes)?;
    Ok(parse_certs(path, bytes)?.certs)
}

/// One private key from the bytes of one file, as [`read_key`] reads it.
pub fn parse_key_bytes(path: &Path, bytes: &[u8]) -> Result<KeyMaterial, BundleError> {
    check_size_and_blank(path, bytes)?;
    parse_key(path, bytes)
}

fn check_size_and_blank(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(BundleError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(BundleError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Read a whole file, refusing more than [`MAX_FILE_BYTES`]. The metadata
/// check catches big regular files early; the bounded read also covers
/// pipes, devices and a file that grows while being read.
fn read_limited(path: &Path) -> Result<Vec<u8>, BundleError> {
    let read_err = |source| BundleError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(BundleError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    check_size_and_blank(path, &bytes)?;
    Ok(bytes)
}

/// The certificates of one file, and whether it also holds a private key.
struct ParsedCerts {
    certs: Vec<CertInfo>,
    has_key: bool,
}

fn parse_certs(path: &Path, bytes: &[u8]) -> Result<ParsedCerts, BundleError> {
    if !is_pem(bytes) {
        return parse_der_cert(path, bytes);
    }
    if pem_has_encrypted_key(bytes) {
        // An encrypted key alone is a key given as --cert; next to
        // certificates it is a combined file whose key cannot be used.
        return Err(if contains(bytes, b"-----BEGIN CERTIFICATE-----") {
            BundleError::EncryptedKey {
                path: path.to_path_buf(),
            }
        } else {
            BundleError::KeyInsteadOfCert {
                path: path.to_path_buf(),
            }
        });
    }

    let mut certs = Vec::new();
    let mut has_key = false;
    for (index, item) in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes).enumerate() {
        let (kind, der) = item.map_err(|e| malformed(path, pem_reason(&e, index + 1)))?;
        match kind {
            SectionKind::Certificate => {
                let info = CertInfo::from_der(&der).map_err(|e| {
                    malformed(
                        path,
                        format!("certificate #{} of the file: {e}", certs.len() + 1),
                    )
                })?;
                certs.push(info);
            }
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey => {
                has_key = true;
            }
            // CRLs, CSRs and public keys are not part of what gets installed.
            _ => {}
        }
    }
    if certs.is_empty() {
        return Err(if has_key {
            BundleError::KeyInsteadOfCert {
                path: path.to_path_buf(),
            }
        } else {
            BundleError::NoCertificate {
                path: path.to_path_buf(),
            }
        });
    }
    Ok(ParsedCerts { certs, has_key })
}

/// A file that is not PEM: one DER certificate, or else say what it is.
fn parse_der_cert(path: &Path, bytes: &[u8]) -> Result<ParsedCerts, BundleError> {
    match CertInfo::from_der(bytes) {
        Ok(info) => Ok(ParsedCerts {
            certs: vec![info],
            has_key: false,
        }),
        Err(_) if is_encrypted_der_key(bytes) || PrivateKeyDer::try_from(bytes).is_ok() => {
            Err(BundleError::KeyInsteadOfCert {
                path: path.to_path_buf(),
            })
        }
        // Every DER certificate starts with a SEQUENCE tag: anything else
        // is not a certificate at all (text, a zip, a typo'd path).
        Err(e) if bytes.first() == Some(&0x30) => Err(malformed(
            path,
            format!("not a valid DER certificate ({e})"),
        )),
        Err(_) => Err(BundleError::NoCertificate {
            path: path.to_path_buf(),
        }),
    }
}

fn parse_key(path: &Path, bytes: &[u8]) -> Result<KeyMaterial, BundleError> {
    let der = if is_pem(bytes) {
        if pem_has_encrypted_key(bytes) {
            return Err(BundleError::EncryptedKey {
                path: path.to_path_buf(),
            });
        }
        let mut keys = Vec::new();
        for (index, item) in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes).enumerate() {
            let (kind, der) = item.map_err(|e| malformed(path, pem_reason(&e, index + 1)))?;
            if let Some(key) = PrivateKeyDer::from_pem(kind, der) {
                keys.push(key);
            }
        }
        match keys.len() {
            0 => {
                return Err(BundleError::NoKey {
                    path: path.to_path_buf(),
                });
            }
            1 => keys.remove(0),
            count => {
                return Err(BundleError::SeveralKeys {
                    path: path.to_path_buf(),
                    count,
                });
            }
        }
    } else {
        if is_encrypted_der_key(bytes) {
            return Err(BundleError::EncryptedKey {
                path: path.to_path_buf(),
            });
        }
        match PrivateKeyDer::try_from(bytes) {
            Ok(key) => key.clone_key(),
            Err(_) if CertInfo::from_der(bytes).is_ok() => {
                return Err(BundleError::NoKey {
                    path: path.to_path_buf(),
                });
            }
            Err(_) => {
                return Err(malformed(path, "not a PEM or DER private key".into()));
            }
        }
    };
    key_material(path, der)
}

/// Derive what certswap needs of a key. The public key comes from ring via
/// rustls, the same code that will later sign handshakes with it, so a key
/// that passes here is one the TLS stack can use.
fn key_material(path: &Path, der: PrivateKeyDer<'static>) -> Result<KeyMaterial, BundleError> {
    // Never format the key or ring's error: only a fixed reason.
    let unsupported = || {
        malformed(
            path,
            "unsupported or corrupt private key (supported: RSA 2048-8192 bits, ECDSA P-256/P-384, Ed25519)".into(),
        )
    };
    // ring refuses RSA keys under 2048 bits like a corrupt key; say why
    // instead, from the modulus, before handing the key to ring. (A modulus
    // of a few bits is a corrupt key, not a weak one: ring says so.)
    if let Some(bits) = rsa_modulus_bits(&der) {
        if (MIN_PLAUSIBLE_RSA_BITS..MIN_RSA_BITS).contains(&bits) {
            return Err(BundleError::WeakKey {
                path: path.to_path_buf(),
                bits,
            });
        }
        if bits > MAX_RSA_BITS {
            return Err(malformed(
                path,
                format!(
                    "the private key is a {bits}-bit RSA key; certswap supports RSA keys of 2048 to {MAX_RSA_BITS} bits"
                ),
            ));
        }
    }
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(|_| unsupported())?;
    let spki_der = signing_key
        .public_key()
        .ok_or_else(unsupported)?
        .as_ref()
        .to_vec();
    let kind = cert::key_kind_of_spki(&spki_der).map_err(|_| unsupported())?;
    let label = match &der {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    };
    let pem = ::pem::encode_config(
        &::pem::Pem::new(label, der.secret_der().to_vec()),
        ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF),
    );
    Ok(KeyMaterial {
        der,
        pem,
        spki_der,
        kind,
    })
}

/// The largest RSA modulus ring loads.
const MAX_RSA_BITS: usize = 8192;
/// Below this an "RSA key" is damaged bytes rather than a weak key.
const MIN_PLAUSIBLE_RSA_BITS: usize = 256;
/// Smallest RSA modulus certswap installs (CA/B Forum baseline). Here,
/// not in `validate`: reading a key already names a weak one, and
/// `validate` uses `bundle` (issue 13: no import cycle).
pub const MIN_RSA_BITS: usize = 2048;

/// The modulus size of an RSA private key: PKCS#1 `RSAPrivateKey`, or PKCS#8
/// wrapping one (rsaEncryption or RSASSA-PSS). None for other key types and
/// for bytes that do not have that shape (ring then says what it thinks).
fn rsa_modulus_bits(der: &PrivateKeyDer<'_>) -> Option<usize> {
    // rsaEncryption 1.2.840.113549.1.1.1 and id-RSASSA-PSS .1.1.10 (content bytes).
    const RSA_OIDS: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a],
    ];
    let pkcs1 = match der {
        PrivateKeyDer::Pkcs1(k) => k.secret_pkcs1_der(),
        PrivateKeyDer::Pkcs8(k) => {
            // PrivateKeyInfo ::= SEQUENCE { version, AlgorithmIdentifier, OCTET STRING }
            let (seq, _) = der_expect(k.secret_pkcs8_der(), 0x30)?;
            let (_version, rest) = der_expect(seq, 0x02)?;
            let (alg, rest) = der_expect(rest, 0x30)?;
            let (oid, _) = der_expect(alg, 0x06)?;
            if !RSA_OIDS.contains(&oid) {
                return None;
            }
            der_expect(rest, 0x04)?.0
        }
        _ => return None,
    };
    // RSAPrivateKey ::= SEQUENCE { version INTEGER, modulus INTEGER, ... }
    let (seq, _) = der_expect(pkcs1, 0x30)?;
    let (_version, rest) = der_expect(seq, 0x02)?;
    let (modulus, _) = der_expect(rest, 0x02)?;
    Some(cert::bit_length(modulus))
}

/// One DER element with tag `tag` at the start of `input`: (content, rest).
/// Definite lengths of up to four bytes only; anything else is None.
fn der_expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

/// A reason for a PEM syntax error that names the block but never echoes
/// file content (the block may be a private key).
fn pem_reason(e: &pem::Error, block: usize) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => match known_label(end_marker) {
            Some(label) => {
                format!("truncated PEM: block #{block} ('{label}') has no END line")
            }
            None => format!("truncated PEM: block #{block} has no END line"),
        },
        pem::Error::IllegalSectionStart { .. } => {
            format!("malformed PEM: block #{block} has a broken BEGIN line")
        }
        pem::Error::Base64Decode(_) => {
            format!("malformed PEM: block #{block} has corrupt base64 content")
        }
        _ => format!("malformed PEM at block #{block}"),
    }
}

/// The PEM label in `marker` (the END line the parser looked for) if it is
/// one of the labels certswap knows. Anything else is file content, which
/// may be a damaged key (the fuzzer found base64 there), so it is not shown.
fn known_label(marker: &[u8]) -> Option<&'static str> {
    const LABELS: &[&str] = &[
        "CERTIFICATE",
        "TRUSTED CERTIFICATE",
        "PRIVATE KEY",
        "RSA PRIVATE KEY",
        "EC PRIVATE KEY",
        "ENCRYPTED PRIVATE KEY",
        "PUBLIC KEY",
        "CERTIFICATE REQUEST",
        "NEW CERTIFICATE REQUEST",
        "X509 CRL",
        "EC PARAMETERS",
    ];
    let text = std::str::from_utf8(marker).ok()?;
    let label = text
        .trim()
        .trim_start_matches("-----END ")
        .trim_end_matches("-----");
    LABELS.iter().copied().find(|l| *l == label)
}

fn malformed(path: &Path, reason: String) -> BundleError {
    BundleError::Malformed {
        path: path.to_path_buf(),
        reason,
    }
}

fn is_pem(bytes: &[u8]) -> bool {
    contains(bytes, b"-----BEGIN ")
}

/// PKCS#8 "ENCRYPTED PRIVATE KEY" blocks are skipped by the PEM reader as an
/// unknown label, and legacy OpenSSL encryption ("Proc-Type: 4,ENCRYPTED"
/// headers) looks like corrupt base64: both are caught here first so the
/// user is told what to do instead.
fn pem_has_encrypted_key(bytes: &[u8]) -> bool {
    contains(bytes, b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || contains(bytes, b"Proc-Type: 4,ENCRYPTED")
}

/// A DER PKCS#8 EncryptedPrivateKeyInfo: its AlgorithmIdentifier near the
/// start names PBES2 (1.2.840.113549.1.5.13) or a PKCS#12 PBE scheme
/// (1.2.840.113549.1.12.1.*).
fn is_encrypted_der_key(bytes: &[u8]) -> bool {
    const PBES2: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0d,
    ];
    const PKCS12_PBE: &[u8] = &[
        0x06, 0x0a, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x01,
    ];
    let head = &bytes[..bytes.len().min(32)];
    bytes.first() == Some(&0x30) && (contains(head, PBES2) || contains(head, PKCS12_PBE))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use rcgen::KeyPair;
    use tempfile::TempDir;

    use super::*;
    use crate::cert::testpki::*;

    #[test]
    fn the_one_leaf_reader_takes_pem_or_der_and_caps_the_file() {
        let ca = root("leaf reader root");
        let leaf = sign_leaf(&leaf_params(&["a.test"]), &p256(), &ca);
        let chain = format!("{}{}", leaf.to_pem(), ca.cert.to_pem());
        assert_eq!(
            leaf_of(chain.as_bytes()).map(|l| l.sha256),
            Some(leaf.sha256.clone())
        );
        assert!(leaf_of(b"not a certificate").is_none());
        assert_eq!(
            leaf_of(&leaf.der).map(|l| l.sha256),
            Some(leaf.sha256.clone())
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a.pem");
        std::fs::write(&file, &chain).expect("write");
        assert_eq!(read_leaf(&file).expect("leaf").sha256, leaf.sha256);
        // Over the cap: refused by name before it is parsed.
        let big = dir.path().join("big.pem");
        let mut bytes = chain.into_bytes();
        bytes.resize(MAX_FILE_BYTES as usize + 1, b'\n');
        std::fs::write(&big, &bytes).expect("write");
        let e = read_leaf(&big).expect_err("too large");
        assert!(e.to_string().contains("big.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "\n").expect("write");
        assert!(read_leaf(&empty).is_err());
    }

    struct Fixture {
        dir: TempDir,
        leaf: CertInfo,
        inter: CertInfo,
        key: KeyPair,
    }

    fn fixture() -> Fixture {
        let root_ca = root("Bundle Root");
        let inter = intermediate("Bundle Inter", &root_ca);
        let key = p256();
        let leaf = sign_leaf(&leaf_params(&["www.example.com"]), &key, &inter);
        Fixture {
            dir: tempfile::tempdir().expect("tempdir"),
            leaf,
            inter: inter.cert,
            key,
        }
    }

    impl Fixture {
        fn write(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, content).expect("write fixture");
            path
        }
    }

    fn openssl(dir: &Path, args: &[&str], out_name: &str) -> Vec<u8> {
        let out_path = dir.join(out_name);
        // `-out` goes right after the subcommand: genrsa wants the key size last.
        let out = Command::new("openssl")
            .arg(args[0])
            .arg("-out")
            .arg(&out_path)
            .args(&args[1..])
            .output()
            .expect("run openssl");
        assert!(out.status.success(), "openssl {args:?} failed: {out:?}");
        std::fs::read(&out_path).expect("read openssl output")
    }

    #[test]
    fn pem_leaf_then_chain_with_key() {
        let f = fixture();
        let cert = f.write("site.pem", f.leaf.to_pem() + &f.inter.to_pem());
        let key = f.write("site.key", f.key.serialize_pem());
        let b = load(&cert, None, Some(&key)).expect("load");
        assert_eq!(b.leaf.sha256, f.leaf.sha256);
        assert_eq!(b.chain.len(), 1);
        assert_eq!(b.chain[0].sha256, f.inter.sha256);
        let k = b.key.as_ref().expect("key");
        assert_eq!(k.spki_der, f.leaf.spki_der);
        assert_eq!(
            k.kind,
            KeyKind::Ec {
                curve: "P-256".into()
            }
        );
        assert!(k.pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(b.key_path.as_deref(), Some(key.as_path()));
        assert_eq!(b.fullchain_pem(), f.leaf.to_pem() + &f.inter.to_pem());
        assert_eq!(b.chain_pem(), f.inter.to_pem());
    }

    #[test]
    fn separate_chain_file_apache_style() {
        let f = fixture();
        let cert = f.write("site_public.crt", f.leaf.to_pem());
        let chain = f.write("site_chain.crt", f.inter.to_pem());
        let b = load(&cert, Some(&chain), None).expect("load");
        assert_eq!(b.chain.len(), 1);
        assert!(b.key.is_none());
        assert!(b.key_path.is_none());
    }

    #[test]
    fn combined_cert_and_key_file_supplies_the_key() {
        let f = fixture();
        let cert = f.write(
            "combined.pem",
            f.leaf.to_pem() + &f.key.serialize_pem() + &f.inter.to_pem(),
        );
        let b = load(&cert, None, None).expect("load");
        assert_eq!(b.chain.len(), 1);
        assert_eq!(b.key.expect("key").spki_der, f.leaf.spki_der);
        assert_eq!(b.key_path.as_deref(), Some(cert.as_path()));
    }

    #[test]
    fn der_cert_accepted() {
        let f = fixture();
        let cert = f.write("site.der", f.leaf.der.as_ref());
        let certs = read_certs(&cert).expect("read der");
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0].sha256, f.leaf.sha256);
    }

    #[test]
    fn der_key_accepted_and_converted_to_pem() {
        let f = fixture();
        let key = f.write("site.key.der", f.key.serialize_der());
        let k = read_key(&key).expect("read der key");
        assert_eq!(k.spki_der, f.leaf.spki_der);
        assert_eq!(
            k.pem.trim_end(),
            f.key.serialize_pem().replace("\r\n", "\n").trim_end()
        );
    }

    #[test]
    fn pkcs1_and_sec1_keep_their_labels() {
        let f = fixture();
        let d = f.dir.path();
        let rsa = openssl(d, &["genrsa", "-traditional", "2048"], "rsa.key");
        assert!(rsa.starts_with(b"-----BEGIN RSA PRIVATE KEY-----"));
        let k = read_key(&f.write("rsa.key", &rsa)).expect("pkcs1");
        assert!(k.pem.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
        assert!(matches!(k.der, PrivateKeyDer::Pkcs1(_)));
        assert_eq!(k.kind, KeyKind::Rsa { bits: 2048 });

        let ec = openssl(
            d,
            &["ecparam", "-genkey", "-name", "secp384r1", "-noout"],
            "ec.key",
        );
        assert!(ec.starts_with(b"-----BEGIN EC PRIVATE KEY-----"));
        let k = read_key(&f.write("ec.key", &ec)).expect("sec1");
        assert!(k.pem.starts_with("-----BEGIN EC PRIVATE KEY-----\n"));
        assert_eq!(
            k.kind,
            KeyKind::Ec {
                curve: "P-384".into()
            }
        );
    }

    #[test]
    fn encrypted_key_refused() {
        let f = fixture();
        let d = f.dir.path();
        let pkcs8 = openssl(
            d,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-aes-128-cbc",
                "-pass",
                "pass:secret",
            ],
            "enc8.key",
        );
        assert!(pkcs8.starts_with(b"-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        let legacy = openssl(
            d,
            &[
                "genrsa",
                "-traditional",
                "-aes128",
                "-passout",
                "pass:secret",
                "2048",
            ],
            "legacy.key",
        );
        assert!(String::from_utf8_lossy(&legacy).contains("Proc-Type: 4,ENCRYPTED"));
        let der = openssl(
            d,
            &[
                "pkcs8",
                "-topk8",
                "-in",
                d.join("enc8.key").to_str().expect("utf-8 path"),
                "-passin",
                "pass:secret",
                "-v2",
                "aes-256-cbc",
                "-passout",
                "pass:other",
                "-outform",
                "DER",
            ],
            "enc8.der",
        );

        for (name, bytes) in [("a.key", &pkcs8), ("b.key", &legacy), ("c.der", &der)] {
            let path = f.write(name, bytes);
            let err = read_key(&path).expect_err("encrypted key must be refused");
            assert!(
                matches!(err, BundleError::EncryptedKey { .. }),
                "{name}: {err}"
            );
            assert!(err.to_string().contains(name));
        }
    }

    #[test]
    fn weak_rsa_key_is_called_weak_in_every_encoding() {
        let f = fixture();
        let d = f.dir.path();
        let pkcs8 = openssl(
            d,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:1024",
            ],
            "w8.key",
        );
        assert!(pkcs8.starts_with(b"-----BEGIN PRIVATE KEY-----"));
        let pkcs1 = openssl(d, &["genrsa", "-traditional", "1024"], "w1.key");
        assert!(pkcs1.starts_with(b"-----BEGIN RSA PRIVATE KEY-----"));
        let der = openssl(
            d,
            &[
                "pkey",
                "-in",
                d.join("w8.key").to_str().expect("utf-8 path"),
                "-outform",
                "DER",
            ],
            "w8.der",
        );
        for (name, bytes) in [("a.key", &pkcs8), ("b.key", &pkcs1), ("c.der", &der)] {
            let err = read_key(&f.write(name, bytes)).expect_err("weak key");
            assert!(
                matches!(err, BundleError::WeakKey { bits: 1024, .. }),
                "{name}: {err}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains("1024-bit RSA key") && msg.contains("too weak"),
                "{msg}"
            );
            assert!(msg.contains(name), "{msg}");
        }
    }

    #[test]
    fn der_reader_refuses_short_and_odd_lengths() {
        assert_eq!(
            der_expect(&[0x02, 0x01, 0x05], 0x02),
            Some((&[5u8][..], &[][..]))
        );
        assert_eq!(der_expect(&[0x02, 0x02, 0x05], 0x02), None, "content cut");
        assert_eq!(der_expect(&[0x02], 0x02), None, "no length");
        assert_eq!(der_expect(&[0x30, 0x80, 0x00], 0x30), None, "indefinite");
        assert_eq!(
            der_expect(&[0x30, 0x85, 1, 1, 1, 1, 1], 0x30),
            None,
            "5 length bytes"
        );
        assert_eq!(
            der_expect(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff], 0x30),
            None
        );
        assert_eq!(der_expect(&[0x04, 0x00], 0x02), None, "other tag");
        let long = [&[0x04, 0x81, 0x80][..], &[7u8; 0x80][..]].concat();
        assert_eq!(der_expect(&long, 0x04).map(|(c, _)| c.len()), Some(0x80));
    }

    #[test]
    fn parse_bytes_entry_points_match_the_file_readers() {
        let f = fixture();
        let name = Path::new("bytes.pem");
        let certs = parse_certs_bytes(name, f.leaf.to_pem().as_bytes()).expect("certs");
        assert_eq!(certs[0].sha256, f.leaf.sha256);
        let key = parse_key_bytes(name, f.key.serialize_pem().as_bytes()).expect("key");
        assert_eq!(key.spki_der, f.leaf.spki_der);
        assert!(matches!(
            parse_certs_bytes(name, b" \n"),
            Err(BundleError::Empty { .. })
        ));
        let big = vec![b'a'; MAX_FILE_BYTES as usize + 1];
        assert!(matches!(
            parse_key_bytes(name, &big),
            Err(BundleError::TooLarge { .. })
        ));
    }

    #[test]
    fn key_as_cert_refused() {
        let f = fixture();
        let pem_key = f.write("site.key", f.key.serialize_pem());
        let der_key = f.write("site.key.der", f.key.serialize_der());
        for path in [pem_key, der_key] {
            let err = load(&path, None, None).expect_err("key given as cert");
            assert!(matches!(err, BundleError::KeyInsteadOfCert { .. }), "{err}");
        }
    }

    #[test]
    fn cert_as_key_is_no_key() {
        let f = fixture();
        let cert = f.write("site.pem", f.leaf.to_pem());
        assert!(matches!(read_key(&cert), Err(BundleError::NoKey { .. })));
        let der = f.write("site.der", f.leaf.der.as_ref());
        assert!(matches!(read_key(&der), Err(BundleError::NoKey { .. })));
    }

    #[test]
    fn several_keys_refused() {
        let f = fixture();
        let two = f.write("two.key", f.key.serialize_pem() + &p256().serialize_pem());
        assert!(matches!(
            read_key(&two),
            Err(BundleError::SeveralKeys { count: 2, .. })
        ));
    }

    #[test]
    fn truncated_pem_refused() {
        let f = fixture();
        let full = f.leaf.to_pem() + &f.inter.to_pem();
        let cut = &full[..full.len() - 200];
        let path = f.write("cut.pem", cut);
        let err = read_certs(&path).expect_err("truncated");
        match &err {
            BundleError::Malformed { reason, .. } => {
                assert!(reason.contains("truncated"), "{reason}");
                assert!(reason.contains("#2"), "{reason}");
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn mangled_base64_refused() {
        let f = fixture();
        let pem_text = f.leaf.to_pem();
        // Corrupt one character inside the second base64 line.
        let mut lines: Vec<String> = pem_text.lines().map(str::to_owned).collect();
        lines[2].replace_range(10..11, "!");
        let path = f.write("mangled.pem", lines.join("\n"));
        let err = read_certs(&path).expect_err("mangled");
        assert!(
            matches!(&err, BundleError::Malformed { reason, .. } if reason.contains("base64")),
            "{err:?}"
        );

        // Valid base64 of the wrong bytes: the certificate itself is bad.
        let mut der = f.leaf.der.to_vec();
        der.truncate(der.len() / 2);
        let half = ::pem::encode(&::pem::Pem::new("CERTIFICATE", der));
        let err = read_certs(&f.write("half.pem", half)).expect_err("half a cert");
        assert!(
            matches!(&err, BundleError::Malformed { reason, .. } if reason.contains("certificate #1")),
            "{err:?}"
        );
    }

    #[test]
    fn truncated_pem_names_only_known_labels() {
        let f = fixture();
        let cut = &f.key.serialize_pem()[..100];
        let err = read_key(&f.write("cut.key", cut)).expect_err("truncated key");
        assert!(
            err.to_string()
                .contains("block #1 ('PRIVATE KEY') has no END line"),
            "{err}"
        );
        // Found by the bundle_key fuzzer: the BEGIN line's "label" is file
        // content and may be a damaged key's base64; it is not echoed.
        let b64 = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg";
        let text = format!("-----BEGIN {b64}-----\nAAAA\n");
        let err = read_key(&f.write("odd.key", &text)).expect_err("truncated");
        let msg = err.to_string();
        assert!(msg.contains("block #1 has no END line"), "{msg}");
        assert!(!msg.contains(b64), "{msg}");
    }

    #[test]
    fn corrupt_key_message_has_no_key_bytes() {
        let f = fixture();
        // Valid base64 and a PKCS#8 label, but bytes no key parser accepts.
        let body = vec![0x30, 0x03, 0x02, 0x01, 0x00];
        let text = ::pem::encode(&::pem::Pem::new("PRIVATE KEY", body));
        let b64 = text.lines().nth(1).expect("base64 line").to_owned();
        let err = read_key(&f.write("bad.key", &text)).expect_err("corrupt key");
        let msg = err.to_string();
        assert!(msg.contains("unsupported or corrupt private key"), "{msg}");
        assert!(!msg.contains(&b64), "{msg}");

        let good = read_key(&f.write("good.key", f.key.serialize_pem())).expect("key");
        let dbg = format!("{good:?}");
        assert!(dbg.contains("elided"), "{dbg}");
        assert!(!dbg.contains("BEGIN"), "{dbg}");
    }

    #[test]
    fn oversize_refused() {
        let f = fixture();
        let mut big = f.leaf.to_pem().into_bytes();
        big.resize(MAX_FILE_BYTES as usize + 1, b'\n');
        let path = f.write("big.pem", big);
        assert!(matches!(
            read_certs(&path),
            Err(BundleError::TooLarge { .. })
        ));
        assert!(matches!(read_key(&path), Err(BundleError::TooLarge { .. })));
    }

    #[test]
    fn empty_and_garbage_refused() {
        let f = fixture();
        let empty = f.write("empty.pem", "");
        assert!(matches!(read_certs(&empty), Err(BundleError::Empty { .. })));
        let blank = f.write("blank.pem", "\n  \n");
        assert!(matches!(read_certs(&blank), Err(BundleError::Empty { .. })));
        let garbage = f.write("garbage.pem", "hello, this is not a certificate\n");
        assert!(matches!(
            read_certs(&garbage),
            Err(BundleError::NoCertificate { .. })
        ));
        let der_garbage = f.write("garbage.der", [0x30, 0x03, 0x01, 0x01, 0xff]);
        assert!(matches!(
            read_certs(&der_garbage),
            Err(BundleError::Malformed { .. })
        ));
        let csr_only = f.write(
            "only.csr",
            "-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n",
        );
        assert!(matches!(
            read_certs(&csr_only),
            Err(BundleError::NoCertificate { .. })
        ));
        let missing = f.dir.path().join("missing.pem");
        assert!(matches!(
            read_certs(&missing),
            Err(BundleError::Read { .. })
        ));
    }
}
