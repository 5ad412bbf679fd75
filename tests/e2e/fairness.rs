//! Admission (`broker::api::admission`): one caller cannot starve the others, and agents together cannot
//! starve the admins and approvers who stop them. Limits are small here so a flood is a few dozen calls;
//! every flood is larger than `max_in_flight`, which before admission let it shed everyone.
//! A shed call is RESOURCE_EXHAUSTED `OVERLOADED`, naming its limit, and never an ALLOW.

use std::time::Duration;

use broker::auth::Role;
use broker::config::Limits;
use broker_e2e::{both, DbBackend, Harness, Options};
use broker_sdk::{
    ApprovalStatus, Client, Code, Decision, EngageRequest, KillSwitchScope, Outcome, SessionRequest,
};
use bytes::Bytes;
use serde_json::json;

const REFUND_APPROVERS: &[&str] = &["payments-approvers"];
/// Long enough that an admitted wait is still waiting when the test looks; the approval ends it sooner.
const LONG_WAIT: Duration = Duration::from_secs(30);
/// Nothing the test waits for should take this long.
const PATIENCE: Duration = Duration::from_secs(20);

fn limits(in_flight: usize, reserve: usize, per_caller: usize, waits: usize) -> Limits {
    Limits {
        max_in_flight: in_flight,
        operator_reserve: reserve,
        max_in_flight_per_caller: per_caller,
        max_waits_per_caller: waits,
        ..Limits::default()
    }
}

async fn start(backend: DbBackend, limits: Limits) -> Harness {
    Harness::start_with(
        backend,
        Options {
            limits,
            ..Options::default()
        },
    )
    .await
}

/// Shed by admission with `limit` named: RESOURCE_EXHAUSTED, reason `OVERLOADED`.
fn assert_shed(e: &broker_sdk::Error, limit: &str) {
    assert_eq!(
        (e.code(), e.reason()),
        (Code::ResourceExhausted, Some("OVERLOADED")),
        "{e:?}"
    );
    assert!(
        e.message().contains(&format!("`{limit}`")),
        "{limit}: {e:?}"
    );
}

/// Calls `f` until it is admitted: a place freed by a stream that ended is free once the server has
/// seen the stream go, which takes a round trip or two.
async fn once_admitted<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, broker_sdk::Error>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match f().await {
            Ok(t) => return t,
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "place never freed: {e:?}"
                );
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

/// An agent with a pending refund approval: its client and the approval id.
async fn agent_with_pending_approval(h: &Harness, agent: &str) -> (Client, String) {
    let c = h.agent(agent, Some("carol")).await;
    let s = c
        .open_session(SessionRequest::new(["payments.refund"]).purpose("refunds"))
        .await
        .unwrap();
    let d = c
        .authorize(
            &s.session_id,
            "payments.refund",
            &json!({"payment_id": "pay_1", "amount": 5000, "currency": "EUR"}),
        )
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::PendingApproval, "{d:?}");
    (c, d.approval_id.unwrap())
}

/// `n` AwaitApproval calls at once; each answer arrives on the channel as it comes.
fn flood_of_waits(
    c: &Client,
    approval_id: &str,
    n: usize,
) -> tokio::sync::mpsc::UnboundedReceiver<Result<Decision, broker_sdk::Error>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..n {
        let (c, id, tx) = (c.clone(), approval_id.to_owned(), tx.clone());
        tokio::spawn(async move {
            let _ = tx.send(c.await_approval(&id, LONG_WAIT).await);
        });
    }
    rx
}

async fn next<T>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("an answer in time")
        .expect("an answer")
}

async fn web_search_allowed(c: &Client) {
    let s = c
        .open_session(SessionRequest::new(["web.search"]).purpose("research"))
        .await
        .unwrap();
    let d = c
        .authorize(&s.session_id, "web.search", &json!({"query": "rust"}))
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
}

async fn one_agents_flood_of_waits_sheds_only_its_own_excess(backend: DbBackend) {
    let (waits, flood) = (4, 40);
    let h = start(backend, limits(16, 8, 12, waits)).await;
    let (flooder, id) = agent_with_pending_approval(&h, "flooding-agent").await;
    let (other, admin, bob) = (
        h.agent("other-agent", Some("dave")).await,
        h.admin().await,
        h.approver("bob", REFUND_APPROVERS).await,
    );

    let mut answers = flood_of_waits(&flooder, &id, flood);
    // The excess is refused at once; the waits admitted keep waiting for people.
    for _ in 0..flood - waits {
        assert_shed(
            &next(&mut answers).await.unwrap_err(),
            "limits.max_waits_per_caller",
        );
    }

    // (1) An admin stops something, (2) another agent is decided, (3) an approver votes.
    let switch = admin
        .engage(EngageRequest::new(
            KillSwitchScope::Tool,
            "shell.exec",
            "drill",
        ))
        .await
        .unwrap();
    assert!(switch.active);
    web_search_allowed(&other).await;
    assert_eq!(
        bob.approve(&id, "customer verified").await.unwrap().status,
        ApprovalStatus::Approved
    );

    // The admitted waits end with the approval: answered, and the approval used at most once.
    let mut allowed = 0;
    for _ in 0..waits {
        let d = next(&mut answers).await.unwrap();
        allowed += usize::from(d.outcome == Outcome::Allow);
    }
    assert!(allowed <= 1, "{allowed} ALLOWs from one approval");
    // Its places are free again: the flooding agent is served.
    web_search_allowed(&flooder).await;
}
both!(one_agents_flood_of_waits_sheds_only_its_own_excess);

async fn agents_filling_the_broker_leave_the_reserve_to_operators(backend: DbBackend) {
    // Four agents, two waits each, fill `max_in_flight` (8).
    let h = start(backend, limits(8, 4, 8, 2)).await;
    let late = h.agent("late-agent", Some("dave")).await;
    let late_session = late
        .open_session(SessionRequest::new(["web.search"]).purpose("research"))
        .await
        .unwrap()
        .session_id;
    let (admin, bob) = (h.admin().await, h.approver("bob", REFUND_APPROVERS).await);
    let mut floods = Vec::new();
    let mut approvals = Vec::new();
    for i in 0..4 {
        let (c, id) = agent_with_pending_approval(&h, &format!("agent-{i}")).await;
        // Three each: the third is refused, which shows the first two hold their places.
        let mut answers = flood_of_waits(&c, &id, 3);
        assert_shed(
            &next(&mut answers).await.unwrap_err(),
            "limits.max_waits_per_caller",
        );
        floods.push(answers);
        approvals.push(id);
    }

    // Agents compete among themselves for `max_in_flight`: a fifth agent waits its turn ...
    let e = late
        .authorize(&late_session, "web.search", &json!({"query": "rust"}))
        .await
        .unwrap_err();
    assert_shed(&e, "limits.max_in_flight");
    // ... while admins and approvers use the reserve.
    let switch = admin
        .engage(EngageRequest::new(
            KillSwitchScope::Tool,
            "shell.exec",
            "drill",
        ))
        .await
        .unwrap();
    admin.release(&switch.id, "drill over").await.unwrap();
    assert_eq!(
        bob.list(broker_sdk::ApprovalFilter::default())
            .await
            .unwrap()
            .approvals
            .len(),
        4
    );
    for (id, answers) in approvals.iter().zip(floods.iter_mut()) {
        bob.approve(id, "ok").await.unwrap();
        for _ in 0..2 {
            next(answers).await.unwrap();
        }
    }
    // Once the waits ended, the fifth agent is decided.
    let d = late
        .authorize(&late_session, "web.search", &json!({"query": "rust"}))
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
}
both!(agents_filling_the_broker_leave_the_reserve_to_operators);

// ------------------------------------------------------------------ calls held open over raw HTTP/2

/// Opens `n` AuthorizeToolCall streams that send their headers and never their message, so each one
/// admitted holds its place; returns the statuses of those answered at once (the ones shed), after
/// `expected_now` of them came.
async fn hold_open_calls(
    h: &Harness,
    token: &str,
    n: usize,
    expected_now: usize,
) -> (
    Vec<String>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
    Vec<h2::SendStream<Bytes>>,
) {
    let tcp = tokio::net::TcpStream::connect(h.running.addr)
        .await
        .unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let mut responses = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..n {
        let req = http::Request::builder()
            .method("POST")
            .uri("http://broker/broker.v1.AgentService/AuthorizeToolCall")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap();
        let (response, body) = send.send_request(req, false).unwrap();
        responses.push(response);
        bodies.push(body);
        send = send.ready().await.unwrap();
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for response in responses {
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Ok(r) = response.await {
                let status = r
                    .headers()
                    .get("grpc-status")
                    .map(|v| v.to_str().unwrap().to_owned());
                let _ = tx.send(status.unwrap_or_default());
            }
        });
    }
    let mut statuses = Vec::new();
    for _ in 0..expected_now {
        statuses.push(next(&mut rx).await);
    }
    (statuses, connection, bodies)
}

async fn one_agents_flood_of_calls_beyond_its_share_does_not_shed_another(backend: DbBackend) {
    let (share, flood) = (6, 24);
    let h = start(backend, limits(16, 4, share, 2)).await;
    let token = h.token("flooding-agent", &[Role::Agent], Some("alice"));
    let flooder = h.client_with_token(token.clone()).await;
    let other = h.agent("other-agent", Some("dave")).await;

    let (statuses, connection, bodies) = hold_open_calls(&h, &token, flood, flood - share).await;
    // RESOURCE_EXHAUSTED (8), answered at once without the message.
    assert_eq!(statuses, vec!["8".to_owned(); flood - share]);
    web_search_allowed(&other).await;
    let e = flooder
        .open_session(SessionRequest::new(["web.search"]).purpose("research"))
        .await
        .unwrap_err();
    assert_shed(&e, "limits.max_in_flight_per_caller");

    // The held calls end with their connection, and their places with them.
    drop(bodies);
    connection.abort();
    once_admitted(|| flooder.open_session(SessionRequest::new(["web.search"]).purpose("research")))
        .await;
}
both!(one_agents_flood_of_calls_beyond_its_share_does_not_shed_another);

// ------------------------------------------------------------------ watch streams

async fn watch_streams_are_waits_and_free_their_place_when_they_end(backend: DbBackend) {
    let h = start(backend, limits(64, 8, 8, 2)).await;
    let (admin, bob) = (h.admin().await, h.approver("bob", REFUND_APPROVERS).await);
    let mut kill_watches = vec![admin.watch().await.unwrap(), admin.watch().await.unwrap()];
    assert_shed(
        &admin.watch().await.unwrap_err(),
        "limits.max_waits_per_caller",
    );
    let approval_watches = [bob.watch().await.unwrap(), bob.watch().await.unwrap()];
    assert_shed(
        &bob.watch().await.unwrap_err(),
        "limits.max_waits_per_caller",
    );
    // Calls are not waits: the admin with both watches open still engages.
    admin
        .engage(EngageRequest::new(
            KillSwitchScope::Tool,
            "shell.exec",
            "drill",
        ))
        .await
        .unwrap();
    drop(approval_watches);
    // A watch given up frees its place.
    drop(kill_watches.pop());
    let again = once_admitted(|| admin.watch()).await;
    drop((again, kill_watches));
    once_admitted(|| bob.watch()).await;
}
both!(watch_streams_are_waits_and_free_their_place_when_they_end);
