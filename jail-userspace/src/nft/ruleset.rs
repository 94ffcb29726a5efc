//! The compiled policy as nftables sets: what [`super::install`] loads, and a model of the
//! chain's evaluation ([`Ruleset::allows`]) that the tests hold against `Policy::decide`.
//!
//! The eBPF maps are longest-prefix-match tries, but the verdict never depends on the length
//! of the matching prefix: any allow entry beats any deny entry (policy.rs, `judge`). So each
//! trie becomes one interval set holding the union of its prefixes (overlapping and adjacent
//! prefixes merged, as an nftables interval set requires), and the order of the rules carries
//! the precedence: port allows, then prefix allows, then denies, then the chain's accept.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use jail_common::{PROTO_TCP, PROTO_UDP};

use crate::policy::MapEntries;

/// The nflog group the deny rules log to, unless [`Ruleset::with_log_group`] says otherwise.
/// Groups are per network namespace: the jail's namespace has no other user of it.
pub const DEFAULT_LOG_GROUP: u16 = 7400;

/// The IPv6 destinations that carry an IPv4 address and are judged as it (policy.rs, `judged`):
/// `::/96` less `::` and `::1` (IPv4-compatible), `::ffff:0:0/96` (IPv4-mapped), `64:ff9b::/96`
/// (NAT64). Inclusive ranges, sorted.
pub const EMBEDDED_V4: [(u128, u128); 3] = [
    (2, 0xffff_ffff),
    (0xffff_0000_0000, 0xffff_ffff_ffff),
    (
        0x0064_ff9b_0000_0000_0000_0000_0000_0000,
        0x0064_ff9b_0000_0000_0000_0000_ffff_ffff,
    ),
];

/// Inclusive address ranges, sorted, pairwise disjoint and never adjacent (so each is exactly
/// one start element and at most one end element of an interval set).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ranges(Vec<(u128, u128)>);

impl Ranges {
    /// The union of `ranges` (inclusive, in any order, overlapping or not).
    pub fn union(mut ranges: Vec<(u128, u128)>) -> Ranges {
        ranges.sort_unstable();
        let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match out.last_mut() {
                // Overlapping or adjacent (`hi + 1 == lo`): one range.
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        Ranges(out)
    }

    pub fn as_slice(&self) -> &[(u128, u128)] {
        &self.0
    }

    pub fn contains(&self, a: u128) -> bool {
        // The last range starting at or below `a` is the only candidate.
        let i = self.0.partition_point(|&(lo, _)| lo <= a);
        i > 0 && self.0[i - 1].1 >= a
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The range of a prefix of `bits`-bit addresses (`network` in host order).
fn prefix_range(network: u128, len: u32, bits: u32) -> (u128, u128) {
    let host_bits = bits - len.min(bits);
    let span = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    let lo = network & !span;
    (lo, lo | span)
}

/// An address of the maps (network byte order in a native `u32`) in host order.
fn map4(a: u32) -> u32 {
    u32::from_be_bytes(a.to_ne_bytes())
}

fn map6(a: [u32; 4]) -> u128 {
    let mut o = [0u8; 16];
    for (i, w) in a.iter().enumerate() {
        o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    u128::from_be_bytes(o)
}

/// The jail's output chain as data: the sets' contents and the log group. Built by
/// [`Ruleset::compile`] from the same [`MapEntries`] the eBPF maps are filled from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ruleset {
    /// IPv4 addresses (host order) that any port/protocol may reach: `allow4` (and the IPv4
    /// form of allowed IPv4-carrying IPv6 prefixes).
    pub allow4: Ranges,
    pub deny4: Ranges,
    pub allow6: Ranges,
    pub deny6: Ranges,
    /// `(address, protocol, port)` that is allowed; TCP and UDP only, never port 0.
    pub allow4_port: BTreeSet<(Ipv4Addr, u8, u16)>,
    pub allow6_port: BTreeSet<(Ipv6Addr, u8, u16)>,
    pub log_group: u16,
}

impl Ruleset {
    /// The ruleset that decides as `Policy::decide` does for every packet the output hook
    /// sees. Pure and deterministic.
    ///
    /// The port maps' port-0 markers are left out: they serve the eBPF packet backstop's
    /// non-first fragments, and `decide` never looks a port 0 up (a destination without a port
    /// is judged by prefixes only). In nftables a non-first fragment has no transport header,
    /// so the port lookup does not match and the prefixes judge it: stricter than the
    /// backstop, never looser. Only TCP and UDP entries are taken (the only protocols a conf
    /// can name with a port).
    pub fn compile(m: &MapEntries) -> Ruleset {
        let v4 = |set: &std::collections::BTreeMap<(u32, u32), _>| {
            Ranges::union(
                set.keys()
                    .map(|&(len, a)| prefix_range(u128::from(map4(a)), len, 32))
                    .collect(),
            )
        };
        let v6 = |set: &std::collections::BTreeMap<(u32, [u32; 4]), _>| {
            Ranges::union(
                set.keys()
                    .map(|&(len, a)| prefix_range(map6(a), len, 128))
                    .collect(),
            )
        };
        let ported = |port: u16, proto: u8| port != 0 && (proto == PROTO_TCP || proto == PROTO_UDP);
        Ruleset {
            allow4: v4(&m.allow4),
            deny4: v4(&m.deny4),
            allow6: v6(&m.allow6),
            deny6: v6(&m.deny6),
            allow4_port: m
                .allow4_port
                .keys()
                .filter(|k| ported(k.port, k.proto))
                .map(|k| (Ipv4Addr::from(map4(k.addr)), k.proto, k.port))
                .collect(),
            allow6_port: m
                .allow6_port
                .keys()
                .filter(|k| ported(k.port, k.proto))
                .map(|k| (Ipv6Addr::from(map6(k.addr)), k.proto, k.port))
                .collect(),
            log_group: DEFAULT_LOG_GROUP,
        }
    }

    /// The same ruleset logging refusals to nflog group `group`.
    pub fn with_log_group(mut self, group: u16) -> Ruleset {
        self.log_group = group;
        self
    }

    /// What the installed chain does with a packet to `dst` (its destination address as on
    /// the wire), transport protocol `proto` and destination port `port` (0 for a protocol
    /// without ports, or a non-first fragment): the rules of [`super::install`] in their order.
    /// True: accepted; false: logged and rejected.
    ///
    /// For ICMP and ICMPv6 this is an echo request, the only type a process without
    /// CAP_NET_RAW can send. The chain first accepts the types only the kernel sends (errors,
    /// including the reject's own admin-prohibited to the jail's address, neighbour discovery,
    /// MLD), which the eBPF mode does not judge either.
    pub fn allows(&self, dst: IpAddr, port: u16, proto: u8) -> bool {
        match dst {
            IpAddr::V4(a) => self.allows4(a, port, proto),
            IpAddr::V6(a) => {
                let n = u128::from(a);
                if EMBEDDED_V4.iter().any(|&(lo, hi)| (lo..=hi).contains(&n)) {
                    return self.allows4(Ipv4Addr::from(n as u32), port, proto);
                }
                if self.allow6_port.contains(&(a, proto, port)) || self.allow6.contains(n) {
                    return true;
                }
                !self.deny6.contains(n)
            }
        }
    }

    fn allows4(&self, a: Ipv4Addr, port: u16, proto: u8) -> bool {
        let n = u128::from(u32::from(a));
        if self.allow4_port.contains(&(a, proto, port)) || self.allow4.contains(n) {
            return true;
        }
        !self.deny4.contains(n)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use ipnet::IpNet;
    use jail_common::PROTO_ICMP;
    use proptest::prelude::*;

    use super::*;
    use crate::{
        conf::{self, AllowEntry, Conf, Located, PortSpec, Proto},
        hostnet::HostNet,
        policy::{Policy, Source},
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn policy(text: &str) -> Policy {
        let c = conf::parse(Path::new("t.conf"), text.as_bytes()).unwrap();
        let host = HostNet::from_parts(
            vec![(ip("192.168.1.100"), ip("192.168.1.100"), 24, "eth0".into())],
            vec![],
        );
        Policy::build(&c, &host)
    }

    fn v4(s: &str) -> u128 {
        u128::from(u32::from(s.parse::<Ipv4Addr>().unwrap()))
    }

    #[test]
    fn union_merges_overlapping_and_adjacent_ranges() {
        let r = Ranges::union(vec![(10, 20), (0, 3), (21, 25), (4, 4), (30, 40), (35, 36)]);
        assert_eq!(r.as_slice(), &[(0, 4), (10, 25), (30, 40)]);
        assert!(r.contains(0) && r.contains(4) && r.contains(25) && r.contains(40));
        assert!(!r.contains(5) && !r.contains(26) && !r.contains(41));
        let top = Ranges::union(vec![(u128::MAX - 1, u128::MAX), (0, u128::MAX - 5)]);
        assert_eq!(
            top.as_slice(),
            &[(0, u128::MAX - 5), (u128::MAX - 1, u128::MAX)]
        );
        assert_eq!(Ranges::union(vec![(0, u128::MAX), (7, 9)]).len(), 1);
        assert!(Ranges::union(vec![]).is_empty());
    }

    #[test]
    fn default_policy_sets() {
        let p = policy("");
        let r = Ruleset::compile(p.map_entries());
        // 10/8, 100.64/10, 172.16/12, 192.168/16 (the host's /24 inside it), 169.254/16,
        // 0/8, 224/4 and 240/4 (adjacent: one range up to 255.255.255.255).
        assert!(r
            .deny4
            .as_slice()
            .contains(&(v4("224.0.0.0"), v4("255.255.255.255"))));
        assert!(r
            .deny4
            .as_slice()
            .contains(&(v4("192.168.0.0"), v4("192.168.255.255"))));
        assert_eq!(r.deny4.len(), 7, "{:?}", r.deny4);
        // Loopback is allowed.
        assert_eq!(
            r.allow4.as_slice(),
            &[(v4("127.0.0.0"), v4("127.255.255.255"))]
        );
        assert_eq!(r.allow6.as_slice(), &[(1, 1)]);
        assert!(r.allow4_port.is_empty() && r.allow6_port.is_empty());
        assert_eq!(r.log_group, DEFAULT_LOG_GROUP);
        assert_eq!(r.clone().with_log_group(3).log_group, 3);
    }

    #[test]
    fn narrow_allow_inside_a_broad_deny_and_a_deny_inside_an_allow() {
        // allow beats deny whatever their lengths: a /32 allow inside the default 10/8, and a
        // deny /25 inside an allowed /24 that stays allowed.
        let p = policy(
            "allow-ip = 10.1.2.3\nallow-ip = 203.0.113.0/24\ndeny-ip = 203.0.113.128/25\n\
             allow-ip = 172.16.0.5:22/tcp\nallow-ip = [fd00::5]:80\n",
        );
        let r = Ruleset::compile(p.map_entries());
        for (a, port, proto, want) in [
            ("10.1.2.3", 443, PROTO_TCP, true),
            ("10.1.2.4", 443, PROTO_TCP, false),
            ("203.0.113.200", 80, PROTO_UDP, true),
            ("172.16.0.5", 22, PROTO_TCP, true),
            ("172.16.0.5", 22, PROTO_UDP, false),
            ("172.16.0.5", 23, PROTO_TCP, false),
            // ICMP has no port: the port entry never opens it.
            ("172.16.0.5", 0, PROTO_ICMP, false),
            ("172.16.0.5", 0, PROTO_TCP, false),
            ("fd00::5", 80, PROTO_TCP, true),
            ("fd00::5", 80, PROTO_UDP, true),
            ("fd00::5", 81, PROTO_UDP, false),
            ("fd00::6", 80, PROTO_TCP, false),
            // Embedded IPv4, judged as IPv4.
            ("::ffff:10.1.2.3", 1, PROTO_TCP, true),
            ("::ffff:10.1.2.4", 1, PROTO_TCP, false),
            ("64:ff9b::ac10:5", 22, PROTO_TCP, true),
            ("64:ff9b::ac10:5", 22, PROTO_UDP, false),
            ("::10.9.9.9", 22, PROTO_UDP, false),
            ("::8.8.8.8", 22, PROTO_UDP, true),
            ("::", 22, PROTO_UDP, true),
            ("::1", 22, PROTO_UDP, true),
            ("64:ff9b:1::a00:1", 22, PROTO_UDP, false),
        ] {
            let want_decide = p.decide(ip(a), port, proto).allowed;
            assert_eq!(want_decide, want, "decide {a} {port} {proto}");
            assert_eq!(
                r.allows(ip(a), port, proto),
                want,
                "ruleset {a} {port} {proto}"
            );
        }
        // Port-0 markers are not in the port sets.
        assert!(r.allow4_port.iter().all(|&(_, _, port)| port != 0));
        assert_eq!(
            r.allow4_port.iter().copied().collect::<Vec<_>>(),
            vec![(Ipv4Addr::new(172, 16, 0, 5), PROTO_TCP, 22)]
        );
        assert_eq!(r.allow6_port.len(), 2, "tcp and udp");
    }

    #[test]
    fn compile_is_deterministic_and_follows_the_entries() {
        let a = Ruleset::compile(policy("allow-ip = 10.0.0.0/24\n").map_entries());
        assert_eq!(
            a,
            Ruleset::compile(policy("allow-ip = 10.0.0.0/24\n").map_entries())
        );
        assert_ne!(
            a,
            Ruleset::compile(policy("allow-ip = 10.0.1.0/24\n").map_entries())
        );
    }

    fn v4_pool() -> impl Strategy<Value = u32> {
        prop_oneof![
            any::<u32>(),
            (0u32..4, any::<u16>()).prop_map(|(hi, lo)| [0x0a00_0000, 0xc0a8_0000, 0, 0x7f00_0000]
                [hi as usize]
                | u32::from(lo)),
        ]
    }

    fn ip_strategy() -> impl Strategy<Value = IpAddr> {
        let v4 = v4_pool().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a)));
        let v6 = prop_oneof![
            any::<u128>(),
            v4_pool().prop_map(|a| 0xffff_0000_0000 | u128::from(a)),
            v4_pool().prop_map(u128::from),
            v4_pool().prop_map(|a| 0x0064_ff9b_u128 << 96 | u128::from(a)),
            0u128..4,
            (any::<u16>(), any::<u64>()).prop_map(|(a, b)| [0xfd00u128, 0x2002, 0x2001, 0xfe80]
                [a as usize % 4]
                << 112
                | u128::from(b)),
        ]
        .prop_map(|a| IpAddr::V6(Ipv6Addr::from(a)));
        prop_oneof![v4, v6]
    }

    fn net_strategy() -> impl Strategy<Value = IpNet> {
        (ip_strategy(), any::<u8>()).prop_map(|(a, l)| {
            let max = if a.is_ipv4() { 32 } else { 128 };
            let len = if l < 200 {
                max - (l % 9).min(max)
            } else {
                l % (max + 1)
            };
            IpNet::new(a, len).unwrap().trunc()
        })
    }

    fn entry_strategy() -> impl Strategy<Value = AllowEntry> {
        let port = prop_oneof![
            Just(None),
            (1u16..4, 0u8..3).prop_map(|(p, pr)| Some(PortSpec {
                port: p,
                proto: [None, Some(Proto::Tcp), Some(Proto::Udp)][pr as usize]
            })),
        ];
        (ip_strategy(), port, any::<bool>()).prop_map(|(a, port, single)| {
            let net = if single || port.is_some() {
                IpNet::from(a)
            } else {
                let max = if a.is_ipv4() { 32 } else { 128 };
                IpNet::new(a, max - 8).unwrap().trunc()
            };
            AllowEntry { net, port }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// The chain's model agrees with `Policy::decide` for random policies (allows with and
        /// without ports, denies of any length, the host's routes) and random destinations.
        #[test]
        fn ruleset_agrees_with_policy_decide(
            allows in prop::collection::vec(entry_strategy(), 0..10),
            denies in prop::collection::vec(net_strategy(), 0..8),
            routes in prop::collection::vec(net_strategy(), 0..3),
            dsts in prop::collection::vec((ip_strategy(), 0u16..4, 0u8..3), 1..24),
        ) {
            let mut c = Conf::empty(Path::new("t"));
            for d in &denies {
                c.deny.push(Located::at(1, *d));
            }
            for a in &allows {
                c.allow.push(Located::at(2, *a));
            }
            let h = HostNet::from_parts(vec![], routes.iter().map(|n| (*n, None)).collect());
            let p = Policy::build(&c, &h).with_extra_allow(
                [(AllowEntry { net: "10.0.0.53/32".parse().unwrap(), port: Some(PortSpec { port: 53, proto: None }) }, Source::Resolver)]);
            let r = Ruleset::compile(p.map_entries());
            for &(dst, port, proto) in &dsts {
                let proto = [PROTO_TCP, PROTO_UDP, PROTO_ICMP][proto as usize];
                let port = if proto == PROTO_ICMP { 0 } else { port };
                prop_assert_eq!(
                    r.allows(dst, port, proto),
                    p.decide(dst, port, proto).allowed,
                    "{} port {} proto {} in {:#?}", dst, port, proto, p.rules()
                );
            }
        }
    }
}
