//! Containers: claude-jail where devcontainers run it.
//!
//! - Root without CAP_BPF but with CAP_SYS_ADMIN (docker 20.10 does not know CAP_BPF): the kernel
//!   accepts bpf() with CAP_SYS_ADMIN, and so does the preflight.
//! - A real rootful podman container (Debian's podman, runc), from a local image, started with
//!   docs/devcontainer.md's run arguments and postStartCommand, in the fake world: the
//!   container's user starts a jail through sudo; and with each setting missing in turn, the
//!   refusal names that setting.
//! - Rootless podman (issue 14; harness in tests/src/podman.rs): a host user with subordinate ids
//!   and no sudo runs a container whose only extra setting is `--device=/dev/net/tun`, and the
//!   container's user `dev` starts a jail without sudo: the nftables mode, which keeps the
//!   container's /proc under a Landlock domain (a fresh one is refused there, (a) below).
//!
//! Measured in that rootless container (2026-11-29, kernel 6.18, podman 4.3.1 + runc,
//! default seccomp profile, default masks, default network slirp4netns; same results for the
//! container's `dev` and its root; docs/devcontainer.md, "Rootless podman: what the kernel
//! allows", has the details):
//! (a) `unshare --user --map-current-user --net --mount --pid --fork --mount-proc true`:
//!     `mount /proc failed: Operation not permitted`. The same happens with `--map-root-user` and
//!     with `-o subset=pid` or `hidepid=invisible,subset=pid`. podman's masks (/proc/acpi tmpfs,
//!     /proc/keys and /proc/timer_list, read-only /proc/bus, fs, irq and sys) are locked
//!     submounts, so `mount_too_revealing()` refuses the mount.
//!     `--security-opt unmask=/proc/*` or `unmask=ALL` lets every form succeed.
//! (b) Without `--mount-proc`, `--pid --fork` works: the command is PID 1. The container's /proc
//!     stays, so the container's processes are listed and readable for cmdline and status, but
//!     not for environ, maps, root or cwd (EACCES, the ptrace check across user namespaces), and
//!     they cannot be signalled.
//! (c) landlock ABI 7. The default seccomp profile allows the three landlock syscalls;
//!     restrict_self succeeds after no_new_privs and fails with EPERM without it. It also
//!     allows setns (nsenter into the user's own namespaces works) and
//!     unshare(CLONE_NEWUSER|NEWNET|NEWNS|NEWPID|NEWIPC), and NEWCGROUP.
//! (d) The project's pasta, run as the container's user and attached with `--userns
//!     /proc/PID/ns/user --netns /proc/PID/ns/net` to `unshare --user --map-current-user --net
//!     sleep 100`, configures it with 10.0.2.100/24 via 10.0.2.2, copied from slirp4netns, and the
//!     fake world's public server answers. A TRAP for the nftables mode: the jail's own address is
//!     inside the denied 10/8, so a reject's ICMP error (or TCP reset) to the local socket is
//!     rejected in turn, and a connect to 10.0.0.5 hangs instead of failing.
//!     `oif "lo" accept` before the deny rules makes it fail at once; claude-jail's table accepts
//!     the kernel's own ICMP errors, and the jail's own addresses, before its deny rules.
//!     Rootless `--network ns:` to the world's namespace fails (runc: "can't get final
//!     child's PID"), so the container uses podman's default network. slirp4netns runs in the
//!     world's host namespace.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Output, Stdio},
};

use jail_tests::{
    have_root,
    jail::{claude_jail_after, claude_jail_bin, leftovers, world_with_conf},
    pasta::locate_pasta,
    podman::{rootfs_tar, RootlessPodman, IMAGE, POD_UID, SUBID_COUNT, SUBID_START},
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
    let (world, conf) = world_with_conf("").unwrap();
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

/// The devcontainer run arguments for the eBPF mode: exactly what docs/devcontainer.md gives.
const RUN_ARGS: [&str; 4] = [
    "--device=/dev/net/tun",
    "--cap-add=SYS_ADMIN",
    "--cap-add=NET_ADMIN",
    "--cap-add=BPF",
];

/// docs/devcontainer.md's postStartCommand: the container's cgroup2 made writable.
const POST_START: &str = "sudo mount -o remount,rw /sys/fs/cgroup";
/// The same, run as root.
const POST_START_ROOT: &str = "mount -o remount,rw /sys/fs/cgroup";

/// Rootful podman (Debian's 4.3) in the world's host namespaces, with its own storage, run
/// directory and configuration under the world's directory. Each call runs in a private mount
/// namespace whose /sys/fs/cgroup is cgroup2 (podman with runc, no systemd, needs a unified
/// layout; on this hybrid machine it is emulated there).
struct Podman<'w> {
    world: &'w FakeWorld,
    dir: std::path::PathBuf,
}

impl<'w> Podman<'w> {
    fn new(world: &'w FakeWorld) -> Podman<'w> {
        let dir = world.dir().join("podman");
        fs::create_dir_all(&dir).unwrap();
        // runc, not crun (crun cannot raise RLIMIT_MEMLOCK here); pinned ulimits; no systemd.
        fs::write(
            dir.join("containers.conf"),
            "[containers]\n\
             default_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n\
             pids_limit = 0\n\
             [engine]\n\
             cgroup_manager = \"cgroupfs\"\n\
             runtime = \"runc\"\n\
             events_logger = \"file\"\n",
        )
        .unwrap();
        fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{0}/storage\"\nrunroot = \"{0}/run\"\n",
                dir.display()
            ),
        )
        .unwrap();
        let p = Podman { world, dir };
        let out = p
            .cmd(&["import", &rootfs_tar().display().to_string(), IMAGE])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        p
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.world.host_command("unshare").unwrap();
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                "umount -R /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup \
                 && exec podman \"$@\"",
            )
            .arg("podman")
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .stdin(Stdio::null());
        cmd
    }

    /// `podman run` of `script` as the container's user `dev`, in the world's host network
    /// namespace, with claude-jail and the project's pasta where an installation puts them.
    fn run(&self, run_args: &[&str], script: &str) -> Output {
        let pasta = fs::canonicalize(locate_pasta().unwrap()).unwrap();
        let avx2 = format!("{}.avx2", pasta.display());
        let mut volumes = vec![];
        for (from, to) in [
            (
                claude_jail_bin().unwrap().display().to_string(),
                "/usr/local/bin/claude-jail",
            ),
            (pasta.display().to_string(), "/usr/local/bin/pasta"),
            (avx2, "/usr/local/bin/pasta.avx2"),
        ] {
            volumes.push(format!("--volume={from}:{to}:ro"));
        }
        let mut all: Vec<&str> = run_args.to_vec();
        all.extend(volumes.iter().map(String::as_str));
        self.run_as("dev", &all, script)
    }

    /// `podman run` of `script` as `user`, in the world's host network namespace, with
    /// `run_args`.
    fn run_as(&self, user: &str, run_args: &[&str], script: &str) -> Output {
        let mut args: Vec<String> = [
            "run",
            "--rm",
            "--user",
            user,
            "--hostname",
            "devbox",
            "--add-host",
            "devbox:127.0.1.1",
        ]
        .map(String::from)
        .to_vec();
        args.push(format!(
            "--network=ns:{}",
            self.world.host_netns_path().display()
        ));
        args.extend(run_args.iter().map(|s| s.to_string()));
        args.extend([IMAGE.into(), "bash".into(), "-c".into(), script.into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cmd(&args).output().unwrap()
    }
}

#[test]
fn in_a_rootful_podman_devcontainer_the_jail_starts_and_each_missing_setting_is_named() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    fs::set_permissions(world.dir(), fs::Permissions::from_mode(0o755)).unwrap();
    let podman = Podman::new(&world);
    let jailed = format!("{POST_START} && sudo claude-jail run -- bash -c '{PROBE}'");

    // The documented settings: the jail starts as the container's user through sudo, refuses a
    // LAN host with EPERM and reaches the public server.
    let out = podman.run(&RUN_ARGS, &jailed);
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("--- documented settings:\n{o}\n{e}");
    assert!(
        out.status.success(),
        "with docs/devcontainer.md's settings the jail starts in the container: {}\n{o}\n{e}",
        out.status
    );
    assert!(
        o.contains("Operation not permitted"),
        "a denied range is refused with EPERM in the container's jail: {o}\n{e}"
    );
    assert!(
        o.contains("hello from 203.0.113.10:80"),
        "the public server is reached: {o}\n{e}"
    );
    assert!(
        world
            .hits("10.0.0.5".parse::<std::net::IpAddr>().unwrap())
            .is_empty(),
        "nothing reached the LAN host"
    );

    // `--privileged` alone also works (a writable cgroup2 at /sys/fs/cgroup itself: the layout
    // on which the jail's cgroup cover once failed with EBUSY).
    let out = podman.run(
        &["--privileged"],
        &format!("sudo claude-jail run -- bash -c '{PROBE}'"),
    );
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success()
            && o.contains("Operation not permitted")
            && o.contains("hello from 203.0.113.10:80"),
        "--privileged: the jail starts and enforces: {}\n{o}\n{e}",
        out.status
    );

    // Default capabilities, the backend left to `auto`: eBPF cannot load, so the nftables mode
    // enforces the jail (the container's masked /proc kept, under a Landlock domain); the LAN
    // host is refused at once, the public server answers.
    let out = podman.run(
        &["--device=/dev/net/tun"],
        &format!(
            "sudo claude-jail check >&2; echo \"check-exit=$?\"; \
             sudo claude-jail run -- bash -c '{PROBE}'"
        ),
    );
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success()
            && o.contains("No route to host")
            && o.contains("hello from 203.0.113.10:80")
            && e.contains("enforced by nftables"),
        "default capabilities: the nftables mode starts and enforces: {}\n{o}\n{e}",
        out.status
    );
    assert!(
        o.contains("check-exit=0")
            && e.contains("ok    backend    nftables")
            && e.contains("note  privileges"),
        "and `check` says the jail can start, by nftables, the eBPF lines as notes: {}\n{o}\n{e}",
        out.status
    );

    // Each prerequisite of the eBPF mode missing in turn (`egress-backend = ebpf`): exit 125,
    // and the message names the setting to add.
    let ebpf_only = "echo 'egress-backend = ebpf' | sudo tee /etc/claude-sandbox.conf >/dev/null";
    let without =
        |arg: &str| -> Vec<&str> { RUN_ARGS.iter().copied().filter(|a| *a != arg).collect() };
    let no_tun = without("--device=/dev/net/tun");
    let no_caps: Vec<&str> = vec!["--device=/dev/net/tun"];
    for (name, args, script, setting) in [
        (
            "no tun device",
            &no_tun[..],
            jailed.as_str(),
            "--device=/dev/net/tun",
        ),
        (
            "default capabilities",
            &no_caps[..],
            &format!("{ebpf_only}; sudo claude-jail run -- true"),
            "--cap-add=SYS_ADMIN --cap-add=NET_ADMIN --cap-add=BPF",
        ),
        (
            "read-only cgroup2",
            &RUN_ARGS[..],
            "sudo claude-jail run -- true",
            "postStartCommand",
        ),
    ] {
        let out = podman.run(args, script);
        let e = String::from_utf8_lossy(&out.stderr);
        eprintln!("--- {name}:\n{e}");
        assert_eq!(
            out.status.code(),
            Some(125),
            "{name}: the jail cannot be built, exit 125: {e}"
        );
        assert!(
            e.contains(setting) && e.contains("podman container"),
            "{name}: the message names the container setting to add ({setting}): {e}"
        );
        assert!(
            e.contains("CLAUDE_SANDBOX_EGRESS_JAIL=0"),
            "{name}: and the escape hatch: {e}"
        );
    }
}

/// In a user namespace (rootless podman; here `unshare --user --map-root-user`) no capability
/// counts for bpf(): with `egress-backend = ebpf` the launch is refused up front, saying why and
/// what to use instead (the nftables backend).
#[test]
fn in_a_user_namespace_the_refusal_says_ebpf_cannot_load_there() {
    if !have_root() {
        return;
    }
    let (world, conf) = world_with_conf("egress-backend = ebpf\n").unwrap();
    let out = claude_jail_after(
        &world,
        "exec unshare --user --map-root-user -- sh -c 'exec \"$@\"' sh \"$@\"",
        &["run", "--config", &conf, "--user", "nobody", "--", "true"],
    )
    .unwrap()
    .output()
    .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "refused: {e}");
    assert!(
        e.contains("user namespace") && e.contains("initial user namespace"),
        "the message says why eBPF cannot load here: {e}"
    );
    assert!(
        e.contains("egress-backend = auto` or `nftables`"),
        "and names the backend that can: {e}"
    );
    assert!(
        e.contains("fix:") && e.contains("CLAUDE_SANDBOX_EGRESS_JAIL=0"),
        "the fix and the escape hatch: {e}"
    );
}

/// The Debian package `cargo xtask deb` builds (xtask test builds it before the tests).
fn deb_package() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    let deb = fs::read_dir(&dir).ok().and_then(|d| {
        d.flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
    });
    deb.unwrap_or_else(|| {
        panic!(
            "no .deb in {}: `cargo xtask deb` builds it (`cargo xtask test` does first)",
            dir.display()
        )
    })
}

/// The installation end to end, on a clean Debian (a fresh container from the minbase image): the
/// .deb installs; `claude-jail check` is all green; a normal user in the claude-jail group (and
/// with no other sudo rule) types `claude` (a fake claude where npm puts the real one) and is
/// jailed, arguments verbatim; `CLAUDE_SANDBOX_EGRESS_JAIL=0 claude` runs unjailed and says so;
/// a user outside the group (no sudo rule) gets the nftables mode instead, jailed as well;
/// `man claude-jail` works and the completions load in bash.
#[test]
fn the_debian_package_makes_every_users_claude_jailed_on_a_clean_machine() {
    if !have_root() {
        return;
    }
    let deb = deb_package();
    let world = FakeWorld::builder().build().unwrap();
    fs::set_permissions(world.dir(), fs::Permissions::from_mode(0o755)).unwrap();
    let podman = Podman::new(&world);
    let fake_claude = r#"#!/bin/bash
if [ "$1" = nested ]; then exec claude inner; fi
echo "FAKE-CLAUDE args=[$*] uid=$(id -u) nnp=$(awk '/^NoNewPrivs/ {print $2}' /proc/self/status)"
echo "LAN $( (exec 3<>/dev/tcp/10.0.0.5/80 && head -n1 <&3) 2>&1 | head -c 120)"
echo "ENVS EPICS=${EPICS_CA_ADDR_LIST:-unset} TMUX=${TMUX:-unset} HOME=$HOME"
"#;
    let script = format!(
        "set -e\n\
         dpkg -i /mnt/claude-jail.deb >/dev/null\n\
         rm /etc/sudoers.d/dev\n\
         usermod -aG claude-jail dev\n\
         useradd --create-home --shell /bin/bash outsider\n\
         {POST_START_ROOT}\n\
         chmod 0666 /dev/net/tun\n\
         cat > /usr/local/bin/claude <<'FAKE'\n{fake_claude}FAKE\n\
         chmod 755 /usr/local/bin/claude\n\
         set +e\n\
         echo '== check'; claude-jail check; echo \"check-exit=$?\"\n\
         echo '== jailed'; su -l dev -c 'EPICS_CA_ADDR_LIST=10.1.2.3 TMUX=/tmp/x claude --print \"two words\"'; echo \"jailed-exit=$?\"\n\
         echo '== nested'; su -l dev -c 'claude nested' 2>&1; echo \"nested-exit=$?\"\n\
         echo '== off'; su -l dev -c 'CLAUDE_SANDBOX_EGRESS_JAIL=0 claude -x' 2>&1; echo \"off-exit=$?\"\n\
         echo '== outsider'; su -l outsider -c 'claude' 2>&1; echo \"outsider-exit=$?\"\n\
         echo '== man'; MANPAGER=cat man claude-jail 2>&1 | head -n 20\n\
         echo '== completion'; bash -c '. /usr/share/bash-completion/bash_completion; \
           _completion_loader claude-jail; complete -p claude-jail' 2>&1\n"
    );
    let volume = format!("--volume={}:/mnt/claude-jail.deb:ro", deb.display());
    let mut args: Vec<&str> = RUN_ARGS.to_vec();
    args.push(&volume);
    let out = podman.run_as("root", &args, &script);
    let o = String::from_utf8_lossy(&out.stdout);
    let e = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- package test:\n{o}\n{e}");
    let section = |name: &str| -> String {
        o.split(&format!("== {name}\n"))
            .nth(1)
            .unwrap_or("")
            .split("\n== ")
            .next()
            .unwrap_or("")
            .to_string()
    };
    let check = section("check");
    assert!(
        check.contains("check-exit=0") && !check.contains("FAIL"),
        "claude-jail check is all green after installing the package: {check}\n{e}"
    );
    let jailed = section("jailed");
    assert!(
        jailed.contains("FAKE-CLAUDE args=[--print two words] uid=1000 nnp=1"),
        "the user's claude runs jailed, as the user, arguments verbatim: {jailed}\n{e}"
    );
    assert!(
        jailed.contains("LAN") && jailed.contains("Operation not permitted"),
        "and the LAN is refused from it: {jailed}"
    );
    assert!(jailed.contains("jailed-exit=0"), "{jailed}");
    assert!(
        jailed.contains("ENVS EPICS=10.1.2.3 TMUX=unset HOME=/home/dev"),
        "the user's environment reaches the jailed claude through the shim and sudo, less the \
         broker variables (those pointing at masked sockets): {jailed}"
    );
    let nested = section("nested");
    assert!(
        nested.contains("FAKE-CLAUDE args=[inner] uid=1000 nnp=1")
            && nested.contains("nested-exit=0"),
        "inside a jail, `claude` runs the real claude directly (no second jail, no sudo): {nested}"
    );
    let off = section("off");
    assert!(
        off.contains("FAKE-CLAUDE args=[-x] uid=1000") && off.contains("OFF"),
        "the escape hatch runs claude unjailed and says so: {off}"
    );
    assert!(
        off.contains("hello from 10.0.0.5:80"),
        "with host networking: {off}"
    );
    let outsider = section("outsider");
    assert!(
        outsider.contains("outsider-exit=0")
            && outsider.contains("enforced by nftables")
            && outsider.contains("FAKE-CLAUDE args=[] uid=1001 nnp=1")
            && outsider.contains("No route to host"),
        "a user outside the group (no sudo rule) is jailed by the nftables mode: {outsider}"
    );
    assert!(
        section("man").contains("claude-jail - Run an AI coding agent"),
        "man claude-jail works: {}",
        section("man")
    );
    assert!(
        section("completion").contains("claude-jail"),
        "the bash completion loads: {}",
        section("completion")
    );
}

/// Only `--device=/dev/net/tun`: what a rootless devcontainer adds for the jail.
const ROOTLESS_RUN_ARGS: [&str; 1] = ["--device=/dev/net/tun"];

/// The rootless harness itself (passes without the rootless mode): a host user with no root and
/// no sudo runs the container; its user `dev` has no capabilities, the container's root is the
/// host user and the rest of its ids are the user's subordinate range, the tun device is there
/// and opens, a user namespace can be made, and the network is the fake world's.
#[test]
fn a_rootless_podman_container_runs_as_the_hosts_normal_user_in_the_fake_world() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let podman = RootlessPodman::new(&world).unwrap();
    let script = "echo \"ID $(id -u):$(id -g)\"\n\
                  echo \"CAPEFF $(awk '/^CapEff/ {print $2}' /proc/self/status)\"\n\
                  echo \"UIDMAP $(cat /proc/self/uid_map | tr '\\n' ' ')\"\n\
                  echo \"GIDMAP $(cat /proc/self/gid_map | tr '\\n' ' ')\"\n\
                  echo \"TUN $(stat -c '%F %a' /dev/net/tun)\"\n\
                  (exec 4<>/dev/net/tun) && echo 'TUN-OPENS'\n\
                  unshare --user --map-current-user --net true && echo 'USERNS-OK'\n\
                  echo \"PUBLIC $( (exec 3<>/dev/tcp/203.0.113.10/80 && head -n1 <&3) 2>&1)\"\n";
    let out = podman.run("dev", &ROOTLESS_RUN_ARGS, script).unwrap();
    let o = String::from_utf8_lossy(&out.stdout);
    let e = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- rootless container:\n{o}\n{e}");
    assert!(out.status.success(), "podman run: {}\n{o}\n{e}", out.status);
    let line = |key: &str| -> String {
        o.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} line: {o}\n{e}"))
            .to_string()
    };
    assert_eq!(line("ID"), "1000:1000", "the container's user dev");
    assert_eq!(line("CAPEFF"), "0000000000000000", "dev has no capability");
    let expected = format!("0 {POD_UID} 1 1 {SUBID_START} {SUBID_COUNT}");
    for map in ["UIDMAP", "GIDMAP"] {
        let got = line(map);
        assert_eq!(
            got.split_whitespace().collect::<Vec<_>>().join(" "),
            expected,
            "{map}: the container's root is the host user {POD_UID} (rootless), the rest its \
             subordinate range"
        );
    }
    assert_eq!(line("TUN"), "character special file 666", "{o}");
    assert!(o.contains("TUN-OPENS"), "/dev/net/tun opens: {o}\n{e}");
    assert!(
        o.contains("USERNS-OK"),
        "a user namespace can be made: {o}\n{e}"
    );
    assert_eq!(line("PUBLIC"), "hello from 203.0.113.10:80", "{e}");
    assert!(
        !world
            .hits("203.0.113.10".parse::<std::net::IpAddr>().unwrap())
            .is_empty(),
        "the container's traffic went into the fake world"
    );
}

/// Issue 14's container test: in a rootless podman container whose only extra setting is
/// `--device=/dev/net/tun`, the container's normal user (no sudo) runs `claude-jail run`: the
/// jail starts (rootless mode, nftables), a LAN host (10.0.0.5) is refused at once, the public
/// server answers, and the command runs as the user with no_new_privs.
///
/// Fails until the rootless mode is merged: on the eBPF mode alone the launch is refused with
/// exit 125 (no CAP_BPF in a user namespace).
///
/// The container's network is podman's default (slirp4netns): the container's own address is
/// 10.0.2.100/24, inside the denied 10/8, so this also catches a ruleset that rejects the
/// reject (see the measurements above).
#[test]
fn in_a_rootless_podman_container_with_only_the_tun_device_the_jail_starts_and_refuses_10x() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let podman = RootlessPodman::new(&world).unwrap();
    let out = podman
        .run(
            "dev",
            &ROOTLESS_RUN_ARGS,
            &rootless_jail_script("", "claude-jail"),
        )
        .unwrap();
    assert_the_rootless_jail_refuses_10x(&world, &out);
}

/// The container script of the rootless jail test: `jail run -- bash /tmp/probe` as the
/// container's user, after `setup`. `timeout` tells a refusal (at once) from a drop (a connect
/// that hangs for minutes).
fn rootless_jail_script(setup: &str, jail: &str) -> String {
    format!(
        "{setup}\n\
         cat > /tmp/probe <<'PROBE'\n\
         echo \"JAILED uid=$(id -u) capeff=$(awk '/^CapEff/ {{print $2}}' /proc/self/status) \
         nnp=$(awk '/^NoNewPrivs/ {{print $2}}' /proc/self/status)\"\n\
         lan=$(timeout 10 bash -c 'exec 3<>/dev/tcp/10.0.0.5/80 && head -n1 <&3' 2>&1)\n\
         echo \"LAN rc=$? $lan\"\n\
         pub=$(timeout 10 bash -c 'exec 3<>/dev/tcp/203.0.113.10/80 && head -n1 <&3' 2>&1)\n\
         echo \"PUBLIC rc=$? $pub\"\n\
         PROBE\n\
         timeout 60 {jail} run -- bash /tmp/probe\n\
         echo \"JAIL-EXIT $?\"\n"
    )
}

/// What the rootless jail test asserts on the output of [`rootless_jail_script`].
fn assert_the_rootless_jail_refuses_10x(world: &FakeWorld, out: &Output) {
    let o = String::from_utf8_lossy(&out.stdout);
    let e = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- rootless jail:\n{o}\n{e}");
    assert!(
        o.contains("JAIL-EXIT 0"),
        "the jail starts as the container's user without sudo and the probe's exit comes back: \
         {o}\n{e}"
    );
    assert!(
        o.contains("JAILED uid=1000 capeff=0000000000000000 nnp=1"),
        "the command runs as the user, no capability, no_new_privs: {o}\n{e}"
    );
    let lan = o.lines().find(|l| l.starts_with("LAN ")).unwrap_or("");
    assert!(
        lan.starts_with("LAN rc=1 ")
            && (lan.contains("No route to host") || lan.contains("refused")),
        "10.0.0.5 is refused at once (EHOSTUNREACH or a reset), not dropped: {lan}\n{o}\n{e}"
    );
    assert!(
        o.contains("PUBLIC rc=0 hello from 203.0.113.10:80"),
        "the public server answers through the jail: {o}\n{e}"
    );
    assert!(
        world
            .hits("10.0.0.5".parse::<std::net::IpAddr>().unwrap())
            .is_empty(),
        "nothing reached the LAN host"
    );
}
