//! The XDP tap (`braid capture` on kernel NFs) run inside the kernel with
//! BPF_PROG_TEST_RUN: while a slot's tap word is set, its program copies
//! the frames at the points asked for into the ring, drops with their
//! reason, to every capture of that slot and point (several may run at
//! once); a stage whose word is 0 copies nothing; a full ring counts its
//! losses; the word is 0 again and the ring empty when the reader goes.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use braid_io::xdp::{FwAction, FwRule, XdpAction, XdpChain, XdpNf, XdpProgram};
use braid_io::xdp_tap::{TapDropReason, TapPoint, TapSample, XdpTapReader, TAP_SNAP};
use braid_packet::wire::build::FrameSpec;

use common::xdp_usable as usable;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn udp(dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut spec = FrameSpec::udp((CLIENT, 4000), (SERVER, dst_port), 0);
    spec.payload = payload.to_vec();
    spec.build()
}

/// Every sample waiting in the ring (none arrives later: test runs are
/// synchronous).
fn drain(r: &mut XdpTapReader) -> Vec<TapSample> {
    let mut out = Vec::new();
    while let Some(s) = r.next(Duration::from_millis(20)).unwrap() {
        out.push(s);
    }
    out
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[test]
fn a_tapped_firewall_mirrors_in_out_and_drops_with_reasons() {
    if !usable("a_tapped_firewall_mirrors_in_out_and_drops_with_reasons") {
        return;
    }
    let lo = braid_io::netns::ifindex("lo").unwrap();
    let mut p = XdpProgram::load(XdpNf::Firewall).unwrap();
    let deny9 =
        FwRule { src: Ipv4Addr::UNSPECIFIED, dst: SERVER, src_port: 0, dst_port: 9, proto: 17 };
    p.add_fw_rule(&deny9, FwAction::Drop).unwrap();
    let (pass, deny) = (udp(7, b"allowed"), udp(9, b"denied"));
    let mut malformed = udp(7, b"x");
    malformed.truncate(20); // IPv4 ethertype, header cut short

    // Off: the frames go through, the word is 0.
    assert_eq!(p.test_run(&pass, 1).unwrap().action, XdpAction::Pass);
    assert_eq!(p.tap_config().unwrap(), 0);

    let maps = p.tap_maps().unwrap();
    let mut r =
        XdpTapReader::start(maps, 0, &[TapPoint::In, TapPoint::Out, TapPoint::Drop]).unwrap();
    assert_eq!(p.tap_config().unwrap(), 0b111);
    // A second capture on the same NF, drops only: each gets its own.
    let mut drops = XdpTapReader::start(maps, 0, &[TapPoint::Drop]).unwrap();
    let t0 = now_ns();
    assert_eq!(p.test_run(&pass, 1).unwrap().action, XdpAction::Pass);
    assert_eq!(p.test_run(&deny, 1).unwrap().action, XdpAction::Drop);
    assert_eq!(p.test_run(&malformed, 1).unwrap().action, XdpAction::Drop);
    let got = drain(&mut r);
    let t1 = now_ns();
    let seen: Vec<(TapPoint, Option<TapDropReason>, &[u8])> =
        got.iter().map(|s| (s.point, s.reason, &s.frame[..])).collect();
    assert_eq!(
        seen,
        [
            (TapPoint::In, None, &pass[..]),
            (TapPoint::Out, None, &pass[..]),
            (TapPoint::In, None, &deny[..]),
            (TapPoint::Drop, Some(TapDropReason::Denied), &deny[..]),
            (TapPoint::In, None, &malformed[..]),
            (TapPoint::Drop, Some(TapDropReason::Malformed), &malformed[..]),
        ]
    );
    for s in &got {
        assert_eq!((s.slot, s.ifindex, s.orig_len as usize), (0, lo, s.frame.len()));
        let ts = r.wall_ns(s.mono_ns);
        // The monotonic-to-wall offset is read once: allow 50 ms of skew.
        assert!(ts + 50_000_000 >= t0 && ts <= t1 + 50_000_000, "{ts} not in {t0}..{t1}");
    }
    assert_eq!(r.lost().unwrap(), 0);
    let got = drain(&mut drops);
    let seen: Vec<(TapPoint, &[u8])> = got.iter().map(|s| (s.point, &s.frame[..])).collect();
    assert_eq!(seen, [(TapPoint::Drop, &deny[..]), (TapPoint::Drop, &malformed[..])]);
    drop(drops);
    assert_eq!(p.tap_config().unwrap(), 0b111, "the first capture still taps everything");

    // Only the points asked for.
    drop(r);
    assert_eq!(p.tap_config().unwrap(), 0, "the reader's drop turns the tap off");
    let mut r = XdpTapReader::start(maps, 0, &[TapPoint::Drop]).unwrap();
    assert_eq!(p.tap_config().unwrap(), 0b100);
    p.test_run(&pass, 1).unwrap();
    p.test_run(&deny, 1).unwrap();
    let got = drain(&mut r);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].point, &got[0].frame), (TapPoint::Drop, &deny));
    drop(r);
    assert_eq!(p.tap_config().unwrap(), 0);

    // A frame over the snap length is cut, its length kept.
    let big = udp(7, &[0xab; 2000]);
    let mut r = XdpTapReader::start(maps, 0, &[TapPoint::In]).unwrap();
    p.test_run(&big, 1).unwrap();
    let got = drain(&mut r);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].orig_len as usize, &got[0].frame[..]), (big.len(), &big[..TAP_SNAP]));
}

#[test]
fn a_chain_stage_is_tapped_alone_and_sees_its_own_output() {
    if !usable("a_chain_stage_is_tapped_alone_and_sees_its_own_output") {
        return;
    }
    let lo = braid_io::netns::ifindex("lo").unwrap();
    let mut c = XdpChain::load(&[XdpNf::Firewall, XdpNf::Xor, XdpNf::Fwd]).unwrap();
    c.set_path(lo, &[0, 1, 2]).unwrap();
    c.set_xor_key(1, &[0x0f]).unwrap();
    let maps = c.tap_maps().unwrap();
    assert!(XdpTapReader::start(maps, 3, &[TapPoint::In]).is_err(), "no slot 3");
    let mut r = XdpTapReader::start(maps, 1, &[TapPoint::In, TapPoint::Out]).unwrap();
    assert_eq!((c.tap_config(0).unwrap(), c.tap_config(1).unwrap()), (0, 0b11));
    let frame = udp(7, b"abcd");
    let out = c.test_run(&frame, 1).unwrap();
    assert_eq!(out.action, XdpAction::Pass);
    let got = drain(&mut r);
    assert_eq!(got.len(), 2, "the firewall and fwd stages are not tapped: {got:?}");
    assert_eq!((got[0].slot, got[0].point, &got[0].frame), (1, TapPoint::In, &frame));
    assert_eq!((got[1].slot, got[1].point), (1, TapPoint::Out));
    assert_eq!(
        got[1].frame, out.frame,
        "xor's output is what leaves the chain (fwd changes nothing)"
    );
    assert_ne!(got[1].frame, frame);
    drop(r);
    assert_eq!(c.tap_config(1).unwrap(), 0);
}

#[test]
fn a_full_ring_counts_its_losses() {
    if !usable("a_full_ring_counts_its_losses") {
        return;
    }
    let mut p = XdpProgram::load(XdpNf::Fwd).unwrap();
    let maps = p.tap_maps().unwrap();
    let frame = udp(7, &[1; 64]);
    let mut r = XdpTapReader::start(maps, 0, &[TapPoint::In]).unwrap();
    // 2 MiB of 1.5 KiB samples: well under 3000 fit while nobody reads.
    p.test_run(&frame, 3000).unwrap();
    let lost = r.lost().unwrap();
    let mut kept = 0u64;
    while r.next(Duration::from_millis(20)).unwrap().is_some() {
        kept += 1;
    }
    assert!(kept > 1000 && lost > 1000, "kept {kept}, lost {lost}");
    assert_eq!(kept + lost, 3000);
    assert_eq!(p.counters().unwrap().tap_lost, lost);
    drop(r);
    // Off again: nothing more is lost, however many frames pass.
    p.test_run(&frame, 3000).unwrap();
    assert_eq!(p.counters().unwrap().tap_lost, lost);
}
