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
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("claude-jail: error: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
