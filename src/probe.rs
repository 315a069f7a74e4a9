//! The TLS probe: fresh handshakes against a live server that *record* the
//! served chain whatever it is (expired, self-signed, untrusted), then judge
//! trust separately; and the wait-until-served loop that turns "the server
//! was reloaded" into "the server serves this leaf" (DESIGN.md step 7).
//!
//! This module owns:
//! - [`Target`]: one endpoint (`sni@host:port`) and its parsing;
//! - [`Prober`]: the shared rustls client config (ring provider, resumption
//!   off, a verifier that accepts any chain but still checks the handshake
//!   signatures) plus the trust anchors the verdict is judged against;
//!   [`Prober::peek`], the same facts from a handshake stopped at the
//!   server's signature (a look at what is served, never a proof);
//! - [`wait_until_served`]: N consecutive matching fresh handshakes per
//!   target, with backoff, within a deadline;
//! - [`probe_each`] / [`peek_each`]: bounded-concurrency looks at many
//!   targets on one engine (one current-thread runtime), results in input
//!   order; [`crate::engines`] runs one such engine per core;
//! - [`runtime`] / [`block_on`]: the current-thread runtime the probe engine
//!   runs on.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{ClientConfig, DigitallySignedStruct, ProtocolVersion, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cert::CertInfo;
use crate::par::lock;
use crate::trust::TrustStore;

/// Why a probe or a wait failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The target text is malformed, or its host does not resolve.
    #[error("{target}: cannot resolve or parse the address: {reason}")]
    Address { target: String, reason: String },
    /// No TCP connection to any resolved address (refused, unreachable...).
    #[error("{target}: TCP connect failed: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    /// TCP connected but the TLS handshake failed (alert, bad signature, EOF...).
    #[error("{target}: TLS handshake failed: {reason}")]
    Handshake { target: String, reason: String },
    /// Connect + handshake did not finish within the probe timeout (or the
    /// wait deadline).
    #[error("{target}: no answer within {timeout:?}")]
    Timeout { target: String, timeout: Duration },
    /// The handshake finished without a server certificate.
    #[error("{target}: the server sent no certificate")]
    NoCertificate { target: String },
    /// A served certificate is not a readable X.509 certificate.
    #[error("{target}: the served certificate cannot be parsed: {reason}")]
    BadCertificate { target: String, reason: String },
    /// The CA file given for the trust judgement cannot be read or holds no certificate.
    #[error("{path}: cannot load CA file: {reason}")]
    CaFile { path: String, reason: String },
    /// The TLS client configuration cannot be built (a provider without
    /// TLS 1.2/1.3 support; not expected with ring).
    #[error("cannot build the TLS client configuration: {reason}")]
    Config { reason: String },
    /// The probe task was cancelled before it finished (runtime shutting down).
    #[error("{target}: the probe was cancelled")]
    Cancelled { target: String },
}

/// One endpoint to probe: where to connect and which SNI name to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port`, `[v6]:port` or `ip:port`.
    pub addr: String,
    /// Server name sent in SNI and used for the trust judgement.
    pub sni: String,
}

impl Target {
    /// Parse `sni@host:port` or `host:port` (then SNI = `default_sni`, or
    /// the host when `default_sni` is None).
    pub fn parse(s: &str, default_sni: Option<&str>) -> Result<Target, ProbeError> {
        let bad = |reason: &str| ProbeError::Address {
            target: s.to_string(),
            reason: reason.to_string(),
        };
        let text = s.trim();
        let (sni, addr) = match text.split_once('@') {
            Some((sni, addr)) => {
                if sni.is_empty() {
                    return Err(bad("empty SNI name before '@'"));
                }
                (Some(sni), addr)
            }
            None => (None, text),
        };
        let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("missing ']' after an IPv6 address"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| bad("missing ':PORT' after the address"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address between '[' and ']'"));
            }
            (host, port)
        } else {
            let (host, port) = addr
                .rsplit_once(':')
                .ok_or_else(|| bad("missing ':PORT' (expected host:port)"))?;
            if host.contains(':') {
                // A bare IPv6 address is ambiguous ("::1:443"): demand brackets.
                return Err(bad("an IPv6 address needs brackets: [addr]:port"));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        match port.parse::<u16>() {
            Ok(0) => return Err(bad("port 0 cannot be connected to")),
            Ok(_) => {}
            Err(_) => return Err(bad("the port is not a number in 1..65535")),
        }
        let sni = sni.or(default_sni).unwrap_or(host);
        let target = Target {
            addr: addr.to_string(),
            sni: sni.to_string(),
        };
        // Refuse an SNI rustls cannot send now, at config time, not at probe time.
        server_name(&target)?;
        Ok(target)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.sni, self.addr)
    }
}

/// What one handshake saw.
#[derive(Debug, Clone)]
pub struct Served {
    pub target: Target,
    /// The served leaf.
    pub leaf: CertInfo,
    /// Every certificate the server sent, leaf first.
    pub chain: Vec<CertInfo>,
    /// The served chain builds a path to a trust anchor and is valid for the SNI name now.
    pub trusted: bool,
    /// Why it is not trusted (None when trusted).
    pub trust_error: Option<String>,
    /// The served chain reaches a root on its own (false: an intermediate
    /// is missing, which mobile and API clients do not forgive).
    pub chain_complete: bool,
    /// The leaf is valid for the SNI name (RFC 6125).
    pub names_ok: bool,
    /// "TLSv1.3" / "TLSv1.2".
    pub protocol: String,
}

impl Served {
    /// The facts of this handshake as one JSON object (the `probe --json`
    /// output and the elements of `status --probe --json`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.row(None)).unwrap_or_default()
    }

    /// [`Served::to_json`] with the `target` key, printed as one line: a
    /// row of `probe --targets --json`, written straight from the fields
    /// (a map of 16 keys per row was most of its formatting cost).
    pub fn json_line(&self, target: &Target) -> String {
        serde_json::to_string(&self.row(Some(target.to_string()))).unwrap_or_default()
    }

    fn row(&self, target: Option<String>) -> Row<'_> {
        let leaf = &self.leaf;
        Row {
            chain_complete: self.chain_complete,
            chain_length: self.chain.len(),
            endpoint: &self.target.addr,
            issuer: &leaf.issuer,
            names: &leaf.names,
            names_ok: self.names_ok,
            not_after: crate::cert::rfc3339(leaf.not_after),
            not_before: crate::cert::rfc3339(leaf.not_before),
            protocol: &self.protocol,
            serial: &leaf.serial,
            sha256: &leaf.sha256,
            sni: &self.target.sni,
            subject: &leaf.subject,
            target,
            trust_error: self.trust_error.as_deref(),
            trusted: self.trusted,
        }
    }
}

/// The JSON contract of one probe (docs/DESIGN.md). The keys are in the
/// sorted order a `serde_json::Value` map prints them in, so a row written
/// from this struct and one printed from [`Served::to_json`] are the same
/// bytes. Only strings, bools and a number: serializing it cannot fail.
#[derive(serde::Serialize)]
struct Row<'a> {
    chain_complete: bool,
    chain_length: usize,
    endpoint: &'a str,
    issuer: &'a str,
    names: &'a [String],
    names_ok: bool,
    not_after: String,
    not_before: String,
    protocol: &'a str,
    serial: &'a str,
    sha256: &'a str,
    sni: &'a str,
    subject: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    trust_error: Option<&'a str>,
    trusted: bool,
}

/// Shared handshake machinery: one `Arc<ClientConfig>` with a recording
/// verifier, session resumption disabled (every probe is a full handshake),
/// and the trust anchors the verdict is judged against.
#[derive(Clone)]
pub struct Prober {
    inner: Arc<ProberInner>,
}

struct ProberInner {
    /// The one shared client config (the throughput measurement in
    /// DESIGN.md: building a config per probe costs real CPU);
    /// [`Prober::peek`] makes per-connection copies.
    config: Arc<ClientConfig>,
    /// The same, offering TLS 1.2 only: [`Prober::peek`]'s first try.
    config_tls12: Arc<ClientConfig>,
    /// The addresses (`host:port`) that refused a peek's TLS 1.2: peeked
    /// at with both versions from then on.
    refuses_tls12: std::sync::Mutex<HashSet<String>>,
    /// The provider's signature algorithms (its verifiers).
    algorithms: WebPkiSupportedAlgorithms,
    /// The trust anchors the verdict is judged against.
    trust: TrustStore,
    timeout: Duration,
    /// The key type whose signature schemes it offers.
    family: KeyFamily,
    /// How a connection ends ([`Ending`]).
    ending: Ending,
}

/// How a probe's connection ends once the client has judged the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Nothing more is sent (no client Finished on TLS 1.3) and the
    /// connection is reset: the cheapest for both sides; nginx and apache
    /// log it only at `info`.
    Abrupt,
    /// The client's side of the handshake is sent to the end and the
    /// connection closed with a FIN, as a browser that leaves without a
    /// request would. For servers that log every connection that ends
    /// inside the handshake as a failure: HAProxy writes "SSL handshake
    /// failure" for each abrupt one (and for some resets that overtake
    /// the client's Finished), which the agent's passes would turn into
    /// thousands of lines. Its peek is a full probe too.
    Polite,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("timeout", &self.inner.timeout)
            .field("trust", &self.inner.trust)
            .finish_non_exhaustive()
    }
}

impl Prober {
    /// Trust anchors: only the PEM certificates in `ca_file` when given,
    /// else Mozilla's roots and the system's ([`TrustStore::public`]).
    pub fn new(ca_file: Option<&Path>, timeout: Duration) -> Result<Prober, ProbeError> {
        let trust = match ca_file {
            Some(path) => TrustStore::only(path),
            None => TrustStore::public(&[]),
        }
        .map_err(|e| ProbeError::CaFile {
            path: ca_file.map(|p| p.display().to_string()).unwrap_or_default(),
            reason: e.to_string(),
        })?;
        Prober::with_trust(trust, timeout)
    }

    /// A prober judging trust against `trust`.
    pub fn with_trust(trust: TrustStore, timeout: Duration) -> Result<Prober, ProbeError> {
        Prober::build(trust, timeout, KeyFamily::Any, Ending::Abrupt)
    }

    /// The same prober, ending its connections as `ending` says.
    pub fn with_ending(&self, ending: Ending) -> Result<Prober, ProbeError> {
        let i = &self.inner;
        Prober::build(i.trust.clone(), i.timeout, i.family, ending)
    }

    /// The same prober, but offering only the signature schemes (and TLS 1.2
    /// suites) of `family`: a server with an RSA and an ECDSA certificate on
    /// one vhost must then show the leaf of that family.
    pub fn for_key_family(&self, family: KeyFamily) -> Result<Prober, ProbeError> {
        let i = &self.inner;
        Prober::build(i.trust.clone(), i.timeout, family, i.ending)
    }

    fn build(
        trust: TrustStore,
        timeout: Duration,
        family: KeyFamily,
        ending: Ending,
    ) -> Result<Prober, ProbeError> {
        // The provider is passed explicitly so the probe does not depend on a
        // process-wide default having been installed (tests, library users).
        let mut provider = rustls::crypto::ring::default_provider();
        if family != KeyFamily::Any {
            provider.cipher_suites.retain(|cs| match cs {
                rustls::SupportedCipherSuite::Tls13(_) => true,
                // A TLS 1.2 suite fixes the certificate's key type (its
                // `sign` list names that type's schemes, plus Ed25519 for
                // the ECDSA suites).
                rustls::SupportedCipherSuite::Tls12(s) => {
                    s.sign.iter().any(|scheme| family.allows(*scheme))
                }
            });
        }
        // Browsers' order: AES-128 with SHA-256 first. A probe carries no
        // data, so the bulk cipher does not matter, but SHA-384's transcript
        // hash and key schedule cost both sides CPU (no SHA-NI for SHA-512):
        // measured ~5% of a bulk probe on each side (docs/performance.md).
        provider.cipher_suites.sort_by_key(|cs| {
            let common = match cs {
                rustls::SupportedCipherSuite::Tls13(s) => &s.common,
                rustls::SupportedCipherSuite::Tls12(s) => &s.common,
            };
            common.hash_provider.algorithm() != rustls::crypto::hash::HashAlgorithm::SHA256
        });
        let provider = Arc::new(provider);

        let algorithms = provider.signature_verification_algorithms;
        let recorder = Arc::new(RecordingVerifier { algorithms, family });
        // Safe default versions = TLS 1.3 and 1.2 (the `tls12` feature is on),
        // and the provider's default kx groups: X25519-only fails against
        // P-256 servers on TLS 1.2 (DESIGN.md, probe throughput).
        let config = build_client_config(&provider, recorder.clone(), rustls::DEFAULT_VERSIONS)?;
        let config_tls12 = build_client_config(&provider, recorder, &[&rustls::version::TLS12])?;

        Ok(Prober {
            inner: Arc::new(ProberInner {
                config,
                config_tls12,
                refuses_tls12: std::sync::Mutex::default(),
                algorithms,
                trust,
                timeout,
                family,
                ending,
            }),
        })
    }

    /// The rustls config of its handshakes: for `examples/bare_probe`,
    /// which makes the same handshakes with nothing after them.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.inner.config.clone()
    }

    /// The key type whose signature schemes this prober offers.
    pub fn key_family(&self) -> KeyFamily {
        self.inner.family
    }

    /// The anchors trust is judged against.
    pub fn trust(&self) -> &TrustStore {
        &self.inner.trust
    }

    /// How its connections end.
    pub fn ending(&self) -> Ending {
        self.inner.ending
    }

    /// The per-probe bound on connect + handshake.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// One fresh TCP connect + TLS handshake (connect and handshake bounded
    /// by the timeout), complete on the client's side: the chain, the
    /// server's signature and its Finished are checked ([`crate::handshake`]).
    pub async fn probe(&self, target: &Target) -> Result<Served, ProbeError> {
        let server_name = server_name(target)?;
        let completed = self
            .connect(&self.inner.config, target, server_name.clone())
            .await??;
        let (certs, protocol) = completed.shown();
        // The connection ends here, before the chain is judged.
        drop(completed);
        self.served(target, &server_name, &certs, protocol)
    }

    /// What `target` serves, without proving that the server holds the
    /// key: the handshake stops where the client would check the server's
    /// signature (TLS 1.2: ServerKeyExchange, before the key agreement;
    /// TLS 1.3: CertificateVerify). It offers TLS 1.2 alone first, then
    /// both versions when the server refuses that. The chain and its trust
    /// verdict are those of [`Prober::probe`]; the protocol is the one the
    /// peek spoke. On TLS 1.2 the client does no crypto and the server
    /// only its key share and signature: against nginx, half the CPU of a
    /// full handshake on both sides together and 60 % of a TLS 1.3 peek
    /// (docs/performance.md). For a look at what is served (the state
    /// before a change), never for a proof that a change is served.
    pub async fn peek(&self, target: &Target) -> Result<Served, ProbeError> {
        if self.inner.ending == Ending::Polite {
            return self.probe(target).await;
        }
        let server_name = server_name(target)?;
        // TLS 1.2 first: its certificate comes in the clear, before any key
        // agreement, so the client does no crypto at all and the server
        // only its key share and signature (TLS 1.3 adds a key agreement
        // and the key schedule on both sides). A server that refuses TLS
        // 1.2 refuses it at its ClientHello, before any crypto: then both
        // versions are offered, as a probe does.
        let both = || self.peek_with(&self.inner.config, target, &server_name);
        let shown = if lock(&self.inner.refuses_tls12).contains(&target.addr) {
            both().await?
        } else {
            match self
                .peek_with(&self.inner.config_tls12, target, &server_name)
                .await
            {
                Err(ProbeError::Handshake { .. }) => {
                    lock(&self.inner.refuses_tls12).insert(target.addr.clone());
                    both().await?
                }
                shown => shown?,
            }
        };
        self.served(target, &server_name, &shown.0, shown.1)
    }

    /// The chain and protocol a peek with `base`'s versions is shown.
    async fn peek_with(
        &self,
        base: &ClientConfig,
        target: &Target,
        server_name: &ServerName<'static>,
    ) -> Result<(Vec<CertificateDer<'static>>, Option<ProtocolVersion>), ProbeError> {
        let seen = Arc::new(std::sync::Mutex::new(Peeked::default()));
        let mut config = base.clone();
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(PeekingVerifier {
                algorithms: self.inner.algorithms,
                family: self.inner.family,
                seen: seen.clone(),
            }));
        match self
            .connect(&Arc::new(config), target, server_name.clone())
            .await?
        {
            // No signature to check (a TLS 1.2 key exchange without one):
            // the handshake went through.
            Ok(completed) => Ok(completed.shown()),
            Err(e) => {
                let mut peeked = lock(&seen);
                match (peeked.protocol, peeked.certs.is_empty()) {
                    (Some(p), false) => Ok((std::mem::take(&mut peeked.certs), Some(p))),
                    // Stopped anywhere else: a real failure.
                    _ => Err(e),
                }
            }
        }
    }

    /// The facts of a handshake with `target` that showed `certs`.
    fn served(
        &self,
        target: &Target,
        server_name: &ServerName<'static>,
        certs: &[CertificateDer<'static>],
        protocol: Option<ProtocolVersion>,
    ) -> Result<Served, ProbeError> {
        let protocol = match protocol {
            Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(other) => format!("{other:?}"),
            None => "unknown".to_string(),
        };
        let (leaf_der, intermediates) = certs.split_first().ok_or(ProbeError::NoCertificate {
            target: target.to_string(),
        })?;
        let mut chain = Vec::with_capacity(certs.len());
        for (i, der) in certs.iter().enumerate() {
            let info = CertInfo::from_der(der).map_err(|e| ProbeError::BadCertificate {
                target: target.to_string(),
                reason: if i == 0 {
                    e.to_string()
                } else {
                    format!("chain certificate {}: {e}", i + 1)
                },
            })?;
            chain.push(info);
        }
        let leaf = chain[0].clone();

        let verdict = self.inner.trust.judge_der(
            leaf_der,
            intermediates,
            server_name,
            &chain,
            UnixTime::now(),
        );
        let names_ok = chain[0].covers(target.sni.trim_start_matches('[').trim_end_matches(']'));
        Ok(Served {
            target: target.clone(),
            leaf,
            chain,
            trusted: verdict.trusted,
            trust_error: verdict.error,
            chain_complete: verdict.chain_complete,
            names_ok,
            protocol,
        })
    }

    /// [`Prober::handshake`] bounded by the timeout
    /// (the outer error); the inner one is the handshake's own.
    async fn connect(
        &self,
        config: &Arc<ClientConfig>,
        target: &Target,
        server_name: ServerName<'static>,
    ) -> Result<Result<Completed, ProbeError>, ProbeError> {
        let timeout = self.inner.timeout;
        tokio::time::timeout(timeout, self.handshake(config, target, server_name))
            .await
            .map_err(|_| ProbeError::Timeout {
                target: target.to_string(),
                timeout,
            })
    }

    /// Resolve, connect to the first address that answers, handshake
    /// with `config`.
    async fn handshake(
        &self,
        config: &Arc<ClientConfig>,
        target: &Target,
        server_name: ServerName<'static>,
    ) -> Result<Completed, ProbeError> {
        let addrs = tokio::net::lookup_host(target.addr.as_str())
            .await
            .map_err(|e| ProbeError::Address {
                target: target.to_string(),
                reason: e.to_string(),
            })?;
        let mut last_err = None;
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let tcp = match (tcp, last_err) {
            (Some(s), _) => s,
            (None, Some(e)) => {
                return Err(ProbeError::Connect {
                    target: target.to_string(),
                    source: e,
                });
            }
            (None, None) => {
                return Err(ProbeError::Address {
                    target: target.to_string(),
                    reason: "the name resolves to no address".to_string(),
                });
            }
        };
        // The handshake is a few small flights: do not let Nagle hold them.
        let _ = tcp.set_nodelay(true);
        let failed = |reason: String| ProbeError::Handshake {
            target: target.to_string(),
            reason,
        };
        let mut conn = rustls::ClientConnection::new(config.clone(), server_name)
            .map_err(|e| failed(e.to_string()))?;
        let polite = self.inner.ending == Ending::Polite;
        crate::handshake::complete(&mut conn, &tcp, polite)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(Completed { tcp, conn, polite })
    }
}

/// A connection whose handshake is complete on the client's side. Dropping
/// it ends the connection as the prober's [`Ending`] says.
struct Completed {
    tcp: TcpStream,
    conn: rustls::ClientConnection,
    /// [`Ending::Polite`]: closed with a FIN, not reset.
    polite: bool,
}

impl Completed {
    /// The chain the handshake showed, and its protocol.
    fn shown(&self) -> (Vec<CertificateDer<'static>>, Option<ProtocolVersion>) {
        let conn = &self.conn;
        let certs = conn
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
            .unwrap_or_default();
        (certs, conn.protocol_version())
    }
}

impl Drop for Completed {
    fn drop(&mut self) {
        // Abrupt: a reset (no close_notify, no FIN exchange). The polite
        // close ended in a reset on 959 of 1000 handshakes with nginx
        // anyway (nstat: its session tickets and close_notify reach a
        // socket we have closed); this one saves both sides the last
        // flights: 30 % fewer segments, ~6 % less CPU on each side, ~7 %
        // faster (docs/performance.md).
        if !self.polite {
            let _ = self.tcp.set_zero_linger();
        }
    }
}

/// A probe's client config: `versions`, verified by `verifier`, and every
/// handshake a fresh full one (a resumed session would show the
/// certificate of the session, not of the server as it is now).
fn build_client_config(
    provider: &Arc<rustls::crypto::CryptoProvider>,
    verifier: Arc<RecordingVerifier>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<ClientConfig>, ProbeError> {
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| ProbeError::Config {
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The SNI name as rustls wants it: an IP text becomes `ServerName::IpAddress`
/// (no SNI is sent, the verdict checks IP SANs), anything else must be a DNS name.
fn server_name(target: &Target) -> Result<ServerName<'static>, ProbeError> {
    let sni = target.sni.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = sni.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(sni.to_string()).map_err(|_| ProbeError::Address {
        target: target.to_string(),
        reason: format!("{:?} is not a valid DNS name for SNI", target.sni),
    })
}

/// Accepts any certificate chain so that expired, self-signed or otherwise
/// untrusted chains are *recorded* rather than aborting the handshake; the
/// trust verdict is judged afterwards by [`Prober::judge`]. It still checks
/// the handshake signatures, so a completed handshake proves the server holds
/// the private key of the leaf it presented.
#[derive(Debug)]
struct RecordingVerifier {
    algorithms: WebPkiSupportedAlgorithms,
    /// The schemes offered: the server picks its certificate by them.
    family: KeyFamily,
}

/// What a [`PeekingVerifier`] saw of one handshake.
#[derive(Debug, Default)]
struct Peeked {
    certs: Vec<CertificateDer<'static>>,
    protocol: Option<ProtocolVersion>,
}

/// The verifier of one [`Prober::peek`]: records the chain, then ends the
/// handshake at the server's signature, where the chain is known and the
/// rest would only prove the key.
#[derive(Debug)]
struct PeekingVerifier {
    algorithms: WebPkiSupportedAlgorithms,
    family: KeyFamily,
    seen: Arc<std::sync::Mutex<Peeked>>,
}

impl PeekingVerifier {
    fn stop(&self, protocol: ProtocolVersion) -> Result<HandshakeSignatureValid, rustls::Error> {
        lock(&self.seen).protocol = Some(protocol);
        Err(rustls::Error::General("the peek has seen the chain".into()))
    }
}

impl ServerCertVerifier for PeekingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut seen = lock(&self.seen);
        seen.certs = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.stop(ProtocolVersion::TLSv1_2)
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.stop(ProtocolVersion::TLSv1_3)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.family.schemes(&self.algorithms)
    }
}

/// Which certificates a probe asks for, by the signature schemes it offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Any,
    Ecdsa,
    Rsa,
}

impl KeyFamily {
    /// The family of a certificate's key.
    pub fn of(kind: &crate::cert::KeyKind) -> KeyFamily {
        match kind {
            crate::cert::KeyKind::Rsa { .. } => KeyFamily::Rsa,
            crate::cert::KeyKind::Ec { .. } => KeyFamily::Ecdsa,
            _ => KeyFamily::Any,
        }
    }

    /// The schemes of `algorithms` a client of this family offers: the
    /// server picks its certificate by them.
    fn schemes(self, algorithms: &WebPkiSupportedAlgorithms) -> Vec<SignatureScheme> {
        let mut schemes = algorithms.supported_schemes();
        schemes.retain(|s| self.allows(*s));
        schemes
    }

    fn allows(self, scheme: SignatureScheme) -> bool {
        use SignatureScheme as S;
        match self {
            KeyFamily::Any => true,
            KeyFamily::Ecdsa => matches!(
                scheme,
                S::ECDSA_NISTP256_SHA256 | S::ECDSA_NISTP384_SHA384 | S::ECDSA_NISTP521_SHA512
            ),
            KeyFamily::Rsa => matches!(
                scheme,
                S::RSA_PKCS1_SHA256
                    | S::RSA_PKCS1_SHA384
                    | S::RSA_PKCS1_SHA512
                    | S::RSA_PSS_SHA256
                    | S::RSA_PSS_SHA384
                    | S::RSA_PSS_SHA512
            ),
        }
    }
}

/// One prober per key family, built once from a base prober: how a batch
/// or a host-wide repair probes each site with the key type it asks for
/// ([`crate::config::Site::key_family`]) without building a `ClientConfig`
/// per site.
#[derive(Clone, Debug)]
pub struct Probers {
    any: Prober,
    ecdsa: Prober,
    rsa: Prober,
}

impl Probers {
    pub fn new(base: &Prober) -> Result<Probers, ProbeError> {
        let of = |family| {
            if base.key_family() == family {
                Ok(base.clone())
            } else {
                base.for_key_family(family)
            }
        };
        Ok(Probers {
            any: of(KeyFamily::Any)?,
            ecdsa: of(KeyFamily::Ecdsa)?,
            rsa: of(KeyFamily::Rsa)?,
        })
    }

    /// The prober offering `family`'s signature schemes.
    pub fn of(&self, family: KeyFamily) -> &Prober {
        match family {
            KeyFamily::Any => &self.any,
            KeyFamily::Ecdsa => &self.ecdsa,
            KeyFamily::Rsa => &self.rsa,
        }
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.family.schemes(&self.algorithms)
    }
}

/// The outcome of waiting for every target to serve one leaf.
#[derive(Debug)]
pub struct WaitOutcome {
    /// True when every target served `expected` on `consecutive` fresh
    /// handshakes in a row before the deadline.
    pub ok: bool,
    /// The last observation per target (in the order of `targets`).
    pub last: Vec<Result<Served, ProbeError>>,
    /// Handshakes made in all.
    pub handshakes: usize,
}

/// First pause after a handshake that did not show the expected leaf. Short:
/// right after a reload the new leaf usually appears within tens of ms.
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
/// Ceiling of the doubling backoff while the expected leaf is not served:
/// a big server may take ~1.5 s to answer with the new config (DESIGN.md),
/// and 250 ms keeps the wasted time after that small without hammering it.
const BACKOFF_MAX: Duration = Duration::from_millis(250);
/// Pause between the confirming handshakes of a matching run. After a
/// graceful nginx reload old workers keep answering for ~100 ms after the
/// first new answer (old and new alternate), so a run of 3 must span more
/// than that to mean anything: 2 × 50 ms plus the handshakes themselves.
const CONFIRM_SPACING: Duration = Duration::from_millis(50);

/// Probe every target until each one has served the leaf whose SHA-256 is
/// `expected` on `consecutive` fresh connections in a row, or until
/// `deadline`. Polls with short backoff (no fixed sleeps) and spaces the
/// confirming handshakes so a run spans the time old workers may linger.
///
/// `expected` may be upper- or lowercase hex, with or without `:`. A
/// `consecutive` of 0 counts as 1, and an empty `targets` is never ok. A
/// target gives up early when its next handshake could not start before the
/// deadline; a handshake still running at the deadline is cut by it.
pub async fn wait_until_served(
    prober: &Prober,
    targets: &[Target],
    expected: &str,
    consecutive: u32,
    deadline: Duration,
) -> WaitOutcome {
    let until = Instant::now() + deadline;
    let expected: Arc<str> = normalize_sha256(expected).into();
    // "Verified" means seen: zero consecutive handshakes would prove nothing.
    let consecutive = consecutive.max(1);

    let mut tasks = JoinSet::new();
    for (i, target) in targets.iter().enumerate() {
        let prober = prober.clone();
        let target = target.clone();
        let expected = expected.clone();
        tasks.spawn(async move {
            let w = wait_one(&prober, &target, &expected, consecutive, until, deadline).await;
            (i, w)
        });
    }

    let mut slots: Vec<Option<(bool, Result<Served, ProbeError>)>> =
        targets.iter().map(|_| None).collect();
    let mut handshakes = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, w)) => {
                handshakes += w.handshakes;
                slots[i] = Some((w.done, w.last));
            }
            // A panic in a probe is a bug: let it surface as if not spawned.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: the runtime is shutting down; the slot stays empty.
            Err(_) => {}
        }
    }

    // No target proves nothing: "verified" means a leaf was seen (invariant 5).
    let mut ok = !targets.is_empty();
    let mut last = Vec::with_capacity(targets.len());
    for (slot, target) in slots.into_iter().zip(targets) {
        match slot {
            Some((done, obs)) => {
                ok &= done;
                last.push(obs);
            }
            None => {
                ok = false;
                last.push(Err(ProbeError::Cancelled {
                    target: target.to_string(),
                }));
            }
        }
    }
    WaitOutcome {
        ok,
        last,
        handshakes,
    }
}

/// What waiting on one target ended with.
struct OneWait {
    done: bool,
    last: Result<Served, ProbeError>,
    handshakes: usize,
}

/// The wait loop of one target (see [`wait_until_served`]).
async fn wait_one(
    prober: &Prober,
    target: &Target,
    expected: &str,
    consecutive: u32,
    until: Instant,
    deadline: Duration,
) -> OneWait {
    let mut run = 0u32;
    let mut backoff = BACKOFF_FIRST;
    let mut handshakes = 0usize;
    let mut last = None;
    loop {
        // A probe still running at the deadline is cut by it too.
        let Ok(result) = tokio::time::timeout_at(until, prober.probe(target)).await else {
            break;
        };
        handshakes += 1;
        let matches = result
            .as_ref()
            .is_ok_and(|s| s.leaf.sha256.eq_ignore_ascii_case(expected));
        let pause = if matches {
            run += 1;
            backoff = BACKOFF_FIRST;
            if run >= consecutive {
                return OneWait {
                    done: true,
                    last: result,
                    handshakes,
                };
            }
            CONFIRM_SPACING
        } else {
            run = 0;
            let pause = backoff;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            pause
        };
        last = Some(result);
        if Instant::now() + pause >= until {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    OneWait {
        done: false,
        // When the deadline cut the very first probe there is no observation:
        // say so as a timeout against the whole deadline.
        last: last.unwrap_or_else(|| no_observation(target, deadline)),
        handshakes,
    }
}

/// The observation reported when the deadline passed before any handshake ended.
fn no_observation(target: &Target, deadline: Duration) -> Result<Served, ProbeError> {
    Err(ProbeError::Timeout {
        target: target.to_string(),
        timeout: deadline,
    })
}

/// SHA-256 as compared: lowercase hex without `:` separators (accepts the
/// `openssl x509 -fingerprint` form too).
fn normalize_sha256(s: &str) -> String {
    s.trim()
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Probe every job once on this thread's runtime, with at most
/// `concurrency` handshakes in flight; the results in the order of `jobs`.
/// One engine: what the wait runs beside its other work ([`crate::engines`]
/// spreads a bulk look over the cores).
pub async fn probe_each(
    jobs: &[(Prober, Target)],
    concurrency: usize,
) -> Vec<Result<Served, ProbeError>> {
    let job = |i: usize| (&jobs[i].0, &jobs[i].1);
    let done = probe_jobs(0..jobs.len(), concurrency, Look::Handshake, job, |_, r| r).await;
    in_order(jobs.len(), done, job, |_, r| r)
}

/// [`probe_each`] with [`Prober::peek`]: what every endpoint serves, with
/// no proof that it holds the key (the look before a change, which stays
/// on one engine: it runs at a low priority beside the config test).
pub async fn peek_each(
    jobs: &[(Prober, Target)],
    concurrency: usize,
) -> Vec<Result<Served, ProbeError>> {
    let job = |i: usize| (&jobs[i].0, &jobs[i].1);
    let done = probe_jobs(0..jobs.len(), concurrency, Look::Peek, job, |_, r| r).await;
    in_order(jobs.len(), done, job, |_, r| r)
}

/// How [`probe_jobs`] looks at a target.
#[derive(Clone, Copy)]
pub(crate) enum Look {
    /// [`Prober::probe`].
    Handshake,
    /// [`Prober::peek`].
    Peek,
}

/// The probes `job(i)` for each `i` that `pending` yields, at most
/// `concurrency` in flight: what `keep` makes of each result, with its
/// index, in the order they end. `pending` is pulled one index at a time,
/// as a slot frees, so engines sharing one source split the work by speed.
pub(crate) async fn probe_jobs<'a, R>(
    mut pending: impl Iterator<Item = usize>,
    concurrency: usize,
    look: Look,
    job: impl Fn(usize) -> (&'a Prober, &'a Target),
    mut keep: impl FnMut(usize, Result<Served, ProbeError>) -> R,
) -> Vec<(usize, R)> {
    let concurrency = concurrency.max(1);
    let mut done = Vec::new();
    // Polled in place, not spawned: a look borrows its prober and target,
    // and costs no task, no scheduler queue and no join notification.
    let mut in_flight = FuturesUnordered::new();

    // Keep the set filled up to `concurrency`: one finished, one started.
    loop {
        while in_flight.len() < concurrency {
            let Some(i) = pending.next() else {
                break;
            };
            let (prober, target) = job(i);
            in_flight.push(async move {
                let seen = match look {
                    Look::Handshake => prober.probe(target).await,
                    Look::Peek => prober.peek(target).await,
                };
                (i, seen)
            });
        }
        let Some((i, result)) = in_flight.next().await else {
            break;
        };
        done.push((i, keep(i, result)));
    }
    done
}

/// The `n` results of `done` in index order; an index `done` lacks (its
/// look never ended: cut short with the engine) is
/// [`ProbeError::Cancelled`], through `keep` like the rest.
pub(crate) fn in_order<'a, R>(
    n: usize,
    done: impl IntoIterator<Item = (usize, R)>,
    job: impl Fn(usize) -> (&'a Prober, &'a Target),
    keep: impl Fn(usize, Result<Served, ProbeError>) -> R,
) -> Vec<R> {
    let mut slots: Vec<Option<R>> = (0..n).map(|_| None).collect();
    for (i, r) in done {
        slots[i] = Some(r);
    }
    slots
        .into_iter()
        .enumerate()
        .map(|(i, slot)| {
            slot.unwrap_or_else(|| {
                let cancelled = Err(ProbeError::Cancelled {
                    target: job(i).1.to_string(),
                });
                keep(i, cancelled)
            })
        })
        .collect()
}

/// The runtime of the probe engine: current-thread, with IO and timers.
/// Measured 12–15 % faster and ~25 % less CPU than 2 workers on a shared
/// 2-core box (DESIGN.md).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Run a future to completion on a fresh current-thread runtime (the probe
/// engine is measured fastest that way on a shared 2-core box).
///
/// Panics only if the OS refuses the runtime its epoll/eventfd descriptors
/// (descriptor exhaustion), where nothing else could work either; callers
/// that want that as an error use [`runtime`].
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime()
        .expect("tokio runtime: the OS refused an epoll/eventfd descriptor")
        .block_on(f)
}

#[cfg(test)]
mod tests {
    //! Real in-process TLS servers on 127.0.0.1:0 (tokio-rustls acceptor,
    //! rcgen certificates made at test time).

    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        date_time_ymd,
    };
    use rustls::ServerConfig;
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    /// A test CA that can sign leaves.
    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        der: CertificateDer<'static>,
        pem: String,
    }

    impl Ca {
        fn new() -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params
                .distinguished_name
                .push(DnType::CommonName, "certswap test CA");
            let key = KeyPair::generate().expect("ca key");
            let cert = params.self_signed(&key).expect("ca cert");
            Ca {
                der: cert.der().clone(),
                pem: cert.pem(),
                issuer: Issuer::new(params, key),
            }
        }

        /// A leaf for `names`, valid from `from` to `until` (years), chain = [leaf, CA].
        fn leaf(&self, names: &[&str], from: i32, until: i32) -> Leaf {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = CertificateParams::new(names).expect("leaf params");
            params.not_before = date_time_ymd(from, 1, 1);
            params.not_after = date_time_ymd(until, 1, 1);
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
            Leaf {
                chain: vec![cert.der().clone(), self.der.clone()],
                key: key.serialize_der(),
            }
        }
    }

    /// A certificate chain and its PKCS#8 key, ready to serve.
    #[derive(Clone)]
    struct Leaf {
        chain: Vec<CertificateDer<'static>>,
        key: Vec<u8>,
    }

    impl Leaf {
        fn self_signed(names: &[&str]) -> Leaf {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let ck = rcgen::generate_simple_self_signed(names).expect("self-signed");
            Leaf {
                chain: vec![ck.cert.der().clone()],
                key: ck.signing_key.serialize_der(),
            }
        }

        fn sha256(&self) -> String {
            let digest = ring::digest::digest(&ring::digest::SHA256, &self.chain[0]);
            digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
        }

        fn config(&self, tls12_only: bool) -> Arc<ServerConfig> {
            if tls12_only {
                self.config_of(&[&rustls::version::TLS12])
            } else {
                self.config_of(rustls::DEFAULT_VERSIONS)
            }
        }

        fn config_tls13_only(&self) -> Arc<ServerConfig> {
            self.config_of(&[&rustls::version::TLS13])
        }

        fn config_of(
            &self,
            versions: &[&'static rustls::SupportedProtocolVersion],
        ) -> Arc<ServerConfig> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(versions)
                .expect("versions");
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()));
            Arc::new(
                builder
                    .with_no_client_auth()
                    .with_single_cert(self.chain.clone(), key)
                    .expect("server config"),
            )
        }
    }

    /// A TLS server on 127.0.0.1:0 that picks its config per connection by
    /// the number of handshakes accepted before; stopped on drop.
    struct TlsServer {
        addr: String,
        handshakes: Arc<AtomicUsize>,
        /// Handshakes the server completed / that ended either way.
        completed: Arc<AtomicUsize>,
        ended: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl TlsServer {
        async fn start(
            pick: impl Fn(usize) -> Arc<ServerConfig> + Send + Sync + 'static,
        ) -> TlsServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr").to_string();
            let handshakes = Arc::new(AtomicUsize::new(0));
            let completed = Arc::new(AtomicUsize::new(0));
            let ended = Arc::new(AtomicUsize::new(0));
            let count = handshakes.clone();
            let (done, over) = (completed.clone(), ended.clone());
            let task = tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let acceptor = TlsAcceptor::from(pick(n));
                    let (done, over) = (done.clone(), over.clone());
                    tokio::spawn(async move {
                        let accepted = acceptor.accept(tcp).await;
                        over.fetch_add(1, Ordering::SeqCst);
                        if let Ok(mut tls) = accepted {
                            done.fetch_add(1, Ordering::SeqCst);
                            let mut buf = [0u8; 64];
                            let _ = tls.read(&mut buf).await;
                        }
                    });
                }
            });
            TlsServer {
                addr,
                handshakes,
                completed,
                ended,
                task,
            }
        }

        async fn serving(leaf: &Leaf) -> TlsServer {
            let config = leaf.config(false);
            TlsServer::start(move |_| config.clone()).await
        }

        fn target(&self, sni: &str) -> Target {
            Target {
                addr: self.addr.clone(),
                sni: sni.to_string(),
            }
        }
    }

    impl Drop for TlsServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn prober_trusting(ca: &Ca) -> (Prober, tempfile::NamedTempFile) {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut file, ca.pem.as_bytes()).expect("write ca");
        let prober = Prober::new(Some(file.path()), Duration::from_secs(5)).expect("prober");
        (prober, file)
    }

    /// An address where nothing listens (bound, then released).
    async fn refused_addr() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        addr
    }

    #[test]
    fn target_parse_forms() {
        let t = Target::parse("www.example.com@10.0.0.1:443", Some("other")).expect("sni@");
        assert_eq!(t.addr, "10.0.0.1:443");
        assert_eq!(t.sni, "www.example.com");

        let t = Target::parse("127.0.0.1:8443", Some("www.example.com")).expect("default");
        assert_eq!(t.sni, "www.example.com");
        assert_eq!(t.addr, "127.0.0.1:8443");

        let t = Target::parse("example.org:443", None).expect("host");
        assert_eq!(t.sni, "example.org");

        let t = Target::parse("[::1]:443", None).expect("v6");
        assert_eq!(t.addr, "[::1]:443");
        assert_eq!(t.sni, "::1");

        let t = Target::parse("a.test@[::1]:443", None).expect("sni@v6");
        assert_eq!(t.sni, "a.test");
        assert_eq!(t.to_string(), "a.test@[::1]:443");
    }

    #[test]
    fn target_parse_errors() {
        for bad in [
            "example.org",
            "example.org:",
            "example.org:https",
            "example.org:70000",
            "example.org:0",
            ":443",
            "@example.org:443",
            "::1:443",
            "[::1]",
            "[::1:443",
            "[nothex]:443",
            "bad name@example.org:443",
        ] {
            match Target::parse(bad, None) {
                Err(ProbeError::Address { .. }) => {}
                other => panic!("{bad:?}: expected an Address error, got {other:?}"),
            }
        }
    }

    #[test]
    fn ca_file_errors() {
        let missing = Prober::new(
            Some(Path::new("/nonexistent/ca.pem")),
            Duration::from_secs(1),
        );
        assert!(matches!(missing, Err(ProbeError::CaFile { .. })));

        let mut empty = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut empty, b"not a pem\n").expect("write");
        let empty = Prober::new(Some(empty.path()), Duration::from_secs(1));
        assert!(matches!(empty, Err(ProbeError::CaFile { .. })));
    }

    #[tokio::test]
    async fn self_signed_is_recorded_and_untrusted() {
        let leaf = Leaf::self_signed(&["a.test"]);
        let server = TlsServer::serving(&leaf).await;
        let prober = Prober::new(None, Duration::from_secs(5)).expect("prober");

        let served = prober.probe(&server.target("a.test")).await.expect("probe");
        assert_eq!(served.leaf.sha256, leaf.sha256());
        assert_eq!(served.chain.len(), 1);
        assert_eq!(served.protocol, "TLSv1.3");
        assert!(!served.trusted);
        let why = served.trust_error.expect("a reason");
        assert!(
            why.contains("is self-signed and not in the trust store"),
            "{why}"
        );
    }

    #[tokio::test]
    async fn ca_signed_leaf_is_trusted_with_ca_file() {
        let ca = Ca::new();
        let leaf = ca.leaf(&["a.test"], 2020, 4000);
        let server = TlsServer::serving(&leaf).await;
        let (prober, _file) = prober_trusting(&ca);

        let served = prober.probe(&server.target("a.test")).await.expect("probe");
        assert!(served.trusted, "{:?}", served.trust_error);
        assert_eq!(served.trust_error, None);
        assert_eq!(served.chain.len(), 2);
        assert_eq!(served.leaf.sha256, leaf.sha256());

        // Same chain, wrong name: recorded, not trusted, and the reason says why.
        let served = prober.probe(&server.target("b.test")).await.expect("probe");
        assert!(!served.trusted);
        let why = served.trust_error.expect("a reason");
        assert!(why.contains("not valid for name"), "{why}");
    }

    #[tokio::test]
    async fn ip_target_is_judged_by_ip_san() {
        let ca = Ca::new();
        let leaf = ca.leaf(&["127.0.0.1"], 2020, 4000);
        let server = TlsServer::serving(&leaf).await;
        let (prober, _file) = prober_trusting(&ca);

        let target = Target::parse(&server.addr, None).expect("target");
        assert_eq!(target.sni, "127.0.0.1");
        let served = prober.probe(&target).await.expect("probe");
        assert!(served.trusted, "{:?}", served.trust_error);
    }

    #[tokio::test]
    async fn expired_leaf_is_recorded_and_untrusted() {
        let ca = Ca::new();
        let leaf = ca.leaf(&["a.test"], 2019, 2020);
        let server = TlsServer::serving(&leaf).await;
        let (prober, _file) = prober_trusting(&ca);

        let served = prober.probe(&server.target("a.test")).await.expect("probe");
        assert_eq!(served.leaf.sha256, leaf.sha256());
        assert!(!served.trusted);
        let why = served.trust_error.expect("a reason");
        assert!(why.contains("expired"), "{why}");
    }

    #[tokio::test]
    async fn a_peek_sees_what_a_handshake_sees() {
        let ca = Ca::new();
        let leaf = ca.leaf(&["a.test"], 2020, 4000);
        let (prober, _file) = prober_trusting(&ca);
        // The protocol aside (the peek asks for TLS 1.2 first, and falls
        // back to both versions on a server that refuses it).
        let facts = |s: &Served| {
            let mut json = s.to_json();
            json.as_object_mut().map(|o| o.remove("protocol"));
            json
        };
        // Connections: a probe and two peeks, then a probe of the other
        // name; a server refusing TLS 1.2 refuses only the first peek's try
        // (the prober remembers the address).
        let servers = [
            ("both versions", leaf.config(false), "TLSv1.2", 4),
            ("TLS 1.2 only", leaf.config(true), "TLSv1.2", 4),
            ("TLS 1.3 only", leaf.config_tls13_only(), "TLSv1.3", 5),
        ];
        for (what, config, protocol, connections) in servers {
            let server = TlsServer::start(move |_| config.clone()).await;
            let target = server.target("a.test");
            let full = prober.probe(&target).await.expect("probe");
            let peeked = prober.peek(&target).await.expect("peek");
            assert_eq!(facts(&peeked), facts(&full), "{what}");
            assert_eq!(peeked.protocol, protocol, "{what}");
            assert_eq!(peeked.chain.len(), 2);
            assert!(peeked.trusted, "{:?}", peeked.trust_error);
            // Wrong name: judged the same way.
            let other = server.target("b.test");
            let peeked = prober.peek(&other).await.expect("peek");
            assert_eq!(
                facts(&peeked),
                facts(&prober.probe(&other).await.expect("probe")),
                "{what}"
            );
            assert!(!peeked.names_ok, "{what}");
            assert_eq!(
                server.handshakes.load(Ordering::SeqCst),
                connections,
                "{what}"
            );
        }
    }

    #[tokio::test]
    async fn a_peek_of_a_refused_or_silent_port_fails_as_a_probe_does() {
        let prober = Prober::new(None, Duration::from_millis(300)).expect("prober");
        let refused = Target::parse(&refused_addr().await, Some("a.test")).expect("target");
        assert!(matches!(
            prober.peek(&refused).await,
            Err(ProbeError::Connect { .. })
        ));
        // Accepts TCP, never speaks TLS.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let _hold = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                kept.push(tcp);
            }
        });
        let silent = Target::parse(&addr, Some("a.test")).expect("target");
        assert!(matches!(
            prober.peek(&silent).await,
            Err(ProbeError::Timeout { .. })
        ));
    }

    #[tokio::test]
    async fn the_client_sends_nothing_once_it_has_judged_the_server() {
        let ca = Ca::new();
        let leaf = ca.leaf(&["a.test"], 2020, 4000);
        let (prober, _file) = prober_trusting(&ca);
        // TLS 1.3: chain, signature and Finished all come from the server
        // first; the client's Finished is never sent, so the server's side
        // never completes. TLS 1.2: the client's Finished comes first, and
        // the server completes. A polite ending sends the client's Finished on TLS 1.3 too.
        for (tls12, polite, completes) in [(false, false, 0), (true, false, 1), (false, true, 1)] {
            let config = leaf.config(tls12);
            let server = TlsServer::start(move |_| config.clone()).await;
            let tcp = TcpStream::connect(&server.addr).await.expect("connect");
            let name = ServerName::try_from("a.test").expect("name");
            let mut conn =
                rustls::ClientConnection::new(prober.inner.config.clone(), name).expect("client");
            crate::handshake::complete(&mut conn, &tcp, polite)
                .await
                .expect("handshake");
            assert!(!conn.is_handshaking());
            let shown = conn.peer_certificates().map(|c| c.len());
            assert_eq!(shown, Some(2), "the chain was seen");
            // The connection stays open while the server gets the chance
            // to complete: it does only if the client's Finished reached it.
            let mut done = 0;
            for _ in 0..50 {
                done = server.completed.load(Ordering::SeqCst);
                if done > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(done, completes, "TLS 1.2 only: {tls12}, polite: {polite}");
            assert_eq!(server.ended.load(Ordering::SeqCst), completes);
            drop(tcp);
        }
    }

    #[tokio::test]
    async fn tls12_only_server() {
        let leaf = Leaf::self_signed(&["a.test"]);
        let config = leaf.config(true);
        let server = TlsServer::start(move |_| config.clone()).await;
        let prober = Prober::new(None, Duration::from_secs(5)).expect("prober");

        let served = prober.probe(&server.target("a.test")).await.expect("probe");
        assert_eq!(served.protocol, "TLSv1.2");
        assert_eq!(served.leaf.sha256, leaf.sha256());
    }

    #[tokio::test]
    async fn refused_is_a_connect_error() {
        let prober = Prober::new(None, Duration::from_secs(5)).expect("prober");
        let target = Target::parse(&refused_addr().await, Some("a.test")).expect("target");
        match prober.probe(&target).await {
            Err(ProbeError::Connect { .. }) => {}
            other => panic!("expected Connect, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn silent_server_is_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        // Accepts TCP and holds the connections open without a word.
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        let timeout = Duration::from_millis(300);
        let prober = Prober::new(None, timeout).expect("prober");
        let target = Target::parse(&addr, Some("a.test")).expect("target");

        let started = std::time::Instant::now();
        match prober.probe(&target).await {
            Err(ProbeError::Timeout { timeout: t, .. }) => assert_eq!(t, timeout),
            other => panic!("expected Timeout, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        silent.abort();
    }

    #[tokio::test]
    async fn wait_ok_when_expected_leaf_is_served() {
        let leaf = Leaf::self_signed(&["a.test"]);
        let server = TlsServer::serving(&leaf).await;
        let prober = Prober::new(None, Duration::from_secs(5)).expect("prober");
        let targets = [server.target("a.test"), server.target("a.test")];

        let started = std::time::Instant::now();
        let out = wait_until_served(
            &prober,
            &targets,
            &leaf.sha256(),
            3,
            Duration::from_secs(10),
        )
        .await;
        assert!(out.ok);
        assert_eq!(out.handshakes, 6);
        assert_eq!(out.last.len(), 2);
        assert!(out.last.iter().all(|r| r.is_ok()));
        // Returns as soon as done: 2 spacings per target, run concurrently.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn wait_accepts_uppercase_and_colon_fingerprint() {
        let leaf = Leaf::self_signed(&["a.test"]);
        let server = TlsServer::serving(&leaf).await;
        let prober = Prober::new(None, Duration::from_secs(5)).expect("prober");
        let hex = leaf.sha256().to_uppercase();
        let colons: Vec<String> = hex
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        let out = wait_until_served(
            &prober,
            &[server.target("a.test")],
            &colons.join(":"),
            1,
            Duration::from_secs(5),
        )
        .await;
        assert!(out.ok);
    }

    #[tokio::test]
    async fn wait_not_ok_when_another_leaf_is_served() {
        let old = Leaf::self_signed(&["a.test"]);
        let new = Leaf::self_signed(&["a.test"]);
        let server = TlsServer::serving(&old).await;
        let prober = Prober::new(None, Duration::from_secs(5)).expect("prober");

        let started = std::time::Instant::now();
        let out = wait_until_served(
            &prober,
            &[server.target("a.test")],
            &new.sha256(),
            3,
            Duration::from_secs(1),
        )
        .await;
        let took = started.elapsed();
        assert!(!out.ok);
        assert!(out.handshakes >= 2, "{}", out.handshakes);
        assert!(took >= Duration::from_millis(700), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        let last = out.last[0].as_ref().expect("a handshake");
        assert_eq!(last.leaf.sha256, old.sha256());
    }

    #[tokio::test]
    async fn wait_without_targets_is_not_ok() {
        let prober = Prober::new(None, Duration::from_secs(1)).expect("prober");
        let out = wait_until_served(&prober, &[], &"0".repeat(64), 3, Duration::from_secs(1)).await;
        assert!(!out.ok);
        assert_eq!(out.handshakes, 0);
        assert!(out.last.is_empty());
    }

    #[tokio::test]
    async fn wait_follows_a_switch_to_the_new_leaf() {
        let old = Leaf::self_signed(&["a.test"]).config(false);
        let new_leaf = Leaf::self_signed(&["a.test"]);
        let new = new_leaf.config(false);
        // The first 4 handshakes see the old leaf (a reload still in progress).
        let server = TlsServer::start(move |n| if n < 4 { old.clone() } else { new.clone() }).await;
        let prober = Prober::new(None, Duration::from_secs(5)).expect("prober");

        let out = wait_until_served(
            &prober,
            &[server.target("a.test")],
            &new_leaf.sha256(),
            3,
            Duration::from_secs(10),
        )
        .await;
        assert!(out.ok);
        assert_eq!(out.handshakes, 7);
        assert_eq!(server.handshakes.load(Ordering::SeqCst), 7);
    }

    #[tokio::test]
    async fn wait_rejects_alternating_old_and_new() {
        // Old and new workers answering in turn: never 3 new in a row.
        let old = Leaf::self_signed(&["a.test"]).config(false);
        let new_leaf = Leaf::self_signed(&["a.test"]);
        let new = new_leaf.config(false);
        let server =
            TlsServer::start(move |n| if n % 2 == 0 { old.clone() } else { new.clone() }).await;
        let prober = Prober::new(None, Duration::from_secs(5)).expect("prober");

        let out = wait_until_served(
            &prober,
            &[server.target("a.test")],
            &new_leaf.sha256(),
            2,
            Duration::from_secs(1),
        )
        .await;
        assert!(!out.ok);
        assert!(out.handshakes >= 4, "{}", out.handshakes);
    }

    #[tokio::test]
    async fn wait_on_a_silent_target_ends_at_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        // The probe timeout is longer than the deadline: the deadline cuts it.
        let prober = Prober::new(None, Duration::from_secs(30)).expect("prober");
        let target = Target::parse(&addr, Some("a.test")).expect("target");

        let started = std::time::Instant::now();
        let out = wait_until_served(
            &prober,
            &[target],
            &"0".repeat(64),
            3,
            Duration::from_millis(400),
        )
        .await;
        assert!(!out.ok);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(out.last[0], Err(ProbeError::Timeout { .. })));
        silent.abort();
    }

    #[tokio::test]
    async fn a_bulk_look_keeps_input_order_over_every_engine() {
        let a = Leaf::self_signed(&["a.test"]);
        let b = Leaf::self_signed(&["b.test"]);
        let server_a = TlsServer::serving(&a).await;
        let server_b = TlsServer::serving(&b).await;
        let refused = Target::parse(&refused_addr().await, Some("a.test")).expect("target");
        let prober = Prober::new(None, Duration::from_secs(5)).expect("prober");

        // Enough targets for every engine this box runs, in a pattern that
        // a merge of the engines' results out of order would break.
        let pattern = [
            server_a.target("a.test"),
            refused,
            server_b.target("b.test"),
        ];
        let targets: Vec<Target> = pattern.iter().cycle().take(300).cloned().collect();
        let (ha, hb) = (Some(a.sha256()), Some(b.sha256()));
        let want: Vec<Option<String>> = [ha, None, hb].into_iter().cycle().take(300).collect();
        for concurrency in [2, 64] {
            let (p, t) = (prober.clone(), targets.clone());
            let results =
                tokio::task::spawn_blocking(move || crate::engines::probe_all(&p, &t, concurrency))
                    .await
                    .expect("bulk look");
            let seen: Vec<Option<String>> = results
                .iter()
                .map(|r| r.as_ref().ok().map(|s| s.leaf.sha256.clone()))
                .collect();
            assert_eq!(seen, want, "concurrency {concurrency}");
            assert!(matches!(results[1], Err(ProbeError::Connect { .. })));
            for (r, t) in results.iter().zip(&targets) {
                if let Ok(s) = r {
                    assert_eq!(&s.target, t);
                }
            }
        }
        let none = tokio::task::spawn_blocking(move || crate::engines::probe_all(&prober, &[], 64));
        assert!(none.await.expect("empty look").is_empty());
    }

    #[tokio::test]
    async fn one_engine_keeps_input_order() {
        let a = Leaf::self_signed(&["a.test"]);
        let server_a = TlsServer::serving(&a).await;
        let refused = Target::parse(&refused_addr().await, Some("a.test")).expect("target");
        let prober = Prober::new(None, Duration::from_secs(5)).expect("prober");
        let jobs: Vec<(Prober, Target)> = [refused, server_a.target("a.test")]
            .into_iter()
            .cycle()
            .take(6)
            .map(|t| (prober.clone(), t))
            .collect();
        let results = probe_each(&jobs, 2).await;
        let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
        assert_eq!(ok, [false, true, false, true, false, true]);
        assert!(probe_each(&[], 64).await.is_empty());
    }

    #[tokio::test]
    async fn served_to_json_has_the_contract_fields() {
        let leaf = Leaf::self_signed(&["a.test"]);
        let server = TlsServer::serving(&leaf).await;
        let prober = Prober::new(None, Duration::from_secs(5)).expect("prober");
        let served = prober.probe(&server.target("a.test")).await.expect("probe");

        let json = served.to_json();
        assert_eq!(json["endpoint"], server.addr.as_str());
        assert_eq!(json["sni"], "a.test");
        assert_eq!(json["sha256"], leaf.sha256().as_str());
        assert_eq!(json["chain_length"], 1);
        assert_eq!(json["trusted"], false);
        assert_eq!(json["protocol"], "TLSv1.3");
        assert_eq!(json["names"][0], "a.test");
        for key in ["subject", "issuer", "serial", "not_before", "not_after"] {
            assert!(json[key].is_string(), "{key}: {}", json[key]);
        }
        assert!(json["trust_error"].is_string());
    }

    #[test]
    fn block_on_runs_a_future() {
        assert_eq!(block_on(async { 40 + 2 }), 42);
    }
}
