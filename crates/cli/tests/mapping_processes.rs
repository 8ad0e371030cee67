//! `run_processes` (one process per NF, `braid run --mapping processes`)
//! against the same chain in one in-process `Graph::chain`: a router that
//! routes some traffic downstream (port 1) and some back upstream (port 0)
//! and answers TTL 1 and unrouted packets with ICMP errors, then a learning switch and a
//! forwarder. The output, grouped by IPv4 source and destination, must be
//! the same sequences in both; afterwards no NF process and no socket
//! file is left.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use braid_dataplane::{Graph, Idle, Worker, WorkerConfig};
use braid_io::memory::MemoryPort;
use braid_packet::wire::build::FrameSpec;
use braid_runtime::proc_chain::{run_processes, ProcChainError, ProcessesConfig};
use braid_runtime::supervisor::{Event, RestartPolicy};
use braid_runtime::ChainDescriptor;

const CHAIN: &str = r#"
name: router-switch
nfs:
  - name: r
    type: router
    params:
      mac: "02:00:00:00:00:aa"
      ip: 192.0.2.254
      # Every ICMP error is sent (the rate limit depends on timing).
      icmp_burst: 100000
      routes:
        - { prefix: 10.1.0.0/16, next_hop_mac: "02:00:00:00:01:01", port: 1 }
        - { prefix: 10.2.0.0/16, next_hop_mac: "02:00:00:00:02:02", port: 0 }
  - name: sw
    type: l2switch
    params: { ports: 2 }
  - name: f
    type: fwd
"#;

/// Frame `i`: downstream, upstream, TTL 1 (an ICMP error back upstream) or
/// unrouted, over a few sources; the IP ident carries `i`.
fn frames(n: u16) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let src = Ipv4Addr::new(10, 0, 0, 1 + (i % 5) as u8);
            let (dst, ttl) = match i % 4 {
                0 => (Ipv4Addr::new(10, 1, 0, 1 + (i % 3) as u8), 64),
                1 => (Ipv4Addr::new(10, 2, 0, 1 + (i % 3) as u8), 64),
                2 => (Ipv4Addr::new(10, 1, 9, 9), 1),
                _ => (Ipv4Addr::new(172, 16, 0, 1), 64),
            };
            let mut s = FrameSpec::udp((src, 4000 + i % 7), (dst, 53), 30);
            s.ttl = ttl;
            s.ip_ident = i;
            s.build()
        })
        .collect()
}

/// Output frames by (IPv4 source, destination), each in arrival order.
fn by_flow(out: Vec<Vec<u8>>) -> BTreeMap<[u8; 8], Vec<Vec<u8>>> {
    let mut m: BTreeMap<[u8; 8], Vec<Vec<u8>>> = BTreeMap::new();
    for f in out {
        let key: [u8; 8] = f[26..34].try_into().unwrap();
        m.entry(key).or_default().push(f);
    }
    m
}

fn in_process(d: &ChainDescriptor, input: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let nfs = d
        .nfs
        .iter()
        .map(|n| (n.name.clone(), braid_nf::build(&n.kind, &n.params).unwrap()))
        .collect();
    // Both ends of the chain leave by port 0, the output, as in
    // run_processes.
    let g = Graph::chain(nfs, 1, 0, 0).unwrap();
    let entry = g.entry(0, 0);
    let mut out = MemoryPort::new("out", Vec::new());
    let mut inp = MemoryPort::new("in", input);
    let mut wc = WorkerConfig::new("in-process");
    wc.stop_when_inputs_end = true;
    wc.idle = Idle::Busy;
    let (mut w, _h) = Worker::new(wc, g).unwrap();
    w.add_port(Box::new(&mut out), None).unwrap();
    w.add_port(Box::new(&mut inp), Some(entry)).unwrap();
    let r = w.run();
    assert!(r.error.is_none(), "{:?}", r.error);
    out.take_sent()
}

#[test]
fn processes_give_the_same_output_as_one_in_process_graph_and_leave_nothing() {
    let d = ChainDescriptor::from_yaml(CHAIN).unwrap();
    let input = frames(4000);
    let want = in_process(&d, input.clone());

    let mut inp = MemoryPort::new("in", input);
    let mut out = MemoryPort::new("out", Vec::new());
    let mut cfg = ProcessesConfig::new(env!("CARGO_BIN_EXE_braid").into());
    cfg.quiet_children = true;
    let r = run_processes(&d, &mut inp, &mut out, &cfg).unwrap();
    let got = out.take_sent();

    assert_eq!(r.input.rx_packets, 4000);
    // 1000 downstream, 1000 routed back upstream, 1000 time exceeded,
    // 1000 unrouted (dropped, each answered with a destination
    // unreachable, sent back where it came from).
    assert_eq!(want.len(), 4000, "the reference run");
    assert_eq!(got.len(), want.len(), "{r:?}");
    assert_eq!(r.from_last.rx_packets, 1000, "downstream through all three processes");
    assert_eq!(r.to_first.rx_packets, 3000, "upstream: routed back and ICMP errors");
    let (g, w) = (by_flow(got), by_flow(want));
    assert_eq!(g.keys().collect::<Vec<_>>(), w.keys().collect::<Vec<_>>());
    for (k, seq) in &w {
        assert!(g[k] == *seq, "flow {k:?}: {} frames vs {} in process", g[k].len(), seq.len());
    }

    let pids: Vec<u32> = r
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Started { pid, .. } => Some(*pid),
            _ => None,
        })
        .collect();
    assert_eq!(pids.len(), 3, "{:?}", r.events);
    std::thread::sleep(Duration::from_millis(50));
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "NF pid {pid} is gone");
    }
    assert!(!r.socket_dir.exists(), "{} removed", r.socket_dir.display());
}

#[test]
fn an_nf_given_up_stops_the_run_with_an_error_and_cleans_up() {
    let d = ChainDescriptor::from_yaml(CHAIN).unwrap();
    let mut inp = MemoryPort::new("in", frames(10));
    let mut out = MemoryPort::new("out", Vec::new());
    // A "braid" that fails at once: every NF process exits 1.
    let mut cfg = ProcessesConfig::new("/bin/false".into());
    cfg.restart = RestartPolicy::OnFailure {
        max_restarts: 1,
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
    };
    cfg.quiet_children = true;
    let t0 = std::time::Instant::now();
    let e = run_processes(&d, &mut inp, &mut out, &cfg).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(
        matches!(&e, ProcChainError::GaveUp(name) if ["r", "sw", "f"].contains(&name.as_str())),
        "{e}"
    );
    assert!(e.to_string().ends_with("failed and was given up; the chain is stopped"), "{e}");
    let empty = ChainDescriptor { nfs: Vec::new(), ..d };
    let e = run_processes(&empty, &mut inp, &mut out, &cfg).unwrap_err();
    assert_eq!(e.to_string(), "chain `router-switch` has no NFs");
}
