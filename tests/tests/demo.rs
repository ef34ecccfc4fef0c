//! `make demo` is also a test: the walkthrough runs (as `make demo` runs it, the binary
//! with `--json`) and every step's outcome is asserted, not its timing.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::Command;

use podwire_testkit::*;
use serde_json::Value;

#[test]
fn the_demo_walkthrough_does_what_it_shows_and_leaves_nothing() {
    require_root();
    let child = Command::new(bin("podwire-demo"))
        .arg("--json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let o = child.wait_with_output().unwrap();
    let s: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "demo JSON: {e}\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    assert!(o.status.success(), "{s:#}");
    assert_eq!(s["ok"], true, "{s:#}");
    assert_eq!(s["error"], Value::Null);
    assert_eq!(s["left_behind"], serde_json::json!([]));
    let steps = s["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 7);
    let f = |n: usize| &steps[n - 1]["facts"];
    for (i, st) in steps.iter().enumerate() {
        assert_eq!(st["n"], i as u64 + 1);
        assert_eq!(st["ok"], true, "{st:#}");
    }
    // 1. One network stack per pod.
    assert_eq!(f(1)["sandbox_eth0"], f(1)["app_eth0"]);
    assert!(
        f(1)["app_eth0"]
            .as_str()
            .unwrap()
            .contains(f(1)["ip"].as_str().unwrap())
    );
    assert_eq!(f(1)["localhost_answer"], "nginx-1");
    assert_eq!(f(1)["second_server_failed"], true);
    assert!(
        f(1)["second_server_error"]
            .as_str()
            .unwrap()
            .contains("in use")
    );
    // 2. The bridge is the gateway of the node's pod subnet.
    assert_eq!(f(2)["pod_subnet"], "10.244.1.0/24");
    assert_eq!(f(2)["bridge_address"], "10.244.1.1/24");
    assert_eq!(f(2)["pod_default_route_via"], "10.244.1.1");
    // 3. Two replicas, each answering with its own name.
    let reps = f(3)["replicas"].as_array().unwrap();
    assert_eq!(reps.len(), 2);
    for r in reps {
        assert_eq!(r["answer"], r["name"]);
        assert!(r["name"].as_str().unwrap().starts_with("nginx-deployment-"));
    }
    // 4. The ClusterIP spreads 20 requests over both replicas.
    let t4 = f(4)["tally"].as_object().unwrap();
    assert_eq!(t4.values().map(|v| v.as_u64().unwrap()).sum::<u64>(), 20);
    for r in reps {
        assert!(
            t4[r["name"].as_str().unwrap()].as_u64().unwrap() > 0,
            "{t4:?}"
        );
    }
    assert_eq!(f(4)["sep_chains"], 2);
    // 5. After a replica is replaced: a new IP, a partial sync, only current backends.
    let gone = f(5)["deleted"]["name"].as_str().unwrap();
    assert_ne!(f(5)["deleted"]["ip"], f(5)["replacement"]["ip"]);
    assert!(f(5)["sync"].as_str().unwrap().contains("partial sync"));
    let t5 = f(5)["tally"].as_object().unwrap();
    assert!(!t5.contains_key(gone));
    assert!(t5.contains_key(f(5)["replacement"]["name"].as_str().unwrap()));
    // 6. Two nodes on two subnets behind a router, pod CIDRs carved from the cluster
    // range, a VXLAN overlay both ways (route via the peer's VTEP on flannel.1, its MAC as
    // a neighbour, an FDB entry to its address; the router knows no pod route), a pod on
    // node-2 reached by its IP and seeing the client's own, and the Service balancing
    // over both nodes.
    assert_eq!(f(6)["nodes"][0]["pod_cidr"], "10.244.1.0/24");
    assert_eq!(f(6)["nodes"][1]["pod_cidr"], "10.244.2.0/24");
    assert_eq!(f(6)["nodes"][1]["ip"], "192.168.78.2");
    assert_eq!(f(6)["routes_node_1"][0]["dst"], "10.244.2.0/24");
    assert_eq!(f(6)["routes_node_1"][0]["via"], "10.244.2.0");
    assert_eq!(f(6)["routes_node_2"][0]["dst"], "10.244.1.0/24");
    let ov = &f(6)["overlay"];
    assert!(
        ov["device"].as_str().unwrap().contains("vxlan id 1"),
        "{ov}"
    );
    assert!(
        ov["route"]
            .as_str()
            .unwrap()
            .contains("10.244.2.0/24 via 10.244.2.0 dev flannel.1"),
        "{ov}"
    );
    assert!(
        ov["neighbours"]
            .as_str()
            .unwrap()
            .contains("10.244.2.0 lladdr"),
        "{ov}"
    );
    assert!(
        ov["fdb"].as_str().unwrap().contains("dst 192.168.78.2"),
        "{ov}"
    );
    assert_eq!(ov["router_has_pod_routes"], false);
    let far = &f(6)["cross_node_pod"];
    assert!(far["ip"].as_str().unwrap().starts_with("10.244.2."));
    assert_eq!(far["answer"], far["name"]);
    assert!(
        far["sees_client_as"]
            .as_str()
            .unwrap()
            .starts_with("10.244.1."),
        "{far}"
    );
    let t6 = f(6)["tally"].as_object().unwrap();
    assert_eq!(t6.len(), 3, "three backends on two nodes: {t6:?}");
    assert!(t6[far["name"].as_str().unwrap()].as_u64().unwrap() > 0);
    // 7. Nothing left: no namespace the demo made.
    assert_eq!(f(7)["nodes_removed"], 2);
    // This run's namespaces are pwt-<pid>-…, its pins podwire-pwdemo<pid>-….
    let after: Vec<String> = netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("pwt-{pid}-")) || n.contains(&format!("pwdemo{pid}-")))
        .collect();
    assert!(after.is_empty(), "left behind: {after:?}");
}

#[test]
fn quiet_prints_one_summary_line_and_json_is_plain() {
    require_root();
    let o = Command::new(bin("podwire-demo"))
        .arg("--quiet")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<_> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(lines[0].starts_with("demo: all 7 steps passed"), "{out}");
    assert!(!out.contains('\x1b'), "no colour when piped");
    let o = Command::new(bin("podwire-demo"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn on_host_mode_runs_in_the_callers_namespace_and_restores_it() {
    // "The host" here is a throwaway namespace the demo is started in: the operator's
    // mode is exercised without touching this machine's network.
    let host = Ns::new("demo-host");
    let before = host.ok("sh", &["-c", "ip -o link; ip route; iptables-save -t nat | grep -v '^#'; cat /proc/sys/net/ipv4/ip_forward"]);
    let o = host.run(
        bin("podwire-demo").to_str().unwrap(),
        &["--on-host", "--json"],
    );
    let s: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    assert!(
        o.status.success() && s["ok"] == true,
        "{s:#}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(s["steps"].as_array().unwrap().len(), 7);
    let after = host.ok("sh", &["-c", "ip -o link; ip route; iptables-save -t nat | grep -v '^#'; cat /proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(before, after, "the namespace was not restored");
    // A namespace that already has a cni0 bridge is refused, and left as it was.
    host.ok("ip", &["link", "add", "cni0", "type", "bridge"]);
    let o = host.run(
        bin("podwire-demo").to_str().unwrap(),
        &["--on-host", "--json"],
    );
    assert!(!o.status.success());
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(s["error"].as_str().unwrap().contains("cni0"), "{s:#}");
    assert!(host.links().contains(&"cni0".to_string()));
}
