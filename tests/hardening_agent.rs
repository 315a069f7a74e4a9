//! Hardening of the agent (issue 16, items 2, 6, 8 and the HTTP source's
//! secret files), against a real nginx and the real in-process HTTPS
//! source of `agent_util`, the agent run as a child process:
//! - what the environment broke (a config test broken for one pass, a
//!   certificate whose notBefore is a few seconds ahead) is retried and
//!   installed, not refused for good, also across a restart;
//! - idle connections to the metrics port beyond its cap do not starve the
//!   agent's pass or `/metrics`;
//! - a manifest URL's user, password and presigned query appear in no log
//!   line at any level and in no metric label;
//! - a world-readable token file skips the source, with a sentence and a
//!   metric, and nothing is fetched.

mod agent_util;
mod support;

use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use agent_util::{
    HttpsSource, Reply, World, agent_cmd, http_source_toml, output_within, publish, scrape,
    set_manifest, text,
};
use support::pki;
use support::{free_port, toml_path};

const SITE: &str = "a.test";
const HOST: &str = "web-17";

fn world_with_source(extra: &str) -> (World, HttpsSource) {
    let w = World::nginx(&[SITE], "");
    let src = HttpsSource::start(w.dir.path(), None);
    w.set_extra(&http_source_toml(&src, HOST, extra));
    (w, src)
}

/// The config with `metrics_listen` on a free port; returns the address.
fn with_metrics(w: &World) -> String {
    let port = free_port();
    let now = fs::read_to_string(&w.config).expect("config");
    let text = if now.contains("[agent]\n") {
        now.replacen(
            "[agent]\n",
            &format!("[agent]\nmetrics_listen = \"127.0.0.1:{port}\"\n"),
            1,
        )
    } else {
        format!("{now}\n[agent]\ninterval = \"1h\"\nmetrics_listen = \"127.0.0.1:{port}\"\n")
    };
    fs::write(&w.config, text).expect("config");
    format!("127.0.0.1:{port}")
}

/// `/metrics`, retried while the agent is not listening yet or its
/// connection slots are taken (bounded).
fn scrape_eventually(addr: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        match scrape(addr) {
            Ok(body) => return body,
            Err(e) if Instant::now() > deadline => panic!("no /metrics answer: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Break nginx.conf with an unknown directive; returns the good text.
fn break_nginx_config(w: &World) -> String {
    let path = w.nginx.conf_path();
    let good = fs::read_to_string(&path).expect("nginx.conf");
    fs::write(&path, format!("{good}\nthis_is_a_typo_of_someone_else;\n")).expect("break");
    assert!(w.nginx.configtest().is_err(), "the config must be broken");
    good
}

fn manifest_requests(src: &HttpsSource) -> Vec<agent_util::Seen> {
    src.seen()
        .into_iter()
        .filter(|s| s.path == "/fleet/manifest.json")
        .collect()
}

#[test]
fn a_config_test_broken_for_one_pass_does_not_refuse_the_bundle_across_restarts() {
    let (w, src) = world_with_source("");
    let old = w.served(SITE);
    let new = w.renewed(SITE);
    set_manifest(
        &src,
        vec![publish(&src, "a.test/2027", SITE, &new, 100)],
        &[],
        "m1",
    );

    // One pass while someone's typo breaks the config test.
    let good = break_nginx_config(&w);
    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("bundle waiting"), "{log}");
    assert!(log.contains("reason=config_test"), "{log}");
    assert!(log.contains("it is not refused"), "{log}");
    assert_eq!(w.served(SITE), old);

    // Fixed a minute later; the next agent (a new process) installs it:
    // the manifest's ETag was not saved, so it is read in full.
    fs::write(w.nginx.conf_path(), &good).expect("fix nginx.conf");
    src.clear_seen();
    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    let first = &manifest_requests(&src)[0];
    assert!(
        !first.headers.contains_key("if-none-match"),
        "the ETag of an unsettled manifest must not be saved: {first:?}"
    );
    assert!(log.contains("installed and verified"), "{log}");
    assert_eq!(w.served(SITE), new.sha256);

    // Settled now: its ETag is kept and the next poll is a 304.
    src.clear_seen();
    let out = w.run_once();
    assert!(text(&out.stderr).contains("not modified (304)"));
}

#[test]
fn an_inbox_bundle_that_met_a_broken_config_test_stays_in_the_inbox_and_is_installed_later() {
    let w = World::nginx(&[SITE], "");
    w.set_extra(&format!(
        "[agent]\ninterval = \"1h\"\n\n{}",
        w.inbox_source()
    ));
    let new = w.renewed(SITE);
    w.drop_file(&format!("{SITE}.pem"), new.fullchain_pem().as_bytes());
    w.drop_file(&format!("{SITE}.key"), new.key_pem.as_bytes());

    let good = break_nginx_config(&w);
    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("it stays in the inbox"), "{log}");
    assert!(w.stamps("failed").is_empty(), "quarantined: {log}");
    assert_eq!(
        w.inbox_files(),
        vec![format!("{SITE}.key"), format!("{SITE}.pem")]
    );
    assert_eq!(w.served(SITE), w.site(SITE).old.sha256);

    fs::write(w.nginx.conf_path(), &good).expect("fix nginx.conf");
    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(log.contains("installed and verified"), "{log}");
    assert_eq!(w.served(SITE), new.sha256);
    assert_eq!(w.stamps("done").len(), 1, "{log}");
}

#[test]
fn a_running_agent_retries_after_a_broken_config_test_and_shows_what_waits() {
    let (w, src) = world_with_source("");
    let metrics = with_metrics(&w);
    let new = w.renewed(SITE);
    set_manifest(
        &src,
        vec![publish(&src, "a.test/2027", SITE, &new, 100)],
        &[],
        "m1",
    );
    let good = break_nginx_config(&w);
    let d = w.spawn();
    assert!(
        d.wait_log("bundle waiting", Duration::from_secs(60)),
        "{}",
        d.log()
    );
    let body = scrape_eventually(&metrics, Duration::from_secs(30));
    assert!(
        body.contains(&format!(
            "certswap_bundle_waiting{{source=\"{}\",site=\"{SITE}\",reason=\"config_test\"}} 1",
            src.url("/fleet/manifest.json")
        )),
        "{body}"
    );
    fs::write(w.nginx.conf_path(), &good).expect("fix nginx.conf");
    // The interval is an hour: only the retry pass (30 s) can install it.
    assert!(
        d.wait_log("installed and verified", Duration::from_secs(120)),
        "{}",
        d.log()
    );
    assert_eq!(w.served(SITE), new.sha256);
    let body = scrape_eventually(&metrics, Duration::from_secs(30));
    assert!(!body.contains("certswap_bundle_waiting{"), "{body}");
}

#[test]
fn a_certificate_not_valid_yet_by_the_host_clock_is_installed_once_valid() {
    let (w, src) = world_with_source("");
    let now = time::OffsetDateTime::now_utc();
    let new =
        w.ca.leaf(&[SITE])
            .not_before(now + time::Duration::seconds(8))
            .not_after(now + time::Duration::days(385))
            .build();
    set_manifest(&src, vec![publish(&src, "n", SITE, &new, 100)], &[], "m1");
    let d = w.spawn();
    assert!(
        d.wait_log("reason=not_yet_valid", Duration::from_secs(60)),
        "{}",
        d.log()
    );
    assert_eq!(w.served(SITE), w.site(SITE).old.sha256);
    assert!(
        d.wait_log("installed and verified", Duration::from_secs(120)),
        "{}",
        d.log()
    );
    assert_eq!(w.served(SITE), new.sha256);
    assert!(d.log().contains("trying again in"), "{}", d.log());
}

/// Open descriptors of process `pid`.
fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn idle_connections_to_the_metrics_port_do_not_starve_the_agent() {
    let w = World::nginx(&[SITE], "");
    w.set_extra(&format!(
        "[agent]\ninterval = \"1h\"\n\n{}",
        w.inbox_source()
    ));
    let metrics = with_metrics(&w);
    let d = w.spawn();
    assert!(
        d.wait_log("watching", Duration::from_secs(60)),
        "{}",
        d.log()
    );
    let first = scrape_eventually(&metrics, Duration::from_secs(30));
    assert!(first.contains("certswap_agent_passes_total"), "{first}");
    // A small descriptor limit stands for the default 1024: a few hundred
    // idle connections from any local user are then enough to exhaust it.
    let limit = fd_count(d.pid()) + 48;
    let st = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(d.pid().to_string())
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("prlimit");
    assert!(st.success());

    // 300 connections that never send a request, held by this test.
    let mut idle = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = TcpStream::connect(&metrics) {
            idle.push(s);
        }
    }
    assert!(idle.len() > 100, "only {} connections", idle.len());

    // An inbox bundle now: its pass must run and install it.
    let new = w.renewed(SITE);
    w.drop_file(&format!("{SITE}.pem"), new.fullchain_pem().as_bytes());
    w.drop_file(&format!("{SITE}.key"), new.key_pem.as_bytes());
    assert!(
        d.wait_log("installed and verified", Duration::from_secs(90)),
        "{}",
        d.log()
    );
    assert_eq!(w.served(SITE), new.sha256);
    // /metrics still answers, and says it turned connections away.
    let body = scrape_eventually(&metrics, Duration::from_secs(60));
    assert!(
        body.lines().any(
            |l| l.starts_with("certswap_metrics_connections_refused_total ") && !l.ends_with(" 0")
        ),
        "{body}"
    );
    // The agent holds few of them: at most the cap stays open.
    let held = fd_count(d.pid());
    assert!(held <= limit - 48 + 16 + 8, "{held} descriptors open");
    drop(idle);
}

#[test]
fn a_pass_that_could_not_run_is_run_again_within_seconds_not_an_interval_later() {
    let w = World::nginx(&[SITE], "");
    w.set_extra(&format!(
        "[agent]\ninterval = \"1h\"\n\n{}",
        w.inbox_source()
    ));
    let d = w.spawn();
    assert!(
        d.wait_log("watching", Duration::from_secs(60)),
        "{}",
        d.log()
    );
    // The probe's CA file gone for a moment: no pass can set up its prober.
    let ca = w.dir.path().join("ca.pem");
    let aside = w.dir.path().join("ca.pem.aside");
    fs::rename(&ca, &aside).expect("move the CA aside");
    let new = w.renewed(SITE);
    w.drop_file(&format!("{SITE}.pem"), new.fullchain_pem().as_bytes());
    w.drop_file(&format!("{SITE}.key"), new.key_pem.as_bytes());
    assert!(
        d.wait_log("pass skipped", Duration::from_secs(60)),
        "{}",
        d.log()
    );
    fs::rename(&aside, &ca).expect("put the CA back");
    // No file event comes now and the interval is an hour: only the
    // rescheduled pass can install it.
    assert!(
        d.wait_log("installed and verified", Duration::from_secs(90)),
        "{}",
        d.log()
    );
    assert_eq!(w.served(SITE), new.sha256);
    assert!(d.log().contains("trying again in"), "{}", d.log());
}

/// Standard base64 (RFC 4648), for looking for a Basic auth header.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn a_manifest_url_password_and_presigned_query_reach_no_log_and_no_metric_label() {
    const USER: &str = "fleetuser";
    const PASSWORD: &str = "pa55w0rd-SECRET";
    const SIGNATURE: &str = "deadbeefSIGNATURE";
    const CREDENTIAL: &str = "AKIDCREDENTIAL";
    let (w, src) = world_with_source("");
    let secret_url = format!(
        "https://{USER}:{PASSWORD}@127.0.0.1:{}/fleet/manifest.json?X-Amz-Credential={CREDENTIAL}&X-Amz-Signature={SIGNATURE}",
        src.port
    );
    let plain = src.url("/fleet/manifest.json");
    let cfg = fs::read_to_string(&w.config).expect("config");
    assert!(cfg.contains(&plain));
    fs::write(&w.config, cfg.replace(&plain, &secret_url)).expect("config");
    let secrets = [
        USER.to_string(),
        PASSWORD.to_string(),
        SIGNATURE.to_string(),
        CREDENTIAL.to_string(),
        base64(format!("{USER}:{PASSWORD}").as_bytes()),
    ];
    let no_secret = |what: &str, s: &str| {
        for secret in &secrets {
            assert!(!s.contains(secret.as_str()), "{secret} in {what}:\n{s}");
        }
    };
    let run_traced = || {
        let mut cmd = agent_cmd(&w.config);
        cmd.arg("--once").env("CERTSWAP_LOG", "trace");
        let out = output_within(cmd, Duration::from_secs(90));
        text(&out.stderr) + &text(&out.stdout)
    };

    // A failed fetch (500), a failed download (404), a truncated body (a
    // reqwest error, which carries the URL), then a good install.
    src.set("/fleet/manifest.json", Reply::Status(500));
    let log = run_traced();
    assert!(log.contains("answered 500"), "{log}");
    assert!(log.contains("127.0.0.1"), "the host is still named: {log}");
    no_secret("the log of a 500", &log);

    let new = w.renewed(SITE);
    let mut entry = publish(&src, "n", SITE, &new, 100);
    entry["cert"] = serde_json::json!("n/missing.pem");
    set_manifest(&src, vec![entry], &[], "m1");
    let log = run_traced();
    assert!(log.contains("answered 404"), "{log}");
    no_secret("the log of a 404", &log);

    let full = new.fullchain_pem().into_bytes();
    set_manifest(&src, vec![publish(&src, "n", SITE, &new, 100)], &[], "m2");
    src.set(
        "/fleet/n/fullchain.pem",
        Reply::Truncated {
            bytes: full[..full.len() / 2].to_vec(),
            claimed: full.len(),
        },
    );
    let log = run_traced();
    assert!(log.contains("could not be read completely"), "{log}");
    no_secret("the log of a truncated body", &log);

    publish(&src, "n", SITE, &new, 100);
    let log = run_traced();
    assert!(log.contains("installed and verified"), "{log}");
    no_secret("the log of an install", &log);

    // The metric labels of a running agent.
    let metrics = with_metrics(&w);
    src.set("/fleet/manifest.json", Reply::Status(503));
    let log_path = w.dir.path().join("traced.log");
    let file = fs::File::create(&log_path).expect("log");
    let child = agent_cmd(&w.config)
        .env("CERTSWAP_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("dup"))
        .stderr(file)
        .spawn()
        .expect("spawn");
    let guard = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let counted = |body: &str| {
        body.lines()
            .any(|l| l.starts_with("certswap_source_errors_total{") && !l.ends_with(" 0"))
    };
    let body = loop {
        let body = scrape_eventually(&metrics, Duration::from_secs(30));
        if counted(&body) || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        body.contains("certswap_source_errors_total{source=\"https://127.0.0.1:"),
        "{body}"
    );
    no_secret("/metrics", &body);
    drop(guard);
    let mut log = String::new();
    fs::File::open(&log_path)
        .and_then(|mut f| f.read_to_string(&mut log))
        .expect("read log");
    no_secret("the daemon's log", &log);
}

/// A child process killed and reaped on drop.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_world_readable_token_file_skips_the_source_with_a_reason_and_a_metric() {
    let w = World::nginx(&[SITE], "");
    let src = HttpsSource::start(w.dir.path(), None);
    src.require_token("s3cret-token");
    let token = w.dir.path().join("token");
    fs::write(&token, "s3cret-token\n").expect("token");
    fs::set_permissions(&token, fs::Permissions::from_mode(0o644)).expect("chmod");
    w.set_extra(&http_source_toml(
        &src,
        HOST,
        &format!("token_file = {}\n", toml_path(&token)),
    ));
    let new = w.renewed(SITE);
    set_manifest(&src, vec![publish(&src, "n", SITE, &new, 100)], &[], "m1");
    let cert_before = pki::sha256_file(&w.site(SITE).cert);

    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("source skipped"), "{log}");
    assert!(log.contains("is readable by everyone"), "{log}");
    assert!(log.contains(&token.display().to_string()), "{log}");
    assert!(src.seen().is_empty(), "fetched: {:?}", src.seen());
    assert_eq!(pki::sha256_file(&w.site(SITE).cert), cert_before);
    assert_eq!(w.served(SITE), w.site(SITE).old.sha256);

    // The same for a token another user owns, and with a metric.
    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::chown(&token, Some(65534), Some(65534)).expect("chown");
    let metrics = with_metrics(&w);
    let d = w.spawn();
    assert!(
        d.wait_log("source skipped", Duration::from_secs(60)),
        "{}",
        d.log()
    );
    assert!(d.log().contains("owned by uid 65534"), "{}", d.log());
    let body = scrape_eventually(&metrics, Duration::from_secs(30));
    assert!(
        body.contains(&format!(
            "certswap_source_skipped{{source=\"{}\",reason=\"unsafe_file\"}} 1",
            src.url("/fleet/manifest.json")
        )),
        "{body}"
    );
    assert!(src.seen().is_empty(), "fetched: {:?}", src.seen());
    assert_eq!(pki::sha256_file(&w.site(SITE).cert), cert_before);
    drop(d);
}
