//! The agent's Prometheus metrics (prometheus-client registry, OpenMetrics
//! text) and a tiny HTTP/1.1 responder for `GET /metrics` on a tokio
//! listener. Nothing else is served; every connection is closed after one
//! answer.
//!
//! The port is open to every local user, so it must not be a way to starve
//! the agent: at most [`MAX_CONNECTIONS`] are served at once (one more is
//! closed as soon as it is accepted, so it holds no descriptor), a client
//! has [`HEADER_TIMEOUT`] to send its request and [`WRITE_TIMEOUT`] to
//! take the answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiteLabel {
    pub site: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub site: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub site: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

/// A bundle waiting for a retry: which source, which site, and why (a
/// [`crate::report::Retryable`] word).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WaitingLabel {
    pub source: String,
    pub site: String,
    pub reason: String,
}

/// A source skipped until a file of it is fixed, and why (`unsafe_file`:
/// another user may read or change it).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkippedLabel {
    pub source: String,
    pub reason: String,
}

/// The host as the fleet knows it: the `host_id` its rollout buckets are
/// computed from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabel {
    pub host_id: String,
}

/// The leaf an endpoint of a site serves, by its SHA-256.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeafLabel {
    pub site: String,
    pub endpoint: String,
    pub sha256: String,
}

/// Every metric of the agent. Cheap to share: each family is an `Arc`.
pub struct Metrics {
    registry: Registry,
    /// `certswap_cert_not_after_seconds{site}`: notAfter of the leaf on disk.
    pub cert_not_after: Family<SiteLabel, Gauge>,
    /// `certswap_served_not_after_seconds{site,endpoint}`.
    pub served_not_after: Family<EndpointLabel, Gauge>,
    /// `certswap_cert_days_left{site}` (negative once expired).
    pub days_left: Family<SiteLabel, Gauge>,
    /// `certswap_drift{site}`: 1 when an endpoint serves another leaf than the one on disk.
    pub drift: Family<SiteLabel, Gauge>,
    /// `certswap_install_total{site,result}`.
    pub installs: Family<ResultLabel, Counter>,
    /// `certswap_last_install_timestamp_seconds{site}`: last verified install.
    pub last_install: Family<SiteLabel, Gauge>,
    /// `certswap_source_last_success_timestamp_seconds{source}`.
    pub source_last_success: Family<SourceLabel, Gauge>,
    /// `certswap_source_errors_total{source}`.
    pub source_errors: Family<SourceLabel, Counter>,
    /// `certswap_renewal_waiting{site}`: 1 while a certbot/acme.sh store
    /// holds a newer certificate for the site than the installed one.
    pub renewal_waiting: Family<SiteLabel, Gauge>,
    /// `certswap_agent_passes_total`.
    pub passes: Counter,
    /// `certswap_agent_skipped_passes_total`: passes skipped on a busy host lock.
    pub skipped_passes: Counter,
    /// `certswap_agent_last_pass_timestamp_seconds`.
    pub last_pass: Gauge,
    /// `certswap_bundle_waiting{source,site,reason}`: 1 while a bundle the
    /// environment kept from being installed waits for its retry.
    pub bundle_waiting: Family<WaitingLabel, Gauge>,
    /// `certswap_source_skipped{source,reason}`: 1 while a source is not
    /// read because one of its files is unsafe.
    pub source_skipped: Family<SkippedLabel, Gauge>,
    /// `certswap_agent_failed_passes_total`: passes that could not run
    /// (state dir, prober, work directory); each is retried within seconds.
    pub failed_passes: Counter,
    /// `certswap_metrics_connections_refused_total`: metrics connections
    /// closed at once because [`MAX_CONNECTIONS`] were open.
    pub metrics_refused: Counter,
    /// `certswap_host_info{host_id}` 1: the id the rollout buckets use.
    pub host_info: Family<HostLabel, Gauge>,
    /// `certswap_served_leaf_info{site,endpoint,sha256}` 1: the leaf each
    /// endpoint served at its last handshake (one series per endpoint).
    pub served_leaf: Family<LeafLabel, Gauge>,
    /// The sha256 label shown per (site, endpoint), to drop the old series
    /// when the served leaf changes.
    served_leaf_shown: Mutex<HashMap<(String, String), String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            cert_not_after: Family::default(),
            served_not_after: Family::default(),
            days_left: Family::default(),
            drift: Family::default(),
            installs: Family::default(),
            last_install: Family::default(),
            source_last_success: Family::default(),
            source_errors: Family::default(),
            renewal_waiting: Family::default(),
            passes: Counter::default(),
            skipped_passes: Counter::default(),
            last_pass: Gauge::default(),
            bundle_waiting: Family::default(),
            source_skipped: Family::default(),
            failed_passes: Counter::default(),
            metrics_refused: Counter::default(),
            host_info: Family::default(),
            served_leaf: Family::default(),
            served_leaf_shown: Mutex::new(HashMap::new()),
            registry: Registry::default(),
        };
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "certswap_cert_not_after_seconds",
            "notAfter of the certificate on disk, Unix seconds",
            m.cert_not_after.clone(),
        );
        registry.register(
            "certswap_served_not_after_seconds",
            "notAfter of the certificate an endpoint serves, Unix seconds",
            m.served_not_after.clone(),
        );
        registry.register(
            "certswap_cert_days_left",
            "Whole days until the certificate on disk expires",
            m.days_left.clone(),
        );
        registry.register(
            "certswap_drift",
            "1 when an endpoint serves another certificate than the one on disk",
            m.drift.clone(),
        );
        registry.register(
            "certswap_install",
            "Installs by result (verified, rolled_back, rejected, error)",
            m.installs.clone(),
        );
        registry.register(
            "certswap_last_install_timestamp_seconds",
            "When the last verified install of the site finished, Unix seconds",
            m.last_install.clone(),
        );
        registry.register(
            "certswap_source_last_success_timestamp_seconds",
            "When the source was last read without error, Unix seconds",
            m.source_last_success.clone(),
        );
        registry.register(
            "certswap_source_errors",
            "Failed reads of a source (network, HTTP status, checksum, bad bundle)",
            m.source_errors.clone(),
        );
        registry.register(
            "certswap_renewal_waiting",
            "1 while the ACME client holds a newer certificate for the site than the installed one",
            m.renewal_waiting.clone(),
        );
        registry.register(
            "certswap_agent_passes",
            "Passes the agent ran",
            m.passes.clone(),
        );
        registry.register(
            "certswap_agent_skipped_passes",
            "Passes skipped because another certswap held the host lock",
            m.skipped_passes.clone(),
        );
        registry.register(
            "certswap_agent_last_pass_timestamp_seconds",
            "When the last pass finished, Unix seconds",
            m.last_pass.clone(),
        );
        registry.register(
            "certswap_bundle_waiting",
            "1 while a bundle waits for a retry because the environment kept it from being installed (reason: config_test, reload, disk, endpoint, not_yet_valid, busy, source)",
            m.bundle_waiting.clone(),
        );
        registry.register(
            "certswap_source_skipped",
            "1 while a source is skipped because one of its files is unsafe (readable or writable by another user)",
            m.source_skipped.clone(),
        );
        registry.register(
            "certswap_agent_failed_passes",
            "Passes that could not run (state dir, prober, work directory); each is retried within seconds",
            m.failed_passes.clone(),
        );
        registry.register(
            "certswap_metrics_connections_refused",
            "Connections to the metrics port closed at once because the cap of open ones was reached",
            m.metrics_refused.clone(),
        );
        registry.register(
            "certswap_host_info",
            "1, labelled with the host_id the rollout buckets of this host are computed from",
            m.host_info.clone(),
        );
        registry.register(
            "certswap_served_leaf_info",
            "1, labelled with the SHA-256 of the leaf the endpoint served at its last handshake",
            m.served_leaf.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Set the host id (start and SIGHUP): one series.
    pub fn set_host_id(&self, host_id: &str) {
        self.host_info.clear();
        self.host_info
            .get_or_create(&HostLabel {
                host_id: host_id.to_string(),
            })
            .set(1);
    }

    /// What a handshake with `endpoint` of `site` saw: the leaf's notAfter
    /// (`certswap_served_not_after_seconds`) and, when known, its SHA-256
    /// (`certswap_served_leaf_info`, the old leaf's series removed).
    pub fn served(&self, site: &str, endpoint: &str, sha256: Option<&str>, not_after: i64) {
        self.served_not_after
            .get_or_create(&EndpointLabel {
                site: site.to_string(),
                endpoint: endpoint.to_string(),
            })
            .set(not_after);
        let Some(sha256) = sha256 else {
            return;
        };
        let key = (site.to_string(), endpoint.to_string());
        // A poisoned lock only means a panic elsewhere; the map is still whole.
        let mut shown = crate::par::lock(&self.served_leaf_shown);
        if let Some(old) = shown.insert(key, sha256.to_string())
            && old != sha256
        {
            self.served_leaf.remove(&LeafLabel {
                site: site.to_string(),
                endpoint: endpoint.to_string(),
                sha256: old,
            });
        }
        self.served_leaf
            .get_or_create(&LeafLabel {
                site: site.to_string(),
                endpoint: endpoint.to_string(),
                sha256: sha256.to_string(),
            })
            .set(1);
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn site_error(&self, site: &str) {
        self.installs
            .get_or_create(&ResultLabel {
                site: site.to_string(),
                result: "error".into(),
            })
            .inc();
    }

    pub fn source_error(&self, source: &str) {
        self.source_errors
            .get_or_create(&SourceLabel {
                source: source.to_string(),
            })
            .inc();
    }

    /// Mark `source` skipped (or no longer) for `reason`.
    pub fn source_skipped(&self, source: &str, reason: &str, skipped: bool) {
        let label = SkippedLabel {
            source: source.to_string(),
            reason: reason.to_string(),
        };
        if skipped {
            self.source_skipped.get_or_create(&label).set(1);
        } else {
            self.source_skipped.remove(&label);
        }
    }

    pub fn source_ok(&self, source: &str) {
        self.source_last_success
            .get_or_create(&SourceLabel {
                source: source.to_string(),
            })
            .set(now_unix());
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Largest request head read; a scraper's GET is a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// Connections served at once; a scraper needs one, a few dashboards a
/// few more. Each holds one file descriptor of the agent.
pub const MAX_CONNECTIONS: usize = 16;
/// A client gets this long to send its whole request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
/// …and this long to take the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// One of the [`MAX_CONNECTIONS`] slots, given back on drop.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Option<Slot> {
        open.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < MAX_CONNECTIONS).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answer `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("metrics listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Some(slot) = Slot::take(&open) else {
            // Closed now: an idle crowd must not hold the agent's descriptors.
            metrics.metrics_refused.inc();
            tracing::debug!(
                "metrics: {peer} closed at once: {MAX_CONNECTIONS} connections are open"
            );
            drop(stream);
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            answer(stream, &metrics, peer).await;
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics, peer: std::net::SocketAddr) {
    let mut buf = Vec::with_capacity(512);
    let read_head = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            if buf.len() > MAX_REQUEST {
                return Err(true);
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Err(false),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        Ok(())
    };
    match tokio::time::timeout(HEADER_TIMEOUT, read_head).await {
        Ok(Ok(())) => {}
        Ok(Err(too_large)) => {
            if too_large {
                let _ = tokio::time::timeout(
                    WRITE_TIMEOUT,
                    respond(&mut stream, "431 Request Header Fields Too Large", "", ""),
                )
                .await;
            }
            return;
        }
        Err(_) => {
            tracing::debug!("metrics: {peer} sent no request within {HEADER_TIMEOUT:?}");
            return;
        }
    }
    if tokio::time::timeout(WRITE_TIMEOUT, route(&mut stream, &buf, metrics))
        .await
        .is_err()
    {
        tracing::debug!("metrics: {peer} did not take the answer within {WRITE_TIMEOUT:?}");
    }
}

async fn route(stream: &mut TcpStream, buf: &[u8], metrics: &Metrics) {
    let head = String::from_utf8_lossy(buf);
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let body = metrics.encode();
            let _ = respond(
                stream,
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &body,
            )
            .await;
        }
        ("GET", _) => {
            let _ = respond(stream, "404 Not Found", "text/plain", "try /metrics\n").await;
        }
        _ => {
            let _ = respond(stream, "405 Method Not Allowed", "text/plain", "").await;
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if !content_type.is_empty() {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_the_issue_are_exposed() {
        let m = Metrics::new();
        let site = SiteLabel {
            site: "a.test".into(),
        };
        m.cert_not_after.get_or_create(&site).set(1);
        m.days_left.get_or_create(&site).set(1);
        m.drift.get_or_create(&site).set(0);
        m.last_install.get_or_create(&site).set(1);
        m.served_not_after
            .get_or_create(&EndpointLabel {
                site: "a.test".into(),
                endpoint: "127.0.0.1:443".into(),
            })
            .set(1);
        m.installs
            .get_or_create(&ResultLabel {
                site: "a.test".into(),
                result: "verified".into(),
            })
            .inc();
        m.source_ok("inbox");
        m.source_error("inbox");
        m.set_host_id("web-1");
        m.set_host_id("web-17");
        m.served("a.test", "a.test@127.0.0.1:443", Some("00aa"), 5);
        m.served("a.test", "a.test@127.0.0.1:443", Some("11bb"), 7);
        let text = m.encode();
        assert!(!text.contains("web-1\""), "{text}");
        assert!(
            !text.contains("00aa"),
            "the old leaf's series stays:\n{text}"
        );
        for name in [
            "certswap_cert_not_after_seconds{site=\"a.test\"} 1",
            "certswap_served_not_after_seconds{site=\"a.test\",endpoint=\"127.0.0.1:443\"} 1",
            "certswap_cert_days_left{site=\"a.test\"} 1",
            "certswap_drift{site=\"a.test\"} 0",
            "certswap_install_total{site=\"a.test\",result=\"verified\"} 1",
            "certswap_last_install_timestamp_seconds{site=\"a.test\"} 1",
            "certswap_source_last_success_timestamp_seconds{source=\"inbox\"}",
            "certswap_source_errors_total{source=\"inbox\"} 1",
            "certswap_host_info{host_id=\"web-17\"} 1",
            "certswap_served_leaf_info{site=\"a.test\",endpoint=\"a.test@127.0.0.1:443\",sha256=\"11bb\"} 1",
            "certswap_served_not_after_seconds{site=\"a.test\",endpoint=\"a.test@127.0.0.1:443\"} 7",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
    }
}
