//! Where a launch's time goes: `run --profile-fd N` (hidden) writes one line per phase,
//! `PHASE MICROSECONDS`, to descriptor N as each phase ends (`cargo xtask bench` prints them).
//! Off unless asked: then [`mark`] is one check of an empty cell. Harmless behind sudo: it only
//! writes timings to a descriptor the caller opened itself.
use std::{fs::File, io::Write, sync::Mutex, time::Instant};

use anyhow::{Context, Result};

struct Profile {
    out: File,
    last: Instant,
}

static PROFILE: Mutex<Option<Profile>> = Mutex::new(None);

/// Starts the profile on descriptor `fd` (taken: closed on exec, so the jail never sees it).
pub fn start(fd: i32) -> Result<()> {
    let owned = crate::sys::take_fd(fd).with_context(|| {
        format!("--profile-fd {fd}: not an open descriptor (fix: leave it out, or open it)")
    })?;
    nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&owned),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .with_context(|| format!("--profile-fd {fd}: set close-on-exec"))?;
    *PROFILE.lock().unwrap_or_else(|e| e.into_inner()) = Some(Profile {
        out: File::from(owned),
        last: Instant::now(),
    });
    Ok(())
}

/// Ends the phase `name` (one word): writes its duration since the previous mark.
pub fn mark(name: &str) {
    let mut p = PROFILE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = p.as_mut() {
        let now = Instant::now();
        // A timing that cannot be written is not worth failing a launch for.
        let _ = writeln!(p.out, "{name} {}", (now - p.last).as_micros());
        p.last = now;
    }
}
