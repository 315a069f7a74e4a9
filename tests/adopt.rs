//! `certswap adopt` against real nginx and apache2 whose site reads a
//! certbot lineage, arranged on disk exactly as certbot arranges it:
//! `le/live/shop.test/{cert,chain,fullchain,privkey}.pem` are symlinks to
//! `../../archive/shop.test/{cert,chain,fullchain,privkey}1.pem`, the key
//! 0600. No ACME server is needed: only the layout matters.
//!
//! What is protected: `discover` marks such a site; `adopt` without
//! `--apply` changes no byte; `--apply` moves the server onto certswap's
//! own copies with the same leaf served, after which a normal in-place
//! install works; `rollback` puts the old lines back, served; a config test
//! failure during `--apply` puts every byte back.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::thread::sleep;
use std::time::{Duration, Instant};

use support::apache::Apache;
use support::nginx::Nginx;
use support::pki::{self, Ca, Leaf};
use support::world::{ALIAS, SITE, Server, path, text};
use support::{SiteSpec, certswap, served_sha256};

/// A site on a real server that reads certbot's `live/` links.
struct Fixture {
    dir: tempfile::TempDir,
    ca: Ca,
    old: Leaf,
    server: Server,
    /// `le/live/shop.test`.
    live: PathBuf,
    config: PathBuf,
    state: PathBuf,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Nginx,
    Apache,
}

/// Write a certbot lineage (version 1) of `leaf` under `root`.
fn certbot_lineage(root: &Path, name: &str, ca: &Ca, leaf: &Leaf) -> PathBuf {
    let live = root.join("live").join(name);
    let archive = root.join("archive").join(name);
    std::fs::create_dir_all(&live).expect("mkdir live");
    std::fs::create_dir_all(&archive).expect("mkdir archive");
    // certbot's chain.pem holds the intermediates; the root signed these.
    let chain = if leaf.chain_pem.is_empty() {
        ca.cert_pem().to_string()
    } else {
        leaf.chain_pem.clone()
    };
    let files = [
        ("cert", leaf.cert_pem.clone()),
        ("chain", chain),
        ("fullchain", leaf.fullchain_pem()),
    ];
    for (stem, pem) in files {
        std::fs::write(archive.join(format!("{stem}1.pem")), pem).expect("write archive");
    }
    pki::write_key(&archive.join("privkey1.pem"), &leaf.key_pem);
    for stem in ["cert", "chain", "fullchain", "privkey"] {
        symlink(
            format!("../../archive/{name}/{stem}1.pem"),
            live.join(format!("{stem}.pem")),
        )
        .expect("link live -> archive");
    }
    live
}

fn fixture(kind: Kind) -> Fixture {
    fixture_with(kind, false)
}

/// With `chain`: apache reads certbot's `cert.pem` and `chain.pem` apart
/// (`SSLCertificateChainFile`), as certbot's older apache setups do.
fn fixture_with(kind: Kind, chain: bool) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("certswap adopt test root");
    let old = ca.leaf(&[SITE, ALIAS]).days(-10, 80).build();
    let live = certbot_lineage(&dir.path().join("le"), SITE, &ca, &old);
    let (cert, key) = match chain {
        false => (live.join("fullchain.pem"), live.join("privkey.pem")),
        true => (live.join("cert.pem"), live.join("privkey.pem")),
    };
    let mut spec = SiteSpec::new(SITE, &cert, &key).alias(ALIAS);
    if chain {
        spec = spec.chain(live.join("chain.pem"));
    }
    let server = match kind {
        Kind::Nginx => Server::Nginx(Nginx::start(&[spec])),
        Kind::Apache => Server::Apache(Apache::start(&[spec])),
    };
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.root_pem()).expect("write ca");
    let state = dir.path().join("state");
    let sites = [(SITE, &cert, &key)];
    let toml = match &server {
        Server::Nginx(n) => n.certswap_config(&state, &sites, Some(&ca_file)),
        Server::Apache(a) => a.certswap_config(&state, &sites, Some(&ca_file)),
    };
    let config = dir.path().join("certswap.toml");
    std::fs::write(&config, format!("# my sites\n{toml}")).expect("write config");
    Fixture {
        dir,
        ca,
        old,
        server,
        live,
        config,
        state,
    }
}

impl Fixture {
    fn run(&self, args: &[&str]) -> Output {
        certswap()
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run certswap")
    }

    fn served(&self) -> String {
        served_sha256(self.server.port(), SITE).expect("openssl s_client sees a certificate")
    }

    /// Where adopt puts the copies: `certswap/SITE/` beside the server's config.
    fn copies(&self) -> PathBuf {
        self.server
            .conf_path()
            .parent()
            .expect("conf dir")
            .join("certswap")
            .join(SITE)
    }

    /// Every byte that adopt may touch: the server's config directory, the
    /// lineage, certswap.toml and the state dir (links by their target).
    fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        let conf_dir = self.server.conf_path().parent().expect("dir").to_path_buf();
        for root in [conf_dir, self.dir.path().join("le"), self.state.clone()] {
            walk(&root, &mut out);
        }
        out.insert(self.config.clone(), pki::sha256_file(&self.config));
        out
    }

    /// Wait (bounded) until the server runs a worker that was not in `old`:
    /// it was reloaded.
    fn reloaded_since(&self, old: &[i32]) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.server.worker_pids().iter().any(|p| !old.contains(p)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(Duration::from_millis(20));
        }
    }
}

fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.expect("dir entry").path();
        let meta = std::fs::symlink_metadata(&p).expect("lstat");
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if meta.file_type().is_symlink() {
            let t = std::fs::read_link(&p).expect("readlink");
            out.insert(p, format!("-> {}", t.display()));
        } else if meta.is_dir() {
            // Server logs and runtime files change on their own.
            if !matches!(name, "logs" | "run" | "tmp" | "lock") {
                walk(&p, out);
            }
        } else if name != "lock" {
            out.insert(p.clone(), pki::sha256_file(&p));
        }
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {p:?}: {e}"))
}

#[test]
fn discover_marks_a_site_that_reads_certbots_live_symlinks() {
    let f = fixture(Kind::Nginx);
    let out = f.run(&["discover"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let toml = stdout(&out);
    let cert_line = toml
        .lines()
        .find(|l| l.starts_with("# cert is certbot's live/ symlink"))
        .unwrap_or_else(|| panic!("no mark for the cert:\n{toml}"));
    assert!(
        cert_line.contains("in-place swaps cannot replace it")
            && cert_line.contains(&format!("run certswap adopt --site {SITE}"))
            && cert_line.contains("fullchain1.pem"),
        "{cert_line}"
    );
    assert!(toml.contains("# key is certbot's live/ symlink"), "{toml}");
    // The block itself stays usable: adopt needs it in certswap.toml.
    assert!(toml.contains("\n[[site]]\n"), "{toml}");

    let out = f.run(&["discover", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let acme = &v["sites"][0]["acme"];
    assert_eq!(acme[0]["client"], "certbot", "{v}");
    assert_eq!(acme[0]["role"], "cert");
    assert_eq!(acme[1]["role"], "key");
    assert_eq!(acme[0]["lineage"], path(&f.live));
    assert!(
        acme[0]["advice"]
            .as_str()
            .is_some_and(|a| a.contains("certswap adopt --site shop.test")),
        "{v}"
    );
}

#[test]
fn adopt_without_apply_changes_no_byte_and_prints_the_lines() {
    let f = fixture(Kind::Nginx);
    let before = f.snapshot();
    let conf = f.server.conf_path();
    let conf_text = read(&conf);
    let line_no = conf_text
        .lines()
        .position(|l| l.contains("ssl_certificate "))
        .expect("the line")
        + 1;
    let old_line = conf_text.lines().nth(line_no - 1).expect("line").trim_end();

    let out = f.run(&["adopt", "--site", SITE]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = stdout(&out);
    let copy_cert = f.copies().join("fullchain.pem");
    let copy_key = f.copies().join("privkey.pem");
    assert!(
        s.contains(&format!("change {}:{line_no}\n", conf.display())),
        "{s}"
    );
    assert!(s.contains(&format!("- {old_line}\n")), "{s}");
    let new_line = old_line
        .replace(path(&f.live.join("fullchain.pem")), path(&copy_cert))
        .replace(path(&f.live.join("privkey.pem")), path(&copy_key));
    assert!(s.contains(&format!("+ {new_line}\n")), "{s}");
    assert!(
        s.contains(&format!("change {}:", f.config.display())),
        "{s}"
    );
    assert!(
        s.contains(&format!("+ cert = \"{}\"", path(&copy_cert))),
        "{s}"
    );
    assert!(
        s.contains(&format!(
            "copy   {} -> {} (mode 0600)",
            path(&f.live.join("privkey.pem")),
            path(&copy_key)
        )),
        "{s}"
    );

    let out = f.run(&["adopt", "--site", SITE, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["result"], "plan");
    assert_eq!(v["client"], "certbot");
    assert_eq!(v["changes"][0]["file"], path(&conf));
    assert_eq!(v["changes"][0]["line"], line_no);
    assert_eq!(v["changes"][0]["new"], new_line);
    assert_eq!(v["changes"][0]["old"], old_line);

    assert_eq!(f.snapshot(), before, "adopt without --apply changed bytes");
    assert!(!f.state.exists(), "the state dir was created");
    assert!(!f.copies().exists());
}

/// adopt --apply, asserting what every successful adopt must leave.
fn apply_and_check(f: &Fixture, extra: &[&str]) {
    let lineage_before: BTreeMap<_, _> = {
        let mut m = BTreeMap::new();
        walk(&f.dir.path().join("le"), &mut m);
        m
    };
    let workers = f.server.worker_pids();
    let mut args = vec!["adopt", "--site", SITE, "--apply"];
    args.extend_from_slice(extra);
    let out = f.run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stdout(&out).starts_with("adopted: "), "{}", text(&out));
    assert!(f.reloaded_since(&workers), "the server was not reloaded");
    assert_eq!(f.served(), f.old.sha256, "the served leaf changed");

    let conf = read(&f.server.conf_path());
    assert!(!conf.contains(path(&f.live)), "{conf}");
    assert!(
        conf.contains(path(&f.copies().join("fullchain.pem"))),
        "{conf}"
    );
    assert!(
        conf.contains(path(&f.copies().join("privkey.pem"))),
        "{conf}"
    );
    f.server.configtest().expect("the rewritten config passes");
    let cfg = read(&f.config);
    assert!(cfg.starts_with("# my sites\n"), "comments stay: {cfg}");
    assert!(
        cfg.contains(&format!(
            "cert = \"{}\"",
            path(&f.copies().join("fullchain.pem"))
        )),
        "{cfg}"
    );
    let key = f.copies().join("privkey.pem");
    let key_meta = std::fs::metadata(&key).expect("key copy");
    assert_eq!(key_meta.uid(), 0);
    assert_eq!(key_meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::read(&key).expect("key"),
        std::fs::read(f.live.join("privkey.pem")).expect("lineage key")
    );
    let mut lineage_after = BTreeMap::new();
    walk(&f.dir.path().join("le"), &mut lineage_after);
    assert_eq!(lineage_after, lineage_before, "the lineage was touched");
}

fn install_renewal(f: &Fixture) -> Leaf {
    let new = f.ca.leaf(&[SITE, ALIAS]).days(-1, 400).build();
    let (cert, key) = pki::write(f.dir.path(), "renewed", &new);
    let out = f.run(&[
        "install",
        "--site",
        SITE,
        "--cert",
        path(&cert),
        "--key",
        path(&key),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(f.served(), new.sha256);
    new
}

#[test]
fn adopt_apply_keeps_the_leaf_served_and_then_renewals_install_in_place() {
    let f = fixture(Kind::Nginx);
    apply_and_check(&f, &[]);
    let copy = f.copies().join("fullchain.pem");
    assert!(std::fs::symlink_metadata(&copy).expect("copy").is_file());

    // Adopted twice is nothing new.
    let again = f.run(&["adopt", "--site", SITE, "--apply"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        stdout(&again).starts_with("already adopted"),
        "{}",
        text(&again)
    );

    // Before adopt this install was refused (a symlinked target); now it
    // swaps the copies in place.
    let new = install_renewal(&f);
    assert_eq!(pki::leaf_sha256_file(&copy), new.sha256);
}

#[test]
fn rollback_after_adopt_restores_the_old_config_lines_and_serving_state() {
    let f = fixture(Kind::Nginx);
    let conf_before = read(&f.server.conf_path());
    let cfg_before = read(&f.config);
    apply_and_check(&f, &[]);

    let workers = f.server.worker_pids();
    let out = f.run(&["rollback", "--site", SITE]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(f.reloaded_since(&workers), "rollback did not reload");
    assert_eq!(read(&f.server.conf_path()), conf_before);
    assert_eq!(read(&f.config), cfg_before);
    assert!(!f.copies().exists(), "the copies are left");
    assert_eq!(f.served(), f.old.sha256);
    f.server.configtest().expect("config passes");
    let mut state = BTreeMap::new();
    walk(&f.state, &mut state);
    assert!(state.is_empty(), "left in the state dir: {state:?}");
    // Nothing more to roll back.
    let out = f.run(&["rollback", "--site", SITE]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn rollback_after_adopt_and_install_undoes_the_install_first_then_the_adopt() {
    let f = fixture(Kind::Nginx);
    let conf_before = read(&f.server.conf_path());
    apply_and_check(&f, &["--managed"]);
    let copy = f.copies().join("fullchain.pem");
    let link = std::fs::read_link(&copy).expect("managed: the copy is a link");
    assert!(link.starts_with(&f.state), "{link:?}");
    assert!(read(&f.config).contains("mode = \"managed\""));
    install_renewal(&f);

    let out = f.run(&["rollback", "--site", SITE]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(f.served(), f.old.sha256);
    assert!(copy.exists(), "the install was undone, not the adopt");

    let out = f.run(&["rollback", "--site", SITE]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(read(&f.server.conf_path()), conf_before);
    assert!(!f.copies().exists());
    assert_eq!(f.served(), f.old.sha256);
}

#[test]
fn a_config_test_failure_during_adopt_apply_restores_every_byte() {
    let f = fixture(Kind::Nginx);
    // The real nginx, behind a wrapper whose config test fails once the
    // config names certswap's copies: the failure adopt must survive.
    let wrapper = f.dir.path().join("nginx-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = -t ] && grep -q '/certswap/' '{}'; then\n  echo 'nginx: [emerg] cannot load certificate (injected)' >&2; exit 1\nfi\nexec /usr/sbin/nginx \"$@\"\n",
            path(&f.server.conf_path())
        ),
    )
    .expect("write wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let cfg = read(&f.config).replace(
        "binary = \"/usr/sbin/nginx\"",
        &format!("binary = \"{}\"", path(&wrapper)),
    );
    std::fs::write(&f.config, cfg).expect("write config");
    let before = f.snapshot();
    // Both workers of `worker_processes 2` up, so a later one means a reload.
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.server.worker_pids().len() < 2 && Instant::now() < deadline {
        sleep(Duration::from_millis(20));
    }
    let workers = f.server.worker_pids();

    let out = f.run(&["adopt", "--site", SITE, "--apply"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("injected"), "{err}");
    assert!(err.contains("served again (proven"), "{err}");
    assert_eq!(f.snapshot(), before, "bytes differ after the failed adopt");
    assert!(!f.copies().exists());
    assert_eq!(f.server.worker_pids(), workers, "a reload was sent");
    assert_eq!(f.served(), f.old.sha256);
}

#[test]
fn adopt_refuses_a_site_that_is_not_in_a_lineage_and_changes_nothing() {
    let w = support::world::World::nginx();
    let before = w.snapshot();
    let out = w.run(&["adopt", "--site", SITE, "--apply"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing to adopt"),
        "{}",
        text(&out)
    );
    assert_eq!(w.snapshot(), before);
}

#[test]
fn apache_adopt_apply_and_rollback_keep_the_leaf_served() {
    let f = fixture(Kind::Apache);
    let conf_before = read(&f.server.conf_path());
    apply_and_check(&f, &[]);
    let conf = read(&f.server.conf_path());
    assert!(
        conf.contains(&format!(
            "SSLCertificateKeyFile \"{}\"",
            path(&f.copies().join("privkey.pem"))
        )),
        "{conf}"
    );
    let out = f.run(&["rollback", "--site", SITE]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(read(&f.server.conf_path()), conf_before);
    assert_eq!(f.served(), f.old.sha256);
}

#[test]
fn an_adopt_killed_after_the_config_test_or_the_reload_is_undone_by_the_next_rollback() {
    for point in ["adopt-after-configtest", "adopt-after-reload"] {
        let f = fixture(Kind::Nginx);
        let before = f.snapshot();
        let out = certswap()
            .arg("--config")
            .arg(&f.config)
            .args(["adopt", "--site", SITE, "--apply"])
            .env("CERTSWAP_FAILPOINT", point)
            .output()
            .expect("run certswap");
        assert_eq!(
            out.status.code(),
            None,
            "{point}: not aborted: {}",
            text(&out)
        );
        assert!(
            f.copies().exists(),
            "{point}: the crash came before the copies"
        );

        let out = f.run(&["rollback", "--site", SITE]);
        assert_eq!(out.status.code(), Some(0), "{point}: {}", text(&out));
        assert_eq!(
            f.snapshot(),
            before,
            "{point}: bytes differ after the repair"
        );
        assert!(!f.copies().exists(), "{point}");
        f.server.configtest().expect("config passes");
        assert_eq!(f.served(), f.old.sha256, "{point}");
    }
}

#[test]
fn a_symlinked_site_file_is_rewritten_where_it_lives_and_stays_a_link() {
    // Debian's layout: sites-enabled/shop.conf -> ../sites-available/shop.conf.
    let f = fixture(Kind::Nginx);
    let Server::Nginx(n) = &f.server else {
        unreachable!()
    };
    let main = n.config_for(n.sites());
    let start = main.find("  server {").expect("server block");
    let end = main.rfind("}\n").expect("end of http");
    let (avail, enabled) = (
        n.prefix().join("sites-available"),
        n.prefix().join("sites-enabled"),
    );
    std::fs::create_dir_all(&avail).expect("mkdir");
    std::fs::create_dir_all(&enabled).expect("mkdir");
    std::fs::write(avail.join("shop.conf"), &main[start..end]).expect("write site");
    symlink("../sites-available/shop.conf", enabled.join("shop.conf")).expect("link");
    n.set_config(&format!(
        "{}  include {}/*.conf;\n{}",
        &main[..start],
        path(&enabled),
        &main[end..]
    ));
    n.reload_and_wait(Duration::from_secs(10)).expect("reload");
    assert_eq!(f.served(), f.old.sha256);

    let out = f.run(&["adopt", "--site", SITE, "--apply"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains(&format!("change {}:", path(&enabled.join("shop.conf")))),
        "{}",
        text(&out)
    );
    let link = std::fs::read_link(enabled.join("shop.conf")).expect("still a link");
    assert_eq!(link, Path::new("../sites-available/shop.conf"));
    let site = read(&avail.join("shop.conf"));
    assert!(
        site.contains(path(&f.copies().join("fullchain.pem"))),
        "{site}"
    );
    assert_eq!(f.served(), f.old.sha256);
}

#[test]
fn a_failing_reload_during_adopt_apply_restores_every_byte() {
    let f = fixture(Kind::Nginx);
    let cfg = read(&f.config).replace("[probe]", "reload_command = [\"/bin/false\"]\n\n[probe]");
    std::fs::write(&f.config, cfg).expect("write config");
    let before = f.snapshot();

    let out = f.run(&["adopt", "--site", SITE, "--apply", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["result"], "rolled_back", "{v}");
    let err = v["error"].as_str().unwrap_or_default();
    assert!(err.contains("reload command `/bin/false` failed"), "{err}");
    assert!(err.contains("served again (proven"), "{err}");
    assert_eq!(f.snapshot(), before, "bytes differ after the failed adopt");
    assert!(!f.copies().exists());
    assert_eq!(f.served(), f.old.sha256);
}

#[test]
fn adopt_refuses_when_the_server_does_not_serve_what_the_lineage_holds() {
    // certbot renewed (fullchain2.pem) but nothing reloaded the server:
    // adopting now would change the served certificate, so it is refused.
    let f = fixture(Kind::Nginx);
    let renewed = f.ca.leaf(&[SITE, ALIAS]).days(-1, 90).build();
    let archive = f.dir.path().join("le/archive").join(SITE);
    std::fs::write(archive.join("fullchain2.pem"), renewed.fullchain_pem()).expect("write");
    pki::write_key(&archive.join("privkey2.pem"), &renewed.key_pem);
    for stem in ["fullchain", "privkey"] {
        let link = f.live.join(format!("{stem}.pem"));
        std::fs::remove_file(&link).expect("unlink");
        symlink(format!("../../archive/{SITE}/{stem}2.pem"), &link).expect("relink");
    }
    let before = f.snapshot();
    let out = f.run(&["adopt", "--site", SITE, "--apply"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("serves sha256 {}", f.old.sha256))
            && err.contains(&renewed.sha256)
            && err.contains("reload the server onto its files first"),
        "{err}"
    );
    assert_eq!(f.snapshot(), before);
    assert_eq!(f.served(), f.old.sha256);
}

#[test]
fn an_acme_sh_domain_directory_is_marked_and_adopted() {
    // acme.sh keeps regular files in ~/.acme.sh/DOMAIN_ecc/ and rewrites
    // them itself on renewal; emulated with the certbot fixture's bytes.
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("certswap acme.sh test root");
    let old = ca.leaf(&[SITE, ALIAS]).days(-10, 80).build();
    let dom = dir.path().join(".acme.sh").join(format!("{SITE}_ecc"));
    std::fs::create_dir_all(&dom).expect("mkdir");
    std::fs::write(dom.join(format!("{SITE}.conf")), "Le_Domain='shop.test'\n").expect("conf");
    std::fs::write(dom.join("fullchain.cer"), old.fullchain_pem()).expect("write");
    pki::write_key(&dom.join(format!("{SITE}.key")), &old.key_pem);
    let (cert, key) = (dom.join("fullchain.cer"), dom.join(format!("{SITE}.key")));
    let n = Nginx::start(&[SiteSpec::new(SITE, &cert, &key).alias(ALIAS)]);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.root_pem()).expect("write ca");
    let config = dir.path().join("certswap.toml");
    let state = dir.path().join("state");
    std::fs::write(
        &config,
        n.certswap_config(&state, &[(SITE, &cert, &key)], Some(&ca_file)),
    )
    .expect("write config");
    let run = |args: &[&str]| {
        certswap()
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .expect("run certswap")
    };

    let out = run(&["discover"]);
    assert!(
        stdout(&out).contains("# cert is in acme.sh's domain directory"),
        "{}",
        text(&out)
    );
    let out = run(&["adopt", "--site", SITE, "--apply"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let copies = n.prefix().join("certswap").join(SITE);
    assert_eq!(
        pki::sha256_file(&copies.join(format!("{SITE}.key"))),
        pki::sha256_file(&key)
    );
    assert!(read(&n.conf_path()).contains(path(&copies.join("fullchain.cer"))));
    assert_eq!(served_sha256(n.port(), SITE).expect("served"), old.sha256);
}

#[test]
fn an_install_never_replaces_certbots_live_links_and_names_adopt() {
    // Managed mode would turn live/NAME/*.pem into links to certswap's
    // state dir, and certbot's next renewal would fail on its own lineage.
    for managed in [false, true] {
        let f = fixture(Kind::Nginx);
        if managed {
            let cfg = read(&f.config) + "mode = \"managed\"\n";
            std::fs::write(&f.config, cfg).expect("write config");
        }
        let mut lineage = BTreeMap::new();
        walk(&f.dir.path().join("le"), &mut lineage);
        let new = f.ca.leaf(&[SITE, ALIAS]).days(-1, 400).build();
        let (cert, key) = pki::write(f.dir.path(), "renewed", &new);
        let out = f.run(&[
            "install",
            "--site",
            SITE,
            "--cert",
            path(&cert),
            "--key",
            path(&key),
        ]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "managed {managed}: {}",
            text(&out)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("certbot's live/ symlink")
                && err.contains(&format!("run `certswap adopt --site {SITE}`")),
            "managed {managed}: {err}"
        );
        let mut after = BTreeMap::new();
        walk(&f.dir.path().join("le"), &mut after);
        assert_eq!(after, lineage, "managed {managed}: the lineage changed");
        assert_eq!(f.served(), f.old.sha256);
    }
}

#[test]
fn rollback_of_an_adopt_never_clobbers_a_config_edited_since() {
    let f = fixture(Kind::Nginx);
    apply_and_check(&f, &[]);
    let conf = f.server.conf_path();
    let edited = read(&conf) + "# edited by hand after the adopt\n";
    std::fs::write(&conf, &edited).expect("edit");
    let before = f.snapshot();

    let out = f.run(&["rollback", "--site", SITE]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{} changed since `certswap adopt` wrote it",
            conf.display()
        )) && err.contains(path(&f.live.join("fullchain.pem"))),
        "{err}"
    );
    assert_eq!(f.snapshot(), before);
    assert_eq!(read(&conf), edited);
    assert_eq!(f.served(), f.old.sha256);
}

#[test]
fn apache_with_a_separate_chain_file_gets_all_three_copies() {
    let f = fixture_with(Kind::Apache, true);
    let conf_before = read(&f.server.conf_path());
    let cfg_before = read(&f.config);
    let out = f.run(&["adopt", "--site", SITE, "--apply"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let conf = read(&f.server.conf_path());
    for (directive, file) in [
        ("SSLCertificateFile", "cert.pem"),
        ("SSLCertificateKeyFile", "privkey.pem"),
        ("SSLCertificateChainFile", "chain.pem"),
    ] {
        let want = format!("{directive} \"{}\"", path(&f.copies().join(file)));
        assert!(conf.contains(&want), "{want}\n{conf}");
    }
    let cfg = read(&f.config);
    assert!(
        cfg.contains(&format!(
            "chain = \"{}\"",
            path(&f.copies().join("chain.pem"))
        )),
        "{cfg}"
    );
    assert_eq!(f.served(), f.old.sha256);

    let out = f.run(&["rollback", "--site", SITE]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(read(&f.server.conf_path()), conf_before);
    assert_eq!(read(&f.config), cfg_before);
    assert_eq!(f.served(), f.old.sha256);
}

#[test]
fn a_rollback_of_an_adopt_whose_lineage_is_gone_keeps_the_site_on_its_copies() {
    // `certbot delete` after the adopt: the old lines would name missing
    // files, so the rollback's config test fails and adopt's lines return.
    let f = fixture(Kind::Nginx);
    apply_and_check(&f, &[]);
    let adopted_conf = read(&f.server.conf_path());
    let adopted_cfg = read(&f.config);
    std::fs::remove_dir_all(f.dir.path().join("le")).expect("certbot delete");

    let out = f.run(&["rollback", "--site", SITE]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the config test fails, so no reload was sent")
            && err.contains("the copies are served again (proven"),
        "{err}"
    );
    assert_eq!(read(&f.server.conf_path()), adopted_conf);
    assert_eq!(read(&f.config), adopted_cfg);
    assert!(f.copies().join("privkey.pem").is_file());
    f.server.configtest().expect("the adopted config passes");
    assert_eq!(f.served(), f.old.sha256);
    let out = f.run(&["adopt", "--site", SITE]);
    assert!(
        stdout(&out).starts_with("already adopted"),
        "{}",
        text(&out)
    );
}
