//! `braid run CHAIN.yaml --input IN --output OUT`: push a capture through a
//! chain and write what leaves it. Captures are pcap or pcapng (any link
//! type braid can frame as Ethernet); `-` is standard input or output, so
//! `tcpdump -w - | braid run c.yaml -i - -o - | tshark -r -` works.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use braid_runtime::descriptor::{CaptureFileFormat, PcapPortDecl, PortDecl};
use braid_runtime::runner::{check_distinct, format_stats, open_input, open_output, run_to_end};
use braid_runtime::Chain;

#[derive(clap::Args)]
pub struct Args {
    /// Chain descriptor (YAML).
    pub chain: PathBuf,
    /// Input capture (pcap or pcapng, recognised by its contents; `-`:
    /// standard input); default: the descriptor's `in` port.
    #[arg(short, long)]
    pub input: Option<PathBuf>,
    /// Output capture (`-`: standard output, and the statistics go to
    /// standard error); default: the descriptor's `out` port. Written under
    /// a temporary name and renamed when complete.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Output format; default: pcapng if the output ends in `.pcapng`,
    /// else classic pcap.
    #[arg(short = 'F', long, value_enum)]
    pub output_format: Option<OutputFormat>,
    /// Print the statistics as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `--output-format`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum OutputFormat {
    Pcap,
    Pcapng,
}

fn port(
    cli: Option<PathBuf>,
    d: &braid_runtime::ChainDescriptor,
    name: &str,
    flag: &str,
) -> anyhow::Result<PortDecl> {
    match cli {
        Some(path) => Ok(PortDecl::Pcap(PcapPortDecl::new(path))),
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
    let mut output = port(args.output, &d, "out", "--output")?;
    if let (Some(f), PortDecl::Pcap(p)) = (args.output_format, &mut output) {
        p.format = Some(match f {
            OutputFormat::Pcap => CaptureFileFormat::Pcap,
            OutputFormat::Pcapng => CaptureFileFormat::Pcapng,
        });
    }
    check_distinct(&input, &output)?;
    // Captures written to standard output keep it for themselves.
    let stats_to_stderr = matches!(&output, PortDecl::Pcap(p) if p.path == Path::new("-"));
    let output_name = match &output {
        PortDecl::Pcap(p) => p.path.display().to_string(),
        other => other.kind_name().to_string(),
    };
    let mut chain = Chain::from_descriptor(&d)?;
    let mut input = open_input(&input)?;
    let mut output = open_output(&output)?;
    let report = run_to_end(&mut chain, input.as_mut(), output.as_mut());
    let finished = output.finish();
    drop(output);
    let text = if args.json {
        let mut v = report.chain.to_json();
        v["input"] = serde_json::json!({ "port": input.name(), "packets": report.input.rx_packets,
            "bytes": report.input.rx_bytes, "dropped": report.input.rx_dropped });
        v["output"] = serde_json::json!({ "packets": report.output.tx_packets,
            "bytes": report.output.tx_bytes });
        v["seconds"] = report.elapsed.as_secs_f64().into();
        v["error"] = report.error.as_ref().map(|e| e.to_string()).into();
        format!("{}\n", serde_json::to_string_pretty(&v)?)
    } else {
        format!(
            "chain {}: {} packets in ({} dropped: too large or no Ethernet form), {} out, {:.3} s\n{}",
            d.name,
            report.input.rx_packets,
            report.input.rx_dropped,
            report.output.tx_packets,
            report.elapsed.as_secs_f64(),
            format_stats(&report.chain)
        )
    };
    if stats_to_stderr {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
    match (report.error, finished) {
        (None, Ok(())) => Ok(()),
        (Some(e), Ok(())) => anyhow::bail!(
            "{e} (the {} packets before it were processed and written)",
            report.output.tx_packets
        ),
        (Some(e), Err(_)) => {
            anyhow::bail!("{e} (nothing written: {output_name} was left as it was)")
        }
        (None, Err(e)) => {
            Err(anyhow::Error::new(e).context(format!("{output_name} was left as it was")))
        }
    }
}
