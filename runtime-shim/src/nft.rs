//! A small nf_tables client over netlink (NETLINK_NETFILTER), for podwire's own tables.
//!
//! Why not `nft` or `iptables`: a pod setup must prove on every ADD that its network's
//! masquerade is in place (a flush or a firewall reload may have removed it), and an
//! exec costs more than the rest of the setup (`iptables -C` is 1.5 ms here, per family).
//! One rule dump over an open socket costs tens of microseconds. Changes go in one
//! nfnetlink batch: the kernel applies it as one transaction, all or nothing.
//!
//! Only what podwire writes is modelled: tables of family `inet`, base chains, and rules
//! made of meta / payload / bitwise / cmp / immediate / masq expressions. Every rule and
//! table carries a comment in nft's own user-data format, so `nft list ruleset` shows them
//! as `comment "…"`, and podwire recognises what it made.

use std::io;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_sys::{Socket, SocketAddr};

use crate::link::{NlOp, nl_err};
use crate::{Error, Result};

const NETLINK_NETFILTER: isize = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFPROTO_INET: u8 = 1;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;

// enum nf_tables_msg_types
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_TABLE_USERDATA: u16 = 6;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;

const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NF_ACCEPT: u32 = 1;
/// nft's user-data TLV type of a comment (tables, chains and rules alike).
const UDATA_COMMENT: u8 = 0;
/// nft refuses longer comments (NFTNL_UDATA_COMMENT_MAXLEN, NUL included).
pub const COMMENT_MAX: usize = 127;

/// Netfilter hooks of the `inet` family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Forward = 2,
    Postrouting = 4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainType {
    Filter,
    Nat,
}

impl ChainType {
    fn name(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    IifName = 6,
    OifName = 7,
    NfProto = 15,
    IifGroup = 21,
    OifGroup = 22,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Drop,
    Return,
}

impl Verdict {
    fn code(self) -> u32 {
        match self {
            Verdict::Drop => 0,
            // NFT_RETURN = -5
            Verdict::Return => (-5i32) as u32,
        }
    }
}

/// One expression; loads go to register 1, which the next expression reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Meta(MetaKey),
    /// Bytes of the network header.
    Payload {
        offset: u32,
        len: u32,
    },
    /// reg1 = reg1 & mask.
    Mask(Vec<u8>),
    Cmp {
        equal: bool,
        data: Vec<u8>,
    },
    Verdict(Verdict),
    Masquerade,
}

/// `meta nfproto ipv4|ipv6`.
pub fn nfproto(v4: bool) -> Vec<Expr> {
    vec![
        Expr::Meta(MetaKey::NfProto),
        Expr::Cmp {
            equal: true,
            data: vec![if v4 { 2 } else { 10 }],
        },
    ]
}

/// `ip[6] saddr|daddr NET` (the family must be matched first).
pub fn addr(source: bool, net: &IpNet) -> Vec<Expr> {
    let (offset, bytes): (u32, Vec<u8>) = match net.network() {
        IpAddr::V4(a) => (if source { 12 } else { 16 }, a.octets().to_vec()),
        IpAddr::V6(a) => (if source { 8 } else { 24 }, a.octets().to_vec()),
    };
    let mut v = vec![Expr::Payload {
        offset,
        len: bytes.len() as u32,
    }];
    if net.prefix_len() < net.max_prefix_len() {
        let mask = match net.netmask() {
            IpAddr::V4(m) => m.octets().to_vec(),
            IpAddr::V6(m) => m.octets().to_vec(),
        };
        v.push(Expr::Mask(mask));
    }
    v.push(Expr::Cmp {
        equal: true,
        data: bytes,
    });
    v
}

/// `iifname|oifname [!=] NAME`, an exact match (the NUL is compared too).
pub fn ifname(input: bool, equal: bool, name: &str) -> Vec<Expr> {
    let mut data = name.as_bytes().to_vec();
    data.push(0);
    vec![
        Expr::Meta(if input {
            MetaKey::IifName
        } else {
            MetaKey::OifName
        }),
        Expr::Cmp { equal, data },
    ]
}

/// `iifgroup|oifgroup GROUP`.
pub fn ifgroup(input: bool, group: u32) -> Vec<Expr> {
    vec![
        Expr::Meta(if input {
            MetaKey::IifGroup
        } else {
            MetaKey::OifGroup
        }),
        Expr::Cmp {
            equal: true,
            data: group.to_ne_bytes().to_vec(),
        },
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub exprs: Vec<Expr>,
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub kind: ChainType,
    pub hook: Hook,
    pub priority: i32,
    pub rules: Vec<Rule>,
}

/// A whole `inet` table, as podwire writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    pub comment: String,
    pub chains: Vec<Chain>,
}

impl Table {
    /// (chain, rule comment) of every rule, in order: what [`Nft::rule_comments`] reads back.
    pub fn rule_comments(&self) -> Vec<(String, String)> {
        self.chains
            .iter()
            .flat_map(|c| c.rules.iter().map(|r| (c.name.clone(), r.comment.clone())))
            .collect()
    }
}

/// Netlink message building: attributes are (len, type, payload, padding to 4).
#[derive(Default)]
struct Buf(Vec<u8>);

impl Buf {
    fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.pad();
        self
    }
    fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(ty, &v)
    }
    fn be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }
    fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Buf)) -> &mut Self {
        let start = self.0.len();
        self.0.extend_from_slice(&[0, 0]);
        self.0.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        f(self);
        let len = (self.0.len() - start) as u16;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }
    fn pad(&mut self) {
        while self.0.len() % 4 != 0 {
            self.0.push(0);
        }
    }
}

/// nft's user data holding one comment.
fn comment_udata(comment: &str) -> Vec<u8> {
    let mut c: Vec<u8> = comment.bytes().take(COMMENT_MAX - 1).collect();
    c.push(0);
    let mut v = vec![UDATA_COMMENT, c.len() as u8];
    v.extend_from_slice(&c);
    v
}

/// The comment in nft user data, if any.
fn udata_comment(mut u: &[u8]) -> Option<String> {
    while u.len() >= 2 {
        let (ty, len) = (u[0], u[1] as usize);
        let value = u.get(2..2 + len)?;
        if ty == UDATA_COMMENT {
            let s = value.strip_suffix(&[0]).unwrap_or(value);
            return Some(String::from_utf8_lossy(s).into_owned());
        }
        u = &u[2 + len..];
    }
    None
}

fn expr(b: &mut Buf, e: &Expr) {
    let (name, data): (&str, Buf) = {
        let mut d = Buf::default();
        let name = match e {
            Expr::Meta(key) => {
                d.be32(1, NFT_REG_1).be32(2, *key as u32);
                "meta"
            }
            Expr::Payload { offset, len } => {
                d.be32(1, NFT_REG_1)
                    .be32(2, NFT_PAYLOAD_NETWORK_HEADER)
                    .be32(3, *offset)
                    .be32(4, *len);
                "payload"
            }
            Expr::Mask(mask) => {
                d.be32(1, NFT_REG_1)
                    .be32(2, NFT_REG_1)
                    .be32(3, mask.len() as u32)
                    .nest(4, |n| {
                        n.attr(NFTA_DATA_VALUE, mask);
                    })
                    .nest(5, |n| {
                        n.attr(NFTA_DATA_VALUE, &vec![0; mask.len()]);
                    });
                "bitwise"
            }
            Expr::Cmp { equal, data } => {
                d.be32(1, NFT_REG_1)
                    .be32(2, if *equal { 0 } else { 1 })
                    .nest(3, |n| {
                        n.attr(NFTA_DATA_VALUE, data);
                    });
                "cmp"
            }
            Expr::Verdict(v) => {
                d.be32(1, NFT_REG_VERDICT).nest(2, |n| {
                    n.nest(NFTA_DATA_VERDICT, |n| {
                        n.be32(NFTA_VERDICT_CODE, v.code());
                    });
                });
                "immediate"
            }
            Expr::Masquerade => "masq",
        };
        (name, d)
    };
    b.nest(NFTA_LIST_ELEM, |b| {
        b.str(NFTA_EXPR_NAME, name);
        if !data.0.is_empty() {
            b.nest(NFTA_EXPR_DATA, |b| b.0.extend_from_slice(&data.0));
        }
    });
}

/// An attribute iterator over a message's payload.
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let data = &b[4..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some((ty, data))
    })
}

fn c_str(v: &[u8]) -> String {
    String::from_utf8_lossy(v.strip_suffix(&[0]).unwrap_or(v)).into_owned()
}

/// One reply message: (type, flags, seq, payload after the netlink header).
fn messages(b: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let h = b.get(off..off + 16)?;
        let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let ty = u16::from_ne_bytes([h[4], h[5]]);
        let seq = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
        if len < 16 || off + len > b.len() {
            return None;
        }
        let payload = &b[off + 16..off + len];
        off += (len + 3) & !3;
        Some((ty, seq, payload))
    })
}

/// The errno of an NLMSG_ERROR payload (0 is an ACK).
fn error_code(payload: &[u8]) -> i32 {
    payload
        .get(..4)
        .map(|e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]))
        .unwrap_or(-nix::libc::EPROTO)
}

pub struct Nft {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Nft {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Nft> {
        let err = |what, e| nl_err(NlOp::OpenSocket, what, e);
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(|e| err("nfnetlink socket", e))?;
        sock.bind_auto().map_err(|e| err("bind nfnetlink", e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| err("connect nfnetlink", e))?;
        let _ = sock.set_ext_ack(true);
        Ok(Nft {
            sock,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    fn header(&mut self, out: &mut Vec<u8>, ty: u16, flags: u16, family: u8, res_id: u16) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        out.extend_from_slice(&0u32.to_ne_bytes()); // length, patched by `finish`
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        out.extend_from_slice(&self.seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&[family, 0]);
        out.extend_from_slice(&res_id.to_be_bytes());
        self.seq
    }

    /// Append one nf_tables message (header, nfgenmsg, attributes) to `out`.
    fn msg(&mut self, out: &mut Vec<u8>, msg: u16, flags: u16, body: &Buf) -> u32 {
        let start = out.len();
        let seq = self.header(
            out,
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            flags,
            NFPROTO_INET,
            0,
        );
        out.extend_from_slice(&body.0);
        let len = (out.len() - start) as u32;
        out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        seq
    }

    fn batch_marker(&mut self, out: &mut Vec<u8>, ty: u16) -> u32 {
        let start = out.len();
        let seq = self.header(out, ty, 0, 0, NFNL_SUBSYS_NFTABLES);
        let len = (out.len() - start) as u32;
        out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        seq
    }

    /// Send a dump request and hand every reply's payload (after nfgenmsg) to `f`.
    fn dump(&mut self, op: NlOp, msg: u16, body: &Buf, mut f: impl FnMut(&[u8])) -> Result<()> {
        let mut out = Vec::new();
        let seq = self.msg(&mut out, msg, NLM_F_DUMP | NLM_F_ACK, body);
        let err = |e| nl_err(op, "inet", e);
        self.sock.send(&out, 0).map_err(err)?;
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0).map_err(err)?;
            for (ty, s, payload) in messages(&self.buf[..n]) {
                if s != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = error_code(payload);
                        if code == 0 {
                            return Ok(());
                        }
                        return Err(err(io::Error::from_raw_os_error(-code)));
                    }
                    _ => f(payload.get(4..).unwrap_or_default()),
                }
            }
        }
    }

    /// Send `msgs` (already encoded nf_tables messages, each with NLM_F_ACK) as one
    /// transaction; the first error, if any, after every reply is read.
    fn transact(&mut self, op: NlOp, target: &str, body: Vec<u8>, count: usize) -> Result<()> {
        let mut out = Vec::with_capacity(body.len() + 40);
        self.batch_marker(&mut out, NFNL_MSG_BATCH_BEGIN);
        out.extend_from_slice(&body);
        self.batch_marker(&mut out, NFNL_MSG_BATCH_END);
        let err = |e| nl_err(op, target, e);
        self.sock.send(&out, 0).map_err(err)?;
        // The kernel handles a batch inside send(): every reply is queued by now, one per
        // message (an ACK or an error), or a single error if the batch itself was refused.
        let mut seen = 0;
        let mut first: Option<i32> = None;
        while seen < count && first.is_none() {
            let n = self.sock.recv(&mut &mut self.buf[..], 0).map_err(err)?;
            for (ty, _, payload) in messages(&self.buf[..n]) {
                if ty == NLMSG_ERROR {
                    seen += 1;
                    let code = error_code(payload);
                    if code != 0 && first.is_none() {
                        first = Some(code);
                    }
                }
            }
        }
        // Drain what is left of a failed batch, so no stale reply meets the next request.
        if first.is_some() {
            while let Ok(n) = self
                .sock
                .recv(&mut &mut self.buf[..], nix::libc::MSG_DONTWAIT)
            {
                if n == 0 {
                    break;
                }
            }
        }
        match first {
            Some(code) => Err(err(io::Error::from_raw_os_error(-code))),
            None => Ok(()),
        }
    }

    /// The comment of table `name` (Some(None): the table exists without one), or None
    /// if there is no such table.
    pub fn table_comment(&mut self, name: &str) -> Result<Option<Option<String>>> {
        let mut body = Buf::default();
        body.str(NFTA_TABLE_NAME, name);
        let mut out = Vec::new();
        let seq = self.msg(&mut out, NFT_MSG_GETTABLE, NLM_F_ACK, &body);
        let err = |e| nl_err(NlOp::NftGetTable, name, e);
        self.sock.send(&out, 0).map_err(err)?;
        let mut found: Option<Option<String>> = None;
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0).map_err(err)?;
            for (ty, s, payload) in messages(&self.buf[..n]) {
                if s != seq {
                    continue;
                }
                if ty == NLMSG_ERROR {
                    return match error_code(payload) {
                        0 => Ok(found),
                        c if -c == nix::libc::ENOENT => Ok(None),
                        c => Err(err(io::Error::from_raw_os_error(-c))),
                    };
                }
                let comment = attrs(payload.get(4..).unwrap_or_default())
                    .find(|(t, _)| *t == NFTA_TABLE_USERDATA)
                    .and_then(|(_, u)| udata_comment(u));
                found = Some(comment);
            }
        }
    }

    /// (chain, comment) of every rule of table `name`, in order; empty if there is no
    /// such table.
    pub fn rule_comments(&mut self, table: &str) -> Result<Vec<(String, String)>> {
        let mut body = Buf::default();
        body.str(NFTA_RULE_TABLE, table);
        let mut v = Vec::new();
        let r = self.dump(NlOp::NftListRules, NFT_MSG_GETRULE, &body, |p| {
            let mut chain = String::new();
            let mut comment = String::new();
            let mut in_table = false;
            for (ty, data) in attrs(p) {
                match ty {
                    NFTA_RULE_TABLE => in_table = c_str(data) == table,
                    NFTA_RULE_CHAIN => chain = c_str(data),
                    NFTA_RULE_USERDATA => comment = udata_comment(data).unwrap_or_default(),
                    _ => {}
                }
            }
            if in_table {
                v.push((chain, comment));
            }
        });
        match r {
            Ok(()) => Ok(v),
            Err(Error::Netlink { source, .. })
                if source.raw_os_error() == Some(nix::libc::ENOENT) =>
            {
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// Replace table `t` as a whole, in one transaction. The caller has checked that a
    /// table of that name, if any, is its own.
    pub fn replace_table(&mut self, t: &Table) -> Result<()> {
        self.write_table(t, true)
    }

    /// Create table `t`, which must not exist (EEXIST otherwise, and nothing changes).
    /// Cheaper than a replace: deleting a table with base chains waits for an RCU grace
    /// period (16 ms here); creating one does not.
    pub fn create_table(&mut self, t: &Table) -> Result<()> {
        self.write_table(t, false)
    }

    fn write_table(&mut self, t: &Table, replace: bool) -> Result<()> {
        let mut out = Vec::new();
        let mut count = 0;
        let mut name = Buf::default();
        name.str(NFTA_TABLE_NAME, &t.name);
        if replace {
            // Add-then-delete makes the delete safe when the table is missing.
            self.msg(&mut out, NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_ACK, &name);
            self.msg(&mut out, NFT_MSG_DELTABLE, NLM_F_ACK, &name);
            count += 2;
        }
        let mut table = Buf::default();
        table
            .str(NFTA_TABLE_NAME, &t.name)
            .be32(NFTA_TABLE_FLAGS, 0)
            .attr(NFTA_TABLE_USERDATA, &comment_udata(&t.comment));
        let excl = if replace { 0 } else { NLM_F_EXCL };
        self.msg(
            &mut out,
            NFT_MSG_NEWTABLE,
            NLM_F_CREATE | excl | NLM_F_ACK,
            &table,
        );
        count += 1;
        for c in &t.chains {
            let mut b = Buf::default();
            b.str(NFTA_CHAIN_TABLE, &t.name)
                .str(NFTA_CHAIN_NAME, &c.name)
                .nest(NFTA_CHAIN_HOOK, |h| {
                    h.be32(NFTA_HOOK_HOOKNUM, c.hook as u32)
                        .be32(NFTA_HOOK_PRIORITY, c.priority as u32);
                })
                .be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
                .str(NFTA_CHAIN_TYPE, c.kind.name());
            self.msg(&mut out, NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_ACK, &b);
            count += 1;
            for r in &c.rules {
                let mut b = Buf::default();
                b.str(NFTA_RULE_TABLE, &t.name)
                    .str(NFTA_RULE_CHAIN, &c.name)
                    .nest(NFTA_RULE_EXPRESSIONS, |l| {
                        for e in &r.exprs {
                            expr(l, e);
                        }
                    })
                    .attr(NFTA_RULE_USERDATA, &comment_udata(&r.comment));
                self.msg(
                    &mut out,
                    NFT_MSG_NEWRULE,
                    NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK,
                    &b,
                );
                count += 1;
            }
        }
        self.transact(NlOp::NftApply, &t.name, out, count)
    }

    /// Delete table `name`; Ok(false) if there was none.
    pub fn delete_table(&mut self, name: &str) -> Result<bool> {
        let mut b = Buf::default();
        b.str(NFTA_TABLE_NAME, name);
        let mut out = Vec::new();
        self.msg(&mut out, NFT_MSG_DELTABLE, NLM_F_ACK, &b);
        match self.transact(NlOp::NftDeleteTable, name, out, 1) {
            Ok(()) => Ok(true),
            Err(Error::Netlink { source, .. })
                if source.raw_os_error() == Some(nix::libc::ENOENT) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_round_trip_in_nft_user_data() {
        let u = comment_udata("podwire 0123456789abcdef 1/3");
        assert_eq!(u[0], UDATA_COMMENT);
        assert_eq!(u[1] as usize, u.len() - 2);
        assert_eq!(
            udata_comment(&u).as_deref(),
            Some("podwire 0123456789abcdef 1/3")
        );
        // Too long: cut to nft's limit, never refused by the kernel or by nft.
        let long = "x".repeat(300);
        assert_eq!(comment_udata(&long).len(), 2 + COMMENT_MAX);
        assert_eq!(udata_comment(&[0, 9, b'a']), None, "truncated TLV");
    }

    #[test]
    fn address_matches_mask_only_prefixes() {
        let v4 = addr(false, &"10.1.0.0/16".parse().unwrap());
        assert_eq!(
            v4,
            vec![
                Expr::Payload { offset: 16, len: 4 },
                Expr::Mask(vec![255, 255, 0, 0]),
                Expr::Cmp {
                    equal: true,
                    data: vec![10, 1, 0, 0]
                },
            ]
        );
        let host = addr(true, &"fd00::1/128".parse().unwrap());
        assert_eq!(host.len(), 2, "a /128 needs no mask");
        assert_eq!(host[0], Expr::Payload { offset: 8, len: 16 });
    }

    #[test]
    fn attributes_are_padded_and_nested() {
        let mut b = Buf::default();
        b.str(1, "ab").nest(4, |n| {
            n.be32(1, 7);
        });
        // "ab\0" = 4 + 3, padded to 8; nest = 4 + 8.
        assert_eq!(b.0.len(), 8 + 12);
        let v: Vec<_> = attrs(&b.0).collect();
        assert_eq!(v[0], (1, &b"ab\0"[..]));
        assert_eq!(v[1].0, 4, "NLA_F_NESTED is masked off");
        let inner: Vec<_> = attrs(v[1].1).collect();
        assert_eq!(inner, vec![(1, &7u32.to_be_bytes()[..])]);
    }
}
