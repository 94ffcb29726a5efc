//! The nftables mode (issue 14): `claude-jail run` by a normal user, with no sudo and no
//! capability, as in a rootless devcontainer. The user (cjuser, made in the test's own /etc copy,
//! tests/src/sudo.rs) runs the launcher directly; /dev/net/tun is a 0666 node bound over the
//! machine's 0600 one in the test's private mount namespace, as stock distributions ship it.
use std::{fs, os::unix::fs::PermissionsExt, process::Output};

use jail_tests::{have_root, sudo::Sudo, FakeWorld};

/// `sh -c SCRIPT` as root in the world's host, with `conf` in /etc/claude-sandbox.conf and a
/// runtime directory /run/user/4242 of the test's own (the user's registry: tests that run at
/// the same time do not see each other's jails); in it,
/// `user CMD...` runs a command as cjuser (no sudo, no capability, sudo's variables unset) and
/// `$CJ` is claude-jail.
fn script(world: &FakeWorld, conf: &str, script: &str) -> Output {
    let sudo = Sudo::new(world, conf, "").unwrap();
    let tun = world.dir().join("tun");
    let setup = format!(
        "mknod -m 0666 {tun} c 10 200 && mount --bind {tun} /dev/net/tun || exit 1\n\
         mkdir -p /run/user/4242 && \
         mount -t tmpfs -o mode=0700,uid=4242,gid=4242 cjt-runtime /run/user/4242 || exit 1\n\
         user() {{ as_user env -u SUDO_UID -u SUDO_GID \"$@\"; }}\n{script}",
        tun = tun.display(),
    );
    let out = sudo.command(world, &setup).unwrap().output().unwrap();
    eprintln!(
        "--- stdout:\n{}\n--- stderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Where the user's processes and the script meet (the world's directory is root's).
fn shared_dir(world: &FakeWorld) -> std::path::PathBuf {
    let shared = world.dir().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    shared
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
    let out = script(
        &world,
        "allow-ip = 10.0.0.5:22/tcp\n",
        &format!(
            "user $CJ run -- sh -c 'id -u; python3 {}'",
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

/// One TCP connect from the jail: prints `open` or the errno's name.
const CONNECT: &str = r#"
import errno, socket, sys
s = socket.socket()
s.settimeout(3)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connect", sys.argv[1], "open")
except OSError as e:
    print("connect", sys.argv[1], errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout")
sys.stdout.flush()
"#;

/// Operations on a rootless jail, by its user, without root (issue 14, item 4): `status` lists
/// it (nftables backend), `events` shows its refusal naming the rule, `reload` brings the running
/// jail to a changed /etc/claude-sandbox.conf (a destination refused before is let through
/// after), and the user's registry and log are hidden from the jailed command.
#[test]
fn the_user_lists_reads_and_reloads_their_rootless_jail_without_root() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let shared = shared_dir(&world);
    let dir = shared.display().to_string();
    fs::write(shared.join("connect.py"), CONNECT).unwrap();
    fs::write(shared.join("reloaded.conf"), "allow-ip = 10.0.0.5:80/tcp\n").unwrap();
    let jailed = format!(
        "python3 {dir}/connect.py 10.0.0.5 80; ls /run/user/4242/claude-jail 2>&1 | head -1; \
         touch {dir}/ran; for i in $(seq 200); do [ -e {dir}/go ] && break; sleep 0.05; done; \
         python3 {dir}/connect.py 10.0.0.5 80"
    );
    // As root (the script), around the user's commands: the conf changes as an admin would.
    // The refusal reaches the log within a flush (250 ms): waited for, not slept.
    let out = script(
        &world,
        "",
        &format!(
            "user $CJ run -- sh -c '{jailed}' > {dir}/jail.out 2>&1 &\n\
             for i in $(seq 200); do [ -e {dir}/ran ] && break; sleep 0.05; done\n\
             echo '== status'; user $CJ status --json\n\
             for i in $(seq 200); do user $CJ events --json | grep -q 10.0.0.5 && break; \
               sleep 0.05; done\n\
             echo '== events'; user $CJ events --json\n\
             cat {dir}/reloaded.conf > /etc/claude-sandbox.conf\n\
             echo '== reload'; user $CJ reload; echo \"reload-exit=$?\"\n\
             touch {dir}/go; wait\n\
             echo '== jail'; cat {dir}/jail.out",
        ),
    );
    let o = String::from_utf8_lossy(&out.stdout);
    let section = |name: &str| {
        o.split(&format!("== {name}\n"))
            .nth(1)
            .unwrap_or("")
            .split("\n== ")
            .next()
            .unwrap_or("")
            .to_string()
    };
    let status = section("status");
    let listed: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{o}");
    assert!(
        listed[0]["backend"] == "nftables" && listed[0]["user"] == "cjuser",
        "status lists the user's jail and its backend: {o}"
    );
    let events = section("events");
    assert!(
        events.contains("10.0.0.5") && events.contains("10.0.0.0/8"),
        "events shows the refusal and the rule that refused it: {o}"
    );
    assert!(
        section("reload").contains("reloaded 1 running jail") && o.contains("reload-exit=0"),
        "reload brings the user's jail to the conf: {o}"
    );
    let jail = section("jail");
    let lines: Vec<&str> = jail.lines().filter(|l| l.starts_with("connect ")).collect();
    assert_eq!(
        lines,
        ["connect 10.0.0.5 EHOSTUNREACH", "connect 10.0.0.5 open"],
        "refused before the reload, let through after: {o}"
    );
    assert!(
        !jail.contains(".json") && !jail.contains("No such file"),
        "the user's registry is hidden (an empty directory) in the jail: {o}"
    );
}

/// `claude-jail check` by a user without sudo: the nftables mode is available (a real table
/// installed in a throwaway namespace of the user's), it is the backend a launch would choose,
/// and why; the whole check passes.
#[test]
fn the_users_check_says_the_rootless_mode_is_available() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let out = script(&world, "", "user $CJ check --json");
    let o = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    let check = |name: &str| {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no {name} check: {o}"))
            .clone()
    };
    assert_eq!(check("rootless")["ok"], true, "{o}");
    assert!(
        check("rootless")["detail"]
            .as_str()
            .unwrap()
            .contains("the nftables mode is available"),
        "{o}"
    );
    let backend = check("backend");
    assert!(
        backend["ok"] == true
            && backend["detail"]
                .as_str()
                .unwrap()
                .starts_with("nftables (auto: eBPF cannot be loaded here"),
        "{o}"
    );
    assert_eq!(v["ok"], true, "a jail can start: {o}");
    assert_eq!(out.status.code(), Some(0), "{o}");
}

/// A rootless jail's launcher killed with SIGKILL (it cannot clean up): the jail's processes and
/// pasta go with it (parent-death signals on the init and on pasta; the init takes its PID
/// namespace along), so nothing jailed runs on with its table's keeper gone.
#[test]
fn a_killed_launcher_leaves_no_jailed_process_and_no_pasta_behind() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let shared = shared_dir(&world);
    let dir = shared.display().to_string();
    // The patterns are put together at run time, so that they do not match this script's own
    // command line.
    let out = script(
        &world,
        "",
        &format!(
            "setpriv --reuid 4242 --regid 4242 --init-groups env -u SUDO_UID -u SUDO_GID \
               $CJ run -- sh -c 'touch {dir}/up; exec sleep \"$(echo 60)01\"' &\n\
             L=$!\n\
             for i in $(seq 200); do [ -e {dir}/up ] && break; sleep 0.05; done\n\
             ID=$(user $CJ status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0][\"id\"])')\n\
             P=\"sleep 60\"\"01\"\n\
             echo \"before: $(pgrep -fc \"$P\") $(pgrep -fc \"$ID\")\"\n\
             kill -9 $L\n\
             for i in $(seq 200); do pgrep -f \"$P|$ID\" >/dev/null || break; sleep 0.05; done\n\
             echo \"after: $(pgrep -fc \"$P\") $(pgrep -fc \"$ID\")\""
        ),
    );
    let o = String::from_utf8_lossy(&out.stdout);
    let counts = |label: &str| -> Vec<u32> {
        o.lines()
            .find_map(|l| l.strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label} line: {o}"))
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    assert!(
        counts("before: ").iter().all(|&n| n >= 1),
        "the jailed command and pasta (whose arguments name the jail) run: {o}"
    );
    assert_eq!(
        counts("after: "),
        [0, 0],
        "after the launcher's SIGKILL neither is left: {o}"
    );
}

/// The host's routing followed in the nftables mode: a route the host gains mid-session (a VPN
/// coming up) makes its range refused in the running jail, as in the eBPF mode.
#[test]
fn a_route_added_mid_session_is_refused_in_the_rootless_jail() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let shared = shared_dir(&world);
    fs::write(shared.join("connect.py"), CONNECT).unwrap();
    let dir = shared.display().to_string();
    let jailed = format!(
        "python3 {dir}/connect.py 203.0.113.10 80; touch {dir}/ran; \
         for i in $(seq 200); do [ -e {dir}/routed ] && break; sleep 0.05; done; \
         for i in $(seq 40); do r=$(python3 {dir}/connect.py 203.0.113.10 80); \
           case \"$r\" in *open) sleep 0.05;; *) echo \"$r after $i\"; break;; esac; done"
    );
    let out = script(
        &world,
        "",
        &format!(
            "user $CJ run -- sh -c '{jailed}' > {dir}/jail.out 2>&1 &\n\
             for i in $(seq 200); do [ -e {dir}/ran ] && break; sleep 0.05; done\n\
             ip route add 203.0.113.0/24 via 192.168.1.1 dev uplink0\n\
             touch {dir}/routed; wait; cat {dir}/jail.out"
        ),
    );
    let o = String::from_utf8_lossy(&out.stdout);
    assert!(
        o.contains("connect 203.0.113.10 open"),
        "reachable before: {o}"
    );
    assert!(
        o.lines()
            .any(|l| l.starts_with("connect 203.0.113.10 EHOSTUNREACH after")),
        "refused once the host routes it (within 40 tries, 50 ms apart): {o}"
    );
}
