//! Privileged tests of runtime-shim's core (bridge, veth, IPAM, routes, masquerade) against
//! the real kernel, inside throwaway node namespaces. The CLI runs inside the node
//! namespace (nsenter), exactly as a runtime on a node would run it.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::process::Output;

use podwire_testkit::*;

type Net = Network;

/// A network of `ranges` on bridge `pwbr0`, `extra` being top-level fields as JSON text
/// (each followed by a comma).
fn net(tag: &str, ranges: &str, extra: &str) -> Net {
    let json =
        format!(r#"{{{extra} "bridge":"pwbr0","ipam":{{"type":"host-local","ranges":{ranges}}}}}"#);
    Network::new(tag, serde_json::from_str(&json).unwrap())
}

/// runtime-shim in the node with exactly `args` (they name their own config).
fn raw(n: &Net, args: &[&str]) -> Output {
    shim_in(&n.node.node).args(args).output().unwrap()
}

fn standard(tag: &str) -> Net {
    net(
        tag,
        r#"[[{"subnet":"10.77.0.0/24"}]]"#,
        r#""isDefaultGateway":true,"ipMasq":true,"hairpinMode":true,"#,
    )
}

/// What these tests ask of a network beyond the fixture's.
trait ShimNet {
    fn try_setup_env(&self, env: &[(&str, &str)], netns: &Path, id: &str) -> Output;
    fn try_setup(&self, netns: &Path, id: &str) -> Output;
    /// A setup that must succeed; its result.
    fn setup_pod(&self, pod: &Ns, id: &str) -> serde_json::Value;
}

impl ShimNet for Net {
    fn try_setup_env(&self, env: &[(&str, &str)], netns: &Path, id: &str) -> Output {
        let ns = netns.to_str().unwrap();
        self.shim_env(env, &["setup", "--netns", ns, "--id", id])
    }

    fn try_setup(&self, netns: &Path, id: &str) -> Output {
        self.try_setup_env(&[], netns, id)
    }

    fn setup_pod(&self, pod: &Ns, id: &str) -> serde_json::Value {
        let out = self.try_setup(&pod.path(), id);
        assert!(
            out.status.success(),
            "setup {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn ip_of(result: &serde_json::Value, i: usize) -> String {
    let a = result["ips"][i]["address"].as_str().unwrap();
    a.split('/').next().unwrap().to_string()
}

fn ping(from: &Ns, to: &str) -> bool {
    from.run("busybox", &["ping", "-c", "1", "-W", "2", to])
        .status
        .success()
}

#[test]
fn two_pods_reach_each_other_and_the_gateway_dual_stack() {
    require_tool("busybox");
    let mut n = net(
        "two",
        r#"[[{"subnet":"10.77.0.0/24"}],[{"subnet":"fd00:77::/64"}]]"#,
        r#""isDefaultGateway":true,"ipMasq":true,"hairpinMode":true,"mtu":1400,"#,
    );
    let a = n.node.add_pod("a");
    let b = n.node.add_pod("b");
    let ra = n.setup_pod(n.node.pod(a), "poda");
    let rb = n.setup_pod(n.node.pod(b), "podb");
    // Result shape: bridge, host veth, pod interface (with sandbox) and its addresses.
    assert_eq!(ra["interfaces"][0]["name"], "pwbr0");
    assert_eq!(ra["interfaces"][2]["name"], "eth0");
    assert_eq!(
        ra["interfaces"][2]["sandbox"],
        n.node.pod(a).path().to_str().unwrap()
    );
    assert_eq!(
        ra["ips"].as_array().unwrap().len(),
        2,
        "dual-stack: one of each"
    );
    let (a4, a6, b4, b6) = (ip_of(&ra, 0), ip_of(&ra, 1), ip_of(&rb, 0), ip_of(&rb, 1));
    assert!(a4.contains('.') && a6.contains(':'));
    assert_ne!(a4, b4);
    assert_ne!(a6, b6);
    // What the kernel has: eth0 with both addresses and MTU, default routes, lo up.
    let addrs = n
        .node
        .pod(a)
        .ok("ip", &["-o", "addr", "show", "dev", "eth0"]);
    assert!(
        addrs.contains(&format!("{a4}/24")) && addrs.contains(&format!("{a6}/64")),
        "{addrs}"
    );
    let link = n.node.pod(a).ok("ip", &["-o", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1400") && link.contains("UP"), "{link}");
    assert!(
        n.node
            .pod(a)
            .ok("ip", &["route"])
            .contains("default via 10.77.0.1 dev eth0")
    );
    assert!(
        n.node
            .pod(a)
            .ok("ip", &["-6", "route"])
            .contains("default via fd00:77::1 dev eth0")
    );
    // Host side: hairpin on, enslaved to the bridge.
    let br = n.node.node.ok("bridge", &["-d", "link", "show"]);
    assert_eq!(br.matches("hairpin on").count(), 2, "{br}");
    // Traffic.
    assert!(ping(n.node.pod(a), &b4), "pod a -> pod b (IPv4)");
    assert!(ping(n.node.pod(b), &a4), "pod b -> pod a (IPv4)");
    assert!(ping(n.node.pod(a), "10.77.0.1"), "pod -> gateway");
    assert!(ping(n.node.pod(a), &b6), "pod a -> pod b (IPv6)");
    // Forwarding on in the node, one masquerade rule per family however many pods.
    assert_eq!(
        n.node
            .node
            .ok("cat", &["/proc/sys/net/ipv4/ip_forward"])
            .trim(),
        "1"
    );
    assert_eq!(n.masq_rules(true), 1);
    assert_eq!(n.masq_rules(false), 1);
    // check passes.
    let c = raw(
        &n,
        &[
            "check",
            "--netns",
            n.node.pod(a).path().to_str().unwrap(),
            "--id",
            "poda",
            "--config",
            n.config.to_str().unwrap(),
        ],
    );
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    for id in ["poda", "podb"] {
        assert!(n.teardown(None, id).status.success());
    }
    assert!(n.host_veths().is_empty());
    assert!(n.records().is_empty());
    // Masquerade is per network: it goes with the network's last pod.
    assert_eq!(n.nft_table(), None);
}

/// An "outside" host of our own: a namespace on a TEST-NET-2 link from the node
/// (198.51.100.1 on the node, .2 outside), with no route back to any pod subnet.
fn outside(node: &Ns) -> Ns {
    let ext = Ns::new("ext");
    ok(
        "ip",
        &[
            "link", "add", "pwext0", "netns", &node.name, "type", "veth", "peer", "name", "pwext1",
            "netns", &ext.name,
        ],
    );
    node.ok("ip", &["addr", "add", "198.51.100.1/24", "dev", "pwext0"]);
    node.ok("ip", &["link", "set", "pwext0", "up"]);
    ext.ok("ip", &["addr", "add", "198.51.100.2/24", "dev", "pwext1"]);
    ext.ok("ip", &["link", "set", "pwext1", "up"]);
    ext
}

#[test]
fn masquerade_lets_pods_reach_a_host_beyond_the_node_and_heals_on_the_next_add() {
    require_tool("conntrack");
    // The outside host has no route back to the pod subnet: a pod reaches it only if
    // the node masquerades.
    let mut n = standard("masq");
    let p = n.node.add_pod("p");
    let ext = outside(&n.node.node);
    n.setup_pod(n.node.pod(p), "p1");
    assert!(
        ping(n.node.pod(p), "198.51.100.2"),
        "masqueraded traffic gets an answer"
    );
    let config = n.config.to_str().unwrap().to_string();
    let breakers: [(&str, Vec<&str>); 2] = [
        ("unmasq", vec!["unmasq"]),
        ("nft flush ruleset", vec!["nft", "flush", "ruleset"]),
    ];
    for (k, (what, argv)) in breakers.iter().enumerate() {
        if argv[0] == "unmasq" {
            assert!(raw(&n, &["unmasq", "--config", &config]).status.success());
        } else {
            n.node.node.ok(argv[0], &argv[1..]);
        }
        // Forget the NAT bindings of earlier pings, so the next one meets the rules.
        n.node.node.ok("conntrack", &["-F"]);
        assert!(
            !ping(n.node.pod(p), "198.51.100.2"),
            "after {what}: no masquerade, no reply"
        );
        // Any later ADD of the network puts the masquerade back for every pod.
        let q = n.node.add_pod(&format!("q{k}"));
        n.setup_pod(n.node.pod(q), &format!("q{k}"));
        assert!(
            ping(n.node.pod(p), "198.51.100.2"),
            "after {what} and one more ADD: masqueraded again"
        );
    }
    drop(ext);
}

#[test]
fn non_masquerade_cidrs_keep_the_pod_address_across_nodes() {
    require_tool("busybox");
    // Two nodes on one link (10.0.0.1, 10.0.0.2), pod subnets 10.244.1.0/24 and
    // 10.244.2.0/24 routed between them (`routes --apply`, host-gw), ipMasq on with the
    // cluster range exempt.
    let mut two = TwoNodes::new("nm", false, |i| {
        serde_json::json!({
            "bridge": "pwbr0", "isDefaultGateway": true, "ipMasq": true,
            "nonMasqueradeCIDRs": ["10.244.0.0/16"],
            "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.244.{i}.0/24")}]]}
        })
    });
    let list = two.nodes_file(two.nodes[0].dir.path(), &[1, 2]);
    for k in [1, 2] {
        let o = two.routes(k, &list, "10.244.0.0/16", &[]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let c = two.nodes[0].node.add_pod("client");
    let s = two.nodes[1].node.add_pod("server");
    let [n1, n2] = &two.nodes;
    let b = &n2.node.node;
    let rc = n1.setup_pod(n1.node.pod(c), "client");
    let rs = n2.setup_pod(n2.node.pod(s), "server");
    let (client_ip, server_ip) = (ip_of(&rc, 0), ip_of(&rs, 0));
    let _srv = http::serve_whoami(n2.node.pod(s), n2.dir.path(), 8080);
    assert_eq!(
        http::whoami(n1.node.pod(c), &server_ip, 8080),
        client_ip,
        "a pod on node 2 sees the client pod's own address"
    );
    // A destination outside the list (node 2's own address) sees node 1's.
    let _node_srv = http::serve_whoami(b, &n2.dir.path().join("node"), 8081);
    assert_eq!(http::whoami(n1.node.pod(c), "10.0.0.2", 8081), "10.0.0.1");
}

#[test]
fn isolated_networks_reach_no_pod_of_another_network() {
    require_tool("busybox");
    // Three networks on one node, each on its own bridge: A isolated, B and C not.
    let mk = |br: &str, subnet: &str, isolate: bool| {
        serde_json::json!({
            "bridge": br, "isDefaultGateway": true, "isolate": isolate,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]]}
        })
    };
    let mut a = Network::new("isoa", mk("pwbra", "10.91.1.0/24", true));
    let pods: Vec<usize> = ["a1", "a2", "b1", "c1"]
        .iter()
        .map(|t| a.node.add_pod(t))
        .collect();
    let node = &a.node.node;
    let dir = a.dir.path().to_path_buf();
    let other = |name: &str, mut v: serde_json::Value| {
        v["name"] = name.into();
        v["cniVersion"] = "1.0.0".into();
        v["type"] = "runtime-shim".into();
        v["ipam"]["dataDir"] = dir.join("ipam").display().to_string().into();
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, v.to_string()).unwrap();
        path
    };
    let cb = other("pwisob", mk("pwbrb", "10.91.2.0/24", false));
    let cc = other("pwisoc", mk("pwbrc", "10.91.3.0/24", false));
    let a1 = a.setup_pod(a.node.pod(pods[0]), "a1");
    let a2 = a.setup_pod(a.node.pod(pods[1]), "a2");
    let setup_other = |cfg: &Path, pod: &Ns, id: &str| -> serde_json::Value {
        let o = shim_in(node)
            .args([
                "setup",
                "--netns",
                pod.path().to_str().unwrap(),
                "--id",
                id,
                "--config",
            ])
            .arg(cfg)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let b1 = setup_other(&cb, a.node.pod(pods[2]), "b1");
    let c1 = setup_other(&cc, a.node.pod(pods[3]), "c1");
    let (ip_a1, ip_a2, ip_b1, ip_c1) = (ip_of(&a1, 0), ip_of(&a2, 0), ip_of(&b1, 0), ip_of(&c1, 0));
    let pod = |i: usize| a.node.pod(pods[i]);
    assert!(
        ping(pod(0), &ip_a2),
        "pods of the isolated network reach each other"
    );
    assert!(ping(pod(0), "10.91.1.1"), "and their gateway");
    assert!(
        ping(pod(2), &ip_c1),
        "control: B and C (not isolated) reach each other"
    );
    assert!(!ping(pod(0), &ip_b1), "A -> B dropped");
    assert!(!ping(pod(0), &ip_c1), "A -> C dropped");
    assert!(!ping(pod(2), &ip_a1), "B -> A dropped");
    assert!(!ping(pod(3), &ip_a2), "C -> A dropped");
    // Every podwire bridge carries the group isolation knows them by.
    for br in ["pwbra", "pwbrb", "pwbrc"] {
        let l = node.ok("ip", &["-d", "link", "show", br]);
        assert!(
            l.contains("group 28791") || l.contains("group 0x7077"),
            "{l}"
        );
    }
    // Pods of the isolated network still reach beyond the node.
    let ext = outside(node);
    ext.ok(
        "ip",
        &["route", "add", "10.91.0.0/16", "via", "198.51.100.1"],
    );
    assert!(ping(pod(0), "198.51.100.2"), "isolated, not cut off");
}

#[test]
fn hundred_setups_from_two_concurrent_workers() {
    let mut n = standard("par");
    let pods: Vec<usize> = (0..100).map(|i| n.node.add_pod(&format!("p{i}"))).collect();
    let results: Vec<(String, serde_json::Value)> = std::thread::scope(|s| {
        let n = &n;
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let pods = &pods;
                s.spawn(move || {
                    pods.iter()
                        .skip(w)
                        .step_by(2)
                        .map(|&i| {
                            let id = format!("c{i}");
                            let r = n.setup_pod(n.node.pod(i), &id);
                            (id, r)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let mut ips: Vec<String> = results.iter().map(|(_, r)| ip_of(r, 0)).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 100, "no address handed out twice");
    assert_eq!(n.records().len(), 100);
    assert_eq!(n.host_veths().len(), 100);
    assert_eq!(n.masq_rules(true), 1, "one rule per network, not per pod");
    // Spot-check traffic between the first and last pods.
    assert!(ping(
        n.node.pod(pods[0]),
        &ip_of(&results[results.len() - 1].1, 0)
    ));
    std::thread::scope(|s| {
        for w in 0..2 {
            let (n, results) = (&n, &results);
            s.spawn(move || {
                for (id, _) in results.iter().skip(w).step_by(2) {
                    assert!(n.teardown(None, id).status.success());
                }
            });
        }
    });
    assert!(n.host_veths().is_empty());
    assert!(n.records().is_empty());
}

#[test]
fn a_kernel_failure_midway_leaves_nothing_behind() {
    // Every step's rollback is unit-tested over the kernel seam (apply::tests); here the
    // real kernel fails one step.
    let mut n = standard("fault");
    let p = n.node.add_pod("p");
    let path = n.node.pod(p).path();
    // A kernel-side failure midway: eth0 already exists in the pod, so creating the veth
    // fails after the address was reserved and the bridge created.
    n.node
        .pod(p)
        .ok("ip", &["link", "add", "eth0", "type", "bridge"]);
    let out = n.try_setup(&path, "c1");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("step 'create veth'") && err.contains("File exists"),
        "{err}"
    );
    assert!(n.host_veths().is_empty() && n.records().is_empty());
    // A pre-existing host veth name: refused before anything changes.
    let p2 = n.node.add_pod("p2");
    n.setup_pod(n.node.pod(p2), "c2");
    let out = n.try_setup(&path, "c2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already set up"));
    assert_eq!(n.records().len(), 1);
}

#[test]
fn teardown_is_idempotent_and_works_after_the_namespace_is_gone() {
    let mut n = standard("td");
    let a = n.node.add_pod("a");
    n.setup_pod(n.node.pod(a), "c1");
    let path = n.node.pod(a).path();
    assert!(n.teardown(Some(&path), "c1").status.success());
    assert!(n.teardown(Some(&path), "c1").status.success(), "twice");
    assert!(n.host_veths().is_empty() && n.records().is_empty());
    // Now with the namespace deleted before teardown (as at OCI poststop).
    let b = n.node.add_pod("b");
    n.setup_pod(n.node.pod(b), "c2");
    let bpath = n.node.pod(b).path();
    n.node.pods.remove(b); // drops (deletes) the pod namespace; its veth goes with it
    let out = n.teardown(Some(&bpath), "c2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(n.host_veths().is_empty() && n.records().is_empty());
    // Unknown container: still success (CNI DEL semantics).
    assert!(n.teardown(None, "never-existed").status.success());
}

#[test]
fn range_exhaustion_is_a_clear_error_and_frees_nothing_else() {
    let mut n = net(
        "exh",
        r#"[[{"subnet":"10.78.0.0/29"}]]"#,
        r#""isDefaultGateway":true,"#,
    );
    let pods: Vec<usize> = (0..6).map(|i| n.node.add_pod(&format!("p{i}"))).collect();
    let mut ips = Vec::new();
    for &i in &pods[..5] {
        ips.push(ip_of(&n.setup_pod(n.node.pod(i), &format!("c{i}")), 0));
    }
    let path = n.node.pod(pods[5]).path();
    let out = n.try_setup(&path, "c5");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no free address left in 10.78.0.1-10.78.0.6"),
        "{err}"
    );
    assert_eq!(n.records().len(), 5, "the other pods keep their addresses");
    assert_eq!(n.host_veths().len(), 5);
    assert_eq!(n.node.pod(pods[5]).links(), ["lo"]);
    assert!(
        ping(n.node.pod(pods[0]), &ips[4]),
        "existing pods still talk"
    );
}

#[test]
fn bad_input_is_rejected_before_anything_changes() {
    let mut n = standard("bad");
    let p = n.node.add_pod("p");
    let path = n.node.pod(p).path();
    let cfg = |json: &str| {
        let f = n.dir.path().join("bad.json");
        std::fs::write(&f, json).unwrap();
        f
    };
    let ipam = |r: &str| {
        format!(
            r#"{{"name":"x","bridge":"pwbr0","isGateway":true,"ipam":{{"type":"host-local","ranges":[[{r}]],"dataDir":"{}"}}}}"#,
            n.dir.path().join("ipam").display()
        )
    };
    let cases: Vec<(String, &str)> = vec![
        (ipam(r#"{"subnet":"10.0.0.0/33"}"#), "ipam.ranges[0][0].subnet: invalid CIDR"),
        (ipam(r#"{"subnet":"10.0.0.0/24","gateway":"10.9.9.9"}"#), "gateway: 10.9.9.9 is outside subnet"),
        (r#"{"name":"x","bridge":"much-too-long-bridge","ipam":{"type":"host-local","subnet":"10.0.0.0/24"}}"#.into(), "bridge"),
        (r#"{"name":"x","ipam":{"type":"dhcp","subnet":"10.0.0.0/24"}}"#.into(), "unknown IPAM type"),
        (r#"{"name":"x", "ipam": "#.into(), "cannot parse network config"),
    ];
    for (json, want) in cases {
        let f = cfg(&json);
        let out = raw(
            &n,
            &[
                "setup",
                "--netns",
                path.to_str().unwrap(),
                "--id",
                "c1",
                "--config",
                f.to_str().unwrap(),
            ],
        );
        assert_eq!(out.status.code(), Some(1), "{json}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{json}: {err}");
    }
    // A missing namespace, a bad container id, a too-long ifname.
    let args = |netns: &str, id: &str, ifname: &str| {
        raw(
            &n,
            &[
                "setup",
                "--netns",
                netns,
                "--id",
                id,
                "--ifname",
                ifname,
                "--config",
                n.config.to_str().unwrap(),
            ],
        )
    };
    let out = args("/run/netns/pwt-does-not-exist", "c1", "eth0");
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    let out = args(path.to_str().unwrap(), "../../etc", "eth0");
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid container id"));
    let out = args(path.to_str().unwrap(), "c1", "a-very-long-ifname0");
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid ifname"));
    let out = args("/etc/hostname", "c1", "eth0");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a network namespace"));
    // Without CAP_NET_ADMIN the shim refuses up front, with a clear message.
    let out = run(
        "nsenter",
        &[
            &format!("--net={}", n.node.node.path().display()),
            "--",
            "setpriv",
            "--bounding-set",
            "-net_admin",
            "--",
            bin("runtime-shim").to_str().unwrap(),
            "setup",
            "--netns",
            path.to_str().unwrap(),
            "--id",
            "c1",
            "--config",
            n.config.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing capability CAP_NET_ADMIN"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing changed: no bridge, no veth, no IPAM state, no rule.
    assert_eq!(n.node.node.links(), ["lo"]);
    assert!(n.records().is_empty());
    assert_eq!(n.nft_table(), None);
    assert_eq!(n.node.pod(p).links(), ["lo"]);
}

#[test]
fn check_notices_a_missing_route() {
    let mut n = standard("chk");
    let p = n.node.add_pod("p");
    n.setup_pod(n.node.pod(p), "c1");
    let path = n.node.pod(p).path();
    let check = || {
        raw(
            &n,
            &[
                "check",
                "--netns",
                path.to_str().unwrap(),
                "--id",
                "c1",
                "--config",
                n.config.to_str().unwrap(),
            ],
        )
    };
    assert!(check().status.success());
    n.node.pod(p).ok("ip", &["route", "del", "default"]);
    let out = check();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("route 0.0.0.0/0 via 10.77.0.1 is missing")
    );
}

#[test]
fn library_setup_from_threads_via_run_in() {
    // The library API, as a long-running runtime would use it: node work on a run_in
    // thread, never moving the caller.
    let mut n = standard("lib");
    let p = n.node.add_pod("p");
    let bytes = std::fs::read(&n.config).unwrap();
    let (_, net) = runtime_shim::config::load(&bytes).unwrap();
    let before = NetNs::current().unwrap();
    let path = n.node.pod(p).path();
    let r = netns::run_in(&n.node.node.ns, || {
        runtime_shim::setup(&net, &path, "lib1", "eth0", &Default::default())
    })
    .unwrap()
    .unwrap();
    assert_eq!(NetNs::current().unwrap(), before);
    assert_eq!(r.ips.len(), 1);
    netns::run_in(&n.node.node.ns, || {
        runtime_shim::check(&net, &path, "lib1", "eth0", None)
    })
    .unwrap()
    .unwrap();
    netns::run_in(&n.node.node.ns, || {
        runtime_shim::teardown(&net, None, "lib1", "eth0")
    })
    .unwrap()
    .unwrap();
    assert!(n.host_veths().is_empty());
}

#[test]
fn ipv6_link_local_only_where_a_pod_has_ipv6() {
    // Bridge ports never get one; IPv4-only pods get none (their DAD/MLD multicast would
    // be flooded to every pod on the bridge); dual-stack pods keep theirs.
    let mut v4 = standard("ll4");
    let p = v4.node.add_pod("p");
    v4.setup_pod(v4.node.pod(p), "c1");
    let inet6 = |ns: &Ns, dev: &str| ns.ok("ip", &["-6", "-o", "addr", "show", "dev", dev]);
    assert_eq!(
        inet6(v4.node.pod(p), "eth0"),
        "",
        "IPv4-only pod: no IPv6 address on eth0"
    );
    assert!(inet6(v4.node.pod(p), "lo").contains("::1"), "lo keeps ::1");
    for h in v4.host_veths() {
        assert_eq!(
            inet6(&v4.node.node, &h),
            "",
            "bridge port {h} has no IPv6 address"
        );
    }
    let mut ds = net(
        "ll6",
        r#"[[{"subnet":"10.79.0.0/24"}],[{"subnet":"fd00:79::/64"}]]"#,
        r#""isDefaultGateway":true,"#,
    );
    let q = ds.node.add_pod("q");
    ds.setup_pod(ds.node.pod(q), "c2");
    let a = inet6(ds.node.pod(q), "eth0");
    assert!(
        a.contains("fd00:79::") && a.contains("fe80::"),
        "dual-stack pod keeps link-local: {a}"
    );
}
