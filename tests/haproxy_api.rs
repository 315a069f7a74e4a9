//! certswap's HAProxy runtime API client and its `WebServer`, on the real
//! Debian HAProxy 2.6 in a temp dir (tests/support/haproxy.rs): the
//! in-memory replacement with no reload (master and worker pids kept),
//! a refused pair aborted with nothing changed, the reload fallback, and
//! `certswap discover` on a real haproxy.cfg.

mod support;

use std::path::{Path, PathBuf};

use certswap::config::{ServerConfig, ServerKind, Site};
use certswap::server::haproxy_api::{self, ApiError, Socket};
use certswap::server::{Applied, Haproxy, WebServer};
use support::haproxy::Haproxy as Proxy;
use support::pki::{self, Ca, Leaf};
use support::{SiteSpec, served_sha256};

const SITE: &str = "shop.test";

/// A combined PEM (leaf, chain, key), as HAProxy reads it.
fn combined(leaf: &Leaf) -> String {
    format!("{}{}", leaf.fullchain_pem(), leaf.key_pem)
}

fn serial_of(leaf: &Leaf) -> String {
    let der = pem::parse(&leaf.cert_pem).expect("leaf PEM");
    let info = certswap::cert::CertInfo::from_der(der.contents()).expect("leaf");
    info.serial
}

struct Fixture {
    _dir: tempfile::TempDir,
    ca: Ca,
    old: Leaf,
    pem: PathBuf,
    proxy: Proxy,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("certswap haproxy test root");
    let old = ca.leaf(&[SITE]).days(-10, 20).build();
    let pem = dir.path().join("shop.pem");
    std::fs::write(&pem, combined(&old)).expect("write pem");
    let proxy = Proxy::start(&[SiteSpec::new(SITE, &pem, &pem)]);
    Fixture {
        _dir: dir,
        ca,
        old,
        pem,
        proxy,
    }
}

fn server_config(p: &Proxy, stats: bool, master: bool) -> ServerConfig {
    ServerConfig {
        name: "haproxy".into(),
        kind: ServerKind::Haproxy,
        binary: support::haproxy::BINARY.into(),
        config: p.conf_path(),
        prefix: None,
        pid_file: p.pid_file(),
        reload_command: None,
        stats_socket: stats.then(|| p.stats_socket()),
        master_socket: master.then(|| p.master_socket()),
    }
}

fn site(cert: &Path, key: &Path) -> Site {
    let text = format!(
        "[server]\nkind = \"haproxy\"\n[[site]]\nname = \"{SITE}\"\ncert = {}\nkey = {}\nendpoints = [\"127.0.0.1:1\"]\n",
        support::toml_path(cert),
        support::toml_path(key)
    );
    certswap::config::Config::parse(&text, Path::new("/x.toml"))
        .expect("config")
        .sites
        .remove(0)
}

#[test]
fn a_new_pem_is_committed_in_memory_with_no_reload() {
    let f = fixture();
    let port = f.proxy.port();
    assert_eq!(served_sha256(port, SITE).expect("served"), f.old.sha256);
    let (master, workers) = (f.proxy.master_pid(), f.proxy.worker_pids());

    let new = f.ca.leaf(&[SITE]).days(-1, 90).build();
    std::fs::write(&f.pem, combined(&new)).expect("new pem on disk");
    let hx = Haproxy::new(server_config(&f.proxy, true, true));
    hx.preflight().expect("the master is proven");
    let s = site(&f.pem, &f.pem);
    let applied = hx.apply(&[&s]).expect("applied");
    assert_eq!(applied, Applied::InMemory(1));

    // Served at once, by the same processes, with no reload at all.
    assert_eq!(served_sha256(port, SITE).expect("served"), new.sha256);
    assert_eq!(f.proxy.master_pid(), master);
    assert_eq!(f.proxy.worker_pids(), workers);
    assert_eq!(f.proxy.reloads(), 0);
    assert_eq!(f.proxy.loaded_serial(&f.pem), serial_of(&new));
    let shown = hx.loaded(&f.pem).expect("show ssl cert");
    let der = pem::parse(&new.cert_pem).expect("pem");
    assert_eq!(shown.sha1, haproxy_api::sha1_fingerprint(der.contents()));
}

#[test]
fn a_key_beside_the_cert_is_sent_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("certswap haproxy test root");
    let old = ca.leaf(&[SITE]).days(-10, 20).build();
    let cert = dir.path().join("shop.crt");
    let key = dir.path().join("shop.crt.key");
    std::fs::write(&cert, old.fullchain_pem()).expect("cert");
    pki::write_key(&key, &old.key_pem);
    let proxy = Proxy::start(&[SiteSpec::new(SITE, &cert, &key)]);
    assert_eq!(
        served_sha256(proxy.port(), SITE).expect("served"),
        old.sha256
    );

    let new = ca.leaf(&[SITE]).days(-1, 90).build();
    std::fs::write(&cert, new.fullchain_pem()).expect("cert");
    pki::write_key(&key, &new.key_pem);
    let hx = Haproxy::new(server_config(&proxy, true, false));
    let s = site(&cert, &key);
    assert_eq!(hx.apply(&[&s]).expect("applied"), Applied::InMemory(1));
    assert_eq!(
        served_sha256(proxy.port(), SITE).expect("served"),
        new.sha256
    );
    assert_eq!(proxy.reloads(), 0);
}

#[test]
fn a_mismatched_pair_is_refused_and_aborted_and_nothing_changes() {
    let f = fixture();
    let socket = Socket::trusted(
        "stats socket",
        &f.proxy.stats_socket(),
        haproxy_api::DEFAULT_TIMEOUT,
    )
    .expect("trusted socket");
    let new = f.ca.leaf(&[SITE]).days(-1, 90).build();
    let other = f.ca.leaf(&[SITE]).days(-1, 90).build();
    // The new leaf with another leaf's key: HAProxy refuses the commit.
    let bad = format!("{}{}", new.fullchain_pem(), other.key_pem);
    let e = socket
        .replace(&f.pem, bad.as_bytes(), &serial_of(&new))
        .expect_err("a mismatched pair is refused");
    assert!(matches!(e, ApiError::Refused { .. }), "{e}");
    let msg = format!("{e} {e:?}");
    assert!(!msg.contains("PRIVATE KEY"), "no key material in: {msg}");

    // Still the old leaf, and no transaction left open (`*` marks one).
    assert_eq!(
        served_sha256(f.proxy.port(), SITE).expect("served"),
        f.old.sha256
    );
    assert_eq!(f.proxy.loaded_serial(&f.pem), serial_of(&f.old));
    let list = Proxy::cli(&f.proxy.stats_socket(), "show ssl cert");
    assert!(!list.contains('*'), "a transaction stayed open: {list}");
    // A certificate without a key never opens a commit.
    let e = socket
        .replace(&f.pem, new.cert_pem.as_bytes(), &serial_of(&new))
        .expect_err("no key");
    assert!(e.to_string().contains("private key"), "{e}");
    assert_eq!(f.proxy.loaded_serial(&f.pem), serial_of(&f.old));
}

#[test]
fn a_file_haproxy_has_not_loaded_falls_back_to_a_reload() {
    let f = fixture();
    let master = f.proxy.master_pid();
    let workers = f.proxy.worker_pids();
    let new = f.ca.leaf(&[SITE]).days(-1, 90).build();
    std::fs::write(&f.pem, combined(&new)).expect("new pem");
    // Named through a path HAProxy does not know it by.
    let alias = f.pem.parent().expect("dir").join(".").join("shop.pem");
    let s = site(&alias, &alias);
    let hx = Haproxy::new(server_config(&f.proxy, true, true));
    assert_eq!(hx.apply(&[&s]).expect("applied"), Applied::Reloaded);
    wait_until(|| served_sha256(f.proxy.port(), SITE).ok() == Some(new.sha256.clone()));
    assert_eq!(f.proxy.master_pid(), master, "the master keeps its pid");
    wait_until(|| f.proxy.worker_pids().iter().all(|p| !workers.contains(p)));
    assert_eq!(f.proxy.reloads(), 1);
}

#[test]
fn without_sockets_the_reload_is_sigusr2_to_the_proven_master() {
    let f = fixture();
    let new = f.ca.leaf(&[SITE]).days(-1, 90).build();
    std::fs::write(&f.pem, combined(&new)).expect("new pem");
    let hx = Haproxy::new(server_config(&f.proxy, false, false));
    let s = site(&f.pem, &f.pem);
    assert_eq!(hx.apply(&[&s]).expect("applied"), Applied::Reloaded);
    wait_until(|| f.proxy.reloads() == 1);
    wait_until(|| served_sha256(f.proxy.port(), SITE).ok() == Some(new.sha256.clone()));
    hx.check_alive().expect("still the proven master");
}

#[test]
fn the_config_test_names_haproxys_alert() {
    let f = fixture();
    let hx = Haproxy::new(server_config(&f.proxy, true, true));
    hx.configtest().expect("the started config passes");
    std::fs::write(&f.pem, "not a pem\n").expect("break the pem");
    let e = hx.configtest().expect_err("a broken pem fails haproxy -c");
    assert!(e.to_string().contains("haproxy config test failed"), "{e}");
    assert!(e.to_string().contains("shop.pem"), "{e}");
}

#[test]
fn discover_prints_a_site_per_crt_of_a_real_config() {
    let f = fixture();
    let dir = f.pem.parent().expect("dir").to_path_buf();
    let listed = dir.join("list.txt");
    let other = f.ca.leaf(&["api.test"]).days(-1, 90).build();
    let api = dir.join("api.pem");
    std::fs::write(&api, combined(&other)).expect("api pem");
    std::fs::write(&listed, format!("{} [alpn h2] api.test\n", api.display())).expect("list");
    let extra = format!(
        "{}frontend api\n  bind 127.0.0.1:{} ssl crt-list {}\n",
        f.proxy.config_for(&[SiteSpec::new(SITE, &f.pem, &f.pem)]),
        support::free_port(),
        listed.display()
    );
    f.proxy.set_config(&extra);
    f.proxy.configtest().expect("a valid haproxy.cfg");
    let state = tempfile::tempdir().expect("state");
    let cfg = state.path().join("certswap.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = {}\n[server]\n{}",
            support::toml_path(&state.path().join("state")),
            f.proxy.server_toml()
        ),
    )
    .expect("config");
    let out = support::certswap()
        .args(["discover", "--config"])
        .arg(&cfg)
        .output()
        .expect("run discover");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("name = \"{SITE}\"")), "{text}");
    assert!(text.contains("name = \"api.test\""), "{text}");
    assert!(
        text.contains(&format!("endpoints = [\"{}\"]", f.proxy.endpoint())),
        "{text}"
    );
    assert!(!text.contains("# [[site]]"), "every block usable: {text}");
}

fn wait_until(mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met in 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

#[test]
fn the_examples_parse_and_agree_with_each_other() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(repo.join(p)).expect("example");
    let hx = certswap::config::Config::parse(&read("examples/haproxy.toml"), Path::new("hx"))
        .expect("examples/haproxy.toml");
    assert_eq!(hx.server.kind, ServerKind::Haproxy);
    assert_eq!(
        hx.server.stats_socket.as_deref(),
        Some(Path::new("/run/haproxy-admin.sock"))
    );
    // The haproxy.cfg beside it names the same socket and the same PEM.
    let cfg = read("examples/haproxy.cfg");
    assert!(cfg.contains("stats socket /run/haproxy-admin.sock mode 600 level admin"));
    let found = certswap::discover::haproxy::parse_text(&cfg, Path::new("haproxy.cfg"));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].endpoints, ["127.0.0.1:443"]);
    assert_eq!(found[0].refs[0].path, hx.sites[0].cert);

    let two = certswap::config::Config::parse(&read("examples/two-servers.toml"), Path::new("two"))
        .expect("examples/two-servers.toml");
    let per = two.per_server();
    assert_eq!(per.len(), 2);
    assert_eq!(per[0].server.kind, ServerKind::Haproxy);
    assert_eq!(per[0].sites[0].name, "shop.example.com");
    assert_eq!(per[1].server.kind, ServerKind::Nginx);
    assert_eq!(per[1].sites[0].name, "api.internal.example.com");
}

#[test]
fn a_daemon_without_master_worker_mode_is_not_signalled_as_if_reloaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("certswap haproxy test root");
    let leaf = ca.leaf(&[SITE]).days(-1, 20).build();
    let pem = dir.path().join("shop.pem");
    std::fs::write(&pem, combined(&leaf)).expect("pem");
    let pid_file = dir.path().join("haproxy.pid");
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "defaults\n  mode http\n  timeout client 1s\n  timeout server 1s\n  timeout connect 1s\nfrontend f\n  bind 127.0.0.1:{} ssl crt {}\n",
            support::free_port(),
            pem.display()
        ),
    )
    .expect("cfg");
    // `-D`: a plain daemon, the pid file names the one process.
    let status = std::process::Command::new(support::haproxy::BINARY)
        .arg("-D")
        .arg("-f")
        .arg(&cfg)
        .arg("-p")
        .arg(&pid_file)
        .status()
        .expect("start haproxy -D");
    assert!(status.success());
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let hx = Haproxy::new(ServerConfig {
        name: "haproxy".into(),
        kind: ServerKind::Haproxy,
        binary: support::haproxy::BINARY.into(),
        config: cfg.clone(),
        prefix: None,
        pid_file: pid_file.clone(),
        reload_command: None,
        stats_socket: None,
        master_socket: None,
    });
    let e = hx.reload();
    // Stopped by its pid (ours: started above), whatever the result.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let e = e.expect_err("no reload of a non-master-worker haproxy");
    assert!(
        e.to_string().contains("does not run in master-worker mode"),
        "{e}"
    );
}
