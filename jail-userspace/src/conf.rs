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
//! | `pids-max` | the jail cgroup's `pids.max`: a number of processes and threads, or `max`; default [`DEFAULT_PIDS_MAX`] | no |
//! | `memory-max` | the jail cgroup's memory limit: bytes, with `K`, `M` or `G` (1024-based), at least 1M; or `max`; default: none | no |
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
const KEYS: [&str; 11] = [
    "egress-jail",
    "egress-backend",
    "allow-ip",
    "deny-ip",
    "host-port",
    "publish-port",
    "allow-socket",
    "pasta",
    "pids-max",
    "memory-max",
    "pass-env",
];

/// `pids.max` of the jail cgroup when the conf does not say: room for an agent, its language
/// servers and parallel builds (threads count), not for a fork bomb that would exhaust the
/// host's pid space (this kernel's default pid_max is 4 million; RLIMIT_NPROC is per user, and
/// the jail's command inherits root's).
pub const DEFAULT_PIDS_MAX: u32 = 4096;

/// `egress-backend`: what enforces the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// eBPF when the caller can load it (root with CAP_BPF or CAP_SYS_ADMIN in the initial user
    /// namespace), nftables otherwise. The default.
    Auto,
    /// The eBPF cgroup programs only; refused where they cannot load.
    Ebpf,
    /// nftables in the jail's own network namespace (the rootless mode), for root too.
    Nftables,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Ebpf => "ebpf",
            Backend::Nftables => "nftables",
        }
    }
}

/// A `pids-max` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PidsMax {
    Limit(u32),
    /// `max`: no limit.
    Unlimited,
}

/// A `memory-max` value: bytes, or `max` (no limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryMax {
    Bytes(u64),
    Unlimited,
}

impl fmt::Display for MemoryMax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryMax::Bytes(n) => write!(f, "{n}"),
            MemoryMax::Unlimited => f.write_str("max"),
        }
    }
}

impl fmt::Display for PidsMax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PidsMax::Limit(n) => write!(f, "{n}"),
            PidsMax::Unlimited => f.write_str("max"),
        }
    }
}

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
    pub egress_backend: Option<Located<Backend>>,
    pub allow: Vec<Located<AllowEntry>>,
    pub deny: Vec<Located<IpNet>>,
    pub host_ports: Vec<Located<PortSpec>>,
    pub publish_ports: Vec<Located<PortSpec>>,
    pub allow_sockets: Vec<Located<PathBuf>>,
    /// `pasta = PATH`: the pasta to run (as root, so it is trust-checked like this file).
    pub pasta: Option<Located<PathBuf>>,
    /// `pass-env = NAME` or `NAME_*`: variables that also reach a command root starts for
    /// another user (`--user`); the user's own launches pass their whole environment.
    pub pass_env: Vec<Located<String>>,
    pub pids_max: Option<Located<PidsMax>>,
    pub memory_max: Option<Located<MemoryMax>>,
}

impl Conf {
    /// The configuration of a missing file: everything default.
    pub fn empty(path: &Path) -> Conf {
        Conf {
            path: path.to_path_buf(),
            found: false,
            egress_jail: None,
            egress_backend: None,
            allow: Vec::new(),
            deny: Vec::new(),
            host_ports: Vec::new(),
            publish_ports: Vec::new(),
            allow_sockets: Vec::new(),
            pasta: None,
            pass_env: Vec::new(),
            pids_max: None,
            memory_max: None,
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
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
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

impl ConfError {
    /// This error as a reader may see it: `delegated` is the uid of a user who asked through
    /// sudo or pkexec (`Caller::delegated_uid`); one who cannot read the file is told which line
    /// is wrong, never what it says.
    pub fn shown_to(self, delegated: Option<u32>) -> ConfError {
        let Some(uid) = delegated else {
            return self;
        };
        match self {
            ConfError::Line { path, line, .. } if !readable_by(&path, uid) => ConfError::Line {
                msg: format!(
                    "invalid (what it says is not shown: uid {uid} cannot read this file; fix: \
                     ask an administrator to run `claude-jail policy`)"
                ),
                path,
                line,
            },
            other => other,
        }
    }
}

/// Whether `uid` can read `path` by its mode alone (owner or other bits; a group bit is not
/// trusted to include the caller).
fn readable_by(path: &Path, uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.mode() & 0o004 != 0 || (m.uid() == uid && m.mode() & 0o400 != 0))
        .unwrap_or(false)
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
///
/// With [`Trust::Strict`], the file is opened once and everything is judged on that descriptor:
/// its owner and mode from `fstat`, its directories from the path the kernel reports for it, and
/// its content read from it. Nothing can be swapped between the check and the read.
pub fn load(path: &Path, trust: Trust) -> Result<Conf, ConfError> {
    let io = |cause| ConfError::Io {
        path: path.to_path_buf(),
        cause,
    };
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Conf::empty(path)),
        Err(e) => return Err(io(e)),
    };
    if trust == Trust::Strict {
        check_trusted_file(path, &file)?;
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(io)?;
    parse(path, &bytes)
}

/// sshd-StrictModes-like check of a file that trusted code will use (the conf, the pasta binary
/// run as root): after resolving symlinks, the file and each directory above it are owned by
/// root and not writable by group or others; a root-owned sticky directory (like /tmp) is
/// accepted, since there only the owner of an entry can replace it. Returns the resolved path,
/// which is what the caller must use: a symlink on the way may be the user's to retarget.
pub fn check_trusted(path: &Path) -> Result<PathBuf, ConfError> {
    let file = std::fs::File::open(path).map_err(|cause| ConfError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    check_trusted_file(path, &file)
}

/// [`check_trusted`] on an open file: `path` is only for messages.
fn check_trusted_file(path: &Path, file: &std::fs::File) -> Result<PathBuf, ConfError> {
    use std::os::fd::AsRawFd;
    let untrusted = |msg: String| ConfError::Untrusted {
        path: path.to_path_buf(),
        msg,
    };
    let io = |p: &Path, cause| ConfError::Io {
        path: p.to_path_buf(),
        cause,
    };
    let meta = file.metadata().map_err(|e| io(path, e))?;
    // The path of the open file, as the kernel knows it (symlinks resolved).
    let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| io(path, e))?;
    let shown = if real == path {
        String::new()
    } else {
        format!(" (resolved to {})", real.display())
    };
    if !meta.is_file() {
        return Err(untrusted(format!("not a regular file{shown}")));
    }
    let fix_file = format!(
        "fix: chown root:root {f} && chmod go-w {f}",
        f = real.display()
    );
    if !trusted_owner(meta.uid()) {
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
        let m = std::fs::metadata(dir).map_err(|e| io(dir, e))?;
        let mode = m.permissions().mode();
        let root_sticky = trusted_owner(m.uid()) && mode & 0o1000 != 0;
        if !trusted_owner(m.uid()) || (mode & 0o022 != 0 && !root_sticky) {
            return Err(untrusted(format!(
                "directory {d} is owned by uid {} with mode {:o}{shown}: someone other than root \
                 could replace the file; fix: chown root:root {d} && chmod go-w {d}, or move the \
                 file to a directory only root can write",
                m.uid(),
                mode & 0o7777,
                d = dir.display(),
            )));
        }
    }
    Ok(real)
}

/// Whether a file of `uid` is out of the jailed agent's reach as the trust checks need: root's;
/// or, in a user namespace (a rootless container), the kernel's overflow uid, which is what
/// stat shows for an owner the namespace does not map (the host's root-owned files bound into
/// the container): no process in the namespace can own such a file.
fn trusted_owner(uid: u32) -> bool {
    if uid == 0 {
        return true;
    }
    let overflow = std::fs::read_to_string("/proc/sys/kernel/overflowuid")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    let in_userns = std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
        .unwrap_or(false);
    in_userns && overflow == Some(uid)
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
    if key == "egress-backend" {
        let b = match value {
            "auto" => Backend::Auto,
            "ebpf" => Backend::Ebpf,
            "nftables" => Backend::Nftables,
            v => {
                return Err(format!(
                    "egress-backend must be auto, ebpf or nftables, not `{v}`"
                ))
            }
        };
        if let Some(prev) = &conf.egress_backend {
            return Err(format!(
                "egress-backend is already set on line {}",
                prev.line
            ));
        }
        conf.egress_backend = Some(Located::at(line, b));
        return Ok(());
    }
    if key == "pass-env" {
        let name = value.strip_suffix('*').unwrap_or(value);
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "pass-env takes a variable name or a prefix ending in `*` (EPICS_*), not `{value}`"
            ));
        }
        conf.pass_env.push(Located::at(line, value.to_string()));
        return Ok(());
    }
    if key == "pasta" {
        let p = PathBuf::from(value);
        if !p.is_absolute() {
            return Err(format!("pasta needs an absolute path, not `{value}`"));
        }
        if let Some(prev) = &conf.pasta {
            return Err(format!("pasta is already set on line {}", prev.line));
        }
        conf.pasta = Some(Located::at(line, p));
        return Ok(());
    }
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
    if key == "pids-max" {
        if let Some(prev) = &conf.pids_max {
            return Err(format!("pids-max is already set on line {}", prev.line));
        }
        let v = match value {
            "max" => PidsMax::Unlimited,
            n => match n.parse::<u32>() {
                Ok(n) if n >= 1 => PidsMax::Limit(n),
                _ => {
                    return Err(format!(
                        "pids-max must be a number of processes (1 or more) or `max`, not `{n}`"
                    ))
                }
            },
        };
        conf.pids_max = Some(Located::at(line, v));
        return Ok(());
    }
    if key == "memory-max" {
        if let Some(prev) = &conf.memory_max {
            return Err(format!("memory-max is already set on line {}", prev.line));
        }
        let bad = || {
            format!("memory-max must be a size of at least 1M (bytes, or with K, M or G) or `max`, not `{value}`")
        };
        let v = if value == "max" {
            MemoryMax::Unlimited
        } else {
            let (num, unit) = match value.char_indices().last() {
                Some((i, c)) if c.is_ascii_alphabetic() => (&value[..i], c),
                _ => (value, 'B'),
            };
            let shift = match unit.to_ascii_uppercase() {
                'B' => 0,
                'K' => 10,
                'M' => 20,
                'G' => 30,
                _ => return Err(bad()),
            };
            let n: u64 = num.parse().map_err(|_| bad())?;
            let bytes = n.checked_mul(1 << shift).ok_or_else(bad)?;
            if bytes < 1 << 20 {
                return Err(bad());
            }
            MemoryMax::Bytes(bytes)
        };
        conf.memory_max = Some(Located::at(line, v));
        return Ok(());
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
    // IPv4-mapped, IPv4-compatible and NAT64 forms are judged as the IPv4 address they carry.
    let embedded = crate::addr::embedded_ipv4(net);
    let as_v4 = match net {
        IpNet::V4(n) => Some(n),
        IpNet::V6(_) => embedded,
    };
    let inside_loopback = as_v4.is_some_and(|n| n.prefix_len() >= 8 && n.addr().octets()[0] == 127)
        || matches!(net, IpNet::V6(n) if n.prefix_len() == 128 && n.addr() == Ipv6Addr::LOCALHOST);
    if inside_loopback {
        return Err(format!(
            "deny-ip {net} is loopback, the jail's own namespace, which always stays allowed"
        ));
    }
    if let Some(n) = embedded.filter(|n| n.prefix_len() < 8) {
        return Err(format!(
            "deny-ip {net} carries IPv4 addresses and is judged as IPv4 {n}: it would deny \
             every IPv4 destination in {n}, not only this IPv6 form. Write `deny-ip = {n}` if \
             that is what you mean; an IPv4-carrying IPv6 form is accepted from /104 (IPv4 /8)"
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
    let not_an_address = || {
        if addr.matches(':').count() >= 2 {
            format!(
                "`{v}` is not an IP address or CIDR (an IPv6 address with a port is written \
                 [ADDR]:PORT)"
            )
        } else {
            format!("`{v}` is not an IP address or CIDR")
        }
    };
    let ip: IpAddr = addr.parse().map_err(|_| not_an_address())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match prefix {
        None => max,
        Some(p) => {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 3 {
                // `fd00::5:443/tcp`: a port written without brackets.
                if ip.is_ipv6() && !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err(not_an_address());
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::Ipv4Net;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn p(text: &str) -> Result<Conf, ConfError> {
        parse(Path::new("/etc/claude-sandbox.conf"), text.as_bytes())
    }

    fn err(text: &str) -> String {
        match p(text) {
            Ok(c) => panic!("`{text}` must be refused, parsed as {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn allow(v: &str) -> AllowEntry {
        parse_allow(v).unwrap_or_else(|e| panic!("`{v}` must be accepted: {e}"))
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ps(port: u16, proto: Option<Proto>) -> Option<PortSpec> {
        Some(PortSpec { port, proto })
    }

    #[test]
    fn original_project_conf_means_the_same() {
        let text = "# claude-sandbox configuration\negress-jail = 0\n\
                    allow-ip = 172.23.142.119   # internal GitLab forge\nallow-ip = 10.20.0.8\n";
        let c = p(text).unwrap();
        let sw = jail_enabled(&c, None).unwrap();
        assert!(!sw.enabled, "egress-jail = 0 turns the jail off");
        assert_eq!(
            sw.source, "/etc/claude-sandbox.conf:2",
            "the switch names its line"
        );
        let allows: Vec<_> = c.allow.iter().map(|a| (a.line, a.value)).collect();
        assert_eq!(
            allows,
            vec![
                (
                    3,
                    AllowEntry {
                        net: net("172.23.142.119/32"),
                        port: None
                    }
                ),
                (
                    4,
                    AllowEntry {
                        net: net("10.20.0.8/32"),
                        port: None
                    }
                ),
            ],
            "bare IPs are /32 allows on every port"
        );
        assert!(c.deny.is_empty() && c.host_ports.is_empty() && c.allow_sockets.is_empty());
    }

    #[test]
    fn every_accepted_allow_form() {
        use Proto::*;
        let cases: &[(&str, &str, Option<PortSpec>)] = &[
            ("172.23.1.3", "172.23.1.3/32", None),
            ("fd00::5", "fd00::5/128", None),
            ("10.1.0.0/24", "10.1.0.0/24", None),
            ("fd00:1::/64", "fd00:1::/64", None),
            ("0.0.0.0/0", "0.0.0.0/0", None),
            ("::ffff:10.0.0.5", "::ffff:10.0.0.5/128", None),
            ("[fd00::5]", "fd00::5/128", None),
            ("172.23.1.3:5064", "172.23.1.3/32", ps(5064, None)),
            ("172.23.1.3:5064/udp", "172.23.1.3/32", ps(5064, Some(Udp))),
            ("172.23.1.3:5064/tcp", "172.23.1.3/32", ps(5064, Some(Tcp))),
            ("172.23.1.3:5064/TCP", "172.23.1.3/32", ps(5064, Some(Tcp))),
            ("172.23.1.3/32:1", "172.23.1.3/32", ps(1, None)),
            ("[fd00::5]:443/tcp", "fd00::5/128", ps(443, Some(Tcp))),
            ("[fd00::5]:65535", "fd00::5/128", ps(65535, None)),
            // Without brackets, `::1:80` is the address ::1:80, not ::1 port 80.
            ("::1:80", "::1:80/128", None),
        ];
        for (v, n, port) in cases {
            let a = allow(v);
            assert_eq!(
                a,
                AllowEntry {
                    net: net(n),
                    port: *port
                },
                "allow-ip = {v}"
            );
            // What Display prints parses back to the same entry.
            assert_eq!(allow(&a.to_string()), a, "round trip of {v}");
        }
    }

    #[test]
    fn every_rejected_form_has_its_message() {
        let f = "/etc/claude-sandbox.conf";
        let cases: &[(&str, String)] = &[
            ("frobnicate = 1", format!("{f}:1: unknown key `frobnicate` (known keys: egress-jail, egress-backend, allow-ip, deny-ip, host-port, publish-port, allow-socket, pasta, pids-max, memory-max, pass-env)")),
            ("allow-ip", format!("{f}:1: allow-ip needs a value")),
            ("allow-ip =", format!("{f}:1: allow-ip needs a value")),
            ("= 1", format!("{f}:1: expected `key = value`, found `= 1`")),
            ("allow-ip 10.0.0.1", format!("{f}:1: expected `key = value`, found `allow-ip 10.0.0.1`")),
            ("egress-jail = yes", format!("{f}:1: egress-jail must be 0 or 1, not `yes`")),
            ("pids-max = 0", format!("{f}:1: pids-max must be a number of processes (1 or more) or `max`, not `0`")),
            ("pids-max = -5", format!("{f}:1: pids-max must be a number of processes (1 or more) or `max`, not `-5`")),
            ("pids-max = 10\npids-max = max", format!("{f}:2: pids-max is already set on line 1")),
            ("memory-max = 512", format!("{f}:1: memory-max must be a size of at least 1M (bytes, or with K, M or G) or `max`, not `512`")),
            ("memory-max = 2T", format!("{f}:1: memory-max must be a size of at least 1M (bytes, or with K, M or G) or `max`, not `2T`")),
            ("egress-jail =", format!("{f}:1: egress-jail must be 0 or 1, not ``")),
            ("egress-jail = 1\negress-jail = 1", format!("{f}:2: egress-jail is already set on line 1")),
            ("allow-ip = 10.1.0.5/24", format!("{f}:1: 10.1.0.5/24 has host bits set: the network is 10.1.0.0/24")),
            ("allow-ip = fd00::1/64", format!("{f}:1: fd00::1/64 has host bits set: the network is fd00::/64")),
            ("allow-ip = 10.0.0.0/33", format!("{f}:1: prefix length /33 is too long for IPv4 (at most /32)")),
            ("allow-ip = fd00::/129", format!("{f}:1: prefix length /129 is too long for IPv6 (at most /128)")),
            ("allow-ip = 10.0.0.0/", format!("{f}:1: `/` is not a prefix length")),
            ("allow-ip = 10.0.0.0/+8", format!("{f}:1: `/+8` is not a prefix length")),
            ("allow-ip = 10.0.0.0/0008", format!("{f}:1: `/0008` is not a prefix length")),
            ("allow-ip = 10.0.0.256", format!("{f}:1: `10.0.0.256` is not an IP address or CIDR")),
            ("allow-ip = 010.0.0.1", format!("{f}:1: `010.0.0.1` is not an IP address or CIDR")),
            ("allow-ip = gitlab.example", format!("{f}:1: `gitlab.example` is not an IP address or CIDR")),
            ("allow-ip = fe80::1%eth0", format!("{f}:1: `fe80::1%eth0` is not an IP address or CIDR (an IPv6 address with a port is written [ADDR]:PORT)")),
            ("allow-ip = fd00::5:443/tcp", format!("{f}:1: `fd00::5:443/tcp` is not an IP address or CIDR (an IPv6 address with a port is written [ADDR]:PORT)")),
            ("allow-ip = 10.0.0.0/24:80", format!("{f}:1: a port applies to a single address, not to the range 10.0.0.0/24: write `allow-ip = 10.0.0.0/24` for every port, or one address per line")),
            ("allow-ip = 10.0.0.1:0", format!("{f}:1: port 0 is out of range 1-65535")),
            ("allow-ip = 10.0.0.1:65536", format!("{f}:1: port 65536 is out of range 1-65535")),
            ("allow-ip = 10.0.0.1:99999999999999999999", format!("{f}:1: port 99999999999999999999 is out of range 1-65535")),
            ("allow-ip = 10.0.0.1:", format!("{f}:1: `` is not a port number")),
            ("allow-ip = 10.0.0.1:http", format!("{f}:1: `http` is not a port number")),
            ("allow-ip = 10.0.0.1:-1", format!("{f}:1: `-1` is not a port number")),
            ("allow-ip = 10.0.0.1:53/sctp", format!("{f}:1: `sctp` is not a protocol: use tcp or udp")),
            ("allow-ip = [fd00::5", format!("{f}:1: `[fd00::5`: missing `]` after the IPv6 address")),
            ("allow-ip = [10.0.0.1]:80", format!("{f}:1: `10.0.0.1` is not an IPv6 address")),
            ("allow-ip = [fd00::5]443", format!("{f}:1: `[fd00::5]443`: expected `:PORT` after `]`")),
            ("allow-ip = 10.0.0.1 10.0.0.2", format!("{f}:1: one value per line: `10.0.0.1 10.0.0.2`")),
            ("deny-ip = 10.0.0.1:80", format!("{f}:1: deny-ip takes an address or CIDR, not a port: `10.0.0.1:80`")),
            ("deny-ip = [fd00::1]:80", format!("{f}:1: deny-ip takes an address or CIDR, not a port: `[fd00::1]:80`")),
            ("deny-ip = 127.0.0.0/8", format!("{f}:1: deny-ip 127.0.0.0/8 is loopback, the jail's own namespace, which always stays allowed")),
            ("deny-ip = ::1", format!("{f}:1: deny-ip ::1/128 is loopback, the jail's own namespace, which always stays allowed")),
            ("deny-ip = 198.51.100.7/24", format!("{f}:1: 198.51.100.7/24 has host bits set: the network is 198.51.100.0/24")),
            ("host-port = 0", format!("{f}:1: port 0 is out of range 1-65535")),
            ("host-port = 70000/tcp", format!("{f}:1: port 70000 is out of range 1-65535")),
            ("publish-port = 8080/icmp", format!("{f}:1: `icmp` is not a protocol: use tcp or udp")),
            ("publish-port", format!("{f}:1: publish-port needs a value")),
            ("allow-socket = run/x.sock", format!("{f}:1: allow-socket needs an absolute path, not `run/x.sock`")),
            ("pasta = pasta", format!("{f}:1: pasta needs an absolute path, not `pasta`")),
            ("pass-env = *", format!("{f}:1: pass-env takes a variable name or a prefix ending in `*` (EPICS_*), not `*`")),
            ("pass-env = A-B", format!("{f}:1: pass-env takes a variable name or a prefix ending in `*` (EPICS_*), not `A-B`")),
            ("pasta = /a\npasta = /b", format!("{f}:2: pasta is already set on line 1")),
            ("# ok\n\nallow-ip = nope", format!("{f}:3: `nope` is not an IP address or CIDR")),
        ];
        for (text, want) in cases {
            assert_eq!(&err(text), want, "conf text {text:?}");
        }
    }

    #[test]
    fn nul_bytes_and_bad_utf8_are_refused_with_their_line() {
        let e = parse(Path::new("c"), b"egress-jail = 1\nallow-ip = 10.0.0.1\0\n").unwrap_err();
        assert_eq!(e.to_string(), "c:2: the line contains a NUL byte");
        let e = parse(Path::new("c"), b"\n\n# \xff\xfe\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "c:3: the line is not valid UTF-8",
            "even inside a comment"
        );
    }

    #[test]
    fn other_keys_are_stored_with_their_lines() {
        let c = p(
            "host-port = 8765\nhost-port = 53/udp\npublish-port = 3000/tcp\n\
                   deny-ip = 203.0.113.0/24\ndeny-ip = 2001:db8::/32\ndeny-ip = 198.51.100.7\n\
                   allow-socket = /run/user/1000/my socket.sock\n",
        )
        .unwrap();
        let hp: Vec<_> = c.host_ports.iter().map(|l| (l.line, l.value)).collect();
        assert_eq!(
            hp,
            vec![
                (
                    1,
                    PortSpec {
                        port: 8765,
                        proto: None
                    }
                ),
                (
                    2,
                    PortSpec {
                        port: 53,
                        proto: Some(Proto::Udp)
                    }
                )
            ]
        );
        assert_eq!(
            c.publish_ports[0].value,
            PortSpec {
                port: 3000,
                proto: Some(Proto::Tcp)
            }
        );
        let deny: Vec<_> = c.deny.iter().map(|l| (l.line, l.value)).collect();
        assert_eq!(
            deny,
            vec![
                (4, net("203.0.113.0/24")),
                (5, net("2001:db8::/32")),
                (6, net("198.51.100.7/32"))
            ]
        );
        assert_eq!(
            c.allow_sockets[0],
            Located::at(7, PathBuf::from("/run/user/1000/my socket.sock")),
            "a socket path may contain spaces"
        );
    }

    #[test]
    fn resource_limits_parse() {
        let c = parse(Path::new("c"), b"pids-max = 64\nmemory-max = 256M\n").unwrap();
        assert_eq!(c.pids_max, Some(Located::at(1, PidsMax::Limit(64))));
        assert_eq!(
            c.memory_max,
            Some(Located::at(2, MemoryMax::Bytes(256 << 20)))
        );
        let c = parse(Path::new("c"), b"pids-max = max\nmemory-max = 2g\n").unwrap();
        assert_eq!(c.pids_max.unwrap().value, PidsMax::Unlimited);
        assert_eq!(c.memory_max.unwrap().value, MemoryMax::Bytes(2 << 30));
        assert_eq!(MemoryMax::Unlimited.to_string(), "max");
    }

    #[test]
    fn the_backend_is_one_of_three_and_set_once() {
        for (v, b) in [
            ("auto", Backend::Auto),
            ("ebpf", Backend::Ebpf),
            ("nftables", Backend::Nftables),
        ] {
            let c = parse(Path::new("c"), format!("egress-backend = {v}\n").as_bytes()).unwrap();
            assert_eq!(c.egress_backend, Some(Located::at(1, b)));
        }
        let e = parse(Path::new("c"), b"egress-backend = iptables\n").unwrap_err();
        assert!(e.to_string().contains("auto, ebpf or nftables"), "{e}");
        let e = parse(
            Path::new("c"),
            b"egress-backend = ebpf\negress-backend = auto\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("already set on line 1"), "{e}");
    }

    #[test]
    fn comments_blank_lines_whitespace_and_crlf() {
        let text = "# header\r\n\r\n   \t\r\n  egress-jail   # bare key, comment\r\n\
                    allow-ip=10.0.0.1#no space before the comment\r\n\
                    \tallow-ip =  fd00::5  \r\n# allow-ip = 1.1.1.1\r\n";
        let c = p(text).unwrap();
        assert_eq!(
            c.egress_jail,
            Some(Located::at(4, true)),
            "bare egress-jail means on"
        );
        let allows: Vec<_> = c.allow.iter().map(|a| (a.line, a.value.net)).collect();
        assert_eq!(
            allows,
            vec![(5, net("10.0.0.1/32")), (6, net("fd00::5/128"))]
        );
        assert_eq!(
            p("").unwrap().allow.len(),
            0,
            "an empty file is all defaults"
        );
        assert_eq!(p("\r").unwrap().egress_jail, None);
    }

    #[test]
    fn env_wins_over_file_and_file_over_default() {
        let on = p("egress-jail = 1").unwrap();
        let off = p("egress-jail = 0").unwrap();
        let none = p("").unwrap();
        let sw = |c: &Conf, e: Option<&str>| jail_enabled(c, e.map(OsStr::new)).unwrap();
        assert_eq!(
            sw(&on, Some("0")),
            JailSwitch {
                enabled: false,
                source: "CLAUDE_SANDBOX_EGRESS_JAIL=0".into()
            },
            "the environment wins over egress-jail = 1"
        );
        assert_eq!(
            sw(&off, Some("1")),
            JailSwitch {
                enabled: true,
                source: "CLAUDE_SANDBOX_EGRESS_JAIL=1".into()
            },
            "the environment wins over egress-jail = 0"
        );
        assert_eq!(sw(&off, None).source, "/etc/claude-sandbox.conf:1");
        assert!(!sw(&off, None).enabled);
        assert_eq!(
            sw(&none, None),
            JailSwitch {
                enabled: true,
                source: "default".into()
            }
        );
        for bad in ["", "yes", "true", " 1", "2"] {
            let e = jail_enabled(&none, Some(OsStr::new(bad))).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("CLAUDE_SANDBOX_EGRESS_JAIL={bad}: must be 0 or 1"),
                "an unknown value is an error, not a default"
            );
        }
    }

    #[test]
    fn conf_path_precedence() {
        let env = Some(OsStr::new("/srv/env.conf"));
        assert_eq!(
            conf_path(Some("/x.conf".into()), env),
            PathBuf::from("/x.conf"),
            "--config wins"
        );
        assert_eq!(
            conf_path(None, env),
            PathBuf::from("/srv/env.conf"),
            "then the environment"
        );
        assert_eq!(
            conf_path(None, Some(OsStr::new(""))),
            PathBuf::from(DEFAULT_PATH),
            "empty = unset"
        );
        assert_eq!(conf_path(None, None), PathBuf::from(DEFAULT_PATH));
    }

    #[test]
    fn ten_thousand_lines_parse() {
        let mut text = String::from("egress-jail = 1\n");
        for i in 0..9_999u32 {
            let [_, b, c, d] = (i + 1).to_be_bytes();
            match i % 4 {
                0 => text.push_str(&format!("allow-ip = 10.{b}.{c}.{d}\n")),
                1 => text.push_str(&format!(
                    "allow-ip = 10.{b}.{c}.{d}:{}/udp # c\n",
                    i % 60000 + 1
                )),
                2 => text.push_str(&format!("deny-ip = 203.{b}.{c}.0/24\n")),
                _ => text.push_str(&format!("allow-ip = [fd00::{i:x}]:443\n")),
            }
        }
        let c = p(&text).unwrap();
        assert_eq!(
            c.allow.len() + c.deny.len() + 1,
            10_000,
            "every line is kept"
        );
        let last = c
            .deny
            .last()
            .map(|d| d.line)
            .max(c.allow.last().map(|a| a.line));
        assert_eq!(last, Some(10_000), "the last line is read too");
    }

    /// A temporary directory of the test's own under /tmp, removed on drop.
    struct TmpDir(PathBuf);
    impl TmpDir {
        fn new(tag: &str) -> TmpDir {
            let d =
                std::env::temp_dir().join(format!("claude-jail-conf-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
            TmpDir(d)
        }
    }
    impl Drop for TmpDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn load_missing_file_is_defaults() {
        let d = TmpDir::new("missing");
        let c = load(&d.0.join("nope.conf"), Trust::Strict).unwrap();
        assert!(!c.found && c.allow.is_empty() && c.egress_jail.is_none());
    }

    #[test]
    fn strict_trust_checks_owner_mode_and_directories() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (chown)");
            return;
        }
        let tmp = std::env::temp_dir();
        let tm = std::fs::metadata(&tmp).unwrap();
        if tm.uid() != 0
            || tm.permissions().mode() & 0o1000 == 0 && tm.permissions().mode() & 0o022 != 0
        {
            eprintln!(
                "skipped: {} is not a root-owned safe directory",
                tmp.display()
            );
            return;
        }
        let d = TmpDir::new("trust");
        let f = d.0.join("c.conf");
        std::fs::write(&f, "allow-ip = 10.0.0.1\n").unwrap();
        let chmod =
            |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        chmod(&f, 0o644);
        let c =
            load(&f, Trust::Strict).expect("root-owned 644 file in root-owned 755 dir is trusted");
        assert_eq!(c.allow.len(), 1);

        chmod(&f, 0o664);
        let e = load(&f, Trust::Strict).unwrap_err().to_string();
        assert!(
            e.contains("writable by group or others")
                && e.contains(&format!(
                    "chown root:root {f} && chmod go-w {f}",
                    f = f.display()
                )),
            "{e}"
        );
        assert!(load(&f, Trust::Any).is_ok(), "policy may read any file");

        chmod(&f, 0o644);
        std::os::unix::fs::chown(&f, Some(1000), None).unwrap();
        let e = load(&f, Trust::Strict).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "{}: not trusted: owned by uid 1000, not root",
                f.display()
            )),
            "{e}"
        );
        std::os::unix::fs::chown(&f, Some(0), None).unwrap();

        chmod(&d.0, 0o777);
        let e = load(&f, Trust::Strict).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "directory {} is owned by uid 0 with mode 777",
                d.0.display()
            )),
            "{e}"
        );
        chmod(&d.0, 0o1777);
        assert!(
            load(&f, Trust::Strict).is_ok(),
            "a root-owned sticky directory is safe"
        );
        chmod(&d.0, 0o755);

        // A symlink is judged by its target, and the caller gets the target: a link the user
        // may retarget later is never used again.
        let good = d.0.join("good-link.conf");
        std::os::unix::fs::symlink(&f, &good).unwrap();
        assert_eq!(check_trusted(&good).unwrap(), f);
        let mine = d.0.join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::os::unix::fs::chown(&mine, Some(1000), None).unwrap();
        let theirs = mine.join("c.conf");
        std::fs::write(&theirs, "allow-ip = 10.0.0.2\n").unwrap();
        std::os::unix::fs::symlink(&theirs, d.0.join("link2.conf")).unwrap();
        let e = check_trusted(&d.0.join("link2.conf"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("resolved to {}", theirs.display())),
            "{e}"
        );

        // A symlink is judged by what it points to.
        let bad = TmpDir::new("trust-bad");
        chmod(&bad.0, 0o777);
        let target = bad.0.join("real.conf");
        std::fs::write(&target, "").unwrap();
        chmod(&target, 0o644);
        let link = d.0.join("link.conf");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = load(&link, Trust::Strict).unwrap_err().to_string();
        assert!(
            e.contains("resolved to") && e.contains(&bad.0.display().to_string()),
            "{e}"
        );
    }

    fn line_strategy() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("egress-jail"),
            Just("egress-backend"),
            Just("allow-ip"),
            Just("deny-ip"),
            Just("host-port"),
            Just("publish-port"),
            Just("allow-socket"),
            Just("pasta"),
            Just("pass-env"),
            Just("pids-max"),
            Just("memory-max"),
            Just("x"),
            Just("")
        ];
        let value = "[0-9a-fA-F:./\\[\\]#= \\t/a-z%-]{0,40}";
        (key, prop::bool::ANY, value).prop_map(|(k, eq, v)| {
            if eq {
                format!("{k} = {v}")
            } else {
                format!("{k}{v}")
            }
        })
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(Path::new("f"), &bytes);
        }

        #[test]
        fn random_lines_never_panic(lines in prop::collection::vec(line_strategy(), 0..20), crlf in any::<bool>()) {
            let text = lines.join(if crlf { "\r\n" } else { "\n" });
            match parse(Path::new("f"), text.as_bytes()) {
                Ok(_) => {}
                Err(ConfError::Line { line, .. }) => prop_assert!(line >= 1 && line <= lines.len().max(1)),
                Err(e) => prop_assert!(false, "only line errors come from parse: {e}"),
            }
        }

        #[test]
        fn ipv4_forms_round_trip(a in any::<u32>(), len in 0u8..=32, port in 1u16.., proto in 0u8..3) {
            let n = Ipv4Net::new(Ipv4Addr::from(a), len).unwrap().trunc();
            let c = p(&format!("allow-ip = {n}")).unwrap();
            prop_assert_eq!(c.allow[0].value, AllowEntry { net: IpNet::V4(n), port: None });
            let pr = [None, Some(Proto::Tcp), Some(Proto::Udp)][proto as usize];
            let spec = PortSpec { port, proto: pr };
            let c = p(&format!("allow-ip = {}:{spec}", Ipv4Addr::from(a))).unwrap();
            prop_assert_eq!(c.allow[0].value, AllowEntry { net: net(&format!("{}/32", Ipv4Addr::from(a))), port: Some(spec) });
        }

        #[test]
        fn ipv6_forms_round_trip(a in any::<u128>(), len in 0u8..=128, port in 1u16..) {
            let n = Ipv6Net::new(Ipv6Addr::from(a), len).unwrap().trunc();
            let c = p(&format!("allow-ip = {n} # c")).unwrap();
            prop_assert_eq!(c.allow[0].value, AllowEntry { net: IpNet::V6(n), port: None });
            let c = p(&format!("allow-ip = [{}]:{port}/udp", Ipv6Addr::from(a))).unwrap();
            prop_assert_eq!(c.allow[0].value.port, Some(PortSpec { port, proto: Some(Proto::Udp) }));
        }

        #[test]
        fn host_bits_are_always_refused(a in any::<u32>(), len in 0u8..32) {
            let n = Ipv4Net::new(Ipv4Addr::from(a), len).unwrap();
            prop_assume!(n.trunc().addr() != n.addr());
            let e = err(&format!("deny-ip = {n}"));
            prop_assert!(e.ends_with(&format!("has host bits set: the network is {}", n.trunc())), "{}", e);
        }
    }
}
