//! The `duplex` binary end to end: `serve --echo` against `connect`, bad handshakes, shutdown.
//! Every process is started here, on 127.0.0.1, and ended by its PID.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_duplex");

/// A `duplex serve --echo` on a free port, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start() -> Server {
        let mut command = Command::new(BIN);
        command.args(["serve", "--echo"]);
        let (child, addr) = support::spawn_listening(command);
        Server { child, addr }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Sends SIGTERM (by PID) and waits for the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends raw bytes and reads the answer until the server closes.
fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    String::from_utf8_lossy(&raw_exchange_bytes(addr, request)).into_owned()
}

fn raw_exchange_bytes(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    answer
}

#[test]
fn connect_echoes_typed_lines_and_exits_cleanly_on_eof() {
    let server = Server::start();
    let (status, stdout, stderr) =
        support::run_connect(&[&server.url()], "hello\nwörld 🙂\n\nlast line\n");
    assert!(status.success(), "stderr: {stderr}");
    assert_eq!(stdout, "hello\nwörld 🙂\n\nlast line\n");

    let (status, stdout, _) = support::run_connect(
        &[
            "--binary",
            "--header",
            "X-Test: 1",
            "--no-deflate",
            &format!("{}/any/path?q=1", server.url()),
        ],
        "bytes\n",
    );
    assert!(status.success());
    assert_eq!(stdout, "bytes\n");
}

#[test]
fn bad_handshakes_get_their_status_and_the_server_goes_on() {
    let server = Server::start();
    let garbage = raw_exchange(server.addr, b"NOT HTTP AT ALL\r\n\r\n");
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");

    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let old_version = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 8\r\n\r\n"
    );
    let answer = raw_exchange(server.addr, old_version.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 426"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{answer}"
    );

    let no_key = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let answer = raw_exchange(server.addr, no_key.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("Sec-WebSocket-Key"),
        "the reason names the header: {answer}"
    );

    // A frame that breaks the protocol (unmasked, from a client) gets Close 1002, then EOF.
    let upgrade = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut request = upgrade.into_bytes();
    request.extend_from_slice(b"\x81\x02hi");
    let answer = raw_exchange_bytes(server.addr, &request);
    assert!(answer.starts_with(b"HTTP/1.1 101"));
    let close_at = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let frame = &answer[close_at..];
    assert_eq!(frame[0], 0x88, "a Close frame");
    assert_eq!(&frame[2..4], &1002u16.to_be_bytes());

    // Still serving.
    let (status, stdout, _) = support::run_connect(&[&server.url()], "still there\n");
    assert!(status.success());
    assert_eq!(stdout, "still there\n");
}

#[test]
fn sigterm_closes_connections_with_1001_and_exits_zero() {
    let server = Server::start();
    let mut child = Command::new(BIN)
        .args(["connect", &server.url()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"ready\n").unwrap();
    // Wait until the echo proves the connection is up.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 6];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"ready\n");

    assert!(
        server.terminate().success(),
        "the server exits 0 on SIGTERM"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the client saw no close");
        std::thread::sleep(Duration::from_millis(20));
    }
    // 1001 (going away) is a normal end for the client.
    assert!(child.wait().unwrap().success());
    drop(stdin);
}
