//! The host's own network, read over rtnetlink: what the jail must not reach besides the default
//! deny ranges. Every address of the host but loopback, every connected subnet, and every
//! destination of a non-default route in the main table (a VPN, a site range in public space).
//!
//! This reads the network namespace of the calling thread.
use std::{
    collections::BTreeMap,
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
    /// Destinations of the main table's routes, with their output device when there is one.
    /// Default routes are left out, and so are routes shorter than /8 (see [`is_default_split`]).
    pub routes: Vec<(IpNet, Option<String>)>,
    /// The routes left out as pieces of a default route, for `policy` to show.
    pub default_splits: Vec<(IpNet, Option<String>)>,
}

/// Why the host's network could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    #[error("rtnetlink: {0}")]
    Io(#[from] std::io::Error),
    #[error("rtnetlink: cannot decode a reply: {0}")]
    Decode(String),
    #[error("rtnetlink: the kernel refused the {what} dump: error {code}")]
    Refused { what: &'static str, code: i32 },
    #[error("rtnetlink: the {0} dump kept changing while it was read")]
    Interrupted(&'static str),
}

/// The main routing table's id.
const RT_TABLE_MAIN: u32 = netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN as u32;

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
        let mut routes = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = RouteMessage::default();
            req.header.address_family = fam;
            for msg in nl.dump("route", RouteNetlinkMessage::GetRoute(req))? {
                if let RouteNetlinkMessage::NewRoute(r) = msg {
                    if let Some((net, oif)) = route_of(&r) {
                        routes.push((net, oif.map(ifname)));
                    }
                }
            }
        }
        Ok(HostNet::from_parts(addrs, routes))
    }

    /// Builds the lists from raw observations: `(local address, peer-or-local address,
    /// prefix length, interface)` and `(route destination, device)`. Pure, for tests.
    pub fn from_parts(
        addrs: Vec<(IpAddr, IpAddr, u8, String)>,
        routes: Vec<(IpNet, Option<String>)>,
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
        for (net, dev) in routes {
            let net = net.trunc();
            if net.prefix_len() == 0 {
                continue;
            }
            if is_default_split(&net) {
                out.default_splits.push((net, dev));
            } else if !subnet_overlaps_loopback(&net) {
                out.routes.push((net, dev));
            }
        }
        for v in [&mut out.addrs, &mut out.subnets] {
            v.sort();
            v.dedup();
        }
        for v in [&mut out.routes, &mut out.default_splits] {
            v.sort();
            v.dedup();
        }
        out
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

/// The destination and output interface of a route of the main table, unless it is a default
/// route or a local, broadcast, anycast or multicast one.
fn route_of(r: &RouteMessage) -> Option<(IpNet, Option<u32>)> {
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table));
    if table != RT_TABLE_MAIN {
        return None;
    }
    if matches!(
        r.header.kind,
        RouteType::Local | RouteType::Broadcast | RouteType::Anycast | RouteType::Multicast
    ) {
        return None;
    }
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
    Some((net, oif))
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
        assert!(
            !routes.iter().any(|(n, _)| n == "203.0.113.0/24"),
            "table 100 is not the main table"
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
