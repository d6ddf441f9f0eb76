//! Loading: defaults < file < `GATEWAY_*` environment < CLI flags, then validation.
//!
//! Layers are merged as TOML leaves keyed by their dotted path, so every
//! problem (unknown key, bad type, bad value, missing key material) is reported
//! with the key it concerns, all at once. The environment is injected through
//! [`LoadOptions`] so tests never touch the process environment.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::Config;
use super::env;

/// The HMAC secret committed in the repository's `gateway.toml`.
///
/// It exists so that `gateway serve` and `gateway token` work at once from a
/// checkout; a node running with it accepts tokens anyone can mint, so loading
/// it always produces a warning.
pub const DEV_HS_SECRET: &str = "dev-only-insecure-secret-change-me-0123456789abcdef";

/// The file read when no `--config` is given, relative to the working directory.
const DEFAULT_FILE: &str = "gateway.toml";

/// What `source` says when no file was read.
const BUILT_IN: &str = "built-in defaults";

/// Shortest accepted HMAC secret: HS256 wants at least its 256-bit output size.
const MIN_HS_SECRET_BYTES: usize = 32;

const HMAC_ALGORITHMS: [&str; 3] = ["HS256", "HS384", "HS512"];
const KEYED_ALGORITHMS: [&str; 7] = [
    "RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA",
];

/// Where the configuration comes from, besides the built-in defaults.
#[derive(Clone, Default)]
pub struct LoadOptions {
    /// `--config`; `None` reads `./gateway.toml` when present, else nothing.
    pub file: Option<PathBuf>,
    /// The process environment (`std::env::vars()` in production, a map in tests).
    /// Only variables starting with `GATEWAY_` are looked at.
    pub env: Vec<(String, String)>,
    /// `--listen`, overriding `server.listen`.
    pub listen: Option<String>,
    /// `--node-id`, overriding `server.node_id`.
    pub node_id: Option<String>,
}

impl fmt::Debug for LoadOptions {
    // The environment may hold secrets (GATEWAY_AUTH_HS_SECRET): show names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.env.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("LoadOptions")
            .field("file", &self.file)
            .field("env", &names)
            .field("listen", &self.listen)
            .field("node_id", &self.node_id)
            .finish()
    }
}

/// A configuration that passed validation.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated tree.
    pub config: Config,
    /// The file that was read, or `"built-in defaults"`.
    pub source: String,
    /// Things that are allowed but dangerous (e.g. the development secret);
    /// `serve` logs them at start-up, `check-config` prints them.
    pub warnings: Vec<String>,
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key (`websocket.max_frame_bytes`), the environment variable of
    /// an unknown `GATEWAY_*` name, or the file when it cannot be read or parsed.
    pub key: String,
    /// What is wrong and, where useful, how to fix it.
    pub message: String,
}

impl Problem {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found while loading; the gateway refuses to start with any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// In file, environment, flag, then validation order; never empty.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Which layer set a leaf; named in problems so an operator knows where to look.
#[derive(Debug, Clone)]
enum Origin {
    File,
    Env(String),
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File => f.write_str("the config file"),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// Leaves set by the file, environment and flags, keyed by path; later layers win.
type Layers = BTreeMap<Vec<String>, (Value, Origin)>;

/// Loads, merges and validates the configuration, reporting every problem.
pub fn load(opts: &LoadOptions) -> Result<Loaded, ConfigError> {
    let schema =
        Table::try_from(Config::default()).expect("the default configuration is plain TOML data");
    let mut problems = Vec::new();
    let mut layers = Layers::new();

    let path = file_to_read(opts);
    let source = path
        .as_ref()
        .map_or(BUILT_IN.to_owned(), |p| p.display().to_string());
    let file = path.map(|path| read_file(&path, &mut problems));
    if let Some(Some(file)) = &file {
        overlay_file(&schema, file, &mut Vec::new(), &mut layers, &mut problems);
    }
    overlay_env(&schema, &opts.env, &mut layers, &mut problems);
    overlay_flags(opts, &mut layers);
    drop_mistyped(&schema, &mut layers, &mut problems);

    let mut merged = schema;
    for (path, (value, _)) in &layers {
        set(&mut merged, path, value.clone());
    }
    let config: Config = match merged.try_into() {
        Ok(config) => config,
        Err(e) => {
            // Unreachable while every leaf probed clean; kept as a guard.
            problems.push(Problem::new("config", e.message().to_owned()));
            return Err(ConfigError { problems });
        }
    };

    // Without its file the tree is mostly defaults the user never chose (no
    // secret, say): judging it would bury the one real problem.
    if matches!(file, Some(None)) {
        return Err(ConfigError { problems });
    }
    // A key already reported was reset to its default; judging that default
    // would only add noise about a value the user never wrote.
    let reported: Vec<String> = problems.iter().map(|p| p.key.clone()).collect();
    for mut problem in validate(&config) {
        if reported.contains(&problem.key) {
            continue;
        }
        let path: Vec<String> = problem.key.split('.').map(str::to_owned).collect();
        if let Some((_, origin @ (Origin::Env(_) | Origin::Flag(_)))) = layers.get(&path) {
            problem.message.push_str(&format!(" (set by {origin})"));
        }
        problems.push(problem);
    }
    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }
    let warnings = warnings(&config);
    Ok(Loaded {
        config,
        source,
        warnings,
    })
}

fn overlay_flags(opts: &LoadOptions, layers: &mut Layers) {
    for (flag, key, value) in [
        ("--listen", "listen", &opts.listen),
        ("--node-id", "node_id", &opts.node_id),
    ] {
        if let Some(value) = value {
            let path = vec!["server".to_owned(), key.to_owned()];
            layers.insert(path, (Value::String(value.clone()), Origin::Flag(flag)));
        }
    }
}

/// Reports and drops every leaf whose value does not deserialize, so the rest
/// of the tree can still be built and validated in the same pass.
fn drop_mistyped(schema: &Table, layers: &mut Layers, problems: &mut Vec<Problem>) {
    layers.retain(|path, (value, origin)| match probe(schema, path, value) {
        Ok(()) => true,
        Err(message) => {
            problems.push(Problem::new(
                path.join("."),
                format!("{message} (set by {origin})"),
            ));
            false
        }
    });
}

fn file_to_read(opts: &LoadOptions) -> Option<PathBuf> {
    match &opts.file {
        Some(path) => Some(path.clone()),
        None => Some(PathBuf::from(DEFAULT_FILE)).filter(|p| p.is_file()),
    }
}

fn read_file(path: &Path, problems: &mut Vec<Problem>) -> Option<Table> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            problems.push(Problem::new(
                path.display().to_string(),
                format!("cannot read: {e}"),
            ));
            return None;
        }
    };
    match text.parse::<Table>() {
        Ok(table) => Some(table),
        Err(e) => {
            // The key is `file:line:column`, like a compiler diagnostic.
            let at = e.span().map(|span| line_column(&text, span.start));
            let key = match at {
                Some((line, column)) => format!("{}:{line}:{column}", path.display()),
                None => path.display().to_string(),
            };
            problems.push(Problem::new(
                key,
                format!("invalid TOML: {}", e.message().trim()),
            ));
            None
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn overlay_file(
    schema: &Table,
    file: &Table,
    path: &mut Vec<String>,
    layers: &mut Layers,
    problems: &mut Vec<Problem>,
) {
    for (key, value) in file {
        path.push(key.clone());
        let dotted = path.join(".");
        match (schema.get(key), value) {
            (None, _) => {
                let hint = closest(key, schema.keys().map(String::as_str))
                    .map(|near| format!(" (did you mean `{near}`?)"))
                    .unwrap_or_default();
                problems.push(Problem::new(dotted, format!("unknown key{hint}")));
            }
            (Some(Value::Table(inner_schema)), Value::Table(inner)) => {
                overlay_file(inner_schema, inner, path, layers, problems);
            }
            (Some(Value::Table(_)), _) => {
                problems.push(Problem::new(
                    dotted.clone(),
                    format!("expected a table [{dotted}]"),
                ));
            }
            (Some(_), value) => {
                layers.insert(path.clone(), (value.clone(), Origin::File));
            }
        }
        path.pop();
    }
}

fn overlay_env(
    schema: &Table,
    vars: &[(String, String)],
    layers: &mut Layers,
    problems: &mut Vec<Problem>,
) {
    let keys = env::keys(schema);
    for (name, raw) in vars {
        if !name.starts_with(env::PREFIX) {
            continue;
        }
        let Some(key) = keys.iter().find(|k| k.name == *name) else {
            // A typo must not silently fall back to the default.
            let hint = closest(name, keys.iter().map(|k| k.name.as_str()))
                .map(|near| format!(" (did you mean {near}?)"))
                .unwrap_or_default();
            problems.push(Problem::new(
                name.clone(),
                format!("unknown variable: it matches no configuration key{hint}"),
            ));
            continue;
        };
        match env::parse(raw, &key.default) {
            Ok(value) => {
                layers.insert(key.path.clone(), (value, Origin::Env(name.clone())));
            }
            Err(message) => problems.push(Problem::new(
                key.path.join("."),
                format!("{name}: {message}"),
            )),
        }
    }
}

/// Deserializes the defaults with one leaf replaced: the error, if any, belongs to that leaf.
fn probe(schema: &Table, path: &[String], value: &Value) -> Result<(), String> {
    let mut table = schema.clone();
    set(&mut table, path, value.clone());
    table
        .try_into::<Config>()
        .map(drop)
        .map_err(|e| e.message().to_owned())
}

/// Sets a leaf whose parents exist in `table` (paths come from the schema).
fn set(table: &mut Table, path: &[String], value: Value) {
    let (leaf, parents) = path.split_last().expect("paths are never empty");
    let mut at = table;
    for key in parents {
        at = match at.get_mut(key) {
            Some(Value::Table(inner)) => inner,
            _ => unreachable!("paths are taken from the schema, whose parents are tables"),
        };
    }
    at.insert(leaf.clone(), value);
}

/// The candidate nearest to `wanted` by edit distance, if near enough to be a typo.
fn closest<'a>(wanted: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (wanted.len() / 4).clamp(1, 3);
    candidates
        .map(|c| {
            (
                edit_distance(&wanted.to_ascii_lowercase(), &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Checks values against each other and against sane ranges; every problem is kept.
fn validate(c: &Config) -> Vec<Problem> {
    let mut p = Vec::new();
    let mut bad = |key: &str, message: String| p.push(Problem::new(key, message));

    // [server]
    if c.server.listen.parse::<SocketAddr>().is_err() {
        bad(
            "server.listen",
            format!(
                "must be an IP address and port such as 0.0.0.0:8080 (got {:?})",
                c.server.listen
            ),
        );
    }
    if c.server.drain_seconds > 3600 {
        bad(
            "server.drain_seconds",
            format!("must be at most 3600 (got {})", c.server.drain_seconds),
        );
    }
    if c.server.handshake_timeout_ms == 0 {
        bad(
            "server.handshake_timeout_ms",
            "must be at least 1".to_owned(),
        );
    }
    for origin in &c.server.allowed_origins {
        if !origin.contains("://") || origin.ends_with('/') {
            bad(
                "server.allowed_origins",
                format!("entries are scheme://host[:port] with no trailing slash (got {origin:?})"),
            );
        }
    }

    // [websocket]
    let ws = &c.websocket;
    in_range(
        &mut bad,
        "websocket.max_frame_bytes",
        ws.max_frame_bytes,
        128,
        16 << 20,
    );
    in_range(
        &mut bad,
        "websocket.read_buffer_bytes",
        ws.read_buffer_bytes,
        256,
        1 << 20,
    );
    if ws.outbox_max_frames < 1 {
        bad(
            "websocket.outbox_max_frames",
            "must be at least 1".to_owned(),
        );
    }
    if ws.outbox_max_bytes < ws.max_frame_bytes {
        bad(
            "websocket.outbox_max_bytes",
            format!(
                "must be at least websocket.max_frame_bytes ({}) so one full frame fits (got {})",
                ws.max_frame_bytes, ws.outbox_max_bytes
            ),
        );
    }
    if ws.heartbeat_seconds < 1 {
        bad(
            "websocket.heartbeat_seconds",
            "must be at least 1".to_owned(),
        );
    }
    if ws.heartbeat_timeout_seconds <= ws.heartbeat_seconds {
        bad(
            "websocket.heartbeat_timeout_seconds",
            format!(
                "must be greater than websocket.heartbeat_seconds ({}) (got {})",
                ws.heartbeat_seconds, ws.heartbeat_timeout_seconds
            ),
        );
    }
    if ws.write_timeout_ms == 0 {
        bad(
            "websocket.write_timeout_ms",
            "must be at least 1".to_owned(),
        );
    }

    // [limits]: a zero burst with a non-zero rate would refuse everything.
    let l = &c.limits;
    if l.connect_rate > 0 && l.connect_burst == 0 {
        bad(
            "limits.connect_burst",
            "must be at least 1 when limits.connect_rate is set".to_owned(),
        );
    }
    if l.messages_per_second > 0 && l.message_burst == 0 {
        bad(
            "limits.message_burst",
            "must be at least 1 when limits.messages_per_second is set".to_owned(),
        );
    }

    // [broker]
    let b = &c.broker;
    if !["memory", "redis"].contains(&b.kind.as_str()) {
        bad(
            "broker.kind",
            format!("must be \"memory\" or \"redis\" (got {:?})", b.kind),
        );
    }
    if b.queue_capacity < 1 {
        bad("broker.queue_capacity", "must be at least 1".to_owned());
    }
    if !["sharded", "classic"].contains(&b.redis.pubsub.as_str()) {
        bad(
            "broker.redis.pubsub",
            format!(
                "must be \"sharded\" or \"classic\" (got {:?})",
                b.redis.pubsub
            ),
        );
    }
    if b.kind == "redis" {
        if b.redis.nodes.is_empty() {
            bad(
                "broker.redis.nodes",
                "must list at least one host:port when broker.kind = \"redis\"".to_owned(),
            );
        }
        for node in &b.redis.nodes {
            if !is_host_port(node) {
                bad(
                    "broker.redis.nodes",
                    format!("entries must be host:port (got {node:?})"),
                );
            }
        }
    }

    // [auth]
    let a = &c.auth;
    if a.algorithms.is_empty() {
        bad(
            "auth.algorithms",
            "must list at least one algorithm".to_owned(),
        );
    }
    for alg in &a.algorithms {
        if !HMAC_ALGORITHMS.contains(&alg.as_str()) && !KEYED_ALGORITHMS.contains(&alg.as_str()) {
            bad(
                "auth.algorithms",
                format!(
                    "unsupported algorithm {alg:?}; supported: {}, {}",
                    HMAC_ALGORITHMS.join(", "),
                    KEYED_ALGORITHMS.join(", ")
                ),
            );
        }
    }
    let hmac = a
        .algorithms
        .iter()
        .find(|alg| HMAC_ALGORITHMS.contains(&alg.as_str()));
    let has_secret = !a.hs_secret.is_empty();
    let has_secret_file = !a.hs_secret_file.is_empty();
    if let Some(alg) = hmac
        && !has_secret
        && !has_secret_file
    {
        bad(
            "auth.hs_secret",
            format!(
                "{alg} needs an HMAC secret: set auth.hs_secret in the config file, \
                 GATEWAY_AUTH_HS_SECRET in the environment, or auth.hs_secret_file"
            ),
        );
    }
    if has_secret && has_secret_file {
        bad(
            "auth.hs_secret_file",
            "set only one of auth.hs_secret and auth.hs_secret_file".to_owned(),
        );
    }
    if has_secret && a.hs_secret.len() < MIN_HS_SECRET_BYTES {
        // Never echo the secret itself, only its length.
        bad(
            "auth.hs_secret",
            format!(
                "must be at least {MIN_HS_SECRET_BYTES} bytes (got {})",
                a.hs_secret.len()
            ),
        );
    }
    let keyed = a
        .algorithms
        .iter()
        .find(|alg| KEYED_ALGORITHMS.contains(&alg.as_str()));
    if let Some(alg) = keyed
        && a.public_key_file.is_empty()
        && a.jwks_file.is_empty()
    {
        bad(
            "auth.public_key_file",
            format!(
                "{alg} needs a public key: set auth.public_key_file (PEM) or auth.jwks_file \
                 (or GATEWAY_AUTH_PUBLIC_KEY_FILE / GATEWAY_AUTH_JWKS_FILE)"
            ),
        );
    }

    // [api]
    if c.api.keys.iter().any(String::is_empty) {
        bad("api.keys", "entries must not be empty".to_owned());
    }

    // [log]
    if !["text", "json"].contains(&c.log.format.as_str()) {
        bad(
            "log.format",
            format!("must be \"text\" or \"json\" (got {:?})", c.log.format),
        );
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.log.level) {
        bad(
            "log.level",
            format!("not a tracing filter ({e}) (got {:?})", c.log.level),
        );
    }

    p
}

fn in_range(bad: &mut impl FnMut(&str, String), key: &str, value: usize, min: usize, max: usize) {
    if !(min..=max).contains(&value) {
        bad(
            key,
            format!("must be between {min} and {max} (got {value})"),
        );
    }
}

/// `host:port` with a non-empty host and a non-zero port (`[v6]:port` included).
fn is_host_port(node: &str) -> bool {
    match node.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

fn warnings(c: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if c.auth.hs_secret == DEV_HS_SECRET {
        out.push(
            "auth.hs_secret is the repository's DEVELOPMENT secret: anyone can mint tokens; \
             set GATEWAY_AUTH_HS_SECRET in production"
                .to_owned(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_nearest_key() {
        assert_eq!(
            closest("hs_secrt", ["hs_secret", "issuer"].into_iter()),
            Some("hs_secret")
        );
        assert_eq!(closest("zzzz", ["hs_secret", "issuer"].into_iter()), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn host_port_needs_both_parts() {
        assert!(is_host_port("10.0.0.5:7000"));
        assert!(is_host_port("redis-0.redis:6379"));
        assert!(is_host_port("[::1]:7000"));
        assert!(!is_host_port("10.0.0.5"));
        assert!(!is_host_port(":7000"));
        assert!(!is_host_port("host:0"));
        assert!(!is_host_port("host:http"));
    }

    #[test]
    fn parse_errors_point_at_line_and_column() {
        assert_eq!(line_column("a = 1\nb = =", 10), (2, 5));
        assert_eq!(line_column("x", 0), (1, 1));
    }
}
