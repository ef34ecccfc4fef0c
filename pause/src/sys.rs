//! The only `unsafe` code in podwire: raw Linux syscalls for x86_64, the process entry
//! point, and reading argv from the initial stack. Everything above this module is safe.
//!
//! Why raw syscalls: linking no libc keeps the binary ~2 KiB and makes it start without
//! glibc's static-startup cost (see docs/pause.md).
#![allow(unsafe_code)]

use core::arch::asm;

/// x86_64 syscall numbers (checked against the `libc` crate in unit tests).
pub mod nr {
    pub const WRITE: usize = 1;
    pub const CLOSE: usize = 3;
    pub const FSTAT: usize = 5;
    pub const POLL: usize = 7;
    pub const SENDTO: usize = 44;
    pub const OPENAT: usize = 257;
    pub const RT_SIGPROCMASK: usize = 14;
    pub const GETPID: usize = 39;
    pub const WAIT4: usize = 61;
    pub const CHDIR: usize = 80;
    pub const RT_SIGTIMEDWAIT: usize = 128;
    pub const EXIT_GROUP: usize = 231;
    pub const CLOSE_RANGE: usize = 436;
}

/// Kernel error numbers this module needs to tell apart.
pub const EINTR: isize = 4;
pub const EAGAIN: isize = 11;
pub const ECHILD: isize = 10;
pub const ENOSYS: isize = 38;

const SIG_SETMASK: usize = 2;
const WNOHANG: usize = 1;
/// The kernel's sigset is 64 bits on x86_64; rt_* calls take its size explicitly.
const SIGSET_SIZE: usize = 8;

/// A failed syscall: the positive errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub isize);

#[inline(always)]
fn check(ret: isize) -> Result<usize, Errno> {
    if (-4095..0).contains(&ret) {
        Err(Errno(-ret))
    } else {
        Ok(ret as usize)
    }
}

#[inline(always)]
unsafe fn syscall4(n: usize, a1: usize, a2: usize, a3: usize, a4: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller guarantees the arguments are valid for syscall `n`; the `syscall`
    // instruction clobbers only rcx and r11 (declared) and does not touch our stack.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a1,
            in("rsi") a2,
            in("rdx") a3,
            in("r10") a4,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Replace the signal mask with `mask` (bit n-1 = signal n).
pub fn set_sigmask(mask: u64) -> Result<(), Errno> {
    // SAFETY: `mask` is a valid 8-byte sigset for the duration of the call; old set is NULL.
    let ret = unsafe {
        syscall4(
            nr::RT_SIGPROCMASK,
            SIG_SETMASK,
            &mask as *const u64 as usize,
            0,
            SIGSET_SIZE,
        )
    };
    check(ret).map(|_| ())
}

/// Sleep until one of the (blocked) signals in `mask` is pending; return its number.
/// No timeout: the process has zero wakeups while idle.
pub fn wait_signal(mask: u64) -> Result<i32, Errno> {
    // SAFETY: `mask` is a valid sigset; siginfo and timeout are NULL, which the kernel allows.
    let ret = unsafe {
        syscall4(
            nr::RT_SIGTIMEDWAIT,
            &mask as *const u64 as usize,
            0,
            0,
            SIGSET_SIZE,
        )
    };
    check(ret).map(|s| s as i32)
}

/// Reap one exited child without blocking: Ok(pid), Ok(0) if children remain but none
/// has exited, Err(ECHILD) if there are no children.
pub fn reap_one() -> Result<i32, Errno> {
    // SAFETY: status and rusage pointers are NULL, which wait4 accepts.
    let ret = unsafe {
        syscall4(
            nr::WAIT4,
            usize::MAX, /* -1: any child */
            0,
            WNOHANG,
            0,
        )
    };
    check(ret).map(|p| p as i32)
}

#[inline(always)]
unsafe fn syscall6(n: usize, a: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: as for syscall4, with r8 and r9 carrying arguments 5 and 6.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

const S_IFMT: u32 = 0o170000;
const S_IFIFO: u32 = 0o010000;
const S_IFSOCK: u32 = 0o140000;
const O_WRONLY: usize = 1;
const O_NONBLOCK: usize = 0o4000;
const O_CLOEXEC: usize = 0o2000000;
const AT_FDCWD: usize = -100isize as usize;
const MSG_DONTWAIT: usize = 0x40;
const POLLOUT: u16 = 4;

/// The file type bits of `fd`'s mode.
fn file_type(fd: usize) -> Result<u32, Errno> {
    // struct stat is 144 bytes on x86_64; st_mode is the u32 at byte 24. Left
    // uninitialised (zeroing it would call memset, which a libc-less binary lacks).
    let mut st = core::mem::MaybeUninit::<[u64; 18]>::uninit();
    // SAFETY: `st` is a writable buffer of the kernel's struct stat size.
    let ret = unsafe { syscall4(nr::FSTAT, fd, st.as_mut_ptr() as usize, 0, 0) };
    check(ret)?;
    // SAFETY: fstat succeeded, so the kernel filled the whole struct.
    let st = unsafe { st.assume_init() };
    Ok((st[3] as u32) & S_IFMT)
}

/// Is `fd` writable right now?
fn writable_now(fd: usize) -> bool {
    // struct pollfd { int fd; short events; short revents; }
    let mut pfd: [u32; 2] = [fd as u32, POLLOUT as u32];
    // SAFETY: one valid pollfd, timeout 0 (never sleeps).
    let ret = unsafe { syscall4(nr::POLL, pfd.as_mut_ptr() as usize, 1, 0, 0) };
    check(ret).is_ok_and(|n| n == 1) && (pfd[1] >> 16) as u16 & POLLOUT != 0
}

/// Write `buf` to `fd` without ever blocking: a full pipe, a stuck socket reader or a
/// stopped terminal drop the line instead of holding the process. A pipe is reopened
/// through /proc with O_NONBLOCK (a description of our own: the runtime's flags stay
/// as they are); a socket is sent to with MSG_DONTWAIT; anything else is written only
/// when poll says it would not block.
pub fn write_nonblocking(fd: usize, buf: &[u8]) -> Result<usize, Errno> {
    match file_type(fd)? {
        S_IFIFO => {
            const PATH: &[u8] = b"/proc/self/fd/2\0";
            if fd == 2 {
                // SAFETY: PATH is NUL-terminated; the returned fd is closed below.
                let nfd = unsafe {
                    syscall4(
                        nr::OPENAT,
                        AT_FDCWD,
                        PATH.as_ptr() as usize,
                        O_WRONLY | O_NONBLOCK | O_CLOEXEC,
                        0,
                    )
                };
                if let Ok(nfd) = check(nfd) {
                    let r = write(nfd, buf);
                    // SAFETY: closes only the descriptor opened above.
                    unsafe { syscall4(nr::CLOSE, nfd, 0, 0, 0) };
                    return r;
                }
            }
        }
        S_IFSOCK => {
            // SAFETY: `buf` is valid for reads of its length; no address (connected).
            let ret = unsafe {
                syscall6(
                    nr::SENDTO,
                    [fd, buf.as_ptr() as usize, buf.len(), MSG_DONTWAIT, 0, 0],
                )
            };
            return check(ret);
        }
        _ => {}
    }
    if writable_now(fd) {
        write(fd, buf)
    } else {
        Err(Errno(EAGAIN))
    }
}

/// Write `buf` to `fd`, once; errors are returned, short writes ignored.
pub fn write(fd: usize, buf: &[u8]) -> Result<usize, Errno> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes during the call.
    let ret = unsafe { syscall4(nr::WRITE, fd, buf.as_ptr() as usize, buf.len(), 0) };
    check(ret)
}

pub fn getpid() -> i32 {
    // SAFETY: getpid takes no arguments and cannot fail.
    unsafe { syscall4(nr::GETPID, 0, 0, 0, 0) as i32 }
}

/// `chdir("/")`, so the sandbox does not pin the directory it was started in.
pub fn chdir_root() -> Result<(), Errno> {
    const ROOT: &[u8; 2] = b"/\0";
    // SAFETY: ROOT is a NUL-terminated static string.
    let ret = unsafe { syscall4(nr::CHDIR, ROOT.as_ptr() as usize, 0, 0, 0) };
    check(ret).map(|_| ())
}

/// Close every fd >= `first` (fds leaked by the runtime would be held for the pod's life).
pub fn close_from(first: u32) -> Result<(), Errno> {
    // SAFETY: close_range only closes descriptors; this process owns no Rust objects
    // wrapping fds >= 3 (it never opens any).
    let ret = unsafe { syscall4(nr::CLOSE_RANGE, first as usize, u32::MAX as usize, 0, 0) };
    check(ret).map(|_| ())
}

pub fn exit(code: i32) -> ! {
    // SAFETY: exit_group never returns.
    unsafe {
        asm!("syscall", in("rax") nr::EXIT_GROUP, in("rdi") code as isize, options(noreturn, nostack));
    }
}

/// argv as handed over by the kernel on the initial stack.
pub struct Args {
    next: *const *const u8,
    left: usize,
}

impl Args {
    /// # Safety
    /// `sp` must point at the initial process stack laid out by the kernel
    /// (argc, then argc pointers to NUL-terminated strings).
    #[cfg_attr(not(feature = "bin"), allow(dead_code))]
    unsafe fn from_stack(sp: *const usize) -> Args {
        // SAFETY: per the function contract, sp[0] is argc and argv follows it.
        unsafe {
            Args {
                left: *sp,
                next: sp.add(1) as *const *const u8,
            }
        }
    }
}

impl Iterator for Args {
    type Item = &'static [u8];
    fn next(&mut self) -> Option<&'static [u8]> {
        if self.left == 0 {
            return None;
        }
        // SAFETY: `left` counts the remaining argv entries, each a valid pointer to a
        // NUL-terminated string that lives (on the initial stack) for the whole process.
        unsafe {
            let s = *self.next;
            self.next = self.next.add(1);
            self.left -= 1;
            if s.is_null() {
                return None;
            }
            // A volatile read, or LLVM turns this loop into a call to libc's strlen,
            // which does not exist here.
            let mut len = 0;
            while core::ptr::read_volatile(s.add(len)) != 0 {
                len += 1;
            }
            Some(core::slice::from_raw_parts(s, len))
        }
    }
}

// The process entry point: the kernel jumps here with rsp at argc. Clear the frame pointer
// (end of backtraces), pass the stack pointer, and re-align the stack to 16 bytes as the
// SysV ABI requires at a call.
#[cfg(feature = "bin")]
core::arch::global_asm!(
    ".globl _start",
    ".type _start,@function",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {entry}",
    "ud2",
    entry = sym entry,
);

#[cfg(feature = "bin")]
unsafe extern "C" fn entry(sp: *const usize) -> ! {
    // SAFETY: only `_start` calls this, with the kernel's initial stack pointer.
    let args = unsafe { Args::from_stack(sp) };
    crate::run(args)
}
