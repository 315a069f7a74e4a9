//! The command line, as clap definitions only. `main` turns these into calls
//! of [`crate::commands`]; nothing else sees clap types.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "certswap",
    version,
    about = "Install a renewed TLS certificate on nginx/apache atomically and prove it is served",
    long_about = None
)]
pub struct Cli {
    /// Config file.
    #[arg(long, global = true, env = "CERTSWAP_CONFIG", default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,

    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One TLS handshake: print what the server serves.
    Probe(ProbeArgs),
    /// Parse and validate a bundle; touch nothing.
    Check(CheckArgs),
    /// Validate, swap, config-test, reload, and verify the new cert is served.
    Install(InstallArgs),
    /// Put the previous version back, verified.
    Rollback(RollbackArgs),
    /// Every site: installed notAfter, days left, state; with --probe, what is served.
    Status(StatusArgs),
    /// Print the TLS sites found in the web server's config as [[site]] blocks.
    Discover(DiscoverArgs),
    /// The agent: watch sources, install renewals, check expiry and drift.
    Run(RunArgs),
    /// For certbot `--deploy-hook` and acme.sh `--reloadcmd`: install the renewed lineage.
    DeployHook(DeployHookArgs),
    /// Move a site off certbot's live/ (or acme.sh's) files onto certswap's own copies.
    Adopt(AdoptArgs),
    /// What each source would install now (site, certificate, notAfter, why); changes nothing.
    Sources(SourcesArgs),
    /// The fleet manifest: build DIR/manifest.json from a folder of renewals.
    #[command(subcommand)]
    Manifest(ManifestCommand),
    /// Roll a published renewal out wave by wave, each wave proven through Prometheus.
    Rollout(RolloutArgs),
    /// Print shell completions.
    Completions(CompletionsArgs),
    /// Print the man page (roff).
    #[command(hide = true)]
    Man,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// HOST:PORT, or SNI@HOST:PORT.
    #[arg(required_unless_present = "targets", conflicts_with = "targets")]
    pub target: Option<String>,
    /// Probe every `SNI@HOST:PORT` (or `HOST:PORT`) line of FILE concurrently.
    #[arg(long, value_name = "FILE")]
    pub targets: Option<PathBuf>,
    /// Handshakes in flight with --targets.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Server name to send (default: the host).
    #[arg(long)]
    pub sni: Option<String>,
    /// Judge trust against the certificates in this PEM file instead of the system roots.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Handshake timeout.
    #[arg(long, default_value = "5s")]
    pub timeout: String,
    /// Offer only this key type's signature schemes, to see that leaf of a
    /// server with an RSA and an ECDSA certificate on one vhost.
    #[arg(long, value_enum)]
    pub key_type: Option<KeyType>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Exit 1 unless the served leaf has this SHA-256 (hex, colons allowed).
    #[arg(long, value_name = "HEX")]
    pub expect_sha256: Option<String>,
    /// Exit 1 unless the served leaf's notAfter is this instant (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    pub expect_not_after: Option<String>,
}

/// The files of a bundle, as given on the command line.
#[derive(Debug, Args)]
pub struct BundleArgs {
    /// Certificate file: leaf, or leaf followed by its chain (PEM or DER).
    /// Required, except with `install --batch` (checked by the command).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Private key; without it the new cert must match the installed key.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Separate chain file (vendor `NAME_chain.crt`).
    #[arg(long)]
    pub chain: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub bundle: BundleArgs,
    /// Also check against this site's installed cert and names (needs the config).
    #[arg(long)]
    pub site: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The site of the config to install to.
    #[arg(long, required_unless_present = "batch", conflicts_with = "batch")]
    pub site: Option<String>,
    /// Install every SITE.pem/SITE.key pair in DIR as one batch: one config
    /// test, one reload, concurrent probes, per-site results.
    #[arg(long, value_name = "DIR")]
    pub batch: Option<PathBuf>,
    #[command(flatten)]
    pub bundle: BundleArgs,
    /// Install even if the cert does not extend the installed one, drops
    /// names, or the server serves a certificate its file does not hold.
    #[arg(long)]
    pub force: bool,
    /// Validate and report what would happen; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The site to roll back; repeat it to roll back several sites in one
    /// run (one config test, one reload).
    #[arg(long, required = true)]
    pub site: Vec<String>,
    /// For a site with an RSA and an ECDSA pair: which one.
    #[arg(long, value_enum)]
    pub key_type: Option<KeyType>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Also handshake with every endpoint: what is served, and drift from disk.
    #[arg(long)]
    pub probe: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SourcesArgs {
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// Print JSON instead of TOML.
    #[arg(long)]
    pub json: bool,
}

/// A certificate key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    Rsa,
    Ecdsa,
}

/// Log line format of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Do one pass (sources, installs, expiry and drift checks) and exit.
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Args)]
pub struct DeployHookArgs {
    /// As `install --force`: install even if the cert does not extend the
    /// installed one, drops names, or is not what the server serves now.
    #[arg(long)]
    pub force: bool,
    /// Print one JSON object per installed site.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AdoptArgs {
    /// The site whose cert/key are in a certbot lineage or an acme.sh directory.
    #[arg(long)]
    pub site: String,
    /// Make the changes: copies, server config lines (config test, reload,
    /// verified by handshakes), certswap.toml. Without it: print them only.
    #[arg(long)]
    pub apply: bool,
    /// Switch the site to managed mode (its copies become links into the state dir).
    #[arg(long)]
    pub managed: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Subcommand)]
pub enum ManifestCommand {
    /// Check every site's newest renewal in DIR and write DIR/manifest.json atomically.
    Build(ManifestBuildArgs),
}

#[derive(Debug, Args)]
pub struct ManifestBuildArgs {
    /// Folder with SITE/DATE/fullchain.pem (and privkey.pem); the manifest is written here.
    pub dir: PathBuf,
    /// Rollout percent of every site (0-100).
    #[arg(long, default_value_t = 100)]
    pub percent: u32,
    /// Rollout percent of one site (repeatable).
    #[arg(long, value_name = "SITE=N")]
    pub site_percent: Vec<String>,
    /// Write a paused manifest: no agent installs from it.
    #[arg(long)]
    pub paused: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// The published folder (as for `manifest build`); its manifest is rewritten per wave.
    pub dir: PathBuf,
    /// Prometheus base URL that scrapes the agents (user:password@ allowed, never printed).
    #[arg(long, value_name = "URL")]
    pub prometheus: String,
    /// Rising rollout percents.
    #[arg(long, default_value = "5,25,100")]
    pub waves: String,
    /// How long every host of a wave must stay proven before the next wave.
    #[arg(long, default_value = "2m")]
    pub soak: String,
    /// How long a wave may take before the rollout pauses.
    #[arg(long, default_value = "15m")]
    pub deadline: String,
    /// Roll out only this site (repeatable); default: every site in DIR.
    #[arg(long)]
    pub site: Vec<String>,
}
