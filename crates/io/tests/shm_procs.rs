//! Two real processes over a shared-memory port: the test binary spawns
//! itself as the peer (`BRAID_SHM_ROLE` selects what the child does).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use braid_io::shm::{ShmConfig, ShmPort};
use braid_io::{Port, PortError};
use braid_packet::Batch;

const ROLE: &str = "BRAID_SHM_ROLE";
const PATH: &str = "BRAID_SHM_PATH";
const COUNT: &str = "BRAID_SHM_COUNT";

fn sock_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("braid-shm-test-{tag}-{}.sock", std::process::id()))
}

/// Kills the child on drop, so a failing test leaves no process behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_peer(role: &str, path: &std::path::Path, count: u64) -> ChildGuard {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args(["--exact", "peer_entry", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(PATH, path)
        .env(COUNT, count.to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    ChildGuard(child)
}

/// Sends `count` packets (u64::MAX: until killed or 60 s) whose first 8
/// bytes are the sequence number, built in place in the shared slots.
fn run_sender(path: &str, count: u64) {
    let mut port = ShmPort::connect(path, Duration::from_secs(10)).unwrap();
    let mut batch = Batch::with_capacity(32);
    let mut seq = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seq < count && Instant::now() < deadline {
        let want = (count - seq).min(32) as usize;
        let got = port.alloc(&mut batch, want).unwrap();
        if got == 0 {
            std::hint::spin_loop();
            continue;
        }
        for p in batch.iter_mut() {
            p.extend_from_slice(&seq.to_le_bytes()).unwrap();
            p.extend_from_slice(&[0u8; 56]).unwrap();
            seq += 1;
        }
        let sent = port.send(&mut batch).unwrap();
        assert_eq!(sent, got, "shm send never drops with room and slots");
    }
    // Stay until the receiver has returned every slot, i.e. has seen all.
    let wait = Instant::now() + Duration::from_secs(20);
    while port.free_slots() < ShmConfig::default().slots as usize / 2 && Instant::now() < wait {
        let _ = port.alloc(&mut batch, 0);
        let _ = port.recv(&mut batch, 32);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The child's entry point; a no-op when run as a normal test.
#[test]
fn peer_entry() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let path = std::env::var(PATH).unwrap();
    let count: u64 = std::env::var(COUNT).unwrap().parse().unwrap();
    match role.as_str() {
        "sender" => run_sender(&path, count),
        other => panic!("unknown role {other}"),
    }
}

/// Receive until `n` packets arrived in order starting at `first`, or the
/// deadline passes; returns the next expected sequence number.
fn receive_in_order(port: &mut ShmPort, first: u64, n: u64, limit: Duration) -> u64 {
    let mut batch = Batch::with_capacity(64);
    let mut next = first;
    let deadline = Instant::now() + limit;
    while next < first + n && Instant::now() < deadline {
        port.recv(&mut batch, 64).unwrap();
        for p in batch.drain() {
            let seq = u64::from_le_bytes(p.data()[..8].try_into().unwrap());
            assert_eq!(seq, next, "packet lost or reordered");
            assert_eq!(p.len(), 64);
            assert!(p.is_external(), "received packets live in the shared region");
            next += 1;
        }
    }
    next
}

#[test]
fn two_processes_pass_millions_in_order() {
    const N: u64 = 2_000_000;
    let path = sock_path("seq");
    let mut port = ShmPort::listen(&path, ShmConfig::default()).unwrap();
    let _child = spawn_peer("sender", &path, N);
    assert!(port.accept(Duration::from_secs(10)).unwrap(), "peer connected");
    let started = Instant::now();
    let next = receive_in_order(&mut port, 0, N, Duration::from_secs(60));
    assert_eq!(next, N, "all packets arrived in order");
    let st = port.stats();
    assert_eq!((st.rx_packets, st.rx_dropped), (N, 0));
    assert_eq!(port.refused_descriptors(), 0);
    eprintln!("{N} packets across processes in {:?}", started.elapsed());
}

#[test]
fn killed_peer_is_detected_and_a_new_one_resumes() {
    let path = sock_path("kill");
    let mut port = ShmPort::listen(&path, ShmConfig::default()).unwrap();
    let mut child = spawn_peer("sender", &path, u64::MAX);
    assert!(port.accept(Duration::from_secs(10)).unwrap());
    let pid = port.peer_pid().expect("SO_PEERCRED gives the peer pid");
    assert_eq!(pid as u32, child.0.id());
    let got = receive_in_order(&mut port, 0, 100_000, Duration::from_secs(30));
    assert!(got >= 100_000, "got {got}");

    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let mut batch = Batch::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        assert!(Instant::now() < deadline, "peer death not detected within 10 s");
        match port.recv(&mut batch, 64) {
            Err(e) => break e,
            Ok(_) => batch.clear(),
        }
    };
    let msg = err.to_string();
    assert!(matches!(err, PortError::Disconnected(_)), "{msg}");
    assert!(msg.contains(&pid.to_string()), "names the dead pid: {msg}");
    assert!(
        port.reclaimed_slots() >= ShmConfig::default().slots as u64 / 2,
        "the dead side's slots are reclaimed"
    );
    assert!(!port.is_connected() && !port.at_end(), "a listening port waits for the next peer");
    // Still usable while no peer is there.
    assert_eq!(port.recv(&mut batch, 64).unwrap(), 0);

    let _child2 = spawn_peer("sender", &path, 50_000);
    assert!(port.accept(Duration::from_secs(10)).unwrap(), "a new peer connects");
    assert_eq!(receive_in_order(&mut port, 0, 50_000, Duration::from_secs(30)), 50_000);
    assert_eq!(port.disconnects(), 1);
}
