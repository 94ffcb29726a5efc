//! The chosen pasta must carry half-closed TCP streams intact: 50 connections from a jail
//! namespace through pasta to the fake public server's half-close echo, each sending a request
//! then shutdown(SHUT_WR); every reply must be byte-exact and end in EOF.
//! Run as root inside `unshare --net --mount`.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use jail_tests::pasta::{locate_pasta, process_running, Pasta, BOOKWORM_PASTA};
use jail_tests::world::{ECHO_PORT, HOST_V4, PUBLIC_V4};
use jail_tests::{have_root, FakeWorld, Netns};

const CONNECTIONS: usize = 50;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Request `i`: 1-250 KiB of bytes that differ from one connection to the next (trixie's pasta
/// truncated replies of 100 KB and more; bookworm's corrupted even small ones).
fn request(i: usize) -> Vec<u8> {
    let len = 1024 + (i * 249 * 1024 / CONNECTIONS) + i;
    let mut x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(12_345);
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 16) as u8
        })
        .collect()
}

/// One exchange: connect, write the request, shutdown(SHUT_WR), read until EOF. Returns the
/// description of what went wrong, if anything.
fn exchange(i: usize) -> Option<String> {
    let req = request(i);
    let server = SocketAddr::new(PUBLIC_V4.into(), ECHO_PORT);
    let mut got = Vec::new();
    let result = (|| -> std::io::Result<()> {
        let mut s = TcpStream::connect_timeout(&server, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.set_write_timeout(Some(TIMEOUT))?;
        s.write_all(&req)?;
        s.shutdown(Shutdown::Write)?;
        // Returns Ok only at EOF.
        s.read_to_end(&mut got).map(|_| ())
    })();
    let what = match (&result, got == req) {
        (Ok(()), true) => return None,
        (Ok(()), false) => "then EOF",
        (Err(_), _) => "and no EOF",
    };
    let shape = if got == req {
        "the exact request"
    } else if got.starts_with(&req) {
        "the request then extra bytes"
    } else if req.starts_with(&got) {
        "a prefix of the request"
    } else {
        "different bytes"
    };
    Some(format!(
        "connection {i}: sent {} bytes, got {} ({shape}) {what}{}",
        req.len(),
        got.len(),
        result.err().map(|e| format!(": {e}")).unwrap_or_default()
    ))
}

/// The jail has pasta's interface with an address and a default route.
fn jail_has_default_route(jail: &Netns) -> bool {
    jail.run(|| {
        std::fs::read_to_string("/proc/thread-self/net/route")
            .map(|r| {
                r.lines()
                    .skip(1)
                    .any(|l| l.split_whitespace().nth(1) == Some("00000000"))
            })
            .unwrap_or(false)
    })
    .unwrap()
}

/// Runs the half-close exchanges through `pasta_bin`, concurrently or one after the other, and
/// returns the failures.
fn half_close_through(pasta_bin: &Path, concurrent: bool) -> Vec<String> {
    let mut world = FakeWorld::builder().build().unwrap();
    let jail = world.new_netns("jail").unwrap();
    let mut pasta = Pasta::attach(&world, &jail, pasta_bin).unwrap();
    assert!(
        jail_has_default_route(&jail),
        "pasta returned before configuring the jail; log: {}",
        pasta.log_text()
    );
    let failures: Vec<String> = jail
        .run(|| {
            if concurrent {
                // Threads spawned here inherit the jail's network namespace.
                let handles: Vec<_> = (0..CONNECTIONS)
                    .map(|i| std::thread::spawn(move || exchange(i)))
                    .collect();
                handles
                    .into_iter()
                    .filter_map(|h| h.join().expect("exchange thread"))
                    .collect()
            } else {
                (0..CONNECTIONS).filter_map(exchange).collect()
            }
        })
        .unwrap();
    // Every connection went through pasta: the server saw the host's address, not the jail.
    let hits = world.hits(SocketAddr::new(PUBLIC_V4.into(), ECHO_PORT));
    assert_eq!(hits.len(), CONNECTIONS, "{hits:?}");
    assert!(hits.iter().all(|h| h.peer.ip() == IpAddr::from(HOST_V4)));
    let pid = pasta.pid().expect("pasta pid");
    pasta.stop().unwrap();
    assert!(!process_running(pid), "pasta {pid} still running");
    drop(jail);
    world.shutdown().unwrap();
    failures
}

fn chosen_pasta() -> std::path::PathBuf {
    locate_pasta().unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn chosen_pasta_keeps_half_closed_streams_concurrent() {
    if !have_root() {
        return;
    }
    let failures = half_close_through(&chosen_pasta(), true);
    assert!(
        failures.is_empty(),
        "{} of {CONNECTIONS} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn chosen_pasta_keeps_half_closed_streams_sequential() {
    if !have_root() {
        return;
    }
    let failures = half_close_through(&chosen_pasta(), false);
    assert!(
        failures.is_empty(),
        "{} of {CONNECTIONS} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Documents why the repository builds its own pasta: bookworm's passt 0.0~git20230309
/// duplicates replies and loses end-of-stream on half-closed connections (measured: 12 of 45
/// connections; none without pasta). Expected to FAIL; run with `--ignored` to see it.
#[test]
#[ignore = "bookworm's /usr/bin/pasta corrupts half-closed streams; this test documents it and is expected to fail"]
fn bookworm_pasta_corrupts_half_closed_streams() {
    if !have_root() {
        return;
    }
    let failures = half_close_through(Path::new(BOOKWORM_PASTA), true);
    assert!(
        failures.is_empty(),
        "{} of {CONNECTIONS} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// With the options Pasta::attach uses, the jail cannot reach the host's loopback services:
/// not through the gateway address (--no-map-gw, --map-host-loopback none), not through its
/// own 127.0.0.1/::1 (-T/-U none). Checked at the servers (no hit) and by the probe's result.
#[test]
fn chosen_pasta_does_not_map_host_loopback() {
    if !have_root() {
        return;
    }
    use jail_tests::probe::{tcp_connect, udp_exchange};
    use jail_tests::world::{GATEWAY_V4, HOST_LOOPBACK_TCP_PORTS, HOST_LOOPBACK_UDP_PORT};
    let mut world = FakeWorld::builder().ipv6(true).build().unwrap();
    let jail = world.new_netns("jail").unwrap();
    let pasta = Pasta::attach(&world, &jail, &chosen_pasta()).unwrap();
    let short = Duration::from_millis(500);
    let results = jail
        .run(|| {
            let mut r = Vec::new();
            for ip in [
                IpAddr::from(GATEWAY_V4),
                IpAddr::from(std::net::Ipv4Addr::LOCALHOST),
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            ] {
                for port in HOST_LOOPBACK_TCP_PORTS {
                    let a = SocketAddr::new(ip, port);
                    r.push((
                        a,
                        tcp_connect(a, short).map(|_| ()).map_err(|e| e.to_string()),
                    ));
                }
                let a = SocketAddr::new(ip, HOST_LOOPBACK_UDP_PORT);
                r.push((
                    a,
                    udp_exchange(a, b"x", short)
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                ));
            }
            r
        })
        .unwrap();
    for (a, r) in &results {
        assert!(
            r.is_err(),
            "{a} answered from the jail: {}",
            pasta.args().join(" ")
        );
    }
    let leaked: Vec<_> = world
        .all_hits()
        .into_iter()
        .filter(|h| h.local.ip().is_loopback())
        .collect();
    assert!(leaked.is_empty(), "host loopback reached: {leaked:?}");
    drop(pasta);
    drop(jail);
    world.shutdown().unwrap();
}
