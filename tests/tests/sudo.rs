//! Safe behind a NOPASSWD sudo rule that allows any arguments: with real sudo
//! and users made inside the test's namespaces ([`jail_tests::sudo`]), a normal user cannot use
//! claude-jail to act as another user, to read a file they cannot read, or to choose what runs
//! as root; and `status`/`events` show them their own jails only.
use std::{fs, os::unix::fs::PermissionsExt, process::Output};

use jail_tests::{
    have_root,
    jail::{claude_jail, waiting_jail, world_with_conf, write_conf},
    sudo::Sudo,
    FakeWorld,
};

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A root-only directory with a secret file, a marker directory anyone may write to.
fn secrets(world: &FakeWorld) -> (String, String) {
    let priv_dir = world.dir().join("priv");
    fs::create_dir_all(&priv_dir).unwrap();
    fs::set_permissions(&priv_dir, fs::Permissions::from_mode(0o700)).unwrap();
    let secret = priv_dir.join("secret.txt");
    fs::write(&secret, "allow-ip = SECRET-TOKEN-1234\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let markers = world.dir().join("markers");
    fs::create_dir_all(&markers).unwrap();
    fs::set_permissions(&markers, fs::Permissions::from_mode(0o1777)).unwrap();
    (secret.display().to_string(), markers.display().to_string())
}

#[test]
fn a_user_behind_sudo_cannot_act_as_another_user_or_choose_files_for_root() {
    if !have_root() {
        return;
    }
    let world = FakeWorld::builder().build().unwrap();
    // The admin's sudoers passes these through (env_keep): the launcher must not depend on them.
    let sudo = Sudo::new(&world, "", "CLAUDE_SANDBOX_CONF CLAUDE_JAIL_PASTA").unwrap();
    let (secret, markers) = secrets(&world);
    let other_home = sudo.other_home.display().to_string();
    // A "pasta" the user wrote: it would run as root if the launcher took it from the variable.
    let evil = world.dir().join("evil-pasta");
    fs::write(
        &evil,
        format!("#!/bin/sh\ntouch {markers}/evil-pasta-ran\nexit 1\n"),
    )
    .unwrap();
    fs::set_permissions(&evil, fs::Permissions::from_mode(0o755)).unwrap();

    let cases: [(&str, String, &str); 6] = [
        (
            "--user naming another user",
            format!("as_user sudo -n $CJ run --user cjother -- touch {other_home}/x"),
            "--user cjother is refused through sudo",
        ),
        (
            "--user naming root by uid",
            format!("as_user sudo -n $CJ run --user 0 -- touch {markers}/root-ran"),
            "--user 0 is refused through sudo",
        ),
        (
            "run --config a root-only file",
            format!("as_user sudo -n $CJ run --config {secret} -- touch {markers}/x"),
            "--config is refused through sudo",
        ),
        (
            "policy --config a root-only file",
            format!("as_user sudo -n $CJ policy --config {secret}"),
            "--config is refused through sudo",
        ),
        (
            "reload --config a root-only file",
            format!("as_user sudo -n $CJ reload --config {secret}"),
            "--config is refused through sudo",
        ),
        (
            "CLAUDE_SANDBOX_CONF kept by sudoers",
            format!("CLAUDE_SANDBOX_CONF={secret} as_user sudo -n $CJ policy"),
            "CLAUDE_SANDBOX_CONF is refused through sudo",
        ),
    ];
    for (name, script, refusal) in &cases {
        let out = sudo.command(&world, script).unwrap().output().unwrap();
        let (o, e) = text(&out);
        eprintln!("--- {name}:\n{o}{e}");
        assert!(!out.status.success(), "{name}: refused: {o}\n{e}");
        assert!(
            e.contains(refusal) && e.contains("fix:"),
            "{name}: the refusal says why and the fix: {e}"
        );
        assert!(
            !o.contains("SECRET-TOKEN") && !e.contains("SECRET-TOKEN"),
            "{name}: nothing of the root-only file is shown: {o}{e}"
        );
    }
    assert!(
        !sudo.other_home.join("x").exists(),
        "nothing was written into the other user's home"
    );
    assert!(
        fs::read_dir(&markers).unwrap().next().is_none(),
        "no command ran"
    );

    // CLAUDE_JAIL_PASTA kept by sudoers: ignored (a note says so); the conf's pasta is used.
    let evil_s = evil.display().to_string();
    let out = sudo
        .command(
            &world,
            &format!("CLAUDE_JAIL_PASTA={evil_s} as_user sudo -n $CJ run -- sh -c 'echo JAILED uid=$(id -u)'"),
        )
        .unwrap()
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert!(
        out.status.success() && o.contains("JAILED uid=4242"),
        "the jail starts with the conf's pasta: {o}\n{e}"
    );
    assert!(
        e.contains("CLAUDE_JAIL_PASTA is ignored"),
        "and says the variable was ignored: {e}"
    );
    assert!(
        !std::path::Path::new(&format!("{markers}/evil-pasta-ran")).exists(),
        "the caller's pasta never ran as root"
    );

    // The admin's conf is root-only and wrong: the user learns which line, not what it says.
    sudo.set_conf("allow-ip = SECRET-TOKEN-5678\n", 0o600)
        .unwrap();
    for sub in ["run -- true", "policy"] {
        let out = sudo
            .command(&world, &format!("as_user sudo -n $CJ {sub}"))
            .unwrap()
            .output()
            .unwrap();
        let (o, e) = text(&out);
        assert!(!out.status.success(), "{sub}: an invalid conf is refused");
        assert!(
            e.contains("/etc/claude-sandbox.conf:1:") && e.contains("not shown"),
            "{sub}: the line is named: {e}"
        );
        assert!(
            !o.contains("SECRET-TOKEN") && !e.contains("SECRET-TOKEN"),
            "{sub}: a file the user cannot read is never quoted: {o}{e}"
        );
    }
}

#[test]
fn a_user_behind_sudo_sees_only_their_own_jails() {
    if !have_root() {
        return;
    }
    let (world, conf) = world_with_conf("").unwrap();
    // Root runs a jail for another user (nobody) and keeps it open; it makes one refused
    // attempt.
    let other = waiting_jail(
        &world,
        &conf,
        "(exec 3<>/dev/tcp/10.0.0.5/80) 2>/dev/null",
        "OTHER-UP",
    )
    .unwrap();
    let sudo = Sudo::new(&world, "", "").unwrap();
    // cjuser's own jail makes one refused attempt of its own and then asks.
    let out = sudo
        .command(
            &world,
            "as_user sudo -n $CJ run -- bash -c '(exec 3<>/dev/tcp/172.16.0.5/80) 2>/dev/null; true'; \
             echo '== status'; as_user sudo -n $CJ status; echo '== events'; as_user sudo -n $CJ events; \
             echo '== root status'; $CJ status",
        )
        .unwrap()
        .output()
        .unwrap();
    let (o, e) = text(&out);
    drop(other);
    let section = |name: &str| -> String {
        o.split(&format!("== {name}\n"))
            .nth(1)
            .unwrap_or("")
            .split("\n== ")
            .next()
            .unwrap_or("")
            .to_string()
    };
    assert!(
        !section("status").contains("(65534)"),
        "another user's jail is not listed for a user behind sudo: {o}\n{e}"
    );
    assert!(
        section("root status").contains("(65534)"),
        "root sees it (so the test can fail): {o}\n{e}"
    );
    let events = section("events");
    assert!(
        events.contains("172.16.0.5") && !events.contains("10.0.0.5"),
        "the user sees their own refusal and not the other user's: {o}\n{e}"
    );
}

/// Without root, `status`, `events` and `gc` read the caller's own registry and log (the
/// nftables mode's, under /run/user/UID or /tmp and ~/.local/state): they succeed and show
/// nothing of root's jails, which stay behind root's directories, even one that runs as the
/// same user.
#[test]
fn read_commands_run_without_root_read_the_callers_own_jails_only() {
    if !have_root() {
        return;
    }
    let (world, conf) = world_with_conf("").unwrap();
    // A jail of root's for nobody, running while nobody looks.
    let _root_jail = waiting_jail(&world, &conf, "true", "up").unwrap();
    for (args, want) in [
        (&["status", "--json"][..], Some("[]")),
        (&["events", "--json"][..], Some("")),
        (&["gc"][..], None),
    ] {
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
            .args(args)
            .env("HOME", world.dir())
            .output()
            .unwrap();
        let (o, e) = text(&out);
        assert!(out.status.success(), "{args:?} without root: {o}{e}");
        if let Some(want) = want {
            assert_eq!(o.trim(), want, "{args:?}: nothing of root's jail: {e}");
        }
    }
    let root_view = claude_jail(&world, &["status", "--json"])
        .unwrap()
        .output()
        .unwrap();
    assert!(
        text(&root_view).0.contains("\"user\": \"nobody\""),
        "root's status lists the jail: {}",
        text(&root_view).0
    );
}

#[test]
fn an_old_pasta_is_refused_in_one_line() {
    if !have_root() {
        return;
    }
    let old = std::path::Path::new("/usr/bin/pasta");
    assert!(
        old.exists(),
        "scripts/setup installs Debian's passt package (the old pasta this test needs)"
    );
    let world = FakeWorld::builder().build().unwrap();
    fs::set_permissions(world.dir(), fs::Permissions::from_mode(0o755)).unwrap();
    let conf = write_conf(&world, "old.conf", "pasta = /usr/bin/pasta\n").unwrap();
    let conf_s = conf.display().to_string();
    let out = claude_jail(
        &world,
        &["run", "--config", &conf_s, "--user", "nobody", "--", "true"],
    )
    .unwrap()
    .env_remove("CLAUDE_JAIL_PASTA")
    .output()
    .unwrap();
    let (_, e) = text(&out);
    assert_eq!(out.status.code(), Some(125), "refused: {e}");
    assert!(
        e.contains("too old") && e.contains("--map-host-loopback") && e.contains("fix:"),
        "the refusal names the missing option and the fix: {e}"
    );
    assert!(
        e.lines().count() <= 3 && !e.contains("Usage:"),
        "pasta's usage is not dumped: {e}"
    );
}
