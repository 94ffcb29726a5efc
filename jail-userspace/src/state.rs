//! The state claude-jail keeps so that `reload`, `status`, `events` and `gc` find every jail.
//!
//! ```text
//! /run/claude-jail/                       root-only (0700)
//!   jails/<id>.json                       the registry: one record per launch (JailRecord)
//!   <id>/netns                            the jail's network namespace, bind-mounted (for pasta)
//!   <id>/resolv.conf                      the jail's /etc/resolv.conf (pasta's DNS forwarder)
//!   <id>/pasta.pid, <id>/pasta.log
//! /sys/fs/bpf/claude-jail/<id>/jail/      pinned maps and links of the jail's policy
//! /sys/fs/bpf/claude-jail/<id>/pasta/     pinned maps and links of pasta's policy
//! <cgroup2>/claude-jail/<id>/jail         the command's cgroup
//! <cgroup2>/claude-jail/<id>/pasta        pasta's cgroup
//! /var/log/claude-jail/                   root-only (0700, made so at each write)
//!   events.jsonl                          the audit trail (0600, size-capped, one rotation)
//! ```
//!
//! Everything is under fixed, root-owned paths: the jailed user can read none of it and write
//! none of it.
use std::{
    fs,
    io::{ErrorKind, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::{cgroup, dirs};

pub use crate::dirs::{private_dir, LOG_DIR, RUN_DIR};

/// Where each piece of state lives. One value, built once, so tests and code agree.
#[derive(Clone, Debug)]
pub struct Paths {
    pub run: PathBuf,
    pub bpffs: PathBuf,
    pub pins: PathBuf,
    pub log: PathBuf,
    pub cgroup_root: PathBuf,
}

impl Paths {
    /// The fixed paths, with the cgroup2 mount found in /proc/self/mountinfo.
    pub fn system() -> Result<Paths> {
        let cg = cgroup::cgroup2_mount()?;
        Ok(Paths {
            run: PathBuf::from(RUN_DIR),
            bpffs: PathBuf::from(dirs::BPFFS),
            pins: Path::new(dirs::BPFFS).join(cgroup::PARENT),
            log: PathBuf::from(LOG_DIR),
            cgroup_root: cg.join(cgroup::PARENT),
        })
    }

    /// A user's own paths, for the nftables mode run without root: the registry and run
    /// directories under /run/user/UID/claude-jail (the user's runtime directory, when it is the
    /// user's), else /tmp/claude-jail-UID; the log under ~/.local/state/claude-jail. No pins and
    /// no cgroups: that mode has neither. The jail's mount namespace hides both directories from
    /// the command, which runs as the same user.
    pub fn for_user(uid: u32, home: &Path) -> Result<Paths> {
        use std::os::unix::fs::MetadataExt;
        let runtime = PathBuf::from(format!("/run/user/{uid}"));
        let owned = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir() && m.uid() == uid);
        let run = if owned(&runtime) {
            runtime.join(cgroup::PARENT)
        } else {
            PathBuf::from(format!("/tmp/claude-jail-{uid}"))
        };
        // Made by someone else in a world-writable /tmp: not ours to use.
        if fs::symlink_metadata(&run).is_ok() && !owned(&run) {
            anyhow::bail!(
                "{} is not a directory of uid {uid} (fix: remove it; it was made by someone else)",
                run.display()
            );
        }
        Ok(Paths {
            run,
            bpffs: PathBuf::new(),
            pins: PathBuf::new(),
            log: home.join(".local/state/claude-jail"),
            cgroup_root: PathBuf::new(),
        })
    }

    /// The paths of `caller`'s jails: the system's for root (and a user behind sudo, who sees
    /// their own jails there), the user's own ([`Paths::for_user`]) for a caller without root.
    pub fn for_caller(caller: crate::caller::Caller) -> Result<Paths> {
        match caller {
            crate::caller::Caller::Unprivileged { uid } => {
                let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .with_context(|| format!("uid {uid} has no passwd entry"))?;
                Paths::for_user(uid, &user.dir)
            }
            _ => Paths::system(),
        }
    }

    /// False for a user's own paths: no cgroups, no pins, nothing of root's to clean.
    pub fn has_kernel_state(&self) -> bool {
        !self.cgroup_root.as_os_str().is_empty()
    }

    pub fn registry(&self) -> PathBuf {
        self.run.join("jails")
    }
    pub fn record(&self, id: &str) -> PathBuf {
        self.registry().join(format!("{id}.json"))
    }
    pub fn jail_run(&self, id: &str) -> PathBuf {
        self.run.join(id)
    }
    pub fn jail_pins(&self, id: &str) -> PathBuf {
        self.pins.join(id).join("jail")
    }
    pub fn pasta_pins(&self, id: &str) -> PathBuf {
        self.pins.join(id).join("pasta")
    }
    pub fn jail_cgroup(&self, id: &str) -> PathBuf {
        self.cgroup_root.join(id).join("jail")
    }
    pub fn pasta_cgroup(&self, id: &str) -> PathBuf {
        self.cgroup_root.join(id).join("pasta")
    }
    pub fn events_log(&self) -> PathBuf {
        self.log.join("events.jsonl")
    }
}

/// A fresh jail id: 12 hex digits from the kernel's random pool.
pub fn new_id() -> Result<String> {
    let mut b = [0u8; 6];
    getrandom(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn getrandom(buf: &mut [u8]) -> Result<()> {
    use std::io::Read;
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .context("read /dev/urandom")
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One launch, as `status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JailRecord {
    pub id: String,
    /// false for a launch with the jail turned off (recorded so `status` can show it).
    pub jailed: bool,
    pub launcher_pid: u32,
    /// The jail's init (host pid namespace); 0 before it exists or when not jailed.
    pub init_pid: u32,
    /// The command (host pid namespace); 0 when not known yet.
    pub command_pid: u32,
    pub uid: u32,
    pub user: String,
    pub command: Vec<String>,
    pub started: u64,
    /// The configuration file and the source of the on/off switch.
    pub conf: String,
    pub switch_source: String,
    /// The digest of this jail's maps (the conf's policy plus the jail's own entries).
    pub policy_digest: String,
    /// The digest `claude-jail policy` prints for the same conf and host network: what an
    /// admin compares.
    #[serde(default)]
    pub conf_digest: String,
    pub pasta_pid: u32,
    /// The jail's own addresses (pasta's copy of the host's), allowed to the jail: they are local
    /// in its namespace.
    #[serde(default)]
    pub own_addrs: Vec<std::net::IpAddr>,
    /// What enforces the policy: `ebpf` or `nftables`.
    #[serde(default = "ebpf")]
    pub backend: String,
    /// Why that one (the conf's `egress-backend`, or what `auto` found).
    #[serde(default)]
    pub backend_reason: String,
}

fn ebpf() -> String {
    "ebpf".into()
}

/// Writes a record atomically (temp file + rename), root-only.
pub fn write_record(paths: &Paths, rec: &JailRecord) -> Result<()> {
    private_dir(&paths.registry())?;
    let path = paths.record(&rec.id);
    let tmp = path.with_extension("json.tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    serde_json::to_writer_pretty(&mut f, rec)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    fs::rename(&tmp, &path).with_context(|| format!("rename to {}", path.display()))
}

pub fn remove_record(paths: &Paths, id: &str) -> Result<()> {
    match fs::remove_file(paths.record(id)) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", paths.record(id).display()))
        }
        _ => Ok(()),
    }
}

/// Every record in the registry, sorted by start time. Unreadable records are returned as errors
/// next to the good ones, never dropped silently.
pub fn list_records(paths: &Paths) -> Result<Vec<Result<JailRecord>>> {
    let dir = paths.registry();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        out.push(
            fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|b| serde_json::from_slice::<JailRecord>(&b).map_err(Into::into))
                .with_context(|| format!("registry record {}", path.display())),
        );
    }
    out.sort_by_key(|r| r.as_ref().map(|r| r.started).unwrap_or(0));
    Ok(out)
}

/// Whether a process with this pid exists (and is not a zombie we could confuse it with).
pub fn pid_alive(pid: u32) -> bool {
    pid != 0
        && fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                // Field 3 (after the parenthesised comm) is the state.
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z"))
                    .unwrap_or(false)
            })
            .unwrap_or(false)
}

/// Holds a jail's update lock while alive.
pub struct JailLock(#[allow(dead_code)] Flock<fs::File>);

pub fn lock(paths: &Paths, id: &str) -> Result<JailLock> {
    let path = paths.jail_run(id).join("lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    let l = Flock::lock(f, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("lock {}", path.display()))?;
    Ok(JailLock(l))
}

/// Reads jail `id`'s registry record, lets `f` change it (and the jail's maps), and writes it
/// back, all under the jail's lock: the reload command, the launcher's own refreshes and its
/// bookkeeping never interleave, so none of them writes back a record another has changed since
/// it read it. `Ok(None)` when the jail is gone (or going).
pub fn with_record<T>(
    paths: &Paths,
    id: &str,
    f: impl FnOnce(&mut JailRecord) -> Result<T>,
) -> Result<Option<T>> {
    if !paths.jail_run(id).exists() {
        return Ok(None);
    }
    let _lock = match lock(paths, id) {
        Ok(l) => l,
        // The run directory went away between the check and the open: the jail ended.
        Err(_) if !paths.jail_run(id).exists() => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(mut rec) = list_records(paths)?
        .into_iter()
        .flatten()
        .find(|r| r.id == id)
    else {
        return Ok(None);
    };
    let out = f(&mut rec)?;
    write_record(paths, &rec)?;
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_twelve_hex_digits_and_differ() {
        let a = new_id().unwrap();
        let b = new_id().unwrap();
        assert_eq!(a.len(), 12);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b, "two ids from the random pool must differ");
    }

    #[test]
    fn records_round_trip_through_the_registry() {
        let dir = std::env::temp_dir().join(format!("cj-state-test-{}", std::process::id()));
        let paths = Paths {
            run: dir.clone(),
            bpffs: dir.join("bpf"),
            pins: dir.join("bpf/claude-jail"),
            log: dir.join("log"),
            cgroup_root: dir.join("cg"),
        };
        let rec = JailRecord {
            id: "0123456789ab".into(),
            jailed: true,
            launcher_pid: 1,
            init_pid: 2,
            command_pid: 3,
            uid: 1000,
            user: "alice".into(),
            command: vec!["claude".into()],
            started: 42,
            conf: "/etc/claude-sandbox.conf".into(),
            switch_source: "default".into(),
            policy_digest: "abc".into(),
            conf_digest: String::new(),
            pasta_pid: 4,
            own_addrs: vec!["192.168.1.100".parse().unwrap()],
            backend: "nftables".into(),
            backend_reason: "auto: eBPF cannot be loaded here".into(),
        };
        write_record(&paths, &rec).unwrap();
        let list = list_records(&paths).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].as_ref().unwrap(), &rec);
        remove_record(&paths, &rec.id).unwrap();
        assert!(list_records(&paths).unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
