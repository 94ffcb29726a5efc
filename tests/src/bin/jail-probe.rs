//! jail-probe: one network attempt, run by the enforcement tests inside the jail cgroup (and the
//! fake world's host network namespace).
//!
//! ```text
//! jail-probe OP DEST [ARGS]
//!   tcp DEST              connect, read the server's first line
//!   udp-connect DEST      connect, send, read the reply
//!   udp-sendto DEST       sendto on an unconnected socket, read the reply
//!   sendmmsg DEST...      one sendmmsg call, one datagram to each DEST (same family)
//!   mptcp DEST            like tcp, on an IPPROTO_MPTCP socket (`unsupported` without MPTCP)
//!   tfo DEST              sendto(MSG_FASTOPEN) on a fresh TCP socket, read the first line
//!   uring-connect DEST    IORING_OP_CONNECT, read the first line
//!   raw-syn DEST SRC      SOCK_RAW IPPROTO_TCP: a crafted SYN (SRC: the source address, for the
//!                         checksum)
//!   raw-udp DEST          SOCK_RAW IPPROTO_UDP: a crafted datagram (IPv4 or IPv6)
//!   raw-udp-ext DEST hop|dst
//!                         SOCK_RAW IPPROTO_UDP over IPv6 with a real extension header before
//!                         the UDP header (sticky IPV6_HOPOPTS or IPV6_DSTOPTS, one PadN option)
//!   raw-frag DEST udp|tcp [SRC]
//!                         IPPROTO_RAW: a non-first fragment (offset 1480, no more fragments) of
//!                         that protocol, IPv4 or IPv6 (a fragment header; SRC: its source
//!                         address, which the kernel does not fill for IPv6); its payload holds
//!                         DEST's port where a first fragment's transport header would
//!   udp-srr DEST HOP lsrr|ssrr
//!                         an ordinary UDP socket with IP_OPTIONS source route via HOP: the
//!                         datagram to DEST leaves addressed to HOP (the first hop); prints
//!                         `ok sent` without waiting for a reply, `err IP_OPTIONS ERRNO` when
//!                         the option is refused (source routes need CAP_NET_RAW)
//!   raw-ihl0 DEST         IPPROTO_RAW: a malformed IPv4 header (IHL 0, protocol UDP) whose
//!                         total-length field holds DEST's port, where a UDP port would be
//!                         read at offset IHL*4 + 2
//!   raw-version DEST DECOY
//!                         IPPROTO_RAW: a header of the other version's number (an IPv4 packet
//!                         saying 6, an IPv6 packet saying 4) where that version would find
//!                         DECOY (an address of the other family) as its destination
//!   raw-v6-truncated DEST IPPROTO_RAW (IPv6): a bare IPv6 header that announces a hop-by-hop
//!                         extension header and ends there
//!   icmp-echo DEST        SOCK_RAW IPPROTO_ICMP: an echo request, then wait for the reply
//!   ping DEST             SOCK_DGRAM IPPROTO_ICMP (unconnected sendto), wait for the reply
//!   verdicts tcp:DEST|udp:DEST...
//!                         the connect verdict for each (non-blocking TCP connect, UDP connect):
//!                         `ok V,V,...` with V `pass` or the errno name
//!   raw-verdicts tcp:DEST|udp:DEST...
//!                         the packet backstop's verdict for each: one raw TCP SYN or UDP
//!                         header per case (sendto fails with EPERM when the backstop drops it)
//!   tamper CGROUP PINDIR MAP_ID LINK_CONNECT4_ID LINK_EGRESS_ID PROG_CONNECT6_ID
//!                         what an unprivileged process could try against the jail (open its
//!                         maps and links, query its programs, detach them, leave the cgroup):
//!                         each attempt prints NAME=ERRNO, or NAME=SUCCEEDED
//! ```
//! DEST is `a.b.c.d:port` or `[v6]:port` (raw and ICMP ops ignore or use the port as noted).
//! Prints one line, `ok <detail>` or `err <ERRNO_NAME>` (`unsupported ...` when the kernel
//! refuses io_uring), and exits 0; exit 2 on a usage error.
use std::{
    ffi::CString,
    io::{self, BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

use nix::sys::socket::{SockaddrLike, SockaddrStorage};

const TIMEOUT: Duration = Duration::from_secs(3);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (op, rest) = match args.split_first() {
        Some((op, rest)) if !rest.is_empty() => (op.as_str(), rest),
        _ => usage("missing OP or DEST"),
    };
    let dest = || -> SocketAddr {
        rest[0]
            .parse()
            .unwrap_or_else(|_| usage(&format!("bad DEST {}", rest[0])))
    };
    let result = match op {
        "tcp" => tcp(dest()),
        "udp-connect" => udp(dest(), true),
        "udp-sendto" => udp(dest(), false),
        "sendmmsg" => {
            let dests: Vec<SocketAddr> = rest
                .iter()
                .map(|d| {
                    d.parse()
                        .unwrap_or_else(|_| usage(&format!("bad DEST {d}")))
                })
                .collect();
            sendmmsg(&dests)
        }
        "mptcp" => mptcp(dest()),
        "tfo" => tfo(dest()),
        "uring-connect" => uring_connect(dest()),
        "raw-syn" => {
            let src: Ipv4Addr = rest
                .get(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| usage("raw-syn needs DEST SRC (IPv4)"));
            raw_syn(v4(dest()), src)
        }
        "raw-udp" => raw_udp(dest()),
        "raw-udp-ext" => match (dest(), rest.get(1).map(String::as_str)) {
            (SocketAddr::V6(d), Some("hop")) => raw_udp_ext(d, libc::IPV6_HOPOPTS),
            (SocketAddr::V6(d), Some("dst")) => raw_udp_ext(d, libc::IPV6_DSTOPTS),
            _ => usage("raw-udp-ext needs an IPv6 DEST and hop|dst"),
        },
        "raw-frag" => {
            let src: Option<std::net::IpAddr> = rest
                .get(2)
                .map(|s| s.parse().unwrap_or_else(|_| usage(&format!("bad SRC {s}"))));
            match rest.get(1).map(String::as_str) {
                Some("udp") => raw_frag(dest(), libc::IPPROTO_UDP as u8, src),
                Some("tcp") => raw_frag(dest(), libc::IPPROTO_TCP as u8, src),
                _ => usage("raw-frag needs DEST udp|tcp [SRC]"),
            }
        }
        "udp-srr" => {
            let hop: Ipv4Addr = rest
                .get(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| usage("udp-srr needs DEST HOP lsrr|ssrr"));
            let strict = match rest.get(2).map(String::as_str) {
                Some("lsrr") => false,
                Some("ssrr") => true,
                _ => usage("udp-srr needs DEST HOP lsrr|ssrr"),
            };
            udp_srr(v4(dest()), hop, strict)
        }
        "raw-ihl0" => raw_ihl0(v4(dest())),
        "raw-version" => {
            let decoy: std::net::IpAddr = rest
                .get(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| usage("raw-version needs DEST DECOY"));
            raw_version(dest(), decoy)
        }
        "raw-v6-truncated" => match dest() {
            SocketAddr::V6(d) => raw_v6_truncated(d),
            SocketAddr::V4(_) => usage("raw-v6-truncated is IPv6 only"),
        },
        "icmp-echo" => icmp(v4(dest()), libc::SOCK_RAW),
        "ping" => icmp(v4(dest()), libc::SOCK_DGRAM),
        "verdicts" => Ok(rest
            .iter()
            .map(|c| verdict(c))
            .collect::<Vec<_>>()
            .join(",")),
        "raw-verdicts" => Ok(rest
            .iter()
            .map(|c| raw_verdict(c))
            .collect::<Vec<_>>()
            .join(",")),
        "tamper" => match rest {
            [cgroup, pins, ids @ ..] if ids.len() == 4 => {
                let id = |i: usize| -> u32 {
                    ids[i]
                        .parse()
                        .unwrap_or_else(|_| usage(&format!("bad id {}", ids[i])))
                };
                let ids = TamperIds {
                    map: id(0),
                    link_connect4: id(1),
                    link_egress: id(2),
                    prog_connect6: id(3),
                };
                tamper(cgroup, pins, ids)
            }
            _ => usage(
                "tamper CGROUP PINDIR MAP_ID LINK_CONNECT4_ID LINK_EGRESS_ID PROG_CONNECT6_ID",
            ),
        },
        _ => usage(&format!("unknown OP {op}")),
    };
    match result {
        Ok(detail) => println!("ok {detail}"),
        Err(e) => match e.raw_os_error() {
            Some(n) => println!("err {}", errno_name(n)),
            None => println!("err {e}"),
        },
    }
}

fn usage(why: &str) -> ! {
    eprintln!("jail-probe: {why}\nusage: jail-probe OP DEST [ARGS] (see the source's header)");
    std::process::exit(2)
}

fn v4(a: SocketAddr) -> std::net::SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => usage("this OP is IPv4 only"),
    }
}

fn errno_name(n: i32) -> String {
    nix::errno::Errno::from_raw(n)
        .to_string()
        .split(':')
        .next()
        .unwrap_or("E?")
        .to_owned()
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}
fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// setsockopt with a byte buffer (an int option: `&v.to_ne_bytes()`).
fn setsockopt(fd: RawFd, level: libc::c_int, name: libc::c_int, val: &[u8]) -> io::Result<()> {
    // SAFETY: a pointer to a live buffer and its length; the kernel only reads it.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            val.as_ptr().cast(),
            val.len() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn first_line(s: TcpStream) -> io::Result<String> {
    s.set_read_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

fn tcp(dest: SocketAddr) -> io::Result<String> {
    first_line(TcpStream::connect_timeout(&dest, TIMEOUT)?)
}

fn udp(dest: SocketAddr, connect: bool) -> io::Result<String> {
    let any: SocketAddr = if dest.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let s = UdpSocket::bind(any)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    if connect {
        s.connect(dest)?;
        s.send(b"probe\n")?;
    } else {
        s.send_to(b"probe\n", dest)?;
    }
    let mut buf = [0u8; 2048];
    let n = s.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned())
}

fn sockaddr(a: SocketAddr) -> SockaddrStorage {
    match a {
        SocketAddr::V4(a) => SockaddrStorage::from(a),
        SocketAddr::V6(a) => SockaddrStorage::from(a),
    }
}

fn socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with integer arguments; the new descriptor is owned at once.
    let fd = cvt(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn family(a: &SocketAddr) -> libc::c_int {
    if a.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

/// One sendmmsg(2) with a datagram to each destination: sendmsg4/6 runs once per message.
fn sendmmsg(dests: &[SocketAddr]) -> io::Result<String> {
    let fd = socket(family(&dests[0]), libc::SOCK_DGRAM, 0)?;
    let addrs: Vec<SockaddrStorage> = dests.iter().map(|d| sockaddr(*d)).collect();
    let payload = b"probe\n";
    let mut iovs: Vec<libc::iovec> = dests
        .iter()
        .map(|_| libc::iovec {
            iov_base: payload.as_ptr() as *mut _,
            iov_len: payload.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = addrs
        .iter()
        .zip(iovs.iter_mut())
        .map(|(a, iov)| {
            // SAFETY: an all-zero mmsghdr is valid (null pointers, zero lengths).
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = a.as_ptr() as *mut _;
            m.msg_hdr.msg_namelen = a.len();
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: msgs points at msgs.len() headers whose names and iovecs outlive the call.
    let n = cvt(unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as _, 0) })?;
    Ok(format!("sent={n}"))
}

/// An MPTCP connect: the hooks see protocol IPPROTO_MPTCP (262), which must count as TCP.
fn mptcp(dest: SocketAddr) -> io::Result<String> {
    let fd = match socket(family(&dest), libc::SOCK_STREAM, libc::IPPROTO_MPTCP) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) => {
            println!("unsupported EPROTONOSUPPORT");
            std::process::exit(0);
        }
        Err(e) => return Err(e),
    };
    let s = TcpStream::from(fd);
    s.set_write_timeout(Some(TIMEOUT))?; // SO_SNDTIMEO bounds a blocking connect
    let a = sockaddr(dest);
    // SAFETY: the address is valid for the call.
    cvt(unsafe { libc::connect(s.as_raw_fd(), a.as_ptr().cast(), a.len()) })?;
    first_line(s)
}

/// TCP Fast Open: the connect happens inside sendto(MSG_FASTOPEN).
fn tfo(dest: SocketAddr) -> io::Result<String> {
    let fd = socket(family(&dest), libc::SOCK_STREAM, 0)?;
    let a = sockaddr(dest);
    let payload = b"tfo\n";
    // SAFETY: buffer and address are valid for the call.
    cvt_size(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
            libc::MSG_FASTOPEN,
            a.as_ptr().cast(),
            a.len(),
        )
    })?;
    first_line(TcpStream::from(fd))
}

fn uring_connect(dest: SocketAddr) -> io::Result<String> {
    use io_uring::{opcode, types, IoUring};
    let mut ring = match IoUring::new(4) {
        Ok(r) => r,
        Err(e) => {
            println!("unsupported {}", errno_name(e.raw_os_error().unwrap_or(0)));
            std::process::exit(0);
        }
    };
    let fd = socket(family(&dest), libc::SOCK_STREAM, 0)?;
    let a = sockaddr(dest);
    let op = opcode::Connect::new(types::Fd(fd.as_raw_fd()), a.as_ptr().cast(), a.len())
        .build()
        .user_data(1);
    // SAFETY: the address and descriptor outlive the operation (we wait for it below).
    unsafe { ring.submission().push(&op) }.map_err(|_| io::Error::other("SQ full"))?;
    ring.submit_and_wait(1)?;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| io::Error::other("no completion"))?;
    if cqe.result() < 0 {
        return Err(io::Error::from_raw_os_error(-cqe.result()));
    }
    first_line(TcpStream::from(fd))
}

fn sendto(fd: RawFd, buf: &[u8], dest: SocketAddr) -> io::Result<usize> {
    let a = sockaddr(dest);
    // SAFETY: buffer and address are valid for the call.
    cvt_size(unsafe {
        libc::sendto(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            0,
            a.as_ptr().cast(),
            a.len(),
        )
    })
}

/// The Internet checksum (RFC 1071) of the concatenated parts.
fn checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP SYN from a raw socket: the kernel adds the IP header; no socket hook runs.
fn raw_syn(dest: std::net::SocketAddrV4, src: Ipv4Addr) -> io::Result<String> {
    let fd = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP)?;
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&dest.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    tcp[12] = 5 << 4; // data offset: 5 words
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let pseudo = [
        &src.octets()[..],
        &dest.ip().octets()[..],
        &[0, libc::IPPROTO_TCP as u8, 0, 20],
    ]
    .concat();
    let c = checksum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    sendto(fd.as_raw_fd(), &tcp, SocketAddr::V4(dest))?;
    Ok("sent".into())
}

/// A UDP datagram from a raw socket. IPv4: checksum 0 (none, valid over IPv4). IPv6: the
/// kernel fills the checksum (IPV6_CHECKSUM), and the destination port must be 0 in the socket
/// address (a raw IPv6 socket reads it as the protocol).
fn raw_udp(dest: SocketAddr) -> io::Result<String> {
    let fd = socket(family(&dest), libc::SOCK_RAW, libc::IPPROTO_UDP)?;
    if dest.is_ipv6() {
        setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_CHECKSUM,
            &6i32.to_ne_bytes(),
        )?;
    }
    let payload = b"raw\n";
    let mut udp = vec![0u8; 8];
    udp[0..2].copy_from_slice(&40001u16.to_be_bytes());
    udp[2..4].copy_from_slice(&dest.port().to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(payload);
    sendto(fd.as_raw_fd(), &udp, SocketAddr::new(dest.ip(), 0))?;
    Ok("sent".into())
}

/// A UDP datagram from a raw IPv6 socket with a hop-by-hop or destination options header (a
/// sticky option: the kernel inserts it between the IPv6 and UDP headers and fills the UDP
/// checksum over the final destination, so the server accepts the datagram).
fn raw_udp_ext(dest: std::net::SocketAddrV6, which: libc::c_int) -> io::Result<String> {
    let fd = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_UDP)?;
    let setopt = |name, val: &[u8]| setsockopt(fd.as_raw_fd(), libc::IPPROTO_IPV6, name, val);
    setopt(libc::IPV6_CHECKSUM, &6i32.to_ne_bytes())?;
    // Next header (the kernel fills it), length 0 (8 bytes), a PadN option of 4 zero bytes.
    setopt(which, &[0, 0, 1, 4, 0, 0, 0, 0])?;
    let payload = b"raw ext\n";
    let mut udp = vec![0u8; 8];
    udp[0..2].copy_from_slice(&40003u16.to_be_bytes());
    udp[2..4].copy_from_slice(&dest.port().to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(payload);
    sendto(
        fd.as_raw_fd(),
        &udp,
        SocketAddr::new((*dest.ip()).into(), 0),
    )?;
    Ok("sent".into())
}

/// A non-first fragment, header included: IPv4 with fragment offset 185 (1480 bytes) and MF
/// clear; IPv6 with a fragment header saying the same. The 16 payload bytes carry DEST's port at
/// offset 2, where a parser that mistook the fragment for a first one would read a port.
fn raw_frag(dest: SocketAddr, proto: u8, src: Option<std::net::IpAddr>) -> io::Result<String> {
    const OFFSET_UNITS: u16 = 185;
    let mut payload = [0u8; 16];
    payload[0..2].copy_from_slice(&40004u16.to_be_bytes());
    payload[2..4].copy_from_slice(&dest.port().to_be_bytes());
    let packet = match dest {
        SocketAddr::V4(d) => {
            let mut h = vec![0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&(20u16 + 16).to_be_bytes());
            h[4..6].copy_from_slice(&0x4a50u16.to_be_bytes()); // identification
            h[6..8].copy_from_slice(&OFFSET_UNITS.to_be_bytes()); // flags 0, offset
            h[8] = 64;
            h[9] = proto;
            if let Some(std::net::IpAddr::V4(src)) = src {
                h[12..16].copy_from_slice(&src.octets()); // else 0: the kernel fills it
            }
            h[16..20].copy_from_slice(&d.ip().octets());
            h.extend_from_slice(&payload);
            h
        }
        SocketAddr::V6(d) => {
            let mut h = vec![0u8; 48];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&(8u16 + 16).to_be_bytes()); // payload length
            h[6] = 44; // next header: fragment
            h[7] = 64;
            if let Some(std::net::IpAddr::V6(src)) = src {
                h[8..24].copy_from_slice(&src.octets());
            }
            h[24..40].copy_from_slice(&d.ip().octets());
            h[40] = proto; // the fragment header's next header
            h[42..44].copy_from_slice(&(OFFSET_UNITS << 3).to_be_bytes()); // offset, M = 0
            h[44..48].copy_from_slice(&0x4a50_4a50u32.to_be_bytes()); // identification
            h.extend_from_slice(&payload);
            h
        }
    };
    let fd = socket(family(&dest), libc::SOCK_RAW, libc::IPPROTO_RAW)?;
    sendto(fd.as_raw_fd(), &packet, SocketAddr::new(dest.ip(), 0))?;
    Ok("sent".into())
}

/// A datagram from an ordinary (unprivileged) UDP socket carrying a loose or strict source route
/// through `hop`: sendmsg4 sees DEST, but the packet leaves addressed to `hop`, with DEST in the
/// option's last slot.
fn udp_srr(dest: std::net::SocketAddrV4, hop: Ipv4Addr, strict: bool) -> io::Result<String> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    // NOP, then the option: type, length 7, pointer 4, the first hop. The kernel takes the
    // first hop as the packet's destination and writes DEST into the slot it frees.
    let mut opt = [1u8, if strict { 137 } else { 131 }, 7, 4, 0, 0, 0, 0];
    opt[4..8].copy_from_slice(&hop.octets());
    setsockopt(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_OPTIONS, &opt).map_err(|e| {
        io::Error::other(format!(
            "IP_OPTIONS {}",
            errno_name(e.raw_os_error().unwrap_or(0))
        ))
    })?;
    s.send_to(b"srr\n", dest)?;
    Ok("sent".into())
}

/// A malformed IPv4 header (IHL 0): the kernel sends a header-included packet with IHL < 5
/// as it is, so every field is ours, the total length included.
fn raw_ihl0(dest: std::net::SocketAddrV4) -> io::Result<String> {
    let fd = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
    let mut p = [0u8; 28];
    p[0] = 0x40; // version 4, IHL 0
    p[2..4].copy_from_slice(&dest.port().to_be_bytes()); // total length = the port
    p[8] = 64; // TTL
    p[9] = libc::IPPROTO_UDP as u8;
    p[16..20].copy_from_slice(&dest.ip().octets());
    sendto(fd.as_raw_fd(), &p, SocketAddr::new((*dest.ip()).into(), 0))?;
    Ok("sent".into())
}

/// A header-included packet sent through one family's socket whose version nibble names the
/// other family, laid out so that a parser trusting the nibble finds `decoy` as destination.
fn raw_version(dest: SocketAddr, decoy: std::net::IpAddr) -> io::Result<String> {
    let mut p = [0u8; 48];
    match (dest, decoy) {
        (SocketAddr::V4(d), std::net::IpAddr::V6(decoy)) => {
            p[0] = 0x65; // "IPv6" (as IPv4: IHL 5, which the kernel requires)
            p[8] = 64; // TTL
            p[9] = libc::IPPROTO_UDP as u8;
            p[16..20].copy_from_slice(&d.ip().octets()); // the IPv4 destination field
            p[24..40].copy_from_slice(&decoy.octets()); // the IPv6 destination field
        }
        (SocketAddr::V6(d), std::net::IpAddr::V4(decoy)) => {
            p[0] = 0x45; // "IPv4", IHL 5
            p[9] = libc::IPPROTO_UDP as u8;
            p[16..20].copy_from_slice(&decoy.octets()); // the IPv4 destination field
            p[24..40].copy_from_slice(&d.ip().octets()); // the IPv6 destination field
        }
        _ => usage("raw-version: DECOY must be of the other family"),
    }
    let fd = socket(family(&dest), libc::SOCK_RAW, libc::IPPROTO_RAW)?;
    sendto(fd.as_raw_fd(), &p, SocketAddr::new(dest.ip(), 0))?;
    Ok("sent".into())
}

/// A header-included IPv6 packet that is only its fixed header, announcing a hop-by-hop header.
fn raw_v6_truncated(dest: std::net::SocketAddrV6) -> io::Result<String> {
    let mut p = [0u8; 40];
    p[0] = 0x60;
    p[6] = 0; // next header: hop-by-hop options, which are not there
    p[7] = 64;
    p[24..40].copy_from_slice(&dest.ip().octets());
    let fd = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
    sendto(fd.as_raw_fd(), &p, SocketAddr::new((*dest.ip()).into(), 0))?;
    Ok("sent".into())
}

/// An ICMP echo request, from a raw socket or a ping socket; waits for the reply.
fn icmp(dest: std::net::SocketAddrV4, ty: libc::c_int) -> io::Result<String> {
    let fd = socket(libc::AF_INET, ty, libc::IPPROTO_ICMP)?;
    let mut echo = [0u8; 16];
    echo[0] = 8; // echo request
    echo[4..6].copy_from_slice(&0x4a4cu16.to_be_bytes());
    echo[6..8].copy_from_slice(&1u16.to_be_bytes());
    echo[8..].copy_from_slice(b"jail-prb");
    let c = checksum(&[&echo]);
    echo[2..4].copy_from_slice(&c.to_be_bytes());
    let dest = std::net::SocketAddrV4::new(*dest.ip(), 0);
    sendto(fd.as_raw_fd(), &echo, SocketAddr::V4(dest))?;
    let s = UdpSocket::from(fd); // only for recv with a timeout
    s.set_read_timeout(Some(TIMEOUT))?;
    let mut buf = [0u8; 1500];
    loop {
        let (n, from) = s.recv_from(&mut buf)?;
        // A raw socket gets the IP header too, and sees every ICMP packet (our request
        // included, on loopback): only an echo reply from the destination counts.
        let icmp = if ty == libc::SOCK_RAW {
            &buf[((buf[0] & 0x0f) as usize * 4).min(n)..n]
        } else {
            &buf[..n]
        };
        if from.ip() == std::net::IpAddr::V4(*dest.ip()) && icmp.first() == Some(&0) {
            return Ok(format!("reply from {}", dest.ip()));
        }
    }
}

/// The verdict of the connect hook alone: a non-blocking TCP connect returns EINPROGRESS once the
/// hook passed it; a UDP connect sends nothing.
fn verdict(case: &str) -> String {
    let (ty, dest) = match case.split_once(':') {
        Some(("tcp", d)) => (libc::SOCK_STREAM | libc::SOCK_NONBLOCK, d),
        Some(("udp", d)) => (libc::SOCK_DGRAM, d),
        _ => usage(&format!("bad case {case}")),
    };
    let dest: SocketAddr = dest
        .parse()
        .unwrap_or_else(|_| usage(&format!("bad DEST {dest}")));
    let r = socket(family(&dest), ty, 0).and_then(|fd| {
        let a = sockaddr(dest);
        // SAFETY: the address is valid for the call.
        cvt(unsafe { libc::connect(fd.as_raw_fd(), a.as_ptr().cast(), a.len()) })
    });
    match r {
        Ok(_) => "pass".into(),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => "pass".into(),
        Err(e) => errno_name(e.raw_os_error().unwrap_or(0)),
    }
}

/// The packet backstop's verdict for one raw TCP or UDP header (no socket hook runs for raw
/// sockets). The checksum is left to the kernel for IPv6 and left zero for IPv4: only the
/// verdict matters, the receiver may drop the packet.
fn raw_verdict(case: &str) -> String {
    let (proto, off, dest) = match case.split_once(':') {
        Some(("tcp", d)) => (libc::IPPROTO_TCP, 16, d),
        Some(("udp", d)) => (libc::IPPROTO_UDP, 6, d),
        _ => usage(&format!("bad case {case}")),
    };
    let dest: SocketAddr = dest
        .parse()
        .unwrap_or_else(|_| usage(&format!("bad DEST {dest}")));
    let r = socket(family(&dest), libc::SOCK_RAW, proto).and_then(|fd| {
        let mut hdr = vec![0u8; if proto == libc::IPPROTO_TCP { 20 } else { 8 }];
        hdr[0..2].copy_from_slice(&40002u16.to_be_bytes());
        hdr[2..4].copy_from_slice(&dest.port().to_be_bytes());
        if proto == libc::IPPROTO_TCP {
            hdr[12] = 5 << 4;
            hdr[13] = 0x02; // SYN
        } else {
            hdr[4..6].copy_from_slice(&8u16.to_be_bytes());
        }
        // A broadcast address (a random case may be one) needs SO_BROADCAST, else the kernel
        // refuses the send itself (EACCES) before the backstop sees the packet.
        setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BROADCAST,
            &1i32.to_ne_bytes(),
        )?;
        if dest.is_ipv6() {
            setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_CHECKSUM,
                &libc::c_int::to_ne_bytes(off),
            )?;
        }
        sendto(fd.as_raw_fd(), &hdr, SocketAddr::new(dest.ip(), 0))
    });
    match r {
        Ok(_) => "pass".into(),
        Err(e) => errno_name(e.raw_os_error().unwrap_or(0)),
    }
}

/// What an unprivileged process in the jail might try. None of it may succeed.
///
/// The detach attempts are the calls that DO remove a program for a privileged caller (the
/// tests run them as root against a throwaway attachment to show it): the jail's programs are
/// attached through links, so the way to remove one is BPF_LINK_DETACH on the link, whose
/// descriptor comes from its id or its pin. BPF_PROG_DETACH with the program's own descriptor
/// is tried too (the kernel refuses it for a link-attached program, even to root).
fn tamper(cgroup: &str, pins: &str, ids: TamperIds) -> io::Result<String> {
    let mut out = Vec::new();
    let mut note = |name: &str, r: io::Result<()>| {
        let v = match r {
            Ok(()) => "SUCCEEDED".to_owned(),
            Err(e) => e
                .raw_os_error()
                .map(errno_name)
                .unwrap_or_else(|| e.to_string()),
        };
        out.push(format!("{name}={v}"));
    };
    // Open a pinned map (BPF_OBJ_GET on its path).
    note("obj-get-map", obj_get(&format!("{pins}/ALLOW4")).map(drop));
    // Get the map and the link by id (needs CAP_SYS_ADMIN).
    note(
        "map-by-id",
        fd_by_id(BPF_MAP_GET_FD_BY_ID, ids.map).map(drop),
    );
    note(
        "link-by-id",
        fd_by_id(BPF_LINK_GET_FD_BY_ID, ids.link_connect4).map(drop),
    );
    let dir = std::fs::File::open(cgroup)?;
    // Find the programs attached to the cgroup (BPF_PROG_QUERY): the id of connect6 must be
    // among them (else the query is not what it claims to be).
    note(
        "query-connect6",
        prog_query(&dir, BPF_CGROUP_INET6_CONNECT).and_then(|found| {
            if found.contains(&ids.prog_connect6) {
                Ok(())
            } else {
                Err(io::Error::other(format!("MISSING{found:?}")))
            }
        }),
    );
    // The legacy detach with the real program's descriptor.
    note(
        "prog-detach-connect6",
        fd_by_id(BPF_PROG_GET_FD_BY_ID, ids.prog_connect6).and_then(|prog| {
            let mut attr = [0u64; 16];
            // target_fd, attach_bpf_fd, attach_type.
            attr[0] = dir.as_raw_fd() as u64 | (prog.as_raw_fd() as u64) << 32;
            attr[1] = u64::from(BPF_CGROUP_INET6_CONNECT);
            bpf(BPF_PROG_DETACH, &mut attr).map(drop)
        }),
    );
    // The link detach, with the link found by id and by its pin.
    note(
        "detach-connect4",
        fd_by_id(BPF_LINK_GET_FD_BY_ID, ids.link_connect4).and_then(|l| link_detach(&l)),
    );
    note(
        "detach-egress",
        fd_by_id(BPF_LINK_GET_FD_BY_ID, ids.link_egress).and_then(|l| link_detach(&l)),
    );
    note(
        "detach-pinned-sendmsg4",
        obj_get(&format!("{pins}/link-sendmsg4")).and_then(|l| link_detach(&l)),
    );
    // Leave the jail cgroup for its parent.
    let parent = std::path::Path::new(cgroup)
        .parent()
        .unwrap()
        .join("cgroup.procs");
    note(
        "escape-cgroup",
        std::fs::OpenOptions::new()
            .write(true)
            .open(parent)
            .and_then(|mut f| f.write_all(b"0")),
    );
    Ok(out.join(" "))
}

/// The ids `tamper` is given (what an attacker could enumerate or guess).
struct TamperIds {
    map: u32,
    link_connect4: u32,
    link_egress: u32,
    prog_connect6: u32,
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_CGROUP_INET6_CONNECT: u32 = 11;

/// BPF_OBJ_GET: a descriptor for a pinned object.
fn obj_get(path: &str) -> io::Result<OwnedFd> {
    let path = CString::new(path).map_err(io::Error::other)?;
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: on success BPF_OBJ_GET returns a new descriptor, ours to own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// BPF_{PROG,MAP,LINK}_GET_FD_BY_ID.
fn fd_by_id(cmd: libc::c_long, id: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 16];
    attr[0] = u64::from(id);
    let fd = bpf(cmd, &mut attr)?;
    // SAFETY: on success these commands return a new descriptor, ours to own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// BPF_LINK_DETACH: ends a link's attachment (the link object stays, detached).
fn link_detach(link: &OwnedFd) -> io::Result<()> {
    let mut attr = [0u64; 16];
    attr[0] = link.as_raw_fd() as u64;
    bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

/// BPF_PROG_QUERY: the ids of the programs attached to a cgroup for one attach type.
fn prog_query(cgroup: &std::fs::File, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let mut attr = [0u64; 16];
    attr[0] = cgroup.as_raw_fd() as u64 | u64::from(attach_type) << 32; // target_fd, type
    attr[2] = ids.as_mut_ptr() as u64; // prog_ids
    attr[3] = ids.len() as u64; // prog_cnt (in: room, out: count)
    bpf(BPF_PROG_QUERY, &mut attr)?;
    let n = (attr[3] as u32 as usize).min(ids.len());
    Ok(ids[..n].to_vec())
}

/// bpf(2) with a zero-padded attribute buffer; returns what the call returned (a descriptor
/// for the commands that make one: the caller owns it).
fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<RawFd> {
    // SAFETY: attr is a 128-byte buffer, larger than every attribute layout used here; the
    // kernel reads `size` bytes of it and writes back into it (BPF_PROG_QUERY's count).
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128usize) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as RawFd)
}
