//! The real Debian apache2 (`/usr/sbin/apache2`) with its own config in a
//! temp dir on a free loopback port, following RECIPES.md (no envvars, no
//! apache2ctl); stopped (TERM, then KILL) and reaped on drop.
//!
//! The parent runs in the foreground (`-DFOREGROUND`) as a child of the
//! test, in its own process group: it writes its pid file and reacts to
//! USR1/TERM as the daemon does, but the test can reap it — which matters
//! because a graceful reload with a bad cert makes the parent exit.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::{
    ServerProcess, SiteSpec, StartError, certswap_toml, children_of, conf_path, pid_alive,
};

pub const BINARY: &str = "/usr/sbin/apache2";
const MODULES: &str = "/usr/lib/apache2/modules";

/// A running apache2; one `<VirtualHost *:PORT>` per site on
/// `Listen 127.0.0.1:PORT`, SNI selects (the first site is the default).
pub struct Apache {
    dir: TempDir,
    port: u16,
    sites: Vec<SiteSpec>,
    process: Option<ServerProcess>,
}

impl Apache {
    /// Start apache2 with one vhost per site and wait (≤ 10 s) until it
    /// accepts TCP. Panics with the logs if it does not start.
    pub fn start(sites: &[SiteSpec]) -> Apache {
        Apache::start_on(None, sites)
    }

    /// [`Apache::start`], trying `port` first (then free ports if it is
    /// taken).
    pub fn start_on(port: Option<u16>, sites: &[SiteSpec]) -> Apache {
        assert!(!sites.is_empty(), "apache needs at least one site");
        let dir = tempfile::Builder::new()
            .prefix("certswap-apache-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path();
        // Children run as www-data and reopen the mutex files under it.
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).expect("chmod root");
        for d in ["logs", "run", "lock"] {
            fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        let mut apache = Apache {
            dir,
            port: 0,
            sites: sites.to_vec(),
            process: None,
        };
        super::start_with_retries("apache2", port, |port| {
            apache.port = port;
            apache.set_config(&apache.config_for(&apache.sites));
            apache.spawn()
        });
        apache
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The ServerRoot (a temp dir, removed on drop).
    pub fn prefix(&self) -> &Path {
        self.dir.path()
    }

    /// `ROOT/httpd.conf` (the `-f` file).
    pub fn conf_path(&self) -> PathBuf {
        self.prefix().join("httpd.conf")
    }

    /// `ROOT/run/httpd.pid`.
    pub fn pid_file(&self) -> PathBuf {
        self.prefix().join("run/httpd.pid")
    }

    /// `ROOT/logs/error.log`.
    pub fn error_log_path(&self) -> PathBuf {
        self.prefix().join("logs/error.log")
    }

    /// The sites apache was started with.
    pub fn sites(&self) -> &[SiteSpec] {
        &self.sites
    }

    /// What the pid file says now (None if missing or unreadable).
    pub fn pid(&self) -> Option<i32> {
        fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// The parent process this guard started (it may have exited: see
    /// [`Apache::is_running`]).
    pub fn master_pid(&self) -> i32 {
        self.process.as_ref().expect("apache was started").pid()
    }

    /// Is the parent alive (not exited, not a zombie)?
    pub fn is_running(&self) -> bool {
        self.process.as_ref().is_some_and(|p| pid_alive(p.pid()))
    }

    /// Live child processes of the parent.
    pub fn worker_pids(&self) -> Vec<i32> {
        children_of(self.master_pid())
    }

    /// Contents of the error log plus what apache printed on stderr before
    /// it opened the log.
    pub fn error_log(&self) -> String {
        let stderr = fs::read_to_string(self.prefix().join("logs/stderr.log")).unwrap_or_default();
        let log = fs::read_to_string(self.error_log_path()).unwrap_or_default();
        format!("{stderr}{log}")
    }

    /// The httpd.conf text for `sites` on this root and port.
    pub fn config_for(&self, sites: &[SiteSpec]) -> String {
        let p = |rel: &str| conf_path(&self.prefix().join(rel));
        let port = self.port;
        let mut c = format!(
            "ServerRoot {root}\n\
             ServerName localhost\n\
             PidFile {pid}\n\
             DefaultRuntimeDir {run}\n\
             Mutex file:{lock} default\n\
             ErrorLog {log}\n\
             LogLevel warn\n\
             User www-data\n\
             Group www-data\n\
             LoadModule mpm_event_module {MODULES}/mod_mpm_event.so\n\
             LoadModule authz_core_module {MODULES}/mod_authz_core.so\n\
             LoadModule socache_shmcb_module {MODULES}/mod_socache_shmcb.so\n\
             LoadModule ssl_module {MODULES}/mod_ssl.so\n\
             Listen 127.0.0.1:{port} https\n\
             SSLSessionCache \"shmcb:{scache}(512000)\"\n",
            root = conf_path(self.prefix()),
            pid = conf_path(&self.pid_file()),
            run = p("run"),
            lock = self.prefix().join("lock").display(),
            log = conf_path(&self.error_log_path()),
            scache = self.prefix().join("run/ssl_scache").display(),
        );
        for s in sites {
            c.push_str(&format!(
                "<VirtualHost *:{port}>\n  ServerName {}\n",
                s.name
            ));
            for a in &s.aliases {
                c.push_str(&format!("  ServerAlias {a}\n"));
            }
            c.push_str(&format!(
                "  SSLEngine on\n  SSLCertificateFile {}\n  SSLCertificateKeyFile {}\n",
                conf_path(&s.cert_path),
                conf_path(&s.key_path)
            ));
            if let Some(chain) = &s.chain_path {
                c.push_str(&format!("  SSLCertificateChainFile {}\n", conf_path(chain)));
            }
            c.push_str("</VirtualHost>\n");
        }
        c
    }

    /// Overwrite httpd.conf (takes effect on [`Apache::graceful`]).
    pub fn set_config(&self, text: &str) {
        fs::write(self.conf_path(), text).expect("write httpd.conf");
    }

    /// `apache2 -t` on the current config; Err carries apache's output.
    pub fn configtest(&self) -> Result<(), String> {
        let out = Command::new(BINARY)
            .arg("-t")
            .arg("-f")
            .arg(self.conf_path())
            .output()
            .expect("run apache2 -t");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(text)
        }
    }

    /// Graceful restart: SIGUSR1 to the parent; returns at once.
    pub fn graceful(&self) {
        kill(Pid::from_raw(self.master_pid()), Signal::SIGUSR1).expect("SIGUSR1 apache");
    }

    /// Same as [`Apache::graceful`].
    pub fn reload(&self) {
        self.graceful();
    }

    /// SIGUSR1, then wait until the old children are gone and new ones
    /// run. Err if the parent exits (apache does on a bad cert) or after
    /// `timeout`.
    pub fn graceful_and_wait(&self, timeout: Duration) -> Result<(), String> {
        let old = self.worker_pids();
        self.graceful();
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                return Err(format!(
                    "apache exited on the graceful restart:\n{}",
                    self.error_log()
                ));
            }
            let now = self.worker_pids();
            if !now.is_empty() && now.iter().all(|p| !old.contains(p)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "old children {old:?} still running after {timeout:?} (now {now:?})"
                ));
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// Stop apache (TERM, ≤ 5 s, then KILL) and start it again on the same
    /// port with the current httpd.conf. Panics if it does not come up.
    pub fn restart(&mut self) {
        self.stop();
        match self.spawn() {
            Ok(()) => {}
            Err(StartError::AddrInUse) => panic!("apache restart: port {} is taken", self.port),
            Err(StartError::Failed(why)) => panic!("apache restart failed: {why}"),
        }
    }

    /// Stop apache now: TERM to the parent, ≤ 5 s, then KILL; reaped. Drop
    /// does the same.
    pub fn stop(&mut self) {
        let tracked = self.process.as_ref().map(|p| p.pid());
        if let Some(p) = self.process.take() {
            p.stop(Signal::SIGTERM, Duration::from_secs(5));
        }
        // certswap starts apache again itself (`-k start`) when the parent
        // died on a reload: that daemon was started for this test too, and
        // its pid is in this guard's pid file.
        if let Some(pid) = self.pid()
            && Some(pid) != tracked
            && pid_alive(pid)
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while pid_alive(pid) && Instant::now() < deadline {
                sleep(Duration::from_millis(20));
            }
            if pid_alive(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }

    /// The pid of the parent now serving: the guard's own child, or the
    /// daemon certswap started after the child died.
    pub fn serving_pid(&self) -> Option<i32> {
        self.pid().filter(|p| pid_alive(*p))
    }

    /// A certswap config (TOML) for this apache: `[server]` kind "apache"
    /// with the binary, httpd.conf and pid file of this guard, `[probe]`
    /// timeout 2s, deadline 10s, consecutive 3 (and `ca_file` if given), and
    /// one `[[site]]` per (name, cert, key) with endpoint `127.0.0.1:PORT`
    /// (plus `chain` / `names` when the site was started with them).
    pub fn certswap_config<P: AsRef<Path>>(
        &self,
        state_dir: &Path,
        sites: &[(&str, P, P)],
        ca_file: Option<&Path>,
    ) -> String {
        let server = format!(
            "kind = \"apache\"\nbinary = \"{BINARY}\"\nconfig = {}\npid_file = {}\n",
            super::toml_path(&self.conf_path()),
            super::toml_path(&self.pid_file()),
        );
        certswap_toml(&server, self.port, state_dir, sites, &self.sites, ca_file)
    }

    fn spawn(&mut self) -> Result<(), StartError> {
        let stderr_log = self.prefix().join("logs/stderr.log");
        // A pid file left by a killed parent only earns a warning (AH00098),
        // but readers of the pid file must not see the dead pid meanwhile.
        let _ = fs::remove_file(self.pid_file());
        let mut cmd = Command::new(BINARY);
        cmd.arg("-f").arg(self.conf_path()).arg("-DFOREGROUND");
        let mut process = ServerProcess::spawn(
            cmd,
            &stderr_log,
            &[self.error_log_path(), stderr_log.clone()],
        )
        .map_err(StartError::Failed)?;
        match process.wait_ready(self.port, &self.pid_file(), Duration::from_secs(10)) {
            Ok(()) => {
                // Answering is not yet settled: the parent may still be
                // forking its children (event MPM: StartServers 3 by
                // default), and a test that takes `worker_pids()` now as
                // "not signalled" would see them appear. Wait (bounded).
                let deadline = Instant::now() + Duration::from_secs(10);
                while children_of(process.pid()).len() < 3 && Instant::now() < deadline {
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

impl Drop for Apache {
    fn drop(&mut self) {
        self.stop();
    }
}
