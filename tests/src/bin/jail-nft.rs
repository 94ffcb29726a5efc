//! jail-nft: tries to replace claude-jail's nftables table in a network namespace with an empty
//! (allow-everything) one, as a jailed process trying to undo its jail would, and prints `ok`
//! or `err ERRNO`.
//!
//! ```text
//! jail-nft NETNS_FILE [--as-nobody] [--new-userns]
//! ```
//! `--as-nobody`: first become uid/gid 65534 (which drops every capability); `--new-userns`:
//! then create a user namespace (full capabilities inside it, none over the jail's network
//! namespace, which an outer user namespace owns).
use std::{fs::File, os::fd::AsFd};

use claude_jail::{nft, policy::MapEntries};
use nix::{
    sched::{setns, unshare, CloneFlags},
    unistd::{setgid, setgroups, setuid, Gid, Uid},
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(netns) = args.first() else {
        eprintln!("usage: jail-nft NETNS_FILE [--as-nobody] [--new-userns]");
        std::process::exit(2);
    };
    let flag = |f: &str| args.iter().any(|a| a == f);
    let file = File::open(netns).unwrap_or_else(|e| panic!("open {netns}: {e}"));
    setns(file.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns into the jail's netns");
    if flag("--as-nobody") {
        setgroups(&[]).expect("setgroups");
        setgid(Gid::from_raw(65534)).expect("setgid");
        setuid(Uid::from_raw(65534)).expect("setuid");
    }
    if flag("--new-userns") {
        unshare(CloneFlags::CLONE_NEWUSER).expect("unshare(CLONE_NEWUSER)");
    }
    let result = nft::open_socket().and_then(|sock| {
        nft::install(sock.as_fd(), &nft::Ruleset::compile(&MapEntries::default()))
    });
    match result {
        Ok(()) => println!("ok"),
        Err(e) => match e.errno() {
            Some(n) => println!("err {n}"),
            None => println!("err {e}"),
        },
    }
}
