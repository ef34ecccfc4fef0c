//! `make bench` for the Service data plane: new TCP connections per second to a Service
//! VIP with few and with many services, the iptables backend against the nftables one, in
//! one run. iptables finds a VIP by walking `KUBE-SERVICES` rule by rule; nftables looks
//! it up in the `service-ips` map.
//!
//! For each backend and size: a throwaway node namespace routes between a client and a
//! server namespace; N synthetic services × 10 endpoints (gen-bench's cluster) are
//! applied, the measured service (the one iptables matches last) pointing at the server.
//! The client opens `--conns` connections one after another (connect, then close with
//! RST so no TIME_WAIT piles up); each run is timed; medians of `--runs`. The iptables
//! backend is applied with iptables-legacy-restore (iptables-nft does not finish 10,000
//! services in minutes: see the apply benchmark). Prints markdown.
//!
//!   dataplane-bench [--services 10,10000] [--conns 3000] [--runs 5]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use iptables_gen::model::{Conditions, Objects, SliceEndpoint};
use iptables_gen::{Config, LocalDetector, SyncPlan, nftables};
use nix::sys::socket::{setsockopt, sockopt};
use podwire_bench::objects_on_nodes;
use podwire_testkit::Ns;

const SERVER: &str = "10.250.2.2";
const PORT: u16 = 8080;

/// The service the iptables backend matches last in `KUBE-SERVICES` (the worst case for
/// a rule walk), pointed at the server: its ClusterIP.
fn aim(cfg: &Config, objs: &mut Objects) -> String {
    let text = iptables_gen::generate(cfg, objs, &SyncPlan::full()).text;
    let vip = text
        .lines()
        .rev()
        .filter(|l| l.starts_with("-A KUBE-SERVICES ") && l.contains(" -j KUBE-SVC-"))
        .filter_map(|l| {
            let mut w = l.split(' ');
            w.position(|t| t == "-d")?;
            w.next()
        })
        .next()
        .expect("a service rule")
        .trim_end_matches("/32")
        .to_string();
    let i = objs
        .services
        .iter()
        .position(|s| s.spec.cluster_ip.as_deref() == Some(vip.as_str()))
        .expect("the service of the last rule");
    let sl = &mut objs.slices[i];
    sl.endpoints = Some(vec![SliceEndpoint {
        addresses: vec![SERVER.into()],
        conditions: Some(Conditions::default()),
        node_name: Some("node-1".into()),
    }]);
    sl.metadata.resource_version = Some("aimed".into());
    vip
}

struct Bed {
    node: Ns,
    client: Ns,
    server: Ns,
}

fn bed() -> Bed {
    let node = Ns::new("dpn");
    let client = Ns::new("dpc");
    let server = Ns::new("dps");
    for (ns, link, sub) in [(&client, "dpc0", "1"), (&server, "dps0", "2")] {
        node.ok(
            "ip",
            &[
                "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ],
        );
        node.ok(
            "ip",
            &["addr", "add", &format!("10.250.{sub}.1/24"), "dev", link],
        );
        node.ok("ip", &["link", "set", link, "up"]);
        ns.ok(
            "ip",
            &["addr", "add", &format!("10.250.{sub}.2/24"), "dev", "eth0"],
        );
        ns.ok("ip", &["link", "set", "eth0", "up"]);
        ns.ok(
            "ip",
            &["route", "add", "default", "via", &format!("10.250.{sub}.1")],
        );
    }
    node.ok("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    Bed {
        node,
        client,
        server,
    }
}

/// Connections per second of `runs` runs of `conns` connections each, median.
fn measure(b: &Bed, vip: &str, conns: usize, runs: usize) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::scope(|sc| {
        let stop2 = Arc::clone(&stop);
        sc.spawn(move || {
            netns::run_in(&b.server.ns, move || {
                let l = TcpListener::bind(("0.0.0.0", PORT)).expect("listen");
                let _ = ready_tx.send(());
                // Blocking accepts; the client's last, direct connection wakes it to stop.
                while !stop2.load(Ordering::Relaxed) {
                    let _ = l.accept();
                }
            })
            .expect("server namespace")
        });
        ready_rx.recv().expect("server ready");
        let dst: SocketAddr = format!("{vip}:80").parse().expect("vip");
        let rates = netns::run_in(&b.client.ns, || {
            let one = || {
                let s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("connect {dst}: {e}"));
                // Close with RST: no TIME_WAIT, so the client's ports never run out.
                let _ = setsockopt(
                    &s,
                    sockopt::Linger,
                    &nix::libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    },
                );
            };
            for _ in 0..conns / 10 {
                one();
            }
            let mut rates: Vec<f64> = (0..runs)
                .map(|_| {
                    let t0 = Instant::now();
                    for _ in 0..conns {
                        one();
                    }
                    conns as f64 / t0.elapsed().as_secs_f64()
                })
                .collect();
            rates.sort_by(f64::total_cmp);
            rates[rates.len() / 2]
        })
        .expect("client namespace");
        stop.store(true, Ordering::Relaxed);
        netns::run_in(&b.client.ns, || {
            TcpStream::connect((SERVER, PORT)).map(drop)
        })
        .expect("client namespace")
        .expect("wake the server");
        rates
    })
}

fn apply(b: &Bed, nft: bool, cfg: &Config, objs: &Objects) {
    let (prog, args, text) = if nft {
        let g = nftables::generate(cfg, objs, &SyncPlan::full());
        ("nft", vec!["-f", "-"], g.text)
    } else {
        let g = iptables_gen::generate(cfg, objs, &SyncPlan::full());
        ("iptables-legacy-restore", vec!["-w", "5"], g.text)
    };
    let mut c = std::process::Command::new("ip")
        .args(["netns", "exec", &b.node.name, prog])
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect(prog);
    use std::io::Write;
    let _ = c.stdin.take().expect("stdin").write_all(text.as_bytes());
    let o = c.wait_with_output().expect("wait");
    assert!(
        o.status.success(),
        "{prog}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    if !nft {
        // The jumps from the built-in chains, as `--apply` ensures them (with the node's
        // `iptables`; here with legacy's).
        for (table, from, to, extra, comment) in iptables_gen::apply::JUMPS {
            let mut a = vec!["-w", "5", "-t", table, "-I", from];
            a.extend(extra.split_whitespace());
            if !comment.is_empty() {
                a.extend(["-m", "comment", "--comment", comment]);
            }
            a.extend(["-j", to]);
            b.node.ok("iptables-legacy", &a);
        }
    }
}

fn main() {
    let mut sizes = vec![10usize, 10000];
    let mut conns = 3000usize;
    let mut runs = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |what: &str| -> String {
            args.next()
                .unwrap_or_else(|| panic!("{what} needs a value"))
        };
        match a.as_str() {
            "--services" => {
                sizes = num("--services")
                    .split(',')
                    .map(|n| n.parse().expect("a number"))
                    .collect()
            }
            "--conns" => conns = num("--conns").parse().expect("a number"),
            "--runs" => runs = num("--runs").parse().expect("a number"),
            _ => {
                eprintln!("usage: dataplane-bench [--services N,M] [--conns C] [--runs R]");
                std::process::exit(2);
            }
        }
    }
    let cfg = Config {
        node_name: "node-1".into(),
        local_detector: LocalDetector::ClusterCidr("10.128.0.0/9".parse().expect("cidr")),
        ..Config::default()
    };
    println!("| services | iptables (legacy) | nftables |");
    println!("|---|---:|---:|");
    let mut first: Option<[f64; 2]> = None;
    for &n in &sizes {
        let mut objs = objects_on_nodes(n, 10, true, 100);
        let vip = aim(&cfg, &mut objs);
        let mut r = [0.0; 2];
        for (k, nft) in [false, true].into_iter().enumerate() {
            let b = bed();

            apply(&b, nft, &cfg, &objs);
            r[k] = measure(&b, &vip, conns, runs);
        }
        let base = *first.get_or_insert(r);
        let rel = |k: usize| {
            if n == sizes[0] {
                String::new()
            } else {
                format!(
                    " ({:.0} % of the rate at {})",
                    100.0 * r[k] / base[k],
                    sizes[0]
                )
            }
        };
        println!(
            "| {n} × 10 | {:.0} conn/s{} | {:.0} conn/s{} |",
            r[0],
            rel(0),
            r[1],
            rel(1)
        );
    }
}
