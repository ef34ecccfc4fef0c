//! Routes between nodes' pod subnets (`runtime-shim routes`): what kubenet or flannel's
//! host-gw backend does. From a list of Kubernetes Node objects (`kubectl get nodes -o
//! json`), carve pod CIDRs out of the cluster range for nodes that have none (as the node
//! IPAM controller does), then give each node a route to every other node's pod CIDR via
//! that node's InternalIP. Pure planning here; `--apply` installs the routes by netlink.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::link::{Netlink, PODWIRE_ROUTE_PROTO, RouteEntry};
use crate::{Error, Result};

/// One node, as far as routing cares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub name: String,
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<IpNet>,
    #[serde(rename = "internalIPs")]
    pub internal_ips: Vec<IpAddr>,
    /// The Node's annotations (flannel's VTEP data is read from them).
    #[serde(skip)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// A route to install on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeRoute {
    pub dst: IpNet,
    pub via: IpAddr,
    /// The node that owns `dst`.
    pub node: String,
}

#[derive(Deserialize)]
struct List {
    #[serde(default)]
    items: Vec<K8sNode>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct K8sNode {
    metadata: Meta,
    spec: Spec,
    status: Status,
}
#[derive(Deserialize, Default)]
#[serde(default)]
struct Meta {
    name: String,
    annotations: std::collections::BTreeMap<String, String>,
}
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Spec {
    #[serde(rename = "podCIDR")]
    pod_cidr: String,
    #[serde(rename = "podCIDRs")]
    pod_cidrs: Vec<String>,
}
#[derive(Deserialize, Default)]
#[serde(default)]
struct Status {
    addresses: Vec<Address>,
}
#[derive(Deserialize, Default)]
#[serde(default)]
struct Address {
    #[serde(rename = "type")]
    kind: String,
    address: String,
}

pub(crate) fn bad(field: String, reason: impl Into<String>) -> Error {
    Error::Config {
        field,
        reason: reason.into(),
    }
}

/// Parse a NodeList (`{"items": [...]}`) or a bare array of Node objects.
pub fn parse_nodes(bytes: &[u8]) -> Result<Vec<NodeInfo>> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(Error::Decode)?;
    let items: Vec<K8sNode> = if v.is_array() {
        serde_json::from_value(v)
    } else {
        serde_json::from_value::<List>(v).map(|l| l.items)
    }
    .map_err(|e| bad("items".into(), format!("not a list of Node objects: {e}")))?;
    let mut out: Vec<NodeInfo> = Vec::new();
    for (i, n) in items.into_iter().enumerate() {
        let field = |f: &str| format!("items[{i}].{f}");
        crate::config::validate_dns_label(&n.metadata.name)
            .map_err(|r| bad(field("metadata.name"), r))?;
        if out.iter().any(|o| o.name == n.metadata.name) {
            return Err(bad(
                field("metadata.name"),
                format!("duplicate node {:?}", n.metadata.name),
            ));
        }
        let mut cidrs = n.spec.pod_cidrs.clone();
        if cidrs.is_empty() && !n.spec.pod_cidr.is_empty() {
            cidrs.push(n.spec.pod_cidr.clone());
        }
        let pod_cidrs = cidrs
            .iter()
            .map(|c| {
                let net: IpNet = c
                    .parse()
                    .map_err(|_| bad(field("spec.podCIDRs"), format!("invalid CIDR {c:?}")))?;
                if net != net.trunc() {
                    return Err(bad(
                        field("spec.podCIDRs"),
                        format!("{c} has host bits set"),
                    ));
                }
                Ok(net)
            })
            .collect::<Result<Vec<_>>>()?;
        let internal_ips = n
            .status
            .addresses
            .iter()
            .filter(|a| a.kind == "InternalIP")
            .map(|a| {
                a.address.parse::<IpAddr>().map_err(|_| {
                    bad(
                        field("status.addresses"),
                        format!("invalid InternalIP {:?}", a.address),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(NodeInfo {
            name: n.metadata.name,
            pod_cidrs,
            internal_ips,
            annotations: n.metadata.annotations,
        });
    }
    Ok(out)
}

/// Give every node without a pod CIDR of `cluster`'s family the lowest free `/mask`
/// subnet of `cluster`, in node-name order, never the first one (the cluster range's own
/// address, as flannel skips it).
pub fn carve(nodes: &mut [NodeInfo], cluster: IpNet, mask: u8) -> Result<()> {
    if mask < cluster.prefix_len() || mask > cluster.max_prefix_len() {
        return Err(bad(
            "nodeCIDRMask".into(),
            format!("/{mask} does not fit inside {cluster}"),
        ));
    }
    let cluster = cluster.trunc();
    let same = |n: &IpNet| n.addr().is_ipv4() == cluster.addr().is_ipv4();
    let taken: Vec<IpNet> = nodes
        .iter()
        .flat_map(|n| n.pod_cidrs.iter().copied())
        .collect();
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by(|a, b| nodes[*a].name.cmp(&nodes[*b].name));
    let subnets = cluster
        .subnets(mask)
        .map_err(|e| bad("nodeCIDRMask".into(), e.to_string()))?;
    let mut free = subnets.skip(1).filter(|s| {
        !taken
            .iter()
            .any(|t| t.contains(&s.network()) || s.contains(&t.network()))
    });
    for i in order {
        if nodes[i].pod_cidrs.iter().any(same) {
            continue;
        }
        let s = free.next().ok_or_else(|| {
            bad(
                "clusterCIDR".into(),
                format!(
                    "{cluster} has no free /{mask} left for node {}",
                    nodes[i].name
                ),
            )
        })?;
        nodes[i].pod_cidrs.push(s);
    }
    Ok(())
}

/// The routes node `me` needs: every other node's pod CIDRs via its InternalIP of the
/// same family. Overlapping pod CIDRs are refused: traffic could not be routed.
pub fn routes_for(nodes: &[NodeInfo], me: &str) -> Result<Vec<NodeRoute>> {
    if !nodes.iter().any(|n| n.name == me) {
        return Err(bad(
            "node".into(),
            format!("{me:?} is not in the nodes list"),
        ));
    }
    let all: Vec<(&str, IpNet)> = nodes
        .iter()
        .flat_map(|n| n.pod_cidrs.iter().map(move |c| (n.name.as_str(), *c)))
        .collect();
    for (i, (a, x)) in all.iter().enumerate() {
        for (b, y) in &all[i + 1..] {
            if x.contains(&y.network()) || y.contains(&x.network()) {
                return Err(bad(
                    "spec.podCIDRs".into(),
                    format!("{x} of node {a} overlaps {y} of node {b}"),
                ));
            }
        }
    }
    let mut out = Vec::new();
    for n in nodes.iter().filter(|n| n.name != me) {
        for c in &n.pod_cidrs {
            let via = n
                .internal_ips
                .iter()
                .find(|ip| ip.is_ipv4() == c.addr().is_ipv4())
                .ok_or_else(|| {
                    bad(
                        "status.addresses".into(),
                        format!("node {} has no InternalIP of {c}'s family", n.name),
                    )
                })?;
            out.push(NodeRoute {
                dst: *c,
                via: *via,
                node: n.name.clone(),
            });
        }
    }
    Ok(out)
}

/// Refuse, before anything is applied, every route that could hurt the node: the default
/// route, anything outside the cluster range, anything covering one of the node's own
/// addresses (its LAN's connected route included), and a route to a destination the node
/// already routes by someone else's route (not podwire's `proto`).
pub fn check_safe(
    routes: &[NodeRoute],
    cluster: IpNet,
    node_addrs: &[IpNet],
    existing: &[RouteEntry],
) -> Result<()> {
    if cluster.prefix_len() == 0 {
        return Err(bad(
            "clusterCIDR".into(),
            format!("{cluster} is the whole address space"),
        ));
    }
    for r in routes {
        let field = || format!("node {}: podCIDR", r.node);
        let inside =
            cluster.contains(&r.dst.network()) && r.dst.prefix_len() >= cluster.prefix_len();
        if r.dst.prefix_len() == 0 || !inside {
            return Err(bad(
                field(),
                format!(
                    "{} is outside the cluster range {cluster}: not routed",
                    r.dst
                ),
            ));
        }
        if let Some(a) = node_addrs.iter().find(|a| r.dst.contains(&a.addr())) {
            return Err(bad(
                field(),
                format!("{} covers this node's own address {a}: not routed", r.dst),
            ));
        }
        if let Some(e) = existing
            .iter()
            .find(|e| e.dst == r.dst && e.protocol != PODWIRE_ROUTE_PROTO)
        {
            return Err(bad(
                field(),
                format!(
                    "the node already has a route to {} (proto {}) that podwire did not \
                     install: not replaced",
                    r.dst, e.protocol
                ),
            ));
        }
    }
    Ok(())
}

/// host-gw only works when every peer is one hop away: its InternalIP must lie in a
/// subnet of one of this node's addresses. Otherwise the route's gateway is unreachable
/// (or, worse, reached through some router that drops pod traffic).
pub fn check_connected(routes: &[NodeRoute], node_addrs: &[IpNet]) -> Result<()> {
    for r in routes {
        let on_link = node_addrs
            .iter()
            .any(|a| a.prefix_len() < a.max_prefix_len() && a.trunc().contains(&r.via));
        if !on_link {
            let mine: Vec<String> = node_addrs
                .iter()
                .filter(|a| !a.addr().is_loopback() && a.addr().is_ipv4() == r.via.is_ipv4())
                .map(|a| a.to_string())
                .collect();
            return Err(bad(
                format!("node {}: InternalIP", r.node),
                format!(
                    "{} is not on a subnet directly connected to this node ({}): host-gw                      needs every node on one L2 segment; use --backend vxlan",
                    r.via,
                    mine.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Install `routes` in the caller's namespace, all or nothing: every route is checked
/// first ([`check_safe`], [`check_connected`]); a failure part-way puts back what was
/// there before. podwire's routes inside the cluster range that `routes` does not hold
/// (nodes that left) are removed afterwards. Returns what changed.
pub fn apply(nl: &mut Netlink, routes: &[NodeRoute], cluster: IpNet) -> Result<Vec<String>> {
    let addrs: Vec<IpNet> = nl.all_addresses()?.into_iter().map(|(_, a)| a).collect();
    let existing = nl.routes()?;
    check_safe(routes, cluster, &addrs, &existing)?;
    check_connected(routes, &addrs)?;
    let mut changed = Vec::new();
    let mut done: Vec<(IpNet, Option<IpAddr>)> = Vec::new();
    for r in routes {
        let ours = existing
            .iter()
            .find(|e| e.dst == r.dst && e.protocol == PODWIRE_ROUTE_PROTO);
        let before = ours.and_then(|e| e.gw);
        if before == Some(r.via) {
            continue;
        }
        if let Err(e) = nl.replace_route_via(r.dst, r.via) {
            for (dst, prev) in done.into_iter().rev() {
                let undo = match prev {
                    Some(gw) => nl.replace_route_via(dst, gw),
                    None => nl.delete_podwire_route(dst).map(|_| ()),
                };
                if let Err(u) = undo {
                    eprintln!("runtime-shim: routes: undo {dst} failed (continuing): {u}");
                }
            }
            return Err(e);
        }
        done.push((r.dst, before));
        changed.push(format!("route {} via {} ({})", r.dst, r.via, r.node));
    }
    for e in existing.iter().filter(|e| {
        e.protocol == PODWIRE_ROUTE_PROTO
            && cluster.contains(&e.dst.network())
            && e.dst.prefix_len() >= cluster.prefix_len()
            && !routes.iter().any(|r| r.dst == e.dst)
    }) {
        if nl.delete_podwire_route(e.dst)? {
            changed.push(format!("removed route {}", e.dst));
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_routes_are_refused_before_anything_is_applied() {
        let cluster: IpNet = "10.244.0.0/16".parse().unwrap();
        let route = |dst: &str| NodeRoute {
            dst: dst.parse().unwrap(),
            via: "192.168.1.2".parse().unwrap(),
            node: "n2".into(),
        };
        let node: Vec<IpNet> = vec!["192.168.1.1/24".parse().unwrap()];
        let existing = vec![
            RouteEntry {
                dst: "192.168.1.0/24".parse().unwrap(),
                gw: None,
                oif: Some(2),
                protocol: 2,
            },
            RouteEntry {
                dst: "10.244.9.0/24".parse().unwrap(),
                gw: None,
                oif: Some(3),
                protocol: 4,
            },
            RouteEntry {
                dst: "10.244.2.0/24".parse().unwrap(),
                gw: "192.168.1.3".parse().ok(),
                oif: Some(2),
                protocol: PODWIRE_ROUTE_PROTO,
            },
        ];
        let ok = |dst: &str| check_safe(&[route(dst)], cluster, &node, &existing);
        ok("10.244.2.0/24").unwrap();
        for (dst, want) in [
            ("0.0.0.0/0", "outside the cluster range"),
            ("192.168.1.0/24", "outside the cluster range"),
            ("10.0.0.0/8", "outside the cluster range"),
            ("10.244.9.0/24", "did not install"),
        ] {
            let e = ok(dst).unwrap_err().to_string();
            assert!(e.contains(want), "{dst}: {e}");
        }
        // The node's own LAN inside the cluster range is still never routed away.
        let wide: IpNet = "192.168.0.0/16".parse().unwrap();
        let e = check_safe(&[route("192.168.1.0/24")], wide, &node, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("covers this node's own address"), "{e}");
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(check_safe(&[], all, &node, &[]).is_err());
    }

    #[test]
    fn host_gw_needs_every_peer_on_a_connected_subnet() {
        let route = |via: &str| NodeRoute {
            dst: "10.244.2.0/24".parse().unwrap(),
            via: via.parse().unwrap(),
            node: "node-2".into(),
        };
        let mine: Vec<IpNet> = vec![
            "127.0.0.1/8".parse().unwrap(),
            "10.0.1.1/24".parse().unwrap(),
            "10.244.1.0/32".parse().unwrap(),
        ];
        check_connected(&[route("10.0.1.7")], &mine).unwrap();
        let e = check_connected(&[route("10.0.2.1")], &mine)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("node node-2: InternalIP")
                && e.contains("10.0.2.1 is not on a subnet directly connected")
                && e.contains("(10.0.1.1/24, 10.244.1.0/32)")
                && e.contains("use --backend vxlan"),
            "{e}"
        );
        // A /32 (a VTEP address) connects nothing.
        assert!(check_connected(&[route("10.244.1.0")], &mine).is_err());
    }

    fn nodes(json: &str) -> Vec<NodeInfo> {
        parse_nodes(json.as_bytes()).unwrap()
    }

    const TWO: &str = r#"{"kind":"NodeList","items":[
        {"metadata":{"name":"node-2"},"status":{"addresses":[{"type":"InternalIP","address":"192.168.77.2"},{"type":"Hostname","address":"node-2"}]}},
        {"metadata":{"name":"node-1"},"status":{"addresses":[{"type":"InternalIP","address":"192.168.77.1"}]}}]}"#;

    #[test]
    fn carves_in_name_order_skipping_the_first_subnet() {
        let mut n = nodes(TWO);
        carve(&mut n, "10.244.0.0/16".parse().unwrap(), 24).unwrap();
        let by = |name: &str| n.iter().find(|x| x.name == name).unwrap().pod_cidrs.clone();
        assert_eq!(
            by("node-1"),
            vec!["10.244.1.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            by("node-2"),
            vec!["10.244.2.0/24".parse::<IpNet>().unwrap()]
        );
        let r = routes_for(&n, "node-1").unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].dst.to_string(), "10.244.2.0/24");
        assert_eq!(r[0].via.to_string(), "192.168.77.2");
        assert_eq!(r[0].node, "node-2");
        // Carving again changes nothing.
        let before = n.clone();
        carve(&mut n, "10.244.0.0/16".parse().unwrap(), 24).unwrap();
        assert_eq!(before, n);
    }

    #[test]
    fn existing_cidrs_are_kept_and_skipped() {
        let mut n = nodes(
            r#"[{"metadata":{"name":"a"},"spec":{"podCIDR":"10.244.1.0/24"},"status":{"addresses":[{"type":"InternalIP","address":"10.0.0.1"}]}},
                {"metadata":{"name":"b"},"status":{"addresses":[{"type":"InternalIP","address":"10.0.0.2"}]}}]"#,
        );
        carve(&mut n, "10.244.0.0/16".parse().unwrap(), 24).unwrap();
        assert_eq!(n[1].pod_cidrs[0].to_string(), "10.244.2.0/24");
    }

    #[test]
    fn exhaustion_and_bad_input() {
        let mut n = nodes(TWO);
        let e = carve(&mut n, "10.244.0.0/24".parse().unwrap(), 25)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no free /25"), "{e}");
        assert!(carve(&mut n, "10.244.0.0/16".parse().unwrap(), 8).is_err());
        for (j, want) in [
            ("{", "cannot parse"),
            (
                r#"{"items":[{"metadata":{"name":"Bad_Name"}}]}"#,
                "items[0].metadata.name",
            ),
            (
                r#"[{"metadata":{"name":"a"},"spec":{"podCIDR":"10.1.0.1/24"}}]"#,
                "host bits",
            ),
            (
                r#"[{"metadata":{"name":"a"},"spec":{"podCIDR":"nope"}}]"#,
                "items[0].spec.podCIDRs",
            ),
            (
                r#"[{"metadata":{"name":"a"},"status":{"addresses":[{"type":"InternalIP","address":"1.2.3"}]}}]"#,
                "InternalIP",
            ),
            (
                r#"[{"metadata":{"name":"a"}},{"metadata":{"name":"a"}}]"#,
                "duplicate",
            ),
        ] {
            let e = parse_nodes(j.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{j}: {e}");
        }
        let n = nodes(
            r#"[{"metadata":{"name":"a"},"spec":{"podCIDR":"10.244.0.0/16"}},
                {"metadata":{"name":"b"},"spec":{"podCIDR":"10.244.1.0/24"}}]"#,
        );
        assert!(
            routes_for(&n, "a")
                .unwrap_err()
                .to_string()
                .contains("overlaps")
        );
        let n = nodes(
            r#"[{"metadata":{"name":"a"}},{"metadata":{"name":"b"},"spec":{"podCIDR":"10.9.0.0/24"}}]"#,
        );
        assert!(
            routes_for(&n, "a")
                .unwrap_err()
                .to_string()
                .contains("no InternalIP")
        );
        assert!(routes_for(&n, "zzz").is_err());
    }
}
