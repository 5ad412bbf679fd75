//! `ApprovalClient` sends what the approver asked for, reads approvals and watch updates, and fails
//! closed on what it cannot read.

use std::time::{Duration, UNIX_EPOCH};

use broker_sdk::{
    proto, Approval, ApprovalFilter, ApprovalRequirement, ApprovalStatus, ApprovalVote, Error,
    Reason, Vote,
};
use tonic::Status;

use crate::fake::{approval, timestamp, voted, Fake, Message};

fn at(seconds: u64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

#[tokio::test]
async fn list_sends_the_filter_and_reads_every_field() {
    let fake = Fake::new();
    fake.on_list_approvals(|_| {
        let mut used = voted(
            approval("apr_2", proto::ApprovalStatus::Approved),
            "carol",
            "APPROVE",
            "ok",
        );
        used.consumed_at = timestamp(1_700_000_400);
        used.decision_id = "dec_2".into();
        Ok(proto::ListApprovalsResponse {
            approvals: vec![approval("apr_1", proto::ApprovalStatus::Pending), used],
            next_page_token: "page-2".into(),
        })
    });
    let approvals = fake
        .approval_client("approver-token".to_owned())
        .await
        .with_timeout(Duration::from_secs(3));

    let page = approvals
        .list(
            ApprovalFilter::new()
                .status(ApprovalStatus::Approved)
                .tool("payments.refund")
                .agent("agent-1")
                .page_size(50)
                .page_token("page-1"),
        )
        .await
        .expect("list");

    let call = fake.calls().pop().expect("one call");
    assert_eq!(call.authorization.as_deref(), Some("Bearer approver-token"));
    assert_eq!(call.grpc_timeout.as_deref(), Some("3000000u"));
    assert!(
        matches!(
            &call.message,
            Message::ListApprovals(proto::ListApprovalsRequest {
                status: 2, tool, agent, page_size: 50, page_token,
            }) if tool == "payments.refund" && agent == "agent-1" && page_token == "page-1"
        ),
        "{:?}",
        call.message
    );
    assert_eq!(page.next_page_token.as_deref(), Some("page-2"));
    let [first, second] = page.approvals.as_slice() else {
        panic!("two approvals: {:?}", page.approvals);
    };
    assert_eq!(
        *first,
        Approval {
            approval_id: "apr_1".into(),
            status: ApprovalStatus::Pending,
            session_id: "ses_1".into(),
            tenant: None,
            agent: "agent-1".into(),
            user: Some("alice".into()),
            tool: "payments.refund".into(),
            arguments_redacted_json: r#"{"amount":5000,"card":"[REDACTED]"}"#.into(),
            arguments_digest: "sha256:args".into(),
            requirements: vec![ApprovalRequirement {
                policy_id: "big-refunds".into(),
                group: "finance".into(),
                quorum: 2,
            }],
            reasons: vec![Reason {
                code: "APPROVAL_REQUIRED".into(),
                policy_id: Some("big-refunds".into()),
                message: "refunds over 1000 EUR need finance".into(),
                kill_switch_id: None,
            }],
            requested_at: at(1_700_000_000),
            expires_at: at(1_700_003_600),
            votes: vec![],
            consumed_at: None,
            decision_id: None,
        }
    );
    assert!(first.is_pending());
    assert_eq!(second.status, ApprovalStatus::Approved);
    assert_eq!(
        second.votes,
        [ApprovalVote {
            approver: "carol".into(),
            person: "carol".into(),
            vote: Vote::Approve,
            comment: "ok".into(),
            at: at(1_700_000_300),
        }]
    );
    assert_eq!(second.consumed_at, Some(at(1_700_000_400)));
    assert_eq!(second.decision_id.as_deref(), Some("dec_2"));
}

#[tokio::test]
async fn an_empty_filter_sends_unspecified_status() {
    let fake = Fake::new();
    let approvals = fake.approval_client("approver-token".to_owned()).await;

    let page = approvals.list(ApprovalFilter::new()).await.expect("list");

    assert!(page.approvals.is_empty());
    assert_eq!(page.next_page_token, None);
    assert!(matches!(
        fake.calls().pop().map(|c| c.message),
        Some(Message::ListApprovals(request)) if request == proto::ListApprovalsRequest::default()
    ));
}

#[tokio::test]
async fn get_sends_the_id() {
    let fake = Fake::new();
    let approvals = fake.approval_client("approver-token".to_owned()).await;

    let approval = approvals.get("apr_1").await.expect("get");

    assert!(matches!(
        fake.calls().pop().map(|c| c.message),
        Some(Message::GetApproval(proto::GetApprovalRequest { approval_id })) if approval_id == "apr_1"
    ));
    assert_eq!(approval.approval_id, "apr_1");
    assert_eq!(approval.status, ApprovalStatus::Pending);
}

#[tokio::test]
async fn approve_sends_the_id_and_comment_and_reads_the_vote() {
    let fake = Fake::new();
    let approvals = fake.approval_client("approver-token".to_owned()).await;

    let approval = approvals
        .approve("apr_1", "checked with the customer")
        .await
        .expect("approve");

    let call = fake.calls().pop().expect("one call");
    assert_eq!(call.authorization.as_deref(), Some("Bearer approver-token"));
    assert!(matches!(
        &call.message,
        Message::Approve(proto::ApproveRequest { approval_id, comment })
            if approval_id == "apr_1" && comment == "checked with the customer"
    ));
    let vote = approval.votes.first().expect("a vote");
    assert_eq!(vote.approver, "carol");
    assert_eq!(vote.vote, Vote::Approve);
    assert_eq!(vote.comment, "checked with the customer");
}

#[tokio::test]
async fn deny_sends_the_id_and_comment_and_reads_the_denied_approval() {
    let fake = Fake::new();
    let approvals = fake.approval_client("approver-token".to_owned()).await;

    let approval = approvals
        .deny("apr_1", "not without a ticket")
        .await
        .expect("deny");

    assert!(matches!(
        fake.calls().pop().map(|c| c.message),
        Some(Message::DenyApproval(proto::DenyRequest { approval_id, comment }))
            if approval_id == "apr_1" && comment == "not without a ticket"
    ));
    assert_eq!(approval.status, ApprovalStatus::Denied);
    assert!(approval.status.is_final());
    assert_eq!(
        approval.votes.first().map(|v| (v.vote, v.comment.as_str())),
        Some((Vote::Deny, "not without a ticket"))
    );
}

#[tokio::test]
async fn voting_on_a_settled_approval_keeps_the_broker_error() {
    let fake = Fake::new();
    fake.on_approve(|_| {
        Err(Status::failed_precondition(
            "approval is EXPIRED, not pending",
        ))
    });
    fake.on_deny_approval(|_| {
        Err(Status::permission_denied(
            "the agent that asked cannot approve its own call",
        ))
    });
    let approvals = fake.approval_client("approver-token".to_owned()).await;

    let approved = approvals.approve("apr_1", "").await;
    let denied = approvals.deny("apr_1", "").await;

    assert!(
        matches!(&approved, Err(e) if e.code() == tonic::Code::FailedPrecondition && e.message() == "approval is EXPIRED, not pending"),
        "{approved:?}"
    );
    assert!(
        matches!(&denied, Err(Error::PermissionDenied { .. })),
        "{denied:?}"
    );
}

#[tokio::test]
async fn watch_yields_the_approvals_in_order_and_ends_with_the_stream() {
    let fake = Fake::new();
    fake.on_watch_approvals(|_| {
        Ok(vec![
            Ok(approval("apr_1", proto::ApprovalStatus::Pending)),
            Ok(approval("apr_2", proto::ApprovalStatus::Pending)),
            Ok(approval("apr_1", proto::ApprovalStatus::Approved)),
            Ok(approval("apr_2", proto::ApprovalStatus::Expired)),
            Ok(approval("apr_3", proto::ApprovalStatus::Cancelled)),
        ])
    });
    let approvals = fake
        .approval_client("approver-token".to_owned())
        .await
        .with_timeout(Duration::from_secs(3));

    let mut watch = approvals.watch().await.expect("watch");
    let mut seen = Vec::new();
    while let Some(approval) = watch.next().await {
        let approval = approval.expect("an approval");
        seen.push((approval.approval_id, approval.status));
    }

    assert_eq!(
        seen,
        [
            ("apr_1".to_owned(), ApprovalStatus::Pending),
            ("apr_2".to_owned(), ApprovalStatus::Pending),
            ("apr_1".to_owned(), ApprovalStatus::Approved),
            ("apr_2".to_owned(), ApprovalStatus::Expired),
            ("apr_3".to_owned(), ApprovalStatus::Cancelled),
        ]
    );
    assert!(watch.is_ended());
    assert!(watch.next().await.is_none(), "an ended watch stays ended");
    let call = fake.calls().pop().expect("one call");
    assert!(matches!(call.message, Message::WatchApprovals));
    assert_eq!(call.authorization.as_deref(), Some("Bearer approver-token"));
    assert_eq!(call.grpc_timeout, None, "the stream itself has no deadline");
}

#[tokio::test]
async fn an_unknown_status_from_the_server_is_a_protocol_error() {
    let fake = Fake::new();
    fake.on_get_approval(|r| {
        let mut unknown = approval(&r.approval_id, proto::ApprovalStatus::Pending);
        unknown.status = 9;
        Ok(unknown)
    });
    fake.on_list_approvals(|_| {
        Ok(proto::ListApprovalsResponse {
            approvals: vec![
                approval("apr_1", proto::ApprovalStatus::Pending),
                approval("apr_2", proto::ApprovalStatus::Unspecified),
            ],
            next_page_token: String::new(),
        })
    });
    fake.on_watch_approvals(|_| {
        let mut unknown = approval("apr_2", proto::ApprovalStatus::Pending);
        unknown.status = 6;
        Ok(vec![
            Ok(approval("apr_1", proto::ApprovalStatus::Pending)),
            Ok(unknown),
            Ok(approval("apr_3", proto::ApprovalStatus::Pending)),
        ])
    });
    let approvals = fake.approval_client("approver-token".to_owned()).await;

    let got = approvals.get("apr_1").await;
    assert!(
        matches!(&got, Err(Error::Protocol(m)) if m.contains("`9`")),
        "{got:?}"
    );
    let listed = approvals.list(ApprovalFilter::new()).await;
    assert!(
        matches!(&listed, Err(Error::Protocol(m)) if m.contains("UNSPECIFIED")),
        "{listed:?}"
    );
    let mut watch = approvals.watch().await.expect("watch");
    assert!(matches!(watch.next().await, Some(Ok(a)) if a.approval_id == "apr_1"));
    let unknown = watch.next().await;
    assert!(
        matches!(&unknown, Some(Err(Error::Protocol(m))) if m.contains("`6`")),
        "{unknown:?}"
    );
    assert!(
        watch.next().await.is_none(),
        "nothing after an unreadable approval"
    );
}

#[tokio::test]
async fn an_unknown_vote_is_a_protocol_error() {
    let fake = Fake::new();
    fake.on_get_approval(|r| {
        Ok(voted(
            approval(&r.approval_id, proto::ApprovalStatus::Pending),
            "carol",
            "ABSTAIN",
            "",
        ))
    });
    let approvals = fake.approval_client("approver-token".to_owned()).await;

    let got = approvals.get("apr_1").await;

    assert!(
        matches!(&got, Err(Error::Protocol(m)) if m.contains("`ABSTAIN`")),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_watch_broken_by_the_broker_reports_its_status_and_ends() {
    let fake = Fake::new();
    fake.on_watch_approvals(|_| {
        Ok(vec![
            Ok(approval("apr_1", proto::ApprovalStatus::Pending)),
            Err(Status::unavailable("the broker is shutting down")),
        ])
    });
    let approvals = fake.approval_client("approver-token".to_owned()).await;

    let mut watch = approvals.watch().await.expect("watch");

    assert!(matches!(watch.next().await, Some(Ok(_))));
    let broken = watch.next().await;
    assert!(
        matches!(&broken, Some(Err(Error::Unavailable { message, .. })) if message == "the broker is shutting down"),
        "{broken:?}"
    );
    assert!(watch.next().await.is_none());
}

#[tokio::test]
async fn a_caller_without_the_approver_role_is_refused() {
    let fake = Fake::new();
    fake.on_watch_approvals(|_| {
        Err(Status::permission_denied(
            "role `agent` may not watch approvals",
        ))
    });
    fake.on_list_approvals(|_| {
        Err(Status::permission_denied(
            "role `agent` may not list approvals",
        ))
    });
    let approvals = fake.approval_client("agent-token".to_owned()).await;

    let watch = approvals.watch().await;
    let listed = approvals.list(ApprovalFilter::new()).await;

    assert!(
        matches!(&watch, Err(Error::PermissionDenied { .. })),
        "{watch:?}"
    );
    assert!(
        matches!(&listed, Err(Error::PermissionDenied { .. })),
        "{listed:?}"
    );
}

#[tokio::test]
async fn opening_a_watch_is_bounded_by_the_deadline() {
    let fake = Fake::new();
    fake.hang();
    let approvals = fake
        .approval_client("approver-token".to_owned())
        .await
        .with_timeout(Duration::from_millis(200));

    let watch = approvals.watch().await;

    assert!(
        matches!(&watch, Err(Error::DeadlineExceeded { .. })),
        "{watch:?}"
    );
}
