//! From API objects to kube-proxy's model: service ports and their endpoints (spec §2),
//! and the endpoint selection of `CategorizeEndpoints` (§2.3; topology hints are not
//! implemented: all endpoints are eligible).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{Objects, parse_cidr_sloppy, parse_ip_sloppy, parse_protocol};
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

/// (namespace, service, port name, protocol)
pub type PortKey = (String, String, String, &'static str);

pub struct Model {
    pub ports: Vec<ServicePort>,
    pub endpoints: BTreeMap<PortKey, Vec<Endpoint>>,
    /// Σ over the endpoints map (ready or not): drives large-cluster mode.
    pub total_endpoints: usize,
    /// Problems found while building (skipped IPs, ...), for stderr.
    pub warnings: Vec<String>,
}

pub fn build(cfg: &Config, objs: &Objects) -> Model {
    let mut warnings = Vec::new();
    let mut ports = Vec::new();
    for s in &objs.services {
        let m = &s.metadata;
        let sp = &s.spec;
        let ty = sp.service_type.as_deref().unwrap_or("ClusterIP");
        if ty == "ExternalName" {
            continue;
        }
        // The cluster IP of our family: from clusterIPs when set, else clusterIP.
        let candidates: Vec<&str> = match &sp.cluster_ips {
            Some(v) if !v.is_empty() => v.iter().map(String::as_str).collect(),
            _ => sp.cluster_ip.iter().map(String::as_str).collect(),
        };
        if candidates.iter().any(|c| c.is_empty() || *c == "None") {
            continue; // headless
        }
        let cluster_ip = candidates
            .iter()
            .filter_map(|c| parse_ip_sloppy(c))
            .find(|ip| family_of(ip) == cfg.family);
        let Some(cluster_ip) = cluster_ip else {
            continue;
        };
        let ips =
            |v: &Option<Vec<String>>, what: &str, warnings: &mut Vec<String>| -> Vec<IpAddr> {
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
        let external_ips = ips(&sp.external_ips, "externalIP", &mut warnings);
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
        let lb_vips = ips(&Some(lb_ingress), "load balancer IP", &mut warnings);
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
        let api_external = ty == "LoadBalancer"
            || ty == "NodePort"
            || (ty == "ClusterIP" && !external_ips.is_empty());
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
    }
    // Deterministic order (kube-proxy walks a Go map): by service port name, protocol.
    ports.sort_by(|a, b| (a.svc_port_name(), a.protocol).cmp(&(b.svc_port_name(), b.protocol)));

    // Endpoints per (ns, service, port name, protocol), deduplicated by ip:port (a local
    // duplicate wins), sorted byte-wise by the ip:port string.
    let mut endpoints: BTreeMap<PortKey, BTreeMap<String, Endpoint>> = BTreeMap::new();
    for sl in &objs.slices {
        let Some(svc) = sl.metadata.labels.get("kubernetes.io/service-name") else {
            continue;
        };
        if sl.address_type == "FQDN" {
            continue;
        }
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
            let key = (
                sl.metadata.namespace.clone(),
                svc.clone(),
                pname.clone(),
                proto,
            );
            let entry = endpoints.entry(key).or_default();
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
                let addr = join_host_port(ip, pport as u16);
                let e = Endpoint {
                    ip,
                    port: pport as u16,
                    ready: c.ready.unwrap_or(true),
                    serving: c.serving.unwrap_or(true),
                    terminating: c.terminating.unwrap_or(false),
                    is_local,
                    addr: addr.clone(),
                };
                match entry.get(&addr) {
                    Some(old) if old.is_local || !is_local => {}
                    _ => {
                        entry.insert(addr, e);
                    }
                }
            }
        }
    }
    let endpoints: BTreeMap<PortKey, Vec<Endpoint>> = endpoints
        .into_iter()
        .map(|(k, v)| (k, v.into_values().collect()))
        .collect();
    let total_endpoints = endpoints.values().map(Vec::len).sum();
    Model {
        ports,
        endpoints,
        total_endpoints,
        warnings,
    }
}

impl Model {
    pub fn endpoints_of(&self, sp: &ServicePort) -> &[Endpoint] {
        self.endpoints
            .get(&(
                sp.namespace.clone(),
                sp.name.clone(),
                sp.port_name.clone(),
                sp.protocol,
            ))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// The outcome of `CategorizeEndpoints`.
pub struct Categorized<'a> {
    pub cluster: Vec<&'a Endpoint>,
    pub local: Vec<&'a Endpoint>,
    pub all_reachable: Vec<&'a Endpoint>,
    pub has_any: bool,
}

pub fn categorize<'a>(sp: &ServicePort, eps: &'a [Endpoint]) -> Categorized<'a> {
    let mut cluster = Vec::new();
    let mut has_any = false;
    if sp.uses_cluster_endpoints() {
        cluster = eps.iter().filter(|e| e.ready).collect();
        if cluster.is_empty() {
            cluster = eps.iter().filter(|e| e.serving && e.terminating).collect();
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
    for e in eps {
        if e.ready {
            has_any = true;
            if e.is_local {
                ready_local.push(e);
            }
        } else if e.serving && e.terminating {
            has_any = true;
            if e.is_local {
                st_local.push(e);
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
        let mut u: BTreeMap<&str, &Endpoint> = BTreeMap::new();
        for e in cluster.iter().chain(local.iter()) {
            u.insert(e.addr.as_str(), e);
        }
        u.into_values().collect()
    };
    Categorized {
        cluster,
        local,
        all_reachable,
        has_any,
    }
}

/// A digest of everything that determines a service's per-service nat chains.
pub fn service_digest(ports: &[&ServicePort], model: &Model, fingerprint: u64) -> u64 {
    // DefaultHasher::new() has fixed keys: the same input gives the same digest across runs.
    let mut h = std::hash::DefaultHasher::new();
    fingerprint.hash(&mut h);
    for sp in ports {
        sp.hash(&mut h);
        model.endpoints_of(sp).hash(&mut h);
    }
    h.finish()
}
