//! `runtime-shim routes --backend vxlan` across three throwaway "machines": node-1 on
//! 10.0.1.0/24, a router, node-2 on 10.0.2.0/24. Pods on each node are wired by
//! runtime-shim with ipMasq on and the cluster range in nonMasqueradeCIDRs.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::process::Output;

use podwire_testkit::http;
use podwire_testkit::*;
use serde_json::{Value, json};

const CLUSTER: &str = "10.244.0.0/16";

struct Cluster {
    two: TwoNodes,
    dir: TempDir,
}

fn node_conf(i: u8) -> Value {
    json!({
        "bridge": "pwbr0", "isDefaultGateway": true, "ipMasq": true,
        "nonMasqueradeCIDRs": [CLUSTER], "mtu": 1450,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.244.{i}.0/24")}]]}
    })
}

/// node-1 and node-2 on two subnets joined by a router; default routes via it.
fn cluster(tag: &str) -> Cluster {
    Cluster {
        two: TwoNodes::new(tag, true, node_conf),
        dir: TempDir::new(tag),
    }
}

impl Cluster {
    fn nodes_file(&self, which: &[u8]) -> std::path::PathBuf {
        self.two.nodes_file(self.dir.path(), which)
    }

    fn routes(&self, k: u8, nodes: &Path, extra: &[&str]) -> Output {
        self.two.routes(k, nodes, CLUSTER, extra)
    }

    fn node(&self, k: u8) -> &Ns {
        self.two.node(k)
    }

    /// What the overlay is in node `k`'s kernel: routes, neighbours, FDB, the device.
    fn state(&self, k: u8) -> String {
        let n = self.node(k);
        [
            n.ok("ip", &["route"]),
            n.ok("ip", &["neigh", "show", "dev", "flannel.1"]),
            n.ok("bridge", &["fdb", "show", "dev", "flannel.1"]),
            n.ok("ip", &["-d", "addr", "show", "dev", "flannel.1"]),
        ]
        .join("\n")
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_of(o: &Output) -> Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn ip_of(result: &Value) -> String {
    let a = result["ips"][0]["address"].as_str().unwrap();
    a.split('/').next().unwrap().to_string()
}

#[test]
fn vxlan_joins_pods_of_nodes_behind_a_router_and_reconciles() {
    require_tool("busybox");
    require_tool("bridge");
    let mut c = cluster("ovl");
    let both = c.nodes_file(&[1, 2]);

    // host-gw cannot work here, and says so before changing anything.
    let before = c.node(1).ok("ip", &["route"]);
    let o = c.routes(1, &both, &[]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("10.0.2.1 is not on a subnet directly connected to this node")
            && e.contains("use --backend vxlan"),
        "{e}"
    );
    assert_eq!(c.node(1).ok("ip", &["route"]), before);

    // vxlan on both nodes.
    for k in [1, 2] {
        let out = json_of(&c.routes(k, &both, &["--backend", "vxlan"]));
        assert_eq!(out["backend"], "vxlan");
        assert!(!out["changed"].as_array().unwrap().is_empty());
        let ann = &out["annotations"];
        let data: Value = serde_json::from_str(
            ann["flannel.alpha.coreos.com/backend-data"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(data["VNI"], 1);
        assert_eq!(data["VtepMAC"], out["vxlan"]["me"]["mac"]);
        assert_eq!(
            ann["flannel.alpha.coreos.com/public-ip"],
            format!("10.0.{k}.1")
        );
    }
    let dev = c.node(1).ok("ip", &["-d", "link", "show", "flannel.1"]);
    for want in [
        "vxlan id 1",
        "local 10.0.1.1",
        "dstport 8472",
        "nolearning",
        "mtu 1450",
    ] {
        assert!(dev.contains(want), "{want}: {dev}");
    }
    let s1 = c.state(1);
    assert!(
        s1.contains("10.244.2.0/24 via 10.244.2.0 dev flannel.1 proto 77 onlink"),
        "{s1}"
    );
    assert!(
        s1.contains("10.244.2.0 lladdr") && s1.contains("PERMANENT"),
        "{s1}"
    );
    assert!(s1.contains("dst 10.0.2.1 self permanent"), "{s1}");
    assert!(s1.contains("inet 10.244.1.0/32"), "{s1}");

    // Pods on each node; HTTP both ways, each server seeing the client pod's own address.
    let p1 = c.two.nodes[0].node.add_pod("a");
    let p2 = c.two.nodes[1].node.add_pod("b");
    let r1 = json_of(&c.two.nodes[0].setup(&c.two.nodes[0].node.pod(p1).path(), "pod-a"));
    let r2 = json_of(&c.two.nodes[1].setup(&c.two.nodes[1].node.pod(p2).path(), "pod-b"));
    let (a, b) = (ip_of(&r1), ip_of(&r2));
    let (pa, pb) = (c.two.nodes[0].node.pod(p1), c.two.nodes[1].node.pod(p2));
    let _sa = http::serve_whoami(pa, &c.dir.path().join("a"), 8080);
    let _sb = http::serve_whoami(pb, &c.dir.path().join("b"), 8080);
    assert_eq!(
        http::whoami(pa, &b, 8080),
        a,
        "node-2's pod sees pod a itself"
    );
    assert_eq!(
        http::whoami(pb, &a, 8080),
        b,
        "node-1's pod sees pod b itself"
    );
    // The packets crossed the router as VXLAN: the router has no route to pod subnets.
    let router = c.two.router.as_ref().unwrap();
    assert!(!router.ok("ip", &["route"]).contains("10.244."));

    // A second run changes nothing.
    let s1 = c.state(1);
    let again = json_of(&c.routes(1, &both, &["--backend", "vxlan"]));
    assert_eq!(again["changed"], json!([]), "{again}");
    assert_eq!(c.state(1), s1);

    // node-2 leaves the list: its route, neighbour and FDB entry go from node-1.
    let alone = c.nodes_file(&[1]);
    let out = json_of(&c.routes(1, &alone, &["--backend", "vxlan"]));
    assert_eq!(out["changed"].as_array().unwrap().len(), 3, "{out}");
    let s = c.state(1);
    assert!(!s.contains("10.244.2.0"), "{s}");
    assert!(!s.contains("10.0.2.1"), "{s}");
    // ... and comes back.
    json_of(&c.routes(1, &both, &["--backend", "vxlan"]));
    assert_eq!(c.state(1), s1);
    assert_eq!(http::whoami(pa, &b, 8080), a);
}

#[test]
fn a_device_podwire_did_not_make_is_never_touched() {
    require_tool("bridge");
    let c = cluster("ovf");
    let both = c.nodes_file(&[1, 2]);
    let n = c.node(2);
    n.ok(
        "ip",
        &[
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            "1",
            "dstport",
            "8472",
            "local",
            "10.0.2.1",
            "nolearning",
        ],
    );
    let before = [n.ok("ip", &["-d", "link"]), n.ok("ip", &["route"])];
    let o = c.routes(2, &both, &["--backend", "vxlan"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("flannel.1 (vxlan device without podwire's alias"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        [n.ok("ip", &["-d", "link"]), n.ok("ip", &["route"])],
        before
    );
    // Bad annotations are refused before anything changes, naming the node and field.
    let bad = c.dir.path().join("bad.json");
    let text = std::fs::read_to_string(&both).unwrap().replacen(
        r#""name":"node-1""#,
        r#""name":"node-1","annotations":{"flannel.alpha.coreos.com/backend-data":"{\"VNI\":1,\"VtepMAC\":\"ff:ff:ff:ff:ff:ff\"}"}"#,
        1,
    );
    std::fs::write(&bad, text).unwrap();
    let o = c.routes(1, &bad, &["--backend", "vxlan"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(
            "node node-1: metadata.annotations[flannel.alpha.coreos.com/backend-data].VtepMAC"
        ),
        "{}",
        stderr(&o)
    );
    assert!(!c.node(1).links().iter().any(|l| l == "flannel.1"));
}
