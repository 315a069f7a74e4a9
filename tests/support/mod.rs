//! Helpers for integration tests: test PKI ([`pki`]), real nginx and apache2
//! in temp prefixes on free loopback ports ([`nginx`], [`apache`]), the
//! certswap binary, and an independent look at what a server serves
//! (`openssl s_client`, not certswap's own probe).
//!
//! Use from a test file with `mod support;`. Every test binary compiles all
//! of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod acme;
pub mod apache;
pub mod haproxy;
pub mod nginx;
pub mod pki;
pub mod world;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// The certswap binary built for this test run, with `CERTSWAP_CONFIG`
/// removed from its environment.
pub fn certswap() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_certswap"));
    cmd.env_remove("CERTSWAP_CONFIG");
    cmd
}

/// A loopback port that was free a moment ago (bind `127.0.0.1:0`, read,
/// close). Servers started on it retry on "Address already in use".
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// One name-based virtual host of a test server.
#[derive(Debug, Clone)]
pub struct SiteSpec {
    /// `server_name` / `ServerName`; also the certswap site name.
    pub name: String,
    /// Further names (`server_name a b` / `ServerAlias`).
    pub aliases: Vec<String>,
    /// nginx: full chain; apache: leaf (or full chain).
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// apache only: `SSLCertificateChainFile`.
    pub chain_path: Option<PathBuf>,
}

impl SiteSpec {
    pub fn new(name: &str, cert_path: impl AsRef<Path>, key_path: impl AsRef<Path>) -> SiteSpec {
        SiteSpec {
            name: name.to_string(),
            aliases: Vec::new(),
            cert_path: cert_path.as_ref().to_path_buf(),
            key_path: key_path.as_ref().to_path_buf(),
            chain_path: None,
        }
    }

    pub fn alias(mut self, name: &str) -> SiteSpec {
        self.aliases.push(name.to_string());
        self
    }

    pub fn chain(mut self, chain_path: impl AsRef<Path>) -> SiteSpec {
        self.chain_path = Some(chain_path.as_ref().to_path_buf());
        self
    }
}

/// Is `pid` a live process? Missing or zombie (`Z` in `/proc/PID/stat`)
/// counts as dead — `kill(pid, 0)` would still succeed on a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "PID (comm) STATE ..."; comm may contain spaces and parens.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => false,
        },
        Err(_) => false,
    }
}

/// Live processes whose parent is `ppid` (nginx workers, apache children).
pub fn children_of(ppid: i32) -> Vec<i32> {
    live_procs(|parent, _group| parent == ppid)
}

/// Live processes in process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    live_procs(|_parent, group| group == pgid)
}

/// Live (not zombie) processes whose (ppid, pgrp) pass `keep`, sorted.
fn live_procs(keep: impl Fn(i32, i32) -> bool) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "PID (comm) STATE PPID PGRP ..."; comm may contain spaces and parens.
        let Some(i) = stat.rfind(')') else { continue };
        let mut fields = stat[i + 1..].split_whitespace();
        let state = fields.next();
        let mut num = || fields.next().and_then(|p| p.parse::<i32>().ok());
        let (Some(parent), Some(group)) = (num(), num()) else {
            continue;
        };
        if !matches!(state, Some("Z" | "X")) && keep(parent, group) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// The leaf a server serves to `sni` on `127.0.0.1:port`, as PEM, read with
/// `openssl s_client` (independent of certswap's probe). Bounded to 10 s.
pub fn served_leaf_pem(port: u16, sni: &str) -> Result<String, String> {
    served_leaf_pem_with(port, sni, &[])
}

/// TLS 1.2 suites that make a dual-certificate vhost show one pair.
pub const RSA_SUITE: &str = "ECDHE-RSA-AES128-GCM-SHA256";
pub const ECDSA_SUITE: &str = "ECDHE-ECDSA-AES128-GCM-SHA256";

/// SHA-256 of the leaf served over TLS 1.2 with only `cipher` (an RSA or an
/// ECDSA suite): which pair of a dual-certificate vhost is served.
pub fn served_sha256_with_cipher(port: u16, sni: &str, cipher: &str) -> Result<String, String> {
    let pem = served_leaf_pem_with(port, sni, &["-tls1_2", "-cipher", cipher])?;
    pki::pem_sha256(&pem).ok_or_else(|| "served certificate does not parse".to_string())
}

/// [`served_leaf_pem`] with more `openssl s_client` arguments.
fn served_leaf_pem_with(port: u16, sni: &str, extra: &[&str]) -> Result<String, String> {
    served_leaf_pem_at(&format!("127.0.0.1:{port}"), sni, extra)
}

/// SHA-256 of the leaf served to `sni` at `addr` (`HOST:PORT`, any
/// loopback address), read with `openssl s_client`.
pub fn served_sha256_at(addr: &str, sni: &str) -> Result<String, String> {
    let pem = served_leaf_pem_at(addr, sni, &[])?;
    pki::pem_sha256(&pem).ok_or_else(|| "served certificate does not parse".to_string())
}

fn served_leaf_pem_at(addr: &str, sni: &str, extra: &[&str]) -> Result<String, String> {
    let out = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    let err = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", addr])
        .args(["-servername", sni])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(out.reopen().map_err(|e| e.to_string())?)
        .stderr(err.reopen().map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("run openssl s_client: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "openssl s_client to {addr}/{sni}: no answer in 10 s"
                ));
            }
        }
    }
    let text = fs::read_to_string(out.path()).map_err(|e| e.to_string())?;
    let begin = "-----BEGIN CERTIFICATE-----";
    let end = "-----END CERTIFICATE-----";
    match (text.find(begin), text.find(end)) {
        (Some(b), Some(e)) if e > b => Ok(format!("{}\n", &text[b..e + end.len()])),
        _ => Err(format!(
            "openssl s_client to {addr} (SNI {sni}) got no certificate: {}",
            fs::read_to_string(err.path()).unwrap_or_default().trim()
        )),
    }
}

/// SHA-256 (lowercase hex) of the leaf served to `sni` on `127.0.0.1:port`,
/// via `openssl s_client`; compare with [`pki::Leaf::sha256`].
pub fn served_sha256(port: u16, sni: &str) -> Result<String, String> {
    let pem = served_leaf_pem(port, sni)?;
    pki::pem_sha256(&pem).ok_or_else(|| "served certificate does not parse".to_string())
}

/// Poll `served_sha256` until it equals `sha256` on `consecutive` reads in
/// a row, or `timeout` passes (then the last value or error).
pub fn wait_served(
    port: u16,
    sni: &str,
    sha256: &str,
    consecutive: u32,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut in_a_row = 0;
    loop {
        let got = served_sha256(port, sni);
        if got.as_deref() == Ok(sha256) {
            in_a_row += 1;
            if in_a_row >= consecutive {
                return Ok(());
            }
            continue;
        }
        in_a_row = 0;
        if Instant::now() >= deadline {
            return Err(format!(
                "127.0.0.1:{port} (SNI {sni}) did not serve {sha256} within {timeout:?}; last: {got:?}"
            ));
        }
        sleep(Duration::from_millis(50));
    }
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML basic string of a path.
pub fn toml_path(p: &Path) -> String {
    toml_str(p.to_str().expect("UTF-8 path"))
}

/// A certswap config for a server started by these helpers: `[server]`
/// lines, `[probe]` with short test timings, one `[[site]]` per entry with
/// endpoint `127.0.0.1:port`. Sites that the server was started with
/// aliases or a chain get `names` / `chain` too.
pub(crate) fn certswap_toml<P: AsRef<Path>>(
    server: &str,
    port: u16,
    state_dir: &Path,
    sites: &[(&str, P, P)],
    started: &[SiteSpec],
    ca_file: Option<&Path>,
) -> String {
    let mut t = format!(
        "state_dir = {}\n\n[server]\n{server}\n",
        toml_path(state_dir)
    );
    t.push_str("[probe]\ntimeout = \"2s\"\ndeadline = \"10s\"\nconsecutive = 3\n");
    if let Some(ca) = ca_file {
        t.push_str(&format!("ca_file = {}\n", toml_path(ca)));
    }
    for (name, cert, key) in sites {
        t.push_str(&format!(
            "\n[[site]]\nname = {}\ncert = {}\nkey = {}\nendpoints = [\"127.0.0.1:{port}\"]\n",
            toml_str(name),
            toml_path(cert.as_ref()),
            toml_path(key.as_ref()),
        ));
        if let Some(spec) = started.iter().find(|s| s.name == *name) {
            if !spec.aliases.is_empty() {
                let names: Vec<String> = spec.aliases.iter().map(|a| toml_str(a)).collect();
                t.push_str(&format!("names = [{}]\n", names.join(", ")));
            }
            if let Some(chain) = &spec.chain_path {
                t.push_str(&format!("chain = {}\n", toml_path(chain)));
            }
        }
    }
    t
}

/// Quote a path for an nginx or apache config file.
pub(crate) fn conf_path(p: &Path) -> String {
    let s = p.to_str().expect("UTF-8 path");
    assert!(!s.contains('"'), "path with a double quote: {s}");
    format!("\"{s}\"")
}

/// Why a server did not come up.
#[derive(Debug)]
pub(crate) enum StartError {
    /// The port was taken: try another.
    AddrInUse,
    Failed(String),
}

/// A server process we spawned in the foreground, in its own process group
/// (so stragglers can be killed with the group), stdout/stderr appended to
/// `stderr_log`.
pub(crate) struct ServerProcess {
    child: Child,
    /// Logs to watch while starting, with their length at spawn time (so a
    /// restart in the same prefix ignores what the last run wrote).
    logs: Vec<(PathBuf, usize)>,
    /// `child` was reaped (by `try_wait`); its pid may belong to another
    /// process now.
    reaped: bool,
}

impl ServerProcess {
    pub(crate) fn spawn(
        mut cmd: Command,
        stderr_log: &Path,
        watch_logs: &[PathBuf],
    ) -> Result<ServerProcess, String> {
        let logs = watch_logs
            .iter()
            .map(|p| (p.clone(), fs::read(p).map(|b| b.len()).unwrap_or(0)))
            .collect();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr_log)
            .map_err(|e| format!("open {stderr_log:?}: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {:?}: {e}", cmd.get_program()))?;
        Ok(ServerProcess {
            child,
            logs,
            reaped: false,
        })
    }

    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Wait (bounded) until the process has written `pid_file` with its own
    /// pid and `127.0.0.1:port` accepts TCP. The watched logs are read to
    /// tell "Address already in use" from other failures.
    pub(crate) fn wait_ready(
        &mut self,
        port: u16,
        pid_file: &Path,
        timeout: Duration,
    ) -> Result<(), StartError> {
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let read_logs = || {
            self.logs
                .iter()
                .map(|(p, from)| {
                    let b = fs::read(p).unwrap_or_default();
                    String::from_utf8_lossy(b.get(*from..).unwrap_or_default()).into_owned()
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        loop {
            let text = read_logs();
            if text.contains("Address already in use") {
                return Err(StartError::AddrInUse);
            }
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.reaped = true;
                    let text = read_logs();
                    if text.contains("Address already in use") {
                        return Err(StartError::AddrInUse);
                    }
                    return Err(StartError::Failed(format!("exited with {status}:\n{text}")));
                }
                Ok(None) => {}
                Err(e) => return Err(StartError::Failed(format!("wait: {e}"))),
            }
            let pid_ok = fs::read_to_string(pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                == Some(self.pid());
            if pid_ok && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StartError::Failed(format!(
                    "not accepting on {addr} after {timeout:?}:\n{}",
                    read_logs()
                )));
            }
            sleep(Duration::from_millis(25));
        }
    }

    /// Send `signal`, wait up to `grace` for the process to exit, then
    /// SIGKILL it; SIGKILL whatever is left in its process group (workers
    /// of a master that was killed or crashed); reap.
    pub(crate) fn stop(mut self, signal: Signal, grace: Duration) {
        let pid = Pid::from_raw(self.pid());
        // Only `wait_ready` reaps early (a failed start, before any worker
        // existed). Otherwise the child is alive or an unreaped zombie, so
        // its pid and group id cannot have been reused.
        if !self.reaped {
            if pid_alive(pid.as_raw()) {
                let _ = kill(pid, signal);
                let deadline = Instant::now() + grace;
                while pid_alive(pid.as_raw()) && Instant::now() < deadline {
                    sleep(Duration::from_millis(20));
                }
                if pid_alive(pid.as_raw()) {
                    let _ = kill(pid, Signal::SIGKILL);
                }
            }
            let _ = killpg(pid, Signal::SIGKILL);
            // SIGKILL is delivered asynchronously: wait until they are gone.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !group_members(pid.as_raw()).is_empty() && Instant::now() < deadline {
                sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.wait();
    }
}

/// Start a server with port retries: `attempt(port)` writes the config for
/// `port` and spawns; the first port is `first` (or a free one), and on
/// "Address already in use" a new free port is tried (5 attempts in all).
pub(crate) fn start_with_retries<T>(
    what: &str,
    first: Option<u16>,
    mut attempt: impl FnMut(u16) -> Result<T, StartError>,
) -> T {
    let mut last = String::new();
    for i in 0..5 {
        let port = match (i, first) {
            (0, Some(p)) => p,
            _ => free_port(),
        };
        match attempt(port) {
            Ok(t) => return t,
            Err(StartError::AddrInUse) => last = "Address already in use".into(),
            Err(StartError::Failed(why)) => panic!("{what} did not start: {why}"),
        }
    }
    panic!("{what} did not start after 5 ports: {last}");
}
