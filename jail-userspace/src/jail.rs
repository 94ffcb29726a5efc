//! Inside the jail: its init (pid 1 of a new PID namespace) and the command it starts.
//!
//! Theory of operation. The launcher clones the init with new PID, network, mount and IPC
//! namespaces; the network namespace is owned by the initial user namespace, so nothing in the
//! jail can change it. The init then:
//!
//! 1. cuts mount propagation (`/` becomes recursively private), so nothing it mounts reaches the
//!    host, and waits for the launcher's go (EOF instead means the launcher gave up: exit 125);
//!    meanwhile the launcher moves it into the jail cgroup, attaches pasta and the eBPF programs;
//! 2. unshares a cgroup namespace, rooted at the jail cgroup it now sits in;
//! 3. mounts a fresh /proc (its own PID namespace), binds the jail's resolv.conf over
//!    /etc/resolv.conf, and lets every group use ping sockets in the jail's network namespace;
//! 4. forks the command, which drops to the target user with no capabilities (bounding,
//!    permitted, effective, inheritable and ambient sets empty), sets no_new_privs, closes every
//!    descriptor above 2 and execs; the last thing before execve;
//! 5. reaps children, forwards SIGTERM and SIGHUP to the command, and exits with the command's
//!    status (128+N for signal N) — taking every process left in the PID namespace with it.
//!
//! The init keeps root in the jail's namespaces but runs no foreign code; the command cannot
//! signal or trace it (other uid, and pid 1 ignores signals it has no handler for).
use std::{
    ffi::{CString, OsStr, OsString},
    fs::File,
    io::{Read, Write},
    os::{
        fd::OwnedFd,
        unix::ffi::{OsStrExt, OsStringExt},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::{
    errno::Errno,
    mount::{mount, MsFlags},
    sched::{unshare, CloneFlags},
    sys::{
        prctl,
        signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal},
        signalfd::{SfdFlags, SignalFd},
        wait::{waitpid, WaitPidFlag, WaitStatus},
    },
    unistd::{
        chdir, execve, fork, pipe, setgroups, setresgid, setresuid, ForkResult, Gid, Pid, Uid,
    },
};

use crate::{sys, user::Target};

/// Exit status when the jail could not be built (as `podman run`).
pub const EXIT_JAIL_FAILED: i32 = 125;
/// The command was found but could not be executed.
pub const EXIT_CANNOT_EXEC: i32 = 126;
/// The command was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// What the init needs to know, prepared by the launcher before it clones (the child allocates
/// as little as possible).
pub struct Spec {
    pub target: Target,
    pub argv: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: PathBuf,
    /// The jail's resolv.conf, bound over /etc/resolv.conf.
    pub resolv_conf: PathBuf,
}

/// The init, seen from the launcher.
pub struct Init {
    pub pid: Pid,
    go: Option<File>,
}

impl Init {
    /// Lets the init proceed (the jail around it is complete).
    pub fn go(&mut self) -> Result<()> {
        let mut go = self.go.take().context("go sent twice")?;
        go.write_all(b"g").context("signal the jail's init")
    }
}

/// Clones the init into new PID, network, mount and IPC namespaces. It waits for [`Init::go`];
/// dropping the `Init` without it makes the init exit with 125 before running anything.
/// The caller must be single-threaded.
pub fn spawn(spec: &Spec) -> Result<Init> {
    let (go_r, go_w) = pipe().context("pipe")?;
    let flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWIPC;
    let mut go_r = Some(go_r);
    let go_w_raw = std::os::fd::AsRawFd::as_raw_fd(&go_w);
    let pid = sys::clone_process(flags, || {
        // The child's copy of the write end must go, or it would never see EOF.
        let _ = nix::unistd::close(go_w_raw);
        let code = match init_main(spec, go_r.take().expect("runs once")) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("claude-jail: jail init: {e:#}");
                EXIT_JAIL_FAILED
            }
        };
        code as isize
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "clone new namespaces: {e} (fix: run as root on a kernel with user, pid, net and mount \
             namespaces)"
        )
    })?;
    Ok(Init {
        pid,
        go: Some(File::from(go_w)),
    })
}

/// Forks the command without any jail (the egress jail is turned off): same user, same dropped
/// capabilities, same environment, host networking.
pub fn fork_command(spec: &Spec) -> Result<Pid> {
    // SAFETY (fork): the launcher is single-threaded.
    match unsafe { fork() }.context("fork the command")? {
        ForkResult::Child => {
            let code = match exec_command(spec) {
                Ok(never) => match never {},
                Err((code, e)) => {
                    eprintln!("claude-jail: {e:#}");
                    code
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => Ok(child),
    }
}

fn init_main(spec: &Spec, go: OwnedFd) -> Result<i32> {
    // If the launcher dies, so does the jail (and with pid 1, everything in it).
    prctl::set_pdeathsig(Signal::SIGKILL).context("PR_SET_PDEATHSIG")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("make / private")?;
    let mut byte = [0u8; 1];
    if File::from(go).read(&mut byte).unwrap_or(0) != 1 {
        // The launcher failed and said why; nothing runs.
        return Ok(EXIT_JAIL_FAILED);
    }
    unshare(CloneFlags::CLONE_NEWCGROUP).context("unshare the cgroup namespace")?;
    setup_mounts(spec)?;
    std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")
        .context("allow ping sockets in the jail")?;

    let mut watched = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGHUP] {
        watched.add(s);
    }
    watched.thread_block().context("block signals")?;
    let sfd = SignalFd::with_flags(&watched, SfdFlags::SFD_CLOEXEC).context("signalfd")?;

    // The init is single-threaded.
    let command = fork_command(spec)?;
    loop {
        let Some(info) = sfd.read_signal().context("read signalfd")? else {
            continue;
        };
        match Signal::try_from(info.ssi_signo as i32) {
            Ok(Signal::SIGCHLD) => loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == command => return Ok(code),
                    Ok(WaitStatus::Signaled(pid, sig, _)) if pid == command => {
                        return Ok(128 + sig as i32)
                    }
                    Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                    Ok(_) => {}
                    Err(e) => bail!("waitpid: {e}"),
                }
            },
            Ok(sig) => {
                let _ = kill(command, sig);
            }
            Err(_) => {}
        }
    }
}

fn setup_mounts(spec: &Spec) -> Result<()> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), "/proc", Some("proc"), nosuid, None::<&str>)
        .context("mount /proc for the jail's PID namespace")?;
    bind_ro(&spec.resolv_conf, Path::new("/etc/resolv.conf"))?;
    Ok(())
}

/// Binds `src` over `dst`, read-only.
fn bind_ro(src: &Path, dst: &Path) -> Result<()> {
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .with_context(|| format!("bind {} over {}", src.display(), dst.display()))?;
    mount(
        None::<&str>,
        dst,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .with_context(|| format!("make {} read-only", dst.display()))
}

type Never = std::convert::Infallible;

/// In the command's process: drop everything, find the program, exec. Returns only on failure,
/// with the exit status to use.
fn exec_command(spec: &Spec) -> Result<Never, (i32, anyhow::Error)> {
    let fail = |e: anyhow::Error| (EXIT_JAIL_FAILED, e);
    reset_signals().map_err(fail)?;
    drop_privileges(&spec.target).map_err(fail)?;

    let mut env = spec.env.clone();
    let name = spec
        .argv
        .first()
        .ok_or_else(|| fail(anyhow::anyhow!("empty command")))?;
    let program = match find_program(name, env_get(&env, "PATH")) {
        Some(p) => p,
        None => {
            // sudo's secure_path hides ~/.local/bin, where claude usually lives: ask the user's
            // login shell (here, inside the jail, as the user) for its PATH.
            let login = login_path(&spec.target, &env);
            match login.as_deref().and_then(|p| find_program(name, Some(p))) {
                Some(p) => {
                    env_set(&mut env, "PATH", login.unwrap());
                    p
                }
                None => {
                    return Err((
                        EXIT_NOT_FOUND,
                        anyhow::anyhow!(
                            "{}: command not found (searched PATH and {}'s login PATH)",
                            name.to_string_lossy(),
                            spec.target.name
                        ),
                    ))
                }
            }
        }
    };
    if chdir(&spec.cwd).is_err() {
        chdir(&spec.target.home)
            .map_err(|e| fail(anyhow::anyhow!("chdir {}: {e}", spec.target.home.display())))?;
    }
    let argv: Vec<CString> = spec.argv.iter().map(|a| cstring(a)).collect();
    let envp: Vec<CString> = env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.clone();
            kv.push("=");
            kv.push(v);
            cstring(&kv)
        })
        .collect();
    let prog = cstring(program.as_os_str());
    // The last thing before execve: no descriptor of the launcher crosses into the command.
    sys::close_from(3).map_err(|e| fail(anyhow::anyhow!("close_range: {e}")))?;
    let err = execve(&prog, &argv, &envp).unwrap_err();
    let code = match err {
        Errno::ENOENT | Errno::ENOTDIR => EXIT_NOT_FOUND,
        _ => EXIT_CANNOT_EXEC,
    };
    Err((
        code,
        anyhow::anyhow!("cannot execute {}: {err}", program.display()),
    ))
}

fn cstring(s: &OsStr) -> CString {
    // Arguments and environment come from the launcher's own argv/environ: no NUL inside.
    CString::new(s.as_bytes()).unwrap_or_default()
}

fn env_get<'a>(env: &'a [(OsString, OsString)], k: &str) -> Option<&'a OsStr> {
    env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_os_str())
}

fn env_set(env: &mut Vec<(OsString, OsString)>, k: &str, v: OsString) {
    env.retain(|(n, _)| n != k);
    env.push((k.into(), v));
}

/// Signals back to their defaults and unblocked: the init blocked some, and a blocked or ignored
/// signal would stay so across exec.
fn reset_signals() -> Result<()> {
    SigSet::all().thread_unblock().context("unblock signals")?;
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: installing SIG_DFL runs no handler code.
            unsafe { sigaction(sig, &dfl) }.with_context(|| format!("reset {sig}"))?;
        }
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .context("sigprocmask")
}

/// To the target user, with no capability left in any set and no way to gain one (no_new_privs:
/// setuid binaries and file capabilities are ignored from here on).
fn drop_privileges(t: &Target) -> Result<()> {
    use caps::CapSet;
    // The bounding set can only be dropped while we still hold CAP_SETPCAP, so first.
    for cap in caps::all() {
        match caps::drop(None, CapSet::Bounding, cap) {
            Ok(()) => {}
            // A capability this kernel does not know.
            Err(_) if !caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) => {}
            Err(e) => bail!("drop {cap} from the bounding set: {e}"),
        }
    }
    caps::clear(None, CapSet::Ambient).context("clear ambient capabilities")?;
    caps::clear(None, CapSet::Inheritable).context("clear inheritable capabilities")?;
    let gids: Vec<Gid> = t.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    setgroups(&gids).context("setgroups")?;
    let gid = Gid::from_raw(t.gid);
    setresgid(gid, gid, gid).context("setresgid")?;
    let uid = Uid::from_raw(t.uid);
    setresuid(uid, uid, uid).context("setresuid")?;
    // setresuid away from 0 cleared permitted and effective; say so explicitly anyway.
    caps::clear(None, CapSet::Effective).context("clear effective capabilities")?;
    caps::clear(None, CapSet::Permitted).context("clear permitted capabilities")?;
    prctl::set_no_new_privs().context("PR_SET_NO_NEW_PRIVS")?;
    for set in [
        CapSet::Bounding,
        CapSet::Permitted,
        CapSet::Effective,
        CapSet::Inheritable,
        CapSet::Ambient,
    ] {
        let left = caps::read(None, set).context("read capabilities")?;
        if !left.is_empty() {
            bail!("capabilities left in {set:?} after dropping: {left:?}");
        }
    }
    if setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).is_ok() {
        bail!("could regain uid 0 after dropping privileges");
    }
    Ok(())
}

/// The program `name` names: itself when it has a slash, else the first executable of that name
/// on `path`.
fn find_program(name: &OsStr, path: Option<&OsStr>) -> Option<PathBuf> {
    if name.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(name));
    }
    let path = path?;
    std::env::split_paths(path)
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(name))
        .find(|p| nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok() && p.is_file())
}

/// The target user's login PATH, from their login shell run in the jail as them (5 s at most).
fn login_path(t: &Target, env: &[(OsString, OsString)]) -> Option<OsString> {
    let mut child = Command::new(&t.shell)
        .args(["-l", "-c", "printf %s \"$PATH\""])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&t.home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let mut out = Vec::new();
    child.stdout.take()?.read_to_end(&mut out).ok()?;
    (!out.is_empty()).then(|| OsString::from_vec(out))
}
