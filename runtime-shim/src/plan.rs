//! Pure planning: from a validated network, a container id and the addresses IPAM handed
//! out, decide every name, address and route setup will create. No I/O; unit-tested.

use std::net::IpAddr;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::config::Network;
use crate::ipam::Allocation;

/// The host end of a pod's veth: "pw" + 12 hex digits of sha256(id, ifname). Stable, so
/// teardown finds it with no saved state; 14 bytes, within IFNAMSIZ.
pub fn host_veth_name(id: &str, ifname: &str) -> String {
    let mut h = Sha256::new();
    h.update(id.as_bytes());
    h.update([0u8]);
    h.update(ifname.as_bytes());
    let d = h.finalize();
    let hex: String = d.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("pw{hex}")
}

/// A fixed, locally administered MAC for a bridge we create: without one, a bridge takes
/// the lowest MAC of its ports, and changes it (flushing neighbours' ARP caches) as pods
/// come and go.
pub fn bridge_mac(bridge: &str) -> [u8; 6] {
    let d = Sha256::digest(format!("podwire-bridge:{bridge}").as_bytes());
    [0x02, d[0], d[1], d[2], d[3], d[4]]
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRoute {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

/// Everything setup will create for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub bridge: String,
    pub bridge_mac: [u8; 6],
    pub host_veth: String,
    pub ifname: String,
    pub mtu: Option<u32>,
    pub hairpin: bool,
    /// Gateway addresses to put on the bridge (isGateway).
    pub bridge_addrs: Vec<IpNet>,
    /// The pod's addresses, with their subnet's prefix.
    pub pod_addrs: Vec<IpNet>,
    /// The gateway of each pod address (same order), for the result.
    pub gateways: Vec<IpAddr>,
    pub pod_routes: Vec<PlannedRoute>,
    /// Subnets to masquerade (ipMasq), one rule each per network.
    pub masq: Vec<IpNet>,
    pub forward_v4: bool,
    pub forward_v6: bool,
}

pub fn plan(net: &Network, id: &str, ifname: &str, allocs: &[Allocation]) -> Plan {
    let mut bridge_addrs = Vec::new();
    let mut pod_addrs = Vec::new();
    let mut gateways = Vec::new();
    let mut masq = Vec::new();
    for a in allocs {
        let prefix = a.range.subnet.prefix_len();
        if let Ok(n) = IpNet::new(a.ip, prefix) {
            pod_addrs.push(n);
        }
        gateways.push(a.range.gateway);
        if net.is_gateway {
            if let Ok(g) = IpNet::new(a.range.gateway, prefix) {
                if !bridge_addrs.contains(&g) {
                    bridge_addrs.push(g);
                }
            }
        }
        if net.ip_masq && !masq.contains(&a.range.subnet) {
            masq.push(a.range.subnet);
        }
    }
    // The gateway of each family: the first allocation of that family.
    let gw_of = |v4: bool| {
        allocs
            .iter()
            .find(|a| a.ip.is_ipv4() == v4)
            .map(|a| a.range.gateway)
    };
    let mut pod_routes: Vec<PlannedRoute> = Vec::new();
    let mut push = |r: PlannedRoute| {
        if !pod_routes.iter().any(|x| x.dst == r.dst) {
            pod_routes.push(r);
        }
    };
    if net.is_default_gateway {
        for v4 in [true, false] {
            if let Some(gw) = gw_of(v4) {
                let dst = if v4 {
                    IpNet::new(IpAddr::from([0u8; 4]), 0)
                } else {
                    IpNet::new(IpAddr::from([0u8; 16]), 0)
                };
                if let Ok(dst) = dst {
                    push(PlannedRoute { dst, gw: Some(gw) });
                }
            }
        }
    }
    for r in &net.routes {
        let v4 = r.dst.addr().is_ipv4();
        if allocs.iter().any(|a| a.ip.is_ipv4() == v4) {
            push(PlannedRoute {
                dst: r.dst,
                gw: r.gw.or_else(|| gw_of(v4)),
            });
        }
    }
    let forward_v4 = net.is_gateway && allocs.iter().any(|a| a.ip.is_ipv4());
    let forward_v6 = net.is_gateway && allocs.iter().any(|a| a.ip.is_ipv6());
    Plan {
        bridge: net.bridge.clone(),
        bridge_mac: bridge_mac(&net.bridge),
        host_veth: host_veth_name(id, ifname),
        ifname: ifname.to_string(),
        mtu: net.mtu,
        hairpin: net.hairpin,
        bridge_addrs,
        pod_addrs,
        gateways,
        pod_routes,
        masq,
        forward_v4,
        forward_v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NetConf;

    fn net(extra: &str) -> Network {
        let j = format!(
            r#"{{"name":"n","bridge":"br9",{extra}"ipam":{{"type":"host-local",
               "ranges":[[{{"subnet":"10.7.0.0/24"}}],[{{"subnet":"fd07::/64"}}]],
               "routes":[{{"dst":"10.96.0.0/12"}},{{"dst":"0.0.0.0/0"}}]}}}}"#
        );
        NetConf::from_slice(j.as_bytes())
            .unwrap()
            .validate()
            .unwrap()
    }

    fn allocs(n: &Network) -> Vec<Allocation> {
        vec![
            Allocation {
                ip: "10.7.0.5".parse().unwrap(),
                range: n.range_sets[0][0].clone(),
                set: 0,
            },
            Allocation {
                ip: "fd07::5".parse().unwrap(),
                range: n.range_sets[1][0].clone(),
                set: 1,
            },
        ]
    }

    #[test]
    fn veth_names_are_stable_short_and_distinct() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("pw") && a[2..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, host_veth_name("abc", "net1"));
        assert_ne!(a, host_veth_name("abd", "eth0"));
        // The separator keeps ("ab","ceth0") and ("abc","eth0") apart.
        assert_ne!(host_veth_name("ab", "ceth0"), a);
        let m = bridge_mac("cni0");
        assert_eq!(m[0], 0x02, "locally administered, unicast");
    }

    #[test]
    fn dual_stack_default_gateway_with_masq() {
        let n = net(r#""isDefaultGateway":true,"ipMasq":true,"hairpinMode":true,"mtu":1400,"#);
        let p = plan(&n, "c1", "eth0", &allocs(&n));
        assert_eq!(p.bridge, "br9");
        assert_eq!(p.mtu, Some(1400));
        assert!(p.hairpin && p.forward_v4 && p.forward_v6);
        let s = |v: &[IpNet]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(s(&p.bridge_addrs), ["10.7.0.1/24", "fd07::1/64"]);
        assert_eq!(s(&p.pod_addrs), ["10.7.0.5/24", "fd07::5/64"]);
        assert_eq!(s(&p.masq), ["10.7.0.0/24", "fd07::/64"]);
        let routes: Vec<String> = p
            .pod_routes
            .iter()
            .map(|r| format!("{} via {}", r.dst, r.gw.unwrap()))
            .collect();
        // Default routes once per family (the config's 0.0.0.0/0 is not added twice).
        assert_eq!(
            routes,
            [
                "0.0.0.0/0 via 10.7.0.1",
                "::/0 via fd07::1",
                "10.96.0.0/12 via 10.7.0.1"
            ]
        );
    }

    #[test]
    fn no_gateway_no_masq() {
        let n = net("");
        let p = plan(&n, "c1", "eth0", &allocs(&n)[..1]);
        assert!(p.bridge_addrs.is_empty() && p.masq.is_empty());
        assert!(!p.forward_v4 && !p.forward_v6);
        // Config routes still apply, via the family's gateway.
        assert_eq!(p.pod_routes.len(), 2);
        assert_eq!(p.pod_routes[0].gw.unwrap().to_string(), "10.7.0.1");
    }
}
