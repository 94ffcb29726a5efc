//! The exit statuses of `claude-jail`, in one place: scripts and the `claude` shim branch on
//! them, so each number is part of the interface (and pinned by the tests below).
//!
//! `run` passes the command's status through, so its own statuses sit where a shell and
//! `podman run` put theirs: 125 when the jail could not be built (nothing ran), 126 and 127 when
//! the command cannot be executed or found, 128+N when signal N ended it. The other subcommands
//! use 0, 1 (failed, or found a problem) and 2 (usage error), as most command-line tools do.
use std::process::ExitCode;

use nix::sys::signal::Signal;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done (also `--help` and `--version`).
    Success,
    /// A subcommand other than `run` failed, or found what it reports as a problem (`check`,
    /// `verify`, `reload`).
    Failure,
    /// A usage error of a subcommand other than `run`.
    Usage,
    /// `run`: the jail could not be built, or `run` itself was misused: nothing was run (as
    /// `podman run`).
    JailFailed,
    /// `run`: the command was found but could not be executed.
    CannotExec,
    /// `run`: the command was not found.
    NotFound,
    /// `run`: the command ended by signal N: 128+N, as a shell reports it.
    Signal(Signal),
    /// `run`: a status passed through as it is: the command's own exit status, or one of the
    /// above already turned into its number (0..=255; anything outside is clamped).
    Command(i32),
}

impl Exit {
    /// The number, as a parent's waitpid sees it.
    pub const fn code(self) -> i32 {
        match self {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::JailFailed => 125,
            Exit::CannotExec => 126,
            Exit::NotFound => 127,
            Exit::Signal(sig) => 128 + sig as i32,
            Exit::Command(code) => code,
        }
    }

    /// The status byte the process exits with: [`Exit::code`], clamped to 0..=255.
    pub fn byte(self) -> u8 {
        self.code().clamp(0, 255) as u8
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.byte())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_numbers_are_the_documented_ones() {
        assert_eq!(Exit::Success.code(), 0);
        assert_eq!(Exit::Failure.code(), 1);
        assert_eq!(Exit::Usage.code(), 2);
        assert_eq!(Exit::JailFailed.code(), 125);
        assert_eq!(Exit::CannotExec.code(), 126);
        assert_eq!(Exit::NotFound.code(), 127);
        assert_eq!(Exit::Signal(Signal::SIGHUP).code(), 129);
        assert_eq!(Exit::Signal(Signal::SIGINT).code(), 130);
        assert_eq!(Exit::Signal(Signal::SIGKILL).code(), 137);
        assert_eq!(Exit::Signal(Signal::SIGTERM).code(), 143);
        assert_eq!(Exit::Command(0).code(), 0);
        assert_eq!(Exit::Command(3).code(), 3);
    }

    #[test]
    fn the_status_byte_clamps_what_does_not_fit() {
        assert_eq!(Exit::Command(255).byte(), 255);
        assert_eq!(Exit::Command(256).byte(), 255);
        assert_eq!(Exit::Command(-1).byte(), 0);
        assert_eq!(Exit::JailFailed.byte(), 125);
        assert_eq!(Exit::Signal(Signal::SIGTERM).byte(), 143);
    }
}
