//! The fake world: namespaces "host" and "inet" joined by a veth pair, fake hosts with servers,
//! dnsmasq, the host's loopback services and a host mount namespace with its own resolv.conf.
//!
//! ```text
//!  host netns (stands in for the real machine)           inet netns (internet + LAN)
//!  lo: 127.0.0.1 (:8080 :8081 tcp, :8080 udp)           lo: 203.0.113.10 public, 10.0.0.5,
//!      198.51.100.7/32 (second host address)                172.16.0.5, 192.168.1.5, 100.64.0.5,
//!  uplink0: 192.168.1.100/24 ---- veth ---- lan0: 192.168.1.1/24   169.254.169.254,
//!     default via 192.168.1.1                                10.0.0.53 (dnsmasq)
//!  [ipv6] 2001:db8:1::100/64, default via 2001:db8:1::1  [ipv6] 2001:db8:ff::10, fd00::5
//!  mount ns (holder process): /etc/resolv.conf -> nameserver 10.0.0.53
//! ```
//!
//! The fake hosts all live in inet, so no forwarding is needed anywhere.

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::capture::Capture;
use crate::dns;
use crate::netns::{command_in, unique_prefix, Netns};
use crate::servers::{Behaviour, Hit, Listener, Servers, Target};

/// The public server (TCP 22/80/5064 greet+echo, TCP 7 half-close echo, UDP 5064/9999).
pub const PUBLIC_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The public server's IPv6 address (when the world has IPv6).
pub const PUBLIC_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x10);
/// One host in every denied IPv4 range: 10/8, 172.16/12, 192.168/16, 100.64/10, 169.254/16.
pub const LAN_V4: [Ipv4Addr; 5] = [
    Ipv4Addr::new(10, 0, 0, 5),
    Ipv4Addr::new(172, 16, 0, 5),
    Ipv4Addr::new(192, 168, 1, 5),
    Ipv4Addr::new(100, 64, 0, 5),
    METADATA_V4,
];
/// The cloud metadata address.
pub const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// A ULA host (when the world has IPv6).
pub const LAN_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5);
/// dnsmasq, on a private address (as a real host's resolver often is).
pub const DNS_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 53);
/// The host's uplink address and prefix length.
pub const HOST_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 100);
/// The gateway (inet's side of the veth).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
/// A second address of the host, on its loopback interface.
pub const HOST_EXTRA_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// The host's uplink IPv6 address (/64).
pub const HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x100);
/// The IPv6 gateway.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// TCP ports every fake host serves (greeting + echo).
pub const TCP_PORTS: [u16; 3] = [22, 80, 5064];
/// UDP ports every fake host serves (greeting + echo in one datagram).
pub const UDP_PORTS: [u16; 2] = [5064, 9999];
/// The public server's half-close echo port.
pub const ECHO_PORT: u16 = 7;
/// TCP ports on the host's 127.0.0.1 (and ::1 with IPv6).
pub const HOST_LOOPBACK_TCP_PORTS: [u16; 2] = [8080, 8081];
/// UDP port on the host's 127.0.0.1 (and ::1 with IPv6).
pub const HOST_LOOPBACK_UDP_PORT: u16 = 8080;
/// TCP port served on the host's own non-loopback addresses (192.168.1.100, 198.51.100.7).
pub const HOST_ADDR_TCP_PORT: u16 = 8080;
/// The test domain dnsmasq is authoritative for (other names in it: NXDOMAIN).
pub const TEST_DOMAIN: &str = "test.example";
/// Number of A records of [`BIG_NAME`] (their answer is over 512 bytes: truncated over UDP).
pub const BIG_RECORDS: u8 = 40;
/// A name with [`BIG_RECORDS`] A records, 203.0.113.100 onwards.
pub const BIG_NAME: &str = "big.test.example";
/// The interface names of the veth pair.
pub const HOST_UPLINK: &str = "uplink0";
pub const INET_UPLINK: &str = "lan0";
/// The host's resolv.conf (bind-mounted over /etc/resolv.conf in the host mount namespace).
pub const HOST_RESOLV_CONF: &str =
    "# claude-jail fake world\nnameserver 10.0.0.53\nsearch test.example\noptions ndots:1 timeout:2 attempts:2\n";

/// Names dnsmasq answers: (name, A, AAAA when the world has IPv6). A name with neither (the
/// ULA name in a world without IPv6) is NXDOMAIN.
pub const DNS_NAMES: [(&str, Option<Ipv4Addr>, Option<Ipv6Addr>); 7] = [
    ("public.test.example", Some(PUBLIC_V4), Some(PUBLIC_V6)),
    ("lan.test.example", Some(LAN_V4[0]), Some(LAN_V6)),
    ("lan172.test.example", Some(LAN_V4[1]), None),
    ("lan192.test.example", Some(LAN_V4[2]), None),
    ("cgnat.test.example", Some(LAN_V4[3]), None),
    ("metadata.test.example", Some(METADATA_V4), None),
    ("ula.test.example", None, Some(LAN_V6)),
];

/// The [`BIG_NAME`] addresses.
pub fn big_addrs() -> Vec<Ipv4Addr> {
    (0..BIG_RECORDS)
        .map(|i| Ipv4Addr::new(203, 0, 113, 100 + i))
        .collect()
}

/// How long to wait for dnsmasq and the holder to come up.
const STARTUP: Duration = Duration::from_secs(10);

/// Options for [`FakeWorld`].
#[derive(Debug, Clone, Default)]
pub struct FakeWorldBuilder {
    ipv6: bool,
}

impl FakeWorldBuilder {
    /// Adds IPv6: host 2001:db8:1::100/64, public 2001:db8:ff::10, ULA fd00::5, AAAA records,
    /// servers on ::1 of the host.
    pub fn ipv6(mut self, on: bool) -> Self {
        self.ipv6 = on;
        self
    }

    /// Builds the world (needs root). Everything built so far is torn down on error.
    pub fn build(self) -> Result<FakeWorld> {
        let prefix = unique_prefix();
        let dir = std::env::temp_dir().join(&prefix);
        fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let mut w = FakeWorld {
            ipv6: self.ipv6,
            dir,
            prefix: prefix.clone(),
            servers: None,
            dnsmasq: None,
            holder: None,
            extra: Vec::new(),
            inet: None,
            host: None,
            torn_down: false,
        };
        w.host = Some(Netns::create(&format!("{prefix}-host"))?);
        w.inet = Some(Netns::create(&format!("{prefix}-inet"))?);
        w.configure_network()?;
        w.start_servers()?;
        w.start_holder()?;
        w.start_dnsmasq()?;
        Ok(w)
    }
}

/// A fake world; see the module documentation for its layout. Dropping it tears everything
/// down (servers, dnsmasq, the mount-namespace holder, namespaces, the temporary directory).
pub struct FakeWorld {
    ipv6: bool,
    prefix: String,
    dir: PathBuf,
    servers: Option<Servers>,
    dnsmasq: Option<Child>,
    holder: Option<Child>,
    /// Namespaces made with [`FakeWorld::new_netns`], deleted with the world (if still there).
    extra: Vec<String>,
    inet: Option<Netns>,
    host: Option<Netns>,
    torn_down: bool,
}

impl FakeWorld {
    /// Starts configuring a world.
    pub fn builder() -> FakeWorldBuilder {
        FakeWorldBuilder::default()
    }

    /// Whether the world has IPv6.
    pub fn has_ipv6(&self) -> bool {
        self.ipv6
    }

    /// The host namespace (stands in for the machine claude-jail runs on).
    pub fn host(&self) -> &Netns {
        self.host.as_ref().expect("world is up")
    }

    /// The inet namespace (all fake remote hosts).
    pub fn inet(&self) -> &Netns {
        self.inet.as_ref().expect("world is up")
    }

    /// The host's network namespace file.
    pub fn host_netns_path(&self) -> &Path {
        self.host().path()
    }

    /// The inet network namespace file.
    pub fn inet_netns_path(&self) -> &Path {
        self.inet().path()
    }

    /// The host's mount namespace (the one with the fake /etc/resolv.conf), valid while the
    /// world lives.
    pub fn host_mntns_path(&self) -> PathBuf {
        let pid = self.holder.as_ref().expect("world is up").id();
        PathBuf::from(format!("/proc/{pid}/ns/mnt"))
    }

    /// The world's temporary directory (logs, resolv.conf); removed at teardown.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// PIDs of the world's child processes (dnsmasq, the mount-namespace holder).
    pub fn child_pids(&self) -> Vec<u32> {
        [&self.dnsmasq, &self.holder]
            .into_iter()
            .flatten()
            .map(|c| c.id())
            .collect()
    }

    /// The unique prefix of this world's names (`cjt-<pid>-<n>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// dnsmasq's log (every query is logged).
    pub fn dns_log_path(&self) -> PathBuf {
        self.dir.join("dnsmasq.log")
    }

    /// The DNS server's socket address.
    pub fn dns_server(&self) -> SocketAddr {
        SocketAddr::new(DNS_V4.into(), 53)
    }

    /// Runs `f` on a thread inside the host network namespace (not its mount namespace: use
    /// [`FakeWorld::host_command`] for that).
    pub fn in_host<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        self.host().run(f)
    }

    /// Runs `f` on a thread inside the inet network namespace.
    pub fn in_inet<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        self.inet().run(f)
    }

    /// A command that runs in the host's network and mount namespaces (so it sees the fake
    /// /etc/resolv.conf), like claude-jail would on the real machine.
    pub fn host_command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        command_in(
            program,
            self.host_netns_path(),
            Some(&self.host_mntns_path()),
        )
    }

    /// A command that runs in the inet network namespace (mount namespace unchanged).
    pub fn inet_command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        command_in(program, self.inet_netns_path(), None)
    }

    /// A further empty namespace (loopback up) named `<prefix>-<suffix>`, e.g. a jail. It is
    /// visible in the host mount namespace too. The caller owns it; the world deletes it at
    /// teardown if it still exists.
    pub fn new_netns(&mut self, suffix: &str) -> Result<Netns> {
        let name = format!("{}-{suffix}", self.prefix);
        let ns = Netns::create(&name)?;
        self.extra.push(name);
        Ok(ns)
    }

    /// Every connection and datagram the fake servers (inet and host loopback) received.
    pub fn all_hits(&self) -> Vec<Hit> {
        self.servers.as_ref().map(|s| s.hits()).unwrap_or_default()
    }

    /// Hits on one address (any port) or one socket address, e.g. `world.hits(LAN_V4[0])`.
    pub fn hits(&self, target: impl Into<Target>) -> Vec<Hit> {
        let t = target.into();
        self.all_hits()
            .into_iter()
            .filter(|h| t.matches(h.local))
            .collect()
    }

    /// Starts counting every IP packet that arrives in inet from the host (on inet's end of the
    /// uplink), whatever sent it: raw sockets, ICMP, TCP, UDP.
    pub fn capture(&self) -> Result<Capture> {
        Capture::start(self.inet(), INET_UPLINK)
    }

    /// Every fake remote address of this world (public and LAN), IPv6 ones included if enabled.
    pub fn fake_hosts(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = vec![PUBLIC_V4.into()];
        v.extend(LAN_V4.iter().map(|a| IpAddr::from(*a)));
        if self.ipv6 {
            v.push(PUBLIC_V6.into());
            v.push(LAN_V6.into());
        }
        v
    }

    fn configure_network(&self) -> Result<()> {
        let inet = self.inet();
        let mut host_cmds = format!(
            "link add {HOST_UPLINK} type veth peer name {INET_UPLINK} netns {inet_name}\n\
             addr add {HOST_V4}/24 dev {HOST_UPLINK}\n\
             link set {HOST_UPLINK} up\n\
             route add default via {GATEWAY_V4}\n\
             addr add {HOST_EXTRA_V4}/32 dev lo\n",
            inet_name = inet.name()
        );
        let mut inet_cmds = format!(
            "addr add {GATEWAY_V4}/24 dev {INET_UPLINK}\n\
             link set {INET_UPLINK} up\n\
             route add {HOST_EXTRA_V4}/32 via {HOST_V4}\n\
             addr add {PUBLIC_V4}/32 dev lo\n\
             addr add {DNS_V4}/32 dev lo\n"
        );
        for a in LAN_V4 {
            inet_cmds.push_str(&format!("addr add {a}/32 dev lo\n"));
        }
        if self.ipv6 {
            // nodad: no duplicate-address detection delay, the addresses work at once.
            host_cmds.push_str(&format!(
                "addr add {HOST_V6}/64 dev {HOST_UPLINK} nodad\n\
                 route add default via {GATEWAY_V6}\n"
            ));
            inet_cmds.push_str(&format!(
                "addr add {GATEWAY_V6}/64 dev {INET_UPLINK} nodad\n\
                 addr add {PUBLIC_V6}/128 dev lo nodad\n\
                 addr add {LAN_V6}/128 dev lo nodad\n"
            ));
        }
        // The host side first: it creates the veth pair and moves one end into inet.
        self.host().ip_batch(&host_cmds)?;
        inet.ip_batch(&inet_cmds)?;
        Ok(())
    }

    fn start_servers(&mut self) -> Result<()> {
        let fake_hosts = self.fake_hosts();
        let mut listeners = self.in_inet(|| -> Result<Vec<Listener>> {
            let mut v = Vec::new();
            for ip in &fake_hosts {
                for p in TCP_PORTS {
                    v.push(Listener::tcp(SocketAddr::new(*ip, p), Behaviour::Greet)?);
                }
                for p in UDP_PORTS {
                    v.push(Listener::udp(SocketAddr::new(*ip, p))?);
                }
            }
            let publics: &[IpAddr] = if self.ipv6 {
                &[IpAddr::V4(PUBLIC_V4), IpAddr::V6(PUBLIC_V6)]
            } else {
                &[IpAddr::V4(PUBLIC_V4)]
            };
            for ip in publics {
                v.push(Listener::tcp(
                    SocketAddr::new(*ip, ECHO_PORT),
                    Behaviour::HalfCloseEcho,
                )?);
            }
            Ok(v)
        })??;
        let ipv6 = self.ipv6;
        let host = self.in_host(|| -> Result<Vec<Listener>> {
            let mut loopbacks: Vec<IpAddr> = vec![Ipv4Addr::LOCALHOST.into()];
            if ipv6 {
                loopbacks.push(Ipv6Addr::LOCALHOST.into());
            }
            let mut v = Vec::new();
            for ip in loopbacks {
                for p in HOST_LOOPBACK_TCP_PORTS {
                    v.push(Listener::tcp(SocketAddr::new(ip, p), Behaviour::Greet)?);
                }
                v.push(Listener::udp(SocketAddr::new(ip, HOST_LOOPBACK_UDP_PORT))?);
            }
            for ip in [HOST_V4, HOST_EXTRA_V4] {
                v.push(Listener::tcp(
                    SocketAddr::new(ip.into(), HOST_ADDR_TCP_PORT),
                    Behaviour::Greet,
                )?);
            }
            Ok(v)
        })??;
        listeners.extend(host);
        self.servers = Some(Servers::start(listeners)?);
        Ok(())
    }

    /// The host mount namespace is held by a shell started with `unshare --mount` in the host
    /// network namespace. It also gets claude-jail's own state directories, private to this
    /// world: a tmpfs on /run/claude-jail and /var/log/claude-jail and a bpffs on /sys/fs/bpf, so
    /// that worlds (and the real host) never see each other's jails. Propagation is `slave`: mounts made in the test's namespace (new
    /// /run/netns files) appear in it and their unmounts too, so it never keeps another world's
    /// namespace alive; its own bind mount of resolv.conf never propagates back. It exits when
    /// its stdin closes (also if the test process dies) or when killed.
    fn start_holder(&mut self) -> Result<()> {
        let resolv = self.dir.join("resolv.conf");
        fs::write(&resolv, HOST_RESOLV_CONF).context("write resolv.conf")?;
        let mut cmd = command_in("unshare", self.host_netns_path(), None)?;
        cmd.args(["--mount", "--propagation", "slave", "--", "sh", "-c"])
            .arg(
                "mount --bind -- \"$1\" /etc/resolv.conf || exit 1; \
                 mkdir -p /run/claude-jail /var/log/claude-jail /sys/fs/bpf || exit 1; \
                 mount -t tmpfs -o mode=0700 cjt-run /run/claude-jail || exit 1; \
                 mount -t tmpfs -o mode=0755 cjt-log /var/log/claude-jail || exit 1; \
                 mount -t bpf -o mode=0700 cjt-bpf /sys/fs/bpf || exit 1; \
                 echo ready; read -r _",
            )
            .arg("cjt-holder")
            .arg(&resolv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().context("spawn mount-namespace holder")?;
        let stdout = child.stdout.take().expect("piped stdout");
        self.holder = Some(child);
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("read from holder")?;
        ensure!(
            line.trim() == "ready",
            "mount-namespace holder failed (said {line:?})"
        );
        Ok(())
    }

    fn start_dnsmasq(&mut self) -> Result<()> {
        let big = self.dir.join("big.hosts");
        let mut hosts = String::new();
        for a in big_addrs() {
            hosts.push_str(&format!("{a} {BIG_NAME}\n"));
        }
        fs::write(&big, hosts).context("write big.hosts")?;
        let mut cmd = self.inet_command("dnsmasq")?;
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--user=root",
            "--bind-interfaces",
            "--log-queries",
        ])
        .arg(format!("--listen-address={DNS_V4}"))
        .arg(format!("--local=/{TEST_DOMAIN}/"))
        .arg(format!("--log-facility={}", self.dns_log_path().display()))
        .arg(format!("--addn-hosts={}", big.display()));
        for (name, v4, v6) in DNS_NAMES {
            let mut rec = format!("--host-record={name}");
            let v6 = v6.filter(|_| self.ipv6);
            if v4.is_none() && v6.is_none() {
                continue;
            }
            if let Some(a) = v4 {
                rec.push_str(&format!(",{a}"));
            }
            if let Some(a) = v6 {
                rec.push_str(&format!(",{a}"));
            }
            cmd.arg(rec);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        self.dnsmasq = Some(cmd.spawn().context("spawn dnsmasq")?);
        // Ready when it answers a query from the host, the way clients will reach it.
        let deadline = Instant::now() + STARTUP;
        let server = self.dns_server();
        loop {
            let r = self.in_host(|| {
                dns::query(
                    server,
                    "public.test.example",
                    dns::A,
                    dns::Transport::Udp,
                    Duration::from_millis(100),
                )
            })?;
            if matches!(&r, Ok(reply) if reply.addrs == [IpAddr::V4(PUBLIC_V4)]) {
                return Ok(());
            }
            let child = self.dnsmasq.as_mut().expect("just set");
            if let Some(status) = child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                bail!("dnsmasq exited ({status}): {}", err.trim());
            }
            if Instant::now() > deadline {
                bail!("dnsmasq did not answer within {STARTUP:?}: last result {r:?}");
            }
        }
    }

    /// Tears everything down and reports what failed (the world is unusable afterwards).
    /// Dropping does the same, printing errors instead.
    pub fn shutdown(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut errors: Vec<String> = Vec::new();
        if let Some(mut s) = self.servers.take() {
            s.stop();
        }
        for (what, child) in [
            ("dnsmasq", self.dnsmasq.take()),
            ("holder", self.holder.take()),
        ] {
            if let Some(mut c) = child {
                drop(c.stdin.take());
                let _ = c.kill();
                if let Err(e) = c.wait() {
                    errors.push(format!("wait for {what}: {e}"));
                }
            }
        }
        for name in std::mem::take(&mut self.extra) {
            if Path::new(crate::netns::NETNS_DIR).join(&name).exists() {
                if let Err(e) = crate::netns::delete_named(&name) {
                    errors.push(format!("{e:#}"));
                }
            }
        }
        for ns in [self.inet.take(), self.host.take()].into_iter().flatten() {
            let mut ns = ns;
            if let Err(e) = ns.delete() {
                errors.push(format!("{e:#}"));
            }
        }
        if self.dir.exists() {
            if let Err(e) = fs::remove_dir_all(&self.dir) {
                errors.push(format!("remove {}: {e}", self.dir.display()));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("fake world teardown: {}", errors.join("; "))
        }
    }
}

impl Drop for FakeWorld {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("jail-tests: {e:#}");
        }
    }
}
