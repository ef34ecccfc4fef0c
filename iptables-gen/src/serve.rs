//! Watch mode's `/healthz` and `/metrics`, as kube-proxy serves them.
//!
//! Health is kube-proxy's `ProxyHealthServer` rule: unhealthy once a change has waited
//! longer than the timeout (kube-proxy: twice its sync period) without a successful sync;
//! healthy while starting and whenever nothing waits. The body is kube-proxy's JSON.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::{Error, Result};

#[derive(Debug, Default)]
struct HealthState {
    last_updated: Option<SystemTime>,
    /// When the oldest change not yet applied arrived.
    oldest_pending: Option<Instant>,
}

/// The sync loop's health.
#[derive(Debug)]
pub struct Health {
    timeout: Duration,
    state: Mutex<HealthState>,
}

impl Health {
    pub fn new(timeout: Duration) -> Health {
        Health {
            timeout,
            state: Mutex::new(HealthState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        // A panic elsewhere must not take the health endpoint down with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A change arrived that needs a sync.
    pub fn queued(&self) {
        let mut s = self.lock();
        s.oldest_pending.get_or_insert_with(Instant::now);
    }

    /// A sync applied everything that had arrived.
    pub fn updated(&self) {
        let mut s = self.lock();
        s.oldest_pending = None;
        s.last_updated = Some(SystemTime::now());
    }

    /// (healthy, lastUpdated).
    pub fn check(&self) -> (bool, Option<SystemTime>) {
        let s = self.lock();
        let late = s
            .oldest_pending
            .is_some_and(|t| t.elapsed() >= self.timeout);
        (!late, s.last_updated)
    }

    /// kube-proxy's answer: status and JSON body. A healthy answer's `lastUpdated` is now
    /// (kube-proxy keeps that meaning from older releases).
    pub fn answer(&self) -> (u16, String) {
        let (healthy, last) = self.check();
        let now = SystemTime::now();
        let last = if healthy { Some(now) } else { last };
        let body = format!(
            r#"{{"lastUpdated": "{}","currentTime": "{}", "nodeEligible": true}}"#,
            last.map_or_else(|| go_time(UNIX_EPOCH), go_time),
            go_time(now)
        );
        (if healthy { 200 } else { 503 }, body)
    }
}

/// A time as Go's `time.Time.String()` prints it in UTC (kube-proxy's body):
/// `2026-12-02 09:30:00.123456789 +0000 UTC`.
pub fn go_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let nanos = d.subsec_nanos();
    let frac = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}").trim_end_matches('0').to_string()
    };
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}{frac} +0000 UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The sync loop's metrics, with kube-proxy's names.
pub struct Metrics {
    registry: Registry,
    pub sync_duration: Histogram,
    pub full_sync_duration: Histogram,
    pub partial_sync_duration: Histogram,
    pub last_sync_timestamp: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub endpoint_changes: Counter,
    pub service_changes: Counter,
    pub restore_failures: Counter,
    pub nftables_failures: Counter,
    /// Rules (iptables: `-A` lines per table) in the last restore input.
    pub iptables_last: Family<Vec<(String, String)>, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let buckets = || Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let m = Metrics {
            registry: Registry::default(),
            sync_duration: buckets(),
            full_sync_duration: buckets(),
            partial_sync_duration: buckets(),
            last_sync_timestamp: Gauge::default(),
            endpoint_changes: Counter::default(),
            service_changes: Counter::default(),
            restore_failures: Counter::default(),
            nftables_failures: Counter::default(),
            iptables_last: Family::default(),
        };
        // Counters get their `_total` suffix from the library.
        let p = "kubeproxy_sync_proxy_rules";
        for (name, help, h) in [
            (
                format!("{p}_duration_seconds"),
                "SyncProxyRules latency in seconds",
                &m.sync_duration,
            ),
            (
                "kubeproxy_sync_full_proxy_rules_duration_seconds".into(),
                "SyncProxyRules latency in seconds for full resyncs",
                &m.full_sync_duration,
            ),
            (
                "kubeproxy_sync_partial_proxy_rules_duration_seconds".into(),
                "SyncProxyRules latency in seconds for partial resyncs",
                &m.partial_sync_duration,
            ),
        ] {
            registry.register(name, help, h.clone());
        }
        registry.register(
            format!("{p}_last_timestamp_seconds"),
            "The last time proxy rules were successfully synced",
            m.last_sync_timestamp.clone(),
        );
        for (name, help, c) in [
            (
                "endpoint_changes",
                "Cumulative proxy rules Endpoint changes",
                &m.endpoint_changes,
            ),
            (
                "service_changes",
                "Cumulative proxy rules Service changes",
                &m.service_changes,
            ),
            (
                "iptables_restore_failures",
                "Cumulative proxy iptables restore failures",
                &m.restore_failures,
            ),
            (
                "nftables_sync_failures",
                "Cumulative proxy nftables sync failures",
                &m.nftables_failures,
            ),
        ] {
            registry.register(format!("{p}_{name}"), help, c.clone());
        }
        registry.register(
            format!("{p}_iptables_last"),
            "Number of iptables rules written by kube-proxy in last sync",
            m.iptables_last.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut s, &self.registry);
        s
    }

    /// A successful sync of `secs`.
    pub fn synced(&self, full: bool, secs: f64) {
        self.sync_duration.observe(secs);
        if full {
            self.full_sync_duration.observe(secs);
        } else {
            self.partial_sync_duration.observe(secs);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.last_sync_timestamp.set(now.as_secs_f64());
    }

    /// The `-A` lines per table of an iptables restore input.
    pub fn count_iptables(&self, text: &str) {
        let mut table = "";
        let mut counts: Vec<(&str, i64)> = Vec::new();
        for l in text.lines() {
            if let Some(t) = l.strip_prefix('*') {
                table = t;
                counts.push((t, 0));
            } else if l.starts_with("-A ") {
                if let Some(c) = counts.iter_mut().find(|(t, _)| *t == table) {
                    c.1 += 1;
                }
            }
        }
        for (t, n) in counts {
            self.iptables_last
                .get_or_create(&vec![("table".to_string(), t.to_string())])
                .set(n);
        }
    }
}

/// Serve `f(path) -> (status, content type, body)` on `addr` from a thread. The bind
/// happens here, so a bad or taken address is an error naming the flag at startup.
pub fn serve(
    flag: &str,
    addr: &str,
    f: impl Fn(&str) -> (u16, &'static str, String) + Send + 'static,
) -> Result<()> {
    let server = tiny_http::Server::http(addr).map_err(|e| Error::Option {
        option: flag.into(),
        reason: format!("cannot listen on {addr}: {e}"),
    })?;
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let path = req.url().split('?').next().unwrap_or("").to_string();
            let (code, ctype, body) = f(&path);
            let mut resp = tiny_http::Response::from_string(body).with_status_code(code);
            if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes()) {
                resp = resp.with_header(h);
            }
            // A client that went away is its problem, not the loop's.
            let _ = req.respond(resp);
        }
    });
    Ok(())
}

/// `/healthz` (and `/livez`) from `health`.
pub fn healthz(health: Arc<Health>) -> impl Fn(&str) -> (u16, &'static str, String) {
    move |path| match path {
        "/healthz" | "/livez" => {
            let (code, body) = health.answer();
            (code, "application/json", body)
        }
        _ => (404, "text/plain", "404 page not found\n".into()),
    }
}

/// `/metrics` from `metrics`.
pub fn metrics(m: Arc<Metrics>) -> impl Fn(&str) -> (u16, &'static str, String) {
    move |path| match path {
        "/metrics" => (200, "text/plain; version=0.0.4; charset=utf-8", m.render()),
        _ => (404, "text/plain", "404 page not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_time_prints_as_go_does() {
        let t = UNIX_EPOCH + Duration::new(1_764_667_800, 123_456_789);
        assert_eq!(go_time(t), "2025-12-02 09:30:00.123456789 +0000 UTC");
        assert_eq!(
            go_time(UNIX_EPOCH + Duration::new(1_764_667_800, 500_000_000)),
            "2025-12-02 09:30:00.5 +0000 UTC"
        );
        assert_eq!(
            go_time(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29 00:00:00 +0000 UTC"
        );
    }

    #[test]
    fn health_turns_late_then_recovers() {
        let h = Health::new(Duration::ZERO);
        assert_eq!(h.answer().0, 200, "healthy while starting");
        h.queued();
        let (code, body) = h.answer();
        assert_eq!(code, 503, "{body}");
        assert!(body.starts_with(r#"{"lastUpdated": ""#) && body.contains(r#""currentTime": ""#));
        h.updated();
        assert_eq!(h.answer().0, 200);
    }

    #[test]
    fn metrics_carry_kube_proxys_names() {
        let m = Metrics::new();
        m.synced(true, 0.01);
        m.endpoint_changes.inc();
        m.count_iptables("*filter\n:KUBE-SERVICES - [0:0]\n-A KUBE-FORWARD -j ACCEPT\nCOMMIT\n*nat\n-A A\n-A B\nCOMMIT\n");
        let t = m.render();
        for want in [
            "kubeproxy_sync_proxy_rules_duration_seconds_count 1",
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count 1",
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_count 0",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total 1",
            "kubeproxy_sync_proxy_rules_service_changes_total 0",
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total 0",
            "kubeproxy_sync_proxy_rules_iptables_last{table=\"nat\"} 2",
            "kubeproxy_sync_proxy_rules_iptables_last{table=\"filter\"} 1",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds ",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
    }
}
