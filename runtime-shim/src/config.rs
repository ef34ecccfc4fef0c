//! Network configuration: CNI `bridge` + `host-local` field names, so an existing bridge
//! conflist works unchanged. [`NetConf`] is the JSON as written; [`Network`] is the same
//! after every check, with defaults filled in. Nothing touches the system until a
//! `Network` exists.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub const DEFAULT_BRIDGE: &str = "cni0";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
/// Each entry is a rule per pod subnet: keep the table small.
pub const MAX_NON_MASQUERADE: usize = 64;

/// The network config as written (one plugin entry of a conflist, or a standalone conf).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub plugin_type: String,
    #[serde(default)]
    pub bridge: Option<String>,
    #[serde(default)]
    pub is_gateway: bool,
    #[serde(default)]
    pub is_default_gateway: bool,
    #[serde(default)]
    pub ip_masq: bool,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub hairpin_mode: bool,
    /// Destinations never masqueraded (ip-masq-agent's name): the cluster's pod range,
    /// so every pod sees every other pod's own address.
    #[serde(default, rename = "nonMasqueradeCIDRs")]
    pub non_masquerade_cidrs: Option<Vec<String>>,
    /// netavark's `isolate`: `true`, `"true"` or `"strict"` (the same here), `false`.
    #[serde(default)]
    pub isolate: Option<serde_json::Value>,
    #[serde(default)]
    pub ipam: Option<IpamConf>,
    /// libcni's per-attachment capabilities (`ips`, `mac`; others are ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_config: Option<RuntimeConfig>,
    /// The conventional `args` (`args.cni.ips`, `args.cni.mac`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<ArgsConf>,
    /// Passed through to the result unchanged, as the bridge plugin does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<serde_json::Value>,
    /// CNI chaining: the previous plugin's result (used by the CNI front end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_result: Option<serde_json::Value>,
    /// Every other key, kept so nothing a runtime sends is rejected.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `runtimeConfig`: what the runtime asks for this attachment.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RuntimeConfig {
    #[serde(default)]
    pub ips: Option<Vec<String>>,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `args`: only `args.cni` is read.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ArgsConf {
    #[serde(default)]
    pub cni: Option<RuntimeConfig>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamConf {
    #[serde(default, rename = "type")]
    pub ipam_type: String,
    #[serde(default)]
    pub ranges: Option<Vec<Vec<RangeConf>>>,
    /// Deprecated single-range form (host-local still accepts it).
    #[serde(default)]
    pub subnet: Option<String>,
    #[serde(default)]
    pub range_start: Option<String>,
    #[serde(default)]
    pub range_end: Option<String>,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub routes: Option<Vec<RouteConf>>,
    #[serde(default)]
    pub data_dir: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeConf {
    #[serde(default)]
    pub subnet: String,
    #[serde(default)]
    pub range_start: Option<String>,
    #[serde(default)]
    pub range_end: Option<String>,
    #[serde(default)]
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RouteConf {
    #[serde(default)]
    pub dst: String,
    #[serde(default)]
    pub gw: Option<String>,
}

/// One allocatable range: addresses `start..=end` of `subnet`, never `gateway`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

impl Range {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.subnet.contains(&ip) && ip >= self.start && ip <= self.end
    }
}

/// A set of ranges of one family; a pod gets one address from each set.
pub type RangeSet = Vec<Range>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    /// None: via the network's gateway of the same family.
    pub gw: Option<IpAddr>,
}

/// A validated network.
#[derive(Debug, Clone)]
pub struct Network {
    pub name: String,
    pub cni_version: String,
    pub bridge: String,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub ip_masq: bool,
    pub mtu: Option<u32>,
    pub hairpin: bool,
    pub range_sets: Vec<RangeSet>,
    pub routes: Vec<Route>,
    pub data_dir: PathBuf,
    pub dns: Option<serde_json::Value>,
    pub non_masquerade: Vec<IpNet>,
    pub isolate: bool,
}

impl NetConf {
    /// Parse JSON; type errors name the field's path.
    pub fn from_slice(bytes: &[u8]) -> Result<NetConf> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_data() && path != "." {
                Error::config(path, inner.to_string())
            } else {
                Error::Decode(inner)
            }
        })
    }

    /// Check everything and fill in defaults.
    pub fn validate(&self) -> Result<Network> {
        validate_network_name(&self.name)?;
        let bridge = self.bridge.clone().unwrap_or_else(|| DEFAULT_BRIDGE.into());
        crate::validate_ifname("bridge name", &bridge)
            .map_err(|e| Error::config("bridge", e.to_string()))?;
        if let Some(mtu) = self.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(Error::config("mtu", format!("{mtu} is outside 68..65535")));
            }
        }
        let ipam = self.ipam.as_ref().ok_or_else(|| {
            Error::config(
                "ipam",
                "missing (use {\"type\": \"host-local\", \"ranges\": ...})",
            )
        })?;
        if ipam.ipam_type != "host-local" {
            return Err(Error::config(
                "ipam.type",
                format!(
                    "unknown IPAM type {:?}: runtime-shim has host-local built in",
                    ipam.ipam_type
                ),
            ));
        }
        let range_sets = validate_ranges(ipam)?;
        if let Some(mtu) = self.mtu {
            let v6 = range_sets
                .iter()
                .flatten()
                .any(|r| r.subnet.addr().is_ipv6());
            if v6 && mtu < 1280 {
                return Err(Error::config("mtu", "IPv6 needs an MTU of at least 1280"));
            }
        }
        let mut routes = Vec::new();
        for (i, r) in ipam.routes.iter().flatten().enumerate() {
            let field = format!("ipam.routes[{i}]");
            let dst: IpNet = r.dst.parse().map_err(|_| {
                Error::config(format!("{field}.dst"), format!("invalid CIDR {:?}", r.dst))
            })?;
            let gw = match &r.gw {
                None => None,
                Some(g) => {
                    let ip: IpAddr = g.parse().map_err(|_| {
                        Error::config(format!("{field}.gw"), format!("invalid IP address {g:?}"))
                    })?;
                    if ip.is_ipv4() != dst.addr().is_ipv4() {
                        return Err(Error::config(
                            format!("{field}.gw"),
                            "gateway and destination are of different IP families",
                        ));
                    }
                    Some(ip)
                }
            };
            if gw.is_none()
                && !range_sets
                    .iter()
                    .flatten()
                    .any(|x| x.subnet.addr().is_ipv4() == dst.addr().is_ipv4())
            {
                return Err(Error::config(
                    format!("{field}.dst"),
                    "no range of this IP family to take a gateway from",
                ));
            }
            routes.push(Route {
                dst: dst.trunc(),
                gw,
            });
        }
        let data_dir = PathBuf::from(
            ipam.data_dir
                .clone()
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
        );
        if !data_dir.is_absolute()
            || data_dir
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(Error::config(
                "ipam.dataDir",
                format!(
                    "{} must be an absolute path without '..'",
                    data_dir.display()
                ),
            ));
        }
        let mut non_masquerade = Vec::new();
        for (i, c) in self.non_masquerade_cidrs.iter().flatten().enumerate() {
            let field = format!("nonMasqueradeCIDRs[{i}]");
            let n: IpNet = c
                .parse()
                .map_err(|_| Error::config(&field, format!("invalid CIDR {c:?}")))?;
            if n.addr() != n.network() {
                return Err(Error::config(
                    field,
                    format!("{n} has host bits set (the network is {})", n.trunc()),
                ));
            }
            if non_masquerade.len() == MAX_NON_MASQUERADE {
                return Err(Error::config(
                    "nonMasqueradeCIDRs",
                    format!("more than {MAX_NON_MASQUERADE} entries"),
                ));
            }
            non_masquerade.push(n);
        }
        let isolate = match &self.isolate {
            None | Some(serde_json::Value::Bool(false)) => false,
            Some(serde_json::Value::Bool(true)) => true,
            Some(serde_json::Value::String(s)) if s == "true" || s == "strict" => true,
            Some(serde_json::Value::String(s)) if s == "false" || s.is_empty() => false,
            Some(v) => {
                return Err(Error::config(
                    "isolate",
                    format!("{v} is not one of true, false, \"true\", \"false\", \"strict\""),
                ));
            }
        };
        Ok(Network {
            name: self.name.clone(),
            cni_version: self.cni_version.clone(),
            bridge,
            is_gateway: self.is_gateway || self.is_default_gateway,
            is_default_gateway: self.is_default_gateway,
            ip_masq: self.ip_masq,
            mtu: self.mtu,
            hairpin: self.hairpin_mode,
            range_sets,
            routes,
            data_dir,
            dns: self.dns.clone(),
            non_masquerade,
            isolate,
        })
    }
}

/// What a runtime asked for one attachment: static addresses (each with the field it
/// came from, for errors) and the pod interface's MAC address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requested {
    pub ips: Vec<(String, IpAddr)>,
    pub mac: Option<[u8; 6]>,
}

/// A requested address: an IP, or (the `ips` convention) an IP with its prefix.
pub fn parse_requested_ip(field: &str, s: &str) -> Result<IpAddr> {
    let ip = s.split_once('/').map_or(s, |(ip, _)| ip);
    if let Some((_, p)) = s.split_once('/') {
        if s.parse::<IpNet>().is_err() {
            return Err(Error::config(
                field,
                format!("{s:?} is not an IP address (prefix {p:?})"),
            ));
        }
    }
    ip.trim()
        .parse()
        .map_err(|_| Error::config(field, format!("{s:?} is not an IP address")))
}

/// A requested MAC address: six hex octets separated by ':' or '-', unicast, not zero.
pub fn parse_mac(field: &str, s: &str) -> Result<[u8; 6]> {
    let bad = |why: &str| Error::config(field, format!("{s:?} {why}"));
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
        return Err(bad(
            "is not a MAC address (six hex octets, e.g. 02:42:ac:11:00:02)",
        ));
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(&parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| bad("has a non-hex octet"))?;
    }
    if mac[0] & 1 == 1 {
        return Err(bad("is a multicast address"));
    }
    if mac == [0; 6] {
        return Err(bad("is all zeros"));
    }
    Ok(mac)
}

impl Network {
    /// Which range set each requested address belongs to: every address must lie inside
    /// a range (between rangeStart and rangeEnd, not the gateway), at most one per set.
    pub fn place_requested(&self, ips: &[(String, IpAddr)]) -> Result<Vec<Option<IpAddr>>> {
        let mut per_set: Vec<Option<IpAddr>> = vec![None; self.range_sets.len()];
        for (field, ip) in ips {
            let Some(set) = self
                .range_sets
                .iter()
                .position(|s| s.iter().any(|r| r.contains(*ip)))
            else {
                let ranges: Vec<String> = self
                    .range_sets
                    .iter()
                    .flatten()
                    .map(|r| format!("{}-{}", r.start, r.end))
                    .collect();
                return Err(Error::config(
                    field.as_str(),
                    format!(
                        "{ip} is in no range of network {:?} ({})",
                        self.name,
                        ranges.join(", ")
                    ),
                ));
            };
            if self.range_sets[set].iter().any(|r| r.gateway == *ip) {
                return Err(Error::config(
                    field.as_str(),
                    format!("{ip} is the gateway of network {:?}", self.name),
                ));
            }
            match per_set[set] {
                Some(other) if other != *ip => {
                    return Err(Error::config(
                        field.as_str(),
                        format!(
                            "{ip} and {other} are in the same range set; a pod gets one address per set"
                        ),
                    ));
                }
                _ => per_set[set] = Some(*ip),
            }
        }
        Ok(per_set)
    }
}

/// Parse and validate in one go.
pub fn load(bytes: &[u8]) -> Result<(NetConf, Network)> {
    let conf = NetConf::from_slice(bytes)?;
    let net = conf.validate()?;
    Ok((conf, net))
}

/// Kubernetes object names (Node names): an RFC 1123 DNS subdomain.
pub fn validate_dns_label(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name (lowercase letters, digits, '-' and '.', at most 253)"
        ))
    }
}

/// CNI network names: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`; also a directory name under dataDir.
fn validate_network_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::config("name", "missing"));
    }
    if name.len() > 128 {
        return Err(Error::config("name", "longer than 128 bytes"));
    }
    let ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok {
        return Err(Error::config(
            "name",
            format!(
                "{name:?}: only letters, digits, '_', '.', '-', starting with a letter or digit"
            ),
        ));
    }
    Ok(())
}

fn parse_ip(field: &str, s: &str) -> Result<IpAddr> {
    s.parse()
        .map_err(|_| Error::config(field, format!("invalid IP address {s:?}")))
}

fn offset(ip: IpAddr, delta: i128) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(a) => {
            let v = u32::from(a) as i128 + delta;
            u32::try_from(v).ok().map(|v| IpAddr::V4(v.into()))
        }
        IpAddr::V6(a) => {
            let v = u128::from(a).checked_add_signed(delta)?;
            Some(IpAddr::V6(v.into()))
        }
    }
}

/// Next address after `ip` (None past the end of the family).
pub fn next_ip(ip: IpAddr) -> Option<IpAddr> {
    offset(ip, 1)
}

/// Why a subnet can never hold pods: the whole address space (a pod route or a masquerade
/// rule for it would cover everything), loopback or multicast.
fn unusable_subnet(subnet: &IpNet) -> Option<&'static str> {
    let inside = |cidr: &str| {
        cidr.parse::<IpNet>()
            .is_ok_and(|c| c.contains(&subnet.network()) || subnet.contains(&c.network()))
    };
    if subnet.prefix_len() == 0 {
        Some("is the whole address space")
    } else if inside("127.0.0.0/8") || inside("::1/128") {
        Some("overlaps the loopback range")
    } else if inside("224.0.0.0/4") || inside("ff00::/8") {
        Some("overlaps the multicast range")
    } else if inside("0.0.0.0/8") || inside("::/128") {
        Some("overlaps the unspecified (\"this network\") range")
    } else {
        None
    }
}

fn validate_range(field: &str, rc: &RangeConf) -> Result<Range> {
    let subnet: IpNet = rc.subnet.parse().map_err(|_| {
        Error::config(
            format!("{field}.subnet"),
            format!("invalid CIDR {:?}", rc.subnet),
        )
    })?;
    if subnet.addr() != subnet.network() {
        return Err(Error::config(
            format!("{field}.subnet"),
            format!(
                "{subnet} has host bits set (the network address is {})",
                subnet.trunc()
            ),
        ));
    }
    if let Some(why) = unusable_subnet(&subnet) {
        return Err(Error::config(
            format!("{field}.subnet"),
            format!("{subnet} {why}"),
        ));
    }
    let host_bits = subnet.max_prefix_len() - subnet.prefix_len();
    if host_bits < 2 {
        return Err(Error::config(
            format!("{field}.subnet"),
            format!("{subnet} is too small to allocate from"),
        ));
    }
    let net_ip = subnet.network();
    // host-local's defaults: the gateway and range start are network+1; the range ends
    // before the IPv4 broadcast address, or at the last IPv6 address.
    let first = next_ip(net_ip).unwrap_or(net_ip);
    let last = if subnet.addr().is_ipv4() {
        offset(subnet.broadcast(), -1).unwrap_or(net_ip)
    } else {
        subnet.broadcast()
    };
    let get = |name: &str, v: &Option<String>, default: IpAddr| -> Result<IpAddr> {
        let f = format!("{field}.{name}");
        let ip = match v {
            None => default,
            Some(s) => parse_ip(&f, s)?,
        };
        if !subnet.contains(&ip) {
            return Err(Error::config(f, format!("{ip} is outside subnet {subnet}")));
        }
        Ok(ip)
    };
    let gateway = get("gateway", &rc.gateway, first)?;
    if gateway == net_ip || (subnet.addr().is_ipv4() && gateway == subnet.broadcast()) {
        return Err(Error::config(
            format!("{field}.gateway"),
            format!("{gateway} is the network or broadcast address of {subnet}"),
        ));
    }
    let start = get("rangeStart", &rc.range_start, first)?;
    let end = get("rangeEnd", &rc.range_end, last)?;
    if start > end {
        return Err(Error::config(
            format!("{field}.rangeStart"),
            format!("{start} is after rangeEnd {end}"),
        ));
    }
    if subnet.addr().is_ipv4() && (start == net_ip || end == subnet.broadcast()) {
        return Err(Error::config(
            format!("{field}.rangeStart"),
            "the range must not include the network or broadcast address",
        ));
    }
    Ok(Range {
        subnet,
        start,
        end,
        gateway,
    })
}

fn validate_ranges(ipam: &IpamConf) -> Result<Vec<RangeSet>> {
    let sets: Vec<Vec<RangeConf>> = match (&ipam.ranges, &ipam.subnet) {
        (Some(r), None) => r.clone(),
        (None, Some(s)) => vec![vec![RangeConf {
            subnet: s.clone(),
            range_start: ipam.range_start.clone(),
            range_end: ipam.range_end.clone(),
            gateway: ipam.gateway.clone(),
        }]],
        (Some(_), Some(_)) => {
            return Err(Error::config(
                "ipam",
                "give either ranges or subnet, not both",
            ));
        }
        (None, None) => return Err(Error::config("ipam.ranges", "missing")),
    };
    if sets.is_empty() {
        return Err(Error::config("ipam.ranges", "empty"));
    }
    let mut out: Vec<RangeSet> = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        if set.is_empty() {
            return Err(Error::config(
                format!("ipam.ranges[{i}]"),
                "empty range set",
            ));
        }
        let mut rs = Vec::new();
        for (j, rc) in set.iter().enumerate() {
            let field = if ipam.ranges.is_some() {
                format!("ipam.ranges[{i}][{j}]")
            } else {
                "ipam".to_string()
            };
            let r = validate_range(&field, rc)?;
            if let Some(first) = rs.first() {
                let first: &Range = first;
                if first.subnet.addr().is_ipv4() != r.subnet.addr().is_ipv4() {
                    return Err(Error::config(field, "a range set must hold one IP family"));
                }
            }
            for other in out.iter().flatten().chain(rs.iter()) {
                if other.contains(r.start) || other.contains(r.end) || r.contains(other.start) {
                    return Err(Error::config(
                        field,
                        format!("overlaps range {}-{}", other.start, other.end),
                    ));
                }
            }
            rs.push(r);
        }
        out.push(rs);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(json: &str) -> Result<Network> {
        NetConf::from_slice(json.as_bytes())?.validate()
    }

    const GOOD: &str = r#"{"cniVersion":"1.0.0","name":"pods","type":"runtime-shim",
        "bridge":"cni0","isDefaultGateway":true,"ipMasq":true,"mtu":1400,"hairpinMode":true,
        "ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00:10::/64"}]],
                "routes":[{"dst":"192.168.0.0/16"}],"dataDir":"/tmp/x"},
        "unknownField":{"kept":true}}"#;

    #[test]
    fn good_config_with_defaults() {
        let n = conf(GOOD).unwrap();
        assert_eq!(n.bridge, "cni0");
        assert!(n.is_gateway && n.is_default_gateway && n.ip_masq && n.hairpin);
        assert_eq!(n.mtu, Some(1400));
        let v4 = &n.range_sets[0][0];
        assert_eq!(v4.gateway.to_string(), "10.244.1.1");
        assert_eq!(v4.start.to_string(), "10.244.1.1");
        assert_eq!(v4.end.to_string(), "10.244.1.254");
        let v6 = &n.range_sets[1][0];
        assert_eq!(v6.gateway.to_string(), "fd00:10::1");
        assert_eq!(v6.end.to_string(), "fd00:10::ffff:ffff:ffff:ffff");
        assert_eq!(n.routes[0].dst.to_string(), "192.168.0.0/16");
        assert_eq!(n.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn deprecated_single_range_and_defaults() {
        let n = conf(r#"{"name":"n","ipam":{"type":"host-local","subnet":"10.1.0.0/16","rangeStart":"10.1.2.0","rangeEnd":"10.1.2.10","gateway":"10.1.0.1"}}"#).unwrap();
        assert_eq!(n.bridge, DEFAULT_BRIDGE);
        assert_eq!(n.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(n.range_sets[0][0].start.to_string(), "10.1.2.0");
        assert!(!n.is_gateway);
    }

    fn err(json: &str) -> String {
        conf(json).unwrap_err().to_string()
    }

    #[test]
    fn bad_configs_name_the_field() {
        let ipam =
            |r: &str| format!(r#"{{"name":"n","ipam":{{"type":"host-local","ranges":[[{r}]]}}}}"#);
        let cases = [
            (ipam(r#"{"subnet":"10.0.0.0/33"}"#), "ipam.ranges[0][0].subnet: invalid CIDR"),
            (ipam(r#"{"subnet":"nonsense"}"#), "ipam.ranges[0][0].subnet: invalid CIDR"),
            (ipam(r#"{"subnet":"10.0.0.1/24"}"#), "host bits set"),
            (ipam(r#"{"subnet":"10.0.0.0/31"}"#), "too small"),
            (ipam(r#"{"subnet":"127.0.0.0/24"}"#), "ipam.ranges[0][0].subnet: 127.0.0.0/24 overlaps the loopback range"),
            (ipam(r#"{"subnet":"127.5.0.0/16"}"#), "loopback"),
            (ipam(r#"{"subnet":"224.1.0.0/24"}"#), "ipam.ranges[0][0].subnet: 224.1.0.0/24 overlaps the multicast range"),
            (ipam(r#"{"subnet":"0.0.0.0/0"}"#), "ipam.ranges[0][0].subnet: 0.0.0.0/0 is the whole address space"),
            (ipam(r#"{"subnet":"::/0"}"#), "whole address space"),
            (ipam(r#"{"subnet":"ff02::/64"}"#), "multicast"),
            (ipam(r#"{"subnet":"0.0.0.0/24"}"#), "unspecified"),
            (ipam(r#"{"subnet":"10.0.0.0/24","gateway":"10.0.0.0"}"#), "ipam.ranges[0][0].gateway: 10.0.0.0 is the network or broadcast address"),
            (ipam(r#"{"subnet":"10.0.0.0/24","gateway":"10.0.0.255"}"#), "ipam.ranges[0][0].gateway: 10.0.0.255"),
            (ipam(r#"{"subnet":"fd00::/64","gateway":"fd00::"}"#), "network or broadcast"),
            (ipam(r#"{"subnet":"10.0.0.0/24","gateway":"10.0.1.1"}"#), "ipam.ranges[0][0].gateway: 10.0.1.1 is outside subnet"),
            (ipam(r#"{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.9","rangeEnd":"10.0.0.5"}"#), "is after rangeEnd"),
            (ipam(r#"{"subnet":"10.0.0.0/24","rangeEnd":"10.0.0.255"}"#), "broadcast"),
            (ipam(r#"{"subnet":"10.0.0.0/24"},{"subnet":"10.0.0.0/25"}"#), "overlaps"),
            (ipam(r#"{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}"#), "one IP family"),
            (r#"{"name":"n","bridge":"this-name-is-too-long","ipam":{"type":"host-local","subnet":"10.0.0.0/24"}}"#.into(), "bridge: invalid bridge name"),
            (r#"{"name":"n","ipam":{"type":"dhcp","subnet":"10.0.0.0/24"}}"#.into(), "ipam.type: unknown IPAM type \"dhcp\""),
            (r#"{"name":"n"}"#.into(), "ipam: missing"),
            (r#"{"ipam":{"type":"host-local","subnet":"10.0.0.0/24"}}"#.into(), "name: missing"),
            (r#"{"name":"../x","ipam":{"type":"host-local","subnet":"10.0.0.0/24"}}"#.into(), "name: \"../x\""),
            (r#"{"name":"n","mtu":20,"ipam":{"type":"host-local","subnet":"10.0.0.0/24"}}"#.into(), "mtu: 20"),
            (r#"{"name":"n","mtu":"big","ipam":{"type":"host-local","subnet":"10.0.0.0/24"}}"#.into(), "invalid network config: mtu: invalid type"),
            (r#"{"name":"n","ipam":{"type":"host-local","subnet":"10.0.0.0/24","dataDir":"rel/dir"}}"#.into(), "ipam.dataDir"),
            (r#"{"name":"n","ipam":{"type":"host-local","subnet":"10.0.0.0/24","dataDir":"/var/../etc"}}"#.into(), "ipam.dataDir"),
            (r#"{"name":"n","ipam":{"type":"host-local","subnet":"10.0.0.0/24","routes":[{"dst":"x"}]}}"#.into(), "ipam.routes[0].dst: invalid CIDR"),
            (r#"{"name":"n","ipam":{"type":"host-local","subnet":"10.0.0.0/24","routes":[{"dst":"0.0.0.0/0","gw":"fd00::1"}]}}"#.into(), "ipam.routes[0].gw"),
            (r#"{"name":"n","ipam":{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24"}]],"routes":[{"dst":"::/0"}]}}"#.into(), "no range of this IP family"),
        ];
        for (json, want) in cases {
            let e = err(&json);
            assert!(e.contains(want), "{json}\n  => {e}\n  want {want}");
        }
    }

    #[test]
    fn malformed_json_names_the_position() {
        let e = conf("{\"name\": ").unwrap_err();
        assert!(matches!(e, Error::Decode(_)), "{e}");
        assert!(crate::chain(&e).contains("line 1"), "{e}");
        assert!(matches!(
            conf("[]").unwrap_err(),
            Error::Decode(_) | Error::Config { .. }
        ));
    }
}
