//! Embeds the eBPF object built by `cargo xtask build-ebpf` so that `claude-jail` is one
//! self-contained binary. The object's path can be overridden with CLAUDE_JAIL_EBPF_OBJ.
//! `--version` names the git commit (CLAUDE_JAIL_GIT_COMMIT overrides, e.g. for a package built
//! outside a checkout) and the embedded object's SHA-256, so a binary says what it enforces.
use std::{env, fs, path::PathBuf, process::Command};

use sha2::{Digest, Sha256};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let default = manifest.join("../target/bpfel-unknown-none/release/jail-ebpf");
    println!("cargo:rerun-if-env-changed=CLAUDE_JAIL_EBPF_OBJ");
    let obj = env::var_os("CLAUDE_JAIL_EBPF_OBJ")
        .map(PathBuf::from)
        .unwrap_or(default);
    println!("cargo:rerun-if-changed={}", obj.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("jail-ebpf.o");
    if let Err(e) = fs::copy(&obj, &out) {
        panic!(
            "cannot read the eBPF object {}: {e}\n\
             Build it first with `cargo xtask build-ebpf` (or `cargo xtask build` for both).",
            obj.display()
        );
    }
    let hash = Sha256::digest(fs::read(&out).expect("just copied"));
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=CLAUDE_JAIL_EBPF_SHA256={hex}");

    println!("cargo:rerun-if-env-changed=CLAUDE_JAIL_GIT_COMMIT");
    let commit = env::var("CLAUDE_JAIL_GIT_COMMIT").ok().or_else(|| {
        let out = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(&manifest)
            .output()
            .ok()?;
        let dirty = Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .current_dir(&manifest)
            .output()
            .ok()
            .is_some_and(|o| !o.stdout.is_empty());
        let c = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !c.is_empty())
            .then(|| if dirty { format!("{c}-dirty") } else { c })
    });
    println!(
        "cargo:rustc-env=CLAUDE_JAIL_GIT_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
    // A new commit rebuilds the version string.
    if let Ok(out) = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .current_dir(&manifest)
        .output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let dir = if dir.is_absolute() {
            dir
        } else {
            manifest.join(dir)
        };
        println!("cargo:rerun-if-changed={}", dir.join("HEAD").display());
        println!("cargo:rerun-if-changed={}", dir.join("index").display());
    }
}
