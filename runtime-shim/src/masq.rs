//! Per-network firewall policy: outbound masquerade (`ipMasq`, except towards
//! `nonMasqueradeCIDRs`) and isolation from other networks (`isolate`), in one nftables
//! table per network, `inet podwire-<network>`:
//!
//! ```text
//! table inet podwire-NET {                       # comment "podwire runtime-shim …"
//!   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!     meta nfproto ipv4 ip saddr SUBNET ip daddr SUBNET return      # pod to pod
//!     meta nfproto ipv4 ip saddr SUBNET ip daddr 224.0.0.0/4 return  # multicast
//!     meta nfproto ipv4 ip saddr SUBNET ip daddr CIDR return        # each nonMasqueradeCIDR
//!     meta nfproto ipv4 ip saddr SUBNET masquerade
//!   }
//!   chain forward { type filter hook forward priority filter; policy accept;  # isolate
//!     iifname BRIDGE oifname != BRIDGE oifgroup 0x7077 drop
//!     oifname BRIDGE iifname != BRIDGE iifgroup 0x7077 drop
//!   }
//! }
//! ```
//!
//! Every ADD proves the table is intact (one rule dump; each rule's comment carries a
//! digest of the whole table) and rewrites it in one transaction when it is not: after a
//! `nft flush ruleset`, a firewall reload or `runtime-shim unmasq`, the next pod heals it.
//! The table goes when the network's last pod does (DEL, or GC).
//!
//! Isolation knows another network's bridge by its device group: every bridge podwire
//! uses is put in group [`BRIDGE_GROUP`] (`ip link show group 0x7077`).

use std::process::{Command, Stdio};

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::config::Network;
use crate::nft::{self, Chain, ChainType, Expr, Hook, Nft, Rule, Table, Verdict};
use crate::{Error, ExecError, Result};

/// The device group of every bridge podwire puts pods on.
pub const BRIDGE_GROUP: u32 = 0x7077;

/// The comment on every table podwire makes; a table of podwire's name without it is
/// someone else's and is never touched.
pub const TABLE_COMMENT: &str = "podwire runtime-shim: pod masquerade and isolation";

/// What a network asks of the node's firewall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub network: String,
    pub bridge: String,
    /// The network's pod subnets (every range, whether or not a pod has an address in it).
    pub subnets: Vec<IpNet>,
    pub masquerade: bool,
    pub non_masquerade: Vec<IpNet>,
    pub isolate: bool,
}

impl Policy {
    pub fn of(net: &Network) -> Policy {
        let mut subnets: Vec<IpNet> = Vec::new();
        for r in net.range_sets.iter().flatten() {
            if !subnets.contains(&r.subnet) {
                subnets.push(r.subnet);
            }
        }
        Policy {
            network: net.name.clone(),
            bridge: net.bridge.clone(),
            subnets,
            masquerade: net.ip_masq,
            non_masquerade: net.non_masquerade.clone(),
            isolate: net.isolate,
        }
    }

    /// The table this policy needs; None when it needs none.
    pub fn table(&self) -> Option<Table> {
        let mut chains = Vec::new();
        if self.masquerade {
            let mut rules: Vec<Vec<Expr>> = Vec::new();
            let multicast: IpNet = "224.0.0.0/4".parse().unwrap_or_default();
            for s in &self.subnets {
                let v4 = s.addr().is_ipv4();
                let from = || [nft::nfproto(v4), nft::addr(true, s)].concat();
                let mut exempt = vec![*s];
                if v4 {
                    exempt.push(multicast);
                }
                exempt.extend(
                    self.non_masquerade
                        .iter()
                        .filter(|c| c.addr().is_ipv4() == v4),
                );
                for d in exempt {
                    let mut r = from();
                    r.extend(nft::addr(false, &d));
                    r.push(Expr::Verdict(Verdict::Return));
                    rules.push(r);
                }
                let mut r = from();
                r.push(Expr::Masquerade);
                rules.push(r);
            }
            chains.push(("postrouting", ChainType::Nat, Hook::Postrouting, 100, rules));
        }
        if self.isolate {
            let b = &self.bridge;
            let out = [
                nft::ifname(true, true, b),
                nft::ifname(false, false, b),
                nft::ifgroup(false, BRIDGE_GROUP),
                vec![Expr::Verdict(Verdict::Drop)],
            ]
            .concat();
            let into = [
                nft::ifname(false, true, b),
                nft::ifname(true, false, b),
                nft::ifgroup(true, BRIDGE_GROUP),
                vec![Expr::Verdict(Verdict::Drop)],
            ]
            .concat();
            chains.push((
                "forward",
                ChainType::Filter,
                Hook::Forward,
                0,
                vec![out, into],
            ));
        }
        if chains.is_empty() {
            return None;
        }
        // Each rule's comment carries a digest of the whole table, so one rule dump
        // proves every rule is there, in order, and current.
        let mut h = Sha256::new();
        h.update(format!("{}\0{:?}", self.network, chains).as_bytes());
        let digest: String = h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let total: usize = chains.iter().map(|c| c.4.len()).sum();
        let mut i = 0;
        let chains = chains
            .into_iter()
            .map(|(name, kind, hook, priority, rules)| Chain {
                name: name.into(),
                kind,
                hook,
                priority,
                rules: rules
                    .into_iter()
                    .map(|exprs| {
                        i += 1;
                        Rule {
                            exprs,
                            comment: format!("podwire {digest} {i}/{total}"),
                        }
                    })
                    .collect(),
            })
            .collect();
        Some(Table {
            name: table_name(&self.network),
            comment: TABLE_COMMENT.into(),
            chains,
        })
    }
}

/// The table of a network.
pub fn table_name(network: &str) -> String {
    format!("podwire-{network}")
}

/// Is the table of `name` absent or podwire's? Refuses one podwire did not make.
fn ensure_ours(nft: &mut Nft, name: &str) -> Result<bool> {
    match nft.table_comment(name)? {
        None => Ok(false),
        Some(Some(c)) if c == TABLE_COMMENT => Ok(true),
        Some(_) => Err(Error::NotOurs {
            kind: "nftables table inet",
            name: name.to_string(),
        }),
    }
}

/// Is the policy's table in place and current?
pub fn intact(nft: &mut Nft, p: &Policy) -> Result<bool> {
    let want = p.table();
    let name = table_name(&p.network);
    let have = nft.rule_comments(&name)?;
    Ok(match want {
        Some(t) => have == t.rule_comments(),
        None => have.is_empty(),
    })
}

/// Make the kernel hold exactly the policy's table: Ok(true) if this call changed it.
pub fn heal(nft: &mut Nft, p: &Policy) -> Result<bool> {
    if intact(nft, p)? {
        return Ok(false);
    }
    let name = table_name(&p.network);
    let exists = ensure_ours(nft, &name)?;
    match p.table() {
        // Missing (a flush, a first pod): create it; if it appeared meanwhile, replace.
        Some(t) if !exists => match nft.create_table(&t) {
            Err(Error::Netlink { source, .. })
                if source.raw_os_error() == Some(nix::libc::EEXIST) =>
            {
                ensure_ours(nft, &name)?;
                nft.replace_table(&t).map(|()| true)
            }
            r => r.map(|()| true),
        },
        Some(t) => nft.replace_table(&t).map(|()| true),
        None if exists => nft.delete_table(&name),
        None => Ok(false),
    }
}

/// Remove a network's table; Ok(true) if there was one. Never touches a table of that
/// name that podwire did not make.
pub fn remove(nft: &mut Nft, network: &str) -> Result<bool> {
    let name = table_name(network);
    if !ensure_ours(nft, &name)? {
        return Ok(false);
    }
    nft.delete_table(&name)
}

/// The iptables rule of podwire before 0.2 (one per subnet, in nat POSTROUTING), after
/// the operation flag. Only ever deleted, by [`remove_legacy`].
pub fn legacy_rule_args(network: &str, subnet: &IpNet) -> Vec<String> {
    let s = subnet.to_string();
    // The network name is validated to [A-Za-z0-9_.-]: no quotes or newlines can get in.
    let comment = format!("podwire masq {network}");
    [
        "POSTROUTING",
        "-s",
        &s,
        "!",
        "-d",
        &s,
        "-m",
        "comment",
        "--comment",
        &comment,
        "-j",
        "MASQUERADE",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

/// Where executed tools may live: fixed system directories, in this order. Never
/// `$PATH` (a hook's environment is the runtime's, a CNI plugin's the caller's) and never
/// the working directory.
pub const TOOL_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// The absolute path of a system tool.
pub fn find_tool(name: &str) -> Result<std::path::PathBuf> {
    TOOL_DIRS
        .iter()
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::ToolNotFound {
            tool: name.to_string(),
            dirs: TOOL_DIRS.join(", "),
        })
}

/// The capabilities iptables needs, and all an executed tool gets.
const TOOL_CAPS: [caps::Capability; 2] = [
    caps::Capability::CAP_NET_ADMIN,
    caps::Capability::CAP_NET_RAW,
];

/// Shrink the calling thread's capabilities to [`TOOL_CAPS`], the bounding set included
/// (a root exec's permitted set is the bounding set), so a tool it execs has no more.
/// Capabilities are per thread: callers run this on a thread of their own.
fn restrict_thread_to_tool_caps() -> std::result::Result<(), caps::errors::CapsError> {
    use caps::{CapSet, Capability, CapsHashSet};
    let want: CapsHashSet = TOOL_CAPS.into_iter().collect();
    if caps::has_cap(None, CapSet::Permitted, Capability::CAP_SETPCAP)? {
        caps::raise(None, CapSet::Effective, Capability::CAP_SETPCAP)?;
        for c in caps::read(None, CapSet::Bounding)? {
            if !want.contains(&c) {
                caps::drop(None, CapSet::Bounding, c)?;
            }
        }
    }
    let now: CapsHashSet = caps::read(None, CapSet::Permitted)?
        .intersection(&want)
        .copied()
        .collect();
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, &now)?;
    caps::set(None, CapSet::Permitted, &now)
}

/// Run a system tool (absolute path, empty environment but a fixed PATH) with only the
/// capabilities it needs, from a thread of its own.
pub fn run_tool(name: &str, args: &[String]) -> Result<std::process::Output> {
    let path = find_tool(name)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            let exec = |source| Error::Exec {
                tool: name.to_string(),
                source,
            };
            restrict_thread_to_tool_caps().map_err(|e| exec(ExecError::Capabilities(e)))?;
            Command::new(&path)
                .args(args)
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .stdin(Stdio::null())
                .output()
                .map_err(|e| exec(ExecError::Spawn(e)))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::Exec {
                tool: name.to_string(),
                source: ExecError::Panicked,
            })
        })
    })
}

/// Remove the iptables rules older versions installed for `network` (every copy);
/// Ok(number removed). A node without iptables has none.
pub fn remove_legacy(network: &str, subnets: &[IpNet]) -> Result<usize> {
    let mut n = 0;
    for subnet in subnets {
        let bin = if subnet.addr().is_ipv4() {
            "iptables"
        } else {
            "ip6tables"
        };
        let args = legacy_rule_args(network, subnet);
        let mut all: Vec<String> = ["-w", "5", "-t", "nat", "-D"].map(String::from).to_vec();
        all.extend(args.iter().cloned());
        loop {
            let out = match run_tool(bin, &all) {
                Ok(o) => o,
                Err(Error::ToolNotFound { .. }) => break,
                Err(e) => return Err(e),
            };
            match out.status.code() {
                Some(0) => n += 1,
                // 1: no such rule (left); 2, 3: no such table or chain here.
                Some(1..=3) => break,
                _ => {
                    return Err(Error::Command {
                        cmd: format!("{bin} -t nat -D {}", args.join(" ")),
                        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    });
                }
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(masq: bool, isolate: bool) -> Policy {
        Policy {
            network: "pods".into(),
            bridge: "cni0".into(),
            subnets: vec![
                "10.244.1.0/24".parse().unwrap(),
                "fd00:1::/64".parse().unwrap(),
            ],
            masquerade: masq,
            non_masquerade: vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd00::/48".parse().unwrap(),
                "192.168.0.0/16".parse().unwrap(),
            ],
            isolate,
        }
    }

    #[test]
    fn masquerade_exempts_own_subnet_multicast_and_each_listed_cidr_of_its_family() {
        let t = policy(true, false).table().unwrap();
        assert_eq!(t.name, "podwire-pods");
        assert_eq!(t.chains.len(), 1);
        let c = &t.chains[0];
        assert_eq!(
            (c.hook, c.kind, c.priority),
            (Hook::Postrouting, ChainType::Nat, 100)
        );
        // v4: own subnet, multicast, two v4 CIDRs, masquerade; v6: own, one CIDR, masquerade.
        assert_eq!(c.rules.len(), 5 + 3);
        let returns = |r: &Rule| r.exprs.last() == Some(&Expr::Verdict(Verdict::Return));
        assert!(c.rules[..4].iter().all(returns));
        assert_eq!(c.rules[4].exprs.last(), Some(&Expr::Masquerade));
        assert_eq!(c.rules[7].exprs.last(), Some(&Expr::Masquerade));
        // The destination of the second v4 exemption is 224.0.0.0/4.
        assert!(c.rules[1].exprs.contains(&Expr::Cmp {
            equal: true,
            data: vec![224, 0, 0, 0]
        }));
    }

    #[test]
    fn isolation_drops_between_this_bridge_and_other_podwire_bridges() {
        let t = policy(false, true).table().unwrap();
        assert_eq!(t.chains.len(), 1);
        let c = &t.chains[0];
        assert_eq!((c.hook, c.kind), (Hook::Forward, ChainType::Filter));
        assert_eq!(c.rules.len(), 2);
        for r in &c.rules {
            assert_eq!(r.exprs.last(), Some(&Expr::Verdict(Verdict::Drop)));
            assert!(r.exprs.contains(&Expr::Cmp {
                equal: true,
                data: BRIDGE_GROUP.to_ne_bytes().to_vec()
            }));
        }
        assert_eq!(policy(false, false).table(), None);
    }

    #[test]
    fn comments_carry_a_digest_of_the_whole_table() {
        let a = policy(true, true).table().unwrap().rule_comments();
        assert_eq!(a.len(), 10);
        assert_eq!(a[0].0, "postrouting");
        assert_eq!(a[9].0, "forward");
        assert!(a[9].1.ends_with(" 10/10"), "{}", a[9].1);
        assert!(a.iter().all(|(_, c)| c.len() <= nft::COMMENT_MAX));
        let mut other = policy(true, true);
        other.non_masquerade.pop();
        let b = other.table().unwrap().rule_comments();
        assert_ne!(
            a[0].1, b[0].1,
            "any change in the table changes every comment"
        );
        let mut renamed = policy(true, true);
        renamed.network = "pods2".into();
        assert_ne!(a[0].1, renamed.table().unwrap().rule_comments()[0].1);
    }

    #[test]
    fn legacy_rule_text() {
        let s: IpNet = "10.244.1.0/24".parse().unwrap();
        assert_eq!(
            legacy_rule_args("pods", &s).join(" "),
            "POSTROUTING -s 10.244.1.0/24 ! -d 10.244.1.0/24 -m comment --comment podwire masq pods -j MASQUERADE"
        );
    }
}
