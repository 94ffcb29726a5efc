//! `claude-jail verify`: an auditor's table, from inside a fresh jail.
//!
//! It starts a jail (`claude-jail run`) whose command is this program's hidden `verify-inside`,
//! which runs as the jailed user and checks what a process there can see: its capabilities are
//! empty (no_new_privs and seccomp on), one connect per denied range is refused with EPERM
//! before any packet (a non-blocking connect that does not fail at once is a failure, and is
//! closed), and DNS resolves. Meanwhile the outside (root) checks what only root can: the five
//! programs are attached to the jail's cgroup, and the kernel's maps hold exactly the policy the
//! launch compiled from the conf. Exit 0 only when every line is ok.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, ToSocketAddrs},
    path::PathBuf,
    process::{Command, ExitCode, Stdio},
};

use anyhow::{bail, Context, Result};
use nix::{
    errno::Errno,
    sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage},
};

use crate::{
    caller::Caller,
    conf::{self, Trust},
    exit::Exit,
    hostnet::HostNet,
    policy::Policy,
    state::{self, Paths},
};

/// One destination per denied range, as a probe: (label, address, port, TCP?).
const PROBES: [(&str, &str, u16, bool); 10] = [
    ("10/8", "10.0.0.1", 80, true),
    ("10/8 (UDP)", "10.0.0.1", 53, false),
    ("172.16/12", "172.16.0.1", 80, true),
    ("192.168/16", "192.168.0.1", 80, true),
    (
        "169.254.169.254 (cloud metadata)",
        "169.254.169.254",
        80,
        true,
    ),
    ("100.64/10 (CGNAT, Tailscale)", "100.64.0.1", 80, true),
    ("0/8", "0.0.0.1", 80, true),
    ("fc00::/7 (ULA)", "fd00::1", 80, true),
    ("::ffff:10.0.0.1 (IPv4-mapped)", "::ffff:10.0.0.1", 80, true),
    (
        "64:ff9b::/96 (NAT64 of 10.0.0.1)",
        "64:ff9b::a00:1",
        80,
        true,
    ),
];

/// The outside: start the jail, read the inside's lines, check the cgroup and the maps.
pub fn command(
    config: Option<PathBuf>,
    user: Option<String>,
    resolve: &str,
    json_out: bool,
) -> Result<ExitCode> {
    let caller = Caller::current();
    caller.need_root("verify")?;
    let env_conf = std::env::var_os(conf::ENV_CONF);
    caller.check_conf_choice(config.as_deref(), env_conf.as_deref())?;
    caller.check_user_choice(user.as_deref())?;
    let conf_path = conf::conf_path(config.clone(), env_conf.as_deref());
    let conf =
        conf::load(&conf_path, Trust::Strict).map_err(|e| e.shown_to(caller.delegated_uid()))?;
    let host = HostNet::read().context("read the host's addresses and routes")?;
    let policy = Policy::build(&conf, &host);

    let mut lines: Vec<(String, Result<String, String>)> = Vec::new();
    let mut probe_args = Vec::new();
    for (label, addr, port, tcp) in PROBES {
        let ip: IpAddr = addr.parse().expect("a literal address");
        let proto = if tcp { 6 } else { 17 };
        if policy.decide(ip, port, proto).allowed {
            lines.push((
                format!("refuse {label}"),
                Ok(format!("{addr}:{port} is allowed by the conf: not probed")),
            ));
        } else {
            probe_args.push(format!(
                "{}={}",
                if tcp { "tcp" } else { "udp" },
                SocketAddr::new(ip, port)
            ));
        }
    }

    let me = std::env::current_exe().context("find this program's path")?;
    let mut cmd = Command::new(&me);
    cmd.arg("run");
    if let Some(c) = &config {
        cmd.arg("--config").arg(c);
    }
    if let Some(u) = &user {
        cmd.args(["--user", u]);
    }
    cmd.arg("--")
        .arg(&me)
        .args(["verify-inside", "--resolve", resolve])
        .args(probe_args.iter().flat_map(|p| ["--refused", p.as_str()]))
        // A jail, whatever the conf's or the caller's switch says: the probes below are only
        // ever made from inside one (the inside also checks it is in one before any probe).
        .env(conf::ENV_EGRESS_JAIL, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().context("start claude-jail run")?;
    let mut out = BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    let mut inside_done = false;
    while out.read_line(&mut line)? > 0 {
        let l = line.trim_end().to_string();
        line.clear();
        if l == "V-END" {
            inside_done = true;
            break;
        }
        if let Some(rest) = l.strip_prefix("V ") {
            let mut w = rest.splitn(3, '\t');
            let (name, verdict, detail) = (
                w.next().unwrap_or("").to_string(),
                w.next().unwrap_or(""),
                w.next().unwrap_or("").to_string(),
            );
            lines.push((
                name,
                if verdict == "ok" {
                    Ok(detail)
                } else {
                    Err(detail)
                },
            ));
        }
    }
    if inside_done {
        // The jail is up, its command waiting: what only root can see.
        let launcher = child.id();
        let found = outside_checks(launcher);
        lines.extend(found);
    }
    drop(child.stdin.take());
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    let status = child.wait()?;
    if !inside_done {
        lines.push((
            "jail".into(),
            Err(format!(
                "the jail did not start ({status}); its refusal is above (fix: `claude-jail check`)"
            )),
        ));
    }

    let ok = lines.iter().all(|(_, r)| r.is_ok());
    if json_out {
        let v: Vec<serde_json::Value> = lines
            .iter()
            .map(|(n, r)| match r {
                Ok(d) => serde_json::json!({"check": n, "ok": true, "detail": d}),
                Err(d) => serde_json::json!({"check": n, "ok": false, "detail": d}),
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"ok": ok, "checks": v}))?
        );
    } else {
        for (n, r) in &lines {
            match r {
                Ok(d) => println!("ok    {n}: {d}"),
                Err(d) => println!("FAIL  {n}: {d}"),
            }
        }
        println!(
            "{}",
            if ok {
                "claude-jail: verified: the jail holds"
            } else {
                "claude-jail: NOT verified: see each FAIL above"
            }
        );
    }
    Ok(if ok { Exit::Success } else { Exit::Failure }.into())
}

/// The jail whose launcher is `launcher`: its programs and its maps.
fn outside_checks(launcher: u32) -> Vec<(String, Result<String, String>)> {
    let mut out = Vec::new();
    let paths = match Paths::system() {
        Ok(p) => p,
        Err(e) => return vec![("registry".into(), Err(format!("{e:#}")))],
    };
    let rec = state::list_records(&paths)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .find(|r| r.launcher_pid == launcher);
    let Some(rec) = rec else {
        return vec![(
            "registry".into(),
            Err(format!("no registered jail has launcher {launcher}")),
        )];
    };
    // The attach types of the five programs (the kernel's enum bpf_attach_type).
    const HOOKS: [(&str, u32); 5] = [
        ("connect4", 10),
        ("connect6", 11),
        ("sendmsg4", 14),
        ("sendmsg6", 15),
        ("egress (packet backstop)", 1),
    ];
    let cg = paths.jail_cgroup(&rec.id);
    let programs = std::fs::File::open(&cg)
        .map_err(|e| format!("open {}: {e}", cg.display()))
        .and_then(|f| {
            let missing: Vec<&str> = HOOKS
                .iter()
                .filter(|(_, t)| {
                    crate::sys::prog_query_count(std::os::fd::AsFd::as_fd(&f), *t)
                        .map_or(true, |n| n == 0)
                })
                .map(|(n, _)| *n)
                .collect();
            if missing.is_empty() {
                Ok(format!(
                    "connect4, connect6, sendmsg4, sendmsg6 and egress attached to {}",
                    cg.display()
                ))
            } else {
                Err(format!(
                    "nothing attached to {} for {}",
                    cg.display(),
                    missing.join(", ")
                ))
            }
        });
    out.push(("programs".into(), programs));
    let maps = crate::bpf::JailMaps::open(&paths.jail_pins(&rec.id))
        .and_then(|m| m.read_entries())
        .map_err(|e| format!("{e:#}"))
        .and_then(|entries| {
            let kernel = entries.digest();
            if kernel == rec.policy_digest {
                Ok(format!(
                    "the kernel's maps hold the policy compiled from {} (digest {kernel}; the \
                     conf's own part {})",
                    rec.conf, rec.conf_digest
                ))
            } else {
                Err(format!(
                    "the kernel's maps (digest {kernel}) differ from the compiled policy \
                     ({}): report it",
                    rec.policy_digest
                ))
            }
        });
    out.push(("policy".into(), maps));
    out
}

/// The inside: runs as the jailed user. `refused` are `tcp=ADDR:PORT` / `udp=ADDR:PORT`.
pub fn inside(resolve: &str, refused: &[String]) -> Result<ExitCode> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    let field = |k: &str| -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    // Only inside a jail (an unjailed command also runs with no_new_privs, but without the
    // seccomp filter): a probe made anywhere else would leave for the real network.
    if nix::unistd::getuid().is_root() || field("NoNewPrivs:") != "1" || field("Seccomp:") != "2" {
        bail!("verify-inside runs only inside a jail, started by `claude-jail verify`");
    }
    let say = |name: &str, r: Result<String, String>| {
        let (v, d) = match r {
            Ok(d) => ("ok", d),
            Err(d) => ("FAIL", d),
        };
        println!("V {name}\t{v}\t{d}");
    };
    let caps: Vec<String> = ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"]
        .iter()
        .filter(|k| !field(k).trim_start_matches('0').is_empty())
        .map(|k| format!("{k} {}", field(k)))
        .collect();
    say(
        "capabilities",
        if caps.is_empty() && field("Seccomp:") == "2" {
            Ok(format!(
                "none in any set; no_new_privs and a seccomp filter on (uid {})",
                nix::unistd::getuid()
            ))
        } else {
            Err(format!(
                "left: {} (seccomp mode {})",
                caps.join(", "),
                field("Seccomp:")
            ))
        },
    );
    for spec in refused {
        let (proto, dest) = spec.split_once('=').unwrap_or(("tcp", spec));
        let dest: SocketAddr = match dest.parse() {
            Ok(d) => d,
            Err(e) => {
                say(&format!("refuse {dest}"), Err(format!("bad address: {e}")));
                continue;
            }
        };
        let label = PROBES
            .iter()
            .find(|(_, a, p, tcp)| {
                a.parse::<IpAddr>().ok() == Some(dest.ip())
                    && *p == dest.port()
                    && *tcp == (proto == "tcp")
            })
            .map_or(dest.to_string(), |(l, ..)| l.to_string());
        say(&format!("refuse {label}"), probe(proto == "tcp", dest));
    }
    say(
        "dns",
        match (resolve, 0).to_socket_addrs() {
            Ok(mut a) => match a.next() {
                Some(first) => Ok(format!("{resolve} resolves ({})", first.ip())),
                None => Err(format!("{resolve}: no address")),
            },
            Err(e) => Err(format!("{resolve} does not resolve: {e}")),
        },
    );
    println!("V-END");
    std::io::stdout().flush()?;
    // Wait until the outside has looked at the jail.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(ExitCode::SUCCESS)
}

/// One refused attempt: a non-blocking connect (TCP) or a sendto (UDP) must fail with EPERM at
/// once, before any packet.
fn probe(tcp: bool, dest: SocketAddr) -> Result<String, String> {
    let family = if dest.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let ty = if tcp {
        SockType::Stream
    } else {
        SockType::Datagram
    };
    let fd = socket::socket(
        family,
        ty,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    let addr = SockaddrStorage::from(dest);
    let r = if tcp {
        socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)
    } else {
        socket::sendto(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            b"claude-jail verify",
            &addr,
            socket::MsgFlags::empty(),
        )
        .map(drop)
    };
    match r {
        Err(Errno::EPERM) => Ok(format!(
            "{} {dest}: EPERM, before any packet",
            if tcp { "connect" } else { "sendto" }
        )),
        Err(e) => Err(format!(
            "{dest}: {e}, not EPERM: the jail's hooks did not refuse it"
        )),
        Ok(()) => Err(format!("{dest}: NOT refused: the attempt went out")),
    }
}
