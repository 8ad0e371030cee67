//! Shared-memory ports count their own system calls (eventfd writes and
//! reads, peer checks, waits): zero on the busy path, exact on a wait.

use std::time::Duration;

use braid_io::shm::{ShmConfig, ShmPort};
use braid_io::Port;
use braid_packet::{Batch, Packet};

#[test]
fn the_busy_path_makes_no_system_call_and_a_wait_makes_three() {
    let (mut a, mut b) = ShmPort::pair(ShmConfig::default()).unwrap();
    assert_eq!((a.stats().syscalls, b.stats().syscalls), (Some(0), Some(0)));
    // Nobody sleeps: sending and receiving are memory operations only.
    let mut batch = Batch::new();
    for i in 0..8u8 {
        batch.push(Packet::from_bytes(&[i; 64]));
    }
    assert_eq!(a.send(&mut batch).unwrap(), 8);
    let mut got = Batch::new();
    assert_eq!(b.recv(&mut got, 32).unwrap(), 8);
    assert_eq!((a.stats().syscalls, b.stats().syscalls), (Some(0), Some(0)));
    // An empty wait: poll(2), the eventfd read, the peer check.
    b.wait(Duration::from_millis(2)).unwrap();
    assert_eq!(b.stats().syscalls, Some(3));
    assert_eq!(a.stats().syscalls, Some(0));
}
