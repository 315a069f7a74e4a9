//! The test helpers themselves, against real servers: the generated PKI is
//! what nginx and apache serve (seen by `openssl s_client`, not by
//! certswap), SNI picks the site, and dropping a guard leaves no process.

mod support;

use std::time::Duration;

use support::apache::Apache;
use support::nginx::Nginx;
use support::pki::{self, Ca};
use support::{SiteSpec, pid_alive, served_sha256, wait_served};

fn assert_gone(pids: &[i32], what: &str) {
    for &pid in pids {
        assert!(!pid_alive(pid), "{what} pid {pid} still alive after drop");
    }
}

#[test]
fn pki_leaf_facts() {
    let root = Ca::new("Selftest Root");
    let int = root.intermediate("Selftest Issuing CA");
    let leaf = int.leaf(&["a.test", "www.a.test"]).days(-1, 90).build();
    assert_eq!(leaf.sha256.len(), 64);
    assert_eq!(leaf.chain_pem, int.cert_pem());
    assert_eq!(root.leaf(&["r.test"]).build().chain_pem, "");
    assert_eq!(
        pki::pem_sha256(&leaf.fullchain_pem()),
        Some(leaf.sha256.clone())
    );
    assert_eq!(leaf.not_after.nanosecond(), 0);

    let renewed = int
        .leaf(&["a.test"])
        .key(&leaf.key_pem)
        .days(-1, 400)
        .build();
    assert_eq!(
        renewed.key_pem, leaf.key_pem,
        "own-CSR renewal keeps the key"
    );
    assert_ne!(renewed.sha256, leaf.sha256);

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki::write(dir.path(), "a.test", &leaf);
    assert!(cert.ends_with("a.test.pem") && key.ends_with("a.test.key"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(pki::leaf_sha256_file(&cert), leaf.sha256);
    assert_eq!(pki::sha256_file(&cert).len(), 64);

    // openssl agrees the chain verifies up to the root and has the dates.
    std::fs::write(dir.path().join("root.pem"), root.root_pem()).unwrap();
    std::fs::write(dir.path().join("chain.pem"), &leaf.chain_pem).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(dir.path().join("root.pem"))
        .arg("-untrusted")
        .arg(dir.path().join("chain.pem"))
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let expired = int.leaf(&["old.test"]).days(-100, -10).build();
    let out = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(dir.path().join("root.pem"))
        .arg("-untrusted")
        .arg(dir.path().join("chain.pem"))
        .arg({
            let (c, _) = pki::write(dir.path(), "old.test", &expired);
            c
        })
        .output()
        .unwrap();
    assert!(!out.status.success(), "an expired leaf must not verify");
}

#[test]
fn nginx_serves_each_site_by_sni_and_drop_stops_it() {
    let ca = Ca::new("Selftest Root").intermediate("Selftest nginx CA");
    let a = ca.leaf(&["a.test"]).build();
    let b = ca.leaf(&["b.test", "www.b.test"]).build();
    let certs = tempfile::tempdir().unwrap();
    let (a_cert, a_key) = pki::write(certs.path(), "a.test", &a);
    let (b_cert, b_key) = pki::write(certs.path(), "b.test", &b);

    let nginx = Nginx::start(&[
        SiteSpec::new("a.test", &a_cert, &a_key),
        SiteSpec::new("b.test", &b_cert, &b_key).alias("www.b.test"),
    ]);
    assert_eq!(served_sha256(nginx.port(), "a.test").unwrap(), a.sha256);
    assert_eq!(served_sha256(nginx.port(), "b.test").unwrap(), b.sha256);
    assert_eq!(served_sha256(nginx.port(), "www.b.test").unwrap(), b.sha256);
    assert_eq!(nginx.pid(), Some(nginx.master_pid()));
    assert!(nginx.configtest().is_ok());

    // Swap a's files by hand and reload: the helper sees the new leaf.
    let a2 = ca.leaf(&["a.test"]).days(-1, 400).build();
    pki::write(certs.path(), "a.test", &a2);
    nginx.reload_and_wait(Duration::from_secs(10)).unwrap();
    wait_served(
        nginx.port(),
        "a.test",
        &a2.sha256,
        3,
        Duration::from_secs(10),
    )
    .unwrap();

    // The generated certswap config parses as TOML with the expected keys.
    let state = tempfile::tempdir().unwrap();
    let toml = nginx.certswap_config(
        state.path(),
        &[("a.test", &a_cert, &a_key), ("b.test", &b_cert, &b_key)],
        Some(&certs.path().join("root.pem")),
    );
    certswap::config::Config::parse(&toml, std::path::Path::new("nginx.toml"))
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let v: toml::Value = toml::from_str(&toml).unwrap();
    assert_eq!(v["server"]["kind"].as_str(), Some("nginx"));
    assert_eq!(v["site"].as_array().unwrap().len(), 2);
    assert_eq!(v["site"][1]["names"][0].as_str(), Some("www.b.test"));
    assert_eq!(
        v["site"][0]["endpoints"][0].as_str().unwrap(),
        nginx.endpoint()
    );

    let mut pids = nginx.worker_pids();
    assert!(!pids.is_empty());
    pids.push(nginx.master_pid());
    drop(nginx);
    assert_gone(&pids, "nginx");
}

#[test]
fn apache_serves_its_site_and_drop_stops_it() {
    let root = Ca::new("Selftest Root");
    let ca = root.intermediate("Selftest apache CA");
    let leaf = ca.leaf(&["ap.test"]).build();
    let certs = tempfile::tempdir().unwrap();
    // Vendor apache style: leaf, chain and key in separate files.
    let cert = certs.path().join("ap.test_public.crt");
    let chain = certs.path().join("ap.test_chain.crt");
    let key = certs.path().join("ap.test.key");
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&chain, &leaf.chain_pem).unwrap();
    pki::write_key(&key, &leaf.key_pem);

    let apache = Apache::start(&[SiteSpec::new("ap.test", &cert, &key).chain(&chain)]);
    assert_eq!(
        served_sha256(apache.port(), "ap.test").unwrap(),
        leaf.sha256
    );
    assert_eq!(apache.pid(), Some(apache.master_pid()));
    assert!(apache.is_running());

    let state = tempfile::tempdir().unwrap();
    let toml = apache.certswap_config(state.path(), &[("ap.test", &cert, &key)], None);
    certswap::config::Config::parse(&toml, std::path::Path::new("apache.toml"))
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let v: toml::Value = toml::from_str(&toml).unwrap();
    assert_eq!(v["server"]["kind"].as_str(), Some("apache"));
    assert_eq!(
        v["site"][0]["chain"].as_str().map(std::path::PathBuf::from),
        Some(chain.clone())
    );

    let mut pids = apache.worker_pids();
    assert!(!pids.is_empty());
    pids.push(apache.master_pid());
    drop(apache);
    assert_gone(&pids, "apache");
}

#[test]
fn two_servers_get_different_ports() {
    let ca = Ca::new("Selftest Root");
    let leaf = ca.leaf(&["p.test"]).build();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = pki::write(certs.path(), "p.test", &leaf);
    let site = [SiteSpec::new("p.test", &cert, &key)];
    let one = Nginx::start(&site);
    let two = Nginx::start(&site);
    assert_ne!(one.port(), two.port());
    assert_eq!(served_sha256(two.port(), "p.test").unwrap(), leaf.sha256);
}

#[test]
fn a_taken_port_is_retried_with_another() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let ca = Ca::new("Selftest Root");
    let leaf = ca.leaf(&["t.test"]).build();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = pki::write(certs.path(), "t.test", &leaf);
    let site = [SiteSpec::new("t.test", &cert, &key)];

    let nginx = Nginx::start_on(Some(port), &site);
    assert_ne!(nginx.port(), port);
    assert_eq!(served_sha256(nginx.port(), "t.test").unwrap(), leaf.sha256);

    let apache = Apache::start_on(Some(port), &site);
    assert_ne!(apache.port(), port);
    assert_eq!(served_sha256(apache.port(), "t.test").unwrap(), leaf.sha256);
}

#[test]
fn apache_graceful_serves_new_files_and_a_crashed_parent_is_seen() {
    let ca = Ca::new("Selftest Root");
    let one = ca.leaf(&["g.test"]).build();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = pki::write(certs.path(), "g.test", &one);
    let mut apache = Apache::start(&[SiteSpec::new("g.test", &cert, &key)]);
    let parent = apache.master_pid();

    let two = ca.leaf(&["g.test"]).days(-1, 400).build();
    pki::write(certs.path(), "g.test", &two);
    apache.graceful_and_wait(Duration::from_secs(10)).unwrap();
    wait_served(
        apache.port(),
        "g.test",
        &two.sha256,
        3,
        Duration::from_secs(10),
    )
    .unwrap();

    // A key that does not match the cert passes `apache2 -t`, and the
    // graceful restart makes the parent exit (DESIGN.md).
    let other = ca.leaf(&["g.test"]).build();
    pki::write_key(&key, &other.key_pem);
    assert!(apache.configtest().is_ok());
    assert!(apache.graceful_and_wait(Duration::from_secs(10)).is_err());
    assert!(!apache.is_running());
    assert!(!pid_alive(parent));

    // Back to a good pair: restart brings it up on the same port.
    pki::write(certs.path(), "g.test", &two);
    let port = apache.port();
    apache.restart();
    assert_eq!(apache.port(), port);
    assert_eq!(served_sha256(port, "g.test").unwrap(), two.sha256);
}

#[test]
fn drop_after_a_killed_master_leaves_no_workers() {
    let ca = Ca::new("Selftest Root");
    let leaf = ca.leaf(&["k.test"]).build();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = pki::write(certs.path(), "k.test", &leaf);
    let nginx = Nginx::start(&[SiteSpec::new("k.test", &cert, &key)]);
    let master = nginx.master_pid();
    let workers = nginx.worker_pids();
    assert!(!workers.is_empty());

    // A crash: nginx workers outlive a SIGKILLed master.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(master),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t = std::time::Instant::now();
    while pid_alive(master) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !pid_alive(master),
        "a killed (zombie) master counts as dead"
    );
    assert!(workers.iter().any(|&w| pid_alive(w)), "workers outlive it");

    drop(nginx);
    assert_gone(&workers, "nginx worker");
}
