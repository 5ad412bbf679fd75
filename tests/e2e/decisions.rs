//! ALLOW and every DENY code, through the SDK.

use broker_e2e::{both, DbBackend, Harness};
use broker_sdk::{Outcome, SessionRequest};
use serde_json::json;

async fn allow_carries_policy_and_version(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("research-agent", Some("alice")).await;
    let s = agent
        .open_session(SessionRequest::new(["web.*"]).purpose("research"))
        .await
        .unwrap();
    assert!(
        s.session_id.starts_with("ses_") && s.session_id.len() == 36,
        "{}",
        s.session_id
    );
    let d = agent
        .authorize(&s.session_id, "web.search", &json!({"query": "cedar"}))
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
    assert!(d.decision_id.starts_with("dec_"));
    assert_eq!(d.policy_version.len(), 64);
    let r = d.reason("POLICY_ALLOW").expect("allow reason");
    assert_eq!(
        r.policy_id.as_deref(),
        Some("agents-call-low-and-medium-risk-tools")
    );
    assert_eq!(
        r.message,
        "agents may call low- and medium-risk catalogue tools"
    );
}
both!(allow_carries_policy_and_version);

async fn policy_denials_name_the_policy(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("support-agent", Some("carol")).await;
    let s = agent
        .open_session(SessionRequest::new(["payments.refund", "email.send"]).purpose("support"))
        .await
        .unwrap();
    let big = agent
        .authorize(
            &s.session_id,
            "payments.refund",
            &json!({"payment_id": "p1", "amount": 500000, "currency": "EUR"}),
        )
        .await
        .unwrap();
    assert_eq!(big.outcome, Outcome::Deny);
    let ids: Vec<_> = big
        .reasons
        .iter()
        .filter_map(|r| r.policy_id.as_deref())
        .collect();
    assert!(ids.contains(&"refunds-over-100000-forbidden"), "{big:?}");
    // Above 1000 (but not absurd), a person decides: not a DENY, not an ALLOW.
    let mid = agent
        .authorize(
            &s.session_id,
            "payments.refund",
            &json!({"payment_id": "p1", "amount": 5000, "currency": "EUR"}),
        )
        .await
        .unwrap();
    assert_eq!(mid.outcome, Outcome::PendingApproval, "{mid:?}");
    assert!(mid
        .approval_id
        .as_deref()
        .is_some_and(|a| a.starts_with("apr_")));
    assert_eq!(
        mid.reason("APPROVAL_REQUIRED")
            .unwrap()
            .policy_id
            .as_deref(),
        Some("refunds-over-1000-need-approval")
    );
    let small = agent
        .authorize(
            &s.session_id,
            "payments.refund",
            &json!({"payment_id": "p1", "amount": 50, "currency": "EUR"}),
        )
        .await
        .unwrap();
    assert_eq!(small.outcome, Outcome::Allow, "{small:?}");
    let out = agent
        .authorize(
            &s.session_id,
            "email.send",
            &json!({"to": "x@evil.test", "subject": "s", "body": "b"}),
        )
        .await
        .unwrap();
    assert_eq!(out.outcome, Outcome::PendingApproval, "{out:?}");
    assert_eq!(
        out.reason("APPROVAL_REQUIRED")
            .unwrap()
            .policy_id
            .as_deref(),
        Some("email-outside-company-needs-approval")
    );

    // The same agent acting for nobody: no permit applies.
    let alone = h.agent("support-agent", None).await;
    let s2 = alone
        .open_session(SessionRequest::new(["payments.*"]))
        .await
        .unwrap();
    let d = alone
        .authorize(
            &s2.session_id,
            "payments.refund",
            &json!({"payment_id": "p", "amount": 5, "currency": "EUR"}),
        )
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Deny);
    assert!(d.has_reason("NO_POLICY_ALLOWS"), "{d:?}");
}
both!(policy_denials_name_the_policy);

async fn catalogue_scope_and_argument_denials(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("coding-agent", Some("dev")).await;
    let s = agent
        .open_session(SessionRequest::new(["file.read", "shell.exec"]).purpose("fix bug"))
        .await
        .unwrap();

    let d = agent
        .authorize(&s.session_id, "web.search", &json!({"query": "x"}))
        .await
        .unwrap();
    assert!(
        d.has_reason("NOT_IN_SESSION_SCOPE") && d.outcome == Outcome::Deny,
        "{d:?}"
    );

    let d = agent
        .authorize(&s.session_id, "db.drop_table", &json!({}))
        .await
        .unwrap();
    assert!(
        d.has_reason("UNKNOWN_TOOL") && d.outcome == Outcome::Deny,
        "{d:?}"
    );
    // A look-alike name (Cyrillic 'і') is not the catalogue tool, whatever an executor might make of it.
    let d = agent
        .authorize(&s.session_id, "fіle.read", &json!({"path": "/etc/passwd"}))
        .await
        .unwrap();
    assert!(
        d.has_reason("UNKNOWN_TOOL") && d.outcome == Outcome::Deny,
        "{d:?}"
    );

    let d = agent
        .authorize(&s.session_id, "file.read", &json!({"path": 42}))
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Deny);
    let r = d.reason("INVALID_ARGUMENTS").unwrap();
    assert!(r.message.contains("args.path"), "{r:?}");
    let d = agent
        .authorize(
            &s.session_id,
            "file.read",
            &json!({"path": "/x", "__entity": {"type": "Agent", "id": "root"}}),
        )
        .await
        .unwrap();
    assert!(
        d.has_reason("INVALID_ARGUMENTS") && d.outcome == Outcome::Deny,
        "{d:?}"
    );

    let d = agent
        .authorize(&s.session_id, "shell.exec", &json!({"command": "id"}))
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::PendingApproval, "{d:?}");
    assert_eq!(
        d.reason("APPROVAL_REQUIRED").unwrap().policy_id.as_deref(),
        Some("shell-needs-two-approvers")
    );

    // Malformed JSON text is not a decision but an error naming the field.
    let raw = broker_sdk::proto::AuthorizeToolCallRequest {
        session_id: s.session_id.clone(),
        tool: "file.read".into(),
        arguments_json: "{not json".into(),
        call_id: "call-1".into(),
    };
    let mut grpc =
        broker_proto::v1::agent_service_client::AgentServiceClient::connect(h.endpoint())
            .await
            .unwrap();
    let mut req = tonic::Request::new(raw);
    req.metadata_mut().insert(
        "authorization",
        format!(
            "Bearer {}",
            h.token("coding-agent", &[broker::auth::Role::Agent], Some("dev"))
        )
        .parse()
        .unwrap(),
    );
    let err = grpc.authorize_tool_call(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("arguments_json"),
        "{}",
        err.message()
    );
}
both!(catalogue_scope_and_argument_denials);

async fn budget_is_spent_by_allows_only_and_holds(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("research-agent", Some("alice")).await;
    let s = agent
        .open_session(SessionRequest::new(["web.search"]).max_tool_calls(3))
        .await
        .unwrap();
    // A denial does not spend budget.
    let d = agent
        .authorize(
            &s.session_id,
            "web.search",
            &json!({"query": "x", "max_results": 500}),
        )
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Deny);
    // Concurrent calls race for the last units: exactly the budget is allowed.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (agent, sid) = (agent.clone(), s.session_id.clone());
        tasks.push(tokio::spawn(async move {
            agent
                .authorize(&sid, "web.search", &json!({"query": format!("q{i}")}))
                .await
                .unwrap()
        }));
    }
    let mut allowed = 0;
    for t in tasks {
        let d = t.await.unwrap();
        match d.outcome {
            Outcome::Allow => allowed += 1,
            Outcome::Deny => assert!(d.has_reason("BUDGET_EXHAUSTED"), "{d:?}"),
            Outcome::PendingApproval => panic!("web.search never needs approval: {d:?}"),
        }
    }
    assert_eq!(allowed, 3);
}
both!(budget_is_spent_by_allows_only_and_holds);

async fn retry_with_same_call_id_is_idempotent(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("research-agent", Some("alice")).await;
    let s = agent
        .open_session(SessionRequest::new(["web.search"]).max_tool_calls(2))
        .await
        .unwrap();
    let args = json!({"query": "same", "max_results": 5});
    let first = agent
        .authorize_with_call_id(&s.session_id, "web.search", &args, "call-42")
        .await
        .unwrap();
    // Same arguments, different key order: the same canonical call.
    let reordered = json!({"max_results": 5, "query": "same"});
    let again = agent
        .authorize_with_call_id(&s.session_id, "web.search", &reordered, "call-42")
        .await
        .unwrap();
    assert_eq!(first.decision_id, again.decision_id);
    assert_eq!(first.outcome, Outcome::Allow);
    // Budget was spent once: one more call is allowed, then none.
    assert!(agent
        .authorize(&s.session_id, "web.search", &json!({"query": "b"}))
        .await
        .unwrap()
        .is_allowed());
    assert!(agent
        .authorize(&s.session_id, "web.search", &json!({"query": "c"}))
        .await
        .unwrap()
        .has_reason("BUDGET_EXHAUSTED"));
    // The same key with other arguments is refused, not decided.
    let err = agent
        .authorize_with_call_id(
            &s.session_id,
            "web.search",
            &json!({"query": "other"}),
            "call-42",
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    assert_eq!(err.reason(), Some("CALL_ID_REUSED"));
}
both!(retry_with_same_call_id_is_idempotent);

async fn a_policy_reload_takes_effect_on_the_next_call(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("research-agent", Some("alice")).await;
    let s = agent
        .open_session(SessionRequest::new(["web.search"]))
        .await
        .unwrap();
    let before = agent
        .authorize(&s.session_id, "web.search", &json!({"query": "x"}))
        .await
        .unwrap();
    assert!(before.is_allowed());

    // An admin adds a forbid and reloads (what `kill -HUP` does in `broker serve`).
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(broker_e2e::policies_dir()).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(
        dir.path().join("freeze.cedar"),
        "@id(\"web-search-frozen\")\n@reason(\"web search is paused\")\nforbid (principal, action == Action::\"web.search\", resource);\n",
    )
    .unwrap();
    let engine = broker::policy::PolicyEngine::load(dir.path()).unwrap();
    h.running.policies.send_replace(std::sync::Arc::new(engine));

    let after = agent
        .authorize(&s.session_id, "web.search", &json!({"query": "x"}))
        .await
        .unwrap();
    assert_eq!(after.outcome, Outcome::Deny);
    assert_eq!(
        after.reason("POLICY_DENY").unwrap().policy_id.as_deref(),
        Some("web-search-frozen")
    );
    assert_ne!(
        after.policy_version, before.policy_version,
        "decisions name the policy set that made them"
    );
}
both!(a_policy_reload_takes_effect_on_the_next_call);
