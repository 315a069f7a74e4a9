//! The agent's watch duties and manners on a real nginx: drift between
//! disk and what is served (reported; fixed with `fix_drift = true`), the
//! host lock held by another certswap (the pass is skipped, nothing moves),
//! and a pair written slowly into the inbox (picked up only when complete).

mod agent_util;
mod support;

use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use agent_util::{World, text};
use support::pki;

const SITE: &str = "a.test";

#[test]
fn drift_is_reported_and_fixed_only_with_fix_drift() {
    let w = World::nginx(&[SITE], "[agent]\ninterval = \"1h\"\n");
    // A renewal copied onto the disk by hand, without a reload.
    let new = w.renewed(SITE);
    pki::write(&w.ssl_dir(), SITE, &new);
    assert_eq!(w.served(SITE), w.site(SITE).old.sha256);

    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("drift: the endpoint serves"), "{log}");
    assert!(!log.contains("drift fixed"), "{log}");
    assert_eq!(
        w.served(SITE),
        w.site(SITE).old.sha256,
        "reported, not fixed"
    );

    w.set_extra("[agent]\ninterval = \"1h\"\nfix_drift = true\n");
    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("drift fixed"), "{log}");
    assert_eq!(w.served(SITE), new.sha256);

    // No drift left: nothing to say next time.
    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(!log.contains("drift"), "{log}");
}

#[test]
fn a_busy_host_lock_skips_the_pass_and_leaves_the_inbox_alone() {
    let w = World::nginx(&[SITE], "");
    w.set_extra(&w.inbox_source());
    let new = w.renewed(SITE);
    w.drop_file("a.test.pem", new.fullchain_pem().as_bytes());
    w.drop_file("a.test.key", new.key_pem.as_bytes());

    // Another certswap holds the lock (flock on state_dir/lock).
    fs::create_dir_all(&w.state).expect("state dir");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(w.state.join("lock"))
        .expect("lock file");
    let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .expect("take the lock");

    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("holds the host lock; this pass is skipped"),
        "{log}"
    );
    assert_eq!(w.inbox_files(), vec!["a.test.key", "a.test.pem"]);
    assert_eq!(w.served(SITE), w.site(SITE).old.sha256);

    drop(held);
    let out = w.run_once();
    let log = text(&out.stderr);
    assert!(log.contains("installed and verified"), "{log}");
    assert_eq!(w.served(SITE), new.sha256);
}

#[test]
fn a_pair_written_slowly_is_installed_only_once_complete() {
    let w = World::nginx(&[SITE], "");
    w.set_extra(&format!(
        "[agent]\ninterval = \"1h\"\n\n[[source]]\nkind = \"inbox\"\npath = {}\ndebounce = \"1s\"\n",
        support::toml_path(&w.inbox)
    ));
    let mut d = w.spawn();
    assert!(
        d.wait_log("certswap agent started", Duration::from_secs(10)),
        "{}",
        d.log()
    );
    std::thread::sleep(Duration::from_millis(500));

    // Written in place, in pieces, with pauses shorter than the debounce.
    let new = w.renewed(SITE);
    for (name, content) in [
        ("a.test.pem", new.fullchain_pem()),
        ("a.test.key", new.key_pem.clone()),
    ] {
        let mut f = fs::File::create(w.inbox.join(name)).expect("create");
        for piece in content.as_bytes().chunks(content.len().div_ceil(3)) {
            f.write_all(piece).expect("write");
            f.flush().expect("flush");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.stamps("done").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(w.stamps("done").len(), 1, "{}", d.log());
    assert!(w.stamps("failed").is_empty(), "{}", d.log());
    assert_eq!(w.served(SITE), new.sha256);
    assert_eq!(d.count("installing as one batch"), 1, "{}", d.log());
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
}
