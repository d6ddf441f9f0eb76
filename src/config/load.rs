//! Loading: defaults < file < `GATEWAY_*` environment < CLI flags, then validation.
//!
//! Layers are merged as TOML leaves keyed by their dotted path, so every
//! problem (unknown key, bad type, bad value, missing key material) is reported
//! with the key it concerns, all at once. The environment is injected through
//! [`LoadOptions`] so tests never touch the process environment.
//!
//! Checks that need a component's knowledge (the algorithm table and secret
//! policy live in `auth`, the Redis settings in the broker) are not repeated
//! here: the caller passes them in as the `deep` check, which runs on the same
//! merged tree in the same pass, so `check-config` and `serve` (which both go
//! through `app::check`) can never disagree.

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

/// A configuration that passed validation, with what the deep check built.
#[derive(Debug, Clone)]
pub struct Loaded<T = ()> {
    /// The validated tree.
    pub config: Config,
    /// The file that was read, or `"built-in defaults"`.
    pub source: String,
    /// Things that are allowed but dangerous (e.g. the development secret);
    /// `serve` logs them at start-up, `check-config` prints them.
    pub warnings: Vec<String>,
    /// What the deep check built from the tree (key material, settings).
    pub parts: T,
}

/// The outcome of a deep check: what it built and its warnings, or every
/// problem it found.
pub type Deep<T> = Result<(T, Vec<String>), Vec<Problem>>;

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
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
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

/// Loads, merges and validates the configuration, then runs `deep` on the
/// merged tree, reporting every problem of both.
pub fn load<T>(
    opts: &LoadOptions,
    deep: impl FnOnce(&Config) -> Deep<T>,
) -> Result<Loaded<T>, ConfigError> {
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
    let (deep_problems, built) = match deep(&config) {
        Ok(built) => (Vec::new(), Some(built)),
        Err(problems) => (problems, None),
    };
    for mut problem in validate(&config).into_iter().chain(deep_problems) {
        if reported.contains(&problem.key) {
            continue;
        }
        let path: Vec<String> = problem.key.split('.').map(str::to_owned).collect();
        if let Some((_, origin @ (Origin::Env(_) | Origin::Flag(_)))) = layers.get(&path) {
            problem.message.push_str(&format!(" (set by {origin})"));
        }
        problems.push(problem);
    }
    match built {
        Some((parts, warnings)) if problems.is_empty() => Ok(Loaded {
            config,
            source,
            warnings,
            parts,
        }),
        _ => Err(ConfigError { problems }),
    }
}

/// [`load`] without a deep check: the tree alone (for tests of layering and
/// for tools that only read values).
pub fn load_tree(opts: &LoadOptions) -> Result<Loaded, ConfigError> {
    load(opts, |_| Ok(((), Vec::new())))
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
        let dotted = key.path.join(".");
        if super::FILE_ONLY.contains(&dotted.as_str()) {
            problems.push(Problem::new(
                dotted,
                format!("{name}: this key is a list of tables; set it in the config file"),
            ));
            continue;
        }
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
    in_range(
        &mut bad,
        "server.registry_ttl_seconds",
        c.server.registry_ttl_seconds as usize,
        3,
        3600,
    );
    // hyper refuses a read buffer below 8 KiB.
    in_range(
        &mut bad,
        "server.max_header_bytes",
        c.server.max_header_bytes,
        8192,
        1 << 20,
    );
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
        "websocket.write_coalesce_ms",
        ws.write_coalesce_ms as usize,
        0,
        1000,
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
    if c.broker.queue_capacity < 1 {
        bad("broker.queue_capacity", "must be at least 1".to_owned());
    }

    // [history]
    let h = &c.history;
    if h.size > 100_000 || h.user_size > 100_000 {
        let key = if h.size > 100_000 {
            "history.size"
        } else {
            "history.user_size"
        };
        bad(key, "must be at most 100000".to_owned());
    }
    for (key, size, ttl) in [
        ("history.ttl_seconds", h.size, h.ttl_seconds),
        ("history.user_ttl_seconds", h.user_size, h.user_ttl_seconds),
    ] {
        if size > 0 && ttl == 0 {
            bad(key, "must be at least 1 while history is kept".to_owned());
        }
        if ttl > h.meta_ttl_seconds {
            bad(
                key,
                format!(
                    "must be at most history.meta_ttl_seconds ({}): offsets must outlive the publications",
                    h.meta_ttl_seconds
                ),
            );
        }
    }
    if h.max_recover > 100_000 {
        bad("history.max_recover", "must be at most 100000".to_owned());
    }
    for (i, room) in h.rooms.iter().enumerate() {
        if !is_room_pattern(&room.pattern) {
            bad(
                "history.rooms",
                format!(
                    "entry {}: pattern {:?} must be a room name or a prefix ending in `*`",
                    i + 1,
                    room.pattern
                ),
            );
        }
        if room.size.is_some_and(|s| s > 100_000) {
            bad(
                "history.rooms",
                format!("entry {}: size must be at most 100000", i + 1),
            );
        }
        if let Some(ttl) = room.ttl_seconds
            && (ttl == 0 || ttl > h.meta_ttl_seconds)
        {
            bad(
                "history.rooms",
                format!(
                    "entry {}: ttl_seconds must be between 1 and history.meta_ttl_seconds ({})",
                    i + 1,
                    h.meta_ttl_seconds
                ),
            );
        }
    }

    // [presence]
    let pr = &c.presence;
    if pr.ttl_seconds < 3 {
        bad(
            "presence.ttl_seconds",
            "must be at least 3 (nodes refresh every third of it)".to_owned(),
        );
    }
    if pr.max_members > 100_000 {
        bad("presence.max_members", "must be at most 100000".to_owned());
    }
    for pattern in &pr.events {
        if !is_room_pattern(pattern) {
            bad(
                "presence.events",
                format!("{pattern:?} must be a room name or a prefix ending in `*`"),
            );
        }
    }

    // [api]
    if c.api.revocation_ttl_seconds == 0 {
        bad(
            "api.revocation_ttl_seconds",
            "must be at least 1".to_owned(),
        );
    }
    if c.api.keys.iter().any(String::is_empty) {
        bad("api.keys", "entries must not be empty".to_owned());
    }

    // [log]
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.log.level) {
        bad(
            "log.level",
            format!("not a tracing filter ({e}) (got {:?})", c.log.level),
        );
    }

    p
}

/// A room name, or a prefix of room-name characters followed by `*` (`*`
/// alone matches every room): the syntax of the token's `rooms` claim.
fn is_room_pattern(pattern: &str) -> bool {
    let name = pattern.strip_suffix('*').unwrap_or(pattern);
    (pattern.ends_with('*') && name.is_empty()) || crate::protocol::RoomName::parse(name).is_some()
}

fn in_range(bad: &mut impl FnMut(&str, String), key: &str, value: usize, min: usize, max: usize) {
    if !(min..=max).contains(&value) {
        bad(
            key,
            format!("must be between {min} and {max} (got {value})"),
        );
    }
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
    fn parse_errors_point_at_line_and_column() {
        assert_eq!(line_column("a = 1\nb = =", 10), (2, 5));
        assert_eq!(line_column("x", 0), (1, 1));
    }
}
