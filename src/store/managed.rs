//! Managed mode: a site's files live in complete version directories and
//! the server reads them through one symlink that a single rename(2) flips,
//! so cert, key and chain change together or not at all (the kubelet
//! `..data` / certbot `live → archive` technique, without certbot's
//! link-by-link re-pointing).
//!
//! ```text
//! state_dir/archive/SITE/000007/{cert,key,chain}.pem + meta.json   one complete version
//! state_dir/live/SITE -> ../archive/SITE/000007                    flipped by rename
//! /etc/nginx/ssl/site.pem -> state_dir/live/SITE/cert.pem          made once, on adoption
//! ```
//!
//! 1. adopt (first install, or a target someone replaced): the files the
//!    server reads now become a version, `live/SITE` points at it, and each
//!    configured path is replaced by a symlink into `live/SITE/` — the
//!    server reads the same bytes before and after;
//! 2. write the new version complete under a temp name, fsync, rename;
//! 3. journal (old and new version) before the flip;
//! 4. flip `live/SITE` (symlink to a temp name, rename over, fsync dir).

use std::io;
use std::path::{Path, PathBuf};

use super::{
    Flip, NewFile, Op, Role, SavedFile, SiteStore, StoreError, Txn, Version, check_acme,
    check_target_dir, io_err, load_saved, mkdir_private, next_version_id, read_meta,
    remove_dir_durable, version_ids, write_meta,
};
use crate::cert::sha256_hex;
use crate::failpoint;
use crate::fsio::{self, Perms};

const LINK_SUFFIX: &str = ".certswap-new";
/// The cap of every cert/key file certswap reads ([`crate::bundle`]).
const MAX_FILE_BYTES: u64 = crate::bundle::MAX_FILE_BYTES;

impl Role {
    /// The file's name inside a version directory.
    fn version_file(self) -> &'static str {
        match self {
            Role::Cert => "cert.pem",
            Role::Key => "key.pem",
            Role::Chain => "chain.pem",
        }
    }
}

impl SiteStore {
    fn live_link(&self) -> PathBuf {
        self.root.join("live").join(&self.dir_name)
    }

    fn archive_dir(&self) -> PathBuf {
        self.root.join("archive").join(&self.dir_name)
    }

    /// Where a configured path of a managed site points.
    fn live_file(&self, role: Role) -> PathBuf {
        self.live_link().join(role.version_file())
    }

    /// The version `live/SITE` points at, if the site is managed yet.
    pub fn managed_current(&self) -> Result<Option<String>, StoreError> {
        let link = self.live_link();
        match std::fs::read_link(&link) {
            Ok(t) => Ok(t.file_name().map(|n| n.to_string_lossy().into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&link, "read the live link")(e)),
        }
    }

    /// Version ids in the archive, oldest first.
    fn managed_ids(&self) -> Result<Vec<String>, StoreError> {
        version_ids(&self.archive_dir())
    }

    fn next_id(&self) -> Result<String, StoreError> {
        next_version_id(&self.archive_dir())
    }

    /// Steps 1–3 of a managed change. `targets` are every configured path
    /// of the site; roles missing from `files` keep their current bytes.
    pub fn begin_managed(
        &self,
        op: Op,
        files: Vec<NewFile>,
        targets: &[(Role, PathBuf)],
    ) -> Result<Txn, StoreError> {
        let before = self.managed_ids().unwrap_or_default();
        let is_install = op == Op::Install;
        self.prepare_managed(op, files, targets).inspect_err(|_| {
            // Nothing the server reads changed (adoption keeps the bytes and
            // the flip comes later): drop what this attempt wrote.
            let _ = self.remove_managed_leftovers();
            if is_install && let Ok(now) = self.managed_ids() {
                for id in now.iter().filter(|id| !before.contains(id)) {
                    if self.managed_current().ok().flatten().as_deref() != Some(id.as_str()) {
                        let _ = remove_dir_durable(&self.archive_dir().join(id));
                    }
                }
            }
            let _ = fsio::durable_remove(&self.journal_path());
        })
    }

    fn prepare_managed(
        &self,
        op: Op,
        files: Vec<NewFile>,
        targets: &[(Role, PathBuf)],
    ) -> Result<Txn, StoreError> {
        for (_, target) in targets {
            // Linking certbot's live/ paths elsewhere would break its renewals.
            check_acme(&self.name, target)?;
            check_target_dir(target)?;
        }
        mkdir_private(&self.dir)?;
        mkdir_private(&self.archive_dir())?;
        mkdir_private(&self.root.join("live"))?;

        // 1. adopt: afterwards every target is a symlink into live/SITE.
        let current = self.adopt(targets)?;

        // 2. the new version, complete before it has its name.
        let new = match &op {
            Op::Rollback { version } => version.clone(),
            Op::Install => {
                let id = self.next_id()?;
                let cur_dir = self.archive_dir().join(&current);
                let cur_meta = read_meta(&cur_dir)?;
                let mut contents = Vec::new();
                for (role, target) in targets {
                    let (bytes, perms) = match files.iter().find(|f| f.role == *role) {
                        Some(f) => {
                            let perms = cur_meta
                                .files
                                .iter()
                                .find(|s| s.role == *role)
                                .and_then(|s| s.perms);
                            (
                                f.bytes.clone(),
                                perms.unwrap_or_else(|| role.default_perms()),
                            )
                        }
                        None => {
                            let src = cur_dir.join(role.version_file());
                            let bytes = std::fs::read(&src)
                                .map_err(io_err(&src, "read the current version"))?;
                            let perms = cur_meta
                                .files
                                .iter()
                                .find(|s| s.role == *role)
                                .and_then(|s| s.perms);
                            (bytes, perms.unwrap_or_else(|| role.default_perms()))
                        }
                    };
                    contents.push((*role, target.clone(), bytes, perms));
                }
                self.write_version(&id, &contents)?;
                id
            }
        };

        // The flip's new link, made now: the flip then frees and retakes
        // its inode, so a state dir out of inodes fails here, not at it.
        self.stage_live_link(&new)?;

        // 3. the journal, before the flip.
        let txn = Txn::start(self, op, Vec::new(), Some(Flip { old: current, new }))?;
        failpoint::hit("after-stage");
        Ok(txn)
    }

    /// Make the site managed now, without a change: what `targets` hold
    /// becomes the live version and each becomes a symlink into
    /// `live/SITE/` (`certswap adopt --managed`). The server reads the same
    /// bytes before and after, so no journal is needed (see [`Self::adopt`]).
    pub fn adopt_managed(&self, targets: &[(Role, PathBuf)]) -> Result<String, StoreError> {
        for (_, target) in targets {
            check_target_dir(target)?;
        }
        mkdir_private(&self.dir)?;
        mkdir_private(&self.archive_dir())?;
        mkdir_private(&self.root.join("live"))?;
        self.adopt(targets)
    }

    /// Make the site managed if it is not (or no longer) so: returns the
    /// version `live/SITE` points at afterwards.
    fn adopt(&self, targets: &[(Role, PathBuf)]) -> Result<String, StoreError> {
        let current = self.managed_current()?;
        let all_linked = targets.iter().all(|(role, t)| {
            std::fs::read_link(t).ok().as_deref() == Some(self.live_file(*role).as_path())
        });
        let current = match current {
            Some(c) if all_linked && self.archive_dir().join(&c).is_dir() => return Ok(c),
            _ => {
                // What the server reads now, through any links, becomes a version.
                let mut contents = Vec::new();
                for (role, target) in targets {
                    let bytes = fsio::read_limited(target, MAX_FILE_BYTES)
                        .map_err(io_err(target, "read the installed file"))?;
                    let perms = match std::fs::metadata(target) {
                        Ok(m) => {
                            use std::os::unix::fs::MetadataExt;
                            Perms {
                                mode: m.mode() & 0o7777,
                                uid: m.uid(),
                                gid: m.gid(),
                            }
                        }
                        Err(e) => return Err(io_err(target, "read the mode of")(e)),
                    };
                    contents.push((*role, target.clone(), bytes, perms));
                }
                let id = self.next_id()?;
                self.write_version(&id, &contents)?;
                self.point_live_at(&id)?;
                id
            }
        };
        for (role, target) in targets {
            let want = self.live_file(*role);
            match std::fs::symlink_metadata(target) {
                Ok(m) if m.file_type().is_symlink() => {
                    let points =
                        std::fs::read_link(target).map_err(io_err(target, "read the link"))?;
                    if points == want {
                        continue;
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(target, "read")(e)),
            }
            let tmp = fsio::sibling(target, LINK_SUFFIX);
            fsio::durable_remove(&tmp).map_err(io_err(&tmp, "remove an old staged link"))?;
            std::os::unix::fs::symlink(&want, &tmp).map_err(io_err(&tmp, "create a link"))?;
            fsio::durable_rename(&tmp, target)
                .map_err(io_err(target, "replace the file by a link"))?;
            // A crash between these renames leaves some paths linked and
            // some not, each holding the same bytes: no mix is possible.
            match role {
                Role::Cert => failpoint::hit("after-rename-cert"),
                Role::Key => failpoint::hit("after-rename-key"),
                Role::Chain => failpoint::hit("after-rename-chain"),
            }
        }
        Ok(current)
    }

    /// Write `archive/SITE/ID/` complete: files, meta, fsync, then rename.
    fn write_version(
        &self,
        id: &str,
        contents: &[(Role, PathBuf, Vec<u8>, Perms)],
    ) -> Result<(), StoreError> {
        let dest = self.archive_dir().join(id);
        let tmp = self.archive_dir().join(format!(".{id}.tmp"));
        remove_dir_durable(&tmp)?;
        // 0711: the server's master (root) reads through it; nobody lists it.
        std::fs::create_dir(&tmp).map_err(io_err(&tmp, "create the version directory"))?;
        let mut saved = Vec::new();
        for (role, target, bytes, perms) in contents {
            let p = tmp.join(role.version_file());
            fsio::create_new(&p, bytes, *perms).map_err(io_err(&p, "write"))?;
            saved.push(SavedFile {
                role: *role,
                target: target.clone(),
                sha256: Some(sha256_hex(bytes)),
                perms: Some(*perms),
            });
        }
        write_meta(&tmp, &saved, super::SyncMode::Now)?;
        fsio::durable_rename(&tmp, &dest).map_err(io_err(&dest, "name the new version"))
    }

    /// Flip `live/SITE` to version `id` with one rename.
    pub(super) fn point_live_at(&self, id: &str) -> Result<(), StoreError> {
        let tmp = self.stage_live_link(id)?;
        let link = self.live_link();
        fsio::durable_rename(&tmp, &link).map_err(io_err(&link, "flip the live link"))
    }

    /// `live/.SITE.certswap-new` pointing at version `id`, ready to be
    /// renamed over `live/SITE`.
    fn stage_live_link(&self, id: &str) -> Result<PathBuf, StoreError> {
        let tmp = fsio::sibling(&self.live_link(), LINK_SUFFIX);
        fsio::durable_remove(&tmp).map_err(io_err(&tmp, "remove an old staged link"))?;
        let target = Path::new("..")
            .join("archive")
            .join(&self.dir_name)
            .join(id);
        std::os::unix::fs::symlink(&target, &tmp).map_err(io_err(&tmp, "create the live link"))?;
        Ok(tmp)
    }

    pub(super) fn abort_managed(&self, op: &Op, flip: &Flip) -> Result<(), StoreError> {
        if self.managed_current()?.as_deref() != Some(flip.old.as_str()) {
            self.point_live_at(&flip.old)?;
        }
        if *op == Op::Install && flip.new != flip.old {
            remove_dir_durable(&self.archive_dir().join(&flip.new))?;
        }
        // The flip's link staged in step 2, when the flip never came.
        let tmp = fsio::sibling(&self.live_link(), LINK_SUFFIX);
        fsio::durable_remove(&tmp).map_err(io_err(&tmp, "remove a staged link"))
    }

    pub(super) fn finish_managed_commit(
        &self,
        op: &Op,
        flip: &Flip,
        keep: usize,
    ) -> Result<(), StoreError> {
        match op {
            // Going back drops the version gone back from (as in place).
            Op::Rollback { .. } => remove_dir_durable(&self.archive_dir().join(&flip.old)),
            Op::Install => {
                // The live version plus `keep` earlier ones.
                let ids = self.managed_ids()?;
                let excess = ids.len().saturating_sub(keep + 1);
                for id in ids.iter().take(excess) {
                    if *id != flip.new {
                        remove_dir_durable(&self.archive_dir().join(id))?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Temp version dirs and staged links a crash before the journal left.
    pub(super) fn remove_managed_leftovers(&self) -> Result<(), StoreError> {
        let link_tmp = fsio::sibling(&self.live_link(), LINK_SUFFIX);
        fsio::durable_remove(&link_tmp).map_err(io_err(&link_tmp, "remove a staged link"))?;
        let dir = self.archive_dir();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                remove_dir_durable(&e.path())?;
            }
        }
        Ok(())
    }

    /// The version before the live one, as files (for `rollback`).
    pub fn previous_managed(&self) -> Result<(Version, Vec<NewFile>), StoreError> {
        let current = self.managed_current()?;
        let prev = self
            .managed_ids()?
            .into_iter()
            .rfind(|id| current.as_deref().is_some_and(|c| id.as_str() < c))
            .ok_or_else(|| StoreError::NoVersion {
                site: self.name.clone(),
                path: self.archive_dir(),
            })?;
        let dir = self.archive_dir().join(&prev);
        let meta = read_meta(&dir)?;
        let files = load_saved(&dir, &meta.files, Role::version_file)?;
        Ok((
            Version {
                id: prev,
                dir,
                created: meta.created,
                files: meta.files,
            },
            files,
        ))
    }
}
