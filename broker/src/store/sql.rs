//! SQL shared by both backends (written once, `$N` placeholders) and the mapping between rows and
//! domain types.

use sqlx::any::AnyRow;
use sqlx::{Any, Executor, Row};

use super::{Error, RecordedCall};
use crate::clock::Micros;
use crate::domain::audit::{AuditEvent, EventBody, EventKind};
use crate::domain::decision::{Decision, Outcome, Reason};
use crate::domain::killswitch::{KillSwitch, Release, Scope};
use crate::domain::session::{Session, ToolScope};

/// The key of the Postgres advisory lock that serialises chain appends across broker processes.
pub(crate) const CHAIN_LOCK_KEY: i64 = 0x6272_6f6b_6572_0001;

pub(crate) const EVENT_COLUMNS: &str = "seq, event_id, time, kind, agent, user_id, session_id, decision_id, tool, \
     call_id, outcome, reasons, policy_version, arguments_digest, arguments_redacted, detail, prev_hash, hash";

const SESSION_COLUMNS: &str =
    "id, agent, user_id, tenant, tools, purpose, created_at, expires_at, max_tool_calls, tool_calls_used, closed_at";

pub(crate) fn db(err: sqlx::Error) -> Error {
    Error::from_sqlx(err)
}

fn column<'r, T>(row: &'r AnyRow, name: &str) -> Result<T, Error>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    row.try_get(name)
        .map_err(|e| Error::corrupt(format!("column `{name}`: {}", e.to_string().to_lowercase())))
}

fn json_text<T: serde::Serialize>(what: &str, value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::invalid(format!("cannot encode {what}: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, Error> {
    serde_json::from_str(text)
        .map_err(|e| Error::corrupt(format!("stored {what} is not valid: {e}")))
}

fn to_u32(what: &str, v: i64) -> Result<u32, Error> {
    u32::try_from(v).map_err(|_| Error::corrupt(format!("stored {what} `{v}` is out of range")))
}

// ---------------------------------------------------------------------------------------------------
// sessions

pub(crate) async fn fetch_session<'e, E>(ex: E, id: &str) -> Result<Option<Session>, Error>
where
    E: Executor<'e, Database = Any>,
{
    let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1");
    let row = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(ex)
        .await
        .map_err(db)?;
    row.as_ref().map(session_from_row).transpose()
}

fn session_from_row(row: &AnyRow) -> Result<Session, Error> {
    let tools: String = column(row, "tools")?;
    let tools: Vec<ToolScope> = from_json("session tools", &tools)?;
    Ok(Session {
        id: column(row, "id")?,
        agent: column(row, "agent")?,
        user: column(row, "user_id")?,
        tenant: column(row, "tenant")?,
        tools,
        purpose: column(row, "purpose")?,
        created_at: column(row, "created_at")?,
        expires_at: column(row, "expires_at")?,
        max_tool_calls: to_u32("max_tool_calls", column(row, "max_tool_calls")?)?,
        tool_calls_used: to_u32("tool_calls_used", column(row, "tool_calls_used")?)?,
        closed_at: column(row, "closed_at")?,
    })
}

/// Inserts `session` unless its id exists or `event_id` is already in the chain; true when inserted.
pub(crate) async fn insert_session(
    conn: &mut sqlx::AnyConnection,
    session: &Session,
    event_id: &str,
) -> Result<bool, Error> {
    let tools: Vec<String> = session.tools.iter().map(ToString::to_string).collect();
    let tools = json_text("session tools", &tools)?;
    let done = sqlx::query(
        "INSERT INTO sessions (id, agent, user_id, tenant, tools, purpose, created_at, expires_at, \
         max_tool_calls, tool_calls_used, closed_at) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 \
         WHERE NOT EXISTS (SELECT 1 FROM audit_events WHERE event_id = $12) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&session.id)
    .bind(&session.agent)
    .bind(&session.user)
    .bind(&session.tenant)
    .bind(tools)
    .bind(&session.purpose)
    .bind(session.created_at)
    .bind(session.expires_at)
    .bind(i64::from(session.max_tool_calls))
    .bind(i64::from(session.tool_calls_used))
    .bind(session.closed_at)
    .bind(event_id)
    .execute(conn)
    .await
    .map_err(db)?;
    Ok(done.rows_affected() == 1)
}

/// Sets `closed_at` of an open session unless `event_id` is already in the chain; true when closed.
pub(crate) async fn close_session(
    conn: &mut sqlx::AnyConnection,
    session_id: &str,
    at: Micros,
    event_id: &str,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "UPDATE sessions SET closed_at = $2 WHERE id = $1 AND closed_at IS NULL \
         AND NOT EXISTS (SELECT 1 FROM audit_events WHERE event_id = $3)",
    )
    .bind(session_id)
    .bind(at)
    .bind(event_id)
    .execute(conn)
    .await
    .map_err(db)?;
    Ok(done.rows_affected() == 1)
}

/// Spends one tool call of an open, unexpired session with budget left; true when spent.
pub(crate) async fn spend_budget(
    conn: &mut sqlx::AnyConnection,
    session_id: &str,
    now: Micros,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "UPDATE sessions SET tool_calls_used = tool_calls_used + 1 \
         WHERE id = $1 AND closed_at IS NULL AND expires_at > $2 AND tool_calls_used < max_tool_calls",
    )
    .bind(session_id)
    .bind(now)
    .execute(conn)
    .await
    .map_err(db)?;
    Ok(done.rows_affected() == 1)
}

// ---------------------------------------------------------------------------------------------------
// tool calls

pub(crate) async fn fetch_recorded_call<'e, E>(
    ex: E,
    session_id: &str,
    agent: &str,
    call_id: &str,
) -> Result<Option<RecordedCall>, Error>
where
    E: Executor<'e, Database = Any>,
{
    let row = sqlx::query(
        "SELECT arguments_digest, decision FROM tool_calls WHERE session_id = $1 AND agent = $2 AND call_id = $3",
    )
    .bind(session_id)
    .bind(agent)
    .bind(call_id)
    .fetch_optional(ex)
    .await
    .map_err(db)?;
    row.as_ref().map(recorded_call_from_row).transpose()
}

fn recorded_call_from_row(row: &AnyRow) -> Result<RecordedCall, Error> {
    let decision: String = column(row, "decision")?;
    Ok(RecordedCall {
        arguments_digest: column(row, "arguments_digest")?,
        decision: from_json("decision", &decision)?,
    })
}

/// What the writer needs to know before applying a decision: an earlier call with the same key (when
/// looked for) and whether the event id is taken. One round trip.
pub(crate) struct Precheck {
    pub(crate) earlier: Option<Result<RecordedCall, Error>>,
    pub(crate) event_id_taken: bool,
}

pub(crate) async fn precheck_decision(
    conn: &mut sqlx::AnyConnection,
    session_id: &str,
    agent: &str,
    call_id: &str,
    event_id: &str,
) -> Result<Precheck, Error> {
    let row = sqlx::query(
        "SELECT t.arguments_digest AS arguments_digest, t.decision AS decision, \
         (SELECT COUNT(*) FROM audit_events WHERE event_id = $4) AS event_id_taken \
         FROM (SELECT 1 AS one) AS o \
         LEFT JOIN tool_calls t ON t.session_id = $1 AND t.agent = $2 AND t.call_id = $3",
    )
    .bind(session_id)
    .bind(agent)
    .bind(call_id)
    .bind(event_id)
    .fetch_one(conn)
    .await
    .map_err(db)?;
    let taken: i64 = column(&row, "event_id_taken")?;
    let decision: Option<String> = column(&row, "decision")?;
    let earlier = decision.map(|decision| -> Result<RecordedCall, Error> {
        Ok(RecordedCall {
            arguments_digest: column(&row, "arguments_digest")?,
            decision: from_json("decision", &decision)?,
        })
    });
    Ok(Precheck {
        earlier,
        event_id_taken: taken > 0,
    })
}

pub(crate) async fn insert_tool_call(
    conn: &mut sqlx::AnyConnection,
    agent: &str,
    arguments_digest: &str,
    decision: &Decision,
    now: Micros,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO tool_calls (session_id, agent, call_id, arguments_digest, decision, recorded_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (session_id, agent, call_id) DO NOTHING",
    )
    .bind(&decision.session_id)
    .bind(agent)
    .bind(&decision.call_id)
    .bind(arguments_digest)
    .bind(json_text("decision", decision)?)
    .bind(now)
    .execute(conn)
    .await
    .map_err(db)?;
    Ok(())
}

pub(crate) async fn event_id_taken(
    conn: &mut sqlx::AnyConnection,
    event_id: &str,
) -> Result<bool, Error> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM audit_events WHERE event_id = $1")
        .bind(event_id)
        .fetch_one(conn)
        .await
        .map_err(db)?;
    Ok(column::<i64>(&row, "n")? > 0)
}

// ---------------------------------------------------------------------------------------------------
// kill switches

/// The Postgres channel every change to the kill switches is announced on (payload: the switch id).
pub(crate) const KILL_SWITCH_CHANNEL: &str = "broker_kill_switches";

const SWITCH_COLUMNS: &str =
    "id, scope, target, reason, engaged_by, engaged_at, expires_at, released_at, \
     released_by, release_reason";

fn switch_from_row(row: &AnyRow) -> Result<KillSwitch, Error> {
    let scope: String = column(row, "scope")?;
    let scope = Scope::parse(&scope)
        .ok_or_else(|| Error::corrupt(format!("unknown kill switch scope `{scope}`")))?;
    let released_at: Option<Micros> = column(row, "released_at")?;
    let released_by: Option<String> = column(row, "released_by")?;
    let release_reason: Option<String> = column(row, "release_reason")?;
    let released =
        match (released_at, released_by, release_reason) {
            (None, None, None) => None,
            (Some(at), Some(by), Some(reason)) => Some(Release { by, at, reason }),
            _ => return Err(Error::corrupt(
                "kill switch release is partly stored (released_at, released_by, release_reason)",
            )),
        };
    Ok(KillSwitch {
        id: column(row, "id")?,
        scope,
        target: column(row, "target")?,
        reason: column(row, "reason")?,
        engaged_by: column(row, "engaged_by")?,
        engaged_at: column(row, "engaged_at")?,
        expires_at: column(row, "expires_at")?,
        released,
    })
}

fn switches_from_rows(rows: &[AnyRow]) -> Result<Vec<KillSwitch>, Error> {
    rows.iter().map(switch_from_row).collect()
}

pub(crate) async fn fetch_kill_switch<'e, E>(ex: E, id: &str) -> Result<Option<KillSwitch>, Error>
where
    E: Executor<'e, Database = Any>,
{
    let sql = format!("SELECT {SWITCH_COLUMNS} FROM kill_switches WHERE id = $1");
    let row = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(ex)
        .await
        .map_err(db)?;
    row.as_ref().map(switch_from_row).transpose()
}

/// Unreleased and unexpired at `now`, oldest first.
pub(crate) async fn fetch_active_kill_switches<'e, E>(
    ex: E,
    now: Micros,
) -> Result<Vec<KillSwitch>, Error>
where
    E: Executor<'e, Database = Any>,
{
    let sql = format!(
        "SELECT {SWITCH_COLUMNS} FROM kill_switches \
         WHERE released_at IS NULL AND (expires_at IS NULL OR expires_at > $1) \
         ORDER BY engaged_at, id"
    );
    let rows = sqlx::query(&sql)
        .bind(now)
        .fetch_all(ex)
        .await
        .map_err(db)?;
    switches_from_rows(&rows)
}

/// Newest first; only the unreleased ones unless `include_released`.
pub(crate) async fn fetch_kill_switches<'e, E>(
    ex: E,
    include_released: bool,
    limit: u32,
) -> Result<Vec<KillSwitch>, Error>
where
    E: Executor<'e, Database = Any>,
{
    let filter = if include_released {
        ""
    } else {
        "WHERE released_at IS NULL "
    };
    let sql = format!(
        "SELECT {SWITCH_COLUMNS} FROM kill_switches {filter}ORDER BY engaged_at DESC, id DESC LIMIT $1"
    );
    let rows = sqlx::query(&sql)
        .bind(i64::from(limit))
        .fetch_all(ex)
        .await
        .map_err(db)?;
    switches_from_rows(&rows)
}

/// True when some unreleased switch has `expires_at <= now`.
pub(crate) async fn kill_switch_due<'e, E>(ex: E, now: Micros) -> Result<bool, Error>
where
    E: Executor<'e, Database = Any>,
{
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM (SELECT 1 AS one FROM kill_switches \
         WHERE released_at IS NULL AND expires_at <= $1 LIMIT 1) AS due",
    )
    .bind(now)
    .fetch_one(ex)
    .await
    .map_err(db)?;
    Ok(column::<i64>(&row, "n")? > 0)
}

/// Inserts an unreleased `switch` unless its id exists or `event_id` is already in the chain; true when
/// inserted.
pub(crate) async fn insert_kill_switch(
    conn: &mut sqlx::AnyConnection,
    switch: &KillSwitch,
    event_id: &str,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "INSERT INTO kill_switches (id, scope, target, reason, engaged_by, engaged_at, expires_at) \
         SELECT $1, $2, $3, $4, $5, $6, $7 \
         WHERE NOT EXISTS (SELECT 1 FROM audit_events WHERE event_id = $8) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&switch.id)
    .bind(switch.scope.as_str())
    .bind(&switch.target)
    .bind(&switch.reason)
    .bind(&switch.engaged_by)
    .bind(switch.engaged_at)
    .bind(switch.expires_at)
    .bind(event_id)
    .execute(conn)
    .await
    .map_err(db)?;
    Ok(done.rows_affected() == 1)
}

/// Releases switch `id` if it is not released yet, and returns it as released; `None` when it is unknown or
/// already released (nothing changed).
pub(crate) async fn release_kill_switch(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    release: &Release,
) -> Result<Option<KillSwitch>, Error> {
    let sql = format!(
        "UPDATE kill_switches SET released_at = $2, released_by = $3, release_reason = $4 \
         WHERE id = $1 AND released_at IS NULL RETURNING {SWITCH_COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(id)
        .bind(release.at)
        .bind(&release.by)
        .bind(&release.reason)
        .fetch_optional(conn)
        .await
        .map_err(db)?;
    row.as_ref().map(switch_from_row).transpose()
}

/// Releases, as `release`, every unreleased switch with `expires_at <= now`, and returns them as released
/// in the order they expired.
pub(crate) async fn expire_kill_switches(
    conn: &mut sqlx::AnyConnection,
    now: Micros,
    release: &Release,
) -> Result<Vec<KillSwitch>, Error> {
    let sql = format!(
        "UPDATE kill_switches SET released_at = $2, released_by = $3, release_reason = $4 \
         WHERE released_at IS NULL AND expires_at <= $1 RETURNING {SWITCH_COLUMNS}"
    );
    let rows = sqlx::query(&sql)
        .bind(now)
        .bind(release.at)
        .bind(&release.by)
        .bind(&release.reason)
        .fetch_all(conn)
        .await
        .map_err(db)?;
    let mut expired = switches_from_rows(&rows)?;
    // RETURNING has no order of its own; the events are appended in this one.
    expired.sort_by(|a, b| (a.expires_at, &a.id).cmp(&(b.expires_at, &b.id)));
    Ok(expired)
}

/// Postgres: announces a change of switch `id` on [`KILL_SWITCH_CHANNEL`]. Inside the writer's transaction,
/// so listeners hear it only if (and when) the change commits.
pub(crate) async fn notify_kill_switch(
    conn: &mut sqlx::AnyConnection,
    id: &str,
) -> Result<(), Error> {
    // `pg_notify` returns `void`, a type the Any driver cannot decode: select a boolean instead.
    sqlx::query("SELECT pg_notify($1, $2) IS NULL AS notified")
        .bind(KILL_SWITCH_CHANNEL)
        .bind(id)
        .execute(conn)
        .await
        .map_err(db)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// audit events

/// The last event of the chain: where the next one links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: i64,
    pub hash: String,
}

pub(crate) async fn chain_head<'e, E>(ex: E) -> Result<Option<ChainHead>, Error>
where
    E: Executor<'e, Database = Any>,
{
    let row = sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
        .fetch_optional(ex)
        .await
        .map_err(db)?;
    row.map(|row| {
        Ok(ChainHead {
            seq: column(&row, "seq")?,
            hash: column(&row, "hash")?,
        })
    })
    .transpose()
}

pub(crate) async fn insert_event(
    conn: &mut sqlx::AnyConnection,
    event: &AuditEvent,
) -> Result<(), Error> {
    let b = &event.body;
    let sql = format!(
        "INSERT INTO audit_events ({EVENT_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
    );
    sqlx::query(&sql)
        .bind(event.seq)
        .bind(&b.event_id)
        .bind(b.time)
        .bind(b.kind.as_str())
        .bind(&b.agent)
        .bind(&b.user)
        .bind(&b.session_id)
        .bind(&b.decision_id)
        .bind(&b.tool)
        .bind(&b.call_id)
        .bind(b.outcome.map(Outcome::as_str))
        .bind(json_text("reasons", &b.reasons)?)
        .bind(&b.policy_version)
        .bind(&b.arguments_digest)
        .bind(&b.arguments_redacted)
        .bind(&b.detail)
        .bind(&event.prev_hash)
        .bind(&event.hash)
        .execute(conn)
        .await
        .map_err(db)?;
    Ok(())
}

/// Reads a stored event back into the domain type, exactly as it was hashed.
pub(crate) fn event_from_row(row: &AnyRow) -> Result<AuditEvent, Error> {
    let kind: String = column(row, "kind")?;
    let kind = EventKind::parse(&kind)
        .ok_or_else(|| Error::corrupt(format!("unknown event kind `{kind}`")))?;
    let outcome: Option<String> = column(row, "outcome")?;
    let outcome = outcome
        .map(|o| Outcome::parse(&o).ok_or_else(|| Error::corrupt(format!("unknown outcome `{o}`"))))
        .transpose()?;
    let reasons: String = column(row, "reasons")?;
    let reasons: Vec<Reason> = from_json("reasons", &reasons)?;
    Ok(AuditEvent {
        seq: column(row, "seq")?,
        prev_hash: column(row, "prev_hash")?,
        hash: column(row, "hash")?,
        body: EventBody {
            event_id: column(row, "event_id")?,
            time: column(row, "time")?,
            kind,
            agent: column(row, "agent")?,
            user: column(row, "user_id")?,
            session_id: column(row, "session_id")?,
            decision_id: column(row, "decision_id")?,
            tool: column(row, "tool")?,
            call_id: column(row, "call_id")?,
            outcome,
            reasons,
            policy_version: column(row, "policy_version")?,
            arguments_digest: column(row, "arguments_digest")?,
            arguments_redacted: column(row, "arguments_redacted")?,
            detail: column(row, "detail")?,
        },
    })
}

/// The position and id of a stored event, readable even when the rest of the row is not.
pub(crate) fn event_position(row: &AnyRow) -> Result<(i64, String), Error> {
    Ok((column(row, "seq")?, column(row, "event_id")?))
}
