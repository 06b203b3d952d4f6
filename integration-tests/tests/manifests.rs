//! The Kubernetes manifests under deploy/k8s parse, and every service has what a cluster needs to run it well:
//! a Deployment with gRPC health probes and resource requests and limits, a Service whose port reaches the
//! container's, a HorizontalPodAutoscaler and a PodDisruptionBudget aimed at that Deployment.

use std::collections::BTreeMap;

use reco_integration_tests::{APIS, workspace_root};
use yaml_rust2::{Yaml, YamlLoader};

fn docs() -> Vec<(String, Yaml)> {
    let dir = workspace_root().join("deploy/k8s");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/k8s exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let parsed = YamlLoader::load_from_str(&text)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            for doc in parsed {
                out.push((path.display().to_string(), doc));
            }
        }
    }
    out
}

fn by_kind<'a>(docs: &'a [(String, Yaml)], kind: &str) -> BTreeMap<String, &'a Yaml> {
    docs.iter()
        .filter(|(_, d)| d["kind"].as_str() == Some(kind))
        .map(|(_, d)| (d["metadata"]["name"].as_str().unwrap().to_string(), d))
        .collect()
}

#[test]
fn every_service_has_probes_resources_and_a_service_on_its_port() {
    let docs = docs();
    for (file, d) in &docs {
        assert!(
            d["apiVersion"].as_str().is_some() && d["kind"].as_str().is_some(),
            "{file}: a document without apiVersion or kind"
        );
    }
    let deployments = by_kind(&docs, "Deployment");
    let services = by_kind(&docs, "Service");
    let hpas = by_kind(&docs, "HorizontalPodAutoscaler");
    let pdbs = by_kind(&docs, "PodDisruptionBudget");
    let config_maps = by_kind(&docs, "ConfigMap");
    assert_eq!(
        deployments.len(),
        APIS.len() + 1,
        "{:?}",
        deployments.keys()
    );

    // The six services, and the stream consumer (no API of its own, but health like theirs).
    let names = APIS.iter().map(|(s, _)| *s).chain(["ingest"]);
    for service in names {
        let name = format!("reco-{service}");
        let d = deployments
            .get(&name)
            .unwrap_or_else(|| panic!("no Deployment {name}"));
        let spec = &d["spec"]["template"]["spec"];
        let container = &spec["containers"][0];
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        assert_eq!(
            &d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
            &labels["app.kubernetes.io/name"],
            "{name}: the selector picks the template's pods"
        );

        let port = container["ports"][0]["containerPort"]
            .as_i64()
            .unwrap_or_else(|| panic!("{name}: no container port"));
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(
                container[probe]["grpc"]["port"].as_i64(),
                Some(port),
                "{name}: {probe} is a gRPC health check on the serving port"
            );
        }
        for kind in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    !container["resources"][kind][resource].is_badvalue(),
                    "{name}: no {kind}.{resource}"
                );
            }
        }
        let listen = container["env"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|e| e["name"].as_str() == Some("RECO_LISTEN"))
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("{name}: RECO_LISTEN is not set"));
        assert!(
            listen.ends_with(&format!(":{port}")),
            "{name}: listens on {listen}, the container port is {port}"
        );
        let from_config = container["envFrom"]
            .as_vec()
            .unwrap()
            .iter()
            .filter_map(|e| e["configMapRef"]["name"].as_str())
            .collect::<Vec<_>>();
        assert!(
            from_config.iter().all(|c| config_maps.contains_key(*c)) && !from_config.is_empty(),
            "{name}: its configuration comes from a ConfigMap that exists"
        );

        if service == "ingest" {
            // One consumer per stream (and nothing calls it: no Service): never two at once, not even during a rollout.
            assert_eq!(d["spec"]["replicas"].as_i64(), Some(1), "{name}");
            assert_eq!(
                d["spec"]["strategy"]["type"].as_str(),
                Some("Recreate"),
                "{name}"
            );
            assert!(!hpas.contains_key(&name), "{name} must not scale out");
            continue;
        }
        let s = services
            .get(&name)
            .unwrap_or_else(|| panic!("no Service {name}"));
        assert_eq!(
            &s["spec"]["selector"]["app.kubernetes.io/name"], &labels["app.kubernetes.io/name"],
            "{name}: the Service selects the Deployment's pods"
        );
        let target = &s["spec"]["ports"][0]["targetPort"];
        let reaches = target.as_i64() == Some(port)
            || target.as_str() == container["ports"][0]["name"].as_str();
        assert!(
            reaches,
            "{name}: the Service's targetPort is not the container's"
        );

        let hpa = hpas.get(&name).unwrap_or_else(|| panic!("no HPA {name}"));
        assert_eq!(
            hpa["spec"]["scaleTargetRef"]["name"].as_str(),
            Some(name.as_str())
        );
        assert!(
            hpa["spec"]["minReplicas"].as_i64().unwrap() >= 2,
            "{name}: one replica cannot survive a disruption"
        );
        let pdb = pdbs.get(&name).unwrap_or_else(|| panic!("no PDB {name}"));
        assert_eq!(
            &pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
            &labels["app.kubernetes.io/name"]
        );
    }

    // The gateway reaches every other service through its Service on that Service's port.
    let gateway_config = config_maps["reco-gateway"];
    // Its event outbox is on a volume (the root filesystem is read-only).
    let outbox = gateway_config["data"]["RECO_EVENT_OUTBOX"]
        .as_str()
        .expect("the gateway's RECO_EVENT_OUTBOX is configured");
    let gateway = &deployments["reco-gateway"]["spec"]["template"]["spec"];
    let mounts = gateway["containers"][0]["volumeMounts"]
        .as_vec()
        .expect("the gateway mounts a volume");
    let mount = mounts
        .iter()
        .find(|m| outbox.starts_with(m["mountPath"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("no volume holds the outbox {outbox}"));
    assert!(
        gateway["volumes"]
            .as_vec()
            .unwrap()
            .iter()
            .any(|v| v["name"] == mount["name"]),
        "the outbox's volume is declared"
    );
    for var in [
        "RECO_FEATURE_ADDR",
        "RECO_CACHE_ADDR",
        "RECO_VECTOR_ADDR",
        "RECO_GRAPH_ADDR",
        "RECO_RANKING_ADDR",
    ] {
        let addr = gateway_config["data"][var]
            .as_str()
            .unwrap_or_else(|| panic!("the gateway's {var} is not configured"));
        let host_port = addr.trim_start_matches("http://");
        let (host, port) = host_port.split_once(':').unwrap();
        let s = services
            .get(host)
            .unwrap_or_else(|| panic!("{var} names {host}, which no Service defines"));
        assert_eq!(
            s["spec"]["ports"][0]["port"].as_i64(),
            port.parse().ok(),
            "{var}"
        );
    }
}

/// The environment variables a service's flags read.
fn envs_of(cmd: clap::Command) -> Vec<String> {
    cmd.get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn every_configmap_variable_is_one_its_service_reads() {
    use clap::CommandFactory;
    let docs = docs();
    let config_maps = by_kind(&docs, "ConfigMap");
    for (service, cmd) in [
        ("gateway", reco_gateway::Config::command()),
        ("feature", reco_feature::Config::command()),
        ("cache", reco_cache::Config::command()),
        ("vector-recall", reco_vector_recall::Config::command()),
        ("graph-recall", reco_graph_recall::Config::command()),
        ("ranking", reco_ranking::Config::command()),
        ("ingest", reco_ingest::Config::command()),
    ] {
        let known = envs_of(cmd);
        let map = config_maps[&format!("reco-{service}")];
        if let Some(data) = map["data"].as_hash() {
            for key in data.keys() {
                let key = key.as_str().unwrap();
                assert!(
                    known.iter().any(|k| k == key),
                    "reco-{service}'s ConfigMap sets {key}, which the service does not read"
                );
            }
        }
    }
}

#[test]
fn the_compose_file_builds_every_service_and_wires_the_gateway() {
    let path = workspace_root().join("deploy/compose.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let doc = &YamlLoader::load_from_str(&text).expect("compose.yaml parses")[0];
    let services = &doc["services"];
    for (service, _) in APIS {
        let s = &services[service];
        assert!(!s.is_badvalue(), "compose has no {service}");
        assert_eq!(
            s["build"]["args"]["SERVICE"].as_str(),
            Some(format!("reco-{service}").as_str()),
            "{service} builds its own binary"
        );
        assert!(
            s["ports"][0]
                .as_str()
                .is_some_and(|p| p.ends_with(":50051")),
            "{service} publishes its gRPC port"
        );
    }
    for backend in ["redis", "dynamodb", "opensearch"] {
        assert!(!services[backend].is_badvalue(), "compose runs {backend}");
    }
    let gateway_env = &services["gateway"]["environment"];
    for (var, target) in [
        ("RECO_FEATURE_ADDR", "feature"),
        ("RECO_CACHE_ADDR", "cache"),
        ("RECO_VECTOR_ADDR", "vector-recall"),
        ("RECO_GRAPH_ADDR", "graph-recall"),
        ("RECO_RANKING_ADDR", "ranking"),
    ] {
        assert_eq!(
            gateway_env[var].as_str(),
            Some(format!("http://{target}:50051").as_str()),
            "{var}"
        );
    }
}
