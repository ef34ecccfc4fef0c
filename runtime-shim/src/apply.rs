//! Setup (transactional: every step pushes an undo, a failure unwinds them all), teardown
//! (idempotent, best effort, keyed on the container id) and check.
//!
//! The node is the calling thread's network namespace; the pod is entered on a dedicated
//! thread (`netns::run_in`), with its own netlink socket.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use netns::NetNs;

use crate::config::Network;
use crate::ipam::{AttachmentLock, Store};
use crate::kernel::{Kernel, Real, VethSpec, forwarding_sysctl};
use crate::link::{Link, mac_string};
use crate::plan::{Plan, plan};
use crate::result::{self, CniResult};
use crate::{Error, Result, masq, validate_container_id, validate_ifname};

/// The steps of a setup, in order. Each one that changes something pushes its undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    ReserveAddresses,
    EnsureBridge,
    EnableForwarding,
    CreateVeth,
    BringUpHostVeth,
    ConfigurePod,
    Masquerade,
}

impl Step {
    pub const ALL: [Step; 7] = [
        Step::ReserveAddresses,
        Step::EnsureBridge,
        Step::EnableForwarding,
        Step::CreateVeth,
        Step::BringUpHostVeth,
        Step::ConfigurePod,
        Step::Masquerade,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::ReserveAddresses => "reserve addresses",
            Step::EnsureBridge => "ensure bridge",
            Step::EnableForwarding => "enable forwarding",
            Step::CreateVeth => "create veth",
            Step::BringUpHostVeth => "bring up host veth",
            Step::ConfigurePod => "configure pod interface",
            Step::Masquerade => "masquerade",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The marker (ifalias) on a host veth: which network made it. GC and teardown touch
/// no link without it.
pub fn host_marker(network: &str) -> String {
    format!("podwire/{network}")
}

/// The marker on the pod end: the network and the host end it was created with.
pub fn pod_marker(network: &str, host_veth: &str) -> String {
    format!("podwire/{network}/{host_veth}")
}

/// Is `l` a host veth this network made?
pub fn is_ours(l: &Link, network: &str) -> bool {
    l.kind.as_deref() == Some("veth") && l.alias.as_deref() == Some(host_marker(network).as_str())
}

/// What a setup has done so far, newest last.
enum Undo {
    Release(Vec<IpAddr>),
    DeleteLink(u32),
    DeleteBridgeIfUnused(u32),
    /// A gateway address this call put on a bridge that already existed.
    BridgeAddress(u32, IpNet),
    /// This call set an existing bridge up.
    BridgeDown(u32),
    /// A sysctl and the value it had before this call.
    Sysctl(&'static str, String),
    Unmasq(IpNet),
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
                Undo::DeleteBridgeIfUnused(index) => match has_ports(k, *index) {
                    Ok(false) => k.delete_link(*index).map(|_| ()),
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
                Undo::Sysctl(path, old) => match any_podwire_veth(k) {
                    Ok(false) => k.write_sysctl(path, old),
                    other => other.map(|_| ()),
                },
                Undo::Unmasq(subnet) => k.masq_remove(&self.net.name, subnet).map(|_| ()),
            };
            if let Err(e) = r {
                eprintln!("runtime-shim: undo failed (continuing): {e}");
            }
        }
    }
}

/// Does any pod of any podwire network still hang off this node?
fn any_podwire_veth(k: &mut dyn Kernel) -> Result<bool> {
    Ok(k
        .links()?
        .iter()
        .any(|l| l.alias.as_deref().is_some_and(|a| a.starts_with("podwire/"))))
}

/// Make sure the bridge exists, is up and carries the gateway addresses, pushing an undo
/// for each change. The caller has checked that an existing link of that name is a bridge.
fn ensure_bridge(k: &mut dyn Kernel, p: &Plan, undo: &mut Vec<Undo>) -> Result<Link> {
    let br = match k.link(&p.bridge)? {
        Some(l) => l,
        None => {
            let created = k.create_bridge(&p.bridge, p.mtu, p.bridge_mac)?;
            let br = k.link(&p.bridge)?.ok_or_else(|| Error::Netlink {
                op: format!("bridge {} vanished right after creation", p.bridge),
                source: std::io::Error::from_raw_os_error(nix::libc::ENODEV),
            })?;
            if created {
                undo.push(Undo::DeleteBridgeIfUnused(br.index));
            }
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
/// namespace. On error, nothing this call changed is left behind. Calls for one
/// (network, container id, ifname) are serialised.
pub fn setup(net: &Network, netns_path: &Path, id: &str, ifname: &str) -> Result<CniResult> {
    validate_request(id, ifname)?;
    let pod = open_pod_netns(netns_path)?;
    let lock = AttachmentLock::acquire(net, id, ifname)?;
    let mut k = Real::open()?;
    let r = setup_with(&mut k, net, &pod, netns_path, id, ifname);
    if r.is_err() {
        lock.remove();
    }
    r
}

/// [`setup`] over any kernel, for a pod namespace already opened and checked.
pub fn setup_with(
    k: &mut dyn Kernel,
    net: &Network,
    pod: &NetNs,
    netns_path: &Path,
    id: &str,
    ifname: &str,
) -> Result<CniResult> {
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
    if let Some(l) = k.link(&net.bridge)? {
        check_is_bridge(&l, &net.bridge)?;
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
        let a = store.allocate(net, id, ifname)?;
        undo.push(Undo::Release(a.iter().map(|a| a.ip).collect()));
        Ok(a)
    })?;
    let p = plan(net, id, ifname, &allocs);
    let br = t.step(k, Step::EnsureBridge, |k, undo| ensure_bridge(k, &p, undo))?;
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
            host_alias: host_marker(&net.name),
            peer: p.ifname.clone(),
            peer_alias: pod_marker(&net.name, &p.host_veth),
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
    let pod_link = t.step(k, Step::ConfigurePod, |k, _| k.configure_pod(pod, &p))?;
    if !p.masq.is_empty() {
        let marker = masq::marker(&p.masq);
        if br.alias.as_deref() != Some(marker.as_str()) {
            t.step(k, Step::Masquerade, |k, undo| {
                // Check-then-add must not race with a concurrent first pod: hold the
                // network's lock and look at the marker again under it.
                let _lock = Store::open(&net.data_dir, &net.name)?;
                let now = k.link(&p.bridge)?.and_then(|l| l.alias);
                if now.as_deref() == Some(marker.as_str()) {
                    return Ok(());
                }
                for s in &p.masq {
                    if k.masq_ensure(&net.name, s)? {
                        undo.push(Undo::Unmasq(*s));
                    }
                }
                k.set_alias(br.index, &marker)
            })?;
        }
    }
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
        routes: p
            .pod_routes
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
/// for (id, ifname) (its pod end goes with it) and release the addresses. Succeeds when
/// things are already gone, the namespace included; never touches the bridge, the
/// masquerade rule, or any link without podwire's marker for this attachment.
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
                    eprintln!("runtime-shim: teardown: ignoring netns {}: {e}", path.display());
                }
                None
            }
        },
    };
    let lock = AttachmentLock::acquire(net, id, ifname)?;
    let mut k = Real::open()?;
    let r = teardown_with(&mut k, net, pod.as_ref(), id, ifname);
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
) -> Result<()> {
    let mut first_err: Option<Error> = None;
    let mut keep = |r: Result<()>| {
        if let Err(e) = r {
            eprintln!("runtime-shim: teardown: {e}");
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
                k.delete_pod_link(pod, ifname, &pod_marker(&net.name, &host))
                    .map(|_| ()),
            );
        }
    }
    keep(deleted.map(|_| ()));
    keep(
        Store::open(&net.data_dir, &net.name)
            .and_then(|s| s.release(id, ifname))
            .map(|_| ()),
    );
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Verify that the pod's interface, addresses and routes are what setup made.
pub fn check(net: &Network, netns_path: &Path, id: &str, ifname: &str) -> Result<()> {
    validate_request(id, ifname)?;
    let pod = open_pod_netns(netns_path)?;
    let store = Store::open(&net.data_dir, &net.name)?;
    let ips = store.get_by_id(id, ifname)?;
    drop(store);
    if ips.is_empty() {
        return Err(Error::Check(format!(
            "no address is reserved for {id}/{ifname}"
        )));
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
        .ok_or_else(|| Error::Check(format!("bridge {} is missing", p.bridge)))?;
    let host = nl
        .link_by_name(&p.host_veth)?
        .ok_or_else(|| Error::Check(format!("host veth {} is missing", p.host_veth)))?;
    if host.controller != Some(br.index) {
        return Err(Error::Check(format!(
            "host veth {} is not attached to bridge {}",
            p.host_veth, p.bridge
        )));
    }
    if !host.up {
        return Err(Error::Check(format!("host veth {} is down", p.host_veth)));
    }
    netns::run_in(&pod, || -> Result<()> {
        let mut nl = crate::link::Netlink::open()?;
        let eth = nl
            .link_by_name(ifname)?
            .ok_or_else(|| Error::Check(format!("{ifname} is missing in the pod")))?;
        if !eth.up {
            return Err(Error::Check(format!("{ifname} is down in the pod")));
        }
        let have = nl.addresses(eth.index)?;
        for a in &p.pod_addrs {
            if !have.contains(a) {
                return Err(Error::Check(format!("{ifname} lacks address {a}")));
            }
        }
        let routes = nl.routes()?;
        for r in &p.pod_routes {
            if !routes
                .iter()
                .any(|x| x.dst == r.dst && x.gw == r.gw && x.oif == Some(eth.index))
            {
                let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
                return Err(Error::Check(format!("route {}{via} is missing", r.dst)));
            }
        }
        Ok(())
    })??;
    for s in &p.masq {
        if !masq::exists(&net.name, s)? {
            return Err(Error::Check(format!("masquerade rule for {s} is missing")));
        }
    }
    Ok(())
}
