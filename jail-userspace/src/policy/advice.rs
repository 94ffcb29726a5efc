//! Advice for `claude-jail policy`: what the compiled policy may do that its author did not mean
//! (an allow covering a default deny range, an allowed proxy), and what was left out of it.
use std::net::IpAddr;

use jail_common::RuleId;

use super::{Action, Policy, Source, DEFAULT_DENY, MIN_HOST_DENY_V4_LEN};
use crate::addr;

impl Policy {
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

    /// The allow rule (other than the builtin loopback one) that opens some port of `ip`.
    fn allow_rule_for_addr(&self, ip: IpAddr) -> Option<RuleId> {
        let id = self.map_entries().allow_for_addr(ip)?;
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
        for rule in self.rules() {
            if rule.action != Action::Allow
                || rule.target.port.is_some()
                || matches!(rule.source, Source::Builtin(_))
            {
                continue;
            }
            for d in DEFAULT_DENY {
                if addr::covers(rule.target.net, d) {
                    out.push(format!("{rule} covers the whole default deny range {d}"));
                }
            }
        }
        for (var, value) in env_proxies {
            let Some((host, port)) = proxy_host_port(value) else {
                continue;
            };
            if host.eq_ignore_ascii_case("localhost") || host.parse().is_ok_and(addr::is_loopback) {
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
