//! Helpers of the agent tests (`tests/agent_*.rs`): a world of real nginx
//! sites with a certswap config, the agent as a child process (`run` or
//! `run --once`), vendor zips, and a real in-process HTTPS source (rustls on
//! 127.0.0.1 with an rcgen CA) that can answer 304, 500, wrong bytes, slow
//! and truncated bodies, and can demand a bearer token and a client cert.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::support::nginx::Nginx;
use crate::support::pki::{self, Ca, Leaf};
use crate::support::{SiteSpec, certswap, served_sha256, toml_path};

/// One certswap site on the test server.
pub struct SiteFiles {
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// What the site serves at the start (20 days left).
    pub old: Leaf,
}

/// Real nginx sites, a CA, a state dir, an inbox and a config file.
pub struct World {
    pub dir: TempDir,
    pub ca: Ca,
    pub nginx: Nginx,
    pub sites: Vec<SiteFiles>,
    pub config: PathBuf,
    pub state: PathBuf,
    pub inbox: PathBuf,
    base_toml: String,
}

impl World {
    /// nginx with one server block per name, each serving an old leaf
    /// (20 days left); the config has the sites and `extra` appended
    /// (`[agent]`, `[[source]]`…). `{inbox}` in `extra` is replaced by the
    /// inbox path.
    pub fn nginx(names: &[&str], extra: &str) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let ssl = dir.path().join("ssl");
        fs::create_dir(&ssl).expect("mkdir ssl");
        let ca = Ca::new("certswap agent test root");
        let mut sites = Vec::new();
        let mut specs = Vec::new();
        for name in names {
            let old = ca.leaf(&[name]).days(-345, 20).build();
            let (cert, key) = pki::write(&ssl, name, &old);
            specs.push(SiteSpec::new(name, &cert, &key));
            sites.push(SiteFiles {
                name: name.to_string(),
                cert,
                key,
                old,
            });
        }
        let nginx = Nginx::start(&specs);
        let ca_file = dir.path().join("ca.pem");
        fs::write(&ca_file, ca.cert_pem()).expect("write ca");
        let state = dir.path().join("state");
        let inbox = dir.path().join("inbox");
        let triples: Vec<(&str, &PathBuf, &PathBuf)> = sites
            .iter()
            .map(|s| (s.name.as_str(), &s.cert, &s.key))
            .collect();
        let base_toml = nginx.certswap_config(&state, &triples, Some(&ca_file));
        let config = dir.path().join("certswap.toml");
        let w = World {
            dir,
            ca,
            nginx,
            sites,
            config,
            state,
            inbox,
            base_toml,
        };
        w.set_extra(extra);
        w
    }

    /// Rewrite the config: the sites plus `extra`.
    pub fn set_extra(&self, extra: &str) {
        let extra = extra.replace("{inbox}", &toml_path(&self.inbox));
        fs::write(&self.config, format!("{}\n{extra}\n", self.base_toml)).expect("write config");
    }

    /// `[[source]]` for the inbox with a short debounce.
    pub fn inbox_source(&self) -> String {
        format!(
            "[[source]]\nkind = \"inbox\"\npath = {}\ndebounce = \"200ms\"\n",
            toml_path(&self.inbox)
        )
    }

    pub fn site(&self, name: &str) -> &SiteFiles {
        self.sites
            .iter()
            .find(|s| s.name == name)
            .expect("site of the world")
    }

    /// A like-for-like renewal of `name`: one year more.
    pub fn renewed(&self, name: &str) -> Leaf {
        self.ca.leaf(&[name]).days(-1, 385).build()
    }

    /// SHA-256 of the leaf nginx serves for `name` (openssl s_client).
    pub fn served(&self, name: &str) -> String {
        served_sha256(self.nginx.port(), name).expect("openssl s_client sees a certificate")
    }

    pub fn ssl_dir(&self) -> PathBuf {
        self.dir.path().join("ssl")
    }

    /// `certswap --config C run --once`, bounded to 90 s.
    pub fn run_once(&self) -> Output {
        let mut cmd = agent_cmd(&self.config);
        cmd.arg("--once");
        output_within(cmd, Duration::from_secs(90))
    }

    /// `certswap --config C run` in the background.
    pub fn spawn(&self) -> Daemon {
        Daemon::spawn(&self.config, &self.dir.path().join("agent.log"))
    }

    /// Write `dir/NAME` atomically (temp dot-file, then rename), as a
    /// careful tool would.
    pub fn drop_file(&self, name: &str, bytes: &[u8]) {
        fs::create_dir_all(&self.inbox).expect("mkdir inbox");
        let tmp = self.inbox.join(format!(".{name}.part"));
        fs::write(&tmp, bytes).expect("write temp");
        fs::rename(&tmp, self.inbox.join(name)).expect("rename into inbox");
    }

    /// Subdirectories of `inbox/done` or `inbox/failed`.
    pub fn stamps(&self, which: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.inbox.join(which))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Every file name directly in the inbox (not done/ or failed/).
    pub fn inbox_files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.inbox)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_file())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// `certswap --config C run`, logging at info, without proxies from the
/// environment (the tests only talk to loopback).
pub fn agent_cmd(config: &Path) -> std::process::Command {
    let mut cmd = certswap();
    cmd.arg("--config").arg(config).arg("run");
    cmd.env("CERTSWAP_LOG", "info");
    for v in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        cmd.env_remove(v);
    }
    cmd
}

/// Run `cmd` to completion within `limit` (killed after), capturing output.
pub fn output_within(mut cmd: std::process::Command, limit: Duration) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).expect("out"))
        .stderr(fs::File::create(&err).expect("err"))
        .spawn()
        .expect("spawn certswap");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "certswap did not finish within {limit:?}; stderr:\n{}",
                fs::read_to_string(&err).unwrap_or_default()
            );
        }
        sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: fs::read(&out).unwrap_or_default(),
        stderr: fs::read(&err).unwrap_or_default(),
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The agent running in the background; killed and reaped on drop.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    pub fn spawn(config: &Path, log: &Path) -> Daemon {
        let file = fs::File::create(log).expect("agent log");
        let child = agent_cmd(config)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .expect("spawn certswap run");
        Daemon {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log contains `needle` (true) or `limit` passes.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            sleep(Duration::from_millis(25));
        }
        false
    }

    /// Count of `needle` in the log.
    pub fn count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).expect("signal the agent");
    }

    /// Wait for the agent to exit within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                self.child = None;
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `GET /metrics` on `addr` with a plain HTTP/1.1 request; the body.
pub fn scrape(addr: &str) -> Result<String, String> {
    use std::io::Read;
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    let (head, body) = buf.split_once("\r\n\r\n").ok_or("no header end")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("not 200: {head}"));
    }
    Ok(body.to_string())
}

// ---------------------------------------------------------------- zips

/// A zip of `(entry name, bytes)`, deflated, regular files.
pub fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o644);
    for (name, bytes) in entries {
        w.start_file(*name, opts).expect("zip entry");
        w.write_all(bytes).expect("zip write");
    }
    w.finish().expect("zip finish").into_inner()
}

/// A zip with one symlink entry `name → target` after `entries`.
pub fn zip_with_symlink(entries: &[(&str, &[u8])], name: &str, target: &str) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    for (n, bytes) in entries {
        w.start_file(*n, opts).expect("zip entry");
        w.write_all(bytes).expect("zip write");
    }
    w.add_symlink(name, target, opts).expect("zip symlink");
    w.finish().expect("zip finish").into_inner()
}

// ------------------------------------------------------- HTTPS source

/// How the test source answers one path.
#[derive(Clone)]
pub enum Reply {
    /// 200 with the body; with an ETag, `If-None-Match: ETAG` gets 304.
    Body {
        bytes: Vec<u8>,
        etag: Option<String>,
    },
    /// This status, empty body.
    Status(u16),
    /// 200, the body sent in 4 pieces with `pause` between them.
    Slow { bytes: Vec<u8>, pause: Duration },
    /// 200 claiming `claimed` bytes, then only `bytes` and a close.
    Truncated { bytes: Vec<u8>, claimed: usize },
}

/// One request the source saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub status: u16,
}

#[derive(Default)]
struct SourceState {
    routes: HashMap<String, Reply>,
    seen: Vec<Seen>,
    token: Option<String>,
}

/// A real HTTPS server on 127.0.0.1 (tokio-rustls, rcgen CA) serving
/// [`Reply`]s by path, on its own thread and runtime.
pub struct HttpsSource {
    pub port: u16,
    /// The CA to trust (`ca_file`): a PEM file written in `dir`.
    pub ca_file: PathBuf,
    state: Arc<Mutex<SourceState>>,
}

impl HttpsSource {
    /// Start serving; `dir` receives `source-ca.pem`. With `client_ca`
    /// (PEM), a client certificate signed by it is required (mTLS).
    pub fn start(dir: &Path, client_ca: Option<&str>) -> HttpsSource {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};

        let ca = Ca::new("certswap test source CA");
        let leaf = ca.leaf(&["127.0.0.1", "localhost"]).build();
        let ca_file = dir.join("source-ca.pem");
        fs::write(&ca_file, ca.cert_pem()).expect("write source CA");
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("leaf PEM");
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key PEM");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let config = match client_ca {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    roots.add(c.expect("client CA PEM")).expect("add client CA");
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
        }
        .with_single_cert(certs, key)
        .expect("server cert");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind source");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(SourceState::default()));
        serve_tls(listener, acceptor, state.clone(), serve_one);
        HttpsSource {
            port,
            ca_file,
            state,
        }
    }

    /// `https://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    pub fn set(&self, path: &str, reply: Reply) {
        self.state
            .lock()
            .expect("state")
            .routes
            .insert(path.to_string(), reply);
    }

    /// Demand `Authorization: Bearer TOKEN` (401 otherwise).
    pub fn require_token(&self, token: &str) {
        self.state.lock().expect("state").token = Some(token.to_string());
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().expect("state").seen.clone()
    }

    pub fn clear_seen(&self) {
        self.state.lock().expect("state").seen.clear();
    }
}

/// Accept TLS connections on `listener` for the rest of the test process
/// (a thread with a current-thread runtime of its own), each handed to
/// `serve` with a clone of `state`. The in-process HTTPS servers of the
/// agent tests and of the vendor API tests both run on it.
pub fn serve_tls<S, F, Fut>(
    listener: std::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: S,
    serve: F,
) where
    S: Clone + Send + 'static,
    F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, S) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let state = state.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve(tls, state).await;
                    }
                });
            }
        });
    });
}

async fn serve_one(
    mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    st: Arc<Mutex<SourceState>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .to_string();
    let mut headers = HashMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let (reply, token) = {
        let s = st.lock().expect("state");
        (s.routes.get(&path).cloned(), s.token.clone())
    };
    let authorized = match &token {
        None => true,
        Some(t) => headers.get("authorization") == Some(&format!("Bearer {t}")),
    };
    let (status, head_extra, body, mode): (u16, String, Vec<u8>, Mode) = match (authorized, reply) {
        (false, _) => (401, String::new(), Vec::new(), Mode::Whole),
        (true, None) => (404, String::new(), Vec::new(), Mode::Whole),
        (true, Some(Reply::Status(s))) => (s, String::new(), Vec::new(), Mode::Whole),
        (true, Some(Reply::Body { bytes, etag })) => match etag {
            Some(e) if headers.get("if-none-match") == Some(&e) => {
                (304, format!("ETag: {e}\r\n"), Vec::new(), Mode::Whole)
            }
            Some(e) => (200, format!("ETag: {e}\r\n"), bytes, Mode::Whole),
            None => (200, String::new(), bytes, Mode::Whole),
        },
        (true, Some(Reply::Slow { bytes, pause })) => {
            (200, String::new(), bytes, Mode::Slow(pause))
        }
        (true, Some(Reply::Truncated { bytes, claimed })) => {
            (200, String::new(), bytes, Mode::Claim(claimed))
        }
    };
    st.lock().expect("state").seen.push(Seen {
        path,
        headers,
        status,
    });
    let len = match mode {
        Mode::Claim(n) => n,
        _ => body.len(),
    };
    let reason = match status {
        200 => "OK",
        304 => "Not Modified",
        401 => "Unauthorized",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n{head_extra}Connection: close\r\n");
    if status != 304 {
        out.push_str(&format!("Content-Length: {len}\r\n"));
    }
    out.push_str("\r\n");
    if tls.write_all(out.as_bytes()).await.is_err() {
        return;
    }
    match mode {
        Mode::Whole | Mode::Claim(_) => {
            let _ = tls.write_all(&body).await;
        }
        Mode::Slow(pause) => {
            let piece = body.len().div_ceil(4).max(1);
            for part in body.chunks(piece) {
                if tls.write_all(part).await.is_err() || tls.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(pause).await;
            }
        }
    }
    let _ = tls.flush().await;
    let _ = tls.shutdown().await;
}

enum Mode {
    Whole,
    Slow(Duration),
    Claim(usize),
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    pki::hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// The documented rollout bucket: first 4 bytes of SHA-256("host/site"), mod 100.
pub fn bucket(host_id: &str, site: &str) -> u32 {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{host_id}/{site}").as_bytes(),
    );
    let b = d.as_ref();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) % 100
}

/// Publish `leaf` for `site` at `dir/` on the source; returns the manifest
/// bundle entry (with a rollout of `percent`).
pub fn publish(
    src: &HttpsSource,
    dir: &str,
    site: &str,
    leaf: &Leaf,
    percent: u32,
) -> serde_json::Value {
    let cert = leaf.fullchain_pem().into_bytes();
    let key = leaf.key_pem.clone().into_bytes();
    src.set(
        &format!("/fleet/{dir}/fullchain.pem"),
        Reply::Body {
            bytes: cert.clone(),
            etag: None,
        },
    );
    src.set(
        &format!("/fleet/{dir}/privkey.pem"),
        Reply::Body {
            bytes: key.clone(),
            etag: None,
        },
    );
    serde_json::json!({
        "site": site,
        "cert": format!("{dir}/fullchain.pem"),
        "cert_sha256": sha256(&cert),
        "key": format!("{dir}/privkey.pem"),
        "key_sha256": sha256(&key),
        "not_after": leaf.not_after_rfc3339(),
        "rollout": {"percent": percent},
    })
}

/// Serve `bundles` as the manifest at `/fleet/manifest.json` with `etag`.
pub fn set_manifest(
    src: &HttpsSource,
    bundles: Vec<serde_json::Value>,
    extra: &[(&str, serde_json::Value)],
    etag: &str,
) {
    let mut m = serde_json::json!({"version": 1, "bundles": bundles});
    for (k, v) in extra {
        m[*k] = v.clone();
    }
    src.set(
        "/fleet/manifest.json",
        Reply::Body {
            bytes: serde_json::to_vec(&m).expect("json"),
            etag: Some(format!("\"{etag}\"")),
        },
    );
}

/// `[agent]` + `[[source]] kind = "http"` for `src`.
pub fn http_source_toml(src: &HttpsSource, host_id: &str, extra: &str) -> String {
    format!(
        "[agent]\ninterval = \"1h\"\nhost_id = \"{host_id}\"\n\n[[source]]\nkind = \"http\"\nurl = \"{}\"\nca_file = {}\ntimeout = \"3s\"\n{extra}\n",
        src.url("/fleet/manifest.json"),
        toml_path(&src.ca_file)
    )
}
