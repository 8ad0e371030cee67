//! `POST /v1/chains/{name}/capture` on a live chain of braidd: the
//! capture streams pcapng while traffic crosses; what it shows leaving the
//! firewall is what the server receives, its drops are the denied
//! datagrams with their reason; an unknown NF and a bad filter are plain
//! JSON errors. The same for a chain of NF processes. The host is a namespace between a client and a server
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
    // A worker per NF (`mapping: threads`): the capture must reach `fw` on
    // the second worker, not only what the first one runs.
    capture_fw("bdc", "threads", "no stage named `nope`");
}

/// The same with one process per NF: the firewall's process taps its own
/// worker and streams the pcapng through its control socket; braidd
/// relays it.
#[test]
fn a_capture_of_an_nf_process_streams_what_leaves_and_what_is_dropped() {
    if braid_testkit::skip_unless(netns::is_root(), "braidd capture", "needs root for namespaces") {
        return;
    }
    capture_fw("bdcp", "processes", "no NF named `nope`");
}

/// Capture the firewall of a `pre` + `fw` chain with `mapping` while 20
/// allowed and 10 denied datagrams cross; bad requests first (an unknown
/// NF must be refused with `unknown_nf`).
fn capture_fw(tag: &str, mapping: &str, unknown_nf: &str) {
    let net = common::bump_net(tag, CLIENT, SERVER);
    let (mid, cl, sv, a1, b1) = (&net.mid, &net.cl, &net.sv, &net.a1, &net.b1);

    let dir = TempDir::new(&format!("capture-{mapping}"));
    let d = Braidd::start(dir.path(), Some(mid.name()), &[]);
    let c = d.client();
    let yaml = format!(
        "name: cap\nmapping: {mapping}\nports:\n  in: {{ kind: af_packet, iface: {a1} }}\n  out: {{ kind: af_packet, iface: {b1} }}\nnfs:\n  - {{ name: pre, type: fwd }}\n  - {{ name: fw, type: firewall, params: {{ rules: [{{ action: allow, proto: udp, dst_ports: 9180 }}], default: drop }} }}\n"
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
            assert!(message.contains(unknown_nf), "{message}")
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
