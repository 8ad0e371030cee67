//! One latency run: `count` packets, one every `interval`, each timed from
//! send to the return of its echo.
//!
//! The sender thread paces packets with [`crate::pacer`] on a fixed
//! schedule and stamps each with the send time just before `send`; the
//! receiver thread blocks in `recv` and takes the receive time right after
//! it returns. The RTT is the difference, so it includes both socket calls
//! and the whole path, like CALVIN's client-side measurement. A run ends
//! when every packet is back, or `wait` after the last send.

use crate::config::{payload_len_ok, ConfigError};
use crate::pacer::{wait_until, Schedule};
use crate::payload::ProbeHeader;
use crate::sockopt;
use crate::stats::{Arrival, SeqTracker};
use braid_packet::clock::monotonic_ns;
use serde::Serialize;
use std::io;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Largest UDP payload over IPv4.
pub const MAX_PAYLOAD: usize = 65_507;

#[derive(Clone, Debug)]
pub struct RttConfig {
    /// UDP payload bytes per packet (at least [`crate::payload::HEADER_LEN`]).
    pub payload_len: usize,
    /// Packets in the run.
    pub count: u64,
    /// Inter-packet delay.
    pub interval: Duration,
    /// How long to wait for late answers after the last send.
    pub wait: Duration,
    /// Spin margin of the pacer, in ns.
    pub spin_ns: u64,
    /// `SO_BUSY_POLL` time on the probe socket, if set.
    pub busy_poll_us: Option<u32>,
}

impl Default for RttConfig {
    fn default() -> RttConfig {
        RttConfig {
            payload_len: 256,
            count: 1000,
            interval: Duration::from_millis(5),
            wait: Duration::from_secs(1),
            spin_ns: crate::pacer::DEFAULT_SPIN_NS,
            busy_poll_us: None,
        }
    }
}

impl RttConfig {
    /// Check the settings, naming the one that is out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        payload_len_ok(self.payload_len)?;
        if self.count == 0 {
            return Err(ConfigError::ZeroCount);
        }
        Ok(())
    }
}

/// The outcome of one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RttRun {
    pub run: u32,
    pub payload_len: usize,
    /// Packets the kernel accepted.
    pub sent: u64,
    /// Packets whose `send` failed (e.g. `ECONNREFUSED` after an ICMP port
    /// unreachable: no echo server listening).
    pub send_errors: u64,
    /// ICMP port unreachable reports (`ECONNREFUSED`), seen by a send or by
    /// the receiver, whichever asked the socket first: nothing listens on
    /// the target port.
    pub refused: u64,
    pub received: u64,
    /// Packets of the run (`count`) that never came back.
    pub lost: u64,
    pub reordered: u64,
    pub duplicates: u64,
    /// Datagrams that were not this run's probe packets (late answers from
    /// an earlier run, foreign traffic).
    pub foreign: u64,
    /// RTT of each packet's first copy, in arrival order, ns.
    #[serde(skip)]
    pub rtt_ns: Vec<u64>,
    /// Wall time of the run, ns.
    pub duration_ns: u64,
}

/// Run one latency measurement on `sock`, which must be connected to the
/// echo server. `run` tags the packets (use a different value per run).
pub fn run_rtt(sock: &UdpSocket, cfg: &RttConfig, run: u32) -> io::Result<RttRun> {
    cfg.validate()?;
    sock.peer_addr()
        .map_err(|e| io::Error::new(e.kind(), format!("probe socket is not connected: {e}")))?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    if let Some(us) = cfg.busy_poll_us {
        sockopt::set_busy_poll(sock, us)?;
    }
    // Drop anything left over from an earlier run before starting.
    sock.set_nonblocking(true)?;
    let mut scratch = vec![0u8; MAX_PAYLOAD];
    while sock.recv(&mut scratch).is_ok() {}
    sock.set_nonblocking(false)?;

    // 0 while sending; then the time of the last send.
    let sender_done_ns = AtomicU64::new(0);
    let start = monotonic_ns() + 1_000_000;
    let schedule = Schedule { start_ns: start, interval_ns: cfg.interval.as_nanos() as u64 };

    let (sent, send_errors, rx) = std::thread::scope(|s| {
        let receiver = s.spawn(|| receive(sock, cfg, run, &sender_done_ns));
        let mut buf = vec![0u8; cfg.payload_len];
        let (mut sent, mut errors, mut refused) = (0u64, 0u64, 0u64);
        for seq in 0..cfg.count {
            wait_until(schedule.due(seq), cfg.spin_ns);
            let h = ProbeHeader { run, seq, sent_ns: monotonic_ns() };
            h.write(&mut buf).expect("payload_len >= HEADER_LEN was validated");
            match sock.send(&buf) {
                Ok(_) => sent += 1,
                Err(e) => {
                    errors += 1;
                    refused += u64::from(e.kind() == io::ErrorKind::ConnectionRefused);
                }
            }
        }
        sender_done_ns.store(monotonic_ns(), Ordering::Release);
        let rx = receiver.join().expect("receiver thread does not panic");
        (sent, (errors, refused), rx)
    });
    let (send_errors, send_refused) = send_errors;
    let (tracker, rtt_ns, foreign, recv_refused) = rx?;
    Ok(RttRun {
        run,
        payload_len: cfg.payload_len,
        sent,
        send_errors,
        refused: send_refused + recv_refused,
        received: tracker.received,
        // Failed sends are lost packets too.
        lost: tracker.lost(cfg.count),
        reordered: tracker.reordered,
        duplicates: tracker.duplicates,
        foreign: foreign + tracker.out_of_range,
        rtt_ns,
        duration_ns: monotonic_ns().saturating_sub(start),
    })
}

fn receive(
    sock: &UdpSocket,
    cfg: &RttConfig,
    run: u32,
    sender_done_ns: &AtomicU64,
) -> io::Result<(SeqTracker, Vec<u64>, u64, u64)> {
    let mut tracker = SeqTracker::new(cfg.count);
    let mut refused = 0u64;
    let mut rtts = Vec::with_capacity(cfg.count as usize);
    let mut foreign = 0u64;
    let mut buf = vec![0u8; MAX_PAYLOAD];
    let wait_ns = cfg.wait.as_nanos() as u64;
    loop {
        if tracker.complete() {
            break;
        }
        let done = sender_done_ns.load(Ordering::Acquire);
        if done != 0 && monotonic_ns() > done + wait_ns {
            break;
        }
        let len = match sock.recv(&mut buf) {
            Ok(len) => len,
            Err(e) => match e.kind() {
                // Timeout: look at the clock again.
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => continue,
                // An ICMP port unreachable came back for an earlier packet;
                // that packet is lost and shows as such.
                io::ErrorKind::ConnectionRefused => {
                    refused += 1;
                    continue;
                }
                _ => return Err(e),
            },
        };
        let now = monotonic_ns();
        match ProbeHeader::read(&buf[..len]) {
            Ok(h) if h.run == run => {
                if matches!(tracker.record(h.seq), Arrival::InOrder | Arrival::Reordered) {
                    rtts.push(now.saturating_sub(h.sent_ns));
                }
            }
            _ => foreign += 1,
        }
    }
    Ok((tracker, rtts, foreign, refused))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo::{run_echo, EchoConfig};
    use crate::payload::HEADER_LEN;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn invalid_settings_are_named() {
        let cfg = RttConfig { payload_len: 8, ..Default::default() };
        let e = cfg.validate().unwrap_err();
        assert_eq!(e, ConfigError::PayloadSize { size: 8, min: HEADER_LEN, max: MAX_PAYLOAD });
        assert!(e.to_string().contains("payload size 8"), "{e}");
        let cfg = RttConfig { count: 0, ..Default::default() };
        assert_eq!(cfg.validate().unwrap_err(), ConfigError::ZeroCount);
        let unconnected = UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = run_rtt(&unconnected, &RttConfig::default(), 1).unwrap_err();
        assert!(e.to_string().contains("not connected"), "{e}");
    }

    #[test]
    fn loopback_run_gets_every_packet_back_in_order() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(server.local_addr().unwrap()).unwrap();
        let stop = AtomicBool::new(false);
        let cfg = RttConfig {
            payload_len: 300,
            count: 200,
            interval: Duration::from_micros(500),
            wait: Duration::from_millis(500),
            ..Default::default()
        };
        let run = std::thread::scope(|s| {
            s.spawn(|| run_echo(&server, &EchoConfig { batch: 1, ..Default::default() }, &stop));
            let r = run_rtt(&client, &cfg, 7).unwrap();
            stop.store(true, Ordering::Relaxed);
            r
        });
        assert_eq!((run.sent, run.received, run.lost), (200, 200, 0));
        assert_eq!((run.reordered, run.duplicates, run.send_errors), (0, 0, 0));
        assert_eq!(run.rtt_ns.len(), 200);
        // Loopback RTTs are microseconds to (on a loaded VM) milliseconds,
        // never zero and never longer than the run.
        assert!(run.rtt_ns.iter().all(|&r| r > 0 && r < run.duration_ns));
        // 200 packets 0.5 ms apart take at least 99.5 ms.
        assert!(run.duration_ns >= 99_500_000, "{}", run.duration_ns);
    }

    #[test]
    fn no_server_means_all_lost_not_an_error() {
        // Bind then drop a socket to get a port nobody listens on.
        let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(port).unwrap();
        let cfg = RttConfig {
            count: 5,
            interval: Duration::from_millis(1),
            wait: Duration::from_millis(50),
            ..Default::default()
        };
        let run = run_rtt(&client, &cfg, 1).unwrap();
        assert_eq!(run.received, 0);
        assert_eq!(run.sent + run.send_errors, 5);
        assert_eq!(run.lost, 5);
        // The port unreachable reports are counted, whichever side of the
        // socket (send or receive) saw them.
        assert!(run.refused >= 1, "{run:?}");
    }
}
