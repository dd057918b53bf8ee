//! Helpers of the proxy tests: real proxies from Debian (tinyproxy for HTTP CONNECT, dante
//! for SOCKS5) started on free loopback ports with generated configuration files and stopped
//! by PID, a small SOCKS5 server with username/password written here (dante's username
//! method checks system accounts), and WebSocket echo servers, plain and TLS.
//!
//! The proxies are installed by `scripts/test` (`apt-get install -y tinyproxy dante-server`).
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these helpers"
)]

use std::future::Future;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duplex::ClientOptions;
use duplex::tls::ClientTls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Fails the test instead of hanging it.
pub async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .expect("test timed out")
}

/// A fresh directory for one test's files, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("duplex-proxy-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A port where nothing listens (bound, then closed).
pub fn dead_port() -> u16 {
    free_port()
}

/// A proxy process, stopped by PID (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

impl Daemon {
    /// The proxy's output so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM lets dante's main process take its children down with it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path of a program, from PATH or the sbin directories, or a panic saying how to get it.
fn program(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path.split(':').chain(["/usr/sbin", "/sbin", "/usr/bin"]);
    for dir in dirs {
        let candidate = Path::new(dir).join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "{name} is not installed: `apt-get install -y tinyproxy dante-server` \
         (scripts/test installs them)"
    );
}

/// Starts `program` with `args`, output to a log file, and waits (bounded) until `port`
/// accepts connections.
fn start(dir: TempDir, program: PathBuf, args: &[&str], port: u16) -> Daemon {
    let log = dir.path("log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(&program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
    let mut daemon = Daemon {
        child,
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        log,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if std::net::TcpStream::connect(daemon.addr).is_ok() {
            return daemon;
        }
        if let Ok(Some(status)) = daemon.child.try_wait() {
            panic!("{} exited ({status}):\n{}", program.display(), daemon.log());
        }
        assert!(
            Instant::now() < deadline,
            "{} did not listen on {port} within 10 s:\n{}",
            program.display(),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// tinyproxy (HTTP CONNECT) on a free port; with `BasicAuth user password` when given.
pub fn tinyproxy(auth: Option<(&str, &str)>) -> Daemon {
    let dir = TempDir::new("tinyproxy");
    let port = free_port();
    let mut config = format!(
        "Port {port}\nListen 127.0.0.1\nTimeout 30\nAllow 127.0.0.1\nMaxClients 50\n\
         LogLevel Info\n"
    );
    if let Some((user, password)) = auth {
        config.push_str(&format!("BasicAuth {user} {password}\n"));
    }
    let conf = dir.path("tinyproxy.conf");
    std::fs::write(&conf, config).unwrap();
    let conf = conf.to_str().unwrap().to_owned();
    start(dir, program("tinyproxy"), &["-d", "-c", &conf], port)
}

/// dante (`danted`, SOCKS5 without authentication) on a free port.
pub fn danted() -> Daemon {
    let dir = TempDir::new("danted");
    let port = free_port();
    let config = format!(
        "logoutput: stderr\n\
         internal: 127.0.0.1 port = {port}\n\
         external: 127.0.0.1\n\
         clientmethod: none\n\
         socksmethod: none\n\
         user.privileged: root\n\
         user.unprivileged: nobody\n\
         client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}\n\
         socks pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 command: connect }}\n"
    );
    let conf = dir.path("danted.conf");
    std::fs::write(&conf, config).unwrap();
    let conf = conf.to_str().unwrap().to_owned();
    let pid = dir.path("danted.pid");
    let pid = pid.to_str().unwrap().to_owned();
    start(dir, program("danted"), &["-f", &conf, "-p", &pid], port)
}

/// A WebSocket echo server on 127.0.0.1, plain or (with `tls`) TLS.
pub async fn echo_server(tls: Option<duplex::tls::TlsAcceptor>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let stream = match &tls {
                    Some(acceptor) => {
                        match duplex::tls::accept(acceptor, tcp, Duration::from_secs(10)).await {
                            Ok(stream) => stream,
                            Err(_) => return,
                        }
                    }
                    None => duplex::MaybeTlsStream::Plain(tcp),
                };
                let Ok(mut ws) = duplex::accept(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.recv().await {
                    if ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A TLS echo server with a fresh self-signed certificate for `localhost` and 127.0.0.1;
/// returns its address, the client TLS settings that trust it, and the certificate as PEM.
pub async fn wss_echo_server() -> (SocketAddr, ClientTls, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let config = duplex::tls::server_config(vec![certified.cert.der().clone()], key).unwrap();
    let addr = echo_server(Some(duplex::tls::TlsAcceptor::from(config))).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let client = ClientTls::Config(duplex::tls::client_config_with_roots(roots).unwrap());
    (addr, client, certified.cert.pem())
}

/// Connects, checks that one message echoes, closes; returns the address the client's TCP
/// stream was connected to (the proxy's when the connection was tunnelled).
pub async fn echo_once(url: &str, options: ClientOptions) -> Result<SocketAddr, duplex::Error> {
    let (mut ws, _) = duplex::connect_with(url, options).await?;
    let peer = ws.get_ref().tcp().peer_addr().unwrap();
    let text = format!("hello through {url}");
    ws.send(duplex::Message::text(text.clone())).await?;
    let echoed = ws.recv().await.expect("the echo server closed")?;
    assert_eq!(echoed, duplex::Message::text(text));
    let big = vec![0x5au8; 200_000];
    ws.send(duplex::Message::binary(big.clone())).await?;
    let echoed = ws.recv().await.expect("the echo server closed")?;
    assert_eq!(echoed.as_bytes(), &big[..]);
    ws.close(duplex::CloseCode::NORMAL, "").await?;
    Ok(peer)
}

/// What a [`Socks5Server`] was asked to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    Ip(SocketAddr),
    Domain(String, u16),
}

/// A SOCKS5 server with username/password (RFC 1929) only, written for the tests (it
/// shares no code with the client): it refuses clients that offer no username method,
/// answers a wrong password with status 1, and records each CONNECT target.
pub struct Socks5Server {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Requested>>>,
}

impl Socks5Server {
    pub async fn start(user: &'static str, password: &'static str) -> Socks5Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let _ = serve_socks5(tcp, user, password, log).await;
                });
            }
        });
        Socks5Server { addr, requests }
    }
}

async fn serve_socks5(
    mut tcp: TcpStream,
    user: &str,
    password: &str,
    log: Arc<Mutex<Vec<Requested>>>,
) -> std::io::Result<()> {
    let mut head = [0u8; 2];
    tcp.read_exact(&mut head).await?;
    assert_eq!(head[0], 5, "SOCKS version");
    let mut methods = vec![0u8; usize::from(head[1])];
    tcp.read_exact(&mut methods).await?;
    if !methods.contains(&2) {
        tcp.write_all(&[5, 0xFF]).await?;
        return Ok(());
    }
    tcp.write_all(&[5, 2]).await?;
    let mut version_len = [0u8; 2];
    tcp.read_exact(&mut version_len).await?;
    assert_eq!(version_len[0], 1, "RFC 1929 version");
    let mut got_user = vec![0u8; usize::from(version_len[1])];
    tcp.read_exact(&mut got_user).await?;
    let mut len = [0u8; 1];
    tcp.read_exact(&mut len).await?;
    let mut got_password = vec![0u8; usize::from(len[0])];
    tcp.read_exact(&mut got_password).await?;
    if got_user != user.as_bytes() || got_password != password.as_bytes() {
        tcp.write_all(&[1, 1]).await?;
        return Ok(());
    }
    tcp.write_all(&[1, 0]).await?;

    let mut request = [0u8; 4];
    tcp.read_exact(&mut request).await?;
    assert_eq!(&request[..3], &[5, 1, 0], "CONNECT request");
    let requested = match request[3] {
        1 => {
            let mut ip = [0u8; 4];
            tcp.read_exact(&mut ip).await?;
            let port = tcp.read_u16().await?;
            Requested::Ip(SocketAddr::from((ip, port)))
        }
        4 => {
            let mut ip = [0u8; 16];
            tcp.read_exact(&mut ip).await?;
            let port = tcp.read_u16().await?;
            Requested::Ip(SocketAddr::from((ip, port)))
        }
        3 => {
            let len = tcp.read_u8().await?;
            let mut name = vec![0u8; usize::from(len)];
            tcp.read_exact(&mut name).await?;
            let port = tcp.read_u16().await?;
            Requested::Domain(String::from_utf8(name).unwrap(), port)
        }
        other => panic!("address type {other}"),
    };
    log.lock().unwrap().push(requested.clone());
    let upstream = match &requested {
        Requested::Ip(addr) => TcpStream::connect(addr).await,
        Requested::Domain(name, port) => TcpStream::connect((name.as_str(), *port)).await,
    };
    let Ok(mut upstream) = upstream else {
        tcp.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
        return Ok(());
    };
    tcp.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 0]).await?;
    tcp.flush().await?;
    tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await?;
    Ok(())
}

/// Writes `pem` to `path` and returns the path as a string (for child processes).
pub fn write_file(path: &Path, contents: &str) -> String {
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(contents.as_bytes()).unwrap();
    path.to_str().unwrap().to_owned()
}
