//! The real `copex serve` as a child process, for tests of the binary.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_copex");

pub struct Served {
    pub child: Child,
    /// `https://localhost:{port}`
    pub hub: String,
    pub stdout_lines: Vec<String>,
    /// Where its stderr (the log, at the default level) goes.
    pub log: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the real `copex serve` on a free port of its choosing.
pub fn serve(data_dir: &Path) -> Served {
    serve_with(data_dir, &[])
}

/// `copex serve` with more flags, e.g. `--database`.
pub fn serve_with(data_dir: &Path, args: &[&str]) -> Served {
    spawn(Command::new(BIN), data_dir, args)
}

/// `copex serve` under the given umask (through `sh`), e.g. `000`, so
/// file modes are shown to be the hub's own rather than the umask's.
pub fn serve_with_umask(data_dir: &Path, umask: &str) -> Served {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
        .arg(BIN);
    spawn(command, data_dir, &[])
}

fn spawn(mut command: Command, data_dir: &Path, args: &[&str]) -> Served {
    let log = data_dir.with_extension("log");
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("log file");
    let mut child = command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        // The default level, as an operator runs it.
        .env_remove("COPEX_LOG")
        // The tests' readers poll faster than a partner may.
        .env("COPEX_RATE_LIMIT", "0")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start copex serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut stdout_lines = Vec::new();
    let hub = loop {
        let line = lines
            .next()
            .expect("copex serve printed its address")
            .expect("utf-8");
        if let Some(rest) = line.strip_prefix("copex is serving on https://") {
            let addr = rest.split_whitespace().next().expect("address");
            let port = addr.rsplit(':').next().expect("port");
            stdout_lines.push(line.clone());
            break format!("https://localhost:{port}");
        }
        stdout_lines.push(line);
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Served {
        child,
        hub,
        stdout_lines,
        log,
    }
}

pub fn terminate(mut served: Served) {
    let status = Command::new("kill")
        .args(["-TERM", &served.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = served.child.wait().expect("wait");
    assert!(
        exit.success(),
        "copex serve exited with {exit:?} on SIGTERM"
    );
}
