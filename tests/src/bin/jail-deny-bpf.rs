//! jail-deny-bpf: runs a command under a seccomp filter that makes every bpf() system call fail
//! with EPERM, as a kernel or a security module that refuses BPF would. The fail-closed test runs
//! `claude-jail run` under it: the launcher passes its capability checks, creates its cgroups,
//! then cannot load its programs, and must exit 125 and leave nothing behind.
//!
//! ```text
//! jail-deny-bpf COMMAND [ARGS]...
//! ```
use std::{ffi::CString, os::unix::ffi::OsStrExt};

use libc::sock_filter;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn main() {
    let args: Vec<CString> = std::env::args_os()
        .skip(1)
        .map(|a| CString::new(a.as_bytes()).expect("no NUL in arguments"))
        .collect();
    if args.is_empty() {
        eprintln!("usage: jail-deny-bpf COMMAND [ARGS]...");
        std::process::exit(2);
    }
    let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let ret = libc::BPF_RET | libc::BPF_K;
    let filter = [
        stmt(ld, 4), // arch
        sock_filter {
            code: jeq as u16,
            jt: 0,
            jf: 3,
            k: AUDIT_ARCH_X86_64,
        },
        stmt(ld, 0), // nr
        sock_filter {
            code: jeq as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_bpf as u32,
        },
        stmt(ret, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
    ];
    // As root (CAP_SYS_ADMIN) no no_new_privs is needed, and none is set: the launcher keeps
    // behaving as it would.
    if let Err(e) = claude_jail::sys::install_seccomp(&filter) {
        eprintln!("jail-deny-bpf: install the filter: {e}");
        std::process::exit(1);
    }
    let e = nix::unistd::execvp(&args[0], &args).unwrap_err();
    eprintln!("jail-deny-bpf: exec {:?}: {e}", args[0]);
    std::process::exit(127);
}
