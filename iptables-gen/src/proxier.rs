//! From API objects to kube-proxy's model: service ports and their endpoints (spec §2),
//! and the endpoint selection of `CategorizeEndpoints` (§2.3; topology hints are not
//! implemented: all endpoints are eligible).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{
    EndpointSlice, Objects, Service, parse_cidr_sloppy, parse_ip_sloppy, parse_protocol,
};
use crate::{Config, Family};

/// One port of one Service, as the proxier sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    /// Lowercase: tcp, udp, sctp.
    pub protocol: &'static str,
    pub cluster_ip: IpAddr,
    pub port: u16,
    pub node_port: u16,
    pub external_ips: Vec<IpAddr>,
    pub lb_vips: Vec<IpAddr>,
    pub source_ranges: Vec<IpNet>,
    pub sticky_seconds: Option<u32>,
    pub external_policy_local: bool,
    pub internal_policy_local: bool,
    pub health_check_node_port: u16,
}

impl ServicePort {
    /// `ns/name` plus `:port` only when the port is named.
    pub fn svc_port_name(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }
    pub fn service_key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
    /// Port level: reachable from outside the cluster network.
    pub fn externally_accessible(&self) -> bool {
        self.node_port != 0 || !self.lb_vips.is_empty() || !self.external_ips.is_empty()
    }
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || self.externally_accessible()
    }
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || (self.external_policy_local && self.externally_accessible())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub is_local: bool,
    /// Its `nodeName` names another node: its own traffic never meets this node's rules.
    pub remote: bool,
    /// `ip:port`, `[ip]:port` for IPv6.
    pub addr: String,
}

fn join_host_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn family_of(ip: &IpAddr) -> Family {
    if ip.is_ipv4() { Family::V4 } else { Family::V6 }
}

/// One service (namespace/name) and its EndpointSlices: the unit of partial syncs. A
/// group may have slices and no service (its endpoints still count for large-cluster
/// mode, as in kube-proxy's endpoints map) or a service and no slices.
pub struct Group<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub service: Option<&'a Service>,
    pub slices: Vec<&'a EndpointSlice>,
}

impl Group<'_> {
    /// `namespace/name`, written into `buf` (no allocation per lookup).
    pub fn key<'b>(&self, buf: &'b mut String) -> &'b str {
        buf.clear();
        buf.push_str(self.namespace);
        buf.push('/');
        buf.push_str(self.name);
        buf
    }
}

/// Group the input by service, in input order (so the digest of a group is stable).
pub fn groups(objs: &Objects) -> Vec<Group<'_>> {
    let mut index: foldhash::HashMap<(&str, &str), usize> =
        foldhash::HashMap::with_capacity_and_hasher(objs.services.len(), Default::default());
    let mut out: Vec<Group> = Vec::with_capacity(objs.services.len());
    for s in &objs.services {
        let k = (s.metadata.namespace.as_str(), s.metadata.name.as_str());
        match index.get(&k) {
            // A duplicate object (two files naming it): the last one wins, as in the API.
            Some(&i) => out[i].service = Some(s),
            None => {
                index.insert(k, out.len());
                out.push(Group {
                    namespace: k.0,
                    name: k.1,
                    service: Some(s),
                    slices: Vec::new(),
                });
            }
        }
    }
    for sl in &objs.slices {
        let Some(svc) = sl.metadata.labels.get("kubernetes.io/service-name") else {
            continue;
        };
        if sl.address_type == "FQDN" {
            continue;
        }
        let k = (sl.metadata.namespace.as_str(), svc.as_str());
        match index.get(&k) {
            Some(&i) => out[i].slices.push(sl),
            None => {
                index.insert(k, out.len());
                out.push(Group {
                    namespace: k.0,
                    name: k.1,
                    service: None,
                    slices: vec![sl],
                });
            }
        }
    }
    out
}

/// A group as the proxier sees it: its ports (sorted as kube-proxy's output is) and the
/// endpoints of each.
pub struct GroupModel {
    pub ports: Vec<ServicePort>,
    /// Deduplicated endpoints per (port name, protocol) of the slices.
    pub endpoint_sets: Vec<Vec<Endpoint>>,
    /// `ports[i]` uses `endpoint_sets[port_set[i]]`, if any.
    pub port_set: Vec<Option<usize>>,
    /// Endpoints of every (port name, protocol) of the slices, whether a service port
    /// uses them or not: this group's share of the large-cluster count.
    pub total_endpoints: usize,
    pub warnings: Vec<String>,
}

fn service_ports(cfg: &Config, s: &Service, warnings: &mut Vec<String>) -> Vec<ServicePort> {
    let mut ports = Vec::new();
    let m = &s.metadata;
    let sp = &s.spec;
    let ty = sp.service_type.as_deref().unwrap_or("ClusterIP");
    if ty == "ExternalName" {
        return ports;
    }
    // The cluster IP of our family: from clusterIPs when set, else clusterIP.
    let candidates: Vec<&str> = match &sp.cluster_ips {
        Some(v) if !v.is_empty() => v.iter().map(String::as_str).collect(),
        _ => sp.cluster_ip.iter().map(String::as_str).collect(),
    };
    if candidates.iter().any(|c| c.is_empty() || *c == "None") {
        return ports; // headless
    }
    let cluster_ip = candidates
        .iter()
        .filter_map(|c| parse_ip_sloppy(c))
        .find(|ip| family_of(ip) == cfg.family);
    let Some(cluster_ip) = cluster_ip else {
        return ports;
    };
    let ips = |v: &Option<Vec<String>>, what: &str, warnings: &mut Vec<String>| -> Vec<IpAddr> {
        v.iter()
            .flatten()
            .filter_map(|s| {
                let ip = parse_ip_sloppy(s.trim());
                if ip.is_none() {
                    warnings.push(format!(
                        "Service {}/{}: skipping invalid {what} {:?}",
                        m.namespace,
                        m.name,
                        s.escape_debug().to_string()
                    ));
                }
                ip
            })
            .filter(|ip| family_of(ip) == cfg.family)
            .collect()
    };
    let external_ips = ips(&sp.external_ips, "externalIP", warnings);
    let lb_ingress: Vec<String> = s
        .status
        .load_balancer
        .as_ref()
        .and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|i| i.ip.clone())
        .filter(|ip| !ip.is_empty())
        .collect();
    let lb_vips = ips(&Some(lb_ingress), "load balancer IP", warnings);
    let source_ranges: Vec<IpNet> = sp
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .filter_map(|r| {
            let n = parse_cidr_sloppy(r);
            if n.is_none() {
                warnings.push(format!(
                    "Service {}/{}: skipping invalid loadBalancerSourceRange {:?}",
                    m.namespace,
                    m.name,
                    r.escape_debug().to_string()
                ));
            }
            n
        })
        .filter(|n| family_of(&n.addr()) == cfg.family)
        .collect();
    let sticky_seconds = (sp.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        sp.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .unwrap_or(10800) as u32
    });
    let api_external =
        ty == "LoadBalancer" || ty == "NodePort" || (ty == "ClusterIP" && !external_ips.is_empty());
    let external_policy_local =
        api_external && sp.external_traffic_policy.as_deref() == Some("Local");
    let internal_policy_local = sp.internal_traffic_policy.as_deref() == Some("Local");
    let health_check_node_port = if ty == "LoadBalancer" && external_policy_local {
        sp.health_check_node_port.unwrap_or(0) as u16
    } else {
        0
    };
    for p in sp.ports.iter().flatten() {
        let Ok(protocol) = parse_protocol(p.protocol.as_deref()) else {
            continue;
        };
        ports.push(ServicePort {
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            port_name: p.name.clone().unwrap_or_default(),
            protocol,
            cluster_ip,
            port: p.port as u16,
            node_port: p.node_port.unwrap_or(0) as u16,
            external_ips: external_ips.clone(),
            lb_vips: lb_vips.clone(),
            source_ranges: source_ranges.clone(),
            sticky_seconds,
            external_policy_local,
            internal_policy_local,
            health_check_node_port,
        });
    }
    ports
}

/// Build one group's model (spec §2).
pub fn build_group(cfg: &Config, g: &Group) -> GroupModel {
    let mut warnings = Vec::new();
    let mut ports = match g.service {
        Some(s) => service_ports(cfg, s, &mut warnings),
        None => Vec::new(),
    };
    // Deterministic order (kube-proxy walks a Go map): by service port name, protocol.
    ports.sort_by(|a, b| (a.svc_port_name(), a.protocol).cmp(&(b.svc_port_name(), b.protocol)));

    // Endpoints per (port name, protocol), deduplicated by ip:port (a local duplicate
    // wins, else the first), sorted byte-wise by the ip:port string.
    // (port name, protocol, [(input sequence, endpoint)])
    type Collected<'n> = Vec<(&'n str, &'static str, Vec<(usize, Endpoint)>)>;
    let mut by_port: Collected = Vec::new();
    let mut seq = 0usize;
    for sl in &g.slices {
        for sp in sl.ports.iter().flatten() {
            let (Some(pname), Some(pport)) = (&sp.name, sp.port) else {
                continue;
            };
            if pport == 0 {
                continue;
            }
            let Ok(proto) = parse_protocol(sp.protocol.as_deref()) else {
                continue;
            };
            let slot = match by_port
                .iter()
                .position(|(n, p, _)| *n == pname.as_str() && *p == proto)
            {
                Some(i) => i,
                None => {
                    by_port.push((pname.as_str(), proto, Vec::new()));
                    by_port.len() - 1
                }
            };
            for ep in sl.endpoints.iter().flatten() {
                let Some(first) = ep.addresses.first() else {
                    continue;
                };
                let Some(ip) = parse_ip_sloppy(first) else {
                    warnings.push(format!(
                        "EndpointSlice {}/{}: skipping invalid address {:?}",
                        sl.metadata.namespace,
                        sl.metadata.name,
                        first.escape_debug().to_string()
                    ));
                    continue;
                };
                if family_of(&ip) != cfg.family {
                    continue;
                }
                let c = ep.conditions.unwrap_or_default();
                let is_local = ep.node_name.as_deref() == Some(cfg.node_name.as_str());
                let remote = ep
                    .node_name
                    .as_ref()
                    .is_some_and(|n| !is_local && !n.is_empty());
                seq += 1;
                by_port[slot].2.push((
                    seq,
                    Endpoint {
                        ip,
                        port: pport as u16,
                        ready: c.ready.unwrap_or(true),
                        serving: c.serving.unwrap_or(true),
                        terminating: c.terminating.unwrap_or(false),
                        is_local,
                        remote,
                        addr: join_host_port(ip, pport as u16),
                    },
                ));
            }
        }
    }
    let mut total_endpoints = 0;
    let mut deduped: Vec<(&str, &'static str, Vec<Endpoint>)> = Vec::with_capacity(by_port.len());
    for (name, proto, mut eps) in by_port {
        eps.sort_by(|a, b| a.1.addr.cmp(&b.1.addr).then(a.0.cmp(&b.0)));
        let mut out: Vec<Endpoint> = Vec::with_capacity(eps.len());
        for (_, e) in eps {
            match out.last_mut() {
                Some(last) if last.addr == e.addr => {
                    if e.is_local && !last.is_local {
                        *last = e;
                    }
                }
                _ => out.push(e),
            }
        }
        total_endpoints += out.len();
        deduped.push((name, proto, out));
    }
    let port_set = ports
        .iter()
        .map(|sp| {
            deduped
                .iter()
                .position(|(n, p, _)| *n == sp.port_name && *p == sp.protocol)
        })
        .collect();
    GroupModel {
        ports,
        endpoint_sets: deduped.into_iter().map(|(_, _, e)| e).collect(),
        port_set,
        total_endpoints,
        warnings,
    }
}

impl GroupModel {
    pub fn endpoints_of(&self, port: usize) -> &[Endpoint] {
        self.port_set[port].map_or(&[], |i| self.endpoint_sets[i].as_slice())
    }
}

/// The outcome of `CategorizeEndpoints`, as indices into the port's endpoints (each list
/// in endpoint order, which is byte order of `ip:port`).
pub struct Categorized {
    pub cluster: Vec<usize>,
    pub local: Vec<usize>,
    pub all_reachable: Vec<usize>,
    pub has_any: bool,
}

pub fn categorize(sp: &ServicePort, eps: &[Endpoint]) -> Categorized {
    let pick = |f: &dyn Fn(&Endpoint) -> bool| -> Vec<usize> {
        eps.iter()
            .enumerate()
            .filter(|(_, e)| f(e))
            .map(|(i, _)| i)
            .collect()
    };
    let mut cluster = Vec::new();
    let mut has_any = false;
    if sp.uses_cluster_endpoints() {
        cluster = pick(&|e| e.ready);
        if cluster.is_empty() {
            cluster = pick(&|e| e.serving && e.terminating);
        }
        has_any = !cluster.is_empty();
    }
    if !sp.uses_local_endpoints() {
        let all = cluster.clone();
        return Categorized {
            cluster,
            local: Vec::new(),
            all_reachable: all,
            has_any,
        };
    }
    let (mut ready_local, mut st_local) = (Vec::new(), Vec::new());
    for (i, e) in eps.iter().enumerate() {
        if e.ready {
            has_any = true;
            if e.is_local {
                ready_local.push(i);
            }
        } else if e.serving && e.terminating {
            has_any = true;
            if e.is_local {
                st_local.push(i);
            }
        }
    }
    let used_terminating = ready_local.is_empty() && !st_local.is_empty();
    let local = if ready_local.is_empty() {
        st_local
    } else {
        ready_local
    };
    let all_reachable = if !sp.uses_cluster_endpoints() {
        local.clone()
    } else if !used_terminating {
        cluster.clone()
    } else {
        // Indices follow endpoint order, which is ip:port order: a sorted union.
        let mut u: Vec<usize> = cluster.iter().chain(local.iter()).copied().collect();
        u.sort_unstable();
        u.dedup();
        u
    };
    Categorized {
        cluster,
        local,
        all_reachable,
        has_any,
    }
}

/// What a service port's endpoints make of it (spec §2.2 of both modes): which chains it
/// needs and whether internal and external traffic have somewhere to go. Both backends
/// render from this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Any usable endpoint at all (else traffic is rejected).
    pub has_endpoints: bool,
    /// The cluster-policy chain (KUBE-SVC / service-…) is written.
    pub uses_cluster_chain: bool,
    /// The local-policy chain (KUBE-SVL / local-…) is written.
    pub uses_local_chain: bool,
    /// Internal traffic goes through the local chain (internalTrafficPolicy Local).
    pub internal_local: bool,
    pub has_internal: bool,
    /// External traffic goes through the local chain (externalTrafficPolicy Local).
    pub external_local: bool,
    pub has_external: bool,
    /// The external chain (KUBE-EXT / external-…) is written.
    pub uses_external_chain: bool,
}

impl Policy {
    pub fn of(sp: &ServicePort, c: &Categorized) -> Policy {
        let has_endpoints = c.has_any;
        Policy {
            has_endpoints,
            uses_cluster_chain: !c.cluster.is_empty() && sp.uses_cluster_endpoints(),
            uses_local_chain: !c.local.is_empty() && sp.uses_local_endpoints(),
            internal_local: sp.internal_policy_local,
            has_internal: has_endpoints && !(sp.internal_policy_local && c.local.is_empty()),
            external_local: sp.external_policy_local,
            has_external: has_endpoints && !(sp.external_policy_local && c.local.is_empty()),
            uses_external_chain: has_endpoints && sp.externally_accessible(),
        }
    }
}
