//! Client probes for tests. They open sockets in the calling thread's network namespace, so
//! call them inside [`crate::FakeWorld::in_host`], [`crate::Netns::run`] and the like.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result};

/// Connects to `addr` and returns the first line the server sends (without the newline).
pub fn tcp_connect(addr: SocketAddr, timeout: Duration) -> Result<String> {
    let s =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .with_context(|| format!("read from {addr}"))?;
    Ok(line.trim_end_matches('\n').to_owned())
}

/// Connects to `addr`, writes `payload`, half-closes (shutdown(SHUT_WR)) and reads to EOF.
pub fn tcp_exchange(addr: SocketAddr, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(payload)
        .with_context(|| format!("write to {addr}"))?;
    s.shutdown(Shutdown::Write)
        .with_context(|| format!("shutdown(SHUT_WR) to {addr}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .with_context(|| format!("read from {addr} until EOF"))?;
    Ok(out)
}

/// Sends one datagram to `addr` and returns the first reply.
pub fn udp_exchange(addr: SocketAddr, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let s = UdpSocket::bind(bind).context("bind udp")?;
    s.set_read_timeout(Some(timeout))?;
    s.connect(addr)
        .with_context(|| format!("udp connect {addr}"))?;
    s.send(payload).with_context(|| format!("send to {addr}"))?;
    let mut buf = vec![0u8; 65535];
    let n = s
        .recv(&mut buf)
        .with_context(|| format!("no UDP reply from {addr}"))?;
    buf.truncate(n);
    Ok(buf)
}
