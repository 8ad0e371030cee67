//! The UDP echo server: every datagram goes back to its sender unchanged.
//!
//! It receives with `recvmmsg` and answers the whole batch with one
//! `sendmmsg`. With `batch = 1` each packet is answered before the next is
//! read, which is the setting for latency runs; larger batches are for the
//! throughput search. It runs until `stop` is set (checked at least every
//! [`POLL_INTERVAL`]) or until it has echoed `limit` packets.

use crate::mmsg::MsgBatch;
use crate::sockopt;
use serde::Serialize;
use std::io;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often a blocked receive wakes up to look at the stop flag.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Largest datagram the server echoes whole with a batch of 1.
pub const MAX_DATAGRAM: usize = 65_535;

/// Buffer size per datagram with batches larger than 1 (9000-byte jumbo
/// frames fit); longer datagrams are echoed truncated to it.
pub const BATCH_DATAGRAM: usize = 9216;

#[derive(Clone, Debug)]
pub struct EchoConfig {
    /// Datagrams per `recvmmsg`/`sendmmsg` call (1 = lowest latency).
    pub batch: usize,
    /// `SO_BUSY_POLL` time in microseconds, if set.
    pub busy_poll_us: Option<u32>,
    /// Stop after echoing this many datagrams.
    pub limit: Option<u64>,
}

impl Default for EchoConfig {
    fn default() -> EchoConfig {
        EchoConfig { batch: 32, busy_poll_us: None, limit: None }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EchoStats {
    pub received: u64,
    pub echoed: u64,
    /// Datagrams that could not be sent back (socket error, e.g. the
    /// client's port closed).
    pub send_errors: u64,
    pub bytes: u64,
}

/// Echo on `sock` until `stop` is set or `cfg.limit` datagrams are echoed.
pub fn run_echo(sock: &UdpSocket, cfg: &EchoConfig, stop: &AtomicBool) -> io::Result<EchoStats> {
    if cfg.batch == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "echo batch size must be at least 1",
        ));
    }
    sock.set_read_timeout(Some(POLL_INTERVAL))?;
    if let Some(us) = cfg.busy_poll_us {
        sockopt::set_busy_poll(sock, us)?;
    }
    if cfg.batch > 1 {
        sockopt::set_buffers(sock, 4 << 20)?;
    }
    // Batched mode keeps buffers small enough for jumbo frames; batch 1
    // takes any datagram whole.
    let buf_size = if cfg.batch > 1 { BATCH_DATAGRAM } else { MAX_DATAGRAM };
    let mut msgs = MsgBatch::new(cfg.batch, buf_size);
    let mut st = EchoStats::default();
    while !stop.load(Ordering::Relaxed) {
        if cfg.limit.is_some_and(|l| st.echoed >= l) {
            break;
        }
        let n = msgs.recv(sock, cfg.batch)?;
        if n == 0 {
            continue;
        }
        st.received += n as u64;
        st.bytes += (0..n).map(|i| msgs.payload(i).len() as u64).sum::<u64>();
        let (sent, err) = msgs.send_all(sock, n, true);
        st.echoed += sent as u64;
        if err.is_some() {
            st.send_errors += (n - sent) as u64;
        }
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_payload_unchanged_to_each_sender() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let h = s
                .spawn(|| run_echo(&server, &EchoConfig { batch: 4, ..Default::default() }, &stop));
            let clients: Vec<UdpSocket> =
                (0..2).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
            for (k, c) in clients.iter().enumerate() {
                c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                for i in 0..3u8 {
                    let msg = vec![k as u8 * 10 + i; 100 + i as usize];
                    c.send_to(&msg, addr).unwrap();
                    let mut buf = [0u8; 2048];
                    let (len, from) = c.recv_from(&mut buf).unwrap();
                    assert_eq!(from, addr);
                    assert_eq!(&buf[..len], &msg[..]);
                }
            }
            stop.store(true, Ordering::Relaxed);
            let st = h.join().unwrap().unwrap();
            assert_eq!((st.received, st.echoed, st.send_errors), (6, 6, 0));
            assert_eq!(st.bytes, 2 * (100 + 101 + 102));
        });
    }

    #[test]
    fn stops_at_limit_and_rejects_zero_batch() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let stop = AtomicBool::new(false);
        let cfg = EchoConfig { batch: 0, ..Default::default() };
        assert!(run_echo(&server, &cfg, &stop).is_err());
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.send_to(b"x", server.local_addr().unwrap()).unwrap();
        let cfg = EchoConfig { batch: 1, limit: Some(1), ..Default::default() };
        let st = run_echo(&server, &cfg, &stop).unwrap();
        assert_eq!(st.echoed, 1);
    }
}
