//! Cost of `Verifier::verify` per algorithm family, the CPU price of every
//! upgrade and `refresh`. Tokens are signed once outside the loop with the
//! test keys in `tests/keys/`; only verification (header, key selection,
//! signature, claims, grants) is measured.

use std::hint::black_box;

use criterion::{Criterion, criterion_main};
use gateway::auth::Verifier;
use gateway::config::AuthConfig;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use serde_json::json;

const SECRET: &str = "bench-secret-0123456789abcdef0123456789";

fn key(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn claims() -> serde_json::Value {
    json!({
        "sub": "user-123456",
        "exp": get_current_timestamp() + 3600,
        "iat": get_current_timestamp(),
        "rooms": ["lobby", "team-42:*", "news"],
        "publish": ["lobby"],
    })
}

fn case(alg: Algorithm) -> (&'static str, Verifier, String) {
    let (name, public, encoding) = match alg {
        Algorithm::HS256 => ("HS256", None, EncodingKey::from_secret(SECRET.as_bytes())),
        Algorithm::RS256 => (
            "RS256",
            Some("rsa_public.pem"),
            EncodingKey::from_rsa_pem(&key("rsa_private.pem")).unwrap(),
        ),
        Algorithm::ES256 => (
            "ES256",
            Some("ec_public.pem"),
            EncodingKey::from_ec_pem(&key("ec_private.pem")).unwrap(),
        ),
        other => panic!("no bench case for {other:?}"),
    };
    let cfg = AuthConfig {
        algorithms: vec![name.into()],
        hs_secret: if public.is_none() {
            SECRET.into()
        } else {
            String::new()
        },
        public_key_file: public
            .map(|file| format!("{}/tests/keys/{file}", env!("CARGO_MANIFEST_DIR")))
            .unwrap_or_default(),
        ..AuthConfig::default()
    };
    let verifier = Verifier::from_config(&cfg).unwrap();
    let token = encode(&Header::new(alg), &claims(), &encoding).unwrap();
    // Fail loudly rather than benchmark the error path.
    verifier.verify(&token).unwrap();
    (name, verifier, token)
}

fn verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("jwt_verify");
    for alg in [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256] {
        let (name, verifier, token) = case(alg);
        group.bench_function(name, |b| {
            b.iter(|| verifier.verify(black_box(&token)).unwrap())
        });
    }
    group.finish();
}

/// `criterion_group!` generates an undocumented `pub fn`; keep it out of the
/// crate root so `missing_docs` stays on for everything else.
mod group {
    #![allow(missing_docs)]
    criterion::criterion_group!(benches, super::verify);
}

criterion_main!(group::benches);
