//! `make bench` for `iptables-gen --watch`: with N services × 10 endpoints listed, the
//! time from one endpoint change written to the EndpointSlice stream to iptables-gen
//! reporting it applied (median and p99 of `--changes`), for both backends, and the
//! loop's resident memory while idle.
//!
//! Each backend runs in its own throwaway node namespace, fed through two FIFOs as two
//! `kubectl --watch` pipes would (kubectl's printing). `--min-sync-period 0s`: the
//! pipeline's own latency, not kube-proxy's default 1 s coalescing. The iptables backend
//! runs with iptables-legacy, bind-mounted over iptables-nft in a private mount namespace
//! of its own (iptables-nft cannot apply 10,000 services in minutes: BENCHMARKS.md).
//!
//!   watch-bench [--services 10000] [--changes 30]

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use podwire_bench::objects_on_nodes;
use podwire_testkit::{Ns, TempDir, bin, ok};
use serde_json::{Value, json};

fn event(kind: &str, api: &str, typ: &str, obj: &impl serde::Serialize) -> Vec<u8> {
    let mut o = serde_json::to_value(obj).expect("object");
    if let Value::Object(m) = &mut o {
        m.insert("kind".into(), json!(kind));
        m.insert("apiVersion".into(), json!(api));
    }
    let ev = json!({"object": o, "type": typ});
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    serde::Serialize::serialize(&ev, &mut ser).expect("print");
    out.push(b'\n');
    out
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// (median ms, p99 ms, idle RSS MiB, full sync s).
fn run(nft: bool, n: usize, changes: usize) -> (f64, f64, f64, f64) {
    let tag = if nft { "wbn" } else { "wbi" };
    let node = Ns::new(tag);
    let dir = TempDir::new(tag);
    let svc = dir.path().join("services.watch");
    let eps = dir.path().join("endpointslices.watch");
    for f in [&svc, &eps] {
        ok("mkfifo", &[f.to_str().expect("path")]);
    }
    let prog = bin("iptables-gen");
    let net = format!("--net={}", node.path().display());
    let mut args: Vec<String> = [
        net.as_str(),
        "--",
        prog.to_str().expect("path"),
        "--watch",
        svc.to_str().expect("path"),
        "--watch",
        eps.to_str().expect("path"),
        "--apply",
        "--hostname-override",
        "node-1",
        "--cluster-cidr",
        "10.128.0.0/9",
        "--min-sync-period",
        "0s",
        "--initial-list-quiet",
        "1h",
        "--healthz-bind-address",
        "",
        "--metrics-bind-address",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if nft {
        args.extend(["--backend".into(), "nftables".into()]);
    }
    let mut cmd = Command::new("unshare");
    cmd.arg("-m").arg("sh").arg("-c");
    if nft {
        cmd.arg(r#"exec nsenter "$@""#);
    } else {
        cmd.arg(r#"mount --bind /usr/sbin/xtables-legacy-multi /usr/sbin/xtables-nft-multi && exec nsenter "$@""#);
    }
    let mut child = cmd
        .arg("sh")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("iptables-gen");
    let err = child.stderr.take().expect("stderr");
    let (tx, lines) = mpsc::channel::<(Instant, String)>();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), l));
        }
    });
    let wait = |what: &str| -> Instant {
        loop {
            let (t, l) = lines
                .recv_timeout(Duration::from_secs(300))
                .unwrap_or_else(|_| panic!("no {what:?} from iptables-gen"));
            assert!(!l.contains("failed"), "{l}");
            if l.contains(what) {
                return t;
            }
        }
    };
    let open = |p: &std::path::Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .expect("fifo")
    };
    let (mut sw, mut ew) = (open(&svc), open(&eps));
    let mut objs = objects_on_nodes(n, 10, true, 100);
    let t0 = Instant::now();
    for s in &objs.services {
        sw.write_all(&event("Service", "v1", "ADDED", s))
            .expect("write");
    }
    for s in &objs.slices {
        ew.write_all(&event("EndpointSlice", "discovery.k8s.io/v1", "ADDED", s))
            .expect("write");
    }
    let bm = |k: &str| {
        event(
            k,
            "v1",
            "BOOKMARK",
            &json!({"metadata": {"resourceVersion": "1"}}),
        )
    };
    sw.write_all(&bm("Service")).expect("write");
    ew.write_all(&bm("EndpointSlice")).expect("write");
    let full = wait("applied full sync").duration_since(t0).as_secs_f64();
    let mut lat = Vec::new();
    for k in 0..changes {
        let i = (n / 3 + k * 997) % n;
        let sl = &mut objs.slices[i];
        if let Some(ep) = sl.endpoints.as_mut().and_then(|e| e.first_mut()) {
            ep.addresses = vec![format!("10.254.{}.{}", k / 250, 1 + k % 250)];
        }
        sl.metadata.resource_version = Some(format!("r{k}"));
        let ev = event("EndpointSlice", "discovery.k8s.io/v1", "MODIFIED", &*sl);
        let t = Instant::now();
        ew.write_all(&ev).expect("write");
        let done = wait("applied partial sync: 1 service(s)");
        lat.push(done.duration_since(t).as_secs_f64() * 1e3);
    }
    let rss = rss_kib(child.id()) as f64;
    // The unshare/sh/nsenter chain execs into iptables-gen: the child is iptables-gen.
    let _ = child.kill();
    let _ = child.wait();
    lat.sort_by(f64::total_cmp);
    let p99 = lat[((lat.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)];
    (lat[lat.len() / 2], p99, rss / 1024.0, full)
}

fn main() {
    let mut n = 10000usize;
    let mut changes = 30usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().and_then(|v| v.parse().ok());
        match (a.as_str(), v) {
            ("--services", Some(v)) => n = v,
            ("--changes", Some(v)) => changes = v,
            _ => {
                eprintln!("usage: watch-bench [--services N] [--changes C]");
                std::process::exit(2);
            }
        }
    }
    println!(
        "| backend ({n} services × 10) | first full sync from the streams | one endpoint change: event → applied, median | p99 | RSS idle |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, nft) in [("iptables (legacy)", false), ("nftables", true)] {
        let (med, p99, rss, full) = run(nft, n, changes);
        println!("| {name} | {full:.2} s | {med:.1} ms | {p99:.1} ms | {rss:.0} MiB |");
    }
}
