//! What the kernel knows about a TCP connection's send side: the bytes
//! still in its send queue (`SIOCOUTQ`), its delivery rate and round-trip
//! times (`TCP_INFO`), fixed socket buffers (`SO_SNDBUF`, `SO_RCVBUF`),
//! and a receiver that acknowledges at once (`TCP_QUICKACK`).
//!
//! The migration's state stream uses them for back-pressure: it queues
//! new state only while few bytes are in flight on the connection, so
//! changes coalesce at the source instead of queueing behind each other
//! in the socket and on the link (docs/migration.md, "Back-pressure").

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;

/// Bytes in the socket's send queue: written by the application and not
/// yet acknowledged by the peer (unsent plus unacknowledged; `SIOCOUTQ`,
/// tcp(7)).
pub fn send_queue_bytes(sock: &impl AsRawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (== TIOCOUTQ) writes one int through the pointer,
    // which points at `n`, alive for the call; a bad descriptor is an
    // error return, not undefined behaviour.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// What `TCP_INFO` says about the send side (the fields braid uses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpSendInfo {
    /// Smoothed round-trip time, µs.
    pub rtt_us: u32,
    /// The lowest round-trip time seen, µs (0: not known, older kernels).
    pub min_rtt_us: u32,
    /// The most recent delivery rate sample, bytes/s (0: no sample yet or
    /// an older kernel). For an application-limited sender the kernel only
    /// ever raises it, so the migration's back-pressure measures its own
    /// rate instead (`braid_migrate::source::InFlightBound`).
    pub delivery_rate: u64,
    /// Whether that sample was limited by the application (it had nothing
    /// to send), not by the network.
    pub app_limited: bool,
    /// Bytes written and not yet sent (0: not known).
    pub notsent_bytes: u32,
}

impl TcpSendInfo {
    /// The bandwidth-delay product the last sample shows: delivery rate ×
    /// minimum RTT (the smoothed RTT when the minimum is not known), bytes;
    /// 0 when there is no sample.
    pub fn bdp(&self) -> u64 {
        let rtt = if self.min_rtt_us > 0 { self.min_rtt_us } else { self.rtt_us };
        self.delivery_rate.saturating_mul(u64::from(rtt)) / 1_000_000
    }
}

// Offsets in `struct tcp_info` (include/uapi/linux/tcp.h); the kernel
// copies out as much as it has and says how much.
const OFF_APP_LIMITED: usize = 7; // byte with delivery_rate_app_limited:1 (bit 0)
const OFF_RTT: usize = 68;
const OFF_NOTSENT: usize = 144;
const OFF_MIN_RTT: usize = 148;
const OFF_DELIVERY_RATE: usize = 160;

/// Read `TCP_INFO` of a TCP socket.
pub fn send_info(sock: &impl AsRawFd) -> io::Result<TcpSendInfo> {
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `buf`, which has
    // that many, and the new length into `len`; both live for the call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(parse_tcp_info(&buf[..(len as usize).min(buf.len())]))
}

fn parse_tcp_info(b: &[u8]) -> TcpSendInfo {
    let u32_at = |off: usize| {
        b.get(off..off + 4).map_or(0, |s| u32::from_ne_bytes(s.try_into().unwrap_or([0; 4])))
    };
    let u64_at = |off: usize| {
        b.get(off..off + 8).map_or(0, |s| u64::from_ne_bytes(s.try_into().unwrap_or([0; 8])))
    };
    TcpSendInfo {
        rtt_us: u32_at(OFF_RTT),
        min_rtt_us: u32_at(OFF_MIN_RTT),
        delivery_rate: u64_at(OFF_DELIVERY_RATE),
        app_limited: b.get(OFF_APP_LIMITED).is_some_and(|x| x & 1 == 1)
            && b.len() > OFF_DELIVERY_RATE,
        notsent_bytes: u32_at(OFF_NOTSENT),
    }
}

/// Fix the socket's send buffer at `bytes` (`SO_SNDBUF`; the kernel
/// doubles it for its bookkeeping and stops autotuning it). Returns what
/// the kernel reports afterwards.
pub fn set_send_buffer(sock: &impl AsRawFd, bytes: usize) -> io::Result<usize> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let fd = sock.as_raw_fd();
    crate::sockopt::set(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &v)?;
    let got = crate::sockopt::get_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)?;
    Ok(usize::try_from(got).unwrap_or(0))
}

/// Set the socket's receive buffer (`SO_RCVBUF`; the kernel doubles it
/// and stops autotuning it). On a listening socket, before connections
/// come, it applies to them (their window is agreed at the handshake).
pub fn set_recv_buffer(sock: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    crate::sockopt::set(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, &v)
}

/// A TCP stream whose reads acknowledge at once: `TCP_QUICKACK` before
/// every read (Linux leaves quick-ack mode by itself, so setting it once
/// does not last).
///
/// Why: a sender that keeps only a few segments in flight (the state
/// stream under back-pressure on a busy link: 2–4 kB) often leaves one
/// segment unpaired, which a delayed-ACK receiver acknowledges only after
/// its delayed-ACK timer (40 ms on Linux). Those waits inflate the
/// sender's round-trip time, which its back-pressure reads as a queue on
/// the path, so it sends less still.
#[derive(Debug)]
pub struct QuickAckStream(pub TcpStream);

impl io::Read for QuickAckStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Best effort: a socket that refuses it reads as before.
        let on: libc::c_int = 1;
        let _ = crate::sockopt::set(self.0.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_QUICKACK, &on);
        self.0.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// Bytes the peer has not read stay in the send queue (once the
    /// peer's receive window is full) and leave it when it reads.
    #[test]
    fn the_send_queue_holds_what_the_peer_did_not_take_and_empties_when_it_reads() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut tx = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut rx, _) = l.accept().unwrap();
        let granted = set_send_buffer(&tx, 64 << 10).unwrap();
        assert!(granted >= 64 << 10, "SO_SNDBUF {granted}");
        assert_eq!(send_queue_bytes(&tx).unwrap(), 0);
        // Shrink the receiver's window so the sender's queue must hold.
        tx.set_nonblocking(true).unwrap();
        let chunk = [7u8; 4096];
        let mut written = 0usize;
        // Fill until the kernel refuses (bounded: the buffers are finite).
        for _ in 0..100_000 {
            match tx.write(&chunk) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let queued = send_queue_bytes(&tx).unwrap();
        assert!(queued > 0 && queued <= written, "queued {queued} of {written}");
        // Read everything: the queue drains (acks come back on loopback).
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        while got < written {
            got += rx.read(&mut buf).unwrap();
        }
        let mut left = usize::MAX;
        for _ in 0..1000 {
            left = send_queue_bytes(&tx).unwrap();
            if left == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(left, 0);
        let info = send_info(&tx).unwrap();
        assert!(info.rtt_us > 0, "{info:?}");
        assert!(info.delivery_rate > 0 && info.bdp() > 0, "{info:?}");
    }

    #[test]
    fn a_short_tcp_info_reads_as_unknown_fields() {
        let i = parse_tcp_info(&[0u8; 70]);
        assert_eq!(i, TcpSendInfo::default());
        assert_eq!(i.bdp(), 0);
        let mut b = [0u8; 168];
        b[OFF_RTT..OFF_RTT + 4].copy_from_slice(&2000u32.to_ne_bytes());
        b[OFF_MIN_RTT..OFF_MIN_RTT + 4].copy_from_slice(&1000u32.to_ne_bytes());
        b[OFF_DELIVERY_RATE..OFF_DELIVERY_RATE + 8].copy_from_slice(&1_250_000u64.to_ne_bytes());
        let i = parse_tcp_info(&b);
        assert_eq!(i.bdp(), 1250, "1.25 MB/s × 1 ms");
    }

    #[test]
    fn a_descriptor_that_is_no_socket_is_an_error() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(send_queue_bytes(&f).is_err());
        assert!(send_info(&f).is_err());
    }
}
