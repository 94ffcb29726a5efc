//! The nftables backend (claude_jail::nft) against the real kernel.
//!
//! Each test builds two network namespaces of its own: "jail", where the table is installed
//! and the probes run, and "peer" behind a veth, which owns every address (AnyIP local routes
//! `local 0.0.0.0/0` and `local ::/0`), so any destination the jail's packets reach answers at
//! once: a TCP reset or an ICMP port unreachable (ECONNREFUSED), and nothing ever leaves the
//! two namespaces. A refused destination fails instead: a TCP connect with EHOSTUNREACH (IPv4,
//! at once) or EACCES (IPv6, after the SYN's first retransmission), from the ICMP
//! admin-prohibited the reject sends; a UDP send at once with EPERM, the drop's own error.
//!
//! Needs root; skips with a message otherwise. Run inside `unshare --net --mount`.
use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    os::fd::{AsFd, OwnedFd},
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::Duration,
};

use claude_jail::{
    conf,
    hostnet::HostNet,
    nft::{self, LogReader, Ruleset},
    policy::Policy,
};
use jail_common::{PROTO_TCP, PROTO_UDP};
use jail_tests::{
    netns::unique_prefix,
    random::{self, seed, Rng},
    world::{
        DNS_V4, GATEWAY_V4, HOST_EXTRA_V4, HOST_V4, LAN_V4, LAN_V6, METADATA_V4, PUBLIC_V4,
        PUBLIC_V6,
    },
    Netns,
};

const HELPER: &str = env!("CARGO_BIN_EXE_jail-nft");

/// The enforce test's policy (kernel_verdicts_equal_policy_decide_for_random_destinations).
const CONF: &str = "allow-ip = 10.0.0.0/24\nallow-ip = 192.168.1.5:5064/udp\n\
                    allow-ip = 172.16.0.5:22/tcp\nallow-ip = [fd00::5]:80/tcp\n\
                    deny-ip = 203.0.113.128/25\nallow-ip = 203.0.113.200\n";

/// How long a probe waits for an answer. The answers take a second at most (an IPv6 TCP
/// refusal); this only bounds a test that went wrong.
const WAIT: Duration = Duration::from_secs(3);

fn have_root() -> bool {
    jail_tests::have_root()
}

/// The jail and peer namespaces, joined by a veth: the jail is 192.168.1.100/24 and
/// 2001:db8:1::100/64 with 198.51.100.7 on lo (the fake world's host), its gateways
/// 192.168.1.1 and 2001:db8:1::1 are the peer, which owns every other address.
struct Pair {
    jail: Netns,
    /// Kept for its lifetime: deleted with the pair.
    _peer: Netns,
}

impl Pair {
    fn new() -> Pair {
        let prefix = unique_prefix();
        let jail = Netns::create(&format!("{prefix}-nftj")).expect("create the jail netns");
        let peer = Netns::create(&format!("{prefix}-nftp")).expect("create the peer netns");
        jail.ip_batch(&format!(
            "link add vj type veth peer name vp netns {peer}\n\
             addr add {HOST_V4}/24 dev vj\n\
             addr add 2001:db8:1::100/64 dev vj nodad\n\
             addr add {HOST_EXTRA_V4}/32 dev lo\n\
             link set vj up\n\
             route add default via {GATEWAY_V4}\n\
             route replace 192.168.1.0/24 via {GATEWAY_V4} dev vj onlink\n\
             route add default via 2001:db8:1::1\n",
            peer = peer.name()
        ))
        .expect("configure the jail netns");
        // The peer holds its gateway address alone (with the /24 of the fake world it
        // answered nothing for the rest of that subnet), and the jail sends its on-link
        // destinations to the gateway (the route above). The jail's own addresses stay the
        // jail's: more specific than the AnyIP routes, in the table that is looked up first.
        peer.ip_batch(&format!(
            "addr add {GATEWAY_V4}/32 dev vp\n\
             addr add 2001:db8:1::1/64 dev vp nodad\n\
             link set vp up\n\
             route add local 0.0.0.0/0 dev lo table local\n\
             route add local ::/0 dev lo table local\n\
             route add {HOST_V4}/32 dev vp table local\n\
             route add {HOST_EXTRA_V4}/32 via {HOST_V4} dev vp table local\n\
             route add 2001:db8:1::100/128 dev vp table local\n"
        ))
        .expect("configure the peer netns");
        // Port unreachables for every probe: no ICMP rate limit in the peer.
        peer.run(|| {
            for (file, value) in [
                ("/proc/sys/net/ipv4/icmp_ratelimit", "0"),
                ("/proc/sys/net/ipv4/icmp_ratemask", "0"),
                ("/proc/sys/net/ipv6/icmp/ratelimit", "0"),
            ] {
                std::fs::write(file, value).unwrap_or_else(|e| panic!("write {file}: {e}"));
            }
        })
        .expect("enter the peer");
        Pair { jail, _peer: peer }
    }

    /// The policy of `conf_text` for the jail namespace's network (read there).
    fn policy(&self, conf_text: &str) -> Policy {
        let conf =
            conf::parse(Path::new("nftables.conf"), conf_text.as_bytes()).expect("test conf");
        let host = self
            .jail
            .run(HostNet::read)
            .expect("enter the jail")
            .expect("read the jail's network");
        Policy::build(&conf, &host)
    }

    /// A NETLINK_NETFILTER socket of the jail namespace.
    fn socket(&self) -> OwnedFd {
        self.jail
            .run(nft::open_socket)
            .expect("enter the jail")
            .expect("open the socket")
    }
}

/// What became of one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// Reached the peer (ECONNREFUSED) or connected: not refused.
    Passed,
    /// Refused by the table: EHOSTUNREACH or EACCES for TCP, EPERM for a UDP send.
    Refused,
    /// The kernel refused before any packet was built (multicast, broadcast, a link-local
    /// address without a scope): no hook saw it.
    NotSent(i32),
    /// No answer within WAIT.
    Silent,
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// One attempt from the calling thread (which must be in the jail namespace).
fn attempt(dst: SocketAddr, proto: u8) -> Outcome {
    if proto == PROTO_TCP {
        return match TcpStream::connect_timeout(&dst, WAIT) {
            Ok(_) => Outcome::Passed,
            Err(e) => match errno_of(&e) {
                libc::ECONNREFUSED => Outcome::Passed,
                libc::EHOSTUNREACH | libc::EACCES => Outcome::Refused,
                _ if e.kind() == ErrorKind::TimedOut => Outcome::Silent,
                n => Outcome::NotSent(n),
            },
        };
    }
    let any: SocketAddr = if dst.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(any).expect("bind a UDP socket");
    if let Err(e) = s.connect(dst) {
        return Outcome::NotSent(errno_of(&e));
    }
    match s.send(b"x") {
        Err(e) if errno_of(&e) == libc::EPERM => return Outcome::Refused,
        Err(e) => return Outcome::NotSent(errno_of(&e)),
        Ok(_) => {}
    }
    s.set_read_timeout(Some(WAIT)).expect("set a timeout");
    let mut buf = [0u8; 16];
    match s.recv(&mut buf) {
        Ok(_) => Outcome::Passed,
        Err(e) => match errno_of(&e) {
            libc::ECONNREFUSED => Outcome::Passed,
            libc::EHOSTUNREACH | libc::EACCES => Outcome::Refused,
            libc::EAGAIN => Outcome::Silent,
            n => Outcome::NotSent(n),
        },
    }
}

/// The outcome of each case, tried from threads in the jail namespace (several at once: an
/// IPv6 TCP refusal takes a SYN retransmission, about a second, see docs/design.md).
fn attempts(jail: &Netns, cases: &[(IpAddr, u16, u8)]) -> Vec<Outcome> {
    let chunk = cases.len().div_ceil(12).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    jail.run(|| {
                        part.iter()
                            .map(|&(ip, port, proto)| attempt(SocketAddr::new(ip, port), proto))
                            .collect::<Vec<_>>()
                    })
                    .expect("enter the jail")
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a probe thread"))
            .collect()
    })
}

/// The destination the kernel puts on the packet: a connect to 0.0.0.0 or `::` goes to the
/// namespace's own loopback (so an nftables rule judges 127.0.0.1 or ::1, allowed as the
/// jail's own namespace, where the eBPF hooks judge the address the program gave).
fn on_the_wire(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(a) if a.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(a) if a.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
        _ => ip,
    }
}

/// Destinations drawn as the enforce test draws them ([`random::destinations`]), around this
/// world's hosts.
fn cases(rng: &mut Rng, n: usize) -> Vec<(IpAddr, u16, u8)> {
    let fixed: Vec<IpAddr> = [
        PUBLIC_V4.into(),
        PUBLIC_V6.into(),
        METADATA_V4.into(),
        LAN_V6.into(),
        DNS_V4.into(),
        HOST_V4.into(),
        HOST_EXTRA_V4.into(),
        GATEWAY_V4.into(),
        Ipv4Addr::new(192, 168, 1, 5).into(),
        Ipv4Addr::new(172, 16, 0, 5).into(),
        Ipv4Addr::new(203, 0, 113, 200).into(),
    ]
    .into_iter()
    .chain(LAN_V4.map(IpAddr::from))
    .chain(["::ffff:10.0.0.5", "::ffff:172.16.0.5"].map(|s| s.parse::<IpAddr>().unwrap()))
    .chain(random::EDGES.map(|s| s.parse::<IpAddr>().unwrap()))
    .collect();
    random::destinations(rng, &fixed, n)
}

#[test]
fn kernel_verdicts_equal_policy_decide_for_random_destinations() {
    if !have_root() {
        return;
    }
    let seed = seed();
    let mut rng = Rng(seed);
    let pair = Pair::new();
    let policy = pair.policy(CONF);
    let rs = Ruleset::compile(policy.map_entries());
    let sock = pair.socket();
    nft::install(sock.as_fd(), &rs).expect("install the ruleset");
    let cases = cases(&mut rng, 300);
    let outcomes = attempts(&pair.jail, &cases);
    let mut tally = BTreeMap::new();
    let mut wrong = Vec::new();
    let mut denied = 0;
    for (&(ip, port, proto), &got) in cases.iter().zip(&outcomes) {
        *tally.entry(got).or_insert(0) += 1;
        let wire = on_the_wire(ip);
        let want = policy.decide(wire, port, proto).allowed;
        denied += usize::from(!want);
        // The model of the installed chain must say the same (a second, independent check of
        // the compiler: the kernel and the model agree on every case below).
        assert_eq!(rs.allows(wire, port, proto), want, "{wire} {port} {proto}");
        let ok = match got {
            Outcome::Passed => want,
            Outcome::Refused => !want,
            // The kernel refused before our hook: acceptable only where the policy denies.
            Outcome::NotSent(_) => !want,
            Outcome::Silent => false,
        };
        if !ok {
            wrong.push(format!(
                "{ip} (on the wire {wire}) port {port} proto {proto}: kernel {got:?}, \
                 Policy::decide {}",
                if want { "allow" } else { "deny" }
            ));
        }
    }
    eprintln!("outcomes: {tally:?}");
    assert!(
        denied > 0 && denied < cases.len(),
        "the sample has both verdicts (seed {seed})"
    );
    assert!(
        tally.get(&Outcome::Refused).copied().unwrap_or(0) > cases.len() / 4,
        "most denied destinations are refused by the table itself (seed {seed}): {tally:?}"
    );
    assert!(
        wrong.is_empty(),
        "the kernel's verdict must equal Policy::decide (seed {seed}, rerun with \
         ENFORCE_SEED={seed}):\n{}",
        wrong.join("\n")
    );
}

/// The probes of the reload test: (destination, protocol, allowed by both policies).
const STEADY: [(&str, u8, bool); 6] = [
    ("10.9.0.7:80", PROTO_TCP, false),
    ("10.9.0.7:80", PROTO_UDP, false),
    ("[fd00::7]:53", PROTO_UDP, false),
    ("203.0.113.10:80", PROTO_TCP, true),
    ("203.0.113.10:53", PROTO_UDP, true),
    ("[2001:db8:ff::10]:53", PROTO_UDP, true),
];

#[test]
fn reload_replaces_the_rules_without_a_gap() {
    if !have_root() {
        return;
    }
    let pair = Pair::new();
    let a = Ruleset::compile(
        pair.policy(&format!("{CONF}allow-ip = 10.9.0.5\n"))
            .map_entries(),
    );
    let b = Ruleset::compile(
        pair.policy(&format!("{CONF}allow-ip = 10.9.0.6\n"))
            .map_entries(),
    );
    assert_ne!(a, b);
    let sock = pair.socket();
    nft::install(sock.as_fd(), &a).expect("install A");
    let stop = AtomicBool::new(false);
    let rounds = AtomicUsize::new(0);
    let (installs, wrong) = std::thread::scope(|s| {
        let prober = s.spawn(|| {
            pair.jail
                .run(|| {
                    let mut wrong = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        for (dst, proto, allowed) in STEADY {
                            let got = attempt(dst.parse().unwrap(), proto);
                            let want = if allowed {
                                Outcome::Passed
                            } else {
                                Outcome::Refused
                            };
                            if got != want {
                                wrong.push(format!("{dst} proto {proto}: {got:?}"));
                            }
                        }
                        rounds.fetch_add(1, Ordering::SeqCst);
                    }
                    wrong
                })
                .expect("enter the jail")
        });
        // Reload back and forth until the prober has gone round many times while reloads were
        // under way (a count, not a time).
        let mut installs = 0;
        while installs < 40 || rounds.load(Ordering::SeqCst) < 200 {
            let next = if installs % 2 == 0 { &b } else { &a };
            nft::install(sock.as_fd(), next).expect("reload");
            installs += 1;
        }
        nft::install(sock.as_fd(), &b).expect("the last reload");
        stop.store(true, Ordering::SeqCst);
        (installs, prober.join().expect("the prober"))
    });
    eprintln!(
        "{installs} reloads during {} probe rounds",
        rounds.load(Ordering::SeqCst)
    );
    assert!(
        wrong.is_empty(),
        "during reloads, a steady verdict changed:\n{}",
        wrong.join("\n")
    );
    // The reloads took effect: B is in force now.
    let now = pair
        .jail
        .run(|| {
            [
                attempt("10.9.0.5:80".parse().unwrap(), PROTO_UDP),
                attempt("10.9.0.6:80".parse().unwrap(), PROTO_UDP),
            ]
        })
        .expect("enter the jail");
    assert_eq!(now, [Outcome::Refused, Outcome::Passed]);
}

#[test]
fn refusals_are_logged_with_destination_protocol_and_port() {
    if !have_root() {
        return;
    }
    let pair = Pair::new();
    let policy = pair.policy(CONF);
    let rs = Ruleset::compile(policy.map_entries());
    let sock = pair.socket();
    nft::install(sock.as_fd(), &rs).expect("install");
    let group = rs.log_group;
    let mut reader = pair
        .jail
        .run(|| LogReader::open(group))
        .expect("enter the jail")
        .expect("bind the nflog group");
    // An allowed attempt first: it must leave no record, so the first record is the refusal.
    let cases: [(&str, u8, &str); 5] = [
        ("10.1.2.3:22", PROTO_TCP, "deny 10.0.0.0/8 (default)"),
        ("[fd00::7]:53", PROTO_UDP, "deny fc00::/7 (default)"),
        (
            "[64:ff9b::a09:5]:443",
            PROTO_TCP,
            "deny 10.0.0.0/8 (default)",
        ),
        (
            "169.254.169.254:80",
            PROTO_UDP,
            "deny 169.254.0.0/16 (default)",
        ),
        (
            "[::ffff:172.16.0.5]:23",
            PROTO_TCP,
            "deny 172.16.0.0/12 (default)",
        ),
    ];
    let mut seen: Vec<nft::LoggedPacket> = Vec::new();
    for (dst, proto, rule) in cases {
        let dst: SocketAddr = dst.parse().unwrap();
        let outcomes = pair
            .jail
            .run(|| {
                [
                    attempt("203.0.113.10:80".parse().unwrap(), proto),
                    attempt(dst, proto),
                ]
            })
            .expect("enter the jail");
        assert_eq!(outcomes, [Outcome::Passed, Outcome::Refused], "{dst}");
        let wire = SocketAddr::new(dst.ip().to_canonical(), dst.port());
        // The test runs as root: the socket's owner is uid 0.
        let want = nft::LoggedPacket {
            dst: wire.ip(),
            proto,
            port: wire.port(),
            uid: Some(0),
        };
        // A retransmitted SYN of an earlier case may be logged again: skip those.
        let got = loop {
            let r = reader
                .next(Some(Duration::from_secs(5)))
                .expect("read nflog")
                .unwrap_or_else(|| panic!("no record of the refusal of {dst}"));
            if !seen.contains(&r) {
                break r;
            }
        };
        assert_eq!(got, want, "the record of {dst}");
        let d = policy.decide(got.dst, got.port, got.proto);
        assert!(
            !d.allowed,
            "{dst}: the logged packet is one the policy denies"
        );
        assert_eq!(policy.describe(d.rule.unwrap()), rule, "{dst}");
        seen.push(got);
    }
}

/// Runs the helper against the jail namespace and returns its line.
fn helper(pair: &Pair, args: &[&str]) -> String {
    let out = Command::new(HELPER)
        .arg(pair.jail.path())
        .args(args)
        .output()
        .expect("run jail-nft");
    assert!(
        out.status.success(),
        "jail-nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn a_process_without_cap_net_admin_cannot_replace_the_table() {
    if !have_root() {
        return;
    }
    let pair = Pair::new();
    let rs = Ruleset::compile(pair.policy(CONF).map_entries());
    let sock = pair.socket();
    let refused = |pair: &Pair| {
        pair.jail
            .run(|| attempt("10.9.0.5:80".parse().unwrap(), PROTO_UDP))
            .expect("enter the jail")
    };
    // The helper can replace the table when it holds CAP_NET_ADMIN (so the refusals below are
    // about capabilities, not a broken helper): the empty table lets everything through.
    nft::install(sock.as_fd(), &rs).expect("install");
    assert_eq!(refused(&pair), Outcome::Refused);
    assert_eq!(helper(&pair, &[]), "ok");
    assert_eq!(refused(&pair), Outcome::Passed);
    nft::install(sock.as_fd(), &rs).expect("install again");
    for args in [&["--as-nobody"][..], &["--as-nobody", "--new-userns"]] {
        let line = helper(&pair, args);
        assert!(line.starts_with("err EPERM"), "jail-nft {args:?}: {line}");
        assert_eq!(refused(&pair), Outcome::Refused, "after jail-nft {args:?}");
    }
}

#[test]
fn a_large_policy_installs_and_judges_its_last_entries() {
    if !have_root() {
        return;
    }
    let pair = Pair::new();
    // 3,000 single addresses with a gap between each: 3,000 ranges, 6,000 set elements,
    // spread over several messages of one batch.
    let mut text = String::from(CONF);
    for i in 0..3000u32 {
        let [_, _, c, d] = (2 * i).to_be_bytes();
        text.push_str(&format!("deny-ip = 100.128.{c}.{d}\n"));
    }
    let policy = pair.policy(&text);
    let rs = Ruleset::compile(policy.map_entries());
    assert!(rs.deny4.len() > 3000, "{}", rs.deny4.len());
    let sock = pair.socket();
    nft::install(sock.as_fd(), &rs).expect("install a large policy");
    let probes = [
        ("100.128.0.0:80", false),
        ("100.128.0.1:80", true),
        ("100.128.23.110:80", false), // 2 * 2999 = 5998 = 0x176e
        ("100.128.23.111:80", true),
        ("100.128.23.112:80", true),
        ("203.0.113.10:80", true),
    ];
    let got = pair
        .jail
        .run(|| probes.map(|(dst, _)| attempt(dst.parse().unwrap(), PROTO_UDP)))
        .expect("enter the jail");
    for ((dst, allowed), got) in probes.iter().zip(got) {
        let a: SocketAddr = dst.parse().unwrap();
        assert_eq!(
            policy.decide(a.ip(), a.port(), PROTO_UDP).allowed,
            *allowed,
            "{dst}"
        );
        let want = if *allowed {
            Outcome::Passed
        } else {
            Outcome::Refused
        };
        assert_eq!(got, want, "{dst}");
    }
    // And back to the small policy: the large sets are emptied.
    nft::install(
        sock.as_fd(),
        &Ruleset::compile(pair.policy(CONF).map_entries()),
    )
    .expect("reload the small policy");
    let now = pair
        .jail
        .run(|| attempt("100.128.0.0:80".parse().unwrap(), PROTO_UDP))
        .expect("enter the jail");
    assert_eq!(now, Outcome::Passed);
}

/// Runs the helper in its rootless form (no namespace of the test's: it makes its own).
fn rootless(args: &[&str]) -> Vec<String> {
    let out = Command::new(HELPER)
        .arg("--rootless")
        .args(args)
        .output()
        .expect("run jail-nft");
    assert!(
        out.status.success(),
        "jail-nft --rootless {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn an_unprivileged_user_installs_in_its_own_namespaces_and_a_nested_userns_cannot_change_it() {
    if !have_root() {
        return;
    }
    // uid 65534 makes a user namespace and a network namespace it owns: the rootless launcher.
    let lines = rootless(&["--lift", "--log", "--nested"]);
    assert_eq!(lines[..3], ["install ok", "lift ok", "log ok"], "{lines:?}");
    assert!(lines[3].starts_with("nested err EPERM"), "{lines:?}");
    // The size limit of an unprivileged socket: a batch over net.core.wmem_max is refused
    // whole, with the error that says so (and a policy well under it installs).
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
        .expect("read wmem_max")
        .trim()
        .parse()
        .expect("a number");
    let fits = rootless(&["--ranges", "2000"]);
    assert_eq!(fits, ["install ok"]);
    if wmem_max > 4 << 20 {
        eprintln!("wmem_max is {wmem_max}: the oversized policy is not tried (too slow to build)");
        return;
    }
    // Each range is two elements of about 24 bytes; twice wmem_max is what the kernel grants.
    let too_many = (2 * wmem_max / 40 + 1000).to_string();
    let refused = rootless(&["--ranges", &too_many]);
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0].starts_with("install err EMSGSIZE"),
        "{too_many} ranges: {refused:?}"
    );
}

/// A counter of TcpExt in /proc/net/netstat of the calling thread's namespace.
fn tcp_ext(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/netstat").expect("read netstat");
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("no {name} in netstat"));
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Shown failing without the lift: 300 refusals took 5 s, 5 of them after a retransmission.
#[test]
fn refusals_fail_at_once_in_a_burst_once_the_icmp_limit_is_lifted() {
    if !have_root() {
        return;
    }
    let pair = Pair::new();
    let rs = Ruleset::compile(pair.policy(CONF).map_entries());
    let sock = pair.socket();
    nft::install(sock.as_fd(), &rs).expect("install");
    let (tally, retransmitted) = pair
        .jail
        .run(|| {
            nft::lift_icmp_rate_limit().expect("lift the ICMP rate limit");
            let before = tcp_ext("TCPSynRetrans");
            let mut tally = BTreeMap::new();
            // Well past the default burst of 50, as fast as the loop goes.
            for i in 0..300u32 {
                let a = Ipv4Addr::from(0x0a09_0000 + i);
                let got = attempt(SocketAddr::new(a.into(), 80), PROTO_TCP);
                *tally.entry(got).or_insert(0) += 1;
            }
            (tally, tcp_ext("TCPSynRetrans") - before)
        })
        .expect("enter the jail");
    assert_eq!(tally, BTreeMap::from([(Outcome::Refused, 300)]));
    assert_eq!(
        retransmitted, 0,
        "every refused connect failed on its first SYN (a count, not a time)"
    );
}
