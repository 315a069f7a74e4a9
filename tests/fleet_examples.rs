//! The fleet's monitoring files in examples/fleet/ stay true to the agent:
//! Prometheus's own `promtool` accepts the alerting rules and the scrape
//! config, the Grafana dashboard is JSON, and every `certswap_…` name in
//! them (and in the README) is a metric the agent exports.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every sample name the agent's registry can emit: the names registered
/// in src/metrics.rs (a family with no series yet is not even described
/// by the encoder), each also with the `_total` the encoder gives a counter.
fn exported() -> BTreeSet<String> {
    let src = read("src/metrics.rs");
    let mut names = BTreeSet::new();
    for chunk in src.split("registry.register(").skip(1) {
        let Some(name) = chunk.split('"').nth(1) else {
            continue;
        };
        names.insert(name.to_string());
        names.insert(format!("{name}_total"));
    }
    // What the encoder really prints for the families that have series.
    let text = certswap::metrics::Metrics::new().encode();
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap_or_default();
        assert!(
            names.contains(name),
            "{name} is encoded but not found in src/metrics.rs"
        );
    }
    names
}

fn mentioned(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("certswap_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        out.insert(name);
    }
    out
}

#[test]
fn promtool_accepts_the_rules_and_the_scrape_config() {
    for (what, file) in [
        ("rules", "examples/fleet/alerts.yml"),
        ("config", "examples/fleet/prometheus.yml"),
    ] {
        let out = Command::new("/usr/bin/promtool")
            .args(["check", what])
            .arg(repo(file))
            .output()
            .expect("run promtool (Debian package prometheus)");
        assert!(
            out.status.success(),
            "promtool check {what} {file}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn dashboard_rules_and_readme_name_only_exported_metrics() {
    let names = exported();
    for must in [
        "certswap_host_info",
        "certswap_served_leaf_info",
        "certswap_install_total",
        "certswap_drift",
    ] {
        assert!(names.contains(must), "{must} not exported: {names:?}");
    }
    let dashboard = read("examples/fleet/grafana-dashboard.json");
    let v: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(v["panels"].as_array().is_some_and(|p| !p.is_empty()));
    for file in [
        "examples/fleet/grafana-dashboard.json",
        "examples/fleet/alerts.yml",
        "examples/fleet/README.md",
        "README.md",
    ] {
        let unknown: Vec<String> = mentioned(&read(file))
            .into_iter()
            // A metric name goes on with a letter; `certswap_0.1.0-1_amd64.deb`
            // and a bare `certswap_…` in prose are not names.
            .filter(|n| {
                n["certswap_".len()..].starts_with(|c: char| c.is_ascii_lowercase())
                    && !names.contains(n)
            })
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics the agent does not export: {unknown:?}"
        );
    }
}
