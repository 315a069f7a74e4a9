//! Alibaba Cloud CAS and Tencent Cloud SSL as agent sources, against a fake
//! account on a real in-process HTTPS server (tests/support/vendor_api.rs,
//! which checks every request's signature with its own implementation of
//! the vendors' algorithms) and a real nginx: a renewal issued "in the
//! console" between two passes is installed and verified, `certswap
//! sources` shows it first; paging, names that do not cover the site, a
//! key that does not match, throttling, a wrong secret, a truncated PEM,
//! a secret file others can read; no secret in any log line or metric.

mod agent_util;
mod support;
#[path = "support/vendor_api.rs"]
mod vendor_api;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use agent_util::{World, agent_cmd, output_within, scrape, text};
use serde_json::Value;
use support::{certswap, free_port, toml_path};
use vendor_api::{Api, FakeCert, VendorApi};

const SITE: &str = "a.test";
const KEY_ID: &str = "AKIDcertswapTESTKEYID";
const SECRET: &str = "s3cr3t-Gu5t9xGARNpq86cd98joQYCN3";

struct Setup {
    w: World,
    api: VendorApi,
    secret_file: PathBuf,
}

fn source_toml(api: &VendorApi, kind: Api, secret_file: &Path, agent_extra: &str) -> String {
    let (k, id, file) = match kind {
        Api::Tencent => ("tencent-ssl", "secret_id", "secret_key_file"),
        Api::Aliyun => ("aliyun-cas", "access_key_id", "access_key_secret_file"),
    };
    format!(
        "[agent]\ninterval = \"1h\"\n{agent_extra}\n[[source]]\nkind = \"{k}\"\nname = \"cloud\"\n{id} = \"{KEY_ID}\"\n\
         {file} = {}\nendpoint = \"{}\"\nca_file = {}\ntimeout = \"5s\"\n",
        toml_path(secret_file),
        api.endpoint(),
        toml_path(&api.ca_file)
    )
}

fn setup_with(kind: Api, secret: &str, agent_extra: &str) -> Setup {
    let w = World::nginx(&[SITE], "");
    let api = VendorApi::start(w.dir.path(), kind, KEY_ID, SECRET);
    let secret_file = w.dir.path().join("vendor.secret");
    fs::write(&secret_file, format!("{secret}\n")).expect("write secret");
    fs::set_permissions(&secret_file, fs::Permissions::from_mode(0o600)).expect("chmod");
    w.set_extra(&source_toml(&api, kind, &secret_file, agent_extra));
    Setup {
        w,
        api,
        secret_file,
    }
}

fn setup(kind: Api) -> Setup {
    setup_with(kind, SECRET, "")
}

/// `run --once` at trace level: every log line there is.
fn run_traced(w: &World) -> (Output, String) {
    let mut cmd = agent_cmd(&w.config);
    cmd.arg("--once").env("CERTSWAP_LOG", "trace");
    let out = output_within(cmd, Duration::from_secs(90));
    let log = format!("{}{}", text(&out.stdout), text(&out.stderr));
    (out, log)
}

fn sources_json(w: &World) -> Value {
    let out = certswap()
        .arg("--config")
        .arg(&w.config)
        .args(["sources", "--json"])
        .output()
        .expect("certswap sources");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "sources --json is not JSON ({e}): {}{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

fn site_row(v: &Value) -> Value {
    v["sources"][0]["sites"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["site"] == SITE))
        .cloned()
        .unwrap_or_else(|| panic!("no row for {SITE}: {v}"))
}

/// Nothing a secret: not the vendor secret, not a line of a private key.
fn assert_no_secrets(what: &str, hay: &str, keys: &[&str]) {
    assert!(
        !hay.contains(SECRET),
        "{what} shows the vendor secret:\n{hay}"
    );
    for k in keys {
        for line in k
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 20)
        {
            assert!(
                !hay.contains(line),
                "{what} shows a private key line:\n{hay}"
            );
        }
    }
}

/// Unrelated certificates to fill pages (2 a page on the fake API).
fn fill(s: &Setup, ids: &[&str]) {
    for (i, id) in ids.iter().enumerate() {
        let other = format!("other{i}.test");
        let leaf = s.w.ca.leaf(&[other.as_str()]).days(-1, 300).build();
        s.api.add(FakeCert::of(id, &leaf));
    }
}

fn renewal_issued_between_two_passes_is_installed(kind: Api, ids: [&str; 5]) {
    let s = setup(kind);
    fill(&s, &ids[..3]);
    // An older certificate for the site: ends before the installed one.
    let older = s.w.ca.leaf(&[SITE]).days(-300, 10).build();
    s.api.add(FakeCert::of(ids[3], &older));
    let old = s.w.site(SITE).old.clone();
    let (out, log) = run_traced(&s.w);
    assert!(out.status.success(), "{log}");
    assert_eq!(s.w.served(SITE), old.sha256, "nothing newer yet: {log}");
    assert_eq!(site_row(&sources_json(&s.w))["install"], false);

    // Issued "in the console": a new id, one year more.
    let renewal = s.w.renewed(SITE);
    s.api.add(FakeCert::of(ids[4], &renewal));
    let row = site_row(&sources_json(&s.w));
    assert_eq!(row["install"], true, "{row}");
    assert_eq!(row["certificate_id"], ids[4], "{row}");
    assert_eq!(s.w.served(SITE), old.sha256, "sources changes nothing");

    s.api.clear_calls();
    let (out, log) = run_traced(&s.w);
    assert!(out.status.success(), "{log}");
    assert_eq!(
        s.w.served(SITE),
        renewal.sha256,
        "the renewal is served: {log}"
    );
    assert!(log.contains("installed and verified"), "{log}");
    let calls = s.api.calls();
    assert!(calls.iter().all(|c| c.signature_ok), "{calls:?}");
    let lists: Vec<_> = calls
        .iter()
        .filter(|c| !c.action.contains("Detail"))
        .collect();
    assert_eq!(lists.len(), 3, "five certificates, two a page: {calls:?}");
    assert_eq!(
        calls.iter().filter(|c| c.action.contains("Detail")).count(),
        1,
        "{calls:?}"
    );
    assert_no_secrets("the trace log", &log, &[&renewal.key_pem, &older.key_pem]);

    // Unchanged account: the list calls only.
    s.api.clear_calls();
    let (out, log) = run_traced(&s.w);
    assert!(out.status.success(), "{log}");
    assert!(
        s.api.actions().iter().all(|a| !a.contains("Detail")),
        "{:?}",
        s.api.actions()
    );
}

#[test]
fn tencent_renewal_issued_between_two_passes_is_installed_and_verified() {
    renewal_issued_between_two_passes_is_installed(
        Api::Tencent,
        ["tc-o1", "tc-o2", "tc-o3", "tc-old", "tc-renew"],
    );
}

#[test]
fn aliyun_renewal_issued_between_two_passes_is_installed_and_verified() {
    renewal_issued_between_two_passes_is_installed(
        Api::Aliyun,
        ["101", "102", "103", "104", "105"],
    );
}

#[test]
fn a_renewal_that_does_not_cover_the_sites_names_is_not_installed_and_says_why() {
    let s = setup(Api::Tencent);
    let old_bytes = fs::read(&s.w.site(SITE).cert).expect("cert");
    // The list says a.test; the certificate names only b.test.
    let wrong = s.w.ca.leaf(&["b.test"]).days(-1, 385).build();
    let mut fake = FakeCert::of("tc-wrong", &wrong);
    fake.names = vec![SITE.into()];
    s.api.add(fake);
    let (_, log) = run_traced(&s.w);
    assert!(log.contains("does not cover a.test"), "{log}");
    assert_eq!(s.w.served(SITE), s.w.site(SITE).old.sha256);
    assert_eq!(fs::read(&s.w.site(SITE).cert).expect("cert"), old_bytes);
    // Refused for good: no second download.
    s.api.clear_calls();
    let (_, log) = run_traced(&s.w);
    assert!(
        s.api.actions().iter().all(|a| !a.contains("Detail")),
        "{log}"
    );
    let row = site_row(&sources_json(&s.w));
    assert_eq!(row["install"], false);
    assert!(
        row["why"].as_str().unwrap_or("").contains("refused before"),
        "{row}"
    );

    // Honest names that leave the site out: not picked, and `sources` says so.
    let s = setup(Api::Tencent);
    let www = s.w.ca.leaf(&["www.a.test"]).days(-1, 385).build();
    s.api.add(FakeCert::of("tc-www", &www));
    let row = site_row(&sources_json(&s.w));
    assert_eq!(row["install"], false);
    assert!(
        row["why"].as_str().unwrap_or("").contains("covers"),
        "{row}"
    );
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_not_installed() {
    let s = setup(Api::Tencent);
    let old_bytes = fs::read(&s.w.site(SITE).key).expect("key");
    let renewal = s.w.renewed(SITE);
    let other = s.w.ca.leaf(&[SITE]).days(-1, 385).build();
    let mut fake = FakeCert::of("tc-mismatch", &renewal);
    fake.key_pem = Some(other.key_pem.clone());
    s.api.add(fake);
    let (_, log) = run_traced(&s.w);
    assert!(log.contains("does not belong to the certificate"), "{log}");
    assert_eq!(s.w.served(SITE), s.w.site(SITE).old.sha256);
    assert_eq!(fs::read(&s.w.site(SITE).key).expect("key"), old_bytes);
    assert_no_secrets("the trace log", &log, &[&other.key_pem, &renewal.key_pem]);
}

#[test]
fn throttling_answers_are_retried_and_the_renewal_installed() {
    for kind in [Api::Tencent, Api::Aliyun] {
        let s = setup(kind);
        let renewal = s.w.renewed(SITE);
        s.api.add(FakeCert::of("201", &renewal));
        s.api.throttle(2);
        let (out, log) = run_traced(&s.w);
        assert!(out.status.success(), "{log}");
        assert!(log.contains("Throttling"), "{log}");
        assert_eq!(s.w.served(SITE), renewal.sha256, "{log}");
    }
}

#[test]
fn a_wrong_secret_is_one_sentence_naming_the_source_counted_and_the_old_cert_stays() {
    let port = free_port();
    for kind in [Api::Tencent, Api::Aliyun] {
        let s = setup_with(
            kind,
            "not-the-secret",
            &format!("metrics_listen = \"127.0.0.1:{port}\"\n"),
        );
        let old_bytes = fs::read(&s.w.site(SITE).cert).expect("cert");
        let renewal = s.w.renewed(SITE);
        s.api.add(FakeCert::of("301", &renewal));
        let (_, log) = run_traced(&s.w);
        let code = match kind {
            Api::Tencent => "AuthFailure.SignatureFailure",
            Api::Aliyun => "SignatureDoesNotMatch",
        };
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("refused the request"))
            .collect();
        assert_eq!(lines.len(), 1, "once per pass: {log}");
        assert!(
            lines[0].contains("source cloud") && lines[0].contains(code),
            "{log}"
        );
        assert_eq!(fs::read(&s.w.site(SITE).cert).expect("cert"), old_bytes);
        assert_eq!(s.w.served(SITE), s.w.site(SITE).old.sha256);

        let mut d = s.w.spawn();
        assert!(
            d.wait_log("refused the request", Duration::from_secs(60)),
            "{}",
            d.log()
        );
        let metrics = scrape(&format!("127.0.0.1:{port}")).expect("scrape");
        let errors = metrics
            .lines()
            .find(|l| {
                l.starts_with("certswap_source_errors_total{") && l.contains("source=\"cloud\"")
            })
            .unwrap_or_else(|| panic!("no error counter: {metrics}"));
        let n: f64 = errors
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(n >= 1.0, "{errors}");
        assert_no_secrets("/metrics", &metrics, &[&renewal.key_pem]);
        assert!(!metrics.contains("not-the-secret"));
        d.signal(nix::sys::signal::Signal::SIGTERM);
        d.wait_exit(Duration::from_secs(30));
        let _ = &s.secret_file;
    }
}

#[test]
fn a_truncated_pem_in_the_answer_is_not_installed() {
    let s = setup(Api::Tencent);
    let old_bytes = fs::read(&s.w.site(SITE).cert).expect("cert");
    let renewal = s.w.renewed(SITE);
    let mut fake = FakeCert::of("tc-cut", &renewal);
    fake.cert_pem.truncate(fake.cert_pem.len() / 2);
    s.api.add(fake);
    let (_, log) = run_traced(&s.w);
    assert!(
        log.contains("certificate tc-cut") && log.contains("cannot be read"),
        "{log}"
    );
    assert_eq!(fs::read(&s.w.site(SITE).cert).expect("cert"), old_bytes);
    assert_eq!(s.w.served(SITE), s.w.site(SITE).old.sha256);
}

#[test]
fn a_secret_file_others_can_read_skips_the_source_before_any_request() {
    let s = setup(Api::Tencent);
    s.api.add(FakeCert::of("tc-r", &s.w.renewed(SITE)));
    fs::set_permissions(&s.secret_file, fs::Permissions::from_mode(0o644)).expect("chmod");
    let (_, log) = run_traced(&s.w);
    assert!(log.contains("source skipped"), "{log}");
    assert!(s.api.calls().is_empty(), "{:?}", s.api.calls());
    assert_eq!(s.w.served(SITE), s.w.site(SITE).old.sha256);
    assert_no_secrets("the trace log", &log, &[]);
}

#[test]
fn a_certificate_without_its_key_is_installed_when_it_matches_the_installed_key() {
    let s = setup(Api::Aliyun);
    let installed_key = s.w.site(SITE).old.key_pem.clone();
    // Own CSR: the vendor holds no key; the renewal was issued for the key
    // on the server.
    let renewal =
        s.w.ca
            .leaf(&[SITE])
            .days(-1, 385)
            .key(&installed_key)
            .build();
    let mut fake = FakeCert::of("401", &renewal);
    fake.key_pem = None;
    s.api.add(fake);
    let (out, log) = run_traced(&s.w);
    assert!(out.status.success(), "{log}");
    assert_eq!(s.w.served(SITE), renewal.sha256, "{log}");
    assert_no_secrets("the trace log", &log, &[&installed_key]);

    // Without its key and for another key: refused, says which key.
    let s = setup(Api::Aliyun);
    let stranger = s.w.renewed(SITE);
    let mut fake = FakeCert::of("402", &stranger);
    fake.key_pem = None;
    s.api.add(fake);
    let (_, log) = run_traced(&s.w);
    assert!(log.contains("the installed key does not belong"), "{log}");
    assert_eq!(s.w.served(SITE), s.w.site(SITE).old.sha256);
}

#[test]
fn an_sm2_certificate_is_refused_with_a_sentence_saying_so() {
    let s = setup(Api::Tencent);
    let mut fake = FakeCert::of("tc-sm2", &s.w.renewed(SITE));
    fake.sm2 = true;
    s.api.add(fake);
    let row = site_row(&sources_json(&s.w));
    assert_eq!(row["install"], false, "{row}");
    assert!(row["why"].as_str().unwrap_or("").contains("SM2"), "{row}");
    let (_, log) = run_traced(&s.w);
    assert!(log.contains("SM2"), "{log}");
    assert!(s.api.actions().iter().all(|a| !a.contains("Detail")));
    assert_eq!(s.w.served(SITE), s.w.site(SITE).old.sha256);
}

#[test]
fn a_list_that_claims_a_later_end_than_the_certificate_has_is_not_believed() {
    let s = setup(Api::Tencent);
    let older = s.w.ca.leaf(&[SITE]).days(-300, 10).build();
    let mut fake = FakeCert::of("tc-lies", &older);
    fake.not_after = s.w.renewed(SITE).not_after;
    s.api.add(fake);
    let (_, log) = run_traced(&s.w);
    assert!(log.contains("not later than the installed one"), "{log}");
    assert_eq!(s.w.served(SITE), s.w.site(SITE).old.sha256);
}

/// A key comes back in the form it was uploaded in: PKCS#1 (`BEGIN RSA
/// PRIVATE KEY`) and SEC1 (`BEGIN EC PRIVATE KEY`) are installed like
/// PKCS#8, from either vendor.
#[test]
fn keys_in_pkcs1_and_sec1_form_are_installed_and_verified() {
    for (kind, form) in [
        (Api::Tencent, "pkcs1"),
        (Api::Aliyun, "sec1"),
        (Api::Tencent, "sec1"),
        (Api::Aliyun, "pkcs1"),
    ] {
        let s = setup(kind);
        let dir = s.w.dir.path();
        let (leaf, header, convert) = match form {
            "pkcs1" => {
                let pkcs8 = support::pki::rsa_key_pem(dir, "vendor");
                let leaf = s.w.ca.leaf(&[SITE]).days(-1, 385).key(&pkcs8).build();
                (
                    leaf,
                    "-----BEGIN RSA PRIVATE KEY-----",
                    vec!["rsa", "-traditional"],
                )
            }
            _ => (
                s.w.renewed(SITE),
                "-----BEGIN EC PRIVATE KEY-----",
                vec!["ec"],
            ),
        };
        let pkcs8 = dir.join("vendor.pkcs8.key");
        let other = dir.join("vendor.other.key");
        fs::write(&pkcs8, &leaf.key_pem).expect("write key");
        let mut args: Vec<&std::ffi::OsStr> = convert.iter().map(std::ffi::OsStr::new).collect();
        args.extend([
            "-in".as_ref(),
            pkcs8.as_os_str(),
            "-out".as_ref(),
            other.as_os_str(),
        ]);
        support::pki::openssl(&args);
        let key_pem = fs::read_to_string(&other).expect("read converted key");
        assert!(key_pem.starts_with(header), "{form}: {key_pem}");

        let mut fake = FakeCert::of("4201", &leaf);
        fake.key_pem = Some(key_pem.clone());
        s.api.add(fake);
        let (out, log) = run_traced(&s.w);
        assert!(out.status.success(), "{kind:?} {form}: {log}");
        assert_eq!(s.w.served(SITE), leaf.sha256, "{kind:?} {form}: {log}");
        assert_no_secrets("the trace log", &log, &[&key_pem]);
    }
}
