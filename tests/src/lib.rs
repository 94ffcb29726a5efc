//! Fake-world test harness for claude-jail.
//!
//! [`FakeWorld::builder`] builds, inside network namespaces the test itself creates, an outer
//! "host" namespace (standing in for the real machine) with a veth uplink to an "inet" namespace
//! that plays the internet and a LAN: a public server, one host in every denied range, a real
//! DNS server (dnsmasq) and services on the host's loopback. Everything is torn down on drop,
//! also when the test panics.
//!
//! Safety: nothing here configures an address or a route, or opens a socket, in the namespace
//! the test process started in. [`netns::Netns::run`] asserts this before it runs anything, and
//! every socket of the fake world is created by a thread that has entered one of the world's
//! namespaces. Run the tests inside `unshare --net --mount` as a second layer.

pub mod capture;
pub mod cgroup;
pub mod dns;
pub mod jail;
pub mod netns;
pub mod pasta;
pub mod podman;
pub mod probe;
pub mod random;
pub mod servers;
pub mod session;
pub mod sudo;
pub mod world;

pub use capture::{Capture, Packet};
pub use netns::Netns;
pub use servers::{Hit, Proto};
pub use world::{FakeWorld, FakeWorldBuilder};

/// True when the test may go on: it needs root (it creates namespaces, cgroups, bpffs mounts).
/// Use it as `if !jail_tests::have_root() { return; }` at the top of every root-only test.
///
/// Without root, a plain `cargo test` skips the test and says so on stderr. The real suite does
/// not: `cargo xtask test` (and demo and bench) sets `CLAUDE_JAIL_BIN` to the binary under test,
/// and then a missing root panics, so that a suite that ran nothing cannot pass.
pub fn have_root() -> bool {
    let real_suite = std::env::var_os("CLAUDE_JAIL_BIN").is_some();
    match root_verdict(nix::unistd::geteuid().is_root(), real_suite) {
        RootVerdict::Run => true,
        RootVerdict::Skip => {
            eprintln!(
                "skipped: this test needs root (it creates network namespaces); run it as root \
                 inside `unshare --net --mount`"
            );
            false
        }
        RootVerdict::Fail => panic!(
            "this test needs root (it creates network namespaces), and CLAUDE_JAIL_BIN is set: \
             the real suite (`cargo xtask test`) runs as root inside `unshare --net --mount`; \
             unset CLAUDE_JAIL_BIN to let a plain `cargo test` skip it"
        ),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum RootVerdict {
    Run,
    Skip,
    Fail,
}

fn root_verdict(root: bool, real_suite: bool) -> RootVerdict {
    match (root, real_suite) {
        (true, _) => RootVerdict::Run,
        (false, false) => RootVerdict::Skip,
        (false, true) => RootVerdict::Fail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_only_test_fails_without_root_in_the_real_suite_and_skips_elsewhere() {
        assert_eq!(root_verdict(true, true), RootVerdict::Run);
        assert_eq!(root_verdict(true, false), RootVerdict::Run);
        assert_eq!(root_verdict(false, true), RootVerdict::Fail);
        assert_eq!(root_verdict(false, false), RootVerdict::Skip);
    }
}
