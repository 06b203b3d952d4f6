//! What every reco gRPC service shares: one server builder with the same layers everywhere, the flags that
//! configure it, traced clients for calling other services, and a shutdown signal.
//!
//! ```text
//!   request ─▶ load shed ─▶ concurrency limit ─▶ trace span (W3C context) ─▶ panic → INTERNAL ─▶ service
//!   health:  NOT_SERVING ──(listening + backends ready)──▶ SERVING ──(shutdown signal)──▶ NOT_SERVING ─▶ drain
//! ```

mod client;
mod server;

pub use client::{TraceInterceptor, TracedChannel, channel};
pub use server::{GrpcServer, ServerArgs, ServerError, shutdown_signal};

use reco_types::ValidationError;

/// The status for a request that failed validation: `INVALID_ARGUMENT` naming the field.
pub fn invalid_argument(error: ValidationError) -> tonic::Status {
    tonic::Status::invalid_argument(error.to_string())
}
