//! `certswap status` against a real nginx: states from days left, the exit
//! code for cron, drift when a renewal was written but nginx not reloaded
//! (and gone after the reload), unreadable cert files and unreachable
//! endpoints as rows, and that status never touches the state dir.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use support::nginx::Nginx;
use support::pki::{self, Ca, Leaf};
use support::{SiteSpec, certswap, free_port};

/// Real nginx serving some sites, with a certswap config for them.
struct World {
    dir: tempfile::TempDir,
    ca: Ca,
    ssl: PathBuf,
    nginx: Nginx,
    config: PathBuf,
}

impl World {
    /// One site per (name, leaf), served by nginx from `ssl/NAME.{pem,key}`;
    /// the config trusts the test root, and its state dir does not exist.
    fn new(ca: Ca, sites: &[(&str, &Leaf)]) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let ssl = dir.path().join("ssl");
        std::fs::create_dir(&ssl).expect("mkdir ssl");
        let mut specs = Vec::new();
        let mut files = Vec::new();
        for (name, leaf) in sites {
            let (cert, key) = pki::write(&ssl, name, leaf);
            specs.push(SiteSpec::new(name, &cert, &key));
            files.push((*name, cert, key));
        }
        let nginx = Nginx::start(&specs);
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.root_pem()).expect("write ca");
        let text = nginx.certswap_config(&dir.path().join("state"), &files, Some(&ca_file));
        let config = dir.path().join("certswap.toml");
        std::fs::write(&config, text).expect("write config");
        World {
            dir,
            ca,
            ssl,
            nginx,
            config,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn status(&self, args: &[&str]) -> Output {
        run_status(&self.config, args)
    }

    fn json(&self, probe: bool) -> (i32, Value) {
        let args: &[&str] = if probe {
            &["--probe", "--json"]
        } else {
            &["--json"]
        };
        let out = self.status(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "status {args:?} printed no JSON ({e}):\n{stdout}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (code(&out), json)
    }
}

fn run_status(config: &Path, args: &[&str]) -> Output {
    certswap()
        .arg("--config")
        .arg(config)
        .arg("status")
        .args(args)
        .output()
        .expect("run certswap status")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The site object named `name` in a status JSON.
fn site<'a>(json: &'a Value, name: &str) -> &'a Value {
    json["sites"]
        .as_array()
        .expect("sites array")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no site {name} in {json}"))
}

fn days_left(json: &Value, name: &str) -> i64 {
    site(json, name)["days_left"].as_i64().expect("days_left")
}

#[test]
fn states_from_days_left_and_exit_1() {
    let ca = Ca::new("certswap status root");
    let ok = ca
        .leaf(&["ok.test", "www.ok.test"])
        .policy(&[2, 23, 140, 1, 2, 1])
        .days(-1, 90)
        .build();
    let expiring = ca.leaf(&["expiring.test"]).days(-1, 20).build();
    let critical = ca.leaf(&["critical.test"]).days(-1, 5).build();
    let expired = ca.leaf(&["expired.test"]).days(-100, -1).build();
    let w = World::new(
        ca,
        &[
            ("ok.test", &ok),
            ("expiring.test", &expiring),
            ("critical.test", &critical),
            ("expired.test", &expired),
        ],
    );

    let (exit, json) = w.json(false);
    assert_eq!(exit, 1, "{json}");
    for (name, state, days) in [
        ("ok.test", "ok", 89..=90),
        ("expiring.test", "expiring", 19..=20),
        ("critical.test", "critical", 4..=5),
        ("expired.test", "expired", -2..=-1),
    ] {
        let s = site(&json, name);
        assert_eq!(s["state"], state, "{s}");
        assert!(days.contains(&days_left(&json, name)), "{s}");
        assert_eq!(s["issuer"], "certswap status root", "{s}");
        assert_eq!(s["served"], serde_json::json!([]), "{s}");
        assert!(
            s["drift"].is_null(),
            "no drift verdict without --probe: {s}"
        );
        assert!(s["error"].is_null(), "{s}");
        assert_eq!(
            s["file"],
            w.ssl.join(format!("{name}.pem")).to_str().expect("utf-8")
        );
    }
    let s = site(&json, "ok.test");
    assert_eq!(
        s["not_after"],
        ok.not_after_rfc3339().replace("+00:00", "Z")
    );
    assert_eq!(
        s["spec"],
        serde_json::json!({"domain": "multi", "validation": "DV"})
    );
    assert_eq!(
        site(&json, "expired.test")["spec"],
        serde_json::json!({"domain": "single", "validation": "unknown"})
    );

    // The table a person reads, and one line per problem below it.
    let out = w.status(&[]);
    assert_eq!(code(&out), 1);
    let t = text(&out);
    let lines: Vec<&str> = t.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("  NOT AFTER  "),
        "{t}"
    );
    for h in ["DAYS", "STATE", "ISSUER", "SPEC"] {
        assert!(lines[0].contains(h), "{h}: {t}");
    }
    let state_col = lines[0].find("STATE").expect("STATE");
    for (line, state) in lines[1..5]
        .iter()
        .zip(["ok ", "expiring", "critical", "expired"])
    {
        assert!(line[state_col..].starts_with(state), "{state}: {t}");
    }
    assert!(t.contains("expiring.test: expiring: "), "{t}");
    assert!(t.contains("critical.test: critical: "), "{t}");
    assert!(t.contains("expired.test: expired: "), "{t}");
    assert!(!t.contains("ok.test: "), "{t}");
    assert!(t.contains("3 of 4 sites need attention"), "{t}");

    // With --probe: nginx serves exactly what is on disk; the expired leaf
    // is seen (not an error) and judged untrusted.
    let (exit, json) = w.json(true);
    assert_eq!(exit, 1, "{json}");
    for (name, leaf) in [
        ("ok.test", &ok),
        ("expiring.test", &expiring),
        ("critical.test", &critical),
        ("expired.test", &expired),
    ] {
        let s = site(&json, name);
        assert_eq!(s["drift"], false, "{s}");
        let served = s["served"].as_array().expect("served");
        assert_eq!(served.len(), 1, "{s}");
        assert_eq!(served[0]["endpoint"], w.nginx.endpoint());
        assert_eq!(served[0]["sni"], name);
        assert_eq!(served[0]["sha256"], leaf.sha256.as_str(), "{s}");
        assert_eq!(served[0]["trusted"], name != "expired.test", "{s}");
        assert!(served[0]["error"].is_null(), "{s}");
    }

    // Read only: the state dir was never created.
    assert!(
        !w.state_dir().exists(),
        "status created {:?}",
        w.state_dir()
    );
}

#[test]
fn all_ok_exits_0() {
    let ca = Ca::new("certswap status root");
    let a = ca.leaf(&["a.test"]).days(-1, 90).build();
    let b = ca.leaf(&["b.test"]).days(-10, 365).build();
    let w = World::new(ca, &[("a.test", &a), ("b.test", &b)]);

    let out = w.status(&[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("all 2 sites ok"), "{}", text(&out));

    let (exit, json) = w.json(true);
    assert_eq!(exit, 0, "{json}");
    for name in ["a.test", "b.test"] {
        let s = site(&json, name);
        assert_eq!(s["state"], "ok");
        assert_eq!(s["drift"], false);
        assert_eq!(s["served"][0]["trusted"], true, "{s}");
    }

    let out = w.status(&["--probe"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let t = text(&out);
    assert!(
        t.lines()
            .next()
            .is_some_and(|h| h.ends_with("SERVED  DRIFT")),
        "{t}"
    );
    assert!(t.contains("all 2 sites ok"), "{t}");
    assert!(!w.state_dir().exists());
}

#[test]
fn renewed_on_disk_but_not_reloaded_is_drift_until_reload() {
    let ca = Ca::new("certswap status root");
    let a = ca.leaf(&["a.test"]).days(-300, 20).build();
    let b = ca.leaf(&["b.test"]).days(-1, 90).build();
    let w = World::new(ca, &[("a.test", &a), ("b.test", &b)]);

    // The renewal lands on disk (cert and key), and nobody reloads nginx.
    let renewed = w.ca.leaf(&["a.test"]).days(-1, 385).build();
    pki::write(&w.ssl, "a.test", &renewed);

    let (exit, json) = w.json(true);
    assert_eq!(exit, 1, "{json}");
    let s = site(&json, "a.test");
    assert_eq!(s["drift"], true, "{s}");
    assert_eq!(s["state"], "ok", "disk holds the renewal: {s}");
    assert!(days_left(&json, "a.test") >= 384, "{s}");
    assert_eq!(s["served"][0]["sha256"], a.sha256.as_str(), "{s}");
    assert_eq!(
        s["served"][0]["not_after"],
        a.not_after_rfc3339().replace("+00:00", "Z")
    );
    assert_eq!(site(&json, "b.test")["drift"], false);

    let out = w.status(&["--probe"]);
    assert_eq!(code(&out), 1);
    let t = text(&out);
    assert!(
        t.contains(&format!(
            "a.test: drift: a.test@{} serves {}",
            w.nginx.endpoint(),
            &a.sha256[..16]
        )),
        "{t}"
    );
    assert!(t.contains(&renewed.sha256[..16]), "{t}");
    assert!(!t.contains("b.test: drift"), "{t}");

    // Without --probe status cannot know: no drift verdict, exit 0.
    let (exit, json) = w.json(false);
    assert_eq!(exit, 0, "{json}");
    assert!(site(&json, "a.test")["drift"].is_null());

    w.nginx
        .reload_and_wait(Duration::from_secs(10))
        .expect("reload nginx");
    let (exit, json) = w.json(true);
    assert_eq!(exit, 0, "{json}");
    let s = site(&json, "a.test");
    assert_eq!(s["drift"], false, "{s}");
    assert_eq!(s["served"][0]["sha256"], renewed.sha256.as_str(), "{s}");
    assert!(!w.state_dir().exists());
}

#[test]
fn missing_or_garbage_cert_file_is_an_error_row() {
    let ca = Ca::new("certswap status root");
    let a = ca.leaf(&["a.test"]).days(-1, 90).build();
    let b = ca.leaf(&["b.test"]).days(-1, 90).build();
    let c = ca.leaf(&["c.test"]).days(-1, 90).build();
    let w = World::new(ca, &[("a.test", &a), ("b.test", &b), ("c.test", &c)]);
    // nginx keeps serving what it loaded; only the files change.
    std::fs::remove_file(w.ssl.join("a.test.pem")).expect("rm");
    std::fs::write(w.ssl.join("b.test.pem"), "not a certificate\n").expect("write");

    let (exit, json) = w.json(true);
    assert_eq!(exit, 1, "{json}");
    let s = site(&json, "a.test");
    assert_eq!(s["state"], "error", "{s}");
    let err = s["error"].as_str().expect("error");
    assert!(
        err.contains("a.test.pem") && err.contains("No such file"),
        "{err}"
    );
    for k in ["not_after", "days_left", "issuer", "spec", "drift"] {
        assert!(s[k].is_null(), "{k}: {s}");
    }
    assert_eq!(
        s["served"][0]["sha256"],
        a.sha256.as_str(),
        "still probed: {s}"
    );
    let s = site(&json, "b.test");
    assert_eq!(s["state"], "error", "{s}");
    assert!(
        s["error"]
            .as_str()
            .expect("error")
            .contains("no certificate found"),
        "{s}"
    );
    assert_eq!(site(&json, "c.test")["state"], "ok");

    let out = w.status(&[]);
    assert_eq!(code(&out), 1);
    let t = text(&out);
    assert!(
        t.contains("a.test: ") && t.contains("cannot read: No such file"),
        "{t}"
    );
    assert!(
        t.contains("b.test: ") && t.contains("no certificate found"),
        "{t}"
    );
    assert!(t.contains("2 of 3 sites need attention"), "{t}");
}

#[test]
fn unreachable_endpoint_is_a_problem() {
    let ca = Ca::new("certswap status root");
    let a = ca.leaf(&["a.test"]).days(-1, 90).build();
    let w = World::new(ca, &[("a.test", &a)]);
    let closed = free_port();
    let endpoint = w.nginx.endpoint();
    let text_cfg = std::fs::read_to_string(&w.config).expect("read config");
    let text_cfg = text_cfg.replace(
        &format!("endpoints = [\"{endpoint}\"]"),
        &format!("endpoints = [\"{endpoint}\", \"127.0.0.1:{closed}\"]"),
    );
    std::fs::write(&w.config, text_cfg).expect("write config");

    let (exit, json) = w.json(true);
    assert_eq!(exit, 1, "{json}");
    let s = site(&json, "a.test");
    assert_eq!(s["state"], "ok");
    assert_eq!(s["drift"], false, "the answer that came matches: {s}");
    let down = &s["served"][1];
    assert_eq!(down["endpoint"], format!("127.0.0.1:{closed}"));
    assert!(down["sha256"].is_null() && down["trusted"].is_null(), "{s}");
    assert!(
        down["error"].as_str().expect("error").contains("connect"),
        "{s}"
    );

    let out = w.status(&["--probe"]);
    assert_eq!(code(&out), 1);
    let t = text(&out);
    assert!(t.contains("a.test: unreachable: "), "{t}");
    assert!(t.contains(" 1/2 "), "{t}");
}

#[test]
fn unusable_ca_file_fails_only_with_probe() {
    let ca = Ca::new("certswap status root");
    let a = ca.leaf(&["a.test"]).days(-1, 90).build();
    let w = World::new(ca, &[("a.test", &a)]);
    std::fs::remove_file(w.dir.path().join("ca.pem")).expect("rm ca");

    let out = w.status(&["--probe"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ca.pem"), "{err}");
    assert_eq!(code(&w.status(&[])), 0);
}

/// A fleet of 1000 sites without --probe: one row each, quickly. The
/// target (≤ 200 ms in a release build) is not asserted here; the bound
/// only catches an accidental per-site handshake or quadratic work.
#[test]
fn a_thousand_sites_without_probe() {
    const SITES: usize = 1000;
    let dir = tempfile::tempdir().expect("tempdir");
    // An intermediate under a root, so the files are real full chains.
    let ca = Ca::new("certswap fleet root").intermediate("certswap fleet issuing CA");
    // A handful of distinct leaves, spread over 1000 distinct files.
    let leaves: Vec<Leaf> = (0..8)
        .map(|i| {
            ca.leaf(&[&format!("v{i}.test"), "www.v.test"])
                .days(-1, 40 + i * 10)
                .build()
        })
        .collect();
    let key = dir.path().join("shared.key");
    pki::write_key(&key, &leaves[0].key_pem);
    let mut cfg = format!(
        "state_dir = {}\n[server]\nkind = \"nginx\"\n",
        support::toml_path(&dir.path().join("state"))
    );
    for i in 0..SITES {
        let cert = dir.path().join(format!("s{i:04}.pem"));
        std::fs::write(&cert, leaves[i % leaves.len()].fullchain_pem()).expect("write cert");
        cfg.push_str(&format!(
            "[[site]]\nname = \"s{i:04}.test\"\ncert = {}\nkey = {}\nendpoints = [\"127.0.0.1:9\"]\n",
            support::toml_path(&cert),
            support::toml_path(&key),
        ));
    }
    let config = dir.path().join("certswap.toml");
    std::fs::write(&config, cfg).expect("write config");

    let out = run_status(&config, &["--json"]);
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["sites"].as_array().expect("sites").len(), SITES);
    // 40 days: ok, 50.. ok, so all ok.
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    // How long it takes is scripts/bench's (f), not a test's.
    assert!(!dir.path().join("state").exists());
}
