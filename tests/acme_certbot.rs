//! Real certbot against real pebble (Let's Encrypt's test CA) on loopback,
//! with real nginx: the deploy hook as the fast path, and the agent's
//! certbot and acme.sh sources that install what the ACME client renewed
//! when the hook failed or never ran (issue 19). Every leaf is checked with
//! `openssl s_client`, not with certswap's own probe.
//!
//! One pebble serves the whole file (it starts in about a second, but each
//! certbot run against it takes seconds too).

mod agent_util;
mod support;

use std::path::Path;
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

/// Append a `[[source]]` (and more TOML) to the world's config.
fn add_to_config(w: &World, toml: &str) {
    let mut text = std::fs::read_to_string(&w.config).expect("read config");
    text.push_str(toml);
    std::fs::write(&w.config, text).expect("write config");
}

fn source_toml(kind: &str, dir: &Path) -> String {
    format!(
        "\n[[source]]\nkind = \"{kind}\"\npath = {}\n",
        support::toml_path(dir)
    )
}

fn status_json(w: &World) -> serde_json::Value {
    let o = w.run(&["status", "--json"]);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("status --json: {e}: {}", text(&o)))
}

#[test]
fn a_renewal_whose_deploy_hook_failed_shows_as_waiting_and_the_agent_installs_it() {
    let w = world();
    let cb = certbot();
    let env = hook_env(&w);
    let hook = deploy_hook_command();
    let o = cb.certonly(&[SITE, ALIAS], &["--deploy-hook", &hook], &env);
    assert!(o.status.success(), "certonly: {}", out(&o));
    let first = leaf_of(&cb.live(SITE).join("fullchain.pem"));
    assert_served(&w, &first);

    // The server's config breaks (someone else's edit) during the renewal:
    // the hook's install fails, certbot still says all renewals succeeded.
    let conf = w.server.conf_path();
    let good = std::fs::read_to_string(&conf).expect("read nginx.conf");
    w.server
        .set_config(&format!("{good}\nthis_directive_breaks_the_config;\n"));
    let o = cb.renew(&[], &env);
    assert!(
        o.status.success(),
        "certbot exits 0 after a failed hook: {}",
        out(&o)
    );
    let second = leaf_of(&cb.live(SITE).join("fullchain.pem"));
    assert_ne!(second, first);
    assert_eq!(
        support::served_sha256(w.server.port(), SITE).expect("s_client"),
        first,
        "the failed install left the old certificate served"
    );

    // status knows from the hook's record where the renewal waits, and why.
    let o = w.run(&["status"]);
    let shown = text(&o);
    assert_eq!(o.status.code(), Some(1), "{shown}");
    assert!(shown.contains("waiting"), "{shown}");
    assert!(shown.contains(&format!("certbot live/{SITE}")), "{shown}");
    assert!(shown.contains("the deploy hook failed at"), "{shown}");
    let j = status_json(&w);
    let waiting = &j["sites"][0]["waiting"];
    assert_eq!(waiting["sha256"], second.as_str(), "{j}");
    let reason = waiting["last_failure"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(!reason.is_empty(), "{j}");
    assert_eq!(waiting["last_failure"]["sha256"], second.as_str(), "{j}");

    // The agent with the certbot store as a source: while the config is
    // still broken its install fails too, and the metric says waiting.
    let metrics = format!("127.0.0.1:{}", support::free_port());
    add_to_config(
        &w,
        &format!(
            "{}\n[agent]\nmetrics_listen = \"{metrics}\"\n",
            source_toml("certbot", &cb.config_dir())
        ),
    );
    let log = w.dir.path().join("agent.log");
    let daemon = agent_util::Daemon::spawn(&w.config, &log);
    let want = format!("certswap_renewal_waiting{{site=\"{SITE}\"}} 1");
    let mut seen = String::new();
    for _ in 0..200 {
        seen = agent_util::scrape(&metrics).unwrap_or_default();
        if seen.contains(&want) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(seen.contains(&want), "{seen}\nagent log:\n{}", daemon.log());
    drop(daemon);
    assert_eq!(
        support::served_sha256(w.server.port(), SITE).expect("s_client"),
        first
    );

    // Config fixed: the next pass installs what certbot renewed.
    w.server.set_config(&good);
    let o = w.run(&["run", "--once"]);
    assert!(o.status.success(), "run --once: {}", text(&o));
    assert_served(&w, &second);
    assert_eq!(leaf_of(&w.cert), second);
    assert!(w.pair_matches());
    let o = w.run(&["status"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        status_json(&w)["sites"][0]["waiting"],
        serde_json::Value::Null
    );
    assert!(
        !w.dir
            .path()
            .join("state/hook")
            .join(format!("{SITE}.json"))
            .exists(),
        "the installed renewal settles the hook's failure record"
    );
}

#[test]
fn an_acme_sh_domain_dir_is_installed_by_the_agent_and_an_installed_one_costs_no_reload() {
    let w = world();
    let cb = certbot();
    // No hook: certbot only issues; the files become an acme.sh domain dir.
    let o = cb.certonly(&[SITE, ALIAS], &[], &[]);
    assert!(o.status.success(), "certonly: {}", out(&o));
    let home = w.dir.path().join("acme.sh");
    acmesh_from_lineage(&cb.live(SITE), &home, SITE);
    let issued = leaf_of(&cb.live(SITE).join("fullchain.pem"));
    assert_eq!(
        support::served_sha256(w.server.port(), SITE).expect("s_client"),
        w.old.sha256
    );
    add_to_config(&w, &source_toml("acme.sh", &home));

    let o = w.run(&["status"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("acme.sh {SITE}")),
        "{}",
        text(&o)
    );

    let o = w.run(&["run", "--once"]);
    assert!(o.status.success(), "run --once: {}", text(&o));
    assert_served(&w, &issued);
    assert!(w.pair_matches());

    // Installed already: the next pass reads it and changes nothing.
    let workers = w.server.worker_pids();
    let before = w.snapshot();
    let o = w.run(&["run", "--once"]);
    assert!(o.status.success(), "run --once: {}", text(&o));
    assert_eq!(w.server.worker_pids(), workers, "no reload: {}", text(&o));
    let after = w.snapshot();
    let changed: Vec<_> = after
        .iter()
        .filter(|(p, h)| {
            before.get(*p) != Some(h) && !p.starts_with(w.dir.path().join("state/agent"))
        })
        .collect();
    assert!(changed.is_empty(), "{changed:?}");
    let o = w.run(&["status"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// Every file under the world's cert and state dirs except the agent's
/// own scratch space (`state/agent`).
fn files_outside_agent_dir(w: &World) -> std::collections::BTreeMap<std::path::PathBuf, String> {
    let scratch = w.dir.path().join("state/agent");
    let mut all = w.snapshot();
    all.retain(|p, _| !p.starts_with(&scratch));
    all
}

#[test]
fn a_lineage_with_a_key_others_can_read_or_a_link_out_of_its_archive_is_not_installed() {
    use std::os::unix::fs::PermissionsExt;
    let w = world();
    let cb = certbot();
    let o = cb.certonly(&[SITE, ALIAS], &[], &[]);
    assert!(o.status.success(), "certonly: {}", out(&o));
    add_to_config(&w, &source_toml("certbot", &cb.config_dir()));
    let live = cb.live(SITE);
    let key = std::fs::canonicalize(live.join("privkey.pem")).expect("privkey target");
    let before = files_outside_agent_dir(&w);

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let o = w.run(&["run", "--once"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("readable by everyone"), "{}", text(&o));
    assert!(text(&o).contains(path(&key)), "{}", text(&o));
    assert_eq!(files_outside_agent_dir(&w), before, "not one byte changed");
    assert_eq!(w.served(), w.old.sha256);

    // The key is private again, but fullchain.pem now points outside the
    // lineage's archive (a copy of the same bytes elsewhere).
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let elsewhere = cb.dir.path().join("elsewhere.pem");
    std::fs::copy(live.join("fullchain.pem"), &elsewhere).expect("copy");
    std::fs::remove_file(live.join("fullchain.pem")).expect("rm link");
    std::os::unix::fs::symlink(&elsewhere, live.join("fullchain.pem")).expect("symlink");
    let o = w.run(&["run", "--once"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("outside the lineage's archive"),
        "{}",
        text(&o)
    );
    assert_eq!(files_outside_agent_dir(&w), before, "not one byte changed");
    assert_eq!(w.served(), w.old.sha256);
}

#[test]
fn the_agent_watching_a_certbot_store_installs_a_renewal_that_ran_without_any_hook() {
    let w = world();
    let cb = certbot();
    let o = cb.certonly(&[SITE, ALIAS], &[], &[]);
    assert!(o.status.success(), "certonly: {}", out(&o));
    let first = leaf_of(&cb.live(SITE).join("fullchain.pem"));
    // An interval far beyond the test: only the first pass and the watch
    // can install anything.
    add_to_config(
        &w,
        &format!(
            "{}\n[agent]\ninterval = \"1h\"\n",
            source_toml("certbot", &cb.config_dir())
        ),
    );
    let daemon = agent_util::Daemon::spawn(&w.config, &w.dir.path().join("agent.log"));
    wait_served(w.server.port(), SITE, &first, 3, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", daemon.log()));
    assert!(
        daemon.wait_log("watching", Duration::from_secs(10)),
        "{}",
        daemon.log()
    );

    let o = cb.renew(&[], &[]);
    assert!(o.status.success(), "renew: {}", out(&o));
    let second = leaf_of(&cb.live(SITE).join("fullchain.pem"));
    assert_ne!(second, first);
    wait_served(w.server.port(), SITE, &second, 3, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", daemon.log()));
    assert_eq!(leaf_of(&w.cert), second);
}

/// certbot's hook, run again on the lineage it already installed (a retry
/// after a partial failure, a second `--deploy-hook` in a cron job): exit 0,
/// "already installed and served", no reload, not one byte changed.
#[test]
fn the_deploy_hook_run_again_on_a_real_lineage_is_already_installed_with_no_reload() {
    let w = world();
    let cb = certbot();
    let env = hook_env(&w);
    let hook = deploy_hook_command();
    let o = cb.certonly(&[SITE, ALIAS], &["--deploy-hook", &hook], &env);
    assert!(o.status.success(), "certonly: {}", out(&o));
    let issued = leaf_of(&cb.live(SITE).join("fullchain.pem"));
    assert_served(&w, &issued);

    let support::world::Server::Nginx(nginx) = &w.server else {
        unreachable!("world() is nginx")
    };
    nginx.log_reloads();
    let reloads = nginx.reloads();
    let before = w.snapshot();
    let lineage = cb.live(SITE);
    let domains = format!("{SITE} {ALIAS}");
    for _ in 0..2 {
        let o = w.run_env(
            &["deploy-hook"],
            &[
                ("RENEWED_LINEAGE", path(&lineage)),
                ("RENEWED_DOMAINS", &domains),
            ],
        );
        assert_eq!(o.status.code(), Some(0), "{}", out(&o));
        assert!(
            out(&o).contains("already installed and served"),
            "{}",
            out(&o)
        );
    }
    assert_eq!(nginx.reloads(), reloads, "no reload");
    assert_eq!(w.snapshot(), before, "nothing written");
    assert_served(&w, &issued);
}

/// A site that nginx and certswap both point at certbot's `live/` links
/// (what certbot's docs tell people to configure): `adopt --apply` moves it
/// onto certswap's own copies with the same leaf served, and certbot's next
/// renewal then goes through the hook as an in-place install.
#[test]
fn adopt_apply_moves_a_site_off_a_real_certbot_lineage_and_renewals_follow() {
    let w = world();
    let cb = certbot();
    let env = hook_env(&w);
    let o = cb.certonly(&[SITE, ALIAS], &[], &env);
    assert!(o.status.success(), "certonly: {}", out(&o));
    let live = cb.live(SITE);
    let (fullchain, privkey) = (live.join("fullchain.pem"), live.join("privkey.pem"));
    let issued = leaf_of(&fullchain);

    // nginx and certswap.toml both read live/ now.
    let conf = w.server.conf_path();
    let nginx_conf = std::fs::read_to_string(&conf).expect("read nginx.conf");
    assert!(nginx_conf.contains(path(&w.cert)) && nginx_conf.contains(path(&w.key)));
    w.server.set_config(
        &nginx_conf
            .replace(path(&w.cert), path(&fullchain))
            .replace(path(&w.key), path(&privkey)),
    );
    let support::world::Server::Nginx(nginx) = &w.server else {
        unreachable!("world() is nginx")
    };
    nginx
        .reload_and_wait(Duration::from_secs(10))
        .expect("reload onto live/");
    assert_served(&w, &issued);
    let toml = std::fs::read_to_string(&w.config).expect("read config");
    let on_live = toml
        .replace(
            &support::toml_path(&w.cert),
            &support::toml_path(&fullchain),
        )
        .replace(&support::toml_path(&w.key), &support::toml_path(&privkey));
    assert!(on_live.contains(path(&live)), "{on_live}");
    std::fs::write(&w.config, on_live).expect("write config");

    // discover marks it; adopt moves it.
    let o = w.run(&["discover"]);
    assert!(
        out(&o).contains("certbot's live/ symlink") && out(&o).contains("certswap adopt"),
        "{}",
        out(&o)
    );
    let o = w.run(&["adopt", "--site", SITE, "--apply"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert_served(&w, &issued);
    let adopted = std::fs::read_to_string(&conf).expect("read nginx.conf");
    assert!(!adopted.contains(path(&live)), "{adopted}");
    let cfg = std::fs::read_to_string(&w.config).expect("read config");
    assert!(!cfg.contains(path(&live)), "{cfg}");

    // certbot's next renewal: through the hook, in place, served.
    let hook = deploy_hook_command();
    let o = cb.renew(&["--deploy-hook", &hook], &env);
    assert!(o.status.success(), "renew: {}", out(&o));
    let renewed = leaf_of(&fullchain);
    assert_ne!(renewed, issued, "certbot renewed");
    assert_served(&w, &renewed);
}
