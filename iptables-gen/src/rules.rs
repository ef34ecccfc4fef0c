//! Rule generation: the four line buffers of kube-proxy's `syncProxyRules` (spec §3-§4),
//! written straight into strings (10k services are ~40 MB of text).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::names;
use crate::proxier::{Categorized, Endpoint, Model, ServicePort, categorize, service_digest};
use crate::{Config, Family, LocalDetector};

pub const LARGE_CLUSTER_ENDPOINTS_THRESHOLD: usize = 1000;
const NFACCT_INVALID: &str = "ct_state_invalid_dropped_pkts";
const NFACCT_LOCALHOST_NPS: &str = "localhost_nps_accepted_pkts";

/// What to write this time.
#[derive(Debug, Default, Clone)]
pub struct SyncPlan {
    /// Write every service's nat chains (otherwise only changed ones).
    pub full: bool,
    /// Digest per service (`ns/name`) from the previous applied sync.
    pub previous: BTreeMap<String, u64>,
    /// Per-service chains believed to exist in the kernel (previous state and/or
    /// `iptables-save`): the ones no longer active get `-X`.
    pub existing_chains: BTreeSet<String>,
}

/// The generated restore input and what a later partial sync needs to know.
#[derive(Debug, Default)]
pub struct Generated {
    pub text: String,
    /// Digest of every service written or kept, by `ns/name`.
    pub digests: BTreeMap<String, u64>,
    /// Every per-service chain that is active after this sync.
    pub active_chains: BTreeSet<String>,
    /// Services whose nat chains were (re)written.
    pub written_services: usize,
    /// Chains deleted (`-X`).
    pub deleted_chains: Vec<String>,
    pub large_cluster: bool,
}

/// A line buffer: arguments joined by single spaces, newline-terminated.
struct Buf(String, bool);

impl Buf {
    fn new() -> Buf {
        Buf(String::new(), true)
    }
    /// A buffer that discards everything (an unchanged service in a partial sync).
    fn off() -> Buf {
        Buf(String::new(), false)
    }
    fn line(&mut self, parts: &[&str]) {
        if !self.1 {
            return;
        }
        let mut first = true;
        for p in parts {
            if p.is_empty() {
                continue;
            }
            if !first {
                self.0.push(' ');
            }
            self.0.push_str(p);
            first = false;
        }
        self.0.push('\n');
    }
    fn chain(&mut self, name: &str) {
        if !self.1 {
            return;
        }
        self.0.push(':');
        self.0.push_str(name);
        self.0.push_str(" - [0:0]\n");
    }
}

/// `--comment X`, quoted when X contains a space (kube-proxy pre-quotes those).
fn comment(c: &str) -> String {
    if c.contains(' ') {
        format!("-m comment --comment \"{c}\"")
    } else {
        format!("-m comment --comment {c}")
    }
}

fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

impl LocalDetector {
    fn if_local(&self) -> Option<String> {
        match self {
            LocalDetector::None => None,
            LocalDetector::ClusterCidr(c) | LocalDetector::NodeCidr(c) => Some(format!("-s {c}")),
            LocalDetector::BridgeInterface(i) => Some(format!("-i {i}")),
            LocalDetector::InterfaceNamePrefix(p) => Some(format!("-i {p}+")),
        }
    }
    fn if_not_local(&self) -> Option<String> {
        match self {
            LocalDetector::None => None,
            LocalDetector::ClusterCidr(c) | LocalDetector::NodeCidr(c) => Some(format!("! -s {c}")),
            LocalDetector::BridgeInterface(i) => Some(format!("! -i {i}")),
            LocalDetector::InterfaceNamePrefix(p) => Some(format!("! -i {p}+")),
        }
    }
}

/// Generate the restore input for `model` (spec §3-§4, §6).
pub fn generate(cfg: &Config, model: &Model, plan: &SyncPlan) -> Generated {
    let mark = cfg.masquerade_mark.as_str();
    let v4 = cfg.family == Family::V4;
    let large = model.total_endpoints > LARGE_CLUSTER_ENDPOINTS_THRESHOLD;
    let mut filter_chains = Buf::new();
    let mut filter_rules = Buf::new();
    let mut nat_chains = Buf(String::with_capacity(model.ports.len() * 400), true);
    let mut nat_rules = Buf(String::with_capacity(model.ports.len() * 4000), true);

    for c in [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
    ] {
        filter_chains.chain(c);
    }
    let localhost_nodeports = cfg.localhost_nodeports && v4;
    if localhost_nodeports {
        filter_chains.chain("KUBE-FIREWALL");
    }
    for c in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        nat_chains.chain(c);
    }

    // Fixed rules.
    let mark_mask = format!("{mark}/{mark}");
    nat_rules.line(&[
        "-A KUBE-POSTROUTING -m mark ! --mark",
        &mark_mask,
        "-j RETURN",
    ]);
    nat_rules.line(&["-A KUBE-POSTROUTING -j MARK --xor-mark", mark]);
    nat_rules.line(&[
        "-A KUBE-POSTROUTING",
        &comment("kubernetes service traffic requiring SNAT"),
        "-j MASQUERADE",
        if cfg.random_fully {
            "--random-fully"
        } else {
            ""
        },
    ]);
    nat_rules.line(&["-A KUBE-MARK-MASQ -j MARK --or-mark", mark]);
    if localhost_nodeports {
        filter_rules.line(&[
            "-A KUBE-FIREWALL",
            &comment("block incoming localnet connections"),
            "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
        ]);
    }

    let fingerprint = config_fingerprint(cfg, large);
    let mut out = Generated {
        large_cluster: large,
        ..Default::default()
    };
    // Group ports by service: partial syncs decide per service.
    let mut i = 0;
    while i < model.ports.len() {
        let key = model.ports[i].service_key();
        let mut j = i;
        while j < model.ports.len() && model.ports[j].service_key() == key {
            j += 1;
        }
        let ports: Vec<&ServicePort> = model.ports[i..j].iter().collect();
        i = j;
        let digest = service_digest(&ports, model, fingerprint);
        let write_chains = plan.full || plan.previous.get(&key) != Some(&digest);
        out.digests.insert(key, digest);
        let (mut svc_chains, mut svc_rules) = if write_chains {
            (Buf::new(), Buf::new())
        } else {
            (Buf::off(), Buf::off())
        };
        for sp in ports {
            let eps = model.endpoints_of(sp);
            let cat = categorize(sp, eps);
            write_service_port(
                cfg,
                sp,
                &cat,
                large,
                &mut filter_rules,
                &mut nat_rules,
                &mut svc_chains,
                &mut svc_rules,
                &mut out.active_chains,
            );
        }
        if write_chains {
            nat_chains.0.push_str(&svc_chains.0);
            nat_rules.0.push_str(&svc_rules.0);
            out.written_services += 1;
        }
    }

    // Stale per-service chains: declared (so -X works even if iptables-save missed them)
    // and deleted after every -A line.
    let mut stale = Vec::new();
    for c in &plan.existing_chains {
        if !out.active_chains.contains(c)
            && names::SERVICE_CHAIN_PREFIXES
                .iter()
                .any(|p| c.starts_with(p))
        {
            nat_chains.chain(c);
            stale.push(c.clone());
        }
    }
    for c in &stale {
        nat_rules.line(&["-X", c]);
    }
    out.deleted_chains = stale;

    // The NodePorts jump, last in nat KUBE-SERVICES.
    let np_comment =
        comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain");
    let match_all = cfg.nodeport_addresses.is_empty()
        || cfg
            .nodeport_addresses
            .iter()
            .any(|n| n.prefix_len() == 0 && (n.addr().is_ipv4() == v4));
    if match_all {
        let extra = if !v4 {
            "! -d ::1/128"
        } else if !cfg.localhost_nodeports {
            "! -d 127.0.0.0/8"
        } else {
            ""
        };
        nat_rules.line(&[
            "-A KUBE-SERVICES",
            &np_comment,
            "-m addrtype --dst-type LOCAL",
            extra,
            "-j KUBE-NODEPORTS",
        ]);
    } else {
        let mut ips: Vec<IpAddr> = cfg
            .node_addresses
            .iter()
            .copied()
            .filter(|ip| ip.is_ipv4() == v4)
            .filter(|ip| cfg.nodeport_addresses.iter().any(|n| n.contains(ip)))
            .filter(|ip| !(ip.is_loopback() && (!v4 || !cfg.localhost_nodeports)))
            .collect();
        ips.sort();
        ips.dedup();
        for ip in ips {
            let d = ip.to_string();
            nat_rules.line(&[
                "-A KUBE-SERVICES",
                &np_comment,
                "-d",
                &d,
                "-j KUBE-NODEPORTS",
            ]);
        }
    }

    // KUBE-FORWARD, last in filter.
    if !cfg.conntrack_tcp_be_liberal {
        let nf = if cfg.nfacct.contains(NFACCT_INVALID) {
            format!("-m nfacct --nfacct-name {NFACCT_INVALID}")
        } else {
            String::new()
        };
        filter_rules.line(&[
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID",
            &nf,
            "-j DROP",
        ]);
    }
    filter_rules.line(&[
        "-A KUBE-FORWARD",
        &comment("kubernetes forwarding rules"),
        "-m mark --mark",
        &mark_mask,
        "-j ACCEPT",
    ]);
    filter_rules.line(&[
        "-A KUBE-FORWARD",
        &comment("kubernetes forwarding conntrack rule"),
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]);

    let mut text = String::with_capacity(
        filter_chains.0.len() + filter_rules.0.len() + nat_chains.0.len() + nat_rules.0.len() + 32,
    );
    text.push_str("*filter\n");
    text.push_str(&filter_chains.0);
    text.push_str(&filter_rules.0);
    text.push_str("COMMIT\n*nat\n");
    text.push_str(&nat_chains.0);
    text.push_str(&nat_rules.0);
    text.push_str("COMMIT\n");
    out.text = text;
    out
}

/// Settings that change per-service chain text: part of every service's digest.
fn config_fingerprint(cfg: &Config, large: bool) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    cfg.masquerade_mark.hash(&mut h);
    cfg.masquerade_all.hash(&mut h);
    format!("{:?}", cfg.local_detector).hash(&mut h);
    cfg.node_ip.hash(&mut h);
    large.hash(&mut h);
    h.finish()
}

#[allow(clippy::too_many_arguments)]
fn write_service_port(
    cfg: &Config,
    sp: &ServicePort,
    cat: &Categorized,
    large: bool,
    filter_rules: &mut Buf,
    nat_rules: &mut Buf,
    svc_chains: &mut Buf,
    svc_rules: &mut Buf,
    active: &mut BTreeSet<String>,
) {
    let spn = sp.svc_port_name();
    let p = sp.protocol;
    let h = names::port_proto_hash(&spn, p);
    let (svc, svl, ext, fw) = (
        names::svc_chain(&h),
        names::svl_chain(&h),
        names::ext_chain(&h),
        names::fw_chain(&h),
    );
    let cip = sp.cluster_ip.to_string();
    let port = sp.port.to_string();
    let proto = format!("-m {p} -p {p}");

    let uses_cluster_chain = !cat.cluster.is_empty() && sp.uses_cluster_endpoints();
    let uses_local_chain = !cat.local.is_empty() && sp.uses_local_endpoints();
    let internal_chain = if sp.internal_policy_local { &svl } else { &svc };
    let has_internal = cat.has_any && !(sp.internal_policy_local && cat.local.is_empty());
    let external_policy_chain = if sp.external_policy_local { &svl } else { &svc };
    let has_external = cat.has_any && !(sp.external_policy_local && cat.local.is_empty());
    let uses_ext_chain = cat.has_any && sp.externally_accessible();
    let uses_fw_chain = cat.has_any && !sp.lb_vips.is_empty() && !sp.source_ranges.is_empty();
    let lb_chain = if uses_fw_chain { &fw } else { &ext };
    let (int_filter_target, int_filter_comment) = if !cat.has_any {
        ("REJECT", format!("{spn} has no endpoints"))
    } else {
        ("DROP", format!("{spn} has no local endpoints"))
    };
    let (ext_filter_target, ext_filter_comment) = (int_filter_target, &int_filter_comment);

    // 1. ClusterIP.
    if has_internal {
        nat_rules.line(&[
            "-A KUBE-SERVICES",
            &comment(&format!("{spn} cluster IP")),
            &proto,
            "-d",
            &cip,
            "--dport",
            &port,
            "-j",
            internal_chain,
        ]);
    } else {
        filter_rules.line(&[
            "-A KUBE-SERVICES",
            &comment(&int_filter_comment),
            &proto,
            "-d",
            &cip,
            "--dport",
            &port,
            "-j",
            int_filter_target,
        ]);
    }
    // 2. External IPs.
    for eip in &sp.external_ips {
        let e = eip.to_string();
        if cat.has_any {
            nat_rules.line(&[
                "-A KUBE-SERVICES",
                &comment(&format!("{spn} external IP")),
                &proto,
                "-d",
                &e,
                "--dport",
                &port,
                "-j",
                &ext,
            ]);
        }
        if !has_external {
            filter_rules.line(&[
                "-A KUBE-EXTERNAL-SERVICES",
                &comment(ext_filter_comment),
                &proto,
                "-d",
                &e,
                "--dport",
                &port,
                "-j",
                ext_filter_target,
            ]);
        }
    }
    // 3. Load balancer VIPs.
    for vip in &sp.lb_vips {
        let v = vip.to_string();
        if cat.has_any {
            nat_rules.line(&[
                "-A KUBE-SERVICES",
                &comment(&format!("{spn} loadbalancer IP")),
                &proto,
                "-d",
                &v,
                "--dport",
                &port,
                "-j",
                lb_chain,
            ]);
        }
        if uses_fw_chain {
            filter_rules.line(&[
                "-A KUBE-PROXY-FIREWALL",
                &comment(&format!("{spn} traffic not accepted by {fw}")),
                &proto,
                "-d",
                &v,
                "--dport",
                &port,
                "-j DROP",
            ]);
        }
    }
    if !has_external {
        for vip in &sp.lb_vips {
            filter_rules.line(&[
                "-A KUBE-EXTERNAL-SERVICES",
                &comment(ext_filter_comment),
                &proto,
                "-d",
                &vip.to_string(),
                "--dport",
                &port,
                "-j",
                ext_filter_target,
            ]);
        }
    }
    // 4. NodePort.
    if sp.node_port != 0 {
        let np = sp.node_port.to_string();
        if cat.has_any {
            if cfg.localhost_nodeports
                && cfg.family == Family::V4
                && cfg.nfacct.contains(NFACCT_LOCALHOST_NPS)
            {
                nat_rules.line(&[
                    "-A KUBE-NODEPORTS",
                    &comment(&spn),
                    &proto,
                    "-d 127.0.0.0/8 --dport",
                    &np,
                    "-m nfacct --nfacct-name",
                    NFACCT_LOCALHOST_NPS,
                    "-j",
                    &ext,
                ]);
            }
            nat_rules.line(&[
                "-A KUBE-NODEPORTS",
                &comment(&spn),
                &proto,
                "--dport",
                &np,
                "-j",
                &ext,
            ]);
        }
        if !has_external {
            filter_rules.line(&[
                "-A KUBE-EXTERNAL-SERVICES",
                &comment(ext_filter_comment),
                "-m addrtype --dst-type LOCAL",
                &proto,
                "--dport",
                &np,
                "-j",
                ext_filter_target,
            ]);
        }
    }
    // 5. Health check node port.
    if sp.health_check_node_port != 0 {
        filter_rules.line(&[
            "-A KUBE-NODEPORTS",
            &comment(&format!("{spn} health check node port")),
            "-m tcp -p tcp --dport",
            &sp.health_check_node_port.to_string(),
            "-j ACCEPT",
        ]);
    }

    // The per-service nat chains (kept out of partial syncs when unchanged).
    // 6. Internal masquerade.
    if has_internal {
        let args = [
            comment(&format!("{spn} cluster IP")),
            proto.clone(),
            "-d".into(),
            cip.clone(),
            "--dport".into(),
            port.clone(),
        ];
        let head = format!("-A {internal_chain}");
        if cfg.masquerade_all {
            svc_rules.line(&[
                &head,
                &args[0],
                &args[1],
                &args[2],
                &args[3],
                &args[4],
                &args[5],
                "-j KUBE-MARK-MASQ",
            ]);
        } else if let Some(not_local) = cfg.local_detector.if_not_local() {
            svc_rules.line(&[
                &head,
                &args[0],
                &args[1],
                &args[2],
                &args[3],
                &args[4],
                &args[5],
                &not_local,
                "-j KUBE-MARK-MASQ",
            ]);
        }
    }
    // 7. EXT chain.
    if uses_ext_chain {
        svc_chains.chain(&ext);
        active.insert(ext.clone());
        let head = format!("-A {ext}");
        if !sp.external_policy_local {
            svc_rules.line(&[
                &head,
                &comment(&format!(
                    "masquerade traffic for {spn} external destinations"
                )),
                "-j KUBE-MARK-MASQ",
            ]);
        } else {
            if let Some(local) = cfg.local_detector.if_local() {
                svc_rules.line(&[
                    &head,
                    &comment(&format!("pod traffic for {spn} external destinations")),
                    &local,
                    "-j",
                    &svc,
                ]);
            }
            svc_rules.line(&[
                &head,
                &comment(&format!(
                    "masquerade LOCAL traffic for {spn} external destinations"
                )),
                "-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
            ]);
            svc_rules.line(&[
                &head,
                &comment(&format!(
                    "route LOCAL traffic for {spn} external destinations"
                )),
                "-m addrtype --src-type LOCAL -j",
                &svc,
            ]);
        }
        if has_external {
            svc_rules.line(&[&head, "-j", external_policy_chain]);
        }
    }
    // 8. FW chain.
    if uses_fw_chain {
        svc_chains.chain(&fw);
        active.insert(fw.clone());
        let head = format!("-A {fw}");
        let c = comment(&format!("{spn} loadbalancer IP"));
        for r in &sp.source_ranges {
            svc_rules.line(&[&head, &c, "-s", &r.to_string(), "-j", &ext]);
        }
        if let Some(node_ip) = cfg.node_ip {
            if sp.source_ranges.iter().any(|r| r.contains(&node_ip)) {
                for vip in &sp.lb_vips {
                    svc_rules.line(&[&head, &c, "-s", &vip.to_string(), "-j", &ext]);
                }
            }
        }
        svc_rules.line(&[
            &head,
            &comment(&format!(
                "other traffic to {spn} will be dropped by KUBE-PROXY-FIREWALL"
            )),
        ]);
    }
    // 9./10. SVC and SVL chains.
    if uses_cluster_chain {
        svc_chains.chain(&svc);
        active.insert(svc.clone());
        endpoint_rules(sp, &spn, &svc, &cat.cluster, large, svc_rules);
    }
    if uses_local_chain {
        svc_chains.chain(&svl);
        active.insert(svl.clone());
        endpoint_rules(sp, &spn, &svl, &cat.local, large, svc_rules);
    }
    // 11. SEP chains.
    for ep in &cat.all_reachable {
        let sep = names::sep_chain(&spn, p, &ep.addr);
        svc_chains.chain(&sep);
        let head = format!("-A {sep}");
        let c = if large { String::new() } else { comment(&spn) };
        svc_rules.line(&[&head, &c, "-s", &ep.ip.to_string(), "-j KUBE-MARK-MASQ"]);
        let recent = if sp.sticky_seconds.is_some() {
            format!("-m recent --name {sep} --set")
        } else {
            String::new()
        };
        svc_rules.line(&[
            &head,
            &c,
            &recent,
            &proto,
            "-j DNAT --to-destination",
            &ep.addr,
        ]);
        active.insert(sep);
    }
}

fn endpoint_rules(
    sp: &ServicePort,
    spn: &str,
    chain: &str,
    eps: &[&Endpoint],
    large: bool,
    out: &mut Buf,
) {
    let head = format!("-A {chain}");
    let seps: Vec<String> = eps
        .iter()
        .map(|e| names::sep_chain(spn, sp.protocol, &e.addr))
        .collect();
    let c = |e: &Endpoint| {
        if large {
            String::new()
        } else {
            comment(&format!("{spn} -> {}", e.addr))
        }
    };
    if let Some(t) = sp.sticky_seconds {
        let secs = t.to_string();
        for (e, sep) in eps.iter().zip(&seps) {
            let mut recent = String::new();
            let _ = write!(
                recent,
                "-m recent --name {sep} --rcheck --seconds {secs} --reap"
            );
            out.line(&[&head, &c(e), &recent, "-j", sep]);
        }
    }
    let n = eps.len();
    for (i, (e, sep)) in eps.iter().zip(&seps).enumerate() {
        let stat = if i < n - 1 {
            format!(
                "-m statistic --mode random --probability {}",
                probability(n - i)
            )
        } else {
            String::new()
        };
        out.line(&[&head, &c(e), &stat, "-j", sep]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities() {
        assert_eq!(probability(1), "1.0000000000");
        assert_eq!(probability(2), "0.5000000000");
        assert_eq!(probability(3), "0.3333333333");
        assert_eq!(probability(10), "0.1000000000");
        assert_eq!(probability(100000), "0.0000100000");
        assert_eq!(probability(100001), "0.0000099999");
    }

    #[test]
    fn comments_are_quoted_only_with_spaces() {
        assert_eq!(comment("ns1/svc1:p80"), "-m comment --comment ns1/svc1:p80");
        assert_eq!(comment("a b"), "-m comment --comment \"a b\"");
    }
}
