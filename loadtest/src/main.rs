//! `gateway-loadtest`: parse the command line and dispatch; the work lives in
//! the library (`cli`, `coordinator`, `worker`).

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(gateway_loadtest::cli::main().clamp(0, 255) as u8)
}
