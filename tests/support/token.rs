//! Real JWTs for tests, signed with `jsonwebtoken` as an identity provider
//! would: HS256 with [`SECRET`] (the key every test gateway, in-process or as
//! a process, verifies with), or any algorithm and key for refusal tests.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The HMAC secret of every test gateway (also usable as `auth.hs_secret` in
/// configuration files: long enough for the gateway's minimum).
pub const SECRET: &str = "test-secret-0123456789abcdef0123456789abcdef";

/// Seconds since the Unix epoch, for `exp`, `iat` and `nbf` claims.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Signs `claims` with HS256 and [`SECRET`].
pub fn sign(claims: &Value) -> String {
    sign_with(Algorithm::HS256, claims, SECRET.as_bytes())
}

/// Signs `claims` with `alg` and the HMAC key `secret`.
pub fn sign_with(alg: Algorithm, claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// A token valid for an hour for `sub` that may join and publish to `rooms`.
pub fn token(sub: &str, rooms: &[&str]) -> String {
    sign(&json!({"sub": sub, "exp": now() + 3600, "iat": now(), "rooms": rooms, "publish": rooms}))
}
