//! Capture on a running worker: a tap on each NF of a firewall -> loss
//! chain, written as pcapng and read back. What the capture shows entering
//! and leaving must be exactly what was sent and what the sink received;
//! the drops must be exactly the packets the NFs dropped, each with its
//! reason (the firewall drops through `Context::retain`, indexed; `loss`
//! through `Context::drop_packet`, paired in order).

use std::net::Ipv4Addr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use braid_dataplane::tap::{request_unix, serve_unix, CaptureRequest, CaptureSession, Point};
use braid_dataplane::{Graph, Idle, Worker, WorkerConfig, WorkerHandle};
use braid_io::channel::{channel_pair, ChannelPort};
use braid_io::pcapng::PcapngReader;
use braid_io::Port;
use braid_nf::{NetworkFunction, Params};
use braid_packet::wire::build::FrameSpec;
use braid_packet::{Batch, Packet};

fn nf(kind: &str, yaml: &str) -> Box<dyn NetworkFunction> {
    let p: Params = serde_yaml_ng::from_str(yaml).unwrap();
    braid_nf::build(kind, &p).unwrap()
}

fn udp(src: [u8; 4], sport: u16) -> Vec<u8> {
    FrameSpec::udp((Ipv4Addr::from(src), sport), (Ipv4Addr::new(192, 0, 2, 9), 53), 18)
        .packet()
        .data()
        .to_vec()
}

struct Rig {
    feed: ChannelPort,
    sink: ChannelPort,
    handle: WorkerHandle,
    thread: std::thread::JoinHandle<braid_dataplane::WorkerReport>,
}

fn rig() -> Rig {
    let nfs = vec![
        (
            "fw".to_string(),
            nf("firewall", "{ rules: [{ action: allow, src: 10.1.0.0/16 }], default: drop }"),
        ),
        ("lossy".to_string(), nf("loss", "{ rate: 0.3, seed: 7 }")),
    ];
    let g = Graph::chain(nfs, 2, 0, 1).unwrap();
    let entry = g.entry(0, 1);
    let mut cfg = WorkerConfig::new("capture-test");
    cfg.idle = Idle::Sleep;
    let (mut w, handle) = Worker::new(cfg, g).unwrap();
    let (feed, w_in) = channel_pair("in", 1 << 14);
    let (w_out, sink) = channel_pair("out", 1 << 14);
    w.add_port(Box::new(w_in), Some(entry)).unwrap();
    w.add_port(Box::new(w_out), None).unwrap();
    let thread = w.spawn().unwrap();
    Rig { feed, sink, handle, thread }
}

/// Every frame sent, in order: allowed UDP, denied UDP and ARP (which
/// the filter `udp` leaves out) mixed.
fn traffic() -> Vec<Vec<u8>> {
    let arp = {
        let mut f = vec![0xffu8; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
        f.extend_from_slice(&[0u8; 28]);
        f
    };
    (0..600u16)
        .map(|i| match i % 5 {
            0 => udp([10, 2, 0, 1], 1000 + i), // denied by the firewall
            4 => arp.clone(),
            _ => udp([10, 1, 0, 1], 1000 + i),
        })
        .collect()
}

/// The records of a pcapng capture: (interface name, comment, frame).
fn records(bytes: &[u8]) -> Vec<(String, String, Vec<u8>)> {
    let mut r = PcapngReader::new(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while let Some(rec) = r.next_packet(&mut buf).unwrap() {
        let name = r.interfaces()[rec.interface as usize].name.clone().unwrap_or_default();
        out.push((name, rec.comment.clone().unwrap_or_default(), buf.clone()));
    }
    out
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn send_all(feed: &mut ChannelPort, frames: &[Vec<u8>]) {
    for chunk in frames.chunks(32) {
        let mut b: Batch = chunk.iter().map(|f| Packet::from_bytes(f)).collect();
        feed.send(&mut b).unwrap();
        feed.flush().unwrap();
    }
}

fn receive(sink: &mut ChannelPort, want: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut b = Batch::new();
    while got.len() < want && Instant::now() < deadline {
        if sink.recv(&mut b, 64).unwrap() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        got.extend(b.drain().map(|p| p.data().to_vec()));
    }
    got
}

#[test]
fn capture_shows_what_enters_leaves_and_is_dropped_with_reasons() {
    let Rig { mut feed, mut sink, handle, thread } = rig();
    let frames = traffic();
    let stop = AtomicBool::new(false);
    let req = |nf: &str| CaptureRequest {
        nf: nf.into(),
        points: vec![],
        filter: "udp".into(),
        count: None,
        seconds: Some(3.0),
    };
    let fw_out = Shared::default();
    let loss_out = Shared::default();
    let fw = CaptureSession::start(handle.clone(), req("fw")).unwrap();
    let lossy = CaptureSession::start(handle.clone(), req("lossy")).unwrap();
    let counts = std::thread::scope(|s| {
        let a = s.spawn(|| fw.run(fw_out.clone(), &stop).unwrap());
        let b = s.spawn(|| lossy.run(loss_out.clone(), &stop).unwrap());
        send_all(&mut feed, &frames);
        (a.join().unwrap(), b.join().unwrap())
    });
    let udp_frames: Vec<&Vec<u8>> = frames.iter().filter(|f| f[12..14] == [8, 0]).collect();
    let counters = handle.counters().unwrap();
    let lost = counters.stages[1].counters.dropped(braid_nf::DropReason::Loss) as usize;
    let passed = frames.len() - 120 - lost;
    let received = receive(&mut sink, passed);
    handle.stop().unwrap();
    thread.join().unwrap();
    assert_eq!(received.len(), passed);
    assert!(lost > 50, "the loss NF dropped {lost}");
    assert_eq!((counts.0.lost, counts.1.lost), (0, 0));

    let fw_rec = records(&fw_out.0.lock().unwrap());
    let at = |recs: &[(String, String, Vec<u8>)], iface: &str| -> Vec<(String, Vec<u8>)> {
        recs.iter().filter(|r| r.0 == iface).map(|r| (r.1.clone(), r.2.clone())).collect()
    };
    // The firewall: every UDP frame entered by gate 0, the denied ones were
    // dropped with their reason, the rest left by gate 1.
    let fw_in = at(&fw_rec, "fw:in");
    assert_eq!(fw_in.iter().map(|r| &r.1).collect::<Vec<_>>(), udp_frames);
    assert!(fw_in.iter().all(|r| r.0 == "in gate 0"));
    let denied: Vec<&Vec<u8>> = udp_frames.iter().copied().filter(|f| f[27] == 2).collect();
    let fw_drops = at(&fw_rec, "fw:drops");
    assert_eq!(fw_drops.iter().map(|r| &r.1).collect::<Vec<_>>(), denied);
    assert!(fw_drops.iter().all(|r| r.0 == "dropped by fw: denied"), "{:?}", fw_drops[0].0);
    let allowed: Vec<&Vec<u8>> = udp_frames.iter().copied().filter(|f| f[27] == 1).collect();
    let fw_out_frames = at(&fw_rec, "fw:out");
    assert_eq!(fw_out_frames.iter().map(|r| &r.1).collect::<Vec<_>>(), allowed);
    assert!(fw_out_frames.iter().all(|r| r.0 == "out gate 1"));

    // The loss NF: what it let out is exactly what the sink received (UDP
    // part), and its drops are exactly the rest, each for `loss`.
    let l_rec = records(&loss_out.0.lock().unwrap());
    let l_out: Vec<Vec<u8>> = at(&l_rec, "lossy:out").into_iter().map(|r| r.1).collect();
    let sink_udp: Vec<Vec<u8>> = received.into_iter().filter(|f| f[12..14] == [8, 0]).collect();
    assert_eq!(l_out, sink_udp);
    let l_drops = at(&l_rec, "lossy:drops");
    assert!(l_drops.iter().all(|r| r.0 == "dropped by lossy: loss"));
    let mut dropped_and_out: Vec<Vec<u8>> =
        l_drops.into_iter().map(|r| r.1).chain(l_out.iter().cloned()).collect();
    let mut l_in: Vec<Vec<u8>> = at(&l_rec, "lossy:in").into_iter().map(|r| r.1).collect();
    dropped_and_out.sort();
    l_in.sort();
    assert_eq!(dropped_and_out, l_in, "every packet in either left or was dropped");
    assert_eq!(counts.0.written as usize, fw_rec.len());
}

#[test]
fn a_packet_limit_ends_the_capture() {
    let Rig { mut feed, sink: _sink, handle, thread } = rig();
    let out = Shared::default();
    let req = CaptureRequest {
        nf: "fw".into(),
        points: vec![Point::Out],
        filter: "src port 1001 or src port 1002".into(),
        count: Some(2),
        seconds: None,
    };
    let s = CaptureSession::start(handle.clone(), req).unwrap();
    let stop = AtomicBool::new(false);
    let summary = std::thread::scope(|sc| {
        let t = sc.spawn(|| s.run(out.clone(), &stop).unwrap());
        send_all(&mut feed, &traffic());
        t.join().unwrap()
    });
    assert_eq!(summary.written, 2);
    let recs = records(&out.0.lock().unwrap());
    assert_eq!(recs.len(), 2);
    assert!(recs.iter().all(|r| r.0 == "fw:out"));
    let snap = handle.counters().unwrap();
    assert_eq!(snap.stages.len(), 2);
    handle.stop().unwrap();
    thread.join().unwrap();
}

/// Removed on drop, also when the test fails.
struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn bad_requests_are_refused_with_the_reason_over_the_socket() {
    let Rig { feed: _f, sink: _s, handle, thread } = rig();
    let dir =
        TempDir(std::env::temp_dir().join(format!("braid-capture-test-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("deploy.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let h = handle.clone();
    let server = serve_unix(listener, move |_nf| Ok(h.clone()), stop.clone()).unwrap();
    let req = |nf: &str, filter: &str| CaptureRequest {
        nf: nf.into(),
        points: vec![],
        filter: filter.into(),
        count: Some(1),
        seconds: Some(0.2),
    };
    let e = request_unix(&path, &req("nope", "")).unwrap_err().to_string();
    assert!(e.contains("no stage named `nope`"), "{e}");
    let e = request_unix(&path, &req("fw", "port 99999")).unwrap_err().to_string();
    assert!(e.contains("word 2") && e.contains("99999"), "{e}");
    // A good one streams a pcapng (nothing matches: interfaces and
    // statistics only) and ends at the time limit.
    let mut s = request_unix(&path, &req("fw", "")).unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut bytes).unwrap();
    assert!(records(&bytes).is_empty());
    let mut r = PcapngReader::new(&bytes[..]).unwrap();
    assert!(r.next_packet(&mut Vec::new()).unwrap().is_none());
    assert_eq!(r.interfaces().len(), 3);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    server.join().unwrap();
    handle.stop().unwrap();
    thread.join().unwrap();
}
