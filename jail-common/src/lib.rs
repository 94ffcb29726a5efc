//! Types shared by the claude-jail eBPF programs (jail-ebpf) and userspace (jail-userspace).
//!
//! Every type here crosses the kernel boundary as raw bytes, so each is `#[repr(C)]`, holds no
//! `bool`, and has explicit padding fields: the layout is the contract, defined once.
//!
//! Addresses are stored as the kernel hands them to the programs: IPv4 as the `u32` read from
//! `bpf_sock_addr.user_ip4` (network byte order, i.e. `u32::from_ne_bytes(ip.octets())`), IPv6 as
//! four such words. Ports are in host byte order.
//!
//! The verdict rule, shared by every hook:
//!   1. an allow entry matches (exact address:port/protocol, or a prefix)  -> allowed;
//!   2. else a deny prefix matches                                          -> refused;
//!   3. else                                                                -> allowed.
#![no_std]

/// Map names, as the object file and the pin directory spell them.
pub mod maps {
    /// LPM trie, `Key<u32>` -> [`super::RuleId`]: IPv4 prefixes allowed on every port.
    pub const ALLOW4: &str = "ALLOW4";
    /// LPM trie, `Key<[u32; 4]>` -> [`super::RuleId`]: IPv6 prefixes allowed on every port.
    pub const ALLOW6: &str = "ALLOW6";
    /// Hash, [`super::PortKey4`] -> [`super::RuleId`]: exact IPv4 address, port and protocol.
    pub const ALLOW4_PORT: &str = "ALLOW4_PORT";
    /// Hash, [`super::PortKey6`] -> [`super::RuleId`]: exact IPv6 address, port and protocol.
    pub const ALLOW6_PORT: &str = "ALLOW6_PORT";
    /// LPM trie, `Key<u32>` -> [`super::RuleId`]: IPv4 prefixes refused.
    pub const DENY4: &str = "DENY4";
    /// LPM trie, `Key<[u32; 4]>` -> [`super::RuleId`]: IPv6 prefixes refused.
    pub const DENY6: &str = "DENY6";
    /// Per-CPU array of `u64`, indexed by [`super::counter_index`] and [`super::COUNTER_EVENTS_DROPPED`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Ring buffer of [`super::Event`]s, one per refused attempt.
    pub const EVENTS: &str = "EVENTS";

    /// Every map the loader pins, in a fixed order.
    pub const ALL: [&str; 8] = [
        ALLOW4,
        ALLOW6,
        ALLOW4_PORT,
        ALLOW6_PORT,
        DENY4,
        DENY6,
        COUNTERS,
        EVENTS,
    ];
}

/// Capacities. LPM tries allocate per entry (they require `BPF_F_NO_PREALLOC`), so a generous
/// maximum costs nothing until used; a reload adds the new entries before it removes the old ones
/// and so may briefly need room for both.
pub const MAX_PREFIX_ENTRIES: u32 = 65_536;
/// Hash maps preallocate: 32768 entries of 12 or 24 bytes.
pub const MAX_PORT_ENTRIES: u32 = 32_768;
/// Ring buffer size in bytes (a power of two and a multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;

/// The id of a rule, stored as the value of every policy map entry so that an event can say
/// which entry matched. Opaque to the programs; userspace hands each id out once per jail, for one
/// rule (jail-userspace's `policy::ids`), so that it names the same rule after a reload.
pub type RuleId = u32;

/// IP protocol numbers the port-specific allow entries use.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// Key of [`maps::ALLOW4_PORT`]. `port == 0` is a marker the compiler adds next to every
/// port-specific entry: "some port of this address and protocol is allowed". The packet backstop
/// uses it for non-first fragments, which carry no port (configured ports are never 0).
///
/// Ordered by address, then port, then protocol (userspace keeps the entries sorted by key).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey4 {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl PortKey4 {
    pub const fn new(addr: u32, port: u16, proto: u8) -> PortKey4 {
        PortKey4 {
            addr,
            port,
            proto,
            _pad: 0,
        }
    }
}

/// Key of [`maps::ALLOW6_PORT`]; see [`PortKey4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey6 {
    pub addr: [u32; 4],
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl PortKey6 {
    pub const fn new(addr: [u32; 4], port: u16, proto: u8) -> PortKey6 {
        PortKey6 {
            addr,
            port,
            proto,
            _pad: 0,
        }
    }
}

/// The hook that judged an attempt.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Connect4 = 0,
    Sendmsg4 = 1,
    Connect6 = 2,
    Sendmsg6 = 3,
    SkbEgress = 4,
}

impl Hook {
    pub const ALL: [Hook; 5] = [
        Hook::Connect4,
        Hook::Sendmsg4,
        Hook::Connect6,
        Hook::Sendmsg6,
        Hook::SkbEgress,
    ];

    pub fn from_u8(v: u8) -> Option<Hook> {
        Hook::ALL.get(v as usize).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            Hook::Connect4 => "connect4",
            Hook::Sendmsg4 => "sendmsg4",
            Hook::Connect6 => "connect6",
            Hook::Sendmsg6 => "sendmsg6",
            Hook::SkbEgress => "skb-egress",
        }
    }
}

pub const VERDICT_ALLOW: u32 = 0;
pub const VERDICT_DENY: u32 = 1;

/// Index into [`maps::COUNTERS`] for one hook and verdict.
pub const fn counter_index(hook: Hook, verdict: u32) -> u32 {
    hook as u32 * 2 + verdict
}

/// Index into [`maps::COUNTERS`]: refusal events dropped because the ring buffer was full.
pub const COUNTER_EVENTS_DROPPED: u32 = Hook::ALL.len() as u32 * 2;
/// Length of [`maps::COUNTERS`].
pub const COUNTER_COUNT: u32 = COUNTER_EVENTS_DROPPED + 1;

/// Address family of an [`Event`].
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// The rule id an event carries when no deny entry is known (never produced for a refusal).
pub const RULE_NONE: RuleId = u32::MAX;

/// One refused attempt, as the programs write it to [`maps::EVENTS`]. 64 bytes, no implicit
/// padding.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `bpf_ktime_get_boot_ns()`: nanoseconds since boot, suspend included.
    pub boot_ns: u64,
    /// Thread-group id (the pid userspace sees) in the initial PID namespace; 0 when unknown.
    pub pid: u32,
    /// Real uid in the initial user namespace; `u32::MAX` when unknown.
    pub uid: u32,
    /// Destination: IPv4 in `addr[0]` (family 4), else the IPv6 address, network byte order.
    pub addr: [u32; 4],
    /// The deny entry that matched.
    pub rule: RuleId,
    /// Destination port, host byte order; 0 when the protocol has none or it was not readable.
    pub port: u16,
    pub hook: u8,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 7],
    /// `comm` of the current task; all zero when unknown (packet backstop).
    pub comm: [u8; 16],
}

#[cfg(feature = "user")]
mod pod {
    // Each type is #[repr(C)], made only of integers and arrays of integers, with every padding
    // byte an explicit field, so every bit pattern is a valid value (what aya::Pod asks).

    // SAFETY: #[repr(C)] integers, padding explicit (above).
    unsafe impl aya::Pod for super::PortKey4 {}
    // SAFETY: #[repr(C)] integers and an integer array, padding explicit (above).
    unsafe impl aya::Pod for super::PortKey6 {}
    // SAFETY: #[repr(C)] integers and integer arrays, padding explicit (above).
    unsafe impl aya::Pod for super::Event {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<PortKey4>(), 4 + 2 + 1 + 1);
        assert_eq!(size_of::<PortKey6>(), 16 + 2 + 1 + 1);
        assert_eq!(
            size_of::<Event>(),
            8 + 4 + 4 + 16 + 4 + 2 + 1 + 1 + 1 + 7 + 16
        );
    }

    #[test]
    fn counter_indices_are_distinct_and_in_range() {
        let mut seen = [false; COUNTER_COUNT as usize];
        for hook in Hook::ALL {
            for verdict in [VERDICT_ALLOW, VERDICT_DENY] {
                let i = counter_index(hook, verdict) as usize;
                assert!(!seen[i], "counter index {i} used twice");
                seen[i] = true;
            }
        }
        assert!(!seen[COUNTER_EVENTS_DROPPED as usize]);
    }

    #[test]
    fn hook_round_trips() {
        for hook in Hook::ALL {
            assert_eq!(Hook::from_u8(hook as u8), Some(hook));
        }
        assert_eq!(Hook::from_u8(5), None);
    }
}
