//! Running a chain between two ports until the input ends.

use std::time::{Duration, Instant};

use braid_io::capture::{same_file, CaptureFormat, CaptureInPort, CaptureOutPort};
use braid_io::memory::{GeneratorConfig, GeneratorPort, MemoryPort};
use braid_io::{Port, PortError, PortStats};
use braid_packet::Batch;

use crate::chain::{Chain, ChainSnapshot};
use crate::descriptor::{CaptureFileFormat, PortDecl};

/// How often a running chain gets its `tick`.
pub const TICK_INTERVAL: Duration = Duration::from_millis(10);

/// What a run did.
#[derive(Debug)]
pub struct RunReport {
    /// The chain's counters at the end.
    pub chain: ChainSnapshot,
    pub input: PortStats,
    pub output: PortStats,
    pub elapsed: Duration,
    /// The error that ended the run early, if any. Everything processed
    /// before it was sent to the output and flushed.
    pub error: Option<PortError>,
}

/// Open a descriptor port as a packet source. Capture files may be pcap
/// or pcapng, of any link type [`braid_io::linktype`] turns into Ethernet.
pub fn open_input(decl: &PortDecl) -> Result<Box<dyn Port>, PortError> {
    Ok(match decl {
        PortDecl::Pcap(p) => Box::new(CaptureInPort::open(&p.path)?),
        PortDecl::Memory(m) => Box::new(GeneratorPort::new(&GeneratorConfig {
            frame_size: m.frame_size,
            flows: m.flows,
            packets: Some(m.packets),
            ..GeneratorConfig::default()
        })?),
        // Live kinds are opened by the commands that run live chains.
        #[allow(unreachable_patterns)]
        other => return Err(unsupported(other)),
    })
}

fn unsupported(decl: &PortDecl) -> PortError {
    PortError::Config(format!(
        "`{}` ports cannot be used for offline runs; use pcap or memory",
        decl.kind_name()
    ))
}

/// Open a descriptor port as a packet sink. A capture file appears (or
/// replaces an older one) only when [`Port::finish`] succeeds.
pub fn open_output(decl: &PortDecl) -> Result<Box<dyn Port>, PortError> {
    Ok(match decl {
        PortDecl::Pcap(p) => Box::new(CaptureOutPort::create(
            &p.path,
            p.format.map(|f| match f {
                CaptureFileFormat::Pcap => CaptureFormat::Pcap,
                CaptureFileFormat::Pcapng => CaptureFormat::Pcapng,
            }),
        )?),
        PortDecl::Memory(_) => Box::new(MemoryPort::sink("out")),
        #[allow(unreachable_patterns)]
        other => return Err(unsupported(other)),
    })
}

/// Refuse an output that is the input file (also through a symbolic or
/// hard link, or standard output redirected to it): writing it would
/// destroy the capture being read.
pub fn check_distinct(input: &PortDecl, output: &PortDecl) -> Result<(), PortError> {
    if let (PortDecl::Pcap(i), PortDecl::Pcap(o)) = (input, output) {
        if same_file(&i.path, &o.path) {
            return Err(PortError::Config(format!(
                "input {} and output {} are the same file: refusing to overwrite the input",
                i.path.display(),
                o.path.display()
            )));
        }
    }
    Ok(())
}

/// Push everything `input` delivers through `chain` into `output`, until
/// the input ends or a port fails. Ticks the chain every
/// [`TICK_INTERVAL`] and once at the end, and flushes the output.
pub fn run_to_end(chain: &mut Chain, input: &mut dyn Port, output: &mut dyn Port) -> RunReport {
    let start = Instant::now();
    let mut batch = Batch::with_capacity(chain.batch_size());
    let mut error = None;
    let mut last_tick = Instant::now();
    loop {
        let got = match input.recv(&mut batch, chain.batch_size()) {
            Ok(n) => n,
            Err(e) => {
                // Keep what was read before the error.
                error = Some(e);
                0
            }
        };
        if !batch.is_empty() {
            chain.process(&mut batch);
            if let Err(e) = output.send(&mut batch) {
                error.get_or_insert(e);
            }
        }
        if last_tick.elapsed() >= TICK_INTERVAL {
            last_tick = Instant::now();
            chain.tick(&mut batch);
            if let Err(e) = output.send(&mut batch) {
                error.get_or_insert(e);
            }
        }
        if error.is_some() || (got == 0 && input.at_end()) {
            break;
        }
        if got == 0 {
            if let Err(e) = input.wait(TICK_INTERVAL) {
                error = Some(e);
                break;
            }
        }
    }
    // Final tick: NFs flush what they hold back.
    chain.tick(&mut batch);
    if let Err(e) = output.send(&mut batch) {
        error.get_or_insert(e);
    }
    if let Err(e) = output.flush() {
        error.get_or_insert(e);
    }
    chain.publish();
    RunReport {
        chain: chain.snapshot(),
        input: input.stats(),
        output: output.stats(),
        elapsed: start.elapsed(),
        error,
    }
}

/// A per-NF statistics table, for people.
pub fn format_stats(s: &ChainSnapshot) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:<12} {:>10} {:>10} {:>10} {:>10} {:>9}  drops",
        "nf", "type", "in", "out", "dropped", "created", "ns/pkt"
    );
    for st in &s.stages {
        let c = &st.counters;
        let ns = if c.packets_in > 0 { c.busy_ns as f64 / c.packets_in as f64 } else { 0.0 };
        let drops: Vec<String> =
            c.drop_breakdown().iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            out,
            "{:<12} {:<12} {:>10} {:>10} {:>10} {:>10} {:>9.1}  {}",
            st.name,
            st.kind,
            c.packets_in,
            c.packets_out,
            c.dropped_total(),
            c.packets_created,
            ns,
            if drops.is_empty() { "-".to_string() } else { drops.join(" ") }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_io::pcap::{PcapReader, PcapWriter};

    fn fwd_chain() -> Chain {
        Chain::new(
            "t",
            vec![("f".into(), braid_nf::build("fwd", &braid_nf::Params::Null).unwrap())],
        )
    }

    #[test]
    fn memory_to_memory_keeps_order() {
        let frames: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 60]).collect();
        let mut input = MemoryPort::new("in", frames.clone());
        let mut output = MemoryPort::new("out", Vec::new());
        let mut chain = fwd_chain();
        let r = run_to_end(&mut chain, &mut input, &mut output);
        assert!(r.error.is_none());
        assert_eq!(output.take_sent(), frames);
        assert_eq!(r.chain.stages[0].counters.packets_in, 100);
        assert_eq!((r.input.rx_packets, r.output.tx_packets), (100, 100));
        assert!(format_stats(&r.chain).contains("fwd"));
    }

    #[test]
    fn truncated_pcap_writes_what_came_before_and_reports() {
        let dir = std::env::temp_dir().join(format!("braid-runner-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        for i in 0..50u64 {
            w.write(1_700_000_000_000_000_000 + i, &[i as u8; 60]).unwrap();
        }
        let bytes = w.into_inner();
        let inp = dir.join("in.pcap");
        std::fs::write(&inp, &bytes[..bytes.len() - 3]).unwrap();
        let outp = dir.join("out.pcap");
        let mut input = open_input(&PortDecl::Pcap(crate::PcapPortDecl::new(&inp))).unwrap();
        let mut output = open_output(&PortDecl::Pcap(crate::PcapPortDecl::new(&outp))).unwrap();
        let r = run_to_end(&mut fwd_chain(), input.as_mut(), output.as_mut());
        let e = r.error.expect("truncation is an error").to_string();
        assert!(e.contains("record 50"), "{e}");
        // The input's error is not the output's: what came before is kept.
        output.finish().unwrap();
        drop(output);
        let data = std::fs::read(&outp).unwrap();
        let mut rd = PcapReader::new(&data[..]).unwrap();
        let mut n = 0;
        let mut buf = Vec::new();
        while let Some(h) = rd.next_record(&mut buf).unwrap() {
            assert_eq!(h.ts_ns, 1_700_000_000_000_000_000 + n);
            n += 1;
        }
        assert_eq!(n, 49);

        // The output may not be the input, by any name.
        let pcap = |p: &std::path::Path| PortDecl::Pcap(crate::PcapPortDecl::new(p));
        std::os::unix::fs::symlink(&inp, dir.join("link.pcap")).unwrap();
        for same in [inp.clone(), dir.join("link.pcap"), dir.join(".").join("in.pcap")] {
            let e = check_distinct(&pcap(&inp), &pcap(&same)).unwrap_err().to_string();
            assert!(e.contains("are the same file: refusing to overwrite the input"), "{e}");
        }
        check_distinct(&pcap(&inp), &pcap(&outp)).unwrap();
        check_distinct(&pcap(&inp), &pcap(&dir.join("new.pcap"))).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
