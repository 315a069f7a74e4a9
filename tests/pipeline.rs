//! The pipeline end to end on real servers, for every combination of
//! {nginx, apache} × {in-place, managed}: install verified, rollback
//! verified, rejections that change no byte and send no signal, a broken
//! server config, a crash at every step boundary repaired by the next
//! command. Plus the cases particular to one server or one mode.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use support::nginx::Nginx;
use support::pki;
use support::world::{ALIAS, Kind, Options, SITE, Server, World, path, text};
use support::{SiteSpec, served_sha256};

fn opts(kind: Kind, managed: bool) -> Options {
    let mut o = Options::new(kind);
    o.managed = managed;
    o
}

/// Generate one #[test] per server × mode for a fn(Options).
macro_rules! matrix {
    ($name:ident) => {
        mod $name {
            use super::*;
            #[test]
            fn nginx_in_place() {
                super::$name(opts(Kind::Nginx, false));
            }
            #[test]
            fn nginx_managed() {
                super::$name(opts(Kind::Nginx, true));
            }
            #[test]
            fn apache_in_place() {
                super::$name(opts(Kind::Apache, false));
            }
            #[test]
            fn apache_managed() {
                super::$name(opts(Kind::Apache, true));
            }
        }
    };
}

matrix!(install_is_verified_and_served);
matrix!(rollback_is_verified);
matrix!(rejections_change_nothing);
matrix!(broken_server_config_means_no_reload);
matrix!(a_crash_at_every_step_is_repaired);
matrix!(a_rollback_crashing_at_every_step_is_repaired);

fn install_is_verified_and_served(o: Options) {
    let managed = o.managed;
    let w = World::new(o);
    assert_eq!(w.served(), w.old.sha256);
    let new = w.renewed();
    let (cert, key) = w.bundle("new", &new);

    let out = w.install(&cert, &key, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["result"], "verified", "{v}");
    assert_eq!(v["site"], SITE);
    assert_eq!(v["old"]["sha256"], w.old.sha256.as_str());
    assert_eq!(v["new"]["sha256"], new.sha256.as_str());
    assert_eq!(v["new"]["not_after"], new.not_after_rfc3339().as_str());
    assert_eq!(v["served"][0]["sha256"], new.sha256.as_str());
    assert_eq!(v["served"][0]["trusted"], true);
    assert_eq!(v["days_added"], 365);
    assert!(v["error"].is_null());
    for step in ["validate", "swap", "configtest", "reload", "probe"] {
        assert!(v["timings_ms"][step].is_u64(), "timing {step} in {v}");
    }

    // An independent client sees the new leaf, and the files hold it.
    assert_eq!(w.served(), new.sha256);
    assert_eq!(pki::leaf_sha256_file(&w.cert), new.sha256);
    assert!(w.pair_matches());
    assert!(w.leftovers().is_empty(), "{:?}", w.leftovers());
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&w.key).expect("key").permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600, "the key keeps its 0600");

    if managed {
        // Both paths are links into live/SITE, which points at one version.
        let live = w.dir.path().join("state/live").join(SITE);
        assert_eq!(
            std::fs::read_link(&w.cert).expect("cert is a link"),
            live.join("cert.pem")
        );
        assert_eq!(
            std::fs::read_link(&w.key).expect("key is a link"),
            live.join("key.pem")
        );
        let version = std::fs::read_link(&live).expect("live is a link");
        assert!(version.starts_with("../archive"), "{version:?}");
    }
}

fn rollback_is_verified(o: Options) {
    let w = World::new(o);
    let new = w.renewed();
    let (cert, key) = w.bundle("new", &new);
    let out = w.install(&cert, &key, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("verified"),
        "{}",
        text(&out)
    );

    let out = w.run(&["rollback", "--site", SITE]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(w.served(), w.old.sha256);
    assert_eq!(pki::leaf_sha256_file(&w.cert), w.old.sha256);
    assert!(w.pair_matches());

    // Nothing earlier is left: a clear refusal, nothing changed.
    let before = w.snapshot();
    let out = w.run(&["rollback", "--site", SITE]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no earlier version"),
        "{}",
        text(&out)
    );
    assert_eq!(w.snapshot(), before);
}

/// A refused bundle: exit 1, the reason on stderr in one line, not a byte
/// changed, no signal sent (the same worker processes), old leaf served.
fn assert_rejected(
    w: &World,
    out: &Output,
    before: &BTreeMap<PathBuf, String>,
    workers: &[i32],
    reason: &str,
) {
    assert_eq!(out.status.code(), Some(1), "{}", text(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(reason),
        "expected {reason:?} in: {}",
        text(out)
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one sentence: {stderr}");
    assert_eq!(&w.snapshot(), before, "bytes on disk changed");
    assert_eq!(w.server.worker_pids(), workers, "the server was signalled");
    assert_eq!(w.served(), w.old.sha256);
}

fn rejections_change_nothing(o: Options) {
    let w = World::new(o);
    let before = w.snapshot();
    let workers = w.server.worker_pids();

    // A key that does not match the certificate.
    let (cert, _) = w.bundle("new", &w.renewed());
    let (_, wrong_key) = w.bundle("other", &w.renewed());
    let out = w.install(&cert, &wrong_key, &[]);
    assert_rejected(&w, &out, &before, &workers, "does not match");

    // Expired (even with --force).
    let expired = w.issuer().leaf(&[SITE, ALIAS]).days(-400, -1).build();
    let (cert, key) = w.bundle("expired", &expired);
    let out = w.install(&cert, &key, &["--force"]);
    assert_rejected(&w, &out, &before, &workers, "has expired");

    // A dropped name.
    let narrower = w.issuer().leaf(&[SITE]).days(-1, 385).build();
    let (cert, key) = w.bundle("narrow", &narrower);
    let out = w.install(&cert, &key, &[]);
    assert_rejected(&w, &out, &before, &workers, ALIAS);

    // Ends before the installed one (a downgrade).
    let shorter = w.issuer().leaf(&[SITE, ALIAS]).days(-1, 10).build();
    let (cert, key) = w.bundle("shorter", &shorter);
    let out = w.install(&cert, &key, &[]);
    assert_rejected(&w, &out, &before, &workers, "renewal must extend");

    // Dry run of a good bundle: valid, nothing touched.
    let (cert, key) = w.bundle("good", &w.renewed());
    let out = w.install(&cert, &key, &["--dry-run", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["result"], "dry_run");
    assert_eq!(w.snapshot(), before);
}

fn broken_server_config_means_no_reload(o: Options) {
    let kind = o.kind;
    let w = World::new(o);
    let conf = std::fs::read_to_string(w.server.conf_path()).expect("read server config");
    let broken = match kind {
        Kind::Nginx => conf.replacen("events {", "this_is_not_a_directive on;\nevents {", 1),
        Kind::Apache => format!("{conf}\nThisIsNotADirective on\n"),
    };
    w.server.set_config(&broken);
    let workers = w.server.worker_pids();
    let before = w.snapshot();

    let (cert, key) = w.bundle("new", &w.renewed());
    let out = w.install(&cert, &key, &["--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["result"], "rolled_back");
    let err = v["error"].as_str().expect("error text");
    assert!(err.contains("config test failed"), "{err}");
    assert!(
        err.to_lowercase().contains("thisisnotadirective")
            || err.contains("this_is_not_a_directive"),
        "{err}"
    );
    assert!(!err.contains("NOT served again"), "{err}");
    assert_eq!(
        w.server.worker_pids(),
        workers,
        "no reload without a passing config test"
    );
    assert_eq!(pki::leaf_sha256_file(&w.cert), w.old.sha256);
    assert!(w.pair_matches());
    assert_eq!(w.served(), w.old.sha256);
    // In place, every byte is back; managed, the site may have been adopted
    // (links into a version holding the same bytes), which is not a change
    // the server can see.
    if std::fs::symlink_metadata(&w.cert).is_ok_and(|m| !m.file_type().is_symlink()) {
        let after = w.snapshot();
        let ssl = |m: &BTreeMap<PathBuf, String>| -> Vec<(PathBuf, String)> {
            m.iter()
                .filter(|(p, _)| p.starts_with(w.dir.path().join("ssl")))
                .map(|(p, h)| (p.clone(), h.clone()))
                .collect()
        };
        assert_eq!(ssl(&after), ssl(&before));
    }
}

/// `certswap install` of `cert`/`key` that aborts at failpoint `point`.
fn install_crashing_at(w: &World, cert: &Path, key: &Path, point: &str) -> Output {
    w.install_env(cert, key, &[], &[(certswap::failpoint::ENV, point)])
}

fn a_crash_at_every_step_is_repaired(o: Options) {
    for point in certswap::failpoint::POINTS {
        let w = World::new(o.clone());
        let new = w.renewed();
        let (cert, key) = w.bundle("new", &new);
        let crashed = install_crashing_at(&w, &cert, &key, point);
        assert_eq!(
            crashed.status.code(),
            None,
            "{point}: the process must die by abort: {}",
            text(&crashed)
        );

        // The next command that touches the site repairs first. After the
        // commit point the install stands (and rollback then has a version
        // to go back to); before it the old pair comes back.
        let next = w.run(&["rollback", "--site", SITE]);
        assert!(w.leftovers().is_empty(), "{point}: {:?}", w.leftovers());
        assert!(w.pair_matches(), "{point}: cert and key on disk differ");
        w.server
            .configtest()
            .unwrap_or_else(|e| panic!("{point}: config test fails: {e}"));
        if *point == "after-commit" {
            assert_eq!(next.status.code(), Some(0), "{point}: {}", text(&next));
        } else {
            assert_eq!(next.status.code(), Some(2), "{point}: {}", text(&next));
            assert!(
                String::from_utf8_lossy(&next.stderr).contains("no earlier version"),
                "{point}: {}",
                text(&next)
            );
        }
        assert_eq!(pki::leaf_sha256_file(&w.cert), w.old.sha256, "{point}");
        assert_eq!(
            w.served(),
            w.old.sha256,
            "{point}: the server serves the whole old pair again"
        );

        // And a clean install afterwards is verified.
        let out = w.install(&cert, &key, &[]);
        assert_eq!(out.status.code(), Some(0), "{point}: {}", text(&out));
        assert_eq!(w.served(), new.sha256, "{point}");
    }
}

/// The rollback half of the crash matrix: `rollback --site` runs through
/// the same engine as install, so it passes every failpoint; killed at each,
/// the next command repairs first. Before the commit point the rollback is
/// undone (the new pair is back, and installing it again is "already
/// installed"); after it the rollback stands (the old pair, and installing
/// the new one again is verified). Either way: one whole pair, served.
fn a_rollback_crashing_at_every_step_is_repaired(o: Options) {
    for point in certswap::failpoint::POINTS {
        // A managed rollback flips one link to a saved version: it renames
        // no file, so it passes no per-file rename point and just ends.
        let passes = !(o.managed && point.starts_with("after-rename"));
        let w = World::new(o.clone());
        let new = w.renewed();
        let (cert, key) = w.bundle("new", &new);
        let out = w.install(&cert, &key, &[]);
        assert_eq!(out.status.code(), Some(0), "{point}: {}", text(&out));

        let crashed = w.run_env(
            &["rollback", "--site", SITE],
            &[(certswap::failpoint::ENV, point)],
        );
        assert_eq!(
            crashed.status.code(),
            if passes { None } else { Some(0) },
            "{point}: the rollback must die by abort: {}",
            text(&crashed)
        );

        let next = w.install(&cert, &key, &["--json"]);
        assert_eq!(next.status.code(), Some(0), "{point}: {}", text(&next));
        let result = serde_json::from_slice::<serde_json::Value>(&next.stdout)
            .map(|v| v["result"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default();
        let expected = match (*point, passes) {
            ("after-commit", _) | (_, false) => "verified",
            _ => "already_installed",
        };
        assert_eq!(result, expected, "{point}: {}", text(&next));
        assert!(w.leftovers().is_empty(), "{point}: {:?}", w.leftovers());
        assert!(w.pair_matches(), "{point}: cert and key on disk differ");
        w.server
            .configtest()
            .unwrap_or_else(|e| panic!("{point}: config test fails: {e}"));
        assert_eq!(pki::leaf_sha256_file(&w.cert), new.sha256, "{point}");
        assert_eq!(w.served(), new.sha256, "{point}");
    }
}

#[test]
fn own_csr_renewal_without_key_matches_the_installed_key() {
    let w = World::nginx();
    let same_key =
        w.ca.leaf(&[SITE, ALIAS])
            .days(-1, 385)
            .key(&w.old.key_pem)
            .build();
    let (cert, _) = w.bundle("csr", &same_key);
    let key_before = pki::sha256_file(&w.key);
    let out = w.run(&["install", "--site", SITE, "--cert", path(&cert)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(w.served(), same_key.sha256);
    assert_eq!(
        pki::sha256_file(&w.key),
        key_before,
        "the key file is not rewritten"
    );

    // A cert for another key, without --key: refused, nothing changed.
    let (cert, _) = w.bundle("other", &w.renewed());
    let before = w.snapshot();
    let out = w.run(&["install", "--site", SITE, "--cert", path(&cert)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(w.snapshot(), before);
}

/// Point the site's endpoint at a second nginx (think: a load balancer in
/// front) serving a copy of the site's installed cert, which certswap's
/// reloads do not touch. (A copy: an endpoint serving a cert the site's
/// file does not hold is refused before anything changes, tested in
/// acme_fit.rs.)
fn endpoint_behind_a_second_nginx(w: &World) -> (Nginx, pki::Leaf) {
    let lb_dir = w.dir.path().join("lb");
    std::fs::create_dir(&lb_dir).expect("mkdir");
    let lb_leaf = w.old.clone();
    let (lb_cert, lb_key) = pki::write(&lb_dir, "lb", &lb_leaf);
    let lb = Nginx::start(&[SiteSpec::new(SITE, &lb_cert, &lb_key)]);
    let conf = std::fs::read_to_string(&w.config).expect("config");
    let conf = conf.replace(
        &format!("127.0.0.1:{}", w.server.port()),
        &format!("127.0.0.1:{}", lb.port()),
    );
    std::fs::write(&w.config, conf).expect("write config");
    (lb, lb_leaf)
}

#[test]
fn an_endpoint_that_keeps_serving_another_cert_rolls_back() {
    // The site's endpoint is a second nginx (think: a load balancer in
    // front) that certswap's reload does not affect.
    let mut o = Options::new(Kind::Nginx);
    o.deadline = Some("2s".into());
    let w = World::new(o);
    let (lb, lb_leaf) = endpoint_behind_a_second_nginx(&w);

    let (cert, key) = w.bundle("new", &w.renewed());
    let out = w.install(&cert, &key, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("rolled back"), "{}", text(&out));
    assert!(stdout.contains("was not served"), "{}", text(&out));
    assert!(!stdout.contains("NOT served again"), "{}", text(&out));
    assert!(
        stdout.contains("the old certificate is served again (proven"),
        "{}",
        text(&out)
    );
    assert_eq!(
        pki::leaf_sha256_file(&w.cert),
        w.old.sha256,
        "old files restored"
    );
    assert!(w.pair_matches());
    assert_eq!(
        w.served(),
        w.old.sha256,
        "the real server serves the old cert again"
    );
    assert_eq!(served_sha256(lb.port(), SITE).expect("lb"), lb_leaf.sha256);
}

#[test]
fn a_crash_after_the_old_files_are_back_still_ends_in_a_reload() {
    // As above, the endpoint is a second nginx, so the install rolls back
    // after its reload. The crash comes when the old files are back but the
    // real server still runs the new ones: the next command must reload.
    let mut o = Options::new(Kind::Nginx);
    o.deadline = Some("2s".into());
    let w = World::new(o);
    let (_lb, _) = endpoint_behind_a_second_nginx(&w); // kept running

    let new = w.renewed();
    let (cert, key) = w.bundle("new", &new);
    let crashed = install_crashing_at(&w, &cert, &key, certswap::failpoint::AFTER_RESTORE);
    assert_eq!(crashed.status.code(), None, "{}", text(&crashed));
    assert_eq!(
        pki::leaf_sha256_file(&w.cert),
        w.old.sha256,
        "files are back"
    );
    assert_eq!(
        w.served(),
        new.sha256,
        "the server still runs the new files"
    );

    let next = w.run(&["rollback", "--site", SITE]);
    assert_eq!(next.status.code(), Some(2), "{}", text(&next));
    assert!(
        String::from_utf8_lossy(&next.stderr).contains("no earlier version"),
        "{}",
        text(&next)
    );
    assert_eq!(
        w.served(),
        w.old.sha256,
        "the repair reloaded: the real server serves the old cert"
    );
    assert!(w.pair_matches());
    assert!(w.leftovers().is_empty(), "{:?}", w.leftovers());
}

#[test]
fn apache_vendor_layout_installs_leaf_and_separate_chain() {
    let mut o = Options::new(Kind::Apache);
    o.chain_file = true;
    let w = World::new(o);
    let chain_path = w.chain.clone().expect("chain file");
    let new = w.renewed();
    // The vendor's apache download: NAME_public.crt, NAME_chain.crt, NAME.key.
    let dl = w.dir.path().join("download");
    std::fs::create_dir(&dl).expect("mkdir");
    let public = dl.join("shop_test_public.crt");
    let chain = dl.join("shop_test_chain.crt");
    std::fs::write(&public, &new.cert_pem).expect("public");
    std::fs::write(&chain, &new.chain_pem).expect("chain");
    let key = dl.join("shop_test.key");
    pki::write_key(&key, &new.key_pem);

    let out = w.install(&public, &key, &["--chain", path(&chain)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(w.served(), new.sha256);
    // The cert file holds the leaf only, the chain file the chain.
    assert_eq!(
        std::fs::read_to_string(&w.cert).expect("cert"),
        new.cert_pem
    );
    assert_eq!(
        certswap::bundle::read_certs(&chain_path)
            .expect("chain parses")
            .len(),
        1,
        "one intermediate in the chain file"
    );
    let served_chain = support::served_leaf_pem(w.server.port(), SITE).expect("served");
    assert!(!served_chain.is_empty());
}

#[test]
fn apache_dying_on_reload_is_restarted_with_the_old_pair() {
    // apache2 -t passes a mismatched pair and the graceful reload then makes
    // the parent exit. Validation would refuse the pair, so a test-only hook
    // forces it through to prove the recovery.
    let w = World::apache();
    let (cert, _) = w.bundle("new", &w.renewed());
    let (_, wrong_key) = w.bundle("other", &w.renewed());
    let out = w.install_env(
        &cert,
        &wrong_key,
        &["--json"],
        &[("CERTSWAP_TEST_SKIP_VALIDATION", "1")],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["result"], "rolled_back");
    let err = v["error"].as_str().expect("error");
    assert!(err.contains("exited during the reload"), "{err}");
    assert!(!err.contains("NOT served again"), "{err}");
    assert!(w.pair_matches());
    assert_eq!(
        w.served(),
        w.old.sha256,
        "apache is back, serving the old pair"
    );
    if let Server::Apache(a) = &w.server {
        assert!(a.serving_pid().is_some(), "an apache parent is running");
    }
}

#[test]
fn endpoints_left_out_of_the_config_are_discovered() {
    let w = World::nginx();
    let conf = std::fs::read_to_string(&w.config).expect("config");
    let without: String = conf
        .lines()
        .filter(|l| !l.starts_with("endpoints"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!without.contains("endpoints"), "{without}");
    std::fs::write(&w.config, without).expect("write config");
    let new = w.renewed();
    let (cert, key) = w.bundle("new", &new);
    let out = w.install(&cert, &key, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        v["served"][0]["endpoint"],
        format!("127.0.0.1:{}", w.server.port()).as_str(),
        "{v}"
    );
    assert_eq!(w.served(), new.sha256);
}
