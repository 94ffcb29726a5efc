//! Project tasks. `cargo xtask <task>`:
//!
//! - `setup`: install what a fresh machine needs (scripts/setup; idempotent, seconds when done);
//! - `build-ebpf`: build jail-ebpf for bpfel-unknown-none with Debian's rustc-web;
//! - `build`: build-ebpf, then the `claude-jail` binary that embeds the object;
//! - `test`: setup, build, `cargo fmt --check`, clippy (on jail-ebpf too), then every test (unit and integration) run
//!   as root inside `unshare --net --mount`, so that no test packet can reach the real network;
//!   then the tests that start jails once more on the unified cgroup layout, emulated;
//!   `test --stress` runs them while two CPU-bound processes keep the machine busy, as a shared
//!   CI machine is;
//! - `demo`: setup, build, then a jailed probe in a throwaway fake network;
//! - `bench`: the performance goals, measured side by side in a fake network (release build);
//! - `install [--prefix P] [--destdir D]`: the binary, its pasta, the `claude` shim, man pages,
//!   completions, the sudoers rule and an example conf (never over an existing one);
//! - `deb`: the same as a Debian package in target/debian.
use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "claude-jail project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the Debian packages, bpf-linker and pasta (needs root; idempotent).
    Setup,
    /// Build the eBPF object (target/bpfel-unknown-none/release/jail-ebpf).
    BuildEbpf,
    /// Build the eBPF object and the claude-jail binary (release).
    Build,
    /// Set up, build, check formatting and lints, and run every test.
    Test {
        /// Run the tests while two CPU-bound processes keep the machine busy (a shared CI
        /// machine); xtask starts them and kills them when the tests end, pass or fail.
        #[arg(long)]
        stress: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter), after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run a jailed probe in a throwaway fake network.
    Demo,
    /// Benchmarks (release build, in a fake network): the packet backstop's cost on bulk TCP,
    /// and reloading 10,000 allow entries; printed as ratios measured side by side.
    Bench,
    /// Install claude-jail: the binary, its pasta, the `claude` shim, man pages, completions,
    /// the sudoers rule for the claude-jail group, and /etc/claude-sandbox.conf if absent.
    Install {
        /// Installation prefix.
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Stage into this directory instead of / (for packaging); no group is created.
        #[arg(long)]
        destdir: Option<PathBuf>,
    },
    /// Build the Debian package target/debian/claude-jail_VERSION_ARCH.deb.
    Deb,
}

fn main() -> Result<()> {
    let root = repo_root()?;
    match Cli::parse().task {
        Task::Setup => setup(&root),
        Task::BuildEbpf => build_ebpf(&root),
        Task::Build => {
            build_ebpf(&root)?;
            run(cargo(&root).args(["build", "--release", "-p", "jail-userspace"]))
        }
        Task::Test { stress, args } => test(&root, stress, &args),
        Task::Demo => demo(&root),
        Task::Bench => bench(&root),
        Task::Install { prefix, destdir } => install(&root, &prefix, destdir.as_deref(), true),
        Task::Deb => deb(&root).map(|p| eprintln!("xtask: built {}", p.display())),
    }
}

fn repo_root() -> Result<PathBuf> {
    let manifest = env::var_os("CARGO_MANIFEST_DIR").context("run me as `cargo xtask`")?;
    Ok(Path::new(&manifest)
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf())
}

fn tools_bin(root: &Path) -> PathBuf {
    env::var_os("CLAUDE_JAIL_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".tools"))
        .join("bin")
}

/// The pasta the tests and the demo use: the one scripts/setup built. claude-jail runs pasta as
/// root only from a file that root owns in directories only root can write (as it does for its
/// conf); when the checkout is not such a place (a clone under a user's home), the binaries are
/// copied to /run/claude-jail-tools, which is.
fn pasta_for_tests(root: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let built = tools_bin(root).join("pasta");
    let real = std::fs::canonicalize(&built)
        .with_context(|| format!("{}: run `cargo xtask setup`", built.display()))?;
    let trusted = |p: &Path| -> bool {
        let Ok(m) = std::fs::metadata(p) else {
            return false;
        };
        let mode = m.permissions().mode();
        m.uid() == 0 && (mode & 0o022 == 0 || (m.is_dir() && mode & 0o1000 != 0))
    };
    let avx2 = PathBuf::from(format!("{}.avx2", real.display()));
    if real.ancestors().all(trusted) && (!avx2.exists() || trusted(&avx2)) {
        return Ok(built);
    }
    let dir = Path::new("/run/claude-jail-tools");
    std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for (from, to) in [(&real, "passt"), (&avx2, "passt.avx2")] {
        if from.exists() {
            let dest = dir.join(to);
            std::fs::copy(from, &dest)
                .with_context(|| format!("copy {} to {}", from.display(), dest.display()))?;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    let link = dir.join("pasta");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("passt", &link)?;
    eprintln!(
        "xtask: {} is not in directories only root can write; using a copy in {}",
        real.display(),
        dir.display()
    );
    Ok(link)
}

fn setup(root: &Path) -> Result<()> {
    run(Command::new("bash").arg(root.join("scripts/setup")))
}

fn build_ebpf(root: &Path) -> Result<()> {
    run(ebpf_cargo(root)?
        .args(["build", "--locked", "--release", "--target-dir"])
        .arg(root.join("target")))
    .context("building the eBPF object failed; `cargo xtask setup` installs the toolchain it needs")
}

/// Clippy on the eBPF crate, with the clippy of the compiler that builds it (Debian's
/// rust-web-clippy): the host's clippy is another compiler version, and cannot build `core` for
/// bpfel-unknown-none from Debian's library sources. Same target and profile as the build.
fn clippy_ebpf(root: &Path) -> Result<()> {
    run(ebpf_cargo(root)?
        .args(["clippy", "--locked", "--release", "--target-dir"])
        .arg(root.join("target"))
        .args(["--", "-D", "warnings"]))
    .context("clippy on jail-ebpf; `cargo xtask setup` installs rust-web-clippy")
}

/// Debian's cargo in jail-ebpf/: the eBPF crate is built by Debian's cargo and rustc
/// (jail-ebpf/rust-toolchain.toml explains why). The variables that rustup and the outer cargo
/// set for this process would otherwise pick the host toolchain, so they are removed.
fn ebpf_cargo(root: &Path) -> Result<Command> {
    let path = env::join_paths(
        std::iter::once(tools_bin(root))
            .chain(std::iter::once(PathBuf::from("/usr/bin")))
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )?;
    let mut cmd = Command::new("/usr/bin/cargo");
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO",
        "CARGO_MANIFEST_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.current_dir(root.join("jail-ebpf"))
        .env("PATH", path)
        .env("RUSTC", "/usr/bin/rustc")
        .env("RUSTC_BOOTSTRAP", "1");
    Ok(cmd)
}

/// The host cargo (the one running xtask), at the workspace root.
fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

/// The integration tests run programs from target/ as `nobody` inside jails: every directory
/// above the checkout must let others through.
fn check_traversable(root: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for dir in root.ancestors() {
        let mode = std::fs::metadata(dir)
            .with_context(|| format!("stat {}", dir.display()))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            bail!(
                "{} (mode {:o}) does not let other users through, but the tests run programs \
                 from {}/target as `nobody`: clone the repository where others can traverse \
                 (e.g. under /work, /srv or /tmp)",
                dir.display(),
                mode & 0o7777,
                root.display()
            );
        }
    }
    Ok(())
}

fn test(root: &Path, stress: bool, extra: &[String]) -> Result<()> {
    check_traversable(root)?;
    setup(root)?;
    build_ebpf(root)?;
    run(cargo(root).args(["fmt", "--all", "--", "--check"]))
        .context("formatting differs: run `cargo fmt --all`")?;
    // The eBPF crate is a workspace of its own; the host's rustfmt formats it all the same.
    run(cargo(root).args([
        "fmt",
        "--manifest-path",
        "jail-ebpf/Cargo.toml",
        "--",
        "--check",
    ]))
    .context("formatting differs: run `cargo fmt --manifest-path jail-ebpf/Cargo.toml`")?;
    run(cargo(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    clippy_ebpf(root)?;
    // Build everything first, with the network; then run the tests without it.
    run(cargo(root).args(["build", "--workspace", "--bins"]))?;
    run(cargo(root).args(["test", "--workspace", "--no-run"]))?;
    // The package the container test installs on a clean Debian.
    deb(root)?;
    let mut cmd = Command::new("unshare");
    cmd.current_dir(root)
        .args(["--net", "--mount", "--"])
        .arg(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["test", "--workspace", "--offline"])
        .env("CLAUDE_JAIL_BIN", root.join("target/debug/claude-jail"))
        .env("CLAUDE_JAIL_PASTA", pasta_for_tests(root)?);
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    let _hogs = stress.then(CpuHogs::start).transpose()?;
    run(&mut cmd)?;
    unified_pass(root, extra)
}

/// The tests that start jails, again with the unified cgroup layout (cgroup2 mounted at
/// /sys/fs/cgroup itself, as on most hosts) emulated in the tests' private mount namespace: this
/// machine may be hybrid (cgroup2 at /sys/fs/cgroup/unified), and a layout assumption must fail a
/// test. The cgroup2 superblock is the host's, so the cgroups made there are real ones.
const JAIL_TESTS: [&str; 12] = [
    "launch",
    "rootless",
    "contain",
    "enforce",
    "running",
    "lifecycle",
    "layouts",
    "routes",
    "sudo",
    "check",
    "masks18",
    "environment",
];

fn unified_pass(root: &Path, extra: &[String]) -> Result<()> {
    eprintln!("xtask: the tests that start jails, on the unified cgroup layout");
    let mut cmd = Command::new("unshare");
    cmd.current_dir(root)
        .args(["--net", "--mount", "--propagation", "private", "--"])
        .args(["sh", "-c"])
        .arg("umount -R /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec \"$@\"")
        .arg("sh")
        .arg(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["test", "-p", "jail-tests", "--offline"]);
    for t in JAIL_TESTS {
        cmd.args(["--test", t]);
    }
    cmd.env("CLAUDE_JAIL_TEST_CGROUP_LAYOUT", "unified")
        .env("CLAUDE_JAIL_BIN", root.join("target/debug/claude-jail"))
        .env("CLAUDE_JAIL_PASTA", pasta_for_tests(root)?);
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    run(&mut cmd)
}

/// `--stress`: two CPU-bound processes (`sh -c 'while :; do :; done'`, at the tests' priority)
/// for as long as this value lives; dropping it (also when the tests fail, or xtask returns
/// early with an error) kills and reaps them.
struct CpuHogs(Vec<std::process::Child>);

impl CpuHogs {
    fn start() -> Result<Self> {
        let mut hogs = CpuHogs(Vec::new());
        for _ in 0..2 {
            let child = Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdin(std::process::Stdio::null())
                .spawn()
                .context("cannot start a CPU hog for --stress")?;
            hogs.0.push(child);
        }
        let pids: Vec<u32> = hogs.0.iter().map(|c| c.id()).collect();
        eprintln!("xtask: --stress: two CPU hogs running (pids {pids:?})");
        Ok(hogs)
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn demo(root: &Path) -> Result<()> {
    setup(root)?;
    build_ebpf(root)?;
    run(cargo(root).args(["build", "--workspace", "--bins"]))?;
    run(cargo(root).args(["test", "-p", "jail-tests", "--test", "demo", "--no-run"]))?;
    let mut cmd = Command::new("unshare");
    cmd.current_dir(root)
        .args(["--net", "--mount", "--"])
        .arg(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["test", "-p", "jail-tests", "--offline", "--test", "demo"])
        .args(["--", "--nocapture"])
        .env("CLAUDE_JAIL_BIN", root.join("target/debug/claude-jail"))
        .env("CLAUDE_JAIL_PASTA", pasta_for_tests(root)?);
    run(&mut cmd)
}

fn bench(root: &Path) -> Result<()> {
    setup(root)?;
    build_ebpf(root)?;
    run(cargo(root).args(["build", "--release", "-p", "jail-userspace"]))?;
    run(cargo(root).args([
        "test",
        "--release",
        "-p",
        "jail-tests",
        "--test",
        "bench",
        "--no-run",
    ]))?;
    let mut cmd = Command::new("unshare");
    cmd.current_dir(root)
        .args(["--net", "--mount", "--"])
        .arg(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "test",
            "--release",
            "-p",
            "jail-tests",
            "--offline",
            "--test",
            "bench",
        ])
        .args(["--", "--ignored", "--nocapture", "--test-threads", "1"])
        .env("CLAUDE_JAIL_BIN", root.join("target/release/claude-jail"))
        .env("CLAUDE_JAIL_PASTA", pasta_for_tests(root)?);
    run(&mut cmd)
}

/// Builds what an installation carries (release) and puts it under `destdir` (or /) with
/// `prefix`. /etc/claude-sandbox.conf is written only when there is none; `real` (installing
/// into /) also creates the claude-jail group and checks the sudoers rule with visudo.
fn install(root: &Path, prefix: &Path, destdir: Option<&Path>, real: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    setup(root)?;
    build_ebpf(root)?;
    run(cargo(root).args(["build", "--release", "-p", "jail-userspace", "--bins"]))?;
    if !prefix.is_absolute() {
        bail!("--prefix must be absolute, not {}", prefix.display());
    }
    let stage = |p: &Path| -> PathBuf {
        match destdir {
            Some(d) => d.join(p.strip_prefix("/").unwrap_or(p)),
            None => p.to_path_buf(),
        }
    };
    let bindir = prefix.join("bin");
    let libexec = prefix.join("libexec/claude-jail");
    let shimdir = prefix.join("lib/claude-jail/shim");
    let share = prefix.join("share");
    let pasta = libexec.join("pasta");
    let fill = |text: &str| -> String {
        text.replace("@BINDIR@", &bindir.display().to_string())
            .replace("@SHIMDIR@", &shimdir.display().to_string())
            .replace("@PASTA@", &pasta.display().to_string())
    };
    let put = |dest: &Path, bytes: &[u8], mode: u32| -> Result<()> {
        let dest = stage(dest);
        std::fs::create_dir_all(dest.parent().context("no parent")?)?;
        let tmp = dest.with_extension("xtask-new");
        std::fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, &dest).with_context(|| format!("install {}", dest.display()))?;
        eprintln!("xtask: installed {}", dest.display());
        Ok(())
    };
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
    let pkg = root.join("packaging");
    put(
        &bindir.join("claude-jail"),
        &read(&root.join("target/release/claude-jail"))?,
        0o755,
    )?;
    // pasta: the one scripts/setup builds (bookworm's is too old). passt re-executes itself as
    // `<its path>.avx2` on AVX2 CPUs.
    let tools = tools_bin(root);
    put(&pasta, &read(&tools.join("passt"))?, 0o755)?;
    put(
        &libexec.join("pasta.avx2"),
        &read(&tools.join("passt.avx2"))?,
        0o755,
    )?;
    put(
        &shimdir.join("claude"),
        fill(&String::from_utf8(read(&pkg.join("claude"))?)?).as_bytes(),
        0o755,
    )?;
    // Man pages and completions, from the clap definitions.
    let gen = root.join("target/release/docgen-out");
    let _ = std::fs::remove_dir_all(&gen);
    run(Command::new(root.join("target/release/claude-jail-docgen")).arg(&gen))?;
    for entry in std::fs::read_dir(gen.join("man1"))? {
        let entry = entry?;
        put(
            &share.join("man/man1").join(entry.file_name()),
            &read(&entry.path())?,
            0o644,
        )?;
    }
    let comp = gen.join("completions");
    put(
        &share.join("bash-completion/completions/claude-jail"),
        &read(&comp.join("claude-jail.bash"))?,
        0o644,
    )?;
    put(
        &share.join("zsh/vendor-completions/_claude-jail"),
        &read(&comp.join("_claude-jail"))?,
        0o644,
    )?;
    put(
        &share.join("fish/vendor_completions.d/claude-jail.fish"),
        &read(&comp.join("claude-jail.fish"))?,
        0o644,
    )?;
    let example = fill(&String::from_utf8(read(&pkg.join("claude-sandbox.conf"))?)?);
    // Outside the two prefixes claude-jail looks in by itself, the conf names the pasta.
    let example = if ["/usr", "/usr/local"]
        .iter()
        .any(|p| prefix == Path::new(p))
    {
        example
    } else {
        example.replace("#pasta = ", "pasta = ")
    };
    put(
        &share.join("doc/claude-jail/claude-sandbox.conf.example"),
        example.as_bytes(),
        0o644,
    )?;
    let conf = Path::new("/etc/claude-sandbox.conf");
    if stage(conf).exists() {
        eprintln!("xtask: kept the existing {}", stage(conf).display());
    } else if destdir.is_none() || real {
        put(conf, example.as_bytes(), 0o644)?;
    }
    let sudoers = fill(&String::from_utf8(read(&pkg.join("sudoers"))?)?);
    let check = root.join("target/release/sudoers-check");
    std::fs::write(&check, &sudoers)?;
    run(Command::new("visudo").args(["-c", "-q", "-f"]).arg(&check))
        .context("the sudoers rule does not parse")?;
    put(
        Path::new("/etc/sudoers.d/claude-jail"),
        sudoers.as_bytes(),
        0o440,
    )?;
    put(
        Path::new("/etc/profile.d/claude-jail.sh"),
        fill(&String::from_utf8(read(&pkg.join("profile.sh"))?)?).as_bytes(),
        0o644,
    )?;
    if destdir.is_none() {
        let has_group = Command::new("getent")
            .args(["group", "claude-jail"])
            .stdout(std::process::Stdio::null())
            .status()?
            .success();
        if !has_group {
            run(Command::new("groupadd").args(["--system", "claude-jail"]))?;
        }
        eprintln!(
            "xtask: installed. Add users to the claude-jail group (`usermod -aG claude-jail USER`); \
             from their next login `claude` runs in the jail. `claude-jail check` says whether a jail \
             can start here."
        );
    }
    Ok(())
}

/// The Debian package: `install` staged with prefix /usr, plus control and postinst (which makes
/// the claude-jail group and copies the example conf to /etc only when there is none).
fn deb(root: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let version = env!("CARGO_PKG_VERSION");
    let arch = String::from_utf8(
        Command::new("dpkg")
            .arg("--print-architecture")
            .output()
            .context("dpkg --print-architecture")?
            .stdout,
    )?
    .trim()
    .to_string();
    let out = root.join("target/debian");
    let stage = out.join(format!("claude-jail_{version}_{arch}"));
    let _ = std::fs::remove_dir_all(&stage);
    install(root, Path::new("/usr"), Some(&stage), false)?;
    let debian = stage.join("DEBIAN");
    std::fs::create_dir_all(&debian)?;
    std::fs::write(
        debian.join("control"),
        format!(
            "Package: claude-jail\n\
             Version: {version}\n\
             Architecture: {arch}\n\
             Maintainer: claude-jail developers <claude-jail@localhost>\n\
             Depends: libc6, sudo, passwd\n\
             Section: admin\n\
             Priority: optional\n\
             Description: egress jail for AI coding agents\n \
             claude-jail runs Claude Code (or any command) in its own network namespace whose only\n \
             way out is pasta, with eBPF cgroup programs refusing internal destinations.\n"
        ),
    )?;
    std::fs::write(
        debian.join("conffiles"),
        "/etc/sudoers.d/claude-jail
/etc/profile.d/claude-jail.sh
",
    )?;
    std::fs::copy(
        root.join("packaging/debian/postinst"),
        debian.join("postinst"),
    )?;
    std::fs::set_permissions(
        debian.join("postinst"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    let deb = out.join(format!("claude-jail_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&stage)
        .arg(&deb))?;
    Ok(deb)
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(OsStr::to_string_lossy)
            .collect::<Vec<_>>()
            .join(" ")
    );
    eprintln!("xtask: {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed: {status}");
    }
    Ok(())
}
