//! Shared set-up for the live tests: a client and a server namespace with a
//! forwarder namespace between them, all on one IPv4 subnet, so whatever
//! runs in the middle (user-space port pair, XDP program) must carry ARP,
//! ICMP and UDP both ways for the tests to pass.
//!
//! ```text
//!  client ns            fwd ns                 server ns
//!  [c] 10.N.0.1 ---- [fl]   [fr] ---- [s] 10.N.0.2
//! ```

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_io::netns::{self, LinkGuard, NetnsGuard};
use braid_io::Port;
use braid_packet::Batch;

/// Skip (return true and say why) when not root; a failure instead under
/// `BRAID_REQUIRE_ROOT=1` (see braid-testkit).
pub fn skip_unless_root(test: &str) -> bool {
    braid_testkit::skip_unless(
        netns::is_root(),
        test,
        "needs root to create namespaces and veth links",
    )
}

/// Whether BPF programs can be loaded here (root, and braid built with its
/// XDP objects); says why not and returns false otherwise (fails the test
/// instead under `BRAID_REQUIRE_ROOT=1`).
pub fn xdp_usable(test: &str) -> bool {
    !braid_testkit::skip_unless(netns::is_root(), test, "loading BPF programs needs root")
        && !braid_testkit::skip_unless(
            braid_io::xdp::xdp_built(),
            test,
            "XDP programs were not built (install clang and libbpf-dev)",
        )
}

pub struct Topology {
    // Links before namespaces: fields drop in order, and a link guard
    // deletes its veth while the namespaces still exist.
    pub left: LinkGuard,
    pub right: LinkGuard,
    pub client: NetnsGuard,
    pub fwd: NetnsGuard,
    pub server: NetnsGuard,
    pub client_ip: String,
    pub server_ip: String,
    names: Vec<String>,
}

static SUBNET: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

impl Topology {
    /// Build the three namespaces and two veth pairs, addresses up.
    /// Transmit checksum offload is off on the client and server ends so
    /// user-space forwarders see finished UDP checksums.
    pub fn new(tag: &str) -> Topology {
        let client = NetnsGuard::create(&netns::unique_name(&format!("{tag}c"))).unwrap();
        let fwd = NetnsGuard::create(&netns::unique_name(&format!("{tag}f"))).unwrap();
        let server = NetnsGuard::create(&netns::unique_name(&format!("{tag}s"))).unwrap();
        let (c, fl) = (netns::unique_ifname("c"), netns::unique_ifname("fl"));
        let (fr, s) = (netns::unique_ifname("fr"), netns::unique_ifname("s"));
        let left = LinkGuard::veth_between(&c, Some(client.name()), &fl, Some(fwd.name())).unwrap();
        let right =
            LinkGuard::veth_between(&fr, Some(fwd.name()), &s, Some(server.name())).unwrap();
        // Distinct subnets per topology so parallel tests never mix.
        let n = 200 + (SUBNET.fetch_add(1, Ordering::Relaxed) % 50);
        let client_ip = format!("10.{n}.{}.1", std::process::id() % 250);
        let server_ip = format!("10.{n}.{}.2", std::process::id() % 250);
        netns::add_addr(Some(client.name()), &c, &format!("{client_ip}/24")).unwrap();
        netns::add_addr(Some(server.name()), &s, &format!("{server_ip}/24")).unwrap();
        for (ns, dev) in [(&client, &c), (&fwd, &fl), (&fwd, &fr), (&server, &s)] {
            netns::set_up(Some(ns.name()), dev).unwrap();
        }
        netns::tx_checksum_off(Some(client.name()), &c).unwrap();
        netns::tx_checksum_off(Some(server.name()), &s).unwrap();
        Topology {
            left,
            right,
            client,
            fwd,
            server,
            client_ip,
            server_ip,
            names: vec![c, fl, fr, s],
        }
    }

    /// Client-side veth end.
    pub fn c(&self) -> &str {
        &self.names[0]
    }
    /// Forwarder's end towards the client.
    pub fn fl(&self) -> &str {
        &self.names[1]
    }
    /// Forwarder's end towards the server.
    pub fn fr(&self) -> &str {
        &self.names[2]
    }
    /// Server-side veth end.
    pub fn s(&self) -> &str {
        &self.names[3]
    }

    /// Names of everything this topology created, to check cleanup.
    pub fn created(&self) -> (Vec<String>, Vec<String>) {
        (
            vec![
                self.client.name().to_string(),
                self.fwd.name().to_string(),
                self.server.name().to_string(),
            ],
            self.names.clone(),
        )
    }

    /// `ping -c count` from the client to the server; true on success.
    pub fn ping(&self, count: u32) -> bool {
        let out = self
            .client
            .command("ping")
            .args(["-c", &count.to_string(), "-i", "0.2", "-W", "2", &self.server_ip])
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!("ping failed: {}", String::from_utf8_lossy(&out.stdout));
        }
        out.status.success()
    }

    /// Send `count` UDP datagrams of `size` bytes from client to server and
    /// have the server echo them; returns the payloads the client got back
    /// (in arrival order).
    pub fn udp_echo(&self, count: usize, size: usize) -> Vec<Vec<u8>> {
        self.udp_echo_full(count, size, 0).1
    }

    /// Like [`Topology::udp_echo`] to server port `port` (0 = any free
    /// port); returns what the server received and what the client got
    /// back.
    pub fn udp_echo_full(
        &self,
        count: usize,
        size: usize,
        port: u16,
    ) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let server_ip = self.server_ip.clone();
        let server_sock = self
            .server
            .enter(move || UdpSocket::bind(format!("{server_ip}:{port}")).unwrap())
            .unwrap();
        let server_addr: SocketAddr = server_sock.local_addr().unwrap();
        let client_ip = self.client_ip.clone();
        let client_sock =
            self.client.enter(move || UdpSocket::bind(format!("{client_ip}:0")).unwrap()).unwrap();
        server_sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        client_sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let echo = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = server_sock.recv_from(&mut buf) {
                    seen.push(buf[..n].to_vec());
                    let _ = server_sock.send_to(&buf[..n], from);
                }
            }
            seen
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        for i in 0..count {
            client_sock.send_to(&expected_payload(i, size), server_addr).unwrap();
            if let Ok(n) = client_sock.recv(&mut buf) {
                got.push(buf[..n].to_vec());
            }
        }
        stop.store(true, Ordering::Relaxed);
        (echo.join().unwrap(), got)
    }
}

/// The payload `udp_echo` sends as datagram `i`.
pub fn expected_payload(i: usize, size: usize) -> Vec<u8> {
    (0..size).map(|k| (k as u8) ^ (i as u8)).collect()
}

/// True when no namespace or link of `created` is left.
pub fn all_gone(created: &(Vec<String>, Vec<String>)) -> bool {
    created.0.iter().all(|n| !netns::netns_exists(n))
        && created.1.iter().all(|l| !netns::link_exists(None, l))
}

/// A forwarder thread moving packets both ways between two ports until
/// stopped; returns the ports at the end so their stats can be checked.
pub struct Bridge<A: Port + 'static, B: Port + 'static> {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<(A, B)>>,
}

impl<A: Port + 'static, B: Port + 'static> Bridge<A, B> {
    pub fn start(mut a: A, mut b: B) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut batch = Batch::with_capacity(64);
            let deadline = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                let n1 = a.recv(&mut batch, 64).unwrap();
                if n1 > 0 {
                    b.send(&mut batch).unwrap();
                    b.flush().unwrap();
                }
                let n2 = b.recv(&mut batch, 64).unwrap();
                if n2 > 0 {
                    a.send(&mut batch).unwrap();
                    a.flush().unwrap();
                }
                if n1 == 0 && n2 == 0 {
                    a.wait(Duration::from_millis(1)).unwrap();
                }
            }
            (a, b)
        });
        Bridge { stop, handle: Some(handle) }
    }

    pub fn stop(mut self) -> (A, B) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl<A: Port + 'static, B: Port + 'static> Drop for Bridge<A, B> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The addresses of the frames the BPF_PROG_TEST_RUN tests build.
pub const TEST_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const TEST_SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// A UDP frame from `TEST_CLIENT:4000` to `TEST_SERVER:dst_port`.
pub fn test_run_udp(dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut spec =
        braid_packet::wire::build::FrameSpec::udp((TEST_CLIENT, 4000), (TEST_SERVER, dst_port), 0);
    spec.payload = payload.to_vec();
    spec.build()
}
