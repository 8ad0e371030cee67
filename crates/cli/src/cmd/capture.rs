//! `braid capture --nf NAME`: mirror the packets entering, leaving or
//! dropped by an NF of a running deployment (`braid deploy`, through its
//! capture socket) or of a chain of braidd (`--chain NAME`) to a pcapng
//! file or standard output, with a tcpdump-style filter and a packet or
//! time limit (docs/capture.md).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use braid_dataplane::tap::{request_unix, CaptureRequest, Point};

use super::deploy::DEFAULT_CAPTURE_SOCKET;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  braid capture --nf fw -w fw.pcapng
  braid capture --nf fw --dir drops -c 10 -w - | tshark -r - -V | grep Comment
  braid capture --nf nat --dir out --filter 'udp and dst port 53' --seconds 5 -w dns.pcapng
  braid capture --chain live --nf fw --filter 'net 10.1.0.0/16 or ip6' -w - | tshark -i -

Filter primitives: [src|dst] host ADDR, [src|dst] net ADDR/LEN, [tcp|udp] [src|dst] port N,
portrange N-M, ether [src|dst] host MAC, ip, ip6, arp, tcp, udp, icmp, icmp6, vlan [ID],
proto N, less N, greater N; combined with and/&&, or/||, not/!, parentheses.
Each packet's comment says its gate (in/out) or why it was dropped.")]
pub struct Args {
    /// The NF to capture (its name in the chain descriptor).
    #[arg(long)]
    pub nf: String,
    /// What to capture: in, out, drops (comma-separated; default all).
    #[arg(long = "dir", value_delimiter = ',')]
    pub dirs: Vec<Point>,
    /// A tcpdump-style filter (see below); default: every packet.
    #[arg(long, default_value = "")]
    pub filter: String,
    /// Stop after this many packets.
    #[arg(short = 'c', long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Where to write the pcapng capture; `-` for standard output.
    #[arg(short = 'w', long = "write", default_value = "-")]
    pub write: String,
    /// The capture socket of `braid deploy`.
    #[arg(long, default_value = DEFAULT_CAPTURE_SOCKET)]
    pub socket: PathBuf,
    /// Capture in this chain of braidd instead of `braid deploy`.
    #[arg(long)]
    pub chain: Option<String>,
    /// braidd's socket (with --chain).
    #[arg(long, default_value = braid_daemon::config::DEFAULT_SOCKET, requires = "chain")]
    pub daemon_socket: PathBuf,
}

/// Packets and losses seen in a pcapng stream as it passes (Enhanced
/// Packet Blocks counted, `isb_ifdrop` of statistics blocks summed).
#[derive(Default)]
struct Tally {
    pending: Vec<u8>,
    packets: u64,
    lost: u64,
}

impl Tally {
    fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        let mut at = 0;
        while self.pending.len() - at >= 12 {
            let word = |o: usize| {
                let b = &self.pending[at + o..at + o + 4];
                u32::from_le_bytes([b[0], b[1], b[2], b[3]])
            };
            let (kind, len) = (word(0), word(4) as usize);
            if len < 12 || self.pending.len() - at < len {
                break;
            }
            match kind {
                braid_io::pcapng::BLOCK_EPB => self.packets += 1,
                braid_io::pcapng::BLOCK_ISB => {
                    // Options after interface id and timestamp.
                    let mut o = at + 20;
                    while o + 4 <= at + len - 4 {
                        let code = u16::from_le_bytes([self.pending[o], self.pending[o + 1]]);
                        let l = u16::from_le_bytes([self.pending[o + 2], self.pending[o + 3]]);
                        let l = l as usize;
                        if code == 0 || o + 4 + l > at + len - 4 {
                            break;
                        }
                        if code == 5 && l == 8 {
                            let mut v = [0u8; 8];
                            v.copy_from_slice(&self.pending[o + 4..o + 12]);
                            self.lost += u64::from_le_bytes(v);
                        }
                        o += 4 + l.div_ceil(4) * 4;
                    }
                }
                _ => {}
            }
            at += len;
        }
        self.pending.drain(..at);
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let req = CaptureRequest {
        nf: args.nf.clone(),
        points: args.dirs.clone(),
        filter: args.filter.clone(),
        count: args.count,
        seconds: args.seconds,
    };
    // Check here too, so a typo is reported before anything connects.
    braid_packet::filter::Filter::parse(&req.filter).context("--filter")?;
    if let Some(s) = args.seconds.filter(|s| !(s.is_finite() && *s > 0.0)) {
        anyhow::bail!("--seconds {s}: must be a positive number");
    }
    let stop = braid_probe::signal::stop_on_signals().context("installing signal handlers")?;
    let mut stream = match &args.chain {
        Some(chain) => braid_daemon::capture::request(&args.daemon_socket, chain, &req)?,
        None => request_unix(&args.socket, &req)?,
    };
    let mut out: Box<dyn Write> = if args.write == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            std::fs::File::create(&args.write)
                .with_context(|| format!("-w {}: creating the capture file", args.write))?,
        )
    };
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .context("setting the socket's read timeout")?;
    let mut tally = Tally::default();
    let mut buf = vec![0u8; 64 << 10];
    let mut reader_gone = false;
    while !stop.load(Ordering::Relaxed) {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(e).context("reading the capture stream"),
        };
        tally.feed(&buf[..n]);
        match out.write_all(&buf[..n]).and_then(|_| out.flush()) {
            Ok(()) => {}
            // `| head`, `| tshark -c N`: the reader has what it wanted.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                reader_gone = true;
                break;
            }
            Err(e) => return Err(e).with_context(|| format!("-w {}: writing", args.write)),
        }
    }
    drop(stream);
    if !reader_gone {
        out.flush().with_context(|| format!("-w {}: writing", args.write))?;
    }
    eprintln!(
        "braid capture: {} packets of NF {}{}",
        tally.packets,
        args.nf,
        if tally.lost > 0 {
            format!(" ({} more lost: the capture could not keep up)", tally.lost)
        } else {
            String::new()
        }
    );
    Ok(())
}
