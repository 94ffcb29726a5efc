//! The compiled policy: allow and deny rules, each with where it came from, and the exact eBPF
//! map entries they compile to.
//!
//! The verdict for a destination (address, port, protocol), the same rule as jail-common's:
//!   1. an allow entry matches (exact address:port/protocol, or a prefix)  -> allowed;
//!   2. else a deny prefix matches                                          -> refused;
//!   3. else                                                                -> allowed.
//!
//! So a narrow allow inside a broad deny works (`allow-ip = 10.1.2.3` inside the default
//! 10.0.0.0/8), and a deny can never take back an allow.
//!
//! IPv6 addresses that carry an IPv4 address are judged as that IPv4 address, after `::` and
//! `::1` (which are judged as IPv6: decoded they would be 0.0.0.0 and 0.0.0.1):
//! IPv4-mapped `::ffff:0:0/96`, IPv4-compatible `::/96`, NAT64 `64:ff9b::/96`. Rules written in
//! those forms are compiled to their IPv4 form, so the maps hold what the programs look up. An
//! IPv6 prefix shorter than /96 never matches such an address: it is judged in IPv4 only.
//!
//! Every map entry holds the id of the rule that made it; a jail's ids are stable across
//! reloads ([`ids`]).
pub mod ids;
mod jail;

pub use ids::{RuleIds, RuleNames};
pub use jail::policies;

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use jail_common::{RuleId, MAX_PORT_ENTRIES, MAX_PREFIX_ENTRIES};
use sha2::{Digest, Sha256};

use crate::{
    conf::{AllowEntry, Conf, Located, PortSpec},
    hostnet::HostNet,
};
use ids::Numbering;

/// What the site did not have to write: ranges that reach internal hosts from anywhere.
pub const DEFAULT_DENY: [IpNet; 15] = [
    v4(10, 0, 0, 0, 8),
    v4(172, 16, 0, 0, 12),
    v4(192, 168, 0, 0, 16),
    v4(169, 254, 0, 0, 16),
    v4(100, 64, 0, 0, 10),
    // 0.0.0.0 dials the local host.
    v4(0, 0, 0, 0, 8),
    // Multicast, then reserved up to and including 255.255.255.255.
    v4(224, 0, 0, 0, 4),
    v4(240, 0, 0, 0, 4),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
    // IPv4-embedding prefixes that cannot be decoded by address alone: denied outright.
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32),
];

/// Loopback is the jail's own namespace: always allowed, even inside a site's `deny-ip`.
pub const LOOPBACK: [IpNet; 2] = [v4(127, 0, 0, 0, 8), v6([0, 0, 0, 0, 0, 0, 0, 1], 128)];

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> IpNet {
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len))
}

const fn v6(s: [u16; 8], len: u8) -> IpNet {
    IpNet::V6(Ipv6Net::new_assert(
        Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
        len,
    ))
}

/// The top 96 bits of the IPv6 prefixes whose last 32 bits are an IPv4 address.
const MAPPED_HI: u128 = 0xffff;
const COMPAT_HI: u128 = 0;
const NAT64_HI: u128 = 0x0064_ff9b_0000_0000_0000_0000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// Where a rule came from, for `policy` and for naming the rule an event carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// [`DEFAULT_DENY`].
    Default,
    Conf {
        path: PathBuf,
        line: usize,
    },
    HostAddress {
        ifname: String,
    },
    HostSubnet {
        ifname: String,
    },
    HostRoute {
        dev: Option<String>,
    },
    /// A local route's range (AnyIP): the host's own addresses.
    HostLocal {
        dev: Option<String>,
    },
    /// A DNS resolver of the host (pasta's own policy).
    Resolver,
    /// Added by claude-jail itself; the text says why.
    Builtin(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::Conf { path, line } => write!(f, "conf {}:{line}", path.display()),
            Source::HostAddress { ifname } => write!(f, "host address on {ifname}"),
            Source::HostSubnet { ifname } => write!(f, "host subnet of {ifname}"),
            Source::HostRoute { dev: Some(d) } => write!(f, "host route via {d}"),
            Source::HostRoute { dev: None } => f.write_str("host route"),
            Source::HostLocal { dev: Some(d) } => write!(f, "host local route on {d}"),
            Source::HostLocal { dev: None } => f.write_str("host local route"),
            Source::Resolver => f.write_str("host DNS resolver"),
            Source::Builtin(why) => write!(f, "builtin: {why}"),
        }
    }
}

/// One allow or deny entry. Deny rules never carry a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    /// As written (an IPv4-carrying IPv6 form stays so here; the maps get its IPv4 form).
    pub target: AllowEntry,
    pub source: Source,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({})",
            self.action.name(),
            self.target,
            self.source
        )
    }
}

/// The outcome of [`Policy::decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The entry that decided, `None` when nothing matched (allowed by rule 3).
    pub rule: Option<RuleId>,
}

/// Exactly the entries of the policy maps (jail_common::maps), as deterministic, de-duplicated
/// sets that a reload can diff by key. Addresses are in network byte order
/// (`u32::from_ne_bytes(octets)`), prefix keys are `(prefix_len, data)` as in aya's LPM `Key`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapEntries {
    pub allow4: BTreeMap<(u32, u32), RuleId>,
    pub allow6: BTreeMap<(u32, [u32; 4]), RuleId>,
    pub deny4: BTreeMap<(u32, u32), RuleId>,
    pub deny6: BTreeMap<(u32, [u32; 4]), RuleId>,
    /// `(addr, port, proto)`; see [`port_key4`]. Port 0 is the per-address/protocol marker.
    pub allow4_port: BTreeMap<(u32, u16, u8), RuleId>,
    /// `(addr, port, proto)`; see [`port_key6`].
    pub allow6_port: BTreeMap<([u32; 4], u16, u8), RuleId>,
}

/// The hash-map key for an `allow4_port` entry.
pub fn port_key4(&(addr, port, proto): &(u32, u16, u8)) -> jail_common::PortKey4 {
    jail_common::PortKey4 {
        addr,
        port,
        proto,
        _pad: 0,
    }
}

/// The hash-map key for an `allow6_port` entry.
pub fn port_key6(&(addr, port, proto): &([u32; 4], u16, u8)) -> jail_common::PortKey6 {
    jail_common::PortKey6 {
        addr,
        port,
        proto,
        _pad: 0,
    }
}

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

impl MapEntries {
    /// Per map: its name, what fills it, its capacity, and how many of `self`'s entries are
    /// not in `other` (all of them with an empty `other`).
    fn count_new(&self, other: &MapEntries) -> [(&'static str, &'static str, u32, usize); 6] {
        fn new<K: Ord, V>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> usize {
            a.keys().filter(|k| !b.contains_key(k)).count()
        }
        let (p, q) = (MAX_PREFIX_ENTRIES, MAX_PORT_ENTRIES);
        [
            (
                "allow4",
                "IPv4 allow entries without a port",
                p,
                new(&self.allow4, &other.allow4),
            ),
            (
                "allow6",
                "IPv6 allow entries without a port",
                p,
                new(&self.allow6, &other.allow6),
            ),
            (
                "deny4",
                "IPv4 deny entries (defaults, deny-ip, the host's)",
                p,
                new(&self.deny4, &other.deny4),
            ),
            (
                "deny6",
                "IPv6 deny entries (defaults, deny-ip, the host's)",
                p,
                new(&self.deny6, &other.deny6),
            ),
            (
                "allow4_port",
                "IPv4 ADDR:PORT allow entries, two per entry and protocol",
                q,
                new(&self.allow4_port, &other.allow4_port),
            ),
            (
                "allow6_port",
                "IPv6 [ADDR]:PORT allow entries, two per entry and protocol",
                q,
                new(&self.allow6_port, &other.allow6_port),
            ),
        ]
    }

    /// Why these entries would not fit the maps (jail-common's capacities), if they would not.
    pub fn over_capacity(&self) -> Option<String> {
        let none = MapEntries::default();
        self.count_new(&none)
            .into_iter()
            .find(|&(_, _, cap, n)| n > cap as usize)
            .map(|(name, what, cap, n)| {
                format!(
                    "the policy does not fit the maps: {n} {name} entries ({what}), the map \
                     holds {cap}. Fix: fewer entries, or CIDRs that cover several addresses"
                )
            })
    }

    /// Why bringing maps that hold `current` to these entries would overflow a map, if it
    /// would: a reload adds the new entries before it removes the old ones (so that nothing
    /// allowed before and after is ever refused), so each map must hold old ∪ new at once.
    /// Checked before anything is changed, so that a reload never stops half-way.
    pub fn reload_over_capacity(&self, current: &MapEntries) -> Option<String> {
        if let Some(m) = self.over_capacity() {
            return Some(m);
        }
        let now = current.count_new(&MapEntries::default());
        let added = self.count_new(current);
        now.into_iter()
            .zip(added)
            .map(|((name, what, cap, old), (_, _, _, add))| (name, what, cap, old, add))
            .find(|&(_, _, cap, old, add)| old + add > cap as usize)
            .map(|(name, what, cap, old, add)| {
                format!(
                    "the new policy cannot be applied without a gap: the {name} map ({what}) \
                     holds {old} entries now and the new policy adds {add} more, {} in all \
                     while old and new are both present, and the map holds {cap}. Nothing was \
                     changed. Fix: fewer entries or CIDRs that cover several addresses, or make \
                     the change in two reloads (first remove entries, then add)",
                    old + add
                )
            })
    }

    /// 16 hex digits of the SHA-256 of these entries (rule ids included), as [`Policy::digest`]:
    /// `claude-jail verify` compares what the kernel's maps hold with what the launch compiled.
    pub fn digest(&self) -> String {
        let h = Sha256::digest(self.canonical().as_bytes());
        h.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// A canonical text form, one entry per line: what [`Policy::digest`] hashes.
    fn canonical(&self) -> String {
        use fmt::Write;
        let mut s = String::new();
        // Writing to a String cannot fail.
        for ((l, a), r) in &self.allow4 {
            let _ = writeln!(s, "allow4 {l} {a:08x} {r}");
        }
        for ((l, a), r) in &self.allow6 {
            let _ = writeln!(s, "allow6 {l} {a:08x?} {r}");
        }
        for ((l, a), r) in &self.deny4 {
            let _ = writeln!(s, "deny4 {l} {a:08x} {r}");
        }
        for ((l, a), r) in &self.deny6 {
            let _ = writeln!(s, "deny6 {l} {a:08x?} {r}");
        }
        for ((a, p, pr), r) in &self.allow4_port {
            let _ = writeln!(s, "allow4_port {a:08x} {p} {pr} {r}");
        }
        for ((a, p, pr), r) in &self.allow6_port {
            let _ = writeln!(s, "allow6_port {a:08x?} {p} {pr} {r}");
        }
        s
    }
}

/// A destination as the programs judge it: IPv4-carrying IPv6 forms decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Judged {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

fn judged(ip: IpAddr) -> Judged {
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

/// The map-side form of a prefix: IPv4-carrying IPv6 prefixes (≥ /96) become IPv4 prefixes.
/// Within `::/96`, `::` and `::1` stay IPv6 (kept as the IPv6 prefix) and are cut out of the
/// IPv4 part, which may then take several prefixes.
fn map_forms(net: IpNet) -> (Vec<Ipv4Net>, Option<Ipv6Net>) {
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

/// Host-derived deny entries shorter than this in their IPv4 form are not compiled: a NAT64 route
/// `64:ff9b::/96` would otherwise deny the whole IPv4 internet (as the default-route pieces of
/// IPv4 routes, which [`crate::hostnet`] leaves out by the same length).
pub const MIN_HOST_DENY_V4_LEN: u8 = 8;

/// The compiled policy. `ids[i]` is the [`RuleId`] of `rules[i]`: its position, unless the
/// policy was numbered with a jail's ids ([`Policy::numbered`]).
#[derive(Clone, Debug)]
pub struct Policy {
    rules: Vec<Rule>,
    ids: Vec<RuleId>,
    /// Kept for the proxy warning: a `host-port` may open a proxy on the host's loopback.
    host_ports: Vec<(Located<PortSpec>, Source)>,
    /// Host-derived deny entries left out, with their IPv4 form (see [`MIN_HOST_DENY_V4_LEN`]).
    skipped: Vec<(IpNet, Ipv4Net, Source)>,
    entries: MapEntries,
}

impl Policy {
    /// The jail's policy: loopback, the conf's allows, the default and conf denies, then the
    /// host's addresses, connected subnets, routes and local (AnyIP) ranges.
    pub fn build(conf: &Conf, host: &HostNet) -> Policy {
        let conf_src = |line| Source::Conf {
            path: conf.path.clone(),
            line,
        };
        let mut rules = Vec::new();
        let mut push = |action, net: IpNet, port, source| {
            rules.push(Rule {
                action,
                target: AllowEntry { net, port },
                source,
            })
        };
        for net in LOOPBACK {
            push(
                Action::Allow,
                net,
                None,
                Source::Builtin("loopback, the jail's own namespace"),
            );
        }
        for a in &conf.allow {
            push(Action::Allow, a.value.net, a.value.port, conf_src(a.line));
        }
        for net in DEFAULT_DENY {
            push(Action::Deny, net, None, Source::Default);
        }
        for d in &conf.deny {
            push(Action::Deny, d.value, None, conf_src(d.line));
        }
        let host_denies = host
            .addrs
            .iter()
            .map(|(net, ifname)| {
                let ifname = ifname.clone();
                (*net, Source::HostAddress { ifname })
            })
            .chain(host.subnets.iter().map(|(net, ifname)| {
                let ifname = ifname.clone();
                (*net, Source::HostSubnet { ifname })
            }))
            .chain(host.routes.iter().map(|(net, dev)| {
                let dev = dev.clone();
                (*net, Source::HostRoute { dev })
            }))
            .chain(host.local.iter().map(|(net, dev)| {
                let dev = dev.clone();
                (*net, Source::HostLocal { dev })
            }));
        let mut skipped = Vec::new();
        for (net, source) in host_denies {
            match embedded_ipv4(net) {
                Some(v4) if v4.prefix_len() < MIN_HOST_DENY_V4_LEN => {
                    skipped.push((net, v4, source))
                }
                _ => push(Action::Deny, net, None, source),
            }
        }
        let host_ports = conf
            .host_ports
            .iter()
            .map(|h| (h.clone(), conf_src(h.line)))
            .collect();
        Policy {
            rules,
            ids: Vec::new(),
            host_ports,
            skipped,
            entries: MapEntries::default(),
        }
        .numbered_afresh()
    }

    /// This policy with its rules numbered by `n` (a jail's rule ids), and compiled again.
    pub fn numbered(mut self, n: &mut Numbering) -> anyhow::Result<Policy> {
        self.ids = self
            .rules
            .iter()
            .map(|r| n.id(r.to_string()))
            .collect::<anyhow::Result<_>>()?;
        self.entries = self.compile();
        Ok(self)
    }

    /// Numbered from scratch: rule ids are positions (a repeated rule takes its first id).
    fn numbered_afresh(self) -> Policy {
        self.numbered(&mut Numbering::fresh())
            .expect("ids run out only after u32::MAX distinct rules, more than memory holds")
    }

    /// This policy plus more allow entries, appended so that existing rule ids do not change
    /// (pasta's own policy: the host's resolvers on port 53, the jail's DNS forwarder). Numbered
    /// from scratch, as [`Policy::build`].
    pub fn with_extra_allow(
        mut self,
        extra: impl IntoIterator<Item = (AllowEntry, Source)>,
    ) -> Policy {
        for (target, source) in extra {
            self.rules.push(Rule {
                action: Action::Allow,
                target,
                source,
            });
        }
        self.numbered_afresh()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Each rule with its id.
    pub fn rules_with_ids(&self) -> impl Iterator<Item = (RuleId, &Rule)> {
        self.ids.iter().copied().zip(&self.rules)
    }

    /// Host-derived deny entries that were left out because their IPv4 form is shorter than
    /// [`MIN_HOST_DENY_V4_LEN`], one sentence each.
    pub fn skipped_host_denies(&self) -> Vec<String> {
        self.skipped
            .iter()
            .map(|(net, v4, source)| {
                format!(
                    "{net} ({source}) is not denied: it carries IPv4 addresses and is judged \
                     as IPv4 {v4}, shorter than /{MIN_HOST_DENY_V4_LEN} (denying it would cut the \
                     jail off much of the IPv4 internet)"
                )
            })
            .collect()
    }

    pub fn rule(&self, id: RuleId) -> Option<&Rule> {
        self.rules_with_ids()
            .find(|&(i, _)| i == id)
            .map(|(_, r)| r)
    }

    /// "deny 10.0.0.0/8 (default)", "allow 172.23.142.119/32 (conf /etc/claude-sandbox.conf:7)".
    pub fn describe(&self, id: RuleId) -> String {
        match self.rule(id) {
            Some(r) => r.to_string(),
            None if id == jail_common::RULE_NONE => "no rule".into(),
            None => format!("unknown rule {id} (the policy changed since?)"),
        }
    }

    /// The map entries, computed at build time.
    pub fn map_entries(&self) -> &MapEntries {
        &self.entries
    }

    /// 16 hex digits of the SHA-256 of the map entries (rule ids included): equal digests mean
    /// equal maps.
    pub fn digest(&self) -> String {
        self.entries.digest()
    }

    fn compile(&self) -> MapEntries {
        let mut m = MapEntries::default();
        for (id, rule) in self.rules_with_ids() {
            let (v4s, v6) = map_forms(rule.target.net);
            match (rule.action, rule.target.port) {
                (Action::Deny, _) => {
                    for n in v4s {
                        m.deny4
                            .entry((u32::from(n.prefix_len()), ne4(n.network())))
                            .or_insert(id);
                    }
                    if let Some(n) = v6 {
                        m.deny6
                            .entry((u32::from(n.prefix_len()), ne6(n.network())))
                            .or_insert(id);
                    }
                }
                (Action::Allow, None) => {
                    for n in v4s {
                        m.allow4
                            .entry((u32::from(n.prefix_len()), ne4(n.network())))
                            .or_insert(id);
                    }
                    if let Some(n) = v6 {
                        m.allow6
                            .entry((u32::from(n.prefix_len()), ne6(n.network())))
                            .or_insert(id);
                    }
                }
                (Action::Allow, Some(ps)) => {
                    // A port entry is a single address (the parser refuses ranges), so its
                    // map form is one /32 or one /128.
                    for proto in ps.protos() {
                        let pr = proto.number();
                        for n in &v4s {
                            let a = ne4(n.network());
                            m.allow4_port.entry((a, ps.port, pr)).or_insert(id);
                            m.allow4_port.entry((a, 0, pr)).or_insert(id);
                        }
                        if let Some(n) = v6 {
                            let a = ne6(n.network());
                            m.allow6_port.entry((a, ps.port, pr)).or_insert(id);
                            m.allow6_port.entry((a, 0, pr)).or_insert(id);
                        }
                    }
                }
            }
        }
        m
    }

    /// What the eBPF programs decide for this destination, from the map entries alone. Port 0
    /// means "no port" (as the programs treat a socket address with port 0, or a protocol
    /// without ports): only prefix entries can allow it. The port-0 marker entries serve the
    /// packet backstop's non-first fragments, see [`Policy::decide_fragment`].
    pub fn decide(&self, ip: IpAddr, port: u16, proto: u8) -> Decision {
        self.judge(ip, (port != 0).then_some(port), proto)
    }

    /// What the packet backstop decides for a non-first fragment, which carries no port: the
    /// port-0 marker of the address and protocol allows it.
    pub fn decide_fragment(&self, ip: IpAddr, proto: u8) -> Decision {
        self.judge(ip, Some(0), proto)
    }

    /// `port_key`: the port to look up in the port maps, if any.
    fn judge(&self, ip: IpAddr, port_key: Option<u16>, proto: u8) -> Decision {
        let m = &self.entries;
        let allow = |rule| Decision {
            allowed: true,
            rule: Some(rule),
        };
        match judged(ip) {
            Judged::V4(a) => {
                let port_hit = port_key.and_then(|p| m.allow4_port.get(&(ne4(a), p, proto)));
                if let Some(&r) = port_hit {
                    return allow(r);
                }
                if let Some(r) = lpm4(&m.allow4, a) {
                    return allow(r);
                }
                if let Some(r) = lpm4(&m.deny4, a) {
                    return Decision {
                        allowed: false,
                        rule: Some(r),
                    };
                }
            }
            Judged::V6(a) => {
                let port_hit = port_key.and_then(|p| m.allow6_port.get(&(ne6(a), p, proto)));
                if let Some(&r) = port_hit {
                    return allow(r);
                }
                if let Some(r) = lpm6(&m.allow6, a) {
                    return allow(r);
                }
                if let Some(r) = lpm6(&m.deny6, a) {
                    return Decision {
                        allowed: false,
                        rule: Some(r),
                    };
                }
            }
        }
        Decision {
            allowed: true,
            rule: None,
        }
    }

    /// The allow rule (other than the builtin loopback one) that opens some port of `ip`.
    fn allow_rule_for_addr(&self, ip: IpAddr) -> Option<RuleId> {
        let m = &self.entries;
        let id = match judged(ip) {
            Judged::V4(a) => {
                let k = ne4(a);
                lpm4(&m.allow4, a).or_else(|| {
                    m.allow4_port
                        .iter()
                        .find(|((addr, _, _), _)| *addr == k)
                        .map(|(_, r)| *r)
                })
            }
            Judged::V6(a) => {
                let k = ne6(a);
                lpm6(&m.allow6, a).or_else(|| {
                    m.allow6_port
                        .iter()
                        .find(|((addr, _, _), _)| *addr == k)
                        .map(|(_, r)| *r)
                })
            }
        }?;
        match self.rule(id)?.source {
            Source::Builtin(_) => None,
            _ => Some(id),
        }
    }

    /// Things the author may not have meant: an allow entry that covers a whole default deny
    /// range, or that opens the proxy named by a `*_proxy` variable (`http_proxy`, `HTTPS_PROXY`,
    /// `ALL_PROXY`, `ftp_proxy`, ...: the ones passed to the command): an allowed proxy is a
    /// pivot to everything behind it. `env_proxies` is `(variable, value)`.
    ///
    /// Proxy host names are not resolved (only IP literals and `localhost` are judged): the
    /// check must be deterministic and offline, and the answer the host's resolver gives now
    /// need not be the one the agent gets later. [`Policy::proxy_notes`] says which were not
    /// checked.
    pub fn warnings(&self, env_proxies: &[(String, String)]) -> Vec<String> {
        let mut out = Vec::new();
        for rule in &self.rules {
            if rule.action != Action::Allow
                || rule.target.port.is_some()
                || matches!(rule.source, Source::Builtin(_))
            {
                continue;
            }
            for d in DEFAULT_DENY {
                if covers(rule.target.net, d) {
                    out.push(format!("{rule} covers the whole default deny range {d}"));
                }
            }
        }
        for (var, value) in env_proxies {
            let Some((host, port)) = proxy_host_port(value) else {
                continue;
            };
            if host.eq_ignore_ascii_case("localhost") || is_loopback(&host) {
                // The jail's loopback is its own; the host's is reached only through a
                // host-port opening.
                for (hp, src) in &self.host_ports {
                    if port.is_none() || port == Some(hp.value.port) {
                        out.push(format!(
                            "host-port {} ({src}) opens the proxy {var}={value} on the host's \
                             loopback: an allowed proxy is a pivot to everything behind it",
                            hp.value
                        ));
                    }
                }
                continue;
            }
            let Ok(ip) = host.parse::<IpAddr>() else {
                continue;
            };
            if let Some(id) = self.allow_rule_for_addr(ip) {
                out.push(format!(
                    "{} allows the proxy {var}={value}: an allowed proxy is a pivot to \
                     everything behind it",
                    self.describe(id)
                ));
            }
        }
        out
    }

    /// The proxies of `env_proxies` that [`Policy::warnings`] could not check: those named by a
    /// host name rather than an IP literal (no name is resolved here). The value itself is not
    /// repeated: it may hold credentials.
    pub fn proxy_notes(&self, env_proxies: &[(String, String)]) -> Vec<String> {
        env_proxies
            .iter()
            .filter_map(|(var, value)| {
                let (host, _) = proxy_host_port(value)?;
                if host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok() {
                    return None;
                }
                Some(format!(
                    "the proxy host {host:?} of {var} was not checked against the allow \
                     entries: it is not an IP literal, and claude-jail resolves no names (if \
                     it resolves to an allowed address, the proxy is a pivot to everything \
                     behind it)"
                ))
            })
            .collect()
    }
}

/// Whether `outer` contains the whole of `inner`, comparing their map forms.
fn covers(outer: IpNet, inner: IpNet) -> bool {
    let (o4, o6) = map_forms(outer);
    let (i4, i6) = map_forms(inner);
    let v4_ok = i4.iter().all(|i| o4.iter().any(|o| o.contains(i)));
    let v6_ok = match i6 {
        None => true,
        Some(i) => o6.is_some_and(|o| o.contains(&i)),
    };
    (!i4.is_empty() || i6.is_some()) && v4_ok && v6_ok
}

fn is_loopback(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok_and(|ip| match judged(ip) {
        Judged::V4(a) => a.is_loopback(),
        Judged::V6(a) => a.is_loopback(),
    })
}

/// `scheme://user:pass@host:port/path` (every part but host optional) -> host and port, the
/// port defaulting by scheme when known.
fn proxy_host_port(value: &str) -> Option<(String, Option<u16>)> {
    let (scheme, rest) = match value.split_once("://") {
        Some((s, r)) => (Some(s.to_ascii_lowercase()), r),
        None => (None, value),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(r) = hostport.strip_prefix('[') {
        let (h, after) = r.split_once(']')?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => p.parse().ok(),
        None => match scheme.as_deref() {
            Some("http") | None => Some(80),
            Some("https") => Some(443),
            Some(s) if s.starts_with("socks") => Some(1080),
            _ => None,
        },
    };
    Some((host.to_string(), port))
}

fn lpm4(map: &BTreeMap<(u32, u32), RuleId>, a: Ipv4Addr) -> Option<RuleId> {
    let n = u32::from(a);
    (0..=32u32).rev().find_map(|len| {
        let masked = if len == 0 {
            0
        } else {
            n & (u32::MAX << (32 - len))
        };
        map.get(&(len, ne4(Ipv4Addr::from(masked)))).copied()
    })
}

fn lpm6(map: &BTreeMap<(u32, [u32; 4]), RuleId>, a: Ipv6Addr) -> Option<RuleId> {
    let n = u128::from(a);
    (0..=128u32).rev().find_map(|len| {
        let masked = if len == 0 {
            0
        } else {
            n & (u128::MAX << (128 - len))
        };
        map.get(&(len, ne6(Ipv6Addr::from(masked)))).copied()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conf::{parse, Proto};
    use jail_common::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
    use proptest::prelude::*;
    use std::path::Path;

    const CONF: &str = "/etc/claude-sandbox.conf";

    fn conf(text: &str) -> Conf {
        parse(Path::new(CONF), text.as_bytes()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn host() -> HostNet {
        HostNet::from_parts(
            vec![
                (ip("192.168.1.100"), ip("192.168.1.100"), 24, "eth0".into()),
                (ip("198.51.100.7"), ip("198.51.100.7"), 32, "lo".into()),
            ],
            vec![
                (net("192.168.1.0/24"), Some("eth0".into())),
                (net("203.0.113.0/24"), Some("tun0".into())),
            ],
        )
    }

    fn policy(text: &str) -> Policy {
        Policy::build(&conf(text), &host())
    }

    fn allowed(p: &Policy, a: &str, port: u16, proto: u8) -> bool {
        p.decide(ip(a), port, proto).allowed
    }

    #[test]
    fn anyip_local_ranges_are_denied_as_the_hosts_own() {
        let h = HostNet::from_observed(
            vec![],
            vec![],
            vec![
                (net("198.18.0.0/24"), Some("lo".into())),
                (net("2001:db8:aa::/64"), Some("lo".into())),
            ],
        );
        let p = Policy::build(&conf(""), &h);
        for a in ["198.18.0.5", "2001:db8:aa::5"] {
            let d = p.decide(ip(a), 8082, PROTO_TCP);
            assert!(!d.allowed, "{a} is the host's own (AnyIP)");
        }
        assert!(p
            .rules()
            .iter()
            .any(|r| r.source.to_string() == "host local route on lo"));
        assert!(allowed(&p, "198.18.1.5", 80, PROTO_TCP));
    }

    #[test]
    fn default_deny_set_and_ipv4_in_ipv6_forms() {
        let p = policy("");
        let denied = [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.251",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "64:ff9b:1::a00:1",
            "2002:a00:1::1",
            "2001::1",
            // Judged by the IPv4 they carry:
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "::ffff:0.0.0.0",
            "64:ff9b::10.0.0.1",
            "64:ff9b::192.168.1.1",
            // The host's own address, subnet and routes:
            "192.168.1.100",
            "198.51.100.7",
            "203.0.113.9",
            "::ffff:198.51.100.7",
        ];
        for a in denied {
            for proto in [PROTO_TCP, PROTO_UDP, PROTO_ICMP] {
                assert!(!allowed(&p, a, 443, proto), "{a} must be denied by default");
            }
        }
        let allowed_ = [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "198.51.100.8",
            "2606:4700::1111",
            "2001:db8::1",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "::8.8.8.8",
            // Loopback is the jail's own namespace; `::` and `::1` are judged as IPv6.
            "127.0.0.1",
            "127.255.0.9",
            "::1",
            "::",
            "::ffff:127.0.0.1",
        ];
        for a in allowed_ {
            assert!(
                allowed(&p, a, 443, PROTO_TCP),
                "{a} must be allowed by default"
            );
        }
        assert_eq!(
            p.decide(ip("8.8.8.8"), 53, PROTO_UDP).rule,
            None,
            "allowed by no rule"
        );
    }

    #[test]
    fn narrow_allow_inside_broad_deny_wins() {
        let p = policy("allow-ip = 10.1.2.3\nallow-ip = 10.9.0.0/24\n");
        assert!(
            allowed(&p, "10.1.2.3", 22, PROTO_TCP),
            "the allowed /32 inside 10/8"
        );
        assert!(
            allowed(&p, "::ffff:10.1.2.3", 22, PROTO_TCP),
            "also in mapped form"
        );
        assert!(
            !allowed(&p, "10.1.2.4", 22, PROTO_TCP),
            "its neighbour is still denied"
        );
        assert!(
            allowed(&p, "10.9.0.255", 1, PROTO_ICMP),
            "a prefix allow covers every protocol"
        );
        assert!(
            !allowed(&p, "10.9.1.0", 1, PROTO_TCP),
            "just outside the /24"
        );
        let d = p.decide(ip("10.1.2.3"), 22, PROTO_TCP);
        assert_eq!(
            p.describe(d.rule.unwrap()),
            format!("allow 10.1.2.3/32 (conf {CONF}:1)")
        );
        let d = p.decide(ip("10.1.2.4"), 22, PROTO_TCP);
        assert_eq!(p.describe(d.rule.unwrap()), "deny 10.0.0.0/8 (default)");
    }

    #[test]
    fn port_entries_and_markers() {
        let p = policy("allow-ip = 172.23.1.3:5064/udp\nallow-ip = 10.0.0.7:443\nallow-ip = [fd00::5]:443/tcp\n");
        assert!(allowed(&p, "172.23.1.3", 5064, PROTO_UDP));
        assert!(!allowed(&p, "172.23.1.3", 5064, PROTO_TCP), "udp only");
        assert!(
            !allowed(&p, "172.23.1.3", 5065, PROTO_UDP),
            "that port only"
        );
        assert!(
            !allowed(&p, "172.23.1.3", 0, PROTO_UDP),
            "port 0 means no port: no port entry applies"
        );
        assert!(
            allowed(&p, "10.0.0.7", 443, PROTO_TCP) && allowed(&p, "10.0.0.7", 443, PROTO_UDP),
            "no protocol: both"
        );
        assert!(!allowed(&p, "10.0.0.7", 443, PROTO_ICMP));
        assert!(allowed(&p, "fd00::5", 443, PROTO_TCP) && !allowed(&p, "fd00::5", 443, PROTO_UDP));
        assert!(
            p.decide_fragment(ip("172.23.1.3"), PROTO_UDP).allowed,
            "the marker lets fragments through"
        );
        assert!(!p.decide_fragment(ip("172.23.1.3"), PROTO_TCP).allowed);

        let m = p.map_entries();
        let a = ne4(Ipv4Addr::new(172, 23, 1, 3));
        let b = ne4(Ipv4Addr::new(10, 0, 0, 7));
        let (r0, r1) = (2, 3); // after the two loopback rules
        let want4: BTreeMap<_, _> = [
            ((a, 5064, PROTO_UDP), r0),
            ((a, 0, PROTO_UDP), r0),
            ((b, 443, PROTO_TCP), r1),
            ((b, 0, PROTO_TCP), r1),
            ((b, 443, PROTO_UDP), r1),
            ((b, 0, PROTO_UDP), r1),
        ]
        .into();
        assert_eq!(
            m.allow4_port, want4,
            "one entry per protocol, and a port-0 marker each"
        );
        let f = ne6("fd00::5".parse().unwrap());
        assert_eq!(
            m.allow6_port,
            [((f, 443, PROTO_TCP), 4), ((f, 0, PROTO_TCP), 4)].into()
        );
        let k = port_key4(&(a, 5064, PROTO_UDP));
        assert_eq!((k.addr, k.port, k.proto, k._pad), (a, 5064, PROTO_UDP, 0));
        assert!(
            m.allow4
                .keys()
                .all(|(l, _)| *l != 32 || m.allow4.len() == 1),
            "port entries are not prefix entries"
        );
    }

    #[test]
    fn map_keys_have_the_kernel_layout() {
        let p = policy("allow-ip = 10.20.0.8\ndeny-ip = 2001:db8::/32\n");
        let m = p.map_entries();
        assert_eq!(
            m.allow4.get(&(32, u32::from_ne_bytes([10, 20, 0, 8]))),
            Some(&2)
        );
        assert_eq!(
            m.allow4.get(&(8, u32::from_ne_bytes([127, 0, 0, 0]))),
            Some(&0),
            "loopback, builtin"
        );
        assert_eq!(
            m.allow6
                .get(&(128, [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])])),
            Some(&1)
        );
        assert_eq!(
            m.deny4.get(&(8, u32::from_ne_bytes([10, 0, 0, 0]))),
            Some(&3),
            "10/8 default"
        );
        let db8 = [u32::from_ne_bytes([0x20, 0x01, 0x0d, 0xb8]), 0, 0, 0];
        let id = *m.deny6.get(&(32, db8)).unwrap();
        assert_eq!(
            p.describe(id),
            format!("deny 2001:db8::/32 (conf {CONF}:2)")
        );
        assert_eq!(
            m.deny4.len(),
            8 + 2 + 1 + 1, /* subnet==route merged */
            "{:?}",
            m.deny4
        );
        let d = p.decide(ip("192.168.1.5"), 1, PROTO_TCP);
        assert_eq!(
            p.describe(d.rule.unwrap()),
            "deny 192.168.1.0/24 (host subnet of eth0)",
            "the longest matching deny"
        );
        let d = p.decide(ip("192.168.2.5"), 1, PROTO_TCP);
        assert_eq!(p.describe(d.rule.unwrap()), "deny 192.168.0.0/16 (default)");
        let d = p.decide(ip("203.0.113.1"), 1, PROTO_TCP);
        assert_eq!(
            p.describe(d.rule.unwrap()),
            "deny 203.0.113.0/24 (host route via tun0)"
        );
        let d = p.decide(ip("198.51.100.7"), 1, PROTO_TCP);
        assert_eq!(
            p.describe(d.rule.unwrap()),
            "deny 198.51.100.7/32 (host address on lo)"
        );
    }

    #[test]
    fn host_subnet_description_and_duplicates_keep_the_first_source() {
        let h = HostNet::from_parts(
            vec![(ip("100.80.1.2"), ip("100.80.1.2"), 24, "wg0".into())],
            vec![(net("100.80.1.0/24"), Some("wg0".into()))],
        );
        let p = Policy::build(
            &conf("deny-ip = 100.80.1.0/24\nallow-ip = 8.8.8.8\nallow-ip = 8.8.8.8\n"),
            &h,
        );
        let d = p.decide(ip("100.80.1.9"), 1, PROTO_TCP);
        assert_eq!(
            p.describe(d.rule.unwrap()),
            format!("deny 100.80.1.0/24 (conf {CONF}:1)"),
            "conf deny came first"
        );
        let d = p.decide(ip("8.8.8.8"), 1, PROTO_TCP);
        assert_eq!(
            p.describe(d.rule.unwrap()),
            format!("allow 8.8.8.8/32 (conf {CONF}:2)")
        );
        assert_eq!(p.map_entries().allow4.len(), 2, "duplicates are one entry");
        let p = Policy::build(&conf(""), &h);
        let d = p.decide(ip("100.80.1.9"), 1, PROTO_TCP);
        assert_eq!(
            p.describe(d.rule.unwrap()),
            "deny 100.80.1.0/24 (host subnet of wg0)",
            "the longest matching deny names the refusal"
        );
        let s = p
            .rules()
            .iter()
            .find(|r| matches!(r.source, Source::HostSubnet { .. }))
            .unwrap();
        assert_eq!(s.to_string(), "deny 100.80.1.0/24 (host subnet of wg0)");
        assert_eq!(p.describe(jail_common::RULE_NONE), "no rule");
        assert!(p.describe(9999).starts_with("unknown rule 9999"));
    }

    #[test]
    fn ipv4_carrying_forms_compile_to_ipv4() {
        let p = policy("allow-ip = ::ffff:10.0.0.5\ndeny-ip = ::ffff:8.8.0.0/112\nallow-ip = [64:ff9b::a00:6]:22/tcp\n");
        let m = p.map_entries();
        assert_eq!(
            m.allow4.get(&(32, ne4(Ipv4Addr::new(10, 0, 0, 5)))),
            Some(&2)
        );
        assert!(
            m.allow6.len() == 1,
            "only ::1 in the IPv6 allow map: {:?}",
            m.allow6
        );
        assert_eq!(
            m.deny4
                .get(&(16, ne4(Ipv4Addr::new(8, 8, 0, 0))))
                .map(|r| p.describe(*r)),
            Some(format!("deny ::ffff:8.8.0.0/112 (conf {CONF}:2)"))
        );
        assert!(
            !allowed(&p, "8.8.4.4", 53, PROTO_UDP),
            "the IPv4 form is denied too: same destination"
        );
        assert!(allowed(&p, "10.0.0.5", 80, PROTO_TCP) && allowed(&p, "::10.0.0.5", 80, PROTO_TCP));
        assert!(allowed(&p, "10.0.0.6", 22, PROTO_TCP) && !allowed(&p, "10.0.0.6", 23, PROTO_TCP));
        assert!(m
            .allow4_port
            .contains_key(&(ne4(Ipv4Addr::new(10, 0, 0, 6)), 22, PROTO_TCP)));

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

    #[test]
    fn a_deny_that_would_cover_all_of_ipv4_is_refused() {
        for v in [
            "64:ff9b::/96",
            "::ffff:0:0/96",
            "::/96",
            "::ffff:0:0/100",
            "::ffff:8000:0/97",
        ] {
            let e = parse(Path::new(CONF), format!("\ndeny-ip = {v}\n").as_bytes())
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!(
                    "{CONF}:2: deny-ip {} carries IPv4 addresses",
                    net(v)
                )),
                "{e}"
            );
        }
        // From /104 on (IPv4 /8), accepted and compiled to IPv4.
        let p = policy("deny-ip = 64:ff9b::b00:0/104\n");
        assert!(!allowed(&p, "11.1.2.3", 80, PROTO_TCP));
        assert!(allowed(&p, "12.1.2.3", 80, PROTO_TCP));
        // Shorter than /96 is judged in IPv6 only: accepted, and no IPv4 destination is denied.
        let p = policy("deny-ip = ::/64\n");
        assert!(allowed(&p, "8.8.8.8", 53, PROTO_UDP));
    }

    #[test]
    fn a_deny_of_loopback_in_an_ipv6_form_is_refused() {
        for v in [
            "::ffff:127.0.0.1",
            "::ffff:127.0.0.0/104",
            "::ffff:127.1.0.0/112",
            "64:ff9b::7f00:1",
            "::127.0.0.1",
            "::7f00:0/104",
            "::1",
            "127.0.0.1",
        ] {
            let e = parse(Path::new(CONF), format!("deny-ip = {v}\n").as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.ends_with("which always stays allowed"), "{v}: {e}");
        }
        // `::/127` holds `::` and `::1`, judged as IPv6: accepted, and ::1 stays allowed.
        let p = policy("deny-ip = ::/127\n");
        assert!(allowed(&p, "::1", 80, PROTO_TCP) && allowed(&p, "127.0.0.1", 80, PROTO_TCP));
        assert!(!allowed(&p, "::", 80, PROTO_TCP));
    }

    #[test]
    fn host_denies_wider_than_ipv4_slash8_are_skipped() {
        let h = HostNet::from_parts(
            vec![],
            vec![
                (net("64:ff9b::/96"), Some("nat64".into())),
                (net("64:ff9b::/104"), None),
                (net("fd00:1::/64"), None),
            ],
        );
        let p = Policy::build(&Conf::empty(Path::new(CONF)), &h);
        assert!(allowed(&p, "8.8.8.8", 53, PROTO_UDP), "IPv4 is not cut off");
        assert!(
            !allowed(&p, "0.1.2.3", 53, PROTO_UDP),
            "0.0.0.0/8 still denied"
        );
        assert!(!allowed(&p, "fd00:1::5", 53, PROTO_UDP));
        let notes = p.skipped_host_denies();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with("64:ff9b::/96 (host route via nat64) is not denied"),
            "{}",
            notes[0]
        );
        assert!(p
            .rules()
            .iter()
            .any(|r| r.target.net == net("64:ff9b::/104")));
    }

    #[test]
    fn extra_allows_keep_rule_ids_and_name_their_source() {
        let base = policy("allow-ip = 10.20.0.8\n");
        let n = base.rules().len() as RuleId;
        let before = base.map_entries().clone();
        let dns = AllowEntry {
            net: net("10.0.0.53/32"),
            port: Some(PortSpec {
                port: 53,
                proto: None,
            }),
        };
        let fwd = AllowEntry {
            net: net("169.254.1.1/32"),
            port: Some(PortSpec {
                port: 53,
                proto: Some(Proto::Udp),
            }),
        };
        let p = base.with_extra_allow([
            (dns, Source::Resolver),
            (fwd, Source::Builtin("the jail's DNS forwarder")),
        ]);
        assert_eq!(
            p.map_entries().deny4,
            before.deny4,
            "existing ids do not change"
        );
        assert!(allowed(&p, "10.0.0.53", 53, PROTO_UDP) && allowed(&p, "10.0.0.53", 53, PROTO_TCP));
        assert!(!allowed(&p, "10.0.0.53", 80, PROTO_TCP));
        let d = p.decide(ip("10.0.0.53"), 53, PROTO_TCP);
        assert_eq!(d.rule, Some(n));
        assert_eq!(p.describe(n), "allow 10.0.0.53:53 (host DNS resolver)");
        assert_eq!(
            p.describe(n + 1),
            "allow 169.254.1.1:53/udp (builtin: the jail's DNS forwarder)"
        );
    }

    #[test]
    fn digest_is_stable_and_follows_the_entries() {
        let a = policy("allow-ip = 10.20.0.8\n").digest();
        assert_eq!(a, policy("# same\nallow-ip = 10.20.0.8 # again\n").digest());
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, policy("allow-ip = 10.20.0.9\n").digest());
        assert_ne!(
            a,
            Policy::build(&conf("allow-ip = 10.20.0.8\n"), &HostNet::default()).digest()
        );
    }

    /// `n` IPv4 address:port allows starting at 10.`base`.0.1: `2 * n` allow4_port entries.
    fn port_allows(base: u8, n: u32) -> MapEntries {
        let mut text = String::new();
        for i in 0..n {
            let [_, _, c, d] = (i + 1).to_be_bytes();
            text.push_str(&format!("allow-ip = 10.{base}.{c}.{d}:443/tcp\n"));
        }
        policy(&text).map_entries().clone()
    }

    #[test]
    fn a_reload_needs_room_for_old_and_new_at_once() {
        let cap = MAX_PORT_ENTRIES;
        let old = port_allows(1, cap / 2);
        assert_eq!(old.allow4_port.len(), cap as usize);
        assert!(old.over_capacity().is_none(), "a full map is not over");
        // The same entries again: nothing to add, fits.
        assert_eq!(old.reload_over_capacity(&old), None);
        // Fewer entries: nothing new is added before the old are removed, fits.
        let fewer = port_allows(1, cap / 4);
        assert_eq!(fewer.reload_over_capacity(&old), None);
        // One new address:port: two new entries, while the old ones are all still there.
        let mut more = old.clone();
        more.allow4_port
            .insert((ne4(Ipv4Addr::new(10, 9, 9, 9)), 443, PROTO_TCP), 1);
        more.allow4_port
            .remove(&(ne4(Ipv4Addr::new(10, 1, 0, 1)), 443, PROTO_TCP));
        assert!(more.over_capacity().is_none(), "the new set alone fits");
        let m = more.reload_over_capacity(&old).expect("old ∪ new does not");
        assert!(
            m.contains(&format!(
                "the allow4_port map (IPv4 ADDR:PORT allow entries, two per entry and protocol) \
                 holds {cap} entries now and the new policy adds 1 more, {} in all",
                cap + 1
            )) && m.contains(&format!("the map holds {cap}"))
                && m.contains("Nothing was changed")
                && m.contains("fewer entries or CIDRs"),
            "{m}"
        );
        // A completely different set of half the capacity each: the union is too big.
        let other = port_allows(2, cap / 2);
        assert!(other.reload_over_capacity(&old).is_some());
        assert!(port_allows(2, cap / 4)
            .reload_over_capacity(&fewer)
            .is_none());
        // From empty maps (the first fill) only the new set counts.
        assert_eq!(other.reload_over_capacity(&MapEntries::default()), None);
        // Over capacity alone is reported as such.
        let big = port_allows(3, cap / 2 + 1);
        assert_eq!(
            big.reload_over_capacity(&MapEntries::default()),
            big.over_capacity()
        );
        assert!(big.over_capacity().unwrap().starts_with(&format!(
            "the policy does not fit the maps: {} allow4_port entries",
            cap + 2
        )));
    }

    #[test]
    fn ten_thousand_line_file_compiles() {
        let mut text = String::new();
        for i in 0..10_000u32 {
            let [_, b, c, d] = (i + 1).to_be_bytes();
            if i % 2 == 0 {
                text.push_str(&format!("allow-ip = 10.{b}.{c}.{d}:{}/tcp\n", i % 1000 + 1));
            } else {
                text.push_str(&format!("deny-ip = 203.{b}.{c}.{d}\n"));
            }
        }
        let p = policy(&text);
        let m = p.map_entries();
        assert_eq!(m.allow4_port.len(), 5_000 * 2, "an entry and a marker each");
        assert!(m.over_capacity().is_none());
        assert!(allowed(&p, "10.0.0.1", 1, PROTO_TCP) && !allowed(&p, "10.0.0.1", 2, PROTO_TCP));
        assert!(!allowed(&p, "203.0.0.2", 1, PROTO_TCP));
    }

    #[test]
    fn warnings_for_wide_allows_and_proxies() {
        let p = policy("allow-ip = 10.0.0.0/7\nallow-ip = 172.23.0.5\nallow-ip = [fd00::5]:443/tcp\nhost-port = 3128\n");
        let env = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        let w = p.warnings(&env(&[]));
        assert_eq!(
            w,
            vec![format!(
                "allow 10.0.0.0/7 (conf {CONF}:1) covers the whole default deny range 10.0.0.0/8"
            )]
        );
        let w = p.warnings(&env(&[
            ("https_proxy", "http://user:pw@172.23.0.5:3128/"),
            ("ALL_PROXY", "socks5h://[fd00::5]:443"),
            ("http_proxy", "proxy.corp.example:3128"),
            ("HTTP_PROXY", "http://localhost:3128"),
            ("HTTPS_PROXY", "http://127.0.0.1:8080"),
        ]));
        assert_eq!(w.len(), 4, "{w:#?}");
        let notes = p.proxy_notes(&env(&[
            ("http_proxy", "proxy.corp.example:3128"),
            ("HTTP_PROXY", "http://localhost:3128"),
            ("ftp_proxy", "http://[fd00::5]:21"),
        ]));
        assert_eq!(
            notes,
            vec![
                "the proxy host \"proxy.corp.example\" of http_proxy was not checked against \
                 the allow entries: it is not an IP literal, and claude-jail resolves no names \
                 (if it resolves to an allowed address, the proxy is a pivot to everything \
                 behind it)"
            ]
        );
        assert!(
            w[1].starts_with(&format!(
                "allow 172.23.0.5/32 (conf {CONF}:2) allows the proxy https_proxy="
            )),
            "{}",
            w[1]
        );
        assert!(w[2].starts_with("allow [fd00::5]:443/tcp"), "{}", w[2]);
        assert!(
            w[3].starts_with(&format!(
                "host-port 3128 (conf {CONF}:4) opens the proxy HTTP_PROXY="
            )),
            "{}",
            w[3]
        );
        assert!(
            policy("allow-ip = 0.0.0.0/0\n").warnings(&[]).len() == 8,
            "every IPv4 default range"
        );
        assert!(
            policy("allow-ip = ::ffff:0:0/96\n").warnings(&[]).len() == 8,
            "mapped form is IPv4"
        );
        assert!(policy("allow-ip = fc00::/7\n").warnings(&[]).len() == 1);
        assert!(policy("allow-ip = 10.0.0.1\n").warnings(&[]).is_empty());
    }

    /// The verdict straight from the rules, written independently of the compiler: the model
    /// `decide` (and so the maps) must agree with.
    fn naive(rules: &[Rule], ip: IpAddr, port: u16, proto: u8) -> (bool, Option<usize>) {
        let embeds = |x: Ipv4Addr| -> Vec<Ipv6Addr> {
            let x = u128::from(u32::from(x));
            let mut v = vec![
                Ipv6Addr::from(0xffff_0000_0000 | x),
                Ipv6Addr::from(NAT64_HI << 32 | x),
            ];
            if x > 1 {
                v.push(Ipv6Addr::from(x));
            }
            v
        };
        let dst: Result<Ipv4Addr, Ipv6Addr> = match ip {
            IpAddr::V4(a) => Ok(a),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(x) => Ok(x),
                None => {
                    let s = a.segments();
                    let low =
                        Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
                    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                        || (s[..6] == [0; 6] && u32::from(low) > 1)
                    {
                        Ok(low)
                    } else {
                        Err(a)
                    }
                }
            },
        };
        let matches = |r: &Rule| {
            let net_ok = match (dst, r.target.net) {
                (Ok(x), IpNet::V4(n)) => n.contains(&x),
                (Ok(x), IpNet::V6(n)) => {
                    n.prefix_len() >= 96 && embeds(x).iter().any(|e| n.contains(e))
                }
                (Err(y), IpNet::V6(n)) => n.contains(&y),
                (Err(_), IpNet::V4(_)) => false,
            };
            let port_ok = match r.target.port {
                None => true,
                Some(ps) => {
                    port != 0 && port == ps.port && ps.protos().iter().any(|p| p.number() == proto)
                }
            };
            net_ok && port_ok
        };
        if let Some(i) = rules
            .iter()
            .position(|r| r.action == Action::Allow && matches(r))
        {
            return (true, Some(i));
        }
        match rules
            .iter()
            .position(|r| r.action == Action::Deny && matches(r))
        {
            Some(i) => (false, Some(i)),
            None => (true, None),
        }
    }

    /// Addresses from a small pool so that rules and destinations overlap often.
    fn v4_strategy() -> impl Strategy<Value = u32> {
        prop_oneof![
            any::<u32>(),
            (0u32..4, any::<u16>()).prop_map(|(hi, lo)| [0x0a00_0000, 0xc0a8_0000, 0, 0x7f00_0000]
                [hi as usize]
                | u32::from(lo)),
        ]
    }

    fn ip_strategy() -> impl Strategy<Value = IpAddr> {
        let v4 = v4_strategy().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a)));
        let v6 = prop_oneof![
            any::<u128>(),
            v4_strategy().prop_map(|a| 0xffff_0000_0000 | u128::from(a)),
            v4_strategy().prop_map(u128::from),
            v4_strategy().prop_map(|a| NAT64_HI << 32 | u128::from(a)),
            (0u128..4),
            (any::<u16>(), any::<u64>()).prop_map(|(a, b)| [0xfd00u128, 0x2002, 0x2001, 0xfe80]
                [a as usize % 4]
                << 112
                | u128::from(b)),
        ]
        .prop_map(|a| IpAddr::V6(Ipv6Addr::from(a)));
        prop_oneof![v4, v6]
    }

    fn rule_strategy() -> impl Strategy<Value = Rule> {
        let net = (ip_strategy(), any::<u8>()).prop_map(|(a, l)| {
            let max = if a.is_ipv4() { 32 } else { 128 };
            // Mostly long prefixes, sometimes short ones.
            let len = if l < 200 {
                max - (l % 9).min(max)
            } else {
                l % (max + 1)
            };
            IpNet::new(a, len).unwrap().trunc()
        });
        let port = prop_oneof![
            Just(None),
            (1u16..4, 0u8..3).prop_map(|(p, pr)| Some(PortSpec {
                port: p,
                proto: [None, Some(Proto::Tcp), Some(Proto::Udp)][pr as usize]
            })),
        ];
        (net, port, any::<bool>()).prop_map(|(net, port, allow)| {
            let single = net.prefix_len() == net.max_prefix_len();
            let (action, port) = if allow {
                (Action::Allow, if single { port } else { None })
            } else {
                (Action::Deny, None)
            };
            Rule {
                action,
                target: AllowEntry { net, port },
                source: Source::Builtin("test"),
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn decide_agrees_with_the_naive_model(
            rules in prop::collection::vec(rule_strategy(), 0..12),
            dsts in prop::collection::vec((ip_strategy(), 0u16..4, prop_oneof![Just(PROTO_TCP), Just(PROTO_UDP), Just(PROTO_ICMP)]), 1..16),
            host_routes in prop::collection::vec(rule_strategy(), 0..3),
        ) {
            let h = HostNet::from_parts(vec![], host_routes.iter().map(|r| (r.target.net, None)).collect());
            let p = Policy::build(&Conf::empty(Path::new("t")), &h).with_extra_allow(
                rules.iter().filter(|r| r.action == Action::Allow).map(|r| (r.target, r.source.clone())));
            // Deny rules from the strategy come in as conf denies.
            let mut c = Conf::empty(Path::new("t"));
            for r in rules.iter().filter(|r| r.action == Action::Deny) {
                c.deny.push(Located::at(1, r.target.net));
            }
            let p2 = Policy::build(&c, &h).with_extra_allow(
                rules.iter().filter(|r| r.action == Action::Allow).map(|r| (r.target, r.source.clone())));
            for pol in [&p, &p2] {
                for &(ip, port, proto) in &dsts {
                    let want = naive(pol.rules(), ip, port, proto);
                    let got = pol.decide(ip, port, proto);
                    prop_assert_eq!(got.allowed, want.0, "{} port {} proto {} in {:#?}", ip, port, proto, pol.rules());
                    if let Some(id) = got.rule {
                        let r = pol.rule(id).unwrap();
                        let alone = naive(std::slice::from_ref(r), ip, port, proto);
                        prop_assert!(alone.1.is_some(), "the rule decide names ({}) matches {}", r, ip);
                        prop_assert_eq!(r.action == Action::Allow, got.allowed);
                    } else {
                        prop_assert_eq!(want.1, None);
                    }
                }
            }
        }

        #[test]
        fn allowed_slash24_inside_default_deny(net24 in 0u32..65536, host in any::<u8>(), out in any::<u8>()) {
            let base = 0x0a00_0000 | (net24 << 8);
            let n = Ipv4Net::new(Ipv4Addr::from(base), 24).unwrap();
            let p = policy(&format!("allow-ip = {n}\n"));
            let inside = Ipv4Addr::from(base | u32::from(host));
            prop_assert!(p.decide(IpAddr::V4(inside), 443, PROTO_TCP).allowed, "{} inside allowed {}", inside, n);
            let next = if net24 < 65535 { base + 256 } else { base - 256 };
            let outside = Ipv4Addr::from(next | u32::from(out));
            let d = p.decide(IpAddr::V4(outside), 443, PROTO_TCP);
            prop_assert!(!d.allowed, "{} just outside {} is in 10/8", outside, n);
            prop_assert_eq!(p.describe(d.rule.unwrap()), "deny 10.0.0.0/8 (default)");
        }

        #[test]
        fn map_entries_are_deterministic(rules in prop::collection::vec(rule_strategy(), 0..12)) {
            let build = || Policy::build(&Conf::empty(Path::new("t")), &HostNet::default()).with_extra_allow(
                rules.iter().filter(|r| r.action == Action::Allow).map(|r| (r.target, r.source.clone())));
            let (a, b) = (build(), build());
            prop_assert_eq!(a.map_entries(), b.map_entries());
            prop_assert_eq!(build().digest(), build().digest());
        }
    }
}
