//! The one process certswap may signal: the server its pid file names,
//! proven (DESIGN invariant 9). The pid file is read like any file another
//! program writes ([`crate::owner::read_trusted`]: a regular file only root
//! can change, no symlink, no blocking read), and the process it names must
//! be alive (`kill(pid, 0)` succeeds on a zombie, so the state comes from
//! /proc), run the configured binary, and be the server's master (nginx,
//! haproxy's `-W` master) or parent (apache), not one of its children. The
//! proof is repeated right before every signal, which goes through a pidfd
//! opened before the proof, so a pid reused in between cannot receive it.
//! Where certswap
//! may not read a root process's executable (no CAP_SYS_PTRACE, as under
//! the systemd unit), "runs the binary" falls back to "owned by root and
//! named after it" ([`runs_binary`]). docs/reliability.md has the model.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use super::ServerError;
use crate::owner::{self, OwnerError};

/// A pid file holds a number and a newline; more is not a pid file.
const MAX_PID_FILE_BYTES: u64 = 64;

/// The state of a process as /proc tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessState {
    Running,
    /// Exited but not reaped (a zombie), or gone.
    Dead(String),
}

/// Which process of the server the pid file must name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leader {
    /// nginx: the master (workers, the cache manager and a new binary's
    /// master during an upgrade are its children).
    NginxMaster,
    /// apache: the parent that forks the children.
    ApacheParent,
    /// haproxy in master-worker mode: the master (`-W`), whose pid the
    /// `-p` file holds; the workers are its children.
    HaproxyMaster,
}

/// What certswap expects the pid file to name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expect<'a> {
    pub server: &'static str,
    pub binary: &'a Path,
    pub pid_file: &'a Path,
    pub leader: Leader,
}

/// Parse the pid in `path`, read as a trusted file (see the module
/// comment). A missing file is [`ServerError::NoPidFile`].
pub fn read_pid(path: &Path) -> Result<i32, ServerError> {
    read_pid_of("the server", path)
}

fn read_pid_of(server: &'static str, path: &Path) -> Result<i32, ServerError> {
    let bytes = match owner::read_trusted("pid file", path, MAX_PID_FILE_BYTES) {
        Ok(b) => b,
        Err(OwnerError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(ServerError::NoPidFile {
                server,
                path: path.to_path_buf(),
            });
        }
        Err(e) => return Err(ServerError::UntrustedPidFile(e)),
    };
    let text = String::from_utf8_lossy(&bytes);
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
    match stat_fields(&stat).first().copied() {
        Some("Z") => ProcessState::Dead("a zombie (exited)".into()),
        Some("X" | "x") => ProcessState::Dead("dead".into()),
        _ => ProcessState::Running,
    }
}

/// The fields of /proc/PID/stat after the command name, which sits in
/// parentheses and may itself hold spaces and ')': state, ppid, …
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rfind(')')
        .map(|i| stat[i + 1..].split_whitespace().collect())
        .unwrap_or_default()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&stat).get(1)?.parse().ok()
}

/// The kernel's name of the program `pid` runs (`comm`: the executable's
/// file name, at most 15 bytes).
fn comm_of(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    stat.get(open + 1..close).map(str::to_string)
}

/// The real and effective uid of `pid`.
fn uids_of(pid: i32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    let mut ids = line
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse::<u32>().ok());
    Some((ids.next()??, ids.next()??))
}

/// Whether `pid` runs `binary` (canonical); what it runs instead if not.
fn runs_binary(pid: i32, binary: &Path) -> Result<(), String> {
    match exe_of(pid) {
        Ok(exe) if exe == binary => Ok(()),
        Ok(exe) => Err(exe.display().to_string()),
        // Without CAP_SYS_PTRACE (the systemd unit does not grant it) the
        // kernel hides the executable of a process holding capabilities
        // certswap lacks, which the root master does. Then: owned by root
        // (no other user can put a root process at a reused pid) and named
        // by the kernel after the binary's file.
        Err(e) if matches!(e.raw_os_error(), Some(nix::libc::EACCES | nix::libc::EPERM)) => {
            let comm = comm_of(pid).unwrap_or_default();
            let uids = uids_of(pid);
            let want: String = binary
                .file_name()
                .map(|n| n.to_string_lossy().chars().take(15).collect())
                .unwrap_or_default();
            match uids {
                Some((0, 0)) if comm == want => Ok(()),
                Some((uid, _)) => Err(format!("`{comm}` run by uid {uid}")),
                None => Err(format!("`{comm}`")),
            }
        }
        Err(_) => Err("a process whose executable cannot be read".into()),
    }
}

/// The executable `pid` runs, as a path. A binary replaced on disk while
/// the process runs (a package upgrade renames the new file over the old
/// one) reads as "PATH (deleted)": that is still the program installed at
/// PATH, so the suffix is dropped and PATH is what gets compared. Only
/// root can put a file at the configured binary's path, so accepting the
/// replaced inode under its old name gives another user nothing.
fn exe_of(pid: i32) -> std::io::Result<PathBuf> {
    let link = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    let text = link.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(p) => PathBuf::from(p),
        None => link,
    })
}

/// The process title: nginx rewrites its argv to "nginx: master process …"
/// / "nginx: worker process".
fn cmdline_of(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// The configured binary as the kernel names a process's executable.
fn canonical_binary(binary: &Path) -> PathBuf {
    // A binary that cannot be resolved matches nothing but its own name.
    std::fs::canonicalize(binary).unwrap_or_else(|_| binary.to_path_buf())
}

/// `pid` (from `want.pid_file`) is the live server: its binary, its
/// master or parent. Why not, in one sentence, otherwise.
fn prove(want: &Expect<'_>, pid: i32) -> Result<(), ServerError> {
    if let ProcessState::Dead(state) = process_state(pid) {
        return Err(ServerError::NotRunning {
            server: want.server,
            pid,
            path: want.pid_file.to_path_buf(),
            state,
        });
    }
    let binary = canonical_binary(want.binary);
    let not_it = |found: String| ServerError::NotTheServer {
        pid,
        path: want.pid_file.to_path_buf(),
        found,
        binary: want.binary.to_path_buf(),
    };
    runs_binary(pid, &binary).map_err(not_it)?;
    // The master's title says so (nginx); otherwise a process whose parent
    // runs the same binary is a child (a worker), never the one to signal.
    if want.leader == Leader::NginxMaster && cmdline_of(pid).starts_with("nginx: master process") {
        return Ok(());
    }
    if let Some(ppid) = parent_of(pid)
        && runs_binary(ppid, &binary).is_ok()
    {
        return Err(ServerError::NotTheLeader {
            server: want.server,
            pid,
            path: want.pid_file.to_path_buf(),
            parent: ppid,
            leader: match want.leader {
                Leader::NginxMaster | Leader::HaproxyMaster => "master process",
                Leader::ApacheParent => "parent process",
            },
        });
    }
    Ok(())
}

/// The pid from the pid file, proven to be the live server (see the module
/// comment); NoPidFile, NotRunning, NotTheServer or UntrustedPidFile else.
pub(crate) fn proven_pid(want: &Expect<'_>) -> Result<i32, ServerError> {
    let pid = read_pid_of(want.server, want.pid_file)?;
    prove(want, pid)?;
    Ok(pid)
}

/// A pidfd: a handle on one process that a reused pid cannot take over.
struct PidFd(OwnedFd);

impl PidFd {
    /// None when the kernel has no pidfd (before Linux 5.3): then the
    /// signal goes by pid, right after the proof.
    fn open(pid: i32) -> Result<Option<PidFd>, nix::errno::Errno> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new file
        // descriptor or -1; no memory is passed.
        let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return match nix::errno::Errno::last() {
                nix::errno::Errno::ENOSYS => Ok(None),
                e => Err(e),
            };
        }
        // SAFETY: the descriptor was just returned to us and is owned by
        // nothing else.
        Ok(Some(PidFd(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })))
    }

    fn send(&self, sig: nix::sys::signal::Signal) -> Result<(), nix::errno::Errno> {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid pidfd, a signal number, no siginfo (null), no
        // flags: the kernel reads no memory of ours.
        let r = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                sig as nix::libc::c_int,
                std::ptr::null::<nix::libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            Err(nix::errno::Errno::last())
        } else {
            Ok(())
        }
    }
}

/// Send `sig` to the proven server of `want`, proving it again right
/// before the signal (the process may have been replaced since the check
/// before the change).
pub(crate) fn signal(want: &Expect<'_>, sig: nix::sys::signal::Signal) -> Result<i32, ServerError> {
    let pid = read_pid_of(want.server, want.pid_file)?;
    let failed = |source| ServerError::Signal {
        server: want.server,
        pid,
        source,
    };
    // Opened first: if the process exits and its pid is reused after
    // this, the proof below sees the newcomer (and refuses), or the pidfd
    // still names the dead one (and the kernel answers ESRCH).
    let pidfd = match PidFd::open(pid) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ESRCH) => {
            return Err(ServerError::NotRunning {
                server: want.server,
                pid,
                path: want.pid_file.to_path_buf(),
                state: "not running".into(),
            });
        }
        Err(e) => return Err(failed(e)),
    };
    prove(want, pid)?;
    match pidfd {
        Some(fd) => fd.send(sig).map_err(failed)?,
        None => nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(failed)?,
    }
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
        assert!(matches!(
            read_pid(&dir.path().join("none")),
            Err(ServerError::NoPidFile { .. })
        ));
    }

    #[test]
    fn a_process_running_another_binary_is_not_the_server() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("nginx.pid");
        std::fs::write(&p, format!("{}\n", child.id())).expect("write");
        let want = Expect {
            server: "nginx",
            binary: Path::new("/usr/sbin/nginx"),
            pid_file: &p,
            leader: Leader::NginxMaster,
        };
        let e = proven_pid(&want).expect_err("sleep is not nginx");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("pid {} from {}", child.id(), p.display()))
                && msg.contains("sleep, not /usr/sbin/nginx"),
            "{msg}"
        );
        let e = signal(&want, nix::sys::signal::Signal::SIGHUP).expect_err("no signal");
        assert!(matches!(e, ServerError::NotTheServer { .. }), "{e}");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "sleep got no signal"
        );
        // The same process, proven against its own binary, is accepted.
        let sleep = exe_of(child.id() as i32).expect("exe");
        assert!(runs_binary(child.id() as i32, &sleep).is_ok());
        let ok = Expect {
            binary: &sleep,
            ..want
        };
        assert_eq!(proven_pid(&ok).expect("proven"), child.id() as i32);
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn a_server_whose_binary_was_replaced_on_disk_is_still_the_server() {
        // A package upgrade renames a new binary over the running one's:
        // /proc/PID/exe then reads "PATH (deleted)".
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("server");
        std::fs::copy("/usr/bin/sleep", &bin).expect("copy sleep");
        let mut child = std::process::Command::new(&bin)
            .arg("30")
            .spawn()
            .expect("spawn");
        std::fs::remove_file(&bin).expect("replace the binary");
        std::fs::write(&bin, b"#!/bin/sh\n").expect("a new file at the path");
        let p = dir.path().join("server.pid");
        std::fs::write(&p, format!("{}\n", child.id())).expect("write");
        let want = Expect {
            server: "nginx",
            binary: &bin,
            pid_file: &p,
            leader: Leader::NginxMaster,
        };
        let proven = proven_pid(&want);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            proven.expect("the replaced binary's process"),
            child.id() as i32
        );
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
