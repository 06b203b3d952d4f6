use reco_cache_store::CacheStoreError;
use reco_types::ValidationError;

/// Why a cache RPC failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] CacheStoreError),
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(v) => reco_server::invalid_argument(v),
            Error::Store(s) => match s {
                CacheStoreError::Timeout(_) => tonic::Status::deadline_exceeded(s.to_string()),
                CacheStoreError::Unavailable(_) => tonic::Status::unavailable(s.to_string()),
            },
        }
    }
}
