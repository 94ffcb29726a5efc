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
    #[error("uid {0} has no passwd entry (fix: pass --user with an account that has one)")]
    NoPasswd(u32),
    #[error(
        "refusing to run the command as root (uid 0): a root process in the jail still owns the \
         files that configure it and could leave its cgroup. Fix: pass --user USER, or start \
         claude-jail with sudo from a normal account"
    )]
    Root,
    #[error("looking up users: {0}")]
    Lookup(nix::Error),
}

// By hand rather than `#[from]`, which would also make the error its own `source()` and so print
// it twice under `{:#}`: a typed error's message is the whole story, once.
impl From<nix::Error> for UserError {
    fn from(e: nix::Error) -> Self {
        UserError::Lookup(e)
    }
}

/// Resolves the target user. `delegated_uid` is the user behind sudo or pkexec
/// ([`crate::caller::Caller::delegated_uid`]); `sudo_gid` the value of SUDO_GID.
pub fn resolve(
    user: Option<&str>,
    delegated_uid: Option<u32>,
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
        (None, true) if delegated_uid.is_some() => {
            let uid = delegated_uid.unwrap_or(crate::caller::NO_UID);
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

/// Variables that sudo (or pkexec) adds about itself, and root's mail path that sudo's
/// env_reset sets: never the user's.
const LAUNCH_VARS: [&str; 7] = [
    "SUDO_USER",
    "SUDO_UID",
    "SUDO_GID",
    "SUDO_COMMAND",
    "SUDO_HOME",
    "PKEXEC_UID",
    "MAIL",
];

/// Where the command's environment comes from.
pub enum EnvFrom {
    /// The command runs as the user who asked for it: that user's environment as it was where
    /// they typed the command (the `claude` shim hands it over a descriptor, `run --env-fd`; else
    /// what sudo left of it), less [`crate::mask::MASKED_ENV`] and sudo's own variables. The
    /// launcher never reads a setting of its own from it.
    Own(Vec<(OsString, OsString)>),
    /// Root starts the command for another user (`--user`): only the allow list
    /// ([`PASS_EXACT`], [`PASS_PREFIX`], the proxies) and the conf's `pass-env` patterns pass.
    Admin {
        caller: Vec<(OsString, OsString)>,
        pass_env: Vec<String>,
    },
}

/// Whether `name` matches a `pass-env` pattern: the exact name, or a prefix ending in `*`.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// Reads `NAME=VALUE` entries separated by NUL bytes (as `env -0` writes them) from `fd`, at
/// most 1 MiB; an entry without `=` or with an empty name is skipped.
pub fn read_env(from: impl std::io::Read) -> std::io::Result<Vec<(OsString, OsString)>> {
    use std::io::Read;
    use std::os::unix::ffi::OsStringExt;
    const MAX: u64 = 1 << 20;
    let mut buf = Vec::new();
    from.take(MAX + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX {
        return Err(std::io::Error::other(
            "the environment handed over is larger than 1 MiB",
        ));
    }
    Ok(buf
        .split(|&b| b == 0)
        .filter_map(|kv| {
            let eq = kv.iter().position(|&b| b == b'=')?;
            (eq > 0).then(|| {
                (
                    OsString::from_vec(kv[..eq].to_vec()),
                    OsString::from_vec(kv[eq + 1..].to_vec()),
                )
            })
        })
        .collect())
}

/// The command's environment: HOME, USER, LOGNAME and SHELL from the passwd entry, PATH from the
/// source or a default, and what [`EnvFrom`] lets pass. `masked` never pass: the launcher gives
/// the broker variables ([`crate::mask::MASKED_ENV`], kept beside the sockets they name).
pub fn environment(target: &Target, from: EnvFrom, masked: &[&str]) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = vec![
        ("HOME".into(), target.home.clone().into_os_string()),
        ("USER".into(), target.name.clone().into()),
        ("LOGNAME".into(), target.name.clone().into()),
        ("SHELL".into(), target.shell.clone().into_os_string()),
    ];
    let (vars, own, pass_env) = match from {
        EnvFrom::Own(v) => (v, true, Vec::new()),
        EnvFrom::Admin { caller, pass_env } => (caller, false, pass_env),
    };
    let mut path = None;
    for (k, v) in vars {
        let Some(name) = k.to_str() else { continue };
        if name == "PATH" {
            path = Some(v);
            continue;
        }
        if ["HOME", "USER", "LOGNAME", "SHELL"].contains(&name)
            || masked.contains(&name)
            || LAUNCH_VARS.contains(&name)
        {
            continue;
        }
        let pass = own
            || PASS_EXACT.contains(&name)
            || is_proxy_var(name)
            || PASS_PREFIX.iter().any(|p| name.starts_with(p))
            || pass_env.iter().any(|p| pattern_matches(p, name));
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
        let env = environment(
            &alice(),
            EnvFrom::Admin {
                caller: caller.to_vec(),
                pass_env: vec![],
            },
            &crate::mask::MASKED_ENV,
        );
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
        let env = environment(
            &alice(),
            EnvFrom::Admin {
                caller: caller.collect(),
                pass_env: vec![],
            },
            &crate::mask::MASKED_ENV,
        );
        for k in pass {
            assert!(is_proxy_var(k), "{k}");
            assert!(get(&env, k).is_some(), "{k} passes through");
        }
        for k in drop {
            assert!(!is_proxy_var(k), "{k}");
            assert!(get(&env, k).is_none(), "{k} must not reach the jail");
        }
    }

    fn vars(kv: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        kv.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn the_users_own_environment_passes_whole_but_for_brokers_and_sudos_variables() {
        let own = vars(&[
            ("EPICS_CA_ADDR_LIST", "10.1.2.3"),
            ("EPICS_CA_AUTO_ADDR_LIST", "NO"),
            ("VIRTUAL_ENV", "/opt/venv"),
            ("NODE_OPTIONS", "--max-old-space-size=4096"),
            ("FOO", "bar"),
            ("HOME", "/elsewhere"),
            ("TMUX", "/tmp/tmux-1000/default,1,0"),
            ("DISPLAY", ":0"),
            ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/run/user/1000/bus"),
            ("SUDO_UID", "1000"),
            ("MAIL", "/var/mail/root"),
            ("PATH", "/home/alice/.local/bin:/usr/bin"),
        ]);
        let env = environment(&alice(), EnvFrom::Own(own), &crate::mask::MASKED_ENV);
        for (k, v) in [
            ("EPICS_CA_ADDR_LIST", "10.1.2.3"),
            ("VIRTUAL_ENV", "/opt/venv"),
            ("NODE_OPTIONS", "--max-old-space-size=4096"),
            ("FOO", "bar"),
            ("HOME", "/home/alice"),
            ("PATH", "/home/alice/.local/bin:/usr/bin"),
        ] {
            assert_eq!(get(&env, k), Some(OsStr::new(v)), "{k}");
        }
        for k in crate::mask::MASKED_ENV
            .iter()
            .copied()
            .chain(["SUDO_UID", "MAIL"])
        {
            assert!(get(&env, k).is_none(), "{k} must not reach the jail");
        }
    }

    #[test]
    fn for_another_user_only_the_allow_list_and_pass_env_pass() {
        let caller = vars(&[
            ("EPICS_CA_ADDR_LIST", "10.1.2.3"),
            ("EPICSX", "1"),
            ("FOO", "bar"),
            ("TERM", "xterm"),
            ("TMUX", "/tmp/x"),
        ]);
        let env = environment(
            &alice(),
            EnvFrom::Admin {
                caller,
                pass_env: vec!["EPICS_*".into(), "TMUX".into()],
            },
            &crate::mask::MASKED_ENV,
        );
        assert!(get(&env, "EPICS_CA_ADDR_LIST").is_some());
        assert!(get(&env, "TERM").is_some());
        assert!(
            get(&env, "EPICSX").is_none(),
            "EPICS_* needs the underscore"
        );
        assert!(get(&env, "FOO").is_none());
        assert!(
            get(&env, "TMUX").is_none(),
            "a broker variable never passes, even when pass-env names it"
        );
    }

    #[test]
    fn an_environment_handed_over_a_descriptor_is_read_as_env_0_writes_it() {
        use std::io::Read as _;
        let got = read_env(&b"A=1\0B=x=y\0=nokey\0novalue\0C=\0"[..]).unwrap();
        assert_eq!(got, vars(&[("A", "1"), ("B", "x=y"), ("C", "")]));
        assert!(read_env(std::io::repeat(b'a').take((1 << 20) + 10)).is_err());
    }

    #[test]
    fn path_defaults_when_the_caller_has_none() {
        let env = environment(&alice(), EnvFrom::Own(vec![]), &crate::mask::MASKED_ENV);
        assert_eq!(get(&env, "PATH"), Some(OsStr::new(DEFAULT_PATH)));
    }
}
