//! `make bench` for the nftables backend: the full apply of N services x 10 endpoints in a
//! fresh throwaway namespace, side by side in one run with the iptables backend applied by
//! iptables-nft and by iptables-legacy, and with kube-proxy's own nftables layout
//! (anonymous `numgen … vmap` per service). Wall time and peak RSS of the applying process
//! (`/usr/bin/time`), each capped at `--cap` seconds. Then a one-service partial sync of
//! the nftables backend, end to end (generate from the in-memory state + `nft -f`).
//!
//!   nft-bench --services 1000,3000,10000 [--cap 120] [--only-ours]
//!
//! `--only-ours` skips the three other ways (their cells read "-"): for iterating on the
//! backend, not for the record.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use iptables_gen::nftables::{self, Layout};
use iptables_gen::{Config, LocalDetector, SyncPlan};
use podwire_bench::objects_on_nodes;

/// The synthetic cluster's nodes: endpoints spread over them, this one (`node-1`) among them.
const NODES: usize = 100;

struct Remove(String);
impl Drop for Remove {
    fn drop(&mut self) {
        let _ = netns::remove(&self.0);
    }
}

/// Apply `text` with `argv` inside a fresh namespace: (seconds, peak RSS MiB), or None when
/// it ran past `cap` seconds (killed) or failed.
fn apply(tag: &str, argv: &[&str], text: &str, cap: u64) -> Option<(f64, f64)> {
    let name = format!("pwnftbench-{}-{tag}", std::process::id());
    let ns = netns::create(&name).expect("create bench namespace");
    let _guard = Remove(name);
    netns::run_in(&ns, || {
        let t0 = Instant::now();
        let mut c = Command::new("timeout")
            .arg("-s")
            .arg("KILL")
            .arg(cap.to_string())
            .arg("/usr/bin/time")
            .args(["-f", "%M"])
            .args(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("timeout /usr/bin/time");
        let _ = c.stdin.take().expect("stdin").write_all(text.as_bytes());
        let out = c.wait_with_output().expect("wait");
        let secs = t0.elapsed().as_secs_f64();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            // 124/137: stopped by `timeout` at the cap.
            if !matches!(out.status.code(), Some(124 | 137) | None) {
                eprintln!(
                    "{tag}: {argv:?} failed: {}",
                    err.lines().next().unwrap_or("")
                );
            }
            return None;
        }
        let kib: f64 = String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0.0);
        Some((secs, kib / 1024.0))
    })
    .expect("run_in")
}

fn cell(r: Option<(f64, f64)>, cap: u64) -> String {
    match r {
        Some((s, m)) => format!("{s:.2} s, {m:.0} MiB"),
        None => format!("> {cap} s (stopped)"),
    }
}

fn main() {
    let mut sizes = vec![1000usize, 3000, 10000];
    let mut cap = 120u64;
    let mut only_ours = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--services" => {
                sizes = args
                    .next()
                    .expect("--services N,M")
                    .split(',')
                    .map(|n| n.parse().expect("a number"))
                    .collect()
            }
            "--cap" => cap = args.next().and_then(|v| v.parse().ok()).expect("--cap S"),
            "--only-ours" => only_ours = true,
            _ => {
                eprintln!("usage: nft-bench [--services N,M,...] [--cap SECONDS] [--only-ours]");
                std::process::exit(2);
            }
        }
    }
    assert!(nix::unistd::geteuid().is_root(), "nft-bench needs root");
    let cfg = Config {
        node_name: "node-1".into(),
        local_detector: LocalDetector::ClusterCidr("10.128.0.0/9".parse().expect("cidr")),
        ..Config::default()
    };
    println!(
        "| services | iptables-nft restore | iptables-legacy restore | kube-proxy's nftables layout (nft -f) | podwire nftables (nft -f) | podwire full sync, end to end (generate + nft -f) | podwire 1-service partial sync, end to end |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for &n in &sizes {
        let objs = objects_on_nodes(n, 10, true, NODES);
        let t0 = Instant::now();
        let ours = nftables::generate(&cfg, &objs, &SyncPlan::full());
        let gen_s = t0.elapsed().as_secs_f64();
        let nft_bin = "/usr/sbin/nft";
        let r_nft = apply("ours", &[nft_bin, "-f", "-"], &ours.text, cap);
        let (r_kp, r_legacy, r_ipt_nft) = if only_ours {
            (None, None, None)
        } else {
            let ipt = iptables_gen::generate(&cfg, &objs, &SyncPlan::full());
            let kp = nftables::generate_layout(&cfg, &objs, &SyncPlan::full(), Layout::KubeProxy);
            (
                apply("kp", &[nft_bin, "-f", "-"], &kp.text, cap),
                apply(
                    "legacy",
                    &["/usr/sbin/iptables-legacy-restore", "-w", "5", "--noflush"],
                    &ipt.text,
                    cap,
                ),
                apply(
                    "iptnft",
                    &["/usr/sbin/iptables-nft-restore", "-w", "5", "--noflush"],
                    &ipt.text,
                    cap,
                ),
            )
        };
        let other = |r| {
            if only_ours {
                "-".to_string()
            } else {
                cell(r, cap)
            }
        };
        let end_to_end = r_nft.map_or_else(
            || format!("> {cap} s (stopped)"),
            |(s, _)| format!("{:.2} s (generate {:.2})", s + gen_s, gen_s),
        );
        // Partial: the full ruleset applied, then one service's endpoint changes; the time
        // from the changed objects to the kernel holding them.
        let name = format!("pwnftbench-{}-partial", std::process::id());
        let ns = netns::create(&name).expect("namespace");
        let _guard = Remove(name);
        let nft = |text: &str| {
            let mut c = Command::new(nft_bin)
                .args(["-f", "-"])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("nft");
            let _ = c.stdin.take().expect("stdin").write_all(text.as_bytes());
            let o = c.wait_with_output().expect("wait");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        };
        let partial = netns::run_in(&ns, || {
            nft(&ours.text);
            let mut cur = objects_on_nodes(n, 10, true, NODES);
            let mut st = ours.state.clone();
            let mut times = Vec::new();
            for k in 0..5 {
                let sl = &mut cur.slices[(n / 3 + k * 997) % n];
                if let Some(ep) = sl.endpoints.as_mut().and_then(|e| e.first_mut()) {
                    ep.addresses = vec![format!("10.254.0.{}", 1 + k)];
                }
                sl.metadata.resource_version = Some(format!("r{k}"));
                let t0 = Instant::now();
                let p = nftables::generate(
                    &cfg,
                    &cur,
                    &SyncPlan {
                        full: false,
                        previous: Some(st),
                        ..Default::default()
                    },
                );
                assert_eq!(p.written_services, 1);
                let gen_ms = t0.elapsed().as_secs_f64() * 1e3;
                nft(&p.text);
                if !p.cleanup.is_empty() {
                    nft(&p.cleanup);
                }
                times.push((t0.elapsed().as_secs_f64() * 1e3, gen_ms));
                st = p.state;
            }
            times.sort_by(|a, b| a.0.total_cmp(&b.0));
            times[times.len() / 2]
        })
        .expect("run_in");
        let (partial, partial_gen) = partial;
        println!(
            "| {n} × 10 | {} | {} | {} | {} | {end_to_end} | {partial:.1} ms (generate {partial_gen:.1}) |",
            other(r_ipt_nft),
            other(r_legacy),
            other(r_kp),
            cell(r_nft, cap),
        );
    }
}
