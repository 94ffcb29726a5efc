//! Attaching pasta from the fake world's host namespace to a jail namespace, as claude-jail
//! does, with every default hole closed (jail-userspace/src/pasta.rs says what each of those
//! arguments closes: the gateway mapped to the host's loopback, port forwarding either way).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::netns::Netns;
use crate::world::FakeWorld;

/// Bookworm's pasta (corrupts half-closed TCP streams; kept only to document that).
pub const BOOKWORM_PASTA: &str = "/usr/bin/pasta";

/// The pasta the tests use: `$CLAUDE_JAIL_PASTA`, else `<repo>/.tools/bin/pasta` (built by
/// scripts/setup from Debian trixie's passt). An error, not a skip, when missing: CI installs it.
pub fn locate_pasta() -> Result<PathBuf> {
    let path = match std::env::var_os("CLAUDE_JAIL_PASTA") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/pasta"),
    };
    if !path.is_file() {
        bail!(
            "pasta not found at {} (set CLAUDE_JAIL_PASTA, or run `sudo scripts/setup`, which \
             builds pasta from Debian trixie's passt into .tools/bin)",
            path.display()
        );
    }
    Ok(path)
}

/// A pasta process serving a jail namespace. Stopped on drop.
pub struct Pasta {
    pid: Option<Pid>,
    log: PathBuf,
    args: Vec<String>,
}

/// How long pasta may take to configure the namespace and return.
const PASTA_START: Duration = Duration::from_secs(10);

impl Pasta {
    /// Runs `binary` in the world's host namespaces, attached to `jail` with
    /// `--config-net`, no port forwarding either way (-t/-u/-T/-U none), no gateway mapping
    /// (--no-map-gw and, where this build has them, --map-host-loopback none and
    /// --map-guest-addr none). Returns once pasta has configured the jail and forked into the
    /// background (pasta returns only then).
    pub fn attach(world: &FakeWorld, jail: &Netns, binary: &Path) -> Result<Pasta> {
        let tag = jail.name();
        let log = world.dir().join(format!("pasta-{tag}.log"));
        let pidfile = world.dir().join(format!("pasta-{tag}.pid"));
        let help = std::process::Command::new(binary)
            .arg("--help")
            .output()
            .with_context(|| format!("run {} --help", binary.display()))?;
        let help = String::from_utf8_lossy(&help.stdout).into_owned()
            + &String::from_utf8_lossy(&help.stderr);
        let mut args: Vec<String> = [
            "--runas",
            "0",
            "--config-net",
            "--no-map-gw",
            "-T",
            "none",
            "-U",
            "none",
            "-t",
            "none",
            "-u",
            "none",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for opt in ["--map-host-loopback", "--map-guest-addr"] {
            if help.contains(opt) {
                args.extend([opt.to_string(), "none".to_string()]);
            }
        }
        args.extend([
            "-l".into(),
            log.display().to_string(),
            "-P".into(),
            pidfile.display().to_string(),
            "--netns".into(),
            jail.path().display().to_string(),
        ]);
        let mut child = world
            .host_command(binary)?
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {}", binary.display()))?;
        let mut me = Pasta {
            pid: None,
            log,
            args,
        };
        let deadline = Instant::now() + PASTA_START;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("pasta did not return within {PASTA_START:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // Read the PID file even on failure: a daemon may have been left behind.
        if let Ok(s) = std::fs::read_to_string(&pidfile) {
            if let Ok(pid) = s.trim().parse::<i32>() {
                me.pid = Some(Pid::from_raw(pid));
            }
        }
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            bail!(
                "pasta failed ({status}): {} / log: {}",
                err.trim(),
                me.log_text()
            );
        }
        if me.pid.is_none() {
            bail!("pasta wrote no PID file at {}", pidfile.display());
        }
        Ok(me)
    }

    /// The daemon's PID.
    pub fn pid(&self) -> Option<Pid> {
        self.pid
    }

    /// The arguments pasta was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// pasta's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops pasta (SIGTERM, then SIGKILL after 2 s) and waits until it is gone.
    pub fn stop(&mut self) -> Result<()> {
        let Some(pid) = self.pid.take() else {
            return Ok(());
        };
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while process_running(pid) {
            if Instant::now() > deadline {
                let _ = kill(pid, Signal::SIGKILL);
                std::thread::sleep(Duration::from_millis(50));
                if process_running(pid) {
                    bail!("pasta {pid} survived SIGKILL");
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

/// True while `pid` exists and is not a zombie (pasta is not our child: whoever adopted it
/// reaps it, a little later).
pub fn process_running(pid: Pid) -> bool {
    if kill(pid, None) == Err(Errno::ESRCH) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next()),
            Some(Some('Z' | 'X'))
        ),
        Err(_) => false,
    }
}

impl Drop for Pasta {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("jail-tests: {e:#}");
        }
    }
}
