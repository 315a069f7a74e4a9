//! `discover` against real servers: an nginx prefix whose main config
//! includes `sites/*.conf` (read through a real `nginx -T`), and an apache
//! config with `IncludeOptional sites/*.conf` and `Define`d paths (checked
//! with a real `apache2 -t`). Both servers are then started on free
//! loopback ports and every discovered endpoint is asked, with
//! `openssl s_client` and the discovered SNI name, which certificate it
//! serves: it must be the discovered site's. The servers are stopped by
//! their PID in `Drop`.

use std::fs;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use certswap::config::{Config, ServerConfig, ServerKind};
use certswap::discover::{DiscoveredSite, discover, to_json, to_toml};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const NGINX: &str = "/usr/sbin/nginx";
const APACHE: &str = "/usr/sbin/apache2";

/// A server started in the foreground by a test; stopped in Drop.
struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM: both servers stop their workers and exit.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three distinct loopback ports that were free a moment ago.
fn free_ports() -> [u16; 3] {
    // Hold all three listeners at once so the ports differ.
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0"))
        .collect();
    let port = |i: usize| listeners[i].local_addr().expect("local addr").port();
    [port(0), port(1), port(2)]
}

/// A self-signed P-256 certificate for `cn` as (cert, key) in `dir`.
fn self_signed(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{cn}.pem"));
    let key = dir.join(format!("{cn}.key"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:P-256")
        .args(["-nodes", "-days", "30", "-subj"])
        .arg(format!("/CN={cn}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl req");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// The subject of the leaf `addr` serves for `sni`, as openssl prints it.
fn served_subject(addr: &str, sni: &str) -> String {
    let hello = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-servername", sni])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-subject"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl x509");
    {
        use std::io::Write;
        let mut stdin = x509.stdin.take().expect("x509 stdin");
        let _ = stdin.write_all(&hello.stdout);
    }
    let out = x509.wait_with_output().expect("openssl x509");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Start `cmd` (a server in the foreground) and wait until every address in
/// `addrs` accepts connections. None when it exited (a port was taken).
fn start(mut cmd: Command, addrs: &[String]) -> Option<Server> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn server");
    let mut server = Server { child };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(_)) = server.child.try_wait() {
            return None;
        }
        if addrs.iter().all(|a| TcpStream::connect(a).is_ok()) {
            return Some(server);
        }
        assert!(
            Instant::now() < deadline,
            "server did not listen on {addrs:?}"
        );
        sleep(Duration::from_millis(50));
    }
}

fn by_name<'a>(sites: &'a [DiscoveredSite], name: &str) -> &'a DiscoveredSite {
    sites
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no site {name} in {sites:#?}"))
}

/// The TOML snippet must be a config certswap accepts, with every site.
fn check_toml(sites: &[DiscoveredSite], kind: &str) {
    let snippet = to_toml(sites);
    let text = format!("state_dir = \"/tmp/certswap-st\"\n[server]\nkind = \"{kind}\"\n{snippet}");
    let cfg = Config::parse(&text, Path::new("discovered.toml"))
        .unwrap_or_else(|e| panic!("config refused the discovered snippet: {e}\n{snippet}"));
    assert_eq!(cfg.sites.len(), sites.len(), "{snippet}");
    let json = to_json(sites);
    assert_eq!(
        json["sites"].as_array().map(Vec::len),
        Some(sites.len()),
        "{json}"
    );
}

/// Every discovered endpoint serves the site's certificate (CN = name).
fn check_served(sites: &[DiscoveredSite]) {
    for s in sites {
        for ep in &s.endpoints {
            let subject = served_subject(ep, &s.name);
            assert!(
                subject.contains(&s.name),
                "{ep} with SNI {} served {subject:?}",
                s.name
            );
        }
    }
}

/// Three TLS server blocks in `sites/*.conf` (one with two names and two
/// listens) and one plain-HTTP block; certificate paths relative,
/// absolute and quoted.
fn write_nginx(p: &Path, ports: [u16; 3]) -> PathBuf {
    let [p1, p2, p3] = ports;
    let d = p.display();
    let conf = p.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "worker_processes 1;\npid {d}/logs/nginx.pid;\nerror_log {d}/logs/error.log;\nevents {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n  include sites/*.conf;   # the sites\n}}\n"
        ),
    )
    .expect("write nginx.conf");
    fs::write(
        p.join("sites/a.conf"),
        format!(
            "# a.test: two names, two listens\nserver {{\n    listen 127.0.0.1:{p1} ssl default_server;\n    listen 127.0.0.1:{p2} ssl;\n    server_name a.test www.a.test;\n    ssl_certificate certs/a.test.pem;\n    ssl_certificate_key certs/a.test.key;\n    return 200 \"a\\n\";\n}}\n"
        ),
    )
    .expect("write a.conf");
    fs::write(
        p.join("sites/b.conf"),
        format!(
            "server {{ listen 127.0.0.1:{p1} ssl; server_name b.test;\n  ssl_certificate \"{d}/certs/b.test.pem\"; ssl_certificate_key '{d}/certs/b.test.key'; return 200 \"b\\n\"; }}\nserver {{ listen 127.0.0.1:{p3}; server_name plain.test; return 200 \"plain\\n\"; }}\n"
        ),
    )
    .expect("write b.conf");
    fs::write(
        p.join("sites/c.conf"),
        format!(
            "server {{\n  listen 127.0.0.1:{p2} ssl;\n  server_name C.test; # upper case on purpose\n  ssl_certificate {d}/certs/c.test.pem;\n  ssl_certificate_key {d}/certs/c.test.key;\n  return 200 \"c\\n\";\n}}\n"
        ),
    )
    .expect("write c.conf");
    conf
}

#[test]
fn nginx_sites_from_a_real_dump_are_served_where_discovered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    for sub in ["logs", "tmp", "sites", "certs"] {
        fs::create_dir_all(p.join(sub)).expect("mkdir");
    }
    for cn in ["a.test", "b.test", "c.test"] {
        self_signed(&p.join("certs"), cn);
    }

    for _attempt in 0..3 {
        let ports = free_ports();
        let [p1, p2, p3] = ports;
        let conf = write_nginx(p, ports);
        let cfg = ServerConfig {
            kind: ServerKind::Nginx,
            binary: NGINX.into(),
            config: conf.clone(),
            prefix: Some(p.to_path_buf()),
            pid_file: p.join("logs/nginx.pid"),
            reload_command: None,
            name: "nginx".into(),
            stats_socket: None,
            master_socket: None,
        };

        // nginx -T needs no running nginx.
        let sites = discover(&cfg).expect("discover");
        let names: Vec<&str> = sites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["a.test", "b.test", "c.test"], "{sites:#?}");

        let a = by_name(&sites, "a.test");
        assert_eq!(a.names, vec!["www.a.test"]);
        assert_eq!(
            a.endpoints,
            vec![format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}")]
        );
        assert_eq!(a.cert, Some(p.join("certs/a.test.pem")));
        assert_eq!(a.key, Some(p.join("certs/a.test.key")));
        assert_eq!(a.source, format!("{}:2", p.join("sites/a.conf").display()));
        assert!(a.notes.contains(&"default_server".to_string()), "{a:?}");
        let b = by_name(&sites, "b.test");
        assert_eq!(b.cert, Some(p.join("certs/b.test.pem")));
        assert_eq!(b.key, Some(p.join("certs/b.test.key")));
        assert_eq!(b.endpoints, vec![format!("127.0.0.1:{p1}")]);
        let c = by_name(&sites, "c.test");
        assert_eq!(c.endpoints, vec![format!("127.0.0.1:{p2}")]);
        assert!(
            sites
                .iter()
                .all(|s| s.pairs.len() == 1 && s.chain.is_none())
        );
        check_toml(&sites, "nginx");

        let mut cmd = Command::new(NGINX);
        cmd.arg("-p")
            .arg(p)
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"]);
        let addrs: Vec<String> = [p1, p2, p3]
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let Some(_server) = start(cmd, &addrs) else {
            continue; // a port was taken meanwhile: new ports
        };
        check_served(&sites);
        return;
    }
    panic!("nginx did not start in 3 attempts");
}

/// Three TLS vhosts in `sites/*.conf` (aliases + chain file + Define'd
/// paths; one inside `<IfModule>`; one with the key inside the cert file)
/// and one plain vhost.
fn write_apache(p: &Path, ports: [u16; 3]) -> PathBuf {
    let [p1, p2, p3] = ports;
    let d = p.display();
    let conf = p.join("httpd.conf");
    fs::write(
        &conf,
        format!(
            "ServerRoot {d}\nServerName localhost\nPidFile {d}/run/httpd.pid\nDefaultRuntimeDir {d}/run\nMutex file:{d}/lock default\nErrorLog {d}/logs/error.log\nUser www-data\nGroup www-data\nLoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so\nLoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so\nLoadModule socache_shmcb_module /usr/lib/apache2/modules/mod_socache_shmcb.so\nLoadModule ssl_module /usr/lib/apache2/modules/mod_ssl.so\n# where the certs are\nDefine CERTS {d}/certs\nListen 127.0.0.1:{p1} https\nListen 127.0.0.1:{p2} https\nListen 127.0.0.1:{p3} http\nSSLSessionCache shmcb:{d}/run/ssl_scache(512000)\nIncludeOptional sites/*.conf\nIncludeOptional not-there/*.conf\n"
        ),
    )
    .expect("write httpd.conf");
    fs::write(
        p.join("sites/a.conf"),
        format!(
            "<VirtualHost *:{p1} *:{p2}>\n  ServerName a.test\n  ServerAlias www.a.test \\\n              A.TEST\n  SSLEngine on\n  SSLCertificateFile ${{CERTS}}/a.test.pem\n  SSLCertificateKeyFile \"${{CERTS}}/a.test.key\"\n  SSLCertificateChainFile ${{CERTS}}/chain.test.pem\n</VirtualHost>\n"
        ),
    )
    .expect("write a.conf");
    fs::write(
        p.join("sites/b.conf"),
        format!(
            "<IfModule ssl_module>\n<VirtualHost *:{p1}>\n  servername b.test\n  sslengine on\n  SSLCertificateFile certs/b.test.pem\n  SSLCertificateKeyFile certs/b.test.key\n</VirtualHost>\n</IfModule>\n<VirtualHost *:{p3}>\n  ServerName plain.test\n</VirtualHost>\n"
        ),
    )
    .expect("write b.conf");
    fs::write(
        p.join("sites/c.conf"),
        format!(
            "<VirtualHost *:{p2}>\n  ServerName c.test\n  SSLEngine on\n  # key and cert in one file\n  SSLCertificateFile {d}/certs/c-combined.pem\n</VirtualHost>\n"
        ),
    )
    .expect("write c.conf");
    conf
}

#[test]
fn apache_vhosts_from_included_files_are_served_where_discovered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    for sub in ["logs", "run", "lock", "sites", "certs"] {
        fs::create_dir_all(p.join(sub)).expect("mkdir");
    }
    for cn in ["a.test", "b.test", "chain.test"] {
        self_signed(&p.join("certs"), cn);
    }
    let (c_cert, c_key) = self_signed(&p.join("certs"), "c.test");
    let combined = [
        fs::read(&c_cert).expect("read c cert"),
        fs::read(&c_key).expect("read c key"),
    ]
    .concat();
    fs::write(p.join("certs/c-combined.pem"), combined).expect("write combined");

    for _attempt in 0..3 {
        let ports = free_ports();
        let [p1, p2, p3] = ports;
        let conf = write_apache(p, ports);

        let test = Command::new(APACHE)
            .arg("-f")
            .arg(&conf)
            .arg("-t")
            .output()
            .expect("run apache2 -t");
        assert!(
            test.status.success(),
            "apache2 -t refused the test config: {}",
            String::from_utf8_lossy(&test.stderr)
        );

        let cfg = ServerConfig {
            kind: ServerKind::Apache,
            binary: APACHE.into(),
            config: conf.clone(),
            prefix: None,
            pid_file: p.join("run/httpd.pid"),
            reload_command: None,
            name: "apache".into(),
            stats_socket: None,
            master_socket: None,
        };
        let sites = discover(&cfg).expect("discover");
        let names: Vec<&str> = sites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["a.test", "b.test", "c.test"], "{sites:#?}");

        let certs = p.join("certs");
        let a = by_name(&sites, "a.test");
        assert_eq!(a.names, vec!["www.a.test"]);
        assert_eq!(
            a.endpoints,
            vec![format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}")]
        );
        assert_eq!(a.cert, Some(certs.join("a.test.pem")));
        assert_eq!(a.key, Some(certs.join("a.test.key")));
        assert_eq!(a.chain, Some(certs.join("chain.test.pem")));
        assert_eq!(a.source, format!("{}:1", p.join("sites/a.conf").display()));
        let b = by_name(&sites, "b.test");
        assert_eq!(b.cert, Some(certs.join("b.test.pem")));
        assert_eq!(b.endpoints, vec![format!("127.0.0.1:{p1}")]);
        let c = by_name(&sites, "c.test");
        assert_eq!(c.cert, Some(certs.join("c-combined.pem")));
        assert_eq!(c.key, c.cert, "key inside the cert file");
        assert!(
            c.notes.iter().any(|n| n.contains("key is expected")),
            "{c:?}"
        );
        check_toml(&sites, "apache");

        let mut cmd = Command::new(APACHE);
        cmd.arg("-f").arg(&conf).arg("-DFOREGROUND");
        let addrs: Vec<String> = [p1, p2, p3]
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let Some(_server) = start(cmd, &addrs) else {
            continue;
        };
        check_served(&sites);
        return;
    }
    panic!("apache2 did not start in 3 attempts");
}
