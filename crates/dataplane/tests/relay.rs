//! Drain markers relayed along a chain of workers (a `mapping: threads`
//! chain: a worker per NF, joined by channels, port 0 towards `in` and
//! port 1 towards `out` on every worker): the middle worker's firewall
//! streams its state while new flows cross it from both ends; the end
//! workers pass the markers of the old paths on to it instead of feeding
//! them to their NFs. The oracle: the stream ends (both markers reached
//! the middle worker), and it carries every flow created before the
//! markers were sent: a marker that overtook a packet would have ended the
//! stream before that packet's flow existed.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use braid_dataplane::migration::{
    marker_frame, marker_id, LinkGate, MarkerRelay, StreamItem, StreamOut,
};
use braid_dataplane::{Graph, Idle, Worker, WorkerConfig, WorkerHandle};
use braid_io::channel::{channel_pair, ChannelPort};
use braid_io::Port;
use braid_nf::{FlowScope, Params};
use braid_packet::wire::build::FrameSpec;
use braid_packet::{Batch, Packet};

const FLOWS_DOWN: u16 = 3000;
const FLOWS_UP: u16 = 1000;
const ID: u64 = 0x5eed;

fn nf(kind: &str, yaml: &str) -> Box<dyn braid_nf::NetworkFunction> {
    let params: Params = serde_yaml_ng::from_str(yaml).unwrap();
    braid_nf::build(kind, &params).unwrap()
}

/// A worker of the chain: `kind` between port 0 (`up`) and port 1 (`down`).
fn unit(
    name: &str,
    kind: &str,
    yaml: &str,
    up: ChannelPort,
    down: ChannelPort,
) -> (Worker<'static>, WorkerHandle) {
    let g = Graph::chain(vec![(name.into(), nf(kind, yaml))], 2, 0, 1).unwrap();
    let (down_entry, up_entry) = (g.entry(0, 1), g.entry(1, 0));
    let mut c = WorkerConfig::new(name);
    c.idle = Idle::Poll;
    c.tick_interval = Duration::from_millis(5);
    let (mut w, h) = Worker::new(c, g).unwrap();
    w.add_port(Box::new(up), Some(down_entry)).unwrap();
    w.add_port(Box::new(down), Some(up_entry)).unwrap();
    (w, h)
}

fn send(port: &mut ChannelPort, frames: impl Iterator<Item = Packet>) {
    let mut b = Batch::with_capacity(32);
    for p in frames {
        b.push(p);
        if b.len() == 32 {
            port.send(&mut b).unwrap();
        }
    }
    port.send(&mut b).unwrap();
    port.flush().unwrap();
}

#[test]
fn markers_relayed_by_the_workers_in_between_end_the_middle_stream_behind_every_flow() {
    // client -> [a: udp] -> [b: firewall] -> [c: udp] -> server, where
    // `udp` passes UDP only: fed a marker, it would drop it.
    let cap = 1 << 16;
    let (mut client, a_up) = channel_pair("r-client", cap);
    let (a_down, b_up) = channel_pair("r-ab", cap);
    let (b_down, c_up) = channel_pair("r-bc", cap);
    let (c_down, mut server) = channel_pair("r-server", cap);
    let udp = "{ default: drop, rules: [{ action: allow, proto: udp }] }";
    let (a, ha) = unit("a", "firewall", udp, a_up, a_down);
    let (b, hb) = unit("b", "firewall", "{ default: allow }", b_up, b_down);
    let (c, hc) = unit("c", "firewall", udp, c_up, c_down);
    let threads = [a.spawn().unwrap(), b.spawn().unwrap(), c.spawn().unwrap()];

    let (sink, items) = mpsc::sync_channel(1 << 16);
    let markers_seen = Arc::new(AtomicBool::new(false));
    hb.stream_out(StreamOut {
        stage: "b".into(),
        sink,
        chunk: 64,
        markers: vec![0, 1],
        id: ID,
        send_state: true,
        scope: FlowScope::All,
        budget: 1.0,
        backlog: Arc::new(AtomicUsize::new(0)),
        markers_seen: markers_seen.clone(),
        duplicate: false,
        gate: Arc::new(LinkGate::open()),
    })
    .unwrap();
    ha.relay(MarkerRelay { id: ID, routes: vec![(0, 1)] }).unwrap();
    hc.relay(MarkerRelay { id: ID, routes: vec![(1, 0)] }).unwrap();
    // A relaying worker refuses to hold (the marker would overtake).
    let e = hc.hold(true).unwrap_err().to_string();
    assert!(e.contains("relays the drain markers of migration"), "{e}");

    // New flows from both ends, each followed by its old path's marker.
    let down = (0..FLOWS_DOWN).map(|i| {
        FrameSpec::udp(
            (Ipv4Addr::new(10, 0, 0, 1), 10000 + i),
            (Ipv4Addr::new(10, 9, 0, 1), 53),
            18,
        )
        .packet()
    });
    let up = (0..FLOWS_UP).map(|i| {
        FrameSpec::udp(
            (Ipv4Addr::new(10, 9, 0, 2), 53),
            (Ipv4Addr::new(10, 0, 0, 2), 20000 + i),
            18,
        )
        .packet()
    });
    let marker = || std::iter::once(Packet::from_bytes(&marker_frame(ID)));
    let feeder = std::thread::spawn(move || {
        send(&mut client, down.chain(marker()));
        client
    });
    send(&mut server, up.chain(marker()));

    // The stream: every flow, then End.
    let mut keys = BTreeSet::new();
    let t = Instant::now();
    loop {
        match items.recv_timeout(Duration::from_secs(10)).expect("the stream ended") {
            StreamItem::Statelet(s) => keys.extend(s.keys),
            StreamItem::End { .. } => {
                // Said before the End was queued.
                assert!(markers_seen.load(Ordering::Acquire));
                break;
            }
            StreamItem::Failed(e) => panic!("stream failed: {e}"),
            _ => {}
        }
        assert!(t.elapsed() < Duration::from_secs(20));
    }
    assert_eq!(keys.len(), usize::from(FLOWS_DOWN + FLOWS_UP), "flows streamed before the end");
    let mut client = feeder.join().unwrap();

    // The markers left the chain nowhere: each stopped at b.
    std::thread::sleep(Duration::from_millis(200));
    let mut got = Batch::with_capacity(64);
    for port in [&mut server, &mut client] {
        while port.recv(&mut got, 64).unwrap() > 0 {
            assert!(got.iter().all(|p| marker_id(p.data()).is_none()), "a marker left the chain");
            got.clear();
        }
    }

    // The relays retired with their markers; a held worker refuses one.
    hc.unrelay(ID).unwrap();
    hc.hold(true).unwrap();
    let e = hc.relay(MarkerRelay { id: ID + 1, routes: vec![(1, 0)] }).unwrap_err().to_string();
    assert!(e.contains("holds its arrivals"), "{e}");
    hc.hold(false).unwrap();
    for h in [&ha, &hb, &hc] {
        h.stop().unwrap();
    }
    for t in threads {
        assert!(t.join().unwrap().error.is_none());
    }
}
