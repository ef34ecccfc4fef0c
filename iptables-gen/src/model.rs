//! Service and EndpointSlice objects (only the fields kube-proxy uses; unknown fields are
//! ignored), read from `kubectl get services,endpointslices -A -o json` (a `v1` `List`) or
//! single objects, and validated the way the API server would: an object that fails is
//! reported by namespace/name and skipped. Names, port names and IPs are validated before
//! they can reach rule text, so nothing from input can inject a quote, space or newline.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{Error, Result};

#[derive(Debug, Clone, Default, Hash, Deserialize, Serialize)]
pub struct Meta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Changes on every write to the object (partial syncs use it to spot changes).
    #[serde(default, rename = "resourceVersion")]
    pub resource_version: Option<String>,
}

#[derive(Debug, Clone, Default, Hash, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default)]
    pub spec: ServiceSpec,
    #[serde(default)]
    pub status: ServiceStatus,
}

#[derive(Debug, Clone, Default, Hash, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default, rename = "type")]
    pub service_type: Option<String>,
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Option<Vec<String>>,
    #[serde(default)]
    pub ports: Option<Vec<PortSpec>>,
    #[serde(default, rename = "externalIPs")]
    pub external_ips: Option<Vec<String>>,
    #[serde(default)]
    pub external_traffic_policy: Option<String>,
    #[serde(default)]
    pub internal_traffic_policy: Option<String>,
    #[serde(default)]
    pub health_check_node_port: Option<i64>,
    #[serde(default)]
    pub load_balancer_source_ranges: Option<Vec<String>>,
    #[serde(default)]
    pub session_affinity: Option<String>,
    #[serde(default)]
    pub session_affinity_config: Option<AffinityConfig>,
}

#[derive(Debug, Clone, Default, Hash, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AffinityConfig {
    #[serde(default, rename = "clientIP")]
    pub client_ip: Option<ClientIpConfig>,
}

#[derive(Debug, Clone, Default, Hash, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpConfig {
    #[serde(default)]
    pub timeout_seconds: Option<i64>,
}

#[derive(Debug, Clone, Default, Hash, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSpec {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub port: i64,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub node_port: Option<i64>,
}

#[derive(Debug, Clone, Default, Hash, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    #[serde(default)]
    pub load_balancer: Option<LbStatus>,
}

#[derive(Debug, Clone, Default, Hash, Deserialize, Serialize)]
pub struct LbStatus {
    #[serde(default)]
    pub ingress: Option<Vec<LbIngress>>,
}

#[derive(Debug, Clone, Default, Hash, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LbIngress {
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub ip_mode: Option<String>,
}

#[derive(Debug, Clone, Default, Hash, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default)]
    pub address_type: String,
    #[serde(default)]
    pub endpoints: Option<Vec<SliceEndpoint>>,
    #[serde(default)]
    pub ports: Option<Vec<SlicePort>>,
}

#[derive(Debug, Clone, Default, Hash, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceEndpoint {
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: Option<Conditions>,
    #[serde(default)]
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Hash, Deserialize, Serialize)]
pub struct Conditions {
    #[serde(default)]
    pub ready: Option<bool>,
    #[serde(default)]
    pub serving: Option<bool>,
    #[serde(default)]
    pub terminating: Option<bool>,
}

#[derive(Debug, Clone, Default, Hash, Deserialize, Serialize)]
pub struct SlicePort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub port: Option<i64>,
    #[serde(default)]
    pub protocol: Option<String>,
}

/// Everything read from the input.
#[derive(Debug, Default)]
pub struct Objects {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    /// Objects that failed validation: "Kind namespace/name: reason". They were skipped.
    pub rejected: Vec<String>,
}

/// Read one JSON document: a `List` (or `ServiceList`/`EndpointSliceList`) or a single
/// object. Malformed JSON is an error naming the position; invalid objects are skipped
/// and listed in `rejected`. Several documents may be concatenated (several files).
pub fn parse(bytes: &[u8], into: &mut Objects) -> Result<()> {
    // Fast path: each document read straight into an object (a List keeps its items as
    // slices of the input, each then read into its typed object): no JSON tree, no copies.
    let mut fast = Objects::default();
    let mut ok = true;
    for doc in serde_json::Deserializer::from_slice(bytes).into_iter::<AnyObject>() {
        match doc {
            Ok(o) => add_object(o, &mut fast)?,
            Err(_) => {
                ok = false;
                break;
            }
        }
    }
    if ok {
        // Moved, not copied, when `into` is empty (one input file: the usual case).
        into.rejected.append(&mut fast.rejected);
        if into.services.is_empty() {
            std::mem::swap(&mut into.services, &mut fast.services);
        } else {
            into.services.append(&mut fast.services);
        }
        if into.slices.is_empty() {
            std::mem::swap(&mut into.slices, &mut fast.slices);
        } else {
            into.slices.append(&mut fast.slices);
        }
        return Ok(());
    }
    // A document that is not an object of ours, or one with a field of the wrong type (or
    // malformed JSON): take each document as a slice first, so a bad one is reported and
    // skipped and a malformed input is an error naming the position.
    for doc in serde_json::Deserializer::from_slice(bytes).into_iter::<&RawValue>() {
        let doc = doc.map_err(Error::Json)?;
        add_raw(doc, into)?;
    }
    Ok(())
}

/// Any object, read in one pass: the fields of a Service and of an EndpointSlice do not
/// overlap, so its kind decides afterwards which it was; a List keeps its items raw.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnyObject<'a> {
    #[serde(default, borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    items: Option<Vec<&'a RawValue>>,
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: ServiceSpec,
    #[serde(default)]
    status: ServiceStatus,
    #[serde(default)]
    address_type: String,
    #[serde(default)]
    endpoints: Option<Vec<SliceEndpoint>>,
    #[serde(default)]
    ports: Option<Vec<SlicePort>>,
}

/// Enough of an object that failed to read to name it in the message.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(default, borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    metadata: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct PeekMeta<'a> {
    #[serde(default, borrow)]
    name: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    namespace: Option<std::borrow::Cow<'a, str>>,
}

fn id_of(m: &Meta) -> String {
    format!("{}/{}", m.namespace.escape_debug(), m.name.escape_debug())
}

fn add_raw(raw: &RawValue, into: &mut Objects) -> Result<()> {
    let o = match serde_json::from_str::<AnyObject>(raw.get()) {
        Ok(o) => o,
        Err(e) => {
            // A Service or EndpointSlice with a field of the wrong type is reported and
            // skipped; anything else (a bare number, another kind) holds nothing of ours.
            let Ok(p) = serde_json::from_str::<Peek>(raw.get()) else {
                return Ok(());
            };
            let kind = p.kind.as_deref().unwrap_or("");
            if kind == "Service" || kind == "EndpointSlice" {
                let m: PeekMeta = p
                    .metadata
                    .and_then(|m| serde_json::from_str(m.get()).ok())
                    .unwrap_or_default();
                let get = |v: Option<&std::borrow::Cow<str>>| {
                    v.map(|s| s.escape_debug().to_string()).unwrap_or_default()
                };
                into.rejected.push(format!(
                    "{kind} {}/{}: {e}",
                    get(m.namespace.as_ref()),
                    get(m.name.as_ref())
                ));
            }
            return Ok(());
        }
    };
    add_object(o, into)
}

/// File one object that was read whole (a List's items one by one).
fn add_object(o: AnyObject, into: &mut Objects) -> Result<()> {
    match o.kind.as_deref().unwrap_or("") {
        "List" | "ServiceList" | "EndpointSliceList" => {
            for item in o.items.iter().flatten() {
                add_raw(item, into)?;
            }
        }
        "Service" => {
            let s = Service {
                metadata: o.metadata,
                spec: o.spec,
                status: o.status,
            };
            match validate_service(&s) {
                Ok(()) => into.services.push(s),
                Err(why) => into
                    .rejected
                    .push(format!("Service {}: {why}", id_of(&s.metadata))),
            }
        }
        "EndpointSlice" => {
            let s = EndpointSlice {
                metadata: o.metadata,
                address_type: o.address_type,
                endpoints: o.endpoints,
                ports: o.ports,
            };
            match validate_slice(&s) {
                Ok(()) => into.slices.push(s),
                Err(why) => into
                    .rejected
                    .push(format!("EndpointSlice {}: {why}", id_of(&s.metadata))),
            }
        }
        // Other kinds a `kubectl get` may return (Endpoints, Pods, ...) are not ours.
        _ => {}
    }
    Ok(())
}

/// RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: dot-separated labels, at most 253.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// IANA service name (port names): `[a-z0-9-]`, at most 15, a letter, no `--`, no
/// leading or trailing `-`.
pub fn is_iana_svc_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.contains("--")
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A label value as the API server accepts it: empty, or at most 63 of
/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`.
pub fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// A label key: an optional DNS-1123 subdomain prefix and `/`, then a name that is a
/// non-empty label value.
pub fn is_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && is_label_value(name)
}

fn check_meta(m: &Meta, service_name: bool) -> Result<(), String> {
    for (k, v) in &m.labels {
        if !is_label_key(k) {
            return Err(format!(
                "metadata.labels key {:?} is invalid",
                k.escape_debug().to_string()
            ));
        }
        if !is_label_value(v) {
            return Err(format!(
                "metadata.labels[{:?}] value {:?} is invalid",
                k.escape_debug().to_string(),
                v.escape_debug().to_string()
            ));
        }
    }
    if !is_dns1123_label(&m.namespace) {
        return Err(format!(
            "metadata.namespace {:?} is not a DNS-1123 label",
            m.namespace.escape_debug().to_string()
        ));
    }
    let ok = if service_name {
        // Service names are DNS-1035 labels: they also start with a letter.
        is_dns1123_label(&m.name) && m.name.starts_with(|c: char| c.is_ascii_lowercase())
    } else {
        is_dns1123_subdomain(&m.name)
    };
    if !ok {
        return Err(format!(
            "metadata.name {:?} is invalid",
            m.name.escape_debug().to_string()
        ));
    }
    Ok(())
}

pub fn parse_protocol(p: Option<&str>) -> Result<&'static str, String> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok("tcp"),
        "UDP" => Ok("udp"),
        "SCTP" => Ok("sctp"),
        other => Err(format!(
            "protocol {:?} is not TCP, UDP or SCTP",
            other.escape_debug().to_string()
        )),
    }
}

fn check_port(field: &str, v: i64, allow_zero: bool) -> Result<(), String> {
    if (allow_zero && v == 0) || (1..=65535).contains(&v) {
        Ok(())
    } else {
        Err(format!("{field} {v} is out of range"))
    }
}

fn validate_service(s: &Service) -> Result<(), String> {
    check_meta(&s.metadata, true)?;
    let ports = s.spec.ports.as_deref().unwrap_or(&[]);
    for (i, p) in ports.iter().enumerate() {
        let name = p.name.as_deref().unwrap_or("");
        if !name.is_empty() && !is_iana_svc_name(name) {
            return Err(format!(
                "spec.ports[{i}].name {:?} is not a valid port name",
                name.escape_debug().to_string()
            ));
        }
        if name.is_empty() && ports.len() > 1 {
            return Err(format!(
                "spec.ports[{i}].name is required when there are several ports"
            ));
        }
        check_port(&format!("spec.ports[{i}].port"), p.port, false)?;
        check_port(
            &format!("spec.ports[{i}].nodePort"),
            p.node_port.unwrap_or(0),
            true,
        )?;
        parse_protocol(p.protocol.as_deref()).map_err(|e| format!("spec.ports[{i}].{e}"))?;
    }
    check_port(
        "spec.healthCheckNodePort",
        s.spec.health_check_node_port.unwrap_or(0),
        true,
    )?;
    if let Some(t) = s
        .spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
    {
        if !(1..=86400).contains(&t) {
            return Err(format!(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds {t} is out of range"
            ));
        }
    }
    for (field, v) in [
        (
            "spec.externalTrafficPolicy",
            &s.spec.external_traffic_policy,
        ),
        (
            "spec.internalTrafficPolicy",
            &s.spec.internal_traffic_policy,
        ),
    ] {
        if let Some(v) = v {
            if v != "Cluster" && v != "Local" {
                return Err(format!(
                    "{field} {:?} is not Cluster or Local",
                    v.escape_debug().to_string()
                ));
            }
        }
    }
    Ok(())
}

/// Addresses the API server refuses in an EndpointSlice (so kube-proxy never sees them):
/// unspecified, loopback, link-local and link-local multicast.
fn forbidden_endpoint(ip: IpAddr) -> Option<&'static str> {
    let v6_link_local_mc = |a: &std::net::Ipv6Addr| a.segments()[0] & 0xff0f == 0xff02;
    match ip {
        IpAddr::V4(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V4(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V4(a) if a.is_link_local() => Some("link-local"),
        IpAddr::V4(a) if a.octets()[..3] == [224, 0, 0] => Some("link-local multicast"),
        IpAddr::V6(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V6(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 => Some("link-local"),
        IpAddr::V6(a) if v6_link_local_mc(&a) => Some("link-local multicast"),
        _ => None,
    }
}

fn validate_slice(s: &EndpointSlice) -> Result<(), String> {
    check_meta(&s.metadata, false)?;
    for (i, e) in s.endpoints.as_deref().unwrap_or(&[]).iter().enumerate() {
        for (j, a) in e.addresses.iter().enumerate() {
            if let Some(why) = parse_ip_sloppy(a).and_then(forbidden_endpoint) {
                return Err(format!(
                    "endpoints[{i}].addresses[{j}] {a} is a {why} address (the API server \
                     refuses it)"
                ));
            }
        }
    }
    for (i, p) in s.ports.as_deref().unwrap_or(&[]).iter().enumerate() {
        if let Some(name) = p.name.as_deref() {
            if !name.is_empty() && !is_iana_svc_name(name) {
                return Err(format!(
                    "ports[{i}].name {:?} is not a valid port name",
                    name.escape_debug().to_string()
                ));
            }
        }
        if let Some(port) = p.port {
            check_port(&format!("ports[{i}].port"), port, false)?;
        }
        parse_protocol(p.protocol.as_deref()).map_err(|e| format!("ports[{i}].{e}"))?;
    }
    Ok(())
}

/// Parse an IP the way kube-proxy does (`netutils.ParseIPSloppy`): IPv4 octets with leading
/// zeros are decimal (`172.30.0.041` is 172.30.0.41). The result is canonical.
pub fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut o = [0u8; 4];
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        o[i] = p.parse::<u8>().ok()?;
    }
    Some(IpAddr::V4(Ipv4Addr::from(o)))
}

/// Parse a CIDR sloppily and return its network (`203.0.113.000/025` is 203.0.113.0/25).
pub fn parse_cidr_sloppy(s: &str) -> Option<IpNet> {
    let (ip, len) = s.trim().split_once('/')?;
    let ip = parse_ip_sloppy(ip)?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: u8 = len.parse().ok()?;
    IpNet::new(ip, len).ok().map(|n| n.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_endpoint_addresses_the_api_server_refuses_are_skipped() {
        let slice = |labels: &str, addr: &str| {
            format!(
                r#"{{"kind":"EndpointSlice","metadata":{{"name":"s","namespace":"ns","labels":{labels}}},
                   "addressType":"IPv4","endpoints":[{{"addresses":["{addr}"]}}],"ports":[]}}"#
            )
        };
        let good = r#"{"kubernetes.io/service-name":"web","app.kubernetes.io/part-of":"x_y.z"}"#;
        for (labels, addr, ok) in [
            (good, "10.1.2.3", true),
            (
                r#"{"kubernetes.io/service-name":"web\nc KUBE-SVC-X"}"#,
                "10.1.2.3",
                false,
            ),
            (
                r#"{"kubernetes.io/service-name":"-web"}"#,
                "10.1.2.3",
                false,
            ),
            (r#"{"bad key/x/y":"v"}"#, "10.1.2.3", false),
            (r#"{"a/":"v"}"#, "10.1.2.3", false),
            (good, "0.0.0.0", false),
            (good, "127.0.0.1", false),
            (good, "169.254.1.1", false),
            (good, "224.0.0.251", false),
            (good, "224.0.1.1", true),
        ] {
            let mut o = Objects::default();
            parse(slice(labels, addr).as_bytes(), &mut o).unwrap();
            assert_eq!(o.slices.len() == 1, ok, "{labels} {addr}: {:?}", o.rejected);
            assert_eq!(o.rejected.len() == 1, !ok);
            assert!(
                o.rejected.iter().all(|r| !r.contains('\n')),
                "{:?}",
                o.rejected
            );
        }
        for (ip, bad) in [
            ("::", true),
            ("::1", true),
            ("fe80::1", true),
            ("ff02::1", true),
            ("fd00::1", false),
        ] {
            assert_eq!(
                forbidden_endpoint(ip.parse().unwrap()).is_some(),
                bad,
                "{ip}"
            );
        }
    }

    #[test]
    fn sloppy_ips() {
        let p = |s: &str| parse_ip_sloppy(s).map(|i| i.to_string());
        assert_eq!(p("172.30.0.041").as_deref(), Some("172.30.0.41"));
        assert_eq!(p("1.2.3.004").as_deref(), Some("1.2.3.4"));
        assert_eq!(p("192.168.099.022").as_deref(), Some("192.168.99.22"));
        assert_eq!(p("fd00::0001").as_deref(), Some("fd00::1"));
        assert_eq!(p("1.2.3.256"), None);
        assert_eq!(p("1.2.3"), None);
        assert_eq!(p("not-an-ip"), None);
        let c = |s: &str| parse_cidr_sloppy(s).map(|n| n.to_string());
        assert_eq!(c(" 203.0.113.0/25").as_deref(), Some("203.0.113.0/25"));
        assert_eq!(c("203.0.113.000/025").as_deref(), Some("203.0.113.0/25"));
        assert_eq!(c("10.1.2.3/8").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(c("10.0.0.0/33"), None);
        assert_eq!(c("10.0.0.0"), None);
    }

    #[test]
    fn names() {
        assert!(is_dns1123_label("ns-1") && !is_dns1123_label("Ns") && !is_dns1123_label("a_b"));
        assert!(!is_dns1123_label("-a") && !is_dns1123_label(&"a".repeat(64)));
        assert!(is_iana_svc_name("http") && is_iana_svc_name("p80") && !is_iana_svc_name("80"));
        assert!(!is_iana_svc_name("a--b") && !is_iana_svc_name("sixteen-chars-xx"));
        assert!(!is_iana_svc_name("a b") && !is_iana_svc_name("a\"b"));
    }

    #[test]
    fn parse_lists_and_reject_bad_objects() {
        let json = r#"{"kind":"List","items":[
          {"kind":"Service","metadata":{"name":"ok","namespace":"ns"},"spec":{"clusterIP":"10.0.0.1","ports":[{"port":80}]}},
          {"kind":"Service","metadata":{"name":"bad\" -j ACCEPT","namespace":"ns"},"spec":{"ports":[{"port":80}]}},
          {"kind":"Service","metadata":{"name":"badport","namespace":"ns"},"spec":{"ports":[{"name":"x y","port":80}]}},
          {"kind":"Service","metadata":{"name":"range","namespace":"ns"},"spec":{"ports":[{"port":70000}]}},
          {"kind":"EndpointSlice","metadata":{"name":"ok-1","namespace":"ns","labels":{"kubernetes.io/service-name":"ok"}},"addressType":"IPv4","endpoints":[],"ports":[]},
          {"kind":"Pod","metadata":{"name":"p","namespace":"ns"}}
        ]}
        {"kind":"Service","metadata":{"name":"second","namespace":"ns"},"spec":{"ports":[{"port":81,"protocol":"UDP"}]}}"#;
        let mut o = Objects::default();
        parse(json.as_bytes(), &mut o).unwrap();
        let names: Vec<_> = o
            .services
            .iter()
            .map(|s| s.metadata.name.as_str())
            .collect();
        assert_eq!(names, ["ok", "second"]);
        assert_eq!(o.slices.len(), 1);
        assert_eq!(o.rejected.len(), 3, "{:?}", o.rejected);
        assert!(o.rejected[0].contains("metadata.name"));
        assert!(o.rejected[1].contains("spec.ports[0].name"));
        assert!(o.rejected[2].contains("70000"));
        // Malformed JSON names the position.
        let e = parse(
            b"{\"kind\": \"List\", \"items\": [",
            &mut Objects::default(),
        )
        .unwrap_err();
        assert!(crate::error_chain(&e).contains("line 1 column"), "{e}");
    }
}
