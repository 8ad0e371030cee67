//! An idle `poll` worker costs next to nothing and still reacts at once:
//! with no traffic and nothing to tick it sleeps until a packet or a
//! command (ticking about once a second, not every tick interval); a
//! packet wakes it; an NF that holds packets (`delay`) still gets its
//! ticks on time.
//!
//! The ports are unix datagram sockets: a real descriptor-backed port (one
//! datagram, one frame), like AF_PACKET without needing root.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use braid_dataplane::{Endpoint, Graph, Idle, Worker, WorkerConfig, WorkerHandle};
use braid_io::{Port, PortError, PortStats, WaitReadiness};
use braid_packet::{Batch, Packet};

struct DgramPort {
    sock: UnixDatagram,
    stats: PortStats,
}

impl DgramPort {
    fn new(sock: UnixDatagram) -> DgramPort {
        sock.set_nonblocking(true).unwrap();
        DgramPort { sock, stats: PortStats::default() }
    }
}

impl Port for DgramPort {
    fn name(&self) -> String {
        "dgram".into()
    }

    fn recv(&mut self, batch: &mut Batch, max: usize) -> Result<usize, PortError> {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while n < max {
            match self.sock.recv(&mut buf) {
                Ok(len) => {
                    batch.push(Packet::from_bytes(&buf[..len]));
                    self.stats.rx_packets += 1;
                    n += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(source) => {
                    return Err(PortError::Os { what: "recv on the test socket".into(), source })
                }
            }
        }
        Ok(n)
    }

    fn send(&mut self, batch: &mut Batch) -> Result<usize, PortError> {
        let mut n = 0;
        for p in batch.drain() {
            match self.sock.send(p.data()) {
                Ok(_) => n += 1,
                Err(_) => self.stats.tx_dropped += 1,
            }
        }
        self.stats.tx_packets += n as u64;
        Ok(n)
    }

    fn prepare_wait(&mut self, fds: &mut Vec<RawFd>) -> WaitReadiness {
        fds.push(self.sock.as_raw_fd());
        WaitReadiness::Descriptors
    }

    fn stats(&self) -> PortStats {
        self.stats
    }
}

/// A worker running `kind` between two datagram ports; the test's ends
/// of the input and the output.
fn start(
    kind: &str,
    params: &str,
) -> (WorkerHandle, std::thread::JoinHandle<()>, UnixDatagram, UnixDatagram) {
    let params: braid_nf::Params = serde_yaml_ng::from_str(params).unwrap();
    let nf = braid_nf::build(kind, &params).unwrap();
    let graph = Graph::new(vec![(kind.into(), nf)], 0);
    let mut cfg = WorkerConfig::new(format!("idle-{kind}"));
    cfg.idle = Idle::Poll;
    cfg.tick_interval = Duration::from_millis(10);
    let (w_in, t_in) = UnixDatagram::pair().unwrap();
    let (w_out, t_out) = UnixDatagram::pair().unwrap();
    let (mut w, h) = Worker::new(cfg, graph).unwrap();
    w.add_port(Box::new(DgramPort::new(w_in)), Some(Endpoint::Stage { stage: 0, gate: 0 }))
        .unwrap();
    w.add_port(Box::new(DgramPort::new(w_out)), None).unwrap();
    w.graph_mut().link(0, 1, Endpoint::Port(1)).unwrap();
    let t = w.spawn().unwrap();
    let t = std::thread::spawn(move || {
        let r = t.join().unwrap();
        assert!(r.error.is_none(), "{:?}", r.error);
    });
    t_out.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (h, t, t_in, t_out)
}

/// Send one frame in, wait for it out; how long that took.
fn round_trip(t_in: &UnixDatagram, t_out: &UnixDatagram) -> Duration {
    let frame = [0x5au8; 64];
    let t = Instant::now();
    t_in.send(&frame).unwrap();
    let mut buf = [0u8; 128];
    let n = t_out.recv(&mut buf).expect("the frame came out within 5 s");
    assert_eq!(&buf[..n], &frame[..]);
    t.elapsed()
}

#[test]
fn idle_worker_sleeps_past_its_ticks_and_wakes_on_a_packet() {
    let (h, t, t_in, t_out) = start("fwd", "{}");
    // Traffic, then quiet: one tick publishes it, then nothing needs one.
    round_trip(&t_in, &t_out);
    std::thread::sleep(Duration::from_millis(100));
    let c0 = h.counters().unwrap().looped;
    std::thread::sleep(Duration::from_millis(600));
    let c1 = h.counters().unwrap().looped;
    // With a tick every 10 ms: about 60 ticks and as many loop turns. The
    // first `counters` command is one tick's worth of news; nothing else.
    let (ticks, turns) = (c1.ticks - c0.ticks, c1.turns - c0.turns);
    assert!(ticks <= 2, "{ticks} ticks in 600 ms of idleness");
    assert!(turns <= 6, "{turns} loop turns in 600 ms of idleness");
    // Asleep, it still reacts to a packet at once (not at its next tick).
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(50));
        worst = worst.max(round_trip(&t_in, &t_out));
    }
    eprintln!("slowest of 5 round trips through an idle worker: {worst:?}");
    assert!(worst < Duration::from_millis(200), "slowest round trip {worst:?}");
    h.stop().unwrap();
    t.join().unwrap();
}

#[test]
fn idle_worker_ticks_on_time_while_an_nf_holds_packets() {
    let (h, t, t_in, t_out) = start("delay", "{ delay: 30ms }");
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..3 {
        // Released by a tick: 30 ms plus up to one 10 ms tick, not the
        // idle worker's one-second tick.
        let rt = round_trip(&t_in, &t_out);
        assert!(rt >= Duration::from_millis(30), "left after {rt:?}");
        assert!(rt < Duration::from_millis(500), "left after {rt:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    h.stop().unwrap();
    t.join().unwrap();
}

#[test]
fn a_paused_worker_sleeps_until_a_command() {
    let (h, t, t_in, t_out) = start("fwd", "{}");
    round_trip(&t_in, &t_out);
    h.pause().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let c0 = h.counters().unwrap().looped;
    std::thread::sleep(Duration::from_millis(600));
    let c1 = h.counters().unwrap().looped;
    // Paused, it used to tick every 10 ms (about 60 here): now only the
    // tick after the `counters` command (news to publish).
    let ticks = c1.ticks - c0.ticks;
    assert!(ticks <= 2, "{ticks} ticks in 600 ms paused");
    // A command still gets its answer at once, and resuming forwards.
    let t0 = Instant::now();
    h.resume().unwrap();
    assert!(t0.elapsed() < Duration::from_millis(500), "resume took {:?}", t0.elapsed());
    round_trip(&t_in, &t_out);
    h.stop().unwrap();
    t.join().unwrap();
}

#[test]
fn a_paused_worker_still_ticks_while_an_nf_holds_packets() {
    let (h, t, t_in, t_out) = start("delay", "{ delay: 30ms }");
    // One packet into the delay line, then pause before it is due: the
    // tick that releases it still comes on time while paused.
    let frame = [0x5au8; 64];
    let t0 = Instant::now();
    t_in.send(&frame).unwrap();
    // The worker takes it within a turn; wait until the NF counted it.
    while h.snapshot().stages[0].counters.packets_in == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "the packet never reached the NF");
        std::thread::sleep(Duration::from_millis(1));
    }
    h.pause().unwrap();
    let mut buf = [0u8; 128];
    let n = t_out.recv(&mut buf).expect("released while paused");
    assert_eq!(&buf[..n], &frame[..]);
    let rt = t0.elapsed();
    assert!(rt < Duration::from_millis(500), "left after {rt:?}");
    h.resume().unwrap();
    h.stop().unwrap();
    t.join().unwrap();
}

/// Two workers joined by an in-process channel (as `--mapping threads`
/// builds them), `fwd` on each; datagram ports at the two ends.
fn start_threads(
) -> (Vec<WorkerHandle>, Vec<std::thread::JoinHandle<()>>, UnixDatagram, UnixDatagram) {
    start_threads_with(Idle::Poll)
}

fn start_threads_with(
    idle: Idle,
) -> (Vec<WorkerHandle>, Vec<std::thread::JoinHandle<()>>, UnixDatagram, UnixDatagram) {
    let (w_in, t_in) = UnixDatagram::pair().unwrap();
    let (w_out, t_out) = UnixDatagram::pair().unwrap();
    let (a_side, b_side) = braid_io::channel::channel_pair("idle-ab", 4096);
    let mut handles = Vec::new();
    let mut threads = Vec::new();
    let ports: [(Box<dyn Port>, Box<dyn Port>); 2] = [
        (Box::new(DgramPort::new(w_in)), Box::new(a_side)),
        (Box::new(b_side), Box::new(DgramPort::new(w_out))),
    ];
    for (k, (up, down)) in ports.into_iter().enumerate() {
        let nf = braid_nf::build("fwd", &braid_nf::Params::Null).unwrap();
        let graph = Graph::chain(vec![(format!("f{k}"), nf)], 2, 0, 1).unwrap();
        let entries = [graph.entry(0, 1), graph.entry(1, 0)];
        let mut cfg = WorkerConfig::new(format!("idle-t{k}"));
        cfg.idle = idle;
        let (mut w, h) = Worker::new(cfg, graph).unwrap();
        w.add_port(up, Some(entries[0])).unwrap();
        w.add_port(down, Some(entries[1])).unwrap();
        let t = w.spawn().unwrap();
        threads.push(std::thread::spawn(move || {
            let r = t.join().unwrap();
            assert!(r.error.is_none(), "{:?}", r.error);
        }));
        handles.push(h);
    }
    t_out.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (handles, threads, t_in, t_out)
}

/// An idle chain of two workers joined by a channel sleeps (the channel
/// ends have eventfds): loop turns and ticks stay near zero, where a
/// channel without a wake-up spun (hundreds of thousands of turns); a
/// packet after the idle time crosses both workers at once.
#[test]
fn an_idle_chain_of_threads_sleeps_and_a_packet_still_crosses() {
    let (hs, ts, t_in, t_out) = start_threads();
    round_trip(&t_in, &t_out);
    std::thread::sleep(Duration::from_millis(100));
    let c0: Vec<_> = hs.iter().map(|h| h.counters().unwrap().looped).collect();
    std::thread::sleep(Duration::from_millis(600));
    let c1: Vec<_> = hs.iter().map(|h| h.counters().unwrap().looped).collect();
    for (k, (a, b)) in c0.iter().zip(&c1).enumerate() {
        let (ticks, turns) = (b.ticks - a.ticks, b.turns - a.turns);
        assert!(ticks <= 2, "worker {k}: {ticks} ticks in 600 ms of idleness");
        assert!(turns <= 6, "worker {k}: {turns} loop turns in 600 ms of idleness");
    }
    let mut times = Vec::new();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(20));
        times.push(round_trip(&t_in, &t_out));
    }
    times.sort();
    eprintln!(
        "through 2 idle workers joined by a channel: median {:?}, slowest {:?} of 20",
        times[10], times[19]
    );
    assert!(times[19] < Duration::from_millis(200), "slowest {:?}", times[19]);
    for h in &hs {
        h.stop().unwrap();
    }
    for t in ts {
        t.join().unwrap();
    }
}

/// This process's user + system CPU time (clock ticks of 10 ms), from
/// `/proc/self/stat`.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Wake-up latency through an idle chain of two workers joined by a
/// channel (idle policy `poll`: both asleep, the channel's eventfd wakes
/// the second), side by side with the same chain busy-polling (`busy`:
/// what channel workers did before channels had a wake-up, since their
/// waits could not sleep) and the process's CPU time meanwhile. A round
/// trip is datagram in -> worker 0 -> channel -> worker 1 -> datagram
/// out, 5 ms apart. docs/benchmarks.md ("Threads chains: channel
/// wake-ups"):
/// `cargo test --release -p braid-dataplane --test idle measure -- --ignored --nocapture`
#[test]
#[ignore]
fn measure_wake_up_through_two_idle_workers() {
    const N: usize = 400;
    for round in 0..2 {
        for (name, idle) in [("poll (sleeps)", Idle::Poll), ("busy (spins)", Idle::Busy)] {
            let (hs, ts, t_in, t_out) = start_threads_with(idle);
            for _ in 0..10 {
                round_trip(&t_in, &t_out);
            }
            let (c0, w0) = (cpu_ticks(), Instant::now());
            let mut times = Vec::with_capacity(N);
            for _ in 0..N {
                std::thread::sleep(Duration::from_millis(5));
                times.push(round_trip(&t_in, &t_out));
            }
            let (cpu, wall) = ((cpu_ticks() - c0) as f64 / 100.0, w0.elapsed().as_secs_f64());
            times.sort();
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            eprintln!(
                "round {round} {name:<14} p50 {:>7.1} us  p90 {:>7.1} us  p99 {:>7.1} us  max {:>8.1} us  CPU {:.2} s per s",
                us(times[N / 2]),
                us(times[N * 9 / 10]),
                us(times[N * 99 / 100]),
                us(times[N - 1]),
                cpu / wall
            );
            for h in &hs {
                h.stop().unwrap();
            }
            for t in ts {
                t.join().unwrap();
            }
        }
    }
}
