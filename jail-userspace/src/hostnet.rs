//! The host's own network as the kernel routes it, read over rtnetlink: what the jail must not
//! reach besides the default deny ranges.
//!
//! - every address of the host but loopback, and every connected subnet;
//! - the destination of every non-default route of every routing table that some `ip rule` can
//!   send traffic to (a VPN, a site range in public space), whatever the rule's selectors
//!   (`to`, `from`, `fwmark`, `iif`, `oif`, ...): Tailscale, strongSwan, wg-quick and
//!   NetworkManager put their routes in tables of their own, selected by such rules. The main
//!   and local tables always count. Blackhole, unreachable, prohibit and throw routes count too
//!   (nothing is reachable there, so denying costs nothing) and so do broadcast routes;
//! - every local (and anycast) route of those tables: `ip route add local 198.18.0.0/24 dev lo`
//!   (AnyIP) makes the whole range the host's own address.
//!
//! See docs/design.md, "The host's network". This reads the network namespace of the calling
//! thread.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
    rule::{RuleAction, RuleAttribute, RuleMessage},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// What [`HostNet::read`] found. Each list is sorted and free of duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostNet {
    /// Each address of the host (a /32 or /128) and its interface; loopback addresses
    /// (127/8, ::1) are left out, but any other address on `lo` is included.
    pub addrs: Vec<(IpNet, String)>,
    /// The connected subnet of each address (`192.168.1.100/24` -> `192.168.1.0/24`), except
    /// where it is the address itself (a /32 or /128).
    pub subnets: Vec<(IpNet, String)>,
    /// Destinations of the routes of every table a rule can select (see the module
    /// documentation), with their output device when there is one. Default routes are left
    /// out, and so are routes shorter than /8 (see [`is_default_split`]).
    pub routes: Vec<(IpNet, Option<String>)>,
    /// Destinations of local and anycast routes of those tables (AnyIP ranges): the host accepts
    /// them as its own. Loopback and prefixes already in `addrs` are left out; shorter than /8
    /// as for `routes`.
    pub local: Vec<(IpNet, Option<String>)>,
    /// The routes left out as pieces of a default route, for `policy` to show.
    pub default_splits: Vec<(IpNet, Option<String>)>,
}

/// Why the host's network could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    #[error("rtnetlink: {0}")]
    Io(std::io::Error),
    #[error("rtnetlink: cannot decode a reply: {0}")]
    Decode(String),
    #[error("rtnetlink: the kernel refused the {what} dump: error {code}")]
    Refused { what: &'static str, code: i32 },
    #[error("rtnetlink: the {0} dump kept changing while it was read")]
    Interrupted(&'static str),
}

// By hand rather than `#[from]`, which would also make the error its own `source()` and so print
// it twice under `{:#}`: a typed error's message is the whole story, once.
impl From<std::io::Error> for HostNetError {
    fn from(e: std::io::Error) -> Self {
        HostNetError::Io(e)
    }
}

/// The main and local routing tables' ids (linux/rtnetlink.h): always read, whatever the rules
/// say (they are the tables of a host without policy routing; denying is the safe side).
const RT_TABLE_MAIN: u32 = 254;
const RT_TABLE_LOCAL: u32 = 255;

/// A route shorter than /8 is a piece of a default route (OpenVPN's `def1` adds 0.0.0.0/1 and
/// 128.0.0.0/1; its IPv6 equivalent ::/3 and 2000::/4): denying it would deny most of the
/// Internet, which is the jail's whole point to reach. Internal ranges such routes may carry
/// are in the default deny set or are the site's to add with `deny-ip`.
pub fn is_default_split(net: &IpNet) -> bool {
    net.prefix_len() < 8
}

fn is_loopback(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => n.network().octets()[0] == 127 && n.prefix_len() >= 8,
        IpNet::V6(n) => n.network() == Ipv6Addr::LOCALHOST && n.prefix_len() == 128,
    }
}

impl HostNet {
    /// Reads addresses, links and routes of the calling thread's network namespace.
    pub fn read() -> Result<HostNet, HostNetError> {
        let mut nl = Netlink::open()?;
        let mut names = BTreeMap::new();
        for msg in nl.dump("link", RouteNetlinkMessage::GetLink(LinkMessage::default()))? {
            if let RouteNetlinkMessage::NewLink(l) = msg {
                let name = l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                });
                names.insert(
                    l.header.index,
                    name.unwrap_or_else(|| format!("if{}", l.header.index)),
                );
            }
        }
        let ifname = |index: u32| {
            names
                .get(&index)
                .cloned()
                .unwrap_or_else(|| format!("if{index}"))
        };
        let mut addrs = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = AddressMessage::default();
            req.header.family = fam;
            for msg in nl.dump("address", RouteNetlinkMessage::GetAddress(req))? {
                if let RouteNetlinkMessage::NewAddress(a) = msg {
                    if let Some(x) = address_of(&a) {
                        addrs.push((x.0, x.1, x.2, ifname(a.header.index)));
                    }
                }
            }
        }
        let mut rules = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = RuleMessage::default();
            req.header.family = fam;
            let msgs = match nl.dump("rule", RouteNetlinkMessage::GetRule(req)) {
                Ok(m) => m,
                // The kernel has no rules for this family (IPv6 disabled at boot, or a kernel
                // without policy routing): its main and local tables are all there is.
                Err(HostNetError::Refused { code, .. }) if code.abs() == libc::EAFNOSUPPORT => {
                    Vec::new()
                }
                Err(e) => return Err(e),
            };
            for msg in msgs {
                if let RouteNetlinkMessage::NewRule(r) = msg {
                    rules.push(r);
                }
            }
        }
        let tables = Tables::of_rules(&rules);
        let mut routes = Vec::new();
        let mut local = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = RouteMessage::default();
            req.header.address_family = fam;
            // A dump without a table filter returns the routes of every table.
            for msg in nl.dump("route", RouteNetlinkMessage::GetRoute(req))? {
                if let RouteNetlinkMessage::NewRoute(r) = msg {
                    match route_of(&r, &tables) {
                        Some((RouteClass::Routed, net, oif)) => routes.push((net, oif.map(ifname))),
                        Some((RouteClass::Local, net, oif)) => local.push((net, oif.map(ifname))),
                        None => {}
                    }
                }
            }
        }
        Ok(HostNet::from_observed(addrs, routes, local))
    }

    /// Builds the lists from raw observations: `(local address, peer-or-local address,
    /// prefix length, interface)` and `(route destination, device)`. Pure, for tests.
    pub fn from_parts(
        addrs: Vec<(IpAddr, IpAddr, u8, String)>,
        routes: Vec<(IpNet, Option<String>)>,
    ) -> HostNet {
        HostNet::from_observed(addrs, routes, Vec::new())
    }

    /// [`HostNet::from_parts`] with the destinations of local routes too. Pure, for tests.
    pub fn from_observed(
        addrs: Vec<(IpAddr, IpAddr, u8, String)>,
        routes: Vec<(IpNet, Option<String>)>,
        local: Vec<(IpNet, Option<String>)>,
    ) -> HostNet {
        let mut out = HostNet::default();
        for (local, prefix_addr, len, ifname) in addrs {
            let host = IpNet::from(local);
            if !is_loopback(&host) {
                out.addrs.push((host, ifname.clone()));
            }
            let Ok(subnet) = IpNet::new(prefix_addr, len).map(|n| n.trunc()) else {
                continue;
            };
            if subnet != host && !is_loopback(&subnet) && !subnet_overlaps_loopback(&subnet) {
                out.subnets.push((subnet, ifname));
            }
        }
        for (is_local, (net, dev)) in routes
            .into_iter()
            .map(|r| (false, r))
            .chain(local.into_iter().map(|r| (true, r)))
        {
            let net = net.trunc();
            if net.prefix_len() == 0 {
                continue;
            }
            if is_default_split(&net) {
                out.default_splits.push((net, dev));
            } else if is_loopback(&net) || subnet_overlaps_loopback(&net) {
                continue;
            } else if !is_local {
                out.routes.push((net, dev));
            } else if !out.addrs.iter().any(|(a, _)| *a == net) {
                // The local route of each address is the address again: kept once, as that.
                out.local.push((net, dev));
            }
        }
        for v in [&mut out.addrs, &mut out.subnets] {
            v.sort();
            v.dedup();
        }
        for v in [&mut out.routes, &mut out.local, &mut out.default_splits] {
            v.sort();
            v.dedup();
        }
        out
    }
}

/// The routing tables traffic can be looked up in, per family: those some rule sends traffic to
/// (`lookup N`, whatever selects the traffic: `to`, `from`, `fwmark`, `iif`, `oif`, `uidrange`,
/// `not` ...), plus main and local. A selector narrows which traffic uses the table, not whether
/// the table's networks are reachable from the host: pasta's connections are the host's own, and
/// a mark, a source address or an interface binding can put them under any of these rules
/// (wg-quick's `not fwmark` rule matches all unmarked traffic). A VRF rule (`l3mdev`) takes its
/// table from the device: with one, every table counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    v4: BTreeSet<u32>,
    v6: BTreeSet<u32>,
    all_v4: bool,
    all_v6: bool,
}

impl Tables {
    /// The tables the rules of a dump (both families) select.
    pub fn of_rules(rules: &[RuleMessage]) -> Tables {
        let mut t = Tables::default();
        for v in [&mut t.v4, &mut t.v6] {
            v.extend([RT_TABLE_MAIN, RT_TABLE_LOCAL]);
        }
        for r in rules {
            let (set, all) = match r.header.family {
                AddressFamily::Inet => (&mut t.v4, &mut t.all_v4),
                AddressFamily::Inet6 => (&mut t.v6, &mut t.all_v6),
                _ => continue,
            };
            if r.attributes
                .iter()
                .any(|a| matches!(a, RuleAttribute::L3MDev(true)))
            {
                *all = true;
            }
            if r.header.action != RuleAction::ToTable {
                continue;
            }
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RuleAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            if table != 0 {
                set.insert(table);
            }
        }
        t
    }

    /// Whether a route of `table` (of `family`) can carry the host's traffic.
    pub fn selects(&self, family: AddressFamily, table: u32) -> bool {
        match family {
            AddressFamily::Inet => self.all_v4 || self.v4.contains(&table),
            AddressFamily::Inet6 => self.all_v6 || self.v6.contains(&table),
            _ => false,
        }
    }
}

/// Whether a prefix contains loopback (127/8 or ::1): denying it would cut the jail off from
/// its own namespace, and such a prefix is a default route's piece or a misconfiguration.
fn subnet_overlaps_loopback(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => n.contains(&Ipv4Addr::new(127, 0, 0, 1)),
        IpNet::V6(n) => n.contains(&Ipv6Addr::LOCALHOST),
    }
}

/// `(local, prefix address, prefix length)` of an address message. For IPv4, IFA_LOCAL is the
/// address and IFA_ADDRESS the peer on point-to-point links; IPv6 has only IFA_ADDRESS.
fn address_of(a: &AddressMessage) -> Option<(IpAddr, IpAddr, u8)> {
    let mut local = None;
    let mut address = None;
    for attr in &a.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    let local = local.or(address)?;
    Some((local, address.unwrap_or(local), a.header.prefix_len))
}

/// What a route makes of its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RouteClass {
    /// Reached through the host (unicast), or refused by it (blackhole, unreachable, prohibit,
    /// throw), or its broadcast: a routed range.
    Routed,
    /// Delivered to the host itself (local, anycast): the host's own addresses.
    Local,
}

/// The class, destination and output interface of a route of a table that `tables` selects,
/// unless it is a default route or a multicast one (multicast is denied by default).
fn route_of(r: &RouteMessage, tables: &Tables) -> Option<(RouteClass, IpNet, Option<u32>)> {
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table));
    if !tables.selects(r.header.address_family, table) {
        return None;
    }
    let class = match r.header.kind {
        RouteType::Local | RouteType::Anycast => RouteClass::Local,
        RouteType::Multicast => return None,
        _ => RouteClass::Routed,
    };
    let len = r.header.destination_prefix_length;
    if len == 0 {
        return None;
    }
    let mut dst = None;
    let mut oif = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(IpAddr::V4(*ip)),
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => dst = Some(IpAddr::V6(*ip)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let net = IpNet::new(dst?, len).ok()?;
    Some((class, net, oif))
}

/// A NETLINK_ROUTE socket for dump requests.
struct Netlink {
    sock: Socket,
    seq: u32,
}

impl Netlink {
    fn open() -> Result<Netlink, HostNetError> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink { sock, seq: 0 })
    }

    /// Sends a dump request and collects every reply until NLMSG_DONE. A dump the kernel marks
    /// as interrupted (the table changed meanwhile) is asked again, a few times.
    fn dump(
        &mut self,
        what: &'static str,
        req: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, HostNetError> {
        for _ in 0..5 {
            self.seq = self.seq.wrapping_add(1);
            let mut msg =
                NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(req.clone()));
            msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
            msg.header.sequence_number = self.seq;
            msg.finalize();
            let mut buf = vec![0u8; msg.buffer_len()];
            msg.serialize(&mut buf);
            self.sock.send(&buf, 0)?;
            let mut out = Vec::new();
            let mut interrupted = false;
            'recv: loop {
                let (data, _) = self.sock.recv_from_full()?;
                let mut off = 0;
                while off < data.len() {
                    let reply: NetlinkMessage<RouteNetlinkMessage> =
                        NetlinkMessage::deserialize(&data[off..])
                            .map_err(|e| HostNetError::Decode(e.to_string()))?;
                    let len = reply.header.length as usize;
                    if len == 0 {
                        return Err(HostNetError::Decode("zero-length message".into()));
                    }
                    // Netlink messages are 4-byte aligned within a datagram.
                    off += (len + 3) & !3;
                    if reply.header.sequence_number != self.seq {
                        continue;
                    }
                    if reply.header.flags & NLM_F_DUMP_INTR != 0 {
                        interrupted = true;
                    }
                    match reply.payload {
                        NetlinkPayload::Done(_) => break 'recv,
                        NetlinkPayload::Error(e) => {
                            if let Some(code) = e.code {
                                return Err(HostNetError::Refused {
                                    what,
                                    code: code.get(),
                                });
                            }
                        }
                        NetlinkPayload::InnerMessage(m) => out.push(m),
                        _ => {}
                    }
                }
            }
            if !interrupted {
                return Ok(out);
            }
        }
        Err(HostNetError::Interrupted(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn from_parts_keeps_what_must_be_denied() {
        let h = HostNet::from_parts(
            vec![
                (ip("127.0.0.1"), ip("127.0.0.1"), 8, "lo".into()),
                (ip("::1"), ip("::1"), 128, "lo".into()),
                (ip("198.51.100.7"), ip("198.51.100.7"), 32, "lo".into()),
                (ip("192.168.1.100"), ip("192.168.1.100"), 24, "eth0".into()),
                (ip("192.168.1.101"), ip("192.168.1.101"), 24, "eth0".into()),
                (ip("10.8.0.2"), ip("10.8.0.1"), 32, "tun0".into()),
                (ip("2001:db8::5"), ip("2001:db8::5"), 64, "eth0".into()),
            ],
            vec![
                (net("0.0.0.0/1"), Some("tun0".into())),
                (net("128.0.0.0/1"), Some("tun0".into())),
                (net("192.168.1.0/24"), Some("eth0".into())),
                (net("203.0.113.0/24"), None),
                (net("127.0.0.0/8"), Some("lo".into())),
                (net("2000::/3"), Some("tun0".into())),
            ],
        );
        let addrs: Vec<_> = h
            .addrs
            .iter()
            .map(|(n, i)| (n.to_string(), i.as_str()))
            .collect();
        assert_eq!(
            addrs,
            vec![
                ("10.8.0.2/32".to_string(), "tun0"),
                ("192.168.1.100/32".into(), "eth0"),
                ("192.168.1.101/32".into(), "eth0"),
                ("198.51.100.7/32".into(), "lo"),
                ("2001:db8::5/128".into(), "eth0"),
            ],
            "every address but loopback, including a non-loopback address on lo"
        );
        let subnets: Vec<_> = h.subnets.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(
            subnets,
            vec!["10.8.0.1/32", "192.168.1.0/24", "2001:db8::/64"],
            "connected subnets, de-duplicated, a point-to-point peer included, /32 of itself not"
        );
        let routes: Vec<_> = h.routes.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(
            routes,
            vec!["192.168.1.0/24", "203.0.113.0/24"],
            "no loopback, no default pieces"
        );
        let splits: Vec<_> = h
            .default_splits
            .iter()
            .map(|(n, _)| n.to_string())
            .collect();
        assert_eq!(splits, vec!["0.0.0.0/1", "128.0.0.0/1", "2000::/3"]);
    }

    #[test]
    fn local_routes_are_host_addresses_once() {
        let h = HostNet::from_observed(
            vec![(ip("192.168.1.100"), ip("192.168.1.100"), 24, "eth0".into())],
            vec![(net("192.168.1.255/32"), Some("eth0".into()))],
            vec![
                (net("192.168.1.100/32"), Some("eth0".into())),
                (net("198.18.0.0/24"), Some("lo".into())),
                (net("2001:db8:aa::/64"), Some("lo".into())),
                (net("127.0.0.0/8"), Some("lo".into())),
                (net("127.0.0.1/32"), Some("lo".into())),
                (net("::1/128"), Some("lo".into())),
                (net("0.0.0.0/4"), Some("lo".into())),
            ],
        );
        let local: Vec<_> = h.local.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(local, vec!["198.18.0.0/24", "2001:db8:aa::/64"]);
        assert_eq!(
            h.default_splits,
            vec![(net("0.0.0.0/4"), Some("lo".into()))]
        );
        assert_eq!(
            h.routes,
            vec![(net("192.168.1.255/32"), Some("eth0".into()))]
        );
    }

    #[test]
    fn pastas_policy_denies_the_same_host_entries_as_the_jails() {
        // pasta connects from the host: a range the host routes through a VPN table, or owns
        // through an AnyIP route, must be refused to it as to the jail.
        let h = HostNet::from_observed(
            vec![],
            vec![
                (net("198.19.0.0/24"), Some("vpn0".into())),
                (net("2001:db8:19::/48"), Some("vpn0".into())),
            ],
            vec![
                (net("198.18.0.0/24"), Some("lo".into())),
                (net("2001:db8:aa::/64"), Some("lo".into())),
            ],
        );
        let conf = crate::conf::Conf::empty(std::path::Path::new("t"));
        let (jail, pasta, _) =
            crate::policy::policies(&conf, &h, &[], &[], &Default::default()).unwrap();
        for a in [
            "198.19.0.10",
            "2001:db8:19::10",
            "198.18.0.5",
            "2001:db8:aa::5",
        ] {
            for (who, p) in [("jail", &jail), ("pasta", &pasta)] {
                assert!(
                    !p.decide(ip(a), 80, jail_common::PROTO_TCP).allowed,
                    "{who} may not reach {a}"
                );
            }
        }
    }

    fn rule(
        family: AddressFamily,
        action: RuleAction,
        table: u8,
        attrs: Vec<RuleAttribute>,
    ) -> RuleMessage {
        let mut r = RuleMessage::default();
        r.header.family = family;
        r.header.action = action;
        r.header.table = table;
        r.attributes = attrs;
        r
    }

    #[test]
    fn rules_select_tables_per_family() {
        use AddressFamily::{Inet, Inet6};
        let t = Tables::of_rules(&[
            rule(Inet, RuleAction::ToTable, 52, vec![]),
            rule(
                Inet,
                RuleAction::ToTable,
                0,
                vec![RuleAttribute::Table(1000)],
            ),
            rule(Inet, RuleAction::Goto, 0, vec![RuleAttribute::Goto(5)]),
            rule(Inet, RuleAction::Blackhole, 60, vec![]),
            rule(
                Inet6,
                RuleAction::ToTable,
                220,
                vec![RuleAttribute::FwMark(1)],
            ),
        ]);
        for (f, n, want) in [
            (Inet, 254, true),
            (Inet, 255, true),
            (Inet6, 254, true),
            (Inet, 52, true),
            (Inet, 1000, true),
            (Inet, 60, false),
            (Inet, 220, false),
            (Inet6, 220, true),
            (Inet6, 52, false),
        ] {
            assert_eq!(t.selects(f, n), want, "family {f:?} table {n}");
        }
        let vrf = Tables::of_rules(&[rule(
            Inet,
            RuleAction::ToTable,
            0,
            vec![RuleAttribute::L3MDev(true)],
        )]);
        assert!(
            vrf.selects(Inet, 7),
            "an l3mdev rule makes every table count"
        );
        assert!(!vrf.selects(Inet6, 7));
    }

    /// Runs `ip ARGS` in the calling thread's network namespace (a child inherits it).
    fn ip_cmd(args: &str) -> Result<(), String> {
        let out = Command::new("ip")
            .args(args.split_whitespace())
            .output()
            .map_err(|e| format!("ip {args}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {args}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    #[test]
    fn reads_addresses_subnets_and_routes_of_a_fresh_namespace() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        if Command::new("ip").arg("-V").output().is_err() {
            eprintln!("skipped: no `ip` command");
            return;
        }
        // unshare(CLONE_NEWNET) in a thread of its own moves only that thread; everything below
        // configures that new namespace and never the one the tests started in.
        let res = std::thread::spawn(|| -> Result<Option<HostNet>, String> {
            let ns = || std::fs::read_link("/proc/thread-self/ns/net").map_err(|e| e.to_string());
            let before = ns()?;
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                eprintln!("skipped: unshare(CLONE_NEWNET): {e}");
                return Ok(None);
            }
            if ns()? == before {
                return Err(
                    "unshare left the thread in its namespace: refusing to configure it".into(),
                );
            }
            for c in [
                "link set lo up",
                "addr add 198.51.100.7/32 dev lo",
                "link add v0 type veth peer name v1",
                "addr add 10.9.0.1/16 dev v0",
                "addr add 192.0.2.10 peer 192.0.2.1/32 dev v1",
                "link set v0 up",
                "link set v1 up",
                "-6 addr add fd00:9::1/64 dev v0 nodad",
                "route add 198.18.0.0/15 via 10.9.0.2",
                "route add 0.0.0.0/1 via 10.9.0.2",
                "route add default via 10.9.0.2",
                "route add 203.0.113.0/24 dev v0 table 100",
                "-6 route add 2001:db8:77::/48 via fd00:9::2",
                // Policy routing: tables selected by `to`, `from`, `fwmark` and `iif` rules,
                // and an IPv6 one; table 100 above has no rule.
                "route add 198.19.1.0/24 via 10.9.0.2 table 101",
                "rule add to 198.19.1.0/24 lookup 101",
                "route add 198.19.2.0/24 via 10.9.0.2 table 102",
                "rule add from 10.9.0.1 lookup 102",
                "route add 198.19.3.0/24 via 10.9.0.2 table 103",
                "rule add fwmark 0xca6c lookup 103",
                "route add 198.19.4.0/24 via 10.9.0.2 table 104",
                "rule add iif v0 lookup 104",
                "-6 route add 2001:db8:88::/48 via fd00:9::2 table 105",
                "-6 rule add to 2001:db8:88::/48 lookup 105",
                // An IPv4 rule selects no IPv6 table of the same number.
                "-6 route add 2001:db8:99::/48 via fd00:9::2 table 101",
                // AnyIP, and what the host cannot reach.
                "route add local 198.18.5.0/24 dev lo",
                "-6 route add local 2001:db8:aa::/64 dev lo",
                "route add blackhole 198.19.9.0/24",
                "route add unreachable 198.19.10.0/24 table 101",
            ] {
                ip_cmd(c)?;
            }
            HostNet::read().map(Some).map_err(|e| e.to_string())
        })
        .join()
        .expect("the namespace thread panicked");
        let h = match res {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => panic!("{e}"),
        };
        let has =
            |v: &[(IpNet, String)], n: &str, i: &str| v.iter().any(|(a, b)| *a == net(n) && b == i);
        for (n, i) in [
            ("198.51.100.7/32", "lo"),
            ("10.9.0.1/32", "v0"),
            ("192.0.2.10/32", "v1"),
            ("fd00:9::1/128", "v0"),
        ] {
            assert!(has(&h.addrs, n, i), "address {n} on {i} in {:?}", h.addrs);
        }
        assert!(
            h.addrs.iter().all(|(a, _)| !a.addr().is_loopback()),
            "loopback addresses are left out: {:?}",
            h.addrs
        );
        for (n, i) in [
            ("10.9.0.0/16", "v0"),
            ("192.0.2.1/32", "v1"),
            ("fd00:9::/64", "v0"),
        ] {
            assert!(
                has(&h.subnets, n, i),
                "subnet {n} of {i} in {:?}",
                h.subnets
            );
        }
        let routes: Vec<_> = h
            .routes
            .iter()
            .map(|(n, d)| (n.to_string(), d.clone()))
            .collect();
        for (n, d) in [
            ("10.9.0.0/16", "v0"),
            ("198.18.0.0/15", "v0"),
            ("2001:db8:77::/48", "v0"),
        ] {
            assert!(
                routes.contains(&(n.to_string(), Some(d.to_string()))),
                "route {n} via {d} in {routes:?}"
            );
        }
        for (n, d) in [
            ("198.19.1.0/24", Some("v0")),
            ("198.19.2.0/24", Some("v0")),
            ("198.19.3.0/24", Some("v0")),
            ("198.19.4.0/24", Some("v0")),
            ("2001:db8:88::/48", Some("v0")),
            ("198.19.9.0/24", None),
            ("198.19.10.0/24", None),
            ("10.9.255.255/32", Some("v0")),
        ] {
            assert!(
                routes.contains(&(n.to_string(), d.map(str::to_string))),
                "route {n} (table a rule selects, or blackhole/unreachable/broadcast) in {routes:?}"
            );
        }
        assert!(
            !routes.iter().any(|(n, _)| n == "203.0.113.0/24"),
            "no rule selects table 100"
        );
        assert!(
            !routes.iter().any(|(n, _)| n == "2001:db8:99::/48"),
            "an IPv4 rule selects no IPv6 table"
        );
        let local: Vec<_> = h.local.iter().map(|(n, _)| n.to_string()).collect();
        for n in ["198.18.5.0/24", "2001:db8:aa::/64"] {
            assert!(local.contains(&n.to_string()), "AnyIP {n} in {local:?}");
        }
        assert!(
            !local
                .iter()
                .any(|n| n.starts_with("127.") || n == "::1/128"),
            "no loopback: {local:?}"
        );
        assert!(
            !local.contains(&"10.9.0.1/32".to_string()),
            "an address's own local route is the address, kept once: {local:?}"
        );
        assert!(
            !routes.iter().any(|(n, _)| n == "0.0.0.0/0"),
            "no default route"
        );
        assert_eq!(
            h.default_splits,
            vec![(net("0.0.0.0/1"), Some("v0".into()))]
        );
    }
}
