//! What making a batch's staged files durable costs on this disk, by
//! option (docs/performance.md, "Durability at batch cost"):
//!
//! ```text
//! cargo run --release --example stage_sync -- DIR N MODE [DIRTY_MB]
//! ```
//!
//! Per site it writes what `certswap install --batch` writes before the
//! swap — two hard-linked undo copies, `undo/meta.json`, two staged files
//! beside the targets (one shared directory, as on a hosting box), a
//! journal under a temporary name — then renames the journal into place
//! and the staged files over the targets, the same order of durability
//! each way. MODE:
//!
//! - `perfile`: as before this change, on 16 I/O threads: each file
//!   fsynced as it is written, each directory after its entries;
//! - `parallel`: write everything, then fsync every file on 16 threads,
//!   rename the journals, fsync every directory on 16 threads;
//! - `syncfs`: write everything, one syncfs(2), rename the journals, one
//!   syncfs(2).
//!
//! STAGE_SYNC_THREADS (default 16): the threads that write and fsync.
//! DIRTY_MB (default 0): first leave that many MB of someone else's dirty
//! page cache on the same filesystem (a log, a build), which syncfs(2)
//! must write too and fsync(2) need not. Prints one line:
//! `mode=… n=… dirty_mb=… write_ms=… sync_ms=… rename_ms=… swap_ms=… total_ms=… fsyncs=…`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Threads writing (and, for `perfile` and `parallel`, syncing):
/// STAGE_SYNC_THREADS, default 16 as the batch's I/O threads were.
fn threads() -> usize {
    std::env::var("STAGE_SYNC_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(16)
}
static FSYNCS: AtomicUsize = AtomicUsize::new(0);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, n, mode, dirty) = match args.as_slice() {
        [d, n, m, rest @ ..] if rest.len() <= 1 => (
            PathBuf::from(d),
            n.parse::<usize>().ok(),
            m.clone(),
            rest.first().map_or(Some(0), |s| s.parse::<usize>().ok()),
        ),
        _ => (PathBuf::new(), None, String::new(), None),
    };
    let (Some(n), Some(dirty)) = (n, dirty) else {
        eprintln!("usage: stage_sync DIR N perfile|parallel|syncfs [DIRTY_MB]");
        return ExitCode::from(2);
    };
    match run(&dir, n, &mode, dirty) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stage_sync: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(dir: &Path, n: usize, mode: &str, dirty_mb: usize) -> std::io::Result<String> {
    let _ = fs::remove_dir_all(dir);
    let ssl = dir.join("ssl");
    fs::create_dir_all(&ssl)?;
    for i in 0..n {
        for ext in ["pem", "key"] {
            fs::write(ssl.join(format!("s{i}.{ext}")), [b'o'; 700])?;
        }
    }
    if dirty_mb > 0 {
        let mut f = File::create(dir.join("someone-elses.log"))?;
        let mb = vec![b'd'; 1 << 20];
        for _ in 0..dirty_mb {
            f.write_all(&mb)?;
        }
    }
    // Start from a clean cache but for the dirty file.
    fsync(&ssl)?;
    for i in 0..n {
        for ext in ["pem", "key"] {
            fsync(&ssl.join(format!("s{i}.{ext}")))?;
        }
    }
    FSYNCS.store(0, Ordering::Relaxed);

    let sync_each = mode == "perfile";
    let t0 = Instant::now();
    par(n, |i| site(dir, &ssl, i, sync_each))?;
    let write_ms = ms(t0);
    let t1 = Instant::now();
    match mode {
        "perfile" => {}
        "parallel" => {
            let files: Vec<PathBuf> = (0..n).flat_map(|i| files_of(dir, &ssl, i)).collect();
            par(files.len(), |k| fsync(&files[k]))?;
        }
        "syncfs" => syncfs(dir)?,
        other => return Err(std::io::Error::other(format!("unknown mode {other}"))),
    }
    let sync1_ms = ms(t1);
    let t2 = Instant::now();
    if !sync_each {
        for i in 0..n {
            let d = site_dir(dir, i);
            fs::rename(d.join(".journal.json.tmp"), d.join("journal.json"))?;
        }
    }
    let rename_ms = ms(t2);
    let t3 = Instant::now();
    match mode {
        "parallel" => {
            let dirs: Vec<PathBuf> = (0..n)
                .flat_map(|i| [site_dir(dir, i), site_dir(dir, i).join("undo")])
                .collect();
            par(dirs.len(), |k| fsync(&dirs[k]))?;
        }
        "syncfs" => syncfs(dir)?,
        _ => {}
    }
    let sync2_ms = ms(t3);
    // The swap, the same in every mode: renames, one fsync of the directory.
    let t4 = Instant::now();
    for i in 0..n {
        for ext in ["pem", "key"] {
            fs::rename(
                ssl.join(format!(".s{i}.{ext}.certswap-new")),
                ssl.join(format!("s{i}.{ext}")),
            )?;
        }
    }
    fsync(&ssl)?;
    let swap_ms = ms(t4);
    let total_ms = ms(t0);
    let fsyncs = FSYNCS.load(Ordering::Relaxed);
    fs::remove_dir_all(dir)?;
    Ok(format!(
        "mode={mode} threads={} n={n} dirty_mb={dirty_mb} write_ms={write_ms} sync_ms={} rename_ms={rename_ms} swap_ms={swap_ms} total_ms={total_ms} fsyncs={fsyncs}",
        threads(),
        sync1_ms + sync2_ms
    ))
}

fn site_dir(dir: &Path, i: usize) -> PathBuf {
    dir.join("sites").join(format!("s{i}"))
}

fn files_of(dir: &Path, ssl: &Path, i: usize) -> Vec<PathBuf> {
    let (d, u) = (site_dir(dir, i), site_dir(dir, i).join("undo"));
    vec![
        u.join("pem"),
        u.join("key"),
        u.join("meta.json"),
        ssl.join(format!(".s{i}.pem.certswap-new")),
        ssl.join(format!(".s{i}.key.certswap-new")),
        d.join(".journal.json.tmp"),
    ]
}

/// One site's writes; with `sync`, each durable as it goes (the old way).
fn site(dir: &Path, ssl: &Path, i: usize, sync: bool) -> std::io::Result<()> {
    let d = site_dir(dir, i);
    let u = d.join("undo");
    fs::create_dir_all(&u)?;
    fs::create_dir_all(d.join("versions"))?;
    for ext in ["pem", "key"] {
        fs::hard_link(ssl.join(format!("s{i}.{ext}")), u.join(ext))?;
        if sync {
            fsync(&u.join(ext))?;
        }
    }
    create(&u.join("meta.json"), &[b'm'; 400], sync)?;
    if sync {
        fsync(&u)?;
    }
    for ext in ["pem", "key"] {
        create(
            &ssl.join(format!(".s{i}.{ext}.certswap-new")),
            &[b'n'; 700],
            sync,
        )?;
    }
    create(&d.join(".journal.json.tmp"), &[b'j'; 600], sync)?;
    if sync {
        fs::rename(d.join(".journal.json.tmp"), d.join("journal.json"))?;
        fsync(&d)?;
    }
    Ok(())
}

fn create(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    if sync {
        FSYNCS.fetch_add(1, Ordering::Relaxed);
        f.sync_all()?;
    }
    Ok(())
}

fn fsync(path: &Path) -> std::io::Result<()> {
    FSYNCS.fetch_add(1, Ordering::Relaxed);
    File::open(path)?.sync_all()
}

fn syncfs(path: &Path) -> std::io::Result<()> {
    FSYNCS.fetch_add(1, Ordering::Relaxed);
    nix::unistd::syncfs(File::open(path)?).map_err(std::io::Error::from)
}

/// `f(0..n)` on THREADS threads, the first error.
fn par(n: usize, f: impl Fn(usize) -> std::io::Result<()> + Sync) -> std::io::Result<()> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads())
            .map(|_| {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok(());
                        }
                        f(i)?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("panic")))
            })
            .collect::<std::io::Result<Vec<()>>>()
            .map(|_| ())
    })
}

fn ms(t: Instant) -> u128 {
    t.elapsed().as_millis()
}
