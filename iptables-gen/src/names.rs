//! kube-proxy's chain names: `base32(sha256(svcPortName + protocol [+ endpoint]))[:16]`.

use sha2::{Digest, Sha256};

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// The first 16 characters of the RFC 4648 base32 (standard alphabet) encoding of the
/// sha256 of the concatenated parts. 16 chars = 80 bits = the first 10 bytes.
pub fn hash16(parts: &[&str]) -> String {
    let mut out = String::with_capacity(16);
    hash16_into(&mut out, parts);
    out
}

/// [`hash16`] appended to `out` (chain names are built with one allocation).
fn hash16_into(out: &mut String, parts: &[&str]) {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    let d = h.finalize();
    for chunk in d[..10].chunks(5) {
        let v = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        for i in (0..8).rev() {
            out.push(B32[((v >> (i * 5)) & 31) as usize] as char);
        }
    }
}

/// The hash shared by a service port's SVC, SVL, EXT and FW chains.
pub fn port_proto_hash(svc_port_name: &str, protocol: &str) -> String {
    hash16(&[svc_port_name, protocol])
}

pub fn svc_chain(h: &str) -> String {
    format!("KUBE-SVC-{h}")
}
pub fn svl_chain(h: &str) -> String {
    format!("KUBE-SVL-{h}")
}
pub fn ext_chain(h: &str) -> String {
    format!("KUBE-EXT-{h}")
}
pub fn fw_chain(h: &str) -> String {
    format!("KUBE-FW-{h}")
}
/// `endpoint` is `ip:port` (`[ip]:port` for IPv6) with the endpoint's target port.
pub fn sep_chain(svc_port_name: &str, protocol: &str, endpoint: &str) -> String {
    let mut out = String::with_capacity(25);
    out.push_str("KUBE-SEP-");
    hash16_into(&mut out, &[svc_port_name, protocol, endpoint]);
    out
}

/// Prefixes of the per-service chains (the ones partial syncs and stale deletion manage).
pub const SERVICE_CHAIN_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples() {
        assert_eq!(port_proto_hash("ns1/svc1:p80", "tcp"), "XPGD46QRK7WJZT7O");
        assert_eq!(
            sep_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80"),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
        for (spn, h) in [
            ("ns2/svc2:p80", "GNZBNJ2PO5MGZ6GT"),
            ("ns3/svc3:p80", "X27LE4BHSL4DOUIK"),
            ("ns4/svc4:p80", "4SW47YFZTEDKD3PK"),
            ("ns5/svc5:p80", "NUKIZ6OKUXPJNT4C"),
            ("ns2/svc2:p8080", "2VJB64SDSIJUP5T6"),
        ] {
            assert_eq!(port_proto_hash(spn, "tcp"), h, "{spn}");
        }
        assert_eq!(
            sep_chain("ns5/svc5:p80", "tcp", "10.180.0.3:80"),
            "KUBE-SEP-I77PXRDZVX7PMWMN"
        );
        assert_eq!(fw_chain("NUKIZ6OKUXPJNT4C").len(), 24);
        assert_eq!(svc_chain("NUKIZ6OKUXPJNT4C").len(), 25);
    }
}
