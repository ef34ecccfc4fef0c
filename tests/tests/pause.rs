//! Privileged tests of the pause binary as real processes: PID 1 of a new pid namespace
//! (unshare), a plain process, and the only file of a runc container's rootfs.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use podwire_testkit::*;

const LIMIT: Duration = Duration::from_secs(20);

/// Kills the process tree root on drop, so a failing test leaves nothing running.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stat_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the ")" that closes the command name.
    s.rsplit_once(") ")?.1.chars().next()
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Wait until `pid` runs `exe` and sleeps (pause sleeps only in rt_sigtimedwait, after
/// its signal mask is in place).
fn wait_ready(pid: i32, exe: &Path) {
    wait_for("process ready", LIMIT, || {
        let target = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        (target == exe && stat_state(pid) == Some('S')).then_some(())
    });
}

/// Start `exe args` as PID 1 of a new pid namespace; returns the unshare process and
/// the host pid of the namespace's init.
fn start_pid1(exe: &Path, args: &[&str]) -> (Guard, i32) {
    require_root();
    let child = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", "--"])
        .arg(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn unshare");
    let upid = child.id() as i32;
    let guard = Guard(child);
    let init = wait_for("pid namespace init", LIMIT, || {
        children(upid).first().copied()
    });
    wait_ready(init, exe);
    (guard, init)
}

fn exit_of(mut g: Guard) -> (Option<i32>, String) {
    let status = wait_for("exit", LIMIT, || g.0.try_wait().expect("try_wait"));
    let mut err = String::new();
    if let Some(mut e) = g.0.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    (status.code(), err)
}

/// Make `n` orphans inside init's pid namespace: a shell forks n subshells that exit
/// later, and exits first, so they are re-parented to init and become its zombies
/// unless init reaps them. Returns the zombies left once every orphan has exited.
fn zombies_left_after_orphans(init: i32, n: usize) -> usize {
    let script = format!("for i in $(seq {n}); do (sleep 0.3; exit 7) & done; exit 0");
    ok(
        "nsenter",
        &["-t", &init.to_string(), "-p", "--", "sh", "-c", &script],
    );
    // All orphans are attached to init once the shell is gone; wait until none is alive.
    wait_for("orphans to exit", LIMIT, || {
        children(init)
            .iter()
            .all(|&c| matches!(stat_state(c), Some('Z') | None))
            .then_some(())
    });
    // Grace for the reaper to run (a tolerance, not a timing assertion).
    std::thread::sleep(Duration::from_millis(300));
    children(init)
        .iter()
        .filter(|&&c| stat_state(c) == Some('Z'))
        .count()
}

#[test]
fn binary_is_static_tiny_and_relocation_free() {
    let p = pause_bin();
    let file = ok("file", &[p.to_str().unwrap()]);
    assert!(file.contains("statically linked"), "{file}");
    assert!(!file.contains("interpreter"), "{file}");
    let phdrs = ok("readelf", &["-lW", p.to_str().unwrap()]);
    assert!(!phdrs.contains("INTERP"), "{phdrs}");
    let relocs = ok("readelf", &["-r", p.to_str().unwrap()]);
    assert!(relocs.contains("There are no relocations"), "{relocs}");
    let size = std::fs::metadata(&p).unwrap().len();
    assert!(size <= 4096, "pause is {size} bytes; the budget is 4 KiB");
}

#[test]
fn version_flag_in_any_position_and_case() {
    let p = pause_bin();
    for args in [&["-v"][..], &["-V"], &["--unknown", "x", "-v"]] {
        let out = Command::new(&p).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let s = String::from_utf8(out.stdout).unwrap();
        assert!(
            s.starts_with("pause ") && s.ends_with("(podwire)\n"),
            "{s:?}"
        );
    }
}

#[test]
fn sigterm_and_sigint_exit_0_as_pid1() {
    let p = pause_bin();
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let (g, init) = start_pid1(&p, &[]);
        kill(Pid::from_raw(init), sig).unwrap();
        let (code, err) = exit_of(g);
        assert_eq!(code, Some(0), "{sig} from the host namespace");
        assert!(!err.contains("first process"), "no warning as PID 1: {err}");
        assert!(err.contains("Shutting down"), "{err}");
    }
    // From inside the namespace, `kill -TERM 1` also ends it with 0.
    let (g, init) = start_pid1(&p, &[]);
    // When init exits the kernel SIGKILLs the rest of the namespace, which may include
    // this `kill` before it reports success: only pause's exit status is meaningful.
    let _ = run(
        "nsenter",
        &["-t", &init.to_string(), "-p", "--", "kill", "-TERM", "1"],
    );
    assert_eq!(exit_of(g).0, Some(0));
}

#[test]
fn stray_signals_are_ignored_as_pid1() {
    let p = pause_bin();
    let (g, init) = start_pid1(&p, &[]);
    let strays = [
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGQUIT,
        Signal::SIGPIPE,
        Signal::SIGWINCH,
        Signal::SIGALRM,
    ];
    for sig in strays {
        kill(Pid::from_raw(init), sig).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        stat_state(init),
        Some('S'),
        "still running after stray signals"
    );
    kill(Pid::from_raw(init), Signal::SIGTERM).unwrap();
    assert_eq!(exit_of(g).0, Some(0));
}

#[test]
fn not_pid1_warns_once_ignores_strays_chdirs_closes_fds_and_idles() {
    require_root();
    let p = pause_bin();
    // Start from /tmp with inherited fds 7 and 8 open, as a sloppy runtime might.
    let script = format!(
        "exec 7</dev/null 8</dev/null; cd /tmp; exec {} some-arg",
        p.display()
    );
    let child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let g = Guard(child);
    wait_ready(pid, &p);
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        Path::new("/")
    );
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    fds.sort();
    assert_eq!(fds, ["0", "1", "2"], "inherited fds >= 3 are closed");

    // Idle means no wakeups: the context-switch counters do not move.
    let switches = || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let before = switches();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(before, switches(), "pause woke up while idle");

    for sig in [
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGQUIT,
        Signal::SIGPIPE,
    ] {
        kill(Pid::from_raw(pid), sig).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        stat_state(pid),
        Some('S'),
        "stray signals must not kill pause (not PID 1)"
    );
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    let (code, err) = exit_of(g);
    assert_eq!(code, Some(0));
    assert_eq!(
        err.matches("Warning: pause should be the first process")
            .count(),
        1,
        "{err}"
    );
}

#[test]
fn reaps_one_orphan_and_a_burst_of_50_as_pid1() {
    let p = pause_bin();
    let (g, init) = start_pid1(&p, &[]);
    assert_eq!(zombies_left_after_orphans(init, 1), 0);
    assert_eq!(
        zombies_left_after_orphans(init, 50),
        0,
        "SIGCHLDs coalesce: drain them all"
    );
    kill(Pid::from_raw(init), Signal::SIGTERM).unwrap();
    assert_eq!(exit_of(g).0, Some(0));
}

#[test]
fn negative_control_a_non_reaping_pid1_fails_the_zombie_test() {
    // coreutils `sleep` never waits for children: the same measurement must see zombies,
    // or the zombie test above would prove nothing.
    let sleep = std::fs::canonicalize("/usr/bin/sleep").expect("coreutils sleep");
    let (_g, init) = start_pid1(&sleep, &["infinity"]);
    assert_eq!(zombies_left_after_orphans(init, 50), 50);
}

#[test]
fn runs_as_the_only_file_of_a_runc_rootfs_as_user_65535() {
    require_root();
    require_tool("runc");
    let dir = TempDir::new("runc-pause");
    let bundle = dir.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::copy(pause_bin(), rootfs.join("pause")).unwrap();
    ok("runc", &["spec", "--bundle", bundle.to_str().unwrap()]);
    let cfg_path = bundle.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = serde_json::json!(["/pause"]);
    cfg["process"]["user"] = serde_json::json!({"uid": 65535, "gid": 65535});
    cfg["root"] = serde_json::json!({"path": "rootfs", "readonly": true});
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();

    let state = dir.path().join("state");
    let id = unique_name("pause");
    let runc = |args: &[&str]| {
        let mut a = vec!["--root", state.to_str().unwrap()];
        a.extend_from_slice(args);
        run("runc", &a)
    };
    struct Delete<'a>(&'a dyn Fn(&[&str]) -> std::process::Output, String);
    impl Drop for Delete<'_> {
        fn drop(&mut self) {
            (self.0)(&["delete", "--force", &self.1]);
        }
    }
    let _cleanup = Delete(&runc, id.clone());
    let child = Command::new("runc")
        .args([
            "--root",
            state.to_str().unwrap(),
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            &id,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let g = Guard(child);
    let pid = wait_for("container running", LIMIT, || {
        let out = runc(&["state", &id]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["status"] == "running").then(|| v["pid"].as_i64())?
    }) as i32;
    wait_ready(pid, Path::new("/pause"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65535")),
        "{status}"
    );
    // It holds a network namespace of its own.
    assert_ne!(NetNs::from_pid(pid).unwrap(), NetNs::current().unwrap());
    ok(
        "runc",
        &["--root", state.to_str().unwrap(), "kill", &id, "TERM"],
    );
    let (code, err) = exit_of(g);
    assert_eq!(
        code,
        Some(0),
        "runc run returns the container's exit code; stderr: {err}"
    );
}

#[test]
fn reaps_a_burst_of_1000_and_rss_stays_flat_under_a_signal_storm() {
    let p = pause_bin();
    let (g, init) = start_pid1(&p, &[]);
    assert_eq!(
        zombies_left_after_orphans(init, 1000),
        0,
        "1000 orphans reaped"
    );
    let rss = || {
        std::fs::read_to_string(format!("/proc/{init}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
    };
    let before = rss();
    // An hour-equivalent storm: 100k SIGCHLD and SIGHUP (ignored or no child to reap).
    for i in 0..100_000 {
        let sig = if i % 2 == 0 {
            Signal::SIGCHLD
        } else {
            Signal::SIGHUP
        };
        kill(Pid::from_raw(init), sig).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(stat_state(init), Some('S'), "pause survives the storm");
    let after = rss();
    assert!(after <= before, "RSS grew from {before} kB to {after} kB");
    kill(Pid::from_raw(init), Signal::SIGTERM).unwrap();
    assert_eq!(exit_of(g).0, Some(0));
}

/// The syscall a process sleeps in (`/proc/PID/syscall`'s first field).
fn syscall_of(pid: i32) -> Option<i64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// pause, not PID 1, with `stderr` as its stderr (already full): it must reach its signal
/// wait past the warning, and exit 0 on SIGTERM past its shutdown line.
fn sigterm_exits_0_with_a_full_stderr(stderr: std::os::fd::OwnedFd) {
    let child = Command::new(pause_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut g = Guard(child);
    // rt_sigtimedwait (128): past the warning, waiting for signals.
    wait_for("pause to wait for signals", LIMIT, || {
        (syscall_of(pid) == Some(128)).then_some(())
    });
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    let status = wait_for("pause to exit on SIGTERM", LIMIT, || {
        g.0.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigterm_exits_0_while_stderr_is_a_full_pipe() {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    require_root();
    let (rd, wr) = nix::unistd::pipe().unwrap();
    // Fill the pipe, then make the description blocking again, as a runtime's log pipe
    // whose reader stalled would be.
    fcntl(&wr, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    let chunk = [b'x'; 4096];
    while nix::unistd::write(&wr, &chunk).is_ok() {}
    fcntl(&wr, FcntlArg::F_SETFL(OFlag::empty())).unwrap();
    sigterm_exits_0_with_a_full_stderr(wr);
    drop(rd);
}

#[test]
fn sigterm_exits_0_while_stderr_is_a_full_socket() {
    use std::io::Write;
    require_root();
    // A log collector's socket whose reader stalled (journald-style stderr).
    let (mut wr, rd) = std::os::unix::net::UnixStream::pair().unwrap();
    wr.set_nonblocking(true).unwrap();
    while wr.write(&[b'x'; 4096]).is_ok() {}
    wr.set_nonblocking(false).unwrap();
    sigterm_exits_0_with_a_full_stderr(wr.into());
    drop(rd);
}
