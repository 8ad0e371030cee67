//! Streaming the state of a running NF: snapshot chunks and statelets.
//!
//! Live migration (SliM, seed `003` §4.2 and §4.5) moves an NF's per-flow
//! state to another instance while the source keeps processing. braid
//! streams it as **one ordered sequence of [`Statelet`]s**, each saying
//! "flows `keys` now hold exactly these entries" (an entry absent from
//! `state` means the flow holds nothing: a tombstone):
//!
//! 1. *Freeze* ([`FlowStream::record_changes`]`(true)`): from now on the
//!    NF's table logs every flow whose entry is created, touched or
//!    removed (SliM's `announce`; O(1) per operation, one branch when
//!    off).
//! 2. *Snapshot*: a cursor walks the table a chunk at a time between
//!    batches ([`FlowStream::export_from`]); each chunk is a statelet of
//!    the entries it passed.
//! 3. *Statelets*: after each batch the runtime takes the logged flows
//!    ([`FlowStream::take_changes`]), deduplicates them and exports their
//!    current entries ([`FlowStream::export_flows`]).
//!
//! The destination installs the statelets in the order they were made
//! ([`FlowStream::install`], SliM's `install`). Each statelet carries the
//! source's values at the moment it was made, and every change after the
//! freeze is followed by a statelet made after it, so once the source has
//! stopped (drain marker seen) and its last changes are sent, the
//! destination holds exactly what the source holds, flow by flow. The
//! snapshot chunks need not be a consistent picture of one instant (an
//! entry can change between two chunks): what a chunk says late about a
//! flow is newer than anything said before it, and older than what any
//! later statelet says. That is why a chunk and a statelet go down the
//! same ordered stream, and why the freeze costs nothing: no copy of the
//! table, no second version per entry, no pause.
//!
//! Time-dependent state carries its own time: a statelet holds the
//! NF-local clock at export and the entries' times in that clock;
//! installing never reads a clock, it makes the destination's NF clock
//! continue from the source's ([`crate::conntrack::StateClock`]).

use std::collections::HashSet;
use std::hash::Hash;

use crate::{NfState, PartitionKey, StateError};

/// The state of some flows of an NF at one moment: after installing it the
/// flows `keys` hold exactly the entries in `state` (none: the flow holds
/// nothing).
///
/// On the wire it goes as a [`CompactStatelet`] ([`Statelet::compact`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Statelet {
    /// Every flow this statelet sets (the keys of the entries in `state`
    /// and of the flows it clears).
    pub keys: Vec<PartitionKey>,
    /// The entries, in the NF's scoped export format
    /// ([`crate::NetworkFunction::export_scoped`]), binary encoding.
    pub state: NfState,
}

impl Statelet {
    /// The set of flows this statelet names, to check its entries against
    /// in O(1) each.
    pub fn key_set(&self) -> HashSet<PartitionKey> {
        self.keys.iter().copied().collect()
    }

    /// The flows this statelet sets that hold no entry in it (flows it
    /// clears), in `keys` order. Refuses a statelet whose entries do not
    /// decode or include a flow it does not name.
    pub fn cleared(&self) -> Result<Vec<PartitionKey>, StateError> {
        let held: HashSet<PartitionKey> = entry_keys(&self.state)?.into_iter().collect();
        let named = self.key_set();
        if let Some(k) = held.iter().find(|k| !named.contains(k)) {
            return Err(StateError::Corrupt(format!(
                "statelet has an entry of flow {k:?}, which it does not name"
            )));
        }
        Ok(self.keys.iter().filter(|k| !held.contains(k)).copied().collect())
    }

    /// This statelet without its entries' keys. Refuses one whose entries
    /// do not decode or include a flow it does not name.
    pub fn compact(self) -> Result<CompactStatelet, StateError> {
        let cleared = self.cleared()?;
        Ok(CompactStatelet { state: self.state, cleared })
    }
}

/// The keys of the entries in a statelet's state, in entry order: what a
/// reader of a serialized [`Statelet`] derives instead of reading them.
/// Refuses the state of an NF kind without per-flow statelets (a
/// [`FlowStream`]) and a state that does not decode.
pub fn entry_keys(state: &NfState) -> Result<Vec<PartitionKey>, StateError> {
    // The NF kinds that implement `FlowStream`: each reads its own format.
    match state.kind.as_str() {
        k if k == crate::nat::SPEC.name || k == crate::firewall::SPEC.name => {
            crate::conntrack::ConnSnapshot::entry_keys(state, k)
        }
        k if k == crate::loadbalancer::SPEC.name => crate::loadbalancer::entry_keys(state),
        k if k == crate::l2switch::SPEC.name => crate::l2switch::entry_keys(state),
        other => Err(StateError::Corrupt(format!(
            "a statelet of a `{other}` NF: only nat, firewall, loadbalancer and l2switch stream per-flow statelets"
        ))),
    }
}

/// A [`Statelet`] as the migration protocol sends it: its entries, and
/// only the flows it clears ([`Statelet::compact`]). Every entry holds its
/// own flow's key, so the reader derives the rest ([`entry_keys`],
/// [`CompactStatelet::expand`]); snapshot chunks, most of a migration's
/// bytes, then carry no keys at all (a NAT connection is ~34 bytes, its
/// key another ~16).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CompactStatelet {
    pub state: NfState,
    /// The flows the statelet sets that hold no entry in it.
    pub cleared: Vec<PartitionKey>,
}

impl CompactStatelet {
    /// The statelet again: the entries' keys (in entry order), then the
    /// cleared flows. Refuses entries that do not decode, the state of an
    /// NF kind without statelets, and a cleared flow that holds an entry.
    pub fn expand(self) -> Result<Statelet, StateError> {
        let mut keys = entry_keys(&self.state)?;
        let held: HashSet<PartitionKey> = keys.iter().copied().collect();
        if let Some(k) = self.cleared.iter().find(|k| held.contains(k)) {
            return Err(StateError::Corrupt(format!(
                "statelet clears flow {k:?} and also holds an entry for it"
            )));
        }
        keys.extend(self.cleared);
        Ok(Statelet { keys, state: self.state })
    }
}

/// Per-flow state that can be streamed while the NF keeps processing (see
/// the module documentation). NFs with per-flow state implement it and
/// return it from [`crate::NetworkFunction::flow_stream`]. All calls are
/// made between batches, on the thread that runs the NF.
pub trait FlowStream {
    /// Start recording which flows change (`true`) or stop and forget the
    /// record (`false`, the thaw). Can be repeated.
    fn record_changes(&mut self, on: bool);

    /// Move the flows recorded since the last call into `out`, each once.
    /// Recording costs O(1) per change and holds each changed flow once,
    /// so leaving changes untaken for a while is cheap and bounded by the
    /// table size.
    fn take_changes(&mut self, out: &mut Vec<PartitionKey>);

    /// Number of flows recorded and not yet taken.
    fn changes_waiting(&self) -> usize;

    /// Up to `max` entries from position `*cursor` on, advancing the
    /// cursor; `None` once the cursor is past the end. Positions stay
    /// valid while the table changes (what changes behind the cursor is
    /// in the change record).
    fn export_from(&self, cursor: &mut usize, max: usize) -> Option<Statelet>;

    /// The current entries of the flows `keys` (deduplicated by the
    /// caller); flows holding nothing are tombstones.
    fn export_flows(&self, keys: &[PartitionKey]) -> Statelet;

    /// Set the flows of `statelet` to its entries: remove what is held for
    /// its keys, then add its entries. Refuses a statelet of another NF
    /// kind or version, a corrupt one, or entries that do not fit this
    /// instance's configuration or capacity; a refused statelet changes
    /// nothing.
    fn install(&mut self, statelet: &Statelet) -> Result<(), StateError>;

    /// After the last statelet: rebuild what the NF derives from its
    /// entries (NAT's free port pools) and check the whole is consistent.
    fn finish_install(&mut self) -> Result<(), StateError> {
        Ok(())
    }

    /// True if processing the same packets from the same state gives the
    /// same state on another instance (what the duplication baseline
    /// relies on). A NAT keys its port choice with a random secret unless
    /// `port_secret` is configured: false without it.
    fn replays_deterministically(&self) -> bool {
        true
    }

    /// The keys of every flow held now (one pass over the table).
    fn held_keys(&self, out: &mut Vec<PartitionKey>);

    /// Number of entries held.
    fn len(&self) -> usize;

    /// True if no entry is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The change record and snapshot walk of a table kept in a hash map
/// (`l2switch`, `loadbalancer`), in the map's own key type `K`. A hash
/// map's iteration order changes when it grows, so the walk goes over
/// the keys held at the freeze, copied once (keys only, not entries);
/// entries added after the freeze are in the change record anyway.
#[derive(Debug)]
pub struct MapStream<K> {
    changes: Option<HashSet<K>>,
    walk: Vec<K>,
}

impl<K> Default for MapStream<K> {
    fn default() -> Self {
        MapStream { changes: None, walk: Vec::new() }
    }
}

impl<K: Copy + Eq + Hash> MapStream<K> {
    /// Start recording (`keys`: those held now, for the walk), or stop
    /// and forget (`None`).
    pub fn set(&mut self, keys: Option<Vec<K>>) {
        match keys {
            Some(k) => {
                self.changes = Some(HashSet::new());
                self.walk = k;
            }
            None => {
                self.changes = None;
                self.walk = Vec::new();
            }
        }
    }

    /// Note that `key`'s entry changed (nothing when not recording).
    #[inline]
    pub fn note(&mut self, key: K) {
        if let Some(log) = &mut self.changes {
            log.insert(key);
        }
    }

    /// Move the recorded keys, converted, into `out`.
    pub fn take(&mut self, out: &mut Vec<PartitionKey>, to_key: impl Fn(K) -> PartitionKey) {
        if let Some(log) = &mut self.changes {
            out.extend(log.drain().map(to_key));
        }
    }

    /// Number of keys recorded and not yet taken.
    pub fn waiting(&self) -> usize {
        self.changes.as_ref().map_or(0, HashSet::len)
    }

    /// The next at most `max` keys of the walk from `*cursor`; `None` once
    /// past the end.
    pub fn walk(&self, cursor: &mut usize, max: usize) -> Option<&[K]> {
        if *cursor >= self.walk.len() {
            return None;
        }
        let end = (*cursor + max).min(self.walk.len());
        let keys = &self.walk[*cursor..end];
        *cursor = end;
        Some(keys)
    }
}

/// Sort and deduplicate a change record in place (the statelet of a batch
/// names each flow once, whatever the number of its packets).
pub fn dedup_keys(keys: &mut Vec<PartitionKey>) {
    keys.sort_unstable();
    keys.dedup();
}
