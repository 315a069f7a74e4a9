//! apache2 / httpd: `apache2 -t -f CONFIG`, then SIGUSR1 (graceful) to the
//! parent. Measured here: `apache2 -t` passes a mismatched pair and a
//! truncated cert, and the graceful reload then makes the parent exit, so
//! after a reload the parent must be checked (a zombie is not alive) and a
//! dead server started again once the old files are back.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::{
    ProcessState, ServerError, WebServer, preflight_of, process, run_captured, run_reload_command,
    summarize,
};
use crate::config::ServerConfig;

/// How long a started apache may take to write its pid file (≈1 s at
/// 1000 vhosts here).
const START_WAIT: Duration = Duration::from_secs(10);

pub struct Apache {
    cfg: ServerConfig,
}

impl Apache {
    pub fn new(cfg: ServerConfig) -> Apache {
        Apache { cfg }
    }

    /// The parent the pid file must name.
    fn expect(&self) -> process::Expect<'_> {
        process::Expect {
            server: "apache",
            binary: &self.cfg.binary,
            pid_file: &self.cfg.pid_file,
            leader: process::Leader::ApacheParent,
        }
    }

    fn base_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if let Some(p) = &self.cfg.prefix {
            args.push("-d".into());
            args.push(p.into());
        }
        args.push("-f".into());
        args.push(self.cfg.config.clone().into());
        args
    }

    /// The last error lines of apache's own log, when the config names one
    /// we can find (best effort: used only to explain a death).
    fn error_log_tail(&self) -> String {
        let Ok(conf) = std::fs::read_to_string(&self.cfg.config) else {
            return String::new();
        };
        let path = conf.lines().find_map(|l| {
            let l = l.trim();
            l.strip_prefix("ErrorLog ")
                .map(|p| p.trim().trim_matches('"').to_string())
        });
        let Some(path) = path else {
            return String::new();
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            return String::new();
        };
        let lines: Vec<&str> = text
            .lines()
            .rev()
            .filter(|l| l.contains(":error]") || l.contains(":emerg]") || l.contains(":crit]"))
            .take(3)
            .collect();
        if lines.is_empty() {
            String::new()
        } else {
            format!(
                "; {path}: {}",
                lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )
        }
    }
}

impl WebServer for Apache {
    fn name(&self) -> &'static str {
        "apache"
    }

    fn configtest(&self) -> Result<(), ServerError> {
        let mut args = vec![OsString::from("-t")];
        args.extend(self.base_args());
        match run_captured(&self.cfg.binary, &args)? {
            Ok(_) => Ok(()),
            Err((_, output)) => Err(ServerError::ConfigTest {
                server: "apache",
                output: summarize(&output, None),
            }),
        }
    }

    fn preflight(&self) -> Result<(), ServerError> {
        preflight_of(&self.cfg, &self.expect())
    }

    fn reload(&self) -> Result<(), ServerError> {
        match &self.cfg.reload_command {
            Some(cmd) => run_reload_command(cmd),
            None => process::signal(&self.expect(), Signal::SIGUSR1).map(|_| ()),
        }
    }

    fn check_alive(&self) -> Result<(), ServerError> {
        // The parent dies only after it has re-read the certificates, a
        // moment after the signal: install checks this between probe slices.
        // A pid file that names another live process is not a death: it
        // is reported as it is, and nothing is started.
        match preflight_of(&self.cfg, &self.expect()) {
            Err(ServerError::NotRunning { pid, .. }) => Err(ServerError::DiedOnReload {
                server: "apache",
                pid,
                log: self.error_log_tail(),
            }),
            other => other,
        }
    }

    fn start(&self) -> Result<(), ServerError> {
        // A dead parent leaves its pid file behind, and apache's own
        // "already running" check is kill(pid, 0), which a zombie passes:
        // `-k start` would then exit 0 without starting. The file is stale
        // (/proc says the process is gone), so it goes first.
        if let Ok(pid) = process::read_pid(&self.cfg.pid_file)
            && matches!(process::process_state(pid), ProcessState::Dead(_))
        {
            let _ = std::fs::remove_file(&self.cfg.pid_file);
        }
        let mut args = self.base_args();
        args.push("-k".into());
        args.push("start".into());
        let output = match run_captured(&self.cfg.binary, &args)? {
            Ok(output) => output,
            Err((_, output)) => {
                return Err(ServerError::Start {
                    server: "apache",
                    output: summarize(&output, None),
                });
            }
        };
        // `-k start` returns once the parent has forked; it is up when its
        // pid file names a live process.
        let until = Instant::now() + START_WAIT;
        loop {
            if process::proven_pid(&self.expect()).is_ok() {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(ServerError::Start {
                    server: "apache",
                    output: format!(
                        "no live parent in {} after {START_WAIT:?}: {}",
                        self.cfg.pid_file.display(),
                        summarize(&output, None)
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}
