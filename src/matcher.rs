//! Which configured site (and, on a dual-certificate site, which cert/key
//! pair) a bundle is for: one rule for every source (issue 13, "one
//! bundle→site matcher"). What differs between sources is only what they
//! know besides the certificate, given as a [`Hint`].
//!
//! # The rules before there was one
//! - `install --batch DIR` (`batch::scan_dir`): the file stem had to equal
//!   the site name exactly (case-sensitive), or the name with `*` written
//!   as `_wildcard_`; no look at the certificate. No match: "FILES: `STEM`
//!   is not a site of CONFIG; nothing was changed for it".
//! - The inbox (`source::match_site`): each stem (file, then zip) tried in
//!   order, equal to a site name ignoring case, or containing it as a
//!   `_`-separated part after folding `.`/`-` to `_` and `*` to `star`
//!   (`12345_www.example.com_nginx`, `STAR_example_org`), the longest name
//!   winning; then the one site *every* name of which the leaf covers;
//!   several such sites, or none, refused with a sentence.
//! - The HTTPS manifest (`source::http`): its `site` field, exact; another
//!   name is "not a site of this host" and skipped.
//! - The deploy hook and the ACME stores (`hook::sites_for`): every site
//!   whose *name* the leaf covers (wildcards included) or that the client
//!   names in `RENEWED_DOMAINS` / `Le_Domain`; none → the hook's "no site".
//! - The vendor sources (`source::cloud`) go the other way (for each site,
//!   the newest issued certificate covering all of its names) and are a
//!   selection among many certificates, not a match of one: they keep it.
//! - Dual-certificate sites (`install::pair_family` / `pair_site`): the
//!   pair whose installed leaf has the new leaf's key type.
//!
//! # The one rule
//! 1. An explicit site name ([`Hint::Site`]) is exact, and nothing else is
//!    tried: whoever wrote it meant that site.
//! 2. File stems ([`Hint::Stems`]) are tried in order with [`by_stem`]:
//!    the inbox's rule, which also reads the batch directory's
//!    `_wildcard_` spelling. So a file named after its site is found the
//!    same way in a batch directory and an inbox.
//! 3. Otherwise the leaf decides ([`covered`]): the sites whose name it
//!    covers, plus those the ACME client names. The site's further names
//!    are not needed to match: step 2 (validate) refuses a certificate
//!    that misses one, with the name it misses, which says more than "no
//!    site matches". (The inbox used to require every name here; that was
//!    the one disagreement, and the hook's rule won.)
//! 4. A source that installs one bundle on one site (the inbox, the batch
//!    directory) asks for [`one`]: several sites are refused with a
//!    sentence that says how to name the file; the hook and the ACME
//!    stores take them all ([`sites`]).
//! 5. On a dual-certificate site the bundle goes to the pair of its key
//!    type ([`pair_site`]).

use std::path::Path;

use crate::bundle;
use crate::cert::CertInfo;
use crate::config::{Config, Site, host_form, stem_form};
use crate::probe::KeyFamily;

/// Why no site (or no one site, or no pair) was found, as the sentence
/// the inbox and the batch show for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MatchError {
    /// An explicit site name that is not configured.
    #[error("{name:?} is not a site of this host")]
    Unknown { name: String },
    /// No stem names a site and the leaf covers none.
    #[error(
        "no configured site matches: the file name names none, and the certificate's names ({}) cover no site's name",
        names.join(", ")
    )]
    NoSite { names: Vec<String> },
    /// No stem names a site and there is no leaf to match by.
    #[error(
        "no configured site is named {stem} and the certificate cannot be read to match its names"
    )]
    Unreadable { stem: String },
    /// The leaf fits several sites where one was needed.
    #[error(
        "the certificate's names fit several sites ({}); name the file after the site, e.g. {}.pem",
        sites.join(", "),
        sites.first().map(String::as_str).unwrap_or_default()
    )]
    Several { sites: Vec<String> },
    /// A dual site's bundle whose key is neither RSA nor ECDSA.
    #[error(
        "{}: the certificate's key is neither RSA nor ECDSA, and site {site} has one cert/key pair per key type",
        cert.display()
    )]
    NoKeyType {
        cert: std::path::PathBuf,
        site: String,
    },
    /// A dual site's bundle whose certificate cannot be read.
    #[error("{0}")]
    Unread(String),
    /// A dual site with no pair of the bundle's key type.
    #[error("site {site} has no cert/key pair with a {family:?} key (pairs: {pairs})")]
    NoPair {
        site: String,
        family: KeyFamily,
        pairs: String,
    },
}

/// What a source knows about a bundle besides its certificate.
#[derive(Debug, Clone, Copy)]
pub enum Hint<'h> {
    /// The source names the site (an HTTPS manifest's `site`).
    Site(&'h str),
    /// File names, most specific first (the file, then its zip).
    Stems(&'h [&'h str]),
    /// The names an ACME client renewed (`RENEWED_DOMAINS`; may be empty).
    Domains(&'h [String]),
}

/// Every site `leaf` belongs to under `hint` (rules 1–3), config order.
pub fn sites<'c>(
    cfg: &'c Config,
    hint: Hint<'_>,
    leaf: Option<&CertInfo>,
) -> Result<Vec<&'c Site>, MatchError> {
    let domains: &[String] = match hint {
        Hint::Site(name) => {
            return cfg
                .find_site(name)
                .map(|s| vec![s])
                .ok_or_else(|| MatchError::Unknown { name: name.into() });
        }
        Hint::Stems(stems) => {
            if let Some(site) = stems.iter().find_map(|stem| by_stem(cfg, stem)) {
                return Ok(vec![site]);
            }
            &[]
        }
        Hint::Domains(domains) => domains,
    };
    let Some(leaf) = leaf else {
        let stem = match hint {
            Hint::Stems([first, ..]) => format!("{first:?}"),
            _ => "by the file".into(),
        };
        return Err(MatchError::Unreadable { stem });
    };
    let found = covered(cfg, leaf, domains);
    if found.is_empty() {
        return Err(MatchError::NoSite {
            names: leaf.names.clone(),
        });
    }
    Ok(found)
}

/// The one site `leaf` belongs to under `hint` (rule 4).
pub fn one<'c>(
    cfg: &'c Config,
    hint: Hint<'_>,
    leaf: Option<&CertInfo>,
) -> Result<&'c Site, MatchError> {
    match sites(cfg, hint, leaf)?.as_slice() {
        [one] => Ok(one),
        several => Err(MatchError::Several {
            sites: several.iter().map(|s| s.name.clone()).collect(),
        }),
    }
}

/// The sites whose name `leaf` covers (wildcards included) or that the
/// client named in `domains` (lowercase, no trailing dot). Config order.
pub fn covered<'c>(cfg: &'c Config, leaf: &CertInfo, domains: &[String]) -> Vec<&'c Site> {
    // The candidates from the config's index, not every site: the ACME
    // stores ask this of every lineage, on hosts with thousands of both.
    let names = leaf.names.iter().chain(domains).map(String::as_str);
    cfg.sites_for_names(names)
        .into_iter()
        .filter(|s| {
            let name = host_form(&s.name);
            leaf.covers(&name) || domains.contains(&name)
        })
        .collect()
}

/// The site whose name a file stem names: exactly (ignoring case), or as
/// a `_`-separated part of it (`12345_www.example.com_nginx`), both in
/// [`stem_form`]; the longest such name wins. None when no site, or two
/// equally long ones, match. Each part is looked up in the config's
/// index, so a batch of 10,000 bundles costs 10,000 lookups, not a scan
/// of the sites each.
pub fn by_stem<'a>(cfg: &'a Config, stem: &str) -> Option<&'a Site> {
    if let Some(s) = cfg.site_ignoring_case(stem) {
        return Some(s);
    }
    let stem = stem_form(stem);
    let longest = cfg.longest_stem_form();
    let seps: Vec<usize> = stem.match_indices('_').map(|(i, _)| i).collect();
    let mut best: (usize, Vec<&Site>) = (0, Vec::new());
    // Part j starts after the j-th `_` and ends at a later one or the end;
    // parts longer than any site's name are not looked up, so a hostile
    // stem of many `_` costs its length times that, not its square.
    for j in 0..=seps.len() {
        let start = if j == 0 { 0 } else { seps[j - 1] + 1 };
        let ends = seps[j..].iter().copied();
        for end in ends.chain(std::iter::once(stem.len())) {
            let part = &stem[start..end];
            if part.len() > longest {
                break;
            }
            if part.is_empty() || part.len() < best.0 {
                continue;
            }
            for site in cfg.sites_of_stem_form(part) {
                if part.len() > best.0 {
                    best = (part.len(), vec![site]);
                } else if !best.1.iter().any(|b| std::ptr::eq(*b, site)) {
                    best.1.push(site);
                }
            }
        }
    }
    match best.1.as_slice() {
        [one] => Some(one),
        _ => None,
    }
}

/// The key type of the certificate in `cert`, for a dual-certificate
/// `site` (rule 5).
pub fn pair_family(site: &Site, cert: &Path) -> Result<KeyFamily, MatchError> {
    let certs = bundle::read_certs(cert).map_err(|e| MatchError::Unread(e.to_string()))?;
    match certs.first().map(|leaf| KeyFamily::of(&leaf.key_kind)) {
        Some(KeyFamily::Any) | None => Err(MatchError::NoKeyType {
            cert: cert.to_path_buf(),
            site: site.name.clone(),
        }),
        Some(family) => Ok(family),
    }
}

/// `site` reduced to its pair with key type `family` (the one whose
/// installed leaf has that type), stored under its own store key.
pub fn pair_site(site: &Site, family: KeyFamily) -> Result<Site, MatchError> {
    // The slot's key type was resolved when the config was read.
    let Some(slot) = site.slot(family).filter(|_| family != KeyFamily::Any) else {
        return Err(MatchError::NoPair {
            site: site.name.clone(),
            family,
            pairs: site
                .slots
                .iter()
                .map(|s| s.cert.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    Ok(Site {
        cert: slot.cert.clone(),
        key: slot.key.clone(),
        pairs: Vec::new(),
        slots: vec![slot.clone()],
        store_key: format!(
            "{}__{}",
            site.name,
            format!("{family:?}").to_ascii_lowercase()
        ),
        key_family: family,
        ..site.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::testpki;

    fn cfg(names: &[&str]) -> Config {
        let mut t = String::from("state_dir = \"/tmp/st\"\n[server]\nkind = \"nginx\"\n");
        for n in names {
            let file = n.replace('*', "_wildcard_");
            t.push_str(&format!(
                "[[site]]\nname = \"{n}\"\ncert = \"/c/{file}.pem\"\nkey = \"/c/{file}.key\"\nendpoints = [\"probe.test@127.0.0.1:443\"]\n"
            ));
        }
        Config::parse(&t, Path::new("/x.toml")).expect("config")
    }

    fn leaf(names: &[&str]) -> CertInfo {
        let ca = testpki::root("matcher test root");
        testpki::sign_leaf(&testpki::leaf_params(names), &testpki::p256(), &ca)
    }

    fn names(r: Result<Vec<&Site>, MatchError>) -> Vec<String> {
        r.expect("a match")
            .into_iter()
            .map(|s| s.name.clone())
            .collect()
    }

    const SITES: &[&str] = &["www.example.com", "example.com", "*.example.org", "a.test"];

    #[test]
    fn an_explicit_site_name_is_exact_and_wins_over_the_leaf() {
        let c = cfg(SITES);
        let other = leaf(&["a.test"]);
        assert_eq!(
            names(sites(&c, Hint::Site("example.com"), Some(&other))),
            vec!["example.com"]
        );
        let e = sites(&c, Hint::Site("EXAMPLE.com"), Some(&other)).expect_err("exact");
        assert_eq!(e.to_string(), "\"EXAMPLE.com\" is not a site of this host");
    }

    #[test]
    fn file_stems_of_every_source_find_their_site() {
        let c = cfg(SITES);
        let name = |s: &str| by_stem(&c, s).map(|s| s.name.clone());
        // The batch directory's spellings.
        assert_eq!(name("a.test").as_deref(), Some("a.test"));
        assert_eq!(
            name("_wildcard_.example.org").as_deref(),
            Some("*.example.org")
        );
        // The inbox's and the vendors' spellings.
        assert_eq!(name("A.Test").as_deref(), Some("a.test"));
        assert_eq!(
            name("12345_www.example.com_nginx").as_deref(),
            Some("www.example.com")
        );
        assert_eq!(name("www_example_com").as_deref(), Some("www.example.com"));
        assert_eq!(name("example_com").as_deref(), Some("example.com"));
        assert_eq!(name("STAR_example_org").as_deref(), Some("*.example.org"));
        assert_eq!(name("wwwXexample.com"), None);
        // A name twice in one stem is one site; two names of one length, none.
        assert_eq!(name("a_test_a.test").as_deref(), Some("a.test"));
        let two = cfg(&["b.test", "c.test"]);
        assert!(by_stem(&two, "b_test_c_test").is_none());
        assert_eq!(
            by_stem(&two, "x_b_test_y").map(|s| s.name.as_str()),
            Some("b.test")
        );
        // A stem of many `_` (a zip entry may be long) is still read.
        let long = format!("{}b.test", "_".repeat(100_000));
        assert_eq!(
            by_stem(&two, &long).map(|s| s.name.as_str()),
            Some("b.test")
        );
        assert_eq!(name("nosuch.test"), None);
        // A stem beats the leaf; stems are tried in order.
        let for_a = leaf(&["a.test"]);
        let stems: &[&str] = &["nosuch", "example.com", "a.test"];
        assert_eq!(
            names(sites(&c, Hint::Stems(stems), Some(&for_a))),
            vec!["example.com"]
        );
    }

    #[test]
    fn the_leaf_decides_when_no_stem_names_a_site_wildcards_included() {
        let c = cfg(&[
            "www.example.com",
            "api.example.com",
            "other.test",
            "*.example.com",
        ]);
        let wild = leaf(&["example.com", "*.example.com"]);
        assert_eq!(
            names(sites(&c, Hint::Stems(&["cert"]), Some(&wild))),
            vec!["www.example.com", "api.example.com", "*.example.com"]
        );
        assert_eq!(
            names(sites(&c, Hint::Domains(&[]), Some(&wild))),
            vec!["www.example.com", "api.example.com", "*.example.com"]
        );
        // The same certificate whatever the source.
        let one_name = leaf(&["www.example.com"]);
        let by_file = one(&c, Hint::Stems(&["fullchain"]), Some(&one_name)).expect("one");
        let by_hook = sites(&c, Hint::Domains(&[]), Some(&one_name)).expect("hook");
        assert_eq!(vec![by_file.name.clone()], vec![by_hook[0].name.clone()]);
        // The client's domain list adds the sites it names.
        let listed = ["other.test".to_string()];
        assert_eq!(
            names(sites(&c, Hint::Domains(&listed), Some(&one_name))),
            vec!["www.example.com", "other.test"]
        );
    }

    #[test]
    fn the_index_finds_what_a_scan_of_every_site_finds() {
        let c = cfg(&[
            "WWW.Example.com",
            "a.b.example.com",
            "127.0.0.1",
            "*.example.com",
            "x.other.test",
            "example.com",
        ]);
        let scan = |leaf: &CertInfo, domains: &[String]| -> Vec<String> {
            let all = c.sites.iter().filter(|s| {
                let name = host_form(&s.name);
                leaf.covers(&name) || domains.contains(&name)
            });
            all.map(|s| s.name.clone()).collect()
        };
        let listed = ["x.other.test".to_string()];
        for names in [
            &["*.example.com"][..],
            &["example.com", "www.example.com"],
            &["*.b.example.com"],
            &["other.test"],
        ] {
            let l = leaf(names);
            for domains in [&[][..], &listed[..]] {
                let got: Vec<String> = covered(&c, &l, domains)
                    .iter()
                    .map(|s| s.name.clone())
                    .collect();
                assert_eq!(got, scan(&l, domains), "{names:?} {domains:?}");
            }
        }
        let wild: Vec<String> = covered(&c, &leaf(&["*.example.com"]), &[])
            .iter()
            .map(|s| s.name.clone())
            .collect();
        assert_eq!(wild, ["WWW.Example.com", "*.example.com"]);
    }

    #[test]
    fn a_site_matches_by_its_name_and_step_2_judges_its_other_names() {
        let t = "state_dir = \"/tmp/st\"\n[server]\nkind = \"nginx\"\n[[site]]\nname = \"www.example.com\"\n\
                 names = [\"api.example.com\"]\ncert = \"/c/w.pem\"\nkey = \"/c/w.key\"\n\
                 endpoints = [\"probe.test@127.0.0.1:443\"]\n";
        let c = Config::parse(t, Path::new("/x.toml")).expect("config");
        let partial = leaf(&["www.example.com"]);
        assert_eq!(
            names(sites(&c, Hint::Stems(&["cert"]), Some(&partial))),
            vec!["www.example.com"]
        );
    }

    #[test]
    fn no_match_and_several_say_why_in_the_callers_sentences() {
        let c = cfg(&["www.example.com", "api.example.com"]);
        let stranger = leaf(&["stranger.test"]);
        let e = one(&c, Hint::Stems(&["stranger.test"]), Some(&stranger)).expect_err("none");
        assert!(
            e.to_string().starts_with("no configured site matches")
                && e.to_string().contains("stranger.test"),
            "{e}"
        );
        assert!(matches!(
            sites(&c, Hint::Domains(&[]), Some(&stranger)),
            Err(MatchError::NoSite { .. })
        ));
        let e = one(&c, Hint::Stems(&["nosuch"]), None).expect_err("unreadable");
        assert_eq!(
            e.to_string(),
            "no configured site is named \"nosuch\" and the certificate cannot be read to match its names"
        );
        let wild = leaf(&["*.example.com"]);
        let e = one(&c, Hint::Stems(&["fullchain"]), Some(&wild)).expect_err("several");
        assert_eq!(
            e.to_string(),
            "the certificate's names fit several sites (www.example.com, api.example.com); \
             name the file after the site, e.g. www.example.com.pem"
        );
    }

    #[test]
    fn a_dual_site_maps_a_bundle_to_the_pair_of_its_key_type() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = testpki::root("dual root");
        let names = ["dual.test"];
        let ec = testpki::sign_leaf(&testpki::leaf_params(&names), &testpki::p256(), &ca);
        let rsa_key =
            rcgen::KeyPair::from_pem(&testpki::openssl_rsa_pem(dir.path(), 2048)).expect("rsa key");
        let rsa = testpki::sign_leaf(&testpki::leaf_params(&names), &rsa_key, &ca);
        let write = |name: &str, c: &CertInfo| {
            let p = dir.path().join(name);
            std::fs::write(&p, c.to_pem()).expect("write");
            p
        };
        let (ec_cert, rsa_cert) = (write("ec.pem", &ec), write("rsa.pem", &rsa));
        let t = format!(
            "state_dir = \"/tmp/st\"\n[server]\nkind = \"nginx\"\n[[site]]\nname = \"dual.test\"\n\
             cert = {:?}\nkey = \"/c/ec.key\"\nendpoints = [\"probe.test@127.0.0.1:443\"]\n\
             [[site.pair]]\ncert = {:?}\nkey = \"/c/rsa.key\"\n",
            ec_cert.display().to_string(),
            rsa_cert.display().to_string()
        );
        let c = Config::parse(&t, Path::new("/x.toml")).expect("config");
        let site = &c.sites[0];
        let new_rsa = write("new-rsa.pem", &rsa);
        let family = pair_family(site, &new_rsa).expect("a key type");
        assert_eq!(family, KeyFamily::Rsa);
        let pair = pair_site(site, family).expect("the RSA pair");
        assert_eq!(pair.cert, rsa_cert);
        assert_eq!(pair.store_key, "dual.test__rsa");
        let pair = pair_site(site, KeyFamily::Ecdsa).expect("the ECDSA pair");
        assert_eq!(pair.cert, ec_cert);

        // Only an ECDSA pair installed: an RSA bundle has nowhere to go.
        // (Key types are resolved when the config is read: read it again.)
        std::fs::write(&rsa_cert, ec.to_pem()).expect("write");
        let c = Config::parse(&t, Path::new("/x.toml")).expect("config");
        let site = &c.sites[0];
        let e = pair_site(site, KeyFamily::Rsa).expect_err("no RSA pair");
        assert!(
            e.to_string()
                .contains("has no cert/key pair with a Rsa key"),
            "{e}"
        );
    }
}
