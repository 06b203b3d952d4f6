//! TLS on a service: mutual TLS refuses a client with no certificate or one from another CA, and a certificate
//! replaced on disk is served to new connections without a restart.

use std::{path::Path, time::Duration};

use reco_proto::feature::v1::{
    GetUserContextRequest, feature_service_client::FeatureServiceClient,
};
use reco_test_support::{TestCa, Usage};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// A fresh connection trusting `ca`, presenting `identity` when given.
async fn call(addr: &str, ca: &Path, identity: Option<(&Path, &Path)>) -> Result<(), String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(read(cert), read(key)));
    }
    let channel: Channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    FeatureServiceClient::new(channel)
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
