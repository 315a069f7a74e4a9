//! `certswap deploy-hook` on a real nginx, driven the way the ACME clients
//! drive it: certbot's `--deploy-hook` environment (a `live/NAME` lineage
//! whose files are links into `archive/`), acme.sh's `--reloadcmd`
//! environment (run in the domain directory), and a renewal that belongs to
//! no configured site (exit 2, nothing changed, no signal).

mod support;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use support::nginx::Nginx;
use support::pki::{self, Leaf};
use support::world::{ALIAS, SITE, Server, World, path, text};

/// Every variable either client sets: removed from the inherited
/// environment so only the ones a test gives are seen.
const HOOK_VARS: &[&str] = &[
    "RENEWED_LINEAGE",
    "RENEWED_DOMAINS",
    "CERT_PATH",
    "CERT_KEY_PATH",
    "CA_CERT_PATH",
    "CERT_FULLCHAIN_PATH",
    "Le_Domain",
];

/// Run `certswap deploy-hook --json` with exactly `env` from the client,
/// in `cwd` (acme.sh runs its reloadcmd inside the domain directory).
fn hook(w: &World, env: &[(&str, &Path)], cwd: Option<&Path>) -> Output {
    hook_str(
        w,
        &env.iter().map(|(k, v)| (*k, path(v))).collect::<Vec<_>>(),
        cwd,
    )
}

fn hook_str(w: &World, env: &[(&str, &str)], cwd: Option<&Path>) -> Output {
    hook_args(w, &["--json"], env, cwd)
}

/// `certswap deploy-hook ARGS` with exactly `env` from the client.
fn hook_args(w: &World, args: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> Output {
    let mut cmd = support::certswap();
    cmd.arg("--config")
        .arg(&w.config)
        .arg("deploy-hook")
        .args(args);
    for k in HOOK_VARS {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd.output().expect("run certswap deploy-hook")
}

/// certbot's layout: `live/NAME/{fullchain,privkey}.pem` are relative links
/// to `archive/NAME/{fullchain,privkey}N.pem`. Returns the lineage dir.
fn certbot_lineage(w: &World, name: &str, n: u32, leaf: &Leaf) -> PathBuf {
    let root = w.dir.path().join("letsencrypt");
    let archive = root.join("archive").join(name);
    let live = root.join("live").join(name);
    std::fs::create_dir_all(&archive).expect("mkdir archive");
    std::fs::create_dir_all(&live).expect("mkdir live");
    std::fs::write(
        archive.join(format!("fullchain{n}.pem")),
        leaf.fullchain_pem(),
    )
    .expect("write fullchain");
    pki::write_key(&archive.join(format!("privkey{n}.pem")), &leaf.key_pem);
    for (link, file) in [("fullchain.pem", "fullchain"), ("privkey.pem", "privkey")] {
        let link = live.join(link);
        let _ = std::fs::remove_file(&link);
        symlink(format!("../../archive/{name}/{file}{n}.pem"), &link).expect("symlink");
    }
    live
}

/// The server's workers once all of them have started (the guard's nginx
/// runs two, forked one after the other), so a later change means a signal.
fn settled_workers(w: &World) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = w.server.worker_pids();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = w.server.worker_pids();
        if (now == last && now.len() >= 2) || Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

/// One JSON object per line of stdout.
fn outcomes(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn certbot_renewal_is_installed_verified_and_served() {
    let w = World::nginx();
    assert_eq!(w.served(), w.old.sha256);
    let new = w.renewed();
    let lineage = certbot_lineage(&w, SITE, 2, &new);

    let out = hook_str(
        &w,
        &[
            ("RENEWED_LINEAGE", path(&lineage)),
            ("RENEWED_DOMAINS", &format!("{SITE} {ALIAS}")),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v = outcomes(&out);
    assert_eq!(v.len(), 1, "one site: {v:?}");
    assert_eq!(v[0]["site"], SITE);
    assert_eq!(v[0]["result"], "verified", "{}", v[0]);
    assert_eq!(v[0]["new"]["sha256"], new.sha256.as_str());
    assert_eq!(v[0]["served"][0]["sha256"], new.sha256.as_str());

    // An independent client sees it; nginx's files are copies (not links
    // into certbot's archive) that belong together.
    assert_eq!(w.served(), new.sha256);
    assert_eq!(pki::leaf_sha256_file(&w.cert), new.sha256);
    assert!(
        !std::fs::symlink_metadata(&w.cert)
            .expect("cert")
            .file_type()
            .is_symlink()
    );
    assert!(w.pair_matches());
    assert!(w.leftovers().is_empty(), "{:?}", w.leftovers());
}

#[test]
fn acme_sh_reloadcmd_environment_is_installed_and_verified() {
    let w = World::nginx();
    let issuer = w.ca.intermediate("acme test intermediate");
    // acme.sh's domain dir: DOMAIN.cer, DOMAIN.key, ca.cer, fullchain.cer.
    let dir = w.dir.path().join("acme.sh").join(format!("{SITE}_ecc"));
    std::fs::create_dir_all(&dir).expect("mkdir acme dir");
    let write = |leaf: &Leaf| {
        std::fs::write(dir.join(format!("{SITE}.cer")), &leaf.cert_pem).expect("cer");
        pki::write_key(&dir.join(format!("{SITE}.key")), &leaf.key_pem);
        std::fs::write(dir.join("ca.cer"), &leaf.chain_pem).expect("ca.cer");
        std::fs::write(dir.join("fullchain.cer"), leaf.fullchain_pem()).expect("fullchain");
    };
    let cert = dir.join(format!("{SITE}.cer"));
    let key = dir.join(format!("{SITE}.key"));
    let ca = dir.join("ca.cer");
    let fullchain = dir.join("fullchain.cer");
    let le_domain = PathBuf::from(SITE);

    // 1. All four paths, as acme.sh exports them: the full chain is used.
    let first = issuer.leaf(&[SITE, ALIAS]).days(-1, 385).build();
    write(&first);
    let out = hook(
        &w,
        &[
            ("CERT_PATH", &cert),
            ("CERT_KEY_PATH", &key),
            ("CA_CERT_PATH", &ca),
            ("CERT_FULLCHAIN_PATH", &fullchain),
            ("Le_Domain", &le_domain),
        ],
        Some(&dir),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v = outcomes(&out);
    assert_eq!(v[0]["result"], "verified", "{}", v[0]);
    assert_eq!(w.served(), first.sha256);
    let served_chain = std::fs::read_to_string(&w.cert).expect("read cert");
    assert_eq!(
        served_chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf + intermediate installed"
    );

    // 2. No full chain file: the leaf and ca.cer are put back together.
    let second = issuer.leaf(&[SITE, ALIAS]).days(-1, 400).build();
    write(&second);
    let out = hook(
        &w,
        &[
            ("CERT_PATH", &cert),
            ("CERT_KEY_PATH", &key),
            ("CA_CERT_PATH", &ca),
            ("Le_Domain", &le_domain),
        ],
        Some(&dir),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(outcomes(&out)[0]["result"], "verified");
    assert_eq!(w.served(), second.sha256);
    assert!(w.pair_matches());
}

#[test]
fn unknown_domain_is_exit_2_and_changes_nothing() {
    let w = World::nginx();
    let before = w.snapshot();
    let workers = settled_workers(&w);

    // A lineage for a name no site has.
    let other = w.ca.leaf(&["other.test"]).days(-1, 385).build();
    let lineage = certbot_lineage(&w, "other.test", 1, &other);
    let out = hook_str(
        &w,
        &[
            ("RENEWED_LINEAGE", path(&lineage)),
            ("RENEWED_DOMAINS", "other.test"),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("other.test"), "{}", text(&out));
    assert!(stderr.contains("belongs to no site"), "{}", text(&out));
    assert!(stderr.contains(SITE), "lists the known sites: {stderr}");
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one sentence: {stderr}");

    // No hook environment at all: a usage error naming both clients.
    let out = hook_str(&w, &[], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("RENEWED_LINEAGE") && stderr.contains("CERT_PATH"),
        "{stderr}"
    );

    assert_eq!(w.snapshot(), before, "no byte changed");
    assert_eq!(w.server.worker_pids(), workers, "no signal sent");
    assert_eq!(w.served(), w.old.sha256);
}

#[test]
fn renewal_that_drops_a_name_is_rejected_so_certbot_reports_it() {
    let w = World::nginx();
    let before = w.snapshot();
    // Covers the site's name but no longer its alias: the site is found by
    // its SAN, and install refuses the bundle (exit 1, nothing changed).
    let narrower = w.ca.leaf(&[SITE]).days(-1, 385).build();
    let lineage = certbot_lineage(&w, SITE, 3, &narrower);
    let out = hook_str(
        &w,
        &[
            ("RENEWED_LINEAGE", path(&lineage)),
            ("RENEWED_DOMAINS", SITE),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v = outcomes(&out);
    assert_eq!(v[0]["result"], "rejected", "{}", v[0]);
    assert!(
        v[0]["error"].as_str().unwrap_or_default().contains(ALIAS),
        "{}",
        v[0]
    );
    assert_eq!(w.snapshot(), before);
    assert_eq!(w.served(), w.old.sha256);
}

/// The world's nginx, logging every reload from now on.
fn counting_reloads(w: &World) -> &Nginx {
    let Server::Nginx(n) = &w.server else {
        panic!("an nginx world")
    };
    n.log_reloads();
    n
}

#[test]
fn the_hook_run_twice_with_the_same_renewal_is_already_installed_with_no_reload() {
    let w = World::nginx();
    let nginx = counting_reloads(&w);
    let new = w.renewed();
    let lineage = certbot_lineage(&w, SITE, 2, &new);
    let domains = format!("{SITE} {ALIAS}");
    let env = [
        ("RENEWED_LINEAGE", path(&lineage)),
        ("RENEWED_DOMAINS", domains.as_str()),
    ];
    let reloads = nginx.reloads();
    let first = hook_str(&w, &env, None);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    assert_eq!(outcomes(&first)[0]["result"], "verified");
    assert_eq!(nginx.reloads(), reloads + 1, "{}", nginx.error_log());

    // certbot (or a person after a partial failure) runs the hook again.
    let before = w.snapshot();
    let workers = settled_workers(&w);
    let second = hook_str(&w, &env, None);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    let v = outcomes(&second);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0]["result"], "already_installed", "{}", v[0]);
    assert!(v[0]["error"].is_null(), "{}", v[0]);
    assert_eq!(v[0]["served"][0]["sha256"], new.sha256.as_str());
    // In words, as certbot's log shows it.
    let third = hook_args(&w, &[], &env, None);
    assert_eq!(third.status.code(), Some(0), "{}", text(&third));
    let said = String::from_utf8_lossy(&third.stdout);
    assert!(said.contains("already installed and served"), "{said}");

    assert_eq!(w.snapshot(), before, "nothing written");
    assert_eq!(
        nginx.reloads(),
        reloads + 1,
        "no reload: {}",
        nginx.error_log()
    );
    assert_eq!(w.server.worker_pids(), workers, "no signal");
    assert_eq!(w.served(), new.sha256);
}

#[test]
fn deploy_hook_force_repairs_a_renewal_that_is_on_disk_but_not_served() {
    let w = World::nginx();
    let nginx = counting_reloads(&w);
    // A renewal that reached the site's files but not the server (someone
    // copied it by hand and forgot the reload): the hook's lineage is what
    // the file holds, but the old certificate is served.
    let new = w.renewed();
    pki::write(w.cert.parent().expect("ssl dir"), SITE, &new);
    let lineage = certbot_lineage(&w, SITE, 2, &new);
    let env = [
        ("RENEWED_LINEAGE", path(&lineage)),
        ("RENEWED_DOMAINS", SITE),
    ];
    let before = w.snapshot();
    let reloads = nginx.reloads();

    // Not "already installed": refused, naming what is served and the file.
    let out = hook_str(&w, &env, None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for part in [
        w.old.sha256.as_str(),
        new.sha256.as_str(),
        path(&w.cert),
        "nothing was changed",
        "--force",
    ] {
        assert!(err.contains(part), "{part} in {err}");
    }
    assert_eq!(w.snapshot(), before);
    assert_eq!(nginx.reloads(), reloads, "{}", nginx.error_log());
    assert_eq!(w.served(), w.old.sha256);

    // --force passes through to the install: the same files again, a
    // config test and a reload, verified.
    let out = hook_args(&w, &["--force", "--json"], &env, None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(outcomes(&out)[0]["result"], "verified", "{}", text(&out));
    assert_eq!(w.served(), new.sha256);
    assert_eq!(nginx.reloads(), reloads + 1, "{}", nginx.error_log());
}

#[test]
fn a_site_reading_certbots_live_links_is_refused_as_a_symlink_before_must_extend() {
    let w = World::nginx();
    // The site's cert and key are certbot's live/ links (what certbot's
    // docs suggest), holding the installed certificate.
    let lineage = certbot_lineage(&w, SITE, 1, &w.old);
    for (target, file) in [(&w.cert, "fullchain.pem"), (&w.key, "privkey.pem")] {
        std::fs::remove_file(target).expect("rm");
        symlink(lineage.join(file), target).expect("link into live/");
    }
    // certbot renews: it moves the links itself, then runs the hook.
    let new = w.renewed();
    certbot_lineage(&w, SITE, 2, &new);
    let before = w.snapshot();
    let workers = settled_workers(&w);

    for args in [&["--json"][..], &["--json", "--force"][..]] {
        let out = hook_args(
            &w,
            args,
            &[
                ("RENEWED_LINEAGE", path(&lineage)),
                ("RENEWED_DOMAINS", SITE),
            ],
            None,
        );
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{} is a symlink", path(&w.cert))),
            "{err}"
        );
        assert!(err.contains("live"), "names where it points: {err}");
        assert!(
            err.contains(&format!("certswap adopt --site {SITE}")),
            "{err}"
        );
        assert!(err.contains("mode = \"managed\""), "{err}");
        assert!(
            !err.contains("not later than"),
            "the real reason first: {err}"
        );
    }
    assert_eq!(w.snapshot(), before, "nothing changed");
    assert_eq!(w.server.worker_pids(), workers, "no signal");
    assert_eq!(w.served(), w.old.sha256);
}
