//! The publisher's commands, `certswap manifest build` and `certswap
//! rollout`: flags → [`crate::publish`] / [`crate::rollout`], results
//! printed, exit codes of DESIGN.md (0 ok, 1 bad input or a paused
//! rollout, 2 usage or environment). Kept apart from [`crate::commands`]
//! because they run where the renewals are published, not on a web server,
//! and need no config file.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cli::{ManifestBuildArgs, RolloutArgs};
use crate::publish::{self, Options, PublishError};
use crate::rollout::{self, Plan, RolloutError, Verdict};

const EXIT_OK: u8 = 0;
const EXIT_FAILED: u8 = 1;
const EXIT_ENV: u8 = 2;

/// `certswap manifest build DIR …`.
pub fn manifest_build_cmd(a: &ManifestBuildArgs) -> Result<u8, String> {
    let mut site_percent = BTreeMap::new();
    for item in &a.site_percent {
        let (site, n) = item
            .split_once('=')
            .and_then(|(s, n)| Some((s, n.parse::<u32>().ok()?)))
            .ok_or_else(|| format!("--site-percent {item:?}: expected SITE=N"))?;
        site_percent.insert(site.to_string(), n);
    }
    let opts = Options {
        percent: a.percent,
        site_percent,
        paused: a.paused,
    };
    let built = match publish::build(&a.dir, &opts) {
        Ok(b) => b,
        Err(e @ PublishError::Percent(_)) => return Err(e.to_string()),
        Err(e) => {
            eprintln!(
                "certswap: {e}; {} was not changed",
                publish::manifest_path(&a.dir).display()
            );
            return Ok(EXIT_FAILED);
        }
    };
    for s in &built.skipped {
        eprintln!("certswap: {s}");
    }
    let path = match publish::write(&a.dir, &built.manifest) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("certswap: {e}");
            return Ok(EXIT_ENV);
        }
    };
    if a.json {
        let v = serde_json::json!({
            "manifest": path,
            "paused": built.manifest.paused,
            "bundles": built.rows,
            "skipped": built.skipped,
        });
        println!("{v}");
        return Ok(EXIT_OK);
    }
    for r in &built.rows {
        for w in &r.warnings {
            eprintln!("certswap: {}: warning: {w}", r.site);
        }
        println!(
            "{}\t{}\t{}\tnotAfter {}\t{}%",
            r.site,
            r.renewal,
            if r.has_key { "cert+key" } else { "cert only" },
            r.not_after,
            r.percent
        );
    }
    let state = if built.manifest.paused {
        " (paused)"
    } else {
        ""
    };
    println!(
        "wrote {}: {} bundles{state}",
        path.display(),
        built.rows.len()
    );
    Ok(EXIT_OK)
}

/// `certswap rollout DIR --prometheus URL …`.
pub fn rollout_cmd(a: &RolloutArgs) -> Result<u8, String> {
    let duration = |flag: &str, s: &str| -> Result<Duration, String> {
        humantime::parse_duration(s)
            .map_err(|e| format!("{flag} {s:?} is not a duration like \"2m\": {e}"))
    };
    let plan = Plan {
        dir: a.dir.clone(),
        prometheus: a.prometheus.clone(),
        waves: rollout::parse_waves(&a.waves).map_err(|e| e.to_string())?,
        soak: duration("--soak", &a.soak)?,
        deadline: duration("--deadline", &a.deadline)?,
        sites: a.site.clone(),
    };
    let mut out = std::io::stdout();
    match rollout::run(&plan, &mut out) {
        Ok(Verdict::Done) => Ok(EXIT_OK),
        Ok(Verdict::Paused { .. }) => Ok(EXIT_FAILED),
        Err(e @ RolloutError::Publish(PublishError::Invalid { .. } | PublishError::Bundle(_))) => {
            eprintln!("certswap: {e}; the manifest was not changed");
            Ok(EXIT_FAILED)
        }
        Err(e) => Err(e.to_string()),
    }
}
