//! `braid demo`: build a sample capture, run it through the sample chain
//! (firewall → router → nat → fwd, embedded from `examples/sample.yaml`) and print
//! per-NF statistics. Needs no set-up and no privileges.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Context as _;
use braid_io::pcap::PcapWriter;
use braid_packet::wire::build::FrameSpec;
use braid_packet::wire::tcp_flags;
use braid_runtime::descriptor::{PcapPortDecl, PortDecl};
use braid_runtime::runner::{format_stats, open_input, open_output, run_to_end};
use braid_runtime::validate::validate_str;
use braid_runtime::Chain;

/// The demo chain, the same file as `examples/sample.yaml`.
pub const SAMPLE_CHAIN: &str = include_str!("../../../../examples/sample.yaml");

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  braid demo\n  braid demo --dir /tmp/d --packets 100000")]
pub struct Args {
    /// Directory for chain.yaml, in.pcap and out.pcap (created if missing).
    #[arg(long, default_value = "braid-demo")]
    pub dir: PathBuf,
    /// Number of packets in the generated capture.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub packets: u32,
}

/// Frame `i` of the demo capture: mostly UDP and web traffic the chain
/// forwards, plus what each NF has a reason to stop or answer.
fn demo_frame(i: u32) -> Vec<u8> {
    let client = Ipv4Addr::new(10, 0, (i / 250 % 4) as u8, (1 + i % 250) as u8);
    let server = Ipv4Addr::new(10, 1, 0, (1 + i % 7) as u8);
    let sport = 1024 + (i % 30_000) as u16;
    match i % 10 {
        0..=5 => {
            FrameSpec::udp_frame_len((client, sport), (server, 5000), 64 + (i % 8) as usize * 180)
        }
        6 => FrameSpec::tcp((client, sport), (server, 80), tcp_flags::SYN),
        // Firewall: ssh is not allowed.
        7 => FrameSpec::tcp((client, sport), (server, 22), tcp_flags::SYN),
        // Router: TTL runs out here, it answers with ICMP time exceeded.
        8 => {
            let mut f = FrameSpec::udp((client, sport), (server, 5000), 32);
            f.ttl = 1;
            f
        }
        // Router: no route to 172.16/12.
        _ => FrameSpec::icmp_echo(client, Ipv4Addr::new(172, 16, 0, 1), 7, i as u16),
    }
    .build()
}

pub fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let chain_path = args.dir.join("chain.yaml");
    let in_path = args.dir.join("in.pcap");
    let out_path = args.dir.join("out.pcap");
    std::fs::write(&chain_path, SAMPLE_CHAIN)
        .with_context(|| format!("cannot write {}", chain_path.display()))?;

    let file = std::fs::File::create(&in_path)
        .with_context(|| format!("cannot create {}", in_path.display()))?;
    let mut w = PcapWriter::new(std::io::BufWriter::new(file))?;
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    for i in 0..args.packets {
        w.write(t0 + i as u64 * 10_000, &demo_frame(i))?;
    }
    w.flush()?;
    drop(w);

    let report = validate_str(&chain_path.display().to_string(), SAMPLE_CHAIN);
    let Some(d) = report.descriptor else {
        let problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
        anyhow::bail!("the embedded sample chain is invalid:\n{}", problems.join("\n"));
    };
    println!("wrote {} ({} packets) and {}", in_path.display(), args.packets, chain_path.display());
    println!(
        "chain {}: {}",
        d.name,
        d.nfs.iter().map(|n| format!("{} ({})", n.name, n.kind)).collect::<Vec<_>>().join(" -> ")
    );
    let mut chain = Chain::from_descriptor(&d)?;
    let mut input = open_input(&PortDecl::Pcap(PcapPortDecl::new(&in_path)))?;
    let mut output = open_output(&PortDecl::Pcap(PcapPortDecl::new(&out_path)))?;
    let r = run_to_end(&mut chain, input.as_mut(), output.as_mut());
    output.finish()?;
    drop(output);
    if let Some(e) = r.error {
        return Err(e.into());
    }
    println!(
        "{} packets in, {} out in {:.3} s -> {}",
        r.input.rx_packets,
        r.output.tx_packets,
        r.elapsed.as_secs_f64(),
        out_path.display()
    );
    print!("{}", format_stats(&r.chain));
    println!("inspect: tshark -r {}", out_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_chain_is_valid_and_frames_parse() {
        let r = validate_str("sample.yaml", SAMPLE_CHAIN);
        assert!(r.is_ok(), "{:?}", r.problems);
        for i in 0..20 {
            assert!(braid_packet::flow::parse_ipv4_flow(&demo_frame(i)).is_ok(), "frame {i}");
        }
    }
}
