//! The nftables backend: kube-proxy's nftables mode (`pkg/proxy/nftables`, GA in 1.33) as
//! `nft -f` input, one table per family (`ip kube-proxy`, `ip6 kube-proxy`), with
//! kube-proxy's chain, set and map names.
//!
//! Departures from kube-proxy's layout, each because it costs scale (creating anonymous
//! sets is quadratic in the kernel: 10,000 services took 179 s to apply that way; and
//! every rule expression costs the kernel a linear search of the expression types):
//! - endpoints are map elements, not chains. A service's `service-…` / `local-…` chain
//!   ends in `goto cluster-endpoints-N` (or `local-endpoints-N`), a chain shared by every
//!   service with N endpoints, whose one rule is `dnat ip to ip daddr . meta l4proto . th
//!   dport . numgen random mod N map @cluster-endpoints`: the map is keyed by the packet's
//!   destination (ClusterIP, external or LoadBalancer IP, and port) and the endpoint's
//!   index, and gives its address and port. NodePort traffic, whose destination is any
//!   local address, is looked up by protocol, port and index in `cluster-nodeport-
//!   endpoints` by the chain's second rule. Each endpoint is chosen with probability 1/N.
//!   Sharing the chain matters: the kernel walks a map's elements whenever a new chain
//!   binds it, and checks each new element against every binding;
//! - hairpin traffic (an endpoint reaching its own Service) is masqueraded by one rule in
//!   `masquerading`, `ct status dnat ip saddr . ip daddr @hairpin-endpoints`, with a pair
//!   `A . A` for each endpoint address that can send from this node (its `nodeName` is
//!   this node's or unknown), instead of a `saddr A` rule in each endpoint chain;
//! - services with ClientIP affinity keep kube-proxy's endpoint chains (`update
//!   @affinity-…` needs one set and one chain per endpoint), selected by one rule per
//!   endpoint, `numgen random mod (N-i) == 0 goto endpoint-…`, and a final `goto`,
//!   instead of an anonymous `numgen … vmap { … }`;
//! - LoadBalancerSourceRanges are one `return` rule per range (and per VIP when a range
//!   holds the node IP) and a final `drop`, instead of an anonymous `saddr != { … }` set.
//!
//! So the ruleset holds named sets and maps only.
//!
//! Syncs: a full sync rewrites every chain and every set/map element (affinity sets are
//! added, never flushed, so ClientIP affinity survives) and makes the endpoint maps anew
//! (see `write_endpoint_maps` for why); a partial sync (a previous state and no config
//! change) rewrites only the chains and elements of services that changed. Chains that
//! went away are flushed in the main transaction and deleted in a second one
//! ([`Generated::cleanup`]), as kube-proxy does: before Linux 6.2 a chain a just-deleted
//! map element pointed to cannot be deleted in the same transaction.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::model::Objects;
use crate::proxier::{self, Categorized, Endpoint, GroupModel, Policy, ServicePort, categorize};
use crate::rules::{
    Generated, ServiceState, SyncPlan, config_fingerprint, group_digest, random_seed,
};
use crate::{Config, Family, LocalDetector, SyncState};

pub const TABLE: &str = "kube-proxy";

/// The element containers a full sync flushes: kube-proxy's six (besides `nodeport-ips`,
/// per node) and our hairpin set. The endpoint maps are deleted and made anew instead.
const ELEMENT_MAPS: [&str; 7] = [
    "cluster-ips",
    "service-ips",
    "service-nodeports",
    "no-endpoint-services",
    "no-endpoint-nodeports",
    "firewall-ips",
    HAIRPIN,
];

/// Version of what a state's records mean; 2: endpoints in maps, not chains.
const LAYOUT_VERSION: u64 = 2;

/// The endpoint maps the selection chains read: (policy, by NodePort).
const ENDPOINT_MAPS: [(&str, bool); 4] = [
    ("cluster", false),
    ("cluster", true),
    ("local", false),
    ("local", true),
];

/// Selection chains for 1 to this many endpoints always exist, so that a partial sync
/// rarely needs a new one (it cannot add one: see [`write_endpoint_maps`]).
const PRESET_SELECT: usize = 16;

/// The set of `ADDR . ADDR` pairs, one per endpoint address: a DNATed packet whose source
/// is its destination is hairpin traffic and is masqueraded.
const HAIRPIN: &str = "hairpin-endpoints";

fn family_word(f: Family) -> &'static str {
    match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// `base32(sha256(name))[:8] + "-" + name`, cut to 240 bytes with `...` (spec §2.1).
pub fn hash_and_truncate(name: &str) -> String {
    const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let d = Sha256::digest(name.as_bytes());
    let v = d[..5]
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let mut out = String::with_capacity(9 + name.len());
    for i in (0..8).rev() {
        out.push(B32[((v >> (i * 5)) & 31) as usize] as char);
    }
    out.push('-');
    out.push_str(name);
    if out.len() > 240 {
        out.truncate(237);
        out.push_str("...");
    }
    out
}

fn service_base(sp: &ServicePort) -> String {
    hash_and_truncate(&format!(
        "{}/{}/{}/{}",
        sp.namespace, sp.name, sp.protocol, sp.port_name
    ))
}

fn endpoint_base(sp: &ServicePort, ep: &Endpoint) -> String {
    let ip = ep.ip.to_string().replace(':', ".");
    hash_and_truncate(&format!(
        "{}/{}/{}/{}__{ip}/{}",
        sp.namespace, sp.name, sp.protocol, sp.port_name, ep.port
    ))
}

/// Is `c` a per-service chain (kube-proxy's `isServiceChainName`: it contains a `/`)?
pub fn is_service_chain(c: &str) -> bool {
    c.contains('/')
}

fn not_loopback(x: &str, f: Family) -> String {
    match f {
        Family::V4 => format!("{x} daddr != 127.0.0.0/8"),
        Family::V6 => format!("{x} daddr != ::1"),
    }
}

/// The local-traffic detector's matches: (if local, if not local).
fn detector(cfg: &Config, x: &str) -> Option<(String, String)> {
    match &cfg.local_detector {
        LocalDetector::None => None,
        LocalDetector::ClusterCidr(n) | LocalDetector::NodeCidr(n) => {
            Some((format!("{x} saddr {n}"), format!("{x} saddr != {n}")))
        }
        LocalDetector::BridgeInterface(i) => {
            Some((format!("iifname {i}"), format!("iifname != {i}")))
        }
        LocalDetector::InterfaceNamePrefix(p) => {
            Some((format!("iifname {p}*"), format!("iifname != {p}*")))
        }
    }
}

fn match_all_nodeports(cfg: &Config) -> bool {
    cfg.nodeport_addresses.is_empty() || cfg.nodeport_addresses.iter().any(|n| n.prefix_len() == 0)
}

/// Commands of the fixed part (spec §1): the table, base chains, jumps, fixed chains,
/// named sets and maps. Everything is `add` (idempotent), each chain also flushed; the
/// element maps are flushed only when `flush_elements` (a full sync).
fn setup(cfg: &Config, out: &mut String, flush_elements: bool) {
    let f = cfg.family;
    let x = family_word(f);
    let t = format!("{x} {TABLE}");
    let addr = if f == Family::V4 {
        "ipv4_addr"
    } else {
        "ipv6_addr"
    };
    let mark = &cfg.masquerade_mark;
    let _ = writeln!(
        out,
        "add table {t} {{ comment \"rules for kube-proxy\" ; }}"
    );
    let base: [(&str, &str, &str, i32); 8] = [
        ("filter-prerouting-pre-dnat", "filter", "prerouting", -110),
        ("filter-output-pre-dnat", "filter", "output", -110),
        ("filter-input", "filter", "input", 0),
        ("filter-forward", "filter", "forward", 0),
        ("filter-output", "filter", "output", 0),
        ("nat-prerouting", "nat", "prerouting", -100),
        ("nat-output", "nat", "output", -100),
        ("nat-postrouting", "nat", "postrouting", 100),
    ];
    for (name, ty, hook, prio) in base {
        let _ = writeln!(
            out,
            "add chain {t} {name} {{ type {ty} hook {hook} priority {prio} ; }}\nflush chain {t} {name}"
        );
    }
    for c in [
        "nodeport-endpoints-check",
        "service-endpoints-check",
        "firewall-check",
        "services",
        "masquerading",
        "cluster-ips-check",
        "mark-for-masquerade",
    ] {
        let _ = writeln!(out, "add chain {t} {c}\nflush chain {t} {c}");
    }
    let _ = writeln!(
        out,
        "add chain {t} reject-chain {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}\nflush chain {t} reject-chain\nadd rule {t} reject-chain reject"
    );
    for (from, rule) in [
        ("filter-input", "ct state new jump nodeport-endpoints-check"),
        ("filter-input", "ct state new jump service-endpoints-check"),
        (
            "filter-forward",
            "ct state new jump service-endpoints-check",
        ),
        ("filter-output", "ct state new jump service-endpoints-check"),
        (
            "filter-prerouting-pre-dnat",
            "ct state new jump firewall-check",
        ),
        ("filter-output-pre-dnat", "ct state new jump firewall-check"),
        ("nat-output", "jump services"),
        ("nat-prerouting", "jump services"),
        ("nat-postrouting", "jump masquerading"),
        ("filter-forward", "ct state new jump cluster-ips-check"),
        ("filter-output", "ct state new jump cluster-ips-check"),
    ] {
        let _ = writeln!(out, "add rule {t} {from} {rule}");
    }
    let _ = writeln!(
        out,
        "add set {t} {HAIRPIN} {{ type {addr} . {addr} ; comment \"endpoints, for hairpin traffic\" ; }}\n\
         add rule {t} masquerading ct status dnat {x} saddr . {x} daddr @{HAIRPIN} mark set mark or {mark}"
    );
    let _ = writeln!(
        out,
        "add rule {t} masquerading mark and {mark} == 0 return\n\
         add rule {t} masquerading mark set mark xor {mark}\n\
         add rule {t} masquerading masquerade fully-random\n\
         add rule {t} mark-for-masquerade mark set mark or {mark}"
    );
    let _ = writeln!(
        out,
        "add set {t} cluster-ips {{ type {addr} ; comment \"Active ClusterIPs\" ; }}\n\
         add rule {t} cluster-ips-check {x} daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""
    );
    let match_all = match_all_nodeports(cfg);
    let _ = writeln!(
        out,
        "add set {t} nodeport-ips {{ type {addr} ; comment \"IPs that accept NodePort traffic\" ; }}"
    );
    if match_all {
        let _ = writeln!(out, "delete set {t} nodeport-ips");
    } else {
        let _ = writeln!(out, "flush set {t} nodeport-ips");
        for ip in cfg
            .node_addresses
            .iter()
            .filter(|ip| (f == Family::V4) == ip.is_ipv4() && !ip.is_loopback())
            .filter(|ip| cfg.nodeport_addresses.iter().any(|n| n.contains(*ip)))
        {
            let _ = writeln!(out, "add element {t} nodeport-ips {{ {ip} }}");
        }
    }
    let maps: [(&str, &str, &str); 5] = [
        (
            "no-endpoint-services",
            "__A__ . inet_proto . inet_service : verdict",
            "vmap to drop or reject packets to services with no endpoints",
        ),
        (
            "no-endpoint-nodeports",
            "inet_proto . inet_service : verdict",
            "vmap to drop or reject packets to service nodeports with no endpoints",
        ),
        (
            "firewall-ips",
            "__A__ . inet_proto . inet_service : verdict",
            "destinations that are subject to LoadBalancerSourceRanges",
        ),
        (
            "service-ips",
            "__A__ . inet_proto . inet_service : verdict",
            "ClusterIP, ExternalIP and LoadBalancer IP traffic",
        ),
        (
            "service-nodeports",
            "inet_proto . inet_service : verdict",
            "NodePort traffic",
        ),
    ];
    for (name, ty, comment) in maps {
        let ty = ty.replace("__A__", addr);
        let _ = writeln!(
            out,
            "add map {t} {name} {{ type {ty} ; comment \"{comment}\" ; }}"
        );
    }
    if !flush_elements {
        write_endpoint_maps(out, &t, x);
    }
    if flush_elements {
        for m in ELEMENT_MAPS {
            let _ = writeln!(out, "flush {} {t} {m}", kind_of(m));
        }
    }
    let lo = not_loopback(x, f);
    let _ = writeln!(
        out,
        "add rule {t} service-endpoints-check {x} daddr . meta l4proto . th dport vmap @no-endpoint-services"
    );
    if match_all {
        let _ = writeln!(
            out,
            "add rule {t} nodeport-endpoints-check {lo} meta l4proto . th dport vmap @no-endpoint-nodeports"
        );
    } else {
        let _ = writeln!(
            out,
            "add rule {t} nodeport-endpoints-check {x} daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"
        );
    }
    let _ = writeln!(
        out,
        "add rule {t} firewall-check {x} daddr . meta l4proto . th dport vmap @firewall-ips\n\
         add rule {t} services {x} daddr . meta l4proto . th dport vmap @service-ips"
    );
    if match_all {
        let _ = writeln!(
            out,
            "add rule {t} services fib daddr type local {lo} meta l4proto . th dport vmap @service-nodeports"
        );
    } else {
        let _ = writeln!(
            out,
            "add rule {t} services {x} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"
        );
    }
}

/// One service port's output: its chains (and affinity sets) with their rules, and its
/// elements as `MAP { KEY[ comment "C"][ : VALUE] }`.
#[derive(Default)]
struct PortOut {
    chains: Vec<String>,
    sets: Vec<String>,
    commands: String,
    elements: Vec<(String, String)>,
    /// Endpoint addresses whose hairpin traffic the `hairpin-endpoints` set masquerades.
    hairpin: Vec<IpAddr>,
    /// The shared selection chains its chains jump to: (policy, endpoint count).
    selects: Vec<(Select, usize)>,
}

/// The endpoint list a selection chain picks from: the cluster-policy or local-policy one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Select {
    Cluster,
    Local,
}

impl Select {
    fn word(self) -> &'static str {
        match self {
            Select::Cluster => "cluster",
            Select::Local => "local",
        }
    }

    /// The shared chain that picks one of `n` endpoints: `cluster-endpoints-10`.
    fn chain(self, n: usize) -> String {
        format!("{}-endpoints-{n}", self.word())
    }
}

/// Is `c` a shared selection chain (`cluster-endpoints-N`, `local-endpoints-N`)?
pub fn is_select_chain(c: &str) -> bool {
    ["cluster-endpoints-", "local-endpoints-"].iter().any(|p| {
        c.strip_prefix(p)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Which layout to write: ours, or kube-proxy's own (anonymous `numgen … vmap` and
/// `saddr != { … }` sets), kept only so the benchmark can compare the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Podwire,
    KubeProxy,
}

fn render_port(
    cfg: &Config,
    sp: &ServicePort,
    eps: &[Endpoint],
    c: &Categorized,
    layout: Layout,
) -> PortOut {
    let port = Port::new(cfg, sp, eps, c, layout);
    let mut o = PortOut::default();
    port.elements(&mut o);
    // Without affinity, endpoints need no chains of their own (see the module comment).
    let ep_names: Vec<String> = if port.lean {
        Vec::new()
    } else {
        c.all_reachable
            .iter()
            .map(|&i| endpoint_base(sp, &eps[i]))
            .collect()
    };
    port.declare_chains(&ep_names, &mut o);
    port.masquerade_rules(&mut o.commands);
    port.firewall_rules(&mut o.commands);
    port.affinity_sets(&ep_names, &mut o);
    port.selection(&mut o);
    port.endpoint_chains(&ep_names, &mut o.commands);
    o
}

/// One service port as the nftables backend writes it: its names and policy, and a
/// method per part (spec §2.3, §2.4).
struct Port<'a> {
    cfg: &'a Config,
    sp: &'a ServicePort,
    eps: &'a [Endpoint],
    c: &'a Categorized,
    layout: Layout,
    pol: Policy,
    /// `ip` or `ip6`, and the table: `ip kube-proxy`.
    x: &'static str,
    t: String,
    svc: String,
    local: String,
    ext: String,
    fw: String,
    /// Endpoints in the endpoint maps, not chains of their own (no affinity).
    lean: bool,
    uses_fw: bool,
}

impl<'a> Port<'a> {
    fn new(
        cfg: &'a Config,
        sp: &'a ServicePort,
        eps: &'a [Endpoint],
        c: &'a Categorized,
        layout: Layout,
    ) -> Port<'a> {
        let x = family_word(cfg.family);
        let base = service_base(sp);
        Port {
            cfg,
            sp,
            eps,
            c,
            layout,
            pol: Policy::of(sp, c),
            x,
            t: format!("{x} {TABLE}"),
            svc: format!("service-{base}"),
            local: format!("local-{base}"),
            ext: format!("external-{base}"),
            fw: format!("firewall-{base}"),
            lean: layout == Layout::Podwire && sp.sticky_seconds.is_none(),
            uses_fw: !sp.lb_vips.is_empty() && !sp.source_ranges.is_empty(),
        }
    }

    fn internal_chain(&self) -> &str {
        if self.pol.internal_local {
            &self.local
        } else {
            &self.svc
        }
    }

    /// Its elements of kube-proxy's maps (spec §2.3).
    fn elements(&self, o: &mut PortOut) {
        let (sp, pol) = (self.sp, &self.pol);
        let (p, port, spn, ext) = (sp.protocol, sp.port, sp.svc_port_name(), &self.ext);
        let (internal_verdict, external_verdict) = if !pol.has_endpoints {
            ("goto reject-chain", "goto reject-chain")
        } else {
            (
                if pol.has_internal { "" } else { "drop" },
                if pol.has_external { "" } else { "drop" },
            )
        };
        let mut el = |map: &str, e: String| o.elements.push((map.to_string(), e));
        let cip = sp.cluster_ip;
        el("cluster-ips", cip.to_string());
        if pol.has_internal {
            let chain = self.internal_chain();
            el(
                "service-ips",
                format!("{cip} . {p} . {port} : goto {chain}"),
            );
        } else {
            el(
                "no-endpoint-services",
                format!("{cip} . {p} . {port} comment \"{spn}\" : {internal_verdict}"),
            );
        }
        for eip in &sp.external_ips {
            if pol.has_endpoints {
                el("service-ips", format!("{eip} . {p} . {port} : goto {ext}"));
            }
            if !pol.has_external {
                el(
                    "no-endpoint-services",
                    format!("{eip} . {p} . {port} comment \"{spn}\" : {external_verdict}"),
                );
            }
        }
        for lb in &sp.lb_vips {
            if pol.has_endpoints {
                el("service-ips", format!("{lb} . {p} . {port} : goto {ext}"));
            }
            if self.uses_fw {
                el(
                    "firewall-ips",
                    format!("{lb} . {p} . {port} : goto {}", self.fw),
                );
            }
        }
        if !pol.has_external {
            for lb in &sp.lb_vips {
                el(
                    "no-endpoint-services",
                    format!("{lb} . {p} . {port} comment \"{spn}\" : {external_verdict}"),
                );
            }
        }
        if sp.node_port != 0 {
            let np = sp.node_port;
            if pol.has_endpoints {
                el("service-nodeports", format!("{p} . {np} : goto {ext}"));
            }
            if !pol.has_external {
                el(
                    "no-endpoint-nodeports",
                    format!("{p} . {np} comment \"{spn}\" : {external_verdict}"),
                );
            }
        }
    }

    /// Its chains (spec §2.4), declared (and flushed) before any is filled.
    fn declare_chains(&self, ep_names: &[String], o: &mut PortOut) {
        o.chains
            .extend(ep_names.iter().map(|b| format!("endpoint-{b}")));
        for (used, ch) in [
            (self.pol.uses_cluster_chain, &self.svc),
            (self.pol.uses_local_chain, &self.local),
            (self.pol.uses_external_chain, &self.ext),
            (self.uses_fw, &self.fw),
        ] {
            if used {
                o.chains.push(ch.clone());
            }
        }
        let t = &self.t;
        for ch in &o.chains {
            let _ = writeln!(o.commands, "add chain {t} {ch}\nflush chain {t} {ch}");
        }
    }

    /// Masquerade marks for internal traffic from outside the pod network, and the
    /// external chain (externalTrafficPolicy: masquerade all, or short-circuit pod and
    /// node traffic to the cluster chain).
    fn masquerade_rules(&self, cmd: &mut String) {
        let (cfg, sp, pol, t, x) = (self.cfg, self.sp, &self.pol, &self.t, self.x);
        let cip = sp.cluster_ip;
        if pol.has_internal {
            let chain = self.internal_chain();
            if cfg.masquerade_all {
                let _ = writeln!(
                    cmd,
                    "add rule {t} {chain} {x} daddr {cip} jump mark-for-masquerade"
                );
            } else if let Some((_, not_local)) = detector(cfg, x) {
                let _ = writeln!(
                    cmd,
                    "add rule {t} {chain} {x} daddr {cip} {not_local} jump mark-for-masquerade"
                );
            }
        }
        if !pol.uses_external_chain {
            return;
        }
        let (ext, svc) = (&self.ext, &self.svc);
        if !sp.external_policy_local {
            let _ = writeln!(cmd, "add rule {t} {ext} jump mark-for-masquerade");
        } else {
            if let Some((is_local, _)) = detector(cfg, x) {
                let _ = writeln!(
                    cmd,
                    "add rule {t} {ext} {is_local} goto {svc} comment \"short-circuit pod traffic\""
                );
            }
            let _ = writeln!(
                cmd,
                "add rule {t} {ext} fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\"\n\
                 add rule {t} {ext} fib saddr type local goto {svc} comment \"short-circuit local traffic\""
            );
        }
        if pol.has_external {
            let policy_chain = if pol.external_local { &self.local } else { svc };
            let _ = writeln!(cmd, "add rule {t} {ext} goto {policy_chain}");
        }
    }

    /// LoadBalancerSourceRanges: `return` for each allowed range (and the VIPs when a
    /// range holds the node IP), then `drop`.
    fn firewall_rules(&self, cmd: &mut String) {
        if !self.uses_fw {
            return;
        }
        let (cfg, sp, t, x, fw) = (self.cfg, self.sp, &self.t, self.x, &self.fw);
        let mut allowed: Vec<String> = sp
            .source_ranges
            .iter()
            .map(|r| r.trunc().to_string())
            .collect();
        if cfg
            .node_ip
            .is_some_and(|n| sp.source_ranges.iter().any(|r| r.contains(&n)))
        {
            allowed.extend(sp.lb_vips.iter().map(|lb| lb.to_string()));
        }
        if self.layout == Layout::KubeProxy {
            let _ = writeln!(
                cmd,
                "add rule {t} {fw} {x} saddr != {{ {} }} drop",
                allowed.join(" , ")
            );
            return;
        }
        for a in &allowed {
            let _ = writeln!(cmd, "add rule {t} {fw} {x} saddr {a} return");
        }
        let _ = writeln!(cmd, "add rule {t} {fw} drop");
    }

    /// ClientIP affinity: one timeout set per endpoint.
    fn affinity_sets(&self, ep_names: &[String], o: &mut PortOut) {
        let Some(secs) = self.sp.sticky_seconds else {
            return;
        };
        let addr = if self.cfg.family == Family::V4 {
            "ipv4_addr"
        } else {
            "ipv6_addr"
        };
        let t = &self.t;
        for b in ep_names {
            o.sets.push(format!("affinity-{b}"));
            let _ = writeln!(
                o.commands,
                "add set {t} affinity-{b} {{ type {addr} ; flags dynamic,timeout ; timeout {secs}s ; }}"
            );
        }
    }

    /// How each policy chain picks an endpoint: the shared selection chain and map
    /// elements; or (affinity, kube-proxy's layout) rules to the endpoint chains.
    fn selection(&self, o: &mut PortOut) {
        let (sp, eps, c, t, x) = (self.sp, self.eps, self.c, &self.t, self.x);
        for (chain, idx, used, which) in [
            (
                &self.svc,
                &c.cluster,
                self.pol.uses_cluster_chain,
                Select::Cluster,
            ),
            (
                &self.local,
                &c.local,
                self.pol.uses_local_chain,
                Select::Local,
            ),
        ] {
            if !used {
                continue;
            }
            if self.lean {
                select_elements(&mut o.elements, sp, eps, idx, &self.pol, which);
                // Only an endpoint on this node (or of unknown node) can send hairpin
                // traffic here.
                o.hairpin.extend(
                    idx.iter()
                        .map(|&i| &eps[i])
                        .filter(|e| !e.remote)
                        .map(|e| e.ip),
                );
                if !idx.is_empty() {
                    o.selects.push((which, idx.len()));
                    let _ = writeln!(
                        o.commands,
                        "add rule {t} {chain} goto {}",
                        which.chain(idx.len())
                    );
                }
                continue;
            }
            let cmd = &mut o.commands;
            let names: Vec<String> = idx.iter().map(|&i| endpoint_base(sp, &eps[i])).collect();
            if sp.sticky_seconds.is_some() {
                for b in &names {
                    let _ = writeln!(
                        cmd,
                        "add rule {t} {chain} {x} saddr @affinity-{b} goto endpoint-{b}"
                    );
                }
            }
            let n = names.len();
            if self.layout == Layout::KubeProxy {
                let vmap: Vec<String> = names
                    .iter()
                    .enumerate()
                    .map(|(i, b)| format!("{i} : goto endpoint-{b}"))
                    .collect();
                let _ = writeln!(
                    cmd,
                    "add rule {t} {chain} numgen random mod {n} vmap {{ {} }}",
                    vmap.join(" , ")
                );
                continue;
            }
            for (i, b) in names.iter().enumerate() {
                if i + 1 < n {
                    let _ = writeln!(
                        cmd,
                        "add rule {t} {chain} numgen random mod {} == 0 goto endpoint-{b}",
                        n - i
                    );
                } else {
                    let _ = writeln!(cmd, "add rule {t} {chain} goto endpoint-{b}");
                }
            }
        }
    }

    /// The endpoint chains (affinity, kube-proxy's layout): hairpin masquerade, the
    /// affinity update, the DNAT.
    fn endpoint_chains(&self, ep_names: &[String], cmd: &mut String) {
        let (sp, t, x, p) = (self.sp, &self.t, self.x, self.sp.protocol);
        for (&i, b) in self.c.all_reachable.iter().zip(ep_names) {
            let e = &self.eps[i];
            let ch = format!("endpoint-{b}");
            let _ = writeln!(
                cmd,
                "add rule {t} {ch} {x} saddr {} jump mark-for-masquerade",
                e.ip
            );
            if sp.sticky_seconds.is_some() {
                let _ = writeln!(
                    cmd,
                    "add rule {t} {ch} update @affinity-{b} {{ {x} saddr }}"
                );
            }
            let _ = writeln!(cmd, "add rule {t} {ch} meta l4proto {p} dnat to {}", e.addr);
        }
    }
}

/// The elements of the `which` endpoint maps for one policy chain's endpoints `idx`: for
/// every destination that reaches that chain, `DEST . i : ADDR . PORT`, `i` the value of
/// the selection chain's `numgen random mod N`.
fn select_elements(
    out: &mut Vec<(String, String)>,
    sp: &ServicePort,
    eps: &[Endpoint],
    idx: &[usize],
    pol: &Policy,
    which: Select,
) {
    let p = sp.protocol;
    let w = which.word();
    let internal = pol.has_internal && (pol.internal_local == (which == Select::Local));
    // External traffic reaches the cluster chain by its policy or, under
    // externalTrafficPolicy Local, by the short-circuits for pod and node traffic.
    let external = pol.uses_external_chain
        && match which {
            Select::Cluster => true,
            Select::Local => pol.external_local && pol.has_external,
        };
    let mut dests: Vec<String> = Vec::new();
    if internal {
        dests.push(format!("{} . {p} . {}", sp.cluster_ip, sp.port));
    }
    if external {
        for ip in sp.external_ips.iter().chain(&sp.lb_vips) {
            dests.push(format!("{ip} . {p} . {}", sp.port));
        }
    }
    for (i, &e) in idx.iter().enumerate() {
        let e = &eps[e];
        for d in &dests {
            out.push((
                format!("{w}-endpoints"),
                format!("{d} . {i} : {} . {}", e.ip, e.port),
            ));
        }
        if external && sp.node_port != 0 {
            out.push((
                format!("{w}-nodeport-endpoints"),
                format!("{p} . {} . {i} : {} . {}", sp.node_port, e.ip, e.port),
            ));
        }
    }
}

/// The element's key (what `delete element` names): the text before ` comment` / ` :`.
fn element_key(e: &str) -> &str {
    // A byte scan, not two substring searches: it runs for every element of every
    // unchanged service on each partial sync.
    let b = e.as_bytes();
    let mut i = 0;
    while let Some(p) = b[i..].iter().position(|&c| c == b' ') {
        let rest = &b[i + p + 1..];
        if rest.starts_with(b": ") || rest.starts_with(b"comment ") {
            return &e[..i + p];
        }
        i += p + 1;
    }
    e
}

fn kind_of(map: &str) -> &'static str {
    if map == "cluster-ips" || map == HAIRPIN {
        "set"
    } else {
        "map"
    }
}

/// Generate the `nft -f` transaction for `objs`. With `plan.previous` (and no config
/// change, no `plan.full`) only changed services are rewritten. `plan.existing_chains`
/// are chains (and `affinity-` sets) the kernel's table holds: the per-service ones not
/// active after this sync are flushed and, in [`Generated::cleanup`], deleted.
pub fn generate(cfg: &Config, objs: &Objects, plan: &SyncPlan) -> Generated {
    generate_layout(cfg, objs, plan, Layout::Podwire)
}

/// [`generate`] in either layout.
pub fn generate_layout(cfg: &Config, objs: &Objects, plan: &SyncPlan, layout: Layout) -> Generated {
    let groups = proxier::groups(objs);
    let prev = plan.previous.as_ref();
    let seed = prev.map_or_else(random_seed, |p| p.seed);
    // The backend and its layout are part of the fingerprint: an iptables state, or one
    // of an older layout, never passes for this one.
    let fingerprint = config_fingerprint(cfg, false) ^ 0x6e66_7461_626c_6573 ^ LAYOUT_VERSION;
    let partial = !plan.full && prev.is_some_and(|p| p.fingerprint == fingerprint);
    let mut out = Generated {
        full: !partial,
        ..Default::default()
    };
    out.state.seed = seed;
    out.state.fingerprint = fingerprint;
    let mut text = String::new();
    setup(cfg, &mut text, !partial);
    let digests: Vec<u64> = groups.iter().map(|g| group_digest(seed, g)).collect();
    let mut pass = Pass::new(cfg, layout, partial);
    let mut key = String::new();
    if partial {
        for (g, &d) in groups.iter().zip(&digests) {
            let kept = prev.and_then(|p| p.services.get(g.key(&mut key)));
            if let Some(o) = kept.filter(|o| o.digest == d) {
                pass.unchanged.push(o);
                pass.taken_before
                    .extend(own_elements(o).map(|(m, el)| (m, element_key(el))));
            }
        }
    }
    let mut seen: foldhash::HashSet<Arc<str>> = foldhash::HashSet::default();
    for (g, &d) in groups.iter().zip(&digests) {
        let k: Arc<str> = Arc::from(g.key(&mut key));
        seen.insert(Arc::clone(&k));
        let old = prev.and_then(|p| p.services.get(&k));
        if partial {
            if let Some(o) = old.filter(|o| o.digest == d) {
                pass.hairpin_kept.extend(hairpin_of(o));
                out.state.services.insert(k, Arc::clone(o));
                continue;
            }
            // Changed: its old elements go (re-added if still wanted).
            if let Some(o) = old {
                pass.remove(o);
            }
        }
        let st = pass.render_group(g, d, &mut out.warnings);
        out.written_services += 1;
        out.state.services.insert(k, Arc::new(st));
    }
    // Services that are gone: their elements go (their chains become stale below).
    if partial {
        for (k, o) in prev.map(|p| p.services.iter()).into_iter().flatten() {
            if !seen.contains(k) {
                pass.remove(o);
            }
        }
    }
    if !pass.selection_chains(plan, &mut text) {
        // A partial sync that needs a selection chain the last sync did not leave.
        return generate_layout(
            cfg,
            objs,
            &SyncPlan {
                full: true,
                ..plan.clone()
            },
            layout,
        );
    }
    pass.hairpin_elements(prev);
    pass.deletes.write("delete", &pass.t, &mut text);
    text.push_str(&pass.chains_text);
    pass.adds.write("add", &pass.t, &mut text);
    out.cleanup = pass.stale(plan, &mut text, &mut out.deleted_chains);
    out.text = text;
    out
}

/// One sync's work, service by service: the element commands, the per-service chains'
/// text, and what is active, taken and changed.
struct Pass<'p> {
    cfg: &'p Config,
    layout: Layout,
    partial: bool,
    x: &'static str,
    t: String,
    deletes: Elements,
    adds: Elements,
    chains_text: String,
    /// Chains (and affinity sets) of the services written now; an unchanged service's
    /// are active too, but only looked at when the kernel's list must be checked.
    active: BTreeSet<String>,
    /// Hairpin pairs are shared by every service with that endpoint address: the set
    /// holds the union, added and deleted as the union changes, never per service.
    hairpin_kept: BTreeSet<&'p str>,
    hairpin_new: BTreeSet<String>,
    /// Element keys in use, (map, key): a second service claiming one (two NodePort
    /// services on one port) is skipped with a warning, not allowed to fail the sync.
    /// The unchanged services' keys are borrowed from the previous state.
    taken_before: foldhash::HashSet<(&'p str, &'p str)>,
    taken: foldhash::HashSet<String>,
    unchanged: Vec<&'p ServiceState>,
    /// Previous states of services changed or gone.
    replaced: Vec<&'p ServiceState>,
}

impl<'p> Pass<'p> {
    fn new(cfg: &'p Config, layout: Layout, partial: bool) -> Pass<'p> {
        let x = family_word(cfg.family);
        Pass {
            cfg,
            layout,
            partial,
            x,
            t: format!("{x} {TABLE}"),
            deletes: Elements::default(),
            adds: Elements::default(),
            chains_text: String::new(),
            active: BTreeSet::new(),
            hairpin_kept: BTreeSet::new(),
            hairpin_new: BTreeSet::new(),
            taken_before: foldhash::HashSet::default(),
            taken: foldhash::HashSet::default(),
            unchanged: Vec::new(),
            replaced: Vec::new(),
        }
    }

    /// A service changed or went away: its elements are deleted.
    fn remove(&mut self, old: &'p ServiceState) {
        self.replaced.push(old);
        for (m, el) in own_elements(old) {
            self.deletes.push(m, element_key(el));
        }
    }

    /// Render one service's ports: their chains' text, their elements (unless another
    /// service has the key), and the state to remember.
    fn render_group(
        &mut self,
        g: &proxier::Group,
        digest: u64,
        warnings: &mut Vec<String>,
    ) -> ServiceState {
        let mut m: GroupModel = proxier::build_group(self.cfg, g);
        warnings.append(&mut m.warnings);
        let mut st = ServiceState {
            digest,
            endpoints: m.total_endpoints,
            order: m
                .ports
                .first()
                .map(|p| (p.svc_port_name(), p.protocol.to_string())),
            ..Default::default()
        };
        let mut cluster_ips: BTreeSet<IpAddr> = BTreeSet::new();
        let mut pairs: BTreeSet<IpAddr> = BTreeSet::new();
        let mut selects: BTreeSet<String> = BTreeSet::new();
        for (i, sp) in m.ports.iter().enumerate() {
            let eps = m.endpoints_of(i);
            let c = categorize(sp, eps);
            let po = render_port(self.cfg, sp, eps, &c, self.layout);
            self.chains_text.push_str(&po.commands);
            for (map, e) in po.elements {
                // A service's ports share one ClusterIP: one `cluster-ips` element.
                if map == "cluster-ips" && !cluster_ips.insert(sp.cluster_ip) {
                    continue;
                }
                let ek = element_key(&e);
                if self.taken_before.contains(&(map.as_str(), ek))
                    || !self.taken.insert(format!("{map}\t{ek}"))
                {
                    // Endpoint elements follow their destination's, already warned of.
                    if !map.ends_with("endpoints") {
                        warnings.push(format!(
                            "Service {}: {map} {{ {ek} }} is another service's already; skipped",
                            sp.svc_port_name(),
                        ));
                    }
                    continue;
                }
                self.adds.push(&map, &e);
                st.elements.push(format!("{map}\t{e}"));
            }
            pairs.extend(po.hairpin);
            selects.extend(po.selects.iter().map(|&(w, n)| w.chain(n)));
            self.active.extend(po.chains.iter().cloned());
            self.active.extend(po.sets.iter().cloned());
            st.chains.extend(po.chains);
            st.chains.extend(po.sets);
        }
        st.elements
            .extend(pairs.iter().map(|ip| format!("{HAIRPIN}\t{ip} . {ip}")));
        self.hairpin_new
            .extend(pairs.iter().map(|ip| format!("{ip} . {ip}")));
        self.active.extend(selects.iter().cloned());
        st.chains.extend(selects);
        st
    }

    /// The selection chains: a full sync writes every one in use (and the preset ones)
    /// with the endpoint maps made anew; a partial one writes none (see
    /// `write_endpoint_maps`) and answers false when it needs one the last sync did
    /// not leave.
    fn selection_chains(&mut self, plan: &SyncPlan, text: &mut String) -> bool {
        let mut known: BTreeSet<String> = plan
            .existing_chains
            .iter()
            .filter(|c| is_select_chain(c))
            .cloned()
            .collect();
        for s in plan.previous.iter().flat_map(|p| p.services.values()) {
            known.extend(s.chains.iter().filter(|c| is_select_chain(c)).cloned());
        }
        if self.partial {
            known.extend(preset_select());
            if self
                .active
                .iter()
                .any(|c| is_select_chain(c) && !known.contains(c))
            {
                return false;
            }
            // They all stay: removing one is a full sync's work.
            self.active.extend(known);
            return true;
        }
        let wanted: BTreeSet<String> = self
            .active
            .iter()
            .filter(|c| is_select_chain(c))
            .cloned()
            .chain(preset_select())
            .collect();
        write_select_section(text, &self.t, self.x, &known, &wanted);
        self.active.extend(wanted);
        true
    }

    /// The hairpin set's elements: all of them on a full sync, the union's change on a
    /// partial one.
    fn hairpin_elements(&mut self, prev: Option<&SyncState>) {
        let now: BTreeSet<&str> = self
            .hairpin_kept
            .iter()
            .copied()
            .chain(self.hairpin_new.iter().map(String::as_str))
            .collect();
        if !self.partial {
            for h in &now {
                self.adds.push(HAIRPIN, h);
            }
            return;
        }
        let before: BTreeSet<&str> = prev
            .map(|p| p.services.values().flat_map(|s| hairpin_of(s)))
            .into_iter()
            .flatten()
            .collect();
        for h in before.difference(&now) {
            self.deletes.push(HAIRPIN, h);
        }
        for h in now.difference(&before) {
            self.adds.push(HAIRPIN, h);
        }
    }

    /// Stale per-service chains, selection chains and affinity sets: what the kernel, or
    /// a previous state's changed and removed services, have and this sync does not.
    /// Chains are flushed in `text` and deleted by the returned second transaction;
    /// affinity sets are deleted there too, after the chains that update or read them
    /// (the kernel refuses to delete a set a flushed rule of the same transaction used:
    /// EBUSY). An unchanged service keeps its chains: only the kernel's list is checked
    /// against them.
    fn stale(&mut self, plan: &SyncPlan, text: &mut String, deleted: &mut Vec<String>) -> String {
        if !plan.existing_chains.is_empty() {
            for o in &self.unchanged {
                self.active.extend(o.chains.iter().cloned());
            }
        }
        let mut stale: BTreeSet<&String> = plan.existing_chains.iter().collect();
        if self.partial {
            stale.extend(self.replaced.iter().flat_map(|s| s.chains.iter()));
        } else {
            let prev = plan.previous.iter().flat_map(|p| p.services.values());
            stale.extend(prev.flat_map(|s| s.chains.iter()));
        }
        let t = &self.t;
        let (mut cleanup, mut sets) = (String::new(), String::new());
        for c in stale.into_iter().filter(|c| !self.active.contains(*c)) {
            if c.starts_with("affinity-") {
                let _ = writeln!(sets, "delete set {t} {c}");
            } else if is_service_chain(c) || is_select_chain(c) {
                let _ = writeln!(text, "flush chain {t} {c}");
                let _ = writeln!(cleanup, "delete chain {t} {c}");
                deleted.push(c.clone());
            }
        }
        cleanup.push_str(&sets);
        cleanup
    }
}

/// Declare the endpoint maps. `nft` 1.0.6 cannot add a rule that reads one of them once
/// it exists in the kernel (it rebuilds the `typeof` of `ip daddr . th dport` from the
/// kernel and fails with "conflicting protocols specified: ip vs. th"); so a full sync
/// deletes and makes them anew in its transaction before writing the selection chains,
/// and a partial sync writes no selection chain (it becomes a full sync when it needs a
/// new one). Made anew, the maps are also empty when the rules bind them: the kernel
/// walks a map's elements each time a chain first binds it.
fn write_endpoint_maps(out: &mut String, t: &str, x: &str) {
    for (w, nodeport) in ENDPOINT_MAPS {
        let (name, key, by) = if nodeport {
            (format!("{w}-nodeport-endpoints"), String::new(), "NodePort")
        } else {
            (
                format!("{w}-endpoints"),
                format!("{x} daddr . "),
                "destination",
            )
        };
        let _ = writeln!(
            out,
            "add map {t} {name} {{ typeof {key}meta l4proto . th dport . numgen random mod 1 : {x} daddr . th dport ; comment \"{w}-policy endpoints by {by}\" ; }}"
        );
    }
}

/// A full sync's selection part: every selection chain that may exist flushed, the
/// endpoint maps made anew, and the chains in use (and the preset ones) written.
fn write_select_section(
    out: &mut String,
    t: &str,
    x: &str,
    known: &BTreeSet<String>,
    wanted: &BTreeSet<String>,
) {
    for c in known.union(wanted) {
        let _ = writeln!(out, "add chain {t} {c}\nflush chain {t} {c}");
    }
    // Declared first, so that the delete cannot fail on a table without them.
    write_endpoint_maps(out, t, x);
    for (w, nodeport) in ENDPOINT_MAPS {
        let np = if nodeport { "nodeport-" } else { "" };
        let _ = writeln!(out, "delete map {t} {w}-{np}endpoints");
    }
    write_endpoint_maps(out, t, x);
    for c in wanted {
        write_select_chain(out, t, x, c);
    }
}

/// The preset selection chains (see [`PRESET_SELECT`]).
fn preset_select() -> impl Iterator<Item = String> {
    (1..=PRESET_SELECT).flat_map(|n| [Select::Cluster.chain(n), Select::Local.chain(n)])
}

/// A shared selection chain: one `dnat … numgen random mod N map` per endpoint map, the
/// destination's (ClusterIP, external and LoadBalancer IPs) first, then the NodePort's.
fn write_select_chain(out: &mut String, t: &str, x: &str, chain: &str) {
    let Some((w, n)) = chain.split_once("-endpoints-") else {
        return;
    };
    let _ = writeln!(
        out,
        "add rule {t} {chain} dnat {x} to {x} daddr . meta l4proto . th dport . numgen random mod {n} map @{w}-endpoints\n\
         add rule {t} {chain} dnat {x} to meta l4proto . th dport . numgen random mod {n} map @{w}-nodeport-endpoints"
    );
}

/// A service's elements other than its hairpin pairs, as (map, element).
fn own_elements(s: &ServiceState) -> impl Iterator<Item = (&str, &str)> {
    s.elements
        .iter()
        .filter_map(|e| e.split_once('\t'))
        .filter(|(m, _)| *m != HAIRPIN)
}

/// A service's hairpin pairs.
fn hairpin_of(s: &ServiceState) -> impl Iterator<Item = &str> {
    s.elements
        .iter()
        .filter_map(|e| e.split_once('\t'))
        .filter(|(m, _)| *m == HAIRPIN)
        .map(|(_, e)| e)
}

/// Element commands gathered per map, written as one `add element` / `delete element`
/// per map and thousand elements: `nft` parses a list far faster than a command each.
#[derive(Default)]
struct Elements {
    maps: Vec<(String, Vec<String>)>,
}

impl Elements {
    fn push(&mut self, map: &str, e: &str) {
        match self.maps.iter_mut().find(|(m, _)| m == map) {
            Some((_, v)) => v.push(e.to_string()),
            None => self.maps.push((map.to_string(), vec![e.to_string()])),
        }
    }

    fn write(&self, verb: &str, t: &str, out: &mut String) {
        for (map, els) in &self.maps {
            for chunk in els.chunks(1000) {
                let _ = writeln!(out, "{verb} element {t} {map} {{ {} }}", chunk.join(", "));
            }
        }
    }
}

/// Remove everything this backend installs: both tables (`nft -f` input; a missing table
/// is created first so the delete cannot fail).
pub fn cleanup_text() -> String {
    let mut s = String::new();
    for x in ["ip", "ip6"] {
        let _ = writeln!(s, "add table {x} {TABLE}\ndelete table {x} {TABLE}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_kube_proxys_vectors() {
        // From kube-proxy's TestOverallNFTablesRules (spec §2.1).
        for (name, hash) in [
            ("ns1/svc1/tcp/p80", "ULMVA6XW"),
            ("ns2/svc2/tcp/p80", "42NFTM6N"),
            ("ns5/svc5/tcp/p80", "HVFWP5L3"),
            ("ns1/svc1/tcp/p80__10.180.0.1/80", "5OJB2KTY"),
            ("ns5/svc5/tcp/p80__10.180.0.3/80", "GTK6MW7G"),
        ] {
            assert_eq!(hash_and_truncate(name), format!("{hash}-{name}"));
        }
        let long = "x".repeat(300);
        let h = hash_and_truncate(&long);
        assert_eq!(h.len(), 240);
        assert!(h.ends_with("..."));
        assert!(is_service_chain("service-ULMVA6XW-ns1/svc1/tcp/p80"));
        assert!(!is_service_chain("services"));
    }

    #[test]
    fn element_keys_drop_comment_and_value() {
        assert_eq!(
            element_key("10.0.0.1 . tcp . 80 comment \"ns/s:p\" : goto reject-chain"),
            "10.0.0.1 . tcp . 80"
        );
        assert_eq!(element_key("tcp . 3001 : goto external-X"), "tcp . 3001");
        assert_eq!(element_key("10.0.0.1"), "10.0.0.1");
    }
}
