//! Network namespaces, done the way `ip netns` does them, and safe with threads.
//!
//! * [`NetNs`] is an open handle (an fd on an nsfs file); it keeps the namespace alive and
//!   compares by device + inode.
//! * [`create`], [`pin`], [`remove`], [`list`] manage named namespaces under `/run/netns`,
//!   bit-compatible with iproute2 (`ip netns list/exec/del` work on ours and we open theirs).
//! * [`run_in`] runs a closure on a dedicated thread that enters the namespace and then
//!   exits, so the caller's thread never changes namespace (`setns` is per thread).
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::stat::fstat;
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};

/// Where named namespaces live (iproute2's `NETNS_RUN_DIR`).
pub const NETNS_RUN_DIR: &str = "/run/netns";
/// Longest accepted namespace name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// An error and its causes, one after the other: how a binary prints an error, once, at
/// its edge (messages never repeat their cause).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid network namespace name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("network namespace {path} does not exist")]
    NotFound { path: PathBuf },
    #[error("no such process: {pid}")]
    NoProcess { pid: i32 },
    #[error("{path} is not a network namespace (it is {found})")]
    NotNetNs { path: PathBuf, found: String },
    #[error("network namespace {name:?} already exists (and is a different namespace)")]
    Exists { name: String },
    #[error(
        "network namespace {path} is still mounted in another mount namespace; \
         unmount it there (or stop the process holding it) and retry"
    )]
    Busy { path: PathBuf },
    #[error("{op} {path}: permission denied (needs root: CAP_SYS_ADMIN)")]
    Permission { op: &'static str, path: PathBuf },
    #[error("{op} {path}")]
    Sys {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("code run inside network namespace {ns} panicked: {message}")]
    Panicked { ns: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn sys_err(op: &'static str, path: impl Into<PathBuf>, e: Errno) -> Error {
    let path = path.into();
    match e {
        Errno::EPERM | Errno::EACCES => Error::Permission { op, path },
        _ => Error::Sys {
            op,
            path,
            source: e,
        },
    }
}

fn io_err(op: &'static str, path: impl Into<PathBuf>, e: io::Error) -> Error {
    let path = path.into();
    match e.kind() {
        io::ErrorKind::PermissionDenied => Error::Permission { op, path },
        _ => Error::Io {
            op,
            path,
            source: e,
        },
    }
}

/// Check a namespace name: it becomes a file name under `/run/netns`.
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.len() > MAX_NAME_LEN {
        "longer than 128 bytes"
    } else if name == "." || name == ".." {
        "must not be '.' or '..'"
    } else if name.contains('/') {
        "must not contain '/'"
    } else if name.starts_with('-') {
        "must not start with '-'"
    } else if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        "must not contain whitespace or control characters"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: name.to_string(),
        reason,
    })
}

/// The path of a named namespace.
pub fn path_of(name: &str) -> Result<PathBuf> {
    validate_name(name)?;
    Ok(Path::new(NETNS_RUN_DIR).join(name))
}

/// An open network namespace. Holding it keeps the namespace alive.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    dev: u64,
    ino: u64,
    path: PathBuf,
}

impl PartialEq for NetNs {
    fn eq(&self, other: &Self) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}
impl Eq for NetNs {}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl std::fmt::Display for NetNs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (net:[{}])", self.path.display(), self.ino)
    }
}

impl NetNs {
    /// Open any path to a network namespace: `/run/netns/NAME`, `/proc/PID/ns/net`, or any
    /// other bind mount of one. A missing path and a path that is not a network namespace
    /// are distinct errors.
    pub fn open(path: impl AsRef<Path>) -> Result<NetNs> {
        let path = path.as_ref();
        // O_NONBLOCK: a FIFO planted where a namespace should be must not block the open.
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotFound { path: path.into() });
            }
            Err(e) => return Err(io_err("open", path, e)),
        };
        let fs = fstatfs(&file).map_err(|e| sys_err("statfs", path, e))?;
        if fs.filesystem_type() != NSFS_MAGIC {
            let found = if path.starts_with(NETNS_RUN_DIR) {
                "a plain file, not a mounted namespace".to_string()
            } else {
                "not a namespace file".to_string()
            };
            return Err(Error::NotNetNs {
                path: path.into(),
                found,
            });
        }
        let st = fstat(&file).map_err(|e| sys_err("stat", path, e))?;
        let kind = nsfs_kind(&file, st.st_ino)?;
        if kind != "net" {
            return Err(Error::NotNetNs {
                path: path.into(),
                found: format!("a {kind} namespace"),
            });
        }
        Ok(NetNs {
            file,
            dev: st.st_dev,
            ino: st.st_ino,
            path: path.into(),
        })
    }

    /// Open a named namespace (`/run/netns/NAME`).
    pub fn from_name(name: &str) -> Result<NetNs> {
        NetNs::open(path_of(name)?)
    }

    /// Open the network namespace of a process.
    pub fn from_pid(pid: i32) -> Result<NetNs> {
        if pid <= 0 {
            return Err(Error::NoProcess { pid });
        }
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        match NetNs::open(&path) {
            Err(Error::NotFound { .. }) => Err(Error::NoProcess { pid }),
            other => other,
        }
    }

    /// The calling thread's namespace (`/proc/thread-self/ns/net`; `/proc/self` would be the
    /// main thread's).
    pub fn current() -> Result<NetNs> {
        NetNs::open("/proc/thread-self/ns/net")
    }

    /// A fresh, unnamed namespace, alive for as long as the handle (or anything in it) is.
    pub fn new_anonymous() -> Result<NetNs> {
        on_own_thread("new anonymous namespace", || {
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| sys_err("unshare(CLONE_NEWNET)", "<new namespace>", e))?;
            NetNs::current()
        })?
    }

    /// The path this handle was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's inode number (as in `net:[INODE]`).
    pub fn inode(&self) -> u64 {
        self.ino
    }
}

/// The namespace type ("net", "mnt", "uts", ...) of an open nsfs file, with no ioctl
/// (that would need unsafe code). Opened via /proc/PID/ns/*, the fd links to
/// "<type>:[<inode>]". Opened via a bind mount it links to the mount path instead; then,
/// when privileged, `setns(fd, CLONE_NEWNET)` on a throwaway thread answers "net or not"
/// in constant time (the caller's thread never moves). Otherwise, or to name another
/// kind, mountinfo shows the bind mount's root as "<type>:[<inode>]" (nsfs inode numbers
/// are unique system-wide); it is O(mounts), so it stays off the hot path.
fn nsfs_kind(file: &File, ino: u64) -> Result<String> {
    let link = format!("/proc/thread-self/fd/{}", file.as_raw_fd());
    let target = fs::read_link(&link).map_err(|e| io_err("readlink", &link, e))?;
    let suffix = format!(":[{ino}]");
    if let Some(kind) = target.to_str().and_then(|t| t.strip_suffix(&suffix)) {
        return Ok(kind.to_string());
    }
    let probe = std::thread::scope(|s| {
        s.spawn(|| setns(file.as_fd(), CloneFlags::CLONE_NEWNET))
            .join()
            .unwrap_or(Err(Errno::EPERM))
    });
    if probe.is_ok() {
        return Ok("net".to_string());
    }
    let mi = "/proc/thread-self/mountinfo";
    let text = fs::read_to_string(mi).map_err(|e| io_err("read", mi, e))?;
    Ok(mountinfo_nsfs_kind(&text, &suffix).unwrap_or_else(|| "an unknown kind of".to_string()))
}

/// Find the namespace type of the nsfs mount whose root ends in `suffix` (":[INO]").
fn mountinfo_nsfs_kind(mountinfo: &str, suffix: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let root = line.split(' ').nth(3)?;
        let fstype = line.split(" - ").nth(1)?.split(' ').next()?;
        (fstype == "nsfs").then(|| root.strip_suffix(suffix).map(str::to_string))?
    })
}

/// Run `f` on a fresh thread that exits afterwards; a panic becomes an error.
fn on_own_thread<T: Send>(what: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("netns".into())
            .spawn_scoped(s, f)
            .map_err(|e| io_err("spawn thread for", what, e))?;
        handle.join().map_err(|p| Error::Panicked {
            ns: what.to_string(),
            message: panic_message(p.as_ref()),
        })
    })
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Run `f` inside `ns`, on a dedicated thread that enters it and then exits. The calling
/// thread never changes namespace; a panic in `f` comes back as [`Error::Panicked`].
/// Netlink sockets and `/proc/sys/net` files opened inside `f` belong to `ns`.
pub fn run_in<T: Send>(ns: &NetNs, f: impl FnOnce() -> T + Send) -> Result<T> {
    let label = ns.to_string();
    on_own_thread(&label, || -> Result<T> {
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| sys_err("setns", ns.path(), e))?;
        Ok(f())
    })?
}

/// Make `/run/netns` exist as a shared mount point bound onto itself, exactly as
/// `ip netns add` does, so mounts under it propagate to other mount namespaces.
fn ensure_run_dir() -> Result<()> {
    let dir = Path::new(NETNS_RUN_DIR);
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(io_err("mkdir", dir, e)),
    }
    // Serialise the check-and-mount across processes (iproute2 races here; we do not).
    let d = File::open(dir).map_err(|e| io_err("open", dir, e))?;
    let _lock =
        Flock::lock(d, FlockArg::LockExclusive).map_err(|(_, e)| sys_err("flock", dir, e))?;
    let mut bound = false;
    loop {
        match mount(
            None::<&str>,
            dir,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => return Ok(()),
            // EINVAL: not a mount point yet. Bind it onto itself once, then retry.
            Err(Errno::EINVAL) if !bound => {
                mount(
                    Some(dir),
                    dir,
                    Some("none"),
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|e| sys_err("bind-mount", dir, e))?;
                bound = true;
            }
            Err(e) => return Err(sys_err("make shared mount", dir, e)),
        }
    }
}

/// Create the empty mount-point file for `name`; `Ok(false)` if it already exists.
fn create_mount_file(path: &Path) -> Result<bool> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(path)
    {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_err("create", path, e)),
    }
}

/// Create a named, persistent namespace, like `ip netns add NAME`.
pub fn create(name: &str) -> Result<NetNs> {
    let path = path_of(name)?;
    ensure_run_dir()?;
    if !create_mount_file(&path)? {
        return Err(Error::Exists { name: name.into() });
    }
    let mounted = on_own_thread(name, || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| sys_err("unshare(CLONE_NEWNET)", &path, e))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &path,
            Some("none"),
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| sys_err("bind-mount namespace to", &path, e))
    })
    .and_then(|r| r);
    if let Err(e) = mounted {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    NetNs::open(&path)
}

/// Pin `ns` under `name` so it outlives every process in it (like `ip netns attach`).
/// Pinning the same namespace twice under one name is a no-op; a different namespace
/// under a taken name is [`Error::Exists`].
pub fn pin(name: &str, ns: &NetNs) -> Result<NetNs> {
    let path = path_of(name)?;
    ensure_run_dir()?;
    if !create_mount_file(&path)? {
        return match NetNs::open(&path) {
            Ok(existing) if existing == *ns => Ok(existing),
            Ok(_) => Err(Error::Exists { name: name.into() }),
            // A leftover empty file (a crash between create and mount): take it over.
            Err(Error::NotNetNs { .. }) => bind(&path, ns),
            Err(e) => Err(e),
        };
    }
    bind(&path, ns).inspect_err(|_| {
        let _ = fs::remove_file(&path);
    })
}

fn bind(path: &Path, ns: &NetNs) -> Result<NetNs> {
    let src = format!("/proc/thread-self/fd/{}", ns.as_fd().as_raw_fd());
    mount(
        Some(src.as_str()),
        path,
        Some("none"),
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| sys_err("bind-mount namespace to", path, e))?;
    NetNs::open(path)
}

/// Remove a named namespace, like `ip netns del NAME`.
pub fn remove(name: &str) -> Result<()> {
    unpin(path_of(name)?)
}

/// Unmount and delete a pinned namespace file anywhere (e.g. a runtime's own netns dir).
/// A missing file is [`Error::NotFound`]; an empty (unmounted) file is just deleted.
/// The namespace itself lives on while processes or handles still use it.
pub fn unpin(path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) => {}
        Err(Errno::ENOENT) => return Err(Error::NotFound { path: path.into() }),
        Err(e) => return Err(sys_err("unmount", path, e)),
    }
    // EBUSY: the file is still a mount point in another mount namespace (private
    // propagation), or a concurrent unmount is in flight. Retry briefly, then say so.
    let mut delay = Duration::from_millis(2);
    for _ in 0..8 {
        match fs::remove_file(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(Errno::EBUSY as i32) => {
                std::thread::sleep(delay);
                delay *= 2;
            }
            Err(e) => return Err(io_err("remove", path, e)),
        }
    }
    Err(Error::Busy { path: path.into() })
}

/// Names of the namespaces under `/run/netns`, sorted.
pub fn list() -> Result<Vec<String>> {
    let dir = Path::new(NETNS_RUN_DIR);
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read", dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_err("read", dir, e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Names under `/run/netns` that refer to the namespace of process `pid`
/// (like `ip netns identify PID`).
pub fn identify(pid: i32) -> Result<Vec<String>> {
    let target = NetNs::from_pid(pid)?;
    Ok(list()?
        .into_iter()
        .filter(|name| NetNs::from_name(name).is_ok_and(|ns| ns == target))
        .collect())
}

/// Replace the current process with `program` running inside `ns`, like
/// `ip netns exec`: enter the namespace, take a private mount namespace and remount
/// `/sys` so it shows the namespace's devices. Returns only on failure.
pub fn exec_in(ns: &NetNs, program: &str, args: &[String]) -> Error {
    use std::os::unix::process::CommandExt;
    if let Err(e) = setns(ns.as_fd(), CloneFlags::CLONE_NEWNET) {
        return sys_err("setns", ns.path(), e);
    }
    if let Err(e) = unshare(CloneFlags::CLONE_NEWNS) {
        return sys_err("unshare(CLONE_NEWNS) for", ns.path(), e);
    }
    // Stop our /sys remount from propagating back to the host.
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    ) {
        return sys_err("make mounts private under", "/", e);
    }
    match umount2("/sys", MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) => {}
        Err(e) => return sys_err("unmount", "/sys", e),
    }
    if let Err(e) = mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::empty(),
        None::<&str>,
    ) {
        return sys_err("mount sysfs on", "/sys", e);
    }
    let err = std::process::Command::new(program).args(args).exec();
    io_err("exec", program, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "a",
            "pod-1",
            "cni-47c62aa2-0000",
            "netns-x.y_z",
            &"n".repeat(128),
        ] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        let bad = [
            ("", "empty"),
            (".", "'.'"),
            ("..", "'..'"),
            ("a/b", "'/'"),
            ("../etc", "'/'"),
            ("-x", "'-'"),
            ("a b", "whitespace"),
            ("a\nb", "whitespace"),
            ("a\0b", "control"),
        ];
        for (name, why) in bad {
            let e = validate_name(name).expect_err(name).to_string();
            assert!(e.contains(why), "{name:?}: {e}");
        }
        let long = "n".repeat(129);
        assert!(
            validate_name(&long)
                .unwrap_err()
                .to_string()
                .contains("128")
        );
        assert_eq!(path_of("x").unwrap(), Path::new("/run/netns/x"));
    }

    #[test]
    fn error_mapping() {
        assert!(matches!(
            sys_err("mount", "/x", Errno::EPERM),
            Error::Permission { op: "mount", .. }
        ));
        assert!(matches!(
            sys_err("mount", "/x", Errno::EACCES),
            Error::Permission { .. }
        ));
        let e = sys_err("mount", "/x", Errno::EBUSY);
        assert!(matches!(
            e,
            Error::Sys {
                source: Errno::EBUSY,
                ..
            }
        ));
        assert_eq!(e.to_string(), "mount /x", "the cause is not repeated");
        assert!(error_chain(&e).starts_with("mount /x: "));
        assert!(std::error::Error::source(&e).is_some());
        let e = io_err(
            "open",
            "/y",
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        assert!(e.to_string().contains("CAP_SYS_ADMIN"));
    }

    #[test]
    fn mountinfo_parsing() {
        let mi = "22 1 0:5 / /proc rw - proc proc rw\n\
                  400 30 0:4 net:[4026532281] /run/netns/a rw shared:5 - nsfs nsfs rw\n\
                  401 30 0:4 mnt:[4026532999] /run/x rw - nsfs nsfs rw\n";
        assert_eq!(
            mountinfo_nsfs_kind(mi, ":[4026532281]").as_deref(),
            Some("net")
        );
        assert_eq!(
            mountinfo_nsfs_kind(mi, ":[4026532999]").as_deref(),
            Some("mnt")
        );
        assert_eq!(mountinfo_nsfs_kind(mi, ":[1]"), None);
    }

    #[test]
    fn open_distinguishes_missing_from_not_a_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(matches!(NetNs::open(&missing), Err(Error::NotFound { .. })));
        let plain = dir.path().join("plain");
        fs::write(&plain, b"").unwrap();
        assert!(matches!(NetNs::open(&plain), Err(Error::NotNetNs { .. })));
        // Another kind of namespace is not a network namespace either.
        let e = NetNs::open("/proc/thread-self/ns/uts").unwrap_err();
        assert!(e.to_string().contains("uts namespace"), "{e}");
    }

    #[test]
    fn current_thread_namespace_opens_and_compares() {
        let a = NetNs::current().unwrap();
        let b = NetNs::open(format!("/proc/{}/ns/net", std::process::id())).unwrap();
        assert_eq!(a, b);
        assert!(a.inode() > 0);
        assert!(matches!(
            NetNs::from_pid(0),
            Err(Error::NoProcess { pid: 0 })
        ));
        assert!(matches!(
            NetNs::from_pid(i32::MAX),
            Err(Error::NoProcess { .. })
        ));
    }

    #[test]
    fn panics_in_own_thread_become_errors() {
        let r: Result<()> = on_own_thread("t", || panic!("boom {}", 7));
        match r {
            Err(Error::Panicked { message, .. }) => assert_eq!(message, "boom 7"),
            other => panic!("unexpected {other:?}"),
        }
        // run_in into our own namespace needs no privilege beyond what setns checks:
        // joining the namespace we are already in is allowed for root only, so only the
        // panic path is covered here; tests/ covers run_in for real.
    }
}
