//! What each fuzz target does with one input, shared by the libFuzzer
//! targets (`fuzz/fuzz_targets/*.rs`) and the regression replay that runs
//! in the normal test suite (`tests/fuzz_regressions.rs`), so a saved input
//! is checked exactly the way the fuzzer found it.
//!
//! Every function must not panic on any input; where a parser promises
//! more than "no panic", the property is asserted here (a round trip, a
//! path that must stay below its base, output that must be valid TOML).
//! Only crates the main package depends on are used, so the file compiles
//! in both places.

#![allow(dead_code)]

use std::path::Path;

use certswap::bundle::{self, Bundle};
use certswap::validate::{self, Context, Installed};

/// The targets, by the name of their fuzz binary and corpus directory.
pub const TARGETS: &[&str] = &[
    "bundle_certs",
    "bundle_key",
    "config",
    "nginx_dump",
    "apache_config",
    "manifest_path",
    "zip_entries",
];

/// Run the target `name` on `data` (`scratch` is a private directory for
/// targets that need files).
pub fn run(name: &str, data: &[u8], scratch: &Path) {
    match name {
        "bundle_certs" => bundle_certs(data),
        "bundle_key" => bundle_key(data),
        "config" => config(data),
        "nginx_dump" => nginx_dump(data),
        "apache_config" => apache_config(data, scratch),
        "manifest_path" => manifest_path(data),
        "zip_entries" => zip_entries(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

/// PEM/DER certificates: parse; every certificate read re-encodes to PEM
/// that parses to the same certificate; the validation rules (duplicate
/// removal, the signing-order search) finish on whatever chain was read.
pub fn bundle_certs(data: &[u8]) {
    let name = Path::new("fuzz.pem");
    let Ok(mut certs) = bundle::parse_certs_bytes(name, data) else {
        return;
    };
    for c in &certs {
        let again = bundle::parse_certs_bytes(name, c.to_pem().as_bytes())
            .expect("a certificate certswap read re-encodes to PEM it reads again");
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].sha256, c.sha256);
        let _ = c.covers("www.example.com");
        let _ = c.covers("*.example.com");
    }
    let leaf = certs.remove(0);
    let mut b = Bundle {
        leaf,
        chain: certs,
        key: None,
        cert_path: name.to_path_buf(),
        key_path: None,
    };
    let installed = Installed::default();
    let names = ["www.example.com".to_string()];
    let ctx = Context {
        site_names: &names,
        installed: &installed,
        now: time::OffsetDateTime::now_utc(),
        force: false,
    };
    let _ = validate::validate(&mut b, &ctx);
    let _ = b.fullchain_pem();
}

/// A private key: parse; the PEM certswap would install parses again to
/// the same public key. The error never echoes the input.
pub fn bundle_key(data: &[u8]) {
    let name = Path::new("fuzz.key");
    match bundle::parse_key_bytes(name, data) {
        Ok(k) => {
            let again = bundle::parse_key_bytes(name, k.pem.as_bytes())
                .expect("the PEM certswap writes for a key parses again");
            assert_eq!(again.spki_der, k.spki_der);
            assert_eq!(again.kind, k.kind);
        }
        Err(e) => {
            // A key's base64 must never reach a message: look for any run
            // of 24 base64 characters of the input in the message.
            let msg = e.to_string();
            if let Ok(text) = std::str::from_utf8(data) {
                for line in text.lines() {
                    let line = line.trim();
                    if line.len() >= 24
                        && !line.starts_with("-----")
                        && line
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
                    {
                        assert!(!msg.contains(line), "key material in an error: {msg}");
                    }
                }
            }
        }
    }
}

/// certswap's TOML config: any text is either a config or one error.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/certswap/certswap.toml");
    if let Ok(cfg) = certswap::config::Config::parse(text, path) {
        assert!(cfg.state_dir.is_absolute());
        for s in &cfg.sites {
            certswap::config::check_site_name(&s.name).expect("a site name the config accepted");
            assert!(s.cert.is_absolute() && s.key.is_absolute());
        }
    }
}

/// `nginx -T` dumps: parse; what `discover` prints is valid TOML, and the
/// blocks it leaves uncommented are accepted by certswap's config parser.
pub fn nginx_dump(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let sites = certswap::discover::nginx::parse_dump(&text, Path::new("/etc/nginx"));
    check_discovered(&sites, "nginx");
}

/// apache config files: the input is written as `main.conf` in `scratch`
/// (the ServerRoot) next to a fixed `sites/a.conf`, then read by the
/// discovery reader. Inputs that could make `Include` or `ServerRoot`
/// reach outside `scratch` (absolute or `..` paths, variables, escapes)
/// are skipped: the reader follows includes on the real filesystem.
pub fn apache_config(data: &[u8], scratch: &Path) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lower = text.to_ascii_lowercase();
    if lower.contains("serverroot") || text.contains('\\') || text.contains('\r') {
        return;
    }
    for line in lower.lines() {
        if line.contains("include")
            && (line.contains("..")
                || line.contains('$')
                || line.contains('%')
                || line.contains('~')
                || line.contains(" /")
                || line.contains("\t/")
                || line.contains("\"/")
                || line.contains("'/"))
        {
            return;
        }
    }
    let sites_dir = scratch.join("sites");
    if !sites_dir.is_dir() {
        std::fs::create_dir_all(&sites_dir).expect("mkdir sites");
        std::fs::write(
            sites_dir.join("a.conf"),
            "<VirtualHost *:443>\nServerName a.example\nSSLEngine on\n\
             SSLCertificateFile /etc/ssl/a.pem\nSSLCertificateKeyFile /etc/ssl/a.key\n</VirtualHost>\n",
        )
        .expect("write sites/a.conf");
    }
    let main = scratch.join("main.conf");
    std::fs::write(&main, text).expect("write main.conf");
    if let Ok(sites) = certswap::discover::apache::parse_config(&main, Some(scratch)) {
        check_discovered(&sites, "apache");
    }
}

fn check_discovered(sites: &[certswap::discover::DiscoveredSite], kind: &str) {
    let snippet = certswap::discover::to_toml(sites);
    let _ = certswap::discover::to_json(sites).to_string();
    if let Err(e) = snippet.parse::<toml::Table>() {
        panic!("discover printed TOML that does not parse ({e}):\n{snippet}");
    }
    let full = format!("[server]\nkind = \"{kind}\"\n{snippet}");
    if let Err(e) = certswap::config::Config::parse(&full, Path::new("/fuzz/certswap.toml")) {
        panic!("discover printed a [[site]] block the config refuses ({e}):\n{snippet}");
    }
}

/// A manifest's bundle path: resolved against the manifest URL, it never
/// leaves the manifest's host or directory (invariant 8).
pub fn manifest_path(data: &[u8]) {
    let Ok(rel) = std::str::from_utf8(data) else {
        return;
    };
    let base =
        reqwest::Url::parse("https://cdn.example.com/certs/manifest.json").expect("base URL");
    let Ok(url) = certswap::source::http::resolve(&base, rel) else {
        return;
    };
    assert_eq!(url.scheme(), "https", "{rel:?} -> {url}");
    assert_eq!(url.host_str(), Some("cdn.example.com"), "{rel:?} -> {url}");
    assert_eq!(url.port_or_known_default(), Some(443), "{rel:?} -> {url}");
    assert!(
        url.username().is_empty() && url.password().is_none(),
        "{rel:?} -> {url}"
    );
    assert!(url.path().starts_with("/certs/"), "{rel:?} -> {url}");
    for seg in url.path_segments().into_iter().flatten() {
        let decoded = seg.to_ascii_lowercase().replace("%2e", ".");
        assert!(decoded != ".." && decoded != ".", "{rel:?} -> {url}");
    }
}

/// Vendor zips from an inbox (hostile names, links, bombs): whatever
/// `zip_entries` accepts keeps its promises — few entries, plain file
/// names, bounded sizes as really inflated — and a refusal is one line
/// naming the zip.
pub fn zip_entries(data: &[u8]) {
    use certswap::source::inbox::{
        self, MAX_ZIP_ENTRIES, MAX_ZIP_ENTRY_BYTES, MAX_ZIP_TOTAL_BYTES,
    };
    match inbox::zip_entries(data.to_vec(), "fuzz.zip") {
        Ok(entries) => {
            assert!(
                entries.len() <= MAX_ZIP_ENTRIES,
                "{} entries",
                entries.len()
            );
            let mut total = 0u64;
            for (name, bytes) in &entries {
                assert!(
                    !name.is_empty()
                        && !name.contains(['/', '\\', ':', '\0'])
                        && !name.contains(".."),
                    "{name:?}"
                );
                assert!(bytes.len() as u64 <= MAX_ZIP_ENTRY_BYTES, "{name:?}");
                total += bytes.len() as u64;
            }
            assert!(total <= MAX_ZIP_TOTAL_BYTES, "{total} bytes");
        }
        Err(why) => {
            assert!(why.starts_with("fuzz.zip: "), "{why}");
            assert!(!why.contains('\n'), "{why:?}");
        }
    }
}
