//! Loads `auth.jwks_file` (`{"keys":[...]}`) into decoding keys indexed by
//! `kid`, once at start-up. Keys meant for encryption (`use: enc`, or an
//! encryption `alg`) are skipped; any other key that cannot verify is an
//! error naming its `kid`, so a bad file stops start-up instead of failing
//! tokens one by one.

use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use rustc_hash::FxHashMap;

use super::{AuthSetupError, Key, classify};

const KEY: &str = "auth.jwks_file";

/// Reads and parses the JWKS file at `path`.
pub(super) fn load(path: &str) -> Result<FxHashMap<Box<str>, Key>, AuthSetupError> {
    let bad = |reason: String| AuthSetupError::BadKey {
        key: KEY,
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read(path).map_err(|source| AuthSetupError::Read {
        key: KEY,
        path: path.to_owned(),
        source,
    })?;
    parse(&text).map_err(bad)
}

/// Parses JWKS JSON; the error is the reason, without the path.
fn parse(text: &[u8]) -> Result<FxHashMap<Box<str>, Key>, String> {
    let set: JwkSet = serde_json::from_slice(text)
        .map_err(|e| format!("not a JWKS ({{\"keys\":[...]}}): {e}"))?;
    let mut keys = FxHashMap::default();
    for (index, jwk) in set.keys.iter().enumerate() {
        let kid = jwk.common.key_id.as_deref().unwrap_or_default();
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            tracing::debug!(kid, "auth.jwks_file: skipping an encryption key");
            continue;
        }
        let only = match jwk.common.key_algorithm {
            None => None,
            Some(alg) => match Algorithm::try_from(alg) {
                Ok(alg) => Some(alg),
                Err(_) => {
                    tracing::warn!(
                        kid,
                        "auth.jwks_file: skipping a key whose alg is not a signing algorithm"
                    );
                    continue;
                }
            },
        };
        if kid.is_empty() {
            return Err(format!(
                "key #{index} has no kid, so no token could select it"
            ));
        }
        let decoding = DecodingKey::from_jwk(jwk)
            .map_err(|e| format!("key {kid:?}: unsupported or invalid key: {e}"))?;
        let kind = classify(&decoding).map_err(|reason| format!("key {kid:?}: {reason}"))?;
        if let Some(alg) = only
            && !kind.serves(alg)
        {
            return Err(format!(
                "key {kid:?}: alg {alg:?} does not fit {}",
                kind.describe()
            ));
        }
        if keys
            .insert(
                Box::from(kid),
                Key {
                    kind,
                    only,
                    decoding,
                },
            )
            .is_some()
        {
            return Err(format!("kid {kid:?} appears twice"));
        }
    }
    if keys.is_empty() {
        return Err("no signing key in the set".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::super::KeyKind;
    use super::*;

    fn err(json: &str) -> String {
        parse(json.as_bytes()).err().expect("should be refused")
    }

    #[test]
    fn the_test_set_loads_two_kids() {
        let path = format!("{}/tests/keys/jwks.json", env!("CARGO_MANIFEST_DIR"));
        let keys = load(&path).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys["rsa-1"].kind, KeyKind::Rsa);
        assert_eq!(keys["rsa-1"].only, Some(Algorithm::RS256));
        assert_eq!(keys["ec-1"].kind, KeyKind::P256);
    }

    #[test]
    fn bad_sets_are_refused_with_a_reason() {
        assert!(err("[]").contains("not a JWKS"));
        assert!(err(r#"{"keys":[]}"#).contains("no signing key"));
        let no_kid = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        assert!(err(no_kid).contains("no kid"));
        let twice = r#"{"keys":[
            {"kid":"a","kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kid":"a","kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        assert!(err(twice).contains("twice"));
        let mismatch = r#"{"keys":[{"kid":"a","alg":"RS256","kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        assert!(err(mismatch).contains("does not fit"));
        let short_ed = r#"{"keys":[{"kid":"a","kty":"OKP","crv":"Ed25519","x":"AAAA"}]}"#;
        assert!(err(short_ed).contains("\"a\""));
    }

    #[test]
    fn encryption_keys_are_skipped() {
        let set = r#"{"keys":[
            {"kid":"enc","use":"enc","kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kid":"oaep","alg":"RSA-OAEP","kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kid":"sig","kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        let keys = parse(set.as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys["sig"].kind, KeyKind::Ed25519);
    }
}
