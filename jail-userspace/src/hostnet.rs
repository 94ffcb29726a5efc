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
