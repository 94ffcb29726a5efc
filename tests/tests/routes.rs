//! Every route the host has, in the fake world: ranges the host reaches through
//! policy routing (tables chosen by `ip rule`), its local (AnyIP) ranges, at launch and added
//! while the jail runs; and an audit trail that accounts for the events the kernel could not
//! queue.
//!
//! The VPNs here are routes in tables of their own, selected by rules, the way Tailscale (table
//! 52), strongSwan (220), wg-quick and NetworkManager install them. Their "far side" is an
//! address on the inet namespace's loopback, reached through the uplink gateway, so that
//! without the jail the range is reachable from the host (and was, from the jail, before).
use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use jail_tests::{
    have_root,
    jail::{claude_jail, host_root, run_jailed, write_conf},
    servers::{Behaviour, Listener, Servers},
    session::Session,
    FakeWorld,
};

/// How long a host change may take to reach the jail: the launcher applies it within a second;
/// the rest is one round of the probe loop on a loaded machine.
const WITHIN: Duration = Duration::from_millis(1500);

/// `ip ARGS` in the world's host namespace.
fn host_ip(world: &FakeWorld, args: &str) {
    let out = world
        .host_command("ip")
        .unwrap()
        .args(args.split_whitespace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "host: ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Adds `addrs` to the inet namespace's loopback and serves TCP `port` on each (the far side
/// of a VPN).
fn serve_in_inet(world: &FakeWorld, addrs: &[IpAddr], port: u16) -> Servers {
    let mut batch = String::new();
    for a in addrs {
        let len = if a.is_ipv4() { 32 } else { 128 };
        let nodad = if a.is_ipv4() { "" } else { " nodad" };
        batch.push_str(&format!("addr add {a}/{len} dev lo{nodad}\n"));
    }
    world.inet().ip_batch(&batch).unwrap();
    let listeners = world
        .in_inet(|| {
            addrs
                .iter()
                .map(|a| Listener::tcp(SocketAddr::new(*a, port), Behaviour::Greet))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .unwrap()
        .unwrap();
    Servers::start(listeners).unwrap()
}

/// Hits of `servers` on address `a`.
fn hits_on(servers: &Servers, a: IpAddr) -> usize {
    let t = jail_tests::servers::Target::from(a);
    servers.hits().iter().filter(|h| t.matches(h.local)).count()
}

/// One TCP connect per target and round, printed as `<label> ok`, `<label> refused` (EPERM:
/// the jail's programs) or `<label> failed <error>` (anything else, a 3 s timeout included).
/// `dest` is `host/port`.
fn probe_script(targets: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "probe() { local out; if out=$(timeout 3 bash -c \"exec 3<>/dev/tcp/$2\" 2>&1); then echo \"$1 ok\"; \
         else case \"$out\" in *'not permitted'*) echo \"$1 refused\";; \
         *) echo \"$1 failed ${out//$'\\n'/ }\";; esac; fi; }\n",
    );
    s.push_str("while true; do ");
    for (label, dest) in targets {
        s.push_str(&format!("probe {label} {dest}; "));
    }
    s.push_str("sleep 0.05; done");
    s
}

fn empty_conf(world: &FakeWorld) -> PathBuf {
    write_conf(world, "claude-sandbox.conf", "# defaults\n").unwrap()
}

/// Asserts `label` has `want` in a round; `why` says what the case is.
fn expect(round: &BTreeMap<String, String>, label: &str, want: &str, why: &str) {
    assert_eq!(
        round.get(label).map(String::as_str),
        Some(want),
        "{label} ({why}): round {round:?}"
    );
}

#[test]
fn policy_routed_vpn_ranges_are_refused_at_launch_and_when_added_later() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().ipv6(true).build().unwrap();
    let far: Vec<IpAddr> = [
        "198.19.0.10",
        "2001:db8:19::10",
        "198.19.1.10",
        "2001:db8:1a::10",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();
    let vpn = serve_in_inet(&world, &far, 80);
    // Up before the launch: a range in table 100, selected by a `to` rule, both families.
    for c in [
        "route add 198.19.0.0/24 via 192.168.1.1 dev uplink0 table 100",
        "rule add to 198.19.0.0/24 lookup 100",
        "-6 route add 2001:db8:19::/48 via 2001:db8:1::1 dev uplink0 table 100",
        "-6 rule add to 2001:db8:19::/48 lookup 100",
    ] {
        host_ip(&world, c);
    }
    let conf = empty_conf(&world);
    let labels = ["vpn4", "vpn6", "new4", "new6", "public"];
    let s = Session::start(
        &world,
        &conf,
        &probe_script(&[
            ("vpn4", "198.19.0.10/80"),
            ("vpn6", "2001:db8:19::10/80"),
            ("new4", "198.19.1.10/80"),
            ("new6", "2001:db8:1a::10/80"),
            ("public", "203.0.113.10/80"),
        ]),
    );
    let r = s.round(&labels);
    expect(
        &r,
        "vpn4",
        "refused",
        "IPv4 VPN range in table 100 at launch",
    );
    expect(
        &r,
        "vpn6",
        "refused",
        "IPv6 VPN range in table 100 at launch",
    );
    expect(&r, "new4", "ok", "not routed specially yet");
    expect(&r, "new6", "ok", "not routed specially yet");
    expect(&r, "public", "ok", "the internet");

    // IPv4, mid-session: the route first, into a table no rule selects yet (nothing changes),
    // then the rule that selects it: the rule change alone must reach the jail.
    host_ip(&world, "route add 198.19.1.0/24 via 192.168.1.1 table 200");
    let r = s.round(&labels);
    expect(
        &r,
        "new4",
        "ok",
        "a table no rule selects is not the host's routing",
    );
    // Past the launcher's debounce: the refresh this route caused is done, and only the rule's
    // own notification can bring the next one.
    thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    host_ip(&world, "rule add to 198.19.1.0/24 lookup 200");
    s.wait_for("new4 refused", |l| l == "new4 refused");
    let took = t.elapsed();
    eprintln!("IPv4 rule added: refused after {took:?}");
    assert!(took < WITHIN, "the rule was followed only after {took:?}");

    // IPv6, mid-session: the rule first, to a table that does not exist yet, then the table's
    // first route: a table that appears after the launch.
    host_ip(&world, "-6 rule add to 2001:db8:1a::/48 lookup 201");
    let t = Instant::now();
    host_ip(
        &world,
        "-6 route add 2001:db8:1a::/48 via 2001:db8:1::1 dev uplink0 table 201",
    );
    s.wait_for("new6 refused", |l| l == "new6 refused");
    let took = t.elapsed();
    eprintln!("IPv6 table appeared: refused after {took:?}");
    assert!(
        took < WITHIN,
        "the new table was followed only after {took:?}"
    );

    // And back: the rule removed, the range is the internet's again.
    host_ip(&world, "rule del to 198.19.1.0/24 lookup 200");
    s.wait_for("new4 ok again", |l| l == "new4 ok");
    let r = s.round(&labels);
    expect(&r, "vpn4", "refused", "still");
    expect(&r, "new6", "refused", "still");
    expect(&r, "public", "ok", "the internet throughout");
    s.stop();
    for a in &far[..2] {
        assert_eq!(hits_on(&vpn, *a), 0, "nothing reached {a} behind the VPN");
    }
}

#[test]
fn tables_selected_by_source_or_firewall_mark_are_refused() {
    if !have_root() {
        return;
    }
    // A rule's selector decides which traffic uses its table, not whether the table's networks
    // are reachable from the host: pasta's connections are the host's own, and a source address
    // (chosen by the kernel from the first lookup), a mark (set by the host's firewall) or an
    // interface binding can put them under such a rule. So every table a rule selects counts.
    let world = FakeWorld::builder().build().unwrap();
    let far: Vec<IpAddr> = ["198.19.2.10", "198.19.3.10", "198.19.4.10"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let vpn = serve_in_inet(&world, &far, 80);
    for c in [
        // Source-based routing on the host's own address (multi-homed hosts, strongSwan).
        "route add 198.19.2.0/24 via 192.168.1.1 table 101",
        "rule add from 192.168.1.100 lookup 101",
        // wg-quick and Mullvad mark their traffic; a rule on the mark picks the table.
        "route add 198.19.3.0/24 via 192.168.1.1 table 102",
        "rule add fwmark 0xca6c lookup 102",
        // Input interface (forwarded traffic).
        "route add 198.19.4.0/24 via 192.168.1.1 table 103",
        "rule add iif uplink0 lookup 103",
    ] {
        host_ip(&world, c);
    }
    let conf = empty_conf(&world);
    let script = probe_script(&[
        ("from", "198.19.2.10/80"),
        ("fwmark", "198.19.3.10/80"),
        ("iif", "198.19.4.10/80"),
        ("public", "203.0.113.10/80"),
    ])
    .replace("while true; do ", "")
    .replace("sleep 0.05; done", "");
    let out = run_jailed(&world, &conf, &script).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: BTreeMap<String, String> = stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let stderr = String::from_utf8_lossy(&out.stderr);
    expect(
        &r,
        "from",
        "refused",
        &format!("`from` rule's table; {stderr}"),
    );
    expect(&r, "fwmark", "refused", "`fwmark` rule's table");
    expect(&r, "iif", "refused", "`iif` rule's table");
    expect(&r, "public", "ok", "the internet");
    for a in &far {
        assert_eq!(hits_on(&vpn, *a), 0, "nothing reached {a}");
    }
}

#[test]
fn anyip_local_ranges_are_the_hosts_own_and_refused() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().ipv6(true).build().unwrap();
    // A service of the host on every address (dual-stack, [::]:8082): what an AnyIP range of the
    // host reaches, and so what the jail must not.
    let any: SocketAddr = "[::]:8082".parse().unwrap();
    let host_service = world
        .in_host(|| Listener::tcp(any, Behaviour::Greet))
        .unwrap()
        .unwrap();
    let host_service = Servers::start(vec![host_service]).unwrap();
    host_ip(&world, "route add local 198.18.0.0/24 dev lo");
    host_ip(&world, "-6 route add local 2001:db8:aa::/64 dev lo");
    let conf = empty_conf(&world);
    let labels = ["any4", "any6", "new4", "public"];
    let s = Session::start(
        &world,
        &conf,
        &probe_script(&[
            ("any4", "198.18.0.5/8082"),
            ("any6", "2001:db8:aa::5/8082"),
            ("new4", "198.18.1.5/8082"),
            ("public", "203.0.113.10/80"),
        ]),
    );
    let r = s.round(&labels);
    expect(
        &r,
        "any4",
        "refused",
        "an IPv4 AnyIP range is the host's own",
    );
    expect(
        &r,
        "any6",
        "refused",
        "an IPv6 AnyIP range is the host's own",
    );
    expect(&r, "public", "ok", "the internet");
    // new4 is routed to the internet (and unanswered there: `failed`) until it is made local.
    let t = Instant::now();
    host_ip(&world, "route add local 198.18.1.0/24 dev lo");
    s.wait_for("new4 refused", |l| l == "new4 refused");
    let took = t.elapsed();
    eprintln!("AnyIP route added: refused after {took:?}");
    assert!(
        took < WITHIN,
        "the local route was followed only after {took:?}"
    );
    s.stop();
    // (198.18.1.5 is left out: a connect admitted while it was the internet's, still sending
    // SYNs when the route was added, may reach the service; new connects are refused.)
    for a in ["198.18.0.5", "2001:db8:aa::5"] {
        assert_eq!(
            hits_on(&host_service, a.parse().unwrap()),
            0,
            "the host's service was not reached through {a}"
        );
    }
}

/// `claude-jail events --json --jail ID`, parsed.
fn events_of(world: &FakeWorld, id: &str) -> Vec<serde_json::Value> {
    let out = claude_jail(world, &["events", "--json", "--jail", id])
        .unwrap()
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn sum_of(records: &[serde_json::Value], kind: &str) -> u64 {
    records
        .iter()
        .filter(|r| r["kind"] == kind)
        .map(|r| r["count"].as_u64().unwrap())
        .sum()
}

#[test]
fn a_flood_that_overflows_the_event_buffer_is_accounted_for_in_the_log() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let conf = empty_conf(&world);
    let go_flood = world.dir().join("go-flood");
    let go_scan = world.dir().join("go-scan");
    // The flood: 20,000 refused UDP connects to one destination, far more than the ring buffer
    // holds (256 KiB, 72 bytes an event). The launcher is stopped (SIGSTOP) while it runs, so
    // that the buffer overflows whatever the machine's load, as it does for a faster flood on
    // a busy host. Then, with the launcher running again, the attempt the flood would have
    // buried: it must be in the log, and the log must count what it lost.
    let script = format!(
        "echo ready; while [ ! -e {flood} ]; do sleep 0.05; done; \
         for i in $(seq 1 20000); do {{ exec 3<>/dev/udp/10.0.0.5/9; }} 2>/dev/null; done; \
         echo flooded; while [ ! -e {scan} ]; do sleep 0.05; done; \
         {{ exec 3<>/dev/tcp/172.16.0.5/4444; }} 2>/dev/null || echo refused-after; echo done",
        flood = go_flood.display(),
        scan = go_scan.display()
    );
    let s = Session::start(&world, &conf, &script);
    s.wait_for("ready", |l| l == "ready");
    nix::sys::signal::kill(s.launcher(), nix::sys::signal::Signal::SIGSTOP).unwrap();
    fs::write(&go_flood, "").unwrap();
    s.wait_for("flooded", |l| l == "flooded");
    let status = || -> serde_json::Value {
        let out = claude_jail(&world, &["status", "--json"])
            .unwrap()
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()[0].clone()
    };
    let st = status();
    let id = st["id"].as_str().unwrap().to_string();
    let dropped_now = st["counters"]["events_dropped"].as_u64().unwrap();
    assert!(
        dropped_now > 10_000,
        "the flood overflowed the ring buffer: {st}"
    );
    nix::sys::signal::kill(s.launcher(), nix::sys::signal::Signal::SIGCONT).unwrap();

    // The launcher writes the loss as soon as it sees the counter rise, while the jail runs.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let records = events_of(&world, &id);
        if sum_of(&records, "dropped") == dropped_now {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no `dropped` record counting {dropped_now} lost events within 5 s: {:?}",
            records
                .iter()
                .filter(|r| r["kind"] != "refused")
                .collect::<Vec<_>>()
        );
        thread::sleep(Duration::from_millis(100));
    }

    fs::write(&go_scan, "").unwrap();
    let seen = s.wait_for("done", |l| l == "done");
    assert!(
        seen.iter().any(|l| l == "refused-after"),
        "172.16.0.5 is refused: {seen:?}"
    );
    let (_, stderr) = s.stop();

    let summary = stderr
        .lines()
        .find(|l| l.starts_with("claude-jail: refused "))
        .unwrap_or_else(|| panic!("no summary line: {stderr}"));
    let refused: u64 = summary
        .strip_prefix("claude-jail: refused ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert_eq!(
        refused, 20_001,
        "the kernel refused every attempt: {summary}"
    );

    let records = events_of(&world, &id);
    let (logged, suppressed, dropped) = (
        sum_of(&records, "refused"),
        sum_of(&records, "suppressed"),
        sum_of(&records, "dropped"),
    );
    assert_eq!(
        logged + suppressed + dropped,
        refused,
        "refused + suppressed + dropped in the log = the kernel's refused counter \
         ({logged} + {suppressed} + {dropped})"
    );
    assert!(
        dropped >= dropped_now,
        "the loss is counted: {dropped} < {dropped_now}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "refused" && r["addr"] == "172.16.0.5" && r["port"] == 4444),
        "the attempt after the flood is in the log one by one"
    );
    assert!(
        summary.contains(&format!("{} not logged one by one", dropped + suppressed)),
        "the summary says how many attempts were not logged one by one: {summary}"
    );

    // `claude-jail events` shows the loss.
    let out = claude_jail(&world, &["events", "--jail", &id])
        .unwrap()
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.contains(" dropped count=")),
        "events shows the dropped record: {text}"
    );

    // The log's directory is root's alone.
    let dir = host_root(&world).join("var/log/claude-jail");
    let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{} is 0{mode:o}", dir.display());
}
