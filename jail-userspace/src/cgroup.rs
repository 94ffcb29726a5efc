//! cgroup v2: find the unified hierarchy, create, fill, kill and remove the jail's cgroups.
//!
//! Layout under the cgroup2 mount (`/sys/fs/cgroup` on most hosts, `/sys/fs/cgroup/unified` on
//! hybrid ones):
//!
//! ```text
//! claude-jail/            parent of every jail, no programs
//!   <id>/jail/            the command and everything it starts; the jail policy is attached here
//!   <id>/pasta/           pasta alone, under its own policy
//! ```
use std::{
    fs,
    io::{self, ErrorKind},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use thiserror::Error;

/// Name of the directory under the cgroup2 mount that holds every jail.
pub const PARENT: &str = "claude-jail";

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 hierarchy is mounted (none in /proc/self/mountinfo); mount one with \
         `mount -t cgroup2 none /sys/fs/cgroup` (or boot with systemd.unified_cgroup_hierarchy=1)"
    )]
    NoCgroup2,
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountInfo(io::Error),
    #[error("{op} {path}: {cause}")]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error(
        "cgroup {path} still has processes after {waited:?} (fix: see them in \
         {path}/cgroup.procs; once they are gone, `claude-jail gc` removes what is left)"
    )]
    NotEmpty { path: PathBuf, waited: Duration },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |cause| CgroupError::Io {
        op,
        path: path.to_path_buf(),
        cause,
    }
}

/// The mount point of the cgroup v2 hierarchy, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
    find_cgroup2(&text).ok_or(CgroupError::NoCgroup2)
}

/// The cgroup2 mount point in a mountinfo text: the first one mounted read-write, else the first
/// (a container may show its cgroup2 read-only and a writable one elsewhere). Fields: `id parent
/// maj:min root mountpoint options [optional...] - fstype source superoptions`; the mount point
/// has octal escapes.
fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    let mounts: Vec<(PathBuf, bool)> = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let mut f = left.split_whitespace().skip(4);
            let mountpoint = f.next()?;
            let rw = f.next()?.split(',').any(|o| o == "rw");
            Some((PathBuf::from(unescape_octal(mountpoint)), rw))
        })
        .collect();
    let first_rw = mounts.iter().find(|(_, rw)| *rw);
    first_rw.or(mounts.first()).map(|(p, _)| p.clone())
}

/// A mountinfo field with its octal escapes (`\040` for a space) decoded.
pub(crate) fn unescape_octal(s: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    std::ffi::OsString::from_vec(out)
}

/// A cgroup directory this process created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `path` (and its parents). An existing directory is an error: a jail never shares
    /// a cgroup with something else.
    pub fn create(path: &Path) -> Result<Cgroup, CgroupError> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err("create cgroup", parent))?;
        }
        fs::create_dir(path).map_err(io_err("create cgroup", path))?;
        Ok(Cgroup {
            path: path.to_path_buf(),
        })
    }

    /// An existing cgroup (for cleanup and tests).
    pub fn existing(path: &Path) -> Cgroup {
        Cgroup {
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves a process (all its threads) into this cgroup.
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        let procs = self.path.join("cgroup.procs");
        fs::write(&procs, pid.to_string()).map_err(io_err("write", &procs))
    }

    /// The pids in this cgroup (not its descendants).
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        let procs = self.path.join("cgroup.procs");
        let text = fs::read_to_string(&procs).map_err(io_err("read", &procs))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Whether any process is in this cgroup or below (`populated` of cgroup.events).
    pub fn populated(&self) -> Result<bool, CgroupError> {
        let events = self.path.join("cgroup.events");
        let text = fs::read_to_string(&events).map_err(io_err("read", &events))?;
        Ok(text.lines().any(|l| l.trim() == "populated 1"))
    }

    /// Kills every process in this cgroup and below (cgroup.kill, Linux 5.14), then waits until it
    /// is empty.
    pub fn kill_all(&self, wait: Duration) -> Result<(), CgroupError> {
        let kill = self.path.join("cgroup.kill");
        match fs::write(&kill, "1") {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // No cgroup.kill (kernel < 5.14): SIGKILL each pid, repeatedly, until empty.
                let deadline = Instant::now() + wait;
                while self.populated()? && Instant::now() < deadline {
                    for pid in self.pids()? {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    thread::sleep(Duration::from_millis(5));
                }
            }
            Err(e) => return Err(io_err("write", &kill)(e)),
        }
        self.wait_empty(wait)
    }

    /// Waits until no process is left in this cgroup or below.
    pub fn wait_empty(&self, wait: Duration) -> Result<(), CgroupError> {
        let deadline = Instant::now() + wait;
        while self.populated()? {
            if Instant::now() >= deadline {
                return Err(CgroupError::NotEmpty {
                    path: self.path.clone(),
                    waited: wait,
                });
            }
            thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Freezes (`on`) or thaws this cgroup and everything below it (cgroup.freeze, Linux 5.2),
    /// then waits up to `wait` until cgroup.events says so. A frozen process runs no
    /// instruction, whatever signals it ignores.
    pub fn freeze(&self, on: bool, wait: Duration) -> Result<(), CgroupError> {
        let freeze = self.path.join("cgroup.freeze");
        fs::write(&freeze, if on { "1" } else { "0" }).map_err(io_err("write", &freeze))?;
        let events = self.path.join("cgroup.events");
        let want = if on { "frozen 1" } else { "frozen 0" };
        let deadline = Instant::now() + wait;
        loop {
            let text = fs::read_to_string(&events).map_err(io_err("read", &events))?;
            if text.lines().any(|l| l.trim() == want) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io_err("wait for", &events)(io::Error::new(
                    ErrorKind::TimedOut,
                    format!("no `{want}` after {wait:?}"),
                )));
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Removes this cgroup and every (empty) child cgroup below it. A cgroup that is already
    /// gone is fine.
    pub fn remove(&self) -> Result<(), CgroupError> {
        remove_tree(&self.path)
    }
}

/// Where a limit of the jail went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    /// On the jail's cgroup2 cgroup (the unified layout, or any host whose cgroup2 has the
    /// controller).
    V2,
    /// On a cgroup of the controller's v1 hierarchy made for the jail (the hybrid layout, where
    /// the controller is bound to cgroup v1): the init must be moved into it, and it removed at
    /// the end.
    V1(PathBuf),
    /// The controller is mounted nowhere.
    Unavailable,
}

/// A resource limit of the jail cgroup: the controller, and its file in cgroup2 and in v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Knob {
    pub controller: &'static str,
    pub v2_file: &'static str,
    pub v1_file: &'static str,
}

/// Processes and threads.
pub const PIDS: Knob = Knob {
    controller: "pids",
    v2_file: "pids.max",
    v1_file: "pids.max",
};
/// Memory (cgroup2 memory.max; v1 memory.limit_in_bytes, where `max` is `-1`).
pub const MEMORY: Knob = Knob {
    controller: "memory",
    v2_file: "memory.max",
    v1_file: "memory.limit_in_bytes",
};

/// Writes `value` to the jail's `knob`.
///
/// cgroup2 first: when its root lists the controller in cgroup.controllers, it is enabled in
/// cgroup.subtree_control of every cgroup from the root down to the jail's parent (only where
/// it is not already), then the jail's file written. Otherwise the controller's v1 hierarchy
/// (found in `mountinfo`) gets a cgroup at the same relative path `rel` (`claude-jail/ID/jail`)
/// with the value. A process may sit in v1 and v2 cgroups at once: the jail's eBPF programs stay
/// on the v2 one.
pub fn limit(
    mountinfo: &str,
    v2_root: &Path,
    jail: &Cgroup,
    rel: &Path,
    knob: Knob,
    value: &str,
) -> Result<Limit, CgroupError> {
    let lists = |file: &Path| -> Result<bool, CgroupError> {
        let text = fs::read_to_string(file).map_err(io_err("read", file))?;
        Ok(text.split_whitespace().any(|c| c == knob.controller))
    };
    let enable = format!("+{}", knob.controller);
    if lists(&v2_root.join("cgroup.controllers"))? {
        let mut dir = v2_root.to_path_buf();
        let parents = rel.parent().unwrap_or(Path::new(""));
        for c in std::iter::once(None).chain(parents.components().map(Some)) {
            if let Some(c) = c {
                dir.push(c);
            }
            let ctl = dir.join("cgroup.subtree_control");
            if !lists(&ctl)? {
                fs::write(&ctl, &enable).map_err(io_err("write", &ctl))?;
            }
        }
        let file = jail.path().join(knob.v2_file);
        fs::write(&file, value).map_err(io_err("write", &file))?;
        return Ok(Limit::V2);
    }
    let Some(v1) = find_v1(mountinfo, knob.controller) else {
        return Ok(Limit::Unavailable);
    };
    let dir = v1.join(rel);
    fs::create_dir_all(&dir).map_err(io_err("create cgroup", &dir))?;
    let file = dir.join(knob.v1_file);
    let value = if value == "max" && knob == MEMORY {
        "-1"
    } else {
        value
    };
    fs::write(&file, value).map_err(io_err("write", &file))?;
    Ok(Limit::V1(dir))
}

/// The mount points of the cgroup v1 hierarchies of the controllers [`limit`] may use (where
/// it puts a jail on the hybrid layout).
pub fn limit_v1_mounts() -> Vec<PathBuf> {
    let Ok(mi) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    [PIDS, MEMORY]
        .iter()
        .filter_map(|k| find_v1(&mi, k.controller))
        .collect()
}

/// The mount point of the cgroup v1 hierarchy that carries `controller`.
fn find_v1(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split_whitespace();
        if r.next()? != "cgroup" {
            return None;
        }
        let opts = r.nth(1)?;
        if !opts.split(',').any(|o| o == controller) {
            return None;
        }
        Some(PathBuf::from(unescape_octal(
            left.split_whitespace().nth(4)?,
        )))
    })
}

fn remove_tree(path: &Path) -> Result<(), CgroupError> {
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read cgroup", path)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("read cgroup", path))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove cgroup", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_a_hybrid_layout() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            find_cgroup2(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified")),
            "the cgroup2 mount is found by fstype, not by path"
        );
    }

    #[test]
    fn finds_cgroup2_with_optional_fields_and_escapes() {
        let text = "35 24 0:30 / /sys/fs/cgroup\\040x rw,nosuid shared:9 master:1 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(find_cgroup2(text), Some(PathBuf::from("/sys/fs/cgroup x")));
    }

    #[test]
    fn a_writable_cgroup2_is_preferred_to_a_read_only_one() {
        let text = "\
84 77 0:38 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw
90 77 0:38 / /run/cg rw,nosuid - cgroup2 cgroup rw
";
        assert_eq!(find_cgroup2(text), Some(PathBuf::from("/run/cg")));
        assert_eq!(
            find_cgroup2("84 77 0:38 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw\n"),
            Some(PathBuf::from("/sys/fs/cgroup")),
            "a read-only one is still found (the preflight then names the fix)"
        );
    }

    #[test]
    fn finds_the_v1_hierarchy_of_a_controller() {
        let mi = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                  35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                  39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n\
                  41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_v1(mi, "pids"),
            Some(PathBuf::from("/sys/fs/cgroup/pids"))
        );
        assert_eq!(find_v1(mi, "pid"), None);
        assert_eq!(find_v1(mi, "hugetlb"), None);
    }

    #[test]
    fn no_cgroup2_is_none() {
        assert_eq!(
            find_cgroup2("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"),
            None
        );
    }
}
