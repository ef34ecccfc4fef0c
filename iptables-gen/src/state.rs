//! Partial-sync state (`--state-dir`): what the last *applied* sync wrote, so the next run
//! writes only the nat chains of services that changed and `-X`es chains that went away
//! (kube-proxy's partial sync). A generated sync is saved as `pending`; it becomes the
//! state only once the restore succeeded (`--apply`, or `--commit` after a pipeline). A
//! failed restore removes the state, so the next run is a full sync.
//!
//! Format (text, compact: 10k services x 10 endpoints is ~120k chain names):
//! `podwire-iptables-gen 3 <family>`, `k <seed> <seed>` (the digest key), `f <fingerprint>`,
//! then per service `s <digest> <endpoints> <ns/name> <svc port name|-> <protocol|->`
//! followed by its `c <chain>` lines. Object content is percent-encoded (see [`encode`]).
//! Digests and the fingerprint are keyed SipHash-1-3 with a documented encoding
//! (`rules.rs`, `StableDigest`), so they mean the same to every build. A version 2 state (digests from
//! foldhash and std's hasher) is read once more for its chains, and its fingerprint is
//! dropped, so that run is a full sync that still removes the old chains; it is then
//! replaced by a version 3 state. Any other version is an error: a full sync.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{Error, Family, Result, ServiceState, SyncState};

const MAGIC: &str = "podwire-iptables-gen 3";
/// The previous format: same records, digests from hashers with no stable output.
const MAGIC_V2: &str = "podwire-iptables-gen 2";

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

/// The state as text. Services are written in name order (a stable file for a stable
/// cluster); the shared-chain lines are not written (they are cheap to re-render).
pub fn render(st: &SyncState, f: Family) -> String {
    use std::fmt::Write as _;
    let chains: usize = st.services.values().map(|s| s.chains.len()).sum();
    let mut out = String::with_capacity(st.services.len() * 80 + chains * 27 + 96);
    let _ = writeln!(out, "{MAGIC} {}", family_name(f));
    let _ = writeln!(out, "k {:016x} {:016x}", st.seed[0], st.seed[1]);
    let _ = writeln!(out, "f {:016x}", st.fingerprint);
    let mut keys: Vec<&Arc<str>> = st.services.keys().collect();
    keys.sort();
    for k in keys {
        let s = &st.services[k];
        let (spn, proto) = match &s.order {
            Some((a, b)) => (a.as_str(), b.as_str()),
            None => ("-", "-"),
        };
        let _ = writeln!(
            out,
            "s {:016x} {} {} {} {}",
            s.digest,
            s.endpoints,
            encode(k),
            encode(spn),
            encode(proto)
        );
        for c in &s.chains {
            // iptables chains as they are; nftables names (with '/') encoded.
            if c.starts_with("KUBE-") {
                out.push_str("c ");
                out.push_str(c);
            } else {
                out.push_str("n ");
                out.push_str(&encode(c));
            }
            out.push('\n');
        }
        for e in &s.elements {
            out.push_str("e ");
            out.push_str(&encode(e));
            out.push('\n');
        }
    }
    out
}

/// An nftables per-service chain or affinity set name as the backend writes them: what
/// reaches `nft` from the state must not be able to carry a second command.
fn nft_object_name(v: &str) -> bool {
    let prefixed = [
        "service-",
        "local-",
        "external-",
        "firewall-",
        "endpoint-",
        "affinity-",
        "cluster-endpoints-",
    ]
    .iter()
    .any(|p| v.starts_with(p));
    prefixed
        && v.len() <= 256
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-'))
}

/// An element record: `MAP<TAB>key[ comment "…"][ : verdict]` of printable ASCII with no
/// braces, semicolons or newlines.
fn nft_element(v: &str) -> bool {
    let Some((map, el)) = v.split_once('\t') else {
        return false;
    };
    !map.is_empty()
        && map.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        && !el.is_empty()
        && el
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && !matches!(b, b'{' | b'}' | b';' | b'\\'))
}

/// A token of the file: no whitespace, no quote, nothing that could reach a rule oddly.
fn plain(t: &str) -> bool {
    !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-./:_".contains(&b))
}

/// Object content in the file is percent-encoded outside the plain set: whatever a name
/// or label holds (a newline, a space), it stays one token of one line and can never
/// forge a record.
fn encode(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    for b in t.bytes() {
        if b.is_ascii_alphanumeric() || b"-./:_".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() { "%".into() } else { out }
}

/// The inverse of [`encode`]; None for anything it cannot have written.
fn decode(t: &str) -> Option<String> {
    if t == "%" {
        return Some(String::new());
    }
    let b = t.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else if b[i].is_ascii_alphanumeric() || b"-./:_".contains(&b[i]) {
            out.push(b[i]);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

pub fn parse(text: &str, f: Family, path: &Path) -> Result<SyncState> {
    let corrupt = |reason: String| Error::State {
        path: path.display().to_string(),
        reason,
    };
    let mut lines = text.lines();
    let header = format!("{MAGIC} {}", family_name(f));
    let v2_header = format!("{MAGIC_V2} {}", family_name(f));
    let first = lines.next();
    let v2 = first == Some(v2_header.as_str());
    if first != Some(header.as_str()) && !v2 {
        return Err(corrupt("bad header (another version or family)".into()));
    }
    let hex = |t: Option<&str>, n: usize| {
        t.and_then(|t| u64::from_str_radix(t, 16).ok())
            .ok_or_else(|| corrupt(format!("line {n}: bad number")))
    };
    let mut st = SyncState::default();
    let mut cur: Option<(String, ServiceState)> = None;
    let finish = |cur: &mut Option<(String, ServiceState)>, st: &mut SyncState| {
        if let Some((k, s)) = cur.take() {
            st.services.insert(k.into(), Arc::new(s));
        }
    };
    for (i, l) in lines.enumerate() {
        let n = i + 2;
        let mut t = l.split(' ');
        match t.next() {
            Some("k") => st.seed = [hex(t.next(), n)?, hex(t.next(), n)?],
            Some("f") => st.fingerprint = hex(t.next(), n)?,
            Some("s") => {
                finish(&mut cur, &mut st);
                let digest = hex(t.next(), n)?;
                let endpoints = t
                    .next()
                    .and_then(|e| e.parse().ok())
                    .ok_or_else(|| corrupt(format!("line {n}: bad endpoint count")))?;
                let rest: Vec<&str> = t.collect();
                let [key, spn, proto] = rest[..] else {
                    return Err(corrupt(format!("line {n}: bad service line")));
                };
                let (Some(key), Some(spn), Some(proto)) = (decode(key), decode(spn), decode(proto))
                else {
                    return Err(corrupt(format!("line {n}: bad service line")));
                };
                let (key, spn, proto) = (key.as_str(), spn.as_str(), proto.as_str());
                let order = (spn != "-").then(|| (spn.to_string(), proto.to_string()));
                cur = Some((
                    key.to_string(),
                    ServiceState {
                        digest,
                        endpoints,
                        order,
                        chains: Vec::new(),
                        shared: None,
                        elements: Vec::new(),
                    },
                ));
            }
            Some("c") => {
                let c = t.next().unwrap_or("");
                if !c.starts_with("KUBE-") || c.len() > 28 || !plain(c) || t.next().is_some() {
                    return Err(corrupt(format!("line {n}: bad chain name")));
                }
                let Some((_, s)) = cur.as_mut() else {
                    return Err(corrupt(format!("line {n}: chain before any service")));
                };
                s.chains.push(c.to_string());
            }
            // nftables backend: a chain or affinity set, and an element (`MAP<TAB>ELEMENT`).
            Some(kind @ ("n" | "e")) => {
                let v = t.next().and_then(decode).unwrap_or_default();
                let ok = if kind == "n" {
                    nft_object_name(&v)
                } else {
                    nft_element(&v)
                };
                if !ok || t.next().is_some() {
                    return Err(corrupt(format!("line {n}: bad nftables record")));
                }
                let Some((_, s)) = cur.as_mut() else {
                    return Err(corrupt(format!("line {n}: record before any service")));
                };
                if kind == "n" {
                    s.chains.push(v);
                } else {
                    s.elements.push(v);
                }
            }
            _ => return Err(corrupt(format!("line {n}: unknown record"))),
        }
    }
    finish(&mut cur, &mut st);
    if v2 {
        // No fingerprint of this build can match: the next sync is a full one.
        st.fingerprint = 0;
    }
    Ok(st)
}

/// The committed state, if any.
pub fn load(dir: &Path, f: Family) -> Result<Option<SyncState>> {
    let p = state_path(dir, f);
    match fs::read_to_string(&p) {
        Ok(t) => parse(&t, f, &p).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io {
            op: "read",
            path: p.display().to_string(),
            source: e,
        }),
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
pub fn save_pending(dir: &Path, f: Family, st: &SyncState) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::Io {
        op: "create state dir",
        path: dir.display().to_string(),
        source: e,
    })?;
    write_atomic(&pending_path(dir, f), &render(st, f))
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
    fn a_version_2_state_is_read_once_for_its_chains_and_forces_a_full_sync() {
        let v2 =
            "podwire-iptables-gen 2 IPv4\nk 1 2\nf abc\ns 5 3 ns/web http tcp\nc KUBE-SVC-ABC\n";
        let st = parse(v2, Family::V4, Path::new("s")).unwrap();
        assert_eq!(st.fingerprint, 0);
        let (k, s) = st.services.iter().next().unwrap();
        assert_eq!(
            (&**k, s.chains.clone()),
            ("ns/web", vec!["KUBE-SVC-ABC".to_string()])
        );
        assert!(render(&st, Family::V4).starts_with("podwire-iptables-gen 3 IPv4\n"));
        assert!(parse("podwire-iptables-gen 1 IPv4\n", Family::V4, Path::new("s")).is_err());
    }

    #[test]
    fn object_content_cannot_forge_a_record() {
        let mut st = SyncState::default();
        let evil = "ns/x\nc KUBE-SVC-LIVECHAIN0000000\ns 0 0 a b c";
        st.services.insert(
            evil.into(),
            Arc::new(ServiceState {
                digest: 1,
                endpoints: 0,
                order: Some(("p q".into(), "tcp".into())),
                chains: vec!["KUBE-SVC-ABC".into()],
                shared: None,
                elements: Vec::new(),
            }),
        );
        let text = render(&st, Family::V4);
        assert_eq!(text.lines().count(), 5, "{text}");
        let back = parse(&text, Family::V4, Path::new("s")).unwrap();
        let (k, s) = back.services.iter().next().unwrap();
        assert_eq!(&**k, evil);
        assert_eq!(s.chains, vec!["KUBE-SVC-ABC".to_string()]);
        assert_eq!(s.order, Some(("p q".into(), "tcp".into())));
        for t in ["a", "%0A", "-", "ns/name", "%", "x/y%20%0A"] {
            assert_eq!(encode(&decode(t).unwrap()), t);
        }
        assert!(decode("%4").is_none() && decode("a b").is_none() && decode("%zz").is_none());
    }

    fn sample() -> SyncState {
        let mut st = SyncState {
            seed: [1, 0xfeed],
            fingerprint: 0xabc,
            ..Default::default()
        };
        st.services.insert(
            Arc::from("ns/a"),
            Arc::new(ServiceState {
                digest: 0xdead_beef,
                endpoints: 3,
                order: Some(("ns/a:http".into(), "tcp".into())),
                chains: vec!["KUBE-SVC-AAAAAAAAAAAAAAAA".into()],
                shared: None,
                elements: Vec::new(),
            }),
        );
        st.services.insert(
            Arc::from("ns/orphan"),
            Arc::new(ServiceState {
                endpoints: 2,
                ..Default::default()
            }),
        );
        st
    }

    fn same(a: &SyncState, b: &SyncState) -> bool {
        a.seed == b.seed
            && a.fingerprint == b.fingerprint
            && a.services.len() == b.services.len()
            && a.services.iter().all(|(k, v)| b.services.get(k) == Some(v))
    }

    #[test]
    fn nftables_records_round_trip_and_cannot_carry_a_command() {
        let mut st = SyncState::default();
        st.services.insert(
            Arc::from("ns/web"),
            Arc::new(ServiceState {
                digest: 7,
                chains: vec![
                    "service-ULMVA6XW-ns/web/tcp/p80".into(),
                    "affinity-GTK6MW7G-ns/web/tcp/p80__10.0.0.1/80".into(),
                ],
                elements: vec![
                    "no-endpoint-services\t10.0.0.1 . tcp . 80 comment \"ns/web:p80\" : drop"
                        .into(),
                ],
                ..Default::default()
            }),
        );
        let text = render(&st, Family::V4);
        let back = parse(&text, Family::V4, Path::new("s")).unwrap();
        assert!(same(&st, &back), "{text}");
        for bad in [
            "n service-x%0Aflush%20ruleset",
            "n KUBE-SVC-X",
            "n service-a%3Bdelete",
            "e cluster-ips%0910.0.0.1%20%7D%0Aflush%20ruleset",
            "e cluster-ips",
            "e Cluster%0910.0.0.1",
        ] {
            let t = format!("podwire-iptables-gen 3 IPv4\ns 0 0 ns/x - -\n{bad}\n");
            assert!(parse(&t, Family::V4, Path::new("s")).is_err(), "{bad}");
        }
    }

    #[test]
    fn round_trip_and_corruption() {
        let st = sample();
        let p = Path::new("/x");
        let text = render(&st, Family::V4);
        assert!(same(&parse(&text, Family::V4, p).unwrap(), &st), "{text}");
        assert!(parse(&text, Family::V6, p).is_err(), "family mismatch");
        assert!(parse("garbage", Family::V4, p).is_err());
        let v1 = text.replace("iptables-gen 3", "iptables-gen 1");
        assert!(parse(&v1, Family::V4, p).is_err(), "older format");
        let bad = text.replace("KUBE-SVC-AAAAAAAAAAAAAAAA", "KUBE-SVC-A\"; rm -rf");
        assert!(parse(&bad, Family::V4, p).is_err());
        let bad = text.replace("ns/a ns/a:http", "ns/a\"x ns/a:http");
        assert!(parse(&bad, Family::V4, p).is_err());
        let orphan_chain = format!(
            "{}c KUBE-SEP-X\n",
            text.lines()
                .take(3)
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        );
        assert!(parse(&orphan_chain, Family::V4, p).is_err());
    }

    #[test]
    fn pending_commit_invalidate() {
        let d = tempfile::tempdir().unwrap();
        let st = sample();
        assert!(load(d.path(), Family::V4).unwrap().is_none());
        save_pending(d.path(), Family::V4, &st).unwrap();
        assert!(
            load(d.path(), Family::V4).unwrap().is_none(),
            "pending is not state"
        );
        commit(d.path(), Family::V4).unwrap();
        assert!(same(&load(d.path(), Family::V4).unwrap().unwrap(), &st));
        assert!(commit(d.path(), Family::V4).is_err(), "nothing pending");
        invalidate(d.path(), Family::V4);
        assert!(load(d.path(), Family::V4).unwrap().is_none());
    }
}
