//! The jailed command's seccomp filter: the few system calls that reach past the jail's
//! namespaces.
//!
//! - `ioctl(fd, TIOCSTI | TIOCLINUX, ...)`: push characters into a terminal's input queue (or
//!   paste a console selection), i.e. type commands into the user's shell outside the jail;
//! - `socket(AF_VSOCK, ...)`: vsock ignores network namespaces (a VM guest talks to its host);
//! - `socket(AF_PACKET, ...)`, and `socket(AF_INET, SOCK_PACKET, ...)` which the kernel turns into
//!   one: a second guard behind "no CAP_NET_RAW" (a nested user namespace has it over its own
//!   network namespace);
//! - `io_uring_setup`: IORING_OP_SOCKET creates sockets without the socket system call, so this
//!   filter would not see them.
//!
//! Each is refused with EPERM. Nothing else is: `unshare(CLONE_NEWUSER | CLONE_NEWNET)` and
//! `clone` stay allowed, so a sandbox inside the jail (Claude Code's bubblewrap with user and
//! network namespaces) keeps working, and inherits this filter.
//!
//! Only x86_64 is allowed: a 32-bit system call (int 0x80 with AUDIT_ARCH_I386) has other numbers
//! and multiplexes sockets through socketcall, so it kills the process; an x32 call (the
//! 0x40000000 bit) gets ENOSYS, as on a kernel without x32.
//!
//! The arguments compared are C `int`s (socket's domain) and `unsigned int`s (ioctl's request):
//! the kernel ignores their upper 32 bits, so the filter compares only the lower 32 bits
//! (little-endian: the first word of each 64-bit argument) and cannot be fooled by garbage above.
use libc::sock_filter;

// The filter below describes x86_64 only (its system call numbers, its seccomp_data layout read
// as little-endian words, AUDIT_ARCH_X86_64 as the one allowed architecture). Elsewhere it would
// kill every system call, or compare the wrong numbers: describe the architecture first.
#[cfg(not(target_arch = "x86_64"))]
compile_error!(
    "the seccomp filter (jail-userspace/src/seccomp.rs) describes x86_64 only: add this \
     architecture's AUDIT_ARCH and system call numbers before building for it"
);

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg_low(n: u32) -> u32 {
    16 + 8 * n
}

// Classic BPF opcodes.
const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
const AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;

const fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;

// Instruction indices of the jump targets.
const SOCKET: usize = 9;
const INET_TYPE: usize = 14;
const IOCTL: usize = 18;
const DENY: usize = 22;
const NOSYS: usize = 23;

/// The offset of a jump at `from` to `target` (BPF counts from the next instruction).
const fn to(from: usize, target: usize) -> u8 {
    (target - from - 1) as u8
}

/// socket(2)'s type argument: the type is in the low bits, SOCK_NONBLOCK and SOCK_CLOEXEC above.
const SOCK_TYPE_MASK: u32 = 0xf;
/// The obsolete SOCK_PACKET type: the kernel turns socket(AF_INET, SOCK_PACKET, ...) into a packet
/// socket (net/socket.c, __sock_create), so it is refused like AF_PACKET.
const SOCK_PACKET: u32 = 10;

/// The filter program.
pub const FILTER: [sock_filter; 24] = [
    /* 0 */ stmt(LD_W_ABS, OFF_ARCH),
    /* 1 */ jump(JEQ_K, AUDIT_ARCH_X86_64, to(1, 3), 0),
    /* 2 */ stmt(RET_K, KILL),
    /* 3 */ stmt(LD_W_ABS, OFF_NR),
    /* 4 */ jump(JGE_K, X32_SYSCALL_BIT, to(4, NOSYS), 0),
    /* 5 */ jump(JEQ_K, libc::SYS_socket as u32, to(5, SOCKET), 0),
    /* 6 */ jump(JEQ_K, libc::SYS_ioctl as u32, to(6, IOCTL), 0),
    /* 7 */ jump(JEQ_K, libc::SYS_io_uring_setup as u32, to(7, DENY), 0),
    /* 8 */ stmt(RET_K, ALLOW),
    /* 9 SOCKET: the domain */ stmt(LD_W_ABS, off_arg_low(0)),
    /* 10 */ jump(JEQ_K, libc::AF_VSOCK as u32, to(10, DENY), 0),
    /* 11 */ jump(JEQ_K, libc::AF_PACKET as u32, to(11, DENY), 0),
    /* 12 */ jump(JEQ_K, libc::AF_INET as u32, to(12, INET_TYPE), 0),
    /* 13 */ stmt(RET_K, ALLOW),
    /* 14 INET_TYPE: the type */ stmt(LD_W_ABS, off_arg_low(1)),
    /* 15 */ stmt(AND_K, SOCK_TYPE_MASK),
    /* 16 */ jump(JEQ_K, SOCK_PACKET, to(16, DENY), 0),
    /* 17 */ stmt(RET_K, ALLOW),
    /* 18 IOCTL: the request */ stmt(LD_W_ABS, off_arg_low(1)),
    /* 19 */ jump(JEQ_K, libc::TIOCSTI as u32, to(19, DENY), 0),
    /* 20 */ jump(JEQ_K, libc::TIOCLINUX as u32, to(20, DENY), 0),
    /* 21 */ stmt(RET_K, ALLOW),
    /* 22 DENY */ stmt(RET_K, EPERM),
    /* 23 NOSYS */ stmt(RET_K, ENOSYS),
];

/// Installs [`FILTER`] on the calling thread (inherited by its children, kept across execve).
/// no_new_privs must be set first (the kernel refuses a filter from an unprivileged process
/// otherwise, and the jail sets it anyway).
pub fn install() -> Result<(), nix::errno::Errno> {
    crate::sys::install_seccomp(&FILTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic BPF interpreter for the instructions FILTER uses, over a seccomp_data.
    fn run(arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let ins = FILTER[pc];
            pc += 1;
            match ins.code {
                LD_W_ABS => {
                    let k = ins.k as usize;
                    acc = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
                }
                JEQ_K => pc += if acc == ins.k { ins.jt } else { ins.jf } as usize,
                JGE_K => pc += if acc >= ins.k { ins.jt } else { ins.jf } as usize,
                AND_K => acc &= ins.k,
                RET_K => return ins.k,
                c => panic!("unexpected opcode {c:#x} at {}", pc - 1),
            }
        }
    }

    fn x86(nr: i64, args: [u64; 6]) -> u32 {
        run(AUDIT_ARCH_X86_64, nr as u32, args)
    }

    const HIGH: u64 = 0xdead_beef_0000_0000;

    #[test]
    fn refuses_tiocsti_and_tioclinux_even_with_garbage_in_the_upper_bits() {
        for req in [libc::TIOCSTI, libc::TIOCLINUX] {
            assert_eq!(x86(libc::SYS_ioctl, [0, req, 0, 0, 0, 0]), EPERM);
            assert_eq!(
                x86(libc::SYS_ioctl, [0, HIGH | req, 0, 0, 0, 0]),
                EPERM,
                "the kernel truncates the request to 32 bits, so must the filter"
            );
        }
        assert_eq!(
            x86(libc::SYS_ioctl, [0, libc::TIOCGWINSZ, 0, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(x86(libc::SYS_ioctl, [0, libc::FIONREAD, 0, 0, 0, 0]), ALLOW);
    }

    #[test]
    fn refuses_vsock_and_packet_sockets_and_io_uring_only() {
        for af in [libc::AF_VSOCK, libc::AF_PACKET] {
            let af = af as u64;
            assert_eq!(x86(libc::SYS_socket, [af, 1, 0, 0, 0, 0]), EPERM);
            assert_eq!(x86(libc::SYS_socket, [HIGH | af, 1, 0, 0, 0, 0]), EPERM);
        }
        for af in [
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_UNIX,
            libc::AF_NETLINK,
        ] {
            assert_eq!(x86(libc::SYS_socket, [af as u64, 1, 0, 0, 0, 0]), ALLOW);
        }
        // The obsolete AF_INET + SOCK_PACKET is a packet socket too; other AF_INET types are not.
        let inet = libc::AF_INET as u64;
        let packet = SOCK_PACKET as u64;
        let flags = (libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64;
        assert_eq!(x86(libc::SYS_socket, [inet, packet, 0, 0, 0, 0]), EPERM);
        assert_eq!(
            x86(libc::SYS_socket, [inet, HIGH | flags | packet, 0, 0, 0, 0]),
            EPERM
        );
        for ty in [libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_RAW] {
            let ty = ty as u64 | flags;
            assert_eq!(x86(libc::SYS_socket, [inet, ty, 0, 0, 0, 0]), ALLOW);
            let inet6 = libc::AF_INET6 as u64;
            assert_eq!(x86(libc::SYS_socket, [inet6, ty, 0, 0, 0, 0]), ALLOW);
        }
        assert_eq!(x86(libc::SYS_io_uring_setup, [8, 0, 0, 0, 0, 0]), EPERM);
        let newuser_net = (libc::CLONE_NEWUSER | libc::CLONE_NEWNET) as u64;
        for nr in [libc::SYS_unshare, libc::SYS_clone, libc::SYS_setns] {
            assert_eq!(
                x86(nr, [newuser_net, 0, 0, 0, 0, 0]),
                ALLOW,
                "nested sandboxes"
            );
        }
        for nr in [
            libc::SYS_read,
            libc::SYS_execve,
            libc::SYS_close_range,
            libc::SYS_connect,
        ] {
            assert_eq!(x86(nr, [3, 0, 0, 0, 0, 0]), ALLOW);
        }
    }

    #[test]
    fn other_architectures_are_killed_and_x32_gets_enosys() {
        const AUDIT_ARCH_I386: u32 = 0x4000_0003;
        assert_eq!(run(AUDIT_ARCH_I386, 54, [0; 6]), KILL, "i386 ioctl");
        assert_eq!(run(AUDIT_ARCH_I386, 102, [0; 6]), KILL, "i386 socketcall");
        assert_eq!(
            x86(
                X32_SYSCALL_BIT as i64 | libc::SYS_socket,
                [libc::AF_VSOCK as u64, 1, 0, 0, 0, 0]
            ),
            ENOSYS
        );
    }

    /// The real thing, in a forked child (no root needed: no_new_privs first).
    #[test]
    fn installed_filter_refuses_in_the_kernel() {
        use crate::sys;
        // The child only makes system calls and exits; it takes no lock a thread of the test
        // harness might hold (no allocation, no printing), so the harness's threads do not
        // matter.
        match sys::fork_single_threaded().unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = (|| {
                    if nix::sys::prctl::set_no_new_privs().is_err() || install().is_err() {
                        return 10;
                    }
                    let refused = |r: Result<std::os::fd::OwnedFd, nix::errno::Errno>| {
                        matches!(r, Err(nix::errno::Errno::EPERM))
                    };
                    if !refused(sys::socket_raw(libc::AF_VSOCK, libc::SOCK_STREAM, 0)) {
                        return 11;
                    }
                    if !refused(sys::socket_raw(libc::AF_PACKET, libc::SOCK_RAW, 0)) {
                        return 12;
                    }
                    if !refused(sys::socket_raw(libc::AF_INET, SOCK_PACKET as i32, 0x0300)) {
                        return 15;
                    }
                    if sys::push_terminal_input(0, b'x') != Err(nix::errno::Errno::EPERM) {
                        return 13;
                    }
                    // Dropped (closed) at once.
                    if sys::socket_raw(libc::AF_INET, libc::SOCK_DGRAM, 0).is_err() {
                        return 14;
                    }
                    0
                })();
                // Leaves the forked child without running the harness's atexit code.
                sys::exit_now(code)
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
