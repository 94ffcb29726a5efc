//! The policy: allow and deny rules, each with where it came from, compiled to the exact eBPF
//! map entries.
//!
//! The verdict for a destination (address, port, protocol), the same rule as jail-common's:
//!   1. an allow entry matches (exact address:port/protocol, or a prefix)  -> allowed;
//!   2. else a deny prefix matches                                          -> refused;
//!   3. else                                                                -> allowed.
//!
//! So a narrow allow inside a broad deny works (`allow-ip = 10.1.2.3` inside the default
//! 10.0.0.0/8), and a deny can never take back an allow.
//!
//! IPv6 addresses that carry an IPv4 address are judged as that IPv4 address ([`crate::addr`]).
//! Rules written in those forms are compiled to their IPv4 form, so the maps hold what the
//! programs look up. An IPv6 prefix shorter than /96 never matches such an address: it is judged
//! in IPv4 only.
//!
//! By job: this file compiles rules (the conf's, the defaults, the host's); [`maps`] is the
//! kernel's map layout (entries, capacities, digest, the programs' verdict); [`ids`] the rule ids
//! that stay stable across reloads; `jail` the two policies of one jail ([`policies`]); `advice` what
//! `claude-jail policy` warns about.
mod advice;
pub mod ids;
mod jail;
pub mod maps;
#[cfg(test)]
mod tests;

pub use ids::{RuleIds, RuleNames};
pub use jail::policies;
pub use maps::MapEntries;
// Re-exported for the modules that reach them through `policy` (conf, the tests).
pub use crate::addr::{embedded_ipv4, ne4, ne6};

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use jail_common::RuleId;

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
        Policy::unnumbered(conf, host).numbered_afresh()
    }

    /// [`Policy::build`]'s rules, neither numbered nor compiled: for a caller that numbers them
    /// itself ([`Policy::numbered`]). Numbering and compiling 65,000 rules is most of a launch's
    /// time with such a conf; a launch did it six times over for two policies.
    pub(crate) fn unnumbered(conf: &Conf, host: &HostNet) -> Policy {
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
    pub fn with_extra_allow(self, extra: impl IntoIterator<Item = (AllowEntry, Source)>) -> Policy {
        self.with_extra_rules(extra).numbered_afresh()
    }

    /// [`Policy::with_extra_allow`] without numbering or compiling: the caller numbers the result
    /// ([`Policy::numbered`]), which replaces ids and entries anyway.
    pub(crate) fn with_extra_rules(
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
        self
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Each rule with its id.
    pub fn rules_with_ids(&self) -> impl Iterator<Item = (RuleId, &Rule)> {
        self.ids.iter().copied().zip(&self.rules)
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
        MapEntries::compile(self.rules_with_ids())
    }

    /// What the eBPF programs decide for this destination, from the map entries alone. Port 0
    /// means "no port" (as the programs treat a socket address with port 0, or a protocol
    /// without ports): only prefix entries can allow it. The port-0 marker entries serve the
    /// packet backstop's non-first fragments, see [`Policy::decide_fragment`].
    pub fn decide(&self, ip: IpAddr, port: u16, proto: u8) -> Decision {
        self.entries.judge(ip, (port != 0).then_some(port), proto)
    }

    /// What the packet backstop decides for a non-first fragment, which carries no port: the
    /// port-0 marker of the address and protocol allows it.
    pub fn decide_fragment(&self, ip: IpAddr, proto: u8) -> Decision {
        self.entries.judge(ip, Some(0), proto)
    }
}
