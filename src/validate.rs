//! The rules of pipeline step 2, checked before anything on disk changes.
//! Each rule is a named check with its own message; `--force` lifts only the
//! two rules DESIGN.md names (a renewal must extend; names must be kept).

use time::OffsetDateTime;

use crate::bundle::{Bundle, KeyMaterial};
use crate::cert::CertInfo;

/// What is installed now, as far as validation needs it.
#[derive(Debug, Default)]
pub struct Installed {
    /// The installed leaf, if the site's cert file exists and parses.
    pub leaf: Option<CertInfo>,
    /// Number of chain certificates installed with it (in cert or chain file).
    pub chain_len: usize,
    /// The installed key, used when the bundle has none (own-CSR renewal).
    pub key: Option<KeyMaterial>,
}

/// Everything the rules look at besides the bundle.
#[derive(Debug)]
pub struct Context<'a> {
    /// The site's name plus any other names it must keep serving.
    pub site_names: &'a [String],
    pub installed: &'a Installed,
    pub now: OffsetDateTime,
    /// Lift the "must extend" and "must keep names" rules.
    pub force: bool,
}

/// A rule that refused the bundle. One sentence each, naming the certificate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    #[error("the private key does not match the certificate {subject} (their public keys differ)")]
    KeyMismatch { subject: String },
    #[error(
        "no private key given and none is installed to match the certificate against; pass --key"
    )]
    NoKey,
    #[error("the certificate {subject} has expired: notAfter {not_after}")]
    Expired { subject: String, not_after: String },
    #[error("the certificate {subject} is not valid yet: notBefore {not_before}")]
    NotYetValid { subject: String, not_before: String },
    #[error(
        "the new certificate ends {new_not_after}, not later than the installed one ({old_not_after}); a renewal must extend (use --force to install anyway)"
    )]
    DoesNotExtend {
        new_not_after: String,
        old_not_after: String,
    },
    #[error(
        "the new certificate does not cover {missing} which the installed certificate or the site has (use --force to drop names)"
    )]
    NamesDropped { missing: String },
    #[error("the certificate {subject} has a {bits}-bit RSA key; at least 2048 bits are required")]
    WeakKey { subject: String, bits: usize },
    #[error("the certificate {subject} is a CA certificate, not a server certificate")]
    CaAsLeaf { subject: String },
    #[error(
        "the certificate {subject} does not allow TLS server authentication (extendedKeyUsage lacks serverAuth)"
    )]
    NoServerAuth { subject: String },
    #[error(
        "the chain is broken: {subject} is not signed by the next certificate {next} and no order of the chain fixes it"
    )]
    BrokenChain { subject: String, next: String },
}

/// What a passing validation has to say.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    /// Spec changes and repairs (reordered chain, dropped duplicates), each a sentence.
    pub warnings: Vec<String>,
    /// Days the new notAfter is past the installed one (None on first install).
    pub days_added: Option<i64>,
}

/// Apply every rule to `bundle`. On success the bundle may be installed.
/// A chain given out of order is put in signing order and duplicate chain
/// certificates are dropped, in place, each with a warning.
pub fn validate(_bundle: &mut Bundle, _ctx: &Context<'_>) -> Result<Report, ValidationError> {
    todo!()
}
