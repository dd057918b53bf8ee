//! Starting the `duplex` binary on a port of its own choosing.
//!
//! Asking the kernel for a free port and handing its number to the server races with every
//! other test binding port 0 meanwhile: the server may fail to bind, and the readiness probe
//! may then reach the other test's listener and return it as ours. So the server binds
//! `127.0.0.1:0` itself and the address is read from the line it logs when listening.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a server may take to log its address (a loaded CI machine is slow).
const START: Duration = Duration::from_secs(30);

/// Spawns `command` (which must not set `--listen`) listening on 127.0.0.1 on a port it
/// chooses; returns the child and the address it logged. Its stderr keeps being drained, so
/// the server never blocks on a full pipe; stdout is discarded.
pub fn spawn_listening(mut command: Command) -> (Child, SocketAddr) {
    command
        .args(["--listen", "127.0.0.1:0"])
        .env("DUPLEX_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start duplex");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (found, address) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stderr);
        let mut line = String::new();
        let mut seen = String::new();
        loop {
            line.clear();
            match lines.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = found.send(Err(seen));
                    return;
                }
                Ok(_) => {}
            }
            if let Some(addr) = logged_address(&line) {
                let _ = found.send(Ok(addr));
                break;
            }
            seen.push_str(&line);
        }
        // Drain the rest so the server never waits on a full pipe.
        let _ = std::io::copy(&mut lines, &mut std::io::sink());
    });
    match address.recv_timeout(START) {
        Ok(Ok(addr)) => (child, addr),
        Ok(Err(log)) => {
            let status = child.wait();
            panic!("duplex exited before listening ({status:?}); its log:\n{log}");
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("duplex did not log a listening address within {START:?}");
        }
    }
}

/// `duplex connect` with `args`, `stdin` as its input: exit status, stdout, stderr.
pub fn run_connect(args: &[&str], stdin: &str) -> (std::process::ExitStatus, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_duplex"))
        .arg("connect")
        .args(args)
        .env("DUPLEX_LOG", "info")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "duplex connect did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// The first `scheme://127.0.0.1:port` in a log line.
fn logged_address(line: &str) -> Option<SocketAddr> {
    let start = line.find("://127.0.0.1:")? + "://".len();
    let rest = &line[start..];
    let end = rest
        .find(|c: char| c != '.' && c != ':' && !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[test]
fn the_logged_address_is_found_in_a_line() {
    let line = "INFO echo server on ws://127.0.0.1:40123 (engine, 1 loops)\n";
    assert_eq!(
        logged_address(line),
        Some("127.0.0.1:40123".parse().unwrap())
    );
    let hub = "duplex hub listening: demo page http://127.0.0.1:8080/ , WebSocket";
    assert_eq!(logged_address(hub), Some("127.0.0.1:8080".parse().unwrap()));
    assert_eq!(logged_address("no address here"), None);
}
