//! The nftables mode (issue 14): `claude-jail run` by a normal user, with no sudo and no
//! capability, as in a rootless devcontainer. The user (cjuser, made in the test's own /etc copy,
//! tests/src/sudo.rs) runs the launcher directly; /dev/net/tun is a 0666 node bound over the
//! machine's 0600 one in the test's private mount namespace, as stock distributions ship it.
use std::{fs, process::Output};

use jail_tests::{have_root, sudo::Sudo, FakeWorld};

/// `sh -c SCRIPT` as cjuser, without sudo, with `egress-jail` on and `conf` in
/// /etc/claude-sandbox.conf; `$CJ` is claude-jail.
fn as_user(world: &FakeWorld, conf: &str, script: &str) -> Output {
    let sudo = Sudo::new(world, conf, "").unwrap();
    let tun = world.dir().join("tun");
    let setup = format!(
        "mknod -m 0666 {tun} c 10 200 && mount --bind {tun} /dev/net/tun || exit 1\n\
         export CJ; as_user env -u SUDO_UID -u SUDO_GID sh -c '{script}'",
        tun = tun.display(),
        script = script.replace('\'', "'\\''")
    );
    let out = sudo.command(world, &setup).unwrap().output().unwrap();
    eprintln!(
        "--- stdout:\n{}\n--- stderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The probe, in the jail: one line per check, `WHAT RESULT` where RESULT is `open`, or the
/// errno's name (EHOSTUNREACH: refused at once by the table's reject; ECONNREFUSED: reached a
/// host that has no listener), or `timeout`.
const PROBE: &str = r#"
import errno, signal, socket, subprocess, sys
signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(OSError(0, "timeout")))
def name(e):
    return errno.errorcode.get(e.errno, str(e)) if e.errno else "timeout"
def tcp(host, port, fastopen=False):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    # Blocking for a Fast Open send (it waits for the handshake); an alarm bounds it.
    s.settimeout(None if fastopen else 3)
    signal.alarm(5)
    try:
        if fastopen:
            s.sendto(b"x", socket.MSG_FASTOPEN, (host, port))
        else:
            s.connect((host, port))
        return "open"
    except OSError as e:
        return name(e)
def udp(host, port):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        s.connect((host, port))
        s.send(b"probe\n")
        s.recv(100)
        return "open"
    except OSError as e:
        return name(e)
def sock(*a):
    try:
        socket.socket(*a)
        return "made"
    except OSError as e:
        return name(e)
checks = [
    ("public-tcp", tcp("203.0.113.10", 80)),
    ("public-v6", tcp("2001:db8:ff::10", 80)),
    ("allowed-port", tcp("10.0.0.5", 22)),
    ("lan-10", tcp("10.0.0.5", 80)),
    ("lan-172", tcp("172.16.0.5", 22)),
    ("lan-192", tcp("192.168.1.5", 22)),
    ("cgnat", tcp("100.64.0.5", 22)),
    ("metadata", tcp("169.254.169.254", 80)),
    ("ula-v6", tcp("fd00::5", 80)),
    ("gateway", tcp("192.168.1.1", 80)),
    ("host-addr", tcp("192.168.1.100", 8080)),
    ("host-extra", tcp("198.51.100.7", 8080)),
    ("host-loopback", tcp("127.0.0.1", 8080)),
    ("mapped", tcp("::ffff:10.0.0.5", 80)),
    ("nat64", tcp("64:ff9b::a00:5", 80)),
    ("fastopen", tcp("10.0.0.5", 80, fastopen=True)),
    ("udp-lan", udp("10.0.0.5", 5064)),
    ("udp-metadata", udp("169.254.169.254", 53)),
    ("raw", sock(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
    ("packet", sock(socket.AF_PACKET, socket.SOCK_RAW, 0)),
]
for what, got in checks:
    print(what, got)
nested = subprocess.run(["unshare", "-Ur", "nft", "flush", "ruleset"], capture_output=True)
print("nested-flush", "ok" if nested.returncode == 0 else "refused")
nested = subprocess.run(["unshare", "-Ur", "nft", "add", "table", "inet", "mine"], capture_output=True)
print("nested-add", "ok" if nested.returncode == 0 else "refused")
print("after-nested", tcp("10.0.0.5", 80))
sys.stdout.flush()
"#;

/// The eBPF mode's bypass checks that apply, from inside a rootless jail (issue 14): each
/// denied range is refused at once (EHOSTUNREACH: the table's reject, never a timeout), so are
/// the IPv4-mapped and NAT64 forms of a denied address, a TCP Fast Open send, UDP, the gateway,
/// the host's addresses and its loopback; raw and packet sockets cannot be made; a per-port
/// allow opens that port only; the public servers answer; and a nested user namespace inside
/// the jail can neither flush nor add to the table, which still refuses afterwards.
#[test]
fn a_normal_user_without_sudo_gets_a_jail_that_refuses_every_internal_range() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().ipv6(true).build().unwrap();
    fs::write(world.dir().join("probe.py"), PROBE).unwrap();
    let out = as_user(
        &world,
        "allow-ip = 10.0.0.5:22/tcp\n",
        &format!(
            "$CJ run -- sh -c 'id -u; python3 {}'",
            world.dir().join("probe.py").display()
        ),
    );
    let o = String::from_utf8_lossy(&out.stdout);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{o}\n{e}");
    assert!(
        e.contains("enforced by nftables"),
        "the launch says which backend: {e}"
    );
    assert_eq!(
        o.lines().next(),
        Some("4242"),
        "the command runs as the user: {o}"
    );
    let got = |what: &str| {
        o.lines()
            .find_map(|l| l.strip_prefix(&format!("{what} ")))
            .unwrap_or_else(|| panic!("no {what} line: {o}"))
            .to_string()
    };
    for open in ["public-tcp", "public-v6", "allowed-port"] {
        assert_eq!(got(open), "open", "{open}: {o}");
    }
    // Refused at once: TCP gets the reject's ICMP (EHOSTUNREACH, EACCES for IPv6), a datagram
    // the dropped send (EPERM). A timeout would mean a silent drop.
    let refused_now = ["EHOSTUNREACH", "EACCES", "EPERM"];
    for refused in [
        "lan-10",
        "lan-172",
        "lan-192",
        "cgnat",
        "metadata",
        "ula-v6",
        "gateway",
        "host-extra",
        "mapped",
        "nat64",
        "fastopen",
        "udp-lan",
        "udp-metadata",
        "after-nested",
    ] {
        assert!(
            refused_now.contains(&got(refused).as_str()),
            "{refused} is refused at once: {o}"
        );
    }
    // The host's loopback is not the jail's; the host's address is the jail's own (pasta copies
    // it): neither reaches the host's listener.
    for local in ["host-loopback", "host-addr"] {
        assert_ne!(got(local), "open", "{local}: {o}");
    }
    for sock in ["raw", "packet"] {
        assert_eq!(got(sock), "EPERM", "{sock} sockets cannot be made: {o}");
    }
    for nested in ["nested-flush", "nested-add"] {
        assert_eq!(got(nested), "refused", "{nested}: {o}");
    }
}
