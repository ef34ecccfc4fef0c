//! Setup (transactional: every step pushes an undo, a failure unwinds them all), teardown
//! (idempotent, best effort, keyed on the container id) and check.
//!
//! The node is the calling thread's network namespace; the pod is entered on a dedicated
//! thread (`netns::run_in`), with its own netlink socket.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use netns::NetNs;

use crate::config::{Network, Requested};
use crate::ipam::{AttachmentLock, Store};
use crate::kernel::{Kernel, Real, VethSpec, forwarding_sysctl};
use crate::link::{Link, mac_string};
use crate::masq::{BRIDGE_GROUP, Policy};
use crate::plan::{Plan, PlannedRoute, plan};
use crate::result::{self, CniResult};
use crate::{Error, Mismatch, Result, masq, validate_container_id, validate_ifname};

/// The steps of a setup, in order. Each one that changes something pushes its undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    ReserveAddresses,
    EnsureBridge,
    EnableForwarding,
    CreateVeth,
    BringUpHostVeth,
    ConfigurePod,
    Policy,
}

impl Step {
    pub const ALL: [Step; 7] = [
        Step::ReserveAddresses,
        Step::EnsureBridge,
        Step::EnableForwarding,
        Step::CreateVeth,
        Step::BringUpHostVeth,
        Step::ConfigurePod,
        Step::Policy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::ReserveAddresses => "reserve addresses",
            Step::EnsureBridge => "ensure bridge",
            Step::EnableForwarding => "enable forwarding",
            Step::CreateVeth => "create veth",
            Step::BringUpHostVeth => "bring up host veth",
            Step::ConfigurePod => "configure pod interface",
            Step::Policy => "masquerade and isolation",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The marker on a host veth: its MAC address, a digest of the network and the link's
/// name, set in the request that creates it. GC and teardown touch no link without it.
pub fn host_marker(network: &str, host_veth: &str) -> [u8; 6] {
    marker_mac("host", network, host_veth)
}

/// The marker on the pod end (its MAC address), from the same attachment.
pub fn pod_marker(network: &str, host_veth: &str) -> [u8; 6] {
    marker_mac("pod", network, host_veth)
}

fn marker_mac(end: &str, network: &str, host_veth: &str) -> [u8; 6] {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("podwire-veth\0{end}\0{network}\0{host_veth}").as_bytes());
    // Locally administered, unicast.
    [0x02 | (d[0] & 0xfc), d[1], d[2], d[3], d[4], d[5]]
}

/// Is `l` a host veth this network made?
pub fn is_ours(l: &Link, network: &str) -> bool {
    l.kind.as_deref() == Some("veth") && l.mac == Some(host_marker(network, &l.name))
}

/// What a setup has done so far, newest last.
enum Undo {
    Release(Vec<IpAddr>),
    DeleteLink(u32),
    /// A bridge this call created (by name: its lookup may be what failed).
    DeleteBridgeIfUnused(String),
    /// A gateway address this call put on a bridge that already existed.
    BridgeAddress(u32, IpNet),
    /// This call set an existing bridge up.
    BridgeDown(u32),
    /// This call put an existing bridge (in group 0) in podwire's group.
    BridgeGroup(u32),
    /// A sysctl and the value it had before this call.
    Sysctl(&'static str, String),
    /// This call wrote the network's firewall table; the host veth is this call's own.
    RemovePolicy(String),
}

struct Txn<'a> {
    net: &'a Network,
    id: &'a str,
    ifname: &'a str,
    undo: Vec<Undo>,
}

/// Does any port hang off bridge `index`?
fn has_ports(k: &mut dyn Kernel, index: u32) -> Result<bool> {
    Ok(k.links()?.iter().any(|l| l.controller == Some(index)))
}

impl Txn<'_> {
    /// Run a step; on failure, unwind everything and say which step failed.
    fn step<T>(
        &mut self,
        k: &mut dyn Kernel,
        step: Step,
        f: impl FnOnce(&mut dyn Kernel, &mut Vec<Undo>) -> Result<T>,
    ) -> Result<T> {
        f(k, &mut self.undo).map_err(|e| {
            self.rollback(k);
            Error::Step {
                step,
                source: Box::new(e),
            }
        })
    }

    fn rollback(&mut self, k: &mut dyn Kernel) {
        while let Some(u) = self.undo.pop() {
            let r = match &u {
                Undo::Release(ips) => Store::open(&self.net.data_dir, &self.net.name)
                    .map(|s| s.release_ips(ips, self.id, self.ifname)),
                Undo::DeleteLink(index) => k.delete_link(*index).map(|_| ()),
                Undo::DeleteBridgeIfUnused(name) => match k.link(name) {
                    Ok(Some(br)) if br.kind.as_deref() == Some("bridge") => {
                        match has_ports(k, br.index) {
                            Ok(false) => k.delete_link(br.index).map(|_| ()),
                            other => other.map(|_| ()),
                        }
                    }
                    other => other.map(|_| ()),
                },
                // Shared node state is given back only while no other pod relies on it.
                Undo::BridgeAddress(index, a) => match has_ports(k, *index) {
                    Ok(false) => k.del_address(*index, *a).map(|_| ()),
                    other => other.map(|_| ()),
                },
                Undo::BridgeDown(index) => match has_ports(k, *index) {
                    Ok(false) => k.set_down(*index),
                    other => other.map(|_| ()),
                },
                Undo::BridgeGroup(index) => match has_ports(k, *index) {
                    Ok(false) => k.set_group(*index, 0),
                    other => other.map(|_| ()),
                },
                Undo::Sysctl(path, old) => match any_podwire_veth(k) {
                    Ok(false) => k.write_sysctl(path, old),
                    other => other.map(|_| ()),
                },
                // Under the network's lock: another pod's ADD heals under it too, after
                // its veth exists, so it either is counted here or heals after us.
                Undo::RemovePolicy(own) => Store::open(&self.net.data_dir, &self.net.name)
                    .and_then(|_lock| match other_pods(k, &self.net.name, own) {
                        Ok(false) => k.policy_remove(&self.net.name).map(|_| ()),
                        other => other.map(|_| ()),
                    }),
            };
            if let Err(e) = r {
                eprintln!(
                    "runtime-shim: undo failed (continuing): {}",
                    crate::chain(&e)
                );
            }
        }
    }
}

/// Does the network have a pod on this node other than the one of host veth `own`?
fn other_pods(k: &mut dyn Kernel, network: &str, own: &str) -> Result<bool> {
    Ok(k.links()?
        .iter()
        .any(|l| l.name != own && is_ours(l, network)))
}

/// Does any pod of any podwire network still hang off this node?
fn any_podwire_veth(k: &mut dyn Kernel) -> Result<bool> {
    Ok(k.links()?
        .iter()
        .any(|l| l.kind.as_deref() == Some("veth") && crate::gc::is_podwire_veth(&l.name)))
}

/// Make sure the bridge exists, is up and carries the gateway addresses, pushing an undo
/// for each change. `existing` is the link of that name the caller looked up and checked
/// to be a bridge.
fn ensure_bridge(
    k: &mut dyn Kernel,
    p: &Plan,
    existing: Option<Link>,
    undo: &mut Vec<Undo>,
) -> Result<Link> {
    let br = match existing {
        Some(l) => l,
        None => {
            if k.create_bridge(&p.bridge, p.mtu, p.bridge_mac)? {
                undo.push(Undo::DeleteBridgeIfUnused(p.bridge.clone()));
            }
            let br = k.link(&p.bridge)?.ok_or_else(|| {
                crate::link::nl_err(
                    crate::link::NlOp::FindNewLink,
                    &p.bridge,
                    std::io::Error::from_raw_os_error(nix::libc::ENODEV),
                )
            })?;
            check_is_bridge(&br, &p.bridge)?;
            br
        }
    };
    for a in &p.bridge_addrs {
        if k.add_address(br.index, *a)? {
            undo.push(Undo::BridgeAddress(br.index, *a));
        }
    }
    if !br.up {
        k.set_up(br.index)?;
        undo.push(Undo::BridgeDown(br.index));
    }
    // Isolated networks know other networks' bridges by this group; a bridge someone
    // put in a group of their own keeps it.
    if br.group == 0 {
        k.set_group(br.index, BRIDGE_GROUP)?;
        undo.push(Undo::BridgeGroup(br.index));
    }
    Ok(br)
}

fn check_is_bridge(l: &Link, name: &str) -> Result<()> {
    if l.kind.as_deref() == Some("bridge") {
        return Ok(());
    }
    Err(Error::config(
        "bridge",
        format!(
            "{name} exists and is a {} link, not a bridge; refusing to put pods or a \
             gateway address on it",
            l.kind.as_deref().unwrap_or("plain")
        ),
    ))
}

fn validate_request(id: &str, ifname: &str) -> Result<()> {
    validate_container_id(id)?;
    validate_ifname("ifname", ifname)
}

/// Open a pod's namespace, refusing the one this process runs in: a "pod" interface
/// there would land on the node itself.
pub fn open_pod_netns(path: &Path) -> Result<NetNs> {
    let pod = NetNs::open(path)?;
    refuse_own(&pod, path)?;
    Ok(pod)
}

fn refuse_own(pod: &NetNs, path: &Path) -> Result<()> {
    if *pod == NetNs::current()? {
        return Err(Error::Invalid {
            what: "netns",
            value: path.display().to_string(),
            reason: "is the network namespace runtime-shim itself runs in (the node's); a \
                     pod needs a namespace of its own"
                .into(),
        });
    }
    Ok(())
}

/// Wire the pod namespace at `netns_path` to the network's bridge in the caller's
/// namespace, with the static address or MAC `req` asks for. On error, nothing this
/// call changed is left behind. Calls for one (network, container id, ifname) are
/// serialised.
pub fn setup(
    net: &Network,
    netns_path: &Path,
    id: &str,
    ifname: &str,
    req: &Requested,
) -> Result<CniResult> {
    validate_request(id, ifname)?;
    let pod = open_pod_netns(netns_path)?;
    let lock = AttachmentLock::acquire(net, id, ifname)?;
    let mut k = Real::open()?;
    let at = Attachment {
        pod: &pod,
        netns_path,
        id,
        ifname,
        req,
    };
    let r = setup_with(&mut k, net, &at, Some(&lock));
    // A failed setup undid everything, so its lock file (and note) goes too; but an
    // attachment that is already set up keeps its own.
    if matches!(&r, Err(e) if !matches!(e, Error::AlreadySetUp { .. })) {
        lock.remove();
    }
    r
}

/// One attachment a setup makes: the pod namespace (opened and checked), where it is
/// pinned, the container id, the interface name, and what the runtime asked for.
pub struct Attachment<'a> {
    pub pod: &'a NetNs,
    pub netns_path: &'a Path,
    pub id: &'a str,
    pub ifname: &'a str,
    pub req: &'a Requested,
}

/// [`setup`] over any kernel.
pub fn setup_with(
    k: &mut dyn Kernel,
    net: &Network,
    at: &Attachment,
    lock: Option<&AttachmentLock>,
) -> Result<CniResult> {
    let Attachment {
        pod,
        netns_path,
        id,
        ifname,
        req,
    } = *at;
    validate_request(id, ifname)?;
    let host = crate::plan::host_veth_name(id, ifname);
    if k.link(&host)?.is_some() {
        return Err(Error::AlreadySetUp {
            id: id.into(),
            ifname: ifname.into(),
            veth: host,
        });
    }
    // A link named like the bridge must be one: never a gateway address on eth0 or lo.
    let existing = k.link(&net.bridge)?;
    if let Some(l) = &existing {
        check_is_bridge(l, &net.bridge)?;
    }
    let mut t = Txn {
        net,
        id,
        ifname,
        undo: Vec::new(),
    };
    let allocs = t.step(k, Step::ReserveAddresses, |_, undo| {
        // The lock is held only while allocating.
        let store = Store::open(&net.data_dir, &net.name)?;
        let a = store.allocate_noted(net, id, ifname, lock, &req.ips)?;
        undo.push(Undo::Release(a.iter().map(|a| a.ip).collect()));
        Ok(a)
    })?;
    let p = plan(net, id, ifname, &allocs);
    let br = t.step(k, Step::EnsureBridge, |k, undo| {
        ensure_bridge(k, &p, existing, undo)
    })?;
    t.step(k, Step::EnableForwarding, |k, undo| {
        for (on, v4) in [(p.forward_v4, true), (p.forward_v6, false)] {
            let path = forwarding_sysctl(v4);
            if !on {
                continue;
            }
            // Read first: a write costs more and needs privilege even when nothing changes.
            let old = k.read_sysctl(path)?;
            if old != "1" {
                k.write_sysctl(path, "1")?;
                undo.push(Undo::Sysctl(path, old));
            }
        }
        Ok(())
    })?;
    let host_link = t.step(k, Step::CreateVeth, |k, undo| {
        let v = VethSpec {
            host: p.host_veth.clone(),
            host_mac: host_marker(&net.name, &p.host_veth),
            peer: p.ifname.clone(),
            peer_mac: req.mac.unwrap_or(pod_marker(&net.name, &p.host_veth)),
            mtu: p.mtu,
            controller: br.index,
        };
        let host = k.create_veth(&v, pod)?;
        undo.push(Undo::DeleteLink(host.index));
        Ok(host)
    })?;
    t.step(k, Step::BringUpHostVeth, |k, _| {
        k.bring_up_port(host_link.index, p.hairpin)
    })?;
    let (pod_link, routes) = t.step(k, Step::ConfigurePod, |k, _| k.configure_pod(pod, &p))?;
    // Every ADD proves the network's masquerade (and isolation) is in place and heals it
    // if not; under the network's lock, so the last pod's DEL or a GC cannot remove it
    // between this check and this pod going live.
    t.step(k, Step::Policy, |k, undo| {
        let _lock = Store::open(&net.data_dir, &net.name)?;
        if k.policy_heal(&Policy::of(net))? {
            undo.push(Undo::RemovePolicy(p.host_veth.clone()));
        }
        Ok(())
    })?;
    t.undo.clear();

    let mac = |l: &Link| l.mac.as_ref().map(mac_string).unwrap_or_default();
    Ok(CniResult {
        cni_version: if net.cni_version.is_empty() {
            "1.1.0".into()
        } else {
            net.cni_version.clone()
        },
        interfaces: vec![
            result::Interface {
                name: br.name.clone(),
                mac: mac(&br),
                ..Default::default()
            },
            result::Interface {
                name: host_link.name.clone(),
                mac: mac(&host_link),
                ..Default::default()
            },
            result::Interface {
                name: p.ifname.clone(),
                mac: mac(&pod_link),
                mtu: p.mtu,
                sandbox: Some(netns_path.display().to_string()),
            },
        ],
        ips: p
            .pod_addrs
            .iter()
            .zip(&p.gateways)
            .map(|(a, g)| result::IpConfig {
                address: a.to_string(),
                gateway: Some(g.to_string()),
                interface: Some(2),
            })
            .collect(),
        routes: routes
            .iter()
            .map(|r| result::Route {
                dst: r.dst.to_string(),
                gw: r.gw.map(|g| g.to_string()),
            })
            .collect(),
        dns: net.dns.clone().unwrap_or_else(|| serde_json::json!({})),
    })
}

/// Undo a setup, knowing only the container id: delete the host veth this network made
/// for (id, ifname) (its pod end goes with it) and release the addresses; when it was
/// the network's last pod on the node, remove the network's firewall table too.
/// Succeeds when things are already gone, the namespace included; never touches the
/// bridge or any link without podwire's marker for this attachment.
pub fn teardown(net: &Network, netns_path: Option<&Path>, id: &str, ifname: &str) -> Result<()> {
    validate_request(id, ifname)?;
    let pod = match netns_path.filter(|p| !p.as_os_str().is_empty()) {
        None => None,
        Some(path) => match NetNs::open(path) {
            Ok(ns) => {
                refuse_own(&ns, path)?;
                Some(ns)
            }
            // Gone (poststop), a stale pin, or not a namespace: teardown works by id.
            Err(e) => {
                if !matches!(e, netns::Error::NotFound { .. }) {
                    eprintln!(
                        "runtime-shim: teardown: ignoring netns {}: {e}",
                        path.display()
                    );
                }
                None
            }
        },
    };
    let lock = AttachmentLock::acquire(net, id, ifname)?;
    let mut k = Real::open()?;
    let r = teardown_with(&mut k, net, pod.as_ref(), id, ifname, Some(&lock));
    if r.is_ok() {
        lock.remove();
    }
    r
}

/// [`teardown`] over any kernel.
pub fn teardown_with(
    k: &mut dyn Kernel,
    net: &Network,
    pod: Option<&NetNs>,
    id: &str,
    ifname: &str,
    lock: Option<&AttachmentLock>,
) -> Result<()> {
    let mut first_err: Option<Error> = None;
    let mut keep = |r: Result<()>| {
        if let Err(e) = r {
            eprintln!("runtime-shim: teardown: {}", crate::chain(&e));
            first_err.get_or_insert(e);
        }
    };
    let host = crate::plan::host_veth_name(id, ifname);
    let deleted = match k.link(&host) {
        Ok(Some(l)) if is_ours(&l, &net.name) => k.delete_link(l.index),
        Ok(Some(l)) => {
            eprintln!(
                "runtime-shim: teardown: leaving link {} alone: it is not a veth of network {}",
                l.name, net.name
            );
            Ok(false)
        }
        Ok(None) => Ok(false),
        Err(e) => Err(e),
    };
    // Host end already gone: a pod end can only be left if it was made apart from its
    // peer; delete it only if it carries this attachment's marker.
    if matches!(deleted, Ok(false)) {
        if let Some(pod) = pod {
            keep(
                k.delete_pod_link(pod, ifname, pod_marker(&net.name, &host))
                    .map(|_| ()),
            );
        }
    }
    keep(deleted.map(|_| ()));
    keep(
        Store::open(&net.data_dir, &net.name)
            .and_then(|s| s.release_noted(id, ifname, lock))
            .map(|_| ()),
    );
    keep(remove_policy_if_unused(k, net).map(|_| ()));
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Remove the network's firewall table if no address of the network is reserved (its
/// last pod is gone). Under the network's lock: an ADD reserves under it before it heals
/// the table under it, so the two never cross. A reservation leaked by a crash keeps the
/// table until GC releases it.
pub fn remove_policy_if_unused(k: &mut dyn Kernel, net: &Network) -> Result<bool> {
    let store = Store::open(&net.data_dir, &net.name)?;
    if store.has_records()? {
        return Ok(false);
    }
    k.policy_remove(&net.name)
}

/// Verify that the pod's interface, addresses and routes are what setup made, and that
/// the network's firewall table is intact. `reported`: the routes the runtime recorded
/// (prevResult); a default route is required only if reported, since a pod on two
/// networks gets it from the first (without a prevResult, any default route of the
/// family will do).
pub fn check(
    net: &Network,
    netns_path: &Path,
    id: &str,
    ifname: &str,
    reported: Option<&[result::Route]>,
) -> Result<()> {
    validate_request(id, ifname)?;
    let pod = open_pod_netns(netns_path)?;
    let store = Store::open(&net.data_dir, &net.name)?;
    let ips = store.get_by_id(id, ifname)?;
    drop(store);
    if ips.is_empty() {
        return Err(Error::Check(Mismatch::NotReserved {
            id: id.into(),
            ifname: ifname.into(),
        }));
    }
    let allocs: Vec<_> = ips
        .iter()
        .filter_map(|ip| {
            let (set, r) = net
                .range_sets
                .iter()
                .enumerate()
                .find_map(|(i, s)| s.iter().find(|r| r.contains(*ip)).map(|r| (i, r)))?;
            Some(crate::ipam::Allocation {
                ip: *ip,
                range: r.clone(),
                set,
            })
        })
        .collect();
    let p = plan(net, id, ifname, &allocs);
    let mut nl = crate::link::Netlink::open()?;
    let br = nl
        .link_by_name(&p.bridge)?
        .ok_or_else(|| Error::Check(Mismatch::BridgeMissing(p.bridge.clone())))?;
    let host = nl
        .link_by_name(&p.host_veth)?
        .ok_or_else(|| Error::Check(Mismatch::VethMissing(p.host_veth.clone())))?;
    if host.controller != Some(br.index) {
        return Err(Error::Check(Mismatch::VethNotOnBridge {
            veth: p.host_veth.clone(),
            bridge: p.bridge.clone(),
        }));
    }
    if !host.up {
        return Err(Error::Check(Mismatch::VethDown(p.host_veth.clone())));
    }
    netns::run_in(&pod, || -> Result<()> {
        let mut nl = crate::link::Netlink::open()?;
        let eth = nl
            .link_by_name(ifname)?
            .ok_or_else(|| Error::Check(Mismatch::PodLinkMissing(ifname.into())))?;
        if !eth.up {
            return Err(Error::Check(Mismatch::PodLinkDown(ifname.into())));
        }
        let have = nl.addresses(eth.index)?;
        for a in &p.pod_addrs {
            if !have.contains(a) {
                return Err(Error::Check(Mismatch::AddressMissing {
                    ifname: ifname.into(),
                    addr: *a,
                }));
            }
        }
        let routes = nl.routes()?;
        for r in &p.pod_routes {
            let ours = |x: &crate::link::RouteEntry| {
                x.dst == r.dst && x.gw == r.gw && x.oif == Some(eth.index)
            };
            let required = r.dst.prefix_len() > 0
                || match reported {
                    Some(rep) => rep.iter().any(|x| reported_as(x, r)),
                    None => !routes.iter().any(|x| x.dst == r.dst),
                };
            if required && !routes.iter().any(ours) {
                return Err(Error::Check(Mismatch::RouteMissing {
                    dst: r.dst,
                    via: r.gw,
                }));
            }
        }
        Ok(())
    })??;
    if !masq::intact(&mut crate::nft::Nft::open()?, &Policy::of(net))? {
        return Err(Error::Check(Mismatch::PolicyMissing(masq::table_name(
            &net.name,
        ))));
    }
    Ok(())
}

/// Is `r` the route a result reported as `x`?
fn reported_as(x: &result::Route, r: &PlannedRoute) -> bool {
    x.dst.parse::<IpNet>().is_ok_and(|d| d.trunc() == r.dst)
        && x.gw.as_deref().and_then(|g| g.parse().ok()) == r.gw
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::config::NetConf;

    /// An in-memory node and pod whose every call can be made to fail.
    #[derive(Clone, Default)]
    struct Fake {
        links: Vec<Link>,
        addrs: BTreeSet<(u32, IpNet)>,
        sysctls: BTreeMap<String, String>,
        /// Network -> its firewall table (the policy's Debug form).
        tables: BTreeMap<String, String>,
        /// The pod's links: (name, MAC, up, addresses).
        pod: Vec<(String, [u8; 6], bool, Vec<IpNet>)>,
        next: u32,
        calls: usize,
        fail_at: Option<usize>,
    }

    type Snapshot = (
        Vec<(String, bool, u32, Option<u32>, Option<String>)>,
        BTreeSet<(u32, IpNet)>,
        BTreeMap<String, String>,
        BTreeMap<String, String>,
        Vec<(String, [u8; 6], bool, Vec<IpNet>)>,
    );

    impl Fake {
        fn node(forwarding: &str) -> Fake {
            let mut f = Fake {
                next: 10,
                ..Default::default()
            };
            f.sysctls
                .insert(forwarding_sysctl(true).into(), forwarding.into());
            f.sysctls
                .insert(forwarding_sysctl(false).into(), forwarding.into());
            f.add_link("eth0", None, true);
            f
        }
        fn add_link(&mut self, name: &str, kind: Option<&str>, up: bool) -> u32 {
            self.next += 1;
            self.links.push(Link {
                index: self.next,
                name: name.into(),
                mac: Some([2, 0, 0, 0, 0, self.next as u8]),
                mtu: Some(1500),
                controller: None,
                up,
                alias: None,
                kind: kind.map(String::from),
                group: 0,
            });
            self.next
        }
        fn call(&mut self, what: &str) -> Result<()> {
            let n = self.calls;
            self.calls += 1;
            if self.fail_at == Some(n) {
                return Err(Error::Netlink {
                    op: crate::link::NlOp::SetLink,
                    target: format!("(injected failure of call {n}: {what})"),
                    source: std::io::Error::from_raw_os_error(nix::libc::EIO),
                });
            }
            Ok(())
        }
        fn by_index(&mut self, index: u32) -> Result<&mut Link> {
            self.links
                .iter_mut()
                .find(|l| l.index == index)
                .ok_or_else(|| Error::Netlink {
                    op: crate::link::NlOp::GetLink,
                    target: index.to_string(),
                    source: std::io::Error::from_raw_os_error(nix::libc::ENODEV),
                })
        }
        fn snapshot(&self) -> Snapshot {
            let mut links: Vec<_> = self
                .links
                .iter()
                .map(|l| (l.name.clone(), l.up, l.group, l.controller, l.kind.clone()))
                .collect();
            links.sort();
            (
                links,
                self.addrs.clone(),
                self.sysctls.clone(),
                self.tables.clone(),
                self.pod.clone(),
            )
        }
    }

    impl Kernel for Fake {
        fn link(&mut self, name: &str) -> Result<Option<Link>> {
            self.call("link")?;
            Ok(self.links.iter().find(|l| l.name == name).cloned())
        }
        fn links(&mut self) -> Result<Vec<Link>> {
            self.call("links")?;
            Ok(self.links.clone())
        }
        fn create_bridge(&mut self, name: &str, _: Option<u32>, _: [u8; 6]) -> Result<bool> {
            self.call("create bridge")?;
            if self.links.iter().any(|l| l.name == name) {
                return Ok(false);
            }
            let i = self.add_link(name, Some("bridge"), true);
            self.by_index(i)?.group = BRIDGE_GROUP;
            Ok(true)
        }
        fn set_up(&mut self, index: u32) -> Result<()> {
            self.call("set up")?;
            self.by_index(index)?.up = true;
            Ok(())
        }
        fn set_down(&mut self, index: u32) -> Result<()> {
            self.call("set down")?;
            self.by_index(index)?.up = false;
            Ok(())
        }
        fn set_group(&mut self, index: u32, group: u32) -> Result<()> {
            self.call("set group")?;
            self.by_index(index)?.group = group;
            Ok(())
        }
        fn add_address(&mut self, index: u32, addr: IpNet) -> Result<bool> {
            self.call("add address")?;
            Ok(self.addrs.insert((index, addr)))
        }
        fn del_address(&mut self, index: u32, addr: IpNet) -> Result<bool> {
            self.call("del address")?;
            Ok(self.addrs.remove(&(index, addr)))
        }
        fn delete_link(&mut self, index: u32) -> Result<bool> {
            self.call("delete link")?;
            let Some(pos) = self.links.iter().position(|l| l.index == index) else {
                return Ok(false);
            };
            let l = self.links.remove(pos);
            self.addrs.retain(|(i, _)| *i != index);
            // A veth's peer goes with it.
            if l.kind.as_deref() == Some("veth") {
                self.pod.clear();
            }
            Ok(true)
        }
        fn create_veth(&mut self, v: &VethSpec, _: &NetNs) -> Result<Link> {
            self.call("create veth")?;
            if self.pod.iter().any(|p| p.0 == v.peer) {
                return Err(Error::Netlink {
                    op: crate::link::NlOp::CreateVeth,
                    target: v.host.clone(),
                    source: std::io::Error::from_raw_os_error(nix::libc::EEXIST),
                });
            }
            let i = self.add_link(&v.host, Some("veth"), false);
            let l = self.by_index(i)?;
            l.mac = Some(v.host_mac);
            l.controller = Some(v.controller);
            let l = l.clone();
            self.pod
                .push((v.peer.clone(), v.peer_mac, false, Vec::new()));
            Ok(l)
        }
        fn bring_up_port(&mut self, index: u32, _: bool) -> Result<()> {
            self.call("bring up port")?;
            self.by_index(index)?.up = true;
            Ok(())
        }
        fn configure_pod(&mut self, _: &NetNs, p: &Plan) -> Result<(Link, Vec<PlannedRoute>)> {
            self.call("configure pod")?;
            let eth = self
                .pod
                .iter_mut()
                .find(|x| x.0 == p.ifname)
                .ok_or_else(|| Error::Check(Mismatch::PodLinkMissing(p.ifname.clone())))?;
            eth.2 = true;
            eth.3 = p.pod_addrs.clone();
            let link = Link {
                index: 2,
                name: p.ifname.clone(),
                mac: None,
                mtu: None,
                controller: None,
                up: true,
                alias: None,
                kind: Some("veth".into()),
                group: 0,
            };
            Ok((link, p.pod_routes.clone()))
        }
        fn delete_pod_link(&mut self, _: &NetNs, ifname: &str, mac: [u8; 6]) -> Result<bool> {
            self.call("delete pod link")?;
            let before = self.pod.len();
            self.pod.retain(|x| !(x.0 == ifname && x.1 == mac));
            Ok(self.pod.len() != before)
        }
        fn read_sysctl(&mut self, path: &str) -> Result<String> {
            self.call("read sysctl")?;
            Ok(self.sysctls.get(path).cloned().unwrap_or_default())
        }
        fn write_sysctl(&mut self, path: &str, value: &str) -> Result<()> {
            self.call("write sysctl")?;
            self.sysctls.insert(path.into(), value.into());
            Ok(())
        }
        fn policy_heal(&mut self, p: &Policy) -> Result<bool> {
            self.call("policy heal")?;
            let want = format!("{p:?}");
            let changed = self.tables.get(&p.network) != Some(&want);
            self.tables.insert(p.network.clone(), want);
            Ok(changed)
        }
        fn policy_remove(&mut self, network: &str) -> Result<bool> {
            self.call("policy remove")?;
            Ok(self.tables.remove(network).is_some())
        }
    }

    fn net(dir: &Path, bridge: &str) -> Network {
        let j = format!(
            r#"{{"cniVersion":"1.0.0","name":"n1","bridge":"{bridge}","isDefaultGateway":true,
               "ipMasq":true,"ipam":{{"type":"host-local","dataDir":"{}",
               "ranges":[[{{"subnet":"10.7.0.0/24"}}],[{{"subnet":"fd07::/64"}}]]}}}}"#,
            dir.display()
        );
        NetConf::from_slice(j.as_bytes())
            .unwrap()
            .validate()
            .unwrap()
    }

    /// Every file of the network's IPAM dir but the lock and the attachment locks.
    fn ipam_files(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir.join("n1"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| {
                        n != "lock" && n != "attachments" && !n.starts_with("last_reserved_ip.")
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn run(k: &mut Fake, net: &Network) -> Result<CniResult> {
        let pod = NetNs::current().unwrap();
        let at = Attachment {
            pod: &pod,
            netns_path: Path::new("/run/netns/p"),
            id: "c1",
            ifname: "eth0",
            req: &Requested::default(),
        };
        setup_with(k, net, &at, None)
    }

    /// Fail every call of a setup in turn, from nodes in several starting states: each
    /// failure names its step and leaves the node, the pod and IPAM as they were.
    #[test]
    fn a_failure_at_any_call_of_any_step_undoes_everything() {
        let fresh = Fake::node("0");
        let mut existing_down = Fake::node("0");
        existing_down.add_link("br9", Some("bridge"), false);
        let mut ready = Fake::node("1");
        let br = ready.add_link("br9", Some("bridge"), true);
        ready.addrs.insert((br, "10.7.0.1/24".parse().unwrap()));
        let mut failed_steps = BTreeSet::new();
        for initial in [fresh, existing_down, ready] {
            let d = tempfile::tempdir().unwrap();
            let n = net(d.path(), "br9");
            // A clean run counts the calls.
            let mut ok = initial.clone();
            run(&mut ok, &n).unwrap();
            let total = ok.calls;
            assert!(ok.tables.len() == 1 && ok.pod.len() == 1);
            Store::open(&n.data_dir, &n.name)
                .unwrap()
                .release("c1", "eth0")
                .unwrap();
            for fail_at in 0..total {
                let mut k = initial.clone();
                k.fail_at = Some(fail_at);
                let e = run(&mut k, &n).unwrap_err();
                if let Error::Step { step, .. } = &e {
                    failed_steps.insert(*step);
                }
                assert_eq!(
                    k.snapshot(),
                    initial.snapshot(),
                    "call {fail_at} failed ({e}): the node or pod was left changed"
                );
                assert!(
                    ipam_files(d.path()).is_empty(),
                    "call {fail_at} ({e}): {:?} left in IPAM",
                    ipam_files(d.path())
                );
            }
        }
        // The reservation step fails on its own (no kernel call): a file where the
        // network's IPAM dir should be.
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("n1"), "").unwrap();
        let mut k = Fake::node("0");
        let before = k.snapshot();
        match run(&mut k, &net(d.path(), "br9")).unwrap_err() {
            Error::Step { step, .. } => {
                failed_steps.insert(step);
            }
            e => panic!("{e}"),
        }
        assert_eq!(k.snapshot(), before);
        assert_eq!(
            failed_steps.into_iter().collect::<Vec<_>>(),
            Step::ALL.to_vec(),
            "every step's rollback was exercised"
        );
    }

    #[test]
    fn shared_node_state_stays_while_another_pod_relies_on_it() {
        // A bridge that is down and has no gateway address yet, but already a port of
        // another pod: a setup that fails after bringing it up and adding the address
        // removes its own veth and reservation, and leaves the shared state alone.
        let d = tempfile::tempdir().unwrap();
        let n = net(d.path(), "br9");
        let mut k = Fake::node("0");
        let br = k.add_link("br9", Some("bridge"), false);
        let other = k.add_link("pw000000000001", Some("veth"), true);
        k.by_index(other).unwrap().controller = Some(br);
        let mut ok = k.clone();
        run(&mut ok, &n).unwrap();
        Store::open(&n.data_dir, &n.name)
            .unwrap()
            .release("c1", "eth0")
            .unwrap();
        // Fail the pod-side step: bridge up, address and forwarding are done by then.
        let at = (0..ok.calls)
            .find(|&i| {
                let mut f = k.clone();
                f.fail_at = Some(i);
                matches!(
                    run(&mut f, &n),
                    Err(Error::Step {
                        step: Step::ConfigurePod,
                        ..
                    })
                )
            })
            .unwrap();
        k.fail_at = Some(at);
        run(&mut k, &n).unwrap_err();
        assert!(
            k.by_index(br).unwrap().up,
            "bridge left up for the other pod"
        );
        assert!(k.addrs.contains(&(br, "10.7.0.1/24".parse().unwrap())));
        assert_eq!(k.sysctls[forwarding_sysctl(true)], "1");
        let host = crate::plan::host_veth_name("c1", "eth0");
        assert!(k.links.iter().all(|l| l.name != host) && k.pod.is_empty());
        assert!(ipam_files(d.path()).is_empty());
    }

    #[test]
    fn a_non_bridge_link_named_as_the_bridge_is_refused_before_any_change() {
        for kind in [None, Some("veth"), Some("dummy")] {
            let d = tempfile::tempdir().unwrap();
            let mut k = Fake::node("0");
            if let Some(kind) = kind {
                k.add_link("br9", Some(kind), true);
            }
            let name = if kind.is_none() { "eth0" } else { "br9" };
            let before = k.snapshot();
            let e = run(&mut k, &net(d.path(), name)).unwrap_err();
            assert!(
                matches!(&e, Error::Config { field, .. } if field == "bridge"),
                "{e}"
            );
            assert!(e.to_string().contains("not a bridge"), "{e}");
            assert_eq!(k.snapshot(), before);
            assert!(ipam_files(d.path()).is_empty());
        }
    }

    #[test]
    fn teardown_deletes_only_links_with_this_attachments_marker() {
        let d = tempfile::tempdir().unwrap();
        let n = net(d.path(), "br9");
        let host = crate::plan::host_veth_name("c1", "eth0");
        let pod = NetNs::current().unwrap();
        // A node link (no marker) named like the host veth, and a pod "eth0" without a
        // marker: both stay.
        let mut k = Fake::node("1");
        k.add_link(&host, Some("veth"), true);
        k.pod
            .push(("eth0".into(), [2, 0, 0, 0, 0, 1], true, Vec::new()));
        let before = k.snapshot();
        teardown_with(&mut k, &n, Some(&pod), "c1", "eth0", None).unwrap();
        assert_eq!(k.snapshot(), before);
        // Another network's veth of the same name stays too.
        let other = host_marker("other", &host);
        k.links.last_mut().unwrap().mac = Some(other);
        let before = k.snapshot();
        teardown_with(&mut k, &n, Some(&pod), "c1", "eth0", None).unwrap();
        assert_eq!(k.snapshot(), before);
        // What setup made goes, the pod end with it.
        let mut k = Fake::node("1");
        run(&mut k, &n).unwrap();
        teardown_with(&mut k, &n, Some(&pod), "c1", "eth0", None).unwrap();
        assert!(k.links.iter().all(|l| l.name != host) && k.pod.is_empty());
        assert!(ipam_files(d.path()).is_empty());
    }
}
