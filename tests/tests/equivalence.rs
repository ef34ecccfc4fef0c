//! The two Service backends decide alike, checked with real packets: for every golden
//! vector's input, each backend's ruleset is applied in a throwaway node namespace and TCP
//! connections are opened to every frontend of every service port (ClusterIP, external
//! IPs, LB VIPs, NodePort on the node address) from a pod client and from an outside
//! client. What happened to each is read back (the kernel's conntrack entry: the DNAT
//! target and whether the source was masqueraded; else refused or dropped), and the two
//! backends' outcomes must be equal.

#![allow(clippy::unwrap_used)] // test code

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use iptables_gen::model::{self, Objects};
use iptables_gen::{Config, Family, LocalDetector, SyncPlan, apply, nftables, proxier};
use podwire_testkit::*;

#[path = "../../iptables-gen/tests/support/vectors.rs"]
mod vectors;

/// One probe target: a frontend of a TCP service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Frontend {
    what: String,
    ip: IpAddr,
    port: u16,
    affinity: bool,
}

fn frontends(cfg: &Config, objs: &Objects, node_ip: IpAddr) -> Vec<Frontend> {
    let mut out = Vec::new();
    for g in proxier::groups(objs) {
        let m = proxier::build_group(cfg, &g);
        for sp in m.ports.iter().filter(|sp| sp.protocol == "tcp") {
            let name = sp.svc_port_name();
            let aff = sp.sticky_seconds.is_some();
            let mut add = |what: &str, ip: IpAddr, port: u16| {
                out.push(Frontend {
                    what: format!("{name} {what}"),
                    ip,
                    port,
                    affinity: aff,
                })
            };
            add("cluster IP", sp.cluster_ip, sp.port);
            for ip in &sp.external_ips {
                add("external IP", *ip, sp.port);
            }
            for ip in &sp.lb_vips {
                add("LB VIP", *ip, sp.port);
            }
            if sp.node_port != 0 {
                add("NodePort", node_ip, sp.node_port);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A node with the vector's addresses, a pod client and an outside client, every other
/// destination routed into a sink device with an address (so DNATed and masqueraded
/// packets leave, and their conntrack entries are confirmed).
struct Bench {
    node: Ns,
    pod: Ns,
    ext: Ns,
    pod_ip: IpAddr,
    ext_ip: IpAddr,
}

fn bench(tag: &str, cfg: &Config, node_addrs: &[String]) -> Bench {
    let v4 = cfg.family == Family::V4;
    let node = Ns::new(&format!("{tag}n"));
    let pod = Ns::new(&format!("{tag}p"));
    let ext = Ns::new(&format!("{tag}x"));
    node.ok("ip", &["link", "add", "eth0", "type", "bridge"]);
    node.ok("ip", &["link", "set", "eth0", "up"]);
    for a in node_addrs {
        let mut args = vec!["addr", "add", a.as_str(), "dev", "eth0"];
        if a.contains(':') {
            args.push("nodad");
        }
        node.ok("ip", &args);
    }
    node.ok("ip", &["link", "add", "sink0", "type", "bridge"]);
    node.ok("ip", &["link", "set", "sink0", "up"]);
    let fam = if v4 { "-4" } else { "-6" };
    let (sink_addr, any) = if v4 {
        ("198.18.0.1/32", "default")
    } else {
        ("fd99::1/128", "default")
    };
    node.ok("ip", &["addr", "add", sink_addr, "dev", "sink0", "nodad"]);
    node.ok("ip", &[fam, "route", "add", any, "dev", "sink0"]);
    let fwd = if v4 {
        "net.ipv4.ip_forward=1"
    } else {
        "net.ipv6.conf.all.forwarding=1"
    };
    node.ok("sysctl", &["-qw", fwd]);
    // Every refused probe gets its ICMP error (the per-host limit would turn the 7th
    // refusal in a second into silence).
    node.ok(
        "sysctl",
        &[
            "-qw",
            "net.ipv4.icmp_ratelimit=0",
            "net.ipv4.icmp_msgs_per_sec=100000",
            "net.ipv6.icmp.ratelimit=0",
        ],
    );
    // The pod's link is named as the detector expects pod traffic to arrive.
    let pod_link = match &cfg.local_detector {
        LocalDetector::BridgeInterface(i) => i.clone(),
        LocalDetector::InterfaceNamePrefix(p) => format!("{p}0"),
        _ => "pwpod0".into(),
    };
    let pod_ip: IpAddr = match &cfg.local_detector {
        LocalDetector::ClusterCidr(n) | LocalDetector::NodeCidr(n) => {
            let base = n.network();
            match base {
                IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 10).into()),
                IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 10).into()),
            }
        }
        _ if v4 => "10.77.77.10".parse().unwrap(),
        _ => "fd00:77::10".parse().unwrap(),
    };
    let ext_ip: IpAddr = if v4 {
        "203.0.113.10".parse().unwrap()
    } else {
        "2001:db8:ff::10".parse().unwrap()
    };
    let (gw_pod, gw_ext) = if v4 {
        ("169.254.77.1", "169.254.78.1")
    } else {
        ("fd98:1::1", "fd98:2::1")
    };
    for (client, link, ip, gw) in [
        (&pod, pod_link.as_str(), pod_ip, gw_pod),
        (&ext, "pwext0", ext_ip, gw_ext),
    ] {
        ok(
            "ip",
            &[
                "link",
                "add",
                link,
                "netns",
                &node.name,
                "type",
                "veth",
                "peer",
                "name",
                "c0",
                "netns",
                &client.name,
            ],
        );
        let host = if v4 { "/32" } else { "/128" };
        node.ok(
            "ip",
            &["addr", "add", &format!("{gw}{host}"), "dev", link, "nodad"],
        );
        node.ok("ip", &["link", "set", link, "up"]);
        node.ok(
            "ip",
            &[fam, "route", "add", &format!("{ip}{host}"), "dev", link],
        );
        client.ok(
            "ip",
            &["addr", "add", &format!("{ip}{host}"), "dev", "c0", "nodad"],
        );
        client.ok("ip", &["link", "set", "c0", "up"]);
        client.ok("ip", &[fam, "route", "add", gw, "dev", "c0"]);
        client.ok("ip", &[fam, "route", "add", "default", "via", gw]);
    }
    Bench {
        node,
        pod,
        ext,
        pod_ip,
        ext_ip,
    }
}

/// Open `n` TCP connections from `src` to `dst` inside `client`; (local ports, ports
/// whose connect was refused), after every one resolved or `wait` passed.
fn connect_all(client: &Ns, src: IpAddr, dst: SocketAddr, n: usize) -> (Vec<u16>, BTreeSet<u16>) {
    netns::run_in(&client.ns, || {
        use nix::sys::socket::{
            AddressFamily, SockFlag, SockType, SockaddrStorage, bind, connect, getsockname,
            getsockopt, socket, sockopt,
        };
        let fam = if src.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let mut socks = Vec::new();
        for _ in 0..n {
            let s = socket(fam, SockType::Stream, SockFlag::SOCK_NONBLOCK, None).unwrap();
            bind(
                s.as_raw_fd(),
                &SockaddrStorage::from(SocketAddr::new(src, 0)),
            )
            .unwrap();
            let _ = connect(s.as_raw_fd(), &SockaddrStorage::from(dst));
            let local: SockaddrStorage = getsockname(s.as_raw_fd()).unwrap();
            let port = local
                .as_sockaddr_in()
                .map(|a| a.port())
                .or_else(|| local.as_sockaddr_in6().map(|a| a.port()))
                .unwrap();
            socks.push((s, port));
        }
        // Refusals arrive within a round trip; give drops a fixed window (a bound, not
        // a sync: a DNATed or dropped SYN never answers either way).
        let deadline = Instant::now() + Duration::from_millis(300);
        let mut refused = BTreeSet::new();
        while Instant::now() < deadline && refused.len() < n {
            for (s, port) in &socks {
                if let Ok(e) = getsockopt(s, sockopt::SocketError) {
                    if e == nix::libc::ECONNREFUSED || e == nix::libc::EHOSTUNREACH {
                        refused.insert(*port);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (socks.iter().map(|(_, p)| *p).collect(), refused)
    })
    .unwrap()
}

/// (orig src, orig sport, orig dst, orig dport, reply src, reply dst) of every TCP entry.
type Ct = (IpAddr, u16, IpAddr, u16, IpAddr, IpAddr);

fn conntrack(node: &Ns, v4: bool) -> Vec<Ct> {
    let fam = if v4 { "ipv4" } else { "ipv6" };
    let text = node.ok("conntrack", &["-L", "-p", "tcp", "-f", fam]);
    text.lines()
        .filter_map(|l| {
            let mut v: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for w in l.split_whitespace() {
                if let Some((k, val)) = w.split_once('=') {
                    v.entry(k).or_default().push(val);
                }
            }
            let g = |k: &str, i: usize| v.get(k).and_then(|x| x.get(i)).copied();
            Some((
                g("src", 0)?.parse().ok()?,
                g("sport", 0)?.parse().ok()?,
                g("dst", 0)?.parse().ok()?,
                g("dport", 0)?.parse().ok()?,
                g("src", 1)?.parse().ok()?,
                g("dst", 1)?.parse().ok()?,
            ))
        })
        .collect()
}

/// Apply one backend's full ruleset for the vector in the node.
fn apply_backend(b: &Bench, cfg: &Config, objs: &Objects, nft: bool) {
    netns::run_in(&b.node.ns, || {
        if nft {
            let g = nftables::generate(cfg, objs, &SyncPlan::full());
            apply::run_cmd(
                &apply::tool("nft").unwrap(),
                &["-f", "-"],
                Some(g.text.as_bytes()),
            )
            .unwrap();
        } else {
            let g = iptables_gen::generate(cfg, objs, &SyncPlan::full());
            apply::ensure_jumps(cfg).unwrap();
            let restore = apply::tool(apply::tools(cfg.family).1).unwrap();
            apply::run_cmd(&restore, &["-w", "5", "--noflush"], Some(g.text.as_bytes())).unwrap();
        }
    })
    .unwrap();
}

/// What each (frontend, client) probe saw.
fn outcomes(
    tag: &str,
    cfg: &Config,
    objs: &Objects,
    node_addrs: &[String],
    nft: bool,
) -> BTreeMap<String, BTreeSet<String>> {
    let node_ip: IpAddr = node_addrs
        .iter()
        .filter_map(|a| a.split('/').next()?.parse::<IpAddr>().ok())
        .find(|ip| ip.is_ipv4() == (cfg.family == Family::V4) && !ip.is_loopback())
        .unwrap();
    let b = bench(tag, cfg, node_addrs);
    apply_backend(&b, cfg, objs, nft);
    let v4 = cfg.family == Family::V4;
    let mut out = BTreeMap::new();
    for f in frontends(cfg, objs, node_ip) {
        for (who, client, src) in [("pod", &b.pod, b.pod_ip), ("outside", &b.ext, b.ext_ip)] {
            let (ports, refused) = connect_all(client, src, SocketAddr::new(f.ip, f.port), 24);
            let entries = conntrack(&b.node, v4);
            let mut seen = BTreeSet::new();
            for p in &ports {
                let e = entries
                    .iter()
                    .find(|e| e.0 == src && e.1 == *p && e.2 == f.ip && e.3 == f.port);
                let o = match e {
                    Some(e) if e.4 == f.ip && e.5 == src => "not NATed".to_string(),
                    Some(e) => {
                        let masq = if e.5 == src { "" } else { ", masqueraded" };
                        let target = if f.affinity {
                            "one endpoint (affinity)".to_string()
                        } else {
                            e.4.to_string()
                        };
                        format!("DNAT to {target}{masq}")
                    }
                    None if refused.contains(p) => "refused".into(),
                    None => "dropped".into(),
                };
                seen.insert(o);
            }
            out.insert(format!("{} from {who}", f.what), seen);
        }
    }
    out
}

#[test]
fn both_backends_decide_alike_for_every_golden_vector() {
    require_root();
    for t in ["nft", "iptables-restore", "conntrack"] {
        require_tool(t);
    }
    let root = workspace_root().join("iptables-gen/tests/vectors");
    let mut compared = 0;
    let mut probes = 0;
    for set in std::fs::read_dir(&root).unwrap() {
        for v in std::fs::read_dir(set.unwrap().path()).into_iter().flatten() {
            let v = v.unwrap().path();
            if !v.join("config.json").exists() {
                continue;
            }
            let (mut cfg, _, _) = vectors::load_config(&v);
            // nfacct objects do not exist in a fresh namespace; counters decide nothing.
            cfg.nfacct.clear();
            let conf: serde_json::Value =
                serde_json::from_slice(&std::fs::read(v.join("config.json")).unwrap()).unwrap();
            let node_addrs: Vec<String> = conf["nodeInterfaces"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["name"] != "lo")
                .flat_map(|i| i["addresses"].as_array().unwrap().iter())
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            let mut objs = Objects::default();
            model::parse(&std::fs::read(v.join("input.json")).unwrap(), &mut objs).unwrap();
            let ipt = outcomes("eqi", &cfg, &objs, &node_addrs, false);
            let nft = outcomes("eqn", &cfg, &objs, &node_addrs, true);
            let diff: Vec<String> = ipt
                .iter()
                .filter(|(k, o)| nft.get(*k) != Some(o))
                .map(|(k, o)| format!("{k}: iptables {o:?}, nftables {:?}", nft.get(k)))
                .collect();
            assert!(diff.is_empty(), "{}:\n{}", v.display(), diff.join("\n"));
            // Not vacuous: something was DNATed.
            assert!(
                ipt.values().flatten().any(|o| o.starts_with("DNAT")),
                "{}: {ipt:#?}",
                v.display()
            );
            if std::env::var_os("PODWIRE_SHOW").is_some() {
                eprintln!("{}: {ipt:#?}", v.display());
            }
            probes += ipt.len();
            compared += 1;
        }
    }
    assert!(compared >= 10, "{compared} vectors");
    eprintln!("{compared} vectors, {probes} (frontend, client) probes each way");
}
