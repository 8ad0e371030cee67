//! The control channel: a Unix stream socket that sets a shared-memory
//! channel up (vhost-user style) and then stays open so that each side
//! notices when the other process dies (the kernel closes its end: EOF).
//!
//! The creator sends one fixed 32-byte hello (magic, version, slot count,
//! slot size, region length) with three descriptors attached as
//! `SCM_RIGHTS`: the region's memfd and two eventfds (wake side 0, wake
//! side 1).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::layout::{MAGIC, VERSION};
use crate::PortError;

/// Bytes of the hello message.
pub const HELLO_LEN: usize = 32;
/// Descriptors sent with the hello: memfd, eventfd of side 0, of side 1.
pub const HELLO_FDS: usize = 3;

/// The set-up message from the creator of a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub slots: u32,
    pub slot_size: u32,
    pub region_len: u64,
}

impl Hello {
    fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.slots.to_le_bytes());
        b[16..20].copy_from_slice(&self.slot_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.region_len.to_le_bytes());
        b
    }

    /// Parse a hello, checking magic and version.
    pub fn decode(b: &[u8]) -> Result<Hello, PortError> {
        if b.len() != HELLO_LEN {
            return Err(PortError::Format(format!(
                "shm hello is {} bytes, expected {HELLO_LEN}",
                b.len()
            )));
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut m = [0u8; 8];
        m.copy_from_slice(&b[0..8]);
        if u64::from_le_bytes(m) != MAGIC {
            return Err(PortError::Format(
                "shm hello: bad magic (not a braid shared-memory socket)".into(),
            ));
        }
        if u32_at(8) != VERSION {
            return Err(PortError::Format(format!(
                "shm hello: layout version {}, this side speaks {VERSION}",
                u32_at(8)
            )));
        }
        let mut l = [0u8; 8];
        l.copy_from_slice(&b[24..32]);
        Ok(Hello { slots: u32_at(12), slot_size: u32_at(16), region_len: u64::from_le_bytes(l) })
    }
}

/// Send the hello with `fds` attached.
pub fn send_hello(sock: &UnixStream, hello: &Hello, fds: &[RawFd]) -> Result<(), PortError> {
    let msg = hello.encode();
    let fd_bytes = std::mem::size_of_val(fds);
    // u64 array: cmsg buffers must be aligned for `cmsghdr`.
    let mut cbuf = [0u64; 8];
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    if space > std::mem::size_of_val(&cbuf) {
        return Err(PortError::Config(format!(
            "{} descriptors do not fit one control message",
            fds.len()
        )));
    }
    let mut iov = libc::iovec { iov_base: msg.as_ptr() as *mut libc::c_void, iov_len: msg.len() };
    // SAFETY: zeroed msghdr is a valid empty header.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf.as_mut_ptr().cast();
    mh.msg_controllen = space as _;
    // SAFETY: msg_control points to `space` writable, aligned bytes, so the
    // first header exists and has room for `fd_bytes` of data.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&mh);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), fd_bytes);
    }
    // SAFETY: `mh` describes valid buffers that outlive the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &mh, libc::MSG_NOSIGNAL) };
    if n != msg.len() as isize {
        return Err(PortError::last_os("sendmsg of the shm hello"));
    }
    Ok(())
}

/// Receive the hello and its descriptors, waiting at most `timeout`.
pub fn recv_hello(
    sock: &UnixStream,
    timeout: Duration,
) -> Result<(Hello, Vec<OwnedFd>), PortError> {
    sock.set_read_timeout(Some(timeout.max(Duration::from_millis(1)))).map_err(|e| {
        PortError::Os { what: "set timeout on the shm control socket".into(), source: e }
    })?;
    let mut msg = [0u8; HELLO_LEN];
    let mut cbuf = [0u64; 16];
    let mut iov = libc::iovec { iov_base: msg.as_mut_ptr().cast(), iov_len: msg.len() };
    // SAFETY: zeroed msghdr is a valid empty header.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf.as_mut_ptr().cast();
    mh.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    // SAFETY: `mh` describes valid writable buffers that outlive the call.
    let n = unsafe {
        libc::recvmsg(sock.as_raw_fd(), &mut mh, libc::MSG_CMSG_CLOEXEC | libc::MSG_WAITALL)
    };
    if n < 0 {
        return Err(PortError::last_os("recvmsg of the shm hello"));
    }
    // Take ownership of every received descriptor first, so they are closed
    // whatever goes wrong below.
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `mh.msg_control` with well-formed control
    // messages; CMSG_FIRSTHDR/NXTHDR stay within msg_controllen, and each
    // SCM_RIGHTS payload holds whole `int`s that are now ours.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&mh);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&mh, c);
        }
    }
    if n == 0 {
        return Err(PortError::Disconnected("shm control socket closed before the hello".into()));
    }
    if mh.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(PortError::Format("shm hello: descriptors truncated".into()));
    }
    let hello = Hello::decode(&msg[..n as usize])?;
    if fds.len() != HELLO_FDS {
        return Err(PortError::Format(format!(
            "shm hello carried {} descriptors, expected {HELLO_FDS}",
            fds.len()
        )));
    }
    sock.set_read_timeout(None).map_err(|e| PortError::Os {
        what: "clear timeout on the shm control socket".into(),
        source: e,
    })?;
    Ok((hello, fds))
}

/// A non-blocking eventfd for wake-ups.
pub fn eventfd() -> Result<OwnedFd, PortError> {
    // SAFETY: eventfd returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(PortError::last_os("eventfd"));
    }
    // SAFETY: fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Wake whoever sleeps on `fd`.
pub fn notify(fd: &OwnedFd) {
    let one = 1u64;
    // SAFETY: writing 8 bytes from a valid u64 to an eventfd. A full counter
    // (EAGAIN) means a wake-up is pending anyway, so the result is ignored.
    unsafe {
        libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8);
    }
}

/// Reset an eventfd's counter.
pub fn drain(fd: &OwnedFd) {
    let mut v = 0u64;
    // SAFETY: reading 8 bytes into a valid u64 from a non-blocking eventfd.
    unsafe {
        libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8);
    }
}

/// Block until one of `fds` is readable (or hung up) or `timeout` passes.
pub fn poll_readable(fds: &[RawFd], timeout: Duration) -> Result<(), PortError> {
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    // ppoll, not poll: a timeout below 1 ms must sleep, not spin.
    let r = crate::sleep::ppoll(&mut pfds, timeout);
    if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
        return Err(PortError::last_os("poll on the shm wake-up descriptors"));
    }
    Ok(())
}

/// The pid of the process at the other end, from `SO_PEERCRED`.
pub fn peer_pid(sock: &UnixStream) -> Option<i32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid out-pointers of the right size.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0 && cred.pid > 0).then_some(cred.pid)
}

/// True if the peer closed its end (it exited or was killed). Never blocks.
pub fn peer_closed(sock: &UnixStream) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: peeking one byte into a valid buffer without blocking.
    let n = unsafe {
        libc::recv(sock.as_raw_fd(), b.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
    };
    if n == 0 {
        return true;
    }
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        );
    }
    false
}

/// Best-effort goodbye so a peer that is still alive learns at once that
/// this side is leaving (closing the socket does the same).
pub fn shutdown(sock: &UnixStream) {
    let _ = sock.shutdown(std::net::Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn hello_carries_descriptors() {
        let (a, b) = UnixStream::pair().unwrap();
        let e1 = eventfd().unwrap();
        let e2 = eventfd().unwrap();
        let e3 = eventfd().unwrap();
        let h = Hello { slots: 64, slot_size: 2048, region_len: 1 << 20 };
        send_hello(&a, &h, &[e1.as_raw_fd(), e2.as_raw_fd(), e3.as_raw_fd()]).unwrap();
        let (got, fds) = recv_hello(&b, Duration::from_secs(1)).unwrap();
        assert_eq!(got, h);
        assert_eq!(fds.len(), 3);
        notify(&fds[0]);
        poll_readable(&[e1.as_raw_fd()], Duration::from_secs(1)).unwrap();
        let mut v = 0u64;
        // SAFETY: test read of an eventfd counter into a u64.
        let n = unsafe { libc::read(e1.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        assert_eq!((n, v), (8, 1), "the received fd is the same eventfd");
        assert_eq!(peer_pid(&a), Some(std::process::id() as i32));
        assert!(!peer_closed(&a));
        drop(b);
        assert!(peer_closed(&a));
    }

    #[test]
    fn garbage_hello_is_an_error() {
        assert!(Hello::decode(&[0u8; 32]).unwrap_err().to_string().contains("magic"));
        assert!(Hello::decode(&[0u8; 5]).is_err());
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(&[1u8; HELLO_LEN]).unwrap();
        assert!(recv_hello(&b, Duration::from_secs(1)).is_err());
        drop(a);
        assert!(recv_hello(&b, Duration::from_millis(50)).is_err());
    }
}
