//! The real Debian nginx (`/usr/sbin/nginx`) in a temp prefix on a free
//! loopback port, following RECIPES.md; stopped (QUIT, then KILL) and reaped
//! on drop.
//!
//! The master runs in the foreground (`-g 'daemon off;'`) as a child of the
//! test, in its own process group: it writes its pid file and reacts to
//! signals exactly as the daemon does, but the test can reap it and a test
//! that crashes it leaves nothing behind.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::{ServerProcess, SiteSpec, StartError, certswap_toml, children_of, conf_path};

pub const BINARY: &str = "/usr/sbin/nginx";

/// A running nginx; every server block listens on `127.0.0.1:port()` and
/// SNI selects the site (the first site is the default server).
pub struct Nginx {
    dir: TempDir,
    port: u16,
    sites: Vec<SiteSpec>,
    process: Option<ServerProcess>,
}

impl Nginx {
    /// Start nginx with one `server` block per site and wait (≤ 10 s) until
    /// it accepts TCP. Panics with the logs if it does not start.
    pub fn start(sites: &[SiteSpec]) -> Nginx {
        Nginx::start_on(None, sites)
    }

    /// [`Nginx::start`], trying `port` first (then free ports if it is
    /// taken).
    pub fn start_on(port: Option<u16>, sites: &[SiteSpec]) -> Nginx {
        assert!(!sites.is_empty(), "nginx needs at least one site to listen");
        let dir = tempfile::Builder::new()
            .prefix("certswap-nginx-")
            .tempdir()
            .expect("temp prefix");
        let prefix = dir.path();
        fs::set_permissions(prefix, fs::Permissions::from_mode(0o755)).expect("chmod prefix");
        fs::create_dir_all(prefix.join("logs")).expect("mkdir logs");
        fs::create_dir_all(prefix.join("tmp")).expect("mkdir tmp");
        let mut nginx = Nginx {
            dir,
            port: 0,
            sites: sites.to_vec(),
            process: None,
        };
        super::start_with_retries("nginx", port, |port| {
            nginx.port = port;
            nginx.set_config(&nginx.config_for(&nginx.sites));
            nginx.spawn()
        });
        nginx
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The `-p` prefix (a temp dir, removed on drop).
    pub fn prefix(&self) -> &Path {
        self.dir.path()
    }

    /// `PREFIX/nginx.conf` (the `-c` file).
    pub fn conf_path(&self) -> PathBuf {
        self.prefix().join("nginx.conf")
    }

    /// `PREFIX/logs/nginx.pid`.
    pub fn pid_file(&self) -> PathBuf {
        self.prefix().join("logs/nginx.pid")
    }

    /// `PREFIX/logs/error.log`.
    pub fn error_log_path(&self) -> PathBuf {
        self.prefix().join("logs/error.log")
    }

    /// The sites nginx was started with.
    pub fn sites(&self) -> &[SiteSpec] {
        &self.sites
    }

    /// What the pid file says now (None if missing or unreadable).
    pub fn pid(&self) -> Option<i32> {
        fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// The master process this guard started.
    pub fn master_pid(&self) -> i32 {
        self.process.as_ref().expect("nginx is running").pid()
    }

    /// Live worker processes of the master.
    pub fn worker_pids(&self) -> Vec<i32> {
        children_of(self.master_pid())
    }

    /// Contents of the error log (nginx also writes its startup messages
    /// there: it is started with `-e`).
    pub fn error_log(&self) -> String {
        fs::read_to_string(self.error_log_path()).unwrap_or_default()
    }

    /// The nginx.conf text for `sites` on this prefix and port (the config
    /// the guard was started with, when given `sites()`).
    pub fn config_for(&self, sites: &[SiteSpec]) -> String {
        let p = |rel: &str| conf_path(&self.prefix().join(rel));
        let tmp = p("tmp");
        let mut c = format!(
            "worker_processes 2;\n\
             pid {pid};\n\
             error_log {log};\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  \
               access_log off;\n  \
               client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};\n  \
               uwsgi_temp_path {tmp}; scgi_temp_path {tmp};\n  \
               server_names_hash_max_size 8192; server_names_hash_bucket_size 128;\n",
            pid = conf_path(&self.pid_file()),
            log = conf_path(&self.error_log_path()),
        );
        for s in sites {
            assert!(
                s.chain_path.is_none(),
                "nginx has no separate chain file: put the chain in {:?}",
                s.cert_path
            );
            let mut names = vec![s.name.as_str()];
            names.extend(s.aliases.iter().map(String::as_str));
            c.push_str(&format!(
                "  server {{ listen 127.0.0.1:{port} ssl; server_name {names};\n    \
                   ssl_certificate {cert}; ssl_certificate_key {key};\n    \
                   return 200 \"ok\\n\"; }}\n",
                port = self.port,
                names = names.join(" "),
                cert = conf_path(&s.cert_path),
                key = conf_path(&s.key_path),
            ));
        }
        c.push_str("}\n");
        c
    }

    /// Overwrite nginx.conf (takes effect on [`Nginx::reload`]).
    pub fn set_config(&self, text: &str) {
        fs::write(self.conf_path(), text).expect("write nginx.conf");
    }

    /// `nginx -t` on the current config; Err carries nginx's output.
    pub fn configtest(&self) -> Result<(), String> {
        let out = Command::new(BINARY)
            .arg("-t")
            .arg("-p")
            .arg(self.prefix())
            .arg("-c")
            .arg(self.conf_path())
            .arg("-e")
            .arg(self.error_log_path())
            .output()
            .expect("run nginx -t");
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

    /// SIGHUP to the master; returns at once (see [`Nginx::reload_and_wait`]).
    pub fn reload(&self) {
        kill(Pid::from_raw(self.master_pid()), Signal::SIGHUP).expect("SIGHUP nginx");
    }

    /// SIGHUP, then wait until every old worker has exited (the new config
    /// is the only one answering). Err if the error log shows `[emerg]`
    /// (nginx keeps the old config and workers) or after `timeout`.
    pub fn reload_and_wait(&self, timeout: Duration) -> Result<(), String> {
        let old = self.worker_pids();
        let log_len = self.error_log().len();
        self.reload();
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.error_log();
            let new_text = log.get(log_len..).unwrap_or_default();
            if new_text.contains("[emerg]") {
                return Err(format!("nginx refused the reload:\n{new_text}"));
            }
            let now = self.worker_pids();
            if !now.is_empty() && now.iter().all(|p| !old.contains(p)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "old workers {old:?} still running after {timeout:?} (now {now:?}):\n{new_text}"
                ));
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// Log every reload from now on (RECIPES.md, "Counting nginx reloads
    /// from outside"): the current config with `error_log FILE notice;`,
    /// loaded by one reload that this waits for. Count with
    /// [`Nginx::reloads`].
    pub fn log_reloads(&self) {
        let text = fs::read_to_string(self.conf_path()).expect("read nginx.conf");
        let log = format!("error_log {};", conf_path(&self.error_log_path()));
        assert!(text.contains(&log), "nginx.conf has no {log}");
        let notice = format!("error_log {} notice;", conf_path(&self.error_log_path()));
        self.set_config(&text.replace(&log, &notice));
        self.reload_and_wait(Duration::from_secs(10))
            .expect("reload with notice logging");
    }

    /// SIGHUPs the master logged since [`Nginx::log_reloads`]: each writes
    /// `signal 1 (SIGHUP) received from PID, reconfiguring`.
    pub fn reloads(&self) -> usize {
        self.error_log().matches("(SIGHUP) received").count()
    }

    /// Stop nginx (QUIT, ≤ 5 s, then KILL) and start it again on the same
    /// port with the current nginx.conf. Panics if it does not come up.
    pub fn restart(&mut self) {
        self.stop();
        match self.spawn() {
            Ok(()) => {}
            Err(StartError::AddrInUse) => panic!("nginx restart: port {} is taken", self.port),
            Err(StartError::Failed(why)) => panic!("nginx restart failed: {why}"),
        }
    }

    /// Stop nginx now: QUIT to the master, ≤ 5 s, then KILL; reaped. Drop
    /// does the same.
    pub fn stop(&mut self) {
        if let Some(p) = self.process.take() {
            p.stop(Signal::SIGQUIT, Duration::from_secs(5));
        }
    }

    /// A certswap config (TOML) for this nginx: `[server]` with the binary,
    /// config, prefix and pid file of this guard, `[probe]` timeout 2s,
    /// deadline 10s, consecutive 3 (and `ca_file` if given), and one
    /// `[[site]]` per (name, cert, key) with endpoint `127.0.0.1:PORT`.
    pub fn certswap_config<P: AsRef<Path>>(
        &self,
        state_dir: &Path,
        sites: &[(&str, P, P)],
        ca_file: Option<&Path>,
    ) -> String {
        let server = format!(
            "kind = \"nginx\"\nbinary = \"{BINARY}\"\nconfig = {}\nprefix = {}\npid_file = {}\n",
            super::toml_path(&self.conf_path()),
            super::toml_path(self.prefix()),
            super::toml_path(&self.pid_file()),
        );
        certswap_toml(&server, self.port, state_dir, sites, &self.sites, ca_file)
    }

    fn spawn(&mut self) -> Result<(), StartError> {
        let stderr_log = self.prefix().join("logs/stderr.log");
        let mut cmd = Command::new(BINARY);
        cmd.arg("-p")
            .arg(self.prefix())
            .arg("-c")
            .arg(self.conf_path())
            .arg("-e")
            .arg(self.error_log_path())
            .args(["-g", "daemon off;"]);
        let mut process = ServerProcess::spawn(
            cmd,
            &stderr_log,
            &[self.error_log_path(), stderr_log.clone()],
        )
        .map_err(StartError::Failed)?;
        match process.wait_ready(self.port, &self.pid_file(), Duration::from_secs(10)) {
            Ok(()) => {
                // Answering is not yet settled: the master may still be
                // forking its second worker, and a test that takes
                // `worker_pids()` now as "not signalled" would see one
                // appear. Wait (bounded) for both of `worker_processes 2`.
                let deadline = Instant::now() + Duration::from_secs(10);
                while children_of(process.pid()).len() < 2 && Instant::now() < deadline {
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

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}
