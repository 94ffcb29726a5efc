//! Rootless podman in the fake world: a normal host user (no root, no sudo) runs containers, as
//! in a rootless devcontainer whose only extra setting is `--device=/dev/net/tun`.
//!
//! Nothing of the machine changes. Every call ([`RootlessPodman::command`]) runs as root in the
//! world's host network and mount namespaces, inside a further private mount namespace where:
//! - /etc is a copy on a tmpfs with the user `cjpod` (uid [`POD_UID`]) added to passwd, group and
//!   shadow, and a subordinate range in subuid and subgid (what `useradd` / `usermod
//!   --add-subuids` write; newuidmap and newgidmap, from Debian's `uidmap`, read them there);
//! - /dev/net/tun is covered by a 0666 node made on a tmpfs (stock distributions ship it 0666;
//!   this machine's is 0600, and the shared node is not chmod-ed);
//!
//! then drops to the user (setpriv) and runs podman with its configuration, storage (vfs) and
//! run directory under the world's directory. The container gets podman's default rootless
//! network (slirp4netns, which runs as the user in the world's host network namespace, so every
//! packet goes into the fake world): `--network ns:` to the world's namespace is what the
//! rootful harness uses, but rootless podman cannot join a namespace owned by the initial user
//! namespace (runc: "can't get final child's PID from pipe: EOF").
//!
//! Rootless podman keeps a "pause" process holding its user namespace between calls: it is
//! killed on drop.
use std::{
    fs,
    os::unix::fs::{chown, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use anyhow::{ensure, Context, Result};

use crate::{jail::claude_jail_bin, pasta::locate_pasta, FakeWorld};

/// The image the container tests import (one name for rootful and rootless storage).
pub const IMAGE: &str = "localhost/claude-jail-test:bookworm";
/// The host user who runs rootless podman.
pub const POD_UID: u32 = 4646;
/// The user's subordinate uids and gids: `SUBID_START`, [`SUBID_COUNT`] of them.
pub const SUBID_START: u32 = 300_000;
pub const SUBID_COUNT: u32 = 65_536;

/// The root filesystem scripts/setup builds (debootstrap minbase with the user `dev`, uid 1000;
/// no registry is reachable).
pub fn rootfs_tar() -> PathBuf {
    let tools = std::env::var_os("CLAUDE_JAIL_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools"));
    let tar = tools.join("container/bookworm-minbase-2.tar");
    assert!(
        tar.is_file(),
        "{} is missing: `cargo xtask setup` builds it",
        tar.display()
    );
    tar
}

/// Rootless podman run by the host user `cjpod`; see the module documentation.
pub struct RootlessPodman<'w> {
    world: &'w FakeWorld,
    dir: PathBuf,
}

impl<'w> RootlessPodman<'w> {
    /// The user, its /etc lines, podman's configuration and the image (imported by the user from
    /// the same tarball as the rootful tests').
    pub fn new(world: &'w FakeWorld) -> Result<RootlessPodman<'w>> {
        let dir = world.dir().join("rootless-podman");
        let home = dir.join("home");
        let xdg = dir.join("xdg");
        let etc = dir.join("etc");
        let bin = dir.join("bin");
        for d in [&dir, &home, &xdg, &etc, &bin] {
            fs::create_dir_all(d).with_context(|| format!("mkdir {}", d.display()))?;
        }
        // The user must reach its home and the binaries through the world's directory.
        fs::set_permissions(world.dir(), fs::Permissions::from_mode(0o755))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        let add = |file: &str, line: String| -> Result<()> {
            let mut text = fs::read_to_string(Path::new("/etc").join(file)).unwrap_or_default();
            text.push_str(&line);
            fs::write(etc.join(file), text).with_context(|| format!("write etc/{file}"))
        };
        add(
            "passwd",
            format!(
                "cjpod:x:{POD_UID}:{POD_UID}:rootless podman user:{}:/bin/bash\n",
                home.display()
            ),
        )?;
        add("group", format!("cjpod:x:{POD_UID}:\n"))?;
        add("shadow", "cjpod:!:19000:0:99999:7:::\n".into())?;
        add("subuid", format!("cjpod:{SUBID_START}:{SUBID_COUNT}\n"))?;
        add("subgid", format!("cjpod:{SUBID_START}:{SUBID_COUNT}\n"))?;
        fs::set_permissions(etc.join("shadow"), fs::Permissions::from_mode(0o640))?;
        // runc (Debian's podman 4.3 here; crun is not installed and fails on hybrid cgroups);
        // the file events logger (no journald); no systemd.
        fs::write(
            dir.join("containers.conf"),
            "[engine]\ncgroup_manager = \"cgroupfs\"\nruntime = \"runc\"\nevents_logger = \"file\"\n",
        )?;
        fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                home.join("storage").display(),
                xdg.join("containers").display()
            ),
        )?;
        // The binaries the containers get, copied where the user may read them (the tests'
        // CLAUDE_JAIL_PASTA may be under a root-only directory).
        let pasta = fs::canonicalize(locate_pasta()?)?;
        let mut avx2 = pasta.clone().into_os_string();
        avx2.push(".avx2");
        for (from, to) in [
            (claude_jail_bin()?, "claude-jail"),
            (pasta, "pasta"),
            (PathBuf::from(avx2), "pasta.avx2"),
        ] {
            fs::copy(&from, bin.join(to))
                .with_context(|| format!("copy {} into {}", from.display(), bin.display()))?;
            fs::set_permissions(bin.join(to), fs::Permissions::from_mode(0o755))?;
        }
        for p in [&home, &xdg] {
            chown(p, Some(POD_UID), Some(POD_UID))?;
        }
        fs::set_permissions(&xdg, fs::Permissions::from_mode(0o700))?;
        let p = RootlessPodman { world, dir };
        let out = p
            .command(&["import", &rootfs_tar().display().to_string(), IMAGE])?
            .output()?;
        ensure!(
            out.status.success(),
            "rootless podman import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(p)
    }

    /// `podman ARGS` as the user, in the world's host namespaces, with the private /etc and tun
    /// node described in the module documentation.
    pub fn command(&self, args: &[&str]) -> Result<Command> {
        let d = self.dir.display();
        let script = format!(
            "set -e\n\
             mount -t tmpfs -o mode=0755 cjt-etc /mnt\n\
             cp -a /etc/. /mnt/\n\
             for f in passwd group shadow subuid subgid; do cp -p {d}/etc/$f /mnt/$f; done\n\
             mount --bind /mnt /etc\n\
             mount -t tmpfs -o mode=0755 cjt-dev /mnt\n\
             mknod -m 0666 /mnt/tun c 10 200\n\
             mount --bind /mnt/tun /dev/net/tun\n\
             exec setpriv --reuid {POD_UID} --regid {POD_UID} --init-groups -- env -i \
               HOME={d}/home USER=cjpod LOGNAME=cjpod \
               PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
               XDG_RUNTIME_DIR={d}/xdg CONTAINERS_CONF={d}/containers.conf \
               CONTAINERS_STORAGE_CONF={d}/storage.conf podman \"$@\""
        );
        let mut cmd = self.world.host_command("unshare")?;
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(script)
            .arg("podman")
            .args(args)
            .stdin(Stdio::null());
        Ok(cmd)
    }

    /// `podman run --rm` of `bash -c SCRIPT` as the container's user `user` (`dev`, uid 1000,
    /// or `root`), with `run_args` (the test gives `--device=/dev/net/tun`), podman's default
    /// rootless network, and claude-jail and the project's pasta bind-mounted where an
    /// installation puts them.
    pub fn run(&self, user: &str, run_args: &[&str], script: &str) -> Result<Output> {
        let bin = self.dir.join("bin");
        let mut args: Vec<String> = [
            "run",
            "--rm",
            "--user",
            user,
            "--hostname",
            "devbox",
            "--add-host",
            "devbox:127.0.1.1",
        ]
        .map(String::from)
        .to_vec();
        for f in ["claude-jail", "pasta", "pasta.avx2"] {
            args.push(format!(
                "--volume={}:/usr/local/bin/{f}:ro",
                bin.join(f).display()
            ));
        }
        args.extend(run_args.iter().map(|s| s.to_string()));
        args.extend([IMAGE.into(), "bash".into(), "-c".into(), script.into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Ok(self.command(&args)?.output()?)
    }
}

impl Drop for RootlessPodman<'_> {
    /// Kills the user's pause process (it would outlive the test, holding the user namespace
    /// and the storage's mounts).
    fn drop(&mut self) {
        let pid_file = self.dir.join("xdg/libpod/tmp/pause.pid");
        if let Some(pid) = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
