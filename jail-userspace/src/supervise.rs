//! The launcher while the command runs: one poll loop, no threads.
//!
//! - the init's exit ends the loop (its status is the command's);
//! - SIGTERM and SIGHUP are forwarded to the init, which passes them to the command; SIGINT and
//!   SIGQUIT came from the terminal and reached the command directly, so they are ignored here;
//! - SIGUSR1 reloads the jail from the conf its registry record names;
//! - SIGTSTP (^Z) freezes the jail, then stops the launcher; on SIGCONT the host's current
//!   network is applied before the jail is thawed ([`pause`]);
//! - the jail's ring buffer of refusals is drained, aggregated and logged (never to the terminal),
//!   and each rise of the kernel's count of events the buffer could not hold is logged as a
//!   `dropped` record;
//! - rtnetlink link, address, route (any table) and rule changes re-derive the host part of the
//!   deny set (debounced by [`NETLINK_DEBOUNCE`], well inside the one second a host change may
//!   take to reach the jail).
use std::{
    os::fd::{AsFd, BorrowedFd},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use aya::maps::{MapData, RingBuf};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::{
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::{
        signal::{kill, Signal},
        signalfd::SignalFd,
        wait::{waitpid, WaitPidFlag, WaitStatus},
    },
    unistd::Pid,
};

use crate::{
    bpf::JailMaps,
    cgroup::Cgroup,
    conf::Conf,
    events::{self, Aggregator, Record},
    exit::Exit,
    hostnet::HostNet,
    policy::{self, Policy, RuleNames},
    reload,
    state::{self, Paths},
};

const FLUSH_EVERY: Duration = Duration::from_millis(250);
pub const NETLINK_DEBOUNCE: Duration = Duration::from_millis(100);

// rtnetlink multicast groups (linux/rtnetlink.h, RTMGRP_*).
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;
// Rule changes (linux/rtnetlink.h, RTNLGRP_*): group numbers, joined with NETLINK_ADD_MEMBERSHIP
// (RTNLGRP_IPV6_RULE has no RTMGRP_ mask).
const RTNLGRP_IPV4_RULE: u32 = 8;
const RTNLGRP_IPV6_RULE: u32 = 19;

/// What the loop watches, besides the init.
pub struct Watch<'a> {
    pub signals: &'a SignalFd,
    /// None for an unjailed command.
    pub jail: Option<JailWatch>,
}

pub struct JailWatch {
    pub paths: Paths,
    pub id: String,
    /// The conf the jail's maps were last built from. A change of the host's network is applied
    /// with it: re-reading the file then could pick up a half-written or missing file.
    pub conf: Conf,
    /// The jail's policy as last applied (its digest is the record's, unless a `reload` changed
    /// the maps since: then the conf is read again). Events are described from the jail's
    /// table of rule ids instead ([`RuleNames`]): a reload by another process changes the maps
    /// before the launcher hears of it, and events queued before it are read after it.
    pub policy: Policy,
    /// rtnetlink, subscribed before the command starts (so that a failure to subscribe is a
    /// failure to build the jail, not a command killed after it started).
    pub netlink: Option<Socket>,
    pub events: Refusals,
    /// The jail's namespaces, in the nftables mode: its table is changed through them.
    pub ns: Option<crate::userns::JailNs>,
    pub aggregator: Aggregator,
    /// The init's pid, until the command's pid (its child) is in the registry record.
    pub init_awaiting_command: Option<Pid>,
    /// The first failure to write the event log, reported once the command has exited (the
    /// session's terminal is the command's until then).
    pub log_error: Option<String>,
}

/// Where the refusals come from.
pub enum Refusals {
    /// The eBPF programs' ring buffer.
    Ring(RingBuf<MapData>),
    /// nflog in the jail's network namespace (nftables mode): the refused packets' headers;
    /// `uid`, the jail's user (a packet does not say which process sent it).
    Nflog {
        log: crate::nft::LogReader,
        uid: u32,
    },
}

impl Refusals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Refusals::Ring(r) => r.as_fd(),
            Refusals::Nflog { log, .. } => log.as_fd(),
        }
    }
}

/// Waits for `child` (the init, or an unjailed command) and returns its exit status.
pub fn run(child: Pid, w: &mut Watch<'_>) -> Result<i32> {
    let netlink = w.jail.as_mut().and_then(|j| j.netlink.take());
    // The jail's pinned counters, for the events its ring buffer could not hold.
    let mut counters = None;
    // The jail's table of rule ids, for the events' rules.
    let mut names = None;
    let mut next_flush = Instant::now() + FLUSH_EVERY;
    let mut host_changed: Option<Instant> = None;
    loop {
        if let Some(code) = reap(child)? {
            if let Some(j) = &mut w.jail {
                // The init is reaped only after every process of its PID namespace is gone:
                // nothing in the jail refuses anything after this last look.
                drain(j);
                flush(j, &mut counters, &mut names);
                // What the jail's log budget left uncounted in the log so far.
                if let Some(r) = j.aggregator.finish() {
                    let _ = events::append(&j.paths.events_log(), std::slice::from_ref(&r));
                    events::to_syslog(&[r]);
                }
            }
            return Ok(code);
        }
        let now = Instant::now();
        let mut wake = next_flush;
        if let Some(t) = host_changed {
            wake = wake.min(t);
        }
        let timeout = wake
            .saturating_duration_since(now)
            .min(Duration::from_secs(1));
        let sig_fd = w.signals.as_fd();
        let ring_fd = w.jail.as_ref().map(|j| j.events.as_fd());
        let nl_fd = netlink.as_ref().map(|s| s.as_fd());
        let mut fds = vec![PollFd::new(sig_fd, PollFlags::POLLIN)];
        fds.extend(ring_fd.map(|f| PollFd::new(f, PollFlags::POLLIN)));
        fds.extend(nl_fd.map(|f| PollFd::new(f, PollFlags::POLLIN)));
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(1000);
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => bail!("poll: {e}"),
        }
        drop(fds);

        let mut reload_asked = false;
        let mut stop_asked = false;
        while let Ok(Some(info)) = w.signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(sig @ (Signal::SIGTERM | Signal::SIGHUP)) => {
                    let _ = kill(child, sig);
                }
                Ok(Signal::SIGUSR1) => reload_asked = true,
                Ok(Signal::SIGTSTP) => stop_asked = true,
                _ => {}
            }
        }
        if stop_asked {
            pause(w, netlink.as_ref());
        }
        if let Some(sock) = &netlink {
            if drain_netlink(sock) {
                host_changed.get_or_insert(Instant::now() + NETLINK_DEBOUNCE);
            }
        }
        let Some(j) = &mut w.jail else { continue };
        drain(j);
        record_command_pid(j);
        let now = Instant::now();
        let host_due = host_changed.is_some_and(|t| now >= t);
        if reload_asked || host_due {
            host_changed = None;
            refresh(j, reload_asked, host_due);
        }
        if now >= next_flush {
            flush(j, &mut counters, &mut names);
            next_flush = now + FLUSH_EVERY;
        }
    }
}

/// How long a freeze or thaw may take before the launcher gives up on it.
const FREEZE_WAIT: Duration = Duration::from_secs(2);

/// ^Z. A stopped launcher applies no route or address change of the host and drains no event,
/// while a command that ignores SIGTSTP (or anything it started) would keep running: so the
/// jail is frozen first (cgroup.freeze), then the launcher stops itself (SIGSTOP). On SIGCONT
/// (`fg`, `bg`) the host's network as it is now is applied, then the jail thawed. If the jail
/// cannot be frozen, the launcher does not stop: it keeps enforcing, and logs why.
fn pause(w: &mut Watch<'_>, netlink: Option<&Socket>) {
    let jail = w
        .jail
        .as_ref()
        .map(|j| Cgroup::existing(&j.paths.jail_cgroup(&j.id)));
    if let (Some(cg), Some(j)) = (&jail, &w.jail) {
        if let Err(e) = cg.freeze(true, FREEZE_WAIT) {
            let _ = cg.freeze(false, FREEZE_WAIT);
            let note = Record::note(
                &j.id,
                "stop-refused",
                0,
                format!("^Z: cannot freeze the jail ({e}); the launcher keeps running"),
            );
            let _ = events::append(&j.paths.events_log(), &[note]);
            return;
        }
    }
    let _ = nix::sys::signal::raise(Signal::SIGSTOP);
    // Continued.
    if let Some(j) = &mut w.jail {
        if let Some(s) = netlink {
            drain_netlink(s);
        }
        drain(j);
        refresh(j, false, true);
    }
    if let Some(cg) = &jail {
        if let Err(e) = cg.freeze(false, FREEZE_WAIT) {
            if let Some(j) = &w.jail {
                let note = Record::note(&j.id, "thaw-failed", 0, format!("{e}"));
                let _ = events::append(&j.paths.events_log(), &[note]);
            }
        }
    }
}

fn reap(child: Pid) -> Result<Option<i32>> {
    match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Ok(Some(code)),
        Ok(WaitStatus::Signaled(_, sig, _)) => Ok(Some(Exit::Signal(sig).code())),
        Ok(_) => Ok(None),
        Err(e) => bail!("waitpid: {e}"),
    }
}

/// Puts the command's pid (in the host's PID namespace: the init's only child) in the record, for
/// `status`, once the init has started it.
fn record_command_pid(j: &mut JailWatch) {
    let Some(init) = j.init_awaiting_command else {
        return;
    };
    let children =
        std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap_or_default();
    let Some(pid) = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return;
    };
    j.init_awaiting_command = None;
    let _ = state::with_record(&j.paths, &j.id, |rec| {
        rec.command_pid = pid;
        Ok(())
    });
}

fn drain(j: &mut JailWatch) {
    match &mut j.events {
        Refusals::Ring(ring) => {
            while let Some(item) = ring.next() {
                if let Some(e) = events::decode(&item) {
                    j.aggregator.add(e);
                }
            }
        }
        Refusals::Nflog { log, uid } => {
            // A refused packet says where it went; the policy in force says which rule refused
            // it (the same judgement the table made, `Policy::decide`).
            while let Ok(Some(p)) = log.next(Some(Duration::from_micros(1))) {
                let rule = j.policy.decide(p.dst, p.port, p.proto).rule;
                j.aggregator
                    .add(events::from_packet(p.dst, p.port, p.proto, rule, *uid));
            }
        }
    }
}

/// Writes the window's records, then a `dropped` record if the kernel's count of events it could
/// not queue has risen since the last look.
fn flush(j: &mut JailWatch, counters: &mut Option<JailMaps>, names: &mut Option<RuleNames>) {
    let names =
        names.get_or_insert_with(|| RuleNames::new(policy::ids::path(&j.paths.jail_run(&j.id))));
    names.new_window();
    let mut records = j.aggregator.flush(|rule| names.describe(rule));
    if counters.is_none() {
        // Opened once; until it opens, the drops stay counted in the kernel and are written at
        // the next look that succeeds.
        *counters = JailMaps::open(&j.paths.jail_pins(&j.id)).ok();
    }
    if let Some(c) = counters.as_ref().and_then(|m| m.counters().ok()) {
        records.extend(j.aggregator.dropped_since(c.events_dropped));
    }
    if let Err(e) = events::append(&j.paths.events_log(), &records) {
        // Not onto the session's terminal now; the counters still count.
        j.log_error.get_or_insert_with(|| format!("{e:#}"));
    }
    events::to_syslog(&records);
}

/// Brings the jail's maps to its conf and the host's current network. Failures are logged, and
/// the jail keeps its current policy.
///
/// - SIGUSR1 (`reread`): the conf is read again from the file the registry record names.
///   After `claude-jail reload` (which applied the maps itself, recorded the digest, then sent
///   SIGUSR1) the compiled policy has the recorded digest, and only the launcher's copies (the
///   conf, and the policy that names rules in events) are refreshed: no lock, no map update.
/// - A host change: the launcher's conf is applied against the new host, unless the record shows
///   that a `reload` has changed the maps since (another digest or another file): then the file
///   is read again, as the reload did.
///
/// The conf is read and compiled outside the jail's lock (a reload of 10,000 entries must not
/// wait for it); the maps are updated under it, and only if the record is still the one read
/// first. If a reload came in between, this refresh stands down: the reload applied the host's
/// current state too, and its SIGUSR1 brings the launcher's copies up to date.
fn refresh(j: &mut JailWatch, reread: bool, host_changed: bool) {
    let result = (|| -> Result<Option<(Conf, Policy)>> {
        let Some(seen) = state::list_records(&j.paths)?
            .into_iter()
            .flatten()
            .find(|r| r.id == j.id)
        else {
            return Ok(None);
        };
        let changed_by_reload = seen.policy_digest != j.policy.digest()
            || Path::new(&seen.conf) != j.conf.path.as_path();
        let conf = if reread || changed_by_reload {
            reload::load_conf(Path::new(&seen.conf))?
        } else {
            j.conf.clone()
        };
        let host = HostNet::read()?;
        // Numbered with the table as saved now, only to compare: `apply` numbers again under
        // the lock, where the table cannot change.
        let (compiled, _, _) = reload::compile(&j.paths, &conf, &host, &seen)?;
        if !host_changed && compiled.digest() == seen.policy_digest {
            return Ok(Some((conf, compiled)));
        }
        let applied = state::with_record(&j.paths, &j.id, |rec| {
            if rec.conf != seen.conf || rec.policy_digest != seen.policy_digest {
                return Ok(None);
            }
            let policy = reload::apply(&j.paths, rec, &conf, &host, j.ns.as_ref())?;
            rec.policy_digest = policy.digest();
            Ok(Some(policy))
        })?;
        Ok(applied.flatten().map(|policy| (conf, policy)))
    })();
    let note = match result {
        Ok(Some((conf, policy))) => {
            let msg = format!("policy now {}", policy.digest());
            j.conf = conf;
            j.policy = policy;
            Record::note(&j.id, "policy-updated", 0, msg)
        }
        Ok(None) => return,
        Err(e) => Record::note(
            &j.id,
            "reload-failed",
            0,
            format!("{e:#}; the jail keeps its previous policy"),
        ),
    };
    let _ = events::append(&j.paths.events_log(), &[note]);
}

/// An rtnetlink socket subscribed to the host's link, address, route and rule changes. Route
/// notifications cover every table (a table that appears later included); rule notifications
/// bring a table into the deny set when a rule starts selecting it ([`HostNet`]).
pub fn netlink_socket() -> Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind(&SocketAddr::new(
        0,
        RTMGRP_LINK
            | RTMGRP_IPV4_IFADDR
            | RTMGRP_IPV4_ROUTE
            | RTMGRP_IPV6_IFADDR
            | RTMGRP_IPV6_ROUTE,
    ))?;
    for group in [RTNLGRP_IPV4_RULE, RTNLGRP_IPV6_RULE] {
        s.add_membership(group)?;
    }
    s.set_non_blocking(true)?;
    Ok(s)
}

/// Reads every pending notification; true when there was any. The contents do not matter: the
/// host's state is re-read whole.
fn drain_netlink(s: &Socket) -> bool {
    let mut any = false;
    let mut buf = vec![0u8; 65536];
    loop {
        match s.recv(&mut &mut buf[..], 0) {
            Ok(0) => return any,
            Ok(_) => any = true,
            // ENOBUFS: notifications were lost; the state is re-read anyway.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => any = true,
            Err(_) => return any,
        }
    }
}
