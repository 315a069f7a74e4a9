//! The one pipeline (issue 13) on a real nginx: a deploy hook whose
//! certificate covers three configured sites hands all three to ONE run —
//! one config test, one reload — and each site is verified and served;
//! `rollback --site A --site B` puts two sites back with one config test
//! and one reload, each serving its previous leaf.
//!
//! Config tests are counted with `strace -f` around the certswap process
//! (every `nginx -t` / `apache2 -t` it runs is an execve with `-t`);
//! nginx's reloads are counted from its own error log (each SIGHUP the
//! master receives is logged at notice level), apache's graceful reloads
//! from the same trace (each SIGUSR1 certswap sends is a
//! pidfd_send_signal or kill). The same hook test runs on apache.

mod support;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Output;

use support::apache::Apache;
use support::nginx::Nginx;
use support::pki::{self, Ca, Leaf};
use support::{SiteSpec, served_sha256};

const SITES: [&str; 3] = ["a.test", "b.test", "c.test"];

/// Three sites on one nginx, logging every reload, with a certswap config.
struct World {
    dir: tempfile::TempDir,
    ca: Ca,
    /// The leaf each site serves at the start, in the order of SITES.
    old: Vec<Leaf>,
    nginx: Nginx,
    config: PathBuf,
}

/// Every site of SITES with its own leaf (expiring in 20 days) written
/// under `ssl`: the server's vhosts, the certswap site files, the leaves.
#[allow(clippy::type_complexity)]
fn site_files(
    ssl: &Path,
    ca: &Ca,
) -> (
    Vec<SiteSpec>,
    Vec<(&'static str, PathBuf, PathBuf)>,
    Vec<Leaf>,
) {
    let mut specs = Vec::new();
    let mut files = Vec::new();
    let mut old = Vec::new();
    for name in SITES {
        let leaf = ca.leaf(&[name]).days(-345, 20).build();
        let (cert, key) = pki::write(ssl, name, &leaf);
        specs.push(SiteSpec::new(name, &cert, &key));
        files.push((name, cert, key));
        old.push(leaf);
    }
    (specs, files, old)
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let ssl = dir.path().join("ssl");
        std::fs::create_dir(&ssl).expect("mkdir ssl");
        let ca = Ca::new("certswap one pipeline test root");
        let (specs, files, old) = site_files(&ssl, &ca);
        let nginx = Nginx::start(&specs);
        nginx.log_reloads();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).expect("write ca");
        let text = nginx.certswap_config(&dir.path().join("state"), &files, Some(&ca_file));
        let config = dir.path().join("certswap.toml");
        std::fs::write(&config, text).expect("write config");
        World {
            dir,
            ca,
            old,
            nginx,
            config,
        }
    }

    /// certbot's `live/NAME` lineage (links into `archive/`) for `leaf`.
    fn lineage(&self, leaf: &Leaf) -> PathBuf {
        lineage_in(self.dir.path(), leaf)
    }

    /// `certswap deploy-hook --json` for `lineage` under strace: the output
    /// and how many `nginx -t` it ran.
    fn hook_traced(&self, lineage: &Path) -> (Output, usize) {
        let domains = SITES.join(" ");
        self.traced(
            &["deploy-hook", "--json"],
            &[
                ("RENEWED_LINEAGE", lineage.to_str().expect("utf-8 path")),
                ("RENEWED_DOMAINS", &domains),
            ],
        )
    }

    /// `certswap ARGS` (with `env`) under strace: the output and how many
    /// `nginx -t` it ran.
    fn traced(&self, args: &[&str], env: &[(&str, &str)]) -> (Output, usize) {
        let (out, tests, _) =
            traced_run(self.dir.path(), &self.config, args, env, "nginx", "SIGHUP");
        (out, tests)
    }
}

/// Three sites on one apache2, with a certswap config.
struct ApacheWorld {
    dir: tempfile::TempDir,
    ca: Ca,
    apache: Apache,
    config: PathBuf,
}

impl ApacheWorld {
    fn new() -> ApacheWorld {
        let dir = tempfile::tempdir().expect("tempdir");
        let ssl = dir.path().join("ssl");
        std::fs::create_dir(&ssl).expect("mkdir ssl");
        let ca = Ca::new("certswap one pipeline apache root");
        let (specs, files, _) = site_files(&ssl, &ca);
        let apache = Apache::start(&specs);
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).expect("write ca");
        let text = apache.certswap_config(&dir.path().join("state"), &files, Some(&ca_file));
        let config = dir.path().join("certswap.toml");
        std::fs::write(&config, text).expect("write config");
        ApacheWorld {
            dir,
            ca,
            apache,
            config,
        }
    }
}

/// `certswap --config CONFIG ARGS` (with `env`) under strace: the output,
/// how many config tests (`-t`) of `server` it ran, and how many reload
/// signals `sig` it sent.
fn traced_run(
    dir: &Path,
    config: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    server: &str,
    sig: &str,
) -> (Output, usize, usize) {
    let trace = dir.join("execve.trace");
    let mut cmd = std::process::Command::new("strace");
    cmd.args([
        "-f",
        "-qq",
        "-e",
        "trace=execve,kill,pidfd_send_signal",
        "-o",
    ])
    .arg(&trace)
    .arg(env!("CARGO_BIN_EXE_certswap"))
    .arg("--config")
    .arg(config)
    .args(args)
    .env_remove("CERTSWAP_CONFIG")
    .env_remove("CERT_PATH")
    .env_remove("CERT_FULLCHAIN_PATH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run strace certswap");
    let text = std::fs::read_to_string(&trace).expect("read the trace");
    let tests = text
        .lines()
        .filter(|l| l.contains("execve(") && l.contains(server) && l.contains("\"-t\""))
        .count();
    let signals = text
        .lines()
        .filter(|l| (l.contains("pidfd_send_signal(") || l.contains("kill(")) && l.contains(sig))
        .count();
    (out, tests, signals)
}

/// certbot's `live/NAME` lineage (links into `archive/`) for `leaf`, in `dir`.
fn lineage_in(dir: &Path, leaf: &Leaf) -> PathBuf {
    let root = dir.join("letsencrypt");
    let archive = root.join("archive/san");
    let live = root.join("live/san");
    std::fs::create_dir_all(&archive).expect("mkdir archive");
    std::fs::create_dir_all(&live).expect("mkdir live");
    std::fs::write(archive.join("fullchain1.pem"), leaf.fullchain_pem()).expect("write");
    pki::write_key(&archive.join("privkey1.pem"), &leaf.key_pem);
    symlink(
        "../../archive/san/fullchain1.pem",
        live.join("fullchain.pem"),
    )
    .expect("link");
    symlink("../../archive/san/privkey1.pem", live.join("privkey.pem")).expect("link");
    live
}

fn outcomes(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn deploy_hook_for_one_san_certificate_tests_and_reloads_once_for_all_its_sites() {
    let w = World::new();
    let new = w.ca.leaf(&SITES).days(-1, 385).build();
    let lineage = w.lineage(&new);
    let reloads = w.nginx.reloads();

    let (out, configtests) = w.hook_traced(&lineage);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{said}");
    let v = outcomes(&out);
    let sites: Vec<&str> = v.iter().map(|o| o["site"].as_str().unwrap_or("")).collect();
    assert_eq!(sites, SITES, "{said}");
    for o in &v {
        assert_eq!(o["result"], "verified", "{o}");
    }
    assert_eq!(
        configtests, 1,
        "one config test for the three sites: {said}"
    );
    assert_eq!(
        w.nginx.reloads(),
        reloads + 1,
        "one reload for the three sites: {}",
        w.nginx.error_log()
    );
    for name in SITES {
        assert_eq!(
            served_sha256(w.nginx.port(), name).expect("s_client sees a certificate"),
            new.sha256,
            "{name} serves the renewed leaf"
        );
    }
}

#[test]
fn rollback_of_two_sites_tests_and_reloads_once_and_both_serve_their_previous_leaf() {
    let w = World::new();
    let new = w.ca.leaf(&SITES).days(-1, 385).build();
    let lineage = w.lineage(&new);
    let (out, _) = w.hook_traced(&lineage);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reloads = w.nginx.reloads();

    let (out, configtests) = w.traced(
        &["rollback", "--site", SITES[0], "--site", SITES[1], "--json"],
        &[],
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{said}");
    let v = outcomes(&out);
    let sites: Vec<&str> = v.iter().map(|o| o["site"].as_str().unwrap_or("")).collect();
    assert_eq!(sites, SITES[..2], "{said}");
    for o in &v {
        assert_eq!(o["result"], "verified", "{o}");
    }
    assert_eq!(configtests, 1, "one config test for the two sites: {said}");
    assert_eq!(
        w.nginx.reloads(),
        reloads + 1,
        "one reload for the two sites: {}",
        w.nginx.error_log()
    );
    for (i, name) in SITES[..2].iter().enumerate() {
        assert_eq!(
            served_sha256(w.nginx.port(), name).expect("s_client sees a certificate"),
            w.old[i].sha256,
            "{name} serves its previous leaf"
        );
    }
    assert_eq!(
        served_sha256(w.nginx.port(), SITES[2]).expect("s_client sees a certificate"),
        new.sha256,
        "the site not named keeps the renewed leaf"
    );
}

#[test]
fn deploy_hook_on_apache_tests_and_reloads_once_for_all_the_sites_its_certificate_covers() {
    let w = ApacheWorld::new();
    let new = w.ca.leaf(&SITES).days(-1, 385).build();
    let lineage = lineage_in(w.dir.path(), &new);
    let domains = SITES.join(" ");
    let (out, configtests, reloads) = traced_run(
        w.dir.path(),
        &w.config,
        &["deploy-hook", "--json"],
        &[
            ("RENEWED_LINEAGE", lineage.to_str().expect("utf-8 path")),
            ("RENEWED_DOMAINS", &domains),
        ],
        "apache2",
        "SIGUSR1",
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{said}");
    let v = outcomes(&out);
    let sites: Vec<&str> = v.iter().map(|o| o["site"].as_str().unwrap_or("")).collect();
    assert_eq!(sites, SITES, "{said}");
    for o in &v {
        assert_eq!(o["result"], "verified", "{o}");
    }
    assert_eq!(
        configtests, 1,
        "one config test for the three sites: {said}"
    );
    assert_eq!(
        reloads, 1,
        "one graceful reload for the three sites: {said}"
    );
    for name in SITES {
        assert_eq!(
            served_sha256(w.apache.port(), name).expect("s_client sees a certificate"),
            new.sha256,
            "{name} serves the renewed leaf"
        );
    }
}
