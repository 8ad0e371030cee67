//! 64 B forwarding rate through one forwarding namespace, every forwarder
//! measured side by side in one run with the same generator and sink:
//! Linux IP forwarding, XDP fwd, AF_XDP fwd (copy-out, zero-copy rx, and
//! shared UMEM), AF_PACKET fwd.
//!
//! ```text
//!  gen ns [g] ---- [fl] fwd ns [fr] ---- [s] sink ns
//! ```
//! The generator blasts one prebuilt 64 B UDP frame with AF_PACKET
//! `sendmmsg` (qdisc bypass) from a thread pinned to CPU 0; user-space
//! forwarders run on a thread pinned to CPU 1 and spin; both run at nice
//! -20 so other work on the machine does not take their CPU. The sink is braid's
//! XDP firewall with default drop on `s`, whose counters give the
//! delivered rate (and the XDP program on `s` is what lets XDP_REDIRECT
//! into `fr` deliver at all). Kernel forwarding (Linux, XDP) runs in the
//! softirq of the sending CPU, so it competes with the generator: the
//! table also gives the whole machine's CPU time per delivered packet.
//!
//! Run as root: `cargo bench -p braid-io --bench live_fwd` (env
//! `BRAID_BENCH_SECS`, default 3, sets the measuring time per forwarder;
//! `BRAID_BENCH_ROUNDS`, default 3, how many interleaved rounds).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_io::af_packet::{AfPacketConfig, AfPacketPort};
use braid_io::af_xdp::{AfXdpConfig, AfXdpPort, WaitMode};
use braid_io::netns::{self, LinkGuard, NetnsGuard};
use braid_io::xdp::{xdp_built, AttachMode, FwAction, XdpChain, XdpNf, XdpProgram};
use braid_io::Port;
use braid_packet::wire::build::FrameSpec;
use braid_packet::wire::MacAddr;
use braid_packet::{Batch, Packet};

const GEN_CPU: usize = 0;
const FWD_CPU: usize = 1;

/// Pin the calling thread to `cpu` and give it nice -20, so the
/// generator and the forwarder keep their CPU against other work on the
/// machine (nice, not a real-time policy: a spinning real-time thread
/// would starve everything else on its CPU).
#[allow(unsafe_code)] // sched_setaffinity and setpriority, kernel boundaries
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes
    // within it; sched_setaffinity(0) and setpriority(PRIO_PROCESS, tid)
    // affect the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -20);
    }
}

/// Busy and total jiffies per CPU line of /proc/stat ("cpu", "cpu0", ...).
fn cpu_times() -> Vec<(String, u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("cpu"))
        .map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next().unwrap_or("").to_string();
            let v: Vec<u64> = it.filter_map(|x| x.parse().ok()).collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (name, total - idle, total)
        })
        .collect()
}

fn cpu_mhz() -> f64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

struct Bed {
    gen: NetnsGuard,
    fwd: NetnsGuard,
    sink: NetnsGuard,
    _left: LinkGuard,
    _right: LinkGuard,
    g: String,
    fl: String,
    fr: String,
    s: String,
}

impl Bed {
    fn new() -> Bed {
        let gen = NetnsGuard::create(&netns::unique_name("bg")).unwrap();
        let fwd = NetnsGuard::create(&netns::unique_name("bf")).unwrap();
        let sink = NetnsGuard::create(&netns::unique_name("bs")).unwrap();
        let (g, fl, fr, s) = (
            netns::unique_ifname("g"),
            netns::unique_ifname("fl"),
            netns::unique_ifname("fr"),
            netns::unique_ifname("s"),
        );
        let left = LinkGuard::veth_between(&g, Some(gen.name()), &fl, Some(fwd.name())).unwrap();
        let right = LinkGuard::veth_between(&fr, Some(fwd.name()), &s, Some(sink.name())).unwrap();
        netns::add_addr(Some(gen.name()), &g, "10.61.1.1/24").unwrap();
        netns::add_addr(Some(fwd.name()), &fl, "10.61.1.254/24").unwrap();
        netns::add_addr(Some(fwd.name()), &fr, "10.61.2.254/24").unwrap();
        netns::add_addr(Some(sink.name()), &s, "10.61.2.1/24").unwrap();
        for (ns, d) in [(&gen, &g), (&fwd, &fl), (&fwd, &fr), (&sink, &s)] {
            netns::set_up(Some(ns.name()), d).unwrap();
            netns::tx_checksum_off(Some(ns.name()), d).unwrap();
        }
        let s_mac = netns::mac_addr(Some(sink.name()), &s).unwrap();
        netns::add_neigh(Some(fwd.name()), &fr, "10.61.2.1", &s_mac).unwrap();
        Bed { gen, fwd, sink, _left: left, _right: right, g, fl, fr, s }
    }

    fn frame(&self, dst_mac: &str) -> Vec<u8> {
        let mut spec = FrameSpec::udp_frame_len(
            (Ipv4Addr::new(10, 61, 1, 1), 9000),
            (Ipv4Addr::new(10, 61, 2, 1), 9),
            64,
        );
        spec.src_mac =
            netns::mac_addr(Some(self.gen.name()), &self.g).unwrap().parse::<MacAddr>().unwrap();
        spec.dst_mac = dst_mac.parse::<MacAddr>().unwrap();
        spec.build()
    }
}

struct Row {
    name: &'static str,
    offered: f64,
    delivered: f64,
    cycles_per_pkt: f64,
}

/// Run the generator for `secs` against whatever forwarder is in place;
/// returns offered and delivered packets per second and CPU figures.
fn measure(
    bed: &Bed,
    name: &'static str,
    frame: &[u8],
    sink: &mut XdpProgram,
    secs: f64,
) -> Option<Row> {
    // BRAID_BENCH_ONLY=substring runs only the matching forwarders (for
    // profiling one of them with perf).
    if let Ok(only) = std::env::var("BRAID_BENCH_ONLY") {
        if !name.contains(only.as_str()) {
            return None;
        }
    }
    let g = bed.g.clone();
    let mut port = bed
        .gen
        .enter(move || {
            let mut c = AfPacketConfig::new(&g);
            c.batch_size = 64;
            c.promiscuous = false;
            c.qdisc_bypass = true;
            AfPacketPort::open(&c).unwrap()
        })
        .unwrap();
    let frame = frame.to_vec();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let gen = std::thread::spawn(move || {
        pin(GEN_CPU);
        let mut batch = Batch::with_capacity(64);
        while !stop2.load(Ordering::Relaxed) {
            for _ in 0..64 {
                batch.push(Packet::from_bytes(&frame));
            }
            let _ = port.send(&mut batch);
        }
        port.stats().tx_packets
    });
    std::thread::sleep(Duration::from_millis(500)); // warm-up
    let rx0 = sink.counters().unwrap().rx_packets;
    let cpu_a = cpu_times();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let rx1 = sink.counters().unwrap().rx_packets;
    let cpu_b = cpu_times();
    let dt = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let sent = gen.join().unwrap();
    let delivered = (rx1 - rx0) as f64 / dt;
    let total_s = secs + 0.5;
    let all_busy_s = {
        let a = cpu_a.iter().find(|c| c.0 == "cpu").map(|c| c.1).unwrap_or(0);
        let b = cpu_b.iter().find(|c| c.0 == "cpu").map(|c| c.1).unwrap_or(0);
        (b - a) as f64 / 100.0
    };
    Some(Row {
        name,
        offered: sent as f64 / total_s,
        delivered,
        cycles_per_pkt: all_busy_s * cpu_mhz() * 1e6 / (rx1 - rx0).max(1) as f64,
    })
}

/// A user-space forwarder thread pinned to FWD_CPU, one direction.
fn spin_forward<A: Port + 'static, B: Port + 'static>(
    mut a: A,
    mut b: B,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<(A, B)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let h = std::thread::spawn(move || {
        pin(FWD_CPU);
        let mut batch = Batch::with_capacity(64);
        while !s.load(Ordering::Relaxed) {
            if a.recv(&mut batch, 64).unwrap_or(0) > 0 {
                let _ = b.send(&mut batch);
            } else {
                let _ = a.wait(Duration::from_millis(1));
                let _ = b.flush();
            }
        }
        (a, b)
    });
    (stop, h)
}

/// In-kernel cost of each XDP program per frame (BPF_PROG_TEST_RUN with
/// many repeats), beside the do-nothing `pass` program as baseline.
fn program_costs() {
    let small = FrameSpec::udp_frame_len(
        (Ipv4Addr::new(10, 0, 0, 1), 9000),
        (Ipv4Addr::new(10, 0, 0, 2), 9),
        64,
    )
    .build();
    let large = FrameSpec::udp_frame_len(
        (Ipv4Addr::new(10, 0, 0, 1), 9000),
        (Ipv4Addr::new(10, 0, 0, 2), 9),
        1414,
    )
    .build();
    println!("\nIn-kernel cost per frame (BPF_PROG_TEST_RUN, 200000 repeats, mean ns per run)\n");
    println!("| program | 64 B frame ns | vs pass | 1414 B frame ns | vs pass |");
    println!("|---|---:|---:|---:|---:|");
    let mut base = (1.0, 1.0);
    for nf in [XdpNf::Pass, XdpNf::Fwd, XdpNf::Firewall, XdpNf::Xor, XdpNf::Steer] {
        let mut p = XdpProgram::load(nf).unwrap();
        match nf {
            XdpNf::Xor => p.set_xor_key(&[0x5a; 16]).unwrap(),
            XdpNf::Firewall => {
                // 1000 exact rules that do not match, so every lookup runs
                // to the default.
                for i in 0..1000u32 {
                    let rule = braid_io::xdp::FwRule {
                        src: Ipv4Addr::from(0x0a63_0000 + i),
                        dst: Ipv4Addr::new(10, 0, 0, 2),
                        src_port: 1,
                        dst_port: 2,
                        proto: 17,
                    };
                    p.add_fw_rule(&rule, FwAction::Drop).unwrap();
                }
            }
            _ => {}
        }
        let ns = |f: &[u8], p: &mut XdpProgram| {
            p.test_run(f, 200_000).unwrap().duration.as_nanos() as f64
        };
        let (a, b) = (ns(&small, &mut p), ns(&large, &mut p));
        if nf == XdpNf::Pass {
            base = (a.max(1.0), b.max(1.0));
        }
        println!("| {} | {a:.0} | {:.2}x | {b:.0} | {:.2}x |", nf.name(), a / base.0, b / base.1);
    }
    // The chain program (several kernel NFs on one host): the same work
    // as separate programs plus one tail call per stage. Test runs arrive
    // on `lo`, so the path is set for its ifindex.
    let lo = netns::ifindex("lo").unwrap();
    for stages in [
        &[XdpNf::Fwd][..],
        &[XdpNf::Firewall, XdpNf::Xor][..],
        &[XdpNf::Firewall, XdpNf::Xor, XdpNf::Fwd][..],
    ] {
        let mut c = XdpChain::load(stages).unwrap();
        for (slot, nf) in stages.iter().enumerate() {
            if *nf == XdpNf::Xor {
                c.set_xor_key(slot, &[0x5a; 16]).unwrap();
            }
        }
        let order: Vec<usize> = (0..stages.len()).collect();
        c.set_path(lo, &order).unwrap();
        let ns =
            |f: &[u8], c: &mut XdpChain| c.test_run(f, 200_000).unwrap().duration.as_nanos() as f64;
        let (a, b) = (ns(&small, &mut c), ns(&large, &mut c));
        let name: Vec<&str> = stages.iter().map(|n| n.name()).collect();
        println!(
            "| chain {} | {a:.0} | {:.2}x | {b:.0} | {:.2}x |",
            name.join("+"),
            a / base.0,
            b / base.1
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("live_fwd: bench");
        return;
    }
    if !netns::is_root() || !xdp_built() {
        eprintln!("live_fwd: skipped (needs root and the XDP programs built)");
        return;
    }
    let secs: f64 =
        std::env::var("BRAID_BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(3.0);
    let bed = Bed::new();
    let s_name = bed.s.clone();
    let mut sink = bed
        .sink
        .enter(move || {
            let mut p = XdpProgram::load(XdpNf::Firewall).unwrap();
            p.set_fw_default(FwAction::Drop).unwrap();
            p.attach(&s_name, AttachMode::Native).unwrap();
            p
        })
        .unwrap();
    let fl_mac = netns::mac_addr(Some(bed.fwd.name()), &bed.fl).unwrap();
    let s_mac = netns::mac_addr(Some(bed.sink.name()), &bed.s).unwrap();
    let routed = bed.frame(&fl_mac); // to the forwarder's MAC, for IP forwarding
    let bridged = bed.frame(&s_mac); // to the sink's MAC, for L2 forwarders
                                     // Rounds interleave the forwarders so drifting load on the machine
                                     // hits them alike; each row reports medians over the rounds, and the
                                     // ratio is taken against Linux forwarding of the same round.
    let rounds: usize =
        std::env::var("BRAID_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    let mut all: Vec<Vec<Row>> = Vec::new();
    for _ in 0..rounds {
        let mut rows = Vec::new();

        // Linux IP forwarding.
        netns::enable_forwarding(Some(bed.fwd.name())).unwrap();
        rows.extend(measure(&bed, "Linux IP forwarding", &routed, &mut sink, secs));
        netns::set_forwarding(Some(bed.fwd.name()), false).unwrap();

        // XDP fwd.
        {
            let (fl, fr) = (bed.fl.clone(), bed.fr.clone());
            let _prog = bed
                .fwd
                .enter(move || {
                    let mut p = XdpProgram::load(XdpNf::Fwd).unwrap();
                    p.set_forward_by_name(&fl, &fr).unwrap();
                    p.attach(&fl, AttachMode::Native).unwrap();
                    p
                })
                .unwrap();
            rows.extend(measure(&bed, "XDP fwd (native, devmap)", &bridged, &mut sink, secs));
        }

        // AF_XDP fwd, copy-out and zero-copy rx.
        for (name, zc) in [
            ("AF_XDP fwd (copy mode, copy-out rx)", false),
            ("AF_XDP fwd (copy mode, zero-copy rx)", true),
        ] {
            let (fl, fr) = (bed.fl.clone(), bed.fr.clone());
            let (a, b) = bed
                .fwd
                .enter(move || {
                    let cfg = |i: &str| {
                        let mut c = AfXdpConfig::new(i);
                        c.wait = WaitMode::Busy;
                        c.batch_size = 64;
                        c.rx_zero_copy = zc;
                        c
                    };
                    (AfXdpPort::open(&cfg(&fl)).unwrap(), AfXdpPort::open(&cfg(&fr)).unwrap())
                })
                .unwrap();
            let (stop, h) = spin_forward(a, b);
            rows.extend(measure(&bed, name, &bridged, &mut sink, secs));
            stop.store(true, Ordering::Relaxed);
            let (a, b) = h.join().unwrap();
            eprintln!(
                "{name}: rx port {:?} {:?}; tx port {:?}",
                a.stats(),
                a.xsk_stats(),
                b.stats()
            );
        }

        // AF_XDP fwd over one shared UMEM: no copy in user space at all.
        {
            let (fl, fr) = (bed.fl.clone(), bed.fr.clone());
            let (a, b) = bed
                .fwd
                .enter(move || {
                    let cfg = |i: &str| {
                        let mut c = AfXdpConfig::new(i);
                        c.wait = WaitMode::Busy;
                        c.batch_size = 64;
                        c.rx_zero_copy = true;
                        c.ring_size = 2048;
                        c.frame_count = 8192;
                        c
                    };
                    let mut a = AfXdpPort::open(&cfg(&fl)).unwrap();
                    let b = AfXdpPort::open_shared(&cfg(&fr), &mut a).unwrap();
                    (a, b)
                })
                .unwrap();
            let (stop, h) = spin_forward(a, b);
            rows.extend(measure(
                &bed,
                "AF_XDP fwd (copy mode, shared UMEM, zero-copy rx)",
                &bridged,
                &mut sink,
                secs,
            ));
            stop.store(true, Ordering::Relaxed);
            let (a, b) = h.join().unwrap();
            eprintln!(
                "shared UMEM: rx port {:?} {:?}; tx port {:?}",
                a.stats(),
                a.xsk_stats(),
                b.stats()
            );
        }

        // AF_PACKET fwd.
        {
            let (fl, fr) = (bed.fl.clone(), bed.fr.clone());
            let (a, b) = bed
                .fwd
                .enter(move || {
                    let mut ca = AfPacketConfig::new(&fl);
                    ca.batch_size = 64;
                    let mut cb = AfPacketConfig::new(&fr);
                    cb.batch_size = 64;
                    cb.qdisc_bypass = true;
                    (AfPacketPort::open(&ca).unwrap(), AfPacketPort::open(&cb).unwrap())
                })
                .unwrap();
            let (stop, h) = spin_forward(a, b);
            rows.extend(measure(
                &bed,
                "AF_PACKET fwd (recvmmsg/sendmmsg)",
                &bridged,
                &mut sink,
                secs,
            ));
            stop.store(true, Ordering::Relaxed);
            h.join().unwrap();
        }

        all.push(rows);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("\n64 B UDP frames, one forwarding namespace, {rounds} rounds x {secs} s per forwarder, generator on CPU {GEN_CPU}, user-space forwarder on CPU {FWD_CPU}; medians over rounds\n");
    println!(
        "load average at the end (other work on the machine competes for the 2 CPUs): {}\n",
        load.trim()
    );
    println!("| forwarder | offered Mpps | delivered Mpps | vs first row (same round) | min..max vs first row | cycles/pkt (whole machine) |");
    println!("|---|---:|---:|---:|---:|---:|");
    let median = |mut v: Vec<f64>| -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let names: Vec<&'static str> =
        all.first().map(|r| r.iter().map(|x| x.name).collect()).unwrap_or_default();
    for name in names {
        let pick = |f: &dyn Fn(&Row) -> f64| -> Vec<f64> {
            all.iter().filter_map(|round| round.iter().find(|r| r.name == name).map(f)).collect()
        };
        let ratios: Vec<f64> = all
            .iter()
            .filter_map(|round| {
                let base = round.first()?.delivered.max(1.0);
                round.iter().find(|r| r.name == name).map(|r| r.delivered / base)
            })
            .collect();
        let lo = ratios.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().cloned().fold(0.0, f64::max);
        println!(
            "| {} | {:.3} | {:.3} | {:.2}x | {:.2}..{:.2} | {:.0} |",
            name,
            median(pick(&|r| r.offered)) / 1e6,
            median(pick(&|r| r.delivered)) / 1e6,
            median(ratios.clone()),
            lo,
            hi,
            median(pick(&|r| r.cycles_per_pkt)),
        );
    }
    drop(sink);
    program_costs();
}
