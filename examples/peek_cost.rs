//! CPU per look of a bulk peek ([`certswap::probe::peek_each`], the look
//! before a change) and of a bulk probe ([`certswap::probe::probe_each`],
//! full handshakes) on both sides: this process (getrusage) and a server
//! (its master and workers, from /proc). docs/performance.md has the
//! figures: run it against the bench's nginx (`BENCH_KEEP=1
//! scripts/bench`), and against a copy of that config with
//! `ssl_protocols TLSv1.3;` for a server that refuses the peek's TLS 1.2.
//!
//! Usage: `peek_cost CA_FILE TARGETS_FILE ROUNDS peek|probe SERVER_PID`.
//! Prints `LOOK ok=… wall_us=… client_us=… server_us=…` per look.

use std::path::Path;
use std::time::{Duration, Instant};

use certswap::probe::{self, Prober, Target};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [ca, targets, rounds, look, pid] = args.as_slice() else {
        eprintln!("usage: peek_cost CA_FILE TARGETS_FILE ROUNDS peek|probe SERVER_PID");
        std::process::exit(2);
    };
    match run(ca, targets, rounds, look, pid) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("peek_cost: {e}");
            std::process::exit(2);
        }
    }
}

fn run(ca: &str, targets: &str, rounds: &str, look: &str, pid: &str) -> Result<String, String> {
    let prober =
        Prober::new(Some(Path::new(ca)), Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(targets).map_err(|e| format!("{targets}: {e}"))?;
    let mut jobs = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let t = Target::parse(line.trim(), None).map_err(|e| e.to_string())?;
        jobs.push((prober.clone(), t));
    }
    let rounds: usize = rounds
        .parse()
        .map_err(|_| format!("ROUNDS {rounds:?} is not a number"))?;
    let peek = match look {
        "peek" => true,
        "probe" => false,
        other => return Err(format!("{other:?} is neither peek nor probe")),
    };
    let (client0, server0, t0) = (own_cpu(), server_cpu(pid)?, Instant::now());
    let mut ok = 0;
    for _ in 0..rounds {
        let results = match peek {
            true => probe::block_on(probe::peek_each(&jobs, 64)),
            false => probe::block_on(probe::probe_each(&jobs, 64)),
        };
        ok += results.iter().filter(|r| r.is_ok()).count();
    }
    let looks = (rounds * jobs.len()).max(1) as f64;
    let us = |s: f64| s * 1e6 / looks;
    Ok(format!(
        "{look} ok={ok} wall_us={:.1} client_us={:.1} server_us={:.1}",
        us(t0.elapsed().as_secs_f64()),
        us(own_cpu() - client0),
        us(server_cpu(pid)? - server0)
    ))
}

/// User + system CPU seconds of this process.
fn own_cpu() -> f64 {
    // SAFETY: getrusage writes into the struct it is given, nothing else.
    let mut u: nix::libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { nix::libc::getrusage(nix::libc::RUSAGE_SELF, &mut u) };
    let secs = |v: nix::libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// User + system CPU seconds of process `pid` and its children now.
fn server_cpu(pid: &str) -> Result<f64, String> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map_err(|e| format!("process {pid}: {e}"))?;
    // SAFETY: sysconf only reads a system constant.
    let tick = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut total = 0.0;
    for p in std::iter::once(pid).chain(children.split_whitespace()) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue; // a worker that just exited
        };
        // Fields after "(comm) ": utime and stime are the 12th and 13th.
        let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        total += (field(11) + field(12)) / tick;
    }
    Ok(total)
}
