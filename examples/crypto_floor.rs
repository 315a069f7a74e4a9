//! The client's share of one TLS 1.3 probe handshake that no prober can
//! skip: the X25519 key share and shared secret, and the ECDSA P-256 check
//! of the server's CertificateVerify (the proof that the server holds the
//! key of the certificate it showed). Measured through the same rustls
//! provider (ring) objects the probe uses, so `scripts/bench` can print the
//! fastest a bulk probe could possibly be on this box: this plus the
//! server's CPU per handshake, spread over the cores.
//!
//! Usage: `crypto_floor [ITERATIONS]` (default 2000). Prints one line:
//! `x25519_us=… verify_us=… client_crypto_us=…` (microseconds per handshake,
//! median of 5 rounds).

use std::time::Instant;

use rustls::crypto::ring::default_provider;
use rustls::{NamedGroup, SignatureScheme};

fn main() {
    let iterations: u32 = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 2000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: crypto_floor [ITERATIONS > 0]");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(iterations) {
        eprintln!("crypto_floor: {e}");
        std::process::exit(1);
    }
}

fn run(iterations: u32) -> Result<(), Box<dyn std::error::Error>> {
    let provider = default_provider();
    let x25519 = provider
        .kx_groups
        .iter()
        .find(|g| g.name() == NamedGroup::X25519)
        .ok_or("the ring provider has no X25519 group")?;
    let server_share = x25519.start()?.pub_key().to_vec();

    let verifier = provider
        .signature_verification_algorithms
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == SignatureScheme::ECDSA_NISTP256_SHA256)
        .and_then(|(_, algs)| algs.first())
        .ok_or("the ring provider has no ECDSA P-256 verifier")?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    // What TLS 1.3 signs: 64 spaces, the context string, 0, the transcript hash.
    let mut message = vec![0x20u8; 64];
    message.extend_from_slice(b"TLS 1.3, server CertificateVerify\0");
    message.extend_from_slice(&[0x5a; 32]);
    let signature = rcgen::SigningKey::sign(&key, &message)?;
    let public_key = key.public_key_raw().to_vec();

    let x25519_us = median_us(iterations, || {
        let kx = x25519.start().expect("X25519 key share");
        std::hint::black_box(kx.pub_key());
        std::hint::black_box(kx.complete(&server_share).expect("X25519 agreement"));
    });
    let verify_us = median_us(iterations, || {
        verifier
            .verify_signature(&public_key, &message, &signature)
            .expect("a signature made just now verifies");
    });
    println!(
        "x25519_us={x25519_us:.1} verify_us={verify_us:.1} client_crypto_us={:.1}",
        x25519_us + verify_us
    );
    Ok(())
}

/// Median over 5 rounds of the mean time of one call, in microseconds.
fn median_us(iterations: u32, mut f: impl FnMut()) -> f64 {
    let mut rounds: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..iterations {
                f();
            }
            started.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[2]
}
