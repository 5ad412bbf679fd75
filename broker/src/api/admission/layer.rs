//! The tower services that apply [`Admission`](super::Admission): [`Shed`], the front limit in front of
//! everything, and [`Admit`], per service after the authentication interceptor. See `api::serve` for
//! why they sit where they sit.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::BodyExt as _;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::{Layer, Service};

use super::{Admission, Admitted, Gate, Kind, Lane, Refusal};
use crate::api::status;
use crate::auth::{Principal, TokenError};

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// The long waits: they hold their places until the stream (or the wait) ends, within the caller's
/// wait bound. Checked against the generated paths by `tests::wait_paths_name_real_methods`.
pub const WAITS: [&str; 3] = [
    "/broker.v1.AgentService/AwaitApproval",
    "/broker.v1.ApprovalService/WatchApprovals",
    "/broker.v1.KillSwitchService/WatchKillSwitches",
];

fn shed(refusal: &Refusal) -> http::Response<Body> {
    status::overloaded(refusal).into_http()
}

/// The front limit: at most `gate`'s capacity requests in flight (until each answer is ready), before
/// authentication; past it, OVERLOADED at once.
#[derive(Clone)]
pub struct ShedLayer {
    gate: Arc<Gate>,
}

impl ShedLayer {
    pub fn new(capacity: usize) -> Self {
        Self {
            gate: Gate::new(capacity),
        }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            gate: self.gate.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S, B> Service<http::Request<B>> for Shed<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<http::Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let Some(ticket) = self.gate.try_enter() else {
            let refusal = Refusal::Total(self.gate.capacity());
            return Box::pin(std::future::ready(Ok(shed(&refusal))));
        };
        let answer = self.inner.call(req);
        Box::pin(async move {
            let answer = answer.await;
            drop(ticket);
            answer
        })
    }
}

/// Who a service is for, which decides the lane of its calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// Unauthenticated (health, reflection): the general lane, no caller.
    Public,
    /// Authenticated, for agents or auditors: the general lane.
    Callers,
    /// Authenticated, kill switches and approvals: the operators' lane for admins and approvers.
    Operators,
}

/// Admission for one service. Inside the authentication interceptor (it reads the [`Principal`]) and
/// outside the service, so it runs before the message is read: a caller over its share cannot hold a
/// place by sending the body slowly.
#[derive(Clone)]
pub struct Admit<S> {
    inner: S,
    admission: Admission,
    audience: Audience,
}

impl<S> Admit<S> {
    pub fn new(inner: S, admission: Admission, audience: Audience) -> Self {
        Self {
            inner,
            admission,
            audience,
        }
    }

    fn admit<B>(&self, req: &http::Request<B>) -> Result<(Admitted, Kind), TurnedAway> {
        let (caller, lane) = match self.audience {
            Audience::Public => (None, Lane::General),
            audience => {
                // The interceptor put it there or refused the call; if it did not, fail closed.
                let Some(p) = req.extensions().get::<Principal>() else {
                    return Err(TurnedAway::NoPrincipal);
                };
                (Some(p), Lane::of(p, audience == Audience::Operators))
            }
        };
        // Without a caller there is no wait bound: health's own `Watch` stream counts as a call.
        let kind = match caller {
            Some(_) if WAITS.contains(&req.uri().path()) => Kind::Wait,
            _ => Kind::Call,
        };
        match self.admission.admit(caller, lane, kind) {
            Ok(admitted) => Ok((admitted, kind)),
            Err(refusal) => {
                // Debug, not warn: a flood would write a line per call shed.
                tracing::debug!(
                    caller = caller.map(|p| p.subject.as_str()),
                    path = req.uri().path(),
                    limit = refusal.limit(),
                    "call shed"
                );
                Err(TurnedAway::Shed(refusal))
            }
        }
    }
}

/// Why [`Admit`] answered a call itself.
enum TurnedAway {
    NoPrincipal,
    Shed(Refusal),
}

impl TurnedAway {
    fn response(&self) -> http::Response<Body> {
        match self {
            TurnedAway::NoPrincipal => status::unauthenticated(&TokenError::Missing).into_http(),
            TurnedAway::Shed(refusal) => shed(refusal),
        }
    }
}

impl<S: NamedService> NamedService for Admit<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Admit<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<http::Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (admitted, kind) = match self.admit(&req) {
            Ok(a) => a,
            Err(turned) => return Box::pin(std::future::ready(Ok(turned.response()))),
        };
        let answer = self.inner.call(req);
        Box::pin(async move {
            let answer = answer.await;
            match kind {
                // A call is done when its answer is ready (a unary body is already complete).
                Kind::Call => {
                    drop(admitted);
                    answer
                }
                // A wait holds its places until its body (the stream) ends or the client goes away.
                Kind::Wait => answer.map(|response| {
                    response.map(|body| {
                        Body::new(body.map_frame(move |frame| {
                            let _held = &admitted;
                            frame
                        }))
                    })
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::convert::Infallible;

    use broker_proto::v1::agent_service_server::SERVICE_NAME as AGENTS;
    use broker_proto::v1::approval_service_server::SERVICE_NAME as APPROVALS;
    use broker_proto::v1::kill_switch_service_server::SERVICE_NAME as KILL_SWITCHES;
    use tonic::Code;
    use tonic_types::StatusExt as _;
    use tower::{Layer as _, Service as _};

    use super::*;
    use crate::config::Limits;

    #[test]
    fn wait_paths_name_real_methods() {
        let expected = [
            format!("/{AGENTS}/AwaitApproval"),
            format!("/{APPROVALS}/WatchApprovals"),
            format!("/{KILL_SWITCHES}/WatchKillSwitches"),
        ];
        assert_eq!(WAITS.map(str::to_owned), expected);
        // The method names, against the generated descriptor (reflection serves the same bytes).
        let descriptor = String::from_utf8_lossy(broker_proto::FILE_DESCRIPTOR_SET);
        for method in ["AwaitApproval", "WatchApprovals", "WatchKillSwitches"] {
            assert!(descriptor.contains(method), "{method}");
        }
    }

    /// The status of a refused call, and its `ErrorInfo` reason and `limit`.
    fn refused(response: &http::Response<Body>) -> (Code, String, String) {
        let status = tonic::Status::from_header_map(response.headers()).unwrap();
        let info = status.get_error_details().error_info().cloned().unwrap();
        let limit = info.metadata.get("limit").cloned().unwrap_or_default();
        (status.code(), info.reason, limit)
    }

    /// A service whose answers never come: each call admitted holds its place for as long as it runs.
    type Never = std::future::Pending<Result<http::Response<Body>, Infallible>>;

    fn never_answers() -> impl Service<
        http::Request<()>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future = Never,
    > + Clone {
        tower::service_fn(|_req: http::Request<()>| {
            std::future::pending::<Result<http::Response<Body>, Infallible>>()
        })
    }

    #[tokio::test]
    async fn the_front_limit_answers_overloaded_at_once() {
        let mut front = ShedLayer::new(1).layer(never_answers());
        let first = front.call(http::Request::new(()));
        let shed = front.call(http::Request::new(())).await.unwrap();
        assert_eq!(
            refused(&shed),
            (
                Code::ResourceExhausted,
                "OVERLOADED".to_owned(),
                "limits.max_in_flight".to_owned()
            )
        );
        drop(first);
        let mut again = front.call(http::Request::new(()));
        assert!(futures::poll!(&mut again).is_pending(), "admitted");
    }

    fn request(path: &str, caller: Option<Principal>) -> http::Request<()> {
        let mut req = http::Request::builder().uri(path).body(()).unwrap();
        if let Some(p) = caller {
            req.extensions_mut().insert(p);
        }
        req
    }

    fn agent() -> Principal {
        Principal {
            subject: "agent-1".into(),
            person: Some("agent-1".into()),
            user: None,
            tenant: None,
            groups: BTreeSet::new(),
            roles: [crate::auth::Role::Agent].into_iter().collect(),
            token_id: None,
            expires_at: 0,
        }
    }

    #[tokio::test]
    async fn a_call_without_a_principal_is_refused() {
        let admission = Admission::new(&Limits::default());
        let mut admit = Admit::new(never_answers(), admission, Audience::Callers);
        let refused = admit.call(request(WAITS[0], None)).await.unwrap();
        let status = tonic::Status::from_header_map(refused.headers()).unwrap();
        assert_eq!(status.code(), Code::Unauthenticated);
    }

    #[tokio::test]
    async fn a_wait_holds_its_place_until_its_body_ends() {
        let limits = Limits {
            max_waits_per_caller: 1,
            ..Limits::default()
        };
        // Answers at once with a body that never ends, as a watch stream does.
        let streams = tower::service_fn(|_req: http::Request<()>| async {
            let body = http_body_util::StreamBody::new(futures::stream::pending::<
                Result<_, tonic::Status>,
            >());
            Ok::<_, Infallible>(http::Response::new(Body::new(body)))
        });
        let mut admit = Admit::new(streams, Admission::new(&limits), Audience::Operators);
        let path = WAITS[2];
        let open = admit.call(request(path, Some(agent()))).await.unwrap();
        let shed = admit.call(request(path, Some(agent()))).await.unwrap();
        assert_eq!(refused(&shed).2, "limits.max_waits_per_caller");
        // A call is not a wait, and its place is back once it answered.
        let call = admit.call(request("/x/Call", Some(agent()))).await.unwrap();
        assert!(tonic::Status::from_header_map(call.headers()).is_none());
        drop(open);
        let reopened = admit.call(request(path, Some(agent()))).await.unwrap();
        assert!(tonic::Status::from_header_map(reopened.headers()).is_none());
    }
}
