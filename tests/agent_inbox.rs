//! The agent's inbox on real servers, the agent run as a child process:
//! a `SITE.pem`/`SITE.key` pair, vendor zips for nginx and apache (with a
//! vendor prefix, and matched by SANs), bad bundles quarantined with their
//! reason, zips with `../`, absolute and symlink entries refused without a
//! byte written outside, and the long-running daemon: notify, metrics,
//! SIGHUP, SIGTERM (also in the middle of an install).

mod agent_util;
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_util::{World, scrape, text, zip_of, zip_with_symlink};
use nix::sys::signal::Signal;
use support::apache::Apache;
use support::pki::{self, Ca};
use support::{SiteSpec, free_port, toml_path};

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            all_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn inbox_pair_is_installed_verified_and_moved_to_done() {
    let w = World::nginx(&["a.test"], "");
    w.set_extra(&w.inbox_source());
    let new = w.renewed("a.test");
    w.drop_file("a.test.pem", new.fullchain_pem().as_bytes());
    w.drop_file("a.test.key", new.key_pem.as_bytes());
    // Not ours: hidden and temporary files stay where they are.
    w.drop_file("b.test.pem.tmp", b"half written");
    fs::write(w.inbox.join(".c.test.pem"), b"hidden").expect("hidden file");

    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("installed and verified"), "{log}");
    assert_eq!(w.served("a.test"), new.sha256);
    assert_eq!(pki::leaf_sha256_file(&w.site("a.test").cert), new.sha256);

    let done = w.stamps("done");
    assert_eq!(done.len(), 1, "{done:?}");
    // The installed key is not kept in done/ (issue 16): removed.txt says so.
    assert_eq!(names_in(&done[0]), vec!["a.test.pem", "removed.txt"]);
    assert_eq!(w.inbox_files(), vec![".c.test.pem", "b.test.pem.tmp"]);
    assert!(w.inbox.join(".c.test.pem").exists());
    assert!(w.stamps("failed").is_empty());
}

#[test]
fn vendor_zips_for_nginx_are_matched_by_prefixed_name_and_by_sans() {
    let w = World::nginx(&["www.shop.test", "shop.test"], "");
    w.set_extra(&w.inbox_source());
    let www = w.renewed("www.shop.test");
    let apex = w.renewed("shop.test");
    // Vendor-style names: a numeric prefix and a server-type suffix on the
    // zip, underscores for dots inside.
    w.drop_file(
        "12345_www.shop.test_nginx.zip",
        &zip_of(&[
            ("www_shop_test.pem", www.fullchain_pem().as_bytes()),
            ("www_shop_test.key", www.key_pem.as_bytes()),
            ("README.txt", b"Thank you for your order"),
        ]),
    );
    // Nothing in these names says which site: the SANs do.
    w.drop_file(
        "download (3).zip",
        &zip_of(&[
            ("certificate.pem", apex.fullchain_pem().as_bytes()),
            ("private.key", apex.key_pem.as_bytes()),
        ]),
    );

    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("bundles=2"),
        "one batch of two expected:\n{log}"
    );
    assert_eq!(w.served("www.shop.test"), www.sha256);
    assert_eq!(w.served("shop.test"), apex.sha256);
    assert_eq!(w.stamps("done").len(), 2, "{log}");
    assert!(w.inbox_files().is_empty());
}

#[test]
fn vendor_zip_for_apache_installs_cert_and_chain_on_a_real_apache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ssl = dir.path().join("ssl");
    fs::create_dir(&ssl).expect("mkdir");
    let root = Ca::new("certswap apache root");
    let int = root.intermediate("certswap apache issuing CA");
    let old = int.leaf(&["www.shop.test"]).days(-345, 20).build();
    let cert = ssl.join("www.shop.test.crt");
    let key = ssl.join("www.shop.test.key");
    let chain = ssl.join("www.shop.test_chain.crt");
    fs::write(&cert, &old.cert_pem).expect("cert");
    pki::write_key(&key, &old.key_pem);
    fs::write(&chain, &old.chain_pem).expect("chain");
    let apache = Apache::start(&[SiteSpec::new("www.shop.test", &cert, &key).chain(&chain)]);
    let ca_file = dir.path().join("ca.pem");
    fs::write(&ca_file, root.cert_pem()).expect("ca");
    let inbox = dir.path().join("inbox");
    let config = dir.path().join("certswap.toml");
    fs::write(
        &config,
        format!(
            "{}\n[[source]]\nkind = \"inbox\"\npath = {}\ndebounce = \"200ms\"\n",
            apache.certswap_config(
                &dir.path().join("state"),
                &[("www.shop.test", &cert, &key)],
                Some(&ca_file)
            ),
            toml_path(&inbox)
        ),
    )
    .expect("config");

    let new = int.leaf(&["www.shop.test"]).days(-1, 385).build();
    fs::create_dir(&inbox).expect("inbox");
    fs::write(
        inbox.join("98765_www_shop_test_apache.zip"),
        zip_of(&[
            ("www_shop_test_public.crt", new.cert_pem.as_bytes()),
            ("www_shop_test_chain.crt", new.chain_pem.as_bytes()),
            ("www_shop_test.key", new.key_pem.as_bytes()),
        ]),
    )
    .expect("zip");

    let mut cmd = agent_util::agent_cmd(&config);
    cmd.arg("--once");
    let out = agent_util::output_within(cmd, Duration::from_secs(90));
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("installed and verified"), "{log}");
    assert_eq!(
        support::served_sha256(apache.port(), "www.shop.test").expect("served"),
        new.sha256
    );
    assert_eq!(pki::leaf_sha256_file(&cert), new.sha256);
    assert_eq!(fs::read_to_string(&chain).expect("chain"), new.chain_pem);
    assert_eq!(names_in(&inbox.join("done")).len(), 1);
}

#[test]
fn bad_bundles_are_quarantined_with_the_reason_the_cli_gives() {
    let w = World::nginx(&["a.test"], "");
    w.set_extra(&w.inbox_source());
    let new = w.renewed("a.test");
    let other = w.renewed("a.test");
    // A pair whose key belongs to another certificate.
    w.drop_file("a.test.pem", new.fullchain_pem().as_bytes());
    w.drop_file("a.test.key", other.key_pem.as_bytes());
    // A bundle for a name this host does not serve.
    let stranger = w.ca.leaf(&["stranger.test"]).days(-1, 385).build();
    w.drop_file("stranger.test.pem", stranger.fullchain_pem().as_bytes());
    w.drop_file("stranger.test.key", stranger.key_pem.as_bytes());
    let before = w.served("a.test");

    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(
        out.status.success(),
        "a bad bundle is not an agent failure:\n{log}"
    );
    assert_eq!(w.served("a.test"), before, "the old certificate stays");
    assert_eq!(
        pki::sha256_file(&w.site("a.test").key),
        agent_util::sha256(w.site("a.test").old.key_pem.as_bytes())
    );

    let failed = w.stamps("failed");
    assert_eq!(failed.len(), 2, "{failed:?}\n{log}");
    let mut reasons = Vec::new();
    for d in &failed {
        let names = names_in(d);
        assert!(names.contains(&"reason.txt".to_string()), "{names:?}");
        let reason = fs::read_to_string(d.join("reason.txt")).expect("reason");
        assert_eq!(reason.trim().lines().count(), 1, "one sentence: {reason:?}");
        reasons.push((names, reason));
    }
    let (_, mismatch) = reasons
        .iter()
        .find(|(n, _)| n.contains(&"a.test.pem".to_string()))
        .expect("a.test quarantined");
    assert!(
        mismatch.contains("the private key does not match the certificate"),
        "{mismatch}"
    );
    // The reason names the file as it was in the inbox, not a work copy.
    assert!(!mismatch.contains("/agent/work/"), "{mismatch}");
    let (_, stranger_reason) = reasons
        .iter()
        .find(|(n, _)| n.contains(&"stranger.test.pem".to_string()))
        .expect("stranger quarantined");
    assert!(
        stranger_reason.contains("no configured site matches"),
        "{stranger_reason}"
    );
    assert!(w.inbox_files().is_empty());
}

#[test]
fn zips_with_path_or_symlink_entries_are_refused_and_nothing_is_written_outside() {
    let w = World::nginx(&["a.test"], "");
    w.set_extra(&w.inbox_source());
    let new = w.renewed("a.test");
    let escaped_abs =
        std::env::temp_dir().join(format!("certswap-escape-{}.pem", std::process::id()));
    let _ = fs::remove_file(&escaped_abs);
    let abs_name = escaped_abs.to_str().expect("utf-8").to_string();

    w.drop_file(
        "a.test_slip.zip",
        &zip_of(&[
            ("../../escaped.pem", new.fullchain_pem().as_bytes()),
            ("a.test.key", new.key_pem.as_bytes()),
        ]),
    );
    w.drop_file(
        "a.test_abs.zip",
        &zip_of(&[
            (abs_name.as_str(), new.fullchain_pem().as_bytes()),
            ("a.test.key", new.key_pem.as_bytes()),
        ]),
    );
    w.drop_file(
        "a.test_link.zip",
        &zip_with_symlink(
            &[("a.test.key", new.key_pem.as_bytes())],
            "a.test.pem",
            "/etc/passwd",
        ),
    );
    let before = w.served("a.test");

    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(w.served("a.test"), before);

    let failed = w.stamps("failed");
    assert_eq!(failed.len(), 3, "{failed:?}\n{log}");
    let reasons: Vec<String> = failed
        .iter()
        .map(|d| fs::read_to_string(d.join("reason.txt")).expect("reason.txt"))
        .collect();
    let all = reasons.join("");
    assert!(all.contains("\"../../escaped.pem\" contains `..`"), "{all}");
    assert!(all.contains("is an absolute path"), "{all}");
    assert!(all.contains("is a symbolic link"), "{all}");
    assert!(all.contains("refused"), "{all}");

    // Nothing named after an entry exists anywhere: not above the inbox,
    // not in the state dir, not at the absolute path.
    assert!(!escaped_abs.exists());
    let mut files = Vec::new();
    all_files(w.dir.path(), &mut files);
    for f in &files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(name != "escaped.pem", "zip-slip wrote {f:?}");
    }
    // The work directory is gone after the pass.
    let work = w.state.join("agent/work");
    assert!(
        fs::read_dir(&work).map(|rd| rd.count()).unwrap_or(0) == 0,
        "work dir left: {:?}",
        names_in(&work)
    );
}

#[test]
fn daemon_installs_on_notify_serves_metrics_rereads_config_and_stops_on_sigterm() {
    let port = free_port();
    let w = World::nginx(&["a.test"], "");
    let extra = format!(
        "[agent]\ninterval = \"1h\"\nmetrics_listen = \"127.0.0.1:{port}\"\n\n{}",
        w.inbox_source()
    );
    w.set_extra(&extra);
    let mut d = w.spawn();
    let addr = format!("127.0.0.1:{port}");

    // The first full pass runs at start: expiry and drift are measured.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut metrics = String::new();
    while Instant::now() < deadline {
        metrics = scrape(&addr).unwrap_or_default();
        if metrics.contains("certswap_drift{site=\"a.test\"} 0") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let endpoint = format!("a.test@127.0.0.1:{}", w.nginx.port());
    for want in [
        "certswap_cert_days_left{site=\"a.test\"} 19".to_string(),
        format!(
            "certswap_cert_not_after_seconds{{site=\"a.test\"}} {}",
            w.site("a.test").old.not_after.unix_timestamp()
        ),
        format!(
            "certswap_served_not_after_seconds{{site=\"a.test\",endpoint=\"{endpoint}\"}} {}",
            w.site("a.test").old.not_after.unix_timestamp()
        ),
        "certswap_drift{site=\"a.test\"} 0".to_string(),
        "certswap_source_last_success_timestamp_seconds{source=\"inbox:".to_string(),
    ] {
        assert!(
            metrics.contains(&want),
            "{want} not in\n{metrics}\n{}",
            d.log()
        );
    }
    assert!(d.log().contains("expires soon"), "{}", d.log());

    // A pair dropped while the agent sleeps (interval 1h): notify wakes it.
    let new = w.renewed("a.test");
    w.drop_file("a.test.key", new.key_pem.as_bytes());
    w.drop_file("a.test.pem", new.fullchain_pem().as_bytes());
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.stamps("done").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(w.stamps("done").len(), 1, "{}", d.log());
    assert_eq!(w.served("a.test"), new.sha256);

    let metrics = scrape(&addr).expect("scrape");
    for want in [
        "certswap_install_total{site=\"a.test\",result=\"verified\"} 1".to_string(),
        "certswap_last_install_timestamp_seconds{site=\"a.test\"}".to_string(),
        format!(
            "certswap_cert_not_after_seconds{{site=\"a.test\"}} {}",
            new.not_after.unix_timestamp()
        ),
        "certswap_cert_days_left{site=\"a.test\"} 384".to_string(),
        "certswap_source_errors_total{source=\"inbox:".to_string(),
        format!(
            "certswap_served_not_after_seconds{{site=\"a.test\",endpoint=\"{endpoint}\"}} {}",
            new.not_after.unix_timestamp()
        ),
    ] {
        assert!(metrics.contains(&want), "{want} not in\n{metrics}");
    }

    // SIGHUP re-reads the config (and runs a full pass).
    let passes = d.count("installing as one batch");
    d.signal(Signal::SIGHUP);
    assert!(
        d.wait_log("config re-read", Duration::from_secs(10)),
        "{}",
        d.log()
    );
    assert_eq!(d.count("installing as one batch"), passes);

    // SIGTERM: exit 0 within seconds.
    let t = Instant::now();
    d.signal(Signal::SIGTERM);
    let status = d
        .wait_exit(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", d.log());
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(d.log().contains("agent stopped"), "{}", d.log());
}

#[test]
fn sigterm_in_the_middle_of_an_install_lets_it_finish_then_exits_0() {
    let w = World::nginx(&["a.test"], "");
    // A reload that takes 2 s, so the signal surely lands mid-install.
    let reload = format!(
        "sleep 2; kill -HUP $(cat {})",
        w.nginx.pid_file().to_str().expect("utf-8")
    );
    let extra = format!("[agent]\ninterval = \"1h\"\n\n{}", w.inbox_source());
    w.set_extra(&extra);
    let text_now = fs::read_to_string(&w.config).expect("config");
    let with_reload = text_now.replacen(
        "[probe]",
        &format!(
            "reload_command = [\"sh\", \"-c\", {}]\n\n[probe]",
            support::toml_str(&reload)
        ),
        1,
    );
    fs::write(&w.config, with_reload).expect("config");

    let mut d = w.spawn();
    assert!(
        d.wait_log("certswap agent started", Duration::from_secs(10)),
        "{}",
        d.log()
    );
    let new = w.renewed("a.test");
    w.drop_file("a.test.key", new.key_pem.as_bytes());
    w.drop_file("a.test.pem", new.fullchain_pem().as_bytes());
    assert!(
        d.wait_log("installing as one batch", Duration::from_secs(30)),
        "{}",
        d.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    d.signal(Signal::SIGTERM);
    let status = d
        .wait_exit(Duration::from_secs(30))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", d.log());
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    let log = d.log();
    assert!(log.contains("finishing the pass in flight"), "{log}");
    assert!(log.contains("installed and verified"), "{log}");
    // The install was finished, not cut: the new pair on disk and served.
    assert_eq!(w.served("a.test"), new.sha256);
    assert_eq!(pki::leaf_sha256_file(&w.site("a.test").cert), new.sha256);
    assert_eq!(w.stamps("done").len(), 1);
}
