//! `make bench` for runtime-shim: per-pod setup/teardown latency of `runtime-shim` (one
//! exec per pod, as a runtime calls it) next to the reference CNI `bridge` + `host-local`
//! plugins, measured in one run, each tool in its own throwaway node namespace. Also the
//! kernel's veth-delete floor (`ip link del` of an identical pair), two parallel workers,
//! and the setup time at pod 1,000 on one bridge. Prints markdown.
//!
//! Everything happens inside namespaces this program creates (`pwbench-<pid>-...`) and
//! removes at the end, also on panic; no traffic is sent anywhere.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use netns::NetNs;

struct Names(Vec<String>);
impl Drop for Names {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = netns::remove(n);
        }
    }
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ns(names: &mut Names, tag: &str) -> NetNs {
    let name = format!("pwbench-{}-{tag}", std::process::id());
    let n = netns::create(&name).unwrap_or_else(|e| panic!("create {name}: {e}"));
    names.0.push(name);
    n
}

#[derive(Clone, Copy)]
enum Tool {
    Shim,
    CniBridge,
}

struct Ctx {
    tool: Tool,
    shim: PathBuf,
    config: PathBuf,
    conf_json: String,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// One pod operation; returns (milliseconds, stdout).
fn op(c: &Ctx, add: bool, netns: &Path, id: &str, prev: &str) -> (f64, String) {
    let t0 = Instant::now();
    let out = match c.tool {
        Tool::Shim => {
            let mut cmd = Command::new(&c.shim);
            if add {
                cmd.args(["setup", "--netns"]).arg(netns);
            } else {
                cmd.arg("teardown");
            }
            cmd.args(["--id", id, "--config"]).arg(&c.config);
            cmd.stdin(Stdio::null()).output().expect("runtime-shim")
        }
        Tool::CniBridge => {
            let mut conf = c.conf_json.clone();
            if !add && !prev.is_empty() {
                // DEL gets the ADD result as prevResult, as libcni sends it.
                conf = format!(
                    "{},\"prevResult\":{}}}",
                    &conf[..conf.len() - 1],
                    prev.trim()
                );
            }
            let mut child = Command::new("/usr/lib/cni/bridge")
                .env_clear()
                .env("CNI_COMMAND", if add { "ADD" } else { "DEL" })
                .env("CNI_CONTAINERID", id)
                .env("CNI_NETNS", netns)
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", "/usr/lib/cni")
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("/usr/lib/cni/bridge (containernetworking-plugins)");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(conf.as_bytes())
                .expect("write netconf");
            child.wait_with_output().expect("bridge plugin")
        }
    };
    let t = ms(t0);
    assert!(
        out.status.success(),
        "{} {id}: {}{}",
        if add { "setup" } else { "teardown" },
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (t, String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Stats {
    med: f64,
    p95: f64,
    mean: f64,
}

fn stats(v: &[f64]) -> Stats {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Stats {
        med: s[n / 2],
        p95: s[((n * 95).div_ceil(100)).saturating_sub(1).min(n - 1)],
        mean: s.iter().sum::<f64>() / n as f64,
    }
}

fn row(name: &str, v: &[f64], total: f64) -> String {
    let s = stats(v);
    format!(
        "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
        s.med,
        s.p95,
        s.mean,
        total,
        v.len()
    )
}

fn config(dir: &Path, tool: Tool, bridge: &str, subnet: &str) -> (PathBuf, String) {
    let ty = match tool {
        Tool::Shim => "runtime-shim",
        Tool::CniBridge => "bridge",
    };
    let json = format!(
        r#"{{"cniVersion":"1.0.0","name":"pwbench-{bridge}","type":"{ty}","bridge":"{bridge}","isGateway":true,"isDefaultGateway":true,"ipMasq":true,"hairpinMode":true,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"{subnet}"}}]],"dataDir":"{}"}}}}"#,
        dir.join("ipam").display()
    );
    let p = dir.join(format!("{bridge}.json"));
    std::fs::write(&p, &json).expect("write config");
    (p, json)
}

/// Sequential setup then teardown of `n` pods in a fresh node; returns per-pod times.
fn seq_run(c: &Ctx, names: &mut Names, tag: &str, n: usize) -> (Vec<f64>, Vec<f64>, f64, f64) {
    let node = ns(names, &format!("{tag}-node"));
    let pods: Vec<(String, NetNs)> = (0..n)
        .map(|i| {
            let t = format!("{tag}-p{i}");
            let p = ns(names, &t);
            (format!("/run/netns/pwbench-{}-{t}", std::process::id()), p)
        })
        .collect();
    netns::run_in(&node, || {
        let t0 = Instant::now();
        let mut results = Vec::new();
        let setup: Vec<f64> = pods
            .iter()
            .enumerate()
            .map(|(i, (path, _))| {
                let (t, out) = op(c, true, Path::new(path), &format!("{tag}c{i}"), "");
                results.push(out);
                t
            })
            .collect();
        let setup_total = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let teardown: Vec<f64> = pods
            .iter()
            .enumerate()
            .map(|(i, (path, _))| {
                op(
                    c,
                    false,
                    Path::new(path),
                    &format!("{tag}c{i}"),
                    &results[i],
                )
                .0
            })
            .collect();
        (setup, teardown, setup_total, t1.elapsed().as_secs_f64())
    })
    .expect("run in node")
}

/// runtime-shim setups that must heal: before each (untimed), the network's nftables
/// table is deleted, as a firewall reload would; after each, the table is back.
fn heal_run(c: &Ctx, names: &mut Names, n: usize) -> Vec<f64> {
    let node = ns(names, "h-node");
    let pods: Vec<String> = (0..=n)
        .map(|i| {
            let t = format!("h-p{i}");
            ns(names, &t);
            format!("/run/netns/pwbench-{}-{t}", std::process::id())
        })
        .collect();
    let table = format!("podwire-pwbench-{}", bridge_of(c));
    let nft = |args: &[&str]| {
        Command::new("nft")
            .args(args)
            .stdout(Stdio::null())
            .status()
            .expect("nft (make deps)")
            .success()
    };
    netns::run_in(&node, || {
        op(c, true, Path::new(&pods[0]), "hc0", "");
        let mut v = Vec::new();
        for (i, p) in pods.iter().enumerate().skip(1) {
            assert!(nft(&["delete", "table", "inet", &table]), "delete {table}");
            v.push(op(c, true, Path::new(p), &format!("hc{i}"), "").0);
            assert!(
                nft(&["list", "table", "inet", &table]),
                "setup {i} healed {table}"
            );
        }
        for i in 0..pods.len() {
            op(c, false, Path::new(""), &format!("hc{i}"), "");
        }
        v
    })
    .expect("run in node")
}

/// The bridge a context's network uses (its name is `pwbench-<bridge>`).
fn bridge_of(c: &Ctx) -> String {
    serde_json::from_str::<serde_json::Value>(&c.conf_json)
        .ok()
        .and_then(|v| v["bridge"].as_str().map(String::from))
        .unwrap_or_default()
}

/// Setup of `n` pods with `w` parallel workers in a fresh node: (times, errors, wall s).
fn par_run(c: &Ctx, names: &mut Names, tag: &str, n: usize, w: usize) -> (Vec<f64>, usize, f64) {
    let node = ns(names, &format!("{tag}-node"));
    let pods: Vec<String> = (0..n)
        .map(|i| {
            let t = format!("{tag}-p{i}");
            ns(names, &t);
            format!("/run/netns/pwbench-{}-{t}", std::process::id())
        })
        .collect();
    let t0 = Instant::now();
    let (times, errors) = std::thread::scope(|s| {
        let hs: Vec<_> = (0..w)
            .map(|k| {
                let (node, pods) = (&node, &pods);
                s.spawn(move || {
                    netns::run_in(node, || {
                        let mut v = Vec::new();
                        let mut errs = 0;
                        for (i, p) in pods.iter().enumerate().skip(k).step_by(w) {
                            match std::panic::catch_unwind(|| {
                                op(c, true, Path::new(p), &format!("{tag}c{i}"), "")
                            }) {
                                Ok((t, _)) => v.push(t),
                                Err(_) => errs += 1,
                            }
                        }
                        (v, errs)
                    })
                    .expect("run in node")
                })
            })
            .collect();
        hs.into_iter().fold((Vec::new(), 0), |(mut v, e), h| {
            let (v2, e2) = h.join().expect("worker");
            v.extend(v2);
            (v, e + e2)
        })
    });
    let wall = t0.elapsed().as_secs_f64();
    (times, errors, wall)
}

/// The floor: `ip link del` of each pod's host veth, for pods set up (untimed) by
/// `runtime-shim` exactly as in the teardown measurement: the kernel's cost of removing
/// that very veth (bridge port, addresses, routes included), plus one exec.
/// With `bare`, a plain veth pair with its peer in a namespace, on no bridge.
fn veth_floor(c: &Ctx, names: &mut Names, n: usize, bare: bool) -> Vec<f64> {
    let tag = if bare { "fb" } else { "fl" };
    let node = ns(names, &format!("{tag}-node"));
    let pods: Vec<String> = (0..n)
        .map(|i| {
            let t = format!("{tag}-p{i}");
            ns(names, &t);
            format!("pwbench-{}-{t}", std::process::id())
        })
        .collect();
    netns::run_in(&node, || {
        let mut hosts = Vec::new();
        for (i, p) in pods.iter().enumerate() {
            if bare {
                let h = format!("pwfl{i}");
                let st = Command::new("ip")
                    .args([
                        "link", "add", &h, "type", "veth", "peer", "name", "eth0", "netns", p,
                    ])
                    .status()
                    .expect("ip");
                assert!(st.success());
                hosts.push(h);
            } else {
                let id = format!("{tag}c{i}");
                op(c, true, &Path::new("/run/netns").join(p), &id, "");
                hosts.push(runtime_shim::plan::host_veth_name(&id, "eth0"));
            }
        }
        let times = hosts
            .iter()
            .map(|h| {
                let t0 = Instant::now();
                let st = Command::new("ip")
                    .args(["link", "del", h])
                    .status()
                    .expect("ip");
                assert!(st.success());
                ms(t0)
            })
            .collect();
        if !bare {
            for i in 0..n {
                op(c, false, Path::new(""), &format!("{tag}c{i}"), "");
            }
        }
        times
    })
    .expect("run in node")
}

fn main() {
    let mut pods = 50usize;
    let mut scale = 1000usize;
    let mut shim = PathBuf::from("target/release/runtime-shim");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pods" => pods = args.next().and_then(|v| v.parse().ok()).expect("--pods N"),
            "--scale" => scale = args.next().and_then(|v| v.parse().ok()).expect("--scale N"),
            "--shim" => shim = args.next().expect("--shim PATH").into(),
            _ => {
                eprintln!("usage: shim-bench [--pods N] [--scale N] [--shim PATH]");
                std::process::exit(2);
            }
        }
    }
    assert!(nix::unistd::geteuid().is_root(), "shim-bench needs root");
    let shim = std::fs::canonicalize(&shim).expect("runtime-shim binary (make bench builds it)");
    let dir = Dir(std::env::temp_dir().join(format!("pwbench-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("mkdir");
    let mut names = Names(Vec::new());

    let mk = |tool: Tool, bridge: &str, subnet: &str| {
        let (config, conf_json) = config(&dir.0, tool, bridge, subnet);
        Ctx {
            tool,
            shim: shim.clone(),
            config,
            conf_json,
        }
    };
    let shim_ctx = mk(Tool::Shim, "pwbench0", "10.123.0.0/22");
    let cni_ctx = mk(Tool::CniBridge, "pwbench1", "10.123.4.0/22");

    println!("### Sequential, {pods} pods, ipMasq on (per-pod ms; total s)\n");
    println!("| tool / phase | median | p95 | mean | total s | n |");
    println!("|---|---:|---:|---:|---:|---:|");
    let floor = veth_floor(&shim_ctx, &mut names, pods, false);
    let bare = veth_floor(&shim_ctx, &mut names, pods, true);
    for (label, c) in [
        ("runtime-shim", &shim_ctx),
        ("cni bridge+host-local", &cni_ctx),
    ] {
        let tag = if matches!(c.tool, Tool::Shim) {
            "s"
        } else {
            "c"
        };
        let (s, t, st, tt) = seq_run(c, &mut names, tag, pods);
        println!("{}", row(&format!("{label} setup"), &s, st));
        println!("{}", row(&format!("{label} teardown"), &t, tt));
    }
    let healed = heal_run(&shim_ctx, &mut names, pods);
    println!(
        "{}",
        row(
            "runtime-shim setup that heals (table deleted before each ADD)",
            &healed,
            healed.iter().sum::<f64>() / 1e3
        )
    );
    println!(
        "{}",
        row(
            "floor: `ip link del` of the pod's host veth (as set up)",
            &floor,
            floor.iter().sum::<f64>() / 1e3
        )
    );
    println!(
        "{}",
        row(
            "floor: `ip link del` of a bare veth (peer in a netns, no bridge)",
            &bare,
            bare.iter().sum::<f64>() / 1e3
        )
    );

    println!("\n### Setup with 2 parallel workers, {pods} pods\n");
    println!("| tool | median | p95 | mean | wall s | errors |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (label, c, tag) in [
        ("runtime-shim", &shim_ctx, "ps"),
        ("cni bridge+host-local", &cni_ctx, "pc"),
    ] {
        let (v, errs, wall) = par_run(c, &mut names, tag, pods, 2);
        let s = stats(&v);
        println!(
            "| {label} | {:.2} | {:.2} | {:.2} | {wall:.2} | {errs} |",
            s.med, s.p95, s.mean
        );
    }

    if scale > 0 {
        println!("\n### runtime-shim: {scale} pods on one bridge (sequential setup)\n");
        let big = mk(Tool::Shim, "pwbench2", "10.124.0.0/16");
        let (s, _, total, _) = seq_run(&big, &mut names, "b", scale);
        let first = stats(&s[..50.min(s.len())]);
        let last = stats(&s[s.len().saturating_sub(50)..]);
        println!("| pods | median ms | p95 ms |");
        println!("|---|---:|---:|");
        println!("| 1-50 | {:.2} | {:.2} |", first.med, first.p95);
        println!(
            "| {}-{} | {:.2} | {:.2} |",
            s.len().saturating_sub(49),
            s.len(),
            last.med,
            last.p95
        );
        println!(
            "\nratio (last 50 / first 50, median): {:.2}; total {total:.1} s",
            last.med / first.med
        );
    }
}
