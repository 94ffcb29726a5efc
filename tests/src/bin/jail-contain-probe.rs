//! jail-contain-probe: what a jailed command could try to get something outside the jail to act
//! for it. Run by tests/tests/contain.rs inside `claude-jail run` (and outside, as a control).
//!
//! ```text
//! jail-contain-probe tty          TIOCSTI and TIOCLINUX on the controlling terminal (/dev/tty)
//! jail-contain-probe sockets      socket(AF_VSOCK), socket(AF_PACKET), io_uring_setup
//! jail-contain-probe pid PID      kill(PID, 0), ptrace(PTRACE_SEIZE), pidfd_open + pidfd_getfd,
//!                                 open /proc/PID/root, and the processes /proc shows
//! jail-contain-probe fds          the descriptors this process holds (from /proc/self/fd)
//! ```
//! Prints `NAME=ok` or `NAME=ERRNO` lines (and `fds=0,1,2` / `procs=N`), exits 0; 2 on a usage
//! error. Nothing is sent anywhere: sockets are created and closed, never connected.
use std::{ffi::CString, fs};

use nix::errno::Errno;

fn report(name: &str, r: libc::c_long) {
    if r < 0 {
        println!("{name}={:?}", Errno::last());
    } else {
        println!("{name}=ok");
    }
}

fn tty() {
    let path = CString::new("/dev/tty").unwrap();
    // SAFETY: plain system calls on integers and a stack byte; the descriptor is closed.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        if fd < 0 {
            println!("open-tty={:?}", Errno::last());
            return;
        }
        let c: u8 = b'\n';
        report(
            "tiocsti",
            libc::ioctl(fd, libc::TIOCSTI, &c as *const u8) as libc::c_long,
        );
        // TIOCL_GETSHIFTSTATE (6): harmless, and answered (or refused) on any terminal.
        let mut sub: [u8; 2] = [6, 0];
        report(
            "tioclinux",
            libc::ioctl(fd, libc::TIOCLINUX, sub.as_mut_ptr()) as libc::c_long,
        );
        libc::close(fd);
    }
}

fn sockets() {
    for (name, domain, ty) in [
        ("vsock", libc::AF_VSOCK, libc::SOCK_STREAM),
        ("packet", libc::AF_PACKET, libc::SOCK_RAW),
        ("inet", libc::AF_INET, libc::SOCK_DGRAM),
    ] {
        // SAFETY: creates a socket and closes it; no address is ever given to it.
        let fd = unsafe { libc::socket(domain, ty, 0) };
        report(name, fd as libc::c_long);
        if fd >= 0 {
            // SAFETY: closes the descriptor just created.
            unsafe { libc::close(fd) };
        }
    }
    let mut params = [0u8; 120]; // struct io_uring_params
                                 // SAFETY: io_uring_setup writes into `params`, which is large enough.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    report("io_uring", fd);
    if fd >= 0 {
        // SAFETY: closes the ring just created.
        unsafe { libc::close(fd as i32) };
    }
}

fn pid(pid: i32) {
    // SAFETY: signal 0 only checks the target exists and may be signalled.
    report("kill", unsafe { libc::kill(pid, 0) } as libc::c_long);
    // SAFETY: PTRACE_SEIZE attaches without stopping; detached again at once if it worked.
    let r = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) };
    report("ptrace", r);
    if r == 0 {
        // SAFETY: as above.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
    }
    // SAFETY: pidfd_open on an integer pid; pidfd_getfd asks for the target's stdin.
    let pfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    report("pidfd_open", pfd);
    if pfd >= 0 {
        // SAFETY: as above; descriptors closed after.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pfd, 0, 0) };
        report("pidfd_getfd", fd);
        // SAFETY: closes the two descriptors just opened, which nothing else uses.
        unsafe {
            if fd >= 0 {
                libc::close(fd as i32);
            }
            libc::close(pfd as i32);
        }
    }
    match fs::read_dir(format!("/proc/{pid}/root/")) {
        Ok(_) => println!("proc_root=ok"),
        Err(e) => println!(
            "proc_root={:?}",
            Errno::from_raw(e.raw_os_error().unwrap_or(0))
        ),
    }
    let procs = fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .count()
        })
        .unwrap_or(0);
    println!("procs={procs}");
}

fn fds() {
    // read_dir holds one descriptor of its own: the one whose link is the fd directory itself.
    let mut v: Vec<u32> = fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .flatten()
        .filter(|e| fs::read_link(e.path()).map_or(true, |t| !t.to_string_lossy().contains("/fd")))
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect();
    v.sort();
    let s: Vec<String> = v.iter().map(u32::to_string).collect();
    println!("fds={}", s.join(","));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["tty"] => tty(),
        ["sockets"] => sockets(),
        ["pid", p] => pid(p.parse().unwrap_or_else(|_| usage())),
        ["fds"] => fds(),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: jail-contain-probe tty | sockets | pid PID | fds");
    std::process::exit(2)
}
