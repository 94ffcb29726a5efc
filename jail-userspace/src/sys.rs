//! The few system calls that need `unsafe`, each in a thin, commented wrapper. Everything else
//! goes through nix.
use nix::{errno::Errno, sched::CloneFlags, unistd::Pid};

/// Closes every descriptor from `first` up. Used right before exec so that no descriptor of the
/// launcher (a socket of the host namespace, a bpf map) reaches the jailed command.
pub fn close_from(first: u32) -> Result<(), Errno> {
    // SAFETY: close_range only closes descriptors; the caller owns none above `first` that Rust
    // code still uses (it runs right before exec).
    let r = unsafe { libc::close_range(first, u32::MAX, 0) };
    Errno::result(r).map(drop)
}

/// Closes every descriptor above 2 except those in `keep`. The jail's init uses it first thing:
/// the launcher's descriptors (bpf maps, the jail's build lock, host sockets) must not live on in
/// it.
pub fn close_all_but(keep: &[std::os::fd::RawFd]) -> Result<(), Errno> {
    let mut keep: Vec<u32> = keep
        .iter()
        .map(|&fd| u32::try_from(fd).map_err(|_| Errno::EBADF))
        .collect::<Result<_, _>>()?;
    keep.sort_unstable();
    let mut first = 3u32;
    for k in keep.into_iter().filter(|&k| k >= 3) {
        if k > first {
            // SAFETY: close_range only closes descriptors; the kept ones stay open, and the
            // caller (the freshly cloned init) uses no other.
            Errno::result(unsafe { libc::close_range(first, k - 1, 0) })?;
        }
        first = k + 1;
    }
    // SAFETY: as above.
    Errno::result(unsafe { libc::close_range(first, u32::MAX, 0) }).map(drop)
}

/// Starts `child` in a new process with `flags` (new namespaces), fork-like: the child gets a copy
/// of this process's memory, runs `child` on its own stack and exits with its return value.
///
/// The caller must be single-threaded (the launcher clones before it starts any thread), so that
/// the child's copy holds no lock another thread was holding.
pub fn clone_process(flags: CloneFlags, child: impl FnMut() -> isize) -> Result<Pid, Errno> {
    // 8 MiB, as a main thread gets: the child runs ordinary Rust code (mounts, fork, exec).
    let mut stack = GuardedStack::new(8 << 20)?;
    // SAFETY: without CLONE_VM the child runs on its own copy of the address space, the stack
    // (and its guard page) included; the parent's copy is unmapped only after clone returns here.
    unsafe { nix::sched::clone(Box::new(child), stack.usable(), flags, Some(libc::SIGCHLD)) }
}

/// A stack for [`clone_process`]'s child: its own anonymous mapping with one inaccessible page
/// at the low end (stacks grow down), so that an overflow faults (SIGSEGV) instead of writing
/// over whatever memory lies below, as a thread's stack does. Unmapped on drop.
pub struct GuardedStack {
    base: std::ptr::NonNull<libc::c_void>,
    len: usize,
    guard: usize,
}

impl GuardedStack {
    /// `size` usable bytes (rounded up to whole pages) above one guard page.
    pub fn new(size: usize) -> Result<GuardedStack, Errno> {
        use nix::sys::mman::{mprotect, MapFlags, ProtFlags};
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)?
            .and_then(|p| usize::try_from(p).ok())
            .ok_or(Errno::EINVAL)?;
        let usable = size.div_ceil(page) * page;
        let len = usable.checked_add(page).ok_or(Errno::ENOMEM)?;
        let nz = std::num::NonZeroUsize::new(len).ok_or(Errno::EINVAL)?;
        // SAFETY: a new private anonymous mapping at an address the kernel chooses: it aliases
        // no memory this process uses.
        let base = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_STACK,
            )
        }?;
        let stack = GuardedStack {
            base,
            len,
            guard: page,
        };
        // SAFETY: the first page of the mapping made above, which nothing references yet.
        unsafe { mprotect(base, page, ProtFlags::PROT_NONE) }?;
        Ok(stack)
    }

    /// The usable part, above the guard page.
    pub fn usable(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable from `guard` on, lives as
        // long as `self`, and is reached only through this borrow of `self`.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base.as_ptr().cast::<u8>().add(self.guard),
                self.len - self.guard,
            )
        }
    }
}

impl Drop for GuardedStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made by `new`; no borrow of it outlives `self`.
        let _ = unsafe { nix::sys::mman::munmap(self.base, self.len) };
    }
}

/// fork(2). The caller must be single-threaded (the launcher and the jail's init are), so that
/// the child's copy of memory holds no lock another thread was holding.
pub fn fork_single_threaded() -> Result<nix::unistd::ForkResult, Errno> {
    // SAFETY: the caller is single-threaded (above), which is fork's only requirement here.
    unsafe { nix::unistd::fork() }
}

/// Ends the process at once with `code`, without running atexit handlers or flushing stdio
/// buffers (a forked child's copies belong to its parent).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no precondition.
    unsafe { libc::_exit(code) }
}

/// Sets `sig`'s action to the default. Used before exec: an ignored signal would stay ignored.
pub fn default_signal_action(sig: nix::sys::signal::Signal) -> Result<(), Errno> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet};
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_DFL runs no handler code in this process.
    unsafe { nix::sys::signal::sigaction(sig, &dfl) }.map(drop)
}

/// open(2), as an owned descriptor.
pub fn open<P: ?Sized + nix::NixPath>(
    path: &P,
    flags: nix::fcntl::OFlag,
    mode: nix::sys::stat::Mode,
) -> Result<std::os::fd::OwnedFd, Errno> {
    let fd = nix::fcntl::open(path, flags, mode)?;
    // SAFETY: open just returned this descriptor, and nothing else owns it.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// openat(2) relative to `dir`, as an owned descriptor.
pub fn openat<P: ?Sized + nix::NixPath>(
    dir: std::os::fd::BorrowedFd<'_>,
    path: &P,
    flags: nix::fcntl::OFlag,
    mode: nix::sys::stat::Mode,
) -> Result<std::os::fd::OwnedFd, Errno> {
    let fd = nix::fcntl::openat(
        Some(std::os::fd::AsRawFd::as_raw_fd(&dir)),
        path,
        flags,
        mode,
    )?;
    // SAFETY: openat just returned this descriptor, and nothing else owns it.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Makes `cmd`'s child, between fork and exec, join the cgroup whose `cgroup.procs` is `procs`
/// and unblock every signal (the launcher blocks the signals it reads through a signalfd; the
/// program starts with none blocked, as it would from a shell). Used for pasta, which thus never
/// runs outside its cgroup's policy.
pub fn exec_in_cgroup_unblocked(cmd: &mut std::process::Command, procs: std::path::PathBuf) {
    // SAFETY: runs in the forked child before exec: it writes one file and sets the signal mask;
    // the launcher is single-threaded, so no lock is held by a thread the child lacks.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            std::fs::write(&procs, "0")?;
            nix::sys::signal::sigprocmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&nix::sys::signal::SigSet::empty()),
                None,
            )
            .map_err(std::io::Error::from)
        });
    }
}

/// Makes `cmd`'s child, between fork and exec, get SIGKILL when this process dies
/// (PR_SET_PDEATHSIG, which survives exec) and unblock every signal. Used for pasta in the
/// nftables mode, which has no cgroup to be killed through.
pub fn exec_dying_with_parent_unblocked(cmd: &mut std::process::Command) {
    // SAFETY: runs in the forked child before exec: two system calls, no allocation; the
    // launcher is single-threaded, so no lock is held by a thread the child lacks.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)?;
            nix::sys::signal::sigprocmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&nix::sys::signal::SigSet::empty()),
                None,
            )
            .map_err(std::io::Error::from)
        });
    }
}

/// The Landlock ABI version this kernel offers (0: none, or Landlock is not enabled).
pub fn landlock_abi() -> u32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_long = 1;
    // SAFETY: with this flag the call reads no memory (null attribute, size 0) and only returns
    // a number or an error.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(r).unwrap_or(0)
}

/// Puts the calling thread (and what it execs and forks) in a Landlock domain that handles no
/// file or network access and scopes signals (ABI 6): from then on it can neither signal nor
/// ptrace (nor read through /proc what ptrace guards: mem, environ, fd, cwd, root) a process
/// outside the domain. The caller has set no_new_privs.
pub fn landlock_scope_signals() -> Result<(), Errno> {
    // struct landlock_ruleset_attr (ABI 6): handled_access_fs, handled_access_net, scoped.
    #[repr(C)]
    struct Attr {
        fs: u64,
        net: u64,
        scoped: u64,
    }
    const LANDLOCK_SCOPE_SIGNAL: u64 = 1 << 1;
    let attr = Attr {
        fs: 0,
        net: 0,
        scoped: LANDLOCK_SCOPE_SIGNAL,
    };
    // SAFETY: `attr` is a live struct of the size passed; the kernel reads it and returns a new
    // descriptor, owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const Attr,
            std::mem::size_of::<Attr>(),
            0u32,
        )
    };
    let fd = Errno::result(fd)? as std::os::fd::RawFd;
    // SAFETY: the kernel just created this descriptor for us; nothing else owns it.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: plain integer arguments.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_restrict_self,
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            0u32,
        )
    };
    Errno::result(r).map(drop)
}

/// One event as the eBPF programs write it to the ring buffer; `None` for an item too short
/// (never written by our programs).
pub fn read_event(bytes: &[u8]) -> Option<jail_common::Event> {
    if bytes.len() < std::mem::size_of::<jail_common::Event>() {
        return None;
    }
    // SAFETY: Event is #[repr(C)] plain integers (jail-common), every bit pattern is valid, and the
    // length was checked; read_unaligned copes with the ring buffer's 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<jail_common::Event>()) })
}

/// socket(2) with raw integer arguments (a family or type nix has no name for), as an owned
/// descriptor.
pub fn socket_raw(domain: i32, ty: i32, protocol: i32) -> Result<std::os::fd::OwnedFd, Errno> {
    // SAFETY: socket takes plain integers.
    let fd = Errno::result(unsafe { libc::socket(domain, ty, protocol) })?;
    // SAFETY: socket just returned this descriptor, and nothing else owns it.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// ioctl(fd, TIOCSTI, &byte): pushes `byte` into the input queue of the terminal `fd`. The
/// seccomp filter's test shows it refused (`fd` is a number: the test's forked child borrows its
/// standard input without touching std's lazily allocated handle).
#[cfg(test)]
pub fn push_terminal_input(fd: std::os::fd::RawFd, byte: u8) -> Result<(), Errno> {
    // SAFETY: TIOCSTI reads one byte through the pointer, which points at `byte`; on a
    // descriptor that is not a terminal the kernel refuses it (ENOTTY, EBADF).
    let r = unsafe { libc::ioctl(fd, libc::TIOCSTI, &byte as *const u8) };
    Errno::result(r).map(drop)
}

/// TUNSETIFF on `tun` (an open /dev/net/tun): creates the tap device `name` (at most 15 bytes)
/// in the calling thread's network namespace, as pasta does. Used by `claude-jail check`.
pub fn tun_set_iff(tun: std::os::fd::BorrowedFd<'_>, name: &str) -> Result<(), Errno> {
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    if name.len() >= libc::IFNAMSIZ {
        return Err(Errno::EINVAL);
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads (and may write back) a struct ifreq, which `IfReq` lays out (name,
    // then the flags union member, padded to the kernel's 40 bytes); it lives across the call.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&tun),
            libc::TUNSETIFF as _,
            &mut req as *mut IfReq,
        )
    };
    Errno::result(r).map(drop)
}

/// `secs` (Unix time) as local time, `YYYY-MM-DD HH:MM:SS ZONE` (the zone from TZ or
/// /etc/localtime, as `date` shows it).
pub fn local_time(secs: i64) -> String {
    // SAFETY: localtime_r writes only into libc's zone state (glibc reads TZ once) and `tm`, a
    // zeroed local; strftime writes at most `buf.len()` bytes into `buf` and returns how many.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&secs, &mut tm).is_null() {
            return secs.to_string();
        }
        let mut buf = [0u8; 64];
        let n = libc::strftime(
            buf.as_mut_ptr().cast(),
            buf.len(),
            c"%Y-%m-%d %H:%M:%S %Z".as_ptr(),
            &tm,
        );
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

/// How many programs are attached to the cgroup `cgroup` for `attach_type` (the kernel's enum
/// bpf_attach_type), by BPF_PROG_QUERY. Used by `claude-jail verify`.
pub fn prog_query_count(
    cgroup: std::os::fd::BorrowedFd<'_>,
    attach_type: u32,
) -> Result<u32, Errno> {
    // The `query` member of the kernel's union bpf_attr (include/uapi/linux/bpf.h), up to
    // `revision`; the kernel requires every byte it does not know to be zero.
    #[repr(C)]
    #[derive(Default)]
    struct Query {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    const BPF_PROG_QUERY: libc::c_long = 16;
    let mut ids = [0u32; 64];
    let mut q = Query {
        target_fd: std::os::fd::AsRawFd::as_raw_fd(&cgroup) as u32,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    // SAFETY: `q` is a zero-padded bpf_attr prefix that lives across the call, its size is
    // passed, and `prog_ids` points at `ids`, which holds `prog_cnt` entries the kernel may fill.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut q as *mut Query,
            std::mem::size_of::<Query>(),
        )
    };
    Errno::result(r).map(|_| q.prog_cnt)
}

/// Takes ownership of descriptor `fd`, inherited from the caller (`run --env-fd`): refused unless
/// it is above 2 and open. Nothing else in this process owns it.
pub fn take_fd(fd: i32) -> Result<std::os::fd::OwnedFd, Errno> {
    if fd < 3 {
        return Err(Errno::EBADF);
    }
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)?;
    // SAFETY: `fd` is open (F_GETFD succeeded), was inherited from the caller, and no other
    // object of this process refers to it: the launcher opens nothing before it parses its
    // arguments.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Takes ownership of `fd`, a descriptor that just arrived with SCM_RIGHTS (the kernel installed
/// it in this process for the receiver alone).
pub fn own_received_fd(fd: std::os::fd::RawFd) -> std::os::fd::OwnedFd {
    // SAFETY: recvmsg created this descriptor in this process and returned its number only to the
    // caller, who hands it over here once: no other object owns or closes it.
    unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
}

/// Installs a seccomp filter on the calling thread. The caller has set no_new_privs.
pub fn install_seccomp(filter: &[libc::sock_filter]) -> Result<(), Errno> {
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.len()).map_err(|_| Errno::EINVAL)?,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `filter`, which outlives the call; the kernel copies the program
    // and never writes through the pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    Errno::result(r).map(drop)
}

/// Makes the *calling thread* the user `uid`/`gid` with supplementary `groups`, for good: real,
/// effective, saved and filesystem ids, no capabilities. The other threads of the process keep
/// theirs: the kernel keeps credentials per thread, and these are the raw system calls (the
/// libc wrappers would change every thread of the process). Used on a thread that reads the
/// user's files and then ends.
pub fn become_user_this_thread(uid: u32, gid: u32, groups: &[u32]) -> Result<(), Errno> {
    // SAFETY: setgroups reads `groups.len()` gids from the pointer, which points at `groups`;
    // setresgid/setresuid take plain integers. Raw syscalls touch only this thread's credentials.
    unsafe {
        Errno::result(libc::syscall(
            libc::SYS_setgroups,
            groups.len(),
            groups.as_ptr(),
        ))?;
        Errno::result(libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
        Errno::result(libc::syscall(libc::SYS_setresuid, uid, uid, uid))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line of /proc/self/maps: start, end, permissions.
    type Mapping = (usize, usize, String);

    /// The mapping of /proc/self/maps that contains `addr`, and the one right below it.
    fn maps_around(addr: usize) -> (Option<Mapping>, Mapping) {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let mut below = None;
        for line in maps.lines() {
            let mut f = line.split_whitespace();
            let (range, perms) = (f.next().unwrap(), f.next().unwrap().to_string());
            let (s, e) = range.split_once('-').unwrap();
            let (s, e) = (
                usize::from_str_radix(s, 16).unwrap(),
                usize::from_str_radix(e, 16).unwrap(),
            );
            if (s..e).contains(&addr) {
                return (below, (s, e, perms));
            }
            below = Some((s, e, perms));
        }
        panic!("{addr:#x} is in no mapping");
    }

    /// The clone stack ends, at its low end, on a page that cannot be touched: the page right
    /// below the usable part is mapped PROT_NONE (`---p`), so an overflow faults there.
    #[test]
    fn the_clone_stack_has_a_guard_page_below_it() {
        let mut stack = GuardedStack::new(8 << 20).unwrap();
        let usable = stack.usable();
        assert!(usable.len() >= 8 << 20);
        let low = usable.as_ptr() as usize;
        usable[0] = 1;
        *usable.last_mut().unwrap() = 1;
        let (below, at) = maps_around(low);
        assert_eq!(at.0, low, "the usable part starts a mapping: {at:?}");
        assert!(
            at.2.starts_with("rw"),
            "the usable part is read-write: {at:?}"
        );
        let below = below.expect("a mapping below the stack");
        assert_eq!(below.1, low, "the guard page ends where the stack starts");
        assert_eq!(below.2, "---p", "the guard page is inaccessible");
    }
}
