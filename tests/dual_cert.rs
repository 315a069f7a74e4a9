//! A vhost that serves an RSA and an ECDSA certificate (two
//! `ssl_certificate` lines): each key type is installed and verified on its
//! own, with a probe that offers only that type's signature schemes, and
//! the other pair is left alone.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::pki::{self, Leaf};
use support::world::{ALIAS, SITE, Server, World, path, text};

/// A 2048-bit RSA key (PKCS#8 PEM) from the openssl CLI: ring cannot
/// generate RSA keys.
fn rsa_key(dir: &Path, name: &str) -> String {
    let p = dir.join(format!("{name}.rsa.key"));
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&p)
        .output()
        .expect("openssl genpkey");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(&p).expect("read key")
}

/// SHA-256 of the leaf served over TLS 1.2 with only `cipher` (an RSA or
/// an ECDSA suite), as openssl sees it.
fn served_with(port: u16, cipher: &str) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            SITE,
            "-tls1_2",
            "-cipher",
            cipher,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    pki::pem_sha256(&text).unwrap_or_else(|| {
        panic!(
            "no certificate with {cipher}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

const RSA_SUITE: &str = "ECDHE-RSA-AES128-GCM-SHA256";
const ECDSA_SUITE: &str = "ECDHE-ECDSA-AES128-GCM-SHA256";

struct Dual {
    w: World,
    rsa_old: Leaf,
}

fn dual() -> Dual {
    let w = World::nginx();
    let ssl = w.dir.path().join("ssl");
    let key = rsa_key(&ssl, "old");
    let rsa_old = w
        .issuer()
        .leaf(&[SITE, ALIAS])
        .days(-345, 20)
        .key(&key)
        .build();
    let rsa_cert = ssl.join("shop.rsa.pem");
    let rsa_key_path = ssl.join("shop.rsa.key");
    std::fs::write(&rsa_cert, rsa_old.fullchain_pem()).expect("write");
    pki::write_key(&rsa_key_path, &rsa_old.key_pem);

    let Server::Nginx(nginx) = &w.server else {
        unreachable!()
    };
    let conf = std::fs::read_to_string(nginx.conf_path()).expect("nginx.conf");
    let marker = "ssl_certificate_key ";
    let at = conf.find(marker).expect("ssl_certificate_key line");
    let end = at + conf[at..].find(';').expect(";") + 1;
    let conf = format!(
        "{} ssl_certificate \"{}\"; ssl_certificate_key \"{}\";{}",
        &conf[..end],
        rsa_cert.display(),
        rsa_key_path.display(),
        &conf[end..]
    );
    nginx.set_config(&conf);
    nginx
        .reload_and_wait(Duration::from_secs(10))
        .expect("reload with two pairs");

    let mut cfg = std::fs::read_to_string(&w.config).expect("config");
    cfg.push_str(&format!(
        "\n[[site.pair]]\ncert = \"{}\"\nkey = \"{}\"\n",
        rsa_cert.display(),
        rsa_key_path.display()
    ));
    std::fs::write(&w.config, cfg).expect("write config");
    assert_eq!(served_with(w.server.port(), RSA_SUITE), rsa_old.sha256);
    assert_eq!(served_with(w.server.port(), ECDSA_SUITE), w.old.sha256);
    Dual { w, rsa_old }
}

#[test]
fn each_key_type_is_installed_and_verified_on_its_own() {
    let Dual { w, rsa_old } = dual();
    let port = w.server.port();

    // The RSA renewal replaces the RSA pair only.
    let key = rsa_key(&w.dir.path().join("ssl"), "new");
    let rsa_new = w
        .issuer()
        .leaf(&[SITE, ALIAS])
        .days(-1, 385)
        .key(&key)
        .build();
    let (cert, key) = w.bundle("rsa-new", &rsa_new);
    let out = w.install(&cert, &key, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        v["served"][0]["sha256"],
        rsa_new.sha256.as_str(),
        "the probe saw the RSA leaf: {v}"
    );
    assert_eq!(v["old"]["sha256"], rsa_old.sha256.as_str(), "{v}");
    assert_eq!(served_with(port, RSA_SUITE), rsa_new.sha256);
    assert_eq!(
        served_with(port, ECDSA_SUITE),
        w.old.sha256,
        "the ECDSA pair is untouched"
    );

    // The ECDSA renewal replaces the ECDSA pair only.
    let ec_new = w.renewed();
    let (cert, key) = w.bundle("ec-new", &ec_new);
    let out = w.install(&cert, &key, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["served"][0]["sha256"], ec_new.sha256.as_str(), "{v}");
    assert_eq!(served_with(port, ECDSA_SUITE), ec_new.sha256);
    assert_eq!(served_with(port, RSA_SUITE), rsa_new.sha256);

    // Rollback needs to know which pair, and then touches only that one.
    let out = w.run(&["rollback", "--site", SITE]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--key-type"),
        "{}",
        text(&out)
    );
    let out = w.run(&["rollback", "--site", SITE, "--key-type", "rsa"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(served_with(port, RSA_SUITE), rsa_old.sha256);
    assert_eq!(served_with(port, ECDSA_SUITE), ec_new.sha256);

    // certswap's own probe sees each leaf when asked for one key type.
    for (kt, sha) in [("rsa", &rsa_old.sha256), ("ecdsa", &ec_new.sha256)] {
        let out = support::certswap()
            .args([
                "probe",
                &format!("127.0.0.1:{port}"),
                "--sni",
                SITE,
                "--key-type",
                kt,
                "--json",
            ])
            .output()
            .expect("probe");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["sha256"], sha.as_str(), "{kt}: {v}");
    }
}

#[test]
fn discover_lists_both_pairs() {
    let Dual { w, .. } = dual();
    let out = w.run(&["discover"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let toml = String::from_utf8_lossy(&out.stdout);
    assert!(toml.contains("[[site.pair]]"), "{toml}");
    assert!(toml.contains("shop.rsa.pem"), "{toml}");
    let _ = path;
}
