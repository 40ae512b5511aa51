//! The OTLP exporter against a stand-in collector: a tonic server implementing the OTLP trace
//! service, as Jaeger and the OpenTelemetry Collector do on port 4317. What it receives is what a
//! tracing backend would store.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::time::Duration;

use opentelemetry::trace::{TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_sdk::trace::InMemorySpanExporter;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use trace_context::setup;

struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        // The test reading them is gone: tell the exporter, rather than pretend.
        if self.0.send(request.into_inner()).is_err() {
            return Err(Status::unavailable("the test's collector has stopped"));
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector_with_their_ids_and_service_name() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (sent, mut received) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(sent)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(
                listener,
            )),
    );

    let memory = InMemorySpanExporter::default();
    let endpoint = format!("http://{addr}");
    let provider = setup::provider_with_otlp(memory.clone(), &endpoint).unwrap();
    let tracer = provider.tracer("otlp-test");
    let trace_id = tracer.in_span("POST /checkout", |cx| {
        cx.span().set_attribute(opentelemetry::KeyValue::new(
            "shop.service",
            "storefront",
        ));
        cx.span().span_context().trace_id()
    });
    // The in-memory exporter has it at once (it is called as the span ends); the
    // OTLP one batches it.
    assert_eq!(memory.get_finished_spans().unwrap().len(), 1);
    // Shutting down flushes the batch; it blocks, so not on a runtime worker.
    tokio::task::spawn_blocking(move || provider.shutdown()).await.unwrap().unwrap();

    let request = tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("the collector got nothing within 10 s")
        .unwrap();
    let resource = request.resource_spans[0].resource.as_ref().unwrap();
    let service =
        resource.attributes.iter().find(|kv| kv.key == "service.name").unwrap();
    assert!(format!("{:?}", service.value).contains("shop"));
    let spans = &request.resource_spans[0].scope_spans[0].spans;
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].name, "POST /checkout");
    assert_eq!(spans[0].trace_id, trace_id.to_bytes().to_vec());
}
