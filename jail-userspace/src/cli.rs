//! The command line: raw flags (clap) and the dispatch to each subcommand's module.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "claude-jail",
    version,
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
        /// The command and its arguments.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
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

/// Exit status of a failed subcommand that is not `run` (which has its own statuses).
const EXIT_FAILURE: u8 = 1;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            config,
            user,
            command,
        } => {
            return crate::launch::run(crate::launch::RunArgs {
                config,
                user,
                command,
            })
        }
        Command::Policy { config, json } => crate::policy_cmd::run(config, json),
        Command::Reload { config } => crate::reload::command(config),
        Command::Status { json } => crate::status::command(json),
        Command::Events { follow, json, jail } => {
            let caller = crate::caller::Caller::current();
            caller
                .need_root("events")
                .and_then(|()| crate::state::Paths::system())
                .and_then(|p| {
                    crate::events::command(
                        &p.events_log(),
                        follow,
                        json,
                        jail.as_deref(),
                        caller.sees_only(),
                    )
                })
                .map(|()| ExitCode::SUCCESS)
        }
        Command::Gc => crate::status::gc_command(),
        Command::Check { config, json } => crate::check::command(config, json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("claude-jail: error: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
