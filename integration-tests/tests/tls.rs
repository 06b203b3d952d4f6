//! TLS: mutual TLS refuses a client with no certificate or one from another CA, a certificate replaced on disk is
//! served to new connections without a restart, and two services call each other over mutual TLS.

use std::{path::Path, time::Duration};

use reco_proto::{
    feature::v1::{
        GetUserContextRequest, PutUserFeaturesRequest, User,
        feature_service_client::FeatureServiceClient,
    },
    vector_recall::v1::{
        ItemVector, SearchRequest, UpsertRequest, search_request::Query,
        vector_recall_client::VectorRecallClient,
    },
};
use reco_test_support::{TestCa, Usage};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// A fresh TLS channel trusting `ca`, presenting `identity` when given.
async fn connect(
    addr: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(read(cert), read(key)));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))
}

/// A fresh connection trusting `ca`, presenting `identity` when given, and one read.
async fn call(addr: &str, ca: &Path, identity: Option<(&Path, &Path)>) -> Result<(), String> {
    FeatureServiceClient::new(connect(addr, ca, identity).await?)
        .get_user_context(GetUserContextRequest {
            user_id: "u1".into(),
            ..Default::default()
        })
        .await
        .map(drop)
        .map_err(|e| format!("call: {e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_strangers_and_reloads_a_replaced_certificate() {
    let Some(openssl) = TestCa::openssl() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ours = TestCa::new(&openssl, dir.path(), "ours");
    let (server_cert, server_key) = ours.issue("server", Usage::Server);
    let good = ours.issue("gateway", Usage::Client);
    let theirs = TestCa::new(&openssl, dir.path(), "theirs");
    let stranger = theirs.issue("stranger", Usage::Client);

    // The served files live apart from what issued them, so they can be replaced like a mounted Secret.
    let served = dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    std::fs::copy(&server_cert, served.join("tls.crt")).unwrap();
    std::fs::copy(&server_key, served.join("tls.key")).unwrap();
    let mut cfg = reco_feature::Config {
        backend: reco_feature::Backend::Memory,
        ..Default::default()
    };
    cfg.server.tls.tls_cert = Some(served.join("tls.crt"));
    cfg.server.tls.tls_key = Some(served.join("tls.key"));
    cfg.server.tls.tls_client_ca = Some(ours.ca_file());
    cfg.server.tls.tls_reload_ms = 50;
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

    let mut last = String::new();
    for _ in 0..100 {
        match call(&addr, &ours.ca_file(), Some((&good.0, &good.1))).await {
            Ok(()) => {
                last.clear();
                break;
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        last.is_empty(),
        "a client with our certificate is served: {last}"
    );
    assert!(
        call(&addr, &ours.ca_file(), None).await.is_err(),
        "no client certificate: refused"
    );
    assert!(
        call(&addr, &ours.ca_file(), Some((&stranger.0, &stranger.1)))
            .await
            .is_err(),
        "a certificate from another CA: refused"
    );
    let plain = FeatureServiceClient::new(reco_server::channel(&addr).unwrap())
        .get_user_context(GetUserContextRequest {
            user_id: "u1".into(),
            ..Default::default()
        })
        .await;
    assert!(plain.is_err(), "plain text: refused");

    // Rotation: a certificate from a new CA replaces the served files; new connections get it.
    let next = TestCa::new(&openssl, dir.path(), "next");
    let (next_cert, next_key) = next.issue("server-next", Usage::Server);
    std::fs::copy(&next_key, served.join("tls.key.new")).unwrap();
    std::fs::copy(&next_cert, served.join("tls.crt.new")).unwrap();
    std::fs::rename(served.join("tls.key.new"), served.join("tls.key")).unwrap();
    std::fs::rename(served.join("tls.crt.new"), served.join("tls.crt")).unwrap();
    let mut rotated = false;
    for _ in 0..100 {
        if call(&addr, &next.ca_file(), Some((&good.0, &good.1)))
            .await
            .is_ok()
        {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        rotated,
        "the replaced certificate is served without a restart"
    );
    assert!(
        call(&addr, &ours.ca_file(), Some((&good.0, &good.1)))
            .await
            .is_err(),
        "the old certificate is no longer served"
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// Starts a service's server on a free port; send on the sender to stop it.
async fn serve(
    server: reco_server::GrpcServer,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), reco_server::ServerError>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    (addr, stop, task)
}

/// Two services over mutual TLS: vector-recall asks the feature service for a user's embedding with its own
/// certificate; a vector-recall without one is refused by the feature service, and a caller from another CA by
/// vector-recall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_call_each_other_over_mutual_tls() {
    let Some(openssl) = TestCa::openssl() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&openssl, dir.path(), "mesh");
    let feature_cert = ca.issue("feature", Usage::Server);
    // One certificate per service, good for serving and for calling (server and client usage).
    let vector_cert = ca.issue("vector", Usage::Both);
    let client = ca.issue("caller", Usage::Client);
    let stranger = TestCa::new(&openssl, dir.path(), "other").issue("stranger", Usage::Client);

    let mut feature = reco_feature::Config {
        backend: reco_feature::Backend::Memory,
        ..Default::default()
    };
    feature.server.tls.tls_cert = Some(feature_cert.0.clone());
    feature.server.tls.tls_key = Some(feature_cert.1.clone());
    feature.server.tls.tls_client_ca = Some(ca.ca_file());
    let (feature_addr, stop_feature, feature_task) =
        serve(reco_feature::build(&feature).await.unwrap()).await;

    let mut writer = FeatureServiceClient::new(
        connect(&feature_addr, &ca.ca_file(), Some((&client.0, &client.1)))
            .await
            .unwrap(),
    );
    writer
        .put_user_features(PutUserFeaturesRequest {
            users: vec![User {
                user_id: "u1".into(),
                embedding: vec![1.0, 0.0],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();

    let mut vector = reco_vector_recall::Config {
        dimension: 2,
        feature_addr: Some(feature_addr.clone()),
        ..Default::default()
    };
    vector.server.tls.tls_cert = Some(vector_cert.0.clone());
    vector.server.tls.tls_key = Some(vector_cert.1.clone());
    vector.server.tls.tls_client_ca = Some(ca.ca_file());
    vector.server.tls.tls_ca = Some(ca.ca_file());
    let (vector_addr, stop_vector, vector_task) =
        serve(reco_vector_recall::build(&vector).await.unwrap()).await;
    let mut search = VectorRecallClient::new(
        connect(&vector_addr, &ca.ca_file(), Some((&client.0, &client.1)))
            .await
            .unwrap(),
    );
    search
        .upsert(UpsertRequest {
            items: vec![
                ItemVector {
                    item_id: "east".into(),
                    vector: vec![1.0, 0.1],
                    ..Default::default()
                },
                ItemVector {
                    item_id: "north".into(),
                    vector: vec![0.0, 1.0],
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let by_user = || SearchRequest {
        query: Some(Query::UserId("u1".into())),
        k: 1,
        ..Default::default()
    };
    let hits = search.search(by_user()).await.unwrap().into_inner().hits;
    assert_eq!(
        hits[0].item_id, "east",
        "the embedding came from the feature service over mTLS"
    );

    let refused = match connect(
        &vector_addr,
        &ca.ca_file(),
        Some((&stranger.0, &stranger.1)),
    )
    .await
    {
        Err(_) => true,
        Ok(c) => VectorRecallClient::new(c).search(by_user()).await.is_err(),
    };
    assert!(refused, "a caller with another CA's certificate is refused");
    let _ = stop_vector.send(());
    vector_task.await.unwrap().unwrap();

    // A service that trusts the CA but presents no certificate of its own: refused by the other.
    let tls_without_identity = reco_server::tls::TlsArgs {
        tls_ca: Some(ca.ca_file()),
        ..Default::default()
    }
    .client()
    .unwrap()
    .unwrap();
    let anonymous = FeatureServiceClient::new(
        reco_server::channel_tls(&feature_addr, Some(&tls_without_identity)).unwrap(),
    )
    .get_user_context(GetUserContextRequest {
        user_id: "u1".into(),
        ..Default::default()
    })
    .await;
    assert!(
        anonymous.is_err(),
        "a service without its certificate is refused by the other"
    );

    // A service's own certificate rotated on disk: used for its next connections, no restart. It starts with a
    // certificate from another CA (the feature service refuses it), then the files are replaced by one from ours.
    let other = TestCa::new(&openssl, dir.path(), "other-both");
    let wrong = other.issue("vector-wrong", Usage::Both);
    let right = ca.issue("vector-right", Usage::Both);
    let rotating = dir.path().join("rotating");
    std::fs::create_dir(&rotating).unwrap();
    std::fs::copy(&wrong.0, rotating.join("tls.crt")).unwrap();
    std::fs::copy(&wrong.1, rotating.join("tls.key")).unwrap();
    let bundle = dir.path().join("bundle.crt");
    std::fs::write(
        &bundle,
        [read(&ca.ca_file()), read(&other.ca_file())].concat(),
    )
    .unwrap();
    let mut vector = reco_vector_recall::Config {
        dimension: 2,
        feature_addr: Some(feature_addr.clone()),
        ..Default::default()
    };
    vector.server.tls.tls_cert = Some(rotating.join("tls.crt"));
    vector.server.tls.tls_key = Some(rotating.join("tls.key"));
    vector.server.tls.tls_client_ca = Some(ca.ca_file());
    vector.server.tls.tls_ca = Some(ca.ca_file());
    vector.server.tls.tls_reload_ms = 50;
    let (vector_addr, stop_vector, vector_task) =
        serve(reco_vector_recall::build(&vector).await.unwrap()).await;
    let mut search = VectorRecallClient::new(
        connect(&vector_addr, &bundle, Some((&client.0, &client.1)))
            .await
            .unwrap(),
    );
    search
        .upsert(UpsertRequest {
            items: vec![ItemVector {
                item_id: "east".into(),
                vector: vec![1.0, 0.1],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        search.search(by_user()).await.is_err(),
        "the feature service refuses a certificate from another CA"
    );
    std::fs::copy(&right.1, rotating.join("tls.key.new")).unwrap();
    std::fs::copy(&right.0, rotating.join("tls.crt.new")).unwrap();
    std::fs::rename(rotating.join("tls.key.new"), rotating.join("tls.key")).unwrap();
    std::fs::rename(rotating.join("tls.crt.new"), rotating.join("tls.crt")).unwrap();
    let mut served = false;
    for _ in 0..100 {
        let c = connect(&vector_addr, &bundle, Some((&client.0, &client.1))).await;
        if let Ok(c) = c
            && VectorRecallClient::new(c).search(by_user()).await.is_ok()
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        served,
        "the rotated client certificate is used without a restart"
    );
    let _ = stop_vector.send(());
    vector_task.await.unwrap().unwrap();
    let _ = stop_feature.send(());
    feature_task.await.unwrap().unwrap();
}
