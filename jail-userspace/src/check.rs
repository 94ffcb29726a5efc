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
    /// A prerequisite of the backend a launch would not use here: shown, never a failure.
    note: bool,
}

pub fn command(config: Option<PathBuf>, json_out: bool) -> Result<ExitCode> {
    let caller = Caller::current();
    let env_conf = std::env::var_os(conf::ENV_CONF);
    caller.check_conf_choice(config.as_deref(), env_conf.as_deref())?;
    let conf_path = conf::conf_path(config, env_conf.as_deref());
    let facts = Facts::read();
    let mut lines = Vec::new();
    let conf =
        conf::load(&conf_path, Trust::Strict).map_err(|e| e.shown_to(caller.delegated_uid()));
    let switch = conf
        .as_ref()
        .ok()
        .map(|c| conf::jail_enabled(c, std::env::var_os(conf::ENV_EGRESS_JAIL).as_deref()));
    lines.push(Line {
        note: false,
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
            note: false,
            name: "switch",
            outcome: Ok(format!(
                "the egress jail is {} ({})",
                if s.enabled { "on" } else { "OFF" },
                s.source
            )),
        });
    }
    // The backend a launch would choose now, and why (`launch::choose_backend`, the one place).
    let choice = conf
        .as_ref()
        .map_err(|_| anyhow!("not chosen: the conf above is invalid"))
        .and_then(|c| crate::launch::choose_backend(c, &facts));
    let nftables = matches!(
        &choice,
        Ok(ch) if ch.backend == crate::launch::Enforcement::Nftables
    );
    lines.push(Line {
        note: false,
        name: "backend",
        outcome: choice.map(|ch| format!("{} ({})", ch.backend.name(), ch.why)),
    });
    if let Caller::Unprivileged { .. } = caller {
        // Informational: without a sudo rule the nftables mode below is the jail.
        lines.push(Line {
            note: false,
            name: "sudo",
            outcome: Ok(sudo_rule().unwrap_or_else(|e| {
                format!("{e:#} (the eBPF mode needs it; the nftables mode does not)")
            })),
        });
        lines.push(Line {
            note: false,
            name: "tun",
            outcome: preflight::tun(&facts),
        });
        lines.push(Line {
            note: false,
            name: "rootless",
            outcome: preflight::user_namespaces(&facts).and_then(|found| {
                nft_probe().map(|t| format!("the nftables mode is available: {found}; {t}"))
            }),
        });
    } else {
        lines.push(Line {
            note: false,
            name: "privileges",
            outcome: preflight::privileges(&facts),
        });
        lines.push(Line {
            note: false,
            name: "tun",
            outcome: preflight::tun(&facts)
                .and_then(|found| tap_device().map(|t| format!("{found}; {t}"))),
        });
        let cg = preflight::cgroup2(&facts);
        let cg_ok = cg.is_ok();
        lines.push(Line {
            note: false,
            name: "cgroup2",
            outcome: cg,
        });
        lines.push(Line {
            note: false,
            name: "ebpf",
            outcome: if cg_ok {
                ebpf_probe()
            } else {
                Err(anyhow!("not tried: needs the writable cgroup2 above"))
            },
        });
    }
    if nftables && !matches!(caller, Caller::Unprivileged { .. }) {
        // Root whose eBPF prerequisites fail (a container's default capabilities): the
        // nftables mode is what a launch uses; the eBPF lines above say what it would need.
        for l in lines
            .iter_mut()
            .filter(|l| ["privileges", "cgroup2", "ebpf"].contains(&l.name))
        {
            l.note = true;
        }
        // Its tap device is made by pasta inside the jail's own namespaces; the eBPF mode's
        // check (a tap in a throwaway namespace this root may not make) does not apply.
        if let Some(l) = lines.iter_mut().find(|l| l.name == "tun") {
            l.outcome = preflight::tun(&facts);
        }
        lines.push(Line {
            note: false,
            name: "rootless",
            outcome: preflight::user_namespaces(&facts).and_then(|found| {
                nft_probe().map(|t| format!("the nftables mode is available: {found}; {t}"))
            }),
        });
    }
    lines.push(Line {
        note: false,
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
    let ok = lines.iter().all(|l| l.note || l.outcome.is_ok());
    if json_out {
        let v: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| match &l.outcome {
                Ok(d) => json!({"check": l.name, "ok": true, "detail": d}),
                Err(e) => json!({
                    "check": l.name,
                    "ok": false,
                    "required": !l.note,
                    "detail": format!("{e:#}"),
                }),
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
                Err(e) if l.note => println!("note  {:<10} {e:#}", l.name),
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
    let cg = crate::cgroup::Cgroup::create(&dir)?;
    let probed = crate::bpf::probe(&dir);
    let removed = cg.remove();
    probed.map_err(|e| {
        anyhow!(
            "{e:#} (fix: a kernel with CONFIG_BPF_SYSCALL and cgroup BPF (Linux >= 5.8), and no \
             security module refusing bpf())"
        )
    })?;
    removed?;
    Ok("the five programs load, pass the verifier and attach to a cgroup".into())
}

/// The nftables mode's table, installed for real: in a throwaway user and network namespace (a
/// child that exits), the table of an empty policy and its log group.
fn nft_probe() -> Result<String> {
    use std::io::{Read, Write};
    let (r, w) = nix::unistd::pipe().context("pipe")?;
    let mut w = Some(std::fs::File::from(w));
    let child = crate::sys::clone_process(
        nix::sched::CloneFlags::CLONE_NEWUSER | nix::sched::CloneFlags::CLONE_NEWNET,
        || {
            let mut w = w.take().expect("runs once");
            let tried = (|| -> Result<()> {
                let sock = crate::nft::open_socket()?;
                let empty = crate::policy::MapEntries::default();
                crate::nft::install(
                    std::os::fd::AsFd::as_fd(&sock),
                    &crate::nft::Ruleset::compile(&empty),
                )?;
                crate::nft::LogReader::open(crate::nft::DEFAULT_LOG_GROUP)?;
                Ok(())
            })();
            match tried {
                Ok(()) => 0,
                Err(e) => {
                    let _ = write!(w, "{e:#}");
                    1
                }
            }
        },
    )
    .context("make a user and network namespace")?;
    drop(w);
    let mut said = String::new();
    std::fs::File::from(r)
        .read_to_string(&mut said)
        .context("read the probe's answer")?;
    let status = nix::sys::wait::waitpid(child, None).context("wait for the probe")?;
    match status {
        nix::sys::wait::WaitStatus::Exited(_, 0) => {
            Ok("an nftables table and its log install in a namespace of this user's".into())
        }
        _ if !said.is_empty() => bail!("{said}"),
        s => bail!("the nftables probe failed ({s:?})"),
    }
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
