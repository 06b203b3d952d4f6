use reco_feature_store::FeatureStoreError;
use reco_types::ValidationError;

/// Why a feature RPC failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] FeatureStoreError),
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(v) => reco_server::invalid_argument(v),
            Error::Store(s) => match s {
                FeatureStoreError::UnknownVersion(_) => tonic::Status::not_found(s.to_string()),
                FeatureStoreError::NotLoaded(_) => {
                    tonic::Status::failed_precondition(s.to_string())
                }
                FeatureStoreError::Backend(_) => tonic::Status::unavailable(s.to_string()),
            },
        }
    }
}
