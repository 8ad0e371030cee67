//! braid packet I/O.
//!
//! Every way packets enter or leave a chain is a [`Port`]: capture files (pcap,
//! pcapng, standard input and output) and
//! in-memory queues for offline work, AF_PACKET and AF_XDP sockets for live
//! traffic, shared-memory rings between NF processes. An NF chain sees the
//! same interface whatever carries its packets (the "virtual port" of the
//! inter-container seed); the deployment picks the backend.

#[allow(unsafe_code)] // AF_PACKET socket, sendmmsg/recvmmsg
pub mod af_packet;
#[allow(unsafe_code)] // AF_XDP socket, UMEM and ring mappings
pub mod af_xdp;
pub mod capture;
pub mod channel;
pub mod linktype;
pub mod memory;
#[allow(unsafe_code)] // setns, geteuid, if_nametoindex
pub mod netns;
pub mod pcap;
pub mod pcapng;
pub mod route;
pub mod shm;
#[allow(unsafe_code)] // ppoll(2)
pub mod sleep;
#[allow(unsafe_code)] // setsockopt(2), getsockopt(2) of a plain value
mod sockopt;
#[allow(unsafe_code)] // ioctl(SIOCOUTQ), getsockopt(TCP_INFO)
pub mod tcp;
pub mod virtual_port;
pub mod wait;
pub mod xdp;
pub mod xdp_tap;

use braid_packet::Batch;
use std::os::fd::RawFd;

pub use wait::{wait_any, WaitReadiness};

/// Counters every port keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Received frames that were lost before reaching the chain (ring full,
    /// malformed descriptor, ...).
    pub rx_dropped: u64,
    /// Frames handed to `send` that could not be transmitted.
    pub tx_dropped: u64,
    /// System calls the port made to receive and transmit (`recvmmsg`,
    /// `sendmmsg`, AF_XDP wake-ups; shared memory: eventfd writes and
    /// reads, peer checks, accepts; channels: blocking waits only); None
    /// for port kinds that do not count them (in-memory, capture files).
    /// Waits in the worker's `poll(2)` are the worker's and counted there.
    pub syscalls: Option<u64>,
    /// An AF_XDP socket's own ring counters (`XDP_STATISTICS`), read by
    /// the port's `stats` (which its worker calls every tick); None for
    /// other port kinds. `rx_dropped` above already includes their
    /// `rx_dropped` and `rx_ring_full`.
    pub xsk: Option<af_xdp::XskStats>,
}

impl PortStats {
    /// Count one system call.
    #[inline]
    pub fn count_syscall(&mut self) {
        *self.syscalls.get_or_insert(0) += 1;
    }
}

/// Errors from ports. Each names what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// An operating-system call failed.
    #[error("{what}: {source}")]
    Os {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Input that does not follow its format (pcap file, descriptor ring).
    #[error("{0}")]
    Format(String),
    /// The peer of a channel went away.
    #[error("peer disconnected: {0}")]
    Disconnected(String),
    /// A configuration the port cannot use.
    #[error("{0}")]
    Config(String),
}

impl PortError {
    /// Wrap the last OS error with a description of what was attempted.
    pub fn last_os(what: impl Into<String>) -> PortError {
        PortError::Os { what: what.into(), source: std::io::Error::last_os_error() }
    }
}

/// A source and sink of packets.
///
/// `recv` and `send` never block unless the port was configured to wait;
/// a port that waits does so in [`Port::wait`].
pub trait Port: Send {
    /// A short description for statistics, e.g. `af_xdp:veth1/q0`.
    fn name(&self) -> String;

    /// Append up to `max` received packets to `batch`; returns how many.
    /// `Ok(0)` means nothing is ready now (or, see [`Port::at_end`], ever).
    fn recv(&mut self, batch: &mut Batch, max: usize) -> Result<usize, PortError>;

    /// Transmit every packet in `batch`, leaving it empty. Packets that could
    /// not be sent are dropped and counted in `tx_dropped`. Returns how many
    /// were sent.
    fn send(&mut self, batch: &mut Batch) -> Result<usize, PortError>;

    /// Push out anything buffered by earlier `send` calls.
    fn flush(&mut self) -> Result<(), PortError> {
        Ok(())
    }

    /// Complete an output: flush, and for outputs written aside (capture
    /// files) move the finished result into place. An output dropped
    /// without `finish` leaves no partial result in place of an older one.
    fn finish(&mut self) -> Result<(), PortError> {
        self.flush()
    }

    /// Block until packets may be ready or `timeout` passes. Ports that only
    /// poll return at once.
    fn wait(&mut self, _timeout: std::time::Duration) -> Result<(), PortError> {
        Ok(())
    }

    /// True when a finite source has delivered everything (end of a pcap
    /// file, a closed channel).
    fn at_end(&self) -> bool {
        false
    }

    /// Packets `send` could take right now without dropping any;
    /// `usize::MAX` when the port knows no limit. A worker with
    /// backpressure receives only while its outputs have room, so a slow
    /// consumer slows its producer instead of losing packets.
    fn tx_room(&mut self) -> usize {
        usize::MAX
    }

    /// Get ready to sleep on several ports at once (see [`wait_any`]): push
    /// the descriptors that become readable when packets (or a peer event)
    /// arrive into `fds`. [`WaitReadiness::Ready`] when packets are already
    /// waiting; [`WaitReadiness::NoDescriptor`] for ports that cannot be
    /// waited on through a descriptor (the caller then sleeps briefly).
    fn prepare_wait(&mut self, _fds: &mut Vec<RawFd>) -> WaitReadiness {
        WaitReadiness::NoDescriptor
    }

    /// Undo what [`Port::prepare_wait`] set up, after the sleep.
    fn finish_wait(&mut self) {}

    fn stats(&self) -> PortStats;
}

/// A borrowed port is a port: a worker can run over ports its caller keeps
/// (an offline run whose caller reads the sink afterwards).
impl<P: Port + ?Sized> Port for &mut P {
    fn name(&self) -> String {
        (**self).name()
    }
    fn recv(&mut self, batch: &mut Batch, max: usize) -> Result<usize, PortError> {
        (**self).recv(batch, max)
    }
    fn send(&mut self, batch: &mut Batch) -> Result<usize, PortError> {
        (**self).send(batch)
    }
    fn flush(&mut self) -> Result<(), PortError> {
        (**self).flush()
    }
    fn finish(&mut self) -> Result<(), PortError> {
        (**self).finish()
    }
    fn wait(&mut self, timeout: std::time::Duration) -> Result<(), PortError> {
        (**self).wait(timeout)
    }
    fn at_end(&self) -> bool {
        (**self).at_end()
    }
    fn tx_room(&mut self) -> usize {
        (**self).tx_room()
    }
    fn prepare_wait(&mut self, fds: &mut Vec<RawFd>) -> WaitReadiness {
        (**self).prepare_wait(fds)
    }
    fn finish_wait(&mut self) {
        (**self).finish_wait()
    }
    fn stats(&self) -> PortStats {
        (**self).stats()
    }
}
