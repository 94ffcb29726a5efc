//! What the jail's mount namespace hides: the sockets of services that would act outside the
//! jail for the jailed command, and the host's cgroup mounts.
//!
//! A jailed process with no network still reaches anything that listens on a unix socket path it
//! can open: a tmux or screen server runs `new-window` commands in *its* namespaces, the systemd
//! user manager and the D-Bus session bus start units, docker and podman start containers, an X11
//! or Wayland server takes keystrokes for other windows, an ssh ControlMaster opens channels
//! from the host. The launcher lists those paths here ([`plan`]), as the target user sees them;
//! the jail's init covers each one that exists: `/dev/null` bound over a socket (connect gets
//! ECONNREFUSED), an empty read-only tmpfs over a socket directory. Paths named by
//! `allow-socket`, and the ssh agent socket (SSH_AUTH_SOCK: git push needs it, and an agent only
//! signs; kept only when it is the user's own socket outside every mask), stay reachable.
//! Abstract unix sockets need no mask: they belong to the network namespace, and the jail has
//! its own.
//!
//! The list is made with the user's credentials ([`plan_as_user`]), never root's, and every
//! directory above a masked path that the user could rename is pinned (a mount point in the
//! jail, [`pins`]): what was masked at one launch keeps its name for the next.
//!
//! What a path list cannot find (a socket elsewhere, or created after the launch) is in
//! docs/threat-model.md.
use std::{
    ffi::OsString,
    fs,
    os::unix::fs::FileTypeExt,
    path::{Component, Path, PathBuf},
};

use crate::{conf::Conf, user::Target};

/// Variables of the user's environment that point at what the jail masks or replaces: a
/// terminal multiplexer's server, the D-Bus buses, docker and podman, the display servers, the
/// gpg agent. The command never gets them (they would name a socket it cannot reach, or one
/// the mask list missed); everything else of the user's environment passes
/// ([`crate::user::environment`]).
pub const MASKED_ENV: [&str; 15] = [
    "TMUX",
    "TMUX_PANE",
    "STY",
    "DBUS_SESSION_BUS_ADDRESS",
    "DBUS_SYSTEM_BUS_ADDRESS",
    "DOCKER_HOST",
    "CONTAINER_HOST",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "XAUTHORITY",
    "SWAYSOCK",
    "I3SOCK",
    "KITTY_LISTEN_ON",
    "GPG_AGENT_INFO",
    "NOTIFY_SOCKET",
];

/// How a path is covered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A socket file: `/dev/null` is bound over it.
    Socket,
    /// A directory of sockets: an empty read-only tmpfs is mounted over it.
    Dir,
    /// A directory above a masked path that the user could rename: bound onto itself, so that
    /// it is a mount point in the jail, which the kernel refuses to rename or remove (EBUSY).
    Pin,
}

/// One path to cover in the jail's mount namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    pub path: PathBuf,
    pub kind: Kind,
    /// Which service it is (for messages).
    pub what: &'static str,
    /// Allowed sockets below a masked directory, relative to it: bound back into the empty
    /// tmpfs at the same place.
    pub keep: Vec<PathBuf>,
}

impl Mask {
    /// An empty read-only tmpfs over `dir`: for claude-jail's own state of a user, which the
    /// command (the same user, in the nftables mode) must not rewrite.
    pub fn private_dir(dir: &Path) -> Mask {
        Mask {
            path: dir.to_path_buf(),
            kind: Kind::Dir,
            what: "claude-jail's own state",
            keep: Vec::new(),
        }
    }
}

/// The service paths of `uid`, by name, before looking at the filesystem. `*` as the last
/// component of a socket path is a glob over that directory.
pub fn candidates(uid: u32) -> Vec<(PathBuf, Kind, &'static str)> {
    let run = format!("/run/user/{uid}");
    let mut v = vec![
        (format!("/tmp/tmux-{uid}"), Kind::Dir, "tmux server"),
        ("/run/screen".into(), Kind::Dir, "screen sessions"),
        ("/tmp/screens".into(), Kind::Dir, "screen sessions"),
        (format!("{run}/bus"), Kind::Socket, "D-Bus session bus"),
        (format!("{run}/systemd"), Kind::Dir, "systemd user manager"),
        ("/run/docker.sock".into(), Kind::Socket, "docker"),
        ("/var/run/docker.sock".into(), Kind::Socket, "docker"),
        (
            format!("{run}/docker.sock"),
            Kind::Socket,
            "docker (rootless)",
        ),
        ("/run/podman".into(), Kind::Dir, "podman"),
        (format!("{run}/podman"), Kind::Dir, "podman (rootless)"),
        ("/tmp/.X11-unix".into(), Kind::Dir, "X11"),
        (format!("{run}/wayland-*"), Kind::Socket, "Wayland"),
    ];
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.into_iter().map(|(p, k, w)| (p.into(), k, w)).collect()
}

/// Creates the user's tmux socket directory (/tmp/tmux-UID, 0700, the user's, as tmux itself
/// would) when it does not exist yet, so that the jail covers it from the start: otherwise a tmux
/// server the user starts *after* the launch would be reachable from the jail. An existing path
/// is left as it is (and masked when it is a directory).
pub fn precreate(target: &Target) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = PathBuf::from(format!("/tmp/tmux-{}", target.uid));
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {
            std::os::unix::fs::chown(&dir, Some(target.uid), Some(target.gid))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// What the launcher found: the masks, and what it must tell the user (a socket it would have
/// kept but does not).
#[derive(Debug, Default)]
pub struct Plan {
    pub masks: Vec<Mask>,
    pub warnings: Vec<String>,
    /// Directories to scan that the user may enter but not list (or that failed to list): a
    /// socket in one would stay reachable from the jail by its name. The launch refuses.
    pub unreadable: Vec<(PathBuf, std::io::Error)>,
}

/// [`plan`], run with the target user's credentials on a thread of its own, never root's: what
/// the user cannot list (a root-only directory behind a symlinked ~/.ssh, another user's
/// ~/.ssh) never enters the jail's mount table, and what root cannot list but the user can (the
/// user's FUSE mount, NFS with root_squash) is scanned. The thread ends with the scan; the
/// launcher's other threads keep root's credentials.
pub fn plan_as_user(
    target: &Target,
    allow: &[PathBuf],
    agent: Option<&Path>,
) -> anyhow::Result<Plan> {
    use anyhow::Context;
    if !nix::unistd::geteuid().is_root() {
        // The nftables mode without root: this process is the user already.
        return Ok(plan(target, allow, agent));
    }
    let plan = std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<Plan> {
            crate::sys::become_user_this_thread(target.uid, target.gid, &target.groups)
                .with_context(|| format!("take the credentials of {}", target.name))?;
            Ok(plan(target, allow, agent))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the scan of the user's sockets panicked"))?
    });
    // A thread that changed its ids made the process non-dumpable (its /proc files root's only):
    // as it was before.
    nix::sys::prctl::set_dumpable(true).context("PR_SET_DUMPABLE")?;
    plan
}

/// The masks for `target`, as the filesystem is now (the caller's credentials read it: use
/// [`plan_as_user`]): every candidate that exists with the
/// expected type, plus the unix sockets under `~/.ssh` (ControlMaster sockets: directly inside
/// it, or in a subdirectory, which is then covered whole). `allow` are the paths the admin keeps
/// reachable (allow-socket); `agent` is the ssh agent socket of the command's environment
/// (SSH_AUTH_SOCK), kept only when [`agent_verdict`] says so. Duplicates through symlinked
/// directories (/var/run -> /run) are merged.
pub fn plan(target: &Target, allow: &[PathBuf], agent: Option<&Path>) -> Plan {
    let mut unreadable = Vec::new();
    let mut entries = |dir: &Path| match entries(dir) {
        Ok(v) => v,
        Err(e) => {
            unreadable.push((dir.to_path_buf(), e));
            Vec::new()
        }
    };
    let mut found = Vec::new();
    for (path, kind, what) in candidates(target.uid) {
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with('*'))
        {
            let prefix = path.file_name().unwrap().to_string_lossy();
            let prefix = prefix.trim_end_matches('*').to_string();
            for (p, k) in entries(path.parent().unwrap_or(Path::new("/"))) {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                if k == Some(kind) && name.is_some_and(|n| n.starts_with(&prefix)) {
                    found.push((p, kind, what));
                }
            }
        } else if file_kind(&path) == Some(kind) {
            found.push((path, kind, what));
        }
    }
    let ssh = target.home.join(".ssh");
    for (p, k) in entries(&ssh) {
        match k {
            Some(Kind::Socket) => found.push((p, Kind::Socket, "ssh ControlMaster")),
            Some(Kind::Dir) if entries(&p).iter().any(|(_, k)| *k == Some(Kind::Socket)) => {
                found.push((p, Kind::Dir, "ssh ControlMaster"))
            }
            _ => {}
        }
    }
    let mut found: Vec<(PathBuf, Kind, &'static str)> = found
        .into_iter()
        .map(|(p, k, w)| (resolve_parent(&p), k, w))
        .collect();
    let mut keep: Vec<PathBuf> = allow
        .iter()
        .map(|p| resolve_parent(&normalize(p)))
        .collect();
    let mut warnings = Vec::new();
    if let Some(agent) = agent.filter(|a| a.is_absolute()) {
        let p = resolve_parent(&normalize(agent));
        let kind = fs::symlink_metadata(&p).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.file_type().is_socket(), m.uid())
        });
        let masked: Vec<&Path> = found.iter().map(|(m, _, _)| m.as_path()).collect();
        match agent_verdict(&p, kind, target.uid, &masked) {
            Ok(()) => keep.push(p),
            Err(why) => {
                warnings.push(format!(
                    "SSH_AUTH_SOCK={} {why}: it is not kept reachable in the jail{} (git over \
                     ssh in the jail then has no agent; fix: point SSH_AUTH_SOCK at your own \
                     agent's socket, or name the path with `allow-socket` in the conf)",
                    agent.display(),
                    if kind.is_some_and(|(sock, _)| sock) {
                        ", it is masked like the other brokers' sockets"
                    } else {
                        ""
                    }
                ));
                if kind.is_some_and(|(sock, _)| sock) {
                    found.push((p, Kind::Socket, "SSH_AUTH_SOCK not kept"));
                }
            }
        }
    }
    let masks = select(found, &keep);
    let mut out = pins(&masks, user_may_write);
    out.extend(masks);
    Plan {
        masks: out,
        warnings,
        unreadable,
    }
}

/// Whether the ssh agent socket `p` (its parent resolved) may stay reachable: it must be a
/// socket (`kind`: is a socket, owner; None when it does not exist) owned by the target user
/// `uid`, and lie in none of the `masked` paths. Otherwise SSH_AUTH_SOCK would be a way to keep
/// any broker reachable (`SSH_AUTH_SOCK=/var/run/docker.sock`), or to unmask a whole directory
/// (a path below /tmp/tmux-UID); the reason is returned.
pub fn agent_verdict(
    p: &Path,
    kind: Option<(bool, u32)>,
    uid: u32,
    masked: &[&Path],
) -> Result<(), String> {
    match kind {
        None => return Err("does not exist".into()),
        Some((false, _)) => return Err("is not a socket".into()),
        Some((true, owner)) if owner != uid => {
            return Err(format!("is owned by uid {owner}, not by the user ({uid})"))
        }
        Some(_) => {}
    }
    match masked.iter().find(|m| p.starts_with(m)) {
        Some(m) => Err(format!("is a masked path or lies in one ({})", m.display())),
        None => Ok(()),
    }
}

/// The paths the admin keeps reachable: every `allow-socket` of the conf.
pub fn allowed(conf: &Conf) -> Vec<PathBuf> {
    conf.allow_sockets.iter().map(|l| l.value.clone()).collect()
}

/// The ssh agent socket of the command's environment (SSH_AUTH_SOCK): git push needs it.
pub fn agent_socket(env: &[(OsString, OsString)]) -> Option<PathBuf> {
    env.iter()
        .find(|(k, _)| k == "SSH_AUTH_SOCK")
        .map(|(_, v)| PathBuf::from(v))
}

/// The masks from found paths and kept ones: a path that is kept is not masked; a kept socket
/// directly inside a masked directory is bound back into it; a directory with a kept socket
/// deeper down is not masked.
pub fn select(found: Vec<(PathBuf, Kind, &'static str)>, keep: &[PathBuf]) -> Vec<Mask> {
    let mut out: Vec<Mask> = Vec::new();
    for (path, kind, what) in found {
        if keep.contains(&path) || out.iter().any(|m| m.path == path) {
            continue;
        }
        let below: Vec<PathBuf> = keep
            .iter()
            .filter_map(|k| k.strip_prefix(&path).ok())
            .filter(|r| !r.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .collect();
        // A kept socket deeper down: the directory stays (the admin asked for what is in it).
        if kind == Kind::Dir && below.iter().any(|r| r.components().count() > 1) {
            continue;
        }
        out.push(Mask {
            path,
            kind,
            what,
            keep: if kind == Kind::Dir { below } else { Vec::new() },
        });
    }
    out
}

/// The directories to pin so that no masked path can be moved from inside the jail: every
/// directory above a masked path whose parent directory the user may write (`may_write`),
/// shallowest first (a pin is a bind mount of the directory onto itself, and must go on before
/// the mounts below it). The masked paths themselves are mount points already.
///
/// Why: a mask is taken by path at each launch. Were `~/.ssh` movable in the jail, the agent
/// could rename it (`mv ~/.ssh ~/.cfg-ssh`); the socket masked by this launch would then sit at a
/// path the next launch never scans, and be reachable there. A mount point cannot be renamed or
/// removed (EBUSY), and a hard link across mounts is refused (EXDEV): every name a masked socket
/// had at launch still names it at the next launch.
pub fn pins(masks: &[Mask], may_write: impl Fn(&Path) -> bool) -> Vec<Mask> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for m in masks {
        for a in m.path.ancestors().skip(1) {
            let Some(parent) = a.parent() else { break };
            if masks.iter().any(|o| o.path == a) || dirs.iter().any(|d| d == a) {
                continue;
            }
            if may_write(parent) {
                dirs.push(a.to_path_buf());
            }
        }
    }
    dirs.sort();
    dirs.into_iter()
        .map(|path| Mask {
            path,
            kind: Kind::Pin,
            what: "directory above a masked socket",
            keep: Vec::new(),
        })
        .collect()
}

/// Whether the caller may write in `dir` (create, rename or remove its entries): [`plan`] runs
/// as the target user ([`plan_as_user`]), so this is the user's access, ACLs included.
fn user_may_write(dir: &Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// A socket, a directory, or something else (None), without following a final symlink.
fn file_kind(p: &Path) -> Option<Kind> {
    let t = fs::symlink_metadata(p).ok()?.file_type();
    if t.is_socket() {
        Some(Kind::Socket)
    } else if t.is_dir() {
        Some(Kind::Dir)
    } else {
        None
    }
}

/// The entries of a directory with their kinds. Nothing when it does not exist, or when the
/// caller may not even enter it (then no name in it is reachable either); an error when it may
/// enter but not list it: a socket there would be reachable by a name nobody saw.
fn entries(dir: &Path) -> std::io::Result<Vec<(PathBuf, Option<Kind>)>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
            return Ok(Vec::new())
        }
        Err(e) => {
            let enter = nix::unistd::access(dir, nix::unistd::AccessFlags::X_OK);
            return if e.raw_os_error() == Some(libc::EACCES) && enter.is_err() {
                Ok(Vec::new())
            } else {
                Err(e)
            };
        }
    };
    let mut v: Vec<_> = rd
        .flatten()
        .map(|e| {
            let p = e.path();
            let k = file_kind(&p);
            (p, k)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

/// `p` with its directory resolved (symlinks followed) and its last component kept as is, so
/// that /var/run/docker.sock and /run/docker.sock are one path, and a final symlink is not
/// followed.
fn resolve_parent(p: &Path) -> PathBuf {
    match (p.parent(), p.file_name()) {
        (Some(dir), Some(name)) => fs::canonicalize(dir)
            .map(|d| d.join(name))
            .unwrap_or_else(|_| p.to_path_buf()),
        _ => p.to_path_buf(),
    }
}

/// Lexically cleaned: no `.`, no trailing slash (`..` is kept: a path is only compared).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            c => out.push(c.as_os_str()),
        }
    }
    out
}

/// One cgroup filesystem to hide, as found in mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupCover {
    /// The mount point to cover: an empty tmpfs always goes here first.
    pub at: PathBuf,
    /// Where a fresh cgroup2 (rooted at the jail's cgroup namespace) goes, relative to `at`
    /// (empty: at `at` itself, stacked on the tmpfs).
    pub cgroup2_at: Vec<PathBuf>,
}

/// What to cover so that no cgroup or cgroup2 mount of the host stays visible. A cgroup mount
/// whose parent is a tmpfs under /sys (the hybrid layout: tmpfs at /sys/fs/cgroup, v1
/// controllers and cgroup2 at `unified` below it) is covered by covering that tmpfs; any other
/// is covered where it is. Each cgroup2 mount point is filled again with the jail's own cgroup2.
pub fn cgroup_covers(mountinfo: &str) -> Vec<CgroupCover> {
    struct M {
        id: u64,
        parent: u64,
        at: PathBuf,
        fstype: String,
    }
    let mounts: Vec<M> = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut l = left.split_whitespace();
            let id = l.next()?.parse().ok()?;
            let parent = l.next()?.parse().ok()?;
            let at = PathBuf::from(crate::cgroup::unescape_octal(l.nth(2)?));
            let fstype = right.split_whitespace().next()?.to_string();
            Some(M {
                id,
                parent,
                at,
                fstype,
            })
        })
        .collect();
    let mut covers: Vec<CgroupCover> = Vec::new();
    for m in mounts
        .iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
    {
        let parent = mounts.iter().find(|p| p.id == m.parent);
        let at = match parent {
            Some(p)
                if p.fstype == "tmpfs" && p.at.starts_with("/sys") && m.at.starts_with(&p.at) =>
            {
                p.at.clone()
            }
            _ => m.at.clone(),
        };
        let i = match covers.iter().position(|c| c.at == at) {
            Some(i) => i,
            None => {
                covers.push(CgroupCover {
                    at: at.clone(),
                    cgroup2_at: Vec::new(),
                });
                covers.len() - 1
            }
        };
        if m.fstype == "cgroup2" {
            let rel =
                m.at.strip_prefix(&at)
                    .unwrap_or(Path::new(""))
                    .to_path_buf();
            if !covers[i].cgroup2_at.contains(&rel) {
                covers[i].cgroup2_at.push(rel);
            }
        }
    }
    // A cover below another (a cgroup mount stacked inside another cover) is hidden already.
    let all: Vec<PathBuf> = covers.iter().map(|c| c.at.clone()).collect();
    covers.retain(|c| !all.iter().any(|o| *o != c.at && c.at.starts_with(o)));
    covers
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    const HYBRID: &str = "\
23 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_layout_is_covered_at_the_tmpfs_with_cgroup2_put_back_at_unified() {
        assert_eq!(
            cgroup_covers(HYBRID),
            vec![CgroupCover {
                at: "/sys/fs/cgroup".into(),
                cgroup2_at: vec!["unified".into()],
            }]
        );
    }

    #[test]
    fn unified_layout_gets_cgroup2_in_place() {
        let mi = "23 1 0:21 / /sys rw - sysfs sysfs rw\n\
                  30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup_covers(mi),
            vec![CgroupCover {
                at: "/sys/fs/cgroup".into(),
                cgroup2_at: vec!["".into()],
            }]
        );
    }

    #[test]
    fn a_cgroup_mount_outside_sys_is_covered_where_it_is_never_its_tmpfs_parent() {
        let mi = "23 1 0:21 / /tmp rw - tmpfs tmpfs rw\n\
                  50 23 0:40 / /tmp/my\\040cg rw - cgroup cgroup rw,pids\n\
                  51 1 0:41 / /mnt/v2 rw - cgroup2 cgroup2 rw\n\
                  52 51 0:42 / /mnt/v2/again rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup_covers(mi),
            vec![
                CgroupCover {
                    at: "/tmp/my cg".into(),
                    cgroup2_at: vec![],
                },
                CgroupCover {
                    at: "/mnt/v2".into(),
                    cgroup2_at: vec!["".into()],
                },
            ],
            "/tmp itself must never be covered; a cgroup2 stacked below another cover is hidden \
             by it"
        );
    }

    #[test]
    fn candidates_name_the_brokers_of_the_users_uid() {
        let c = candidates(1000);
        let has = |p: &str, k: Kind| c.iter().any(|(q, kk, _)| q == Path::new(p) && *kk == k);
        assert!(has("/tmp/tmux-1000", Kind::Dir));
        assert!(has("/run/user/1000/bus", Kind::Socket));
        assert!(has("/run/user/1000/systemd", Kind::Dir));
        assert!(has("/run/user/1000/podman", Kind::Dir));
        assert!(has("/var/run/docker.sock", Kind::Socket));
        assert!(has("/tmp/.X11-unix", Kind::Dir));
        assert!(has("/run/screen", Kind::Dir));
        assert!(has("/run/user/1000/wayland-*", Kind::Socket));
        assert!(!c
            .iter()
            .any(|(p, _, _)| p.to_string_lossy().contains("65534")));
    }

    #[test]
    fn kept_paths_are_not_masked_and_kept_sockets_inside_a_masked_dir_are_bound_back() {
        let found = vec![
            (
                "/run/user/1000/bus".into(),
                Kind::Socket,
                "D-Bus session bus",
            ),
            (
                "/run/user/1000/podman".into(),
                Kind::Dir,
                "podman (rootless)",
            ),
            ("/tmp/tmux-1000".into(), Kind::Dir, "tmux server"),
            ("/tmp/tmux-1000".into(), Kind::Dir, "tmux server"),
        ];
        let keep = vec![
            PathBuf::from("/run/user/1000/bus"),
            PathBuf::from("/run/user/1000/podman/podman.sock"),
            PathBuf::from("/run/user/1000/systemd/a/b.sock"),
        ];
        let mut found = found;
        found.push((
            "/run/user/1000/systemd".into(),
            Kind::Dir,
            "systemd user manager",
        ));
        let m = select(found, &keep);
        assert_eq!(m.len(), 2, "bus kept, duplicates merged: {m:?}");
        assert_eq!(m[0].path, Path::new("/run/user/1000/podman"));
        assert_eq!(m[0].keep, vec![PathBuf::from("podman.sock")]);
        assert_eq!(m[1].path, Path::new("/tmp/tmux-1000"));
        assert!(m[1].keep.is_empty());
    }

    #[test]
    fn directories_the_user_could_rename_above_a_mask_are_pinned_shallowest_first() {
        let mask = |p: &str, kind| Mask {
            path: p.into(),
            kind,
            what: "",
            keep: vec![],
        };
        let masks = vec![
            mask("/home/u/.ssh/cm-a", Kind::Socket),
            mask("/home/u/.ssh/sockets", Kind::Dir),
            mask("/tmp/tmux-1000", Kind::Dir),
            mask("/home/u/w/x/y.sock", Kind::Socket),
        ];
        // The user may write in their home and below, and in /tmp; not in /home or /.
        let writable = |d: &Path| d.starts_with("/home/u") || d == Path::new("/tmp");
        let p = pins(&masks, writable);
        let paths: Vec<&Path> = p.iter().map(|m| m.path.as_path()).collect();
        assert_eq!(
            paths,
            vec![
                Path::new("/home/u/.ssh"),
                Path::new("/home/u/w"),
                Path::new("/home/u/w/x"),
            ],
            "/tmp/tmux-1000 is a mount point itself; /home/u sits in /home, which the user \
             cannot write"
        );
        assert!(p.iter().all(|m| m.kind == Kind::Pin));
    }

    #[test]
    fn the_agent_socket_is_kept_only_when_it_is_the_users_socket_outside_every_mask() {
        let masked = [Path::new("/tmp/tmux-1000"), Path::new("/run/docker.sock")];
        let v = |p: &str, kind| agent_verdict(Path::new(p), kind, 1000, &masked);
        assert_eq!(v("/tmp/ssh-x/agent.1", Some((true, 1000))), Ok(()));
        assert!(v("/run/docker.sock", Some((true, 1000)))
            .unwrap_err()
            .contains("masked"));
        assert!(v("/tmp/tmux-1000/nothing/x", None)
            .unwrap_err()
            .contains("does not exist"));
        assert!(v("/tmp/tmux-1000/default", Some((true, 1000)))
            .unwrap_err()
            .contains("/tmp/tmux-1000"));
        assert!(v("/tmp/other.sock", Some((true, 0)))
            .unwrap_err()
            .contains("uid 0"));
        assert!(v("/etc/passwd", Some((false, 1000)))
            .unwrap_err()
            .contains("not a socket"));
    }

    #[test]
    fn plan_finds_control_master_sockets_under_ssh_and_keeps_the_users_agent_elsewhere() {
        let home = std::env::temp_dir().join(format!("cj-mask-{}", std::process::id()));
        let ssh = home.join(".ssh");
        fs::create_dir_all(ssh.join("sockets")).unwrap();
        fs::create_dir_all(ssh.join("empty")).unwrap();
        let _a = UnixListener::bind(ssh.join("cm-git@forge:22")).unwrap();
        let _b = UnixListener::bind(ssh.join("sockets/x")).unwrap();
        let _c = UnixListener::bind(ssh.join("agent.sock")).unwrap();
        fs::create_dir_all(home.join("ssh-x")).unwrap();
        let _d = UnixListener::bind(home.join("ssh-x/agent.1")).unwrap();
        fs::write(ssh.join("config"), "").unwrap();
        // The agent is kept only when it is the user's (chown needs root; without it, the
        // socket stays root's and must be masked instead).
        let owned =
            std::os::unix::fs::lchown(home.join("ssh-x/agent.1"), Some(4_000_000_000), None)
                .is_ok();
        let t = Target {
            name: "t".into(),
            uid: 4_000_000_000,
            gid: 1,
            groups: vec![],
            home: home.clone(),
            shell: "/bin/sh".into(),
        };
        let plan_in_ssh = plan(&t, &[], Some(&ssh.join("./agent.sock")));
        let plan = plan(&t, &[], Some(&home.join("ssh-x/./agent.1")));
        let m = plan.masks;
        let _ = fs::remove_dir_all(&home);
        let ssh = fs::canonicalize(std::env::temp_dir())
            .unwrap()
            .join(home.file_name().unwrap())
            .join(".ssh");
        let paths: Vec<(PathBuf, Kind)> = m.iter().map(|m| (m.path.clone(), m.kind)).collect();
        assert!(
            paths.contains(&(ssh.join("cm-git@forge:22"), Kind::Socket)),
            "{paths:?}"
        );
        assert!(
            paths.contains(&(ssh.join("sockets"), Kind::Dir)),
            "{paths:?}"
        );
        assert_eq!(
            paths.iter().any(|(p, _)| p.ends_with("agent.1")),
            !owned,
            "SSH_AUTH_SOCK stays reachable when it is the user's: {paths:?}"
        );
        assert_eq!(plan.warnings.is_empty(), owned, "{:?}", plan.warnings);
        // A socket directly in ~/.ssh is masked as a ControlMaster would be, whoever names it.
        assert!(paths.contains(&(ssh.join("agent.sock"), Kind::Socket)));
        assert!(plan_in_ssh
            .masks
            .iter()
            .any(|m| m.path.ends_with(".ssh/agent.sock")));
        assert_eq!(plan_in_ssh.warnings.len(), 1, "{:?}", plan_in_ssh.warnings);
        assert!(!paths
            .iter()
            .any(|(p, _)| p.ends_with("empty") || p.ends_with("config")));
    }
}
