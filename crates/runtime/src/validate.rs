//! Checking a chain descriptor and reporting every problem with its file,
//! line, column and field path, and what would be accepted.
//!
//! The checks, in order: YAML syntax (stops there), the top-level fields,
//! each port, each NF's own fields, cross-NF rules (unique names, known
//! types, placement allowed for the type), then each NF's parameters by
//! building the NF. Every NF is checked even after one fails.

use braid_nf::{NfSpec, Placement, REGISTRY};
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

use crate::descriptor::{
    ChainDescriptor, NfDecl, PlacementChoice, PortDecl, SchedDecl, WorkerMapping,
    DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE,
};
use crate::spans::{too_deep, Location, Spans};

/// Largest descriptor read or validated (16 MiB: a firewall of about
/// 200,000 one-line rules). `braid validate /dev/zero` stops here instead of
/// growing until memory runs out.
pub const MAX_DESCRIPTOR_BYTES: u64 = 16 << 20;

/// Deepest nesting of mappings and sequences in a descriptor, the document
/// itself being level 1 (the deepest built-in parameter is 6 levels down).
pub const MAX_NESTING: usize = 64;

/// One problem in a descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file name as given by the caller.
    pub file: String,
    /// Where, when known.
    pub location: Option<Location>,
    /// Field path (`nfs[2].params.routes[0].prefix`), empty for the whole
    /// document.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// What would be accepted, when there is more to say than the message.
    pub help: Option<String>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:", self.file)?;
        if let Some(l) = self.location {
            write!(f, "{l}:")?;
        }
        if !self.path.is_empty() {
            write!(f, " {}:", self.path)?;
        }
        write!(f, " {}", self.message)?;
        if let Some(h) = &self.help {
            write!(f, "\n    accepted: {h}")?;
        }
        Ok(())
    }
}

/// The outcome of [`validate_str`].
#[derive(Debug)]
pub struct Report {
    /// The parsed descriptor when there are no problems.
    pub descriptor: Option<ChainDescriptor>,
    /// Every problem found, in document order.
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Error from [`load`]: the file could not be read, or it has problems.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: larger than the limit of {limit} bytes for a descriptor")]
    TooLarge { path: String, limit: u64 },
    #[error("{path}: not UTF-8 text (at byte {at})")]
    NotText { path: String, at: usize },
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// Read descriptor `path` as text, refusing more than
/// [`MAX_DESCRIPTOR_BYTES`] without reading further (a device or a FIFO
/// has no size to check first).
pub fn read_descriptor(path: &std::path::Path) -> Result<String, LoadError> {
    use std::io::Read;
    let name = || path.display().to_string();
    let file =
        std::fs::File::open(path).map_err(|source| LoadError::Read { path: name(), source })?;
    let mut bytes = Vec::new();
    file.take(MAX_DESCRIPTOR_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| LoadError::Read { path: name(), source })?;
    if bytes.len() as u64 > MAX_DESCRIPTOR_BYTES {
        return Err(LoadError::TooLarge { path: name(), limit: MAX_DESCRIPTOR_BYTES });
    }
    String::from_utf8(bytes)
        .map_err(|e| LoadError::NotText { path: name(), at: e.utf8_error().valid_up_to() })
}

/// Read and validate a descriptor file; on success the descriptor is
/// ready for [`crate::Chain::from_descriptor`].
pub fn load(path: &std::path::Path) -> Result<ChainDescriptor, LoadError> {
    let text = read_descriptor(path)?;
    let report = validate_file_text(path, &text);
    match report.descriptor {
        Some(d) if report.problems.is_empty() => Ok(d),
        _ => Err(LoadError::Invalid(report.problems)),
    }
}

struct Checker<'a> {
    file: &'a str,
    /// The descriptor's folder: relative `path`s of pcap ports and
    /// `key_file`s are taken from there, not from the current directory.
    base: Option<&'a std::path::Path>,
    spans: Spans,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    /// `p` as seen from the descriptor's folder.
    fn resolve(&self, p: &std::path::Path) -> std::path::PathBuf {
        match self.base {
            Some(base) if p.is_relative() && !base.as_os_str().is_empty() => base.join(p),
            _ => p.to_path_buf(),
        }
    }
}

impl Checker<'_> {
    fn at_value(&mut self, path: &str, message: impl Into<String>, help: Option<String>) {
        let location = self.spans.value(path);
        self.push(location, path, message.into(), help);
    }

    fn at_key(&mut self, path: &str, message: impl Into<String>, help: Option<String>) {
        let location = self.spans.key(path);
        self.push(location, path, message.into(), help);
    }

    fn push(
        &mut self,
        location: Option<Location>,
        path: &str,
        message: String,
        help: Option<String>,
    ) {
        self.problems.push(Problem {
            file: self.file.to_string(),
            location,
            path: path.to_string(),
            message,
            help,
        });
    }

    /// Deserialize `value` found at `base` as `T`, reporting a failure at
    /// the offending field. Unknown fields are located at their key.
    fn parse<T: DeserializeOwned>(&mut self, base: &str, value: &Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                let rel = e.path().to_string();
                let mut path = match rel.as_str() {
                    "." => base.to_string(),
                    r if base.is_empty() => r.to_string(),
                    r if r.starts_with('[') => format!("{base}{r}"),
                    r => format!("{base}.{r}"),
                };
                let message = strip_location(&e.into_inner().to_string());
                if let Some(field) = unknown_field_name(&message) {
                    // Point at the key; the path may stop at the enclosing map.
                    if !path.ends_with(&field) {
                        path = if path.is_empty() { field } else { format!("{path}.{field}") };
                    }
                    self.at_key(&path, message, None);
                } else {
                    self.at_value(&path, message, None);
                }
                None
            }
        }
    }
}

/// serde_yaml_ng appends ` at line L column C` to some messages; we print
/// the location ourselves.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// `unknown field `x`, expected ...` → `x`.
fn unknown_field_name(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

const TOP_FIELDS: &[&str] = &["name", "batch_size", "ports", "nfs", "sched", "mapping"];

/// Validate descriptor `text` read from `file` (used only in messages);
/// relative paths in it are taken from the current directory.
pub fn validate_str(file: &str, text: &str) -> Report {
    validate(file, None, text)
}

/// Validate `text` read from file `path`: relative pcap port paths and
/// `key_file`s are taken from the descriptor's folder, and the returned
/// descriptor holds them resolved.
pub fn validate_file_text(path: &std::path::Path, text: &str) -> Report {
    validate(&path.display().to_string(), path.parent(), text)
}

fn validate(file: &str, base: Option<&std::path::Path>, text: &str) -> Report {
    let mut ck = Checker { file, base, spans: Spans::default(), problems: Vec::new() };
    // A UTF-8 byte-order mark is not YAML content (editors on Windows
    // write one); the parser took it for the start of a second document.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.len() as u64 > MAX_DESCRIPTOR_BYTES {
        ck.push(
            None,
            "",
            format!(
                "{} bytes is larger than the limit of {MAX_DESCRIPTOR_BYTES} bytes for a descriptor",
                text.len()
            ),
            None,
        );
        return Report { descriptor: None, problems: ck.problems };
    }
    // Before the full parse, whose cost grows with the square of the depth.
    if let Some(at) = too_deep(text, MAX_NESTING) {
        ck.push(
            Some(at),
            "",
            format!("nested deeper than {MAX_NESTING} levels of mappings and sequences"),
            None,
        );
        return Report { descriptor: None, problems: ck.problems };
    }
    let (root, too_large) = match parse_yaml(text) {
        Ok(parsed) => parsed,
        Err(e) => {
            let location = e.location().map(|l| Location { line: l.line(), column: l.column() });
            let tab = e.location().is_some_and(|l| text[l.index()..].starts_with('\t'));
            let message = if tab {
                "a tab where YAML needs spaces: indent with spaces only".to_string()
            } else {
                format!("YAML syntax: {}", strip_location(&e.to_string()))
            };
            ck.push(location, "", message, None);
            return Report { descriptor: None, problems: ck.problems };
        }
    };
    ck.spans = Spans::index(text);
    let Value::Mapping(top) = &root else {
        let what = if root.is_null() { "an empty document" } else { "not a mapping" };
        ck.at_value(
            "",
            format!("a chain descriptor is a mapping with `name` and `nfs`, this is {what}"),
            Some(format!("top-level fields: {}", TOP_FIELDS.join(", "))),
        );
        return Report { descriptor: None, problems: ck.problems };
    };

    for key in top.keys() {
        let k = key.as_str().map(str::to_string).unwrap_or_else(|| format!("{key:?}"));
        if !TOP_FIELDS.contains(&k.as_str()) {
            ck.at_key(
                &k,
                format!("unknown field `{k}`"),
                Some(format!("top-level fields: {}", TOP_FIELDS.join(", "))),
            );
        }
    }

    let name: Option<String> = match top.get("name") {
        None => {
            ck.at_value("", "missing field `name`", Some("the chain's name, a string".into()));
            None
        }
        Some(v) => ck.parse("name", v),
    };
    if name.as_deref().is_some_and(|n| n.trim().is_empty()) {
        ck.at_value("name", "the chain name is empty", None);
    }

    let batch_size = match top.get("batch_size") {
        None => Some(DEFAULT_BATCH_SIZE),
        Some(v) => match ck.parse::<usize>("batch_size", v) {
            Some(b) if (1..=MAX_BATCH_SIZE).contains(&b) => Some(b),
            Some(b) => {
                ck.at_value(
                    "batch_size",
                    format!("batch size {b} is out of range"),
                    Some(format!("1..={MAX_BATCH_SIZE} (default {DEFAULT_BATCH_SIZE})")),
                );
                None
            }
            None => None,
        },
    };

    let ports = check_ports(&mut ck, top.get("ports"));
    let online = crate::coordinator::online_cpus();
    // The chain's block as parsed (also when a value in it is refused:
    // the NFs are checked over it, its own problems reported once here).
    let parsed_sched = match top.get("sched") {
        None => Some(None),
        Some(v) if v.is_null() => Some(None),
        Some(v) => ck.parse::<SchedDecl>("sched", v).map(Some),
    };
    let sched = parsed_sched.clone().and_then(|s| {
        let problems =
            s.as_ref().map(|s| crate::coordinator::problems(s, &online)).unwrap_or_default();
        for (field, message) in &problems {
            ck.at_value(&format!("sched.{field}"), message.clone(), Some(SCHED_HELP.into()));
        }
        problems.is_empty().then_some(s)
    });
    let nfs = check_nfs(&mut ck, top.get("nfs"), parsed_sched.flatten().as_ref(), &online);
    let mapping = match top.get("mapping") {
        None => Some(None),
        Some(v) if v.is_null() => Some(None),
        Some(v) => match v.as_str() {
            Some("thread") => Some(Some(crate::descriptor::WorkerMapping::Thread)),
            Some("threads") => Some(Some(crate::descriptor::WorkerMapping::Threads)),
            Some("processes") => Some(Some(crate::descriptor::WorkerMapping::Processes)),
            _ => {
                ck.at_value(
                    "mapping",
                    format!(
                        "mapping {} is not one a live chain runs with",
                        serde_yaml_ng::to_string(v).unwrap_or_default().trim()
                    ),
                    Some("thread (every NF on one worker, the default), threads (a worker per NF) or processes (a supervised process per NF)".into()),
                );
                None
            }
        },
    };

    let nfs = match (nfs, &mapping) {
        (Some(nfs), Some(m)) if !check_workers(&mut ck, &nfs, *m) => None,
        (nfs, _) => nfs,
    };

    // An integer too large for 64 bits was replaced for the parse (see
    // `parse_yaml`): report it, and not what the stand-in caused there.
    ck.problems.retain(|p| !too_large.iter().any(|(at, _)| p.location == Some(*at)));
    for (at, number) in too_large {
        let path = ck.spans.path_at(at).unwrap_or_default();
        ck.push(Some(at), &path, format!("integer {number} does not fit in 64 bits"), None);
    }
    let descriptor = match (name, batch_size, ports, nfs, sched, mapping) {
        (Some(name), Some(batch_size), Some(ports), Some(nfs), Some(sched), Some(mapping))
            if ck.problems.is_empty() =>
        {
            Some(ChainDescriptor { name, batch_size, ports, nfs, sched, mapping })
        }
        _ => None,
    };
    ck.problems.sort_by_key(|p| p.location);
    Report { descriptor, problems: ck.problems }
}

/// Parse `text` as YAML. An integer that does not fit in 64 bits fails the
/// whole parse and would hide every other problem, so each one is replaced
/// by a plain string of the same length (locations stay exact) and the
/// parse retried; returns where those were and what they said.
fn parse_yaml(text: &str) -> Result<(Value, Vec<(Location, String)>), serde_yaml_ng::Error> {
    let mut text = std::borrow::Cow::Borrowed(text);
    let mut too_large = Vec::new();
    loop {
        let e = match serde_yaml_ng::from_str(&text) {
            Ok(v) => return Ok((v, too_large)),
            Err(e) => e,
        };
        let msg = e.to_string();
        let overflow = msg.contains("as u128") || msg.contains("as i128");
        let Some(l) = e.location().filter(|_| overflow && too_large.len() < 100) else {
            return Err(e);
        };
        let start = l.index();
        let len = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '_')))
            .unwrap_or(text.len() - start);
        if len == 0 {
            return Err(e);
        }
        too_large.push((
            Location { line: l.line(), column: l.column() },
            text[start..start + len].to_string(),
        ));
        let mut t = text.into_owned();
        t.replace_range(start..start + len, &"x".repeat(len));
        text = std::borrow::Cow::Owned(t);
    }
}

fn check_ports(
    ck: &mut Checker<'_>,
    value: Option<&Value>,
) -> Option<std::collections::BTreeMap<String, PortDecl>> {
    let mut ports = std::collections::BTreeMap::new();
    let Some(value) = value else { return Some(ports) };
    if value.is_null() {
        return Some(ports);
    }
    let Value::Mapping(map) = value else {
        ck.at_value(
            "ports",
            "`ports` must be a mapping from port name to port",
            Some("e.g. `ports: { in: { kind: pcap, path: in.pcap } }`".into()),
        );
        return None;
    };
    let mut ok = true;
    let kinds = PortDecl::KINDS.join(", ");
    for (key, v) in map {
        let Some(name) = key.as_str() else {
            ck.at_value("ports", format!("port names are strings, not {key:?}"), None);
            ok = false;
            continue;
        };
        let path = format!("ports.{name}");
        if v.get("kind").is_none() {
            ck.at_value(&path, "missing field `kind`", Some(format!("kind: one of {kinds}")));
            ok = false;
            continue;
        }
        match ck.parse::<PortDecl>(&path, v) {
            Some(mut p) => {
                if let PortDecl::Pcap(pcap) = &mut p {
                    pcap.path = ck.resolve(&pcap.path);
                }
                if let PortDecl::Memory(m) = &p {
                    if !(60..=1514).contains(&m.frame_size) {
                        ck.at_value(
                            &format!("{path}.frame_size"),
                            format!("frame size {} is out of range", m.frame_size),
                            Some("60..=1514 bytes (frames without FCS)".into()),
                        );
                        ok = false;
                    }
                    if m.flows == 0 {
                        ck.at_value(&format!("{path}.flows"), "need at least one flow", None);
                        ok = false;
                    }
                }
                ports.insert(name.to_string(), p);
            }
            None => ok = false,
        }
    }
    ok.then_some(ports)
}

/// Where an NF can be placed, given its spec.
fn placement_allowed(choice: PlacementChoice, spec: &NfSpec) -> bool {
    match choice {
        PlacementChoice::Auto => true,
        PlacementChoice::Kernel => spec.placements.contains(&Placement::Kernel),
        PlacementChoice::User => spec.placements.contains(&Placement::User),
    }
}

/// What a `sched` block accepts, for error messages.
const SCHED_HELP: &str = "sched: { policy: other|batch|idle|fifo|rr, priority: 1..=99 (fifo, rr), nice: -20..=19 (other, batch, idle), cpus: [online CPU numbers], batch_size: 1..=1024, idle: busy|poll|sleep, adapt: true|false, slice_us: 100..=100000 (other, batch) }";

/// The problems of NF `path`'s `sched` over the chain's (`chain`), each
/// located at the NF's field when the NF sets it, else at its `sched`
/// block; a problem of the chain's block alone was reported there.
fn check_nf_sched(
    ck: &mut Checker<'_>,
    path: &str,
    nf: &SchedDecl,
    chain: Option<&SchedDecl>,
    online: &[usize],
) -> bool {
    use crate::coordinator::problems;
    let chain = chain.cloned().unwrap_or_default();
    let own = problems(&chain, online);
    let mut ok = true;
    for (field, message) in problems(&chain.overridden_by(nf), online) {
        if own.iter().any(|(f, m)| *f == field && *m == message) {
            continue;
        }
        let set_here = match field {
            "policy" => nf.policy.is_some(),
            "priority" => nf.priority.is_some(),
            "nice" => nf.nice.is_some(),
            "cpus" => nf.cpus.is_some(),
            "batch_size" => nf.batch_size.is_some(),
            "slice_us" => nf.slice_us.is_some(),
            _ => nf.idle.is_some(),
        };
        if set_here {
            ck.at_value(&format!("{path}.sched.{field}"), message, Some(SCHED_HELP.into()));
        } else {
            ck.at_value(
                &format!("{path}.sched"),
                format!("with the chain's `sched.{field}`: {message}"),
                Some(SCHED_HELP.into()),
            );
        }
        ok = false;
    }
    ok
}

fn check_nfs(
    ck: &mut Checker<'_>,
    value: Option<&Value>,
    chain_sched: Option<&SchedDecl>,
    online: &[usize],
) -> Option<Vec<NfDecl>> {
    let Some(value) = value else {
        ck.at_value(
            "",
            "missing field `nfs`",
            Some("a list of NFs: `nfs: [ { name: f, type: fwd } ]`".into()),
        );
        return None;
    };
    let Value::Sequence(items) = value else {
        ck.at_value("nfs", "`nfs` must be a list of NFs", None);
        return None;
    };
    if items.is_empty() {
        ck.at_value("nfs", "a chain needs at least one NF", None);
        return None;
    }
    let known = REGISTRY.iter().map(|s| s.name).collect::<Vec<_>>().join(", ");
    let mut decls = Vec::with_capacity(items.len());
    let mut ok = true;
    let mut seen: Vec<(String, usize)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("nfs[{i}]");
        // Names are checked for duplicates before the rest of the NF, so
        // an NF with another problem still has its duplicate name reported.
        if let Some(name) = item.get("name").and_then(Value::as_str) {
            if let Some((_, first)) = seen.iter().find(|(n, _)| n == name) {
                ck.at_value(
                    &format!("{path}.name"),
                    format!("duplicate NF name `{name}` (also nfs[{first}])"),
                    Some("names unique within the chain".into()),
                );
                ok = false;
            }
            seen.push((name.to_string(), i));
        }
        let Some(mut decl) = ck.parse::<NfDecl>(&path, item) else {
            ok = false;
            continue;
        };
        resolve_key_file(ck, &mut decl.params);
        if let Some(s) = &decl.sched {
            ok &= check_nf_sched(ck, &path, s, chain_sched, online);
        }
        if decl.name.trim().is_empty() {
            ck.at_value(&format!("{path}.name"), "the NF name is empty", None);
            ok = false;
        }
        let Some(spec) = braid_nf::find(&decl.kind) else {
            let hint = closest(&decl.kind, REGISTRY.iter().map(|s| s.name))
                .map(|c| format!(" (did you mean `{c}`?)"))
                .unwrap_or_default();
            ck.at_value(
                &format!("{path}.type"),
                format!("unknown NF type `{}`{hint}", decl.kind),
                Some(known.clone()),
            );
            ok = false;
            continue;
        };
        let placement_ok = placement_allowed(decl.placement, spec);
        if !placement_ok {
            let places: Vec<String> = spec.placements.iter().map(|p| p.to_string()).collect();
            ck.at_value(
                &format!("{path}.placement"),
                format!("`{}` cannot run in {} space", spec.name, decl.placement),
                Some(format!("auto, {}", places.join(", "))),
            );
            ok = false;
        }
        if let Err(e) = (spec.build)(&decl.params) {
            let field = if e.field.is_empty() {
                format!("{path}.params")
            } else if e.field.starts_with('[') {
                format!("{path}.params{}", e.field)
            } else {
                format!("{path}.params.{}", e.field)
            };
            let help = param_help(spec, &e.field);
            let message = strip_location(&e.message);
            match unknown_field_name(&message) {
                Some(f) if !e.field.ends_with(&f) => {
                    ck.at_key(&format!("{field}.{f}"), message, help);
                }
                Some(_) => ck.at_key(&field, message, help),
                None => ck.at_value(&field, message, help),
            }
            ok = false;
        } else if placement_ok && decl.placement == PlacementChoice::Kernel {
            if let Err(e) = braid_nf::kernel::translate(spec.name, &decl.params) {
                kernel_problem(ck, &path, &e);
                ok = false;
            }
        }
        decls.push(decl);
    }
    ok.then_some(decls)
}

/// The NFs' `worker` fields: only with `mapping: threads`, names that can
/// be a thread's and a metric label's, and the NFs of one worker
/// neighbours (packets cross the workers in chain order, so a worker
/// cannot run two NFs with another worker's between them).
fn check_workers(ck: &mut Checker<'_>, nfs: &[NfDecl], mapping: Option<WorkerMapping>) -> bool {
    let mut ok = true;
    let threads = mapping == Some(WorkerMapping::Threads);
    // Where each worker's run of NFs ended: (worker, last NF index).
    let mut runs: Vec<(&str, usize)> = Vec::new();
    for (i, n) in nfs.iter().enumerate() {
        let at = format!("nfs[{i}].worker");
        if let Some(w) = &n.worker {
            if !threads {
                ck.at_value(
                    &at,
                    format!("`worker: {}` needs `mapping: threads`", w.escape_debug()),
                    Some("with `mapping: thread` (the default) every NF runs on one worker".into()),
                );
                ok = false;
                continue;
            }
            let fine = (1..=64).contains(&w.len())
                && w.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !fine {
                ck.at_value(
                    &at,
                    format!("worker name `{}` is not one braid accepts", w.escape_debug()),
                    Some("1 to 64 characters among A-Z a-z 0-9 . _ -".into()),
                );
                ok = false;
                continue;
            }
        }
        if !threads {
            continue;
        }
        let name = n.worker_name();
        match runs.iter().position(|(w, _)| *w == name) {
            Some(k) if k + 1 == runs.len() => runs[k].1 = i,
            Some(k) => {
                let (_, end) = runs[k];
                let at = if n.worker.is_some() { at } else { format!("nfs[{i}].name") };
                ck.at_value(
                    &at,
                    format!(
                        "nfs[{i}] (`{}`) runs on worker `{name}`, whose NFs end at nfs[{end}] (`{}`): a worker's NFs must be neighbours in the chain",
                        n.name, nfs[end].name
                    ),
                    Some("give the NFs between them the same `worker`, or this NF another".into()),
                );
                ok = false;
            }
            None => runs.push((name, i)),
        }
    }
    ok
}

/// A relative `key_file` parameter, taken from the descriptor's folder.
fn resolve_key_file(ck: &Checker<'_>, params: &mut Value) {
    if let Some(Value::String(f)) = params.get_mut("key_file") {
        *f = ck.resolve(std::path::Path::new(f.as_str())).display().to_string();
    }
}

/// An NF pinned to the kernel whose parameters its XDP version cannot
/// express (the error `braid deploy` would give), located at the parameter
/// it names (a parameter left at its default, like `conntrack`, at the
/// nearest enclosing node, as for other missing fields).
fn kernel_problem(ck: &mut Checker<'_>, path: &str, e: &braid_nf::kernel::KernelError) {
    let field = e.field();
    let at = if field.is_empty() {
        format!("{path}.placement")
    } else {
        format!("{path}.params.{field}")
    };
    ck.at_value(&at, format!("cannot run in the kernel: {e}"), None);
}

/// The documentation of the parameter a field path falls under.
fn param_help(spec: &NfSpec, field: &str) -> Option<String> {
    let top = field.split(['.', '[']).next().unwrap_or("");
    let doc = spec.params.iter().find(|p| p.name == top);
    if doc.is_none() {
        if spec.params.is_empty() {
            return Some(format!("`{}` takes no parameters", spec.name));
        }
        let names: Vec<&str> = spec.params.iter().map(|p| p.name).collect();
        return Some(format!("parameters of `{}`: {}", spec.name, names.join(", ")));
    }
    let doc = doc?;
    let default = doc.default.map(|d| format!(", default {d}")).unwrap_or_default();
    Some(format!("{}: {}{default} — {}", doc.name, doc.kind, doc.help))
}

/// The candidate nearest to `word` by edit distance, if close enough to be
/// a likely typo.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        validate_str("t.yaml", text).problems.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn a_good_descriptor_parses_with_defaults() {
        let r = validate_str(
            "t.yaml",
            "name: c\nports:\n  in: { kind: pcap, path: a.pcap }\n  gen: { kind: memory, flows: 4 }\nnfs:\n  - { name: f, type: fwd, placement: kernel }\n",
        );
        assert!(r.is_ok(), "{:?}", r.problems);
        let d = r.descriptor.unwrap();
        assert_eq!(d.batch_size, DEFAULT_BATCH_SIZE);
        assert_eq!(d.nfs[0].placement, PlacementChoice::Kernel);
        assert_eq!(d.ports["gen"].kind_name(), "memory");
        assert_eq!(ChainDescriptor::from_yaml(&d.to_yaml()).unwrap(), d);
    }

    #[test]
    fn syntax_errors_have_a_location() {
        let p = problems("name: c\nnfs: [ { name: f\n");
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("t.yaml:3:1: YAML syntax:"), "{p:?}");
    }

    #[test]
    fn reports_every_problem_with_line_and_column() {
        let text = "\
name: c
batch_size: 0
colour: red
ports:
  in: { kind: tap, path: x }
  out: { kind: pcap }
nfs:
  - name: a
    type: fwdd
  - name: a
    type: fwd
    placement: sideways
  - name: b
    type: fwd
    params: { bogus: 1 }
  - { name: c, type: fwd, extra: 2 }
";
        let p = problems(text);
        let expect = [
            "t.yaml:2:13: batch_size: batch size 0 is out of range",
            "t.yaml:3:1: colour: unknown field `colour`",
            "t.yaml:5:15: ports.in.kind: unknown variant `tap`, expected one of `pcap`, `memory`, `af_packet`, `af_xdp`",
            "t.yaml:6:8: ports.out: missing field `path`",
            "t.yaml:9:11: nfs[0].type: unknown NF type `fwdd` (did you mean `fwd`?)",
            // Reported although nfs[1] has another problem (it was not).
            "t.yaml:10:11: nfs[1].name: duplicate NF name `a` (also nfs[0])",
            "t.yaml:12:16: nfs[1].placement: unknown variant `sideways`, expected one of `auto`, `kernel`, `user`",
            "t.yaml:15:15: nfs[2].params.bogus: unknown field `bogus`",
            "t.yaml:16:27: nfs[3].extra: unknown field `extra`",
        ];
        assert_eq!(p.len(), expect.len(), "{p:#?}");
        for (got, want) in p.iter().zip(expect) {
            assert!(got.starts_with(want), "got {got:?}\nwant {want:?}");
        }
        assert!(p[4].contains("accepted: fwd"), "{}", p[4]);
        assert!(p[7].contains("takes no parameters"), "{}", p[7]);
    }

    #[test]
    fn a_pinned_kernel_placement_xdp_cannot_express_is_located() {
        // conntrack left at its default: reported at the params it is
        // missing from.
        let p = problems(
            "name: c\nnfs:\n  - name: fw\n    type: firewall\n    placement: kernel\n    params: { rules: [{ action: allow, src: 10.0.0.0/8 }] }\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with(
                "t.yaml:6:13: nfs[0].params.conntrack: cannot run in the kernel: conntrack: true"
            ),
            "{}",
            p[0]
        );
        assert!(p[0].ends_with("use `placement: user` for this NF"), "{}", p[0]);
        // A rule's field: reported at that field, with the rule index.
        let p = problems(
            "name: c\nnfs:\n  - name: fw\n    type: firewall\n    placement: kernel\n    params:\n      conntrack: false\n      rules:\n        - { action: allow, src: 10.9.0.0/16 }\n        - { action: drop, dst: 10.0.0.2, proto: udp, dst_ports: \"1000-2000\" }\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with(
                "t.yaml:10:65: nfs[0].params.rules[1].dst_ports: cannot run in the kernel: rules[1].dst_ports: \"1000-2000\" is a port range"
            ),
            "{}",
            p[0]
        );
        // The same parameters in user space, or left to the planner: fine.
        for placement in ["user", "auto"] {
            let p = problems(&format!(
                "name: c\nnfs:\n  - {{ name: fw, type: firewall, placement: {placement}, params: {{ rules: [{{ action: allow, src: 10.0.0.0/8 }}] }} }}\n"
            ));
            assert!(p.is_empty(), "{placement}: {p:?}");
        }
        // What XDP can express passes.
        let p = problems(
            "name: c\nnfs:\n  - { name: fw, type: firewall, placement: kernel, params: { conntrack: false, rules: [{ action: allow, src: 10.0.0.0/8 }] } }\n  - { name: x, type: xor, placement: kernel, params: { key_text: k } }\n",
        );
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn duplicate_names_and_missing_fields() {
        let p = problems("name: c\nnfs:\n  - { name: a, type: fwd }\n  - { name: a, type: fwd }\n");
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("t.yaml:4:13: nfs[1].name: duplicate NF name `a` (also nfs[0])"));
        // A duplicate with another problem in the same NF: both reported.
        let p = problems(
            "name: c\nnfs:\n  - { name: a, type: fwd }\n  - { name: a, type: fwd, colour: 1 }\n",
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("nfs[1].name: duplicate NF name `a`"), "{p:?}");
        assert!(p[1].contains("nfs[1].colour: unknown field"), "{p:?}");
        let p = problems("nfs: []\n");
        assert!(p.iter().any(|m| m.contains("missing field `name`")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("at least one NF")), "{p:?}");
        let p = problems("name: c\n");
        assert!(p[0].contains("missing field `nfs`"), "{p:?}");
        let p = problems("");
        assert!(p[0].contains("empty document"), "{p:?}");
        let p = problems("- 1\n");
        assert!(p[0].contains("not a mapping"), "{p:?}");
    }

    #[test]
    fn sched_settings_are_checked_and_located() {
        let text = "\
name: c
sched: { priority: 5 }
nfs:
  - name: a
    type: fwd
    sched: { policy: fifo }
  - name: b
    type: fwd
    sched: { policy: rr, priority: 120, nice: 3, cpus: [999] }
  - name: c
    type: fwd
    sched: { idle: spin }
  - { name: d, type: fwd, sched: { nice: -5, batch_size: 2000 } }
";
        let p = problems(text);
        let expect = [
            "t.yaml:2:20: sched.priority: `priority` is for the real-time policies fifo and rr, and the policy is other",
            "t.yaml:9:36: nfs[1].sched.priority: real-time priority 120 is out of range 1..=99",
            "t.yaml:9:47: nfs[1].sched.nice: `nice` does not apply to the real-time policy rr",
            "t.yaml:9:56: nfs[1].sched.cpus: CPU 999 is not online on this machine (online: ",
            "t.yaml:12:20: nfs[2].sched.idle: unknown variant `spin`, expected one of `busy`, `poll`, `sleep`",
            "t.yaml:13:58: nfs[3].sched.batch_size: batch size 2000 is out of range 1..=1024",
        ];
        assert_eq!(p.len(), expect.len(), "{p:#?}");
        for (got, want) in p.iter().zip(expect) {
            assert!(got.starts_with(want), "got {got:?}\nwant {want:?}");
        }
        assert!(p[0].contains("accepted: sched: { policy:"), "{}", p[0]);
        // The EEVDF slice: bounded as the kernel bounds it, fair policies
        // only.
        let p = problems(
            "name: c\nnfs:\n  - { name: a, type: fwd, sched: { slice_us: 50 } }\n  - { name: b, type: fwd, sched: { policy: fifo, priority: 3, slice_us: 500 } }\n  - { name: e, type: fwd, sched: { policy: batch, slice_us: 100000 } }\n",
        );
        assert_eq!(p.len(), 2, "{p:#?}");
        assert!(
            p[0].starts_with(
                "t.yaml:3:46: nfs[0].sched.slice_us: slice 50 µs is out of range 100..=100000"
            ),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("t.yaml:4:73: nfs[1].sched.slice_us: `slice_us` is the EEVDF slice of the policies other and batch, not of fifo"),
            "{p:?}"
        );
        // The chain's setting is what makes an NF's invalid: located at
        // the NF's block.
        let p = problems(
            "name: c\nsched: { nice: 2 }\nnfs:\n  - { name: a, type: fwd, sched: { policy: fifo, priority: 3 } }\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with(
                "t.yaml:4:34: nfs[0].sched: with the chain's `sched.nice`: `nice` does not apply"
            ),
            "{p:?}"
        );
        // Valid settings parse, and round-trip through YAML.
        let r = validate_str(
            "t.yaml",
            "name: c\nsched: { policy: batch, nice: 5 }\nnfs:\n  - { name: a, type: fwd, sched: { policy: fifo, priority: 10, nice: null, cpus: [0], idle: busy, batch_size: 8 } }\n",
        );
        assert!(r.problems.iter().any(|p| p.path == "nfs[0].sched"), "{:?}", r.problems);
        let r = validate_str(
            "t.yaml",
            "name: c\nsched: { policy: batch, nice: 5 }\nnfs:\n  - { name: a, type: fwd, sched: { cpus: [0], idle: busy, batch_size: 8 } }\n",
        );
        assert!(r.is_ok(), "{:?}", r.problems);
        let d = r.descriptor.unwrap();
        assert_eq!(d.nfs[0].sched.as_ref().unwrap().batch_size, Some(8));
        assert_eq!(ChainDescriptor::from_yaml(&d.to_yaml()).unwrap(), d);
    }

    #[test]
    fn memory_port_ranges() {
        let p = problems(
            "name: c\nports:\n  g: { kind: memory, frame_size: 20, flows: 0 }\nnfs: [ { name: f, type: fwd } ]\n",
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("ports.g.frame_size: frame size 20 is out of range"), "{p:?}");
        assert!(p[1].contains("ports.g.flows: need at least one flow"), "{p:?}");
    }

    #[test]
    fn load_reports_unreadable_files() {
        let e = load(std::path::Path::new("/nonexistent/x.yaml")).unwrap_err();
        assert!(e.to_string().starts_with("cannot read /nonexistent/x.yaml"), "{e}");
    }

    #[test]
    fn a_byte_order_mark_is_not_a_second_document() {
        let r = validate_str("t.yaml", "\u{feff}name: x\nnfs: [{name: a, type: fwd}]\n");
        assert!(r.is_ok(), "{:?}", r.problems);
    }

    #[test]
    fn an_integer_over_64_bits_is_named_and_hides_nothing() {
        let p = problems(
            "name: x\nbatch_size: 99999999999999999999999\nnfs: [{name: a, type: fwdd}]\n",
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with(
                "t.yaml:2:13: batch_size: integer 99999999999999999999999 does not fit in 64 bits"
            ),
            "{p:?}"
        );
        assert!(p[1].contains("nfs[0].type: unknown NF type `fwdd`"), "{p:?}");
    }

    #[test]
    fn a_tab_in_the_indentation_is_named() {
        let p = problems("name: x\nnfs:\n\t- name: a\n");
        assert_eq!(p, ["t.yaml:3:1: a tab where YAML needs spaces: indent with spaces only"]);
    }

    #[test]
    fn relative_paths_are_taken_from_the_descriptor_folder() {
        let dir = std::env::temp_dir().join(format!("braid-relpaths-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k.hex"), "000102030405060708090a0b0c0d0e0f\n").unwrap();
        let text = "name: x\nports: { in: { kind: pcap, path: in.pcap } }\n\
                    nfs: [{name: e, type: encrypt, params: {mode: ctr, key_file: k.hex}}]\n";
        std::fs::write(dir.join("c.yaml"), text).unwrap();
        // From another current directory, the key file is still found.
        let d = load(&dir.join("c.yaml")).unwrap();
        match &d.ports["in"] {
            PortDecl::Pcap(p) => assert_eq!(p.path, dir.join("in.pcap")),
            other => panic!("{other:?}"),
        }
        let key_file = d.nfs[0].params.get("key_file").and_then(Value::as_str).unwrap();
        assert_eq!(std::path::Path::new(key_file), dir.join("k.hex"));
        // Without a file, relative paths stay relative (current directory).
        let r = validate_str("c.yaml", text);
        assert!(r.problems.iter().any(|p| p.to_string().contains("k.hex")), "{:?}", r.problems);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn endless_input_stops_at_the_size_limit() {
        let e = read_descriptor(std::path::Path::new("/dev/zero")).unwrap_err();
        assert!(
            matches!(&e, LoadError::TooLarge { path, limit } if path == "/dev/zero" && *limit == MAX_DESCRIPTOR_BYTES),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "/dev/zero: larger than the limit of 16777216 bytes for a descriptor"
        );
        let big = " ".repeat(MAX_DESCRIPTOR_BYTES as usize + 1);
        let p = problems(&big);
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("larger than the limit"), "{p:?}");
    }

    #[test]
    fn deep_nesting_is_refused_before_the_full_parse() {
        let n = 100_000;
        let text = format!("name: x\nnfs: {}{}\n", "[".repeat(n), "]".repeat(n));
        let t = std::time::Instant::now();
        let p = problems(&text);
        // It took 30 s before: the YAML parser is quadratic in the depth.
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("t.yaml:2:"), "{p:?}");
        assert!(p[0].contains("nested deeper than 64 levels"), "{p:?}");
        // 64 levels are fine as far as nesting goes.
        let ok = format!("name: x\nnfs: {}{}\n", "[".repeat(62), "]".repeat(62));
        assert!(problems(&ok).iter().all(|p| !p.contains("nested deeper")));
    }

    #[test]
    fn edit_distance() {
        assert_eq!(levenshtein("rooter", "router"), 1);
        assert_eq!(closest("rooter", ["router", "nat"].into_iter()), Some("router"));
        assert_eq!(closest("zzzzzz", ["router", "nat"].into_iter()), None);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = include_str!("../../../examples/sample.yaml");

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Arbitrary text never panics the validator, and every problem it
        /// reports is located inside the text.
        #[test]
        fn arbitrary_text_never_panics(text in "[ -~\n]{0,200}") {
            let r = validate_str("p.yaml", &text);
            let lines = text.split('\n').count();
            for p in &r.problems {
                if let Some(l) = p.location {
                    prop_assert!(l.line >= 1 && l.line <= lines + 1, "{p} in {text:?}");
                }
            }
            prop_assert_eq!(r.descriptor.is_some(), r.problems.is_empty());
        }

        /// Damaging the sample at one byte gives either a descriptor or
        /// problems with a file name, never a panic.
        #[test]
        fn damaged_sample_never_panics(at in any::<prop::sample::Index>(), byte in b' '..=b'~') {
            let mut bytes = SAMPLE.as_bytes().to_vec();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            let text = String::from_utf8_lossy(&bytes);
            let r = validate_str("s.yaml", &text);
            for p in &r.problems {
                prop_assert!(p.to_string().starts_with("s.yaml:"));
            }
        }
    }

    #[test]
    fn the_sample_is_valid() {
        assert!(validate_str("s.yaml", SAMPLE).is_ok());
    }
}
