//! The core pipeline end to end on a real nginx: install verified, rollback
//! verified, rejections that change no byte and send no signal, a broken
//! server config, an endpoint that serves another certificate, and a crash
//! at every step boundary repaired by the next command.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use support::nginx::Nginx;
use support::pki::{self, Ca, Leaf};
use support::{SiteSpec, certswap, served_sha256};

const SITE: &str = "shop.test";

/// One site on one real nginx, with its certswap config and state dir.
struct World {
    dir: tempfile::TempDir,
    ca: Ca,
    old: Leaf,
    nginx: Nginx,
    cert: PathBuf,
    key: PathBuf,
    config: PathBuf,
}

impl World {
    fn new() -> World {
        World::with_probe("")
    }

    /// `probe_extra` replaces the `[probe]` deadline (e.g. "2s").
    fn with_probe(deadline: &str) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let ssl = dir.path().join("ssl");
        std::fs::create_dir(&ssl).expect("mkdir ssl");
        let ca = Ca::new("certswap test root");
        let old = ca.leaf(&[SITE, "www.shop.test"]).days(-345, 20).build();
        let (cert, key) = pki::write(&ssl, SITE, &old);
        let nginx = Nginx::start(&[SiteSpec::new(SITE, &cert, &key).alias("www.shop.test")]);
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).expect("write ca");
        let mut text = nginx.certswap_config(
            &dir.path().join("state"),
            &[(SITE, &cert, &key)],
            Some(&ca_file),
        );
        if !deadline.is_empty() {
            text = text.replace("deadline = \"10s\"", &format!("deadline = \"{deadline}\""));
        }
        let config = dir.path().join("certswap.toml");
        std::fs::write(&config, text).expect("write config");
        World {
            dir,
            ca,
            old,
            nginx,
            cert,
            key,
            config,
        }
    }

    /// A renewal: same names, one year longer.
    fn renewed(&self) -> Leaf {
        self.ca.leaf(&[SITE, "www.shop.test"]).days(-1, 385).build()
    }

    /// Write a bundle under `incoming/NAME.{pem,key}`.
    fn bundle(&self, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        let dir = self.dir.path().join("incoming");
        std::fs::create_dir_all(&dir).expect("mkdir incoming");
        pki::write(&dir, name, leaf)
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = certswap();
        cmd.arg("--config").arg(&self.config).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run certswap")
    }

    fn install(&self, cert: &Path, key: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            "install",
            "--site",
            SITE,
            "--cert",
            path(cert),
            "--key",
            path(key),
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    fn served(&self) -> String {
        served_sha256(self.nginx.port(), SITE).expect("openssl s_client sees a certificate")
    }

    /// Hash of every file under the cert dir and the state dir.
    fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        for root in [self.dir.path().join("ssl"), self.dir.path().join("state")] {
            walk(&root, &mut out);
        }
        out
    }

    /// The cert and key on disk belong together (same public key).
    fn pair_matches(&self) -> bool {
        let certs = certswap::bundle::read_certs(&self.cert).expect("cert on disk parses");
        let key = certswap::bundle::read_key(&self.key).expect("key on disk parses");
        certs[0].spki_der == key.spki_der
    }
}

fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.file_name().is_some_and(|n| n != "lock") {
            out.insert(p.clone(), pki::sha256_file(&p));
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn install_is_verified_and_the_server_serves_the_new_leaf() {
    let w = World::new();
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

    // An independent client (openssl) sees the new leaf, and the files hold it.
    assert_eq!(w.served(), new.sha256);
    assert_eq!(pki::leaf_sha256_file(&w.cert), new.sha256);
    assert!(w.pair_matches());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&w.key).expect("key").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "key keeps its 0600");
    let leftovers: Vec<_> = std::fs::read_dir(w.cert.parent().expect("dir"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn rollback_puts_the_previous_certificate_back_verified() {
    let w = World::new();
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

/// A refused bundle: exit 1, the reason on stderr, not a byte changed, no
/// signal sent (the nginx workers are the same processes), old leaf served.
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
    assert_eq!(w.nginx.worker_pids(), workers, "nginx was signalled");
    assert_eq!(w.served(), w.old.sha256);
}

#[test]
fn a_key_that_does_not_match_is_rejected_and_nothing_changes() {
    let w = World::new();
    let new = w.renewed();
    let other = w.renewed();
    let (cert, _) = w.bundle("new", &new);
    let (_, wrong_key) = w.bundle("other", &other);
    let before = w.snapshot();
    let workers = w.nginx.worker_pids();
    let out = w.install(&cert, &wrong_key, &[]);
    assert_rejected(&w, &out, &before, &workers, "does not match");
}

#[test]
fn an_expired_certificate_is_rejected_and_nothing_changes() {
    let w = World::new();
    let expired = w.ca.leaf(&[SITE, "www.shop.test"]).days(-400, -1).build();
    let (cert, key) = w.bundle("expired", &expired);
    let before = w.snapshot();
    let workers = w.nginx.worker_pids();
    let out = w.install(&cert, &key, &["--force"]);
    assert_rejected(&w, &out, &before, &workers, "has expired");
}

#[test]
fn a_dropped_name_is_rejected_and_nothing_changes() {
    let w = World::new();
    let narrower = w.ca.leaf(&[SITE]).days(-1, 385).build();
    let (cert, key) = w.bundle("narrow", &narrower);
    let before = w.snapshot();
    let workers = w.nginx.worker_pids();
    let out = w.install(&cert, &key, &[]);
    assert_rejected(&w, &out, &before, &workers, "www.shop.test");
}

#[test]
fn dry_run_validates_and_changes_nothing() {
    let w = World::new();
    let (cert, key) = w.bundle("new", &w.renewed());
    let before = w.snapshot();
    let out = w.install(&cert, &key, &["--dry-run", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["result"], "dry_run");
    assert_eq!(w.snapshot(), before);
}

#[test]
fn own_csr_renewal_without_key_matches_the_installed_key() {
    let w = World::new();
    let same_key =
        w.ca.leaf(&[SITE, "www.shop.test"])
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

    // A cert for a different key, without --key: refused.
    let other = w.renewed();
    let (cert, _) = w.bundle("other", &other);
    let before = w.snapshot();
    let out = w.run(&["install", "--site", SITE, "--cert", path(&cert)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(w.snapshot(), before);
}

#[test]
fn a_broken_nginx_config_means_no_reload_and_exit_3() {
    let w = World::new();
    let conf = std::fs::read_to_string(w.nginx.conf_path()).expect("read nginx.conf");
    w.nginx
        .set_config(&conf.replacen("events {", "this_is_not_a_directive on;\nevents {", 1));
    let workers = w.nginx.worker_pids();
    let cert_before = pki::sha256_file(&w.cert);
    let key_before = pki::sha256_file(&w.key);

    let (cert, key) = w.bundle("new", &w.renewed());
    let out = w.install(&cert, &key, &["--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["result"], "rolled_back");
    let err = v["error"].as_str().expect("error text");
    assert!(err.contains("nginx config test failed"), "{err}");
    assert!(err.contains("this_is_not_a_directive"), "{err}");
    assert_eq!(
        w.nginx.worker_pids(),
        workers,
        "no reload without a passing config test"
    );
    assert_eq!(pki::sha256_file(&w.cert), cert_before);
    assert_eq!(pki::sha256_file(&w.key), key_before);
    assert_eq!(w.served(), w.old.sha256);
}

#[test]
fn an_endpoint_that_keeps_serving_another_cert_rolls_back() {
    // The site's endpoint is a second nginx (think: a load balancer in
    // front) that certswap's reload does not affect.
    let w = World::with_probe("2s");
    let ssl = w.dir.path().join("lb");
    std::fs::create_dir(&ssl).expect("mkdir");
    let lb_leaf = w.ca.leaf(&[SITE]).days(-1, 90).build();
    let (lb_cert, lb_key) = pki::write(&ssl, "lb", &lb_leaf);
    let lb = Nginx::start(&[SiteSpec::new(SITE, &lb_cert, &lb_key)]);
    let conf = std::fs::read_to_string(&w.config).expect("config");
    let conf = conf.replace(
        &format!("127.0.0.1:{}", w.nginx.port()),
        &format!("127.0.0.1:{}", lb.port()),
    );
    std::fs::write(&w.config, conf).expect("write config");

    let cert_before = pki::sha256_file(&w.cert);
    let (cert, key) = w.bundle("new", &w.renewed());
    let out = w.install(&cert, &key, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("rolled back"), "{}", text(&out));
    assert!(stdout.contains("was not served"), "{}", text(&out));
    assert!(!stdout.contains("NOT served again"), "{}", text(&out));
    assert_eq!(pki::sha256_file(&w.cert), cert_before, "old files restored");
    assert!(w.pair_matches());
    assert_eq!(
        w.served(),
        w.old.sha256,
        "the real server serves the old cert again"
    );
    assert_eq!(served_sha256(lb.port(), SITE).expect("lb"), lb_leaf.sha256);
}

#[test]
fn a_crash_at_every_step_is_repaired_by_the_next_command() {
    for point in certswap::failpoint::POINTS {
        if *point == "after-rename-chain" {
            continue;
        }
        let w = World::new();
        let new = w.renewed();
        let (cert, key) = w.bundle("new", &new);
        let crashed = w.run_env(
            &[
                "install",
                "--site",
                SITE,
                "--cert",
                path(&cert),
                "--key",
                path(&key),
            ],
            &[(certswap::failpoint::ENV, point)],
        );
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
        let leftovers: Vec<_> = std::fs::read_dir(w.cert.parent().expect("dir"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .filter(|n| n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{point}: {leftovers:?}");
        assert!(w.pair_matches(), "{point}: cert and key on disk differ");
        w.nginx
            .configtest()
            .unwrap_or_else(|e| panic!("{point}: nginx -t fails: {e}"));
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
        let served = w.served();
        assert_eq!(
            served, w.old.sha256,
            "{point}: the server serves the whole old pair again"
        );

        // And a clean install afterwards is verified.
        let out = w.install(&cert, &key, &[]);
        assert_eq!(out.status.code(), Some(0), "{point}: {}", text(&out));
        assert_eq!(w.served(), new.sha256, "{point}");
    }
}
