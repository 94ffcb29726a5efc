//! The fake hosts' services: TCP servers that greet and echo, a half-close echo, UDP
//! responders. Sockets are created by the caller inside the right namespace; one thread polls
//! them all and every accepted connection or datagram is recorded as a [`Hit`].

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Transport protocol of a [`Hit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One accepted TCP connection or one received UDP datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub proto: Proto,
    /// Who connected or sent (as the fake host saw it).
    pub peer: SocketAddr,
    /// The fake host's address and port that was reached.
    pub local: SocketAddr,
    pub at: Instant,
}

/// What a TCP listener does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Writes `hello from <local>\n` at once, then echoes what it reads until EOF, then closes.
    Greet,
    /// Reads until EOF, then writes back exactly what it read and closes (for half-close tests).
    HalfCloseEcho,
}

/// A socket to serve, created by the caller in the namespace it belongs to.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener, Behaviour),
    Udp(UdpSocket),
}

/// Binds, retrying for up to 2 s while the address is not available yet (an IPv6 address the
/// kernel still holds as tentative just after it was added).
fn bind_retrying<T>(mut bind: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match bind() {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrNotAvailable
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

impl Listener {
    /// Binds a TCP listener on `addr` in the calling thread's network namespace.
    pub fn tcp(addr: SocketAddr, behaviour: Behaviour) -> Result<Listener> {
        let l = bind_retrying(|| TcpListener::bind(addr))
            .with_context(|| format!("bind tcp {addr}"))?;
        l.set_nonblocking(true)?;
        Ok(Listener::Tcp(l, behaviour))
    }

    /// Binds a UDP responder on `addr` in the calling thread's network namespace.
    pub fn udp(addr: SocketAddr) -> Result<Listener> {
        let s =
            bind_retrying(|| UdpSocket::bind(addr)).with_context(|| format!("bind udp {addr}"))?;
        s.set_nonblocking(true)?;
        Ok(Listener::Udp(s))
    }
}

/// The first line every server sends (TCP) or prefixes to its reply (UDP).
pub fn greeting(local: SocketAddr) -> String {
    format!("hello from {local}\n")
}

/// Open connections, kept so that teardown can shut them down and wake their threads.
#[derive(Default)]
struct Conns {
    next: u64,
    open: HashMap<u64, TcpStream>,
    threads: Vec<JoinHandle<()>>,
}

/// A running set of servers. Stopped (all threads joined, all sockets closed) by
/// [`Servers::stop`] or on drop.
pub struct Servers {
    hits: Arc<Mutex<Vec<Hit>>>,
    conns: Arc<Mutex<Conns>>,
    stop: Arc<AtomicBool>,
    wake: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    accepted: Arc<AtomicU64>,
}

/// Idle connections are dropped after this long, so a forgotten client cannot hang teardown.
const CONN_IDLE: Duration = Duration::from_secs(60);
/// A half-close echo keeps at most this much.
const ECHO_MAX: u64 = 16 << 20;

impl Servers {
    /// Starts serving `listeners` from one polling thread.
    pub fn start(listeners: Vec<Listener>) -> Result<Servers> {
        // Close-on-exec: the world's child processes (and claude-jail under test) must not hold
        // the servers' wake-up pipe.
        let (wake_r, wake_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
        let hits = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(Mutex::new(Conns::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let thread = {
            let (hits, conns, stop, accepted) =
                (hits.clone(), conns.clone(), stop.clone(), accepted.clone());
            thread::Builder::new()
                .name("fake-servers".into())
                .spawn(move || serve(listeners, wake_r, hits, conns, stop, accepted))
                .context("spawn server thread")?
        };
        Ok(Servers {
            hits,
            conns,
            stop,
            wake: Some(wake_w),
            thread: Some(thread),
            accepted,
        })
    }

    /// Every hit so far, in order.
    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Number of TCP connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Stops the polling thread, shuts down open connections and joins every thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.wake.take() {
            let _ = nix::unistd::write(&w, b"x");
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let threads = {
            let mut c = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            for s in c.open.values() {
                let _ = s.shutdown(Shutdown::Both);
            }
            std::mem::take(&mut c.threads)
        };
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(
    listeners: Vec<Listener>,
    wake: OwnedFd,
    hits: Arc<Mutex<Vec<Hit>>>,
    conns: Arc<Mutex<Conns>>,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        let mut fds: Vec<PollFd<'_>> = listeners
            .iter()
            .map(|l| {
                let fd = match l {
                    Listener::Tcp(t, _) => t.as_fd(),
                    Listener::Udp(u) => u.as_fd(),
                };
                PollFd::new(fd, PollFlags::POLLIN)
            })
            .collect();
        fds.push(PollFd::new(wake.as_fd(), PollFlags::POLLIN));
        // A bounded wait, so that `stop` is seen even if the wake-up byte were lost.
        if poll(&mut fds, PollTimeout::from(200u16)).is_err() {
            continue; // EINTR
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if stop.load(Ordering::SeqCst) {
            break;
        }
        for (l, _) in listeners.iter().zip(ready).filter(|(_, r)| *r) {
            match l {
                Listener::Tcp(t, behaviour) => {
                    while let Ok((stream, peer)) = t.accept() {
                        let local = stream.local_addr().unwrap_or(peer);
                        record(&hits, Proto::Tcp, peer, local);
                        accepted.fetch_add(1, Ordering::Relaxed);
                        spawn_conn(&conns, stream, local, *behaviour);
                    }
                }
                Listener::Udp(u) => {
                    let local = u.local_addr().expect("bound socket");
                    while let Ok((n, peer)) = u.recv_from(&mut buf) {
                        record(&hits, Proto::Udp, peer, local);
                        let mut reply = greeting(local).into_bytes();
                        reply.extend_from_slice(&buf[..n]);
                        let _ = u.send_to(&reply, peer);
                    }
                }
            }
        }
    }
}

fn record(hits: &Mutex<Vec<Hit>>, proto: Proto, peer: SocketAddr, local: SocketAddr) {
    hits.lock().unwrap_or_else(|e| e.into_inner()).push(Hit {
        proto,
        peer: canonical(peer),
        local: canonical(local),
        at: Instant::now(),
    });
}

/// Writes IPv4-mapped IPv6 socket addresses as IPv4, so hits compare simply.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => a,
        },
        v4 => v4,
    }
}

fn spawn_conn(conns: &Arc<Mutex<Conns>>, stream: TcpStream, local: SocketAddr, b: Behaviour) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(CONN_IDLE));
    let _ = stream.set_write_timeout(Some(CONN_IDLE));
    let mut c = conns.lock().unwrap_or_else(|e| e.into_inner());
    let id = c.next;
    c.next += 1;
    if let Ok(clone) = stream.try_clone() {
        c.open.insert(id, clone);
    }
    let conns2 = conns.clone();
    let t = thread::Builder::new()
        .name("fake-conn".into())
        .spawn(move || {
            handle_conn(stream, local, b);
            conns2
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .open
                .remove(&id);
        });
    match t {
        Ok(t) => c.threads.push(t),
        Err(_) => {
            c.open.remove(&id);
        }
    }
}

fn handle_conn(mut s: TcpStream, local: SocketAddr, b: Behaviour) {
    match b {
        Behaviour::Greet => {
            if s.write_all(greeting(local).as_bytes()).is_err() {
                return;
            }
            let mut buf = [0u8; 16384];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        }
        Behaviour::HalfCloseEcho => {
            let mut data = Vec::new();
            if (&mut s).take(ECHO_MAX).read_to_end(&mut data).is_err() {
                return;
            }
            let _ = s.write_all(&data);
            let _ = s.shutdown(Shutdown::Write);
        }
    }
}

/// What [`crate::FakeWorld::hits`] filters on: an address (any port) or one socket address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Ip(IpAddr),
    Socket(SocketAddr),
}

impl Target {
    /// True when a hit on `local` is a hit on this target.
    pub fn matches(&self, local: SocketAddr) -> bool {
        match *self {
            Target::Ip(ip) => canonical(local).ip() == canonical(SocketAddr::new(ip, 0)).ip(),
            Target::Socket(sa) => canonical(local) == canonical(sa),
        }
    }
}

impl From<IpAddr> for Target {
    fn from(a: IpAddr) -> Self {
        Target::Ip(a)
    }
}
impl From<Ipv4Addr> for Target {
    fn from(a: Ipv4Addr) -> Self {
        Target::Ip(a.into())
    }
}
impl From<Ipv6Addr> for Target {
    fn from(a: Ipv6Addr) -> Self {
        Target::Ip(a.into())
    }
}
impl From<SocketAddr> for Target {
    fn from(a: SocketAddr) -> Self {
        Target::Socket(a)
    }
}
impl From<SocketAddrV4> for Target {
    fn from(a: SocketAddrV4) -> Self {
        Target::Socket(a.into())
    }
}
impl From<SocketAddrV6> for Target {
    fn from(a: SocketAddrV6) -> Self {
        Target::Socket(a.into())
    }
}
