//! `make bench` for iptables-gen: generation time and peak memory for N services x 10
//! endpoints (objects built in memory, as after parsing), a partial sync with one changed
//! service, and the `iptables-restore` apply time of the same output inside a throwaway
//! network namespace. One size per process, so peak RSS (VmHWM) is that size's own.
//!
//!   gen-bench --services N [--apply]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use iptables_gen::model::Objects;
use iptables_gen::{Config, LocalDetector, SyncPlan};
use podwire_bench::objects;

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |k| k / 1024.0)
}

fn main() {
    let mut n = 1000usize;
    let mut apply = false;
    let mut partial_runs = 5usize;
    let mut restore = String::from("iptables-restore");
    let mut resyncs = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--services" => {
                n = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--services N")
            }
            "--apply" => apply = true,
            // The restore binary (iptables-legacy-restore, iptables-nft-restore).
            "--restore" => restore = args.next().expect("--restore CMD"),
            // After the apply: this many partial syncs, one changed service each, applied.
            "--resyncs" => {
                resyncs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--resyncs N")
            }
            // More runs of the partial sync (for profiling it).
            "--partial-runs" => {
                partial_runs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--partial-runs N")
            }
            _ => {
                eprintln!(
                    "usage: gen-bench --services N [--apply [--restore CMD] [--resyncs K]] [--partial-runs N]"
                );
                std::process::exit(2);
            }
        }
    }
    let cfg = Config {
        node_name: "node-1".into(),
        local_detector: LocalDetector::ClusterCidr("10.128.0.0/9".parse().expect("cidr")),
        ..Config::default()
    };
    let objs = objects(n, 10, true);
    // Full sync: model + rules, 3 runs, best and median.
    let mut times = Vec::new();
    let mut g = None;
    for _ in 0..3 {
        let t0 = Instant::now();
        let out = iptables_gen::generate(&cfg, &objs, &SyncPlan::full());
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        g = Some(out);
    }
    let g = g.expect("generated");
    times.sort_by(f64::total_cmp);
    let lines = g.text.lines().count();
    // Partial sync: one service's endpoints changed (and its slice's resourceVersion,
    // as the API server does on every write).
    let change = |mut objs: Objects| {
        let sl = &mut objs.slices[n / 2];
        if let Some(ep) = sl.endpoints.as_mut().and_then(|e| e.first_mut()) {
            ep.addresses = vec!["10.255.255.1".into()];
        }
        if sl.metadata.resource_version.is_some() {
            sl.metadata.resource_version = Some("999999999".into());
        }
        objs
    };
    let time_partial = |prev: &iptables_gen::SyncState, objs: &Objects| {
        let plan = SyncPlan {
            full: false,
            previous: Some(prev.clone()),
            ..Default::default()
        };
        let mut ptimes = Vec::new();
        let mut written = 0;
        for _ in 0..partial_runs {
            let t0 = Instant::now();
            let p = iptables_gen::generate(&cfg, objs, &plan);
            ptimes.push(t0.elapsed().as_secs_f64() * 1e3);
            written = p.written_services;
        }
        ptimes.sort_by(f64::total_cmp);
        (ptimes[ptimes.len() / 2], written)
    };
    let (partial_rv, written) = time_partial(&g.state, &change(objs));
    // Hand-written input without resourceVersions: the digest hashes every endpoint.
    let plain = objects(n, 10, false);
    let full_plain = iptables_gen::generate(&cfg, &plain, &SyncPlan::full());
    let (partial_content, written_content) = time_partial(&full_plain.state, &change(plain));
    assert_eq!(written, 1);
    assert_eq!(written_content, 1);
    drop(full_plain);
    let peak = peak_rss_mib();
    let mut apply_ms = String::from("-");
    if apply {
        // Inside a throwaway namespace, never the host's tables.
        let name = format!("pwgenbench-{}", std::process::id());
        struct Remove(String);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = netns::remove(&self.0);
            }
        }
        let ns = netns::create(&name).expect("create bench namespace");
        let _guard = Remove(name.clone());
        let run_restore = |text: &str| {
            let t0 = Instant::now();
            let r = netns::run_in(&ns, || {
                let mut c = Command::new(&restore)
                    .args(["-w", "5", "--noflush"])
                    .stdin(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("iptables-restore");
                let _ = c.stdin.take().expect("stdin").write_all(text.as_bytes());
                c.wait_with_output().expect("wait")
            })
            .expect("run_in");
            assert!(
                r.status.success(),
                "restore failed: {}",
                String::from_utf8_lossy(&r.stderr)
            );
            t0.elapsed().as_secs_f64() * 1e3
        };
        apply_ms = format!("{:.0}", run_restore(&g.text));
        if resyncs > 0 {
            // Partial re-syncs of the applied rules: one service changed each time (its
            // slice's endpoint and resourceVersion), generated from the last state, applied.
            let mut cur = objects(n, 10, true);
            let mut st = g.state.clone();
            let (mut gen_ms, mut restore_ms) = (Vec::new(), Vec::new());
            for k in 0..resyncs {
                let i = (n / 3 + k * 997) % n;
                let sl = &mut cur.slices[i];
                if let Some(ep) = sl.endpoints.as_mut().and_then(|e| e.first_mut()) {
                    ep.addresses = vec![format!("10.254.{}.{}", k / 250, 1 + k % 250)];
                }
                sl.metadata.resource_version = Some(format!("r{k}"));
                let t0 = Instant::now();
                let p = iptables_gen::generate(
                    &cfg,
                    &cur,
                    &SyncPlan {
                        full: false,
                        previous: Some(st),
                        ..Default::default()
                    },
                );
                gen_ms.push(t0.elapsed().as_secs_f64() * 1e3);
                assert_eq!(p.written_services, 1);
                restore_ms.push(run_restore(&p.text));
                st = p.state;
            }
            gen_ms.sort_by(f64::total_cmp);
            restore_ms.sort_by(f64::total_cmp);
            eprintln!(
                "{n} services: {resyncs} partial re-syncs applied with {restore}, 0 failed; \
                 generation median {:.2} ms, restore median {:.0} ms, max {:.0} ms",
                gen_ms[gen_ms.len() / 2],
                restore_ms[restore_ms.len() / 2],
                restore_ms[restore_ms.len() - 1]
            );
        }
        drop(ns);
    }
    println!(
        "| {n} x 10 | {lines} | {:.1} | {:.1} | {:.0} | {partial_rv:.2} | {partial_content:.2} | {apply_ms} |",
        times[0], times[1], peak,
    );
}
