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
//!    /etc/resolv.conf, covers the sockets of services that would act outside the jail
//!    ([`crate::mask`]: /dev/null over a socket, an empty read-only tmpfs over a socket
//!    directory), replaces every cgroup mount of the host with the jail's own cgroup2 (rooted at
//!    the jail cgroup by the cgroup namespace), and lets every group use ping sockets in the
//!    jail's network namespace;
//! 4. forks the command, which drops to the target user with no capabilities (bounding,
//!    permitted, effective, inheritable and ambient sets empty), sets no_new_privs, installs the
//!    seccomp filter ([`crate::seccomp`]) before any code of the user runs (the login shell that
//!    finds PATH included), closes every descriptor above 2 and execs; the last thing before
//!    execve;
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
        fd::{AsFd, OwnedFd},
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
        signal::{kill, SigSet, SigmaskHow, Signal},
        signalfd::{SfdFlags, SignalFd},
        wait::{waitpid, WaitPidFlag, WaitStatus},
    },
    unistd::{chdir, execve, pipe, setgroups, setresgid, setresuid, ForkResult, Gid, Pid, Uid},
};

use crate::{
    exit::Exit,
    init_report::{Failure, Step},
    mask::{self, Kind, Mask},
    seccomp, sys,
    user::Target,
};

/// Exit status when the jail could not be built (as `podman run`).
pub const EXIT_JAIL_FAILED: i32 = Exit::JailFailed.code();
/// The command was found but could not be executed.
pub const EXIT_CANNOT_EXEC: i32 = Exit::CannotExec.code();
/// The command was not found.
pub const EXIT_NOT_FOUND: i32 = Exit::NotFound.code();

/// What the init needs to know, prepared by the launcher before it clones (the child allocates
/// as little as possible).
pub struct Spec {
    pub target: Target,
    pub argv: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: PathBuf,
    /// The jail's resolv.conf, bound over /etc/resolv.conf.
    pub resolv_conf: PathBuf,
    /// Broker sockets to cover in the jail's mount namespace ([`mask::plan`]).
    pub masks: Vec<Mask>,
    /// (copy, original): programs with file capabilities, bound over by copies without them.
    /// With an empty bounding set the kernel refuses to execute a file whose capabilities it
    /// cannot grant ("insufficient to execute correctly"); ping needs none here (ping sockets).
    pub uncapped: Vec<(PathBuf, PathBuf)>,
    /// The nftables mode: the init gets a user namespace of its own too ([`crate::userns`]),
    /// which owns the jail's other namespaces.
    pub userns: bool,
}

/// The init, seen from the launcher.
pub struct Init {
    pub pid: Pid,
    go: Option<File>,
    /// The read end of the report pipe: a set-up step that fails inside the jail (in the init, or
    /// in the command's process before execve) writes why; EOF with nothing written means the
    /// command's process reached execve.
    report: Option<File>,
}

impl Init {
    /// Lets the init proceed (the jail around it is complete).
    pub fn go(&mut self) -> Result<()> {
        let mut go = self.go.take().context("go sent twice")?;
        go.write_all(b"g").context("signal the jail's init")
    }

    /// After [`Init::go`]: waits until the command's process has finished the jail's set-up and
    /// reached execve, or returns the failure of the step that stopped it (nothing of the
    /// command ran then). Whether execve itself succeeded is the command's exit status (126/127).
    pub fn started(&mut self) -> Result<()> {
        let mut report = self.report.take().context("started asked twice")?;
        let mut msg = String::new();
        report
            .read_to_string(&mut msg)
            .context("read the jail's set-up report")?;
        if msg.is_empty() {
            return Ok(());
        }
        bail!(
            "setting up the jail inside its namespaces failed, nothing was run: {}",
            Failure::decode(&msg)
        )
    }
}

/// Writes a set-up failure to the launcher's report pipe, typed ([`Failure`]); stderr if there
/// is none.
fn report_failure(report: Option<&File>, e: &anyhow::Error) {
    match report {
        Some(mut f) => {
            let _ = f.write_all(Failure::of(e).encode().as_bytes());
        }
        None => eprintln!("claude-jail: {e:#}"),
    }
}

/// Clones the init into new PID, network, mount and IPC namespaces. It waits for [`Init::go`];
/// dropping the `Init` without it makes the init exit with 125 before running anything.
/// The caller must be single-threaded.
pub fn spawn(spec: &Spec) -> Result<Init> {
    let (go_r, go_w) = pipe().context("pipe")?;
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    let mut flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWIPC;
    if spec.userns {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    let mut go_r = Some(go_r);
    let mut report_w = Some(File::from(report_w));
    let pid = sys::clone_process(flags, || {
        // The child's copies of the launcher's ends (go_w, report_r) go with every other
        // descriptor of the launcher, first thing in init_main.
        let mut report = report_w.take();
        let code = match init_main(spec, go_r.take().expect("runs once"), &mut report) {
            Ok(code) => code,
            Err(e) => {
                report_failure(report.as_ref(), &e.context("jail init"));
                EXIT_JAIL_FAILED
            }
        };
        code as isize
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "clone the jail's init into new PID, network, mount and IPC namespaces: {e} (fix: run \
             as root on a kernel with those namespaces; ENOSPC: raise the user.max_*_namespaces \
             sysctl that is 0)"
        )
    })?;
    // The launcher's copy of the write end must go, or it would never see EOF.
    drop(report_w);
    let init = Init {
        pid,
        go: Some(File::from(go_w)),
        report: Some(File::from(report_r)),
    };
    if spec.userns {
        // Before the go: the init's set-up needs the user's ids to exist in its namespace. On
        // failure the dropped `Init` closes the go pipe and the init exits without running
        // anything.
        crate::userns::write_maps(pid, spec.target.uid, spec.target.gid, &spec.target.groups)
            .context(
                "map the user's ids in the jail's user namespace (fix: a kernel that allows \
                 user namespaces: the user.max_user_namespaces sysctl above 0, and no \
                 kernel.apparmor_restrict_unprivileged_userns)",
            )?;
    }
    Ok(init)
}

/// Forks the command without any jail (the egress jail is turned off): same user, same dropped
/// capabilities, same environment, host networking, no seccomp filter.
pub fn fork_command(spec: &Spec) -> Result<Pid> {
    fork_exec(spec, None, None)
}

/// Forks the command; `jailed` (the jail's /proc) installs the seccomp filter, and a Landlock
/// domain over an inherited /proc. A set-up failure (exit 125) goes to `report` when given.
fn fork_exec(spec: &Spec, jailed: Option<Proc>, report: Option<&File>) -> Result<Pid> {
    // The launcher, and the init, are single-threaded.
    match sys::fork_single_threaded().context("fork the command")? {
        ForkResult::Child => {
            let code = match exec_command(spec, jailed) {
                Ok(never) => match never {},
                Err((code, e)) if code == EXIT_JAIL_FAILED => {
                    report_failure(report, &e);
                    code
                }
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

/// `report`: the write end of the launcher's report pipe; closed once the command is forked (the
/// command's process holds its own copy until execve).
fn init_main(spec: &Spec, go: OwnedFd, report: &mut Option<File>) -> Result<i32> {
    use std::os::fd::AsRawFd;
    // If the launcher dies, so does the jail (and with pid 1, everything in it).
    prctl::set_pdeathsig(Signal::SIGKILL)
        .context("PR_SET_PDEATHSIG")
        .context(Step::Start)?;
    let mut keep = vec![go.as_raw_fd()];
    keep.extend(report.as_ref().map(|f| f.as_raw_fd()));
    sys::close_all_but(&keep)
        .context("close the launcher's descriptors")
        .context(Step::Start)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("make / private")
    .context(Step::Start)?;
    let mut byte = [0u8; 1];
    if File::from(go).read(&mut byte).unwrap_or(0) != 1 {
        // The launcher failed and said why; nothing runs.
        return Ok(EXIT_JAIL_FAILED);
    }
    if spec.userns {
        // The command runs under the init's own uid in the nftables mode: without this it could
        // ptrace the init, which holds every capability over the jail's namespaces until the
        // command is forked. Not dumpable, tracing it needs CAP_SYS_PTRACE where the init's
        // memory was made: the launcher's user namespace, where the command has nothing. Only
        // now: until the go, the launcher opens the init's namespace files
        // ([`crate::userns::JailNs`]), which a non-dumpable process keeps root's.
        prctl::set_dumpable(false)
            .context("PR_SET_DUMPABLE")
            .context(Step::Start)?;
    }
    unshare(CloneFlags::CLONE_NEWCGROUP).context(Step::CgroupNamespace)?;
    let proc = setup_mounts(spec)?;
    // The range must be of groups mapped in the namespace's owner: every group when that is the
    // initial user namespace, the user's own group in a user namespace of the jail's own.
    let ping_groups = if spec.userns {
        format!("{g} {g}", g = spec.target.gid)
    } else {
        "0 2147483647".to_string()
    };
    match std::fs::write("/proc/sys/net/ipv4/ping_group_range", ping_groups) {
        Ok(()) => {}
        // The container's /proc, kept (`Proc::Inherited`), has /proc/sys read-only: ping stays
        // off in the jail (the kernel's default), nothing else changes.
        Err(e) if proc == Proc::Inherited && e.raw_os_error() == Some(libc::EROFS) => {}
        Err(e) => {
            return Err(e)
                .context("write /proc/sys/net/ipv4/ping_group_range")
                .context(Step::PingSockets)
        }
    }

    let mut watched = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGHUP] {
        watched.add(s);
    }
    watched
        .thread_block()
        .context("block signals")
        .context(Step::Supervise)?;
    let sfd = SignalFd::with_flags(&watched, SfdFlags::SFD_CLOEXEC)
        .context("signalfd")
        .context(Step::Supervise)?;

    // The init is single-threaded.
    let command = fork_exec(spec, Some(proc), report.as_ref()).context(Step::Supervise)?;
    drop(report.take());
    if spec.userns {
        // Nothing left to do that needs them: reaping and forwarding signals to a process of the
        // same uid need none.
        drop_own_capabilities().context(Step::Supervise)?;
    }
    loop {
        let Some(info) = sfd.read_signal().context("read signalfd")? else {
            continue;
        };
        match Signal::try_from(info.ssi_signo as i32) {
            Ok(Signal::SIGCHLD) => loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == command => return Ok(code),
                    Ok(WaitStatus::Signaled(pid, sig, _)) if pid == command => {
                        return Ok(Exit::Signal(sig).code())
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

const NOSUID: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// The jail's /proc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proc {
    /// A fresh one, of the jail's PID namespace: nothing outside it shows.
    Fresh,
    /// The one the jail started from (nftables mode only, where the kernel refuses a fresh one
    /// because a container masked parts of it): the container's processes show in it, so the
    /// command gets a Landlock domain that keeps it from signalling, tracing or looking into
    /// them ([`sys::landlock_scope_signals`]).
    Inherited,
}

/// Landlock's ABI from which signals are scoped (Linux 6.12).
const LANDLOCK_SCOPED_SIGNALS: u32 = 6;

fn setup_mounts(spec: &Spec) -> Result<Proc> {
    // Read before /proc is replaced: the mounts this namespace inherited from the host.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .context("read /proc/self/mountinfo")
        .context(Step::Start)?;
    let proc = match mount(Some("proc"), "/proc", Some("proc"), NOSUID, None::<&str>) {
        Ok(()) => Proc::Fresh,
        // A user namespace may mount proc only where the /proc it would replace is fully
        // visible; a container's masked paths make it not.
        Err(Errno::EPERM) if spec.userns && sys::landlock_abi() >= LANDLOCK_SCOPED_SIGNALS => {
            Proc::Inherited
        }
        Err(e) => return Err(e).context(Step::MountProc),
    };
    bind_ro(&spec.resolv_conf, Path::new("/etc/resolv.conf")).context(Step::ResolvConf)?;
    for (copy, original) in &spec.uncapped {
        bind_ro(copy, original).context(Step::Uncap)?;
    }
    for m in &spec.masks {
        apply_mask(m)
            .with_context(|| format!("cover {} ({})", m.path.display(), m.what))
            .context(Step::Mask)?;
    }
    for c in mask::cgroup_covers(&mountinfo) {
        cover_cgroup(&c)
            .with_context(|| c.at.display().to_string())
            .context(Step::CoverCgroup)?;
    }
    Ok(proc)
}

/// Covers one broker path, or pins a directory above one ([`Kind::Pin`]; [`mask::plan`] puts the
/// pins first). The path is opened without following a final symlink and its type
/// checked, and the mount goes onto that very file (/proc/self/fd/N): a path the user swapped
/// for a symlink since the launcher looked cannot redirect the mount. A path that is gone, or
/// no longer what it was, has nothing left to hide.
fn apply_mask(m: &Mask) -> Result<()> {
    use nix::{fcntl::OFlag, sys::stat::Mode};
    let fd = match open_path(&m.path, OFlag::O_NOFOLLOW) {
        Ok(fd) => fd,
        Err(e) if e.downcast_ref::<Errno>() == Some(&Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    let st = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd)).map_err(|e| {
        // The user may list it (the scan ran as the user) but root may not: a FUSE mount of
        // the user's without allow_root. What cannot be covered is refused, never left open.
        let why = if e == Errno::EACCES {
            "; root may not open it, though the user can: a FUSE mount without allow_root \
             (fix: mount it with `-o allow_root`, or stop the service whose socket is there \
             while the agent runs)"
        } else {
            ""
        };
        anyhow::anyhow!("fstat: {e}{why}")
    })?;
    let fmt = st.st_mode & libc::S_IFMT;
    let here = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ));
    // Every step below goes through descriptors, never through a path the user could swap for
    // a symlink. A descriptor names the file under the new mount, so the mount itself is
    // reached again from the parent's descriptor (a lookup crosses onto the top mount).
    let parent = m.path.parent().context("no parent directory")?;
    let name = m.path.file_name().context("no file name")?;
    let parent = open_path(parent, OFlag::O_DIRECTORY)?;
    let reopen = |flags: OFlag| -> Result<OwnedFd> {
        sys::openat(
            parent.as_fd(),
            name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .context("open the new mount")
    };
    let ro = |top: &OwnedFd, flags: MsFlags| {
        let at = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(top));
        mount(
            None::<&str>,
            at.as_str(),
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | NOSUID | flags | kept_flags(Path::new(&at)),
            None::<&str>,
        )
        .context("make the mount read-only")
    };
    match m.kind {
        Kind::Socket if fmt == libc::S_IFSOCK => {
            mount(
                Some("/dev/null"),
                &here,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .context("bind /dev/null")?;
            ro(&reopen(OFlag::O_PATH)?, MsFlags::MS_BIND)?;
        }
        Kind::Dir if fmt == libc::S_IFDIR => {
            // The kept sockets are opened before the tmpfs hides them.
            let mut kept = Vec::new();
            for rel in &m.keep {
                match sys::openat(
                    fd.as_fd(),
                    rel,
                    OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(k) => kept.push((rel, k)),
                    Err(Errno::ENOENT) => {}
                    Err(e) => return Err(e).with_context(|| format!("open {}", rel.display())),
                }
            }
            mount(
                Some("claude-jail-mask"),
                &here,
                Some("tmpfs"),
                NOSUID,
                Some("mode=0755,size=64k"),
            )
            .context("mount an empty tmpfs")?;
            let root = reopen(OFlag::O_DIRECTORY)?;
            let root_raw = std::os::fd::AsRawFd::as_raw_fd(&root);
            let fs = nix::sys::statfs::fstatfs(&root).context("fstatfs")?;
            if fs.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC {
                bail!("the new tmpfs is not where it was mounted");
            }
            for (rel, k) in &kept {
                // select() keeps only direct children: `rel` is one file name.
                let f = nix::fcntl::openat(
                    Some(root_raw),
                    *rel,
                    OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .with_context(|| format!("create the mount point for {}", rel.display()))?;
                let _ = nix::unistd::close(f);
                let src = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(k));
                let dst = format!("/proc/self/fd/{root_raw}/{}", rel.display());
                mount(
                    Some(src.as_str()),
                    dst.as_str(),
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .with_context(|| format!("keep {} (allow-socket)", rel.display()))?;
            }
            ro(&root, MsFlags::empty())?;
        }
        Kind::Pin if fmt == libc::S_IFDIR => {
            // Onto itself, recursively (what is mounted below stays visible): a mount point the
            // jail cannot rename or remove. It stays writable: only its name is fixed.
            mount(
                Some(&here),
                &here,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .context("bind the directory onto itself")?;
        }
        _ => {}
    }
    Ok(())
}

/// An O_PATH descriptor of `p` (with `extra` flags).
fn open_path(p: &Path, extra: nix::fcntl::OFlag) -> Result<OwnedFd> {
    use nix::fcntl::OFlag;
    sys::open(
        p,
        OFlag::O_PATH | OFlag::O_CLOEXEC | extra,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(anyhow::Error::from)
    .with_context(|| format!("open {}", p.display()))
}

/// Hides one cgroup filesystem of the host: an empty tmpfs over it, the jail's own cgroup2 (the
/// init sits in a cgroup namespace rooted at the jail cgroup, so that is all it shows) where a
/// cgroup2 was, then the tmpfs read-only.
///
/// The tmpfs comes first in every layout, also where cgroup2 itself is the mount point (a
/// unified host, `cgroup2_at` = [""]): the kernel refuses to mount a superblock onto the root of
/// a mount of that same superblock (EBUSY), and the jail's cgroup2 is the host's superblock seen
/// through the jail's cgroup namespace. Stacked on the tmpfs instead, it hides the host's mount
/// and the tmpfs below it whole.
fn cover_cgroup(c: &mask::CgroupCover) -> Result<()> {
    let cgroup2 = |at: &Path| {
        mount(
            Some("cgroup2"),
            at,
            Some("cgroup2"),
            NOSUID | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .with_context(|| format!("mount the jail's cgroup2 on {}", at.display()))
    };
    mount(
        Some("claude-jail-cgroup"),
        &c.at,
        Some("tmpfs"),
        NOSUID,
        Some("mode=0755,size=64k"),
    )
    .context("mount an empty tmpfs")?;
    let (in_place, below): (Vec<&PathBuf>, Vec<&PathBuf>) =
        c.cgroup2_at.iter().partition(|r| r.as_os_str().is_empty());
    for rel in below {
        let at = c.at.join(rel);
        std::fs::create_dir_all(&at).with_context(|| format!("mkdir {}", at.display()))?;
        cgroup2(&at)?;
    }
    // Read-only before anything is stacked on it: a remount at `at` acts on the top mount.
    mount(
        None::<&str>,
        &c.at,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | NOSUID,
        None::<&str>,
    )
    .context("make the tmpfs read-only")?;
    if !in_place.is_empty() {
        cgroup2(&c.at)?;
    }
    Ok(())
}

/// Programs that carry file capabilities but need none in the jail.
const UNCAPPED: [&str; 2] = ["/usr/bin/ping", "/bin/ping"];

/// Copies each of [`UNCAPPED`] that exists into `dir` (a copy has no `security.capability`
/// attribute) and returns the (copy, original) pairs to bind in the jail.
pub fn uncapped_copies(dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut out: Vec<(PathBuf, PathBuf)> = Vec::new();
    for p in UNCAPPED {
        let Ok(real) = std::fs::canonicalize(p) else {
            continue;
        };
        if out.iter().any(|(_, o)| *o == real) {
            continue;
        }
        let copy = dir.join(real.file_name().unwrap_or_default());
        std::fs::copy(&real, &copy).with_context(|| format!("copy {}", real.display()))?;
        out.push((copy, real));
    }
    Ok(out)
}

/// Binds `src` over `dst`, read-only.
fn bind_ro(src: &Path, dst: &Path) -> Result<()> {
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .with_context(|| format!("bind {} over {}", src.display(), dst.display()))?;
    mount(
        None::<&str>,
        dst,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | kept_flags(dst),
        None::<&str>,
    )
    .with_context(|| format!("make {} read-only", dst.display()))
}

/// The flags of the mount at `path` that a remount must repeat. In a user namespace the kernel
/// locks nosuid, nodev, noexec and the atime mode of every mount inherited from outside: a
/// remount that leaves one out is refused (EPERM) rather than clearing it.
fn kept_flags(path: &Path) -> MsFlags {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let Ok(st) = statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ]
    .into_iter()
    .filter(|(st, _)| f.contains(*st))
    .fold(MsFlags::empty(), |acc, (_, ms)| acc | ms)
}

type Never = std::convert::Infallible;

/// In the command's process: drop everything, find the program, exec. Returns only on failure,
/// with the exit status to use.
fn exec_command(spec: &Spec, proc: Option<Proc>) -> Result<Never, (i32, anyhow::Error)> {
    let fail = |e: anyhow::Error| (EXIT_JAIL_FAILED, e);
    let jailed = proc.is_some();
    reset_signals().context(Step::Supervise).map_err(fail)?;
    if jailed || nix::unistd::geteuid().is_root() {
        drop_privileges(&spec.target)
            .context(Step::DropPrivileges)
            .map_err(fail)?;
    } else if nix::unistd::getuid().as_raw() != spec.target.uid {
        return Err(fail(anyhow::anyhow!(
            "cannot run as {} without root",
            spec.target.name
        )));
    }
    // else: the jail is off and the caller is the unprivileged target itself: nothing to drop.
    if jailed {
        // Before any code of the user runs: the login shell below reads the user's rc files.
        seccomp::install().context(Step::Seccomp).map_err(fail)?;
    }
    if proc == Some(Proc::Inherited) {
        sys::landlock_scope_signals()
            .context("landlock_restrict_self")
            .context(Step::Seccomp)
            .map_err(fail)?;
    }

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
    // The caller's directory, else the user's home (the user may not enter root's cwd), else /
    // (a system account's home such as /nonexistent), saying so.
    if chdir(&spec.cwd).is_err() && chdir(&spec.target.home).is_err() {
        eprintln!(
            "claude-jail: cannot enter {} or {}: starting in /",
            spec.cwd.display(),
            spec.target.home.display()
        );
        chdir("/")
            .context("chdir /")
            .context(Step::Chdir)
            .map_err(fail)?;
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
    sys::close_from(3)
        .context("close_range")
        .context(Step::CloseDescriptors)
        .map_err(fail)?;
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
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            sys::default_signal_action(sig).with_context(|| format!("reset {sig}"))?;
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
    // In a user namespace an unprivileged launcher made, setgroups is denied, and the command
    // keeps the supplementary groups it had outside: the user's own ([`crate::userns`]).
    if crate::userns::setgroups_allowed() {
        let gids: Vec<Gid> = t.groups.iter().map(|&g| Gid::from_raw(g)).collect();
        setgroups(&gids).context("setgroups")?;
    }
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

/// The init's own capabilities, in the nftables mode once the command is forked.
fn drop_own_capabilities() -> Result<()> {
    use caps::CapSet;
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).with_context(|| format!("clear {set:?} capabilities"))?;
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
