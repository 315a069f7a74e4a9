//! A vhost that serves an RSA and an ECDSA certificate (two
//! `ssl_certificate` lines): each key type is installed and verified on its
//! own, with a probe that offers only that type's signature schemes, and
//! the other pair is left alone.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::pki::{self, Leaf};
use support::world::{ALIAS, SITE, Server, World, path, text};
use support::{ECDSA_SUITE, RSA_SUITE};

/// SHA-256 of the leaf of SITE served with only `cipher` (an RSA or an
/// ECDSA suite), as openssl sees it.
fn served_with(port: u16, cipher: &str) -> String {
    support::served_sha256_with_cipher(port, SITE, cipher)
        .unwrap_or_else(|e| panic!("no certificate with {cipher}: {e}"))
}

struct Dual {
    w: World,
    rsa_old: Leaf,
}

fn dual() -> Dual {
    let w = World::nginx();
    let ssl = w.dir.path().join("ssl");
    let key = pki::rsa_key_pem(&ssl, "old");
    let rsa_old = w
        .issuer()
        .leaf(&[SITE, ALIAS])
        .days(-345, 20)
        .key(&key)
        .build();
    let rsa_cert = ssl.join("shop.rsa.pem");
    let rsa_key_path = ssl.join("shop.rsa.key");
    std::fs::write(&rsa_cert, rsa_old.fullchain_pem()).expect("write");
    pki::write_key(&rsa_key_path, &rsa_old.key_pem);

    let Server::Nginx(nginx) = &w.server else {
        unreachable!()
    };
    let conf = std::fs::read_to_string(nginx.conf_path()).expect("nginx.conf");
    let marker = "ssl_certificate_key ";
    let at = conf.find(marker).expect("ssl_certificate_key line");
    let end = at + conf[at..].find(';').expect(";") + 1;
    let conf = format!(
        "{} ssl_certificate \"{}\"; ssl_certificate_key \"{}\";{}",
        &conf[..end],
        rsa_cert.display(),
        rsa_key_path.display(),
        &conf[end..]
    );
    nginx.set_config(&conf);
    nginx
        .reload_and_wait(Duration::from_secs(10))
        .expect("reload with two pairs");

    let mut cfg = std::fs::read_to_string(&w.config).expect("config");
    cfg.push_str(&format!(
        "\n[[site.pair]]\ncert = \"{}\"\nkey = \"{}\"\n",
        rsa_cert.display(),
        rsa_key_path.display()
    ));
    std::fs::write(&w.config, cfg).expect("write config");
    assert_eq!(served_with(w.server.port(), RSA_SUITE), rsa_old.sha256);
    assert_eq!(served_with(w.server.port(), ECDSA_SUITE), w.old.sha256);
    Dual { w, rsa_old }
}

/// [`dual`] with the pairs the other way round in certswap's config: the
/// RSA pair is the site's `cert`/`key`, the ECDSA one its `[[site.pair]]`
/// (what discovery writes for a vhost whose RSA lines come first).
fn dual_rsa_first() -> Dual {
    let d = dual();
    let ssl = d.w.dir.path().join("ssl");
    let cfg = std::fs::read_to_string(&d.w.config).expect("config");
    let rsa = (ssl.join("shop.rsa.pem"), ssl.join("shop.rsa.key"));
    let ec = (d.w.cert.clone(), d.w.key.clone());
    let swapped = cfg
        .replace(&rsa.0.display().to_string(), "@RSA_CERT@")
        .replace(&rsa.1.display().to_string(), "@RSA_KEY@")
        .replace(&ec.0.display().to_string(), &rsa.0.display().to_string())
        .replace(&ec.1.display().to_string(), &rsa.1.display().to_string())
        .replace("@RSA_CERT@", &ec.0.display().to_string())
        .replace("@RSA_KEY@", &ec.1.display().to_string());
    assert_ne!(swapped, cfg);
    std::fs::write(&d.w.config, swapped).expect("write config");
    d
}

/// A renewal of the RSA pair, with a new RSA key, as a bundle in `w`.
fn rsa_renewal(w: &World) -> (Leaf, PathBuf, PathBuf) {
    let key = pki::rsa_key_pem(&w.dir.path().join("ssl"), "new");
    renewal_with_key(w, &key, "rsa-new")
}

/// A renewal of SITE with the private key `key_pem`, as bundle `name`.
fn renewal_with_key(w: &World, key_pem: &str, name: &str) -> (Leaf, PathBuf, PathBuf) {
    let leaf = w
        .issuer()
        .leaf(&[SITE, ALIAS])
        .days(-1, 385)
        .key(key_pem)
        .build();
    let (cert, key) = w.bundle(name, &leaf);
    (leaf, cert, key)
}

#[test]
fn each_key_type_is_installed_and_verified_on_its_own() {
    let Dual { w, rsa_old } = dual();
    let port = w.server.port();

    // The RSA renewal replaces the RSA pair only.
    let (rsa_new, cert, key) = rsa_renewal(&w);
    let out = w.install(&cert, &key, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        v["served"][0]["sha256"],
        rsa_new.sha256.as_str(),
        "the probe saw the RSA leaf: {v}"
    );
    assert_eq!(v["old"]["sha256"], rsa_old.sha256.as_str(), "{v}");
    assert_eq!(served_with(port, RSA_SUITE), rsa_new.sha256);
    assert_eq!(
        served_with(port, ECDSA_SUITE),
        w.old.sha256,
        "the ECDSA pair is untouched"
    );

    // The ECDSA renewal replaces the ECDSA pair only.
    let ec_new = w.renewed();
    let (cert, key) = w.bundle("ec-new", &ec_new);
    let out = w.install(&cert, &key, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["served"][0]["sha256"], ec_new.sha256.as_str(), "{v}");
    assert_eq!(served_with(port, ECDSA_SUITE), ec_new.sha256);
    assert_eq!(served_with(port, RSA_SUITE), rsa_new.sha256);

    // Rollback needs to know which pair, and then touches only that one.
    let out = w.run(&["rollback", "--site", SITE]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--key-type"),
        "{}",
        text(&out)
    );
    let out = w.run(&["rollback", "--site", SITE, "--key-type", "rsa"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(served_with(port, RSA_SUITE), rsa_old.sha256);
    assert_eq!(served_with(port, ECDSA_SUITE), ec_new.sha256);

    // certswap's own probe sees each leaf when asked for one key type.
    for (kt, sha) in [("rsa", &rsa_old.sha256), ("ecdsa", &ec_new.sha256)] {
        let out = support::certswap()
            .args([
                "probe",
                &format!("127.0.0.1:{port}"),
                "--sni",
                SITE,
                "--key-type",
                kt,
                "--json",
            ])
            .output()
            .expect("probe");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["sha256"], sha.as_str(), "{kt}: {v}");
    }
}

#[test]
fn discover_lists_both_pairs() {
    let Dual { w, .. } = dual();
    let out = w.run(&["discover"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let toml = String::from_utf8_lossy(&out.stdout);
    assert!(toml.contains("[[site.pair]]"), "{toml}");
    assert!(toml.contains("shop.rsa.pem"), "{toml}");
    let _ = path;
}

#[test]
fn a_crashed_pair_install_is_repaired_and_proven_with_its_own_key_type() {
    let Dual { w, rsa_old } = dual();
    let port = w.server.port();
    let (rsa_new, cert, key) = rsa_renewal(&w);
    let crashed = w.install_env(
        &cert,
        &key,
        &[],
        &[(certswap::failpoint::ENV, "after-reload")],
    );
    assert_eq!(crashed.status.code(), None, "{}", text(&crashed));
    // The reload went out before the crash: the new RSA leaf is live.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while served_with(port, RSA_SUITE) != rsa_new.sha256 {
        assert!(
            std::time::Instant::now() < until,
            "the reload before the crash never took effect"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The next install (of the ECDSA pair) first repairs the RSA pair's
    // open change: old files back, one reload, and the proof that the old
    // RSA leaf is served again, seen with a probe that asks for RSA.
    let ec_new = w.renewed();
    let (cert, key) = w.bundle("ec-new", &ec_new);
    let out = w.install(&cert, &key, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("was rolled back"), "{}", text(&out));
    assert!(!stderr.contains("after recovery"), "{}", text(&out));
    assert_eq!(served_with(port, RSA_SUITE), rsa_old.sha256);
    assert_eq!(served_with(port, ECDSA_SUITE), ec_new.sha256);
}

#[test]
fn status_compares_the_primary_pair_with_what_is_served_for_its_key_type() {
    for Dual { w, rsa_old } in [dual(), dual_rsa_first()] {
        let out = w.run(&["status", "--probe", "--json"]);
        // 1: the certificates expire in 20 days.
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let site = &v["sites"][0];
        assert_eq!(site["drift"], false, "{site}");
        let primary = std::fs::read_to_string(&w.config).expect("config");
        let rsa_first = primary.find("shop.rsa.pem") < primary.find("[[site.pair]]");
        let expected = if rsa_first {
            &rsa_old.sha256
        } else {
            &w.old.sha256
        };
        assert_eq!(site["served"][0]["sha256"], expected.as_str(), "{site}");
    }
}

#[test]
fn the_agent_sees_no_drift_on_a_dual_certificate_site() {
    let Dual { w, .. } = dual_rsa_first();
    let mut cfg = std::fs::read_to_string(&w.config).expect("config");
    cfg.push_str("\n[agent]\ninterval = \"1h\"\nfix_drift = true\n");
    std::fs::write(&w.config, cfg).expect("write config");
    let out = w.run(&["run", "--once"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!log.contains("drift"), "{}", text(&out));
}

#[test]
fn a_bundle_that_fits_no_pair_is_refused_naming_the_file_and_nothing_changes() {
    let Dual { w, .. } = dual();
    let inbox = w.dir.path().join("inbox");
    std::fs::create_dir(&inbox).expect("mkdir inbox");

    // A truncated certificate, and a whole one with an Ed25519 key.
    let (_, truncated, rsa_key) = rsa_renewal(&w);
    let bytes = std::fs::read(&truncated).expect("read");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("truncate");
    let ed_pem = pki::genpkey(&w.dir.path().join("ed.key"), &["-algorithm", "ED25519"]);
    let (_, ed_cert, ed_key) = renewal_with_key(&w, &ed_pem, "ed-new");

    let before = w.snapshot();
    for (cert, key, why) in [
        (&truncated, &rsa_key, ""),
        (&ed_cert, &ed_key, "neither RSA nor ECDSA"),
    ] {
        let out = w.install(cert, key, &[]);
        let shown = text(&out);
        assert_eq!(out.status.code(), Some(1), "{shown}");
        assert!(shown.contains(path(cert)) && shown.contains(why), "{shown}");

        // The same bundle in a batch: that site's rejected row.
        std::fs::copy(cert, inbox.join(format!("{SITE}.pem"))).expect("copy");
        std::fs::copy(key, inbox.join(format!("{SITE}.key"))).expect("copy");
        let out = w.run(&["install", "--batch", path(&inbox), "--json"]);
        let shown = text(&out);
        assert_eq!(out.status.code(), Some(1), "{shown}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
        assert_eq!(v["result"], "rejected", "{v}");
        let error = v["error"].as_str().unwrap_or_default();
        assert!(error.contains(".pem") && error.contains(why), "{v}");
        assert_eq!(w.snapshot(), before, "not one byte changed");
    }
}

#[test]
fn status_shows_a_row_per_slot_each_probed_with_its_own_key_type() {
    let Dual { w, rsa_old } = dual();
    let port = w.server.port();
    let rsa_cert = w.dir.path().join("ssl").join("shop.rsa.pem");

    for probe in [false, true] {
        let mut args = vec!["status", "--json"];
        if probe {
            args.push("--probe");
        }
        let out = w.run(&args);
        // Both old leaves have under 20 days left: expiring (exit 1).
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let rows = v["sites"].as_array().expect("sites");
        assert_eq!(rows.len(), 2, "one row per slot: {v}");
        let ec = &rows[0];
        let rsa = &rows[1];
        for row in rows {
            assert_eq!(row["name"], SITE, "{v}");
        }
        assert_eq!(ec["key_type"], "ecdsa", "{v}");
        assert_eq!(ec["file"], path(&w.cert), "{v}");
        assert_eq!(ec["state"], "expiring", "{v}");
        assert_eq!(rsa["key_type"], "rsa", "{v}");
        assert_eq!(rsa["file"], path(&rsa_cert), "{v}");
        assert_eq!(rsa["state"], "expiring", "{v}");
        if !probe {
            assert_eq!(rsa["served"], serde_json::json!([]), "{v}");
            continue;
        }
        // Each row's served leaf is its own slot's, as openssl sees it
        // with only that key type's suite.
        assert_eq!(ec["served"][0]["sha256"], w.old.sha256.as_str(), "{v}");
        assert_eq!(ec["served"][0]["sha256"], served_with(port, ECDSA_SUITE));
        assert_eq!(rsa["served"][0]["sha256"], rsa_old.sha256.as_str(), "{v}");
        assert_eq!(rsa["served"][0]["sha256"], served_with(port, RSA_SUITE));
        assert_eq!(ec["drift"], false, "{v}");
        assert_eq!(rsa["drift"], false, "{v}");
    }

    // The text has both rows, told apart by key type, counted as one site.
    let out = w.run(&["status", "--probe"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains(&format!("{SITE} [ecdsa] ")), "{shown}");
    assert!(shown.contains(&format!("{SITE} [rsa] ")), "{shown}");
    assert!(
        shown.contains(&format!("{SITE} [rsa]: expiring: ")),
        "{shown}"
    );
    assert!(
        shown.ends_with("\n1 of 1 sites need attention\n"),
        "{shown}"
    );
}

#[test]
fn the_agent_sees_and_fixes_drift_on_the_rsa_pair_of_a_dual_site() {
    let Dual { w, rsa_old } = dual();
    let port = w.server.port();
    let ssl = w.dir.path().join("ssl");
    // The RSA pair renewed on disk but never reloaded: the ECDSA `cert` is
    // served as on disk, only the RSA slot drifts.
    let (rsa_new, cert, key) = rsa_renewal(&w);
    std::fs::copy(&cert, ssl.join("shop.rsa.pem")).expect("copy cert");
    let key_pem = std::fs::read_to_string(&key).expect("key");
    pki::write_key(&ssl.join("shop.rsa.key"), &key_pem);
    assert_eq!(served_with(port, RSA_SUITE), rsa_old.sha256);

    let mut cfg = std::fs::read_to_string(&w.config).expect("config");
    cfg.push_str("\n[agent]\ninterval = \"1h\"\nfix_drift = true\n");
    std::fs::write(&w.config, cfg).expect("write config");
    let out = w.run(&["run", "--once"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        log.contains(&format!("drift: the endpoint serves {}", rsa_old.sha256)),
        "{}",
        text(&out)
    );
    assert!(
        !log.contains(&format!("drift: the endpoint serves {}", w.old.sha256)),
        "the ECDSA slot does not drift: {}",
        text(&out)
    );
    assert!(log.contains("drift fixed"), "{}", text(&out));
    assert_eq!(served_with(port, RSA_SUITE), rsa_new.sha256);
    assert_eq!(served_with(port, ECDSA_SUITE), w.old.sha256);
}
