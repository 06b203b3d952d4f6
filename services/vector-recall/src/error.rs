use reco_types::ValidationError;
use reco_vector_index::VectorIndexError;

/// Why a vector-recall RPC failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The index refused or failed.
    #[error(transparent)]
    Index(#[from] VectorIndexError),
    /// Activation of an index version that was never staged.
    #[error(transparent)]
    UnknownVersion(#[from] reco_vector_index::UnknownVersion),
    /// A search by user id, but no feature service is configured.
    #[error("searching by user_id needs the feature service: start with --feature-addr")]
    NoFeatureService,
    /// The feature service failed while reading the user's embedding.
    #[error("reading the user's embedding failed: {0}")]
    Features(tonic::Status),
}

impl From<reco_vector_index::ActivateError> for Error {
    fn from(e: reco_vector_index::ActivateError) -> Self {
        match e {
            reco_vector_index::ActivateError::Unknown(u) => Error::UnknownVersion(u),
            reco_vector_index::ActivateError::Backend(b) => Error::Index(b),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(v) => reco_server::invalid_argument(v),
            Error::Index(i) => match i {
                VectorIndexError::Dimension { .. } | VectorIndexError::Range { .. } => {
                    tonic::Status::invalid_argument(i.to_string())
                }
                VectorIndexError::Backend(_) => tonic::Status::unavailable(i.to_string()),
            },
            Error::UnknownVersion(v) => tonic::Status::not_found(v.to_string()),
            Error::NoFeatureService => tonic::Status::failed_precondition(e.to_string()),
            Error::Features(s) => tonic::Status::unavailable(format!(
                "reading the user's embedding failed: {}",
                s.message()
            )),
        }
    }
}
