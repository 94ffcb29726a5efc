//! Running jails: live reload, status, the audit trail, and host network changes, in the fake
//! world.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use jail_tests::{
    have_root,
    jail::claude_jail,
    session::{line_channel, Session},
    FakeWorld,
};

fn write_conf(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn reload(world: &FakeWorld, conf: &Path) -> std::process::Output {
    let conf = conf.display().to_string();
    claude_jail(world, &["reload", "--config", &conf])
        .unwrap()
        .output()
        .unwrap()
}

/// One attempt per iteration, printed as "<label> ok" or "<label> refused".
fn probe_loop(targets: &[(&str, &str)]) -> String {
    probe_loop_every(targets, "0.05")
}

/// [`probe_loop`] with `pause` seconds between rounds ("0": as fast as the shell goes).
fn probe_loop_every(targets: &[(&str, &str)], pause: &str) -> String {
    let mut s = String::from("while true; do ");
    for (label, dest) in targets {
        let (h, p) = dest.split_once(':').unwrap();
        s.push_str(&format!(
            "if (exec 3<>/dev/tcp/{h}/{p}) 2>/dev/null; then echo '{label} ok'; else echo '{label} refused'; fi; "
        ));
    }
    s.push_str(&format!("sleep {pause}; done"));
    s
}

fn conf_path(world: &FakeWorld) -> PathBuf {
    world.dir().join("claude-sandbox.conf")
}

#[test]
fn reload_opens_and_closes_a_host_in_a_running_jail() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let conf = conf_path(&world);
    write_conf(&conf, "# nothing allowed yet\n");
    let s = Session::start(&world, &conf, &probe_loop(&[("lan", "10.0.0.5:80")]));
    s.wait_for("lan refused", |l| l == "lan refused");

    write_conf(&conf, "allow-ip = 10.0.0.5\n");
    let out = reload(&world, &conf);
    assert!(
        out.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reloaded 1 running jail"),
        "reload says how many jails it updated: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    s.wait_for("lan ok", |l| l == "lan ok");

    write_conf(&conf, "# allow removed\n");
    assert!(reload(&world, &conf).status.success());
    s.wait_for("lan refused again", |l| l == "lan refused");
    let (_, stderr) = s.stop();
    assert!(
        stderr.contains("claude-jail: refused"),
        "the launcher's exit summary counts the refusals: {stderr}"
    );
}

#[test]
fn reloads_under_load_never_refuse_an_allowed_host_nor_open_a_denied_one() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let conf = conf_path(&world);
    // Each reload changes *which* entry allows 10.0.0.5:22 (four forms, in four different map
    // slots: the port map, and /32, /30, /24 in the allow trie) and *which* entry denies the
    // public server, standing in for a site range in public address space (three forms). An
    // update that removed before it added would refuse the one or let the other through.
    let allow_forms = [
        "allow-ip = 10.0.0.5:22/tcp",
        "allow-ip = 10.0.0.5",
        "allow-ip = 10.0.0.4/30",
        "allow-ip = 10.0.0.0/24",
    ];
    let deny_forms = [
        "deny-ip = 203.0.113.0/24",
        "deny-ip = 203.0.113.10/32",
        "deny-ip = 203.0.0.0/16",
    ];
    let text = |i: usize| {
        let mut t = format!(
            "{}\n{}\n",
            allow_forms[i % allow_forms.len()],
            deny_forms[i % deny_forms.len()]
        );
        // And 2,000 unrelated entries, all replaced by each reload: the update takes long enough
        // that an order removing before adding would leave a gap the probes see.
        for k in 0..2000 {
            t.push_str(&format!(
                "allow-ip = 10.{}.{}.{}\n",
                100 + i % 2,
                k / 250,
                k % 250 + 1
            ));
        }
        if i.is_multiple_of(2) {
            t.push_str("deny-ip = 198.18.0.0/15\n");
        }
        t
    };
    write_conf(&conf, &text(0));
    let s = Session::start(
        &world,
        &conf,
        &probe_loop_every(
            &[
                ("allowed", "10.0.0.5:22"),
                ("denied", "203.0.113.10:80"),
                ("lan", "172.16.0.5:80"),
            ],
            "0",
        ),
    );
    s.wait_for("first round", |l| l.starts_with("lan"));
    for i in 1..=100 {
        write_conf(&conf, &text(i));
        let out = reload(&world, &conf);
        assert!(
            out.status.success(),
            "reload {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (rest, _) = s.stop();
    let count = |l: &str| rest.iter().filter(|x| *x == l).count();
    eprintln!(
        "probes during the reloads: allowed ok {}, denied refused {}",
        count("allowed ok"),
        count("denied refused")
    );
    assert!(
        count("allowed ok") > 0 && count("denied refused") > 0,
        "the loop ran: {rest:?}"
    );
    assert_eq!(
        count("allowed refused"),
        0,
        "an entry allowed before and after is never refused"
    );
    assert_eq!(
        count("denied ok"),
        0,
        "a destination denied before and after is never let through"
    );
    assert_eq!(count("lan ok"), 0, "the default deny set holds throughout");
    for addr in ["203.0.113.10:80", "172.16.0.5:80"] {
        assert!(
            world
                .hits(addr.parse::<std::net::SocketAddr>().unwrap())
                .is_empty(),
            "{addr} saw nothing"
        );
    }
}

#[test]
fn an_invalid_file_changes_nothing() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let conf = conf_path(&world);
    write_conf(&conf, "allow-ip = 10.0.0.5\n");
    let s = Session::start(&world, &conf, &probe_loop(&[("lan", "10.0.0.5:80")]));
    s.wait_for("lan ok", |l| l == "lan ok");
    let status_before = claude_jail(&world, &["status", "--json"])
        .unwrap()
        .output()
        .unwrap();

    write_conf(&conf, "allow-ip = 10.0.0.5\nallow-ip = 10.0.0.0/8:80\n");
    let out = reload(&world, &conf);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an invalid file makes reload fail");
    assert!(
        err.contains(&format!("{}:2:", conf.display())),
        "the error names FILE:LINE: {err}"
    );
    let status_after = claude_jail(&world, &["status", "--json"])
        .unwrap()
        .output()
        .unwrap();
    let digest = |o: &std::process::Output| -> String {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v[0]["policy_digest"].as_str().unwrap().to_string()
    };
    assert_eq!(
        digest(&status_before),
        digest(&status_after),
        "the jail keeps its policy"
    );
    // Still open after the failed reload.
    s.wait_for("lan ok after", |l| l == "lan ok");
    s.stop();
}

#[test]
fn a_refused_connect_is_in_the_audit_trail_and_the_counters() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let conf = conf_path(&world);
    write_conf(&conf, "");
    // The main shell itself connects (and stays alive a moment), so its pid is known.
    let s = Session::start(
        &world,
        &conf,
        "echo pid=$$; { exec 3<>/dev/tcp/10.0.0.5/22; } 2>/dev/null || echo refused; \
         echo done; sleep 30",
    );
    let seen = s.wait_for("done", |l| l == "done");
    let jail_pid: u32 = seen[0].strip_prefix("pid=").unwrap().parse().unwrap();
    assert_eq!(seen[1], "refused", "10.0.0.5:22 is refused by default");

    // status counts it while the jail runs.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (id, refused) = loop {
        let out = claude_jail(&world, &["status", "--json"])
            .unwrap()
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let refused = v[0]["counters"]["refused_by_hook"]["connect4"]
            .as_u64()
            .unwrap_or(0);
        if (refused >= 1 && v[0]["command_pid"].as_u64().unwrap_or(0) != 0)
            || Instant::now() > deadline
        {
            assert_ne!(
                v[0]["command_pid"], 0,
                "status names the command's pid: {v}"
            );
            assert_ne!(v[0]["launcher_pid"], 0, "and the launcher's: {v}");
            break (v[0]["id"].as_str().unwrap().to_string(), refused);
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(refused, 1, "status counts one connect4 refusal");

    let deadline = Instant::now() + Duration::from_secs(10);
    let event = loop {
        let out = claude_jail(&world, &["events", "--json", "--jail", &id])
            .unwrap()
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["kind"] == "refused");
        if let Some(v) = found {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no refused event for jail {id}: {text}"
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(event["addr"], "10.0.0.5");
    assert_eq!(event["port"], 22);
    assert_eq!(event["proto"], "tcp");
    assert_eq!(event["hook"], "connect4");
    assert_eq!(event["comm"], "bash");
    assert_eq!(event["uid"], 65534);
    assert_eq!(
        event["jail_pid"], jail_pid,
        "the event names the process, as the jail sees its pid"
    );
    assert!(
        event["rule"].as_str().unwrap().contains("10.0.0.0/8"),
        "the matching deny entry: {event}"
    );
    s.stop();
}

/// The jail's id, once its launcher has recorded the command's pid (from then on it takes the
/// jail's lock only to apply a change).
fn jail_id_once_running(world: &FakeWorld) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = claude_jail(world, &["status", "--json"])
            .unwrap()
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if v[0]["command_pid"].as_u64().unwrap_or(0) != 0 {
            return v[0]["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no running jail in status: {v}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// The `refused` records of jail `id`, once `done` holds for them.
fn refused_records(
    world: &FakeWorld,
    id: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = claude_jail(world, &["events", "--json", "--jail", id])
            .unwrap()
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let found: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["kind"] == "refused")
            .collect();
        if done(&found) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "the refused records for jail {id} are not all there: {text}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Continues a stopped launcher, also when the test fails while it is stopped.
struct Stopped(nix::unistd::Pid);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// A reload that inserts lines above a deny rule moves it (another position in the policy,
/// another conf line). A refusal made before the reload and one made after it must each name the
/// rule that refused it, as it was then: the launcher is stopped across the reload, so both are
/// read from the ring buffer and described after it (the old code described every event with the
/// launcher's current policy, by position: the first was named after whatever rule the new
/// policy had at the deny's old position).
#[test]
fn refusals_before_and_after_a_reload_name_their_own_rule() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let conf = conf_path(&world);
    write_conf(&conf, "deny-ip = 10.1.2.0/24\n");
    let gate = world.dir().join("gate");
    fs::create_dir(&gate).unwrap();
    fs::set_permissions(&gate, fs::Permissions::from_mode(0o755)).unwrap();
    let g = gate.display();
    // Three attempts on port 80 once the test opens gate 1, three on port 81 after gate 2. The
    // attempts are refused by the jail: no packet leaves.
    let s = Session::start(
        &world,
        &conf,
        &format!(
            "echo started; \
             until [ -e {g}/1 ]; do sleep 0.05; done; \
             for i in 1 2 3; do {{ exec 3<>/dev/tcp/10.1.2.4/80; }} 2>/dev/null || echo refused-80; done; \
             echo before-done; \
             until [ -e {g}/2 ]; do sleep 0.05; done; \
             for i in 1 2 3; do {{ exec 3<>/dev/tcp/10.1.2.4/81; }} 2>/dev/null || echo refused-81; done; \
             echo after-done; sleep 60"
        ),
    );
    s.wait_for("started", |l| l == "started");
    let id = jail_id_once_running(&world);
    // The launcher neither drains nor describes anything until it is continued.
    let launcher = s.launcher();
    nix::sys::signal::kill(launcher, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let stopped = Stopped(launcher);

    fs::write(gate.join("1"), "").unwrap();
    let seen = s.wait_for("before-done", |l| l == "before-done");
    assert_eq!(
        seen.iter().filter(|l| *l == "refused-80").count(),
        3,
        "{seen:?}"
    );
    write_conf(
        &conf,
        "allow-ip = 10.1.2.5\n# the allow above and this line move the deny down\n\
         deny-ip = 10.1.2.0/24\n",
    );
    let out = reload(&world, &conf);
    assert!(
        out.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(gate.join("2"), "").unwrap();
    let seen = s.wait_for("after-done", |l| l == "after-done");
    assert_eq!(
        seen.iter().filter(|l| *l == "refused-81").count(),
        3,
        "{seen:?}"
    );
    drop(stopped);

    let count = |records: &[serde_json::Value], port: u64| -> u64 {
        records
            .iter()
            .filter(|r| r["port"] == port)
            .map(|r| r["count"].as_u64().unwrap())
            .sum()
    };
    let records = refused_records(&world, &id, |r| count(r, 80) >= 3 && count(r, 81) >= 3);
    let c = conf.display();
    for r in &records {
        let want = match r["port"].as_u64() {
            Some(80) => format!("deny 10.1.2.0/24 (conf {c}:1)"),
            Some(81) => format!("deny 10.1.2.0/24 (conf {c}:3)"),
            _ => panic!("an unexpected refusal: {r}"),
        };
        assert_eq!(r["rule"], want.as_str(), "{r}");
    }
    assert_eq!(
        (count(&records, 80), count(&records, 81)),
        (3, 3),
        "{records:#?}"
    );
    s.stop();
}

#[test]
fn a_route_that_appears_on_the_host_is_denied_within_a_second() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let conf = conf_path(&world);
    write_conf(&conf, "");
    let s = Session::start(&world, &conf, &probe_loop(&[("public", "203.0.113.10:80")]));
    s.wait_for("public ok", |l| l == "public ok");
    // A "VPN" comes up: the public server's range is now routed specially on the host.
    let ip = |args: &str| {
        let st = world
            .host_command("ip")
            .unwrap()
            .args(args.split_whitespace())
            .status()
            .unwrap();
        assert!(st.success(), "ip {args}");
    };
    // The launcher applies a change within 1 s; the probe loop sees it within its own round
    // (50 ms plus a connect), and the margin above that is for a loaded machine.
    let within = Duration::from_millis(1500);
    let t = Instant::now();
    ip("route add 203.0.113.0/24 via 192.168.1.1");
    s.wait_for("public refused", |l| l == "public refused");
    let took = t.elapsed();
    eprintln!("route added: refused after {took:?}");
    assert!(
        took < within,
        "the new route was denied only after {took:?}"
    );
    let t = Instant::now();
    ip("route del 203.0.113.0/24 via 192.168.1.1");
    s.wait_for("public ok again", |l| l == "public ok");
    let took = t.elapsed();
    eprintln!("route removed: reachable after {took:?}");
    assert!(
        took < within,
        "the removed route was allowed only after {took:?}"
    );
    s.stop();
}

#[test]
fn a_jailed_process_reloads_no_jail() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let conf = conf_path(&world);
    write_conf(&conf, "");
    let bin = jail_tests::jail::claude_jail_bin().unwrap();
    let script = format!(
        "{} reload --config {}; echo rc=$?",
        bin.display(),
        conf.display()
    );
    let out = jail_tests::jail::run_jailed(&world, &conf, &script).unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // Without root, reload acts on the caller's own jails of the nftables mode only (their
    // registry is the user's); root's jails, this one included, are out of its reach.
    assert!(
        text.contains("reloaded 0 running jails") && text.contains("rc=0"),
        "reload from inside the jail reaches no jail: {text}"
    );
}

#[test]
fn a_port_scan_neither_floods_the_log_nor_the_terminal() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let conf = conf_path(&world);
    write_conf(&conf, "");
    // 10,000 refused connects from one long-lived shell (no subshell per attempt).
    let out = jail_tests::jail::run_jailed(
        &world,
        &conf,
        "for p in $(seq 1 10000); do { exec 3<>/dev/tcp/10.0.0.5/$p; } 2>/dev/null; done; echo scanned",
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("scanned"),
        "the scan ran: {stdout} {stderr}"
    );
    // The terminal gets one summary line from the launcher, nothing per attempt.
    let summary: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("claude-jail:"))
        .collect();
    assert_eq!(summary.len(), 1, "one line for the whole scan: {stderr}");
    assert!(
        summary[0].contains("refused 10000 connection attempts"),
        "{stderr}"
    );
    let id = summary[0].rsplit(' ').next().unwrap().to_string();

    let out = claude_jail(&world, &["events", "--json", "--jail", &id])
        .unwrap()
        .output()
        .unwrap();
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let written: u64 = records.iter().map(|r| r["count"].as_u64().unwrap()).sum();
    let refused_lines = records.iter().filter(|r| r["kind"] == "refused").count();
    assert_eq!(
        written, 10_000,
        "every attempt is accounted for, one by one or in a suppressed count"
    );
    assert!(
        refused_lines <= 2_000,
        "the log is capped: {refused_lines} refused records for 10,000 attempts"
    );
    assert!(
        records.iter().any(|r| r["kind"] == "suppressed"),
        "what was left out is counted"
    );
}

#[test]
fn events_follow_streams_new_refusals() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let conf = conf_path(&world);
    write_conf(&conf, "");
    let mut follow = claude_jail(&world, &["events", "--follow", "--json"])
        .unwrap()
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = line_channel(follow.stdout.take().unwrap());
    let s = Session::start(
        &world,
        &conf,
        "{ exec 3<>/dev/tcp/172.16.0.5/5064; } 2>/dev/null || echo refused; sleep 30",
    );
    s.wait_for("refused", |l| l == "refused");
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("--follow prints the new refusal as it is logged");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["addr"], "172.16.0.5");
    assert_eq!(v["port"], 5064);
    let _ = follow.kill();
    let _ = follow.wait();
    s.stop();
}

#[test]
fn sigusr1_reloads_one_jail_and_egress_jail_0_leaves_running_jails_jailed() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let conf = conf_path(&world);
    write_conf(&conf, "");
    let s = Session::start(&world, &conf, &probe_loop(&[("lan", "10.0.0.5:80")]));
    s.wait_for("lan refused", |l| l == "lan refused");
    write_conf(&conf, "allow-ip = 10.0.0.5/32\n");
    let launcher = s.launcher();
    nix::sys::signal::kill(launcher, nix::sys::signal::Signal::SIGUSR1).unwrap();
    s.wait_for("lan ok after SIGUSR1", |l| l == "lan ok");

    // Turning the jail off in the file does not open the running jail.
    write_conf(&conf, "egress-jail = 0\n");
    let out = reload(&world, &conf);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("applies to the next launch"),
        "reload says egress-jail = 0 waits for the next launch: {said}"
    );
    s.wait_for("lan refused under the new file's policy", |l| {
        l == "lan refused"
    });
    s.stop();
}

#[test]
fn a_killed_launcher_leaves_a_stale_entry_that_gc_removes() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let conf = conf_path(&world);
    write_conf(&conf, "");
    let s = Session::start(&world, &conf, "echo started; sleep 600");
    s.wait_for("started", |l| l == "started");
    let launcher = s.launcher();
    nix::sys::signal::kill(launcher, nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = s.stop();

    let status = || {
        let out = claude_jail(&world, &["status", "--json"])
            .unwrap()
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    // The init dies with its launcher (PR_SET_PDEATHSIG), and the jail cgroup empties.
    let deadline = Instant::now() + Duration::from_secs(10);
    let v = loop {
        let v = status();
        if v[0]["state"] == "stale" || Instant::now() > deadline {
            break v;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        v[0]["state"], "stale",
        "status shows the entry as stale: {v}"
    );
    let id = v[0]["id"].as_str().unwrap().to_string();

    let out = claude_jail(&world, &["gc"]).unwrap().output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("removed stale jail {id}")),
        "gc says what it removed: {said}"
    );
    assert_eq!(
        status(),
        serde_json::json!([]),
        "nothing is left in the registry"
    );
    let left = jail_tests::jail::leftovers(&world, &[id]);
    assert!(
        left.is_empty(),
        "gc removed pins, cgroups, pasta and the run directory: {left:?}"
    );
}
