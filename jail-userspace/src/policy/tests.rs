//! The policy compiler against its documented verdicts, and against a naive model.
use std::collections::BTreeMap;

use super::*;
use crate::{
    addr::NAT64_HI,
    conf::{parse, Proto},
};
use jail_common::{PortKey4, PortKey6, MAX_PORT_ENTRIES, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use proptest::prelude::*;
use std::path::Path;

const CONF: &str = "/etc/claude-sandbox.conf";

fn conf(text: &str) -> Conf {
    parse(Path::new(CONF), text.as_bytes()).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn host() -> HostNet {
    HostNet::from_parts(
        vec![
            (ip("192.168.1.100"), ip("192.168.1.100"), 24, "eth0".into()),
            (ip("198.51.100.7"), ip("198.51.100.7"), 32, "lo".into()),
        ],
        vec![
            (net("192.168.1.0/24"), Some("eth0".into())),
            (net("203.0.113.0/24"), Some("tun0".into())),
        ],
    )
}

fn policy(text: &str) -> Policy {
    Policy::build(&conf(text), &host())
}

fn allowed(p: &Policy, a: &str, port: u16, proto: u8) -> bool {
    p.decide(ip(a), port, proto).allowed
}

#[test]
fn anyip_local_ranges_are_denied_as_the_hosts_own() {
    let h = HostNet::from_observed(
        vec![],
        vec![],
        vec![
            (net("198.18.0.0/24"), Some("lo".into())),
            (net("2001:db8:aa::/64"), Some("lo".into())),
        ],
    );
    let p = Policy::build(&conf(""), &h);
    for a in ["198.18.0.5", "2001:db8:aa::5"] {
        let d = p.decide(ip(a), 8082, PROTO_TCP);
        assert!(!d.allowed, "{a} is the host's own (AnyIP)");
    }
    assert!(p
        .rules()
        .iter()
        .any(|r| r.source.to_string() == "host local route on lo"));
    assert!(allowed(&p, "198.18.1.5", 80, PROTO_TCP));
}

#[test]
fn default_deny_set_and_ipv4_in_ipv6_forms() {
    let p = policy("");
    let denied = [
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.255",
        "0.0.0.0",
        "0.1.2.3",
        "224.0.0.251",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "fd00::1",
        "fc00::1",
        "fe80::1",
        "fec0::1",
        "ff02::1",
        "64:ff9b:1::a00:1",
        "2002:a00:1::1",
        "2001::1",
        // Judged by the IPv4 they carry:
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::10.0.0.1",
        "::ffff:0.0.0.0",
        "64:ff9b::10.0.0.1",
        "64:ff9b::192.168.1.1",
        // The host's own address, subnet and routes:
        "192.168.1.100",
        "198.51.100.7",
        "203.0.113.9",
        "::ffff:198.51.100.7",
    ];
    for a in denied {
        for proto in [PROTO_TCP, PROTO_UDP, PROTO_ICMP] {
            assert!(!allowed(&p, a, 443, proto), "{a} must be denied by default");
        }
    }
    let allowed_ = [
        "8.8.8.8",
        "1.1.1.1",
        "172.32.0.1",
        "100.128.0.1",
        "198.51.100.8",
        "2606:4700::1111",
        "2001:db8::1",
        "::ffff:8.8.8.8",
        "64:ff9b::8.8.8.8",
        "::8.8.8.8",
        // Loopback is the jail's own namespace; `::` and `::1` are judged as IPv6.
        "127.0.0.1",
        "127.255.0.9",
        "::1",
        "::",
        "::ffff:127.0.0.1",
    ];
    for a in allowed_ {
        assert!(
            allowed(&p, a, 443, PROTO_TCP),
            "{a} must be allowed by default"
        );
    }
    assert_eq!(
        p.decide(ip("8.8.8.8"), 53, PROTO_UDP).rule,
        None,
        "allowed by no rule"
    );
}

#[test]
fn narrow_allow_inside_broad_deny_wins() {
    let p = policy("allow-ip = 10.1.2.3\nallow-ip = 10.9.0.0/24\n");
    assert!(
        allowed(&p, "10.1.2.3", 22, PROTO_TCP),
        "the allowed /32 inside 10/8"
    );
    assert!(
        allowed(&p, "::ffff:10.1.2.3", 22, PROTO_TCP),
        "also in mapped form"
    );
    assert!(
        !allowed(&p, "10.1.2.4", 22, PROTO_TCP),
        "its neighbour is still denied"
    );
    assert!(
        allowed(&p, "10.9.0.255", 1, PROTO_ICMP),
        "a prefix allow covers every protocol"
    );
    assert!(
        !allowed(&p, "10.9.1.0", 1, PROTO_TCP),
        "just outside the /24"
    );
    let d = p.decide(ip("10.1.2.3"), 22, PROTO_TCP);
    assert_eq!(
        p.describe(d.rule.unwrap()),
        format!("allow 10.1.2.3/32 (conf {CONF}:1)")
    );
    let d = p.decide(ip("10.1.2.4"), 22, PROTO_TCP);
    assert_eq!(p.describe(d.rule.unwrap()), "deny 10.0.0.0/8 (default)");
}

#[test]
fn port_entries_and_markers() {
    let p = policy(
        "allow-ip = 172.23.1.3:5064/udp\nallow-ip = 10.0.0.7:443\nallow-ip = [fd00::5]:443/tcp\n",
    );
    assert!(allowed(&p, "172.23.1.3", 5064, PROTO_UDP));
    assert!(!allowed(&p, "172.23.1.3", 5064, PROTO_TCP), "udp only");
    assert!(
        !allowed(&p, "172.23.1.3", 5065, PROTO_UDP),
        "that port only"
    );
    assert!(
        !allowed(&p, "172.23.1.3", 0, PROTO_UDP),
        "port 0 means no port: no port entry applies"
    );
    assert!(
        allowed(&p, "10.0.0.7", 443, PROTO_TCP) && allowed(&p, "10.0.0.7", 443, PROTO_UDP),
        "no protocol: both"
    );
    assert!(!allowed(&p, "10.0.0.7", 443, PROTO_ICMP));
    assert!(allowed(&p, "fd00::5", 443, PROTO_TCP) && !allowed(&p, "fd00::5", 443, PROTO_UDP));
    assert!(
        p.decide_fragment(ip("172.23.1.3"), PROTO_UDP).allowed,
        "the marker lets fragments through"
    );
    assert!(!p.decide_fragment(ip("172.23.1.3"), PROTO_TCP).allowed);

    let m = p.map_entries();
    let a = ne4(Ipv4Addr::new(172, 23, 1, 3));
    let b = ne4(Ipv4Addr::new(10, 0, 0, 7));
    let (r0, r1) = (2, 3); // after the two loopback rules
    let want4: BTreeMap<_, _> = [
        (PortKey4::new(a, 5064, PROTO_UDP), r0),
        (PortKey4::new(a, 0, PROTO_UDP), r0),
        (PortKey4::new(b, 443, PROTO_TCP), r1),
        (PortKey4::new(b, 0, PROTO_TCP), r1),
        (PortKey4::new(b, 443, PROTO_UDP), r1),
        (PortKey4::new(b, 0, PROTO_UDP), r1),
    ]
    .into();
    assert_eq!(
        m.allow4_port, want4,
        "one entry per protocol, and a port-0 marker each"
    );
    let f = ne6("fd00::5".parse().unwrap());
    assert_eq!(
        m.allow6_port,
        [
            (PortKey6::new(f, 443, PROTO_TCP), 4),
            (PortKey6::new(f, 0, PROTO_TCP), 4)
        ]
        .into()
    );
    assert!(
        m.allow4
            .keys()
            .all(|(l, _)| *l != 32 || m.allow4.len() == 1),
        "port entries are not prefix entries"
    );
}

#[test]
fn map_keys_have_the_kernel_layout() {
    let p = policy("allow-ip = 10.20.0.8\ndeny-ip = 2001:db8::/32\n");
    let m = p.map_entries();
    assert_eq!(
        m.allow4.get(&(32, u32::from_ne_bytes([10, 20, 0, 8]))),
        Some(&2)
    );
    assert_eq!(
        m.allow4.get(&(8, u32::from_ne_bytes([127, 0, 0, 0]))),
        Some(&0),
        "loopback, builtin"
    );
    assert_eq!(
        m.allow6
            .get(&(128, [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])])),
        Some(&1)
    );
    assert_eq!(
        m.deny4.get(&(8, u32::from_ne_bytes([10, 0, 0, 0]))),
        Some(&3),
        "10/8 default"
    );
    let db8 = [u32::from_ne_bytes([0x20, 0x01, 0x0d, 0xb8]), 0, 0, 0];
    let id = *m.deny6.get(&(32, db8)).unwrap();
    assert_eq!(
        p.describe(id),
        format!("deny 2001:db8::/32 (conf {CONF}:2)")
    );
    assert_eq!(
        m.deny4.len(),
        8 + 2 + 1 + 1, /* subnet==route merged */
        "{:?}",
        m.deny4
    );
    let d = p.decide(ip("192.168.1.5"), 1, PROTO_TCP);
    assert_eq!(
        p.describe(d.rule.unwrap()),
        "deny 192.168.1.0/24 (host subnet of eth0)",
        "the longest matching deny"
    );
    let d = p.decide(ip("192.168.2.5"), 1, PROTO_TCP);
    assert_eq!(p.describe(d.rule.unwrap()), "deny 192.168.0.0/16 (default)");
    let d = p.decide(ip("203.0.113.1"), 1, PROTO_TCP);
    assert_eq!(
        p.describe(d.rule.unwrap()),
        "deny 203.0.113.0/24 (host route via tun0)"
    );
    let d = p.decide(ip("198.51.100.7"), 1, PROTO_TCP);
    assert_eq!(
        p.describe(d.rule.unwrap()),
        "deny 198.51.100.7/32 (host address on lo)"
    );
}

#[test]
fn host_subnet_description_and_duplicates_keep_the_first_source() {
    let h = HostNet::from_parts(
        vec![(ip("100.80.1.2"), ip("100.80.1.2"), 24, "wg0".into())],
        vec![(net("100.80.1.0/24"), Some("wg0".into()))],
    );
    let p = Policy::build(
        &conf("deny-ip = 100.80.1.0/24\nallow-ip = 8.8.8.8\nallow-ip = 8.8.8.8\n"),
        &h,
    );
    let d = p.decide(ip("100.80.1.9"), 1, PROTO_TCP);
    assert_eq!(
        p.describe(d.rule.unwrap()),
        format!("deny 100.80.1.0/24 (conf {CONF}:1)"),
        "conf deny came first"
    );
    let d = p.decide(ip("8.8.8.8"), 1, PROTO_TCP);
    assert_eq!(
        p.describe(d.rule.unwrap()),
        format!("allow 8.8.8.8/32 (conf {CONF}:2)")
    );
    assert_eq!(p.map_entries().allow4.len(), 2, "duplicates are one entry");
    let p = Policy::build(&conf(""), &h);
    let d = p.decide(ip("100.80.1.9"), 1, PROTO_TCP);
    assert_eq!(
        p.describe(d.rule.unwrap()),
        "deny 100.80.1.0/24 (host subnet of wg0)",
        "the longest matching deny names the refusal"
    );
    let s = p
        .rules()
        .iter()
        .find(|r| matches!(r.source, Source::HostSubnet { .. }))
        .unwrap();
    assert_eq!(s.to_string(), "deny 100.80.1.0/24 (host subnet of wg0)");
    assert_eq!(p.describe(jail_common::RULE_NONE), "no rule");
    assert!(p.describe(9999).starts_with("unknown rule 9999"));
}

#[test]
fn ipv4_carrying_forms_compile_to_ipv4() {
    let p = policy("allow-ip = ::ffff:10.0.0.5\ndeny-ip = ::ffff:8.8.0.0/112\nallow-ip = [64:ff9b::a00:6]:22/tcp\n");
    let m = p.map_entries();
    assert_eq!(
        m.allow4.get(&(32, ne4(Ipv4Addr::new(10, 0, 0, 5)))),
        Some(&2)
    );
    assert!(
        m.allow6.len() == 1,
        "only ::1 in the IPv6 allow map: {:?}",
        m.allow6
    );
    assert_eq!(
        m.deny4
            .get(&(16, ne4(Ipv4Addr::new(8, 8, 0, 0))))
            .map(|r| p.describe(*r)),
        Some(format!("deny ::ffff:8.8.0.0/112 (conf {CONF}:2)"))
    );
    assert!(
        !allowed(&p, "8.8.4.4", 53, PROTO_UDP),
        "the IPv4 form is denied too: same destination"
    );
    assert!(allowed(&p, "10.0.0.5", 80, PROTO_TCP) && allowed(&p, "::10.0.0.5", 80, PROTO_TCP));
    assert!(allowed(&p, "10.0.0.6", 22, PROTO_TCP) && !allowed(&p, "10.0.0.6", 23, PROTO_TCP));
    assert!(m.allow4_port.contains_key(&PortKey4::new(
        ne4(Ipv4Addr::new(10, 0, 0, 6)),
        22,
        PROTO_TCP
    )));
}

#[test]
fn a_deny_that_would_cover_all_of_ipv4_is_refused() {
    for v in [
        "64:ff9b::/96",
        "::ffff:0:0/96",
        "::/96",
        "::ffff:0:0/100",
        "::ffff:8000:0/97",
    ] {
        let e = parse(Path::new(CONF), format!("\ndeny-ip = {v}\n").as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "{CONF}:2: deny-ip {} carries IPv4 addresses",
                net(v)
            )),
            "{e}"
        );
    }
    // From /104 on (IPv4 /8), accepted and compiled to IPv4.
    let p = policy("deny-ip = 64:ff9b::b00:0/104\n");
    assert!(!allowed(&p, "11.1.2.3", 80, PROTO_TCP));
    assert!(allowed(&p, "12.1.2.3", 80, PROTO_TCP));
    // Shorter than /96 is judged in IPv6 only: accepted, and no IPv4 destination is denied.
    let p = policy("deny-ip = ::/64\n");
    assert!(allowed(&p, "8.8.8.8", 53, PROTO_UDP));
}

#[test]
fn a_deny_of_loopback_in_an_ipv6_form_is_refused() {
    for v in [
        "::ffff:127.0.0.1",
        "::ffff:127.0.0.0/104",
        "::ffff:127.1.0.0/112",
        "64:ff9b::7f00:1",
        "::127.0.0.1",
        "::7f00:0/104",
        "::1",
        "127.0.0.1",
    ] {
        let e = parse(Path::new(CONF), format!("deny-ip = {v}\n").as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("which always stays allowed"), "{v}: {e}");
    }
    // `::/127` holds `::` and `::1`, judged as IPv6: accepted, and ::1 stays allowed.
    let p = policy("deny-ip = ::/127\n");
    assert!(allowed(&p, "::1", 80, PROTO_TCP) && allowed(&p, "127.0.0.1", 80, PROTO_TCP));
    assert!(!allowed(&p, "::", 80, PROTO_TCP));
}

#[test]
fn host_denies_wider_than_ipv4_slash8_are_skipped() {
    let h = HostNet::from_parts(
        vec![],
        vec![
            (net("64:ff9b::/96"), Some("nat64".into())),
            (net("64:ff9b::/104"), None),
            (net("fd00:1::/64"), None),
        ],
    );
    let p = Policy::build(&Conf::empty(Path::new(CONF)), &h);
    assert!(allowed(&p, "8.8.8.8", 53, PROTO_UDP), "IPv4 is not cut off");
    assert!(
        !allowed(&p, "0.1.2.3", 53, PROTO_UDP),
        "0.0.0.0/8 still denied"
    );
    assert!(!allowed(&p, "fd00:1::5", 53, PROTO_UDP));
    let notes = p.skipped_host_denies();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].starts_with("64:ff9b::/96 (host route via nat64) is not denied"),
        "{}",
        notes[0]
    );
    assert!(p
        .rules()
        .iter()
        .any(|r| r.target.net == net("64:ff9b::/104")));
}

#[test]
fn extra_allows_keep_rule_ids_and_name_their_source() {
    let base = policy("allow-ip = 10.20.0.8\n");
    let n = base.rules().len() as RuleId;
    let before = base.map_entries().clone();
    let dns = AllowEntry {
        net: net("10.0.0.53/32"),
        port: Some(PortSpec {
            port: 53,
            proto: None,
        }),
    };
    let fwd = AllowEntry {
        net: net("169.254.1.1/32"),
        port: Some(PortSpec {
            port: 53,
            proto: Some(Proto::Udp),
        }),
    };
    let p = base.with_extra_allow([
        (dns, Source::Resolver),
        (fwd, Source::Builtin("the jail's DNS forwarder")),
    ]);
    assert_eq!(
        p.map_entries().deny4,
        before.deny4,
        "existing ids do not change"
    );
    assert!(allowed(&p, "10.0.0.53", 53, PROTO_UDP) && allowed(&p, "10.0.0.53", 53, PROTO_TCP));
    assert!(!allowed(&p, "10.0.0.53", 80, PROTO_TCP));
    let d = p.decide(ip("10.0.0.53"), 53, PROTO_TCP);
    assert_eq!(d.rule, Some(n));
    assert_eq!(p.describe(n), "allow 10.0.0.53:53 (host DNS resolver)");
    assert_eq!(
        p.describe(n + 1),
        "allow 169.254.1.1:53/udp (builtin: the jail's DNS forwarder)"
    );
}

#[test]
fn digest_is_stable_and_follows_the_entries() {
    let a = policy("allow-ip = 10.20.0.8\n").digest();
    assert_eq!(a, policy("# same\nallow-ip = 10.20.0.8 # again\n").digest());
    assert_eq!(a.len(), 16);
    assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(a, policy("allow-ip = 10.20.0.9\n").digest());
    assert_ne!(
        a,
        Policy::build(&conf("allow-ip = 10.20.0.8\n"), &HostNet::default()).digest()
    );
}

/// `n` IPv4 address:port allows starting at 10.`base`.0.1: `2 * n` allow4_port entries.
fn port_allows(base: u8, n: u32) -> MapEntries {
    let mut text = String::new();
    for i in 0..n {
        let [_, _, c, d] = (i + 1).to_be_bytes();
        text.push_str(&format!("allow-ip = 10.{base}.{c}.{d}:443/tcp\n"));
    }
    policy(&text).map_entries().clone()
}

#[test]
fn a_reload_needs_room_for_old_and_new_at_once() {
    let cap = MAX_PORT_ENTRIES;
    let old = port_allows(1, cap / 2);
    assert_eq!(old.allow4_port.len(), cap as usize);
    assert!(old.over_capacity().is_none(), "a full map is not over");
    // The same entries again: nothing to add, fits.
    assert_eq!(old.reload_over_capacity(&old), None);
    // Fewer entries: nothing new is added before the old are removed, fits.
    let fewer = port_allows(1, cap / 4);
    assert_eq!(fewer.reload_over_capacity(&old), None);
    // One new address:port: two new entries, while the old ones are all still there.
    let mut more = old.clone();
    more.allow4_port.insert(
        PortKey4::new(ne4(Ipv4Addr::new(10, 9, 9, 9)), 443, PROTO_TCP),
        1,
    );
    more.allow4_port.remove(&PortKey4::new(
        ne4(Ipv4Addr::new(10, 1, 0, 1)),
        443,
        PROTO_TCP,
    ));
    assert!(more.over_capacity().is_none(), "the new set alone fits");
    let m = more.reload_over_capacity(&old).expect("old ∪ new does not");
    assert!(
        m.contains(&format!(
            "the allow4_port map (IPv4 ADDR:PORT allow entries, two per entry and protocol) \
             holds {cap} entries now and the new policy adds 1 more, {} in all",
            cap + 1
        )) && m.contains(&format!("the map holds {cap}"))
            && m.contains("Nothing was changed")
            && m.contains("fewer entries or CIDRs"),
        "{m}"
    );
    // A completely different set of half the capacity each: the union is too big.
    let other = port_allows(2, cap / 2);
    assert!(other.reload_over_capacity(&old).is_some());
    assert!(port_allows(2, cap / 4)
        .reload_over_capacity(&fewer)
        .is_none());
    // From empty maps (the first fill) only the new set counts.
    assert_eq!(other.reload_over_capacity(&MapEntries::default()), None);
    // Over capacity alone is reported as such.
    let big = port_allows(3, cap / 2 + 1);
    assert_eq!(
        big.reload_over_capacity(&MapEntries::default()),
        big.over_capacity()
    );
    assert!(big.over_capacity().unwrap().starts_with(&format!(
        "the policy does not fit the maps: {} allow4_port entries",
        cap + 2
    )));
}

#[test]
fn ten_thousand_line_file_compiles() {
    let mut text = String::new();
    for i in 0..10_000u32 {
        let [_, b, c, d] = (i + 1).to_be_bytes();
        if i % 2 == 0 {
            text.push_str(&format!("allow-ip = 10.{b}.{c}.{d}:{}/tcp\n", i % 1000 + 1));
        } else {
            text.push_str(&format!("deny-ip = 203.{b}.{c}.{d}\n"));
        }
    }
    let p = policy(&text);
    let m = p.map_entries();
    assert_eq!(m.allow4_port.len(), 5_000 * 2, "an entry and a marker each");
    assert!(m.over_capacity().is_none());
    assert!(allowed(&p, "10.0.0.1", 1, PROTO_TCP) && !allowed(&p, "10.0.0.1", 2, PROTO_TCP));
    assert!(!allowed(&p, "203.0.0.2", 1, PROTO_TCP));
}

#[test]
fn warnings_for_wide_allows_and_proxies() {
    let p = policy("allow-ip = 10.0.0.0/7\nallow-ip = 172.23.0.5\nallow-ip = [fd00::5]:443/tcp\nhost-port = 3128\n");
    let env = |v: &[(&str, &str)]| {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    };
    let w = p.warnings(&env(&[]));
    assert_eq!(
        w,
        vec![format!(
            "allow 10.0.0.0/7 (conf {CONF}:1) covers the whole default deny range 10.0.0.0/8"
        )]
    );
    let w = p.warnings(&env(&[
        ("https_proxy", "http://user:pw@172.23.0.5:3128/"),
        ("ALL_PROXY", "socks5h://[fd00::5]:443"),
        ("http_proxy", "proxy.corp.example:3128"),
        ("HTTP_PROXY", "http://localhost:3128"),
        ("HTTPS_PROXY", "http://127.0.0.1:8080"),
    ]));
    assert_eq!(w.len(), 4, "{w:#?}");
    let notes = p.proxy_notes(&env(&[
        ("http_proxy", "proxy.corp.example:3128"),
        ("HTTP_PROXY", "http://localhost:3128"),
        ("ftp_proxy", "http://[fd00::5]:21"),
    ]));
    assert_eq!(
        notes,
        vec![
            "the proxy host \"proxy.corp.example\" of http_proxy was not checked against \
             the allow entries: it is not an IP literal, and claude-jail resolves no names \
             (if it resolves to an allowed address, the proxy is a pivot to everything \
             behind it)"
        ]
    );
    assert!(
        w[1].starts_with(&format!(
            "allow 172.23.0.5/32 (conf {CONF}:2) allows the proxy https_proxy="
        )),
        "{}",
        w[1]
    );
    assert!(w[2].starts_with("allow [fd00::5]:443/tcp"), "{}", w[2]);
    assert!(
        w[3].starts_with(&format!(
            "host-port 3128 (conf {CONF}:4) opens the proxy HTTP_PROXY="
        )),
        "{}",
        w[3]
    );
    assert!(
        policy("allow-ip = 0.0.0.0/0\n").warnings(&[]).len() == 8,
        "every IPv4 default range"
    );
    assert!(
        policy("allow-ip = ::ffff:0:0/96\n").warnings(&[]).len() == 8,
        "mapped form is IPv4"
    );
    assert!(policy("allow-ip = fc00::/7\n").warnings(&[]).len() == 1);
    assert!(policy("allow-ip = 10.0.0.1\n").warnings(&[]).is_empty());
}

/// The verdict straight from the rules, written independently of the compiler: the model
/// `decide` (and so the maps) must agree with.
fn naive(rules: &[Rule], ip: IpAddr, port: u16, proto: u8) -> (bool, Option<usize>) {
    let embeds = |x: Ipv4Addr| -> Vec<Ipv6Addr> {
        let x = u128::from(u32::from(x));
        let mut v = vec![
            Ipv6Addr::from(0xffff_0000_0000 | x),
            Ipv6Addr::from(NAT64_HI << 32 | x),
        ];
        if x > 1 {
            v.push(Ipv6Addr::from(x));
        }
        v
    };
    let dst: Result<Ipv4Addr, Ipv6Addr> = match ip {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(x) => Ok(x),
            None => {
                let s = a.segments();
                let low =
                    Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
                if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || (s[..6] == [0; 6] && u32::from(low) > 1)
                {
                    Ok(low)
                } else {
                    Err(a)
                }
            }
        },
    };
    let matches = |r: &Rule| {
        let net_ok = match (dst, r.target.net) {
            (Ok(x), IpNet::V4(n)) => n.contains(&x),
            (Ok(x), IpNet::V6(n)) => {
                n.prefix_len() >= 96 && embeds(x).iter().any(|e| n.contains(e))
            }
            (Err(y), IpNet::V6(n)) => n.contains(&y),
            (Err(_), IpNet::V4(_)) => false,
        };
        let port_ok = match r.target.port {
            None => true,
            Some(ps) => {
                port != 0 && port == ps.port && ps.protos().iter().any(|p| p.number() == proto)
            }
        };
        net_ok && port_ok
    };
    if let Some(i) = rules
        .iter()
        .position(|r| r.action == Action::Allow && matches(r))
    {
        return (true, Some(i));
    }
    match rules
        .iter()
        .position(|r| r.action == Action::Deny && matches(r))
    {
        Some(i) => (false, Some(i)),
        None => (true, None),
    }
}

/// Addresses from a small pool so that rules and destinations overlap often.
fn v4_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![
        any::<u32>(),
        (0u32..4, any::<u16>()).prop_map(|(hi, lo)| [0x0a00_0000, 0xc0a8_0000, 0, 0x7f00_0000]
            [hi as usize]
            | u32::from(lo)),
    ]
}

fn ip_strategy() -> impl Strategy<Value = IpAddr> {
    let v4 = v4_strategy().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a)));
    let v6 = prop_oneof![
        any::<u128>(),
        v4_strategy().prop_map(|a| 0xffff_0000_0000 | u128::from(a)),
        v4_strategy().prop_map(u128::from),
        v4_strategy().prop_map(|a| NAT64_HI << 32 | u128::from(a)),
        (0u128..4),
        (any::<u16>(), any::<u64>()).prop_map(|(a, b)| [0xfd00u128, 0x2002, 0x2001, 0xfe80]
            [a as usize % 4]
            << 112
            | u128::from(b)),
    ]
    .prop_map(|a| IpAddr::V6(Ipv6Addr::from(a)));
    prop_oneof![v4, v6]
}

fn rule_strategy() -> impl Strategy<Value = Rule> {
    let net = (ip_strategy(), any::<u8>()).prop_map(|(a, l)| {
        let max = if a.is_ipv4() { 32 } else { 128 };
        // Mostly long prefixes, sometimes short ones.
        let len = if l < 200 {
            max - (l % 9).min(max)
        } else {
            l % (max + 1)
        };
        IpNet::new(a, len).unwrap().trunc()
    });
    let port = prop_oneof![
        Just(None),
        (1u16..4, 0u8..3).prop_map(|(p, pr)| Some(PortSpec {
            port: p,
            proto: [None, Some(Proto::Tcp), Some(Proto::Udp)][pr as usize]
        })),
    ];
    (net, port, any::<bool>()).prop_map(|(net, port, allow)| {
        let single = net.prefix_len() == net.max_prefix_len();
        let (action, port) = if allow {
            (Action::Allow, if single { port } else { None })
        } else {
            (Action::Deny, None)
        };
        Rule {
            action,
            target: AllowEntry { net, port },
            source: Source::Builtin("test"),
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decide_agrees_with_the_naive_model(
        rules in prop::collection::vec(rule_strategy(), 0..12),
        dsts in prop::collection::vec((ip_strategy(), 0u16..4, prop_oneof![Just(PROTO_TCP), Just(PROTO_UDP), Just(PROTO_ICMP)]), 1..16),
        host_routes in prop::collection::vec(rule_strategy(), 0..3),
    ) {
        let h = HostNet::from_parts(vec![], host_routes.iter().map(|r| (r.target.net, None)).collect());
        let p = Policy::build(&Conf::empty(Path::new("t")), &h).with_extra_allow(
            rules.iter().filter(|r| r.action == Action::Allow).map(|r| (r.target, r.source.clone())));
        // Deny rules from the strategy come in as conf denies.
        let mut c = Conf::empty(Path::new("t"));
        for r in rules.iter().filter(|r| r.action == Action::Deny) {
            c.deny.push(Located::at(1, r.target.net));
        }
        let p2 = Policy::build(&c, &h).with_extra_allow(
            rules.iter().filter(|r| r.action == Action::Allow).map(|r| (r.target, r.source.clone())));
        for pol in [&p, &p2] {
            for &(ip, port, proto) in &dsts {
                let want = naive(pol.rules(), ip, port, proto);
                let got = pol.decide(ip, port, proto);
                prop_assert_eq!(got.allowed, want.0, "{} port {} proto {} in {:#?}", ip, port, proto, pol.rules());
                if let Some(id) = got.rule {
                    let r = pol.rule(id).unwrap();
                    let alone = naive(std::slice::from_ref(r), ip, port, proto);
                    prop_assert!(alone.1.is_some(), "the rule decide names ({}) matches {}", r, ip);
                    prop_assert_eq!(r.action == Action::Allow, got.allowed);
                } else {
                    prop_assert_eq!(want.1, None);
                }
            }
        }
    }

    #[test]
    fn allowed_slash24_inside_default_deny(net24 in 0u32..65536, host in any::<u8>(), out in any::<u8>()) {
        let base = 0x0a00_0000 | (net24 << 8);
        let n = Ipv4Net::new(Ipv4Addr::from(base), 24).unwrap();
        let p = policy(&format!("allow-ip = {n}\n"));
        let inside = Ipv4Addr::from(base | u32::from(host));
        prop_assert!(p.decide(IpAddr::V4(inside), 443, PROTO_TCP).allowed, "{} inside allowed {}", inside, n);
        let next = if net24 < 65535 { base + 256 } else { base - 256 };
        let outside = Ipv4Addr::from(next | u32::from(out));
        let d = p.decide(IpAddr::V4(outside), 443, PROTO_TCP);
        prop_assert!(!d.allowed, "{} just outside {} is in 10/8", outside, n);
        prop_assert_eq!(p.describe(d.rule.unwrap()), "deny 10.0.0.0/8 (default)");
    }

    #[test]
    fn map_entries_are_deterministic(rules in prop::collection::vec(rule_strategy(), 0..12)) {
        let build = || Policy::build(&Conf::empty(Path::new("t")), &HostNet::default()).with_extra_allow(
            rules.iter().filter(|r| r.action == Action::Allow).map(|r| (r.target, r.source.clone())));
        let (a, b) = (build(), build());
        prop_assert_eq!(a.map_entries(), b.map_entries());
        prop_assert_eq!(build().digest(), build().digest());
    }
}
