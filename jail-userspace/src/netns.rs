//! The jail's network namespace from the outside: the bind-mounted namespace file pasta attaches
//! to, and the jail's resolv.conf.
use std::{fs, io::ErrorKind, net::IpAddr, path::Path};

use anyhow::{Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::pasta::DNS_FORWARDER;

/// Bind-mounts `/proc/<pid>/ns/net` onto `file`. As root, bookworm's and trixie's pasta cannot
/// attach by pid (it drops privileges before opening the namespace); a namespace file works.
pub fn bind_netns(pid: u32, file: &Path) -> Result<()> {
    fs::write(file, b"").with_context(|| format!("create {}", file.display()))?;
    let src = format!("/proc/{pid}/ns/net");
    mount(
        Some(src.as_str()),
        file,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .with_context(|| format!("bind-mount {src} on {}", file.display()))
}

/// Lazily unmounts and removes a namespace file. Unmounting also makes pasta exit ("namespace
/// gone"), should it still be running.
pub fn unbind_netns(file: &Path) -> Result<()> {
    match umount2(file, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e).with_context(|| format!("unmount {}", file.display())),
    }
    match fs::remove_file(file) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", file.display()))
        }
        _ => Ok(()),
    }
}

/// The addresses the jail's network namespace has (pasta copied them from the host), read from
/// a thread that joins the namespace of `pid`.
pub fn own_addresses(pid: u32) -> Result<Vec<IpAddr>> {
    let ns = fs::File::open(format!("/proc/{pid}/ns/net")).context("open the jail's netns")?;
    std::thread::spawn(move || -> Result<Vec<IpAddr>> {
        // setns on this thread only: network namespaces are per thread.
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("join the jail's netns")?;
        let net = crate::hostnet::HostNet::read()?;
        Ok(net.addrs.iter().map(|(a, _)| a.addr()).collect())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("reading the jail's addresses panicked"))?
}

/// The nameservers of a resolv.conf text.
pub fn resolvers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next()) {
                (Some("nameserver"), Some(a)) => a.split('%').next()?.parse().ok(),
                _ => None,
            }
        })
        .collect()
}

/// The jail's resolv.conf: pasta's DNS forwarder as the only nameserver, and the host's `search`,
/// `domain` and `options` lines kept as they are.
pub fn jail_resolv_conf(host: &str) -> String {
    let mut out = format!(
        "# claude-jail: DNS goes through pasta's forwarder to the host's resolver\n\
         nameserver {DNS_FORWARDER}\n"
    );
    for line in host.lines() {
        let first = line.split_whitespace().next();
        if matches!(first, Some("search" | "domain" | "options")) {
            out.push_str(line.trim());
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "# generated\nnameserver 10.0.0.53\nnameserver fe80::1%eth0\n\
                        search lab.example test.example\noptions edns0 timeout:2\n";

    #[test]
    fn resolvers_are_read_with_scope_ids_stripped() {
        assert_eq!(
            resolvers(HOST),
            vec![
                "10.0.0.53".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn jail_resolv_conf_names_only_the_forwarder_and_keeps_search_and_options() {
        let j = jail_resolv_conf(HOST);
        assert_eq!(
            resolvers(&j),
            vec![IpAddr::V4(DNS_FORWARDER)],
            "only the forwarder"
        );
        assert!(j.contains("search lab.example test.example\n"));
        assert!(j.contains("options edns0 timeout:2\n"));
    }
}
