//! What certswap tells people and scripts: the outcome of an install or
//! rollback (the JSON object of DESIGN.md, or a short text), and the
//! description of one served certificate.

use serde::Serialize;

use crate::cert::{self, CertInfo};
use crate::probe::{ProbeError, Served, Target};

/// How an install ended; also decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultKind {
    Verified,
    RolledBack,
    Rejected,
    DryRun,
    /// `certswap check`: the bundle passes every rule.
    Valid,
    /// The bundle's leaf is the installed one and every endpoint serves it
    /// (on `probe.consecutive` fresh handshakes in a row, the rule of
    /// "verified"): nothing was written and no reload sent. A re-run of a
    /// deploy hook, or of an install that already succeeded, is a success.
    AlreadyInstalled,
}

impl ResultKind {
    /// DESIGN.md exit codes: 0 ok, 1 validation failed, 3 rolled back.
    pub fn exit_code(self) -> u8 {
        match self {
            ResultKind::Verified
            | ResultKind::DryRun
            | ResultKind::Valid
            | ResultKind::AlreadyInstalled => 0,
            ResultKind::Rejected => 1,
            ResultKind::RolledBack => 3,
        }
    }
}

/// The identity of a leaf: what the served one is compared with.
#[derive(Debug, Clone, Serialize)]
pub struct Leaf {
    pub sha256: String,
    pub not_after: String,
}

impl Leaf {
    pub fn of(c: &CertInfo) -> Leaf {
        Leaf {
            sha256: c.sha256.clone(),
            not_after: cert::rfc3339(c.not_after),
        }
    }
}

/// What one endpoint served at the end of the wait.
#[derive(Debug, Clone, Serialize)]
pub struct ServedRow {
    pub endpoint: String,
    pub sni: String,
    pub sha256: Option<String>,
    /// The served leaf's subject (what a person compares with the file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub not_after: Option<String>,
    pub trusted: Option<bool>,
    /// The served chain reaches a root on its own.
    pub chain_complete: Option<bool>,
    /// The served leaf is valid for the SNI name.
    pub names_ok: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ServedRow {
    /// Trusted, complete and valid for its name: what visitors' clients accept.
    pub fn acceptable(&self) -> bool {
        self.trusted == Some(true)
            && self.chain_complete == Some(true)
            && self.names_ok == Some(true)
    }
}

impl ServedRow {
    pub fn of(t: &Target, r: &Result<Served, ProbeError>) -> ServedRow {
        match r {
            Ok(s) => ServedRow {
                endpoint: t.addr.clone(),
                sni: t.sni.clone(),
                sha256: Some(s.leaf.sha256.clone()),
                subject: Some(s.leaf.subject.clone()),
                not_after: Some(cert::rfc3339(s.leaf.not_after)),
                trusted: Some(s.trusted),
                chain_complete: Some(s.chain_complete),
                names_ok: Some(s.names_ok),
                trust_error: s.trust_error.clone(),
                error: None,
            },
            Err(e) => ServedRow {
                endpoint: t.addr.clone(),
                sni: t.sni.clone(),
                sha256: None,
                subject: None,
                not_after: None,
                trusted: None,
                chain_complete: None,
                names_ok: None,
                trust_error: None,
                error: Some(e.to_string()),
            },
        }
    }
}

/// Milliseconds spent per pipeline step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub validate: u64,
    pub swap: u64,
    pub configtest: u64,
    pub reload: u64,
    pub probe: u64,
}

/// The result of one install or rollback: `install --json` prints this.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub site: String,
    pub result: ResultKind,
    pub old: Option<Leaf>,
    pub new: Option<Leaf>,
    pub served: Vec<ServedRow>,
    pub warnings: Vec<String>,
    pub error: Option<String>,
    /// Days the new notAfter lies past the old one.
    pub days_added: Option<i64>,
    pub timings_ms: Timings,
    /// Set when what failed was the environment, not the bundle (see
    /// [`Outcome::settlement`]). Not part of the JSON contract.
    #[serde(skip)]
    pub retry: Option<Retryable>,
}

/// What the environment broke when a bundle was not installed (invariant
/// 10): the same bytes are worth trying again later. Anything not named
/// here that ends `rejected` or `rolled_back` is a verdict on the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Retryable {
    /// The server's config test failed (it tests the whole config: a typo
    /// elsewhere fails it too).
    ConfigTest,
    /// The reload failed, or the server died on it.
    Reload,
    /// Staging, swapping or committing the files failed (disk full,
    /// read-only, I/O).
    Disk,
    /// An endpoint did not answer before the change.
    Endpoint,
    /// The certificate is not valid yet by this host's clock.
    NotYetValid,
    /// Another certswap held the host lock, or the batch could not run.
    Busy,
    /// The source could not be read (network, timeout, 5xx, checksum).
    Source,
}

impl Retryable {
    /// The `reason` label of `certswap_bundle_waiting`, and the log's word.
    pub fn as_str(self) -> &'static str {
        match self {
            Retryable::ConfigTest => "config_test",
            Retryable::Reload => "reload",
            Retryable::Disk => "disk",
            Retryable::Endpoint => "endpoint",
            Retryable::NotYetValid => "not_yet_valid",
            Retryable::Busy => "busy",
            Retryable::Source => "source",
        }
    }
}

/// What to do with the bytes of a bundle after its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Installed (or nothing to do): done with these bytes.
    Done,
    /// A verdict on the bundle itself (bad key, drops a name, broken
    /// chain, rolled back after the new leaf failed its probe…): refuse
    /// these bytes until different ones are offered.
    Refused,
    /// The environment broke it: try the same bytes again, with backoff.
    Retry(Retryable),
}

impl Outcome {
    pub fn new(site: &str) -> Outcome {
        Outcome {
            site: site.to_string(),
            result: ResultKind::Rejected,
            old: None,
            new: None,
            served: Vec::new(),
            warnings: Vec::new(),
            error: None,
            days_added: None,
            timings_ms: Timings::default(),
            retry: None,
        }
    }

    /// Mark this outcome as the environment's fault (the first cause wins:
    /// a rollback after a failed config test stays a config-test failure).
    pub fn retry_because(&mut self, why: Retryable) {
        self.retry.get_or_insert(why);
    }

    /// The classification of invariant 10: done, refused for good, or
    /// worth retrying. Sources (HTTP manifest, inbox) decide with this.
    pub fn settlement(&self) -> Settlement {
        match (self.result, self.retry) {
            (
                ResultKind::Verified
                | ResultKind::AlreadyInstalled
                | ResultKind::DryRun
                | ResultKind::Valid,
                _,
            ) => Settlement::Done,
            (ResultKind::Rejected | ResultKind::RolledBack, Some(why)) => Settlement::Retry(why),
            (ResultKind::Rejected | ResultKind::RolledBack, None) => Settlement::Refused,
        }
    }

    /// End as rejected with `why`: nothing was touched.
    pub fn reject(&mut self, why: String) {
        self.result = ResultKind::Rejected;
        self.error = Some(why);
    }

    fn site_suffix(&self) -> String {
        if self.site.is_empty() {
            String::new()
        } else {
            format!(" for {}", self.site)
        }
    }

    /// The text a person reads.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let headline = match self.result {
            ResultKind::Verified => format!("verified: {} serves the new certificate", self.site),
            ResultKind::DryRun => format!(
                "dry run: the bundle for {} passes every check; nothing was changed",
                self.site
            ),
            ResultKind::Valid => {
                format!("valid: the bundle passes every check{}", self.site_suffix())
            }
            ResultKind::Rejected => format!("rejected: nothing was changed{}", self.site_suffix()),
            ResultKind::RolledBack => format!(
                "rolled back: {} is back on its previous certificate",
                self.site
            ),
            ResultKind::AlreadyInstalled => format!(
                "already installed and served: {} serves this certificate; nothing was changed",
                self.site
            ),
        };
        s.push_str(&headline);
        s.push('\n');
        if let Some(o) = &self.old {
            s.push_str(&format!(
                "  old:    notAfter {}  sha256 {}\n",
                o.not_after, o.sha256
            ));
        }
        if let Some(n) = &self.new {
            let added = match self.days_added {
                Some(d) => format!("  ({d:+} days)"),
                None => String::new(),
            };
            s.push_str(&format!(
                "  new:    notAfter {}  sha256 {}{added}\n",
                n.not_after, n.sha256
            ));
        }
        for r in &self.served {
            match (&r.sha256, &r.not_after, &r.error) {
                (Some(h), Some(na), _) => s.push_str(&format!(
                    "  served: {}@{}  notAfter {}  sha256 {}  trusted {}\n",
                    r.sni,
                    r.endpoint,
                    na,
                    h,
                    if r.trusted == Some(true) { "yes" } else { "no" }
                )),
                (_, _, Some(e)) => {
                    s.push_str(&format!("  served: {}@{}  error: {e}\n", r.sni, r.endpoint))
                }
                _ => {}
            }
        }
        for w in &self.warnings {
            s.push_str(&format!("  warning: {w}\n"));
        }
        if let Some(e) = &self.error {
            s.push_str(&format!("  reason: {e}\n"));
        }
        if matches!(self.result, ResultKind::Verified | ResultKind::RolledBack) {
            let t = &self.timings_ms;
            s.push_str(&format!(
                "  timings: validate {} ms, swap {} ms, configtest {} ms, reload {} ms, probe {} ms\n",
                t.validate, t.swap, t.configtest, t.reload, t.probe
            ));
        }
        s
    }
}

/// Whether log lines on stderr may carry colour escape codes: only when
/// stderr is a terminal and `NO_COLOR` (https://no-color.org) is unset or
/// empty. A deploy hook's stderr lands in certbot's log and in cron mail,
/// where escape codes are noise.
pub fn colour_stderr() -> bool {
    colour_allowed(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// [`colour_stderr`] on given facts (for its unit test).
fn colour_allowed(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// `certswap probe` in text: the fields people compare with
/// `openssl x509 -noout -dates` lines as openssl prints them.
pub fn served_text(s: &Served) -> String {
    let l = &s.leaf;
    let mut out = String::new();
    out.push_str(&format!("endpoint:     {}\n", s.target.addr));
    out.push_str(&format!("sni:          {}\n", s.target.sni));
    out.push_str(&format!("protocol:     {}\n", s.protocol));
    out.push_str(&format!("subject:      {}\n", l.subject));
    out.push_str(&format!("issuer:       {}\n", l.issuer));
    out.push_str(&format!("serial:       {}\n", l.serial));
    out.push_str(&format!("names:        {}\n", l.names.join(", ")));
    out.push_str(&format!("notBefore={}\n", cert::openssl_date(l.not_before)));
    out.push_str(&format!("notAfter={}\n", cert::openssl_date(l.not_after)));
    out.push_str(&format!("sha256:       {}\n", l.sha256));
    out.push_str(&format!("chain length: {}\n", s.chain.len()));
    match &s.trust_error {
        None if s.trusted => out.push_str("trusted:      yes\n"),
        Some(e) => out.push_str(&format!("trusted:      no ({e})\n")),
        None => out.push_str("trusted:      no\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour_allowed(true, None));
        assert!(colour_allowed(true, Some(OsStr::new(""))));
        assert!(!colour_allowed(true, Some(OsStr::new("1"))));
        assert!(!colour_allowed(false, None));
        assert!(!colour_allowed(false, Some(OsStr::new("1"))));
    }

    #[test]
    fn already_installed_is_exit_0_and_says_so() {
        let mut out = Outcome::new("a.test");
        out.result = ResultKind::AlreadyInstalled;
        assert_eq!(out.result.exit_code(), 0);
        assert!(
            out.to_text()
                .starts_with("already installed and served: a.test")
        );
        let v = serde_json::to_value(&out).expect("json");
        assert_eq!(v["result"], "already_installed");
    }

    #[test]
    fn only_a_verdict_on_the_bytes_refuses_them() {
        let mut o = Outcome::new("a.test");
        o.reject("the private key does not match".into());
        assert_eq!(o.settlement(), Settlement::Refused);
        o.result = ResultKind::RolledBack;
        assert_eq!(
            o.settlement(),
            Settlement::Refused,
            "failed probe of the new leaf"
        );
        o.retry_because(Retryable::ConfigTest);
        o.retry_because(Retryable::Reload);
        assert_eq!(o.settlement(), Settlement::Retry(Retryable::ConfigTest));
        o.result = ResultKind::Verified;
        assert_eq!(o.settlement(), Settlement::Done);
    }
}
