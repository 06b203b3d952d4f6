//! Caller authorisation: with a tokens file, reads and writes are separate permissions, and every RPC that
//! changes data is declared a write.

use std::time::Duration;

use prost::Message;
use reco_proto::feature::v1::{
    GetUserContextRequest, PutUserFeaturesRequest, User,
    feature_service_client::FeatureServiceClient,
};
use reco_server::TraceInterceptor;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const READER: &str = "reader-token-5b1c0e7f2a";
const WRITER: &str = "writer-token-9d3e4f1a7c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_caller_is_refused_on_a_write_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("# test callers\ndashboards read {READER}\nsync read,write {WRITER}\n"),
    )
    .unwrap();
    let mut cfg = reco_feature::Config {
        backend: reco_feature::Backend::Memory,
        ..Default::default()
    };
    cfg.server.auth_tokens_file = Some(tokens);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        reco_feature::build(&cfg)
            .await
            .unwrap()
            .serve(listener, async {
                let _ = stopped.await;
            }),
    );
    // Health needs no token: probes and load balancers keep working.
    reco_server::wait_serving(&addr, Duration::from_secs(10))
        .await
        .unwrap();
    let client = |token: Option<&str>| {
        let interceptor = token.map(TraceInterceptor::with_token).unwrap_or_default();
        FeatureServiceClient::new(reco_server::channel_with(&addr, interceptor).unwrap())
    };
    let write = || PutUserFeaturesRequest {
        users: vec![User {
            user_id: "u1".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let read = || GetUserContextRequest {
        user_id: "u1".into(),
        ..Default::default()
    };

    let err = client(Some(READER))
        .put_user_features(write())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("dashboards") && err.message().contains("PutUserFeatures"),
        "{err:?}"
    );
    assert!(!err.message().contains(READER), "the token is never echoed");
    client(Some(WRITER))
        .put_user_features(write())
        .await
        .unwrap();
    let ctx = client(Some(READER))
        .get_user_context(read())
        .await
        .unwrap()
        .into_inner();
    assert!(ctx.found, "the reader reads what the writer wrote");

    for token in [None, Some("not-a-known-token-123456")] {
        let err = client(token).get_user_context(read()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }
    let health = HealthClient::new(reco_server::channel_with(&addr, Default::default()).unwrap())
        .check(HealthCheckRequest::default())
        .await;
    assert!(health.is_ok());
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// Every RPC whose name says it changes data is declared a write by its service, and every declared write exists:
/// a new write RPC cannot slip past the read permission.
#[test]
fn every_rpc_that_changes_data_needs_the_write_permission() {
    const WRITE_VERBS: &[&str] = &[
        "Put",
        "Append",
        "Activate",
        "Add",
        "Remove",
        "Upsert",
        "Delete",
        "Invalidate",
        "Push",
        "Record",
    ];
    let declared: [(&str, &[&str]); 6] = [
        (reco_feature::API, reco_feature::WRITE_RPCS),
        (reco_cache::API, reco_cache::WRITE_RPCS),
        (reco_vector_recall::API, reco_vector_recall::WRITE_RPCS),
        (reco_graph_recall::API, reco_graph_recall::WRITE_RPCS),
        (reco_ranking::API, reco_ranking::WRITE_RPCS),
        (reco_gateway::API, reco_gateway::WRITE_RPCS),
    ];
    let set = prost_types::FileDescriptorSet::decode(reco_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut seen = 0;
    for file in &set.file {
        for service in &file.service {
            let full = format!("{}.{}", file.package(), service.name());
            let Some((_, writes)) = declared.iter().find(|(api, _)| *api == full) else {
                continue;
            };
            seen += 1;
            let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
            for m in &methods {
                if WRITE_VERBS.iter().any(|v| m.starts_with(v)) {
                    assert!(
                        writes.contains(m),
                        "{full}/{m} changes data but is not a write"
                    );
                }
            }
            for w in *writes {
                assert!(
                    methods.contains(w),
                    "{full} declares {w}, which it does not have"
                );
            }
        }
    }
    assert_eq!(
        seen,
        declared.len(),
        "every service's API is in the descriptor set"
    );
}
