//! Differential test of the IPv6 `router` against the Linux kernel's FIB
//! (issue 14, item 3): random tables of overlapping IPv6 prefixes go into
//! a namespace's kernel (`ip -6 -batch`) and into the router, and every
//! lookup of `ip -6 route get` (batched) is compared with the route the
//! router forwards by.
//!
//! Each route `i` has its own gateway `fe80::(i+1)` in the kernel and its
//! own next-hop MAC in the router, so both answers name the exact route
//! that matched. Destinations: every route's network, its last address,
//! one just outside it, and random addresses under 2000::/3. Tables with
//! and without a default route (so "no route" is compared too).

use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv6Addr;
use std::process::Stdio;

use braid_io::netns::{self, NetnsGuard};
use braid_nf::lpm::prefix_mask6;
use braid_nf::router::{Config, RouteConfig, Router};
use braid_nf::{Context, Counters, DropReason, NetworkFunction};
use braid_packet::wire::build::Frame6Spec;
use braid_packet::{Batch, Packet};

/// xorshift64*: deterministic tables.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn u128(&mut self) -> u128 {
        (self.next() as u128) << 64 | self.next() as u128
    }
}

/// `n` distinct prefixes under 2000::/3, nested around a few seeds so that
/// they overlap at every depth; `::/0` first if `default`.
fn table(rng: &mut Rng, n: usize, default: bool) -> Vec<(u128, u8)> {
    let under = |a: u128| (a >> 3) | (1u128 << 125);
    let seeds: Vec<u128> = (0..6).map(|_| under(rng.u128())).collect();
    let mut out = Vec::new();
    if default {
        out.push((0, 0));
    }
    let mut seen = std::collections::HashSet::new();
    while out.len() < n {
        let len = match rng.below(6) {
            0 => 8 + rng.below(24) as u8,
            1 | 2 => 32 + rng.below(33) as u8,
            3 => 48,
            4 => 65 + rng.below(64) as u8,
            _ => 8 + rng.below(121) as u8,
        };
        let seed = seeds[rng.below(seeds.len() as u64) as usize];
        // Mostly inside a seed's neighbourhood: flip a few random bits.
        let noise = if rng.below(4) == 0 { under(rng.u128()) ^ seed } else { 0 };
        let bit = 1u128 << rng.below(125);
        let net = (seed ^ noise ^ if rng.below(2) == 0 { bit } else { 0 }) & prefix_mask6(len);
        if seen.insert((net, len)) {
            out.push((net, len));
        }
    }
    out
}

fn gateway(i: usize) -> Ipv6Addr {
    Ipv6Addr::from(0xfe80_u128 << 112 | (i as u128 + 1))
}

fn hop_mac(i: usize) -> [u8; 6] {
    [0x02, 0, 0, 0x10, (i >> 8) as u8, i as u8]
}

/// Run `ip -6 -force -batch -` in `ns` with `lines`; stdout, stderr.
fn ip_batch(ns: &NetnsGuard, lines: &[String]) -> (String, String) {
    let mut child = ns
        .command("ip")
        .args(["-6", "-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ip");
    let mut input = lines.join("\n");
    input.push('\n');
    let mut stdin = child.stdin.take().expect("stdin");
    // Written from a thread: ip answers while it reads.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("ip -batch");
    writer.join().expect("writer").expect("write to ip");
    (String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// The kernel's answer for each destination: the route index (by its
/// gateway) or `None` (no route).
fn kernel_lookups(ns: &NetnsGuard, dsts: &[u128]) -> Vec<Option<usize>> {
    let lines: Vec<String> =
        dsts.iter().map(|d| format!("route get {}", Ipv6Addr::from(*d))).collect();
    let (out, err) = ip_batch(ns, &lines);
    let mut by_dst: HashMap<u128, Option<usize>> = HashMap::new();
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(dst) = words.first().and_then(|w| w.parse::<Ipv6Addr>().ok()) else {
            continue;
        };
        let via = words.iter().position(|w| *w == "via").and_then(|i| words.get(i + 1));
        let gw: Ipv6Addr = via.and_then(|g| g.parse().ok()).unwrap_or_else(|| panic!("{line}"));
        let index = (u128::from(gw) & 0xffff) as usize - 1;
        by_dst.insert(u128::from(dst), Some(index));
    }
    for line in err.lines() {
        if let Some(n) = line.strip_prefix("Command failed -:") {
            let n: usize = n.trim().parse().expect("line number");
            by_dst.insert(dsts[n - 1], None);
        } else {
            assert!(
                line.contains("Network is unreachable") || line.contains("No route to host"),
                "unexpected answer from ip: {line}"
            );
        }
    }
    dsts.iter()
        .map(|d| *by_dst.get(d).unwrap_or_else(|| panic!("no answer for {}", Ipv6Addr::from(*d))))
        .collect()
}

/// The router's answer for each destination: the route whose MAC it
/// wrote, or `None` if it dropped the packet for no route.
fn router_lookups(routes: &[(u128, u8)], dsts: &[u128]) -> Vec<Option<usize>> {
    let cfg = Config {
        routes: routes
            .iter()
            .enumerate()
            .map(|(i, (net, len))| RouteConfig {
                prefix: format!("{}/{len}", Ipv6Addr::from(*net)),
                next_hop_mac: hop_mac(i).map(|b| format!("{b:02x}")).join(":"),
                port: 1,
            })
            .collect(),
        mac: "02:00:00:00:00:fe".into(),
        ip: None,
        ip6: Some("2001:db8::fe".parse().unwrap()),
        icmp_rate: 0,
        icmp_burst: 1,
        ports: Vec::new(),
    };
    let mut r = Router::from_config(&cfg).expect("router config");
    let index: HashMap<[u8; 6], usize> = (0..routes.len()).map(|i| (hop_mac(i), i)).collect();
    let src = "2001:db8::9".parse().unwrap();
    dsts.iter()
        .map(|d| {
            let f = Frame6Spec::udp((src, 1000), (Ipv6Addr::from(*d), 53), 8).build();
            let mut b: Batch = std::iter::once(Packet::from_bytes(&f)).collect();
            let mut c = Counters::default();
            r.process(&mut b, &mut Context::new(1_000_000_000, &mut c));
            match b.iter().next() {
                Some(p) => {
                    let mac: [u8; 6] = p.data()[0..6].try_into().unwrap();
                    Some(*index.get(&mac).expect("a route's MAC"))
                }
                None => {
                    assert_eq!(c.dropped(DropReason::NoRoute), 1, "{}", Ipv6Addr::from(*d));
                    None
                }
            }
        })
        .collect()
}

#[test]
fn router6_lookups_match_the_kernel_fib() {
    let test = "router6_lookups_match_the_kernel_fib";
    // `ip` itself is what creates namespaces: no separate check.
    if braid_testkit::skip_unless(netns::is_root(), test, "needs root (namespaces)") {
        return;
    }
    let mut rng = Rng(0x1f6_0001);
    let mut compared = 0;
    for (round, default) in [(0, false), (1, true), (2, false)] {
        let ns = NetnsGuard::create(&netns::unique_name(&format!("br6{round}"))).expect("netns");
        let ok = |out: std::io::Result<std::process::Output>| {
            let out = out.expect("run ip");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        };
        ok(ns
            .command("ip")
            .args(["link", "add", "v0", "type", "veth", "peer", "name", "v1"])
            .output());
        ok(ns.command("ip").args(["link", "set", "v0", "up"]).output());
        ok(ns.command("ip").args(["link", "set", "v1", "up"]).output());
        let routes = table(&mut rng, 300, default);
        let adds: Vec<String> = routes
            .iter()
            .enumerate()
            .map(|(i, (net, len))| {
                format!("route add {}/{len} via {} dev v0", Ipv6Addr::from(*net), gateway(i))
            })
            .collect();
        let (_, err) = ip_batch(&ns, &adds);
        assert!(err.trim().is_empty(), "adding routes: {err}");
        let mut dsts = Vec::new();
        for &(net, len) in &routes {
            dsts.push(net);
            dsts.push(net | !prefix_mask6(len));
            if len > 3 {
                // Just outside: the neighbouring prefix of the same length.
                dsts.push(net ^ (1u128 << (128 - len as u32)));
            }
        }
        for _ in 0..300 {
            dsts.push((rng.u128() >> 3) | (1u128 << 125));
        }
        // Only 2000::/3 (no special addresses), each once.
        dsts.retain(|d| d >> 125 == 1);
        dsts.sort_unstable();
        dsts.dedup();
        let kernel = kernel_lookups(&ns, &dsts);
        let braid = router_lookups(&routes, &dsts);
        let diffs: Vec<String> = dsts
            .iter()
            .zip(kernel.iter().zip(&braid))
            .filter(|(_, (k, b))| k != b)
            .map(|(d, (k, b))| format!("{}: kernel {k:?}, braid {b:?}", Ipv6Addr::from(*d)))
            .take(20)
            .collect();
        assert!(diffs.is_empty(), "round {round}:\n{}", diffs.join("\n"));
        assert!(!default || kernel.iter().all(Option::is_some));
        assert!(default || kernel.iter().any(Option::is_none), "some lookups find no route");
        compared += dsts.len();
    }
    assert!(compared > 2000, "{compared} lookups compared");
}
