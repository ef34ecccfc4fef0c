//! The kernel seam: a small synchronous rtnetlink client. A socket belongs to the network
//! namespace it was opened in, so open one per namespace, from a thread inside it
//! (`netns::run_in` for pods); no switching is ever needed afterwards.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoBridgePort, InfoData, InfoKind, InfoPortData,
    InfoPortKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::{Error, Result};

/// A link as this crate cares about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub controller: Option<u32>,
    pub up: bool,
    pub alias: Option<String>,
    /// The link's kind ("bridge", "veth", ...); None for plain devices (lo, most NICs).
    pub kind: Option<String>,
    /// Its device group (`ip link set group`); podwire's bridges are in `masq::BRIDGE_GROUP`.
    pub group: u32,
}

/// What a VXLAN device is asked to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: std::net::Ipv4Addr,
    /// The underlay link's index.
    pub underlay: u32,
    pub mtu: u32,
    pub mac: [u8; 6],
}

/// What an existing VXLAN device is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanParams {
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<std::net::Ipv4Addr>,
    pub learning: Option<bool>,
}

/// A neighbour (ARP) or forwarding-database entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighEntry {
    pub ifindex: u32,
    pub ip: Option<IpAddr>,
    pub mac: Option<[u8; 6]>,
    pub permanent: bool,
}

/// A route in the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
    /// Who installed it (`proto` in `ip route`): the kernel, boot, podwire's own, ...
    pub protocol: u8,
}

/// The routing protocol number podwire's node routes carry (`ip route ... proto 77`), so
/// `routes --apply` can prove a route is its own before it replaces or removes it.
pub const PODWIRE_ROUTE_PROTO: u8 = 77;

pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// A netlink operation, for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NlOp {
    OpenSocket,
    GetLink,
    ListLinks,
    CreateBridge,
    SetLink,
    SetLinkDown,
    CreateVeth,
    DisableIpv6AddrGen,
    BringUpPort,
    DeleteLink,
    AddAddress,
    DelAddress,
    ListAddresses,
    AddRoute,
    ReplaceRoute,
    DeleteRoute,
    ListRoutes,
    /// A link looked up right after it was created was not there.
    FindNewLink,
    CreateVxlan,
    ListNeighbours,
    SetNeighbour,
    DeleteNeighbour,
    NftGetTable,
    NftListRules,
    NftApply,
    NftDeleteTable,
}

impl std::fmt::Display for NlOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NlOp::OpenSocket => "open netlink socket",
            NlOp::GetLink => "get link",
            NlOp::ListLinks => "list links",
            NlOp::CreateBridge => "create bridge",
            NlOp::SetLink => "set link",
            NlOp::SetLinkDown => "set link down",
            NlOp::CreateVeth => "create veth",
            NlOp::DisableIpv6AddrGen => "disable IPv6 address generation on link",
            NlOp::BringUpPort => "bring up bridge port",
            NlOp::DeleteLink => "delete link",
            NlOp::AddAddress => "add address",
            NlOp::DelAddress => "remove address",
            NlOp::ListAddresses => "list addresses",
            NlOp::AddRoute => "add route",
            NlOp::ReplaceRoute => "replace route",
            NlOp::DeleteRoute => "delete route",
            NlOp::ListRoutes => "list routes",
            NlOp::FindNewLink => "find the link just created",
            NlOp::CreateVxlan => "create vxlan device",
            NlOp::ListNeighbours => "list neighbour entries",
            NlOp::SetNeighbour => "set neighbour entry",
            NlOp::DeleteNeighbour => "delete neighbour entry",
            NlOp::NftGetTable => "get nftables table inet",
            NlOp::NftListRules => "list nftables rules of",
            NlOp::NftApply => "apply nftables table inet",
            NlOp::NftDeleteTable => "delete nftables table inet",
        })
    }
}

pub(crate) fn nl_err(op: NlOp, target: impl std::fmt::Display, source: io::Error) -> Error {
    Error::Netlink {
        op,
        target: target.to_string(),
        source,
    }
}

fn mac6(v: &[u8]) -> Option<[u8; 6]> {
    v.try_into().ok()
}

pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink> {
        let mut sock =
            Socket::new(NETLINK_ROUTE).map_err(|e| nl_err(NlOp::OpenSocket, "socket", e))?;
        sock.bind_auto()
            .map_err(|e| nl_err(NlOp::OpenSocket, "bind", e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| nl_err(NlOp::OpenSocket, "connect", e))?;
        let _ = sock.set_ext_ack(true);
        Ok(Netlink {
            sock,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Send one request; collect replies until the ACK (or DONE for dumps).
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        // Dumps interrupted by a concurrent change (NLM_F_DUMP_INTR) are retried.
        for _ in 0..5 {
            self.seq = self.seq.wrapping_add(1);
            let seq = self.seq;
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
            header.sequence_number = seq;
            let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg.clone()));
            nl.finalize();
            let mut out = vec![0u8; nl.buffer_len()];
            nl.serialize(&mut out);
            self.sock.send(&out, 0)?;

            let mut replies = Vec::new();
            let mut interrupted = false;
            'recv: loop {
                let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
                let mut off = 0;
                while off < n {
                    let bytes = &self.buf[off..n];
                    let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                    let len = m.header.length as usize;
                    if len == 0 {
                        break;
                    }
                    off += (len + 3) & !3;
                    if m.header.sequence_number != seq {
                        continue;
                    }
                    if m.header.flags & NLM_F_DUMP_INTR != 0 {
                        interrupted = true;
                    }
                    match m.payload {
                        NetlinkPayload::Error(e) => match e.code {
                            Some(code) => return Err(io::Error::from_raw_os_error(-code.get())),
                            None => break 'recv,
                        },
                        NetlinkPayload::Done(_) => break 'recv,
                        // Non-dump requests carry NLM_F_ACK: keep reading until the
                        // ACK, so no reply is left behind for the next request.
                        NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                        _ => {}
                    }
                }
            }
            if !(dump && interrupted) {
                return Ok(replies);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "netlink dump kept being interrupted",
        ))
    }

    fn parse_link(m: &LinkMessage) -> Link {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            mtu: None,
            controller: None,
            up: m.header.flags.contains(LinkFlags::Up),
            alias: None,
            kind: None,
            group: 0,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(a) => l.mac = mac6(a),
                LinkAttribute::Mtu(m) => l.mtu = Some(*m),
                LinkAttribute::Controller(c) => l.controller = Some(*c),
                LinkAttribute::IfAlias(s) => l.alias = Some(s.clone()),
                LinkAttribute::Group(g) => l.group = *g,
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            l.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }

    /// The link called `name`, or None.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(r) => Ok(r.iter().find_map(|x| match x {
                RouteNetlinkMessage::NewLink(l) => Some(Self::parse_link(l)),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(nix::libc::ENODEV) => Ok(None),
            Err(e) => Err(nl_err(NlOp::GetLink, name, e)),
        }
    }

    /// Every link (for checks and leak detection).
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let r = self
            .request(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(|e| nl_err(NlOp::ListLinks, "", e))?;
        Ok(r.iter()
            .filter_map(|x| match x {
                RouteNetlinkMessage::NewLink(l) => Some(Self::parse_link(l)),
                _ => None,
            })
            .collect())
    }

    /// Create a bridge (up, with `mac` and `mtu`). Ok(false) if it already exists.
    pub fn create_bridge(&mut self, name: &str, mtu: Option<u32>, mac: [u8; 6]) -> Result<bool> {
        let mut m = LinkMessage::default();
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        m.attributes
            .push(LinkAttribute::Group(crate::masq::BRIDGE_GROUP));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        match self.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => Ok(false),
            Err(e) => Err(nl_err(NlOp::CreateBridge, name, e)),
        }
    }

    /// Set a link up (and optionally its alias) by index.
    pub fn set_link(&mut self, index: u32, up: bool, alias: Option<&str>) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if up {
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
        }
        if let Some(a) = alias {
            m.attributes.push(LinkAttribute::IfAlias(a.to_string()));
        }
        self.request(RouteNetlinkMessage::SetLink(m), 0)
            .map(|_| ())
            .map_err(|e| nl_err(NlOp::SetLink, index, e))
    }

    /// Set one attribute of a link by index.
    fn set_attribute(&mut self, index: u32, a: LinkAttribute) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(a);
        self.request(RouteNetlinkMessage::SetLink(m), 0)
            .map(|_| ())
            .map_err(|e| nl_err(NlOp::SetLink, index, e))
    }

    /// Put a link in device group `group`.
    pub fn set_group(&mut self, index: u32, group: u32) -> Result<()> {
        self.set_attribute(index, LinkAttribute::Group(group))
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        self.set_attribute(index, LinkAttribute::Mtu(mtu))
    }

    /// Set a link down by index.
    pub fn set_down(&mut self, index: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(m), 0)
            .map(|_| ())
            .map_err(|e| nl_err(NlOp::SetLinkDown, index, e))
    }

    /// Create a veth pair in one request: `host` here, enslaved to `controller` (down,
    /// see [`Netlink::bring_up_port`]); its peer `peer` created directly inside the
    /// namespace `peer_ns` (an nsfs fd). Returns the host end, echoed by the kernel.
    ///
    /// Both ends get the MAC address asked for (`host_mac`, `peer_mac`) in the creating
    /// request itself (the kernel ignores an alias there), so a marker derived from the
    /// attachment is on the link from its first instant: teardown and GC delete nothing
    /// without it.
    #[allow(clippy::too_many_arguments)]
    pub fn create_veth(
        &mut self,
        host: &str,
        host_mac: [u8; 6],
        peer: &str,
        peer_mac: [u8; 6],
        peer_ns: &impl AsFd,
        mtu: Option<u32>,
        controller: u32,
    ) -> Result<Link> {
        // The peer cannot be created up: the kernel configures it before the pair is
        // linked, and opening an unpaired veth fails with ENOTCONN. configure_pod sets
        // it up from inside the pod.
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.to_string()));
        p.attributes.push(LinkAttribute::Address(peer_mac.to_vec()));
        p.attributes
            .push(LinkAttribute::NetNsFd(peer_ns.as_fd().as_raw_fd()));
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(host.to_string()));
        m.attributes.push(LinkAttribute::Address(host_mac.to_vec()));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
            p.attributes.push(LinkAttribute::Mtu(mtu));
        }
        m.attributes.push(LinkAttribute::Controller(controller));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        let replies = self
            .request(
                RouteNetlinkMessage::NewLink(m),
                NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
            )
            .map_err(|e| {
                nl_err(
                    NlOp::CreateVeth,
                    format!("{host} (peer {peer} in the pod)"),
                    e,
                )
            })?;
        let echoed = replies.iter().find_map(|r| match r {
            RouteNetlinkMessage::NewLink(l) => Some(Self::parse_link(l)).filter(|l| l.name == host),
            _ => None,
        });
        match echoed {
            Some(l) => Ok(l),
            // Kernels before 6.3 do not echo link creation.
            None => self.link_by_name(host)?.ok_or_else(|| {
                nl_err(
                    NlOp::FindNewLink,
                    host,
                    io::Error::from_raw_os_error(nix::libc::ENODEV),
                )
            }),
        }
    }

    /// Stop the kernel from giving a (still down) link an IPv6 link-local address.
    /// The kernel rejects this at creation and applies flags before it within one
    /// message, so it is a request of its own, before the link goes up.
    pub fn disable_ipv6_addrgen(&mut self, index: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]));
        self.request(RouteNetlinkMessage::SetLink(m), 0)
            .map(|_| ())
            .map_err(|e| nl_err(NlOp::DisableIpv6AddrGen, index, e))
    }

    /// Bring a new bridge port up, with no IPv6 link-local address and, if asked,
    /// hairpin mode on (so a pod reaches itself through a Service VIP).
    ///
    /// A bridge port needs no IPv6 address, and generating one sends DAD/MLD multicast
    /// that the bridge floods to every port.
    pub fn bring_up_port(&mut self, index: u32, hairpin: bool) -> Result<()> {
        self.disable_ipv6_addrgen(index)?;
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        if hairpin {
            m.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::PortKind(InfoPortKind::Bridge),
                LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                    true,
                )])),
            ]));
        }
        self.request(RouteNetlinkMessage::NewLink(m), 0)
            .map(|_| ())
            .map_err(|e| nl_err(NlOp::BringUpPort, index, e))
    }

    /// Delete a link by name. Ok(false) if it does not exist.
    pub fn delete_link(&mut self, name: &str) -> Result<bool> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::DelLink(m), 0) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(nix::libc::ENODEV) => Ok(false),
            Err(e) => Err(nl_err(NlOp::DeleteLink, name, e)),
        }
    }

    /// Delete a link by index (after its name and marker were checked, so a link renamed
    /// or replaced in between is never hit by name). Ok(false) if it is gone.
    pub fn delete_link_index(&mut self, index: u32) -> Result<bool> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        match self.request(RouteNetlinkMessage::DelLink(m), 0) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(nix::libc::ENODEV) => Ok(false),
            Err(e) => Err(nl_err(NlOp::DeleteLink, index, e)),
        }
    }

    /// Remove `addr` from a link. Ok(false) if it was not there.
    pub fn del_address(&mut self, index: u32, addr: IpNet) -> Result<bool> {
        let mut m = AddressMessage::default();
        m.header.family = family(addr.addr());
        m.header.prefix_len = addr.prefix_len();
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(addr.addr()));
        m.attributes.push(AddressAttribute::Address(addr.addr()));
        match self.request(RouteNetlinkMessage::DelAddress(m), 0) {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(nix::libc::EADDRNOTAVAIL | nix::libc::ENODEV)
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(nl_err(
                NlOp::DelAddress,
                format!("{addr} from link {index}"),
                e,
            )),
        }
    }

    /// Add `addr` (with its prefix) to a link. Ok(false) if it is already there.
    pub fn add_address(&mut self, index: u32, addr: IpNet) -> Result<bool> {
        let mut m = AddressMessage::default();
        m.header.family = family(addr.addr());
        m.header.prefix_len = addr.prefix_len();
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(addr.addr()));
        if addr.addr().is_ipv4() {
            m.attributes.push(AddressAttribute::Address(addr.addr()));
            if let IpNet::V4(n) = addr {
                m.attributes
                    .push(AddressAttribute::Broadcast(n.broadcast()));
            }
        } else {
            // No duplicate address detection: the address is ours by IPAM, and DAD would
            // hold it "tentative" (unusable) for a second or more.
            m.attributes.push(AddressAttribute::Address(addr.addr()));
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match self.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => Ok(false),
            Err(e) => Err(nl_err(
                NlOp::AddAddress,
                format!("{addr} to link {index}"),
                e,
            )),
        }
    }

    /// Add a route in the main table. Ok(false) if it already exists.
    pub fn add_route(&mut self, dst: IpNet, gw: Option<IpAddr>, oif: u32) -> Result<bool> {
        let mut m = RouteMessage::default();
        m.header.address_family = family(dst.addr());
        m.header.destination_prefix_length = dst.prefix_len();
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = if gw.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        m.header.kind = RouteType::Unicast;
        if dst.prefix_len() > 0 {
            m.attributes
                .push(RouteAttribute::Destination(route_addr(dst.addr())));
        }
        if let Some(gw) = gw {
            m.attributes.push(RouteAttribute::Gateway(route_addr(gw)));
        }
        m.attributes.push(RouteAttribute::Oif(oif));
        match self.request(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => Ok(false),
            Err(e) => Err(nl_err(
                NlOp::AddRoute,
                format!(
                    "{dst}{}",
                    gw.map(|g| format!(" via {g}")).unwrap_or_default()
                ),
                e,
            )),
        }
    }

    /// Add or replace a route via a gateway the kernel resolves to an interface (for
    /// routes to other nodes' pod subnets), marked `proto` [`PODWIRE_ROUTE_PROTO`].
    /// Idempotent. Callers check first that `dst` is not a route of someone else's.
    pub fn replace_route_via(&mut self, dst: IpNet, gw: IpAddr) -> Result<()> {
        self.replace_podwire_route(dst, gw, None)
    }

    /// podwire's route to `dst` via `gw`; with `onlink`, on that link whatever its
    /// addresses say (an overlay's VTEP).
    fn replace_podwire_route(&mut self, dst: IpNet, gw: IpAddr, onlink: Option<u32>) -> Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = family(dst.addr());
        m.header.destination_prefix_length = dst.prefix_len();
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Other(PODWIRE_ROUTE_PROTO);
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        if dst.prefix_len() > 0 {
            m.attributes
                .push(RouteAttribute::Destination(route_addr(dst.addr())));
        }
        m.attributes.push(RouteAttribute::Gateway(route_addr(gw)));
        if let Some(oif) = onlink {
            m.header.flags = RouteFlags::Onlink;
            m.attributes.push(RouteAttribute::Oif(oif));
        }
        self.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(|_| ())
        .map_err(|e| {
            let how = if onlink.is_some() { " onlink" } else { "" };
            nl_err(NlOp::ReplaceRoute, format!("{dst} via {gw}{how}"), e)
        })
    }

    /// Delete podwire's route to `dst` (only one carrying [`PODWIRE_ROUTE_PROTO`]: the
    /// kernel matches the protocol). Ok(false) if there is none.
    pub fn delete_podwire_route(&mut self, dst: IpNet) -> Result<bool> {
        let mut m = RouteMessage::default();
        m.header.address_family = family(dst.addr());
        m.header.destination_prefix_length = dst.prefix_len();
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Other(PODWIRE_ROUTE_PROTO);
        m.header.scope = RouteScope::NoWhere;
        if dst.prefix_len() > 0 {
            m.attributes
                .push(RouteAttribute::Destination(route_addr(dst.addr())));
        }
        match self.request(RouteNetlinkMessage::DelRoute(m), 0) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(nix::libc::ESRCH) => Ok(false),
            Err(e) => Err(nl_err(NlOp::DeleteRoute, dst, e)),
        }
    }

    /// Every address of every link (index, address), for checks that a route must not
    /// cover one of the node's own addresses.
    pub fn all_addresses(&mut self) -> Result<Vec<(u32, IpNet)>> {
        let r = self
            .request(
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(|e| nl_err(NlOp::ListAddresses, "", e))?;
        let mut out = Vec::new();
        for x in r {
            if let RouteNetlinkMessage::NewAddress(a) = x {
                let ip = a
                    .attributes
                    .iter()
                    .find_map(|at| match at {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    })
                    .or_else(|| {
                        a.attributes.iter().find_map(|at| match at {
                            AddressAttribute::Address(ip) => Some(*ip),
                            _ => None,
                        })
                    });
                if let Some(n) = ip.and_then(|ip| IpNet::new(ip, a.header.prefix_len).ok()) {
                    out.push((a.header.index, n));
                }
            }
        }
        Ok(out)
    }

    /// Addresses of a link.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>> {
        Ok(self
            .all_addresses()?
            .into_iter()
            .filter(|(i, _)| *i == index)
            .map(|(_, n)| n)
            .collect())
    }

    /// Create a VXLAN device (down): VNI, UDP port, local address and underlay link,
    /// learning off (every remote is a static FDB entry), MAC and MTU as given.
    pub fn create_vxlan(&mut self, v: &VxlanSpec) -> Result<()> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(v.name.clone()));
        m.attributes.push(LinkAttribute::Address(v.mac.to_vec()));
        m.attributes.push(LinkAttribute::Mtu(v.mtu));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(v.vni),
                InfoVxlan::Local(v.local),
                InfoVxlan::Link(v.underlay),
                InfoVxlan::Port(v.port),
                InfoVxlan::Learning(false),
            ])),
        ]));
        self.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
            .map(|_| ())
            .map_err(|e| nl_err(NlOp::CreateVxlan, &v.name, e))
    }

    /// The VXLAN parameters (VNI, port, local address) of link `name`, with the link;
    /// None if there is no such link.
    pub fn vxlan(&mut self, name: &str) -> Result<Option<(Link, VxlanParams)>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        let r = match self.request(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENODEV) => return Ok(None),
            Err(e) => return Err(nl_err(NlOp::GetLink, name, e)),
        };
        for x in r {
            let RouteNetlinkMessage::NewLink(l) = x else {
                continue;
            };
            let mut p = VxlanParams::default();
            for a in &l.attributes {
                let LinkAttribute::LinkInfo(infos) = a else {
                    continue;
                };
                for i in infos {
                    let LinkInfo::Data(InfoData::Vxlan(v)) = i else {
                        continue;
                    };
                    for x in v {
                        match x {
                            InfoVxlan::Id(id) => p.vni = Some(*id),
                            InfoVxlan::Port(port) => p.port = Some(*port),
                            InfoVxlan::Local(ip) => p.local = Some(*ip),
                            InfoVxlan::Learning(b) => p.learning = Some(*b),
                            _ => {}
                        }
                    }
                }
            }
            return Ok(Some((Self::parse_link(&l), p)));
        }
        Ok(None)
    }

    /// Neighbour entries of `family` (Inet: ARP; Bridge: forwarding database), every link.
    pub fn neighbours(&mut self, bridge_fdb: bool) -> Result<Vec<NeighEntry>> {
        let mut q = NeighbourMessage::default();
        q.header.family = if bridge_fdb {
            AddressFamily::Bridge
        } else {
            AddressFamily::Inet
        };
        let r = self
            .request(RouteNetlinkMessage::GetNeighbour(q), NLM_F_DUMP)
            .map_err(|e| nl_err(NlOp::ListNeighbours, "", e))?;
        let mut out = Vec::new();
        for x in r {
            let RouteNetlinkMessage::NewNeighbour(n) = x else {
                continue;
            };
            let mut e = NeighEntry {
                ifindex: n.header.ifindex,
                ip: None,
                mac: None,
                permanent: n.header.state == NeighbourState::Permanent,
            };
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                        e.ip = Some(IpAddr::V4(*ip))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                        e.ip = Some(IpAddr::V6(*ip))
                    }
                    // FDB entries (family bridge) carry the remote as raw bytes.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(v)) => {
                        e.ip = match v.len() {
                            4 => <[u8; 4]>::try_from(v.as_slice()).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(v.as_slice()).ok().map(IpAddr::from),
                            _ => None,
                        }
                    }
                    NeighbourAttribute::LinkLayerAddress(l) => e.mac = mac6(l),
                    _ => {}
                }
            }
            out.push(e);
        }
        Ok(out)
    }

    fn neighbour_msg(
        bridge_fdb: bool,
        ifindex: u32,
        ip: IpAddr,
        mac: Option<[u8; 6]>,
    ) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.ifindex = ifindex;
        m.header.state = NeighbourState::Permanent;
        m.header.kind = RouteType::Unspec;
        if bridge_fdb {
            m.header.family = AddressFamily::Bridge;
            m.header.flags = NeighbourFlags::Own;
        } else {
            m.header.family = family(ip);
        }
        let dst = match ip {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        };
        m.attributes.push(NeighbourAttribute::Destination(dst));
        if let Some(mac) = mac {
            m.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        }
        m
    }

    /// Add or replace a permanent entry: an ARP entry `ip` -> `mac` on `ifindex`, or with
    /// `bridge_fdb` a forwarding-database entry `mac` -> remote `ip` on a VXLAN device.
    pub fn set_neighbour(
        &mut self,
        bridge_fdb: bool,
        ifindex: u32,
        ip: IpAddr,
        mac: [u8; 6],
    ) -> Result<()> {
        let m = Self::neighbour_msg(bridge_fdb, ifindex, ip, Some(mac));
        self.request(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(|_| ())
        .map_err(|e| {
            nl_err(
                NlOp::SetNeighbour,
                format!("{ip} {} on link {ifindex}", mac_string(&mac)),
                e,
            )
        })
    }

    /// Delete an entry as [`Netlink::set_neighbour`] made it; Ok(false) if it is gone.
    pub fn del_neighbour(
        &mut self,
        bridge_fdb: bool,
        ifindex: u32,
        ip: IpAddr,
        mac: Option<[u8; 6]>,
    ) -> Result<bool> {
        let m = Self::neighbour_msg(bridge_fdb, ifindex, ip, mac);
        match self.request(RouteNetlinkMessage::DelNeighbour(m), 0) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => Ok(false),
            Err(e) => Err(nl_err(
                NlOp::DeleteNeighbour,
                format!("{ip} on link {ifindex}"),
                e,
            )),
        }
    }

    /// Add or replace podwire's route to `dst` via `gw` on link `oif`, on-link (the
    /// gateway is reached through the link whatever its addresses say: an overlay's
    /// VTEP), `proto` [`PODWIRE_ROUTE_PROTO`].
    pub fn replace_route_onlink(&mut self, dst: IpNet, gw: IpAddr, oif: u32) -> Result<()> {
        self.replace_podwire_route(dst, gw, Some(oif))
    }

    /// Routes of the main table, both families.
    pub fn routes(&mut self) -> Result<Vec<RouteEntry>> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut q = RouteMessage::default();
            q.header.address_family = fam;
            let r = self
                .request(RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP)
                .map_err(|e| nl_err(NlOp::ListRoutes, "", e))?;
            for x in r {
                let RouteNetlinkMessage::NewRoute(rm) = x else {
                    continue;
                };
                if rm.header.table != RouteHeader::RT_TABLE_MAIN {
                    continue;
                }
                let mut dst_ip = None;
                let mut gw = None;
                let mut oif = None;
                let protocol = u8::from(rm.header.protocol);
                for a in &rm.attributes {
                    match a {
                        RouteAttribute::Destination(d) => dst_ip = ip_of(d),
                        RouteAttribute::Gateway(g) => gw = ip_of(g),
                        RouteAttribute::Oif(o) => oif = Some(*o),
                        _ => {}
                    }
                }
                let zero: IpAddr = if fam == AddressFamily::Inet {
                    IpAddr::from([0u8; 4])
                } else {
                    IpAddr::from([0u8; 16])
                };
                if let Ok(dst) =
                    IpNet::new(dst_ip.unwrap_or(zero), rm.header.destination_prefix_length)
                {
                    out.push(RouteEntry {
                        dst,
                        gw,
                        oif,
                        protocol,
                    });
                }
            }
        }
        Ok(out)
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn route_addr(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}
