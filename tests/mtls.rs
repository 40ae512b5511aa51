//! The shop with mutual TLS between the gateway and payments (`SHOP_TLS_DIR`): payments' gRPC
//! reads answer the gateway's certificate only, and its plain port no longer serves them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

mod support;

use grpc::proto::v2::PaymentsForOrdersRequest;
use grpc::proto::v2::payment_queries_client::PaymentQueriesClient;
use scaling::identity::{Authority, name_of};
use shop::config::{Role, Style};
use shop::identity::{CA_FILE, load};
use shop::roles::intake::CALLER;
use shop::scenario;
use shop_domain::Service;
use support::{sample, scrape, start_secured};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

const PAYMENTS: Role = Role::Participant(Service::Payments);

/// `PaymentsForOrders` for `order` as customer `c-ada`, sent to `url` with `tls` (or none).
async fn ask(
    url: String,
    tls: Option<ClientTlsConfig>,
    order: &str,
) -> Result<usize, Status> {
    let mut endpoint = Endpoint::from_shared(url).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    let channel = endpoint.connect().await.map_err(|e| {
        Status::unavailable(format!("{e}: {:?}", std::error::Error::source(&e)))
    })?;
    let mut request =
        Request::new(PaymentsForOrdersRequest { order_ids: vec![order.to_owned()] });
    request.metadata_mut().insert(CALLER, "c-ada".parse().unwrap());
    let answer =
        PaymentQueriesClient::new(channel).payments_for_orders(request).await?;
    Ok(answer.into_inner().payments.len())
}

/// Trusts the shop's CA, expects payments' name, and presents `identity` if there is one.
fn client(trusted: Certificate, identity: Option<Identity>) -> ClientTlsConfig {
    let tls = ClientTlsConfig::new()
        .domain_name(name_of(PAYMENTS.name()))
        .ca_certificate(trusted);
    match identity {
        Some(identity) => tls.identity(identity),
        None => tls,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_serves_its_reads_to_the_gateway_s_certificate_only() {
    let Some(mut shop) = start_secured("identity", Style::Orchestration).await
    else {
        return;
    };
    let env = shop.env().clone();
    let tls = env.tls.clone().unwrap();
    let placed = shop.run_batch(scenario::batch("tls"), async { Ok(()) }).await;
    shop.placed.extend(placed);
    shop.assert_promises_kept().await;

    // Through the gateway, whose certificate payments serves: the payment is in the view.
    let view = shop.client.order("c-ada", "tls-1").await.unwrap().unwrap();
    assert!(
        view.payment.is_some(),
        "no payment over mutual TLS: {:?}",
        view.missing
    );

    let at = format!("https://{}", env.payments_tls()[0]);
    let trusted =
        || Certificate::from_pem(std::fs::read(tls.dir.join(CA_FILE)).unwrap());
    let own = |role: Role| load(&tls.dir, role).unwrap().identity;

    // The gateway's own certificate: answered.
    let found =
        ask(at.clone(), Some(client(trusted(), Some(own(Role::Gateway)))), "tls-1")
            .await
            .unwrap();
    assert_eq!(found, 1);
    // No certificate: refused in the handshake, before any handler.
    let none = ask(at.clone(), Some(client(trusted(), None)), "tls-1").await;
    eprintln!("no certificate: {none:?}");
    assert!(none.is_err());
    // Another CA's certificate with the gateway's name: refused in the handshake.
    let other = Authority::new("not the shop's CA").unwrap();
    let forged =
        other.issue("gateway", std::time::Duration::from_secs(600)).unwrap();
    let forged =
        ask(at.clone(), Some(client(trusted(), Some(forged))), "tls-1").await;
    eprintln!("another CA's certificate: {forged:?}");
    assert!(forged.is_err());
    // A real certificate of the shop's, for a service payments does not serve.
    let saga =
        ask(at.clone(), Some(client(trusted(), Some(own(Role::Saga)))), "tls-1")
            .await
            .unwrap_err();
    assert_eq!(saga.code(), Code::PermissionDenied, "{saga:?}");
    assert!(saga.message().contains("saga.shop.internal"), "{}", saga.message());
    // The plain port no longer serves the reads, whoever asks and whatever header they set.
    let plain = ask(env.url(PAYMENTS), None, "tls-1").await.unwrap_err();
    assert_eq!(plain.code(), Code::Unimplemented, "{plain:?}");

    // The calls over TLS are counted with the others.
    let scraped = scrape(&env.url(PAYMENTS)).await;
    let method = "/shop.payments.PaymentQueries/PaymentsForOrders";
    let counted = |code: &str| {
        let series = format!(
            r#"shop_grpc_requests_total{{method="{method}",code="{code}"}}"#
        );
        sample::<u64>(&scraped, &series).unwrap_or(0)
    };
    assert!(counted("OK") >= 2, "{scraped}");
    assert_eq!(counted("PERMISSION_DENIED"), 1, "{scraped}");
    shop.stop().await;
    std::fs::remove_dir_all(&tls.dir).unwrap();
}
