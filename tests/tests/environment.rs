//! The jail is transparent to the user's environment: the command gets the
//! environment of the user who asked, where they typed it, less what points at masked brokers;
//! a command root starts for another user gets the allow list and the conf's `pass-env`; and
//! nothing of the caller's environment changes what the launcher itself does. (The `claude`
//! shim's hand-over is tested end to end in tests/tests/container.rs.)
use std::{collections::BTreeMap, fs, os::unix::fs::PermissionsExt};

use jail_tests::{
    have_root,
    jail::{claude_jail, world_with_conf},
    sudo::Sudo,
    FakeWorld,
};

/// The `ENV NAME=VALUE` lines a command printed with `env | sed 's/^/ENV /'`.
fn env_lines(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const PRINT_ENV: &str = "env | sed 's/^/ENV /'";

#[test]
fn the_users_environment_crosses_sudo_over_a_descriptor_and_changes_nothing_of_the_launcher() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    let sudo = Sudo::new(&world, "", "").unwrap();
    let markers = world.dir().join("markers");
    fs::create_dir_all(&markers).unwrap();
    fs::set_permissions(&markers, fs::Permissions::from_mode(0o1777)).unwrap();
    let printenv = world.dir().join("printenv.sh");
    fs::write(&printenv, format!("#!/bin/sh\n{PRINT_ENV}\n")).unwrap();
    fs::set_permissions(&printenv, fs::Permissions::from_mode(0o755)).unwrap();
    let evil = world.dir().join("evil-pasta");
    fs::write(
        &evil,
        format!("#!/bin/sh\ntouch {}/evil\nexit 1\n", markers.display()),
    )
    .unwrap();
    fs::set_permissions(&evil, fs::Permissions::from_mode(0o755)).unwrap();
    // What the user had where they typed `claude`: lab settings, an arbitrary variable, broker
    // variables, and variables that would steer the launcher if it read them.
    let script = format!(
        "export EPICS_CA_ADDR_LIST=10.1.2.3 EPICS_CA_AUTO_ADDR_LIST=NO FOO='bar baz' \
           TMUX=/tmp/tmux-4242/default,1,0 DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/4242/bus \
           DISPLAY=:0 CLAUDE_JAIL_PASTA={evil} CLAUDE_SANDBOX_CONF=/nonexistent.conf \
           LD_LIBRARY_PATH=/nonexistent LOCPATH=/nonexistent\n\
         as_user sh -c 'f=$(mktemp) && env -0 >\"$f\" && exec 3<\"$f\" && rm -f \"$f\" && \
           exec sudo -n -C 4 \"$0\" run --env-fd 3 -- {printenv}' $CJ",
        evil = evil.display(),
        printenv = printenv.display()
    );
    let out = sudo.command(&world, &script).unwrap().output().unwrap();
    let o = String::from_utf8_lossy(&out.stdout);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the launch works: {o}\n{e}");
    let env = env_lines(&o);
    for (k, v) in [
        ("EPICS_CA_ADDR_LIST", "10.1.2.3"),
        ("EPICS_CA_AUTO_ADDR_LIST", "NO"),
        ("FOO", "bar baz"),
        ("LD_LIBRARY_PATH", "/nonexistent"),
        ("USER", "cjuser"),
    ] {
        assert_eq!(
            env.get(k).map(String::as_str),
            Some(v),
            "{k} reaches the jailed command: {o}"
        );
    }
    assert_eq!(
        env.get("HOME").map(String::as_str),
        Some(sudo.home.to_str().unwrap()),
        "HOME is the passwd entry's"
    );
    for k in ["TMUX", "DBUS_SESSION_BUS_ADDRESS", "DISPLAY", "SUDO_UID"] {
        assert!(!env.contains_key(k), "{k} does not reach the jail: {o}");
    }
    // The launcher itself: the conf it read is /etc's, pasta the conf's, nothing refused.
    assert!(
        !e.contains("refused") && !e.contains("nonexistent.conf"),
        "the launcher did not take the conf from the handed-over environment: {e}"
    );
    assert!(
        !markers.join("evil").exists(),
        "nor pasta: the user's pasta never ran"
    );
}

#[test]
fn for_another_user_root_passes_the_allow_list_and_pass_env_only() {
    if !have_root() {
        return;
    }
    let (world, conf) = world_with_conf("pass-env = EPICS_*\n").unwrap();
    let out = claude_jail(
        &world,
        &[
            "run", "--config", &conf, "--user", "nobody", "--", "sh", "-c", PRINT_ENV,
        ],
    )
    .unwrap()
    .env("EPICS_CA_ADDR_LIST", "10.1.2.3")
    .env("FOO", "bar")
    .env("TERM", "xterm")
    .env("TMUX", "/tmp/x")
    .output()
    .unwrap();
    let o = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{o}");
    let env = env_lines(&o);
    assert_eq!(
        env.get("EPICS_CA_ADDR_LIST").map(String::as_str),
        Some("10.1.2.3"),
        "pass-env lets it through: {o}"
    );
    assert_eq!(env.get("TERM").map(String::as_str), Some("xterm"), "{o}");
    assert!(
        !env.contains_key("FOO"),
        "another user's command gets only the allow list and pass-env: {o}"
    );
    assert!(!env.contains_key("TMUX"), "{o}");
}
