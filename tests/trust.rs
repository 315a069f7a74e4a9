//! "verified" means visitors' clients accept the site: a renewal whose
//! chain does not reach a trusted root, or that does not cover the site's
//! names, is refused before anything changes; forced through, the probe
//! sees the served chain is worse and rolls back.

mod support;

use support::pki::Ca;
use support::world::{ALIAS, Kind, Options, SITE, World, path, text};

fn world() -> World {
    let mut o = Options::new(Kind::Nginx);
    o.intermediate = true;
    o.deadline = Some("3s".into());
    World::new(o)
}

/// The renewal's leaf alone, without the intermediate it needs.
fn bundle_without_intermediate(w: &World) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let new = w.renewed();
    let dir = w.dir.path().join("incoming");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let cert = dir.join("leaf-only.pem");
    std::fs::write(&cert, &new.cert_pem).expect("write");
    let key = dir.join("leaf-only.key");
    support::pki::write_key(&key, &new.key_pem);
    (cert, key, new.sha256)
}

#[test]
fn a_chain_missing_its_intermediate_is_refused_and_nothing_changes() {
    let w = world();
    let (cert, key, _) = bundle_without_intermediate(&w);
    let before = w.snapshot();
    let workers = w.server.worker_pids();
    let out = w.install(&cert, &key, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("would not be trusted"), "{}", text(&out));
    assert!(
        err.contains("intermediate for"),
        "the reason names what is missing: {}",
        text(&out)
    );
    assert!(err.contains("certswap test intermediate"), "{}", text(&out));
    assert_eq!(w.snapshot(), before);
    assert_eq!(w.server.worker_pids(), workers);
    assert_eq!(w.served(), w.old.sha256);
}

#[test]
fn forced_past_validation_an_incomplete_served_chain_rolls_back() {
    let w = world();
    let (cert, key, new_sha) = bundle_without_intermediate(&w);
    let out = w.install(&cert, &key, &["--force", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["result"], "rolled_back", "{v}");
    let err = v["error"].as_str().expect("error");
    assert!(err.contains("clients would reject it"), "{err}");
    assert!(err.contains("incomplete"), "{err}");
    assert!(!err.contains("NOT served again"), "{err}");
    // The new leaf was served (that is what the probe judged), then the
    // rollback's proof shows the old, complete chain served again.
    assert_ne!(v["served"][0]["sha256"], new_sha.as_str(), "{v}");
    assert_eq!(v["served"][0]["sha256"], w.old.sha256.as_str(), "{v}");
    assert_eq!(v["served"][0]["chain_complete"], true, "{v}");
    assert_eq!(w.served(), w.old.sha256);
    assert!(w.pair_matches());
}

#[test]
fn a_certificate_from_another_root_is_refused() {
    let w = world();
    let other = Ca::new("some other root");
    let leaf = other.leaf(&[SITE, ALIAS]).days(-1, 385).build();
    let (cert, key) = w.bundle("other-root", &leaf);
    let before = w.snapshot();
    let out = w.install(&cert, &key, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("would not be trusted"),
        "{}",
        text(&out)
    );
    assert_eq!(w.snapshot(), before);
}

#[test]
fn names_the_site_has_must_be_covered_under_rfc_6125() {
    let w = world();
    let before = w.snapshot();
    // *.shop.test covers www.shop.test but not shop.test itself.
    let wildcard = w.issuer().leaf(&["*.shop.test"]).days(-1, 385).build();
    // A partial-label wildcard covers nothing.
    let partial = w.issuer().leaf(&["s*.test", ALIAS]).days(-1, 385).build();
    // Two labels deep is not one.
    let deep = w.issuer().leaf(&["*.test", ALIAS]).days(-1, 385).build();
    for (name, leaf) in [("wildcard", wildcard), ("partial", partial), ("deep", deep)] {
        let (cert, key) = w.bundle(name, &leaf);
        let out = w.install(&cert, &key, &[]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("does not cover") && err.contains(SITE),
            "{name}: {}",
            text(&out)
        );
        assert_eq!(w.snapshot(), before, "{name}");
    }
    // A wildcard plus the apex is a good renewal.
    let good = w
        .issuer()
        .leaf(&[SITE, "*.shop.test"])
        .days(-1, 385)
        .build();
    let (cert, key) = w.bundle("good", &good);
    let out = w.install(&cert, &key, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(w.served(), good.sha256);
}

#[test]
fn probe_reports_trust_completeness_and_names() {
    let w = world();
    let ca = w.dir.path().join("ca.pem");
    let target = format!("127.0.0.1:{}", w.server.port());
    let out = support::certswap()
        .args(["probe", &target, "--sni", SITE, "--ca", path(&ca), "--json"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["trusted"], true, "{v}");
    assert_eq!(v["chain_complete"], true, "{v}");
    assert_eq!(v["names_ok"], true, "{v}");
    assert_eq!(v["chain_length"], 2, "{v}");
    assert_eq!(v["sha256"], w.old.sha256.as_str());
    let out = support::certswap()
        .args([
            "probe",
            &target,
            "--sni",
            "other.test",
            "--ca",
            path(&ca),
            "--json",
        ])
        .output()
        .expect("run");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["names_ok"], false, "{v}");
    assert_eq!(v["trusted"], false, "{v}");
}
