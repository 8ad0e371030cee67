//! The virtual port: which backend carries packets between two NFs.
//!
//! An NF only ever sees a [`crate::Port`]. What is behind it follows from
//! where the two connected NFs run, decided when the chain is deployed:
//!
//! | where the two NFs are         | backend                                   |
//! |-------------------------------|-------------------------------------------|
//! | same thread                   | direct hand-over of the batch (no port)   |
//! | same process, other thread    | [`crate::channel`] (batches of handles)   |
//! | same host, other process      | [`crate::shm`] (descriptors in memfd rings)|
//! | other hosts                   | a live port: AF_XDP, else AF_PACKET       |
//!
//! A kernel-placed (XDP) NF has no user-space process: between it and a
//! user-space neighbour on the same host the packets cross by AF_XDP.

use std::fmt;

/// Where one NF instance runs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// Host (or network namespace standing in for one).
    pub host: String,
    /// Process on that host; `None` for an NF running in the kernel (XDP).
    pub process: Option<u32>,
    /// Thread in that process.
    pub thread: u32,
}

impl Location {
    /// A user-space NF.
    pub fn user(host: &str, process: u32, thread: u32) -> Location {
        Location { host: host.to_string(), process: Some(process), thread }
    }

    /// An NF running as an XDP program on `host`.
    pub fn kernel(host: &str) -> Location {
        Location { host: host.to_string(), process: None, thread: 0 }
    }
}

/// How far apart two NFs are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Locality {
    SameThread,
    SameProcess,
    SameHost,
    OtherHost,
}

/// The backend of a virtual port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// The next NF is called with the same batch in the same loop.
    Direct,
    /// [`crate::channel::ChannelPort`] between threads.
    Channel,
    /// [`crate::shm::ShmPort`] between processes.
    SharedMemory,
    /// AF_XDP socket over the link (zero-copy where the driver allows).
    AfXdp,
    /// AF_PACKET socket over the link (works on any interface).
    AfPacket,
}

impl Backend {
    /// The name shown by `braid plan`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Direct => "direct",
            Backend::Channel => "channel",
            Backend::SharedMemory => "shm",
            Backend::AfXdp => "af_xdp",
            Backend::AfPacket => "af_packet",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How far apart `a` and `b` are.
pub fn locality(a: &Location, b: &Location) -> Locality {
    if a.host != b.host {
        Locality::OtherHost
    } else if a.process.is_none() || a.process != b.process {
        Locality::SameHost
    } else if a.thread != b.thread {
        Locality::SameProcess
    } else {
        Locality::SameThread
    }
}

/// The backend for a link from `a` to `b`. `af_xdp_available` says whether
/// the interfaces between hosts can take AF_XDP (else AF_PACKET).
pub fn choose(a: &Location, b: &Location, af_xdp_available: bool) -> Backend {
    let live = if af_xdp_available { Backend::AfXdp } else { Backend::AfPacket };
    if a.process.is_none() || b.process.is_none() {
        // An XDP NF hands packets to user space through an AF_XDP socket.
        return if a.host == b.host { Backend::AfXdp } else { live };
    }
    match locality(a, b) {
        Locality::SameThread => Backend::Direct,
        Locality::SameProcess => Backend::Channel,
        Locality::SameHost => Backend::SharedMemory,
        Locality::OtherHost => live,
    }
}

/// Why [`choose`] picks its backend for `a` and `b`, in a few words.
pub fn reason(a: &Location, b: &Location) -> &'static str {
    match (a.process.is_none() || b.process.is_none(), locality(a, b)) {
        (true, _) => "one side runs in the kernel (XDP)",
        (false, Locality::SameThread) => "same thread: pass the batch on",
        (false, Locality::SameProcess) => "same process, other thread",
        (false, Locality::SameHost) => "same host, other process: shared memory",
        (false, Locality::OtherHost) => "other host: over the link",
    }
}

/// The backend and why, e.g. `shm (same host, other process: shared memory)`.
pub fn explain(a: &Location, b: &Location, af_xdp_available: bool) -> String {
    format!("{} ({})", choose(a, b, af_xdp_available), reason(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_follows_distance() {
        let a = Location::user("h1", 1, 0);
        assert_eq!(choose(&a, &Location::user("h1", 1, 0), true), Backend::Direct);
        assert_eq!(choose(&a, &Location::user("h1", 1, 1), true), Backend::Channel);
        assert_eq!(choose(&a, &Location::user("h1", 2, 0), true), Backend::SharedMemory);
        assert_eq!(choose(&a, &Location::user("h2", 1, 0), true), Backend::AfXdp);
        assert_eq!(choose(&a, &Location::user("h2", 1, 0), false), Backend::AfPacket);
        assert_eq!(choose(&Location::kernel("h1"), &a, false), Backend::AfXdp);
        assert_eq!(
            choose(&Location::kernel("h1"), &Location::user("h2", 1, 0), false),
            Backend::AfPacket
        );
        assert_eq!(locality(&Location::kernel("h1"), &Location::kernel("h1")), Locality::SameHost);
        assert!(explain(&a, &Location::user("h1", 2, 0), true).starts_with("shm ("));
    }
}
