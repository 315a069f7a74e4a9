//! Durable file primitives, the only place certswap creates or renames
//! files: create-exclusive without following symlinks, with the final mode
//! and owner before the first byte, fsync; and PostgreSQL's durable_rename
//! (fsync file, rename, fsync the directory) so after a crash a path holds
//! either the old or the new file, never a mix or a truncated one. For a
//! batch, the same order with the syncs grouped: files written unsynced
//! ([`create_new_unsynced`]), then made durable together, one syncfs(2)
//! per filesystem ([`sync_filesystems`]), before any is renamed.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, fchown};

/// Create `dir` and its missing parents with mode 0700.
pub fn mkdir_private_all(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Mode and owner a new file should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Perms {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Perms {
    /// The permissions of an existing file (mode bits only, not the type).
    pub fn of(path: &Path) -> io::Result<Perms> {
        let m = std::fs::symlink_metadata(path)?;
        Ok(Perms {
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
        })
    }

    /// A new file owned by the current user with `mode`.
    pub fn own(mode: u32) -> Perms {
        Perms {
            mode,
            uid: Uid::effective().as_raw(),
            gid: Gid::effective().as_raw(),
        }
    }
}

/// Create `path` (which must not exist; a symlink there is not followed)
/// holding `bytes`, readable by no more than `perms` allow at any moment,
/// and fsync it. The file starts as 0600 of the current user, gets its
/// owner, then its mode, then its bytes: it is never wider than its target.
pub fn create_new(path: &Path, bytes: &[u8], perms: Perms) -> io::Result<()> {
    create(path, bytes, perms, true)
}

/// [`create_new`] without the fsync: the caller makes the file durable
/// with [`sync_filesystems`] before anything relies on it (a rename).
pub fn create_new_unsynced(path: &Path, bytes: &[u8], perms: Perms) -> io::Result<()> {
    create(path, bytes, perms, false)
}

fn create(path: &Path, bytes: &[u8], perms: Perms, sync: bool) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)?;
    let result = fill(&mut f, bytes, perms).and_then(|()| if sync { f.sync_all() } else { Ok(()) });
    if result.is_err() {
        // A half-written file must not be left for anyone to pick up.
        let _ = std::fs::remove_file(path);
    }
    result
}

fn fill(f: &mut File, bytes: &[u8], perms: Perms) -> io::Result<()> {
    let (uid, gid) = (Uid::from_raw(perms.uid), Gid::from_raw(perms.gid));
    if uid != Uid::effective() || gid != Gid::effective() {
        fchown(&*f, Some(uid), Some(gid)).map_err(io::Error::from)?;
    }
    f.set_permissions(std::fs::Permissions::from_mode(perms.mode))?;
    f.write_all(bytes)
}

/// Make everything written so far on the filesystems holding `paths`
/// durable: one syncfs(2) per filesystem (paths on one device count
/// once). Covers file data, new names, links and renames alike, so a
/// batch of thousands of files needs one call where it needed one fsync
/// per file and per directory (docs/performance.md measures both).
/// syncfs also writes other processes' dirty pages of those filesystems;
/// what that costs is measured there too.
pub fn sync_filesystems(paths: &[PathBuf]) -> io::Result<()> {
    let mut done: Vec<u64> = Vec::new();
    for p in paths {
        let dev = std::fs::metadata(p)?.dev();
        if done.contains(&dev) {
            continue;
        }
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_CLOEXEC)
            .open(p)?;
        nix::unistd::syncfs(&dir).map_err(io::Error::from)?;
        done.push(dev);
    }
    Ok(())
}

/// fsync a directory so a rename or unlink inside it is durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory holding `path` ("." for a bare name).
pub fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// rename(2) `from` over `to`, then fsync the directories involved. `from`
/// must already be fsynced (every writer here goes through [`create_new`]).
pub fn durable_rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    let (a, b) = (parent_of(from), parent_of(to));
    fsync_dir(&b)?;
    if a != b {
        fsync_dir(&a)?;
    }
    Ok(())
}

/// Hard-link `from` as `to` (which must not exist; a symlink at `from` is
/// not followed), then fsync the file so its link count is durable. The
/// caller fsyncs `to`'s directory (once for several links).
pub fn link_synced(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::hard_link(from, to)?;
    let synced = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(to)
        .and_then(|f| f.sync_all());
    if synced.is_err() {
        let _ = std::fs::remove_file(to);
    }
    synced
}

/// Remove a file if it exists and fsync its directory.
pub fn durable_remove(path: &Path) -> io::Result<()> {
    // Most of these are of files that are not there (a staged file before
    // staging). A lookup does not take the directory's lock for writing,
    // an unlink does: 16 threads staging into one certificate directory
    // spun on it (perf, issue 17).
    if let Err(e) = std::fs::symlink_metadata(path)
        && e.kind() == io::ErrorKind::NotFound
    {
        return Ok(());
    }
    match std::fs::remove_file(path) {
        Ok(()) => fsync_dir(&parent_of(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Replace `path` with `bytes` atomically (temp file next to it, then
/// [`durable_rename`]). For certswap's own state files.
pub fn write_atomic(path: &Path, bytes: &[u8], perms: Perms) -> io::Result<()> {
    let tmp = sibling(path, ".tmp");
    durable_remove(&tmp)?;
    create_new(&tmp, bytes, perms)?;
    durable_rename(&tmp, path)
}

/// `dir/.NAME<suffix>`: a hidden file next to `path`, on the same
/// filesystem so a rename over `path` is atomic.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_of(path).join(format!(".{name}{suffix}"))
}

/// Read a file of at most `limit` bytes; larger files are an error.
pub fn read_limited(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let f = File::open(path)?;
    let mut buf = Vec::new();
    f.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_new_sets_mode_and_refuses_existing_and_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("k.key");
        create_new(&p, b"secret", Perms::own(0o640)).expect("create");
        assert_eq!(std::fs::read(&p).expect("read"), b"secret");
        assert_eq!(Perms::of(&p).expect("perms").mode, 0o640);
        let again = create_new(&p, b"x", Perms::own(0o600)).expect_err("exists");
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);

        let target = dir.path().join("elsewhere");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert!(create_new(&link, b"x", Perms::own(0o600)).is_err());
        assert!(!target.exists(), "a symlink must never be followed");
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("journal.json");
        write_atomic(&p, b"one", Perms::own(0o600)).expect("first");
        write_atomic(&p, b"two", Perms::own(0o600)).expect("second");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn read_limited_refuses_larger_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("big");
        std::fs::write(&p, vec![b'a'; 11]).expect("write");
        assert!(read_limited(&p, 10).is_err());
        assert_eq!(read_limited(&p, 11).expect("fits").len(), 11);
    }
}
