//! Redaction: how a URL may appear in a log line, an error or a metric
//! label. A manifest URL can carry a password (`https://user:pw@host/…`)
//! or a presigned query (`?X-Amz-Signature=…`); both are secrets, and so
//! is the user name. Everything certswap prints goes through [`url`] (or
//! [`url_str`] for text that may not parse), and a reqwest error is
//! stripped of its URL ([`reqwest_error`]) before it is printed.

/// `u` without user info, query or fragment: `https://host:port/path`, with
/// `?…` appended when a query was dropped (so a reader knows there was one).
pub fn url(u: &reqwest::Url) -> String {
    let mut clean = u.clone();
    let had_query = clean.query().is_some();
    clean.set_query(None);
    clean.set_fragment(None);
    // Both fail only for URLs that cannot have user info (no host).
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    let mut s = clean.to_string();
    if had_query {
        s.push_str("?…");
    }
    s
}

/// [`url`] without the `?…` mark: the default `source` metric label of a
/// manifest URL (a stable name, whatever the query holds).
pub fn label(u: &reqwest::Url) -> String {
    let s = url(u);
    match s.strip_suffix("?…") {
        Some(bare) => bare.to_string(),
        None => s,
    }
}

/// [`url`] for a string; text that is not a URL is cut at the first `?`
/// and everything up to the last `@` before the path is dropped.
pub fn url_str(s: &str) -> String {
    if let Ok(u) = reqwest::Url::parse(s)
        && u.has_host()
    {
        return url(&u);
    }
    let (base, query) = match s.split_once(['?', '#']) {
        Some((b, _)) => (b, true),
        None => (s, false),
    };
    let (scheme, rest) = match base.split_once("://") {
        Some((sc, r)) => (format!("{sc}://"), r),
        None => (String::new(), base),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    format!("{scheme}{rest}{}", if query { "?…" } else { "" })
}

/// A reqwest error with its causes, one line ("timed out", "connection
/// reset", "certificate unknown issuer"…), without the URL it carries
/// (the caller names the redacted URL itself).
pub fn reqwest_error(e: reqwest::Error) -> String {
    let timeout = e.is_timeout();
    let e = e.without_url();
    let mut msg = if timeout {
        "timed out".to_string()
    } else {
        e.to_string()
    };
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_and_query_never_survive() {
        let u = reqwest::Url::parse(
            "https://fleet:hunter2@certs.example.com:8443/a/manifest.json?X-Amz-Signature=abc&X-Amz-Credential=k#f",
        )
        .expect("url");
        let r = url(&u);
        assert_eq!(r, "https://certs.example.com:8443/a/manifest.json?…");
        for secret in ["fleet", "hunter2", "abc", "Signature", "#f"] {
            assert!(!r.contains(secret), "{secret} in {r}");
        }
        assert_eq!(
            url(&reqwest::Url::parse("https://h/m.json").expect("url")),
            "https://h/m.json"
        );
        assert_eq!(
            url_str("https://u:p@h/x?sig=1"),
            "https://h/x?…",
            "a parsable string"
        );
        assert_eq!(url_str("weird://u:p@h:1/x?sig=1"), "weird://h:1/x?…");
        assert_eq!(url_str("u:p@h/x"), "h/x");
    }
}
