//! Who may have written a path, checked before certswap (running as root)
//! trusts it: the config, the state dir, an inbox and its files, secret
//! files, the server's pid file. The threat model is in
//! docs/reliability.md ("Who may write what").
//!
//! The rule, as OpenSSH's StrictModes has it: a path is trusted when it and
//! every directory above it is owned by root (or by the user certswap runs
//! as) and writable by nobody else — a directory writable by others is
//! accepted above it only with the sticky bit and a trusted owner (`/tmp`),
//! because then others cannot rename what root put there. The last
//! component is never a symlink. Every refusal is one sentence naming the
//! path, what is wrong and the command that fixes it.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a path is not trusted. Each names the path and the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OwnerError {
    /// The path could not be read at all.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A symlink where a real file or directory must be.
    #[error(
        "{what} {path} is a symlink; certswap follows no symlink here (replace it with the real {kind})"
    )]
    Symlink {
        what: &'static str,
        path: PathBuf,
        kind: &'static str,
    },
    /// Not the kind of file expected (a FIFO, a device, a directory…).
    #[error("{what} {path} is {found}, not a {kind}")]
    Kind {
        what: &'static str,
        path: PathBuf,
        found: &'static str,
        kind: &'static str,
    },
    /// Owned by another user than root or certswap's own.
    #[error(
        "{what} {path} is owned by uid {uid}, not by root: another user could change it (chown root {fix})"
    )]
    Owner {
        what: &'static str,
        path: PathBuf,
        uid: u32,
        fix: PathBuf,
    },
    /// Group- or world-writable.
    #[error(
        "{what} {path} is writable by {who} (mode {mode:04o}): another user could change it (chmod go-w {fix})"
    )]
    Writable {
        what: &'static str,
        path: PathBuf,
        who: &'static str,
        mode: u32,
        fix: PathBuf,
    },
    /// A secret readable by more than root.
    #[error(
        "{what} {path} is readable by {who} (mode {mode:04o}): a secret must not be (chmod 600 {path})"
    )]
    Readable {
        what: &'static str,
        path: PathBuf,
        who: &'static str,
        mode: u32,
    },
    /// Larger than the cap for what it is.
    #[error("{what} {path} is larger than {limit} bytes")]
    TooLarge {
        what: &'static str,
        path: PathBuf,
        limit: u64,
    },
}

/// The users whose files certswap trusts: root and itself.
fn trusted_uid(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::Uid::effective().as_raw()
}

/// The group of `meta` gives no one outside root's trust (group root, or
/// certswap's own group).
fn trusted_gid(gid: u32) -> bool {
    gid == 0 || gid == nix::unistd::Gid::effective().as_raw()
}

fn kind_of(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "an unknown kind of file"
    }
}

/// Owner and write bits of one path (`path` is what the user named, for
/// the message; `fix` the path the chown/chmod must name).
fn owner_and_mode(
    what: &'static str,
    path: &Path,
    meta: &Metadata,
    fix: &Path,
) -> Result<(), OwnerError> {
    if !trusted_uid(meta.uid()) {
        return Err(OwnerError::Owner {
            what,
            path: path.to_path_buf(),
            uid: meta.uid(),
            fix: fix.to_path_buf(),
        });
    }
    let mode = meta.mode() & 0o7777;
    let sticky_dir = meta.is_dir() && mode & 0o1000 != 0;
    let who = if mode & 0o002 != 0 {
        Some("everyone")
    } else if mode & 0o020 != 0 && !trusted_gid(meta.gid()) {
        Some("its group")
    } else {
        None
    };
    match who {
        // A sticky directory of a trusted owner (/tmp) lets others add
        // entries but not rename or remove root's: fine *above* the path.
        Some(_) if sticky_dir && path != fix => Ok(()),
        Some(who) => Err(OwnerError::Writable {
            what,
            path: path.to_path_buf(),
            who,
            mode,
            fix: fix.to_path_buf(),
        }),
        None => Ok(()),
    }
}

/// Every existing directory above `path` is trusted (see the module
/// comment). Symlinks above are resolved first: the directory they point
/// at is what has to be trusted.
fn ancestors_trusted(what: &'static str, path: &Path) -> Result<(), OwnerError> {
    let parent = crate::fsio::parent_of(path);
    let real = std::fs::canonicalize(&parent).map_err(|source| OwnerError::Io {
        what,
        path: parent.clone(),
        source,
    })?;
    for dir in real.ancestors() {
        let meta = std::fs::metadata(dir).map_err(|source| OwnerError::Io {
            what,
            path: dir.to_path_buf(),
            source,
        })?;
        // An ancestor is reported under the user's path, fixed at its own.
        owner_and_mode(what, path, &meta, dir).map_err(|e| match e {
            OwnerError::Writable {
                what, who, mode, ..
            } => OwnerError::Writable {
                what,
                path: path.to_path_buf(),
                who,
                mode,
                fix: dir.to_path_buf(),
            },
            other => other,
        })?;
    }
    Ok(())
}

fn lstat(what: &'static str, path: &Path) -> Result<Metadata, OwnerError> {
    std::fs::symlink_metadata(path).map_err(|source| OwnerError::Io {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// `path` is a real directory (not a symlink) that only root can change,
/// and so is every directory above it. `what` names it in the message
/// ("state dir", "inbox").
pub fn trusted_dir(what: &'static str, path: &Path) -> Result<(), OwnerError> {
    let meta = lstat(what, path)?;
    trusted_dir_meta(what, path, &meta)?;
    ancestors_trusted(what, path)
}

/// `meta` (from an lstat) is a real directory only root can change.
fn trusted_dir_meta(what: &'static str, path: &Path, meta: &Metadata) -> Result<(), OwnerError> {
    of_kind(what, path, meta, meta.is_dir(), "directory", "directory")?;
    owner_and_mode(what, path, meta, path)
}

/// `meta` is not a symlink and is of the expected kind (`is_kind`): the
/// first two questions of every check here. `link_kind` names the real
/// thing a symlink should be replaced with, `kind` what was expected.
fn of_kind(
    what: &'static str,
    path: &Path,
    meta: &Metadata,
    is_kind: bool,
    link_kind: &'static str,
    kind: &'static str,
) -> Result<(), OwnerError> {
    if meta.file_type().is_symlink() {
        return Err(OwnerError::Symlink {
            what,
            path: path.to_path_buf(),
            kind: link_kind,
        });
    }
    if !is_kind {
        return Err(OwnerError::Kind {
            what,
            path: path.to_path_buf(),
            found: kind_of(meta),
            kind,
        });
    }
    Ok(())
}

/// `meta` (from an lstat or an fstat of an open file) is a regular file
/// that only root can change.
pub fn trusted_file_meta(
    what: &'static str,
    path: &Path,
    meta: &Metadata,
) -> Result<(), OwnerError> {
    of_kind(what, path, meta, meta.is_file(), "file", "regular file")?;
    owner_and_mode(what, path, meta, path)
}

/// `path` is a regular file (not a symlink) that only root can change, in
/// directories only root can change: a config file, a pid file.
pub fn trusted_file(what: &'static str, path: &Path) -> Result<(), OwnerError> {
    let meta = lstat(what, path)?;
    trusted_file_meta(what, path, &meta)?;
    ancestors_trusted(what, path)
}

/// `path` is a Unix socket (not a symlink) owned by root, in directories
/// only root can change: the server's admin socket, which certswap talks to
/// as root. Its own mode is not checked: write on a socket is who may
/// connect, not who placed it; the owner and the directories say that.
pub fn trusted_socket(what: &'static str, path: &Path) -> Result<(), OwnerError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = lstat(what, path)?;
    of_kind(
        what,
        path,
        &meta,
        meta.file_type().is_socket(),
        "socket",
        "socket",
    )?;
    if !trusted_uid(meta.uid()) {
        return Err(OwnerError::Owner {
            what,
            path: path.to_path_buf(),
            uid: meta.uid(),
            fix: path.to_path_buf(),
        });
    }
    ancestors_trusted(what, path)
}

/// A secret (a token, a client key, a vendor secret) is also readable by
/// nobody but root: not by others, and by its group only when the group is
/// root's.
pub fn secret_meta(what: &'static str, path: &Path, meta: &Metadata) -> Result<(), OwnerError> {
    trusted_file_meta(what, path, meta)?;
    let mode = meta.mode() & 0o7777;
    let who = if mode & 0o004 != 0 {
        Some("everyone")
    } else if mode & 0o040 != 0 && !trusted_gid(meta.gid()) {
        Some("its group")
    } else {
        None
    };
    match who {
        Some(who) => Err(OwnerError::Readable {
            what,
            path: path.to_path_buf(),
            who,
            mode,
        }),
        None => Ok(()),
    }
}

/// Read a trusted file: opened without following a symlink and without
/// blocking (a FIFO answers at once instead of hanging the host lock),
/// checked on the open descriptor (so it cannot be swapped between the
/// check and the read), at most `limit` bytes.
pub fn read_trusted(what: &'static str, path: &Path, limit: u64) -> Result<Vec<u8>, OwnerError> {
    let (file, meta) = open_nofollow(what, path)?;
    trusted_file_meta(what, path, &meta)?;
    ancestors_trusted(what, path)?;
    read_capped(what, path, file, limit)
}

/// [`read_trusted`] for a secret (see [`secret_meta`]).
pub fn read_secret(what: &'static str, path: &Path, limit: u64) -> Result<Vec<u8>, OwnerError> {
    let (file, meta) = open_nofollow(what, path)?;
    secret_meta(what, path, &meta)?;
    ancestors_trusted(what, path)?;
    read_capped(what, path, file, limit)
}

/// Open for reading with `O_NOFOLLOW | O_NONBLOCK` and fstat the result.
pub fn open_nofollow(what: &'static str, path: &Path) -> Result<(File, Metadata), OwnerError> {
    let io = |source: io::Error| {
        // ELOOP is how O_NOFOLLOW says "that was a symlink".
        if source.raw_os_error() == Some(nix::libc::ELOOP) {
            OwnerError::Symlink {
                what,
                path: path.to_path_buf(),
                kind: "file",
            }
        } else {
            OwnerError::Io {
                what,
                path: path.to_path_buf(),
                source,
            }
        }
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    Ok((file, meta))
}

fn read_capped(
    what: &'static str,
    path: &Path,
    file: File,
    limit: u64,
) -> Result<Vec<u8>, OwnerError> {
    let mut buf = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|source| OwnerError::Io {
            what,
            path: path.to_path_buf(),
            source,
        })?;
    if buf.len() as u64 > limit {
        return Err(OwnerError::TooLarge {
            what,
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(buf)
}

/// A directory *below* one [`trusted_dir`] already accepted (the state
/// dir's `sites/`, a site's `undo/`): the same rules for the directory
/// itself — real directory, never a symlink, trusted owner, not writable
/// by others — without walking the ancestors again. `Ok(false)` when it
/// does not exist (yet).
pub fn trusted_subdir(what: &'static str, path: &Path) -> Result<bool, OwnerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(OwnerError::Io {
                what,
                path: path.to_path_buf(),
                source,
            });
        }
    };
    trusted_dir_meta(what, path, &meta)?;
    Ok(true)
}

/// Before creating the missing directory `path` (and any missing parents):
/// the nearest existing directory above it, and every directory above
/// that, is trusted — so what certswap creates there only root can change.
/// When the nearest existing entry is not a directory, nothing is said:
/// creating will fail with its own error.
pub fn trusted_to_create(what: &'static str, path: &Path) -> Result<(), OwnerError> {
    let Some(existing) = path
        .ancestors()
        .skip(1)
        .find(|a| !a.as_os_str().is_empty() && std::fs::symlink_metadata(a).is_ok())
    else {
        return Ok(());
    };
    if !std::fs::metadata(existing).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    let real = std::fs::canonicalize(existing).map_err(|source| OwnerError::Io {
        what,
        path: existing.to_path_buf(),
        source,
    })?;
    for dir in real.ancestors() {
        let meta = std::fs::metadata(dir).map_err(|source| OwnerError::Io {
            what,
            path: dir.to_path_buf(),
            source,
        })?;
        // `path` differs from `dir`: a sticky /tmp is fine to create in.
        owner_and_mode(what, path, &meta, dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn subdirs_and_places_to_create_in_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("sites");
        assert!(!trusted_subdir("state dir", &sub).expect("missing is fine"));
        std::fs::create_dir(&sub).expect("mkdir");
        assert!(trusted_subdir("state dir", &sub).expect("private"));
        trusted_to_create("state dir", &sub.join("a/b")).expect("in a private dir");
        chmod(&sub, 0o777);
        let e = trusted_subdir("state dir", &sub).expect_err("world-writable");
        assert!(e.to_string().contains("chmod go-w"), "{e}");
        let e = trusted_to_create("state dir", &sub.join("a/b")).expect_err("in a 0777 dir");
        assert!(e.to_string().contains("writable by everyone"), "{e}");
        chmod(&sub, 0o700);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&sub, &link).expect("symlink");
        let e = trusted_subdir("state dir", &link).expect_err("symlink");
        assert!(matches!(e, OwnerError::Symlink { .. }), "{e}");
        // Through a regular file: left to mkdir's own error.
        let f = dir.path().join("f");
        std::fs::write(&f, "x").expect("write");
        trusted_to_create("state dir", &f.join("state")).expect("not judged");
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_private_dir_and_file_are_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        trusted_dir("state dir", dir.path()).expect("tempdir is trusted");
        let f = dir.path().join("f");
        std::fs::write(&f, "x").expect("write");
        chmod(&f, 0o600);
        trusted_file("config", &f).expect("file");
        assert_eq!(read_secret("token file", &f, 10).expect("secret"), b"x");
    }

    #[test]
    fn writable_by_others_symlinks_and_fifos_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("inbox");
        std::fs::create_dir(&sub).expect("mkdir");
        chmod(&sub, 0o777);
        let e = trusted_dir("inbox", &sub).expect_err("world-writable");
        assert!(e.to_string().contains("chmod go-w"), "{e}");
        // Sticky /tmp-like: fine above a path, not as the path itself.
        chmod(&sub, 0o1777);
        assert!(trusted_dir("inbox", &sub).is_err());
        let inner = sub.join("x");
        std::fs::create_dir(&inner).expect("mkdir");
        trusted_dir("inbox", &inner).expect("below a sticky root dir");
        chmod(&sub, 0o755);

        let f = sub.join("f");
        std::fs::write(&f, "x").expect("write");
        chmod(&f, 0o644);
        let e = read_secret("token file", &f, 10).expect_err("world-readable secret");
        assert!(e.to_string().contains("readable by everyone"), "{e}");
        chmod(&f, 0o666);
        assert!(trusted_file("config", &f).is_err());

        let link = sub.join("link");
        std::os::unix::fs::symlink(&f, &link).expect("symlink");
        let e = read_trusted("pid file", &link, 10).expect_err("symlink");
        assert!(matches!(e, OwnerError::Symlink { .. }), "{e}");

        let fifo = sub.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let e = read_trusted("pid file", &fifo, 10).expect_err("fifo");
        assert!(e.to_string().contains("a FIFO"), "{e}");
    }

    #[test]
    fn a_file_owned_by_another_user_is_refused() {
        if !nix::unistd::Uid::effective().is_root() {
            return; // chown needs root; the suite runs as root (scripts/test)
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        std::fs::write(&f, "x").expect("write");
        std::os::unix::fs::chown(&f, Some(65534), Some(65534)).expect("chown");
        let e = trusted_file("config", &f).expect_err("nobody's file");
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        let e = read_trusted("pid file", &f, 10).expect_err("nobody's file");
        assert!(e.to_string().contains("chown root"), "{e}");
    }
}
