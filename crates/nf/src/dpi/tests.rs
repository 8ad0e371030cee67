//! Unit and property tests of the `dpi` NF with real frames.

use std::net::Ipv4Addr;

use braid_packet::wire::build::{FrameSpec, L4Spec};
use braid_packet::wire::tcp_flags::{ACK, SYN};
use proptest::prelude::*;

use super::*;
use crate::Counters;

type Ep = (Ipv4Addr, u16);
const CLIENT: Ep = (Ipv4Addr::new(10, 0, 0, 1), 40000);
const SERVER: Ep = (Ipv4Addr::new(10, 0, 0, 2), 80);

fn dpi(rules: &str) -> Dpi {
    dpi_with(rules, "")
}

fn dpi_with(rules: &str, extra: &str) -> Dpi {
    let yaml = format!("rules: {rules}\nlog_per_sec: 0\n{extra}");
    Dpi::from_params(&serde_yaml_ng::from_str(&yaml).unwrap()).unwrap()
}

fn tcp(src: Ep, dst: Ep, flags: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut s = FrameSpec::tcp(src, dst, flags);
    s.l4 = L4Spec::Tcp { src_port: src.1, dst_port: dst.1, flags, seq, ack: 1, window: 65535 };
    s.payload = payload.to_vec();
    s.build()
}

fn udp(src: Ep, dst: Ep, payload: &[u8]) -> Vec<u8> {
    let mut s = FrameSpec::udp(src, dst, payload.len());
    s.payload = payload.to_vec();
    s.build()
}

/// A SYN at `isn`, then `data` cut at `cuts` (sorted offsets) into
/// in-order segments.
fn stream(src: Ep, dst: Ep, isn: u32, data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut frames = vec![tcp(src, dst, SYN, isn, b"")];
    let mut bounds = vec![0];
    bounds.extend(cuts.iter().copied().filter(|&c| c > 0 && c < data.len()));
    bounds.push(data.len());
    bounds.dedup();
    for w in bounds.windows(2) {
        let seq = isn.wrapping_add(1).wrapping_add(w[0] as u32);
        frames.push(tcp(src, dst, ACK, seq, &data[w[0]..w[1]]));
    }
    frames
}

/// What became of one frame: dropped (`None`) or passed with this mark.
fn run_at(
    nf: &mut Dpi,
    frames: &[Vec<u8>],
    now_ns: u64,
    counters: &mut Counters,
) -> Vec<Option<u8>> {
    frames
        .iter()
        .map(|f| {
            let mut batch: Batch = std::iter::once(Packet::from_bytes(f)).collect();
            nf.process(&mut batch, &mut Context::new(now_ns, counters));
            batch.iter().next().map(|p| p.meta.mark)
        })
        .collect()
}

fn run(nf: &mut Dpi, frames: &[Vec<u8>]) -> Vec<Option<u8>> {
    run_at(nf, frames, 1, &mut Counters::default())
}

fn alerts(nf: &Dpi) -> Vec<(u32, u64)> {
    nf.alerts().map(|a| (a.sid, a.end)).collect()
}

#[test]
fn content_alert_spans_segments_and_is_counted_once_per_stream() {
    let mut nf = dpi("[{sid: 7, content: 'evil|21|', msg: bang}]");
    let frames = stream(CLIENT, SERVER, 1000, b"xxxxev|il!yyyy evil! again", &[5, 8]);
    // The `|` in the data is a plain byte; only `evil!` (hex 21) matches.
    let frames = [frames, stream(CLIENT, SERVER, 1000, b"", &[])].concat();
    let out = run(&mut nf, &frames);
    assert!(out.iter().all(|o| *o == Some(0)), "{out:?}");
    assert_eq!(alerts(&nf), [(7, 20)]);
    assert_eq!(nf.rule_hits(), [1]);
    let mut nf = dpi("[{sid: 7, content: 'evil!'}]");
    run(&mut nf, &stream(CLIENT, SERVER, 5, b"..evil!..", &[3, 4, 5, 6]));
    assert_eq!(alerts(&nf), [(7, 7)]);
}

#[test]
fn nocase_and_exact_literals() {
    let mut nf = dpi("[{sid: 1, content: Admin}, {sid: 2, content: admin, nocase: true}]");
    run(&mut nf, &stream(CLIENT, SERVER, 0, b"GET /ADMIN", &[7]));
    assert_eq!(alerts(&nf), [(2, 10)]);
    let mut nf = dpi("[{sid: 1, content: Admin}, {sid: 2, content: admin, nocase: true}]");
    run(&mut nf, &stream(CLIENT, SERVER, 0, b"GET /Admin", &[7]));
    assert_eq!(alerts(&nf), [(1, 10), (2, 10)]);
}

#[test]
fn offset_and_depth_count_from_the_stream_start() {
    let rules =
        "[{sid: 1, content: 'HTTP/', offset: 0, depth: 5}, {sid: 2, content: x, offset: 10}]";
    let mut nf = dpi(rules);
    run(&mut nf, &stream(CLIENT, SERVER, 0, b"HTTP/1.1 x  x", &[2, 9]));
    assert_eq!(alerts(&nf), [(1, 5), (2, 13)]);
    let mut nf = dpi(rules);
    run(&mut nf, &stream(CLIENT, SERVER, 0, b" HTTP/1.1", &[2]));
    assert_eq!(alerts(&nf), []);
}

#[test]
fn pcre_spans_segments_and_caret_is_stream_start() {
    let rules = "[{sid: 1, pcre: 'pass(word)?=[0-9]{4,}'}, {sid: 2, pcre: '^(GET|POST) '}]";
    let mut nf = dpi(rules);
    run(&mut nf, &stream(CLIENT, SERVER, 9, b"POST /login?password=12345", &[3, 12, 24]));
    assert_eq!(alerts(&nf), [(2, 5), (1, 25)]);
    let mut nf = dpi(rules);
    run(&mut nf, &stream(CLIENT, SERVER, 9, b"xGET pass=123", &[1]));
    assert_eq!(alerts(&nf), []);
}

#[test]
fn drop_blocks_the_stream_from_the_completing_packet() {
    let mut nf = dpi("[{sid: 1, content: malware, action: drop}]");
    let frames = stream(CLIENT, SERVER, 0, b"aaaamalwarebbbbcccc", &[6, 11, 15]);
    let mut counters = Counters::default();
    let out = run_at(&mut nf, &frames, 1, &mut counters);
    // SYN, "aaaama", "lware" (completes), "bbbb", "cccc".
    assert_eq!(out, [Some(0), Some(0), None, None, None]);
    assert_eq!(counters.dropped(DropReason::Denied), 3);
    // The other direction is its own stream and passes.
    assert_eq!(run(&mut nf, &[tcp(SERVER, CLIENT, ACK, 5, b"hello")]), [Some(0)]);
}

#[test]
fn mark_sticks_to_the_stream_and_first_mark_wins() {
    let mut nf = dpi("[{sid: 1, content: bb, action: mark, mark: 3}, {sid: 2, content: b, action: mark, mark: 9}, {sid: 3, content: cc, action: mark, mark: 4}]");
    let frames = stream(CLIENT, SERVER, 0, b"aaab bbccc", &[2, 4, 8]);
    let out = run(&mut nf, &frames);
    // "b" (sid 2) completes first, in the second data segment.
    assert_eq!(out, [Some(0), Some(0), Some(9), Some(9), Some(9)]);
    // Same packet: the lower rule index wins.
    let mut nf = dpi("[{sid: 1, content: bb, action: mark, mark: 3}, {sid: 2, content: b, action: mark, mark: 9}]");
    let out = run(&mut nf, &stream(CLIENT, SERVER, 0, b"abb", &[]));
    assert_eq!(out, [Some(0), Some(3)]);
}

#[test]
fn udp_matches_per_datagram_only() {
    let mut nf = dpi("[{sid: 1, content: hello, action: drop}, {sid: 2, pcre: '^ping', proto: udp, action: mark, mark: 5}]");
    let dns = (Ipv4Addr::new(10, 0, 0, 9), 53);
    let out = run(
        &mut nf,
        &[
            udp(CLIENT, dns, b"hel"),
            udp(CLIENT, dns, b"lo"),
            udp(CLIENT, dns, b"xhello"),
            udp(CLIENT, dns, b"ping"),
            udp(CLIENT, dns, b"xping"),
            udp(CLIENT, dns, b"ping hello"),
        ],
    );
    assert_eq!(out, [Some(0), Some(0), None, Some(5), Some(0), None]);
    assert_eq!(nf.rule_hits(), [2, 2]);
    assert_eq!(nf.flows(), 0, "UDP keeps no stream state");
}

#[test]
fn rules_are_scoped_by_protocol_and_ports() {
    let rules = "[{sid: 1, content: x, proto: tcp, dst_port: 80}, {sid: 2, content: x, proto: udp}, {sid: 3, content: x, src_port: '1-1024'}]";
    let mut nf = dpi(rules);
    run(&mut nf, &stream(CLIENT, SERVER, 0, b"x", &[]));
    run(&mut nf, &stream(SERVER, CLIENT, 0, b"x", &[]));
    run(&mut nf, &[udp(CLIENT, SERVER, b"x")]);
    let sids: Vec<u32> = nf.alerts().map(|a| a.sid).collect();
    assert_eq!(sids, [1, 3, 2]);
}

#[test]
fn reordered_segments_are_scanned_in_order_and_the_filling_packet_gets_the_verdict() {
    let mut nf = dpi("[{sid: 1, content: secret, action: drop}]");
    let all = stream(CLIENT, SERVER, 100, b"...secret...", &[4, 8]);
    // SYN, then "sec" region out of order: [8..12], [4..8], [0..4].
    let frames = [all[0].clone(), all[3].clone(), all[2].clone(), all[1].clone()];
    let out = run(&mut nf, &frames);
    assert_eq!(out, [Some(0), Some(0), Some(0), None]);
    assert_eq!(alerts(&nf), [(1, 9)]);
    assert_eq!(nf.stats().segments_queued, 2);
    assert_eq!(nf.ooo_total, 0);
}

#[test]
fn retransmissions_are_not_rescanned_and_overlaps_scan_new_bytes_only() {
    let mut nf = dpi("[{sid: 1, content: abcd}]");
    let mut frames = stream(CLIENT, SERVER, 0, b"xxab", &[]);
    // Retransmitted "xxab" with different bytes: the first copy counts.
    frames.push(tcp(CLIENT, SERVER, ACK, 1, b"abcd"));
    run(&mut nf, &frames);
    assert_eq!(alerts(&nf), []);
    let mut nf = dpi("[{sid: 1, content: abcd}]");
    let mut frames = stream(CLIENT, SERVER, 0, b"xxab", &[]);
    frames.push(tcp(CLIENT, SERVER, ACK, 3, b"abcd"));
    run(&mut nf, &frames);
    // Bytes 0..4 are "xxab", the overlap adds "cd" at 4..6.
    assert_eq!(alerts(&nf), [(1, 6)]);
    assert_eq!(nf.stats().retransmissions, 0);
    run(&mut nf, &[tcp(CLIENT, SERVER, ACK, 2, b"xab")]);
    assert_eq!(nf.stats().retransmissions, 1);
}

#[test]
fn a_full_reorder_queue_gives_up_the_gap() {
    let mut nf = dpi_with("[{sid: 1, content: abcdef}, {sid: 2, content: zz}]", "max_ooo_bytes: 8");
    let mut counters = Counters::default();
    let mut frames = vec![tcp(CLIENT, SERVER, SYN, 0, b"")];
    frames.push(tcp(CLIENT, SERVER, ACK, 1, b"abc"));
    // Bytes 3..5 are lost; 5..10 and 10..15 come ahead of the gap.
    frames.push(tcp(CLIENT, SERVER, ACK, 6, b"def.z"));
    frames.push(tcp(CLIENT, SERVER, ACK, 11, b"z...."));
    let out = run_at(&mut nf, &frames, 1, &mut counters);
    assert!(out.iter().all(|o| o.is_some()));
    assert_eq!(nf.stats().gaps_skipped, 1);
    // `abcdef` cannot span the gap; `zz` after it is found.
    assert_eq!(alerts(&nf), [(2, 11)]);
    assert_eq!(nf.ooo_total, 0);
}

#[test]
fn mid_stream_pickup_starts_at_the_first_data_segment() {
    let mut nf = dpi("[{sid: 1, content: ab, depth: 2}]");
    run(&mut nf, &[tcp(CLIENT, SERVER, ACK, 777, b"ab"), tcp(CLIENT, SERVER, ACK, 779, b"ab")]);
    assert_eq!(alerts(&nf), [(1, 2)]);
    // A bare ACK of an unknown stream creates no state.
    run(&mut nf, &[tcp(SERVER, CLIENT, ACK, 1, b"")]);
    assert_eq!(nf.flows(), 1);
}

#[test]
fn flows_are_bounded_evicted_and_expired() {
    let mut nf = dpi_with("[{sid: 1, content: q}]", "max_flows: 2\nidle_timeout: 1");
    let mut c = Counters::default();
    let peer = |i: u16| (Ipv4Addr::new(10, 1, 0, 1), 1000 + i);
    for i in 0..3 {
        run_at(&mut nf, &[tcp(peer(i), SERVER, SYN, 0, b"")], 10 + u64::from(i), &mut c);
    }
    assert_eq!(nf.flows(), 2);
    assert_eq!(nf.stats().flows_evicted, 1);
    // Flow 1 was seen again: flow 2 is now the least recently seen.
    run_at(&mut nf, &[tcp(peer(1), SERVER, ACK, 1, b"x")], 20, &mut c);
    run_at(&mut nf, &[tcp(peer(3), SERVER, SYN, 0, b"")], 21, &mut c);
    assert!(nf.flows.keys().any(|k| k.src_port == 1001));
    assert!(!nf.flows.keys().any(|k| k.src_port == 1002));
    nf.tick(&mut Batch::new(), &mut Context::new(21 + 2_000_000_000, &mut c));
    assert_eq!(nf.flows(), 0);
    assert_eq!(nf.stats().flows_expired, 2);
}

#[test]
fn malformed_frames_are_dropped_and_other_traffic_passes() {
    let mut nf = dpi("[{sid: 1, content: q}]");
    let mut c = Counters::default();
    let mut short = tcp(CLIENT, SERVER, ACK, 1, b"q");
    short.truncate(40);
    let arp = {
        let mut f = udp(CLIENT, SERVER, b"q");
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        f
    };
    let out = run_at(&mut nf, &[short, arp, vec![0u8; 5]], 1, &mut c);
    assert_eq!(out, [None, Some(0), None]);
    assert_eq!(c.dropped(DropReason::Malformed), 2);
    assert_eq!(alerts(&nf), []);
}

#[test]
fn alert_log_is_bounded() {
    let mut nf = dpi_with("[{sid: 1, content: q}]", "alert_log: 2");
    let frames: Vec<_> = (0..5).map(|_| udp(CLIENT, SERVER, b"q")).collect();
    run(&mut nf, &frames);
    assert_eq!(nf.alerts().count(), 2);
    assert_eq!(nf.rule_hits(), [5]);
}

#[test]
fn import_refuses_other_rules_and_bad_states() {
    let rules = "[{sid: 1, pcre: 'ab+c'}, {sid: 2, content: zzz}]";
    let mut a = dpi(rules);
    run(&mut a, &stream(CLIENT, SERVER, 0, b"xxabbz", &[]));
    let snap = a.export_state().unwrap();
    let mut other = dpi("[{sid: 1, pcre: 'ab+d'}, {sid: 2, content: zzz}]");
    assert!(
        matches!(other.import_state(&snap), Err(StateError::Corrupt(m)) if m.contains("other rules"))
    );
    let mut tampered: serde_json::Value = serde_json::from_slice(&snap.data).unwrap();
    tampered["flows"][0]["regex_state"] = 123_456_789.into();
    let bad = NfState::encode("dpi", snap.version, &tampered);
    let mut b = dpi(rules);
    assert!(matches!(b.import_state(&bad), Err(StateError::Corrupt(m)) if m.contains("flows[0]")));
    assert_eq!(b.flows(), 0);
    let mut small = dpi_with(rules, "max_flows: 1");
    run(&mut a, &stream(SERVER, CLIENT, 0, b"x", &[]));
    assert!(small.import_state(&a.export_state().unwrap()).is_err());
    b.import_state(&snap).unwrap();
    assert_eq!(b.flows(), 1);
}

/// All alerts, per rule: the first end offset. The reference for the
/// segmentation properties.
fn verdicts(nf: &Dpi) -> Vec<(u32, u64)> {
    let mut v = alerts(nf);
    v.sort();
    v
}

const PROP_RULES: &str = "[{sid: 1, content: abc}, {sid: 2, content: BCA, nocase: true}, {sid: 3, content: cab, offset: 5, depth: 40}, \
     {sid: 4, pcre: 'a[bc]{3,}a'}, {sid: 5, pcre: '^(ab|ba)c'}, {sid: 6, pcre: 'c(?i:A)b+c'}]";

fn alphabet_stream() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![Just(b'a'), Just(b'b'), Just(b'c'), Just(b'A'), Just(b'C')],
        0..200,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Matching does not depend on how the stream is cut into segments.
    #[test]
    fn matching_is_independent_of_segmentation(
        data in alphabet_stream(),
        cuts in proptest::collection::vec(0usize..200, 0..30),
        isn in any::<u32>(),
    ) {
        let mut whole = dpi(PROP_RULES);
        run(&mut whole, &stream(CLIENT, SERVER, isn, &data, &[]));
        let mut cuts = cuts;
        cuts.sort();
        let mut cut = dpi(PROP_RULES);
        run(&mut cut, &stream(CLIENT, SERVER, isn, &data, &cuts));
        prop_assert_eq!(verdicts(&whole), verdicts(&cut));
    }

    /// Segments delivered in any order (each forwarded once) give the same
    /// alerts as in order, when the reorder queue holds them.
    #[test]
    fn reordering_within_the_queue_changes_nothing(
        data in alphabet_stream(),
        cuts in proptest::collection::vec(0usize..200, 0..12),
        order in any::<proptest::sample::Index>(),
    ) {
        let mut cuts = cuts;
        cuts.sort();
        let frames = stream(CLIENT, SERVER, 1, &data, &cuts);
        let mut inorder = dpi(PROP_RULES);
        run(&mut inorder, &frames);
        let mut shuffled = frames[1..].to_vec();
        let n = shuffled.len();
        shuffled.rotate_left(order.index(n.max(1)) % n.max(1));
        shuffled.insert(0, frames[0].clone());
        let mut re = dpi(PROP_RULES);
        run(&mut re, &shuffled);
        prop_assert_eq!(verdicts(&inorder), verdicts(&re));
    }

    /// A stream split at any point, with the state exported after the first
    /// part and imported into a fresh NF for the rest, gives the same
    /// verdicts (alerts, drops, marks) as one NF seeing it all.
    #[test]
    fn state_moved_mid_stream_gives_the_same_verdicts(
        data in alphabet_stream(),
        cuts in proptest::collection::vec(0usize..200, 0..20),
        split in any::<proptest::sample::Index>(),
    ) {
        let rules = "[{sid: 1, content: abca, action: drop}, {sid: 2, pcre: 'b[ac]{4}b', action: mark, mark: 2}, \
                     {sid: 3, content: cc, nocase: true}]";
        let mut cuts = cuts;
        cuts.sort();
        let frames = stream(CLIENT, SERVER, 7, &data, &cuts);
        let mut one = dpi(rules);
        let expected = run(&mut one, &frames);
        let at = split.index(frames.len() + 1);
        let mut first = dpi(rules);
        let mut got = run(&mut first, &frames[..at]);
        let mut second = dpi(rules);
        second.import_state(&first.export_state().unwrap()).unwrap();
        got.extend(run(&mut second, &frames[at..]));
        prop_assert_eq!(&expected, &got);
        let mut both = alerts(&first);
        both.extend(alerts(&second));
        prop_assert_eq!(alerts(&one), both);
    }
}
