//! `certswap run`: the daemon loop — sources (inbox, HTTPS manifest),
//! batches, expiry and drift watch, metrics, signals. (Being written.)

use std::path::Path;

/// Why the agent could not start or had to stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
}

/// Options of `certswap run` that are not config.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// One pass, then exit.
    pub once: bool,
}

/// Run the agent with the config at `config_path` (re-read on SIGHUP).
pub fn run(config_path: &Path, _opts: RunOptions) -> Result<(), AgentError> {
    crate::config::Config::load(config_path)?;
    Ok(())
}
