//! The fixed directories claude-jail keeps its state in, and how a private one is made. A leaf:
//! every module that writes state ([`crate::state`], [`crate::bpf`], [`crate::events`]) uses it,
//! and it uses none of them.
use std::{
    fs,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::Path,
};

use anyhow::{Context, Result};

/// Run-time state: the registry, each jail's run directory.
pub const RUN_DIR: &str = "/run/claude-jail";
/// The audit trail.
pub const LOG_DIR: &str = "/var/log/claude-jail";
/// Where bpffs is (or gets) mounted; the pins live below it.
pub const BPFFS: &str = "/sys/fs/bpf";

/// A root-only directory (and parents), made so even when it existed with other modes.
pub fn private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 700 {}", dir.display()))
}
