//! JWT verification at the upgrade (and on `refresh`): algorithms pinned by
//! configuration, keys loaded once at start-up (HMAC secret, PEM public key,
//! JWKS by `kid`), and every refusal reduced to one [`AuthError`] fact.
//!
//! Tokens are secrets: nothing here logs, formats or stores a token, and the
//! `Debug` of [`Verifier`] names key kinds, never key bytes.

mod grants;
mod jwks;
mod mint;
mod revocation;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rustc_hash::FxHashMap;
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::config::{AuthConfig, DEV_HS_SECRET};

pub use grants::Grants;
pub use mint::{MintError, MintRequest, mint};
pub use revocation::Revocations;

/// Algorithm names accepted in `auth.algorithms`, as they appear in a token's
/// `alg` header (case-sensitive, like the header).
const ALGORITHMS: [(&str, Algorithm); 12] = [
    ("HS256", Algorithm::HS256),
    ("HS384", Algorithm::HS384),
    ("HS512", Algorithm::HS512),
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

/// The supported names, for messages: derived from the table, never a copy.
fn supported() -> String {
    ALGORITHMS
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// HMAC secrets shorter than this are refused, whether inline or from a
/// file: RFC 7518 asks for a key at least as long as the hash output.
const MIN_HS_SECRET_BYTES: usize = 32;

/// Who a verified token speaks for, and what it lets them do.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The `sub` claim: a non-empty user id.
    pub user: Arc<str>,
    /// The `exp` claim, in unix seconds: a live connection must `refresh` before it.
    pub expires_at: u64,
    /// The `rooms` claim: rooms this user may subscribe to.
    pub rooms: Grants,
    /// The `publish` claim: rooms this user may publish to from the client.
    pub publish: Grants,
    /// The `jti` claim, if any (revocable by it).
    pub jti: Option<Arc<str>>,
    /// The `iat` claim in unix seconds, if any (revocable by user + issued_before).
    pub issued_at: Option<u64>,
}

/// Why a token was refused. Every variant maps to HTTP 401 at the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No token was sent.
    Missing,
    /// Not three base64url parts, or a part is not the JSON it should be
    /// (including claims of the wrong type, e.g. a numeric `sub`).
    Malformed,
    /// `exp` is in the past by more than the leeway.
    Expired,
    /// `nbf` or `iat` is in the future by more than the leeway.
    NotYetValid,
    /// The signature does not verify with the selected key.
    BadSignature,
    /// The header `alg` is not in `auth.algorithms` (this includes `none`).
    AlgorithmNotAllowed,
    /// `iss` differs from `auth.issuer`, or is absent while one is configured.
    BadIssuer,
    /// `aud` does not contain `auth.audience`, or is absent while one is configured.
    BadAudience,
    /// No configured key fits the token: unknown `kid`, or no key for its algorithm.
    UnknownKey,
    /// `sub` or `exp` is absent, or `sub` is empty.
    MissingClaim,
    /// A `refresh` token names another user than the connection's.
    SubMismatch,
    /// `exp` lies further ahead than `auth.max_token_lifetime_seconds`.
    LifetimeTooLong,
    /// The token was revoked through the server API (by `jti`, or by user
    /// and issue time).
    Revoked,
}

impl AuthError {
    /// Every variant, for pre-registering metric label sets.
    pub const ALL: [AuthError; 13] = [
        AuthError::Missing,
        AuthError::Malformed,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::BadSignature,
        AuthError::AlgorithmNotAllowed,
        AuthError::BadIssuer,
        AuthError::BadAudience,
        AuthError::UnknownKey,
        AuthError::MissingClaim,
        AuthError::Revoked,
        AuthError::SubMismatch,
        AuthError::LifetimeTooLong,
    ];

    /// Low-cardinality snake_case label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::BadSignature => "bad_signature",
            AuthError::AlgorithmNotAllowed => "algorithm",
            AuthError::BadIssuer => "issuer",
            AuthError::BadAudience => "audience",
            AuthError::UnknownKey => "unknown_key",
            AuthError::MissingClaim => "missing_claim",
            AuthError::SubMismatch => "sub_mismatch",
            AuthError::LifetimeTooLong => "lifetime",
            AuthError::Revoked => "revoked",
        }
    }

    /// Human text for the JSON error body; never contains the token.
    pub fn message(&self) -> &'static str {
        match self {
            AuthError::Missing => {
                "missing token: send `Authorization: Bearer <JWT>` or the `token` query parameter"
            }
            AuthError::Malformed => "malformed token",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not yet valid (nbf or iat is in the future)",
            AuthError::BadSignature => "token signature does not verify",
            AuthError::AlgorithmNotAllowed => "token signing algorithm not accepted",
            AuthError::BadIssuer => "token issuer not accepted",
            AuthError::BadAudience => "token audience not accepted",
            AuthError::UnknownKey => "no key known for this token (unknown kid or algorithm)",
            AuthError::MissingClaim => "token lacks a required claim (non-empty sub, exp)",
            AuthError::SubMismatch => "refreshed token is for a different user",
            AuthError::Revoked => "token revoked",
            AuthError::LifetimeTooLong => {
                "token lifetime exceeds the maximum this gateway accepts (auth.max_token_lifetime_seconds)"
            }
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for AuthError {}

/// Why the `[auth]` configuration cannot produce a [`Verifier`]. The message
/// starts with the config key at fault and never contains key material.
#[derive(Debug)]
pub enum AuthSetupError {
    /// `auth.algorithms` is empty.
    NoAlgorithms,
    /// `auth.algorithms` names an algorithm the gateway does not support.
    UnknownAlgorithm {
        /// The name as configured.
        name: String,
    },
    /// Both `auth.hs_secret` and `auth.hs_secret_file` are set.
    ConflictingSecrets,
    /// A key file could not be read.
    Read {
        /// The config key naming the file.
        key: &'static str,
        /// The path as configured.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key file was read but holds no usable key.
    BadKey {
        /// The config key naming the file.
        key: &'static str,
        /// The path as configured.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An algorithm in `auth.algorithms` has no key to verify it with.
    MissingKey {
        /// The algorithm lacking a key.
        algorithm: &'static str,
    },
    /// The HMAC secret is shorter than RFC 7518 asks for (its hash's size).
    ShortSecret {
        /// `auth.hs_secret` or `auth.hs_secret_file`.
        key: &'static str,
        /// Its length in bytes (never its value).
        len: usize,
    },
}

impl AuthSetupError {
    /// The configuration key at fault, e.g. `auth.public_key_file`.
    pub fn key(&self) -> &'static str {
        match self {
            AuthSetupError::NoAlgorithms | AuthSetupError::UnknownAlgorithm { .. } => {
                "auth.algorithms"
            }
            AuthSetupError::ConflictingSecrets => "auth.hs_secret_file",
            AuthSetupError::Read { key, .. }
            | AuthSetupError::BadKey { key, .. }
            | AuthSetupError::ShortSecret { key, .. } => key,
            AuthSetupError::MissingKey { algorithm } if algorithm.starts_with("HS") => {
                "auth.hs_secret"
            }
            AuthSetupError::MissingKey { .. } => "auth.public_key_file",
        }
    }
}

impl AuthSetupError {
    /// What is wrong, without the key (the message of a config `Problem`).
    pub fn detail(&self) -> String {
        match self {
            AuthSetupError::NoAlgorithms => format!("empty; list at least one of {}", supported()),
            AuthSetupError::UnknownAlgorithm { name } => {
                format!("unsupported algorithm {name:?}; supported: {}", supported())
            }
            AuthSetupError::ConflictingSecrets => {
                "set together with auth.hs_secret; set only one of them".to_owned()
            }
            AuthSetupError::Read { path, source, .. } => format!("cannot read {path}: {source}"),
            AuthSetupError::BadKey { path, reason, .. } => format!("{path}: {reason}"),
            AuthSetupError::MissingKey { algorithm } if algorithm.starts_with("HS") => format!(
                "{algorithm} needs an HMAC secret: set auth.hs_secret in the config file, \
                 GATEWAY_AUTH_HS_SECRET in the environment, or auth.hs_secret_file \
                 (a file holding the secret)"
            ),
            AuthSetupError::MissingKey { algorithm } => format!(
                "{algorithm} needs a public key: set auth.public_key_file (PEM) or \
                 auth.jwks_file (a JWKS file whose keys are selected by the token's kid), \
                 or GATEWAY_AUTH_PUBLIC_KEY_FILE / GATEWAY_AUTH_JWKS_FILE"
            ),
            AuthSetupError::ShortSecret { len, .. } => format!(
                "must be at least {MIN_HS_SECRET_BYTES} bytes (got {len}); \
                 use at least {MIN_HS_SECRET_BYTES} random bytes"
            ),
        }
    }
}

impl fmt::Display for AuthSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key(), self.detail())
    }
}

impl std::error::Error for AuthSetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AuthSetupError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What a key is, which decides the algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Hmac,
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    fn serves(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (KeyKind::Hmac, HS256 | HS384 | HS512)
                | (KeyKind::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::P256, ES256)
                | (KeyKind::P384, ES384)
                | (KeyKind::Ed25519, EdDSA)
        )
    }

    fn describe(self) -> &'static str {
        match self {
            KeyKind::Hmac => "an HMAC secret",
            KeyKind::Rsa => "an RSA key",
            KeyKind::P256 => "an EC P-256 key",
            KeyKind::P384 => "an EC P-384 key",
            KeyKind::Ed25519 => "an Ed25519 key",
        }
    }
}

/// A decoding key, built once at start-up, with the algorithms it may verify.
struct Key {
    kind: KeyKind,
    /// A JWK's `alg`: when present, the key verifies that algorithm only.
    only: Option<Algorithm>,
    decoding: DecodingKey,
}

impl Key {
    fn serves(&self, alg: Algorithm) -> bool {
        self.kind.serves(alg) && self.only.is_none_or(|only| only == alg)
    }
}

/// One configured algorithm. Each has its own `Validation` because
/// jsonwebtoken refuses a `Validation` listing algorithms of several families.
struct Pinned {
    name: &'static str,
    alg: Algorithm,
    validation: Validation,
}

/// Verifies tokens against the `[auth]` configuration. Built once at
/// start-up; share it behind an `Arc`.
///
/// Key selection: when a JWKS is configured and the token carries a `kid`,
/// the JWKS key with that `kid` must exist and fit the token's algorithm;
/// otherwise (no `kid`, or no JWKS) the first static key (`hs_secret`,
/// `public_key_file`) that fits the algorithm is used. No fitting key is
/// [`AuthError::UnknownKey`].
pub struct Verifier {
    algorithms: Vec<Pinned>,
    static_keys: Vec<Key>,
    jwks: FxHashMap<Box<str>, Key>,
    leeway: u64,
    /// Longest remaining lifetime a token may have; 0 = unlimited.
    max_lifetime: u64,
    warnings: Vec<String>,
}

impl fmt::Debug for Verifier {
    // Hand-written so that no key byte can ever reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&str> = self.jwks.keys().map(|kid| &**kid).collect();
        kids.sort_unstable();
        f.debug_struct("Verifier")
            .field(
                "algorithms",
                &self.algorithms.iter().map(|p| p.name).collect::<Vec<_>>(),
            )
            .field(
                "static_keys",
                &self.static_keys.iter().map(|k| k.kind).collect::<Vec<_>>(),
            )
            .field("jwks_kids", &kids)
            .field("leeway", &self.leeway)
            .field("max_lifetime", &self.max_lifetime)
            .finish()
    }
}

/// The header fields we act on. `crit` is only detected: no extension is
/// understood, so RFC 7515 says a token naming any must be refused.
#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(default, borrow)]
    kid: Option<Cow<'a, str>>,
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

/// The claims we read. `sub` and `exp` are optional here so that their
/// absence reaches jsonwebtoken's required-claim check (-> `MissingClaim`)
/// instead of failing deserialisation (-> `Malformed`).
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    /// Checked by jsonwebtoken (which accepts integer or float seconds).
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    iat: Option<f64>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<Vec<String>>,
}

impl Verifier {
    /// Builds the verifier: parses `auth.algorithms`, loads every key, and
    /// checks that each configured algorithm has a key. `Err` holds every
    /// problem with `[auth]`, each naming its key. This is the one place the
    /// algorithm table and the secret policy are applied: `check-config` and
    /// `serve` both come here.
    pub fn from_config(cfg: &AuthConfig) -> Result<Verifier, Vec<AuthSetupError>> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let algorithms = pinned_algorithms(cfg, &mut errors);
        let uses = |kind: KeyKind| algorithms.iter().any(|p| kind.serves(p.alg));
        // A key that failed to load makes "no key for RS256" noise: say it once.
        let mut key_failed = false;

        let mut static_keys = Vec::new();
        match hmac_secret(cfg) {
            Ok(None) => {}
            Ok(Some(secret)) => {
                let key = if cfg.hs_secret.is_empty() {
                    "auth.hs_secret_file"
                } else {
                    "auth.hs_secret"
                };
                if secret.len() < MIN_HS_SECRET_BYTES {
                    errors.push(AuthSetupError::ShortSecret {
                        key,
                        len: secret.len(),
                    });
                    key_failed = true;
                } else if uses(KeyKind::Hmac) {
                    static_keys.push(Key {
                        kind: KeyKind::Hmac,
                        only: None,
                        decoding: DecodingKey::from_secret(&secret),
                    });
                } else {
                    warnings.push(
                        "auth: an HMAC secret is configured but auth.algorithms lists no HS* \
                         algorithm; it is not used to verify tokens"
                            .to_owned(),
                    );
                }
                if cfg.hs_secret == DEV_HS_SECRET {
                    warnings.push(
                        "auth.hs_secret is the repository's DEVELOPMENT secret: anyone can mint \
                         tokens; set GATEWAY_AUTH_HS_SECRET in production"
                            .to_owned(),
                    );
                }
            }
            Err(e) => {
                errors.push(e);
                key_failed = true;
            }
        }
        if !cfg.public_key_file.is_empty() {
            match load_public_key_file(&cfg.public_key_file) {
                Ok(key) => {
                    if !uses(key.kind) {
                        warnings.push(format!(
                            "auth.public_key_file holds {} but auth.algorithms lists no \
                             algorithm it verifies; it is not used",
                            key.kind.describe()
                        ));
                    }
                    static_keys.push(key);
                }
                Err(e) => {
                    errors.push(e);
                    key_failed = true;
                }
            }
        }
        let jwks = if cfg.jwks_file.is_empty() {
            FxHashMap::default()
        } else {
            jwks::load(&cfg.jwks_file).unwrap_or_else(|e| {
                errors.push(e);
                key_failed = true;
                FxHashMap::default()
            })
        };

        if !key_failed {
            for pinned in &algorithms {
                let has_key = static_keys
                    .iter()
                    .chain(jwks.values())
                    .any(|k| k.serves(pinned.alg));
                if !has_key {
                    errors.push(AuthSetupError::MissingKey {
                        algorithm: pinned.name,
                    });
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Verifier {
            algorithms,
            static_keys,
            jwks,
            leeway: cfg.leeway_seconds,
            max_lifetime: cfg.max_token_lifetime_seconds,
            warnings,
        })
    }

    /// Things allowed but dangerous in `[auth]`, found while building
    /// (`serve` logs them, `check-config` prints them).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Verifies a token and returns who it speaks for. Checks, in order:
    /// shape and header, pinned algorithm, key, signature, then claims (so a
    /// forged token never learns which claim would have failed).
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header_bytes = split_header(token)?;
        let header: RawHeader<'_> =
            serde_json::from_slice(&header_bytes).map_err(|_| AuthError::Malformed)?;
        if header.crit.is_some() {
            return Err(AuthError::Malformed);
        }
        let pinned = self
            .algorithms
            .iter()
            .find(|p| p.name == header.alg)
            .ok_or(AuthError::AlgorithmNotAllowed)?;
        let key = self.select_key(pinned.alg, header.kid.as_deref())?;

        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &pinned.validation)
            .map_err(|e| map_error(e.kind()))?;
        let claims = data.claims;

        let user = match claims.sub {
            Some(sub) if !sub.is_empty() => Arc::<str>::from(sub),
            _ => return Err(AuthError::MissingClaim),
        };
        let exp = claims.exp.ok_or(AuthError::MissingClaim)?;
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(iat) = claims.iat
            && iat > now.saturating_add(self.leeway) as f64
        {
            return Err(AuthError::NotYetValid);
        }
        // A token valid for centuries is a mistake or an attack; either way
        // it must not reach deadline arithmetic.
        if self.max_lifetime > 0 && exp > now.saturating_add(self.max_lifetime) as f64 {
            return Err(AuthError::LifetimeTooLong);
        }
        Ok(Identity {
            user,
            // `as` saturates; the floor errs towards closing a connection early.
            expires_at: exp as u64,
            rooms: claims
                .rooms
                .as_deref()
                .map(Grants::parse)
                .unwrap_or_default(),
            publish: claims
                .publish
                .as_deref()
                .map(Grants::parse)
                .unwrap_or_default(),
            jti: claims.jti.map(Into::into),
            issued_at: claims.iat.map(|iat| iat as u64),
        })
    }

    /// Verifies a `refresh` token: as [`verify`](Self::verify), and its `sub`
    /// must equal `user`, the connection's current user.
    pub fn verify_refresh(&self, token: &str, user: &str) -> Result<Identity, AuthError> {
        let identity = self.verify(token)?;
        if &*identity.user != user {
            return Err(AuthError::SubMismatch);
        }
        Ok(identity)
    }

    fn select_key(&self, alg: Algorithm, kid: Option<&str>) -> Result<&Key, AuthError> {
        let key = match kid {
            Some(kid) if !self.jwks.is_empty() => self.jwks.get(kid).filter(|k| k.serves(alg)),
            _ => self.static_keys.iter().find(|k| k.serves(alg)),
        };
        key.ok_or(AuthError::UnknownKey)
    }
}

/// Splits `header.payload.signature` and decodes the header part.
fn split_header(token: &str) -> Result<Vec<u8>, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed)
}

fn map_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::BadIssuer,
        ErrorKind::InvalidAudience => AuthError::BadAudience,
        ErrorKind::InvalidSubject => AuthError::SubMismatch,
        // A required `iss`/`aud` that is absent is reported as the check it fails.
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => AuthError::BadIssuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthError::BadAudience,
        ErrorKind::MissingRequiredClaim(_) => AuthError::MissingClaim,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => AuthError::AlgorithmNotAllowed,
        ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_) => AuthError::UnknownKey,
        ErrorKind::InvalidToken
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => AuthError::Malformed,
        // Signing/provider failures during verification: the signature did not verify.
        _ => AuthError::BadSignature,
    }
}

fn pinned_algorithms(cfg: &AuthConfig, errors: &mut Vec<AuthSetupError>) -> Vec<Pinned> {
    if cfg.algorithms.is_empty() {
        errors.push(AuthSetupError::NoAlgorithms);
    }
    let mut pinned: Vec<Pinned> = Vec::with_capacity(cfg.algorithms.len());
    for configured in &cfg.algorithms {
        let Some(&(name, alg)) = ALGORITHMS
            .iter()
            .find(|(name, _)| *name == configured.as_str())
        else {
            errors.push(AuthSetupError::UnknownAlgorithm {
                name: configured.clone(),
            });
            continue;
        };
        if pinned.iter().any(|p| p.alg == alg) {
            continue;
        }
        pinned.push(Pinned {
            name,
            alg,
            validation: validation(cfg, alg),
        });
    }
    pinned
}

/// jsonwebtoken's defaults are too lax for us: 60 s leeway, no `nbf` check,
/// and `iss`/`aud` checked only when the token carries them. Everything is
/// set explicitly here.
fn validation(cfg: &AuthConfig, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = cfg.leeway_seconds;
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    if !cfg.issuer.is_empty() {
        v.set_issuer(&[cfg.issuer.as_str()]);
        required.push("iss");
    }
    if cfg.audience.is_empty() {
        // Otherwise jsonwebtoken refuses every token that carries an `aud`.
        v.validate_aud = false;
    } else {
        v.validate_aud = true;
        v.set_audience(&[cfg.audience.as_str()]);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v
}

/// The configured HMAC secret (`auth.hs_secret` or the content of
/// `auth.hs_secret_file` without its trailing newline), if any.
pub(crate) fn hmac_secret(cfg: &AuthConfig) -> Result<Option<Vec<u8>>, AuthSetupError> {
    match (cfg.hs_secret.is_empty(), cfg.hs_secret_file.is_empty()) {
        (true, true) => Ok(None),
        (false, true) => Ok(Some(cfg.hs_secret.as_bytes().to_vec())),
        (false, false) => Err(AuthSetupError::ConflictingSecrets),
        (true, false) => {
            let path = &cfg.hs_secret_file;
            let mut bytes = std::fs::read(path).map_err(|source| AuthSetupError::Read {
                key: "auth.hs_secret_file",
                path: path.clone(),
                source,
            })?;
            while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                bytes.pop();
            }
            if bytes.is_empty() {
                return Err(AuthSetupError::BadKey {
                    key: "auth.hs_secret_file",
                    path: path.clone(),
                    reason: "the file is empty".into(),
                });
            }
            Ok(Some(bytes))
        }
    }
}

/// Loads `auth.public_key_file`: a PEM public key (SPKI `PUBLIC KEY`, or
/// PKCS#1 `RSA PUBLIC KEY`) of RSA (>= 2048 bits), EC P-256/P-384 or Ed25519.
fn load_public_key_file(path: &str) -> Result<Key, AuthSetupError> {
    const KEY: &str = "auth.public_key_file";
    let bad = |reason: &str| AuthSetupError::BadKey {
        key: KEY,
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let pem = std::fs::read(path).map_err(|source| AuthSetupError::Read {
        key: KEY,
        path: path.to_owned(),
        source,
    })?;
    if pem
        .windows(b"PRIVATE KEY".len())
        .any(|w| w == b"PRIVATE KEY")
    {
        return Err(bad(
            "holds a private key; configure its public half (openssl pkey -in KEY -pubout)",
        ));
    }
    let decoding = DecodingKey::from_rsa_pem(&pem)
        .or_else(|_| DecodingKey::from_ec_pem(&pem))
        .or_else(|_| DecodingKey::from_ed_pem(&pem))
        .map_err(|_| bad("not a PEM RSA, EC (P-256/P-384) or Ed25519 public key"))?;
    let kind = classify(&decoding).map_err(|reason| bad(&reason))?;
    Ok(Key {
        kind,
        only: None,
        decoding,
    })
}

/// Checks an asymmetric key's shape at start-up (so a bad key fails here,
/// not as `BadSignature` on every token) and tells what it is.
fn classify(key: &DecodingKey) -> Result<KeyKind, String> {
    use jsonwebtoken::AlgorithmFamily as Family;
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};

    let jwk = Jwk::from_decoding_key(key, None).map_err(|e| format!("unusable key: {e}"))?;
    match (key.family(), &jwk.algorithm) {
        (Family::Hmac, _) => Ok(KeyKind::Hmac),
        (Family::Rsa, AlgorithmParameters::RSA(rsa)) => {
            let n = URL_SAFE_NO_PAD
                .decode(&rsa.n)
                .map_err(|e| format!("bad RSA modulus: {e}"))?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            // The verifier (aws-lc) accepts 2048..=8192-bit moduli only.
            if !(2048..=8192).contains(&bits) {
                return Err(format!(
                    "RSA key of about {bits} bits; 2048 to 8192 are supported"
                ));
            }
            Ok(KeyKind::Rsa)
        }
        (Family::Ec, AlgorithmParameters::EllipticCurve(ec)) => match ec.curve {
            EllipticCurve::P256 => Ok(KeyKind::P256),
            EllipticCurve::P384 => Ok(KeyKind::P384),
            _ => Err("unsupported EC curve; P-256 and P-384 are supported".into()),
        },
        (Family::Ed, _) => Ok(KeyKind::Ed25519),
        _ => Err("unsupported key".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
    use serde_json::{Value, json};

    const SECRET: &str = "test-secret-0123456789abcdef0123456789";

    fn key_path(name: &str) -> String {
        format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn hs_config() -> AuthConfig {
        AuthConfig {
            hs_secret: SECRET.into(),
            ..AuthConfig::default()
        }
    }

    fn now() -> i64 {
        get_current_timestamp() as i64
    }

    fn claims(sub: &str) -> Value {
        json!({ "sub": sub, "exp": now() + 600 })
    }

    fn sign_hs(alg: Algorithm, claims: &Value, secret: &str) -> String {
        encode(
            &Header::new(alg),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn hs(claims: &Value) -> String {
        sign_hs(Algorithm::HS256, claims, SECRET)
    }

    fn sign_pem(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let file = match alg {
            Algorithm::RS256 | Algorithm::PS256 => "rsa_private.pem",
            Algorithm::ES256 => "ec_private.pem",
            Algorithm::EdDSA => "ed25519_private.pem",
            other => panic!("no test key for {other:?}"),
        };
        let pem = std::fs::read(key_path(file)).unwrap();
        let key = match alg {
            Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_ed_pem(&pem),
        }
        .unwrap();
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        encode(&header, claims, &key).unwrap()
    }

    fn verifier(cfg: &AuthConfig) -> Verifier {
        Verifier::from_config(cfg).unwrap()
    }

    fn setup_error(cfg: &AuthConfig) -> String {
        let errors = Verifier::from_config(cfg).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors[0].to_string()
    }

    #[test]
    fn every_setup_problem_is_reported_at_once() {
        let errors = Verifier::from_config(&AuthConfig {
            algorithms: vec!["HS256".into(), "none".into(), "XS1".into()],
            hs_secret: "short".into(),
            public_key_file: key_path("does-not-exist.pem"),
            ..AuthConfig::default()
        })
        .unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|e| e.key()).collect();
        assert_eq!(
            keys,
            [
                "auth.algorithms",
                "auth.algorithms",
                "auth.hs_secret",
                "auth.public_key_file"
            ],
            "{errors:?}"
        );
    }

    #[test]
    fn a_short_secret_is_refused_inline_and_from_a_file() {
        let inline = setup_error(&AuthConfig {
            hs_secret: "short".into(),
            ..AuthConfig::default()
        });
        assert!(
            inline.starts_with("auth.hs_secret: must be at least 32 bytes (got 5)"),
            "{inline}"
        );
        let path = std::env::temp_dir().join(format!("gateway-auth-{}-short", std::process::id()));
        std::fs::write(&path, "short\n").unwrap();
        let file = setup_error(&AuthConfig {
            hs_secret_file: path.to_string_lossy().into_owned(),
            ..AuthConfig::default()
        });
        std::fs::remove_file(&path).unwrap();
        assert!(
            file.starts_with("auth.hs_secret_file: must be at least 32 bytes (got 5)"),
            "{file}"
        );
    }

    #[test]
    fn every_advertised_algorithm_is_accepted_by_the_table() {
        // The config docs, `gateway.toml` and the contract advertise these;
        // each must pass setup given a key of its family.
        for alg in ["HS256", "HS384", "HS512"] {
            verifier(&AuthConfig {
                algorithms: vec![alg.into()],
                ..hs_config()
            });
        }
        for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
            verifier(&pem_config(alg, "rsa_public.pem"));
        }
        verifier(&pem_config("ES256", "ec_public.pem"));
        verifier(&pem_config("EdDSA", "ed25519_public.pem"));
    }

    #[test]
    fn an_absurd_lifetime_is_refused_unless_unlimited() {
        let far = json!({"sub": "a", "exp": 10_000_000_000_000_000_000u64, "iat": now()});
        let token = hs(&far);
        let v = verifier(&AuthConfig {
            max_token_lifetime_seconds: 86_400,
            ..hs_config()
        });
        assert_eq!(v.verify(&token).err(), Some(AuthError::LifetimeTooLong));
        let v = verifier(&AuthConfig {
            max_token_lifetime_seconds: 0,
            ..hs_config()
        });
        assert_eq!(
            v.verify(&token).unwrap().expires_at,
            10_000_000_000_000_000_000
        );
    }

    fn b64(json: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).unwrap())
    }

    #[test]
    fn hs256_token_yields_identity() {
        let v = verifier(&hs_config());
        let exp = now() + 600;
        let token = hs(&json!({
            "sub": "alice", "exp": exp, "rooms": ["lobby", "team-42:*"], "publish": ["lobby"]
        }));
        let id = v.verify(&token).unwrap();
        assert_eq!(&*id.user, "alice");
        assert_eq!(id.expires_at, exp as u64);
        assert!(id.rooms.allows("lobby") && id.rooms.allows("team-42:x"));
        assert!(!id.rooms.allows("team-43:x"));
        assert!(id.publish.allows("lobby") && !id.publish.allows("team-42:x"));
    }

    #[test]
    fn absent_grant_claims_allow_nothing() {
        let id = verifier(&hs_config()).verify(&hs(&claims("bob"))).unwrap();
        assert!(id.rooms.is_empty() && id.publish.is_empty());
    }

    #[test]
    fn other_hmac_sizes_verify_when_configured() {
        let cfg = AuthConfig {
            algorithms: vec!["HS384".into(), "HS512".into()],
            ..hs_config()
        };
        let v = verifier(&cfg);
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            assert!(
                v.verify(&sign_hs(alg, &claims("a"), SECRET)).is_ok(),
                "{alg:?}"
            );
        }
        assert_eq!(
            v.verify(&hs(&claims("a"))).unwrap_err(),
            AuthError::AlgorithmNotAllowed
        );
    }

    fn pem_config(alg: &str, public: &str) -> AuthConfig {
        AuthConfig {
            algorithms: vec![alg.into()],
            public_key_file: key_path(public),
            ..AuthConfig::default()
        }
    }

    #[test]
    fn each_asymmetric_family_verifies_with_a_pem_key() {
        let cases = [
            ("RS256", Algorithm::RS256, "rsa_public.pem"),
            ("PS256", Algorithm::PS256, "rsa_public.pem"),
            ("ES256", Algorithm::ES256, "ec_public.pem"),
            ("EdDSA", Algorithm::EdDSA, "ed25519_public.pem"),
        ];
        for (name, alg, public) in cases {
            let v = verifier(&pem_config(name, public));
            let id = v.verify(&sign_pem(alg, None, &claims("carol"))).unwrap();
            assert_eq!(&*id.user, "carol", "{name}");
            // Tampering with the payload breaks the signature.
            let token = sign_pem(alg, None, &claims("carol"));
            let mut parts: Vec<&str> = token.split('.').collect();
            let forged = b64(&claims("mallory"));
            parts[1] = &forged;
            assert_eq!(
                v.verify(&parts.join(".")).unwrap_err(),
                AuthError::BadSignature,
                "{name}"
            );
        }
    }

    #[test]
    fn hs_and_rs_together() {
        let cfg = AuthConfig {
            algorithms: vec!["HS256".into(), "RS256".into()],
            hs_secret: SECRET.into(),
            public_key_file: key_path("rsa_public.pem"),
            ..AuthConfig::default()
        };
        let v = verifier(&cfg);
        assert!(v.verify(&hs(&claims("a"))).is_ok());
        assert!(
            v.verify(&sign_pem(Algorithm::RS256, None, &claims("a")))
                .is_ok()
        );
    }

    fn jwks_config() -> AuthConfig {
        AuthConfig {
            algorithms: vec!["RS256".into(), "ES256".into(), "PS256".into()],
            jwks_file: key_path("jwks.json"),
            public_key_file: String::new(),
            ..AuthConfig::default()
        }
    }

    #[test]
    fn jwks_selects_key_by_kid() {
        // PS256 is served by no JWKS key (rsa-1 is pinned to RS256): add a PEM for it.
        let cfg = AuthConfig {
            public_key_file: key_path("rsa_public.pem"),
            ..jwks_config()
        };
        let v = verifier(&cfg);
        let rs = sign_pem(Algorithm::RS256, Some("rsa-1"), &claims("a"));
        let es = sign_pem(Algorithm::ES256, Some("ec-1"), &claims("b"));
        assert_eq!(&*v.verify(&rs).unwrap().user, "a");
        assert_eq!(&*v.verify(&es).unwrap().user, "b");
        // A kid whose key does not fit the algorithm is as unknown as a missing kid.
        let wrong = sign_pem(Algorithm::RS256, Some("ec-1"), &claims("a"));
        assert_eq!(v.verify(&wrong).unwrap_err(), AuthError::UnknownKey);
        // The JWK's `alg` pins rsa-1 to RS256, even though the key could do PS256.
        let pinned = sign_pem(Algorithm::PS256, Some("rsa-1"), &claims("a"));
        assert_eq!(v.verify(&pinned).unwrap_err(), AuthError::UnknownKey);
        // Without a kid the static PEM key serves.
        assert!(
            v.verify(&sign_pem(Algorithm::PS256, None, &claims("a")))
                .is_ok()
        );
    }

    #[test]
    fn unknown_key() {
        let cfg = AuthConfig {
            algorithms: vec!["RS256".into(), "ES256".into()],
            ..jwks_config()
        };
        let v = verifier(&cfg);
        let unknown = sign_pem(Algorithm::RS256, Some("rotated-away"), &claims("a"));
        assert_eq!(v.verify(&unknown).unwrap_err(), AuthError::UnknownKey);
        // Only a JWKS configured: a token without kid has no key.
        let no_kid = sign_pem(Algorithm::RS256, None, &claims("a"));
        assert_eq!(v.verify(&no_kid).unwrap_err(), AuthError::UnknownKey);
    }

    #[test]
    fn missing_token() {
        assert_eq!(
            verifier(&hs_config()).verify("").unwrap_err(),
            AuthError::Missing
        );
    }

    #[test]
    fn malformed_tokens() {
        let v = verifier(&hs_config());
        let header = b64(&json!({"alg": "HS256", "typ": "JWT"}));
        let body = b64(&claims("a"));
        let cases = [
            "abc".to_owned(),
            "a.b".to_owned(),
            format!("{header}.{body}.sig.extra"),
            format!("!!!.{body}.sig"),
            format!("{}.{body}.sig", URL_SAFE_NO_PAD.encode("not json")),
            format!("{}.{body}.sig", b64(&json!({"typ": "JWT"}))),
            format!(
                "{}.{body}.sig",
                b64(&json!({"alg": "HS256", "crit": ["b64"]}))
            ),
        ];
        for token in &cases {
            assert_eq!(
                v.verify(token).unwrap_err(),
                AuthError::Malformed,
                "{token}"
            );
        }
        // Correctly signed, but the payload is not JSON or has mistyped claims.
        let signed_raw = |payload: &[u8]| {
            let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
            let sig = jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &EncodingKey::from_secret(SECRET.as_bytes()),
                Algorithm::HS256,
            )
            .unwrap();
            format!("{message}.{sig}")
        };
        assert_eq!(
            v.verify(&signed_raw(b"{not json")).unwrap_err(),
            AuthError::Malformed
        );
        let numeric_sub = json!({"sub": 42, "exp": now() + 60});
        assert_eq!(
            v.verify(&hs(&numeric_sub)).unwrap_err(),
            AuthError::Malformed
        );
        let string_rooms = json!({"sub": "a", "exp": now() + 60, "rooms": "lobby"});
        assert_eq!(
            v.verify(&hs(&string_rooms)).unwrap_err(),
            AuthError::Malformed
        );
    }

    #[test]
    fn expiry_uses_configured_leeway_not_the_crate_default() {
        // jsonwebtoken's default leeway (60 s) would accept this token.
        let v = verifier(&hs_config());
        let expired = hs(&json!({"sub": "a", "exp": now() - 10}));
        assert_eq!(v.verify(&expired).unwrap_err(), AuthError::Expired);
        let within_leeway = hs(&json!({"sub": "a", "exp": now() - 2}));
        assert!(v.verify(&within_leeway).is_ok());
        let strict = verifier(&AuthConfig {
            leeway_seconds: 0,
            ..hs_config()
        });
        assert_eq!(
            strict.verify(&within_leeway).unwrap_err(),
            AuthError::Expired
        );
    }

    #[test]
    fn not_yet_valid() {
        let v = verifier(&hs_config());
        let nbf = hs(&json!({"sub": "a", "exp": now() + 600, "nbf": now() + 60}));
        assert_eq!(v.verify(&nbf).unwrap_err(), AuthError::NotYetValid);
        let nbf_in_leeway = hs(&json!({"sub": "a", "exp": now() + 600, "nbf": now() + 2}));
        assert!(v.verify(&nbf_in_leeway).is_ok());
        let iat = hs(&json!({"sub": "a", "exp": now() + 600, "iat": now() + 60}));
        assert_eq!(v.verify(&iat).unwrap_err(), AuthError::NotYetValid);
        let iat_past = hs(&json!({"sub": "a", "exp": now() + 600, "iat": now() - 60}));
        assert!(v.verify(&iat_past).is_ok());
    }

    #[test]
    fn bad_signature() {
        let v = verifier(&hs_config());
        let other_secret = sign_hs(
            Algorithm::HS256,
            &claims("a"),
            "another-secret-of-some-length",
        );
        assert_eq!(
            v.verify(&other_secret).unwrap_err(),
            AuthError::BadSignature
        );
        let token = hs(&claims("a"));
        let (message, _) = token.rsplit_once('.').unwrap();
        assert_eq!(
            v.verify(&format!("{message}.")).unwrap_err(),
            AuthError::BadSignature
        );
        // A signature that is not base64url is malformed, not merely wrong.
        assert_eq!(
            v.verify(&format!("{message}.@@@")).unwrap_err(),
            AuthError::Malformed
        );
    }

    #[test]
    fn algorithm_not_allowed() {
        let v = verifier(&hs_config());
        let body = b64(&claims("a"));
        for alg in ["none", "None", "hs256", "HS999", ""] {
            let token = format!("{}.{body}.", b64(&json!({"alg": alg, "typ": "JWT"})));
            assert_eq!(
                v.verify(&token).unwrap_err(),
                AuthError::AlgorithmNotAllowed,
                "{alg}"
            );
        }
        let hs384 = sign_hs(Algorithm::HS384, &claims("a"), SECRET);
        assert_eq!(
            v.verify(&hs384).unwrap_err(),
            AuthError::AlgorithmNotAllowed
        );
        // Algorithm confusion: an RS256 token against an HMAC-only verifier.
        let rs = sign_pem(Algorithm::RS256, None, &claims("a"));
        assert_eq!(v.verify(&rs).unwrap_err(), AuthError::AlgorithmNotAllowed);
    }

    #[test]
    fn issuer_checked_only_when_configured() {
        let v = verifier(&AuthConfig {
            issuer: "https://idp".into(),
            ..hs_config()
        });
        let good = hs(&json!({"sub": "a", "exp": now() + 60, "iss": "https://idp"}));
        assert!(v.verify(&good).is_ok());
        let wrong = hs(&json!({"sub": "a", "exp": now() + 60, "iss": "https://evil"}));
        assert_eq!(v.verify(&wrong).unwrap_err(), AuthError::BadIssuer);
        assert_eq!(
            v.verify(&hs(&claims("a"))).unwrap_err(),
            AuthError::BadIssuer
        );
        // Not configured: any iss passes.
        assert!(verifier(&hs_config()).verify(&wrong).is_ok());
    }

    #[test]
    fn audience_checked_only_when_configured() {
        let v = verifier(&AuthConfig {
            audience: "gateway".into(),
            ..hs_config()
        });
        let good = hs(&json!({"sub": "a", "exp": now() + 60, "aud": "gateway"}));
        assert!(v.verify(&good).is_ok());
        let among = hs(&json!({"sub": "a", "exp": now() + 60, "aud": ["api", "gateway"]}));
        assert!(v.verify(&among).is_ok());
        let wrong = hs(&json!({"sub": "a", "exp": now() + 60, "aud": "api"}));
        assert_eq!(v.verify(&wrong).unwrap_err(), AuthError::BadAudience);
        // A token WITHOUT aud is refused when an audience is configured.
        assert_eq!(
            v.verify(&hs(&claims("a"))).unwrap_err(),
            AuthError::BadAudience
        );
        // Not configured: a token carrying some aud still passes (crate default refuses it).
        assert!(verifier(&hs_config()).verify(&wrong).is_ok());
    }

    #[test]
    fn missing_claims() {
        let v = verifier(&hs_config());
        let no_sub = hs(&json!({"exp": now() + 60}));
        let empty_sub = hs(&json!({"sub": "", "exp": now() + 60}));
        let no_exp = hs(&json!({"sub": "a"}));
        for token in [no_sub, empty_sub, no_exp] {
            assert_eq!(v.verify(&token).unwrap_err(), AuthError::MissingClaim);
        }
    }

    #[test]
    fn refresh_must_keep_the_user() {
        let v = verifier(&hs_config());
        assert!(v.verify_refresh(&hs(&claims("alice")), "alice").is_ok());
        let err = v.verify_refresh(&hs(&claims("bob")), "alice").unwrap_err();
        assert_eq!(err, AuthError::SubMismatch);
        let expired = hs(&json!({"sub": "alice", "exp": now() - 100}));
        assert_eq!(
            v.verify_refresh(&expired, "alice").unwrap_err(),
            AuthError::Expired
        );
    }

    #[test]
    fn reasons_are_distinct_snake_case_labels() {
        let all = [
            AuthError::Missing,
            AuthError::Malformed,
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::BadSignature,
            AuthError::AlgorithmNotAllowed,
            AuthError::BadIssuer,
            AuthError::BadAudience,
            AuthError::UnknownKey,
            AuthError::MissingClaim,
            AuthError::SubMismatch,
        ];
        let mut reasons: Vec<&str> = all.iter().map(AuthError::reason).collect();
        assert!(
            reasons
                .iter()
                .all(|r| r.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
        assert!(
            all.iter()
                .all(|e| !e.message().is_empty() && e.to_string() == e.message())
        );
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), all.len());
    }

    #[test]
    fn setup_errors_name_the_key() {
        let unknown = setup_error(&AuthConfig {
            algorithms: vec!["none".into()],
            ..hs_config()
        });
        assert!(unknown.starts_with("auth.algorithms:") && unknown.contains("\"none\""));
        let empty = setup_error(&AuthConfig {
            algorithms: vec![],
            ..hs_config()
        });
        assert!(empty.starts_with("auth.algorithms:"));

        let no_secret = setup_error(&AuthConfig::default());
        assert!(no_secret.starts_with("auth.hs_secret:"), "{no_secret}");
        for hint in ["GATEWAY_AUTH_HS_SECRET", "auth.hs_secret_file"] {
            assert!(no_secret.contains(hint), "{no_secret}");
        }

        let no_public = setup_error(&AuthConfig {
            algorithms: vec!["RS256".into()],
            ..hs_config()
        });
        assert!(
            no_public.starts_with("auth.public_key_file:"),
            "{no_public}"
        );
        assert!(no_public.contains("auth.jwks_file"));

        let unreadable = setup_error(&pem_config("RS256", "does-not-exist.pem"));
        assert!(
            unreadable.starts_with("auth.public_key_file: cannot read "),
            "{unreadable}"
        );

        let private = setup_error(&pem_config("RS256", "rsa_private.pem"));
        assert!(private.contains("private key"), "{private}");

        // A P-256 key cannot serve ES384.
        let curve = setup_error(&pem_config("ES384", "ec_public.pem"));
        assert!(curve.starts_with("auth.public_key_file:") && curve.contains("ES384"));

        let jwks = AuthConfig {
            jwks_file: key_path("rsa_public.pem"),
            ..jwks_config()
        };
        assert!(setup_error(&jwks).starts_with("auth.jwks_file:"));

        let both = AuthConfig {
            hs_secret_file: "/x".into(),
            ..hs_config()
        };
        assert!(setup_error(&both).starts_with("auth.hs_secret_file:"));
    }

    #[test]
    fn hs_secret_file_is_read_and_trimmed() {
        let path = std::env::temp_dir().join(format!("gateway-auth-{}-secret", std::process::id()));
        std::fs::write(&path, format!("{SECRET}\n")).unwrap();
        let cfg = AuthConfig {
            hs_secret: String::new(),
            hs_secret_file: path.to_string_lossy().into_owned(),
            ..AuthConfig::default()
        };
        let result = Verifier::from_config(&cfg).map(|v| v.verify(&hs(&claims("a"))));
        std::fs::remove_file(&path).unwrap();
        assert!(result.unwrap().is_ok());
    }

    #[test]
    fn debug_does_not_leak_the_secret() {
        let v = verifier(&hs_config());
        let debug = format!("{v:?}");
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(debug.contains("HS256"), "{debug}");
    }
}
