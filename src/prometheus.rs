//! A small client of Prometheus's HTTP query API (`GET /api/v1/query`,
//! instant vectors only), for the rollout gate ([`crate::rollout`]).
//!
//! A URL may carry `user:password@` (basic auth, as Prometheus behind a
//! proxy often wants): the credentials are sent as a header and never
//! printed — every message names the URL through [`crate::redact`].

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

use crate::redact;

/// Largest answer read; a fleet's series for one query fit easily.
const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;

/// Why a query got no answer. URLs only as [`redact::url`] prints them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PromError {
    /// The `--prometheus` value is not an http(s) URL.
    #[error("{0}: not an http:// or https:// URL")]
    Url(String),
    /// Network, timeout, TLS.
    #[error("{url}: {why}")]
    Transport { url: String, why: String },
    /// Prometheus answered, but not with a vector.
    #[error("{url}: {why}")]
    Answer { url: String, why: String },
}

/// One series of an instant vector: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, "" when absent (as PromQL sees it).
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// A Prometheus server.
pub struct Client {
    http: reqwest::Client,
    /// The query endpoint, without credentials.
    query_url: Url,
    auth: Option<(String, Option<String>)>,
    shown: String,
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    #[serde(default)]
    result: Vec<RawSample>,
}

#[derive(Deserialize)]
struct RawSample {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

impl Client {
    /// A client of the Prometheus at `url` (its base, e.g.
    /// `http://127.0.0.1:9090` or `https://user:pw@prom.example/prom`).
    pub fn new(url: &str, timeout: Duration) -> Result<Client, PromError> {
        let mut base = Url::parse(url).map_err(|_| PromError::Url(redact::url_str(url)))?;
        if !matches!(base.scheme(), "http" | "https") || !base.has_host() {
            return Err(PromError::Url(redact::url(&base)));
        }
        let auth = (!base.username().is_empty()).then(|| {
            (
                base.username().to_string(),
                base.password().map(str::to_string),
            )
        });
        let _ = base.set_username("");
        let _ = base.set_password(None);
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let query_url = base
            .join("api/v1/query")
            .map_err(|_| PromError::Url(redact::url(&base)))?;
        // reqwest panics at build time without a process-wide provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("certswap/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PromError::Transport {
                url: redact::url(&base),
                why: redact::reqwest_error(e),
            })?;
        Ok(Client {
            http,
            shown: redact::url(&base),
            query_url,
            auth,
        })
    }

    /// The server's URL as it may be printed.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// An instant query: every series of the vector `promql` evaluates to now.
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>, PromError> {
        self.query_at(promql, None).await
    }

    /// An instant query evaluated at `time` (Unix seconds), so several
    /// queries see one moment of the data, not a scrape between them.
    pub async fn query_at(
        &self,
        promql: &str,
        time: Option<f64>,
    ) -> Result<Vec<Sample>, PromError> {
        let mut url = self.query_url.clone();
        url.query_pairs_mut().append_pair("query", promql);
        if let Some(t) = time {
            url.query_pairs_mut()
                .append_pair("time", &format!("{t:.3}"));
        }
        let mut req = self.http.get(url);
        if let Some((user, pass)) = &self.auth {
            req = req.basic_auth(user, pass.as_deref());
        }
        let transport = |why: String| PromError::Transport {
            url: self.shown.clone(),
            why,
        };
        let resp = req
            .send()
            .await
            .map_err(|e| transport(redact::reqwest_error(e)))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| transport(redact::reqwest_error(e)))?;
        let answer_err = |why: String| PromError::Answer {
            url: self.shown.clone(),
            why,
        };
        if body.len() > MAX_ANSWER_BYTES {
            return Err(answer_err(format!(
                "the answer to {promql:?} is larger than {} MiB",
                MAX_ANSWER_BYTES >> 20
            )));
        }
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| {
            answer_err(format!(
                "answered {status} with no query result for {promql:?}: {e}"
            ))
        })?;
        if answer.status != "success" {
            return Err(answer_err(format!(
                "the query {promql:?} failed: {}",
                answer.error.unwrap_or_else(|| status.to_string())
            )));
        }
        let data = answer
            .data
            .ok_or_else(|| answer_err(format!("no data for {promql:?}")))?;
        if data.result_type != "vector" {
            return Err(answer_err(format!(
                "{promql:?} is a {}, not an instant vector",
                data.result_type
            )));
        }
        Ok(data
            .result
            .into_iter()
            .map(|r| Sample {
                labels: r.metric,
                value: r.value.1.parse().unwrap_or(f64::NAN),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url_and_are_never_shown() {
        let c = Client::new(
            "https://ops:s3cret@prom.example/prom",
            Duration::from_secs(1),
        )
        .expect("client");
        assert_eq!(c.shown(), "https://prom.example/prom/");
        assert_eq!(
            c.query_url.as_str(),
            "https://prom.example/prom/api/v1/query"
        );
        assert!(c.auth.is_some());
        let e = Client::new("ftp://u:s3cret@x/", Duration::from_secs(1))
            .err()
            .expect("refused");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
}
