//! The payments service on its own, for grpcurl: gRPC server reflection and health included, so
//! `grpcurl list` and `describe` work with no .proto file at hand. It serves until Ctrl-C.
//!
//! Serve it: `cargo run --example payments_service`            on 127.0.0.1:50051
//! Check it: `cargo run --example payments_service -- --once`  on a free port: asks itself what
//!                                                             the printed grpcurl lines ask,
//!                                                             checks the answers, exits 0
//!
//! Ctrl-C stops it gracefully: it stops accepting, lets calls already running finish, then
//! exits.

use std::net::SocketAddr;

use anyhow::{Context, bail, ensure};
use grpc::ledger::code_name;
use grpc::proto::v2::payment_queries_client::PaymentQueriesClient;
use grpc::proto::v2::{
    AuthorizeRequest, FILE_DESCRIPTOR_SET, PaymentsForOrdersRequest,
};
use grpc::queries::PaymentQueriesService;
use grpc::service::{PaymentsService, ServiceConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::server::Router;
use tonic::transport::{Channel, Endpoint};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};
use tracing::{error, info};

/// The documented port of the standalone payments service (gRPC's customary one).
const ADDR: &str = "127.0.0.1:50051";
const PAYMENTS: &str = "shop.payments.Payments";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::example::init_logging();
    let flags =
        infra::example::Flags::parse(&["--once"]).map_err(anyhow::Error::msg)?;
    let once = flags.has("--once");

    let bind = if once { "127.0.0.1:0" } else { ADDR };
    let listener = TcpListener::bind(bind).await.with_context(|| {
        format!("cannot listen on {bind}: is another copy running?")
    })?;
    let addr = listener.local_addr()?;
    let router = standalone().await?;
    info!(
        "payments-service listening on {addr} (reflection, health); Ctrl-C stops it"
    );
    print_requests(addr);

    if !once {
        grpc::server::serve(listener, router, async {
            match tokio::signal::ctrl_c().await {
                Ok(()) => {
                    info!("Ctrl-C: finishing the calls in flight, then stopping")
                }
                Err(error) => {
                    error!(%error, "cannot listen for Ctrl-C; stopping now")
                }
            }
        })
        .await?;
        info!("stopped");
        return Ok(());
    }

    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(grpc::server::serve(listener, router, async {
        let _stop_or_handle_dropped = stopped.await;
    }));
    self_check(addr).await?;
    // Refused only if the server already ended: the next line returns why.
    let _unless_already_stopped = stop.send(());
    server.await??;
    info!("done: listed, described, health-checked, authorized, looked up, refused");
    Ok(())
}

// ANCHOR: standalone
/// The payments services, plus what makes a service usable by tools it never
/// met: server reflection (v1 and the older v1alpha that many tools still ask
/// for) from the descriptors build.rs wrote, and the standard health service.
async fn standalone() -> anyhow::Result<Router> {
    let service = PaymentsService::new(ServiceConfig::default());
    let queries = PaymentQueriesService::new(service.ledger());
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            )
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status(PAYMENTS, ServingStatus::Serving).await;
    Ok(grpc::server::router(service, queries)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(health_service))
}
// ANCHOR_END: standalone

fn print_requests(addr: SocketAddr) {
    let order = r#"{"order_id":"o-1","amount_cents":2899,"currency":"EUR","card_token":"tok_visa","customer_id":"c-42"}"#;
    println!("Try (each in another terminal):");
    println!("  grpcurl -plaintext {addr} list");
    println!("  grpcurl -plaintext {addr} describe {PAYMENTS}");
    println!(
        "  grpcurl -plaintext -d '{{\"service\":\"{PAYMENTS}\"}}' {addr} grpc.health.v1.Health/Check"
    );
    println!("  grpcurl -plaintext -d '{order}' {addr} {PAYMENTS}/Authorize");
    println!(
        "  grpcurl -plaintext -d '{{\"order_ids\":[\"o-1\"]}}' {addr} \
         shop.payments.PaymentQueries/PaymentsForOrders"
    );
    println!(
        "  grpcurl -plaintext -d '{{\"order_id\":\"o-2\"}}' {addr} {PAYMENTS}/Authorize"
    );
}

/// Asks what the printed grpcurl lines ask, and checks each answer.
async fn self_check(addr: SocketAddr) -> anyhow::Result<()> {
    let url = format!("http://{addr}");
    let services = list_services(&url).await?;
    info!("reflection lists: {}", services.join(", "));
    ensure!(services.iter().any(|s| s == PAYMENTS), "{PAYMENTS} not listed");
    let files = describe(&url, PAYMENTS).await?;
    ensure!(
        files.iter().any(|f| f.contains("Authorize")),
        "no Authorize in {PAYMENTS}"
    );
    info!("describe {PAYMENTS}: {} descriptor file(s), with Authorize", files.len());

    let mut health = HealthClient::new(channel(&url).await?);
    let request = HealthCheckRequest { service: PAYMENTS.into() };
    let status = health.check(request).await?.into_inner().status();
    info!("health of {PAYMENTS}: {}", status.as_str_name());
    ensure!(status == ServingStatus::Serving.into(), "not serving");

    let mut client = grpc::client::connect(addr, "grpcurl-like").await?;
    let order = AuthorizeRequest {
        order_id: "o-1".into(),
        amount_cents: 2899,
        currency: "EUR".into(),
        card_token: "tok_visa".into(),
        customer_id: "c-42".into(),
    };
    let payment = client.authorize(order).await?.into_inner();
    info!(
        "Authorize o-1: {} {}",
        payment.payment_id,
        payment.status().as_str_name()
    );
    let mut queries = PaymentQueriesClient::new(channel(&url).await?);
    let request = PaymentsForOrdersRequest { order_ids: vec!["o-1".into()] };
    let found = queries.payments_for_orders(request).await?.into_inner().payments;
    ensure!(found.len() == 1 && found[0].payment_id == payment.payment_id);
    info!("PaymentsForOrders [o-1]: {}", found[0].payment_id);

    let bad = AuthorizeRequest { order_id: "o-2".into(), ..Default::default() };
    match client.authorize(bad).await {
        Err(status) => info!(
            "Authorize o-2 with no amount: {}: {}",
            code_name(status.code()),
            status.message()
        ),
        Ok(_) => bail!("an empty authorization was accepted"),
    }
    Ok(())
}

async fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_owned())?.connect().await?)
}

/// One question to the reflection service (v1), one answer.
async fn ask(url: &str, request: MessageRequest) -> anyhow::Result<MessageResponse> {
    let mut client = ServerReflectionClient::new(channel(url).await?);
    let question = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([question]))
        .await?
        .into_inner();
    let answer: Option<ServerReflectionResponse> = answers.message().await?;
    answer.and_then(|a| a.message_response).context("reflection answered nothing")
}

/// What `grpcurl list` prints: the full names of the services served.
async fn list_services(url: &str) -> anyhow::Result<Vec<String>> {
    match ask(url, MessageRequest::ListServices(String::new())).await? {
        MessageResponse::ListServicesResponse(list) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => bail!("unexpected reflection answer {other:?}"),
    }
}

/// What `grpcurl describe` reads: the descriptor files that define `symbol`
/// (here only checked for the method names they contain).
async fn describe(url: &str, symbol: &str) -> anyhow::Result<Vec<String>> {
    let request = MessageRequest::FileContainingSymbol(symbol.to_owned());
    match ask(url, request).await? {
        MessageResponse::FileDescriptorResponse(files) => Ok(files
            .file_descriptor_proto
            .iter()
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
            .collect()),
        other => bail!("unexpected reflection answer {other:?}"),
    }
}
