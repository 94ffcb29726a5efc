//! `claude-jail run` end to end, in the fake world: the jailed command reaches the internet and
//! DNS, and nothing internal.
use std::{fs, os::unix::fs::PermissionsExt, path::PathBuf};

use jail_tests::{have_root, jail::run_jailed, FakeWorld};

/// A root-owned conf file in a root-owned directory (the launcher refuses anything else).
fn conf(world: &FakeWorld, text: &str) -> PathBuf {
    let p = world.dir().join("claude-sandbox.conf");
    fs::write(&p, text).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    p
}

#[test]
fn jailed_shell_reaches_the_internet_and_dns_but_nothing_internal() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let conf = conf(&world, "allow-ip = 10.0.0.5:22/tcp\n");
    let out = run_jailed(
        &world,
        &conf,
        "for d in 203.0.113.10/80 10.0.0.5/22 10.0.0.5/80 192.168.1.5/80 169.254.169.254/80 \
         192.168.1.1/8080 127.0.0.1/8080; do \
           if (exec 3<>/dev/tcp/${d%/*}/${d#*/}) 2>/dev/null; then echo \"$d open\"; else echo \"$d closed\"; fi; \
         done; getent hosts public.test.example",
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "run failed: {stdout}\n{stderr}");
    eprintln!("{stdout}\n{stderr}");
}
