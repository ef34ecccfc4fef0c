//! End to end with containerd 1.6's CRI plugin, driven like kubelet drives it (through
//! podwire-cri), inside a throwaway node namespace: our pause image is the sandbox image
//! and runtime-shim is the CNI plugin.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::time::Duration;

use podwire_testkit::containerd::Containerd;
use podwire_testkit::oci;
use podwire_testkit::podman::build_pause_image;
use podwire_testkit::*;
use serde_json::json;

const PAUSE: &str = "localhost/podwire/pause:cri";
const BUSYBOX: &str = "localhost/pwt-busybox:cri";

#[test]
fn containerd_cri_pods_networked_by_the_cni_plugin() {
    require_root();
    let node = Node::new("cri");
    let tmp = TempDir::new("cri");
    let ipam = tmp.path().join("ipam");
    // The conflist the docs ship, with this test's bridge, subnet and IPAM dir.
    let conflist = shipped_conflist(
        "containerd.conflist",
        "pwcri",
        "pwbr2",
        "10.84.0.0/24",
        &ipam,
    );
    let mut c = Containerd::start(&node.node.path(), PAUSE, &conflist);
    let v = c.cri_ok(&["version"]);
    assert!(v["version"].as_str().unwrap().starts_with("1."), "{v}");

    c.import(&build_pause_image(tmp.path(), PAUSE));
    let rootfs = tmp.path().join("rootfs");
    oci::build_rootfs(&rootfs, &pause_bin());
    fs::write(rootfs.join("www/index.html"), "hello from cri pod a\n").unwrap();
    let bb = tmp.path().join("busybox.tar");
    oci::image_from_dir(&rootfs, BUSYBOX, &bb, r#"["/bin/sh"]"#);
    c.import(&bb);
    for img in [PAUSE, BUSYBOX] {
        assert_eq!(c.cri_ok(&["image-status", img])["present"], true, "{img}");
    }

    let logs = c.log_dir();
    let logs = logs.to_str().unwrap().to_string();
    let mut pods = Vec::new();
    for name in ["pod-a", "pod-b"] {
        let p = c.cri_ok(&["run-pod", name, "--namespace", "pwt", "--log-dir", &logs]);
        let id = p["id"].as_str().unwrap().to_string();
        c.pods.push(id.clone());
        let ip = p["ip"].as_str().unwrap().to_string();
        assert!(ip.starts_with("10.84.0."), "{name}: {p}");
        pods.push((name, id, ip));
    }
    let run_ctr = |pod: &(&str, String, String), name: &str, cmd: &[&str]| -> String {
        let mut a = vec![
            "run-container",
            &pod.1,
            "--pod-name",
            pod.0,
            "--namespace",
            "pwt",
            "--log-dir",
            &logs,
            name,
            BUSYBOX,
            "--",
        ];
        a.extend_from_slice(cmd);
        c.cri_ok(&a)["id"].as_str().unwrap().to_string()
    };
    let httpd = run_ctr(
        &pods[0],
        "httpd",
        &["/bin/httpd", "-f", "-p", "80", "-h", "/www"],
    );
    let client = run_ctr(&pods[1], "client", &["/bin/sleep", "3600"]);
    // The app container sees the sandbox's eth0 and address.
    let addr = c.cri_ok(&[
        "exec", &httpd, "--", "/bin/ip", "-o", "-4", "addr", "show", "eth0",
    ]);
    assert!(
        addr["stdout"]
            .as_str()
            .unwrap()
            .contains(&format!("inet {}/24", pods[0].2)),
        "{addr}"
    );
    // Pod B reaches pod A by its pod IP.
    let script = oci::http_get_script(&pods[0].2, 80);
    let got = wait_for("pod B fetching pod A", Duration::from_secs(20), || {
        let o = c.cri(&["exec", &client, "--", "/bin/sh", "-c", &script]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        let s = v["stdout"].as_str()?.to_string();
        s.contains("hello from").then_some(s)
    });
    assert!(got.contains("hello from cri pod a"), "{got}");
    let ports = |n: &Node| {
        let o = n.node.run("ip", &["-o", "link", "show", "master", "pwbr2"]);
        String::from_utf8_lossy(&o.stdout).lines().count()
    };
    assert_eq!(ports(&node), 2);

    // Stop + Remove: containerd sends DEL twice (the second without a netns); both work.
    for (_, id, _) in &pods {
        let (stop, rm) = c.remove_pod(id);
        assert!(stop.status.success(), "StopPodSandbox: {stop:?}");
        assert!(rm.status.success(), "RemovePodSandbox: {rm:?}");
    }
    assert_eq!(c.cri_ok(&["list-pods"]), json!([]));
    assert_eq!(ports(&node), 0, "veths left");
    let left: Vec<_> = fs::read_dir(ipam.join("pwcri"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok())
        })
        .collect();
    assert!(left.is_empty(), "reservations left: {left:?}");
}
