//! Socket options by value: the one place that passes a value's address
//! and size to `setsockopt(2)` / `getsockopt(2)`.

use std::io;
use std::mem::size_of;
use std::os::fd::RawFd;

/// `setsockopt(fd, level, name, &value)`, with `value`'s exact size.
///
/// `T` must be the plain C type the option expects (an `int`, a
/// `packet_mreq`, ...): the kernel reads `size_of::<T>()` bytes of it.
pub(crate) fn set<T: Copy>(fd: RawFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: the kernel reads `size_of::<T>()` bytes from `value`, which
    // is a live reference for the whole call; a bad descriptor or option is
    // an error return, not undefined behaviour.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `getsockopt(fd, level, name)` of an `int` option.
pub(crate) fn get_int(fd: RawFd, level: i32, name: i32) -> io::Result<libc::c_int> {
    let mut got: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes (one int) into `got`,
    // alive for the call, and the size it wrote into `len`.
    let rc = unsafe {
        libc::getsockopt(fd, level, name, (&mut got as *mut libc::c_int).cast(), &mut len)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// What is set is read back (the kernel doubles `SO_SNDBUF`), and a
    /// bad option is an error, not a crash.
    #[test]
    fn an_int_option_round_trips_and_a_bad_one_is_an_error() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = s.as_raw_fd();
        set(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &(64 * 1024 as libc::c_int)).unwrap();
        assert_eq!(get_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF).unwrap(), 128 * 1024);
        assert!(set(fd, libc::SOL_SOCKET, 0x7fff, &1i32).is_err());
        assert!(get_int(-1, libc::SOL_SOCKET, libc::SO_SNDBUF).is_err());
    }
}
