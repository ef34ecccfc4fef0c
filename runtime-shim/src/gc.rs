//! Garbage collection (CNI GC, and recovery after a crash): everything of a network that
//! does not belong to a valid attachment goes. That is every IPAM reservation whose
//! (container id, ifname) is not listed, and every host veth *of this network* (it carries
//! the network's marker, its MAC address set when it was created) that no listed or still-reserved
//! attachment hashes to (a setup killed after creating the link but before returning, or
//! a teardown killed half way). Another network's pods on a shared bridge are never
//! touched.
//!
//! An attachment whose ADD or DEL is in flight holds its attachment lock; GC only
//! try-locks, and skips what is locked, so it never frees an address an ADD is about to
//! return.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use crate::apply::is_ours;
use crate::config::Network;
use crate::ipam::{AttachmentLock, Store};
use crate::link::Netlink;
use crate::plan::host_veth_name;
use crate::{Error, Result};

/// What a GC pass removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// (address, container id, ifname) reservations released.
    pub released: Vec<(IpAddr, String, String)>,
    /// Host veths deleted.
    pub links: Vec<String>,
    /// Torn IPAM records and temporary files of killed writers, removed.
    pub debris: Vec<String>,
    /// Hook sandboxes whose process is gone: pin and record removed.
    pub sandboxes: Vec<String>,
    /// Firewall tables removed (the network has no pod left on the node).
    pub tables: Vec<String>,
}

impl GcReport {
    pub fn is_empty(&self) -> bool {
        self.released.is_empty()
            && self.links.is_empty()
            && self.debris.is_empty()
            && self.sandboxes.is_empty()
            && self.tables.is_empty()
    }
}

impl fmt::Display for GcReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "released {} address(es), deleted {} link(s), {} debris file(s), {} dead sandbox(es)",
            self.released.len(),
            self.links.len(),
            self.debris.len(),
            self.sandboxes.len()
        )?;
        for (ip, id, ifname) in &self.released {
            write!(f, "; {ip} ({id}/{ifname})")?;
        }
        for l in &self.links {
            write!(f, "; link {l}")?;
        }
        for d in &self.debris {
            write!(f, "; file {d}")?;
        }
        for s in &self.sandboxes {
            write!(f, "; sandbox {s}")?;
        }
        for t in &self.tables {
            write!(f, "; table inet {t}")?;
        }
        Ok(())
    }
}

/// Is a podwire host veth name: "pw" + 12 lowercase hex digits.
pub fn is_podwire_veth(name: &str) -> bool {
    name.len() == 14
        && name.starts_with("pw")
        && name[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Does a reservation of (id, ifname) belong to a valid attachment? A valid entry with
/// an empty ifname keeps every interface of that id; a host-local record without an
/// ifname matches on the id alone.
fn is_valid(valid: &BTreeSet<(String, String)>, id: &str, ifname: &str) -> bool {
    valid.contains(&(id.to_string(), ifname.to_string()))
        || valid.contains(&(id.to_string(), String::new()))
        || (ifname.is_empty() && valid.iter().any(|(i, _)| i == id))
}

/// Remove what no valid attachment owns. Errors on single items are reported on stderr
/// and skipped; the first one is returned after the pass.
pub fn gc(net: &Network, valid: &BTreeSet<(String, String)>) -> Result<GcReport> {
    let mut report = GcReport::default();
    let mut first_err: Option<Error> = None;
    let is_valid = |id: &str, ifname: &str| is_valid(valid, id, ifname);

    let store = Store::open(&net.data_dir, &net.name)?;
    let records = store.records()?;
    let (keep, stale): (Vec<_>, Vec<_>) = records
        .into_iter()
        .partition(|(_, id, ifname)| is_valid(id, ifname));
    // Release under the lock, so an address is never both freed and handed out; skip
    // an attachment whose ADD or DEL is in flight (it holds its attachment lock).
    let mut busy = BTreeSet::new();
    for (ip, id, ifname) in stale {
        let veth = host_veth_name(&id, &ifname);
        match AttachmentLock::lock(&net.data_dir, &net.name, &veth, false)? {
            Some(_held) => {
                store.release_ips(&[ip], &id, &ifname);
                report.released.push((ip, id, ifname));
            }
            None => {
                busy.insert(veth);
            }
        }
    }
    report.debris = store
        .remove_debris()?
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    drop(store);

    // Links that a listed or still-reserved attachment owns.
    let mut owned = BTreeSet::new();
    for (id, ifname) in valid {
        owned.insert(host_veth_name(id, ifname));
    }
    for (_, id, ifname) in &keep {
        owned.insert(host_veth_name(id, ifname));
    }
    owned.extend(busy);
    let mut nl = Netlink::open()?;
    for l in nl.links()? {
        if !is_podwire_veth(&l.name) || !is_ours(&l, &net.name) || owned.contains(&l.name) {
            continue;
        }
        let Some(_held) = AttachmentLock::lock(&net.data_dir, &net.name, &l.name, false)? else {
            continue;
        };
        match nl.delete_link_index(l.index) {
            Ok(true) => report.links.push(l.name),
            Ok(false) => {}
            Err(e) => {
                eprintln!("runtime-shim: GC: {}", crate::chain(&e));
                first_err.get_or_insert(e);
            }
        }
    }
    // Lock files of attachments that are gone (a process killed while holding one).
    for name in AttachmentLock::list(&net.data_dir, &net.name) {
        if owned.contains(&name) {
            continue;
        }
        if let Some(l) = AttachmentLock::lock(&net.data_dir, &net.name, &name, false)? {
            l.remove();
        }
    }
    // No pod of the network left on the node: its masquerade goes too (and the iptables
    // rules of versions before the nftables table, if any are left).
    let unused = Store::open(&net.data_dir, &net.name)
        .and_then(|s| s.has_records())
        .map(|has| !has);
    let r = unused.and_then(|unused| {
        if !unused {
            return Ok(());
        }
        let mut k = crate::kernel::Real::open()?;
        if crate::apply::remove_policy_if_unused(&mut k, net)? {
            report.tables.push(crate::masq::table_name(&net.name));
        }
        let p = crate::masq::Policy::of(net);
        crate::masq::remove_legacy(&net.name, &p.subnets).map(|_| ())
    });
    if let Err(e) = r {
        eprintln!("runtime-shim: GC: {}", crate::chain(&e));
        first_err.get_or_insert(e);
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// GC with the OCI hook's records in `state_dir` too: a sandbox still running in its
/// pinned namespace is valid; a dead one loses its pin and record after its addresses and
/// veth went. A torn record whose pin still exists may belong to a live sandbox: it is
/// reported and kept, and so is everything its id holds.
pub fn gc_with_hooks(
    net: &Network,
    valid: &BTreeSet<(String, String)>,
    state_dir: &Path,
) -> Result<GcReport> {
    let mut valid = valid.clone();
    let mut dead = Vec::new();
    for sb in crate::hook::sandboxes(state_dir)? {
        match sb.record {
            Some(r) if sb.live => {
                valid.insert((r.id, r.ifname));
            }
            Some(_) => dead.push(sb.id),
            None if crate::hook::pinned(&sb.id) => {
                eprintln!(
                    "runtime-shim: GC: keeping sandbox {}: its record is torn but its \
                     namespace is still pinned",
                    sb.id
                );
                valid.insert((sb.id, String::new()));
            }
            None => dead.push(sb.id),
        }
    }
    let mut report = gc(net, &valid)?;
    for id in dead {
        crate::hook::forget(state_dir, &id)?;
        report.sandboxes.push(id);
    }
    report.debris.extend(
        crate::hook::remove_stale_tmp(state_dir)
            .iter()
            .map(|p| p.display().to_string()),
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity() {
        let v: BTreeSet<(String, String)> = [("a", "eth0"), ("t", "")]
            .iter()
            .map(|(i, f)| (i.to_string(), f.to_string()))
            .collect();
        assert!(is_valid(&v, "a", "eth0"));
        assert!(!is_valid(&v, "a", "eth1"));
        assert!(is_valid(&v, "a", ""), "host-local record without ifname");
        assert!(
            is_valid(&v, "t", "eth0") && is_valid(&v, "t", "net1"),
            "whole id kept"
        );
        assert!(!is_valid(&v, "b", "eth0"));
    }

    #[test]
    fn podwire_veth_names() {
        assert!(is_podwire_veth(&host_veth_name("abc", "eth0")));
        for not in ["pw", "pwbr0", "pw0123456789ag", "eth0", "pw0123456789abc"] {
            assert!(!is_podwire_veth(not), "{not}");
        }
    }
}
