//! One site on one real web server (nginx or apache), with its certswap
//! config, state dir and a PKI: the fixture most integration tests share.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use super::apache::Apache;
use super::nginx::Nginx;
use super::pki::{self, Ca, Leaf};
use super::{SiteSpec, certswap, served_sha256};

/// The site name every world serves.
pub const SITE: &str = "shop.test";
/// Its second name.
pub const ALIAS: &str = "www.shop.test";

/// Which real server a world runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nginx,
    Apache,
}

/// The running server behind a world.
pub enum Server {
    Nginx(Nginx),
    Apache(Apache),
}

impl Server {
    pub fn port(&self) -> u16 {
        match self {
            Server::Nginx(n) => n.port(),
            Server::Apache(a) => a.port(),
        }
    }

    pub fn conf_path(&self) -> PathBuf {
        match self {
            Server::Nginx(n) => n.conf_path(),
            Server::Apache(a) => a.conf_path(),
        }
    }

    pub fn configtest(&self) -> Result<(), String> {
        match self {
            Server::Nginx(n) => n.configtest(),
            Server::Apache(a) => a.configtest(),
        }
    }

    /// Processes serving now: a change means the server was signalled.
    pub fn worker_pids(&self) -> Vec<i32> {
        match self {
            Server::Nginx(n) => n.worker_pids(),
            Server::Apache(a) => a.worker_pids(),
        }
    }

    pub fn set_config(&self, text: &str) {
        match self {
            Server::Nginx(n) => n.set_config(text),
            Server::Apache(a) => a.set_config(text),
        }
    }
}

/// Options of a world.
#[derive(Debug, Clone)]
pub struct Options {
    pub kind: Kind,
    /// `mode = "managed"` for the site.
    pub managed: bool,
    /// apache: a separate `SSLCertificateChainFile` (leaf-only cert file).
    /// Implies `intermediate`.
    pub chain_file: bool,
    /// Leaves are issued by an intermediate (carried in the full chain).
    pub intermediate: bool,
    /// Replaces the probe deadline of the config ("10s").
    pub deadline: Option<String>,
}

impl Options {
    pub fn new(kind: Kind) -> Options {
        Options {
            kind,
            managed: false,
            chain_file: false,
            intermediate: false,
            deadline: None,
        }
    }
}

/// One site on one real server.
pub struct World {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    /// An intermediate that issues the leaves when chain_file is set.
    pub intermediate: Option<Ca>,
    pub old: Leaf,
    pub server: Server,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub chain: Option<PathBuf>,
    pub config: PathBuf,
}

impl World {
    /// The store's directory of the site ([`SITE`]), under the state dir.
    pub fn site_state(&self) -> PathBuf {
        self.dir.path().join("state/sites").join(SITE)
    }

    pub fn nginx() -> World {
        World::new(Options::new(Kind::Nginx))
    }

    pub fn apache() -> World {
        World::new(Options::new(Kind::Apache))
    }

    pub fn new(opts: Options) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let ssl = dir.path().join("ssl");
        std::fs::create_dir(&ssl).expect("mkdir ssl");
        let ca = Ca::new("certswap test root");
        let intermediate = (opts.chain_file || opts.intermediate)
            .then(|| ca.intermediate("certswap test intermediate"));
        let old = intermediate
            .as_ref()
            .unwrap_or(&ca)
            .leaf(&[SITE, ALIAS])
            .days(-345, 20)
            .build();
        let (cert, key) = pki::write(&ssl, SITE, &old);
        let mut spec = SiteSpec::new(SITE, &cert, &key).alias(ALIAS);
        let mut chain = None;
        if opts.chain_file {
            std::fs::write(&cert, &old.cert_pem).expect("leaf only");
            let c = ssl.join(format!("{SITE}_chain.crt"));
            std::fs::write(&c, &old.chain_pem).expect("chain");
            spec = spec.chain(&c);
            chain = Some(c);
        }
        let server = match opts.kind {
            Kind::Nginx => Server::Nginx(Nginx::start(&[spec])),
            Kind::Apache => Server::Apache(Apache::start(&[spec])),
        };
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.root_pem()).expect("write ca");
        let state = dir.path().join("state");
        let sites = [(SITE, &cert, &key)];
        let mut text = match &server {
            Server::Nginx(n) => n.certswap_config(&state, &sites, Some(&ca_file)),
            Server::Apache(a) => a.certswap_config(&state, &sites, Some(&ca_file)),
        };
        if let Some(d) = &opts.deadline {
            text = text.replace(
                "deadline = \"10s\"",
                &format!("deadline = {}", super::toml_str(d)),
            );
        }
        if opts.managed {
            text.push_str("mode = \"managed\"\n");
        }
        let config = dir.path().join("certswap.toml");
        std::fs::write(&config, text).expect("write config");
        World {
            dir,
            ca,
            intermediate,
            old,
            server,
            cert,
            key,
            chain,
            config,
        }
    }

    /// The CA that issues this world's leaves.
    pub fn issuer(&self) -> &Ca {
        self.intermediate.as_ref().unwrap_or(&self.ca)
    }

    /// A renewal: same names, one year longer.
    pub fn renewed(&self) -> Leaf {
        self.issuer().leaf(&[SITE, ALIAS]).days(-1, 385).build()
    }

    /// Write a bundle under `incoming/NAME.{pem,key}` (full chain).
    pub fn bundle(&self, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        let dir = self.dir.path().join("incoming");
        std::fs::create_dir_all(&dir).expect("mkdir incoming");
        pki::write(&dir, name, leaf)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = certswap();
        cmd.arg("--config").arg(&self.config).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run certswap")
    }

    pub fn install(&self, cert: &Path, key: &Path, extra: &[&str]) -> Output {
        self.install_env(cert, key, extra, &[])
    }

    /// [`World::install`] with extra environment variables.
    pub fn install_env(
        &self,
        cert: &Path,
        key: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Output {
        let mut args = vec![
            "install",
            "--site",
            SITE,
            "--cert",
            path(cert),
            "--key",
            path(key),
        ];
        args.extend_from_slice(extra);
        self.run_env(&args, env)
    }

    /// The leaf served now, seen by `openssl s_client`.
    pub fn served(&self) -> String {
        served_sha256(self.server.port(), SITE).expect("openssl s_client sees a certificate")
    }

    /// Hash of every file under the cert dir and the state dir (the lock
    /// file aside), following nothing: links are recorded by their target.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        for root in [self.dir.path().join("ssl"), self.dir.path().join("state")] {
            walk(&root, &mut out);
        }
        out
    }

    /// The cert and key on disk belong together (same public key).
    pub fn pair_matches(&self) -> bool {
        let certs = certswap::bundle::read_certs(&self.cert).expect("cert on disk parses");
        let key = certswap::bundle::read_key(&self.key).expect("key on disk parses");
        certs[0].spki_der == key.spki_der
    }

    /// Hidden files next to the targets (staged files a change left).
    pub fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.cert.parent().expect("dir"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect()
    }
}

fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.expect("dir entry").path();
        let meta = std::fs::symlink_metadata(&p).expect("lstat");
        if meta.file_type().is_symlink() {
            let t = std::fs::read_link(&p).expect("readlink");
            out.insert(p, format!("-> {}", t.display()));
        } else if meta.is_dir() {
            walk(&p, out);
        } else if p.file_name().is_some_and(|n| n != "lock") {
            out.insert(p.clone(), pki::sha256_file(&p));
        }
    }
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Exit code, stdout and stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
