//! The kernel side of a policy: exactly the entries of the six policy maps
//! (jail_common::maps), their capacities, the digest `verify` compares, and the verdict the
//! programs reach from them.
//!
//! The maps are described once, in one table ([`MapEntries::each`]): the capacity checks, the
//! digest and the loader (bpf.rs) go through it instead of repeating the six maps.
use std::{
    collections::BTreeMap,
    fmt::{self, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use jail_common::{maps, PortKey4, PortKey6, RuleId, MAX_PORT_ENTRIES, MAX_PREFIX_ENTRIES};
use sha2::{Digest, Sha256};

use super::{Action, Decision};
use crate::addr::{judged, map_forms, ne4, ne6, Judged};

/// An IPv4 prefix key as aya's LPM `Key` has it: `(prefix_len, address)`.
pub type Prefix4 = (u32, u32);
/// An IPv6 prefix key: `(prefix_len, address)`.
pub type Prefix6 = (u32, [u32; 4]);

/// Exactly the entries of the policy maps, as deterministic, de-duplicated sets that a reload
/// can diff by key. Addresses are in network byte order (`u32::from_ne_bytes(octets)`, see
/// [`crate::addr::ne4`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapEntries {
    pub allow4: BTreeMap<Prefix4, RuleId>,
    pub allow6: BTreeMap<Prefix6, RuleId>,
    /// Port 0 is the per-address/protocol marker ([`PortKey4`]).
    pub allow4_port: BTreeMap<PortKey4, RuleId>,
    pub allow6_port: BTreeMap<PortKey6, RuleId>,
    pub deny4: BTreeMap<Prefix4, RuleId>,
    pub deny6: BTreeMap<Prefix6, RuleId>,
}

/// The key of a policy map, as [`MapEntries`] holds it and as the kernel's map is keyed.
pub trait MapKey: Ord + Copy + fmt::Debug {
    /// An LPM trie, keyed by aya's `Key<Data>` (prefix length and data); else a hash map keyed
    /// by `Data`, the key itself.
    const LPM: bool;
    /// Entries the kernel's map holds (jail-common's capacities).
    const CAPACITY: u32;
    type Data: aya::Pod;
    /// The prefix length (0 for a hash key) and the data.
    fn parts(&self) -> (u32, Self::Data);
    fn from_parts(prefix_len: u32, data: Self::Data) -> Self;
    /// The key in the digest's canonical text.
    fn canonical(&self) -> String;
}

/// The prefix maps: LPM tries keyed by `(prefix_len, address)`.
impl<D: aya::Pod + Ord + fmt::Debug> MapKey for (u32, D) {
    const LPM: bool = true;
    const CAPACITY: u32 = MAX_PREFIX_ENTRIES;
    type Data = D;
    fn parts(&self) -> (u32, D) {
        *self
    }
    fn from_parts(prefix_len: u32, data: D) -> (u32, D) {
        (prefix_len, data)
    }
    fn canonical(&self) -> String {
        // `x?` prints a u32 as `{:08x}` would, and an IPv6 address as four such words.
        format!("{} {:08x?}", self.0, self.1)
    }
}

/// The port maps: hash maps keyed by jail-common's key itself.
macro_rules! port_key {
    ($key:ty) => {
        impl MapKey for $key {
            const LPM: bool = false;
            const CAPACITY: u32 = MAX_PORT_ENTRIES;
            type Data = $key;
            fn parts(&self) -> (u32, $key) {
                (0, *self)
            }
            fn from_parts(_: u32, data: $key) -> $key {
                data
            }
            fn canonical(&self) -> String {
                format!("{:08x?} {} {}", self.addr, self.port, self.proto)
            }
        }
    };
}
port_key!(PortKey4);
port_key!(PortKey6);

/// One policy map: its name (jail_common::maps), whether it allows or denies, what fills it, and
/// where its entries are in a [`MapEntries`]. Its capacity goes with its key type.
pub struct MapDesc<K> {
    pub name: &'static str,
    pub action: Action,
    pub what: &'static str,
    pub get: fn(&MapEntries) -> &BTreeMap<K, RuleId>,
    pub get_mut: fn(&mut MapEntries) -> &mut BTreeMap<K, RuleId>,
}

impl<K> MapDesc<K> {
    /// The name in messages and in the digest's text: `allow4_port`.
    pub fn label(&self) -> String {
        self.name.to_ascii_lowercase()
    }
}

/// Something done to each policy map in turn ([`MapEntries::each`]). The key type differs from
/// map to map, so this is a trait with a generic method rather than a closure.
pub trait EachMap {
    type Out;
    fn map<K: MapKey>(&mut self, map: &MapDesc<K>) -> Self::Out;
}

/// How many of a map's entries are not in another set of entries, with the map's description.
struct NewIn<'a> {
    new: &'a MapEntries,
    old: &'a MapEntries,
}

/// A map's label, what fills it, its capacity, and a count of entries.
type Count = (String, &'static str, u32, usize);

impl EachMap for NewIn<'_> {
    type Out = Count;
    fn map<K: MapKey>(&mut self, m: &MapDesc<K>) -> Count {
        let (new, old) = ((m.get)(self.new), (m.get)(self.old));
        let n = new.keys().filter(|k| !old.contains_key(k)).count();
        (m.label(), m.what, K::CAPACITY, n)
    }
}

/// A map's entries in the digest's canonical text, one line each.
struct Canonical<'a>(&'a MapEntries);

impl EachMap for Canonical<'_> {
    type Out = String;
    fn map<K: MapKey>(&mut self, m: &MapDesc<K>) -> String {
        let mut s = String::new();
        for (k, r) in (m.get)(self.0) {
            // Writing to a String cannot fail.
            let _ = writeln!(s, "{} {} {r}", m.label(), k.canonical());
        }
        s
    }
}

/// The descriptor of the map `maps::$name`, whose entries are [`MapEntries`]' field `$field`.
macro_rules! desc {
    ($name:ident, $field:ident, $action:ident, $what:expr) => {
        &MapDesc {
            name: maps::$name,
            action: Action::$action,
            what: $what,
            get: |e| &e.$field,
            get_mut: |e| &mut e.$field,
        }
    };
}

impl MapEntries {
    /// `v` done to each policy map, in the order an update adds entries: the allow maps, then
    /// the deny maps (jail_common::maps::ALL's order).
    pub fn each<V: EachMap>(v: &mut V) -> [V::Out; 6] {
        [
            v.map(desc!(
                ALLOW4,
                allow4,
                Allow,
                "IPv4 allow entries without a port"
            )),
            v.map(desc!(
                ALLOW6,
                allow6,
                Allow,
                "IPv6 allow entries without a port"
            )),
            v.map(desc!(
                ALLOW4_PORT,
                allow4_port,
                Allow,
                "IPv4 ADDR:PORT allow entries, two per entry and protocol"
            )),
            v.map(desc!(
                ALLOW6_PORT,
                allow6_port,
                Allow,
                "IPv6 [ADDR]:PORT allow entries, two per entry and protocol"
            )),
            v.map(desc!(
                DENY4,
                deny4,
                Deny,
                "IPv4 deny entries (defaults, deny-ip, the host's)"
            )),
            v.map(desc!(
                DENY6,
                deny6,
                Deny,
                "IPv6 deny entries (defaults, deny-ip, the host's)"
            )),
        ]
    }

    /// Per map: its label, what fills it, its capacity, and how many of `self`'s entries are
    /// not in `other` (all of them with an empty `other`).
    fn count_new(&self, other: &MapEntries) -> [Count; 6] {
        MapEntries::each(&mut NewIn {
            new: self,
            old: other,
        })
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

    /// 16 hex digits of the SHA-256 of these entries (rule ids included), as
    /// [`super::Policy::digest`]: `claude-jail verify` compares what the kernel's maps hold with
    /// what the launch compiled.
    pub fn digest(&self) -> String {
        let h = Sha256::digest(self.canonical().as_bytes());
        h.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// A canonical text form, one entry per line: what [`MapEntries::digest`] hashes. The
    /// prefix maps come before the port maps, as they always have, so that a digest recorded
    /// by an earlier version still compares.
    fn canonical(&self) -> String {
        let [allow4, allow6, allow4_port, allow6_port, deny4, deny6] =
            MapEntries::each(&mut Canonical(self));
        [allow4, allow6, deny4, deny6, allow4_port, allow6_port].concat()
    }

    /// The entries of `rules` (each with its id). A rule that repeats an entry of an earlier
    /// one leaves it to the earlier one.
    pub(super) fn compile<'a>(
        rules: impl Iterator<Item = (RuleId, &'a super::Rule)>,
    ) -> MapEntries {
        let mut m = MapEntries::default();
        for (id, rule) in rules {
            let (v4s, v6) = map_forms(rule.target.net);
            match (rule.action, rule.target.port) {
                // Deny rules never carry a port.
                (action @ Action::Deny, _) | (action @ Action::Allow, None) => {
                    let (m4, m6) = match action {
                        Action::Allow => (&mut m.allow4, &mut m.allow6),
                        Action::Deny => (&mut m.deny4, &mut m.deny6),
                    };
                    for n in v4s {
                        m4.entry((u32::from(n.prefix_len()), ne4(n.network())))
                            .or_insert(id);
                    }
                    if let Some(n) = v6 {
                        m6.entry((u32::from(n.prefix_len()), ne6(n.network())))
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
                            m.allow4_port
                                .entry(PortKey4::new(a, ps.port, pr))
                                .or_insert(id);
                            m.allow4_port.entry(PortKey4::new(a, 0, pr)).or_insert(id);
                        }
                        if let Some(n) = v6 {
                            let a = ne6(n.network());
                            m.allow6_port
                                .entry(PortKey6::new(a, ps.port, pr))
                                .or_insert(id);
                            m.allow6_port.entry(PortKey6::new(a, 0, pr)).or_insert(id);
                        }
                    }
                }
            }
        }
        m
    }

    /// What the programs decide from these entries. `port_key`: the port to look up in the port
    /// maps, if any (see [`super::Policy::decide`]).
    pub(super) fn judge(&self, ip: IpAddr, port_key: Option<u16>, proto: u8) -> Decision {
        // The port entry, the allow prefix and the deny prefix that match, if any.
        let (port, allow, deny) = match judged(ip) {
            Judged::V4(a) => (
                port_key.and_then(|p| self.allow4_port.get(&PortKey4::new(ne4(a), p, proto))),
                lpm4(&self.allow4, a),
                lpm4(&self.deny4, a),
            ),
            Judged::V6(a) => (
                port_key.and_then(|p| self.allow6_port.get(&PortKey6::new(ne6(a), p, proto))),
                lpm6(&self.allow6, a),
                lpm6(&self.deny6, a),
            ),
        };
        match (port.copied().or(allow), deny) {
            (Some(r), _) => Decision {
                allowed: true,
                rule: Some(r),
            },
            (None, Some(r)) => Decision {
                allowed: false,
                rule: Some(r),
            },
            (None, None) => Decision {
                allowed: true,
                rule: None,
            },
        }
    }

    /// The allow entry that opens `ip` on every port, or else on some port.
    pub(super) fn allow_for_addr(&self, ip: IpAddr) -> Option<RuleId> {
        match judged(ip) {
            Judged::V4(a) => lpm4(&self.allow4, a).or_else(|| {
                let a = ne4(a);
                self.allow4_port
                    .iter()
                    .find_map(|(k, &r)| (k.addr == a).then_some(r))
            }),
            Judged::V6(a) => lpm6(&self.allow6, a).or_else(|| {
                let a = ne6(a);
                self.allow6_port
                    .iter()
                    .find_map(|(k, &r)| (k.addr == a).then_some(r))
            }),
        }
    }
}

/// Longest-prefix match, as the kernel's LPM trie does it.
fn lpm4(map: &BTreeMap<Prefix4, RuleId>, a: Ipv4Addr) -> Option<RuleId> {
    lpm(map, u32::from(a).into(), 32, |m| {
        ne4(Ipv4Addr::from(m as u32))
    })
}

fn lpm6(map: &BTreeMap<Prefix6, RuleId>, a: Ipv6Addr) -> Option<RuleId> {
    lpm(map, u128::from(a), 128, |m| ne6(Ipv6Addr::from(m)))
}

/// The entry of the longest prefix of the `bits`-bit address `n` in `map`; `key` makes a key's
/// data of a masked address.
fn lpm<D: Ord>(
    map: &BTreeMap<(u32, D), RuleId>,
    n: u128,
    bits: u32,
    key: impl Fn(u128) -> D,
) -> Option<RuleId> {
    (0..=bits).rev().find_map(|len| {
        let host = bits - len;
        let masked = if host >= 128 { 0 } else { n >> host << host };
        map.get(&(len, key(masked))).copied()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digest hashes this text: its format is what lets `verify` compare a digest recorded
    /// by an earlier version (whose code wrote IPv4 words with `{:08x}`).
    #[test]
    fn the_canonical_text_keeps_its_format() {
        let mut e = MapEntries::default();
        e.allow4.insert((32, ne4(Ipv4Addr::new(10, 20, 0, 8))), 2);
        e.deny6.insert((7, ne6("fc00::".parse().unwrap())), 9);
        e.allow4_port
            .insert(PortKey4::new(ne4(Ipv4Addr::new(10, 0, 0, 7)), 443, 6), 3);
        e.allow6_port
            .insert(PortKey6::new(ne6("fd00::5".parse().unwrap()), 0, 17), 4);
        let a = ne4(Ipv4Addr::new(10, 20, 0, 8));
        let b = ne4(Ipv4Addr::new(10, 0, 0, 7));
        let fc = ne6("fc00::".parse().unwrap());
        let fd = ne6("fd00::5".parse().unwrap());
        assert_eq!(
            e.canonical(),
            format!(
                "allow4 32 {a:08x} 2\ndeny6 7 {fc:08x?} 9\nallow4_port {b:08x} 443 6 3\n\
                 allow6_port {fd:08x?} 0 17 4\n"
            )
        );
    }
}
