//! jail-bench-probe: the compiled loops `cargo xtask bench` runs in a jail and in a bare network
//! namespace, as the same unprivileged user. Each prints one line on stdout.
//!
//! ```text
//! jail-bench-probe stamp          prints CLOCK_MONOTONIC in ns, then exits at once
//! jail-bench-probe sendto N       N sendto() of 32-byte datagrams to a socket of its own on
//!                                 127.0.0.1; prints ns per call
//! jail-bench-probe connect N      N connect()+close() to a listener of its own on 127.0.0.1
//!                                 (accepted and closed by a thread); prints ns per pair
//! jail-bench-probe bulk DEST B    connects to DEST, writes B bytes, half-closes, reads to EOF
//!                                 (the sink closes once it has read everything); prints MB/s
//! ```
use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream, UdpSocket},
    time::Instant,
};

fn monotonic_ns() -> u128 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock_gettime");
    t.tv_sec() as u128 * 1_000_000_000 + t.tv_nsec() as u128
}

fn sendto(n: u64) {
    let rx = UdpSocket::bind("127.0.0.1:0").expect("bind the receiver");
    let to = rx.local_addr().unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind the sender");
    let buf = [0x5au8; 32];
    // Warm-up: page faults, route cache, the receiver's queue filling (later datagrams are
    // dropped at the receiver, after sendto() has done all its work).
    for _ in 0..n / 10 {
        tx.send_to(&buf, to).expect("sendto");
    }
    let t = Instant::now();
    for _ in 0..n {
        tx.send_to(&buf, to).expect("sendto");
    }
    println!("{}", t.elapsed().as_nanos() / n as u128);
    drop(rx);
}

fn connect(n: u64) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind the listener");
    let to = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            drop(c);
        }
    });
    let one = || {
        let s = TcpStream::connect(to).expect("connect");
        // RST on close: no TIME_WAIT, so the ephemeral ports never run out.
        let _ = nix::sys::socket::setsockopt(
            &s,
            nix::sys::socket::sockopt::Linger,
            &libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        );
        drop(s);
    };
    for _ in 0..n / 10 {
        one();
    }
    let t = Instant::now();
    for _ in 0..n {
        one();
    }
    println!("{}", t.elapsed().as_nanos() / n as u128);
}

fn bulk(dest: &str, bytes: u64) {
    let buf = vec![0u8; 1 << 16];
    let t = Instant::now();
    let mut s = TcpStream::connect(dest).expect("connect");
    // A stream that stalls is a result (0 MB/s, said on stderr), not a hang of the bench.
    let stall = std::time::Duration::from_secs(10);
    s.set_write_timeout(Some(stall)).unwrap();
    s.set_read_timeout(Some(stall)).unwrap();
    let mut left = bytes;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        if t.elapsed() > stall * 2 {
            eprintln!(
                "stalled: {} of {bytes} bytes in {:?}",
                bytes - left,
                t.elapsed()
            );
            println!("0");
            return;
        }
        if let Err(e) = s.write_all(&buf[..k]) {
            eprintln!("stalled after {} of {bytes} bytes: {e}", bytes - left);
            println!("0");
            return;
        }
        left -= k as u64;
    }
    s.shutdown(Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    if let Err(e) = s.read_to_end(&mut rest) {
        eprintln!("no end of stream from the sink: {e}");
        println!("0");
        return;
    }
    println!("{:.1}", bytes as f64 / t.elapsed().as_secs_f64() / 1e6);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> u64 {
        args.get(i)
            .and_then(|s| s.parse().ok())
            .expect("a count argument")
    };
    match args.first().map(String::as_str) {
        Some("stamp") => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", monotonic_ns()).unwrap();
            out.flush().unwrap();
        }
        Some("sendto") => sendto(num(1)),
        Some("connect") => connect(num(1)),
        Some("bulk") => bulk(args.get(1).expect("DEST"), num(2)),
        _ => {
            eprintln!("usage: jail-bench-probe stamp | sendto N | connect N | bulk DEST BYTES");
            std::process::exit(2);
        }
    }
}
