//! What every RPC of the SDK does around the generated client: a fresh bearer token, a deadline
//! (sent as `grpc-timeout` and enforced locally; for a server stream, enforced locally on opening only),
//! and the status-to-[`Error`] mapping.

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
        self.call_with_timeout(message, self.timeout, call).await
    }

    /// Like [`call`](Self::call) with this call's own deadline instead of the client's (for an RPC
    /// that waits on purpose, such as `AwaitApproval`).
    pub(crate) async fn call_with_timeout<M, R, F, Fut>(
        &self,
        message: M,
        timeout: Duration,
        call: F,
    ) -> Result<R, Error>
    where
        F: FnOnce(tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let mut request = self.request(message)?;
        request.set_timeout(timeout);
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(timeout, call(request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            // A tonic server enforces `grpc-timeout` by answering CANCELLED; past our deadline that is
            // a deadline, not a cancellation.
            Ok(Err(status))
                if status.code() == tonic::Code::Cancelled && started.elapsed() >= timeout =>
            {
                Err(Error::DeadlineExceeded {
                    message: status.message().to_owned(),
                    reason: None,
                })
            }
            Ok(Err(status)) => Err(Error::from(status)),
            Err(_elapsed) => Err(Error::deadline(timeout)),
        }
    }

    /// Opens a server stream through `call` with a bearer token. The deadline bounds the opening only
    /// and is not sent as `grpc-timeout`, which would make the server end the stream when it passes.
    pub(crate) async fn open_stream<M, R, F, Fut>(&self, message: M, call: F) -> Result<R, Error>
    where
        F: FnOnce(tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let request = self.request(message)?;
        match tokio::time::timeout(self.timeout, call(request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(Error::from(status)),
            Err(_elapsed) => Err(Error::deadline(self.timeout)),
        }
    }

    /// `message` with the bearer token from the token source.
    fn request<M>(&self, message: M) -> Result<tonic::Request<M>, Error> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert(AUTHORIZATION, bearer(self.tokens.as_ref())?);
        Ok(request)
    }
}

/// A server stream that ends at its first error: the SDK never skips a message it cannot read, so a
/// watcher's picture is complete or the watch is over. Shared by the kill-switch and approval watches.
pub(crate) struct Watched<M> {
    /// `None` once the stream ended or failed.
    stream: Option<tonic::Streaming<M>>,
}

impl<M> Watched<M> {
    pub(crate) fn new(stream: tonic::Streaming<M>) -> Self {
        Self {
            stream: Some(stream),
        }
    }

    /// The next message read with `convert`; `None` once the stream has ended, and after any error.
    pub(crate) async fn next<T>(
        &mut self,
        convert: impl FnOnce(M) -> Result<T, Error>,
    ) -> Option<Result<T, Error>> {
        let stream = self.stream.as_mut()?;
        let next = match stream.message().await {
            Ok(Some(message)) => convert(message),
            Ok(None) => {
                self.stream = None;
                return None;
            }
            Err(status) => Err(Error::from(status)),
        };
        if next.is_err() {
            self.stream = None;
        }
        Some(next)
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.stream.is_none()
    }
}
