//! [`Client`]: the agent's side of `AgentService`.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use broker_proto::v1 as proto;
use proto::agent_service_client::AgentServiceClient;
use tonic::transport::Channel;

use crate::rpc::Rpc;
use crate::{
    connect, new_call_id, Decision, Error, GuardError, Outcome, Session, SessionRequest,
    TokenSource,
};

/// A connection to the broker's `AgentService`, authenticated with a bearer token.
///
/// Cheap to clone: clones share the connection and the token source.
#[derive(Clone)]
pub struct Client {
    inner: AgentServiceClient<Channel>,
    rpc: Rpc,
}

impl Client {
    /// Connects to `endpoint` (e.g. `http://127.0.0.1:50051`, or `https://..` with rustls) and fails now
    /// if the broker cannot be reached. See [`endpoint`](crate::endpoint) for the connection defaults.
    pub async fn connect(
        endpoint: impl Into<String>,
        tokens: impl TokenSource,
    ) -> Result<Self, Error> {
        Ok(Self::from_channel(
            connect::connect(endpoint).await?,
            tokens,
        ))
    }

    /// Like [`connect`](Self::connect), but connects on the first call (and reconnects as needed); fails
    /// only on an invalid endpoint. Calls made while the broker is unreachable fail with
    /// [`Error::Unavailable`].
    pub fn connect_lazy(
        endpoint: impl Into<String>,
        tokens: impl TokenSource,
    ) -> Result<Self, Error> {
        Ok(Self::from_channel(connect::connect_lazy(endpoint)?, tokens))
    }

    /// Uses a channel the caller built (custom TLS, a private CA, mTLS, ...).
    pub fn from_channel(channel: Channel, tokens: impl TokenSource) -> Self {
        Self {
            inner: AgentServiceClient::new(channel),
            rpc: Rpc::new(tokens),
        }
    }

    /// Sets the per-RPC deadline (sent as `grpc-timeout` and enforced locally); the default is 10 s.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.rpc.set_timeout(timeout);
        self
    }

    /// The per-RPC deadline.
    pub fn timeout(&self) -> Duration {
        self.rpc.timeout()
    }

    /// Opens a session for the calling agent (the token's `sub`) and the user it acts for.
    pub async fn open_session(&self, request: SessionRequest) -> Result<Session, Error> {
        let mut inner = self.inner.clone();
        let message = request.into_proto()?;
        let session = self
            .rpc
            .call(message, |req| async move { inner.open_session(req).await })
            .await?;
        Session::try_from(session)
    }

    /// Closes a session; later calls in it are denied with `SESSION_CLOSED`.
    pub async fn close_session(&self, session_id: &str) -> Result<Session, Error> {
        let mut inner = self.inner.clone();
        let message = proto::CloseSessionRequest {
            session_id: session_id.to_owned(),
        };
        let session = self
            .rpc
            .call(message, |req| async move { inner.close_session(req).await })
            .await?;
        Session::try_from(session)
    }

    /// Asks whether `tool` may run with `args` in the session, under a fresh `call_id`
    /// (`call_` + 128 random bits).
    ///
    /// `Ok` carries ALLOW or DENY; `Err` means the broker could not decide, and the tool must not run.
    pub async fn authorize(
        &self,
        session_id: &str,
        tool: &str,
        args: &serde_json::Value,
    ) -> Result<Decision, Error> {
        self.authorize_with_call_id(session_id, tool, args, &new_call_id())
            .await
    }

    /// Same as [`authorize`](Self::authorize) with the caller's own idempotency key: a retry with the
    /// same `call_id` and arguments gets the same decision without spending budget twice.
    ///
    /// The arguments travel as their exact JSON text (integers beyond 2^53 stay exact).
    pub async fn authorize_with_call_id(
        &self,
        session_id: &str,
        tool: &str,
        args: &serde_json::Value,
        call_id: &str,
    ) -> Result<Decision, Error> {
        let arguments_json = serde_json::to_string(args).map_err(|e| Error::InvalidArgument {
            message: format!("arguments cannot be encoded as JSON: {e}"),
            field: Some("arguments_json".into()),
            reason: None,
        })?;
        let message = proto::AuthorizeToolCallRequest {
            session_id: session_id.to_owned(),
            tool: tool.to_owned(),
            arguments_json,
            call_id: call_id.to_owned(),
        };
        let mut inner = self.inner.clone();
        let answer = self
            .rpc
            .call(message, |req| async move {
                inner.authorize_tool_call(req).await
            })
            .await?;
        Decision::from_answer(answer, session_id, tool, call_id)
    }

    /// Runs `f` only when the broker answers ALLOW; never on DENY or on any error.
    ///
    /// ```no_run
    /// # async fn run(client: broker_sdk::Client) {
    /// use broker_sdk::GuardError;
    /// let args = serde_json::json!({"to": "bob@example.com", "subject": "hi"});
    /// match client.guard("ses_..", "email.send", &args, || async { /* send it */ "sent" }).await {
    ///     Ok(result) => println!("{result}"),
    ///     Err(GuardError::Denied(decision)) => println!("not allowed: {decision}"),
    ///     Err(GuardError::Broker(error)) => println!("could not ask: {error}"),
    /// }
    /// # }
    /// ```
    pub async fn guard<F, Fut, T>(
        &self,
        session_id: &str,
        tool: &str,
        args: &serde_json::Value,
        f: F,
    ) -> Result<T, GuardError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        self.guard_with_call_id(session_id, tool, args, &new_call_id(), f)
            .await
    }

    /// [`guard`](Self::guard) with the caller's own idempotency key.
    pub async fn guard_with_call_id<F, Fut, T>(
        &self,
        session_id: &str,
        tool: &str,
        args: &serde_json::Value,
        call_id: &str,
        f: F,
    ) -> Result<T, GuardError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let decision = self
            .authorize_with_call_id(session_id, tool, args, call_id)
            .await?;
        match decision.outcome {
            Outcome::Allow => Ok(f().await),
            Outcome::Deny => Err(GuardError::Denied(Box::new(decision))),
        }
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("timeout", &self.rpc.timeout())
            .finish_non_exhaustive()
    }
}
