//! The VXLAN overlay of `runtime-shim routes --backend vxlan`: flannel's vxlan backend,
//! wire-compatible with it (VNI 1, UDP 8472, device `flannel.1`, its Node annotations), for
//! nodes that share no L2 segment.
//!
//! Each node has one VXLAN device holding its VTEP address: the network address of its pod
//! CIDR, as a /32. For every other node it gets three kernel objects:
//! - a route to that node's pod CIDR via its VTEP address, on-link on the device;
//! - a permanent neighbour entry: that VTEP address is that node's VTEP MAC;
//! - a forwarding-database entry: frames for that MAC go, VXLAN-encapsulated, to that
//!   node's public address (its InternalIP).
//!
//! A node's VTEP MAC comes from its `flannel.alpha.coreos.com/backend-data` annotation when
//! there is one, else it is derived from the node's name (sha256, locally administered), so
//! every node computes the same MAC for every other node with no annotation at all.
//!
//! `apply` reconciles: what the device holds beyond the plan is removed, what is missing
//! or different is set, and nothing else is written, so a second run changes nothing. The
//! device is podwire's only if it carries podwire's alias; routes are touched only inside
//! the cluster range.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::link::{Netlink, PODWIRE_ROUTE_PROTO, VxlanSpec, mac_string};
use crate::routes::{NodeInfo, NodeRoute, check_safe};
use crate::{Error, Result};

pub const DEFAULT_DEVICE: &str = "flannel.1";
pub const DEFAULT_VNI: u32 = 1;
/// The IANA port is 4789; flannel (and so this) uses the Linux default, 8472.
pub const DEFAULT_PORT: u16 = 8472;
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers.
pub const OVERHEAD: u32 = 50;
/// The alias that makes a VXLAN device podwire's.
pub const ALIAS: &str = "podwire vxlan overlay";

pub const ANNOTATION_BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
pub const ANNOTATION_BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
pub const ANNOTATION_PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";

/// One node's end of the overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Vtep {
    pub node: String,
    #[serde(rename = "podCIDR")]
    pub pod_cidr: IpNet,
    /// The VTEP address: the pod CIDR's network address.
    pub address: Ipv4Addr,
    #[serde(serialize_with = "ser_mac")]
    pub mac: [u8; 6],
    /// Where its VXLAN packets go: the public-ip annotation, else its InternalIP.
    pub public_ip: Ipv4Addr,
}

fn ser_mac<S: serde::Serializer>(m: &[u8; 6], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&mac_string(m))
}

/// Everything one node's overlay holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub device: String,
    pub vni: u32,
    pub port: u16,
    pub me: Vtep,
    pub peers: Vec<Vtep>,
}

/// A node's VTEP MAC when it publishes none: sha256("podwire-vtep", name), unicast and
/// locally administered (first octet with bit 1 set, bit 0 clear).
pub fn derived_mac(node: &str) -> [u8; 6] {
    let d = Sha256::digest(format!("podwire-vtep\0{node}").as_bytes());
    [0x02 | (d[0] & 0xfc), d[1], d[2], d[3], d[4], d[5]]
}

fn bad(node: &str, what: &str, reason: impl Into<String>) -> Error {
    Error::Config {
        field: format!("node {node}: {what}"),
        reason: reason.into(),
    }
}

/// A node's VTEP: its IPv4 pod CIDR, MAC and public address, from its annotations where it
/// has them (checked: a bad annotation is an error, never guessed around).
pub fn vtep_of(n: &NodeInfo, vni: u32) -> Result<Vtep> {
    let v4: Vec<IpNet> = n
        .pod_cidrs
        .iter()
        .filter(|c| c.addr().is_ipv4())
        .copied()
        .collect();
    let pod_cidr = match v4.as_slice() {
        [one] => *one,
        [] => {
            return Err(bad(
                &n.name,
                "spec.podCIDRs",
                "no IPv4 pod CIDR (the vxlan backend carries IPv4 pod traffic; pass \
                 --cluster-cidr to carve one)",
            ));
        }
        _ => return Err(bad(&n.name, "spec.podCIDRs", "more than one IPv4 pod CIDR")),
    };
    if pod_cidr.prefix_len() > 30 {
        return Err(bad(
            &n.name,
            "spec.podCIDRs",
            format!("{pod_cidr} is too small for a VTEP address and pods"),
        ));
    }
    let IpAddr::V4(address) = pod_cidr.network() else {
        return Err(bad(&n.name, "spec.podCIDRs", "not IPv4"));
    };
    let mut mac = derived_mac(&n.name);
    if let Some(data) = n.annotations.get(ANNOTATION_BACKEND_DATA) {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct BackendData {
            #[serde(rename = "VNI", default)]
            vni: Option<u32>,
            #[serde(rename = "VtepMAC")]
            vtep_mac: String,
        }
        let what = format!("metadata.annotations[{ANNOTATION_BACKEND_DATA}]");
        let d: BackendData = serde_json::from_str(data).map_err(|e| {
            bad(
                &n.name,
                &what,
                format!("not {{\"VNI\":…,\"VtepMAC\":…}}: {e}"),
            )
        })?;
        if d.vni.is_some_and(|v| v != vni) {
            return Err(bad(
                &n.name,
                &what,
                format!("VNI {} is not this overlay's ({vni})", d.vni.unwrap_or(0)),
            ));
        }
        mac = crate::config::parse_mac(&format!("node {}: {what}.VtepMAC", n.name), &d.vtep_mac)?;
    }
    let public_ip = match n.annotations.get(ANNOTATION_PUBLIC_IP) {
        Some(s) => s.parse::<Ipv4Addr>().map_err(|_| {
            bad(
                &n.name,
                &format!("metadata.annotations[{ANNOTATION_PUBLIC_IP}]"),
                format!("{s:?} is not an IPv4 address"),
            )
        })?,
        None => n
            .internal_ips
            .iter()
            .find_map(|ip| match ip {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            })
            .ok_or_else(|| bad(&n.name, "status.addresses", "no IPv4 InternalIP"))?,
    };
    if public_ip.is_unspecified() || public_ip.is_loopback() || public_ip.is_multicast() {
        return Err(bad(
            &n.name,
            "public address",
            format!("{public_ip} cannot carry VXLAN traffic"),
        ));
    }
    Ok(Vtep {
        node: n.name.clone(),
        pod_cidr,
        address,
        mac,
        public_ip,
    })
}

/// The overlay of node `me`. Pod CIDRs must not overlap (checked by `routes_for` too).
pub fn plan(nodes: &[NodeInfo], me: &str, device: &str, vni: u32, port: u16) -> Result<Plan> {
    crate::validate_ifname("vxlan device name", device)?;
    if vni == 0 || vni >= 1 << 24 {
        return Err(Error::Invalid {
            what: "--vni",
            value: vni.to_string(),
            reason: "a VNI is 1 to 16777215".into(),
        });
    }
    if port == 0 {
        return Err(Error::Invalid {
            what: "--vxlan-port",
            value: "0".into(),
            reason: "not a UDP port".into(),
        });
    }
    let mine = nodes
        .iter()
        .find(|n| n.name == me)
        .ok_or_else(|| bad(me, "metadata.name", "is not in the nodes list"))?;
    let me = vtep_of(mine, vni)?;
    let mut peers = Vec::new();
    for n in nodes.iter().filter(|n| n.name != me.node) {
        let v = vtep_of(n, vni)?;
        for other in peers.iter().chain(std::iter::once(&me)) {
            let o: &Vtep = other;
            if o.mac == v.mac {
                return Err(bad(
                    &v.node,
                    "VTEP MAC",
                    format!("{} is also node {}'s", mac_string(&v.mac), o.node),
                ));
            }
        }
        peers.push(v);
    }
    Ok(Plan {
        device: device.to_string(),
        vni,
        port,
        me,
        peers,
    })
}

/// The annotations this node publishes for flannel-compatible peers.
pub fn annotations(p: &Plan) -> BTreeMap<String, String> {
    BTreeMap::from([
        (ANNOTATION_BACKEND_TYPE.to_string(), "vxlan".to_string()),
        (
            ANNOTATION_BACKEND_DATA.to_string(),
            serde_json::json!({"VNI": p.vni, "VtepMAC": mac_string(&p.me.mac)}).to_string(),
        ),
        (ANNOTATION_PUBLIC_IP.to_string(), p.me.public_ip.to_string()),
    ])
}

/// The routes of the plan, in host-gw's shape, for the shared safety checks.
pub fn routes(p: &Plan) -> Vec<NodeRoute> {
    p.peers
        .iter()
        .map(|v| NodeRoute {
            dst: v.pod_cidr,
            via: IpAddr::V4(v.address),
            node: v.node.clone(),
        })
        .collect()
}

/// Make this node's namespace hold exactly the plan's overlay. Returns what it changed
/// (empty when everything was in place). Checks everything it can before any change.
pub fn apply(nl: &mut Netlink, p: &Plan, cluster: IpNet) -> Result<Vec<String>> {
    let addrs = nl.all_addresses()?;
    let node_addrs: Vec<IpNet> = addrs.iter().map(|(_, a)| *a).collect();
    let existing = nl.routes()?;
    // Routes to peers: inside the cluster range, never the node's own networks, never
    // replacing a route podwire did not make (the same rules as host-gw). Our own VTEP
    // address must be in the cluster range too.
    check_safe(&routes(p), cluster, &node_addrs, &existing)?;
    if !cluster.contains(&IpAddr::V4(p.me.address)) {
        return Err(bad(
            &p.me.node,
            "spec.podCIDRs",
            format!("{} is outside the cluster range {cluster}", p.me.pod_cidr),
        ));
    }
    let Some((underlay, _)) = addrs
        .iter()
        .find(|(_, a)| a.addr() == IpAddr::V4(p.me.public_ip))
    else {
        return Err(bad(
            &p.me.node,
            "public address",
            format!(
                "{} is on no link of this namespace: VXLAN packets could not leave from it",
                p.me.public_ip
            ),
        ));
    };
    let underlay = *underlay;
    let links = nl.links()?;
    let under_mtu = links
        .iter()
        .find(|l| l.index == underlay)
        .and_then(|l| l.mtu)
        .unwrap_or(1500);
    let mtu = under_mtu.saturating_sub(OVERHEAD).max(68);
    let mut changed = Vec::new();

    // The device: ours by its alias; re-created when its identity differs.
    let spec = VxlanSpec {
        name: p.device.clone(),
        vni: p.vni,
        port: p.port,
        local: p.me.public_ip,
        underlay,
        mtu,
        mac: p.me.mac,
    };
    let dev = match nl.vxlan(&p.device)? {
        Some((l, params)) => {
            if l.alias.as_deref() != Some(ALIAS) {
                return Err(Error::NotOurs {
                    kind: "link",
                    name: format!(
                        "{} ({} device without podwire's alias {ALIAS:?})",
                        l.name,
                        l.kind.as_deref().unwrap_or("plain")
                    ),
                });
            }
            let same = l.kind.as_deref() == Some("vxlan")
                && params.vni == Some(p.vni)
                && params.port == Some(p.port)
                && params.local == Some(p.me.public_ip)
                && params.learning == Some(false)
                && l.mac == Some(p.me.mac);
            if same {
                if l.mtu != Some(mtu) {
                    nl.set_mtu(l.index, mtu)?;
                    changed.push(format!("mtu {mtu} on {}", p.device));
                }
                Some(l)
            } else {
                nl.delete_link_index(l.index)?;
                changed.push(format!(
                    "removed {} (its VNI, port, address or MAC changed)",
                    p.device
                ));
                None
            }
        }
        None => None,
    };
    let dev = match dev {
        Some(l) => l,
        None => {
            nl.create_vxlan(&spec)?;
            let l = nl.link_by_name(&p.device)?.ok_or_else(|| {
                crate::link::nl_err(
                    crate::link::NlOp::FindNewLink,
                    &p.device,
                    std::io::Error::from_raw_os_error(nix::libc::ENODEV),
                )
            })?;
            // No IPv6 link-local address: its DAD and MLD multicast has nowhere to go.
            let marked = nl
                .set_link(l.index, false, Some(ALIAS))
                .and_then(|()| nl.disable_ipv6_addrgen(l.index));
            if let Err(e) = marked {
                let _ = nl.delete_link_index(l.index);
                return Err(e);
            }
            changed.push(format!(
                "created {} (vxlan id {} dstport {} local {} dev index {underlay} mtu {mtu} nolearning)",
                p.device, p.vni, p.port, p.me.public_ip
            ));
            l
        }
    };
    let vtep = IpNet::new(IpAddr::V4(p.me.address), 32)
        .map_err(|e| bad(&p.me.node, "VTEP", e.to_string()))?;
    let on_dev: Vec<IpNet> = nl.addresses(dev.index)?;
    for a in on_dev
        .iter()
        .filter(|a| **a != vtep && cluster.contains(&a.addr()))
    {
        nl.del_address(dev.index, *a)?;
        changed.push(format!("removed address {a} from {}", p.device));
    }
    if !on_dev.contains(&vtep) {
        nl.add_address(dev.index, vtep)?;
        changed.push(format!("address {vtep} on {}", p.device));
    }
    if !dev.up {
        nl.set_link(dev.index, true, None)?;
        changed.push(format!("{} up", p.device));
    }

    // Neighbours and FDB entries on the device: it is ours, so everything on it is too.
    let want_neigh: BTreeMap<IpAddr, [u8; 6]> = p
        .peers
        .iter()
        .map(|v| (IpAddr::V4(v.address), v.mac))
        .collect();
    let want_fdb: BTreeMap<[u8; 6], IpAddr> = p
        .peers
        .iter()
        .map(|v| (v.mac, IpAddr::V4(v.public_ip)))
        .collect();
    for fdb in [false, true] {
        let have: Vec<_> = nl
            .neighbours(fdb)?
            .into_iter()
            .filter(|e| e.ifindex == dev.index && e.permanent)
            .collect();
        for e in &have {
            let (Some(ip), Some(mac)) = (e.ip, e.mac) else {
                continue;
            };
            let wanted = if fdb {
                want_fdb.get(&mac) == Some(&ip)
            } else {
                want_neigh.get(&ip) == Some(&mac)
            };
            if !wanted {
                nl.del_neighbour(fdb, dev.index, ip, Some(mac))?;
                changed.push(format!(
                    "removed {} {ip} {}",
                    if fdb { "fdb" } else { "neighbour" },
                    mac_string(&mac)
                ));
            }
        }
        let present =
            |ip: IpAddr, mac: [u8; 6]| have.iter().any(|e| e.ip == Some(ip) && e.mac == Some(mac));
        for v in &p.peers {
            let ip = IpAddr::V4(if fdb { v.public_ip } else { v.address });
            if !present(ip, v.mac) {
                nl.set_neighbour(fdb, dev.index, ip, v.mac)?;
                changed.push(format!(
                    "{} {ip} {} ({})",
                    if fdb { "fdb" } else { "neighbour" },
                    mac_string(&v.mac),
                    v.node
                ));
            }
        }
    }

    // Routes: each peer's pod CIDR via its VTEP, on-link on the device. podwire's routes
    // inside the cluster range that the plan does not hold (nodes that left, host-gw's
    // from before) are removed.
    let dev_index = dev.index;
    for e in existing.iter().filter(|e| {
        e.protocol == PODWIRE_ROUTE_PROTO
            && cluster.contains(&e.dst.network())
            && e.dst.prefix_len() >= cluster.prefix_len()
    }) {
        let keep = p.peers.iter().any(|v| {
            v.pod_cidr == e.dst && e.gw == Some(IpAddr::V4(v.address)) && e.oif == Some(dev_index)
        });
        let replaced = p.peers.iter().any(|v| v.pod_cidr == e.dst);
        if !keep && !replaced {
            nl.delete_podwire_route(e.dst)?;
            changed.push(format!("removed route {}", e.dst));
        }
    }
    for v in &p.peers {
        let ok = existing.iter().any(|e| {
            e.dst == v.pod_cidr
                && e.protocol == PODWIRE_ROUTE_PROTO
                && e.gw == Some(IpAddr::V4(v.address))
                && e.oif == Some(dev_index)
        });
        if !ok {
            nl.replace_route_onlink(v.pod_cidr, IpAddr::V4(v.address), dev_index)?;
            changed.push(format!(
                "route {} via {} dev {} onlink ({})",
                v.pod_cidr, v.address, p.device, v.node
            ));
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::parse_nodes;

    const NODES: &str = r#"[
      {"metadata":{"name":"node-1"},"spec":{"podCIDR":"10.244.1.0/24"},
       "status":{"addresses":[{"type":"InternalIP","address":"10.0.1.1"}]}},
      {"metadata":{"name":"node-2","annotations":{
          "flannel.alpha.coreos.com/backend-data":"{\"VNI\":1,\"VtepMAC\":\"a6:1e:9c:00:00:02\"}",
          "flannel.alpha.coreos.com/public-ip":"10.0.2.9"}},
       "spec":{"podCIDR":"10.244.2.0/24"},
       "status":{"addresses":[{"type":"InternalIP","address":"10.0.2.1"}]}}]"#;

    #[test]
    fn vteps_from_annotations_or_derived() {
        let nodes = parse_nodes(NODES.as_bytes()).unwrap();
        let p = plan(&nodes, "node-1", DEFAULT_DEVICE, 1, DEFAULT_PORT).unwrap();
        assert_eq!(p.me.address.to_string(), "10.244.1.0");
        assert_eq!(p.me.mac, derived_mac("node-1"));
        assert_eq!(p.me.mac[0] & 0x03, 0x02, "unicast, locally administered");
        assert_eq!(p.me.public_ip.to_string(), "10.0.1.1");
        let peer = &p.peers[0];
        assert_eq!(mac_string(&peer.mac), "a6:1e:9c:00:00:02");
        assert_eq!(peer.public_ip.to_string(), "10.0.2.9", "public-ip wins");
        assert_eq!(peer.address.to_string(), "10.244.2.0");
        // What node-1 publishes is what node-2 would read back.
        let a = annotations(&p);
        let data: serde_json::Value = serde_json::from_str(&a[ANNOTATION_BACKEND_DATA]).unwrap();
        assert_eq!(data["VNI"], 1);
        assert_eq!(data["VtepMAC"], mac_string(&derived_mac("node-1")));
        assert_eq!(a[ANNOTATION_PUBLIC_IP], "10.0.1.1");
        // Derived MACs are stable and differ by node.
        assert_eq!(derived_mac("node-1"), derived_mac("node-1"));
        assert_ne!(derived_mac("node-1"), derived_mac("node-2"));
        let r = routes(&p);
        assert_eq!(r[0].dst.to_string(), "10.244.2.0/24");
        assert_eq!(r[0].via.to_string(), "10.244.2.0");
    }

    #[test]
    fn bad_annotations_and_parameters_are_clear_errors() {
        let with = |ann: &str| {
            let j = NODES.replace(r#""{\"VNI\":1,\"VtepMAC\":\"a6:1e:9c:00:00:02\"}""#, ann);
            let nodes = parse_nodes(j.as_bytes()).unwrap();
            plan(&nodes, "node-1", DEFAULT_DEVICE, 1, DEFAULT_PORT)
                .unwrap_err()
                .to_string()
        };
        let e = with(r#""not json""#);
        assert!(
            e.contains("node node-2: metadata.annotations[flannel.alpha.coreos.com/backend-data]"),
            "{e}"
        );
        let e = with(r#""{\"VNI\":2,\"VtepMAC\":\"a6:1e:9c:00:00:02\"}""#);
        assert!(e.contains("VNI 2 is not this overlay's (1)"), "{e}");
        let e = with(r#""{\"VNI\":1,\"VtepMAC\":\"01:00:5e:00:00:01\"}""#);
        assert!(e.contains("VtepMAC") && e.contains("multicast"), "{e}");
        let dup = format!(
            r#""{{\"VNI\":1,\"VtepMAC\":\"{}\"}}""#,
            mac_string(&derived_mac("node-1"))
        );
        assert!(with(&dup).contains("is also node node-1's"));
        let nodes = parse_nodes(NODES.as_bytes()).unwrap();
        for (dev, vni, port, want) in [
            ("flannel.1", 0, 8472, "VNI"),
            ("flannel.1", 1 << 24, 8472, "VNI"),
            ("flannel.1", 1, 0, "UDP port"),
            ("a-much-too-long-name", 1, 8472, "vxlan device name"),
        ] {
            let e = plan(&nodes, "node-1", dev, vni, port)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{dev} {vni} {port}: {e}");
        }
        assert!(plan(&nodes, "node-9", DEFAULT_DEVICE, 1, DEFAULT_PORT).is_err());
        let v6 = parse_nodes(
            br#"[{"metadata":{"name":"a"},"spec":{"podCIDR":"fd00:1::/64"},"status":{"addresses":[{"type":"InternalIP","address":"10.0.0.1"}]}}]"#,
        )
        .unwrap();
        let e = plan(&v6, "a", DEFAULT_DEVICE, 1, DEFAULT_PORT)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no IPv4 pod CIDR"), "{e}");
    }
}
