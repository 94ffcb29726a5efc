//! `cargo xtask bench`: the performance goals of issue 15, each figure measured against its peer
//! in one run, alternating (A B A B ...), medians of the rounds, in a fake world. Ignored by
//! `cargo test`; run with `--ignored --nocapture` (xtask does, in release mode).
//!
//! Prints `figure | claude-jail | peer | ratio | target | PASS/MISS` and writes the same as JSON
//! to target/bench.json. The peers:
//!
//! - launch: [`BASELINE`], a bash launcher doing what the bash design did (a netns, pasta
//!   attached to it, blackhole routes for the denied ranges, setpriv to the user, exec);
//! - per-call costs (sendto, connect): the same compiled loop (`jail-bench-probe`) in a bare
//!   network namespace as the same user;
//! - bulk TCP: the same loop through a bare pasta (the baseline launcher's);
//! - the absolute targets (exit latency, reload, launch with 65,000 entries) have no peer.
//!
//! The machine is shared (2 cores, other engineers' test runs): figures are noisy; alternation
//! and medians are how the bench copes, and `BENCH_ROUNDS` raises the rounds.
use std::{
    fs,
    io::Read,
    net::TcpListener,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use jail_tests::{
    have_root,
    jail::{claude_jail, write_conf},
    pasta::locate_pasta,
    FakeWorld,
};

const PROBE: &str = env!("CARGO_BIN_EXE_jail-bench-probe");
const SINK: &str = "203.0.113.10:9000";
const BULK_BYTES: u64 = 64 << 20;
const SENDTO_CALLS: u64 = 200_000;
const CONNECT_CALLS: u64 = 10_000;
const BIG: u32 = 65_000;

/// What the bash design did, as bash: a network namespace bound to a file, pasta attached to it
/// as the launcher attaches it (no forwarding either way, no gateway mapping), a blackhole route
/// per denied range (one `ip` per route, as the design ran them), the command as the user with
/// no capabilities; then pasta stopped and the namespace released.
/// Arguments: PASTA DIR UID COMMAND...
const BASELINE: &str = r#"
set -e
pasta=$1 dir=$2 uid=$3; shift 3
ns=$(mktemp -p "$dir" ns.XXXXXX)
unshare --net="$ns" true
"$pasta" --runas 0 --config-net --no-map-gw -T none -U none -t none -u none \
    --map-host-loopback none --map-guest-addr none -q -l "$ns.log" -P "$ns.pid" --netns "$ns"
for r in 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 169.254.0.0/16 100.64.0.0/10 0.0.0.0/8 \
         224.0.0.0/4 240.0.0.0/4; do
    nsenter --net="$ns" ip route add blackhole "$r"
done
for r in fc00::/7 fec0::/10; do
    nsenter --net="$ns" ip -6 route add blackhole "$r"
done
set +e
nsenter --net="$ns" setpriv --reuid="$uid" --regid="$uid" --clear-groups --inh-caps=-all \
    --bounding-set=-all -- "$@"
rc=$?
kill "$(cat "$ns.pid")"
umount "$ns"
rm -f "$ns" "$ns.pid" "$ns.log"
exit $rc
"#;

fn rounds(default: usize) -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn monotonic_ns() -> u128 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u128 * 1_000_000_000 + t.tv_nsec() as u128
}

fn allows(n: u32) -> String {
    (0..n)
        .map(|i| {
            format!(
                "allow-ip = 10.{}.{}.{}\n",
                1 + i / 65536,
                (i / 256) % 256,
                i % 256
            )
        })
        .collect()
}

/// One row of the table.
struct Row {
    figure: String,
    ours: f64,
    peer: Option<f64>,
    unit: &'static str,
    /// `ours / peer` (or `ours` alone when there is no peer) against this bound.
    bound: f64,
    /// Whether the bound is a maximum (`<=`) or a minimum (`>=`).
    at_most: bool,
}

impl Row {
    fn value(&self) -> f64 {
        match self.peer {
            Some(p) => self.ours / p,
            None => self.ours,
        }
    }
    fn pass(&self) -> bool {
        if self.at_most {
            self.value() <= self.bound
        } else {
            self.value() >= self.bound
        }
    }
    fn target(&self) -> String {
        let op = if self.at_most { "<=" } else { ">=" };
        match self.peer {
            Some(_) => format!("ratio {op} {}", self.bound),
            None => format!("{op} {} {}", self.bound, self.unit),
        }
    }
}

struct Bench {
    world: FakeWorld,
    pasta: PathBuf,
    profile_dir: PathBuf,
    runs: usize,
}

impl Bench {
    /// `claude-jail run --config CONF --user nobody -- ARGV`, with `--profile-fd 3` onto a file
    /// when `profile` names one.
    fn jail(&self, conf: &Path, argv: &[&str], profile: Option<&Path>) -> Command {
        let c = conf.display().to_string();
        let mut args = vec!["run", "--config", &c, "--user", "nobody"];
        let file = profile.map(|p| fs::File::create(p).unwrap());
        if file.is_some() {
            args.extend(["--profile-fd", "3"]);
        }
        args.push("--");
        args.extend(argv);
        let mut cmd = claude_jail(&self.world, &args).unwrap();
        if let Some(f) = file {
            // SAFETY: runs in the forked child before exec; dup2 only (async-signal-safe). The
            // descriptor stays open in the parent until the closure (and so the Command) drops.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(f.as_raw_fd(), 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd
    }

    /// [`Bench::jail`] with another build of claude-jail (`BENCH_BEFORE_BIN`), no profile.
    fn build_of(&self, bin: &Path, conf: &Path, argv: &[&str]) -> Command {
        let args: Vec<_> = self
            .jail(conf, argv, None)
            .get_args()
            .map(|a| a.to_owned())
            .collect();
        let mut cmd = self.world.host_command(bin).unwrap();
        cmd.args(args)
            .env("CLAUDE_JAIL_PASTA", &self.pasta)
            .env_remove("CLAUDE_SANDBOX_EGRESS_JAIL")
            .env_remove("CLAUDE_SANDBOX_CONF")
            .stdin(Stdio::null());
        cmd
    }

    /// [`BASELINE`] running ARGV as nobody.
    fn baseline(&self, argv: &[&str]) -> Command {
        let mut cmd = self.world.host_command("bash").unwrap();
        cmd.args(["-c", BASELINE, "baseline"])
            .arg(&self.pasta)
            .arg(self.world.dir())
            .arg("65534")
            .args(argv)
            .stdin(Stdio::null());
        cmd
    }

    /// ARGV as nobody in a fresh network namespace whose loopback is up: nothing else.
    fn bare(&self, argv: &[&str]) -> Command {
        let mut cmd = self.world.host_command("unshare").unwrap();
        cmd.args(["--net", "--", "sh", "-c"])
            .arg(
                "ip link set lo up && exec setpriv --reuid=65534 --regid=65534 --clear-groups \
                 --inh-caps=-all --bounding-set=-all -- \"$@\"",
            )
            .arg("sh")
            .args(argv)
            .stdin(Stdio::null());
        cmd
    }
}

/// Runs `cmd` to its end; returns how long that took and its output. Fails the bench unless it
/// succeeded.
fn timed(what: &str, cmd: &mut Command) -> (f64, Output) {
    let t = Instant::now();
    let out = cmd.output().unwrap();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (ms, out)
}

/// The number the probe printed on the last line of its stdout.
fn printed(out: &Output) -> f64 {
    let s = String::from_utf8_lossy(&out.stdout);
    s.lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no number in the probe's output: {s:?}"))
}

/// Each phase's median over the profiles in `dir` named `prefix-*` (one `PHASE MICROSECONDS`
/// per line, in order).
fn profile_medians(dir: &Path, prefix: &str) -> Vec<(String, f64)> {
    let mut phases: Vec<(String, Vec<f64>)> = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let text = fs::read_to_string(e.path()).unwrap_or_default();
        let mut seen: Vec<String> = Vec::new();
        for line in text.lines() {
            let mut w = line.split_whitespace();
            let (Some(name), Some(us)) = (w.next(), w.next().and_then(|s| s.parse::<f64>().ok()))
            else {
                continue;
            };
            // A phase that recurs (the jail's programs, then pasta's) is counted per occurrence.
            let k = seen.iter().filter(|n| *n == name).count();
            seen.push(name.to_string());
            let name = if k == 0 {
                name.to_string()
            } else {
                format!("{name}#{}", k + 1)
            };
            let name = name.as_str();
            match phases.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => v.push(us / 1e3),
                None => phases.push((name.to_string(), vec![us / 1e3])),
            }
        }
    }
    phases.into_iter().map(|(n, v)| (n, median(v))).collect()
}

fn machine() -> String {
    let nproc = thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    format!("nproc {nproc}, kernel {kernel}, {cpu}")
}

#[test]
#[ignore = "benchmark: cargo xtask bench"]
fn bench_side_by_side() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let profile_dir = world.dir().join("profiles");
    fs::create_dir_all(&profile_dir).unwrap();
    let b = Bench {
        pasta: locate_pasta().unwrap(),
        profile_dir,
        runs: rounds(9),
        world,
    };
    let empty = write_conf(&b.world, "empty.conf", "").unwrap();
    let ten = write_conf(&b.world, "ten.conf", &allows(10)).unwrap();
    let big = write_conf(&b.world, "big.conf", &allows(BIG)).unwrap();
    let mut rows = Vec::new();

    // Launch to exit of `true`, and the command's exit to the launcher's.
    let before = std::env::var_os("BENCH_BEFORE_BIN").map(PathBuf::from);
    let mut old_launch = vec![];
    let (mut ours, mut peer, mut exit_gap, mut peer_gap) = (vec![], vec![], vec![], vec![]);
    for i in 0..b.runs {
        let prof = b.profile_dir.join(format!("launch-{i}"));
        let (ms, _) = timed("jail true", &mut b.jail(&empty, &["true"], Some(&prof)));
        ours.push(ms);
        let (ms, _) = timed("baseline true", &mut b.baseline(&["true"]));
        peer.push(ms);
        if let Some(bin) = &before {
            let (ms, _) = timed("before: jail true", &mut b.build_of(bin, &empty, &["true"]));
            old_launch.push(ms);
        }
        let (_, out) = timed("jail stamp", &mut b.jail(&empty, &[PROBE, "stamp"], None));
        exit_gap.push((monotonic_ns() - printed(&out) as u128) as f64 / 1e6);
        let (_, out) = timed("baseline stamp", &mut b.baseline(&[PROBE, "stamp"]));
        peer_gap.push((monotonic_ns() - printed(&out) as u128) as f64 / 1e6);
    }
    if !old_launch.is_empty() {
        println!(
            "\nlaunch of `run -- true`, alternating: this build {:.1} ms, BENCH_BEFORE_BIN {:.1} ms \
             (medians)",
            median(ours.clone()),
            median(old_launch)
        );
    }
    rows.push(Row {
        figure: "launch to exit of `run -- true` (ms)".into(),
        ours: median(ours),
        peer: Some(median(peer)),
        unit: "ms",
        bound: 0.5,
        at_most: true,
    });
    rows.push(Row {
        figure: format!(
            "command exit to launcher exit (ms; baseline's: {:.1})",
            median(peer_gap)
        ),
        ours: median(exit_gap),
        peer: None,
        unit: "ms",
        bound: 5.0,
        at_most: true,
    });

    // Launch with 65,000 allow entries; against an earlier build of claude-jail when
    // BENCH_BEFORE_BIN names one (a change's before/after, alternating as everything else).
    let (mut ours, mut old) = (vec![], vec![]);
    for i in 0..b.runs.min(5) {
        let prof = b.profile_dir.join(format!("big-{i}"));
        let (ms, _) = timed(
            "jail true, 65,000",
            &mut b.jail(&big, &["true"], Some(&prof)),
        );
        ours.push(ms);
        if let Some(bin) = &before {
            let (ms, _) = timed(
                "before: jail true, 65,000",
                &mut b.build_of(bin, &big, &["true"]),
            );
            old.push(ms);
        }
    }
    if !old.is_empty() {
        println!(
            "\nlaunch with {BIG} allow entries, alternating: this build {:.0} ms, \
             BENCH_BEFORE_BIN {:.0} ms (medians)",
            median(ours.clone()),
            median(old)
        );
    }
    rows.push(Row {
        figure: format!("launch with {BIG} allow entries (ms)"),
        ours: median(ours),
        peer: None,
        unit: "ms",
        bound: 200.0,
        at_most: true,
    });

    // BENCH_QUICK: the launches only (a launch change's before/after).
    if std::env::var_os("BENCH_QUICK").is_some() {
        report(&b, &rows);
        return;
    }

    // Per-call costs, in the jail at three policy sizes vs a bare namespace.
    for (name, conf) in [("no", &empty), ("10", &ten), ("65,000", &big)] {
        for (op, calls, bound) in [
            ("sendto", SENDTO_CALLS, 1.05),
            ("connect", CONNECT_CALLS, 1.03),
        ] {
            let n = calls.to_string();
            let argv = [PROBE, op, &n];
            let (mut ours, mut peer) = (vec![], vec![]);
            for _ in 0..b.runs.min(5) {
                let (_, out) = timed(op, &mut b.jail(conf, &argv, None));
                ours.push(printed(&out));
                let (_, out) = timed(op, &mut b.bare(&argv));
                peer.push(printed(&out));
            }
            let what = if op == "sendto" {
                "sendto() 32 B UDP to loopback"
            } else {
                "connect()+close() to loopback"
            };
            rows.push(Row {
                figure: format!("{what}, {name} allow entries (ns/call)"),
                ours: median(ours),
                peer: Some(median(peer)),
                unit: "ns",
                bound,
                at_most: true,
            });
        }
    }

    // Reload of 65,000 entries into a running jail.
    let conf = b.world.dir().join("reload.conf");
    let write = |text: &str| write_conf(&b.world, "reload.conf", text).unwrap();
    write("");
    let c = conf.display().to_string();
    let mut jail = b.jail(&conf, &["sleep", "600"], None).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = claude_jail(&b.world, &["status", "--json"])
            .unwrap()
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("\"running\"") {
            break;
        }
        assert!(Instant::now() < deadline, "the jail did not start");
        thread::sleep(Duration::from_millis(50));
    }
    let big_text = allows(BIG);
    let (mut add, mut remove) = (vec![], vec![]);
    for _ in 0..b.runs.min(5) {
        for (text, out) in [(big_text.as_str(), &mut add), ("", &mut remove)] {
            write(text);
            let (ms, o) = timed(
                "reload",
                &mut claude_jail(&b.world, &["reload", "--config", &c]).unwrap(),
            );
            assert!(
                String::from_utf8_lossy(&o.stdout).contains("reloaded 1 running jail"),
                "the reload updated the running jail"
            );
            out.push(ms);
        }
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(jail.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = jail.wait();
    rows.push(Row {
        figure: format!(
            "reload of {BIG} entries into a running jail (ms; removing them: {:.0})",
            median(remove)
        ),
        ours: median(add),
        peer: None,
        unit: "ms",
        bound: 150.0,
        at_most: true,
    });

    // Bulk TCP to the public server: through the jail vs through a bare pasta.
    let listener = b
        .world
        .in_inet(|| TcpListener::bind(SINK).unwrap())
        .unwrap();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { break };
            thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                while let Ok(k) = c.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                }
            });
        }
    });
    let n = BULK_BYTES.to_string();
    let argv = [PROBE, "bulk", SINK, &n];
    let (mut ours, mut peer) = (vec![], vec![]);
    for _ in 0..b.runs.min(5) {
        for (what, mut cmd, v) in [
            ("bulk, jail", b.jail(&empty, &argv, None), &mut ours),
            ("bulk, bare pasta", b.baseline(&argv), &mut peer),
        ] {
            let (_, out) = timed(what, &mut cmd);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if let Some(l) = stderr
                .lines()
                .find(|l| l.contains("stall") || l.contains("no end"))
            {
                println!("{what}: {l}");
            }
            v.push(printed(&out));
        }
    }
    rows.push(Row {
        figure: format!("bulk TCP through pasta, {} MiB (MB/s)", BULK_BYTES >> 20),
        ours: median(ours),
        peer: Some(median(peer)),
        unit: "MB/s",
        bound: 0.97,
        at_most: false,
    });

    report(&b, &rows);
}

fn report(b: &Bench, rows: &[Row]) {
    let machine = machine();
    println!(
        "\nclaude-jail bench: {} rounds (fewer for the slow figures), alternating, medians; {machine}\n",
        b.runs
    );
    println!("| figure | claude-jail | peer | ratio | target | result |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in rows {
        let peer = r.peer.map_or("-".into(), |p| format!("{p:.1}"));
        let ratio = r.peer.map_or("-".into(), |_| format!("{:.3}", r.value()));
        println!(
            "| {} | {:.1} | {peer} | {ratio} | {} | {} |",
            r.figure,
            r.ours,
            r.target(),
            if r.pass() { "PASS" } else { "MISS" }
        );
    }
    let mut profiles = Vec::new();
    for (prefix, what) in [
        ("launch-", "`run -- true`"),
        ("big-", "`run -- true`, 65,000 entries"),
    ] {
        let phases = profile_medians(&b.profile_dir, prefix);
        if phases.is_empty() {
            continue;
        }
        println!("\nwhere launch time goes, {what} (median ms per phase, in order):");
        for (name, ms) in &phases {
            println!("  {name:<28} {ms:8.2}");
        }
        profiles.push(serde_json::json!({
            "launch": what,
            "phases_ms": phases.iter().map(|(n, ms)| serde_json::json!({"phase": n, "ms": ms})).collect::<Vec<_>>(),
        }));
    }
    let json = serde_json::json!({
        "machine": machine,
        "rounds": b.runs,
        "rows": rows.iter().map(|r| serde_json::json!({
            "figure": r.figure,
            "claude_jail": r.ours,
            "peer": r.peer,
            "unit": r.unit,
            "ratio": r.peer.map(|_| r.value()),
            "target": r.target(),
            "pass": r.pass(),
        })).collect::<Vec<_>>(),
        "profiles": profiles,
    });
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench.json");
    fs::write(&out, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("\nwritten: {}", out.display());
}
