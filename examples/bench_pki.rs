//! Fixtures for `scripts/bench`: one CA, N ECDSA P-256 SNI sites, and the
//! nginx and certswap configs that serve and manage them.
//!
//! ```text
//! cargo run --release --example bench_pki -- DIR N PORT
//! cargo run --release --example bench_pki -- --renew DIR SUBDIR DAYS
//! ```
//!
//! The second form writes one more renewal of every site of DIR into
//! DIR/SUBDIR, valid until now + DAYS, signed by the same CA (for repeated
//! batch runs and profiling).
//!
//! Writes under DIR:
//!
//! ```text
//! ca.pem, ca.key               the root (the probe's trust anchor)
//! ssl/SITE.{pem,key}           what nginx serves at the start (20 days left)
//! renew/SITE.{pem,key}         a renewal of every site (+385 days): the batch
//! renew2/SITE.{pem,key}        a second renewal (+390 days): the profiled batch
//! one/SITE.{pem,key}           a third renewal of the first site only (+400 days)
//! nginx/nginx.conf             N server blocks on 127.0.0.1:PORT, files in ssl/,
//!                              TLS 1.2 + 1.3 as Debian's nginx.conf has it
//!                              (nginx 1.22's built-in default stops at TLS 1.2)
//! nginx/nginx.alt.conf         the same, files in renew/ (reload settle time)
//! certswap.toml                N [[site]]s, state in state/
//! targets.txt                  SITE@127.0.0.1:PORT, one a line
//! sha-ssl.txt, sha-renew.txt   "SITE SHA256" of each leaf
//! ```
//!
//! Site names are `s0000.bench.test`, `s0001.bench.test`, … Test PKI only:
//! the keys are written in the clear.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, dir, sub, days] = args.as_slice()
        && flag == "--renew"
    {
        let Ok(days) = days.parse::<i64>() else {
            eprintln!("bench_pki: DAYS {days:?} is not a number");
            return ExitCode::from(2);
        };
        return match renew(Path::new(dir), sub, days) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench_pki: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let parsed = match args.as_slice() {
        [dir, n, port] => n
            .parse::<usize>()
            .ok()
            .zip(port.parse::<u16>().ok())
            .map(|(n, port)| (PathBuf::from(dir), n, port)),
        _ => None,
    };
    let Some((dir, n, port)) = parsed else {
        eprintln!("usage: bench_pki DIR N PORT | bench_pki --renew DIR SUBDIR DAYS");
        return ExitCode::from(2);
    };
    match run(&dir, n, port) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_pki: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, String>;

fn run(dir: &Path, n: usize, port: u16) -> Result<()> {
    for sub in [
        "ssl",
        "renew",
        "renew2",
        "one",
        "nginx/logs",
        "nginx/tmp",
        "state",
    ] {
        fs::create_dir_all(dir.join(sub)).map_err(|e| format!("mkdir {sub}: {e}"))?;
    }
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .map_err(|e| e.to_string())?;
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.distinguished_name
        .push(DnType::CommonName, "certswap bench root");
    ca.distinguished_name
        .push(DnType::OrganizationName, "certswap bench");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - Duration::days(400);
    ca.not_after = now + Duration::days(3650);
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    write(&dir.join("ca.pem"), ca_cert.pem().as_bytes(), 0o644)?;
    write(
        &dir.join("ca.key"),
        ca_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    let issuer = Issuer::from_params(&ca, &ca_key);

    let names: Vec<String> = (0..n).map(|i| format!("s{i:04}.bench.test")).collect();
    // (dir, first day, last day, sites): last days grow so each set renews the one before.
    let sets: [(&str, i64, i64, usize); 4] = [
        ("ssl", -345, 20, n),
        ("renew", -1, 385, n),
        ("renew2", -1, 390, n),
        ("one", -1, 400, n.min(1)),
    ];
    let mut shas: Vec<Vec<String>> = Vec::new();
    for (sub, from, to, count) in sets {
        shas.push(leaves(
            &dir.join(sub),
            &names[..count],
            &issuer,
            now,
            from,
            to,
        )?);
    }
    for (file, set) in [("sha-ssl.txt", &shas[0]), ("sha-renew.txt", &shas[1])] {
        let text: String = names.iter().zip(set).fold(String::new(), |mut t, (n, h)| {
            let _ = writeln!(t, "{n} {h}");
            t
        });
        write(&dir.join(file), text.as_bytes(), 0o644)?;
    }

    let targets: String = names.iter().fold(String::new(), |mut t, n| {
        let _ = writeln!(t, "{n}@127.0.0.1:{port}");
        t
    });
    write(&dir.join("targets.txt"), targets.as_bytes(), 0o644)?;
    for (file, files) in [("nginx.conf", "ssl"), ("nginx.alt.conf", "renew")] {
        let conf = nginx_conf(dir, &names, port, files)?;
        write(&dir.join("nginx").join(file), conf.as_bytes(), 0o644)?;
    }
    write(
        &dir.join("certswap.toml"),
        certswap_toml(dir, &names, port)?.as_bytes(),
        0o644,
    )?;
    Ok(())
}

/// `--renew`: one more renewal of every site of `dir` in `dir/sub`.
fn renew(dir: &Path, sub: &str, days: i64) -> Result<()> {
    let read = |f: &str| {
        fs::read_to_string(dir.join(f)).map_err(|e| format!("{}: {e}", dir.join(f).display()))
    };
    let ca_key = KeyPair::from_pem(&read("ca.key")?).map_err(err)?;
    let issuer = Issuer::from_ca_cert_pem(&read("ca.pem")?, &ca_key).map_err(err)?;
    let names: Vec<String> = read("sha-ssl.txt")?
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    let out = dir.join(sub);
    fs::create_dir_all(&out).map_err(|e| format!("mkdir {}: {e}", out.display()))?;
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .map_err(|e| e.to_string())?;
    leaves(&out, &names, &issuer, now, -1, days).map(|_| ())
}

/// [`leaf`] for every name, on every core; the SHA-256s in order.
fn leaves(
    out: &Path,
    names: &[String],
    issuer: &Issuer<'_, &KeyPair>,
    now: OffsetDateTime,
    from: i64,
    to: i64,
) -> Result<Vec<String>> {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let chunk = names.len().div_ceil(threads).max(1);
    let made: Vec<Result<Vec<String>>> = std::thread::scope(|s| {
        let workers: Vec<_> = names
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|name| leaf(out, name, issuer, now, from, to))
                        .collect::<Result<Vec<String>>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .map_err(|_| "a generator thread panicked".to_string())?
            })
            .collect()
    });
    let mut set = Vec::new();
    for m in made {
        set.extend(m?);
    }
    Ok(set)
}

/// One leaf for `name` valid [now+from, now+to] days; writes
/// `dir/NAME.pem` and `dir/NAME.key`, returns the leaf's SHA-256 (hex).
fn leaf(
    dir: &Path,
    name: &str,
    issuer: &Issuer<'_, &KeyPair>,
    now: OffsetDateTime,
    from: i64,
    to: i64,
) -> Result<String> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut p = CertificateParams::new(vec![name.to_string()]).map_err(err)?;
    p.distinguished_name.push(DnType::CommonName, name);
    p.not_before = now + Duration::days(from);
    p.not_after = now + Duration::days(to);
    p.use_authority_key_identifier_extension = true;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.signed_by(&key, issuer).map_err(err)?;
    write(
        &dir.join(format!("{name}.pem")),
        cert.pem().as_bytes(),
        0o644,
    )?;
    write(
        &dir.join(format!("{name}.key")),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.der());
    Ok(digest.as_ref().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

fn nginx_conf(dir: &Path, names: &[String], port: u16, files: &str) -> Result<String> {
    let p = |rel: &str| quoted(&dir.join(rel));
    let tmp = p("nginx/tmp")?;
    let mut c = format!(
        "worker_processes 2;\n\
         pid {pid};\n\
         error_log {log} notice;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  \
           access_log off;\n  \
           ssl_protocols TLSv1.2 TLSv1.3;\n  \
           client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};\n  \
           uwsgi_temp_path {tmp}; scgi_temp_path {tmp};\n  \
           server_names_hash_max_size 8192; server_names_hash_bucket_size 128;\n",
        pid = p("nginx/logs/nginx.pid")?,
        log = p("nginx/logs/error.log")?,
    );
    for name in names {
        let _ = writeln!(
            c,
            "  server {{ listen 127.0.0.1:{port} ssl; server_name {name};\n    \
               ssl_certificate {cert}; ssl_certificate_key {key};\n    \
               return 200 \"ok\\n\"; }}",
            cert = p(&format!("{files}/{name}.pem"))?,
            key = p(&format!("{files}/{name}.key"))?,
        );
    }
    c.push_str("}\n");
    Ok(c)
}

fn certswap_toml(dir: &Path, names: &[String], port: u16) -> Result<String> {
    let q = |rel: &str| quoted(&dir.join(rel));
    let mut t = format!(
        "state_dir = {state}\n\n[server]\nkind = \"nginx\"\nbinary = \"/usr/sbin/nginx\"\n\
         config = {conf}\nprefix = {prefix}\npid_file = {pid}\n\n\
         [probe]\ntimeout = \"5s\"\ndeadline = \"{deadline}s\"\nconsecutive = 3\nca_file = {ca}\n",
        // nginx needs ~1 s per 1000 sites to settle after a reload on this
        // box, and the wait makes 3 handshakes per site: 30 s, and 1 s
        // more per 100 sites above 3000 (10,000 sites: 100 s).
        deadline = 30 + names.len().saturating_sub(3000) / 100,
        state = q("state")?,
        conf = q("nginx/nginx.conf")?,
        prefix = q("nginx")?,
        pid = q("nginx/logs/nginx.pid")?,
        ca = q("ca.pem")?,
    );
    for name in names {
        let _ = write!(
            t,
            "\n[[site]]\nname = \"{name}\"\ncert = {cert}\nkey = {key}\n\
             endpoints = [\"127.0.0.1:{port}\"]\n",
            cert = q(&format!("ssl/{name}.pem"))?,
            key = q(&format!("ssl/{name}.key"))?,
        );
    }
    Ok(t)
}

/// `"path"` for nginx.conf and TOML alike (no quote, backslash or control
/// character allowed in it).
fn quoted(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .ok_or_else(|| format!("{}: not UTF-8", p.display()))?;
    if s.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
        return Err(format!("{s}: a path with quotes or backslashes"));
    }
    Ok(format!("\"{s}\""))
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn err(e: rcgen::Error) -> String {
    e.to_string()
}
