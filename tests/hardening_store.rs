//! The state dir, the journal in it and the config file are input to a
//! process that runs as root (issue 16 item 4, invariant 9): another user
//! who can write any of them must not be able to make certswap write or
//! remove a file as root. Each test runs the real binary against a real
//! nginx, as root, with uid 65534 as the other user, and checks that a
//! refusal is one sentence, exit 2, and changes no byte, mode or owner.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use support::world::{SITE, World, path, text};

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).expect("chown");
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit 2 and one line on stderr holding every piece of `reason`.
fn assert_refused(out: &Output, reason: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{}", text(out));
    assert!(!err.contains("panicked"), "{}", text(out));
    for r in reason {
        assert!(err.contains(r), "expected {r:?}: {}", text(out));
    }
    assert_eq!(err.trim().lines().count(), 1, "one line: {}", text(out));
}

/// Kind, mode, owner and content hash (or link target) of everything
/// under the world's directory except the server's logs and run files:
/// what "nothing on disk changed" means here.
fn snapshot(w: &World) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    walk(w.dir.path(), &mut out);
    out
}

fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.expect("dir entry").path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        // The server's own files (logs, pid, temp) and the host lock.
        if ["logs", "tmp", "run", "lock"].contains(&name) {
            continue;
        }
        let m = fs::symlink_metadata(&p).expect("lstat");
        let who = format!("{:o} {}:{}", m.mode(), m.uid(), m.gid());
        if m.file_type().is_symlink() {
            let t = fs::read_link(&p).expect("readlink");
            out.insert(p, format!("{who} -> {}", t.display()));
        } else if m.is_dir() {
            out.insert(p.clone(), format!("{who} dir"));
            walk(&p, out);
        } else {
            out.insert(
                p.clone(),
                format!("{who} {}", support::pki::sha256_file(&p)),
            );
        }
    }
}

/// The refusal left everything as it was: files, modes, owners, the
/// server's processes and the certificate it serves.
fn assert_unchanged(w: &World, before: &BTreeMap<PathBuf, String>, workers: &[i32], what: &str) {
    let after = snapshot(w);
    for (p, v) in before {
        assert_eq!(after.get(p), Some(v), "{what}: {} changed", p.display());
    }
    for p in after.keys() {
        assert!(before.contains_key(p), "{what}: {} appeared", p.display());
    }
    assert_eq!(w.server.worker_pids(), workers, "{what}: server signalled");
    assert_eq!(
        w.served(),
        w.old.sha256,
        "{what}: the old certificate is served"
    );
}

/// nginx's workers once both of its `worker_processes 2` are up (a fresh
/// world may still be forking the second): the baseline that shows a
/// signal when it changes.
fn settled_workers(w: &World) -> Vec<i32> {
    for _ in 0..400 {
        let pids = w.server.worker_pids();
        if pids.len() >= 2 {
            return pids;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    w.server.worker_pids()
}

fn state(w: &World) -> PathBuf {
    w.dir.path().join("state")
}

/// Every command that opens the state dir, each run once.
fn every_command(w: &World, cert: &Path, key: &Path) -> Vec<(&'static str, Output)> {
    vec![
        ("install", w.install(cert, key, &[])),
        ("rollback", w.run(&["rollback", "--site", SITE])),
        ("run --once", w.run(&["run", "--once"])),
        ("deploy-hook", w.run(&["deploy-hook"])),
    ]
}

#[test]
fn a_state_dir_another_user_could_change_is_refused_by_every_command() {
    if !is_root() {
        eprintln!("skipped: needs root (chown)");
        return;
    }
    // (how the state dir is made untrusted, what the sentence must say)
    type Spoil = fn(&World, &Path);
    let cases: [(&str, Spoil, &str); 4] = [
        (
            "owned by nobody",
            |_, s| chown(s, NOBODY),
            "is owned by uid 65534",
        ),
        ("mode 0777", |_, s| chmod(s, 0o777), "writable by everyone"),
        (
            "group-writable by nobody's group",
            |_, s| {
                std::os::unix::fs::chown(s, None, Some(NOBODY)).expect("chgrp");
                chmod(s, 0o770);
            },
            "writable by its group",
        ),
        (
            "a symlink to a private dir",
            |w, s| {
                let real = w.dir.path().join("real-state");
                fs::rename(s, &real).expect("mv");
                std::os::unix::fs::symlink(&real, s).expect("symlink");
            },
            "is a symlink",
        ),
    ];
    for (what, spoil, reason) in cases {
        let w = World::nginx();
        let state = state(&w);
        fs::create_dir_all(state.join("sites")).expect("mkdir");
        chmod(&state, 0o700);
        spoil(&w, &state);
        let (cert, key) = w.bundle("new", &w.renewed());
        let before = snapshot(&w);
        let workers = settled_workers(&w);
        for (cmd, out) in every_command(&w, &cert, &key) {
            assert_refused(&out, &["state dir", path(&state), reason]);
            assert_unchanged(&w, &before, &workers, &format!("{what}, {cmd}"));
        }
    }
}

#[test]
fn a_directory_inside_the_state_dir_that_is_a_symlink_is_not_followed() {
    // A site's directory (a real one elsewhere holds a journal that would
    // plant a file) and the store's own top directories.
    for sub in ["sites/shop.test", "sites", "archive", "live"] {
        let w = World::nginx();
        let state = state(&w);
        fs::create_dir_all(state.join("sites")).expect("mkdir");
        let elsewhere = w.dir.path().join("elsewhere");
        let planted = w.dir.path().join("planted");
        forge_site_dir(
            &elsewhere.join("sites/shop.test"),
            &planted,
            &planted,
            0o755,
        );
        let link = state.join(sub);
        let _ = fs::remove_dir(&link);
        std::os::unix::fs::symlink(elsewhere.join(sub), &link).expect("symlink");
        let (cert, key) = w.bundle("new", &w.renewed());
        let before = snapshot(&w);
        let workers = settled_workers(&w);
        let out = w.install(&cert, &key, &[]);
        assert_refused(&out, &[path(&link), "is a symlink"]);
        assert!(!planted.exists(), "{sub}: nothing planted");
        assert_unchanged(&w, &before, &workers, sub);
    }
}

/// Write, as a crashed certswap would have, `site_dir/journal.json` and an
/// undo copy that restore `payload` to `target` with `mode`, the staged
/// file being `staged`.
fn forge_site_dir(site_dir: &Path, target: &Path, staged: &Path, mode: u32) {
    fs::create_dir_all(site_dir.join("undo")).expect("mkdir");
    let payload = b"#!/bin/sh\nid > /tmp/pwned\n";
    fs::write(site_dir.join("undo/cert"), payload).expect("undo copy");
    let sha = certswap::cert::sha256_hex(payload);
    let meta = serde_json::json!({
        "created": "2026-01-01T00:00:00Z",
        "files": [{"role": "cert", "target": target, "sha256": sha,
                   "perms": {"mode": mode, "uid": 0, "gid": 0}}],
    });
    fs::write(site_dir.join("undo/meta.json"), meta.to_string()).expect("meta");
    forge_journal(
        site_dir,
        serde_json::json!({"op": "install", "files": [{
            "role": "cert", "target": target, "staged": staged,
            "old_sha256": sha, "new_sha256": "00"}]}),
    );
}

/// A journal in phase `staged` with the fields of `extra` on top.
fn forge_journal(site_dir: &Path, extra: serde_json::Value) {
    let mut j = serde_json::json!({
        "version": 1, "site": SITE, "op": "install", "phase": "staged",
        "started": "2026-01-01T00:00:00Z", "files": [],
    });
    for (k, v) in extra.as_object().expect("object") {
        j[k] = v.clone();
    }
    fs::write(site_dir.join("journal.json"), j.to_string()).expect("journal");
}

#[test]
fn a_forged_journal_cannot_make_recovery_write_or_remove_anything_outside_the_config() {
    // An attacker wrote these into the state dir earlier (while it was
    // theirs, or from a backup); the state dir itself is root's now.
    let w = World::nginx();
    let site_dir = state(&w).join("sites").join(SITE);
    let outside = w.dir.path().join("outside");
    fs::create_dir(&outside).expect("mkdir");
    let planted = outside.join("setuid-shell");
    let victim = outside.join("victim");
    let victim_dir = outside.join("victim-dir");
    let staged_of_cert = w.cert.with_file_name(format!(".{SITE}.pem.certswap-new"));
    let journal = site_dir.join("journal.json");
    let meta = site_dir.join("undo/meta.json");

    // (case, what to forge, the journal file named, the path it wanted)
    type Forge = Box<dyn Fn()>;
    let cases: Vec<(&str, Forge, &Path, PathBuf)> = vec![
        (
            "a setuid file at a path of the attacker's choice",
            Box::new({
                let (d, p, v) = (site_dir.clone(), planted.clone(), victim.clone());
                move || forge_site_dir(&d, &p, &v, 0o4755)
            }),
            &journal,
            planted.clone(),
        ),
        (
            "a configured target whose staged file is another file",
            Box::new({
                let (d, t, v) = (site_dir.clone(), w.cert.clone(), victim.clone());
                move || forge_site_dir(&d, &t, &v, 0o644)
            }),
            &journal,
            victim.clone(),
        ),
        (
            "an undo record that restores elsewhere",
            Box::new({
                let (d, t, p) = (site_dir.clone(), w.cert.clone(), planted.clone());
                let s = staged_of_cert.clone();
                move || {
                    forge_site_dir(&d, &p, &s, 0o644);
                    // The journal itself names only the configured cert.
                    forge_journal(
                        &d,
                        serde_json::json!({"files": [{
                            "role": "cert", "target": t, "staged": s,
                            "old_sha256": "00", "new_sha256": "00"}]}),
                    );
                }
            }),
            &meta,
            planted.clone(),
        ),
        (
            "a rollback of a version id that climbs out of the store",
            Box::new({
                let d = site_dir.clone();
                move || {
                    fs::create_dir_all(d.join("versions")).expect("mkdir");
                    // No undo/: past the commit point, so recovery would
                    // drop the version rolled back to.
                    forge_journal(
                        &d,
                        serde_json::json!({"op": {"rollback":
                            {"version": "../../../../outside/victim-dir"}}}),
                    );
                }
            }),
            &journal,
            site_dir.join("versions/../../../../outside/victim-dir"),
        ),
    ];
    for (case, forge, named, wanted) in cases {
        let _ = fs::remove_dir_all(&site_dir);
        let _ = fs::remove_dir_all(&outside);
        fs::create_dir_all(&victim_dir).expect("mkdir");
        fs::write(victim_dir.join("precious"), "keep me\n").expect("write");
        fs::write(&victim, "keep me too\n").expect("write");
        forge();
        let (cert, key) = w.bundle("new", &w.renewed());
        let before = snapshot(&w);
        let workers = settled_workers(&w);
        for cmd in ["install", "rollback"] {
            let out = match cmd {
                "install" => w.install(&cert, &key, &[]),
                _ => w.run(&["rollback", "--site", SITE]),
            };
            assert_refused(&out, &[path(named), path(&wanted), "an operator must look"]);
            assert!(!planted.exists(), "{case}, {cmd}: a file was planted");
            assert!(victim.exists(), "{case}, {cmd}: a file was removed");
            assert!(victim_dir.join("precious").exists(), "{case}, {cmd}");
            assert_unchanged(&w, &before, &workers, &format!("{case}, {cmd}"));
        }
    }
}

#[test]
fn a_forged_undo_record_cannot_give_a_configured_file_setuid_or_another_owner() {
    if !is_root() {
        eprintln!("skipped: needs root (chown)");
        return;
    }
    // A real crash right after the swap leaves a journal and an undo copy;
    // then the undo record is changed to ask for a setuid cert and a key
    // owned and readable by another user.
    let w = World::nginx();
    let cert_mode = fs::metadata(&w.cert).expect("cert").mode() & 0o7777;
    let key_mode = fs::metadata(&w.key).expect("key").mode() & 0o7777;
    let new = w.renewed();
    let (cert, key) = w.bundle("new", &new);
    let out = w.install_env(&cert, &key, &[], &[("CERTSWAP_FAILPOINT", "after-swap")]);
    assert_ne!(out.status.code(), Some(0), "the crash: {}", text(&out));
    let meta_path = state(&w).join("sites").join(SITE).join("undo/meta.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&fs::read(&meta_path).expect("undo record")).expect("json");
    for f in meta["files"].as_array_mut().expect("files") {
        let role = f["role"].as_str().map(str::to_owned);
        let perms = &mut f["perms"];
        match role.as_deref() {
            Some("cert") => perms["mode"] = 0o4755.into(),
            _ => {
                perms["mode"] = 0o6666.into();
                perms["uid"] = NOBODY.into();
                perms["gid"] = NOBODY.into();
            }
        }
    }
    fs::write(&meta_path, meta.to_string()).expect("forge the record");

    // The next command repairs: the old files come back, the way they were.
    let out = w.run(&["rollback", "--site", SITE]);
    assert!(
        stderr(&out).contains("no earlier version"),
        "repaired, then nothing to roll back to: {}",
        text(&out)
    );
    assert!(w.pair_matches());
    assert_eq!(w.served(), w.old.sha256, "the old certificate is served");
    let c = fs::metadata(&w.cert).expect("cert");
    assert_eq!(c.mode() & 0o7777, cert_mode, "cert: no setuid, no wider");
    assert_eq!((c.uid(), c.gid()), (0, 0));
    let k = fs::metadata(&w.key).expect("key");
    assert_eq!(k.mode() & 0o7777, key_mode, "key: not readable by others");
    assert_eq!((k.uid(), k.gid()), (0, 0), "key: not given away");
}

#[test]
fn a_missing_state_dir_is_not_created_where_another_user_could_write() {
    let w = World::nginx();
    let open = w.dir.path().join("open");
    fs::create_dir(&open).expect("mkdir");
    chmod(&open, 0o777);
    let state = open.join("state");
    let conf = fs::read_to_string(&w.config).expect("config");
    fs::write(
        &w.config,
        conf.replace(path(&self::state(&w)), path(&state)),
    )
    .expect("config");
    let (cert, key) = w.bundle("new", &w.renewed());
    let before = snapshot(&w);
    let workers = settled_workers(&w);
    let out = w.install(&cert, &key, &[]);
    assert_refused(&out, &[path(&open), "writable by everyone"]);
    assert!(!state.exists(), "not created");
    assert_unchanged(&w, &before, &workers, "state dir in a 0777 dir");
}

#[test]
fn a_config_file_another_user_could_change_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root (chown)");
        return;
    }
    type Spoil = fn(&World) -> PathBuf;
    // (case, how the config is spoiled → the path to pass, the reason)
    let cases: [(&str, Spoil, &str); 4] = [
        (
            "world-writable",
            |w| {
                chmod(&w.config, 0o666);
                w.config.clone()
            },
            "writable by everyone",
        ),
        (
            "owned by nobody",
            |w| {
                chown(&w.config, NOBODY);
                w.config.clone()
            },
            "is owned by uid 65534",
        ),
        (
            "in a directory anyone can write",
            |w| {
                let open = w.dir.path().join("open");
                fs::create_dir(&open).expect("mkdir");
                chmod(&open, 0o777);
                let moved = open.join("certswap.toml");
                fs::rename(&w.config, &moved).expect("mv");
                moved
            },
            "writable by everyone",
        ),
        (
            "a symlink",
            |w| {
                let link = w.dir.path().join("link.toml");
                std::os::unix::fs::symlink(&w.config, &link).expect("symlink");
                link
            },
            "is a symlink",
        ),
    ];
    // The config holds no secret by design (those are `*_file`s): 0644
    // in root's directories is the normal case, and it is accepted.
    let w = World::nginx();
    chmod(&w.config, 0o644);
    let new = w.renewed();
    let (cert, key) = w.bundle("new", &new);
    let out = w.install(&cert, &key, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(w.served(), new.sha256);
    drop(w);

    for (case, spoil, reason) in cases {
        let w = World::nginx();
        let config = spoil(&w);
        let (cert, key) = w.bundle("new", &w.renewed());
        let before = snapshot(&w);
        let workers = settled_workers(&w);
        for args in [
            vec!["run", "--once"],
            vec!["status"],
            vec![
                "install",
                "--site",
                SITE,
                "--cert",
                path(&cert),
                "--key",
                path(&key),
            ],
        ] {
            let out = support::certswap()
                .arg("--config")
                .arg(&config)
                .args(&args)
                .output()
                .expect("run certswap");
            assert_refused(&out, &["config file", path(&config), reason]);
            assert_unchanged(&w, &before, &workers, &format!("{case}, {}", args[0]));
        }
    }
}

#[test]
fn a_forged_version_record_cannot_make_rollback_write_outside_the_config() {
    // A committed install saves the old files as versions/000001; its
    // record is then changed to send the saved cert somewhere else.
    let w = World::nginx();
    let new = w.renewed();
    let (cert, key) = w.bundle("new", &new);
    let out = w.install(&cert, &key, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let planted = w.dir.path().join("planted.pem");
    let meta_path = state(&w)
        .join("sites")
        .join(SITE)
        .join("versions/000001/meta.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&fs::read(&meta_path).expect("version record")).expect("json");
    for f in meta["files"].as_array_mut().expect("files") {
        if f["role"] == "cert" {
            f["target"] = path(&planted).into();
        }
    }
    fs::write(&meta_path, meta.to_string()).expect("forge the record");
    let before = snapshot(&w);
    let workers = settled_workers(&w);
    let out = w.run(&["rollback", "--site", SITE]);
    assert_refused(&out, &[path(&meta_path), path(&planted)]);
    assert!(!planted.exists(), "nothing planted");
    let after = snapshot(&w);
    assert_eq!(after, before, "nothing changed");
    assert_eq!(w.server.worker_pids(), workers, "no signal");
    assert_eq!(w.served(), new.sha256, "the new certificate stays served");
}

#[test]
fn a_forged_managed_journal_cannot_point_the_live_link_outside_the_store() {
    // Managed: recovery flips `live/SITE` back to the journal's old
    // version and drops the new one. A forged "old version" that climbs
    // out of the archive would point the server at the attacker's files
    // and remove the version it serves now.
    let mut o = support::world::Options::new(support::world::Kind::Nginx);
    o.managed = true;
    let w = World::new(o);
    let new = w.renewed();
    let (cert, key) = w.bundle("new", &new);
    let out = w.install(&cert, &key, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let outside = w.dir.path().join("outside");
    fs::create_dir(&outside).expect("mkdir");
    let theirs = w.issuer().leaf(&[SITE]).days(-1, 30).build();
    support::pki::write(&outside, "cert", &theirs);
    let site_dir = state(&w).join("sites").join(SITE);
    let current = fs::read_link(state(&w).join("live").join(SITE)).expect("live link");
    let current = current.file_name().and_then(|n| n.to_str()).expect("id");
    forge_journal(
        &site_dir,
        serde_json::json!({"flip": {"old": "../../../outside", "new": current}}),
    );
    let wanted = state(&w)
        .join("archive")
        .join(SITE)
        .join("../../../outside");
    let before = snapshot(&w);
    let workers = settled_workers(&w);
    for cmd in ["install", "rollback"] {
        let out = match cmd {
            "install" => w.install(&cert, &key, &["--force"]),
            _ => w.run(&["rollback", "--site", SITE]),
        };
        assert_refused(&out, &[path(&site_dir.join("journal.json")), path(&wanted)]);
        assert_eq!(snapshot(&w), before, "{cmd}: nothing changed");
        assert_eq!(w.server.worker_pids(), workers, "{cmd}: no signal");
        assert_eq!(
            w.served(),
            new.sha256,
            "{cmd}: the installed leaf stays served"
        );
    }
}
