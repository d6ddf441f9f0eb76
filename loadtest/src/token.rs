//! Tokens for the sockets: minted here from the gateway's HMAC secret (HS256,
//! claims `sub`, `iat`, `exp`, `rooms`), or read from a file of ready-made ones.
//!
//! Minting happens in the workers, per socket, just before connecting, so no
//! list of 100,000 tokens is ever held or shipped between processes.

use std::path::Path;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

/// Mints HS256 tokens with one key and lifetime.
pub struct Minter {
    key: EncodingKey,
    header: Header,
    ttl_secs: u64,
    rooms: Vec<String>,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    rooms: &'a [String],
}

/// Why a token could not be minted or read.
#[derive(Debug)]
pub enum TokenError {
    /// The signing library refused.
    Sign(jsonwebtoken::errors::Error),
    /// The tokens file could not be read.
    Read(std::io::Error),
    /// A line of the tokens file is not a JWT with a `sub` claim.
    BadLine {
        /// 1-based line number.
        line: usize,
    },
    /// The tokens file has no tokens.
    Empty,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Sign(e) => write!(f, "signing a token failed: {e}"),
            TokenError::Read(e) => write!(f, "reading the tokens file failed: {e}"),
            TokenError::BadLine { line } => {
                write!(f, "tokens file line {line} is not a JWT with a `sub` claim")
            }
            TokenError::Empty => write!(f, "the tokens file holds no tokens"),
        }
    }
}

impl std::error::Error for TokenError {}

impl Minter {
    /// A minter whose tokens allow the given room patterns (e.g. `lt-*`).
    pub fn new(secret: &str, ttl_secs: u64, rooms: Vec<String>) -> Minter {
        Minter {
            key: EncodingKey::from_secret(secret.as_bytes()),
            header: Header::new(Algorithm::HS256),
            ttl_secs,
            rooms,
        }
    }

    /// A token for user `sub`, valid from now for the minter's lifetime.
    pub fn mint(&self, sub: &str) -> Result<String, TokenError> {
        let iat = crate::now_micros() / 1_000_000;
        let claims = Claims {
            sub,
            iat,
            exp: iat + self.ttl_secs,
            rooms: &self.rooms,
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key).map_err(TokenError::Sign)
    }
}

/// One token read from a file, with the user it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    /// The JWT.
    pub token: String,
    /// Its `sub` claim (read without verifying: the gateway verifies).
    pub sub: String,
}

/// Reads a tokens file: one JWT per line; blank lines and `#` comments skipped.
pub fn load_tokens(path: &Path) -> Result<Vec<TokenEntry>, TokenError> {
    let text = std::fs::read_to_string(path).map_err(TokenError::Read)?;
    parse_tokens(&text)
}

/// Parses the text of a tokens file.
pub fn parse_tokens(text: &str) -> Result<Vec<TokenEntry>, TokenError> {
    #[derive(Deserialize)]
    struct Sub {
        sub: String,
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let claims: Sub = jsonwebtoken::dangerous::insecure_decode_claims(line)
            .map_err(|_| TokenError::BadLine { line: i + 1 })?;
        out.push(TokenEntry {
            token: line.to_owned(),
            sub: claims.sub,
        });
    }
    if out.is_empty() {
        return Err(TokenError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, decode};

    #[derive(Deserialize)]
    struct Back {
        sub: String,
        exp: u64,
        iat: u64,
        rooms: Vec<String>,
    }

    #[test]
    fn minted_tokens_verify_with_the_same_secret_only() {
        let m = Minter::new("dev-secret", 60, vec!["lt-*".into()]);
        let t = m.mint("alice").unwrap();
        let back = decode::<Back>(
            &t,
            &DecodingKey::from_secret(b"dev-secret"),
            &Validation::new(Algorithm::HS256),
        )
        .unwrap()
        .claims;
        assert_eq!(back.sub, "alice");
        assert_eq!(back.exp - back.iat, 60);
        assert_eq!(back.rooms, vec!["lt-*".to_owned()]);
        assert!(
            decode::<Back>(
                &t,
                &DecodingKey::from_secret(b"other"),
                &Validation::new(Algorithm::HS256)
            )
            .is_err()
        );
    }

    #[test]
    fn token_files_yield_subs_and_reject_junk() {
        let m = Minter::new("s", 60, vec![]);
        let text = format!(
            "# tokens\n{}\n\n{}\n",
            m.mint("u1").unwrap(),
            m.mint("u2").unwrap()
        );
        let got = parse_tokens(&text).unwrap();
        assert_eq!(
            got.iter().map(|t| t.sub.as_str()).collect::<Vec<_>>(),
            ["u1", "u2"]
        );
        assert!(matches!(
            parse_tokens("not-a-jwt\n"),
            Err(TokenError::BadLine { line: 1 })
        ));
        assert!(matches!(
            parse_tokens("# only a comment\n"),
            Err(TokenError::Empty)
        ));
    }
}
