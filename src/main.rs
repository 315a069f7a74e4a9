//! The `certswap` binary: parse flags, set up logging and the one TLS
//! crypto provider, run one command, exit with its code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // `certswap status | head` must end quietly like any Unix tool, not
    // panic on a closed pipe: Rust ignores SIGPIPE by default.
    // SAFETY: called first thing, before any other thread exists.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    let cli = certswap::cli::Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour for a terminal only, never with NO_COLOR: a deploy hook's
        // stderr lands in certbot's log and in cron mail.
        .with_ansi(certswap::report::colour_stderr())
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
