//! Packet capture on one interface of a namespace with an AF_PACKET socket: sees every IP packet
//! that arrives there, whatever socket type sent it (raw SYNs, ICMP echo, UDP), so a test can
//! show that a fake host received nothing at all, not just that no server accepted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use nix::errno::Errno;
use nix::sys::socket::{
    recvfrom, setsockopt, socket, sockopt, AddressFamily, LinkAddr, SockFlag, SockProtocol,
    SockType,
};
use nix::sys::time::TimeVal;

use crate::netns::Netns;

/// `sll_pkttype` of a packet this host sent (we only want what arrived).
const PACKET_OUTGOING: u8 = 4;
/// How long [`Capture::wait_for`] waits for an expected packet: only a failure waits this long.
pub const WAIT_MAX: Duration = Duration::from_secs(20);
/// How long [`Capture::stop`] may spend draining packets already queued.
const DRAIN_MAX: Duration = Duration::from_secs(2);

/// One IP packet seen arriving on the captured interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol / IPv6 next header (1 ICMP, 6 TCP, 17 UDP, 58 ICMPv6).
    pub protocol: u8,
    /// Destination port for TCP and UDP (first header only).
    pub dst_port: Option<u16>,
    pub len: usize,
}

/// A running capture; [`Capture::stop`] ends it and returns everything seen.
pub struct Capture {
    packets: Arc<Mutex<Vec<Packet>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Capture {
    /// Starts capturing packets arriving on interface `ifname` of `ns`. Returns once the socket
    /// is open: every packet arriving after this call is counted.
    pub fn start(ns: &Netns, ifname: &str) -> Result<Capture> {
        let packets = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let ifname = ifname.to_owned();
        let (p2, s2) = (packets.clone(), stop.clone());
        let thread = ns.spawn("fake-capture", move || {
            let opened = (|| -> Result<_> {
                let fd = socket(
                    AddressFamily::Packet,
                    SockType::Datagram,
                    SockFlag::SOCK_CLOEXEC,
                    SockProtocol::EthAll,
                )
                .context("socket(AF_PACKET)")?;
                let ifindex = nix::net::if_::if_nametoindex(ifname.as_str())
                    .with_context(|| format!("no interface {ifname}"))?
                    as usize;
                setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 20_000))?;
                Ok((fd, ifindex))
            })();
            let (fd, ifindex) = match opened {
                Ok(v) => {
                    let _ = ready_tx.send(Ok(()));
                    v
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            let mut buf = vec![0u8; 65536];
            let mut drain_until: Option<Instant> = None;
            loop {
                match recvfrom::<LinkAddr>(fd.as_raw_fd(), &mut buf) {
                    Ok((n, Some(from))) => {
                        if from.ifindex() == ifindex && from.pkttype() != PACKET_OUTGOING {
                            if let Some(p) = parse_ip(&buf[..n]) {
                                p2.lock().unwrap_or_else(|e| e.into_inner()).push(p);
                            }
                        }
                    }
                    Ok((_, None)) => {}
                    Err(Errno::EAGAIN | Errno::EINTR) => {
                        // Nothing queued: stop now if asked to.
                        if s2.load(Ordering::SeqCst) {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(e).context("recvfrom(AF_PACKET)"),
                }
                if s2.load(Ordering::SeqCst) {
                    let until = *drain_until.get_or_insert_with(|| Instant::now() + DRAIN_MAX);
                    if Instant::now() > until {
                        return Ok(());
                    }
                }
            }
        })?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("capture thread died"))??;
        Ok(Capture {
            packets,
            stop,
            thread: Some(thread),
        })
    }

    /// The packets seen so far.
    pub fn packets(&self) -> Vec<Packet> {
        self.packets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until the capture has seen `n` packets satisfying `pred` (or [`WAIT_MAX`] passed);
    /// true if it did. For positive controls: a packet that a sender's call has handed to the
    /// kernel crosses the veth pair in the kernel's own time (the receive softirq), which on a
    /// busy machine can be after [`Capture::stop`]'s short drain.
    pub fn wait_for(&self, n: usize, pred: impl Fn(&Packet) -> bool) -> bool {
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            if self.packets().iter().filter(|p| pred(p)).count() >= n {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the capture after draining what is queued, and returns every packet seen.
    pub fn stop(mut self) -> Result<Vec<Packet>> {
        self.finish()?;
        Ok(self.packets())
    }

    fn finish(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| anyhow!("capture thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Parses the IPv4 or IPv6 header at the start of `p`.
fn parse_ip(p: &[u8]) -> Option<Packet> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let ihl = ((p[0] & 0x0f) as usize) * 4;
            let protocol = p[9];
            let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]).into();
            let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]).into();
            Some(Packet {
                src,
                dst,
                protocol,
                dst_port: port(protocol, p.get(ihl..)?),
                len: p.len(),
            })
        }
        6 if p.len() >= 40 => {
            let protocol = p[6];
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).ok()?).into();
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?).into();
            Some(Packet {
                src,
                dst,
                protocol,
                dst_port: port(protocol, &p[40..]),
                len: p.len(),
            })
        }
        _ => None,
    }
}

fn port(protocol: u8, l4: &[u8]) -> Option<u16> {
    match protocol {
        6 | 17 if l4.len() >= 4 => Some(u16::from_be_bytes([l4[2], l4[3]])),
        _ => None,
    }
}
