//! The refusals, as nfnetlink_log delivers them: every packet a deny rule rejects is logged to
//! the ruleset's nflog group first, with its headers; [`LogReader`] reads the destination,
//! protocol and port from them.
use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    time::Duration,
};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::{
    nflog::{config_request, ConfigCmd, ConfigMode, ConfigNla, PacketNla, ULogMessage},
    NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use nix::{
    errno::Errno,
    sys::{
        socket::{recv, setsockopt, sockopt, MsgFlags},
        time::TimeVal,
    },
};

use super::{netlink, NftError};

/// Bytes of each refused packet copied to the reader: an IPv6 header, a few extension headers
/// and the ports.
const COPY_RANGE: u32 = 160;

/// One refused packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoggedPacket {
    /// The destination address on the wire (an IPv6 address that carries an IPv4 address is
    /// given as it is: `Policy::decide` judges it as the program did).
    pub dst: IpAddr,
    /// The transport protocol (IPPROTO_*), after any IPv6 extension headers.
    pub proto: u8,
    /// The TCP or UDP destination port; 0 for other protocols and non-first fragments, as
    /// `Policy::decide` takes it.
    pub port: u16,
    /// The uid of the sending socket's owner, as the reader's user namespace sees it (absent
    /// for a packet without a socket).
    pub uid: Option<u32>,
}

/// Reads the refusals of one network namespace's claude-jail table.
#[derive(Debug)]
pub struct LogReader {
    sock: OwnedFd,
    buf: Vec<u8>,
    queue: VecDeque<LoggedPacket>,
}

impl AsFd for LogReader {
    /// For poll(2): readable when refusals are waiting.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl LogReader {
    /// Binds nflog group `group` in the calling thread's network namespace (needs
    /// CAP_NET_ADMIN over it, as [`super::install`] does). One reader per group and namespace:
    /// a second bind of the same group fails with EBUSY.
    pub fn open(group: u16) -> Result<LogReader, NftError> {
        let sock = netlink::open_socket()?;
        let config = |nlas: Vec<ConfigNla>| {
            let m = config_request(NetfilterProtoFamily::Unspec, group, nlas);
            (format!("binding nflog group {group}"), m)
        };
        // Each refusal at once (a queue threshold of one packet), its first COPY_RANGE bytes.
        netlink::transact(
            sock.as_fd(),
            vec![
                config(vec![ConfigCmd::Bind.into()]),
                config(vec![
                    ConfigMode::new_packet(COPY_RANGE).into(),
                    ConfigNla::QThresh(1),
                ]),
            ],
            false,
        )?;
        Ok(LogReader {
            sock,
            buf: vec![0; 1 << 16],
            queue: VecDeque::new(),
        })
    }

    /// The socket, to hand to another process (opened in the jail's namespaces by a child of
    /// the launcher, [`crate::userns::in_jail`]).
    pub fn into_fd(self) -> OwnedFd {
        self.sock
    }

    /// A reader over a socket [`LogReader::open`] bound, handed over by [`LogReader::into_fd`].
    pub fn from_fd(sock: OwnedFd) -> LogReader {
        LogReader {
            sock,
            buf: vec![0; 1 << 16],
            queue: VecDeque::new(),
        }
    }

    /// The next refusal, waiting at most `timeout` (`None`: until one comes). `Ok(None)` when
    /// the time ran out. An `ENOBUFS` error means the kernel dropped refusals because they
    /// were not read fast enough; the reader stays usable.
    pub fn next(&mut self, timeout: Option<Duration>) -> Result<Option<LoggedPacket>, NftError> {
        if let Some(p) = self.queue.pop_front() {
            return Ok(Some(p));
        }
        // A zero timeval blocks forever: never pass zero for a finite wait.
        let tv = timeout.map_or(TimeVal::new(0, 0), |t| {
            let t = t.max(Duration::from_micros(1));
            TimeVal::new(t.as_secs() as _, t.subsec_micros() as _)
        });
        setsockopt(&self.sock, sockopt::ReceiveTimeout, &tv)
            .map_err(|e| NftError::io("setting the nflog socket's timeout", e))?;
        loop {
            let len = match recv(self.sock.as_raw_fd(), &mut self.buf, MsgFlags::empty()) {
                Ok(l) => l,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(None),
                Err(e) => return Err(NftError::io("reading refusals from nflog", e)),
            };
            let mut off = 0;
            while off + 16 <= len {
                let mlen = u32::from_ne_bytes(self.buf[off..off + 4].try_into().unwrap()) as usize;
                if mlen < 16 || off + mlen > len {
                    break;
                }
                if let Some(p) = packet_of(&self.buf[off..off + mlen]) {
                    self.queue.push_back(p);
                }
                off += (mlen + 3) & !3;
            }
            if let Some(p) = self.queue.pop_front() {
                return Ok(Some(p));
            }
        }
    }
}

/// The refused packet in one nflog message, if it is one.
fn packet_of(msg: &[u8]) -> Option<LoggedPacket> {
    let m = NetlinkMessage::<NetfilterMessage>::deserialize(msg).ok()?;
    let NetlinkPayload::InnerMessage(NetfilterMessage {
        inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
        ..
    }) = m.payload
    else {
        return None;
    };
    let uid = nlas.iter().find_map(|n| match n {
        PacketNla::Uid(u) => Some(*u),
        _ => None,
    });
    let p = nlas.iter().find_map(|n| match n {
        PacketNla::Payload(p) => parse_packet(p),
        _ => None,
    })?;
    Some(LoggedPacket { uid, ..p })
}

const TCP: u8 = 6;
const UDP: u8 = 17;

/// Destination, protocol and port of an IPv4 or IPv6 packet (from its network header on).
pub(crate) fn parse_packet(p: &[u8]) -> Option<LoggedPacket> {
    let port_at = |proto: u8, at: usize| -> u16 {
        match (proto, p.get(at + 2..at + 4)) {
            (TCP | UDP, Some(b)) => u16::from_be_bytes([b[0], b[1]]),
            _ => 0,
        }
    };
    match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let dst: [u8; 4] = p.get(16..20)?.try_into().ok()?;
            let proto = *p.get(9)?;
            let frag_offset = u16::from_be_bytes([*p.get(6)?, *p.get(7)?]) & 0x1fff;
            let port = if frag_offset == 0 && ihl >= 20 {
                port_at(proto, ihl)
            } else {
                0
            };
            Some(LoggedPacket {
                dst: IpAddr::V4(Ipv4Addr::from(dst)),
                proto,
                port,
                uid: None,
            })
        }
        6 => {
            let dst: [u8; 16] = p.get(24..40)?.try_into().ok()?;
            let mut next = *p.get(6)?;
            let mut at = 40;
            let mut first_fragment = true;
            // Hop-by-hop, routing, fragment, destination options, AH: skip to the transport
            // header, as nftables' `meta l4proto` and `th` do.
            for _ in 0..8 {
                let (len, nh) = match next {
                    0 | 43 | 60 => (usize::from(*p.get(at + 1)?) * 8 + 8, *p.get(at)?),
                    44 => {
                        let off = u16::from_be_bytes([*p.get(at + 2)?, *p.get(at + 3)?]) >> 3;
                        first_fragment = off == 0;
                        (8, *p.get(at)?)
                    }
                    51 => (usize::from(*p.get(at + 1)?) * 4 + 8, *p.get(at)?),
                    _ => break,
                };
                next = nh;
                at += len;
            }
            Some(LoggedPacket {
                dst: IpAddr::V6(Ipv6Addr::from(dst)),
                proto: next,
                port: if first_fragment { port_at(next, at) } else { 0 },
                uid: None,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipv4_tcp_udp_icmp_and_fragments() {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[9] = TCP;
        p[16..20].copy_from_slice(&[10, 0, 0, 5]);
        p[22..24].copy_from_slice(&443u16.to_be_bytes());
        let got = parse_packet(&p).unwrap();
        assert_eq!(
            got,
            LoggedPacket {
                dst: "10.0.0.5".parse().unwrap(),
                proto: TCP,
                port: 443,
                uid: None,
            }
        );
        p[9] = 1; // ICMP: no port
        assert_eq!(parse_packet(&p).unwrap().port, 0);
        p[9] = UDP;
        p[6..8].copy_from_slice(&0x0010u16.to_be_bytes()); // a non-first fragment
        assert_eq!(parse_packet(&p).unwrap().port, 0);
        // Options (IHL 6): the port moves by 4 bytes.
        let mut q = vec![0u8; 32];
        q[0] = 0x46;
        q[9] = UDP;
        q[26..28].copy_from_slice(&53u16.to_be_bytes());
        assert_eq!(parse_packet(&q).unwrap().port, 53);
        assert_eq!(parse_packet(&p[..10]), None, "truncated");
    }

    #[test]
    fn parses_ipv6_with_extension_headers() {
        let mut p = vec![0u8; 40 + 8 + 8 + 8];
        p[0] = 0x60;
        p[6] = 0; // hop-by-hop
        p[24..40].copy_from_slice(&"64:ff9b::a00:5".parse::<Ipv6Addr>().unwrap().octets());
        p[40] = 44; // then a fragment header
        p[41] = 0;
        p[48] = TCP; // then TCP
        p[58..60].copy_from_slice(&22u16.to_be_bytes());
        let got = parse_packet(&p).unwrap();
        assert_eq!(got.dst, "64:ff9b::a00:5".parse::<IpAddr>().unwrap());
        assert_eq!((got.proto, got.port), (TCP, 22));
        p[50..52].copy_from_slice(&(5u16 << 3).to_be_bytes()); // offset 5: not the first
        assert_eq!(parse_packet(&p).unwrap().port, 0);
    }
}
