//! Service identity in the shop: mutual TLS between the gateway and payments, when
//! `SHOP_TLS_DIR` is set.
//!
//! Payments' gRPC reads answer for a customer the gateway names in a header. Over plain HTTP/2
//! anyone who reaches the port can set that header. With mutual TLS, payments serves them on a
//! listener of their own that takes only callers whose certificate the shop's CA signed for the
//! gateway (the scaling chapter's [`Allow`]); its plain port keeps the probes and the scrape.
//!
//! [`issue`] makes the CA and a certificate for every role (the scaling chapter's
//! [`Authority`]) and writes them where each process reads its own: `ca.pem`, `<role>.pem` and
//! `<role>.key`, the keys readable by their owner only. On one machine the supervisor's run
//! writes them into one directory; a deployment mounts each role's pair from its own secret.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use scaling::identity::{Allow, Authority};
use shop_domain::Service;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server,
    ServerTlsConfig,
};
use tracing::info;

use crate::config::{Env, PAYMENTS_TLS_VAR, Role, TLS_DIR_VAR};

/// The CA's certificate, in the directory: what every role trusts.
pub const CA_FILE: &str = "ca.pem";
/// How long the certificates [`issue`] makes last: a day, as a mesh's do.
pub const LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The services payments' gRPC reads serve: the gateway, and nobody else.
pub const PAYMENTS_CALLERS: [&str; 1] = ["gateway"];

const PAYMENTS: Role = Role::Participant(Service::Payments);

/// Makes a CA and a certificate for every role, and writes them into `dir` (created if need
/// be): `ca.pem`, `<role>.pem`, `<role>.key`.
pub fn issue(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let authority = Authority::new("shop CA")?;
    write(&dir.join(CA_FILE), authority.certificate_pem(), 0o644)?;
    for role in Role::ALL {
        let (certificate, key) = authority.issue_pem(role.name(), LIFETIME)?;
        write(&dir.join(format!("{role}.pem")), &certificate, 0o644)?;
        write(&dir.join(format!("{role}.key")), &key, 0o600)?;
    }
    info!("certificates for every role, signed by a new CA, in {}", dir.display());
    Ok(())
}

fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// What one role proves itself with, and whom it trusts.
pub struct Credentials {
    /// Its certificate and key.
    pub identity: Identity,
    /// The CA's certificate.
    pub trusted: Certificate,
}

/// `role`'s certificate and key and the CA's certificate, from `dir`; an error names the file
/// and how to make it.
pub fn load(dir: &Path, role: Role) -> anyhow::Result<Credentials> {
    let read = |name: String| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{TLS_DIR_VAR} is {}, but {} cannot be read: make the shop's certificates \
                 with `shop certs {}`",
                dir.display(),
                path.display(),
                dir.display()
            )
        })
    };
    let certificate = read(format!("{role}.pem"))?;
    let key = read(format!("{role}.key"))?;
    let trusted = Certificate::from_pem(read(CA_FILE.to_owned())?);
    Ok(Credentials { identity: Identity::from_pem(certificate, key), trusted })
}

/// Who may call payments' gRPC reads, when they are served over mutual TLS.
pub fn payments_callers() -> Allow {
    Allow::only(&PAYMENTS_CALLERS)
}

/// Where this payments process serves gRPC over mutual TLS: its replica's address in
/// `SHOP_PAYMENTS_TLS_ADDR`, bound on all interfaces when that address is a name.
fn tls_listen_addr(env: &Env) -> anyhow::Result<SocketAddr> {
    let listed = env.payments_tls();
    let own = listed.get(env.replica - 1).with_context(|| {
        format!(
            "{PAYMENTS_TLS_VAR} lists no address for payments replica {}",
            env.replica
        )
    })?;
    if let Ok(addr) = own.parse() {
        return Ok(addr);
    }
    let port = own.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
    let port =
        port.with_context(|| format!("{PAYMENTS_TLS_VAR}: {own} has no port"))?;
    Ok(SocketAddr::from(([0, 0, 0, 0], port)))
}

/// Payments' listener for gRPC over mutual TLS, and the server set up with its certificate.
pub struct TlsListener {
    listener: TcpListener,
    server: Server,
}

/// The listener for payments' gRPC over mutual TLS, bound and given its certificate at the
/// start like the process's own port (so a taken port or a missing certificate stops it at
/// once): when this process is payments and `SHOP_TLS_DIR` is set; `None` otherwise.
pub async fn listen_for(
    env: &Env,
    service: Service,
) -> anyhow::Result<Option<TlsListener>> {
    let Some(tls) = env.tls.as_ref().filter(|_| service == Service::Payments) else {
        return Ok(None);
    };
    let own = load(&tls.dir, PAYMENTS)?;
    let config =
        ServerTlsConfig::new().identity(own.identity).client_ca_root(own.trusted);
    let server = Server::builder().tls_config(config)?;
    let listener = crate::probe::listen(tls_listen_addr(env)?).await?;
    Ok(Some(TlsListener { listener, server }))
}

/// Serves `app` on `listener` with [`serve_payments`], in a task of its own, until SIGTERM;
/// `None` when either is missing (no mutual TLS, or not payments).
pub fn spawn_payments(
    listener: Option<TlsListener>,
    app: Option<Router>,
) -> Option<JoinHandle<anyhow::Result<()>>> {
    let (listener, app) = (listener?, app?);
    let stop = crate::probe::terminated();
    Some(tokio::spawn(serve_payments(listener, app, stop)))
}

// ANCHOR: serve_payments_tls
/// Serves `app` (payments' gRPC reads, counted and traced) over mutual TLS
/// until `stop`: rustls refuses a caller without a certificate the shop's CA
/// signed; the reads' interceptor refuses one signed for any service but the
/// gateway.
pub async fn serve_payments(
    tls: TlsListener,
    app: Router,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let TlsListener { listener, mut server } = tls;
    let addr = listener.local_addr()?;
    info!("payments' gRPC reads over mutual TLS on {addr}, for the gateway only");
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    server
        .add_routes(Routes::from(app))
        .serve_with_incoming_shutdown(incoming, stop)
        .await?;
    Ok(())
}
// ANCHOR_END: serve_payments_tls

/// Channels from the gateway to each payments replica's TLS address: each presents the
/// gateway's certificate and accepts only a server whose certificate names payments. They
/// connect lazily, so the gateway starts while payments is down.
pub fn payments_channels(env: &Env) -> anyhow::Result<Vec<(String, Channel)>> {
    let tls = env.tls.as_ref().context("mutual TLS is not configured")?;
    // Read once: every replica's channel presents the same certificate.
    let own = load(&tls.dir, Role::Gateway)?;
    let config = ClientTlsConfig::new()
        .domain_name(scaling::identity::name_of(PAYMENTS.name()))
        .ca_certificate(own.trusted)
        .identity(own.identity);
    let mut channels = vec![];
    for addr in env.payments_tls() {
        let channel = Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(config.clone())?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        channels.push((addr, channel));
    }
    Ok(channels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_gets_a_certificate_and_a_key_only_it_can_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir =
            std::env::temp_dir().join(format!("shop-tls-{}", uuid::Uuid::new_v4()));
        issue(&dir).unwrap();
        for role in Role::ALL {
            assert!(load(&dir, role).is_ok(), "{role}");
            let key = std::fs::metadata(dir.join(format!("{role}.key"))).unwrap();
            assert_eq!(key.permissions().mode() & 0o777, 0o600, "{role}");
        }
        std::fs::remove_file(dir.join("payments.key")).unwrap();
        let error = format!("{:#}", load(&dir, PAYMENTS).err().unwrap());
        assert!(
            error.contains("payments.key") && error.contains("shop certs"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
