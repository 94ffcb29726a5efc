//! claude-jail: an egress jail for AI coding agents.
//!
//! The modules follow the responsibilities of a launch, in order:
//! - [`caller`]: who asked (root, or a user through sudo/pkexec) and what that caller may choose;
//! - [`conf`]: reads /etc/claude-sandbox.conf (and the environment that overrides it);
//! - [`hostnet`]: reads the host's addresses, connected subnets and routes;
//! - [`policy`]: compiles both into the map entries the eBPF programs read;
//! - [`preflight`]: whether this host or container can run the jail, and the fix if not;
//! - [`cgroup`]: the jail's cgroup v2 directories;
//! - [`bpf`]: loads, fills, attaches and pins the eBPF programs and maps;
//! - [`nft`]: the same policy as an nftables table, for the rootless mode;
//! - [`user`]: the target user and the command's environment; [`userns`]: the nftables mode's
//!   user namespace, and the launcher's work inside the jail's namespaces;
//! - [`state`]: the registry, pins and logs that reload, status and events find jails by, and
//!   the per-jail lock every writer of a jail takes ([`dirs`]: where they live);
//! - [`netns`], [`pasta`]: the jail's network namespace seen from outside, and its way out;
//! - [`jail`]: inside the jail: its init and the command's privilege drop ([`init_report`]: a
//!   set-up step that fails there, typed, with its fix);
//! - [`mask`]: the broker sockets and cgroup mounts the jail's mount namespace hides;
//! - [`seccomp`]: the jailed command's filter (TIOCSTI, vsock, packet sockets, io_uring);
//! - [`launch`]: `claude-jail run`, in order, with cleanup on every path;
//! - [`supervise`]: the launcher's loop while the command runs (signals, events, host changes);
//! - [`events`], [`reload`], [`status`]: the audit trail, live policy updates, the jail list;
//! - [`check`]: `claude-jail check`, every prerequisite of a launch tried and reported;
//! - [`verify`]: `claude-jail verify`, an auditor's table from inside a fresh jail;
//! - [`gc`]: removing what a launcher that is gone left behind;
//! - [`sys`]: the few system calls that need `unsafe`;
//! - [`cli`]: the command line, and [`exit`], the exit statuses it produces.
//!
//! `unsafe` is denied everywhere but in [`sys`], whose thin wrappers each say why they are sound
//! (a `// SAFETY:` comment, which clippy's `undocumented_unsafe_blocks` requires).
#![deny(unsafe_code)]
pub mod addr;
pub mod bpf;
pub mod caller;
pub mod cgroup;
pub mod check;
pub mod cli;
pub mod conf;
pub mod dirs;
pub mod events;
pub mod exit;
pub mod gc;
pub mod hostnet;
pub mod init_report;
pub mod jail;
pub mod launch;
pub mod mask;
pub mod netns;
pub mod nft;
pub mod pasta;
pub mod policy;
pub mod policy_cmd;
pub mod preflight;
pub mod profile;
pub mod reload;
pub mod seccomp;
pub mod state;
pub mod status;
pub mod supervise;
#[allow(unsafe_code)]
pub mod sys;
pub mod user;
pub mod userns;
pub mod verify;
