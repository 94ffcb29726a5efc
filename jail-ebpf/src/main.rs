//! The claude-jail kernel programs, attached to the jail's cgroup.
//!
//! - `cgroup/connect4`, `cgroup/sendmsg4`, `cgroup/connect6`, `cgroup/sendmsg6`: judge the
//!   destination a socket of the jail names (connect, or sendto/sendmsg on an unconnected socket).
//!   Refused: the program returns 0 and the syscall fails with EPERM before any packet exists.
//! - `cgroup_skb/egress`: the packet-level backstop for what the socket hooks cannot see (raw
//!   sockets, ICMP, IP options): judges each packet's destination the same way and drops it.
//!
//! The verdict rule (jail-common): an allow entry matches -> allowed; else a deny prefix matches ->
//! refused; else allowed. IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64) are
//! judged by that IPv4 address. Every program entry is thin: the logic lives in `judge*`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_boot_ns,
    },
    macros::{cgroup_skb, cgroup_sock_addr, map},
    maps::{
        lpm_trie::{Key, LpmTrie},
        HashMap, PerCpuArray, RingBuf,
    },
    programs::{SkBuffContext, SockAddrContext},
};
use jail_common::{
    counter_index, Event, Hook, PortKey4, PortKey6, RuleId, COUNTER_COUNT, COUNTER_EVENTS_DROPPED,
    EVENTS_RING_BYTES, FAMILY_V4, FAMILY_V6, MAX_PORT_ENTRIES, MAX_PREFIX_ENTRIES, PROTO_TCP,
    PROTO_UDP, VERDICT_ALLOW, VERDICT_DENY,
};

#[map]
static ALLOW4: LpmTrie<u32, RuleId> = LpmTrie::with_max_entries(MAX_PREFIX_ENTRIES, 0);
#[map]
static ALLOW6: LpmTrie<[u32; 4], RuleId> = LpmTrie::with_max_entries(MAX_PREFIX_ENTRIES, 0);
#[map]
static ALLOW4_PORT: HashMap<PortKey4, RuleId> = HashMap::with_max_entries(MAX_PORT_ENTRIES, 0);
#[map]
static ALLOW6_PORT: HashMap<PortKey6, RuleId> = HashMap::with_max_entries(MAX_PORT_ENTRIES, 0);
#[map]
static DENY4: LpmTrie<u32, RuleId> = LpmTrie::with_max_entries(MAX_PREFIX_ENTRIES, 0);
#[map]
static DENY6: LpmTrie<[u32; 4], RuleId> = LpmTrie::with_max_entries(MAX_PREFIX_ENTRIES, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Return values of cgroup programs.
const PASS: i32 = 1;
const REFUSE: i32 = 0;

/// IPPROTO_MPTCP does not fit the u8 protocol of the keys; MPTCP is TCP to the peer.
const IPPROTO_MPTCP: u32 = 262;

// IPv6 words (network byte order, as the kernel stores them) of the prefixes that carry IPv4.
const W_ZERO: u32 = 0;
const W_ONE: u32 = u32::from_ne_bytes([0, 0, 0, 1]);
const W_FFFF: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
const W_NAT64: u32 = u32::from_ne_bytes([0x00, 0x64, 0xff, 0x9b]);

/// What a packet or socket address says about its destination.
#[derive(Clone, Copy)]
enum Dest {
    V4(u32),
    V6([u32; 4]),
}

/// Port knowledge: a real port, or none because the packet is a non-first fragment (the marker
/// entries apply), or none because the protocol has none / it could not be read.
#[derive(Clone, Copy)]
enum Port {
    Known(u16),
    Fragment,
    None,
}

impl Port {
    /// The port a port-specific allow entry is looked up under: the real port, the marker 0 for
    /// a non-first fragment, none when there is no port (port 0 included: it is never allowed).
    #[inline(always)]
    fn map_key(self) -> Option<u16> {
        match self {
            Port::Known(0) | Port::None => None,
            Port::Known(p) => Some(p),
            Port::Fragment => Some(0),
        }
    }
}

/// Refused: the deny entry that matched.
type Verdict = Result<(), RuleId>;

/// The IPv4 verdict (see the module doc for the rule).
#[inline(always)]
fn judge4(addr: u32, port: Port, proto: u8) -> Verdict {
    if let Some(port) = port.map_key() {
        let key = PortKey4 {
            addr,
            port,
            proto,
            _pad: 0,
        };
        // SAFETY: a hash lookup; the value is only tested for presence.
        if unsafe { ALLOW4_PORT.get(key) }.is_some() {
            return Ok(());
        }
    }
    let key = Key::new(32, addr);
    if ALLOW4.get(&key).is_some() {
        return Ok(());
    }
    match DENY4.get(&key) {
        Some(rule) => Err(*rule),
        None => Ok(()),
    }
}

/// The IPv6 verdict: ::1 and :: are judged as IPv6 (loopback and "this host"); the forms that carry
/// an IPv4 address are judged by it; the rest by the IPv6 maps.
#[inline(always)]
fn judge6(addr: [u32; 4], port: Port, proto: u8) -> Verdict {
    let [w0, w1, w2, w3] = addr;
    let carries_v4 = (w0 == W_ZERO && w1 == W_ZERO && w2 == W_FFFF)
        || (w0 == W_NAT64 && w1 == W_ZERO && w2 == W_ZERO)
        || (w0 == W_ZERO && w1 == W_ZERO && w2 == W_ZERO && w3 != W_ZERO && w3 != W_ONE);
    if carries_v4 {
        return judge4(w3, port, proto);
    }
    if let Some(port) = port.map_key() {
        let key = PortKey6 {
            addr,
            port,
            proto,
            _pad: 0,
        };
        // SAFETY: a hash lookup; the value is only tested for presence.
        if unsafe { ALLOW6_PORT.get(key) }.is_some() {
            return Ok(());
        }
    }
    let key = Key::new(128, addr);
    if ALLOW6.get(&key).is_some() {
        return Ok(());
    }
    match DENY6.get(&key) {
        Some(rule) => Err(*rule),
        None => Ok(()),
    }
}

#[inline(always)]
fn judge(dest: Dest, port: Port, proto: u8) -> Verdict {
    match dest {
        Dest::V4(a) => judge4(a, port, proto),
        Dest::V6(a) => judge6(a, port, proto),
    }
}

#[inline(always)]
fn count(hook: Hook, verdict: u32) {
    bump(counter_index(hook, verdict));
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot: no other program writes it while this one runs on this CPU.
        unsafe { *p += 1 };
    }
}

/// Reports a refusal to userspace without ever blocking: when the ring buffer is full the event is
/// dropped and counted; the verdict does not depend on it.
#[inline(always)]
fn report(hook: Hook, dest: Dest, port: u16, proto: u8, rule: RuleId, task: Option<u32>) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump(COUNTER_EVENTS_DROPPED);
        return;
    };
    let (family, addr) = match dest {
        Dest::V4(a) => (FAMILY_V4, [a, 0, 0, 0]),
        Dest::V6(a) => (FAMILY_V6, a),
    };
    // Socket hooks run in the task that made the syscall; the packet hook may run in softirq
    // context for another task, so it passes the socket owner's uid and no pid or comm.
    let (pid, uid, comm) = match task {
        None => (
            (bpf_get_current_pid_tgid() >> 32) as u32,
            bpf_get_current_uid_gid() as u32,
            bpf_get_current_comm().unwrap_or([0; 16]),
        ),
        Some(uid) => (0, uid, [0; 16]),
    };
    entry.write(Event {
        // SAFETY: a helper without arguments.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        pid,
        uid,
        addr,
        rule,
        port,
        hook: hook as u8,
        proto,
        family,
        _pad: [0; 7],
        comm,
    });
    entry.submit(0);
}

/// Shared body of the four socket-address hooks.
#[inline(always)]
fn sock_addr(ctx: &SockAddrContext, hook: Hook, v6: bool) -> i32 {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the kernel hands a valid bpf_sock_addr for the program's lifetime. The verifier
    // rejects wide or direct array reads of user_ip6: each 32-bit word is read on its own.
    let (dest, port, proto) = unsafe {
        let dest = if v6 {
            Dest::V6([
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ])
        } else {
            Dest::V4((*sa).user_ip4)
        };
        let port = u16::from_be((*sa).user_port as u16);
        let proto = match (*sa).protocol {
            IPPROTO_MPTCP => PROTO_TCP,
            p => p as u8,
        };
        (dest, port, proto)
    };
    match judge(dest, Port::Known(port), proto) {
        Ok(()) => {
            count(hook, VERDICT_ALLOW);
            PASS
        }
        Err(rule) => {
            count(hook, VERDICT_DENY);
            report(hook, dest, port, proto, rule, None);
            REFUSE
        }
    }
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, Hook::Connect4, false)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, Hook::Sendmsg4, false)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, Hook::Connect6, true)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, Hook::Sendmsg6, true)
}

/// IPv6 extension headers walked before giving up on finding the transport header.
const MAX_EXT_HEADERS: usize = 6;

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// What the backstop makes of a packet.
enum Parsed {
    /// Neither IPv4 nor IPv6 (the program is attached to an IP cgroup hook; such a packet
    /// passes).
    NotIp,
    /// An IP packet too short for its own header: refused (fail closed).
    Unreadable,
    /// Destination, port knowledge and protocol.
    Packet(Dest, Port, u8),
}

/// Parses the packet's destination.
///
/// The layout is chosen by the skb's protocol (the ethertype the packet leaves with, which is
/// how the next hop parses it), never by the version nibble: a header-included raw packet may
/// carry any nibble, and an IPv4 packet saying 6 would otherwise be judged by bytes of its
/// payload laid out as an IPv6 destination.
///
/// Every read that fails (a truncated extension header, an IHL that points past the packet)
/// leaves the port unknown, so only an allow entry for the whole address lets it through: a
/// malformed packet never passes for lack of parsing.
#[inline(always)]
fn parse_packet(ctx: &SkBuffContext) -> Parsed {
    // cgroup_skb sees the packet from its network header on. `protocol` is the __be16
    // skb->protocol widened to u32.
    match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => {
            let Ok(h) = ctx.load::<[u8; 20]>(0) else {
                return Parsed::Unreadable;
            };
            let ihl = ((h[0] & 0x0f) as usize) * 4;
            let frag_off = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
            let proto = h[9];
            let dest = Dest::V4(u32::from_ne_bytes([h[16], h[17], h[18], h[19]]));
            let port = if frag_off != 0 {
                Port::Fragment
            } else if ihl < 20 {
                // A header shorter than the minimum: whatever is at ihl + 2 is not a port.
                Port::None
            } else {
                l4_port(ctx, ihl, proto)
            };
            Parsed::Packet(dest, port, proto)
        }
        ETH_P_IPV6 => {
            let Ok(h) = ctx.load::<[u8; 40]>(0) else {
                return Parsed::Unreadable;
            };
            let dest = Dest::V6([
                u32::from_ne_bytes([h[24], h[25], h[26], h[27]]),
                u32::from_ne_bytes([h[28], h[29], h[30], h[31]]),
                u32::from_ne_bytes([h[32], h[33], h[34], h[35]]),
                u32::from_ne_bytes([h[36], h[37], h[38], h[39]]),
            ]);
            let mut next = h[6];
            let mut off = 40usize;
            for _ in 0..MAX_EXT_HEADERS {
                // Fixed-size loads: the verifier refuses a read whose length may be zero, which
                // `load_bytes` (min of buffer and packet length) would be.
                match next {
                    NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                        let Ok(e) = ctx.load::<[u8; 2]>(off) else {
                            return Parsed::Packet(dest, Port::None, next);
                        };
                        next = e[0];
                        off += (e[1] as usize + 1) * 8;
                    }
                    NEXTHDR_AUTH => {
                        let Ok(e) = ctx.load::<[u8; 2]>(off) else {
                            return Parsed::Packet(dest, Port::None, next);
                        };
                        next = e[0];
                        off += (e[1] as usize + 2) * 4;
                    }
                    NEXTHDR_FRAGMENT => {
                        let Ok(e) = ctx.load::<[u8; 4]>(off) else {
                            return Parsed::Packet(dest, Port::None, next);
                        };
                        if u16::from_be_bytes([e[2], e[3]]) >> 3 != 0 {
                            return Parsed::Packet(dest, Port::Fragment, e[0]);
                        }
                        next = e[0];
                        off += 8;
                    }
                    _ => return Parsed::Packet(dest, l4_port(ctx, off, next), next),
                }
            }
            // A chain longer than we walk: judged without a port, so only an allow entry for the
            // whole address lets it through.
            Parsed::Packet(dest, Port::None, next)
        }
        _ => Parsed::NotIp,
    }
}

/// The destination port of a TCP or UDP header at `off`.
#[inline(always)]
fn l4_port(ctx: &SkBuffContext, off: usize, proto: u8) -> Port {
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Port::None;
    }
    match ctx.load::<[u8; 2]>(off + 2) {
        Ok(p) => Port::Known(u16::from_be_bytes(p)),
        Err(_) => Port::None,
    }
}

#[cgroup_skb(egress)]
pub fn skb_egress(ctx: SkBuffContext) -> i32 {
    let (dest, port, proto) = match parse_packet(&ctx) {
        Parsed::Packet(dest, port, proto) => (dest, port, proto),
        Parsed::NotIp => return PASS,
        Parsed::Unreadable => {
            // No destination to judge or report: refused and counted, without an event.
            count(Hook::SkbEgress, VERDICT_DENY);
            return REFUSE;
        }
    };
    match judge(dest, port, proto) {
        Ok(()) => {
            count(Hook::SkbEgress, VERDICT_ALLOW);
            PASS
        }
        Err(rule) => {
            count(Hook::SkbEgress, VERDICT_DENY);
            let port = match port {
                Port::Known(p) => p,
                _ => 0,
            };
            report(
                Hook::SkbEgress,
                dest,
                port,
                proto,
                rule,
                Some(ctx.get_socket_uid()),
            );
            REFUSE
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
