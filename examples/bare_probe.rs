//! The leanest bulk probe this stack allows: the client config of
//! `certswap probe --targets` ([`Prober::client_config`]: its provider,
//! cipher-suite order and verifier), its handshake loop
//! ([`certswap::handshake::complete`]) and abrupt ending, on one engine
//! per core as it runs, but with nothing after the handshake: no
//! certificate parsed, no trust verdict, no row. What `scripts/bench`
//! prints beside (c) as the best a rustls + tokio client reaches here, so
//! the gap between (c) and the zero-overhead floor splits into certswap's
//! share and the stack's (kernel TCP, the TLS 1.3 key schedule, rustls's
//! own buffers).
//!
//! Usage: `bare_probe TARGETS_FILE [CONCURRENCY]` (default 64, as `probe`).
//! Each line is `SNI@HOST:PORT` with a literal IP address. Prints one line:
//! `handshakes=… failed=…`; exits 1 when any failed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use certswap::probe::Prober;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(file), concurrency) = (args.next(), args.next()) else {
        eprintln!("usage: bare_probe TARGETS_FILE [CONCURRENCY]");
        std::process::exit(2);
    };
    let concurrency: usize = match concurrency.map(|c| c.parse()) {
        None => 64,
        Some(Ok(c)) if c > 0 => c,
        Some(_) => {
            eprintln!("bare_probe: CONCURRENCY must be a number > 0");
            std::process::exit(2);
        }
    };
    match run(&file, concurrency) {
        Ok((done, failed)) => {
            println!("handshakes={done} failed={failed}");
            if failed > 0 {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("bare_probe: {e}");
            std::process::exit(2);
        }
    }
}

type Job = (ServerName<'static>, SocketAddr);

/// `probe`'s default bound on one handshake.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn run(file: &str, concurrency: usize) -> Result<(usize, usize), Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    let mut jobs: Vec<Job> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (sni, addr) = line
            .split_once('@')
            .ok_or_else(|| format!("{file}: {line:?} is not SNI@HOST:PORT"))?;
        let name = ServerName::try_from(sni.to_string())?;
        jobs.push((name, addr.parse()?));
    }
    let config = Prober::new(None, TIMEOUT)?.client_config();
    let engines = certswap::engines::count(jobs.len(), concurrency);
    let each = concurrency.div_ceil(engines);
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..engines {
            scope.spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime");
                runtime.block_on(engine(&jobs, &next, &failed, &config, each));
            });
        }
    });
    Ok((jobs.len(), failed.into_inner()))
}

/// One engine: up to `each` handshakes in flight, taking the next job as
/// one ends.
async fn engine(
    jobs: &[Job],
    next: &AtomicUsize,
    failed: &AtomicUsize,
    config: &Arc<ClientConfig>,
    each: usize,
) {
    let take = || {
        let i = next.fetch_add(1, Ordering::Relaxed);
        jobs.get(i)
    };
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..each {
        match take() {
            Some(job) => in_flight.push(one(job, config)),
            None => break,
        }
    }
    while let Some(ok) = in_flight.next().await {
        if !ok {
            failed.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(job) = take() {
            in_flight.push(one(job, config));
        }
    }
}

/// One handshake, bounded as the probe's: a server that stops
/// answering fails it instead of holding the run.
async fn one(job: &Job, config: &Arc<ClientConfig>) -> bool {
    tokio::time::timeout(TIMEOUT, handshake(job, config))
        .await
        .unwrap_or(false)
}

async fn handshake((name, addr): &Job, config: &Arc<ClientConfig>) -> bool {
    let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let _ = tcp.set_nodelay(true);
    let Ok(mut conn) = rustls::ClientConnection::new(config.clone(), name.clone()) else {
        return false;
    };
    let ok = certswap::handshake::complete(&mut conn, &tcp, false)
        .await
        .is_ok()
        && conn.peer_certificates().is_some_and(|c| !c.is_empty());
    let _ = tcp.set_zero_linger();
    ok
}
