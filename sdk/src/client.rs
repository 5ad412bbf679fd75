//! [`Client`]: the agent's side of `AgentService`.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use broker_proto::v1 as proto;
use proto::agent_service_client::AgentServiceClient;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::rpc::Rpc;
use crate::{
    connect, new_call_id, ApprovalWait, Decision, Error, GuardError, Outcome, Session,
    SessionRequest, TokenSource, AWAIT_MIN_INTERVAL,
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
    pub(crate) fn agent_client(&self) -> AgentServiceClient<Channel> {
        self.inner.clone()
    }

    pub(crate) fn rpc(&self) -> &Rpc {
        &self.rpc
    }
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
    /// (`call_` + 48 bits of milliseconds + 80 random bits: [`new_call_id`](crate::new_call_id)).
    ///
    /// `Ok` carries ALLOW, DENY or PENDING_APPROVAL (the tool must not run yet: see
    /// [`await_approval`](Self::await_approval)); `Err` means the broker could not decide, and the tool
    /// must not run.
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

    /// Waits up to `wait` for approvers to settle the approval `approval_id` (from a PENDING_APPROVAL
    /// [`Decision::approval_id`]), in one `AwaitApproval` call.
    ///
    /// Returns the final decision once approvers decided (an ALLOW only after the broker re-checked the
    /// kill switches, the session and the policies), or the PENDING_APPROVAL decision again when `wait`
    /// passed first: call again. The broker caps `wait` at its `approvals.max_wait`; a zero `wait` asks
    /// for the state now. The RPC's deadline is `wait` plus the client's per-RPC
    /// [`timeout`](Self::timeout), so the broker has its usual time to answer once the wait is over.
    ///
    /// Fails closed: an ALLOW or PENDING_APPROVAL for another approval is an [`Error::Protocol`].
    pub async fn await_approval(
        &self,
        approval_id: &str,
        wait: Duration,
    ) -> Result<Decision, Error> {
        let timeout =
            prost_types::Duration::try_from(wait).map_err(|e| Error::InvalidArgument {
                message: format!("wait is out of range: {e}"),
                field: Some("timeout".into()),
                reason: None,
            })?;
        let message = proto::AwaitApprovalRequest {
            approval_id: approval_id.to_owned(),
            timeout: Some(timeout),
        };
        let deadline = wait.saturating_add(self.rpc.timeout());
        let mut inner = self.inner.clone();
        let answer = self
            .rpc
            .call_with_timeout(message, deadline, |req| async move {
                inner.await_approval(req).await
            })
            .await?;
        Decision::from_await(answer, approval_id)
    }

    /// Runs `f` only when the broker answers ALLOW; never on DENY, PENDING_APPROVAL or any error.
    ///
    /// It does not wait for approvals: a PENDING_APPROVAL is [`GuardError::PendingApproval`] (use
    /// [`guard_with_approval`](Self::guard_with_approval) to wait).
    ///
    /// ```no_run
    /// # async fn run(client: broker_sdk::Client) {
    /// use broker_sdk::GuardError;
    /// let args = serde_json::json!({"to": "bob@example.com", "subject": "hi"});
    /// match client.guard("ses_..", "email.send", &args, || async { /* send it */ "sent" }).await {
    ///     Ok(result) => println!("{result}"),
    ///     Err(GuardError::Denied(decision)) => println!("not allowed: {decision}"),
    ///     Err(GuardError::PendingApproval(decision)) => println!("ask a person first: {decision}"),
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
        run_if_allowed(decision, f).await
    }

    /// Like [`guard`](Self::guard), but when the broker answers PENDING_APPROVAL, calls
    /// [`on_pending`](ApprovalWait::on_pending) once and waits up to the [`ApprovalWait`]'s timeout for
    /// approvers to decide (with [`await_approval`](Self::await_approval), as many times as needed, each
    /// waiting at most the time left; two calls start at least [`AWAIT_MIN_INTERVAL`] apart).
    ///
    /// Runs `f` only on a final ALLOW for this very call (same session, tool and `call_id`, and the
    /// approval asked for). Never runs it on DENY ([`GuardError::Denied`]), when the timeout passes
    /// first ([`GuardError::PendingApproval`]: the approval may still be granted, but the tool was not
    /// run), or on any error ([`GuardError::Broker`], also while waiting).
    ///
    /// ```no_run
    /// # async fn run(client: broker_sdk::Client) {
    /// use std::time::Duration;
    /// use broker_sdk::{ApprovalWait, GuardError};
    /// let args = serde_json::json!({"payment_id": "pay_123", "amount": 5000, "currency": "EUR"});
    /// let wait = ApprovalWait::up_to(Duration::from_secs(300)).on_pending(|decision| {
    ///     println!("asked finance for approval {:?}", decision.approval_id);
    /// });
    /// let refunded = client
    ///     .guard_with_approval("ses_..", "payments.refund", &args, wait, || async { "refunded" })
    ///     .await;
    /// match refunded {
    ///     Ok(result) => println!("{result}"),
    ///     Err(GuardError::Denied(decision)) => println!("not allowed: {decision}"),
    ///     Err(GuardError::PendingApproval(decision)) => println!("nobody decided in time: {decision}"),
    ///     Err(GuardError::Broker(error)) => println!("could not ask: {error}"),
    /// }
    /// # }
    /// ```
    pub async fn guard_with_approval<F, Fut, T>(
        &self,
        session_id: &str,
        tool: &str,
        args: &serde_json::Value,
        wait: ApprovalWait,
        f: F,
    ) -> Result<T, GuardError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let call_id = new_call_id();
        let decision = self
            .authorize_with_call_id(session_id, tool, args, &call_id)
            .await?;
        if !decision.is_pending() {
            return run_if_allowed(decision, f).await;
        }
        let (timeout, on_pending) = wait.into_parts();
        let deadline = deadline_after(timeout);
        if let Some(on_pending) = on_pending {
            on_pending(&decision);
        }
        let settled = self
            .settle(decision, deadline, session_id, tool, &call_id)
            .await?;
        run_if_allowed(settled, f).await
    }

    /// Awaits the approval `pending` names until it is settled or `deadline` passes; returns the final
    /// decision, or the last PENDING_APPROVAL one.
    async fn settle(
        &self,
        pending: Decision,
        deadline: Instant,
        session_id: &str,
        tool: &str,
        call_id: &str,
    ) -> Result<Decision, Error> {
        let approval_id = pending.approval_id.clone().ok_or_else(|| {
            Error::Protocol("the broker sent a PENDING_APPROVAL without an approval id".into())
        })?;
        let mut latest = pending;
        loop {
            let started = Instant::now();
            let remaining = deadline.saturating_duration_since(started);
            if remaining.is_zero() {
                return Ok(latest);
            }
            let next = self.await_approval(&approval_id, remaining).await?;
            match next.outcome {
                Outcome::Allow => {
                    next.ensure_allow_names_call(session_id, tool, call_id)?;
                    return Ok(next);
                }
                Outcome::Deny => return Ok(next),
                Outcome::PendingApproval => {
                    latest = next;
                    let earliest_next = started.checked_add(AWAIT_MIN_INTERVAL).unwrap_or(deadline);
                    tokio::time::sleep_until(earliest_next.min(deadline)).await;
                }
            }
        }
    }
}

/// Runs `f` on ALLOW; anything else is why it did not run.
async fn run_if_allowed<F, Fut, T>(decision: Decision, f: F) -> Result<T, GuardError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    match decision.outcome {
        Outcome::Allow => Ok(f().await),
        Outcome::Deny => Err(GuardError::Denied(Box::new(decision))),
        Outcome::PendingApproval => Err(GuardError::PendingApproval(Box::new(decision))),
    }
}

/// `timeout` from now; a timeout too large to represent waits for a century instead.
fn deadline_after(timeout: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("timeout", &self.rpc.timeout())
            .finish_non_exhaustive()
    }
}
