//! Named network namespaces created by the harness, entering them from a thread or a child
//! process, and the check that nothing is ever configured in the namespace the test process
//! started in.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;

use anyhow::{bail, ensure, Context, Result};
use nix::sched::{setns, CloneFlags};

/// Where `ip netns add` bind-mounts the namespace files.
pub const NETNS_DIR: &str = "/run/netns";

/// `ip netns add` makes /run/netns a mount point on first use; two of them racing can stack two
/// bind mounts and hide each other's files. Tests run in parallel threads, so serialise them.
static IP_NETNS_LOCK: Mutex<()> = Mutex::new(());

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A prefix unique to this process and call (`cjt-<pid>-<n>`), for names of namespaces and
/// temporary directories, so that worlds of tests running in parallel never collide.
pub fn unique_prefix() -> String {
    format!(
        "cjt-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The inode of a namespace file (`/proc/.../ns/net` or a bind mount of one): two paths refer
/// to the same namespace exactly when their inodes are equal.
pub fn ns_inode(path: impl AsRef<Path>) -> Result<u64> {
    let path = path.as_ref();
    Ok(std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .ino())
}

/// The network namespace the test process started in (that of its main thread, which the
/// harness never moves: it only moves threads it spawns itself).
pub fn start_netns_inode() -> Result<u64> {
    static START: OnceLock<u64> = OnceLock::new();
    if let Some(ino) = START.get() {
        return Ok(*ino);
    }
    let ino = ns_inode("/proc/self/ns/net")?;
    Ok(*START.get_or_init(|| ino))
}

/// Refuses (with an error) unless the calling thread is in the namespace `expected` and neither
/// in the process's start namespace nor in that of PID 1 (the machine's real network when the
/// test does not run in its own PID namespace). Called before anything is configured.
pub fn assert_thread_in(expected: u64) -> Result<()> {
    let here = ns_inode("/proc/thread-self/ns/net")?;
    let start = start_netns_inode()?;
    ensure!(
        here != start,
        "safety: refusing to go on in the test process's start network namespace (net:[{here}])"
    );
    if let Ok(init) = ns_inode("/proc/1/ns/net") {
        ensure!(
            here != init,
            "safety: refusing to go on in PID 1's network namespace (net:[{here}])"
        );
    }
    ensure!(
        here == expected,
        "thread is in net:[{here}], expected net:[{expected}]"
    );
    Ok(())
}

/// A network namespace created with `ip netns add` (a file in /run/netns, which the launcher
/// under test and pasta can open by path). Deleted on drop; the kernel frees it once the last
/// socket, process or mount referring to it is gone.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    inode: u64,
    deleted: bool,
}

impl Netns {
    /// Creates the namespace `name` (at most 255 bytes, no '/') and brings its loopback up.
    pub fn create(name: &str) -> Result<Netns> {
        ensure!(
            !name.is_empty() && !name.contains('/'),
            "bad namespace name {name:?}"
        );
        // Record the start namespace before any thread of ours moves.
        let start = start_netns_inode()?;
        {
            let _guard = IP_NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            run_checked(Command::new("ip").args(["netns", "add", name]))?;
        }
        let path = Path::new(NETNS_DIR).join(name);
        let mut ns = Netns {
            name: name.to_owned(),
            inode: 0,
            path,
            deleted: false,
        };
        ns.inode = ns_inode(&ns.path)?;
        ensure!(
            ns.inode != start,
            "new namespace {name} is the start namespace?"
        );
        ns.ip_batch("link set lo up")?;
        Ok(ns)
    }

    /// The name under /run/netns.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file (`/run/netns/<name>`), for `setns`, `ip -n`, `pasta --netns`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's inode (as in `net:[inode]`).
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Runs `f` on a new thread that has entered this network namespace (only the network
    /// namespace: mount namespaces cannot be entered per thread), and returns its result.
    /// Sockets `f` creates belong to this namespace for their whole life, also when they are
    /// used later from other threads. A panic in `f` is propagated.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file =
            File::open(&self.path).with_context(|| format!("open {}", self.path.display()))?;
        let inode = self.inode;
        thread::scope(|s| {
            let handle = s.spawn(move || -> Result<T> {
                setns(&file, CloneFlags::CLONE_NEWNET).context("setns(CLONE_NEWNET)")?;
                assert_thread_in(inode)?;
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Like [`Netns::run`] but the thread lives on (for servers and captures): `f` must own
    /// what it uses. The namespace check runs before `f`; its failure is `f`'s error.
    pub fn spawn<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<thread::JoinHandle<Result<T>>> {
        let file =
            File::open(&self.path).with_context(|| format!("open {}", self.path.display()))?;
        let inode = self.inode;
        thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).context("setns(CLONE_NEWNET)")?;
                drop(file);
                assert_thread_in(inode)?;
                f()
            })
            .context("spawn thread")
    }

    /// Runs `ip -batch -` with `commands` (one `ip` command per line, without the `ip`) from a
    /// thread inside this namespace: the `ip` child inherits the thread's network namespace, and
    /// the thread has checked that it is not the start namespace before `ip` runs.
    pub fn ip_batch(&self, commands: &str) -> Result<()> {
        self.run(|| -> Result<()> {
            let mut child = Command::new("ip")
                .args(["-batch", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("spawn ip")?;
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(commands.as_bytes())
                .context("write to ip -batch")?;
            let out = child.wait_with_output().context("wait for ip")?;
            if !out.status.success() {
                bail!(
                    "ip -batch in {} failed ({}): {}\ncommands:\n{commands}",
                    self.name,
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(())
        })?
    }

    /// Deletes the namespace file (idempotent). Errors are reported; [`Drop`] ignores them.
    pub fn delete(&mut self) -> Result<()> {
        if self.deleted {
            return Ok(());
        }
        self.deleted = true;
        delete_named(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = self.delete() {
            eprintln!("jail-tests: deleting netns {}: {e:#}", self.name);
        }
    }
}

/// Deletes `/run/netns/<name>` with `ip netns delete` (which unmounts the file).
pub fn delete_named(name: &str) -> Result<()> {
    let _guard = IP_NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    run_checked(Command::new("ip").args(["netns", "delete", name]))
}

/// A [`Command`] whose child enters the network namespace at `net` and, if given, the mount
/// namespace at `mnt` before it executes `program`. The working directory is kept by path
/// (resolved again in the new mount namespace).
pub fn command_in(program: impl AsRef<OsStr>, net: &Path, mnt: Option<&Path>) -> Result<Command> {
    let target = ns_inode(net)?;
    ensure!(
        target != start_netns_inode()?,
        "safety: {} is the test process's start network namespace",
        net.display()
    );
    let net_fd: OwnedFd = File::open(net)
        .with_context(|| format!("open {}", net.display()))?
        .into();
    let mnt_fd: Option<OwnedFd> = match mnt {
        Some(p) => Some(
            File::open(p)
                .with_context(|| format!("open {}", p.display()))?
                .into(),
        ),
        None => None,
    };
    let mut cmd = Command::new(program);
    // SAFETY: the closure runs in the forked child, before exec, where only async-signal-safe
    // calls are allowed. It makes raw system calls only (getcwd, setns, chdir) on a stack buffer
    // and on descriptors it owns; it neither allocates nor takes locks. The descriptors were
    // opened with O_CLOEXEC, so the program does not inherit them.
    unsafe {
        cmd.pre_exec(move || {
            let mut cwd = [0u8; 4096];
            if libc::getcwd(cwd.as_mut_ptr().cast(), cwd.len()).is_null() {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(net_fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = &mnt_fd {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // setns(CLONE_NEWNS) moves the working directory to the namespace's root.
                if libc::chdir(cwd.as_ptr().cast()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Runs a command to completion and turns a failure into an error carrying its stderr.
pub(crate) fn run_checked(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
