//! Embeds the eBPF object built by `cargo xtask build-ebpf` so that `claude-jail` is one
//! self-contained binary. The object's path can be overridden with CLAUDE_JAIL_EBPF_OBJ.
use std::{env, fs, path::PathBuf};

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
}
