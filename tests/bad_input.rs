//! The bad-input corpus: every kind of broken bundle a person or a vendor
//! download can hand certswap, generated at test time (rcgen, and the
//! openssl CLI for what rcgen/ring cannot make: RSA-1024, encrypted keys),
//! each a named case with the exact reason it must be refused for.
//!
//! Each refusal runs the real `certswap install` against one real nginx
//! and proves: the expected exit code (1 = the bundle was rejected,
//! 2 = usage or environment), the reason as one line on stderr, no panic,
//! not a byte changed under the cert dir and the state dir, no signal sent
//! (the same nginx workers) and the old certificate still served. The
//! positive cases (DER input, a chain out of order, duplicated chain
//! certificates) are accepted, repaired with a warning, and served.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use support::pki::{self, Ca, Leaf, openssl};
use support::world::{ALIAS, Kind, Options, SITE, World, path, text};

/// One refused install: its name, the arguments after `install`, the
/// config to use (None = the world's), the exit code and the reason.
struct Case {
    name: &'static str,
    args: Vec<String>,
    config: Option<PathBuf>,
    code: i32,
    reason: String,
}

impl Case {
    fn new(name: &'static str, code: i32, reason: &str, args: &[&Path]) -> Case {
        let mut a = vec!["--site".to_string(), SITE.to_string()];
        let flags = ["--cert", "--key", "--chain"];
        for (flag, p) in flags.iter().zip(args) {
            a.push(flag.to_string());
            a.push(path(p).to_string());
        }
        Case {
            name,
            args: a,
            config: None,
            code,
            reason: reason.to_string(),
        }
    }

    /// Rejected by a rule (exit 1).
    fn rejected(name: &'static str, reason: &str, args: &[&Path]) -> Case {
        Case::new(name, 1, reason, args)
    }

    fn flag(mut self, f: &str) -> Case {
        self.args.push(f.to_string());
        self
    }
}

/// Where a world's bad bundles are written.
fn bad_dir(w: &World) -> PathBuf {
    let d = w.dir.path().join("bad");
    std::fs::create_dir_all(&d).expect("mkdir bad");
    d
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("write {p:?}: {e}"));
    p
}

/// A self-signed RSA leaf for the world's names, valid for `days`, made by
/// the openssl CLI (ring neither generates RSA keys nor signs with RSA-1024).
/// Returns (cert, PKCS#8 key, PKCS#1 key).
fn openssl_rsa_leaf(dir: &Path, bits: u32, days: u32) -> (PathBuf, PathBuf, PathBuf) {
    let cert = dir.join(format!("rsa{bits}.pem"));
    let key8 = dir.join(format!("rsa{bits}.key"));
    let key1 = dir.join(format!("rsa{bits}-pkcs1.key"));
    openssl(&[
        "req",
        "-x509",
        "-nodes",
        "-newkey",
        &format!("rsa:{bits}"),
        "-days",
        &days.to_string(),
        "-subj",
        &format!("/CN={SITE}"),
        "-addext",
        &format!("subjectAltName=DNS:{SITE},DNS:{ALIAS}"),
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-addext",
        "extendedKeyUsage=serverAuth",
        "-keyout",
        path(&key8),
        "-out",
        path(&cert),
    ]);
    openssl(&[
        "rsa",
        "-in",
        path(&key8),
        "-traditional",
        "-out",
        path(&key1),
    ]);
    (cert, key8, key1)
}

/// DER of the first PEM block of `pem_text`.
fn der_of(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).expect("pem").into_contents()
}

/// Replace one character of the second base64 line by `!`.
fn mangle_base64(pem_text: &str) -> String {
    let mut lines: Vec<String> = pem_text.lines().map(str::to_owned).collect();
    lines[2].replace_range(5..6, "!");
    lines.join("\n") + "\n"
}

/// `text` padded with newlines past the 1 MiB limit.
fn huge(text: &str) -> Vec<u8> {
    let mut b = text.as_bytes().to_vec();
    b.resize(1024 * 1024 + 1, b'\n');
    b
}

/// The corpus of refused bundles for world `w` (nginx, in place).
fn corpus(w: &World) -> Vec<Case> {
    let d = bad_dir(w);
    let good = w.renewed();
    let (good_cert, good_key) = pki::write(&d, "good", &good);
    let other = w.renewed();
    let (_, other_key) = pki::write(&d, "other", &other);
    let leaf = |name: &str, l: &Leaf| pki::write(&d, name, l);

    let mut cases = Vec::new();

    // --- the rules of step 2 -------------------------------------------
    cases.push(Case::rejected(
        "key_mismatch",
        "private key does not match the certificate",
        &[&good_cert, &other_key],
    ));
    cases.push(Case::rejected(
        "own_csr_cert_for_another_key",
        "private key does not match the certificate",
        &[&good_cert],
    ));
    let (c, k) = leaf(
        "dropped_san",
        &w.issuer().leaf(&[SITE]).days(-1, 400).build(),
    );
    cases.push(Case::rejected(
        "dropped_san",
        &format!("does not cover {ALIAS}"),
        &[&c, &k],
    ));
    let (c, k) = leaf(
        "other_site",
        &w.issuer().leaf(&["other.test"]).days(-1, 400).build(),
    );
    cases.push(Case::rejected(
        "cert_for_another_site",
        &format!("does not cover {SITE}, {ALIAS}"),
        &[&c, &k],
    ));
    let (c, k) = leaf(
        "expired",
        &w.issuer().leaf(&[SITE, ALIAS]).days(-400, -1).build(),
    );
    cases.push(Case::rejected(
        "expired",
        "has expired: notAfter",
        &[&c, &k],
    ));
    cases.push(Case::rejected("expired_even_forced", "has expired", &[&c, &k]).flag("--force"));
    let (c, k) = leaf(
        "not_yet_valid",
        &w.issuer().leaf(&[SITE, ALIAS]).days(2, 400).build(),
    );
    cases.push(Case::rejected(
        "not_yet_valid",
        "is not valid yet: notBefore",
        &[&c, &k],
    ));
    let (c, k) = leaf(
        "downgrade",
        &w.issuer().leaf(&[SITE, ALIAS]).days(-1, 10).build(),
    );
    cases.push(Case::rejected(
        "downgrade_ends_before_installed",
        "not later than the installed one",
        &[&c, &k],
    ));
    let same_end = w
        .issuer()
        .leaf(&[SITE, ALIAS])
        .not_before(w.old.not_before)
        .not_after(w.old.not_after)
        .build();
    let (c, k) = leaf("same_end", &same_end);
    cases.push(Case::rejected(
        "same_not_after",
        "a renewal must extend",
        &[&c, &k],
    ));
    let (rsa_cert, rsa_key8, rsa_key1) = openssl_rsa_leaf(&d, 1024, 400);
    cases.push(Case::rejected(
        "rsa_1024_pkcs8_key",
        "is a 1024-bit RSA key, which is too weak",
        &[&rsa_cert, &rsa_key8],
    ));
    cases.push(Case::rejected(
        "rsa_1024_pkcs1_key",
        "is a 1024-bit RSA key, which is too weak",
        &[&rsa_cert, &rsa_key1],
    ));
    cases.push(Case::rejected(
        "rsa_1024_cert_without_key",
        "has a 1024-bit RSA key; at least 2048 bits are required",
        &[&rsa_cert],
    ));
    let (c, k) = leaf(
        "ca_as_leaf",
        &w.issuer()
            .leaf(&[SITE, ALIAS])
            .days(-1, 400)
            .ca_flag()
            .build(),
    );
    cases.push(Case::rejected(
        "ca_cert_as_leaf",
        "is a CA certificate, not a server certificate",
        &[&c, &k],
    ));
    // The CA's own certificate and key given as the bundle.
    let ca_only = write(&d, "ca_only.pem", w.ca.cert_pem());
    let ca_key = d.join("ca_only.key");
    pki::write_key(&ca_key, &w.ca.key_pem());
    cases.push(Case::rejected(
        "ca_file_given_as_cert",
        "is a CA certificate",
        &[&ca_only, &ca_key],
    ));
    let (c, k) = leaf(
        "client_only",
        &w.issuer()
            .leaf(&[SITE, ALIAS])
            .days(-1, 400)
            .eku_client_only()
            .build(),
    );
    cases.push(Case::rejected(
        "no_server_auth_eku",
        "extendedKeyUsage lacks serverAuth",
        &[&c, &k],
    ));
    let stranger = Ca::new("Stranger Root").intermediate("Stranger Issuing CA");
    let wrong_chain = write(
        &d,
        "wrong_chain.pem",
        good.cert_pem.clone() + stranger.cert_pem(),
    );
    cases.push(Case::rejected(
        "chain_signed_by_another_ca",
        "the chain is broken",
        &[&wrong_chain, &good_key],
    ));
    let sep_chain = write(&d, "stranger_chain.crt", stranger.cert_pem());
    cases.push(Case::rejected(
        "separate_chain_file_of_another_ca",
        "the chain is broken",
        &[&good_cert, &good_key, &sep_chain],
    ));

    // --- keys ------------------------------------------------------------
    let enc8 = d.join("enc8.key");
    openssl(&[
        "pkcs8",
        "-topk8",
        "-in",
        path(&good_key),
        "-v2",
        "aes-256-cbc",
        "-passout",
        "pass:secret",
        "-out",
        path(&enc8),
    ]);
    cases.push(Case::rejected(
        "encrypted_key_pkcs8",
        "the private key is encrypted",
        &[&good_cert, &enc8],
    ));
    let legacy = d.join("legacy.key");
    openssl(&[
        "pkey",
        "-in",
        path(&good_key),
        "-traditional",
        "-aes128",
        "-passout",
        "pass:secret",
        "-out",
        path(&legacy),
    ]);
    cases.push(Case::rejected(
        "encrypted_key_legacy_proc_type",
        "the private key is encrypted",
        &[&good_cert, &legacy],
    ));
    let enc_der = d.join("enc8.der");
    openssl(&[
        "pkcs8",
        "-topk8",
        "-in",
        path(&good_key),
        "-v2",
        "aes-256-cbc",
        "-passout",
        "pass:secret",
        "-outform",
        "DER",
        "-out",
        path(&enc_der),
    ]);
    cases.push(Case::rejected(
        "encrypted_key_der",
        "the private key is encrypted",
        &[&good_cert, &enc_der],
    ));
    let combined_enc = write(
        &d,
        "combined_enc.pem",
        good.cert_pem.clone() + &std::fs::read_to_string(&enc8).expect("enc8"),
    );
    cases.push(Case::rejected(
        "combined_file_with_encrypted_key",
        "the private key is encrypted",
        &[&combined_enc],
    ));
    let two_keys = write(&d, "two.key", good.key_pem.clone() + &other.key_pem);
    cases.push(Case::rejected(
        "two_keys_in_key_file",
        "holds 2 private keys; expected one",
        &[&good_cert, &two_keys],
    ));
    let corrupt_key = write(
        &d,
        "corrupt.key",
        pem::encode(&pem::Pem::new(
            "PRIVATE KEY",
            vec![0x30, 0x03, 0x02, 0x01, 0x00],
        )),
    );
    cases.push(Case::rejected(
        "corrupt_key_body",
        "unsupported or corrupt private key",
        &[&good_cert, &corrupt_key],
    ));
    let p521 = d.join("p521.key");
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-521",
        "-out",
        path(&p521),
    ]);
    cases.push(Case::rejected(
        "unsupported_curve_p521_key",
        "unsupported or corrupt private key",
        &[&good_cert, &p521],
    ));

    // --- files that are not what they claim --------------------------------
    let cut = &good.cert_pem[..good.cert_pem.len() - 60];
    let truncated = write(&d, "truncated.pem", cut);
    cases.push(Case::rejected(
        "truncated_cert",
        "truncated PEM: block #1",
        &[&truncated, &good_key],
    ));
    let truncated_key = write(
        &d,
        "truncated.key",
        &good.key_pem[..good.key_pem.len() - 40],
    );
    cases.push(Case::rejected(
        "truncated_key",
        "truncated PEM: block #1",
        &[&good_cert, &truncated_key],
    ));
    let empty = write(&d, "empty.pem", "");
    cases.push(Case::rejected(
        "empty_cert",
        "empty.pem: file is empty",
        &[&empty, &good_key],
    ));
    let blank_key = write(&d, "blank.key", "\n \n\t\n");
    cases.push(Case::rejected(
        "blank_key",
        "blank.key: file is empty",
        &[&good_cert, &blank_key],
    ));
    let garbage = write(&d, "garbage.pem", "this is not a certificate\n");
    cases.push(Case::rejected(
        "garbage_text_cert",
        "no certificate found",
        &[&garbage, &good_key],
    ));
    let mut noise = vec![0u8; 3000];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut noise).expect("random");
    noise[0] = 0x17; // not a DER SEQUENCE
    let binary = write(&d, "noise.bin", &noise);
    cases.push(Case::rejected(
        "random_binary_cert",
        "no certificate found",
        &[&binary, &good_key],
    ));
    let garbage_key = write(&d, "garbage.key", "hunter2\n");
    cases.push(Case::rejected(
        "garbage_text_key",
        "not a PEM or DER private key",
        &[&good_cert, &garbage_key],
    ));
    let der_garbage = write(&d, "garbage.der", [0x30, 0x03, 0x01, 0x01, 0xff]);
    cases.push(Case::rejected(
        "der_garbage_cert",
        "not a valid DER certificate",
        &[&der_garbage, &good_key],
    ));
    let mangled = write(&d, "mangled.pem", mangle_base64(&good.cert_pem));
    cases.push(Case::rejected(
        "mangled_base64_cert",
        "corrupt base64 content",
        &[&mangled, &good_key],
    ));
    let mangled_key = write(&d, "mangled.key", mangle_base64(&good.key_pem));
    cases.push(Case::rejected(
        "mangled_base64_key",
        "corrupt base64 content",
        &[&good_cert, &mangled_key],
    ));
    let mut half = der_of(&good.cert_pem);
    half.truncate(half.len() / 2);
    let half_pem = write(
        &d,
        "half.pem",
        pem::encode(&pem::Pem::new("CERTIFICATE", half)),
    );
    cases.push(Case::rejected(
        "valid_base64_of_half_a_cert",
        "certificate #1 of the file",
        &[&half_pem, &good_key],
    ));
    let huge_cert = write(&d, "huge.pem", huge(&good.cert_pem));
    cases.push(Case::rejected(
        "huge_cert_over_1_mib",
        "larger than the 1 MiB limit",
        &[&huge_cert, &good_key],
    ));
    let huge_key = write(&d, "huge.key", huge(&good.key_pem));
    cases.push(Case::rejected(
        "huge_key_over_1_mib",
        "larger than the 1 MiB limit",
        &[&good_cert, &huge_key],
    ));
    cases.push(Case::rejected(
        "key_given_as_cert",
        "holds a private key where a certificate was expected",
        &[&good_key, &good_key],
    ));
    let der_key = write(&d, "good.key.der", der_of(&good.key_pem));
    cases.push(Case::rejected(
        "der_key_given_as_cert",
        "holds a private key where a certificate was expected",
        &[&der_key, &good_key],
    ));
    cases.push(Case::rejected(
        "cert_given_as_key",
        "good.pem: no private key found",
        &[&good_cert, &good_cert],
    ));
    let csr = write(
        &d,
        "only.csr",
        "-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n",
    );
    cases.push(Case::rejected(
        "csr_instead_of_cert",
        "no certificate found",
        &[&csr, &good_key],
    ));
    let missing = d.join("missing.pem");
    cases.push(Case::rejected(
        "nonexistent_cert_file",
        "missing.pem: cannot read: No such file or directory",
        &[&missing, &good_key],
    ));
    let missing_key = d.join("missing.key");
    cases.push(Case::rejected(
        "nonexistent_key_file",
        "missing.key: cannot read: No such file or directory",
        &[&good_cert, &missing_key],
    ));
    let a_dir = d.join("a-directory.pem");
    std::fs::create_dir_all(&a_dir).expect("mkdir");
    cases.push(Case::rejected(
        "directory_as_cert_file",
        "a-directory.pem: cannot read: Is a directory",
        &[&a_dir, &good_key],
    ));

    // --- names from outside ------------------------------------------------
    let conf = std::fs::read_to_string(&w.config).expect("config");
    let slash = write(
        w.dir.path(),
        "slash-site.toml",
        conf.replace(
            &format!("name = \"{SITE}\""),
            "name = \"shop.test/../../etc\"",
        ),
    );
    let mut c = Case::new(
        "site_name_with_slash_in_config",
        2,
        "`site[0].name` \"shop.test/../../etc\" is not a site name",
        &[&good_cert, &good_key],
    );
    c.config = Some(slash);
    c.args[1] = "shop.test/../../etc".into();
    cases.push(c);
    let mut c = Case::new(
        "site_name_with_slash_on_command_line",
        2,
        "no site named `../shop.test`",
        &[&good_cert, &good_key],
    );
    c.args[1] = "../shop.test".into();
    cases.push(c);
    cases
}

/// What must hold after a refused install; Err says what did not.
fn check_refused(
    w: &World,
    case: &Case,
    out: &Output,
    before: &BTreeMap<PathBuf, String>,
    workers: &[i32],
) -> Result<(), String> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut problems = Vec::new();
    if out.status.code() != Some(case.code) {
        problems.push(format!(
            "exit {:?}, expected {}",
            out.status.code(),
            case.code
        ));
    }
    if stderr.contains("panicked") || out.status.code().is_none() {
        problems.push("the process panicked or died".into());
    }
    if !stderr.contains(&case.reason) {
        problems.push(format!("stderr lacks {:?}", case.reason));
    }
    if stderr.trim().lines().count() != 1 {
        problems.push("the reason is not one line on stderr".into());
    }
    let after = w.snapshot();
    if &after != before {
        problems.push(format!("bytes on disk changed: {}", diff(before, &after)));
    }
    if w.server.worker_pids() != workers {
        problems.push("the server was signalled (its workers changed)".into());
    }
    match support::served_sha256(w.server.port(), SITE) {
        Ok(s) if s == w.old.sha256 => {}
        other => problems.push(format!("the old certificate is not served: {other:?}")),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}\n{}",
            case.name,
            problems.join("; "),
            text(out)
        ))
    }
}

fn diff(a: &BTreeMap<PathBuf, String>, b: &BTreeMap<PathBuf, String>) -> String {
    let mut d = Vec::new();
    for (p, h) in a {
        match b.get(p) {
            None => d.push(format!("-{}", p.display())),
            Some(h2) if h2 != h => d.push(format!("~{}", p.display())),
            _ => {}
        }
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        d.push(format!("+{}", p.display()));
    }
    d.join(" ")
}

fn run_case(w: &World, case: &Case) -> Output {
    let mut cmd = support::certswap();
    cmd.arg("--config")
        .arg(case.config.as_deref().unwrap_or(&w.config))
        .arg("install")
        .args(&case.args);
    cmd.output().expect("run certswap")
}

#[test]
fn every_bad_bundle_is_refused_and_changes_nothing() {
    let w = World::nginx();
    let cases = corpus(&w);
    assert!(cases.len() >= 30, "the corpus has {} cases", cases.len());
    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names are unique");

    let before = w.snapshot();
    let workers = w.server.worker_pids();
    let mut failures = Vec::new();
    for case in &cases {
        let out = run_case(&w, case);
        eprintln!(
            "{:<40} exit {:?}: {}",
            case.name,
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if let Err(why) = check_refused(&w, case, &out, &before, &workers) {
            failures.push(why);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// An install that must be accepted: exit 0, verified, served, the pair on
/// disk matches, the key stays 0600, no staged file left. Returns the
/// `--json` object.
fn assert_accepted(w: &World, name: &str, args: &[&Path], leaf: &Leaf) -> serde_json::Value {
    let mut a = vec!["install", "--site", SITE, "--json"];
    let flags = ["--cert", "--key", "--chain"];
    for (flag, p) in flags.iter().zip(args) {
        a.push(flag);
        a.push(path(p));
    }
    let out = w.run(&a);
    assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{name}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["result"], "verified", "{name}: {v}");
    assert_eq!(w.served(), leaf.sha256, "{name}: the new leaf is served");
    assert!(w.pair_matches(), "{name}");
    assert!(w.leftovers().is_empty(), "{name}: {:?}", w.leftovers());
    let mode = std::fs::metadata(&w.key).expect("key").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{name}: key mode");
    v
}

fn warnings(v: &serde_json::Value) -> Vec<String> {
    v["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| w.as_str().expect("string").to_string())
        .collect()
}

#[test]
fn der_input_and_repairable_chains_are_accepted() {
    let w = World::nginx();
    let d = bad_dir(&w);

    // DER where PEM is expected: a DER leaf (the world's CA signs leaves
    // directly, so the leaf is the whole chain) with a PEM key.
    let l1 = w.issuer().leaf(&[SITE, ALIAS]).days(-1, 400).build();
    let der = write(&d, "l1.der", der_of(&l1.cert_pem));
    let (_, key) = pki::write(&d, "l1", &l1);
    assert_accepted(&w, "der_cert", &[&der, &key], &l1);
    // The cert file certswap wrote is PEM.
    assert!(
        std::fs::read_to_string(&w.cert)
            .expect("cert")
            .starts_with("-----BEGIN CERTIFICATE-----")
    );

    // DER cert and DER (PKCS#8) key.
    let l2 = w.issuer().leaf(&[SITE, ALIAS]).days(-1, 410).build();
    let der = write(&d, "l2.der", der_of(&l2.cert_pem));
    let der_key = write(&d, "l2.key.der", der_of(&l2.key_pem));
    assert_accepted(&w, "der_cert_and_der_key", &[&der, &der_key], &l2);
    assert!(
        std::fs::read_to_string(&w.key)
            .expect("key")
            .starts_with("-----BEGIN PRIVATE KEY-----"),
        "a DER key is installed as PEM"
    );

    // A chain in the wrong order: leaf, then the top intermediate before
    // the one that issued the leaf. Reordered, with a warning.
    let i1 = w.ca.intermediate("certswap test I1");
    let i2 = i1.intermediate("certswap test I2");
    let l3 = i2.leaf(&[SITE, ALIAS]).days(-1, 420).build();
    let backwards = write(
        &d,
        "backwards.pem",
        format!("{}{}{}", l3.cert_pem, i1.cert_pem(), i2.cert_pem()),
    );
    let (_, key) = pki::write(&d, "l3", &l3);
    let v = assert_accepted(&w, "chain_in_wrong_order", &[&backwards, &key], &l3);
    let ws = warnings(&v);
    assert!(
        ws.iter()
            .any(|w| w == "the chain was out of order; reordered"),
        "{ws:?}"
    );
    let on_disk = certswap::bundle::read_certs(&w.cert).expect("cert on disk");
    let order: Vec<&str> = on_disk.iter().map(|c| c.sha256.as_str()).collect();
    assert_eq!(
        order,
        [l3.sha256.clone(), i2.sha256(), i1.sha256()],
        "installed in signing order"
    );

    // Duplicate certificates in the chain (and the leaf repeated): dropped,
    // with a warning each.
    let l4 = i2.leaf(&[SITE, ALIAS]).days(-1, 430).build();
    let dup = write(
        &d,
        "dup.pem",
        format!(
            "{}{}{}{}{}",
            l4.cert_pem,
            i2.cert_pem(),
            l4.cert_pem,
            i2.cert_pem(),
            i1.cert_pem()
        ),
    );
    let (_, key) = pki::write(&d, "l4", &l4);
    let v = assert_accepted(&w, "duplicate_chain_certs", &[&dup, &key], &l4);
    let ws = warnings(&v);
    assert!(
        ws.iter()
            .any(|w| w.contains("copy of the leaf certificate")),
        "{ws:?}"
    );
    assert!(
        ws.iter()
            .any(|w| w.contains("dropped a duplicate chain certificate")),
        "{ws:?}"
    );
    assert_eq!(
        certswap::bundle::read_certs(&w.cert).expect("cert").len(),
        3,
        "leaf + two intermediates, once each"
    );

    // A combined file (cert + key in one PEM, as some tools write it).
    let l5 = i2.leaf(&[SITE, ALIAS]).days(-1, 440).build();
    let combined = write(
        &d,
        "combined.pem",
        format!("{}{}{}", l5.cert_pem, l5.key_pem, l5.chain_pem),
    );
    let out = w.run(&["install", "--site", SITE, "--cert", path(&combined)]);
    assert_eq!(out.status.code(), Some(0), "combined: {}", text(&out));
    assert_eq!(w.served(), l5.sha256);
    assert!(w.pair_matches());
}

/// In place, a target that is a symlink is refused (exit 2) before
/// anything is written, and the file it points to is untouched.
#[test]
fn a_symlinked_target_is_refused_in_place() {
    let w = World::nginx();
    let outside = w.dir.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    let real = outside.join("real.pem");
    std::fs::rename(&w.cert, &real).expect("move the cert out");
    std::os::unix::fs::symlink(&real, &w.cert).expect("symlink");
    let real_hash = pki::sha256_file(&real);
    let before = w.snapshot();
    let workers = w.server.worker_pids();

    let (cert, key) = w.bundle("new", &w.renewed());
    let out = w.install(&cert, &key, &[]);
    let case = Case::new("symlinked_target", 2, "is a symlink", &[]);
    if let Err(why) = check_refused(&w, &case, &out, &before, &workers) {
        panic!("{why}");
    }
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(path(&w.cert)),
        "names the path: {}",
        text(&out)
    );
    assert_eq!(
        pki::sha256_file(&real),
        real_hash,
        "the link's target is untouched"
    );
    assert!(w.leftovers().is_empty(), "{:?}", w.leftovers());
}

/// A target directory other users can write to is refused (exit 2), in
/// place and managed, before anything is written.
fn world_writable_dir_is_refused(managed: bool) {
    let mut o = Options::new(Kind::Nginx);
    o.managed = managed;
    let w = World::new(o);
    let ssl = w.cert.parent().expect("ssl dir").to_path_buf();
    std::fs::set_permissions(&ssl, std::fs::Permissions::from_mode(0o777)).expect("chmod 777");
    let before = w.snapshot();
    let workers = w.server.worker_pids();

    let (cert, key) = w.bundle("new", &w.renewed());
    let out = w.install(&cert, &key, &[]);
    let case = Case::new(
        "world_writable_target_dir",
        2,
        "the directory is writable by other users",
        &[],
    );
    let result = check_refused(&w, &case, &out, &before, &workers);
    std::fs::set_permissions(&ssl, std::fs::Permissions::from_mode(0o755)).expect("chmod back");
    if let Err(why) = result {
        panic!("{why}");
    }
}

#[test]
fn a_world_writable_target_dir_is_refused_in_place() {
    world_writable_dir_is_refused(false);
}

#[test]
fn a_world_writable_target_dir_is_refused_managed() {
    world_writable_dir_is_refused(true);
}
