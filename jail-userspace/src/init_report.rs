//! What the jail's init tells the launcher when a set-up step inside the jail fails, and the fix
//! for each step and errno.
//!
//! The init (and the command's process before execve) cannot print to the session: the launcher
//! owns the refusal, and a refusal must say what to change. So a failure crosses the report pipe
//! typed: the step that failed, the errno the kernel gave, and the message. The launcher maps
//! (step, errno) to its own fix, as bubblewrap does for its set-up steps, instead of one generic
//! fix for every step.
use std::fmt;

use nix::errno::Errno;

/// A set-up step inside the jail's namespaces, in the order the init runs them. Attached to an
/// error as its context (`.context(Step::MountProc)`), it is found again by [`Failure::of`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Descriptors, `/` made private, the parent-death signal: before the launcher's go.
    Start,
    CgroupNamespace,
    MountProc,
    ResolvConf,
    /// Copies of file-capability programs bound over the originals.
    Uncap,
    Mask,
    CoverCgroup,
    PingSockets,
    /// Signal handling of the init, and the fork of the command.
    Supervise,
    DropPrivileges,
    Seccomp,
    Chdir,
    CloseDescriptors,
}

impl Step {
    const ALL: [Step; 13] = [
        Step::Start,
        Step::CgroupNamespace,
        Step::MountProc,
        Step::ResolvConf,
        Step::Uncap,
        Step::Mask,
        Step::CoverCgroup,
        Step::PingSockets,
        Step::Supervise,
        Step::DropPrivileges,
        Step::Seccomp,
        Step::Chdir,
        Step::CloseDescriptors,
    ];

    /// The name that crosses the pipe.
    fn name(self) -> &'static str {
        match self {
            Step::Start => "start",
            Step::CgroupNamespace => "cgroup-namespace",
            Step::MountProc => "mount-proc",
            Step::ResolvConf => "resolv-conf",
            Step::Uncap => "uncap",
            Step::Mask => "mask",
            Step::CoverCgroup => "cover-cgroup",
            Step::PingSockets => "ping-sockets",
            Step::Supervise => "supervise",
            Step::DropPrivileges => "drop-privileges",
            Step::Seccomp => "seccomp",
            Step::Chdir => "chdir",
            Step::CloseDescriptors => "close-descriptors",
        }
    }

    fn from_name(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|st| st.name() == s)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Start => "start the jail's init",
            Step::CgroupNamespace => "unshare the cgroup namespace",
            Step::MountProc => "mount /proc for the jail's PID namespace",
            Step::ResolvConf => "bind the jail's resolv.conf over /etc/resolv.conf",
            Step::Uncap => "bind copies without file capabilities over their programs",
            Step::Mask => "mask the broker sockets",
            Step::CoverCgroup => "hide the host's cgroups",
            Step::PingSockets => "allow ping sockets in the jail",
            Step::Supervise => "start the command",
            Step::DropPrivileges => "drop to the user, without capabilities",
            Step::Seccomp => "install the seccomp filter",
            Step::Chdir => "enter a working directory",
            Step::CloseDescriptors => "close the launcher's descriptors",
        })
    }
}

/// One failure, as it crosses the pipe: `step<TAB>errno<TAB>message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub step: Option<Step>,
    /// The kernel's errno, 0 when the failure was not a system call's.
    pub errno: i32,
    pub message: String,
}

impl Failure {
    /// The step (the outermost [`Step`] context: anyhow finds a context by its type at any depth)
    /// and errno (the first system call error in the chain) of `e`.
    pub fn of(e: &anyhow::Error) -> Failure {
        let step = e.downcast_ref::<Step>();
        let errno = e
            .chain()
            .find_map(|c| {
                c.downcast_ref::<Errno>()
                    .map(|n| *n as i32)
                    .or_else(|| c.downcast_ref::<std::io::Error>()?.raw_os_error())
            })
            .unwrap_or(0);
        Failure {
            step: step.copied(),
            errno,
            message: format!("{e:#}"),
        }
    }

    pub fn encode(&self) -> String {
        let step = self.step.map_or("", Step::name);
        format!("{step}\t{}\t{}", self.errno, self.message)
    }

    /// What the launcher read; a report it cannot parse is kept whole as the message.
    pub fn decode(s: &str) -> Failure {
        let mut parts = s.trim_end().splitn(3, '\t');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(step), Some(errno), Some(message)) => Failure {
                step: Step::from_name(step),
                errno: errno.parse().unwrap_or(0),
                message: message.to_string(),
            },
            _ => Failure {
                step: None,
                errno: 0,
                message: s.trim_end().to_string(),
            },
        }
    }

    /// The fix for this step and errno.
    pub fn fix(&self) -> &'static str {
        let e = Errno::from_raw(self.errno);
        let denied = matches!(e, Errno::EPERM | Errno::EACCES);
        match self.step {
            Some(Step::CgroupNamespace) if e == Errno::ENOSPC => {
                "the user.max_cgroup_namespaces sysctl is exhausted or 0: raise it"
            }
            Some(Step::CgroupNamespace) if e == Errno::EINVAL => {
                "a kernel with cgroup namespaces (CONFIG_CGROUPS, Linux >= 4.6)"
            }
            Some(Step::MountProc) if denied => {
                "the kernel refuses a fresh /proc where the /proc it would replace has parts \
                 masked or read-only, as containers set up: run the container as \
                 docs/devcontainer.md says (podman: `--security-opt unmask=/proc/*`; docker: \
                 `--security-opt systempaths=unconfined`), or a kernel with Landlock ABI 6 \
                 (Linux 6.12), with which the nftables mode keeps the container's /proc instead; \
                 on a host, allow mount in the security module (AppArmor, SELinux) that refuses \
                 it"
            }
            Some(Step::ResolvConf | Step::Uncap | Step::Mask) if denied => {
                "bind mounts in a private mount namespace are refused: a security module \
                 (AppArmor, SELinux) or a container without CAP_SYS_ADMIN; see \
                 docs/devcontainer.md"
            }
            Some(Step::ResolvConf) => {
                "/etc/resolv.conf must be a file (a symlink to one is fine) that root can bind \
                 over"
            }
            Some(Step::Mask) if matches!(e, Errno::ENOENT | Errno::ESTALE | Errno::ENOTDIR) => {
                "the socket changed while the jail was being built: start it again"
            }
            Some(Step::Mask) => {
                "remove the socket, or name it with `allow-socket` in the conf to leave it \
                 reachable from the jail"
            }
            Some(Step::CoverCgroup) if denied => {
                "cgroup2 cannot be mounted in the jail: a container needs CAP_SYS_ADMIN and a \
                 writable cgroup2 (docs/devcontainer.md)"
            }
            Some(Step::PingSockets) => {
                "/proc/sys/net must be writable in the jail's network namespace: a container \
                 with a read-only /proc/sys needs the settings of docs/devcontainer.md"
            }
            Some(Step::DropPrivileges) if e == Errno::EINVAL => {
                "the user's uid or gids are not mapped in this user namespace: map them (a \
                 container's --userns or subuid ranges)"
            }
            Some(Step::DropPrivileges) if denied => {
                "setgroups, setresuid or a capability drop was refused: a seccomp profile or \
                 security module of the container forbids it; run with the settings of \
                 docs/devcontainer.md"
            }
            Some(Step::Seccomp) if matches!(e, Errno::EINVAL | Errno::ENOSYS) => {
                "a kernel with seccomp filters (CONFIG_SECCOMP_FILTER)"
            }
            Some(Step::CloseDescriptors) if matches!(e, Errno::ENOSYS | Errno::EINVAL) => {
                "Linux >= 5.9 (close_range)"
            }
            Some(Step::Chdir) => {
                "the user must be able to enter the working directory, their home or /"
            }
            Some(Step::Start | Step::Supervise) if matches!(e, Errno::EMFILE | Errno::ENFILE) => {
                "raise the open-file limit (ulimit -n)"
            }
            _ => {
                "the step named here failed with the kernel's error shown; if the host or \
                 container looks right, report it with this output"
            }
        }
    }
}

impl fmt::Display for Failure {
    /// The message, and the step's fix unless the message names its own already (a more
    /// specific one, such as a FUSE mount's `allow_root`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.contains("(fix: ") {
            f.write_str(&self.message)
        } else {
            write!(f, "{} (fix: {})", self.message, self.fix())
        }
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    fn failed(step: Step, errno: Errno) -> Failure {
        let e = Err::<(), _>(errno)
            .context("mount proc on /proc")
            .context(step)
            .context("jail init")
            .unwrap_err();
        Failure::decode(&Failure::of(&e).encode())
    }

    #[test]
    fn a_failure_crosses_the_pipe_with_its_step_and_errno() {
        let f = failed(Step::MountProc, Errno::EPERM);
        assert_eq!(f.step, Some(Step::MountProc));
        assert_eq!(f.errno, Errno::EPERM as i32);
        assert_eq!(
            f.message,
            "jail init: mount /proc for the jail's PID namespace: mount proc on /proc: EPERM: \
             Operation not permitted"
        );
        let io = Err::<(), _>(std::io::Error::from_raw_os_error(libc::ENOSPC))
            .context(Step::CgroupNamespace)
            .unwrap_err();
        let f = Failure::decode(&Failure::of(&io).encode());
        assert_eq!(
            (f.step, f.errno),
            (Some(Step::CgroupNamespace), libc::ENOSPC)
        );
        for step in Step::ALL {
            assert_eq!(Step::from_name(step.name()), Some(step));
        }
    }

    #[test]
    fn a_message_that_names_its_own_fix_gets_no_second_one() {
        let own = Failure::decode("mask\t13\tcover /x: EACCES (fix: mount it with allow_root)");
        assert_eq!(own.to_string().matches("(fix: ").count(), 1, "{own}");
        let generic = Failure::decode("mask\t13\tcover /x: EACCES");
        assert!(generic
            .to_string()
            .ends_with(&format!("(fix: {})", generic.fix())));
    }

    #[test]
    fn each_step_and_errno_has_its_own_fix() {
        let generic = Failure::decode("not a typed report").fix();
        let cases = [
            (
                Step::CgroupNamespace,
                Errno::ENOSPC,
                "max_cgroup_namespaces",
            ),
            (Step::MountProc, Errno::EPERM, "unmask"),
            (Step::Mask, Errno::EPERM, "bind mounts"),
            (Step::Mask, Errno::ENOENT, "start it again"),
            (Step::ResolvConf, Errno::ENOTDIR, "must be a file"),
            (Step::CoverCgroup, Errno::EPERM, "CAP_SYS_ADMIN"),
            (Step::PingSockets, Errno::EROFS, "/proc/sys/net"),
            (Step::DropPrivileges, Errno::EINVAL, "not mapped"),
            (Step::DropPrivileges, Errno::EPERM, "seccomp profile"),
            (Step::Seccomp, Errno::EINVAL, "CONFIG_SECCOMP_FILTER"),
            (Step::CloseDescriptors, Errno::ENOSYS, "5.9"),
        ];
        let mut seen = std::collections::HashSet::new();
        for (step, errno, says) in cases {
            let fix = failed(step, errno).fix();
            assert!(fix.contains(says), "{step:?} {errno}: {fix}");
            assert_ne!(fix, generic, "{step:?} {errno}");
            seen.insert(fix);
        }
        assert_eq!(seen.len(), cases.len(), "one fix per case");
    }
}
