//! File-backed IPAM with CNI host-local's on-disk layout, so either can read the other's
//! state: `<dataDir>/<network>/` holds one file per reserved address, named by the address
//! and holding `"<containerID>\r\n<ifname>"`, a `last_reserved_ip.<set>` file per range set
//! (allocation is round-robin after it), and a `lock` file. Every operation holds an
//! exclusive flock on `lock`, so concurrent invocations never hand out one address twice.
//!
//! Records are written crash-safely: content goes to a temporary file first, which is then
//! hard-linked to the address's name (`link` fails atomically if the name exists), so a
//! record is never seen half-written. Nothing here follows a symlink planted in the dir.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::config::{Network, Range, next_ip};
use crate::{Error, Result};

const LINE_BREAK: &str = "\r\n";
const LAST_RESERVED: &str = "last_reserved_ip.";
/// First line of an attachment's note (the file its lock is taken on).
const NOTE_HEADER: &str = "podwire-attachment 1";

/// One reserved address and the range it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: IpAddr,
    pub range: Range,
    pub set: usize,
}

/// The per-network state directory, locked for as long as this value lives.
pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

/// Options that never follow a planted symlink and never block on a planted FIFO.
fn nofollow() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC);
    o
}

/// Read a small file of the store (no link followed, no FIFO blocked on).
fn read_small(path: &Path, max: u64) -> io::Result<String> {
    let v = crate::read_bounded(path, max, true)?;
    String::from_utf8(v).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Create a new temporary file in `dir` exclusively (O_EXCL, no link followed): a name
/// planted in advance, as a symlink or a hard link, is never written through; another
/// name is tried instead.
fn create_tmp(dir: &Path, tag: &str) -> io::Result<(PathBuf, File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
    for _ in 0..16 {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = dir.join(format!(".tmp-{}-{n}-{nanos:08x}-{tag}", std::process::id()));
        match nofollow().write(true).create_new(true).mode(0o644).open(&p) {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Write `content` to a fresh temporary file; on any error the file is gone.
fn write_tmp(dir: &Path, tag: &str, content: &[u8]) -> io::Result<PathBuf> {
    let (tmp, mut f) = create_tmp(dir, tag)?;
    match f.write_all(content) {
        Ok(()) => Ok(tmp),
        Err(e) => {
            drop(f);
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Serialises every operation on one attachment (network, container id, ifname): ADD,
/// DEL and GC of the same attachment never overlap, so a DEL cannot release what an ADD
/// in flight reserved. A flock on `<dataDir>/<network>/attachments/<host veth name>`,
/// taken before the network's IPAM lock (GC only ever try-locks it, so no deadlock).
pub struct AttachmentLock {
    path: PathBuf,
    lock: Flock<File>,
}

impl AttachmentLock {
    fn dir(data_dir: &Path, network: &str) -> Result<PathBuf> {
        let dir = data_dir.join(network).join("attachments");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io("create attachment lock dir", &dir, e))?;
        for d in [data_dir.join(network), dir.clone()] {
            let meta = fs::symlink_metadata(&d).map_err(|e| Error::io("stat", &d, e))?;
            if !meta.is_dir() {
                return Err(Error::io(
                    "not a directory (a symlink?)",
                    &d,
                    io::Error::from(io::ErrorKind::InvalidInput),
                ));
            }
        }
        Ok(dir)
    }

    /// Wait for the attachment's lock.
    pub fn acquire(net: &Network, id: &str, ifname: &str) -> Result<AttachmentLock> {
        let name = crate::plan::host_veth_name(id, ifname);
        match Self::lock(&net.data_dir, &net.name, &name, true)? {
            Some(l) => Ok(l),
            None => Err(Error::io(
                "lock attachment",
                net.data_dir.join(&net.name).join("attachments").join(&name),
                io::Error::from(io::ErrorKind::WouldBlock),
            )),
        }
    }

    /// Take the lock of the attachment whose host veth is `veth_name`; None if `wait` is
    /// false and an operation holds it.
    pub fn lock(
        data_dir: &Path,
        network: &str,
        veth_name: &str,
        wait: bool,
    ) -> Result<Option<AttachmentLock>> {
        let path = Self::dir(data_dir, network)?.join(veth_name);
        loop {
            let f = nofollow()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(|e| Error::io("open attachment lock", &path, e))?;
            let meta = f
                .metadata()
                .map_err(|e| Error::io("stat attachment lock", &path, e))?;
            if !meta.is_file() {
                return Err(Error::io(
                    "attachment lock is not a regular file",
                    &path,
                    io::Error::from(io::ErrorKind::InvalidData),
                ));
            }
            let arg = if wait {
                FlockArg::LockExclusive
            } else {
                FlockArg::LockExclusiveNonblock
            };
            let lock = match Flock::lock(f, arg) {
                Ok(l) => l,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) if !wait => return Ok(None),
                Err((_, e)) => return Err(Error::io("lock attachment", &path, e.into())),
            };
            // The holder before us may have removed the file (a finished DEL): lock the
            // file that is there now.
            use std::os::unix::fs::MetadataExt;
            match fs::symlink_metadata(&path) {
                Ok(now) if now.ino() == meta.ino() && now.dev() == meta.dev() => {
                    return Ok(Some(AttachmentLock { path, lock }));
                }
                _ => continue,
            }
        }
    }

    /// The addresses this attachment's ADDs noted (a superset of what it holds: each is
    /// noted before its record is linked). None if nothing was ever noted.
    pub fn noted(&self) -> Option<Vec<IpAddr>> {
        use std::os::unix::fs::FileExt;
        // pread from the start: the fd's offset is never moved. A note is a few lines;
        // more than 64 KiB is not one of ours.
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        loop {
            match self.lock.read_at(&mut chunk, buf.len() as u64) {
                Ok(0) => break,
                Ok(n) if buf.len() + n <= 64 * 1024 => buf.extend_from_slice(&chunk[..n]),
                Ok(_) | Err(_) => return None,
            }
        }
        let s = String::from_utf8_lossy(&buf);
        let mut lines = s.lines();
        if lines.next() != Some(NOTE_HEADER) {
            return None;
        }
        Some(
            lines
                .flat_map(|l| l.split_whitespace())
                .filter_map(|t| t.parse().ok())
                .collect(),
        )
    }

    /// Replace the note with `ips`.
    pub fn note(&self, ips: &[IpAddr]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let mut text = format!("{NOTE_HEADER}\n");
        for ip in ips {
            text.push_str(&ip.to_string());
            text.push('\n');
        }
        let f: &File = &self.lock;
        f.set_len(0)
            .and_then(|()| f.write_all_at(text.as_bytes(), 0))
            .map_err(|e| Error::io("note attachment addresses", &self.path, e))
    }

    /// Drop the lock and its file (the attachment is gone, or was never made).
    pub fn remove(self) {
        let _ = fs::remove_file(&self.path);
        drop(self.lock);
    }

    /// The host veth names that have a lock file in the network's dir, sorted.
    pub fn list(data_dir: &Path, network: &str) -> Vec<String> {
        let dir = data_dir.join(network).join("attachments");
        let Ok(rd) = fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut v: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        v.sort();
        v
    }
}

impl Store {
    /// Open (creating it if needed) and lock the state directory of `network`.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store> {
        let dir = data_dir.join(network);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| Error::io("create IPAM dir", &dir, e))?;
        let meta = fs::symlink_metadata(&dir).map_err(|e| Error::io("stat", &dir, e))?;
        if !meta.is_dir() {
            return Err(Error::io(
                "IPAM dir is not a directory (a symlink?)",
                &dir,
                io::Error::from(io::ErrorKind::InvalidInput),
            ));
        }
        let lock_path = dir.join("lock");
        let f = nofollow()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| Error::io("open IPAM lock", &lock_path, e))?;
        if !f.metadata().is_ok_and(|m| m.is_file()) {
            return Err(Error::io(
                "IPAM lock is not a regular file",
                &lock_path,
                io::Error::from(io::ErrorKind::InvalidData),
            ));
        }
        let lock = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::io("lock", &lock_path, e.into()))?;
        Ok(Store { dir, _lock: lock })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn record_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    /// Reserve `ip` for (id, ifname). Ok(false) if it is already taken. On error no
    /// record and no temporary file is left (a full disk included).
    pub fn reserve(&self, ip: IpAddr, id: &str, ifname: &str) -> Result<bool> {
        let content = format!("{id}{LINE_BREAK}{ifname}");
        let tmp = write_tmp(&self.dir, &ip.to_string(), content.as_bytes())
            .map_err(|e| Error::io("write IPAM record", self.record_path(ip), e))?;
        let dst = self.record_path(ip);
        let r = fs::hard_link(&tmp, &dst);
        let _ = fs::remove_file(&tmp);
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io("reserve address", &dst, e)),
        }
    }

    fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        let p = self.dir.join(format!("{LAST_RESERVED}{set}"));
        read_small(&p, 64).ok()?.trim().parse().ok()
    }

    fn set_last_reserved(&self, set: usize, ip: IpAddr) -> Result<()> {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let p = self.dir.join(format!("{LAST_RESERVED}{set}"));
        // The cursor is a hint (a torn one means "start at the range start", as in
        // host-local, which writes it in place too): rewrite our own file in place, which
        // saves a file creation per ADD. Anything else under the name (a planted hard
        // link, a FIFO, a missing file) is replaced by a new file instead.
        if let Ok(f) = nofollow().write(true).open(&p) {
            match f.metadata() {
                Ok(m) if m.is_file() && m.nlink() == 1 => {
                    // Truncate only when the text shrinks: a truncation frees blocks,
                    // which costs more than the rest of the rewrite (0.35 ms here).
                    let text = ip.to_string();
                    let len = text.len() as u64;
                    return f
                        .write_all_at(text.as_bytes(), 0)
                        .and_then(|()| {
                            if m.size() > len {
                                f.set_len(len)
                            } else {
                                Ok(())
                            }
                        })
                        .map_err(|e| Error::io("write", &p, e));
                }
                _ => {}
            }
        }
        let tmp = write_tmp(&self.dir, &format!("last{set}"), ip.to_string().as_bytes())
            .map_err(|e| Error::io("write", &p, e))?;
        fs::rename(&tmp, &p).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io("write", &p, e)
        })
    }

    /// One address from every range set of `net`, for (id, ifname). A reservation the
    /// attachment already holds in a set (an ADD killed after reserving, or a pod whose
    /// namespace vanished without DEL) is reused, and any other it holds is released: at
    /// most one reservation per (id, ifname) per range set. On error nothing new stays
    /// reserved.
    pub fn allocate(&self, net: &Network, id: &str, ifname: &str) -> Result<Vec<Allocation>> {
        self.allocate_noted(net, id, ifname, None, &[])
    }

    /// Does the record of `ip` belong to (id, ifname)?
    fn holds(&self, ip: IpAddr, id: &str, ifname: &str) -> bool {
        read_small(&self.record_path(ip), 4096).is_ok_and(|s| {
            let mut l = s.trim().splitn(2, LINE_BREAK);
            l.next().map(str::trim) == Some(id) && l.next().unwrap_or("").trim() == ifname
        })
    }

    /// What (id, ifname) holds, from its note (`noted`: constant time, each address
    /// checked against its record), else from a scan of every record.
    fn held(&self, id: &str, ifname: &str, noted: Option<Vec<IpAddr>>) -> Result<Vec<IpAddr>> {
        match noted {
            Some(ips) => {
                let mut v: Vec<IpAddr> = ips
                    .into_iter()
                    .filter(|ip| self.holds(*ip, id, ifname))
                    .collect();
                v.sort();
                v.dedup();
                Ok(v)
            }
            None => Ok(self
                .records()?
                .into_iter()
                .filter(|(_, i, f)| i == id && f == ifname)
                .map(|(ip, _, _)| ip)
                .collect()),
        }
    }

    /// [`Store::allocate`], noting every address in the attachment's lock file before its
    /// record is linked, so a retried ADD and DEL find them without scanning the store.
    /// A range set with a `requested` address gets exactly that address, or an error if
    /// another attachment holds it.
    pub fn allocate_noted(
        &self,
        net: &Network,
        id: &str,
        ifname: &str,
        lock: Option<&AttachmentLock>,
        requested: &[(String, IpAddr)],
    ) -> Result<Vec<Allocation>> {
        let wanted = net.place_requested(requested)?;
        // A new attachment has an empty note: nothing to look for (an attachment made by
        // a version without notes may then hold a second address until GC).
        let held = match lock.map(AttachmentLock::noted) {
            Some(None) => Vec::new(),
            Some(noted) => self.held(id, ifname, noted)?,
            None => self.held(id, ifname, None)?,
        };
        let mut noted = held.clone();
        let mut note = |ip: IpAddr| -> Result<()> {
            let Some(l) = lock else { return Ok(()) };
            if !noted.contains(&ip) {
                noted.push(ip);
            }
            l.note(&noted)
        };
        let mut got: Vec<Allocation> = Vec::new();
        let mut fresh: Vec<IpAddr> = Vec::new();
        for (set, ranges) in net.range_sets.iter().enumerate() {
            if let Some(ip) = wanted[set] {
                let Some(range) = ranges.iter().find(|r| r.contains(ip)) else {
                    continue; // place_requested put it in this set: unreachable
                };
                let a = Allocation {
                    ip,
                    range: range.clone(),
                    set,
                };
                if held.contains(&ip) {
                    got.push(a);
                    continue;
                }
                let r = note(ip).and_then(|()| self.reserve(ip, id, ifname));
                match r {
                    Ok(true) => {
                        fresh.push(ip);
                        got.push(a);
                        continue;
                    }
                    Ok(false) if self.holds(ip, id, ifname) => {
                        got.push(a);
                        continue;
                    }
                    other => {
                        for ip in &fresh {
                            let _ = fs::remove_file(self.record_path(*ip));
                        }
                        other?;
                        let field = requested
                            .iter()
                            .find(|(_, x)| *x == ip)
                            .map(|(f, _)| f.clone())
                            .unwrap_or_default();
                        return Err(Error::AddressInUse {
                            field,
                            ip,
                            network: net.name.clone(),
                        });
                    }
                }
            }
            let reuse = held.iter().find_map(|ip| {
                ranges
                    .iter()
                    .find(|r| r.contains(*ip) && *ip != r.gateway)
                    .map(|r| Allocation {
                        ip: *ip,
                        range: r.clone(),
                        set,
                    })
            });
            if let Some(a) = reuse {
                got.push(a);
                continue;
            }
            match self.allocate_in_set(net, set, ranges, id, ifname, &mut note) {
                Ok(a) => {
                    fresh.push(a.ip);
                    got.push(a);
                }
                Err(e) => {
                    for ip in &fresh {
                        let _ = fs::remove_file(self.record_path(*ip));
                    }
                    return Err(e);
                }
            }
        }
        for ip in held.iter().filter(|ip| !got.iter().any(|a| a.ip == **ip)) {
            let _ = fs::remove_file(self.record_path(*ip));
        }
        // Trim the note to what is held (skipped when it already is).
        if let Some(l) = lock {
            let mut ips: Vec<IpAddr> = got.iter().map(|a| a.ip).collect();
            let mut now = l.noted().unwrap_or_default();
            ips.sort();
            now.sort();
            if ips != now {
                l.note(&ips)?;
            }
        }
        Ok(got)
    }

    fn allocate_in_set(
        &self,
        net: &Network,
        set: usize,
        ranges: &[Range],
        id: &str,
        ifname: &str,
        note: &mut dyn FnMut(IpAddr) -> Result<()>,
    ) -> Result<Allocation> {
        // Round-robin: start right after the last reservation, if it is still in a range.
        let (mut ri, mut ip) = (0usize, ranges[0].start);
        if let Some(last) = self.last_reserved(set) {
            if let Some(i) = ranges.iter().position(|r| r.contains(last)) {
                ri = i;
                match next_ip(last).filter(|n| ranges[i].contains(*n)) {
                    Some(n) => ip = n,
                    None => {
                        ri = (i + 1) % ranges.len();
                        ip = ranges[ri].start;
                    }
                }
            }
        }
        let first = (ri, ip);
        loop {
            let r = &ranges[ri];
            if ip != r.gateway && !self.record_path(ip).exists() && {
                note(ip)?;
                self.reserve(ip, id, ifname)?
            } {
                if let Err(e) = self.set_last_reserved(set, ip) {
                    let _ = fs::remove_file(self.record_path(ip));
                    return Err(e);
                }
                return Ok(Allocation {
                    ip,
                    range: r.clone(),
                    set,
                });
            }
            match next_ip(ip).filter(|n| r.contains(*n)) {
                Some(n) => ip = n,
                None => {
                    ri = (ri + 1) % ranges.len();
                    ip = ranges[ri].start;
                }
            }
            if (ri, ip) == first {
                let range = ranges
                    .iter()
                    .map(|r| format!("{}-{}", r.start, r.end))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Error::Exhausted {
                    network: net.name.clone(),
                    range,
                });
            }
        }
    }

    /// Is any address of the network reserved? A readdir, no record read: how DEL and GC
    /// decide that the network's last pod is gone.
    pub fn has_records(&self) -> Result<bool> {
        let entries = fs::read_dir(&self.dir).map_err(|e| Error::io("read", &self.dir, e))?;
        Ok(entries.flatten().any(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<IpAddr>().is_ok())
        }))
    }

    /// All records: (address, container id, ifname). Unreadable or garbage records are
    /// reported on stderr and skipped, never fatal for the other pods.
    pub fn records(&self) -> Result<Vec<(IpAddr, String, String)>> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(|e| Error::io("read", &self.dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue;
            };
            let read = read_small(&entry.path(), 4096);
            let s = match read {
                Ok(s) => s,
                Err(e) => {
                    eprintln!(
                        "runtime-shim: skipping IPAM record {}: {e}",
                        entry.path().display()
                    );
                    continue;
                }
            };
            let mut lines = s.trim().splitn(2, LINE_BREAK);
            let id = lines.next().unwrap_or("").trim().to_string();
            let ifname = lines.next().unwrap_or("").trim().to_string();
            if id.is_empty() {
                eprintln!(
                    "runtime-shim: skipping IPAM record {}: empty or torn",
                    entry.path().display()
                );
                continue;
            }
            out.push((ip, id, ifname));
        }
        out.sort();
        Ok(out)
    }

    /// What a crash or a foreign writer can leave that no attachment owns: temporary files
    /// of a writer killed between write and link (every writer holds the lock, so while we
    /// hold it none is in flight), and address records that are torn (no container id),
    /// unreadable or not regular files. Each would otherwise hold its address forever.
    pub fn debris(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(|e| Error::io("read", &self.dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = entry.path();
            if name.starts_with(".tmp-") {
                out.push(path);
                continue;
            }
            if name.parse::<IpAddr>().is_err() {
                continue;
            }
            let read = read_small(&path, 4096);
            let ok = read.is_ok();
            let s = read.unwrap_or_default();
            if !ok
                || s.trim()
                    .split(LINE_BREAK)
                    .next()
                    .unwrap_or("")
                    .trim()
                    .is_empty()
            {
                out.push(path);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Remove [`Store::debris`]; returns what went.
    pub fn remove_debris(&self) -> Result<Vec<PathBuf>> {
        let mut gone = Vec::new();
        for p in self.debris()? {
            // remove_file unlinks a symlink itself, never its target.
            match fs::remove_file(&p) {
                Ok(()) => gone.push(p),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove IPAM debris", &p, e)),
            }
        }
        Ok(gone)
    }

    /// Addresses held by (id, ifname). Records without an ifname (older host-local) match
    /// on the id alone.
    pub fn get_by_id(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        Ok(self
            .records()?
            .into_iter()
            .filter(|(_, i, f)| i == id && (f == ifname || f.is_empty()))
            .map(|(ip, _, _)| ip)
            .collect())
    }

    /// Release every address held by (id, ifname); returns them. Idempotent.
    pub fn release(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        self.release_noted(id, ifname, None)
    }

    /// [`Store::release`], from the attachment's note when it has one.
    pub fn release_noted(
        &self,
        id: &str,
        ifname: &str,
        lock: Option<&AttachmentLock>,
    ) -> Result<Vec<IpAddr>> {
        let ips = match lock.and_then(AttachmentLock::noted) {
            Some(noted) => self.held(id, ifname, Some(noted))?,
            None => self.get_by_id(id, ifname)?,
        };
        for ip in &ips {
            match fs::remove_file(self.record_path(*ip)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("release address", self.record_path(*ip), e)),
            }
        }
        Ok(ips)
    }

    /// Release exactly these addresses if they still belong to (id, ifname) (setup undo).
    pub fn release_ips(&self, ips: &[IpAddr], id: &str, ifname: &str) {
        let mine = self.get_by_id(id, ifname).unwrap_or_default();
        for ip in ips.iter().filter(|ip| mine.contains(ip)) {
            let _ = fs::remove_file(self.record_path(*ip));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NetConf;

    fn net(dir: &Path, ranges: &str) -> Network {
        let json = format!(
            r#"{{"name":"t","ipam":{{"type":"host-local","ranges":{ranges},"dataDir":"{}"}}}}"#,
            dir.display()
        );
        NetConf::from_slice(json.as_bytes())
            .unwrap()
            .validate()
            .unwrap()
    }

    #[test]
    fn host_local_layout_round_robin_and_release() {
        let d = tempfile::tempdir().unwrap();
        let n = net(d.path(), r#"[[{"subnet":"10.9.0.0/29"}]]"#);
        let s = Store::open(&n.data_dir, &n.name).unwrap();
        let a = s.allocate(&n, "c1", "eth0").unwrap();
        assert_eq!(a[0].ip.to_string(), "10.9.0.2", "gateway .1 is skipped");
        let rec = fs::read_to_string(d.path().join("t/10.9.0.2")).unwrap();
        assert_eq!(rec, "c1\r\neth0");
        assert_eq!(
            fs::read_to_string(d.path().join("t/last_reserved_ip.0")).unwrap(),
            "10.9.0.2"
        );
        assert!(d.path().join("t/lock").exists());
        let b = s.allocate(&n, "c2", "eth0").unwrap();
        assert_eq!(b[0].ip.to_string(), "10.9.0.3");
        assert_eq!(s.release("c1", "eth0").unwrap(), vec![a[0].ip]);
        assert!(s.release("c1", "eth0").unwrap().is_empty(), "idempotent");
        // Round-robin continues after the last reservation, not at the freed .2.
        assert_eq!(
            s.allocate(&n, "c3", "eth0").unwrap()[0].ip.to_string(),
            "10.9.0.4"
        );
        // Only the remaining entries and no temporary files.
        let names: Vec<_> = fs::read_dir(d.path().join("t"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with(".tmp")), "{names:?}");
    }

    #[test]
    fn exhaustion_is_a_clear_error_and_frees_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        // /29: .1 gateway, .2-.6 allocatable (5 addresses).
        let n = net(d.path(), r#"[[{"subnet":"10.9.0.0/29"}]]"#);
        let s = Store::open(&n.data_dir, &n.name).unwrap();
        for i in 0..5 {
            s.allocate(&n, &format!("c{i}"), "eth0").unwrap();
        }
        let e = s.allocate(&n, "late", "eth0").unwrap_err();
        assert!(matches!(e, Error::Exhausted { .. }), "{e}");
        assert!(e.to_string().contains("10.9.0.1-10.9.0.6"), "{e}");
        assert_eq!(
            s.records().unwrap().len(),
            5,
            "other pods keep their addresses"
        );
        s.release("c3", "eth0").unwrap();
        assert_eq!(
            s.allocate(&n, "late", "eth0").unwrap()[0].ip.to_string(),
            "10.9.0.5"
        );
    }

    #[test]
    fn dual_stack_gets_one_of_each_and_failure_in_second_set_undoes_first() {
        let d = tempfile::tempdir().unwrap();
        let n = net(
            d.path(),
            r#"[[{"subnet":"10.9.0.0/24"}],[{"subnet":"fd00:9::/120","rangeEnd":"fd00:9::3"}]]"#,
        );
        let s = Store::open(&n.data_dir, &n.name).unwrap();
        let a = s.allocate(&n, "c1", "eth0").unwrap();
        assert_eq!(a.len(), 2);
        assert!(a[0].ip.is_ipv4() && a[1].ip.is_ipv6());
        s.allocate(&n, "c2", "eth0").unwrap();
        // The v6 set (::2, ::3) is now full; v4 must not keep a reservation for c3.
        assert!(s.allocate(&n, "c3", "eth0").is_err());
        assert!(s.get_by_id("c3", "eth0").unwrap().is_empty());
    }

    #[test]
    fn garbage_and_torn_records_are_skipped_not_fatal() {
        let d = tempfile::tempdir().unwrap();
        let n = net(d.path(), r#"[[{"subnet":"10.9.0.0/24"}]]"#);
        let s = Store::open(&n.data_dir, &n.name).unwrap();
        s.allocate(&n, "good", "eth0").unwrap();
        fs::write(d.path().join("t/10.9.0.50"), b"").unwrap();
        fs::write(d.path().join("t/10.9.0.51"), b"\xff\xfe").unwrap();
        fs::write(d.path().join("t/not-an-ip"), b"x").unwrap();
        let recs = s.records().unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].1, "good");
        // The garbage files still block their addresses (never handed out twice).
        fs::write(d.path().join("t/last_reserved_ip.0"), "10.9.0.49").unwrap();
        assert_eq!(
            s.allocate(&n, "next", "eth0").unwrap()[0].ip.to_string(),
            "10.9.0.52"
        );
        // GC's debris: the torn records and a killed writer's temporary file, nothing else.
        fs::write(d.path().join("t/.tmp-77-10.9.0.60"), b"x\r\neth0").unwrap();
        let gone = s.remove_debris().unwrap();
        let names: Vec<_> = gone
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
            .collect();
        assert_eq!(names, vec![".tmp-77-10.9.0.60", "10.9.0.50", "10.9.0.51"]);
        assert_eq!(s.records().unwrap().len(), 2);
        assert!(d.path().join("t/not-an-ip").exists());
        assert!(d.path().join("t/lock").exists());
    }

    #[test]
    fn planted_symlinks_are_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let n = net(d.path(), r#"[[{"subnet":"10.9.0.0/24"}]]"#);
        let s = Store::open(&n.data_dir, &n.name).unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join("t/10.9.0.2")).unwrap();
        let a = s.allocate(&n, "c", "eth0").unwrap();
        assert_eq!(
            a[0].ip.to_string(),
            "10.9.0.3",
            "the planted name counts as taken"
        );
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        // A symlinked network dir is refused.
        let d2 = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(d.path(), d2.path().join("t")).unwrap();
        assert!(Store::open(d2.path(), "t").is_err());
    }

    #[test]
    fn a_retried_add_reuses_its_reservation_and_keeps_one_per_set() {
        let d = tempfile::tempdir().unwrap();
        let n = net(
            d.path(),
            r#"[[{"subnet":"10.9.0.0/24"}],[{"subnet":"fd00:9::/120"}]]"#,
        );
        let s = Store::open(&n.data_dir, &n.name).unwrap();
        let first = s.allocate(&n, "c1", "eth0").unwrap();
        // The ADD was killed after reserving; a stray extra reservation of the same
        // attachment (an older bug, or a host-local record) is there too.
        assert!(
            s.reserve("10.9.0.77".parse().unwrap(), "c1", "eth0")
                .unwrap()
        );
        let again = s.allocate(&n, "c1", "eth0").unwrap();
        assert_eq!(
            again.iter().map(|a| a.ip).collect::<Vec<_>>(),
            first.iter().map(|a| a.ip).collect::<Vec<_>>()
        );
        let mut held = s.get_by_id("c1", "eth0").unwrap();
        held.sort();
        let mut want: Vec<IpAddr> = first.iter().map(|a| a.ip).collect();
        want.sort();
        assert_eq!(held, want, "one reservation per range set");
        // Another ifname of the same id is another attachment.
        assert_ne!(s.allocate(&n, "c1", "net1").unwrap()[0].ip, first[0].ip);
    }

    #[test]
    fn planted_links_at_temp_names_are_never_written_through() {
        let d = tempfile::tempdir().unwrap();
        let n = net(d.path(), r#"[[{"subnet":"10.9.0.0/24"}]]"#);
        let s = Store::open(&n.data_dir, &n.name).unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let pid = std::process::id();
        // The names temp files once had: a symlink and a hard link planted there.
        std::os::unix::fs::symlink(&victim, d.path().join(format!("t/.tmp-{pid}-last0"))).unwrap();
        fs::hard_link(&victim, d.path().join(format!("t/.tmp-{pid}-10.9.0.2"))).unwrap();
        let a = s.allocate(&n, "c", "eth0").unwrap();
        assert_eq!(a[0].ip.to_string(), "10.9.0.2");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        // A hard link planted as the cursor itself is replaced, never written through.
        fs::remove_file(d.path().join("t/last_reserved_ip.0")).unwrap();
        fs::hard_link(&victim, d.path().join("t/last_reserved_ip.0")).unwrap();
        s.allocate(&n, "c2", "eth0").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(
            fs::read_to_string(d.path().join("t/last_reserved_ip.0")).unwrap(),
            "10.9.0.3"
        );
        // A temp name already taken is skipped, never opened.
        let (p1, _) = create_tmp(s.dir(), "x").unwrap();
        let (p2, _) = create_tmp(s.dir(), "x").unwrap();
        assert_ne!(p1, p2);
    }

    #[test]
    fn planted_fifos_never_block() {
        let d = tempfile::tempdir().unwrap();
        let n = net(d.path(), r#"[[{"subnet":"10.9.0.0/24"}]]"#);
        let s = Store::open(&n.data_dir, &n.name).unwrap();
        let fifo = |p: PathBuf| nix::unistd::mkfifo(&p, nix::sys::stat::Mode::S_IRWXU).unwrap();
        fifo(d.path().join("t/10.9.0.2"));
        fifo(d.path().join("t/last_reserved_ip.0"));
        // The FIFO record is skipped (and its address stays taken); the cursor is ignored.
        assert_eq!(
            s.allocate(&n, "c", "eth0").unwrap()[0].ip.to_string(),
            "10.9.0.3"
        );
        assert_eq!(s.records().unwrap().len(), 1);
        assert_eq!(s.debris().unwrap(), vec![d.path().join("t/10.9.0.2")]);
        assert!(s.release("c", "eth0").is_ok());
    }

    #[test]
    fn requested_addresses_are_reserved_exactly_or_refused_without_leftovers() {
        let d = tempfile::tempdir().unwrap();
        let n = net(
            d.path(),
            r#"[[{"subnet":"10.9.0.0/24"}],[{"subnet":"fd09::/64"}]]"#,
        );
        let s = Store::open(&n.data_dir, &n.name).unwrap();
        let want = vec![("IP".to_string(), "10.9.0.77".parse().unwrap())];
        let a = s.allocate_noted(&n, "c1", "eth0", None, &want).unwrap();
        assert_eq!(a[0].ip.to_string(), "10.9.0.77");
        assert!(a[1].ip.is_ipv6(), "the other set still gets an address");
        // Again for the same attachment (a retried ADD): the same address.
        let again = s.allocate_noted(&n, "c1", "eth0", None, &want).unwrap();
        assert_eq!(again[0].ip, a[0].ip);
        // Another attachment asking for it: refused, and nothing of its is reserved.
        let before = s.records().unwrap();
        let e = s.allocate_noted(&n, "c2", "eth0", None, &want).unwrap_err();
        assert!(matches!(e, Error::AddressInUse { .. }), "{e}");
        assert_eq!(s.records().unwrap(), before);
        assert!(s.has_records().unwrap());
        s.release("c1", "eth0").unwrap();
        assert!(!s.has_records().unwrap());
    }

    #[test]
    fn concurrent_allocations_never_collide() {
        let d = tempfile::tempdir().unwrap();
        let n = net(d.path(), r#"[[{"subnet":"10.9.0.0/24"}]]"#);
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let n = n.clone();
                std::thread::spawn(move || {
                    (0..40)
                        .map(|i| {
                            let s = Store::open(&n.data_dir, &n.name).unwrap();
                            s.allocate(&n, &format!("t{t}c{i}"), "eth0").unwrap()[0].ip
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<IpAddr> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let n_all = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n_all, "no address handed out twice");
        assert_eq!(n_all, 160);
    }
}
