//! Faults of the host around an install, on a real nginx: each ends with
//! the old certificate served, one clear sentence, the exit code of
//! DESIGN.md and nothing lost (the old files byte for byte; the next
//! command repairs whatever was left half done). Plus random `kill -9`
//! during installs, and what the kernel sees certswap do (strace): every
//! rename fsynced before and after, the staged key created exclusive,
//! without following links, 0600 from the first byte.
//!
//! Faults that need root powers (mounting a tmpfs, `chattr +i`) and the
//! strace checks are skipped with a printed reason where the host does not
//! allow them. The crash matrix (every failpoint × server × mode) lives in
//! `tests/pipeline.rs`.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::pki;
use support::world::{SITE, Server, World, path, text};

// --- helpers -------------------------------------------------------------

/// Rewrite the world's certswap config.
fn edit_config(w: &World, f: impl FnOnce(String) -> String) {
    let conf = fs::read_to_string(&w.config).expect("read config");
    fs::write(&w.config, f(conf)).expect("write config");
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit `code`, `reason` in stderr as its only line, no panic.
fn assert_one_sentence(out: &Output, code: i32, reason: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
    assert!(!err.contains("panicked"), "{}", text(out));
    assert!(err.contains(reason), "expected {reason:?}: {}", text(out));
    assert_eq!(err.trim().lines().count(), 1, "one line: {}", text(out));
}

/// The site's files are the world's original pair, and it is served.
fn assert_old_intact(w: &World, files: &BTreeMap<PathBuf, String>) {
    for (p, h) in files {
        assert_eq!(&pki::sha256_file(p), h, "{} changed", p.display());
    }
    assert!(w.pair_matches(), "cert and key on disk belong together");
    assert_eq!(w.served(), w.old.sha256, "the old certificate is served");
}

/// Hash of the site's cert and key files.
fn site_files(w: &World) -> BTreeMap<PathBuf, String> {
    [&w.cert, &w.key]
        .into_iter()
        .map(|p| (p.clone(), pki::sha256_file(p)))
        .collect()
}

/// No journal, undo copy or staged copy of one is left in the state dir.
fn assert_no_open_change(w: &World) {
    let site_state = w.site_state();
    for name in ["journal.json", "undo", "undo.tmp"] {
        assert!(
            !site_state.join(name).exists(),
            "{name} left in the state dir"
        );
    }
}

/// After a fault is gone, the next install repairs what was left and is
/// verified: nothing was lost on the way.
fn assert_next_install_verified(w: &World, name: &str) {
    let new = w.renewed();
    let (cert, key) = w.bundle(name, &new);
    let out = w.install(&cert, &key, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(w.served(), new.sha256);
    assert!(w.pair_matches());
    assert!(w.leftovers().is_empty(), "{:?}", w.leftovers());
    assert_no_open_change(w);
}

fn run_quiet(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A tmpfs mounted over a directory for the life of the guard (its files
/// copied in first, so the server's paths keep their bytes).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` over `dir`, keeping `dir`'s files. Err when
    /// this host does not let the test mount (not root, no CAP_SYS_ADMIN).
    fn over(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        let saved: Vec<(PathBuf, Vec<u8>, u32)> = fs::read_dir(dir)
            .map_err(|e| e.to_string())?
            .map(|e| e.expect("entry").path())
            .filter(|p| p.is_file())
            .map(|p| {
                let mode = fs::metadata(&p).expect("stat").permissions().mode();
                let bytes = fs::read(&p).expect("read");
                (p, bytes, mode)
            })
            .collect();
        run_quiet(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "certswap-test",
                path(dir),
            ],
        )?;
        let guard = Tmpfs {
            dir: dir.to_path_buf(),
        };
        for (p, bytes, mode) in saved {
            fs::write(&p, bytes).expect("copy into the tmpfs");
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
        }
        Ok(guard)
    }

    /// Fill the filesystem, then free `pages` 4 KiB pages again.
    fn fill_leaving(&self, pages: u64) -> PathBuf {
        let filler = self.dir.join("zz-filler");
        let mut f = fs::File::create(&filler).expect("filler");
        let chunk = [0xa5u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let len = f.metadata().expect("stat").len() / 4096 * 4096;
        f.set_len(len.saturating_sub(pages * 4096))
            .expect("free pages");
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if run_quiet("umount", &[path(&self.dir)]).is_err() {
            let _ = run_quiet("umount", &["-l", path(&self.dir)]);
        }
    }
}

/// A directory made unwritable for root too: `chattr +i`, or where the
/// filesystem has no such flag, a read-only bind mount of itself.
enum ReadOnly {
    Immutable(PathBuf),
    BindMount(PathBuf),
}

impl ReadOnly {
    fn make(dir: &Path) -> Result<ReadOnly, String> {
        let p = path(dir);
        match run_quiet("chattr", &["+i", p]) {
            Ok(()) => Ok(ReadOnly::Immutable(dir.to_path_buf())),
            Err(chattr) => {
                run_quiet("mount", &["--bind", p, p])
                    .map_err(|m| format!("chattr: {chattr}; mount: {m}"))?;
                let guard = ReadOnly::BindMount(dir.to_path_buf());
                run_quiet("mount", &["-o", "remount,ro,bind", p])?;
                Ok(guard)
            }
        }
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        match self {
            ReadOnly::Immutable(d) => {
                let _ = run_quiet("chattr", &["-i", path(d)]);
            }
            ReadOnly::BindMount(d) => {
                let _ = run_quiet("umount", &[path(d)]);
            }
        }
    }
}

fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
}

// --- the server and the probe --------------------------------------------

#[test]
fn a_failing_reload_command_rolls_back_to_the_old_cert() {
    let w = World::nginx();
    edit_config(&w, |c| {
        c.replacen(
            "[server]\n",
            "[server]\nreload_command = [\"/bin/false\"]\n",
            1,
        )
    });
    let before = w.snapshot();
    let workers = w.server.worker_pids();

    let (cert, key) = w.bundle("new", &w.renewed());
    let out = w.install(&cert, &key, &["--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["result"], "rolled_back", "{v}");
    let err = v["error"].as_str().expect("error");
    // The reason first; then that the reload with the old files (the same
    // failing command) failed too — but the old leaf is proven served.
    assert!(
        err.starts_with("reload command `/bin/false` failed"),
        "{err}"
    );
    assert!(err.contains("reloading with the old files failed"), "{err}");
    assert!(!err.contains("NOT served again"), "{err}");
    assert_eq!(v["served"][0]["sha256"], w.old.sha256.as_str(), "{v}");

    assert_eq!(
        w.snapshot(),
        before,
        "every byte is back, nothing left over"
    );
    assert_eq!(w.server.worker_pids(), workers, "nothing reloaded nginx");
    assert_eq!(w.served(), w.old.sha256);
    assert!(w.leftovers().is_empty(), "{:?}", w.leftovers());

    // In text mode the same story is one line on stderr.
    let out = w.install(&cert, &key, &[]);
    assert_one_sentence(&out, 3, "reload command `/bin/false` failed");
}

#[test]
fn a_server_that_is_not_running_is_refused_before_any_change() {
    let mut w = World::nginx();
    let before = w.snapshot();
    match &mut w.server {
        Server::Nginx(n) => n.stop(),
        Server::Apache(_) => unreachable!("an nginx world"),
    }
    let (cert, key) = w.bundle("new", &w.renewed());
    let out = w.install(&cert, &key, &[]);
    assert_one_sentence(&out, 2, "does not answer");
    assert!(
        stderr(&out).contains("nothing was changed"),
        "{}",
        text(&out)
    );
    assert_eq!(w.snapshot(), before);
    assert!(w.leftovers().is_empty());
}

/// A TCP listener that accepts connections and never says a word.
struct Silent {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Silent {
    fn start() -> Silent {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let port = l.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Silent {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_probe_timeout_before_the_change_refuses_it() {
    let w = World::nginx();
    let silent = Silent::start();
    let real = format!("127.0.0.1:{}", w.server.port());
    edit_config(&w, |c| {
        c.replace(&real, &format!("127.0.0.1:{}", silent.port))
    });
    let before = w.snapshot();
    let workers = w.server.worker_pids();

    let (cert, key) = w.bundle("new", &w.renewed());
    let started = Instant::now();
    let out = w.install(&cert, &key, &[]);
    assert_one_sentence(&out, 2, "does not answer");
    assert!(
        stderr(&out).contains("no answer within 2s"),
        "{}",
        text(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "bounded by the probe timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(w.snapshot(), before);
    assert_eq!(w.server.worker_pids(), workers);
    assert_eq!(w.served(), w.old.sha256);
}

// --- the filesystem ------------------------------------------------------

/// The cert dir on a full tmpfs: staging the first file (cert) fails, or
/// with one page left the second (key). Either way the targets keep their
/// bytes, the server is not touched, and once there is room the next
/// install repairs and succeeds.
#[test]
fn disk_full_while_staging_loses_nothing() {
    for free_pages in [0, 1] {
        let w = World::nginx();
        let ssl = w.cert.parent().expect("ssl").to_path_buf();
        let tmpfs = match Tmpfs::over(&ssl, "64k") {
            Ok(t) => t,
            Err(why) => {
                return skip(
                    "disk_full_while_staging_loses_nothing",
                    &format!("cannot mount a tmpfs here: {why}"),
                );
            }
        };
        let files = site_files(&w);
        let workers = w.server.worker_pids();
        let filler = tmpfs.fill_leaving(free_pages);

        let (cert, key) = w.bundle("new", &w.renewed());
        let out = w.install(&cert, &key, &[]);
        assert_one_sentence(&out, 2, "No space left on device");
        assert_old_intact(&w, &files);
        assert_eq!(w.server.worker_pids(), workers, "{free_pages}: no reload");
        // Nothing half-written, nothing left: the failed stage takes back
        // what it wrote, beside the targets and in the state dir.
        assert!(
            w.leftovers().is_empty(),
            "{free_pages} free pages: {:?}",
            w.leftovers()
        );
        assert_no_open_change(&w);
        fs::remove_file(&filler).expect("make room");
        assert_next_install_verified(&w, "after-room");
        drop(tmpfs);
    }
}

/// The state dir on a full tmpfs: the undo copy cannot be written, so
/// nothing beside the targets is even staged.
#[test]
fn disk_full_in_the_state_dir_loses_nothing() {
    let w = World::nginx();
    let state = w.dir.path().join("state");
    fs::create_dir_all(&state).expect("mkdir state");
    let tmpfs = match Tmpfs::over(&state, "64k") {
        Ok(t) => t,
        Err(why) => {
            return skip(
                "disk_full_in_the_state_dir_loses_nothing",
                &format!("cannot mount a tmpfs here: {why}"),
            );
        }
    };
    let files = site_files(&w);
    let filler = tmpfs.fill_leaving(0);
    let (cert, key) = w.bundle("new", &w.renewed());
    let out = w.install(&cert, &key, &[]);
    assert_one_sentence(&out, 2, "No space left on device");
    assert_old_intact(&w, &files);
    assert!(w.leftovers().is_empty(), "{:?}", w.leftovers());
    assert_no_open_change(&w);
    fs::remove_file(&filler).expect("make room");
    assert_next_install_verified(&w, "after-room");
    drop(tmpfs);
}

#[test]
fn a_read_only_target_dir_loses_nothing() {
    let w = World::nginx();
    let ssl = w.cert.parent().expect("ssl").to_path_buf();
    let files = site_files(&w);
    let workers = w.server.worker_pids();
    let before = w.snapshot();
    let ro = match ReadOnly::make(&ssl) {
        Ok(g) => g,
        Err(why) => {
            return skip(
                "a_read_only_target_dir_loses_nothing",
                &format!("cannot make a directory read-only for root here: {why}"),
            );
        }
    };
    let (cert, key) = w.bundle("new", &w.renewed());
    let out = w.install(&cert, &key, &[]);
    let err = stderr(&out);
    assert_one_sentence(&out, 2, "cannot stage the new file");
    assert!(
        err.contains("Operation not permitted") || err.contains("Read-only file system"),
        "{}",
        text(&out)
    );
    assert_old_intact(&w, &files);
    assert_eq!(w.server.worker_pids(), workers);
    let ssl_only = |m: BTreeMap<PathBuf, String>| -> BTreeMap<PathBuf, String> {
        m.into_iter().filter(|(p, _)| p.starts_with(&ssl)).collect()
    };
    assert_eq!(ssl_only(w.snapshot()), ssl_only(before));
    assert_no_open_change(&w);
    drop(ro);
    assert_next_install_verified(&w, "writable-again");
}

#[test]
fn a_missing_state_dir_is_created_private() {
    let w = World::nginx();
    let state = w.dir.path().join("not/yet/state");
    let old_state = w.dir.path().join("state");
    edit_config(&w, |c| c.replace(path(&old_state), path(&state)));
    assert!(!state.exists());
    let new = w.renewed();
    let (cert, key) = w.bundle("new", &new);
    let out = w.install(&cert, &key, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(w.served(), new.sha256);
    let mode = fs::metadata(&state).expect("created").permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the state dir is private");
}

#[test]
fn an_unusable_state_dir_is_refused_before_any_change() {
    let w = World::nginx();
    let a_file = w.dir.path().join("a-file");
    fs::write(&a_file, "not a directory\n").expect("write");
    let state = a_file.join("state");
    edit_config(&w, |c| {
        c.replace(path(&w.dir.path().join("state")), path(&state))
    });
    let before = w.snapshot();
    let workers = w.server.worker_pids();
    let (cert, key) = w.bundle("new", &w.renewed());
    let out = w.install(&cert, &key, &[]);
    assert_one_sentence(&out, 2, "cannot create the directory: Not a directory");
    assert!(stderr(&out).contains(path(&state)), "names the path");
    assert_eq!(w.snapshot(), before);
    assert_eq!(w.server.worker_pids(), workers);
    assert_eq!(w.served(), w.old.sha256);
}

#[test]
fn a_second_certswap_is_refused_while_the_lock_is_held() {
    use nix::fcntl::{Flock, FlockArg};
    let w = World::nginx();
    let state = w.dir.path().join("state");
    fs::create_dir_all(&state).expect("mkdir state");
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(state.join("lock"))
        .expect("open the lock file");
    let held = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .expect("take the lock");
    let before = w.snapshot();
    let workers = w.server.worker_pids();

    let (cert, key) = w.bundle("new", &w.renewed());
    let out = w.install(&cert, &key, &[]);
    assert_one_sentence(&out, 2, "another certswap is changing certificates");
    assert_eq!(w.snapshot(), before);
    assert_eq!(w.server.worker_pids(), workers);
    assert_eq!(w.served(), w.old.sha256);

    drop(held);
    let out = w.install(&cert, &key, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

// --- crashes -------------------------------------------------------------

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("random");
    u32::from_be_bytes(b)
}

/// `kill -9` at a random moment 0–400 ms into an install (fresh world each
/// time), then the next command (`rollback`) repairs first: the pair on
/// disk matches, the config test passes, no staged file is left, and the
/// server serves one whole leaf — before the repair the old or the new one,
/// after it the old one (rollback goes back past a committed install).
#[test]
fn random_kill_9_is_repaired_by_the_next_command() {
    const ROUNDS: usize = 15;
    let mut seen = Vec::new();
    for round in 0..ROUNDS {
        let w = World::nginx();
        let new = w.renewed();
        let (cert, key) = w.bundle("new", &new);
        // Every other round in the first 120 ms (start, validation,
        // staging, swap), the others anywhere in 0–400 ms.
        let span = if round % 2 == 0 { 121 } else { 401 };
        let delay = Duration::from_millis(u64::from(random_u32() % span));
        let mut child = support::certswap()
            .arg("--config")
            .arg(&w.config)
            .args(["install", "--site", SITE, "--cert", path(&cert)])
            .args(["--key", path(&key)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn certswap");
        std::thread::sleep(delay);
        let finished = child.try_wait().expect("try_wait").is_some();
        let _ = child.kill();
        let status = child.wait().expect("reap");
        let journal = w.site_state().join("journal.json");
        let phase = match fs::read_to_string(&journal) {
            Ok(j) => serde_json::from_str::<serde_json::Value>(&j)
                .map(|v| v["phase"].as_str().unwrap_or("?").to_string())
                .unwrap_or_else(|_| "unreadable".into()),
            Err(_) if finished => format!("done ({status})"),
            Err(_) => "no journal".into(),
        };
        let ctx = format!("round {round}, killed after {delay:?} (journal: {phase})");

        // Before any repair the server serves one whole leaf.
        let served = w.served();
        assert!(
            served == w.old.sha256 || served == new.sha256,
            "{ctx}: serves neither the old nor the new leaf"
        );

        let next = w.run(&["rollback", "--site", SITE]);
        match next.status.code() {
            Some(0) => {}
            Some(2) => assert!(
                stderr(&next).contains("no earlier version"),
                "{ctx}: {}",
                text(&next)
            ),
            _ => panic!("{ctx}: {}", text(&next)),
        }
        assert!(!stderr(&next).contains("panicked"), "{ctx}");
        assert!(w.leftovers().is_empty(), "{ctx}: {:?}", w.leftovers());
        assert!(w.pair_matches(), "{ctx}: cert and key on disk differ");
        w.server
            .configtest()
            .unwrap_or_else(|e| panic!("{ctx}: config test fails: {e}"));
        assert_eq!(pki::leaf_sha256_file(&w.cert), w.old.sha256, "{ctx}");
        assert_eq!(w.served(), w.old.sha256, "{ctx}: the old leaf is served");
        assert!(!journal.exists(), "{ctx}: the journal is closed");
        seen.push(phase);
    }
    eprintln!("kill -9 rounds, by what the journal said: {seen:?}");
}

/// Retrying the install a crash interrupted must repair first and then
/// install, not compare the bundle with the half-done change's files.
#[test]
fn retrying_the_same_install_after_a_crash_repairs_first() {
    for point in ["after-rename-cert", "after-swap", "after-reload"] {
        let w = World::nginx();
        let new = w.renewed();
        let (cert, key) = w.bundle("new", &new);
        let crashed = w.install_env(&cert, &key, &[], &[(certswap::failpoint::ENV, point)]);
        assert_eq!(crashed.status.code(), None, "{point}: {}", text(&crashed));
        let retry = w.install(&cert, &key, &[]);
        assert_eq!(retry.status.code(), Some(0), "{point}: {}", text(&retry));
        assert_eq!(w.served(), new.sha256, "{point}");
        assert!(w.pair_matches(), "{point}");
    }
}

// --- what the kernel sees (strace) -----------------------------------------

/// One syscall line of `strace -f -y`: name, the quoted paths and
/// `<path>`-decoded fds of its arguments, flags text, and return value.
#[derive(Debug, Clone)]
struct Call {
    name: String,
    args: String,
    ret: String,
}

impl Call {
    /// The string arguments ("...") in order.
    fn strings(&self) -> Vec<String> {
        self.args
            .split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    /// The path of the first fd argument (`3</path>`).
    fn fd_path(&self) -> Option<String> {
        let start = self.args.find('<')?;
        let end = self.args[start..].find('>')?;
        Some(self.args[start + 1..start + end].to_string())
    }

    /// The call succeeded (a number, not -1 ERRNO).
    fn ok(&self) -> bool {
        self.ret.chars().next().is_some_and(|c| c.is_ascii_digit())
    }
}

/// Parse an strace -f output file, joining `<unfinished ...>` halves.
fn parse_strace(text: &str) -> Vec<Call> {
    let mut pending: BTreeMap<String, String> = BTreeMap::new();
    let mut calls = Vec::new();
    for line in text.lines() {
        let Some((pid, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let rest = rest.trim_start();
        let full = if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            pending.insert(pid.to_string(), head.to_string());
            continue;
        } else if rest.starts_with("<... ") {
            let Some(i) = rest.find("resumed>") else {
                continue;
            };
            let head = pending.remove(pid).unwrap_or_default();
            format!("{head}{}", &rest[i + "resumed>".len()..])
        } else {
            rest.to_string()
        };
        // `name(args) = ret`, with the ` = ` padded to a column.
        let Some(open) = full.find('(') else { continue };
        let Some(eq) = full.rfind(" = ") else {
            continue;
        };
        let Some(close) = full[..eq].rfind(')') else {
            continue;
        };
        calls.push(Call {
            name: full[..open].to_string(),
            args: full[open + 1..close].to_string(),
            ret: full[eq + 3..].trim().to_string(),
        });
    }
    calls
}

/// Install a renewal under `strace -f -y`, tracing `syscalls`. None (after
/// printing why) where strace is missing or not allowed.
fn traced_install(w: &World, syscalls: &str, test: &str) -> Option<Vec<Call>> {
    traced(w, syscalls, test, false)
}

/// [`traced_install`] with `batch`: the same renewal through
/// `install --batch DIR` (a one-site batch: the batch's own swap and
/// directory fsyncs).
fn traced(w: &World, syscalls: &str, test: &str, batch: bool) -> Option<Vec<Call>> {
    if Command::new("strace").arg("-V").output().is_err() {
        skip(
            test,
            "strace is not installed (scripts/test should install it)",
        );
        return None;
    }
    let trace = w.dir.path().join("strace.txt");
    let (cert, key) = w.bundle(SITE, &w.renewed());
    let bin = env!("CARGO_BIN_EXE_certswap");
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-y", "-qq", "-e"])
        .arg(format!("trace={syscalls}"))
        .arg("-o")
        .arg(&trace)
        .arg(bin)
        .arg("--config")
        .arg(&w.config)
        .env_remove("CERTSWAP_CONFIG");
    if batch {
        cmd.args(["install", "--batch"])
            .arg(cert.parent().expect("incoming dir"));
    } else {
        cmd.args(["install", "--site", SITE, "--cert", path(&cert)])
            .args(["--key", path(&key)]);
    }
    let out = cmd.output().expect("run strace");
    let err = stderr(&out);
    if err.contains("PTRACE_TRACEME") || err.contains("Operation not permitted") {
        skip(test, &format!("strace cannot trace here: {}", err.trim()));
        return None;
    }
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    if std::env::var_os("CERTSWAP_KEEP_STRACE").is_some() {
        let _ = fs::copy(&trace, "/tmp/certswap-strace.txt");
    }
    Some(parse_strace(
        &fs::read_to_string(&trace).expect("strace output"),
    ))
}

fn parent(p: &str) -> String {
    Path::new(p)
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default()
}

#[test]
fn every_rename_is_fsynced_before_and_after() {
    renames_are_fsynced(false, "every_rename_is_fsynced_before_and_after");
}

#[test]
fn every_rename_of_a_batch_is_fsynced_before_and_after() {
    renames_are_fsynced(true, "every_rename_of_a_batch_is_fsynced_before_and_after");
}

fn renames_are_fsynced(batch: bool, test: &str) {
    let w = World::nginx();
    let Some(calls) = traced(
        &w,
        "fsync,fdatasync,syncfs,rename,renameat,renameat2,openat,write,link,linkat",
        test,
        batch,
    ) else {
        return;
    };
    let is_rename = |c: &Call| c.name.starts_with("rename") && c.ok();
    // A batch syncs with syncfs(2): it makes everything written before it
    // on that filesystem durable (here one filesystem: the temp dir).
    let is_sync_of = |c: &Call, p: &str| {
        c.ok()
            && ((c.name == "fsync" || c.name == "fdatasync") && c.fd_path().as_deref() == Some(p)
                || c.name == "syncfs")
    };
    // Per path: the index of its last change (created, written, linked,
    // renamed to, or a name created or renamed in it, for a directory) and
    // of its last sync (fsync of it, or any syncfs). A file (or
    // directory) keeps both when renamed: `undo.tmp` synced is `undo`
    // synced.
    let mut changed: BTreeMap<String, usize> = BTreeMap::new();
    let mut synced: BTreeMap<String, usize> = BTreeMap::new();
    let mut last_syncfs: Option<usize> = None;
    let mut renamed_targets = Vec::new();
    let mut renames = 0;
    let mut syncfs_calls = 0;
    let mut problems = Vec::new();
    for (i, c) in calls.iter().enumerate() {
        match c.name.as_str() {
            "fsync" | "fdatasync" => {
                if let (true, Some(p)) = (c.ok(), c.fd_path()) {
                    synced.insert(p, i);
                }
                continue;
            }
            "syncfs" if c.ok() => {
                syncfs_calls += 1;
                last_syncfs = Some(i);
                continue;
            }
            "openat" if c.ok() && c.args.contains("O_CREAT") => {
                if let Some(p) = c.strings().into_iter().next() {
                    changed.insert(parent(&p), i);
                    changed.insert(p, i);
                }
                continue;
            }
            "write" if c.ok() => {
                if let Some(p) = c.fd_path() {
                    changed.insert(p, i);
                }
                continue;
            }
            "link" | "linkat" if c.ok() => {
                if let Some(p) = c.strings().into_iter().nth(1) {
                    changed.insert(parent(&p), i);
                    changed.insert(p, i);
                }
                continue;
            }
            _ => {}
        }
        if !is_rename(c) {
            continue;
        }
        renames += 1;
        let s = c.strings();
        let [from, to] = [&s[0], &s[1]];
        let last_sync = synced.get(from.as_str()).copied().max(last_syncfs);
        let last_change = changed.get(from.as_str()).copied();
        if last_sync.is_none() || last_sync < last_change {
            problems.push(format!(
                "{from} renamed to {to} without an fsync of it (or a syncfs) after its last write"
            ));
        }
        if let Some(t) = last_sync {
            synced.insert(to.clone(), t);
        }
        if let Some(t) = last_change {
            changed.insert(to.clone(), t);
        }
        changed.insert(parent(to), i);
        changed.insert(parent(from), i);
        let dir = parent(to);
        if !calls[i + 1..].iter().any(|e| is_sync_of(e, &dir)) {
            problems.push(format!("rename to {to} not followed by an fsync of {dir}"));
        }
        if Path::new(to) == w.cert || Path::new(to) == w.key {
            renamed_targets.push(to.clone());
        }
    }
    eprintln!("{renames} renames checked, each fsynced before and after");
    assert!(problems.is_empty(), "{problems:#?}");
    if batch {
        // The batch groups its syncs (src/store/bulk.rs): two before the
        // swap, one at the commit.
        assert!(
            syncfs_calls >= 3,
            "a batch syncs with syncfs: {syncfs_calls}"
        );
    }
    assert_eq!(
        renamed_targets,
        [path(&w.cert), path(&w.key)],
        "both targets are replaced by a rename"
    );
}

#[test]
fn the_staged_key_is_exclusive_nofollow_and_0600_from_the_first_byte() {
    let w = World::nginx();
    let ssl = w.cert.parent().expect("ssl").to_path_buf();
    let state = w.dir.path().join("state");
    let Some(calls) = traced_install(
        &w,
        "openat,open,creat,fchmod,fchmodat,chmod,fchown,fchownat,chown,write",
        "the_staged_key_is_exclusive_nofollow_and_0600_from_the_first_byte",
    ) else {
        return;
    };
    let staged_key = format!(
        "{}/.{}.certswap-new",
        ssl.display(),
        w.key.file_name().expect("name").to_string_lossy()
    );
    let created: Vec<&Call> = calls
        .iter()
        .filter(|c| (c.name == "openat" || c.name == "open") && c.args.contains("O_CREAT"))
        .collect();

    // The staged key: one exclusive, no-follow create with mode 0600, and
    // no chmod or write on it that could widen it or precede that.
    let opens: Vec<&&Call> = created
        .iter()
        .filter(|c| c.strings().first() == Some(&staged_key))
        .collect();
    assert_eq!(opens.len(), 1, "one create of {staged_key}: {created:#?}");
    let flags = &opens[0].args;
    for f in ["O_EXCL", "O_NOFOLLOW"] {
        assert!(flags.contains(f), "{f} missing: {flags}");
    }
    assert!(flags.trim_end().ends_with(", 0600"), "mode: {flags}");
    // Owner and mode are set before the first byte is written.
    let on_key: Vec<&Call> = calls
        .iter()
        .filter(|c| c.fd_path().as_deref() == Some(staged_key.as_str()))
        .collect();
    let first_write = on_key.iter().position(|c| c.name == "write");
    assert!(
        first_write.is_some(),
        "the key's bytes are written: {on_key:#?}"
    );
    for (i, c) in on_key.iter().enumerate() {
        if c.name.contains("chmod") {
            assert!(c.args.trim_end().ends_with(", 0600"), "widened: {c:?}");
        }
        if c.name.contains("chmod") || c.name.contains("chown") {
            assert!(Some(i) < first_write, "{} after the first write", c.name);
        }
    }

    // Every file certswap creates beside the targets or in its state dir
    // (the lock file aside) is created the same exclusive, no-follow way,
    // and the saved copy of the key is 0600 too.
    for c in &created {
        let Some(p) = c.strings().into_iter().next() else {
            continue;
        };
        let ours = Path::new(&p).starts_with(&ssl) || Path::new(&p).starts_with(&state);
        if !ours || p.ends_with("/lock") {
            continue;
        }
        assert!(
            c.args.contains("O_EXCL") && c.args.contains("O_NOFOLLOW"),
            "{p} created without O_EXCL|O_NOFOLLOW: {}",
            c.args
        );
        if p.ends_with("/key") {
            assert!(c.args.trim_end().ends_with(", 0600"), "{p}: {}", c.args);
        }
    }
}
