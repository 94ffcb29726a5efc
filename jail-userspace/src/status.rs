//! `claude-jail status [--json]` and `claude-jail gc`.
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use crate::{
    bpf::{Counters, JailMaps},
    events::escape,
    state::{self, JailRecord, Paths},
};

#[derive(Serialize)]
struct Entry {
    #[serde(flatten)]
    record: JailRecord,
    /// `running`, or `stale` (the launcher is gone: `claude-jail gc` removes it).
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    counters: Option<CountersOut>,
}

#[derive(Serialize)]
struct CountersOut {
    allowed: u64,
    refused: u64,
    refused_by_hook: std::collections::BTreeMap<&'static str, u64>,
    events_dropped: u64,
}

impl From<Counters> for CountersOut {
    fn from(c: Counters) -> Self {
        CountersOut {
            allowed: c.total_allowed(),
            refused: c.total_refused(),
            refused_by_hook: jail_common::Hook::ALL
                .iter()
                .map(|h| (h.name(), c.refused[*h as usize]))
                .collect(),
            events_dropped: c.events_dropped,
        }
    }
}

pub fn command(json: bool) -> Result<ExitCode> {
    let caller = crate::caller::Caller::current();
    // Without root: the caller's own jails of the nftables mode (root's registry is root's).
    let paths = Paths::for_caller(caller)?;
    let mut entries = Vec::new();
    for rec in state::list_records(&paths)? {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                eprintln!("claude-jail: warning: {e:#}");
                continue;
            }
        };
        // A user behind sudo sees their own jails only (others' commands are theirs).
        if caller.sees_only().is_some_and(|uid| uid != rec.uid) {
            continue;
        }
        let running = state::pid_alive(rec.launcher_pid);
        let counters = if rec.jailed && rec.backend == "ebpf" {
            JailMaps::open(&paths.jail_pins(&rec.id))
                .and_then(|m| m.counters())
                .ok()
                .map(CountersOut::from)
        } else {
            None
        };
        entries.push(Entry {
            record: rec,
            state: if running { "running" } else { "stale" },
            counters,
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        println!("no jails");
    }
    for e in &entries {
        let r = &e.record;
        println!(
            "{} {}{} user={}({}) launcher={} init={} started={} cmd={}",
            r.id,
            e.state,
            if r.jailed {
                ""
            } else {
                " UNJAILED (egress jail off)"
            },
            escape(&r.user),
            r.uid,
            r.launcher_pid,
            r.init_pid,
            crate::sys::local_time(r.started as i64),
            escape(&r.command.join(" ")),
        );
        if r.jailed {
            println!(
                "    enforced by {}{}",
                r.backend,
                if r.backend_reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", escape(&r.backend_reason))
                }
            );
        }
        println!(
            "    policy {} (maps {}) from {} (switch: {})",
            if r.conf_digest.is_empty() {
                "-"
            } else {
                &r.conf_digest
            },
            if r.policy_digest.is_empty() {
                "-"
            } else {
                &r.policy_digest
            },
            escape(&r.conf),
            escape(&r.switch_source)
        );
        if let Some(c) = &e.counters {
            let by: Vec<String> = c
                .refused_by_hook
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(h, n)| format!("{h}={n}"))
                .collect();
            println!(
                "    allowed {} refused {}{} events dropped {}",
                c.allowed,
                c.refused,
                if by.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", by.join(" "))
                },
                c.events_dropped
            );
        }
        if e.state == "stale" {
            println!("    stale: its launcher is gone; `claude-jail gc` removes it");
        }
    }
    Ok(ExitCode::SUCCESS)
}
