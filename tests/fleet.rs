//! A fleet on one machine, every part real (issue 14): 20 hosts, each its
//! own nginx on its own loopback address (127.0.1.1 … 127.0.1.20) and its
//! own `certswap run` (own config, state dir, host_id, metrics port, 1 s
//! interval); the manifest host, a real nginx serving the published folder
//! over HTTPS behind a bearer token (ETag and 304 are nginx's); a real
//! Prometheus scraping the 20 agents every second, queried by `certswap
//! rollout`. Every check of what a host serves is made from outside with
//! `openssl s_client`.
//!
//! Scenarios, in sequence on one fleet (each builds on the last):
//! 3. polling an unchanged manifest: 304s only; bytes and CPU per poll and
//!    the cost of 10,000 agents at a 15-minute interval, printed;
//! 1. a renewal of two sites, 5 % → 25 % → 100 %: after each wave exactly
//!    the hosts whose bucket is below the percent serve it;
//! 4. one `rollout --waves 5,25,100` while an agent of the second wave
//!    dies in the middle of its install (`CERTSWAP_FAILPOINT=after-reload`
//!    aborts it like `kill -9`) and is restarted: it repairs, installs, and
//!    the rollout ends with all 20 hosts on the renewal;
//! 2. a renewal that fails on a canary (its endpoint is answered by a
//!    second nginx holding the old certificate, so the probe never sees the
//!    new leaf): the canary rolls back, the rollout pauses the manifest
//!    and exits 1 naming it, and no host outside the first wave installs.
//!
//! Every process is stopped by its guard, also when an assertion fails.

mod agent_util;
mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use agent_util::{agent_cmd, bucket, output_within, text};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use support::pki::{self, Ca, Leaf};
use support::{certswap, free_port, served_sha256_at, toml_path};

const HOSTS: usize = 20;
const SITES: [&str; 2] = ["a.fleet.test", "b.fleet.test"];
const TOKEN: &str = "fleet-token-6b1f0c";

/// A spawned process in its own process group: QUIT, then KILL of the
/// group, reaped on drop.
struct Proc {
    child: Option<Child>,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup log"))
            .stderr(f)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc { child: Some(child) }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Exited already (its status), or None while it runs.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(c.id() as i32);
        if c.try_wait().ok().flatten().is_none() {
            let _ = kill(pid, Signal::SIGQUIT);
            let deadline = Instant::now() + Duration::from_secs(3);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                sleep(Duration::from_millis(20));
            }
        }
        // The group: nginx workers of a master that is gone, too.
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Wait (≤ 15 s) until `addr` accepts TCP.
fn wait_listening(addr: &str, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} does not listen on {addr}:\n{}",
            fs::read_to_string(log).unwrap_or_default()
        );
        sleep(Duration::from_millis(25));
    }
}

/// A port free on every address of the fleet.
fn port_free_on_all(addrs: &[String]) -> u16 {
    for _ in 0..50 {
        let p = free_port();
        if addrs
            .iter()
            .all(|a| TcpListener::bind((a.parse::<Ipv4Addr>().expect("ip"), p)).is_ok())
        {
            return p;
        }
    }
    panic!("no port free on all fleet addresses");
}

fn nginx_conf(prefix: &Path, body: &str) -> String {
    let p = |r: &str| prefix.join(r).display().to_string();
    format!(
        "worker_processes 1;\npid {pid};\nerror_log {err};\nevents {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {t}; proxy_temp_path {t}; fastcgi_temp_path {t};\n  \
         uwsgi_temp_path {t}; scgi_temp_path {t};\n{body}}}\n",
        pid = p("nginx.pid"),
        err = p("error.log"),
        t = p("tmp"),
    )
}

fn start_nginx(name: &str, prefix: &Path, conf: &str, listen: &str) -> Proc {
    fs::create_dir_all(prefix.join("tmp")).expect("mkdir tmp");
    fs::write(prefix.join("nginx.conf"), conf).expect("nginx.conf");
    let mut cmd = Command::new("/usr/sbin/nginx");
    cmd.arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(prefix.join("nginx.conf"))
        .arg("-e")
        .arg(prefix.join("error.log"))
        .args(["-g", "daemon off;"]);
    let log = prefix.join("stderr.log");
    let p = Proc::spawn(name, cmd, &log);
    wait_listening(listen, name, &prefix.join("error.log"));
    p
}

/// One server block per site, on `listen`, with the files in `ssl`.
fn host_server_blocks(listen: &str, ssl: &Path) -> String {
    SITES
        .iter()
        .map(|s| {
            format!(
                "  server {{ listen {listen} ssl; server_name {s};\n    ssl_certificate {c}; ssl_certificate_key {k};\n    return 200 \"ok\\n\"; }}\n",
                c = ssl.join(format!("{s}.pem")).display(),
                k = ssl.join(format!("{s}.key")).display(),
            )
        })
        .collect()
}

struct Host {
    id: String,
    dir: PathBuf,
    /// `127.0.1.K:PORT`: what the agent probes and what outside checks ask.
    endpoint: String,
    /// The agent's `metrics_listen`, as Prometheus scrapes it.
    metrics: String,
    config: PathBuf,
    nginx: Proc,
    agent: Proc,
    log_no: u32,
}

impl Host {
    fn log(&self) -> PathBuf {
        self.dir.join(format!("agent-{}.log", self.log_no))
    }

    fn spawn_agent(&mut self, env: &[(&str, &str)]) {
        self.agent.stop();
        self.log_no += 1;
        let mut cmd = agent_cmd(&self.config);
        cmd.env("CERTSWAP_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.agent = Proc::spawn(&format!("agent {}", self.id), cmd, &self.log());
    }

    fn agent_log(&self) -> String {
        fs::read_to_string(self.log()).unwrap_or_default()
    }

    fn served(&self, site: &str) -> String {
        served_sha256_at(&self.endpoint, site).unwrap_or_else(|e| format!("error: {e}"))
    }
}

/// `GET path` on a plain-HTTP `addr`; (status, body).
fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let t = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = t.split_once("\r\n\r\n").ok_or("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no status")?;
    Ok((status, body.to_string()))
}

/// Number of series Prometheus returns for `promql` now.
fn prom_count(addr: &str, promql: &str) -> usize {
    let q: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    match http_get(addr, &format!("/api/v1/query?query={q}")) {
        Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["data"]["result"].as_array().map(Vec::len))
            .unwrap_or(0),
        _ => 0,
    }
}

/// utime + stime of `pid` in clock ticks (/proc/PID/stat fields 14, 15).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let f: Vec<&str> = after.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    // Fields after "(comm)" start at field 3 (state): utime is 14, stime 15.
    n(11) + n(12)
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Host ids whose waves fit the scenarios, computed with the agent's own
/// bucket function (`certswap::manifest::bucket`, the same as
/// `agent_util::bucket`): for each site the 5 % wave holds at least one
/// host, the 25 % wave more, and the 25 % wave is not the whole fleet. The
/// first salt that satisfies this is taken, so the ids are fixed.
fn pick_host_ids() -> Vec<String> {
    for salt in 0..1000 {
        let ids: Vec<String> = (1..=HOSTS).map(|i| format!("web{salt}-{i:02}")).collect();
        let ok = SITES.iter().all(|s| {
            let n = |p: u32| ids.iter().filter(|h| bucket(h, s) < p).count();
            n(5) >= 1 && n(5) < n(25) && n(25) < HOSTS
        });
        if ok {
            for id in &ids {
                assert_eq!(
                    bucket(id, SITES[0]),
                    certswap::manifest::bucket(id, SITES[0])
                );
            }
            return ids;
        }
    }
    panic!("no salt gives non-empty, different waves");
}

/// Fields drop in order: the processes first, the temp dir last.
struct Fleet {
    ca: Ca,
    /// The published folder (`DIR` of manifest build / rollout).
    publish: PathBuf,
    hosts: Vec<Host>,
    manifest_nginx: Proc,
    manifest_prefix: PathBuf,
    prometheus: Proc,
    prom_addr: String,
    dir: tempfile::TempDir,
}

impl Fleet {
    fn start() -> Fleet {
        let dir = tempfile::Builder::new()
            .prefix("certswap-fleet-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().to_path_buf();
        // nginx workers run as nobody: the served folder must be readable.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod");
        let ca = Ca::new("certswap fleet test root");
        let ca_file = root.join("ca.pem");
        fs::write(&ca_file, ca.cert_pem()).expect("ca");
        let token = root.join("token");
        fs::write(&token, format!("{TOKEN}\n")).expect("token");
        fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).expect("chmod token");

        // The manifest host: nginx, HTTPS, bearer token, static files.
        let www = root.join("www");
        let publish = www.join("fleet");
        fs::create_dir_all(&publish).expect("publish dir");
        for d in [&www, &publish] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let manifest_prefix = root.join("manifest-host");
        fs::create_dir_all(&manifest_prefix).expect("prefix");
        let tls = ca.leaf(&["127.0.0.1"]).days(-1, 30).build();
        let (mcert, mkey) = pki::write(&manifest_prefix, "tls", &tls);
        let mport = free_port();
        let body = format!(
            "  log_format fleet '$remote_addr $status $bytes_sent $request_length \"$request\"';\n  \
             server {{ listen 127.0.0.1:{mport} ssl; server_name _;\n    \
               ssl_certificate {c}; ssl_certificate_key {k};\n    \
               access_log {log} fleet;\n    root {www};\n    \
               location /fleet/ {{ if ($http_authorization != \"Bearer {TOKEN}\") {{ return 401; }} }}\n  }}\n",
            c = mcert.display(),
            k = mkey.display(),
            log = manifest_prefix.join("access.log").display(),
            www = www.display(),
        );
        let manifest_nginx = start_nginx(
            "manifest nginx",
            &manifest_prefix,
            &nginx_conf(&manifest_prefix, &body),
            &format!("127.0.0.1:{mport}"),
        );
        let url = format!("https://127.0.0.1:{mport}/fleet/manifest.json");

        // The renewal every host serves at the start, published at 100 %.
        let old: BTreeMap<&str, Leaf> = SITES
            .iter()
            .map(|s| (*s, ca.leaf(&[s]).days(-345, 20).build()))
            .collect();
        for (s, leaf) in &old {
            put_renewal(&publish, s, "2026-01", leaf);
        }
        let out = certswap()
            .args(["manifest", "build"])
            .arg(&publish)
            .output()
            .expect("build");
        assert!(out.status.success(), "{}", text(&out.stderr));

        // 20 hosts.
        let ids = pick_host_ids();
        let addrs: Vec<String> = (1..=HOSTS).map(|k| format!("127.0.1.{k}")).collect();
        let port = port_free_on_all(&addrs);
        let mut hosts = Vec::new();
        let mut targets = Vec::new();
        for (k, id) in ids.iter().enumerate() {
            let hdir = root.join(format!("host{:02}", k + 1));
            let ssl = hdir.join("ssl");
            fs::create_dir_all(&ssl).expect("ssl dir");
            for (s, leaf) in &old {
                pki::write(&ssl, s, leaf);
            }
            let endpoint = format!("{}:{port}", addrs[k]);
            let nginx = start_nginx(
                &format!("nginx {id}"),
                &hdir,
                &nginx_conf(&hdir, &host_server_blocks(&endpoint, &ssl)),
                &endpoint,
            );
            let metrics = format!("127.0.0.1:{}", free_port());
            targets.push(metrics.clone());
            let mut config = format!(
                "state_dir = {state}\n\n[server]\nkind = \"nginx\"\nbinary = \"/usr/sbin/nginx\"\n\
                 config = {conf}\nprefix = {prefix}\npid_file = {pid}\n\n\
                 [probe]\ntimeout = \"2s\"\ndeadline = \"5s\"\nconsecutive = 2\nca_file = {ca}\n\n\
                 [agent]\ninterval = \"1s\"\nmetrics_listen = \"{metrics}\"\nhost_id = \"{id}\"\n\n\
                 [[source]]\nkind = \"http\"\nname = \"fleet\"\nurl = \"{url}\"\nca_file = {ca}\n\
                 token_file = {token}\ntimeout = \"3s\"\n",
                state = toml_path(&hdir.join("state")),
                conf = toml_path(&hdir.join("nginx.conf")),
                prefix = toml_path(&hdir),
                pid = toml_path(&hdir.join("nginx.pid")),
                ca = toml_path(&ca_file),
                token = toml_path(&token),
            );
            for s in SITES {
                config.push_str(&format!(
                    "\n[[site]]\nname = \"{s}\"\ncert = {c}\nkey = {k}\nendpoints = [\"{endpoint}\"]\n",
                    c = toml_path(&ssl.join(format!("{s}.pem"))),
                    k = toml_path(&ssl.join(format!("{s}.key"))),
                ));
            }
            let config_path = hdir.join("certswap.toml");
            fs::write(&config_path, config).expect("config");
            let mut h = Host {
                id: id.clone(),
                dir: hdir,
                endpoint,
                metrics,
                config: config_path,
                nginx,
                agent: Proc { child: None },
                log_no: 0,
            };
            h.spawn_agent(&[]);
            hosts.push(h);
        }

        // Prometheus, scraping the 20 agents every second.
        let pdir = root.join("prometheus");
        fs::create_dir_all(pdir.join("data")).expect("prometheus dir");
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        fs::write(
            pdir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: certswap\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ),
        )
        .expect("prometheus.yml");
        let prom_addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new("/usr/bin/prometheus");
        cmd.arg(format!(
            "--config.file={}",
            pdir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            pdir.join("data").display()
        ))
        .arg(format!("--web.listen-address={prom_addr}"))
        .current_dir(&pdir);
        let prometheus = Proc::spawn("prometheus", cmd, &pdir.join("prometheus.log"));
        Fleet {
            dir,
            ca,
            publish,
            hosts,
            manifest_nginx,
            manifest_prefix,
            prometheus,
            prom_addr,
        }
    }

    fn prom_url(&self) -> String {
        format!("http://{}", self.prom_addr)
    }

    /// Wait (bounded) until Prometheus sees `n` agents with `series`.
    fn wait_prom(&self, promql: &str, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let got = prom_count(&self.prom_addr, promql);
            if got >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus has {got} of {n} series of {promql} after {limit:?}:\n{}",
                fs::read_to_string(self.dir.path().join("prometheus/prometheus.log"))
                    .unwrap_or_default()
            );
            sleep(Duration::from_millis(250));
        }
    }

    /// Every host serves, for `site`, `new` when `in_wave(host)`, else `old`.
    fn assert_served(&self, site: &str, what: &str, expect: impl Fn(&Host) -> String) {
        let mut wrong = Vec::new();
        for h in &self.hosts {
            let want = expect(h);
            let got = h.served(site);
            if got != want {
                wrong.push(format!(
                    "{} ({}, metrics {}, bucket {}): serves {got}, expected {want}",
                    h.id,
                    h.endpoint,
                    h.metrics,
                    bucket(&h.id, site)
                ));
            }
        }
        assert!(wrong.is_empty(), "{what}, {site}:\n{}", wrong.join("\n"));
    }

    fn rollout(&self, args: &[&str], limit: Duration) -> Output {
        let mut cmd = certswap();
        cmd.arg("rollout")
            .arg(&self.publish)
            .args(["--prometheus", &self.prom_url()])
            .args(args);
        output_within(cmd, limit)
    }

    fn access_log(&self) -> String {
        fs::read_to_string(self.manifest_prefix.join("access.log")).unwrap_or_default()
    }
}

fn put_renewal(publish: &Path, site: &str, renewal: &str, leaf: &Leaf) {
    let d = publish.join(site).join(renewal);
    fs::create_dir_all(&d).expect("renewal dir");
    fs::set_permissions(publish.join(site), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::write(d.join("fullchain.pem"), leaf.fullchain_pem()).expect("cert");
    fs::write(d.join("privkey.pem"), &leaf.key_pem).expect("key");
    // The manifest host's workers (nobody) read the files.
    for f in ["fullchain.pem", "privkey.pem"] {
        fs::set_permissions(d.join(f), fs::Permissions::from_mode(0o644)).expect("chmod");
    }
}

/// Seconds a rollout printed for its waves ("proven on N hosts in X s").
fn wave_lines(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.contains(") proven on "))
        .map(str::to_string)
        .collect()
}

#[test]
fn twenty_hosts_roll_out_in_waves_gated_by_prometheus() {
    let mut fleet = Fleet::start();
    assert!(fleet.prometheus.pid() > 0);
    let started = Instant::now();
    fleet.wait_prom("certswap_host_info", HOSTS, Duration::from_secs(60));
    fleet.wait_prom(
        "certswap_served_leaf_info",
        HOSTS * SITES.len(),
        Duration::from_secs(60),
    );

    // ------------------------------------------------ scenario 3: 304s
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fleet
        .hosts
        .iter()
        .all(|h| h.agent_log().contains("not modified (304)"))
    {
        assert!(Instant::now() < deadline, "not every agent saw a 304");
        sleep(Duration::from_millis(200));
    }
    let log_from = fleet.access_log().len();
    let ticks = |f: &Fleet| -> (u64, u64) {
        let agents = f.hosts.iter().map(|h| cpu_ticks(h.agent.pid())).sum();
        let mut nginx = cpu_ticks(f.manifest_nginx.pid());
        for w in support::children_of(f.manifest_nginx.pid()) {
            nginx += cpu_ticks(w);
        }
        (agents, nginx)
    };
    let (a0, n0) = ticks(&fleet);
    let window = Duration::from_secs(10);
    sleep(window);
    let (a1, n1) = ticks(&fleet);
    let log = fleet.access_log();
    let lines: Vec<&str> = log[log_from..]
        .lines()
        .filter(|l| l.contains("/fleet/manifest.json"))
        .collect();
    let statuses: Vec<&str> = lines.iter().filter_map(|l| l.split(' ').nth(1)).collect();
    assert!(
        lines.len() >= HOSTS,
        "only {} polls in {window:?}",
        lines.len()
    );
    assert!(
        statuses.iter().all(|s| *s == "304"),
        "not all 304: {lines:?}"
    );
    let bytes: u64 = lines
        .iter()
        .filter_map(|l| l.split(' ').nth(2)?.parse::<u64>().ok())
        .sum();
    let req_bytes: u64 = lines
        .iter()
        .filter_map(|l| l.split(' ').nth(3)?.parse::<u64>().ok())
        .sum();
    let polls = lines.len() as f64;
    let hz = clock_ticks_per_second() as f64;
    let bytes_per = bytes as f64 / polls;
    let req_per = req_bytes as f64 / polls;
    let agent_cpu_ms = (a1 - a0) as f64 / hz * 1000.0 / polls;
    let nginx_cpu_ms = (n1 - n0) as f64 / hz * 1000.0 / polls;
    let rate = 10_000.0 / 900.0;
    println!(
        "scenario 3: {polls} polls of an unchanged manifest in {window:?}, all 304\n  \
         per poll: {bytes_per:.0} bytes sent by nginx ($bytes_sent), {req_per:.0} bytes of request \
         ($request_length); agent CPU {agent_cpu_ms:.2} ms per pass (poll + expiry + drift \
         handshakes), manifest nginx CPU {nginx_cpu_ms:.3} ms per poll (TLS handshake included)\n  \
         10,000 agents every 15 min = {rate:.1} polls/s: {:.1} KB/s out, {:.1} KB/s in \
         (HTTP bytes, TLS records extra), {:.0} MB/day out, manifest nginx ≈ {:.1} % of one core",
        rate * bytes_per / 1000.0,
        rate * req_per / 1000.0,
        rate * bytes_per * 86_400.0 / 1e6,
        rate * nginx_cpu_ms / 10.0,
    );

    // ------------------------------------------------ scenario 1: waves
    let r1: BTreeMap<&str, Leaf> = SITES
        .iter()
        .map(|s| (*s, fleet.ca.leaf(&[s]).days(-1, 385).build()))
        .collect();
    let r0: BTreeMap<&str, String> = SITES
        .iter()
        .map(|s| (*s, fleet.hosts[0].served(s)))
        .collect();
    for (s, leaf) in &r1 {
        put_renewal(&fleet.publish, s, "2027-01", leaf);
    }
    let mut timings = Vec::new();
    for p in [5u32, 25, 100] {
        let t = Instant::now();
        let out = fleet.rollout(
            &[
                "--waves",
                &p.to_string(),
                "--soak",
                "2s",
                "--deadline",
                "90s",
            ],
            Duration::from_secs(150),
        );
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "wave {p}%: {stdout}\n{}",
            text(&out.stderr)
        );
        timings.extend(wave_lines(&stdout));
        timings.push(format!(
            "  wave {p}%: rollout ran {:.1} s",
            t.elapsed().as_secs_f64()
        ));
        for s in SITES {
            fleet.assert_served(s, &format!("after the {p}% wave"), |h| {
                if bucket(&h.id, s) < p {
                    r1[s].sha256.clone()
                } else {
                    r0[s].clone()
                }
            });
        }
    }
    println!(
        "scenario 1 (one rollout per wave, soak 2 s):\n{}",
        timings.join("\n")
    );

    // ------------------------------------------ scenario 4: kill mid-wave
    let a = SITES[0];
    let victim = fleet
        .hosts
        .iter()
        .position(|h| {
            (5..25).contains(&bucket(&h.id, a)) && SITES.iter().all(|s| bucket(&h.id, s) >= 5)
        })
        .or_else(|| {
            fleet
                .hosts
                .iter()
                .position(|h| (5..25).contains(&bucket(&h.id, a)))
        })
        .expect("a host of the 25% wave (pick_host_ids ensures one)");
    fleet.hosts[victim].spawn_agent(&[("CERTSWAP_FAILPOINT", "after-reload")]);
    fleet.wait_prom("certswap_host_info", HOSTS, Duration::from_secs(30));
    let r2: BTreeMap<&str, Leaf> = SITES
        .iter()
        .map(|s| (*s, fleet.ca.leaf(&[s]).days(-1, 390).build()))
        .collect();
    for (s, leaf) in &r2 {
        put_renewal(&fleet.publish, s, "2027-02", leaf);
    }
    let out_file = fleet.dir.path().join("rollout4.out");
    let mut cmd = certswap();
    cmd.arg("rollout")
        .arg(&fleet.publish)
        .args(["--prometheus", &fleet.prom_url()])
        .args(["--waves", "5,25,100", "--soak", "2s", "--deadline", "120s"]);
    let mut rollout = Proc::spawn("rollout", cmd, &out_file);
    let t4 = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(200);
    let mut crashed = None;
    let status = loop {
        if crashed.is_none()
            && let Some(st) = fleet.hosts[victim].agent.exited()
        {
            crashed = Some(st);
            let log = fleet.hosts[victim].agent_log();
            assert!(log.contains("failpoint after-reload reached"), "{log}");
            fleet.hosts[victim].spawn_agent(&[]);
        }
        if let Some(st) = rollout.exited() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout did not end:\n{}",
            fs::read_to_string(&out_file).unwrap_or_default()
        );
        sleep(Duration::from_millis(100));
    };
    let out4 = fs::read_to_string(&out_file).unwrap_or_default();
    assert!(
        crashed.is_some(),
        "the agent of {} never crashed:\n{out4}",
        fleet.hosts[victim].id
    );
    assert!(status.success(), "rollout with a crashed agent:\n{out4}");
    let relog = fleet.hosts[victim].agent_log();
    assert!(
        relog.contains("interrupted"),
        "no repair after the restart:\n{relog}"
    );
    assert!(relog.contains("installed and verified"), "{relog}");
    for s in SITES {
        fleet.assert_served(s, "after the rollout with a restarted agent", |_| {
            r2[s].sha256.clone()
        });
    }
    println!(
        "scenario 4: rollout 5,25,100 with {} killed mid-install and restarted: {:.1} s\n{}",
        fleet.hosts[victim].id,
        t4.elapsed().as_secs_f64(),
        wave_lines(&out4).join("\n")
    );

    // --------------------------------------------- scenario 2: a canary
    let canary = fleet
        .hosts
        .iter()
        .position(|h| bucket(&h.id, a) < 5)
        .expect("a host of the 5% wave");
    // The canary's own nginx moves to another port; its endpoint is now
    // answered by a second nginx holding copies of the files it serves.
    let impostor_dir = fleet.dir.path().join("impostor");
    let impostor_ssl = impostor_dir.join("ssl");
    fs::create_dir_all(&impostor_ssl).expect("impostor dir");
    let (ep, real) = {
        let h = &fleet.hosts[canary];
        for s in SITES {
            for ext in ["pem", "key"] {
                fs::copy(
                    h.dir.join("ssl").join(format!("{s}.{ext}")),
                    impostor_ssl.join(format!("{s}.{ext}")),
                )
                .expect("copy");
            }
        }
        let ip = h.endpoint.split(':').next().expect("ip").to_string();
        let real = format!("{ip}:{}", port_free_on_all(std::slice::from_ref(&ip)));
        fs::write(
            h.dir.join("nginx.conf"),
            nginx_conf(&h.dir, &host_server_blocks(&real, &h.dir.join("ssl"))),
        )
        .expect("move the canary's nginx");
        kill(Pid::from_raw(h.nginx.pid()), Signal::SIGHUP).expect("reload");
        wait_listening(&real, "the canary's nginx", &h.dir.join("error.log"));
        (h.endpoint.clone(), real)
    };
    let impostor = {
        let deadline = Instant::now() + Duration::from_secs(10);
        // The old listener closes once the old workers are gone.
        while TcpListener::bind(&ep).is_err() && TcpStream::connect(&ep).is_ok() {
            assert!(Instant::now() < deadline, "the canary's nginx keeps {ep}");
            sleep(Duration::from_millis(50));
        }
        start_nginx(
            "impostor nginx",
            &impostor_dir,
            &nginx_conf(&impostor_dir, &host_server_blocks(&ep, &impostor_ssl)),
            &ep,
        )
    };
    // Each agent's install counters for the site, read from its /metrics:
    // a host that installs (or even tries) changes them.
    let installs = |h: &Host| -> Vec<String> {
        agent_util::scrape(&h.metrics)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(&format!("certswap_install_total{{site=\"{a}\"")))
            .map(str::to_string)
            .collect()
    };
    let installs_before: Vec<Vec<String>> = fleet.hosts.iter().map(installs).collect();
    let r3 = fleet.ca.leaf(&[a]).days(-1, 395).build();
    put_renewal(&fleet.publish, a, "2027-03", &r3);
    let t2 = Instant::now();
    let out = fleet.rollout(
        &[
            "--site",
            a,
            "--waves",
            "5,25,100",
            "--soak",
            "2s",
            "--deadline",
            "60s",
        ],
        Duration::from_secs(120),
    );
    let stdout = text(&out.stdout);
    let canary_id = fleet.hosts[canary].id.clone();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("rollout paused at 5%"), "{stdout}");
    let named: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("rolled back"))
        .collect();
    assert!(
        named.iter().any(|l| l.contains(&canary_id)),
        "the canary {canary_id} is not named:\n{stdout}"
    );
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(fleet.publish.join("manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(m["paused"], true, "{m}");
    // The canary rolled back: its own nginx and its endpoint serve R2.
    assert_eq!(
        served_sha256_at(&real, a).expect("real nginx"),
        r2[a].sha256
    );
    assert_eq!(served_sha256_at(&ep, a).expect("endpoint"), r2[a].sha256);
    // Nobody outside the first wave installs it, not even a while later.
    for pass in 0..2 {
        for (i, h) in fleet.hosts.iter().enumerate() {
            if bucket(&h.id, a) >= 5 {
                assert_eq!(
                    h.served(a),
                    r2[a].sha256,
                    "{} took the paused renewal",
                    h.id
                );
                assert_eq!(installs(h), installs_before[i], "{} tried to install", h.id);
            }
        }
        for h in fleet
            .hosts
            .iter()
            .filter(|h| bucket(&h.id, a) < 5 && h.id != canary_id)
        {
            assert_eq!(h.served(a), r3.sha256, "{} of the first wave", h.id);
        }
        if pass == 0 {
            sleep(Duration::from_secs(3));
        }
    }
    println!(
        "scenario 2: canary {canary_id} rolled back, rollout paused in {:.1} s:\n{stdout}",
        t2.elapsed().as_secs_f64()
    );
    drop(impostor);
    println!(
        "fleet test: {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
    // The guards stop agents, host nginx, the manifest nginx and Prometheus.
    drop(fleet);
}
