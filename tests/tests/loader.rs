//! The loader against the real kernel, without any network: a child in a fresh, empty network
//! namespace (only `lo`, no route anywhere) is placed in the jail cgroup and connects. A refused
//! destination fails with EPERM (the program said no); an allowed one fails with ENETUNREACH (the
//! kernel found no route). No packet can leave: there is no interface but loopback.
//!
//! Needs root (see `jail_tests::have_root`). Run inside `unshare --mount` (cargo xtask test does)
//! because it mounts a private bpffs.
use std::{os::unix::process::CommandExt, path::Path, process::Command};

use claude_jail::{bpf, conf, hostnet::HostNet, policy::Policy};
use jail_tests::{cgroup::TestCgroup, have_root};

/// The jail cgroup and its private bpffs, removed on drop.
struct Fixture {
    cgroup: TestCgroup,
}

impl Fixture {
    fn new(conf_text: &str) -> (Fixture, bpf::JailMaps) {
        let cgroup = TestCgroup::with_bpffs("loader-test");
        let conf =
            conf::parse(Path::new("test.conf"), conf_text.as_bytes()).expect("test conf parses");
        let policy = Policy::build(&conf, &HostNet::default());
        let maps =
            bpf::attach(cgroup.path(), &cgroup.pins(), policy.map_entries()).expect("attach");
        (Fixture { cgroup }, maps)
    }

    /// Runs `bash -c script` in a new, empty network namespace, inside the jail cgroup.
    fn run(&self, script: &str) -> String {
        let procs = self.cgroup.path().join("cgroup.procs");
        let mut cmd = Command::new("unshare");
        cmd.args(["--net", "--", "bash", "-c", script]);
        // SAFETY: pre_exec runs in the forked child; it only writes a file and returns.
        unsafe {
            cmd.pre_exec(move || std::fs::write(&procs, "0"));
        }
        let out = cmd.output().expect("run probe");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
}

/// bash's /dev/tcp and /dev/udp print the errno text of a failed connect.
fn connect(dest: &str) -> String {
    format!("(exec 3<>/dev/tcp/{dest}) 2>&1 | tail -n 1 | sed 's/^.*: //'; true")
}

#[test]
fn refused_destinations_fail_with_eperm_and_allowed_ones_reach_the_routing() {
    if !have_root() {
        return;
    }
    let (fx, maps) = Fixture::new("allow-ip = 10.0.0.7\nallow-ip = 192.168.5.0/24\n");
    let out = fx.run(
        &[
            connect("10.0.0.5/80"),
            connect("10.0.0.7/80"),
            connect("192.168.5.9/80"),
            connect("192.168.6.9/80"),
            connect("203.0.113.10/80"),
            connect("169.254.169.254/80"),
        ]
        .join("; "),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "Operation not permitted",
            "Network is unreachable",
            "Network is unreachable",
            "Operation not permitted",
            "Network is unreachable",
            "Operation not permitted",
        ],
        "10.0.0.5 and 192.168.6.9 and 169.254.169.254 are refused by the deny trie; the allow \
         entries (10.0.0.7, 192.168.5.0/24) and a public address pass to routing"
    );
    let c = maps.counters().expect("counters");
    assert_eq!(
        c.total_refused(),
        3,
        "one refusal counted per refused connect: {c:?}"
    );
    assert!(
        bpf::links_pinned(&fx.cgroup.pins()),
        "all five links are pinned"
    );
}

#[test]
fn ipv4_mapped_ipv6_is_judged_as_ipv4() {
    if !have_root() {
        return;
    }
    let (fx, _maps) = Fixture::new("");
    // bash's /dev/tcp resolves literals with getaddrinfo, which takes the v6 form as AF_INET6.
    let out = fx.run(
        &[
            connect("::ffff:10.0.0.5/80"),
            connect("fd00::5/80"),
            connect("2001:db8::1/80"),
        ]
        .join("; "),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "Operation not permitted",
            "Operation not permitted",
            "Cannot assign requested address"
        ],
        "::ffff:10.0.0.5 is 10.0.0.5 (refused); fd00::5 is ULA (refused); 2001:db8::1 passes to \
         routing (which finds no IPv6 source address)"
    );
}
