//! The standalone service as tools see it: server reflection answers `list` and `describe` from
//! the descriptors build.rs wrote, the health service answers a real health client, and a call
//! in flight when the server is told to stop still gets its answer.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

mod support;

use std::time::Duration;

use grpc::proto::v2::FILE_DESCRIPTOR_SET;
use grpc::queries::PaymentQueriesService;
use grpc::service::{PaymentsService, ServiceConfig};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

/// Serves what the `payments_service` example serves, on a free port.
async fn standalone() -> (Channel, oneshot::Sender<()>) {
    let service = PaymentsService::new(ServiceConfig::default());
    let queries = PaymentQueriesService::new(service.ledger());
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .unwrap();
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("shop.payments.Payments", ServingStatus::Serving)
        .await;
    let router = grpc::server::router(service, queries)
        .add_service(reflection)
        .add_service(health_service);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(grpc::server::serve(listener, router, async {
        let _stop_or_handle_dropped = stopped.await;
    }));
    let url = format!("http://{addr}");
    let channel = Endpoint::from_shared(url).unwrap().connect().await.unwrap();
    (channel, stop)
}

async fn reflect(channel: Channel, request: MessageRequest) -> MessageResponse {
    let question = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([question]))
        .await
        .unwrap()
        .into_inner();
    let answer: ServerReflectionResponse = answers.message().await.unwrap().unwrap();
    answer.message_response.unwrap()
}

#[tokio::test]
async fn reflection_lists_the_services_and_describes_their_methods() {
    let (channel, _stop) = standalone().await;
    let MessageResponse::ListServicesResponse(list) =
        reflect(channel.clone(), MessageRequest::ListServices(String::new())).await
    else {
        panic!("not a list of services");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "shop.payments.PaymentQueries",
            "shop.payments.Payments",
        ]
    );

    // `describe` is built from the file that defines the symbol: decode it as a
    // descriptor, as grpcurl does, and read the service's methods from it.
    let symbol =
        MessageRequest::FileContainingSymbol("shop.payments.Payments".into());
    let MessageResponse::FileDescriptorResponse(files) =
        reflect(channel, symbol).await
    else {
        panic!("not a file descriptor");
    };
    let file = prost_types::FileDescriptorProto::decode(
        &files.file_descriptor_proto[0][..],
    )
    .unwrap();
    assert_eq!(file.package(), "shop.payments");
    let service = file.service.iter().find(|s| s.name() == "Payments").unwrap();
    let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
    assert_eq!(
        methods,
        ["Authorize", "WatchPayment", "CaptureBatch", "AuthorizeStream"]
    );
    let watch = &service.method[1];
    assert!(watch.server_streaming() && !watch.client_streaming());
}

#[tokio::test]
async fn health_answers_serving_for_payments_and_not_found_for_others() {
    let (channel, _stop) = standalone().await;
    let mut health = HealthClient::new(channel);
    let ours = HealthCheckRequest { service: "shop.payments.Payments".into() };
    let status = health.check(ours).await.unwrap().into_inner().status();
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let unknown = HealthCheckRequest { service: "shop.shipping.Shipping".into() };
    let error = health.check(unknown).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn a_call_in_flight_finishes_before_the_server_stops() {
    // The card network answers 300 ms after it places its hold: the window in
    // which the server is told to stop.
    let config = ServiceConfig {
        card_network_latency: Duration::from_millis(300),
        ..Default::default()
    };
    let server = grpc::server::spawn(config).await.unwrap();
    let mut client =
        grpc::client::connect(server.addr, "shutdown-test").await.unwrap();
    let in_flight = tokio::spawn(async move {
        client.authorize(support::order("o-1")).await.map(|r| r.into_inner())
    });
    // Bounded wait for the condition "the hold is placed", i.e. the call is running.
    let cards = server.cards.clone();
    let mut polls = 0;
    while cards.holds() == 0 {
        polls += 1;
        assert!(polls < 2_000, "the call never reached the card network");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(!in_flight.is_finished());
    server.shutdown().await.unwrap();
    let payment = in_flight.await.unwrap().expect("the call in flight was answered");
    assert_eq!(payment.order_id, "o-1");
}
