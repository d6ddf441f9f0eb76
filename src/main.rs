//! The `gateway` binary: all behaviour lives in the library; see `gateway::cli`.

fn main() -> std::process::ExitCode {
    gateway::cli::run()
}
