//! Issue 16, the inbox rows of the threat model (docs/reliability.md, "The
//! inbox"), on a real nginx with a real unprivileged user (uid 65534):
//! only root's files in root's directories are installed; an inbox that is
//! the server's certificate directory is refused before anything moves; a
//! file still being written waits instead of being quarantined; a file name
//! cannot forge a log line; `done/`/`failed/` symlinks are not followed; a
//! zip naming one entry twice is refused; an inbox replaced by `mv` +
//! `mkdir` is watched again; installed keys do not stay in `done/`; and an
//! install the environment broke stays in the inbox to be retried.
//!
//! Where nothing may change, each test checks the bytes of the site's
//! files and the leaf nginx serves.

mod agent_util;
mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_util::{World, text, zip_of};

const SITE: &str = "a.test";
const NOBODY: u32 = 65534;

/// What must not change: the bytes of the site's files and the served leaf.
struct Untouched {
    cert: (PathBuf, Vec<u8>),
    key: (PathBuf, Vec<u8>),
    served: String,
}

impl Untouched {
    fn take(w: &World) -> Untouched {
        let s = w.site(SITE);
        let read = |p: &Path| (p.to_path_buf(), fs::read(p).expect("read target"));
        Untouched {
            cert: read(&s.cert),
            key: read(&s.key),
            served: w.served(SITE),
        }
    }

    fn check(&self, w: &World, log: &str) {
        for (p, bytes) in [&self.cert, &self.key] {
            assert_eq!(
                &fs::read(p).expect("read target"),
                bytes,
                "{p:?} changed\n{log}"
            );
        }
        assert_eq!(
            w.served(SITE),
            self.served,
            "the served leaf changed\n{log}"
        );
    }
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Write `path` as uid/gid 65534 with no groups (a real unprivileged write).
fn write_as_nobody(path: &Path, bytes: &[u8]) {
    let mut child = Command::new("setpriv")
        .args([
            "--reuid",
            &NOBODY.to_string(),
            "--regid",
            &NOBODY.to_string(),
            "--clear-groups",
            "sh",
            "-c",
            "cat > \"$1\"",
            "sh",
        ])
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("setpriv");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("write to setpriv");
    let status = child.wait().expect("wait setpriv");
    assert!(status.success(), "nobody could not write {path:?}");
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A config with the inbox source at `path` instead of the world's inbox.
fn inbox_at(path: &Path) -> String {
    format!(
        "[[source]]\nkind = \"inbox\"\npath = {}\ndebounce = \"200ms\"\n",
        support::toml_path(path)
    )
}

#[test]
fn a_world_writable_inbox_is_skipped_and_what_nobody_wrote_there_is_never_installed() {
    let w = World::nginx(&[SITE], "");
    w.set_extra(&w.inbox_source());
    // nobody must be able to reach the inbox to write into it.
    chmod(w.dir.path(), 0o755);
    fs::create_dir(&w.inbox).expect("mkdir inbox");
    chmod(&w.inbox, 0o777);
    // The site's current certificate is from a private CA: the trust rule
    // does not stop a planted renewal from the same CA.
    let planted = w.renewed(SITE);
    write_as_nobody(
        &w.inbox.join("a.test.pem"),
        planted.fullchain_pem().as_bytes(),
    );
    write_as_nobody(&w.inbox.join("a.test.key"), planted.key_pem.as_bytes());
    let before = Untouched::take(&w);

    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(
        out.status.success(),
        "a skipped source is not a crash:\n{log}"
    );
    before.check(&w, &log);
    assert!(log.contains("is writable by everyone"), "{log}");
    assert!(log.contains("the inbox is skipped"), "{log}");
    // Nothing moved: the files are where nobody put them.
    assert_eq!(w.inbox_files(), vec!["a.test.key", "a.test.pem"], "{log}");
    assert!(w.stamps("done").is_empty() && w.stamps("failed").is_empty());
}

#[test]
fn an_inbox_file_owned_by_another_user_is_left_in_place_and_never_installed() {
    let w = World::nginx(&[SITE], "");
    w.set_extra(&w.inbox_source());
    // A root-owned, private inbox, but a pair moved in from a user's home
    // keeps its owner (`mv ~user/a.test.* inbox/`): that user can still
    // rewrite the inode. And a root-owned key anyone may write.
    let planted = w.renewed(SITE);
    w.drop_file("a.test.pem", planted.fullchain_pem().as_bytes());
    w.drop_file("a.test.key", planted.key_pem.as_bytes());
    std::os::unix::fs::chown(w.inbox.join("a.test.pem"), Some(NOBODY), Some(NOBODY))
        .expect("chown");
    let before = Untouched::take(&w);

    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    before.check(&w, &log);
    assert!(log.contains("owned by uid 65534"), "{log}");
    assert!(log.contains("left where it is"), "{log}");
    assert_eq!(w.inbox_files(), vec!["a.test.key", "a.test.pem"], "{log}");
    assert!(
        w.stamps("failed").is_empty(),
        "another user's file is not moved"
    );

    // Group/world-writable by mode, though root's: the same.
    std::os::unix::fs::chown(w.inbox.join("a.test.pem"), Some(0), Some(0)).expect("chown");
    chmod(&w.inbox.join("a.test.key"), 0o666);
    let out = w.run_once();
    let log = text(&out.stderr);
    before.check(&w, &log);
    assert!(log.contains("is writable by everyone"), "{log}");
    assert_eq!(w.inbox_files(), vec!["a.test.key", "a.test.pem"], "{log}");

    // Fixed by its owner: installed on the next pass.
    chmod(&w.inbox.join("a.test.key"), 0o600);
    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(log.contains("installed and verified"), "{log}");
    assert_eq!(w.served(SITE), planted.sha256);
}

#[test]
fn an_inbox_that_is_or_holds_the_certificate_directory_is_refused_before_anything_moves() {
    let w = World::nginx(&[SITE], "");
    let ssl = w.ssl_dir();
    let link = w.dir.path().join("ssl-link");
    std::os::unix::fs::symlink(&ssl, &link).expect("symlink");
    let before = Untouched::take(&w);
    for (inbox, relation) in [
        (ssl.clone(), "is"),
        (w.dir.path().to_path_buf(), "contains"),
        // The same directory behind a symlink is still the same directory.
        (link.clone(), "is"),
    ] {
        w.set_extra(&inbox_at(&inbox));
        let out = w.run_once();
        let log = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{inbox:?}\n{log}");
        assert!(
            log.contains(&format!("the inbox {} {relation} ", inbox.display())),
            "{log}"
        );
        assert!(
            log.contains("an inbox must be a directory of its own"),
            "{log}"
        );
        assert_eq!(log.trim().lines().count(), 1, "one sentence:\n{log}");
        before.check(&w, &log);
        assert!(!ssl.join("done").exists() && !w.dir.path().join("done").exists());
    }
    // The managed live/ directory of the state dir is refused too.
    w.set_extra(&inbox_at(&w.state.join("live").join("x")));
    let out = w.run_once();
    let log = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(log.contains("is inside"), "{log}");
}

#[test]
fn a_file_stalled_mid_write_waits_and_is_installed_once_whole() {
    let w = World::nginx(&[SITE], "");
    w.set_extra(&w.inbox_source());
    let new = w.renewed(SITE);
    let pem = new.fullchain_pem();
    // A writer that stalls half-way (longer than the debounce: the pass
    // runs after it), writing straight to the final names.
    fs::create_dir(&w.inbox).expect("mkdir inbox");
    let (cert, key) = (w.inbox.join("a.test.pem"), w.inbox.join("a.test.key"));
    fs::write(&cert, &pem.as_bytes()[..pem.len() / 2]).expect("half cert");
    fs::write(&key, new.key_pem.as_bytes()).expect("key");
    let zip = zip_of(&[("b.pem", pem.as_bytes()), ("b.key", new.key_pem.as_bytes())]);
    let zip_path = w.inbox.join("a.test_vendor.zip");
    fs::write(&zip_path, &zip[..zip.len() - 30]).expect("half zip");
    let before = Untouched::take(&w);

    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    before.check(&w, &log);
    assert!(
        w.stamps("failed").is_empty(),
        "half-written is not refused:\n{log}"
    );
    assert!(log.contains("still being written"), "{log}");
    assert_eq!(
        w.inbox_files(),
        vec!["a.test.key", "a.test.pem", "a.test_vendor.zip"]
    );

    // The writers finish: the pair is installed, then the zip's copy of
    // the same certificate is "installed already".
    fs::write(&cert, pem.as_bytes()).expect("whole cert");
    fs::write(&zip_path, &zip).expect("whole zip");
    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(log.contains("installed and verified"), "{log}");
    assert_eq!(w.served(SITE), new.sha256);
    assert!(w.stamps("failed").is_empty(), "{log}");
}

#[test]
fn newlines_in_inbox_file_names_cannot_forge_log_lines() {
    let w = World::nginx(&[SITE], "");
    w.set_extra(&w.inbox_source());
    let stranger = w.ca.leaf(&["stranger.test"]).days(-1, 385).build();
    let forged = "x\nFORGED certswap: installed and verified\n.pem";
    w.drop_file(forged, stranger.fullchain_pem().as_bytes());
    let before = Untouched::take(&w);

    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    before.check(&w, &log);
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED")),
        "a file name started a log line:\n{log}"
    );
    assert!(
        log.contains("x\\nFORGED"),
        "the name is shown escaped:\n{log}"
    );
    let failed = w.stamps("failed");
    assert_eq!(failed.len(), 1, "{log}");
    let reason = fs::read_to_string(failed[0].join("reason.txt")).expect("reason");
    assert_eq!(reason.trim().lines().count(), 1, "{reason:?}");
}

#[test]
fn done_or_failed_as_a_symlink_is_never_followed() {
    let w = World::nginx(&[SITE], "");
    w.set_extra(&w.inbox_source());
    let elsewhere = w.dir.path().join("elsewhere");
    fs::create_dir(&elsewhere).expect("mkdir");
    fs::create_dir(&w.inbox).expect("mkdir inbox");
    for sub in ["failed", "done"] {
        let _ = fs::remove_file(w.inbox.join("failed"));
        let _ = fs::remove_file(w.inbox.join("done"));
        std::os::unix::fs::symlink(&elsewhere, w.inbox.join(sub)).expect("symlink");
        // A bundle that is refused (it names no site) and one that installs.
        let stranger = w.ca.leaf(&["stranger.test"]).days(-1, 385).build();
        w.drop_file("stranger.test.pem", stranger.fullchain_pem().as_bytes());
        let before = Untouched::take(&w);
        let new = w.renewed(SITE);
        w.drop_file("a.test.pem", new.fullchain_pem().as_bytes());
        w.drop_file("a.test.key", new.key_pem.as_bytes());

        let out = w.run_once();
        let log = text(&out.stderr);
        assert!(out.status.success(), "{log}");
        before.check(&w, &log);
        assert!(log.contains(&format!("{sub}/")), "{log}");
        assert!(log.contains("is a symlink"), "{log}");
        assert!(names_in(&elsewhere).is_empty(), "{sub} was followed\n{log}");
        assert_eq!(
            w.inbox_files(),
            vec!["a.test.key", "a.test.pem", "stranger.test.pem"],
            "{log}"
        );
        for f in w.inbox_files() {
            fs::remove_file(w.inbox.join(f)).expect("clear");
        }
    }
}

/// `zip` with every occurrence of the entry name `from` renamed to `to`
/// (same length) in its local and central headers.
fn rename_entry(mut zip: Vec<u8>, from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let (from, to) = (from.as_bytes(), to.as_bytes());
    let mut i = 0;
    let mut n = 0;
    while i + from.len() <= zip.len() {
        if &zip[i..i + from.len()] == from {
            zip[i..i + from.len()].copy_from_slice(to);
            n += 1;
        }
        i += 1;
    }
    assert_eq!(n, 2, "local and central header");
    zip
}

#[test]
fn a_zip_naming_one_entry_twice_is_refused_naming_it() {
    let w = World::nginx(&[SITE], "");
    w.set_extra(&w.inbox_source());
    let new = w.renewed(SITE);
    let other = w.renewed(SITE);
    // Which `a.test.pem` would be installed? Neither.
    let zip = zip_of(&[
        ("a.test.pem", new.fullchain_pem().as_bytes()),
        ("a.test.key", new.key_pem.as_bytes()),
        ("a.test.peX", other.fullchain_pem().as_bytes()),
    ]);
    w.drop_file("a.test.zip", &rename_entry(zip, "a.test.peX", "a.test.pem"));
    let before = Untouched::take(&w);

    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    before.check(&w, &log);
    let failed = w.stamps("failed");
    assert_eq!(failed.len(), 1, "{log}");
    let reason = fs::read_to_string(failed[0].join("reason.txt")).expect("reason");
    assert!(
        reason.contains("the zip entry \"a.test.pem\" appears twice"),
        "{reason}"
    );
}

#[test]
fn an_inbox_replaced_by_mv_and_mkdir_is_watched_again() {
    let w = World::nginx(&[SITE], "");
    w.set_extra(&format!(
        "[agent]\ninterval = \"1h\"\n\n{}",
        w.inbox_source()
    ));
    fs::create_dir(&w.inbox).expect("mkdir inbox");
    let d = w.spawn();
    assert!(
        d.wait_log("watching", Duration::from_secs(30)),
        "{}",
        d.log()
    );
    // The first full pass is over once expiry has been looked at.
    assert!(
        d.wait_log("expires soon", Duration::from_secs(30)),
        "{}",
        d.log()
    );
    fs::rename(&w.inbox, w.dir.path().join("inbox.old")).expect("mv inbox");
    fs::create_dir_all(&w.inbox).expect("mkdir inbox");
    assert!(
        d.wait_log("was replaced", Duration::from_secs(30)),
        "no warning:\n{}",
        d.log()
    );
    let new = w.renewed(SITE);
    w.drop_file("a.test.key", new.key_pem.as_bytes());
    w.drop_file("a.test.pem", new.fullchain_pem().as_bytes());
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.stamps("done").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(w.stamps("done").len(), 1, "{}", d.log());
    assert_eq!(w.served(SITE), new.sha256);
}

#[test]
fn installed_private_keys_do_not_stay_in_done_and_done_is_bounded() {
    let w = World::nginx(&[SITE, "b.test"], "");
    w.set_extra(&w.inbox_source());
    fs::create_dir_all(w.inbox.join("done")).expect("mkdir done");
    chmod(&w.inbox.join("done"), 0o700);
    // Receipts of 30 earlier installs.
    for i in 0..30 {
        let d = w.inbox.join("done").join(format!("20200101T0000{i:02}Z"));
        fs::create_dir(&d).expect("old stamp");
        fs::write(d.join("x.pem"), "old").expect("old file");
    }
    let a = w.renewed(SITE);
    w.drop_file("a.test.pem", a.fullchain_pem().as_bytes());
    w.drop_file("a.test.key", a.key_pem.as_bytes());
    let b = w.renewed("b.test");
    w.drop_file(
        "b.test_nginx.zip",
        &zip_of(&[
            ("b.test.pem", b.fullchain_pem().as_bytes()),
            ("b.test.key", b.key_pem.as_bytes()),
        ]),
    );

    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(w.served(SITE), a.sha256);
    assert_eq!(w.served("b.test"), b.sha256);
    let done = w.stamps("done");
    assert_eq!(done.len(), 20, "done/ keeps the newest 20:\n{log}");
    let mut new_entries: Vec<Vec<String>> = done
        .iter()
        .filter(|d| !d.file_name().unwrap().to_string_lossy().starts_with("2020"))
        .map(|d| names_in(d))
        .collect();
    new_entries.sort();
    assert_eq!(
        new_entries,
        vec![
            vec!["a.test.pem".to_string(), "removed.txt".to_string()],
            vec!["removed.txt".to_string()],
        ],
        "{log}"
    );
    // No private key anywhere under done/.
    for d in &done {
        for n in names_in(d) {
            let bytes = fs::read(d.join(&n)).expect("read");
            assert!(
                !String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"),
                "{d:?}/{n} holds a key"
            );
        }
    }
    assert!(w.inbox_files().is_empty());
}

#[test]
fn an_install_the_environment_broke_stays_in_the_inbox_and_is_retried() {
    let w = World::nginx(&[SITE], "");
    w.set_extra(&w.inbox_source());
    // Someone's typo elsewhere in the server's config: the config test
    // fails for a reason that has nothing to do with the bundle.
    let conf = w.nginx.conf_path();
    let good = fs::read_to_string(&conf).expect("nginx.conf");
    fs::write(&conf, format!("{good}\nthis_is_a_typo;\n")).expect("break nginx.conf");
    let new = w.renewed(SITE);
    w.drop_file("a.test.pem", new.fullchain_pem().as_bytes());
    w.drop_file("a.test.key", new.key_pem.as_bytes());
    let before = Untouched::take(&w);

    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    before.check(&w, &log);
    assert!(log.contains("it stays in the inbox, trying again"), "{log}");
    assert!(w.stamps("failed").is_empty(), "{log}");
    assert_eq!(w.inbox_files(), vec!["a.test.key", "a.test.pem"]);

    // Fixed a minute later: the next pass installs the same files.
    fs::write(&conf, &good).expect("fix nginx.conf");
    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(log.contains("installed and verified"), "{log}");
    assert_eq!(w.served(SITE), new.sha256);
}

#[test]
fn a_certificate_not_valid_yet_stays_in_the_inbox() {
    let w = World::nginx(&[SITE], "");
    w.set_extra(&w.inbox_source());
    let early = w.ca.leaf(&[SITE]).days(1, 385).build();
    w.drop_file("a.test.pem", early.fullchain_pem().as_bytes());
    w.drop_file("a.test.key", early.key_pem.as_bytes());
    let before = Untouched::take(&w);

    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    before.check(&w, &log);
    assert!(log.contains("is not valid yet"), "{log}");
    assert!(log.contains("it stays in the inbox, trying again"), "{log}");
    assert!(w.stamps("failed").is_empty(), "{log}");
    assert_eq!(w.inbox_files(), vec!["a.test.key", "a.test.pem"]);
}
