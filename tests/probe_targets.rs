//! `certswap probe --targets FILE` against a real nginx: one row per line,
//! in the file's order, when the look is spread over every probe engine;
//! a row with the reason for an endpoint that does not answer; the exit
//! code and the count on stderr.

mod support;

use std::fmt::Write as _;

use serde_json::Value;
use support::nginx::Nginx;
use support::pki::{self, Ca};
use support::{SiteSpec, certswap, free_port};

/// Enough sites that `crate::engines` runs more than one engine on a
/// 2-core box (64 targets per engine at least).
const SITES: usize = 150;

#[test]
fn a_bulk_probe_answers_every_line_in_the_files_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("certswap probe root");
    let ssl = dir.path().join("ssl");
    std::fs::create_dir(&ssl).expect("mkdir ssl");
    let mut specs = Vec::new();
    let mut shas = Vec::new();
    for i in 0..SITES {
        let name = format!("p{i:03}.test");
        let leaf = ca.leaf(&[&name]).days(-1, 30).build();
        let (cert, key) = pki::write(&ssl, &name, &leaf);
        specs.push(SiteSpec::new(&name, &cert, &key));
        shas.push(leaf.sha256);
    }
    let nginx = Nginx::start(&specs);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.root_pem()).expect("write ca");

    // Every site, with a silent endpoint after every 50th, and the
    // comments and blank lines a hand-kept file has.
    let silent = format!("gone.test@127.0.0.1:{}", free_port());
    let mut file = String::from("# the fleet's names\n\n");
    let mut want: Vec<(String, Option<&str>)> = Vec::new();
    for (i, sha) in shas.iter().enumerate() {
        let target = format!("p{i:03}.test@{}", nginx.endpoint());
        writeln!(file, "{target}").expect("write");
        want.push((target, Some(sha)));
        if i % 50 == 49 {
            writeln!(file, "{silent}").expect("write");
            want.push((silent.clone(), None));
        }
    }
    let targets = dir.path().join("targets.txt");
    std::fs::write(&targets, file).expect("write targets");

    let out = certswap()
        .args(["probe", "--json", "--targets"])
        .arg(&targets)
        .arg("--ca")
        .arg(&ca_file)
        .output()
        .expect("run certswap");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("3 of {} targets gave no handshake", want.len())),
        "{stderr}"
    );
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON row per line"))
        .collect();
    assert_eq!(rows.len(), want.len());
    for (row, (target, sha)) in rows.iter().zip(&want) {
        assert_eq!(row["target"], target.as_str(), "{row}");
        match sha {
            Some(sha) => {
                assert_eq!(row["sha256"], *sha, "{row}");
                assert_eq!(row["trusted"], true, "{row}");
            }
            None => assert!(row["error"].is_string(), "{row}"),
        }
    }

    // The text rows: the same lines, the same order.
    let out = certswap()
        .args(["probe", "--targets"])
        .arg(&targets)
        .arg("--ca")
        .arg(&ca_file)
        .output()
        .expect("run certswap");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), want.len());
    for (line, (target, sha)) in lines.iter().zip(&want) {
        assert!(line.starts_with(&format!("{target}  ")), "{line}");
        match sha {
            Some(sha) => assert!(line.contains(&format!("sha256={sha}")), "{line}"),
            None => assert!(line.contains("error:"), "{line}"),
        }
    }
}
