//! `claude-jail run`: build the jail around a command, run it, tear everything down.
//!
//! Order (each step names its fix and the escape hatch when it fails; nothing of the command runs
//! until every step succeeded):
//!
//! 1. read the conf (root-owned, StrictModes), the on/off switch (env wins), the target user;
//! 2. preflight ([`crate::preflight`]): root in the initial user namespace, capabilities,
//!    /dev/net/tun, a writable cgroup v2, each refusal with the fix for a host or a container;
//!    then pasta and bpffs;
//! 3. compile two policies: the jail's (plus pasta's DNS forwarder, port 53 only) and pasta's own
//!    (plus the host's resolvers, port 53 only);
//! 4. create the cgroups `claude-jail/<id>/{jail,pasta}`, attach and pin both policies;
//! 5. clone the jail's init into new namespaces, move it into the jail cgroup;
//! 6. bind its network namespace to a file and start pasta on it, inside pasta's cgroup;
//! 7. register the jail, then let the init start the command;
//! 8. supervise: forward SIGTERM/SIGHUP, ignore the terminal's SIGINT/SIGQUIT (they reach the
//!    command directly), wait for the init;
//! 9. on every exit path: kill what is left in the jail cgroup (cgroup.kill), stop pasta, unmount,
//!    unpin, remove cgroups, run directory and registry record.
use std::{
    ffi::OsString,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use ipnet::IpNet;
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
    conf::{self, AllowEntry, PortSpec, Proto, Trust},
    events,
    exit::Exit,
    hostnet::HostNet,
    jail, netns, pasta,
    policy::{Policy, Source},
    reload,
    state::{self, JailRecord, Paths},
    supervise, user,
};

/// The escape hatch, named by every refusal.
pub const HATCH: &str = "to run without the egress jail: CLAUDE_SANDBOX_EGRESS_JAIL=0, or \
                         `egress-jail = 0` in the conf";

pub struct RunArgs {
    pub config: Option<PathBuf>,
    pub user: Option<String>,
    /// A descriptor with the user's environment (`run --env-fd`).
    pub env_fd: Option<i32>,
    pub command: Vec<OsString>,
}

/// Runs the command; the exit status is the command's, or 125 when the jail could not be built.
pub fn run(args: RunArgs) -> ExitCode {
    let code = match launch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("claude-jail: error: {e:#}\nclaude-jail: {HATCH}");
            Exit::JailFailed.code()
        }
    };
    Exit::Command(code).into()
}

fn launch(args: RunArgs) -> Result<i32> {
    // Blocked from the start, and so in the jail's init from its birth: a Ctrl-C or SIGTERM while
    // the jail is being built is read (below) before the command would start, and a SIGTERM
    // forwarded to the init is queued for it, never discarded.
    let signals = block_signals()?;
    // A normal user behind sudo/pkexec chooses neither the conf nor another user.
    let caller = Caller::current();
    let env_conf = std::env::var_os(conf::ENV_CONF);
    caller.check_conf_choice(args.config.as_deref(), env_conf.as_deref())?;
    caller.check_user_choice(args.user.as_deref())?;
    let conf_path = conf::conf_path(args.config, env_conf.as_deref());
    let env_switch = std::env::var_os(conf::ENV_EGRESS_JAIL);
    let conf = match conf::load(&conf_path, Trust::Strict).map_err(|e| e.shown_to(caller)) {
        Ok(c) => c,
        // The escape hatch works even when the conf is what is broken: the jail is off, and the
        // conf's only other use is the jail.
        Err(e) if env_switch.as_deref() == Some(std::ffi::OsStr::new("0")) => {
            eprintln!(
                "claude-jail: warning: {e} (not used: {}=0)",
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
    let env = user::environment(&target, env_from(caller, args.env_fd, &conf)?);

    let mut record = JailRecord {
        id: state::new_id()?,
        jailed: switch.enabled,
        launcher_pid: std::process::id(),
        init_pid: 0,
        command_pid: 0,
        uid: target.uid,
        user: target.name.clone(),
        command: command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        started: state::now_unix(),
        conf: conf_path.display().to_string(),
        switch_source: switch.source.clone(),
        policy_digest: String::new(),
        conf_digest: String::new(),
        pasta_pid: 0,
        own_addrs: Vec::new(),
    };

    if !switch.enabled {
        eprintln!(
            "claude-jail: egress jail is OFF ({}): the command runs with host networking",
            switch.source
        );
        let spec = jail::Spec {
            target,
            argv: command,
            env,
            cwd,
            resolv_conf: PathBuf::new(),
            masks: Vec::new(),
            uncapped: Vec::new(),
        };
        // Recorded where `status` and `events` show it; a host that cannot record still runs
        // what it was told to (the jail is off by the admin's choice), but says so.
        let paths = Paths::system().ok();
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
                signals: &signals,
                jail: None,
            },
        );
        if let Some(p) = &paths {
            let _ = state::remove_record(p, &record.id);
        }
        return code;
    }

    crate::preflight::check(&crate::preflight::Facts::read())?;
    let pasta_bin = pasta::locate(caller, &conf)
        .with_context(|| "pasta is the jail's only way out".to_string())?;
    let paths = Paths::system().map_err(|e| anyhow!("{e:#}"))?;
    state::private_dir(&paths.run)?;
    bpf::ensure_bpffs(&paths.bpffs)?;
    state::private_dir(&paths.pins)?;
    crate::gc::collect(&paths, false);

    let host = HostNet::read().context("read the host's addresses and routes")?;
    let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    // The jail's own addresses are known once pasta has configured its namespace (below); until
    // then the jail runs nothing.
    let (jail_policy, pasta_policy) = policies(&conf, &host, &netns::resolvers(&host_resolv), &[]);
    if let Some(msg) = jail_policy.map_entries().over_capacity() {
        bail!("{msg}");
    }
    record.policy_digest = jail_policy.digest();
    record.conf_digest = Policy::build(&conf, &host).digest();

    let id = record.id.clone();
    // Declared before `built`, so dropped after it: a launch that fails keeps its lock until its
    // cleanup is done, and a concurrent reload never finds a half-removed jail.
    let build_lock;
    let mut built = Built::default();
    built.paths = Some(paths.clone());
    built.id = id.clone();
    let run_dir = paths.jail_run(&id);
    state::private_dir(&run_dir)?;
    built.run_dir = Some(run_dir.clone());
    // Held until the jail is complete: a `reload` that finds the record waits for it, and so
    // applies its policy after this launch's, never to maps that do not exist yet.
    build_lock = reload::lock(&paths, &id)?;
    // Registered before anything of the jail exists: a concurrent launcher's gc then sees this
    // launch as live and never takes its cgroups or pins while they are being built.
    state::write_record(&paths, &record)?;
    built.record = true;

    let jail_cg = cgroup::Cgroup::create(&paths.jail_cgroup(&id)).map_err(|e| {
        anyhow!("{e} (fix: a writable cgroup v2 hierarchy; claude-jail must run as root)")
    })?;
    built.cgroups.push(jail_cg.clone());
    let pasta_cg = cgroup::Cgroup::create(&paths.pasta_cgroup(&id)).map_err(|e| {
        anyhow!("{e} (fix: a writable cgroup v2 hierarchy; claude-jail must run as root)")
    })?;
    built.cgroups.push(pasta_cg.clone());
    let v1_limits = limits(&conf, &paths, &id, &jail_cg)?;
    built.v1_cgroups.extend(v1_limits.iter().cloned());

    built.pins.push(paths.jail_pins(&id));
    let mut jail_maps = bpf::attach(
        jail_cg.path(),
        &paths.jail_pins(&id),
        jail_policy.map_entries(),
    )
    .context("attach the jail's eBPF programs")?;
    built.pins.push(paths.pasta_pins(&id));
    bpf::attach(
        pasta_cg.path(),
        &paths.pasta_pins(&id),
        pasta_policy.map_entries(),
    )
    .context("attach pasta's eBPF programs")?;

    let resolv = run_dir.join("resolv.conf");
    fs::write(&resolv, netns::jail_resolv_conf(&host_resolv))?;
    fs::set_permissions(&resolv, fs::Permissions::from_mode(0o644))?;

    crate::mask::precreate(&target).context("create the user's tmux socket directory")?;
    let plan = crate::mask::plan_as_user(
        &target,
        &crate::mask::allowed(&conf),
        crate::mask::agent_socket(&env).as_deref(),
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
    let masks = plan.masks;
    let spec = jail::Spec {
        target,
        argv: command,
        env,
        cwd,
        resolv_conf: resolv,
        masks,
        uncapped: jail::uncapped_copies(&run_dir)?,
    };
    let mut init = jail::spawn(&spec)?;
    built.init = Some(init.pid);
    record.init_pid = init.pid.as_raw() as u32;
    jail_cg
        .add_pid(init.pid.as_raw() as u32)
        .context("move the jail's init into the jail cgroup")?;
    for dir in &v1_limits {
        cgroup::Cgroup::existing(dir)
            .add_pid(init.pid.as_raw() as u32)
            .with_context(|| format!("move the jail's init into {}", dir.display()))?;
    }

    let netns_file = run_dir.join("netns");
    built.netns_file = Some(netns_file.clone());
    netns::bind_netns(init.pid.as_raw() as u32, &netns_file)?;
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
    let host_ports: Vec<PortSpec> = conf.host_ports.iter().map(|l| l.value).collect();
    let publish_ports: Vec<PortSpec> = conf.publish_ports.iter().map(|l| l.value).collect();
    let pasta = pasta::start(
        &pasta_bin,
        &pasta::PastaConfig {
            netns_file: &netns_file,
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

    // Now that the namespace has its addresses: the policies that know them.
    record.own_addrs = netns::own_addresses(init.pid.as_raw() as u32)?;
    let (jail_policy, pasta_policy) = policies(
        &conf,
        &host,
        &netns::resolvers(&host_resolv),
        &record.own_addrs,
    );
    jail_maps.apply(jail_policy.map_entries())?;
    bpf::JailMaps::open(&paths.pasta_pins(&id))?.apply(pasta_policy.map_entries())?;
    record.policy_digest = jail_policy.digest();

    state::write_record(&paths, &record)?;
    built.record = true;

    let mut watch = supervise::Watch {
        signals: &signals,
        jail: Some(supervise::JailWatch {
            paths: paths.clone(),
            id: id.clone(),
            conf,
            policy: jail_policy,
            netlink: Some(
                supervise::netlink_socket()
                    .context("subscribe to the host's address and route changes (rtnetlink)")?,
            ),
            events: jail_maps
                .take_events()
                .context("the jail's event ring buffer")?,
            aggregator: events::Aggregator::new(&id),
            init_awaiting_command: Some(init.pid),
            log_error: None,
        }),
    };
    drop(build_lock);
    if let Some(sig) = stop_asked(&signals)? {
        eprintln!("claude-jail: {sig} while the jail was being built: nothing was run");
        return Ok(Exit::Signal(sig).code());
    }
    if let Err(e) = init.go() {
        // The init is gone already: what it reported says why.
        init.started()?;
        return Err(e);
    }
    init.started()?;
    let code = supervise::run(init.pid, &mut watch)?;
    built.init = None;
    let counters = jail_maps.counters().unwrap_or_default();
    let suppressed = watch.jail.as_ref().map_or(0, |j| j.aggregator.suppressed);
    let log_error = watch.jail.as_mut().and_then(|j| j.log_error.take());
    drop(built);
    if let Some(e) = log_error {
        eprintln!("claude-jail: warning: some refusals could not be written to the event log: {e}");
    }
    let refused = counters.total_refused();
    if let Some(line) = events::summary(&id, refused, counters.events_dropped, suppressed) {
        eprintln!("{line}");
    }
    Ok(code)
}

/// The jail's policy and pasta's.
///
/// The jail's adds pasta's DNS forwarder (port 53 only) and the jail's own addresses (`own`):
/// pasta copies the host's address into the jail's namespace, where it is local, so traffic to
/// it never leaves the jail (a published connection's replies go there). pasta's adds the
/// host's resolvers (port 53 only) and, for each `publish-port`, that port on the jail's own
/// addresses: pasta carries a published connection in by connecting, inside the jail's
/// namespace, to the jail's address.
pub fn policies(
    conf: &conf::Conf,
    host: &HostNet,
    resolvers: &[std::net::IpAddr],
    own: &[std::net::IpAddr],
) -> (Policy, Policy) {
    let port = |ip: std::net::IpAddr, port, proto| AllowEntry {
        net: IpNet::from(ip),
        port: Some(PortSpec {
            port,
            proto: Some(proto),
        }),
    };
    let fwd = std::net::IpAddr::V4(pasta::DNS_FORWARDER);
    let both = [Proto::Udp, Proto::Tcp];
    let own_allows = own.iter().map(|&a| {
        (
            AllowEntry {
                net: IpNet::from(a),
                port: None,
            },
            Source::Builtin("the jail's own address, local in its namespace"),
        )
    });
    let jail = Policy::build(conf, host).with_extra_allow(
        both.map(|p| (port(fwd, 53, p), Source::Builtin("pasta's DNS forwarder")))
            .into_iter()
            .chain(own_allows),
    );
    let resolver_allows = resolvers
        .iter()
        .flat_map(|&r| both.map(|p| (port(r, 53, p), Source::Resolver)));
    let published = conf.publish_ports.iter().flat_map(|l| {
        let protos: Vec<Proto> = l.value.proto.map_or(both.to_vec(), |p| vec![p]);
        own.iter().flat_map(move |&a| {
            protos.clone().into_iter().map(move |p| {
                (
                    port(a, l.value.port, p),
                    Source::Builtin("publish-port, into the jail"),
                )
            })
        })
    });
    // pasta's policy cannot deny the host's loopback: its programs judge destinations, not
    // namespaces, and pasta talks to the jail's loopback too (the inner side of each
    // `host-port`). The host's loopback is closed by pasta's arguments instead (no mapping).
    let pasta = Policy::build(conf, host).with_extra_allow(resolver_allows.chain(published));
    (jail, pasta)
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
        }
        // Only if it survived that (it is still in its cgroup): signalled by pid.
        if let Some(p) = self.pasta.take() {
            p.stop(Duration::from_secs(2));
        }
        if let Some(f) = self.netns_file.take() {
            if let Err(e) = netns::unbind_netns(&f) {
                warn("unmount the namespace file", e);
            }
        }
        for pins in self.pins.drain(..).rev() {
            if let Err(e) = bpf::unpin(&pins) {
                warn("unpin", e);
            }
        }
        // A cgroup that cannot be removed keeps the record, so that a later gc finds it.
        let mut keep_record = false;
        for cg in self.cgroups.drain(..).rev() {
            if let Err(e) = cg.remove() {
                keep_record = true;
                warn("remove cgroup", e.into());
            }
        }
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
