//! AF_PACKET port: raw frames on one interface, batched with
//! `recvmmsg(2)`/`sendmmsg(2)`.
//!
//! One system call moves up to `batch_size` frames (1 = one call per frame,
//! the classic socket path). Received frames are copied by the kernel
//! straight into pooled [`Packet`] buffers, so there is no second copy.
//!
//! The socket is non-blocking; [`Port::wait`] blocks in `poll(2)`. Frames the
//! port itself transmits are not received back (`PACKET_IGNORE_OUTGOING`,
//! plus a check of the packet type for older kernels). The interface is put
//! in promiscuous mode by default: an NF in the middle of a path sees frames
//! addressed to the next hop's MAC, not its own.

use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use braid_packet::{Batch, Packet, BUF_SIZE, DEFAULT_MTU, HEADROOM, MAX_FRAME, MAX_MTU};

use crate::{Port, PortError, PortStats};

/// Largest batch one system call moves.
pub const MAX_BATCH: usize = 256;

/// Receive buffer asked for each socket, bytes (the kernel doubles it for
/// its bookkeeping).
pub const RCVBUF: i32 = 4 << 20;

/// How an AF_PACKET port is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AfPacketConfig {
    /// Interface name, in the namespace of the thread that opens the port.
    pub iface: String,
    /// Frames per system call, 1..=[`MAX_BATCH`].
    pub batch_size: usize,
    /// Receive frames addressed to other hosts too (default true).
    pub promiscuous: bool,
    /// Send straight to the driver, skipping the qdisc layer
    /// (`PACKET_QDISC_BYPASS`; default false).
    pub qdisc_bypass: bool,
    /// Largest IP packet the port carries (68..=9000; default 1500). Above
    /// 1500, frames are received into jumbo buffers (room for
    /// [`MAX_FRAME`] bytes); a longer frame than the buffer is counted in
    /// `rx_dropped`, never cut.
    pub mtu: usize,
}

impl AfPacketConfig {
    pub fn new(iface: &str) -> AfPacketConfig {
        AfPacketConfig {
            iface: iface.to_string(),
            batch_size: 32,
            promiscuous: true,
            qdisc_bypass: false,
            mtu: DEFAULT_MTU,
        }
    }
}

/// A live port on one interface through an AF_PACKET socket.
pub struct AfPacketPort {
    fd: OwnedFd,
    iface: String,
    batch_size: usize,
    /// Receive room per frame: an ordinary buffer's, or a jumbo one's.
    rx_room: usize,
    stats: PortStats,
    /// Receive scratch: per-slot socket addresses, iovecs and headers.
    rx_addrs: Vec<libc::sockaddr_ll>,
    rx_iovs: Vec<libc::iovec>,
    rx_hdrs: Vec<libc::mmsghdr>,
    rx_bufs: Vec<Packet>,
    tx_iovs: Vec<libc::iovec>,
    tx_hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside the scratch vectors (iovecs, mmsghdrs) are
// only meaningful during one `recv`/`send` call, which re-creates them from
// owned data before each system call; nothing refers to thread-local state.
unsafe impl Send for AfPacketPort {}

fn os(what: String) -> PortError {
    PortError::last_os(what)
}

fn setsockopt_int(fd: i32, level: i32, name: i32, value: i32, what: &str) -> Result<(), PortError> {
    crate::sockopt::set(fd, level, name, &value)
        .map_err(|source| PortError::Os { what: what.to_string(), source })
}

impl AfPacketPort {
    /// Open a port on `cfg.iface` (in the calling thread's namespace).
    pub fn open(cfg: &AfPacketConfig) -> Result<AfPacketPort, PortError> {
        if cfg.batch_size == 0 || cfg.batch_size > MAX_BATCH {
            return Err(PortError::Config(format!(
                "af_packet {}: batch_size {} is out of range 1..={MAX_BATCH}",
                cfg.iface, cfg.batch_size
            )));
        }
        if !(68..=MAX_MTU).contains(&cfg.mtu) {
            return Err(PortError::Config(format!(
                "af_packet {}: mtu {} is out of range 68..={MAX_MTU}",
                cfg.iface, cfg.mtu
            )));
        }
        let ifindex = crate::netns::ifindex(&cfg.iface)
            .map_err(|e| PortError::Config(format!("af_packet: {e}")))?;
        // Protocol 0 at creation: nothing is received until `bind` names
        // the interface, so no frame from another interface slips in.
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(os(format!("af_packet {}: socket(AF_PACKET)", cfg.iface)));
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let s = fd.as_raw_fd();

        // Room for a burst in the kernel while the worker is busy (a
        // migration's destination releasing what it held sends hundreds of
        // frames at once, and their answers come back just as fast): the
        // default socket buffer (`net.core.rmem_default`, 208 KiB) holds
        // about 270 small frames, and what overflows it is lost silently.
        // Past `rmem_max` with CAP_NET_ADMIN, else as much as allowed.
        if setsockopt_int(s, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF, "").is_err() {
            let _ = setsockopt_int(s, libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF, "");
        }
        // Not fatal on kernels before 4.20; the packet type check in `recv`
        // filters our own frames there.
        let _ = setsockopt_int(s, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1, "");
        if cfg.qdisc_bypass {
            setsockopt_int(
                s,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                1,
                &format!("af_packet {}: PACKET_QDISC_BYPASS", cfg.iface),
            )?;
        }

        // SAFETY: an all-zero sockaddr_ll is valid; fields are set below.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a valid sockaddr_ll and its exact size is passed.
        let rc = unsafe {
            libc::bind(
                s,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(os(format!("af_packet {}: bind", cfg.iface)));
        }

        if cfg.promiscuous {
            // SAFETY: all-zero packet_mreq is valid; fields are set below.
            let mut mr: libc::packet_mreq = unsafe { zeroed() };
            mr.mr_ifindex = ifindex as i32;
            mr.mr_type = libc::PACKET_MR_PROMISC as u16;
            // The membership ends when the socket closes.
            crate::sockopt::set(s, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mr).map_err(
                |source| PortError::Os {
                    what: format!("af_packet {}: promiscuous mode", cfg.iface),
                    source,
                },
            )?;
        }

        let n = cfg.batch_size;
        Ok(AfPacketPort {
            fd,
            iface: cfg.iface.clone(),
            batch_size: n,
            rx_room: if cfg.mtu <= DEFAULT_MTU { BUF_SIZE - HEADROOM } else { MAX_FRAME },
            stats: PortStats { syscalls: Some(0), ..PortStats::default() },
            // SAFETY: all-zero sockaddr_ll / mmsghdr are valid values (null
            // pointers, zero lengths); they are filled before each call.
            rx_addrs: vec![unsafe { zeroed() }; n],
            rx_iovs: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; n],
            // SAFETY: as above.
            rx_hdrs: vec![unsafe { zeroed() }; n],
            rx_bufs: Vec::with_capacity(n),
            tx_iovs: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; n],
            // SAFETY: as above.
            tx_hdrs: vec![unsafe { zeroed() }; n],
        })
    }

    /// The batch size given at open.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The socket, to wait on it together with other sockets in one
    /// `poll(2)`.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// Block in poll(2) until `events` are ready or `timeout` passes.
    fn poll(&self, events: i16, timeout: Duration) -> Result<bool, PortError> {
        let mut pfd = [libc::pollfd { fd: self.fd.as_raw_fd(), events, revents: 0 }];
        let rc = crate::sleep::ppoll(&mut pfd, timeout);
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(PortError::Os {
                what: format!("af_packet {}: poll", self.iface),
                source: e,
            });
        }
        Ok(rc > 0)
    }

    /// One `sendmmsg` over `pkts`; returns how many frames were sent.
    fn send_chunk(&mut self, pkts: &[Packet]) -> Result<usize, std::io::Error> {
        let n = pkts.len();
        for (i, p) in pkts.iter().enumerate() {
            let d = p.data();
            self.tx_iovs[i] =
                libc::iovec { iov_base: d.as_ptr() as *mut libc::c_void, iov_len: d.len() };
            // SAFETY: an all-zero msghdr is valid.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_iov = &mut self.tx_iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            self.tx_hdrs[i] = h;
        }
        self.stats.count_syscall();
        // SAFETY: the first `n` headers point at iovecs that point into the
        // packets of `pkts`, all alive and unmodified for the call; the
        // kernel only reads them.
        let rc =
            unsafe { libc::sendmmsg(self.fd.as_raw_fd(), self.tx_hdrs.as_mut_ptr(), n as u32, 0) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(rc as usize)
    }
}

impl Port for AfPacketPort {
    fn name(&self) -> String {
        format!("af_packet:{}", self.iface)
    }

    fn recv(&mut self, batch: &mut Batch, max: usize) -> Result<usize, PortError> {
        let n = max.min(self.batch_size);
        if n == 0 {
            return Ok(0);
        }
        while self.rx_bufs.len() < n {
            let mut p = Packet::with_room(self.rx_room);
            p.set_len(self.rx_room).expect("a new packet has room for rx_room bytes");
            self.rx_bufs.push(p);
        }
        for i in 0..n {
            let d = self.rx_bufs[i].data_mut();
            self.rx_iovs[i] =
                libc::iovec { iov_base: d.as_mut_ptr() as *mut libc::c_void, iov_len: d.len() };
            // SAFETY: an all-zero msghdr is valid.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_iov = &mut self.rx_iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_name =
                &mut self.rx_addrs[i] as *mut libc::sockaddr_ll as *mut libc::c_void;
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
            self.rx_hdrs[i] = h;
        }
        self.stats.count_syscall();
        // SAFETY: the first `n` headers point at iovecs into the first `n`
        // packets of `rx_bufs` (each with the full buffer as its window) and
        // at `rx_addrs`; all stay alive and untouched during the call.
        let rc = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                self.rx_hdrs.as_mut_ptr(),
                n as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(0),
                _ => Err(PortError::Os {
                    what: format!("af_packet {}: recvmmsg", self.iface),
                    source: e,
                }),
            };
        }
        let got = rc as usize;
        let now = braid_packet::clock::monotonic_ns();
        let mut delivered = 0;
        // Take the filled buffers from the front, keeping order.
        for (i, mut p) in self.rx_bufs.drain(..got).enumerate() {
            let h = &self.rx_hdrs[i];
            let len = h.msg_len as usize;
            if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                self.stats.rx_dropped += 1;
                continue;
            }
            if self.rx_addrs[i].sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            p.truncate(len);
            p.meta.rx_ns = now;
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += len as u64;
            batch.push(p);
            delivered += 1;
        }
        Ok(delivered)
    }

    fn send(&mut self, batch: &mut Batch) -> Result<usize, PortError> {
        let mut sent = 0;
        let mut start = 0;
        let mut retried = false;
        let total = batch.len();
        while start < total {
            let end = (start + self.batch_size).min(total);
            let pkts = batch.as_slice();
            match self.send_chunk(&pkts[start..end]) {
                Ok(k) => {
                    for p in &batch.as_slice()[start..start + k] {
                        self.stats.tx_bytes += p.len() as u64;
                    }
                    self.stats.tx_packets += k as u64;
                    sent += k;
                    start += k;
                    retried = false;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && !retried => {
                    // Socket buffer full: give the device a moment once.
                    self.poll(libc::POLLOUT, Duration::from_millis(10))?;
                    retried = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.stats.tx_dropped += (total - start) as u64;
                    break;
                }
                Err(_) => {
                    // A frame the device refuses (too long, ...): drop it
                    // alone and carry on with the rest.
                    self.stats.tx_dropped += 1;
                    start += 1;
                }
            }
        }
        batch.clear();
        Ok(sent)
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), PortError> {
        self.poll(libc::POLLIN, timeout).map(drop)
    }

    fn prepare_wait(&mut self, fds: &mut Vec<std::os::fd::RawFd>) -> crate::WaitReadiness {
        use std::os::fd::AsRawFd;
        fds.push(self.as_fd().as_raw_fd());
        crate::WaitReadiness::Descriptors
    }

    fn stats(&self) -> PortStats {
        self.stats
    }
}

/// A send-only AF_PACKET socket on one interface, for single frames sent
/// rarely but at a moment that matters (a migration's drain markers): it
/// is opened ahead, in the interface's namespace, and receives nothing
/// (protocol 0), so keeping it open costs the interface no copies. Frames
/// go through the interface's queue (no `PACKET_QDISC_BYPASS`), behind
/// every frame already queued there.
#[derive(Debug)]
pub struct FrameSender {
    fd: OwnedFd,
    ifindex: u32,
    iface: String,
}

impl FrameSender {
    /// A sender on `iface` (in the calling thread's namespace).
    pub fn open(iface: &str) -> Result<FrameSender, PortError> {
        let ifindex = crate::netns::ifindex(iface)
            .map_err(|e| PortError::Config(format!("af_packet sender: {e}")))?;
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(os(format!("af_packet sender {iface}: socket(AF_PACKET)")));
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(FrameSender { fd, ifindex, iface: iface.to_string() })
    }

    /// The interface this sender sends on.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Send one whole Ethernet frame (header included) out of the interface.
    pub fn send(&self, frame: &[u8]) -> Result<(), PortError> {
        if frame.len() < 14 {
            return Err(PortError::Config(format!(
                "af_packet sender {}: a frame of {} bytes has no Ethernet header",
                self.iface,
                frame.len()
            )));
        }
        // SAFETY: an all-zero sockaddr_ll is valid; fields are set below.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        // The frame's own EtherType, already in network order.
        sll.sll_protocol = u16::from_ne_bytes([frame[12], frame[13]]);
        sll.sll_ifindex = self.ifindex as i32;
        // SAFETY: `frame` is valid for `frame.len()` bytes and `sll` is a
        // valid sockaddr_ll whose exact size is passed; both outlive the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(os(format!("af_packet sender {}: sendto", self.iface)));
        }
        if n as usize != frame.len() {
            return Err(PortError::Config(format!(
                "af_packet sender {}: sent {n} of {} bytes",
                self.iface,
                frame.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_batch_size_and_unknown_interface() {
        let mut cfg = AfPacketConfig::new("lo");
        cfg.batch_size = 0;
        let e = AfPacketPort::open(&cfg).err().expect("batch 0 must fail").to_string();
        assert!(e.contains("batch_size 0"), "{e}");
        let cfg = AfPacketConfig::new("braidnosuch0");
        let e = AfPacketPort::open(&cfg).err().expect("unknown iface must fail").to_string();
        assert!(e.contains("braidnosuch0"), "{e}");
    }

    #[test]
    fn counts_its_system_calls() {
        if braid_testkit::skip_unless(crate::netns::is_root(), "af_packet syscalls", "needs root") {
            return;
        }
        let mut p = AfPacketPort::open(&AfPacketConfig::new("lo")).unwrap();
        assert_eq!(p.stats().syscalls, Some(0));
        let mut b = Batch::new();
        p.recv(&mut b, 8).unwrap();
        assert_eq!(p.stats().syscalls, Some(1), "one recvmmsg");
        let mut out: Batch = std::iter::once(Packet::from_bytes(&[0xff; 60])).collect();
        p.send(&mut out).unwrap();
        assert_eq!(p.stats().syscalls, Some(2), "one sendmmsg");
    }
}
