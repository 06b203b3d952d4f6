//! docs/configuration.md is generated from the services' own flag definitions, so it cannot drift: this test
//! renders it and fails when the file differs. `RECO_UPDATE_DOCS=1 cargo test -p reco-integration-tests --test
//! config_reference` rewrites it.

use clap::CommandFactory;
use reco_integration_tests::workspace_root;

/// Settings read outside the flag parsers.
const PROCESS_WIDE: &str = "\
| variable | default | what it does |
|---|---|---|
| `RECO_AUTH_TOKEN_FILE` | - | file holding the token this process sends to other reco services (`authorization: Bearer`) |
| `RECO_AUTH_TOKEN` | - | the token itself, when no file is given |
| `RECO_TLS_CA`, `RECO_TLS_CERT`, `RECO_TLS_KEY` | - | a `reco` command calls services over TLS trusting that CA, presenting that certificate (the services take the same variables as their `--tls-*` flags) |
| `OTEL_EXPORTER_OTLP_ENDPOINT` | - | export traces and metrics over OTLP there (with the other standard `OTEL_*` variables) |
| `AWS_*` | - | the AWS SDK's own chain for credentials and region (`AWS_PROFILE`, `AWS_REGION`, web identity, ...) |
";

fn cell(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn section(cmd: clap::Command) -> String {
    let mut out = format!(
        "## {}\n\n{}\n\n| flag | environment | default | what it does |\n|---|---|---|---|\n",
        cmd.get_name(),
        cmd.get_about().map(|a| a.to_string()).unwrap_or_default()
    );
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_else(|| "-".into());
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        let default = if defaults.is_empty() {
            "-".to_string()
        } else {
            format!("`{}`", defaults.join(","))
        };
        let mut help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let takes_value = arg.get_action().takes_values();
        if !takes_value {
            help.push_str(" (a switch: present or `true` in the environment)");
        }
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| v.get_name().to_string())
            .collect();
        if takes_value && !values.is_empty() {
            let sep = if help.ends_with('.') { " " } else { ". " };
            help.push_str(&format!("{sep}One of: {}.", values.join(", ")));
        }
        out.push_str(&format!(
            "| `--{long}` | {env} | {default} | {} |\n",
            cell(&help)
        ));
    }
    out.push('\n');
    out
}

fn render() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Every flag of every service, with the environment variable that sets it and its default. Generated from the \
         code by `RECO_UPDATE_DOCS=1 cargo test -p reco-integration-tests --test config_reference`; that test \
         fails when this file and the code disagree. `--listen` defaults to 127.0.0.1 on the service's own port \
         (gateway 50051, feature 50052, cache 50053, vector-recall 50054, graph-recall 50055, ranking 50056, \
         ingest 50057).\n\n\
         ## Every process\n\n",
    );
    out.push_str(PROCESS_WIDE);
    out.push('\n');
    for cmd in [
        reco_gateway::Config::command(),
        reco_feature::Config::command(),
        reco_cache::Config::command(),
        reco_vector_recall::Config::command(),
        reco_graph_recall::Config::command(),
        reco_ranking::Config::command(),
        reco_ingest::Config::command(),
    ] {
        out.push_str(&section(cmd));
    }
    out.trim_end().to_string() + "\n"
}

#[test]
fn the_configuration_reference_matches_the_code() {
    let path = workspace_root().join("docs/configuration.md");
    let rendered = render();
    if std::env::var("RECO_UPDATE_DOCS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &rendered).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == rendered,
        "docs/configuration.md is stale: run RECO_UPDATE_DOCS=1 cargo test -p reco-integration-tests --test config_reference"
    );
    for flag in [
        "--dynamodb-region",
        "--sagemaker-endpoint",
        "--auth-tokens-file",
        "--redis-url",
    ] {
        assert!(rendered.contains(flag), "{flag} is documented");
    }
}
