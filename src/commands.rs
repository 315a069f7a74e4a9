//! One function per CLI command: load what it needs, call the core, print
//! the result, return the exit code. Errors become one sentence on stderr
//! here, at the edge.

use std::path::Path;
use std::time::Duration;

use crate::bundle::Files;
use crate::cli::{
    AdoptArgs, CheckArgs, Cli, Command, CompletionsArgs, DeployHookArgs, InstallArgs, ProbeArgs,
    RollbackArgs, RunArgs, StatusArgs,
};
use crate::config::Config;
use crate::host::{self, Host};
use crate::install::{self, Env};
use crate::probe::{self, Prober, Target};
use crate::report::{self, Outcome, ResultKind};

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
        Command::Status(a) => status_cmd(&cli.config, a),
        Command::Discover(a) => discover_cmd(&cli.config, a),
        Command::Run(a) => run_cmd(&cli.config, a),
        Command::DeployHook(a) => deploy_hook_cmd(&cli.config, a),
        Command::Adopt(a) => adopt_cmd(&cli.config, a),
        Command::Sources(a) => sources_cmd(&cli.config, a),
        Command::Manifest(crate::cli::ManifestCommand::Build(a)) => {
            crate::fleet_cmd::manifest_build_cmd(a)
        }
        Command::Rollout(a) => crate::fleet_cmd::rollout_cmd(a),
        Command::Completions(a) => completions_cmd(a),
        Command::Man => man_cmd(),
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
    if let Some(file) = &a.targets {
        return probe_targets_cmd(a, file, timeout);
    }
    let Some(spec) = &a.target else {
        return Err("probe needs HOST:PORT or --targets FILE".into());
    };
    let mut target = Target::parse(spec, None).map_err(|e| e.to_string())?;
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
    let prober = probe_prober(a, timeout)?;
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

/// `probe --targets FILE`: every line concurrently on one runtime; a
/// failed target is a row, not a crash. Exit 0 when every target answered.
fn probe_targets_cmd(a: &ProbeArgs, file: &Path, timeout: Duration) -> CmdResult {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
    let mut targets = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut t =
            Target::parse(line, None).map_err(|e| format!("{}:{}: {e}", file.display(), i + 1))?;
        if let Some(sni) = &a.sni {
            t.sni = sni.clone();
        }
        targets.push(t);
    }
    let prober = probe_prober(a, timeout)?;
    // Each row is rendered on its engine as its handshake ends: the
    // chains are dropped there, and no serial pass over 10,000 answers
    // follows the last handshake.
    let rows = crate::engines::probe_all_into(&prober, &targets, a.concurrency.max(1), |i, r| {
        let t = &targets[i];
        let row = match &r {
            Ok(s) if a.json => s.json_line(t),
            Ok(s) => format!(
                "{t}  notAfter={}  sha256={}  trusted={}",
                crate::cert::openssl_date(s.leaf.not_after),
                s.leaf.sha256,
                if s.trusted { "yes" } else { "no" }
            ),
            Err(e) if a.json => {
                serde_json::json!({"target": t.to_string(), "error": e.to_string()}).to_string()
            }
            Err(e) => format!("{t}  error: {e}"),
        };
        (row, r.is_err())
    });
    let mut failed = 0usize;
    let mut out = String::with_capacity(rows.iter().map(|(row, _)| row.len() + 1).sum());
    for (row, error) in rows {
        failed += usize::from(error);
        out.push_str(&row);
        out.push('\n');
    }
    print!("{out}");
    if failed > 0 {
        eprintln!(
            "certswap: {failed} of {} targets gave no handshake",
            targets.len()
        );
        return Ok(EXIT_ENV);
    }
    Ok(EXIT_OK)
}

/// The prober of `certswap probe`: `--ca` or the public roots, and only
/// the schemes of `--key-type` when given.
fn probe_prober(a: &ProbeArgs, timeout: Duration) -> Result<Prober, String> {
    let prober = Prober::new(a.ca.as_deref(), timeout).map_err(|e| e.to_string())?;
    match a.key_type {
        None => Ok(prober),
        Some(k) => prober
            .for_key_family(key_family(k))
            .map_err(|e| e.to_string()),
    }
}

fn key_family(k: crate::cli::KeyType) -> probe::KeyFamily {
    match k {
        crate::cli::KeyType::Rsa => probe::KeyFamily::Rsa,
        crate::cli::KeyType::Ecdsa => probe::KeyFamily::Ecdsa,
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
    install::check(site, &files_of(&a.bundle, "check")?, false, &mut out);
    if out.result == ResultKind::DryRun {
        out.result = ResultKind::Valid;
    }
    emit(&out, a.json)
}

fn install_cmd(config: &Path, a: &InstallArgs) -> CmdResult {
    let cfg = host::load(config).map_err(|e| e.to_string())?;
    if let Some(dir) = &a.batch {
        return batch_cmd(&cfg, dir, a);
    }
    let name = a
        .site
        .as_deref()
        .ok_or("install needs --site NAME (or --batch DIR)")?;
    let cfg = site_scoped(&cfg, name)?;
    let site = cfg.site(name).map_err(|e| e.to_string())?;
    // One change through the one engine: a batch of one.
    let item = crate::batch::Item {
        site,
        files: files_of(&a.bundle, "install")?,
    };
    with_env(&cfg, a.json, |env| {
        crate::batch::install_one(env, item, a.force, a.dry_run)
    })
}

/// `cfg` scoped to the server of the site called `name` (with several
/// `[[server]]` entries, a one-site command drives that site's server).
fn site_scoped(cfg: &Config, name: &str) -> Result<Config, String> {
    let site = cfg.site(name).map_err(|e| e.to_string())?;
    cfg.for_server(&site.server)
        .ok_or_else(|| format!("site {name} names no configured server"))
}

/// `install --batch DIR`: one outcome per bundle; the exit code is the
/// worst of them (3 over 2 over 1 over 0).
/// With several `[[server]]` entries, one batch per server.
fn batch_cmd(cfg: &Config, dir: &Path, a: &InstallArgs) -> CmdResult {
    if cfg.servers.len() > 1 {
        let scoped = cfg.per_server();
        let hosts = scoped
            .iter()
            .map(Host::open)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let envs: Vec<_> = hosts.iter().zip(&scoped).map(|(h, c)| h.env(c)).collect();
        let outcomes = crate::batch::install_dir_per_server(cfg, &envs, dir, a.force, a.dry_run)
            .map_err(|e| e.to_string())?;
        return emit_many(&outcomes, a.json);
    }
    let parts = Host::open(cfg).map_err(|e| e.to_string())?;
    let outcomes = crate::batch::install_dir(&parts.env(cfg), dir, a.force, a.dry_run)
        .map_err(|e| e.to_string())?;
    emit_many(&outcomes, a.json)
}

fn emit_many(outcomes: &[Outcome], json: bool) -> CmdResult {
    let mut worst = EXIT_OK;
    for out in outcomes {
        print_outcome(out, json)?;
        let code = out.result.exit_code();
        if code == 3 || (worst != 3 && code > worst) {
            worst = code;
        }
    }
    Ok(worst)
}

fn rollback_cmd(config: &Path, a: &RollbackArgs) -> CmdResult {
    let cfg = host::load(config).map_err(|e| e.to_string())?;
    let [name] = a.site.as_slice() else {
        return rollback_many(&cfg, a);
    };
    let cfg = site_scoped(&cfg, name)?;
    let site = cfg.site(name).map_err(|e| e.to_string())?;
    // Undoing `certswap adopt`, while it is the site's last change.
    if site.pairs.is_empty() {
        let parts = Host::open(&cfg).map_err(|e| e.to_string())?;
        let env = parts.env(&cfg);
        if crate::adopt::is_last_change(&env, site).map_err(|e| e.to_string())? {
            let out = crate::adopt::rollback(&env, site).map_err(|e| e.to_string())?;
            return emit(&out, a.json);
        }
    }
    let family = a.key_type.map(key_family);
    let pair;
    let one = match (family, site.pairs.is_empty()) {
        (Some(f), false) => match install::pair_site(site, f) {
            Ok(p) => {
                pair = p;
                &pair
            }
            Err(why) => {
                let mut out = Outcome::new(&site.name);
                out.reject(why.to_string());
                return emit(&out, a.json);
            }
        },
        (None, false) => {
            return Err(format!(
                "site {} has several cert/key pairs: say which with --key-type rsa|ecdsa",
                site.name
            ));
        }
        (_, true) => site,
    };
    // A rollback batch of one, through the one engine.
    with_env(&cfg, a.json, |env| crate::batch::rollback_one(env, one))
}

/// `rollback --site A --site B …`: every site through one batch run (one
/// config test, one reload); a site whose last change is `certswap adopt`
/// is undone by adopt, as with one site. Every name is checked before
/// anything changes.
/// With several `[[server]]` entries, one run per server of the named
/// sites (every name checked first).
fn rollback_many(cfg: &Config, a: &RollbackArgs) -> CmdResult {
    let mut names: Vec<&str> = Vec::new();
    for n in &a.site {
        if !names.contains(&n.as_str()) {
            cfg.site(n).map_err(|e| e.to_string())?;
            names.push(n);
        }
    }
    let mut outcomes = Vec::new();
    for scoped in cfg.per_server() {
        let mine: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| scoped.site(n).is_ok())
            .collect();
        if !mine.is_empty() {
            outcomes.extend(rollback_on(&scoped, &mine, a)?);
        }
    }
    emit_many(&outcomes, a.json)
}

/// [`rollback_many`] for the sites `names` of one server's config.
fn rollback_on(cfg: &Config, names: &[&str], a: &RollbackArgs) -> Result<Vec<Outcome>, String> {
    let mut sites = Vec::new();
    for n in names {
        let site = cfg.site(n).map_err(|e| e.to_string())?;
        if !site.pairs.is_empty() && a.key_type.is_none() {
            return Err(format!(
                "site {} has several cert/key pairs: say which with --key-type rsa|ecdsa",
                site.name
            ));
        }
        sites.push(site);
    }
    let parts = Host::open(cfg).map_err(|e| e.to_string())?;
    let env = parts.env(cfg);
    let mut adopted = Vec::new();
    let mut batch = Vec::new();
    for site in sites {
        if site.pairs.is_empty() {
            if crate::adopt::is_last_change(&env, site).map_err(|e| e.to_string())? {
                adopted.push(site);
            } else {
                batch.push(site.clone());
            }
        } else if let Some(kt) = a.key_type {
            batch.push(install::pair_site(site, key_family(kt)).map_err(|e| e.to_string())?);
        }
    }
    let mut outcomes = Vec::new();
    for site in adopted {
        outcomes.push(crate::adopt::rollback(&env, site).map_err(|e| e.to_string())?);
    }
    let refs: Vec<&crate::config::Site> = batch.iter().collect();
    if !refs.is_empty() {
        outcomes.extend(crate::batch::rollback_sites(&env, &refs).map_err(|e| e.to_string())?);
    }
    Ok(outcomes)
}

fn status_cmd(config: &Path, a: &StatusArgs) -> CmdResult {
    // Probing opens the host: the endpoints a site leaves out are found.
    let cfg = match a.probe {
        true => host::load(config),
        false => Config::load(config),
    }
    .map_err(|e| e.to_string())?;
    let report = crate::status::collect(&cfg, a.probe).map_err(|e| e.to_string())?;
    if a.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(report.exit_code())
}

/// `discover`: the TLS sites of the config's `[server]` (of every
/// `[[server]]`, in order, each site block naming its server), as
/// `[[site]]` blocks to paste (or JSON).
fn discover_cmd(config: &Path, a: &crate::cli::DiscoverArgs) -> CmdResult {
    let cfg = Config::load(config).map_err(|e| e.to_string())?;
    let mut sites = Vec::new();
    for server in &cfg.servers {
        let mut found = crate::discover::discover(server).map_err(|e| e.to_string())?;
        if cfg.servers.len() > 1 {
            for s in &mut found {
                s.server = Some(server.name.clone());
            }
        }
        sites.extend(found);
    }
    if a.json {
        println!("{}", crate::discover::to_json(&sites));
    } else {
        print!("{}", crate::discover::to_toml(&sites));
    }
    Ok(EXIT_OK)
}

/// `sources`: for each source, what it would install now, read-only (a
/// vendor account's list call and the selection; certbot/acme.sh stores
/// read as `status` does). Exit 1 when a source cannot be read.
fn sources_cmd(config: &Path, a: &crate::cli::SourcesArgs) -> CmdResult {
    use crate::config::SourceConfig;
    let cfg = Config::load(config).map_err(|e| e.to_string())?;
    let waiting = crate::source::acme::waiting(&cfg);
    let mut out = Vec::new();
    let mut failed = false;
    for s in &cfg.sources {
        let (kind, rows, error) = match s {
            SourceConfig::Cloud(c) => match probe::block_on(crate::source::cloud::plan(c, &cfg)) {
                Ok(rows) => (c.vendor.kind(), rows, None),
                Err(e) => {
                    failed = true;
                    (c.vendor.kind(), Vec::new(), Some(e.to_string()))
                }
            },
            SourceConfig::Acme(acme) => {
                let rows = waiting
                    .iter()
                    .filter(|w| w.source.starts_with(&acme.client.to_string()))
                    .map(|w| crate::source::cloud::PlanRow {
                        source: acme.name.clone(),
                        kind: "acme",
                        site: w.site.clone(),
                        certificate_id: Some(w.source.clone()),
                        not_after: Some(crate::cert::rfc3339(w.not_after)),
                        install: true,
                        why: "the ACME client holds a newer certificate than the installed one"
                            .into(),
                    })
                    .collect();
                ("acme", rows, None)
            }
            SourceConfig::Inbox(_) => ("inbox", Vec::new(), None),
            SourceConfig::Http(_) => ("http", Vec::new(), None),
        };
        out.push((s.name().to_string(), kind, rows, error));
    }
    // An inbox or a manifest is judged when a bundle arrives: not previewed.
    let previewed = |kind: &str| !matches!(kind, "inbox" | "http");
    if a.json {
        let v: Vec<serde_json::Value> = out
            .iter()
            .map(|(name, kind, rows, error)| {
                serde_json::json!({
                    "source": name, "kind": kind, "previewed": previewed(kind),
                    "error": error, "sites": rows,
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "sources": v }));
    } else {
        for (name, kind, rows, error) in &out {
            println!("{name} ({kind})");
            if let Some(e) = error {
                println!("  cannot be read: {e}");
            }
            if !previewed(kind) {
                println!("  not previewed: its bundles are checked when they arrive");
            } else if rows.is_empty() && error.is_none() {
                println!("  nothing to install now");
            }
            for r in rows {
                let what = match (&r.certificate_id, &r.not_after) {
                    (Some(id), Some(na)) if r.install => format!("installs {id} (notAfter {na})"),
                    _ => "nothing to install".to_string(),
                };
                println!("  {}: {what}: {}", r.site, r.why);
            }
        }
    }
    Ok(if failed { EXIT_FAILED } else { EXIT_OK })
}

fn run_cmd(config: &Path, a: &RunArgs) -> CmdResult {
    let format = match a.log_format {
        crate::cli::LogFormat::Human => crate::agent::LogFormat::Human,
        crate::cli::LogFormat::Json => crate::agent::LogFormat::Json,
    };
    crate::agent::run_logged(config, crate::agent::RunOptions { once: a.once }, format)
        .map_err(|e| e.to_string())?;
    Ok(EXIT_OK)
}

fn deploy_hook_cmd(config: &Path, a: &DeployHookArgs) -> CmdResult {
    let cfg = host::load(config).map_err(|e| e.to_string())?;
    let vars = |k: &str| std::env::var(k).ok();
    // One run per server: the renewal goes to the covered sites of each;
    // a server with none of them is skipped, unless no server has any.
    let mut outcomes = Vec::new();
    let mut first_err = None;
    for scoped in cfg.per_server() {
        let parts = Host::open(&scoped).map_err(|e| e.to_string())?;
        match crate::hook::deploy_with(&parts.env(&scoped), &vars, a.force) {
            Ok(o) => outcomes.extend(o),
            Err(e) => {
                first_err.get_or_insert(e.to_string());
            }
        }
    }
    match first_err {
        Some(e) if outcomes.is_empty() => Err(e),
        Some(e) => {
            tracing::warn!("deploy-hook: on another server: {e}");
            emit_many(&outcomes, a.json)
        }
        None => emit_many(&outcomes, a.json),
    }
}

/// `adopt`: without `--apply` only the plan (nothing is opened for
/// writing, not even the state dir); with it, the change, verified.
fn adopt_cmd(config: &Path, a: &AdoptArgs) -> CmdResult {
    let cfg = host::load(config).map_err(|e| e.to_string())?;
    let cfg = site_scoped(&cfg, &a.site)?;
    let site = cfg.site(&a.site).map_err(|e| e.to_string())?;
    let report = if a.apply {
        let parts = Host::open(&cfg).map_err(|e| e.to_string())?;
        crate::adopt::apply(&parts.env(&cfg), site, a.managed)
    } else {
        crate::adopt::show(&cfg, site, a.managed)
    };
    let report = match report {
        Ok(r) => r,
        Err(e) if a.json => crate::adopt::AdoptReport::rejected(&site.name, e.to_string()),
        Err(e) => return Err(e.to_string()),
    };
    if a.json {
        let text =
            serde_json::to_string(&report).map_err(|e| format!("cannot encode the result: {e}"))?;
        println!("{text}");
    } else {
        print!("{}", report.to_text());
    }
    if let Some(e) = &report.error {
        eprintln!("certswap: {e}");
    }
    Ok(report.exit_code())
}

fn completions_cmd(a: &CompletionsArgs) -> CmdResult {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "certswap", &mut std::io::stdout());
    Ok(EXIT_OK)
}

fn man_cmd() -> CmdResult {
    use clap::CommandFactory;
    let man = clap_mangen::Man::new(Cli::command());
    man.render(&mut std::io::stdout())
        .map_err(|e| format!("cannot write the man page: {e}"))?;
    Ok(EXIT_OK)
}

/// Build the environment of `cfg`, run `f`, print its outcome.
fn with_env(
    cfg: &Config,
    json: bool,
    f: impl FnOnce(&Env<'_>) -> Result<Outcome, install::InstallError>,
) -> CmdResult {
    let parts = Host::open(cfg).map_err(|e| e.to_string())?;
    match f(&parts.env(cfg)) {
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

/// One outcome on stdout: a JSON object on one line, or the text.
fn print_outcome(out: &Outcome, json: bool) -> Result<(), String> {
    if json {
        let text =
            serde_json::to_string(out).map_err(|e| format!("cannot encode the result: {e}"))?;
        println!("{text}");
    } else {
        print!("{}", out.to_text());
    }
    Ok(())
}

fn emit(out: &Outcome, json: bool) -> CmdResult {
    print_outcome(out, json)?;
    if let (Some(e), false) = (&out.error, json) {
        eprintln!("certswap: {e}");
    }
    Ok(out.result.exit_code())
}

/// The files `--cert`, `--key`, `--chain` name (`--cert` is needed).
fn files_of(b: &crate::cli::BundleArgs, command: &str) -> Result<Files, String> {
    let cert = b
        .cert
        .clone()
        .ok_or_else(|| format!("{command} needs --cert FILE"))?;
    Ok(Files {
        cert,
        key: b.key.clone(),
        chain: b.chain.clone(),
    })
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
