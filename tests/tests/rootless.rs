//! The nftables mode (issue 14): `claude-jail run` by a normal user, with no sudo and no
//! capability, as in a rootless devcontainer. The user (cjuser, made in the test's own /etc copy,
//! tests/src/sudo.rs) runs the launcher directly; /dev/net/tun is a 0666 node bound over the
//! machine's 0600 one in the test's private mount namespace, as stock distributions ship it.
use std::process::Output;

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

/// The eBPF mode's bypass checks that apply, from inside a rootless jail: each denied range is
/// refused at once, IPv4-mapped IPv6 and NAT64 forms of a denied address too, raw and packet
/// sockets cannot be made, the gateway and the host's own addresses are refused, a per-port
/// allow opens that port only, and the public server answers.
#[test]
fn a_normal_user_without_sudo_gets_a_jail_that_refuses_every_internal_range() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let probe = r#"
try() { if timeout 5 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; then echo "OPEN $1 $2"; else echo "SHUT $1 $2"; fi; }
id -u
try 203.0.113.10 80
try 10.0.0.5 80
try 10.0.0.5 22
try 172.16.0.5 22
try 169.254.169.254 80
try 192.168.1.1 80
try 192.168.1.100 8080
try ::ffff:10.0.0.5 80
try 64:ff9b::a00:5 80
python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)' 2>&1 | tail -1
python3 -c 'import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)' 2>&1 | tail -1
"#;
    let out = as_user(
        &world,
        "allow-ip = 10.0.0.5:22/tcp\n",
        &format!("$CJ run -- bash -c '{}'", probe.replace('\'', "'\\''")),
    );
    let o = String::from_utf8_lossy(&out.stdout);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{o}\n{e}");
    assert!(e.contains("enforced by nftables"), "the launch says which backend: {e}");
    assert!(o.lines().next() == Some("4242"), "the command runs as the user: {o}");
    for open in ["203.0.113.10 80", "10.0.0.5 22"] {
        assert!(o.contains(&format!("OPEN {open}")), "{open} is reachable: {o}");
    }
    for shut in [
        "10.0.0.5 80",
        "172.16.0.5 22",
        "169.254.169.254 80",
        "192.168.1.1 80",
        "192.168.1.100 8080",
        "::ffff:10.0.0.5 80",
        "64:ff9b::a00:5 80",
    ] {
        assert!(o.contains(&format!("SHUT {shut}")), "{shut} is refused: {o}");
    }
    assert_eq!(
        o.matches("PermissionError").count(),
        2,
        "raw and packet sockets are refused: {o}"
    );
}
