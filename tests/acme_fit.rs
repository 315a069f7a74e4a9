//! Fitting the ACME clients people already run (issue 19), on real nginx
//! and apache: an install of the certificate that is already installed and
//! served is a success that writes nothing and reloads nothing; an
//! endpoint that serves a certificate the site's file does not hold is
//! refused before anything changes; log lines carry no colour codes into
//! certbot's log or cron mail.

mod support;

use std::path::Path;
use std::process::Output;

use support::nginx::Nginx;
use support::world::{SITE, Server, World, path, text};

/// The world's nginx, logging every reload from now on.
fn counting_reloads(w: &World) -> &Nginx {
    let Server::Nginx(n) = &w.server else {
        panic!("an nginx world")
    };
    n.log_reloads();
    n
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

#[test]
fn installing_the_installed_and_served_leaf_is_already_installed_exit_0() {
    let w = World::nginx();
    let nginx = counting_reloads(&w);
    let new = w.renewed();
    let (cert, key) = w.bundle("new", &new);
    let reloads = nginx.reloads();
    let out = w.install(&cert, &key, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(json(&out)["result"], "verified");
    assert_eq!(nginx.reloads(), reloads + 1, "{}", nginx.error_log());

    let before = w.snapshot();
    let out = w.install(&cert, &key, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v = json(&out);
    assert_eq!(v["result"], "already_installed", "{v}");
    assert!(v["error"].is_null(), "{v}");
    assert_eq!(v["new"]["sha256"], new.sha256.as_str());
    assert_eq!(v["served"][0]["sha256"], new.sha256.as_str());
    assert_eq!(v["served"][0]["subject"], format!("CN={SITE}"), "{v}");
    // --force does not turn a settled install into a reload.
    let out = w.install(&cert, &key, &["--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("already installed and served"), "{said}");

    assert_eq!(w.snapshot(), before, "nothing written");
    assert_eq!(
        nginx.reloads(),
        reloads + 1,
        "no reload: {}",
        nginx.error_log()
    );
    assert_eq!(w.served(), new.sha256);
}

#[test]
fn apache_installing_the_installed_leaf_again_sends_no_signal() {
    let w = World::apache();
    let new = w.renewed();
    let (cert, key) = w.bundle("new", &new);
    let out = w.install(&cert, &key, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before = w.snapshot();
    let workers = w.server.worker_pids();

    let out = w.install(&cert, &key, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(json(&out)["result"], "already_installed", "{}", text(&out));
    assert_eq!(w.snapshot(), before);
    assert_eq!(w.server.worker_pids(), workers, "no graceful restart");
    assert_eq!(w.served(), new.sha256);
}

#[test]
fn an_endpoint_serving_a_cert_the_file_does_not_hold_is_refused_naming_both() {
    let w = World::nginx();
    let nginx = counting_reloads(&w);
    // The site's file holds a certificate the server never loaded (the
    // server reads another file, or nobody reloaded it).
    let on_disk = w
        .issuer()
        .leaf(&[SITE, support::world::ALIAS])
        .days(-1, 100)
        .build();
    support::pki::write(w.cert.parent().expect("ssl dir"), SITE, &on_disk);
    let new = w.renewed();
    let (cert, key) = w.bundle("new", &new);
    let before = w.snapshot();
    let reloads = nginx.reloads();

    let out = w.install(&cert, &key, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for part in [
        w.old.sha256.as_str(),
        on_disk.sha256.as_str(),
        path(&w.cert),
        &format!("CN={SITE}"),
        "nothing was changed",
        "--force",
    ] {
        assert!(err.contains(part), "{part} in {err}");
    }
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    // --json says the same in `error`.
    let out = w.install(&cert, &key, &["--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let v = json(&out);
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains(&w.old.sha256),
        "{v}"
    );
    assert_eq!(w.snapshot(), before, "nothing changed");
    assert_eq!(nginx.reloads(), reloads, "no reload: {}", nginx.error_log());
    assert_eq!(w.served(), w.old.sha256);

    // --force goes on, and the install is proven as always.
    let out = w.install(&cert, &key, &["--force", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v = json(&out);
    assert_eq!(v["result"], "verified", "{v}");
    assert!(
        v["warnings"].to_string().contains("because of --force"),
        "{v}"
    );
    assert_eq!(w.served(), new.sha256);
}

/// ESC, the first byte of every ANSI colour sequence.
const ESC: u8 = 0x1b;

/// `certswap ARGS` with stderr on a pseudo-terminal (util-linux `script`),
/// `NO_COLOR` set or not: what the terminal received.
fn on_a_terminal(config: &Path, args: &str, no_color: bool) -> Vec<u8> {
    let bin = env!("CARGO_BIN_EXE_certswap");
    let cmd = format!("{bin} --config {} {args}", path(config));
    let mut script = std::process::Command::new("script");
    script.args(["-qec", &cmd, "/dev/null"]);
    script.env_remove("NO_COLOR").env_remove("CERTSWAP_CONFIG");
    if no_color {
        script.env("NO_COLOR", "1");
    }
    let out = script.output().expect("run script");
    out.stdout
}

#[test]
fn log_lines_carry_no_colour_codes_off_a_terminal_or_with_no_color() {
    let w = World::nginx();
    let empty = w.dir.path().join("empty-inbox");
    std::fs::create_dir(&empty).expect("mkdir");
    // A warning on stderr ("no bundle"), as a cron job or certbot sees it:
    // stderr is a pipe.
    let out = w.run(&["install", "--batch", path(&empty)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no bundle"),
        "{}",
        text(&out)
    );
    assert!(!out.stderr.contains(&ESC), "{:?}", out.stderr);
    // The agent's log too.
    let out = w.run(&["run", "--once"]);
    assert!(!out.stderr.is_empty(), "{}", text(&out));
    assert!(!out.stderr.contains(&ESC), "{}", text(&out));

    // On a terminal: colour, unless NO_COLOR says no (checked both ways so
    // the test can see colour at all).
    let batch = format!("install --batch {}", path(&empty));
    assert!(on_a_terminal(&w.config, &batch, false).contains(&ESC));
    for args in [batch.as_str(), "run --once"] {
        let seen = on_a_terminal(&w.config, args, true);
        assert!(!seen.is_empty(), "{args}: nothing on the terminal");
        assert!(
            !seen.contains(&ESC),
            "{args}: {}",
            String::from_utf8_lossy(&seen)
        );
    }
}

mod agent_util;

/// Hash of every file under `dir`, recursively.
fn hashes(dir: &Path) -> Vec<(std::path::PathBuf, String)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("ls").flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push((p.clone(), support::pki::sha256_file(&p)));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_agent_settles_an_installed_bundle_and_reports_a_site_whose_file_is_not_served() {
    let w = agent_util::World::nginx(&["a.test", "b.test"], "");
    w.set_extra(&w.inbox_source());
    let a = w.renewed("a.test");
    w.drop_file("a.test.pem", a.fullchain_pem().as_bytes());
    w.drop_file("a.test.key", a.key_pem.as_bytes());
    let out = w.run_once();
    assert!(out.status.success(), "{}", agent_util::text(&out.stderr));
    assert_eq!(w.served("a.test"), a.sha256);

    // The same bundle again (dropped twice by a retrying script): settled,
    // not refused; and b.test's file holds a certificate its endpoint does
    // not serve (copied in without a reload).
    w.drop_file("a.test.pem", a.fullchain_pem().as_bytes());
    w.drop_file("a.test.key", a.key_pem.as_bytes());
    let b_disk = w.ca.leaf(&["b.test"]).days(-1, 100).build();
    support::pki::write(&w.ssl_dir(), "b.test", &b_disk);
    let b = w.ca.leaf(&["b.test"]).days(-1, 385).build();
    w.drop_file("b.test.pem", b.fullchain_pem().as_bytes());
    w.drop_file("b.test.key", b.key_pem.as_bytes());
    let ssl_before = hashes(&w.ssl_dir());

    let out = w.run_once();
    let log = agent_util::text(&out.stderr);
    assert!(out.status.success(), "{log}");
    // (The agent settles a bundle that is the installed certificate before
    // its batch; drift checks watch what is served.)
    assert!(
        log.contains("installed already") || log.contains("already installed"),
        "{log}"
    );
    // b.test: one line naming what is served and what the file holds.
    let line = log
        .lines()
        .find(|l| l.contains("b.test") && l.contains("not installed"))
        .unwrap_or_else(|| panic!("b.test's refusal is reported:\n{log}"));
    assert!(line.contains(&w.site("b.test").old.sha256), "{line}");
    assert!(line.contains(&b_disk.sha256), "{line}");
    assert_eq!(hashes(&w.ssl_dir()), ssl_before, "nothing changed");
    assert_eq!(w.served("a.test"), a.sha256);
    assert_eq!(w.served("b.test"), w.site("b.test").old.sha256);
    // a.test's second bundle is done, not failed.
    let failed = w.stamps("failed");
    assert!(
        failed.iter().all(|d| !d.join("a.test.pem").exists()),
        "{failed:?}\n{log}"
    );
}
