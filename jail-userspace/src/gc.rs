//! Removing what a launcher that is gone left behind: its registry record, pins, cgroups, run
//! directory and pasta. A jail whose cgroup still holds processes is never touched: its pinned
//! programs keep filtering them.
use std::{fs, path::Path, process::ExitCode, time::Duration};

use anyhow::Result;

use crate::{
    bpf,
    cgroup::Cgroup,
    netns,
    state::{self, Paths},
};

/// What `collect` found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Ids whose state was removed.
    pub removed: Vec<String>,
    /// Ids left alone because processes are still in the jail cgroup.
    pub populated: Vec<String>,
}

/// Removes the state of every jail whose launcher is gone and whose jail cgroup is empty, and of
/// every leftover directory without a record. Problems are printed as warnings when `verbose`.
pub fn collect(paths: &Paths, verbose: bool) -> Report {
    let mut report = Report::default();
    let mut live = Vec::new();
    if let Ok(records) = state::list_records(paths) {
        for rec in records.into_iter().flatten() {
            if state::pid_alive(rec.launcher_pid) {
                live.push(rec.id);
            }
        }
    }
    // Every id that has state anywhere.
    let mut ids: Vec<String> = Vec::new();
    for dir in [
        paths.cgroup_root.clone(),
        paths.pins.clone(),
        paths.registry(),
    ] {
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.strip_suffix(".json").unwrap_or(&name).to_string();
                if is_id(&id) && !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
    }
    for id in ids.into_iter().filter(|id| !live.contains(id)) {
        // Read again now: a launch registers before it creates anything, so a record written
        // since the list above was read belongs to a launch still being built.
        let recorded = match fs::read(paths.record(&id)) {
            Ok(b) => match serde_json::from_slice::<state::JailRecord>(&b) {
                Ok(rec) if state::pid_alive(rec.launcher_pid) => continue,
                _ => true,
            },
            Err(_) => false,
        };
        if !paths.has_kernel_state() {
            // A user's own jail (nftables mode): its run directory and record are all there is;
            // its processes died with its launcher (parent-death signals).
            let r = fs::remove_dir_all(paths.jail_run(&id))
                .or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                })
                .map_err(anyhow::Error::from)
                .and_then(|()| state::remove_record(paths, &id));
            match r {
                Ok(()) => report.removed.push(id),
                Err(e) if verbose => eprintln!("claude-jail: warning: gc {id}: {e:#}"),
                Err(_) => {}
            }
            continue;
        }
        let jail = Cgroup::existing(&paths.jail_cgroup(&id));
        if jail.path().exists() && jail.populated().unwrap_or(true) {
            report.populated.push(id);
            continue;
        }
        // Without a record, the cgroups are not this registry's to take: every launch registers
        // before it creates them and unregisters only after removing them, so they belong to a
        // launcher with another /run (another mount namespace), maybe still building its jail.
        // Its pins and run directory, if any, are in this registry's own directories: removed.
        let r = if recorded {
            remove(paths, &id)
        } else {
            remove_private(paths, &id)
        };
        match r {
            Ok(()) => report.removed.push(id),
            Err(e) if verbose => eprintln!("claude-jail: warning: gc {id}: {e:#}"),
            Err(_) => {}
        }
    }
    report
}

fn is_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Removes one jail's state (its jail cgroup must be empty).
fn remove(paths: &Paths, id: &str) -> Result<()> {
    let pasta_cg = Cgroup::existing(&paths.pasta_cgroup(id));
    if pasta_cg.path().exists() {
        pasta_cg.kill_all(Duration::from_secs(5))?;
    }
    remove_private(paths, id)?;
    // The jail's v1 pids and memory cgroups (hybrid layout): empty, as its jail cgroup is.
    for v1 in crate::cgroup::limit_v1_mounts() {
        let dir = v1.join(crate::cgroup::PARENT).join(id);
        remove_dir(&dir.join("jail"))?;
        remove_dir(&dir)?;
    }
    Cgroup::existing(&paths.cgroup_root.join(id)).remove()?;
    state::remove_record(paths, id)
}

/// Removes what a jail has under this registry's own directories: namespace file, pins, run
/// directory.
fn remove_private(paths: &Paths, id: &str) -> Result<()> {
    let run = paths.jail_run(id);
    netns::unbind_netns(&run.join("netns"))?;
    bpf::unpin(&paths.jail_pins(id))?;
    bpf::unpin(&paths.pasta_pins(id))?;
    remove_dir(&paths.pins.join(id))?;
    if run.exists() {
        fs::remove_dir_all(&run)?;
    }
    Ok(())
}

fn remove_dir(p: &Path) -> Result<()> {
    match fs::remove_dir(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// `claude-jail gc`.
pub fn command() -> Result<ExitCode> {
    let paths = Paths::for_caller(crate::caller::Caller::current())?;
    let report = collect(&paths, true);
    for id in &report.removed {
        println!("removed stale jail {id}");
    }
    for id in &report.populated {
        println!("kept jail {id}: its launcher is gone but processes are still in it (its programs still filter them)");
    }
    if report.removed.is_empty() && report.populated.is_empty() {
        println!("nothing to remove");
    }
    Ok(ExitCode::SUCCESS)
}
