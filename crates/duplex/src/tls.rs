//! TLS with rustls (feature `tls`): client configurations for `wss://` and a server acceptor from
//! PEM files.
//!
//! Every configuration built here names the `ring` crypto provider explicitly
//! (`builder_with_provider`), so nothing depends on which provider, if any, the process installed
//! as its default.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
pub use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::error::{Error, Timeout};
use crate::stream::MaybeTlsStream;

/// What went wrong setting up TLS.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused a configuration or a handshake (bad certificate, no common protocol...).
    Rustls(rustls::Error),
    /// The host name of the URL is not a valid TLS server name.
    InvalidServerName(String),
    /// A PEM file could not be read or parsed.
    Pem {
        /// The file.
        path: String,
        /// What failed.
        error: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    NoCertificate(String),
    /// The platform's certificate store could not be loaded, or was empty.
    NativeRoots(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Rustls(e) => write!(f, "{e}"),
            TlsError::InvalidServerName(name) => write!(f, "invalid TLS server name {name:?}"),
            TlsError::Pem { path, error } => write!(f, "{path}: {error}"),
            TlsError::NoCertificate(path) => write!(f, "{path}: no certificate found"),
            TlsError::NativeRoots(e) => write!(f, "native root certificates: {e}"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Rustls(e) => Some(e),
            TlsError::Pem { error, .. } => Some(error),
            TlsError::InvalidServerName(_)
            | TlsError::NoCertificate(_)
            | TlsError::NativeRoots(_) => None,
        }
    }
}

impl From<TlsError> for Error {
    fn from(e: TlsError) -> Self {
        Error::Tls(e)
    }
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError::Rustls(e)
    }
}

/// Which certificate authorities a `wss://` client trusts.
///
/// ```
/// use duplex::tls::ClientTls;
/// assert!(matches!(ClientTls::default(), ClientTls::WebPkiRoots));
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum ClientTls {
    /// The Mozilla root program, compiled in (`webpki-roots`). The default: works the same on
    /// every machine.
    #[default]
    WebPkiRoots,
    /// The operating system's certificate store (`rustls-native-certs`), loaded per connection
    /// attempt; build a [`ClientTls::Config`] once with [`client_config`] to load it only once.
    NativeRoots,
    /// A caller-supplied configuration (custom roots, client certificates, ALPN...).
    Config(Arc<ClientConfig>),
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientTls::WebPkiRoots => f.write_str("WebPkiRoots"),
            ClientTls::NativeRoots => f.write_str("NativeRoots"),
            ClientTls::Config(_) => f.write_str("Config(..)"),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting `roots`, with the ring provider and the safe default
/// protocol versions.
///
/// ```
/// let mut roots = rustls::RootCertStore::empty();
/// roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
/// let config = duplex::tls::client_config_with_roots(roots).unwrap();
/// assert!(config.alpn_protocols.is_empty());
/// ```
pub fn client_config_with_roots(roots: RootCertStore) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A client configuration trusting only the certificates in the PEM file at `path` (a private
/// CA, or a self-signed server certificate), e.g. for `duplex connect --ca-cert`.
///
/// ```no_run
/// let config = duplex::tls::client_config_trusting_pem("ca.pem")?;
/// let options = duplex::ClientOptions { tls: duplex::tls::ClientTls::Config(config), ..Default::default() };
/// # Ok::<_, duplex::tls::TlsError>(())
/// ```
pub fn client_config_trusting_pem(path: impl AsRef<Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let path = path.as_ref();
    let pem_error = |error| TlsError::Pem {
        path: path.display().to_string(),
        error,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(pem_error)? {
        roots.add(cert.map_err(pem_error)?)?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate(path.display().to_string()));
    }
    client_config_with_roots(roots)
}

/// The client configuration for a [`ClientTls`] choice.
///
/// ```
/// use duplex::tls::{ClientTls, client_config};
/// let config = client_config(&ClientTls::WebPkiRoots).unwrap();
/// # let _ = config;
/// ```
pub fn client_config(tls: &ClientTls) -> Result<Arc<ClientConfig>, TlsError> {
    match tls {
        ClientTls::Config(config) => Ok(config.clone()),
        ClientTls::WebPkiRoots => {
            let mut roots = RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            client_config_with_roots(roots)
        }
        ClientTls::NativeRoots => {
            let loaded = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                let why = match loaded.errors.first() {
                    Some(e) => e.to_string(),
                    None => "no certificates found".to_owned(),
                };
                return Err(TlsError::NativeRoots(why));
            }
            client_config_with_roots(roots)
        }
    }
}

/// Runs the client TLS handshake for `host` over `tcp`.
pub(crate) async fn connect(
    tls: &ClientTls,
    host: &str,
    tcp: TcpStream,
) -> Result<MaybeTlsStream, Error> {
    let config = client_config(tls)?;
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| TlsError::InvalidServerName(host.to_owned()))?;
    let stream = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(tls_io_error)?;
    Ok(MaybeTlsStream::from(stream))
}

/// rustls errors come back from tokio-rustls wrapped in `io::Error`: unwrap them so callers can
/// tell a certificate problem from a network one.
pub(crate) fn tls_io_error(e: std::io::Error) -> Error {
    let rustls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls {
        Some(rustls) => Error::Tls(TlsError::Rustls(rustls.clone())),
        None => Error::Io(e),
    }
}

/// Reads a certificate chain and a private key from PEM files.
pub fn load_pem(
    cert_path: impl AsRef<Path>,
    key_path: impl AsRef<Path>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let cert_path = cert_path.as_ref();
    let key_path = key_path.as_ref();
    let pem_error = |path: &Path, error| TlsError::Pem {
        path: path.display().to_string(),
        error,
    };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| pem_error(cert_path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert_path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_path.display().to_string()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| pem_error(key_path, e))?;
    Ok((certs, key))
}

/// A server configuration for a certificate chain and key, with the ring provider, the safe
/// default protocol versions and ALPN `http/1.1`.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A [`TlsAcceptor`] from PEM files: the certificate chain (leaf first) and the private key
/// (PKCS#8, PKCS#1 or SEC1).
///
/// ```no_run
/// let acceptor = duplex::tls::acceptor_from_pem("cert.pem", "key.pem")?;
/// # Ok::<_, duplex::tls::TlsError>(())
/// ```
pub fn acceptor_from_pem(
    cert_path: impl AsRef<Path>,
    key_path: impl AsRef<Path>,
) -> Result<TlsAcceptor, TlsError> {
    let (certs, key) = load_pem(cert_path, key_path)?;
    Ok(TlsAcceptor::from(server_config(certs, key)?))
}

/// Runs the server TLS handshake on an accepted TCP stream, bounded by `timeout`; then pass the
/// stream to [`accept`](crate::accept) or [`accept_with`](crate::accept_with).
///
/// ```no_run
/// # async fn run(listener: tokio::net::TcpListener, acceptor: duplex::tls::TlsAcceptor)
/// #     -> Result<(), duplex::Error> {
/// let (tcp, _) = listener.accept().await?;
/// let tls = duplex::tls::accept(&acceptor, tcp, std::time::Duration::from_secs(10)).await?;
/// let ws = duplex::accept(tls).await?;
/// # drop(ws); Ok(()) }
/// ```
pub async fn accept(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<MaybeTlsStream, Error> {
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Ok(MaybeTlsStream::from(stream)),
        Ok(Err(e)) => Err(tls_io_error(e)),
        Err(_) => Err(Error::Timeout(Timeout::Handshake)),
    }
}
