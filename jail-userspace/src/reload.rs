//! Bringing running jails to a new policy without restarting anything: `claude-jail reload`,
//! SIGUSR1 to a launcher, and the launcher's own reaction to host network changes.
//!
//! The registry record names the configuration a jail follows (`conf`); `reload --config FILE`
//! makes every running jail follow FILE from then on. Map updates go through
//! [`bpf::JailMaps::apply`] (add before remove), under a per-jail lock so that two writers (the
//! reload command and the launcher reacting to a route change) never interleave.
use std::{
    fs::{File, OpenOptions},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};

use crate::{
    bpf::JailMaps,
    conf::{self, Conf, Trust},
    hostnet::HostNet,
    launch, netns,
    policy::Policy,
    state::{self, JailRecord, Paths},
};

/// Holds a jail's update lock while alive.
pub struct JailLock(#[allow(dead_code)] Flock<File>);

pub fn lock(paths: &Paths, id: &str) -> Result<JailLock> {
    let path = paths.jail_run(id).join("lock");
    let f = OpenOptions::new()
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

/// The jail's and pasta's policies for `conf` on this host (pasta's resolvers from the host's
/// resolv.conf, as at launch).
pub fn compile(conf: &Conf, host: &HostNet, rec: &JailRecord) -> (Policy, Policy) {
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    launch::policies(conf, host, &netns::resolvers(&resolv), &rec.own_addrs)
}

/// Compiles `conf` against the host and brings one jail's maps (its own first, then pasta's) to
/// it. Returns the jail's new policy. The caller holds the jail's lock ([`with_record`]).
pub fn apply(paths: &Paths, rec: &JailRecord, conf: &Conf, host: &HostNet) -> Result<Policy> {
    let id = &rec.id;
    let (jail, pasta) = compile(conf, host, rec);
    for p in [&jail, &pasta] {
        if let Some(msg) = p.map_entries().over_capacity() {
            bail!("{msg}");
        }
    }
    let mut jail_maps = JailMaps::open(&paths.jail_pins(id))?;
    let mut pasta_maps = JailMaps::open(&paths.pasta_pins(id))?;
    // Both sets must have room before either changes: never one updated and the other refused.
    let jail_now = jail_maps
        .check_room(jail.map_entries())
        .context("the jail's maps")?;
    let pasta_now = pasta_maps
        .check_room(pasta.map_entries())
        .context("pasta's maps")?;
    // The two instances are independent: update them side by side (each keeps its own
    // add-before-remove order), so 10,000 entries take effect in the time of one.
    let (j, p) = std::thread::scope(|s| {
        let p = s.spawn(|| pasta_maps.apply_checked(&pasta_now, pasta.map_entries()));
        let j = jail_maps.apply_checked(&jail_now, jail.map_entries());
        (j, p.join())
    });
    j.context("update the jail's maps")?;
    p.map_err(|_| anyhow::anyhow!("updating pasta's maps panicked"))?
        .context("update pasta's maps")?;
    Ok(jail)
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
    let Some(mut rec) = state::list_records(paths)?
        .into_iter()
        .flatten()
        .find(|r| r.id == id)
    else {
        return Ok(None);
    };
    let out = f(&mut rec)?;
    state::write_record(paths, &rec)?;
    Ok(Some(out))
}

/// Reads a jail's conf as `run` does (root-owned, refused when invalid).
pub fn load_conf(path: &Path) -> Result<Conf> {
    Ok(conf::load(path, Trust::Strict)?)
}

/// `claude-jail reload [--config FILE]`.
pub fn command(config: Option<std::path::PathBuf>) -> Result<std::process::ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!("only root can reload: the jails' pinned maps belong to root (fix: sudo claude-jail reload)");
    }
    let caller = crate::caller::Caller::current();
    let env_conf = std::env::var_os(conf::ENV_CONF);
    caller.check_conf_choice(config.as_deref(), env_conf.as_deref())?;
    let path = conf::conf_path(config, env_conf.as_deref());
    // Invalid: nothing changes anywhere.
    let conf = load_conf(&path).map_err(|e| match e.downcast::<conf::ConfError>() {
        Ok(c) => anyhow::Error::from(c.shown_to(caller)),
        Err(e) => e,
    })?;
    let switch = conf::jail_enabled(&conf, None)?;
    if !switch.enabled {
        println!(
            "claude-jail: {}: egress-jail = 0 applies to the next launch; running jails keep their jail",
            switch.source
        );
    }
    let paths = Paths::system()?;
    let host = HostNet::read().context("read the host's addresses and routes")?;
    let mut updated = 0;
    let mut failed = 0;
    for rec in state::list_records(&paths)?.into_iter().flatten() {
        if !rec.jailed || !state::pid_alive(rec.launcher_pid) {
            continue;
        }
        match apply_to_record(&paths, rec, &conf, &host) {
            Ok(true) => updated += 1,
            Ok(false) => {}
            Err(e) => {
                failed += 1;
                eprintln!("claude-jail: error: reload: {e:#}");
            }
        }
    }
    println!(
        "claude-jail: reloaded {updated} running jail{} from {}",
        if updated == 1 { "" } else { "s" },
        path.display()
    );
    Ok(if failed == 0 {
        crate::exit::Exit::Success
    } else {
        crate::exit::Exit::Failure
    }
    .into())
}

fn apply_to_record(paths: &Paths, rec: JailRecord, conf: &Conf, host: &HostNet) -> Result<bool> {
    // A jail still being built holds its lock: `with_record` waits for it, then takes the record
    // as it is now (the launch may also have failed and removed it).
    let id = rec.id.clone();
    let launcher = rec.launcher_pid;
    let done = with_record(paths, &id, |rec| {
        let policy = apply(paths, rec, conf, host)?;
        rec.conf = conf.path.display().to_string();
        rec.policy_digest = policy.digest();
        rec.conf_digest = crate::policy::Policy::build(conf, host).digest();
        Ok(())
    });
    match done {
        Ok(Some(())) => {}
        Ok(None) => return Ok(false),
        // A jail that ended while it was being reloaded (its pins and run directory go with it)
        // needs nothing.
        Err(_) if !state::pid_alive(launcher) || !paths.jail_run(&id).exists() => return Ok(false),
        Err(e) => return Err(e.context(format!("jail {id}"))),
    }
    // The launcher refreshes its own copy (rule names for events, the conf it follows).
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(launcher as i32),
        nix::sys::signal::Signal::SIGUSR1,
    );
    Ok(true)
}
