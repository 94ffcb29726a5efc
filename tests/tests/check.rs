//! `claude-jail check`: one line per prerequisite, each failure with its fix,
//! exit 0 only when a jail can start; nothing of the check is left behind.
use std::fs;

use jail_tests::{
    have_root,
    jail::{claude_jail, claude_jail_after, leftovers, waiting_jail, world_with_conf, write_conf},
};

#[test]
fn check_is_green_where_a_jail_starts_and_names_the_fix_where_it_cannot() {
    if !have_root() {
        return;
    }
    let (world, conf) = world_with_conf("allow-ip = 10.1.2.3\n").unwrap();

    let out = claude_jail(&world, &["check", "--config", &conf])
        .unwrap()
        .output()
        .unwrap();
    let o = String::from_utf8_lossy(&out.stdout);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "all green here: {o}\n{e}");
    for name in ["conf", "privileges", "tun", "cgroup2", "ebpf", "pasta"] {
        assert!(
            o.lines()
                .any(|l| l.starts_with("ok") && l.split_whitespace().nth(1) == Some(name)),
            "an ok line for {name}: {o}"
        );
    }
    assert!(
        leftovers(&world, &[]).is_empty(),
        "the check leaves nothing"
    );
    let cg = claude_jail::cgroup::cgroup2_mount()
        .unwrap()
        .join(claude_jail::cgroup::PARENT);
    let probes: Vec<_> = fs::read_dir(&cg)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("check-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        probes.is_empty(),
        "the probe's cgroup is removed: {probes:?}"
    );

    // The same as JSON.
    let out = claude_jail(&world, &["check", "--json", "--config", &conf])
        .unwrap()
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["checks"].as_array().unwrap().len() >= 6, "{v}");

    // No tun device: that line fails with its fix, the exit status says so.
    let out = claude_jail_after(
        &world,
        "mount -t tmpfs none /dev/net || exit 1",
        &["check", "--config", &conf],
    )
    .unwrap()
    .output()
    .unwrap();
    let o = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a jail cannot start: {o}");
    let tun = o.lines().find(|l| l.contains(" tun ")).unwrap_or("");
    assert!(
        tun.starts_with("FAIL") && tun.contains("fix:"),
        "the tun line fails with its fix: {o}"
    );
    assert!(
        o.lines()
            .any(|l| l.starts_with("ok") && l.contains(" ebpf ")),
        "the other lines are still tried: {o}"
    );

    // An invalid conf.
    let bad = write_conf(&world, "bad.conf", "allow-ip = nonsense\n").unwrap();
    let out = claude_jail(&world, &["check", "--config", &bad.display().to_string()])
        .unwrap()
        .output()
        .unwrap();
    let o = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{o}");
    assert!(
        o.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("bad.conf:1:")),
        "the conf line names the file and line: {o}"
    );

    // A normal user without a sudo rule: told so, with the fix.
    let out = world
        .host_command("setpriv")
        .unwrap()
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .arg(jail_tests::jail::claude_jail_bin().unwrap())
        .args(["check", "--config", &conf])
        .output()
        .unwrap();
    let o = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{o}");
    assert!(
        o.lines()
            .any(|l| l.starts_with("FAIL") && l.contains(" sudo ") && l.contains("fix:")),
        "the sudo line fails with its fix: {o}"
    );
}

/// CLI conventions: a mistyped option of `run` is refused (125, as `podman
/// run`), never run as the command; other usage errors exit 2; `status` shows the digest that
/// `policy` prints for the same conf, and a local start time.
#[test]
fn usage_errors_and_status_speak_as_the_rest_of_the_tool() {
    let bin = jail_tests::jail::claude_jail_bin().unwrap();
    let code = |args: &[&str]| {
        std::process::Command::new(&bin)
            .args(args)
            .env("CLAUDE_SANDBOX_EGRESS_JAIL", "0")
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(
        code(&["run", "--confg", "x"]),
        Some(125),
        "mistyped run option"
    );
    assert_eq!(
        code(&["run", "--usr", "dev"]),
        Some(125),
        "mistyped run option"
    );
    assert_eq!(code(&["status", "--bogus"]), Some(2), "other usage errors");
    assert_eq!(code(&["--version"]), Some(0));

    if !have_root() {
        return;
    }
    let (world, conf) = world_with_conf("allow-ip = 10.1.2.3\n").unwrap();
    let jail = waiting_jail(&world, &conf, ":", "UP").unwrap();
    let status = claude_jail(&world, &["status"]).unwrap().output().unwrap();
    let policy = claude_jail(&world, &["policy", "--config", &conf])
        .unwrap()
        .output()
        .unwrap();
    drop(jail);
    let status = String::from_utf8_lossy(&status.stdout);
    let policy = String::from_utf8_lossy(&policy.stdout);
    let digest = policy
        .lines()
        .find_map(|l| l.strip_prefix("digest: "))
        .unwrap_or_else(|| panic!("policy prints a digest: {policy}"));
    assert!(
        status.contains(&format!("policy {digest} ")),
        "status shows policy's digest {digest}: {status}"
    );
    let year = status
        .split("started=")
        .nth(1)
        .and_then(|s| s.get(..4))
        .unwrap_or("");
    assert!(
        year.starts_with("20") && year.parse::<u32>().is_ok(),
        "the start time is a date, not Unix seconds: {status}"
    );
}

/// `claude-jail verify`: from inside a fresh jail, every line ok: the five
/// programs attached, no capability, the kernel's maps equal to the compiled policy, each denied
/// range refused with EPERM before any packet (the fake LAN sees nothing), DNS resolving; a
/// range the conf allows is not probed.
#[test]
fn verify_audits_a_fresh_jail_from_inside_and_out() {
    if !have_root() {
        return;
    }
    let (world, conf) = world_with_conf("allow-ip = 172.16.0.1\n").unwrap();
    let capture = world.capture().unwrap();
    let out = claude_jail(
        &world,
        &[
            "verify",
            "--config",
            &conf,
            "--user",
            "nobody",
            "--resolve",
            "public.test.example",
        ],
    )
    .unwrap()
    .output()
    .unwrap();
    let o = String::from_utf8_lossy(&out.stdout);
    let e = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- verify:\n{o}\n{e}");
    assert!(out.status.success(), "verified: {o}\n{e}");
    for name in [
        "capabilities",
        "programs",
        "policy",
        "dns",
        "refuse 10/8",
        "refuse 10/8 (UDP)",
        "refuse 192.168/16",
        "refuse 169.254.169.254 (cloud metadata)",
        "refuse fc00::/7 (ULA)",
        "refuse ::ffff:10.0.0.1 (IPv4-mapped)",
    ] {
        assert!(
            o.lines().any(|l| l.starts_with(&format!("ok    {name}: "))),
            "an ok line for {name}: {o}"
        );
    }
    assert!(
        o.contains("refuse 172.16/12: 172.16.0.1:80 is allowed by the conf: not probed"),
        "a range the conf allows is not probed: {o}"
    );
    assert!(
        o.contains("EPERM, before any packet"),
        "refusals are EPERM: {o}"
    );
    let packets = capture.packets();
    let probed: Vec<std::net::IpAddr> =
        ["10.0.0.1", "192.168.0.1", "169.254.169.254", "100.64.0.1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
    assert!(
        packets.iter().all(|p| !probed.contains(&p.dst)),
        "no probe packet left the jail: {packets:?}"
    );
    assert!(leftovers(&world, &[]).is_empty(), "the verify jail is gone");

    // A conf that turns the jail off: verify still audits a jail (its probes are only ever made
    // from inside one), never the unjailed command.
    let off = write_conf(&world, "off.conf", "egress-jail = 0\n").unwrap();
    let out = claude_jail(
        &world,
        &[
            "verify",
            "--config",
            &off.display().to_string(),
            "--user",
            "nobody",
            "--resolve",
            "public.test.example",
        ],
    )
    .unwrap()
    .output()
    .unwrap();
    let o = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && o.contains("refuse 10/8: connect 10.0.0.1:80: EPERM"),
        "with egress-jail = 0 in the conf, verify still runs in a jail: {o}"
    );
    assert!(
        capture.packets().iter().all(|p| !probed.contains(&p.dst)),
        "no probe packet left"
    );
}

/// Refusals also go to the system log, for a fleet's log pipeline: a logger
/// stands in at /dev/log (an overlay over /dev in the test's own mount namespace, so the
/// machine's /dev is untouched) and receives the refused connect, tagged claude-jail.
#[test]
fn refusals_also_reach_the_system_log() {
    if !have_root() {
        return;
    }
    let (world, conf) = world_with_conf("").unwrap();
    let d = world.dir().join("devlog");
    let log = d.join("syslog.txt");
    let setup = format!(
        "mkdir -p {d}/u {d}/w && \
         mount -t overlay cjt-dev -o lowerdir=/dev,upperdir={d}/u,workdir={d}/w /dev || exit 1\n\
         socat -u UNIX-RECV:/dev/log,mode=0666 OPEN:{log},creat,append </dev/null >/dev/null 2>&1 &
         echo $! > {d}/socat.pid\n\
         for i in $(seq 100); do [ -S /dev/log ] && break; sleep 0.05; done",
        d = d.display(),
        log = log.display()
    );
    let out = claude_jail_after(
        &world,
        &setup,
        &[
            "run",
            "--config",
            &conf,
            "--user",
            "nobody",
            "--",
            "bash",
            "-c",
            "(exec 3<>/dev/tcp/10.0.0.5/80) 2>/dev/null; echo done",
        ],
    )
    .unwrap()
    .output()
    .unwrap();
    let pid = fs::read_to_string(d.join("socat.pid")).unwrap_or_default();
    let logged = fs::read_to_string(&log).unwrap_or_default();
    if let Ok(pid) = pid.trim().parse::<i32>() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let o = String::from_utf8_lossy(&out.stdout);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && o.contains("done"), "{o}\n{e}");
    assert!(
        logged.contains("<36>claude-jail[") && logged.contains("refused tcp 10.0.0.5:80"),
        "the refusal reached the system log, facility auth, level warning: {logged:?}"
    );
}
