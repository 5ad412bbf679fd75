//! The server itself: health and reflection, for any gRPC client.

use broker_e2e::{both, DbBackend, Harness};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

async fn channel(h: &Harness) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(h.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn health_reports_serving(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let mut health = HealthClient::new(channel(&h).await);
    for service in ["broker.v1.AgentService", "broker.v1.AuditService"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service}");
    }
}
both!(health_reports_serving);

async fn reflection_lists_the_services(backend: DbBackend) {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let h = Harness::start(backend).await;
    let mut client = ServerReflectionClient::new(channel(&h).await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected {resp:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "broker.v1.AgentService",
        "broker.v1.AuditService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
}
both!(reflection_lists_the_services);
