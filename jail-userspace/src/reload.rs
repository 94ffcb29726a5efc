//! Bringing running jails to a new policy without restarting anything: `claude-jail reload`,
//! SIGUSR1 to a launcher, and the launcher's own reaction to host network changes.
//!
//! The registry record names the configuration a jail follows (`conf`); `reload --config FILE`
//! makes every running jail follow FILE from then on. Map updates go through
//! [`bpf::JailMaps::apply`] (add before remove), under a per-jail lock so that two writers (the
//! reload command and the launcher reacting to a route change) never interleave.
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::{
    bpf::JailMaps,
    conf::{self, Conf, Trust},
    hostnet::HostNet,
    netns,
    policy::{self, Policy, RuleIds},
    state::{self, JailRecord, Paths},
};

/// The jail's and pasta's policies for `conf` on this host (pasta's resolvers from the host's
/// resolv.conf, as at launch), numbered with the jail's rule ids as saved now, and the table of
/// ids that goes with them ([`policy::policies`]).
pub fn compile(
    paths: &Paths,
    conf: &Conf,
    host: &HostNet,
    rec: &JailRecord,
) -> Result<(Policy, Policy, RuleIds)> {
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let ids = RuleIds::load(&policy::ids::path(&paths.jail_run(&rec.id)))?;
    policy::policies(conf, host, &netns::resolvers(&resolv), &rec.own_addrs, &ids)
}

/// Compiles `conf` against the host and brings one jail's maps (its own first, then pasta's) to
/// it. Returns the jail's new policy. The caller holds the jail's lock ([`with_record`]): the
/// table of rule ids read, extended and saved here is not changed by anyone else meanwhile.
///
/// An nftables jail's table is changed through its namespaces, which only its launcher holds
/// (`ns`): `claude-jail reload` asks the launcher ([`apply_to_record`]).
pub fn apply(
    paths: &Paths,
    rec: &JailRecord,
    conf: &Conf,
    host: &HostNet,
    ns: Option<&crate::userns::JailNs>,
) -> Result<Policy> {
    let id = &rec.id;
    let (jail, pasta, ids) = compile(paths, conf, host, rec)?;
    if rec.backend == crate::launch::Enforcement::Nftables.name() {
        let ns = ns.context("an nftables jail's table is changed by its launcher only")?;
        // Before the table refuses by the new rules: the launcher names refusals from it.
        ids.save(&policy::ids::path(&paths.jail_run(id)))?;
        // One table, replaced in one transaction: never a moment without rules. pasta has no
        // policy of its own in this mode.
        install_nft(ns, &jail)?;
        return Ok(jail);
    }
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
    // Before any map holds one of the new ids: the launcher describes the events from it.
    ids.save(&policy::ids::path(&paths.jail_run(id)))?;
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

/// Installs `policy` as the nftables table of the jail whose init is `init_pid` (nftables mode),
/// replacing the one it has, from a child that joins the jail's namespaces.
pub fn install_nft(ns: &crate::userns::JailNs, policy: &Policy) -> Result<()> {
    let ruleset = crate::nft::Ruleset::compile(policy.map_entries());
    crate::userns::in_jail(ns, || {
        let sock = crate::nft::open_socket()?;
        crate::nft::install(std::os::fd::AsFd::as_fd(&sock), &ruleset)?;
        Ok(((), None))
    })
    .map(|_| ())
}

/// Reads a jail's conf as `run` does (root-owned, refused when invalid).
pub fn load_conf(path: &Path) -> Result<Conf> {
    Ok(conf::load(path, Trust::Strict)?)
}

/// `claude-jail reload [--config FILE]`.
pub fn command(config: Option<std::path::PathBuf>) -> Result<std::process::ExitCode> {
    let caller = crate::caller::Caller::current();
    let env_conf = std::env::var_os(conf::ENV_CONF);
    caller.check_conf_choice(config.as_deref(), env_conf.as_deref())?;
    let path = conf::conf_path(config, env_conf.as_deref());
    // Invalid: nothing changes anywhere.
    let conf = load_conf(&path).map_err(|e| match e.downcast::<conf::ConfError>() {
        Ok(c) => anyhow::Error::from(c.shown_to(caller.delegated_uid())),
        Err(e) => e,
    })?;
    let switch = conf::jail_enabled(&conf, None)?;
    if !switch.enabled {
        println!(
            "claude-jail: {}: egress-jail = 0 applies to the next launch; running jails keep their jail",
            switch.source
        );
    }
    // Without root: the caller's own jails of the nftables mode.
    let paths = Paths::for_caller(caller)?;
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

/// An nftables jail: its launcher holds the jail's namespaces, so it applies the change. The
/// record names the conf to follow; SIGUSR1 makes the launcher read it; the record's digest
/// says when it is done.
fn ask_launcher(paths: &Paths, rec: JailRecord, conf: &Conf, host: &HostNet) -> Result<bool> {
    let id = rec.id.clone();
    let want = compile(paths, conf, host, &rec)?.0.digest();
    let asked = state::with_record(paths, &id, |r| {
        r.conf = conf.path.display().to_string();
        Ok(())
    })?;
    if asked.is_none() {
        return Ok(false);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(rec.launcher_pid as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .with_context(|| format!("jail {id}: signal its launcher {}", rec.launcher_pid))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let now = state::list_records(paths)?
            .into_iter()
            .flatten()
            .find(|r| r.id == id);
        match now {
            None => return Ok(false),
            Some(r) if r.policy_digest == want => return Ok(true),
            Some(_) if std::time::Instant::now() > deadline => bail!(
                "jail {id}: its launcher did not apply the policy within 5 s (its event log \
                 says why: claude-jail events --jail {id})"
            ),
            Some(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

fn apply_to_record(paths: &Paths, rec: JailRecord, conf: &Conf, host: &HostNet) -> Result<bool> {
    // A jail still being built holds its lock: `with_record` waits for it, then takes the record
    // as it is now (the launch may also have failed and removed it).
    let id = rec.id.clone();
    let launcher = rec.launcher_pid;
    if rec.backend == crate::launch::Enforcement::Nftables.name() {
        return ask_launcher(paths, rec, conf, host);
    }
    let done = state::with_record(paths, &id, |rec| {
        let policy = apply(paths, rec, conf, host, None)?;
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
