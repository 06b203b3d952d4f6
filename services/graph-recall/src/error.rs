use reco_graph_store::GraphStoreError;
use reco_types::ValidationError;

/// Why a graph RPC failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] GraphStoreError),
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(v) => reco_server::invalid_argument(v),
            Error::Store(s) => match s {
                GraphStoreError::Backend(_) => tonic::Status::unavailable(s.to_string()),
                GraphStoreError::Timeout(_) => tonic::Status::deadline_exceeded(s.to_string()),
            },
        }
    }
}
