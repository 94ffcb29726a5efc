//! jail-attach: attaches a policy to a cgroup with the real loader, prints `attached`, then
//! sleeps until killed. The enforcement tests SIGKILL it to show that the jail outlives the
//! process that loaded it (links and maps are pinned).
//!
//! ```text
//! jail-attach CGROUP_DIR PIN_DIR CONF_FILE
//! ```
use std::{io::Write, path::Path};

use anyhow::{Context, Result};
use claude_jail::{bpf, conf, hostnet::HostNet, policy::Policy};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cgroup, pins, conf_file] = args.as_slice() else {
        eprintln!("usage: jail-attach CGROUP_DIR PIN_DIR CONF_FILE");
        std::process::exit(2);
    };
    let text = std::fs::read(conf_file).with_context(|| format!("read {conf_file}"))?;
    let conf = conf::parse(Path::new(conf_file), &text)?;
    let policy = Policy::build(&conf, &HostNet::default());
    // The maps and links stay pinned; this process's descriptors die with it.
    let _maps = bpf::attach(Path::new(cgroup), Path::new(pins), policy.map_entries())?;
    println!("attached");
    std::io::stdout().flush()?;
    loop {
        std::thread::park();
    }
}
