//! The fleet manifest's format (DESIGN.md, "HTTP source manifest") and the
//! rollout bucket: the one definition the agent reads
//! ([`crate::source::http`]) and the publisher writes
//! ([`crate::publish`]) and [`crate::rollout`] computes waves with, so the
//! three can never disagree on a field or a host's wave.

use serde::{Deserialize, Serialize};

/// The one manifest version there is.
pub const VERSION: u32 = 1;

/// The file name of the manifest in a published folder.
pub const FILE_NAME: &str = "manifest.json";

/// The rollout bucket of `site` on host `host_id`, in 0..100: the first
/// four bytes of SHA-256(`"{host_id}/{site}"`) as a big-endian u32, mod
/// 100. Stable across runs, versions and hosts, so raising the percent only
/// ever adds hosts to a wave; a host is in the wave when its bucket is
/// below the percent.
pub fn bucket(host_id: &str, site: &str) -> u32 {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{host_id}/{site}").as_bytes(),
    );
    let b = d.as_ref();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) % 100
}

/// A whole manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// No agent installs anything from a paused manifest.
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,
    #[serde(default)]
    pub bundles: Vec<ManifestBundle>,
}

/// One site's bundle: paths relative to the manifest, each with the
/// SHA-256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestBundle {
    pub site: String,
    pub cert: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_sha256: Option<String>,
    /// The leaf's notAfter (RFC 3339), for people and dashboards; agents
    /// read the certificate itself, so a value that is not a string is
    /// ignored as it always was, not a broken manifest.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "string_or_none"
    )]
    pub not_after: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

/// The wave of one bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// Hosts whose bucket is below this install it (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,
}

impl ManifestBundle {
    /// The rollout percent an agent applies (absent = 100).
    pub fn percent(&self) -> u32 {
        self.rollout.as_ref().and_then(|r| r.percent).unwrap_or(100)
    }
}

/// Why bytes are not a manifest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Not JSON of the manifest's shape.
    #[error("the manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Another version than [`VERSION`].
    #[error("manifest version {0} is not supported (expected 1)")]
    Version(u32),
}

/// Parse a manifest and check its version.
pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    let m: Manifest = serde_json::from_slice(bytes)?;
    if m.version != VERSION {
        return Err(ManifestError::Version(m.version));
    }
    Ok(m)
}

/// The bytes of a manifest as published: two-space indented JSON and a
/// final newline (what the old build-manifest script wrote).
pub fn to_bytes(m: &Manifest) -> Vec<u8> {
    // Serializing plain structs of strings and numbers cannot fail.
    let mut b = serde_json::to_vec_pretty(m).unwrap_or_default();
    b.push(b'\n');
    b
}

fn string_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_manifest_round_trips() {
        let text = include_str!("../examples/fleet/manifest.example.json");
        let m = parse(text.as_bytes()).expect("the example parses");
        assert_eq!(m.bundles.len(), 2);
        assert_eq!(m.bundles[1].percent(), 10);
        let again = parse(&to_bytes(&m)).expect("round trip");
        assert_eq!(again, m);
        let odd =
            br#"{"version": 1, "bundles": [{"site": "a", "cert": "a/c.pem", "not_after": 5}]}"#;
        assert_eq!(
            parse(odd).expect("not_after is informative").bundles[0].not_after,
            None
        );
        assert!(matches!(
            parse(br#"{"version": 2}"#),
            Err(ManifestError::Version(2))
        ));
    }
}
