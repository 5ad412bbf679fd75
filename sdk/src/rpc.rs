//! What every RPC of the SDK does around the generated client: a fresh bearer token, a deadline
//! (sent as `grpc-timeout` and enforced locally), and the status-to-[`Error`] mapping.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::token::{bearer, AUTHORIZATION};
use crate::{Error, TokenSource};

/// The per-RPC deadline unless [`Client::with_timeout`](crate::Client::with_timeout) says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Token source and deadline shared by the clones of a client.
#[derive(Clone)]
pub(crate) struct Rpc {
    tokens: Arc<dyn TokenSource>,
    timeout: Duration,
}

impl Rpc {
    pub(crate) fn new(tokens: impl TokenSource) -> Self {
        Self {
            tokens: Arc::new(tokens),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sends `message` through `call` with a bearer token and the deadline.
    pub(crate) async fn call<M, R, F, Fut>(&self, message: M, call: F) -> Result<R, Error>
    where
        F: FnOnce(tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert(AUTHORIZATION, bearer(self.tokens.as_ref())?);
        request.set_timeout(self.timeout);
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(self.timeout, call(request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            // A tonic server enforces `grpc-timeout` by answering CANCELLED; past our deadline that is
            // a deadline, not a cancellation.
            Ok(Err(status))
                if status.code() == tonic::Code::Cancelled && started.elapsed() >= self.timeout =>
            {
                Err(Error::DeadlineExceeded {
                    message: status.message().to_owned(),
                    reason: None,
                })
            }
            Ok(Err(status)) => Err(Error::from(status)),
            Err(_elapsed) => Err(Error::deadline(self.timeout)),
        }
    }
}
