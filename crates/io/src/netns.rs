//! Network namespace and veth helpers for tests, the testbed and benchmarks.
//!
//! Setup goes through the `ip` and `ethtool` commands (simple, robust, and
//! the same thing an operator would type); entering a namespace from Rust
//! uses `setns(2)` on a dedicated thread so the caller's thread never
//! changes namespace.
//!
//! Everything created through this module can be held by an RAII guard
//! ([`NetnsGuard`], [`LinkGuard`]) that deletes it on drop, also when a test
//! panics. Names are made unique with the process id ([`unique_name`],
//! [`unique_ifname`]) so parallel tests and engineers never collide.
//!
//! ```no_run
//! use braid_io::netns::{self, NetnsGuard, LinkGuard};
//! # fn main() -> Result<(), netns::NetnsError> {
//! let ns = NetnsGuard::create(&netns::unique_name("demo"))?;
//! let veth = LinkGuard::veth(&netns::unique_ifname("da"), &netns::unique_ifname("db"))?;
//! veth.move_end_to(veth.b(), &ns)?;
//! netns::add_addr(None, veth.a(), "10.9.0.1/24")?;
//! netns::add_addr(Some(ns.name()), veth.b(), "10.9.0.2/24")?;
//! netns::set_up(None, veth.a())?;
//! netns::set_up(Some(ns.name()), veth.b())?;
//! let out = ns.command("ping").args(["-c1", "-W1", "10.9.0.1"]).output();
//! # let _ = out; Ok(()) }
//! ```
//! (`move_end_to` takes `&self`: the guard remembers where each end lives.)

use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Errors from namespace and link setup.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A command ran and reported failure.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command { command: String, status: String, stderr: String },
    /// A command or system call could not be run at all.
    #[error("{what}: {source}")]
    Os {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A name that cannot be used (too long, bad characters).
    #[error("{0}")]
    BadName(String),
}

/// True when the process runs as root (namespace and link setup need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A namespace name unique to this process: `braid-<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("braid-{prefix}-{}-{n}", std::process::id())
}

/// The pid in a name made by [`unique_name`] with `prefix`
/// (`braid-<prefix>-<pid>-<n>`; the prefix may itself contain dashes).
pub fn unique_name_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix("braid-")?.strip_prefix(prefix)?;
    let mut parts = rest.rsplitn(3, '-');
    let n = parts.next()?;
    let pid = parts.next()?;
    parts.next()?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Delete the namespaces named by [`unique_name`] with `prefix` whose
/// creating process is gone (killed before it could delete them: SIGKILL
/// cannot be caught). A namespace whose pid runs — the process that made
/// it, or another that reused the pid — is left alone. Returns the names
/// deleted.
pub fn reap_orphans(prefix: &str) -> Result<Vec<String>, NetnsError> {
    let out = ip(None, &["netns", "list"])?;
    let mut removed = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(pid) = unique_name_pid(name, prefix) else { continue };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        ip(None, &["netns", "del", name])?;
        removed.push(name.to_string());
    }
    Ok(removed)
}

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// An interface name unique to this process that fits in [`IFNAME_MAX`]:
/// up to 5 characters of `prefix`, the pid in hex and a counter in hex.
pub fn unique_ifname(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let p: String = prefix.chars().filter(|c| c.is_ascii_alphanumeric()).take(5).collect();
    let name = format!("{p}{:x}x{n:x}", std::process::id());
    name.chars().take(IFNAME_MAX).collect()
}

fn check_ifname(name: &str) -> Result<(), NetnsError> {
    if name.is_empty() || name.len() > IFNAME_MAX || name.contains(['/', ' ', '\0']) {
        return Err(NetnsError::BadName(format!(
            "interface name {name:?} is invalid (1..={IFNAME_MAX} characters, no '/' or spaces)"
        )));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run `cmd`, turning a failed exit status into an error with its stderr.
pub fn run(cmd: &mut Command) -> Result<Output, NetnsError> {
    let out = cmd.output().map_err(|source| NetnsError::Os {
        what: format!("cannot run `{}`", describe(cmd)),
        source,
    })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            command: describe(cmd),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// A `Command` for `program` that runs inside namespace `ns` (through
/// `ip netns exec`), or in the current namespace for `None`.
///
/// Note that `ip netns exec` remounts `/sys` for the child, so bpffs pins
/// made outside are not visible inside.
pub fn command_in(ns: Option<&str>, program: &str) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    }
}

/// Run `ip ARGS` in namespace `ns` (or the current one).
pub fn ip(ns: Option<&str>, args: &[&str]) -> Result<Output, NetnsError> {
    let mut c = Command::new("ip");
    if let Some(ns) = ns {
        c.args(["-n", ns]);
    }
    run(c.args(args))
}

/// Bring `dev` up.
pub fn set_up(ns: Option<&str>, dev: &str) -> Result<(), NetnsError> {
    ip(ns, &["link", "set", "dev", dev, "up"]).map(drop)
}

/// Add an address in CIDR form (`10.0.0.1/24`) to `dev`.
pub fn add_addr(ns: Option<&str>, dev: &str, cidr: &str) -> Result<(), NetnsError> {
    ip(ns, &["addr", "add", cidr, "dev", dev]).map(drop)
}

/// Add a route to `dst` (CIDR or `default`) via gateway `via`.
pub fn add_route(ns: Option<&str>, dst: &str, via: &str) -> Result<(), NetnsError> {
    ip(ns, &["route", "add", dst, "via", via]).map(drop)
}

/// Add a permanent neighbour (ARP) entry so no resolution is needed.
pub fn add_neigh(ns: Option<&str>, dev: &str, addr: &str, mac: &str) -> Result<(), NetnsError> {
    ip(ns, &["neigh", "replace", addr, "lladdr", mac, "dev", dev, "nud", "permanent"]).map(drop)
}

/// The MAC address of `dev` as `aa:bb:cc:dd:ee:ff`.
pub fn mac_addr(ns: Option<&str>, dev: &str) -> Result<String, NetnsError> {
    let out = ip(ns, &["-o", "link", "show", "dev", dev])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "link/ether" {
            if let Some(mac) = words.next() {
                return Ok(mac.to_string());
            }
        }
    }
    Err(NetnsError::BadName(format!("interface {dev} has no Ethernet address: {}", text.trim())))
}

/// Set `dev`'s MTU.
pub fn set_mtu(ns: Option<&str>, dev: &str, mtu: u32) -> Result<(), NetnsError> {
    ip(ns, &["link", "set", "dev", dev, "mtu", &mtu.to_string()]).map(drop)
}

/// Enable IPv4 forwarding in `ns`.
pub fn enable_forwarding(ns: Option<&str>) -> Result<(), NetnsError> {
    set_forwarding(ns, true)
}

/// Turn IPv4 forwarding in `ns` on or off. Writes
/// `/proc/sys/net/ipv4/ip_forward` from a thread inside the namespace
/// (that file shows the namespace of whoever opens it), so no `sysctl`
/// binary is needed.
pub fn set_forwarding(ns: Option<&str>, on: bool) -> Result<(), NetnsError> {
    let write = move || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", if on { "1\n" } else { "0\n" }).map_err(
            |source| NetnsError::Os {
                what: format!(
                    "setting ip_forward={} in {}",
                    on as u8,
                    ns.unwrap_or("this namespace")
                ),
                source,
            },
        )
    };
    match ns {
        Some(name) => in_netns(name, write)?,
        None => write(),
    }
}

/// Turn transmit checksum offload off on `dev` (`ethtool -K dev tx off`).
///
/// On veth, offload leaves UDP checksums unfinished in frames that a
/// user-space forwarder picks up; the final receiver then drops them while
/// ping still works. Every veth that carries traffic to a user-space NF
/// needs this.
pub fn tx_checksum_off(ns: Option<&str>, dev: &str) -> Result<(), NetnsError> {
    run(command_in(ns, "ethtool").args(["-K", dev, "tx", "off"])).map(drop)
}

/// Make `dev`'s NAPI processing run in its own kernel thread
/// (`/sys/class/net/DEV/threaded`), moving veth receive work off the
/// sender's CPU.
pub fn set_threaded_napi(ns: Option<&str>, dev: &str, on: bool) -> Result<(), NetnsError> {
    check_ifname(dev)?;
    let v = if on { "1" } else { "0" };
    // `ip netns exec` mounts the namespace's own /sys for the shell.
    run(command_in(ns, "sh").args(["-c", &format!("echo {v} > /sys/class/net/{dev}/threaded")]))
        .map(drop)
}

/// The interface index of `dev` in the calling thread's namespace.
pub fn ifindex(dev: &str) -> Result<u32, NetnsError> {
    check_ifname(dev)?;
    let c = std::ffi::CString::new(dev).map_err(|_| NetnsError::BadName(dev.to_string()))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(NetnsError::Os {
            what: format!("interface {dev} not found"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(idx)
}

/// Run `f` on a new thread that has entered network namespace `ns`, and
/// return its result. The caller's thread is not affected. Sockets created
/// inside stay in `ns` and may be used from any thread afterwards, which is
/// how ports are opened on interfaces that live in a namespace.
pub fn in_netns<F, R>(ns: &str, f: F) -> Result<R, NetnsError>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).map_err(|source| NetnsError::Os {
        what: format!("cannot open namespace {path}"),
        source,
    })?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || {
            // SAFETY: `file` is an open namespace file; setns only changes the
            // network namespace of this (fresh, private) thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(NetnsError::Os {
                    what: format!("setns into namespace {ns}"),
                    source: std::io::Error::last_os_error(),
                });
            }
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// A network namespace that is deleted when the guard drops.
#[derive(Debug)]
pub struct NetnsGuard {
    name: String,
}

impl NetnsGuard {
    /// Create namespace `name` (fails if it exists) with loopback up.
    pub fn create(name: &str) -> Result<NetnsGuard, NetnsError> {
        if name.is_empty() || name.contains(['/', ' ', '\0']) {
            return Err(NetnsError::BadName(format!("namespace name {name:?} is invalid")));
        }
        ip(None, &["netns", "add", name])?;
        let g = NetnsGuard { name: name.to_string() };
        set_up(Some(name), "lo")?;
        Ok(g)
    }

    /// Take responsibility for deleting an existing namespace.
    pub fn adopt(name: &str) -> NetnsGuard {
        NetnsGuard { name: name.to_string() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `Command` for `program` running in this namespace.
    pub fn command(&self, program: &str) -> Command {
        command_in(Some(&self.name), program)
    }

    /// Run `ip ARGS` in this namespace.
    pub fn ip(&self, args: &[&str]) -> Result<Output, NetnsError> {
        ip(Some(&self.name), args)
    }

    /// Run `f` on a thread inside this namespace (see [`in_netns`]).
    pub fn enter<F: FnOnce() -> R + Send, R: Send>(&self, f: F) -> Result<R, NetnsError> {
        in_netns(&self.name, f)
    }

    /// Give up responsibility: the namespace survives the guard.
    pub fn leak(self) -> String {
        let me = std::mem::ManuallyDrop::new(self);
        me.name.clone()
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // Deleting the namespace also deletes every veth end inside it, and
        // with it the peer end wherever that is, and any XDP program
        // attached to those devices. Errors are ignored: the namespace may
        // already be gone.
        let _ = ip(None, &["netns", "del", &self.name]);
    }
}

/// A veth pair that is deleted when the guard drops. The guard tracks in
/// which namespace each end lives so it can find one to delete (deleting
/// either end deletes both).
#[derive(Debug)]
pub struct LinkGuard {
    a: String,
    b: String,
    where_a: RefCell<Option<String>>,
    where_b: RefCell<Option<String>>,
}

impl LinkGuard {
    /// Create veth pair `a`–`b` in the current namespace.
    pub fn veth(a: &str, b: &str) -> Result<LinkGuard, NetnsError> {
        check_ifname(a)?;
        check_ifname(b)?;
        ip(None, &["link", "add", a, "type", "veth", "peer", "name", b])?;
        Ok(LinkGuard {
            a: a.to_string(),
            b: b.to_string(),
            where_a: RefCell::new(None),
            where_b: RefCell::new(None),
        })
    }

    /// Create veth pair `a`–`b` with `a` directly inside `ns_a` and `b`
    /// inside `ns_b` (`None` = the current namespace).
    pub fn veth_between(
        a: &str,
        ns_a: Option<&str>,
        b: &str,
        ns_b: Option<&str>,
    ) -> Result<LinkGuard, NetnsError> {
        let g = LinkGuard::veth(a, b)?;
        if let Some(ns) = ns_a {
            g.move_to(a, ns)?;
        }
        if let Some(ns) = ns_b {
            g.move_to(b, ns)?;
        }
        Ok(g)
    }

    pub fn a(&self) -> &str {
        &self.a
    }

    pub fn b(&self) -> &str {
        &self.b
    }

    /// Move end `end` (one of `a()`, `b()`) into namespace `ns`.
    pub fn move_end_to(&self, end: &str, ns: &NetnsGuard) -> Result<(), NetnsError> {
        self.move_to(end, ns.name())
    }

    fn move_to(&self, end: &str, ns: &str) -> Result<(), NetnsError> {
        let slot = if end == self.a {
            &self.where_a
        } else if end == self.b {
            &self.where_b
        } else {
            return Err(NetnsError::BadName(format!(
                "{end} is not an end of veth pair {}/{}",
                self.a, self.b
            )));
        };
        let from = slot.borrow().clone();
        ip(from.as_deref(), &["link", "set", "dev", end, "netns", ns])?;
        *slot.borrow_mut() = Some(ns.to_string());
        Ok(())
    }

    /// The namespace end `end` lives in (`None` = where the guard was made).
    pub fn namespace_of(&self, end: &str) -> Option<String> {
        if end == self.a {
            self.where_a.borrow().clone()
        } else {
            self.where_b.borrow().clone()
        }
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        // Either end may already be gone with its namespace; try both.
        let a = self.where_a.borrow().clone();
        if ip(a.as_deref(), &["link", "del", "dev", &self.a]).is_err() {
            let b = self.where_b.borrow().clone();
            let _ = ip(b.as_deref(), &["link", "del", "dev", &self.b]);
        }
    }
}

/// True if namespace `name` exists.
pub fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

/// True if interface `dev` exists in `ns`.
pub fn link_exists(ns: Option<&str>, dev: &str) -> bool {
    ip(ns, &["link", "show", "dev", dev]).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_give_their_pid_back() {
        let n = unique_name("nf-my-nf");
        assert_eq!(unique_name_pid(&n, "nf-"), Some(std::process::id()));
        assert_eq!(unique_name_pid("braid-nf-x-12-3", "nf-"), Some(12));
        for other in
            ["braid-nf-x-12", "braid-nf-x-y-3", "nf-x-12-3", "braid-shm-x-12-3", "braid-nf-12-3"]
        {
            assert_eq!(unique_name_pid(other, "nf-"), None, "{other}");
        }
    }
    use braid_testkit::skip_unless;

    #[test]
    fn ifnames_are_unique_and_short() {
        let a = unique_ifname("braidlongprefix");
        let b = unique_ifname("braidlongprefix");
        assert_ne!(a, b);
        assert!(a.len() <= IFNAME_MAX, "{a}");
        assert!(check_ifname(&a).is_ok());
        assert!(check_ifname("this-name-is-too-long").is_err());
        assert!(check_ifname("a/b").is_err());
    }

    #[test]
    fn namespace_and_veth_are_removed_on_drop() {
        if skip_unless(is_root(), "namespace_and_veth_are_removed_on_drop", "needs root") {
            return;
        }
        let ns_name = unique_name("t");
        let (a, b) = (unique_ifname("ta"), unique_ifname("tb"));
        {
            let ns = NetnsGuard::create(&ns_name).unwrap();
            let veth = LinkGuard::veth(&a, &b).unwrap();
            veth.move_end_to(&b, &ns).unwrap();
            add_addr(None, &a, "10.213.7.1/24").unwrap();
            add_addr(Some(ns.name()), &b, "10.213.7.2/24").unwrap();
            set_up(None, &a).unwrap();
            set_up(Some(ns.name()), &b).unwrap();
            assert!(link_exists(Some(ns.name()), &b));
            assert!(!link_exists(None, &b));
            let idx = ns.enter(|| ifindex(&b)).unwrap().unwrap();
            assert!(idx > 0);
            assert!(ifindex(&b).is_err(), "{b} must not be visible outside the namespace");
            set_forwarding(Some(ns.name()), true).unwrap();
            let fwd = ns.command("cat").arg("/proc/sys/net/ipv4/ip_forward").output().unwrap();
            assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");
            set_forwarding(Some(ns.name()), false).unwrap();
            let out = ns.command("ping").args(["-c1", "-W2", "10.213.7.1"]).output().unwrap();
            assert!(out.status.success(), "ping failed: {}", String::from_utf8_lossy(&out.stdout));
        }
        assert!(!netns_exists(&ns_name));
        assert!(!link_exists(None, &a));
    }

    #[test]
    fn guards_clean_up_on_panic() {
        if skip_unless(is_root(), "guards_clean_up_on_panic", "needs root") {
            return;
        }
        let ns_name = unique_name("p");
        let (a, b) = (unique_ifname("pa"), unique_ifname("pb"));
        let (n2, a2) = (ns_name.clone(), a.clone());
        let r = std::panic::catch_unwind(move || {
            let _ns = NetnsGuard::create(&n2).unwrap();
            let _veth = LinkGuard::veth(&a2, &b).unwrap();
            panic!("test failure inside setup");
        });
        assert!(r.is_err());
        assert!(!netns_exists(&ns_name));
        assert!(!link_exists(None, &a));
    }

    #[test]
    fn failed_command_names_itself() {
        if skip_unless(is_root(), "failed_command_names_itself", "needs root") {
            return;
        }
        let e = ip(None, &["link", "del", "dev", "braidnosuchdev"]).unwrap_err().to_string();
        assert!(e.contains("ip link del dev braidnosuchdev"), "{e}");
    }
}
