//! claude-jail: an egress jail for AI coding agents.
//!
//! The modules follow the responsibilities of a launch, in order:
//! - [`conf`]: reads /etc/claude-sandbox.conf (and the environment that overrides it);
//! - [`hostnet`]: reads the host's addresses, connected subnets and routes;
//! - [`policy`]: compiles both into the map entries the eBPF programs read;
//! - [`cgroup`]: the jail's cgroup v2 directories;
//! - [`bpf`]: loads, fills, attaches and pins the eBPF programs and maps;
//! - [`cli`]: the command line.
pub mod bpf;
pub mod cgroup;
pub mod cli;
pub mod conf;
pub mod hostnet;
pub mod policy;
pub mod policy_cmd;
