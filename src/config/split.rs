//! Reading a config of thousands of `[[site]]` sections on every core.
//!
//! At 10,000 sites the TOML parse is most of loading the config, and every
//! command loads it before it reads a file (`status` spent a quarter of its
//! CPU there, on one core). The sections are independent, so the text is
//! cut at its `[[site]]` headers into groups that parse on their own, and
//! the rest of the file (everything that is not a site) parses as one.
//!
//! The cut is only made where it cannot change the meaning: every table
//! header must be of the plain form (`[name]`, `[[name]]`, bare keys and
//! dots), no multi-line string may hide a header-like line, and
//! `[[site.pair]]` must follow its site. Anything else, and any part that
//! fails to parse, falls back to the one serial parse of the whole text,
//! so an error names the same byte it always did.

use serde::Deserialize;

use super::{RawConfig, RawSite};

/// Below this many sites one parse is as fast; also the size of a group.
const GROUP: usize = 256;

/// `text` as [`RawConfig`], as `toml::from_str` reads it.
pub(super) fn parse(text: &str) -> Result<RawConfig, toml::de::Error> {
    cut(text)
        .and_then(|(rest, groups)| parse_parts(rest, groups))
        .map_or_else(|| toml::from_str(text), Ok)
}

/// One group of `[[site]]` sections, parsed on its own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSites {
    site: Vec<RawSite>,
}

enum Part {
    Rest(String),
    Sites(String),
}

enum Parsed {
    Rest(Box<RawConfig>),
    Sites(Vec<RawSite>),
}

/// The parts parsed on all cores and put back together; None when one
/// does not parse or the rest has a `site` key of its own.
fn parse_parts(rest: String, groups: Vec<String>) -> Option<RawConfig> {
    let parts: Vec<Part> = std::iter::once(Part::Rest(rest))
        .chain(groups.into_iter().map(Part::Sites))
        .collect();
    let parsed = crate::par::map(parts, crate::par::cpu_threads(), |part| match part {
        // The rest is a few small tables: reading it twice costs nothing,
        // and a `site` key of its own (`site = [...]`) must be the serial
        // parse's to judge, whatever it holds.
        Part::Rest(t) => match toml::from_str::<toml::Table>(&t) {
            Ok(table) if !table.contains_key("site") => {
                toml::from_str(&t).ok().map(|r| Parsed::Rest(Box::new(r)))
            }
            _ => None,
        },
        Part::Sites(t) => toml::from_str::<RawSites>(&t)
            .ok()
            .map(|s| Parsed::Sites(s.site)),
    });
    let mut parsed = parsed.into_iter();
    let Some(Some(Parsed::Rest(raw))) = parsed.next() else {
        return None;
    };
    let mut raw = *raw;
    for p in parsed {
        match p {
            Some(Parsed::Sites(sites)) => raw.sites.extend(sites),
            _ => return None,
        }
    }
    Some(raw)
}

/// What a line that opens a table is.
#[derive(Debug, PartialEq)]
enum Header {
    Site,
    SitePair,
    /// Any other plain header: `[agent]`, `[[source]]`, `[server]`...
    Other,
    /// A form the cut does not reason about (quoted keys, spaces, a
    /// table under `site` other than `pair`).
    Odd,
}

/// The header on `line`, or None when the line opens no table. A line
/// that starts with `[` outside a multi-line string is a header or part of
/// an array value; a cut inside a value leaves a part that fails to parse.
fn header(line: &str) -> Option<Header> {
    let line = line.trim();
    if !line.starts_with('[') {
        return None;
    }
    let line = match line.find('#') {
        Some(i) => line[..i].trim_end(),
        None => line,
    };
    let (name, array) = if let Some(n) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]"))
    {
        (n, true)
    } else if let Some(n) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
        (n, false)
    } else {
        return Some(Header::Odd);
    };
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    Some(match (plain, array, name) {
        (false, _, _) => Header::Odd,
        (true, true, "site") => Header::Site,
        (true, true, "site.pair") => Header::SitePair,
        (true, _, n) if n == "site" || n.starts_with("site.") => Header::Odd,
        _ => Header::Other,
    })
}

/// `text` cut into the rest and groups of about [`GROUP`] site sections,
/// in file order; None when it is small or not safely cut.
fn cut(text: &str) -> Option<(String, Vec<String>)> {
    if text.contains("\"\"\"") || text.contains("'''") {
        return None;
    }
    let mut rest = String::new();
    let mut groups: Vec<String> = Vec::new();
    let mut in_group = 0;
    let mut in_site = false;
    for line in text.split_inclusive('\n') {
        match header(line) {
            Some(Header::Odd) => return None,
            Some(Header::Site) => {
                if groups.is_empty() || in_group == GROUP {
                    groups.push(String::new());
                    in_group = 0;
                }
                in_group += 1;
                in_site = true;
            }
            Some(Header::SitePair) if !in_site => return None,
            Some(Header::Other) => in_site = false,
            Some(Header::SitePair) | None => {}
        }
        match (in_site, groups.last_mut()) {
            (true, Some(group)) => group.push_str(line),
            _ => rest.push_str(line),
        }
    }
    if groups.len() < 2 {
        return None;
    }
    Some((rest, groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config of `n` sites with the other tables between and after them.
    fn config(n: usize, site_extra: impl Fn(usize) -> String) -> String {
        let mut t = String::from(
            "state_dir = \"/var/lib/certswap\"\n[server]\nkind = \"nginx\"\n[probe]\ntimeout = \"2s\"\n",
        );
        for i in 0..n {
            t.push_str(&format!(
                "\n[[site]] # number {i}\nname = \"s{i}.example\"\nnames = [\n  \"s{i}.example\",\n]\ncert = \"/c/{i}.pem\"\nkey = \"/k/{i}.pem\"\n{}",
                site_extra(i)
            ));
            if i == n / 2 {
                t.push_str("\n[agent]\ninterval = \"5m\"\n");
            }
        }
        t.push_str("\n[[source]]\nkind = \"inbox\"\npath = \"/inbox\"\n");
        t
    }

    fn serial(text: &str) -> Result<RawConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn a_large_config_is_cut_and_reads_as_the_serial_parse_does() {
        let text = config(1000, |i| {
            if i % 7 == 0 {
                "[[site.pair]]\ncert = \"/c/r.pem\"\nkey = \"/k/r.pem\"\n".into()
            } else {
                String::new()
            }
        });
        let (rest, groups) = cut(&text).expect("a plain config of 1000 sites is cut");
        assert_eq!(groups.len(), 1000usize.div_ceil(GROUP));
        let parallel = parse_parts(rest, groups).expect("every part parses");
        assert_eq!(parallel.sites.len(), 1000);
        assert_eq!(
            format!("{parallel:?}"),
            format!("{:?}", serial(&text).unwrap())
        );
    }

    #[test]
    fn a_bad_site_reports_the_serial_parse_error() {
        let text = config(600, |i| {
            if i == 555 {
                "colour = 1\n".into()
            } else {
                String::new()
            }
        });
        let ours = parse(&text).unwrap_err();
        let theirs = serial(&text).unwrap_err();
        assert_eq!(ours.to_string(), theirs.to_string());
        assert_eq!(ours.span(), theirs.span());
        assert!(ours.to_string().contains("colour"), "{ours}");
    }

    #[test]
    fn forms_it_does_not_reason_about_are_not_cut() {
        let many = |extra: &str| format!("{extra}\n{}", config(600, |_| String::new()));
        assert!(cut(&many("")).is_some());
        for odd in [
            "[ agent ]\ninterval = \"5m\"",
            "[\"agent\"]\ninterval = \"5m\"",
            "[site.x]\na = 1",
            "[[site . pair]]\ncert = \"/a\"",
            "note = '''\n[[site]]\n'''",
            "note = \"\"\"\n[[site]]\n\"\"\"",
        ] {
            assert!(cut(&many(odd)).is_none(), "cut despite {odd:?}");
        }
        // A pair with no site before it.
        let orphan = format!(
            "[[site.pair]]\ncert = \"/a\"\nkey = \"/b\"\n{}",
            config(600, |_| String::new())
        );
        assert!(cut(&orphan).is_none());
        // Small configs are read in one parse.
        assert!(cut(&config(GROUP, |_| String::new())).is_none());
    }

    #[test]
    fn inline_sites_beside_site_tables_get_the_serial_verdict() {
        let verdict = |r: Result<RawConfig, toml::de::Error>| match r {
            Ok(raw) => format!("{raw:?}"),
            Err(e) => e.to_string(),
        };
        for inline in [
            "site = []",
            "site = [{ name = \"inline.example\", cert = \"/c\", key = \"/k\" }]",
        ] {
            let text = format!("{inline}\n{}", config(600, |_| String::new()));
            assert_eq!(verdict(parse(&text)), verdict(serial(&text)), "{inline}");
        }
    }

    #[test]
    fn header_forms() {
        assert_eq!(header("[[site]]"), Some(Header::Site));
        assert_eq!(header("  [[site]]  # c\r\n"), Some(Header::Site));
        assert_eq!(header("[[site.pair]]\n"), Some(Header::SitePair));
        assert_eq!(header("[agent]"), Some(Header::Other));
        assert_eq!(header("[[source]]"), Some(Header::Other));
        assert_eq!(header("[site]"), Some(Header::Odd));
        assert_eq!(header("[[site.other]]"), Some(Header::Odd));
        assert_eq!(header("  [\"a\", \"b\"],"), Some(Header::Odd));
        assert_eq!(header("name = \"[[site]]\""), None);
        assert_eq!(header("# [[site]]"), None);
    }
}
