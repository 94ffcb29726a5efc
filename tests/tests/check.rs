//! `claude-jail check` (issue 12, item 5): one line per prerequisite, each failure with its fix,
//! exit 0 only when a jail can start; nothing of the check is left behind.
use std::{fs, os::unix::fs::PermissionsExt};

use jail_tests::{
    have_root,
    jail::{claude_jail, claude_jail_after, leftovers, write_conf},
    FakeWorld,
};

#[test]
fn check_is_green_where_a_jail_starts_and_names_the_fix_where_it_cannot() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    fs::set_permissions(world.dir(), fs::Permissions::from_mode(0o755)).unwrap();
    let conf = write_conf(&world, "claude-sandbox.conf", "allow-ip = 10.1.2.3\n").unwrap();
    let conf = conf.display().to_string();

    let out = claude_jail(&world, &["check", "--config", &conf])
        .unwrap()
        .output()
        .unwrap();
    let o = String::from_utf8_lossy(&out.stdout);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "all green here: {o}\n{e}");
    for name in ["conf", "privileges", "tun", "cgroup2", "ebpf", "pasta"] {
        assert!(
            o.lines().any(|l| l.starts_with("ok") && l.split_whitespace().nth(1) == Some(name)),
            "an ok line for {name}: {o}"
        );
    }
    assert!(leftovers(&world, &[]).is_empty(), "the check leaves nothing");
    let cg = claude_jail::cgroup::cgroup2_mount()
        .unwrap()
        .join(claude_jail::cgroup::PARENT);
    let probes: Vec<_> = fs::read_dir(&cg)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("check-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(probes.is_empty(), "the probe's cgroup is removed: {probes:?}");

    // The same as JSON.
    let out = claude_jail(&world, &["check", "--json", "--config", &conf])
        .unwrap()
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["checks"].as_array().unwrap().len() >= 6, "{v}");

    // No tun device: that line fails with its fix, the exit status says so.
    let out = claude_jail_after(
        &world,
        "mount -t tmpfs none /dev/net || exit 1",
        &["check", "--config", &conf],
    )
    .unwrap()
    .output()
    .unwrap();
    let o = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a jail cannot start: {o}");
    let tun = o.lines().find(|l| l.contains(" tun ")).unwrap_or("");
    assert!(
        tun.starts_with("FAIL") && tun.contains("fix:"),
        "the tun line fails with its fix: {o}"
    );
    assert!(
        o.lines().any(|l| l.starts_with("ok") && l.contains(" ebpf ")),
        "the other lines are still tried: {o}"
    );

    // An invalid conf.
    let bad = write_conf(&world, "bad.conf", "allow-ip = nonsense\n").unwrap();
    let out = claude_jail(&world, &["check", "--config", &bad.display().to_string()])
        .unwrap()
        .output()
        .unwrap();
    let o = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{o}");
    assert!(
        o.lines().any(|l| l.starts_with("FAIL") && l.contains("bad.conf:1:")),
        "the conf line names the file and line: {o}"
    );

    // A normal user without a sudo rule: told so, with the fix.
    let out = world
        .host_command("setpriv")
        .unwrap()
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--"])
        .arg(jail_tests::jail::claude_jail_bin().unwrap())
        .args(["check", "--config", &conf])
        .output()
        .unwrap();
    let o = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{o}");
    assert!(
        o.lines()
            .any(|l| l.starts_with("FAIL") && l.contains(" sudo ") && l.contains("fix:")),
        "the sudo line fails with its fix: {o}"
    );
}
