//! DPI rules: their descriptor form, validation, and the compiled form the
//! matcher and the NF use.
//!
//! A rule in the spirit of Snort/Suricata: one `content` literal (with
//! `nocase`, `offset`, `depth`) or one `pcre`-style regular expression,
//! scoped to a protocol and ports, with a `sid`, a message and an action.

use regex_syntax::hir::Look;

use crate::params::ConfigError;

/// Longest `content` literal accepted. The matcher carries the last
/// `longest - 1` bytes of each TCP stream to find literals that span two
/// segments, so this bounds the per-flow context.
pub const MAX_CONTENT_LEN: usize = 255;

/// Protocol scope of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProtoScope {
    #[default]
    Any,
    Tcp,
    Udp,
}

/// What a rule does when it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    /// Count and log; the packet passes.
    #[default]
    Alert,
    /// Drop the packet that completes the match and, for TCP, every later
    /// packet of the flow.
    Drop,
    /// Set `meta.mark` on the packet that completes the match and, for TCP,
    /// on every later packet of the flow.
    Mark,
}

/// A port or an inclusive port range: `80` or `"8000-8080"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    #[inline]
    pub fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

impl<'de> serde::Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(u16),
            Range(String),
        }
        let bad = || serde::de::Error::custom("expected a port (0..=65535) or a range \"lo-hi\"");
        match Raw::deserialize(d).map_err(|_| bad())? {
            Raw::One(p) => Ok(PortRange { lo: p, hi: p }),
            Raw::Range(s) => {
                let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
                let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
                let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
                if lo > hi {
                    return Err(serde::de::Error::custom(format!("range {lo}-{hi} is empty")));
                }
                Ok(PortRange { lo, hi })
            }
        }
    }
}

/// One rule as written in the descriptor.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub sid: u32,
    #[serde(default)]
    pub msg: String,
    /// Literal bytes, Snort style: text with `|41 42|` hex runs.
    #[serde(default)]
    pub content: Option<String>,
    /// A regular expression (Rust `regex` syntax over bytes, ASCII classes).
    #[serde(default)]
    pub pcre: Option<String>,
    #[serde(default)]
    pub nocase: bool,
    /// `content` only: bytes of the stream (TCP) or datagram (UDP) to skip
    /// before the literal may start.
    #[serde(default)]
    pub offset: Option<u64>,
    /// `content` only: the literal must lie within this many bytes after
    /// `offset`.
    #[serde(default)]
    pub depth: Option<u64>,
    #[serde(default)]
    pub proto: ProtoScope,
    #[serde(default)]
    pub src_port: Option<PortRange>,
    #[serde(default)]
    pub dst_port: Option<PortRange>,
    #[serde(default)]
    pub action: ActionKind,
    /// The `meta.mark` value of a `mark` rule.
    #[serde(default)]
    pub mark: Option<u8>,
}

/// What a compiled rule looks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    Literal {
        bytes: Vec<u8>,
        nocase: bool,
        /// First stream offset the literal may start at.
        offset: u64,
        /// Stream offset the literal must end at or before.
        end_limit: Option<u64>,
    },
    /// The pattern as handed to the DFA builder (`(?i)` prefixed when
    /// `nocase`).
    Regex(String),
}

/// A rule's action, with its mark value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Alert,
    Drop,
    Mark(u8),
}

/// A validated rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub sid: u32,
    pub msg: String,
    pub pattern: Pattern,
    pub proto: ProtoScope,
    pub src_port: Option<PortRange>,
    pub dst_port: Option<PortRange>,
    pub action: Action,
}

impl Rule {
    /// Whether the rule applies to a flow of protocol `tcp` (else UDP) with
    /// these ports.
    #[inline]
    pub fn applies(&self, tcp: bool, src_port: u16, dst_port: u16) -> bool {
        let proto_ok = match self.proto {
            ProtoScope::Any => true,
            ProtoScope::Tcp => tcp,
            ProtoScope::Udp => !tcp,
        };
        proto_ok
            && self.src_port.is_none_or(|r| r.contains(src_port))
            && self.dst_port.is_none_or(|r| r.contains(dst_port))
    }
}

/// Parse a Snort-style content string: plain bytes, with runs of hex byte
/// pairs between `|` characters (`"GET |20|/"`). Spaces inside a hex run
/// are ignored.
pub fn parse_content(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut in_hex = false;
    let mut hex_digits = String::new();
    for (i, c) in s.char_indices() {
        if c == '|' {
            if in_hex && !hex_digits.is_empty() {
                return Err(format!("odd number of hex digits before `|` at byte {i}"));
            }
            in_hex = !in_hex;
            continue;
        }
        if !in_hex {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        } else if c.is_ascii_whitespace() {
            continue;
        } else if c.is_ascii_hexdigit() {
            hex_digits.push(c);
            if hex_digits.len() == 2 {
                out.push(u8::from_str_radix(&hex_digits, 16).expect("two hex digits"));
                hex_digits.clear();
            }
        } else {
            return Err(format!("`{c}` at byte {i} is not a hex digit inside `|...|`"));
        }
    }
    if in_hex {
        return Err("unterminated `|` hex run".into());
    }
    Ok(out)
}

/// The regex syntax the DPI uses: bytes, not UTF-8; ASCII `\d \w \s`;
/// `.` is any byte but `\n` (as Python's `re` on bytes).
pub fn regex_syntax_config(nocase: bool) -> regex_automata::util::syntax::Config {
    regex_automata::util::syntax::Config::new().unicode(false).utf8(false).case_insensitive(nocase)
}

/// Check one regex: it must parse, never match the empty string (it would
/// fire on every flow), and use no assertion but `^` / `\A` (stream or
/// datagram start): `$`, `\b` and friends would depend on where a stream is
/// cut into segments.
fn check_regex(pattern: &str, nocase: bool) -> Result<(), String> {
    let hir = regex_automata::util::syntax::parse_with(pattern, &regex_syntax_config(nocase))
        .map_err(|e| e.to_string())?;
    let props = hir.properties();
    if props.minimum_len() == Some(0) {
        return Err("matches the empty string, so it would fire on every flow".into());
    }
    let looks = props.look_set().remove(Look::Start);
    if !looks.is_empty() {
        return Err(format!(
            "uses {looks:?}; only `^`/`\\A` (start of stream or datagram) is supported, \
             other assertions would depend on where the stream is cut into segments"
        ));
    }
    Ok(())
}

/// Validate and compile the rule list. Errors name `rules[i].field`.
pub fn compile(configs: &[RuleConfig]) -> Result<Vec<Rule>, ConfigError> {
    let mut rules = Vec::with_capacity(configs.len());
    for (i, c) in configs.iter().enumerate() {
        let at = |field: &str| {
            if field.is_empty() {
                format!("rules[{i}]")
            } else {
                format!("rules[{i}].{field}")
            }
        };
        if let Some(j) = configs[..i].iter().position(|o| o.sid == c.sid) {
            return Err(ConfigError::new(
                at("sid"),
                format!("sid {} is already used by rules[{j}]", c.sid),
            ));
        }
        let pattern = match (&c.content, &c.pcre) {
            (Some(content), None) => {
                let bytes =
                    parse_content(content).map_err(|m| ConfigError::new(at("content"), m))?;
                if bytes.is_empty() {
                    return Err(ConfigError::new(at("content"), "is empty"));
                }
                if bytes.len() > MAX_CONTENT_LEN {
                    return Err(ConfigError::new(
                        at("content"),
                        format!(
                            "{} bytes, longer than the {MAX_CONTENT_LEN} accepted",
                            bytes.len()
                        ),
                    ));
                }
                let offset = c.offset.unwrap_or(0);
                if let Some(depth) = c.depth {
                    if depth < bytes.len() as u64 {
                        return Err(ConfigError::new(
                            at("depth"),
                            format!("{depth} is shorter than the {}-byte content", bytes.len()),
                        ));
                    }
                }
                let end_limit = c.depth.map(|d| offset.saturating_add(d));
                Pattern::Literal { bytes, nocase: c.nocase, offset, end_limit }
            }
            (None, Some(pcre)) => {
                for (field, set) in [("offset", c.offset.is_some()), ("depth", c.depth.is_some())] {
                    if set {
                        return Err(ConfigError::new(at(field), "only applies to `content` rules"));
                    }
                }
                check_regex(pcre, c.nocase).map_err(|m| ConfigError::new(at("pcre"), m))?;
                Pattern::Regex(if c.nocase { format!("(?i:{pcre})") } else { pcre.clone() })
            }
            _ => {
                return Err(ConfigError::new(
                    at(""),
                    "a rule needs exactly one of `content` or `pcre`",
                ))
            }
        };
        let action = match (c.action, c.mark) {
            (ActionKind::Mark, Some(m)) => Action::Mark(m),
            (ActionKind::Mark, None) => {
                return Err(ConfigError::new(
                    at("mark"),
                    "a `mark` rule needs a mark value (0..=255)",
                ))
            }
            (_, Some(_)) => {
                return Err(ConfigError::new(at("mark"), "only applies to `action: mark` rules"))
            }
            (ActionKind::Alert, None) => Action::Alert,
            (ActionKind::Drop, None) => Action::Drop,
        };
        rules.push(Rule {
            sid: c.sid,
            msg: c.msg.clone(),
            pattern,
            proto: c.proto,
            src_port: c.src_port,
            dst_port: c.dst_port,
            action,
        });
    }
    Ok(rules)
}

/// A fingerprint of the rule list (FNV-1a over its canonical JSON), kept in
/// exported state: automaton states only mean something to the same rules.
pub fn fingerprint(configs: &[RuleConfig]) -> u64 {
    let json = serde_json::to_vec(configs).expect("rule configs serialize");
    json.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> Result<Vec<Rule>, ConfigError> {
        compile(&serde_yaml_ng::from_str::<Vec<RuleConfig>>(yaml).unwrap())
    }

    #[test]
    fn content_hex_runs() {
        assert_eq!(parse_content("GET|20 2f|x").unwrap(), b"GET /x");
        assert_eq!(parse_content("|00ff|").unwrap(), [0, 255]);
        assert!(parse_content("|0|").unwrap_err().contains("odd"));
        assert!(parse_content("|zz|").unwrap_err().contains("not a hex digit"));
        assert!(parse_content("a|41").unwrap_err().contains("unterminated"));
    }

    #[test]
    fn errors_name_rule_index_and_field() {
        let cases = [
            ("- {sid: 1, content: a}\n- {sid: 1, content: b}", "rules[1].sid", "rules[0]"),
            ("- {sid: 1}", "rules[0]", "exactly one"),
            ("- {sid: 1, content: a, pcre: b}", "rules[0]", "exactly one"),
            ("- {sid: 1, content: ''}", "rules[0].content", "empty"),
            ("- {sid: 1, content: '|4|'}", "rules[0].content", "odd"),
            ("- {sid: 1, content: abc, depth: 2}", "rules[0].depth", "shorter"),
            ("- {sid: 1, pcre: a, offset: 3}", "rules[0].offset", "content"),
            ("- {sid: 2, content: a}\n- {sid: 1, pcre: 'a(b'}", "rules[1].pcre", "unclosed group"),
            ("- {sid: 1, pcre: 'a*'}", "rules[0].pcre", "empty string"),
            ("- {sid: 1, pcre: 'ab$'}", "rules[0].pcre", "only `^`"),
            ("- {sid: 1, pcre: '\\bab'}", "rules[0].pcre", "only `^`"),
            ("- {sid: 1, content: a, action: mark}", "rules[0].mark", "needs a mark"),
            ("- {sid: 1, content: a, mark: 3}", "rules[0].mark", "only applies"),
        ];
        for (yaml, field, text) in cases {
            let e = rules(yaml).unwrap_err();
            assert_eq!(e.field, field, "{yaml}: {e}");
            assert!(e.message.contains(text), "{yaml}: {e}");
        }
        let long = format!("- {{sid: 1, content: '{}'}}", "x".repeat(MAX_CONTENT_LEN + 1));
        assert!(rules(&long).unwrap_err().message.contains("longer"));
    }

    #[test]
    fn port_ranges_and_scope() {
        let r =
            rules("- {sid: 1, content: a, proto: tcp, dst_port: '80-90', src_port: 5}").unwrap();
        assert!(r[0].applies(true, 5, 85));
        assert!(!r[0].applies(false, 5, 85));
        assert!(!r[0].applies(true, 6, 85));
        assert!(!r[0].applies(true, 5, 91));
        let bad =
            serde_yaml_ng::from_str::<Vec<RuleConfig>>("- {sid: 1, content: a, dst_port: '9-1'}");
        assert!(bad.unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn nocase_regex_is_wrapped_and_depth_is_relative_to_offset() {
        let r = rules(
            "- {sid: 1, pcre: 'ab+', nocase: true}\n- {sid: 2, content: xy, offset: 4, depth: 6}",
        )
        .unwrap();
        assert_eq!(r[0].pattern, Pattern::Regex("(?i:ab+)".into()));
        assert_eq!(
            r[1].pattern,
            Pattern::Literal {
                bytes: b"xy".to_vec(),
                nocase: false,
                offset: 4,
                end_limit: Some(10)
            }
        );
    }
}
