//! The heartbeat to a supervisor: one byte down an inherited pipe at most
//! every interval, written from the packet loop itself so that it stops
//! when the loop does (a hung worker stops beating and is restarted).

use std::io::Write;
use std::time::{Duration, Instant};

/// A heartbeat pipe that is not usable.
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    #[error("{var}={value:?} is not a descriptor number above 2")]
    NotADescriptor { var: String, value: String },
    #[error("{var}={fd}: no such open descriptor")]
    NotOpen { var: String, fd: i32 },
    #[error("{var}={fd}: {source}")]
    Os {
        var: String,
        fd: i32,
        #[source]
        source: std::io::Error,
    },
}

/// See the module documentation.
#[derive(Debug)]
pub struct Heartbeat {
    pipe: std::fs::File,
    every: Duration,
    last: Option<Instant>,
}

impl Heartbeat {
    /// The pipe whose descriptor number the environment variable `var`
    /// names, if it is set; beats at most every `every`.
    #[allow(unsafe_code)]
    pub fn from_env(var: &str, every: Duration) -> Result<Option<Heartbeat>, HeartbeatError> {
        let Ok(v) = std::env::var(var) else { return Ok(None) };
        let fd: i32 = v.parse().ok().filter(|fd| *fd > 2).ok_or_else(|| {
            HeartbeatError::NotADescriptor { var: var.to_string(), value: v.clone() }
        })?;
        // SAFETY: fcntl(2) on a descriptor number: F_GETFD only asks
        // whether it is open; F_GETFL/F_SETFL make writes to it
        // non-blocking (a supervisor that stops reading must not stall the
        // packet loop).
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) < 0 {
                return Err(HeartbeatError::NotOpen { var: var.to_string(), fd });
            }
            let fl = libc::fcntl(fd, libc::F_GETFL);
            if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                return Err(HeartbeatError::Os {
                    var: var.to_string(),
                    fd,
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        // SAFETY: the supervisor passed this descriptor (the write end of
        // its heartbeat pipe) for this process to own; it was checked open
        // and nothing else in this process uses it.
        let pipe = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(Some(Heartbeat { pipe, every, last: None }))
    }

    /// Beat, unless the last beat is more recent than the interval.
    pub fn beat(&mut self) {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            return;
        }
        self.last = Some(Instant::now());
        // A full pipe (a supervisor that stopped reading) or a closed one
        // (supervisor gone) is not this loop's problem.
        let _ = self.pipe.write(b".");
    }
}
