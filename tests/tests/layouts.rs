//! Cgroup layouts: the jail starts, and hides the host's cgroups, on every layout a
//! host or a container may have. This machine is hybrid (cgroup v1 controllers under a tmpfs at
//! /sys/fs/cgroup, cgroup2 at /sys/fs/cgroup/unified); most hosts are unified (cgroup2 *is*
//! /sys/fs/cgroup); containers often put cgroup2 below a tmpfs of their own. Each layout is
//! emulated in a private mount namespace of the world's host (the cgroup2 superblock is the same
//! one, so the cgroups made there are the real ones).
//!
//! `cargo xtask test` also runs the launch, containment, enforcement and running tests a second
//! time with the unified layout emulated for the whole test process
//! (`CLAUDE_JAIL_TEST_CGROUP_LAYOUT=unified`); [`the_test_process_runs_on_the_layout_it_was_asked_for`]
//! makes sure that pass really is unified.
use std::{fs, os::unix::fs::PermissionsExt};

use jail_tests::{
    have_root,
    jail::{claude_jail_after, leftovers, write_conf},
    FakeWorld,
};

/// Emulates a unified host: the host's cgroup mounts go, and cgroup2 is mounted at
/// /sys/fs/cgroup itself (the layout on which a plain cgroup2 mount at that point is EBUSY).
pub const UNIFIED: &str = "umount -R /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup";

/// A container's layout: a tmpfs of its own at /sys/fs/cgroup, the host's cgroup2 bound below it
/// at a name the launcher cannot guess.
const BELOW_TMPFS: &str = "cg=$(awk '/ - cgroup2 / { print $5; exit }' /proc/self/mountinfo) \
     && mount --bind \"$cg\" /mnt && umount -R /sys/fs/cgroup \
     && mount -t tmpfs -o mode=0755 cjt-cgroup /sys/fs/cgroup \
     && mkdir /sys/fs/cgroup/v2 && mount --move /mnt /sys/fs/cgroup/v2";

/// What the jailed command sees of cgroups: every cgroup2 mount, the cgroup.procs files below
/// /sys/fs/cgroup, and its own cgroup.
const SHOW_CGROUPS: &str = "echo cgroup2_mounts=$(awk '/ - cgroup2 / { print $5 }' /proc/self/mountinfo | tr '\\n' ,); \
     echo procs_files=$(find /sys/fs/cgroup -name cgroup.procs 2>/dev/null | wc -l); \
     echo self=$(grep '^0::' /proc/self/cgroup); \
     echo root_procs=$(cat \"$(awk '/ - cgroup2 / { print $5; exit }' /proc/self/mountinfo)/cgroup.procs\" | wc -l); \
     (exec 3<>/dev/tcp/10.0.0.5/80) 2>&1 | head -c 200; echo; \
     (exec 3<>/dev/tcp/203.0.113.10/80 && head -n1 <&3) 2>&1";

fn launch_on(world: &FakeWorld, layout: &str, name: &str) {
    let conf = write_conf(world, "claude-sandbox.conf", "").unwrap();
    let conf = conf.display().to_string();
    let out = claude_jail_after(
        world,
        &format!("{layout} || exit 1"),
        &[
            "run",
            "--config",
            &conf,
            "--user",
            "nobody",
            "--",
            "bash",
            "-c",
            SHOW_CGROUPS,
        ],
    )
    .unwrap()
    .output()
    .unwrap();
    let o = String::from_utf8_lossy(&out.stdout);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{name}: the jail starts on this layout: {}\n{o}\n{e}",
        out.status
    );
    let line = |k: &str| {
        o.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("{name}: no {k} in {o}"))
            .to_string()
    };
    // The host's cgroup2 is gone; only the jail's own (rooted at the jail's cgroup by its
    // cgroup namespace) is mounted, and it shows one cgroup: the jail's root.
    assert_eq!(
        line("self="),
        "0::/",
        "{name}: the command sits at the root of its cgroup namespace"
    );
    assert_eq!(
        line("procs_files="),
        "1",
        "{name}: only the jail's own cgroup is visible below /sys/fs/cgroup: {o}"
    );
    assert_ne!(
        line("root_procs="),
        "0",
        "{name}: the visible cgroup2's root is the jail's cgroup (its processes are listed): {o}"
    );
    assert!(
        o.contains("Operation not permitted") || o.contains("not permitted"),
        "{name}: a denied range is refused (EPERM): {o}"
    );
    assert!(
        o.contains("hello from 203.0.113.10:80"),
        "{name}: the public server is reached: {o}\n{e}"
    );
    let left = leftovers(world, &[]);
    assert!(left.is_empty(), "{name}: nothing is left behind: {left:?}");
}

#[test]
fn the_jail_starts_and_hides_the_hosts_cgroups_on_every_layout() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    fs::set_permissions(world.dir(), fs::Permissions::from_mode(0o755)).unwrap();
    // The layout the test process has (hybrid on this machine, unified in xtask's second pass).
    launch_on(&world, ":", "this machine's layout");
    // The kernel refuses a cgroup2 mount onto the root of a cgroup2 mount (EBUSY): the jail
    // covers /sys/fs/cgroup with a tmpfs first.
    launch_on(&world, UNIFIED, "unified");
    launch_on(&world, BELOW_TMPFS, "cgroup2 below a tmpfs");
}

/// `cargo xtask test` asks for a layout in CLAUDE_JAIL_TEST_CGROUP_LAYOUT; this checks that the
/// test process really has it, so a pass meant to be unified cannot silently run hybrid.
#[test]
fn the_test_process_runs_on_the_layout_it_was_asked_for() {
    let Some(want) = std::env::var_os("CLAUDE_JAIL_TEST_CGROUP_LAYOUT") else {
        eprintln!("no CLAUDE_JAIL_TEST_CGROUP_LAYOUT: nothing to check");
        return;
    };
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let at = |fstype: &str| -> Vec<String> {
        mountinfo
            .lines()
            .filter_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                (right.split_whitespace().next()? == fstype)
                    .then(|| left.split_whitespace().nth(4).unwrap_or("").to_string())
            })
            .collect()
    };
    match want.to_str() {
        Some("unified") => {
            assert_eq!(
                at("cgroup2"),
                ["/sys/fs/cgroup"],
                "unified: cgroup2 is mounted at /sys/fs/cgroup and nowhere else"
            );
            assert!(at("cgroup").is_empty(), "unified: no cgroup v1 mount");
        }
        Some("host") => {}
        other => panic!("unknown CLAUDE_JAIL_TEST_CGROUP_LAYOUT {other:?}"),
    }
}
