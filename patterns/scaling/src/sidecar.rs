//! What a service mesh puts between two services, reduced to its transport: a sidecar beside the
//! caller and one beside the callee, with mutual TLS between them.
//!
//! The caller speaks plain TCP to its own sidecar ([`Sidecar::outbound`]), which opens a TLS
//! connection to the callee's sidecar presenting the caller's certificate; the callee's sidecar
//! ([`Sidecar::inbound`]) requires that certificate, signed by the CA it trusts, and hands the
//! bytes to the callee in plain TCP. Neither service holds a key or speaks TLS. A mesh's proxy
//! also parses each request (to balance and retry per request, and to count), so these two are
//! the floor of what it adds: two more hops and the encryption, without the parsing.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, copy_bidirectional};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::warn;

use crate::identity::name_of;

/// A certificate and its key, as PEM text, and the CA certificate to trust.
#[derive(Clone, Debug)]
pub struct Pems {
    /// The sidecar's service's certificate.
    pub certificate: String,
    /// Its key.
    pub key: String,
    /// The CA whose certificates the other side must present.
    pub trusted: String,
}

/// Why a sidecar could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// A PEM text did not parse.
    #[error("PEM: {0}")]
    Pem(#[from] rustls_pki_types::pem::Error),
    /// rustls refused the configuration.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The client verifier could not be built from the trusted CA.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The name the callee's certificate must carry is not a DNS name.
    #[error("server name: {0}")]
    Name(#[from] rustls_pki_types::InvalidDnsNameError),
    /// The listening socket.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// One sidecar: where its service (or the other sidecar) connects to it.
pub struct Sidecar {
    /// Where to connect.
    pub addr: SocketAddr,
    accepting: JoinHandle<()>,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(trusted: &str) -> Result<Arc<RootCertStore>, SidecarError> {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(trusted.as_bytes()) {
        roots.add(certificate?)?;
    }
    Ok(Arc::new(roots))
}

fn own(
    pems: &Pems,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), SidecarError> {
    let chain = CertificateDer::pem_slice_iter(pems.certificate.as_bytes())
        .collect::<Result<Vec<_>, _>>()?;
    Ok((chain, PrivateKeyDer::from_pem_slice(pems.key.as_bytes())?))
}

impl Sidecar {
    /// The caller's sidecar: takes plain TCP on `127.0.0.1:0` and carries each connection to
    /// `upstream` over TLS, presenting `pems`' certificate and accepting only a server whose
    /// certificate names `service` and the trusted CA signed.
    pub async fn outbound(
        upstream: SocketAddr,
        service: &str,
        pems: &Pems,
    ) -> Result<Sidecar, SidecarError> {
        let (chain, key) = own(pems)?;
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots(&pems.trusted)?)
            .with_client_auth_cert(chain, key)?;
        let connector = TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from(name_of(service))?;
        Sidecar::accepting(move |client| {
            let (connector, name) = (connector.clone(), name.clone());
            async move {
                let server = TcpStream::connect(upstream).await?;
                server.set_nodelay(true)?;
                let server = connector.connect(name, server).await?;
                pipe(client, server).await
            }
        })
        .await
    }

    /// The callee's sidecar: takes TLS on `127.0.0.1:0` from callers whose certificate the
    /// trusted CA signed (rustls refuses any other in the handshake), presenting `pems`'
    /// certificate, and carries each connection to `app` in plain TCP.
    pub async fn inbound(
        app: SocketAddr,
        pems: &Pems,
    ) -> Result<Sidecar, SidecarError> {
        let (chain, key) = own(pems)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(
            roots(&pems.trusted)?,
            provider(),
        )
        .build()?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        Sidecar::accepting(move |client| {
            let acceptor = acceptor.clone();
            async move {
                let client = acceptor.accept(client).await?;
                let server = TcpStream::connect(app).await?;
                server.set_nodelay(true)?;
                pipe(client, server).await
            }
        })
        .await
    }

    /// Listens on `127.0.0.1:0` and runs `carry` on each connection in a task of its own.
    async fn accepting<F, Fut>(carry: F) -> Result<Sidecar, SidecarError>
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accepting = tokio::spawn(async move {
            loop {
                let client = match listener.accept().await {
                    Ok((client, _)) => client,
                    Err(error) => {
                        warn!(%error, "a sidecar stopped accepting");
                        return;
                    }
                };
                if let Err(error) = client.set_nodelay(true) {
                    warn!(%error, "a sidecar could not set TCP_NODELAY");
                }
                let carried = carry(client);
                tokio::spawn(async move {
                    if let Err(error) = carried.await {
                        warn!(%error, "a connection through a sidecar ended with an error");
                    }
                });
            }
        });
        Ok(Sidecar { addr, accepting })
    }
}

/// Copies both ways until either side closes.
async fn pipe(
    mut a: impl AsyncRead + AsyncWrite + Unpin,
    mut b: impl AsyncRead + AsyncWrite + Unpin,
) -> std::io::Result<()> {
    copy_bidirectional(&mut a, &mut b).await.map(|_| ())
}
