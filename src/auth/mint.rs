//! Token minting for `gateway token` (development, tests, load tests): signs
//! with the configured HMAC key only, so a minted token is exactly what the
//! same configuration's [`Verifier`](super::Verifier) accepts. There is no
//! path that signs with an asymmetric key: those private keys belong to the
//! identity provider, never to the gateway.

use std::fmt;

use jsonwebtoken::{EncodingKey, Header, get_current_timestamp};
use serde::Serialize;

use super::{ALGORITHMS, AuthSetupError, KeyKind, hmac_secret};
use crate::config::AuthConfig;

/// What to put in a minted token.
#[derive(Debug, Clone, Default)]
pub struct MintRequest {
    /// The `sub` claim (user id); must not be empty.
    pub sub: String,
    /// Patterns for the `rooms` claim; omitted from the token when empty.
    pub rooms: Vec<String>,
    /// Patterns for the `publish` claim; omitted from the token when empty.
    pub publish: Vec<String>,
    /// Lifetime: `exp` = now + this.
    pub ttl_seconds: u64,
}

/// Why no token was minted.
#[derive(Debug)]
pub enum MintError {
    /// No HMAC secret, or no HS* algorithm in `auth.algorithms`.
    NoHmacKey,
    /// `auth.hs_secret_file` could not be used.
    Key(AuthSetupError),
    /// The request's `sub` is empty; the verifier would refuse the token.
    EmptySub,
    /// jsonwebtoken failed to sign.
    Sign(jsonwebtoken::errors::Error),
}

impl fmt::Display for MintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MintError::NoHmacKey => f.write_str(
                "cannot mint: no HMAC key configured; set auth.hs_secret (or the \
                 GATEWAY_AUTH_HS_SECRET environment variable, or auth.hs_secret_file) \
                 and list an HS* algorithm in auth.algorithms",
            ),
            MintError::Key(e) => write!(f, "cannot mint: {e}"),
            MintError::EmptySub => f.write_str("cannot mint: the subject (--sub) is empty"),
            MintError::Sign(e) => write!(f, "cannot mint: signing failed: {e}"),
        }
    }
}

impl std::error::Error for MintError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MintError::Key(e) => Some(e),
            MintError::Sign(e) => Some(e),
            MintError::NoHmacKey | MintError::EmptySub => None,
        }
    }
}

#[derive(Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    iss: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    aud: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    rooms: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    publish: &'a [String],
}

/// Mints a token signed with the configured HMAC key, using the first HS*
/// algorithm of `auth.algorithms`. Adds `iat`, `exp` = now + ttl, and
/// `iss` / `aud` when configured.
pub fn mint(cfg: &AuthConfig, req: &MintRequest) -> Result<String, MintError> {
    if req.sub.is_empty() {
        return Err(MintError::EmptySub);
    }
    let alg = cfg
        .algorithms
        .iter()
        .filter_map(|name| ALGORITHMS.iter().find(|(known, _)| known == name))
        .map(|&(_, alg)| alg)
        .find(|&alg| KeyKind::Hmac.serves(alg))
        .ok_or(MintError::NoHmacKey)?;
    let secret = hmac_secret(cfg)
        .map_err(MintError::Key)?
        .ok_or(MintError::NoHmacKey)?;
    let now = get_current_timestamp();
    let claims = MintClaims {
        sub: &req.sub,
        iat: now,
        exp: now.saturating_add(req.ttl_seconds),
        iss: &cfg.issuer,
        aud: &cfg.audience,
        rooms: &req.rooms,
        publish: &req.publish,
    };
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(&secret),
    )
    .map_err(MintError::Sign)
}

#[cfg(test)]
mod tests {
    use super::super::Verifier;
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::Algorithm;

    const SECRET: &str = "mint-secret-0123456789abcdef0123456789";

    fn cfg() -> AuthConfig {
        AuthConfig {
            hs_secret: SECRET.into(),
            ..AuthConfig::default()
        }
    }

    fn req(sub: &str) -> MintRequest {
        MintRequest {
            sub: sub.into(),
            ttl_seconds: 300,
            ..MintRequest::default()
        }
    }

    fn header_alg(token: &str) -> Algorithm {
        jsonwebtoken::decode_header(token).unwrap().alg
    }

    fn payload(token: &str) -> serde_json::Value {
        let part = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn minted_token_verifies_with_the_same_config() {
        let cfg = AuthConfig {
            issuer: "gw-dev".into(),
            audience: "gateway".into(),
            ..cfg()
        };
        let request = MintRequest {
            rooms: vec!["lobby".into(), "team-42:*".into()],
            publish: vec!["lobby".into()],
            ..req("alice")
        };
        let token = mint(&cfg, &request).unwrap();
        let id = Verifier::from_config(&cfg).unwrap().verify(&token).unwrap();
        assert_eq!(&*id.user, "alice");
        assert!(id.rooms.allows("team-42:x") && id.publish.allows("lobby"));
        assert!(!id.publish.allows("team-42:x"));
        let now = get_current_timestamp();
        assert!((now + 299..=now + 301).contains(&id.expires_at));
        let claims = payload(&token);
        assert_eq!(claims["iss"], "gw-dev");
        assert_eq!(claims["aud"], "gateway");
        assert!(claims["iat"].is_u64());
    }

    #[test]
    fn empty_grants_and_unset_iss_aud_are_omitted() {
        let claims = payload(&mint(&cfg(), &req("bob")).unwrap());
        let object = claims.as_object().unwrap();
        for absent in ["rooms", "publish", "iss", "aud"] {
            assert!(!object.contains_key(absent), "{absent} in {claims}");
        }
    }

    #[test]
    fn signs_with_the_first_hs_algorithm() {
        let cfg = AuthConfig {
            algorithms: vec!["RS256".into(), "HS512".into(), "HS256".into()],
            public_key_file: format!("{}/tests/keys/rsa_public.pem", env!("CARGO_MANIFEST_DIR")),
            ..cfg()
        };
        let token = mint(&cfg, &req("a")).unwrap();
        assert_eq!(header_alg(&token), Algorithm::HS512);
        assert!(Verifier::from_config(&cfg).unwrap().verify(&token).is_ok());
    }

    #[test]
    fn refuses_without_hmac_key_or_algorithm() {
        let no_secret = mint(&AuthConfig::default(), &req("a")).unwrap_err();
        assert!(matches!(no_secret, MintError::NoHmacKey));
        assert!(no_secret.to_string().contains("auth.hs_secret"));
        let no_hs = AuthConfig {
            algorithms: vec!["RS256".into()],
            ..cfg()
        };
        assert!(matches!(mint(&no_hs, &req("a")), Err(MintError::NoHmacKey)));
        assert!(matches!(mint(&cfg(), &req("")), Err(MintError::EmptySub)));
        let unreadable = AuthConfig {
            hs_secret: String::new(),
            hs_secret_file: "/nonexistent/gateway-secret".into(),
            ..AuthConfig::default()
        };
        assert!(matches!(
            mint(&unreadable, &req("a")),
            Err(MintError::Key(_))
        ));
    }
}
