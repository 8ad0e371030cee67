//! BPF program statistics: an XDP program run a known number of times
//! inside the kernel (BPF_PROG_TEST_RUN) shows exactly those runs, and a
//! time per run, in `sample_xdp`.

use std::time::Duration;

use braid_io::xdp::{XdpNf, XdpProgram};
use braid_packet::wire::build::FrameSpec;

#[test]
fn an_xdp_program_run_a_known_number_of_times_is_counted_exactly() {
    if braid_testkit::skip_unless(
        braid_io::netns::is_root(),
        "bpf stats",
        "loading BPF programs and enabling their statistics needs root",
    ) || braid_testkit::skip_unless(
        braid_io::xdp::xdp_built(),
        "bpf stats",
        "XDP programs were not built (install clang and libbpf-dev)",
    ) {
        return;
    }
    let mut prog = XdpProgram::load(XdpNf::Fwd).unwrap();
    let sampler = std::thread::spawn(|| braid_profile::bpf::sample_xdp(Duration::from_millis(400)));
    std::thread::sleep(Duration::from_millis(100));
    let frame = FrameSpec::udp(
        (std::net::Ipv4Addr::new(10, 0, 0, 1), 1234),
        (std::net::Ipv4Addr::new(10, 0, 0, 2), 5678),
        32,
    )
    .build();
    prog.test_run(&frame, 1234).unwrap();
    let stats = sampler.join().unwrap().unwrap();
    let ours: Vec<_> = stats.iter().filter(|s| s.runs == 1234).collect();
    assert_eq!(ours.len(), 1, "{stats:#?}");
    let ns = ours[0].ns_per_run.expect("it ran");
    assert!(ns > 0.0 && ns < 1_000_000.0, "{ns} ns per run");
}
