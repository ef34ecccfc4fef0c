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
        let ns = netns.to_str().unwrap();
        self.call(
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", ns),
                ("CNI_IFNAME", ifname),
                (
                    "CNI_ARGS",
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=x",
                ),
            ],
            conf.to_string().as_bytes(),
        )
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
