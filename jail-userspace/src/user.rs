//! Who the command runs as, and with what environment.
//!
//! The target is `--user`, else the user behind sudo (SUDO_UID/SUDO_GID), else the caller; the
//! first two are honoured only when the real uid is 0, so an unprivileged caller cannot name
//! someone else. The target is never uid 0: a capability-less root still owns the files that
//! configure the jail and, where cgroup2 lacks nsdelegate, can leave the jail's cgroup.
use std::{
    ffi::{CString, OsStr, OsString},
    os::unix::ffi::OsStrExt,
    path::PathBuf,
};

use nix::unistd::{getgrouplist, getuid, Gid, Uid, User};
use thiserror::Error;

/// The user the command will run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, from the group database (initgroups semantics).
    pub groups: Vec<u32>,
    pub home: PathBuf,
    pub shell: PathBuf,
}

#[derive(Debug, Error)]
pub enum UserError {
    #[error("--user {0}: no such user (fix: name an existing account)")]
    NoSuchUser(String),
    #[error(
        "--user needs root: only root may run the command as another user (fix: start claude-jail \
         with sudo)"
    )]
    NotRoot,
    #[error("SUDO_UID={0}: not a number (fix: unset SUDO_UID, or pass --user USER)")]
    BadSudoUid(String),
    #[error("uid {0} has no passwd entry (fix: pass --user with an account that has one)")]
    NoPasswd(u32),
    #[error(
        "refusing to run the command as root (uid 0): a root process in the jail still owns the \
         files that configure it and could leave its cgroup. Fix: pass --user USER, or start \
         claude-jail with sudo from a normal account"
    )]
    Root,
    #[error("looking up users: {0}")]
    Lookup(#[from] nix::Error),
}

/// Resolves the target user. `sudo_uid`/`sudo_gid` are the values of SUDO_UID/SUDO_GID.
pub fn resolve(
    user: Option<&str>,
    sudo_uid: Option<&OsStr>,
    sudo_gid: Option<&OsStr>,
) -> Result<Target, UserError> {
    let real_root = getuid().is_root();
    let entry = match (user, real_root) {
        (Some(_), false) => return Err(UserError::NotRoot),
        (Some(name), true) => match name.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid))?,
            Err(_) => User::from_name(name)?,
        }
        .ok_or_else(|| UserError::NoSuchUser(name.to_string()))?,
        (None, true) if sudo_uid.is_some() => {
            let raw = sudo_uid.unwrap().to_string_lossy().into_owned();
            let uid: u32 = raw.parse().map_err(|_| UserError::BadSudoUid(raw))?;
            let mut u = User::from_uid(Uid::from_raw(uid))?.ok_or(UserError::NoPasswd(uid))?;
            // sudo says which group the caller had; prefer it over the passwd default.
            if let Some(g) = sudo_gid
                .and_then(|g| g.to_str())
                .and_then(|g| g.parse().ok())
            {
                u.gid = Gid::from_raw(g);
            }
            u
        }
        (None, _) => {
            let uid = getuid();
            User::from_uid(uid)?.ok_or(UserError::NoPasswd(uid.as_raw()))?
        }
    };
    if entry.uid.is_root() {
        return Err(UserError::Root);
    }
    let cname =
        CString::new(entry.name.as_bytes()).map_err(|_| UserError::NoPasswd(entry.uid.as_raw()))?;
    let groups = getgrouplist(&cname, entry.gid)?
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    Ok(Target {
        name: entry.name,
        uid: entry.uid.as_raw(),
        gid: entry.gid.as_raw(),
        groups,
        home: entry.dir,
        shell: entry.shell,
    })
}

/// Variables passed through from the launcher's environment, by exact name or by prefix.
const PASS_EXACT: [&str; 6] = [
    "TERM",
    "COLORTERM",
    "LANG",
    "SSH_AUTH_SOCK",
    "NO_COLOR",
    "TZ",
];
const PASS_PREFIX: [&str; 3] = ["LC_", "ANTHROPIC_", "CLAUDE_"];

/// The `*_proxy` variables (http_proxy, ftp_proxy, socks_proxy, no_proxy, ...), in either of the
/// two spellings tools read: a name ending in `_proxy` or `_PROXY`.
pub fn is_proxy_var(name: &str) -> bool {
    name.len() > "_proxy".len() && (name.ends_with("_proxy") || name.ends_with("_PROXY"))
}

/// PATH when the caller's environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The command's environment: HOME, USER, LOGNAME and SHELL from the passwd entry, PATH from the
/// caller (sudo's secure_path) or a default, and the pass-through variables. Nothing else: the
/// broker variables (TMUX, DBUS_SESSION_BUS_ADDRESS, DISPLAY, ...) are left out on purpose.
pub fn environment(
    target: &Target,
    caller: impl IntoIterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = vec![
        ("HOME".into(), target.home.clone().into_os_string()),
        ("USER".into(), target.name.clone().into()),
        ("LOGNAME".into(), target.name.clone().into()),
        ("SHELL".into(), target.shell.clone().into_os_string()),
    ];
    let mut path = None;
    for (k, v) in caller {
        let Some(name) = k.to_str() else { continue };
        if name == "PATH" {
            path = Some(v);
            continue;
        }
        let pass = PASS_EXACT.contains(&name)
            || is_proxy_var(name)
            || PASS_PREFIX.iter().any(|p| name.starts_with(p));
        if pass && !v.as_bytes().contains(&0) {
            env.push((k, v));
        }
    }
    env.push(("PATH".into(), path.unwrap_or_else(|| DEFAULT_PATH.into())));
    env.sort();
    env.dedup_by(|a, b| a.0 == b.0);
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Target {
        Target {
            name: "alice".into(),
            uid: 1000,
            gid: 1000,
            groups: vec![1000],
            home: "/home/alice".into(),
            shell: "/bin/bash".into(),
        }
    }

    fn get<'a>(env: &'a [(OsString, OsString)], k: &str) -> Option<&'a OsStr> {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_os_str())
    }

    #[test]
    fn passwd_fields_win_and_brokers_are_dropped() {
        let caller = [
            ("HOME", "/root"),
            ("USER", "root"),
            ("TERM", "xterm-256color"),
            ("LC_ALL", "C.UTF-8"),
            ("ANTHROPIC_API_KEY", "k"),
            ("CLAUDE_CODE_X", "1"),
            ("https_proxy", "http://proxy:3128"),
            ("SSH_AUTH_SOCK", "/tmp/ssh-x/agent.1"),
            ("TMUX", "/tmp/tmux-1000/default,1,0"),
            ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/run/user/1000/bus"),
            ("DISPLAY", ":0"),
            ("DOCKER_HOST", "unix:///var/run/docker.sock"),
            ("LD_PRELOAD", "/tmp/evil.so"),
            ("PATH", "/usr/sbin:/usr/bin"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = environment(&alice(), caller);
        assert_eq!(get(&env, "HOME"), Some(OsStr::new("/home/alice")));
        assert_eq!(get(&env, "USER"), Some(OsStr::new("alice")));
        assert_eq!(get(&env, "LOGNAME"), Some(OsStr::new("alice")));
        assert_eq!(get(&env, "SHELL"), Some(OsStr::new("/bin/bash")));
        for k in [
            "TERM",
            "LC_ALL",
            "ANTHROPIC_API_KEY",
            "CLAUDE_CODE_X",
            "https_proxy",
            "SSH_AUTH_SOCK",
        ] {
            assert!(get(&env, k).is_some(), "{k} passes through");
        }
        for k in [
            "TMUX",
            "DBUS_SESSION_BUS_ADDRESS",
            "DISPLAY",
            "DOCKER_HOST",
            "LD_PRELOAD",
        ] {
            assert!(get(&env, k).is_none(), "{k} must not reach the jail");
        }
        assert_eq!(get(&env, "PATH"), Some(OsStr::new("/usr/sbin:/usr/bin")));
        assert_eq!(
            env.iter().filter(|(k, _)| k == "HOME").count(),
            1,
            "HOME appears once"
        );
    }

    #[test]
    fn every_proxy_variable_passes_in_both_spellings() {
        let pass = [
            "http_proxy",
            "HTTPS_PROXY",
            "ftp_proxy",
            "FTP_PROXY",
            "socks_proxy",
            "rsync_proxy",
            "grpc_proxy",
            "all_proxy",
            "ALL_PROXY",
            "no_proxy",
            "NO_PROXY",
        ];
        let drop = [
            "_proxy",
            "PROXY",
            "proxy",
            "Http_Proxy",
            "GIT_PROXY_COMMAND",
            "proxy_x",
        ];
        let caller = pass
            .iter()
            .chain(drop.iter())
            .map(|k| (OsString::from(k), OsString::from("http://10.9.9.9:3128")));
        let env = environment(&alice(), caller);
        for k in pass {
            assert!(is_proxy_var(k), "{k}");
            assert!(get(&env, k).is_some(), "{k} passes through");
        }
        for k in drop {
            assert!(!is_proxy_var(k), "{k}");
            assert!(get(&env, k).is_none(), "{k} must not reach the jail");
        }
    }

    #[test]
    fn path_defaults_when_the_caller_has_none() {
        let env = environment(&alice(), []);
        assert_eq!(get(&env, "PATH"), Some(OsStr::new(DEFAULT_PATH)));
    }
}
