//! The one session helper of the integration tests: `claude-jail run` in the fake world, in the
//! background, its stdout read line by line while the test acts on the jail from outside
//! (reload, host route changes, ^Z), and ended by SIGTERM on drop, also when the test panics.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use crate::{jail::claude_jail, FakeWorld};

/// The lines of `out`, read by a thread of their own, as they come; the channel closes at EOF.
pub fn line_channel(out: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A jailed bash script running in the background; its stdout lines arrive on a channel.
pub struct Session {
    child: Child,
    lines: Receiver<String>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Session {
    /// `claude-jail run --config CONF --user nobody -- bash -c SCRIPT` in `world`.
    pub fn start(world: &FakeWorld, conf: &Path, script: &str) -> Session {
        let conf = conf.display().to_string();
        let mut child = claude_jail(
            world,
            &[
                "run", "--config", &conf, "--user", "nobody", "--", "bash", "-c", script,
            ],
        )
        .unwrap()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let rx = line_channel(child.stdout.take().unwrap());
        let err = child.stderr.take().unwrap();
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                s.push_str(&line);
                s.push('\n');
            }
            s
        });
        Session {
            child,
            lines: rx,
            stderr: Some(stderr),
        }
    }

    /// The launcher's pid (`claude-jail run` itself).
    pub fn launcher(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// Waits (30 s at most) for a line satisfying `pred`; returns the lines seen before it too.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                let hit = pred(&l);
                seen.push(l);
                if hit {
                    return seen;
                }
            }
        }
        panic!(
            "no line '{what}' within 30 s; saw: {:?}",
            &seen[seen.len().saturating_sub(10)..]
        );
    }

    /// The outcome of each label in the next complete round of a probe loop that prints one
    /// `<label> <outcome>` line per label and round, in the order of `labels` (routes.rs's
    /// `probe_script`).
    pub fn round(&self, labels: &[&str]) -> BTreeMap<String, String> {
        let first = format!("{} ", labels[0]);
        let last = format!("{} ", labels[labels.len() - 1]);
        let start = self.wait_for("start of a round", |l| l.starts_with(&first));
        let mut lines = vec![start.last().cloned().unwrap_or_default()];
        lines.extend(self.wait_for("end of a round", |l| l.starts_with(&last)));
        lines
            .iter()
            .filter_map(|l| l.split_once(' '))
            .map(|(label, outcome)| (label.to_string(), outcome.to_string()))
            .collect()
    }

    /// Whether the launcher is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the launcher to exit by itself (30 s at most, a deadline only a failure
    /// reaches); its exit status, the lines not read yet and its whole stderr.
    pub fn wait(mut self) -> (ExitStatus, Vec<String>, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waitpid the launcher") {
                break status;
            }
            // Drop ends the jail.
            assert!(
                Instant::now() < deadline,
                "the launcher did not exit within 30 s"
            );
            thread::sleep(Duration::from_millis(20));
        };
        let (rest, stderr) = self.rest();
        (status, rest, stderr)
    }

    /// SIGTERM to the launcher (forwarded to the command), then the lines not read yet and its
    /// whole stderr.
    pub fn stop(mut self) -> (Vec<String>, String) {
        self.terminate();
        self.rest()
    }

    /// The stdout lines not read yet and the whole stderr, once the launcher has closed both.
    fn rest(&mut self) -> (Vec<String>, String) {
        let rest: Vec<String> = self.lines.iter().collect();
        let stderr = self
            .stderr
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default();
        (rest, stderr)
    }

    /// SIGCONT first: a test may have stopped the launcher (^Z), and a stopped process does not
    /// act on SIGTERM.
    /// Nothing once the launcher is reaped: its pid may be another process's by then.
    fn terminate(&mut self) {
        if !self.running() {
            return;
        }
        let pid = self.launcher();
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A test that panics still ends its jail (the launcher cleans up on SIGTERM).
impl Drop for Session {
    fn drop(&mut self) {
        self.terminate();
    }
}
