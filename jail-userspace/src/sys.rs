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
    let mut stack = vec![0u8; 8 << 20];
    // SAFETY: without CLONE_VM the child runs on its own copy of the address space, the stack
    // above included; the parent's copy of `stack` is freed only after clone returns here.
    unsafe { nix::sched::clone(Box::new(child), &mut stack, flags, Some(libc::SIGCHLD)) }
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
