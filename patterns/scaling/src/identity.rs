//! Service identity with mutual TLS: each service proves who it is with a certificate, and the
//! service it calls decides from that certificate, not from a header anyone can set.
//!
//! - [`Authority`]: a certificate authority made at start (a key pair and a self-signed CA
//!   certificate, with rcgen), which issues each service a certificate whose subject alternative
//!   name is the service's name in the shop's domain (`gateway.shop.internal`). A mesh's CA (or
//!   SPIFFE's) does the same with a URI name and certificates that live for hours.
//! - [`serve`]: the payments service over TLS that requires a client certificate signed by the
//!   authorities it trusts. rustls refuses, during the handshake, a caller with no certificate,
//!   with one another CA signed, or with one out of its validity dates: such a caller never
//!   reaches a handler.
//! - [`Allow`]: an interceptor that reads the caller's certificate and lets through only the
//!   services named: a certificate the CA signed for `shipping` is a real caller, and still not
//!   one payments serves (`PERMISSION_DENIED`, naming who called).
//! - [`connect`]: a channel that presents the caller's certificate and checks the callee's
//!   against the service name it expects.

use std::sync::Arc;
use std::time::Duration;

use grpc::proto::v2::payments_server::PaymentsServer;
use grpc::service::{PaymentsService, ServiceConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server,
    ServerTlsConfig,
};
use tonic::{Request, Status};

/// The domain every service's name lives in: payments is `payments.shop.internal`.
pub const DOMAIN: &str = "shop.internal";

/// The name a service's certificate carries, and its callers check.
pub fn name_of(service: &str) -> String {
    format!("{service}.{DOMAIN}")
}

/// Why a certificate could not be made, or a server or channel set up with it.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// rcgen refused the parameters or could not sign.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// tonic could not set up TLS, bind, or connect.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The listening socket.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// A certificate authority: what every service trusts, and what issues their certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    certificate: String,
}

impl Authority {
    /// A new CA named `name`, with a key made now.
    pub fn new(name: &str) -> Result<Authority, IdentityError> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let certificate = params.self_signed(&key)?.pem();
        Ok(Authority { issuer: Issuer::new(params, key), certificate })
    }

    /// The CA's certificate, for those who trust it.
    pub fn certificate(&self) -> Certificate {
        Certificate::from_pem(&self.certificate)
    }

    /// The CA's certificate as PEM text: several of these, one after another, make a bundle
    /// that trusts each of them (what a CA rotation needs for a while).
    pub fn certificate_pem(&self) -> &str {
        &self.certificate
    }

    /// A certificate for `service`, valid from a minute ago for `lasts`, with a key made now. It
    /// serves both ways: as a server's (it names the service) and as a client's.
    pub fn issue(
        &self,
        service: &str,
        lasts: Duration,
    ) -> Result<Identity, IdentityError> {
        let now = time::OffsetDateTime::now_utc();
        self.issue_between(service, now - Duration::from_secs(60), now + lasts)
    }

    /// A certificate for `service` valid between two moments: in the past, to see an expired
    /// one refused.
    pub fn issue_between(
        &self,
        service: &str,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Result<Identity, IdentityError> {
        let (certificate, key) = self.pem_between(service, not_before, not_after)?;
        Ok(Identity::from_pem(certificate, key))
    }

    /// What [`Authority::issue`] makes, as PEM text (the certificate, then its key): for a
    /// process that hands certificates to others in files.
    pub fn issue_pem(
        &self,
        service: &str,
        lasts: Duration,
    ) -> Result<(String, String), IdentityError> {
        let now = time::OffsetDateTime::now_utc();
        self.pem_between(service, now - Duration::from_secs(60), now + lasts)
    }

    fn pem_between(
        &self,
        service: &str,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Result<(String, String), IdentityError> {
        let mut params = CertificateParams::new(vec![name_of(service)])?;
        params.distinguished_name.push(DnType::CommonName, name_of(service));
        params.not_before = not_before;
        params.not_after = not_after;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &self.issuer)?;
        Ok((certificate.pem(), key.serialize_pem()))
    }
}

// ANCHOR: allow
/// The callers a service serves, by name: an interceptor that checks the name
/// against the certificate the caller presented in the handshake.
#[derive(Clone, Debug)]
pub struct Allow {
    callers: Arc<[String]>,
}

/// The name a caller's certificate was checked against, for the handler to log or
/// use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller(pub String);

impl Allow {
    /// Lets through the services named in `services` (`["gateway"]`), and no one
    /// else.
    pub fn only(services: &[&str]) -> Allow {
        Allow { callers: services.iter().map(|s| name_of(s)).collect() }
    }

    /// Checks `request`'s peer certificate; on success the request carries its
    /// [`Caller`].
    pub fn check(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let Some(chain) = request.peer_certs() else {
            return Err(Status::unauthenticated(
                "no client certificate: this service takes mutual TLS calls only",
            ));
        };
        let Some(leaf) = chain.first() else {
            return Err(Status::unauthenticated("an empty certificate chain"));
        };
        let caller = self.caller_named_by(leaf)?;
        request.extensions_mut().insert(Caller(caller));
        Ok(request)
    }

    fn caller_named_by(&self, leaf: &CertificateDer<'_>) -> Result<String, Status> {
        let parsed = webpki::EndEntityCert::try_from(leaf).map_err(|e| {
            Status::unauthenticated(format!("an unreadable client certificate: {e}"))
        })?;
        for caller in self.callers.iter() {
            let Ok(name) = ServerName::try_from(caller.as_str()) else { continue };
            if parsed.verify_is_valid_for_subject_name(&name).is_ok() {
                return Ok(caller.clone());
            }
        }
        let presented: Vec<&str> = parsed.valid_dns_names().collect();
        Err(Status::permission_denied(format!(
            "the caller's certificate names {presented:?}; this service serves {:?}",
            self.callers
        )))
    }
}
// ANCHOR_END: allow

// ANCHOR: serve
/// The payments service on `listener`, over TLS with `identity` as its certificate,
/// taking only callers whose certificate one of `trusted` signed (a PEM bundle) and
/// whom `allow` names.
pub async fn serve(
    listener: TcpListener,
    identity: Identity,
    trusted: Certificate,
    allow: Allow,
    shutdown: impl Future<Output = ()>,
) -> Result<(), IdentityError> {
    let tls = ServerTlsConfig::new().identity(identity).client_ca_root(trusted);
    let payments = PaymentsService::new(ServiceConfig::default());
    let checked = move |request| allow.check(request);
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .tls_config(tls)?
        .add_service(PaymentsServer::with_interceptor(payments, checked))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
// ANCHOR_END: serve

// ANCHOR: connect
/// A channel to `service` at `addr` that presents `identity` and accepts only a
/// server whose certificate names `service` and one of `trusted` signed.
pub async fn connect(
    addr: std::net::SocketAddr,
    service: &str,
    identity: Identity,
    trusted: Certificate,
) -> Result<Channel, IdentityError> {
    let tls = ClientTlsConfig::new()
        .domain_name(name_of(service))
        .ca_certificate(trusted)
        .identity(identity);
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(2));
    Ok(endpoint.connect().await?)
}
// ANCHOR_END: connect
