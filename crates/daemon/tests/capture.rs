//! `POST /v1/chains/{name}/capture` on a live chain of braidd: the
//! capture streams pcapng while traffic crosses; what it shows leaving the
//! firewall is what the server receives, its drops are the denied
//! datagrams with their reason; an unknown NF and a bad filter are plain
//! JSON errors. The host is a namespace between a client and a server
//! (veth pairs, static neighbours, no IPv6), as in `live.rs`.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use braid_daemon::capture::{request, CaptureClientError};
use braid_dataplane::tap::{CaptureRequest, Point};
use braid_io::netns;
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

    let stream = request(&d.socket, "cap", &req("fw", "udp")).unwrap();
    let rx = sv.enter(|| UdpSocket::bind(format!("{SERVER}:9180"))).unwrap().unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let tx = cl.enter(|| UdpSocket::bind(format!("{CLIENT}:0"))).unwrap().unwrap();
    let (bytes, received) = common::send_while_capturing(
        stream,
        &tx,
        &rx,
        &format!("{SERVER}:9180"),
        &format!("{SERVER}:9181"),
    );
    let (out, drops) = common::fw_out_and_drops(&bytes);
    assert_eq!(received.len(), 20, "the server got every allowed datagram");
    assert_eq!(out, received, "the capture shows what the server got");
    assert_eq!(drops, vec![b"denied".to_vec(); 10]);
    assert!(c.remove("cap").is_ok());
}
