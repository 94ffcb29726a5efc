//! The nftables enforcement backend: the jail's policy as an nftables table in the jail's
//! network namespace, for hosts where the eBPF programs cannot be loaded (no CAP_BPF, as in a
//! rootless container). docs/design.md, "The nftables backend", says why and how.
//!
//! Use, from the launcher:
//! 1. [`Ruleset::compile`] the same `Policy::map_entries()` the eBPF maps are filled from;
//! 2. [`open_socket`] on a thread inside the jail's network namespace (with CAP_NET_ADMIN over
//!    it), before the command's capabilities are dropped;
//! 3. [`install`] the ruleset over that socket; a reload is another [`install`] (the table is
//!    replaced in one transaction, never left empty);
//! 4. [`lift_icmp_rate_limit`] there too, so that refused TCP connects fail at once also in a
//!    burst;
//! 5. [`LogReader::open`] in the same namespace for the refusals (nflog group
//!    [`Ruleset::log_group`]); describe each with `Policy::decide(dst, port, proto)`.
//!
//! What the table does (`nft list table inet claude_jail` shows it; docs/design.md, "The
//! nftables backend", says why each rule is there):
//!
//! ```text
//! table inet claude_jail {
//!   set allow4 { type ipv4_addr; flags interval }       # + deny4, allow6, deny6
//!   set allow4_port { type ipv4_addr . inet_proto . inet_service }   # + allow6_port
//!   set embedded4in6 { type ipv6_addr; flags interval } # ::2-::ffff:ffff, ::ffff:0:0/96, 64:ff9b::/96
//!   set kernel_icmp { type icmp_type }                  # + kernel_icmpv6
//!   chain output {
//!     type filter hook output priority 0; policy accept;
//!     icmp type @kernel_icmp accept
//!     icmpv6 type @kernel_icmpv6 accept
//!     ip daddr . meta l4proto . th dport @allow4_port accept
//!     ip daddr @allow4 accept
//!     ip daddr @deny4 log group 7400 reject with icmpx admin-prohibited
//!     (the same three for an IPv6 daddr in @embedded4in6, on its last 32 bits)
//!     ip6 daddr @embedded4in6 accept
//!     ip6 daddr . meta l4proto . th dport @allow6_port accept
//!     ip6 daddr @allow6 accept
//!     ip6 daddr @deny6 log group 7400 reject with icmpx admin-prohibited
//!   }
//! }
//! ```
mod log;
mod netlink;
mod ruleset;

use nix::errno::Errno;

pub use self::{
    log::{LogReader, LoggedPacket},
    netlink::{install, open_socket},
    ruleset::{Ranges, Ruleset, DEFAULT_LOG_GROUP, EMBEDDED_V4},
};

/// claude-jail's table (family inet: one table for IPv4 and IPv6). Nothing else in the jail's
/// network namespace uses nftables.
pub const TABLE: &str = "claude_jail";
/// Its base chain, on the output hook.
pub const CHAIN: &str = "output";

/// Why a netlink exchange with nf_tables or nfnetlink_log failed. The launcher branches on
/// [`NftError::errno`] (EPERM: no CAP_NET_ADMIN over the namespace; ENOENT, EOPNOTSUPP,
/// EPROTONOSUPPORT: a kernel without nf_tables or one of its expressions).
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nftables: {what} failed: {errno} (fix: {})", hint(*errno))]
    Io { what: &'static str, errno: Errno },
    #[error("nftables: the kernel refused {what}: {errno} (fix: {})", hint(*errno))]
    Refused { what: String, errno: Errno },
    #[error(
        "nftables: the ruleset is {bytes} bytes, more than this socket may send at once (one \
         transaction is one datagram) (fix: fewer allow-ip/deny-ip entries or CIDRs that cover \
         several addresses, or raise net.core.wmem_max)"
    )]
    TooLarge { bytes: usize },
}

impl NftError {
    pub(crate) fn io(what: &'static str, errno: Errno) -> NftError {
        NftError::Io { what, errno }
    }

    /// The kernel's error number, when the kernel gave one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            NftError::Io { errno, .. } | NftError::Refused { errno, .. } => Some(*errno),
            NftError::TooLarge { .. } => Some(Errno::EMSGSIZE),
        }
    }
}

/// Lifts the ICMP rate limits of the calling thread's network namespace (call it from a thread
/// inside the jail's, with the rights of its owner, as [`install`]): every refusal's
/// admin-prohibited is an ICMP error the namespace sends itself, and past the default limit
/// (1000 a second, a burst of 50) the kernel sends none, so a refused TCP connect waits for its
/// SYN's retransmission (a second or more) instead of failing at once. Measured: 300 refused
/// connects in a row took 5 s with 5 retransmissions, 3 ms with none once lifted. Only the
/// jail's namespace changes: its kernel then also answers unlimited port unreachables to what
/// reaches it through pasta. `net.ipv4.icmp_ratemask` and `net.ipv6.icmp.ratemask` name the
/// limited types; the masks become empty (ICMPv6 type 0, the only one left, does not exist).
pub fn lift_icmp_rate_limit() -> Result<(), NftError> {
    for (file, value) in [
        ("/proc/sys/net/ipv4/icmp_ratemask", "0"),
        ("/proc/sys/net/ipv6/icmp/ratemask", "0"),
    ] {
        match std::fs::write(file, value) {
            Ok(()) => {}
            // A kernel without IPv6 (or without the mask, before 5.x) has nothing to lift.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(NftError::io(
                    "lifting the ICMP rate limit of the jail's network namespace",
                    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                ))
            }
        }
    }
    Ok(())
}

fn hint(e: Errno) -> &'static str {
    match e {
        Errno::EPERM | Errno::EACCES => {
            "this process lacks CAP_NET_ADMIN over the jail's network namespace (it must act \
             from the user namespace that owns it, before dropping capabilities)"
        }
        Errno::ENOENT
        | Errno::EOPNOTSUPP
        | Errno::EPROTONOSUPPORT
        | Errno::EAFNOSUPPORT
        | Errno::EINVAL => {
            "the kernel lacks nf_tables or one of the pieces used (CONFIG_NF_TABLES_INET, \
             NFT_REJECT_INET, NFT_LOG, NETFILTER_NETLINK_LOG, the rbtree and hash sets): load \
             the modules (modprobe nf_tables nft_reject_inet nfnetlink_log) or use the eBPF \
             mode as root"
        }
        Errno::ENOMEM | Errno::ENOBUFS | Errno::EMSGSIZE => {
            "the ruleset is too large for this kernel's limits: fewer entries, or CIDRs that \
             cover several addresses"
        }
        _ => "see `claude-jail check`; the kernel's log may say more",
    }
}
