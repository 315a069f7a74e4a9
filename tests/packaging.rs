//! What the packages ship, checked without building them (scripts/package
//! builds and lists the real .deb/.rpm): the default config and the example
//! configs are valid, and so is every key they document; the asset sources
//! named in Cargo.toml exist; the man page and completions come from the
//! binary; the systemd unit's capability set is enough for an install whose
//! key belongs to another user, and each capability in it is needed; the
//! unit's exposure stays low; the fleet manifest builder writes what the
//! HTTP source reads.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use certswap::config::Config;
use support::pki::{self, Leaf};
use support::world::{SITE, World, path, text};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn read(p: &str) -> String {
    std::fs::read_to_string(repo(p)).unwrap_or_else(|e| panic!("read {p}: {e}"))
}

/// Uncomment every commented-out setting (`# key = ...`, `# [table]`,
/// `# [[table]]`), leaving prose comments alone.
fn uncomment(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let body = line
            .strip_prefix("# ")
            .or_else(|| line.strip_prefix('#'))
            .filter(|b| is_setting(b));
        out.push_str(body.unwrap_or(line));
        out.push('\n');
    }
    out
}

fn is_setting(line: &str) -> bool {
    let t = line.trim_start();
    if t.starts_with('[') {
        return t.ends_with(']') || t.contains("] ") || t.contains("]#");
    }
    match t.split_once('=') {
        Some((key, _)) => {
            let key = key.trim();
            !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        }
        None => false,
    }
}

fn parse(text: &str, name: &str) -> Config {
    Config::parse(text, Path::new(name)).unwrap_or_else(|e| panic!("{e}\n---\n{text}"))
}

#[test]
fn shipped_config_is_valid_and_has_no_sites() {
    let c = parse(&read("packaging/certswap.toml"), "packaging/certswap.toml");
    assert!(c.sites.is_empty());
    assert!(c.sources.is_empty());
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/certswap"));
    assert_eq!(c.server.binary, PathBuf::from("/usr/sbin/nginx"));
}

#[test]
fn every_key_the_shipped_config_documents_is_real() {
    let full = uncomment(&read("packaging/certswap.toml"));
    let c = parse(&full, "packaging/certswap.toml (uncommented)");
    assert_eq!(c.sites.len(), 1, "{full}");
    assert_eq!(c.sites[0].endpoints.len(), 2);
    assert!(c.sites[0].chain.is_some());
    assert_eq!(c.sources.len(), 2, "an inbox and an http source");
    assert!(c.agent.metrics_listen.is_some());
    assert_eq!(
        c.server.reload_command.as_deref(),
        Some(&["systemctl".to_string(), "reload".into(), "nginx".into()][..])
    );
    // Nothing that looks like a setting was left commented out.
    for line in full.lines() {
        assert!(
            !line.starts_with('#') || !is_setting(line.trim_start_matches(['#', ' '])),
            "not uncommented: {line}"
        );
    }
}

#[test]
fn example_configs_are_valid_as_shipped_and_uncommented() {
    for name in ["examples/nginx-debian.toml", "examples/rhel-httpd.toml"] {
        let text = read(name);
        let c = parse(&text, name);
        assert_eq!(c.sites.len(), 1, "{name}");
        parse(&uncomment(&text), name);
    }
    let rhel = parse(&read("examples/rhel-httpd.toml"), "rhel");
    assert_eq!(rhel.server.binary, PathBuf::from("/usr/sbin/httpd"));
    assert_eq!(rhel.server.pid_file, PathBuf::from("/run/httpd/httpd.pid"));

    // The fleet snippet goes into a host's config.
    let agent = read("examples/fleet/agent.toml");
    for text in [agent.clone(), uncomment(&agent)] {
        let c = parse(
            &format!("[server]\nkind = \"nginx\"\n{text}"),
            "fleet/agent.toml",
        );
        assert_eq!(c.sources.len(), 1);
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&read("examples/fleet/manifest.example.json")).expect("json");
    assert_eq!(manifest["version"], 1);
}

/// `dir/pattern` where pattern may hold one `*` in the file name.
fn glob_matches(pattern: &str) -> usize {
    let (dir, file) = pattern.rsplit_once('/').unwrap_or((".", pattern));
    let Some((pre, post)) = file.split_once('*') else {
        return usize::from(repo(pattern).is_file());
    };
    std::fs::read_dir(repo(dir))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with(pre) && n.ends_with(post) && e.path().is_file()
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn package_assets_named_in_cargo_toml_exist() {
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml");
    let meta = &manifest["package"]["metadata"];
    let mut sources: Vec<String> = Vec::new();
    for a in meta["deb"]["assets"].as_array().expect("deb assets") {
        sources.push(a[0].as_str().expect("source").to_string());
    }
    for a in meta["generate-rpm"]["assets"]
        .as_array()
        .expect("rpm assets")
    {
        sources.push(a["source"].as_str().expect("source").to_string());
    }
    for key in [
        "post_install_script",
        "pre_uninstall_script",
        "post_uninstall_script",
    ] {
        sources.push(meta["generate-rpm"][key].as_str().expect(key).to_string());
    }
    assert!(sources.len() > 20, "{sources:?}");
    for s in sources.iter().filter(|s| !s.starts_with("target/")) {
        assert!(
            glob_matches(s) > 0,
            "Cargo.toml names {s}, which matches no file"
        );
    }
    // The generated ones come from the commands scripts/package runs.
    for s in sources.iter().filter(|s| s.starts_with("target/package/")) {
        assert!(
            read("scripts/package").contains(s.trim_start_matches("target/package/")),
            "scripts/package does not generate {s}"
        );
    }
    for script in ["packaging/debian/postinst", "packaging/debian/postrm"] {
        let mode = std::fs::metadata(repo(script)).expect(script).mode();
        assert_eq!(mode & 0o111, 0o111, "{script} is executable");
        assert!(read(script).contains("#DEBHELPER#"), "{script}");
    }
}

fn certswap(args: &[&str]) -> Output {
    support::certswap()
        .args(args)
        .output()
        .expect("run certswap")
}

#[test]
fn man_page_and_completions_come_from_the_binary() {
    let man = certswap(&["man"]);
    assert_eq!(man.status.code(), Some(0), "{}", text(&man));
    let roff = String::from_utf8_lossy(&man.stdout);
    assert!(roff.contains(".TH certswap"), "{roff}");
    assert!(roff.contains("deploy\\-hook"), "subcommands listed: {roff}");
    for shell in ["bash", "zsh", "fish"] {
        let out = certswap(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains("deploy-hook"), "{shell}: {script}");
    }
}

/// `CapabilityBoundingSet=` of the agent's unit, as `setpriv` names them.
fn unit_caps() -> Vec<String> {
    let unit = read("packaging/systemd/certswap.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet= in the unit");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect()
}

/// `certswap install` of `new` under `setpriv`: bounding set `caps` only,
/// no_new_privs — what systemd does for the unit.
fn install_with_caps(w: &World, caps: &[String], cert: &Path, key: &Path) -> Output {
    let set: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    Command::new("setpriv")
        .arg("--bounding-set")
        .arg(format!("-all,{}", set.join(",")))
        .args(["--no-new-privs", "--"])
        .arg(env!("CARGO_BIN_EXE_certswap"))
        .arg("--config")
        .arg(&w.config)
        .args(["install", "--site", SITE, "--cert", path(cert), "--key"])
        .arg(key)
        .env_remove("CERTSWAP_CONFIG")
        .output()
        .expect("run setpriv")
}

#[test]
fn unit_capabilities_suffice_and_each_is_needed() {
    let root = nix::unistd::Uid::effective().is_root();
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok();
    if !root || !setpriv {
        eprintln!("skipped: needs root and setpriv (util-linux)");
        return;
    }
    let caps = unit_caps();
    assert_eq!(caps, ["chown", "fowner", "dac_override"], "the unit's set");

    // The key belongs to another user (a deploy user, www-data: uid 33),
    // group-readable, as on many hosts.
    let w = World::nginx();
    nix::unistd::chown(
        &w.key,
        Some(nix::unistd::Uid::from_raw(33)),
        Some(nix::unistd::Gid::from_raw(33)),
    )
    .expect("chown key");
    std::fs::set_permissions(&w.key, std::fs::Permissions::from_mode(0o640)).expect("chmod");

    // Without any one of them the install fails before the server's files
    // change: read the key (DAC_OVERRIDE), give the new one its owner
    // (CHOWN), then its mode (FOWNER).
    let new: Leaf = w.renewed();
    let (cert, key) = w.bundle("new", &new);
    let targets = || (pki::sha256_file(&w.cert), pki::sha256_file(&w.key));
    let before = targets();
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let out = install_with_caps(&w, &fewer, &cert, &key);
        assert_eq!(
            out.status.code(),
            Some(2),
            "without {missing}: {}",
            text(&out)
        );
        assert_eq!(targets(), before, "without {missing}: {}", text(&out));
        assert_eq!(w.served(), w.old.sha256, "without {missing}");
    }

    // With the unit's set: verified, and the new key has the old owner/mode.
    let out = install_with_caps(&w, &caps, &cert, &key);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(w.served(), new.sha256);
    let m = std::fs::metadata(&w.key).expect("key");
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (33, 33, 0o640));
    assert!(w.pair_matches());
}

#[test]
fn unit_exposure_stays_low() {
    let Ok(out) = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(repo("packaging/systemd/certswap.service"))
        .output()
    else {
        eprintln!("skipped: no systemd-analyze");
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(score) = stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for certswap.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok())
    else {
        eprintln!(
            "skipped: systemd-analyze gave no score: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    };
    assert!(score <= 2.5, "exposure {score} > 2.5:\n{stdout}");
}
