//! `pause`: PID 1 of a pod sandbox. It holds the pod's namespaces open by living, reaps
//! zombies, exits 0 on SIGTERM/SIGINT and ignores every other signal.
//!
//! Design: block every asynchronous signal first thing and wait for them synchronously
//! (`rt_sigtimedwait`, no timeout). No handlers means no async-signal-safety hazards, no
//! idle wakeups, immunity to inherited `SIG_IGN`, and no dependence on the kernel's PID-1
//! signal filter. The synchronous fault signals stay unblocked so a bug crashes loudly.
//!
//! The policy below is pure and unit-tested; `sys` holds the raw syscalls.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

#[cfg(not(target_arch = "x86_64"))]
compile_error!("pause: only x86_64 syscalls are implemented (see src/sys.rs)");

pub mod sys;

pub const SIGHUP: i32 = 1;
pub const SIGINT: i32 = 2;
pub const SIGQUIT: i32 = 3;
pub const SIGILL: i32 = 4;
pub const SIGTRAP: i32 = 5;
pub const SIGABRT: i32 = 6;
pub const SIGBUS: i32 = 7;
pub const SIGFPE: i32 = 8;
pub const SIGKILL: i32 = 9;
pub const SIGUSR1: i32 = 10;
pub const SIGSEGV: i32 = 11;
pub const SIGPIPE: i32 = 13;
pub const SIGTERM: i32 = 15;
pub const SIGCHLD: i32 = 17;
pub const SIGSTOP: i32 = 19;
pub const SIGSYS: i32 = 31;

/// Signals raised synchronously by a fault in this process: left unblocked so that a bug
/// kills the process visibly instead of being waited for (and lost).
pub const SYNC_FAULTS: [i32; 7] = [SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV, SIGSYS];

const fn bit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

/// The signal mask pause runs with: every signal (1..=64) except the synchronous faults.
/// (SIGKILL/SIGSTOP cannot be blocked; the kernel ignores their bits.)
pub const fn blocked_mask() -> u64 {
    let mut m = u64::MAX;
    let mut i = 0;
    while i < SYNC_FAULTS.len() {
        m &= !bit(SYNC_FAULTS[i]);
        i += 1;
    }
    m
}

/// What pause does when it dequeues a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// SIGTERM, SIGINT: print one line, exit 0.
    Exit,
    /// SIGCHLD: reap every exited child (SIGCHLDs coalesce, so drain until none is left).
    Reap,
    /// Everything else (HUP, USR1/2, QUIT, PIPE, WINCH, ALRM, TSTP, real-time...): nothing.
    Ignore,
}

pub const fn action_for(sig: i32) -> Action {
    match sig {
        SIGTERM | SIGINT => Action::Exit,
        SIGCHLD => Action::Reap,
        _ => Action::Ignore,
    }
}

/// True if any argument is `-v`, case-insensitively (as kubernetes' pause does).
pub fn wants_version<'a>(args: impl IntoIterator<Item = &'a [u8]>) -> bool {
    args.into_iter().any(|a| a.eq_ignore_ascii_case(b"-v"))
}

pub const VERSION_LINE: &str = concat!("pause ", env!("CARGO_PKG_VERSION"), " (podwire)\n");
pub const WARN_NOT_PID1: &[u8] = b"Warning: pause should be the first process\n";

/// The one line printed on shutdown, matching kubernetes' pause wording.
pub const fn shutdown_line(sig: i32) -> &'static [u8] {
    match sig {
        SIGINT => b"Shutting down, got signal: Interrupt\n",
        _ => b"Shutting down, got signal: Terminated\n",
    }
}

/// Exit codes for setup failures (the only non-zero exits).
pub mod exit_code {
    pub const SIGMASK: i32 = 1;
    pub const CHDIR: i32 = 2;
    pub const CLOSE_FDS: i32 = 3;
    pub const WAIT: i32 = 4;
}

/// Reap exited children until none is left to reap right now.
fn reap_all() {
    // Ok(0): live children, none exited; Err(ECHILD): no children; EINTR cannot happen
    // with every signal blocked, but retrying is harmless.
    loop {
        match sys::reap_one() {
            Ok(pid) if pid > 0 => continue,
            Err(sys::Errno(sys::EINTR)) => continue,
            _ => break,
        }
    }
}

/// The whole program. Called from `_start` (see `sys`).
pub fn run(args: sys::Args) -> ! {
    let mask = blocked_mask();
    if sys::set_sigmask(mask).is_err() {
        sys::exit(exit_code::SIGMASK);
    }
    if wants_version(args) {
        let _ = sys::write(1, VERSION_LINE.as_bytes());
        sys::exit(0);
    }
    if sys::getpid() != 1 {
        // Not fatal (kubernetes' pause carries on too), e.g. under `docker run --pid=host`.
        let _ = sys::write_nonblocking(2, WARN_NOT_PID1);
    }
    if sys::chdir_root().is_err() {
        sys::exit(exit_code::CHDIR);
    }
    match sys::close_from(3) {
        Ok(()) | Err(sys::Errno(sys::ENOSYS)) => {}
        Err(_) => sys::exit(exit_code::CLOSE_FDS),
    }
    // Children inherited across exec may already be zombies: their SIGCHLD came before us.
    reap_all();
    loop {
        match sys::wait_signal(mask) {
            Ok(sig) => match action_for(sig) {
                Action::Exit => {
                    let _ = sys::write_nonblocking(2, shutdown_line(sig));
                    sys::exit(0);
                }
                Action::Reap => reap_all(),
                Action::Ignore => {}
            },
            // Interrupted by a stop/continue or ptrace: just wait again.
            Err(sys::Errno(sys::EINTR)) => {}
            Err(_) => sys::exit(exit_code::WAIT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_numbers_match_libc() {
        assert_eq!(SIGHUP, libc::SIGHUP);
        assert_eq!(SIGINT, libc::SIGINT);
        assert_eq!(SIGQUIT, libc::SIGQUIT);
        assert_eq!(SIGILL, libc::SIGILL);
        assert_eq!(SIGTRAP, libc::SIGTRAP);
        assert_eq!(SIGABRT, libc::SIGABRT);
        assert_eq!(SIGBUS, libc::SIGBUS);
        assert_eq!(SIGFPE, libc::SIGFPE);
        assert_eq!(SIGKILL, libc::SIGKILL);
        assert_eq!(SIGUSR1, libc::SIGUSR1);
        assert_eq!(SIGSEGV, libc::SIGSEGV);
        assert_eq!(SIGPIPE, libc::SIGPIPE);
        assert_eq!(SIGTERM, libc::SIGTERM);
        assert_eq!(SIGCHLD, libc::SIGCHLD);
        assert_eq!(SIGSTOP, libc::SIGSTOP);
        assert_eq!(SIGSYS, libc::SIGSYS);
    }

    #[test]
    fn syscall_numbers_match_libc() {
        assert_eq!(sys::nr::WRITE as i64, libc::SYS_write);
        assert_eq!(sys::nr::CLOSE as i64, libc::SYS_close);
        assert_eq!(sys::nr::FSTAT as i64, libc::SYS_fstat);
        assert_eq!(sys::nr::POLL as i64, libc::SYS_poll);
        assert_eq!(sys::nr::SENDTO as i64, libc::SYS_sendto);
        assert_eq!(sys::nr::OPENAT as i64, libc::SYS_openat);
        assert_eq!(sys::nr::RT_SIGPROCMASK as i64, libc::SYS_rt_sigprocmask);
        assert_eq!(sys::nr::GETPID as i64, libc::SYS_getpid);
        assert_eq!(sys::nr::WAIT4 as i64, libc::SYS_wait4);
        assert_eq!(sys::nr::CHDIR as i64, libc::SYS_chdir);
        assert_eq!(sys::nr::RT_SIGTIMEDWAIT as i64, libc::SYS_rt_sigtimedwait);
        assert_eq!(sys::nr::EXIT_GROUP as i64, libc::SYS_exit_group);
        assert_eq!(sys::nr::CLOSE_RANGE as i64, libc::SYS_close_range);
        assert_eq!(sys::EINTR as i32, libc::EINTR);
        assert_eq!(sys::ECHILD as i32, libc::ECHILD);
        assert_eq!(sys::ENOSYS as i32, libc::ENOSYS);
    }

    #[test]
    fn mask_blocks_everything_but_sync_faults() {
        let m = blocked_mask();
        for sig in 1..=64 {
            let blocked = m & (1u64 << (sig - 1)) != 0;
            assert_eq!(blocked, !SYNC_FAULTS.contains(&sig), "signal {sig}");
        }
        for sig in [
            SIGTERM, SIGINT, SIGCHLD, SIGHUP, SIGUSR1, SIGQUIT, SIGPIPE, 34, 64,
        ] {
            assert!(m & (1u64 << (sig - 1)) != 0, "signal {sig} must be blocked");
        }
    }

    #[test]
    fn actions() {
        assert_eq!(action_for(SIGTERM), Action::Exit);
        assert_eq!(action_for(SIGINT), Action::Exit);
        assert_eq!(action_for(SIGCHLD), Action::Reap);
        for sig in [
            SIGHUP,
            SIGQUIT,
            SIGUSR1,
            SIGPIPE,
            libc::SIGUSR2,
            libc::SIGWINCH,
            40,
        ] {
            assert_eq!(action_for(sig), Action::Ignore, "signal {sig}");
        }
    }

    #[test]
    fn version_flag_anywhere_any_case() {
        let v = |a: &[&str]| wants_version(a.iter().map(|s| s.as_bytes()));
        assert!(v(&["/pause", "-v"]));
        assert!(v(&["/pause", "-V"]));
        assert!(v(&["/pause", "--unknown", "x", "-v"]));
        assert!(!v(&["/pause"]));
        assert!(!v(&["/pause", "-vv", "--version", "v"]));
        assert!(!v(&[]));
    }

    #[test]
    fn shutdown_lines() {
        assert_eq!(
            shutdown_line(SIGINT),
            b"Shutting down, got signal: Interrupt\n"
        );
        assert_eq!(
            shutdown_line(SIGTERM),
            b"Shutting down, got signal: Terminated\n"
        );
        assert!(VERSION_LINE.starts_with("pause ") && VERSION_LINE.ends_with('\n'));
    }

    // The raw wrappers against the real kernel, compared with std/libc.
    #[test]
    fn raw_getpid_matches_std() {
        assert_eq!(sys::getpid() as u32, std::process::id());
    }

    #[test]
    fn raw_write_and_errors() {
        // fd 1_000_000 is never open: EBADF comes back as Errno, not a panic.
        assert_eq!(
            sys::write(1_000_000, b"x"),
            Err(sys::Errno(libc::EBADF as isize))
        );
    }

    #[test]
    fn raw_reap_without_children_is_echild() {
        // The test harness thread has no unreaped children of its own at this point,
        // unless other tests spawned some; accept "none exited yet" too.
        match sys::reap_one() {
            Err(sys::Errno(e)) => assert_eq!(e, sys::ECHILD),
            Ok(pid) => assert!(pid >= 0),
        }
    }
}
