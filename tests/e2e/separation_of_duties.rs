//! Separation of duties between people, not strings: the user an agent acts for cannot approve under
//! another spelling of their name (case, white space, email form), a token that holds the agent role
//! never votes, and one person's several identities count once toward a quorum. People are identified by
//! the configured claim (`auth.person_claim`: `sub` by default, here also `email`).

use std::time::Duration;

use broker::auth::Role;
use broker_e2e::{both, DbBackend, Harness, Options};
use broker_sdk::{ApprovalClient, ApprovalStatus, Client, Error, Outcome, SessionRequest};
use serde_json::json;

const REFUND_APPROVERS: &[&str] = &["payments-approvers"];
const ONCALL: &[&str] = &["platform-oncall"];

/// The support agent acting for carol, with a pending approval for `tool`; returns the approval id.
async fn pending(h: &Harness, tool: &str) -> (Client, String) {
    let agent = h.agent("support-agent", Some("carol")).await;
    let s = agent
        .open_session(SessionRequest::new(["payments.refund", "shell.exec"]).max_tool_calls(10))
        .await
        .unwrap();
    let args = match tool {
        "shell.exec" => json!({"command": "systemctl restart app"}),
        _ => json!({"payment_id": "pay_1", "amount": 5000, "currency": "EUR"}),
    };
    let d = agent.authorize(&s.session_id, tool, &args).await.unwrap();
    assert_eq!(d.outcome, Outcome::PendingApproval, "{d:?}");
    (agent, d.approval_id.unwrap())
}

/// An approver whose token carries `email` (when given) beside `sub`.
async fn approver_with_email(
    h: &Harness,
    sub: &str,
    email: Option<&str>,
    groups: &[&str],
) -> ApprovalClient {
    let mut claims = h.valid_claims(sub);
    claims["roles"] = json!(["approver"]);
    claims["groups"] = json!(groups);
    if let Some(email) = email {
        claims["email"] = json!(email);
    }
    ApprovalClient::connect(h.endpoint(), h.sign(&claims))
        .await
        .unwrap()
}

fn assert_separation(err: &Error, who: &str) {
    assert_eq!(
        (err.code(), err.reason()),
        (tonic::Code::PermissionDenied, Some("SEPARATION_OF_DUTIES")),
        "{who}: {err:?}"
    );
}

fn assert_already_voted(err: &Error, who: &str) {
    assert_eq!(
        (err.code(), err.reason()),
        (
            tonic::Code::FailedPrecondition,
            Some("APPROVAL_NOT_VOTABLE")
        ),
        "{who}: {err:?}"
    );
}

async fn the_user_under_another_case_cannot_approve(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (agent, id) = pending(&h, "payments.refund").await;
    for who in ["Carol", "CAROL", " carol ", "Support-Agent", "ｃａｒｏｌ"] {
        let err = h
            .approver(who, REFUND_APPROVERS)
            .await
            .approve(&id, "me")
            .await
            .unwrap_err();
        assert_separation(&err, who);
    }
    let approved = h
        .approver("bob", REFUND_APPROVERS)
        .await
        .approve(&id, "ok")
        .await
        .unwrap();
    assert_eq!(approved.status, ApprovalStatus::Approved);
    assert!(agent
        .await_approval(&id, Duration::from_secs(5))
        .await
        .unwrap()
        .is_allowed());
}
both!(the_user_under_another_case_cannot_approve);

async fn the_user_by_email_cannot_approve(backend: DbBackend) {
    // `sub` as the person (the default): an email-shaped subject is carol's mailbox.
    let h = Harness::start(backend).await;
    let (_, id) = pending(&h, "payments.refund").await;
    for who in ["carol@example.com", "Carol+refunds@Example.COM"] {
        let err = h
            .approver(who, REFUND_APPROVERS)
            .await
            .approve(&id, "me")
            .await
            .unwrap_err();
        assert_separation(&err, who);
    }

    // `email` as the person: the subject may be an opaque IdP id, the email is carol's.
    let h = Harness::start_with(
        backend,
        Options {
            person_claim: Some("email".to_owned()),
            ..Options::default()
        },
    )
    .await;
    let (agent, id) = pending(&h, "payments.refund").await;
    let carol =
        approver_with_email(&h, "u-1001", Some("CAROL@example.com"), REFUND_APPROVERS).await;
    assert_separation(
        &carol.approve(&id, "me").await.unwrap_err(),
        "carol by email",
    );
    // Without the claim nobody can tell who votes: refused.
    let nameless = approver_with_email(&h, "u-1002", None, REFUND_APPROVERS).await;
    assert_separation(&nameless.approve(&id, "?").await.unwrap_err(), "no email");
    let bob = approver_with_email(&h, "u-1003", Some("bob@example.com"), REFUND_APPROVERS).await;
    let approved = bob.approve(&id, "ok").await.unwrap();
    assert_eq!(approved.status, ApprovalStatus::Approved);
    assert_eq!(approved.votes[0].person, "bob@example.com");
    assert!(agent
        .await_approval(&id, Duration::from_secs(5))
        .await
        .unwrap()
        .is_allowed());
}
both!(the_user_by_email_cannot_approve);

async fn a_token_with_the_agent_role_never_votes(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (_, id) = pending(&h, "payments.refund").await;
    // Another agent, and a person's token that also holds the agent role: neither votes.
    for who in ["billing-agent", "bob"] {
        let both_roles = ApprovalClient::connect(
            h.endpoint(),
            h.token_full(
                who,
                &[Role::Agent, Role::Approver],
                None,
                None,
                REFUND_APPROVERS,
            ),
        )
        .await
        .unwrap();
        assert_separation(&both_roles.approve(&id, "ok").await.unwrap_err(), who);
        assert_separation(&both_roles.deny(&id, "no").await.unwrap_err(), who);
    }
    let a = h
        .approver("bob", REFUND_APPROVERS)
        .await
        .get(&id)
        .await
        .unwrap();
    assert_eq!((a.status, a.votes.len()), (ApprovalStatus::Pending, 0));
}
both!(a_token_with_the_agent_role_never_votes);

async fn two_identities_of_one_person_make_no_quorum(backend: DbBackend) {
    // `sub` as the person: `oncall-1` and `OnCall-1@example.com` are one person.
    let h = Harness::start(backend).await;
    let (agent, id) = pending(&h, "shell.exec").await;
    let first = h.approver("oncall-1", ONCALL).await;
    assert_eq!(
        first.approve(&id, "ok").await.unwrap().status,
        ApprovalStatus::Pending
    );
    for alias in ["OnCall-1@example.com", "ONCALL-1"] {
        let err = h
            .approver(alias, ONCALL)
            .await
            .approve(&id, "ok")
            .await
            .unwrap_err();
        assert_already_voted(&err, alias);
    }
    assert_eq!(
        agent
            .await_approval(&id, Duration::ZERO)
            .await
            .unwrap()
            .outcome,
        Outcome::PendingApproval
    );

    // `email` as the person: two accounts with one mailbox are one person.
    let h = Harness::start_with(
        backend,
        Options {
            person_claim: Some("email".to_owned()),
            ..Options::default()
        },
    )
    .await;
    let (agent, id) = pending(&h, "shell.exec").await;
    let dana = approver_with_email(&h, "dana", Some("dana@example.com"), ONCALL).await;
    assert_eq!(
        dana.approve(&id, "ok").await.unwrap().status,
        ApprovalStatus::Pending
    );
    let dana_admin = approver_with_email(&h, "dana-admin", Some("Dana@Example.com"), ONCALL).await;
    assert_already_voted(
        &dana_admin.approve(&id, "ok").await.unwrap_err(),
        "dana-admin",
    );
    assert_eq!(
        agent
            .await_approval(&id, Duration::ZERO)
            .await
            .unwrap()
            .outcome,
        Outcome::PendingApproval
    );
    let erin = approver_with_email(&h, "erin", Some("erin@example.com"), ONCALL).await;
    assert_eq!(
        erin.approve(&id, "ok").await.unwrap().status,
        ApprovalStatus::Approved
    );
    assert!(agent
        .await_approval(&id, Duration::from_secs(5))
        .await
        .unwrap()
        .is_allowed());
}
both!(two_identities_of_one_person_make_no_quorum);
