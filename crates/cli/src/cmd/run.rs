//! `braid run CHAIN.yaml --input IN --output OUT`: push a capture through a
//! chain and write what leaves it. Captures are pcap or pcapng (any link
//! type braid can frame as Ethernet); `-` is standard input or output, so
//! `tcpdump -w - | braid run c.yaml -i - -o - | tshark -r -` works.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use braid_io::{Port, PortError, PortStats, WaitReadiness};
use braid_packet::Batch;
use braid_runtime::descriptor::{CaptureFileFormat, PcapPortDecl, PortDecl};
use braid_runtime::plan::Mapping;
use braid_runtime::proc_chain::{run_processes, ProcessesConfig};
use braid_runtime::runner::{
    check_distinct, format_stats, open_input, open_live, open_output, run_live, run_threads,
    run_to_end, LiveOptions,
};
use braid_runtime::Chain;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  braid run examples/sample.yaml -i in.pcap -o out.pcap\n  braid run examples/sample.yaml -i in.pcap -o out.pcapng --mapping processes --json\n  tcpdump -i eth0 -w - | braid run examples/sample.yaml -i - -o - | tshark -r -\n  braid run live.yaml --seconds 60   # af_packet/af_xdp ports in the descriptor\n  braid run live.yaml --capture-socket /run/braid/run.sock   # then: braid capture --socket /run/braid/run.sock --nf fw"
)]
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
    /// How the NFs run: all in this thread, a thread per NF (channels
    /// between them), or a process per NF (shared memory between them).
    /// `hosts` and `compact` need the testbed: `braid deploy`.
    #[arg(long, value_enum, default_value = "thread")]
    pub mapping: crate::cmd::plan::MappingArg,
    /// With live ports (`af_packet`, `af_xdp` in the descriptor): stop
    /// after this many seconds (default: until SIGINT or SIGTERM).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// With live ports: serve `braid capture --socket PATH` on this unix
    /// socket while the chain runs (taps on its NFs, as for `deploy`).
    #[arg(long)]
    pub capture_socket: Option<PathBuf>,
    /// With live ports: run the NFs' `tick` every this many µs (20..=10000,
    /// default 10000). A `delay` NF releases held packets from its tick, so
    /// this bounds how late a packet may leave; `--tick-us 100` for a
    /// delay line of milliseconds.
    #[arg(long)]
    pub tick_us: Option<u64>,
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
    let tick_interval = match args.tick_us {
        Some(us) if !(20..=10_000).contains(&us) => {
            anyhow::bail!("--tick-us {us}: must be 20..=10000 (µs)")
        }
        us => us.map(std::time::Duration::from_micros),
    };
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
    let live = (open_live(&input), open_live(&output));
    if let (Some(path), (None, None)) = (&args.capture_socket, &live) {
        anyhow::bail!(
            "--capture-socket {}: only a live run (af_packet or af_xdp ports) can be captured while it runs; an offline run's output is already a capture",
            path.display()
        );
    }
    let (input_name, report, finished) = match live {
        (None, None) if args.tick_us.is_some() => {
            anyhow::bail!("--tick-us is for live ports (af_packet, af_xdp); an offline run ticks every 10 ms")
        }
        (None, None) => run_offline(&d, &input, &output, args.mapping.into())?,

        (Some(a), Some(b)) => {
            let mapping = Mapping::from(args.mapping);
            if mapping != Mapping::Thread {
                anyhow::bail!("--mapping {}: live ports run in one thread", mapping.name());
            }
            braid_runtime::coordinator::refuse_unapplied(&d, "a live `braid run`")?;
            let a = a.with_context(|| format!("open the `in` port ({})", input.kind_name()))?;
            let b = b.with_context(|| format!("open the `out` port ({})", output.kind_name()))?;
            let duration = match args.seconds {
                Some(s) if !(s.is_finite() && s > 0.0) => {
                    anyhow::bail!("--seconds {s}: must be a positive number")
                }
                s => s.map(std::time::Duration::from_secs_f64),
            };
            let stop_signal = Some(braid_probe::signal::stop_on_signals()?);
            // Bound last: every check that can refuse the run comes first,
            // so a refused run leaves no socket behind.
            let captures = match &args.capture_socket {
                Some(path) => Some(CaptureServer::start(path, &d)?),
                None => None,
            };
            let opts = LiveOptions {
                handle: captures.as_ref().map(|c| c.handle_to.clone()),
                stop_signal,
                duration,
                tick_interval,
                ..LiveOptions::default()
            };
            let name = a.name();
            let report = run_live(&d, a, b, opts);
            if let (Some(c), Some(path)) = (captures, &args.capture_socket) {
                c.stop(path);
            }
            (name, report?, Ok(()))
        }
        _ => anyhow::bail!(
            "ports `in` ({}) and `out` ({}): a chain runs either offline (pcap, memory) or between two live interfaces (af_packet, af_xdp), not both",
            input.kind_name(),
            output.kind_name()
        ),
    };
    let text = if args.json {
        let mut v = report.chain.to_json();
        v["input"] = serde_json::json!({ "port": input_name, "packets": report.input.rx_packets,
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

/// Run offline (pcap, memory ports) under `mapping`, and finish the
/// output (a capture file is renamed into place only then): the input's
/// name, the report, and how finishing went.
fn run_offline(
    d: &braid_runtime::ChainDescriptor,
    input: &PortDecl,
    output: &PortDecl,
    mapping: Mapping,
) -> anyhow::Result<(String, braid_runtime::runner::RunReport, Result<(), PortError>)> {
    let mut input = open_input(input)?;
    let input_name = input.name();
    let mut output = open_output(output)?;
    let report = match mapping {
        Mapping::Thread => {
            braid_runtime::coordinator::refuse_unapplied(d, "--mapping thread")?;
            let mut chain = Chain::from_descriptor(d)?;
            run_to_end(&mut chain, input.as_mut(), output.as_mut())
        }
        Mapping::Threads => {
            // The edge worker owns the ports it is given; keep a handle to
            // finish the output once it is done.
            let shared = SharedOutput(Arc::new(Mutex::new(output)));
            let report =
                run_threads(d, Mapping::Threads, input, Box::new(SharedOutput(shared.0.clone())))?;
            let finished = shared.lock().finish();
            return Ok((input_name, report, finished));
        }
        Mapping::Processes => {
            let exe = std::env::current_exe().context("find the braid binary for the NF processes")?;
            let mut cfg = ProcessesConfig::new(exe);
            cfg.quiet_children = true;
            let r = run_processes(d, input.as_mut(), output.as_mut(), &cfg)?;
            for (nf, why) in &r.stats_missing {
                eprintln!("warning: NF {nf}: no counters ({why}); its row shows zeros");
            }
            braid_runtime::runner::RunReport {
                chain: braid_runtime::ChainSnapshot {
                    chain: d.name.clone(),
                    taken_ns: braid_packet::clock::monotonic_ns(),
                    stages: r.stages,
                },
                input: r.input,
                output: r.output,
                elapsed: r.elapsed,
                error: None,
            }
        }
        other => anyhow::bail!(
            "--mapping {}: not for `braid run`; hosts and compact run on the testbed (`braid deploy`)",
            other.name()
        ),
    };
    let finished = output.finish();
    Ok((input_name, report, finished))
}

/// An output port shared between the worker thread that writes it and
/// [`run_offline`], which finishes it afterwards.
struct SharedOutput(Arc<Mutex<Box<dyn Port>>>);

impl SharedOutput {
    fn lock(&self) -> std::sync::MutexGuard<'_, Box<dyn Port>> {
        // A worker that panicked holding the lock left the port usable.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Port for SharedOutput {
    fn name(&self) -> String {
        self.lock().name()
    }
    fn recv(&mut self, batch: &mut Batch, max: usize) -> Result<usize, PortError> {
        self.lock().recv(batch, max)
    }
    fn send(&mut self, batch: &mut Batch) -> Result<usize, PortError> {
        self.lock().send(batch)
    }
    fn flush(&mut self) -> Result<(), PortError> {
        self.lock().flush()
    }
    fn finish(&mut self) -> Result<(), PortError> {
        self.lock().finish()
    }
    fn wait(&mut self, timeout: std::time::Duration) -> Result<(), PortError> {
        self.lock().wait(timeout)
    }
    fn at_end(&self) -> bool {
        self.lock().at_end()
    }
    fn tx_room(&mut self) -> usize {
        self.lock().tx_room()
    }
    fn prepare_wait(&mut self, fds: &mut Vec<std::os::fd::RawFd>) -> WaitReadiness {
        self.lock().prepare_wait(fds)
    }
    fn finish_wait(&mut self) {
        self.lock().finish_wait()
    }
    fn stats(&self) -> PortStats {
        self.lock().stats()
    }
}

/// `--capture-socket` of a live run: the socket is bound before the chain
/// starts (errors come first); captures are served once the worker's
/// control handle arrives, until the run ends.
struct CaptureServer {
    handle_to: std::sync::mpsc::Sender<braid_dataplane::WorkerHandle>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl CaptureServer {
    fn start(path: &Path, d: &braid_runtime::ChainDescriptor) -> anyhow::Result<CaptureServer> {
        let listener = super::deploy::bind_capture_socket(path)?;
        let (handle_to, handle) = std::sync::mpsc::channel::<braid_dataplane::WorkerHandle>();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let names: Vec<String> = d.nfs.iter().map(|n| n.name.clone()).collect();
        let server_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("braid-run-capture".into())
            .spawn(move || {
                // The worker sends its handle as it starts; a run that
                // fails before that drops the sender.
                let Ok(h) = handle.recv() else { return };
                let resolve = move |nf: &str| -> Result<braid_dataplane::WorkerHandle, String> {
                    if names.iter().any(|n| n == nf) {
                        Ok(h.clone())
                    } else {
                        Err(format!("no NF `{nf}` in this chain (its NFs: {})", names.join(", ")))
                    }
                };
                if let Ok(t) = braid_dataplane::tap::serve_unix(listener, resolve, server_stop) {
                    let _ = t.join();
                }
            })
            .context("starting the capture server")?;
        Ok(CaptureServer { handle_to, stop, thread })
    }

    fn stop(self, path: &Path) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        drop(self.handle_to);
        let _ = self.thread.join();
        let _ = std::fs::remove_file(path);
    }
}
