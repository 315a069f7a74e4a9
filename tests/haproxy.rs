//! certswap end to end on the real Debian HAProxy 2.6 (tests/support/
//! haproxy.rs), through the CLI and the agent: an install verified with no
//! reload at all (master and worker pids unchanged), a bad pair refused
//! before the socket is touched, a probe that never sees the new leaf
//! rolled back through the socket, a crash at every step repaired (disk
//! and memory agree again), a restart after an install serving the new
//! certificate, the reload fallback, and one agent pass renewing a site on
//! HAProxy and a site on nginx of the same host.

mod agent_util;
mod support;

use std::fs;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::haproxy::Haproxy;
use support::nginx::Nginx;
use support::pki::{self, Ca, Leaf};
use support::world::text;
use support::{SiteSpec, certswap, served_sha256, toml_path};

const SITE: &str = "shop.test";

/// `certswap --config CONFIG ARGS…` with `env` set.
fn run(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = certswap();
    cmd.arg("--config").arg(config).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run certswap")
}

fn combined(leaf: &Leaf) -> String {
    format!("{}{}", leaf.fullchain_pem(), leaf.key_pem)
}

fn serial(leaf: &Leaf) -> String {
    let der = pem::parse(&leaf.cert_pem).expect("PEM");
    certswap::cert::CertInfo::from_der(der.contents())
        .expect("leaf")
        .serial
}

/// One site on a real HAProxy, its certswap config and state dir.
struct World {
    dir: tempfile::TempDir,
    ca: Ca,
    old: Leaf,
    /// The site's combined PEM (cert, chain, key): its one slot.
    pem: PathBuf,
    proxy: Haproxy,
    config: PathBuf,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let ssl = dir.path().join("ssl");
        fs::create_dir(&ssl).expect("mkdir");
        let ca = Ca::new("certswap haproxy test root");
        let old = ca.leaf(&[SITE]).days(-345, 20).build();
        let pem = ssl.join("shop.pem");
        fs::write(&pem, combined(&old)).expect("pem");
        fs::set_permissions(&pem, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let proxy = Haproxy::start(&[SiteSpec::new(SITE, &pem, &pem)]);
        let config = dir.path().join("certswap.toml");
        let w = World {
            dir,
            ca,
            old,
            pem,
            proxy,
            config,
        };
        w.write_config(&w.proxy.server_toml(), None);
        w
    }

    /// The config with `server` lines and, if given, other endpoints.
    fn write_config(&self, server: &str, endpoints: Option<&str>) {
        let roots = self.dir.path().join("roots.pem");
        fs::write(&roots, self.ca.root_pem()).expect("roots");
        let eps = endpoints.map_or_else(|| self.proxy.endpoint(), str::to_string);
        fs::write(
            &self.config,
            format!(
                "state_dir = {}\n[server]\n{server}\n[probe]\ntimeout = \"2s\"\ndeadline = \"4s\"\nconsecutive = 2\nca_file = {}\n\
                 [[site]]\nname = \"{SITE}\"\ncert = {pem}\nkey = {pem}\nendpoints = [\"{eps}\"]\n",
                toml_path(&self.dir.path().join("state")),
                toml_path(&roots),
                pem = toml_path(&self.pem),
            ),
        )
        .expect("config");
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        run(&self.config, args, env)
    }

    /// A renewed leaf as a vendor's pair of files.
    fn bundle(&self, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        let d = self.dir.path().join("bundles");
        fs::create_dir_all(&d).expect("mkdir");
        pki::write(&d, name, leaf)
    }

    /// Install a renewal (valid for 385 days); it must verify.
    fn renew(&self) -> (Leaf, serde_json::Value) {
        let new = self.ca.leaf(&[SITE]).days(-1, 385).build();
        let (cert, key) = self.bundle("new", &new);
        let out = self.install(&cert, &key);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(v["result"], "verified", "{v}");
        (new, v)
    }

    fn install(&self, cert: &Path, key: &Path) -> Output {
        self.install_env(cert, key, &[])
    }

    fn install_env(&self, cert: &Path, key: &Path, env: &[(&str, &str)]) -> Output {
        let (c, k) = (cert.to_str().expect("utf8"), key.to_str().expect("utf8"));
        self.run_env(
            &["install", "--site", SITE, "--cert", c, "--key", k, "--json"],
            env,
        )
    }

    fn served(&self) -> String {
        served_sha256(self.proxy.port(), SITE).expect("served")
    }

    /// The serial HAProxy holds in memory, and the one on disk, agree.
    fn assert_in_step(&self, want: &Leaf, what: &str) {
        assert_eq!(
            pki::leaf_sha256_file(&self.pem),
            want.sha256,
            "{what}: the file on disk"
        );
        assert_eq!(
            self.proxy.loaded_serial(&self.pem),
            serial(want),
            "{what}: HAProxy's memory"
        );
        assert_eq!(self.served(), want.sha256, "{what}: served");
    }
}

#[test]
fn install_is_verified_with_no_reload_and_survives_a_restart() {
    let mut w = World::new();
    assert_eq!(w.served(), w.old.sha256);
    let (master, workers) = (w.proxy.master_pid(), w.proxy.worker_pids());
    let (new, v) = w.renew();
    assert_eq!(v["served"][0]["sha256"], new.sha256.as_str());

    // No reload at all: the same master, the same workers.
    assert_eq!(w.proxy.reloads(), 0, "{}", w.proxy.log());
    assert_eq!(w.proxy.master_pid(), master);
    assert_eq!(w.proxy.worker_pids(), workers);
    w.assert_in_step(&new, "after the install");
    // The one slot holds cert, chain and key, as HAProxy reads it.
    let on_disk = fs::read_to_string(&w.pem).expect("pem");
    assert!(
        on_disk.contains(new.key_pem.trim()),
        "the key is in the PEM"
    );
    assert!(!on_disk.contains(w.old.key_pem.trim()));

    // Disk and memory in step: a restart loads the same certificate.
    w.proxy.restart();
    w.assert_in_step(&new, "after a restart");
}

/// A Unix socket that relays to HAProxy's and counts connections: proof
/// of whether certswap talked to the runtime API at all.
struct Spy {
    path: PathBuf,
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spy {
    fn new(dir: &Path, upstream: PathBuf) -> Spy {
        let path = dir.join("spy.sock");
        let l = UnixListener::bind(&path).expect("bind spy");
        l.set_nonblocking(true).expect("nonblocking");
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (count.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((down, _)) => {
                        c.fetch_add(1, Ordering::SeqCst);
                        let _ = down.set_nonblocking(false);
                        let up = UnixStream::connect(&upstream).expect("upstream");
                        let (mut d2, mut u2) = (
                            down.try_clone().expect("clone"),
                            up.try_clone().expect("clone"),
                        );
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut d2, &mut u2);
                            let _ = u2.shutdown(std::net::Shutdown::Write);
                        });
                        let (mut u, mut d) = (up, down);
                        let _ = std::io::copy(&mut u, &mut d);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Spy {
            path,
            count,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Spy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_bad_pair_is_refused_before_the_socket_is_touched() {
    let w = World::new();
    let spy = Spy::new(w.dir.path(), w.proxy.stats_socket());
    let server = w
        .proxy
        .server_toml()
        .replace(&toml_path(&w.proxy.stats_socket()), &toml_path(&spy.path));
    w.write_config(&server, None);
    let before = pki::sha256_file(&w.pem);
    let new = w.ca.leaf(&[SITE]).days(-1, 385).build();
    let other = w.ca.leaf(&[SITE]).days(-1, 385).build();
    let (cert, _) = w.bundle("new", &new);
    let (_, wrong_key) = w.bundle("other", &other);

    let out = w.install(&cert, &wrong_key);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(pki::sha256_file(&w.pem), before, "not a byte changed");
    assert_eq!(
        spy.count.load(Ordering::SeqCst),
        0,
        "the socket was not touched"
    );
    assert_eq!(w.proxy.reloads(), 0);
    w.assert_in_step(&w.old, "after the refusal");

    // The spy relays: the same config installs a good pair through it.
    let (cert, key) = w.bundle("good", &new);
    let out = w.install(&cert, &key);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(spy.count.load(Ordering::SeqCst) > 0);
    w.assert_in_step(&new, "after a good install through the spy");
}

#[test]
fn a_probe_that_never_sees_the_new_leaf_rolls_back_through_the_socket() {
    let w = World::new();
    // The site's endpoint is another HAProxy that keeps the old leaf: the
    // probe never sees the new one.
    let frozen = w.dir.path().join("frozen.pem");
    fs::write(&frozen, combined(&w.old)).expect("frozen");
    let other = Haproxy::start(&[SiteSpec::new(SITE, &frozen, &frozen)]);
    w.write_config(&w.proxy.server_toml(), Some(&other.endpoint()));
    let before = pki::sha256_file(&w.pem);
    let (master, workers) = (w.proxy.master_pid(), w.proxy.worker_pids());
    let new = w.ca.leaf(&[SITE]).days(-1, 385).build();
    let (cert, key) = w.bundle("new", &new);

    let out = w.install(&cert, &key);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["result"], "rolled_back", "{v}");
    assert_eq!(pki::sha256_file(&w.pem), before, "the old bytes are back");
    // Back in memory too, through the socket: still no reload.
    w.assert_in_step(&w.old, "after the rollback");
    assert_eq!(w.proxy.reloads(), 0, "{}", w.proxy.log());
    assert_eq!(w.proxy.master_pid(), master);
    assert_eq!(w.proxy.worker_pids(), workers);

    // The same, killed after the old bytes are back on disk but before
    // they went through the socket: memory holds the new leaf, disk the
    // old. The next command repairs: they agree again, still no reload.
    let crashed = w.install_env(
        &cert,
        &key,
        &[(certswap::failpoint::ENV, certswap::failpoint::AFTER_RESTORE)],
    );
    assert_eq!(crashed.status.code(), None, "{}", text(&crashed));
    assert_eq!(pki::sha256_file(&w.pem), before);
    assert_eq!(
        w.proxy.loaded_serial(&w.pem),
        serial(&new),
        "memory and disk differ now"
    );
    let next = w.run(&["rollback", "--site", SITE]);
    assert_eq!(next.status.code(), Some(2), "{}", text(&next));
    w.assert_in_step(&w.old, "after the repair");
    assert_eq!(w.proxy.reloads(), 0, "{}", w.proxy.log());
}

#[test]
fn without_a_stats_socket_the_install_reloads_through_the_master() {
    let w = World::new();
    let server = w
        .proxy
        .server_toml()
        .lines()
        .filter(|l| !l.starts_with("stats_socket"))
        .collect::<Vec<_>>()
        .join("\n");
    w.write_config(&server, None);
    let master = w.proxy.master_pid();
    let new = w.ca.leaf(&[SITE]).days(-1, 385).build();
    let (cert, key) = w.bundle("new", &new);
    let out = w.install(&cert, &key);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(w.proxy.reloads(), 1, "one graceful reload");
    assert_eq!(w.proxy.master_pid(), master);
    w.assert_in_step(&new, "after the reload");
}

#[test]
fn a_crash_at_every_step_is_repaired_and_disk_and_memory_agree() {
    for point in certswap::failpoint::POINTS {
        let w = World::new();
        let new = w.ca.leaf(&[SITE]).days(-1, 385).build();
        let (cert, key) = w.bundle("new", &new);
        let crashed = w.install_env(&cert, &key, &[(certswap::failpoint::ENV, point)]);
        if *point == "after-rename-key" {
            // A combined PEM has no key file to rename: the point is not
            // on its path, and the install simply verifies.
            assert_eq!(
                crashed.status.code(),
                Some(0),
                "{point}: {}",
                text(&crashed)
            );
            w.assert_in_step(&new, point);
            continue;
        }
        assert_eq!(crashed.status.code(), None, "{point}: {}", text(&crashed));

        // The next command repairs first: before the commit point the old
        // pair comes back on disk and in memory, after it the new one stays.
        let next = w.run(&["rollback", "--site", SITE]);
        // After the commit point the install stood and rollback went back
        // one version; before it there was no version to go back to.
        let code = if *point == "after-commit" { 0 } else { 2 };
        assert_eq!(next.status.code(), Some(code), "{point}: {}", text(&next));
        w.assert_in_step(&w.old, point);
        let left: Vec<_> = fs::read_dir(w.pem.parent().expect("dir"))
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "shop.pem" && n != "frozen.pem")
            .collect();
        assert!(left.is_empty(), "{point}: left beside the PEM: {left:?}");

        let out = w.install(&cert, &key);
        assert_eq!(out.status.code(), Some(0), "{point}: {}", text(&out));
        w.assert_in_step(&new, point);
    }
}

/// A host with HAProxy (site edge.test, server "edge") and nginx (site
/// web.test, server "web") in one certswap config with an inbox.
struct TwoServers {
    dir: tempfile::TempDir,
    ca: Ca,
    edge_old: Leaf,
    web_old: Leaf,
    edge_pem: PathBuf,
    web_cert: PathBuf,
    proxy: Haproxy,
    nginx: Nginx,
    inbox: PathBuf,
    config: PathBuf,
}

impl TwoServers {
    fn new() -> TwoServers {
        let dir = tempfile::tempdir().expect("tempdir");
        let ssl = dir.path().join("ssl");
        fs::create_dir(&ssl).expect("mkdir");
        let ca = Ca::new("certswap two servers root");
        let edge_old = ca.leaf(&["edge.test"]).days(-345, 20).build();
        let web_old = ca.leaf(&["web.test"]).days(-345, 20).build();
        let edge_pem = ssl.join("edge.pem");
        fs::write(&edge_pem, combined(&edge_old)).expect("edge pem");
        let (web_cert, web_key) = pki::write(&ssl, "web.test", &web_old);
        let proxy = Haproxy::start(&[SiteSpec::new("edge.test", &edge_pem, &edge_pem)]);
        let nginx = Nginx::start(&[SiteSpec::new("web.test", &web_cert, &web_key)]);
        let inbox = dir.path().join("inbox");
        fs::create_dir(&inbox).expect("inbox");
        let roots = dir.path().join("roots.pem");
        fs::write(&roots, ca.root_pem()).expect("roots");
        let config = dir.path().join("certswap.toml");
        fs::write(
            &config,
            format!(
                "state_dir = {state}\n\
                 [[server]]\nname = \"edge\"\n{hx}\n\
                 [[server]]\nname = \"web\"\nkind = \"nginx\"\nbinary = \"{nb}\"\nconfig = {nc}\nprefix = {np}\npid_file = {npid}\n\
                 [probe]\ntimeout = \"2s\"\ndeadline = \"10s\"\nconsecutive = 2\nca_file = {roots}\n\
                 [[site]]\nname = \"edge.test\"\nserver = \"edge\"\ncert = {ep}\nkey = {ep}\nendpoints = [\"{ee}\"]\n\
                 [[site]]\nname = \"web.test\"\nserver = \"web\"\ncert = {wc}\nkey = {wk}\nendpoints = [\"{we}\"]\n\
                 [[source]]\nkind = \"inbox\"\npath = {inbox}\ndebounce = \"200ms\"\n",
                state = toml_path(&dir.path().join("state")),
                hx = proxy.server_toml(),
                nb = support::nginx::BINARY,
                nc = toml_path(&nginx.conf_path()),
                np = toml_path(nginx.prefix()),
                npid = toml_path(&nginx.pid_file()),
                roots = toml_path(&roots),
                ep = toml_path(&edge_pem),
                ee = proxy.endpoint(),
                wc = toml_path(&web_cert),
                wk = toml_path(&web_key),
                we = nginx.endpoint(),
                inbox = toml_path(&inbox),
            ),
        )
        .expect("config");
        TwoServers {
            dir,
            ca,
            edge_old,
            web_old,
            edge_pem,
            web_cert,
            proxy,
            nginx,
            inbox,
            config,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        run(&self.config, args, &[])
    }

    fn served(&self) -> (String, String) {
        (
            served_sha256(self.proxy.port(), "edge.test").expect("edge"),
            served_sha256(self.nginx.port(), "web.test").expect("web"),
        )
    }
}

#[test]
fn one_agent_pass_renews_a_site_on_haproxy_and_one_on_nginx() {
    let h = TwoServers::new();
    let edge_new = h.ca.leaf(&["edge.test"]).days(-1, 385).build();
    let web_new = h.ca.leaf(&["web.test"]).days(-1, 385).build();
    pki::write(&h.inbox, "edge.test", &edge_new);
    pki::write(&h.inbox, "web.test", &web_new);
    let (master, workers) = (h.proxy.master_pid(), h.proxy.worker_pids());
    let nginx_workers = h.nginx.worker_pids();

    let mut cmd = agent_util::agent_cmd(&h.config);
    cmd.arg("--once");
    let out = agent_util::output_within(cmd, Duration::from_secs(90));
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    // One batch per server.
    assert!(
        log.contains("installing as one batch bundles=1 server=edge"),
        "{log}"
    );
    assert!(
        log.contains("installing as one batch bundles=1 server=web"),
        "{log}"
    );

    assert_eq!(
        h.served(),
        (edge_new.sha256.clone(), web_new.sha256.clone()),
        "{log}"
    );
    // HAProxy in memory (no reload), nginx by its one reload.
    assert_eq!(h.proxy.reloads(), 0, "{log}");
    assert_eq!(h.proxy.master_pid(), master);
    assert_eq!(h.proxy.worker_pids(), workers);
    assert_ne!(h.nginx.worker_pids(), nginx_workers, "nginx reloaded");
    assert_eq!(pki::leaf_sha256_file(&h.edge_pem), edge_new.sha256);
    assert_eq!(pki::leaf_sha256_file(&h.web_cert), web_new.sha256);
}

#[test]
fn install_batch_and_rollback_of_two_sites_drive_each_sites_server() {
    let h = TwoServers::new();
    let edge_new = h.ca.leaf(&["edge.test"]).days(-1, 385).build();
    let web_new = h.ca.leaf(&["web.test"]).days(-1, 385).build();
    let dir = h.dir.path().join("batch");
    fs::create_dir(&dir).expect("mkdir");
    pki::write(&dir, "edge.test", &edge_new);
    pki::write(&dir, "web.test", &web_new);
    let out = h.run(&["install", "--batch", dir.to_str().expect("utf8"), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("\"verified\"")
            .count(),
        2
    );
    assert_eq!(
        h.served(),
        (edge_new.sha256.clone(), web_new.sha256.clone())
    );
    assert_eq!(h.proxy.reloads(), 0);

    let out = h.run(&["rollback", "--site", "edge.test", "--site", "web.test"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        h.served(),
        (h.edge_old.sha256.clone(), h.web_old.sha256.clone())
    );
    assert_eq!(h.proxy.reloads(), 0, "rolled back through the socket too");

    // One site by name: its own server only.
    let (cert, key) = pki::write(&dir, "edge.test", &edge_new);
    let out = h.run(&[
        "install",
        "--site",
        "edge.test",
        "--cert",
        cert.to_str().expect("utf8"),
        "--key",
        key.to_str().expect("utf8"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        h.served(),
        (edge_new.sha256.clone(), h.web_old.sha256.clone())
    );
}

#[test]
fn a_multi_certificate_bundle_is_a_dual_site_renewed_in_memory_per_key_type() {
    use support::{ECDSA_SUITE, RSA_SUITE, served_sha256_with_cipher};
    let dir = tempfile::tempdir().expect("tempdir");
    let ssl = dir.path().join("ssl");
    fs::create_dir(&ssl).expect("mkdir");
    let ca = Ca::new("certswap haproxy bundle root");
    let ec_old = ca.leaf(&[SITE]).days(-345, 20).build();
    let rsa_old = ca
        .leaf(&[SITE])
        .days(-345, 20)
        .key(&pki::rsa_key_pem(&ssl, "old"))
        .build();
    // `crt shop.pem` with shop.pem.rsa and shop.pem.ecdsa beside it.
    let base = ssl.join("shop.pem");
    let (rsa_pem, ec_pem) = (ssl.join("shop.pem.rsa"), ssl.join("shop.pem.ecdsa"));
    fs::write(&rsa_pem, combined(&rsa_old)).expect("rsa");
    fs::write(&ec_pem, combined(&ec_old)).expect("ecdsa");
    let proxy = Haproxy::start(&[SiteSpec::new(SITE, &base, &base)]);
    let served = |suite| served_sha256_with_cipher(proxy.port(), SITE, suite).expect("served");
    assert_eq!(served(RSA_SUITE), rsa_old.sha256);
    assert_eq!(served(ECDSA_SUITE), ec_old.sha256);

    // discover writes the dual site; it is the config as is.
    let config = dir.path().join("certswap.toml");
    let server = format!(
        "state_dir = {}\n[server]\n{}",
        toml_path(&dir.path().join("state")),
        proxy.server_toml()
    );
    fs::write(&config, &server).expect("config");
    let out = run(&config, &["discover"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let blocks = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(blocks.contains("[[site.pair]]"), "{blocks}");
    let roots = dir.path().join("roots.pem");
    fs::write(&roots, ca.root_pem()).expect("roots");
    fs::write(
        &config,
        format!(
            "{server}[probe]\ndeadline = \"10s\"\nconsecutive = 2\nca_file = {}\n{blocks}",
            toml_path(&roots)
        ),
    )
    .expect("config");

    let ec_new = ca.leaf(&[SITE]).days(-1, 385).build();
    let (cert, key) = pki::write(&dir.path().join("ssl"), "ec-new", &ec_new);
    let out = run(
        &config,
        &[
            "install",
            "--site",
            SITE,
            "--cert",
            cert.to_str().expect("utf8"),
            "--key",
            key.to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The ECDSA slot is renewed, in memory; the RSA one is untouched.
    assert_eq!(served(ECDSA_SUITE), ec_new.sha256);
    assert_eq!(served(RSA_SUITE), rsa_old.sha256);
    assert_eq!(pki::leaf_sha256_file(&ec_pem), ec_new.sha256);
    assert_eq!(pki::leaf_sha256_file(&rsa_pem), rsa_old.sha256);
    assert_eq!(proxy.loaded_serial(&ec_pem), serial(&ec_new));
    assert_eq!(proxy.reloads(), 0);
}

#[test]
fn a_stats_socket_another_user_could_have_placed_refuses_the_change() {
    let w = World::new();
    // A symlink to the real socket: who made it is not known.
    let link = w.dir.path().join("link.sock");
    std::os::unix::fs::symlink(w.proxy.stats_socket(), &link).expect("symlink");
    let server = w
        .proxy
        .server_toml()
        .replace(&toml_path(&w.proxy.stats_socket()), &toml_path(&link));
    w.write_config(&server, None);
    let before = pki::sha256_file(&w.pem);
    let new = w.ca.leaf(&[SITE]).days(-1, 385).build();
    let (cert, key) = w.bundle("new", &new);
    let out = w.install(&cert, &key);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("link.sock is a symlink"), "{err}");
    assert_eq!(pki::sha256_file(&w.pem), before, "not a byte changed");
    w.assert_in_step(&w.old, "after the refusal");
    assert_eq!(w.proxy.reloads(), 0);
}

/// HAProxy's log lines, received on a Unix datagram socket.
fn drain(log: &std::os::unix::net::UnixDatagram) -> String {
    let mut lines = String::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = log.recv(&mut buf) {
        lines.push_str(&String::from_utf8_lossy(&buf[..n]));
        lines.push('\n');
    }
    lines
}

#[test]
fn its_looks_and_proofs_leave_no_failed_handshake_in_haproxys_log() {
    let w = World::new();
    // Logging as Debian's haproxy.cfg does: connections that carried no
    // request are not logged, failed handshakes are.
    let sock = w.proxy.dir().join("log.sock");
    let log = std::os::unix::net::UnixDatagram::bind(&sock).expect("bind log socket");
    log.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let conf = fs::read_to_string(w.proxy.conf_path()).expect("haproxy.cfg");
    let conf = conf
        .replacen(
            "global\n",
            &format!("global\n  log {} local0 info\n", sock.display()),
            1,
        )
        .replacen(
            "defaults\n",
            "defaults\n  log global\n  option httplog\n  option dontlognull\n",
            1,
        );
    w.proxy.set_config(&conf);
    w.proxy.reload_and_wait();
    // The control: a probe with no config behind it ends abruptly, which
    // HAProxy logs.
    let out = run(
        &w.config,
        &["probe", &format!("{SITE}@{}", w.proxy.endpoint())],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let control = drain(&log);
    assert!(
        control.contains("SSL handshake failure"),
        "HAProxy logs: {control}"
    );

    w.renew();
    let status = w.run(&["status", "--probe"]);
    assert!(!status.stdout.is_empty(), "{}", text(&status));
    // The install's look, its gate and its proof, and status's probe: each
    // ended as a visitor's connection does.
    let after = drain(&log);
    assert!(
        !after.contains("SSL handshake failure"),
        "HAProxy logs: {after}"
    );
}
