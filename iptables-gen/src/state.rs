//! Partial-sync state (`--state-dir`): what the last *applied* sync wrote, so the next run
//! writes only the nat chains of services that changed and `-X`es chains that went away
//! (kube-proxy's partial sync). A generated sync is saved as `pending`; it becomes the
//! state only once the restore succeeded (`--apply`, or `--commit` after a pipeline). A
//! failed restore removes the state, so the next run is a full sync.
//!
//! Format (text, compact: 10k services x 10 endpoints is ~120k chain names):
//! `podwire-iptables-gen 1 <family>`, then `s <digest> <ns/name>` and `c <chain>` lines.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::{Error, Family, Generated, Result};

const MAGIC: &str = "podwire-iptables-gen 1";

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct State {
    pub digests: BTreeMap<String, u64>,
    pub chains: BTreeSet<String>,
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

pub fn state_path(dir: &Path, f: Family) -> PathBuf {
    dir.join(format!("state-{}", family_name(f)))
}
pub fn pending_path(dir: &Path, f: Family) -> PathBuf {
    dir.join(format!("pending-{}", family_name(f)))
}

impl State {
    pub fn from_generated(g: &Generated) -> State {
        State {
            digests: g.digests.clone(),
            chains: g.active_chains.clone(),
        }
    }

    pub fn render(&self, f: Family) -> String {
        let mut s = String::with_capacity(self.digests.len() * 48 + self.chains.len() * 27 + 32);
        s.push_str(MAGIC);
        s.push(' ');
        s.push_str(family_name(f));
        s.push('\n');
        for (k, d) in &self.digests {
            s.push_str(&format!("s {d:016x} {k}\n"));
        }
        for c in &self.chains {
            s.push_str("c ");
            s.push_str(c);
            s.push('\n');
        }
        s
    }

    pub fn parse(text: &str, f: Family, path: &Path) -> Result<State> {
        let corrupt = |reason: String| Error::State {
            path: path.display().to_string(),
            reason,
        };
        let mut lines = text.lines();
        let header = format!("{MAGIC} {}", family_name(f));
        if lines.next() != Some(header.as_str()) {
            return Err(corrupt("bad header".into()));
        }
        let mut st = State::default();
        for (i, l) in lines.enumerate() {
            if let Some(rest) = l.strip_prefix("s ") {
                let (d, k) = rest
                    .split_once(' ')
                    .ok_or_else(|| corrupt(format!("line {}: bad service line", i + 2)))?;
                let d = u64::from_str_radix(d, 16)
                    .map_err(|_| corrupt(format!("line {}: bad digest", i + 2)))?;
                st.digests.insert(k.to_string(), d);
            } else if let Some(c) = l.strip_prefix("c ") {
                if !c.starts_with("KUBE-") || c.len() > 28 || c.contains(char::is_whitespace) {
                    return Err(corrupt(format!("line {}: bad chain name", i + 2)));
                }
                st.chains.insert(c.to_string());
            } else {
                return Err(corrupt(format!("line {}: unknown record", i + 2)));
            }
        }
        Ok(st)
    }

    /// The committed state, if any.
    pub fn load(dir: &Path, f: Family) -> Result<Option<State>> {
        let p = state_path(dir, f);
        match fs::read_to_string(&p) {
            Ok(t) => State::parse(&t, f, &p).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io {
                op: "read",
                path: p.display().to_string(),
                source: e,
            }),
        }
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let io = |op, e| Error::Io {
        op,
        path: path.display().to_string(),
        source: e,
    };
    fs::write(&tmp, text).map_err(|e| io("write", e))?;
    fs::rename(&tmp, path).map_err(|e| io("rename", e))
}

/// Save a generated sync as pending (not yet applied).
pub fn save_pending(dir: &Path, f: Family, st: &State) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::Io {
        op: "create state dir",
        path: dir.display().to_string(),
        source: e,
    })?;
    write_atomic(&pending_path(dir, f), &st.render(f))
}

/// The pending sync was applied: it becomes the state.
pub fn commit(dir: &Path, f: Family) -> Result<()> {
    let (p, s) = (pending_path(dir, f), state_path(dir, f));
    fs::rename(&p, &s).map_err(|e| Error::Io {
        op: "commit (no pending sync to commit?)",
        path: p.display().to_string(),
        source: e,
    })
}

/// A restore failed: forget the state, so the next run is a full sync.
pub fn invalidate(dir: &Path, f: Family) {
    let _ = fs::remove_file(state_path(dir, f));
    let _ = fs::remove_file(pending_path(dir, f));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let mut st = State::default();
        st.digests.insert("ns/a".into(), 0xdead_beef);
        st.chains.insert("KUBE-SVC-AAAAAAAAAAAAAAAA".into());
        let p = Path::new("/x");
        let text = st.render(Family::V4);
        assert_eq!(State::parse(&text, Family::V4, p).unwrap(), st);
        assert!(
            State::parse(&text, Family::V6, p).is_err(),
            "family mismatch"
        );
        assert!(State::parse("garbage", Family::V4, p).is_err());
        let bad = text.replace("KUBE-SVC-AAAAAAAAAAAAAAAA", "KUBE-SVC-A\"; rm -rf");
        assert!(State::parse(&bad, Family::V4, p).is_err());
    }

    #[test]
    fn pending_commit_invalidate() {
        let d = tempfile::tempdir().unwrap();
        let st = State::default();
        assert!(State::load(d.path(), Family::V4).unwrap().is_none());
        save_pending(d.path(), Family::V4, &st).unwrap();
        assert!(
            State::load(d.path(), Family::V4).unwrap().is_none(),
            "pending is not state"
        );
        commit(d.path(), Family::V4).unwrap();
        assert_eq!(State::load(d.path(), Family::V4).unwrap(), Some(st));
        assert!(commit(d.path(), Family::V4).is_err(), "nothing pending");
        invalidate(d.path(), Family::V4);
        assert!(State::load(d.path(), Family::V4).unwrap().is_none());
    }
}
