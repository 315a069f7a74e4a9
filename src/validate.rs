//! The rules of pipeline step 2, checked before anything on disk changes.
//! Each rule is a named check with its own message; `--force` lifts only the
//! two rules DESIGN.md names (a renewal must extend; names must be kept).

use time::OffsetDateTime;

use crate::bundle::{Bundle, KeyMaterial};
use crate::cert::{self, CertInfo, IssuerCheck, KeyKind};

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
        "the certificate {subject} (sha256 {sha256}) is the one installed already, so it is no renewal (use --force to install it again)"
    )]
    SameAsInstalled { subject: String, sha256: String },
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
pub fn validate(bundle: &mut Bundle, ctx: &Context<'_>) -> Result<Report, ValidationError> {
    let mut report = Report::default();
    let warnings = &mut report.warnings;

    // (a) the chain: no duplicates, in signing order.
    drop_duplicate_chain_certs(bundle, warnings);
    put_chain_in_signing_order(bundle, warnings)?;
    // (e) first for the leaf's own key: a weak certificate is refused as
    //     weak, not as "the key does not match" or "no key".
    key_is_strong(&bundle.leaf, None)?;
    // (b) the key that will be served with the leaf belongs to it.
    key_matches_leaf(bundle, ctx.installed)?;
    // (c)-(e) the leaf is a usable server certificate.
    leaf_is_not_a_ca(&bundle.leaf)?;
    leaf_allows_server_auth(&bundle.leaf)?;
    key_is_strong(
        &bundle.leaf,
        bundle.key.as_ref().or(ctx.installed.key.as_ref()),
    )?;
    // (f) valid now.
    valid_now(&bundle.leaf, ctx.now)?;
    // (g), (h) a renewal extends and keeps every name (--force lifts both).
    report.days_added = extends_installed(&bundle.leaf, ctx, warnings)?;
    keeps_names(&bundle.leaf, ctx, warnings)?;
    // (i) like-for-like or not: warnings only.
    spec_warnings(bundle, ctx.installed, warnings);

    Ok(report)
}

/// The rules that need no installed certificate, for a bundle about to be
/// published to a fleet (`certswap manifest build`): the chain, key
/// strength, the key ↔ leaf match when the bundle has its key (a cert-only
/// bundle's key stays on the servers and is matched there), a server leaf,
/// valid now, and covering `site_names`. What [`validate`] checks against
/// the installed certificate (extends it, keeps its names, same spec) each
/// agent checks when it installs.
pub fn validate_unattached(
    bundle: &mut Bundle,
    site_names: &[String],
    now: OffsetDateTime,
) -> Result<Report, ValidationError> {
    let mut report = Report::default();
    let warnings = &mut report.warnings;
    let none = Installed::default();
    let ctx = Context {
        site_names,
        installed: &none,
        now,
        force: false,
    };
    drop_duplicate_chain_certs(bundle, warnings);
    put_chain_in_signing_order(bundle, warnings)?;
    key_is_strong(&bundle.leaf, None)?;
    if bundle.key.is_some() {
        key_matches_leaf(bundle, &none)?;
    }
    leaf_is_not_a_ca(&bundle.leaf)?;
    leaf_allows_server_auth(&bundle.leaf)?;
    key_is_strong(&bundle.leaf, bundle.key.as_ref())?;
    valid_now(&bundle.leaf, now)?;
    keeps_names(&bundle.leaf, &ctx, warnings)?;
    Ok(report)
}

/// (a) Vendors' zips and hand-made full chains often repeat an intermediate
/// or include the leaf again; servers would send the copies to every client.
fn drop_duplicate_chain_certs(bundle: &mut Bundle, warnings: &mut Vec<String>) {
    let mut seen = vec![bundle.leaf.sha256.clone()];
    let leaf_sha = bundle.leaf.sha256.clone();
    bundle.chain.retain(|c| {
        if c.sha256 == leaf_sha {
            warnings.push(format!(
                "dropped a copy of the leaf certificate {} from the chain",
                c.subject
            ));
            false
        } else if seen.contains(&c.sha256) {
            warnings.push(format!(
                "dropped a duplicate chain certificate {}",
                c.subject
            ));
            false
        } else {
            seen.push(c.sha256.clone());
            true
        }
    });
}

/// (a) The leaf must be signed by chain[0], chain[i] by chain[i+1]. A chain
/// that ends at an intermediate (root left out) is the normal case. When the
/// given order does not link, look for one that does and use it.
fn put_chain_in_signing_order(
    bundle: &mut Bundle,
    warnings: &mut Vec<String>,
) -> Result<(), ValidationError> {
    if bundle.chain.is_empty() {
        return Ok(());
    }
    if let Some(links) = links_in_order(&bundle.leaf, &bundle.chain) {
        warn_unverified_links(&links, &bundle.leaf, &bundle.chain, warnings);
        return Ok(());
    }

    let Some(order) = find_signing_order(&bundle.leaf, &bundle.chain) else {
        // Name the first link that fails in the order given: that is where
        // the user will look.
        let (subject, next) = first_broken_link(&bundle.leaf, &bundle.chain);
        return Err(ValidationError::BrokenChain { subject, next });
    };
    let mut old: Vec<Option<CertInfo>> = bundle.chain.drain(..).map(Some).collect();
    bundle.chain = order.iter().filter_map(|&i| old[i].take()).collect();
    warnings.push("the chain was out of order; reordered".to_owned());
    if let Some(links) = links_in_order(&bundle.leaf, &bundle.chain) {
        warn_unverified_links(&links, &bundle.leaf, &bundle.chain, warnings);
    }
    Ok(())
}

/// The link of each adjacent pair (leaf→chain[0], chain[i]→chain[i+1]), or
/// None if any pair is not linked.
fn links_in_order(leaf: &CertInfo, chain: &[CertInfo]) -> Option<Vec<IssuerCheck>> {
    std::iter::once(leaf)
        .chain(chain)
        .zip(chain)
        .map(|(child, parent)| match child.check_issuer(parent) {
            IssuerCheck::NotSigned => None,
            link => Some(link),
        })
        .collect()
}

fn warn_unverified_links(
    links: &[IssuerCheck],
    leaf: &CertInfo,
    chain: &[CertInfo],
    warnings: &mut Vec<String>,
) {
    let children = std::iter::once(leaf).chain(chain);
    for ((link, child), parent) in links.iter().zip(children).zip(chain) {
        if *link == IssuerCheck::NamesOnly {
            warnings.push(format!(
                "the signature of {} by {} uses an algorithm certswap cannot verify; linked by name only",
                child.subject, parent.subject
            ));
        }
    }
}

/// Upper bound on search steps: chains are 1-4 certificates, but a 1 MiB
/// file could hold hundreds, and a path search must not run away on them.
const ORDER_SEARCH_BUDGET: usize = 10_000;

/// Indices into `chain` giving an order in which every certificate signs
/// the one before it, starting from the leaf. Depth-first over a
/// precomputed link table, so cross-signed intermediates (two candidates
/// for one link) are still sorted out.
fn find_signing_order(leaf: &CertInfo, chain: &[CertInfo]) -> Option<Vec<usize>> {
    let n = chain.len();
    // signs[p][c]: chain[p] signed node c, where node 0 is the leaf and
    // node i+1 is chain[i].
    let nodes: Vec<&CertInfo> = std::iter::once(leaf).chain(chain).collect();
    let signs: Vec<Vec<bool>> = chain
        .iter()
        .map(|p| {
            nodes
                .iter()
                .map(|c| c.check_issuer(p) != IssuerCheck::NotSigned)
                .collect()
        })
        .collect();

    let mut order = Vec::with_capacity(n);
    let mut used = vec![false; n];
    let mut budget = ORDER_SEARCH_BUDGET;
    if extend_order(0, &signs, &mut used, &mut order, &mut budget) {
        Some(order)
    } else {
        None
    }
}

fn extend_order(
    current: usize,
    signs: &[Vec<bool>],
    used: &mut [bool],
    order: &mut Vec<usize>,
    budget: &mut usize,
) -> bool {
    if order.len() == used.len() {
        return true;
    }
    for parent in 0..used.len() {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        if used[parent] || !signs[parent][current] {
            continue;
        }
        used[parent] = true;
        order.push(parent);
        if extend_order(parent + 1, signs, used, order, budget) {
            return true;
        }
        order.pop();
        used[parent] = false;
    }
    false
}

fn first_broken_link(leaf: &CertInfo, chain: &[CertInfo]) -> (String, String) {
    std::iter::once(leaf)
        .chain(chain)
        .zip(chain)
        .find(|(child, parent)| child.check_issuer(parent) == IssuerCheck::NotSigned)
        .map(|(child, parent)| (child.subject.clone(), parent.subject.clone()))
        // Unreachable when the in-order check failed; name the first pair.
        .unwrap_or_else(|| {
            (
                leaf.subject.clone(),
                chain.first().map(|c| c.subject.clone()).unwrap_or_default(),
            )
        })
}

/// (b) The bundle's key, or for an own-CSR renewal the installed key, must
/// be the leaf's: a mismatched pair makes nginx refuse to load and apache
/// exit on reload (DESIGN.md, measured behaviour).
fn key_matches_leaf(bundle: &Bundle, installed: &Installed) -> Result<(), ValidationError> {
    let key = bundle
        .key
        .as_ref()
        .or(installed.key.as_ref())
        .ok_or(ValidationError::NoKey)?;
    if key.spki_der != bundle.leaf.spki_der {
        return Err(ValidationError::KeyMismatch {
            subject: bundle.leaf.subject.clone(),
        });
    }
    Ok(())
}

/// (c) A CA certificate given as the leaf is a mixed-up file order.
fn leaf_is_not_a_ca(leaf: &CertInfo) -> Result<(), ValidationError> {
    if leaf.is_ca {
        return Err(ValidationError::CaAsLeaf {
            subject: leaf.subject.clone(),
        });
    }
    Ok(())
}

/// (d) Clients reject a server certificate whose EKU lacks serverAuth.
fn leaf_allows_server_auth(leaf: &CertInfo) -> Result<(), ValidationError> {
    if !leaf.server_auth {
        return Err(ValidationError::NoServerAuth {
            subject: leaf.subject.clone(),
        });
    }
    Ok(())
}

/// Smallest RSA modulus certswap installs; owned by [`crate::bundle`],
/// which reads keys and is below this module (no import cycle).
pub use crate::bundle::MIN_RSA_BITS;

/// (e) RSA below 2048 bits, on the leaf or the key that goes with it.
fn key_is_strong(leaf: &CertInfo, key: Option<&KeyMaterial>) -> Result<(), ValidationError> {
    let kinds = std::iter::once(&leaf.key_kind).chain(key.map(|k| &k.kind));
    for kind in kinds {
        if let KeyKind::Rsa { bits } = kind {
            if *bits < MIN_RSA_BITS {
                return Err(ValidationError::WeakKey {
                    subject: leaf.subject.clone(),
                    bits: *bits,
                });
            }
        }
    }
    Ok(())
}

/// (f) now within [notBefore, notAfter].
fn valid_now(leaf: &CertInfo, now: OffsetDateTime) -> Result<(), ValidationError> {
    if now < leaf.not_before {
        return Err(ValidationError::NotYetValid {
            subject: leaf.subject.clone(),
            not_before: cert::rfc3339(leaf.not_before),
        });
    }
    if now > leaf.not_after {
        return Err(ValidationError::Expired {
            subject: leaf.subject.clone(),
            not_after: cert::rfc3339(leaf.not_after),
        });
    }
    Ok(())
}

/// (g) A renewal ends later than what it replaces; returns the days gained.
fn extends_installed(
    leaf: &CertInfo,
    ctx: &Context<'_>,
    warnings: &mut Vec<String>,
) -> Result<Option<i64>, ValidationError> {
    let Some(old) = &ctx.installed.leaf else {
        return Ok(None);
    };
    // The installed leaf again (a deploy hook or an install run twice): not
    // "ends too early" but its own case, which install turns into "already
    // installed and served" once the endpoints show it.
    if leaf.sha256 == old.sha256 {
        if !ctx.force {
            return Err(ValidationError::SameAsInstalled {
                subject: leaf.subject.clone(),
                sha256: leaf.sha256.clone(),
            });
        }
        warnings.push(
            "the new certificate is the installed one; installing it again because of --force"
                .to_string(),
        );
        return Ok(Some(0));
    }
    let days = (leaf.not_after - old.not_after).whole_days();
    if leaf.not_after <= old.not_after {
        let new_not_after = cert::rfc3339(leaf.not_after);
        let old_not_after = cert::rfc3339(old.not_after);
        if !ctx.force {
            return Err(ValidationError::DoesNotExtend {
                new_not_after,
                old_not_after,
            });
        }
        warnings.push(format!(
            "the new certificate ends {new_not_after}, not later than the installed one ({old_not_after}); installing anyway because of --force"
        ));
    }
    Ok(Some(days))
}

/// (h) Every name the installed certificate or the site has must still be
/// covered; an old wildcard is kept only by the same wildcard.
fn keeps_names(
    leaf: &CertInfo,
    ctx: &Context<'_>,
    warnings: &mut Vec<String>,
) -> Result<(), ValidationError> {
    let old_names = ctx.installed.leaf.iter().flat_map(|old| &old.names);
    let mut missing: Vec<String> = Vec::new();
    for name in old_names.chain(ctx.site_names) {
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() || missing.contains(&name) || leaf.covers(&name) {
            continue;
        }
        missing.push(name);
    }
    if missing.is_empty() {
        return Ok(());
    }
    let missing = missing.join(", ");
    if !ctx.force {
        return Err(ValidationError::NamesDropped { missing });
    }
    warnings.push(format!(
        "the new certificate does not cover {missing} which the installed certificate or the site has; installing anyway because of --force"
    ));
    Ok(())
}

/// (i) DESIGN.md: a like-for-like renewal keeps domain type, validation
/// type and brand; a change is worth a warning, not a refusal. So is a
/// chain that disappeared.
fn spec_warnings(bundle: &Bundle, installed: &Installed, warnings: &mut Vec<String>) {
    let new = &bundle.leaf;
    if let Some(old) = &installed.leaf {
        if old.domain_type != new.domain_type {
            warnings.push(format!(
                "the domain type changed from {} to {}",
                old.domain_type, new.domain_type
            ));
        }
        if old.validation != new.validation {
            warnings.push(format!(
                "the validation type changed from {} to {}",
                old.validation, new.validation
            ));
        }
        if old.issuer_org != new.issuer_org {
            let brand = |o: &Option<String>| o.clone().unwrap_or_else(|| "(none)".to_owned());
            warnings.push(format!(
                "the issuer brand changed from {} to {}",
                brand(&old.issuer_org),
                brand(&new.issuer_org)
            ));
        }
        if old.key_kind != new.key_kind {
            warnings.push(format!(
                "the key type changed from {} to {}",
                old.key_kind, new.key_kind
            ));
        }
    }
    if installed.chain_len > 0 && bundle.chain.is_empty() {
        warnings.push(
            "the new certificate has no chain where the installed one had one: clients will see an incomplete chain"
                .to_owned(),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::process::Command;

    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, PublicKeyData,
    };
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    use time::Duration;

    use super::*;
    use crate::cert::testpki::*;
    use crate::cert::{DomainType, Validation};

    fn key_material(key: &KeyPair) -> KeyMaterial {
        let spki_der = key.subject_public_key_info();
        KeyMaterial {
            der: PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
            pem: key.serialize_pem(),
            kind: cert::key_kind_of_spki(&spki_der).expect("spki"),
            spki_der,
        }
    }

    fn bundle(leaf: CertInfo, chain: Vec<CertInfo>, key: Option<&KeyPair>) -> Bundle {
        Bundle {
            leaf,
            chain,
            key: key.map(key_material),
            cert_path: PathBuf::from("/tmp/new.pem"),
            key_path: key.map(|_| PathBuf::from("/tmp/new.key")),
        }
    }

    fn ctx<'a>(site_names: &'a [String], installed: &'a Installed, force: bool) -> Context<'a> {
        Context {
            site_names,
            installed,
            now: OffsetDateTime::now_utc(),
            force,
        }
    }

    /// A leaf for `names` signed by a fresh intermediate, with its key.
    fn issued(
        names: &[&str],
        params_fn: impl FnOnce(&mut CertificateParams),
    ) -> (CertInfo, Vec<CertInfo>, KeyPair) {
        let root_ca = root("Test Root");
        let inter = intermediate("Test Inter", &root_ca);
        let key = p256();
        let mut params = leaf_params(names);
        params_fn(&mut params);
        let leaf = sign_leaf(&params, &key, &inter);
        (leaf, vec![inter.cert], key)
    }

    fn installed_leaf(names: &[&str], days_left: i64) -> CertInfo {
        let (leaf, _, _) = issued(names, |p| {
            p.not_after = OffsetDateTime::now_utc() + Duration::days(days_left);
        });
        leaf
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn good_renewal_passes_and_counts_days() {
        let (leaf, chain, key) = issued(&["www.example.com", "example.com"], |_| {});
        let old = installed_leaf(&["www.example.com", "example.com"], 10);
        let days = (leaf.not_after - old.not_after).whole_days();
        let installed = Installed {
            leaf: Some(old),
            chain_len: 1,
            key: None,
        };
        let site = names(&["www.example.com"]);
        let mut b = bundle(leaf, chain, Some(&key));
        let report = validate(&mut b, &ctx(&site, &installed, false)).expect("valid");
        assert_eq!(report.warnings, Vec::<String>::new());
        assert_eq!(report.days_added, Some(days));
        assert!(days >= 79, "{days}");
        assert_eq!(b.chain.len(), 1);
    }

    #[test]
    fn first_install_has_no_days_added() {
        let (leaf, chain, key) = issued(&["www.example.com"], |_| {});
        let installed = Installed::default();
        let mut b = bundle(leaf, chain, Some(&key));
        let report = validate(&mut b, &ctx(&[], &installed, false)).expect("valid");
        assert_eq!(report.days_added, None);
    }

    #[test]
    fn duplicate_chain_certs_dropped() {
        let (leaf, chain, key) = issued(&["www.example.com"], |_| {});
        let inter = chain[0].clone();
        let mut b = bundle(
            leaf.clone(),
            vec![inter.clone(), leaf.clone(), inter.clone()],
            Some(&key),
        );
        let installed = Installed::default();
        let report = validate(&mut b, &ctx(&[], &installed, false)).expect("valid");
        assert_eq!(b.chain.len(), 1);
        assert_eq!(b.chain[0].sha256, inter.sha256);
        assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
        assert!(report.warnings[0].contains("copy of the leaf"));
        assert!(report.warnings[1].contains("duplicate chain certificate"));
    }

    #[test]
    fn two_intermediate_chain_given_backwards_is_reordered() {
        let root_ca = root("Order Root");
        let i1 = intermediate("Order Inter 1", &root_ca);
        let i2 = intermediate("Order Inter 2", &i1);
        let key = p256();
        let leaf = sign_leaf(&leaf_params(&["www.example.com"]), &key, &i2);
        let backwards = vec![root_ca.cert.clone(), i1.cert.clone(), i2.cert.clone()];
        let mut b = bundle(leaf, backwards, Some(&key));
        let installed = Installed::default();
        let report = validate(&mut b, &ctx(&[], &installed, false)).expect("valid");
        let order: Vec<&str> = b.chain.iter().map(|c| c.sha256.as_str()).collect();
        assert_eq!(
            order,
            [
                i2.cert.sha256.as_str(),
                i1.cert.sha256.as_str(),
                root_ca.cert.sha256.as_str()
            ]
        );
        assert_eq!(report.warnings, ["the chain was out of order; reordered"]);

        // Without the root (the usual vendor download) as well.
        let mut b2 = bundle(
            b.leaf.clone(),
            vec![i1.cert.clone(), i2.cert.clone()],
            Some(&key),
        );
        validate(&mut b2, &ctx(&[], &installed, false)).expect("valid");
        assert_eq!(b2.chain[0].sha256, i2.cert.sha256);
        assert_eq!(b2.chain[1].sha256, i1.cert.sha256);
    }

    #[test]
    fn broken_chain_refused() {
        let (leaf, mut chain, key) = issued(&["www.example.com"], |_| {});
        let stranger = root("Stranger CA");
        chain.push(stranger.cert);
        let mut b = bundle(leaf, chain, Some(&key));
        let installed = Installed::default();
        let err = validate(&mut b, &ctx(&[], &installed, false)).expect_err("broken");
        match err {
            ValidationError::BrokenChain { subject, next } => {
                assert!(subject.contains("Test Inter"), "{subject}");
                assert!(next.contains("Stranger CA"), "{next}");
            }
            other => panic!("expected BrokenChain, got {other:?}"),
        }

        // A leaf whose issuer is not in the chain at all.
        let (leaf, _, key) = issued(&["www.example.com"], |_| {});
        let other = intermediate("Other Inter", &root("Other Root"));
        let mut b = bundle(leaf, vec![other.cert], Some(&key));
        assert!(matches!(
            validate(&mut b, &ctx(&[], &installed, false)),
            Err(ValidationError::BrokenChain { .. })
        ));
    }

    #[test]
    fn key_mismatch_refused() {
        let (leaf, chain, _) = issued(&["www.example.com"], |_| {});
        let other_key = p256();
        let mut b = bundle(leaf, chain, Some(&other_key));
        let installed = Installed::default();
        assert!(matches!(
            validate(&mut b, &ctx(&[], &installed, false)),
            Err(ValidationError::KeyMismatch { .. })
        ));
    }

    #[test]
    fn no_key_refused_and_installed_key_used() {
        let (leaf, chain, key) = issued(&["www.example.com"], |_| {});
        let mut b = bundle(leaf, chain, None);
        let none = Installed::default();
        assert!(matches!(
            validate(&mut b, &ctx(&[], &none, false)),
            Err(ValidationError::NoKey)
        ));

        // Own-CSR renewal: the key stays on the server.
        let own_csr = Installed {
            key: Some(key_material(&key)),
            ..Installed::default()
        };
        validate(&mut b, &ctx(&[], &own_csr, false)).expect("installed key matches");
        let wrong = Installed {
            key: Some(key_material(&p256())),
            ..Installed::default()
        };
        assert!(matches!(
            validate(&mut b, &ctx(&[], &wrong, false)),
            Err(ValidationError::KeyMismatch { .. })
        ));
    }

    #[test]
    fn ca_as_leaf_refused() {
        let (leaf, chain, key) = issued(&["www.example.com"], |p| {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        });
        let mut b = bundle(leaf, chain, Some(&key));
        let installed = Installed::default();
        assert!(matches!(
            validate(&mut b, &ctx(&[], &installed, false)),
            Err(ValidationError::CaAsLeaf { .. })
        ));
    }

    #[test]
    fn no_server_auth_refused() {
        let (leaf, chain, key) = issued(&["www.example.com"], |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        });
        let mut b = bundle(leaf, chain, Some(&key));
        let installed = Installed::default();
        assert!(matches!(
            validate(&mut b, &ctx(&[], &installed, false)),
            Err(ValidationError::NoServerAuth { .. })
        ));
    }

    /// A self-signed RSA leaf made by the openssl CLI: ring can neither
    /// generate RSA keys nor sign with one under 2048 bits.
    fn openssl_rsa_leaf(dir: &std::path::Path, bits: u32) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("rsa{bits}.pem"));
        let key = dir.join(format!("rsa{bits}.key"));
        let out = Command::new("openssl")
            .args(["req", "-x509", "-nodes", "-days", "30", "-newkey"])
            .arg(format!("rsa:{bits}"))
            .args(["-subj", "/CN=www.example.com"])
            .args(["-addext", "subjectAltName=DNS:www.example.com"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl req");
        assert!(out.status.success(), "openssl req failed: {out:?}");
        (cert, key)
    }

    #[test]
    fn weak_rsa_key_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_path, key_path) = openssl_rsa_leaf(dir.path(), 1024);
        let leaf = crate::bundle::read_certs(&cert_path)
            .expect("cert")
            .remove(0);
        assert_eq!(leaf.key_kind, KeyKind::Rsa { bits: 1024 });
        // ring refuses to load a 1024-bit key; the bundle reader says why
        // from the modulus. Build the key material by hand to reach rule (e).
        let err = crate::bundle::read_key(&key_path).expect_err("weak key");
        assert!(
            matches!(err, crate::bundle::BundleError::WeakKey { bits: 1024, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("too weak"), "{err}");
        let pem_text = std::fs::read_to_string(&key_path).expect("key");
        let key = KeyMaterial {
            der: PrivateKeyDer::from_pem_slice(pem_text.as_bytes()).expect("key der"),
            pem: pem_text,
            spki_der: leaf.spki_der.clone(),
            kind: leaf.key_kind.clone(),
        };
        let mut b = Bundle {
            leaf,
            chain: Vec::new(),
            key: Some(key),
            cert_path,
            key_path: Some(key_path),
        };
        let installed = Installed::default();
        assert!(matches!(
            validate(&mut b, &ctx(&[], &installed, false)),
            Err(ValidationError::WeakKey { bits: 1024, .. })
        ));

        // A weak certificate without a key is refused as weak, not for
        // the missing key.
        b.key = None;
        assert!(matches!(
            validate(&mut b, &ctx(&[], &installed, false)),
            Err(ValidationError::WeakKey { bits: 1024, .. })
        ));

        // RSA-2048 through the whole bundle path passes.
        let (cert_path, key_path) = openssl_rsa_leaf(dir.path(), 2048);
        let mut b = crate::bundle::load(&cert_path, None, Some(&key_path)).expect("load");
        validate(&mut b, &ctx(&[], &installed, false)).expect("RSA-2048 is fine");
    }

    #[test]
    fn expired_refused() {
        let (leaf, chain, key) = issued(&["www.example.com"], |p| {
            p.not_before = OffsetDateTime::now_utc() - Duration::days(400);
            p.not_after = OffsetDateTime::now_utc() - Duration::days(1);
        });
        let want = cert::rfc3339(leaf.not_after);
        let mut b = bundle(leaf, chain, Some(&key));
        let installed = Installed::default();
        match validate(&mut b, &ctx(&[], &installed, false)) {
            Err(ValidationError::Expired { not_after, .. }) => assert_eq!(not_after, want),
            other => panic!("expected Expired, got {other:?}"),
        }
    }

    #[test]
    fn not_yet_valid_refused() {
        let (leaf, chain, key) = issued(&["www.example.com"], |p| {
            p.not_before = OffsetDateTime::now_utc() + Duration::days(2);
            p.not_after = OffsetDateTime::now_utc() + Duration::days(90);
        });
        let want = cert::rfc3339(leaf.not_before);
        let mut b = bundle(leaf, chain, Some(&key));
        let installed = Installed::default();
        match validate(&mut b, &ctx(&[], &installed, false)) {
            Err(ValidationError::NotYetValid { not_before, .. }) => assert_eq!(not_before, want),
            other => panic!("expected NotYetValid, got {other:?}"),
        }
    }

    #[test]
    fn must_extend_unless_forced() {
        let (leaf, chain, key) = issued(&["www.example.com"], |_| {});
        let installed = Installed {
            leaf: Some(installed_leaf(&["www.example.com"], 200)),
            chain_len: 1,
            key: None,
        };
        let mut b = bundle(leaf, chain, Some(&key));
        assert!(matches!(
            validate(&mut b, &ctx(&[], &installed, false)),
            Err(ValidationError::DoesNotExtend { .. })
        ));
        let report = validate(&mut b, &ctx(&[], &installed, true)).expect("forced");
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        assert!(report.warnings[0].contains("--force"));
        assert!(report.days_added.is_some_and(|d| d < 0));
    }

    #[test]
    fn the_installed_leaf_again_is_not_called_too_short() {
        let (leaf, chain, key) = issued(&["www.example.com"], |_| {});
        let installed = Installed {
            leaf: Some(leaf.clone()),
            chain_len: chain.len(),
            key: None,
        };
        let mut b = bundle(leaf, chain, Some(&key));
        let e = validate(&mut b, &ctx(&[], &installed, false)).expect_err("same leaf");
        assert!(
            matches!(e, ValidationError::SameAsInstalled { .. }),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("is the one installed already"),
            "{e}"
        );
        let report = validate(&mut b, &ctx(&[], &installed, true)).expect("forced");
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains("installing it again")),
            "{:?}",
            report.warnings
        );
    }

    #[test]
    fn names_kept_unless_forced() {
        let (leaf, chain, key) = issued(&["www.example.com"], |_| {});
        let installed = Installed {
            leaf: Some(installed_leaf(&["www.example.com", "Example.com"], 10)),
            chain_len: 1,
            key: None,
        };
        let site = names(&["www.example.com", "shop.example.com"]);
        let mut b = bundle(leaf, chain, Some(&key));
        match validate(&mut b, &ctx(&site, &installed, false)) {
            Err(ValidationError::NamesDropped { missing }) => {
                assert_eq!(missing, "example.com, shop.example.com");
            }
            other => panic!("expected NamesDropped, got {other:?}"),
        }
        let report = validate(&mut b, &ctx(&site, &installed, true)).expect("forced");
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains("example.com, shop.example.com") && w.contains("--force")),
            "{:?}",
            report.warnings
        );
    }

    #[test]
    fn old_wildcard_kept_only_by_same_wildcard() {
        let old = installed_leaf(&["*.example.com", "example.com"], 10);
        let installed = Installed {
            leaf: Some(old),
            chain_len: 1,
            key: None,
        };
        let site = names(&["shop.example.com"]);

        let (leaf, chain, key) = issued(&["example.com", "*.example.com"], |_| {});
        let mut b = bundle(leaf, chain, Some(&key));
        validate(&mut b, &ctx(&site, &installed, false)).expect("same wildcard");

        let (leaf, chain, key) = issued(&["example.com", "shop.example.com"], |_| {});
        let mut b = bundle(leaf, chain, Some(&key));
        match validate(&mut b, &ctx(&site, &installed, false)) {
            Err(ValidationError::NamesDropped { missing }) => assert_eq!(missing, "*.example.com"),
            other => panic!("expected NamesDropped, got {other:?}"),
        }
    }

    #[test]
    fn spec_changes_are_warnings() {
        // Installed: OV wildcard from "Old Brand", P-256, with a chain.
        let old_ca = root("Old Brand");
        let mut old_params = leaf_params(&["*.example.com"]);
        old_params.custom_extensions = vec![policy_extension("2.23.140.1.2.2")];
        old_params.not_after = OffsetDateTime::now_utc() + Duration::days(10);
        let old = sign_leaf(&old_params, &p256(), &old_ca);
        assert_eq!(old.domain_type, DomainType::Wildcard);
        assert_eq!(old.validation, Validation::OV);
        let installed = Installed {
            leaf: Some(old),
            chain_len: 1,
            key: None,
        };

        // New: DV, multi-name (keeps the wildcard), another brand, P-384, no chain.
        let new_ca = root("New Brand");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("p384");
        let mut params = leaf_params(&["*.example.com", "example.com"]);
        params.custom_extensions = vec![policy_extension("2.23.140.1.2.1")];
        let mut leaf = sign_leaf(&params, &key, &new_ca);
        // Wildcard stays wildcard by definition; pretend a multi-name cert
        // to see the domain-type warning without dropping the old name.
        leaf.domain_type = DomainType::Multi;
        let mut b = bundle(leaf, Vec::new(), Some(&key));
        let report = validate(&mut b, &ctx(&[], &installed, false)).expect("warnings only");
        let w = &report.warnings;
        assert!(
            w.contains(&"the domain type changed from wildcard to multi-name".to_owned()),
            "{w:?}"
        );
        assert!(
            w.contains(&"the validation type changed from OV to DV".to_owned()),
            "{w:?}"
        );
        assert!(
            w.contains(&"the issuer brand changed from Old Brand Org to New Brand Org".to_owned()),
            "{w:?}"
        );
        assert!(
            w.contains(&"the key type changed from ECDSA P-256 to ECDSA P-384".to_owned()),
            "{w:?}"
        );
        assert!(
            w.contains(
                &"the new certificate has no chain where the installed one had one: clients will see an incomplete chain"
                    .to_owned()
            ),
            "{w:?}"
        );
        assert_eq!(w.len(), 5, "{w:?}");
    }
}
