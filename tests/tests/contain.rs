//! Containment: nothing outside the jail acts for the jailed command. Each path is
//! tried from inside `claude-jail run` (user nobody) in the fake world, and, as a control, from
//! outside (the same user with the jail off, or unjailed), so that a refusal is the jail's doing.
//!
//! Safety: everything runs in the world's host namespaces; the broker test adds a private mount
//! namespace with tmpfs over /run and /tmp, so its sockets never touch the real filesystem. The
//! probes create sockets and never connect them, except unix sockets of the test's own
//! listeners and the fake world's addresses.
use std::{
    collections::HashMap,
    fs,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Output, Stdio},
};

use jail_tests::{
    have_root,
    jail::{claude_jail, claude_jail_bin},
    pasta::locate_pasta,
    FakeWorld,
};

const PROBE: &str = env!("CARGO_BIN_EXE_jail-contain-probe");

fn conf(world: &FakeWorld, text: &str) -> PathBuf {
    let p = world.dir().join("claude-sandbox.conf");
    fs::write(&p, text).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    p
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `key=value` lines of an output (a later key wins).
fn kv(stdout: &str) -> HashMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn get<'a>(m: &'a HashMap<String, String>, k: &str, all: &str) -> &'a str {
    m.get(k)
        .unwrap_or_else(|| panic!("no {k}= in the output:\n{all}"))
}

/// `claude-jail run` with the jail off (the escape hatch): the same user, privilege drop and
/// environment, no namespaces, no filter. The control for every refusal.
fn run_unjailed(world: &FakeWorld, conf: &Path, script: &str) -> Output {
    let conf = conf.display().to_string();
    claude_jail(
        world,
        &[
            "run", "--config", &conf, "--user", "nobody", "--", "bash", "-c", script,
        ],
    )
    .unwrap()
    .env("CLAUDE_SANDBOX_EGRESS_JAIL", "0")
    .output()
    .unwrap()
}

/// A process killed and reaped on drop.
struct Reaped(Child);
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn processes_sockets_cgroups_and_descriptors_outside_the_jail_are_out_of_reach() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let conf = conf(&world, "");
    // A process of the same user, outside the jail.
    let outside = Reaped(
        world
            .host_command("setpriv")
            .unwrap()
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sleep",
                "300",
            ])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = outside.0.id();
    let script = format!(
        "{PROBE} pid {pid}; {PROBE} sockets; {PROBE} fds; \
         echo cgroup_procs_files=$(find /sys/fs/cgroup -name cgroup.procs 2>/dev/null | wc -l); \
         for f in $(find /sys/fs/cgroup -name cgroup.procs 2>/dev/null); do \
           (echo $$ > $f) 2>/dev/null && echo \"wrote=$f\"; done; \
         echo cgroup_self=$(cat /proc/self/cgroup | tr '\\n' ' ')"
    );
    // A descriptor of the launcher's caller that is not close-on-exec: it must not arrive.
    let leak = fs::File::open("/dev/null").unwrap();
    let leak_fd = std::os::fd::AsRawFd::as_raw_fd(&leak);
    let conf_s = conf.display().to_string();
    let mut cmd = claude_jail(
        &world,
        &[
            "run", "--config", &conf_s, "--user", "nobody", "--", "bash", "-c", &script,
        ],
    )
    .unwrap();
    // SAFETY: dup2 is async-signal-safe; it runs in the forked child before exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(leak_fd, 7) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "jailed run failed:\n{stdout}\n{stderr}"
    );
    let m = kv(&stdout);
    for k in ["kill", "ptrace", "pidfd_open"] {
        assert_eq!(
            get(&m, k, &stdout),
            "ESRCH",
            "{k}: the same-uid process {pid} outside must not exist in the jail's PID namespace\n{stdout}"
        );
    }
    assert_eq!(get(&m, "proc_root", &stdout), "ENOENT", "{stdout}");
    let procs: usize = get(&m, "procs", &stdout).parse().unwrap();
    assert!(
        procs <= 4,
        "the jail's /proc shows only the jail: {procs}\n{stdout}"
    );
    assert_eq!(
        get(&m, "vsock", &stdout),
        "EPERM",
        "AF_VSOCK ignores netns\n{stdout}"
    );
    assert_eq!(get(&m, "packet", &stdout), "EPERM", "{stdout}");
    assert_eq!(
        get(&m, "io_uring", &stdout),
        "EPERM",
        "IORING_OP_SOCKET bypasses the filter"
    );
    assert_eq!(
        get(&m, "inet", &stdout),
        "ok",
        "ordinary sockets work: {stdout}"
    );
    assert_eq!(
        get(&m, "fds", &stdout),
        "0,1,2",
        "no descriptor of the launcher (nor fd 7 of its caller) reaches the command"
    );
    assert_eq!(
        get(&m, "cgroup_procs_files", &stdout),
        "1",
        "only the jail cgroup's own cgroup.procs is visible (cgroup2 rooted at the jail)\n{stdout}"
    );
    assert!(
        !stdout.contains("wrote="),
        "no cgroup.procs is writable:\n{stdout}"
    );
    assert!(
        get(&m, "cgroup_self", &stdout).contains("0::/"),
        "the jail sees itself at the root of its cgroup namespace\n{stdout}"
    );

    // Control: the same user with the jail off reaches all of it, so the refusals above are the
    // jail's (vsock: `ok` on a VM guest, EAFNOSUPPORT elsewhere; never EPERM).
    let out = run_unjailed(&world, &conf, &script);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "unjailed run failed:\n{stdout}\n{stderr}"
    );
    let c = kv(&stdout);
    assert_eq!(get(&c, "kill", &stdout), "ok", "control: {stdout}");
    assert_ne!(get(&c, "vsock", &stdout), "EPERM", "control: {stdout}");
    let files: usize = get(&c, "cgroup_procs_files", &stdout).parse().unwrap();
    assert!(
        files > 1,
        "control: the host's cgroups are visible without the jail"
    );
    drop(leak);
}

#[test]
fn nested_user_and_network_namespaces_work_and_stay_jailed() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let conf = conf(&world, "");
    // What Claude Code's sandbox does (bubblewrap: user + network namespaces), then what a
    // process in there could try: a packet socket (root of the nested namespace holds
    // CAP_NET_RAW over it: only the filter refuses), and 10.0.0.5 put on its own loopback (no
    // route needed: the jail cgroup's connect4 program still judges it).
    let nested = format!(
        "{PROBE} sockets | sed 's/^/nested_/'; \
         /usr/sbin/ip link set lo up && /usr/sbin/ip addr add 10.0.0.5/32 dev lo && echo nested_addr=ok; \
         (exec 3<>/dev/tcp/10.0.0.5/80) 2>&1 | sed -n 's/.*: /nested_lan=/p'; \
         (exec 3<>/dev/tcp/127.0.0.1/80) 2>&1 | sed -n 's/.*: /nested_loopback=/p'; \
         echo nested_cgroup=$(cat /proc/self/cgroup)"
    );
    let script = "unshare --user --map-root-user --net bash -c \"$1\"; echo nested_rc=$?; \
         getent hosts public.test.example | sed 's/ .*//; s/^/dns=/'; \
         exec 3<>/dev/tcp/203.0.113.10/80 && head -n 1 <&3 | sed 's/^/public=/'";
    let conf_s = conf.display().to_string();
    let out = claude_jail(
        &world,
        &[
            "run", "--config", &conf_s, "--user", "nobody", "--", "bash", "-c", script, "jailed",
            &nested,
        ],
    )
    .unwrap()
    .output()
    .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "jailed run failed:\n{stdout}\n{stderr}"
    );
    let m = kv(&stdout);
    assert_eq!(
        get(&m, "nested_rc", &stdout),
        "0",
        "unshare -Urn works in the jail\n{stderr}"
    );
    assert_eq!(get(&m, "nested_addr", &stdout), "ok", "{stdout}");
    assert_eq!(get(&m, "nested_packet", &stdout), "EPERM", "{stdout}");
    assert_eq!(get(&m, "nested_vsock", &stdout), "EPERM", "{stdout}");
    assert_eq!(
        get(&m, "nested_loopback", &stdout),
        "Connection refused",
        "the nested namespace's own loopback is reachable (nothing listens): {stdout}"
    );
    assert_eq!(
        get(&m, "nested_lan", &stdout),
        "Operation not permitted",
        "10.0.0.5 is refused by the jail cgroup's program even from a nested namespace\n{stdout}"
    );
    assert!(
        get(&m, "nested_cgroup", &stdout)
            .split(' ')
            .any(|l| l == "0::/"),
        "the nested process is still in the jail cgroup (the root of the jail's cgroup namespace)"
    );
    // pasta runs under its own policy (internal ranges denied but the host's resolver on 53):
    // DNS through it and the public server still work.
    assert_eq!(
        get(&m, "dns", &stdout),
        "203.0.113.10",
        "{stdout}\n{stderr}"
    );
    assert!(
        get(&m, "public", &stdout).starts_with("hello from 203.0.113.10:80"),
        "{stdout}"
    );
}

/// dev.tty.legacy_tiocsti set to 1 for a test, restored on drop (a global sysctl).
struct LegacyTiocsti(Option<String>);
const LEGACY_TIOCSTI: &str = "/proc/sys/dev/tty/legacy_tiocsti";
impl LegacyTiocsti {
    fn enable() -> LegacyTiocsti {
        let old = fs::read_to_string(LEGACY_TIOCSTI).ok();
        if old.as_deref().map(str::trim) == Some("0") {
            fs::write(LEGACY_TIOCSTI, "1").expect("enable legacy TIOCSTI");
        }
        LegacyTiocsti(old)
    }
}
impl Drop for LegacyTiocsti {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = fs::write(LEGACY_TIOCSTI, old.trim());
        }
    }
}

/// `claude-jail run ... jail-contain-probe tty` under `script`, which gives it a terminal as
/// its controlling terminal (as an interactive launch has).
fn probe_tty(world: &FakeWorld, conf: &Path, jail_on: bool) -> String {
    let line = format!(
        "{} run --config {} --user nobody -- {PROBE} tty",
        claude_jail_bin().unwrap().display(),
        conf.display()
    );
    let mut cmd = world.host_command("script").unwrap();
    cmd.args(["-qec", &line, "/dev/null"])
        .env("CLAUDE_JAIL_PASTA", locate_pasta().unwrap())
        .env(
            "CLAUDE_SANDBOX_EGRESS_JAIL",
            if jail_on { "1" } else { "0" },
        )
        .env_remove("CLAUDE_SANDBOX_CONF")
        .stdin(Stdio::null());
    let out = cmd.output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "script failed:\n{stdout}\n{stderr}");
    stdout.replace('\r', "")
}

#[test]
fn terminal_input_injection_is_refused() {
    if !have_root() {
        return;
    }
    let _legacy = LegacyTiocsti::enable();
    let world = FakeWorld::builder().build().unwrap();
    let conf = conf(&world, "");
    let control = probe_tty(&world, &conf, false);
    let c = kv(&control);
    assert_eq!(
        get(&c, "tiocsti", &control),
        "ok",
        "control: without the jail, nobody can push input into its controlling terminal"
    );
    let jailed = probe_tty(&world, &conf, true);
    let m = kv(&jailed);
    assert_eq!(get(&m, "tiocsti", &jailed), "EPERM", "{jailed}");
    assert_eq!(get(&m, "tioclinux", &jailed), "EPERM", "{jailed}");
}

/// The brokers, in a private mount namespace of the world's host with tmpfs over /run and /tmp:
/// fake listeners at every masked path (each answers `reached-NAME`), a real tmux server of
/// nobody, and the conf allowing one socket. `$1`: claude-jail.
const BROKERS: &str = r#"
set -u
# tmux runs a session's command with $SHELL, or else the user's login shell, which for nobody is
# nologin: the session would end at once and take the server with it.
export SHELL=/bin/sh
# /run and /tmp are covered below; the binaries under test may live there (a checkout in /tmp):
# copy them to a tmpfs of this mount namespace first.
mount -t tmpfs -o mode=0755 cjt-bin /mnt || exit 1
cp "$1" /mnt/claude-jail || exit 1
P=$(readlink -f "$CLAUDE_JAIL_PASTA")
cp "$P" /mnt/passt || exit 1
[ -e "$P.avx2" ] && { cp "$P.avx2" /mnt/passt.avx2; ln -s passt.avx2 /mnt/pasta.avx2; }
ln -s passt /mnt/pasta
export CLAUDE_JAIL_PASTA=/mnt/pasta
J=/mnt/claude-jail
mount -t tmpfs -o mode=0755 cjt-run /run || exit 1
mount -t tmpfs -o mode=1777 cjt-tmp /tmp || exit 1
mkdir -m 0700 /run/claude-jail && mkdir -m 0755 /run/user /run/lock /run/podman || exit 1
install -d -m 0777 /run/screen
install -d -o nobody -g nogroup -m 0700 /run/user/65534 /run/user/65534/systemd /run/user/65534/podman
install -d -o nobody -g nogroup -m 0700 /run/screen/S-nobody
install -d -m 1777 /tmp/.X11-unix
printf 'allow-socket = /run/user/65534/podman/podman.sock\n' > /run/claude-sandbox.conf
pids=""
cleanup() {
  setpriv --reuid=65534 --regid=65534 --clear-groups tmux kill-server 2>/dev/null
  setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=/tmp screen -S outside -X quit >/dev/null 2>&1
  kill $pids 2>/dev/null; wait 2>/dev/null
}
trap cleanup EXIT
# Each listener sends a file (not a child's output: socat drops a connection whose child exits
# before socat reaches its transfer loop, which a busy machine makes happen).
listen() { # PATH NAME UID
  echo "reached-$2" > /mnt/greet-$2
  setpriv --reuid=$3 --regid=$3 --clear-groups \
    socat -U UNIX-LISTEN:$1,fork,mode=0666 OPEN:/mnt/greet-$2,rdonly 2>/dev/null &
  pids="$pids $!"
}
SOCKETS="/var/run/docker.sock:docker:0 /run/user/65534/bus:dbus:65534
/run/user/65534/systemd/private:systemd:65534 /run/user/65534/docker.sock:docker-rootless:65534
/run/user/65534/podman/podman.sock:podman-allowed:65534 /run/user/65534/podman/other.sock:podman:65534
/run/podman/podman.sock:podman-root:0 /run/user/65534/wayland-0:wayland:65534
/tmp/.X11-unix/X0:x11:0 /run/screen/S-nobody/1.pts-0.host:screen:65534"
for s in $SOCKETS; do IFS=: read -r p n u <<<"$s"; listen "$p" "$n" "$u"; done
# Waits are for states (a socket, a directory, a file), with deadlines only a failure reaches.
for i in $(seq 300); do
  ok=1; for s in $SOCKETS; do [ -S "${s%%:*}" ] || ok=0; done
  [ $ok = 1 ] && break; sleep 0.1
done
setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=/tmp tmux new-session -d -s outside 'sleep 600' || exit 1
if command -v screen >/dev/null; then
  setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=/tmp screen -dmS outside sleep 600 || exit 1
fi
export SOCKETS
CHECK='
for s in $SOCKETS; do p=${s%%:*}
  r=$(timeout 5 socat -T2 - UNIX-CONNECT:$p </dev/null 2>&1 | head -1)
  case "$r" in reached-*) echo "$p=$r";; *) echo "$p=refused";; esac
done
if tmux new-window "echo ran > /tmp/tmux-ran-$WHERE" 2>/dev/null; then echo tmux=ok; else echo tmux=refused; fi
if command -v screen >/dev/null; then
  if screen -S outside -X stuff x >/dev/null 2>&1; then echo screen=ok; else echo screen=refused; fi
else echo screen=not-installed; fi
'
export CHECK
setpriv --reuid=65534 --regid=65534 --clear-groups env WHERE=outside HOME=/tmp bash -c "$CHECK" | sed 's/^/outside:/'
"$J" run --config /run/claude-sandbox.conf --user nobody -- env WHERE=inside SOCKETS="$SOCKETS" bash -c "$CHECK" | sed 's/^/inside:/'
echo "jail_rc=${PIPESTATUS[0]}"
# tmux runs a new window's command in its own time: wait for the control's (outside) to run;
# the jail's tmux client was refused before it reached the server, so nothing of it is pending.
for i in $(seq 300); do [ -e /tmp/tmux-ran-outside ] && break; sleep 0.1; done
for w in outside inside; do [ -e /tmp/tmux-ran-$w ] && echo "tmux_ran_$w=yes" || echo "tmux_ran_$w=no"; done
# A tmux server that the user starts only after the launch (no /tmp/tmux-UID at launch time):
# the jail made that directory itself and covered it, so the late server is out of reach too.
setpriv --reuid=65534 --regid=65534 --clear-groups tmux kill-server 2>/dev/null
rm -rf /tmp/tmux-65534
"$J" run --config /run/claude-sandbox.conf --user nobody -- sh -c '
  while [ ! -e /tmp/late-started ]; do sleep 0.1; done
  if tmux new-window "echo ran > /tmp/tmux-ran-late" 2>/dev/null; then echo late_tmux=ok; else echo late_tmux=refused; fi' &
late=$!
for i in $(seq 300); do [ -d /tmp/tmux-65534 ] && break; sleep 0.1; done
setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=/tmp tmux new-session -d -s late 'sleep 600' || exit 1
if setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=/tmp tmux has-session -t late 2>/dev/null; then
  echo late_tmux_outside=ok; else echo late_tmux_outside=refused; fi
touch /tmp/late-started
wait $late
echo "late_rc=$?"
# As above: once a window the late server accepted from outside has run, one it had accepted
# from the jail would have been created before it.
setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=/tmp tmux new-window -t late "echo ran > /tmp/tmux-ran-late-control"
for i in $(seq 300); do [ -e /tmp/tmux-ran-late-control ] && break; sleep 0.1; done
[ -e /tmp/tmux-ran-late-control ] && echo "tmux_ran_late_control=yes" || echo "tmux_ran_late_control=no"
[ -e /tmp/tmux-ran-late ] && echo "tmux_ran_late=yes" || echo "tmux_ran_late=no"
"#;

#[test]
fn brokers_outside_the_jail_are_masked() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let out = world
        .host_command("unshare")
        .unwrap()
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "bash",
            "-c",
            BROKERS,
            "brokers",
        ])
        .arg(claude_jail_bin().unwrap())
        .env("CLAUDE_JAIL_PASTA", locate_pasta().unwrap())
        .env_remove("CLAUDE_SANDBOX_EGRESS_JAIL")
        .env_remove("CLAUDE_SANDBOX_CONF")
        .env_remove("TMUX")
        .env_remove("TMUX_TMPDIR")
        // The checkout may be under /tmp, which the script covers.
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    eprintln!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "broker script failed:\n{stdout}\n{stderr}"
    );
    let m = kv(&stdout);
    assert_eq!(get(&m, "jail_rc", &stdout), "0", "{stderr}");
    let sockets: Vec<(&str, &str)> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("outside:"))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with('/'))
        .collect();
    assert_eq!(
        sockets.len(),
        10,
        "every listener was tried outside:\n{stdout}"
    );
    for (path, r) in sockets {
        assert!(
            r.starts_with("reached-"),
            "control: {path} answers outside the jail: {r}"
        );
        let inside = get(&m, &format!("inside:{path}"), &stdout);
        if path == "/run/user/65534/podman/podman.sock" {
            assert_eq!(
                inside, "reached-podman-allowed",
                "allow-socket keeps it reachable"
            );
        } else {
            assert_eq!(inside, "refused", "{path} must be masked in the jail");
        }
    }
    assert_eq!(get(&m, "outside:tmux", &stdout), "ok", "control: {stdout}");
    assert_eq!(
        get(&m, "tmux_ran_outside", &stdout),
        "yes",
        "control: {stdout}"
    );
    assert_eq!(get(&m, "inside:tmux", &stdout), "refused", "{stdout}");
    assert_eq!(
        get(&m, "late_tmux_outside", &stdout),
        "ok",
        "control: the late tmux server runs outside: {stdout}"
    );
    assert_eq!(get(&m, "late_rc", &stdout), "0", "{stdout}");
    assert_eq!(
        get(&m, "late_tmux", &stdout),
        "refused",
        "a tmux server started after the launch is masked too: {stdout}"
    );
    assert_eq!(
        get(&m, "tmux_ran_late_control", &stdout),
        "yes",
        "control: the late server runs a window's command: {stdout}"
    );
    assert_eq!(get(&m, "tmux_ran_late", &stdout), "no", "{stdout}");
    assert_eq!(
        get(&m, "tmux_ran_inside", &stdout),
        "no",
        "the user's tmux server ran a command for the jail"
    );
    // scripts/setup installs screen; elsewhere its socket path is still checked above.
    match get(&m, "outside:screen", &stdout) {
        "not-installed" => eprintln!("note: screen is not installed; its socket path was checked"),
        r => {
            assert_eq!(
                r, "ok",
                "control: screen -X reaches the session outside: {stdout}"
            );
            assert_eq!(
                get(&m, "inside:screen", &stdout),
                "refused",
                "the user's screen session is out of the jail's reach: {stdout}"
            );
        }
    }
}

/// pasta runs in its own cgroup under its own policy, attached there as the jail's is: its
/// process sits in `claude-jail/<id>/pasta`, the five programs are on that cgroup, and its maps
/// deny 10/8 but allow the host's resolver (the world's dnsmasq, 10.0.0.53) on port 53 only.
/// (That DNS and the public server still work through pasta with this policy in place is
/// `nested_user_and_network_namespaces_work_and_stay_jailed`.)
#[test]
fn pasta_runs_in_its_own_cgroup_under_its_own_policy() {
    use claude_jail::policy::ne4;
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    fs::set_permissions(world.dir(), fs::Permissions::from_mode(0o755)).unwrap();
    let conf = conf(&world, "");
    let done = world.dir().join("pasta-policy-checked");
    let wait = format!("while [ ! -e {} ]; do sleep 0.1; done", done.display());
    let mut session = claude_jail(
        &world,
        &[
            "run",
            "--config",
            &conf.display().to_string(),
            "--user",
            "nobody",
            "--",
            "sh",
            "-c",
            &wait,
        ],
    )
    .unwrap()
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (id, pasta_pid) = loop {
        let out = claude_jail(&world, &["status", "--json"])
            .unwrap()
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let pid = v[0]["pasta_pid"].as_u64().unwrap_or(0);
        if pid != 0 && v[0]["command_pid"].as_u64().unwrap_or(0) != 0 {
            break (v[0]["id"].as_str().unwrap().to_string(), pid);
        }
        assert!(Instant::now() < deadline, "no running jail in status: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let check = || {
        let cgroup = fs::read_to_string(format!("/proc/{pasta_pid}/cgroup")).unwrap();
        assert!(
            cgroup.contains(&format!("0::/claude-jail/{id}/pasta\n")),
            "pasta is in the jail's pasta cgroup: {cgroup}"
        );
        let cg = claude_jail::cgroup::cgroup2_mount()
            .unwrap()
            .join(format!("claude-jail/{id}/pasta"));
        let out = world
            .host_command("bpftool")
            .unwrap()
            .args(["-j", "cgroup", "show"])
            .arg(&cg)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
        let mut attached: Vec<String> = v
            .as_array()
            .expect("a list")
            .iter()
            .map(|p| p["attach_type"].as_str().unwrap_or("?").to_owned())
            .collect();
        attached.sort();
        assert_eq!(
            attached,
            [
                "cgroup_inet4_connect",
                "cgroup_inet6_connect",
                "cgroup_inet_egress",
                "cgroup_udp4_sendmsg",
                "cgroup_udp6_sendmsg"
            ],
            "the five programs are attached to pasta's cgroup"
        );
        let pins = jail_tests::jail::host_root(&world)
            .join("sys/fs/bpf/claude-jail")
            .join(&id)
            .join("pasta");
        let maps = claude_jail::bpf::JailMaps::open(&pins).unwrap();
        let e = maps.read_entries().unwrap();
        let resolver = ne4(Ipv4Addr::new(10, 0, 0, 53));
        assert!(
            e.deny4.contains_key(&(8, ne4(Ipv4Addr::new(10, 0, 0, 0)))),
            "pasta's policy denies 10/8"
        );
        for proto in [jail_common::PROTO_UDP, jail_common::PROTO_TCP] {
            assert!(
                e.allow4_port
                    .contains_key(&jail_common::PortKey4::new(resolver, 53, proto)),
                "pasta's policy allows the host's resolver on 53/{proto}"
            );
        }
        // (Port 0 is the marker that lets the packet backstop pass non-first fragments of an
        // address and protocol with an allowed port.)
        let of_resolver: Vec<_> = e
            .allow4_port
            .keys()
            .filter(|k| k.addr == resolver)
            .collect();
        assert!(
            !e.allow4.keys().any(|&(_, a)| a == resolver)
                && of_resolver.iter().all(|k| k.port == 53 || k.port == 0),
            "and nothing else of it: {of_resolver:?}"
        );
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check));
    fs::write(&done, "").unwrap();
    let status = session.wait().unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(status.success(), "the jailed command ended normally");
}
