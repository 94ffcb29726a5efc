//! The nftables mode's user namespace, seen from the launcher.
//!
//! In this mode the jail's init is cloned into a new user namespace too, which owns the jail's
//! network, mount and PID namespaces. Its map holds the target user's own ids only, each mapped
//! to itself: the command runs inside under the uid it has outside, never as uid 0 of the
//! namespace, so an execve grants it nothing.
//!
//! The launcher (or a later `reload`) must act on the jail's network namespace: install and
//! replace its nftables ruleset, read its addresses, open its log socket. A process that owns a
//! user namespace (it made it, from the parent namespace, under the same euid) holds every
//! capability in it, but joining the network namespace needs capabilities in the caller's own
//! namespace as well, which a normal user lacks. So such work runs in a short-lived child that
//! first joins the jail's user namespace (allowed: the owner holds CAP_SYS_ADMIN there), then its
//! network namespace; its answer, and any descriptor it opened there, come back over a socket
//! pair. A descriptor opened in the namespace keeps working from the launcher: a netlink socket's
//! namespace is fixed when it is made, and the kernel checks the capabilities of whoever made it
//! and of whoever sends on it, both over the jail's user namespace.
use std::{
    fs::{self, File},
    io::{IoSlice, IoSliceMut},
    os::fd::{AsRawFd, OwnedFd},
};

use anyhow::{anyhow, bail, Context, Result};
use nix::{
    sched::{setns, CloneFlags},
    sys::{
        socket::{
            recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned,
            MsgFlags, SockFlag, SockType,
        },
        wait::{waitpid, WaitStatus},
    },
    unistd::{getuid, Pid},
};
use serde::{de::DeserializeOwned, Serialize};

/// The maps of the jail's user namespace for a command running as `uid`/`gid` with
/// supplementary `groups`. An unprivileged launcher may map only its own ids and must deny
/// setgroups (its supplementary groups stay what they are: the user's own). Root maps the
/// user's groups too and allows setgroups, so that the command sheds root's groups as in the
/// eBPF mode.
pub fn write_maps(pid: Pid, uid: u32, gid: u32, groups: &[u32]) -> Result<()> {
    let proc = format!("/proc/{pid}");
    let write = |file: &str, text: &str| {
        fs::write(format!("{proc}/{file}"), text)
            .with_context(|| format!("write {proc}/{file} ({})", text.trim_end()))
    };
    write("uid_map", &format!("{uid} {uid} 1\n"))?;
    if getuid().is_root() {
        let mut gids = vec![gid];
        gids.extend(groups.iter().copied().filter(|&g| g != gid));
        gids.sort_unstable();
        gids.dedup();
        let map: String = gids.iter().map(|g| format!("{g} {g} 1\n")).collect();
        write("gid_map", &map)
    } else {
        write("setgroups", "deny")?;
        write("gid_map", &format!("{gid} {gid} 1\n"))
    }
}

/// Whether the calling process may call setgroups (false in a user namespace whose maps an
/// unprivileged launcher wrote).
pub fn setgroups_allowed() -> bool {
    fs::read_to_string("/proc/self/setgroups").map_or(true, |s| s.trim() != "deny")
}

/// The jail's user and network namespaces, opened by the launcher while the init still lets it:
/// once the init has its go it is not dumpable, and its /proc files are root's
/// ([`crate::jail`]). Kept for the jail's life, for every later change of its table.
pub struct JailNs {
    user: File,
    net: File,
}

impl JailNs {
    pub fn open(pid: Pid) -> Result<JailNs> {
        let open = |ns: &str| {
            File::open(format!("/proc/{pid}/ns/{ns}"))
                .with_context(|| format!("open the jail's {ns} namespace"))
        };
        Ok(JailNs {
            user: open("user")?,
            net: open("net")?,
        })
    }
}

/// What a child in the jail's namespaces sends back: its answer, and a descriptor if it opened
/// one.
pub struct Answer<T> {
    pub value: T,
    pub fd: Option<OwnedFd>,
}

/// Runs `job` in a child that joined the jail's user and network namespaces `ns`, and returns
/// its answer. The caller must be single-threaded and own that user namespace.
pub fn in_jail<T, F>(ns: &JailNs, job: F) -> Result<Answer<T>>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Result<(T, Option<OwnedFd>)>,
{
    let (user, net) = (&ns.user, &ns.net);
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("socketpair")?;
    let mut job = Some(job);
    let child = crate::sys::clone_process(CloneFlags::empty(), || {
        let job = job.take().expect("runs once");
        let result = setns(user, CloneFlags::CLONE_NEWUSER)
            .context("join the jail's user namespace")
            .and_then(|()| {
                setns(net, CloneFlags::CLONE_NEWNET).context("join the jail's network namespace")
            })
            .and_then(|()| job());
        let (msg, fd) = match result {
            Ok((v, fd)) => (serde_json::to_vec(&Ok::<T, String>(v)), fd),
            Err(e) => (
                serde_json::to_vec(&Err::<T, String>(format!("{e:#}"))),
                None,
            ),
        };
        let Ok(msg) = msg else { return 1 };
        let fds: Vec<i32> = fd.iter().map(|f| f.as_raw_fd()).collect();
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
        match sendmsg::<()>(
            theirs.as_raw_fd(),
            &[IoSlice::new(&msg)],
            cmsgs,
            MsgFlags::empty(),
            None,
        ) {
            Ok(_) => 0,
            Err(_) => 1,
        }
    })
    .context("start a child in the jail's namespaces")?;
    drop(theirs);
    let mut buf = vec![0u8; 1 << 20];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let received = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        recvmsg::<()>(
            ours.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map(|m| {
            let fd = m.cmsgs().ok().and_then(|mut c| {
                c.find_map(|c| match c {
                    ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                    _ => None,
                })
            });
            (m.bytes, fd)
        })
    };
    let status = waitpid(child, None).context("wait for the child in the jail's namespaces")?;
    let (len, fd) = received.context("read the answer from the jail's namespaces")?;
    let fd = fd.map(crate::sys::own_received_fd);
    if len == 0 {
        bail!("the child in the jail's namespaces gave no answer ({status:?})");
    }
    if !matches!(status, WaitStatus::Exited(_, 0)) {
        bail!("the child in the jail's namespaces failed ({status:?})");
    }
    let answer: std::result::Result<T, String> = serde_json::from_slice(&buf[..len])
        .context("decode the answer from the jail's namespaces")?;
    let value = answer.map_err(|e| anyhow!(e))?;
    Ok(Answer { value, fd })
}
