//! The same chain, with a switch and a router whose routes point both
//! ways, gives the same output whether it runs in one thread or a thread
//! per NF: router and l2switch behave alike in every mapping because their
//! gates, not the mapping, say where packets go.

use std::net::Ipv4Addr;

use braid_io::memory::MemoryPort;
use braid_io::Port;
use braid_packet::wire::build::FrameSpec;
use braid_packet::wire::MacAddr;
use braid_runtime::plan::Mapping;
use braid_runtime::runner::{run_threads, run_to_end};
use braid_runtime::{Chain, ChainDescriptor};

const CHAIN: &str = r#"
name: both-ways
nfs:
  - { name: sw, type: l2switch, params: { ports: 2 } }
  - name: r
    type: router
    params:
      mac: 02:00:00:00:00:fe
      ip: 10.0.0.254
      # Every ICMP error is sent: the rate limit depends on timing, which
      # differs between mappings (the test compares outputs).
      icmp_burst: 1000
      routes:
        - { prefix: 10.1.0.0/16, next_hop_mac: 02:00:00:00:01:01, port: 1 }
        - { prefix: 10.0.0.0/16, next_hop_mac: 02:00:00:00:00:01, port: 0 }
  - { name: f, type: fwd }
"#;

pub const DOWNSTREAM_HOP: [u8; 6] = [2, 0, 0, 0, 1, 1];

/// Requests to 10.1/16 (downstream), packets for 10.0/16 (routed back
/// upstream through the switch), TTL-1 packets (ICMP time exceeded back
/// upstream), and unroutable ones.
fn traffic() -> Vec<Vec<u8>> {
    (0..600u32)
        .map(|i| {
            let dst = match i % 4 {
                0 | 1 => Ipv4Addr::new(10, 1, (i % 7) as u8, 9),
                2 => Ipv4Addr::new(10, 0, 0, 1),
                _ => Ipv4Addr::new(172, 16, 0, 1),
            };
            let mut s =
                FrameSpec::udp((Ipv4Addr::new(10, 0, 0, 5), 1000 + (i % 13) as u16), (dst, 53), 20);
            s.src_mac = MacAddr([2, 0, 0, 0, 0, 1 + (i % 3) as u8]);
            s.dst_mac = MacAddr([2, 0, 0, 0, 0, 0xfe]);
            s.ip_ident = i as u16;
            if i % 9 == 0 {
                s.ttl = 1;
            }
            s.build()
        })
        .collect()
}

/// Output split by direction (frames to the downstream next hop, the
/// rest), each in order.
fn by_direction(frames: Vec<Vec<u8>>) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    frames.into_iter().partition(|f| f[..6] == DOWNSTREAM_HOP)
}

#[test]
fn thread_and_threads_mappings_give_the_same_output() {
    let d = ChainDescriptor::from_yaml(CHAIN).unwrap();
    let mut chain = Chain::from_descriptor(&d).unwrap();
    let mut input = MemoryPort::new("in", traffic());
    let mut output = MemoryPort::new("out", Vec::new());
    let one = run_to_end(&mut chain, &mut input, &mut output);
    assert!(one.error.is_none(), "{:?}", one.error);
    let one_out = output.take_sent();

    let (down1, up1) = by_direction(one_out);
    assert!(!down1.is_empty() && !up1.is_empty(), "traffic goes both ways");
    // Same counters per NF.
    let counts = |r: &braid_runtime::runner::RunReport| {
        r.chain
            .stages
            .iter()
            .map(|s| {
                (s.name.clone(), s.counters.packets_in, s.counters.packets_out, s.counters.drops)
            })
            .collect::<Vec<_>>()
    };
    for mapping in [Mapping::Thread, Mapping::Threads] {
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Collect(out.clone(), Default::default());
        let input = Box::new(MemoryPort::new("in", traffic()));
        let many = run_threads(&d, mapping, input, Box::new(sink)).unwrap();
        assert!(many.error.is_none(), "{:?}", many.error);
        let (down2, up2) = by_direction(std::mem::take(&mut *out.lock().unwrap()));
        assert_eq!(down1, down2, "{mapping:?}: downstream output, in order");
        assert_eq!(up1, up2, "{mapping:?}: upstream output (routed back, ICMP errors), in order");
        assert_eq!(counts(&one), counts(&many), "{mapping:?}");
        assert_eq!(many.input.rx_packets, 600);
    }
}

/// A sink port that hands what it gets to the test.
struct Collect(std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>, braid_io::PortStats);

impl Port for Collect {
    fn name(&self) -> String {
        "collect".into()
    }
    fn recv(
        &mut self,
        _: &mut braid_packet::Batch,
        _: usize,
    ) -> Result<usize, braid_io::PortError> {
        Ok(0)
    }
    fn send(&mut self, b: &mut braid_packet::Batch) -> Result<usize, braid_io::PortError> {
        let n = b.len();
        self.1.tx_packets += n as u64;
        self.0.lock().unwrap().extend(b.drain().map(|p| p.data().to_vec()));
        Ok(n)
    }
    fn stats(&self) -> braid_io::PortStats {
        self.1
    }
}
