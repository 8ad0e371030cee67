//! Secrets read from files: the bearer token of the TCP API and the key
//! braidd agents authenticate live migrations with.
//!
//! Both are read once at start from a file that only braidd's user may
//! read (mode `0600` or stricter, owned by braidd's uid); anything else is
//! refused. Neither is ever logged: their `Debug` prints nothing of them.
//!
//! * [`Token`]: at least [`MIN_TOKEN_BYTES`]. Only a SHA-256 digest of it
//!   is kept; a presented token is hashed the same way and the two digests
//!   are compared in constant time (so neither the token's bytes nor its
//!   length show in the timing).
//! * [`MigrateKey`]: at least [`MIN_MIGRATE_KEY_BYTES`], shared by every
//!   braidd that migrates to or from another; an HMAC-SHA256 key for the
//!   challenge-response of a migration offer (docs/migration.md).

use std::path::{Path, PathBuf};

use aws_lc_rs::{digest, hmac};

/// Shortest token accepted.
pub const MIN_TOKEN_BYTES: usize = 16;
/// Shortest migration key accepted (after surrounding white space is
/// removed): 32 bytes, e.g. `openssl rand -hex 32` (64 hex digits).
pub const MIN_MIGRATE_KEY_BYTES: usize = 32;

/// Why a secret's file cannot be used. `what` names the file's role
/// ("token file", "migrate key file").
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}: mode {mode:#o} lets others read it; chmod 600 it")]
    Mode { what: &'static str, path: PathBuf, mode: u32 },
    #[error("{what} {path}: owned by uid {owner}, braidd runs as uid {uid}; chown it")]
    Owner { what: &'static str, path: PathBuf, owner: u32, uid: u32 },
    #[error("{what} {path}: {source}")]
    Content {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: TokenTextError,
    },
}

/// Read `path`, a file of mode 0600 or stricter owned by `uid`.
fn read_private_file(what: &'static str, path: &Path, uid: u32) -> Result<Vec<u8>, TokenError> {
    use std::os::unix::fs::MetadataExt;
    let read = |source| TokenError::Read { what, path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(read)?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokenError::Mode { what, path: path.to_path_buf(), mode });
    }
    if meta.uid() != uid {
        return Err(TokenError::Owner { what, path: path.to_path_buf(), owner: meta.uid(), uid });
    }
    // Bounded: a secret is small, and `/dev/zero` must not fill memory.
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::fs::File::open(path).map_err(read)?, 4097),
        &mut bytes,
    )
    .map_err(read)?;
    if bytes.len() > 4096 {
        return Err(TokenError::Content {
            what,
            path: path.to_path_buf(),
            source: TokenTextError::TooLong,
        });
    }
    Ok(bytes)
}

/// Why a token's text cannot be a bearer token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenTextError {
    #[error("the token must be at least {MIN_TOKEN_BYTES} bytes")]
    TooShort,
    #[error("the token must be printable ASCII without spaces (it goes into an HTTP header)")]
    NotPrintable,
    #[error("the file holds more than 4 KiB; a secret is far shorter")]
    TooLong,
    #[error(
        "the key must be at least {MIN_MIGRATE_KEY_BYTES} bytes (`openssl rand -hex 32 > FILE`)"
    )]
    KeyTooShort,
}

/// A bearer token, kept as its digest.
pub struct Token {
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Token {
    /// A token from its text (surrounding white space removed).
    pub fn new(text: &str) -> Result<Token, TokenTextError> {
        let t = text.trim();
        if t.len() < MIN_TOKEN_BYTES {
            return Err(TokenTextError::TooShort);
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenTextError::NotPrintable);
        }
        Ok(Token { digest: sha256(t.as_bytes()) })
    }

    /// Read `path`: a file of mode 0600 or stricter owned by `uid`.
    pub fn from_file(path: &Path, uid: u32) -> Result<Token, TokenError> {
        const WHAT: &str = "token file";
        let bytes = read_private_file(WHAT, path, uid)?;
        let content = |source| TokenError::Content { what: WHAT, path: path.to_path_buf(), source };
        let text = String::from_utf8(bytes).map_err(|_| content(TokenTextError::NotPrintable))?;
        Token::new(&text).map_err(content)
    }

    /// Whether `presented` is this token, compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let d = sha256(presented.as_bytes());
        aws_lc_rs::constant_time::verify_slices_are_equal(&d, &self.digest).is_ok()
    }

    /// Whether an `Authorization` header value carries this token
    /// (`Bearer TOKEN`, scheme case-insensitive).
    pub fn authorizes(&self, header: Option<&str>) -> bool {
        let Some(h) = header else { return false };
        let Some((scheme, token)) = h.trim().split_once(' ') else { return false };
        scheme.eq_ignore_ascii_case("bearer") && self.matches(token.trim())
    }
}

/// The key braidd agents share to authenticate migration offers: an
/// HMAC-SHA256 key (docs/migration.md, "Authentication").
pub struct MigrateKey {
    key: hmac::Key,
}

impl std::fmt::Debug for MigrateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MigrateKey(<redacted>)")
    }
}

/// Length of a [`MigrateKey`] tag.
pub const MIGRATE_TAG_LEN: usize = 32;

impl MigrateKey {
    /// A key from its bytes (surrounding ASCII white space removed, so a
    /// text file with or without its final newline gives the same key).
    pub fn new(bytes: &[u8]) -> Result<MigrateKey, TokenTextError> {
        let b = bytes.trim_ascii();
        if b.len() < MIN_MIGRATE_KEY_BYTES {
            return Err(TokenTextError::KeyTooShort);
        }
        Ok(MigrateKey { key: hmac::Key::new(hmac::HMAC_SHA256, b) })
    }

    /// Read `path`: a file of mode 0600 or stricter owned by `uid`.
    pub fn from_file(path: &Path, uid: u32) -> Result<MigrateKey, TokenError> {
        const WHAT: &str = "migrate key file";
        let bytes = read_private_file(WHAT, path, uid)?;
        MigrateKey::new(&bytes).map_err(|source| TokenError::Content {
            what: WHAT,
            path: path.to_path_buf(),
            source,
        })
    }

    /// The tag of `body` sent in answer to `challenge`, for the message
    /// kind `label` (so an answer cannot pass for an offer).
    pub fn tag(&self, label: &[u8], challenge: &[u8], body: &[u8]) -> [u8; MIGRATE_TAG_LEN] {
        let mut c = hmac::Context::with_key(&self.key);
        for part in [label, challenge, body] {
            c.update(&(part.len() as u64).to_be_bytes());
            c.update(part);
        }
        let mut out = [0u8; MIGRATE_TAG_LEN];
        out.copy_from_slice(c.sign().as_ref());
        out
    }

    /// Whether `tag` is [`MigrateKey::tag`] of these, compared in constant
    /// time.
    pub fn verifies(&self, label: &[u8], challenge: &[u8], body: &[u8], tag: &[u8]) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.tag(label, challenge, body), tag)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn tokens_match_exactly_and_are_not_printed() {
        let t = Token::new("  s3cret-token-0123456789\n").unwrap();
        assert!(t.authorizes(Some("Bearer s3cret-token-0123456789")));
        assert!(t.authorizes(Some("bearer s3cret-token-0123456789")));
        assert!(!t.authorizes(Some("Bearer s3cret-token-012345678")));
        assert!(!t.authorizes(Some("Bearer s3cret-token-01234567890")));
        assert!(!t.authorizes(Some("Basic s3cret-token-0123456789")));
        assert!(!t.authorizes(Some("s3cret-token-0123456789")));
        assert!(!t.authorizes(None));
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert_eq!(Token::new("short").unwrap_err(), TokenTextError::TooShort);
        assert!(TokenTextError::TooShort.to_string().contains("at least 16"));
        assert_eq!(
            Token::new("has a space in the middle").unwrap_err(),
            TokenTextError::NotPrintable
        );
    }

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        let dir = std::env::temp_dir().join(format!("braidd-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("token");
        std::fs::write(&p, "0123456789abcdef0123\n").unwrap();
        let uid = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Token::from_file(&p, uid).unwrap_err().to_string();
        assert!(e.contains("mode 0o644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Token::from_file(&p, uid).unwrap().matches("0123456789abcdef0123"));
        let e = Token::from_file(&p, uid + 1).unwrap_err().to_string();
        assert!(e.contains("chown"), "{e}");
        let e = Token::from_file(&dir.join("none"), uid).unwrap_err().to_string();
        assert!(e.starts_with(&format!("token file {}", dir.join("none").display())), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_migrate_key_tags_what_it_is_given_and_nothing_else() {
        let k = MigrateKey::new(b"0123456789abcdef0123456789abcdef\n").unwrap();
        let same = MigrateKey::new(b"  0123456789abcdef0123456789abcdef").unwrap();
        let other = MigrateKey::new(b"0123456789abcdef0123456789abcdeF").unwrap();
        let tag = k.tag(b"offer", &[1; 32], b"{}");
        assert!(same.verifies(b"offer", &[1; 32], b"{}", &tag));
        assert!(!other.verifies(b"offer", &[1; 32], b"{}", &tag));
        assert!(!k.verifies(b"answer", &[1; 32], b"{}", &tag));
        assert!(!k.verifies(b"offer", &[2; 32], b"{}", &tag));
        assert!(!k.verifies(b"offer", &[1; 32], b"{ }", &tag));
        assert!(!k.verifies(b"offer", &[1; 32], b"{}", &tag[..31]));
        // The parts are length-prefixed: moving a byte between them changes the tag.
        assert_ne!(k.tag(b"ab", b"c", b""), k.tag(b"a", b"bc", b""));
        assert_eq!(format!("{k:?}"), "MigrateKey(<redacted>)");
        assert_eq!(MigrateKey::new(&[b'x'; 31]).unwrap_err(), TokenTextError::KeyTooShort);
    }

    #[test]
    fn a_migrate_key_file_is_checked_like_the_token_file() {
        let dir = std::env::temp_dir().join(format!("braidd-migrate-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("key");
        std::fs::write(&p, "short\n").unwrap();
        let uid = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = MigrateKey::from_file(&p, uid).unwrap_err().to_string();
        assert!(e.starts_with("migrate key file") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = MigrateKey::from_file(&p, uid).unwrap_err().to_string();
        assert!(e.contains("at least 32 bytes"), "{e}");
        std::fs::write(&p, vec![b'k'; 5000]).unwrap();
        let e = MigrateKey::from_file(&p, uid).unwrap_err().to_string();
        assert!(e.contains("more than 4 KiB"), "{e}");
        std::fs::write(&p, format!("{}\n", "ab".repeat(32))).unwrap();
        let k = MigrateKey::from_file(&p, uid).unwrap();
        let t = k.tag(b"l", b"c", b"b");
        assert!(MigrateKey::new("ab".repeat(32).as_bytes())
            .unwrap()
            .verifies(b"l", b"c", b"b", &t));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
