//! The server steps of a change, in ONE place for the engine
//! ([`crate::batch`]), recovery ([`crate::recover`]), the agent's drift
//! repair and adopt: every call that makes the server test or load files
//! goes through here, to the [`WebServer`] trait of `src/server/`.
//!
//! ```text
//! step 5  configtest        the server's own test of what it would load
//! step 6  load_new          the ONE reload that makes it read the new files
//!                           (haproxy: the in-memory update, no reload)
//! after   restore_service   config test → alive? → reload, or start it
//!                           (the second reload of a failed change, the
//!                           reload of a repair, the drift fix)
//! ```
//!
//! A server that can take new certificates without a reload (HAProxy's
//! runtime API) does so at [`load_new`] and [`restore_service`], through
//! [`WebServer::apply`] with the sites whose files changed: it sends the
//! bytes now on disk, so after a rollback or a repair memory holds the old
//! ones again. With no sites (adopt changed the server's own config) it is
//! a reload.

use crate::config::Site;
use crate::server::{self, Applied, ServerError, WebServer};

/// Step 5: no reload without a passing config test (invariant 4).
pub fn configtest(server: &dyn WebServer) -> Result<(), ServerError> {
    server.configtest()
}

/// Step 6: make the running server serve the files of `sites` now in
/// place: one graceful reload for every change of the run, or (haproxy)
/// their certificates replaced in memory.
pub fn load_new(server: &dyn WebServer, sites: &[&Site]) -> Result<Applied, ServerError> {
    server.apply(sites)
}

/// Why service could not be restored on the old files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreFailed {
    /// No reload without a passing config test (invariant 4).
    #[error(
        "after restoring the old files the config test still fails, so no reload was sent: {0}"
    )]
    ConfigTest(ServerError),
    #[error("reloading with the old files failed: {0}")]
    Reload(ServerError),
}

impl RestoreFailed {
    /// The server's own error, for callers with their own wording.
    pub fn into_server_error(self) -> ServerError {
        match self {
            RestoreFailed::ConfigTest(e) | RestoreFailed::Reload(e) => e,
        }
    }
}

/// Config test, then make a running server serve the files of `sites` as
/// they are on disk again ([`WebServer::apply`]: a reload, or haproxy's
/// in-memory update), or start one that is not running (apache's parent
/// exits on a pair it cannot load; it was proven running before the
/// change, so this start follows its death on our reload). A pid file
/// naming another process starts nothing.
pub fn restore_service(server: &dyn WebServer, sites: &[&Site]) -> Result<(), RestoreFailed> {
    server.configtest().map_err(RestoreFailed::ConfigTest)?;
    match server.check_alive() {
        Ok(()) => server.apply(sites).map(|_| ()),
        Err(e) if server::is_not_running(&e) => server.start(),
        Err(e) => Err(e),
    }
    .map_err(RestoreFailed::Reload)
}
