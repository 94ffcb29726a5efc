//! jail-nft: claude_jail::nft from a process of a given privilege, for the nftables tests.
//!
//! ```text
//! jail-nft NETNS_FILE [--as-nobody] [--new-userns]
//! jail-nft --rootless [--ranges N] [--lift] [--log] [--nested]
//! ```
//! The first form tries to replace claude-jail's table in an existing network namespace with
//! an empty (allow-everything) one, as a jailed process trying to undo its jail would, and
//! prints `ok` or `err ERRNO`. `--as-nobody`: first become uid/gid 65534 (which drops every
//! capability); `--new-userns`: then create a user namespace (full capabilities inside it,
//! none over the jail's network namespace, which an outer user namespace owns).
//!
//! The second form is the rootless launcher's part: as uid 65534, it creates a user namespace
//! and a network namespace owned by it, installs a policy of `N` denied single addresses there
//! (default 1), optionally lifts its ICMP rate limit and binds the refusal log, and with `--nested` then tries, from a user
//! namespace nested in its own (what a jailed command can make), to replace the table. One line
//! per step: `install ok|err ERRNO`, `lift ...`, `log ...`, `nested ok|err ERRNO`.
use std::{fs::File, os::fd::AsFd};

use claude_jail::{nft, policy::MapEntries};
use nix::{
    sched::{setns, unshare, CloneFlags},
    unistd::{setgid, setgroups, setuid, Gid, Uid},
};

fn become_nobody() {
    setgroups(&[]).expect("setgroups");
    setgid(Gid::from_raw(65534)).expect("setgid");
    setuid(Uid::from_raw(65534)).expect("setuid");
    // A change of uid leaves the process undumpable, its /proc files root's: the id maps
    // below could not be written.
    nix::sys::prctl::set_dumpable(true).expect("prctl(PR_SET_DUMPABLE)");
}

fn line(step: &str, r: Result<(), nft::NftError>) {
    match r {
        Ok(()) => println!("{step} ok"),
        Err(e) => match e.errno() {
            Some(n) => println!("{step} err {n}"),
            None => println!("{step} err {e}"),
        },
    }
}

fn install(rs: &nft::Ruleset) -> Result<(), nft::NftError> {
    let sock = nft::open_socket()?;
    nft::install(sock.as_fd(), rs)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let Some(first) = args.first() else {
        eprintln!("usage: jail-nft NETNS_FILE [--as-nobody] [--new-userns] | jail-nft --rootless [--ranges N] [--lift] [--log] [--nested]");
        std::process::exit(2);
    };
    let empty = nft::Ruleset::compile(&MapEntries::default());
    if first != "--rootless" {
        let file = File::open(first).unwrap_or_else(|e| panic!("open {first}: {e}"));
        setns(file.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns into the jail's netns");
        if flag("--as-nobody") {
            become_nobody();
        }
        if flag("--new-userns") {
            unshare(CloneFlags::CLONE_NEWUSER).expect("unshare(CLONE_NEWUSER)");
        }
        match install(&empty) {
            Ok(()) => println!("ok"),
            Err(e) => match e.errno() {
                Some(n) => println!("err {n}"),
                None => println!("err {e}"),
            },
        }
        return;
    }
    let ranges: u32 = args
        .iter()
        .position(|a| a == "--ranges")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(1);
    become_nobody();
    // A network namespace of its own from the start: nothing here touches the caller's.
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET)
        .expect("unshare(CLONE_NEWUSER | CLONE_NEWNET)");
    // The user's own uid and gid inside, as the rootless jail maps them (a nested user
    // namespace can only be made by an id mapped in its parent).
    for (file, text) in [
        ("/proc/self/setgroups", "deny"),
        ("/proc/self/uid_map", "65534 65534 1"),
        ("/proc/self/gid_map", "65534 65534 1"),
    ] {
        std::fs::write(file, text).unwrap_or_else(|e| panic!("write {file}: {e}"));
    }
    let mut m = MapEntries::default();
    for i in 0..ranges {
        // Every other address from 11.0.0.0: no two adjacent, one range each.
        m.deny4.insert((32, (0x0b00_0000 + 2 * i).to_be()), 0);
    }
    line("install", install(&nft::Ruleset::compile(&m)));
    if flag("--lift") {
        line("lift", nft::lift_icmp_rate_limit());
    }
    if flag("--log") {
        line(
            "log",
            nft::LogReader::open(nft::DEFAULT_LOG_GROUP).map(drop),
        );
    }
    if flag("--nested") {
        unshare(CloneFlags::CLONE_NEWUSER).expect("unshare(CLONE_NEWUSER), nested");
        line("nested", install(&empty));
    }
}
