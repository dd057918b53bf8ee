//! TLS for the hub (`--tls-cert`, `--tls-key`): a rustls acceptor offering ALPN `h2` and
//! `http/1.1`, whose certificate is swapped in place on reload (SIGHUP): handshakes after the
//! swap present the new certificate, connections already open keep theirs.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// Why the certificate could not be (re)loaded.
#[derive(Debug)]
pub(crate) enum TlsLoadError {
    /// The PEM files could not be read or hold no certificate or key.
    Files(duplex::tls::TlsError),
    /// rustls refused the key (unsupported algorithm, not matching the certificate).
    Key(rustls::Error),
}

impl fmt::Display for TlsLoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsLoadError::Files(e) => write!(f, "{e}"),
            TlsLoadError::Key(e) => write!(f, "private key: {e}"),
        }
    }
}

impl std::error::Error for TlsLoadError {}

/// The hub's certificate: the files it comes from and the key rustls presents now.
pub(crate) struct Certificate {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsLoadError> {
    let (certs, key) =
        duplex::tls::load_pem(&files.cert, &files.key).map_err(TlsLoadError::Files)?;
    let key = CertifiedKey::from_der(certs, key, &provider()).map_err(TlsLoadError::Key)?;
    Ok(Arc::new(key))
}

impl Certificate {
    /// Loads `files`.
    pub(crate) fn load(files: TlsFiles) -> Result<Certificate, TlsLoadError> {
        let current = RwLock::new(load(&files)?);
        Ok(Certificate { files, current })
    }

    /// Reads the files again and presents the new certificate from the next handshake on. On
    /// failure the current one stays.
    pub(crate) fn reload(&self) -> Result<(), TlsLoadError> {
        let key = load(&self.files)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = key;
        Ok(())
    }

    /// An acceptor presenting this certificate (as it is at each handshake), with ALPN `h2`
    /// then `http/1.1`.
    pub(crate) fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsLoadError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsLoadError::Key)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}
