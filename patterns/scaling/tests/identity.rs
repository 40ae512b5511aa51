//! Mutual TLS around the payments service, which serves the gateway and no one else: each way a
//! caller can be wrong is refused, with an error that says which; and a caller whose certificate
//! is replaced by one from a new CA, while it calls, loses no call.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use grpc::proto::v2::payments_client::PaymentsClient;
use scaling::identity::{Allow, Authority, connect, name_of, serve};
use tokio::net::TcpListener;
use tokio::sync::{RwLock, oneshot};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

mod support;

const HOUR: Duration = Duration::from_secs(3600);

/// Payments over mutual TLS with its certificate from `ca`, trusting `trusted`, serving the
/// gateway only. Stops when the returned sender is dropped.
async fn payments(
    ca: &Authority,
    trusted: Certificate,
) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let identity = ca.issue("payments", HOUR).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let stopped = async {
            let _stop_or_dropped = stopped.await;
        };
        serve(listener, identity, trusted, Allow::only(&["gateway"]), stopped)
            .await
            .unwrap();
    });
    (addr, stop)
}

async fn authorize(channel: Channel, order_id: &str) -> Result<(), tonic::Status> {
    PaymentsClient::new(channel)
        .authorize(support::order(order_id))
        .await
        .map(|_| ())
}

/// A caller refused in the handshake: no attempt is served, and the error names the TLS alert
/// the server sent (`alert`). With TLS 1.3 the client finishes its side of the handshake before
/// the server has checked the client's certificate, so the alert arrives on a connection the
/// client already uses, and hyper may report the connection closed before it reads the alert:
/// each attempt is a new connection, up to ten, until one error names it.
async fn refused_in_the_handshake(
    addr: SocketAddr,
    tls: impl Fn() -> ClientTlsConfig,
    alert: &str,
) -> String {
    let mut seen = Vec::new();
    for attempt in 0..10 {
        let endpoint = Endpoint::from_shared(format!("https://{addr}")).unwrap();
        let answer = match endpoint.tls_config(tls()).unwrap().connect().await {
            Err(error) => Err(format!("{error:?}")),
            Ok(channel) => authorize(channel, &format!("o-refused-{attempt}"))
                .await
                .map_err(|status| format!("{status:?}")),
        };
        let error =
            answer.expect_err("a caller the server does not trust got an answer");
        if error.contains(alert) {
            return error;
        }
        seen.push(error);
    }
    panic!("no attempt was refused with {alert}: {seen:#?}")
}

/// What [`connect`] presents and trusts, as a function, for [`refused_in_the_handshake`].
fn presenting(
    identity: Identity,
    trusted: Certificate,
) -> impl Fn() -> ClientTlsConfig {
    move || {
        ClientTlsConfig::new()
            .domain_name(name_of("payments"))
            .ca_certificate(trusted.clone())
            .identity(identity.clone())
    }
}

#[tokio::test]
async fn payments_serves_the_gateway_and_refuses_every_other_caller_with_a_reason() {
    let ca = Authority::new("shop CA").unwrap();
    let (addr, _stop) = payments(&ca, ca.certificate()).await;

    let gateway = ca.issue("gateway", HOUR).unwrap();
    let channel =
        connect(addr, "payments", gateway, ca.certificate()).await.unwrap();
    authorize(channel, "o-1").await.expect("the gateway is served");

    // No certificate at all: the server asks for one, and ends the handshake without it.
    let anonymous = || {
        ClientTlsConfig::new()
            .domain_name(name_of("payments"))
            .ca_certificate(ca.certificate())
    };
    let without =
        refused_in_the_handshake(addr, anonymous, "CertificateRequired").await;
    println!("no certificate: {without}");

    // A certificate for the gateway, from a CA payments does not trust.
    let rogue = Authority::new("someone else's CA").unwrap();
    let forged = rogue.issue("gateway", HOUR).unwrap();
    let forged = presenting(forged, ca.certificate());
    let other_ca = refused_in_the_handshake(addr, forged, "UnknownCA").await;
    println!("another CA: {other_ca}");

    // The right CA, out of date.
    let now = time::OffsetDateTime::now_utc();
    let day = Duration::from_secs(24 * 3600);
    let expired = ca.issue_between("gateway", now - 2 * day, now - day).unwrap();
    let expired = presenting(expired, ca.certificate());
    let out_of_date =
        refused_in_the_handshake(addr, expired, "CertificateExpired").await;
    println!("expired: {out_of_date}");

    // A real service, and not one payments serves: through the handshake, refused by name.
    let shipping = ca.issue("shipping", HOUR).unwrap();
    let channel =
        connect(addr, "payments", shipping, ca.certificate()).await.unwrap();
    let status = authorize(channel, "o-2").await.expect_err("shipping is refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("shipping.shop.internal"), "{status:?}");

    // And the caller checks the callee: a server that is not payments is not talked to.
    let gateway = ca.issue("gateway", HOUR).unwrap();
    let wrong_callee = match connect(addr, "orders", gateway, ca.certificate()).await
    {
        Err(error) => format!("{error:?}"),
        Ok(channel) => format!("{:?}", authorize(channel, "o-3").await.unwrap_err()),
    };
    println!("a callee with another name: {wrong_callee}");
    assert!(wrong_callee.contains("NotValidForName"), "{wrong_callee}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_moved_to_a_new_ca_while_it_calls_loses_no_call() {
    let (old, new) =
        (Authority::new("CA 2026").unwrap(), Authority::new("CA 2027").unwrap());
    // During the rotation payments trusts both; its own certificate is still the old CA's.
    let both = Certificate::from_pem(format!(
        "{}{}",
        old.certificate_pem(),
        new.certificate_pem()
    ));
    let (addr, _stop) = payments(&old, both).await;

    let first = old.issue("gateway", HOUR).unwrap();
    let channel = connect(addr, "payments", first, old.certificate()).await.unwrap();
    // The channel callers take for their next call, and which certificate it presents.
    let current = Arc::new(RwLock::new((1, channel)));
    let (on_old, on_new, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut callers = tokio::task::JoinSet::new();
    for worker in 0..4 {
        let (current, on_old, on_new, failed) = (
            Arc::clone(&current),
            Arc::clone(&on_old),
            Arc::clone(&on_new),
            Arc::clone(&failed),
        );
        // Each caller goes on until it has made ten calls with the new certificate.
        callers.spawn(async move {
            let mut mine_on_new = 0;
            for call in 0..10_000 {
                if mine_on_new == 10 {
                    return;
                }
                let (generation, channel) = current.read().await.clone();
                match authorize(channel, &format!("o-{worker}-{call}")).await {
                    Ok(()) if generation == 1 => on_old.fetch_add(1, Relaxed),
                    Ok(()) => {
                        mine_on_new += 1;
                        on_new.fetch_add(1, Relaxed)
                    }
                    Err(status) => {
                        eprintln!("call {worker}-{call} failed: {status:?}");
                        failed.fetch_add(1, Relaxed)
                    }
                };
            }
            panic!("caller {worker}: ten calls with the new certificate never went through");
        });
    }
    // Mid-traffic, once some calls went through, the gateway gets its new certificate: new calls
    // take a new connection, and calls already on the old one finish there.
    let some_served = async {
        while on_old.load(Relaxed) < 40 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), some_served)
        .await
        .expect("40 calls served within 30 s");
    let renewed = new.issue("gateway", HOUR).unwrap();
    let channel =
        connect(addr, "payments", renewed, old.certificate()).await.unwrap();
    *current.write().await = (2, channel);
    while let Some(done) = callers.join_next().await {
        done.unwrap();
    }
    assert_eq!(failed.load(Relaxed), 0, "calls failed during the rotation");
    assert!(on_old.load(Relaxed) >= 40);
    assert_eq!(on_new.load(Relaxed), 40, "ten calls each with the new certificate");

    // The rotation ends when payments trusts only the new CA: the old certificate is refused.
    let (addr, _stop) = payments(&old, new.certificate()).await;
    let stale = old.issue("gateway", HOUR).unwrap();
    let stale = presenting(stale, old.certificate());
    refused_in_the_handshake(addr, stale, "UnknownCA").await;
    let fresh = new.issue("gateway", HOUR).unwrap();
    let channel = connect(addr, "payments", fresh, old.certificate()).await.unwrap();
    // Served, call after call (any failure panics).
    support::authorize_many(PaymentsClient::new(channel), "after", 20, 4).await;
}
