//! End to end: pods wired by runtime-shim, a Service and its EndpointSlice turned into
//! rules by iptables-gen, applied with iptables-restore or nft (both backends) in a
//! throwaway node namespace, and real traffic from a client pod to the ClusterIP
//! reaching every backend.

#![allow(clippy::unwrap_used)] // test code

use std::io::Write as _;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use podwire_testkit::http::{in_ns, serve};

use podwire_testkit::*;

const VIP: &str = "10.96.0.10";
const EMPTY_VIP: &str = "10.96.0.11";

/// One HTTP GET of `/` from `from`.
fn get(from: &Ns, ip: &str, port: u16) -> Option<String> {
    http::get(from, ip, port, "/")
}

fn services_json(backends: &[(&str, String)]) -> String {
    let eps: Vec<String> = backends
        .iter()
        .map(|(_, ip)| format!(r#"{{"addresses":["{ip}"],"nodeName":"node-1"}}"#))
        .collect();
    format!(
        r#"{{"apiVersion":"v1","kind":"List","items":[
 {{"kind":"Service","apiVersion":"v1","metadata":{{"name":"my-service","namespace":"default"}},
   "spec":{{"type":"NodePort","clusterIP":"{VIP}","selector":{{"app":"nginx"}},
            "ports":[{{"name":"http","port":8080,"targetPort":80,"protocol":"TCP","nodePort":30080}}]}}}},
 {{"kind":"Service","apiVersion":"v1","metadata":{{"name":"empty","namespace":"default"}},
   "spec":{{"clusterIP":"{EMPTY_VIP}","ports":[{{"name":"http","port":8080,"protocol":"TCP"}}]}}}},
 {{"kind":"EndpointSlice","apiVersion":"discovery.k8s.io/v1",
   "metadata":{{"name":"my-service-abc","namespace":"default","labels":{{"kubernetes.io/service-name":"my-service"}}}},
   "addressType":"IPv4","ports":[{{"name":"http","port":80,"protocol":"TCP"}}],
   "endpoints":[{}]}}
]}}"#,
        eps.join(",")
    )
}

fn tally(client: &Ns, n: usize) -> std::collections::BTreeMap<String, usize> {
    tally_at(client, VIP, 8080, n)
}

/// Who answered `n` GETs of `ip:port` from `client`.
fn tally_at(
    client: &Ns,
    ip: &str,
    port: u16,
    n: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut t = std::collections::BTreeMap::new();
    for _ in 0..n {
        let who = get(client, ip, port).unwrap_or_else(|| "(no answer)".into());
        *t.entry(who).or_insert(0) += 1;
    }
    t
}

fn save(node: &Ns) -> String {
    // Counters and comment lines change between saves; the rules must not.
    let mut out = String::new();
    for t in ["filter", "nat"] {
        for l in node.ok("iptables-save", &["-t", t]).lines() {
            if !l.starts_with('#') {
                out.push_str(l.split(" [").next().unwrap_or(l));
                out.push('\n');
            }
        }
    }
    out
}

/// What a backend put in the kernel, for "nothing changed" comparisons.
fn snapshot(node: &Ns, nft: bool) -> String {
    if nft {
        node.ok("nft", &["list", "table", "ip", "kube-proxy"])
    } else {
        save(node)
    }
}

/// How many endpoints the rules hold: KUBE-SEP jumps, or (nftables, no affinity)
/// elements of the `cluster-endpoints` map, each `KEY : ADDR . PORT`.
fn endpoints_in_rules(node: &Ns, nft: bool) -> usize {
    if nft {
        let m = node.ok(
            "nft",
            &["list", "map", "ip", "kube-proxy", "cluster-endpoints"],
        );
        m.split_once("elements = {")
            .map_or(0, |(_, els)| els.matches(" : ").count())
    } else {
        node.ok("iptables", &["-t", "nat", "-S"])
            .matches("-j KUBE-SEP-")
            .count()
    }
}

/// A throwaway node whose pods `names` runtime-shim wired to one bridge (10.77.0.0/24,
/// ipMasq, hairpin), with br_netfilter on; their addresses.
fn node_with_pods(tag: &str, names: &[&str]) -> (Node, TempDir, Vec<String>) {
    let mut node = Node::new(tag);
    let dir = TempDir::new(tag);
    let net = dir.path().join("net.json");
    std::fs::write(
        &net,
        format!(
            r#"{{"cniVersion":"1.0.0","name":"pwsvc","bridge":"cni0","isDefaultGateway":true,"ipMasq":true,"hairpinMode":true,
               "ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.77.0.0/24"}}]],"dataDir":"{}"}}}}"#,
            dir.path().join("ipam").display()
        ),
    )
    .unwrap();
    // Bridged pod-to-pod traffic must traverse the netfilter hooks for Service DNAT
    // replies, as on every Kubernetes node (br_netfilter).
    node.node.ok(
        "sh",
        &[
            "-c",
            "echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables",
        ],
    );
    let mut ips = Vec::new();
    for n in names {
        let p = node.add_pod(n);
        let out = node.node.ok(
            bin("runtime-shim").to_str().unwrap(),
            &[
                "setup",
                "--netns",
                node.pod(p).path().to_str().unwrap(),
                "--id",
                n,
                "--config",
                net.to_str().unwrap(),
            ],
        );
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        ips.push(
            r["ips"][0]["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string(),
        );
    }
    (node, dir, ips)
}

/// `iptables-gen INPUT --apply` in `node` (node-1, cluster 10.77.0.0/16), which must
/// succeed.
fn apply_file(node: &Ns, input: &std::path::Path, nft: bool, extra: &[&str]) {
    let mut a = vec![
        input.to_str().unwrap(),
        "--hostname-override",
        "node-1",
        "--cluster-cidr",
        "10.77.0.0/16",
        "--apply",
    ];
    if nft {
        a.extend(["--backend", "nftables"]);
    }
    a.extend_from_slice(extra);
    let o = node.run(bin("iptables-gen").to_str().unwrap(), &a);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// [`node_with_pods`] for two backends and a client (`names`: backends first), the
/// backends serving their names on port 80 and answering.
fn two_backends_and_a_client(
    tag: &str,
    names: &[&str; 3],
) -> (
    Node,
    TempDir,
    Vec<String>,
    [podwire_testkit::http::Server; 2],
) {
    let (node, dir, ips) = node_with_pods(tag, names);
    let servers = [
        serve(node.pod(0), dir.path(), names[0]),
        serve(node.pod(1), dir.path(), names[1]),
    ];
    let client = node.pod(2);
    wait_for("backends listening", Duration::from_secs(10), || {
        (get(client, &ips[0], 80).is_some() && get(client, &ips[1], 80).is_some()).then_some(())
    });
    (node, dir, ips, servers)
}

#[test]
fn cluster_ip_nodeport_reject_and_partial_sync() {
    cluster_ip_nodeport_reject_and_partial_sync_with(false);
}

#[test]
fn cluster_ip_nodeport_reject_and_partial_sync_on_nftables() {
    cluster_ip_nodeport_reject_and_partial_sync_with(true);
}

fn cluster_ip_nodeport_reject_and_partial_sync_with(nft: bool) {
    require_tool("busybox");
    require_tool("nft");
    let tag = if nft { "svcn" } else { "svc" };
    let names = ["nginx-deployment-a", "nginx-deployment-b", "client"];
    let (node, dir, ips, _servers) = two_backends_and_a_client(tag, &names);
    let client = node.pod(2);

    let input = dir.path().join("services.json");
    let state = dir.path().join("state");
    let apply = |extra: &[&str]| -> Output {
        let mut a = vec![
            input.to_str().unwrap(),
            "--hostname-override",
            "node-1",
            "--cluster-cidr",
            "10.77.0.0/16",
            "--apply",
            "--state-dir",
            state.to_str().unwrap(),
        ];
        if nft {
            a.extend(["--backend", "nftables"]);
        }
        a.extend_from_slice(extra);
        node.node.run(bin("iptables-gen").to_str().unwrap(), &a)
    };
    std::fs::write(
        &input,
        services_json(&[(names[0], ips[0].clone()), (names[1], ips[1].clone())]),
    )
    .unwrap();
    let out = apply(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("applied full sync"));
    if nft {
        let t = node.node.ok("nft", &["list", "table", "ip", "kube-proxy"]);
        assert!(t.contains("jump services"), "{t}");
        // Named maps only: no anonymous set anywhere (kube-proxy's numgen vmaps).
        assert!(!t.contains("vmap {"), "{t}");
        let nat = node.node.ok("iptables", &["-t", "nat", "-S"]);
        assert!(!nat.contains("KUBE-"), "no iptables backend rules: {nat}");
    } else {
        let nat = node.node.ok("iptables", &["-t", "nat", "-S"]);
        assert!(
            nat.contains(
                "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
            ),
            "{nat}"
        );
    }
    assert_eq!(endpoints_in_rules(&node.node, nft), 2);

    // 200 requests to the ClusterIP reach both backends, each at least 25%.
    let t = tally(client, 200);
    for n in &names[..2] {
        let c = t.get(*n).copied().unwrap_or(0);
        assert!(c >= 50, "{n} answered {c}/200: {t:?}");
    }
    // NodePort from the node itself (to its own bridge address).
    assert!(get(&node.node, "10.77.0.1", 30080).is_some_and(|w| names[..2].contains(&w.as_str())));
    // A service without endpoints is refused at once (REJECT), not left to time out;
    // nc's own limit is 5 s, so a refusal is well under it.
    let t0 = Instant::now();
    assert_eq!(get(client, EMPTY_VIP, 8080), None);
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "no-endpoint service must be rejected, took {:?}",
        t0.elapsed()
    );

    // Applying the same input again changes nothing.
    let before = snapshot(&node.node, nft);
    let out = apply(&[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("partial sync: 0 service(s) written"));
    assert_eq!(
        before,
        snapshot(&node.node, nft),
        "a repeated apply must leave the rules unchanged"
    );
    let out = apply(&["--full"]);
    assert!(out.status.success());
    assert_eq!(
        before,
        snapshot(&node.node, nft),
        "a repeated full apply too"
    );

    // Backend b's EndpointSlice entry goes away: a partial sync sends everything to a
    // (iptables deletes b's KUBE-SEP chain; nftables, without affinity, has map elements
    // for endpoints, not chains).
    std::fs::write(&input, services_json(&[(names[0], ips[0].clone())])).unwrap();
    let out = apply(&[]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    let deleted = if nft { 0 } else { 1 };
    assert!(
        err.contains(&format!(
            "partial sync: 1 service(s) written, {deleted} chain(s) deleted"
        )),
        "{err}"
    );
    let t = tally(client, 50);
    assert_eq!(t.get(names[0]).copied(), Some(50), "{t:?}");
    assert_eq!(endpoints_in_rules(&node.node, nft), 1);
    // Hairpin: backend a reaching its own Service is answered by itself. Only because
    // the node masquerades it: with its own address as source, a's reply would stay
    // inside a, bypass the node's un-DNAT and reset the connection.
    for _ in 0..5 {
        assert_eq!(get(node.pod(0), VIP, 8080).as_deref(), Some(names[0]));
    }

    // --cleanup removes everything either backend installed.
    let out = node.node.run(
        bin("iptables-gen").to_str().unwrap(),
        &["--cleanup", "--state-dir", state.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nat = node.node.ok("iptables-save", &[]);
    assert!(!nat.contains("KUBE-"), "{nat}");
    let tables = node.node.ok("nft", &["list", "tables"]);
    assert!(!tables.contains("kube-proxy"), "{tables}");
}

#[path = "../../iptables-gen/tests/support/vectors.rs"]
mod vectors;

/// The nftables backend's output for every golden vector's input, and a large generated
/// one, is accepted by the kernel (`nft -c`: checked in a transaction, not committed).
#[test]
fn every_golden_vector_input_passes_nft_check() {
    require_root();
    require_tool("nft");
    let ns = Ns::new("nftcheck");
    let root = workspace_root().join("iptables-gen/tests/vectors");
    let mut checked = 0;
    for set in std::fs::read_dir(&root).unwrap() {
        let set = set.unwrap().path();
        for v in std::fs::read_dir(&set).into_iter().flatten() {
            let v = v.unwrap().path();
            if !v.join("config.json").exists() {
                continue;
            }
            let (cfg, _, _) = vectors::load_config(&v);
            let mut objs = iptables_gen::model::Objects::default();
            iptables_gen::model::parse(&std::fs::read(v.join("input.json")).unwrap(), &mut objs)
                .unwrap();
            let g = iptables_gen::nftables::generate(&cfg, &objs, &iptables_gen::SyncPlan::full());
            let mut child = in_ns(&ns, "nft", &["-c", "-f", "-"])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(g.text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}: {}\n{}",
                v.display(),
                String::from_utf8_lossy(&out.stderr),
                g.text
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked}");
}

#[test]
fn every_generated_ruleset_passes_iptables_restore_test() {
    require_root();
    require_tool("iptables-restore");
    let ns = Ns::new("iptest");
    let root = workspace_root().join("iptables-gen/tests/vectors");
    let mut checked = 0;
    for set in std::fs::read_dir(&root).unwrap() {
        let set = set.unwrap().path();
        if !set.is_dir() {
            continue;
        }
        for v in std::fs::read_dir(set).unwrap() {
            let v = v.unwrap().path();
            if !v.join("config.json").exists() {
                continue;
            }
            let cfg = std::fs::read_to_string(v.join("config.json")).unwrap();
            let restore = if cfg.contains("\"IPv6\"") {
                "ip6tables-restore"
            } else {
                "iptables-restore"
            };
            let text = std::fs::read(v.join("expected.txt")).unwrap();
            let mut child = in_ns(&ns, restore, &["--test"])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&text).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                v.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked}");
    // And a large generated ruleset from the CLI, with every option that changes text.
    let dir = TempDir::new("ipt-big");
    let mut items = Vec::new();
    for i in 0..300 {
        items.push(format!(
            r#"{{"kind":"Service","metadata":{{"name":"s{i}","namespace":"ns"}},"spec":{{"type":"LoadBalancer","clusterIP":"10.96.{}.{}","externalIPs":["192.0.2.{}"],"loadBalancerSourceRanges":["198.51.100.0/24"],"sessionAffinity":"ClientIP","ports":[{{"name":"p","port":80,"nodePort":{}}}]}},"status":{{"loadBalancer":{{"ingress":[{{"ip":"203.0.113.{}"}}]}}}}}},
               {{"kind":"EndpointSlice","metadata":{{"name":"s{i}-1","namespace":"ns","labels":{{"kubernetes.io/service-name":"s{i}"}}}},"addressType":"IPv4","ports":[{{"name":"p","port":8080}}],"endpoints":[{{"addresses":["10.244.{}.1"]}},{{"addresses":["10.244.{}.2"],"conditions":{{"ready":false,"serving":true,"terminating":true}}}}]}}"#,
            i / 250, i % 250 + 1, i % 250 + 1, 30000 + i, i % 250 + 1, i % 250, i % 250
        ));
    }
    let input = dir.path().join("big.json");
    std::fs::write(
        &input,
        format!(r#"{{"kind":"List","items":[{}]}}"#, items.join(",")),
    )
    .unwrap();
    let out = run(
        bin("iptables-gen").to_str().unwrap(),
        &[
            input.to_str().unwrap(),
            "--cluster-cidr",
            "10.244.0.0/16",
            "--masquerade-all",
            "--random-fully",
            "true",
            "--nfacct-counter",
            "localhost_nps_accepted_pkts",
            "--nodeport-addresses",
            "127.0.0.0/8",
            "--node-address",
            "127.0.0.1",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = in_ns(&ns, "iptables-restore", &["--test"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let r = child.wait_with_output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

#[test]
fn hostile_input_is_rejected_and_cannot_inject() {
    let dir = TempDir::new("ipt-bad");
    let input = dir.path().join("bad.json");
    std::fs::write(
        &input,
        r#"{"kind":"List","items":[
  {"kind":"Service","metadata":{"name":"evil\" -j ACCEPT\n-A INPUT","namespace":"ns"},"spec":{"clusterIP":"10.96.0.1","ports":[{"port":80}]}},
  {"kind":"Service","metadata":{"name":"ok","namespace":"ns"},"spec":{"clusterIP":"10.96.0.2","ports":[{"name":"p\"x","port":80}]}},
  {"kind":"Service","metadata":{"name":"fine","namespace":"ns"},"spec":{"clusterIP":"10.96.0.3","externalIPs":["1.2.3.4 -j ACCEPT"],"ports":[{"port":80}]}}
]}"#,
    )
    .unwrap();
    let out = run(
        bin("iptables-gen").to_str().unwrap(),
        &[input.to_str().unwrap()],
    );
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains("evil") && !text.contains("INPUT") && !text.contains("1.2.3.4"),
        "{text}"
    );
    assert!(text.contains("\"ns/fine has no endpoints\""), "{text}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("skipped Service ns/evil") && err.contains("skipped Service ns/ok"),
        "{err}"
    );
    // --strict rejects the whole input.
    let out = run(
        bin("iptables-gen").to_str().unwrap(),
        &[input.to_str().unwrap(), "--strict"],
    );
    assert_eq!(out.status.code(), Some(1));
    // Malformed JSON names the position.
    std::fs::write(&input, "{\"kind\": \"List\",\n \"items\": [}").unwrap();
    let out = run(
        bin("iptables-gen").to_str().unwrap(),
        &[input.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2 column"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// kubectl-style JSON for `n` services of 10 endpoints each, with resourceVersions;
/// `bump` moves one endpoint of each listed service (a new resourceVersion each).
fn load_json(n: usize, bump: &[(usize, usize)]) -> String {
    let mut items = Vec::new();
    for i in 0..n {
        let writes = bump.iter().filter(|(s, _)| *s == i).count();
        let moved: Vec<usize> = bump
            .iter()
            .filter(|(s, _)| *s == i)
            .map(|(_, k)| *k)
            .collect();
        items.push(format!(
            r#"{{"kind":"Service","metadata":{{"name":"s{i}","namespace":"load","resourceVersion":"{}"}},"spec":{{"clusterIP":"10.96.{}.{}","ports":[{{"name":"http","port":80}}]}}}}"#,
            10 * i,
            i / 250,
            i % 250 + 1
        ));
        let eps: Vec<String> = (0..10)
            .map(|e| {
                let ip = match (e, moved.last()) {
                    (0, Some(k)) => format!("10.250.{}.{}", k / 250, k % 250 + 1),
                    _ => format!(
                        "10.{}.{}.{}",
                        128 + (i * 10 + e) / 65536,
                        (i * 10 + e) / 256 % 256,
                        (i * 10 + e) % 256
                    ),
                };
                format!(r#"{{"addresses":["{ip}"]}}"#)
            })
            .collect();
        items.push(format!(
            r#"{{"kind":"EndpointSlice","metadata":{{"name":"s{i}-1","namespace":"load","resourceVersion":"{}","labels":{{"kubernetes.io/service-name":"s{i}"}}}},"addressType":"IPv4","ports":[{{"name":"http","port":8080}}],"endpoints":[{}]}}"#,
            10 * i + 1 + writes,
            eps.join(",")
        ));
    }
    format!(r#"{{"kind":"List","items":[{}]}}"#, items.join(","))
}

/// Chain -> rule count, for the KUBE chains of a table as the kernel has them.
fn kube_chains(node: &Ns, table: &str) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for l in node.ok("iptables-save", &["-t", table]).lines() {
        if let Some(c) = l.strip_prefix(':').and_then(|c| c.split(' ').next()) {
            if c.starts_with("KUBE-") {
                m.insert(c.to_string(), 0);
            }
        } else if let Some(r) = l.strip_prefix("-A ") {
            if let Some(n) = m.get_mut(r.split(' ').next().unwrap_or("")) {
                *n += 1;
            }
        }
    }
    m
}

#[test]
fn a_thousand_services_applied_then_partially_resynced_twenty_times() {
    const N: usize = 1000;
    let node = Node::new("ipt-load");
    let dir = TempDir::new("ipt-load");
    let input = dir.path().join("cluster.json");
    let state = dir.path().join("state");
    let generate = |extra: &[&str]| -> Output {
        let mut a = vec![input.to_str().unwrap(), "--cluster-cidr", "10.128.0.0/9"];
        a.extend_from_slice(extra);
        node.node.run(bin("iptables-gen").to_str().unwrap(), &a)
    };
    let apply = || generate(&["--apply", "--state-dir", state.to_str().unwrap()]);
    std::fs::write(&input, load_json(N, &[])).unwrap();
    let o = apply();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut bumps = Vec::new();
    for k in 0..20 {
        bumps.push(((k * 37) % N, k));
        std::fs::write(&input, load_json(N, &bumps)).unwrap();
        let o = apply();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "re-sync {k}: {err}");
        assert!(
            err.contains("applied partial sync: 1 service(s) written, 1 chain(s) deleted"),
            "re-sync {k}: {err}"
        );
    }
    // The kernel now holds exactly what a full sync of the final objects writes.
    let full = generate(&[]);
    assert!(full.status.success());
    let text = String::from_utf8_lossy(&full.stdout);
    let mut want = std::collections::BTreeMap::new();
    let mut table = "";
    for l in text.lines() {
        if let Some(t) = l.strip_prefix('*') {
            table = if t == "nat" { "nat" } else { "filter" };
        } else if table == "nat" {
            if let Some(c) = l.strip_prefix(':').and_then(|c| c.split(' ').next()) {
                want.insert(c.to_string(), 0usize);
            } else if let Some(r) = l.strip_prefix("-A ") {
                *want.get_mut(r.split(' ').next().unwrap()).unwrap() += 1;
            }
        }
    }
    let got = kube_chains(&node.node, "nat");
    assert_eq!(got.len(), want.len(), "chains in the kernel vs a full sync");
    let differ: Vec<_> = want
        .iter()
        .filter(|(c, n)| got.get(*c) != Some(n))
        .take(5)
        .collect();
    assert!(
        differ.is_empty(),
        "chains differing from a full sync: {differ:?}"
    );
}

/// A UDP server in `pod` on port 5353 answering every datagram with `name`.
fn udp_server(pod: &Ns, name: &'static str) -> std::thread::JoinHandle<()> {
    let ns = netns::NetNs::open(pod.path()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        netns::run_in(&ns, move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:5353").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                if &buf[..n] == b"stop" {
                    break;
                }
                let _ = s.send_to(name.as_bytes(), from);
            }
        })
        .unwrap();
    });
    rx.recv().unwrap();
    h
}

fn udp_json(backend: (&str, &str)) -> String {
    format!(
        r#"{{"kind":"List","items":[
 {{"kind":"Service","metadata":{{"name":"dns","namespace":"default"}},
   "spec":{{"clusterIP":"10.96.0.53","ports":[{{"name":"dns","port":53,"protocol":"UDP"}}]}}}},
 {{"kind":"EndpointSlice","metadata":{{"name":"dns-{}","namespace":"default","labels":{{"kubernetes.io/service-name":"dns"}}}},
   "addressType":"IPv4","ports":[{{"name":"dns","port":5353,"protocol":"UDP"}}],
   "endpoints":[{{"addresses":["{}"],"nodeName":"node-1"}}]}}]}}"#,
        backend.0, backend.1
    )
}

#[test]
fn udp_flows_follow_an_endpoint_replacement() {
    udp_flows_follow_an_endpoint_replacement_with(false);
}

#[test]
fn udp_flows_follow_an_endpoint_replacement_on_nftables() {
    udp_flows_follow_an_endpoint_replacement_with(true);
}

/// A client keeps sending from one socket (one conntrack flow) to a UDP Service whose only
/// endpoint is replaced while the old one keeps running: the datagrams after the sync
/// reach the new endpoint, because the sync deleted the flow's stale conntrack entry.
fn udp_flows_follow_an_endpoint_replacement_with(nft: bool) {
    require_tool("conntrack");
    require_tool("nft");
    let tag = if nft { "udpn" } else { "udp" };
    let names = ["dns-a", "dns-b", "resolver"];
    let (node, dir, ips) = node_with_pods(tag, &names);
    let servers = [
        udp_server(node.pod(0), "dns-a"),
        udp_server(node.pod(1), "dns-b"),
    ];
    let input = dir.path().join("udp.json");
    let state = dir.path().join("state");
    let apply = || {
        let mut a = vec![
            input.to_str().unwrap(),
            "--hostname-override",
            "node-1",
            "--cluster-cidr",
            "10.77.0.0/16",
            "--apply",
            "--state-dir",
            state.to_str().unwrap(),
        ];
        if nft {
            a.extend(["--backend", "nftables"]);
        }
        let o = node.node.run(bin("iptables-gen").to_str().unwrap(), &a);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    std::fs::write(&input, udp_json(("a", &ips[0]))).unwrap();
    apply();
    netns::run_in(&node.pod(2).ns, || {
        let s = std::net::UdpSocket::bind("0.0.0.0:40053").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let ask = || -> String {
            s.send_to(b"q", "10.96.0.53:53").unwrap();
            let mut buf = [0u8; 64];
            match s.recv_from(&mut buf) {
                Ok((n, _)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
                Err(_) => "(no answer)".into(),
            }
        };
        assert_eq!(ask(), "dns-a");
        assert_eq!(ask(), "dns-a", "one flow, one endpoint");
        // The endpoint is replaced (dns-a keeps running, as a terminating pod may).
        std::fs::write(&input, udp_json(("b", &ips[1]))).unwrap();
        apply();
        assert_eq!(ask(), "dns-b", "the same flow now reaches the new endpoint");
    })
    .unwrap();
    for (i, h) in servers.into_iter().enumerate() {
        netns::run_in(&node.pod(i).ns, || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            let _ = s.send_to(b"stop", "127.0.0.1:5353");
        })
        .unwrap();
        h.join().unwrap();
    }
}

/// A NodePort Service over pods `a` and `b` (`b`'s nodeName is another node's), with
/// `spec` fields added (affinity, traffic policy).
fn policy_json(a: &str, b: &str, b_node: &str, spec: &str) -> String {
    format!(
        r#"{{"kind":"List","items":[
 {{"kind":"Service","metadata":{{"name":"web","namespace":"default"}},
   "spec":{{"type":"NodePort","clusterIP":"{VIP}",{spec}
            "ports":[{{"name":"http","port":8080,"targetPort":80,"protocol":"TCP","nodePort":30080}}]}}}},
 {{"kind":"EndpointSlice","metadata":{{"name":"web-1","namespace":"default","labels":{{"kubernetes.io/service-name":"web"}}}},
   "addressType":"IPv4","ports":[{{"name":"http","port":80,"protocol":"TCP"}}],
   "endpoints":[{{"addresses":["{a}"],"nodeName":"node-1"}},{{"addresses":["{b}"],"nodeName":"{b_node}"}}]}}]}}"#
    )
}

#[test]
fn client_ip_affinity_and_external_traffic_policy_local() {
    affinity_and_etp_local_with(false);
}

#[test]
fn client_ip_affinity_and_external_traffic_policy_local_on_nftables() {
    affinity_and_etp_local_with(true);
}

fn affinity_and_etp_local_with(nft: bool) {
    require_tool("busybox");
    require_tool("nft");
    let tag = if nft { "affn" } else { "aff" };
    let names = ["web-a", "web-b", "client"];
    let (node, dir, ips, _servers) = two_backends_and_a_client(tag, &names);
    let client = node.pod(2);
    // An outside client: a namespace on a link to the node (198.51.100.1 on the node).
    let ext = Ns::new(&format!("{tag}x"));
    ok(
        "ip",
        &[
            "link",
            "add",
            "pwext0",
            "netns",
            &node.node.name,
            "type",
            "veth",
            "peer",
            "name",
            "pwext1",
            "netns",
            &ext.name,
        ],
    );
    node.node
        .ok("ip", &["addr", "add", "198.51.100.1/24", "dev", "pwext0"]);
    node.node.ok("ip", &["link", "set", "pwext0", "up"]);
    ext.ok("ip", &["addr", "add", "198.51.100.2/24", "dev", "pwext1"]);
    ext.ok("ip", &["link", "set", "pwext1", "up"]);
    let input = dir.path().join("web.json");
    let apply = |json: String| {
        std::fs::write(&input, json).unwrap();
        apply_file(&node.node, &input, nft, &[]);
    };

    // ClientIP affinity: every request of one client lands on one backend.
    apply(policy_json(
        &ips[0],
        &ips[1],
        "node-1",
        r#""sessionAffinity":"ClientIP","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":600}},"#,
    ));
    let t = tally(client, 20);
    assert_eq!(t.len(), 1, "one backend for one client: {t:?}");
    assert!(
        names[..2].contains(&t.keys().next().unwrap().as_str()),
        "{t:?}"
    );

    // externalTrafficPolicy Local: from outside, only the node's own endpoint (web-b is
    // another node's); from a pod, both (pod traffic short-circuits to the cluster chain).
    apply(policy_json(
        &ips[0],
        &ips[1],
        "node-2",
        r#""externalTrafficPolicy":"Local","#,
    ));
    let outside = tally_at(&ext, "198.51.100.1", 30080, 20);
    assert_eq!(outside.get("web-a").copied(), Some(20), "{outside:?}");
    let inside = tally(client, 40);
    assert!(
        inside.contains_key("web-a") && inside.contains_key("web-b"),
        "{inside:?}"
    );
    // No local endpoint at all: outside traffic is dropped, not sent to another node.
    let lone = policy_json(
        &ips[0],
        &ips[1],
        "node-2",
        r#""externalTrafficPolicy":"Local","#,
    )
    .replace(r#""nodeName":"node-1""#, r#""nodeName":"node-3""#);
    apply(lone);
    assert_eq!(get(&ext, "198.51.100.1", 30080), None, "dropped");
}

// ---- iptables-gen --watch: the node's sync loop ----

/// A `kubectl get … --watch --output-watch-events -o json` event, printed as kubectl
/// prints it (keys sorted, four-space indent).
fn watch_event(kind: &str, object: &serde_json::Value) -> String {
    let ev = serde_json::json!({"object": object, "type": kind});
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    serde::Serialize::serialize(&ev, &mut ser).unwrap();
    out.push(b'\n');
    String::from_utf8(out).unwrap()
}

fn svc_obj(name: &str, vip: &str, rv: u32) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": rv.to_string()},
        "spec": {"type": "ClusterIP", "clusterIP": vip,
                 "ports": [{"name": "http", "port": 8080, "targetPort": 80, "protocol": "TCP"}]}
    })
}

fn slice_obj(svc: &str, ips: &[&str], rv: u32) -> serde_json::Value {
    let eps: Vec<serde_json::Value> = ips
        .iter()
        .map(|ip| serde_json::json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": "node-1"}))
        .collect();
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": format!("{svc}-abc"), "namespace": "default", "resourceVersion": rv.to_string(),
                     "labels": {"kubernetes.io/service-name": svc}},
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        "endpoints": eps
    })
}

fn bookmark(kind: &str, rv: u32) -> String {
    watch_event(
        "BOOKMARK",
        &serde_json::json!({"kind": kind, "metadata": {"resourceVersion": rv.to_string()}}),
    )
}

/// `iptables-gen --watch` running in the node, fed through two FIFOs (services,
/// endpointslices) as two `kubectl … --watch` pipes would; its stderr lines collected.
struct Watcher {
    child: std::process::Child,
    services: Option<std::fs::File>,
    slices: Option<std::fs::File>,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Watcher {
    /// `quiet`: `--initial-list-quiet` ("1h": only BOOKMARKs end the initial lists).
    fn start(node: &Ns, dir: &std::path::Path, tag: &str, nft: bool, quiet: &str) -> Watcher {
        Self::start_with(node, dir, tag, nft, quiet, &[], None)
    }

    /// [`Watcher::start`] with `extra` flags and, with `nft_over`, that file bind-mounted
    /// over /usr/sbin/nft in a private mount namespace of its own.
    fn start_with(
        node: &Ns,
        dir: &std::path::Path,
        tag: &str,
        nft: bool,
        quiet: &str,
        extra: &[&str],
        nft_over: Option<&std::path::Path>,
    ) -> Watcher {
        let svc = dir.join(format!("{tag}-services.watch"));
        let eps = dir.join(format!("{tag}-endpointslices.watch"));
        for f in [&svc, &eps] {
            ok("mkfifo", &[f.to_str().unwrap()]);
        }
        let net = format!("--net={}", node.path().display());
        let prog = bin("iptables-gen");
        let mut args = vec![
            net.as_str(),
            "--",
            prog.to_str().unwrap(),
            "--watch",
            svc.to_str().unwrap(),
            "--watch",
            eps.to_str().unwrap(),
            "--apply",
            "--hostname-override",
            "node-1",
            "--cluster-cidr",
            "10.77.0.0/16",
            "--min-sync-period",
            "100ms",
            "--initial-list-quiet",
            quiet,
        ];
        if nft {
            args.extend(["--backend", "nftables"]);
        }
        args.extend_from_slice(extra);
        let mut cmd = match nft_over {
            None => {
                let mut c = std::process::Command::new("nsenter");
                c.args(&args);
                c
            }
            Some(w) => {
                // unshare -m makes the new mount namespace private: the host's
                // /usr/sbin/nft is untouched.
                let mut c = std::process::Command::new("unshare");
                c.args([
                    "-m",
                    "sh",
                    "-c",
                    r#"mount --bind "$0" /usr/sbin/nft && exec nsenter "$@""#,
                ])
                .arg(w)
                .args(&args);
                c
            }
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        // Each open waits for iptables-gen to open its end.
        let open = |p: &std::path::Path| std::fs::OpenOptions::new().write(true).open(p).unwrap();
        Watcher {
            child,
            services: Some(open(&svc)),
            slices: Some(open(&eps)),
            lines,
            seen: Vec::new(),
        }
    }

    fn services(&mut self, text: &str) {
        self.services
            .as_mut()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    fn slices(&mut self, text: &str) {
        self.slices
            .as_mut()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    /// Wait for a stderr line containing `what` (after the ones already waited for).
    fn wait_line(&mut self, what: &str) -> String {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(what) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line with {what:?} in 20 s; stderr so far: {:#?}",
                    self.seen
                ),
            }
        }
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < end, "iptables-gen did not exit");
            // Collect what it says meanwhile (also the wait's pace).
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.seen.push(l);
            }
        }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watch_mode_follows_the_streams() {
    watch_mode_follows_the_streams_with(false);
}

#[test]
fn watch_mode_follows_the_streams_on_nftables() {
    watch_mode_follows_the_streams_with(true);
}

fn watch_mode_follows_the_streams_with(nft: bool) {
    use nix::sys::signal::Signal;
    require_tool("busybox");
    require_tool("nft");
    let tag = if nft { "wtn" } else { "wti" };
    let names = ["web-a", "web-b", "client"];
    let (node, dir, ips, _servers) = two_backends_and_a_client(tag, &names);
    let client = node.pod(2);
    let (a, b) = (ips[0].as_str(), ips[1].as_str());

    // The initial lists, each ended by a BOOKMARK: one full sync, then traffic flows.
    let mut w = Watcher::start(&node.node, dir.path(), "run1", nft, "1h");
    w.services(&watch_event("ADDED", &svc_obj("web", VIP, 10)));
    w.slices(&watch_event("ADDED", &slice_obj("web", &[a, b], 11)));
    w.services(&bookmark("Service", 12));
    w.slices(&bookmark("EndpointSlice", 12));
    w.wait_line("applied full sync");
    let t = tally(client, 40);
    assert!(t.len() == 2 && t.values().all(|&c| c >= 5), "{t:?}");

    // MODIFIED: web-b leaves its EndpointSlice; a partial sync follows by itself.
    w.slices(&watch_event("MODIFIED", &slice_obj("web", &[a], 13)));
    w.wait_line("applied partial sync: 1 service(s)");
    assert_eq!(tally(client, 20).get(names[0]).copied(), Some(20));

    // A second Service comes and goes: its rules come and go with it.
    let vip2 = "10.96.0.12";
    w.services(&watch_event("ADDED", &svc_obj("api", vip2, 14)));
    w.slices(&watch_event("ADDED", &slice_obj("api", &[b], 15)));
    wait_for("api reachable", Duration::from_secs(10), || {
        (get(client, vip2, 8080).as_deref() == Some(names[1])).then_some(())
    });
    let before = snapshot(&node.node, nft);
    assert!(before.contains("default/api"), "{before}");
    w.services(&watch_event("DELETED", &svc_obj("api", vip2, 16)));
    w.slices(&watch_event("DELETED", &slice_obj("api", &[b], 17)));
    wait_for("api's rules gone", Duration::from_secs(10), || {
        (!snapshot(&node.node, nft).contains("default/api")).then_some(())
    });
    assert_eq!(get(client, vip2, 8080), None);

    // A stream that ends is an error: kubectl died, a supervisor restarts both.
    w.services.take();
    let st = w.wait_exit();
    assert_eq!(st.code(), Some(1), "{:#?}", w.seen);
    assert!(
        w.seen
            .iter()
            .any(|l| l.contains("run1-services.watch ended")),
        "{:#?}",
        w.seen
    );
    // Its rules stay: traffic still flows.
    assert_eq!(get(client, VIP, 8080).as_deref(), Some(names[0]));

    // An ERROR event (the API server's "too old resource version") too.
    let mut w = Watcher::start(&node.node, dir.path(), "runerr", nft, "1h");
    w.slices(&watch_event(
        "ERROR",
        &serde_json::json!({"kind": "Status", "code": 410, "message": "too old resource version: 1 (2)"}),
    ));
    assert_eq!(w.wait_exit().code(), Some(1), "{:#?}", w.seen);
    assert!(
        w.seen
            .iter()
            .any(|l| l.contains("ERROR event (code 410): too old resource version")),
        "{:#?}",
        w.seen
    );

    // SIGKILL in a burst of changes, then a restart: the restart's first sync is full and
    // the kernel ends equal to a one-shot full sync of the same objects.
    let mut w = Watcher::start(&node.node, dir.path(), "run2", nft, "1h");
    w.services(&watch_event("ADDED", &svc_obj("web", VIP, 20)));
    w.slices(&watch_event("ADDED", &slice_obj("web", &[a], 21)));
    w.services(&bookmark("Service", 22));
    w.slices(&bookmark("EndpointSlice", 22));
    w.wait_line("applied full sync");
    for k in 0..40u32 {
        let set: &[&str] = if k % 2 == 0 { &[a, b] } else { &[b] };
        w.slices(&watch_event("MODIFIED", &slice_obj("web", set, 30 + k)));
    }
    w.signal(Signal::SIGKILL);
    w.wait_exit();
    // This time no BOOKMARK: the lists end after 300 ms without an event.
    let mut w = Watcher::start(&node.node, dir.path(), "run3", nft, "300ms");
    w.services(&watch_event("ADDED", &svc_obj("web", VIP, 80)));
    w.slices(&watch_event("ADDED", &slice_obj("web", &[b], 81)));
    w.wait_line("applied full sync");
    // SIGTERM: a clean stop with success, the rules left in place.
    w.signal(Signal::SIGTERM);
    let st = w.wait_exit();
    assert!(st.success(), "{st:?} {:#?}", w.seen);
    let watched = snapshot(&node.node, nft);
    assert_eq!(get(client, VIP, 8080).as_deref(), Some(names[1]));
    let input = dir.path().join("final.json");
    std::fs::write(
        &input,
        serde_json::json!({"apiVersion": "v1", "kind": "List",
                           "items": [svc_obj("web", VIP, 80), slice_obj("web", &[b], 81)]})
        .to_string(),
    )
    .unwrap();
    apply_file(&node.node, &input, nft, &["--full"]);
    assert_eq!(
        watched,
        snapshot(&node.node, nft),
        "watch vs one-shot full sync"
    );
}

/// One HTTP/1.0 GET of `path` on the node's loopback: (status, body).
fn http_get(node: &Ns, port: u16, path: &str) -> (u16, String) {
    use std::io::Read;
    let path = path.to_string();
    netns::run_in(&node.ns, move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        let code = r
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = r
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (code, body)
    })
    .unwrap()
}

#[test]
fn watch_mode_serves_healthz_and_metrics() {
    use nix::sys::signal::Signal;
    require_tool("nft");
    let node = Ns::new("wth");
    let dir = TempDir::new("wth");
    // An nft that fails while `fail` exists, bind-mounted over the real one for this
    // iptables-gen only.
    let real = dir.path().join("nft.real");
    std::fs::copy("/usr/sbin/nft", &real).unwrap();
    let flag = dir.path().join("fail");
    let wrapper = dir.path().join("nft");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n[ -e {} ] && {{ echo injected failure >&2; exit 1; }}\nexec {} \"$@\"\n",
            flag.display(),
            real.display()
        ),
    )
    .unwrap();
    ok("chmod", &["0755", wrapper.to_str().unwrap()]);
    let mut w = Watcher::start_with(
        &node,
        dir.path(),
        "hz",
        true,
        "1h",
        &["--sync-period", "1s"],
        Some(&wrapper),
    );
    w.services(&watch_event("ADDED", &svc_obj("web", VIP, 10)));
    w.slices(&watch_event("ADDED", &slice_obj("web", &["10.77.0.9"], 11)));
    w.services(&bookmark("Service", 12));
    w.slices(&bookmark("EndpointSlice", 12));
    w.wait_line("applied full sync");

    let (code, body) = http_get(&node, 10256, "/healthz");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.starts_with(r#"{"lastUpdated": ""#) && body.contains(r#""currentTime": ""#),
        "{body}"
    );
    let (code, m) = http_get(&node, 10249, "/metrics");
    assert_eq!(code, 200);
    for want in [
        "kubeproxy_sync_proxy_rules_service_changes_total 1",
        "kubeproxy_sync_proxy_rules_endpoint_changes_total 1",
        "kubeproxy_sync_full_proxy_rules_duration_seconds_count ",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds ",
        "kubeproxy_sync_proxy_rules_nftables_sync_failures_total 0",
    ] {
        assert!(m.contains(want), "missing {want:?}:\n{m}");
    }
    assert_eq!(http_get(&node, 10249, "/nothing").0, 404);

    // The sync fails from now on: once a change has waited twice --sync-period, 503.
    std::fs::write(&flag, "").unwrap();
    w.slices(&watch_event(
        "MODIFIED",
        &slice_obj("web", &["10.77.0.8"], 13),
    ));
    w.wait_line("sync failed");
    wait_for("/healthz 503", Duration::from_secs(10), || {
        (http_get(&node, 10256, "/healthz").0 == 503).then_some(())
    });
    let m = http_get(&node, 10249, "/metrics").1;
    assert!(
        !m.contains("kubeproxy_sync_proxy_rules_nftables_sync_failures_total 0"),
        "{m}"
    );
    // Repaired: the retried full sync applies the change, healthy again.
    std::fs::remove_file(&flag).unwrap();
    wait_for("/healthz 200 again", Duration::from_secs(10), || {
        (http_get(&node, 10256, "/healthz").0 == 200).then_some(())
    });
    assert!(
        node.ok(
            "nft",
            &["list", "map", "ip", "kube-proxy", "cluster-endpoints"]
        )
        .contains("10.77.0.8")
    );
    w.signal(Signal::SIGTERM);
    assert!(w.wait_exit().success(), "{:#?}", w.seen);
}
