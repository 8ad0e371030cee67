//! The bearer token of the TCP API.
//!
//! Read once at start from a file that only braidd's user may read (mode
//! `0600` or stricter, owned by braidd's uid); anything else is refused,
//! as is a token shorter than [`MIN_TOKEN_BYTES`]. Only a SHA-256 digest
//! of it is kept; a presented token is hashed the same way and the two
//! digests are compared in constant time (so neither the token's bytes
//! nor its length show in the timing). The token is never logged: this
//! type's `Debug` prints nothing of it.

use std::path::{Path, PathBuf};

use aws_lc_rs::digest;

/// Shortest token accepted.
pub const MIN_TOKEN_BYTES: usize = 16;

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {path}: mode {mode:#o} lets others read it; chmod 600 it")]
    Mode { path: PathBuf, mode: u32 },
    #[error("token file {path}: owned by uid {owner}, braidd runs as uid {uid}; chown it")]
    Owner { path: PathBuf, owner: u32, uid: u32 },
    #[error("token file {path}: {source}")]
    Content {
        path: PathBuf,
        #[source]
        source: TokenTextError,
    },
}

/// Why a token's text cannot be a bearer token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenTextError {
    #[error("the token must be at least {MIN_TOKEN_BYTES} bytes")]
    TooShort,
    #[error("the token must be printable ASCII without spaces (it goes into an HTTP header)")]
    NotPrintable,
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
        use std::os::unix::fs::MetadataExt;
        let read = |source| TokenError::Read { path: path.to_path_buf(), source };
        let meta = std::fs::metadata(path).map_err(read)?;
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokenError::Mode { path: path.to_path_buf(), mode });
        }
        if meta.uid() != uid {
            return Err(TokenError::Owner { path: path.to_path_buf(), owner: meta.uid(), uid });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Token::new(&text).map_err(|source| TokenError::Content { path: path.to_path_buf(), source })
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
}
