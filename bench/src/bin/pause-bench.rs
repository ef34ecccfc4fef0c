//! `make bench` for pause: size, RSS/PSS and SIGTERM-to-exit time of podwire's pause next
//! to catatonit -P, measured in one run on this machine. Prints a markdown table.
//!
//! Method: every instance is a direct child (not PID 1), started with an empty signal mask
//! and default dispositions. "ready" = /proc/PID/exe is the binary and the state is S.
//! RSS = VmRSS, PSS/USS from smaps_rollup, 250 ms after ready. SIGTERM latency = kill() to
//! waitpid() return after 50 ms idle. `-v` = spawn + wait of the version flag.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

struct Subject {
    name: &'static str,
    exe: PathBuf,
    args: Vec<&'static str>,
    version_flag: &'static str,
}

fn spawn(s: &Subject) -> Child {
    Command::new(&s.exe)
        .args(&s.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn")
}

fn ready(pid: u32, exe: &Path) {
    let start = Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
        let target = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        if state == Some('S') && target.as_deref() == Some(exe) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "process {pid} never became ready"
        );
        std::thread::yield_now();
    }
}

fn kib(pid: u32, file: &str, keys: &[&str]) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .filter(|l| keys.iter().any(|k| l.starts_with(k)))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn measure(s: &Subject) -> String {
    let size = std::fs::metadata(&s.exe).expect("binary").len();
    let file = Command::new("file")
        .arg("-L")
        .arg(&s.exe)
        .output()
        .expect("file");
    let is_static = String::from_utf8_lossy(&file.stdout).contains("statically linked");

    // Single instance memory, 10 runs.
    let (mut rss, mut pss) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let mut c = spawn(s);
        ready(c.id(), &s.exe);
        std::thread::sleep(Duration::from_millis(250));
        rss.push(kib(c.id(), "status", &["VmRSS:"]) as f64);
        pss.push(kib(c.id(), "smaps_rollup", &["Pss:"]) as f64);
        let _ = c.kill();
        let _ = c.wait();
    }
    // Ten at once: the per-pod marginal cost on a node.
    let mut many: Vec<Child> = (0..10).map(|_| spawn(s)).collect();
    for c in &many {
        ready(c.id(), &s.exe);
    }
    std::thread::sleep(Duration::from_millis(250));
    let pss10: u64 = many
        .iter()
        .map(|c| kib(c.id(), "smaps_rollup", &["Pss:"]))
        .sum();
    let uss10: u64 = many
        .iter()
        .map(|c| {
            kib(
                c.id(),
                "smaps_rollup",
                &["Private_Clean:", "Private_Dirty:"],
            )
        })
        .sum();
    for c in &mut many {
        let _ = c.kill();
        let _ = c.wait();
    }

    // SIGTERM -> exit, 30 runs.
    let mut lat = Vec::new();
    let mut codes = Vec::new();
    for _ in 0..30 {
        let mut c = spawn(s);
        ready(c.id(), &s.exe);
        std::thread::sleep(Duration::from_millis(50));
        let t0 = Instant::now();
        kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM).expect("kill");
        let st = c.wait().expect("wait");
        lat.push(t0.elapsed().as_secs_f64() * 1e6);
        codes.push(st.code().map_or_else(|| format!("{st}"), |c| c.to_string()));
    }
    codes.dedup();

    // Version flag: spawn + wait, 200 runs.
    let mut ver = Vec::new();
    for _ in 0..200 {
        let t0 = Instant::now();
        let st = Command::new(&s.exe)
            .arg(s.version_flag)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("version");
        ver.push(t0.elapsed().as_secs_f64() * 1e6);
        assert!(st.success(), "{} {} failed", s.name, s.version_flag);
    }

    format!(
        "| {} | {} | {} | {:.0} / {:.0} | {:.0} / {:.0} | {:.1} / {:.1} | {} | {:.0} / {:.0} | {:.0} / {:.0} |",
        s.name,
        size,
        if is_static { "yes" } else { "no" },
        min(&rss),
        median(&mut rss),
        min(&pss),
        median(&mut pss),
        pss10 as f64 / 10.0,
        uss10 as f64 / 10.0,
        codes.join(","),
        min(&lat),
        median(&mut lat),
        min(&ver),
        median(&mut ver),
    )
}

fn main() {
    let mut pause = PathBuf::from("target/pause/pause");
    let mut catatonit = PathBuf::from("/usr/bin/catatonit");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pause" => pause = args.next().expect("--pause PATH").into(),
            "--catatonit" => catatonit = args.next().expect("--catatonit PATH").into(),
            other => {
                eprintln!(
                    "pause-bench: unknown argument {other:?} (use --pause PATH --catatonit PATH)"
                );
                std::process::exit(2);
            }
        }
    }
    let abs =
        |p: PathBuf| std::fs::canonicalize(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let subjects = [
        Subject {
            name: "podwire pause",
            exe: abs(pause),
            args: vec![],
            version_flag: "-v",
        },
        Subject {
            name: "catatonit -P",
            exe: abs(catatonit),
            args: vec!["-P"],
            version_flag: "-V",
        },
    ];
    println!(
        "| binary | size B | static | RSS KiB min / med | PSS KiB min / med | x10 PSS / USS KiB each | SIGTERM exit code | SIGTERM->exit us min / med | version exec us min / med |"
    );
    println!("|---|---:|---|---:|---:|---:|---|---:|---:|");
    for s in &subjects {
        println!("{}", measure(s));
    }
}
