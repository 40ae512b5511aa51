//! Two sidecars between a caller and payments: the services speak plain gRPC to them, the
//! sidecars speak mutual TLS to each other, and a sidecar without the shop's certificate gets
//! nothing through.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::net::SocketAddr;
use std::time::Duration;

use grpc::proto::v2::payments_client::PaymentsClient;
use grpc::proto::v2::payments_server::PaymentsServer;
use grpc::service::{PaymentsService, ServiceConfig};
use scaling::identity::Authority;
use scaling::sidecar::{Pems, Sidecar};
use tokio::net::TcpListener;
use tonic::transport::{Endpoint, Server};

#[allow(dead_code)] // this file needs only the order
mod support;

const HOUR: Duration = Duration::from_secs(3600);

/// Plain payments on `127.0.0.1:0`, as the app behind its sidecar.
async fn payments() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Server::builder().add_service(PaymentsServer::new(
        PaymentsService::new(ServiceConfig::default()),
    ));
    tokio::spawn(grpc::server::serve(listener, router, std::future::pending()));
    addr
}

fn pems(ca: &Authority, service: &str, trusted: &Authority) -> Pems {
    let (certificate, key) = ca.issue_pem(service, HOUR).unwrap();
    Pems { certificate, key, trusted: trusted.certificate_pem().to_owned() }
}

async fn authorize(at: SocketAddr, order_id: &str) -> Result<(), String> {
    let endpoint = Endpoint::from_shared(format!("http://{at}")).unwrap();
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    PaymentsClient::new(channel)
        .authorize(support::order(order_id))
        .await
        .map(|_| ())
        .map_err(|status| format!("{status:?}"))
}

#[tokio::test]
async fn calls_cross_two_sidecars_and_only_the_shop_s_certificates_get_through() {
    let shop = Authority::new("shop CA").unwrap();
    let app = payments().await;
    let inbound =
        Sidecar::inbound(app, &pems(&shop, "payments", &shop)).await.unwrap();
    let outbound =
        Sidecar::outbound(inbound.addr, "payments", &pems(&shop, "gateway", &shop))
            .await
            .unwrap();
    // The caller speaks plain gRPC to its own sidecar; payments hears plain gRPC from its own.
    for n in 0..5 {
        authorize(outbound.addr, &format!("o-{n}")).await.unwrap();
    }

    // Plain gRPC straight to payments' sidecar: it speaks TLS only.
    assert!(authorize(inbound.addr, "o-plain").await.is_err());

    // A caller's sidecar with another CA's certificate: refused in the handshake.
    let other = Authority::new("another CA").unwrap();
    let forged = pems(&other, "gateway", &shop);
    let stranger =
        Sidecar::outbound(inbound.addr, "payments", &forged).await.unwrap();
    let refused = authorize(stranger.addr, "o-forged").await.unwrap_err();
    eprintln!("a sidecar with another CA's certificate: {refused}");

    // A callee's sidecar the caller's does not trust: the caller's refuses it.
    let impostor_app = payments().await;
    let impostor = Sidecar::inbound(impostor_app, &pems(&other, "payments", &shop))
        .await
        .unwrap();
    let misled =
        Sidecar::outbound(impostor.addr, "payments", &pems(&shop, "gateway", &shop))
            .await
            .unwrap();
    let refused = authorize(misled.addr, "o-impostor").await.unwrap_err();
    eprintln!("a callee's sidecar with another CA's certificate: {refused}");
}
