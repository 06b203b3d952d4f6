use std::time::Duration;

use reco_types::ValidationError;

use crate::pipeline::Refused;

/// Why a Recommend call was refused. Slow or failed backends are not errors: they degrade the answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// Admission refused the call.
    #[error(transparent)]
    Pipeline(#[from] Refused),
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(v) => reco_server::invalid_argument(v),
            Error::Pipeline(p) => match p {
                Refused::RateLimited { retry_after, .. } => {
                    rate_limited(&p.to_string(), retry_after)
                }
                Refused::AdmissionUnavailable(_) => tonic::Status::unavailable(p.to_string()),
            },
        }
    }
}

/// RESOURCE_EXHAUSTED carrying `retry-after-ms` metadata, so a client can back off precisely.
fn rate_limited(message: &str, retry_after: Duration) -> tonic::Status {
    let mut status = tonic::Status::resource_exhausted(message);
    if let Ok(v) = retry_after.as_millis().to_string().parse() {
        status.metadata_mut().insert("retry-after-ms", v);
    }
    status
}
