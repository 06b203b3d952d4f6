use reco_ranker::RankerError;
use reco_types::ValidationError;

/// Why a ranking RPC failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] RankerError),
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(v) => reco_server::invalid_argument(v),
            Error::Model(m) => match m {
                RankerError::Load { .. } | RankerError::UnsupportedFeatures { .. } => {
                    tonic::Status::failed_precondition(m.to_string())
                }
                RankerError::Backend(_) => tonic::Status::unavailable(m.to_string()),
                RankerError::Timeout(_) => tonic::Status::deadline_exceeded(m.to_string()),
            },
        }
    }
}
