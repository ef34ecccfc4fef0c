//! Stale UDP conntrack entries (kube-proxy's `pkg/proxy/conntrack`, spec §3.6 of the
//! nftables notes; the same for both backends). A UDP flow keeps the DNAT decision of its
//! first packet for as long as packets keep coming: when a Service's endpoint goes away, a
//! client that keeps sending (a DNS resolver!) keeps talking to the dead endpoint. After a
//! successful apply, every UDP entry whose original destination is a Service frontend
//! (ClusterIP, external IP or LB IP and port, or a NodePort on any address) and whose reply
//! source is not one of that frontend's serving endpoints is deleted, so the next packet
//! is NATed afresh. TCP and SCTP entries are left alone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::model::{self, Objects};
use crate::{Config, proxier};

/// Every UDP frontend of services with at least one serving endpoint, and those
/// endpoints' addresses.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Frontends {
    pub ip_port: BTreeMap<(IpAddr, u16), BTreeSet<IpAddr>>,
    pub node_port: BTreeMap<u16, BTreeSet<IpAddr>>,
}

impl Frontends {
    pub fn of(cfg: &Config, objs: &Objects) -> Frontends {
        let mut f = Frontends::default();
        for g in proxier::groups(objs) {
            // Only a Service with a UDP port has frontends here: the others are not
            // modelled at all (a sync loop runs this after every change).
            let udp = g.service.is_some_and(|s| {
                s.spec
                    .ports
                    .iter()
                    .flatten()
                    .any(|p| model::parse_protocol(p.protocol.as_deref()) == Ok("udp"))
            });
            if !udp {
                continue;
            }
            let m = proxier::build_group(cfg, &g);
            for (i, sp) in m.ports.iter().enumerate() {
                if sp.protocol != "udp" {
                    continue;
                }
                let serving: BTreeSet<IpAddr> = m
                    .endpoints_of(i)
                    .iter()
                    .filter(|e| e.serving)
                    .map(|e| e.ip)
                    .collect();
                if serving.is_empty() {
                    continue;
                }
                let ips = std::iter::once(&sp.cluster_ip)
                    .chain(&sp.external_ips)
                    .chain(&sp.lb_vips);
                for ip in ips {
                    f.ip_port
                        .entry((*ip, sp.port))
                        .or_default()
                        .extend(&serving);
                }
                if sp.node_port != 0 {
                    f.node_port
                        .entry(sp.node_port)
                        .or_default()
                        .extend(&serving);
                }
            }
        }
        f
    }

    pub fn is_empty(&self) -> bool {
        self.ip_port.is_empty() && self.node_port.is_empty()
    }
}

/// One UDP conntrack entry: its original destination and its reply's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub orig_dst: IpAddr,
    pub orig_dport: u16,
    pub reply_src: IpAddr,
}

/// The UDP entries of `conntrack -L -p udp` output (other lines are skipped).
pub fn parse_list(text: &str) -> Vec<Entry> {
    text.lines()
        .filter(|l| l.starts_with("udp "))
        .filter_map(|l| {
            let mut dst = None;
            let mut dport = None;
            let mut srcs = Vec::new();
            for w in l.split_whitespace() {
                if let Some(v) = w.strip_prefix("dst=") {
                    dst = dst.or_else(|| v.parse().ok());
                } else if let Some(v) = w.strip_prefix("dport=") {
                    dport = dport.or_else(|| v.parse().ok());
                } else if let Some(v) = w.strip_prefix("src=") {
                    srcs.push(v);
                }
            }
            Some(Entry {
                orig_dst: dst?,
                orig_dport: dport?,
                reply_src: srcs.get(1)?.parse().ok()?,
            })
        })
        .collect()
}

/// What to delete, as `conntrack -D` filters: `(Some(dst), port, reply src)` for an
/// IP:port frontend, `(None, node port, reply src)` for a NodePort. Deduplicated.
pub fn stale(f: &Frontends, entries: &[Entry]) -> BTreeSet<(Option<IpAddr>, u16, IpAddr)> {
    let mut out = BTreeSet::new();
    for e in entries {
        if let Some(eps) = f.ip_port.get(&(e.orig_dst, e.orig_dport)) {
            if !eps.contains(&e.reply_src) {
                out.insert((Some(e.orig_dst), e.orig_dport, e.reply_src));
            }
        }
        if let Some(eps) = f.node_port.get(&e.orig_dport) {
            if !eps.contains(&e.reply_src) {
                out.insert((None, e.orig_dport, e.reply_src));
            }
        }
    }
    out
}

/// `conntrack -D` arguments for one filter.
pub fn delete_args(family: crate::Family, filter: &(Option<IpAddr>, u16, IpAddr)) -> Vec<String> {
    let fam = match family {
        crate::Family::V4 => "ipv4",
        crate::Family::V6 => "ipv6",
    };
    let mut a: Vec<String> = ["-D", "-p", "udp", "-f", fam].map(String::from).to_vec();
    if let Some(dst) = filter.0 {
        a.extend(["--orig-dst".into(), dst.to_string()]);
    }
    a.extend([
        "--orig-port-dst".into(),
        filter.1.to_string(),
        "--reply-src".into(),
        filter.2.to_string(),
    ]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_entries_are_those_to_a_frontend_not_answered_by_a_serving_endpoint() {
        let text = "\
udp      17 29 src=10.77.0.4 dst=10.96.0.20 sport=40000 dport=53 src=10.77.0.2 dst=10.77.0.4 sport=5353 dport=40000 mark=0 use=1
udp      17 29 src=10.77.0.4 dst=10.96.0.20 sport=40001 dport=53 [UNREPLIED] src=10.77.0.3 dst=10.77.0.4 sport=5353 dport=40001 mark=0 use=1
udp      17 29 src=10.77.0.4 dst=10.96.0.20 sport=40002 dport=53 src=10.96.0.20 dst=10.77.0.4 sport=53 dport=40002 mark=0 use=1
udp      17 29 src=192.0.2.9 dst=192.168.1.1 sport=40003 dport=30053 src=10.77.0.2 dst=192.0.2.9 sport=5353 dport=40003 mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.77.0.4 dst=10.96.0.20 sport=1 dport=53 src=10.77.0.2 dst=10.77.0.4 sport=5353 dport=1 [ASSURED] mark=0 use=1
conntrack v1.4.7 (conntrack-tools): 5 flow entries have been shown.
";
        let entries = parse_list(text);
        assert_eq!(entries.len(), 4, "tcp and the summary are skipped");
        assert_eq!(entries[1].reply_src.to_string(), "10.77.0.3");
        let mut f = Frontends::default();
        let vip: IpAddr = "10.96.0.20".parse().unwrap();
        let b: IpAddr = "10.77.0.3".parse().unwrap();
        f.ip_port.insert((vip, 53), BTreeSet::from([b]));
        f.node_port.insert(30053, BTreeSet::from([b]));
        let s: Vec<_> = stale(&f, &entries).into_iter().collect();
        // The flow to the old endpoint, the un-NATed one (reply from the VIP itself) and
        // the NodePort flow to the old endpoint; not the flow already on b.
        assert_eq!(
            s,
            vec![
                (None, 30053, "10.77.0.2".parse().unwrap()),
                (Some(vip), 53, "10.77.0.2".parse().unwrap()),
                (Some(vip), 53, vip),
            ]
        );
        assert_eq!(
            delete_args(crate::Family::V4, &s[1]).join(" "),
            "-D -p udp -f ipv4 --orig-dst 10.96.0.20 --orig-port-dst 53 --reply-src 10.77.0.2"
        );
    }
}
