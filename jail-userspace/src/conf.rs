//! The configuration file, compatible with the original `/etc/claude-sandbox.conf`.
//!
//! Format: one `key = value` or bare `key` per line; `#` starts a comment anywhere on a line;
//! blank lines, surrounding whitespace and a trailing `\r` (CRLF files) are ignored. Keys:
//!
//! | key | value | repeatable |
//! | --- | --- | --- |
//! | `egress-jail` | `0` or `1`; bare `egress-jail` means `1` | no: a second line is refused |
//! | `allow-ip` | `ADDR`, `CIDR`, `ADDR:PORT[/tcp\|/udp]`, `[V6ADDR]:PORT[/tcp\|/udp]` | yes |
//! | `deny-ip` | `ADDR` or `CIDR` | yes |
//! | `host-port`, `publish-port` | `PORT[/tcp\|/udp]` | yes |
//! | `allow-socket` | an absolute path | yes |
//!
//! Anything else is refused with `FILE:LINE: what is wrong`: a configuration that means less than
//! its author thinks is worse than none, so nothing is truncated or skipped.
//!
//! The parser is pure ([`parse`]); the environment is passed in as values, never read here, so
//! that tests need no global state.
use std::{
    ffi::OsStr,
    fmt,
    net::{IpAddr, Ipv6Addr},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use ipnet::{IpNet, Ipv6Net};

/// Where the configuration is read when neither `--config` nor `CLAUDE_SANDBOX_CONF` says.
pub const DEFAULT_PATH: &str = "/etc/claude-sandbox.conf";
/// Environment variable that picks another configuration file.
pub const ENV_CONF: &str = "CLAUDE_SANDBOX_CONF";
/// Environment variable that overrides `egress-jail` (`0` or `1`).
pub const ENV_EGRESS_JAIL: &str = "CLAUDE_SANDBOX_EGRESS_JAIL";

/// The keys this version knows, in the order the error message lists them.
const KEYS: [&str; 6] = [
    "egress-jail",
    "allow-ip",
    "deny-ip",
    "host-port",
    "publish-port",
    "allow-socket",
];

/// A transport protocol a port entry may be limited to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The IP protocol number, as the eBPF maps store it.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => jail_common::PROTO_TCP,
            Proto::Udp => jail_common::PROTO_UDP,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `PORT[/tcp|/udp]`: a port, on one protocol or (without one) on both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    /// 1..=65535: port 0 is refused at parse time (it is the map's fragment marker).
    pub port: u16,
    pub proto: Option<Proto>,
}

impl PortSpec {
    /// The protocols this entry opens: the one named, else tcp and udp.
    pub fn protos(&self) -> Vec<Proto> {
        match self.proto {
            Some(p) => vec![p],
            None => vec![Proto::Tcp, Proto::Udp],
        }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.proto {
            Some(p) => write!(f, "{}/{}", self.port, p),
            None => write!(f, "{}", self.port),
        }
    }
}

/// One `allow-ip` value: a prefix on every port and protocol, or a single address on one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AllowEntry {
    /// Always a network address (no host bits); a /32 or /128 when `port` is set.
    pub net: IpNet,
    pub port: Option<PortSpec>,
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.port, self.net) {
            (None, net) => write!(f, "{net}"),
            (Some(p), IpNet::V4(n)) => write!(f, "{}:{p}", n.addr()),
            (Some(p), IpNet::V6(n)) => write!(f, "[{}]:{p}", n.addr()),
        }
    }
}

/// A value and the line (1-based) it was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located<T> {
    pub line: usize,
    pub value: T,
}

impl<T> Located<T> {
    pub fn at(line: usize, value: T) -> Located<T> {
        Located { line, value }
    }
}

/// The parsed configuration file. Every field is what the file says; defaults are applied by
/// the consumers ([`jail_enabled`], `policy::Policy::build`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conf {
    /// The path as given (for messages).
    pub path: PathBuf,
    /// False when the file does not exist: all defaults.
    pub found: bool,
    pub egress_jail: Option<Located<bool>>,
    pub allow: Vec<Located<AllowEntry>>,
    pub deny: Vec<Located<IpNet>>,
    pub host_ports: Vec<Located<PortSpec>>,
    pub publish_ports: Vec<Located<PortSpec>>,
    pub allow_sockets: Vec<Located<PathBuf>>,
}

impl Conf {
    /// The configuration of a missing file: everything default.
    pub fn empty(path: &Path) -> Conf {
        Conf {
            path: path.to_path_buf(),
            found: false,
            egress_jail: None,
            allow: Vec::new(),
            deny: Vec::new(),
            host_ports: Vec::new(),
            publish_ports: Vec::new(),
            allow_sockets: Vec::new(),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    /// A line that is wrong: displayed `FILE:LINE: msg`.
    #[error("{}:{line}: {msg}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// The file exists but could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file (or a directory above it) could be changed by someone other than root, so a
    /// jailed agent running as the user might rewrite its own policy.
    #[error("{}: not trusted: {msg}", path.display())]
    Untrusted { path: PathBuf, msg: String },
    /// An environment variable with a value that means nothing.
    #[error("{var}={value}: {msg}")]
    Env {
        var: &'static str,
        value: String,
        msg: String,
    },
}

/// Whether [`load`] checks who can write the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// For `run` and `reload`: the file and every directory above it must be root's alone.
    Strict,
    /// For `policy`: any readable file, since it is only being checked.
    Any,
}

/// The file to read: `--config`, else `$CLAUDE_SANDBOX_CONF` (an empty value counts as unset),
/// else [`DEFAULT_PATH`].
pub fn conf_path(cli: Option<PathBuf>, env: Option<&OsStr>) -> PathBuf {
    if let Some(p) = cli {
        return p;
    }
    match env {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_PATH),
    }
}

/// Reads and parses `path`. A missing file means all defaults (as in the original project).
pub fn load(path: &Path, trust: Trust) -> Result<Conf, ConfError> {
    let io = |source| ConfError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Conf::empty(path)),
        Err(e) => return Err(io(e)),
    };
    if trust == Trust::Strict {
        // Checked after the read only to keep one code path for "missing"; the content is not
        // used before the check passes. The file could be swapped in between only by someone
        // who can write to a directory above it, which is exactly what the check refuses.
        check_trusted(path)?;
    }
    parse(path, &bytes)
}

/// sshd-StrictModes-like ownership check of `path` (after resolving symlinks) and each
/// directory above it: owned by root and not writable by group or others; a root-owned sticky
/// directory (like /tmp) is accepted, since there only the owner of an entry can replace it.
pub fn check_trusted(path: &Path) -> Result<(), ConfError> {
    let untrusted = |msg: String| ConfError::Untrusted {
        path: path.to_path_buf(),
        msg,
    };
    let real = std::fs::canonicalize(path).map_err(|source| ConfError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let shown = if real == path {
        String::new()
    } else {
        format!(" (resolved to {})", real.display())
    };
    let meta = std::fs::metadata(&real).map_err(|source| ConfError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(untrusted(format!("{shown} is not a regular file")));
    }
    let fix_file = format!(
        "fix: chown root:root {f} && chmod 644 {f}",
        f = real.display()
    );
    if meta.uid() != 0 {
        return Err(untrusted(format!(
            "owned by uid {}, not root{shown}, so the jailed agent may be able to rewrite it; {fix_file}",
            meta.uid()
        )));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(untrusted(format!(
            "writable by group or others (mode {:o}){shown}; {fix_file}",
            meta.permissions().mode() & 0o7777
        )));
    }
    for dir in real.ancestors().skip(1) {
        let m = std::fs::metadata(dir).map_err(|source| ConfError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mode = m.permissions().mode();
        let root_sticky = m.uid() == 0 && mode & 0o1000 != 0;
        if m.uid() != 0 || (mode & 0o022 != 0 && !root_sticky) {
            return Err(untrusted(format!(
                "directory {d} is owned by uid {} with mode {:o}{shown}: someone other than root \
                 could replace the file; fix: chown root:root {d} && chmod go-w {d}, or move the \
                 file to {DEFAULT_PATH}",
                m.uid(),
                mode & 0o7777,
                d = dir.display(),
            )));
        }
    }
    Ok(())
}

/// Whether the jail is on, and what said so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailSwitch {
    pub enabled: bool,
    /// `CLAUDE_SANDBOX_EGRESS_JAIL=0`, `FILE:LINE`, or `default`.
    pub source: String,
}

/// `CLAUDE_SANDBOX_EGRESS_JAIL` (when set) wins over the file, which wins over the default (on).
/// An environment value other than `0` or `1` is an error rather than a guess.
pub fn jail_enabled(conf: &Conf, env_value: Option<&OsStr>) -> Result<JailSwitch, ConfError> {
    if let Some(v) = env_value {
        let enabled = match v.to_str() {
            Some("0") => false,
            Some("1") => true,
            _ => {
                return Err(ConfError::Env {
                    var: ENV_EGRESS_JAIL,
                    value: v.to_string_lossy().into_owned(),
                    msg: "must be 0 or 1".into(),
                })
            }
        };
        return Ok(JailSwitch {
            enabled,
            source: format!("{ENV_EGRESS_JAIL}={}", u8::from(enabled)),
        });
    }
    Ok(match &conf.egress_jail {
        Some(l) => JailSwitch {
            enabled: l.value,
            source: format!("{}:{}", conf.path.display(), l.line),
        },
        None => JailSwitch {
            enabled: true,
            source: "default".into(),
        },
    })
}

/// Parses the file's bytes. `path` is only used in messages and stored in the result.
pub fn parse(path: &Path, text: &[u8]) -> Result<Conf, ConfError> {
    let mut conf = Conf::empty(path);
    conf.found = true;
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let err = |msg: String| ConfError::Line {
            path: path.to_path_buf(),
            line,
            msg,
        };
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.contains(&0) {
            return Err(err("the line contains a NUL byte".into()));
        }
        let s = std::str::from_utf8(raw).map_err(|_| err("the line is not valid UTF-8".into()))?;
        parse_line(&mut conf, line, s).map_err(err)?;
    }
    Ok(conf)
}

/// One line, comments included; the error is the message without `FILE:LINE: `.
fn parse_line(conf: &mut Conf, line: usize, s: &str) -> Result<(), String> {
    let s = s.split('#').next().unwrap_or("").trim();
    if s.is_empty() {
        return Ok(());
    }
    let (key, value) = match s.split_once('=') {
        Some((k, v)) => (k.trim(), Some(v.trim())),
        None => (s, None),
    };
    if key.is_empty() {
        return Err(format!("expected `key = value`, found `{s}`"));
    }
    if key.contains(char::is_whitespace) {
        return Err(format!("expected `key = value`, found `{s}`"));
    }
    if !KEYS.contains(&key) {
        return Err(format!(
            "unknown key `{key}` (known keys: {})",
            KEYS.join(", ")
        ));
    }
    if key == "egress-jail" {
        let on = match value {
            None | Some("1") => true,
            Some("0") => false,
            Some(v) => return Err(format!("egress-jail must be 0 or 1, not `{v}`")),
        };
        // Refused rather than "last one wins": two lines that disagree are a mistake the
        // author should see, as sshd refuses conflicting settings it cannot merge.
        if let Some(prev) = &conf.egress_jail {
            return Err(format!("egress-jail is already set on line {}", prev.line));
        }
        conf.egress_jail = Some(Located::at(line, on));
        return Ok(());
    }
    let value = match value {
        Some(v) if !v.is_empty() => v,
        _ => return Err(format!("{key} needs a value")),
    };
    if key == "allow-socket" {
        // Paths may contain spaces; they cannot contain `#`, which starts a comment.
        let p = PathBuf::from(value);
        if !p.is_absolute() {
            return Err(format!(
                "allow-socket needs an absolute path, not `{value}`"
            ));
        }
        conf.allow_sockets.push(Located::at(line, p));
        return Ok(());
    }
    if value.contains(char::is_whitespace) {
        return Err(format!("one value per line: `{value}`"));
    }
    match key {
        "allow-ip" => conf.allow.push(Located::at(line, parse_allow(value)?)),
        "deny-ip" => conf.deny.push(Located::at(line, parse_deny(value)?)),
        "host-port" => conf
            .host_ports
            .push(Located::at(line, parse_port_spec(value)?)),
        "publish-port" => conf
            .publish_ports
            .push(Located::at(line, parse_port_spec(value)?)),
        _ => return Err(format!("unknown key `{key}`")),
    }
    Ok(())
}

/// `ADDR`, `CIDR`, `ADDR:PORT[/P]`, `[V6ADDR]:PORT[/P]`, `[V6ADDR]`.
pub fn parse_allow(v: &str) -> Result<AllowEntry, String> {
    if let Some(rest) = v.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{v}`: missing `]` after the IPv6 address"))?;
        let ip: Ipv6Addr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IPv6 address"))?;
        let net = IpNet::V6(Ipv6Net::new(ip, 128).map_err(|e| e.to_string())?);
        if after.is_empty() {
            return Ok(AllowEntry { net, port: None });
        }
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("`{v}`: expected `:PORT` after `]`"))?;
        return Ok(AllowEntry {
            net,
            port: Some(parse_port_spec(port)?),
        });
    }
    // IPv4 with a port: exactly one ':'. Anything with two or more is IPv6 without brackets.
    if v.matches(':').count() == 1 {
        let (addr, port) = v.split_once(':').unwrap_or((v, ""));
        let net = parse_net(addr)?;
        if net.prefix_len() != net.max_prefix_len() {
            return Err(format!(
                "a port applies to a single address, not to the range {net}: \
                 write `allow-ip = {net}` for every port, or one address per line"
            ));
        }
        return Ok(AllowEntry {
            net,
            port: Some(parse_port_spec(port)?),
        });
    }
    Ok(AllowEntry {
        net: parse_net(v)?,
        port: None,
    })
}

/// `ADDR` or `CIDR`, never with a port; nothing inside loopback, which always stays allowed.
pub fn parse_deny(v: &str) -> Result<IpNet, String> {
    if v.starts_with('[') || v.matches(':').count() == 1 {
        return Err(format!(
            "deny-ip takes an address or CIDR, not a port: `{v}`"
        ));
    }
    let net = parse_net(v)?;
    let inside_loopback = match net {
        IpNet::V4(n) => n.prefix_len() >= 8 && n.addr().octets()[0] == 127,
        IpNet::V6(n) => n.prefix_len() == 128 && n.addr() == Ipv6Addr::LOCALHOST,
    };
    if inside_loopback {
        return Err(format!(
            "deny-ip {net} is loopback, the jail's own namespace, which always stays allowed"
        ));
    }
    Ok(net)
}

/// An address (a /32 or /128) or a CIDR without host bits.
pub fn parse_net(v: &str) -> Result<IpNet, String> {
    let (addr, prefix) = match v.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (v, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| {
        if addr.matches(':').count() >= 2 {
            format!(
                "`{v}` is not an IP address or CIDR (an IPv6 address with a port is written \
                 [ADDR]:PORT)"
            )
        } else {
            format!("`{v}` is not an IP address or CIDR")
        }
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match prefix {
        None => max,
        Some(p) => {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 3 {
                return Err(format!("`/{p}` is not a prefix length"));
            }
            let n: u8 = p
                .parse()
                .map_err(|_| format!("`/{p}` is not a prefix length"))?;
            if n > max {
                let fam = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
                return Err(format!(
                    "prefix length /{n} is too long for {fam} (at most /{max})"
                ));
            }
            n
        }
    };
    let net = IpNet::new(ip, len).map_err(|e| format!("`{v}`: {e}"))?;
    if net.network() != ip {
        return Err(format!(
            "{v} has host bits set: the network is {}/{len}",
            net.network()
        ));
    }
    Ok(net)
}

/// `PORT[/tcp|/udp]` with PORT in 1..=65535.
pub fn parse_port_spec(v: &str) -> Result<PortSpec, String> {
    let (port, proto) = match v.split_once('/') {
        Some((p, pr)) => (p, Some(pr)),
        None => (v, None),
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{port}` is not a port number"));
    }
    // Digits only, so a parse failure can only mean "too big".
    let n: u32 = port.parse().unwrap_or(u32::MAX);
    if n == 0 || n > 65535 {
        return Err(format!("port {port} is out of range 1-65535"));
    }
    let proto = match proto {
        None => None,
        Some(p) if p.eq_ignore_ascii_case("tcp") => Some(Proto::Tcp),
        Some(p) if p.eq_ignore_ascii_case("udp") => Some(Proto::Udp),
        Some(p) => return Err(format!("`{p}` is not a protocol: use tcp or udp")),
    };
    Ok(PortSpec {
        port: n as u16,
        proto,
    })
}
