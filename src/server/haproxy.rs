//! HAProxy (2.2+, master-worker mode): `haproxy -c -f CONFIG` as the config
//! test, and instead of a reload the in-memory update over the runtime API
//! ([`super::haproxy_api`]): per changed certificate file, `set ssl cert` +
//! `commit ssl cert` with the bytes now on disk, and `show ssl cert` must
//! report the new serial and fingerprint. The payload is read back from the
//! files the swap just wrote, so memory holds exactly what a restart would
//! load (disk and memory in step; a rollback or a recovery puts the old
//! bytes on disk first and sends those).
//!
//! Without a `stats_socket`, for a file HAProxy has not loaded (a new
//! `crt` line, a relative name) or when the API refuses, the fallback is a
//! graceful reload: the configured `reload_command`, else the master
//! CLI's `reload` (`master_socket`), else SIGUSR2 to the master the pid
//! file names (proven as for nginx, `process.rs`). The master keeps its pid
//! through a reload; the workers are replaced.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

use super::haproxy_api::{self, ApiError, LoadedCert, Socket};
use super::{
    Applied, ServerError, WebServer, preflight_of, process, run_captured, run_reload_command,
    summarize,
};
use crate::config::{ServerConfig, Site};

/// A combined PEM (certificate, chain, key) is far under this.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

pub struct Haproxy {
    cfg: ServerConfig,
}

/// One certificate HAProxy holds in memory, as replaced by
/// [`Haproxy::update_in_memory`].
#[derive(Debug, Clone)]
pub struct Replaced {
    /// The file name HAProxy knows it by (the site's `cert`).
    pub file: PathBuf,
    pub now: LoadedCert,
}

impl Haproxy {
    pub fn new(cfg: ServerConfig) -> Haproxy {
        Haproxy { cfg }
    }

    /// The master the pid file must name.
    fn expect(&self) -> process::Expect<'_> {
        process::Expect {
            server: "haproxy",
            binary: &self.cfg.binary,
            pid_file: &self.cfg.pid_file,
            leader: process::Leader::HaproxyMaster,
        }
    }

    fn stats(&self) -> Option<Result<Socket, ApiError>> {
        self.cfg
            .stats_socket
            .as_deref()
            .map(|p| Socket::trusted("stats socket", p, haproxy_api::DEFAULT_TIMEOUT))
    }

    /// Replace in HAProxy's memory the certificate of each of `sites` with
    /// the bytes of its files on disk, and confirm each by serial and
    /// fingerprint. Err when there is no stats socket, a file is not loaded
    /// or the API refuses: the caller then reloads, which loads the same
    /// files from disk. Nothing is left half-done in HAProxy: a refused
    /// transaction is aborted ([`Socket::replace`]).
    pub fn update_in_memory(&self, sites: &[&Site]) -> Result<Vec<Replaced>, ServerError> {
        let socket = match self.stats() {
            None => return Err(ServerError::NoRuntimeApi),
            Some(s) => s.map_err(ServerError::Runtime)?,
        };
        let loaded = socket.loaded_files().map_err(ServerError::Runtime)?;
        let mut payloads = Vec::with_capacity(sites.len());
        for site in sites {
            if !loaded.iter().any(|f| f == &site.cert) {
                return Err(ServerError::NotLoaded {
                    file: site.cert.clone(),
                });
            }
            payloads.push(payload_of(site)?);
        }
        let mut done = Vec::with_capacity(payloads.len());
        for p in payloads {
            let now = socket
                .replace(&p.file, &p.pem, &p.serial)
                .map_err(ServerError::Runtime)?;
            if !now.sha1.eq_ignore_ascii_case(&p.sha1) {
                return Err(ServerError::Runtime(ApiError::Refused {
                    path: socket.path().to_path_buf(),
                    command: format!("commit ssl cert {}", p.file.display()),
                    answer: format!(
                        "HAProxy reports fingerprint {} after the commit, not {}",
                        now.sha1, p.sha1
                    ),
                }));
            }
            done.push(Replaced { file: p.file, now });
        }
        Ok(done)
    }

    /// Whether the master `pid` runs in master-worker mode: `-W` / `-Ws`
    /// on its command line, or `master-worker` in the config's `global`.
    fn master_worker(&self, pid: i32) -> bool {
        let args = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if args.split(|b| *b == 0).any(|a| a == b"-W" || a == b"-Ws") {
            return true;
        }
        std::fs::read_to_string(&self.cfg.config)
            .map(|t| t.lines().any(|l| l.trim() == "master-worker"))
            .unwrap_or(false)
    }

    /// What HAProxy holds for `file` now (`show ssl cert FILE`).
    pub fn loaded(&self, file: &Path) -> Result<LoadedCert, ServerError> {
        match self.stats() {
            None => Err(ServerError::NoRuntimeApi),
            Some(s) => s.and_then(|s| s.show(file)).map_err(ServerError::Runtime),
        }
    }
}

/// The `set ssl cert` payload of one site, from disk.
struct Payload {
    file: PathBuf,
    pem: Vec<u8>,
    serial: String,
    sha1: String,
}

/// The site's certificate file and, when the key is a separate file
/// (`site.pem.key` beside it, as HAProxy loads it), the key after it.
fn payload_of(site: &Site) -> Result<Payload, ServerError> {
    let read = |p: &Path| -> Result<Vec<u8>, ServerError> {
        let (file, _) = crate::owner::open_nofollow("certificate file", p).map_err(|e| {
            ServerError::ReadFile {
                path: p.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        let mut bytes = Vec::new();
        use std::io::Read;
        file.take(MAX_PEM_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ServerError::ReadFile {
                path: p.to_path_buf(),
                reason: e.to_string(),
            })?;
        if bytes.len() as u64 > MAX_PEM_BYTES {
            return Err(ServerError::ReadFile {
                path: p.to_path_buf(),
                reason: format!("larger than {MAX_PEM_BYTES} bytes"),
            });
        }
        Ok(bytes)
    };
    let mut pem = read(&site.cert)?;
    if site.key != site.cert {
        if !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        pem.extend_from_slice(&read(&site.key)?);
    }
    let leaf = crate::bundle::leaf_of(&pem).ok_or_else(|| ServerError::ReadFile {
        path: site.cert.clone(),
        reason: "holds no certificate".into(),
    })?;
    Ok(Payload {
        file: site.cert.clone(),
        sha1: haproxy_api::sha1_fingerprint(leaf.der.as_ref()),
        serial: leaf.serial,
        pem,
    })
}

impl WebServer for Haproxy {
    fn name(&self) -> &'static str {
        "haproxy"
    }

    fn configtest(&self) -> Result<(), ServerError> {
        // Not `-q`: it silences the alerts that say why.
        let args: Vec<OsString> = vec!["-c".into(), "-f".into(), self.cfg.config.clone().into()];
        match run_captured(&self.cfg.binary, &args)? {
            Ok(_) => Ok(()),
            Err((_, output)) => Err(ServerError::ConfigTest {
                server: "haproxy",
                output: summarize(&output, Some("[ALERT]")),
            }),
        }
    }

    /// Also: a configured stats socket that another user could have
    /// placed (a symlink, not root's, in a directory others can change)
    /// refuses the change before it starts, rather than falling back
    /// quietly. One that is missing (HAProxy restarted without it) is left
    /// to the reload fallback.
    fn preflight(&self) -> Result<(), ServerError> {
        preflight_of(&self.cfg, &self.expect())?;
        if let Some(p) = &self.cfg.stats_socket {
            match crate::owner::trusted_socket("stats socket", p) {
                Ok(()) | Err(crate::owner::OwnerError::Io { .. }) => {}
                Err(e) => return Err(ServerError::Runtime(ApiError::Untrusted(e))),
            }
        }
        Ok(())
    }

    fn reload(&self) -> Result<(), ServerError> {
        if let Some(cmd) = &self.cfg.reload_command {
            return run_reload_command(cmd);
        }
        if let Some(path) = &self.cfg.master_socket {
            // The master must be the proven one before it is asked: the
            // socket answers for whoever bound it.
            process::proven_pid(&self.expect())?;
            return Socket::trusted("master socket", path, haproxy_api::DEFAULT_TIMEOUT)
                .and_then(|s| s.master_reload())
                .map_err(ServerError::Runtime);
        }
        // SIGUSR2 reloads only a master-worker master; a plain `-D` daemon
        // ignores it (measured), which would look like a reload that never
        // serves the new files.
        let pid = process::proven_pid(&self.expect())?;
        if !self.master_worker(pid) {
            return Err(ServerError::NotMasterWorker {
                pid,
                path: self.cfg.pid_file.clone(),
            });
        }
        process::signal(&self.expect(), Signal::SIGUSR2).map(|_| ())
    }

    fn apply(&self, sites: &[&Site]) -> Result<Applied, ServerError> {
        // No sites: the config itself changed (adopt), which only a reload
        // reads.
        if sites.is_empty() {
            return self.reload().map(|()| Applied::Reloaded);
        }
        match self.update_in_memory(sites) {
            Ok(done) => Ok(Applied::InMemory(done.len())),
            Err(e) => {
                tracing::warn!(
                    server = "haproxy",
                    "in-memory update not done, reloading instead: {e}"
                );
                self.reload().map(|()| Applied::Reloaded)
            }
        }
    }

    fn check_alive(&self) -> Result<(), ServerError> {
        preflight_of(&self.cfg, &self.expect())
    }

    fn start(&self) -> Result<(), ServerError> {
        let mut args: Vec<OsString> = vec![
            "-W".into(),
            "-D".into(),
            "-f".into(),
            self.cfg.config.clone().into(),
            "-p".into(),
            self.cfg.pid_file.clone().into(),
        ];
        if let Some(m) = &self.cfg.master_socket {
            args.push("-S".into());
            args.push(m.clone().into());
        }
        match run_captured(&self.cfg.binary, &args)? {
            Ok(_) => Ok(()),
            Err((_, output)) => Err(ServerError::Start {
                server: "haproxy",
                output: summarize(&output, Some("[ALERT]")),
            }),
        }
    }
}
