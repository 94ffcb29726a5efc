//! The eBPF loader: loads the embedded object, fills its maps from a compiled policy, attaches the
//! five programs to a cgroup, and pins links and maps so that enforcement outlives the launcher.
//!
//! Pins of one policy instance live in a root-only directory on bpffs:
//!
//! ```text
//! /sys/fs/bpf/claude-jail/<id>/jail/   ALLOW4 ... EVENTS   the maps (jail-common's names)
//!                                      link-connect4 ...   the cgroup links
//! ```
//!
//! Order matters for fail-closed behaviour: the maps are filled before any program is attached
//! (an attached program with empty maps would allow everything), and either all five programs
//! are attached and pinned or none is (a failure unpins what was done; dropping an unpinned link
//! detaches it).
use std::{
    borrow::{Borrow, BorrowMut},
    collections::BTreeMap,
    fs,
    io::{self, ErrorKind},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        HashMap, Map, MapData, PerCpuArray, RingBuf,
    },
    programs::{
        cgroup_skb::CgroupSkbAttachType, links::FdLink, CgroupAttachMode, CgroupSkb,
        CgroupSockAddr, ProgramError,
    },
    Ebpf, EbpfLoader,
};
use jail_common::{
    counter_index, maps, Hook, RuleId, COUNTER_COUNT, COUNTER_EVENTS_DROPPED, VERDICT_ALLOW,
    VERDICT_DENY,
};

use crate::policy::{
    maps::{EachMap, MapDesc, MapKey},
    Action, MapEntries,
};

/// The object built by `cargo xtask build-ebpf`, embedded by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/jail-ebpf.o"));

/// Where bpffs is mounted on every systemd host.
pub use crate::dirs::BPFFS;
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// The programs, by their function names in jail-ebpf, and the names of their pinned links.
const PROGRAMS: [(&str, &str); 5] = [
    ("connect4", "link-connect4"),
    ("sendmsg4", "link-sendmsg4"),
    ("connect6", "link-connect6"),
    ("sendmsg6", "link-sendmsg6"),
    ("skb_egress", "link-skb-egress"),
];

/// Mounts bpffs at `mount_point` unless one is already there (systemd mounts it at boot; a bare
/// host or a test namespace may not have it).
pub fn ensure_bpffs(mount_point: &Path) -> Result<()> {
    fs::create_dir_all(mount_point)
        .with_context(|| format!("create the bpffs mount point {}", mount_point.display()))?;
    if is_bpffs(mount_point)? {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        mount_point,
        Some("bpf"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .with_context(|| {
        format!(
            "mount bpffs on {}: the pinned jail state needs it (fix: `mount -t bpf bpf {}`)",
            mount_point.display(),
            mount_point.display()
        )
    })
}

pub fn is_bpffs(path: &Path) -> Result<bool> {
    let st =
        nix::sys::statfs::statfs(path).with_context(|| format!("statfs {}", path.display()))?;
    Ok(st.filesystem_type().0 as i64 == BPF_FS_MAGIC)
}

/// Loads the programs, fills the maps with `entries`, attaches all five programs to the cgroup
/// at `cgroup_dir`, and pins maps and links in `pin_dir` (which must not exist yet). Returns the
/// open maps. On failure nothing stays attached or pinned.
pub fn attach(cgroup_dir: &Path, pin_dir: &Path, entries: &MapEntries) -> Result<JailMaps> {
    if pin_dir.exists() {
        bail!(
            "pin directory {} already exists: state of an earlier jail with this id (fix: \
             `claude-jail gc` removes the state of jails whose launcher is gone)",
            pin_dir.display()
        );
    }
    let result = attach_inner(cgroup_dir, pin_dir, entries);
    if result.is_err() {
        // Best effort: the error being returned is the one that matters.
        let _ = unpin(pin_dir);
    }
    result
}

fn attach_inner(cgroup_dir: &Path, pin_dir: &Path, entries: &MapEntries) -> Result<JailMaps> {
    let mut ebpf = EbpfLoader::new().load(OBJECT).map_err(|e| {
        anyhow!(e).context(
            "load the eBPF object: the kernel refused it (fix: run as root on Linux >= 5.8 with \
             CONFIG_BPF_SYSCALL and cgroup BPF)",
        )
    })?;
    crate::profile::mark("bpf-object");
    crate::dirs::private_dir(pin_dir)?;
    let mut jail_maps = JailMaps::take_and_pin(&mut ebpf, pin_dir)?;
    jail_maps.apply(entries).context("fill the policy maps")?;
    crate::profile::mark("map-fill");

    for (name, _) in PROGRAMS {
        load_program(&mut ebpf, name)?;
    }
    crate::profile::mark("verify");

    let cgroup = fs::File::open(cgroup_dir)
        .with_context(|| format!("open cgroup {}", cgroup_dir.display()))?;
    for (name, link_name) in PROGRAMS {
        let link = attach_program(&mut ebpf, name, &cgroup).with_context(|| {
            format!(
                "attach {name} to cgroup {}: (fix: a cgroup v2 directory and root with \
                 CAP_BPF/CAP_NET_ADMIN)",
                cgroup_dir.display()
            )
        })?;
        let path = pin_dir.join(link_name);
        link.pin(&path).with_context(|| {
            format!(
                "pin link {} (fix: bpffs mounted at /sys/fs/bpf, writable by root)",
                path.display()
            )
        })?;
    }
    Ok(jail_maps)
}

/// For `claude-jail check`: loads the object, has the kernel verify the five programs, and
/// attaches each to `cgroup_dir` (an empty cgroup made for the check). Nothing is pinned: the
/// links are dropped, and so detached, on return.
pub fn probe(cgroup_dir: &Path) -> Result<()> {
    let mut ebpf = EbpfLoader::new()
        .load(OBJECT)
        .map_err(|e| anyhow!(e).context("load the eBPF object: the kernel refused it"))?;
    for (name, _) in PROGRAMS {
        load_program(&mut ebpf, name)?;
    }
    let cgroup = fs::File::open(cgroup_dir)
        .with_context(|| format!("open cgroup {}", cgroup_dir.display()))?;
    for (name, _) in PROGRAMS {
        attach_program(&mut ebpf, name, &cgroup)
            .with_context(|| format!("attach {name} to cgroup {}", cgroup_dir.display()))?;
    }
    Ok(())
}

fn load_program(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the embedded object has no program {name}"))?;
    let res = match prog {
        aya::programs::Program::CgroupSockAddr(p) => p.load(),
        aya::programs::Program::CgroupSkb(p) => p.load(),
        _ => bail!("program {name} has an unexpected type"),
    };
    res.map_err(|e| match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => anyhow!(
            "the verifier rejected {name} ({io_error}); this build does not fit this kernel: \
             report it with the log below\n{verifier_log}"
        ),
        e => anyhow!(e).context(format!("load program {name}")),
    })
}

/// Attaches one program and hands back its link as an `FdLink`, ready to pin. Link-based cgroup
/// attachment (bpf_link_create) runs the program together with any other program attached in the
/// hierarchy: a descendant cgroup can add programs but never replace this one (no
/// BPF_F_ALLOW_OVERRIDE).
fn attach_program(ebpf: &mut Ebpf, name: &str, cgroup: &fs::File) -> Result<FdLink> {
    let prog = ebpf.program_mut(name).expect("loaded above");
    let link: FdLink = match prog {
        aya::programs::Program::CgroupSockAddr(p) => {
            let p: &mut CgroupSockAddr = p;
            let id = p.attach(cgroup, CgroupAttachMode::Single)?;
            p.take_link(id)?.try_into()?
        }
        aya::programs::Program::CgroupSkb(p) => {
            let p: &mut CgroupSkb = p;
            let id = p.attach(
                cgroup,
                CgroupSkbAttachType::Egress,
                CgroupAttachMode::Single,
            )?;
            p.take_link(id)?.try_into()?
        }
        _ => bail!("program {name} has an unexpected type"),
    };
    Ok(link)
}

/// Removes every pin in `pin_dir` and the directory. Removing a link's last pin detaches it.
pub fn unpin(pin_dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("read {}", pin_dir.display())),
    };
    // Links first, so no program runs against maps being removed (it would keep them alive
    // anyway; this is for the reader's peace of mind).
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort_by_key(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link-"))
    });
    for path in paths {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("unpin {}", path.display())),
        }
    }
    match fs::remove_dir(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", pin_dir.display())),
    }
}

/// Whether all five links of a pinned instance are present.
pub fn links_pinned(pin_dir: &Path) -> bool {
    PROGRAMS.iter().all(|(_, link)| pin_dir.join(link).exists())
}

/// The policy and counter maps of one attached instance.
pub struct JailMaps {
    /// The six policy maps by name, each described once in [`MapEntries::each`]'s table.
    policy: BTreeMap<&'static str, Map>,
    counters: PerCpuArray<MapData, u64>,
    /// Taken by the event reader; `None` in instances opened for reload or status.
    events: Option<RingBuf<MapData>>,
}

/// Per-verdict counters of one instance, summed over CPUs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub allowed: [u64; 5],
    pub refused: [u64; 5],
    pub events_dropped: u64,
}

impl Counters {
    pub fn total_allowed(&self) -> u64 {
        self.allowed.iter().sum()
    }
    pub fn total_refused(&self) -> u64 {
        self.refused.iter().sum()
    }
}

fn map_from(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("the embedded object has no map {name}"))
}

fn pinned(dir: &Path, name: &str) -> Result<aya::maps::Map> {
    let path = dir.join(name);
    let data =
        MapData::from_pin(&path).with_context(|| format!("open pinned map {}", path.display()))?;
    aya::maps::Map::from_map_data(data).with_context(|| format!("pinned map {}", path.display()))
}

impl JailMaps {
    /// Takes the maps out of a freshly loaded object and pins each in `pin_dir`.
    fn take_and_pin(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<JailMaps> {
        Self::build(
            |name| {
                let map = map_from(ebpf, name)?;
                let path = pin_dir.join(name);
                map.pin(&path).with_context(|| {
                    format!(
                        "pin map {} (fix: bpffs mounted at /sys/fs/bpf, writable by root)",
                        path.display()
                    )
                })?;
                Ok(map)
            },
            true,
        )
    }

    /// Opens the maps pinned in `pin_dir` (for reload and status; needs root).
    pub fn open(pin_dir: &Path) -> Result<JailMaps> {
        Self::build(|name| pinned(pin_dir, name), false)
    }

    fn build(
        mut get: impl FnMut(&str) -> Result<aya::maps::Map>,
        with_events: bool,
    ) -> Result<JailMaps> {
        let mut policy = BTreeMap::new();
        for name in MapEntries::each(&mut Names) {
            policy.insert(name, get(name)?);
        }
        // Each map of the type and key size its entries need, checked once here.
        for checked in MapEntries::each(&mut Check(&policy)) {
            checked?;
        }
        Ok(JailMaps {
            policy,
            counters: get(maps::COUNTERS)?.try_into()?,
            events: if with_events {
                Some(get(maps::EVENTS)?.try_into()?)
            } else {
                None
            },
        })
    }

    /// The ring buffer of refusal events, for the launcher's reader (once).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Brings the maps to `entries` so that, at every instant, a destination allowed both before
    /// and after stays allowed and one refused both before and after stays refused:
    ///
    /// 1. add the new allow entries; 2. add the new deny entries; 3. remove the old deny entries;
    /// 4. remove the old allow entries.
    ///
    /// Between steps the allow set is a subset of old ∪ new (never matches a destination refused
    /// both times), the deny set a superset of old or of new; an old allow leaves only after the
    /// old deny it overrode is gone. Entries present in both keep their key (updated in place).
    ///
    /// So each map must hold the old and the new entries at once: that is checked first
    /// ([`MapEntries::reload_over_capacity`]), and a policy that would overflow a map is refused
    /// before anything is changed, rather than failing half-way.
    pub fn apply(&mut self, e: &MapEntries) -> Result<usize> {
        let current = self.check_room(e)?;
        self.apply_checked(&current, e)
    }

    /// Refuses `e` if bringing the maps to it would overflow one of them (see [`Self::apply`]).
    /// Changes nothing, and returns the keys now in the maps for [`Self::apply_checked`]. A caller
    /// that updates several instances checks each one first.
    pub fn check_room(&self, e: &MapEntries) -> Result<MapEntries> {
        let current = self.read_keys()?;
        match e.reload_over_capacity(&current) {
            Some(msg) => bail!("{msg}"),
            None => Ok(current),
        }
    }

    /// [`Self::apply`] after [`Self::check_room`] returned `current` (the maps' keys, read once:
    /// the stale entries are those of `current` that `e` does not have). The caller holds the
    /// jail's lock, so nothing else changed the maps in between.
    pub fn apply_checked(&mut self, current: &MapEntries, e: &MapEntries) -> Result<usize> {
        let mut changes = 0;
        // Add to every map; then remove from the deny maps; then from the allow maps.
        for remove in [
            None,
            Some((Action::Deny, current)),
            Some((Action::Allow, current)),
        ] {
            let mut step = Update {
                maps: &mut self.policy,
                new: e,
                remove,
                done: Ok(0),
            };
            MapEntries::each(&mut step);
            changes += step.done?;
        }
        Ok(changes)
    }

    /// The keys currently in the maps (the values, which [`Self::read_entries`] also reads, are
    /// left at 0): one syscall per entry, not two.
    fn read_keys(&self) -> Result<MapEntries> {
        self.read(false)
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let mut c = Counters::default();
        let sum = |i: u32| -> Result<u64> {
            let values = self.counters.get(&i, 0).context("read COUNTERS")?;
            Ok(values.iter().sum())
        };
        for hook in Hook::ALL {
            c.allowed[hook as usize] = sum(counter_index(hook, VERDICT_ALLOW))?;
            c.refused[hook as usize] = sum(counter_index(hook, VERDICT_DENY))?;
        }
        c.events_dropped = sum(COUNTER_EVENTS_DROPPED)?;
        debug_assert_eq!(COUNTER_EVENTS_DROPPED + 1, COUNTER_COUNT);
        Ok(c)
    }

    /// The entries currently in the maps, in the same shape the policy compiles to.
    pub fn read_entries(&self) -> Result<MapEntries> {
        self.read(true)
    }

    fn read(&self, values: bool) -> Result<MapEntries> {
        let mut read = Read {
            maps: &self.policy,
            values,
            into: MapEntries::default(),
            done: Ok(()),
        };
        MapEntries::each(&mut read);
        read.done?;
        Ok(read.into)
    }
}

/// One policy map, typed by its key ([`MapKey`]): an LPM trie or a hash map.
enum PolicyMap<T, K: MapKey> {
    Lpm(LpmTrie<T, K::Data, RuleId>),
    Hash(HashMap<T, K::Data, RuleId>),
}

impl<T, K: MapKey> PolicyMap<T, K> {
    /// `map` (a `&Map` or a `&mut Map`) as the kind of map `K` keys.
    fn of<M>(map: M) -> Result<Self>
    where
        LpmTrie<T, K::Data, RuleId>: TryFrom<M, Error = aya::maps::MapError>,
        HashMap<T, K::Data, RuleId>: TryFrom<M, Error = aya::maps::MapError>,
    {
        Ok(if K::LPM {
            PolicyMap::Lpm(map.try_into()?)
        } else {
            PolicyMap::Hash(map.try_into()?)
        })
    }
}

fn no_map(name: &str) -> anyhow::Error {
    anyhow!("no policy map {name}")
}

impl<T: Borrow<MapData>, K: MapKey> PolicyMap<T, K> {
    /// Every key (and, with `values`, its rule id; else 0).
    fn read(&self, values: bool) -> Result<Vec<(K, RuleId)>> {
        Ok(match (self, values) {
            (PolicyMap::Lpm(m), false) => all_keys(m.keys())?
                .into_iter()
                .map(|k| (K::from_parts(k.prefix_len(), k.data()), 0))
                .collect(),
            (PolicyMap::Lpm(m), true) => all_keys(m.iter())?
                .into_iter()
                .map(|(k, v)| (K::from_parts(k.prefix_len(), k.data()), v))
                .collect(),
            (PolicyMap::Hash(m), false) => all_keys(m.keys())?
                .into_iter()
                .map(|k| (K::from_parts(0, k), 0))
                .collect(),
            (PolicyMap::Hash(m), true) => all_keys(m.iter())?
                .into_iter()
                .map(|(k, v)| (K::from_parts(0, k), v))
                .collect(),
        })
    }
}

impl<T: BorrowMut<MapData>, K: MapKey> PolicyMap<T, K> {
    fn insert(&mut self, key: &K, rule: RuleId) -> Result<(), aya::maps::MapError> {
        let (len, data) = key.parts();
        match self {
            PolicyMap::Lpm(m) => m.insert(&Key::new(len, data), rule, 0),
            PolicyMap::Hash(m) => m.insert(data, rule, 0),
        }
    }

    fn remove(&mut self, key: &K) -> Result<(), aya::maps::MapError> {
        let (len, data) = key.parts();
        match self {
            PolicyMap::Lpm(m) => m.remove(&Key::new(len, data)),
            PolicyMap::Hash(m) => m.remove(&data),
        }
    }
}

/// The names of the policy maps.
struct Names;

impl EachMap for Names {
    type Out = &'static str;
    fn map<K: MapKey>(&mut self, m: &MapDesc<K>) -> &'static str {
        m.name
    }
}

/// Whether each policy map opens with its key type.
struct Check<'a>(&'a BTreeMap<&'static str, Map>);

impl EachMap for Check<'_> {
    type Out = Result<()>;
    fn map<K: MapKey>(&mut self, m: &MapDesc<K>) -> Result<()> {
        let map = self.0.get(m.name).ok_or_else(|| no_map(m.name))?;
        PolicyMap::<_, K>::of(map)
            .map(|_| ())
            .with_context(|| format!("policy map {}", m.name))
    }
}

/// One step of an update ([`JailMaps::apply`]) over each map it concerns, in the table's order,
/// until one fails; counts the entries written or removed.
struct Update<'a> {
    maps: &'a mut BTreeMap<&'static str, Map>,
    /// The entries after the update.
    new: &'a MapEntries,
    /// `None`: add (or update in place) the entries of `new` to every map. `Some((action,
    /// current))`: remove from the maps of `action` the keys of `current` that `new` does not
    /// have.
    remove: Option<(Action, &'a MapEntries)>,
    done: Result<usize>,
}

impl EachMap for Update<'_> {
    type Out = ();
    fn map<K: MapKey>(&mut self, m: &MapDesc<K>) {
        let Ok(n) = self.done else { return };
        if self.remove.is_some_and(|(action, _)| action != m.action) {
            return;
        }
        let new = (m.get)(self.new);
        let mut step = || -> Result<usize> {
            let map = self.maps.get_mut(m.name).ok_or_else(|| no_map(m.name))?;
            let mut map = PolicyMap::<_, K>::of(map)?;
            let Some((_, current)) = self.remove else {
                for (k, &rule) in new {
                    map.insert(k, rule)
                        .with_context(|| format!("insert into {} (map full?)", m.name))?;
                }
                return Ok(new.len());
            };
            let stale: Vec<&K> = (m.get)(current)
                .keys()
                .filter(|k| !new.contains_key(k))
                .collect();
            for k in &stale {
                remove_ok_if_gone(map.remove(k))
                    .with_context(|| format!("remove from {}", m.name))?;
            }
            Ok(stale.len())
        };
        self.done = step().map(|changed| n + changed);
    }
}

/// Reads the keys (with `values`, and their rule ids) of every map into `into`.
struct Read<'a> {
    maps: &'a BTreeMap<&'static str, Map>,
    values: bool,
    into: MapEntries,
    done: Result<()>,
}

impl EachMap for Read<'_> {
    type Out = ();
    fn map<K: MapKey>(&mut self, m: &MapDesc<K>) {
        if self.done.is_err() {
            return;
        }
        let read = || -> Result<Vec<(K, RuleId)>> {
            let map = self.maps.get(m.name).ok_or_else(|| no_map(m.name))?;
            PolicyMap::<_, K>::of(map)?
                .read(self.values)
                .with_context(|| format!("read {}", m.name))
        };
        match read() {
            Ok(entries) => (m.get_mut)(&mut self.into).extend(entries),
            Err(e) => self.done = Err(e),
        }
    }
}

/// Every key of a map, or an error: never a listing cut short (aya's key iterator ends after its
/// first error, which `filter_map(ok)` would take for the end of the map).
fn all_keys<K>(keys: impl Iterator<Item = Result<K, aya::maps::MapError>>) -> Result<Vec<K>> {
    keys.map(|k| k.context("list the map's keys")).collect()
}

fn remove_ok_if_gone(r: Result<(), aya::maps::MapError>) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.kind() == io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        Err(e) => Err(e).context("remove a map entry"),
    }
}

#[cfg(test)]
mod tests {
    use object::{Object, ObjectSection};

    #[test]
    fn a_failed_key_listing_is_an_error_not_the_end_of_the_map() {
        let err = || {
            aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_get_next_key",
                io_error: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            })
        };
        let keys = vec![Ok(1u32), Ok(2), Err(err()), Ok(3)];
        let e = super::all_keys(keys.into_iter()).unwrap_err();
        assert!(format!("{e:#}").contains("list the map's keys"), "{e:#}");
        let ok = super::all_keys(vec![Ok(1u32), Ok(2), Ok(3)].into_iter());
        assert_eq!(ok.unwrap(), vec![1, 2, 3]);
    }

    /// The object `cargo xtask build-ebpf` built, as embedded: one section per program, with the
    /// names the kernel attach types need.
    #[test]
    fn the_embedded_object_has_the_five_program_sections() {
        let elf =
            object::File::parse(super::OBJECT).expect("the embedded eBPF object is an ELF file");
        let names: Vec<&str> = elf.sections().filter_map(|s| s.name().ok()).collect();
        for section in [
            "cgroup/connect4",
            "cgroup/sendmsg4",
            "cgroup/connect6",
            "cgroup/sendmsg6",
            "cgroup_skb/egress",
        ] {
            assert!(
                names.contains(&section),
                "section {section} missing: {names:?}"
            );
        }
        assert!(names.contains(&"license"), "the license section: {names:?}");
    }
}
