//! Address math shared by the conf parser and the policy compiler: addresses as the eBPF maps
//! store them, and the IPv6 forms that carry an IPv4 address. A leaf: it uses nothing of the
//! crate.
//!
//! IPv6 addresses that carry an IPv4 address are judged as that IPv4 address, after `::` and
//! `::1` (which are judged as IPv6: decoded they would be 0.0.0.0 and 0.0.0.1): IPv4-mapped
//! `::ffff:0:0/96`, IPv4-compatible `::/96`, NAT64 `64:ff9b::/96`. The programs decode them the
//! same way (jail-ebpf), so the maps hold IPv4 forms for them.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The top 96 bits of the IPv6 prefixes whose last 32 bits are an IPv4 address.
pub const MAPPED_HI: u128 = 0xffff;
pub const COMPAT_HI: u128 = 0;
pub const NAT64_HI: u128 = 0x0064_ff9b_0000_0000_0000_0000;

/// An IPv4 address as the maps store it.
pub fn ne4(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

/// An IPv6 address as the maps store it.
pub fn ne6(a: Ipv6Addr) -> [u32; 4] {
    let o = a.octets();
    let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// A destination as the programs judge it: IPv4-carrying IPv6 forms decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judged {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

pub fn judged(ip: IpAddr) -> Judged {
    match ip {
        IpAddr::V4(a) => Judged::V4(a),
        IpAddr::V6(a) => {
            let n = u128::from(a);
            // `::` and `::1` first: they are this host in IPv6, not 0.0.0.0 and 0.0.0.1.
            if n <= 1 {
                return Judged::V6(a);
            }
            match n >> 32 {
                MAPPED_HI | COMPAT_HI | NAT64_HI => Judged::V4(Ipv4Addr::from(n as u32)),
                _ => Judged::V6(a),
            }
        }
    }
}

/// Whether `ip`, as the programs judge it, is a loopback address.
pub fn is_loopback(ip: IpAddr) -> bool {
    match judged(ip) {
        Judged::V4(a) => a.is_loopback(),
        Judged::V6(a) => a.is_loopback(),
    }
}

/// The map-side form of a prefix: IPv4-carrying IPv6 prefixes (≥ /96) become IPv4 prefixes.
/// Within `::/96`, `::` and `::1` stay IPv6 (kept as the IPv6 prefix) and are cut out of the
/// IPv4 part, which may then take several prefixes. An IPv6 prefix shorter than /96 stays IPv6
/// only: it never matches an IPv4-carrying address, which is judged in IPv4.
pub fn map_forms(net: IpNet) -> (Vec<Ipv4Net>, Option<Ipv6Net>) {
    let n6 = match net {
        IpNet::V4(n) => return (vec![n], None),
        IpNet::V6(n) => n,
    };
    let p = n6.prefix_len();
    if p < 96 {
        return (Vec::new(), Some(n6));
    }
    let a = u128::from(n6.network());
    let low = a as u32;
    let q = p - 96;
    let as_v4 = |addr: u32, len: u8| Ipv4Net::new(Ipv4Addr::from(addr), len).ok();
    match a >> 32 {
        MAPPED_HI | NAT64_HI => (as_v4(low, q).into_iter().collect(), None),
        COMPAT_HI => {
            if p == 128 && low <= 1 {
                (Vec::new(), Some(n6))
            } else if low == 0 {
                // Contains `::` and `::1`: the IPv6 prefix for them, and the IPv4 prefix less
                // 0.0.0.0/31 as the siblings along the path down to it.
                let v4s = (q + 1..=31)
                    .filter_map(|k| as_v4(1u32 << (32 - k), k))
                    .collect();
                (v4s, Some(n6))
            } else {
                (as_v4(low, q).into_iter().collect(), None)
            }
        }
        _ => (Vec::new(), Some(n6)),
    }
}

/// Whether `outer` contains the whole of `inner`, comparing their map forms.
pub fn covers(outer: IpNet, inner: IpNet) -> bool {
    let (o4, o6) = map_forms(outer);
    let (i4, i6) = map_forms(inner);
    let v4_ok = i4.iter().all(|i| o4.iter().any(|o| o.contains(i)));
    let v6_ok = match i6 {
        None => true,
        Some(i) => o6.is_some_and(|o| o.contains(&i)),
    };
    (!i4.is_empty() || i6.is_some()) && v4_ok && v6_ok
}

/// The IPv4 prefix that an IPv4-carrying IPv6 prefix (/96 or longer inside `::ffff:0:0/96`,
/// `::/96` or `64:ff9b::/96`) is judged as; `None` for an IPv4 prefix, any other IPv6 prefix, and
/// `::` and `::1` (judged as IPv6). For a `::/96` prefix that contains `::` and `::1`, the IPv4
/// prefix as if they were not cut out.
pub fn embedded_ipv4(net: IpNet) -> Option<Ipv4Net> {
    let IpNet::V6(n6) = net else { return None };
    let p = n6.prefix_len();
    let a = u128::from(n6.network());
    let low = a as u32;
    if p < 96 || !matches!(a >> 32, MAPPED_HI | COMPAT_HI | NAT64_HI) {
        return None;
    }
    if a >> 32 == COMPAT_HI && p == 128 && low <= 1 {
        return None;
    }
    Ipv4Net::new(Ipv4Addr::from(low), p - 96).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn map_forms_of_ipv4_carrying_prefixes() {
        // ::/96 keeps :: and ::1 as IPv6 and its IPv4 part skips 0.0.0.0 and 0.0.0.1.
        let (v4s, v6) = map_forms(net("::/96"));
        assert_eq!(v6, Some("::/96".parse().unwrap()));
        assert_eq!(v4s.len(), 31);
        assert!(v4s
            .iter()
            .all(|n| !n.contains(&Ipv4Addr::new(0, 0, 0, 1))
                && !n.contains(&Ipv4Addr::new(0, 0, 0, 0))));
        assert!(
            v4s.iter().any(|n| n.contains(&Ipv4Addr::new(0, 0, 0, 2)))
                && v4s
                    .iter()
                    .any(|n| n.contains(&Ipv4Addr::new(255, 255, 255, 255)))
        );
        assert_eq!(
            map_forms(net("::1/128")),
            (vec![], Some("::1/128".parse().unwrap()))
        );
        assert_eq!(
            map_forms(net("::/127")),
            (vec![], Some("::/127".parse().unwrap()))
        );
        assert_eq!(
            map_forms(net("::2/127")),
            (vec!["0.0.0.2/31".parse().unwrap()], None)
        );
        assert_eq!(
            map_forms(net("::ffff:0:0/95")),
            (vec![], Some("::ffff:0:0/95".parse().unwrap())),
            "shorter than /96 stays IPv6"
        );
    }

    #[test]
    fn embedded_ipv4_forms() {
        let e = |s: &str| embedded_ipv4(net(s)).map(|n| n.to_string());
        assert_eq!(e("::ffff:0:0/96").as_deref(), Some("0.0.0.0/0"));
        assert_eq!(e("64:ff9b::/96").as_deref(), Some("0.0.0.0/0"));
        assert_eq!(e("::/96").as_deref(), Some("0.0.0.0/0"));
        assert_eq!(e("::ffff:127.0.0.0/104").as_deref(), Some("127.0.0.0/8"));
        assert_eq!(e("64:ff9b::a00:5/128").as_deref(), Some("10.0.0.5/32"));
        assert_eq!(e("::7f00:1/128").as_deref(), Some("127.0.0.1/32"));
        for none in [
            "::1/128",
            "::/128",
            "::ffff:0:0/95",
            "fd00::/96",
            "10.0.0.0/8",
        ] {
            assert_eq!(e(none), None, "{none}");
        }
    }
}
