//! The DPI matcher: every rule's pattern in two automata, scanned over a
//! byte stream delivered in pieces.
//!
//! * Literals: one Aho-Corasick automaton (ASCII case-insensitive, so
//!   `nocase` and exact literals share it; exact ones are verified on the
//!   matched bytes). A literal that spans two pieces starts in the last
//!   `longest - 1` bytes of the earlier piece, so [`StreamState`] carries
//!   that many bytes and each piece is scanned twice: a small seam
//!   (carried bytes + the first `longest - 1` new bytes, only matches that
//!   cross into the new piece) and the piece itself, in place.
//! * Regexes: one dense DFA of all `pcre` rules (unanchored, every match
//!   reported), stepped byte by byte from the state the previous piece left
//!   in [`StreamState`]: exact for any regex, however long its match.
//!
//! Hits carry the stream offset where the match ends, so a caller can tell
//! which piece completed it. Offsets count from the start of the stream.

use std::collections::HashSet;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind as AcMatchKind};
use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::util::primitives::StateID;
use regex_automata::util::start;
use regex_automata::{Anchored, MatchKind};

use super::rules::{regex_syntax_config, Pattern, Rule};

/// Largest DFA the regex rules may build, in bytes.
pub const DFA_SIZE_LIMIT: usize = 64 << 20;

/// A rule's pattern was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// Index of the rule in the rule list.
    pub rule: u32,
    /// Stream offset just past the last byte of the match.
    pub end: u64,
}

/// Where one stream is between pieces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamState {
    /// Bytes of the stream scanned so far.
    pub pos: u64,
    /// The last `longest literal - 1` bytes scanned (fewer at the start).
    pub tail: Vec<u8>,
    /// The regex DFA's state after the last byte scanned.
    pub regex_state: u32,
}

/// Literal rules' constraints, by Aho-Corasick pattern id.
#[derive(Clone, Debug)]
struct LiteralRule {
    rule: u32,
    /// `Some(bytes)` when the literal is case-sensitive: the automaton
    /// matched case-insensitively, the bytes must be equal.
    exact: Option<Vec<u8>>,
    offset: u64,
    end_limit: Option<u64>,
}

impl LiteralRule {
    #[inline]
    fn accepts(&self, start: u64, end: u64, matched: &[u8]) -> bool {
        start >= self.offset
            && self.end_limit.is_none_or(|l| end <= l)
            && self.exact.as_deref().is_none_or(|b| b == matched)
    }
}

/// Why the automata could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the content rules do not build an Aho-Corasick automaton: {0}")]
    Literals(String),
    /// The index of a rule too big on its own (when one is), the size
    /// limit in bytes, the builder's message.
    #[error("the pcre rules do not build a DFA (limit {mib} MiB): {2}", mib = .1 >> 20)]
    Regexes(Option<usize>, usize, String),
}

/// The automata of one rule list.
#[derive(Clone, Debug)]
pub struct Matcher {
    literals: Option<AhoCorasick>,
    literal_rules: Vec<LiteralRule>,
    /// Bytes carried between pieces: longest literal - 1.
    carry: usize,
    regex: Option<dense::DFA<Vec<u32>>>,
    /// Rule index by DFA pattern id.
    regex_rules: Vec<u32>,
    /// DFA start state at the start of a stream (`^` can match).
    regex_start: StateID,
    /// DFA start state after a gap in a stream (`^` cannot match).
    regex_restart: StateID,
    /// Every state reachable from the start states: an imported state must
    /// be one of them.
    regex_states: HashSet<u32>,
}

impl Matcher {
    /// Build the automata of `rules`. For a DFA build error the index (in
    /// `rules`) of a pcre rule that fails on its own, when one does.
    pub fn new(rules: &[Rule]) -> Result<Matcher, BuildError> {
        let mut literal_bytes = Vec::new();
        let mut literal_rules = Vec::new();
        let mut regexes = Vec::new();
        let mut regex_rules = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            match &r.pattern {
                Pattern::Literal { bytes, nocase, offset, end_limit } => {
                    literal_bytes.push(bytes.clone());
                    literal_rules.push(LiteralRule {
                        rule: i as u32,
                        exact: (!nocase).then(|| bytes.clone()),
                        offset: *offset,
                        end_limit: *end_limit,
                    });
                }
                Pattern::Regex(p) => {
                    regexes.push(p.clone());
                    regex_rules.push(i as u32);
                }
            }
        }
        let literals = if literal_bytes.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .match_kind(AcMatchKind::Standard)
                    .ascii_case_insensitive(true)
                    // A full DFA: one table lookup a byte (the default
                    // picks an NFA for this many patterns, several times
                    // slower on the overlapping search).
                    .kind(Some(AhoCorasickKind::DFA))
                    .build(&literal_bytes)
                    .map_err(|e| BuildError::Literals(e.to_string()))?,
            )
        };
        let carry = literal_bytes.iter().map(Vec::len).max().unwrap_or(1).saturating_sub(1);
        let regex = if regexes.is_empty() {
            None
        } else {
            Some(build_dfa(&regexes, &regex_rules, DFA_SIZE_LIMIT)?)
        };
        let (regex_start, regex_restart, regex_states) = match &regex {
            Some(dfa) => {
                let start = dfa_start(dfa, None);
                let restart = dfa_start(dfa, Some(0));
                (start, restart, reachable_states(dfa, &[start, restart]))
            }
            None => (StateID::ZERO, StateID::ZERO, HashSet::from([0])),
        };
        Ok(Matcher {
            literals,
            literal_rules,
            carry,
            regex,
            regex_rules,
            regex_start,
            regex_restart,
            regex_states,
        })
    }

    /// Bytes a stream carries between pieces.
    pub fn carry(&self) -> usize {
        self.carry
    }

    /// A stream before its first byte.
    pub fn start(&self) -> StreamState {
        StreamState { pos: 0, tail: Vec::new(), regex_state: self.regex_start.as_u32() }
    }

    /// Continue `st` after a gap: the next piece starts at stream offset
    /// `pos`, and no match may span the gap.
    pub fn restart_at(&self, st: &mut StreamState, pos: u64) {
        st.pos = pos;
        st.tail.clear();
        st.regex_state = self.regex_restart.as_u32();
    }

    /// Whether an imported stream state could have come from this matcher.
    pub fn is_valid(&self, st: &StreamState) -> bool {
        st.tail.len() <= self.carry
            && st.tail.len() as u64 <= st.pos
            && self.regex_states.contains(&st.regex_state)
    }

    /// Scan the next `data` of the stream, pushing to `hits` every match
    /// that ends in it. A match may be reported twice (a regex match ending
    /// exactly at a piece's end shows again at the next piece's first byte):
    /// callers keep the first. `want_regex: false` skips the regex pass
    /// (every regex rule already fired) but keeps its state unchanged, so
    /// the stream must not be resumed with regexes later.
    pub fn scan(&self, st: &mut StreamState, data: &[u8], want_regex: bool, hits: &mut Vec<Hit>) {
        if let Some(ac) = &self.literals {
            self.scan_literals(ac, st, data, hits);
        }
        if let (Some(dfa), true) = (&self.regex, want_regex) {
            self.scan_regexes(dfa, st, data, hits);
        }
        st.pos += data.len() as u64;
    }

    fn scan_literals(
        &self,
        ac: &AhoCorasick,
        st: &mut StreamState,
        data: &[u8],
        hits: &mut Vec<Hit>,
    ) {
        let mut report = |pattern: usize, start: u64, end: u64, matched: &[u8]| {
            let lit = &self.literal_rules[pattern];
            if lit.accepts(start, end, matched) {
                hits.push(Hit { rule: lit.rule, end });
            }
        };
        // The seam: literals that start in the carried tail and end in `data`.
        if !st.tail.is_empty() && !data.is_empty() {
            let tail_len = st.tail.len();
            let seam_base = st.pos - tail_len as u64;
            let mut seam = std::mem::take(&mut st.tail);
            seam.extend_from_slice(&data[..data.len().min(self.carry)]);
            for m in ac.find_overlapping_iter(&seam) {
                if m.start() < tail_len && m.end() > tail_len {
                    let (s, e) = (seam_base + m.start() as u64, seam_base + m.end() as u64);
                    report(m.pattern().as_usize(), s, e, &seam[m.range()]);
                }
            }
            seam.truncate(tail_len);
            st.tail = seam;
        }
        for m in ac.find_overlapping_iter(data) {
            let (s, e) = (st.pos + m.start() as u64, st.pos + m.end() as u64);
            report(m.pattern().as_usize(), s, e, &data[m.range()]);
        }
        // Keep the last `carry` bytes of tail + data.
        if data.len() >= self.carry {
            st.tail.clear();
            st.tail.extend_from_slice(&data[data.len() - self.carry..]);
        } else {
            st.tail.extend_from_slice(data);
            let excess = st.tail.len().saturating_sub(self.carry);
            st.tail.drain(..excess);
        }
    }

    fn scan_regexes(
        &self,
        dfa: &dense::DFA<Vec<u32>>,
        st: &mut StreamState,
        data: &[u8],
        hits: &mut Vec<Hit>,
    ) {
        let mut report = |state: StateID, end: u64| {
            for k in 0..dfa.match_len(state) {
                let rule = self.regex_rules[dfa.match_pattern(state, k).as_usize()];
                hits.push(Hit { rule, end });
            }
        };
        // Valid: `is_valid` on import, and only DFA transitions after.
        let mut state = StateID::new(st.regex_state as usize).unwrap_or(self.regex_start);
        for (i, &b) in data.iter().enumerate() {
            state = dfa.next_state(state, b);
            // DFA matches are delayed by one byte: this state says whether
            // a match ended just before `b`.
            if dfa.is_special_state(state) {
                if dfa.is_match_state(state) {
                    report(state, st.pos + i as u64);
                } else if dfa.is_dead_state(state) {
                    break;
                }
            }
        }
        // A match ending at the last byte of the piece shows with the
        // end-of-input transition, without leaving the stream's state.
        let eoi = dfa.next_eoi_state(state);
        if dfa.is_match_state(eoi) {
            report(eoi, st.pos + data.len() as u64);
        }
        st.regex_state = state.as_u32();
    }
}

fn build_dfa(
    regexes: &[String],
    regex_rules: &[u32],
    limit: usize,
) -> Result<dense::DFA<Vec<u32>>, BuildError> {
    let build = |patterns: &[String]| {
        dense::Builder::new()
            .syntax(regex_syntax_config(false))
            .configure(
                dense::Config::new()
                    .match_kind(MatchKind::All)
                    .start_kind(StartKind::Unanchored)
                    .dfa_size_limit(Some(limit))
                    .determinize_size_limit(Some(limit)),
            )
            .build_many(patterns)
            .map_err(|e| e.to_string())
    };
    build(regexes).map_err(|all| {
        // Name a rule that is too big on its own, if one is. A failed build
        // costs up to the size limit (about a second of CPU), so a lone
        // regex is not built twice.
        let culprit = if regexes.len() == 1 {
            Some(0)
        } else {
            regexes.iter().position(|r| build(std::slice::from_ref(r)).is_err())
        };
        BuildError::Regexes(culprit.map(|k| regex_rules[k] as usize), limit, all)
    })
}

fn dfa_start(dfa: &dense::DFA<Vec<u32>>, look_behind: Option<u8>) -> StateID {
    let cfg = start::Config::new().anchored(Anchored::No).look_behind(look_behind);
    // Unanchored start states exist (StartKind::Unanchored) and there are
    // no quit bytes (no Unicode word boundaries), so this cannot fail.
    dfa.start_state(&cfg).expect("unanchored start state of a DFA built with StartKind::Unanchored")
}

/// Every DFA state reachable from `starts` (one byte per equivalence class).
fn reachable_states(dfa: &dense::DFA<Vec<u32>>, starts: &[StateID]) -> HashSet<u32> {
    let reps: Vec<u8> = dfa.byte_classes().representatives(..).filter_map(|u| u.as_u8()).collect();
    let mut seen: HashSet<u32> = starts.iter().map(|s| s.as_u32()).collect();
    let mut todo: Vec<StateID> = starts.to_vec();
    while let Some(s) = todo.pop() {
        for &b in &reps {
            let next = dfa.next_state(s, b);
            if seen.insert(next.as_u32()) {
                todo.push(next);
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dpi::rules::{compile, RuleConfig};

    fn matcher(yaml: &str) -> Matcher {
        let configs: Vec<RuleConfig> = serde_yaml_ng::from_str(yaml).unwrap();
        Matcher::new(&compile(&configs).unwrap()).unwrap()
    }

    /// A DFA over the size limit is refused, naming the rule too big on its
    /// own when there is one. (A 1 MiB limit here: at the real one a failed
    /// build takes seconds in a debug build.)
    #[test]
    fn a_dfa_over_the_size_limit_names_the_rule_too_big_on_its_own() {
        const LIMIT: usize = 1 << 20;
        // An unanchored `\s+` before a run of `.`: the DFA must remember
        // where every recent `s` was, so it grows about 5x per 10 dots
        // (3.4 MB at 40 in a release build, 0.6 MB at 30).
        let big = r"(?i)union\s+all\s+s.{40}ect".to_string();
        let small = r"(?i)union\s+all\s+s.{5}ect".to_string();
        let mid = r"(?i)select\s+from\s+w.{24}ere".to_string();
        let err = |regexes: &[String]| {
            let rules: Vec<u32> = (0..regexes.len() as u32).map(|k| 10 + k).collect();
            match build_dfa(regexes, &rules, LIMIT) {
                Err(BuildError::Regexes(culprit, limit, msg)) => (culprit, limit, msg),
                Ok(_) => panic!("{regexes:?} built under {LIMIT} bytes"),
                Err(e) => panic!("{e}"),
            }
        };
        assert!(build_dfa(std::slice::from_ref(&small), &[0], LIMIT).is_ok());
        assert!(build_dfa(std::slice::from_ref(&mid), &[0], LIMIT).is_ok());
        // Alone: the rule is the culprit without a second build.
        let (culprit, limit, msg) = err(std::slice::from_ref(&big));
        assert_eq!((culprit, limit), (Some(10), LIMIT));
        assert!(msg.contains("size limit"), "{msg}");
        // Among others: found by building each alone (rule index 11).
        assert_eq!(err(&[small.clone(), big.clone()]).0, Some(11));
        // Each fits alone, not together: no rule to name.
        let (culprit, ..) = err(&[mid.clone(), mid.replace("w.", "x."), mid.replace("w.", "y.")]);
        assert_eq!(culprit, None);
        let shown = BuildError::Regexes(None, LIMIT, "x".into()).to_string();
        assert!(shown.contains("limit 1 MiB"), "{shown}");
    }

    /// Scan `pieces` as one stream; the first end offset per rule.
    fn first_hits(m: &Matcher, pieces: &[&[u8]]) -> Vec<(u32, u64)> {
        let mut st = m.start();
        let mut hits = Vec::new();
        for p in pieces {
            m.scan(&mut st, p, true, &mut hits);
        }
        let mut first: Vec<(u32, u64)> = Vec::new();
        for h in hits {
            match first.iter_mut().find(|(r, _)| *r == h.rule) {
                Some((_, e)) => *e = (*e).min(h.end),
                None => first.push((h.rule, h.end)),
            }
        }
        first.sort();
        first
    }

    #[test]
    fn literal_across_pieces_and_case() {
        let m = matcher("- {sid: 1, content: attack}\n- {sid: 2, content: ATTACK, nocase: true}");
        assert_eq!(first_hits(&m, &[b"xxatt", b"ack"]), [(0, 8), (1, 8)]);
        assert_eq!(first_hits(&m, &[b"xxAtt", b"aCk"]), [(1, 8)]);
        assert_eq!(first_hits(&m, &[b"a", b"t", b"t", b"a", b"c", b"k"]), [(0, 6), (1, 6)]);
        assert_eq!(first_hits(&m, &[b"attac", b"", b"x"]), []);
    }

    #[test]
    fn offset_and_depth() {
        let m = matcher("- {sid: 1, content: ab, offset: 2, depth: 4}");
        assert_eq!(first_hits(&m, &[b"abab"]), [(0, 4)]);
        assert_eq!(first_hits(&m, &[b"a", b"bxxxab"]), []);
        assert_eq!(first_hits(&m, &[b"xxxxab"]), [(0, 6)]);
        assert_eq!(first_hits(&m, &[b"xxxxxab"]), []);
    }

    #[test]
    fn regex_across_pieces_anchor_and_gap() {
        let m = matcher("- {sid: 1, pcre: 'user=[a-z]+;'}\n- {sid: 2, pcre: '^GET', nocase: true}");
        assert_eq!(first_hits(&m, &[b"get /?user=ab", b"cd;"]), [(0, 16), (1, 3)]);
        assert_eq!(first_hits(&m, &[b" GET user=;"]), []);
        // After a gap `^` does not match and nothing spans the gap.
        let mut st = m.start();
        let mut hits = Vec::new();
        m.scan(&mut st, b"user=ab", true, &mut hits);
        m.restart_at(&mut st, 100);
        m.scan(&mut st, b"GET c;", true, &mut hits);
        assert!(hits.is_empty(), "{hits:?}");
        assert!(m.is_valid(&st));
    }

    #[test]
    fn regex_match_at_piece_end_is_found_in_that_piece() {
        let m = matcher("- {sid: 1, pcre: 'a[0-9]{3}'}");
        let mut st = m.start();
        let mut hits = Vec::new();
        m.scan(&mut st, b"xa12", true, &mut hits);
        assert!(hits.is_empty());
        m.scan(&mut st, b"3", true, &mut hits);
        assert_eq!(hits, [Hit { rule: 0, end: 5 }]);
    }

    #[test]
    fn imported_states_are_checked() {
        let m = matcher("- {sid: 1, pcre: 'ab'}\n- {sid: 2, content: xyz}");
        let mut st = m.start();
        m.scan(&mut st, b"qqqa", true, &mut Vec::new());
        assert!(m.is_valid(&st));
        assert_eq!(st.tail, b"qa");
        let mut bad = st.clone();
        bad.regex_state = u32::MAX;
        assert!(!m.is_valid(&bad));
        let mut bad = st.clone();
        bad.tail = b"abc".to_vec();
        assert!(!m.is_valid(&bad));
    }
}
