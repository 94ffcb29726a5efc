//! `claude-jail check [--json]`: can a jail start here, and if not, what is the fix. One line per
//! prerequisite, each failure with its fix; exit 0 only when a jail can start.
//!
//! As root it tries what a launch does, without building a jail: the preflight checks, a tap
//! device made in a throwaway network namespace, the eBPF programs loaded, verified and attached
//! to a throwaway cgroup (detached again on return), pasta found, trusted and new enough, the conf
//! valid and trusted. Run by a normal user, it says whether sudo lets them start one.
use std::{path::PathBuf, process::ExitCode};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;

use crate::{
    caller::Caller,
    conf::{self, Trust},
    exit::Exit,
    preflight::{self, Facts},
};

/// One prerequisite: its name and either what was found or what failed (with the fix).
struct Line {
    name: &'static str,
    outcome: Result<String>,
}

pub fn command(config: Option<PathBuf>, json_out: bool) -> Result<ExitCode> {
    let caller = Caller::current();
    let env_conf = std::env::var_os(conf::ENV_CONF);
    caller.check_conf_choice(config.as_deref(), env_conf.as_deref())?;
    let conf_path = conf::conf_path(config, env_conf.as_deref());
    let facts = Facts::read();
    let mut lines = Vec::new();
    let conf = conf::load(&conf_path, Trust::Strict).map_err(|e| e.shown_to(caller));
    let switch = conf
        .as_ref()
        .ok()
        .map(|c| conf::jail_enabled(c, std::env::var_os(conf::ENV_EGRESS_JAIL).as_deref()));
    lines.push(Line {
        name: "conf",
        outcome: match &conf {
            Ok(c) if c.found => Ok(format!("{} is valid and trusted", conf_path.display())),
            Ok(_) => Ok(format!(
                "{} does not exist: all defaults (the jail on, nothing allowed)",
                conf_path.display()
            )),
            Err(e) => Err(anyhow!("{e}")),
        },
    });
    if let Some(Ok(s)) = &switch {
        lines.push(Line {
            name: "switch",
            outcome: Ok(format!(
                "the egress jail is {} ({})",
                if s.enabled { "on" } else { "OFF" },
                s.source
            )),
        });
    }
    if let Caller::Unprivileged { .. } = caller {
        lines.push(Line {
            name: "sudo",
            outcome: sudo_rule(),
        });
        lines.push(Line {
            name: "rootless",
            outcome: Err(anyhow!(
                "claude-jail's rootless mode is not available yet: a jail needs root (fix: run \
                 `sudo claude-jail check` for the rest of this list)"
            )),
        });
    } else {
        lines.push(Line {
            name: "privileges",
            outcome: preflight::privileges(&facts),
        });
        lines.push(Line {
            name: "tun",
            outcome: preflight::tun(&facts)
                .and_then(|found| tap_device().map(|t| format!("{found}; {t}"))),
        });
        let cg = preflight::cgroup2(&facts);
        let cg_ok = cg.is_ok();
        lines.push(Line {
            name: "cgroup2",
            outcome: cg,
        });
        lines.push(Line {
            name: "ebpf",
            outcome: if cg_ok {
                ebpf_probe()
            } else {
                Err(anyhow!("not tried: needs the writable cgroup2 above"))
            },
        });
        lines.push(Line {
            name: "pasta",
            outcome: match &conf {
                Ok(c) => crate::pasta::locate(caller, c).map(|p| {
                    format!(
                        "{} (trusted, has every option the jail passes)",
                        p.display()
                    )
                }),
                Err(_) => Err(anyhow!("not tried: the conf above is invalid")),
            },
        });
    }
    let ok = lines.iter().all(|l| l.outcome.is_ok());
    if json_out {
        let v: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| match &l.outcome {
                Ok(d) => json!({"check": l.name, "ok": true, "detail": d}),
                Err(e) => json!({"check": l.name, "ok": false, "detail": format!("{e:#}")}),
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"ok": ok, "checks": v}))?
        );
    } else {
        for l in &lines {
            match &l.outcome {
                Ok(d) => println!("ok    {:<10} {d}", l.name),
                Err(e) => println!("FAIL  {:<10} {e:#}", l.name),
            }
        }
        println!(
            "{}",
            if ok {
                "claude-jail: a jail can start here"
            } else {
                "claude-jail: a jail cannot start here until each FAIL above is fixed"
            }
        );
    }
    Ok(if ok { Exit::Success } else { Exit::Failure }.into())
}

/// TUNSETIFF in a throwaway network namespace (a thread of its own, gone on return): a device
/// node that exists and opens can still be refused here (a device cgroup, a security module).
fn tap_device() -> Result<String> {
    std::thread::spawn(|| -> Result<String> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("unshare a throwaway network namespace")?;
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .context("open /dev/net/tun")?;
        crate::sys::tun_set_iff(std::os::fd::AsFd::as_fd(&tun), "cjcheck0").map_err(|e| {
            anyhow!(
                "TUNSETIFF on /dev/net/tun failed ({e}): pasta could not make its tap device \
                 (fix: in a container, start it with --device=/dev/net/tun; on a host, `modprobe \
                 tun`)"
            )
        })?;
        Ok("a tap device can be made".into())
    })
    .join()
    .map_err(|_| anyhow!("the tap check panicked"))?
}

/// The eBPF programs loaded, verified and attached to a throwaway cgroup, then removed.
fn ebpf_probe() -> Result<String> {
    let root = crate::cgroup::cgroup2_mount()?;
    let dir = root
        .join(crate::cgroup::PARENT)
        .join(format!("check-{}", std::process::id()));
    let cg = crate::cgroup::Cgroup::create(&dir).map_err(|e| anyhow!("{e}"))?;
    let probed = crate::bpf::probe(&dir);
    let removed = cg.remove();
    probed.map_err(|e| {
        anyhow!(
            "{e:#} (fix: a kernel with CONFIG_BPF_SYSCALL and cgroup BPF (Linux >= 5.8), and no \
             security module refusing bpf())"
        )
    })?;
    removed.map_err(|e| anyhow!("{e}"))?;
    Ok("the five programs load, pass the verifier and attach to a cgroup".into())
}

/// Whether sudo lets this user run claude-jail without a password (`sudo -n -l PATH`).
fn sudo_rule() -> Result<String> {
    let me = std::env::current_exe().context("find this program's path")?;
    let out = std::process::Command::new("sudo")
        .args(["-n", "-l"])
        .arg(&me)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(format!("sudo lets you run {}", me.display())),
        Ok(_) => bail!(
            "sudo does not let you run {} without a password (fix: ask an administrator for a \
             NOPASSWD sudo rule for claude-jail)",
            me.display()
        ),
        Err(e) => bail!("sudo cannot be run ({e}) (fix: install sudo)"),
    }
}
