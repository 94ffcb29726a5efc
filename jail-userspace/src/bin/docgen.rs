//! `claude-jail-docgen DIR`: writes the man pages (DIR/man1/claude-jail.1 and one per
//! subcommand) and the bash, zsh and fish completions (DIR/completions/) from the clap
//! definitions of `claude-jail`, for `cargo xtask install`.
#![deny(unsafe_code)]
use std::{fs, path::PathBuf, process::ExitCode};

use clap::CommandFactory;
use clap_complete::Shell;
use claude_jail::exit::Exit;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: claude-jail-docgen DIR");
        return Exit::Usage.into();
    };
    match write(&dir) {
        Ok(()) => Exit::Success.into(),
        Err(e) => {
            eprintln!("claude-jail-docgen: {e}");
            Exit::Failure.into()
        }
    }
}

fn write(dir: &std::path::Path) -> std::io::Result<()> {
    let cmd = claude_jail::cli::Cli::command();
    let man = dir.join("man1");
    fs::create_dir_all(&man)?;
    // claude-jail.1, then claude-jail-run.1 and one page per subcommand.
    clap_mangen::generate_to(cmd.clone(), &man)?;
    let comp = dir.join("completions");
    fs::create_dir_all(&comp)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "claude-jail", &comp)?;
    }
    Ok(())
}
