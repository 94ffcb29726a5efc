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

/// Writes a root-owned, 0644 conf file in the world's directory (the launcher refuses anything
/// else) and returns its path.
pub fn write_conf(world: &FakeWorld, name: &str, text: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let p = world.dir().join(name);
    std::fs::write(&p, text)?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))?;
    Ok(p)
}

/// `claude-jail ARGS...` as [`claude_jail`] does, but inside a further private mount namespace of
/// the world's host in which `setup` (a sh script) ran first, e.g. to hide /dev/net/tun. The
/// binary is `$0`-free: the script runs as `sh -c 'SETUP && exec "$@"' sh claude-jail ARGS...`.
pub fn claude_jail_after(world: &FakeWorld, setup: &str, args: &[&str]) -> Result<Command> {
    let mut cmd = world.host_command("unshare")?;
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(format!("{setup}\nexec \"$@\""))
        .arg("sh")
        .arg(claude_jail_bin()?)
        .args(args)
        .env("CLAUDE_JAIL_PASTA", locate_pasta()?)
        .env_remove("CLAUDE_SANDBOX_EGRESS_JAIL")
        .env_remove("CLAUDE_SANDBOX_CONF")
        .stdin(Stdio::null());
    Ok(cmd)
}

/// A shell snippet that prints the jail's id: the jail's /etc/resolv.conf is bound from
/// /run/claude-jail/<id>/resolv.conf, and its mountinfo line names that source.
pub const PRINT_JAIL_ID: &str =
    "awk '$5 == \"/etc/resolv.conf\" { split($4, p, \"/\"); print \"jail-id \" p[2] }' /proc/self/mountinfo";

/// The jail ids printed by [`PRINT_JAIL_ID`] in `stdout`.
pub fn jail_ids(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("jail-id "))
        .map(|s| s.trim().to_string())
        .filter(|s| s.len() == 12 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

/// The root directory of the world's host mount namespace, as seen from the test process.
pub fn host_root(world: &FakeWorld) -> PathBuf {
    world
        .host_mntns_path()
        .parent()
        .and_then(Path::parent)
        .expect("/proc/PID/ns/mnt")
        .join("root")
}

/// Everything of the given jails still present: run directories, registry records, pins,
/// cgroups, mounts in the world's host mount namespace, processes naming the jail (pasta).
/// Also anything at all under the world's /run/claude-jail and bpffs besides the empty
/// registry. Empty when the launches cleaned up after themselves.
pub fn leftovers(world: &FakeWorld, ids: &[String]) -> Vec<String> {
    let mut left = Vec::new();
    let root = host_root(world);
    let run = root.join("run/claude-jail");
    if let Ok(entries) = std::fs::read_dir(&run) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name != "jails" {
                left.push(format!("run directory entry {}", e.path().display()));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(run.join("jails")) {
        for e in entries.flatten() {
            left.push(format!("registry record {}", e.path().display()));
        }
    }
    if let Ok(entries) = std::fs::read_dir(root.join("sys/fs/bpf/claude-jail")) {
        for e in entries.flatten() {
            left.push(format!("pins {}", e.path().display()));
        }
    }
    let cg = claude_jail::cgroup::cgroup2_mount()
        .map(|m| m.join(claude_jail::cgroup::PARENT))
        .ok();
    let mountinfo = std::fs::read_to_string(
        world
            .host_mntns_path()
            .parent()
            .and_then(Path::parent)
            .expect("/proc/PID/ns/mnt")
            .join("mountinfo"),
    )
    .unwrap_or_default();
    let procs: Vec<(String, String)> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .filter_map(|e| {
                    let c = std::fs::read(e.path().join("cmdline")).ok()?;
                    Some((
                        e.file_name().to_string_lossy().into_owned(),
                        String::from_utf8_lossy(&c).replace('\0', " "),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    for id in ids {
        if let Some(cg) = &cg {
            if cg.join(id).exists() {
                left.push(format!("cgroup {}", cg.join(id).display()));
            }
        }
        for l in mountinfo.lines().filter(|l| l.contains(id.as_str())) {
            left.push(format!("mount {l}"));
        }
        for (pid, cmd) in procs.iter().filter(|(_, c)| c.contains(id.as_str())) {
            left.push(format!("process {pid}: {cmd}"));
        }
    }
    left
}

/// A world whose directory other users may enter (jailed commands run as `nobody` or a test
/// user and read files there), and a root-owned conf in it with `text`; returns the conf's path.
pub fn world_with_conf(text: &str) -> Result<(FakeWorld, String)> {
    use std::os::unix::fs::PermissionsExt;
    let world = FakeWorld::builder().build()?;
    std::fs::set_permissions(world.dir(), std::fs::Permissions::from_mode(0o755))?;
    let conf = write_conf(&world, "claude-sandbox.conf", text)?;
    Ok((world, conf.display().to_string()))
}

/// A jail that stays up: `claude-jail run --config CONF --user nobody -- bash -c SCRIPT`, where
/// SCRIPT prints `ready` on a line of its own once it is set, then waits for its stdin to close.
/// Returns once that line is read; dropping the [`WaitingJail`] closes stdin and waits.
pub fn waiting_jail(
    world: &FakeWorld,
    conf: &str,
    script: &str,
    ready: &str,
) -> Result<WaitingJail> {
    let mut child = claude_jail(
        world,
        &[
            "run",
            "--config",
            conf,
            "--user",
            "nobody",
            "--",
            "bash",
            "-c",
            &format!("{script}\necho {ready}; read -r _"),
        ],
    )?
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().expect("piped")),
        &mut line,
    )?;
    if line.trim() != ready {
        let _ = child.kill();
        let _ = child.wait();
        bail!("the jail did not come up: {line:?}");
    }
    Ok(WaitingJail { child })
}

/// See [`waiting_jail`].
pub struct WaitingJail {
    child: std::process::Child,
}

impl Drop for WaitingJail {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}
