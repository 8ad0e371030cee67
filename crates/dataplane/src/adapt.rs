//! Adaptive mode (beyond SCC): a feedback loop per worker that sets the
//! worker's batch size and idle policy from what it measures, within
//! bounds, with hysteresis, rate-limited, and with a log of every change
//! and its reason.
//!
//! Every `period` the worker hands the controller what its loop counted
//! since the last period ([`Sample`]): packets received, receive calls that
//! brought packets, receive calls that came back *full* (as many packets as
//! the batch size: more were probably waiting, the input queue is
//! building), loop turns, idle waits and the period's length. From these:
//!
//! - **arrival rate** = packets / period;
//! - **queue occupancy** = full receives / non-empty receives (the share of
//!   receives that found at least a whole batch waiting) and the mean fill
//!   of a receive, packets / non-empty receives;
//! - **latency cost of idling** = idle waits per packet (each wait in
//!   `poll(2)` costs a wake-up before the next packet is handled).
//!
//! Rules (the thresholds are far apart, so a steady load cannot flip a
//! setting back and forth):
//!
//! - *batch up* (×2, up to `max_batch`) when at least `grow_full` of the
//!   non-empty receives were full: a backlog forms, a bigger batch drains
//!   it with fewer loop turns and system calls (SCC §5: batching cuts
//!   latency under load);
//! - *batch down* (÷2, down to `min_batch`) when the mean fill is at most a
//!   quarter of the batch and no receive was full: the batch is far larger
//!   than what arrives, a smaller one bounds the burst a packet may wait
//!   behind. After a doubling at a steady load the fill is at most half the
//!   new batch, so the next halving needs the load to fall to half first;
//! - *idle busy* (only when `allow_busy`) when the arrival rate is at least
//!   `busy_above_pps` and the worker still waited for more than
//!   `busy_wakeups_per_packet` of the packets: wake-ups are then a large
//!   part of each packet's latency; *idle poll* again when the rate falls
//!   below half of `busy_above_pps`;
//! - *real-time wake-ups* (only with `rt_priority`): when the worker waits
//!   for more than `busy_wakeups_per_packet` of its packets (it sleeps in
//!   `poll(2)` between packets, so every packet pays a wake-up, and under
//!   SCHED_OTHER a woken thread may wait behind others on its CPU), raise
//!   it to SCHED_FIFO at that priority: woken, it runs at once. Never while
//!   it busy-polls (it would starve its CPU), and back to its own policy
//!   when it stops sleeping (fewer than `rt_leave_wakeups_per_packet` idle
//!   waits per packet: saturated, it would hold the CPU at real time) or
//!   when its thread is on a CPU more than `rt_leave_busy` of the period
//!   (busy: at real time it is woken for nearly every packet and keeps the
//!   CPU from the kernel's packet processing; an AF_XDP forwarder raised
//!   so forwarded a third of what it did at its own policy), raised again
//!   only under half that share;
//! - *real-time wake-ups for a worker kept waiting* (only with
//!   `rt_priority`): the same raise when the worker's thread spent more
//!   than `rt_wait_share` of its runnable time waiting on a run queue
//!   (`schedstat`) although it sleeps between bursts. Beside other load
//!   on its CPU (a busy neighbour, other NFs) a woken worker waits behind
//!   it, its packets pile up meanwhile, and each wake-up then finds many
//!   of them: the idle waits per packet look low while every packet
//!   waited for the CPU. The on-CPU bound above still applies; it needs at
//!   least twice `rt_leave_wakeups_per_packet` idle waits per packet (a
//!   worker that never sleeps, raised, would be lowered at once as
//!   saturated; a starved one beside a busy neighbour sleeps once per
//!   12–16 packets here), and after a raised worker was lowered for being
//!   busy it waits until the arrival rate has fallen to half (raised at
//!   that rate it was busy: no flip-flop under load);
//! - at most one change every `hold` periods (rate limit), and nothing in
//!   a period with fewer than `min_packets` packets except the way back to
//!   `poll` (an idle worker must not spin).
//!
//! The controller is a pure function of its samples ([`Adapter::observe`]),
//! so its behaviour under a given load is tested without timing
//! (`tests` below) and, with a real worker, in `tests/adapt.rs`.

use std::time::Duration;

use crate::worker::{Idle, MAX_BATCH};

/// The bounds and thresholds of the adaptive mode.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdaptConfig {
    /// Smallest and largest batch the controller may choose.
    pub min_batch: usize,
    pub max_batch: usize,
    /// How often the controller looks at the counters.
    pub period: Duration,
    /// Periods between two changes at least.
    pub hold: u32,
    /// Share of full receives (0..1) that doubles the batch.
    pub grow_full: f64,
    /// May the controller switch to busy polling (a core at 100 %)?
    pub allow_busy: bool,
    /// Arrival rate (packets/s) above which busy polling is considered.
    pub busy_above_pps: f64,
    /// Idle waits per packet above which busy polling pays.
    pub busy_wakeups_per_packet: f64,
    /// Periods with fewer packets change nothing (except back to poll).
    pub min_packets: u64,
    /// May the controller raise the worker to SCHED_FIFO at this priority
    /// while it sleeps between packets (see the module documentation)?
    #[serde(default)]
    pub rt_priority: Option<i32>,
    /// Idle waits per packet below which a raised worker goes back to its
    /// own policy (it no longer sleeps: saturated).
    #[serde(default = "default_rt_leave")]
    pub rt_leave_wakeups_per_packet: f64,
    /// Share of the period (0..1) a raised worker's thread may spend on a
    /// CPU: above it, back to its own policy (it is busy: its packets wait
    /// in queues, not for its wake-up, and at real time, woken for every
    /// packet, it keeps the CPU from the kernel's packet processing and
    /// the other threads); raised again only below half of it.
    #[serde(default = "default_rt_leave_busy")]
    pub rt_leave_busy: f64,
    /// Share (0..1) of its runnable time a sleeping worker's thread may
    /// wait on a run queue (for a CPU other threads hold): above it,
    /// raised to real time like a worker woken for every packet.
    #[serde(default = "default_rt_wait_share")]
    pub rt_wait_share: f64,
    /// Print every change to standard error as it is made (a process
    /// running one worker: `braid nf-proc --adapt`).
    #[serde(default)]
    pub log: bool,
}

impl Default for AdaptConfig {
    fn default() -> Self {
        AdaptConfig {
            min_batch: 1,
            max_batch: 256,
            period: Duration::from_millis(100),
            hold: 3,
            grow_full: 0.5,
            allow_busy: false,
            busy_above_pps: 20_000.0,
            busy_wakeups_per_packet: 0.5,
            min_packets: 64,
            rt_priority: None,
            rt_leave_wakeups_per_packet: default_rt_leave(),
            rt_leave_busy: default_rt_leave_busy(),
            rt_wait_share: default_rt_wait_share(),
            log: false,
        }
    }
}

fn default_rt_leave() -> f64 {
    0.01
}

fn default_rt_leave_busy() -> f64 {
    0.5
}

fn default_rt_wait_share() -> f64 {
    0.3
}

/// A bad adaptive configuration.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AdaptError {
    #[error("adaptive batch bounds {min}..={max} are not within 1..={limit} with min <= max")]
    Bounds { min: usize, max: usize, limit: usize },
    #[error("adaptive period {0:?} is outside 10 ms..=10 s")]
    Period(Duration),
    #[error("adaptive grow_full {0} is outside (0, 1]")]
    GrowFull(f64),
    #[error("adaptive rt_priority {0} is outside 1..=99")]
    RtPriority(i32),
    #[error("adaptive rt_leave_busy {0} is outside (0, 1]")]
    RtLeaveBusy(f64),
    #[error("adaptive rt_wait_share {0} is outside (0, 1]")]
    RtWaitShare(f64),
}

impl AdaptConfig {
    /// Refuse bounds that make no sense.
    pub fn check(&self) -> Result<(), AdaptError> {
        if self.min_batch == 0 || self.min_batch > self.max_batch || self.max_batch > MAX_BATCH {
            return Err(AdaptError::Bounds {
                min: self.min_batch,
                max: self.max_batch,
                limit: MAX_BATCH,
            });
        }
        if self.period < Duration::from_millis(10) || self.period > Duration::from_secs(10) {
            return Err(AdaptError::Period(self.period));
        }
        if !(self.grow_full > 0.0 && self.grow_full <= 1.0) {
            return Err(AdaptError::GrowFull(self.grow_full));
        }
        if let Some(p) = self.rt_priority.filter(|p| !(1..=99).contains(p)) {
            return Err(AdaptError::RtPriority(p));
        }
        if !(self.rt_leave_busy > 0.0 && self.rt_leave_busy <= 1.0) {
            return Err(AdaptError::RtLeaveBusy(self.rt_leave_busy));
        }
        if !(self.rt_wait_share > 0.0 && self.rt_wait_share <= 1.0) {
            return Err(AdaptError::RtWaitShare(self.rt_wait_share));
        }
        Ok(())
    }
}

/// What the worker's loop counted during one period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    pub packets: u64,
    /// Receive calls that brought at least one packet.
    pub receives: u64,
    /// Receive calls that brought a whole batch.
    pub full: u64,
    pub turns: u64,
    /// Idle waits (poll or sleep).
    pub sleeps: u64,
    pub elapsed_ns: u64,
    /// The worker thread's on-CPU time in the period (None: not known).
    pub cpu_ns: Option<u64>,
    /// The worker thread's time runnable but waiting for a CPU in the
    /// period (`schedstat`; None: not known).
    pub wait_ns: Option<u64>,
}

/// One change the controller made, and why.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Adaptation {
    /// Period number (from 1) in which it was decided.
    pub period: u64,
    /// `batch` or `idle`.
    pub what: String,
    pub from: String,
    pub to: String,
    pub why: String,
}

impl std::fmt::Display for Adaptation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "period {}: {} {} -> {} ({})",
            self.period, self.what, self.from, self.to, self.why
        )
    }
}

/// The controller's state.
#[derive(Clone, Debug)]
pub struct Adapter {
    cfg: AdaptConfig,
    batch: usize,
    idle: Idle,
    /// Raised to SCHED_FIFO `rt_priority`.
    rt: bool,
    /// The kernel refused the raise once: never try again.
    rt_refused: bool,
    /// The arrival rate at which a raised worker was last lowered for
    /// being busy: the wait-for-a-CPU raise waits until the rate has
    /// fallen to half of it (at that rate, raised, it was busy: raising it
    /// again would flip it back and forth).
    rt_left_busy_at: Option<f64>,
    period: u64,
    last_change: Option<u64>,
}

impl Adapter {
    /// Start from the worker's current batch size (clamped to the bounds)
    /// and idle policy.
    pub fn new(cfg: AdaptConfig, batch: usize, idle: Idle) -> Result<Adapter, AdaptError> {
        cfg.check()?;
        let batch = batch.clamp(cfg.min_batch, cfg.max_batch);
        Ok(Adapter {
            cfg,
            batch,
            idle,
            rt: false,
            rt_refused: false,
            rt_left_busy_at: None,
            period: 0,
            last_change: None,
        })
    }

    pub fn config(&self) -> &AdaptConfig {
        &self.cfg
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn idle(&self) -> Idle {
        self.idle
    }

    /// The real-time priority the worker should run at now (None: its own
    /// policy).
    pub fn rt(&self) -> Option<i32> {
        self.cfg.rt_priority.filter(|_| self.rt)
    }

    /// The kernel refused the raise: go back and never try again.
    pub fn rt_refused(&mut self) {
        self.rt = false;
        self.rt_refused = true;
    }

    /// Look at one period's counters; the change to make, if any.
    pub fn observe(&mut self, s: &Sample) -> Option<Adaptation> {
        self.period += 1;
        let secs = (s.elapsed_ns.max(1)) as f64 / 1e9;
        let rate = s.packets as f64 / secs;
        let held = self.last_change.is_some_and(|p| self.period - p < u64::from(self.cfg.hold));
        // An idle or slow worker must not keep spinning: back to poll
        // whatever the hold says.
        if self.idle == Idle::Busy && rate < self.cfg.busy_above_pps / 2.0 {
            return Some(self.change_idle(
                Idle::Poll,
                format!(
                    "arrival rate {rate:.0} pps fell below {:.0}",
                    self.cfg.busy_above_pps / 2.0
                ),
            ));
        }
        let wakeups = s.sleeps as f64 / s.packets.max(1) as f64;
        let busy = s.cpu_ns.map(|c| c as f64 / s.elapsed_ns.max(1) as f64);
        // Saturated at real time: leave it whatever the hold says.
        if self.rt && (self.idle == Idle::Busy || wakeups < self.cfg.rt_leave_wakeups_per_packet) {
            let why = format!(
                "{wakeups:.3} idle waits per packet ({rate:.0} pps): no longer sleeping between packets"
            );
            return Some(self.change_rt(false, why));
        }
        if let Some(b) = busy.filter(|b| self.rt && *b > self.cfg.rt_leave_busy) {
            let why = format!(
                "on a CPU {:.0}% of the time ({rate:.0} pps, {wakeups:.2} idle waits per packet): busy, not waiting for its wake-ups",
                b * 100.0
            );
            self.rt_left_busy_at = Some(rate);
            return Some(self.change_rt(false, why));
        }
        if self.rt_left_busy_at.is_some_and(|r| rate < r / 2.0) {
            self.rt_left_busy_at = None;
        }
        if held || s.packets < self.cfg.min_packets || s.receives == 0 {
            return None;
        }
        let may_raise = !self.rt
            && !self.rt_refused
            && self.idle != Idle::Busy
            && busy.is_none_or(|b| b < self.cfg.rt_leave_busy / 2.0);
        if let Some(p) = self.cfg.rt_priority.filter(|_| may_raise) {
            if wakeups > self.cfg.busy_wakeups_per_packet {
                let why = format!(
                    "{wakeups:.2} idle waits per packet ({rate:.0} pps): a wake-up per packet, run it at once (fifo:{p})"
                );
                return Some(self.change_rt(true, why));
            }
            // Share of its runnable time the thread waited for a CPU; only
            // for a worker that sleeps between bursts (twice the idle
            // waits per packet below which a raised one counts as
            // saturated and is lowered), and not at a rate where, raised,
            // it was busy.
            let sleeps_between_bursts = wakeups >= 2.0 * self.cfg.rt_leave_wakeups_per_packet;
            let waited = s.wait_ns.zip(s.cpu_ns).map(|(w, c)| w as f64 / (w + c).max(1) as f64);
            if let Some(w) = waited.filter(|w| {
                *w > self.cfg.rt_wait_share
                    && sleeps_between_bursts
                    && self.rt_left_busy_at.is_none()
            }) {
                let why = format!(
                    "waited for a CPU {:.0}% of its runnable time ({rate:.0} pps, {wakeups:.2} idle waits per packet): other load holds its CPU, run it at once when woken (fifo:{p})",
                    w * 100.0
                );
                return Some(self.change_rt(true, why));
            }
        }
        let full = s.full as f64 / s.receives as f64;
        let fill = s.packets as f64 / s.receives as f64;
        if full >= self.cfg.grow_full && self.batch < self.cfg.max_batch {
            let to = (self.batch * 2).min(self.cfg.max_batch);
            let why = format!(
                "{:.0}% of receives full at batch {} ({rate:.0} pps): a queue builds",
                full * 100.0,
                self.batch
            );
            return Some(self.change_batch(to, why));
        }
        if s.full == 0 && fill <= self.batch as f64 / 4.0 && self.batch > self.cfg.min_batch {
            let to = (self.batch / 2).max(self.cfg.min_batch);
            let why = format!(
                "mean fill {fill:.1} of batch {} and no full receive ({rate:.0} pps)",
                self.batch
            );
            return Some(self.change_batch(to, why));
        }
        if self.cfg.allow_busy
            && !self.rt
            && self.idle != Idle::Busy
            && rate >= self.cfg.busy_above_pps
            && wakeups > self.cfg.busy_wakeups_per_packet
        {
            let why = format!(
                "{wakeups:.2} idle waits per packet at {rate:.0} pps (>= {:.0})",
                self.cfg.busy_above_pps
            );
            return Some(self.change_idle(Idle::Busy, why));
        }
        None
    }

    fn change_rt(&mut self, on: bool, why: String) -> Adaptation {
        self.rt = on;
        self.last_change = Some(self.period);
        let rt = format!("fifo:{}", self.cfg.rt_priority.unwrap_or(0));
        let (from, to) = if on { ("own".into(), rt) } else { (rt, "own".into()) };
        Adaptation { period: self.period, what: "policy".into(), from, to, why }
    }

    fn change_batch(&mut self, to: usize, why: String) -> Adaptation {
        let from = std::mem::replace(&mut self.batch, to);
        self.last_change = Some(self.period);
        Adaptation {
            period: self.period,
            what: "batch".into(),
            from: from.to_string(),
            to: to.to_string(),
            why,
        }
    }

    fn change_idle(&mut self, to: Idle, why: String) -> Adaptation {
        let from = std::mem::replace(&mut self.idle, to);
        self.last_change = Some(self.period);
        Adaptation {
            period: self.period,
            what: "idle".into(),
            from: format!("{from:?}").to_lowercase(),
            to: format!("{to:?}").to_lowercase(),
            why,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One period of a steady load of `rate` packets/s arriving in bursts
    /// of `burst` packets, as a worker with batch `batch` sees it: each
    /// burst takes ceil(burst / batch) receives, all but the last full
    /// (the last one too when it fills exactly).
    fn steady(rate: u64, burst: u64, batch: usize, idle: Idle) -> Sample {
        let period_ns = 100_000_000;
        let packets = rate / 10;
        let bursts = packets / burst;
        let per_burst = burst.div_ceil(batch as u64);
        let full_per_burst = burst / batch as u64;
        let sleeps = if idle == Idle::Busy { 0 } else { bursts };
        Sample {
            packets,
            receives: bursts * per_burst,
            full: bursts * full_per_burst,
            turns: bursts * per_burst + sleeps,
            sleeps,
            elapsed_ns: period_ns,
            cpu_ns: None,
            wait_ns: None,
        }
    }

    fn run(cfg: AdaptConfig, start: usize, rate: u64, burst: u64, periods: u64) -> Vec<Adaptation> {
        let mut a = Adapter::new(cfg, start, Idle::Poll).unwrap();
        (0..periods).filter_map(|_| a.observe(&steady(rate, burst, a.batch(), a.idle()))).collect()
    }

    #[test]
    fn a_steady_load_settles_and_never_oscillates() {
        for (start, burst) in [(1, 48), (256, 48), (32, 1), (1, 200), (8, 7), (64, 64)] {
            let log = run(AdaptConfig::default(), start, 100_000, burst, 300);
            // At most one move per power of two between the bounds, all in
            // one direction, and none in the last 250 periods.
            assert!(log.len() <= 9, "{start}/{burst}: {log:#?}");
            assert!(log.iter().all(|c| c.period <= 50), "{start}/{burst}: {log:#?}");
            let ups =
                log.iter().filter(|c| c.to.parse::<usize>().unwrap() > c.from.parse().unwrap());
            let ups = ups.count();
            assert!(ups == log.len() || ups == 0, "{start}/{burst}: {log:#?}");
        }
    }

    #[test]
    fn the_batch_follows_the_load_within_bounds() {
        let cfg = AdaptConfig { min_batch: 2, max_batch: 64, ..AdaptConfig::default() };
        let mut a = Adapter::new(cfg, 4, Idle::Poll).unwrap();
        for _ in 0..100 {
            a.observe(&steady(100_000, 500, a.batch(), a.idle()));
        }
        assert_eq!(a.batch(), 64, "bursts of 500 fill any batch: up to the bound");
        for _ in 0..100 {
            a.observe(&steady(100_000, 1, a.batch(), a.idle()));
        }
        assert_eq!(a.batch(), 2, "single packets: down to the bound");
    }

    #[test]
    fn changes_are_rate_limited_and_explained() {
        let cfg = AdaptConfig { hold: 5, ..AdaptConfig::default() };
        let log = run(cfg, 1, 100_000, 1000, 40);
        assert!(log.windows(2).all(|w| w[1].period - w[0].period >= 5), "{log:#?}");
        assert!(log.iter().all(|c| c.why.contains("full")), "{log:#?}");
        assert_eq!(log[0].to_string(), format!("period 1: batch 1 -> 2 ({})", log[0].why));
    }

    #[test]
    fn busy_polling_only_when_allowed_and_back_to_poll_when_load_falls() {
        let log = run(AdaptConfig::default(), 32, 100_000, 1, 50);
        assert!(log.iter().all(|c| c.what == "batch"), "not allowed: {log:#?}");
        let cfg = AdaptConfig { allow_busy: true, ..AdaptConfig::default() };
        let mut a = Adapter::new(cfg, 1, Idle::Poll).unwrap();
        let mut log = Vec::new();
        for i in 0..60 {
            let rate = if i < 30 { 100_000 } else { 1_000 };
            log.extend(a.observe(&steady(rate, 1, a.batch(), a.idle())));
            if i == 29 {
                assert_eq!(a.idle(), Idle::Busy, "{log:#?}");
            }
        }
        assert_eq!(a.idle(), Idle::Poll, "{log:#?}");
        assert_eq!(log.iter().filter(|c| c.what == "idle").count(), 2, "{log:#?}");
    }

    #[test]
    fn a_sleeping_worker_is_raised_to_real_time_and_lowered_when_saturated() {
        let cfg = AdaptConfig { rt_priority: Some(10), ..AdaptConfig::default() };
        let mut a = Adapter::new(cfg, 1, Idle::Poll).unwrap();
        // One packet per wake-up: raised at once (first change).
        let c = a.observe(&steady(20_000, 1, a.batch(), a.idle())).unwrap();
        assert_eq!((c.what.as_str(), c.from.as_str(), c.to.as_str()), ("policy", "own", "fifo:10"));
        assert_eq!(a.rt(), Some(10));
        for _ in 0..20 {
            a.observe(&steady(20_000, 1, a.batch(), a.idle()));
        }
        assert_eq!(a.rt(), Some(10), "steady: stays raised");
        // Saturated (it never sleeps): lowered at once.
        let mut s = steady(500_000, 64, a.batch(), Idle::Busy);
        s.sleeps = 0;
        let c = a.observe(&s).unwrap();
        assert_eq!((c.what.as_str(), c.to.as_str()), ("policy", "own"), "{c}");
        assert_eq!(a.rt(), None);
        // Refused by the kernel: never again.
        a.rt_refused();
        for _ in 0..20 {
            let c = a.observe(&steady(20_000, 1, a.batch(), a.idle()));
            assert!(c.as_ref().is_none_or(|c| c.what != "policy"), "{c:?}");
        }
        // Without rt_priority, never.
        let log = run(AdaptConfig::default(), 1, 20_000, 1, 50);
        assert!(log.iter().all(|c| c.what != "policy"), "{log:#?}");
        assert!(Adapter::new(
            AdaptConfig { rt_priority: Some(0), ..AdaptConfig::default() },
            1,
            Idle::Poll
        )
        .is_err());
    }

    #[test]
    fn a_raised_worker_that_gets_busy_goes_back_and_comes_up_only_when_idle_again() {
        let cfg = AdaptConfig { rt_priority: Some(10), hold: 1, ..AdaptConfig::default() };
        let mut a = Adapter::new(cfg, 32, Idle::Poll).unwrap();
        let at = |a: &Adapter, busy: f64| Sample {
            cpu_ns: Some((busy * 100_000_000.0) as u64),
            ..steady(50_000, 1, a.batch(), a.idle())
        };
        // A wake-up per packet at a low share: raised.
        let c = a.observe(&at(&a, 0.1)).unwrap();
        assert_eq!(c.to, "fifo:10");
        // Still a wake-up per packet (at real time it is woken at once),
        // but on a CPU 70 % of the time: lowered, saying why.
        let c = a.observe(&at(&a, 0.7)).unwrap();
        assert_eq!((c.what.as_str(), c.to.as_str()), ("policy", "own"), "{c}");
        assert!(c.why.contains("70%"), "{c}");
        // Between a quarter and a half: left as it is (hysteresis), for
        // as long as it stays there.
        for _ in 0..20 {
            let c = a.observe(&at(&a, 0.4));
            assert!(c.as_ref().is_none_or(|c| c.what != "policy"), "{c:?}");
        }
        // Under a quarter again: raised again.
        let c = (0..5).find_map(|_| a.observe(&at(&a, 0.1)).filter(|c| c.what == "policy"));
        assert_eq!(c.map(|c| c.to), Some("fifo:10".into()));
        // A steady load at 40 % never flips it.
        let log: Vec<_> = (0..50).filter_map(|_| a.observe(&at(&a, 0.4))).collect();
        assert!(log.iter().all(|c| c.what != "policy"), "{log:#?}");
    }

    #[test]
    fn a_sleeping_worker_kept_waiting_for_its_cpu_is_raised() {
        let cfg = AdaptConfig { rt_priority: Some(10), hold: 1, ..AdaptConfig::default() };
        // Bursts of 4 per wake-up (0.25 idle waits per packet): no
        // wake-up per packet, so only the wait for a CPU can raise it.
        let at = |a: &Adapter, cpu: f64, wait: f64| Sample {
            cpu_ns: Some((cpu * 100_000_000.0) as u64),
            wait_ns: Some((wait * 100_000_000.0) as u64),
            ..steady(20_000, 4, a.batch(), a.idle())
        };
        // On a CPU 5 % of the period, 1 % waiting for it: a quiet CPU,
        // nothing to fix.
        let mut a = Adapter::new(cfg.clone(), 32, Idle::Poll).unwrap();
        let log: Vec<_> = (0..30).filter_map(|_| a.observe(&at(&a, 0.05, 0.01))).collect();
        assert!(log.iter().all(|c| c.what != "policy"), "{log:#?}");
        // 5 % on a CPU and 20 % waiting (80 % of its runnable time, a busy
        // neighbour): raised, saying why.
        let c = (0..5)
            .find_map(|_| a.observe(&at(&a, 0.05, 0.2)).filter(|c| c.what == "policy"))
            .expect("raised");
        assert_eq!(c.to, "fifo:10");
        assert!(c.why.contains("waited for a CPU 80%"), "{c}");
        // Raised it no longer waits: it stays raised, no flip-flop.
        let log: Vec<_> = (0..50).filter_map(|_| a.observe(&at(&a, 0.05, 0.0))).collect();
        assert!(log.iter().all(|c| c.what != "policy"), "{log:#?}");
        assert_eq!(a.rt(), Some(10));
        // Waiting, but on a CPU 40 % of the time (more than a quarter): not
        // raised, the on-CPU bound holds for this rule too.
        let mut a = Adapter::new(cfg.clone(), 32, Idle::Poll).unwrap();
        let log: Vec<_> = (0..30).filter_map(|_| a.observe(&at(&a, 0.4, 0.4))).collect();
        assert!(log.iter().all(|c| c.what != "policy"), "{log:#?}");
        // Saturated (one idle wait in 2,000 packets) and waiting for its
        // CPU: not raised (raised, it would be lowered at once).
        let mut a = Adapter::new(cfg.clone(), 32, Idle::Poll).unwrap();
        let saturated = |a: &Adapter| Sample { sleeps: 1, ..at(a, 0.05, 0.2) };
        let log: Vec<_> = (0..30).filter_map(|_| a.observe(&saturated(&a))).collect();
        assert!(log.iter().all(|c| c.what != "policy"), "{log:#?}");
        // Raised, then busy at that rate: lowered; waiting again at the
        // same rate it is not raised again (no flip-flop), at half the
        // rate it is.
        let mut a = Adapter::new(cfg.clone(), 32, Idle::Poll).unwrap();
        let c = (0..5).find_map(|_| a.observe(&at(&a, 0.05, 0.2)).filter(|c| c.what == "policy"));
        assert_eq!(c.map(|c| c.to), Some("fifo:10".into()));
        let c = a.observe(&at(&a, 0.7, 0.0)).expect("lowered");
        assert!(c.why.contains("busy"), "{c}");
        let log: Vec<_> = (0..50).filter_map(|_| a.observe(&at(&a, 0.05, 0.2))).collect();
        assert!(log.iter().all(|c| c.what != "policy"), "{log:#?}");
        let half = |a: &Adapter| Sample {
            cpu_ns: Some(5_000_000),
            wait_ns: Some(20_000_000),
            ..steady(9_000, 4, a.batch(), a.idle())
        };
        let c = (0..5).find_map(|_| a.observe(&half(&a)).filter(|c| c.what == "policy"));
        assert_eq!(c.map(|c| c.to), Some("fifo:10".into()));
        // Never without rt_priority, and not without a schedstat reading.
        let mut a = Adapter::new(AdaptConfig { hold: 1, ..AdaptConfig::default() }, 32, Idle::Poll)
            .unwrap();
        let log: Vec<_> = (0..30).filter_map(|_| a.observe(&at(&a, 0.05, 0.2))).collect();
        assert!(log.iter().all(|c| c.what != "policy"), "{log:#?}");
        let mut a = Adapter::new(cfg, 32, Idle::Poll).unwrap();
        let log: Vec<_> = (0..30)
            .filter_map(|_| a.observe(&Sample { wait_ns: None, ..at(&a, 0.05, 0.2) }))
            .collect();
        assert!(log.iter().all(|c| c.what != "policy"), "{log:#?}");
    }

    #[test]
    fn bad_bounds_are_refused() {
        let bad = |c: AdaptConfig| Adapter::new(c, 1, Idle::Poll).unwrap_err().to_string();
        let d = AdaptConfig::default;
        assert!(bad(AdaptConfig { min_batch: 0, ..d() }).contains("bounds 0..=256"));
        assert!(bad(AdaptConfig { min_batch: 8, max_batch: 4, ..d() }).contains("8..=4"));
        assert!(bad(AdaptConfig { max_batch: 5000, ..d() }).contains("1..=1024"));
        assert!(bad(AdaptConfig { period: Duration::from_millis(1), ..d() }).contains("period"));
        assert!(bad(AdaptConfig { grow_full: 0.0, ..d() }).contains("grow_full"));
        assert!(bad(AdaptConfig { rt_leave_busy: 1.5, ..d() }).contains("rt_leave_busy"));
        assert!(bad(AdaptConfig { rt_wait_share: 0.0, ..d() }).contains("rt_wait_share"));
    }
}
