//! The real grpcurl (1.8.6, v1alpha reflection only) against running services: list, describe, call.

use reco_integration_tests::{APIS, TestPlatform, Wiring, grpcurl, run_grpcurl, run_grpcurl_err};

async fn grpcurl_lists_describes_and_calls_every_service(wiring: Wiring) {
    let Some(bin) = grpcurl() else { return };
    let t = TestPlatform::start_on(wiring).await;
    for ((name, addr), (_, api)) in t.platform.addrs.all().into_iter().zip(APIS) {
        let addr = addr.to_string();
        let list = run_grpcurl(&bin, &["-plaintext", &addr, "list"]);
        let listed: Vec<&str> = list.lines().collect();
        assert!(listed.contains(&api), "{name}: {list}");
        assert!(listed.contains(&"grpc.health.v1.Health"), "{name}: {list}");
        assert!(
            !listed.iter().any(|s| s.starts_with("reco.") && *s != api),
            "{name} lists only its own API: {list}"
        );
        let health = run_grpcurl(&bin, &["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
        assert!(health.contains("SERVING"), "{name}: {health}");
    }

    let gw = t.gateway_addr();
    let described = run_grpcurl(
        &bin,
        &[
            "-plaintext",
            &gw,
            "describe",
            "reco.gateway.v1.RecommendRequest",
        ],
    );
    for field in [
        "user_id",
        "count",
        "scene",
        "explain",
        "bypass_cache",
        "include_graph",
    ] {
        assert!(described.contains(field), "{field} in {described}");
    }

    let body = format!(r#"{{"user_id": "{}"}}"#, t.known_user);
    let out = run_grpcurl(
        &bin,
        &[
            "-plaintext",
            "-d",
            &body,
            &gw,
            "reco.gateway.v1.Gateway/Recommend",
        ],
    );
    let json: serde_json::Value = serde_json::from_str(&out).expect("grpcurl prints JSON");
    assert_eq!(json["items"].as_array().unwrap().len(), 10, "{out}");
    assert_eq!(json["stages"].as_array().unwrap().len(), 13, "{out}");

    let err = run_grpcurl_err(
        &bin,
        &[
            "-plaintext",
            "-d",
            r#"{"user_id": "u1", "count": 0}"#,
            &gw,
            "reco.gateway.v1.Gateway/Recommend",
        ],
    );
    assert!(
        err.contains("InvalidArgument") && err.contains("count"),
        "{err}"
    );

    // A write and a read through another service, as an operator would poke it.
    let v = t.platform.addrs.vector.to_string();
    let stats = run_grpcurl(
        &bin,
        &["-plaintext", &v, "reco.vector_recall.v1.VectorRecall/Stats"],
    );
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["dimension"], 64);
    t.platform.shutdown().await.unwrap();
}

reco_integration_tests::on_both_wirings!(grpcurl_lists_describes_and_calls_every_service,);
