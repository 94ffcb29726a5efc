//! The command line: raw flags (clap) and the dispatch to each subcommand's module.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::exit::Exit;

/// The version, the git commit it was built from and the SHA-256 of the eBPF object it embeds.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CLAUDE_JAIL_GIT_COMMIT"),
    ", eBPF object sha256 ",
    env!("CLAUDE_JAIL_EBPF_SHA256"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "claude-jail",
    version = VERSION,
    about = "Run an AI coding agent in an egress jail: its own network namespace, pasta, and eBPF \
             programs that refuse internal destinations."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run COMMAND (default: claude) in the egress jail. Exit status: the command's (128+N when
    /// signal N ended it), 125 when the jail could not be built, 126/127 when the command cannot
    /// be executed / found.
    Run {
        /// Configuration file (default: $CLAUDE_SANDBOX_CONF, else /etc/claude-sandbox.conf).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Run the command as USER (root only; default: the user behind sudo, else the caller).
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// Read the command's environment from descriptor FD (NAME=VALUE entries separated by
        /// NUL, as `env -0` writes them): the `claude` shim hands the user's environment across
        /// sudo this way.
        #[arg(long, value_name = "FD")]
        env_fd: Option<i32>,
        /// Write how long each phase of the launch took to descriptor FD, one `PHASE
        /// MICROSECONDS` per line (`cargo xtask bench`).
        #[arg(long, value_name = "FD", hide = true)]
        profile_fd: Option<i32>,
        /// The command and its arguments.
        // The first word of the command may not start with `-`: a mistyped option of run's
        // (`--confg`) is refused instead of being run as a command. After it (or after `--`),
        // every word is the command's, verbatim: `run claude --print hi`, `run -- -x`.
        #[arg(trailing_var_arg = true, value_name = "COMMAND")]
        command: Vec<std::ffi::OsString>,
    },
    /// Bring every running jail to the configuration's current policy (root only).
    Reload {
        /// Configuration file (default: $CLAUDE_SANDBOX_CONF, else /etc/claude-sandbox.conf).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// List the jails: ids, pids, user, command, policy and counters.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The audit trail of refused connection attempts.
    Events {
        /// Keep printing new events as they come.
        #[arg(long)]
        follow: bool,
        /// JSON lines instead of text.
        #[arg(long)]
        json: bool,
        /// Only this jail's events.
        #[arg(long, value_name = "ID")]
        jail: Option<String>,
    },
    /// Remove the state of jails whose launcher is gone.
    Gc,
    /// Start a fresh jail and audit it from inside and out: the programs attached to its cgroup,
    /// the command's capabilities empty, the kernel's maps equal to the conf's policy, one
    /// refused connect per denied range (EPERM before any packet), DNS resolving.
    Verify {
        /// Configuration file (default: $CLAUDE_SANDBOX_CONF, else /etc/claude-sandbox.conf).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Run the jail as USER (root only; default: the user behind sudo).
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// The name to resolve through the jail's DNS.
        #[arg(long, value_name = "NAME", default_value = "example.com")]
        resolve: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The inside half of `verify` (runs in the jail as the user).
    #[command(hide = true)]
    VerifyInside {
        #[arg(long)]
        resolve: String,
        #[arg(long)]
        refused: Vec<String>,
    },
    /// Whether a jail can start here: one line per prerequisite, each failure with its fix.
    /// Exit 0 only when a jail can start.
    Check {
        /// Configuration file (default: $CLAUDE_SANDBOX_CONF, else /etc/claude-sandbox.conf).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the effective policy: every allow and deny entry and where it came from.
    Policy {
        /// Configuration file (default: $CLAUDE_SANDBOX_CONF, else /etc/claude-sandbox.conf).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors; a usage error of `run` exits 125 (the jail
            // was not built, as `podman run` does), of any other subcommand 2.
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    Exit::Success
                }
                _ if std::env::args_os().nth(1).as_deref() == Some("run".as_ref()) => {
                    Exit::JailFailed
                }
                _ => Exit::Usage,
            }
            .into();
        }
    };
    let result = match cli.command {
        Command::Run {
            config,
            user,
            env_fd,
            profile_fd,
            command,
        } => {
            if let Some(fd) = profile_fd {
                if let Err(e) = crate::profile::start(fd) {
                    eprintln!("{}", crate::launch::refusal(&e));
                    return crate::exit::Exit::JailFailed.into();
                }
            }
            return crate::launch::command(crate::launch::RunArgs {
                config,
                user,
                env_fd,
                command,
            });
        }
        Command::Policy { config, json } => crate::policy_cmd::command(config, json),
        Command::Reload { config } => crate::reload::command(config),
        Command::Status { json } => crate::status::command(json),
        Command::Events { follow, json, jail } => {
            let caller = crate::caller::Caller::current();
            crate::state::Paths::for_caller(caller)
                .and_then(|p| {
                    crate::events::command(
                        &p.events_log(),
                        follow,
                        json,
                        jail.as_deref(),
                        // A user without root reads their own log: all of it is theirs.
                        match caller {
                            crate::caller::Caller::Unprivileged { .. } => None,
                            _ => caller.sees_only(),
                        },
                    )
                })
                .map(|()| ExitCode::SUCCESS)
        }
        Command::Gc => crate::gc::command(),
        Command::Check { config, json } => crate::check::command(config, json),
        Command::Verify {
            config,
            user,
            resolve,
            json,
        } => crate::verify::command(config, user, &resolve, json),
        Command::VerifyInside { resolve, refused } => crate::verify::inside(&resolve, &refused),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("claude-jail: error: {e:#}");
            Exit::Failure.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_command(args: &[&str]) -> Result<Vec<String>, clap::error::ErrorKind> {
        let cli = Cli::try_parse_from(args).map_err(|e| e.kind())?;
        match cli.command {
            Command::Run { command, .. } => Ok(command
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()),
            _ => panic!("not run"),
        }
    }

    #[test]
    fn the_command_and_its_options_pass_verbatim_and_a_mistyped_option_is_refused() {
        assert_eq!(
            run_command(&["claude-jail", "run", "claude", "--print", "hi"]).unwrap(),
            ["claude", "--print", "hi"]
        );
        assert_eq!(
            run_command(&["claude-jail", "run", "--", "-x", "--user", "y"]).unwrap(),
            ["-x", "--user", "y"]
        );
        assert_eq!(
            run_command(&[
                "claude-jail",
                "run",
                "--user",
                "dev",
                "claude",
                "--config",
                "c"
            ])
            .unwrap(),
            ["claude", "--config", "c"],
            "options after the command are the command's"
        );
        assert_eq!(
            run_command(&["claude-jail", "run", "--confg", "x"]),
            Err(clap::error::ErrorKind::UnknownArgument)
        );
    }

    #[test]
    fn the_version_names_the_commit_and_the_ebpf_object() {
        assert!(VERSION.contains("commit ") && VERSION.contains("eBPF object sha256 "));
        let hash = VERSION
            .rsplit("sha256 ")
            .next()
            .unwrap()
            .trim_end_matches(')');
        assert_eq!(hash.len(), 64, "{VERSION}");
    }
}
