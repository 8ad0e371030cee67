//! Decoders: progressive Gaussian elimination over GF(2^8).
//!
//! [`Solver`] keeps the received equations in reduced row-echelon form:
//! every new packet is reduced by the rows already held, normalized, and
//! eliminated from them, so a source is known the moment its pivot row has
//! no other non-zero coefficient; nothing waits for a full matrix.
//!
//! [`BlockDecoder`] runs one solver per generation and delivers each
//! generation's sources in index order as soon as they are decodable.
//! Generations are independent: a later one is not held behind an earlier,
//! incomplete one. Memory is bounded by `max_generations`: when a packet
//! opens one more, the oldest (lowest id) is evicted, its decoded sources
//! delivered and the others counted as undecodable.
//!
//! [`SlidingDecoder`] solves over a sliding range of sequence numbers and
//! delivers sources in sequence order.

use crate::gf256::{self, Kernel};
use crate::header::{coefficients, read_symbol, Header, Kind, Parsed};
use crate::snapshot::{same, symbol_len, SnapshotError};
use std::collections::{BTreeMap, HashSet, VecDeque};

#[derive(Debug, Clone)]
struct Row {
    coefs: Vec<u8>,
    data: Vec<u8>,
}

/// Linear system over `width` unknown symbols in reduced row-echelon form.
#[derive(Debug, Clone)]
pub struct Solver {
    width: usize,
    rows: Vec<Row>,
    /// Row holding the pivot of each column.
    pivot: Vec<Option<usize>>,
    kernel: Kernel,
}

impl Solver {
    pub fn new(width: usize, kernel: Kernel) -> Solver {
        Solver { width, rows: Vec::new(), pivot: vec![None; width], kernel }
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// Number of independent equations held.
    pub fn rank(&self) -> usize {
        self.rows.len()
    }

    /// Add the equation `sum coefs[i] * x_i = data`. `coefs` shorter than
    /// the width is zero-extended. Returns the new pivot column, or `None` if
    /// the equation was not innovative (already implied by the others).
    pub fn insert(&mut self, coefs: &[u8], data: &[u8]) -> Option<usize> {
        let mut c = coefs.to_vec();
        c.resize(self.width, 0);
        self.insert_owned(c, data.to_vec())
    }

    /// [`Solver::insert`] of a unit equation `x_col = data` (a source).
    pub fn insert_source(&mut self, col: usize, data: &[u8]) -> Option<usize> {
        // Already known: nothing to learn. (A pivot alone is not enough: a
        // coded row may hold this column's pivot together with others.)
        if col >= self.width || self.decoded(col).is_some() {
            return None;
        }
        let mut c = vec![0u8; self.width];
        c[col] = 1;
        self.insert_owned(c, data.to_vec())
    }

    fn insert_owned(&mut self, mut coefs: Vec<u8>, mut data: Vec<u8>) -> Option<usize> {
        let k = self.kernel;
        // Reduce by every pivot row. In reduced row-echelon form each pivot
        // row is zero in every other pivot column, so the factors are the
        // incoming coefficients at the pivot columns, all known up front:
        // the reduction is one linear combination, which the kernel fuses.
        let mut factors = Vec::with_capacity(self.rows.len());
        let mut coef_rows: Vec<&[u8]> = Vec::with_capacity(self.rows.len());
        let mut data_rows: Vec<&[u8]> = Vec::with_capacity(self.rows.len());
        for (col, &f) in coefs.iter().enumerate() {
            if f == 0 {
                continue;
            }
            if let Some(r) = self.pivot[col] {
                let row = &self.rows[r];
                factors.push(f);
                coef_rows.push(&row.coefs);
                data_rows.push(&row.data);
                if data.len() < row.data.len() {
                    data.resize(row.data.len(), 0);
                }
            }
        }
        if !factors.is_empty() {
            k.combine(&mut coefs, &coef_rows, &factors);
            k.combine(&mut data, &data_rows, &factors);
        }
        let p = coefs.iter().position(|&x| x != 0)?;
        let inv = gf256::inv(coefs[p]).unwrap_or(1);
        k.scale(&mut coefs[p..], inv);
        k.scale(&mut data, inv);
        // Eliminate the new pivot column from the rows already held.
        for row in &mut self.rows {
            let f = row.coefs[p];
            if f != 0 {
                k.mul_acc(&mut row.coefs[p..], &coefs[p..], f);
                if row.data.len() < data.len() {
                    row.data.resize(data.len(), 0);
                }
                k.mul_acc(&mut row.data, &data, f);
            }
        }
        self.pivot[p] = Some(self.rows.len());
        self.rows.push(Row { coefs, data });
        Some(p)
    }

    /// The value of unknown `col` if it is determined.
    pub fn decoded(&self, col: usize) -> Option<&[u8]> {
        let r = self.pivot.get(col).copied().flatten()?;
        let row = &self.rows[r];
        let alone = row.coefs.iter().enumerate().all(|(i, &c)| i == col || c == 0);
        alone.then_some(&row.data[..])
    }

    /// The held rows as (coefficients, symbol).
    pub(crate) fn rows_iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.rows.iter().map(|r| (&r.coefs[..], &r.data[..]))
    }

    pub(crate) fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Drop the first `n` columns: rows that involve them are removed (their
    /// unknowns are settled or abandoned), the rest shift left, and `n` new
    /// empty columns open at the end.
    pub fn drop_front(&mut self, n: usize) {
        let n = n.min(self.width);
        self.rows.retain(|r| r.coefs[..n].iter().all(|&c| c == 0));
        for r in &mut self.rows {
            r.coefs.drain(..n);
            r.coefs.resize(self.width, 0);
        }
        self.pivot.iter_mut().for_each(|p| *p = None);
        for (i, r) in self.rows.iter().enumerate() {
            if let Some(p) = r.coefs.iter().position(|&c| c != 0) {
                self.pivot[p] = Some(i);
            }
        }
    }
}

/// The equations a [`Solver`] holds, in its row order (which decides the
/// results of later eliminations and of recoding, so it is kept).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SolverSnapshot {
    pub width: usize,
    pub rows: Vec<RowSnapshot>,
}

/// One equation: `sum coefs[i] * x_i = data`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RowSnapshot {
    pub coefs: Vec<u8>,
    pub data: Vec<u8>,
}

impl Solver {
    /// Snapshot the equations (the pivot index is derived from them).
    pub fn snapshot(&self) -> SolverSnapshot {
        SolverSnapshot {
            width: self.width,
            rows: self
                .rows
                .iter()
                .map(|r| RowSnapshot { coefs: r.coefs.clone(), data: r.data.clone() })
                .collect(),
        }
    }

    /// A solver holding the equations of `snap`, which must be in reduced
    /// row-echelon form as a solver keeps them: each row's first non-zero
    /// coefficient is 1 and is zero in every other row.
    pub fn from_snapshot(snap: &SolverSnapshot, kernel: Kernel) -> Result<Solver, SnapshotError> {
        let width = snap.width;
        if snap.rows.len() > width {
            return Err(SnapshotError::Invalid(format!(
                "{} equations over {width} unknowns",
                snap.rows.len()
            )));
        }
        let mut pivot = vec![None; width];
        for (i, row) in snap.rows.iter().enumerate() {
            if row.coefs.len() != width {
                return Err(SnapshotError::Invalid(format!(
                    "rows[{i}] has {} coefficients, the solver {width} unknowns",
                    row.coefs.len()
                )));
            }
            symbol_len(&format!("rows[{i}].data"), &row.data)?;
            let Some(p) = row.coefs.iter().position(|&c| c != 0) else {
                return Err(SnapshotError::Invalid(format!(
                    "rows[{i}] has no non-zero coefficient"
                )));
            };
            if row.coefs[p] != 1 || pivot[p].is_some() {
                return Err(SnapshotError::Invalid(format!(
                    "rows[{i}] is not in reduced echelon form (column {p})"
                )));
            }
            pivot[p] = Some(i);
        }
        for (p, r) in pivot.iter().enumerate() {
            let Some(r) = *r else { continue };
            if let Some(j) = (0..snap.rows.len()).find(|&j| j != r && snap.rows[j].coefs[p] != 0) {
                return Err(SnapshotError::Invalid(format!(
                    "rows[{j}] is not eliminated at pivot column {p}"
                )));
            }
        }
        let rows = snap
            .rows
            .iter()
            .map(|r| Row { coefs: r.coefs.clone(), data: r.data.clone() })
            .collect();
        Ok(Solver { width, rows, pivot, kernel })
    }
}

/// Counts kept by a decoder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DecoderStats {
    /// Sources delivered.
    pub delivered: u64,
    /// Sources given up (generation evicted or timed out; sliding range
    /// moved past them).
    pub undecodable: u64,
    /// Received packets that added nothing (duplicates, surplus coded
    /// packets, packets of finished generations).
    pub redundant: u64,
    /// Packets that contradict the code (bad symbol length, wrong kind).
    pub malformed: u64,
}

impl DecoderStats {
    /// Refuse counts no decoder reaches (2^62 packets is over a thousand
    /// years at 100 Mpps), so restored counts can still grow without
    /// overflowing.
    fn check(&self) -> Result<(), SnapshotError> {
        const MAX: u64 = 1 << 62;
        let DecoderStats { delivered, undecodable, redundant, malformed } = *self;
        if [delivered, undecodable, redundant, malformed].iter().any(|&n| n > MAX) {
            return Err(SnapshotError::Invalid(format!("counts {self:?} exceed 2^62")));
        }
        Ok(())
    }
}

/// A decoded source handed to the caller.
#[derive(Debug)]
pub struct Delivered<'a> {
    /// Generation (block) or 0 (sliding).
    pub generation: u32,
    /// Index in the generation (block) or sequence number (sliding).
    pub index: u32,
    /// The original payload.
    pub payload: &'a [u8],
}

#[derive(Debug)]
struct Generation {
    solver: Solver,
    /// Final size, once a coded packet has told it.
    size: Option<usize>,
    next: usize,
    last_ns: u64,
}

impl Generation {
    fn size(&self) -> usize {
        self.size.unwrap_or(self.solver.width())
    }
}

/// Decoder of the systematic block code.
#[derive(Debug)]
pub struct BlockDecoder {
    max_generations: usize,
    gens: BTreeMap<u32, Generation>,
    /// Recently finished generations, so their late packets are ignored.
    finished: HashSet<u32>,
    finished_order: VecDeque<u32>,
    stats: DecoderStats,
    kernel: Kernel,
    coefs: Vec<u8>,
}

const FINISHED_MEMORY: usize = 4096;

impl BlockDecoder {
    /// A decoder holding at most `max_generations` incomplete generations.
    pub fn new(max_generations: usize) -> BlockDecoder {
        BlockDecoder {
            max_generations: max_generations.max(1),
            gens: BTreeMap::new(),
            finished: HashSet::new(),
            finished_order: VecDeque::new(),
            stats: DecoderStats::default(),
            kernel: Kernel::best(),
            coefs: Vec::new(),
        }
    }

    pub fn with_kernel(mut self, kernel: Kernel) -> Self {
        self.kernel = kernel;
        self
    }

    pub fn stats(&self) -> DecoderStats {
        self.stats
    }

    /// Incomplete generations held.
    pub fn in_flight(&self) -> usize {
        self.gens.len()
    }

    /// Take one packet; `deliver` gets every source that becomes
    /// deliverable, in order within its generation.
    pub fn receive(&mut self, p: &Parsed<'_>, now_ns: u64, mut deliver: impl FnMut(Delivered<'_>)) {
        let h = p.header;
        if !matches!(h.kind, Kind::BlockSource | Kind::BlockCoded | Kind::BlockRecoded) {
            self.stats.malformed += 1;
            return;
        }
        if self.finished.contains(&h.id) {
            self.stats.redundant += 1;
            return;
        }
        if !self.gens.contains_key(&h.id) {
            while self.gens.len() >= self.max_generations {
                let Some((&oldest, _)) = self.gens.iter().next() else { break };
                self.evict(oldest, &mut deliver);
            }
            self.gens.insert(
                h.id,
                Generation {
                    solver: Solver::new(h.count as usize, self.kernel),
                    size: None,
                    next: 0,
                    last_ns: now_ns,
                },
            );
        }
        let Some(g) = self.gens.get_mut(&h.id) else { return };
        g.last_ns = now_ns;
        let width = g.solver.width();
        let innovative = match h.kind {
            Kind::BlockSource => {
                let mut sym = Vec::with_capacity(p.payload.len() + 2);
                crate::header::write_symbol(p.payload, &mut sym);
                if h.index as usize >= width {
                    self.stats.malformed += 1;
                    return;
                }
                g.solver.insert_source(h.index as usize, &sym).is_some()
            }
            _ => {
                let n = h.count as usize;
                if n > width || g.size.is_some_and(|s| s != n) {
                    self.stats.malformed += 1;
                    return;
                }
                g.size = Some(n);
                if g.next >= n {
                    // Every source is delivered already: nothing to learn.
                    self.stats.redundant += 1;
                    self.gens.remove(&h.id);
                    self.mark_finished(h.id);
                    return;
                }
                let coefs: &[u8] = if h.kind == Kind::BlockCoded {
                    self.coefs.resize(n, 0);
                    coefficients(h.seed, &mut self.coefs);
                    &self.coefs
                } else {
                    p.coefficients
                };
                g.solver.insert(coefs, p.payload).is_some()
            }
        };
        if !innovative {
            // Not new, but a coded packet may have just told the final size
            // of a generation whose sources are all delivered.
            self.stats.redundant += 1;
        }
        let Some(g) = self.gens.get_mut(&h.id) else { return };
        while g.next < g.size() {
            let Some(sym) = g.solver.decoded(g.next) else { break };
            match read_symbol(sym) {
                Some(payload) => {
                    self.stats.delivered += 1;
                    deliver(Delivered { generation: h.id, index: g.next as u32, payload });
                }
                None => self.stats.malformed += 1,
            }
            g.next += 1;
        }
        if g.next >= g.size() {
            self.gens.remove(&h.id);
            self.mark_finished(h.id);
        }
    }

    fn mark_finished(&mut self, id: u32) {
        if self.finished.insert(id) {
            self.finished_order.push_back(id);
            if self.finished_order.len() > FINISHED_MEMORY {
                if let Some(old) = self.finished_order.pop_front() {
                    self.finished.remove(&old);
                }
            }
        }
    }

    /// Give up generation `id`: deliver what is decoded, count the rest.
    fn evict(&mut self, id: u32, deliver: &mut impl FnMut(Delivered<'_>)) {
        let Some(g) = self.gens.remove(&id) else { return };
        for i in g.next..g.size() {
            match g.solver.decoded(i).and_then(read_symbol) {
                Some(payload) => {
                    self.stats.delivered += 1;
                    deliver(Delivered { generation: id, index: i as u32, payload });
                }
                None => self.stats.undecodable += 1,
            }
        }
        self.mark_finished(id);
    }

    /// Give up every generation that received nothing for `timeout_ns`.
    pub fn expire(&mut self, now_ns: u64, timeout_ns: u64, mut deliver: impl FnMut(Delivered<'_>)) {
        let old: Vec<u32> = self
            .gens
            .iter()
            .filter(|(_, g)| now_ns.saturating_sub(g.last_ns) >= timeout_ns)
            .map(|(&id, _)| id)
            .collect();
        for id in old {
            self.evict(id, &mut deliver);
        }
    }
}

/// One incomplete generation of a [`BlockDecoder`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GenerationSnapshot {
    pub id: u32,
    pub solver: SolverSnapshot,
    /// Final size, once a coded packet has told it.
    pub size: Option<usize>,
    /// Sources delivered so far (the next index to deliver).
    pub next: usize,
    /// When its last packet arrived (`now_ns` of the decoder's caller).
    pub last_ns: u64,
}

/// The state of a [`BlockDecoder`]: its bound (checked on restore), the
/// incomplete generations, the recently finished ones and the counts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockDecoderSnapshot {
    pub max_generations: usize,
    /// Incomplete generations, by id.
    pub generations: Vec<GenerationSnapshot>,
    /// Recently finished generations, oldest first.
    pub finished: Vec<u32>,
    pub stats: DecoderStats,
}

impl BlockDecoder {
    /// Snapshot the state (not the kernel or scratch buffers).
    pub fn snapshot(&self) -> BlockDecoderSnapshot {
        BlockDecoderSnapshot {
            max_generations: self.max_generations,
            generations: self
                .gens
                .iter()
                .map(|(&id, g)| GenerationSnapshot {
                    id,
                    solver: g.solver.snapshot(),
                    size: g.size,
                    next: g.next,
                    last_ns: g.last_ns,
                })
                .collect(),
            finished: self.finished_order.iter().copied().collect(),
            stats: self.stats,
        }
    }

    /// A new decoder of this one's bound and kernel, in the state of `snap`.
    /// Refused if `snap` was taken under another bound or does not fit it;
    /// `self` is untouched either way.
    pub fn restored(&self, snap: &BlockDecoderSnapshot) -> Result<BlockDecoder, SnapshotError> {
        same("max_generations", snap.max_generations, self.max_generations)?;
        snap.stats.check()?;
        if snap.generations.len() > self.max_generations {
            return Err(SnapshotError::Invalid(format!(
                "{} incomplete generations, more than max_generations {}",
                snap.generations.len(),
                self.max_generations
            )));
        }
        if snap.finished.len() > FINISHED_MEMORY {
            return Err(SnapshotError::Invalid(format!(
                "{} finished generations remembered, at most {FINISHED_MEMORY}",
                snap.finished.len()
            )));
        }
        let mut finished = HashSet::with_capacity(snap.finished.len());
        for &id in &snap.finished {
            if !finished.insert(id) {
                return Err(SnapshotError::Invalid(format!(
                    "generation {id} is listed as finished twice"
                )));
            }
        }
        let mut gens = BTreeMap::new();
        for g in &snap.generations {
            let what = format!("generation {}", g.id);
            if finished.contains(&g.id) {
                return Err(SnapshotError::Invalid(format!(
                    "{what} is both finished and incomplete"
                )));
            }
            // Widths come from the header's 8-bit count.
            if !(1..=255).contains(&g.solver.width) {
                return Err(SnapshotError::Invalid(format!(
                    "{what}: width {} is outside 1..=255",
                    g.solver.width
                )));
            }
            let solver =
                Solver::from_snapshot(&g.solver, self.kernel).map_err(|e| e.within(&what))?;
            let size = g.size.unwrap_or(solver.width());
            if size == 0 || size > solver.width() || g.next >= size {
                return Err(SnapshotError::Invalid(format!(
                    "{what}: size {size} and next {} do not fit width {}",
                    g.next,
                    solver.width()
                )));
            }
            let held = Generation { solver, size: g.size, next: g.next, last_ns: g.last_ns };
            if gens.insert(g.id, held).is_some() {
                return Err(SnapshotError::Invalid(format!("{what} is listed twice")));
            }
        }
        Ok(BlockDecoder {
            max_generations: self.max_generations,
            gens,
            finished,
            finished_order: snap.finished.iter().copied().collect(),
            stats: snap.stats,
            kernel: self.kernel,
            coefs: Vec::new(),
        })
    }

    /// [`BlockDecoder::restored`] in place.
    pub fn restore(&mut self, snap: &BlockDecoderSnapshot) -> Result<(), SnapshotError> {
        *self = self.restored(snap)?;
        Ok(())
    }
}

/// Decoder of the sliding-window code.
#[derive(Debug)]
pub struct SlidingDecoder {
    /// Sequence number of solver column 0: the next source to deliver.
    base: u32,
    started: bool,
    /// Highest sequence number + 1 the decoder knows exists.
    horizon: u32,
    solver: Solver,
    /// The last `span` delivered symbols (seq, symbol), to subtract them
    /// from coded packets whose window starts before `base`.
    history: VecDeque<(u32, Vec<u8>)>,
    history_len: usize,
    spare: Option<Vec<u8>>,
    last_ns: u64,
    stats: DecoderStats,
    coefs: Vec<u8>,
}

impl SlidingDecoder {
    /// `span`: how many undelivered sequence numbers may be pending before
    /// the oldest is given up (at least the encoder's window).
    pub fn new(span: usize) -> SlidingDecoder {
        let span = span.clamp(1, 4096);
        SlidingDecoder {
            base: 0,
            started: false,
            horizon: 0,
            solver: Solver::new(span, Kernel::best()),
            history: VecDeque::new(),
            // Coded windows start at most `span` before the next source.
            history_len: span,
            spare: None,
            last_ns: 0,
            stats: DecoderStats::default(),
            coefs: Vec::new(),
        }
    }

    pub fn stats(&self) -> DecoderStats {
        self.stats
    }

    /// Distance from `base` to `seq` in sequence space (wrapping).
    fn offset(&self, seq: u32) -> i64 {
        seq.wrapping_sub(self.base) as i32 as i64
    }

    /// Take one packet; `deliver` gets sources in sequence order.
    pub fn receive(&mut self, p: &Parsed<'_>, now_ns: u64, mut deliver: impl FnMut(Delivered<'_>)) {
        let h: Header = p.header;
        if !matches!(h.kind, Kind::SlidingSource | Kind::SlidingCoded) {
            self.stats.malformed += 1;
            return;
        }
        let count = if h.kind == Kind::SlidingSource { 1 } else { h.count as i64 };
        let span = self.solver.width() as i64;
        if count > span {
            // A window wider than our span (a sender configured with a
            // larger window) can never be used. Refuse it before it moves
            // anything: making room for it would give up sources for nothing.
            self.stats.redundant += 1;
            return;
        }
        self.last_ns = now_ns;
        if !self.started {
            // Encoders number sources from 0. A decoder started with its
            // encoder counts from 0, so sources lost before the first packet
            // it sees are still reported; one that joins mid-stream starts
            // at the first window it sees.
            self.started = true;
            self.base = if (h.id as usize) < self.solver.width() { 0 } else { h.id };
            self.horizon = self.base;
        }
        let start = self.offset(h.id);
        let end = start + count;
        if end <= 0 {
            self.stats.redundant += 1;
            return;
        }
        // Make room: give up the oldest columns until the packet fits.
        if end > span {
            self.advance((end - span) as usize, &mut deliver);
        }
        let start = self.offset(h.id);
        let end = start + count;
        if end <= 0 || end > span {
            // Delivery moved past the whole window: unusable.
            self.stats.redundant += 1;
            return;
        }
        if end > self.offset(self.horizon) {
            self.horizon = self.base.wrapping_add(end as u32);
        }
        if h.kind == Kind::SlidingSource && start == 0 && self.solver.rank() == 0 {
            // The next source, nothing pending: deliver it straight from the
            // packet, keep a copy for later coded packets.
            self.stats.delivered += 1;
            deliver(Delivered { generation: 0, index: h.id, payload: p.payload });
            let mut buf = self.recycle();
            crate::header::write_symbol(p.payload, &mut buf);
            self.remember(h.id, buf);
            self.base = self.base.wrapping_add(1);
            return;
        }
        let inserted = if h.kind == Kind::SlidingSource {
            if start < 0 {
                self.stats.redundant += 1;
                return;
            }
            let mut sym = Vec::with_capacity(p.payload.len() + 2);
            crate::header::write_symbol(p.payload, &mut sym);
            self.solver.insert_source(start as usize, &sym)
        } else {
            self.coefs.resize(h.count as usize, 0);
            coefficients(h.seed, &mut self.coefs);
            let mut data = p.payload.to_vec();
            // Subtract the sources before base from the history.
            for i in 0..(-start).max(0) {
                let seq = h.id.wrapping_add(i as u32);
                let Some((_, sym)) = self.history.iter().find(|(s, _)| *s == seq) else {
                    self.stats.redundant += 1;
                    return;
                };
                if data.len() < sym.len() {
                    data.resize(sym.len(), 0);
                }
                gf256::mul_acc(&mut data, sym, self.coefs[i as usize]);
            }
            let skip = (-start).max(0) as usize;
            let mut row = vec![0u8; self.solver.width()];
            let first = start.max(0) as usize;
            row[first..first + (h.count as usize - skip)].copy_from_slice(&self.coefs[skip..]);
            self.solver.insert(&row, &data)
        };
        if inserted.is_none() {
            self.stats.redundant += 1;
        }
        self.deliver_ready(&mut deliver);
    }

    fn deliver_ready(&mut self, deliver: &mut impl FnMut(Delivered<'_>)) {
        while let Some(sym) = self.solver.decoded(0) {
            let sym = sym.to_vec();
            match read_symbol(&sym) {
                Some(payload) => {
                    self.stats.delivered += 1;
                    deliver(Delivered { generation: 0, index: self.base, payload });
                }
                None => self.stats.malformed += 1,
            }
            self.remember(self.base, sym);
            self.solver.drop_front(1);
            self.base = self.base.wrapping_add(1);
        }
    }

    fn remember(&mut self, seq: u32, sym: Vec<u8>) {
        self.history.push_back((seq, sym));
        if self.history.len() > self.history_len {
            if let Some((_, old)) = self.history.pop_front() {
                self.spare = Some(old);
            }
        }
    }

    /// A buffer for the next symbol, reusing the one that left the history.
    fn recycle(&mut self) -> Vec<u8> {
        self.spare.take().unwrap_or_default()
    }

    /// Move `base` forward by `n`, delivering decoded sources and giving up
    /// the others.
    fn advance(&mut self, n: usize, deliver: &mut impl FnMut(Delivered<'_>)) {
        let target = self.base.wrapping_add(n as u32);
        loop {
            self.deliver_ready(deliver);
            let left = self.offset(target);
            if left <= 0 {
                break;
            }
            // Every sequence number below a packet's window is a real
            // source, even if nothing about it arrived: count it.
            if self.solver.rank() == 0 {
                // Nothing held: jump in one step (a long outage must not
                // cost one iteration per missing packet).
                self.stats.undecodable += left as u64;
                self.base = target;
                break;
            }
            self.stats.undecodable += 1;
            self.solver.drop_front(1);
            self.base = self.base.wrapping_add(1);
        }
        if self.offset(self.horizon) < 0 {
            self.horizon = self.base;
        }
    }

    /// If nothing arrived for `timeout_ns`, give up everything pending up
    /// to the highest sequence number seen.
    pub fn expire(&mut self, now_ns: u64, timeout_ns: u64, mut deliver: impl FnMut(Delivered<'_>)) {
        if !self.started || now_ns.saturating_sub(self.last_ns) < timeout_ns {
            return;
        }
        let pending = self.offset(self.horizon).max(0) as usize;
        self.advance(pending, &mut deliver);
    }
}

/// The state of a [`SlidingDecoder`]: its span (checked on restore), the
/// pending range, the equations over it and the recently delivered symbols.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlidingDecoderSnapshot {
    pub span: usize,
    /// Whether a packet has set the start of the stream yet.
    pub started: bool,
    /// Sequence number of the next source to deliver.
    pub base: u32,
    /// Highest sequence number + 1 known to exist.
    pub horizon: u32,
    /// Equations over `base..base + span`.
    pub solver: SolverSnapshot,
    /// The last delivered symbols (sequence number, symbol), oldest first.
    pub history: Vec<(u32, Vec<u8>)>,
    /// When the last packet arrived.
    pub last_ns: u64,
    pub stats: DecoderStats,
}

impl SlidingDecoder {
    /// Snapshot the state (not the kernel or scratch buffers).
    pub fn snapshot(&self) -> SlidingDecoderSnapshot {
        SlidingDecoderSnapshot {
            span: self.solver.width(),
            started: self.started,
            base: self.base,
            horizon: self.horizon,
            solver: self.solver.snapshot(),
            history: self.history.iter().cloned().collect(),
            last_ns: self.last_ns,
            stats: self.stats,
        }
    }

    /// A new decoder of this one's span and kernel, in the state of `snap`.
    /// Refused if `snap` was taken under another span or does not fit it;
    /// `self` is untouched either way.
    pub fn restored(&self, snap: &SlidingDecoderSnapshot) -> Result<SlidingDecoder, SnapshotError> {
        let span = self.solver.width();
        same("span", snap.span, span)?;
        same("solver width", snap.solver.width, span)?;
        snap.stats.check()?;
        let solver = Solver::from_snapshot(&snap.solver, self.solver.kernel())?;
        if snap.history.len() > self.history_len {
            return Err(SnapshotError::Invalid(format!(
                "{} delivered symbols remembered, at most {}",
                snap.history.len(),
                self.history_len
            )));
        }
        for (i, (_, sym)) in snap.history.iter().enumerate() {
            symbol_len(&format!("history[{i}]"), sym)?;
        }
        if !snap.started
            && (snap.base != 0
                || snap.horizon != 0
                || solver.rank() != 0
                || !snap.history.is_empty())
        {
            return Err(SnapshotError::Invalid(
                "state of a decoder that has not started, yet it holds data".into(),
            ));
        }
        let ahead = snap.horizon.wrapping_sub(snap.base) as i32 as i64;
        if !(0..=span as i64).contains(&ahead) {
            return Err(SnapshotError::Invalid(format!(
                "horizon {} is {ahead} from base {}, outside 0..={span}",
                snap.horizon, snap.base
            )));
        }
        Ok(SlidingDecoder {
            base: snap.base,
            started: snap.started,
            horizon: snap.horizon,
            solver,
            history: snap.history.iter().cloned().collect(),
            history_len: self.history_len,
            spare: None,
            last_ns: snap.last_ns,
            stats: snap.stats,
            coefs: Vec::new(),
        })
    }

    /// [`SlidingDecoder::restored`] in place.
    pub fn restore(&mut self, snap: &SlidingDecoderSnapshot) -> Result<(), SnapshotError> {
        *self = self.restored(snap)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BlockConfig, BlockEncoder};
    use crate::header::{Header, HEADER_LEN};
    use crate::sliding::{SlidingConfig, SlidingEncoder};
    use proptest::prelude::*;

    fn packet(h: &Header, sym: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; HEADER_LEN];
        h.emit(&mut v);
        v.extend_from_slice(sym);
        v
    }

    /// Encode `payloads` with the block code; returns the packets in send order.
    fn block_packets(cfg: BlockConfig, payloads: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut enc = BlockEncoder::new(cfg).unwrap();
        let mut out = Vec::new();
        for p in payloads {
            let h = enc.push_source(p).unwrap();
            out.push(packet(&h, p));
            if enc.is_full() {
                enc.finish(|h, s| out.push(packet(h, s)));
            }
        }
        enc.finish(|h, s| out.push(packet(h, s)));
        out
    }

    fn payloads(n: usize, seed: u64) -> Vec<Vec<u8>> {
        let mut st = seed;
        (0..n)
            .map(|i| {
                let len = (crate::header::splitmix64(&mut st) % 300) as usize;
                (0..len).map(|j| (i * 7 + j) as u8).collect()
            })
            .collect()
    }

    #[test]
    fn solver_recovers_from_coded_only() {
        let srcs = [b"one".to_vec(), b"second".to_vec(), b"3".to_vec()];
        let mut s = Solver::new(3, Kernel::best());
        for seed in [5u32, 6, 7] {
            let mut c = [0u8; 3];
            coefficients(seed, &mut c);
            let mut d = vec![0u8; 6];
            for (x, &ci) in srcs.iter().zip(&c) {
                gf256::mul_acc(&mut d[..x.len()], x, ci);
            }
            s.insert(&c, &d);
        }
        assert_eq!(s.rank(), 3);
        for (i, x) in srcs.iter().enumerate() {
            assert_eq!(&s.decoded(i).unwrap()[..x.len()], &x[..]);
        }
        assert!(s.insert(&[1, 2, 3], &[0; 6]).is_none(), "full rank: nothing is innovative");
    }

    #[test]
    fn block_in_order_without_loss_and_ignores_surplus() {
        let src = payloads(70, 1);
        let pkts =
            block_packets(BlockConfig { generation_size: 32, redundancy: 0.25, seed: 3 }, &src);
        let mut dec = BlockDecoder::new(4);
        let mut got = Vec::new();
        for p in &pkts {
            dec.receive(&Header::parse(p).unwrap(), 0, |d| got.push(d.payload.to_vec()));
        }
        assert_eq!(got, src);
        assert_eq!(dec.stats().delivered, 70);
        assert_eq!(dec.stats().redundant, 8 + 8 + 2);
        assert_eq!(dec.in_flight(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Any loss pattern: every delivered payload is correct and in
        /// order within its generation; delivered + undecodable covers every
        /// source once; a generation that lost at most its coded count is
        /// fully recovered unless the random matrix was singular (rare).
        #[test]
        fn block_decoder_under_loss_and_reordering(
            n in 1usize..100, k in 1usize..40, seed: u64, loss in 0u32..40, shuffle: bool
        ) {
            let src = payloads(n, seed);
            let cfg = BlockConfig { generation_size: k, redundancy: 0.25, seed };
            let mut pkts = block_packets(cfg, &src);
            let mut st = seed ^ 0xabc;
            pkts.retain(|_| (crate::header::splitmix64(&mut st) % 100) as u32 >= loss);
            if shuffle {
                for i in (1..pkts.len()).rev() {
                    let j = (crate::header::splitmix64(&mut st) % (i as u64 + 1)) as usize;
                    pkts.swap(i, j);
                }
            }
            let mut dec = BlockDecoder::new(1000);
            let mut got = Vec::new();
            // Per generation seen: its size as the decoder learns it (from a
            // coded packet, else the configured k), and the coefficient rows
            // received, for an independent solvability oracle.
            let mut sizes = std::collections::BTreeMap::new();
            let mut rows: std::collections::BTreeMap<u32, Vec<Vec<u8>>> = Default::default();
            for p in &pkts {
                let parsed = Header::parse(p).unwrap();
                let h = parsed.header;
                let e = sizes.entry(h.id).or_insert(k);
                let mut row = vec![0u8; k];
                if h.kind == Kind::BlockSource {
                    row[h.index as usize] = 1;
                } else {
                    *e = h.count as usize;
                    coefficients(h.seed, &mut row[..h.count as usize]);
                }
                rows.entry(h.id).or_default().push(row);
                dec.receive(&parsed, 0, |d| got.push((d.generation, d.index, d.payload.to_vec())));
            }
            dec.expire(10, 1, |d| got.push((d.generation, d.index, d.payload.to_vec())));
            for (g, i, p) in &got {
                prop_assert_eq!(p, &src[*g as usize * k + *i as usize]);
            }
            let mut seen: Vec<_> = got.iter().map(|(g, i, _)| (*g, *i)).collect();
            seen.sort();
            seen.dedup();
            prop_assert_eq!(seen.len(), got.len());
            // Every source of every generation seen is delivered or counted.
            let st = dec.stats();
            prop_assert_eq!(st.delivered + st.undecodable, sizes.values().sum::<usize>() as u64);
            if loss == 0 {
                prop_assert_eq!(st.delivered, n as u64);
            }
            // Oracle: a source is recovered exactly when its unit vector is
            // in the span of the received coefficient rows.
            for (g, r) in rows {
                let size = sizes[&g];
                let solvable = solvable_columns(r, size);
                let mut delivered: Vec<usize> =
                    got.iter().filter(|(gg, _, _)| *gg == g).map(|(_, i, _)| *i as usize).collect();
                delivered.sort();
                prop_assert_eq!(delivered, solvable, "generation {}", g);
            }
        }
    }

    /// The columns (< size) whose unit vector lies in the row space of
    /// `rows`: naive Gauss-Jordan over GF(2^8), independent of `Solver`.
    fn solvable_columns(mut rows: Vec<Vec<u8>>, size: usize) -> Vec<usize> {
        let mut r = 0;
        let mut pivots = Vec::new();
        for col in 0..size {
            let Some(p) = (r..rows.len()).find(|&i| rows[i][col] != 0) else { continue };
            rows.swap(r, p);
            let inv = gf256::inv(rows[r][col]).unwrap();
            for x in rows[r].iter_mut() {
                *x = gf256::mul(*x, inv);
            }
            let pivot_row = rows[r].clone();
            for (i, row) in rows.iter_mut().enumerate() {
                let f = row[col];
                if i != r && f != 0 {
                    for (x, &p) in row.iter_mut().zip(&pivot_row) {
                        *x ^= gf256::mul(f, p);
                    }
                }
            }
            pivots.push((col, r));
            r += 1;
        }
        pivots
            .into_iter()
            .filter(|&(col, row)| (0..size).all(|j| j == col || rows[row][j] == 0))
            .map(|(col, _)| col)
            .collect()
    }

    #[test]
    fn block_recovers_lost_sources_in_order() {
        let src = payloads(32, 5);
        let pkts = block_packets(BlockConfig::default(), &src);
        // Lose 8 sources (the full redundancy), spread over the generation.
        let lost = [0usize, 3, 4, 10, 17, 25, 30, 31];
        let mut dec = BlockDecoder::new(4);
        let mut got = Vec::new();
        for (i, p) in pkts.iter().enumerate() {
            if lost.contains(&i) {
                continue;
            }
            dec.receive(&Header::parse(p).unwrap(), 0, |d| got.push(d.index));
        }
        assert_eq!(got, (0..32).collect::<Vec<u32>>());
        assert_eq!(dec.stats().undecodable, 0);
    }

    #[test]
    fn block_eviction_counts_exactly() {
        let src = payloads(64, 9);
        let pkts =
            block_packets(BlockConfig { generation_size: 32, redundancy: 0.25, seed: 1 }, &src);
        // Generation 0 loses 10 sources: 2 more than its 8 coded packets.
        let mut dec = BlockDecoder::new(1);
        let mut n = 0;
        for (i, p) in pkts.iter().enumerate() {
            if i < 10 {
                continue;
            }
            dec.receive(&Header::parse(p).unwrap(), 0, |_| n += 1);
        }
        // Opening generation 1 evicted generation 0.
        let st = dec.stats();
        assert_eq!(st.delivered + st.undecodable, 64);
        assert_eq!(st.delivered, n);
        assert!(st.undecodable >= 2 && st.undecodable <= 10, "{st:?}");
    }

    fn sliding_packets(cfg: SlidingConfig, payloads: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut enc = SlidingEncoder::new(cfg).unwrap();
        let mut out = Vec::new();
        for p in payloads {
            let mut coded = Vec::new();
            let h = enc.push_source(p, |h, s| coded.push(packet(h, s))).unwrap();
            out.push(packet(&h, p));
            out.extend(coded);
        }
        out
    }

    proptest! {
        /// Arbitrary headers and payloads (valid kinds, any ids, counts,
        /// seeds, coefficients) never panic either decoder, and delivered
        /// sources stay within what was claimed.
        #[test]
        fn decoders_survive_arbitrary_packets(
            pkts in proptest::collection::vec(
                (0u8..5, 1u8..=255, any::<u32>(), any::<u16>(), any::<u32>(),
                 proptest::collection::vec(any::<u8>(), 0..300)),
                0..60),
            small_ids: bool,
        ) {
            let mut block = BlockDecoder::new(3);
            let mut sliding = SlidingDecoder::new(16);
            for (kind, count, id, index, seed, body) in pkts {
                let id = if small_ids { id % 40 } else { id };
                let mut v = vec![0u8; HEADER_LEN];
                v[0] = 0x10 | kind;
                v[1] = count;
                v[2..6].copy_from_slice(&id.to_be_bytes());
                v[6..8].copy_from_slice(&(index % count as u16).to_be_bytes());
                v[8..12].copy_from_slice(&seed.to_be_bytes());
                v.extend_from_slice(&body);
                let Ok(p) = Header::parse(&v) else { continue };
                block.receive(&p, 0, |d| assert!(d.payload.len() <= 300));
                sliding.receive(&p, 0, |d| assert!(d.payload.len() <= 300));
            }
            block.expire(1, 0, |_| {});
            sliding.expire(1, 0, |_| {});
        }
    }

    #[test]
    fn sliding_refuses_a_window_wider_than_its_span_without_giving_up_sources() {
        let mut dec = SlidingDecoder::new(16);
        let wide = Header { kind: Kind::SlidingCoded, count: 40, id: 0, index: 0, seed: 7 };
        let v = packet(&wide, &[1, 2, 3]);
        dec.receive(&Header::parse(&v).unwrap(), 0, |_| panic!("nothing to deliver"));
        let st = dec.stats();
        assert_eq!((st.undecodable, st.redundant), (0, 1), "{st:?}");
        // The stream still starts at 0: source 0 is delivered at once.
        let src = Header { kind: Kind::SlidingSource, count: 1, id: 0, index: 0, seed: 0 };
        let v = packet(&src, &[9]);
        let mut got = vec![];
        dec.receive(&Header::parse(&v).unwrap(), 0, |d| got.push(d.payload.to_vec()));
        assert_eq!(got, vec![vec![9]]);
        assert_eq!(dec.stats().undecodable, 0);
    }

    #[test]
    fn sliding_recovers_isolated_losses_in_order() {
        let src = payloads(200, 2);
        let pkts = sliding_packets(SlidingConfig { window: 8, redundancy: 0.25, seed: 2 }, &src);
        let mut dec = SlidingDecoder::new(64);
        let mut got = Vec::new();
        let mut kept = 0;
        for (i, p) in pkts.iter().enumerate() {
            // Lose one source in every ten packets.
            let parsed = Header::parse(p).unwrap();
            if i % 10 == 3 && parsed.header.kind == Kind::SlidingSource {
                continue;
            }
            kept += 1;
            dec.receive(&parsed, 0, |d| got.push((d.index, d.payload.to_vec())));
        }
        assert!(kept < pkts.len());
        dec.expire(100, 1, |d| got.push((d.index, d.payload.to_vec())));
        let idx: Vec<u32> = got.iter().map(|g| g.0).collect();
        assert_eq!(idx, (0..200).collect::<Vec<u32>>());
        for (i, p) in &got {
            assert_eq!(p, &src[*i as usize]);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn sliding_decoder_is_correct_under_any_loss(
            n in 1usize..150, w in 1usize..12, seed: u64, loss in 0u32..50
        ) {
            let src = payloads(n, seed);
            let pkts = sliding_packets(SlidingConfig { window: w, redundancy: 0.5, seed }, &src);
            let mut st = seed ^ 0x55;
            let mut dec = SlidingDecoder::new(4 * w);
            let mut got = Vec::new();
            let mut last_seq_seen = None;
            for p in &pkts {
                if (crate::header::splitmix64(&mut st) % 100) < loss as u64 {
                    continue;
                }
                let parsed = Header::parse(p).unwrap();
                let h = parsed.header;
                let end = h.id + if h.kind == Kind::SlidingSource { 1 } else { h.count as u32 };
                last_seq_seen = Some(last_seq_seen.unwrap_or(0).max(end));
                dec.receive(&parsed, 0, |d| got.push((d.index, d.payload.to_vec())));
            }
            dec.expire(100, 1, |d| got.push((d.index, d.payload.to_vec())));
            let mut prev = None;
            for (i, p) in &got {
                prop_assert_eq!(p, &src[*i as usize]);
                prop_assert!(prev.is_none_or(|q| q < *i), "in order");
                prev = Some(*i);
            }
            let s = dec.stats();
            prop_assert_eq!(s.delivered as usize, got.len());
            // Every sequence number up to the end of the last window seen is
            // either delivered or counted undecodable, exactly once.
            prop_assert_eq!(s.delivered + s.undecodable, last_seq_seen.unwrap_or(0) as u64);
            if loss == 0 {
                prop_assert_eq!(got.len(), n);
            }
        }
    }

    /// Decoding split at `split` with a snapshot/restore in between
    /// delivers what one decoder delivers, and ends in the same state.
    #[test]
    fn restored_decoders_continue_exactly() {
        let src = payloads(40, 3);
        let block =
            block_packets(BlockConfig { generation_size: 8, redundancy: 0.5, seed: 2 }, &src);
        let sliding = sliding_packets(SlidingConfig { window: 4, redundancy: 0.5, seed: 2 }, &src);
        // Lose every fourth packet.
        let lossy = |v: &[Vec<u8>]| -> Vec<Vec<u8>> {
            v.iter().enumerate().filter(|(i, _)| i % 4 != 1).map(|(_, p)| p.clone()).collect()
        };
        let (block, sliding) = (lossy(&block), lossy(&sliding));
        for split in [0, 1, 7, 20, block.len().min(sliding.len())] {
            let run_block = |dec: &mut BlockDecoder, pkts: &[Vec<u8>], got: &mut Vec<Vec<u8>>| {
                for (i, p) in pkts.iter().enumerate() {
                    dec.receive(&Header::parse(p).unwrap(), i as u64, |d| {
                        got.push(d.payload.to_vec())
                    });
                }
            };
            let (mut a, mut b) = (BlockDecoder::new(2), BlockDecoder::new(2));
            let (mut want, mut got) = (vec![], vec![]);
            run_block(&mut a, &block, &mut want);
            run_block(&mut b, &block[..split], &mut got);
            let mut c = BlockDecoder::new(2);
            c.restore(&b.snapshot()).unwrap();
            run_block(&mut c, &block[split..], &mut got);
            assert_eq!(got, want, "block, split {split}");
            assert_eq!(c.snapshot().generations.len(), a.snapshot().generations.len());
            assert_eq!(c.stats(), a.stats());

            let run_sliding = |dec: &mut SlidingDecoder,
                               pkts: &[Vec<u8>],
                               got: &mut Vec<Vec<u8>>| {
                for p in pkts {
                    dec.receive(&Header::parse(p).unwrap(), 0, |d| got.push(d.payload.to_vec()));
                }
            };
            let (mut a, mut b) = (SlidingDecoder::new(16), SlidingDecoder::new(16));
            let (mut want, mut got) = (vec![], vec![]);
            run_sliding(&mut a, &sliding, &mut want);
            run_sliding(&mut b, &sliding[..split], &mut got);
            let mut c = SlidingDecoder::new(16);
            c.restore(&b.snapshot()).unwrap();
            run_sliding(&mut c, &sliding[split..], &mut got);
            assert_eq!(got, want, "sliding, split {split}");
            assert_eq!(c.snapshot(), a.snapshot());
        }
    }

    #[test]
    fn restore_refuses_other_bounds_and_broken_equations() {
        let src = payloads(6, 1);
        let pkts =
            block_packets(BlockConfig { generation_size: 4, redundancy: 0.5, seed: 1 }, &src);
        let mut dec = BlockDecoder::new(3);
        // Sources 0 and 2 lost, one coded packet in: generation 0 pending.
        for p in [&pkts[1], &pkts[3], &pkts[4]] {
            dec.receive(&Header::parse(p).unwrap(), 0, |_| {});
        }
        let snap = dec.snapshot();
        assert_eq!(snap.generations.len(), 1);
        let e = BlockDecoder::new(4).restore(&snap).unwrap_err().to_string();
        assert!(e.contains("max_generations 3"), "{e}");
        let mut bad = snap.clone();
        bad.generations[0].solver.rows[0].coefs[0] = 2;
        let e = dec.restore(&bad).unwrap_err().to_string();
        assert!(e.contains("generation 0") && e.contains("echelon"), "{e}");
        let mut bad = snap.clone();
        bad.generations[0].solver.rows[1].coefs.push(0);
        assert!(dec.restore(&bad).unwrap_err().to_string().contains("coefficients"));
        let mut bad = snap.clone();
        bad.finished = vec![0];
        assert!(dec.restore(&bad).unwrap_err().to_string().contains("both finished"));
        let mut bad = snap.clone();
        bad.generations[0].next = 4;
        assert!(dec.restore(&bad).unwrap_err().to_string().contains("next 4"));
        assert_eq!(dec.snapshot(), snap, "refused restores change nothing");

        let mut sliding = SlidingDecoder::new(8);
        let e = sliding.restore(&SlidingDecoder::new(9).snapshot()).unwrap_err().to_string();
        assert!(e.contains("span 9"), "{e}");
        let mut bad = sliding.snapshot();
        bad.started = true;
        bad.horizon = 100;
        assert!(sliding.restore(&bad).unwrap_err().to_string().contains("horizon"));
        bad.horizon = 0;
        bad.history = vec![(0, vec![0; 3]); 9];
        assert!(sliding.restore(&bad).unwrap_err().to_string().contains("at most 8"));
    }
}
