//! The command line: `serve`, `token` and `check-config`.
//!
//! Each command loads the configuration through [`crate::config::load`] with the
//! real environment; any configuration problem is printed to stderr and ends the
//! process with exit code 2, so the gateway never starts half-configured.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::app::check;
use crate::config::{ConfigError, LoadOptions, Loaded};

/// Exit code for a bad configuration, a refused command or a usage error.
const EXIT_CONFIG: u8 = 2;

/// `gateway`: a WebSocket realtime gateway and fan-out engine.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Mint a JWT signed with the configured HMAC key (development, tests, load tests).
    Token(TokenArgs),
    /// Load and validate the configuration, print the problems, and exit.
    CheckConfig(ConfigArg),
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// Configuration file [default: ./gateway.toml when present, else built-in defaults].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Address to listen on, overriding server.listen.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Node id, overriding server.node_id.
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// User id (`sub` claim).
    #[arg(long, value_name = "USER")]
    sub: String,
    /// Room patterns the user may subscribe to, comma-separated (`lobby,team-42:*`).
    #[arg(long, value_name = "PATTERNS", value_delimiter = ',')]
    rooms: Vec<String>,
    /// Room patterns the user may publish to, comma-separated.
    #[arg(long, value_name = "PATTERNS", value_delimiter = ',')]
    publish: Vec<String>,
    /// Lifetime of the token in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    ttl: u64,
    #[command(flatten)]
    config: ConfigArg,
}

/// Parses the process arguments, runs the command and returns its exit code.
pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // `--help` and `--version` arrive here too, and are not failures.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Token(args) => token(args),
        Command::CheckConfig(args) => check_config(args),
    }
}

fn options(config: ConfigArg) -> LoadOptions {
    LoadOptions {
        file: config.config,
        env: std::env::vars().collect(),
        listen: None,
        node_id: None,
    }
}

fn report(e: &ConfigError) -> ExitCode {
    let count = e.problems.len();
    let noun = if count == 1 { "problem" } else { "problems" };
    eprintln!("gateway: invalid configuration ({count} {noun}):\n{e}");
    ExitCode::from(EXIT_CONFIG)
}

fn serve(args: ServeArgs) -> ExitCode {
    let opts = LoadOptions {
        listen: args.listen,
        node_id: args.node_id,
        ..options(args.config)
    };
    match check(&opts) {
        // The app initialises logging from the loaded config, then logs `warnings`.
        Ok(loaded) => crate::app::serve(loaded),
        Err(e) => report(&e),
    }
}

fn token(args: TokenArgs) -> ExitCode {
    let Loaded { config, .. } = match check(&options(args.config)) {
        Ok(loaded) => loaded,
        Err(e) => return report(&e),
    };
    let request = crate::auth::MintRequest {
        sub: args.sub,
        rooms: non_empty(args.rooms),
        publish: non_empty(args.publish),
        ttl_seconds: args.ttl,
    };
    match crate::auth::mint(&config.auth, &request) {
        Ok(token) => {
            // Only the token on stdout, so `TOKEN=$(gateway token ...)` works.
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gateway token: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `--rooms ''` or a trailing comma means no pattern, not an empty-named room.
fn non_empty(patterns: Vec<String>) -> Vec<String> {
    patterns
        .into_iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The same check `serve` runs before it binds: a configuration it accepts
/// is one `serve` starts with, and the reverse.
fn check_config(args: ConfigArg) -> ExitCode {
    match check(&options(args)) {
        Ok(loaded) => {
            println!("config OK ({})", loaded.source);
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => report(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn token_lists_split_on_commas() {
        let cli = Cli::try_parse_from([
            "gateway",
            "token",
            "--sub",
            "alice",
            "--rooms",
            "lobby,team-42:*",
            "--publish",
            "lobby",
        ])
        .unwrap();
        let Command::Token(args) = cli.command else {
            panic!("expected token")
        };
        assert_eq!(args.rooms, ["lobby", "team-42:*"]);
        assert_eq!(args.publish, ["lobby"]);
        assert_eq!(args.ttl, 3600);
        assert!(
            Cli::try_parse_from(["gateway", "token"]).is_err(),
            "--sub is required"
        );
    }

    #[test]
    fn serve_takes_listen_and_node_id() {
        let cli = Cli::try_parse_from([
            "gateway",
            "serve",
            "--config",
            "x.toml",
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            "n1",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve")
        };
        assert_eq!(args.config.config, Some(PathBuf::from("x.toml")));
        assert_eq!(args.listen.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(args.node_id.as_deref(), Some("n1"));
    }
}
