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
pub mod dns;
pub mod jail;
pub mod netns;
pub mod pasta;
pub mod podman;
pub mod probe;
pub mod servers;
pub mod sudo;
pub mod world;

pub use capture::{Capture, Packet};
pub use netns::Netns;
pub use servers::{Hit, Proto};
pub use world::{FakeWorld, FakeWorldBuilder};

/// True when the tests may build namespaces (they need root). Prints why not otherwise, so a
/// test can `if !jail_tests::have_root() { return; }`.
pub fn have_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipped: this test needs root (it creates network namespaces); run it as root inside `unshare --net --mount`");
        false
    }
}
