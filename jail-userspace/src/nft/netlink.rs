//! The ruleset as one nfnetlink batch, and the socket it goes over.
//!
//! The batch, in order (one transaction: the kernel applies all of it or none):
//! 1. `NEWTABLE inet claude_jail`, its base chain `output` (filter, hook output, priority 0,
//!    policy accept) and its sets: created by the first install, left as they are after;
//! 2. each set flushed and filled again;
//! 3. the chain's rules flushed and added again, in the order of [`RULES`] (always the same
//!    rules: only the sets' contents differ from one policy to the next).
//!
//! Why nothing is ever deleted and created again (the reload test caught each of these):
//! - a new base chain is hooked as soon as the kernel reads its message, ahead of the old one
//!   at the same priority and empty until the commit: a packet that went through it just
//!   before the commit and through the old chain (emptied by the commit) just after met no
//!   rule at all;
//! - a rule reads the generation when its chain starts and looks sets up in the generation
//!   of the moment: a packet slowed down across two quick reloads could run new rules whose
//!   new sets were not yet active. With the same sets and rules throughout, any rule it runs
//!   looks up elements of one generation or the other, and a destination that both policies
//!   judge alike is judged so.
//!
//! Registers: an IPv4 key sits in the 32-bit register 8 (NFT_REG32_00), an IPv6 key in 8..11;
//! a concatenation `address . l4proto . dport` continues in the next 32-bit registers, each
//! field padded to 4 bytes, which is also how the set elements' keys are laid out.
use std::{
    os::fd::{AsRawFd, BorrowedFd, OwnedFd},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use netlink_packet_core::{
    DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND,
    NLM_F_CREATE, NLM_F_REQUEST,
};
use netlink_packet_netfilter::{
    nftables::{
        ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions, Hook,
        HookNumber, Immediate, InetHookNumber, ListAttribute, Lookup, Meta, MetaKey,
        NfTablesMessage, Operator, Payload, Register, RuleAttribute, RuleMessage, SetAttribute,
        SetElementAttribute, SetElementFlags, SetElementList, SetElementMessage, SetFlags,
        SetMessage, TableAttribute, TableFlags, TableMessage, Verdict, VerdictAttribute,
    },
    none::ControlMessage,
    NetfilterHeader, NetfilterMessage, NetfilterProtoFamily,
};
use nix::{
    errno::Errno,
    sys::{
        socket::{
            bind, getsockopt, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags,
            NetlinkAddr, SockFlag, SockProtocol, SockType,
        },
        time::TimeVal,
    },
};

use super::{ruleset::EMBEDDED_V4, NftError, Ruleset, CHAIN, TABLE};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// NF_ACCEPT as a verdict code.
const NF_ACCEPT: u32 = 1;
/// NFT_PAYLOAD_NETWORK_HEADER, NFT_PAYLOAD_TRANSPORT_HEADER.
const BASE_NETWORK: u32 = 1;
const BASE_TRANSPORT: u32 = 2;
/// NFPROTO_IPV4, NFPROTO_IPV6 (meta nfproto).
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// nft's data types, for `nft list` (the kernel does not interpret them): ipv4_addr,
/// ipv6_addr, inet_proto, inet_service; a concatenation is `(a << 12) | (b << 6) | c`.
const TYPE_IPV4: u32 = 7;
const TYPE_IPV6: u32 = 8;
const TYPE_PROTO: u32 = 12;
const TYPE_SERVICE: u32 = 13;
const TYPE_ICMP: u32 = 14;
const TYPE_ICMPV6: u32 = 29;
/// IPPROTO_ICMP, IPPROTO_ICMPV6.
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
/// The ICMP types only the kernel sends from the jail's namespace (see [`RULES`]):
/// destination unreachable (what the reject itself sends, to the jail's own address), time
/// exceeded, parameter problem.
pub(crate) const KERNEL_ICMP4: [u8; 3] = [3, 11, 12];
/// ICMPv6: the errors (destination unreachable, packet too big, time exceeded, parameter
/// problem), neighbour discovery (router and neighbour solicitation, neighbour advertisement:
/// without them no IPv6 packet reaches the gateway) and MLD reports and done.
pub(crate) const KERNEL_ICMP6: [u8; 10] = [1, 2, 3, 4, 131, 132, 133, 135, 136, 143];
/// The reject and log expressions' attributes (linux/netfilter/nf_tables.h): the library
/// has no types for them.
const NFTA_REJECT_TYPE: u16 = 1;
const NFTA_REJECT_ICMP_CODE: u16 = 2;
const NFT_REJECT_ICMPX_UNREACH: u32 = 2;
const NFT_REJECT_ICMPX_ADMIN_PROHIBITED: u8 = 3;
const NFTA_LOG_GROUP: u16 = 1;
/// Elements per NEWSETELEM message: the element list is one attribute, whose length is 16
/// bits; 512 elements of at most 96 bytes stay well below 64 KiB.
const ELEMENTS_PER_MESSAGE: usize = 512;

/// How long install waits for the kernel's answer. Generous: a batch of tens of thousands of
/// elements on a loaded machine.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// The sets, with their ids in the batch (a rule refers to a set created in the same batch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Set {
    Allow4 = 1,
    Deny4,
    Allow6,
    Deny6,
    Embedded,
    Allow4Port,
    Allow6Port,
    KernelIcmp4,
    KernelIcmp6,
}

impl Set {
    const ALL: [Set; 9] = [
        Set::Allow4,
        Set::Deny4,
        Set::Allow6,
        Set::Deny6,
        Set::Embedded,
        Set::Allow4Port,
        Set::Allow6Port,
        Set::KernelIcmp4,
        Set::KernelIcmp6,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Set::Allow4 => "allow4",
            Set::Deny4 => "deny4",
            Set::Allow6 => "allow6",
            Set::Deny6 => "deny6",
            Set::Embedded => "embedded4in6",
            Set::Allow4Port => "allow4_port",
            Set::Allow6Port => "allow6_port",
            Set::KernelIcmp4 => "kernel_icmp",
            Set::KernelIcmp6 => "kernel_icmpv6",
        }
    }

    fn interval(self) -> bool {
        !matches!(
            self,
            Set::Allow4Port | Set::Allow6Port | Set::KernelIcmp4 | Set::KernelIcmp6
        )
    }

    /// Key length in bytes and nft's type.
    fn key(self) -> (u32, u32) {
        match self {
            Set::Allow4 | Set::Deny4 => (4, TYPE_IPV4),
            Set::Allow6 | Set::Deny6 | Set::Embedded => (16, TYPE_IPV6),
            Set::Allow4Port => (12, TYPE_IPV4 << 12 | TYPE_PROTO << 6 | TYPE_SERVICE),
            Set::Allow6Port => (24, TYPE_IPV6 << 12 | TYPE_PROTO << 6 | TYPE_SERVICE),
            Set::KernelIcmp4 => (1, TYPE_ICMP),
            Set::KernelIcmp6 => (1, TYPE_ICMPV6),
        }
    }
}

/// Which destination address a rule looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Addr {
    /// An IPv4 packet's daddr.
    V4,
    /// The low 32 bits of an IPv6 daddr inside [`EMBEDDED_V4`] (checked by the same rule).
    Embedded,
    /// An IPv6 packet's daddr.
    V6,
    /// No address: an ICMP (IPv4) or ICMPv6 (IPv6) packet whose type is in the set.
    KernelIcmp4,
    KernelIcmp6,
}

/// What a rule does when its lookup matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    Accept,
    /// `log group N` then `reject with icmpx admin-prohibited`.
    LogReject,
}

/// The chain's rules in order: `(address, set looked up (None: the address test alone),
/// verdict)`. [`Ruleset::allows`] is the model of exactly this list.
const RULES: [(Addr, Option<Set>, Then); 12] = [
    // What the kernel itself sends: a process without CAP_NET_RAW cannot send these types
    // (an unprivileged ICMP socket sends echo requests only), and the eBPF mode never sees
    // them either (they come from no socket of the jail's cgroup).
    (Addr::KernelIcmp4, Some(Set::KernelIcmp4), Then::Accept),
    (Addr::KernelIcmp6, Some(Set::KernelIcmp6), Then::Accept),
    (Addr::V4, Some(Set::Allow4Port), Then::Accept),
    (Addr::V4, Some(Set::Allow4), Then::Accept),
    (Addr::V4, Some(Set::Deny4), Then::LogReject),
    (Addr::Embedded, Some(Set::Allow4Port), Then::Accept),
    (Addr::Embedded, Some(Set::Allow4), Then::Accept),
    (Addr::Embedded, Some(Set::Deny4), Then::LogReject),
    // An embedded IPv4 address that no IPv4 entry judged is allowed (rule 3 of the verdict):
    // the IPv6 sets below must not judge it.
    (Addr::Embedded, None, Then::Accept),
    (Addr::V6, Some(Set::Allow6Port), Then::Accept),
    (Addr::V6, Some(Set::Allow6), Then::Accept),
    (Addr::V6, Some(Set::Deny6), Then::LogReject),
];

/// The elements of `set` in `rs`: `(key, interval end)`.
fn elements(rs: &Ruleset, set: Set) -> Vec<(Vec<u8>, bool)> {
    let ranges = |r: &[(u128, u128)], bytes: usize| -> Vec<(Vec<u8>, bool)> {
        let mut out = Vec::with_capacity(r.len() * 2);
        let max = if bytes == 4 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        for &(lo, hi) in r {
            out.push((lo.to_be_bytes()[16 - bytes..].to_vec(), false));
            // An interval set's element ends a range at the first address after it; a range
            // up to the last address has no end element.
            if hi < max {
                out.push(((hi + 1).to_be_bytes()[16 - bytes..].to_vec(), true));
            }
        }
        out
    };
    let port_key = |addr: &[u8], proto: u8, port: u16| {
        let mut k = addr.to_vec();
        k.extend_from_slice(&[proto, 0, 0, 0]);
        k.extend_from_slice(&port.to_be_bytes());
        k.extend_from_slice(&[0, 0]);
        (k, false)
    };
    match set {
        Set::Allow4 => ranges(rs.allow4.as_slice(), 4),
        Set::Deny4 => ranges(rs.deny4.as_slice(), 4),
        Set::Allow6 => ranges(rs.allow6.as_slice(), 16),
        Set::Deny6 => ranges(rs.deny6.as_slice(), 16),
        Set::Embedded => ranges(&EMBEDDED_V4, 16),
        Set::Allow4Port => rs
            .allow4_port
            .iter()
            .map(|(a, proto, port)| port_key(&a.octets(), *proto, *port))
            .collect(),
        Set::Allow6Port => rs
            .allow6_port
            .iter()
            .map(|(a, proto, port)| port_key(&a.octets(), *proto, *port))
            .collect(),
        Set::KernelIcmp4 => KERNEL_ICMP4.iter().map(|&t| (vec![t], false)).collect(),
        Set::KernelIcmp6 => KERNEL_ICMP6.iter().map(|&t| (vec![t], false)).collect(),
    }
}

fn expr(e: Expressions) -> ListAttribute<ExpressionAttribute> {
    e.into()
}

fn meta(key: MetaKey, dreg: Register) -> ListAttribute<ExpressionAttribute> {
    expr(Expressions::Meta(vec![
        Meta::Key(key),
        Meta::DestinationRegister(dreg),
    ]))
}

fn payload(base: u32, offset: u32, len: u32, dreg: Register) -> ListAttribute<ExpressionAttribute> {
    expr(Expressions::Payload(vec![
        Payload::DestinationRegister(dreg),
        Payload::Base(base),
        Payload::Offset(offset),
        Payload::Len(len),
    ]))
}

fn lookup(set: Set, sreg: Register) -> ListAttribute<ExpressionAttribute> {
    expr(Expressions::Lookup(vec![
        Lookup::Set(set.name().to_owned()),
        Lookup::SourceRegister(sreg),
        Lookup::SetId(set as u32),
    ]))
}

/// `meta KEY == value` (a one-byte key).
fn meta_is(key: MetaKey, value: u8) -> [ListAttribute<ExpressionAttribute>; 2] {
    [
        meta(key, Register::Reg1),
        expr(Expressions::Cmp(vec![
            Cmp::SourceRegister(Register::Reg1),
            Cmp::Op(Operator::Equal),
            Cmp::Data(DataAttribute::Value(vec![value])),
        ])),
    ]
}

fn nfproto_is(p: u8) -> [ListAttribute<ExpressionAttribute>; 2] {
    meta_is(MetaKey::Nfproto, p)
}

/// The expressions of one rule of [`RULES`].
fn rule_exprs(
    addr: Addr,
    set: Option<Set>,
    then: Then,
    log_group: u16,
) -> Vec<ListAttribute<ExpressionAttribute>> {
    let mut e = Vec::new();
    // Where the (IPv4 or IPv6) address to judge starts in the network header, and its length.
    let (offset, len) = match addr {
        Addr::V4 => {
            e.extend(nfproto_is(NFPROTO_IPV4));
            (16, 4)
        }
        Addr::Embedded => {
            e.extend(nfproto_is(NFPROTO_IPV6));
            e.push(payload(BASE_NETWORK, 24, 16, Register::Reg32_00));
            e.push(lookup(Set::Embedded, Register::Reg32_00));
            (36, 4)
        }
        Addr::V6 => {
            e.extend(nfproto_is(NFPROTO_IPV6));
            (24, 16)
        }
        Addr::KernelIcmp4 | Addr::KernelIcmp6 => {
            let (family, proto) = if addr == Addr::KernelIcmp4 {
                (NFPROTO_IPV4, ICMP)
            } else {
                (NFPROTO_IPV6, ICMPV6)
            };
            e.extend(nfproto_is(family));
            e.extend(meta_is(MetaKey::L4Proto, proto));
            // The type: the first byte of the ICMP header.
            e.push(payload(BASE_TRANSPORT, 0, 1, Register::Reg32_00));
            (0, 0)
        }
    };
    if let Some(set) = set.filter(|_| len == 0) {
        e.push(lookup(set, Register::Reg32_00));
    } else if let Some(set) = set {
        e.push(payload(BASE_NETWORK, offset, len, Register::Reg32_00));
        if matches!(set, Set::Allow4Port | Set::Allow6Port) {
            // The protocol and port right after the address, in whole 32-bit registers
            // (register 8 + len/4: 9 after an IPv4 address, 12 after an IPv6 one).
            let after = |k: u32| Register::Other(8 + len / 4 + k);
            e.push(meta(MetaKey::L4Proto, after(0)));
            // The destination port: bytes 2-3 of the TCP and UDP headers. A packet without a
            // transport header (a non-first fragment) ends the rule here, unmatched.
            e.push(payload(BASE_TRANSPORT, 2, 2, after(1)));
        }
        e.push(lookup(set, Register::Reg32_00));
    }
    match then {
        Then::Accept => e.push(expr(Expressions::Immediate(vec![
            Immediate::DestinationRegister(Register::Verdict),
            Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(
                Verdict::Other(NF_ACCEPT),
            )])),
        ]))),
        Then::LogReject => {
            e.push(expr(Expressions::Other {
                expression_type: "log".into(),
                attributes: vec![DefaultNla::new(
                    NFTA_LOG_GROUP,
                    log_group.to_be_bytes().to_vec(),
                )],
            }));
            e.push(expr(Expressions::Other {
                expression_type: "reject".into(),
                attributes: vec![
                    DefaultNla::new(
                        NFTA_REJECT_TYPE,
                        NFT_REJECT_ICMPX_UNREACH.to_be_bytes().to_vec(),
                    ),
                    DefaultNla::new(
                        NFTA_REJECT_ICMP_CODE,
                        vec![NFT_REJECT_ICMPX_ADMIN_PROHIBITED],
                    ),
                ],
            }));
        }
    }
    e
}

/// What each message of a batch is, for error messages.
pub(crate) type Batch = Vec<(String, NetlinkMessage<NetfilterMessage>)>;

fn message(
    family: NetfilterProtoFamily,
    res_id: u16,
    inner: impl Into<netlink_packet_netfilter::NetfilterMessageInner>,
    flags: u16,
) -> NetlinkMessage<NetfilterMessage> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    let mut m = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, res_id),
            inner,
        )),
    );
    m.finalize();
    m
}

/// The batch that brings claude-jail's table to `rs`: the table, chain and sets created if
/// missing, each set flushed and filled, the chain's rules flushed and added again.
pub(crate) fn batch(rs: &Ruleset) -> Batch {
    let inet = NetfilterProtoFamily::Inet;
    let table = || TABLE.to_owned();
    let mut b: Batch = Vec::new();
    let mut push = |what: String, inner: NfTablesMessage, flags: u16| {
        b.push((what, message(inet, 0, inner, flags | NLM_F_ACK)));
    };
    push(
        format!("creating table inet {TABLE} (if missing)"),
        NfTablesMessage::NewTable(TableMessage {
            attributes: vec![
                TableAttribute::Name(table()),
                TableAttribute::Flags(TableFlags::default()),
            ],
        }),
        NLM_F_CREATE,
    );
    push(
        format!("creating chain {CHAIN} (hook output, if missing)"),
        NfTablesMessage::NewChain(ChainMessage {
            attributes: vec![
                ChainAttribute::Table(table()),
                ChainAttribute::Name(CHAIN.to_owned()),
                ChainAttribute::Hook(vec![
                    Hook::Number(HookNumber::Inet(InetHookNumber::LocalOut)),
                    Hook::Priority(0),
                ]),
                ChainAttribute::Policy(NF_ACCEPT),
                ChainAttribute::Type("filter".to_owned()),
            ],
        }),
        NLM_F_CREATE,
    );
    for set in Set::ALL {
        let (key_len, key_type) = set.key();
        let flags = if set.interval() {
            SetFlags::Interval
        } else {
            SetFlags::empty()
        };
        push(
            format!("creating set {} (if missing)", set.name()),
            NfTablesMessage::NewSet(SetMessage {
                attributes: vec![
                    SetAttribute::Table(table()),
                    SetAttribute::Name(set.name().to_owned()),
                    SetAttribute::Flags(flags),
                    SetAttribute::KeyType(key_type),
                    SetAttribute::KeyLen(key_len),
                    SetAttribute::Id(set as u32),
                ],
            }),
            NLM_F_CREATE,
        );
        // An element list without elements: every element of the set.
        push(
            format!("flushing set {}", set.name()),
            NfTablesMessage::DeleteSetElement(SetElementMessage {
                attributes: vec![
                    SetElementList::Table(table()),
                    SetElementList::Set(set.name().to_owned()),
                ],
            }),
            0,
        );
        let all = elements(rs, set);
        for (i, chunk) in all.chunks(ELEMENTS_PER_MESSAGE).enumerate() {
            let list = chunk
                .iter()
                .map(|(key, end)| {
                    let mut attrs =
                        vec![SetElementAttribute::Key(DataAttribute::Value(key.clone()))];
                    if *end {
                        attrs.push(SetElementAttribute::Flags(SetElementFlags::IntervalEnd));
                    }
                    ListAttribute::Element(attrs)
                })
                .collect();
            push(
                format!(
                    "adding elements {}..{} of {} to set {}",
                    i * ELEMENTS_PER_MESSAGE,
                    i * ELEMENTS_PER_MESSAGE + chunk.len(),
                    all.len(),
                    set.name()
                ),
                NfTablesMessage::NewSetElement(SetElementMessage {
                    attributes: vec![
                        SetElementList::Table(table()),
                        SetElementList::Set(set.name().to_owned()),
                        SetElementList::SetId(set as u32),
                        SetElementList::Elements(list),
                    ],
                }),
                NLM_F_CREATE,
            );
        }
    }
    push(
        format!("flushing chain {CHAIN}"),
        NfTablesMessage::DeleteRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(table()),
                RuleAttribute::Chain(CHAIN.to_owned()),
            ],
        }),
        0,
    );
    for (i, (addr, set, then)) in RULES.into_iter().enumerate() {
        push(
            format!(
                "adding rule {} ({addr:?} {} -> {then:?})",
                i + 1,
                set.map_or("address", Set::name)
            ),
            NfTablesMessage::NewRule(RuleMessage {
                attributes: vec![
                    RuleAttribute::Table(table()),
                    RuleAttribute::Chain(CHAIN.to_owned()),
                    RuleAttribute::Expressions(rule_exprs(addr, set, then, rs.log_group)),
                ],
            }),
            NLM_F_CREATE | NLM_F_APPEND,
        );
    }
    b
}

/// A NETLINK_NETFILTER socket in the calling thread's network namespace. Open it there (a
/// socket belongs to the namespace it was created in for its whole life): [`install`] and
/// [`super::LogReader`] act on that namespace from any thread later.
pub fn open_socket() -> Result<OwnedFd, NftError> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .map_err(|e| NftError::io("opening a NETLINK_NETFILTER socket", e))?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))
        .map_err(|e| NftError::io("binding the NETLINK_NETFILTER socket", e))?;
    Ok(fd)
}

static SEQ: AtomicU32 = AtomicU32::new(1);

/// Sends `msgs` (numbered from a fresh sequence number) as one datagram, each framed by
/// `begin`/`end` when given, and waits until the kernel has acknowledged every message that
/// asked for it. The first refusal is the error.
pub(crate) fn transact(sock: BorrowedFd<'_>, mut msgs: Batch, batch: bool) -> Result<(), NftError> {
    let n = u32::try_from(msgs.len() + 2).expect("a batch of fewer than 2^32 messages");
    let first = SEQ.fetch_add(n, Ordering::Relaxed);
    let control = |inner: ControlMessage| {
        message(NetfilterProtoFamily::Unspec, NFNL_SUBSYS_NFTABLES, inner, 0)
    };
    if batch {
        msgs.insert(
            0,
            (
                "beginning the batch".into(),
                control(ControlMessage::BatchBegin),
            ),
        );
        msgs.push(("ending the batch".into(), control(ControlMessage::BatchEnd)));
    }
    let mut buf = Vec::new();
    let mut acks = std::collections::BTreeMap::new();
    for (i, (what, m)) in msgs.iter_mut().enumerate() {
        let seq = first.wrapping_add(i as u32);
        m.header.sequence_number = seq;
        let start = buf.len();
        buf.resize(start + m.buffer_len(), 0);
        m.serialize(&mut buf[start..]);
        if m.header.flags & NLM_F_ACK != 0 {
            acks.insert(seq, what.clone());
        }
    }
    let begin_what = msgs.first().map(|(w, _)| w.clone()).unwrap_or_default();
    // The whole batch is one datagram (the kernel applies a batch per datagram): make room.
    let want = buf.len().saturating_mul(2).max(1 << 16);
    let _ = setsockopt(&sock, sockopt::SndBuf, &want);
    if getsockopt(&sock, sockopt::SndBuf).unwrap_or(0) < buf.len() {
        // Above net.core.wmem_max only CAP_NET_ADMIN in the initial namespace can go.
        let _ = setsockopt(&sock, sockopt::SndBufForce, &want);
    }
    let _ = setsockopt(&sock, sockopt::RcvBuf, &(1usize << 20));
    setsockopt(
        &sock,
        sockopt::ReceiveTimeout,
        &TimeVal::new(ACK_TIMEOUT.as_secs() as _, 0),
    )
    .map_err(|e| NftError::io("setting the netlink socket's receive timeout", e))?;
    // Bound but not connected: a netlink socket sends to the kernel by default.
    send(sock.as_raw_fd(), &buf, MsgFlags::empty()).map_err(|e| match e {
        Errno::EMSGSIZE => NftError::TooLarge { bytes: buf.len() },
        e => NftError::io("sending the nftables batch", e),
    })?;
    let mut first_error: Option<NftError> = None;
    // Set when the first message itself is refused: the batch's whole answer (no
    // CAP_NET_ADMIN, no nf_tables, or a failed commit), nothing else will be acknowledged.
    let mut whole_batch_refused = false;
    let mut rbuf = vec![0u8; 1 << 16];
    while !acks.is_empty() && !whole_batch_refused {
        let len = match recv(sock.as_raw_fd(), &mut rbuf, MsgFlags::empty()) {
            Ok(l) => l,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => {
                return Err(first_error.unwrap_or(NftError::io(
                    "waiting for the kernel's answer to the nftables batch",
                    Errno::ETIMEDOUT,
                )))
            }
            Err(e) => return Err(NftError::io("reading the kernel's answer", e)),
        };
        let mut off = 0;
        while off + 16 <= len {
            let word = |at: usize| u32::from_ne_bytes(rbuf[at..at + 4].try_into().unwrap());
            let (mlen, mtype, seq) = (word(off) as usize, word(off + 4) as u16, word(off + 8));
            if mlen < 16 || off + mlen > len {
                break;
            }
            // NLMSG_ERROR: a signed errno (0: an acknowledgement) then the request's header.
            // Answers to an earlier batch on this socket (left unread after its failure)
            // carry sequence numbers outside this batch's and are skipped.
            if mtype == libc::NLMSG_ERROR as u16 && mlen >= 20 && seq.wrapping_sub(first) < n {
                let code = word(off + 16) as i32;
                let what = acks.remove(&seq);
                if code != 0 {
                    whole_batch_refused |= seq == first;
                    first_error.get_or_insert(NftError::Refused {
                        what: what.unwrap_or_else(|| begin_what.clone()),
                        errno: Errno::from_raw(-code),
                    });
                }
            }
            off += (mlen + 3) & !3;
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Replaces claude-jail's rules in the network namespace of `sock` (see [`open_socket`]) with
/// `rs`, in one transaction: before it the previous rules hold, after it the new ones, never
/// neither. Serves the first install and every reload. Needs CAP_NET_ADMIN over that
/// namespace (in the user namespace that owns it). One install at a time per socket (the
/// answers are matched by sequence number, not demultiplexed between callers).
pub fn install(sock: BorrowedFd<'_>, rs: &Ruleset) -> Result<(), NftError> {
    transact(sock, batch(rs), true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::Ruleset;
    use crate::policy::MapEntries;
    use jail_common::PortKey4;

    #[test]
    fn batch_shape() {
        let mut m = MapEntries::default();
        // 10.0.0.0/8 deny, 10.1.2.3 allow, 10.1.2.4:443/tcp.
        m.deny4.insert((8, u32::from_ne_bytes([10, 0, 0, 0])), 0);
        m.allow4.insert((32, u32::from_ne_bytes([10, 1, 2, 3])), 1);
        m.allow4_port
            .insert(PortKey4::new(u32::from_ne_bytes([10, 1, 2, 4]), 443, 6), 2);
        m.allow4_port
            .insert(PortKey4::new(u32::from_ne_bytes([10, 1, 2, 4]), 0, 6), 2);
        let rs = Ruleset::compile(&m);
        let b = batch(&rs);
        let whats: Vec<&str> = b.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(whats[0], "creating table inet claude_jail (if missing)");
        assert_eq!(whats[1], "creating chain output (hook output, if missing)");
        // Nothing is deleted: the sets are flushed and filled, the rules flushed and added.
        assert!(!whats.iter().any(|w| w.contains("delet")));
        let fill = |name: &str| {
            let f = whats
                .iter()
                .position(|w| *w == format!("flushing set {name}"))
                .unwrap();
            assert!(
                whats[f + 1].starts_with("adding elements 0..")
                    && whats[f + 1].ends_with(&format!("to set {name}")),
                "{}",
                whats[f + 1]
            );
        };
        fill("deny4");
        fill("allow4_port");
        let flush = whats
            .iter()
            .position(|w| *w == "flushing chain output")
            .unwrap();
        assert!(whats[..flush].iter().all(|w| !w.starts_with("adding rule")));
        assert!(whats[flush + 1..]
            .iter()
            .all(|w| w.starts_with("adding rule")));
        assert_eq!(whats.len() - flush - 1, 12);
        assert!(whats
            .last()
            .unwrap()
            .starts_with("adding rule 12 (V6 deny6"));
        // Elements: a range is a start and an end key; the port set's key is padded fields.
        assert_eq!(
            elements(&rs, Set::Deny4),
            vec![(vec![10, 0, 0, 0], false), (vec![11, 0, 0, 0], true)]
        );
        assert_eq!(
            elements(&rs, Set::Allow4),
            vec![(vec![10, 1, 2, 3], false), (vec![10, 1, 2, 4], true)]
        );
        assert_eq!(
            elements(&rs, Set::Allow4Port),
            vec![(vec![10, 1, 2, 4, 6, 0, 0, 0, 1, 187, 0, 0], false)]
        );
        // A range reaching the top of the address space has no end element.
        let top = Ruleset {
            deny6: crate::nft::Ranges::union(vec![(0xff00 << 112, u128::MAX)]),
            ..rs.clone()
        };
        assert_eq!(elements(&top, Set::Deny6).len(), 1);
        // Every message serializes within the 16-bit attribute limit.
        for (what, m) in &b {
            assert!(m.buffer_len() < 65_000, "{what}: {}", m.buffer_len());
        }
    }

    #[test]
    fn many_elements_are_split_over_messages() {
        let mut m = MapEntries::default();
        for i in 0..3000u32 {
            // Every other /32: no two adjacent, so 3000 ranges, 6000 elements.
            m.deny4.insert((32, (0x0b00_0000 + 2 * i).to_be()), 0);
        }
        let b = batch(&Ruleset::compile(&m));
        let adds: Vec<_> = b
            .iter()
            .filter(|(w, _)| w.contains("to set deny4"))
            .collect();
        assert_eq!(adds.len(), 6000usize.div_ceil(ELEMENTS_PER_MESSAGE));
        for (what, msg) in &adds {
            assert!(msg.buffer_len() < 65_000, "{what}");
        }
        // What docs/design.md says of the size: some 24 bytes an IPv4 element, so about 7,000
        // ranges (two elements each) in the 400 KB an unprivileged socket may send at once.
        let bytes: usize = adds.iter().map(|(_, m)| m.buffer_len()).sum();
        assert!((20 * 6000..28 * 6000).contains(&bytes), "{bytes} bytes");
    }
}
