//! A bump in the wire for tests of `braid run` on live interfaces: a
//! client and a server namespace, each linked by a veth pair to a middle
//! namespace where braid runs between its two interfaces; plus guards that
//! clean up also when a test fails.

#![allow(dead_code)]

use braid_io::netns::{self, LinkGuard, NetnsGuard};

pub struct Bump {
    // Declared first, dropped first: the links go before their namespaces.
    _links: (LinkGuard, LinkGuard),
    /// Where braid runs, between `a1` (towards the client) and `b1`
    /// (towards the server).
    pub mid: NetnsGuard,
    /// The client, `SUBNET.1` on its end of the `a` link.
    pub cl: NetnsGuard,
    /// The server, `SUBNET.2` on its end of the `b` link.
    pub sv: NetnsGuard,
    pub a1: String,
    pub b1: String,
}

impl Bump {
    /// Namespaces `braid-TAG-{mid,cl,sv}` and links `TAGa*`, `TAGb*`, up;
    /// `subnet` is the first three octets (`"10.77.0"`).
    pub fn new(tag: &str, subnet: &str) -> Bump {
        let ns = |r: &str| NetnsGuard::create(&netns::unique_name(&format!("braid-{tag}-{r}")));
        let (mid, cl, sv) = (ns("mid").unwrap(), ns("cl").unwrap(), ns("sv").unwrap());
        let ifn = |s: &str| netns::unique_ifname(&format!("{tag}{s}"));
        let (a0, a1, b0, b1) = (ifn("a0"), ifn("a1"), ifn("b0"), ifn("b1"));
        let la = LinkGuard::veth(&a0, &a1).unwrap();
        let lb = LinkGuard::veth(&b0, &b1).unwrap();
        la.move_end_to(&a0, &cl).unwrap();
        la.move_end_to(&a1, &mid).unwrap();
        lb.move_end_to(&b0, &sv).unwrap();
        lb.move_end_to(&b1, &mid).unwrap();
        for (ns, dev) in [(&cl, &a0), (&mid, &a1), (&mid, &b1), (&sv, &b0)] {
            netns::set_up(Some(ns.name()), dev).unwrap();
        }
        netns::add_addr(Some(cl.name()), &a0, &format!("{subnet}.1/24")).unwrap();
        netns::add_addr(Some(sv.name()), &b0, &format!("{subnet}.2/24")).unwrap();
        Bump { _links: (la, lb), mid, cl, sv, a1, b1 }
    }
}

/// Ping `dst` from `from` (`count` echoes 0.2 s apart, each waited for
/// 1 s) until a round answers, for 10 s at most: the ports of a `braid run`
/// just started open within a second. Whether it answered.
pub fn ping_until_answered(from: &NetnsGuard, dst: &str, count: u32) -> bool {
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(10) {
        let answered = from
            .command("ping")
            .args(["-c", &count.to_string(), "-i", "0.2", "-W", "1", dst])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        if answered {
            return true;
        }
    }
    false
}

/// A test's temporary directory, removed also when the test fails.
pub struct RemoveOnDrop(pub std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed and reaped also when the test fails.
pub struct KillOnDrop(pub Option<std::process::Child>);

impl KillOnDrop {
    pub fn take(mut self) -> std::process::Child {
        self.0.take().unwrap()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
