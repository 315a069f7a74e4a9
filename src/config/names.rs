//! The sites of a config by name. Who looks up one site per bundle (a
//! batch directory, the inbox, the HTTPS manifest, the agent's pending
//! renewals) used to scan the list once per lookup: quadratic, ~5·10⁷
//! string comparisons for a directory of 10,000 bundles on a 10,000-site
//! host, ~0.1 s of one core before the batch began. Built on first use,
//! once per config. The sites are not changed after a lookup: a config
//! that keeps some of them is a clone, which starts without an index
//! ([`Config::for_server`]); a list that grew or shrank anyway is indexed
//! again rather than looked up in a stale index.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::{Config, Site};

/// A name as file names spell it, for comparison with file stems:
/// lowercase, `.`/`-` as `_`, `*` (and the batch directory's `_wildcard_`)
/// as `star` (vendors write `www_example_com`, `STAR_example_com`).
pub fn stem_form(name: &str) -> String {
    name.to_ascii_lowercase()
        .replace("_wildcard_", "star")
        .replace('*', "star")
        .replace(['.', '-'], "_")
}

/// A site name as a certificate's names are compared with it: trimmed,
/// without trailing dots, lowercase.
pub fn host_form(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Positions in `sites`, each list in config order.
#[derive(Debug, Default)]
struct SiteNames {
    /// How many sites it was built over.
    built_for: usize,
    /// Names are unique (the parse refuses a second one).
    exact: HashMap<String, usize>,
    lowercase: HashMap<String, Vec<usize>>,
    stem_form: HashMap<String, Vec<usize>>,
    longest_stem_form: usize,
    /// By [`host_form`], and by that without its first label (what
    /// `*.` + it covers); sites named by an IP address apart (a name
    /// compared as an address).
    host: HashMap<String, Vec<usize>>,
    parent: HashMap<String, Vec<usize>>,
    ip: Vec<usize>,
}

impl SiteNames {
    fn of(sites: &[Site]) -> SiteNames {
        let mut names = SiteNames {
            built_for: sites.len(),
            ..SiteNames::default()
        };
        for (i, s) in sites.iter().enumerate() {
            names.exact.entry(s.name.clone()).or_insert(i);
            let lower = s.name.to_ascii_lowercase();
            names.lowercase.entry(lower).or_default().push(i);
            let form = stem_form(&s.name);
            names.longest_stem_form = names.longest_stem_form.max(form.len());
            names.stem_form.entry(form).or_default().push(i);
            let host = host_form(&s.name);
            if host.parse::<std::net::IpAddr>().is_ok() {
                names.ip.push(i);
            }
            if let Some((_, parent)) = host.split_once('.') {
                names.parent.entry(parent.to_string()).or_default().push(i);
            }
            names.host.entry(host).or_default().push(i);
        }
        names
    }
}

/// The lazily built index a [`Config`] carries. Cloning gives an empty
/// one: the clone's sites may be changed before its first lookup.
#[derive(Debug, Default)]
pub(crate) struct Index(OnceLock<SiteNames>);

impl Clone for Index {
    fn clone(&self) -> Index {
        Index::default()
    }
}

impl Config {
    fn with_names<R>(&self, f: impl FnOnce(&SiteNames) -> R) -> R {
        let names = self.names.0.get_or_init(|| SiteNames::of(&self.sites));
        if names.built_for == self.sites.len() {
            f(names)
        } else {
            f(&SiteNames::of(&self.sites))
        }
    }

    /// The site called exactly `name`.
    pub fn find_site(&self, name: &str) -> Option<&Site> {
        self.with_names(|n| n.exact.get(name).copied())
            .and_then(|i| self.sites.get(i))
            .filter(|s| s.name == name)
    }

    /// The first site (config order) called `name` ignoring ASCII case.
    pub fn site_ignoring_case(&self, name: &str) -> Option<&Site> {
        self.with_names(|n| {
            n.lowercase
                .get(&name.to_ascii_lowercase())
                .and_then(|v| v.first().copied())
        })
        .and_then(|i| self.sites.get(i))
    }

    /// The sites whose name has the [`stem_form`] `form`, config order.
    pub fn sites_of_stem_form(&self, form: &str) -> Vec<&Site> {
        self.with_names(|n| n.stem_form.get(form).cloned().unwrap_or_default())
            .into_iter()
            .filter_map(|i| self.sites.get(i))
            .collect()
    }

    /// The sites a certificate with `names` (or an ACME client naming
    /// them) may be for: those whose [`host_form`] is one of them, those
    /// one label under a `*.` name, and those named by an IP address; in
    /// config order, each once. A superset: the caller applies the rule.
    pub fn sites_for_names<'n>(&self, names: impl IntoIterator<Item = &'n str>) -> Vec<&Site> {
        let positions = self.with_names(|n| {
            let mut found: std::collections::BTreeSet<usize> = n.ip.iter().copied().collect();
            for name in names {
                let name = host_form(name);
                let under = name.strip_prefix("*.").and_then(|p| n.parent.get(p));
                found.extend(n.host.get(&name).into_iter().chain(under).flatten());
            }
            found
        });
        positions
            .into_iter()
            .filter_map(|i| self.sites.get(i))
            .collect()
    }

    /// The length of the longest [`stem_form`] of a site name: no longer
    /// part of a file stem can name a site.
    pub fn longest_stem_form(&self) -> usize {
        self.with_names(|n| n.longest_stem_form)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(names: &[&str]) -> Config {
        let mut t = String::from("state_dir = \"/tmp/st\"\n[server]\nkind = \"nginx\"\n");
        for (i, n) in names.iter().enumerate() {
            t.push_str(&format!(
                "[[site]]\nname = \"{n}\"\ncert = \"/c/{i}.pem\"\nkey = \"/c/{i}.key\"\nendpoints = [\"probe.test@127.0.0.1:443\"]\n"
            ));
        }
        Config::parse(&t, Path::new("/x.toml")).expect("config")
    }

    #[test]
    fn lookups_agree_with_a_scan_of_the_sites() {
        let c = cfg(&["A.test", "a.test", "b-c.test", "b.c.test", "*.w.test"]);
        for name in [
            "A.test", "a.test", "A.TEST", "b.c.test", "nosuch", "*.w.test",
        ] {
            assert_eq!(
                c.find_site(name).map(|s| &s.name),
                c.sites.iter().find(|s| s.name == name).map(|s| &s.name),
                "{name}"
            );
            assert_eq!(
                c.site_ignoring_case(name).map(|s| &s.name),
                c.sites
                    .iter()
                    .find(|s| s.name.eq_ignore_ascii_case(name))
                    .map(|s| &s.name),
                "{name}"
            );
        }
        let both: Vec<&str> = c
            .sites_of_stem_form("b_c_test")
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(both, ["b-c.test", "b.c.test"]);
        assert_eq!(c.sites_of_stem_form("star_w_test")[0].name, "*.w.test");
        assert_eq!(c.longest_stem_form(), "star_w_test".len());
    }

    #[test]
    fn a_grown_list_and_a_scoped_clone_are_not_looked_up_in_a_stale_index() {
        let mut c = cfg(&["a.test", "b.test"]);
        assert!(c.find_site("b.test").is_some());
        let mut extra = c.sites[0].clone();
        extra.name = "z.test".into();
        c.sites.push(extra);
        assert_eq!(
            c.find_site("z.test").map(|s| s.name.as_str()),
            Some("z.test")
        );

        let mut scoped = c.clone();
        scoped.sites.retain(|s| s.name != "a.test");
        assert!(scoped.find_site("a.test").is_none());
        assert_eq!(
            scoped.find_site("z.test").map(|s| s.name.as_str()),
            Some("z.test")
        );
    }
}
