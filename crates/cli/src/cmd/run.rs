//! `braid run CHAIN.yaml --input IN.pcap --output OUT.pcap`: push a capture
//! through a chain and write what leaves it.

use std::path::PathBuf;

use anyhow::Context as _;
use braid_runtime::descriptor::{PcapPortDecl, PortDecl};
use braid_runtime::plan::Mapping;
use braid_runtime::runner::{format_stats, open_input, open_output, run_threads, run_to_end};
use braid_runtime::Chain;

#[derive(clap::Args)]
pub struct Args {
    /// Chain descriptor (YAML).
    pub chain: PathBuf,
    /// Input pcap; default: the descriptor's `in` port.
    #[arg(short, long)]
    pub input: Option<PathBuf>,
    /// Output pcap; default: the descriptor's `out` port.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Print the statistics as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How the NFs run: all in this thread, a thread per NF (channels
    /// between them), or a process per NF (shared memory between them).
    /// `hosts` and `compact` need the testbed: `braid deploy`.
    #[arg(long, value_enum, default_value = "thread")]
    pub mapping: crate::cmd::plan::MappingArg,
}

fn port(
    cli: Option<PathBuf>,
    d: &braid_runtime::ChainDescriptor,
    name: &str,
    flag: &str,
) -> anyhow::Result<PortDecl> {
    match cli {
        Some(path) => Ok(PortDecl::Pcap(PcapPortDecl { path })),
        None => d
            .ports
            .get(name)
            .cloned()
            .with_context(|| format!("no {flag} given and the descriptor has no `{name}` port")),
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let d = braid_runtime::validate::load(&args.chain)?;
    let input = port(args.input, &d, "in", "--input")?;
    let output = port(args.output, &d, "out", "--output")?;
    let mut input = open_input(&input)?;
    let input_name = input.name();
    let output = open_output(&output)?;
    let report = match Mapping::from(args.mapping) {
        Mapping::Thread => {
            let mut output = output;
            let mut chain = Chain::from_descriptor(&d)?;
            run_to_end(&mut chain, input.as_mut(), output.as_mut())
        }
        Mapping::Threads => run_threads(&d, Mapping::Threads, input, output)?,
        other => anyhow::bail!(
            "--mapping {}: not for `braid run`; hosts and compact run on the testbed (`braid deploy`)",
            other.name()
        ),
    };
    if args.json {
        let mut v = report.chain.to_json();
        v["input"] = serde_json::json!({ "port": input_name, "packets": report.input.rx_packets,
            "bytes": report.input.rx_bytes, "dropped": report.input.rx_dropped });
        v["output"] = serde_json::json!({ "packets": report.output.tx_packets,
            "bytes": report.output.tx_bytes });
        v["seconds"] = report.elapsed.as_secs_f64().into();
        v["error"] = report.error.as_ref().map(|e| e.to_string()).into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "chain {}: {} packets in ({} too large, dropped), {} out, {:.3} s",
            d.name,
            report.input.rx_packets,
            report.input.rx_dropped,
            report.output.tx_packets,
            report.elapsed.as_secs_f64()
        );
        print!("{}", format_stats(&report.chain));
    }
    if let Some(e) = report.error {
        anyhow::bail!(
            "{e} (the {} packets before it were processed and written)",
            report.output.tx_packets
        );
    }
    Ok(())
}
