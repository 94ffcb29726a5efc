//! Before anything is built: can this machine run the eBPF jail, and if not, what is the fix.
//!
//! The fix depends on where claude-jail runs. On a host, a missing prerequisite is fixed on the
//! host (sudo, `modprobe tun`, a cgroup2 mount). In a container (a VS Code devcontainer, podman
//! or docker) the same prerequisite comes from the container's run arguments, which the user
//! writes in devcontainer.json: that is the fix to name (docs/devcontainer.md). In a user
//! namespace other than the initial one (rootless podman, `unshare -r`) the eBPF mode can never
//! start: the kernel loads and attaches cgroup programs only for capabilities held in the
//! initial user namespace.
use std::path::Path;

use anyhow::{bail, Result};

/// Where claude-jail runs, as far as the fixes are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Host,
    Container {
        /// "podman", "docker" or "container" (an engine that left another marker).
        engine: &'static str,
    },
}

/// The facts [`Place`] and the user-namespace check are decided from, read once.
#[derive(Debug, Default)]
pub struct Facts {
    /// /run/.containerenv exists (podman, also rootful).
    pub containerenv: bool,
    /// /.dockerenv exists.
    pub dockerenv: bool,
    /// `container=` from PID 1's environment (systemd-nspawn, lxc, podman): None when unknown.
    pub container_var: Option<String>,
    /// /proc/self/uid_map.
    pub uid_map: String,
}

impl Facts {
    pub fn read() -> Facts {
        let container_var = std::fs::read("/proc/1/environ").ok().and_then(|env| {
            env.split(|&b| b == 0)
                .find_map(|kv| kv.strip_prefix(b"container="))
                .map(|v| String::from_utf8_lossy(v).into_owned())
        });
        Facts {
            containerenv: Path::new("/run/.containerenv").exists(),
            dockerenv: Path::new("/.dockerenv").exists(),
            container_var,
            uid_map: std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default(),
        }
    }

    pub fn place(&self) -> Place {
        if self.containerenv || self.container_var.as_deref() == Some("podman") {
            Place::Container { engine: "podman" }
        } else if self.dockerenv || self.container_var.as_deref() == Some("docker") {
            Place::Container { engine: "docker" }
        } else if self.container_var.as_deref().is_some_and(|v| !v.is_empty()) {
            Place::Container {
                engine: "container",
            }
        } else {
            Place::Host
        }
    }

    /// True when this process is in the initial user namespace: its uid map is the identity
    /// over all 2^32 ids. Anything else is a user namespace (rootless podman, `unshare -r`),
    /// where CAP_BPF and CAP_SYS_ADMIN count for that namespace only, never for bpf().
    pub fn initial_user_ns(&self) -> bool {
        let fields: Vec<&str> = self.uid_map.split_whitespace().collect();
        fields == ["0", "0", "4294967295"]
    }
}

/// The run arguments a devcontainer needs for the eBPF mode (docs/devcontainer.md, and the
/// container test uses exactly these).
pub const CONTAINER_CAPS: &str = "--cap-add=SYS_ADMIN --cap-add=NET_ADMIN --cap-add=BPF";

/// What the user reads after "fix:" when `what` is missing, for `place`.
fn fix(place: &Place, what: Missing) -> String {
    // A container's settings live in devcontainer.json: `runArgs` take effect when the
    // container is rebuilt, `postStartCommand` each time it starts.
    let in_container = |setting: &str, key: &str| {
        let Place::Container { engine } = place else {
            unreachable!("only called for a container")
        };
        format!("this is a {engine} container: {setting} (devcontainer.json {key}; docs/devcontainer.md)")
    };
    let run_args = "\"runArgs\", then rebuild the container";
    match (place, what) {
        (Place::Host, Missing::Root) => "start it with sudo".into(),
        (Place::Container { .. }, Missing::Root) => {
            "start it with sudo inside the container; the container's user needs a sudo rule for \
             claude-jail (docs/devcontainer.md)"
                .into()
        }
        (Place::Host, Missing::Caps) => "start it with sudo on the host, not under a capability \
             bounding set that drops them"
            .into(),
        (Place::Container { .. }, Missing::Caps) => in_container(
            &format!(
                "start the container with {CONTAINER_CAPS} (BPF only where the engine knows it: \
                 the kernel accepts CAP_SYS_ADMIN for bpf() too)"
            ),
            run_args,
        ),
        (Place::Host, Missing::Tun) => {
            "`modprobe tun`, or create the device: `mknod /dev/net/tun c 10 200`".into()
        }
        (Place::Container { .. }, Missing::Tun) => {
            in_container("start the container with --device=/dev/net/tun", run_args)
        }
        (Place::Host, Missing::TunRefused) => {
            "make /dev/net/tun usable by root: the device cgroup \
             or a security module refuses it"
                .into()
        }
        (Place::Container { .. }, Missing::TunRefused) => in_container(
            "start the container with --device=/dev/net/tun (a device node alone is refused \
                 by the container's device rules)",
            run_args,
        ),
        (Place::Host, Missing::WritableCgroup) => {
            "remount the cgroup2 hierarchy read-write (`mount -o remount,rw <mount point>`)".into()
        }
        (Place::Container { .. }, Missing::WritableCgroup) => in_container(
            "give it a writable cgroup2 with `sudo mount -o remount,rw /sys/fs/cgroup` each time \
             it starts (CAP_SYS_ADMIN allows it), or start it with --privileged",
            "\"postStartCommand\"",
        ),
    }
}

#[derive(Debug, Clone, Copy)]
enum Missing {
    Root,
    Caps,
    Tun,
    TunRefused,
    WritableCgroup,
}

/// Refuses, naming the fix for this place, unless this process can build an eBPF jail: the
/// first of [`privileges`], [`tun`] and [`cgroup2`] that fails.
pub fn check(facts: &Facts) -> Result<()> {
    privileges(facts)?;
    tun(facts)?;
    cgroup2(facts)?;
    Ok(())
}

/// uid 0 in the initial user namespace, CAP_SYS_ADMIN and CAP_NET_ADMIN (bpf() takes CAP_BPF or
/// CAP_SYS_ADMIN: the kernel's bpf_capable()). Ok: what was found.
pub fn privileges(facts: &Facts) -> Result<String> {
    use caps::{CapSet, Capability};
    let place = facts.place();
    if !facts.initial_user_ns() {
        bail!(
            "claude-jail run cannot build its eBPF jail in a user namespace (uid map {:?}{}): the \
             kernel loads and attaches cgroup eBPF programs only for capabilities held in the \
             initial user namespace, which no process here can have, whatever --cap-add says \
             (fix: run it on the host with sudo, or in a rootful container started with the \
             settings of docs/devcontainer.md; or let the nftables backend, which needs no eBPF, \
             enforce the jail: `egress-backend = auto` or `nftables` in the conf)",
            facts
                .uid_map
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            match place {
                Place::Container { engine } => format!(", a rootless {engine} container"),
                Place::Host => String::new(),
            }
        );
    }
    // Root, and a root that holds what the jail needs: the launcher also writes root-owned
    // state (/run/claude-jail, bpffs), runs pasta as root and sets the command's ids, so the
    // capabilities alone, without uid 0, would fail later and less clearly.
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "claude-jail run needs root to build the jail (fix: {})",
            fix(&place, Missing::Root)
        );
    }
    let have = |c| caps::has_cap(None, CapSet::Effective, c).unwrap_or(false);
    let mut missing: Vec<&str> = [
        (Capability::CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (Capability::CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    ]
    .into_iter()
    .filter(|(c, _)| !have(*c))
    .map(|(_, n)| n)
    .collect();
    if !have(Capability::CAP_BPF) && !have(Capability::CAP_SYS_ADMIN) {
        missing.push("CAP_BPF (or CAP_SYS_ADMIN, which the kernel accepts for bpf())");
    }
    if !missing.is_empty() {
        bail!(
            "claude-jail run needs root with CAP_SYS_ADMIN and CAP_NET_ADMIN (and CAP_BPF, or \
             CAP_SYS_ADMIN in its place) to build the jail; this root lacks {} (fix: {})",
            missing.join(", "),
            fix(&place, Missing::Caps)
        );
    }
    Ok(format!(
        "root in the initial user namespace with CAP_SYS_ADMIN, CAP_NET_ADMIN{} ({})",
        if have(Capability::CAP_BPF) {
            ", CAP_BPF"
        } else {
            " (standing in for CAP_BPF)"
        },
        match place {
            Place::Host => "host".to_string(),
            Place::Container { engine } => format!("{engine} container"),
        }
    ))
}

/// Refuses, naming the fix, unless this process can build an nftables jail: /dev/net/tun opens,
/// and a user namespace can be made (the jail's init gets one of its own).
pub fn check_nftables(facts: &Facts) -> Result<()> {
    tun(facts)?;
    user_namespaces(facts)?;
    Ok(())
}

/// A new user namespace can be made: tried, in a child that exits at once.
pub fn user_namespaces(facts: &Facts) -> Result<String> {
    let tried = crate::sys::clone_process(nix::sched::CloneFlags::CLONE_NEWUSER, || 0)
        .and_then(|pid| nix::sys::wait::waitpid(pid, None));
    match tried {
        Ok(_) => Ok("user namespaces can be made".into()),
        Err(e) => bail!(
            "a user namespace cannot be made here ({e}): the nftables backend gives the jail one \
             of its own (fix: {})",
            match facts.place() {
                Place::Container { engine: "docker" } => {
                    "docker's default seccomp profile refuses it: start the container with \
                     --security-opt seccomp=unconfined, or a profile that allows unshare and clone \
                     with CLONE_NEWUSER"
                        .to_string()
                }
                Place::Container { engine } => format!(
                    "the {engine} container refuses it: allow user namespaces in its seccomp \
                     profile, and keep user.max_user_namespaces above 0"
                ),
                Place::Host => "set the user.max_user_namespaces sysctl above 0 (and, on Ubuntu, \
                               kernel.apparmor_restrict_unprivileged_userns=0 or an AppArmor \
                               profile for claude-jail)"
                    .to_string(),
            }
        ),
    }
}

/// /dev/net/tun exists and opens read-write (pasta makes its tap device there).
pub fn tun(facts: &Facts) -> Result<String> {
    let place = facts.place();
    let tun = Path::new("/dev/net/tun");
    if !tun.exists() {
        bail!(
            "/dev/net/tun is missing: pasta needs it to give the jail its network (fix: {})",
            fix(&place, Missing::Tun)
        );
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(tun) {
        bail!(
            "/dev/net/tun exists but cannot be opened ({e}): pasta needs it to give the jail its \
             network (fix: {})",
            fix(&place, Missing::TunRefused)
        );
    }
    Ok("/dev/net/tun opens".into())
}

/// A cgroup2 hierarchy, mounted read-write (found in /proc/self/mountinfo).
pub fn cgroup2(facts: &Facts) -> Result<String> {
    let place = facts.place();
    let cg = crate::cgroup::cgroup2_mount()?;
    let ro = nix::sys::statvfs::statvfs(&cg)
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
        .unwrap_or(false);
    if ro {
        bail!(
            "the cgroup2 hierarchy at {} is mounted read-only: the jail needs a cgroup of its own \
             to attach its eBPF programs to (fix: {})",
            cg.display(),
            fix(&place, Missing::WritableCgroup)
        );
    }
    Ok(format!("cgroup2 at {}, writable", cg.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(containerenv: bool, dockerenv: bool, var: Option<&str>, uid_map: &str) -> Facts {
        Facts {
            containerenv,
            dockerenv,
            container_var: var.map(String::from),
            uid_map: uid_map.into(),
        }
    }

    const INITIAL: &str = "         0          0 4294967295\n";

    #[test]
    fn a_container_is_recognised_by_its_engines_markers() {
        assert_eq!(facts(false, false, None, INITIAL).place(), Place::Host);
        assert_eq!(
            facts(true, false, None, INITIAL).place(),
            Place::Container { engine: "podman" }
        );
        assert_eq!(
            facts(false, true, None, INITIAL).place(),
            Place::Container { engine: "docker" }
        );
        assert_eq!(
            facts(false, false, Some("lxc"), INITIAL).place(),
            Place::Container {
                engine: "container"
            }
        );
    }

    #[test]
    fn only_the_identity_map_over_every_id_is_the_initial_user_namespace() {
        assert!(facts(false, false, None, INITIAL).initial_user_ns());
        // rootless podman: the user's uid as 0, then the subordinate range.
        let rootless = "0 1000 1\n1 100000 65536\n";
        assert!(!facts(true, false, None, rootless).initial_user_ns());
        // `unshare -r`, and a full-size map that is not the identity.
        assert!(!facts(false, false, None, "0 0 1\n").initial_user_ns());
        assert!(!facts(false, false, None, "0 1 4294967295\n").initial_user_ns());
    }

    #[test]
    fn each_fix_in_a_container_names_the_container_setting() {
        let c = Place::Container { engine: "podman" };
        assert!(fix(&c, Missing::Tun).contains("--device=/dev/net/tun"));
        assert!(fix(&c, Missing::TunRefused).contains("--device=/dev/net/tun"));
        assert!(fix(&c, Missing::Caps).contains(CONTAINER_CAPS));
        assert!(fix(&c, Missing::WritableCgroup).contains("remount,rw"));
        assert!(fix(&c, Missing::Root).contains("sudo"));
        for m in [
            Missing::Root,
            Missing::Caps,
            Missing::Tun,
            Missing::TunRefused,
            Missing::WritableCgroup,
        ] {
            assert!(
                !fix(&Place::Host, m).contains("runArgs"),
                "a host's fix is not a container setting: {m:?}"
            );
            assert!(
                fix(&c, m).contains("docs/devcontainer.md"),
                "a container's fix points at the devcontainer doc: {m:?}"
            );
        }
    }
}
