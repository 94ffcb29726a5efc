//! The one cgroup guard of the tests that attach the jail's programs themselves (enforce, bench,
//! loader): a cgroup of the test's own under the cgroup2 mount, with a private bpffs for the
//! pins when the test attaches programs, and everything removed on drop, also when the test
//! panics: the cgroup's processes killed, the pins removed, the cgroup removed, the bpffs
//! unmounted.
use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use claude_jail::{bpf, cgroup::Cgroup};

static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct TestCgroup {
    cgroup: Cgroup,
    bpffs: Option<PathBuf>,
}

impl TestCgroup {
    /// A new cgroup `claude-jail-TAG-PID-N` directly under the cgroup2 mount (N counts within
    /// the test process, so parallel tests never share one), without a bpffs.
    pub fn create(tag: &str) -> TestCgroup {
        let root = claude_jail::cgroup::cgroup2_mount().expect("a cgroup2 mount");
        let cgroup = Cgroup::create(&root.join(format!("claude-jail-{tag}-{}", unique())))
            .expect("create the test cgroup");
        TestCgroup {
            cgroup,
            bpffs: None,
        }
    }

    /// [`TestCgroup::create`] plus a private bpffs (a temporary directory) whose `jail`
    /// directory, [`TestCgroup::pins`], takes the pins. Make it before a fake world: the world's
    /// host mount namespace is a copy of the test's, so it then sees the bpffs too.
    pub fn with_bpffs(tag: &str) -> TestCgroup {
        let mut cg = TestCgroup::create(tag);
        let dir = std::env::temp_dir().join(format!("cj-{tag}-bpffs-{}", unique()));
        // Recorded first, so that drop removes the directory if the mount fails.
        cg.bpffs = Some(dir.clone());
        bpf::ensure_bpffs(&dir).expect("mount a private bpffs");
        cg
    }

    /// A cgroup `name` below `parent` (a [`TestCgroup`]'s path, or a descendant), without a
    /// bpffs. Drop it before its parent.
    pub fn child(parent: &Path, name: &str) -> TestCgroup {
        let cgroup = Cgroup::create(&parent.join(name)).expect("create a child cgroup");
        TestCgroup {
            cgroup,
            bpffs: None,
        }
    }

    pub fn path(&self) -> &Path {
        self.cgroup.path()
    }

    /// Where the programs' pins go (`jail` in the private bpffs).
    pub fn pins(&self) -> PathBuf {
        self.bpffs
            .as_ref()
            .expect("a TestCgroup made with_bpffs")
            .join("jail")
    }
}

/// `PID-N`: unique among the tests of every process running at once.
fn unique() -> String {
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    format!("{}-{n}", std::process::id())
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = self.cgroup.kill_all(Duration::from_secs(5));
        if let Some(dir) = &self.bpffs {
            let pins = dir.join("jail");
            if let Err(e) = bpf::unpin(&pins) {
                eprintln!("test cgroup: unpin {}: {e:#}", pins.display());
            }
        }
        if let Err(e) = self.cgroup.remove() {
            eprintln!("test cgroup: remove {}: {e}", self.cgroup.path().display());
        }
        if let Some(dir) = &self.bpffs {
            let _ = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(dir);
        }
    }
}
