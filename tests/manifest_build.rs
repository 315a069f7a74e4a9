//! `certswap manifest build DIR`: the publisher's manifest from a folder of
//! renewals, checked by the agent's own rules. The layout and JSON are the
//! ones the old `examples/fleet/build-manifest` script wrote; one bad site
//! leaves the old manifest byte for byte.

mod support;

use std::fs;
use std::path::Path;

use support::certswap;
use support::pki::{self, Ca, Leaf};

fn put(dir: &Path, site: &str, renewal: &str, leaf: &Leaf, with_key: bool) {
    let d = dir.join(site).join(renewal);
    fs::create_dir_all(&d).expect("mkdir renewal");
    fs::write(d.join("fullchain.pem"), leaf.fullchain_pem()).expect("cert");
    if with_key {
        fs::write(d.join("privkey.pem"), &leaf.key_pem).expect("key");
    }
}

fn build(dir: &Path, args: &[&str]) -> std::process::Output {
    certswap()
        .args(["manifest", "build"])
        .arg(dir)
        .args(args)
        .output()
        .expect("run certswap manifest build")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn newest_renewal_per_site_with_hashes_not_after_and_percents() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let ca = Ca::new("publish test root");
    let old = ca.leaf(&["www.a.test"]).days(-300, 60).build();
    let new = ca.leaf(&["www.a.test"]).days(-1, 400).build();
    let api = ca.leaf(&["api.a.test"]).days(-1, 300).build();
    put(dir, "www.a.test", "2026-06-01", &old, true);
    put(dir, "www.a.test", "2027-06-01", &new, true);
    put(dir, "api.a.test", "2027-05-20", &api, false);
    fs::create_dir_all(dir.join("empty.a.test/2027")).expect("empty site");
    fs::create_dir_all(dir.join(".git")).expect("hidden");

    let out = build(
        dir,
        &["--percent", "10", "--site-percent", "api.a.test=100"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("empty.a.test"),
        "{}",
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("www.a.test\t2027-06-01\tcert+key\tnotAfter"),
        "{stdout}"
    );
    assert!(
        stdout.contains("api.a.test\t2027-05-20\tcert only"),
        "{stdout}"
    );
    assert!(stdout.contains("wrote "), "{stdout}");

    let bytes = fs::read(dir.join("manifest.json")).expect("manifest");
    let m: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(m["version"], 1);
    assert!(m.get("paused").is_none(), "{m}");
    let b = m["bundles"].as_array().expect("bundles");
    assert_eq!(b.len(), 2, "{m}");
    assert_eq!(b[0]["site"], "api.a.test");
    assert!(b[0].get("key").is_none());
    assert_eq!(b[0]["rollout"]["percent"], 100);
    assert_eq!(b[1]["site"], "www.a.test");
    assert_eq!(b[1]["cert"], "www.a.test/2027-06-01/fullchain.pem");
    assert_eq!(b[1]["key"], "www.a.test/2027-06-01/privkey.pem");
    assert_eq!(
        b[1]["cert_sha256"],
        pki::sha256_file(&dir.join("www.a.test/2027-06-01/fullchain.pem"))
    );
    assert_eq!(
        b[1]["key_sha256"],
        pki::sha256_file(&dir.join("www.a.test/2027-06-01/privkey.pem"))
    );
    let na = new.not_after_rfc3339().replace("+00:00", "Z");
    assert_eq!(b[1]["not_after"], na.as_str());
    assert_eq!(b[1]["rollout"]["percent"], 10);
    // The agent's parser reads what the publisher wrote.
    let parsed = certswap::manifest::parse(&bytes).expect("agent parses it");
    assert_eq!(parsed.bundles[1].percent(), 10);
    // Two-space JSON with a final newline, like the script wrote.
    assert!(
        text(&bytes).starts_with("{\n  \"version\": 1,\n"),
        "{}",
        text(&bytes)
    );
    assert!(bytes.ends_with(b"}\n"));

    // --paused and --json.
    let out = build(dir, &["--paused", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["paused"], true);
    assert_eq!(v["bundles"][1]["leaf_sha256"], new.sha256.as_str());
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).expect("m")).expect("json");
    assert_eq!(m["paused"], true);
    assert_eq!(m["bundles"][1]["rollout"]["percent"], 100);
}

/// Writes one broken site into the published folder.
type MakeBad<'a> = Box<dyn Fn(&Path) + 'a>;

#[test]
fn one_bad_site_exits_1_and_leaves_the_old_manifest_byte_for_byte() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let ca = Ca::new("publish test root");
    let good = ca.leaf(&["good.test"]).days(-1, 300).build();
    put(dir, "good.test", "2027", &good, true);
    let out = build(dir, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = fs::read(dir.join("manifest.json")).expect("manifest");

    let other = ca.leaf(&["bad.test"]).days(-1, 300).build();
    let mismatched = Leaf {
        key_pem: other.key_pem.clone(),
        ..ca.leaf(&["bad.test"]).days(-1, 300).build()
    };
    let expired = ca.leaf(&["bad.test"]).days(-300, -1).build();
    let wrong_name = ca.leaf(&["other.test"]).days(-1, 300).build();
    let cases: Vec<(&str, MakeBad)> = vec![
        (
            "does not match",
            Box::new(|d: &Path| put(d, "bad.test", "2027", &mismatched, true)),
        ),
        (
            "has expired",
            Box::new(|d: &Path| put(d, "bad.test", "2027", &expired, true)),
        ),
        (
            "does not cover bad.test",
            Box::new(|d: &Path| put(d, "bad.test", "2027", &wrong_name, true)),
        ),
        (
            "no certificate found",
            Box::new(|d: &Path| {
                fs::create_dir_all(d.join("bad.test/2027")).expect("mkdir");
                fs::write(d.join("bad.test/2027/fullchain.pem"), "not a certificate\n").expect("w");
                let _ = fs::remove_file(d.join("bad.test/2027/privkey.pem"));
            }),
        ),
        (
            "not a site name",
            Box::new(|d: &Path| {
                fs::create_dir_all(d.join("bad site/2027")).expect("mkdir");
                fs::write(d.join("bad site/2027/fullchain.pem"), good.fullchain_pem()).expect("w");
            }),
        ),
    ];
    for (want, make) in cases {
        let _ = fs::remove_dir_all(dir.join("bad.test"));
        let _ = fs::remove_dir_all(dir.join("bad site"));
        make(dir);
        let out = build(dir, &[]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{want}: {err}");
        assert!(err.contains(want), "{want}: {err}");
        assert!(err.contains("was not changed"), "{err}");
        assert_eq!(
            fs::read(dir.join("manifest.json")).expect("manifest"),
            before,
            "{want}: the old manifest changed"
        );
        assert!(!dir.join(".manifest.json.tmp").exists());
    }
    let _ = fs::remove_dir_all(dir.join("bad.test"));
    let _ = fs::remove_dir_all(dir.join("bad site"));
    // Unknown --site-percent and a percent above 100 change nothing either.
    let out = build(dir, &["--site-percent", "nope.test=5"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = build(dir, &["--percent", "101"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(
        fs::read(dir.join("manifest.json")).expect("manifest"),
        before
    );
}

#[test]
fn rollout_changes_nothing_before_prometheus_answers_and_never_prints_its_password() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let ca = Ca::new("publish test root");
    put(
        dir,
        "good.test",
        "2026",
        &ca.leaf(&["good.test"]).days(-100, 30).build(),
        true,
    );
    assert!(build(dir, &[]).status.success());
    let before = fs::read(dir.join("manifest.json")).expect("manifest");
    put(
        dir,
        "good.test",
        "2027",
        &ca.leaf(&["good.test"]).days(-1, 300).build(),
        true,
    );
    // A closed port: nothing listens on 127.0.0.1:1.
    let rollout = |args: &[&str]| {
        certswap()
            .arg("rollout")
            .arg(dir)
            .args(["--prometheus", "http://ops:s3cret-pw@127.0.0.1:1/prom"])
            .args(args)
            .output()
            .expect("run certswap rollout")
    };
    let out = rollout(&["--waves", "5,100", "--soak", "1s", "--deadline", "5s"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(
        !err.contains("s3cret") && !text(&out.stdout).contains("s3cret"),
        "{err}"
    );
    assert_eq!(
        fs::read(dir.join("manifest.json")).expect("manifest"),
        before
    );

    // A bad renewal: exit 1 before Prometheus is asked, nothing written.
    let other = ca.leaf(&["good.test"]).days(-1, 300).build();
    let mut bad = ca.leaf(&["good.test"]).days(-1, 300).build();
    bad.key_pem = other.key_pem;
    put(dir, "good.test", "2028", &bad, true);
    let out = rollout(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("does not match"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        fs::read(dir.join("manifest.json")).expect("manifest"),
        before
    );

    for bad_waves in ["25,5", "0", "5,200"] {
        let out = rollout(&["--waves", bad_waves]);
        assert_eq!(out.status.code(), Some(2), "{bad_waves}");
    }
    assert_eq!(
        fs::read(dir.join("manifest.json")).expect("manifest"),
        before
    );
}
