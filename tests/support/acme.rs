//! A real ACME CA and a real ACME client for tests: pebble (Let's
//! Encrypt's test CA, Debian package `pebble`) on free loopback ports, and
//! certbot with its own config/work/logs dirs talking to it
//! (RECIPES.md, "pebble + certbot").
//!
//! ```ignore
//! let pebble = Pebble::start();
//! let certbot = Certbot::new(&pebble);
//! let out = certbot.run(&["certonly", "-d", "a.test"], &[]);
//! let root = pebble.root_pem(); // changes on every start
//! ```
//!
//! Pebble runs with `PEBBLE_VA_ALWAYS_VALID=1 PEBBLE_VA_NOSLEEP=1`: no
//! challenge is checked, so certbot's standalone server only has to bind;
//! and `PEBBLE_WFE_NONCEREJECT=0` (no deliberate bad nonces).
//! Pebble's own HTTPS listener gets a throwaway CA and a `127.0.0.1` leaf
//! from [`super::pki`]; it is killed (with its process group) in Drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::pki::{self, Ca};
use super::{ServerProcess, StartError, free_port, start_with_retries};

const PEBBLE: &str = "/usr/bin/pebble";
const CERTBOT: &str = "/usr/bin/certbot";

/// A running pebble on `127.0.0.1`.
pub struct Pebble {
    dir: tempfile::TempDir,
    port: u16,
    mgmt_port: u16,
    process: Option<ServerProcess>,
}

impl Pebble {
    /// Start pebble on free ports (retried on "Address already in use").
    pub fn start() -> Pebble {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("pebble listener test CA");
        let leaf = ca.leaf(&["localhost", "127.0.0.1"]).build();
        let (cert, key) = pki::write(dir.path(), "listener", &leaf);
        std::fs::write(dir.path().join("listener-ca.pem"), ca.root_pem()).expect("write CA");
        let (port, mgmt_port, process) = start_with_retries("pebble", None, |port| {
            let mgmt = free_port();
            let config = dir.path().join("pebble.json");
            let json = serde_json::json!({"pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt}"),
                "certificate": cert,
                "privateKey": key,
                // Ports pebble's VA would connect to; never used with
                // PEBBLE_VA_ALWAYS_VALID.
                "httpPort": free_port(),
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }});
            std::fs::write(&config, json.to_string()).expect("write pebble.json");
            let mut cmd = Command::new(PEBBLE);
            cmd.arg("-config")
                .arg(&config)
                .env("PEBBLE_VA_ALWAYS_VALID", "1")
                .env("PEBBLE_VA_NOSLEEP", "1")
                // pebble rejects 5% of good nonces by default, to test
                // clients' retries; certbot retries once, so a run failed
                // now and then. These tests are about certswap.
                .env("PEBBLE_WFE_NONCEREJECT", "0");
            let log = dir.path().join("pebble.log");
            let mut p = ServerProcess::spawn(cmd, &log, std::slice::from_ref(&log))
                .map_err(StartError::Failed)?;
            // pebble writes no pid file; this one lets wait_ready tell our
            // process from another listening on the port.
            let pid_file = dir.path().join("pebble.pid");
            std::fs::write(&pid_file, p.pid().to_string()).expect("write pid file");
            match p
                .wait_ready(port, &pid_file, Duration::from_secs(10))
                .and_then(|()| p.wait_ready(mgmt, &pid_file, Duration::from_secs(10)))
            {
                Ok(()) => Ok((port, mgmt, p)),
                Err(e) => {
                    p.stop(Signal::SIGKILL, Duration::from_secs(1));
                    Err(e)
                }
            }
        });
        Pebble {
            dir,
            port,
            mgmt_port,
            process: Some(process),
        }
    }

    /// The ACME directory URL for `--server`.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The CA of pebble's own HTTPS listener (for `REQUESTS_CA_BUNDLE`).
    pub fn listener_ca(&self) -> PathBuf {
        self.dir.path().join("listener-ca.pem")
    }

    /// The root that issues this run's certificates (`/roots/0` on the
    /// management port): the trust anchor of what pebble issued.
    pub fn root_pem(&self) -> String {
        self.management_get("/roots/0")
    }

    fn management_get(&self, path: &str) -> String {
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(self.listener_ca()).expect("read listener CA");
        for der in
            <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::pem_slice_iter(
                &ca,
            )
        {
            roots.add(der.expect("listener CA PEM")).expect("add root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("server name");
        let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("TLS client");
        let sock = TcpStream::connect(("127.0.0.1", self.mgmt_port)).expect("connect to pebble");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut tls = rustls::StreamOwned::new(conn, sock);
        write!(
            tls,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .expect("send request");
        let mut body = Vec::new();
        // pebble closes without close_notify now and then: what was read counts.
        let _ = tls.read_to_end(&mut body);
        let text = String::from_utf8_lossy(&body).into_owned();
        let start = text
            .find("-----BEGIN CERTIFICATE-----")
            .unwrap_or_else(|| panic!("pebble {path}: no certificate in {text:?}"));
        text[start..].to_string()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if let Some(p) = self.process.take() {
            p.stop(Signal::SIGTERM, Duration::from_secs(5));
        }
    }
}

/// certbot against one pebble, with its own directories in a temp dir.
pub struct Certbot {
    pub dir: tempfile::TempDir,
    server: String,
    ca_bundle: PathBuf,
}

impl Certbot {
    pub fn new(pebble: &Pebble) -> Certbot {
        let dir = tempfile::tempdir().expect("tempdir");
        Certbot {
            dir,
            server: pebble.directory_url(),
            ca_bundle: pebble.listener_ca(),
        }
    }

    /// `--config-dir`: holds `live/`, `archive/`, `renewal/`.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// `live/NAME` of a lineage.
    pub fn live(&self, name: &str) -> PathBuf {
        self.config_dir().join("live").join(name)
    }

    /// `certbot certonly --standalone -d NAME… EXTRA…` with the test flags.
    pub fn certonly(&self, names: &[&str], extra: &[&str], env: &[(&str, &str)]) -> Output {
        let port = free_port().to_string();
        let mut args: Vec<&str> = vec![
            "certonly",
            "--standalone",
            "--http-01-address",
            "127.0.0.1",
            "--http-01-port",
            &port,
        ];
        for n in names {
            args.extend(["-d", n]);
        }
        args.extend_from_slice(extra);
        self.run(&args, env)
    }

    /// `certbot renew --force-renewal --no-random-sleep-on-renew EXTRA…`
    /// (a renewal now, without the up-to-8-minutes sleep of a cron run).
    pub fn renew(&self, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let port = free_port().to_string();
        let mut args: Vec<&str> = vec![
            "renew",
            "--force-renewal",
            "--no-random-sleep-on-renew",
            "--http-01-address",
            "127.0.0.1",
            "--http-01-port",
            &port,
        ];
        args.extend_from_slice(extra);
        self.run(&args, env)
    }

    /// certbot with `args` after the flags every run needs.
    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let d = self.dir.path();
        let mut cmd = Command::new(CERTBOT);
        cmd.arg("--config-dir")
            .arg(self.config_dir())
            .arg("--work-dir")
            .arg(d.join("work"))
            .arg("--logs-dir")
            .arg(d.join("logs"))
            .args(["--server", &self.server])
            .args([
                "--non-interactive",
                "--agree-tos",
                "--register-unsafely-without-email",
            ])
            .args(args)
            .env("REQUESTS_CA_BUNDLE", &self.ca_bundle)
            .env_remove("CERTSWAP_CONFIG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run certbot")
    }
}

/// The deploy hook certbot should run: this build's certswap.
pub fn deploy_hook_command() -> String {
    format!("{} deploy-hook", env!("CARGO_BIN_EXE_certswap"))
}

/// Copy a certbot lineage into an emulated acme.sh domain directory
/// `home/DOMAIN/` (`DOMAIN.cer` leaf, `DOMAIN.key`, `ca.cer`
/// intermediates, `fullchain.cer`), keys 0600 as acme.sh writes them.
pub fn acmesh_from_lineage(live: &Path, home: &Path, domain: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = home.join(domain);
    std::fs::create_dir_all(&dir).expect("mkdir acme.sh domain dir");
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let copy = |from: &str, to: &str| {
        let bytes = std::fs::read(live.join(from)).expect("read lineage file");
        std::fs::write(dir.join(to), bytes).expect("write acme.sh file");
    };
    copy("cert.pem", &format!("{domain}.cer"));
    copy("chain.pem", "ca.cer");
    copy("fullchain.pem", "fullchain.cer");
    let key = dir.join(format!("{domain}.key"));
    let bytes = std::fs::read(live.join("privkey.pem")).expect("read privkey");
    pki::write_key(&key, std::str::from_utf8(&bytes).expect("PEM key"));
    dir
}
