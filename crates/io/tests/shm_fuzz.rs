//! A hostile peer writes arbitrary descriptors and ring indices into the
//! shared region; the honest side must never crash, never hand out memory
//! outside the region, and never accept a slot it already owns.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use braid_io::shm::control;
use braid_io::shm::layout::{self, Layout};
use braid_io::shm::region::Region;
use braid_io::shm::ring::{Desc, Producer};
use braid_io::shm::{ShmConfig, ShmPort};
use braid_io::{Port, PortError};
use braid_packet::Batch;
use proptest::prelude::*;

const CFG: ShmConfig = ShmConfig { slots: 64, slot_size: 256, hugepages: false };

/// The attacker's view: the region and the two rings it produces into.
struct Hostile {
    _ctrl: UnixStream,
    region: Arc<Region>,
    data: Producer,
    ret: Producer,
}

/// Connect to `port` as an attacker (the port accepts in between).
fn connect_hostile(path: &std::path::Path, port: &mut ShmPort) -> Hostile {
    let ctrl = UnixStream::connect(path).unwrap();
    assert!(port.accept(Duration::from_secs(5)).unwrap());
    let (hello, mut fds) = control::recv_hello(&ctrl, Duration::from_secs(5)).unwrap();
    let layout = Layout::new(hello.slots, hello.slot_size).unwrap();
    let region = Arc::new(Region::open(fds.remove(0), layout.total).unwrap());
    let data = Producer::new(&region, &layout, layout::data_ring(1)).unwrap();
    let ret = Producer::new(&region, &layout, layout::return_ring(0)).unwrap();
    Hostile { _ctrl: ctrl, region, data, ret }
}

#[derive(Clone, Debug)]
enum Op {
    Data { slot: u32, off: u16, len: u16 },
    Return { slot: u32 },
    ForceDataIndex(u32),
    Receive,
}

fn op() -> impl Strategy<Value = Op> {
    let slot = prop_oneof![0u32..80, any::<u32>()];
    prop_oneof![
        6 => (slot.clone(), any::<u16>(), any::<u16>()).prop_map(|(slot, off, len)| Op::Data { slot, off, len }),
        6 => (slot.clone(), 0u16..300, 0u16..300).prop_map(|(slot, off, len)| Op::Data { slot, off, len }),
        3 => slot.prop_map(|slot| Op::Return { slot }),
        1 => any::<u32>().prop_map(Op::ForceDataIndex),
        3 => Just(Op::Receive),
    ]
}

fn receive_all(port: &mut ShmPort, kept: &mut Batch) -> Result<(), PortError> {
    let mut b = Batch::new();
    loop {
        let n = port.recv(&mut b, 32)?;
        for p in b.drain() {
            assert!(p.len() <= CFG.slot_size as usize);
            assert!(
                port.region_contains(p.data().as_ptr(), p.len()),
                "packet bytes outside the region"
            );
            // Keep some packets alive so later forged descriptors naming
            // their slots must be refused.
            if kept.len() < 8 {
                kept.push(p);
            }
        }
        if n == 0 {
            return Ok(());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]
    #[test]
    fn forged_descriptors_are_rejected(ops in proptest::collection::vec(op(), 1..120)) {
        let path = std::env::temp_dir().join(format!("braid-shm-fuzz-{}.sock", std::process::id()));
        let mut port = ShmPort::listen(&path, CFG).unwrap();
        let mut evil = connect_hostile(&path, &mut port);
        let mut kept = Batch::new();
        let mut broken = false;
        for op in ops {
            match op {
                Op::Data { slot, off, len } => {
                    let _ = evil.data.push(Desc { slot, off, len, rx_ns: 0 });
                    evil.data.publish();
                }
                Op::Return { slot } => {
                    let _ = evil.ret.push(Desc { slot, ..Desc::default() });
                    evil.ret.publish();
                }
                Op::ForceDataIndex(i) => evil.data.force_index(i),
                Op::Receive => {}
            }
            // Scribble over the whole region too: ring entries, header,
            // slots the attacker does not own.
            let len = evil.region.len();
            // SAFETY: test-only writes inside the attacker's own mapping.
            #[allow(unsafe_code)]
            unsafe { evil.region.base().add((len / 2) % len).write(0xEE) };
            if let Err(e) = receive_all(&mut port, &mut kept) {
                // Only a corrupt index may end the channel, and it says so.
                let msg = e.to_string();
                prop_assert!(matches!(e, PortError::Disconnected(_)) && msg.contains("corrupt"), "{}", msg);
                broken = true;
                break;
            }
        }
        // The honest side still works: it can allocate and send (or, after a
        // protocol violation, it has dropped the channel cleanly).
        let mut b = Batch::new();
        let got = port.alloc(&mut b, 4).unwrap();
        prop_assert!(broken || got > 0 || kept.len() + port.free_slots() <= CFG.slots as usize);
        for p in b.iter_mut() {
            p.extend_from_slice(&[1, 2, 3]).unwrap();
        }
        let _ = port.send(&mut b);
        drop(kept);
        drop(port);
    }
}

#[test]
fn slot_the_victim_owns_is_refused() {
    let path = std::env::temp_dir().join(format!("braid-shm-fuzz-own-{}.sock", std::process::id()));
    let mut port = ShmPort::listen(&path, CFG).unwrap();
    let mut evil = connect_hostile(&path, &mut port);
    // Slot 0 is the listener's own (free) slot; slot 63 the attacker's.
    for slot in [0u32, 1, 63, 63, 1 << 20] {
        evil.data.push(Desc { slot, off: 0, len: 10, rx_ns: 0 }).unwrap();
    }
    evil.data.publish();
    let mut b = Batch::new();
    assert_eq!(port.recv(&mut b, 32).unwrap(), 1, "only the first claim of slot 63 is accepted");
    assert_eq!(port.stats().rx_dropped, 4);
    assert_eq!(port.refused_descriptors(), 4);
    assert_eq!(port.free_slots(), 32, "the listener's own slots were not touched");
}
