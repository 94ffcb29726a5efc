//! pasta (package passt): the jail's only way out, attached from outside to its network namespace.
//!
//! The argument list closes every forwarding that opens the host (shared field notes, section 2):
//! no gateway mapping, no host-loopback or guest-address mapping, no automatic port forwarding in
//! either direction. The only openings are the conf's `host-port` (jail loopback -> host loopback)
//! and `publish-port` (host loopback -> jail), each logged at launch. DNS goes through pasta's
//! forwarder: the jail's resolv.conf names [`DNS_FORWARDER`], and pasta relays port 53 sent there
//! to the host's resolver.
use std::{
    fs,
    net::Ipv4Addr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::conf::{PortSpec, Proto};

/// The address the jail sends DNS to. From 240.0.0.0/4 (reserved, never routed by any host, and
/// denied by the default policy), so nothing but pasta's forwarder ever answers it; the jail's
/// policy allows exactly port 53 (TCP and UDP) on it.
pub const DNS_FORWARDER: Ipv4Addr = Ipv4Addr::new(240, 0, 0, 53);

/// Environment variable naming the pasta binary (for a pasta outside PATH, as the project's
/// set-up builds one).
pub const ENV_PASTA: &str = "CLAUDE_JAIL_PASTA";

/// The pasta binary: $CLAUDE_JAIL_PASTA, else `pasta` on PATH; returned with symlinks resolved.
///
/// pasta runs as root in the host's namespaces, so it gets the same trust check as the conf:
/// the file and its directories owned by root and writable by nobody else (else an agent that
/// writes `export CLAUDE_JAIL_PASTA=~/x` into the user's shell profile would get root at the next
/// `sudo claude-jail run`). pasta re-executes itself as `<path>.avx2` when the CPU has AVX2, so
/// that file, when present, is checked too.
pub fn locate(env: Option<&std::ffi::OsStr>) -> Result<PathBuf> {
    let found = if let Some(p) = env.filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !is_executable(&p) {
            bail!(
                "{ENV_PASTA}={}: not an executable file (fix: point {ENV_PASTA} at pasta, or \
                 unset it and install the passt package)",
                p.display()
            );
        }
        p
    } else {
        let path =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        std::env::split_paths(&path)
            .map(|d| d.join("pasta"))
            .find(|p| is_executable(p))
            .context(
                "pasta not found on PATH (fix: install the passt package, or set \
                 CLAUDE_JAIL_PASTA)",
            )?
    };
    let real = crate::conf::check_trusted(&found)
        .map_err(|e| anyhow::anyhow!("{e} (pasta runs as root)"))?;
    let avx2 = PathBuf::from(format!("{}.avx2", real.display()));
    if avx2.exists() {
        crate::conf::check_trusted(&avx2)
            .map_err(|e| anyhow::anyhow!("{e} (pasta runs it as root on AVX2 CPUs)"))?;
    }
    Ok(real)
}
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// What pasta is asked to do.
pub struct PastaConfig<'a> {
    pub netns_file: &'a Path,
    pub pid_file: &'a Path,
    pub log_file: &'a Path,
    pub host_ports: &'a [PortSpec],
    pub publish_ports: &'a [PortSpec],
}

/// The full argument list (tested below: it is the security boundary of the namespace).
pub fn args(c: &PastaConfig) -> Vec<String> {
    let mut a: Vec<String> = [
        "--quiet",
        // pasta drops to "nobody" by default, before it opens the namespace file, which a
        // non-root user may not do: stay root (it runs in its own cgroup under its own policy).
        "--runas",
        "0",
        "--config-net",
        "--no-map-gw",
        "--map-host-loopback",
        "none",
        "--map-guest-addr",
        "none",
        "--dns-forward",
    ]
    .map(String::from)
    .to_vec();
    a.push(DNS_FORWARDER.to_string());
    let mut fwd = |flag: &str, spec: Option<String>| {
        a.push(flag.into());
        a.push(spec.unwrap_or_else(|| "none".into()));
    };
    let ports = |list: &[PortSpec], proto: Proto, bind: &str| -> Option<String> {
        let ports: Vec<String> = list
            .iter()
            .filter(|p| p.proto.is_none_or(|x| x == proto))
            .map(|p| p.port.to_string())
            .collect();
        (!ports.is_empty()).then(|| format!("{bind}{}", ports.join(",")))
    };
    // -t/-u: host -> jail (publish-port), bound to the host's loopback only.
    fwd("-t", ports(c.publish_ports, Proto::Tcp, "127.0.0.1/"));
    fwd("-u", ports(c.publish_ports, Proto::Udp, "127.0.0.1/"));
    // -T/-U: jail loopback -> host loopback (host-port).
    fwd("-T", ports(c.host_ports, Proto::Tcp, ""));
    fwd("-U", ports(c.host_ports, Proto::Udp, ""));
    a.extend([
        "--log-file".into(),
        c.log_file.display().to_string(),
        "--pid".into(),
        c.pid_file.display().to_string(),
        "--netns".into(),
        c.netns_file.display().to_string(),
    ]);
    a
}

/// A running pasta.
#[derive(Debug)]
pub struct Pasta {
    pub pid: u32,
    /// pasta's own cgroup (its cgroup.procs): only a pid listed there is pasta, and is signalled.
    cgroup_procs: PathBuf,
}

/// Starts pasta inside `cgroup_procs`' cgroup (written in the child before exec, so pasta never
/// runs outside its policy) and waits until it has configured the namespace: without
/// `--foreground`, pasta forks to the background only once interface, address and routes are set.
pub fn start(binary: &Path, c: &PastaConfig, cgroup_procs: &Path) -> Result<Pasta> {
    let procs = cgroup_procs.to_path_buf();
    let mut cmd = Command::new(binary);
    // passt picks its mode from argv[0]; `binary` is the resolved file, usually named passt.
    cmd.arg0("pasta")
        .args(args(c))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: runs in the forked child before exec; it writes one file and sets the signal mask
    // (the launcher blocks the signals it reads through a signalfd; pasta starts with none
    // blocked, as it would from a shell).
    unsafe {
        cmd.pre_exec(move || {
            fs::write(&procs, "0")?;
            nix::sys::signal::sigprocmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&nix::sys::signal::SigSet::empty()),
                None,
            )
            .map_err(std::io::Error::from)
        });
    }
    let out = cmd
        .output()
        .with_context(|| format!("start pasta ({})", binary.display()))?;
    if !out.status.success() {
        let log = fs::read_to_string(c.log_file).unwrap_or_default();
        bail!(
            "pasta ({}) failed ({}): {}{}\n(fix: a pasta that knows every option above, such as \
             the one scripts/setup builds into .tools/bin, named by {ENV_PASTA}; bookworm's \
             passt package is too old)",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            if log.is_empty() {
                String::new()
            } else {
                format!("\npasta log:\n{}", log.trim())
            }
        );
    }
    let pid = read_pid(c.pid_file, Duration::from_secs(5))?;
    Ok(Pasta {
        pid,
        cgroup_procs: cgroup_procs.to_path_buf(),
    })
}

fn read_pid(path: &Path, wait: Duration) -> Result<u32> {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(s) = fs::read_to_string(path) {
            if let Ok(pid) = s.trim().parse::<u32>() {
                return Ok(pid);
            }
        }
        if Instant::now() > deadline {
            bail!("pasta wrote no pid to {}", path.display());
        }
        thread::sleep(Duration::from_millis(5));
    }
}

impl Pasta {
    /// Stops pasta: SIGTERM, then SIGKILL after `grace`. pasta is not our child (it daemonized),
    /// so its exit is observed through its cgroup: a pid no longer listed there is not pasta any
    /// more (it may have been reused by an unrelated process), and is never signalled.
    pub fn stop(&self, grace: Duration) {
        let pid = Pid::from_raw(self.pid as i32);
        if !self.running() || kill(pid, Signal::SIGTERM).is_err() {
            return;
        }
        let deadline = Instant::now() + grace;
        while self.running() {
            if Instant::now() > deadline {
                let _ = kill(pid, Signal::SIGKILL);
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether pasta's pid is still in pasta's cgroup.
    fn running(&self) -> bool {
        let me = self.pid.to_string();
        fs::read_to_string(&self.cgroup_procs)
            .map(|procs| procs.lines().any(|l| l.trim() == me))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg<'a>(host: &'a [PortSpec], publish: &'a [PortSpec]) -> PastaConfig<'a> {
        PastaConfig {
            netns_file: Path::new("/run/claude-jail/x/netns"),
            pid_file: Path::new("/run/claude-jail/x/pasta.pid"),
            log_file: Path::new("/run/claude-jail/x/pasta.log"),
            host_ports: host,
            publish_ports: publish,
        }
    }

    fn after<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn default_arguments_close_every_forwarding() {
        let a = args(&cfg(&[], &[]));
        for flag in ["-t", "-u", "-T", "-U"] {
            assert_eq!(
                after(&a, flag),
                ["none"],
                "{flag} must be 'none' without conf entries"
            );
        }
        assert!(
            a.contains(&"--no-map-gw".into()),
            "gateway must not map to host loopback"
        );
        assert_eq!(after(&a, "--map-host-loopback"), ["none"]);
        assert_eq!(after(&a, "--map-guest-addr"), ["none"]);
        assert_eq!(after(&a, "--dns-forward"), ["240.0.0.53"]);
        assert_eq!(after(&a, "--netns"), ["/run/claude-jail/x/netns"]);
    }

    #[test]
    fn conf_ports_open_exactly_their_direction_and_protocol() {
        let host = [
            PortSpec {
                port: 3000,
                proto: None,
            },
            PortSpec {
                port: 5353,
                proto: Some(Proto::Udp),
            },
        ];
        let publish = [PortSpec {
            port: 8910,
            proto: Some(Proto::Tcp),
        }];
        let a = args(&cfg(&host, &publish));
        assert_eq!(after(&a, "-T"), ["3000"]);
        assert_eq!(after(&a, "-U"), ["3000,5353"]);
        assert_eq!(
            after(&a, "-t"),
            ["127.0.0.1/8910"],
            "published only on the host's loopback"
        );
        assert_eq!(after(&a, "-u"), ["none"]);
    }
}
