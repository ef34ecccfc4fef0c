//! Privileged tests of the netns library and CLI against the real kernel and iproute2.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use podwire_testkit::*;

fn netns_cli(args: &[&str]) -> std::process::Output {
    run(bin("netns").to_str().expect("utf-8 path"), args)
}

/// Removes a name on drop, for namespaces a test creates through a CLI.
struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = netns::remove(&self.0);
    }
}

fn ip_netns_list() -> Vec<String> {
    ok("ip", &["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn cli_add_exec_del_and_iproute2_sees_it() {
    require_root();
    let name = unique_name("cli");
    let _c = Cleanup(name.clone());
    let out = netns_cli(&["add", &name]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        ip_netns_list().contains(&name),
        "ip netns list must show {name}"
    );
    assert!(netns_cli(&["list"]).stdout.starts_with(b"pwt-") || !ip_netns_list().is_empty());
    let listed = String::from_utf8(netns_cli(&["list"]).stdout).unwrap();
    assert!(listed.lines().any(|l| l == name));

    // A process run with exec sees only lo, through netlink and through /sys.
    let links =
        String::from_utf8(netns_cli(&["exec", &name, "--", "ip", "-o", "link"]).stdout).unwrap();
    let names: Vec<_> = links.lines().filter_map(|l| l.split(": ").nth(1)).collect();
    assert_eq!(names, ["lo"], "{links}");
    let sys =
        String::from_utf8(netns_cli(&["exec", &name, "ls", "/sys/class/net"]).stdout).unwrap();
    assert_eq!(sys.split_whitespace().collect::<Vec<_>>(), ["lo"]);
    // iproute2 can enter ours.
    ok("ip", &["netns", "exec", &name, "true"]);

    let out = netns_cli(&["del", &name]);
    assert!(out.status.success(), "{out:?}");
    assert!(!ip_netns_list().contains(&name));
    assert!(!std::path::Path::new("/run/netns").join(&name).exists());
}

#[test]
fn iproute2_namespaces_open_and_delete_both_ways() {
    require_root();
    let theirs = unique_name("ip");
    let _c = Cleanup(theirs.clone());
    ok("ip", &["netns", "add", &theirs]);
    ok(
        "ip",
        &[
            "netns", "exec", &theirs, "ip", "link", "add", "pwmark0", "type", "bridge",
        ],
    );
    let ns = NetNs::from_name(&theirs).expect("open iproute2's namespace");
    let links = netns::run_in(&ns, || ok("ip", &["-o", "link"])).unwrap();
    assert!(links.contains("pwmark0"), "{links}");
    drop(ns);
    netns::remove(&theirs).expect("remove iproute2's namespace");
    assert!(!ip_netns_list().contains(&theirs));

    let ours = unique_name("ours");
    let _c2 = Cleanup(ours.clone());
    netns::create(&ours).unwrap();
    ok("ip", &["netns", "del", &ours]);
    assert!(!ip_netns_list().contains(&ours));
}

#[test]
fn cli_exit_codes_and_messages() {
    require_root();
    let name = unique_name("codes");
    let _c = Cleanup(name.clone());
    let out = netns_cli(&["del", &name]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));

    let out = netns_cli(&["add", "../etc"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid network namespace name"));
    assert!(!std::path::Path::new("/run/etc").exists());

    assert!(netns_cli(&["add", &name]).status.success());
    let out = netns_cli(&["add", &name]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    assert_eq!(
        netns_cli(&["exec", &name, "--", "sh", "-c", "exit 7"])
            .status
            .code(),
        Some(7)
    );
    assert_eq!(
        netns_cli(&["exec", &name, "--", "/nonexistent/cmd"])
            .status
            .code(),
        Some(127)
    );
    assert_eq!(netns_cli(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        netns_cli(&["pin", &unique_name("x"), "0"]).status.code(),
        Some(1)
    );
    assert!(netns_cli(&["del", &name]).status.success());
}

#[test]
fn open_errors_are_distinct() {
    require_root();
    let missing = unique_name("missing");
    assert!(matches!(
        NetNs::from_name(&missing),
        Err(netns::Error::NotFound { .. })
    ));
    // A leftover plain file in /run/netns (as after a crash) is "not a namespace".
    std::fs::create_dir_all("/run/netns").unwrap();
    let plain = unique_name("plain");
    let _c = Cleanup(plain.clone());
    std::fs::write(format!("/run/netns/{plain}"), b"").unwrap();
    let e = NetNs::from_name(&plain).unwrap_err();
    assert!(matches!(e, netns::Error::NotNetNs { .. }), "{e}");
    // ... which pin then takes over.
    let anon = NetNs::new_anonymous().unwrap();
    let pinned = netns::pin(&plain, &anon).unwrap();
    assert_eq!(pinned, anon);
}

#[test]
fn pinned_namespace_outlives_its_process() {
    require_root();
    let name = unique_name("pin");
    let _c = Cleanup(name.clone());
    let mut child = Command::new("unshare")
        .args(["--net", "--", "sleep", "60"])
        .stdin(Stdio::null())
        .spawn()
        .expect("unshare");
    let pid = child.id() as i32;
    let host = NetNs::current().unwrap();
    // unshare execs sleep in place; wait until the pid has its new namespace.
    let ns = wait_for("child netns", Duration::from_secs(10), || {
        NetNs::from_pid(pid).ok().filter(|ns| *ns != host)
    });
    ok(
        "nsenter",
        &[
            &format!("--net=/proc/{pid}/ns/net"),
            "ip",
            "link",
            "add",
            "pwmark1",
            "type",
            "bridge",
        ],
    );
    let out = netns_cli(&["pin", &name, &pid.to_string()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(netns_cli(&["identify", &pid.to_string()]).stdout)
            .unwrap()
            .trim(),
        name
    );
    drop(ns);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(NetNs::from_pid(pid).is_err(), "process is gone");
    let links = ok("ip", &["netns", "exec", &name, "ip", "-o", "link"]);
    assert!(
        links.contains("pwmark1"),
        "pinned namespace survived: {links}"
    );
    // Pinning the same namespace again under the same name is a no-op.
    let pinned = NetNs::from_name(&name).unwrap();
    assert_eq!(netns::pin(&name, &pinned).unwrap(), pinned);
    // A different namespace under a taken name is refused.
    let other = NetNs::new_anonymous().unwrap();
    assert!(matches!(
        netns::pin(&name, &other),
        Err(netns::Error::Exists { .. })
    ));
    netns::remove(&name).unwrap();
}

#[test]
fn run_in_from_many_threads_never_moves_the_caller() {
    require_root();
    let a = Arc::new(Ns::new("runa"));
    let b = Arc::new(Ns::new("runb"));
    a.ok("ip", &["link", "add", "pwmarka", "type", "bridge"]);
    let mut handles = Vec::new();
    for t in 0..8 {
        let (a, b) = (a.clone(), b.clone());
        handles.push(std::thread::spawn(move || {
            let before = NetNs::current().unwrap();
            for i in 0..25 {
                let target = if (t + i) % 2 == 0 { &a.ns } else { &b.ns };
                let inside = netns::run_in(target, || NetNs::current().unwrap()).unwrap();
                assert_eq!(&inside, target, "closure ran in the target namespace");
                assert_eq!(NetNs::current().unwrap(), before, "caller thread unchanged");
            }
            // Netlink opened inside belongs to the namespace.
            let links = netns::run_in(&a.ns, || {
                std::fs::read_dir("/sys/class/net").map(|d| d.count())
            });
            assert!(links.is_ok());
        }));
    }
    for h in handles {
        h.join().expect("worker thread");
    }
    let host = NetNs::current().unwrap();
    assert_ne!(host, a.ns);
    // 8 threads x 25 calls = 200 run_in calls, all checked above.
}

#[test]
fn run_in_panic_becomes_error_and_sysctl_is_per_namespace() {
    require_root();
    let a = Ns::new("panic");
    let r: netns::Result<()> = netns::run_in(&a.ns, || panic!("inside {}", "pod"));
    match r {
        Err(netns::Error::Panicked { message, .. }) => assert_eq!(message, "inside pod"),
        other => panic!("expected Panicked, got {other:?}"),
    }
    // /proc/sys/net opened inside refers to the namespace (pitfall 4).
    netns::run_in(&a.ns, || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
    })
    .unwrap()
    .unwrap();
    let inside = netns::run_in(&a.ns, || {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
    })
    .unwrap()
    .unwrap();
    assert_eq!(inside.trim(), "1");
    let fresh = NetNs::new_anonymous().unwrap();
    let other = netns::run_in(&fresh, || {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        other.trim(),
        "0",
        "a new namespace starts with forwarding off"
    );
}

#[test]
fn remove_while_held_by_another_mount_namespace_never_hangs() {
    require_root();
    let name = unique_name("busy");
    let _c = Cleanup(name.clone());
    netns::create(&name).unwrap();
    // A process in a private copy of the mount table keeps its own copy of the bind mount.
    let mut holder = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sleep", "60"])
        .stdin(Stdio::null())
        .spawn()
        .expect("unshare");
    let pid = holder.id();
    wait_for(
        "holder in its mount namespace",
        Duration::from_secs(10),
        || {
            let mine = std::fs::read_link("/proc/self/ns/mnt").ok()?;
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()?;
            (mine != theirs).then_some(())
        },
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let n2 = name.clone();
    std::thread::spawn(move || {
        let _ = tx.send(netns::remove(&n2));
    });
    let result = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("remove must return, never hang");
    match &result {
        Ok(()) => assert!(!std::path::Path::new("/run/netns").join(&name).exists()),
        Err(e) => {
            let msg = e.to_string();
            assert!(matches!(e, netns::Error::Busy { .. }), "{msg}");
            assert!(msg.contains("another mount namespace"), "{msg}");
        }
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
    if result.is_err() {
        netns::remove(&name).expect("removable once the holder is gone");
    }
    assert!(!ip_netns_list().contains(&name));
}

#[test]
fn concurrent_create_and_remove() {
    require_root();
    let names: Vec<String> = (0..24).map(|_| unique_name("conc")).collect();
    let _guards: Vec<Cleanup> = names.iter().cloned().map(Cleanup).collect();
    let names = Arc::new(names);
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let names = names.clone();
            std::thread::spawn(move || {
                for n in names.iter().skip(t).step_by(4) {
                    netns::create(n).unwrap();
                    assert!(NetNs::from_name(n).is_ok());
                    netns::remove(n).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let left = ip_netns_list();
    assert!(names.iter().all(|n| !left.contains(n)));
}

#[test]
fn node_fixture_cleans_up_on_panic() {
    require_root();
    let names = std::sync::Mutex::new(Vec::new());
    let r = std::panic::catch_unwind(|| {
        let mut node = Node::new("fx");
        let p = node.add_pod("fxpod");
        names.lock().unwrap().push(node.node.name.clone());
        names.lock().unwrap().push(node.pod(p).name.clone());
        node.node
            .ok("ip", &["link", "add", "pwbr0", "type", "bridge"]);
        panic!("test failure inside the fixture");
    });
    assert!(r.is_err());
    let left = ip_netns_list();
    for n in names.lock().unwrap().iter() {
        assert!(!left.contains(n), "{n} leaked");
    }
}
