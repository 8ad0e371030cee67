//! Stop flag for long-running commands (`braid echo`, `deploy`, `run`, ...):
//! SIGINT, SIGTERM and SIGHUP (the terminal went away) set a flag instead
//! of killing the process, so it can print its final counters, close its
//! sockets and undo what it changed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// The flag the handler sets; created before the handlers are installed,
/// so the handler only ever reads an initialised cell.
static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

extern "C" fn on_signal(_sig: libc::c_int) {
    // An atomic load of the initialised cell and an atomic store:
    // async-signal-safe.
    if let Some(f) = STOP.get() {
        f.store(true, Ordering::Relaxed);
    }
}

/// Install the handlers (idempotent) and return the flag they set.
pub fn stop_on_signals() -> std::io::Result<&'static AtomicBool> {
    Ok(stop_flag_on_signals_ref()?.as_ref())
}

/// The same flag as an `Arc`, for a `braid_dataplane::WorkerConfig`.
pub fn stop_flag_on_signals() -> std::io::Result<Arc<AtomicBool>> {
    Ok(stop_flag_on_signals_ref()?.clone())
}

fn stop_flag_on_signals_ref() -> std::io::Result<&'static Arc<AtomicBool>> {
    let flag = STOP.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a plain handler, an empty mask and
        // no flags is valid; the handler only does atomic loads and stores.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(flag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigterm_sets_the_flag_instead_of_killing() {
        let flag = stop_on_signals().unwrap();
        let arc = stop_flag_on_signals().unwrap();
        assert!(!flag.load(Ordering::Relaxed));
        // SAFETY: raising a signal whose handler was just installed.
        unsafe { libc::raise(libc::SIGTERM) };
        assert!(flag.load(Ordering::Relaxed));
        assert!(arc.load(Ordering::Relaxed), "one flag behind both");
        flag.store(false, Ordering::Relaxed);
    }
}
