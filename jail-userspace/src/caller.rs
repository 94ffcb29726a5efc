//! Who asked: root itself, or a normal user through sudo or pkexec.
//!
//! claude-jail is meant to be safe behind a NOPASSWD sudo rule that allows any arguments, the
//! contract of a setuid program: whatever such a rule lets a user pass (arguments, environment,
//! files) is hostile input to a privileged program. So when the real caller is a normal user
//! ([`Caller::Delegated`]), every subcommand holds to these rules:
//!
//! - the command runs as that user only: `--user` naming anyone else is refused;
//! - the configuration is /etc/claude-sandbox.conf only: `--config` and `CLAUDE_SANDBOX_CONF`
//!   naming another file are refused (a user who wants to check a draft runs `claude-jail
//!   policy --config DRAFT` without sudo: any readable file is accepted there, with the user's
//!   own rights);
//! - nothing from the caller's environment decides what runs as root: `CLAUDE_JAIL_PASTA` is
//!   ignored, pasta comes from the conf's `pasta =` or an installed location;
//! - no message quotes a file the caller cannot read;
//! - `status` and `events` show the caller's own jails only.
//!
//! sudo sets SUDO_UID itself (env_reset cannot pass a caller's value through) and pkexec sets
//! PKEXEC_UID; a root shell that inherited SUDO_UID is treated as the user it names, which only
//! ever restricts.
use std::ffi::OsStr;

use anyhow::{bail, Result};

/// The conf a delegated caller gets, whatever it asks for.
pub use crate::conf::DEFAULT_PATH as SYSTEM_CONF;

/// The uid of a delegated caller whose SUDO_UID or PKEXEC_UID is not a number: nobody's (the
/// kernel's "no uid", (uid_t)-1), so nothing of anyone's is shown and no account matches it.
pub const NO_UID: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// uid 0, not on behalf of anyone (a root shell, `sudo` from root, CI).
    Root,
    /// uid 0 on behalf of a normal user: sudo's SUDO_UID, or pkexec's PKEXEC_UID.
    Delegated { uid: u32, via: Via },
    /// Not root at all.
    Unprivileged { uid: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Sudo,
    Pkexec,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Sudo => "sudo",
            Via::Pkexec => "pkexec",
        }
    }
}

impl Caller {
    /// From the real uid and the variables sudo and pkexec set. A variable that is set but is
    /// not a uid restricts as much as possible ([`NO_UID`]): it never makes the caller root.
    pub fn detect(real_uid: u32, sudo_uid: Option<&OsStr>, pkexec_uid: Option<&OsStr>) -> Caller {
        if real_uid != 0 {
            return Caller::Unprivileged { uid: real_uid };
        }
        let parse = |v: Option<&OsStr>| {
            v.map(|v| {
                v.to_str()
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(NO_UID)
            })
        };
        match (parse(sudo_uid), parse(pkexec_uid)) {
            (Some(uid), _) if uid != 0 => Caller::Delegated {
                uid,
                via: Via::Sudo,
            },
            (_, Some(uid)) if uid != 0 => Caller::Delegated {
                uid,
                via: Via::Pkexec,
            },
            _ => Caller::Root,
        }
    }

    /// This process's caller.
    pub fn current() -> Caller {
        Caller::detect(
            nix::unistd::getuid().as_raw(),
            std::env::var_os("SUDO_UID").as_deref(),
            std::env::var_os("PKEXEC_UID").as_deref(),
        )
    }

    /// The uid of the user behind sudo or pkexec, whose command it is.
    pub fn delegated_uid(self) -> Option<u32> {
        match self {
            Caller::Delegated { uid, .. } => Some(uid),
            _ => None,
        }
    }

    /// True when the caller may choose files and programs for root: only root itself.
    pub fn is_root(self) -> bool {
        self == Caller::Root
    }

    /// The uid whose jails this caller may see (None: every jail).
    pub fn sees_only(self) -> Option<u32> {
        match self {
            Caller::Root => None,
            Caller::Delegated { uid, .. } | Caller::Unprivileged { uid } => Some(uid),
        }
    }

    /// Refuses `what` (a read or maintenance subcommand) to a caller who is not root at all: the
    /// registry, pins and log it reads are root's.
    pub fn need_root(self, what: &str) -> Result<()> {
        if let Caller::Unprivileged { .. } = self {
            bail!(
                "claude-jail {what} needs root: the jails' registry, pins and audit trail are \
                 root's (fix: sudo claude-jail {what})"
            );
        }
        Ok(())
    }

    /// Refuses a configuration file other than /etc/claude-sandbox.conf for a delegated caller;
    /// `cli` is `--config`, `env` is CLAUDE_SANDBOX_CONF.
    pub fn check_conf_choice(
        self,
        cli: Option<&std::path::Path>,
        env: Option<&OsStr>,
    ) -> Result<()> {
        let Caller::Delegated { via, .. } = self else {
            return Ok(());
        };
        let asked = cli.map(|p| (p.as_os_str(), "--config")).or(env
            .filter(|e| !e.is_empty())
            .map(|e| (e, crate::conf::ENV_CONF)));
        if let Some((path, what)) = asked {
            if path != OsStr::new(SYSTEM_CONF) {
                bail!(
                    "{what} is refused through {}: claude-jail reads only {SYSTEM_CONF} on behalf of \
                     another user (fix: put the settings in {SYSTEM_CONF}; to check a draft, run \
                     `claude-jail policy --config FILE` without {})",
                    via.name(),
                    via.name()
                );
            }
        }
        Ok(())
    }

    /// Refuses `--user` naming anyone but a delegated caller itself (by name or uid).
    pub fn check_user_choice(self, user: Option<&str>) -> Result<()> {
        let (Caller::Delegated { uid, via }, Some(name)) = (self, user) else {
            return Ok(());
        };
        let named = match name.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => nix::unistd::User::from_name(name)
                .ok()
                .flatten()
                .map(|u| u.uid.as_raw()),
        };
        if named != Some(uid) {
            bail!(
                "--user {name} is refused through {}: the command runs as the user who asked \
                 (uid {uid}) and nobody else (fix: leave out --user; only root itself may run a \
                 command as another user)",
                via.name()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn os(s: &str) -> Option<&OsStr> {
        Some(OsStr::new(s))
    }

    #[test]
    fn sudo_and_pkexec_make_a_delegated_caller_and_root_behind_sudo_stays_root() {
        assert_eq!(Caller::detect(0, None, None), Caller::Root);
        assert_eq!(
            Caller::detect(0, os("1000"), None),
            Caller::Delegated {
                uid: 1000,
                via: Via::Sudo
            }
        );
        assert_eq!(
            Caller::detect(0, None, os("1001")),
            Caller::Delegated {
                uid: 1001,
                via: Via::Pkexec
            }
        );
        assert_eq!(Caller::detect(0, os("0"), None), Caller::Root);
        assert_eq!(
            Caller::detect(0, os("x1000"), None),
            Caller::Delegated {
                uid: NO_UID,
                via: Via::Sudo
            },
            "a SUDO_UID that is not a uid restricts; it never makes the caller root"
        );
        assert_eq!(
            Caller::detect(0, os("0"), os("")).delegated_uid(),
            Some(NO_UID)
        );
        assert_eq!(
            Caller::detect(1000, os("0"), None),
            Caller::Unprivileged { uid: 1000 },
            "a normal user's own SUDO_UID means nothing"
        );
    }

    #[test]
    fn a_delegated_caller_gets_the_system_conf_only() {
        let d = Caller::Delegated {
            uid: 1000,
            via: Via::Sudo,
        };
        assert!(d.check_conf_choice(None, None).is_ok());
        assert!(d
            .check_conf_choice(Some(Path::new(SYSTEM_CONF)), None)
            .is_ok());
        let e = d
            .check_conf_choice(Some(Path::new("/root/priv/secret.txt")), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--config is refused through sudo") && e.contains("fix:"),
            "{e}"
        );
        assert!(
            !e.contains("secret"),
            "the refusal does not echo the file: {e}"
        );
        assert!(d.check_conf_choice(None, os("/tmp/x.conf")).is_err());
        assert!(Caller::Root
            .check_conf_choice(Some(Path::new("/tmp/x")), os("/tmp/y"))
            .is_ok());
    }

    #[test]
    fn a_delegated_caller_may_name_only_itself_as_user() {
        let d = Caller::Delegated {
            uid: 0xfffe,
            via: Via::Sudo,
        };
        assert!(d.check_user_choice(None).is_ok());
        assert!(d.check_user_choice(Some("65534")).is_ok());
        assert!(d.check_user_choice(Some("root")).is_err());
        assert!(d.check_user_choice(Some("1")).is_err());
        assert!(Caller::Root.check_user_choice(Some("root")).is_ok());
    }
}
