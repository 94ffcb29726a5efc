//! Containers (issue 10): claude-jail where devcontainers run it.
//!
//! - Root without CAP_BPF but with CAP_SYS_ADMIN (docker 20.10 does not know CAP_BPF): the kernel
//!   accepts bpf() with CAP_SYS_ADMIN, and so does the preflight.
use std::{fs, os::unix::fs::PermissionsExt};

use jail_tests::{
    have_root,
    jail::{claude_jail_after, leftovers, write_conf},
    FakeWorld,
};

/// Refused then reached: a denied LAN host and the public server, from the jail.
const PROBE: &str = "(exec 3<>/dev/tcp/10.0.0.5/80) 2>&1 | head -c 200; echo; \
                     (exec 3<>/dev/tcp/203.0.113.10/80 && head -n1 <&3) 2>&1";

#[test]
fn root_without_cap_bpf_but_with_cap_sys_admin_builds_the_jail() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    fs::set_permissions(world.dir(), fs::Permissions::from_mode(0o755)).unwrap();
    let conf = write_conf(&world, "claude-sandbox.conf", "").unwrap();
    let conf = conf.display().to_string();
    let out = claude_jail_after(
        &world,
        "exec setpriv --inh-caps=-bpf --bounding-set=-bpf -- sh -c 'exec \"$@\"' sh \"$@\"",
        &[
            "run", "--config", &conf, "--user", "nobody", "--", "bash", "-c", PROBE,
        ],
    )
    .unwrap()
    .output()
    .unwrap();
    let o = String::from_utf8_lossy(&out.stdout);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "without CAP_BPF, CAP_SYS_ADMIN stands in for it (bpf_capable()): {}\n{o}\n{e}",
        out.status
    );
    assert!(
        o.contains("Operation not permitted"),
        "the programs are attached: a denied host is refused with EPERM: {o}"
    );
    assert!(
        o.contains("hello from 203.0.113.10:80"),
        "the public server is reached: {o}"
    );
    assert!(leftovers(&world, &[]).is_empty());
}
