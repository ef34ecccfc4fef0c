//! runtime-shim as a CNI plugin, exercised the way libcni runs it (CNI_* environment,
//! netconf on stdin, no arguments), against the real kernel inside a throwaway node.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use podwire_testkit::*;
use serde_json::{Value, json};

struct Cni {
    node: Node,
    dir: TempDir,
    conf: Value,
}

struct Reply {
    out: Output,
    json: Value,
}

impl Reply {
    fn ok(&self) -> bool {
        self.out.status.success()
    }
    fn code(&self) -> u64 {
        self.json["code"].as_u64().unwrap_or(0)
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\nstdout: {}\nstderr: {}",
            self.out.status,
            String::from_utf8_lossy(&self.out.stdout),
            String::from_utf8_lossy(&self.out.stderr)
        )
    }
}

impl Cni {
    fn new(tag: &str) -> Cni {
        let node = Node::new(tag);
        let dir = TempDir::new(tag);
        let conf = json!({
            "cniVersion": "1.0.0", "name": format!("pw{tag}"), "type": "runtime-shim",
            "bridge": "pwbr0", "isDefaultGateway": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.81.0.0/24"}]],
                     "dataDir": dir.path().join("ipam")}
        });
        Cni { node, dir, conf }
    }

    /// Run the plugin in the node namespace with exactly the CNI environment.
    fn call(&self, env: &[(&str, &str)], stdin: &[u8]) -> Reply {
        let mut c = shim_in(&self.node.node);
        c.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_PATH", bin("runtime-shim").parent().unwrap());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The plugin may exit before reading stdin (bad environment): ignore EPIPE.
        let _ = child.stdin.take().unwrap().write_all(stdin);
        let out = child.wait_with_output().unwrap();
        let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        Reply { out, json }
    }

    fn cmd(&self, command: &str, id: &str, netns: &Path, ifname: &str, conf: &Value) -> Reply {
        self.cmd_args(command, id, netns, ifname, conf, "")
    }

    /// A command with `extra` appended to the `CNI_ARGS` containerd and podman send.
    fn cmd_args(
        &self,
        command: &str,
        id: &str,
        netns: &Path,
        ifname: &str,
        conf: &Value,
        extra: &str,
    ) -> Reply {
        let ns = netns.to_str().unwrap();
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=x;\
             K8S_POD_INFRA_CONTAINER_ID={id};K8S_POD_UID=0c5b2b4e{extra}"
        );
        self.call(
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", ns),
                ("CNI_IFNAME", ifname),
                ("CNI_ARGS", &args),
            ],
            conf.to_string().as_bytes(),
        )
    }

    /// The network's nftables table, as `nft` lists it.
    fn table(&self) -> Option<String> {
        let name = format!("podwire-{}", self.conf["name"].as_str().unwrap());
        let o = self.node.node.run("nft", &["list", "table", "inet", &name]);
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).to_string())
    }

    fn ipam_records(&self) -> Vec<String> {
        let d = self
            .dir
            .path()
            .join("ipam")
            .join(self.conf["name"].as_str().unwrap());
        let mut v: Vec<String> = std::fs::read_dir(d)
            .map(|r| {
                r.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn ports(&self) -> usize {
        let r = self
            .node
            .node
            .run("ip", &["-o", "link", "show", "master", "pwbr0"]);
        String::from_utf8_lossy(&r.stdout).lines().count()
    }
}

fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

#[test]
fn add_check_del_as_libcni_calls_them() {
    require_root();
    let mut t = Cni::new("cni");
    let p = t.node.add_pod("cni-pod");
    let pod: PathBuf = t.node.pod(p).path();
    let conf = t.conf.clone();

    let r = t.call(
        &[("CNI_COMMAND", "VERSION"), ("CNI_NETNS", "dummy")],
        br#"{"cniVersion":"1.0.0"}"#,
    );
    assert!(r.ok(), "{r:?}");
    assert!(
        r.json["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("1.1.0"))
    );

    let add = t.cmd("ADD", "ctr1", &pod, "eth0", &conf);
    assert!(add.ok(), "{add:?}");
    let res = &add.json;
    assert_eq!(res["cniVersion"], "1.0.0");
    assert_eq!(res["interfaces"][2]["name"], "eth0");
    assert_eq!(res["interfaces"][2]["sandbox"], pod.to_str().unwrap());
    let addr = res["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(
        addr.starts_with("10.81.0.") && addr.ends_with("/24"),
        "{addr}"
    );
    assert_eq!(res["ips"][0]["gateway"], "10.81.0.1");
    assert_eq!(res["ips"][0]["interface"], 2);
    assert_eq!(res["routes"][0]["dst"], "0.0.0.0/0");
    let shown = t
        .node
        .pod(p)
        .ok("ip", &["-o", "-4", "addr", "show", "eth0"]);
    assert!(shown.contains(&addr), "{shown}");

    // CHECK with the result as prevResult passes; after breaking the pod it fails (103).
    let chk = t.cmd("CHECK", "ctr1", &pod, "eth0", &with_prev(&conf, res));
    assert!(chk.ok(), "{chk:?}");
    let lying = json!({"cniVersion":"1.0.0","ips":[{"address":"10.81.0.99/24"}]});
    let chk = t.cmd("CHECK", "ctr1", &pod, "eth0", &with_prev(&conf, &lying));
    assert!(!chk.ok() && chk.code() == 103, "{chk:?}");
    t.node.pod(p).ok("ip", &["addr", "flush", "dev", "eth0"]);
    let chk = t.cmd("CHECK", "ctr1", &pod, "eth0", &with_prev(&conf, res));
    assert!(!chk.ok() && chk.code() == 103, "{chk:?}");
    assert!(
        chk.json["details"]
            .as_str()
            .unwrap()
            .contains("lacks address"),
        "{chk:?}"
    );

    // A second ADD of the same attachment is refused and changes nothing.
    let again = t.cmd("ADD", "ctr1", &pod, "eth0", &conf);
    assert!(!again.ok() && again.code() == 102, "{again:?}");
    assert_eq!(t.ipam_records().len(), 1);

    // Chaining: a second interface, added after the first plugin's result.
    let add2 = t.cmd("ADD", "ctr1", &pod, "eth1", &with_prev(&conf, res));
    assert!(add2.ok(), "{add2:?}");
    assert_eq!(add2.json["interfaces"].as_array().unwrap().len(), 6);
    assert_eq!(add2.json["ips"][0]["address"], addr.as_str());
    assert_eq!(add2.json["ips"][1]["interface"], 5);

    // DEL as containerd sends it: with netns and prevResult, then again with neither.
    let del = t.cmd("DEL", "ctr1", &pod, "eth1", &with_prev(&conf, &add2.json));
    assert!(del.ok(), "{del:?}");
    let del = t.cmd("DEL", "ctr1", &pod, "eth0", &with_prev(&conf, res));
    assert!(del.ok(), "{del:?}");
    for ifname in ["eth0", "eth1"] {
        let del = t.cmd("DEL", "ctr1", Path::new(""), ifname, &conf);
        assert!(del.ok(), "{del:?}");
        assert!(del.out.stdout.is_empty());
    }
    // DEL after the namespace is gone.
    let gone = PathBuf::from("/run/netns/pwt-gone-ns");
    let del = t.cmd("DEL", "ctr1", &gone, "eth0", &conf);
    assert!(del.ok(), "{del:?}");
    assert_eq!(t.ports(), 0);
    assert!(t.ipam_records().is_empty());
    t.node.pods.clear();
}

#[test]
fn old_spec_versions_get_their_result_shape() {
    require_root();
    let mut t = Cni::new("cniold");
    let p = t.node.add_pod("cniold-pod");
    let pod = t.node.pod(p).path();
    let mut conf = t.conf.clone();
    conf["cniVersion"] = json!("0.3.1");
    let add = t.cmd("ADD", "old1", &pod, "eth0", &conf);
    assert!(add.ok(), "{add:?}");
    assert_eq!(add.json["cniVersion"], "0.3.1");
    assert_eq!(add.json["ips"][0]["version"], "4");
    assert!(t.cmd("DEL", "old1", &pod, "eth0", &conf).ok());
}

#[test]
fn bad_input_gets_cni_error_json_and_changes_nothing() {
    require_root();
    let mut t = Cni::new("cnibad");
    let p = t.node.add_pod("cnibad-pod");
    let pod = t.node.pod(p).path();
    let conf = t.conf.clone();
    // (environment overrides, stdin, expected code, expected text)
    type Case<'a> = (Vec<(&'a str, String)>, Vec<u8>, u64, &'a str);
    let cases: Vec<Case> = vec![
        (vec![], b"{\"cniVersion\": ".to_vec(), 6, "cannot parse"),
        (vec![], br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.0.0.0/99"}}"#.to_vec(), 7, "ipam.subnet"),
        (vec![], br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"dhcp"}}"#.to_vec(), 7, "ipam.type"),
        (vec![], br#"{"cniVersion":"0.1.0","name":"n","ipam":{"type":"host-local","subnet":"10.0.0.0/24"}}"#.to_vec(), 1, "incompatible CNI version"),
        (vec![("CNI_CONTAINERID", String::new())], conf.to_string().into_bytes(), 4, "CNI_CONTAINERID"),
        (vec![("CNI_IFNAME", "a-much-too-long-ifname".into())], conf.to_string().into_bytes(), 4, "CNI_IFNAME"),
        (vec![("CNI_NETNS", "/run/netns/pwt-missing".into())], conf.to_string().into_bytes(), 3, "does not exist"),
        (vec![("CNI_COMMAND", "FROB".into())], conf.to_string().into_bytes(), 4, "CNI_COMMAND"),
    ];
    for (over, stdin, code, want) in cases {
        let mut env: Vec<(&str, String)> = vec![
            ("CNI_COMMAND", "ADD".into()),
            ("CNI_CONTAINERID", "bad1".into()),
            ("CNI_NETNS", pod.display().to_string()),
            ("CNI_IFNAME", "eth0".into()),
        ];
        for (k, v) in over {
            env.retain(|(x, _)| *x != k);
            env.push((k, v));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = t.call(&env, &stdin);
        assert!(!r.ok(), "{r:?}");
        assert_eq!(r.code(), code, "{want}: {r:?}");
        let msg = format!("{} {}", r.json["msg"], r.json["details"]);
        assert!(msg.contains(want), "{want}: {r:?}");
        assert!(r.json["cniVersion"].is_string());
    }
    // Nothing was created: no bridge, no reservation.
    assert!(!t.node.node.links().iter().any(|l| l == "pwbr0"));
    assert!(t.ipam_records().is_empty());
}

#[test]
fn status_and_gc() {
    require_root();
    let mut t = Cni::new("cnigc");
    let conf = t.conf.clone();
    let st = t.call(&[("CNI_COMMAND", "STATUS")], conf.to_string().as_bytes());
    assert!(st.ok(), "{st:?}");
    let (a, b) = (t.node.add_pod("gc-a"), t.node.add_pod("gc-b"));
    let (pa, pb) = (t.node.pod(a).path(), t.node.pod(b).path());
    assert!(t.cmd("ADD", "keep", &pa, "eth0", &conf).ok());
    assert!(t.cmd("ADD", "leak", &pb, "eth0", &conf).ok());
    assert_eq!(t.ports(), 2);
    assert_eq!(t.ipam_records().len(), 2);
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let r = t.call(&[("CNI_COMMAND", "GC")], gc.to_string().as_bytes());
    assert!(r.ok(), "{r:?}");
    assert_eq!(t.ports(), 1);
    assert_eq!(t.ipam_records().len(), 1);
    let chk = t.cmd("CHECK", "keep", &pa, "eth0", &conf);
    assert!(chk.ok(), "the valid attachment survives GC: {chk:?}");
    // GC without the list is refused.
    let r = t.call(&[("CNI_COMMAND", "GC")], conf.to_string().as_bytes());
    assert_eq!(r.code(), 7, "{r:?}");
    // STATUS on a network whose dataDir cannot exist: not available (50).
    let mut broken = conf.clone();
    broken["ipam"]["dataDir"] = json!("/proc/pwt-nope");
    let st = t.call(&[("CNI_COMMAND", "STATUS")], broken.to_string().as_bytes());
    assert_eq!(st.code(), 50, "{st:?}");
    assert!(t.cmd("DEL", "keep", &pa, "eth0", &conf).ok());
}

fn mac_of(ns: &Ns, dev: &str) -> String {
    let l = ns.ok("ip", &["-o", "link", "show", dev]);
    l.split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn static_ip_and_mac_in_every_libcni_form() {
    require_root();
    let mut t = Cni::new("cnistatic");
    let conf = t.conf.clone();
    let pods: Vec<PathBuf> = (0..4)
        .map(|i| {
            let p = t.node.add_pod(&format!("st{i}"));
            t.node.pod(p).path()
        })
        .collect();
    let addr = |r: &Reply| {
        r.json["ips"][0]["address"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let pod_mac = |r: &Reply| {
        r.json["interfaces"][2]["mac"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };

    // CNI_ARGS, as podman sends `--ip` and `--mac` (unknown keys around them ignored).
    let a = t.cmd_args(
        "ADD",
        "s0",
        &pods[0],
        "eth0",
        &conf,
        ";IP=10.81.0.50;MAC=02:aa:bb:cc:dd:01",
    );
    assert!(a.ok(), "{a:?}");
    assert_eq!(addr(&a), "10.81.0.50/24");
    assert_eq!(pod_mac(&a), "02:aa:bb:cc:dd:01");
    assert_eq!(mac_of(t.node.pod(0), "eth0"), "02:aa:bb:cc:dd:01");
    assert!(
        t.node
            .pod(0)
            .ok("ip", &["-o", "addr"])
            .contains("10.81.0.50/24")
    );

    // The `ips` and `mac` capabilities (runtimeConfig), as libcni passes them.
    let mut rc = conf.clone();
    rc["capabilities"] = json!({"ips": true, "mac": true});
    rc["runtimeConfig"] = json!({"ips": ["10.81.0.51/24"], "mac": "02:aa:bb:cc:dd:02"});
    let b = t.cmd("ADD", "s1", &pods[1], "eth0", &rc);
    assert!(b.ok(), "{b:?}");
    assert_eq!(addr(&b), "10.81.0.51/24");
    assert_eq!(mac_of(t.node.pod(1), "eth0"), "02:aa:bb:cc:dd:02");

    // args.cni, and runtimeConfig's MAC winning over CNI_ARGS'.
    let mut ac = conf.clone();
    ac["args"] = json!({"cni": {"ips": ["10.81.0.52"]}});
    ac["runtimeConfig"] = json!({"mac": "02:aa:bb:cc:dd:03"});
    let c = t.cmd_args("ADD", "s2", &pods[2], "eth0", &ac, ";MAC=02:aa:bb:cc:dd:09");
    assert!(c.ok(), "{c:?}");
    assert_eq!(addr(&c), "10.81.0.52/24");
    assert_eq!(mac_of(t.node.pod(2), "eth0"), "02:aa:bb:cc:dd:03");
    // CHECK of a static attachment passes.
    let chk = t.cmd("CHECK", "s2", &pods[2], "eth0", &with_prev(&ac, &c.json));
    assert!(chk.ok(), "{chk:?}");

    // Refused, each with a clear error naming where the value came from, and nothing
    // changed: the address of another pod (104), outside every range, the gateway, two in
    // one range set, a bad MAC, a malformed CNI_ARGS.
    let before = (t.ports(), t.ipam_records());
    let mut two = conf.clone();
    two["runtimeConfig"] = json!({"ips": ["10.81.0.60/24", "10.81.0.61/24"]});
    let mut bad_rc = conf.clone();
    bad_rc["runtimeConfig"] = json!({"ips": ["10.81.0.70/99"]});
    let cases: Vec<(&Value, &str, u64, &str)> = vec![
        (
            &conf,
            ";IP=10.81.0.50",
            104,
            "CNI_ARGS IP: address 10.81.0.50 is already in use",
        ),
        (
            &conf,
            ";IP=10.99.0.1",
            7,
            "CNI_ARGS IP: 10.99.0.1 is in no range",
        ),
        (&conf, ";IP=10.81.0.1", 7, "is the gateway"),
        (
            &conf,
            ";IP=10.81.0.300",
            7,
            "CNI_ARGS IP: \"10.81.0.300\" is not an IP address",
        ),
        (
            &two,
            "",
            7,
            "runtimeConfig.ips[1]: 10.81.0.61 and 10.81.0.60 are in the same range set",
        ),
        (&bad_rc, "", 7, "runtimeConfig.ips[0]"),
        (
            &conf,
            ";MAC=01:00:5e:00:00:01",
            7,
            "CNI_ARGS MAC: \"01:00:5e:00:00:01\" is a multicast address",
        ),
        (&conf, ";MAC=zz", 7, "CNI_ARGS MAC"),
        (&conf, ";garbage", 4, "CNI_ARGS"),
    ];
    for (c, extra, code, want) in cases {
        let r = t.cmd_args("ADD", "s3", &pods[3], "eth0", c, extra);
        assert!(!r.ok(), "{extra}: {r:?}");
        assert_eq!(r.code(), code, "{want}: {r:?}");
        let text = |k: &str| r.json[k].as_str().unwrap_or("").to_string();
        let msg = format!("{} {}", text("msg"), text("details"));
        assert!(msg.contains(want), "{want}: {r:?}");
        assert_eq!(
            (t.ports(), t.ipam_records()),
            before,
            "{want}: changed the node"
        );
        assert_eq!(t.node.pod(3).links(), ["lo"], "{want}: changed the pod");
    }

    // DEL then ADD with the same IP= (podman's `network reload`) keeps the address.
    assert!(t.cmd("DEL", "s0", &pods[0], "eth0", &conf).ok());
    let again = t.cmd_args("ADD", "s0", &pods[0], "eth0", &conf, ";IP=10.81.0.50");
    assert!(again.ok(), "{again:?}");
    assert_eq!(addr(&again), "10.81.0.50/24");
    for (i, id) in ["s0", "s1", "s2"].iter().enumerate() {
        assert!(t.cmd("DEL", id, &pods[i], "eth0", &conf).ok());
    }
    assert!(t.ipam_records().is_empty());
}

#[test]
fn masquerade_heals_after_unmasq_a_flush_and_a_firewall_reload() {
    require_root();
    require_tool("nft");
    let mut t = Cni::new("cniheal");
    let mut conf = t.conf.clone();
    conf["ipMasq"] = json!(true);
    // Six IPv6 ranges in one set and an IPv4 one: the old bridge-alias marker overflowed.
    let v6: Vec<Value> = (1..=6)
        .map(|i| json!({"subnet": format!("fd00:81:{i}::/64")}))
        .collect();
    conf["ipam"]["ranges"] = json!([[{"subnet": "10.81.0.0/24"}], v6]);
    let pods: Vec<PathBuf> = (0..4)
        .map(|i| {
            let p = t.node.add_pod(&format!("h{i}"));
            t.node.pod(p).path()
        })
        .collect();
    let add = t.cmd("ADD", "h0", &pods[0], "eth0", &conf);
    assert!(add.ok(), "{add:?}");
    let table = t.table().expect("the network's table after the first ADD");
    assert_eq!(table.matches(" masquerade comment").count(), 7, "{table}");
    let check = || {
        t.cmd(
            "CHECK",
            "h0",
            &pods[0],
            "eth0",
            &with_prev(&conf, &add.json),
        )
    };
    assert!(check().ok());
    let config = t.dir.path().join("net.json");
    std::fs::write(&config, conf.to_string()).unwrap();
    let breakers: [(&str, &[&str]); 3] = [
        ("runtime-shim unmasq", &["unmasq", "--config"]),
        ("nft flush ruleset", &["nft", "flush", "ruleset"]),
        ("a firewall reload", &["nft", "delete", "table", "inet"]),
    ];
    for (i, (what, argv)) in breakers.iter().enumerate() {
        let o = match *what {
            "runtime-shim unmasq" => shim_in(&t.node.node)
                .args(*argv)
                .arg(&config)
                .output()
                .unwrap(),
            "a firewall reload" => {
                let name = format!("podwire-{}", conf["name"].as_str().unwrap());
                let mut a: Vec<&str> = argv.to_vec();
                a.push(&name);
                t.node.node.run(a[0], &a[1..])
            }
            _ => t.node.node.run(argv[0], &argv[1..]),
        };
        assert!(o.status.success(), "{what}: {o:?}");
        assert_eq!(t.table(), None, "{what} removed it");
        let chk = check();
        assert!(
            !chk.ok() && chk.code() == 103,
            "{what}: CHECK reports it: {chk:?}"
        );
        // The next pod's ADD puts it back, exactly.
        let id = format!("h{}", i + 1);
        assert!(t.cmd("ADD", &id, &pods[i + 1], "eth0", &conf).ok());
        assert_eq!(t.table().as_deref(), Some(table.as_str()), "after {what}");
        assert!(check().ok(), "after {what}");
    }
    // iptables' nat table is not where the masquerade lives: flushing it changes nothing.
    t.node.node.ok("iptables", &["-t", "nat", "-F"]);
    assert!(check().ok());
    let tname = format!("podwire-{}", conf["name"].as_str().unwrap());
    // One rule deleted from the table: CHECK notices, the next ADD rewrites the table.
    let listed = t
        .node
        .node
        .ok("nft", &["-a", "list", "table", "inet", &tname]);
    let handle = listed
        .lines()
        .find(|l| l.contains(" masquerade comment"))
        .and_then(|l| l.rsplit("# handle ").next())
        .unwrap()
        .trim()
        .to_string();
    t.node.node.ok(
        "nft",
        &[
            "delete",
            "rule",
            "inet",
            &tname,
            "postrouting",
            "handle",
            &handle,
        ],
    );
    assert_eq!(check().code(), 103);
    let p4 = t.node.add_pod("h4");
    let p4 = t.node.pod(p4).path();
    assert!(t.cmd("ADD", "h4", &p4, "eth0", &conf).ok());
    assert_eq!(
        t.table().as_deref(),
        Some(table.as_str()),
        "after a lost rule"
    );
    assert!(t.cmd("DEL", "h4", &p4, "eth0", &conf).ok());
    // A changed config (another nonMasqueradeCIDR) rewrites it on the next ADD.
    let mut changed = conf.clone();
    changed["nonMasqueradeCIDRs"] = json!(["10.0.0.0/8"]);
    let p5 = t.node.add_pod("h5");
    let p5 = t.node.pod(p5).path();
    assert!(t.cmd("ADD", "h5", &p5, "eth0", &changed).ok());
    let now = t.table().unwrap();
    assert!(now.contains("ip daddr 10.0.0.0/8 return"), "{now}");
    assert!(t.cmd("DEL", "h5", &p5, "eth0", &changed).ok());
    assert!(t.cmd("ADD", "h5", &p5, "eth0", &conf).ok());
    assert_eq!(t.table().as_deref(), Some(table.as_str()));
    assert!(t.cmd("DEL", "h5", &p5, "eth0", &conf).ok());
    // The last pod's DEL takes the table with it.
    for (i, p) in pods.iter().enumerate() {
        assert!(t.cmd("DEL", &format!("h{i}"), p, "eth0", &conf).ok());
        assert_eq!(t.table().is_some(), i < 3, "after DEL {i}");
    }
}

#[test]
fn a_table_of_podwires_name_that_is_not_podwires_is_never_touched() {
    require_root();
    require_tool("nft");
    let mut t = Cni::new("cnifrn");
    let mut conf = t.conf.clone();
    conf["ipMasq"] = json!(true);
    let tname = format!("podwire-{}", conf["name"].as_str().unwrap());
    t.node.node.ok("nft", &["add", "table", "inet", &tname]);
    t.node.node.ok(
        "nft",
        &[
            "add",
            "chain",
            "inet",
            &tname,
            "mine",
            "{ type filter hook input priority 0; }",
        ],
    );
    let before = t.node.node.ok("nft", &["list", "ruleset"]);
    let p = t.node.add_pod("f");
    let pod = t.node.pod(p).path();
    let r = t.cmd("ADD", "f1", &pod, "eth0", &conf);
    assert!(!r.ok(), "{r:?}");
    let details = r.json["details"].as_str().unwrap_or("");
    assert!(
        details.contains(&format!("{tname} exists but was not made by podwire")),
        "{r:?}"
    );
    assert_eq!(t.node.node.ok("nft", &["list", "ruleset"]), before);
    assert_eq!(
        (t.ports(), t.ipam_records().len()),
        (0, 0),
        "the ADD was undone"
    );
    assert_eq!(t.node.pod(p).links(), ["lo"]);
    // unmasq and GC leave it alone too.
    let config = t.dir.path().join("net.json");
    std::fs::write(&config, conf.to_string()).unwrap();
    let o = shim_in(&t.node.node)
        .args(["unmasq", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert_eq!(t.node.node.ok("nft", &["list", "ruleset"]), before);
}

#[test]
fn gc_with_no_pods_left_removes_the_networks_table() {
    require_root();
    require_tool("nft");
    let mut t = Cni::new("cnigcm");
    let mut conf = t.conf.clone();
    conf["ipMasq"] = json!(true);
    let (a, b) = (t.node.add_pod("g-a"), t.node.add_pod("g-b"));
    let (pa, pb) = (t.node.pod(a).path(), t.node.pod(b).path());
    assert!(t.cmd("ADD", "ga", &pa, "eth0", &conf).ok());
    assert!(t.cmd("ADD", "gb", &pb, "eth0", &conf).ok());
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ga", "ifname": "eth0"}]);
    assert!(
        t.call(&[("CNI_COMMAND", "GC")], gc.to_string().as_bytes())
            .ok()
    );
    assert!(t.table().is_some(), "a pod is left: the table stays");
    gc["cni.dev/valid-attachments"] = json!([]);
    let r = t.call(&[("CNI_COMMAND", "GC")], gc.to_string().as_bytes());
    assert!(r.ok(), "{r:?}");
    assert_eq!((t.ports(), t.ipam_records().len()), (0, 0));
    let name = conf["name"].as_str().unwrap();
    let ruleset = t.node.node.ok("nft", &["list", "ruleset"]);
    assert!(!ruleset.contains(name), "{ruleset}");
    let ipt = t.node.node.ok("iptables-save", &[]);
    assert!(!ipt.contains(name), "{ipt}");
}

#[test]
fn a_pod_on_two_networks_gets_one_default_route_and_check_passes() {
    require_root();
    let mut t = Cni::new("cnimulti");
    let first = t.conf.clone();
    // The second network as podman writes one: a default route from ipam.routes.
    let mut second = first.clone();
    second["name"] = json!("pwcnimulti2");
    second["bridge"] = json!("pwbr1");
    second["isDefaultGateway"] = json!(false);
    second["isGateway"] = json!(true);
    second["ipam"]["ranges"] = json!([[{"subnet": "10.82.0.0/24"}]]);
    second["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}, {"dst": "192.0.2.0/24"}]);
    let p = t.node.add_pod("multi");
    let pod = t.node.pod(p).path();
    let a = t.cmd("ADD", "m1", &pod, "eth0", &first);
    assert!(a.ok(), "{a:?}");
    let b = t.cmd("ADD", "m1", &pod, "eth1", &second);
    assert!(b.ok(), "{b:?}");
    assert_eq!(
        a.json["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.81.0.1"}])
    );
    // The second network reports only what it installed: its other route, no default.
    assert_eq!(
        b.json["routes"],
        json!([{"dst": "192.0.2.0/24", "gw": "10.82.0.1"}])
    );
    let routes = t.node.pod(p).ok("ip", &["route"]);
    assert_eq!(routes.matches("default").count(), 1, "{routes}");
    assert!(
        routes.contains("default via 10.81.0.1 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("192.0.2.0/24 via 10.82.0.1 dev eth1"),
        "{routes}"
    );
    for (conf, ifname, r) in [(&first, "eth0", &a), (&second, "eth1", &b)] {
        let chk = t.cmd("CHECK", "m1", &pod, ifname, &with_prev(conf, &r.json));
        assert!(chk.ok(), "CHECK right after ADD: {chk:?}");
    }
    // The first network's default route gone: CHECK of the first fails, the second's
    // still passes (it never reported one).
    t.node.pod(p).ok("ip", &["route", "del", "default"]);
    let chk = t.cmd("CHECK", "m1", &pod, "eth0", &with_prev(&first, &a.json));
    assert!(!chk.ok() && chk.code() == 103, "{chk:?}");
    assert!(
        t.cmd("CHECK", "m1", &pod, "eth1", &with_prev(&second, &b.json))
            .ok()
    );
    assert!(t.cmd("DEL", "m1", &pod, "eth1", &second).ok());
    assert!(t.cmd("DEL", "m1", &pod, "eth0", &first).ok());
    assert_eq!(t.node.pod(p).links(), ["lo"]);
}
