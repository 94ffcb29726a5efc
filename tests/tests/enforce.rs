//! Enforcement against the real kernel, inside the fake world: the loader's programs and maps,
//! without the launcher around them.
//!
//! Each test attaches the real programs (claude_jail::bpf::attach) to a cgroup of its own, then
//! runs `jail-probe` in that cgroup AND in the world's host network namespace (never the start
//! namespace): every destination it tries has a real listener in the fake world, so an attempt
//! the jail failed to refuse would really connect, and the tests look for that too (the servers'
//! hit log, a packet capture on the inet side of the uplink).
//!
//! Probes run as uid/gid 65534 with no capabilities, except the raw-socket ones, which keep
//! root's CAP_NET_RAW to show that the packet backstop catches what the socket hooks cannot.
//!
//! Needs root (see `jail_tests::have_root`). Run inside `unshare --net --mount`.
use std::{
    fs,
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use claude_jail::{
    bpf::{self, Counters},
    conf,
    hostnet::HostNet,
    policy::Policy,
};
use jail_common::{Event, Hook, FAMILY_V4, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use jail_tests::{
    cgroup::TestCgroup,
    have_root,
    random::{self, Rng},
    world::{
        GATEWAY_V4, HOST_EXTRA_V4, HOST_V4, HOST_V6, LAN_V4, LAN_V6, METADATA_V4, PUBLIC_V4,
        PUBLIC_V6,
    },
    FakeWorld,
};

const PROBE: &str = env!("CARGO_BIN_EXE_jail-probe");
const ATTACH: &str = env!("CARGO_BIN_EXE_jail-attach");
/// The unprivileged identity of jailed probes.
const NOBODY: u32 = 65534;

/// Who the probe runs as.
#[derive(Clone, Copy, PartialEq, Eq)]
enum As {
    /// uid/gid 65534, no supplementary groups, no capabilities, no_new_privs.
    Nobody,
    /// root, with CAP_NET_RAW (raw-socket tests only).
    Root,
}

/// A jail cgroup and a private bpffs, removed on drop (also when the test panics).
struct Jail {
    // Fields drop in order: the maps' descriptors close before the guard unpins and removes.
    maps: Option<bpf::JailMaps>,
    policy: Option<Policy>,
    pins: PathBuf,
    cgroup: TestCgroup,
}

impl Jail {
    /// Creates the cgroup and mounts the bpffs. Call before building the world: the world's host
    /// mount namespace is a copy of ours, so it then sees the bpffs (and the probes see the pin
    /// directory, 0700 root, as the real jail's processes would).
    fn prepare() -> Jail {
        let cgroup = TestCgroup::with_bpffs("enforce");
        Jail {
            maps: None,
            policy: None,
            pins: cgroup.pins(),
            cgroup,
        }
    }

    /// The policy of `conf_text` for the world's host (its addresses, subnets and routes are
    /// denied, as claude-jail does on a real machine).
    fn policy(world: &FakeWorld, conf_text: &str) -> Policy {
        let conf =
            conf::parse(Path::new("enforce.conf"), conf_text.as_bytes()).expect("test conf parses");
        let host = world
            .in_host(HostNet::read)
            .expect("enter the host namespace")
            .expect("read the fake host's network");
        Policy::build(&conf, &host)
    }

    /// Attaches the policy of `conf_text` with the real loader.
    fn attach(&mut self, world: &FakeWorld, conf_text: &str) {
        let policy = Self::policy(world, conf_text);
        let maps = bpf::attach(self.cgroup.path(), &self.pins, policy.map_entries())
            .expect("attach the programs");
        self.maps = Some(maps);
        self.policy = Some(policy);
    }

    fn maps(&self) -> &bpf::JailMaps {
        self.maps.as_ref().expect("attached")
    }

    fn counters(&self) -> Counters {
        self.maps().counters().expect("read the counters")
    }

    /// A probe command: in the world's host network and mount namespaces, in the jail cgroup,
    /// as `who`.
    fn probe_cmd(&self, world: &FakeWorld, who: As, args: &[&str]) -> Command {
        probe_cmd_in(world, self.cgroup.path(), who, args)
    }

    /// Runs a probe and returns its line (`ok ...`, `err ERRNO`).
    fn probe(&self, world: &FakeWorld, who: As, args: &[&str]) -> String {
        probe_in(world, self.cgroup.path(), who, args)
    }
}

/// A probe command: in the world's host network and mount namespaces, in the cgroup `cgroup`
/// (the jail's, or one of its descendants), as `who`.
fn probe_cmd_in(world: &FakeWorld, cgroup: &Path, who: As, args: &[&str]) -> Command {
    let mut cmd = world.host_command(PROBE).expect("probe command");
    cmd.args(args).stdin(Stdio::null());
    let procs: OwnedFd = fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
        .expect("open cgroup.procs")
        .into();
    // SAFETY: runs in the forked child after host_command's setns, before exec: raw system
    // calls only (write, setgroups, setgid, setuid, prctl) on a descriptor it owns (opened
    // O_CLOEXEC) and constants; no allocation, no locks.
    unsafe {
        cmd.pre_exec(move || {
            let last = std::io::Error::last_os_error;
            // "0" is the writing process: the probe joins the jail before it execs.
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(last());
            }
            if who == As::Nobody {
                // setuid from root to a non-zero uid clears every capability set.
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(NOBODY) != 0
                    || libc::setuid(NOBODY) != 0
                    || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                {
                    return Err(last());
                }
            }
            Ok(())
        });
    }
    cmd
}

/// Runs a probe in `cgroup` and returns its line (`ok ...`, `err ERRNO`).
fn probe_in(world: &FakeWorld, cgroup: &Path, who: As, args: &[&str]) -> String {
    let out = probe_cmd_in(world, cgroup, who, args)
        .output()
        .expect("run jail-probe");
    assert!(
        out.status.success(),
        "jail-probe {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn world(ipv6: bool) -> FakeWorld {
    FakeWorld::builder()
        .ipv6(ipv6)
        .build()
        .expect("build the fake world")
}

fn sa(ip: impl Into<IpAddr>, port: u16) -> String {
    SocketAddr::new(ip.into(), port).to_string()
}

fn greeting(ip: impl Into<IpAddr>, port: u16) -> String {
    format!("ok hello from {}", SocketAddr::new(ip.into(), port))
}

/// Waits (20 s at most: only a failure waits that long) until the fake servers recorded at least
/// `n` hits on `target`.
fn wait_hits(world: &FakeWorld, target: SocketAddr, n: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if world.hits(target).len() >= n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The refusal counters that moved between two snapshots, by hook.
fn refused_delta(before: &Counters, after: &Counters) -> Vec<(&'static str, u64)> {
    Hook::ALL
        .iter()
        .filter_map(|h| {
            let d = after.refused[*h as usize] - before.refused[*h as usize];
            (d != 0).then_some((h.name(), d))
        })
        .collect()
}

fn is_unsupported(line: &str) -> bool {
    line.starts_with("unsupported")
}

#[test]
fn socket_calls_to_denied_destinations_fail_with_eperm_and_allowed_ones_connect() {
    if !have_root() {
        return;
    }
    let mut jail = Jail::prepare();
    let world = world(false);
    // Before the jail: the probe really reaches a LAN host (the test could see a leak).
    assert_eq!(
        jail.probe(&world, As::Nobody, &["tcp", &sa(LAN_V4[0], 22)]),
        greeting(LAN_V4[0], 22),
        "without programs attached, the probe in the cgroup reaches 10.0.0.5:22 (control)"
    );
    jail.attach(&world, "");

    let denied: Vec<IpAddr> = LAN_V4
        .iter()
        .map(|a| IpAddr::from(*a))
        .chain([HOST_V4.into(), HOST_EXTRA_V4.into(), GATEWAY_V4.into()])
        .collect();
    let mut uring = true;
    for ip in &denied {
        let before_hits = world.hits(*ip).len();
        for (op, port, hook) in [
            ("tcp", 22, Hook::Connect4),
            ("mptcp", 22, Hook::Connect4),
            ("tfo", 80, Hook::Connect4),
            ("uring-connect", 5064, Hook::Connect4),
            ("udp-connect", 5064, Hook::Connect4),
            ("udp-sendto", 9999, Hook::Sendmsg4),
        ] {
            let before = jail.counters();
            let out = jail.probe(&world, As::Nobody, &[op, &sa(*ip, port)]);
            if is_unsupported(&out) {
                eprintln!("note: {op} is not supported here ({out}); not tested");
                uring &= op != "uring-connect";
                continue;
            }
            assert_eq!(
                out, "err EPERM",
                "{op} to {ip}:{port} must fail with EPERM: {ip} is denied by default (a private \
                 range or an address of the host)"
            );
            assert_eq!(
                refused_delta(&before, &jail.counters()),
                [(hook.name(), 1)],
                "{op} to {ip}:{port}: exactly one refusal, counted for {}",
                hook.name()
            );
        }
        assert_eq!(
            world.hits(*ip).len(),
            before_hits,
            "no connection or datagram may reach {ip}"
        );
    }
    if !uring {
        eprintln!("note: io_uring setup refused by this kernel; its connect was not tested");
    }

    // Allowed: the public server answers every form.
    for (op, port) in [
        ("tcp", 22),
        ("mptcp", 22),
        ("tfo", 80),
        ("uring-connect", 5064),
        ("udp-connect", 5064),
        ("udp-sendto", 9999),
    ] {
        let out = jail.probe(&world, As::Nobody, &[op, &sa(PUBLIC_V4, port)]);
        if is_unsupported(&out) {
            continue;
        }
        assert_eq!(
            out,
            greeting(PUBLIC_V4, port),
            "{op} to {PUBLIC_V4}:{port} must connect: a public address is allowed"
        );
    }

    // sendmmsg: sendmsg4 judges each message. A refused first message fails the call; a refused
    // later one ends the batch there.
    let (lan, public) = (sa(LAN_V4[0], 9999), sa(PUBLIC_V4, 9999));
    let lan_hits = world.hits(LAN_V4[0]).len();
    let before = jail.counters();
    assert_eq!(
        jail.probe(&world, As::Nobody, &["sendmmsg", &public, &lan, &public]),
        "ok sent=1",
        "sendmmsg [public, 10.0.0.5, public]: the second message is refused, so one is sent"
    );
    assert_eq!(
        jail.probe(&world, As::Nobody, &["sendmmsg", &lan, &public]),
        "err EPERM",
        "sendmmsg [10.0.0.5, public]: the first message is refused: EPERM"
    );
    assert_eq!(
        refused_delta(&before, &jail.counters()),
        [("sendmsg4", 2)],
        "one sendmsg4 refusal per refused message"
    );
    assert_eq!(
        world.hits(LAN_V4[0]).len(),
        lan_hits,
        "no sendmmsg datagram may reach 10.0.0.5"
    );
    let c = jail.counters();
    assert!(
        c.allowed[Hook::Connect4 as usize] > 0 && c.allowed[Hook::Sendmsg4 as usize] > 0,
        "allowed attempts are counted per hook too: {c:?}"
    );
}

#[test]
fn ipv6_forms_of_denied_addresses_are_refused() {
    if !have_root() {
        return;
    }
    let mut jail = Jail::prepare();
    let world = world(true);
    jail.attach(&world, "");
    let mapped: Ipv6Addr = LAN_V4[0].to_ipv6_mapped();
    let ipv4_hits = world.hits(LAN_V4[0]).len();
    let ula_hits = world.hits(LAN_V6).len();
    for (ip, why) in [
        (mapped, "::ffff:10.0.0.5 is 10.0.0.5 (IPv4-mapped), denied"),
        (LAN_V6, "fd00::5 is in fc00::/7 (ULA), denied"),
    ] {
        for (op, port) in [
            ("tcp", 22),
            ("tfo", 80),
            ("udp-connect", 5064),
            ("udp-sendto", 9999),
        ] {
            assert_eq!(
                jail.probe(&world, As::Nobody, &[op, &sa(ip, port)]),
                "err EPERM",
                "{op} to [{ip}]:{port} on an AF_INET6 socket must fail with EPERM: {why}"
            );
        }
    }
    assert_eq!(
        world.hits(LAN_V4[0]).len(),
        ipv4_hits,
        "nothing reached 10.0.0.5"
    );
    assert_eq!(
        world.hits(LAN_V6).len(),
        ula_hits,
        "nothing reached fd00::5"
    );
    // The same socket calls to allowed addresses connect (the v6 path works at all).
    for ip in [IpAddr::from(PUBLIC_V6), PUBLIC_V4.to_ipv6_mapped().into()] {
        assert_eq!(
            jail.probe(&world, As::Nobody, &["tcp", &sa(ip, 22)]),
            greeting(ip.to_canonical(), 22),
            "tcp to [{ip}]:22 must connect: a public address is allowed"
        );
        assert!(
            jail.probe(&world, As::Nobody, &["udp-sendto", &sa(ip, 9999)])
                .starts_with("ok hello from"),
            "udp to [{ip}]:9999 must get the server's reply"
        );
    }
}

#[test]
fn narrow_allows_inside_denied_ranges_open_that_and_only_that() {
    if !have_root() {
        return;
    }
    let mut jail = Jail::prepare();
    let world = world(true);
    // 10.0.0.5 exactly; 172.16.0.0/24 inside 172.16/12; 192.168.1.5:9999/udp; [fd00::5]:80/tcp
    // and [fd00::5]:9999/udp.
    jail.attach(
        &world,
        "allow-ip = 10.0.0.5\nallow-ip = 172.16.0.0/24\nallow-ip = 192.168.1.5:9999/udp\n\
         allow-ip = [fd00::5]:80/tcp\nallow-ip = [fd00::5]:9999/udp\n",
    );
    let (ten, one72, one92) = (LAN_V4[0], LAN_V4[1], LAN_V4[2]);
    let expect = [
        // (op, dest, expected, rule)
        (
            "tcp",
            sa(ten, 22),
            greeting(ten, 22),
            "10.0.0.5 is allowed exactly",
        ),
        (
            "udp-sendto",
            sa(ten, 5064),
            greeting(ten, 5064),
            "10.0.0.5 is allowed on every port",
        ),
        (
            "tcp",
            sa(Ipv4Addr::new(10, 0, 0, 53), 53),
            "err EPERM".into(),
            "10.0.0.53 is not 10.0.0.5: 10/8 stays denied",
        ),
        (
            "tcp",
            sa(one72, 80),
            greeting(one72, 80),
            "172.16.0.5 is inside the allowed 172.16.0.0/24",
        ),
        (
            "tcp",
            sa(Ipv4Addr::new(172, 16, 1, 5), 80),
            "err EPERM".into(),
            "172.16.1.5 is outside 172.16.0.0/24: 172.16/12 stays denied",
        ),
        (
            "udp-sendto",
            sa(LAN_V6, 9999),
            greeting(LAN_V6, 9999),
            "[fd00::5]:9999/udp is allowed",
        ),
        (
            "udp-connect",
            sa(one92, 9999),
            greeting(one92, 9999),
            "192.168.1.5:9999/udp is allowed",
        ),
        (
            "udp-sendto",
            sa(one92, 9999),
            greeting(one92, 9999),
            "192.168.1.5:9999/udp is allowed",
        ),
        (
            "udp-sendto",
            sa(one92, 5064),
            "err EPERM".into(),
            "only port 9999 of 192.168.1.5 is allowed",
        ),
        (
            "tcp",
            sa(one92, 22),
            "err EPERM".into(),
            "only UDP 9999 of 192.168.1.5 is allowed",
        ),
        (
            "tcp",
            sa(LAN_V6, 80),
            greeting(LAN_V6, 80),
            "[fd00::5]:80/tcp is allowed",
        ),
        (
            "mptcp",
            sa(LAN_V6, 80),
            greeting(LAN_V6, 80),
            "[fd00::5]:80/tcp is allowed, to MPTCP too (MPTCP is TCP to the peer)",
        ),
        (
            "mptcp",
            sa(LAN_V6, 22),
            "err EPERM".into(),
            "only TCP 80 of fd00::5 is allowed, MPTCP included",
        ),
        (
            "mptcp",
            sa(Ipv4Addr::new(10, 0, 0, 53), 53),
            "err EPERM".into(),
            "10.0.0.53 is not 10.0.0.5: 10/8 stays denied, MPTCP included",
        ),
        (
            "tcp",
            sa(LAN_V6, 22),
            "err EPERM".into(),
            "only TCP 80 of fd00::5 is allowed",
        ),
        (
            "udp-sendto",
            sa(LAN_V6, 5064),
            "err EPERM".into(),
            "only TCP 80 of fd00::5 is allowed",
        ),
        (
            "tcp",
            sa(ten.to_ipv6_mapped(), 22),
            greeting(ten, 22),
            "::ffff:10.0.0.5 is 10.0.0.5, allowed",
        ),
        (
            "udp-sendto",
            sa(one92.to_ipv6_mapped(), 9999),
            greeting(one92, 9999),
            "::ffff:192.168.1.5:9999/udp is the allowed entry",
        ),
        (
            "udp-sendto",
            sa(one92.to_ipv6_mapped(), 5064),
            "err EPERM".into(),
            "::ffff:192.168.1.5 port 5064 is not allowed",
        ),
    ];
    for (op, dest, want, rule) in &expect {
        let out = jail.probe(&world, As::Nobody, &[op, dest]);
        if is_unsupported(&out) {
            eprintln!("note: {op} is not supported here ({out}); not tested");
            continue;
        }
        assert_eq!(&out, want, "{op} to {dest}: {rule}");
    }

    // The packet backstop agrees with the socket hooks for the address:port/udp entry: a raw UDP
    // datagram to 192.168.1.5:9999 passes (the server logs it), one to port 5064 and a raw SYN
    // to port 9999 are dropped.
    let capture = world.capture().expect("start a capture");
    let before = jail.counters();
    let lan_hosts = [IpAddr::from(one92), IpAddr::from(LAN_V6)];
    let hits_5064: Vec<usize> = lan_hosts
        .iter()
        .map(|ip| world.hits(SocketAddr::new(*ip, 5064)).len())
        .collect();
    for ip in lan_hosts {
        let allowed = SocketAddr::new(ip, 9999);
        let n = world.hits(allowed).len();
        assert_eq!(
            jail.probe(&world, As::Root, &["raw-udp", &allowed.to_string()]),
            "ok sent",
            "a raw UDP datagram to the allowed {allowed}/udp passes the backstop"
        );
        assert!(
            wait_hits(&world, allowed, n + 1),
            "the raw datagram to the allowed {allowed}/udp reaches the server"
        );
    }
    let dropped = [
        ("raw-udp", sa(one92, 5064)),
        ("raw-syn", sa(one92, 9999)),
        ("raw-udp", sa(LAN_V6, 5064)),
    ];
    for (op, dest) in &dropped {
        let mut args = vec![*op, dest.as_str()];
        if *op == "raw-syn" {
            args.push("192.168.1.100");
        }
        assert_eq!(
            jail.probe(&world, As::Root, &args),
            "err EPERM",
            "{op} to {dest}: the backstop drops it (only UDP 9999 is allowed), sendto sees EPERM"
        );
    }
    let packets = capture.stop().expect("stop the capture");
    for (ip, hits) in lan_hosts.iter().zip(hits_5064) {
        // ICMP from the host is left out: the server's reply to the raw datagram finds no
        // socket, and the host kernel (not the jail cgroup) answers with a port unreachable.
        let seen: Vec<_> = packets
            .iter()
            .filter(|p| p.dst == *ip && p.protocol != PROTO_ICMP && p.protocol != PROTO_ICMPV6)
            .collect();
        assert!(
            seen.iter()
                .all(|p| p.protocol == PROTO_UDP && p.dst_port == Some(9999)),
            "only UDP to port 9999 may reach {ip}, saw {seen:?}"
        );
        assert!(
            !seen.is_empty(),
            "the capture saw the allowed raw datagram to {ip} (it would see a leak)"
        );
        assert_eq!(
            world.hits(SocketAddr::new(*ip, 5064)).len(),
            hits,
            "the raw datagram to {ip} port 5064 must not reach the server"
        );
    }
    assert_eq!(
        refused_delta(&before, &jail.counters()),
        [("skb-egress", 3)],
        "the three raw packets are refused by the packet backstop, and counted there"
    );
}

#[test]
fn raw_packets_to_denied_destinations_are_dropped_by_the_backstop() {
    if !have_root() {
        return;
    }
    let mut jail = Jail::prepare();
    let world = world(false);
    // Ping sockets need the group in ping_group_range (per network namespace: the world's host).
    let st = world
        .host_command("sh")
        .expect("sh in host")
        .args([
            "-c",
            "echo 0 2147483647 > /proc/sys/net/ipv4/ping_group_range",
        ])
        .status()
        .expect("run sh");
    assert!(
        st.success(),
        "set ping_group_range in the world's host namespace"
    );
    jail.attach(&world, "");
    let events = jail.maps.as_mut().unwrap().take_events();
    let mut events = events.expect("the attach result holds the ring buffer");

    let lan = LAN_V4[0];
    let capture = world.capture().expect("start a capture");
    let before = jail.counters();
    let lan_hits = world.hits(lan).len();
    for args in [
        vec!["raw-syn", "10.0.0.5:22", "192.168.1.100"],
        vec!["raw-udp", "10.0.0.5:5064"],
        vec!["icmp-echo", "10.0.0.5:0"],
        vec!["ping", "10.0.0.5:0"],
    ] {
        assert_eq!(
            jail.probe(&world, As::Root, &args),
            "err EPERM",
            "{args:?}: a raw or ping socket has no socket-address hook; the packet backstop must \
             drop the packet (10/8 is denied), and the send fails with EPERM"
        );
    }
    // Control: the same raw packets to the public server do leave (capture and probes work).
    assert_eq!(
        jail.probe(&world, As::Root, &["icmp-echo", "203.0.113.10:0"]),
        "ok reply from 203.0.113.10",
        "a raw ICMP echo to the public server gets its reply"
    );
    assert_eq!(
        jail.probe(
            &world,
            As::Root,
            &["raw-syn", "203.0.113.10:22", "192.168.1.100"]
        ),
        "ok sent",
        "a raw SYN to the public server is sent"
    );
    let after = jail.counters();
    for proto in [PROTO_TCP, PROTO_ICMP] {
        capture.wait_for(1, |p| {
            p.dst == IpAddr::from(PUBLIC_V4) && p.protocol == proto
        });
    }
    let packets = capture.stop().expect("stop the capture");
    let to_lan: Vec<_> = packets
        .iter()
        .filter(|p| p.dst == IpAddr::from(lan))
        .collect();
    assert!(
        to_lan.is_empty(),
        "the fake host 10.0.0.5 must see no packet at all, saw {to_lan:?}"
    );
    let to_public = packets
        .iter()
        .filter(|p| p.dst == IpAddr::from(PUBLIC_V4))
        .map(|p| p.protocol)
        .collect::<Vec<_>>();
    assert!(
        to_public.contains(&PROTO_TCP) && to_public.contains(&PROTO_ICMP),
        "the capture sees raw packets that are allowed (so it would see a leak): {to_public:?}"
    );
    assert_eq!(
        world.hits(lan).len(),
        lan_hits,
        "no server on 10.0.0.5 was hit"
    );
    assert_eq!(
        refused_delta(&before, &after),
        [("skb-egress", 4)],
        "four packets refused, all by the backstop"
    );

    // Events: one per refusal. The backstop's carry the destination, port and protocol.
    let mut seen: Vec<Event> = Vec::new();
    while let Some(item) = events.next() {
        assert_eq!(item.len(), std::mem::size_of::<Event>(), "event size");
        seen.push(claude_jail::sys::read_event(&item).expect("an event"));
    }
    let ne = u32::from_ne_bytes(lan.octets());
    let syn = seen
        .iter()
        .find(|e| e.hook == Hook::SkbEgress as u8 && e.proto == PROTO_TCP)
        .unwrap_or_else(|| panic!("an skb-egress event for the raw SYN, got {seen:?}"));
    assert_eq!(
        (syn.family, syn.addr[0], syn.port, syn.uid),
        (FAMILY_V4, ne, 22, 0),
        "the SYN's event names 10.0.0.5:22/tcp and the root socket owner"
    );
    let rule = jail
        .policy
        .as_ref()
        .unwrap()
        .decide(lan.into(), 22, PROTO_TCP)
        .rule;
    assert_eq!(
        Some(syn.rule),
        rule,
        "the event names the deny entry that matched"
    );
    assert_eq!(
        seen.iter()
            .filter(|e| e.hook == Hook::SkbEgress as u8)
            .count(),
        4,
        "one event per refused packet: {seen:?}"
    );

    // A socket-hook refusal by an unprivileged process: pid, uid and comm.
    let mut child = jail
        .probe_cmd(&world, As::Nobody, &["tcp", "10.0.0.5:22"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn probe");
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.wait().unwrap();
    assert_eq!(line.trim(), "err EPERM", "tcp to 10.0.0.5:22 refused");
    let e = loop {
        match events.next() {
            Some(item) => {
                let e = claude_jail::sys::read_event(&item).expect("an event");
                if e.hook == Hook::Connect4 as u8 {
                    break e;
                }
            }
            None => panic!("no connect4 event for the refused connect"),
        }
    };
    let comm_len = e.comm.iter().position(|&b| b == 0).unwrap_or(16);
    assert_eq!(
        (
            e.pid,
            e.uid,
            &e.comm[..comm_len],
            e.family,
            e.addr[0],
            e.port,
            e.proto
        ),
        (
            pid,
            NOBODY,
            &b"jail-probe"[..],
            FAMILY_V4,
            ne,
            22,
            PROTO_TCP
        ),
        "the connect4 event names the process (pid, uid, comm) and the destination"
    );
}

/// The (attach type, program name) pairs bpftool lists on a cgroup, sorted; `effective` lists
/// what runs for it (its own and its ancestors' programs).
fn cgroup_programs(cgroup: &Path, effective: bool) -> Vec<(String, String)> {
    let mut cmd = Command::new("bpftool");
    cmd.args(["-j", "cgroup", "show"]).arg(cgroup);
    if effective {
        cmd.arg("effective");
    }
    let out = cmd.output().expect("run bpftool (Debian package bpftool)");
    assert!(out.status.success(), "bpftool cgroup show: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    let mut seen: Vec<(String, String)> = v
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| {
            (
                p["attach_type"].as_str().unwrap_or("?").to_owned(),
                p["name"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    seen.sort();
    seen
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// The five programs as bpftool names them.
const FIVE: [(&str, &str); 5] = [
    ("cgroup_inet4_connect", "connect4"),
    ("cgroup_inet6_connect", "connect6"),
    ("cgroup_inet_egress", "skb_egress"),
    ("cgroup_udp4_sendmsg", "sendmsg4"),
    ("cgroup_udp6_sendmsg", "sendmsg6"),
];

/// The `tamper` probe's arguments for a jail: its cgroup, pins, and the ids of ALLOW4, of the
/// connect4 and skb_egress links and of the connect6 program.
fn tamper_args(jail: &Jail) -> Vec<String> {
    let map_id = aya::maps::MapData::from_pin(jail.pins.join("ALLOW4"))
        .and_then(|m| m.info())
        .expect("ALLOW4 info")
        .id();
    let link = |name: &str| {
        let pinned = aya::programs::links::PinnedLink::from_pin(jail.pins.join(name))
            .expect("open the pinned link");
        aya::programs::links::FdLink::from(pinned)
            .info()
            .expect("link info")
    };
    vec![
        "tamper".to_owned(),
        jail.cgroup.path().to_str().unwrap().to_owned(),
        jail.pins.to_str().unwrap().to_owned(),
        map_id.to_string(),
        link("link-connect4").id().to_string(),
        link("link-skb-egress").id().to_string(),
        link("link-connect6").program_id().to_string(),
    ]
}

/// The `NAME=RESULT` attempts of a tamper probe's line.
fn tamper_results(out: &str) -> std::collections::BTreeMap<String, String> {
    let attempts = out
        .strip_prefix("ok ")
        .unwrap_or_else(|| panic!("tamper ran: {out}"));
    attempts
        .split(' ')
        .map(|a| {
            let (k, v) = a.split_once('=').unwrap_or_else(|| panic!("attempt {a}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The programs are on the jail cgroup, and an unprivileged process in the jail cannot get at
/// them: it cannot open the maps or links (by pin or id), query the cgroup, detach a program
/// (BPF_LINK_DETACH on the link: the call that does remove a link-attached program, as the root
/// control on a throwaway attachment shows), or leave the cgroup.
#[test]
fn programs_are_visible_and_an_unprivileged_process_cannot_remove_them() {
    if !have_root() {
        return;
    }
    let mut jail = Jail::prepare();
    let mut throwaway = Jail::prepare();
    let world = world(false);
    jail.attach(&world, "allow-ip = 10.0.0.5:80/tcp\n");
    throwaway.attach(&world, "allow-ip = 10.0.0.5:80/tcp\n");

    // bpftool sees the five programs on the jail cgroup.
    assert_eq!(
        cgroup_programs(jail.cgroup.path(), false),
        pairs(&FIVE),
        "the five programs are attached to the jail cgroup"
    );

    // An unprivileged process in the jail tries to get at them.
    let entries = jail.maps().read_entries().expect("read the maps");
    let args = tamper_args(&jail);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = jail.probe(&world, As::Nobody, &arg_refs);
    eprintln!("tamper attempts: {out}");
    let results = tamper_results(&out);
    let names = [
        "obj-get-map",
        "map-by-id",
        "link-by-id",
        "query-connect6",
        "prog-detach-connect6",
        "detach-connect4",
        "detach-egress",
        "detach-pinned-sendmsg4",
        "escape-cgroup",
    ];
    assert_eq!(
        results.keys().collect::<Vec<_>>(),
        {
            let mut n = names.to_vec();
            n.sort();
            n
        },
        "every attempt reported: {out}"
    );
    for (a, r) in &results {
        assert_ne!(
            r, "SUCCEEDED",
            "an unprivileged process in the jail must not be able to {a}: {out}"
        );
    }
    for a in [
        "map-by-id",
        "link-by-id",
        "query-connect6",
        "prog-detach-connect6",
        "detach-connect4",
        "detach-egress",
    ] {
        assert_eq!(
            results[a], "EPERM",
            "{a}: refused for lack of privilege (EPERM), not for a malformed call: {out}"
        );
    }
    assert_eq!(
        results["detach-pinned-sendmsg4"], "EACCES",
        "the pin directory is root's (0700): {out}"
    );

    // Control, as root in the THROWAWAY jail (the real one is not touched): the same calls get
    // the objects, find the programs and detach them, so the refusals above are the privilege
    // check. BPF_PROG_DETACH with the program's descriptor finds no such attachment (ENOENT):
    // the programs are attached through links, which only BPF_LINK_DETACH (or dropping the
    // link's last reference) removes.
    let args = tamper_args(&throwaway);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(
        throwaway.probe(&world, As::Nobody, &["tcp", &sa(LAN_V4[0], 22)]),
        "err EPERM",
        "before the root control, the throwaway jail refuses 10.0.0.5:22 too"
    );
    let root_out = throwaway.probe(&world, As::Root, &arg_refs);
    eprintln!("tamper attempts as root on the throwaway jail (control): {root_out}");
    let root = tamper_results(&root_out);
    for a in names {
        let want = if a == "prog-detach-connect6" {
            "ENOENT"
        } else {
            "SUCCEEDED"
        };
        assert_eq!(
            root[a], want,
            "control: root's {a} (else the unprivileged check proves nothing): {root_out}"
        );
    }
    assert_eq!(
        cgroup_programs(throwaway.cgroup.path(), false),
        pairs(&[
            ("cgroup_inet6_connect", "connect6"),
            ("cgroup_udp6_sendmsg", "sendmsg6"),
        ]),
        "root's link detaches really removed connect4, sendmsg4 and skb_egress"
    );
    assert_eq!(
        throwaway.probe(&world, As::Nobody, &["tcp", &sa(LAN_V4[0], 22)]),
        greeting(LAN_V4[0], 22),
        "with connect4 detached, the throwaway jail no longer refuses 10.0.0.5:22"
    );

    // The real jail is intact.
    assert_eq!(
        cgroup_programs(jail.cgroup.path(), false),
        pairs(&FIVE),
        "the five programs are still attached to the jail cgroup"
    );
    assert!(bpf::links_pinned(&jail.pins), "the links are still pinned");
    assert_eq!(
        jail.maps().read_entries().expect("read the maps"),
        entries,
        "the maps are unchanged"
    );
    assert_eq!(
        jail.probe(&world, As::Nobody, &["tcp", &sa(LAN_V4[0], 22)]),
        "err EPERM",
        "after the attempts the jail still refuses 10.0.0.5:22"
    );
    assert_eq!(
        jail.probe(&world, As::Nobody, &["tcp", &sa(LAN_V4[0], 80)]),
        greeting(LAN_V4[0], 80),
        "and still allows 10.0.0.5:80/tcp"
    );
}

#[test]
fn the_jail_outlives_a_sigkilled_loader() {
    if !have_root() {
        return;
    }
    let jail = Jail::prepare();
    let world = world(false);
    assert_eq!(
        jail.probe(&world, As::Nobody, &["tcp", &sa(LAN_V4[0], 22)]),
        greeting(LAN_V4[0], 22),
        "control: before any attach, 10.0.0.5:22 is reachable from the cgroup"
    );
    let conf = world.dir().join("attach.conf");
    fs::write(&conf, "# defaults only\n").unwrap();
    // The loader runs in the world's host namespaces too (it opens no socket, but nothing of
    // this test runs in the start namespace).
    let mut loader = world
        .host_command(ATTACH)
        .expect("loader command")
        .arg(jail.cgroup.path())
        .arg(&jail.pins)
        .arg(&conf)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn jail-attach");
    let mut line = String::new();
    BufReader::new(loader.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("read from jail-attach");
    if line.trim() != "attached" {
        let _ = loader.kill();
        let _ = loader.wait();
        panic!("jail-attach did not attach (said {line:?})");
    }
    assert_eq!(
        jail.probe(&world, As::Nobody, &["tcp", &sa(LAN_V4[0], 22)]),
        "err EPERM",
        "with the loader alive, 10.0.0.5:22 is refused"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(loader.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL the loader");
    let status = loader.wait().expect("reap the loader");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "the loader died of SIGKILL"
    );
    for (op, port) in [("tcp", 22), ("udp-sendto", 9999)] {
        assert_eq!(
            jail.probe(&world, As::Nobody, &[op, &sa(LAN_V4[0], port)]),
            "err EPERM",
            "{op} to 10.0.0.5:{port} must still fail with EPERM after the loader's SIGKILL: the \
             links and maps are pinned"
        );
    }
    assert!(
        bpf::links_pinned(&jail.pins),
        "the links are still pinned after the loader died"
    );

    // A new process (this test) takes over from the pins: counters, events, reload.
    let mut maps = bpf::JailMaps::open(&jail.pins).expect("open the pinned maps");
    let c = maps.counters().expect("counters");
    assert_eq!(
        (
            c.refused[Hook::Connect4 as usize],
            c.refused[Hook::Sendmsg4 as usize]
        ),
        (2, 1),
        "the pinned counters hold the refusals made before and after the SIGKILL: {c:?}"
    );
    let data = aya::maps::MapData::from_pin(jail.pins.join(jail_common::maps::EVENTS))
        .expect("open the pinned EVENTS ring buffer");
    let mut ring =
        aya::maps::RingBuf::try_from(aya::maps::Map::from_map_data(data).expect("EVENTS map"))
            .expect("EVENTS is a ring buffer");
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), std::mem::size_of::<Event>());
        events.push(claude_jail::sys::read_event(&item).expect("an event"));
    }
    let ne = u32::from_ne_bytes(LAN_V4[0].octets());
    let hooks: Vec<(u8, u32, u16, u8, u32)> = events
        .iter()
        .map(|e| (e.hook, e.addr[0], e.port, e.proto, e.uid))
        .collect();
    assert_eq!(
        hooks,
        [
            (Hook::Connect4 as u8, ne, 22, PROTO_TCP, NOBODY),
            (Hook::Connect4 as u8, ne, 22, PROTO_TCP, NOBODY),
            (Hook::Sendmsg4 as u8, ne, 9999, PROTO_UDP, NOBODY),
        ],
        "the pinned ring buffer holds one event per refusal, in order"
    );
    // Reload through the pins: open 10.0.0.5:22/tcp, nothing else.
    let policy = Jail::policy(&world, "allow-ip = 10.0.0.5:22/tcp\n");
    maps.apply(policy.map_entries()).expect("reload the maps");
    assert_eq!(
        jail.probe(&world, As::Nobody, &["tcp", &sa(LAN_V4[0], 22)]),
        greeting(LAN_V4[0], 22),
        "after a reload that allows 10.0.0.5:22/tcp, it connects"
    );
    assert_eq!(
        jail.probe(&world, As::Nobody, &["tcp", &sa(LAN_V4[0], 80)]),
        "err EPERM",
        "and 10.0.0.5:80 stays refused"
    );
    assert_eq!(
        jail.probe(&world, As::Root, &["icmp-echo", &sa(METADATA_V4, 0)]),
        "err EPERM",
        "the packet backstop is still attached too (metadata address)"
    );
}

#[test]
fn kernel_verdicts_equal_policy_decide_for_random_destinations() {
    if !have_root() {
        return;
    }
    let seed = random::seed();
    let mut rng = Rng(seed);
    let mut jail = Jail::prepare();
    let world = world(true);
    jail.attach(
        &world,
        "allow-ip = 10.0.0.0/24\nallow-ip = 192.168.1.5:5064/udp\nallow-ip = 172.16.0.5:22/tcp\n\
         allow-ip = [fd00::5]:80/tcp\ndeny-ip = 203.0.113.128/25\nallow-ip = 203.0.113.200\n",
    );
    let fixed: Vec<IpAddr> = world
        .fake_hosts()
        .into_iter()
        .chain([
            HOST_V4.into(),
            HOST_EXTRA_V4.into(),
            GATEWAY_V4.into(),
            Ipv4Addr::new(192, 168, 1, 5).into(),
            Ipv4Addr::new(172, 16, 0, 5).into(),
            Ipv4Addr::new(203, 0, 113, 200).into(),
        ])
        .chain(random::EDGES.map(|s| s.parse::<IpAddr>().unwrap()))
        .collect();
    let cases = random::destinations(&mut rng, &fixed, 300);
    let policy = jail.policy.as_ref().unwrap();
    // One probe process per case would take minutes: a verdict is immediate (a non-blocking
    // TCP connect, a UDP connect; a raw send fails at once when the backstop drops it), so one
    // probe judges a whole list. The socket hooks as nobody, the backstop as root with raw
    // sockets; an IPv4-mapped address is its IPv4 address on the wire (a raw IPv6 socket
    // refuses it).
    let list = |op: &str, raw: bool| -> Vec<String> {
        std::iter::once(op.to_owned())
            .chain(cases.iter().map(|(ip, port, proto)| {
                let ip = if raw { ip.to_canonical() } else { *ip };
                format!(
                    "{}:{}",
                    if *proto == PROTO_TCP { "tcp" } else { "udp" },
                    SocketAddr::new(ip, *port)
                )
            }))
            .collect()
    };
    let mut wrong = Vec::new();
    for (op, who, what) in [
        ("verdicts", As::Nobody, "socket hooks"),
        ("raw-verdicts", As::Root, "packet backstop"),
    ] {
        let args = list(op, who == As::Root);
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = jail.probe(&world, who, &arg_refs);
        let verdicts: Vec<&str> = out
            .strip_prefix("ok ")
            .unwrap_or_else(|| panic!("{op} probe: {out}"))
            .split(',')
            .collect();
        assert_eq!(verdicts.len(), cases.len(), "one verdict per case: {out}");
        let mut tally = std::collections::BTreeMap::new();
        for v in &verdicts {
            *tally.entry(*v).or_insert(0) += 1;
        }
        eprintln!("{what}: {tally:?}");
        for ((ip, port, proto), got) in cases.iter().zip(&verdicts) {
            let want = policy.decide(*ip, *port, *proto).allowed;
            let refused = *got == "EPERM";
            if refused == want {
                wrong.push(format!(
                    "{what}: {ip} port {port} proto {proto}: kernel {got}, Policy::decide {}",
                    if want { "allow" } else { "deny" }
                ));
            }
        }
    }
    let denied = cases
        .iter()
        .filter(|(ip, port, proto)| !policy.decide(*ip, *port, *proto).allowed)
        .count();
    assert!(
        denied > 0 && denied < cases.len(),
        "the sample has both verdicts (seed {seed})"
    );
    assert!(
        wrong.is_empty(),
        "the kernel's verdict must equal Policy::decide (seed {seed}, rerun with \
         ENFORCE_SEED={seed}):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn malformed_raw_headers_do_not_fool_the_backstop() {
    if !have_root() {
        return;
    }
    let mut jail = Jail::prepare();
    let world = world(true);
    jail.attach(&world, "allow-ip = 192.168.1.5:9999/udp\n");
    let one92 = LAN_V4[2];
    let capture = world.capture().expect("start a capture");
    let before = jail.counters();
    let cases = [
        (
            vec!["raw-ihl0".to_owned(), sa(one92, 9999)],
            "an IPv4 header with IHL 0 to 192.168.1.5 whose length field reads as port 9999 \
             must not match the 192.168.1.5:9999/udp entry",
        ),
        (
            vec![
                "raw-version".to_owned(),
                sa(LAN_V4[0], 0),
                PUBLIC_V6.to_string(),
            ],
            "an IPv4 packet to 10.0.0.5 whose version nibble says 6 must be judged as the IPv4 \
             packet the kernel routes (denied), not as IPv6 to the allowed 2001:db8:ff::10",
        ),
        (
            vec![
                "raw-version".to_owned(),
                sa(LAN_V6, 0),
                PUBLIC_V4.to_string(),
            ],
            "an IPv6 packet to fd00::5 whose version nibble says 4 must be judged as the IPv6 \
             packet the kernel routes (denied), not as IPv4 to the allowed 203.0.113.10",
        ),
        (
            vec!["raw-v6-truncated".to_owned(), sa(LAN_V6, 0)],
            "an IPv6 packet to fd00::5 whose extension header is missing must be judged \
             (denied), not passed for lack of parsing",
        ),
    ];
    let mut backstop_refusals = 0;
    for (args, rule) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = jail.probe(&world, As::Root, &args);
        // Recent kernels refuse a header-included IPv4 header shorter than 20 bytes themselves.
        if args[0] == "raw-ihl0" && out == "err EINVAL" {
            continue;
        }
        assert_eq!(out, "err EPERM", "{args:?}: {rule}");
        backstop_refusals += 1;
    }
    let packets = capture.stop().expect("stop the capture");
    // The host's own neighbour discovery and MLD (to link-local multicast; an MLD report
    // carries a hop-by-hop header, so its next header reads 0, not ICMPv6) are not the jail's.
    let leaked: Vec<_> = packets
        .iter()
        .filter(|p| !matches!(p.dst, IpAddr::V6(a) if a.segments()[0] == 0xff02))
        .collect();
    assert!(
        leaked.is_empty(),
        "no malformed packet may leave the host, saw {leaked:?}"
    );
    assert_eq!(
        refused_delta(&before, &jail.counters()),
        [("skb-egress", backstop_refusals)],
        "the packets the kernel sent are refused by the backstop"
    );
}

/// The backstop walks IPv6 extension headers to the UDP port: a raw UDP datagram with a real
/// hop-by-hop or destination options header (inserted by the kernel, as any sender's would be)
/// to the allowed `[fd00::5]:9999/udp` reaches the server; the same to port 5064 of fd00::5
/// (denied: fc00::/7) is dropped and never seen on the wire. A parser that stopped at the first
/// extension header would get one of them wrong.
#[test]
fn ipv6_extension_headers_do_not_hide_the_udp_port_from_the_backstop() {
    if !have_root() {
        return;
    }
    let mut jail = Jail::prepare();
    let world = world(true);
    jail.attach(&world, "allow-ip = [fd00::5]:9999/udp\n");
    let (allowed, denied) = (
        SocketAddr::new(LAN_V6.into(), 9999),
        SocketAddr::new(LAN_V6.into(), 5064),
    );
    let denied_hits = world.hits(denied).len();
    let capture = world.capture().expect("start a capture");
    let before = jail.counters();
    for kind in ["hop", "dst"] {
        let n = world.hits(allowed).len();
        assert_eq!(
            jail.probe(
                &world,
                As::Root,
                &["raw-udp-ext", &allowed.to_string(), kind]
            ),
            "ok sent",
            "a raw UDP datagram with a {kind} options header to the allowed {allowed}/udp \
             passes the backstop"
        );
        assert!(
            wait_hits(&world, allowed, n + 1),
            "the datagram with a {kind} options header reaches the server on {allowed}"
        );
        assert_eq!(
            jail.probe(
                &world,
                As::Root,
                &["raw-udp-ext", &denied.to_string(), kind]
            ),
            "err EPERM",
            "a raw UDP datagram with a {kind} options header to {denied} is dropped: only \
             port 9999 of fd00::5 is allowed"
        );
    }
    let packets = capture.stop().expect("stop the capture");
    // The capture reports the first next header: 0 (hop-by-hop) or 60 (destination options).
    // ICMPv6 to fd00::5 is the host kernel's port unreachable for the server's reply.
    let to_lan: Vec<u8> = packets
        .iter()
        .filter(|p| p.dst == IpAddr::from(LAN_V6) && p.protocol != PROTO_ICMPV6)
        .map(|p| p.protocol)
        .collect();
    assert_eq!(
        to_lan,
        [0, 60],
        "exactly the two allowed datagrams (hop-by-hop, then destination options) reach \
         fd00::5: the capture sees them (so it would see a leak), and nothing else"
    );
    assert_eq!(
        world.hits(denied).len(),
        denied_hits,
        "nothing reached the server on {denied}"
    );
    assert_eq!(
        refused_delta(&before, &jail.counters()),
        [("skb-egress", 2)],
        "the two datagrams to port 5064 are refused by the backstop"
    );
}

/// Non-first fragments carry no port. The backstop (jail-ebpf `Port::Fragment`) looks them up
/// under the port-0 marker the policy compiler adds next to every `address:port/proto` entry
/// (Policy::decide_fragment): a fragment passes to an address allowed whole, or to an address
/// with some allowed port OF THAT PROTOCOL; it is dropped otherwise, the denied addresses'
/// fragments among them. The fragments' payload holds a port where a first fragment's header
/// would: the backstop must not read it as one.
#[test]
fn non_first_fragments_pass_only_where_the_policy_documents() {
    if !have_root() {
        return;
    }
    let mut jail = Jail::prepare();
    let world = world(true);
    jail.attach(
        &world,
        "allow-ip = 10.0.0.5\nallow-ip = 192.168.1.5:9999/udp\nallow-ip = [fd00::5]:9999/udp\n",
    );
    let policy = jail.policy.as_ref().unwrap();
    let (ten, one72, one92) = (LAN_V4[0], LAN_V4[1], LAN_V4[2]);
    let other_ula: Ipv6Addr = "fd00::6".parse().unwrap();
    // (destination whose port goes in the payload, protocol, passes, why)
    let cases: [(SocketAddr, &str, bool, &str); 8] = [
        (
            SocketAddr::new(ten.into(), 5064),
            "udp",
            true,
            "10.0.0.5 is allowed whole",
        ),
        (
            SocketAddr::new(ten.into(), 22),
            "tcp",
            true,
            "10.0.0.5 is allowed whole",
        ),
        (
            SocketAddr::new(one92.into(), 5064),
            "udp",
            true,
            "192.168.1.5 has an allowed UDP port (its marker); the payload's 5064 is no port",
        ),
        (
            SocketAddr::new(one92.into(), 9999),
            "tcp",
            false,
            "192.168.1.5 has no allowed TCP port (no TCP marker)",
        ),
        (
            SocketAddr::new(one72.into(), 9999),
            "udp",
            false,
            "172.16.0.5 is denied and has no entry",
        ),
        (
            SocketAddr::new(LAN_V6.into(), 5064),
            "udp",
            true,
            "fd00::5 has an allowed UDP port (its marker)",
        ),
        (
            SocketAddr::new(LAN_V6.into(), 9999),
            "tcp",
            false,
            "fd00::5 has no allowed TCP port",
        ),
        (
            SocketAddr::new(other_ula.into(), 9999),
            "udp",
            false,
            "fd00::6 is denied and has no entry",
        ),
    ];
    let capture = world.capture().expect("start a capture");
    let before = jail.counters();
    for (dest, proto, passes, why) in &cases {
        let proto_n = if *proto == "tcp" {
            PROTO_TCP
        } else {
            PROTO_UDP
        };
        assert_eq!(
            policy.decide_fragment(dest.ip(), proto_n).allowed,
            *passes,
            "the expectation for {dest} {proto} is what Policy::decide_fragment documents"
        );
        let src = match dest {
            SocketAddr::V4(_) => HOST_V4.to_string(),
            SocketAddr::V6(_) => HOST_V6.to_string(),
        };
        assert_eq!(
            jail.probe(
                &world,
                As::Root,
                &["raw-frag", &dest.to_string(), proto, &src]
            ),
            if *passes { "ok sent" } else { "err EPERM" },
            "a non-first {proto} fragment to {dest}: {why}"
        );
    }
    // On the wire: IPv4 fragments by (address, protocol); IPv6 fragments show next header 44
    // (the fragment header), so count them per address.
    let on_wire = |dest: &SocketAddr, proto: &str, p: &jail_tests::capture::Packet| {
        p.dst == dest.ip()
            && match dest {
                SocketAddr::V4(_) => {
                    p.protocol == if proto == "tcp" { PROTO_TCP } else { PROTO_UDP }
                }
                SocketAddr::V6(_) => p.protocol == 44,
            }
    };
    let want = |dest: &SocketAddr, passes: bool| match dest {
        SocketAddr::V4(_) => usize::from(passes),
        // Both fd00::5 fragments share (address, 44): one of the two passes.
        SocketAddr::V6(a) if *a.ip() == LAN_V6 => 1,
        SocketAddr::V6(_) => usize::from(passes),
    };
    // The fragments that pass cross the veth in the kernel's own time: wait for them.
    for (dest, proto, passes, _) in &cases {
        capture.wait_for(want(dest, *passes), |p| on_wire(dest, proto, p));
    }
    let packets = capture.stop().expect("stop the capture");
    for (dest, proto, passes, why) in &cases {
        let seen = packets.iter().filter(|p| on_wire(dest, proto, p)).count();
        let want = want(dest, *passes);
        assert_eq!(
            seen, want,
            "fragments of {proto} to {dest} on the wire ({why}): {packets:?}"
        );
    }
    let refused = cases.iter().filter(|c| !c.2).count() as u64;
    assert_eq!(
        refused_delta(&before, &jail.counters()),
        [("skb-egress", refused)],
        "each refused fragment is refused by the backstop"
    );
}

/// IP options: a UDP socket with a source route (LSRR via 10.0.0.5, SSRR via 192.168.1.5, which
/// is on the host's link as SSRR's first hop must be) sends to the public server. sendmsg4
/// judges the address given to sendto, the public one, and allows it; the kernel then addresses
/// the packet to the first hop (the final destination rides in the option). Without the
/// backstop the denied first hop receives it (the control, before the attach, sees it on the
/// wire); with it the packet is dropped.
///
/// This kernel refuses source-route options to a process without CAP_NET_RAW (setsockopt
/// IP_OPTIONS fails with EPERM, checked below), so the jail's unprivileged processes cannot
/// send such a packet at all; the backstop check runs the same ordinary UDP socket as root
/// (which keeps CAP_NET_RAW, as the raw-socket tests do), still through sendmsg4.
#[test]
fn source_routed_udp_is_judged_by_its_first_hop() {
    if !have_root() {
        return;
    }
    let mut jail = Jail::prepare();
    let world = world(false);
    let public = sa(PUBLIC_V4, 9999);
    let routes = [
        (LAN_V4[0], "lsrr"), // 10.0.0.5, via the gateway
        (LAN_V4[2], "ssrr"), // 192.168.1.5, on the uplink's subnet
    ];
    let send_all = |jail: &Jail, who: As| -> Vec<String> {
        routes
            .iter()
            .map(|(hop, kind)| {
                jail.probe(&world, who, &["udp-srr", &public, &hop.to_string(), kind])
            })
            .collect()
    };
    assert_eq!(
        send_all(&jail, As::Nobody),
        ["err IP_OPTIONS EPERM", "err IP_OPTIONS EPERM"],
        "the kernel refuses source routes to an unprivileged process"
    );
    // Control: no programs yet. The datagrams leave, addressed to the first hop.
    let capture = world.capture().expect("start a capture");
    assert_eq!(
        send_all(&jail, As::Root),
        ["ok sent", "ok sent"],
        "control: without programs the source-routed datagrams are sent"
    );
    for (hop, _) in routes {
        capture.wait_for(1, |p| p.dst == IpAddr::from(hop) && p.protocol == PROTO_UDP);
    }
    let packets = capture.stop().expect("stop the capture");
    for (hop, kind) in routes {
        assert!(
            packets
                .iter()
                .any(|p| p.dst == IpAddr::from(hop) && p.protocol == PROTO_UDP),
            "control: the {kind} datagram reaches the wire addressed to its first hop {hop} \
             (so the check below would see a leak): {packets:?}"
        );
    }

    jail.attach(&world, "");
    let capture = world.capture().expect("start a capture");
    let before = jail.counters();
    assert_eq!(
        send_all(&jail, As::Root),
        ["err EPERM", "err EPERM"],
        "with the jail, the backstop drops each source-routed datagram (its first hop is denied) \
         and sendto fails with EPERM"
    );
    let after = jail.counters();
    let packets = capture.stop().expect("stop the capture");
    for (hop, kind) in routes {
        let seen: Vec<_> = packets
            .iter()
            .filter(|p| p.dst == IpAddr::from(hop))
            .collect();
        assert!(
            seen.is_empty(),
            "no {kind} datagram may reach its denied first hop {hop}, saw {seen:?}"
        );
    }
    assert_eq!(
        after.allowed[Hook::Sendmsg4 as usize] - before.allowed[Hook::Sendmsg4 as usize],
        2,
        "sendmsg4 judged the public destination given to sendto, and allowed it"
    );
    assert_eq!(
        refused_delta(&before, &after),
        [("skb-egress", 2)],
        "the backstop refused both datagrams"
    );
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u64 = 18;
const BPF_CGROUP_INET4_CONNECT: u64 = 10;
const BPF_F_ALLOW_OVERRIDE: u64 = 1;
const BPF_F_ALLOW_MULTI: u64 = 2;

/// bpf(2) with a zero-padded 128-byte attribute buffer; returns what the call returned.
fn sys_bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> std::io::Result<i32> {
    // SAFETY: attr is a 128-byte buffer, larger than the attribute layouts used here.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128usize) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

/// A cgroup/connect4 program that allows everything (`r0 = 1; exit`), named cj_allow_all,
/// loaded with raw bpf(2).
fn load_allow_all_connect4() -> OwnedFd {
    use std::os::fd::FromRawFd;
    // struct bpf_insn, little-endian: code, dst/src registers, offset, immediate.
    let insns: [u64; 2] = [
        0x0000_0001_0000_00b7, // BPF_ALU64 | BPF_MOV | BPF_K: r0 = 1
        0x0000_0000_0000_0095, // BPF_JMP | BPF_EXIT
    ];
    let license = b"GPL\0";
    let mut name = [0u8; 16];
    name[..12].copy_from_slice(b"cj_allow_all");
    let mut attr = [0u64; 16];
    attr[0] = BPF_PROG_TYPE_CGROUP_SOCK_ADDR | (insns.len() as u64) << 32; // prog_type, insn_cnt
    attr[1] = insns.as_ptr() as u64; // insns
    attr[2] = license.as_ptr() as u64; // license
    attr[6] = u64::from_ne_bytes(name[..8].try_into().unwrap()); // prog_name
    attr[7] = u64::from_ne_bytes(name[8..].try_into().unwrap());
    attr[8] = BPF_CGROUP_INET4_CONNECT << 32; // prog_ifindex 0, expected_attach_type
    let fd = sys_bpf(BPF_PROG_LOAD, &mut attr).expect("load the allow-all connect4 program");
    // SAFETY: BPF_PROG_LOAD returned a new descriptor, ours to own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// BPF_PROG_ATTACH of `prog` to the cgroup at `cgroup` for connect4, with `flags`.
fn attach_connect4(cgroup: &Path, prog: &OwnedFd, flags: u64) -> std::io::Result<()> {
    let dir = fs::File::open(cgroup)?;
    let mut attr = [0u64; 16];
    attr[0] = dir.as_raw_fd() as u64 | (prog.as_raw_fd() as u64) << 32; // target, prog
    attr[1] = BPF_CGROUP_INET4_CONNECT | flags << 32; // attach_type, attach_flags
    sys_bpf(BPF_PROG_ATTACH, &mut attr).map(drop)
}

/// "No descendant cgroup can replace them": root attaches an allow-all connect4 program to a
/// child of the jail cgroup, with BPF_F_ALLOW_OVERRIDE and with BPF_F_ALLOW_MULTI. The jail's
/// programs are link-attached (multi), so the kernel runs them as well as the child's, and a
/// process in the child is still refused 10.0.0.5 (EPERM). The control is the same child under
/// a cgroup without programs: there the allow-all program is all that runs, and it connects.
#[test]
fn a_descendant_cgroup_cannot_replace_the_jails_programs() {
    if !have_root() {
        return;
    }
    let mut jail = Jail::prepare();
    let control = Jail::prepare();
    let world = world(false);
    jail.attach(&world, "");
    let lan = sa(LAN_V4[0], 22);
    let allow_all = ("cgroup_inet4_connect".to_owned(), "cj_allow_all".to_owned());
    let jails_connect4 = ("cgroup_inet4_connect".to_owned(), "connect4".to_owned());
    for (flags, flag_name) in [
        (BPF_F_ALLOW_OVERRIDE, "BPF_F_ALLOW_OVERRIDE"),
        (BPF_F_ALLOW_MULTI, "BPF_F_ALLOW_MULTI"),
    ] {
        for (parent, jailed) in [(&jail, true), (&control, false)] {
            // Emptied and removed on drop, before its parent's Jail.
            let child = TestCgroup::child(parent.cgroup.path(), &format!("child-{flags}"));
            let prog = load_allow_all_connect4();
            attach_connect4(child.path(), &prog, flags).unwrap_or_else(|e| {
                panic!("root attaches the allow-all program with {flag_name}: {e}")
            });
            let effective = cgroup_programs(child.path(), true);
            assert!(
                effective.contains(&allow_all),
                "the allow-all program is in effect on the child ({flag_name}): {effective:?}"
            );
            let before = jail.counters();
            let out = probe_in(&world, child.path(), As::Nobody, &["tcp", &lan]);
            if jailed {
                assert!(
                    effective.contains(&jails_connect4),
                    "the jail's connect4 still runs for its child ({flag_name}): {effective:?}"
                );
                assert_eq!(
                    out, "err EPERM",
                    "a process in a child of the jail cgroup whose connect4 program (attached \
                     with {flag_name}) allows everything is still refused {lan}"
                );
                assert_eq!(
                    refused_delta(&before, &jail.counters()),
                    [("connect4", 1)],
                    "refused by the jail's connect4"
                );
            } else {
                assert_eq!(
                    out,
                    greeting(LAN_V4[0], 22),
                    "control: under a cgroup without programs, the child's allow-all program \
                     ({flag_name}) lets the connect through"
                );
            }
        }
    }
    assert_eq!(
        cgroup_programs(jail.cgroup.path(), false),
        pairs(&FIVE),
        "the jail cgroup still has its five programs"
    );
}
