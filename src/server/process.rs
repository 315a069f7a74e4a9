//! Reading a server's master pid and whether that process is really alive.
//! `kill(pid, 0)` succeeds on a zombie, so the state comes from /proc.

use std::path::Path;

use super::ServerError;

/// The state of a process as /proc tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessState {
    Running,
    /// Exited but not reaped (a zombie), or gone.
    Dead(String),
}

/// Parse the pid in `path`.
pub fn read_pid(path: &Path) -> Result<i32, ServerError> {
    let text = std::fs::read_to_string(path).map_err(|e| ServerError::PidFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 1 => Ok(pid),
        _ => Err(ServerError::PidFile {
            path: path.to_path_buf(),
            reason: format!("{:?} is not a process id", text.trim()),
        }),
    }
}

/// Whether `pid` is a live (non-zombie) process.
pub fn process_state(pid: i32) -> ProcessState {
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(_) => return ProcessState::Dead("not running".into()),
    };
    // The command name in parentheses may hold spaces: the state is the
    // first field after the last ')'.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("?");
    match state {
        "Z" => ProcessState::Dead("a zombie (exited)".into()),
        "X" | "x" => ProcessState::Dead("dead".into()),
        _ => ProcessState::Running,
    }
}

/// The pid from `pid_file` if that process is alive, else NotRunning.
pub(crate) fn live_pid(server: &'static str, pid_file: &Path) -> Result<i32, ServerError> {
    let pid = read_pid(pid_file)?;
    match process_state(pid) {
        ProcessState::Running => Ok(pid),
        ProcessState::Dead(state) => Err(ServerError::NotRunning {
            server,
            pid,
            path: pid_file.to_path_buf(),
            state,
        }),
    }
}

/// Send `sig` to the live process of `pid_file`.
pub(crate) fn signal(
    server: &'static str,
    pid_file: &Path,
    sig: nix::sys::signal::Signal,
) -> Result<i32, ServerError> {
    let pid = live_pid(server, pid_file)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(|source| {
        ServerError::Signal {
            server,
            pid,
            source,
        }
    })?;
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_running_and_pid_1_is_refused() {
        assert_eq!(
            process_state(std::process::id() as i32),
            ProcessState::Running
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("pid");
        std::fs::write(&p, "1\n").expect("write");
        assert!(read_pid(&p).is_err());
        std::fs::write(&p, "garbage").expect("write");
        assert!(read_pid(&p).is_err());
    }

    #[test]
    fn zombie_is_dead() {
        let child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id() as i32;
        // Not waited for: once it exits it stays a zombie until reaped.
        let mut state = ProcessState::Running;
        for _ in 0..200 {
            state = process_state(pid);
            if state != ProcessState::Running {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            matches!(state, ProcessState::Dead(ref s) if s.contains("zombie")),
            "{state:?}"
        );
        drop(child);
    }
}
