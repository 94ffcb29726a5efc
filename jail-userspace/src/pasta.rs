//! pasta (package passt): the jail's only way out, attached from outside to its network namespace.
//!
//! The argument list closes every forwarding that opens the host, each of which pasta does by
//! default: no gateway mapping (the gateway address would reach the host's loopback), no
//! host-loopback or guest-address mapping, no automatic port forwarding in either direction
//! (host loopback listeners mirrored into the jail, jail listeners published on the host).
//! The only openings are the conf's `host-port` (jail loopback -> host loopback)
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

/// Where an installation puts the pasta claude-jail needs (`cargo xtask install`, the .deb).
pub const INSTALLED: [&str; 2] = [
    "/usr/libexec/claude-jail/pasta",
    "/usr/local/libexec/claude-jail/pasta",
];

/// Directories searched for `pasta` when the caller is not root itself: fixed, never the
/// caller's PATH.
const SYSTEM_DIRS: [&str; 4] = ["/usr/local/bin", "/usr/bin", "/usr/sbin", "/bin"];

/// The options the jail passes that old pasta builds lack (bookworm's passt 2023-03 has neither).
const NEEDED_OPTIONS: [&str; 2] = ["--map-host-loopback", "--map-guest-addr"];

/// The pasta binary, returned with symlinks resolved. In order: $CLAUDE_JAIL_PASTA (root itself
/// only: nothing from a sudo caller's environment decides what runs as root), the conf's `pasta =
/// PATH`, an installed location ([`INSTALLED`]), then `pasta` on PATH (root itself) or in fixed
/// system directories (a delegated caller).
///
/// pasta runs as root in the host's namespaces, so it gets the same trust check as the conf:
/// the file and its directories owned by root and writable by nobody else (else an agent that
/// writes `export CLAUDE_JAIL_PASTA=~/x` into the user's shell profile would get root at the next
/// `sudo claude-jail run`). pasta re-executes itself as `<path>.avx2` when the CPU has AVX2, so
/// that file, when present, is checked too. Then it is asked once for its options: a pasta that
/// lacks one the jail passes is refused in one line, before anything is built.
pub fn locate(caller: crate::caller::Caller, conf: &crate::conf::Conf) -> Result<PathBuf> {
    let env = std::env::var_os(ENV_PASTA).filter(|p| !p.is_empty());
    // Root, or a user for a pasta that runs as that user: either may choose it. Not a user behind
    // sudo, for whom pasta would run as root.
    let may_choose = !matches!(caller, crate::caller::Caller::Delegated { .. });
    if env.is_some() && !may_choose {
        eprintln!(
            "claude-jail: note: {ENV_PASTA} is ignored for a caller behind sudo or pkexec (set \
             `pasta = PATH` in {} instead)",
            conf.path.display()
        );
    }
    let found = match (&env, &conf.pasta) {
        (Some(p), _) if may_choose => {
            let p = PathBuf::from(p);
            if !is_executable(&p) {
                bail!(
                    "{ENV_PASTA}={}: not an executable file (fix: point {ENV_PASTA} at pasta, or \
                     unset it)",
                    p.display()
                );
            }
            p
        }
        (_, Some(l)) => {
            if !is_executable(&l.value) {
                bail!(
                    "{}:{}: pasta = {}: not an executable file (fix: name claude-jail's pasta, \
                     e.g. {})",
                    conf.path.display(),
                    l.line,
                    l.value.display(),
                    INSTALLED[0]
                );
            }
            l.value.clone()
        }
        _ => {
            let path: std::ffi::OsString = if caller.is_root() {
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into())
            } else {
                std::env::join_paths(SYSTEM_DIRS).unwrap_or_default()
            };
            INSTALLED
                .iter()
                .map(PathBuf::from)
                .chain(std::env::split_paths(&path).map(|d| d.join("pasta")))
                .find(|p| is_executable(p))
                .with_context(|| {
                    format!(
                        "pasta not found (fix: `cargo xtask install` puts claude-jail's pasta in \
                         {}; or name one with `pasta = PATH` in the conf)",
                        INSTALLED[0]
                    )
                })?
        }
    };
    let real = crate::conf::check_trusted(&found).context("pasta runs as root")?;
    let avx2 = PathBuf::from(format!("{}.avx2", real.display()));
    if avx2.exists() {
        crate::conf::check_trusted(&avx2).context("pasta runs it as root on AVX2 CPUs")?;
    }
    check_options(&real)?;
    Ok(real)
}

/// Asks `binary` (trusted by now) for its usage and refuses it, in one line, if it lacks an
/// option the jail passes: such a pasta would otherwise fail at start and print its whole usage.
pub fn check_options(binary: &Path) -> Result<()> {
    let out = Command::new(binary)
        .arg0("pasta")
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {} --help", binary.display()))?;
    let usage = [out.stdout, out.stderr].concat();
    let usage = String::from_utf8_lossy(&usage);
    let missing: Vec<&str> = NEEDED_OPTIONS
        .into_iter()
        .filter(|o| !usage.contains(o))
        .collect();
    if !missing.is_empty() {
        bail!(
            "pasta at {} is too old: it lacks {}, which close its openings to the host (Debian \
             12's passt is such a one) (fix: `cargo xtask install` puts claude-jail's pasta in {}; \
             or name a newer one with `pasta = PATH` in the conf)",
            binary.display(),
            missing.join(" and "),
            INSTALLED[0]
        );
    }
    Ok(())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// What pasta is asked to do.
pub struct PastaConfig<'a> {
    /// The jail's network namespace: the bind-mounted file (eBPF mode), or /proc/PID/ns/net.
    pub netns_file: &'a Path,
    /// The nftables mode: the jail's user namespace (/proc/PID/ns/user), which pasta joins
    /// before the network namespace. pasta then runs as the user, in the foreground, as the
    /// launcher's child.
    pub userns_file: Option<&'a Path>,
    pub pid_file: &'a Path,
    pub log_file: &'a Path,
    pub host_ports: &'a [PortSpec],
    pub publish_ports: &'a [PortSpec],
}

/// The full argument list (tested below: it is the security boundary of the namespace).
pub fn args(c: &PastaConfig<'_>) -> Vec<String> {
    let mut a: Vec<String> = match c.userns_file {
        // pasta drops to "nobody" by default, before it opens the namespace file, which a
        // non-root user may not do: stay root (it runs in its own cgroup under its own policy).
        None => vec!["--runas", "0"],
        // The launcher's child: it dies with the launcher (parent-death signal, which a
        // daemon's fork would lose). As the user, or as root when root launched (the jail's
        // user namespace is then root's: pasta must stay root to enter it).
        Some(_) if nix::unistd::geteuid().is_root() => vec!["--foreground", "--runas", "0"],
        Some(_) => vec!["--foreground"],
    }
    .into_iter()
    .map(String::from)
    .collect();
    a.extend(
        [
            "--quiet",
            "--config-net",
            "--no-map-gw",
            "--map-host-loopback",
            "none",
            "--map-guest-addr",
            "none",
            "--dns-forward",
        ]
        .map(String::from),
    );
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
    ]);
    if let Some(u) = c.userns_file {
        a.extend(["--userns".into(), u.display().to_string()]);
    }
    a.extend(["--netns".into(), c.netns_file.display().to_string()]);
    a
}

/// A running pasta.
#[derive(Debug)]
pub struct Pasta {
    pub pid: u32,
    /// How the launcher knows the pid is still pasta's.
    tracked: Tracked,
}

#[derive(Debug)]
enum Tracked {
    /// pasta's own cgroup (its cgroup.procs): only a pid listed there is pasta, and is signalled.
    Cgroup(PathBuf),
    /// The launcher's child (nftables mode): a pid that is ours until we reap it.
    Child(std::sync::Mutex<std::process::Child>),
}

/// Starts pasta inside `cgroup_procs`' cgroup (written in the child before exec, so pasta never
/// runs outside its policy) and waits until it has configured the namespace: without
/// `--foreground`, pasta forks to the background only once interface, address and routes are set.
pub fn start(binary: &Path, c: &PastaConfig<'_>, cgroup_procs: &Path) -> Result<Pasta> {
    let procs = cgroup_procs.to_path_buf();
    let mut cmd = Command::new(binary);
    // passt picks its mode from argv[0]; `binary` is the resolved file, usually named passt.
    cmd.arg0("pasta")
        .args(args(c))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // In the child before exec: into pasta's cgroup, with no signal blocked.
    crate::sys::exec_in_cgroup_unblocked(&mut cmd, procs);
    let out = cmd
        .output()
        .with_context(|| format!("start pasta ({})", binary.display()))?;
    if !out.status.success() {
        // pasta's own words, but never its whole usage or log: the last lines say why.
        let log = fs::read_to_string(c.log_file).unwrap_or_default();
        let said = format!("{}\n{}", String::from_utf8_lossy(&out.stderr), log);
        bail!(
            "pasta ({}) failed ({}): {} (fix: the reason above; the whole log is {})",
            binary.display(),
            out.status,
            last_lines(&said, 3),
            c.log_file.display()
        );
    }
    let pid = read_pid(c.pid_file, Duration::from_secs(5))?;
    Ok(Pasta {
        pid,
        tracked: Tracked::Cgroup(cgroup_procs.to_path_buf()),
    })
}

/// Starts pasta as the user (nftables mode), as this process's child that dies with it, and
/// waits until it has configured the namespace (it writes its pid file only then).
pub fn start_as_user(binary: &Path, c: &PastaConfig<'_>) -> Result<Pasta> {
    let mut cmd = Command::new(binary);
    cmd.arg0("pasta")
        .args(args(c))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    crate::sys::exec_dying_with_parent_unblocked(&mut cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start pasta ({})", binary.display()))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().context("wait for pasta")? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            let log = fs::read_to_string(c.log_file).unwrap_or_default();
            bail!(
                "pasta ({}) failed ({status}): {} (fix: the reason above; the whole log is {})",
                binary.display(),
                last_lines(&format!("{err}\n{log}"), 3),
                c.log_file.display()
            );
        }
        if let Ok(s) = fs::read_to_string(c.pid_file) {
            if s.trim().parse::<u32>().ok() == Some(child.id()) {
                break;
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "pasta ({}) did not configure the jail's namespace within 5 s (the log is {})",
                binary.display(),
                c.log_file.display()
            );
        }
        thread::sleep(Duration::from_millis(5));
    }
    // Its stderr is not read again: pasta logs to its file.
    drop(child.stderr.take());
    Ok(Pasta {
        pid: child.id(),
        tracked: Tracked::Child(std::sync::Mutex::new(child)),
    })
}

/// The last `n` non-empty lines of `text`, joined with " / ", each cut at 200 characters.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Failed to send"))
        .map(|l| l.chars().take(200).collect())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
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
        if let Tracked::Child(c) = &self.tracked {
            // Reaped, so that its pid is never signalled again by mistake.
            if let Ok(mut c) = c.lock() {
                let _ = c.wait();
            }
        }
    }

    /// Whether pasta's pid is still pasta: in pasta's cgroup, or our unreaped child.
    fn running(&self) -> bool {
        match &self.tracked {
            Tracked::Cgroup(procs) => {
                let me = self.pid.to_string();
                fs::read_to_string(procs)
                    .map(|procs| procs.lines().any(|l| l.trim() == me))
                    .unwrap_or(false)
            }
            Tracked::Child(c) => c
                .lock()
                .map(|mut c| matches!(c.try_wait(), Ok(None)))
                .unwrap_or(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg<'a>(host: &'a [PortSpec], publish: &'a [PortSpec]) -> PastaConfig<'a> {
        PastaConfig {
            netns_file: Path::new("/run/claude-jail/x/netns"),
            userns_file: None,
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
