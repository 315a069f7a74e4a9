//! The real Debian HAProxy (`/usr/sbin/haproxy`, 2.6) in a temp dir on a
//! free loopback port, following RECIPES.md: master-worker mode (`-W`) with
//! a master CLI socket (`-S`), an admin-level stats socket, a pid file
//! holding the master's pid; stopped (TERM, then KILL, then the process
//! group) and reaped on drop.
//!
//! The master runs in the foreground as a child of the test, in its own
//! process group: it writes its pid file and reloads on the master CLI's
//! `reload` or SIGUSR2 exactly as under systemd (`-Ws`), but the test can
//! reap it and a test that crashes it leaves nothing behind.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tempfile::TempDir;

use super::{ServerProcess, SiteSpec, StartError, certswap_toml, children_of, conf_path};

pub const BINARY: &str = "/usr/sbin/haproxy";

/// A running HAProxy: one frontend on `127.0.0.1:port()` with one `crt`
/// per site (SNI picks by the certificates' names; the first is the
/// default). A site's `cert_path` is the combined PEM (cert, chain, key),
/// or the cert with its key at `cert_path.key`.
pub struct Haproxy {
    dir: TempDir,
    port: u16,
    sites: Vec<SiteSpec>,
    process: Option<ServerProcess>,
}

impl Haproxy {
    /// Start HAProxy with the sites and wait (≤ 10 s) until it accepts TCP
    /// and has a worker. Panics with the logs if it does not start.
    pub fn start(sites: &[SiteSpec]) -> Haproxy {
        assert!(!sites.is_empty(), "haproxy needs at least one certificate");
        for s in sites {
            assert!(
                s.chain_path.is_none(),
                "haproxy has no separate chain file: put the chain in {:?}",
                s.cert_path
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("certswap-haproxy-")
            .tempdir()
            .expect("temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut h = Haproxy {
            dir,
            port: 0,
            sites: sites.to_vec(),
            process: None,
        };
        super::start_with_retries("haproxy", None, |port| {
            h.port = port;
            h.set_config(&h.config_for(&h.sites));
            h.spawn()
        });
        h
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn conf_path(&self) -> PathBuf {
        self.dir().join("haproxy.cfg")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.dir().join("haproxy.pid")
    }

    /// The admin-level runtime API socket.
    pub fn stats_socket(&self) -> PathBuf {
        self.dir().join("admin.sock")
    }

    /// The master CLI socket (`-S`).
    pub fn master_socket(&self) -> PathBuf {
        self.dir().join("master.sock")
    }

    fn stderr_log(&self) -> PathBuf {
        self.dir().join("stderr.log")
    }

    /// What HAProxy wrote on stdout/stderr (its notices and alerts).
    pub fn log(&self) -> String {
        fs::read_to_string(self.stderr_log()).unwrap_or_default()
    }

    /// The master this guard started (it keeps its pid through reloads).
    pub fn master_pid(&self) -> i32 {
        self.process.as_ref().expect("haproxy is running").pid()
    }

    /// Live worker processes of the master.
    pub fn worker_pids(&self) -> Vec<i32> {
        children_of(self.master_pid())
    }

    /// The haproxy.cfg text for `sites` on this dir and port.
    pub fn config_for(&self, sites: &[SiteSpec]) -> String {
        let crts: Vec<String> = sites
            .iter()
            .map(|s| format!("crt {}", conf_path(&s.cert_path)))
            .collect();
        format!(
            "global\n  \
               stats socket {stats} mode 600 level admin\n\
             defaults\n  \
               mode http\n  timeout connect 2s\n  timeout client 5s\n  timeout server 5s\n\
             frontend fe\n  \
               bind 127.0.0.1:{port} ssl {crts}\n  \
               http-request return status 200 content-type text/plain string ok\n",
            stats = conf_path(&self.stats_socket()),
            port = self.port,
            crts = crts.join(" "),
        )
    }

    pub fn set_config(&self, text: &str) {
        fs::write(self.conf_path(), text).expect("write haproxy.cfg");
    }

    /// `haproxy -c -f CFG`; Err carries its output.
    pub fn configtest(&self) -> Result<(), String> {
        let out = Command::new(BINARY)
            .args(["-c", "-q", "-f"])
            .arg(self.conf_path())
            .output()
            .expect("run haproxy -c");
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// One command on `socket`, the answer to EOF (bounded by a timeout).
    /// A refused connect is retried for ≤ 5 s: the master re-executes
    /// itself on a reload and its CLI is away for a moment.
    pub fn cli(socket: &Path, command: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut s = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => panic!("connect {socket:?}: {e}"),
                Err(_) => sleep(Duration::from_millis(20)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(command.as_bytes()).expect("write");
        s.write_all(b"\n").expect("write");
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// `show ssl cert FILE` on the stats socket: the Serial line's value.
    pub fn loaded_serial(&self, file: &Path) -> String {
        let answer = Haproxy::cli(
            &self.stats_socket(),
            &format!("show ssl cert {}", file.display()),
        );
        answer
            .lines()
            .find_map(|l| l.strip_prefix("Serial:").map(|s| s.trim().to_string()))
            .unwrap_or_else(|| panic!("no Serial for {file:?}: {answer}"))
    }

    /// How many times the master reloaded (`show proc` on the master CLI;
    /// asked again for ≤ 5 s while the master is re-executing and answers
    /// nothing).
    pub fn reloads(&self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let answer = Haproxy::cli(&self.master_socket(), "show proc");
            let n = answer
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some("master"))
                .and_then(|l| l.split_whitespace().nth(2))
                .and_then(|n| n.parse().ok());
            match n {
                Some(n) => return n,
                None if Instant::now() >= deadline => {
                    panic!("no master line in show proc: {answer}")
                }
                None => sleep(Duration::from_millis(20)),
            }
        }
    }

    /// The master's `reload`, then wait (≤ 10 s) until every old worker has
    /// exited and a new one runs.
    pub fn reload_and_wait(&self) {
        let old = self.worker_pids();
        let before = self.reloads();
        let _ = Haproxy::cli(&self.master_socket(), "reload");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.worker_pids();
            if !now.is_empty() && now.iter().all(|p| !old.contains(p)) && self.reloads() > before {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not reload: workers {old:?} -> {now:?}\n{}",
                self.log()
            );
            sleep(Duration::from_millis(20));
        }
    }

    /// Stop and start again on the same port with the current config and
    /// the files on disk (what a host reboot does).
    pub fn restart(&mut self) {
        self.stop();
        match self.spawn() {
            Ok(()) => {}
            Err(StartError::AddrInUse) => panic!("haproxy restart: port {} is taken", self.port),
            Err(StartError::Failed(why)) => panic!("haproxy restart failed: {why}"),
        }
    }

    /// TERM to the master (≤ 5 s), then KILL; the process group after;
    /// reaped. Drop does the same.
    pub fn stop(&mut self) {
        if let Some(p) = self.process.take() {
            p.stop(Signal::SIGTERM, Duration::from_secs(5));
        }
        let _ = fs::remove_file(self.pid_file());
    }

    /// `[server]` lines for this HAProxy (stats socket and master socket
    /// included).
    pub fn server_toml(&self) -> String {
        format!(
            "kind = \"haproxy\"\nbinary = \"{BINARY}\"\nconfig = {}\npid_file = {}\nstats_socket = {}\nmaster_socket = {}\n",
            super::toml_path(&self.conf_path()),
            super::toml_path(&self.pid_file()),
            super::toml_path(&self.stats_socket()),
            super::toml_path(&self.master_socket()),
        )
    }

    /// A certswap config for this HAProxy (see [`certswap_toml`]).
    pub fn certswap_config<P: AsRef<Path>>(
        &self,
        state_dir: &Path,
        sites: &[(&str, P, P)],
        ca_file: Option<&Path>,
    ) -> String {
        certswap_toml(
            &self.server_toml(),
            self.port,
            state_dir,
            sites,
            &self.sites,
            ca_file,
        )
    }

    fn spawn(&mut self) -> Result<(), StartError> {
        let log = self.stderr_log();
        let mut cmd = Command::new(BINARY);
        cmd.arg("-W")
            .arg("-S")
            .arg(self.master_socket())
            .arg("-f")
            .arg(self.conf_path())
            .arg("-p")
            .arg(self.pid_file());
        let mut process = ServerProcess::spawn(cmd, &log, std::slice::from_ref(&log))
            .map_err(StartError::Failed)?;
        match process.wait_ready(self.port, &self.pid_file(), Duration::from_secs(10)) {
            Ok(()) => {
                // Accepting is the worker; wait (bounded) until the master
                // has it as a child and the sockets are there, so a test
                // taking `worker_pids()` now sees the settled set.
                let deadline = Instant::now() + Duration::from_secs(10);
                while (children_of(process.pid()).is_empty()
                    || UnixStream::connect(self.stats_socket()).is_err()
                    || UnixStream::connect(self.master_socket()).is_err())
                    && Instant::now() < deadline
                {
                    sleep(Duration::from_millis(10));
                }
                self.process = Some(process);
                Ok(())
            }
            Err(e) => {
                process.stop(Signal::SIGKILL, Duration::from_secs(1));
                Err(e)
            }
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.stop();
    }
}
