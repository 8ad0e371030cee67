//! The maximum lossless rate: the highest offered packet rate at which
//! every packet comes back, none reordered (CALVIN's bandwidth metric, in
//! the style of an RFC 2544 binary search).
//!
//! Each step offers a fixed rate for a bounded time (`step`, default 1 s),
//! sending paced `sendmmsg` batches, then waits `drain` for stragglers. A
//! step passes when nothing is lost and nothing is reordered.
//!
//! The search:
//! 1. a first step at `max_rate` gives the peak *received* rate and the
//!    highest rate the sender actually reaches; if it passes, that rate is
//!    the answer (the generator, not the path, is the limit);
//! 2. a step at `min_rate`; if it fails the answer is 0;
//! 3. binary search between the last passing and the first failing rate
//!    until the bracket is narrower than `precision` of its upper end, or
//!    `max_steps` steps have run.
//!
//! The answer is the *achieved* send rate of the best passing step, so a
//! sender that falls behind its target never inflates the result.
//!
//! Pacing sleeps between batches rather than spinning (`spin_ns` 0 by
//! default): on a small machine the probe shares CPUs with the path under
//! test, and a spinning sender would steal them.

use crate::config::{payload_len_ok, ConfigError};
use crate::mmsg::MsgBatch;
use crate::pacer::wait_until;
use crate::payload::{ProbeHeader, HEADER_LEN};
use crate::sockopt;
use crate::stats::SeqTracker;
use braid_packet::clock::monotonic_ns;
use serde::Serialize;
use std::io;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct ThroughputConfig {
    pub payload_len: usize,
    /// Sending time of each step.
    pub step: Duration,
    /// Waiting time for late packets after each step.
    pub drain: Duration,
    /// Lowest rate tried, packets/s.
    pub min_rate: u64,
    /// Highest rate tried, packets/s.
    pub max_rate: u64,
    /// Stop when `(hi - lo) <= precision * hi`.
    pub precision: f64,
    /// Hard bound on the number of steps.
    pub max_steps: u32,
    /// Packets per `sendmmsg`/`recvmmsg`.
    pub batch: usize,
    /// Pacer spin margin in ns (0 = always sleep).
    pub spin_ns: u64,
}

impl Default for ThroughputConfig {
    fn default() -> ThroughputConfig {
        ThroughputConfig {
            payload_len: 256,
            step: Duration::from_secs(1),
            drain: Duration::from_millis(200),
            min_rate: 1000,
            max_rate: 2_000_000,
            precision: 0.02,
            max_steps: 16,
            batch: 32,
            spin_ns: 0,
        }
    }
}

impl ThroughputConfig {
    /// Check the settings, naming the one that is out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        payload_len_ok(self.payload_len)?;
        if self.min_rate == 0 || self.min_rate > self.max_rate {
            return Err(ConfigError::Rates { min: self.min_rate, max: self.max_rate });
        }
        if !(self.precision > 0.0 && self.precision < 1.0) {
            return Err(ConfigError::Precision(self.precision));
        }
        if self.step.is_zero() {
            return Err(ConfigError::ZeroStep);
        }
        if self.max_steps < 2 {
            return Err(ConfigError::MaxSteps(self.max_steps));
        }
        if self.batch == 0 || self.batch > 1024 {
            return Err(ConfigError::Batch(self.batch));
        }
        Ok(())
    }
}

/// One step of the search.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub offered_pps: u64,
    /// Packets the kernel accepted (a slow sender stops at the end of the
    /// step, so this can be less than offered rate x step time).
    pub sent: u64,
    pub send_errors: u64,
    /// Rate the sender actually achieved.
    pub send_pps: f64,
    pub received: u64,
    /// Receive rate between the first and the last answer.
    pub rx_pps: f64,
    pub lost: u64,
    pub reordered: u64,
    pub duplicates: u64,
    pub lossless: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ThroughputResult {
    pub payload_len: usize,
    /// Achieved send rate of the best step with no loss and no reordering.
    pub max_lossless_pps: f64,
    /// The same in UDP payload megabits per second (what iperf reports).
    pub max_lossless_mbps: f64,
    /// Highest receive rate seen in any step (lossy ones included).
    pub peak_rx_pps: f64,
    /// Why the search stopped.
    pub termination: String,
    pub steps: Vec<Step>,
}

/// Run the search on `sock` (connected to the echo server). `run_base`
/// tags step `i` with run id `run_base + i`.
pub fn search(
    sock: &UdpSocket,
    cfg: &ThroughputConfig,
    run_base: u32,
) -> io::Result<ThroughputResult> {
    cfg.validate()?;
    sock.peer_addr()
        .map_err(|e| io::Error::new(e.kind(), format!("probe socket is not connected: {e}")))?;
    sockopt::set_buffers(sock, 4 << 20)?;
    let mut steps: Vec<Step> = Vec::new();
    let step_at = |rate: u64, steps: &mut Vec<Step>| -> io::Result<Step> {
        let s = run_step(sock, cfg, rate, run_base.wrapping_add(steps.len() as u32))?;
        steps.push(s.clone());
        Ok(s)
    };

    let blast = step_at(cfg.max_rate, &mut steps)?;
    let (best, termination) = if blast.lossless {
        (
            blast.send_pps,
            format!("lossless at the highest rate tried ({} pps offered)", cfg.max_rate),
        )
    } else {
        let floor = step_at(cfg.min_rate, &mut steps)?;
        if !floor.lossless {
            (0.0, format!("loss or reordering even at the minimum rate ({} pps)", cfg.min_rate))
        } else {
            let mut lo = cfg.min_rate;
            let mut hi = (blast.send_pps as u64).clamp(cfg.min_rate, cfg.max_rate);
            let mut best = floor.send_pps;
            let mut why = None;
            while why.is_none() {
                if (hi - lo) as f64 <= cfg.precision * hi as f64 {
                    why = Some(format!(
                        "bracket [{lo}, {hi}] pps is within {:.1}% ",
                        cfg.precision * 100.0
                    ));
                } else if steps.len() as u32 >= cfg.max_steps {
                    why = Some(format!(
                        "step limit {} reached with bracket [{lo}, {hi}] pps",
                        cfg.max_steps
                    ));
                } else {
                    let mid = lo + (hi - lo) / 2;
                    let s = step_at(mid, &mut steps)?;
                    if s.lossless {
                        lo = mid;
                        best = best.max(s.send_pps);
                    } else {
                        hi = mid;
                    }
                }
            }
            (best, why.expect("loop exits with a reason").trim_end().to_string())
        }
    };
    let peak = steps.iter().map(|s| s.rx_pps).fold(0.0, f64::max);
    Ok(ThroughputResult {
        payload_len: cfg.payload_len,
        max_lossless_pps: best,
        max_lossless_mbps: best * cfg.payload_len as f64 * 8.0 / 1e6,
        peak_rx_pps: peak,
        termination,
        steps,
    })
}

/// Offer `rate` packets/s for `cfg.step`, then wait `cfg.drain`. A sender
/// that cannot reach `rate` stops a quarter step after the end all the
/// same, so a step never takes much longer than `1.25 step + drain`.
pub fn run_step(sock: &UdpSocket, cfg: &ThroughputConfig, rate: u64, run: u32) -> io::Result<Step> {
    let step_ns = cfg.step.as_nanos() as u64;
    let count = ((rate as u128 * step_ns as u128) / 1_000_000_000).max(1) as u64;
    // Flush late answers of the previous step.
    sock.set_nonblocking(true)?;
    let mut scratch = [0u8; 2048];
    while sock.recv(&mut scratch).is_ok() {}
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;

    let done_ns = AtomicU64::new(0);
    let start = monotonic_ns() + 1_000_000;
    let end = start + step_ns;
    let (attempted, send_errors, last_send, rx) = std::thread::scope(|s| {
        let receiver = s.spawn(|| receive(sock, cfg, count, run, &done_ns));
        let mut tx = MsgBatch::new(cfg.batch, cfg.payload_len);
        let (mut next, mut errors) = (0u64, 0u64);
        let due_at = |i: u64| start + ((i as u128 * 1_000_000_000) / rate as u128) as u64;
        while next < count {
            let now = wait_until(due_at(next), cfg.spin_ns);
            // A sender that is only a little late (descheduled near the
            // end) still sends what is due; one that cannot keep up stops
            // a quarter step after the end.
            if now >= end + step_ns / 4 && next > 0 {
                break;
            }
            // Everything due by now, at most a batch per call.
            let due = (((now - start) as u128 * rate as u128) / 1_000_000_000) as u64 + 1;
            let k = due.min(count).saturating_sub(next).clamp(1, cfg.batch as u64) as usize;
            for i in 0..k {
                let h = ProbeHeader { run, seq: next + i as u64, sent_ns: now };
                h.write(tx.buffer_mut(i)).expect("payload_len >= HEADER_LEN was validated");
                tx.set_len(i, cfg.payload_len);
            }
            let (ok, err) = tx.send_all(sock, k, false);
            if err.is_some() {
                errors += (k - ok) as u64;
            }
            next += k as u64;
        }
        let last = monotonic_ns();
        done_ns.store(last, Ordering::Release);
        let rx = receiver.join().expect("receiver thread does not panic");
        (next, errors, last, rx)
    });
    let (tracker, first_rx, last_rx) = rx?;
    let rx_pps = if tracker.received > 1 && last_rx > first_rx {
        (tracker.received - 1) as f64 * 1e9 / (last_rx - first_rx) as f64
    } else {
        0.0
    };
    let send_secs = (last_send.saturating_sub(start)).max(1) as f64 / 1e9;
    let lost = tracker.lost(attempted);
    Ok(Step {
        offered_pps: rate,
        sent: attempted - send_errors,
        send_errors,
        send_pps: attempted as f64 / send_secs,
        received: tracker.received,
        rx_pps,
        lost,
        reordered: tracker.reordered,
        duplicates: tracker.duplicates,
        lossless: lost == 0 && tracker.reordered == 0,
    })
}

fn receive(
    sock: &UdpSocket,
    cfg: &ThroughputConfig,
    count: u64,
    run: u32,
    done_ns: &AtomicU64,
) -> io::Result<(SeqTracker, u64, u64)> {
    let mut tracker = SeqTracker::new(count);
    let mut rx = MsgBatch::new(cfg.batch, cfg.payload_len.max(HEADER_LEN) + 64);
    let (mut first, mut last) = (0u64, 0u64);
    let drain = cfg.drain.as_nanos() as u64;
    while !tracker.complete() {
        let done = done_ns.load(Ordering::Acquire);
        if done != 0 && monotonic_ns() > done + drain {
            break;
        }
        let n = match rx.recv(sock, cfg.batch) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            continue;
        }
        let now = monotonic_ns();
        if first == 0 {
            first = now;
        }
        last = now;
        for i in 0..n {
            if let Ok(h) = ProbeHeader::read(rx.payload(i)) {
                if h.run == run {
                    tracker.record(h.seq);
                }
            }
        }
    }
    Ok((tracker, first, last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo::{run_echo, EchoConfig};
    use crate::rtt::MAX_PAYLOAD;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn settings_are_checked() {
        let ok = ThroughputConfig::default();
        assert!(ok.validate().is_ok());
        let max = ok.max_rate;
        for (bad, why) in [
            (ThroughputConfig { min_rate: 0, ..ok.clone() }, ConfigError::Rates { min: 0, max }),
            (
                ThroughputConfig { min_rate: 10, max_rate: 5, ..ok.clone() },
                ConfigError::Rates { min: 10, max: 5 },
            ),
            (ThroughputConfig { precision: 0.0, ..ok.clone() }, ConfigError::Precision(0.0)),
            (
                ThroughputConfig { payload_len: 4, ..ok.clone() },
                ConfigError::PayloadSize { size: 4, min: HEADER_LEN, max: MAX_PAYLOAD },
            ),
            (ThroughputConfig { batch: 0, ..ok.clone() }, ConfigError::Batch(0)),
            (ThroughputConfig { max_steps: 1, ..ok.clone() }, ConfigError::MaxSteps(1)),
            (ThroughputConfig { step: Duration::ZERO, ..ok.clone() }, ConfigError::ZeroStep),
        ] {
            assert_eq!(bad.validate(), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn step_at_a_low_rate_is_lossless_and_paced() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(server.local_addr().unwrap()).unwrap();
        let stop = AtomicBool::new(false);
        let cfg = ThroughputConfig { step: Duration::from_millis(200), ..Default::default() };
        let step = std::thread::scope(|s| {
            s.spawn(|| run_echo(&server, &EchoConfig::default(), &stop));
            let st = run_step(&client, &cfg, 5000, 3).unwrap();
            stop.store(true, Ordering::Relaxed);
            st
        });
        // 1000 are due; a sender descheduled past the step's grace period
        // on a loaded machine legitimately stops a few short.
        assert!((950..=1000).contains(&step.sent), "{step:?}");
        assert!(step.lossless, "{step:?}");
        // Paced: 1000 packets at 5000 pps take ~200 ms, not a burst.
        assert!(step.send_pps < 5500.0 && step.send_pps > 3000.0, "{step:?}");
    }

    #[test]
    fn an_unreachable_rate_still_ends_with_the_step() {
        // 50 Mpps is far beyond any sender here: the step must stop after
        // its 100 ms, not after sending 5 million packets.
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(server.local_addr().unwrap()).unwrap();
        let stop = AtomicBool::new(false);
        let cfg = ThroughputConfig {
            step: Duration::from_millis(100),
            drain: Duration::from_millis(50),
            max_rate: 50_000_000,
            ..Default::default()
        };
        let t0 = std::time::Instant::now();
        let step = std::thread::scope(|s| {
            s.spawn(|| run_echo(&server, &EchoConfig::default(), &stop));
            let st = run_step(&client, &cfg, 50_000_000, 9).unwrap();
            stop.store(true, Ordering::Relaxed);
            st
        });
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        assert!(step.sent + step.send_errors < 5_000_000, "{step:?}");
        assert_eq!(step.lost, step.sent + step.send_errors - step.received, "{step:?}");
    }

    #[test]
    fn search_terminates_and_brackets() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(server.local_addr().unwrap()).unwrap();
        let stop = AtomicBool::new(false);
        let cfg = ThroughputConfig {
            step: Duration::from_millis(100),
            drain: Duration::from_millis(50),
            max_rate: 100_000,
            precision: 0.1,
            max_steps: 6,
            ..Default::default()
        };
        let r = std::thread::scope(|s| {
            s.spawn(|| run_echo(&server, &EchoConfig::default(), &stop));
            let r = search(&client, &cfg, 100).unwrap();
            stop.store(true, Ordering::Relaxed);
            r
        });
        assert!(r.steps.len() <= 6 && !r.steps.is_empty(), "{r:?}");
        assert!(!r.termination.is_empty());
        // The answer is the achieved rate of a passing step (or 0).
        let passing: Vec<f64> = r.steps.iter().filter(|s| s.lossless).map(|s| s.send_pps).collect();
        if r.max_lossless_pps > 0.0 {
            assert!(passing.contains(&r.max_lossless_pps), "{r:?}");
        }
        assert!(r.peak_rx_pps > 0.0);
    }
}
