//! A minimal DNS client (one question, class IN) over UDP or TCP, enough to check what the fake
//! world's dnsmasq answers, including truncation. Call it from a thread inside a namespace.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

/// Query type A.
pub const A: u16 = 1;
/// Query type AAAA.
pub const AAAA: u16 = 28;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The parts of a reply the tests look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsReply {
    /// Response code (0 NOERROR, 3 NXDOMAIN, 5 REFUSED).
    pub rcode: u8,
    /// The TC bit: the answer did not fit (UDP, 512 bytes without EDNS).
    pub truncated: bool,
    /// A and AAAA records of the answer section, in order.
    pub addrs: Vec<IpAddr>,
    /// Size of the DNS message in bytes.
    pub len: usize,
}

/// Builds a query message with id `id` for `name` and `qtype`, recursion desired.
pub fn build_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; 1 question
    for label in name.trim_end_matches('.').split('.') {
        ensure!(
            !label.is_empty() && label.len() < 64,
            "bad label in {name:?}"
        );
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes()); // IN
    Ok(m)
}

/// Parses a reply to the query with id `id`.
pub fn parse_reply(id: u16, m: &[u8]) -> Result<DnsReply> {
    ensure!(m.len() >= 12, "DNS reply too short ({} bytes)", m.len());
    ensure!(
        u16::from_be_bytes([m[0], m[1]]) == id,
        "DNS reply id mismatch"
    );
    ensure!(m[2] & 0x80 != 0, "not a DNS response");
    let qd = u16::from_be_bytes([m[4], m[5]]);
    let an = u16::from_be_bytes([m[6], m[7]]);
    let mut pos = 12;
    for _ in 0..qd {
        pos = skip_name(m, pos)? + 4;
    }
    let mut addrs = Vec::new();
    for _ in 0..an {
        pos = skip_name(m, pos)?;
        let f = m.get(pos..pos + 10).context("DNS answer truncated")?;
        let rtype = u16::from_be_bytes([f[0], f[1]]);
        let rdlen = u16::from_be_bytes([f[8], f[9]]) as usize;
        pos += 10;
        let rdata = m.get(pos..pos + rdlen).context("DNS rdata truncated")?;
        match (rtype, rdlen) {
            (A, 4) => addrs.push(IpAddr::V4(Ipv4Addr::new(
                rdata[0], rdata[1], rdata[2], rdata[3],
            ))),
            (AAAA, 16) => addrs.push(IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(rdata).expect("16 bytes"),
            ))),
            _ => {}
        }
        pos += rdlen;
    }
    Ok(DnsReply {
        rcode: m[3] & 0x0f,
        truncated: m[2] & 0x02 != 0,
        addrs,
        len: m.len(),
    })
}

fn skip_name(m: &[u8], mut pos: usize) -> Result<usize> {
    loop {
        let len = *m.get(pos).context("DNS name runs past the end")?;
        match len {
            0 => return Ok(pos + 1),
            l if l & 0xc0 == 0xc0 => return Ok(pos + 2), // compression pointer ends the name
            l => pos += 1 + l as usize,
        }
    }
}

/// Sends one query to `server` and returns the parsed reply.
pub fn query(
    server: SocketAddr,
    name: &str,
    qtype: u16,
    transport: Transport,
    timeout: Duration,
) -> Result<DnsReply> {
    let id = (std::process::id() as u16) ^ (qtype << 3) ^ name.len() as u16;
    let q = build_query(id, name, qtype)?;
    let msg = match transport {
        Transport::Udp => {
            let bind: SocketAddr = if server.is_ipv4() {
                "0.0.0.0:0".parse()?
            } else {
                "[::]:0".parse()?
            };
            let s = UdpSocket::bind(bind).context("bind udp")?;
            s.set_read_timeout(Some(timeout))?;
            s.connect(server)
                .with_context(|| format!("udp connect {server}"))?;
            s.send(&q).with_context(|| format!("send to {server}"))?;
            let mut buf = vec![0u8; 65535];
            let n = s
                .recv(&mut buf)
                .with_context(|| format!("DNS over UDP to {server}: no reply"))?;
            buf.truncate(n);
            buf
        }
        Transport::Tcp => {
            let mut s = TcpStream::connect_timeout(&server, timeout)
                .with_context(|| format!("DNS over TCP: connect {server}"))?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            let mut framed = (q.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&q);
            s.write_all(&framed)?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len)
                .with_context(|| format!("DNS over TCP to {server}: no reply"))?;
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut buf)
                .context("DNS over TCP: short reply")?;
            buf
        }
    };
    if msg.is_empty() {
        bail!("empty DNS reply from {server}");
    }
    parse_reply(id, &msg)
}
