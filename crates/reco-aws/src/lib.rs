//! One AWS SDK configuration for every reco backend that runs on AWS (DynamoDB, SageMaker runtime, Neptune): the
//! region, an endpoint override (moto or DynamoDB Local in tests and development), timeouts on every attempt and on
//! the whole operation, and the SDK's adaptive retry mode, which backs off on throttling by itself.
//!
//! Credentials come from the SDK's default chain (environment, profile, SSO, web identity on EKS, the instance or
//! container role), or, with an endpoint override on this machine and no credentials in the environment, from
//! fixed dummy ones: a local server accepts any signature.
//!
//! The HTTPS client is built on rustls with ring rather than the SDK's default aws-lc, which would add a C build
//! and a second rustls crypto provider beside the one the Redis client already uses.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig, retry::RetryConfig, timeout::TimeoutConfig};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

pub use aws_config;

/// AWS flags shared by every backend; `prefix` keeps one process with several AWS backends unambiguous, so each
/// backend flattens its own copy under its own names (see [`AwsSettings`] for the plain form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsSettings {
    /// The region; None takes the SDK's default chain (`AWS_REGION`, the profile, ...).
    pub region: Option<String>,
    /// Send every request here instead of the service's AWS endpoint (a moto server, DynamoDB Local).
    pub endpoint_url: Option<String>,
    /// Bound on one attempt of one call.
    pub attempt_timeout: Duration,
    /// Bound on one call, retries included.
    pub operation_timeout: Duration,
    /// Attempts per call, the first included (adaptive retry: throttling slows the client down).
    pub max_attempts: u32,
}

impl Default for AwsSettings {
    fn default() -> Self {
        Self {
            region: None,
            endpoint_url: None,
            attempt_timeout: Duration::from_millis(DEFAULT_ATTEMPT_TIMEOUT_MS),
            operation_timeout: Duration::from_millis(DEFAULT_OPERATION_TIMEOUT_MS),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

pub const DEFAULT_ATTEMPT_TIMEOUT_MS: u64 = 1_000;
pub const DEFAULT_OPERATION_TIMEOUT_MS: u64 = 3_000;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Region used when nothing names one and an endpoint override points at a local server.
const LOCAL_REGION: &str = "us-east-1";

impl AwsSettings {
    /// Settings that send everything to a local server (tests, development).
    pub fn local(endpoint_url: impl Into<String>) -> Self {
        Self {
            endpoint_url: Some(endpoint_url.into()),
            region: Some(LOCAL_REGION.to_string()),
            ..Self::default()
        }
    }

    /// The SDK configuration these settings describe.
    pub async fn sdk_config(&self) -> SdkConfig {
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client)
            .retry_config(RetryConfig::adaptive().with_max_attempts(self.max_attempts.max(1)))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(self.attempt_timeout)
                    .operation_attempt_timeout(self.attempt_timeout)
                    .operation_timeout(self.operation_timeout)
                    .build(),
            );
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &self.endpoint_url {
            loader = loader.endpoint_url(url);
            if self.region.is_none() {
                loader = loader.region(Region::new(LOCAL_REGION));
            }
            if is_local(url) && std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
                loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                    "local",
                    "local",
                    None,
                    None,
                    "reco-local",
                ));
            }
        }
        loader.load().await
    }
}

/// True for an endpoint on this machine (moto, DynamoDB Local). A remote override (a Neptune cluster endpoint, a
/// VPC endpoint) keeps the SDK's credential chain: dummy credentials there would only be refused.
pub fn is_local(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        rest.split([':', '/']).next().unwrap_or("")
    };
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

/// Declares a clap `Args` struct of AWS flags with the given prefix, convertible into [`AwsSettings`]. Each
/// backend gets its own (`--dynamodb-region`, `--sagemaker-endpoint-url`, ...), so one process can talk to
/// several AWS services, each possibly local, without one flag meaning two things (the argument ids are the flag
/// names, so two such structs can sit in one command).
#[macro_export]
macro_rules! aws_args {
    ($(#[$meta:meta])* $name:ident, $flag:literal, $env:literal) => {
        $(#[$meta])*
        #[derive(Clone, Debug, clap::Args)]
        pub struct $name {
            #[doc = concat!("AWS region of ", $flag, " (default: the SDK's chain, AWS_REGION or the profile).")]
            #[arg(id = concat!($flag, "-region"), long = concat!($flag, "-region"), env = concat!("RECO_", $env, "_REGION"))]
            pub region: Option<String>,
            #[doc = concat!("Endpoint override for ", $flag, " (e.g. a moto server: http://127.0.0.1:5000).")]
            #[arg(id = concat!($flag, "-endpoint-url"), long = concat!($flag, "-endpoint-url"), env = concat!("RECO_", $env, "_ENDPOINT_URL"))]
            pub endpoint_url: Option<String>,
            /// Timeout of one attempt of one call, in ms.
            #[arg(id = concat!($flag, "-attempt-timeout-ms"), long = concat!($flag, "-attempt-timeout-ms"), env = concat!("RECO_", $env, "_ATTEMPT_TIMEOUT_MS"), default_value_t = $crate::DEFAULT_ATTEMPT_TIMEOUT_MS)]
            pub attempt_timeout_ms: u64,
            /// Timeout of one call with its retries, in ms.
            #[arg(id = concat!($flag, "-operation-timeout-ms"), long = concat!($flag, "-operation-timeout-ms"), env = concat!("RECO_", $env, "_OPERATION_TIMEOUT_MS"), default_value_t = $crate::DEFAULT_OPERATION_TIMEOUT_MS)]
            pub operation_timeout_ms: u64,
            /// Attempts per call, the first included (adaptive retry mode).
            #[arg(id = concat!($flag, "-max-attempts"), long = concat!($flag, "-max-attempts"), env = concat!("RECO_", $env, "_MAX_ATTEMPTS"), default_value_t = $crate::DEFAULT_MAX_ATTEMPTS)]
            pub max_attempts: u32,
        }

        impl From<&$name> for $crate::AwsSettings {
            fn from(a: &$name) -> Self {
                $crate::AwsSettings {
                    region: a.region.clone(),
                    endpoint_url: a.endpoint_url.clone(),
                    attempt_timeout: std::time::Duration::from_millis(a.attempt_timeout_ms),
                    operation_timeout: std::time::Duration::from_millis(a.operation_timeout_ms),
                    max_attempts: a.max_attempts,
                }
            }
        }
    };
}

/// Jittered exponential backoff for retries the SDK leaves to its caller (unprocessed keys of a batch call):
/// attempt 0 waits about `base`, each later one about twice as long, capped at `max`, with full jitter.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let ceiling = base
        .saturating_mul(1u32 << attempt.min(16))
        .min(max)
        .as_micros() as u64;
    Duration::from_micros(rand::random_range(0..=ceiling))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_endpoints_on_this_machine_are_local() {
        for url in [
            "http://127.0.0.1:5000",
            "http://localhost:8000/",
            "http://[::1]:9",
            "127.0.0.5",
        ] {
            assert!(is_local(url), "{url}");
        }
        for url in [
            "https://db.cluster-abc.us-east-1.neptune.amazonaws.com:8182",
            "https://localhost.example.com",
            "http://10.0.0.1:8182",
        ] {
            assert!(!is_local(url), "{url}");
        }
    }

    #[test]
    fn backoff_grows_and_stays_under_its_cap() {
        let base = Duration::from_millis(10);
        let max = Duration::from_millis(200);
        for attempt in 0..20 {
            let ceiling = base.saturating_mul(1 << attempt.min(16)).min(max);
            for _ in 0..50 {
                assert!(backoff(attempt, base, max) <= ceiling);
            }
        }
        assert_eq!(backoff(3, Duration::ZERO, max), Duration::ZERO);
    }

    aws_args!(TestArgs, "test", "TEST");

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        aws: TestArgs,
    }

    #[test]
    fn flags_read_into_settings() {
        use clap::Parser;
        let cli = Cli::parse_from([
            "x",
            "--test-region",
            "eu-west-1",
            "--test-endpoint-url",
            "http://127.0.0.1:1",
            "--test-max-attempts",
            "5",
        ]);
        let s = AwsSettings::from(&cli.aws);
        assert_eq!(s.region.as_deref(), Some("eu-west-1"));
        assert_eq!(s.endpoint_url.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(s.max_attempts, 5);
        assert_eq!(
            s.attempt_timeout,
            Duration::from_millis(DEFAULT_ATTEMPT_TIMEOUT_MS)
        );
    }
}
