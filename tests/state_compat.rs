//! A state dir written by the release before the one engine (commit
//! 1be0592) keeps working with today's binary: the journal that release
//! left open when it crashed after its reload is repaired, the install
//! then goes through, and the versions that release saved are rolled back
//! to — in place and managed.
//!
//! The fixture under `tests/fixtures/state-1be0592/` was written by that
//! release's own binary, in a world like the one here; its paths are
//! stored relative to the world (`@ROOT@`), its links and modes in
//! `manifest.txt`. To make it again:
//! `CERTSWAP_OLD_BIN=/path/to/1be0592/certswap cargo test --test state_compat -- --ignored`.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::pki;
use support::world::{Kind, Options, SITE, World, path, text};

const ROOT: &str = "@ROOT@";
/// What of a world the fixture keeps.
const KEPT: &[&str] = &["ssl", "state", "incoming"];

fn fixture_dir(managed: bool) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/state-1be0592")
        .join(if managed { "managed" } else { "in-place" })
}

fn world(managed: bool) -> World {
    let mut o = Options::new(Kind::Nginx);
    o.managed = managed;
    World::new(o)
}

/// Put the fixture's files, links and modes into `w`, its paths moved to
/// `w`'s directory.
fn restore_fixture(w: &World, managed: bool) {
    let root = w.dir.path();
    let src = fixture_dir(managed);
    for part in KEPT {
        let p = root.join(part);
        if p.exists() {
            std::fs::remove_dir_all(&p).expect("clear the world's part");
        }
    }
    let manifest = std::fs::read_to_string(src.join("manifest.txt")).expect("read the manifest");
    let here = root.display().to_string();
    for line in manifest.lines() {
        let parts: Vec<&str> = line.splitn(4, ' ').collect();
        let [kind, mode, rel, rest @ ..] = parts.as_slice() else {
            panic!("a bad manifest line: {line:?}");
        };
        let dst = root.join(rel);
        let mode = u32::from_str_radix(mode, 8).expect("an octal mode");
        match *kind {
            "d" => std::fs::create_dir_all(&dst).expect("mkdir"),
            "f" => {
                let bytes =
                    std::fs::read(src.join("files").join(rel)).expect("read a fixture file");
                let bytes = match String::from_utf8(bytes) {
                    Ok(t) => t.replace(ROOT, &here).into_bytes(),
                    Err(e) => e.into_bytes(),
                };
                std::fs::write(&dst, bytes).expect("write");
            }
            "l" => {
                let target = rest.first().expect("a link target").replace(ROOT, &here);
                std::os::unix::fs::symlink(target, &dst).expect("symlink");
                continue;
            }
            other => panic!("a bad manifest kind {other:?}"),
        }
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
}

fn run(w: &World, bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(&w.config).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run certswap")
}

fn result_of(out: &Output) -> String {
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["result"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn state_dir_of_the_release_keeps_working(managed: bool) {
    let w = world(managed);
    restore_fixture(&w, managed);
    let incoming = w.dir.path().join("incoming");
    let v2 = pki::leaf_sha256_file(&incoming.join("v2.pem"));
    let v3 = pki::leaf_sha256_file(&incoming.join("v3.pem"));
    // The release crashed after its reload of v3: its journal is open.
    let journal = w.site_state().join("journal.json");
    assert!(journal.exists(), "the fixture holds an open change");

    // The next install repairs it first (v2 back), then installs v3.
    let (cert, key) = (incoming.join("v3.pem"), incoming.join("v3.key"));
    let out = w.install(&cert, &key, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(result_of(&out), "verified", "{}", text(&out));
    assert!(!journal.exists(), "the change is closed");
    assert_eq!(w.served(), v3);
    assert!(w.pair_matches());

    // The version the release saved before its crashed change (v2 was
    // installed by the release) is what a rollback goes back to.
    let out = w.run(&["rollback", "--site", SITE, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(result_of(&out), "verified", "{}", text(&out));
    assert_eq!(w.served(), v2);
    assert_eq!(pki::leaf_sha256_file(&w.cert), v2);
    assert!(w.pair_matches());
    assert!(w.leftovers().is_empty(), "{:?}", w.leftovers());
}

#[test]
fn an_in_place_state_dir_of_the_release_keeps_working() {
    state_dir_of_the_release_keeps_working(false);
}

#[test]
fn a_managed_state_dir_of_the_release_keeps_working() {
    state_dir_of_the_release_keeps_working(true);
}

/// Write the fixture with the release's binary (`CERTSWAP_OLD_BIN`): v2
/// installed and verified, then v3 killed after the reload.
#[test]
#[ignore = "makes the fixture with the release binary named by CERTSWAP_OLD_BIN"]
fn generate_the_fixture_with_the_release_binary() {
    let bin = PathBuf::from(std::env::var("CERTSWAP_OLD_BIN").expect("CERTSWAP_OLD_BIN"));
    for managed in [false, true] {
        let w = world(managed);
        let v2 = w.renewed();
        let v3 =
            w.ca.leaf(&[SITE, support::world::ALIAS])
                .days(-1, 395)
                .build();
        let (c2, k2) = w.bundle("v2", &v2);
        let (c3, k3) = w.bundle("v3", &v3);
        let install = |c: &Path, k: &Path, env: &[(&str, &str)]| {
            run(
                &w,
                &bin,
                &[
                    "install",
                    "--site",
                    SITE,
                    "--cert",
                    path(c),
                    "--key",
                    path(k),
                ],
                env,
            )
        };
        let out = install(&c2, &k2, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let out = install(&c3, &k3, &[("CERTSWAP_FAILPOINT", "after-reload")]);
        assert_eq!(out.status.code(), None, "{}", text(&out));

        let dst = fixture_dir(managed);
        if dst.exists() {
            std::fs::remove_dir_all(&dst).expect("clear the old fixture");
        }
        let root = w.dir.path();
        let here = root.display().to_string();
        let mut manifest = String::new();
        let mut stack: Vec<PathBuf> = KEPT.iter().map(|p| root.join(p)).collect();
        stack.reverse();
        while let Some(p) = stack.pop() {
            let rel = p.strip_prefix(root).expect("inside the world");
            let meta = std::fs::symlink_metadata(&p).expect("lstat");
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let t = std::fs::read_link(&p).expect("readlink");
                let t = t.display().to_string().replace(&here, ROOT);
                manifest.push_str(&format!("l 777 {} {t}\n", rel.display()));
            } else if meta.is_dir() {
                manifest.push_str(&format!("d {mode:o} {}\n", rel.display()));
                let mut kids: Vec<PathBuf> = std::fs::read_dir(&p)
                    .expect("ls")
                    .map(|e| e.expect("entry").path())
                    .filter(|k| k.file_name().is_some_and(|n| n != "lock"))
                    .collect();
                kids.sort();
                kids.reverse();
                stack.extend(kids);
            } else {
                manifest.push_str(&format!("f {mode:o} {}\n", rel.display()));
                let bytes = std::fs::read(&p).expect("read");
                let bytes = match String::from_utf8(bytes) {
                    Ok(t) => t.replace(&here, ROOT).into_bytes(),
                    Err(e) => e.into_bytes(),
                };
                let out = dst.join("files").join(rel);
                std::fs::create_dir_all(out.parent().expect("a parent")).expect("mkdir");
                std::fs::write(out, bytes).expect("write");
            }
        }
        std::fs::create_dir_all(&dst).expect("mkdir");
        std::fs::write(dst.join("manifest.txt"), manifest).expect("write the manifest");
    }
}
