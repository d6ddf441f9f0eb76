//! The built `gateway` binary as a child process: a command that inherits no
//! `GATEWAY_*` variable (a developer's shell cannot change an outcome), free
//! loopback ports, and a guard that stops a child when the test ends, however
//! it ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// How long a child may take to exit after SIGTERM before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(10);

/// The repository root (the package's manifest directory).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `gateway` run in `dir` (away from the repository's gateway.toml unless
/// `dir` is the repository) with no inherited `GATEWAY_*` variable.
pub fn gateway_command(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    for (name, _) in std::env::vars() {
        if name.starts_with("GATEWAY_") {
            cmd.env_remove(name);
        }
    }
    cmd.current_dir(dir);
    cmd
}

/// A loopback port free at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process stopped on drop, by its PID.
pub struct Proc {
    /// The process (tests wait on it to check exit codes).
    pub child: Child,
    name: &'static str,
    /// `Some`: SIGTERM first, SIGKILL if it lingers this long. `None`: SIGKILL at once.
    grace: Option<Duration>,
}

impl Proc {
    /// Stopped with SIGTERM, then SIGKILL if it lingers (nginx's master must
    /// stop its workers itself: a SIGKILL would orphan them).
    pub fn terminate_on_drop(child: Child, name: &'static str) -> Proc {
        Proc {
            child,
            name,
            grace: Some(TERM_GRACE),
        }
    }

    /// Killed with SIGKILL: for children whose shutdown the test does not examine.
    pub fn kill_on_drop(child: Child, name: &'static str) -> Proc {
        Proc {
            child,
            name,
            grace: None,
        }
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and asserts it was delivered.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "kill -TERM {} ({})",
            self.pid(),
            self.name
        );
    }
}

impl Drop for Proc {
    #[expect(
        clippy::disallowed_methods,
        reason = "Drop cannot await; a bounded wait for a child process blocks no runtime worker"
    )]
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Some(grace) = self.grace {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status();
            let start = Instant::now();
            while start.elapsed() < grace {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
