//! The kernel seam setup and teardown run over: a handful of operations on links,
//! addresses, sysctls and masquerade in the node's namespace, plus the pod side. The real
//! side is [`Real`] (rtnetlink, procfs, iptables); unit tests pass a double that fails
//! any call on purpose, so every step's rollback is tested without root.

use std::fs;

use ipnet::IpNet;
use netns::NetNs;

use crate::link::{Link, Netlink};
use crate::masq::Policy;
use crate::nft::Nft;
use crate::plan::{Plan, PlannedRoute};
use crate::{Error, Result, masq};

/// What a veth creation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethSpec {
    pub host: String,
    pub host_mac: [u8; 6],
    pub peer: String,
    pub peer_mac: [u8; 6],
    pub mtu: Option<u32>,
    pub controller: u32,
}

pub trait Kernel {
    fn link(&mut self, name: &str) -> Result<Option<Link>>;
    fn links(&mut self) -> Result<Vec<Link>>;
    /// Ok(false): a link of that name already exists. The bridge is made in
    /// [`masq::BRIDGE_GROUP`].
    fn create_bridge(&mut self, name: &str, mtu: Option<u32>, mac: [u8; 6]) -> Result<bool>;
    fn set_up(&mut self, index: u32) -> Result<()>;
    fn set_down(&mut self, index: u32) -> Result<()>;
    fn set_group(&mut self, index: u32, group: u32) -> Result<()>;
    /// Ok(false): the address was already there.
    fn add_address(&mut self, index: u32, addr: IpNet) -> Result<bool>;
    fn del_address(&mut self, index: u32, addr: IpNet) -> Result<bool>;
    fn delete_link(&mut self, index: u32) -> Result<bool>;
    fn create_veth(&mut self, v: &VethSpec, pod: &NetNs) -> Result<Link>;
    fn bring_up_port(&mut self, index: u32, hairpin: bool) -> Result<()>;
    /// Inside the pod: lo up, addresses and routes on the pod interface. A default route
    /// is skipped when the pod has one of that family already (another network's: the
    /// first wins). Returns the link and the routes installed.
    fn configure_pod(&mut self, pod: &NetNs, p: &Plan) -> Result<(Link, Vec<PlannedRoute>)>;
    /// Inside the pod: delete `ifname` only if it carries `mac` (podwire's marker).
    fn delete_pod_link(&mut self, pod: &NetNs, ifname: &str, mac: [u8; 6]) -> Result<bool>;
    fn read_sysctl(&mut self, path: &str) -> Result<String>;
    fn write_sysctl(&mut self, path: &str, value: &str) -> Result<()>;
    /// Make the network's firewall table match `p`; Ok(true) if this call changed it.
    fn policy_heal(&mut self, p: &Policy) -> Result<bool>;
    /// Remove the network's firewall table; Ok(true) if there was one.
    fn policy_remove(&mut self, network: &str) -> Result<bool>;
}

/// The real kernel: a netlink socket in the calling thread's namespace.
pub struct Real {
    pub nl: Netlink,
    nft: Option<Nft>,
}

impl Real {
    pub fn open() -> Result<Real> {
        Ok(Real {
            nl: Netlink::open()?,
            nft: None,
        })
    }

    /// The nf_tables socket, opened on first use (most DELs never need it).
    fn nft(&mut self) -> Result<&mut Nft> {
        match &mut self.nft {
            Some(n) => Ok(n),
            slot => Ok(slot.insert(Nft::open()?)),
        }
    }
}

/// Inside the pod: lo up, addresses on the pod interface, routes. Returns its link and
/// the routes installed.
fn configure_pod_here(p: &Plan) -> Result<(Link, Vec<PlannedRoute>)> {
    let mut nl = Netlink::open()?;
    if let Some(lo) = nl.link_by_name("lo")? {
        if !lo.up {
            nl.set_link(lo.index, true, None)?;
        }
    }
    let eth = nl.link_by_name(&p.ifname)?.ok_or_else(|| {
        crate::link::nl_err(
            crate::link::NlOp::FindNewLink,
            format!("{} in the pod", p.ifname),
            std::io::Error::from_raw_os_error(nix::libc::ENODEV),
        )
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
    // First wins: a pod on two networks keeps the default route of the first.
    let default = |r: &PlannedRoute| r.dst.prefix_len() == 0;
    let defaults: Vec<bool> = if p.pod_routes.iter().any(default) {
        nl.routes()?
            .iter()
            .filter(|r| r.dst.prefix_len() == 0)
            .map(|r| r.dst.addr().is_ipv4())
            .collect()
    } else {
        Vec::new()
    };
    let mut installed = Vec::new();
    for r in &p.pod_routes {
        if default(r) && defaults.contains(&r.dst.addr().is_ipv4()) {
            continue;
        }
        nl.add_route(r.dst, r.gw, eth.index)?;
        installed.push(r.clone());
    }
    Ok((eth, installed))
}

impl Kernel for Real {
    fn link(&mut self, name: &str) -> Result<Option<Link>> {
        self.nl.link_by_name(name)
    }
    fn links(&mut self) -> Result<Vec<Link>> {
        self.nl.links()
    }
    fn create_bridge(&mut self, name: &str, mtu: Option<u32>, mac: [u8; 6]) -> Result<bool> {
        self.nl.create_bridge(name, mtu, mac)
    }
    fn set_up(&mut self, index: u32) -> Result<()> {
        self.nl.set_link(index, true, None)
    }
    fn set_down(&mut self, index: u32) -> Result<()> {
        self.nl.set_down(index)
    }
    fn set_group(&mut self, index: u32, group: u32) -> Result<()> {
        self.nl.set_group(index, group)
    }
    fn add_address(&mut self, index: u32, addr: IpNet) -> Result<bool> {
        self.nl.add_address(index, addr)
    }
    fn del_address(&mut self, index: u32, addr: IpNet) -> Result<bool> {
        self.nl.del_address(index, addr)
    }
    fn delete_link(&mut self, index: u32) -> Result<bool> {
        self.nl.delete_link_index(index)
    }
    fn create_veth(&mut self, v: &VethSpec, pod: &NetNs) -> Result<Link> {
        self.nl.create_veth(
            &v.host,
            v.host_mac,
            &v.peer,
            v.peer_mac,
            pod,
            v.mtu,
            v.controller,
        )
    }
    fn bring_up_port(&mut self, index: u32, hairpin: bool) -> Result<()> {
        self.nl.bring_up_port(index, hairpin)
    }
    fn configure_pod(&mut self, pod: &NetNs, p: &Plan) -> Result<(Link, Vec<PlannedRoute>)> {
        netns::run_in(pod, || configure_pod_here(p))?
    }
    fn delete_pod_link(&mut self, pod: &NetNs, ifname: &str, mac: [u8; 6]) -> Result<bool> {
        netns::run_in(pod, || -> Result<bool> {
            let mut nl = Netlink::open()?;
            match nl.link_by_name(ifname)? {
                Some(l) if l.mac == Some(mac) => nl.delete_link_index(l.index),
                Some(_) => {
                    eprintln!(
                        "runtime-shim: teardown: leaving {ifname} in the pod alone: it does \
                         not carry podwire's marker for this attachment"
                    );
                    Ok(false)
                }
                None => Ok(false),
            }
        })?
    }
    fn read_sysctl(&mut self, path: &str) -> Result<String> {
        let s = crate::read_regular(std::path::Path::new(path), 4096)?;
        Ok(String::from_utf8_lossy(&s).trim().to_string())
    }
    fn write_sysctl(&mut self, path: &str, value: &str) -> Result<()> {
        fs::write(path, value).map_err(|e| Error::io("write sysctl", path, e))
    }
    fn policy_heal(&mut self, p: &Policy) -> Result<bool> {
        masq::heal(self.nft()?, p)
    }
    fn policy_remove(&mut self, network: &str) -> Result<bool> {
        masq::remove(self.nft()?, network)
    }
}

/// The forwarding sysctl of a family.
pub fn forwarding_sysctl(v4: bool) -> &'static str {
    if v4 {
        "/proc/sys/net/ipv4/ip_forward"
    } else {
        "/proc/sys/net/ipv6/conf/all/forwarding"
    }
}
