//! State made before a fault that must be exactly as it was after it: pending approvals, an approved
//! (not yet used) approval, and an engaged kill switch that still stops its agent.

use std::time::Duration;

use broker::auth::Role;
use broker_sdk::{
    ApprovalClient, EngageRequest, KillSwitchClient, KillSwitchScope, SessionRequest,
};
use serde_json::json;

use crate::world::World;

/// The agent the kill switch stops; the load never runs as it.
const STOPPED_AGENT: &str = "stopped-agent";
const FIXTURE_AGENT: &str = "fixture-agent";

pub struct Preserved {
    pending: Vec<String>,
    approved: String,
    switch_id: String,
    /// A session of [`STOPPED_AGENT`], opened before its switch was engaged.
    stopped_session: String,
}

impl Preserved {
    pub async fn create(world: &World) -> Preserved {
        let endpoint = world.broker.endpoint();
        let agent = world.agent(FIXTURE_AGENT, "bob");
        let session = agent
            .open_session(SessionRequest::new(["payments.refund"]))
            .await
            .unwrap()
            .session_id;
        let mut approvals = Vec::new();
        for i in 0..3 {
            let d = agent
                .authorize(
                    &session,
                    "payments.refund",
                    &json!({"payment_id": format!("pay_fixture_{i}"), "amount": 2500, "currency": "EUR"}),
                )
                .await
                .unwrap();
            assert!(d.is_pending(), "a refund above 1000 asks for approval: {d}");
            approvals.push(d.approval_id.unwrap());
        }
        let approver = ApprovalClient::connect(
            endpoint.clone(),
            world.token("approver-1", Role::Approver, None, &["payments-approvers"]),
        )
        .await
        .unwrap();
        let approved = approvals.pop().unwrap();
        approver
            .approve(&approved, "before the fault")
            .await
            .unwrap();

        let stopped = world.agent(STOPPED_AGENT, "carol");
        let stopped_session = stopped
            .open_session(SessionRequest::new(["web.search"]))
            .await
            .unwrap()
            .session_id;
        let admin =
            KillSwitchClient::connect(endpoint, world.token("ops-admin", Role::Admin, None, &[]))
                .await
                .unwrap();
        let switch = admin
            .engage(EngageRequest::new(
                KillSwitchScope::Agent,
                STOPPED_AGENT,
                "engaged before the fault",
            ))
            .await
            .unwrap();
        Preserved {
            pending: approvals,
            approved,
            switch_id: switch.id,
            stopped_session,
        }
    }

    /// Asserts, in the database and through the broker, that nothing made before the fault was lost.
    pub async fn check(&self, world: &World) {
        let mut db = world.superuser().await;
        for id in &self.pending {
            let status: String = sqlx::query_scalar("SELECT status FROM approvals WHERE id = $1")
                .bind(id)
                .fetch_one(&mut db)
                .await
                .unwrap();
            assert_eq!(status, "PENDING", "approval {id}");
        }
        let (status, consumed): (String, Option<i64>) =
            sqlx::query_as("SELECT status, consumed_at FROM approvals WHERE id = $1")
                .bind(&self.approved)
                .fetch_one(&mut db)
                .await
                .unwrap();
        assert_eq!(
            (status.as_str(), consumed),
            ("APPROVED", None),
            "approval {}",
            self.approved
        );
        let released: Option<i64> =
            sqlx::query_scalar("SELECT released_at FROM kill_switches WHERE id = $1")
                .bind(&self.switch_id)
                .fetch_one(&mut db)
                .await
                .unwrap();
        assert_eq!(
            released, None,
            "kill switch {} still engaged",
            self.switch_id
        );

        // And the broker still enforces it (after any restart: it read the switches before serving).
        let stopped = world.agent(STOPPED_AGENT, "carol");
        let start = std::time::Instant::now();
        loop {
            let answer = stopped
                .authorize(
                    &self.stopped_session,
                    "web.search",
                    &json!({"query": "after"}),
                )
                .await;
            match answer {
                Ok(d) if d.is_allowed() => panic!("the stopped agent was allowed: {d}"),
                Ok(d)
                    if d.reason("KILL_SWITCH").is_some_and(|r| {
                        r.kill_switch_id.as_deref() == Some(self.switch_id.as_str())
                    }) =>
                {
                    return
                }
                // A recovering broker fails closed (switches unknown, audit unavailable) for a moment.
                other => assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "the kill switch engaged before the fault does not stop its agent: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
