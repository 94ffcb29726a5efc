//! Normal users and a real sudo, made inside the test's own mount namespace.
//!
//! The world's host mount namespace is the machine's; a further private one (see [`Sudo::command`])
//! gets a copy of /etc on a tmpfs, with two users (`cjuser`, uid 4242, whose home has
//! `~/.local/bin/cjcmd`; `cjother`, uid 4344), a sudoers file that gives `cjuser` a NOPASSWD rule
//! for anything (the contract: claude-jail must be safe behind a rule that allows any arguments),
//! and `/etc/claude-sandbox.conf` as the test writes it. Nothing of the machine's /etc changes.
use std::{
    fs,
    os::unix::fs::{chown, PermissionsExt},
    path::PathBuf,
    process::Command,
};

use anyhow::Result;

use crate::{jail::claude_jail_bin, pasta::locate_pasta, FakeWorld};

pub const USER_UID: u32 = 4242;
pub const OTHER_UID: u32 = 4344;

pub struct Sudo {
    /// The files copied over the /etc copy: passwd, group, shadow, sudoers, claude-sandbox.conf.
    etc: PathBuf,
    pub home: PathBuf,
    pub other_home: PathBuf,
}

impl Sudo {
    /// Users, sudoers and `conf` (the text of /etc/claude-sandbox.conf, to which a `pasta =` line
    /// naming the project's pasta is added: sudo's env_reset drops CLAUDE_JAIL_PASTA, and the
    /// launcher ignores it for a caller behind sudo anyway). `env_keep` is added to sudoers'
    /// env_keep list (an admin's choice the launcher must not depend on).
    pub fn new(world: &FakeWorld, conf: &str, env_keep: &str) -> Result<Sudo> {
        let etc = world.dir().join("sudo-etc");
        fs::create_dir_all(&etc)?;
        let home = world.dir().join("home-cjuser");
        let other_home = world.dir().join("home-cjother");
        fs::create_dir_all(home.join(".local/bin"))?;
        fs::create_dir_all(&other_home)?;
        let mut passwd = fs::read_to_string("/etc/passwd")?;
        passwd.push_str(&format!(
            "cjuser:x:{USER_UID}:{USER_UID}:cj test user:{}:/bin/bash\n\
             cjother:x:{OTHER_UID}:{OTHER_UID}:cj other user:{}:/bin/bash\n",
            home.display(),
            other_home.display()
        ));
        let mut group = fs::read_to_string("/etc/group")?;
        group.push_str("cjuser:x:4242:\ncjextra:x:4343:cjuser\ncjother:x:4344:\n");
        let mut shadow = fs::read_to_string("/etc/shadow").unwrap_or_default();
        shadow.push_str("cjuser:!:19000:0:99999:7:::\ncjother:!:19000:0:99999:7:::\n");
        fs::write(etc.join("passwd"), passwd)?;
        fs::write(etc.join("group"), group)?;
        fs::write(etc.join("shadow"), shadow)?;
        fs::set_permissions(etc.join("shadow"), fs::Permissions::from_mode(0o640))?;
        fs::write(
            etc.join("sudoers"),
            format!(
                "Defaults secure_path=\"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"\n\
                 Defaults env_keep+=\"SSH_AUTH_SOCK {env_keep}\"\n\
                 Defaults !lecture\n\
                 Defaults closefrom_override\n\
                 root ALL=(ALL:ALL) ALL\n\
                 cjuser ALL=(root) NOPASSWD: ALL\n"
            ),
        )?;
        fs::set_permissions(etc.join("sudoers"), fs::Permissions::from_mode(0o440))?;
        fs::write(
            etc.join("claude-sandbox.conf"),
            format!("{conf}\npasta = {}\n", locate_pasta()?.display()),
        )?;
        fs::set_permissions(
            etc.join("claude-sandbox.conf"),
            fs::Permissions::from_mode(0o644),
        )?;
        fs::write(home.join(".profile"), "PATH=\"$HOME/.local/bin:$PATH\"\n")?;
        fs::write(
            home.join(".local/bin/cjcmd"),
            "#!/bin/sh\necho \"CJCMD uid=$(id -u) home=$HOME user=$USER groups=$(id -G)\"\n\
             echo \"AGENT $(printf 'hello-agent\\n' | timeout 5 socat -t2 - UNIX-CONNECT:$SSH_AUTH_SOCK 2>&1)\"\n\
             if [ -x /usr/bin/ssh-add ]; then echo \"SSHADD $(ssh-add -l 2>&1)\"; fi\n",
        )?;
        fs::set_permissions(
            home.join(".local/bin/cjcmd"),
            fs::Permissions::from_mode(0o755),
        )?;
        for p in [
            home.clone(),
            home.join(".local"),
            home.join(".local/bin"),
            home.join(".local/bin/cjcmd"),
            home.join(".profile"),
        ] {
            chown(&p, Some(USER_UID), Some(USER_UID))?;
        }
        chown(&other_home, Some(OTHER_UID), Some(OTHER_UID))?;
        fs::set_permissions(&other_home, fs::Permissions::from_mode(0o700))?;
        // The world's directory is 0700 root by default: the users must reach their homes.
        fs::set_permissions(world.dir(), fs::Permissions::from_mode(0o755))?;
        Ok(Sudo {
            etc,
            home,
            other_home,
        })
    }

    /// Replaces /etc/claude-sandbox.conf's text (mode `mode`), before [`Sudo::command`].
    pub fn set_conf(&self, text: &str, mode: u32) -> Result<()> {
        let p = self.etc.join("claude-sandbox.conf");
        fs::write(&p, text)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    /// The shell lines that put the /etc copy in place (run first, in a private mount namespace).
    pub fn setup_script(&self) -> String {
        format!(
            "mount -t tmpfs -o mode=0755 cjt-etc /mnt && cp -a /etc/. /mnt/ && \
             for f in passwd group shadow sudoers claude-sandbox.conf; do \
               cp -p {d}/$f /mnt/$f || exit 1; done && \
             mount --bind /mnt /etc || exit 1",
            d = self.etc.display()
        )
    }

    /// `sh -c SCRIPT` as root in the world's host namespaces, inside a private mount namespace
    /// with the /etc copy; in SCRIPT, `$CJ` is the claude-jail binary and `as_user` runs a
    /// command as cjuser (`as_user sudo -n $CJ ...`).
    pub fn command(&self, world: &FakeWorld, script: &str) -> Result<Command> {
        let mut cmd = world.host_command("unshare")?;
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(format!(
                "{setup}\nas_user() {{ setpriv --reuid {USER_UID} --regid {USER_UID} --init-groups -- \"$@\"; }}\n\
                 CJ={bin}\n{script}",
                setup = self.setup_script(),
                bin = claude_jail_bin()?.display()
            ))
            .env_remove("CLAUDE_JAIL_PASTA")
            .env_remove("CLAUDE_SANDBOX_CONF")
            .env_remove("CLAUDE_SANDBOX_EGRESS_JAIL")
            .stdin(std::process::Stdio::null());
        Ok(cmd)
    }
}
