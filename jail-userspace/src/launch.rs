//! `claude-jail run`: build the jail around a command, run it, tear everything down.
//!
//! A launch is four phases, each a function below with its contract:
//!
//! 1. [`gather`]: the caller's choices (conf, on/off switch, target user, command, environment);
//! 2. [`run_unjailed`], when the switch is off: the command with host networking, recorded;
//! 3. [`build`]: the jail around a waiting init. Preflight ([`crate::preflight`]), the jail's and
//!    pasta's policies, cgroups, the eBPF programs attached and pinned, the init cloned into new
//!    namespaces, pasta attached to its network namespace, the registry record;
//! 4. [`run_jailed`]: the init starts the command; the supervisor ([`crate::supervise`]) follows
//!    signals, reloads and the host's changes until it exits; then everything is torn down.
//!
//! Every failure before the command starts is a refusal: exit 125, the step that failed, its fix,
//! and the escape hatch ([`HATCH`], appended once by [`command`]). Teardown ([`Built`]) runs on every
//! exit path: kill what is left in the jail cgroup (cgroup.kill), stop pasta, unmount, unpin,
//! remove cgroups, run directory and registry record.
use std::{
    ffi::OsString,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use nix::{
    sys::{
        signal::{kill, SigSet, Signal},
        signalfd::{SfdFlags, SignalFd},
        wait::waitpid,
    },
    unistd::Pid,
};

use crate::{
    bpf,
    caller::Caller,
    cgroup,
    conf::{self, PortSpec, Trust},
    events,
    exit::Exit,
    hostnet::HostNet,
    jail, netns, pasta,
    policy::{self, Policy, RuleIds},
    preflight,
    state::{self, JailLock, JailRecord, Paths},
    supervise, user,
};

/// The escape hatch: the one sentence every refusal ends with.
pub const HATCH: &str = "to run without the egress jail: CLAUDE_SANDBOX_EGRESS_JAIL=0, or \
                         `egress-jail = 0` in the conf";

/// How a refusal reads: the error with each cause once (`{:#}`), then the escape hatch.
pub fn refusal(e: &anyhow::Error) -> String {
    format!("claude-jail: error: {e:#}\nclaude-jail: {HATCH}")
}

pub struct RunArgs {
    pub config: Option<PathBuf>,
    pub user: Option<String>,
    /// A descriptor with the user's environment (`run --env-fd`).
    pub env_fd: Option<i32>,
    pub command: Vec<OsString>,
}

/// Runs the command; the exit status is the command's, or 125 when the jail could not be built.
pub fn command(args: RunArgs) -> ExitCode {
    let code = match launch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", refusal(&e));
            Exit::JailFailed.code()
        }
    };
    crate::profile::mark("summary");
    Exit::Command(code).into()
}

fn launch(args: RunArgs) -> Result<i32> {
    // Blocked from the start, and so in the jail's init from its birth: a Ctrl-C or SIGTERM while
    // the jail is being built is read (below) before the command would start, and a SIGTERM
    // forwarded to the init is queued for it, never discarded.
    let signals = block_signals()?;
    let inputs = gather(args)?;
    crate::profile::mark("gather");
    if !inputs.switch.enabled {
        return run_unjailed(inputs, &signals);
    }
    let choice = choose_backend(&inputs.conf, &preflight::Facts::read())?;
    let jail = match choice.backend {
        Enforcement::Ebpf => build(inputs, &choice.why)?,
        Enforcement::Nftables => build_nft(inputs, &choice.why).map_err(|e| {
            // Chosen by `auto` because eBPF could not load: the refusal names that way too,
            // with its own fix.
            match &choice.ebpf_refused {
                Some(ebpf) => e.context(format!(
                    "neither backend can enforce the jail here. eBPF: {ebpf:#}. nftables"
                )),
                None => e,
            }
        })?,
    };
    run_jailed(jail, &signals)
}

/// The backend of a launch ([`choose_backend`]).
pub struct Choice {
    pub backend: Enforcement,
    /// Why: the conf's line, or what `auto` found.
    pub why: String,
    /// Why `auto` did not take eBPF, when it took nftables instead.
    pub ebpf_refused: Option<anyhow::Error>,
}

/// What enforces a jail's policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// The cgroup eBPF programs (root with CAP_BPF or CAP_SYS_ADMIN in the initial user
    /// namespace).
    Ebpf,
    /// An nftables table in the jail's own network namespace, owned by a user namespace of its
    /// own: the rootless mode.
    Nftables,
}

impl Enforcement {
    pub fn name(self) -> &'static str {
        match self {
            Enforcement::Ebpf => "ebpf",
            Enforcement::Nftables => "nftables",
        }
    }
}

/// The one place the backend is chosen: the conf's `egress-backend` (default auto: eBPF when
/// this process can load it, nftables otherwise), with the reason, after the chosen backend's
/// preflight. Refuses, with the fix of each, when neither can be built. (`check` reports the
/// same choice.)
pub fn choose_backend(conf: &conf::Conf, facts: &preflight::Facts) -> Result<Choice> {
    let asked = conf.egress_backend.as_ref().map(|l| (l.value, l.line));
    let source = |line| {
        format!(
            "egress-backend = {} ({}:{line})",
            match asked {
                Some((b, _)) => b.name(),
                None => "auto",
            },
            conf.path.display()
        )
    };
    let chosen = |backend, why| Choice {
        backend,
        why,
        ebpf_refused: None,
    };
    match asked {
        Some((conf::Backend::Ebpf, line)) => {
            preflight::check(facts)?;
            Ok(chosen(Enforcement::Ebpf, source(line)))
        }
        Some((conf::Backend::Nftables, line)) => {
            preflight::check_nftables(facts)?;
            Ok(chosen(Enforcement::Nftables, source(line)))
        }
        Some((conf::Backend::Auto, _)) | None => {
            let ebpf = match preflight::privileges(facts) {
                // The privileges decide; the rest of eBPF's preflight refuses with its own fix
                // (a root that could load eBPF but lacks /dev/net/tun is not sent elsewhere).
                Ok(_) => {
                    preflight::check(facts)?;
                    return Ok(chosen(
                        Enforcement::Ebpf,
                        "auto: eBPF can be loaded here".into(),
                    ));
                }
                Err(e) => e,
            };
            match preflight::check_nftables(facts) {
                Ok(()) => Ok(Choice {
                    backend: Enforcement::Nftables,
                    why: format!("auto: eBPF cannot be loaded here ({})", first_clause(&ebpf)),
                    ebpf_refused: Some(ebpf),
                }),
                Err(nft) => bail!(
                    "neither backend can enforce the jail here. eBPF: {ebpf:#}. nftables: {nft:#}"
                ),
            }
        }
    }
}

/// The start of an error's message, up to its fix: what a one-line reason needs.
fn first_clause(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    s.split(" (fix:").next().unwrap_or(&s).to_string()
}

/// What a launch was asked to do, read once.
struct Inputs {
    caller: Caller,
    conf_path: PathBuf,
    conf: conf::Conf,
    switch: conf::JailSwitch,
    target: user::Target,
    command: Vec<OsString>,
    cwd: PathBuf,
    env: Vec<(OsString, OsString)>,
}

/// Phase 1. Must: read the caller's choices and hold them to the caller's rights ([`Caller`]: a
/// user behind sudo chooses neither the conf nor another user). This is the only place that reads
/// the launcher's environment. Must not: create anything, or decide from the command's
/// environment (the user's, handed over) anything of the launcher's own.
fn gather(args: RunArgs) -> Result<Inputs> {
    let caller = Caller::current();
    let env_conf = std::env::var_os(conf::ENV_CONF);
    caller.check_conf_choice(args.config.as_deref(), env_conf.as_deref())?;
    caller.check_user_choice(args.user.as_deref())?;
    let conf_path = conf::conf_path(args.config, env_conf.as_deref());
    let env_switch = std::env::var_os(conf::ENV_EGRESS_JAIL);
    let conf = match conf::load(&conf_path, Trust::Strict)
        .map_err(|e| e.shown_to(caller.delegated_uid()))
    {
        Ok(c) => c,
        // The escape hatch works even when the conf is what is broken: the jail is off, and the
        // conf's only other use is the jail.
        Err(e) if env_switch.as_deref() == Some(std::ffi::OsStr::new("0")) => {
            eprintln!(
                "claude-jail: warning: {:#} (not used: {}=0)",
                anyhow::Error::from(e),
                conf::ENV_EGRESS_JAIL
            );
            conf::Conf::empty(&conf_path)
        }
        Err(e) => return Err(e.into()),
    };
    let switch = conf::jail_enabled(&conf, env_switch.as_deref())?;
    let target = user::resolve(
        args.user.as_deref(),
        caller.delegated_uid(),
        std::env::var_os("SUDO_GID").as_deref(),
    )?;
    let command = if args.command.is_empty() {
        vec![OsString::from("claude")]
    } else {
        args.command
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| target.home.clone());
    let env = user::environment(
        &target,
        env_from(caller, args.env_fd, &conf)?,
        &crate::mask::MASKED_ENV,
    );
    Ok(Inputs {
        caller,
        conf_path,
        conf,
        switch,
        target,
        command,
        cwd,
        env,
    })
}

impl Inputs {
    /// The registry record of this launch, before anything of it exists.
    fn record(&self) -> Result<JailRecord> {
        Ok(JailRecord {
            id: state::new_id()?,
            jailed: self.switch.enabled,
            launcher_pid: std::process::id(),
            init_pid: 0,
            command_pid: 0,
            uid: self.target.uid,
            user: self.target.name.clone(),
            command: self
                .command
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            started: state::now_unix(),
            conf: self.conf_path.display().to_string(),
            switch_source: self.switch.source.clone(),
            policy_digest: String::new(),
            conf_digest: String::new(),
            pasta_pid: 0,
            own_addrs: Vec::new(),
            backend: Enforcement::Ebpf.name().into(),
            backend_reason: String::new(),
        })
    }
}

/// Phase 2. Must: run the command with host networking, as the conf or environment chose, and say
/// so on the terminal, in the registry, the event log and syslog; a host that cannot record still
/// runs it (the jail is off by the admin's choice) and warns. Must not: build any part of a jail.
fn run_unjailed(inputs: Inputs, signals: &SignalFd) -> Result<i32> {
    let mut record = inputs.record()?;
    let switch = &inputs.switch;
    eprintln!(
        "claude-jail: egress jail is OFF ({}): the command runs with host networking",
        switch.source
    );
    let spec = jail::Spec {
        target: inputs.target,
        argv: inputs.command,
        env: inputs.env,
        cwd: inputs.cwd,
        resolv_conf: PathBuf::new(),
        masks: Vec::new(),
        uncapped: Vec::new(),
        userns: false,
    };
    // The caller's registry and log: root's, or a user's own (no root: the nftables mode's).
    let paths = Paths::for_caller(inputs.caller).ok();
    if let Some(p) = &paths {
        let note = events::Record::note(
            &record.id,
            "unjailed-launch",
            1,
            format!(
                "egress jail off ({}): {} ran {} with host networking",
                switch.source,
                record.user,
                record.command.join(" ")
            ),
        );
        if let Err(e) = state::write_record(p, &record)
            .and_then(|()| events::append(&p.events_log(), std::slice::from_ref(&note)))
            .map(|()| events::to_syslog(&[note]))
        {
            eprintln!("claude-jail: warning: cannot record the unjailed launch: {e:#}");
        }
    }
    let child = jail::fork_command(&spec)?;
    record.command_pid = child.as_raw() as u32;
    if let Some(p) = &paths {
        let _ = state::write_record(p, &record);
    }
    let code = supervise::run(
        child,
        &mut supervise::Watch {
            signals,
            jail: None,
        },
    );
    if let Some(p) = &paths {
        let _ = state::remove_record(p, &record.id);
    }
    code
}

/// A jail around an init that waits for its go, and what tears it down.
struct Jail {
    /// First, so dropped first: teardown completes before the lock is released.
    built: Built,
    /// Held while the jail is built: a `reload` that finds the record waits for it, and so applies
    /// its policy after this launch's, never to maps that do not exist yet or are half removed.
    lock: Option<JailLock>,
    init: jail::Init,
    /// The eBPF mode's maps (their counters summarise the run); none in the nftables mode.
    maps: Option<bpf::JailMaps>,
    watch: supervise::JailWatch,
}

/// Phase 3. Must: refuse (with the fix) unless every part of the jail can be built, then build it
/// around an init that has run nothing: the policies attached before the init joins its cgroup,
/// pasta attached, the registry record written. Returns what [`run_jailed`] and teardown need.
/// Must not: let anything of the command run, or leave anything behind when it fails (each part
/// goes into [`Built`] as soon as it exists).
fn build(inputs: Inputs, why: &str) -> Result<Jail> {
    let Inputs {
        caller,
        conf,
        target,
        command,
        cwd,
        env,
        ..
    } = &inputs;
    let mut record = inputs.record()?;
    record.backend_reason = why.into();
    let pasta_bin = pasta::locate(*caller, conf).context("pasta is the jail's only way out")?;
    let paths = Paths::system()?;
    state::private_dir(&paths.run)?;
    bpf::ensure_bpffs(&paths.bpffs)?;
    state::private_dir(&paths.pins)?;
    crate::gc::collect(&paths, false);
    crate::profile::mark("preflight-gc");

    let host = HostNet::read().context("read the host's addresses and routes")?;
    let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let resolvers = netns::resolvers(&host_resolv);
    // The jail's own addresses are known once pasta has configured its namespace (below); until
    // then the jail runs nothing.
    let (jail_policy, pasta_policy, rule_ids) =
        policy::policies(conf, &host, &resolvers, &[], &RuleIds::default())?;
    if let Some(msg) = jail_policy.map_entries().over_capacity() {
        bail!("{msg}");
    }
    record.policy_digest = jail_policy.digest();
    record.conf_digest = Policy::build(conf, &host).digest();
    crate::profile::mark("hostnet-policy");

    let id = record.id.clone();
    let (mut built, run_dir, lock) = register(&paths, &record)?;

    let cgroup_fix = |whose| {
        format!("create {whose} cgroup (fix: a writable cgroup v2 hierarchy; claude-jail must run as root)")
    };
    let jail_cg = cgroup::Cgroup::create(&paths.jail_cgroup(&id))
        .with_context(|| cgroup_fix("the jail's"))?;
    built.cgroups.push(jail_cg.clone());
    let pasta_cg =
        cgroup::Cgroup::create(&paths.pasta_cgroup(&id)).with_context(|| cgroup_fix("pasta's"))?;
    built.cgroups.push(pasta_cg.clone());
    let v1_limits = limits(conf, &paths, &id, &jail_cg)?;
    built.v1_cgroups.extend(v1_limits.iter().cloned());
    crate::profile::mark("cgroups");

    // The ids the maps are about to hold, for the launcher's and reloads' descriptions of them.
    rule_ids.save(&policy::ids::path(&run_dir))?;
    built.pins.push(paths.jail_pins(&id));
    built.pins.push(paths.pasta_pins(&id));
    // The two instances are loaded, verified and filled in parallel: loading the object is
    // most of a launch (cargo xtask bench). Both pin directories are torn down on failure.
    let (jail_maps, pasta_maps) = std::thread::scope(|s| {
        let pasta = s.spawn(|| {
            bpf::attach(
                pasta_cg.path(),
                &paths.pasta_pins(&id),
                pasta_policy.map_entries(),
            )
        });
        let jail = bpf::attach(
            jail_cg.path(),
            &paths.jail_pins(&id),
            jail_policy.map_entries(),
        );
        let pasta = pasta
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the loader thread panicked")));
        (jail, pasta)
    });
    let mut jail_maps = jail_maps.context("attach the jail's eBPF programs")?;
    let mut pasta_maps = pasta_maps.context("attach pasta's eBPF programs")?;
    crate::profile::mark("attach-both");

    let resolv = write_resolv(&run_dir, &host_resolv)?;

    let spec = jail::Spec {
        target: target.clone(),
        argv: command.clone(),
        env: env.clone(),
        cwd: cwd.clone(),
        resolv_conf: resolv,
        masks: masks(target, conf, env)?,
        uncapped: jail::uncapped_copies(&run_dir)?,
        userns: false,
    };
    let init = jail::spawn(&spec)?;
    built.init = Some(init.pid);
    let init_pid = init.pid.as_raw() as u32;
    record.init_pid = init_pid;
    jail_cg
        .add_pid(init_pid)
        .context("move the jail's init into the jail cgroup")?;
    for dir in &v1_limits {
        cgroup::Cgroup::existing(dir)
            .add_pid(init_pid)
            .with_context(|| format!("move the jail's init into {}", dir.display()))?;
    }
    crate::profile::mark("namespaces");

    let netns_file = run_dir.join("netns");
    built.netns_file = Some(netns_file.clone());
    netns::bind_netns(init_pid, &netns_file)?;
    announce_ports(conf);
    let (host_ports, publish_ports) = conf_ports(conf);
    let pasta = pasta::start(
        &pasta_bin,
        &pasta::PastaConfig {
            netns_file: &netns_file,
            userns_file: None,
            pid_file: &run_dir.join("pasta.pid"),
            log_file: &run_dir.join("pasta.log"),
            host_ports: &host_ports,
            publish_ports: &publish_ports,
        },
        &pasta_cg.path().join("cgroup.procs"),
    )
    .context("start pasta")?;
    record.pasta_pid = pasta.pid;
    built.pasta = Some(pasta);
    crate::profile::mark("pasta-start");

    // Now that the namespace has its addresses: the policies that know them.
    record.own_addrs = netns::own_addresses(init_pid)?;
    let (jail_policy, pasta_policy, rule_ids) =
        policy::policies(conf, &host, &resolvers, &record.own_addrs, &rule_ids)?;
    rule_ids.save(&policy::ids::path(&run_dir))?;
    jail_maps.apply(jail_policy.map_entries())?;
    pasta_maps.apply(pasta_policy.map_entries())?;
    record.policy_digest = jail_policy.digest();
    state::write_record(&paths, &record)?;
    crate::profile::mark("policy-refill");

    let watch = supervise::JailWatch {
        paths,
        id: id.clone(),
        conf: inputs.conf,
        policy: jail_policy,
        netlink: Some(
            supervise::netlink_socket()
                .context("subscribe to the host's address and route changes (rtnetlink)")?,
        ),
        ns: None,
        events: supervise::Refusals::Ring(
            jail_maps
                .take_events()
                .context("the jail's event ring buffer")?,
        ),
        aggregator: events::Aggregator::new(&id),
        init_awaiting_command: Some(init.pid),
        log_error: None,
    };
    Ok(Jail {
        built,
        lock: Some(lock),
        init,
        maps: Some(jail_maps),
        watch,
    })
}

/// Phase 3, nftables mode ([`Enforcement::Nftables`]). Must: what [`build`] must, with the same
/// compiled policy installed as an nftables table in the jail's network namespace (from a child
/// that joins the jail's user namespace, [`crate::userns`]) before pasta attaches and before the
/// init runs anything; the registry and the log the caller's own when the caller is not root,
/// and hidden from the command. Must not: what [`build`] must not; nor run anything as root that
/// a normal user asked for.
fn build_nft(inputs: Inputs, why: &str) -> Result<Jail> {
    let Inputs {
        caller,
        conf,
        target,
        command,
        cwd,
        env,
        ..
    } = &inputs;
    let mut record = inputs.record()?;
    record.backend = Enforcement::Nftables.name().into();
    record.backend_reason = why.into();
    eprintln!("claude-jail: the jail is enforced by nftables in its own namespaces ({why})");
    let pasta_bin = pasta::locate(*caller, conf).context("pasta is the jail's only way out")?;
    let root = nix::unistd::geteuid().is_root();
    let paths = if root {
        let p = Paths::system()?;
        state::private_dir(&p.run)?;
        p
    } else {
        let p = Paths::for_user(target.uid, &target.home)?;
        state::private_dir(&p.run)?;
        p
    };
    crate::gc::collect(&paths, false);

    let host = HostNet::read().context("read the host's addresses and routes")?;
    let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let resolvers = netns::resolvers(&host_resolv);
    let (jail_policy, _, rule_ids) =
        policy::policies(conf, &host, &resolvers, &[], &RuleIds::default())?;
    record.policy_digest = jail_policy.digest();
    record.conf_digest = Policy::build(conf, &host).digest();

    let id = record.id.clone();
    let (mut built, run_dir, lock) = register(&paths, &record)?;

    let resolv = write_resolv(&run_dir, &host_resolv)?;
    let mut masks = masks(target, conf, env)?;
    if !root {
        // Made now, so that it exists (and is covered) before the command starts.
        state::private_dir(&paths.log)?;
        // The command runs as the user who owns these: it must neither rewrite its registry
        // record (which `reload` acts on) nor its audit trail.
        for dir in [&paths.run, &paths.log] {
            if dir.is_dir() {
                masks.push(crate::mask::Mask::private_dir(dir));
            }
        }
    }
    let spec = jail::Spec {
        target: target.clone(),
        argv: command.clone(),
        env: env.clone(),
        cwd: cwd.clone(),
        resolv_conf: resolv,
        masks,
        uncapped: jail::uncapped_copies(&run_dir)?,
        userns: true,
    };
    let init = jail::spawn(&spec)?;
    built.init = Some(init.pid);
    let init_pid = init.pid.as_raw() as u32;
    record.init_pid = init_pid;
    let ns = crate::userns::JailNs::open(init.pid)?;

    // The ids the table is about to refuse by, for the launcher's descriptions of refusals.
    rule_ids.save(&policy::ids::path(&run_dir))?;
    crate::reload::install_nft(&ns, &jail_policy).context("install the jail's nftables table")?;
    // Refusals fail at once also past the kernel's ICMP rate limit. Where /proc/sys is
    // read-only (a container), a refusal past the limit waits for a retransmission instead:
    // nothing more gets through, so the launch goes on.
    crate::userns::in_jail(&ns, || {
        match crate::nft::lift_icmp_rate_limit() {
            Err(e) if e.errno() == Some(nix::errno::Errno::EROFS) => {}
            r => r?,
        }
        Ok(((), None))
    })
    .context("lift the ICMP rate limit of the jail's network namespace")?;
    let log = crate::userns::in_jail(&ns, || {
        let reader = crate::nft::LogReader::open(crate::nft::DEFAULT_LOG_GROUP)?;
        Ok(((), Some(reader.into_fd())))
    })
    .context("open the jail's refusal log (nflog)")?
    .fd
    .context("no nflog socket came back")?;

    announce_ports(conf);
    let (host_ports, publish_ports) = conf_ports(conf);
    // The init's own files: pasta joins the user namespace first, and from inside it may look
    // into the init (same namespace, same uid, and dumpable until its go), not the launcher.
    let userns_file = PathBuf::from(format!("/proc/{init_pid}/ns/user"));
    let netns_file = PathBuf::from(format!("/proc/{init_pid}/ns/net"));
    let pasta = pasta::start_as_user(
        &pasta_bin,
        &pasta::PastaConfig {
            netns_file: &netns_file,
            userns_file: Some(&userns_file),
            pid_file: &run_dir.join("pasta.pid"),
            log_file: &run_dir.join("pasta.log"),
            host_ports: &host_ports,
            publish_ports: &publish_ports,
        },
    )
    .context("start pasta")?;
    record.pasta_pid = pasta.pid;
    built.pasta = Some(pasta);

    record.own_addrs = crate::userns::in_jail(&ns, || {
        let net = HostNet::read()?;
        Ok((net.addrs.iter().map(|(a, _)| a.addr()).collect(), None))
    })
    .context("read the jail's addresses")?
    .value;
    let (jail_policy, _, rule_ids) =
        policy::policies(conf, &host, &resolvers, &record.own_addrs, &rule_ids)?;
    rule_ids.save(&policy::ids::path(&run_dir))?;
    crate::reload::install_nft(&ns, &jail_policy).context("install the jail's nftables table")?;
    record.policy_digest = jail_policy.digest();
    state::write_record(&paths, &record)?;

    let jail_uid = target.uid;
    let watch = supervise::JailWatch {
        paths,
        id: id.clone(),
        conf: inputs.conf,
        policy: jail_policy,
        netlink: Some(
            supervise::netlink_socket()
                .context("subscribe to the host's address and route changes (rtnetlink)")?,
        ),
        events: supervise::Refusals::Nflog {
            log: crate::nft::LogReader::from_fd(log),
            uid: jail_uid,
        },
        ns: Some(ns),
        aggregator: events::Aggregator::new(&id),
        init_awaiting_command: Some(init.pid),
        log_error: None,
    };
    Ok(Jail {
        built,
        lock: Some(lock),
        init,
        maps: None,
        watch,
    })
}

/// Phase 4. Must: start the command only if no stop was asked while the jail was built, supervise
/// it to its exit, tear the jail down before returning, then summarise the refusals. Must not:
/// change the jail's policy other than through the supervisor's reload and host-change paths.
fn run_jailed(mut jail: Jail, signals: &SignalFd) -> Result<i32> {
    drop(jail.lock.take());
    if let Some(sig) = stop_asked(signals)? {
        eprintln!("claude-jail: {sig} while the jail was being built: nothing was run");
        return Ok(Exit::Signal(sig).code());
    }
    if let Err(e) = jail.init.go() {
        // The init is gone already: what it reported says why.
        jail.init.started()?;
        return Err(e);
    }
    jail.init.started()?;
    crate::profile::mark("jail-init");
    let mut watch = supervise::Watch {
        signals,
        jail: Some(jail.watch),
    };
    let code = supervise::run(jail.init.pid, &mut watch)?;
    crate::profile::mark("command");
    jail.built.init = None;
    let counters = jail
        .maps
        .as_ref()
        .and_then(|m| m.counters().ok())
        .unwrap_or_default();
    let id = jail.built.id.clone();
    drop(jail.built);
    crate::profile::mark("teardown");
    let (suppressed, aggregated, log_error) = watch.jail.map_or((0, 0, None), |j| {
        (j.aggregator.suppressed, j.aggregator.total, j.log_error)
    });
    if let Some(e) = log_error {
        eprintln!("claude-jail: warning: some refusals could not be written to the event log: {e}");
    }
    // The eBPF mode counts in the kernel; the nftables mode counts what its log delivered.
    let refused = match &jail.maps {
        Some(_) => counters.total_refused(),
        None => aggregated,
    };
    if let Some(line) = events::summary(&id, refused, counters.events_dropped, suppressed) {
        eprintln!("{line}");
    }
    Ok(code)
}

/// The broker sockets to cover in the jail, planned with the user's own rights.
fn masks(
    target: &user::Target,
    conf: &conf::Conf,
    env: &[(OsString, OsString)],
) -> Result<Vec<crate::mask::Mask>> {
    crate::mask::precreate(target).context("create the user's tmux socket directory")?;
    let plan = crate::mask::plan_as_user(
        target,
        &crate::mask::allowed(conf),
        crate::mask::agent_socket(env).as_deref(),
    )?;
    if let Some((dir, e)) = plan.unreadable.first() {
        bail!(
            "cannot list {} as {} ({e}), who may still enter it: a socket there (an ssh \
             ControlMaster) would stay reachable from the jail by its name (fix: let {} read it, \
             `chmod u+r {}`, or remove it)",
            dir.display(),
            target.name,
            target.name,
            dir.display()
        );
    }
    for w in &plan.warnings {
        eprintln!("claude-jail: warning: {w}");
    }
    Ok(plan.masks)
}

/// Registers a launch before anything of its jail exists (a concurrent launcher's gc then sees it
/// as live and never takes its parts while they are being built): its run directory, its lock
/// (held until the jail is complete), its record. Returns the teardown that owns them.
fn register(paths: &Paths, record: &JailRecord) -> Result<(Built, PathBuf, JailLock)> {
    let mut built = Built::default();
    built.paths = Some(paths.clone());
    built.id = record.id.clone();
    let run_dir = paths.jail_run(&record.id);
    state::private_dir(&run_dir)?;
    built.run_dir = Some(run_dir.clone());
    let lock = state::lock(paths, &record.id)?;
    state::write_record(paths, record)?;
    built.record = true;
    Ok((built, run_dir, lock))
}

/// The jail's resolv.conf (pasta's DNS forwarder, the host's search domains), in its run
/// directory, for the init to bind over /etc/resolv.conf.
fn write_resolv(run_dir: &Path, host_resolv: &str) -> Result<PathBuf> {
    let resolv = run_dir.join("resolv.conf");
    fs::write(&resolv, netns::jail_resolv_conf(host_resolv))?;
    fs::set_permissions(&resolv, fs::Permissions::from_mode(0o644))?;
    Ok(resolv)
}

/// The conf's `host-port` and `publish-port` values, for pasta.
fn conf_ports(conf: &conf::Conf) -> (Vec<PortSpec>, Vec<PortSpec>) {
    (
        conf.host_ports.iter().map(|l| l.value).collect(),
        conf.publish_ports.iter().map(|l| l.value).collect(),
    )
}

/// Says which host ports the conf opens between the jail's loopback and the host's.
fn announce_ports(conf: &conf::Conf) {
    for p in &conf.host_ports {
        eprintln!(
            "claude-jail: host-port {} ({}:{}): the jail's loopback reaches this port of the host's loopback",
            p.value, conf.path.display(), p.line
        );
    }
    for p in &conf.publish_ports {
        eprintln!(
            "claude-jail: publish-port {} ({}:{}): the host's loopback reaches this port of the jail",
            p.value, conf.path.display(), p.line
        );
    }
}

/// The jail's resource limits: `pids.max` (`pids-max`, default [`conf::DEFAULT_PIDS_MAX`]: a
/// fork bomb in the jail stops at it instead of exhausting the host's pid space) and, when the
/// conf sets `memory-max`, the memory limit. Returns the v1 cgroups made for them (hybrid
/// layout), which the init must join.
fn limits(
    conf: &conf::Conf,
    paths: &Paths,
    id: &str,
    jail_cg: &cgroup::Cgroup,
) -> Result<Vec<PathBuf>> {
    let pids = conf
        .pids_max
        .as_ref()
        .map_or(conf::PidsMax::Limit(conf::DEFAULT_PIDS_MAX), |l| l.value);
    // (key, knob, value, whether the conf asked for it)
    let mut wanted = vec![(
        "pids-max",
        cgroup::PIDS,
        pids.to_string(),
        conf.pids_max.is_some(),
    )];
    if let Some(m) = &conf.memory_max {
        wanted.push(("memory-max", cgroup::MEMORY, m.value.to_string(), true));
    }
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    let v2_root = paths.cgroup_root.parent().unwrap_or(Path::new("/"));
    let rel = Path::new(cgroup::PARENT).join(id).join("jail");
    let mut v1 = Vec::new();
    for (key, knob, value, asked) in wanted {
        let limit = match cgroup::limit(&mountinfo, v2_root, jail_cg, &rel, knob, &value) {
            Ok(l) => l,
            // The default pids-max where the tree does not allow it (a container whose cgroup
            // holds processes cannot enable a controller for its children): a warning, so
            // that the default never stops a jail that worked without it.
            Err(e) if !asked => {
                eprintln!(
                    "claude-jail: warning: the jail's processes are not limited (default \
                     {key} = {value}): {e}"
                );
                continue;
            }
            Err(e) => bail!(
                "limit the jail to {key} = {value}: {e} (fix: a cgroup tree where the {} \
                 controller can be enabled for claude-jail's cgroups, or `{key} = max` in {} to \
                 run without the limit)",
                knob.controller,
                conf.path.display()
            ),
        };
        match limit {
            cgroup::Limit::V1(dir) => v1.push(dir),
            // Said only when the conf asked for the limit: a host without the controller at
            // all would otherwise print this over the session's terminal at every launch, for a
            // default the admin never chose.
            cgroup::Limit::Unavailable if asked && value != "max" => eprintln!(
                "claude-jail: warning: no {} controller is mounted (cgroup v2 or v1): the jail is \
                 not limited ({key})",
                knob.controller
            ),
            _ => {}
        }
    }
    Ok(v1)
}

/// Where the command's environment comes from ([`user::EnvFrom`]): the descriptor the `claude`
/// shim hands over; else, when the command runs as the user who asked (behind sudo or pkexec,
/// or without root), what the launcher was given; else (root for another user) the allow list
/// and the conf's `pass-env`. Nothing read here decides anything of the launcher's own.
fn env_from(caller: Caller, env_fd: Option<i32>, conf: &conf::Conf) -> Result<user::EnvFrom> {
    if let Some(fd) = env_fd {
        let f = crate::sys::take_fd(fd).with_context(|| {
            format!("--env-fd {fd}: not an open descriptor (fix: leave out --env-fd, or open it)")
        })?;
        let env = user::read_env(std::fs::File::from(f))
            .with_context(|| format!("--env-fd {fd}: read the environment"))?;
        return Ok(user::EnvFrom::Own(env));
    }
    Ok(match caller {
        Caller::Delegated { .. } | Caller::Unprivileged { .. } => {
            user::EnvFrom::Own(std::env::vars_os().collect())
        }
        Caller::Root => user::EnvFrom::Admin {
            caller: std::env::vars_os().collect(),
            pass_env: conf.pass_env.iter().map(|l| l.value.clone()).collect(),
        },
    })
}

/// Blocks the signals the launcher handles and returns a signalfd for them. SIGTSTP (^Z) is
/// one of them: left at its default it stopped the launcher while a command that ignores it
/// kept running, unenforced by host changes; the supervisor freezes the jail first, then stops.
fn block_signals() -> Result<SignalFd> {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGTSTP,
    ] {
        set.add(s);
    }
    set.thread_block().context("block signals")?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).context("signalfd")
}

/// Reads the signals that arrived while the jail was being built: the first of SIGINT, SIGTERM,
/// SIGHUP or SIGQUIT means stop before the command starts. A SIGUSR1 (reload) or SIGTSTP (^Z) is
/// raised again, for the supervisor; SIGCHLD needs nothing (the supervisor polls its child).
fn stop_asked(signals: &SignalFd) -> Result<Option<Signal>> {
    let mut stop = None;
    let mut reload = false;
    let mut pause = false;
    while let Some(info) = signals.read_signal().context("read signalfd")? {
        match Signal::try_from(info.ssi_signo as i32) {
            Ok(s @ (Signal::SIGINT | Signal::SIGTERM | Signal::SIGHUP | Signal::SIGQUIT)) => {
                stop.get_or_insert(s);
            }
            Ok(Signal::SIGUSR1) => reload = true,
            Ok(Signal::SIGTSTP) => pause = true,
            _ => {}
        }
    }
    if reload {
        nix::sys::signal::raise(Signal::SIGUSR1).context("raise SIGUSR1")?;
    }
    if pause {
        nix::sys::signal::raise(Signal::SIGTSTP).context("raise SIGTSTP")?;
    }
    Ok(stop)
}

/// Everything a launch created, undone in reverse order on drop, on every exit path.
#[derive(Default)]
struct Built {
    paths: Option<Paths>,
    id: String,
    run_dir: Option<PathBuf>,
    cgroups: Vec<cgroup::Cgroup>,
    pins: Vec<PathBuf>,
    init: Option<Pid>,
    netns_file: Option<PathBuf>,
    pasta: Option<pasta::Pasta>,
    record: bool,
    /// The jail's cgroups in v1 hierarchies (pids, memory: hybrid layout), removed once empty.
    v1_cgroups: Vec<PathBuf>,
}

impl Drop for Built {
    fn drop(&mut self) {
        let warn = |what: &str, e: anyhow::Error| {
            eprintln!("claude-jail: warning: cleanup: {what}: {e:#}");
        };
        if let Some(init) = self.init.take() {
            let _ = kill(init, Signal::SIGKILL);
            let _ = waitpid(init, None);
        }
        // Whatever the command left running dies before pasta stops: the jail's cgroup is
        // emptied first, then pasta's. (pasta runs as pid 1 of a PID namespace of its own, which
        // ignores SIGTERM from outside: SIGKILL through its cgroup is how it stops.)
        for cg in &self.cgroups {
            if let Err(e) = cg.kill_all(Duration::from_secs(5)) {
                warn("kill the jail's processes", e.into());
            }
            crate::profile::mark("teardown-kill");
        }
        // Only if it survived that (it is still in its cgroup): signalled by pid.
        if let Some(p) = self.pasta.take() {
            p.stop(Duration::from_secs(2));
        }
        crate::profile::mark("teardown-pasta");
        if let Some(f) = self.netns_file.take() {
            if let Err(e) = netns::unbind_netns(&f) {
                warn("unmount the namespace file", e);
            }
        }
        crate::profile::mark("teardown-netns");
        for pins in self.pins.drain(..).rev() {
            if let Err(e) = bpf::unpin(&pins) {
                warn("unpin", e);
            }
        }
        crate::profile::mark("teardown-unpin");
        // A cgroup that cannot be removed keeps the record, so that a later gc finds it.
        let mut keep_record = false;
        for cg in self.cgroups.drain(..).rev() {
            if let Err(e) = cg.remove() {
                keep_record = true;
                warn("remove cgroup", e.into());
            }
        }
        crate::profile::mark("teardown-rmdir");
        for d in self.v1_cgroups.drain(..) {
            // Empty by now: its processes are the jail cgroup's, killed above.
            if let Err(e) = fs::remove_dir(&d) {
                keep_record = true;
                warn("remove the jail's v1 cgroup", e.into());
            }
            if let Some(parent) = d.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
        if let Some(paths) = &self.paths {
            // The per-jail parents: <cgroup>/claude-jail/<id>, <bpffs>/claude-jail/<id>.
            let _ = fs::remove_dir(paths.cgroup_root.join(&self.id));
            let _ = fs::remove_dir(paths.pins.join(&self.id));
            if self.record && !keep_record {
                if let Err(e) = state::remove_record(paths, &self.id) {
                    warn("remove the registry record", e);
                }
            }
        }
        if let Some(d) = self.run_dir.take() {
            if let Err(e) = fs::remove_dir_all(&d) {
                warn("remove the run directory", e.into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{io, path::PathBuf, time::Duration};

    use super::*;
    use crate::{cgroup::CgroupError, conf::ConfError, hostnet::HostNetError, user::UserError};

    /// Every typed error, as a refusal prints it (`{:#}`, under a context as the launcher adds).
    fn every_error() -> Vec<anyhow::Error> {
        let io = || io::Error::from_raw_os_error(13);
        let p = PathBuf::from("/etc/claude-sandbox.conf");
        let typed: Vec<anyhow::Error> = vec![
            CgroupError::NoCgroup2.into(),
            CgroupError::MountInfo(io()).into(),
            CgroupError::Io {
                op: "mkdir",
                path: p.clone(),
                cause: io(),
            }
            .into(),
            CgroupError::NotEmpty {
                path: p.clone(),
                waited: Duration::from_secs(1),
            }
            .into(),
            ConfError::Line {
                path: p.clone(),
                line: 2,
                msg: "bad".into(),
            }
            .into(),
            ConfError::Io {
                path: p.clone(),
                cause: io(),
            }
            .into(),
            ConfError::Untrusted {
                path: p.clone(),
                msg: "group-writable".into(),
            }
            .into(),
            ConfError::Env {
                var: conf::ENV_EGRESS_JAIL,
                value: "2".into(),
                msg: "must be 0 or 1".into(),
            }
            .into(),
            HostNetError::from(io()).into(),
            HostNetError::Decode("short".into()).into(),
            HostNetError::Refused {
                what: "route",
                code: -1,
            }
            .into(),
            HostNetError::Interrupted("route").into(),
            UserError::NoSuchUser("x".into()).into(),
            UserError::NotRoot.into(),
            UserError::NoPasswd(7).into(),
            UserError::Root.into(),
            UserError::from(nix::Error::EACCES).into(),
        ];
        typed
            .into_iter()
            .map(|e| e.context("build the jail"))
            .collect()
    }

    #[test]
    fn a_refusal_names_each_cause_once_and_the_escape_hatch_once() {
        for e in every_error() {
            let text = refusal(&e);
            let first = text.lines().next().unwrap();
            let segments: Vec<&str> = first.split(": ").collect();
            for (i, s) in segments.iter().enumerate() {
                assert!(
                    !segments[i + 1..].contains(s),
                    "`{s}` is printed twice in: {first}"
                );
            }
            assert!(
                !first.contains("os error 13") || first.matches("os error 13").count() == 1,
                "{first}"
            );
            assert_eq!(
                text.matches("CLAUDE_SANDBOX_EGRESS_JAIL=0").count(),
                1,
                "{text}"
            );
        }
    }

    #[test]
    fn the_typed_errors_carry_no_source_chain_that_would_repeat_their_message() {
        for e in every_error() {
            let mut chain = e.chain();
            chain.next();
            let typed = chain.next().unwrap();
            assert!(
                std::error::Error::source(typed).is_none(),
                "{typed} has a source(): `{{:#}}` prints it again"
            );
        }
    }
}
