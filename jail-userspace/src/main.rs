//! `claude-jail`: parse, run, map the outcome to an exit status. Everything else is in the library.
#![deny(unsafe_code)]
use std::process::ExitCode;

fn main() -> ExitCode {
    claude_jail::cli::main()
}
