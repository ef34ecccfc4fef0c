//! `make bench` for the nftables backend: the full apply of N services x 10 endpoints in a
//! fresh throwaway namespace, side by side in one run with the iptables backend applied by
//! iptables-nft and by iptables-legacy, and with kube-proxy's own nftables layout
//! (anonymous `numgen … vmap` per service). Wall time and peak RSS of the applying process
//! (`/usr/bin/time`), each capped at `--cap` seconds. Then a one-service partial sync of
//! the nftables backend, end to end (generate from the in-memory state + `nft -f`).
//!
//!   nft-bench --services 1000,3000,10000 [--cap 120] [--only-ours] [--chart FILE.svg]
//!
//! `--chart` also draws the apply times against the number of services (both axes log
//! scale) as an SVG; a run stopped at the cap is drawn at the cap, hollow.
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
    let mut chart: Option<String> = None;
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
            "--chart" => chart = Some(args.next().expect("--chart FILE")),
            _ => {
                eprintln!("usage: nft-bench [--services N,M,...] [--cap SECONDS] [--only-ours]");
                std::process::exit(2);
            }
        }
    }
    assert!(nix::unistd::geteuid().is_root(), "nft-bench needs root");
    assert!(
        !(only_ours && chart.is_some()),
        "--chart draws all four ways: not with --only-ours"
    );
    let cfg = Config {
        node_name: "node-1".into(),
        local_detector: LocalDetector::ClusterCidr("10.128.0.0/9".parse().expect("cidr")),
        ..Config::default()
    };
    println!(
        "| services | iptables-nft restore | iptables-legacy restore | kube-proxy's nftables layout (nft -f) | podwire nftables (nft -f) | podwire full sync, end to end (generate + nft -f) | podwire 1-service partial sync, end to end |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    // Per way, (services, seconds or None when stopped at the cap).
    let mut points: [Vec<(usize, Option<f64>)>; 4] = Default::default();
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
        for (k, r) in [r_ipt_nft, r_legacy, r_kp, r_nft].into_iter().enumerate() {
            points[k].push((n, r.map(|(s, _)| s)));
        }
        println!(
            "| {n} × 10 | {} | {} | {} | {} | {end_to_end} | {partial:.1} ms (generate {partial_gen:.1}) |",
            other(r_ipt_nft),
            other(r_legacy),
            other(r_kp),
            cell(r_nft, cap),
        );
    }
    if let Some(path) = chart {
        let names = [
            "iptables-nft restore",
            "iptables-legacy restore",
            "kube-proxy's nftables layout",
            "podwire nftables",
        ];
        std::fs::write(&path, svg(&names, &points, cap as f64)).expect("write the chart");
        eprintln!("chart: {path}");
    }
}

/// A log-log line chart of apply seconds against services, one line per way.
fn svg(names: &[&str; 4], points: &[Vec<(usize, Option<f64>)>; 4], cap: f64) -> String {
    use std::fmt::Write as _;
    const W: f64 = 640.0;
    const H: f64 = 400.0;
    const L: f64 = 70.0;
    const R: f64 = 230.0;
    const T: f64 = 20.0;
    const B: f64 = 50.0;
    const COLORS: [&str; 4] = ["#d62728", "#ff7f0e", "#1f77b4", "#2ca02c"];
    let xs: Vec<f64> = points.iter().flatten().map(|p| p.0 as f64).collect();
    let (x0, x1) = (
        xs.iter().copied().fold(f64::MAX, f64::min).log10().floor(),
        xs.iter().copied().fold(0.0, f64::max).log10().ceil(),
    );
    let (y0, y1) = (-2.0_f64, cap.log10().ceil());
    let px = |x: f64| L + (x.log10() - x0) / (x1 - x0).max(1.0) * (W - L - R);
    let py = |y: f64| T + (y1 - y.max(0.01).log10()) / (y1 - y0) * (H - T - B);
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    for e in (y0 as i32)..=(y1 as i32) {
        let y = py(10f64.powi(e));
        let label = if e < 0 {
            format!("{} ms", 10f64.powi(e + 3))
        } else {
            format!("{} s", 10f64.powi(e))
        };
        let _ = writeln!(
            o,
            r##"<line x1="{L}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            W - R,
            L - 6.0,
            y + 4.0
        );
    }
    for e in (x0 as i32)..=(x1 as i32) {
        let x = px(10f64.powi(e));
        let _ = writeln!(
            o,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{T}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            H - B,
            H - B + 16.0,
            10u64.pow(e as u32)
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">services (× 10 endpoints), log scale</text><text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">full apply, log scale</text>"#,
        L + (W - L - R) / 2.0,
        H - 12.0,
        H / 2.0,
        H / 2.0
    );
    for (k, line) in points.iter().enumerate() {
        let c = COLORS[k];
        let pts: Vec<String> = line
            .iter()
            .map(|&(n, s)| format!("{:.1},{:.1}", px(n as f64), py(s.unwrap_or(cap))))
            .collect();
        let _ = writeln!(
            o,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        for &(n, s) in line {
            let fill = if s.is_some() { c } else { "white" };
            let _ = writeln!(
                o,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{fill}" stroke="{c}" stroke-width="2"/>"#,
                px(n as f64),
                py(s.unwrap_or(cap))
            );
        }
        let ly = T + 20.0 + 22.0 * k as f64;
        let _ = writeln!(
            o,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            W - R + 15.0,
            W - R + 40.0,
            W - R + 46.0,
            ly + 4.0,
            names[k]
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}">hollow: stopped at the {cap} s cap</text>"#,
        W - R + 15.0,
        T + 20.0 + 22.0 * 4.0 + 4.0
    );
    o.push_str("</svg>\n");
    o
}
