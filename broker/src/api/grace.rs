//! The end of a shutdown's grace period: every call still running is answered UNAVAILABLE
//! (`SHUTTING_DOWN`), so that the broker stops within a bound and no client is left without an answer.
//! The call's own work is dropped; an audit write it queued stays in the writer's queue and is committed
//! before the broker's final checkpoint, but its ALLOW is never sent (fail closed).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tower::{Layer, Service};

use super::status;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Answers calls in flight once `over` turns true.
#[derive(Clone)]
pub struct GraceLayer {
    over: watch::Receiver<bool>,
}

impl GraceLayer {
    pub fn new(over: watch::Receiver<bool>) -> Self {
        Self { over }
    }
}

impl<S> Layer<S> for GraceLayer {
    type Service = Grace<S>;

    fn layer(&self, inner: S) -> Grace<S> {
        Grace {
            inner,
            over: self.over.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Grace<S> {
    inner: S,
    over: watch::Receiver<bool>,
}

impl<S, R> Service<R> for Grace<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let call = self.inner.call(req);
        let mut over = self.over.clone();
        Box::pin(async move {
            tokio::select! {
                biased;
                answer = call => answer.map_err(Into::into),
                // The sender gone means the server is gone: answer too.
                () = async { let _ = over.wait_for(|over| *over).await; } => {
                    Err(Box::new(status::shutting_down()) as BoxError)
                }
            }
        })
    }
}
