//! Test-only crash points. When `CERTSWAP_FAILPOINT` names a point, the
//! process aborts there (like `kill -9`: no destructors, no cleanup), so
//! tests can prove that the journal repairs a crash at every step boundary.
//! Unset in production; reading one env var once costs nothing.

use std::sync::OnceLock;

/// The variable tests set, e.g. `CERTSWAP_FAILPOINT=after-rename-cert`.
pub const ENV: &str = "CERTSWAP_FAILPOINT";

/// Every point install and rollback pass, in pipeline order.
pub const POINTS: &[&str] = &[
    "after-stage",
    "after-rename-cert",
    "after-rename-key",
    "after-swap",
    "after-configtest",
    "after-reload",
    "mid-probe",
    "after-commit",
];

/// On the rollback path only (not passed by an install that verifies):
/// after the old files are back following a reload, before the reload
/// that puts the server on them again.
pub const AFTER_RESTORE: &str = "after-restore";

/// Abort the process if `name` is the configured failpoint.
pub fn hit(name: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.is_empty()));
    if armed.as_deref() == Some(name) {
        eprintln!("certswap: failpoint {name} reached, aborting");
        std::process::abort();
    }
}

/// An I/O error instead of an abort: `CERTSWAP_FAILPOINT=fail-NAME` makes
/// the step `NAME` fail as a broken disk would (e.g. `fail-commit`: the
/// commit point of a change, after the probe verified it).
pub fn fail(name: &str) -> std::io::Result<()> {
    match std::env::var(ENV) {
        Ok(v) if v.strip_prefix("fail-") == Some(name) => {
            Err(std::io::Error::other(format!("failpoint fail-{name}")))
        }
        _ => Ok(()),
    }
}

/// Tests only: with `CERTSWAP_TEST_SKIP_VALIDATION=1` a *debug* build skips
/// the rules of step 2, so a test can hand a server a pair it will choke on
/// (apache's parent exits on a mismatched pair that `apache2 -t` passes).
/// Release builds never honour it.
pub fn skip_validation() -> bool {
    cfg!(debug_assertions) && std::env::var("CERTSWAP_TEST_SKIP_VALIDATION").is_ok_and(|v| v == "1")
}
