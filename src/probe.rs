//! The TLS probe: fresh handshakes against a live server that *record* the
//! served chain whatever it is (expired, self-signed, untrusted), then judge
//! trust separately; and the wait-until-served loop that turns "the server
//! was reloaded" into "the server serves this leaf" (DESIGN.md step 7).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::cert::CertInfo;

/// Why a probe or a wait failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    #[error("{target}: cannot resolve or parse the address: {reason}")]
    Address { target: String, reason: String },
    #[error("{target}: TCP connect failed: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("{target}: TLS handshake failed: {reason}")]
    Handshake { target: String, reason: String },
    #[error("{target}: no answer within {timeout:?}")]
    Timeout { target: String, timeout: Duration },
    #[error("{target}: the server sent no certificate")]
    NoCertificate { target: String },
    #[error("{target}: the served certificate cannot be parsed: {reason}")]
    BadCertificate { target: String, reason: String },
    #[error("{path}: cannot load CA file: {reason}")]
    CaFile { path: String, reason: String },
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
    pub fn parse(_s: &str, _default_sni: Option<&str>) -> Result<Target, ProbeError> {
        todo!()
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
    /// "TLSv1.3" / "TLSv1.2".
    pub protocol: String,
}

/// Shared handshake machinery: one `Arc<ClientConfig>` with a recording
/// verifier, session resumption disabled (every probe is a full handshake),
/// and the trust anchors the verdict is judged against.
#[derive(Clone)]
pub struct Prober {
    _private: Arc<()>,
}

impl Prober {
    /// Trust anchors: the system roots, plus the PEM certificates in `ca_file`
    /// when given (with `ca_file` only those are used).
    pub fn new(_ca_file: Option<&Path>, _timeout: Duration) -> Result<Prober, ProbeError> {
        todo!()
    }

    /// One fresh TCP connect + TLS handshake (connect and handshake bounded by the timeout).
    pub async fn probe(&self, _target: &Target) -> Result<Served, ProbeError> {
        todo!()
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

/// Probe every target until each one has served the leaf whose SHA-256 is
/// `expected` on `consecutive` fresh connections in a row, or until
/// `deadline`. Polls with short backoff (no fixed sleeps) and spaces the
/// confirming handshakes so a run spans the time old workers may linger.
pub async fn wait_until_served(
    _prober: &Prober,
    _targets: &[Target],
    _expected: &str,
    _consecutive: u32,
    _deadline: Duration,
) -> WaitOutcome {
    todo!()
}

/// Run a future to completion on a fresh current-thread runtime (the probe
/// engine is measured fastest that way on a shared 2-core box).
pub fn block_on<F: std::future::Future>(_f: F) -> F::Output {
    todo!()
}
