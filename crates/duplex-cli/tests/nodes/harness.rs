//! Processes for the many-node tests: `redis-server` instances and `duplex hub` nodes on free
//! ports of 127.0.0.1, each stopped by its PID when dropped (SIGKILL: nothing to flush), with
//! its output in a log file whose tail a failing test prints.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `duplex` binary of this very build (cargo builds it for the package's tests).
pub const DUPLEX: &str = env!("CARGO_BIN_EXE_duplex");

/// `redis-server`: `$DUPLEX_REDIS_SERVER`, else the one on PATH (scripts/install-redis.sh).
fn redis_server() -> String {
    std::env::var("DUPLEX_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// A port the kernel just handed out (and took back); a loser of the race retries.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A log file for one process: `$TMPDIR/duplex-nodes-<test pid>-<name>-<n>.log`.
fn log_file(name: &str) -> (PathBuf, File) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "duplex-nodes-{}-{name}-{}.log",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let file = File::create(&path).expect("create a log file");
    (path, file)
}

/// A child process killed (by PID) and reaped when dropped.
#[derive(Debug)]
struct Proc {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut command: Command, name: &str) -> Proc {
        let (log, file) = log_file(name);
        let err = file.try_clone().expect("clone the log file");
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err));
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e} (is it installed?)"));
        Proc {
            child,
            name: name.to_owned(),
            log,
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL by PID, then reap.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The address of the hub's "listening: ... http://127.0.0.1:PORT/" log line, once written.
    fn logged_address(&self) -> Option<SocketAddr> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        let line = text.lines().find(|l| l.contains("duplex hub listening"))?;
        let start = line.find("://127.0.0.1:")? + "://".len();
        let rest = &line[start..];
        let end = rest.find('/').unwrap_or(rest.len());
        rest[..end].parse().ok()
    }

    /// The last lines of the process's output.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n    ")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        // A failing test shows what its processes said (and keeps the log); a passing one
        // leaves nothing behind.
        if std::thread::panicking() {
            eprintln!(
                "--- {} (log {}):\n    {}",
                self.name,
                self.log.display(),
                self.tail()
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// One `redis-server`, no persistence, on its own port.
#[derive(Debug)]
pub struct Redis {
    proc: Proc,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        for _ in 0..5 {
            if let Some(redis) = Redis::start_on(free_port()) {
                return redis;
            }
        }
        panic!("redis-server did not start (5 tries); is it installed? (scripts/install-redis.sh)");
    }

    /// Starts on `port`; `None` if it exited (port taken), another process answered on the
    /// port, or it did not answer in 10 s.
    fn start_on(port: u16) -> Option<Redis> {
        let mut command = Command::new(redis_server());
        command.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        let mut redis = Redis {
            proc: Proc::spawn(command, &format!("redis-{port}")),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && redis.proc.alive() {
            // The answer must come from our process: another test's redis may hold the port.
            let ours = format!("process_id:{}\r\n", redis.proc.child.id());
            if let Ok(info) = redis.try_command(&["INFO", "server"]) {
                if info.contains(&ours) {
                    return Some(redis);
                }
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `kill -9`: Redis is gone, with everything it held (no persistence).
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// A fresh, empty redis-server on the same port, after [`Redis::kill`] (what a restart
    /// without persistence is); retries while the port is briefly unavailable.
    pub fn restart(&mut self) {
        self.proc.kill();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(new) = Redis::start_on(self.port) {
                // Swap the new process in; the old (dead) one is reaped by its drop.
                *self = new;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One command; the reply in RESP's text form (`+OK`, `:3`, `-ERR ...`, or a bulk
    /// string's content). Panics if Redis does not answer.
    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args)
            .unwrap_or_else(|e| panic!("redis {args:?} on port {}: {e}", self.port))
    }

    fn try_command(&self, args: &[&str]) -> Result<String, String> {
        let mut tcp = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(1),
        )
        .map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
        }
        tcp.write_all(&request).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(reply) = parse_reply(&buf) {
                return Ok(reply);
            }
            let n = tcp.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Keys in the database (`DBSIZE`).
    pub fn dbsize(&self) -> u64 {
        let reply = self.command(&["DBSIZE"]);
        reply
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("DBSIZE answered {reply:?}"))
    }
}

/// A complete simple reply (`+`, `-`, `:`) or bulk string at the start of `buf`.
fn parse_reply(buf: &[u8]) -> Option<String> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
    match buf.first()? {
        b'$' => {
            let len: i64 = line[1..].parse().ok()?;
            if len < 0 {
                return Some(String::new());
            }
            let start = line_end + 2;
            let end = start + len as usize;
            (buf.len() >= end + 2).then(|| String::from_utf8_lossy(&buf[start..end]).into_owned())
        }
        _ => Some(line),
    }
}

/// One `duplex hub` process with a Redis broker.
#[derive(Debug)]
pub struct Node {
    proc: Proc,
    pub addr: SocketAddr,
}

/// Flags every test node gets besides `--listen` and `--broker`: no publish rate limit in the
/// way of a load test, history deep enough for every hop of the tests.
const NODE_FLAGS: &[&str] = &[
    "--publish-rate",
    "1000000",
    "--publish-burst",
    "1000000",
    "--history-size",
    "10000",
];

impl Node {
    /// A node on a port it chose (127.0.0.1:0; the address is read from its log, so no other
    /// test can take the port in between) using the brokers `redis` (one shard each), ready
    /// when `/healthz` answers 200 (the broker connected). `extra`: more flags.
    pub fn start(redis: &[&Redis], extra: &[&str]) -> Node {
        let broker = redis.iter().map(|r| r.url()).collect::<Vec<_>>().join(",");
        let mut command = Command::new(DUPLEX);
        command
            .args(["hub", "--listen", "127.0.0.1:0", "--broker", &broker])
            .args(NODE_FLAGS)
            .args(extra)
            .env("DUPLEX_LOG", "info");
        let mut proc = Proc::spawn(command, "hub");
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            if let Some(addr) = proc.logged_address() {
                break addr;
            }
            assert!(
                Instant::now() < deadline && proc.alive(),
                "duplex hub --broker {broker} did not start listening; last log:\n    {}",
                proc.tail()
            );
            std::thread::sleep(Duration::from_millis(25));
        };
        let node = Node { proc, addr };
        while Instant::now() < deadline {
            if node.healthz() == Some(200) {
                return node;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "duplex hub --broker {broker} did not become healthy; last log:\n    {}",
            node.proc.tail()
        );
    }

    /// The status of `GET /healthz`, `None` if nothing answered within 2 s.
    pub fn healthz(&self) -> Option<u16> {
        let mut tcp = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut head = [0u8; 12];
        tcp.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }

    /// `kill -9`: no close frames, no presence cleanup; the node is simply gone.
    pub fn kill9(&mut self) {
        self.proc.kill();
    }

    pub fn alive(&mut self) -> bool {
        self.proc.alive()
    }
}
