//! The web servers certswap drives, behind one small trait: test the config
//! (DESIGN.md step 5) and reload gracefully (step 6). One file per server.

mod apache;
mod nginx;
mod process;

use std::path::PathBuf;

pub use apache::Apache;
pub use nginx::Nginx;
pub use process::{ProcessState, process_state, read_pid};

use crate::config::{ServerConfig, ServerKind};

/// Why a server step failed. Each names the server, command or file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("{server} config test failed: {output}")]
    ConfigTest {
        server: &'static str,
        output: String,
    },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{path}: cannot read the server's pid: {reason}")]
    PidFile { path: PathBuf, reason: String },
    #[error("{server} is not running (pid {pid} from {path} is {state})")]
    NotRunning {
        server: &'static str,
        pid: i32,
        path: PathBuf,
        state: String,
    },
    #[error("cannot signal {server} (pid {pid}): {source}")]
    Signal {
        server: &'static str,
        pid: i32,
        source: nix::errno::Errno,
    },
    #[error("reload command `{command}` failed ({status}): {output}")]
    ReloadCommand {
        command: String,
        status: String,
        output: String,
    },
    #[error("{server} exited during the reload (pid {pid}){log}")]
    DiedOnReload {
        server: &'static str,
        pid: i32,
        log: String,
    },
    #[error("{server} did not start: {output}")]
    Start {
        server: &'static str,
        output: String,
    },
}

/// A web server certswap can test and reload.
pub trait WebServer {
    /// "nginx" or "apache", for messages.
    fn name(&self) -> &'static str;
    /// Run the server's own config test; Err carries its output.
    fn configtest(&self) -> Result<(), ServerError>;
    /// Ask the running server to reload gracefully.
    fn reload(&self) -> Result<(), ServerError>;
    /// After a reload: the server is still running (apache's parent exits
    /// on a bad cert/key instead of keeping the old one).
    fn check_alive(&self) -> Result<(), ServerError>;
    /// Start a server that is not running (after it died on a reload).
    fn start(&self) -> Result<(), ServerError>;
}

/// The server the config describes.
pub fn from_config(cfg: &ServerConfig) -> Box<dyn WebServer> {
    match cfg.kind {
        ServerKind::Nginx => Box::new(Nginx::new(cfg.clone())),
        ServerKind::Apache => Box::new(Apache::new(cfg.clone())),
    }
}

/// Run a program, capture stdout+stderr; Ok(output) on exit 0, Err((status, output)) else.
pub(crate) fn run_captured(
    program: &PathBuf,
    args: &[std::ffi::OsString],
) -> Result<Result<String, (String, String)>, ServerError> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| ServerError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    if out.status.success() {
        Ok(Ok(text))
    } else {
        Ok(Err((out.status.to_string(), text)))
    }
}

/// Run the configured `reload_command` instead of signalling.
pub(crate) fn run_reload_command(cmd: &[String]) -> Result<(), ServerError> {
    let Some((program, args)) = cmd.split_first() else {
        return Ok(());
    };
    let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    match run_captured(&PathBuf::from(program), &args)? {
        Ok(_) => Ok(()),
        Err((status, output)) => Err(ServerError::ReloadCommand {
            command: cmd.join(" "),
            status,
            output: summarize(&output, None),
        }),
    }
}

/// The lines worth showing from a server's output, joined into one line:
/// those containing `marker` when given (e.g. "[emerg]"), else all, at most
/// a few.
pub(crate) fn summarize(output: &str, marker: Option<&str>) -> String {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| marker.is_none_or(|m| l.contains(m)))
        .collect();
    let picked: Vec<&str> = if lines.is_empty() {
        output
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .take(3)
            .collect()
    } else {
        lines.into_iter().take(3).collect()
    };
    if picked.is_empty() {
        "(no output)".into()
    } else {
        picked.join(" | ")
    }
}
