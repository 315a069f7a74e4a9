//! The `certswap` binary: parse flags, set up logging and the one TLS
//! crypto provider, run one command, exit with its code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = certswap::cli::Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CERTSWAP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .init();
    // One provider for the whole process (rustls and, later, reqwest);
    // an Err only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    ExitCode::from(certswap::commands::run(cli))
}
