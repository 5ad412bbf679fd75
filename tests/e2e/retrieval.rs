//! RAG retrieval: only documents the agent's user may see, and sessions that remember what they read.

use std::time::Duration;

use broker::auth::Role;
use broker_e2e::{both, DbBackend, Harness};
use broker_sdk::{Client, Outcome, SessionRequest};
use serde_json::{json, Value};

fn doc(tenant: &str, collection: &str, classification: i64, labels: &[&str]) -> Value {
    json!({"tenant": tenant, "collection": collection, "classification": classification, "personal": false,
           "source": "wiki", "labels": labels})
}

/// alice (clearance 2) at acme, through an agent, in a session that may read `kb` and `tickets`.
async fn reader(h: &Harness) -> (Client, String) {
    reader_for(h, "alice").await
}

/// `user` at acme, through the same agent, in a new session that may read `kb` and `tickets`.
async fn reader_for(h: &Harness, user: &str) -> (Client, String) {
    let c = h
        .client_with_token(h.token_in_tenant("rag-agent", &[Role::Agent], Some(user), Some("acme")))
        .await;
    let s = c
        .open_session(
            SessionRequest::new(["web.search", "email.send"])
                .collections(["kb", "tickets"])
                .purpose("answer a question"),
        )
        .await
        .unwrap();
    (c, s.session_id)
}

async fn each_retrieval_policy_withholds_what_it_should(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (c, s) = reader(&h).await;
    let own_personal = json!({"tenant": "acme", "collection": "kb", "classification": 0, "personal": true, "owner": "alice", "source": "drive", "labels": []});
    let others_personal = json!({"tenant": "acme", "collection": "kb", "classification": 0, "personal": true, "owner": "bob", "source": "drive", "labels": []});
    let candidates = [
        ("ok-1", doc("acme", "kb", 1, &[]), None),
        (
            "other-tenant",
            doc("globex", "kb", 0, &[]),
            Some("same-tenant-only"),
        ),
        (
            "too-secret",
            doc("acme", "kb", 3, &[]),
            Some("classification-within-clearance"),
        ),
        ("own-personal", own_personal, None),
        (
            "someone-elses",
            others_personal,
            Some("personal-documents-owner-only"),
        ),
        (
            "other-collection",
            doc("acme", "hr", 0, &[]),
            Some("session-collections-only"),
        ),
        ("ok-2", doc("acme", "tickets", 2, &["confidential"]), None),
        (
            "unlabelled-confidential",
            doc("acme", "tickets", 2, &[]),
            Some("confidential-documents-carry-their-label"),
        ),
        (
            "unknown-level",
            doc("acme", "kb", -1, &[]),
            Some("classification-known-levels"),
        ),
    ];
    let docs: Vec<(&str, &Value)> = candidates.iter().map(|(id, v, _)| (*id, v)).collect();
    let r = c.authorize_retrieval(&s, &docs).await.unwrap();
    assert_eq!(
        r.allowed_ids,
        ["ok-1", "own-personal", "ok-2"],
        "in input order"
    );
    for ((id, _, why), d) in candidates.iter().zip(&r.documents) {
        assert_eq!(d.id, *id);
        match why {
            None => assert_eq!(d.outcome, Outcome::Allow, "{d:?}"),
            Some(policy) => {
                assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
                assert!(
                    d.reasons
                        .iter()
                        .any(|r| r.policy_id.as_deref() == Some(*policy)),
                    "{id}: {d:?}"
                );
            }
        }
    }
    // One audit event for the batch, naming allowed and denied ids (read by an auditor of the
    // session's tenant: auditors see their own tenant's trail).
    let auditor = h.auditor_in("acme").await;
    let events = auditor
        .list_events(broker_sdk::AuditFilter::new().session_id(&s))
        .await
        .unwrap()
        .events;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == "RETRIEVAL_DECIDED")
            .count(),
        1
    );
}
both!(each_retrieval_policy_withholds_what_it_should);

async fn malformed_documents_are_denied_alone_and_the_batch_is_capped(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (c, s) = reader(&h).await;
    let good = doc("acme", "kb", 0, &[]);
    let wrong_type = json!({"tenant": "acme", "collection": "kb", "classification": "top", "personal": false, "source": "x", "labels": []});
    let smuggled = json!({"tenant": {"__entity": {"type": "Agent", "id": "root"}}, "collection": "kb", "classification": 0, "personal": false, "source": "x", "labels": []});
    let missing = json!({"tenant": "acme"});
    let r = c
        .authorize_retrieval(
            &s,
            &[
                ("good", &good),
                ("wrong-type", &wrong_type),
                ("smuggled", &smuggled),
                ("missing", &missing),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r.allowed_ids, ["good"]);
    for d in &r.documents[1..] {
        assert!(
            d.outcome == Outcome::Deny && d.reasons.iter().any(|r| r.code == "INVALID_ARGUMENTS"),
            "{d:?}"
        );
    }
    assert!(
        r.documents[1].reasons[0].message.contains("classification"),
        "names the field: {:?}",
        r.documents[1]
    );

    let many: Vec<(String, Value)> = (0..1001).map(|i| (format!("d{i}"), good.clone())).collect();
    let refs: Vec<(&str, &Value)> = many.iter().map(|(id, v)| (id.as_str(), v)).collect();
    let err = c.authorize_retrieval(&s, &refs).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("documents") && err.message().contains("1000"),
        "{}",
        err.message()
    );
    // At the cap it is fine. A batch this large is decided on a blocking thread (small ones on the
    // worker): the same verdicts, each for its own document, in input order.
    let too_secret = doc("acme", "kb", 3, &[]);
    let mixed: Vec<(String, &Value)> = (0..1000)
        .map(|i| {
            let v = match i % 3 {
                0 => &good,
                1 => &too_secret,
                _ => &wrong_type,
            };
            (format!("d{i}"), v)
        })
        .collect();
    let refs: Vec<(&str, &Value)> = mixed.iter().map(|(id, v)| (id.as_str(), *v)).collect();
    let r = c.authorize_retrieval(&s, &refs).await.unwrap();
    assert_eq!(r.documents.len(), 1000);
    let expected_allowed: Vec<String> = (0..1000)
        .filter(|i| i % 3 == 0)
        .map(|i| format!("d{i}"))
        .collect();
    assert_eq!(r.allowed_ids, expected_allowed);
    for (i, d) in r.documents.iter().enumerate() {
        assert_eq!(d.id, format!("d{i}"));
        match i % 3 {
            0 => assert_eq!(d.outcome, Outcome::Allow, "{d:?}"),
            1 => assert!(
                d.outcome == Outcome::Deny
                    && d.reasons
                        .iter()
                        .any(|r| r.policy_id.as_deref() == Some("classification-within-clearance")),
                "{d:?}"
            ),
            _ => assert!(
                d.outcome == Outcome::Deny
                    && d.reasons.iter().any(|r| r.code == "INVALID_ARGUMENTS"),
                "{d:?}"
            ),
        }
    }
}
both!(malformed_documents_are_denied_alone_and_the_batch_is_capped);

async fn what_a_session_read_narrows_what_it_may_do(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (c, s) = reader(&h).await;
    let email = json!({"to": "bob@example.com", "subject": "summary", "body": "..."});
    assert!(
        c.authorize(&s, "email.send", &email)
            .await
            .unwrap()
            .is_allowed(),
        "clean session may email inside"
    );

    // Reading untrusted content: email now needs a person.
    let web_page = doc("acme", "kb", 0, &["untrusted"]);
    let r = c
        .authorize_retrieval(&s, &[("page", &web_page)])
        .await
        .unwrap();
    assert_eq!(r.session_labels, ["untrusted"]);
    let d = c.authorize(&s, "email.send", &email).await.unwrap();
    assert_eq!(d.outcome, Outcome::PendingApproval, "{d:?}");
    assert_eq!(
        d.reason("APPROVAL_REQUIRED").unwrap().policy_id.as_deref(),
        Some("untrusted-content-email-needs-approval")
    );

    // A denied document's labels do not count; an allowed confidential one stops outbound tools. (Another
    // user: labels follow the agent acting for a user from session to session.)
    let (c2, s2) = reader_for(&h, "carol").await;
    let secret_elsewhere = doc("globex", "kb", 0, &["confidential"]);
    assert!(c2
        .authorize_retrieval(&s2, &[("x", &secret_elsewhere)])
        .await
        .unwrap()
        .session_labels
        .is_empty());
    assert!(c2
        .authorize(&s2, "web.search", &json!({"query": "q"}))
        .await
        .unwrap()
        .is_allowed());
    let search = c2
        .authorize(&s2, "web.search", &json!({"query": "q2"}))
        .await
        .unwrap();
    let s_after = c2
        .report_tool_result(&s2, &search.decision_id, true, &["confidential"])
        .await
        .unwrap();
    assert_eq!(s_after.labels, ["confidential"]);
    let d = c2
        .authorize(&s2, "web.search", &json!({"query": "leak"}))
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(
        d.reason("POLICY_DENY").unwrap().policy_id.as_deref(),
        Some("confidential-data-stays-inside")
    );

    // Labels only accumulate, and a child session cannot shed them.
    let child = c2
        .open_session(SessionRequest::new(["web.search"]).parent(&s2))
        .await
        .unwrap();
    assert_eq!(child.labels, ["confidential"]);
    let d = c2
        .authorize(
            &child.session_id,
            "web.search",
            &json!({"query": "leak via child"}),
        )
        .await
        .unwrap();
    assert!(d.outcome == Outcome::Deny, "{d:?}");
    // Bad labels are refused, naming the field.
    let err = c2
        .report_tool_result(&s2, &search.decision_id, true, &["Not A Label"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}
both!(what_a_session_read_narrows_what_it_may_do);

async fn the_pre_filter_agrees_with_the_post_filter(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (c, s) = reader(&h).await;
    let f = c.retrieval_filter(&s).await.unwrap();
    let mut candidates = Vec::new();
    for (i, (tenant, collection, classification, personal, owner)) in [
        ("acme", "kb", 0, false, None),
        ("acme", "kb", 2, false, None),
        ("acme", "kb", 3, false, None),
        ("globex", "kb", 0, false, None),
        ("acme", "hr", 0, false, None),
        ("acme", "tickets", 1, true, Some("alice")),
        ("acme", "tickets", 1, true, Some("bob")),
        ("acme", "tickets", 1, true, None),
        ("acme", "kb", -1, false, None),
    ]
    .into_iter()
    .enumerate()
    {
        // Confidential and above carry their label, as the example policies require.
        let labels: &[&str] = if classification >= 2 {
            &["confidential"]
        } else {
            &[]
        };
        let mut v = json!({"tenant": tenant, "collection": collection, "classification": classification, "personal": personal, "source": "s", "labels": labels});
        if let Some(o) = owner {
            v["owner"] = json!(o);
        }
        candidates.push((format!("d{i}"), v));
    }
    let refs: Vec<(&str, &Value)> = candidates.iter().map(|(id, v)| (id.as_str(), v)).collect();
    let post = c.authorize_retrieval(&s, &refs).await.unwrap().allowed_ids;
    let pre: Vec<String> =
        broker_sdk::apply_filter(&f.filter, candidates.iter().map(|(id, v)| (id.clone(), v)));
    assert!(
        pre.iter().all(|id| post.contains(id)),
        "the filter never admits what the broker denies: {pre:?} vs {post:?}"
    );
    if f.complete {
        assert_eq!(
            pre, post,
            "a complete filter admits exactly what the broker allows ({})",
            f.filter
        );
    }
    assert_eq!(post, ["d0", "d1", "d5"]);
}
both!(the_pre_filter_agrees_with_the_post_filter);

/// A broker decides on the session as it last read it (`session.cache_ttl`), but never ALLOWs on that
/// alone: labels added and a close made through another broker hold on the very next call.
async fn changes_made_through_another_broker_hold_at_once(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let other = h.another_broker().await;
    let token = h.token_in_tenant("rag-agent", &[Role::Agent], Some("alice"), Some("acme"));
    let (here, s) = reader(&h).await;
    let there = Client::connect(format!("http://{}", other.addr), token)
        .await
        .unwrap();
    let search = |q: &str| json!({"query": q});
    let first = here
        .authorize(&s, "web.search", &search("q1"))
        .await
        .unwrap();
    assert!(first.is_allowed(), "{first:?}");

    // (Before the label below: a session of the same agent and user opened after it carries it.)
    let (_, s2) = reader(&h).await;
    assert!(here
        .authorize(&s2, "web.search", &search("q3"))
        .await
        .unwrap()
        .is_allowed());
    there.close_session(&s2).await.unwrap();
    let d = here
        .authorize(&s2, "web.search", &search("q4"))
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
    assert!(d.reason("SESSION_CLOSED").is_some(), "{d:?}");

    let labelled = there
        .report_tool_result(&s, &first.decision_id, true, &["confidential"])
        .await
        .unwrap();
    assert_eq!(labelled.labels, ["confidential"]);
    let d = here
        .authorize(&s, "web.search", &search("q2"))
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
    assert_eq!(
        d.reason("POLICY_DENY").unwrap().policy_id.as_deref(),
        Some("confidential-data-stays-inside"),
        "decided again on the labels the session has now"
    );

    assert!(h.auditor().await.verify_chain().await.unwrap().is_ok());
}
both!(changes_made_through_another_broker_hold_at_once);

async fn a_fresh_session_of_the_same_agent_and_user_keeps_the_taint(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let search = |c: &Client, s: &str| {
        let (c, s) = (c.clone(), s.to_owned());
        async move {
            c.authorize(&s, "web.search", &json!({"query": "what the wiki said"}))
                .await
                .unwrap()
        }
    };
    let leak_stopped = |d: &broker_sdk::Decision| {
        d.outcome == Outcome::Deny
            && d.reason("POLICY_DENY").and_then(|r| r.policy_id.as_deref())
                == Some("confidential-data-stays-inside")
    };
    let (c, reading) = reader(&h).await;
    // A second session opened before the read, and used once (so this broker has it cached).
    let (_, other) = reader(&h).await;
    assert!(search(&c, &other).await.is_allowed());

    let secret = doc("acme", "kb", 0, &["confidential"]);
    let r = c
        .authorize_retrieval(&reading, &[("plan", &secret)])
        .await
        .unwrap();
    assert_eq!(r.allowed_ids, ["plan"]);
    assert!(leak_stopped(&search(&c, &reading).await));
    // The read is in the agent's context, whichever of its sessions it calls from.
    let d = search(&c, &other).await;
    assert!(
        leak_stopped(&d),
        "an open sibling session shares the label: {d:?}"
    );
    // Closing both and opening afresh does not shed it either.
    c.close_session(&reading).await.unwrap();
    c.close_session(&other).await.unwrap();
    let (_, fresh) = reader(&h).await;
    let d = search(&c, &fresh).await;
    assert!(leak_stopped(&d), "a fresh session carries the label: {d:?}");
    // The same agent for another user starts clean.
    let (bob, bobs) = reader_for(&h, "bob").await;
    assert!(search(&bob, &bobs).await.is_allowed());

    // `session.taint_carry_over` (24h) after the last session holding it expired, it is gone.
    h.clock.advance(Duration::from_secs(3600 + 24 * 3600 + 1));
    let (_, much_later) = reader(&h).await;
    assert!(search(&c, &much_later).await.is_allowed());
}
both!(a_fresh_session_of_the_same_agent_and_user_keeps_the_taint);

/// The events of one kind in a session, oldest first.
async fn events_of(h: &Harness, session: &str, kind: &str) -> Vec<broker_sdk::AuditEvent> {
    // An auditor of the readers' tenant: auditors see their own tenant's trail.
    h.auditor_in("acme")
        .await
        .list_events(broker_sdk::AuditFilter::new().session_id(session))
        .await
        .unwrap()
        .events
        .into_iter()
        .filter(|e| e.kind == kind)
        .collect()
}

fn detail(e: &broker_sdk::AuditEvent) -> Value {
    serde_json::from_str(e.detail_json.as_deref().unwrap()).unwrap()
}

/// The broker cannot see what a query run with the pre-filter returns: answering the filter taints the
/// session with every label the policies test that an admitted document may carry, and is recorded.
async fn a_pre_filter_taints_the_session_and_is_recorded(backend: DbBackend) {
    use sha2::Digest as _;
    let h = Harness::start(backend).await;
    let (c, s) = reader(&h).await;
    let search = |q: &str| json!({"query": q});
    assert!(c
        .authorize(&s, "web.search", &search("before"))
        .await
        .unwrap()
        .is_allowed());

    let f = c.retrieval_filter(&s).await.unwrap();
    assert!(f.complete, "{f:?}");
    assert_eq!(f.admitted_labels, ["confidential", "untrusted"]);
    assert_eq!(f.session_labels, ["confidential", "untrusted"]);
    // The pipeline's query may well return a confidential document: the filter admits it.
    let secret = doc("acme", "kb", 0, &["confidential"]);
    assert_eq!(
        broker_sdk::apply_filter(&f.filter, [("secret", &secret)]),
        ["secret"]
    );
    // So the example taint policy holds without any report.
    let d = c
        .authorize(&s, "web.search", &search("leak"))
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
    assert_eq!(
        d.reason("POLICY_DENY").unwrap().policy_id.as_deref(),
        Some("confidential-data-stays-inside")
    );

    // The answer is in the trail: session, digest and text of the filter, complete, labels, policies.
    let filtered = events_of(&h, &s, "RETRIEVAL_FILTERED").await;
    assert_eq!(filtered.len(), 1, "{filtered:?}");
    let e = &filtered[0];
    assert_eq!(e.decision_id.as_deref(), Some(f.decision_id.as_str()));
    assert_eq!(e.policy_version, f.policy_version);
    assert_eq!(e.agent, "rag-agent");
    let text = f.filter.to_string();
    let dt = detail(e);
    assert_eq!(
        dt["filter_sha256"],
        json!(broker::hexstr::encode(&sha2::Sha256::digest(
            text.as_bytes()
        )))
    );
    assert_eq!(dt["filter"], json!(text));
    assert_eq!(dt["complete"], json!(true));
    assert_eq!(dt["labels_added"], json!(["confidential", "untrusted"]));
    // Recorded before the labels could be used: the filter's event precedes the denied call's.
    let all = h
        .auditor_in("acme")
        .await
        .list_events(broker_sdk::AuditFilter::new().session_id(&s))
        .await
        .unwrap()
        .events;
    let seq_of = |pred: &dyn Fn(&broker_sdk::AuditEvent) -> bool| {
        all.iter().find(|e| pred(e)).map(|e| e.seq).unwrap()
    };
    assert!(
        seq_of(&|e| e.kind == "RETRIEVAL_FILTERED")
            < seq_of(&|e| e.decision_id.as_deref() == Some(d.decision_id.as_str()))
    );
    assert!(h.auditor().await.verify_chain().await.unwrap().is_ok());
}
both!(a_pre_filter_taints_the_session_and_is_recorded);

/// A pipeline that must keep external tools usable excludes the labels it wants none of: the filter
/// then admits no document carrying them, and they do not taint the session.
async fn excluded_labels_keep_the_session_clean(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (c, s) = reader(&h).await;
    let f = c
        .retrieval_filter_excluding(&s, &["confidential"])
        .await
        .unwrap();
    assert!(f.complete, "{f:?}");
    assert_eq!(f.admitted_labels, ["untrusted"]);
    let candidates = [
        ("clean", doc("acme", "kb", 0, &[])),
        ("web", doc("acme", "kb", 0, &["untrusted"])),
        ("secret", doc("acme", "kb", 0, &["confidential"])),
        ("both", doc("acme", "kb", 0, &["untrusted", "confidential"])),
    ];
    assert_eq!(
        broker_sdk::apply_filter(&f.filter, candidates.iter().map(|(id, v)| (*id, v))),
        ["clean", "web"]
    );
    assert!(c
        .authorize(&s, "web.search", &json!({"query": "q"}))
        .await
        .unwrap()
        .is_allowed());

    // Another user: the first reader's label follows that agent and user into their new sessions.
    let (c2, s2) = reader_for(&h, "bob").await;
    let f = c2
        .retrieval_filter_excluding(&s2, &["untrusted", "confidential", "confidential"])
        .await
        .unwrap();
    assert!(
        f.admitted_labels.is_empty() && f.session_labels.is_empty(),
        "{f:?}"
    );
    let email = json!({"to": "bob@example.com", "subject": "s", "body": "b"});
    assert!(c2
        .authorize(&s2, "email.send", &email)
        .await
        .unwrap()
        .is_allowed());
    let e = &events_of(&h, &s2, "RETRIEVAL_FILTERED").await[0];
    assert_eq!(
        detail(e)["exclude_labels"],
        json!(["confidential", "untrusted"])
    );
    assert_eq!(detail(e)["labels_added"], json!([]));

    let err = c2
        .retrieval_filter_excluding(&s2, &["Not A Label"])
        .await
        .unwrap_err();
    match err {
        broker_sdk::Error::InvalidArgument { field, .. } => {
            assert_eq!(field.as_deref(), Some("exclude_labels"))
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}
both!(excluded_labels_keep_the_session_clean);

/// Every answer is recorded, including the `false` of a session that cannot retrieve; a session that
/// is not the caller's gets no answer (and no event in its trail).
async fn every_filter_answer_is_recorded(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (c, s) = reader(&h).await;
    c.close_session(&s).await.unwrap();
    let f = c.retrieval_filter(&s).await.unwrap();
    assert_eq!((f.filter.clone(), f.complete), (json!(false), true));
    assert!(f.admitted_labels.is_empty(), "{f:?}");
    let e = &events_of(&h, &s, "RETRIEVAL_FILTERED").await[0];
    assert_eq!(e.decision_id.as_deref(), Some(f.decision_id.as_str()));
    assert_eq!(e.reasons[0].code, "SESSION_CLOSED");
    assert_eq!(detail(e)["filter"], json!("false"));

    let (_, victim) = reader(&h).await;
    let intruder = h
        .client_with_token(h.token_in_tenant(
            "other-agent",
            &[Role::Agent],
            Some("alice"),
            Some("acme"),
        ))
        .await;
    let err = intruder.retrieval_filter(&victim).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let err = intruder
        .retrieval_filter("ses_00000000000000000000000000000000")
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(events_of(&h, &victim, "RETRIEVAL_FILTERED")
        .await
        .is_empty());
}
both!(every_filter_answer_is_recorded);

/// `Client::retrieve`: filter, query, keep what the filter admits, report the rest (decided again,
/// recorded, all their labels added), and hand back only what the broker allowed.
async fn retrieve_filters_queries_and_reports(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (c, s) = reader(&h).await;
    let store = [
        ("kb-1", doc("acme", "kb", 1, &["pii"]), "text 1"),
        (
            "secret",
            doc("acme", "kb", 0, &["confidential"]),
            "secret text",
        ),
        ("globex", doc("globex", "kb", 0, &[]), "not ours"),
        ("kb-2", doc("acme", "tickets", 0, &[]), "text 2"),
    ];
    let seen = std::sync::Mutex::new(None);
    let got = c
        .retrieve(&s, &["confidential"], |f| {
            *seen.lock().unwrap() = Some(f);
            // A store that ignores the filter: the SDK applies it anyway.
            let found = store
                .iter()
                .map(|(id, meta, text)| ((*id).to_owned(), meta.clone(), *text))
                .collect();
            async move { Ok::<_, std::convert::Infallible>(found) }
        })
        .await
        .unwrap();
    assert!(seen.lock().unwrap().as_ref().unwrap().complete);
    assert_eq!(
        got.documents,
        [("kb-1".to_owned(), "text 1"), ("kb-2".to_owned(), "text 2")]
    );
    let decision = got.decision.unwrap();
    assert_eq!(decision.allowed_ids, ["kb-1", "kb-2"]);
    // The filter's taint (`untrusted`: the policies test it and the filter may admit it) and the
    // report's exact labels (`pii`, which no policy tests); never `confidential`.
    assert_eq!(decision.session_labels, ["pii", "untrusted"]);
    assert!(c
        .authorize(&s, "web.search", &json!({"query": "q"}))
        .await
        .unwrap()
        .is_allowed());
    let reported = events_of(&h, &s, "RETRIEVAL_DECIDED").await;
    assert_eq!(reported.len(), 1);
    assert_eq!(detail(&reported[0])["allowed"], json!(["kb-1", "kb-2"]));
    assert_eq!(events_of(&h, &s, "RETRIEVAL_FILTERED").await.len(), 1);
}
both!(retrieve_filters_queries_and_reports);
