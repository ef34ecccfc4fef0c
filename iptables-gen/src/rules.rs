//! Rule generation: the four line buffers of kube-proxy's `syncProxyRules` (spec §3-§4),
//! written straight into strings (10k services are ~40 MB of text).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use crate::model::Objects;
use crate::names;
use crate::proxier::{
    self, Categorized, Endpoint, Group, GroupModel, Policy, ServicePort, categorize,
};
use crate::{Config, Family, LocalDetector};

pub const LARGE_CLUSTER_ENDPOINTS_THRESHOLD: usize = 1000;
const NFACCT_INVALID: &str = "ct_state_invalid_dropped_pkts";
const NFACCT_LOCALHOST_NPS: &str = "localhost_nps_accepted_pkts";

/// What one sync leaves for the next partial sync.
#[derive(Debug, Default, Clone)]
pub struct SyncState {
    /// Key of the service digests: a secret of this state, so a crafted object cannot
    /// collide with its previous digest and keep stale rules.
    pub seed: [u64; 2],
    /// Config and large-cluster mode the rules were written with; a change rewrites all.
    pub fingerprint: u64,
    /// Per service (`namespace/name`, including slices whose service is absent).
    pub services: foldhash::HashMap<Arc<str>, Arc<ServiceState>>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServiceState {
    /// Digest of the service and its EndpointSlices as read.
    pub digest: u64,
    /// Its share of the endpoint count that decides large-cluster mode.
    pub endpoints: usize,
    /// Output order: (svc port name, protocol) of its first port; None without ports.
    pub order: Option<(String, String)>,
    /// Its per-service chains (KUBE-SVC/SVL/EXT/FW/SEP).
    pub chains: Vec<String>,
    /// Its lines in the shared chains (filter, nat), kept in memory between syncs so an
    /// unchanged service costs a copy; a state read from disk has none and re-renders them.
    pub shared: Option<(String, String)>,
    /// nftables backend: its set and map elements, `MAP<TAB>ELEMENT` (deleted when it
    /// changes or goes).
    pub elements: Vec<String>,
}

/// What to write this time.
#[derive(Debug, Default, Clone)]
pub struct SyncPlan {
    /// Write every service's nat chains (otherwise only changed ones).
    pub full: bool,
    /// The last applied sync.
    pub previous: Option<SyncState>,
    /// Per-service chains believed to exist in the kernel besides the previous state's
    /// (from `iptables-save`): the ones no longer active get `-X`.
    pub existing_chains: BTreeSet<String>,
}

impl SyncPlan {
    /// Everything written, nothing known from before.
    pub fn full() -> SyncPlan {
        SyncPlan {
            full: true,
            ..Default::default()
        }
    }
}

/// The generated restore input and what a later partial sync needs to know.
#[derive(Debug, Default)]
pub struct Generated {
    pub text: String,
    pub state: SyncState,
    /// Services whose nat chains were (re)written.
    pub written_services: usize,
    /// Chains deleted (`-X`).
    pub deleted_chains: Vec<String>,
    pub large_cluster: bool,
    /// Problems found in the input (skipped IPs, ...), for stderr.
    pub warnings: Vec<String>,
    /// nftables backend: a second transaction, run after `text`, deleting the chains
    /// `text` flushed (not possible in the same transaction before Linux 6.2).
    pub cleanup: String,
    /// Every service was written (not a partial sync).
    pub full: bool,
}

impl Generated {
    /// Every per-service chain active after this sync.
    pub fn active_chains(&self) -> BTreeSet<String> {
        self.state
            .services
            .values()
            .flat_map(|s| s.chains.iter().cloned())
            .collect()
    }
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
    /// The buffer, when this one writes (hot paths append to it directly, with the same
    /// single-space layout as `line`).
    fn on(&mut self) -> Option<&mut String> {
        self.1.then_some(&mut self.0)
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

/// `--probability` of the k-th of n endpoints: 1/(n-k), Go's `%0.10f`.
fn push_probability(b: &mut String, remaining: usize) {
    let _ = write!(b, "{:.10}", 1.0 / remaining as f64);
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

pub(crate) fn random_seed() -> [u64; 2] {
    use std::hash::BuildHasher;
    // RandomState's keys come from the OS's random source.
    let r = std::collections::hash_map::RandomState::new();
    [r.hash_one(1u8), r.hash_one(2u8)]
}

/// Persisted digests (the state file outlives the binary): SipHash-1-3 keyed with the
/// state's 128-bit secret (`k0`, `k1`) over the bytes fed to this hasher. Integers are
/// fed little-endian, `usize` and `isize` as 64 bits, so the output is the same on every
/// platform and build, unlike std's or foldhash's hashers (whose algorithms are not
/// specified). Objects are fed
/// through their derived `Hash` (fields in declaration order; a string as its bytes and
/// 0xff; an `Option` or enum as its variant index, then its fields; a sequence as its
/// length, then its items).
struct StableDigest(siphasher::sip::SipHasher13);

impl StableDigest {
    fn keyed(seed: [u64; 2]) -> StableDigest {
        StableDigest(siphasher::sip::SipHasher13::new_with_keys(seed[0], seed[1]))
    }

    /// A length-prefixed field (unambiguous next to the one after it).
    fn field(&mut self, bytes: &[u8]) {
        self.write_u64(bytes.len() as u64);
        self.write(bytes);
    }
}

impl Hasher for StableDigest {
    fn finish(&self) -> u64 {
        self.0.finish()
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }
    fn write_u8(&mut self, i: u8) {
        self.0.write(&[i]);
    }
    fn write_u16(&mut self, i: u16) {
        self.0.write(&i.to_le_bytes());
    }
    fn write_u32(&mut self, i: u32) {
        self.0.write(&i.to_le_bytes());
    }
    fn write_u64(&mut self, i: u64) {
        self.0.write(&i.to_le_bytes());
    }
    fn write_u128(&mut self, i: u128) {
        self.0.write(&i.to_le_bytes());
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn write_i8(&mut self, i: i8) {
        self.write_u8(i as u8);
    }
    fn write_i16(&mut self, i: i16) {
        self.write_u16(i as u16);
    }
    fn write_i32(&mut self, i: i32) {
        self.write_u32(i as u32);
    }
    fn write_i64(&mut self, i: i64) {
        self.write_u64(i as u64);
    }
    fn write_i128(&mut self, i: i128) {
        self.write_u128(i as u128);
    }
    fn write_isize(&mut self, i: isize) {
        self.write_u64(i as u64);
    }
}

/// Keyed by the state's secret, so a crafted object cannot be made to keep its previous
/// digest. Objects from the API server carry a `resourceVersion`, which changes on every
/// write (what kube-proxy's watch reacts to): when the service and all its slices have
/// one, the names and those are the digest (O(objects)); otherwise the whole content is
/// (O(endpoints)).
pub(crate) fn group_digest(seed: [u64; 2], g: &Group) -> u64 {
    let mut h = StableDigest::keyed(seed);
    let versioned = g
        .service
        .is_none_or(|s| s.metadata.resource_version.is_some())
        && g.slices
            .iter()
            .all(|s| s.metadata.resource_version.is_some());
    fn rv(m: &crate::model::Meta) -> &str {
        m.resource_version.as_deref().unwrap_or("")
    }
    if versioned {
        h.field(b"versions");
        match g.service {
            Some(s) => {
                h.field(s.metadata.name.as_bytes());
                h.field(rv(&s.metadata).as_bytes());
            }
            None => h.field(b""),
        }
        h.write_u64(g.slices.len() as u64);
        for sl in &g.slices {
            h.field(sl.metadata.name.as_bytes());
            h.field(rv(&sl.metadata).as_bytes());
        }
    } else {
        h.field(b"content");
        g.service.hash(&mut h);
        g.slices.hash(&mut h);
    }
    h.finish()
}

/// Settings that change per-service text, and large-cluster mode (their JSON, digested as
/// above with a zero key).
pub(crate) fn config_fingerprint(cfg: &Config, large: bool) -> u64 {
    let mut h = StableDigest::keyed([0, 0]);
    h.field(&serde_json::to_vec(cfg).unwrap_or_default());
    h.write_u8(u8::from(large));
    h.finish()
}

/// Generate the restore input for `objs` (spec §3-§4, §6). A partial sync (`plan.previous`
/// without `full`) re-renders only services whose objects changed; an unchanged service's
/// shared-chain lines are copied from the previous state and its chains left alone.
pub fn generate(cfg: &Config, objs: &Objects, plan: &SyncPlan) -> Generated {
    let groups = proxier::groups(objs);
    let prev = plan.previous.as_ref();
    let seed = prev.map_or_else(random_seed, |p| p.seed);
    let mut sel = select(cfg, &groups, plan, seed);
    let mut t = Tables::with_fixed_rules(cfg, groups.len(), &sel);
    let mut out = Generated {
        large_cluster: sel.large,
        warnings: std::mem::take(&mut sel.warnings),
        ..Default::default()
    };
    out.state.seed = seed;
    out.state.fingerprint = sel.fingerprint;
    let model_order: Vec<OrderKey<'_>> = sel
        .models
        .iter()
        .map(|m| {
            m.as_ref()
                .and_then(|m| m.ports.first())
                .map(|p| (p.svc_port_name(), p.protocol))
        })
        .collect();
    let order = output_order(groups.len(), &sel, &model_order);
    let written = render_services(
        cfg,
        &groups,
        prev,
        &sel,
        (&order, &model_order),
        &mut t,
        &mut out,
    );
    let stale = stale_chains(plan, written, &mut out);
    for c in &stale {
        t.nat_chains.chain(c);
    }
    for c in &stale {
        t.nat_rules.line(&["-X", c]);
    }
    out.deleted_chains = stale;
    nodeports_jump(cfg, &mut t.nat_rules);
    forward_rules(cfg, &mut t.filter_rules);
    out.text = t.assemble();
    out
}

/// A model's output order key: its first port's (svc port name, protocol).
type OrderKey<'a> = Option<(String, &'a str)>;

/// Which services a sync re-renders: their digests, the previous state of each kept one,
/// and the models of the others (and of kept ones whose lines must be rendered again).
struct Selection<'p> {
    digests: Vec<u64>,
    models: Vec<Option<GroupModel>>,
    kept: Vec<Option<(&'p Arc<str>, &'p Arc<ServiceState>)>>,
    /// All endpoints, counted for large-cluster mode.
    total: usize,
    large: bool,
    fingerprint: u64,
    warnings: Vec<String>,
}

fn select<'p>(
    cfg: &Config,
    groups: &[proxier::Group],
    plan: &'p SyncPlan,
    seed: [u64; 2],
) -> Selection<'p> {
    let prev = plan.previous.as_ref();
    // Digests, and the models of what changed (the rest is counted from the state).
    let mut models: Vec<Option<GroupModel>> = Vec::with_capacity(groups.len());
    let mut kept: Vec<Option<(&Arc<str>, &Arc<ServiceState>)>> = Vec::with_capacity(groups.len());
    let mut digests = Vec::with_capacity(groups.len());
    let mut total = 0usize;
    let mut key = String::new();
    for g in groups {
        let d = group_digest(seed, g);
        digests.push(d);
        let same = prev
            .filter(|_| !plan.full)
            .and_then(|p| p.services.get_key_value(g.key(&mut key)))
            .filter(|(_, s)| s.digest == d);
        match same {
            Some((_, s)) => {
                total += s.endpoints;
                models.push(None);
            }
            None => {
                let m = proxier::build_group(cfg, g);
                total += m.total_endpoints;
                models.push(Some(m));
            }
        }
        kept.push(same);
    }
    let large = total > LARGE_CLUSTER_ENDPOINTS_THRESHOLD;
    let fingerprint = config_fingerprint(cfg, large);
    if prev.is_some_and(|p| p.fingerprint != fingerprint) {
        kept.iter_mut().for_each(|k| *k = None);
    }
    // A kept service without its shared lines in memory (state read from disk), or one
    // re-rendered after a config change, needs its model.
    for (i, g) in groups.iter().enumerate() {
        if models[i].is_none() && kept[i].is_none_or(|(_, k)| k.shared.is_none()) {
            models[i] = Some(proxier::build_group(cfg, g));
        }
    }
    let mut warnings = Vec::new();
    for m in models.iter_mut().flatten() {
        warnings.append(&mut m.warnings);
    }
    Selection {
        digests,
        models,
        kept,
        total,
        large,
        fingerprint,
        warnings,
    }
}

/// The restore input's four parts, filled in order.
struct Tables {
    filter_chains: Buf,
    filter_rules: Buf,
    nat_chains: Buf,
    nat_rules: Buf,
}

impl Tables {
    /// The fixed chains' declarations and the fixed rules (spec §3.1).
    fn with_fixed_rules(cfg: &Config, services: usize, sel: &Selection) -> Tables {
        let mark = cfg.masquerade_mark.as_str();
        let v4 = cfg.family == Family::V4;
        let mut t = Tables {
            filter_chains: Buf::new(),
            filter_rules: Buf::new(),
            nat_chains: Buf::new(),
            nat_rules: Buf::new(),
        };
        if sel.kept.iter().all(Option::is_none) {
            // A full render (measured: ~1 KiB per service and ~270 B per endpoint of
            // rules, ~35 B per endpoint of declarations), with room for the filter table.
            t.nat_rules
                .0
                .reserve(services * 1200 + sel.total * 300 + 65536);
            t.nat_chains.0.reserve(services * 100 + sel.total * 40);
        }
        for c in [
            "KUBE-SERVICES",
            "KUBE-EXTERNAL-SERVICES",
            "KUBE-FORWARD",
            "KUBE-NODEPORTS",
            "KUBE-PROXY-FIREWALL",
        ] {
            t.filter_chains.chain(c);
        }
        let localhost_nodeports = cfg.localhost_nodeports && v4;
        if localhost_nodeports {
            t.filter_chains.chain("KUBE-FIREWALL");
        }
        for c in [
            "KUBE-SERVICES",
            "KUBE-NODEPORTS",
            "KUBE-POSTROUTING",
            "KUBE-MARK-MASQ",
        ] {
            t.nat_chains.chain(c);
        }
        let mark_mask = format!("{mark}/{mark}");
        t.nat_rules.line(&[
            "-A KUBE-POSTROUTING -m mark ! --mark",
            &mark_mask,
            "-j RETURN",
        ]);
        t.nat_rules
            .line(&["-A KUBE-POSTROUTING -j MARK --xor-mark", mark]);
        t.nat_rules.line(&[
            "-A KUBE-POSTROUTING",
            &comment("kubernetes service traffic requiring SNAT"),
            "-j MASQUERADE",
            if cfg.random_fully {
                "--random-fully"
            } else {
                ""
            },
        ]);
        t.nat_rules
            .line(&["-A KUBE-MARK-MASQ -j MARK --or-mark", mark]);
        if localhost_nodeports {
            t.filter_rules.line(&[
                "-A KUBE-FIREWALL",
                &comment("block incoming localnet connections"),
                "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
            ]);
        }
        t
    }

    /// `*filter`, its chains and rules, then `*nat`'s. Everything before the nat rules
    /// goes in front of them in their own buffer: one move of the (largest) buffer
    /// instead of a copy into a new one.
    fn assemble(self) -> String {
        let mut head = String::with_capacity(
            self.filter_chains.0.len() + self.filter_rules.0.len() + self.nat_chains.0.len() + 32,
        );
        head.push_str("*filter\n");
        head.push_str(&self.filter_chains.0);
        head.push_str(&self.filter_rules.0);
        head.push_str("COMMIT\n*nat\n");
        head.push_str(&self.nat_chains.0);
        let mut text = self.nat_rules.0;
        text.reserve(head.len() + 8);
        text.insert_str(0, &head);
        text.push_str("COMMIT\n");
        text
    }
}

/// Output order: by the first port's (svc port name, protocol), as kube-proxy sorts;
/// groups without ports (they write nothing) last. `model_order` holds each model's key.
fn output_order(n: usize, sel: &Selection, model_order: &[OrderKey<'_>]) -> Vec<usize> {
    let order: Vec<Option<(&str, &str)>> = (0..n).map(|i| order_key(sel, model_order, i)).collect();
    let mut idx: Vec<usize> = (0..n).filter(|&i| order[i].is_some()).collect();
    idx.sort_unstable_by(|&a, &b| order[a].cmp(&order[b]));
    idx.extend((0..n).filter(|&i| order[i].is_none()));
    idx
}

/// Group `i`'s output order key: from its model, else from its kept state.
fn order_key<'a>(
    sel: &'a Selection,
    model_order: &'a [OrderKey<'a>],
    i: usize,
) -> Option<(&'a str, &'a str)> {
    match (&model_order[i], sel.kept[i]) {
        (Some((a, b)), _) => Some((a.as_str(), *b)),
        (None, Some((_, k))) if sel.models[i].is_none() => {
            k.order.as_ref().map(|(a, b)| (a.as_str(), b.as_str()))
        }
        _ => None,
    }
}

/// What [`render_services`] tells the stale-chain pass: previous chains of services that
/// were re-rendered or went away, and the re-rendered services.
struct Written<'p> {
    candidates: BTreeSet<&'p str>,
    rewritten: Vec<Arc<str>>,
}

/// Every service's lines, in `order`: a kept one's copied from its state, the others
/// rendered (their chains too, unless kept); `out.state.services` filled.
fn render_services<'p>(
    cfg: &Config,
    groups: &[proxier::Group],
    prev: Option<&'p SyncState>,
    sel: &Selection<'p>,
    (order, model_order): (&[usize], &[OrderKey<'_>]),
    t: &mut Tables,
    out: &mut Generated,
) -> Written<'p> {
    // Mostly unchanged: start from the previous map (refcount copies) rather than
    // inserting every service again.
    let cloned = match prev {
        Some(p) if sel.kept.iter().any(Option::is_some) => {
            out.state.services = p.services.clone();
            true
        }
        _ => {
            out.state.services.reserve(groups.len());
            false
        }
    };
    let mut w = Written {
        candidates: BTreeSet::new(),
        rewritten: Vec::new(),
    };
    let mut key = String::new();
    // Previous services still present: when all are, none went away (no scan needed).
    let mut seen_prev = 0usize;
    for &i in order {
        let g = &groups[i];
        if let Some((k, st)) = sel.kept[i] {
            if let Some((f, n)) = &st.shared {
                t.filter_rules.0.push_str(f);
                t.nat_rules.0.push_str(n);
                if !cloned {
                    out.state.services.insert(Arc::clone(k), Arc::clone(st));
                }
                seen_prev += 1;
                continue;
            }
        }
        let Some(m) = &sel.models[i] else { continue };
        let write_chains = sel.kept[i].is_none();
        let (mut f, mut n) = (Buf::new(), Buf::new());
        // Chains are written straight into the nat buffers (no per-service copy); the
        // service's KUBE-SERVICES lines go in front of its chain rules afterwards.
        let pos = t.nat_rules.0.len();
        let (mut off_chains, mut off_rules) = (Buf::off(), Buf::off());
        let (svc_chains, svc_rules) = if write_chains {
            (&mut t.nat_chains, &mut t.nat_rules)
        } else {
            (&mut off_chains, &mut off_rules)
        };
        let mut chains = Vec::new();
        for (p, sp) in m.ports.iter().enumerate() {
            let eps = m.endpoints_of(p);
            let cat = categorize(sp, eps);
            let mut po = PortOut {
                filter_rules: &mut f,
                nat_rules: &mut n,
                svc_chains: &mut *svc_chains,
                svc_rules: &mut *svc_rules,
                active: &mut chains,
            };
            write_service_port(cfg, sp, eps, &cat, sel.large, &mut po);
        }
        t.filter_rules.0.push_str(&f.0);
        t.nat_rules.0.insert_str(pos, &n.0);
        let k: Arc<str> = Arc::from(g.key(&mut key));
        if prev.is_some_and(|p| p.services.contains_key(&k)) {
            seen_prev += 1;
        }
        if write_chains {
            if !m.ports.is_empty() {
                out.written_services += 1;
            }
            if let Some(old) = prev.and_then(|p| p.services.get(&k)) {
                w.candidates.extend(old.chains.iter().map(String::as_str));
            }
            w.rewritten.push(Arc::clone(&k));
        }
        let chains = match sel.kept[i] {
            Some((_, st)) => st.chains.clone(),
            None => {
                chains.sort();
                chains.dedup();
                chains
            }
        };
        let st = ServiceState {
            digest: sel.digests[i],
            endpoints: m.total_endpoints,
            order: order_key(sel, model_order, i).map(|(a, b)| (a.to_string(), b.to_string())),
            chains,
            shared: Some((f.0, n.0)),
            elements: Vec::new(),
        };
        out.state.services.insert(k, Arc::new(st));
    }
    if let Some(p) = prev {
        if seen_prev != p.services.len() {
            // Some went away (a rare sync): find which.
            let present: foldhash::HashSet<String> = groups
                .iter()
                .map(|g| format!("{}/{}", g.namespace, g.name))
                .collect();
            for (k, old) in &p.services {
                if !present.contains(&**k) {
                    w.candidates.extend(old.chains.iter().map(String::as_str));
                    out.state.services.remove(k);
                }
            }
        }
    }
    w
}

/// Stale per-service chains, sorted: declared (so -X works even if iptables-save missed
/// them) and deleted after every -A line. A previous chain of a re-rendered service can
/// only come back as that service's; a chain seen in the kernel may be anyone's.
fn stale_chains(plan: &SyncPlan, w: Written, out: &mut Generated) -> Vec<String> {
    let rewritten_chains: foldhash::HashSet<&str> = w
        .rewritten
        .iter()
        .filter_map(|k| out.state.services.get(k))
        .flat_map(|s| s.chains.iter().map(String::as_str))
        .collect();
    let all_active: foldhash::HashSet<&str> = if plan.existing_chains.is_empty() {
        foldhash::HashSet::default()
    } else {
        out.state
            .services
            .values()
            .flat_map(|s| s.chains.iter().map(String::as_str))
            .collect()
    };
    let mut stale: BTreeSet<String> = BTreeSet::new();
    for c in w.candidates {
        if !rewritten_chains.contains(c) && !all_active.contains(c) {
            stale.insert(c.to_string());
        }
    }
    for c in &plan.existing_chains {
        if !all_active.contains(c.as_str())
            && names::SERVICE_CHAIN_PREFIXES
                .iter()
                .any(|p| c.starts_with(p))
        {
            stale.insert(c.clone());
        }
    }
    stale.into_iter().collect()
}

/// The NodePorts jump, last in nat KUBE-SERVICES.
fn nodeports_jump(cfg: &Config, nat_rules: &mut Buf) {
    let v4 = cfg.family == Family::V4;
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
        return;
    }
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

/// KUBE-FORWARD, last in filter.
fn forward_rules(cfg: &Config, filter_rules: &mut Buf) {
    let mark = cfg.masquerade_mark.as_str();
    let mark_mask = format!("{mark}/{mark}");
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
}

/// Where one service port's lines go: the shared filter and nat chains, and its own
/// chains (off for an unchanged service in a partial sync).
struct PortOut<'b> {
    filter_rules: &'b mut Buf,
    nat_rules: &'b mut Buf,
    svc_chains: &'b mut Buf,
    svc_rules: &'b mut Buf,
    /// Its per-service chains, as they are declared.
    active: &'b mut Vec<String>,
}

/// One service port being written: its names and what its endpoints make of it.
struct Port<'a> {
    cfg: &'a Config,
    sp: &'a ServicePort,
    eps: &'a [Endpoint],
    cat: &'a Categorized,
    large: bool,
    spn: String,
    proto: String,
    cip: String,
    port: String,
    svc: String,
    svl: String,
    ext: String,
    fw: String,
    pol: Policy,
    uses_fw_chain: bool,
}

impl<'a> Port<'a> {
    fn new(
        cfg: &'a Config,
        sp: &'a ServicePort,
        eps: &'a [Endpoint],
        cat: &'a Categorized,
        large: bool,
    ) -> Port<'a> {
        let spn = sp.svc_port_name();
        let p = sp.protocol;
        let h = names::port_proto_hash(&spn, p);
        Port {
            cfg,
            sp,
            eps,
            cat,
            large,
            proto: format!("-m {p} -p {p}"),
            cip: sp.cluster_ip.to_string(),
            port: sp.port.to_string(),
            svc: names::svc_chain(&h),
            svl: names::svl_chain(&h),
            ext: names::ext_chain(&h),
            fw: names::fw_chain(&h),
            pol: Policy::of(sp, cat),
            uses_fw_chain: cat.has_any && !sp.lb_vips.is_empty() && !sp.source_ranges.is_empty(),
            spn,
        }
    }

    fn internal_chain(&self) -> &str {
        if self.pol.internal_local {
            &self.svl
        } else {
            &self.svc
        }
    }

    fn external_policy_chain(&self) -> &str {
        if self.pol.external_local {
            &self.svl
        } else {
            &self.svc
        }
    }

    /// The filter target and comment for traffic that has nowhere to go.
    fn no_endpoints(&self) -> (&'static str, String) {
        if !self.cat.has_any {
            ("REJECT", format!("{} has no endpoints", self.spn))
        } else {
            ("DROP", format!("{} has no local endpoints", self.spn))
        }
    }

    /// 1. The ClusterIP: to the internal chain, or filtered when there is nowhere to go.
    fn cluster_ip(&self, out: &mut PortOut) {
        if self.pol.has_internal {
            let c = comment(&format!("{} cluster IP", self.spn));
            out.nat_rules.line(&[
                "-A KUBE-SERVICES",
                &c,
                &self.proto,
                "-d",
                &self.cip,
                "--dport",
                &self.port,
                "-j",
                self.internal_chain(),
            ]);
        } else {
            let (target, why) = self.no_endpoints();
            let c = comment(&why);
            out.filter_rules.line(&[
                "-A KUBE-SERVICES",
                &c,
                &self.proto,
                "-d",
                &self.cip,
                "--dport",
                &self.port,
                "-j",
                target,
            ]);
        }
    }

    /// 2. External IPs.
    fn external_ips(&self, out: &mut PortOut) {
        let (target, why) = self.no_endpoints();
        let nothing = comment(&why);
        let c = comment(&format!("{} external IP", self.spn));
        for eip in &self.sp.external_ips {
            let e = eip.to_string();
            if self.cat.has_any {
                out.nat_rules.line(&[
                    "-A KUBE-SERVICES",
                    &c,
                    &self.proto,
                    "-d",
                    &e,
                    "--dport",
                    &self.port,
                    "-j",
                    &self.ext,
                ]);
            }
            if !self.pol.has_external {
                out.filter_rules.line(&[
                    "-A KUBE-EXTERNAL-SERVICES",
                    &nothing,
                    &self.proto,
                    "-d",
                    &e,
                    "--dport",
                    &self.port,
                    "-j",
                    target,
                ]);
            }
        }
    }

    /// 3. Load balancer VIPs (through the firewall chain when source ranges apply).
    fn load_balancers(&self, out: &mut PortOut) {
        let lb_chain = if self.uses_fw_chain {
            &self.fw
        } else {
            &self.ext
        };
        let c = comment(&format!("{} loadbalancer IP", self.spn));
        let dropped = comment(&format!("{} traffic not accepted by {}", self.spn, self.fw));
        for vip in &self.sp.lb_vips {
            let v = vip.to_string();
            if self.cat.has_any {
                out.nat_rules.line(&[
                    "-A KUBE-SERVICES",
                    &c,
                    &self.proto,
                    "-d",
                    &v,
                    "--dport",
                    &self.port,
                    "-j",
                    lb_chain,
                ]);
            }
            if self.uses_fw_chain {
                out.filter_rules.line(&[
                    "-A KUBE-PROXY-FIREWALL",
                    &dropped,
                    &self.proto,
                    "-d",
                    &v,
                    "--dport",
                    &self.port,
                    "-j DROP",
                ]);
            }
        }
        if !self.pol.has_external {
            let (target, why) = self.no_endpoints();
            let nothing = comment(&why);
            for vip in &self.sp.lb_vips {
                let v = vip.to_string();
                out.filter_rules.line(&[
                    "-A KUBE-EXTERNAL-SERVICES",
                    &nothing,
                    &self.proto,
                    "-d",
                    &v,
                    "--dport",
                    &self.port,
                    "-j",
                    target,
                ]);
            }
        }
    }

    /// 4. The NodePort (and its localhost form with the nfacct counter).
    fn node_port(&self, out: &mut PortOut) {
        if self.sp.node_port == 0 {
            return;
        }
        let np = self.sp.node_port.to_string();
        let c = comment(&self.spn);
        if self.cat.has_any {
            if self.cfg.localhost_nodeports
                && self.cfg.family == Family::V4
                && self.cfg.nfacct.contains(NFACCT_LOCALHOST_NPS)
            {
                out.nat_rules.line(&[
                    "-A KUBE-NODEPORTS",
                    &c,
                    &self.proto,
                    "-d 127.0.0.0/8 --dport",
                    &np,
                    "-m nfacct --nfacct-name",
                    NFACCT_LOCALHOST_NPS,
                    "-j",
                    &self.ext,
                ]);
            }
            out.nat_rules.line(&[
                "-A KUBE-NODEPORTS",
                &c,
                &self.proto,
                "--dport",
                &np,
                "-j",
                &self.ext,
            ]);
        }
        if !self.pol.has_external {
            let (target, why) = self.no_endpoints();
            out.filter_rules.line(&[
                "-A KUBE-EXTERNAL-SERVICES",
                &comment(&why),
                "-m addrtype --dst-type LOCAL",
                &self.proto,
                "--dport",
                &np,
                "-j",
                target,
            ]);
        }
    }

    /// 5. The health check node port is accepted.
    fn health_check(&self, out: &mut PortOut) {
        if self.sp.health_check_node_port != 0 {
            out.filter_rules.line(&[
                "-A KUBE-NODEPORTS",
                &comment(&format!("{} health check node port", self.spn)),
                "-m tcp -p tcp --dport",
                &self.sp.health_check_node_port.to_string(),
                "-j ACCEPT",
            ]);
        }
    }

    /// 6. Masquerade internal traffic from outside the pod network (or all of it).
    fn internal_masquerade(&self, out: &mut PortOut) {
        if !self.pol.has_internal {
            return;
        }
        let head = format!("-A {}", self.internal_chain());
        let c = comment(&format!("{} cluster IP", self.spn));
        let (proto, cip, port) = (&self.proto, &self.cip, &self.port);
        if self.cfg.masquerade_all {
            out.svc_rules.line(&[
                &head,
                &c,
                proto,
                "-d",
                cip,
                "--dport",
                port,
                "-j KUBE-MARK-MASQ",
            ]);
        } else if let Some(not_local) = self.cfg.local_detector.if_not_local() {
            out.svc_rules.line(&[
                &head,
                &c,
                proto,
                "-d",
                cip,
                "--dport",
                port,
                &not_local,
                "-j KUBE-MARK-MASQ",
            ]);
        }
    }

    /// 7. The EXT chain: masquerade, or short-circuit pod and host traffic for eTP=Local.
    fn external_chain(&self, out: &mut PortOut) {
        if !self.pol.uses_external_chain {
            return;
        }
        let (spn, ext, svc) = (&self.spn, &self.ext, &self.svc);
        out.svc_chains.chain(ext);
        out.active.push(ext.clone());
        let head = format!("-A {ext}");
        if !self.pol.external_local {
            out.svc_rules.line(&[
                &head,
                &comment(&format!(
                    "masquerade traffic for {spn} external destinations"
                )),
                "-j KUBE-MARK-MASQ",
            ]);
        } else {
            if let Some(local) = self.cfg.local_detector.if_local() {
                out.svc_rules.line(&[
                    &head,
                    &comment(&format!("pod traffic for {spn} external destinations")),
                    &local,
                    "-j",
                    svc,
                ]);
            }
            out.svc_rules.line(&[
                &head,
                &comment(&format!(
                    "masquerade LOCAL traffic for {spn} external destinations"
                )),
                "-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
            ]);
            out.svc_rules.line(&[
                &head,
                &comment(&format!(
                    "route LOCAL traffic for {spn} external destinations"
                )),
                "-m addrtype --src-type LOCAL -j",
                svc,
            ]);
        }
        if self.pol.has_external {
            out.svc_rules
                .line(&[&head, "-j", self.external_policy_chain()]);
        }
    }

    /// 8. The FW chain: listed source ranges (and the VIPs, for the node's own hairpin
    ///    traffic) go on; the rest is dropped by KUBE-PROXY-FIREWALL.
    fn firewall_chain(&self, out: &mut PortOut) {
        if !self.uses_fw_chain {
            return;
        }
        let (spn, fw, ext) = (&self.spn, &self.fw, &self.ext);
        out.svc_chains.chain(fw);
        out.active.push(fw.clone());
        let head = format!("-A {fw}");
        let c = comment(&format!("{spn} loadbalancer IP"));
        for r in &self.sp.source_ranges {
            out.svc_rules
                .line(&[&head, &c, "-s", &r.to_string(), "-j", ext]);
        }
        if let Some(node_ip) = self.cfg.node_ip {
            if self.sp.source_ranges.iter().any(|r| r.contains(&node_ip)) {
                for vip in &self.sp.lb_vips {
                    out.svc_rules
                        .line(&[&head, &c, "-s", &vip.to_string(), "-j", ext]);
                }
            }
        }
        out.svc_rules.line(&[
            &head,
            &comment(&format!(
                "other traffic to {spn} will be dropped by KUBE-PROXY-FIREWALL"
            )),
        ]);
    }

    /// 9.-11. The SVC and SVL chains spreading over the endpoints, and a SEP chain per
    /// endpoint (hairpin masquerade, affinity, DNAT).
    fn endpoint_chains(&self, out: &mut PortOut) {
        let (sp, eps, cat, spn) = (self.sp, self.eps, self.cat, &self.spn);
        // One SEP name per reachable endpoint (a sha256 each: computed once).
        let mut seps: Vec<Option<String>> = vec![None; eps.len()];
        for &i in &cat.all_reachable {
            seps[i] = Some(names::sep_chain(spn, sp.protocol, &eps[i].addr));
        }
        let sep_of = |i: usize| seps[i].as_deref().unwrap_or_default();
        for (chain, picked, used) in [
            (&self.svc, &cat.cluster, self.pol.uses_cluster_chain),
            (&self.svl, &cat.local, self.pol.uses_local_chain),
        ] {
            if used {
                out.svc_chains.chain(chain);
                out.active.push(chain.clone());
                endpoint_rules(
                    sp,
                    spn,
                    chain,
                    eps,
                    picked,
                    &sep_of,
                    self.large,
                    out.svc_rules,
                );
            }
        }
        let c = if self.large {
            String::new()
        } else {
            comment(spn)
        };
        for &i in &cat.all_reachable {
            let ep = &eps[i];
            let sep = sep_of(i);
            out.svc_chains.chain(sep);
            out.active.push(sep.to_string());
            let Some(b) = out.svc_rules.on() else {
                continue;
            };
            // -A SEP [comment] -s IP -j KUBE-MARK-MASQ
            // -A SEP [comment] [-m recent --name SEP --set] PROTO -j DNAT --to-destination ADDR
            for masq in [true, false] {
                b.push_str("-A ");
                b.push_str(sep);
                if !c.is_empty() {
                    b.push(' ');
                    b.push_str(&c);
                }
                if masq {
                    let _ = writeln!(b, " -s {} -j KUBE-MARK-MASQ", ep.ip);
                } else {
                    if sp.sticky_seconds.is_some() {
                        b.push_str(" -m recent --name ");
                        b.push_str(sep);
                        b.push_str(" --set");
                    }
                    b.push(' ');
                    b.push_str(&self.proto);
                    b.push_str(" -j DNAT --to-destination ");
                    b.push_str(&ep.addr);
                    b.push('\n');
                }
            }
        }
    }
}

/// One service port's lines (spec §4): its entries in the shared chains, then, unless
/// `out.svc_rules` is off (an unchanged service), its own chains.
fn write_service_port(
    cfg: &Config,
    sp: &ServicePort,
    eps: &[Endpoint],
    cat: &Categorized,
    large: bool,
    out: &mut PortOut,
) {
    let port = Port::new(cfg, sp, eps, cat, large);
    port.cluster_ip(out);
    port.external_ips(out);
    port.load_balancers(out);
    port.node_port(out);
    port.health_check(out);
    if !out.svc_rules.1 {
        return;
    }
    port.internal_masquerade(out);
    port.external_chain(out);
    port.firewall_chain(out);
    port.endpoint_chains(out);
}

#[allow(clippy::too_many_arguments)]
fn endpoint_rules<'a>(
    sp: &ServicePort,
    spn: &str,
    chain: &str,
    eps: &[Endpoint],
    picked: &[usize],
    sep_of: &dyn Fn(usize) -> &'a str,
    large: bool,
    out: &mut Buf,
) {
    let Some(b) = out.on() else { return };
    // "-A CHAIN" and, below the large-cluster threshold, the per-endpoint comment (it
    // always has spaces, so it is quoted).
    let head = |b: &mut String, e: &Endpoint| {
        b.push_str("-A ");
        b.push_str(chain);
        if !large {
            let _ = write!(b, " -m comment --comment \"{spn} -> {}\"", e.addr);
        }
    };
    if let Some(t) = sp.sticky_seconds {
        for &i in picked {
            let sep = sep_of(i);
            head(b, &eps[i]);
            let _ = writeln!(
                b,
                " -m recent --name {sep} --rcheck --seconds {t} --reap -j {sep}"
            );
        }
    }
    let n = picked.len();
    for (k, &i) in picked.iter().enumerate() {
        head(b, &eps[i]);
        if k < n - 1 {
            b.push_str(" -m statistic --mode random --probability ");
            push_probability(b, n - k);
        }
        b.push_str(" -j ");
        b.push_str(sep_of(i));
        b.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probability(n: usize) -> String {
        let mut s = String::new();
        push_probability(&mut s, n);
        s
    }

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
