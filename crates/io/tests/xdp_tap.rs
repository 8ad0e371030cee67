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
use common::{test_run_udp as udp, TEST_CLIENT as CLIENT, TEST_SERVER as SERVER};

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
        XdpTapReader::start(&maps, 0, &[TapPoint::In, TapPoint::Out, TapPoint::Drop]).unwrap();
    assert_eq!(p.tap_config().unwrap(), 0b111);
    // A second capture on the same NF, drops only: each gets its own.
    let mut drops = XdpTapReader::start(&maps, 0, &[TapPoint::Drop]).unwrap();
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
    let mut r = XdpTapReader::start(&maps, 0, &[TapPoint::Drop]).unwrap();
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
    let mut r = XdpTapReader::start(&maps, 0, &[TapPoint::In]).unwrap();
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
    assert!(XdpTapReader::start(&maps, 3, &[TapPoint::In]).is_err(), "no slot 3");
    let mut r = XdpTapReader::start(&maps, 1, &[TapPoint::In, TapPoint::Out]).unwrap();
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
    let mut r = XdpTapReader::start(&maps, 0, &[TapPoint::In]).unwrap();
    // 2 MiB of ~140-byte records: well under 40,000 fit while nobody
    // reads; the reader's queue then takes 8,192 of those that did.
    const SENT: u64 = 40_000;
    p.test_run(&frame, SENT as u32).unwrap();
    let ring_lost = p.counters().unwrap().tap_lost;
    let mut kept = 0u64;
    while r.next(Duration::from_millis(20)).unwrap().is_some() {
        kept += 1;
    }
    let lost = r.lost().unwrap();
    assert!(kept >= 8000 && ring_lost > 10_000, "kept {kept}, lost in the ring {ring_lost}");
    assert_eq!(kept + lost, SENT, "every frame is read or counted lost");
    assert!(lost >= ring_lost);
    drop(r);
    // Off again: nothing more is lost, however many frames pass.
    p.test_run(&frame, 3000).unwrap();
    assert_eq!(p.counters().unwrap().tap_lost, ring_lost);
}

/// The tap's cost, for docs/benchmarks.md: ns per BPF_PROG_TEST_RUN run
/// (the kernel's mean over 200,000 repeats) of each XDP NF built before
/// the tap existed (`BRAID_TAP_BASELINE_REV`, default 9bd8c05: its
/// `crates/io/bpf` compiled here with the same clang flags), with the tap
/// code present but off, and with a capture on (`in` and `out`): with room
/// in the ring (400 runs at a time, the reader emptying it in between: every
/// frame copied twice, nothing lost) and with the ring full (a reader that
/// does not keep up: every sample lost and counted, the bound on the cost).
/// Rounds interleave them; medians are printed with the translated
/// program size (all subprograms). Run with
/// `cargo test -p braid-io --test xdp_tap -- --ignored --nocapture measure_tap_cost`.
#[test]
#[ignore = "a measurement (about a minute), not a check"]
fn measure_tap_cost() {
    if !usable("measure_tap_cost") {
        return;
    }
    let rev = std::env::var("BRAID_TAP_BASELINE_REV").unwrap_or_else(|_| "9bd8c05".into());
    let base_dir = std::env::temp_dir().join(format!("braid-tap-base-{}", std::process::id()));
    std::fs::create_dir_all(base_dir.join("bpf")).unwrap();
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    for f in [
        "braid_xdp.h",
        "braid_fw.h",
        "braid_xor.h",
        "xdp_fwd.c",
        "xdp_firewall.c",
        "xdp_xor.c",
        "xdp_chain.c",
    ] {
        let o = std::process::Command::new("git")
            .args(["-C", repo, "show", &format!("{rev}:crates/io/bpf/{f}")])
            .output()
            .unwrap();
        assert!(o.status.success(), "git show {rev}:{f}: {}", String::from_utf8_lossy(&o.stderr));
        std::fs::write(base_dir.join("bpf").join(f), o.stdout).unwrap();
    }
    let multiarch = format!("-I/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let new_src = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/bpf"));
    let compile = |src: &std::path::Path, name: &str, tag: &str| -> Vec<u8> {
        let obj = base_dir.join(format!("{name}-{tag}.o"));
        let st = std::process::Command::new("clang")
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror", &multiarch])
            .arg(format!("-I{}", src.display()))
            .arg("-c")
            .arg(src.join(format!("{name}.c")))
            .arg("-o")
            .arg(&obj)
            .status()
            .unwrap();
        assert!(st.success(), "clang {name}");
        std::fs::read(obj).unwrap()
    };
    let base_obj = |name: &str| compile(&base_dir.join("bpf"), name, "base");
    // The tap build compiled the same way, only to count its instructions.
    let new_insns = |name: &str, prog: &str| -> u32 {
        let mut e = aya::Ebpf::load(&compile(&new_src, name, "new")).unwrap();
        let p: &mut aya::programs::Xdp = e.program_mut(prog).unwrap().try_into().unwrap();
        p.load().unwrap();
        p.info().unwrap().size_translated().unwrap_or(0) / 8
    };
    let lo = braid_io::netns::ifindex("lo").unwrap();
    const REPEAT: u32 = 200_000;
    const ROUNDS: usize = 9;
    let small = FrameSpec::udp_frame_len((CLIENT, 9000), (SERVER, 9), 64).build();
    let large = FrameSpec::udp_frame_len((CLIENT, 9000), (SERVER, 9), 1414).build();

    /// A baseline program loaded with aya directly (the old object).
    struct Base {
        ebpf: aya::Ebpf,
        entry: &'static str,
        /// The chain's stage programs (the kernel empties the array when
        /// its last user-space reference goes).
        _progs: Option<aya::maps::ProgramArray<aya::maps::MapData>>,
    }
    impl Base {
        fn xdp(&mut self, name: &str) -> &mut aya::programs::Xdp {
            self.ebpf.program_mut(name).unwrap().try_into().unwrap()
        }
        fn ns(&mut self, frame: &[u8], repeat: u32) -> f64 {
            use aya::programs::{TestRun, TestRunOptions};
            let mut out = vec![0u8; frame.len() + 256];
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(frame);
            opts.data_out = Some(&mut out);
            opts.repeat = repeat;
            let entry = self.entry;
            self.xdp(entry).test_run(opts).unwrap().duration.as_nanos() as f64
        }
        fn insns(&mut self, name: &str) -> u32 {
            self.xdp(name).info().unwrap().size_translated().unwrap_or(0) / 8
        }
    }
    let base_single = |obj: &str, prog: &'static str| -> Base {
        let ebpf = aya::Ebpf::load(&base_obj(obj)).unwrap();
        let mut b = Base { ebpf, entry: prog, _progs: None };
        b.xdp(prog).load().unwrap();
        b
    };
    let base_chain = |lo: u32| -> Base {
        let ebpf = aya::Ebpf::load(&base_obj("xdp_chain")).unwrap();
        let mut b = Base { ebpf, entry: "braid_chain", _progs: None };
        for p in ["braid_chain", "braid_chain_firewall", "braid_chain_xor", "braid_chain_fwd"] {
            b.xdp(p).load().unwrap();
        }
        let mut progs =
            aya::maps::ProgramArray::try_from(b.ebpf.take_map("chain_progs").unwrap()).unwrap();
        for (slot, p) in
            ["braid_chain_firewall", "braid_chain_xor", "braid_chain_fwd"].iter().enumerate()
        {
            let fd = b.ebpf.program(p).unwrap().fd().unwrap().try_clone().unwrap();
            progs.set(slot as u32, &fd, 0).unwrap();
        }
        b._progs = Some(progs);
        let mut paths: aya::maps::HashMap<_, u32, [u32; 9]> =
            aya::maps::HashMap::try_from(b.ebpf.map_mut("chain_paths").unwrap()).unwrap();
        paths.insert(lo, [3, 0, 1, 2, 0, 0, 0, 0, 0], 0).unwrap();
        b
    };

    enum New {
        One(XdpProgram),
        Chain(XdpChain),
    }
    impl New {
        fn ns(&mut self, frame: &[u8], repeat: u32) -> f64 {
            match self {
                New::One(p) => p.test_run(frame, repeat),
                New::Chain(c) => c.test_run(frame, repeat),
            }
            .unwrap()
            .duration
            .as_nanos() as f64
        }
        fn maps(&self) -> braid_io::xdp_tap::XdpTapMaps {
            match self {
                New::One(p) => p.tap_maps().unwrap(),
                New::Chain(c) => c.tap_maps().unwrap(),
            }
        }
        fn lost(&mut self, slot: usize) -> u64 {
            match self {
                New::One(p) => p.counters().unwrap().tap_lost,
                New::Chain(c) => c.counters(slot).unwrap().tap_lost,
            }
        }
    }

    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    println!("\nXDP tap cost: mean ns per BPF_PROG_TEST_RUN run, median (and min) of {ROUNDS} interleaved rounds; baseline {rev}\n");
    println!("| program | frame | before ns median / min (insns) | tap off ns median / min (insns) | off / before (median / min) | on, ring with room | on / before | on, ring full | full / before | samples read / lost (with room) |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    type Case = (&'static str, &'static str, &'static str, XdpNf);
    let cases: [Case; 3] = [
        ("fwd", "xdp_fwd", "braid_fwd", XdpNf::Fwd),
        ("firewall", "xdp_firewall", "braid_firewall", XdpNf::Firewall),
        ("xor", "xdp_xor", "braid_xor", XdpNf::Xor),
    ];
    let mut rows: Vec<(String, Base, New, usize, u32)> = Vec::new();
    for (label, obj, prog, nf) in cases {
        let base = base_single(obj, prog);
        let mut new = XdpProgram::load(nf).unwrap();
        if nf == XdpNf::Xor {
            new.set_xor_key(&[0; 16]).unwrap(); // the baseline's key is all zero too
        }
        let n = new_insns(obj, prog);
        rows.push((label.to_string(), base, New::One(new), 0, n));
    }
    let mut c = XdpChain::load(&[XdpNf::Firewall, XdpNf::Xor, XdpNf::Fwd]).unwrap();
    c.set_path(lo, &[0, 1, 2]).unwrap();
    c.set_xor_key(1, &[0; 16]).unwrap();
    // The capture taps the middle stage (xor).
    let n = new_insns("xdp_chain", "braid_chain_xor");
    let mut b = base_chain(lo);
    // The chain's entry is the same before and after; count the tapped
    // stage's instructions.
    let insns_xor = b.insns("braid_chain_xor");
    rows.push(("chain firewall+xor+fwd (tap on xor)".into(), b, New::Chain(c), 1, n));
    for (label, base, new, slot, insns_new) in &mut rows {
        let insns_base = if *slot == 1 { insns_xor } else { base.insns(base.entry) };
        for (fname, frame) in [("64 B", &small), ("1414 B", &large)] {
            let (mut b, mut off, mut on, mut full) = (vec![], vec![], vec![], vec![]);
            let (mut read, mut lost) = (0u64, 0u64);
            let maps = new.maps();
            for _ in 0..ROUNDS {
                b.push(base.ns(frame, REPEAT));
                off.push(new.ns(frame, REPEAT));
                // On, the ring with room: 400 runs (800 samples) at a
                // time, then the reader empties it.
                let mut r =
                    XdpTapReader::start(&maps, *slot as u32, &[TapPoint::In, TapPoint::Out])
                        .unwrap();
                let lost0 = new.lost(*slot);
                let mut t = 0.0;
                for _ in 0..25 {
                    t += new.ns(frame, 400);
                    while let Ok(Some(_)) = r.next(Duration::ZERO) {
                        read += 1;
                    }
                }
                on.push(t / 25.0);
                lost += new.lost(*slot) - lost0;
                // On, the ring full (a reader that does not keep up): every
                // sample is lost and counted.
                new.ns(frame, 20_000);
                full.push(new.ns(frame, REPEAT));
                drop(r);
            }
            let min = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
            let (bmin, offmin) = (min(&b), min(&off));
            let (b, off, on, full) = (median(b), median(off), median(on), median(full));
            println!(
                "| {label} | {fname} | {b:.0} / {bmin:.0} ({insns_base}) | {off:.0} / {offmin:.0} ({insns_new}) | {:.2} / {:.2} | {on:.0} | {:.2} | {full:.0} | {:.2} | {read} / {lost} |",
                off / b,
                offmin / bmin,
                on / b,
                full / b
            );
        }
    }
    let _ = std::fs::remove_dir_all(&base_dir);
}
