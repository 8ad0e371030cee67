//! The shared memory region: a memfd mapped `MAP_SHARED` into both processes.
//!
//! The creator sizes the memfd and maps it; the peer receives the descriptor
//! over the control socket ([`super::control`]) and maps the whole file. A
//! region is optionally backed by huge pages (`MFD_HUGETLB`), which saves TLB
//! misses on the packet slots; when the machine has no huge pages reserved
//! the creation falls back to normal pages and says so in
//! [`Region::is_hugepage`].

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use crate::PortError;

/// Size of a huge page as used for `MFD_HUGETLB` (the x86-64 default).
const HUGEPAGE_SIZE: usize = 2 << 20;

/// A mapped shared-memory region.
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
    hugepage: bool,
}

// SAFETY: the mapping is plain shared memory that lives until `Drop`; all
// concurrent access to it goes through atomics (ring indices and entries) or
// through slots that the ownership protocol gives to exactly one user.
unsafe impl Send for Region {}
// SAFETY: as for Send; `&Region` only hands out the base pointer and length.
unsafe impl Sync for Region {}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

impl Region {
    /// Create a region of at least `len` bytes. With `hugepage` the memfd is
    /// backed by 2 MiB pages if the kernel has any to give, else by normal
    /// pages.
    pub fn create(name: &str, len: usize, hugepage: bool) -> Result<Region, PortError> {
        if len == 0 {
            return Err(PortError::Config("shared memory region of 0 bytes".into()));
        }
        if hugepage {
            if let Ok(r) = Region::create_with(name, round_up(len, HUGEPAGE_SIZE), true) {
                return Ok(r);
            }
        }
        Region::create_with(name, round_up(len, page_size()), false)
    }

    fn create_with(name: &str, len: usize, hugepage: bool) -> Result<Region, PortError> {
        let cname = CString::new(name.replace('\0', "_"))
            .map_err(|_| PortError::Config(format!("bad region name {name:?}")))?;
        let mut flags = libc::MFD_CLOEXEC;
        if hugepage {
            flags |= libc::MFD_HUGETLB;
        }
        // SAFETY: memfd_create reads the NUL-terminated name and returns a new
        // descriptor or -1.
        let raw = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
        if raw < 0 {
            return Err(PortError::last_os(format!("memfd_create({name:?}, hugepage={hugepage})")));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ftruncate on our own descriptor.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(PortError::last_os(format!("ftruncate memfd {name:?} to {len} bytes")));
        }
        let ptr = map(&fd, len)?;
        Ok(Region { ptr, len, fd, hugepage })
    }

    /// Map a region received from the creator. The whole file is mapped; it
    /// must hold at least `min_len` bytes.
    pub fn open(fd: OwnedFd, min_len: usize) -> Result<Region, PortError> {
        // SAFETY: fstat fills the zeroed struct for a valid descriptor.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid out-pointer, `fd` is open.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(PortError::last_os("fstat of the received shared memory descriptor"));
        }
        let len = st.st_size as usize;
        if st.st_size < 0 || len < min_len {
            return Err(PortError::Format(format!(
                "shared memory region is {} bytes, the layout needs {min_len}",
                st.st_size
            )));
        }
        let ptr = map(&fd, len)?;
        let hugepage = st.st_blksize as usize >= HUGEPAGE_SIZE;
        Ok(Region { ptr, len, fd, hugepage })
    }

    /// Base address of the mapping.
    pub fn base(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a region has at least one page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True if the region sits on huge pages.
    pub fn is_hugepage(&self) -> bool {
        self.hugepage
    }

    /// The memfd, to pass to the peer.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// True if `ptr..ptr+len` lies inside the mapping (used by tests that
    /// check a hostile peer cannot redirect reads outside the region).
    pub fn contains(&self, ptr: *const u8, len: usize) -> bool {
        let base = self.base() as usize;
        let p = ptr as usize;
        p >= base && p.checked_add(len).is_some_and(|end| end <= base + self.len)
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

fn map(fd: &OwnedFd, len: usize) -> Result<NonNull<u8>, PortError> {
    // SAFETY: a fresh shared mapping of our own descriptor; the kernel picks
    // the address. MAP_POPULATE pre-faults the pages so the data path does
    // not take page faults.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(PortError::last_os(format!("mmap of {len} bytes of shared memory")));
    }
    NonNull::new(p.cast::<u8>()).ok_or_else(|| PortError::Format("mmap returned address 0".into()))
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `map`; every user of
        // the region holds an `Arc<Region>`, so none is left.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_and_open_share_bytes() {
        let a = Region::create("braid-test", 10_000, false).unwrap();
        assert!(a.len() >= 10_000);
        // SAFETY: test-only, the region is 10000+ bytes and unshared so far.
        unsafe { a.base().add(5000).write(0xAB) };
        let dup = a.fd().try_clone().unwrap();
        let b = Region::open(dup, 10_000).unwrap();
        // SAFETY: as above, reading the byte just written through the other mapping.
        assert_eq!(unsafe { b.base().add(5000).read() }, 0xAB);
        assert!(b.contains(b.base(), b.len()));
        assert!(!b.contains(b.base(), b.len() + 1));
    }

    #[test]
    fn open_rejects_short_file() {
        let a = Region::create("braid-test", 4096, false).unwrap();
        let dup = a.fd().try_clone().unwrap();
        assert!(matches!(Region::open(dup, 1 << 30), Err(PortError::Format(_))));
    }

    #[test]
    fn hugepage_request_always_yields_a_region() {
        let r = Region::create("braid-test-huge", 1 << 20, true).unwrap();
        assert!(r.len() >= 1 << 20);
    }
}
