//! The modules of src/ form layers without import cycles (issue 13): a
//! module may use only modules below it. Read from the sources: every
//! `crate::NAME` path in code (not in comments, not in a module's
//! `#[cfg(test)] mod tests`) is an edge from the file's top-level module
//! to NAME. The graph must be acyclic, with no exception.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("list src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Top-level module → the crate modules its code names.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a path");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "main" || module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("read source");
        let code = match text.find("#[cfg(test)]\nmod tests") {
            Some(i) => &text[..i],
            None => &text[..],
        };
        let edges = graph.entry(module.clone()).or_default();
        for line in code.lines() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    edges.insert(name);
                }
            }
        }
    }
    graph
}

/// A cycle in `graph` (without the `skip` edges), as a path a → … → a.
fn find_cycle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    skip: &[(&str, &str)],
) -> Option<Vec<String>> {
    fn visit(
        v: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        skip: &[(&str, &str)],
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(v.to_string(), 1);
        path.push(v.to_string());
        for w in graph.get(v).into_iter().flatten() {
            if !graph.contains_key(w) || skip.contains(&(v, w.as_str())) {
                continue;
            }
            match state.get(w.as_str()) {
                Some(1) => {
                    let start = path.iter().position(|p| p == w).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(w.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(w, graph, skip, state, path) {
                        return Some(c);
                    }
                }
            }
        }
        path.pop();
        state.insert(v.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for v in graph.keys() {
        if !state.contains_key(v)
            && let Some(c) = visit(v, graph, skip, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn src_modules_import_each_other_without_cycles() {
    let graph = module_graph();
    assert!(
        graph.contains_key("install") && graph.contains_key("batch"),
        "the module graph was read: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph, &[]) {
        panic!("an import cycle among src/ modules: {}", cycle.join(" → "));
    }
}

#[test]
fn loading_the_config_runs_no_program() {
    // The old exception (config ↔ discover ↔ probe: `Config::load` ran
    // `nginx -T`) is gone: the config names neither the discovery nor the
    // server nor the prober's machinery, and starts no process. Endpoints
    // are discovered where the host is opened (src/host.rs).
    let graph = module_graph();
    let config = graph.get("config").expect("config is a module");
    for below_it_not in ["discover", "server", "host", "install", "batch"] {
        assert!(
            !config.contains(below_it_not),
            "config uses {below_it_not}: {config:?}"
        );
    }
    let probe = graph.get("probe").expect("probe is a module");
    assert!(!probe.contains("config"), "probe uses config: {probe:?}");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config.rs");
    let text = std::fs::read_to_string(src).expect("read config.rs");
    assert!(
        !text.contains("std::process") && !text.contains("Command::new"),
        "config.rs starts a process"
    );
    assert!(
        graph.get("host").is_some_and(|h| h.contains("discover")),
        "opening the host discovers endpoints: {:?}",
        graph.get("host")
    );
}

#[test]
fn the_checker_finds_a_cycle() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        g.entry(a.into()).or_default().insert(b.into());
        g.entry(b.into()).or_default();
    }
    g.entry("d".into()).or_default();
    let c = find_cycle(&g, &[]).expect("a cycle");
    assert_eq!(c.first(), c.last(), "{c:?}");
    assert!(find_cycle(&g, &[("c", "a")]).is_none());
}
