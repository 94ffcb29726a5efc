//! Random destinations for the tests that hold a kernel's verdicts against `Policy::decide`
//! (the eBPF mode's in enforce.rs, the nftables mode's in nftables.rs): one generator, one
//! address plan, so both modes are held to the same draw.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

// IPPROTO_TCP, IPPROTO_UDP (jail-common is a dev-dependency only).
const PROTO_TCP: u8 = libc::IPPROTO_TCP as u8;
const PROTO_UDP: u8 = libc::IPPROTO_UDP as u8;

/// A small deterministic generator (xorshift64*), so a failure names its seed.
pub struct Rng(pub u64);

impl Rng {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `ENFORCE_SEED` when set (to rerun a failure), else a fresh odd seed.
pub fn seed() -> u64 {
    std::env::var("ENFORCE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

/// The addresses of the test's world and around the denied ranges that every draw includes.
pub const EDGES: [&str; 11] = [
    "2001:db8:1::100",
    "2001:db8:1::1",
    "::1",
    "::",
    "fe80::1",
    "64:ff9b::a00:5",
    "64:ff9b::cb00:710a",
    "::a00:5",
    "2002:a00:5::1",
    "2001::1",
    "ff02::1",
];

/// `n` destinations `(address, port, protocol)`: a quarter from `fixed`, half in and around the
/// address plan's IPv4 prefixes (IPv4 itself, or an IPv6 form that carries it: mapped, NAT64,
/// compatible), a quarter in IPv6 prefixes; TCP or UDP on a few ports.
pub fn destinations(rng: &mut Rng, fixed: &[IpAddr], n: usize) -> Vec<(IpAddr, u16, u8)> {
    // Prefixes of the address plan and around it, as (base, len).
    let v4: [(u32, u32); 12] = [
        (0x0a00_0000, 8),
        (0x0a00_0000, 24),
        (0xac10_0000, 12),
        (0xac10_0000, 24),
        (0xc0a8_0100, 24),
        (0x6440_0000, 10),
        (0xa9fe_0000, 16),
        (0xcb00_7100, 24),
        (0xc633_6400, 24),
        (0x0000_0000, 8),
        (0xe000_0000, 4),
        (0x0808_0800, 24),
    ];
    let v6: [(u128, u32); 4] = [
        (0xfd00_u128 << 112, 8),
        (0x2001_0db8_00ff_u128 << 80, 64),
        (0x2001_0db8_0001_u128 << 80, 64),
        (0x2a00_u128 << 112, 16),
    ];
    let ports = [22u16, 53, 80, 443, 5064, 9999];
    (0..n)
        .map(|_| {
            let ip: IpAddr = match rng.below(4) {
                0 => fixed[rng.below(fixed.len() as u64) as usize],
                1 | 2 => {
                    let (base, len) = v4[rng.below(v4.len() as u64) as usize];
                    let host_bits = 32 - len;
                    let mask = if host_bits == 32 {
                        u32::MAX
                    } else {
                        (1u32 << host_bits) - 1
                    };
                    let a = Ipv4Addr::from(base | (rng.next() as u32 & mask));
                    let low = u128::from(u32::from(a));
                    match rng.below(6) {
                        0 => a.to_ipv6_mapped().into(),
                        1 => Ipv6Addr::from((0x64_ff9b_u128 << 96) | low).into(),
                        2 => Ipv6Addr::from(low).into(),
                        _ => a.into(),
                    }
                }
                _ => {
                    let (base, len) = v6[rng.below(4) as usize];
                    let mask = (1u128 << (128 - len)) - 1;
                    let r = ((rng.next() as u128) << 64) | rng.next() as u128;
                    Ipv6Addr::from(base | (r & mask)).into()
                }
            };
            let port = ports[rng.below(ports.len() as u64) as usize];
            let proto = if rng.below(2) == 0 {
                PROTO_TCP
            } else {
                PROTO_UDP
            };
            (ip, port, proto)
        })
        .collect()
}
