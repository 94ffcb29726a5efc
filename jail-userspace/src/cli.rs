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
