//! An in-process fake broker whose answers each test controls, and which records what it received.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_sdk::proto;
use broker_sdk::{ApprovalClient, AuditClient, Client, KillSwitchClient, TokenSource};
use proto::agent_service_server::{AgentService, AgentServiceServer};
use proto::approval_service_server::{ApprovalService, ApprovalServiceServer};
use proto::audit_service_server::{AuditService, AuditServiceServer};
use proto::kill_switch_service_server::{KillSwitchService, KillSwitchServiceServer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// How the fake answers one kind of request.
type Answer<Req, Resp> = Arc<dyn Fn(&Req) -> Result<Resp, Status> + Send + Sync>;

/// How the fake answers `AwaitApproval`, given the call that asked (the last `AuthorizeToolCall` it
/// received).
type AwaitAnswer = Arc<
    dyn Fn(
            &proto::AwaitApprovalRequest,
            &proto::AuthorizeToolCallRequest,
        ) -> Result<proto::Decision, Status>
        + Send
        + Sync,
>;

/// What the fake streams for one `WatchKillSwitches`, in order, before it ends the stream.
pub type Script = Vec<Result<proto::KillSwitchEvent, Status>>;

/// What the fake streams for one `WatchApprovals`, in order, before it ends the stream.
pub type ApprovalScript = Vec<Result<proto::Approval, Status>>;

/// How long the fake waits before answering PENDING_APPROVAL to `AwaitApproval` unless told otherwise:
/// its `approvals.max_wait`.
pub const FAKE_MAX_WAIT: Duration = Duration::from_millis(50);

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Call {
    pub authorization: Option<String>,
    pub grpc_timeout: Option<String>,
    pub message: Message,
}

/// The request's message.
#[derive(Debug, Clone)]
pub enum Message {
    Open(proto::OpenSessionRequest),
    Close(proto::CloseSessionRequest),
    Authorize(proto::AuthorizeToolCallRequest),
    List(proto::ListAuditEventsRequest),
    Verify,
    Engage(proto::EngageKillSwitchRequest),
    Release(proto::ReleaseKillSwitchRequest),
    ListSwitches(proto::ListKillSwitchesRequest),
    Watch,
    Await(proto::AwaitApprovalRequest),
    ListApprovals(proto::ListApprovalsRequest),
    GetApproval(proto::GetApprovalRequest),
    Approve(proto::ApproveRequest),
    DenyApproval(proto::DenyRequest),
    WatchApprovals,
}

struct Answers {
    open: Answer<proto::OpenSessionRequest, proto::Session>,
    close: Answer<proto::CloseSessionRequest, proto::Session>,
    authorize: Answer<proto::AuthorizeToolCallRequest, proto::Decision>,
    list: Answer<proto::ListAuditEventsRequest, proto::ListAuditEventsResponse>,
    verify: Answer<proto::VerifyAuditChainRequest, proto::VerifyAuditChainResponse>,
    engage: Answer<proto::EngageKillSwitchRequest, proto::KillSwitch>,
    release: Answer<proto::ReleaseKillSwitchRequest, proto::KillSwitch>,
    list_switches: Answer<proto::ListKillSwitchesRequest, proto::ListKillSwitchesResponse>,
    watch: Answer<proto::WatchKillSwitchesRequest, Script>,
    await_approval: AwaitAnswer,
    max_wait: Duration,
    list_approvals: Answer<proto::ListApprovalsRequest, proto::ListApprovalsResponse>,
    get_approval: Answer<proto::GetApprovalRequest, proto::Approval>,
    approve: Answer<proto::ApproveRequest, proto::Approval>,
    deny_approval: Answer<proto::DenyRequest, proto::Approval>,
    watch_approvals: Answer<proto::WatchApprovalsRequest, ApprovalScript>,
}

/// The fake broker; clones share state, so a test keeps one to script and inspect it.
#[derive(Clone)]
pub struct Fake {
    calls: Arc<Mutex<Vec<Call>>>,
    answers: Arc<Mutex<Answers>>,
    hang: Arc<AtomicBool>,
}

pub fn timestamp(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

/// A well-formed session like the broker's.
pub fn session(request: &proto::OpenSessionRequest) -> proto::Session {
    proto::Session {
        session_id: "ses_0123456789abcdef0123456789abcdef".into(),
        agent: "agent-1".into(),
        user: String::new(),
        tools: request.tools.clone(),
        purpose: request.purpose.clone(),
        created_at: timestamp(1_700_000_000),
        expires_at: timestamp(1_700_000_600),
        max_tool_calls: request.max_tool_calls,
        tool_calls_used: 0,
        state: proto::SessionState::Open.into(),
        collections: request.collections.clone(),
        labels: Vec::new(),
    }
}

/// A decision about `request` with this outcome, echoing the call like the broker does.
pub fn decision(
    request: &proto::AuthorizeToolCallRequest,
    outcome: proto::Outcome,
    reasons: Vec<proto::Reason>,
) -> proto::Decision {
    proto::Decision {
        decision_id: "dec_fedcba9876543210fedcba9876543210".into(),
        outcome: outcome.into(),
        reasons,
        policy_version: "sha256:abc".into(),
        session_id: request.session_id.clone(),
        tool: request.tool.clone(),
        call_id: request.call_id.clone(),
        decided_at: timestamp(1_700_000_100),
        approval_id: String::new(),
    }
}

/// A PENDING_APPROVAL decision about `request`, naming the approval `approval_id`.
pub fn pending(request: &proto::AuthorizeToolCallRequest, approval_id: &str) -> proto::Decision {
    let mut pending = decision(
        request,
        proto::Outcome::PendingApproval,
        vec![reason(
            "APPROVAL_REQUIRED",
            "big-refunds",
            "refunds over 1000 EUR need finance",
        )],
    );
    pending.approval_id = approval_id.into();
    pending
}

/// What `AwaitApproval` answers for the approval `approval_id` of the call `request`, with this outcome,
/// like the broker (the reason says why).
pub fn awaited(
    request: &proto::AuthorizeToolCallRequest,
    approval_id: &str,
    outcome: proto::Outcome,
) -> proto::Decision {
    let mut answer = pending(request, approval_id);
    answer.outcome = outcome.into();
    answer.reasons = match outcome {
        proto::Outcome::Allow => vec![reason("APPROVAL_GRANTED", "big-refunds", "carol, dave")],
        proto::Outcome::Deny => vec![reason("APPROVAL_DENIED", "big-refunds", "carol said no")],
        _ => answer.reasons,
    };
    answer
}

/// A well-formed approval like the broker's, with this id and status.
pub fn approval(approval_id: &str, status: proto::ApprovalStatus) -> proto::Approval {
    proto::Approval {
        approval_id: approval_id.into(),
        status: status.into(),
        session_id: "ses_1".into(),
        agent: "agent-1".into(),
        user: "alice".into(),
        tool: "payments.refund".into(),
        arguments_redacted_json: r#"{"amount":5000,"card":"[REDACTED]"}"#.into(),
        arguments_digest: "sha256:args".into(),
        requirements: vec![proto::ApprovalRequirement {
            policy_id: "big-refunds".into(),
            group: "finance".into(),
            quorum: 2,
        }],
        reasons: vec![reason(
            "APPROVAL_REQUIRED",
            "big-refunds",
            "refunds over 1000 EUR need finance",
        )],
        requested_at: timestamp(1_700_000_000),
        expires_at: timestamp(1_700_003_600),
        votes: Vec::new(),
        consumed_at: None,
        decision_id: String::new(),
        tenant: String::new(),
    }
}

/// `approval` after `approver` said `vote` (`APPROVE` or `DENY`) with `comment`.
pub fn voted(
    mut approval: proto::Approval,
    approver: &str,
    vote: &str,
    comment: &str,
) -> proto::Approval {
    approval.votes.push(proto::ApprovalVote {
        approver: approver.into(),
        person: String::new(),
        vote: vote.into(),
        comment: comment.into(),
        at: timestamp(1_700_000_300),
    });
    approval
}

pub fn reason(code: &str, policy_id: &str, message: &str) -> proto::Reason {
    proto::Reason {
        code: code.into(),
        policy_id: policy_id.into(),
        message: message.into(),
        kill_switch_id: String::new(),
    }
}

/// An engaged switch like the broker's, for `request`.
pub fn kill_switch(request: &proto::EngageKillSwitchRequest) -> proto::KillSwitch {
    proto::KillSwitch {
        id: "ksw_0123456789abcdef0123456789abcdef".into(),
        scope: request.scope,
        target: request.target.clone(),
        reason: request.reason.clone(),
        engaged_by: "admin-1".into(),
        engaged_at: timestamp(1_700_000_000),
        expires_at: request.expires_at,
        active: true,
        released_by: String::new(),
        released_at: None,
        release_reason: String::new(),
    }
}

/// A watch event: `change` of an engaged switch with this id, scope and target.
pub fn kill_switch_event(
    change: &str,
    id: &str,
    scope: proto::KillSwitchScope,
    target: &str,
) -> proto::KillSwitchEvent {
    let mut switch = kill_switch(&proto::EngageKillSwitchRequest {
        scope: scope.into(),
        target: target.into(),
        reason: "incident 42".into(),
        expires_at: None,
    });
    switch.id = id.into();
    proto::KillSwitchEvent {
        change: change.into(),
        switch: Some(switch),
    }
}

impl Fake {
    /// Answers like a permissive broker: sessions open, every call allowed, an empty verified audit log.
    pub fn new() -> Self {
        let answers = Answers {
            open: Arc::new(|r| Ok(session(r))),
            close: Arc::new(|r| {
                let mut closed = session(&proto::OpenSessionRequest::default());
                closed.session_id.clone_from(&r.session_id);
                closed.state = proto::SessionState::Closed.into();
                Ok(closed)
            }),
            authorize: Arc::new(|r| Ok(decision(r, proto::Outcome::Allow, vec![]))),
            list: Arc::new(|_| Ok(proto::ListAuditEventsResponse::default())),
            verify: Arc::new(|_| {
                Ok(proto::VerifyAuditChainResponse {
                    ok: true,
                    ..Default::default()
                })
            }),
            engage: Arc::new(|r| Ok(kill_switch(r))),
            release: Arc::new(|r| {
                let mut released = kill_switch(&proto::EngageKillSwitchRequest::default());
                released.scope = proto::KillSwitchScope::Global.into();
                released.id.clone_from(&r.id);
                released.active = false;
                released.released_by = "admin-1".into();
                released.released_at = timestamp(1_700_000_900);
                released.release_reason.clone_from(&r.reason);
                Ok(released)
            }),
            list_switches: Arc::new(|_| Ok(proto::ListKillSwitchesResponse::default())),
            watch: Arc::new(|_| Ok(Vec::new())),
            // Nobody decides: every wait ends PENDING_APPROVAL.
            await_approval: Arc::new(|r, call| {
                Ok(awaited(
                    call,
                    &r.approval_id,
                    proto::Outcome::PendingApproval,
                ))
            }),
            max_wait: FAKE_MAX_WAIT,
            list_approvals: Arc::new(|_| Ok(proto::ListApprovalsResponse::default())),
            get_approval: Arc::new(|r| {
                Ok(approval(&r.approval_id, proto::ApprovalStatus::Pending))
            }),
            approve: Arc::new(|r| {
                let pending = approval(&r.approval_id, proto::ApprovalStatus::Pending);
                Ok(voted(pending, "carol", "APPROVE", &r.comment))
            }),
            deny_approval: Arc::new(|r| {
                let denied = approval(&r.approval_id, proto::ApprovalStatus::Denied);
                Ok(voted(denied, "carol", "DENY", &r.comment))
            }),
            watch_approvals: Arc::new(|_| Ok(Vec::new())),
        };
        Self {
            calls: Arc::default(),
            answers: Arc::new(Mutex::new(answers)),
            hang: Arc::default(),
        }
    }

    pub fn on_open(
        &self,
        f: impl Fn(&proto::OpenSessionRequest) -> Result<proto::Session, Status> + Send + Sync + 'static,
    ) {
        self.answers.lock().expect("answers").open = Arc::new(f);
    }

    pub fn on_close(
        &self,
        f: impl Fn(&proto::CloseSessionRequest) -> Result<proto::Session, Status>
            + Send
            + Sync
            + 'static,
    ) {
        self.answers.lock().expect("answers").close = Arc::new(f);
    }

    pub fn on_authorize(
        &self,
        f: impl Fn(&proto::AuthorizeToolCallRequest) -> Result<proto::Decision, Status>
            + Send
            + Sync
            + 'static,
    ) {
        self.answers.lock().expect("answers").authorize = Arc::new(f);
    }

    pub fn on_list(
        &self,
        f: impl Fn(&proto::ListAuditEventsRequest) -> Result<proto::ListAuditEventsResponse, Status>
            + Send
            + Sync
            + 'static,
    ) {
        self.answers.lock().expect("answers").list = Arc::new(f);
    }

    pub fn on_verify(
        &self,
        f: impl Fn(&proto::VerifyAuditChainRequest) -> Result<proto::VerifyAuditChainResponse, Status>
            + Send
            + Sync
            + 'static,
    ) {
        self.answers.lock().expect("answers").verify = Arc::new(f);
    }

    pub fn on_engage(
        &self,
        f: impl Fn(&proto::EngageKillSwitchRequest) -> Result<proto::KillSwitch, Status>
            + Send
            + Sync
            + 'static,
    ) {
        self.answers.lock().expect("answers").engage = Arc::new(f);
    }

    pub fn on_release(
        &self,
        f: impl Fn(&proto::ReleaseKillSwitchRequest) -> Result<proto::KillSwitch, Status>
            + Send
            + Sync
            + 'static,
    ) {
        self.answers.lock().expect("answers").release = Arc::new(f);
    }

    pub fn on_list_switches(
        &self,
        f: impl Fn(&proto::ListKillSwitchesRequest) -> Result<proto::ListKillSwitchesResponse, Status>
            + Send
            + Sync
            + 'static,
    ) {
        self.answers.lock().expect("answers").list_switches = Arc::new(f);
    }

    /// `WatchKillSwitches` fails with the error, or streams the script and then ends the stream.
    pub fn on_watch(
        &self,
        f: impl Fn(&proto::WatchKillSwitchesRequest) -> Result<Script, Status> + Send + Sync + 'static,
    ) {
        self.answers.lock().expect("answers").watch = Arc::new(f);
    }

    /// `AwaitApproval` answers with `f(request, the call that asked)`. Like the broker, the fake waits
    /// the request's timeout (at most its max wait) before answering PENDING_APPROVAL.
    pub fn on_await(
        &self,
        f: impl Fn(
                &proto::AwaitApprovalRequest,
                &proto::AuthorizeToolCallRequest,
            ) -> Result<proto::Decision, Status>
            + Send
            + Sync
            + 'static,
    ) {
        self.answers.lock().expect("answers").await_approval = Arc::new(f);
    }

    /// `AwaitApproval` answers these outcomes (or errors) in order for the call that asked, then
    /// repeats the last one.
    pub fn on_await_script(&self, script: Vec<Result<proto::Outcome, Status>>) {
        let script = Mutex::new(VecDeque::from(script));
        self.on_await(move |r, call| {
            let mut script = script.lock().expect("script");
            let next = if script.len() > 1 {
                script.pop_front()
            } else {
                script.front().cloned()
            };
            let outcome = next.unwrap_or(Ok(proto::Outcome::PendingApproval))?;
            Ok(awaited(call, &r.approval_id, outcome))
        });
    }

    /// The fake's `approvals.max_wait`: the longest it waits before answering PENDING_APPROVAL.
    pub fn set_max_wait(&self, max_wait: Duration) {
        self.answers.lock().expect("answers").max_wait = max_wait;
    }

    pub fn on_list_approvals(
        &self,
        f: impl Fn(&proto::ListApprovalsRequest) -> Result<proto::ListApprovalsResponse, Status>
            + Send
            + Sync
            + 'static,
    ) {
        self.answers.lock().expect("answers").list_approvals = Arc::new(f);
    }

    pub fn on_get_approval(
        &self,
        f: impl Fn(&proto::GetApprovalRequest) -> Result<proto::Approval, Status>
            + Send
            + Sync
            + 'static,
    ) {
        self.answers.lock().expect("answers").get_approval = Arc::new(f);
    }

    pub fn on_approve(
        &self,
        f: impl Fn(&proto::ApproveRequest) -> Result<proto::Approval, Status> + Send + Sync + 'static,
    ) {
        self.answers.lock().expect("answers").approve = Arc::new(f);
    }

    pub fn on_deny_approval(
        &self,
        f: impl Fn(&proto::DenyRequest) -> Result<proto::Approval, Status> + Send + Sync + 'static,
    ) {
        self.answers.lock().expect("answers").deny_approval = Arc::new(f);
    }

    /// `WatchApprovals` fails with the error, or streams the script and then ends the stream.
    pub fn on_watch_approvals(
        &self,
        f: impl Fn(&proto::WatchApprovalsRequest) -> Result<ApprovalScript, Status>
            + Send
            + Sync
            + 'static,
    ) {
        self.answers.lock().expect("answers").watch_approvals = Arc::new(f);
    }

    /// From now on, received requests are recorded but never answered.
    pub fn hang(&self) {
        self.hang.store(true, Ordering::SeqCst);
    }

    /// Everything received so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }

    /// The `AuthorizeToolCall` requests received so far.
    pub fn authorizations(&self) -> Vec<proto::AuthorizeToolCallRequest> {
        self.calls()
            .into_iter()
            .filter_map(|call| match call.message {
                Message::Authorize(request) => Some(request),
                _ => None,
            })
            .collect()
    }

    /// The `AwaitApproval` requests received so far.
    pub fn awaits(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|call| matches!(call.message, Message::Await(_)))
            .collect()
    }

    /// Records the request and waits forever if told to hang.
    async fn receive<M>(&self, request: &Request<M>, message: Message) {
        let header = |key: &str| {
            request
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let call = Call {
            authorization: header("authorization"),
            grpc_timeout: header("grpc-timeout"),
            message,
        };
        self.calls.lock().expect("calls").push(call);
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }

    /// Serves every service on `127.0.0.1:0` and returns the address.
    pub async fn serve(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let router = tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(self.clone()))
            .add_service(AuditServiceServer::new(self.clone()))
            .add_service(KillSwitchServiceServer::new(self.clone()))
            .add_service(ApprovalServiceServer::new(self.clone()));
        tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
        addr
    }

    /// Serves and returns a connected [`Client`].
    pub async fn client(&self, tokens: impl TokenSource) -> Client {
        let addr = self.serve().await;
        Client::connect(format!("http://{addr}"), tokens)
            .await
            .expect("connect")
    }

    /// Serves and returns a connected [`AuditClient`].
    pub async fn audit_client(&self, tokens: impl TokenSource) -> AuditClient {
        let addr = self.serve().await;
        AuditClient::connect(format!("http://{addr}"), tokens)
            .await
            .expect("connect")
    }

    /// Serves and returns a connected [`ApprovalClient`].
    pub async fn approval_client(&self, tokens: impl TokenSource) -> ApprovalClient {
        let addr = self.serve().await;
        ApprovalClient::connect(format!("http://{addr}"), tokens)
            .await
            .expect("connect")
    }

    /// Serves and returns a connected [`KillSwitchClient`].
    pub async fn kill_switch_client(&self, tokens: impl TokenSource) -> KillSwitchClient {
        let addr = self.serve().await;
        KillSwitchClient::connect(format!("http://{addr}"), tokens)
            .await
            .expect("connect")
    }
}

#[tonic::async_trait]
impl AgentService for Fake {
    // Retrieval is exercised against the real broker (tests/e2e/retrieval.rs); the fake does not script it.
    async fn authorize_retrieval(
        &self,
        _request: Request<proto::AuthorizeRetrievalRequest>,
    ) -> Result<Response<proto::RetrievalDecision>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    async fn retrieval_filter(
        &self,
        _request: Request<proto::RetrievalFilterRequest>,
    ) -> Result<Response<proto::RetrievalFilterResponse>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    async fn report_tool_result(
        &self,
        _request: Request<proto::ReportToolResultRequest>,
    ) -> Result<Response<proto::Session>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    async fn open_session(
        &self,
        request: Request<proto::OpenSessionRequest>,
    ) -> Result<Response<proto::Session>, Status> {
        self.receive(&request, Message::Open(request.get_ref().clone()))
            .await;
        let answer = self.answers.lock().expect("answers").open.clone();
        answer(request.get_ref()).map(Response::new)
    }

    async fn close_session(
        &self,
        request: Request<proto::CloseSessionRequest>,
    ) -> Result<Response<proto::Session>, Status> {
        self.receive(&request, Message::Close(request.get_ref().clone()))
            .await;
        let answer = self.answers.lock().expect("answers").close.clone();
        answer(request.get_ref()).map(Response::new)
    }

    async fn authorize_tool_call(
        &self,
        request: Request<proto::AuthorizeToolCallRequest>,
    ) -> Result<Response<proto::Decision>, Status> {
        self.receive(&request, Message::Authorize(request.get_ref().clone()))
            .await;
        let answer = self.answers.lock().expect("answers").authorize.clone();
        answer(request.get_ref()).map(Response::new)
    }

    async fn await_approval(
        &self,
        request: Request<proto::AwaitApprovalRequest>,
    ) -> Result<Response<proto::Decision>, Status> {
        self.receive(&request, Message::Await(request.get_ref().clone()))
            .await;
        let asking = self.authorizations().pop().unwrap_or_default();
        let (answer, max_wait) = {
            let answers = self.answers.lock().expect("answers");
            (answers.await_approval.clone(), answers.max_wait)
        };
        let decision = answer(request.get_ref(), &asking)?;
        if decision.outcome == i32::from(proto::Outcome::PendingApproval) {
            let wait = request
                .get_ref()
                .timeout
                .and_then(|t| Duration::try_from(t).ok())
                .unwrap_or_default();
            tokio::time::sleep(wait.min(max_wait)).await;
        }
        Ok(Response::new(decision))
    }
}

#[tonic::async_trait]
impl ApprovalService for Fake {
    type WatchApprovalsStream = Pin<Box<dyn Stream<Item = Result<proto::Approval, Status>> + Send>>;

    async fn list_approvals(
        &self,
        request: Request<proto::ListApprovalsRequest>,
    ) -> Result<Response<proto::ListApprovalsResponse>, Status> {
        self.receive(&request, Message::ListApprovals(request.get_ref().clone()))
            .await;
        let answer = self.answers.lock().expect("answers").list_approvals.clone();
        answer(request.get_ref()).map(Response::new)
    }

    async fn get_approval(
        &self,
        request: Request<proto::GetApprovalRequest>,
    ) -> Result<Response<proto::Approval>, Status> {
        self.receive(&request, Message::GetApproval(request.get_ref().clone()))
            .await;
        let answer = self.answers.lock().expect("answers").get_approval.clone();
        answer(request.get_ref()).map(Response::new)
    }

    async fn approve(
        &self,
        request: Request<proto::ApproveRequest>,
    ) -> Result<Response<proto::Approval>, Status> {
        self.receive(&request, Message::Approve(request.get_ref().clone()))
            .await;
        let answer = self.answers.lock().expect("answers").approve.clone();
        answer(request.get_ref()).map(Response::new)
    }

    async fn deny(
        &self,
        request: Request<proto::DenyRequest>,
    ) -> Result<Response<proto::Approval>, Status> {
        self.receive(&request, Message::DenyApproval(request.get_ref().clone()))
            .await;
        let answer = self.answers.lock().expect("answers").deny_approval.clone();
        answer(request.get_ref()).map(Response::new)
    }

    async fn watch_approvals(
        &self,
        request: Request<proto::WatchApprovalsRequest>,
    ) -> Result<Response<Self::WatchApprovalsStream>, Status> {
        self.receive(&request, Message::WatchApprovals).await;
        let answer = self
            .answers
            .lock()
            .expect("answers")
            .watch_approvals
            .clone();
        let script = answer(request.get_ref())?;
        let stream: Self::WatchApprovalsStream = Box::pin(tokio_stream::iter(script));
        Ok(Response::new(stream))
    }
}

#[tonic::async_trait]
impl AuditService for Fake {
    async fn list_audit_events(
        &self,
        request: Request<proto::ListAuditEventsRequest>,
    ) -> Result<Response<proto::ListAuditEventsResponse>, Status> {
        self.receive(&request, Message::List(request.get_ref().clone()))
            .await;
        let answer = self.answers.lock().expect("answers").list.clone();
        answer(request.get_ref()).map(Response::new)
    }

    async fn verify_audit_chain(
        &self,
        request: Request<proto::VerifyAuditChainRequest>,
    ) -> Result<Response<proto::VerifyAuditChainResponse>, Status> {
        self.receive(&request, Message::Verify).await;
        let answer = self.answers.lock().expect("answers").verify.clone();
        answer(request.get_ref()).map(Response::new)
    }
}

#[tonic::async_trait]
impl KillSwitchService for Fake {
    type WatchKillSwitchesStream =
        Pin<Box<dyn Stream<Item = Result<proto::KillSwitchEvent, Status>> + Send>>;

    async fn engage(
        &self,
        request: Request<proto::EngageKillSwitchRequest>,
    ) -> Result<Response<proto::KillSwitch>, Status> {
        self.receive(&request, Message::Engage(request.get_ref().clone()))
            .await;
        let answer = self.answers.lock().expect("answers").engage.clone();
        answer(request.get_ref()).map(Response::new)
    }

    async fn release(
        &self,
        request: Request<proto::ReleaseKillSwitchRequest>,
    ) -> Result<Response<proto::KillSwitch>, Status> {
        self.receive(&request, Message::Release(request.get_ref().clone()))
            .await;
        let answer = self.answers.lock().expect("answers").release.clone();
        answer(request.get_ref()).map(Response::new)
    }

    async fn list_kill_switches(
        &self,
        request: Request<proto::ListKillSwitchesRequest>,
    ) -> Result<Response<proto::ListKillSwitchesResponse>, Status> {
        self.receive(&request, Message::ListSwitches(*request.get_ref()))
            .await;
        let answer = self.answers.lock().expect("answers").list_switches.clone();
        answer(request.get_ref()).map(Response::new)
    }

    async fn watch_kill_switches(
        &self,
        request: Request<proto::WatchKillSwitchesRequest>,
    ) -> Result<Response<Self::WatchKillSwitchesStream>, Status> {
        self.receive(&request, Message::Watch).await;
        let answer = self.answers.lock().expect("answers").watch.clone();
        let script = answer(request.get_ref())?;
        let stream: Self::WatchKillSwitchesStream = Box::pin(tokio_stream::iter(script));
        Ok(Response::new(stream))
    }
}
