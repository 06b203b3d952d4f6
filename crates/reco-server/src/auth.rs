//! Caller authorisation: reads and writes are separate permissions.
//!
//! A server started with `--auth-tokens-file FILE` (a Kubernetes Secret mounted as a file) serves only callers that
//! send `authorization: Bearer <token>` with a token listed there. The file has one caller per line:
//!
//! ```text
//!   # name          permissions   token
//!   gateway         read,write    3f9c...   (the gateway writes the result cache and impressions)
//!   batch-sync      write         a71e...   (write implies read)
//!   dashboards      read          0b42...
//! ```
//!
//! Every RPC a service declares as a write ([`crate::GrpcServer::write_rpcs`]) needs `write`; every other RPC
//! needs `read`; health checks and reflection need nothing, so probes and grpcurl's discovery keep working. A
//! missing or unknown token is UNAUTHENTICATED, a known caller without the permission PERMISSION_DENIED, naming the
//! caller and the method. Tokens are compared by their SHA-256 digest and never logged or echoed.
//!
//! Clients (the gateway, `reco` commands) send the token in `RECO_AUTH_TOKEN_FILE`, or `RECO_AUTH_TOKEN`.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::{Either, Ready, ready};
use sha2::{Digest, Sha256};

/// What a caller may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub write: bool,
}

/// Why a tokens file was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the tokens file {path}: {reason}")]
    Read { path: String, reason: String },
    /// The line is named by number only: it holds a secret.
    #[error("tokens file {path}, line {line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: String,
    },
}

/// The callers a server accepts, by token digest.
#[derive(Clone, Debug, Default)]
pub struct Callers {
    by_digest: HashMap<[u8; 32], Caller>,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Callers {
    /// Reads a tokens file (see the module doc).
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|e| AuthError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text).map_err(|(line, reason)| AuthError::Line {
            path: path.display().to_string(),
            line,
            reason,
        })
    }

    /// Parses the file's text; errors carry the 1-based line.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut by_digest = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, permissions, token] = fields[..] else {
                return Err((
                    i + 1,
                    format!(
                        "expected `name permissions token`, found {} fields",
                        fields.len()
                    ),
                ));
            };
            let mut write = false;
            for p in permissions.split(',') {
                match p {
                    "read" => {}
                    "write" => write = true,
                    other => {
                        return Err((i + 1, format!("unknown permission {other:?} (read, write)")));
                    }
                }
            }
            if token.len() < 16 {
                return Err((i + 1, "a token must be at least 16 characters".into()));
            }
            let caller = Caller {
                name: name.to_string(),
                write,
            };
            if by_digest.insert(digest(token.as_bytes()), caller).is_some() {
                return Err((i + 1, "this token is already listed".into()));
            }
        }
        if by_digest.is_empty() {
            return Err((0, "no callers are listed".into()));
        }
        Ok(Self { by_digest })
    }

    /// The caller presenting `authorization` (the header's value), if any.
    pub fn caller(&self, authorization: Option<&[u8]>) -> Option<&Caller> {
        let token = authorization?.strip_prefix(b"Bearer ")?;
        self.by_digest.get(&digest(token))
    }
}

/// The policy a server enforces: its callers and which of its methods write.
#[derive(Clone, Debug)]
pub struct Policy {
    pub callers: Arc<Callers>,
    /// Full method paths (`/reco.feature.v1.FeatureService/PutUserFeatures`).
    pub writes: Arc<HashSet<String>>,
}

impl Policy {
    /// Ok, or the status to answer with.
    pub fn check(&self, path: &str, authorization: Option<&[u8]>) -> Result<(), tonic::Status> {
        if path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.") {
            return Ok(());
        }
        let Some(caller) = self.callers.caller(authorization) else {
            return Err(tonic::Status::unauthenticated(
                "a caller token is required: send `authorization: Bearer <token>`",
            ));
        };
        if self.writes.contains(path) && !caller.write {
            return Err(tonic::Status::permission_denied(format!(
                "caller {} may not call {path}: it writes, and the caller has only the read permission",
                caller.name
            )));
        }
        Ok(())
    }
}

/// The tower layer that applies a [`Policy`] before any handler runs.
#[derive(Clone, Debug)]
pub struct AuthLayer(pub Option<Policy>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            policy: self.0.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    policy: Option<Policy>,
}

impl<S, B, R> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<http::Response<R>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(policy) = &self.policy {
            let authorization = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            if let Err(status) = policy.check(request.uri().path(), authorization) {
                return Either::Right(ready(Ok(status.into_http())));
            }
        }
        Either::Left(self.inner.call(request))
    }
}

/// The token this process sends to other reco services: `RECO_AUTH_TOKEN_FILE` (a mounted Secret) or
/// `RECO_AUTH_TOKEN`, read once.
pub fn client_token() -> Option<&'static str> {
    static TOKEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    TOKEN
        .get_or_init(|| {
            let from_file = std::env::var_os("RECO_AUTH_TOKEN_FILE")
                .and_then(|p| std::fs::read_to_string(p).ok())
                .map(|t| t.trim().to_string());
            from_file
                .or_else(|| std::env::var("RECO_AUTH_TOKEN").ok())
                .filter(|t| !t.is_empty())
        })
        .as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# callers\n\
        gateway    read,write  gateway-token-0123456789\n\
        dashboards read        dashboards-token-0123456789  # read only\n";

    fn policy() -> Policy {
        Policy {
            callers: Arc::new(Callers::parse(FILE).unwrap()),
            writes: Arc::new(HashSet::from(["/reco.x.v1.X/Put".to_string()])),
        }
    }

    fn bearer(t: &str) -> Vec<u8> {
        format!("Bearer {t}").into_bytes()
    }

    #[test]
    fn reads_and_writes_are_separate_permissions() {
        let p = policy();
        let reader = bearer("dashboards-token-0123456789");
        let writer = bearer("gateway-token-0123456789");
        assert!(p.check("/reco.x.v1.X/Get", Some(&reader)).is_ok());
        let denied = p.check("/reco.x.v1.X/Put", Some(&reader)).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(
            denied.message().contains("dashboards")
                && denied.message().contains("/reco.x.v1.X/Put")
        );
        assert!(p.check("/reco.x.v1.X/Put", Some(&writer)).is_ok());
        for unknown in [
            None,
            Some(bearer("nobody-0123456789-abcdef")),
            Some(b"Basic eA==".to_vec()),
        ] {
            let err = p.check("/reco.x.v1.X/Get", unknown.as_deref()).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated);
            assert!(
                !err.message().contains("token-0123456789"),
                "no token is echoed"
            );
        }
        assert!(p.check("/grpc.health.v1.Health/Check", None).is_ok());
        assert!(
            p.check(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                None
            )
            .is_ok()
        );
    }

    #[test]
    fn a_bad_tokens_file_names_the_line_and_never_the_token() {
        for (text, line, says) in [
            ("a read\n", 1, "found 2 fields"),
            ("a admin secret-secret-secret-1\n", 1, "unknown permission"),
            ("a read short\n", 1, "at least 16"),
            (
                "a read secret-secret-secret-1\nb write secret-secret-secret-1\n",
                2,
                "already listed",
            ),
            ("# nothing\n", 0, "no callers"),
        ] {
            let (l, reason) = Callers::parse(text).unwrap_err();
            assert_eq!(l, line, "{text}");
            assert!(reason.contains(says), "{reason}");
            assert!(!reason.contains("secret-secret"), "{reason}");
        }
    }
}
