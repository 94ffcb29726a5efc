//! Integration tests of the fake world itself. Run as root inside `unshare --net --mount`:
//!     unshare --net --mount -- cargo test -p jail-tests --offline

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use jail_tests::dns::{self, Transport};
use jail_tests::netns::{assert_thread_in, start_netns_inode};
use jail_tests::probe::{tcp_connect, tcp_exchange, udp_exchange};
use jail_tests::servers::greeting;
use jail_tests::world::*;
use jail_tests::{have_root, FakeWorld, Proto};

const T: Duration = Duration::from_secs(3);

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

#[test]
fn refuses_to_configure_the_start_namespace() {
    // No root needed: the check itself, from a thread that never left the start namespace.
    let start = start_netns_inode().unwrap();
    let err = assert_thread_in(start).unwrap_err();
    assert!(err.to_string().contains("safety"), "{err:#}");
}

#[test]
fn public_server_answers_from_host() {
    if !have_root() {
        return;
    }
    let w = FakeWorld::builder().build().unwrap();
    w.in_host(|| {
        for port in TCP_PORTS {
            let line = tcp_connect(sa(PUBLIC_V4, port), T).unwrap();
            assert_eq!(format!("{line}\n"), greeting(sa(PUBLIC_V4, port)));
        }
        for port in UDP_PORTS {
            let reply = udp_exchange(sa(PUBLIC_V4, port), b"ping", T).unwrap();
            assert_eq!(
                reply,
                format!("{}ping", greeting(sa(PUBLIC_V4, port))).as_bytes()
            );
        }
        let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let echo = tcp_exchange(sa(PUBLIC_V4, ECHO_PORT), &payload, T).unwrap();
        assert_eq!(echo, payload, "half-close echo");
    })
    .unwrap();
    let hits = w.hits(PUBLIC_V4);
    assert_eq!(
        hits.len(),
        TCP_PORTS.len() + UDP_PORTS.len() + 1,
        "{hits:?}"
    );
    assert!(
        hits.iter().all(|h| h.peer.ip() == IpAddr::from(HOST_V4)),
        "{hits:?}"
    );
    assert_eq!(hits.iter().filter(|h| h.proto == Proto::Udp).count(), 2);
    assert_eq!(w.hits(sa(PUBLIC_V4, ECHO_PORT)).len(), 1);
    // Nobody else was contacted.
    for lan in LAN_V4 {
        assert!(w.hits(lan).is_empty(), "{lan}: {:?}", w.hits(lan));
    }
    w.shutdown().unwrap();
}

#[test]
fn every_fake_host_and_host_service_answers() {
    if !have_root() {
        return;
    }
    let w = FakeWorld::builder().build().unwrap();
    let hosts = w.fake_hosts();
    w.in_host(|| {
        for ip in &hosts {
            for port in TCP_PORTS {
                assert_eq!(
                    format!("{}\n", tcp_connect(sa(*ip, port), T).unwrap()),
                    greeting(sa(*ip, port))
                );
            }
            for port in UDP_PORTS {
                let r = udp_exchange(sa(*ip, port), b"x", T).unwrap();
                assert!(r.starts_with(greeting(sa(*ip, port)).as_bytes()));
            }
        }
        let lo = std::net::Ipv4Addr::LOCALHOST;
        for port in HOST_LOOPBACK_TCP_PORTS {
            assert_eq!(
                format!("{}\n", tcp_connect(sa(lo, port), T).unwrap()),
                greeting(sa(lo, port))
            );
        }
        udp_exchange(sa(lo, HOST_LOOPBACK_UDP_PORT), b"x", T).unwrap();
        for ip in [HOST_V4, HOST_EXTRA_V4] {
            tcp_connect(sa(ip, HOST_ADDR_TCP_PORT), T).unwrap();
        }
    })
    .unwrap();
    for ip in &hosts {
        assert_eq!(w.hits(*ip).len(), TCP_PORTS.len() + UDP_PORTS.len(), "{ip}");
    }
    assert_eq!(w.hits(std::net::Ipv4Addr::LOCALHOST).len(), 3);
    // The inet side must not see loopback traffic of the host.
    assert!(w.hits(GATEWAY_V4).is_empty());
}

#[test]
fn ipv6_world_answers() {
    if !have_root() {
        return;
    }
    let w = FakeWorld::builder().ipv6(true).build().unwrap();
    let server = w.dns_server();
    w.in_host(|| {
        for ip in [IpAddr::from(PUBLIC_V6), IpAddr::from(LAN_V6)] {
            assert_eq!(
                format!("{}\n", tcp_connect(sa(ip, 22), T).unwrap()),
                greeting(sa(ip, 22))
            );
            udp_exchange(sa(ip, 9999), b"six", T).unwrap();
        }
        let payload = vec![0x5a; 3000];
        assert_eq!(
            tcp_exchange(sa(PUBLIC_V6, ECHO_PORT), &payload, T).unwrap(),
            payload
        );
        let lo6 = std::net::Ipv6Addr::LOCALHOST;
        tcp_connect(sa(lo6, 8080), T).unwrap();
        let r = dns::query(server, "public.test.example", dns::AAAA, Transport::Udp, T).unwrap();
        assert_eq!(r.addrs, vec![IpAddr::from(PUBLIC_V6)]);
        let r = dns::query(server, "ula.test.example", dns::AAAA, Transport::Tcp, T).unwrap();
        assert_eq!(r.addrs, vec![IpAddr::from(LAN_V6)]);
    })
    .unwrap();
    assert!(w
        .hits(PUBLIC_V6)
        .iter()
        .all(|h| h.peer.ip() == IpAddr::from(HOST_V6)));
    assert_eq!(w.hits(LAN_V6).len(), 2);
}

#[test]
fn dnsmasq_answers_over_udp_and_tcp() {
    if !have_root() {
        return;
    }
    let w = FakeWorld::builder().build().unwrap();
    let server = w.dns_server();
    w.in_host(|| {
        for transport in [Transport::Udp, Transport::Tcp] {
            for (name, v4, _) in DNS_NAMES.into_iter().filter(|(_, v4, _)| v4.is_some()) {
                let r = dns::query(server, name, dns::A, transport, T).unwrap();
                assert_eq!(r.rcode, 0, "{name}");
                let want: Vec<IpAddr> = v4.into_iter().map(IpAddr::from).collect();
                assert_eq!(r.addrs, want, "{name} over {transport:?}");
            }
            // No AAAA without IPv6.
            let r = dns::query(server, "public.test.example", dns::AAAA, transport, T).unwrap();
            assert_eq!((r.rcode, r.addrs.len()), (0, 0));
            let r = dns::query(server, "nope.test.example", dns::A, transport, T).unwrap();
            assert_eq!(r.rcode, 3, "NXDOMAIN inside the test domain");
        }
        // The big answer is truncated over UDP and complete over TCP.
        let udp = dns::query(server, BIG_NAME, dns::A, Transport::Udp, T).unwrap();
        assert!(udp.truncated && udp.len <= 512, "{udp:?}");
        let tcp = dns::query(server, BIG_NAME, dns::A, Transport::Tcp, T).unwrap();
        assert!(!tcp.truncated && tcp.len > 512);
        let got: BTreeSet<IpAddr> = tcp.addrs.into_iter().collect();
        let want: BTreeSet<IpAddr> = big_addrs().into_iter().map(IpAddr::from).collect();
        assert_eq!(got, want);
    })
    .unwrap();
    let log = std::fs::read_to_string(w.dns_log_path()).unwrap();
    assert!(log.contains("query[A] big.test.example"), "{log}");
}

#[test]
fn host_command_sees_fake_resolv_conf_and_host_network() {
    if !have_root() {
        return;
    }
    let real_before = std::fs::read("/etc/resolv.conf").unwrap();
    let w = FakeWorld::builder().build().unwrap();
    let out = w
        .host_command("cat")
        .unwrap()
        .arg("/etc/resolv.conf")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), HOST_RESOLV_CONF);
    // The test's own mount namespace and the real file are untouched.
    assert_eq!(std::fs::read("/etc/resolv.conf").unwrap(), real_before);
    // The system resolver, in the host namespaces, resolves through dnsmasq.
    let out = w
        .host_command("getent")
        .unwrap()
        .args(["ahostsv4", "public"]) // via the search line
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("203.0.113.10"),
        "getent: {text:?} {:?}",
        out.status
    );
    // It runs in the host network namespace, and keeps the working directory.
    let out = w
        .host_command("sh")
        .unwrap()
        .args(["-c", "readlink /proc/self/ns/net; pwd"])
        .current_dir("/usr")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let want = format!("net:[{}]\n/usr\n", w.host().inode());
    assert_eq!(text, want);
}

#[test]
fn capture_sees_every_packet_to_a_fake_host() {
    if !have_root() {
        return;
    }
    let w = FakeWorld::builder().build().unwrap();
    let cap = w.capture().unwrap();
    w.in_host(|| {
        // A datagram to a port nobody serves, and a TCP connection.
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(b"nobody", sa(LAN_V4[0], 4444)).unwrap();
        tcp_connect(sa(LAN_V4[0], 22), T).unwrap();
    })
    .unwrap();
    let to = |proto: u8, port: u16| {
        move |p: &jail_tests::capture::Packet| {
            p.dst == IpAddr::from(LAN_V4[0]) && p.protocol == proto && p.dst_port == Some(port)
        }
    };
    assert!(cap.wait_for(1, to(17, 4444)) && cap.wait_for(1, to(6, 22)));
    let packets = cap.stop().unwrap();
    let to_lan: Vec<_> = packets
        .iter()
        .filter(|p| p.dst == IpAddr::from(LAN_V4[0]))
        .collect();
    assert!(
        to_lan
            .iter()
            .any(|p| p.protocol == 17 && p.dst_port == Some(4444)),
        "{packets:?}"
    );
    assert!(
        to_lan
            .iter()
            .any(|p| p.protocol == 6 && p.dst_port == Some(22)),
        "{packets:?}"
    );
    assert!(to_lan.iter().all(|p| p.src == IpAddr::from(HOST_V4)));
    assert!(!packets.iter().any(|p| p.dst == IpAddr::from(LAN_V4[1])));
}

/// What must be gone after a world is torn down.
struct Footprint {
    prefix: String,
    inodes: Vec<u64>,
    pids: Vec<u32>,
    dir: std::path::PathBuf,
}

fn footprint(w: &FakeWorld) -> Footprint {
    Footprint {
        prefix: w.prefix().to_owned(),
        inodes: vec![w.host().inode(), w.inet().inode()],
        pids: w.child_pids(),
        dir: w.dir().to_owned(),
    }
}

/// Every place in /proc that refers to one of `inodes`: a process's or thread's namespace, an
/// open file descriptor, a mount (in any process's mount namespace).
fn references(inodes: &[u64]) -> Vec<String> {
    let needles: Vec<String> = inodes.iter().map(|i| format!("net:[{i}]")).collect();
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let base = p.path();
        let mut links = Vec::new();
        if let Ok(tasks) = std::fs::read_dir(base.join("task")) {
            links.extend(tasks.flatten().map(|t| t.path().join("ns/net")));
        }
        if let Ok(fds) = std::fs::read_dir(base.join("fd")) {
            links.extend(fds.flatten().map(|f| f.path()));
        }
        for l in links {
            if let Ok(target) = std::fs::read_link(&l) {
                let t = target.to_string_lossy();
                if needles.iter().any(|n| *n == t) {
                    found.push(format!("{} -> {t}", l.display()));
                }
            }
        }
        if let Ok(mi) = std::fs::read_to_string(base.join("mountinfo")) {
            for line in mi
                .lines()
                .filter(|l| needles.iter().any(|n| l.contains(n.as_str())))
            {
                found.push(format!("{pid} mount: {line}"));
            }
        }
    }
    found
}

fn assert_gone(f: &Footprint) {
    let names: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let left: Vec<_> = names
        .iter()
        .filter(|n| n.starts_with(&format!("{}-", f.prefix)))
        .collect();
    assert!(left.is_empty(), "namespace files left: {left:?}");
    for pid in &f.pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} left"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&f.prefix), "mounts left:\n{mounts}");
    let refs = references(&f.inodes);
    assert!(
        refs.is_empty(),
        "references to the world's namespaces left: {refs:#?}"
    );
    assert!(
        !f.dir.exists(),
        "temporary directory {} left",
        f.dir.display()
    );
}

#[test]
fn teardown_leaves_nothing_behind() {
    if !have_root() {
        return;
    }
    // A second world stays up meanwhile: its mount-namespace holder must not keep the first
    // world's namespaces alive.
    let other = FakeWorld::builder().build().unwrap();
    let mut w = FakeWorld::builder().ipv6(true).build().unwrap();
    let jail = w.new_netns("jail").unwrap();
    let mut f = footprint(&w);
    f.inodes.push(jail.inode());
    assert!(f.pids.len() >= 2, "dnsmasq and the holder: {:?}", f.pids);
    assert!(
        !references(&f.inodes).is_empty(),
        "the check finds live worlds"
    );
    // An open connection must not hang teardown.
    let conn = w
        .in_host(|| std::net::TcpStream::connect(sa(PUBLIC_V4, 80)).unwrap())
        .unwrap();
    drop(jail);
    w.shutdown().unwrap();
    drop(conn); // the test's own socket would keep the host namespace alive
    assert_gone(&f);
    // The other world still works.
    other
        .in_host(|| tcp_connect(sa(PUBLIC_V4, 22), T))
        .unwrap()
        .unwrap();
    let g = footprint(&other);
    drop(other);
    assert_gone(&g);
}

#[test]
fn teardown_happens_when_a_test_panics() {
    if !have_root() {
        return;
    }
    let mut print = None;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let w = FakeWorld::builder().build().unwrap();
        print = Some(footprint(&w));
        w.in_host(|| panic!("test failure inside the host namespace"))
            .unwrap();
    }));
    assert!(r.is_err());
    assert_gone(&print.expect("world was built"));
}
