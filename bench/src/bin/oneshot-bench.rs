//! `make bench` for one-shot `iptables-gen` from a `kubectl get services,endpointslices
//! -A -o json` List: wall time and peak RSS, end to end, beside Python's `json.load` of
//! the same file, at N services × 10 endpoints.
//!
//! The List carries what the API server returns (uid, timestamps, labels, annotations,
//! ownerReferences, targetRef, zone, clusterIPs, ipFamilies…) with kubectl's 4-space
//! indentation. Each size: iptables-gen and json.load alternated `--runs` times under
//! `/usr/bin/time`; medians. Prints markdown.
//!
//!   oneshot-bench [--services 1000,10000,50000] [--runs 3]

use std::io::Write;
use std::process::Command;

use podwire_testkit::{TempDir, bin};
use serde_json::{Value, json};

fn uid(k: usize) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        k.wrapping_mul(2_654_435_761) & 0xffff_ffff,
        k & 0xffff,
        k & 0xfff,
        (k >> 12) & 0xfff,
        k.wrapping_mul(40_503)
    )
}

fn service(i: usize) -> Value {
    let name = format!("svc-{i}");
    let ip = format!("10.{}.{}.{}", 96 + i / 65536, (i / 256) % 256, i % 256);
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "creationTimestamp": "2026-11-30T10:00:00Z",
            "labels": {"app": name, "app.kubernetes.io/part-of": "bench"},
            "name": name,
            "namespace": "bench",
            "resourceVersion": (1000 + 2 * i).to_string(),
            "uid": uid(2 * i)
        },
        "spec": {
            "clusterIP": ip,
            "clusterIPs": [ip],
            "internalTrafficPolicy": "Cluster",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
            "selector": {"app": name},
            "sessionAffinity": "None",
            "type": "ClusterIP"
        },
        "status": {"loadBalancer": {}}
    })
}

fn slice(i: usize, eps: usize) -> Value {
    let name = format!("svc-{i}");
    let endpoints: Vec<Value> = (0..eps)
        .map(|e| {
            let k = i * eps + e;
            json!({
                "addresses": [format!("10.{}.{}.{}", 128 + k / 65536, (k / 256) % 256, k % 256)],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": format!("node-{}", k % 100),
                "targetRef": {"kind": "Pod", "name": format!("{name}-7d9f8c-{k:05}"),
                              "namespace": "bench", "uid": uid(3 * k + 1)},
                "zone": format!("zone-{}", k % 3)
            })
        })
        .collect();
    json!({
        "addressType": "IPv4",
        "apiVersion": "discovery.k8s.io/v1",
        "endpoints": endpoints,
        "kind": "EndpointSlice",
        "metadata": {
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-11-30T10:00:01Z"},
            "creationTimestamp": "2026-11-30T10:00:01Z",
            "generateName": format!("{name}-"),
            "generation": 1,
            "labels": {
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "kubernetes.io/service-name": name
            },
            "name": format!("{name}-x7k2p"),
            "namespace": "bench",
            "ownerReferences": [{"apiVersion": "v1", "blockOwnerDeletion": true, "controller": true,
                                 "kind": "Service", "name": name, "uid": uid(2 * i)}],
            "resourceVersion": (1001 + 2 * i).to_string(),
            "uid": uid(2 * i + 1)
        },
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

/// The List as kubectl prints it, streamed to `path`: (bytes).
fn write_list(path: &std::path::Path, n: usize) -> u64 {
    let f = std::fs::File::create(path).expect("create");
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let fmt = |v: &Value| {
        let mut out = Vec::new();
        let pf = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, pf);
        serde::Serialize::serialize(v, &mut ser).expect("print");
        String::from_utf8(out).expect("utf-8")
    };
    let indent = |s: String| s.replace('\n', "\n        ");
    w.write_all(b"{\n    \"apiVersion\": \"v1\",\n    \"items\": [\n")
        .expect("write");
    let items = (0..n).map(service).chain((0..n).map(|i| slice(i, 10)));
    for (k, it) in items.enumerate() {
        if k > 0 {
            w.write_all(b",\n").expect("write");
        }
        w.write_all(b"        ").expect("write");
        w.write_all(indent(fmt(&it)).as_bytes()).expect("write");
    }
    w.write_all(b"\n    ],\n    \"kind\": \"List\",\n    \"metadata\": {\n        \"resourceVersion\": \"\"\n    }\n}\n")
        .expect("write");
    w.flush().expect("flush");
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// `/usr/bin/time` around `argv`: (seconds, peak RSS MiB).
fn timed(argv: &[&str]) -> (f64, f64) {
    let o = Command::new("/usr/bin/time")
        .args(["-f", "%e %M"])
        .args(argv)
        .stdout(std::process::Stdio::null())
        .output()
        .expect("/usr/bin/time");
    assert!(
        o.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.lines().last().unwrap_or("");
    let mut w = last.split_whitespace();
    let s: f64 = w.next().and_then(|v| v.parse().ok()).expect("seconds");
    let kib: f64 = w.next().and_then(|v| v.parse().ok()).expect("rss");
    (s, kib / 1024.0)
}

fn median(mut v: Vec<(f64, f64)>) -> (f64, f64) {
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v[v.len() / 2]
}

fn main() {
    let mut sizes = vec![1000usize, 10000, 50000];
    let mut runs = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next();
        match (a.as_str(), v) {
            ("--services", Some(v)) => {
                sizes = v.split(',').map(|n| n.parse().expect("a number")).collect()
            }
            ("--runs", Some(v)) => runs = v.parse().expect("a number"),
            _ => {
                eprintln!("usage: oneshot-bench [--services N,M] [--runs R]");
                std::process::exit(2);
            }
        }
    }
    let dir = TempDir::new("oneshot");
    let generator = bin("iptables-gen");
    println!("| services | file | iptables-gen, end to end | Python json.load | ratio |");
    println!("|---|---:|---:|---:|---:|");
    for n in sizes {
        let path = dir.path().join(format!("{n}.json"));
        let bytes = write_list(&path, n);
        let p = path.to_str().expect("path");
        let (mut ours, mut py) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            ours.push(timed(&[
                generator.to_str().expect("path"),
                p,
                "--cluster-cidr",
                "10.128.0.0/9",
                "--hostname-override",
                "node-1",
            ]));
            py.push(timed(&[
                "python3",
                "-c",
                "import json, sys; json.load(open(sys.argv[1]))",
                p,
            ]));
        }
        let (o, p) = (median(ours), median(py));
        println!(
            "| {n} × 10 | {:.0} MB | {:.2} s, {:.0} MiB | {:.2} s, {:.0} MiB | {:.2}× |",
            bytes as f64 / 1e6,
            o.0,
            o.1,
            p.0,
            p.1,
            o.0 / p.0
        );
        let _ = std::fs::remove_file(&path);
    }
}
