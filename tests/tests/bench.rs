//! `cargo xtask bench`: the performance goals, measured side by side in one run, in a fake world.
//! Ignored by `cargo test`; run with `--ignored --nocapture` (xtask does, in release mode).
//!
//! - bulk TCP from a cgroup with the five programs attached vs. a cgroup without: the cost of the
//!   packet backstop (it judges every packet);
//! - a reload that adds 10,000 allow entries (and one that removes them): the map update alone,
//!   and `claude-jail reload` end to end against a running jail. The goal is 100 ms.
use std::{
    fs,
    io::Read,
    net::TcpListener,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::Path,
    process::Stdio,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use claude_jail::{bpf, conf, hostnet::HostNet, policy::Policy};
use jail_tests::{cgroup::TestCgroup, have_root, jail::claude_jail, FakeWorld};

const BULK_BYTES: u64 = 256 << 20;
const ROUNDS: usize = 5;

/// A cgroup of the bench's own, with the programs of `attach` attached (pinned in its private
/// bpffs) when given.
fn bench_cgroup(name: &str, attach: Option<&Policy>) -> TestCgroup {
    let tag = format!("bench-{name}");
    let Some(p) = attach else {
        return TestCgroup::create(&tag);
    };
    let cg = TestCgroup::with_bpffs(&tag);
    bpf::attach(cg.path(), &cg.pins(), p.map_entries()).unwrap();
    cg
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn policy_from(text: &str) -> Policy {
    let c = conf::parse(Path::new("bench.conf"), text.as_bytes()).unwrap();
    Policy::build(&c, &HostNet::default())
}

fn ten_thousand_allows() -> String {
    (0..10_000u32)
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

#[test]
#[ignore = "benchmark: cargo xtask bench"]
fn bench_packet_backstop_bulk_tcp() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    // A sink on the public server: reads to EOF, reports when the last byte arrived.
    let listener = world
        .in_inet(|| TcpListener::bind("203.0.113.10:9000").unwrap())
        .unwrap();
    let (tx, rx) = mpsc::channel::<(u64, Instant)>();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { break };
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            while let Ok(k) = c.read(&mut buf) {
                if k == 0 {
                    break;
                }
                n += k as u64;
            }
            if tx.send((n, Instant::now())).is_err() {
                break;
            }
        }
    });
    let with = bench_cgroup("on", Some(&policy_from("")));
    let without = bench_cgroup("off", None);
    let mut mbps = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (i, cg) in [&without, &with].into_iter().enumerate() {
            let procs = cg.path().join("cgroup.procs");
            let mut cmd = world.host_command("bash").unwrap();
            cmd.args([
                "-c",
                &format!("head -c {BULK_BYTES} /dev/zero > /dev/tcp/203.0.113.10/9000"),
            ])
            .stdout(Stdio::null());
            // SAFETY: runs in the forked child; only writes one file.
            unsafe {
                cmd.pre_exec(move || fs::write(&procs, "0"));
            }
            let start = Instant::now();
            let status = cmd.status().unwrap();
            assert!(status.success());
            let (n, end) = rx.recv_timeout(Duration::from_secs(60)).unwrap();
            assert_eq!(n, BULK_BYTES, "the sink got every byte");
            mbps[i].push(n as f64 / (end - start).as_secs_f64() / 1e6);
        }
    }
    let (off, on) = (median(mbps[0].clone()), median(mbps[1].clone()));
    println!(
        "\nbulk TCP, {} MiB x {ROUNDS} rounds, alternating, medians:\n  without programs   {off:8.0} MB/s\n  with all five      {on:8.0} MB/s\n  ratio with/without {:8.3}",
        BULK_BYTES >> 20,
        on / off
    );
}

#[test]
#[ignore = "benchmark: cargo xtask bench"]
fn bench_reload_ten_thousand_allow_entries() {
    if !have_root() {
        return;
    }
    // The map update alone, through the pins, as reload does it.
    let base = policy_from("");
    let big = policy_from(&ten_thousand_allows());
    let cg = bench_cgroup("reload", Some(&base));
    let pins = cg.pins();
    let mut add = Vec::new();
    let mut remove = Vec::new();
    for _ in 0..ROUNDS {
        let mut maps = bpf::JailMaps::open(&pins).unwrap();
        let t = Instant::now();
        maps.apply(big.map_entries()).unwrap();
        add.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        maps.apply(base.map_entries()).unwrap();
        remove.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(cg);

    // End to end: `claude-jail reload` against a running jail (both of its policies, conf
    // parsing, host network, compilation, process start).
    let world = FakeWorld::builder().build().unwrap();
    let conf = world.dir().join("claude-sandbox.conf");
    let write = |text: &str| {
        fs::write(&conf, text).unwrap();
        fs::set_permissions(&conf, fs::Permissions::from_mode(0o644)).unwrap();
    };
    write("");
    let c = conf.display().to_string();
    let mut jail = claude_jail(
        &world,
        &[
            "run", "--config", &c, "--user", "nobody", "--", "sleep", "600",
        ],
    )
    .unwrap()
    .spawn()
    .unwrap();
    // Wait until it is registered.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = claude_jail(&world, &["status", "--json"])
            .unwrap()
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("\"running\"") {
            break;
        }
        assert!(Instant::now() < deadline, "the jail did not start");
        thread::sleep(Duration::from_millis(50));
    }
    let mut e2e_add = Vec::new();
    let mut e2e_remove = Vec::new();
    for _ in 0..ROUNDS {
        for (text, out) in [
            (ten_thousand_allows(), &mut e2e_add),
            (String::new(), &mut e2e_remove),
        ] {
            write(&text);
            let t = Instant::now();
            let o = claude_jail(&world, &["reload", "--config", &c])
                .unwrap()
                .output()
                .unwrap();
            out.push(t.elapsed().as_secs_f64() * 1e3);
            assert!(
                o.status.success()
                    && String::from_utf8_lossy(&o.stdout).contains("reloaded 1 running jail"),
                "the reload updated the running jail: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(jail.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = jail.wait();
    let (a, r, ea, er) = (
        median(add),
        median(remove),
        median(e2e_add),
        median(e2e_remove),
    );
    println!(
        "\nreload of 10,000 allow entries, {ROUNDS} rounds, medians (goal: 100 ms):\n  \
         map update, add     {a:7.1} ms  ratio to goal {:.2}\n  \
         map update, remove  {r:7.1} ms  ratio to goal {:.2}\n  \
         claude-jail reload, add    {ea:7.1} ms  ratio to goal {:.2}\n  \
         claude-jail reload, remove {er:7.1} ms  ratio to goal {:.2}",
        a / 100.0,
        r / 100.0,
        ea / 100.0,
        er / 100.0
    );
}
