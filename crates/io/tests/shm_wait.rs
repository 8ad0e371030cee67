//! Eventfd wake-ups: a receiver that sleeps in `wait` / `wait_any` is woken
//! by the sender's publish, and sleeps the full timeout when nothing comes.

use std::time::{Duration, Instant};

use braid_io::shm::{wait_any, ShmConfig, ShmPort};
use braid_io::Port;
use braid_packet::{Batch, Packet};

fn send_one_after(mut port: ShmPort, delay: Duration) -> std::thread::JoinHandle<ShmPort> {
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        let mut b = Batch::new();
        b.push(Packet::from_bytes(b"wake up"));
        assert_eq!(port.send(&mut b).unwrap(), 1);
        port
    })
}

#[test]
fn wait_is_woken_by_a_send_and_times_out_without() {
    let (a, mut b) = ShmPort::pair(ShmConfig { slots: 64, ..ShmConfig::default() }).unwrap();
    let t0 = Instant::now();
    b.wait(Duration::from_millis(100)).unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(90), "slept the timeout with nothing to read");

    let sender = send_one_after(a, Duration::from_millis(50));
    let t0 = Instant::now();
    b.wait(Duration::from_secs(10)).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5), "woken by the eventfd, not the timeout");
    let _a = sender.join().unwrap();
    let mut got = Batch::new();
    assert_eq!(b.recv(&mut got, 8).unwrap(), 1);
    assert_eq!(got.as_slice()[0].data(), b"wake up");
}

#[test]
fn wait_any_wakes_on_whichever_port_gets_data() {
    let (a1, b1) = ShmPort::pair(ShmConfig { slots: 64, ..ShmConfig::default() }).unwrap();
    let (a2, b2) = ShmPort::pair(ShmConfig { slots: 64, ..ShmConfig::default() }).unwrap();
    let mut ports = [b1, b2];
    let t0 = Instant::now();
    wait_any(&mut ports, Duration::from_millis(100)).unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(90));

    let sender = send_one_after(a2, Duration::from_millis(50));
    let t0 = Instant::now();
    wait_any(&mut ports, Duration::from_secs(10)).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5), "the second port's eventfd woke us");
    let _a2 = sender.join().unwrap();
    let mut got = Batch::new();
    assert_eq!(ports[0].recv(&mut got, 8).unwrap(), 0);
    assert_eq!(ports[1].recv(&mut got, 8).unwrap(), 1);
    drop(a1);
}

#[test]
fn listen_replaces_a_stale_socket_but_not_a_regular_file() {
    let dir = std::env::temp_dir();
    let stale = dir.join(format!("braid-shm-stale-{}.sock", std::process::id()));
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap()); // leaves the file
    assert!(stale.exists());
    let port = ShmPort::listen(&stale, ShmConfig::default()).unwrap();
    drop(port);
    assert!(!stale.exists(), "the listener removes its socket on drop");

    let file = dir.join(format!("braid-shm-not-a-socket-{}", std::process::id()));
    std::fs::write(&file, b"keep me").unwrap();
    let err =
        ShmPort::listen(&file, ShmConfig::default()).err().expect("bind over a regular file fails");
    assert!(err.to_string().contains(&file.display().to_string()), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    std::fs::remove_file(&file).unwrap();
}
