//! `certswap install --batch DIR` on a real nginx with five sites: one
//! config test and one reload for all of them, a bad bundle rejected while
//! the others install, and a site whose endpoint serves another cert rolled
//! back alone (with a second reload) while the others stay verified.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use support::nginx::Nginx;
use support::pki::{self, Ca, Leaf};
use support::{ECDSA_SUITE, RSA_SUITE, SiteSpec, certswap, served_sha256};

const SITES: [&str; 5] = ["a.test", "b.test", "c.test", "d.test", "e.test"];
/// Enough sites for the batch's per-address gate (GATE_MIN_SITES = 16).
const MANY: [&str; 20] = [
    "s00.test", "s01.test", "s02.test", "s03.test", "s04.test", "s05.test", "s06.test", "s07.test",
    "s08.test", "s09.test", "s10.test", "s11.test", "s12.test", "s13.test", "s14.test", "s15.test",
    "s16.test", "s17.test", "s18.test", "s19.test",
];

/// Five sites on one nginx, with a certswap config and an inbox dir.
struct World {
    dir: tempfile::TempDir,
    ca: Ca,
    old: BTreeMap<&'static str, Leaf>,
    nginx: Nginx,
    config: PathBuf,
    inbox: PathBuf,
}

impl World {
    fn new(deadline: &str) -> World {
        World::with_sites(deadline, &SITES)
    }

    fn with_sites(deadline: &str, sites: &[&'static str]) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let ssl = dir.path().join("ssl");
        std::fs::create_dir(&ssl).expect("mkdir ssl");
        let ca = Ca::new("certswap batch test root");
        let mut old = BTreeMap::new();
        let mut specs = Vec::new();
        let mut files = Vec::new();
        for &name in sites {
            let leaf = ca.leaf(&[name]).days(-345, 20).build();
            let (cert, key) = pki::write(&ssl, name, &leaf);
            specs.push(SiteSpec::new(name, &cert, &key));
            files.push((name, cert, key));
            old.insert(name, leaf);
        }
        let nginx = Nginx::start(&specs);
        // Notice level: every SIGHUP logs "signal 1 (SIGHUP) received".
        let log = nginx.error_log_path();
        let conf = std::fs::read_to_string(nginx.conf_path()).expect("read nginx.conf");
        let quoted = format!("\"{}\";", log.display());
        assert!(conf.contains(&quoted), "{conf}");
        nginx.set_config(&conf.replacen(&quoted, &format!("\"{}\" notice;", log.display()), 1));
        nginx
            .reload_and_wait(std::time::Duration::from_secs(10))
            .expect("reload with notice logging");

        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).expect("write ca");
        let text = nginx
            .certswap_config(&dir.path().join("state"), &files, Some(&ca_file))
            .replace("deadline = \"10s\"", &format!("deadline = \"{deadline}\""));
        let config = dir.path().join("certswap.toml");
        std::fs::write(&config, text).expect("write config");
        let inbox = dir.path().join("inbox");
        std::fs::create_dir(&inbox).expect("mkdir inbox");
        World {
            dir,
            ca,
            old,
            nginx,
            config,
            inbox,
        }
    }

    /// A renewal of `name`: same names, one year longer.
    fn renewed(&self, name: &str) -> Leaf {
        self.ca.leaf(&[name]).days(-1, 385).build()
    }

    /// Put renewals of `names` in the inbox as `NAME.pem` + `NAME.key`.
    fn renew_all(&self, names: &[&str]) -> BTreeMap<String, Leaf> {
        names
            .iter()
            .map(|n| {
                let leaf = self.renewed(n);
                pki::write(&self.inbox, n, &leaf);
                (n.to_string(), leaf)
            })
            .collect()
    }

    fn batch(&self, extra: &[&str]) -> Output {
        let mut cmd = certswap();
        cmd.arg("--config")
            .arg(&self.config)
            .args(["install", "--batch"])
            .arg(&self.inbox)
            .args(extra);
        cmd.output().expect("run certswap")
    }

    fn served(&self, name: &str) -> String {
        served_sha256(self.nginx.port(), name).expect("openssl s_client sees a certificate")
    }

    fn cert_file(&self, name: &str) -> PathBuf {
        self.dir.path().join("ssl").join(format!("{name}.pem"))
    }

    /// Start a second nginx serving a copy of `name`'s installed cert (a
    /// load balancer in front, say; certswap's reloads do not touch it) and
    /// point `name`'s endpoint at it. (A copy: an endpoint serving a cert
    /// the site's file does not hold is refused before anything changes.)
    fn behind_a_second_nginx(&self, name: &str) -> (Nginx, Leaf) {
        self.behind_a_second_nginx_serving(name, self.old[name].clone())
    }

    /// [`World::behind_a_second_nginx`], the second nginx serving `lb_leaf`.
    fn behind_a_second_nginx_serving(&self, name: &str, lb_leaf: Leaf) -> (Nginx, Leaf) {
        let lb_dir = self.dir.path().join("lb");
        std::fs::create_dir(&lb_dir).expect("mkdir");
        let (lb_cert, lb_key) = pki::write(&lb_dir, "lb", &lb_leaf);
        let lb = Nginx::start(&[SiteSpec::new(name, &lb_cert, &lb_key)]);
        self.point_endpoint(name, lb.port());
        (lb, lb_leaf)
    }

    /// Point `name`'s endpoint in the certswap config at 127.0.0.1:`port`
    /// instead of this nginx (the other sites keep theirs).
    fn point_endpoint(&self, name: &str, port: u16) {
        let conf = std::fs::read_to_string(&self.config).expect("config");
        let marker = format!("cert = {}", support::toml_path(&self.cert_file(name)));
        let at = conf.find(&marker).expect("the site in the config");
        let (head, tail) = conf.split_at(at);
        let tail = tail.replacen(
            &format!("127.0.0.1:{}", self.nginx.port()),
            &format!("127.0.0.1:{port}"),
            1,
        );
        std::fs::write(&self.config, format!("{head}{tail}")).expect("write config");
    }

    /// Give `name` an RSA pair beside its ECDSA one: a second
    /// `ssl_certificate` line in its server block and a `[[site.pair]]` in
    /// its site. Returns the RSA leaf, served once nginx has reloaded.
    fn add_rsa_pair(&self, name: &str) -> Leaf {
        let ssl = self.dir.path().join("ssl");
        let key = pki::rsa_key_pem(&ssl, &format!("{name}-old"));
        let leaf = self.ca.leaf(&[name]).days(-345, 20).key(&key).build();
        let (cert, key) = pki::write(&ssl, &format!("{name}.rsa"), &leaf);

        let conf = std::fs::read_to_string(self.nginx.conf_path()).expect("read nginx.conf");
        let own_key = format!(
            "ssl_certificate_key {};",
            support::conf_path(&ssl.join(format!("{name}.key")))
        );
        assert_eq!(conf.matches(&own_key).count(), 1, "{conf}");
        let both = format!(
            "{own_key} ssl_certificate {}; ssl_certificate_key {};",
            support::conf_path(&cert),
            support::conf_path(&key)
        );
        self.nginx.set_config(&conf.replacen(&own_key, &both, 1));
        self.nginx
            .reload_and_wait(std::time::Duration::from_secs(10))
            .expect("reload with two pairs");

        // `[[site.pair]]` belongs to the `[[site]]` table above it.
        let text = std::fs::read_to_string(&self.config).expect("config");
        let marker = format!("cert = {}", support::toml_path(&self.cert_file(name)));
        let at = text.find(&marker).expect("the site in the config");
        let end = text[at..].find("\n[[site]]").map_or(text.len(), |i| at + i);
        let pair = format!(
            "\n[[site.pair]]\ncert = {}\nkey = {}\n",
            support::toml_path(&cert),
            support::toml_path(&key)
        );
        std::fs::write(
            &self.config,
            format!("{}{pair}{}", &text[..end], &text[end..]),
        )
        .expect("write config");
        assert_eq!(self.served_with(name, RSA_SUITE), leaf.sha256);
        assert_eq!(self.served_with(name, ECDSA_SUITE), self.old[name].sha256);
        leaf
    }

    /// The leaf served for `name` with only `cipher` (which pair).
    fn served_with(&self, name: &str, cipher: &str) -> String {
        support::served_sha256_with_cipher(self.nginx.port(), name, cipher)
            .unwrap_or_else(|e| panic!("{name} with {cipher}: {e}"))
    }

    /// SIGHUPs nginx has logged so far.
    fn reloads(&self) -> usize {
        self.nginx.error_log().matches("(SIGHUP) received").count()
    }
}

/// The `--json` output: exactly one object per line, by site.
fn json_lines(out: &Output) -> BTreeMap<String, serde_json::Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut by_site = BTreeMap::new();
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!("not one JSON object per line ({e}): {line}\n{}", text(out))
        });
        let site = v["site"].as_str().expect("site").to_string();
        assert!(by_site.insert(site, v).is_none(), "{}", text(out));
    }
    by_site
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn five_sites_are_verified_with_one_config_test_and_one_reload() {
    let w = World::new("10s");
    let new = w.renew_all(&SITES);
    let master = w.nginx.master_pid();
    let workers = w.nginx.worker_pids();
    let reloads = w.reloads();

    let out = w.batch(&["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let results = json_lines(&out);
    assert_eq!(results.len(), SITES.len(), "{}", text(&out));
    for name in SITES {
        let v = &results[name];
        let leaf = &new[name];
        assert_eq!(v["result"], "verified", "{v}");
        assert_eq!(v["old"]["sha256"], w.old[name].sha256.as_str());
        assert_eq!(v["new"]["sha256"], leaf.sha256.as_str());
        assert_eq!(v["served"][0]["sha256"], leaf.sha256.as_str());
        assert_eq!(v["served"][0]["trusted"], true);
        assert!(v["error"].is_null(), "{v}");
        for step in ["validate", "swap", "configtest", "reload", "probe"] {
            assert!(v["timings_ms"][step].is_u64(), "timing {step} in {v}");
        }
        // An independent client sees the new leaf, and the file holds it.
        assert_eq!(w.served(name), leaf.sha256, "{name}");
        assert_eq!(pki::leaf_sha256_file(&w.cert_file(name)), leaf.sha256);
    }
    assert_eq!(
        w.reloads() - reloads,
        1,
        "exactly one SIGHUP:\n{}",
        w.nginx.error_log()
    );
    assert_eq!(w.nginx.master_pid(), master, "the same master, reloaded");
    let now = w.nginx.worker_pids();
    assert!(
        now.iter().all(|p| !workers.contains(p)),
        "{workers:?} → {now:?}"
    );

    // The batch is done: running it again on the same inbox settles every
    // bundle as already installed and served (exit 0), sends no signal.
    let again = w.batch(&["--json"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        json_lines(&again)
            .values()
            .all(|v| v["result"] == "already_installed"),
        "{}",
        text(&again)
    );
    assert_eq!(w.reloads() - reloads, 1);
}

#[test]
fn a_batch_with_already_installed_items_writes_nothing_for_them_and_reloads_once() {
    let w = World::new("10s");
    w.renew_all(&SITES);
    let out = w.batch(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // b.test gets a second renewal; the other four bundles stay the ones
    // installed (an inbox a cron job runs again, a retried agent pass).
    let newer = w.ca.leaf(&["b.test"]).days(-1, 400).build();
    pki::write(&w.inbox, "b.test", &newer);
    let files = |name: &str| {
        let ssl = w.dir.path().join("ssl");
        [
            ssl.join(format!("{name}.pem")),
            ssl.join(format!("{name}.key")),
        ]
        .iter()
        .map(|p| {
            (
                p.clone(),
                pki::sha256_file(p),
                std::fs::metadata(p).expect("stat"),
            )
        })
        .map(|(p, sha, m)| {
            use std::os::unix::fs::MetadataExt;
            (p, sha, m.ino(), m.mtime_nsec())
        })
        .collect::<Vec<_>>()
    };
    let before: Vec<_> = ["a.test", "c.test", "d.test", "e.test"]
        .iter()
        .map(|n| files(n))
        .collect();
    let reloads = w.reloads();

    let out = w.batch(&["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows = json_lines(&out);
    assert_eq!(rows["b.test"]["result"], "verified", "{}", text(&out));
    assert_eq!(w.served("b.test"), newer.sha256);
    for name in ["a.test", "c.test", "d.test", "e.test"] {
        let v = &rows[name];
        assert_eq!(v["result"], "already_installed", "{v}");
        assert!(v["error"].is_null(), "{v}");
        assert_eq!(v["served"][0]["sha256"], v["new"]["sha256"], "{v}");
    }
    // Not rewritten (same bytes, same inodes, same mtimes), and the only
    // reload is b.test's.
    let after: Vec<_> = ["a.test", "c.test", "d.test", "e.test"]
        .iter()
        .map(|n| files(n))
        .collect();
    assert_eq!(after, before);
    assert_eq!(w.reloads() - reloads, 1, "{}", w.nginx.error_log());
}

#[test]
fn a_site_whose_endpoint_serves_a_cert_its_file_does_not_hold_is_refused_before_the_reload() {
    let w = World::new("2s");
    // e.test's endpoint serves a certificate that is not in e.test's file
    // (the server reads another file, or sits behind something else).
    let stranger = w.ca.leaf(&["e.test"]).days(-1, 90).build();
    let (_lb, _) = w.behind_a_second_nginx_serving("e.test", stranger.clone());
    let new = w.renew_all(&SITES);
    let e_file = w.cert_file("e.test");
    let e_before = pki::sha256_file(&e_file);
    let reloads = w.reloads();

    let out = w.batch(&["--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let rows = json_lines(&out);
    let e = &rows["e.test"];
    assert_eq!(e["result"], "rejected", "{e}");
    let why = e["error"].as_str().unwrap_or_default();
    for part in [
        stranger.sha256.as_str(),
        w.old["e.test"].sha256.as_str(),
        path(&e_file),
        "nothing was changed",
        "--force",
    ] {
        assert!(why.contains(part), "{part} in {why}");
    }
    for name in ["a.test", "b.test", "c.test", "d.test"] {
        assert_eq!(rows[name]["result"], "verified", "{}", rows[name]);
        assert_eq!(w.served(name), new[name].sha256, "{name}");
    }
    assert_eq!(pki::sha256_file(&e_file), e_before);
    assert_eq!(
        w.served("e.test"),
        w.old["e.test"].sha256,
        "the real server"
    );
    assert_eq!(
        w.reloads() - reloads,
        1,
        "no second reload for e.test:\n{}",
        w.nginx.error_log()
    );

    // --force goes on with it: installed, and (the endpoint never shows
    // it) rolled back.
    let newer = w.ca.leaf(&["e.test"]).days(-1, 400).build();
    pki::write(&w.inbox, "e.test", &newer);
    for name in ["a.test", "b.test", "c.test", "d.test"] {
        for ext in ["pem", "key"] {
            std::fs::remove_file(w.inbox.join(format!("{name}.{ext}"))).expect("rm");
        }
    }
    let out = w.batch(&["--json", "--force"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let rows = json_lines(&out);
    assert_eq!(
        rows["e.test"]["result"], "rolled_back",
        "{}",
        rows["e.test"]
    );
    let warnings = rows["e.test"]["warnings"].to_string();
    assert!(warnings.contains("because of --force"), "{warnings}");
}

#[test]
fn a_dual_certificate_site_renews_in_the_same_reload_as_the_others() {
    let w = World::new("10s");
    let rsa_old = w.add_rsa_pair("c.test");
    let others = ["a.test", "b.test", "d.test", "e.test"];
    let new = w.renew_all(&others);
    // c.test's renewal is for its RSA pair.
    let key = pki::rsa_key_pem(&w.dir.path().join("ssl"), "c.test-new");
    let rsa_new = w.ca.leaf(&["c.test"]).days(-1, 385).key(&key).build();
    pki::write(&w.inbox, "c.test", &rsa_new);
    let reloads = w.reloads();

    let out = w.batch(&["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let results = json_lines(&out);
    assert_eq!(results.len(), SITES.len(), "{}", text(&out));
    for name in others {
        assert_eq!(results[name]["result"], "verified", "{}", results[name]);
        assert_eq!(w.served(name), new[name].sha256, "{name}");
    }
    let c = &results["c.test"];
    assert_eq!(c["result"], "verified", "{c}");
    assert_eq!(c["old"]["sha256"], rsa_old.sha256.as_str(), "{c}");
    assert_eq!(
        c["served"][0]["sha256"],
        rsa_new.sha256.as_str(),
        "the batch probed c.test's RSA pair: {c}"
    );
    assert_eq!(w.served_with("c.test", RSA_SUITE), rsa_new.sha256);
    assert_eq!(
        w.served_with("c.test", ECDSA_SUITE),
        w.old["c.test"].sha256,
        "the ECDSA pair is untouched"
    );
    assert_eq!(
        w.reloads() - reloads,
        1,
        "one SIGHUP for the whole batch, the dual-certificate site included:\n{}",
        w.nginx.error_log()
    );
}

#[test]
fn a_bad_bundle_is_rejected_while_the_others_install() {
    let w = World::new("10s");
    let new = w.renew_all(&["a.test", "b.test", "d.test", "e.test"]);
    // c.test: a renewed cert with the key of another renewal.
    let c = w.renewed("c.test");
    let other = w.renewed("c.test");
    std::fs::write(w.inbox.join("c.test.pem"), c.fullchain_pem()).expect("write");
    pki::write_key(&w.inbox.join("c.test.key"), &other.key_pem);
    // A bundle for a site the config does not have.
    let stray = w.ca.leaf(&["nosuch.test"]).build();
    pki::write(&w.inbox, "nosuch.test", &stray);
    let c_before = pki::sha256_file(&w.cert_file("c.test"));
    let reloads = w.reloads();

    let out = w.batch(&["--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let results = json_lines(&out);
    assert_eq!(results.len(), 6, "{}", text(&out));
    for (name, leaf) in &new {
        assert_eq!(results[name]["result"], "verified", "{}", text(&out));
        assert_eq!(w.served(name), leaf.sha256);
    }
    let rc = &results["c.test"];
    assert_eq!(rc["result"], "rejected", "{rc}");
    assert!(
        rc["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not match")),
        "{rc}"
    );
    assert_eq!(pki::sha256_file(&w.cert_file("c.test")), c_before);
    assert_eq!(w.served("c.test"), w.old["c.test"].sha256);
    let rn = &results["nosuch.test"];
    assert_eq!(rn["result"], "rejected", "{rn}");
    let err = rn["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("nosuch.test.pem") && err.contains("not a site"),
        "{rn}"
    );
    assert_eq!(w.reloads() - reloads, 1);
}

#[test]
fn a_site_whose_endpoint_serves_another_cert_is_rolled_back_alone() {
    let w = World::new("2s");
    // e.test's endpoint is a second nginx (a load balancer in front, say)
    // that certswap's reload does not touch.
    let (lb, lb_leaf) = w.behind_a_second_nginx("e.test");

    let new = w.renew_all(&SITES);
    let e_before = pki::sha256_file(&w.cert_file("e.test"));
    let reloads = w.reloads();

    let out = w.batch(&[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("rolled back: e.test is back on its previous certificate"),
        "{}",
        text(&out)
    );
    assert!(stdout.contains("was not served"), "{}", text(&out));
    assert!(!stdout.contains("NOT served again"), "{}", text(&out));
    for name in ["a.test", "b.test", "c.test", "d.test"] {
        assert!(
            stdout.contains(&format!("verified: {name} serves the new certificate")),
            "{}",
            text(&out)
        );
        assert_eq!(
            w.served(name),
            new[name].sha256,
            "{name} keeps the new cert"
        );
    }
    assert_eq!(pki::sha256_file(&w.cert_file("e.test")), e_before);
    assert_eq!(
        w.served("e.test"),
        w.old["e.test"].sha256,
        "the real server"
    );
    assert_eq!(
        served_sha256(lb.port(), "e.test").expect("lb"),
        lb_leaf.sha256
    );
    assert_eq!(
        w.reloads() - reloads,
        2,
        "one reload, one to put e.test back:\n{}",
        w.nginx.error_log()
    );
}

#[test]
fn a_site_whose_endpoint_does_not_answer_is_refused_with_its_files_put_back() {
    let w = World::new("5s");
    // e.test's endpoint: a loopback port nothing listens on.
    let dead = support::free_port();
    w.point_endpoint("e.test", dead);
    let new = w.renew_all(&SITES);
    let ssl = w.dir.path().join("ssl");
    let e_files = [w.cert_file("e.test"), ssl.join("e.test.key")];
    let e_before: Vec<Vec<u8>> = e_files
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    let reloads = w.reloads();

    let out = w.batch(&["--json"]);
    let rows = json_lines(&out);
    assert_eq!(rows["e.test"]["result"], "rejected", "{}", text(&out));
    let why = rows["e.test"]["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("does not answer") && why.contains("nothing was changed"),
        "{why}"
    );
    for name in ["a.test", "b.test", "c.test", "d.test"] {
        assert_eq!(rows[name]["result"], "verified", "{}", text(&out));
        assert_eq!(w.served(name), new[name].sha256, "{name}");
    }
    // e.test: every byte back, nothing staged beside it, and the server
    // never loaded its new files (one reload, after they were put back).
    for (p, before) in e_files.iter().zip(&e_before) {
        assert_eq!(&std::fs::read(p).expect("read"), before, "{}", p.display());
    }
    let leftovers: Vec<String> = std::fs::read_dir(&ssl)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(w.served("e.test"), w.old["e.test"].sha256);
    assert_eq!(w.reloads() - reloads, 1, "{}", w.nginx.error_log());
}

/// A batch killed at every failpoint, while its I/O threads have each site
/// at a different step: the next command that touches a site repairs it
/// (`rollback --site`, one site at a time), and then every site is whole —
/// the old pair on disk and served (or, past the commit point, rolled back
/// to it), nothing left beside the targets or in the state dir — and a
/// clean batch afterwards is verified.
#[test]
fn a_batch_killed_at_every_step_leaves_every_site_repairable() {
    batch_killed_at_every_step(false);
}

#[test]
fn a_managed_batch_killed_at_every_step_leaves_every_site_repairable() {
    batch_killed_at_every_step(true);
}

fn batch_killed_at_every_step(managed: bool) {
    for point in certswap::failpoint::POINTS {
        let w = World::new("5s");
        if managed {
            let conf = std::fs::read_to_string(&w.config).expect("config");
            let conf = conf.replace("[[site]]\n", "[[site]]\nmode = \"managed\"\n");
            std::fs::write(&w.config, conf).expect("write config");
        }
        let new = w.renew_all(&SITES);
        let mut cmd = certswap();
        cmd.arg("--config")
            .arg(&w.config)
            .args(["install", "--batch"])
            .arg(&w.inbox)
            .env(certswap::failpoint::ENV, point);
        let crashed = cmd.output().expect("run certswap");
        assert_eq!(
            crashed.status.code(),
            None,
            "{point}: the batch must die by abort: {}",
            text(&crashed)
        );

        for name in SITES {
            let mut cmd = certswap();
            cmd.arg("--config")
                .arg(&w.config)
                .args(["rollback", "--site", name]);
            let next = cmd.output().expect("run certswap");
            let code = next.status.code();
            let rolled_back = code == Some(0);
            let nothing_earlier = code == Some(2)
                && String::from_utf8_lossy(&next.stderr).contains("no earlier version");
            assert!(
                nothing_earlier || (rolled_back && *point == "after-commit"),
                "{point} {name}: {}",
                text(&next)
            );
            let cert = w.cert_file(name);
            let key = w.dir.path().join("ssl").join(format!("{name}.key"));
            let certs = certswap::bundle::read_certs(&cert).expect("cert parses");
            let k = certswap::bundle::read_key(&key).expect("key parses");
            assert_eq!(certs[0].spki_der, k.spki_der, "{point} {name}: pair");
            assert_eq!(
                pki::leaf_sha256_file(&cert),
                w.old[name].sha256,
                "{point} {name}"
            );
            assert_eq!(w.served(name), w.old[name].sha256, "{point} {name}");
        }
        w.nginx
            .configtest()
            .unwrap_or_else(|e| panic!("{point}: config test fails: {e}"));
        let hidden: Vec<String> = std::fs::read_dir(w.dir.path().join("ssl"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(hidden.is_empty(), "{point}: {hidden:?}");
        for name in SITES {
            let site = w.dir.path().join("state/sites").join(name);
            for left in ["journal.json", "undo", "undo.tmp", "undo.done"] {
                assert!(!site.join(left).exists(), "{point} {name}: {left} left");
            }
        }

        let out = w.batch(&["--json"]);
        assert_eq!(out.status.code(), Some(0), "{point}: {}", text(&out));
        for name in SITES {
            assert_eq!(w.served(name), new[name].sha256, "{point} {name}");
            let linked = std::fs::symlink_metadata(w.cert_file(name))
                .expect("stat")
                .file_type()
                .is_symlink();
            assert_eq!(linked, managed, "{point} {name}: managed paths are links");
        }
    }
}

#[test]
fn a_failing_config_test_restores_every_site_without_a_reload() {
    let w = World::new("10s");
    let conf = std::fs::read_to_string(w.nginx.conf_path()).expect("read nginx.conf");
    w.nginx
        .set_config(&conf.replacen("events {", "this_is_not_a_directive on;\nevents {", 1));
    w.renew_all(&SITES);
    let before: Vec<String> = SITES
        .iter()
        .map(|n| pki::sha256_file(&w.cert_file(n)))
        .collect();
    let workers = w.nginx.worker_pids();
    let reloads = w.reloads();

    let out = w.batch(&["--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let results = json_lines(&out);
    for (name, old_file) in SITES.iter().zip(&before) {
        let v = &results[*name];
        assert_eq!(v["result"], "rolled_back", "{v}");
        let err = v["error"].as_str().unwrap_or_default();
        assert!(err.contains("this_is_not_a_directive"), "{v}");
        assert_eq!(&pki::sha256_file(&w.cert_file(name)), old_file);
        assert_eq!(w.served(name), w.old[*name].sha256);
    }
    assert_eq!(
        w.reloads(),
        reloads,
        "no reload without a passing config test"
    );
    assert_eq!(w.nginx.worker_pids(), workers);
}

#[test]
fn dry_run_checks_every_bundle_and_changes_nothing() {
    let w = World::new("10s");
    w.renew_all(&SITES);
    let before: Vec<String> = SITES
        .iter()
        .map(|n| pki::sha256_file(&w.cert_file(n)))
        .collect();
    let out = w.batch(&["--dry-run", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let results = json_lines(&out);
    assert!(
        results.values().all(|v| v["result"] == "dry_run"),
        "{}",
        text(&out)
    );
    let after: Vec<String> = SITES
        .iter()
        .map(|n| pki::sha256_file(&w.cert_file(n)))
        .collect();
    assert_eq!(before, after);
    assert!(
        !w.dir.path().join("state/lock").exists(),
        "not even a lock file"
    );
}

#[test]
fn an_empty_inbox_is_nothing_to_do() {
    let w = World::new("10s");
    let out = w.batch(&["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing to install"),
        "{}",
        text(&out)
    );
    let missing = w.dir.path().join("no-such-dir");
    let out = certswap()
        .arg("--config")
        .arg(&w.config)
        .args(["install", "--batch", path(&missing)])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn twenty_sites_pass_the_address_gate_and_a_wrong_endpoint_still_rolls_back() {
    // With 16+ sites the wait proves old workers gone per address, then
    // checks each site with one fresh handshake; a site whose endpoint
    // serves something else must still fail and roll back.
    let w = World::with_sites("3s", &MANY);
    let (_lb, _) = w.behind_a_second_nginx("s07.test"); // kept running

    let new = w.renew_all(&MANY);
    let out = w.batch(&["--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let rows = json_lines(&out);
    assert_eq!(rows.len(), MANY.len(), "{}", text(&out));
    for name in MANY {
        if name == "s07.test" {
            assert_eq!(rows[name]["result"], "rolled_back", "{}", rows[name]);
            assert_eq!(w.served(name), w.old[name].sha256);
        } else {
            assert_eq!(rows[name]["result"], "verified", "{name}: {}", rows[name]);
            assert_eq!(w.served(name), new[name].sha256, "{name}");
        }
    }
}
