//! Where each node of a YAML document is, by field path.
//!
//! serde tells us *which* field is wrong (`nfs[2].params.routes[0].prefix`,
//! via `serde_path_to_error` or an NF's `ConfigError`); this module tells us
//! *where* that field is written, using the span-aware event parser of
//! `saphyr-parser`.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser};

/// A 1-based line and column in the source text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Locations of the keys and values of a document, by path. Paths use the
/// syntax of `serde_path_to_error`: `a.b[3].c`; the root is the empty path.
#[derive(Debug, Default)]
pub struct Spans {
    values: HashMap<String, Location>,
    keys: HashMap<String, Location>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

fn join(parent: &str, seg: &str) -> String {
    if parent.is_empty() {
        seg.to_string()
    } else {
        format!("{parent}.{seg}")
    }
}

impl Spans {
    /// Index `text`. A document that does not parse gives what was indexed
    /// before the syntax error (the syntax error itself is reported by the
    /// serde parse).
    pub fn index(text: &str) -> Spans {
        let mut spans = Spans::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut parser = Parser::new_from_str(text);
        // Only the first document is a descriptor.
        let mut started = false;
        while let Some(Ok((event, span))) = parser.next_event() {
            let loc = Location { line: span.start.line(), column: span.start.col() + 1 };
            let is_start = matches!(event, Event::MappingStart(..) | Event::SequenceStart(..));
            match event {
                Event::DocumentStart(_) if started => break,
                Event::DocumentStart(_) => started = true,
                Event::Scalar(..)
                | Event::Alias(_)
                | Event::MappingStart(..)
                | Event::SequenceStart(..) => {
                    // Is this node a mapping key? Then remember it and wait
                    // for the value.
                    if let Some(Frame::Map { path, key: key @ None }) = stack.last_mut() {
                        let name = match &event {
                            Event::Scalar(s, ..) => s.to_string(),
                            _ => "?".to_string(),
                        };
                        let child = join(path, &name);
                        spans.keys.entry(child).or_insert(loc);
                        *key = Some(name);
                        if is_start {
                            // A complex key: index nothing inside it.
                            stack.push(Frame::Map { path: "\u{0}".into(), key: None });
                        }
                        continue;
                    }
                    let child = match stack.last_mut() {
                        None => String::new(),
                        Some(Frame::Map { path, key }) => {
                            join(path, &key.take().unwrap_or_default())
                        }
                        Some(Frame::Seq { path, next }) => {
                            *next += 1;
                            format!("{path}[{}]", *next - 1)
                        }
                    };
                    spans.values.entry(child.clone()).or_insert(loc);
                    match event {
                        Event::MappingStart(..) => {
                            stack.push(Frame::Map { path: child, key: None })
                        }
                        Event::SequenceStart(..) => stack.push(Frame::Seq { path: child, next: 0 }),
                        _ => {}
                    }
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                Event::StreamEnd | Event::DocumentEnd if stack.is_empty() && started => break,
                _ => {}
            }
        }
        spans
    }

    /// Where the value at `path` starts, or the nearest enclosing node that
    /// is in the document (a missing field is reported at its parent).
    pub fn value(&self, path: &str) -> Option<Location> {
        let mut p = path;
        loop {
            if let Some(l) = self.values.get(p) {
                return Some(*l);
            }
            p = parent(p)?;
        }
    }

    /// The path of the value written at `at`, if one starts there.
    pub fn path_at(&self, at: Location) -> Option<String> {
        self.values.iter().find(|(_, l)| **l == at).map(|(p, _)| p.clone())
    }

    /// Where the key of the mapping entry at `path` is written, else as
    /// [`Spans::value`].
    pub fn key(&self, path: &str) -> Option<Location> {
        self.keys.get(path).copied().or_else(|| self.value(path))
    }
}

/// Where the first document first nests mappings and sequences deeper than
/// `limit`, if it does. Stops there, so a nesting bomb costs only its first
/// `limit` levels (the YAML parser behind serde is quadratic in the depth of
/// flow collections: 100,000 levels took 30 s before it gave up).
pub fn too_deep(text: &str, limit: usize) -> Option<Location> {
    let mut parser = Parser::new_from_str(text);
    let mut depth = 0usize;
    while let Some(next) = parser.next_event() {
        let (event, span) = match next {
            Ok(e) => e,
            // The scanner reads a run of flow openers ahead of the events
            // and gives up at its own limit (255 levels).
            Err(e) if e.info().contains("recursion limit") => {
                let m = e.marker();
                return Some(Location { line: m.line(), column: m.col() + 1 });
            }
            // Any other syntax error is reported by the full parse.
            Err(_) => return None,
        };
        match event {
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                depth += 1;
                if depth > limit {
                    return Some(Location {
                        line: span.start.line(),
                        column: span.start.col() + 1,
                    });
                }
            }
            Event::MappingEnd | Event::SequenceEnd => depth = depth.saturating_sub(1),
            Event::DocumentEnd | Event::StreamEnd => break,
            _ => {}
        }
    }
    None
}

/// `a.b[2]` → `a.b`, `a.b` → `a`, `a` → ``, `` → None.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    match path.rfind(['.', '[']) {
        Some(i) => Some(&path[..i]),
        None => Some(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
name: x
nfs:
  - name: a
    params:
      routes:
        - { prefix: 10.0.0.0/8, via: 1 }
        - prefix: 10.1.0.0/16
  - { name: b, type: fwd }
";

    #[test]
    fn finds_nested_values_and_keys() {
        let s = Spans::index(DOC);
        assert_eq!(s.value("name"), Some(Location { line: 1, column: 7 }));
        assert_eq!(s.key("nfs"), Some(Location { line: 2, column: 1 }));
        assert_eq!(s.value("nfs[0].name"), Some(Location { line: 3, column: 11 }));
        assert_eq!(s.value("nfs[0].params.routes[0].via"), Some(Location { line: 6, column: 38 }));
        assert_eq!(
            s.value("nfs[0].params.routes[1].prefix"),
            Some(Location { line: 7, column: 19 })
        );
        assert_eq!(s.key("nfs[1].type"), Some(Location { line: 8, column: 16 }));
        // Missing fields fall back to the enclosing node.
        assert_eq!(s.value("nfs[1].params.x"), Some(Location { line: 8, column: 5 }));
        assert_eq!(s.value("nope"), Some(Location { line: 1, column: 1 }));
    }

    #[test]
    fn broken_documents_index_what_they_can() {
        let s = Spans::index("name: x\nnfs: [\n");
        assert_eq!(s.value("name"), Some(Location { line: 1, column: 7 }));
        let s = Spans::index("");
        assert_eq!(s.value("name"), None);
    }

    #[test]
    fn nesting_beyond_the_limit_is_found_where_it_starts() {
        // The document (1) > nfs (2) > item (3) > params (4) > routes (5) >
        // route (6).
        assert_eq!(too_deep(DOC, 6), None);
        assert_eq!(too_deep(DOC, 5), Some(Location { line: 6, column: 11 }));
        let bomb = format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        let t = std::time::Instant::now();
        let at = too_deep(&bomb, 64).expect("a bomb is too deep");
        assert_eq!(at.line, 1);
        // Stops at the limit: microseconds, not the 30 s of a full parse.
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(too_deep("a: {b: {c: 1}}", 3), None);
        assert_eq!(too_deep("a: {b: {c: 1}}", 2), Some(Location { line: 1, column: 8 }));
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent("a.b[2]"), Some("a.b"));
        assert_eq!(parent("a[2].c"), Some("a[2]"));
        assert_eq!(parent("a"), Some(""));
        assert_eq!(parent(""), None);
    }
}
