//! The agent's HTTPS source against a real in-process HTTPS server (rustls
//! on 127.0.0.1, rcgen CA as `ca_file`) and a real nginx, the agent run as a
//! child process: rollout at 0 / 100 percent and at the bucket boundary,
//! paused manifests and bundles, ETag + 304, checksum mismatches, 5xx,
//! timeouts and truncated bodies, paths that leave the manifest, bearer
//! token + mTLS, and SIGTERM in the middle of a slow download.

mod agent_util;
mod support;

use std::fs;
use std::time::{Duration, Instant};

use agent_util::{
    HttpsSource, Reply, World, bucket, http_source_toml, publish, scrape, set_manifest, sha256,
    text,
};
use nix::sys::signal::Signal;
use serde_json::json;
use support::pki::{self, Ca};
use support::{free_port, toml_path};

const SITE: &str = "a.test";
const HOST: &str = "web-17";

fn world_with_source(extra: &str) -> (World, HttpsSource) {
    let w = World::nginx(&[SITE], "");
    let src = HttpsSource::start(w.dir.path(), None);
    w.set_extra(&http_source_toml(&src, HOST, extra));
    (w, src)
}

fn paths(src: &HttpsSource) -> Vec<String> {
    src.seen().into_iter().map(|s| s.path).collect()
}

#[test]
fn manifest_at_100_percent_is_installed_and_then_304_is_a_no_op() {
    let (w, src) = world_with_source("");
    let new = w.renewed(SITE);
    let entry = publish(&src, "a.test/2027", SITE, &new, 100);
    set_manifest(&src, vec![entry], &[], "m1");

    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("installed and verified"), "{log}");
    assert_eq!(w.served(SITE), new.sha256);
    assert_eq!(
        paths(&src),
        vec![
            "/fleet/manifest.json",
            "/fleet/a.test/2027/fullchain.pem",
            "/fleet/a.test/2027/privkey.pem"
        ]
    );

    // Second pass (a new process: the ETag is kept in the state dir).
    src.clear_seen();
    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    let seen = src.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].headers.get("if-none-match").map(String::as_str),
        Some("\"m1\"")
    );
    assert_eq!(seen[0].status, 304);
    assert!(log.contains("not modified (304)"), "{log}");
    assert!(!log.contains("installing"), "{log}");
    assert_eq!(w.served(SITE), new.sha256);

    // A new manifest with the same bundle: downloaded, found installed, no install.
    set_manifest(
        &src,
        vec![publish(&src, "a.test/2027", SITE, &new, 100)],
        &[],
        "m2",
    );
    src.clear_seen();
    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(log.contains("installed already"), "{log}");
    assert!(!log.contains("installing as one batch"), "{log}");
    assert!(!paths(&src).contains(&"/fleet/a.test/2027/privkey.pem".to_string()));
    // …and that manifest, handled completely, is not fetched in full again.
    src.clear_seen();
    let out = w.run_once();
    assert!(text(&out.stderr).contains("not modified (304)"));
    assert_eq!(src.seen().len(), 1);
}

#[test]
fn rollout_percent_bucket_boundary_and_pause_decide_what_is_installed() {
    let (w, src) = world_with_source("");
    let old = w.served(SITE);
    let new = w.renewed(SITE);
    let b = bucket(HOST, SITE);
    let run = |m: &str| {
        let out = w.run_once();
        let log = text(&out.stderr);
        assert!(out.status.success(), "{m}: {log}");
        log
    };

    // 0 percent: nobody.
    set_manifest(&src, vec![publish(&src, "n", SITE, &new, 0)], &[], "p0");
    let log = run("0%");
    assert!(log.contains("not in this rollout wave"), "{log}");
    assert_eq!(w.served(SITE), old);
    assert_eq!(
        paths(&src),
        vec!["/fleet/manifest.json"],
        "nothing downloaded"
    );

    // Exactly the bucket: still not (bucket < percent installs).
    set_manifest(&src, vec![publish(&src, "n", SITE, &new, b)], &[], "pb");
    let log = run("bucket");
    assert!(log.contains(&format!("bucket {b} of host")), "{log}");
    assert_eq!(w.served(SITE), old);

    // 100 percent but the whole manifest paused.
    set_manifest(
        &src,
        vec![publish(&src, "n", SITE, &new, 100)],
        &[("paused", json!(true))],
        "paused-manifest",
    );
    let log = run("manifest paused");
    assert!(log.contains("manifest is paused"), "{log}");
    assert_eq!(w.served(SITE), old);

    // 100 percent but this bundle's rollout paused.
    let mut entry = publish(&src, "n", SITE, &new, 100);
    entry["rollout"]["paused"] = json!(true);
    set_manifest(&src, vec![entry], &[], "paused-bundle");
    let log = run("bundle paused");
    assert!(log.contains("rollout paused"), "{log}");
    assert_eq!(w.served(SITE), old);

    // One above the bucket: this host is in the wave.
    set_manifest(
        &src,
        vec![publish(&src, "n", SITE, &new, b + 1)],
        &[],
        "pb1",
    );
    let log = run("bucket + 1");
    assert!(log.contains("installed and verified"), "{log}");
    assert_eq!(w.served(SITE), new.sha256);
}

#[test]
fn checksum_mismatch_keeps_the_old_certificate_and_is_retried() {
    let (w, src) = world_with_source("");
    let old = w.served(SITE);
    let new = w.renewed(SITE);
    let entry = publish(&src, "n", SITE, &new, 100);
    // The host serves other bytes than the manifest announces.
    let impostor = w.renewed(SITE);
    src.set(
        "/fleet/n/fullchain.pem",
        Reply::Body {
            bytes: impostor.fullchain_pem().into_bytes(),
            etag: None,
        },
    );
    set_manifest(&src, vec![entry], &[], "m1");

    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("not the manifest's"), "{log}");
    assert!(log.contains("retrying on a later pass"), "{log}");
    assert_eq!(w.served(SITE), old, "the old certificate is still served");
    assert_eq!(
        pki::leaf_sha256_file(&w.site(SITE).cert),
        w.site(SITE).old.sha256
    );

    // The ETag was not remembered: the next pass GETs in full and, with the
    // right bytes in place, installs.
    publish(&src, "n", SITE, &new, 100);
    src.clear_seen();
    let out = w.run_once();
    let log = text(&out.stderr);
    let seen = src.seen();
    assert!(!seen[0].headers.contains_key("if-none-match"), "{seen:?}");
    assert!(log.contains("installed and verified"), "{log}");
    assert_eq!(w.served(SITE), new.sha256);
}

#[test]
fn server_errors_timeouts_and_truncated_bodies_keep_the_old_certificate() {
    let (w, src) = world_with_source("");
    let old = w.served(SITE);
    let new = w.renewed(SITE);

    // 500 on the manifest.
    src.set("/fleet/manifest.json", Reply::Status(500));
    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("answered 500"), "{log}");
    assert_eq!(w.served(SITE), old);

    // A body slower than the 3 s timeout.
    let entry = publish(&src, "n", SITE, &new, 100);
    set_manifest(&src, vec![entry], &[], "m1");
    src.set(
        "/fleet/n/fullchain.pem",
        Reply::Slow {
            bytes: new.fullchain_pem().into_bytes(),
            pause: Duration::from_secs(2),
        },
    );
    let t = Instant::now();
    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("timed out"), "{log}");
    assert!(t.elapsed() < Duration::from_secs(30));
    assert_eq!(w.served(SITE), old);

    // A body cut short of its Content-Length.
    let full = new.fullchain_pem().into_bytes();
    src.set(
        "/fleet/n/fullchain.pem",
        Reply::Truncated {
            bytes: full[..full.len() / 2].to_vec(),
            claimed: full.len(),
        },
    );
    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("could not be read completely"), "{log}");
    assert_eq!(w.served(SITE), old);
    assert_eq!(
        pki::leaf_sha256_file(&w.site(SITE).cert),
        w.site(SITE).old.sha256
    );
}

#[test]
fn manifest_paths_that_leave_the_manifest_directory_are_never_fetched() {
    let (w, src) = world_with_source("");
    let old = w.served(SITE);
    let new = w.renewed(SITE);
    // Real files outside /fleet/: they must not be requested.
    let cert = new.fullchain_pem().into_bytes();
    src.set(
        "/secret/fullchain.pem",
        Reply::Body {
            bytes: cert.clone(),
            etag: None,
        },
    );
    let mut up = publish(&src, "n", SITE, &new, 100);
    up["cert"] = json!("../secret/fullchain.pem");
    up["cert_sha256"] = json!(sha256(&cert));
    set_manifest(&src, vec![up], &[], "m1");
    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("contains `..`"), "{log}");

    let mut other_host = publish(&src, "n", SITE, &new, 100);
    other_host["cert"] = json!(format!(
        "https://localhost:{}/secret/fullchain.pem",
        src.port
    ));
    set_manifest(&src, vec![other_host], &[], "m2");
    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(log.contains("points to another host"), "{log}");

    assert!(
        !paths(&src).iter().any(|p| p.starts_with("/secret")),
        "{:?}",
        paths(&src)
    );
    assert_eq!(w.served(SITE), old);
}

#[test]
fn bearer_token_and_client_certificate_are_presented() {
    let w = World::nginx(&[SITE], "");
    let client_ca = Ca::new("certswap test agents CA");
    let agent_leaf = client_ca.leaf(&["agent.test"]).eku_client_only().build();
    let src = HttpsSource::start(w.dir.path(), Some(client_ca.cert_pem()));
    src.require_token("s3cret-token");
    let token = w.dir.path().join("token");
    fs::write(&token, "s3cret-token\n").expect("token");
    // A secret readable by root only (a world-readable one is refused).
    fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod token");
    let (client_cert, client_key) = pki::write(w.dir.path(), "agent", &agent_leaf);
    let extra = format!(
        "token_file = {}\nclient_cert = {}\nclient_key = {}\n",
        toml_path(&token),
        toml_path(&client_cert),
        toml_path(&client_key)
    );
    w.set_extra(&http_source_toml(&src, HOST, &extra));
    let new = w.renewed(SITE);
    set_manifest(&src, vec![publish(&src, "n", SITE, &new, 100)], &[], "m1");

    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("installed and verified"), "{log}");
    assert_eq!(w.served(SITE), new.sha256);
    assert!(
        src.seen().iter().all(|s| s.status == 200),
        "{:?}",
        src.seen()
    );
    assert!(
        !log.contains("s3cret-token"),
        "the token must not be logged"
    );

    // Without the client certificate the handshake fails: an error, no install.
    w.set_extra(&http_source_toml(
        &src,
        HOST,
        &format!("token_file = {}\n", toml_path(&token)),
    ));
    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("retrying on a later pass"), "{log}");
}

#[test]
fn daemon_counts_source_errors_and_exits_0_on_sigterm_during_a_slow_download() {
    let port = free_port();
    let (w, src) = world_with_source("");
    let text_now = fs::read_to_string(&w.config).expect("config");
    fs::write(
        &w.config,
        text_now
            .replacen(
                "[agent]\n",
                &format!("[agent]\nmetrics_listen = \"127.0.0.1:{port}\"\n"),
                1,
            )
            .replace("timeout = \"3s\"", "timeout = \"60s\""),
    )
    .expect("config");
    src.set("/fleet/manifest.json", Reply::Status(503));
    let mut d = w.spawn();
    assert!(
        d.wait_log("answered 503", Duration::from_secs(30)),
        "{}",
        d.log()
    );
    let label = src.url("/fleet/manifest.json");
    let metrics = scrape(&format!("127.0.0.1:{port}")).expect("scrape");
    assert!(
        metrics.contains(&format!(
            "certswap_source_errors_total{{source=\"{label}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        !metrics.contains("certswap_source_last_success_timestamp_seconds{source=\"https"),
        "{metrics}"
    );

    // Fixed manifest, a download that trickles for minutes; SIGHUP makes the
    // agent re-read its config and run a pass now.
    let new = w.renewed(SITE);
    set_manifest(&src, vec![publish(&src, "n", SITE, &new, 100)], &[], "m1");
    src.set(
        "/fleet/n/fullchain.pem",
        Reply::Slow {
            bytes: new.fullchain_pem().into_bytes(),
            pause: Duration::from_secs(30),
        },
    );
    d.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !paths(&src).contains(&"/fleet/n/fullchain.pem".to_string()) && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        paths(&src).contains(&"/fleet/n/fullchain.pem".to_string()),
        "{}",
        d.log()
    );

    let t = Instant::now();
    d.signal(Signal::SIGTERM);
    let status = d
        .wait_exit(Duration::from_secs(10))
        .expect("exits within seconds");
    assert!(status.success(), "{status:?}\n{}", d.log());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(w.served(SITE), w.site(SITE).old.sha256);
}
