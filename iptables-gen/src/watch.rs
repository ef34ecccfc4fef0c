//! Watch streams: Kubernetes watch events as `kubectl get services -A --watch
//! --output-watch-events -o json` (and the same for endpointslices) prints them, one
//! pretty-printed `{"type": …, "object": {…}}` after another, read into an in-memory
//! store of the objects, from which each sync builds its input.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::model::{self, EndpointSlice, Objects, Service};
use crate::{Error, Result};

/// One watch event. `object` stays raw until the store reads it as its kind.
#[derive(Debug, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub object: Box<RawValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
    Bookmark,
    Error,
}

/// The events of one stream, in order; ends at EOF. A malformed event is an error
/// naming its line and column (the stream cannot be trusted after it).
pub fn events<R: Read>(r: R) -> impl Iterator<Item = Result<Event>> {
    serde_json::Deserializer::from_reader(r)
        .into_iter::<Event>()
        .map(|e| e.map_err(Error::Json))
}

/// What an event changed, for the sync loop's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Service,
    EndpointSlice,
    /// A BOOKMARK, or an event that changed nothing.
    None,
}

#[derive(Deserialize, Default)]
struct Header {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: HeaderMeta,
}

#[derive(Deserialize, Default)]
struct HeaderMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
}

/// The objects the streams delivered, by namespace/name.
#[derive(Debug, Default)]
pub struct Store {
    services: BTreeMap<(String, String), Service>,
    slices: BTreeMap<(String, String), EndpointSlice>,
}

impl Store {
    /// Apply one event. ADDED and MODIFIED replace the object (one that fails
    /// validation is removed, and said so: its old rules must not outlive it); DELETED
    /// removes it; ERROR is an error carrying the server's message.
    pub fn apply(&mut self, ev: &Event, warnings: &mut Vec<String>) -> Result<Change> {
        let raw = ev.object.get();
        if ev.kind == EventKind::Bookmark {
            return Ok(Change::None);
        }
        if ev.kind == EventKind::Error {
            #[derive(Deserialize, Default)]
            struct Status {
                #[serde(default)]
                message: String,
                #[serde(default)]
                code: u32,
            }
            let st: Status = serde_json::from_str(raw).unwrap_or_default();
            return Err(Error::Watch {
                reason: format!("ERROR event (code {}): {}", st.code, st.message),
            });
        }
        let h: Header = serde_json::from_str(raw).map_err(Error::Json)?;
        let key = (h.metadata.namespace.clone(), h.metadata.name.clone());
        let change = match h.kind.as_str() {
            "Service" => Change::Service,
            "EndpointSlice" => Change::EndpointSlice,
            other => {
                warnings.push(format!("ignored a watch event for kind {other:?}"));
                return Ok(Change::None);
            }
        };
        let removed = match change {
            Change::Service => self.services.remove(&key).is_some(),
            _ => self.slices.remove(&key).is_some(),
        };
        if ev.kind == EventKind::Deleted {
            return Ok(if removed { change } else { Change::None });
        }
        let mut one = Objects::default();
        model::parse(raw.as_bytes(), &mut one)?;
        warnings.extend(one.rejected.iter().map(|r| format!("skipped {r}")));
        if let Some(s) = one.services.pop() {
            self.services.insert(key, s);
        } else if let Some(s) = one.slices.pop() {
            self.slices.insert(key, s);
        }
        Ok(change)
    }

    /// The input of a sync: every object, in key order.
    pub fn objects(&self) -> Objects {
        Objects {
            services: self.services.values().cloned().collect(),
            slices: self.slices.values().cloned().collect(),
            rejected: Vec::new(),
        }
    }

    /// (services, EndpointSlices) held.
    pub fn len(&self) -> (usize, usize) {
        (self.services.len(), self.slices.len())
    }
}

/// When the sync loop syncs, as pure logic over instants (kube-proxy's rules): no sync
/// before every stream is listed (a BOOKMARK, or `quiet` without an event, counted from
/// the start for a stream that sends nothing); the first sync full; then a sync at most
/// every `min_sync` while changes come, a full one at least every `sync_period`, and a
/// failed one retried as full.
#[derive(Debug)]
pub struct Schedule {
    min_sync: Duration,
    sync_period: Duration,
    quiet: Duration,
    last_event: Vec<Instant>,
    listed: Vec<bool>,
    dirty: bool,
    need_full: bool,
    last_sync: Option<Instant>,
    last_full: Option<Instant>,
}

impl Schedule {
    pub fn new(
        streams: usize,
        start: Instant,
        min_sync: Duration,
        sync_period: Duration,
        quiet: Duration,
    ) -> Schedule {
        Schedule {
            min_sync,
            sync_period,
            quiet,
            last_event: vec![start; streams],
            listed: vec![false; streams],
            dirty: false,
            need_full: true,
            last_sync: None,
            last_full: None,
        }
    }

    /// Stream `i` delivered an event at `now` (`changed`: it changed the store).
    pub fn event(&mut self, i: usize, now: Instant, bookmark: bool, changed: bool) {
        self.last_event[i] = now;
        self.listed[i] |= bookmark;
        self.dirty |= changed;
    }

    fn all_listed(&mut self, now: Instant) -> bool {
        for (l, t) in self.listed.iter_mut().zip(&self.last_event) {
            *l |= now >= *t + self.quiet;
        }
        self.listed.iter().all(|l| *l)
    }

    /// Until when the loop may wait for an event before it must look again.
    pub fn deadline(&self, now: Instant) -> Instant {
        if self.listed.iter().all(|l| *l) {
            let earliest = self.last_sync.map_or(now, |t| t + self.min_sync);
            if self.dirty || self.need_full {
                earliest
            } else {
                self.last_full
                    .map_or(now, |t| t + self.sync_period)
                    .max(earliest)
            }
        } else {
            self.last_event
                .iter()
                .zip(&self.listed)
                .filter(|(_, l)| !**l)
                .map(|(t, _)| *t + self.quiet)
                .min()
                .unwrap_or(now)
        }
    }

    /// A sync is due at `now`: `Some(full)`, and it counts as started.
    pub fn due(&mut self, now: Instant) -> Option<bool> {
        if !self.all_listed(now) {
            return None;
        }
        if self.last_full.is_none_or(|t| now >= t + self.sync_period) {
            self.need_full = true;
        }
        let ready = self.last_sync.is_none_or(|t| now >= t + self.min_sync);
        if !(self.dirty || self.need_full) || !ready {
            return None;
        }
        self.dirty = false;
        self.last_sync = Some(now);
        Some(self.need_full)
    }

    /// The sync started at `started` succeeded.
    pub fn synced(&mut self, started: Instant, full: bool) {
        self.need_full = false;
        if full {
            self.last_full = Some(started);
        }
    }

    /// It failed: the next one (after `min_sync`) is full.
    pub fn failed(&mut self) {
        self.need_full = true;
    }
}

/// A Go duration as kube-proxy's flags take it: `1s`, `100ms`, `1h0m0s`, `1.5m`.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&n| n > 0)?;
        let v: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += v * unit;
        rest = &rest[u..];
    }
    std::time::Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = r#"{
    "object": {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default", "resourceVersion": "10"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    },
    "type": "ADDED"
}
{
    "object": {
        "addressType": "IPv4",
        "apiVersion": "discovery.k8s.io/v1",
        "endpoints": [{"addresses": ["10.0.0.1"]}],
        "kind": "EndpointSlice",
        "metadata": {"labels": {"kubernetes.io/service-name": "web"}, "name": "web-abc", "namespace": "default", "resourceVersion": "11"},
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    },
    "type": "ADDED"
}
{"type": "BOOKMARK", "object": {"kind": "Service", "metadata": {"resourceVersion": "12"}}}
{
    "object": {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default", "resourceVersion": "13"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    },
    "type": "DELETED"
}
"#;

    #[test]
    fn a_kubectl_stream_fills_and_empties_the_store() {
        let mut st = Store::default();
        let mut w = Vec::new();
        let evs: Vec<Event> = events(STREAM.as_bytes()).collect::<Result<_>>().unwrap();
        let kinds: Vec<EventKind> = evs.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::Added,
                EventKind::Added,
                EventKind::Bookmark,
                EventKind::Deleted
            ]
        );
        let changes: Vec<Change> = evs.iter().map(|e| st.apply(e, &mut w).unwrap()).collect();
        assert_eq!(
            changes,
            [
                Change::Service,
                Change::EndpointSlice,
                Change::None,
                Change::Service
            ]
        );
        assert_eq!(st.len(), (0, 1));
        assert!(w.is_empty(), "{w:?}");
        let o = st.objects();
        assert_eq!(o.slices[0].metadata.name, "web-abc");
    }

    #[test]
    fn an_error_event_and_a_malformed_stream_are_errors() {
        let mut st = Store::default();
        let mut w = Vec::new();
        let ev: Event = serde_json::from_str(
            r#"{"type":"ERROR","object":{"kind":"Status","code":410,"message":"too old resource version"}}"#,
        )
        .unwrap();
        let e = st.apply(&ev, &mut w).unwrap_err();
        assert!(e.to_string().contains("too old resource version"), "{e}");
        let bad: Vec<Result<Event>> =
            events(&b"{\"type\": \"ADDED\", \"object\": {}}\n{\"type\": "[..]).collect();
        assert!(bad[0].is_ok());
        assert!(bad[1].is_err());
    }

    #[test]
    fn an_invalid_version_removes_the_object_and_is_reported() {
        let mut st = Store::default();
        let mut w = Vec::new();
        let good: Event = serde_json::from_str(
            r#"{"type":"ADDED","object":{"kind":"Service","metadata":{"name":"web","namespace":"default"},"spec":{"clusterIP":"10.96.0.10","ports":[{"port":80}]}}}"#,
        )
        .unwrap();
        st.apply(&good, &mut w).unwrap();
        assert_eq!(st.len(), (1, 0));
        let bad: Event = serde_json::from_str(
            r#"{"type":"MODIFIED","object":{"kind":"Service","metadata":{"name":"web","namespace":"default"},"spec":{"clusterIP":"10.96.0.10","ports":[{"port":99999}]}}}"#,
        )
        .unwrap();
        assert_eq!(st.apply(&bad, &mut w).unwrap(), Change::Service);
        assert_eq!(st.len(), (0, 0), "the invalid version removes the old one");
        assert_eq!(w.len(), 1, "{w:?}");
    }

    #[test]
    fn go_durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_duration("100ms"), Some(Duration::from_millis(100)));
        assert_eq!(parse_duration("1h0m0s"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5m"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        for bad in ["", "s", "10", "1x", "-1s", "1s2"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_schedule_waits_for_the_lists_then_coalesces() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = Schedule::new(2, t0, ms(100), ms(10_000), ms(500));
        s.event(0, t0 + ms(10), false, true);
        s.event(0, t0 + ms(20), true, false);
        // Stream 1 sent nothing: listed only once it was quiet for 500 ms from the start.
        assert_eq!(s.due(t0 + ms(30)), None);
        assert_eq!(s.deadline(t0 + ms(30)), t0 + ms(500));
        assert_eq!(s.due(t0 + ms(500)), Some(true), "the first sync is full");
        s.synced(t0 + ms(500), true);
        // Changes within --min-sync-period wait; then one partial sync takes them all.
        s.event(1, t0 + ms(520), false, true);
        s.event(1, t0 + ms(540), false, true);
        assert_eq!(s.due(t0 + ms(550)), None);
        assert_eq!(s.deadline(t0 + ms(550)), t0 + ms(600));
        assert_eq!(s.due(t0 + ms(600)), Some(false));
        s.synced(t0 + ms(600), false);
        assert_eq!(s.due(t0 + ms(700)), None, "nothing changed");
        // A failure: the retry, after --min-sync-period, is full.
        s.event(0, t0 + ms(710), false, true);
        assert_eq!(s.due(t0 + ms(710)), Some(false));
        s.failed();
        assert_eq!(s.due(t0 + ms(760)), None);
        assert_eq!(s.due(t0 + ms(810)), Some(true));
        s.synced(t0 + ms(810), true);
        // --sync-period after the last full one: full again, changes or not.
        assert_eq!(s.deadline(t0 + ms(900)), t0 + ms(10_810));
        assert_eq!(s.due(t0 + ms(10_810)), Some(true));
    }

    #[test]
    fn a_bookmark_ends_a_list_at_once() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = Schedule::new(1, t0, ms(100), ms(10_000), Duration::from_secs(3600));
        s.event(0, t0 + ms(1), false, true);
        assert_eq!(s.due(t0 + ms(2)), None);
        s.event(0, t0 + ms(3), true, false);
        assert_eq!(s.due(t0 + ms(3)), Some(true));
    }
}
