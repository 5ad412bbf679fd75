//! Session lineage and labels that follow the principal (`store::taint`), on SQLite and on Postgres.

use std::time::Duration;

use super::testing::TestDb;
use super::{EventFilter, Page, Store};
use crate::clock::Micros;
use crate::domain::audit::{EventBody, EventKind};
use crate::domain::session::{Session, ToolScope};
use crate::ids;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

macro_rules! both {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> super::TestResult {
                    super::$name(&TestDb::new(crate::store::Backend::Sqlite).await?).await
                }
            )+
            use super::TestDb;
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> super::TestResult {
                    super::$name(&TestDb::new(crate::store::Backend::Postgres).await?).await
                }
            )+
            use super::TestDb;
        }
    };
}
both!(
    ancestors_round_trip,
    a_label_reaches_every_open_session_of_the_principal_and_no_other,
    a_new_session_carries_the_principals_labels_for_the_carry_over,
    no_interleaving_of_opening_and_labelling_loses_a_label,
    the_migration_carries_what_sessions_read_before_it,
);

const T0: Micros = 1_700_000_000_000_000;
const HOUR: Micros = 3_600_000_000;
const DAY: Duration = Duration::from_secs(24 * 3600);

fn session(agent: &str, user: Option<&str>, tenant: Option<&str>, at: Micros) -> Session {
    Session {
        id: ids::session_id(),
        agent: agent.into(),
        user: user.map(Into::into),
        tenant: tenant.map(Into::into),
        tools: vec![ToolScope::All],
        purpose: String::new(),
        created_at: at,
        expires_at: at + HOUR,
        max_tool_calls: 10,
        tool_calls_used: 0,
        closed_at: None,
        collections: vec![],
        labels: vec![],
        ancestors: vec![],
    }
}

fn alice(at: Micros) -> Session {
    session("agent-1", Some("alice"), Some("acme"), at)
}

async fn open(store: &Store, s: &Session, carry_over: Duration) -> Result<Session, super::Error> {
    let event = EventBody::for_session(EventKind::SessionOpened, s, s.created_at);
    Ok(store.open_session_carrying(s, event, carry_over).await?.1)
}

async fn label(store: &Store, s: &Session, labels: &[&str], at: Micros) -> TestResult {
    let event = EventBody {
        detail: Some(r#"{"status":"ok"}"#.into()),
        tool: Some("web.search".into()),
        ..EventBody::in_session(
            EventKind::ToolResultReported,
            &s.agent,
            s.user.clone(),
            &s.id,
            at,
        )
    };
    let labels: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
    store
        .add_session_labels(&s.id, &labels, event, at)
        .await?
        .ok_or("no session")?;
    Ok(())
}

async fn labels_of(
    store: &Store,
    s: &Session,
) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
    Ok(store.session(&s.id).await?.ok_or("no session")?.labels)
}

/// The `detail` of the last event of `kind` about session `s`, as JSON.
async fn detail(
    store: &Store,
    s: &Session,
    kind: EventKind,
) -> Result<serde_json::Value, Box<dyn std::error::Error + Send + Sync>> {
    let filter = EventFilter {
        session_id: Some(s.id.clone()),
        ..EventFilter::default()
    };
    let (events, _) = store.list_events(&filter, Page::default()).await?;
    let text = events
        .iter()
        .rev()
        .find(|e| e.body.kind == kind)
        .and_then(|e| e.body.detail.clone())
        .ok_or("no detail")?;
    Ok(serde_json::from_str(&text)?)
}

async fn ancestors_round_trip(db: &TestDb) -> TestResult {
    let store = db.store();
    let root = open(store, &alice(T0), Duration::ZERO).await?;
    let child = Session {
        ancestors: vec![root.id.clone()],
        ..alice(T0 + 1)
    };
    let grandchild = Session {
        ancestors: vec![child.id.clone(), root.id.clone()],
        ..alice(T0 + 2)
    };
    for s in [&child, &grandchild] {
        assert_eq!(&open(store, s, Duration::ZERO).await?, s);
        assert_eq!(store.session(&s.id).await?.as_ref(), Some(s));
    }
    assert_eq!(
        detail(store, &grandchild, EventKind::SessionOpened).await?["ancestors"],
        serde_json::json!([child.id, root.id]),
        "the trail names the lineage"
    );
    let bad = Session {
        ancestors: vec!["ses\0x".into()],
        ..alice(T0 + 3)
    };
    assert!(open(store, &bad, Duration::ZERO).await.is_err());
    Ok(())
}

async fn a_label_reaches_every_open_session_of_the_principal_and_no_other(
    db: &TestDb,
) -> TestResult {
    let store = db.store();
    let reader = open(store, &alice(T0), Duration::ZERO).await?;
    let sibling = open(store, &alice(T0 + 1), Duration::ZERO).await?;
    let closed = open(store, &alice(T0 + 2), Duration::ZERO).await?;
    let closing = EventBody::for_session(EventKind::SessionClosed, &closed, T0 + 3);
    store.close_session(&closed.id, T0 + 3, closing).await?;
    let others = [
        session("agent-1", Some("bob"), Some("acme"), T0),
        session("agent-1", None, Some("acme"), T0),
        session("agent-1", Some("alice"), Some("globex"), T0),
        session("agent-1", Some("alice"), None, T0),
        session("agent-2", Some("alice"), Some("acme"), T0),
    ];
    for s in &others {
        open(store, s, Duration::ZERO).await?;
    }

    label(store, &reader, &["confidential"], T0 + 10).await?;
    assert_eq!(labels_of(store, &reader).await?, ["confidential"]);
    assert_eq!(
        labels_of(store, &sibling).await?,
        ["confidential"],
        "open sibling"
    );
    assert!(
        labels_of(store, &closed).await?.is_empty(),
        "closed before the read"
    );
    for s in &others {
        assert!(
            labels_of(store, s).await?.is_empty(),
            "{:?} {:?} {:?}",
            s.agent,
            s.user,
            s.tenant
        );
    }
    assert_eq!(
        detail(store, &reader, EventKind::ToolResultReported).await?["labels_shared_with"],
        serde_json::json!([sibling.id]),
        "the trail says where the label went"
    );
    assert_eq!(
        detail(store, &reader, EventKind::ToolResultReported).await?["status"],
        "ok",
        "the caller's detail is kept"
    );

    // No user, no tenant: a principal too.
    let (a, b) = (
        session("agent-3", None, None, T0),
        session("agent-3", None, None, T0 + 1),
    );
    open(store, &a, Duration::ZERO).await?;
    open(store, &b, Duration::ZERO).await?;
    label(store, &a, &["untrusted"], T0 + 10).await?;
    assert_eq!(labels_of(store, &b).await?, ["untrusted"]);
    assert!(labels_of(store, &others[1]).await?.is_empty());
    Ok(())
}

async fn a_new_session_carries_the_principals_labels_for_the_carry_over(db: &TestDb) -> TestResult {
    let store = db.store();
    let reader = open(store, &alice(T0), DAY).await?;
    label(store, &reader, &["confidential"], T0 + 10).await?;
    let closing = EventBody::for_session(EventKind::SessionClosed, &reader, T0 + 20);
    store.close_session(&reader.id, T0 + 20, closing).await?;

    // Closed early, it still carries until a day after it would have expired.
    let next = open(store, &alice(T0 + 30), DAY).await?;
    assert_eq!(next.labels, ["confidential"]);
    assert_eq!(labels_of(store, &next).await?, ["confidential"]);
    let d = detail(store, &next, EventKind::SessionOpened).await?;
    assert_eq!(d["labels_carried"], serde_json::json!(["confidential"]));
    let other_user = open(
        store,
        &session("agent-1", Some("bob"), Some("acme"), T0 + 30),
        DAY,
    )
    .await?;
    assert!(other_user.labels.is_empty());

    // `next` holds it too, so the carry runs from `next`'s expiry now.
    let late = T0 + 30 + HOUR + 24 * HOUR;
    assert_eq!(
        open(store, &alice(late - 1), DAY).await?.labels,
        ["confidential"]
    );
    // ... and that one (opened at `late - 1`) holds it again until its own expiry.
    let much_later = late - 1 + HOUR + 24 * HOUR;
    assert!(open(store, &alice(much_later), DAY)
        .await?
        .labels
        .is_empty());

    // A report on a session already ended holds the label from the report on.
    let ended = open(store, &session("agent-9", Some("u"), None, T0), DAY).await?;
    let report = T0 + 10 * HOUR;
    label(store, &ended, &["untrusted"], report).await?;
    // With no carry-over, only what a session still open holds carries.
    let s = open(
        store,
        &session("agent-9", Some("u"), None, report + 1),
        Duration::ZERO,
    )
    .await?;
    assert!(s.labels.is_empty());
    let s = open(
        store,
        &session("agent-9", Some("u"), None, report + 24 * HOUR - 1),
        DAY,
    )
    .await?;
    assert_eq!(s.labels, ["untrusted"]);
    Ok(())
}

/// Whatever order a label added through one broker and a session opened through another commit in, the
/// new session ends up with the label.
async fn no_interleaving_of_opening_and_labelling_loses_a_label(db: &TestDb) -> TestResult {
    let a = db.store();
    let b = db.connect_another(TestDb::test_config()).await?;
    for round in 0..20 {
        let user = format!("user-{round}");
        let at = T0 + round;
        let reader = open(
            a,
            &session("agent-1", Some(&user), None, at),
            Duration::ZERO,
        )
        .await?;
        let newcomer = session("agent-1", Some(&user), None, at + 1);
        let (labelled, opened) = tokio::join!(
            label(a, &reader, &["confidential"], at + 1),
            open(&b, &newcomer, Duration::ZERO)
        );
        labelled?;
        opened?;
        assert_eq!(
            labels_of(a, &newcomer).await?,
            ["confidential"],
            "round {round}"
        );
    }
    Ok(())
}

/// The migration's last statement, as applied: it fills `principal_labels` from the sessions stored
/// before it (here, rows written as an older broker would, then the statement run again).
async fn the_migration_carries_what_sessions_read_before_it(db: &TestDb) -> TestResult {
    let migration = match db.backend() {
        super::Backend::Sqlite => include_str!(
            "../../../migrations/sqlite/20250714120000_session_lineage_and_principal_labels.sql"
        ),
        super::Backend::Postgres => include_str!(
            "../../../migrations/postgres/20250714120000_session_lineage_and_principal_labels.sql"
        ),
    };
    let (_, backfill) = migration
        .split_once("-- What sessions opened before this migration read is carried too.")
        .ok_or("no backfill in the migration")?;
    db.execute(&format!(
        "INSERT INTO sessions (id, agent, user_id, tenant, tools, purpose, created_at, expires_at, \
         max_tool_calls, labels) VALUES \
         ('ses_old1', 'agent-1', 'alice', 'acme', '[\"*\"]', '', {T0}, {}, 3, '[\"confidential\",\"pii\"]'), \
         ('ses_old2', 'agent-1', 'alice', 'acme', '[\"*\"]', '', {T0}, {}, 3, '[\"pii\"]'), \
         ('ses_old3', 'agent-2', NULL, NULL, '[\"*\"]', '', {T0}, {}, 3, '[\"untrusted\"]'), \
         ('ses_old4', 'agent-3', 'alice', 'acme', '[\"*\"]', '', {T0}, {}, 3, '[]')",
        T0 + HOUR,
        T0 + 2 * HOUR,
        T0 + HOUR,
        T0 + HOUR,
    ))
    .await?;
    db.execute(backfill).await?;
    let store = db.store();
    let at = T0 + HOUR + 24 * HOUR - 1;
    assert_eq!(
        open(store, &alice(at), DAY).await?.labels,
        ["confidential", "pii"]
    );
    let anonymous = open(store, &session("agent-2", None, None, T0 + 10), DAY).await?;
    assert_eq!(anonymous.labels, ["untrusted"]);
    assert!(open(
        store,
        &session("agent-3", Some("alice"), Some("acme"), T0),
        DAY
    )
    .await?
    .labels
    .is_empty());
    Ok(())
}
