//! The web servers certswap drives, behind one small trait: test the config
//! (DESIGN.md step 5) and make the swapped files live (step 6): a graceful
//! reload for nginx and apache, the in-memory update over the runtime API
//! for haproxy ([`WebServer::apply`]). One file per server; the proof that
//! a pid names the server before it is signalled is in `process.rs`, the
//! HAProxy runtime API client in `haproxy_api.rs`.

mod apache;
mod haproxy;
pub mod haproxy_api;
mod nginx;
mod process;

use std::path::PathBuf;

pub use apache::Apache;
pub use haproxy::{Haproxy, Replaced};
pub use nginx::Nginx;
pub use process::{ProcessState, process_state, read_pid};

use crate::config::{ServerConfig, ServerKind, Site};

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
    /// The pid file is not one only root can write (or is a FIFO, a
    /// symlink…): what it names is not trusted with a signal.
    #[error("{0}; certswap signals only a server named by a pid file only root can write")]
    UntrustedPidFile(crate::owner::OwnerError),
    #[error("{server} is not running ({path} does not exist)")]
    NoPidFile { server: &'static str, path: PathBuf },
    /// The pid file names a live process that is not the server's master
    /// (a stale pid file whose number was reused, a worker).
    #[error(
        "pid {pid} from {path} is {found}, not {binary}; certswap signals only the server (fix pid_file, or remove the stale pid file)"
    )]
    NotTheServer {
        pid: i32,
        path: PathBuf,
        found: String,
        binary: PathBuf,
    },
    /// The pid file names a child of the server (an nginx worker).
    #[error(
        "pid {pid} from {path} is a child of {server} pid {parent}, not its {leader}; certswap signals only the {leader} (fix pid_file)"
    )]
    NotTheLeader {
        server: &'static str,
        pid: i32,
        path: PathBuf,
        parent: i32,
        leader: &'static str,
    },
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
    /// haproxy without `stats_socket`: no in-memory update, a reload.
    #[error("no server.stats_socket is configured")]
    NoRuntimeApi,
    /// HAProxy holds no certificate under this name (`show ssl cert`).
    #[error("{file} is not a certificate HAProxy has loaded")]
    NotLoaded { file: PathBuf },
    #[error("haproxy runtime API: {0}")]
    Runtime(haproxy_api::ApiError),
    #[error("{path}: cannot read the installed file: {reason}")]
    ReadFile { path: PathBuf, reason: String },
    /// haproxy without `-W`: SIGUSR2 would be ignored.
    #[error(
        "haproxy pid {pid} from {path} does not run in master-worker mode (-W), so a signal does not reload it; run it with -W or -Ws (Debian's unit does) or set reload_command"
    )]
    NotMasterWorker { pid: i32, path: PathBuf },
}

/// How [`WebServer::apply`] made the swapped files live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Replaced in the running processes' memory (haproxy's runtime API),
    /// this many certificates: no reload, every pid unchanged.
    InMemory(usize),
    /// A graceful reload was sent.
    Reloaded,
}

/// A web server certswap can test and reload.
pub trait WebServer {
    /// "nginx", "apache" or "haproxy", for messages.
    fn name(&self) -> &'static str;
    /// Run the server's own config test; Err carries its output.
    fn configtest(&self) -> Result<(), ServerError>;
    /// Before anything changes: the pid file names the proven server
    /// (`process.rs`), so the reload after the swap can reach it. With a
    /// `reload_command` no signal is sent, but a pid file that exists is
    /// still proven: [`WebServer::check_alive`] reads it to tell a server
    /// that died on the reload.
    fn preflight(&self) -> Result<(), ServerError>;
    /// Ask the running server to reload gracefully (the pid proven again
    /// right before the signal).
    fn reload(&self) -> Result<(), ServerError>;
    /// Make the files of `sites`, as now on disk, what the server serves:
    /// a reload, unless the server can replace them in memory (haproxy).
    fn apply(&self, sites: &[&Site]) -> Result<Applied, ServerError> {
        let _ = sites;
        self.reload().map(|()| Applied::Reloaded)
    }
    /// After a reload: the server is still running (apache's parent exits
    /// on a bad cert/key instead of keeping the old one).
    fn check_alive(&self) -> Result<(), ServerError>;
    /// Start a server that is not running (after it died on a reload).
    fn start(&self) -> Result<(), ServerError>;
}

/// Whether `e` says the server is not running at all (no pid file, or a
/// dead pid): what may be started after it died on a reload, as opposed
/// to a pid file that names something else.
pub fn is_not_running(e: &ServerError) -> bool {
    matches!(
        e,
        ServerError::NotRunning { .. }
            | ServerError::NoPidFile { .. }
            | ServerError::DiedOnReload { .. }
    )
}

/// [`WebServer::preflight`] for a server configured with `cfg`.
fn preflight_of(cfg: &ServerConfig, want: &process::Expect<'_>) -> Result<(), ServerError> {
    match process::proven_pid(want) {
        // Someone else reloads (systemd); the probe decides.
        Err(ServerError::NoPidFile { .. }) if cfg.reload_command.is_some() => Ok(()),
        other => other.map(|_| ()),
    }
}

/// The server the config describes.
pub fn from_config(cfg: &ServerConfig) -> Box<dyn WebServer> {
    match cfg.kind {
        ServerKind::Nginx => Box::new(Nginx::new(cfg.clone())),
        ServerKind::Apache => Box::new(Apache::new(cfg.clone())),
        ServerKind::Haproxy => Box::new(Haproxy::new(cfg.clone())),
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
