//! What every reco gRPC service shares: one server builder with the same layers everywhere, the flags that
//! configure it, traced clients for calling other services, and a shutdown signal.
//!
//! ```text
//!   request ─▶ load shed ─▶ caller auth (optional) ─▶ concurrency limit ─▶ trace span (W3C context)
//!           ─▶ panic → INTERNAL ─▶ service
//!   health:  NOT_SERVING ──(listening + backends ready)──▶ SERVING ──(shutdown signal)──▶ NOT_SERVING ─▶ drain
//! ```

pub mod auth;
mod client;
pub mod coalesce;
mod health;
mod item_cache;
mod server;
pub mod tls;

pub use client::{
    TraceInterceptor, TracedChannel, UNIX_PREFIX, channel, channel_tls, channel_with, wait_serving,
};
pub use item_cache::ItemCache;
pub use server::{GrpcServer, ServerArgs, ServerError, shutdown_signal};

use reco_types::ValidationError;

/// The status for a request that failed validation: `INVALID_ARGUMENT` naming the field.
pub fn invalid_argument(error: ValidationError) -> tonic::Status {
    tonic::Status::invalid_argument(error.to_string())
}

/// Implements a generated gRPC service trait by delegating each RPC to the inherent handler of the same name,
/// `async fn rpc(&self, request: Req) -> Result<Resp, E>` where `tonic::Status: From<E>` (inherent methods win
/// method resolution). Handlers then use `?` freely on their own error type, and the one
/// `From<Error> for Status` decides every code.
///
/// ```ignore
/// reco_server::delegate_rpcs! { FeatureService => FeatureApi {
///     get_user_context(GetUserContextRequest) -> GetUserContextResponse;
/// }}
/// ```
#[macro_export]
macro_rules! delegate_rpcs {
    ($service:path => $api:ty { $($rpc:ident($req:ty) -> $resp:ty;)* }) => {
        #[tonic::async_trait]
        impl $service for $api {
            $(
                async fn $rpc(
                    &self,
                    request: tonic::Request<$req>,
                ) -> Result<tonic::Response<$resp>, tonic::Status> {
                    self.$rpc(request.into_inner())
                        .await
                        .map(tonic::Response::new)
                        .map_err(tonic::Status::from)
                }
            )*
        }
    };
}
