//! Running `claude-jail` itself inside a fake world's host namespaces.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use anyhow::{bail, Result};

use crate::{pasta::locate_pasta, FakeWorld};

/// The `claude-jail` binary under test: $CLAUDE_JAIL_BIN (set by `cargo xtask test`), else the
/// workspace's debug build. Missing is an error that says how to build it.
pub fn claude_jail_bin() -> Result<PathBuf> {
    let path = match std::env::var_os("CLAUDE_JAIL_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/claude-jail"),
    };
    if !path.is_file() {
        bail!(
            "claude-jail not found at {} (build it: `cargo build -p jail-userspace`, or run the \
             tests with `cargo xtask test`)",
            path.display()
        );
    }
    Ok(path)
}

/// `claude-jail ARGS...` in the world's host network and mount namespaces (which have their own
/// /run/claude-jail, /var/log/claude-jail and bpffs), with the project's pasta.
pub fn claude_jail(world: &FakeWorld, args: &[&str]) -> Result<Command> {
    let mut cmd = world.host_command(claude_jail_bin()?)?;
    cmd.args(args)
        .env("CLAUDE_JAIL_PASTA", locate_pasta()?)
        .env_remove("CLAUDE_SANDBOX_EGRESS_JAIL")
        .env_remove("CLAUDE_SANDBOX_CONF")
        .stdin(Stdio::null());
    Ok(cmd)
}

/// Runs `claude-jail run --config CONF --user nobody -- bash -c SCRIPT` and returns its output.
pub fn run_jailed(world: &FakeWorld, conf: &Path, script: &str) -> Result<Output> {
    let conf = conf.display().to_string();
    let out = claude_jail(
        world,
        &[
            "run", "--config", &conf, "--user", "nobody", "--", "bash", "-c", script,
        ],
    )?
    .output()?;
    Ok(out)
}
