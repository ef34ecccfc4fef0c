//! `make bench` for `runtime-shim routes`: pod-to-pod TCP throughput between two nodes,
//! host-gw (the nodes on one link) against vxlan (the nodes on two subnets behind a
//! router), in one run. Each transfer is bounded (`--mib`, default 512 MiB) and timed at
//! the receiver, from accept to EOF; medians of `--runs` (default 5). Prints markdown.
//!
//! Everything is inside throwaway namespaces (testkit's fixtures); no traffic leaves them.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Instant;

use podwire_testkit::TwoNodes;
use serde_json::json;

const CLUSTER: &str = "10.244.0.0/16";

struct Setup {
    two: TwoNodes,
    /// Node 2's pod address (each node has one pod, index 0).
    server_ip: String,
    mtu: u32,
}

fn setup(vxlan: bool) -> Setup {
    let tag = if vxlan { "obx" } else { "obh" };
    // host-gw pods use the link's MTU; overlay pods 50 bytes less (docs/runtime-shim.md).
    let mtu: u32 = if vxlan { 1450 } else { 1500 };
    let mut two = TwoNodes::new(tag, vxlan, |i| {
        json!({
            "bridge": "pwbr0", "isDefaultGateway": true, "ipMasq": true,
            "nonMasqueradeCIDRs": [CLUSTER], "mtu": mtu,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.244.{i}.0/24")}]]}
        })
    });
    let list = two.nodes_file(two.nodes[0].dir.path(), &[1, 2]);
    let backend: &[&str] = if vxlan { &["--backend", "vxlan"] } else { &[] };
    for k in [1, 2] {
        let o = two.routes(k, &list, CLUSTER, backend);
        assert!(
            o.status.success(),
            "routes on node-{k}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let mut ips = Vec::new();
    for (k, n) in two.nodes.iter_mut().enumerate() {
        let p = n.node.add_pod(&format!("p{k}"));
        let path = n.node.pod(p).path();
        let o = n.setup(&path, &format!("bench{k}"));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("result");
        let a = r["ips"][0]["address"].as_str().unwrap_or_default();
        ips.push(a.split('/').next().unwrap_or_default().to_string());
    }
    Setup {
        two,
        server_ip: ips[1].clone(),
        mtu,
    }
}

/// One bounded transfer from node 1's pod to node 2's: Gbit/s at the receiver.
fn transfer(s: &Setup, bytes: u64) -> f64 {
    let server = &s.two.nodes[1].node.pod(0).ns;
    let client = &s.two.nodes[0].node.pod(0).ns;
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::scope(|sc| {
        let rx = sc.spawn(move || {
            netns::run_in(server, move || {
                let l = TcpListener::bind("0.0.0.0:5201").expect("bind");
                ready_tx.send(()).expect("ready");
                let (mut c, _) = l.accept().expect("accept");
                let t0 = Instant::now();
                let mut buf = vec![0u8; 256 << 10];
                let mut got = 0u64;
                loop {
                    match c.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => got += n as u64,
                        Err(e) => panic!("read: {e}"),
                    }
                }
                (got, t0.elapsed().as_secs_f64())
            })
            .expect("run in server pod")
        });
        ready_rx.recv().expect("server ready");
        let ip = s.server_ip.clone();
        netns::run_in(client, move || {
            let mut c = TcpStream::connect((ip.as_str(), 5201)).expect("connect");
            let buf = vec![0x5au8; 256 << 10];
            let mut sent = 0u64;
            while sent < bytes {
                let n = (bytes - sent).min(buf.len() as u64) as usize;
                c.write_all(&buf[..n]).expect("write");
                sent += n as u64;
            }
            c.shutdown(std::net::Shutdown::Write).expect("shutdown");
        })
        .expect("run in client pod");
        let (got, secs) = rx.join().expect("receiver");
        assert_eq!(got, bytes, "every byte arrived");
        got as f64 * 8.0 / secs / 1e9
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut mib = 512u64;
    let mut runs = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--mib" => mib = args.next().and_then(|v| v.parse().ok()).expect("--mib N"),
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            _ => {
                eprintln!("usage: overlay-bench [--mib N] [--runs N]");
                std::process::exit(2);
            }
        }
    }
    assert!(nix::unistd::geteuid().is_root(), "overlay-bench needs root");
    let bytes = mib << 20;
    let hostgw = setup(false);
    let vxlan = setup(true);
    // Alternate, so drift on a noisy machine hits both alike.
    let (mut h, mut x) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        h.push(transfer(&hostgw, bytes));
        x.push(transfer(&vxlan, bytes));
    }
    // The vxlan transfers did cross the overlay device (the router has no pod route).
    let stats = vxlan.two.nodes[0]
        .node
        .node
        .ok("ip", &["-j", "-s", "link", "show", "flannel.1"]);
    let tx: u64 = serde_json::from_str::<serde_json::Value>(&stats)
        .ok()
        .and_then(|v| v[0]["stats64"]["tx"]["bytes"].as_u64())
        .unwrap_or(0);
    assert!(
        tx >= bytes * runs as u64,
        "flannel.1 sent {tx} bytes, fewer than the transfers"
    );
    let (mh, mx) = (median(h.clone()), median(x.clone()));
    println!("### Pod-to-pod TCP across two nodes, {mib} MiB per transfer, {runs} runs each\n");
    println!("| backend | pod MTU | median Gbit/s | min | max |");
    println!("|---|---:|---:|---:|---:|");
    for (name, s, v, m) in [
        ("host-gw (one link)", &hostgw, &h, mh),
        ("vxlan (two subnets, a router)", &vxlan, &x, mx),
    ] {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        println!("| {name} | {} | {m:.2} | {lo:.2} | {hi:.2} |", s.mtu);
    }
    println!("\nvxlan / host-gw (median): {:.2}", mx / mh);
}
