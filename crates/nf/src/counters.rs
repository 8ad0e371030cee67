//! Per-NF counters.

use serde::{Deserialize, Serialize};

/// Why an NF dropped a packet. Every drop is counted under exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum DropReason {
    /// Too short or inconsistent to parse as what the NF needs.
    Malformed,
    /// A protocol the NF cannot handle and must not pass on.
    Unsupported,
    /// IPv4 TTL reached zero.
    TtlExceeded,
    /// No route matches the destination.
    NoRoute,
    /// A firewall rule (or the default policy) denies it.
    Denied,
    /// NAT: no free port left in the configured range.
    PortsExhausted,
    /// NAT: a packet from outside with no matching translation.
    NoMapping,
    /// Meter/shaper: out of profile (red).
    RateExceeded,
    /// Authentication failed (e.g. AES-GCM tag mismatch).
    AuthFailed,
    /// Dropped on purpose by a loss emulator.
    Loss,
    /// Load balancer: no backend configured.
    NoBackend,
    /// No room in the buffer to add what the NF must add.
    NoRoom,
    /// A bounded queue or table is full and the drop policy applied.
    Overflow,
    /// Could not be decoded/recovered (network coding).
    Undecodable,
    /// A sequence number already seen, or too old to tell (anti-replay).
    Replayed,
    /// TTL/hop or other check failed in a way not listed above.
    Other,
    /// Sent out of a gate that has no link in the graph (counted by the
    /// dataplane, not by NFs).
    Unconnected,
    /// Router: a martian source or destination address (RFC 1812: never
    /// forwarded).
    Martian,
    /// A fragment whose first fragment was not seen (or was refused), or
    /// that the fragment table had no room for.
    Fragment,
    /// Router: longer than the egress port's MTU and not to be fragmented
    /// (IPv6, or IPv4 with DF set); answered with ICMP "fragmentation
    /// needed" or ICMPv6 Packet Too Big.
    TooBig,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 20;

    /// All reasons, in counter order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Malformed,
        DropReason::Unsupported,
        DropReason::TtlExceeded,
        DropReason::NoRoute,
        DropReason::Denied,
        DropReason::PortsExhausted,
        DropReason::NoMapping,
        DropReason::RateExceeded,
        DropReason::AuthFailed,
        DropReason::Loss,
        DropReason::NoBackend,
        DropReason::NoRoom,
        DropReason::Overflow,
        DropReason::Undecodable,
        DropReason::Replayed,
        DropReason::Other,
        DropReason::Unconnected,
        DropReason::Martian,
        DropReason::Fragment,
        DropReason::TooBig,
    ];

    /// The snake_case name used in statistics output.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Unsupported => "unsupported",
            DropReason::TtlExceeded => "ttl_exceeded",
            DropReason::NoRoute => "no_route",
            DropReason::Denied => "denied",
            DropReason::PortsExhausted => "ports_exhausted",
            DropReason::NoMapping => "no_mapping",
            DropReason::RateExceeded => "rate_exceeded",
            DropReason::AuthFailed => "auth_failed",
            DropReason::Loss => "loss",
            DropReason::NoBackend => "no_backend",
            DropReason::NoRoom => "no_room",
            DropReason::Overflow => "overflow",
            DropReason::Undecodable => "undecodable",
            DropReason::Replayed => "replayed",
            DropReason::Other => "other",
            DropReason::Unconnected => "unconnected",
            DropReason::Martian => "martian",
            DropReason::Fragment => "fragment",
            DropReason::TooBig => "too_big",
        }
    }
}

/// Counters of one NF instance. Plain integers: one writer (the thread
/// running the NF); the runtime publishes copies for readers elsewhere.
/// Serializable so an NF process can hand them to its supervisor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Packets the NF created itself (ICMP errors, coded packets, ...).
    pub packets_created: u64,
    pub batches: u64,
    /// Time spent inside `process`, in nanoseconds (filled by the runtime).
    pub busy_ns: u64,
    /// Largest batch handed to `process` (filled by the runtime).
    pub max_batch: u64,
    pub drops: [u64; DropReason::COUNT],
}

impl Counters {
    #[inline]
    pub fn count_drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    /// Packets per call of `process` (VPP's vectors per call).
    pub fn mean_batch(&self) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            self.packets_in as f64 / self.batches as f64
        }
    }

    /// Time inside the NF per packet received, in nanoseconds.
    pub fn ns_per_packet(&self) -> f64 {
        if self.packets_in == 0 {
            0.0
        } else {
            self.busy_ns as f64 / self.packets_in as f64
        }
    }

    /// Drops for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// Drops for all reasons.
    pub fn dropped_total(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// The non-zero drop counters by name.
    pub fn drop_breakdown(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .filter(|r| self.drops[**r as usize] != 0)
            .map(|r| (r.name(), self.drops[*r as usize]))
            .collect()
    }

    /// What was counted between `earlier` and `self` (two copies of the
    /// same instance's counters; a counter that went back counts 0).
    /// `max_batch` cannot be differenced: it stays `self`'s, the largest
    /// batch since the instance started (the interval's is at most that,
    /// and equal to it if it grew meanwhile).
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut c = Counters {
            packets_in: self.packets_in.saturating_sub(earlier.packets_in),
            packets_out: self.packets_out.saturating_sub(earlier.packets_out),
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(earlier.bytes_out),
            packets_created: self.packets_created.saturating_sub(earlier.packets_created),
            batches: self.batches.saturating_sub(earlier.batches),
            busy_ns: self.busy_ns.saturating_sub(earlier.busy_ns),
            max_batch: self.max_batch,
            ..Counters::default()
        };
        for ((d, a), b) in c.drops.iter_mut().zip(&self.drops).zip(&earlier.drops) {
            *d = a.saturating_sub(*b);
        }
        c
    }

    /// Add another instance's counters (e.g. of scaled-out replicas).
    pub fn merge(&mut self, o: &Counters) {
        self.packets_in += o.packets_in;
        self.packets_out += o.packets_out;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.packets_created += o.packets_created;
        self.batches += o.batches;
        self.busy_ns += o.busy_ns;
        self.max_batch = self.max_batch.max(o.max_batch);
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_index_their_own_slot() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
        let mut c = Counters::default();
        c.count_drop(DropReason::NoRoute);
        c.count_drop(DropReason::NoRoute);
        assert_eq!(c.drop_breakdown(), vec![("no_route", 2)]);
        assert_eq!(c.dropped_total(), 2);
    }
}
