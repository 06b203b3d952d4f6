//! The shared server's layers, seen from a real client: a panicking handler answers INTERNAL, requests over the
//! concurrency limit are refused at once with RESOURCE_EXHAUSTED, and a Unix socket serves the same routes.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use reco_server::{GrpcServer, ServerArgs};
use tokio::sync::{Notify, oneshot};
use tonic::{Code, body::Body, codegen::http, server::NamedService};

/// A gRPC service that panics on `/reco.test.Test/Panic` and parks on anything else until released.
#[derive(Clone)]
struct TestService {
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

impl NamedService for TestService {
    const NAME: &'static str = "reco.test.Test";
}

impl tower::Service<http::Request<Body>> for TestService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let (entered, release) = (self.entered.clone(), self.release.clone());
        Box::pin(async move {
            if req.uri().path().ends_with("/Panic") {
                panic!("handler bug");
            }
            let released = release.notified();
            entered.notify_one();
            released.await;
            Ok(tonic::Status::ok("").into_http())
        })
    }
}

struct Running {
    addr: String,
    entered: Arc<Notify>,
    release: Arc<Notify>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(limit: u32) -> Running {
    start_with(ServerArgs {
        concurrency_limit: limit,
        ..Default::default()
    })
    .await
}

async fn start_with(args: ServerArgs) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let server = GrpcServer::new("test", args).add_service(TestService {
        entered: entered.clone(),
        release: release.clone(),
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    reco_server::wait_serving(&addr, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    Running {
        addr,
        entered,
        release,
        stop,
        task,
    }
}

async fn call(addr: &str, method: &'static str) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(reco_server::channel(addr).unwrap());
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(method);
    grpc.unary(
        tonic::Request::new(()),
        path,
        tonic_prost::ProstCodec::<(), ()>::default(),
    )
    .await
    .map(drop)
}

#[tokio::test]
async fn a_panicking_handler_answers_internal_and_the_server_keeps_serving() {
    let r = start(16).await;
    let err = call(&r.addr, "/reco.test.Test/Panic").await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(err.message().contains("panicked"), "{}", err.message());
    // The server survived and still answers.
    let err = call(&r.addr, "/reco.test.Test/Panic").await.unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    reco_server::wait_serving(&r.addr, std::time::Duration::from_secs(1))
        .await
        .unwrap();
    let _ = r.stop.send(());
    r.task.await.unwrap();
}

#[tokio::test]
async fn requests_over_the_concurrency_limit_are_refused_not_queued() {
    let r = start(1).await;
    let first = tokio::spawn({
        let addr = r.addr.clone();
        async move { call(&addr, "/reco.test.Test/Park").await }
    });
    // Once the first request holds the only permit, the next is refused at once.
    r.entered.notified().await;
    let err = call(&r.addr, "/reco.test.Test/Park").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    r.release.notify_waiters();
    // The parked handler answers with a bare OK status (no message): what matters is that it was not refused.
    let first = first.await.unwrap().unwrap_err();
    assert_eq!(first.message(), "Missing response message.");
    // With the permit back, requests are served again.
    reco_server::wait_serving(&r.addr, std::time::Duration::from_secs(1))
        .await
        .unwrap();
    let _ = r.stop.send(());
    r.task.await.unwrap();
}

#[tokio::test]
async fn a_unix_socket_serves_the_same_routes_under_the_same_limit_and_goes_away_on_stop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.sock");
    // A killed server's socket file: replaced, not an error.
    std::fs::write(&path, b"stale").unwrap();
    let r = start_with(ServerArgs {
        concurrency_limit: 1,
        listen_unix: Some(path.clone()),
        ..Default::default()
    })
    .await;
    let unix = format!("{}{}", reco_server::UNIX_PREFIX, path.display());
    reco_server::wait_serving(&unix, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let err = call(&unix, "/reco.test.Test/Panic").await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "the same layers: {err:?}");

    // One limit over both listeners: a request parked over TCP holds the only permit.
    let first = tokio::spawn({
        let addr = r.addr.clone();
        async move { call(&addr, "/reco.test.Test/Park").await }
    });
    r.entered.notified().await;
    let err = call(&unix, "/reco.test.Test/Park").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    r.release.notify_waiters();
    let _ = first.await.unwrap();

    let _ = r.stop.send(());
    r.task.await.unwrap();
    assert!(!path.exists(), "the socket is removed on stop");
}
