//! Setup (transactional: every step pushes an undo, a failure unwinds them all), teardown
//! (idempotent, best effort, keyed on the container id) and check.
//!
//! The node is the calling thread's network namespace; the pod is entered on a dedicated
//! thread (`netns::run_in`), with its own netlink socket.

use std::fs;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use netns::NetNs;

use crate::config::Network;
use crate::ipam::Store;
use crate::link::{Link, Netlink, mac_string};
use crate::plan::{Plan, plan};
use crate::result::{self, CniResult};
use crate::{Error, Result, masq, validate_container_id, validate_ifname};

/// Test hook: make setup fail right after the named step (fault injection, e.g.
/// `PODWIRE_FAIL_AFTER=create veth`). Never set in production.
const FAIL_AFTER_ENV: &str = "PODWIRE_FAIL_AFTER";

/// What a setup has done so far, newest last.
enum Undo {
    Release(Vec<IpAddr>),
    DeleteLink(String),
    DeleteBridgeIfUnused(String),
    Unmasq(IpNet),
}

struct Txn<'a> {
    net: &'a Network,
    id: &'a str,
    ifname: &'a str,
    undo: Vec<Undo>,
}

impl Txn<'_> {
    /// Run a step; on failure, unwind everything and say which step failed.
    fn step<T>(
        &mut self,
        nl: &mut Netlink,
        name: &str,
        f: impl FnOnce(&mut Netlink, &mut Vec<Undo>) -> Result<T>,
    ) -> Result<T> {
        let r = f(nl, &mut self.undo).and_then(|v| {
            if std::env::var(FAIL_AFTER_ENV).is_ok_and(|s| s == name) {
                Err(Error::Check(format!("fault injected after step '{name}'")))
            } else {
                Ok(v)
            }
        });
        r.map_err(|e| {
            self.rollback(nl);
            Error::Step {
                step: name.to_string(),
                source: Box::new(e),
            }
        })
    }

    fn rollback(&mut self, nl: &mut Netlink) {
        while let Some(u) = self.undo.pop() {
            let r = match &u {
                Undo::Release(ips) => Store::open(&self.net.data_dir, &self.net.name)
                    .map(|s| s.release_ips(ips, self.id, self.ifname)),
                Undo::DeleteLink(name) => nl.delete_link(name).map(|_| ()),
                Undo::DeleteBridgeIfUnused(name) => delete_bridge_if_unused(nl, name),
                Undo::Unmasq(subnet) => masq::remove(&self.net.name, subnet).map(|_| ()),
            };
            if let Err(e) = r {
                eprintln!("runtime-shim: undo failed (continuing): {e}");
            }
        }
    }
}

fn delete_bridge_if_unused(nl: &mut Netlink, name: &str) -> Result<()> {
    let Some(br) = nl.link_by_name(name)? else {
        return Ok(());
    };
    if !nl.links()?.iter().any(|l| l.controller == Some(br.index)) {
        nl.delete_link(name)?;
    }
    Ok(())
}

fn write_sysctl(path: &str, value: &str) -> Result<()> {
    // Read first: a write costs more and needs privilege even when nothing changes.
    if fs::read_to_string(path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    fs::write(path, value).map_err(|e| Error::io("write sysctl", path, e))
}

/// Make sure the bridge exists, is up and carries the gateway addresses.
/// Returns the bridge and whether this call created it.
fn ensure_bridge(nl: &mut Netlink, p: &Plan) -> Result<(Link, bool)> {
    let mut created = false;
    let br = match nl.link_by_name(&p.bridge)? {
        Some(l) => l,
        None => {
            created = nl.create_bridge(&p.bridge, p.mtu, p.bridge_mac)?;
            nl.link_by_name(&p.bridge)?.ok_or_else(|| Error::Netlink {
                op: format!("bridge {} vanished right after creation", p.bridge),
                source: std::io::Error::from_raw_os_error(nix::libc::ENODEV),
            })?
        }
    };
    for a in &p.bridge_addrs {
        nl.add_address(br.index, *a)?;
    }
    if !br.up {
        nl.set_link(br.index, true, None)?;
    }
    Ok((br, created))
}

/// Inside the pod: lo up, addresses on the pod interface, routes. Returns its link.
fn configure_pod(p: &Plan) -> Result<Link> {
    let mut nl = Netlink::open()?;
    if let Some(lo) = nl.link_by_name("lo")? {
        if !lo.up {
            nl.set_link(lo.index, true, None)?;
        }
    }
    let eth = nl.link_by_name(&p.ifname)?.ok_or_else(|| Error::Netlink {
        op: format!("find {} in the pod", p.ifname),
        source: std::io::Error::from_raw_os_error(nix::libc::ENODEV),
    })?;
    // An IPv4-only pod gets no IPv6 link-local address (as Docker does): its DAD and MLD
    // multicast would be flooded to every pod on the bridge, O(pods) work per new pod.
    if !eth.up && !p.pod_addrs.iter().any(|a| a.addr().is_ipv6()) {
        nl.disable_ipv6_addrgen(eth.index)?;
    }
    for a in &p.pod_addrs {
        nl.add_address(eth.index, *a)?;
    }
    if !eth.up {
        nl.set_link(eth.index, true, None)?;
    }
    for r in &p.pod_routes {
        nl.add_route(r.dst, r.gw, eth.index)?;
    }
    Ok(eth)
}

fn validate_request(id: &str, ifname: &str) -> Result<()> {
    validate_container_id(id)?;
    validate_ifname("ifname", ifname)
}

/// Wire the pod namespace at `netns_path` to the network's bridge in the caller's
/// namespace. On error, nothing this call created is left behind.
pub fn setup(net: &Network, netns_path: &Path, id: &str, ifname: &str) -> Result<CniResult> {
    validate_request(id, ifname)?;
    let pod = NetNs::open(netns_path)?;
    let mut nl = Netlink::open()?;
    let host = crate::plan::host_veth_name(id, ifname);
    if nl.link_by_name(&host)?.is_some() {
        return Err(Error::AlreadySetUp {
            id: id.into(),
            ifname: ifname.into(),
            veth: host,
        });
    }
    let mut t = Txn {
        net,
        id,
        ifname,
        undo: Vec::new(),
    };
    let allocs = t.step(&mut nl, "reserve addresses", |_, undo| {
        // The lock is held only while allocating.
        let store = Store::open(&net.data_dir, &net.name)?;
        let a = store.allocate(net, id, ifname)?;
        undo.push(Undo::Release(a.iter().map(|a| a.ip).collect()));
        Ok(a)
    })?;
    let p = plan(net, id, ifname, &allocs);
    let br = t.step(&mut nl, "ensure bridge", |nl, undo| {
        let (br, created) = ensure_bridge(nl, &p)?;
        if created {
            undo.push(Undo::DeleteBridgeIfUnused(p.bridge.clone()));
        }
        Ok(br)
    })?;
    t.step(&mut nl, "enable forwarding", |_, _| {
        if p.forward_v4 {
            write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        }
        if p.forward_v6 {
            write_sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
        }
        Ok(())
    })?;
    let host_link = t.step(&mut nl, "create veth", |nl, undo| {
        let host = nl.create_veth(&p.host_veth, &p.ifname, &pod, p.mtu, br.index)?;
        undo.push(Undo::DeleteLink(p.host_veth.clone()));
        Ok(host)
    })?;
    t.step(&mut nl, "bring up host veth", |nl, _| {
        nl.bring_up_port(host_link.index, p.hairpin)
    })?;
    let pod_link = t.step(&mut nl, "configure pod interface", |_, _| {
        netns::run_in(&pod, || configure_pod(&p))?
    })?;
    if !p.masq.is_empty() {
        let marker = masq::marker(&p.masq);
        if br.alias.as_deref() != Some(marker.as_str()) {
            t.step(&mut nl, "masquerade", |nl, undo| {
                // Check-then-add must not race with a concurrent first pod: hold the
                // network's lock and look at the marker again under it.
                let _lock = Store::open(&net.data_dir, &net.name)?;
                let now = nl.link_by_name(&p.bridge)?.and_then(|l| l.alias);
                if now.as_deref() == Some(marker.as_str()) {
                    return Ok(());
                }
                for s in &p.masq {
                    if masq::ensure(&net.name, s)? {
                        undo.push(Undo::Unmasq(*s));
                    }
                }
                nl.set_link(br.index, false, Some(&marker))
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

/// Undo a setup, knowing only the container id: delete the host veth (its pod end goes
/// with it) and release the addresses. Succeeds when things are already gone, the
/// namespace included; never touches the bridge or the masquerade rule.
pub fn teardown(net: &Network, netns_path: Option<&Path>, id: &str, ifname: &str) -> Result<()> {
    validate_request(id, ifname)?;
    let mut first_err: Option<Error> = None;
    let mut keep = |r: Result<()>| {
        if let Err(e) = r {
            eprintln!("runtime-shim: teardown: {e}");
            first_err.get_or_insert(e);
        }
    };
    let host = crate::plan::host_veth_name(id, ifname);
    let deleted = Netlink::open().and_then(|mut nl| nl.delete_link(&host));
    // Host end already gone (or never ours): remove a leftover pod interface, if the
    // namespace still exists.
    if matches!(deleted, Ok(false)) {
        if let Some(path) = netns_path.filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(pod) = NetNs::open(path) {
                keep(
                    netns::run_in(&pod, || {
                        Netlink::open().and_then(|mut nl| nl.delete_link(ifname).map(|_| ()))
                    })
                    .map_err(Error::from)
                    .and_then(|r| r),
                );
            }
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
    let pod = NetNs::open(netns_path)?;
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
    let mut nl = Netlink::open()?;
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
        let mut nl = Netlink::open()?;
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
