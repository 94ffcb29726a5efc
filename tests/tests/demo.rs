//! `cargo xtask demo`: a jailed probe in a throwaway fake network, showing what was refused and
//! what got through. It is also a test: the table must come out as the policy says.
use std::{fs, os::unix::fs::PermissionsExt};

use jail_tests::{have_root, jail::run_jailed, FakeWorld};

const TARGETS: [(&str, &str, bool); 10] = [
    ("203.0.113.10:80", "public internet server", true),
    (
        "10.0.0.5:22",
        "LAN host, allowed by `allow-ip = 10.0.0.5:22/tcp`",
        true,
    ),
    ("10.0.0.5:80", "same LAN host, another port", false),
    ("172.16.0.5:80", "LAN host in 172.16/12", false),
    ("192.168.1.5:80", "LAN host in 192.168/16", false),
    ("100.64.0.5:80", "CGNAT / Tailscale range", false),
    ("169.254.169.254:80", "cloud metadata service", false),
    (
        "192.168.1.100:8080",
        "the host's LAN address (the jail holds a copy of it; the host's service is not reached)",
        false,
    ),
    (
        "192.168.1.1:8080",
        "the gateway (pasta maps it to the host's loopback unless told not to)",
        false,
    ),
    (
        "127.0.0.1:8080",
        "the host's loopback service, from the jail's loopback",
        false,
    ),
];

#[test]
fn demo() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().expect("fake world");
    let conf = world.dir().join("claude-sandbox.conf");
    fs::write(&conf, "# demo\nallow-ip = 10.0.0.5:22/tcp\n").unwrap();
    fs::set_permissions(&conf, fs::Permissions::from_mode(0o644)).unwrap();
    let mut script = String::from(
        "getent hosts public.test.example >/dev/null && echo dns ok || echo dns failed;",
    );
    for (t, _, _) in TARGETS {
        let (h, p) = t.split_once(':').unwrap();
        script.push_str(&format!(
            "if timeout 5 bash -c 'exec 3<>/dev/tcp/{h}/{p}' 2>/dev/null; then echo '{t} reached'; else echo '{t} refused'; fi;"
        ));
    }
    let out = run_jailed(&world, &conf, &script).expect("claude-jail run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "claude-jail run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("\nclaude-jail demo: a jailed shell (user nobody) in a fake network");
    println!("conf: allow-ip = 10.0.0.5:22/tcp\n");
    println!("{:<22} {:<9} what it is", "destination", "result");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"dns ok"),
        "the test domain resolves through pasta's forwarder to dnsmasq on 10.0.0.53"
    );
    println!(
        "{:<22} {:<9} DNS, through pasta's forwarder to a resolver on 10.0.0.53",
        "public.test.example", "resolved"
    );
    for ((t, what, expect), line) in TARGETS.iter().zip(&lines[1..]) {
        let reached = line.ends_with("reached");
        println!(
            "{:<22} {:<9} {}",
            t,
            if reached { "reached" } else { "REFUSED" },
            what
        );
        assert_eq!(
            reached,
            *expect,
            "{t} ({what}) must be {}",
            if *expect { "reachable" } else { "refused" }
        );
    }
    println!();
}
