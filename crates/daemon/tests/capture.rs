//! `POST /v1/chains/{name}/capture` on a live chain of braidd: the
//! capture streams pcapng while traffic crosses; what it shows leaving the
//! firewall is what the server receives, its drops are the denied
//! datagrams with their reason; an unknown NF and a bad filter are plain
//! JSON errors. The host is a namespace between a client and a server
//! (veth pairs, static neighbours, no IPv6), as in `live.rs`.

mod common;

use std::io::Read;
use std::net::UdpSocket;
use std::time::Duration;

use braid_daemon::capture::{request, CaptureClientError};
use braid_dataplane::tap::{CaptureRequest, Point};
use braid_io::netns;
use braid_io::pcapng::PcapngReader;
use common::{Braidd, TempDir};

const CLIENT: &str = "10.79.0.1";
const SERVER: &str = "10.79.0.2";

#[test]
fn a_capture_through_braidd_streams_what_leaves_and_what_is_dropped() {
    if braid_testkit::skip_unless(netns::is_root(), "braidd capture", "needs root for namespaces") {
        return;
    }
    let net = common::bump_net("bdc", CLIENT, SERVER);
    let (mid, cl, sv, a1, b1) = (&net.mid, &net.cl, &net.sv, &net.a1, &net.b1);

    let dir = TempDir::new("capture");
    let d = Braidd::start(dir.path(), Some(mid.name()), &[]);
    let c = d.client();
    // A worker per NF (`mapping: threads`): the capture must reach `fw` on
    // the second worker, not only what the first one runs.
    let yaml = format!(
        "name: cap\nmapping: threads\nports:\n  in: {{ kind: af_packet, iface: {a1} }}\n  out: {{ kind: af_packet, iface: {b1} }}\nnfs:\n  - {{ name: pre, type: fwd }}\n  - {{ name: fw, type: firewall, params: {{ rules: [{{ action: allow, proto: udp, dst_ports: 9180 }}], default: drop }} }}\n"
    );
    assert_eq!(c.deploy(&yaml).unwrap()["state"], "running");

    let req = |nf: &str, filter: &str| CaptureRequest {
        nf: nf.into(),
        points: vec![Point::Out, Point::Drops],
        filter: filter.into(),
        count: Some(30),
        seconds: Some(20.0),
    };
    match request(&d.socket, "cap", &req("nope", "")) {
        Err(CaptureClientError::Refused { status: 404, message }) => {
            assert!(message.contains("no stage named `nope`"), "{message}")
        }
        other => panic!("{:?}", other.err()),
    }
    match request(&d.socket, "cap", &req("fw", "port 1 or")) {
        Err(CaptureClientError::Refused { status: 400, message }) => {
            assert!(message.contains("word 4"), "{message}")
        }
        other => panic!("{:?}", other.err()),
    }
    match request(&d.socket, "nochain", &req("fw", "")) {
        Err(CaptureClientError::Refused { status: 404, .. }) => {}
        other => panic!("{:?}", other.err()),
    }

    let mut stream = request(&d.socket, "cap", &req("fw", "udp")).unwrap();
    let rx = sv.enter(|| UdpSocket::bind(format!("{SERVER}:9180"))).unwrap().unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let tx = cl.enter(|| UdpSocket::bind(format!("{CLIENT}:0"))).unwrap().unwrap();
    let (bytes, received) = std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let mut b = Vec::new();
            stream.read_to_end(&mut b).unwrap();
            b
        });
        let mut received = Vec::new();
        let mut buf = [0u8; 2048];
        for i in 0..20u32 {
            tx.send_to(format!("allowed {i}").as_bytes(), format!("{SERVER}:9180")).unwrap();
            if i % 2 == 0 {
                tx.send_to(b"denied", format!("{SERVER}:9181")).unwrap();
            }
            if let Ok(n) = rx.recv(&mut buf) {
                received.push(buf[..n].to_vec());
            }
        }
        (reader.join().unwrap(), received)
    });
    let mut r = PcapngReader::new(&bytes[..]).unwrap();
    let (mut out, mut drops) = (Vec::new(), Vec::new());
    let mut f = Vec::new();
    while let Some(rec) = r.next_packet(&mut f).unwrap() {
        let name = r.interfaces()[rec.interface as usize].name.clone().unwrap();
        let payload = f[42..].to_vec();
        match name.as_str() {
            "fw:out" => out.push(payload),
            "fw:drops" => {
                assert_eq!(rec.comment.as_deref(), Some("dropped by fw: denied"));
                drops.push(payload);
            }
            other => panic!("interface {other}"),
        }
    }
    assert_eq!(received.len(), 20, "the server got every allowed datagram");
    assert_eq!(out, received, "the capture shows what the server got");
    assert_eq!(drops, vec![b"denied".to_vec(); 10]);
    assert!(c.remove("cap").is_ok());
}
