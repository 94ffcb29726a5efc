//! The audit trail of refused attempts.
//!
//! The kernel programs write one [`jail_common::Event`] per refusal into a ring buffer; the
//! launcher drains it, aggregates repeats, caps the rate, and appends JSON lines to
//! /var/log/claude-jail/events.jsonl (size-capped, one rotation). `claude-jail events` reads it.
//!
//! A port scan of 10,000 attempts must not flood the disk or the terminal: identical attempts
//! within a flush window become one record with a `count`, at most [`MAX_RECORDS_PER_FLUSH`]
//! records are written per window, and what is left out is written as one `suppressed` record.
//! Events the kernel could not queue (a full ring buffer) are counted by it; the launcher writes
//! each rise of that counter as a `dropped` record, so that the log's counts add up to the
//! kernel's refusals. The running session's terminal never gets these lines.
//!
//! The log is shared by every jail of the host, and rotation drops the oldest records: so each
//! jail has a budget of [`JAIL_LOG_RECORDS`] records in all. Past it, that jail's refusals are
//! only counted, in one `suppressed` record per [`OVER_BUDGET_EVERY`] (and one when it ends):
//! a port scan in one jail can no longer push every other jail's records out of the log (it took
//! about 10 minutes at 28.6 KB/s; now one jail writes about 250 KB, then 200 bytes a minute).
use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{BufRead, BufReader, Seek, SeekFrom, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use anyhow::{Context, Result};
use jail_common::{Event, Hook, FAMILY_V4};
use serde::{Deserialize, Serialize};

/// Records written per flush window at most; the rest is counted in one `suppressed` record.
pub const MAX_RECORDS_PER_FLUSH: usize = 32;
/// The log is rotated (to `events.jsonl.1`) when it grows past this.
pub const MAX_LOG_BYTES: u64 = 8 << 20;
/// Records one jail may write in all (about 250 KB: a thirtieth of [`MAX_LOG_BYTES`]); then only
/// counts.
pub const JAIL_LOG_RECORDS: u64 = 1024;
/// How often a jail past its budget writes its count of unlogged refusals.
pub const OVER_BUDGET_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// One line of the log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Unix time, seconds with milliseconds.
    pub time: f64,
    pub jail: String,
    /// `refused`, `suppressed` (a count of refusals not written one by one), `dropped` (events
    /// the kernel could not queue), `unjailed-launch`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The pid inside the jail's PID namespace, when the process was still there to ask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail_pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The deny entry that matched, described.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Record {
    pub fn note(jail: &str, kind: &str, count: u64, detail: String) -> Record {
        Record {
            time: now(),
            jail: jail.into(),
            kind: kind.into(),
            pid: None,
            jail_pid: None,
            uid: None,
            comm: None,
            hook: None,
            proto: None,
            addr: None,
            port: None,
            rule: None,
            count,
            detail: Some(detail),
        }
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.as_millis() as f64) / 1000.0)
        .unwrap_or(0.0)
}

/// Decodes one ring buffer item. `None` for an item of the wrong size (never written by our
/// programs).
pub fn decode(bytes: &[u8]) -> Option<Event> {
    crate::sys::read_event(bytes)
}

/// The `hook` of a refusal the nftables table logged (no eBPF hook has this number).
pub const HOOK_NFTABLES: u8 = 0xfe;

/// A refusal the nftables mode logged, as the eBPF programs would have written it: the
/// process is not known (the packet was logged, not the socket call), its uid is the jail's
/// user's, the rule is the one the policy in force names for this destination.
pub fn from_packet(
    dst: IpAddr,
    port: u16,
    proto: u8,
    rule: Option<jail_common::RuleId>,
    uid: u32,
) -> Event {
    let (family, addr) = match dst {
        IpAddr::V4(a) => (FAMILY_V4, [u32::from_ne_bytes(a.octets()), 0, 0, 0]),
        IpAddr::V6(a) => {
            let o = a.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            (jail_common::FAMILY_V6, [w(0), w(4), w(8), w(12)])
        }
    };
    Event {
        boot_ns: nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(0),
        pid: 0,
        uid,
        addr,
        rule: rule.unwrap_or(jail_common::RULE_NONE),
        port,
        hook: HOOK_NFTABLES,
        proto,
        family,
        _pad: [0; 7],
        comm: [0; 16],
    }
}

fn event_addr(e: &Event) -> IpAddr {
    let b = |w: u32| w.to_ne_bytes();
    if e.family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::from(b(e.addr[0])))
    } else {
        let mut o = [0u8; 16];
        for (i, w) in e.addr.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&b(*w));
        }
        IpAddr::V6(Ipv6Addr::from(o))
    }
}

fn proto_name(p: u8) -> String {
    match p {
        jail_common::PROTO_TCP => "tcp".into(),
        jail_common::PROTO_UDP => "udp".into(),
        jail_common::PROTO_ICMP => "icmp".into(),
        jail_common::PROTO_ICMPV6 => "icmpv6".into(),
        n => format!("proto-{n}"),
    }
}

/// The innermost pid of a host pid (the last NSpid field), while the process exists.
fn jail_pid(host_pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{host_pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

type Key = (u32, u32, [u8; 16], u8, u8, IpAddr, u16, u32);

/// Aggregates refusals between flushes.
pub struct Aggregator {
    jail: String,
    pending: BTreeMap<Key, (Event, u64)>,
    /// Host pid -> pid in the jail, looked up when the event is read (the process may be gone by
    /// the flush).
    jail_pids: BTreeMap<u32, Option<u32>>,
    /// Refusals seen in total (for the launcher's exit summary).
    pub total: u64,
    /// Refusals written only as a count in `suppressed` records, in total.
    pub suppressed: u64,
    /// Events the kernel dropped (its counter) that `dropped` records account for so far.
    pub dropped: u64,
    /// Records of this jail written so far (of [`JAIL_LOG_RECORDS`]).
    written: u64,
    /// Refusals past the budget not written yet, and when that count was last written.
    over_budget: u64,
    over_budget_noted: Option<std::time::Instant>,
}

impl Aggregator {
    pub fn new(jail: &str) -> Aggregator {
        Aggregator {
            jail: jail.into(),
            pending: BTreeMap::new(),
            jail_pids: BTreeMap::new(),
            total: 0,
            suppressed: 0,
            dropped: 0,
            written: 0,
            over_budget: 0,
            over_budget_noted: None,
        }
    }

    /// A `dropped` record for the events the kernel dropped since the last one, given its
    /// counter (which only grows): a full ring buffer loses the events, never their count, and
    /// the log says how many are missing.
    pub fn dropped_since(&mut self, kernel_dropped: u64) -> Option<Record> {
        let n = kernel_dropped
            .checked_sub(self.dropped)
            .filter(|&n| n > 0)?;
        self.dropped = kernel_dropped;
        Some(Record::note(
            &self.jail,
            "dropped",
            n,
            format!(
                "{n} more refusals were not logged one by one: the kernel's event buffer was full \
                 (the jail refused them all; the kernel counted them)"
            ),
        ))
    }

    pub fn add(&mut self, e: Event) {
        self.total += 1;
        if e.pid != 0 {
            self.jail_pids
                .entry(e.pid)
                .or_insert_with(|| jail_pid(e.pid));
        }
        let key = (
            e.pid,
            e.uid,
            e.comm,
            e.hook,
            e.proto,
            event_addr(&e),
            e.port,
            e.rule,
        );
        self.pending.entry(key).or_insert((e, 0)).1 += 1;
    }

    /// The records of this window: the first [`MAX_RECORDS_PER_FLUSH`] by (pid, ...), then one
    /// `suppressed` record counting the rest; within the jail's budget ([`Aggregator::flush_at`]).
    pub fn flush(&mut self, describe: impl FnMut(u32) -> String) -> Vec<Record> {
        self.flush_at(std::time::Instant::now(), describe)
    }

    /// [`Aggregator::flush`] at `now`. Once the jail has written [`JAIL_LOG_RECORDS`] records,
    /// every refusal is only counted, and the count written as one `suppressed` record at most
    /// every [`OVER_BUDGET_EVERY`] (the first at once).
    pub fn flush_at(
        &mut self,
        now: std::time::Instant,
        describe: impl FnMut(u32) -> String,
    ) -> Vec<Record> {
        let mut out = Vec::new();
        for r in self.window(describe) {
            if self.written < JAIL_LOG_RECORDS {
                self.written += 1;
                out.push(r);
            } else {
                // Counted again in `suppressed` when its count is written ([`Aggregator::finish`]).
                if r.kind == "suppressed" {
                    self.suppressed -= r.count;
                }
                self.over_budget += r.count;
            }
        }
        let due = self
            .over_budget_noted
            .is_none_or(|t| now.duration_since(t) >= OVER_BUDGET_EVERY);
        if self.over_budget > 0 && due {
            out.extend(self.finish());
            self.over_budget_noted = Some(now);
        }
        out
    }

    /// The count of refusals past the budget not written yet, as one record (when the jail
    /// ends).
    pub fn finish(&mut self) -> Option<Record> {
        let n = std::mem::take(&mut self.over_budget);
        self.suppressed += n;
        (n > 0).then(|| {
            Record::note(
                &self.jail,
                "suppressed",
                n,
                format!(
                    "{n} more refusals not logged one by one: this jail has written its budget \
                     of {JAIL_LOG_RECORDS} records (the log is shared by every jail)"
                ),
            )
        })
    }

    fn window(&mut self, mut describe: impl FnMut(u32) -> String) -> Vec<Record> {
        let pending = std::mem::take(&mut self.pending);
        let jail_pids = std::mem::take(&mut self.jail_pids);
        let mut out = Vec::new();
        let mut suppressed = 0;
        for (i, (_, (e, count))) in pending.into_iter().enumerate() {
            if i >= MAX_RECORDS_PER_FLUSH {
                suppressed += count;
                continue;
            }
            let comm_len = e.comm.iter().position(|&c| c == 0).unwrap_or(e.comm.len());
            out.push(Record {
                time: now(),
                jail: self.jail.clone(),
                kind: "refused".into(),
                pid: (e.pid != 0).then_some(e.pid),
                jail_pid: jail_pids.get(&e.pid).copied().flatten(),
                uid: (e.uid != u32::MAX).then_some(e.uid),
                comm: (comm_len > 0)
                    .then(|| String::from_utf8_lossy(&e.comm[..comm_len]).into_owned()),
                hook: match e.hook {
                    HOOK_NFTABLES => Some("nftables".into()),
                    h => Hook::from_u8(h).map(|h| h.name().into()),
                },
                proto: Some(proto_name(e.proto)),
                addr: Some(event_addr(&e)),
                port: (e.port != 0).then_some(e.port),
                rule: Some(describe(e.rule)),
                count,
                detail: None,
            });
        }
        self.suppressed += suppressed;
        if suppressed > 0 {
            out.push(Record::note(
                &self.jail,
                "suppressed",
                suppressed,
                format!("{suppressed} more refusals in this window were not logged one by one"),
            ));
        }
        out
    }
}

/// The launcher's one line at the end of a session, when anything was refused: how many
/// attempts, how many of them the log holds only as counts (`dropped`: lost from the full event
/// buffer; `suppressed`: over the per-window cap), and how to read the log.
pub fn summary(jail: &str, refused: u64, dropped: u64, suppressed: u64) -> Option<String> {
    if refused == 0 {
        return None;
    }
    let unlogged = dropped + suppressed;
    let detail = if unlogged == 0 {
        String::new()
    } else {
        format!(
            " ({unlogged} not logged one by one: {dropped} lost when the event buffer was full, \
             {suppressed} over the log's rate cap or the jail's log budget; the log counts them)"
        )
    };
    Some(format!(
        "claude-jail: refused {refused} connection attempt{}{detail}; claude-jail events --jail {jail}",
        if refused == 1 { "" } else { "s" }
    ))
}

/// Appends records to the log, rotating it past [`MAX_LOG_BYTES`].
pub fn append(log: &Path, records: &[Record]) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    if let Some(dir) = log.parent() {
        // Root-only, also when an older version made it 0755: the names in it (rotations) are
        // nobody else's business, and the jailed user must not list them.
        crate::dirs::private_dir(dir)?;
    }
    if fs::metadata(log)
        .map(|m| m.len() > MAX_LOG_BYTES)
        .unwrap_or(false)
    {
        fs::rename(log, rotated(log)).with_context(|| format!("rotate {}", log.display()))?;
    }
    let mut text = String::new();
    for r in records {
        text.push_str(&json_line(r)?);
        text.push('\n');
    }
    // One write per batch, O_APPEND: concurrent launchers never interleave within a line.
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("write {}", log.display()))
}

fn rotated(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// Escapes control characters (and backslashes) so that attacker-chosen command names and
/// arguments cannot drive the reader's terminal.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// One record as a line of text (escaped).
/// Where the system logger listens (syslog daemons and journald alike).
const SYSLOG_SOCKET: &str = "/dev/log";

/// Sends `records` to the system log as well (facility auth, level warning), so that a fleet's
/// existing log pipeline collects the refusals: the same records the JSONL log gets, so the same
/// aggregation, per-window cap and per-jail budget limit their rate. A host without a logger
/// (no /dev/log) gets the JSONL log only; a send that fails is not retried.
pub fn to_syslog(records: &[Record]) {
    if records.is_empty() {
        return;
    }
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    const AUTH_WARNING: u8 = (4 << 3) | 4;
    let pid = std::process::id();
    for r in records {
        // `render` begins with the time; the logger stamps its own.
        let line = render(r);
        let msg = line.split_once(' ').map_or(line.as_str(), |(_, m)| m);
        let datagram = format!("<{AUTH_WARNING}>claude-jail[{pid}]: {msg}");
        if sock.send_to(datagram.as_bytes(), SYSLOG_SOCKET).is_err() {
            return;
        }
    }
}

pub fn render(r: &Record) -> String {
    let time = format_time(r.time);
    match r.kind.as_str() {
        "refused" => format!(
            "{time} jail={} refused {} {} pid={}{} uid={} comm={} hook={} rule={}{}",
            escape(&r.jail),
            escape(r.proto.as_deref().unwrap_or("?")),
            match (r.addr, r.port) {
                (Some(IpAddr::V6(a)), Some(p)) => format!("[{a}]:{p}"),
                (Some(a), Some(p)) => format!("{a}:{p}"),
                (Some(a), None) => a.to_string(),
                _ => "?".into(),
            },
            r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            r.jail_pid
                .map(|p| format!(" (jail pid {p})"))
                .unwrap_or_default(),
            r.uid.map(|u| u.to_string()).unwrap_or_else(|| "-".into()),
            escape(r.comm.as_deref().unwrap_or("-")),
            escape(r.hook.as_deref().unwrap_or("-")),
            escape(r.rule.as_deref().unwrap_or("-")),
            if r.count > 1 {
                format!(" x{}", r.count)
            } else {
                String::new()
            },
        ),
        _ => format!(
            "{time} jail={} {} count={} {}",
            escape(&r.jail),
            escape(&r.kind),
            r.count,
            escape(r.detail.as_deref().unwrap_or(""))
        ),
    }
}

fn format_time(t: f64) -> String {
    let secs = t.floor() as i64;
    let ms = ((t - t.floor()) * 1000.0).round() as i64;
    // UTC, civil from days (Howard Hinnant's algorithm): no time-zone database needed.
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// A record as one line of JSON. serde_json escapes C0 controls but writes DEL and the C1
/// controls (U+0080-U+009F: U+009B is CSI, an escape sequence in one character) as they are;
/// they are escaped here as `\u00XX`, so that neither the log file nor `events --json` can drive
/// a terminal with an attacker-chosen command name or line. Outside strings serde_json writes
/// ASCII only, so the replacement keeps the line valid JSON.
pub fn json_line(r: &Record) -> serde_json::Result<String> {
    let raw = serde_json::to_string(r)?;
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if ('\u{7f}'..='\u{9f}').contains(&c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// Follows a log that is appended to and rotated: hands out each complete line once, from the
/// first byte of the file it opened, across a rotation (the path names another file: the old
/// one is read to its end, then the new one from its start) and a truncation in place (same
/// file, smaller than what was read: read again from the start).
struct Tail {
    path: PathBuf,
    /// The file being read, its (device, inode), and how far it has been read.
    file: Option<(File, (u64, u64))>,
    pos: u64,
    /// The start of a line whose end has not been written yet.
    partial: Vec<u8>,
}

fn file_id(m: &fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

impl Tail {
    fn new(path: &Path) -> Tail {
        let mut t = Tail {
            path: path.to_path_buf(),
            file: None,
            pos: 0,
            partial: Vec::new(),
        };
        t.reopen();
        t
    }

    /// The (device, inode) of the file being read.
    fn id(&self) -> Option<(u64, u64)> {
        self.file.as_ref().map(|(_, id)| *id)
    }

    /// Starts over on whatever file the path names now (none: nothing yet).
    fn reopen(&mut self) {
        self.file = File::open(&self.path).ok().and_then(|f| {
            let id = file_id(&f.metadata().ok()?);
            Some((f, id))
        });
        self.pos = 0;
        self.partial.clear();
    }

    /// Reads the current file from `pos` to its end, handing out complete lines.
    fn drain(&mut self, line: &mut dyn FnMut(&str)) -> std::io::Result<()> {
        let Some((f, _)) = self.file.as_mut() else {
            return Ok(());
        };
        f.seek(SeekFrom::Start(self.pos))?;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = std::io::Read::read(f, &mut buf)?;
            if n == 0 {
                return Ok(());
            }
            self.pos += n as u64;
            let mut chunk = &buf[..n];
            while let Some(i) = chunk.iter().position(|&b| b == b'\n') {
                self.partial.extend_from_slice(&chunk[..i]);
                line(String::from_utf8_lossy(&self.partial).trim_end());
                self.partial.clear();
                chunk = &chunk[i + 1..];
            }
            self.partial.extend_from_slice(chunk);
        }
    }

    /// Hands out the lines written since the last call.
    fn poll(&mut self, line: &mut dyn FnMut(&str)) -> std::io::Result<()> {
        if self.file.is_none() {
            self.reopen();
        }
        self.drain(line)?;
        match fs::metadata(&self.path) {
            Ok(m) if Some(file_id(&m)) == self.id() => {
                if m.len() < self.pos {
                    // Truncated in place: what is there now was never read.
                    self.pos = 0;
                    self.partial.clear();
                    self.drain(line)?;
                }
            }
            Ok(_) => {
                // Rotated: the path names a new file. A writer that opened the old one before
                // the rename may still have added to it: read it to the end, then switch.
                self.drain(line)?;
                self.reopen();
                self.drain(line)?;
            }
            // Renamed away, the new file not created yet: keep reading the old one.
            Err(_) => {}
        }
        Ok(())
    }
}

/// `claude-jail events [--follow] [--json] [--jail ID]`.
/// `only_uid`: a user behind sudo sees the records of their own jails only: those whose
/// process ran as them, and the notes of a jail once one of its records did.
pub fn command(
    log: &Path,
    follow: bool,
    json: bool,
    jail: Option<&str>,
    only_uid: Option<u32>,
) -> Result<()> {
    let mut own_jails: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut print = |line: &str| {
        let Ok(r) = serde_json::from_str::<Record>(line) else {
            return;
        };
        if jail.is_some_and(|j| j != r.jail) {
            return;
        }
        if let Some(uid) = only_uid {
            if r.uid == Some(uid) {
                own_jails.insert(r.jail.clone());
            } else if r.uid.is_some() || !own_jails.contains(&r.jail) {
                return;
            }
        }
        if json {
            // Re-serialised, control characters (C0 and C1) escaped.
            println!("{}", json_line(&r).unwrap_or_default());
        } else {
            println!("{}", render(&r));
        }
    };
    // The current log is opened first and then read from its first byte by the same handle that
    // --follow keeps: nothing appended in between is missed. The rotated log is read before it,
    // unless it is that very file (rotated in between: the handle reads it, then moves on).
    let mut tail = Tail::new(log);
    let old = rotated(log);
    let same = fs::metadata(&old).ok().map(|m| file_id(&m)) == tail.id() && tail.id().is_some();
    if !same {
        if let Ok(f) = File::open(&old) {
            for line in BufReader::new(f).split(b'\n') {
                print(String::from_utf8_lossy(&line?).trim_end());
            }
        }
    }
    tail.poll(&mut print)?;
    std::io::stdout().flush()?;
    if !follow {
        return Ok(());
    }
    loop {
        thread::sleep(Duration::from_millis(200));
        tail.poll(&mut print)?;
        std::io::stdout().flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(pid: u32, port: u16) -> Event {
        Event {
            boot_ns: 0,
            pid,
            uid: 65534,
            addr: [u32::from_ne_bytes([10, 0, 0, 5]), 0, 0, 0],
            rule: 2,
            port,
            hook: Hook::Connect4 as u8,
            proto: jail_common::PROTO_TCP,
            family: FAMILY_V4,
            _pad: [0; 7],
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
        }
    }

    #[test]
    fn repeats_are_aggregated_into_one_record_with_a_count() {
        let mut a = Aggregator::new("j");
        for _ in 0..5 {
            a.add(event(1234, 22));
        }
        let r = a.flush(|_| "deny 10.0.0.0/8 (default)".into());
        assert_eq!(r.len(), 1, "five identical attempts are one record");
        assert_eq!(r[0].count, 5);
        assert_eq!(r[0].addr, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(r[0].port, Some(22));
        assert_eq!(r[0].comm.as_deref(), Some("curl"));
        assert_eq!(r[0].hook.as_deref(), Some("connect4"));
        assert_eq!(r[0].rule.as_deref(), Some("deny 10.0.0.0/8 (default)"));
        assert_eq!(a.total, 5);
    }

    #[test]
    fn a_port_scan_is_capped_and_the_rest_counted() {
        let mut a = Aggregator::new("j");
        for port in 1..=10_000u16 {
            a.add(event(1, port));
        }
        let r = a.flush(|_| String::new());
        assert_eq!(
            r.len(),
            MAX_RECORDS_PER_FLUSH + 1,
            "capped, plus one suppressed record"
        );
        let last = r.last().unwrap();
        assert_eq!(last.kind, "suppressed");
        assert_eq!(
            last.count,
            10_000 - MAX_RECORDS_PER_FLUSH as u64,
            "nothing is lost from the count"
        );
    }

    #[test]
    fn drops_are_recorded_once_each_with_their_count() {
        let mut a = Aggregator::new("j");
        assert!(
            a.dropped_since(0).is_none(),
            "nothing dropped, nothing written"
        );
        let r = a.dropped_since(2300).expect("a rise is recorded");
        assert_eq!((r.kind.as_str(), r.count), ("dropped", 2300));
        assert!(
            a.dropped_since(2300).is_none(),
            "the same drops are not counted twice"
        );
        assert_eq!(a.dropped_since(2310).map(|r| r.count), Some(10));
        assert_eq!(a.dropped, 2310);
        assert!(render(&r).contains("dropped count=2300"), "{}", render(&r));
    }

    #[test]
    fn the_summary_says_how_many_attempts_were_not_logged_one_by_one() {
        assert_eq!(summary("id", 0, 0, 0), None);
        assert_eq!(
            summary("id", 1, 0, 0).unwrap(),
            "claude-jail: refused 1 connection attempt; claude-jail events --jail id"
        );
        let s = summary("id", 3_200_000, 2_300_000, 50).unwrap();
        assert!(
            s.contains(
                "refused 3200000 connection attempts (2300050 not logged one by one: 2300000 lost"
            ),
            "{s}"
        );
        assert!(s.ends_with("--jail id"), "the id is the last word: {s}");
    }

    #[test]
    fn a_jail_past_its_budget_only_counts_once_a_minute_and_loses_nothing() {
        let t0 = std::time::Instant::now();
        let mut a = Aggregator::new("j");
        let mut logged = 0u64;
        let mut counted = 0u64;
        let mut port = 0u16;
        let mut windows = Vec::new();
        // 40 windows of a port scan: 40 x 33 records would be 1320, over the budget.
        for w in 0..40u64 {
            for _ in 0..100 {
                port += 1;
                a.add(event(1, port));
            }
            let r = a.flush_at(t0 + Duration::from_millis(250 * w), |_| String::new());
            logged += r.len() as u64;
            counted += r.iter().map(|r| r.count).sum::<u64>();
            windows.push(r);
        }
        let over: Vec<&Record> = windows
            .iter()
            .flatten()
            .filter(|r| r.detail.as_deref().is_some_and(|d| d.contains("budget")))
            .collect();
        assert_eq!(over.len(), 1, "one count while the minute runs");
        assert_eq!(logged, JAIL_LOG_RECORDS + 1);
        // A minute later: one more count record; then the rest at the end.
        for _ in 0..100 {
            port += 1;
            a.add(event(1, port));
        }
        let r = a.flush_at(t0 + Duration::from_secs(70), |_| String::new());
        assert_eq!(r.len(), 1, "{r:?}");
        counted += r[0].count;
        a.add(event(1, 1));
        assert!(a
            .flush_at(t0 + Duration::from_secs(71), |_| String::new())
            .is_empty());
        counted += a.finish().map(|r| r.count).unwrap_or(0);
        assert_eq!(counted, a.total, "every refusal is in some record's count");
        assert!(a.finish().is_none());
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("a\x1b[2Jb\n\\"), "a\\u{1b}[2Jb\\u{a}\\\\");
    }

    fn refused(comm: &str) -> Record {
        let mut a = Aggregator::new("j");
        a.add(event(1234, 22));
        let mut r = a.flush(|_| "deny 10.0.0.0/8 (default)".into()).remove(0);
        r.comm = Some(comm.into());
        r
    }

    #[test]
    fn c1_controls_are_escaped_in_text_and_json() {
        // U+009B is CSI: one character that starts an escape sequence on many terminals.
        let r = refused("x\u{9b}2J\u{1b}[31m\u{7f}\u{85}y");
        let text = render(&r);
        assert!(
            text.contains("comm=x\\u{9b}2J\\u{1b}[31m\\u{7f}\\u{85}y"),
            "{text}"
        );
        assert!(!text.chars().any(|c| c.is_control()), "{text:?}");
        let json = json_line(&r).unwrap();
        assert!(
            json.contains(r#""comm":"x\u009b2J\u001b[31m\u007f\u0085y""#),
            "{json}"
        );
        assert!(!json.chars().any(|c| c.is_control()), "{json:?}");
        assert_eq!(
            serde_json::from_str::<Record>(&json).unwrap(),
            r,
            "still valid JSON, same record"
        );
        // Other non-ASCII text is kept as it is.
        assert!(json_line(&refused("caf\u{e9}"))
            .unwrap()
            .contains("caf\u{e9}"));
    }

    #[test]
    fn the_log_file_escapes_c1_controls_too() {
        let dir = std::env::temp_dir().join(format!("cj-events-c1-{}", std::process::id()));
        let log = dir.join("events.jsonl");
        append(&log, &[refused("a\u{9b}b")]).unwrap();
        let text = fs::read_to_string(&log).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert!(
            text.contains("a\\u009bb") && !text.contains('\u{9b}'),
            "{text:?}"
        );
    }

    fn lines_of(t: &mut Tail) -> Vec<String> {
        let mut v = Vec::new();
        t.poll(&mut |l| v.push(l.to_string())).unwrap();
        v
    }

    fn push(path: &Path, text: &str) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn tail_misses_nothing_written_after_it_opened() {
        let dir = std::env::temp_dir().join(format!("cj-events-tail-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("events.jsonl");
        push(&log, "one\ntwo\n");
        let mut t = Tail::new(&log);
        // Appended after the file was opened, before it was first read (the window between the
        // initial dump and --follow in the old code).
        push(&log, "three\n");
        assert_eq!(lines_of(&mut t), ["one", "two", "three"]);
        assert!(lines_of(&mut t).is_empty(), "nothing twice");
        // A line is handed out only once complete.
        push(&log, "fo");
        assert!(lines_of(&mut t).is_empty());
        push(&log, "ur\n");
        assert_eq!(lines_of(&mut t), ["four"]);

        // Rotation to a new file that is already bigger than what was read: the old code,
        // comparing sizes only, missed it. The tail of the old file is read first.
        push(&log, "five\n");
        fs::rename(&log, rotated(&log)).unwrap();
        push(&log, &"x".repeat(100));
        push(&log, "\nsix\n");
        assert_eq!(lines_of(&mut t), ["five", &"x".repeat(100), "six"]);

        // Renamed away, the new file not there yet: nothing, and no error.
        fs::rename(&log, rotated(&log)).unwrap();
        assert!(lines_of(&mut t).is_empty());
        push(&log, "seven\n");
        assert_eq!(lines_of(&mut t), ["seven"]);

        // Truncated in place.
        fs::write(&log, "").unwrap();
        push(&log, "8\n");
        assert_eq!(lines_of(&mut t), ["8"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tail_of_a_missing_log_starts_when_it_appears() {
        let dir = std::env::temp_dir().join(format!("cj-events-tail2-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("events.jsonl");
        let mut t = Tail::new(&log);
        assert!(lines_of(&mut t).is_empty());
        push(&log, "first\n");
        assert_eq!(lines_of(&mut t), ["first"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_log_directory_is_root_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("cj-events-mode-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        append(&dir.join("events.jsonl"), &[refused("x")]).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(mode, 0o700, "a 0755 log directory is made 0700");
    }

    #[test]
    fn time_is_rendered_in_utc() {
        assert_eq!(format_time(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(1_795_748_400.25), "2026-11-27T03:00:00.250Z");
    }

    #[test]
    fn records_round_trip_through_the_log_and_rotate() {
        let dir = std::env::temp_dir().join(format!("cj-events-test-{}", std::process::id()));
        let log = dir.join("events.jsonl");
        let rec = Record::note("j", "unjailed-launch", 1, "x".into());
        append(&log, std::slice::from_ref(&rec)).unwrap();
        let text = fs::read_to_string(&log).unwrap();
        assert_eq!(serde_json::from_str::<Record>(text.trim()).unwrap(), rec);
        // Grow past the cap: the next append rotates.
        fs::write(&log, vec![b'x'; (MAX_LOG_BYTES + 1) as usize]).unwrap();
        append(&log, &[rec]).unwrap();
        assert!(rotated(&log).exists(), "the big log was rotated");
        assert!(
            fs::metadata(&log).unwrap().len() < 1000,
            "a fresh log was started"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn decode_refuses_short_items() {
        assert!(decode(&[0u8; 10]).is_none());
    }
}
