//! `certswap status`: every configured site at a glance — installed
//! notAfter, days left, state, issuer, spec — and with `--probe` what each
//! endpoint serves and whether that drifted from what is on disk.
//! (Being written.)

use crate::config::Config;

/// Why status could not be collected at all (per-site problems are rows).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    #[error("{0}")]
    Probe(#[from] crate::probe::ProbeError),
}

/// The whole report.
#[derive(Debug, serde::Serialize)]
pub struct StatusReport {
    pub sites: Vec<serde_json::Value>,
}

impl StatusReport {
    /// 0 when every site is ok, 1 when any needs attention.
    pub fn exit_code(&self) -> u8 {
        0
    }
    pub fn to_text(&self) -> String {
        String::new()
    }
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "sites": self.sites })
    }
}

/// Collect the status of every site of `cfg`; `probe` adds handshakes.
pub fn collect(_cfg: &Config, _probe: bool) -> Result<StatusReport, StatusError> {
    Ok(StatusReport { sites: Vec::new() })
}
