//! Socket options the probe and echo server set.

use std::io;
use std::os::fd::AsRawFd;

fn set_int(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and its size is passed; the kernel
    // only reads it. An invalid fd or option yields an error, not UB.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `SO_BUSY_POLL`: spin on the device queue for up to `usecs` in blocking
/// receives instead of sleeping (lower latency, one CPU busy).
pub fn set_busy_poll(fd: &impl AsRawFd, usecs: u32) -> io::Result<()> {
    let v = libc::c_int::try_from(usecs)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "busy-poll time too large"))?;
    set_int(fd, libc::SOL_SOCKET, libc::SO_BUSY_POLL, v)
        .map_err(|e| io::Error::new(e.kind(), format!("setting SO_BUSY_POLL to {usecs} us: {e}")))
}

/// Grow the receive and send buffers to `bytes` each. As root the
/// `*BUFFORCE` variants pass `net.core.{r,w}mem_max`; otherwise the kernel
/// caps the value silently, which is fine: bigger buffers only absorb
/// bursts in throughput steps.
pub fn set_buffers(fd: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "socket buffer size too large"))?;
    for (force, plain) in
        [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)]
    {
        if set_int(fd, libc::SOL_SOCKET, force, v).is_err() {
            set_int(fd, libc::SOL_SOCKET, plain, v)?;
        }
    }
    Ok(())
}
