//! One function per CLI command: load what it needs, call the core, print
//! the result, return the exit code. Errors become one sentence on stderr
//! here, at the edge.

use std::path::Path;
use std::time::Duration;

use crate::cli::{CheckArgs, Cli, Command, InstallArgs, ProbeArgs, RollbackArgs};
use crate::config::Config;
use crate::install::{self, Env, Request};
use crate::probe::{self, Prober, Target};
use crate::report::{self, Outcome, ResultKind};
use crate::server;
use crate::store::Store;

/// Exit codes of DESIGN.md.
pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_ENV: u8 = 2;

/// Run the parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> u8 {
    let result = match &cli.command {
        Command::Probe(a) => probe_cmd(a),
        Command::Check(a) => check_cmd(&cli.config, a),
        Command::Install(a) => install_cmd(&cli.config, a),
        Command::Rollback(a) => rollback_cmd(&cli.config, a),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("certswap: {msg}");
            EXIT_ENV
        }
    }
}

/// A usage or environment error: one sentence, exit 2.
type CmdResult = Result<u8, String>;

fn probe_cmd(a: &ProbeArgs) -> CmdResult {
    let timeout = parse_duration("--timeout", &a.timeout)?;
    let mut target = Target::parse(&a.target, None).map_err(|e| e.to_string())?;
    if let Some(sni) = &a.sni {
        target.sni = sni.clone();
    }
    let expect_sha = a.expect_sha256.as_deref().map(normalize_hex);
    let expect_not_after = match &a.expect_not_after {
        None => None,
        Some(s) => Some(
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|e| format!("--expect-not-after {s:?} is not an RFC 3339 time: {e}"))?,
        ),
    };
    let prober = Prober::new(a.ca.as_deref(), timeout).map_err(|e| e.to_string())?;
    let served = probe::block_on(prober.probe(&target)).map_err(|e| e.to_string())?;

    let mut failures = Vec::new();
    if let Some(want) = &expect_sha
        && &served.leaf.sha256 != want
    {
        failures.push(format!(
            "served sha256 {} is not the expected {want}",
            served.leaf.sha256
        ));
    }
    if let Some(want) = expect_not_after
        && served.leaf.not_after != want
    {
        failures.push(format!(
            "served notAfter {} is not the expected {}",
            crate::cert::rfc3339(served.leaf.not_after),
            crate::cert::rfc3339(want)
        ));
    }
    if a.json {
        let mut v = served.to_json();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("expectations_met".into(), (failures.is_empty()).into());
        }
        println!("{v}");
    } else {
        print!("{}", report::served_text(&served));
    }
    if failures.is_empty() {
        Ok(EXIT_OK)
    } else {
        eprintln!("certswap: {}: {}", target, failures.join("; "));
        Ok(EXIT_FAILED)
    }
}

fn check_cmd(config: &Path, a: &CheckArgs) -> CmdResult {
    let cfg;
    let site = match &a.site {
        Some(name) => {
            cfg = Config::load(config).map_err(|e| e.to_string())?;
            Some(cfg.site(name).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let mut out = Outcome::new(site.map_or("", |s| s.name.as_str()));
    let b = &a.bundle;
    install::check(
        site,
        &b.cert,
        b.chain.as_deref(),
        b.key.as_deref(),
        false,
        &mut out,
    );
    if out.result == ResultKind::DryRun {
        out.result = ResultKind::Valid;
    }
    emit(&out, a.json)
}

fn install_cmd(config: &Path, a: &InstallArgs) -> CmdResult {
    let cfg = Config::load(config).map_err(|e| e.to_string())?;
    let site = cfg.site(&a.site).map_err(|e| e.to_string())?;
    if site.mode == crate::config::Mode::Managed {
        return Err(format!(
            "{}: site {} has mode = \"managed\", which this version does not support yet; use \"in-place\"",
            cfg.path.display(),
            site.name
        ));
    }
    with_env(&cfg, a.json, |env| {
        let b = &a.bundle;
        install::install(
            env,
            &Request {
                site,
                cert: &b.cert,
                key: b.key.as_deref(),
                chain: b.chain.as_deref(),
                force: a.force,
                dry_run: a.dry_run,
            },
        )
    })
}

fn rollback_cmd(config: &Path, a: &RollbackArgs) -> CmdResult {
    let cfg = Config::load(config).map_err(|e| e.to_string())?;
    let site = cfg.site(&a.site).map_err(|e| e.to_string())?;
    with_env(&cfg, a.json, |env| install::rollback(env, site))
}

/// Build server, prober and store from the config, run `f`, print.
fn with_env(
    cfg: &Config,
    json: bool,
    f: impl FnOnce(&Env<'_>) -> Result<Outcome, install::InstallError>,
) -> CmdResult {
    let server = server::from_config(&cfg.server);
    let prober =
        Prober::new(cfg.probe.ca_file.as_deref(), cfg.probe.timeout).map_err(|e| e.to_string())?;
    let store = Store::open(&cfg.state_dir).map_err(|e| e.to_string())?;
    let env = Env {
        config: cfg,
        server: server.as_ref(),
        prober: &prober,
        store: &store,
    };
    match f(&env) {
        Ok(out) => emit(&out, json),
        Err(e) => {
            if json {
                let mut out = Outcome::new("");
                out.reject(e.to_string());
                println!("{}", serde_json::to_string(&out).unwrap_or_default());
            }
            Err(e.to_string())
        }
    }
}

fn emit(out: &Outcome, json: bool) -> CmdResult {
    if json {
        let text =
            serde_json::to_string(out).map_err(|e| format!("cannot encode the result: {e}"))?;
        println!("{text}");
    } else {
        print!("{}", out.to_text());
    }
    if let (Some(e), false) = (&out.error, json) {
        eprintln!("certswap: {e}");
    }
    Ok(out.result.exit_code())
}

fn parse_duration(flag: &str, s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{flag} {s:?} is not a duration like \"5s\": {e}"))
}

/// `AB:CD:..` or `abcd..` → `abcd..` (openssl prints fingerprints with colons).
fn normalize_hex(s: &str) -> String {
    s.chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase()
}
