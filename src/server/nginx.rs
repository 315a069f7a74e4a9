//! nginx: `nginx -t` with the configured `-c`/`-p`, then SIGHUP to the
//! master. A SIGHUP with bad files is silent on nginx (old workers keep the
//! old cert, `[emerg]` goes to the error log), so the config test before and
//! the probe after are what make a reload trustworthy.

use std::ffi::OsString;

use nix::sys::signal::Signal;

use super::{
    ServerError, WebServer, preflight_of, process, run_captured, run_reload_command, summarize,
};
use crate::config::ServerConfig;

pub struct Nginx {
    cfg: ServerConfig,
}

impl Nginx {
    pub fn new(cfg: ServerConfig) -> Nginx {
        Nginx { cfg }
    }

    /// The master the pid file must name.
    fn expect(&self) -> process::Expect<'_> {
        process::Expect {
            server: "nginx",
            binary: &self.cfg.binary,
            pid_file: &self.cfg.pid_file,
            leader: process::Leader::NginxMaster,
        }
    }

    fn base_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if let Some(p) = &self.cfg.prefix {
            args.push("-p".into());
            args.push(p.into());
        }
        args.push("-c".into());
        args.push(self.cfg.config.clone().into());
        args
    }
}

impl WebServer for Nginx {
    fn name(&self) -> &'static str {
        "nginx"
    }

    fn configtest(&self) -> Result<(), ServerError> {
        let mut args = vec![OsString::from("-t"), OsString::from("-q")];
        args.extend(self.base_args());
        match run_captured(&self.cfg.binary, &args)? {
            Ok(_) => Ok(()),
            Err((_, output)) => Err(ServerError::ConfigTest {
                server: "nginx",
                output: summarize(&output, Some("[emerg]")),
            }),
        }
    }

    fn preflight(&self) -> Result<(), ServerError> {
        preflight_of(&self.cfg, &self.expect())
    }

    fn reload(&self) -> Result<(), ServerError> {
        // The signal, not `nginx -s reload`: that re-parses the whole config
        // first (~1.8 s at 1000 vhosts) right after our own `-t` did.
        match &self.cfg.reload_command {
            Some(cmd) => run_reload_command(cmd),
            None => process::signal(&self.expect(), Signal::SIGHUP).map(|_| ()),
        }
    }

    fn check_alive(&self) -> Result<(), ServerError> {
        preflight_of(&self.cfg, &self.expect())
    }

    fn start(&self) -> Result<(), ServerError> {
        match run_captured(&self.cfg.binary, &self.base_args())? {
            Ok(_) => Ok(()),
            Err((_, output)) => Err(ServerError::Start {
                server: "nginx",
                output: summarize(&output, Some("[emerg]")),
            }),
        }
    }
}
