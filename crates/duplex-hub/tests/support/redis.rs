//! A private `redis-server` for one test: on a free port of 127.0.0.1, without persistence,
//! stopped by its PID when dropped. Shared by the integration tests (`mod support;`) and the
//! broker's unit tests (`#[path]`), so every test that needs Redis starts its own.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these helpers"
)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`; killed (by PID) and reaped on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    /// Starts a server on a free port and waits (at most 10 s) until it answers. A port taken
    /// meanwhile by another test (between `free_port` and the server's bind) is retried.
    pub fn start() -> RedisServer {
        for _ in 0..5 {
            if let Some(server) = RedisServer::try_start_on(free_port()) {
                return server;
            }
        }
        panic!("redis-server did not start on a free port in 5 tries");
    }

    /// Starts a server on `port` (a restart reuses the port of the one it replaces).
    pub fn start_on(port: u16) -> RedisServer {
        RedisServer::try_start_on(port)
            .unwrap_or_else(|| panic!("redis-server did not start on port {port} within 10 s"))
    }

    /// `None` if the server exited (the port is taken), another process answered on the port,
    /// or nothing answered within 10 s.
    fn try_start_on(port: u16) -> Option<RedisServer> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            // Not the system's config or directory: nothing of the test stays behind.
            .args(["--dir", &std::env::temp_dir().display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install -y redis-server)");
        // The answer must come from this process: another test's server may hold the port.
        let ours = format!("process_id:{}", child.id());
        let mut server = RedisServer {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(info) = server.try_command(&["INFO", "server"]) {
                return info
                    .lines()
                    .any(|line| line.trim() == ours)
                    .then_some(server);
            }
            let exited = server
                .child
                .as_mut()
                .is_some_and(|child| matches!(child.try_wait(), Ok(Some(_))));
            if exited {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL, by PID) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL ends a paused (stopped) server too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP, by PID): it keeps its sockets open but answers nothing, as
    /// a hung host or a network partition would. [`resume`](RedisServer::resume) undoes it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a [paused](RedisServer::pause) server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("a running server").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Kills the server and starts a new one, empty, on the same port.
    pub fn restart(&mut self) {
        self.stop();
        *self = RedisServer::start_on(self.port);
    }

    /// Runs one command and returns its reply rendered as text (see [`read_reply`]). Panics on
    /// a connection error.
    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args)
            .unwrap_or_else(|e| panic!("redis {args:?} on port {}: {e}", self.port))
    }

    fn try_command(&self, args: &[&str]) -> std::io::Result<String> {
        let mut tcp = TcpStream::connect(("127.0.0.1", self.port))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        tcp.write_all(request.as_bytes())?;
        read_reply(&mut BufReader::new(tcp))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nobody listens on right now (bind port 0, read it, let it go).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Reads one RESP2 reply: simple strings, errors (`ERR ...`), integers and bulk strings as
/// their text, nil as `(nil)`, arrays as their elements joined by `,` inside `[]`.
fn read_reply(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, line.to_owned());
    let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
    match kind {
        "+" | "-" | ":" => Ok(rest.to_owned()),
        "$" => {
            let Ok(len) = rest.parse::<usize>() else {
                return Ok("(nil)".to_owned());
            };
            let mut bulk = vec![0; len + 2];
            reader.read_exact(&mut bulk)?;
            bulk.truncate(len);
            String::from_utf8(bulk).map_err(|_| bad())
        }
        "*" => {
            let Ok(len) = rest.parse::<usize>() else {
                return Ok("(nil)".to_owned());
            };
            let items = (0..len)
                .map(|_| read_reply(reader))
                .collect::<std::io::Result<Vec<_>>>()?;
            Ok(format!("[{}]", items.join(",")))
        }
        _ => Err(bad()),
    }
}
