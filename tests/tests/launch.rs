//! `claude-jail run` end to end, in the fake world: the jailed command
//! reaches the internet and DNS and nothing internal; it cannot undo the jail; the conf's port
//! openings work in their direction only; sudo from a normal account; every fail-closed case.
//!
//! Every claude-jail runs in the world's host namespaces (`jail_tests::jail`). Probes inside the
//! jail use socat (`p PROTO HOST PORT` prints one `R` line with what came back); every fake host
//! greets with `hello from ADDR:PORT`, so "reached" means a real server answered, and
//! `world.hits` shows the fake host saw nothing for what was refused.
use std::{
    collections::BTreeMap, fs, net::IpAddr, os::unix::fs::PermissionsExt, path::Path,
    process::Output,
};

use jail_tests::{
    have_root,
    jail::{
        claude_jail, claude_jail_after, jail_ids, leftovers, run_jailed, write_conf, PRINT_JAIL_ID,
    },
    world::{
        big_addrs, GATEWAY_V4, GATEWAY_V6, HOST_EXTRA_V4, HOST_V4, HOST_V6, LAN_V4, LAN_V6,
        PUBLIC_V4, PUBLIC_V6,
    },
    FakeWorld,
};

const PROBE: &str = env!("CARGO_BIN_EXE_jail-probe");

/// `p PROTO HOST PORT`: one socat exchange; prints `R PROTO HOST PORT <what came back>`.
const PROBE_FN: &str = r#"p() { local out; out=$(printf 'probe\n' | timeout 8 socat -t2 -T4 - "$1:$2:$3" 2>&1); echo "R $1 $2 $3 ${out//$'\n'/ }"; }
"#;

/// `netstate`: the jail's links, addresses and main-table routes, one sorted line each, by the
/// fields that matter (`link NAME up|down`, `addr DEV ADDR/LEN`, `route TYPE DST via GW dev DEV`).
/// Not `ip addr`'s text: its flags and lifetimes change on their own (the link-local address is
/// `tentative` for a while after pasta brings the link up), and the local table gains that
/// address's route when it stops being tentative.
const NETSTATE_FN: &str = r#"netstate() { /usr/bin/python3 -c '
import json, subprocess
def ip(*a):
    return json.loads(subprocess.run(["ip", "-j", *a], check=True, capture_output=True, text=True).stdout)
for l in ip("link"):
    print("link", l["ifname"], "up" if "UP" in l["flags"] else "down")
for l in ip("addr"):
    for a in l.get("addr_info", []):
        print("addr", l["ifname"], "%s/%s" % (a["local"], a["prefixlen"]))
for f in ("-4", "-6"):
    for r in ip(f, "route"):
        print("route", r.get("type", "unicast"), r["dst"], "via", r.get("gateway", "-"), "dev", r.get("dev", "-"))
' | sort; }
"#;

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The `R` lines of a probe run: (proto, host, port) -> what came back.
fn results(stdout: &str) -> BTreeMap<(String, String, String), String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("R "))
        .filter_map(|l| {
            let mut w = l.splitn(4, ' ');
            Some((
                (w.next()?.into(), w.next()?.into(), w.next()?.into()),
                w.next().unwrap_or("").to_string(),
            ))
        })
        .collect()
}

fn host_arg(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

fn proto(tcp: bool, ip: IpAddr) -> &'static str {
    match (tcp, ip.is_ipv4()) {
        (true, true) => "TCP4",
        (true, false) => "TCP6",
        (false, true) => "UDP4",
        (false, false) => "UDP6",
    }
}

/// pasta relays the jail's pings with ICMP datagram sockets on the host, which the host must
/// allow (systemd hosts do: ping_group_range 0 2147483647; a new namespace does not).
fn allow_host_pings(world: &FakeWorld) {
    let st = world
        .host_command("sysctl")
        .unwrap()
        .args(["-qw", "net.ipv4.ping_group_range=0 2147483647"])
        .status()
        .unwrap();
    assert!(st.success(), "set ping_group_range in the world's host");
}

/// Asserts each probe was refused by the jail's eBPF programs (EPERM at the socket call).
fn assert_refused(
    r: &BTreeMap<(String, String, String), String>,
    keys: &[(String, String, String)],
    rule: &str,
) {
    for k in keys {
        let got = r.get(k).unwrap_or_else(|| panic!("no result for {k:?}"));
        assert!(
            !got.contains("hello from") && got.contains("Operation not permitted"),
            "{rule}: {k:?} must be refused with EPERM, got {got:?}"
        );
    }
}

fn key(tcp: bool, ip: IpAddr, port: u16) -> (String, String, String) {
    (proto(tcp, ip).into(), host_arg(ip), port.to_string())
}

fn probe_line(tcp: bool, ip: IpAddr, port: u16) -> String {
    format!("p {} {} {port}\n", proto(tcp, ip), host_arg(ip))
}

#[test]
fn jailed_shell_reaches_the_internet_and_dns_but_nothing_internal() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().ipv6(true).build().unwrap();
    let conf = write_conf(&world, "claude-sandbox.conf", "# defaults\n").unwrap();
    allow_host_pings(&world);
    let public: [IpAddr; 2] = [PUBLIC_V4.into(), PUBLIC_V6.into()];
    let mut internal: Vec<IpAddr> = LAN_V4.iter().map(|&a| a.into()).collect();
    internal.push(LAN_V6.into());
    // The host's own addresses, and the gateway (pasta would map it to the host's loopback).
    let host_addrs: [IpAddr; 5] = [
        HOST_V4.into(),
        HOST_EXTRA_V4.into(),
        HOST_V6.into(),
        GATEWAY_V4.into(),
        GATEWAY_V6.into(),
    ];
    // The two pasta copied into the jail's namespace are the jail's own there (local: nothing
    // leaves); the others are refused by the programs.
    let copied: [IpAddr; 2] = [HOST_V4.into(), HOST_V6.into()];
    let mut script = String::from(PROBE_FN);
    for ip in public {
        for port in [22, 80, 5064] {
            script.push_str(&probe_line(true, ip, port));
        }
        for port in [5064, 9999] {
            script.push_str(&probe_line(false, ip, port));
        }
    }
    for &ip in &internal {
        for port in [22, 80] {
            script.push_str(&probe_line(true, ip, port));
        }
        script.push_str(&probe_line(false, ip, 5064));
    }
    for &ip in &host_addrs {
        script.push_str(&probe_line(true, ip, 8080));
        script.push_str(&probe_line(false, ip, 8080));
    }
    // The jail's own loopback: the host's 127.0.0.1:8080/8081 services must not show through.
    for ip in [
        "127.0.0.1".parse::<IpAddr>().unwrap(),
        "::1".parse().unwrap(),
    ] {
        script.push_str(&probe_line(true, ip, 8080));
        script.push_str(&probe_line(true, ip, 8081));
        script.push_str(&probe_line(false, ip, 8080));
    }
    // pasta's DNS forwarder: port 53 only.
    script.push_str("p TCP4 240.0.0.53 80\np UDP4 240.0.0.53 5353\n");
    script.push_str(
        "echo \"DNS4 $(getent ahostsv4 public.test.example | awk '{print $1}' | sort -u | tr '\\n' ' ')\"\n\
         echo \"DNS6 $(getent ahostsv6 public.test.example | awk '{print $1}' | sort -u | tr '\\n' ' ')\"\n\
         echo \"DNSSEARCH $(getent ahostsv4 public | awk '{print $1}' | sort -u | tr '\\n' ' ')\"\n\
         echo \"DNSBIG $(getent ahostsv4 big.test.example | awk '{print $1}' | sort -u | tr '\\n' ' ')\"\n\
         sed 's/^/RESOLV /' /etc/resolv.conf\n\
         d=$(mktemp -d) && cp /usr/bin/ping \"$d/ping\"\n\
         if \"$d/ping\" -n -c1 -W3 203.0.113.10 >/dev/null 2>&1; then echo 'PING public ok'; else echo \"PING public failed $(\"$d/ping\" -n -c1 -W3 203.0.113.10 2>&1 | tr '\\n' ' ')\"; fi\n\
         if \"$d/ping\" -n -c1 -W2 10.0.0.5 >/dev/null 2>&1; then echo 'PING lan ok'; else echo 'PING lan failed'; fi\n\
         rm -rf \"$d\"\n",
    );
    let out = run_jailed(&world, &conf, &script).unwrap();
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "claude-jail run must succeed: {}\n{stdout}\n{stderr}",
        out.status
    );
    let r = results(&stdout);

    for ip in public {
        for port in [22, 80, 5064] {
            let got = &r[&key(true, ip, port)];
            assert!(
                got.contains(&format!(
                    "hello from {}",
                    std::net::SocketAddr::new(ip, port)
                )),
                "the public server is reachable over TCP ({ip} port {port}): got {got:?}"
            );
        }
        for port in [5064, 9999] {
            let got = &r[&key(false, ip, port)];
            assert!(
                got.contains("hello from"),
                "the public server is reachable over UDP ({ip} port {port}): got {got:?}"
            );
        }
    }
    let mut refused = Vec::new();
    for &ip in &internal {
        refused.extend([key(true, ip, 22), key(true, ip, 80), key(false, ip, 5064)]);
    }
    assert_refused(
        &r,
        &refused,
        "every LAN host in each denied range (and 169.254.169.254)",
    );
    let mut refused = Vec::new();
    for &ip in host_addrs.iter().filter(|ip| !copied.contains(ip)) {
        refused.extend([key(true, ip, 8080), key(false, ip, 8080)]);
    }
    assert_refused(
        &r,
        &refused,
        "the host's other addresses and the gateway (the host's loopback through pasta)",
    );
    for &ip in &copied {
        for k in [key(true, ip, 8080), key(false, ip, 8080)] {
            assert!(
                !r[&k].contains("hello from"),
                "the host's address copied into the jail is the jail's own: {k:?} must not reach the host, got {:?}",
                r[&k]
            );
        }
        assert!(
            world.hits(std::net::SocketAddr::new(ip, 8080)).is_empty(),
            "the host's service on {ip}:8080 saw nothing"
        );
    }
    assert_refused(
        &r,
        &[
            ("TCP4".into(), "240.0.0.53".into(), "80".into()),
            ("UDP4".into(), "240.0.0.53".into(), "5353".into()),
        ],
        "pasta's DNS forwarder takes port 53 only",
    );
    for (k, got) in r
        .iter()
        .filter(|(k, _)| k.1 == "127.0.0.1" || k.1 == "[::1]")
    {
        assert!(
            !got.contains("hello from"),
            "the host's loopback services must not show on the jail's own loopback: {k:?} got {got:?}"
        );
    }

    let line = |prefix: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    assert_eq!(
        line("DNS4 "),
        "203.0.113.10",
        "the test domain resolves (A) through pasta's forwarder to dnsmasq on a private address"
    );
    assert_eq!(line("DNS6 "), "2001:db8:ff::10", "AAAA resolves too");
    assert_eq!(
        line("DNSSEARCH "),
        "203.0.113.10",
        "the host's search line is kept: `public` resolves as public.test.example"
    );
    let mut big: Vec<String> = big_addrs().iter().map(|a| a.to_string()).collect();
    big.sort();
    assert_eq!(
        line("DNSBIG "),
        big.join(" "),
        "a truncated UDP answer (40 A records) is retried over TCP through the forwarder"
    );
    let resolv: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("RESOLV "))
        .collect();
    assert!(
        resolv.contains(&"nameserver 240.0.0.53")
            && resolv
                .iter()
                .filter(|l| l.starts_with("nameserver"))
                .count()
                == 1,
        "the jail's only nameserver is pasta's forwarder: {resolv:?}"
    );
    assert!(
        resolv.contains(&"search test.example")
            && resolv.contains(&"options ndots:1 timeout:2 attempts:2"),
        "the jail's resolv.conf keeps the host's search and options lines: {resolv:?}"
    );
    let dnslog = fs::read_to_string(world.dns_log_path()).unwrap_or_default();
    assert!(
        dnslog.contains("big.test.example"),
        "the answers came from the world's dnsmasq"
    );
    assert!(
        stdout.contains("PING public ok"),
        "ping works for an allowed destination:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("PING lan failed"),
        "ping gets nothing from a denied destination:\n{stdout}"
    );

    assert!(
        !world.hits(PUBLIC_V4).is_empty() && !world.hits(PUBLIC_V6).is_empty(),
        "the public server saw the jail's connections"
    );
    for ip in internal.iter().chain(host_addrs.iter()) {
        assert!(
            world.hits(*ip).is_empty(),
            "a denied host must see nothing from the jail: {ip} saw {:?}",
            world.hits(*ip)
        );
    }
    for ip in ["127.0.0.1", "::1"] {
        let ip: IpAddr = ip.parse().unwrap();
        assert!(
            world.hits(ip).is_empty(),
            "the host's loopback services must see nothing from the jail: {:?}",
            world.hits(ip)
        );
    }
}

#[test]
fn allow_ip_opens_that_host_and_not_its_neighbours() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let conf = write_conf(
        &world,
        "claude-sandbox.conf",
        "allow-ip = 10.0.0.5:22/tcp\nallow-ip = 192.168.1.5\n",
    )
    .unwrap();
    let script = format!(
        "{PROBE_FN}p TCP4 10.0.0.5 22\np TCP4 10.0.0.5 80\np UDP4 10.0.0.5 5064\n\
         p TCP4 10.0.0.6 22\np TCP4 192.168.1.5 80\np UDP4 192.168.1.5 5064\n\
         p TCP4 192.168.1.6 80\np TCP4 192.168.1.4 80\n"
    );
    let out = run_jailed(&world, &conf, &script).unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "run: {stdout}\n{stderr}");
    let r = results(&stdout);
    let k = |p: &str, h: &str, port: &str| (p.to_string(), h.to_string(), port.to_string());
    for (kk, rule) in [
        (
            k("TCP4", "10.0.0.5", "22"),
            "allow-ip = 10.0.0.5:22/tcp opens that port",
        ),
        (
            k("TCP4", "192.168.1.5", "80"),
            "allow-ip = 192.168.1.5 opens every TCP port",
        ),
        (
            k("UDP4", "192.168.1.5", "5064"),
            "allow-ip = 192.168.1.5 opens UDP too",
        ),
    ] {
        assert!(r[&kk].contains("hello from"), "{rule}: got {:?}", r[&kk]);
    }
    assert_refused(
        &r,
        &[
            k("TCP4", "10.0.0.5", "80"),
            k("UDP4", "10.0.0.5", "5064"),
            k("TCP4", "10.0.0.6", "22"),
            k("TCP4", "192.168.1.6", "80"),
            k("TCP4", "192.168.1.4", "80"),
        ],
        "an allow entry opens exactly what it names: not other ports or protocols, not the neighbours",
    );
    let hits: Vec<u16> = world
        .hits(LAN_V4[0])
        .iter()
        .map(|h| h.local.port())
        .collect();
    assert!(
        hits.iter().all(|&p| p == 22) && !hits.is_empty(),
        "10.0.0.5 saw port 22 only: {hits:?}"
    );
}

#[test]
fn jailed_user_cannot_undo_the_jail_and_root_is_refused() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let conf = write_conf(&world, "claude-sandbox.conf", "").unwrap();
    let cg = claude_jail::cgroup::cgroup2_mount().unwrap();
    let script = format!(
        r#"{PRINT_JAIL_ID}
{NETSTATE_FN}
id=$(awk '$5 == "/etc/resolv.conf" {{ split($4, p, "/"); print p[2] }}' /proc/self/mountinfo | grep -E '^[0-9a-f]{{12}}$' | head -n1)
cg={cg}
grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs):' /proc/self/status | sed 's/^/STATUS /'
echo "UID $(id -u)"
echo "CGROUP-BEFORE $(grep '^0::' /proc/self/cgroup)"
jcg=$(awk '/ - cgroup2 / {{ print $5; exit }}' /proc/self/mountinfo)
echo "JCG $jcg"
for f in $(find $(awk '/ - cgroup2 / {{ print $5 }}' /proc/self/mountinfo | sort -u) -maxdepth 3 -name cgroup.procs 2>/dev/null) "$cg/claude-jail/cgroup.procs" "$cg/claude-jail/$id/pasta/cgroup.procs" /sys/fs/cgroup/cgroup.procs; do
  if (echo $$ > "$f") 2>/dev/null; then echo "ESCAPE $f SUCCEEDED"; else echo "ESCAPE $f refused"; fi
done
echo "CGROUP-AFTER $(grep '^0::' /proc/self/cgroup)"
before=$(netstate)
echo "$before" | sed 's/^/NETSTATE /'
for c in "route add 10.0.0.0/8 dev lo" "route del default" "addr add 10.9.9.9/32 dev lo" "link set lo down" "addr flush dev lo"; do
  if ip $c 2>/dev/null; then echo "NET $c SUCCEEDED"; else echo "NET $c refused"; fi
done
after=$(netstate)
[ "$before" = "$after" ] && echo "NET unchanged" || {{ echo "NET CHANGED"; diff <(echo "$before") <(echo "$after") | sed 's/^/NETDIFF /'; }}
echo "RAW $({PROBE} raw-syn 10.0.0.5:22 192.168.1.100)"
echo "RAWUDP $({PROBE} raw-udp 10.0.0.5:5064)"
echo "ICMPRAW $({PROBE} icmp-echo 10.0.0.5:0)"
/usr/bin/python3 -c 'import socket
for name, args in (("packet", (socket.AF_PACKET, socket.SOCK_RAW, 0)), ("raw", (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP))):
    try:
        socket.socket(*args); print("SOCK", name, "SUCCEEDED")
    except PermissionError: print("SOCK", name, "refused")'
# Ids are not known in here (finding them takes CAP_NET_ADMIN); the kernel refuses BPF_*_GET_FD_BY_ID
# on capability before it looks at the id. tests/tests/enforce.rs tries the real ids.
echo "TAMPER $({PROBE} tamper "$jcg" "/sys/fs/bpf/claude-jail/$id/jail" 1 1 1 1)"
echo "AFTER $({PROBE} tcp 10.0.0.5:22)"
"#,
        cg = cg.display()
    );
    let out = run_jailed(&world, &conf, &script).unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "run: {stdout}\n{stderr}");
    eprintln!("{stdout}");
    assert_eq!(
        jail_ids(&stdout).len(),
        1,
        "the jail's id is visible: {stdout}"
    );
    for l in stdout.lines().filter_map(|l| l.strip_prefix("STATUS ")) {
        let (name, v) = l.split_once(':').unwrap();
        let v = v.trim();
        if name == "NoNewPrivs" {
            assert_eq!(v, "1", "the command runs with no_new_privs");
        } else {
            assert_eq!(
                v, "0000000000000000",
                "the command holds no capabilities: {name} is {v}"
            );
        }
    }
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("STATUS ")).count(),
        6,
        "five capability sets and NoNewPrivs were read: {stdout}"
    );
    assert!(
        stdout.contains("UID 65534\n"),
        "the command runs as --user nobody"
    );
    for l in stdout
        .lines()
        .filter(|l| l.starts_with("ESCAPE ") || l.starts_with("NET ") || l.starts_with("SOCK "))
    {
        assert!(
            !l.contains("SUCCEEDED") && !l.contains("CHANGED"),
            "the jailed user cannot leave the cgroup, change routes or addresses, or open raw or \
             packet sockets: {l}"
        );
    }
    assert!(
        stdout.matches("ESCAPE ").count() >= 4 && stdout.contains("/cgroup.procs refused"),
        "the jail's own cgroup.procs and its parents' were tried: {stdout}"
    );
    let state: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("NETSTATE "))
        .collect();
    for want in [
        "link lo up",
        "addr lo 127.0.0.1/8",
        "route unicast default via 192.168.1.1 dev uplink0",
    ] {
        assert!(
            state.contains(&want),
            "the jail's network state was read (it has {want:?}): {state:?}"
        );
    }
    assert!(
        stdout.contains("NET unchanged"),
        "routes, addresses and links are unchanged: {stdout}"
    );
    assert!(
        stdout.contains("CGROUP-BEFORE 0::/\n") && stdout.contains("CGROUP-AFTER 0::/\n"),
        "the command sits at the root of its cgroup namespace (the jail cgroup), before and after"
    );
    for tag in ["RAW ", "RAWUDP ", "ICMPRAW "] {
        let l = stdout
            .lines()
            .find_map(|l| l.strip_prefix(tag))
            .unwrap_or("");
        assert_eq!(
            l, "err EPERM",
            "the jailed user cannot open raw sockets ({tag})"
        );
    }
    let tamper = stdout
        .lines()
        .find_map(|l| l.strip_prefix("TAMPER "))
        .unwrap_or("");
    assert!(
        tamper.starts_with("ok ") && !tamper.contains("SUCCEEDED"),
        "the jailed user cannot open the pins or detach the programs: {tamper}"
    );
    assert!(
        stdout.contains("AFTER err EPERM"),
        "the jail still refuses 10.0.0.5:22 after the attempts"
    );
    assert!(world.hits(LAN_V4[0]).is_empty(), "10.0.0.5 saw nothing");

    // A root target is refused before anything runs.
    let marker = world.dir().join("root-ran");
    let touch = format!("touch {}", marker.display());
    let conf_s = conf.display().to_string();
    for args in [
        vec![
            "run", "--config", &conf_s, "--user", "root", "--", "sh", "-c", &touch,
        ],
        vec![
            "run", "--config", &conf_s, "--user", "0", "--", "sh", "-c", &touch,
        ],
        vec!["run", "--config", &conf_s, "--", "sh", "-c", &touch],
    ] {
        let out = claude_jail(&world, &args)
            .unwrap()
            .env_remove("SUDO_UID")
            .env_remove("SUDO_GID")
            .output()
            .unwrap();
        let (o, e) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(125),
            "a root target is refused with 125 ({args:?}): {o}\n{e}"
        );
        assert!(
            e.contains("--user") && e.contains("sudo"),
            "the refusal says to pass --user or use sudo from a normal account: {e}"
        );
        assert!(!marker.exists(), "nothing ran for a root target");
    }
}

#[test]
fn host_port_opens_one_port_of_the_hosts_loopback() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let conf = write_conf(&world, "claude-sandbox.conf", "host-port = 8080/tcp\n").unwrap();
    let out = run_jailed(
        &world,
        &conf,
        &format!(
            "{PROBE_FN}p TCP4 127.0.0.1 8080\np TCP4 127.0.0.1 8081\np TCP4 192.168.1.100 8080\n"
        ),
    )
    .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "run: {stdout}\n{stderr}");
    assert!(
        stderr.contains("host-port 8080/tcp"),
        "the opening is announced at launch: {stderr}"
    );
    let r = results(&stdout);
    let k = |h: &str, port: &str| ("TCP4".to_string(), h.to_string(), port.to_string());
    assert!(
        r[&k("127.0.0.1", "8080")].contains("hello from 127.0.0.1:8080"),
        "host-port 8080/tcp: the jail's loopback reaches the host's loopback :8080: {stdout}"
    );
    assert!(
        !r[&k("127.0.0.1", "8081")].contains("hello from"),
        "the neighbouring port of the host's loopback stays unreachable: {stdout}"
    );
    assert!(
        !r[&k("192.168.1.100", "8080")].contains("hello from")
            && world
                .hits(std::net::SocketAddr::from(([192, 168, 1, 100], 8080)))
                .is_empty(),
        "the host's own address (copied into the jail, local there) never reaches the host: {stdout}"
    );
    assert!(
        world
            .hits(std::net::SocketAddr::from(([127, 0, 0, 1], 8081)))
            .is_empty(),
        "the host's :8081 saw nothing"
    );
}

/// pasta carries a published connection into the jail by connecting, inside the jail's namespace,
/// to the jail's own address (a copy of the host's): pasta's policy allows exactly that port
/// there, and the jail's policy its own, local, address (launch::policies).
#[test]
fn host_port_and_publish_port_open_one_port_in_one_direction() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let conf = write_conf(
        &world,
        "claude-sandbox.conf",
        "host-port = 8080/tcp\npublish-port = 8910/tcp\n",
    )
    .unwrap();
    // The jail serves 8910 (published) and 8911 (not), then waits for the test to be done. The
    // servers send a file (-U: from the file to the client only), not the output of a child
    // such as `EXEC:echo`: socat (1.7.4) drops the connection without sending anything when its
    // child exits before socat reaches its transfer loop, which a busy machine makes happen.
    let script = format!(
        "{PROBE_FN}p TCP4 127.0.0.1 8080\np TCP4 127.0.0.1 8081\n\
         g=$(mktemp -d); echo published-8910 > $g/8910; echo jail-8911 > $g/8911\n\
         socat -d -d -U TCP4-LISTEN:8910,reuseaddr,fork OPEN:$g/8910,rdonly &\n\
         socat -U TCP4-LISTEN:8911,bind=127.0.0.1,fork OPEN:$g/8911,rdonly &\n\
         for i in $(seq 300); do l=$(ss -Hltn); [[ $l == *' 0.0.0.0:8910 '* && $l == *' 127.0.0.1:8911 '* ]] && break; sleep 0.1; done\n\
         p TCP4 127.0.0.1 8910; echo READY; read -r _; kill %1 %2\n"
    );
    let conf_s = conf.display().to_string();
    let mut child = claude_jail(
        &world,
        &[
            "run", "--config", &conf_s, "--user", "nobody", "--", "bash", "-c", &script,
        ],
    )
    .unwrap()
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut l = String::new();
        if std::io::BufRead::read_line(&mut stdout, &mut l).unwrap() == 0 {
            break;
        }
        seen.push_str(&l);
        if l.trim() == "READY" {
            break;
        }
    }
    // From the host's loopback: the published port reaches the jail, its neighbour does not.
    let from_host = |port: u16| -> String {
        let o = world
            .host_command("timeout")
            .unwrap()
            .args([
                "5",
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/127.0.0.1/{port}; head -n 1 <&3"),
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let (a, b) = text(&o);
        format!("{a}{b}")
    };
    let published = from_host(8910);
    let neighbour = from_host(8911);
    drop(child.stdin.take());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    seen.push_str(&rest);
    let out = child.wait_with_output().unwrap();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "run: {seen}\n{stderr}");
    assert!(
        stderr.contains("host-port 8080/tcp") && stderr.contains("publish-port 8910/tcp"),
        "each opening is announced at launch: {stderr}"
    );
    let r = results(&seen);
    let k = |port: &str| {
        (
            "TCP4".to_string(),
            "127.0.0.1".to_string(),
            port.to_string(),
        )
    };
    assert!(
        r[&k("8080")].contains("hello from 127.0.0.1:8080"),
        "host-port 8080/tcp: the jail's loopback reaches the host's loopback :8080: {:?}",
        r[&k("8080")]
    );
    assert!(
        !r[&k("8081")].contains("hello from"),
        "the neighbouring port of the host's loopback stays unreachable: {:?}",
        r[&k("8081")]
    );
    assert_eq!(
        world
            .hits(std::net::SocketAddr::from(([127, 0, 0, 1], 8081)))
            .len(),
        0,
        "the host's :8081 saw nothing"
    );
    assert!(
        published.contains("published-8910"),
        "publish-port 8910/tcp: the host's loopback reaches the jail's :8910: {published:?} {seen}\n{stderr}"
    );
    assert!(
        !neighbour.contains("jail-8911"),
        "the jail's :8911 is not published: {neighbour:?}"
    );
}

#[test]
fn sudo_from_a_normal_account_finds_local_bin_home_and_ssh_agent() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let sudo = jail_tests::sudo::Sudo::new(&world, "", "").unwrap();
    let home = sudo.home.clone();
    let sock = home.join("agent.sock");
    // An SSH agent (or an echo server standing in for it) at a user-owned socket, as the user.
    let agent = if Path::new("/usr/bin/ssh-agent").exists() {
        format!(
            "eval \"$(as_user ssh-agent -s -a {s})\" >/dev/null || exit 1\n\
             AGENT_PID=$SSH_AGENT_PID",
            s = sock.display()
        )
    } else {
        format!(
            "as_user socat UNIX-LISTEN:{s},fork EXEC:cat &\n\
             AGENT_PID=$!; for i in $(seq 300); do [ -S {s} ] && break; sleep 0.1; done",
            s = sock.display()
        )
    };
    // The conf is /etc/claude-sandbox.conf (a caller behind sudo gets no other), and pasta is
    // named there: sudo's env_reset drops CLAUDE_JAIL_PASTA.
    let script = format!(
        "{agent}\n\
         SSH_AUTH_SOCK={s} as_user sudo -n $CJ run -- cjcmd; rc=$?\n\
         kill $AGENT_PID 2>/dev/null\n\
         exit $rc",
        s = sock.display(),
    );
    let out = sudo.command(&world, &script).unwrap().output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "sudo claude-jail run: {}\n{stdout}\n{stderr}",
        out.status
    );
    let cj = stdout
        .lines()
        .find(|l| l.starts_with("CJCMD "))
        .unwrap_or("");
    assert!(
        cj.contains("uid=4242 "),
        "the command runs as the user behind sudo: {cj}\n{stderr}"
    );
    assert!(
        cj.contains(&format!("home={} ", home.display())) && cj.contains("user=cjuser"),
        "HOME and USER are the user's: {cj}"
    );
    assert!(
        cj.contains("4343"),
        "the user's supplementary groups come along: {cj}"
    );
    let agent = stdout
        .lines()
        .find(|l| l.starts_with("AGENT "))
        .unwrap_or("");
    let sshadd = stdout.lines().find(|l| l.starts_with("SSHADD "));
    match sshadd {
        Some(l) if Path::new("/usr/bin/ssh-agent").exists() => assert!(
            l.contains("no identities"),
            "SSH_AUTH_SOCK works in the jail: ssh-add talks to the agent: {l} ({agent})"
        ),
        _ => assert!(
            agent.contains("hello-agent"),
            "SSH_AUTH_SOCK works in the jail: {agent}"
        ),
    }
}

/// Runs one fail-closed case: claude-jail after `setup`, with `env` set (or removed when the
/// value is None); asserts 125, the marker not created, the message naming `what`, a fix and
/// the escape hatch, and that nothing was left behind.
/// Runs its arguments with every bpf() system call refused (EPERM).
const DENY_BPF: &str = env!("CARGO_BIN_EXE_jail-deny-bpf");

fn fail_closed(
    world: &FakeWorld,
    name: &str,
    setup: &str,
    env: &[(&str, Option<&str>)],
    what: &str,
) -> String {
    // The eBPF mode's prerequisites: with `auto`, a root without CAP_BPF would get the
    // nftables mode instead (tests/tests/rootless.rs).
    let conf = write_conf(world, "claude-sandbox.conf", "egress-backend = ebpf\n").unwrap();
    let markers = world.dir().join("markers");
    fs::create_dir_all(&markers).unwrap();
    // The marker must be creatable by nobody had the command run.
    fs::set_permissions(&markers, fs::Permissions::from_mode(0o1777)).unwrap();
    let marker = markers.join(name.replace(' ', "-"));
    let touch = format!("touch {}", marker.display());
    let conf_s = conf.display().to_string();
    let mut cmd = claude_jail_after(
        world,
        setup,
        &[
            "run", "--config", &conf_s, "--user", "nobody", "--", "sh", "-c", &touch,
        ],
    )
    .unwrap();
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.output().unwrap();
    let (o, e) = text(&out);
    eprintln!("--- {name}:\n{e}");
    assert_eq!(
        out.status.code(),
        Some(125),
        "{name}: the jail cannot be built, so exit 125: {o}\n{e}"
    );
    assert!(!marker.exists(), "{name}: nothing was executed");
    assert!(
        e.contains(what),
        "{name}: the message names what failed ({what}): {e}"
    );
    assert!(e.contains("fix"), "{name}: the message names the fix: {e}");
    assert!(
        e.contains("CLAUDE_SANDBOX_EGRESS_JAIL=0") && e.contains("egress-jail = 0"),
        "{name}: the message names the escape hatch: {e}"
    );
    let left = leftovers(world, &[]);
    assert!(left.is_empty(), "{name}: nothing is left behind: {left:?}");
    e
}

#[test]
fn each_fail_closed_case_exits_125_without_running_the_command() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    fs::set_permissions(world.dir(), fs::Permissions::from_mode(0o755)).unwrap();
    let cg = claude_jail::cgroup::cgroup2_mount().unwrap();
    fail_closed(
        &world,
        "missing tun",
        "mount -t tmpfs none /dev/net || exit 1",
        &[],
        "/dev/net/tun",
    );
    fail_closed(
        &world,
        "missing pasta (CLAUDE_JAIL_PASTA)",
        ":",
        &[("CLAUDE_JAIL_PASTA", Some("/nonexistent"))],
        "pasta",
    );
    fail_closed(
        &world,
        "missing pasta (PATH)",
        "PATH=/nonexistent; export PATH",
        &[("CLAUDE_JAIL_PASTA", None)],
        "pasta",
    );
    // pasta runs as root: one the user could have replaced is refused like an untrusted conf.
    fail_closed(
        &world,
        "untrusted pasta",
        "mount -t tmpfs -o mode=0755 cjt-pasta /mnt && mkdir /mnt/u && \
         cp -L \"$CLAUDE_JAIL_PASTA\" /mnt/u/pasta && chown -R 65534 /mnt/u && \
         CLAUDE_JAIL_PASTA=/mnt/u/pasta && export CLAUDE_JAIL_PASTA || exit 1",
        &[],
        "not trusted",
    );
    // A step inside the jail's own namespaces fails (here: /etc/resolv.conf is a directory, so
    // the jail's resolv.conf cannot be bound over it): the init reports the step and the
    // kernel's errno to the launcher, which says so with that step's own fix and the escape
    // hatch, and the command never starts.
    let set_up_failure_fix = fail_closed(
        &world,
        "set-up inside the jail fails",
        "mount -t tmpfs -o mode=0755 cjt-etc /mnt && cp -a /etc /mnt/etc && \
         rm -f /mnt/etc/resolv.conf && mkdir /mnt/etc/resolv.conf && \
         mount --bind /mnt/etc /etc || exit 1",
        &[],
        "inside its namespaces failed, nothing was run: jail init: bind the jail's resolv.conf \
         over /etc/resolv.conf",
    );
    // ... with that step's own fix, not a generic one.
    assert!(
        set_up_failure_fix.contains("(fix: /etc/resolv.conf must be a file"),
        "{set_up_failure_fix}"
    );
    // A read-only bind of the cgroup2 mount over itself, in a private mount namespace (a
    // per-mount flag: the real hierarchy stays writable for everyone else).
    fail_closed(
        &world,
        "unwritable cgroup",
        &format!(
            "mount --bind {cg} {cg} && mount -o remount,bind,ro {cg} || exit 1",
            cg = cg.display()
        ),
        &[],
        "cgroup",
    );
    // The kernel refuses bpf() itself (a seccomp filter stands in for a kernel or security
    // module without BPF): the launcher is past its checks and has made its cgroups.
    fail_closed(
        &world,
        "bpf() refused by the kernel",
        &format!("exec {DENY_BPF} sh -c 'exec \"$@\"' sh \"$@\""),
        &[],
        "the kernel refused it",
    );
    fail_closed(
        &world,
        "not root",
        "exec setpriv --reuid=65534 --regid=65534 --clear-groups -- sh -c 'exec \"$@\"' sh \"$@\"",
        &[],
        "needs root",
    );
    // Without CAP_SYS_ADMIN (and CAP_BPF, which it could stand in for).
    fail_closed(
        &world,
        "sys_admin refused",
        "exec setpriv --inh-caps=-bpf,-sys_admin --bounding-set=-bpf,-sys_admin -- sh -c 'exec \"$@\"' sh \"$@\"",
        &[],
        "CAP_SYS_ADMIN",
    );

    // The escape hatch runs the command with host networking, and says so in one line.
    let conf = write_conf(&world, "off.conf", "egress-jail = 0\n").unwrap();
    let conf_on = write_conf(&world, "on.conf", "").unwrap();
    // The variable works even when the conf is what is broken (its only other use is the jail).
    let conf_bad = write_conf(&world, "bad.conf", "allow-ip = 10.0.0.0/7\n").unwrap();
    for (conf, env, source) in [
        (&conf_on, Some("0"), "CLAUDE_SANDBOX_EGRESS_JAIL"),
        (&conf, None, "off.conf:1"),
        (&conf_bad, Some("0"), "CLAUDE_SANDBOX_EGRESS_JAIL"),
    ] {
        let c = conf.display().to_string();
        let mut cmd = claude_jail_after(
            &world,
            "mount -t tmpfs none /dev/net || exit 1",
            &[
                "run",
                "--config",
                &c,
                "--user",
                "nobody",
                "--",
                "bash",
                "-c",
                "(exec 3<>/dev/tcp/10.0.0.5/80 && head -n1 <&3) 2>&1",
            ],
        )
        .unwrap();
        if let Some(v) = env {
            cmd.env("CLAUDE_SANDBOX_EGRESS_JAIL", v);
        }
        let out = cmd.output().unwrap();
        let (o, e) = text(&out);
        assert!(
            out.status.success() && o.contains("hello from 10.0.0.5:80"),
            "with the jail off ({source}) the command runs with host networking: {o}\n{e}"
        );
        let off: Vec<&str> = e.lines().filter(|l| l.contains("OFF")).collect();
        assert!(
            off.len() == 1 && off[0].contains(source),
            "one line on stderr says the jail is off and names the source ({source}): {e}"
        );
    }
}

/// /usr/bin/ping carries file capabilities (cap_net_raw+ep). With the command's bounding set
/// empty, execve refuses a binary whose file capabilities it cannot grant (EPERM); the jail binds
/// a capability-less copy over /usr/bin/ping, which uses an ICMP datagram socket
/// (ping_group_range lets every group in the jail's namespace) and pasta relays it.
#[test]
fn ping_itself_runs_in_the_jail() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let conf = write_conf(&world, "claude-sandbox.conf", "").unwrap();
    allow_host_pings(&world);
    let out = run_jailed(
        &world,
        &conf,
        "ping -n -c1 -W3 203.0.113.10 && ! ping -n -c1 -W2 10.0.0.5",
    )
    .unwrap();
    let (o, e) = text(&out);
    assert!(
        out.status.success(),
        "ping works in the jail for allowed destinations and gets nothing from denied ones: {o}\n{e}"
    );
}

/// A SIGTERM (or Ctrl-C) that reaches the launcher while it is still building the jail stops the
/// launch before the command starts: exit 128+15, it says so, nothing ran and nothing is left.
/// pasta is made slow to start (a wrapper that waits, then runs the real one) so that the
/// signal lands in the middle of the build: the wrapper waits until its parent, the launcher
/// (blocked in pasta's start), has the SIGTERM pending (/proc/PID/status ShdPnd bit 15; 20 s at
/// most), not for a time that a busy machine could exceed.
#[test]
fn a_sigterm_while_the_jail_is_built_stops_it_before_the_command_runs() {
    use std::time::Duration;
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    fs::set_permissions(world.dir(), fs::Permissions::from_mode(0o755)).unwrap();
    let conf = write_conf(&world, "claude-sandbox.conf", "").unwrap();
    let marker = world.dir().join("ran");
    let started = world.dir().join("pasta-starting");
    let setup = format!(
        r#"mount -t tmpfs -o mode=0755 cjt-slow /mnt || exit 1
real=$(readlink -f "$CLAUDE_JAIL_PASTA")
cat > /mnt/pasta <<EOF
#!/bin/bash
touch {started}
for i in \$(seq 200); do
  p=\$(awk '/^ShdPnd:/ {{ print \$2 }}' /proc/\$PPID/status)
  [ \$((0x\$p & 0x4000)) != 0 ] && break
  sleep 0.1
done
exec -a pasta $real "\$@"
EOF
chmod 755 /mnt/pasta
CLAUDE_JAIL_PASTA=/mnt/pasta; export CLAUDE_JAIL_PASTA"#,
        started = started.display()
    );
    let touch = format!("touch {}", marker.display());
    let conf_s = conf.display().to_string();
    let child = claude_jail_after(
        &world,
        &setup,
        &[
            "run", "--config", &conf_s, "--user", "nobody", "--", "sh", "-c", &touch,
        ],
    )
    .unwrap()
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "pasta's wrapper never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The launcher is waiting for pasta now: the jail's cgroups and programs exist.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let (o, e) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(128 + 15),
        "the launch stops with 128+SIGTERM: {o}\n{e}"
    );
    assert!(
        e.contains("SIGTERM while the jail was being built: nothing was run"),
        "and says so: {e}"
    );
    assert!(!marker.exists(), "the command never ran");
    let left = leftovers(&world, &[]);
    assert!(left.is_empty(), "nothing is left behind: {left:?}");
}
