//! SQL shared by both backends (written once, `$N` placeholders) and the mapping between rows and
//! domain types.

use sqlx::any::AnyRow;
use sqlx::{Any, Executor, Row};

use super::{ApprovalFilter, Error, RecordedCall};
use crate::clock::Micros;
use crate::domain::approval::{Approval, ApprovalStatus, Requirement, Vote, VoteRecord};
use crate::domain::audit::{AuditEvent, EventBody, EventKind};
use crate::domain::decision::{Decision, Outcome, Reason};
use crate::domain::killswitch::{KillSwitch, Release, Scope};
use crate::domain::session::Session;
use crate::domain::tenancy::TenantScope;

/// The key of the Postgres advisory lock that serialises chain appends across broker processes.
pub(crate) const CHAIN_LOCK_KEY: i64 = 0x6272_6f6b_6572_0001;

pub(crate) const EVENT_COLUMNS: &str = "seq, event_id, time, kind, agent, user_id, session_id, decision_id, tool, \
     call_id, outcome, reasons, policy_version, arguments_digest, arguments_redacted, detail, prev_hash, hash";

pub(crate) const SESSION_COLUMNS: &str =
    "id, agent, user_id, tenant, tools, purpose, created_at, expires_at, max_tool_calls, tool_calls_used, closed_at, \
     collections, labels, ancestors";

pub(crate) fn db(err: sqlx::Error) -> Error {
    Error::from_sqlx(err)
}

pub(crate) fn column<'r, T>(row: &'r AnyRow, name: &str) -> Result<T, Error>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    row.try_get(name)
        .map_err(|e| Error::corrupt(format!("column `{name}`: {}", e.to_string().to_lowercase())))
}

pub(crate) fn json_text<T: serde::Serialize>(what: &str, value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::invalid(format!("cannot encode {what}: {e}")))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    what: &str,
    text: &str,
) -> Result<T, Error> {
    serde_json::from_str(text)
        .map_err(|e| Error::corrupt(format!("stored {what} is not valid: {e}")))
}

/// A remembered call as stored: its arguments digest and its decision's JSON text.
pub(crate) fn stored_call(arguments_digest: String, decision: &str) -> Result<RecordedCall, Error> {
    Ok(RecordedCall {
        arguments_digest,
        decision: from_json("decision", decision)?,
    })
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
    let row = sqlx::query(&session_by_id_sql())
        .bind(id)
        .fetch_optional(ex)
        .await
        .map_err(db)?;
    row.as_ref().map(session_from_row).transpose()
}

/// The session `$1`; the SQL text both drivers use (SQLite numbers `$N` as it does `?N`).
pub(crate) fn session_by_id_sql() -> String {
    format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1")
}

pub(crate) fn session_from_row(row: &AnyRow) -> Result<Session, Error> {
    session_row!(column, row).into_session()
}

/// A [`SessionRow`] read column by column with `$get(row, "name")?`: each driver reads its own rows (sqlx
/// here, rusqlite in `sqlite_writer`, tokio-postgres in `pg_writer`), with a generic `$get` of its own.
macro_rules! session_row {
    ($get:ident, $row:expr) => {
        $crate::store::sql::SessionRow {
            id: $get($row, "id")?,
            agent: $get($row, "agent")?,
            user_id: $get($row, "user_id")?,
            tenant: $get($row, "tenant")?,
            tools: $get($row, "tools")?,
            purpose: $get($row, "purpose")?,
            created_at: $get($row, "created_at")?,
            expires_at: $get($row, "expires_at")?,
            max_tool_calls: $get($row, "max_tool_calls")?,
            tool_calls_used: $get($row, "tool_calls_used")?,
            closed_at: $get($row, "closed_at")?,
            collections: $get($row, "collections")?,
            labels: $get($row, "labels")?,
            ancestors: $get($row, "ancestors")?,
        }
    };
}
pub(crate) use session_row;

/// A `sessions` row as stored, whichever driver read it (or Postgres's `row_to_json`).
#[derive(serde::Deserialize)]
pub(crate) struct SessionRow {
    pub(crate) id: String,
    pub(crate) agent: String,
    pub(crate) user_id: Option<String>,
    pub(crate) tenant: Option<String>,
    pub(crate) tools: String,
    pub(crate) purpose: String,
    pub(crate) created_at: i64,
    pub(crate) expires_at: i64,
    pub(crate) max_tool_calls: i64,
    pub(crate) tool_calls_used: i64,
    pub(crate) closed_at: Option<i64>,
    pub(crate) collections: String,
    pub(crate) labels: String,
    pub(crate) ancestors: String,
}

impl SessionRow {
    pub(crate) fn into_session(self) -> Result<Session, Error> {
        Ok(Session {
            id: self.id,
            agent: self.agent,
            user: self.user_id,
            tenant: self.tenant,
            tools: from_json("session tools", &self.tools)?,
            purpose: self.purpose,
            created_at: self.created_at,
            expires_at: self.expires_at,
            max_tool_calls: to_u32("max_tool_calls", self.max_tool_calls)?,
            tool_calls_used: to_u32("tool_calls_used", self.tool_calls_used)?,
            closed_at: self.closed_at,
            collections: from_json("session collections", &self.collections)?,
            labels: from_json("session labels", &self.labels)?,
            ancestors: from_json("session ancestors", &self.ancestors)?,
        })
    }
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
         max_tool_calls, tool_calls_used, closed_at, collections, labels, ancestors) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $13, $14, $15 \
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
    .bind(json_text("session collections", &session.collections)?)
    .bind(json_text("session labels", &session.labels)?)
    .bind(json_text("session ancestors", &session.ancestors)?)
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

/// Replaces the labels of session `session_id` (the writer passes the sorted union of the stored labels
/// and the new ones, read under the chain lock, so nothing is ever removed); true when the session exists.
pub(crate) async fn set_session_labels(
    conn: &mut sqlx::AnyConnection,
    session_id: &str,
    labels: &[String],
) -> Result<bool, Error> {
    let done = sqlx::query("UPDATE sessions SET labels = $2 WHERE id = $1")
        .bind(session_id)
        .bind(json_text("session labels", &labels)?)
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
    let row = sqlx::query(RECORDED_CALL_SQL)
        .bind(session_id)
        .bind(agent)
        .bind(call_id)
        .fetch_optional(ex)
        .await
        .map_err(db)?;
    row.as_ref().map(recorded_call_from_row).transpose()
}

/// The call remembered under (`$1` session, `$2` agent, `$3` call id); the SQL text both drivers use.
pub(crate) const RECORDED_CALL_SQL: &str = "SELECT arguments_digest, decision FROM tool_calls \
     WHERE session_id = $1 AND agent = $2 AND call_id = $3";

fn recorded_call_from_row(row: &AnyRow) -> Result<RecordedCall, Error> {
    let decision: String = column(row, "decision")?;
    stored_call(column(row, "arguments_digest")?, &decision)
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
    let earlier =
        decision.map(|decision| stored_call(column(&row, "arguments_digest")?, &decision));
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

// ---------------------------------------------------------------------------------------------------
// approvals

/// The Postgres channel every change to an approval is announced on (payload: the approval id).
pub(crate) const APPROVAL_CHANNEL: &str = "broker_approvals";

const APPROVAL_COLUMNS: &str =
    "id, request_seq, status, session_id, agent, user_id, tool, call_id, decision_id, arguments_redacted, \
     arguments_digest, requirements, reasons, requested_at, expires_at, consumed_at, consumed_by, updated_at, \
     tenant";

/// A value bound to a query built at run time.
pub(crate) enum Arg<'a> {
    Int(i64),
    Text(&'a str),
}

/// Which approvals [`fetch_approvals`] reads: a condition on the `approvals` row, the order, a limit.
struct ApprovalQuery<'a> {
    /// SQL condition with `$1`.. placeholders for `args`, in order.
    condition: String,
    args: Vec<Arg<'a>>,
    /// `ORDER BY` of the approvals (columns of `approvals`, unqualified).
    order: &'static str,
    limit: Option<u32>,
}

/// Reads approvals with their votes (in time order) in ONE statement, so an approval and its votes come
/// from the same snapshot: a status is never read beside votes that do not explain it.
async fn fetch_approvals<'e, E>(ex: E, q: ApprovalQuery<'_>) -> Result<Vec<Approval>, Error>
where
    E: Executor<'e, Database = Any>,
{
    Ok(fetch_sequenced_approvals(ex, q)
        .await?
        .into_iter()
        .map(|(_, approval)| approval)
        .collect())
}

/// As [`fetch_approvals`], each with its `request_seq`.
async fn fetch_sequenced_approvals<'e, E>(
    ex: E,
    q: ApprovalQuery<'_>,
) -> Result<Vec<(i64, Approval)>, Error>
where
    E: Executor<'e, Database = Any>,
{
    let ApprovalQuery {
        condition,
        mut args,
        order,
        limit,
    } = q;
    let limit = match limit {
        Some(limit) => {
            args.push(Arg::Int(i64::from(limit)));
            format!(" LIMIT ${}", args.len())
        }
        None => String::new(),
    };
    let sql = format!(
        "SELECT a.*, v.approver AS v_approver, v.person AS v_person, v.groups AS v_groups, \
         v.vote AS v_vote, v.comment AS v_comment, v.at AS v_at \
         FROM (SELECT {APPROVAL_COLUMNS} FROM approvals WHERE {condition} ORDER BY {order}{limit}) AS a \
         LEFT JOIN approval_votes v ON v.approval_id = a.id \
         ORDER BY {order}, v.at, v.approver"
    );
    let mut query = sqlx::query(&sql);
    for arg in args {
        query = match arg {
            Arg::Int(v) => query.bind(v),
            Arg::Text(v) => query.bind(v),
        };
    }
    let rows = query.fetch_all(ex).await.map_err(db)?;
    let mut approvals: Vec<(i64, Approval)> = Vec::new();
    for row in &rows {
        let id: String = column(row, "id")?;
        let current = match approvals.last_mut() {
            Some((_, last)) if last.id == id => last,
            _ => {
                approvals.push((column(row, "request_seq")?, approval_from_row(row)?));
                &mut approvals
                    .last_mut()
                    .ok_or_else(|| Error::internal("approval vanished while reading"))?
                    .1
            }
        };
        if let Some(vote) = vote_from_row(row)? {
            current.votes.push(vote);
        }
    }
    Ok(approvals)
}

fn approval_from_row(row: &AnyRow) -> Result<Approval, Error> {
    let status: String = column(row, "status")?;
    let status = ApprovalStatus::parse(&status)
        .ok_or_else(|| Error::corrupt(format!("unknown approval status `{status}`")))?;
    let requirements: String = column(row, "requirements")?;
    let requirements: Vec<Requirement> = from_json("approval requirements", &requirements)?;
    let reasons: String = column(row, "reasons")?;
    let reasons: Vec<Reason> = from_json("approval reasons", &reasons)?;
    Ok(Approval {
        id: column(row, "id")?,
        status,
        session_id: column(row, "session_id")?,
        tenant: column(row, "tenant")?,
        agent: column(row, "agent")?,
        user: column(row, "user_id")?,
        tool: column(row, "tool")?,
        call_id: column(row, "call_id")?,
        decision_id: column(row, "decision_id")?,
        arguments_redacted: column(row, "arguments_redacted")?,
        arguments_digest: column(row, "arguments_digest")?,
        requirements,
        reasons,
        requested_at: column(row, "requested_at")?,
        expires_at: column(row, "expires_at")?,
        votes: Vec::new(),
        consumed_at: column(row, "consumed_at")?,
        consumed_by: column(row, "consumed_by")?,
        updated_at: column(row, "updated_at")?,
    })
}

/// The vote on a joined row, `None` when the approval has none.
fn vote_from_row(row: &AnyRow) -> Result<Option<VoteRecord>, Error> {
    let Some(approver) = column::<Option<String>>(row, "v_approver")? else {
        return Ok(None);
    };
    let groups: String = column(row, "v_groups")?;
    let vote: String = column(row, "v_vote")?;
    // Votes stored before persons were recorded: the subject was the only identity.
    let person = column::<Option<String>>(row, "v_person")?.unwrap_or_else(|| approver.clone());
    Ok(Some(VoteRecord {
        approver,
        person,
        groups: from_json("vote groups", &groups)?,
        vote: Vote::parse(&vote).ok_or_else(|| Error::corrupt(format!("unknown vote `{vote}`")))?,
        comment: column(row, "v_comment")?,
        at: column(row, "v_at")?,
    }))
}

pub(crate) async fn fetch_approval<'e, E>(ex: E, id: &str) -> Result<Option<Approval>, Error>
where
    E: Executor<'e, Database = Any>,
{
    let found = fetch_approvals(
        ex,
        ApprovalQuery {
            condition: "id = $1".to_owned(),
            args: vec![Arg::Text(id)],
            order: "id",
            limit: None,
        },
    )
    .await?;
    Ok(found.into_iter().next())
}

/// The approvals named by `ids` (those that exist), ordered by expiry then id.
async fn fetch_approvals_by_ids(
    conn: &mut sqlx::AnyConnection,
    ids: &[String],
) -> Result<Vec<Approval>, Error> {
    let mut found = Vec::with_capacity(ids.len());
    // Bounded statements: well under either backend's limit on bound values.
    for chunk in ids.chunks(500) {
        let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        found.extend(
            fetch_approvals(
                &mut *conn,
                ApprovalQuery {
                    condition: format!("id IN ({})", placeholders.join(", ")),
                    args: chunk.iter().map(|id| Arg::Text(id)).collect(),
                    order: "expires_at, id",
                    limit: None,
                },
            )
            .await?,
        );
    }
    found.sort_by(|a, b| (a.expires_at, &a.id).cmp(&(b.expires_at, &b.id)));
    Ok(found)
}

/// Newest first, with their `request_seq` (the page token): those with `request_seq < before` when
/// `before > 0`, at most `limit`.
pub(crate) async fn list_approvals<'e, E>(
    ex: E,
    filter: &ApprovalFilter,
    before: i64,
    limit: u32,
) -> Result<Vec<(i64, Approval)>, Error>
where
    E: Executor<'e, Database = Any>,
{
    let mut args = Vec::new();
    let mut conditions = vec!["1 = 1".to_owned()];
    if before > 0 {
        args.push(Arg::Int(before));
        conditions.push(format!("request_seq < ${}", args.len()));
    }
    let narrowing = [
        ("status =", filter.status.map(|s| Arg::Text(s.as_str()))),
        ("tool =", filter.tool.as_deref().map(Arg::Text)),
        ("agent =", filter.agent.as_deref().map(Arg::Text)),
    ];
    for (condition, arg) in narrowing {
        if let Some(arg) = arg {
            args.push(arg);
            conditions.push(format!("{condition} ${}", args.len()));
        }
    }
    match &filter.tenant {
        TenantScope::All => {}
        TenantScope::Only(Some(tenant)) => {
            args.push(Arg::Text(tenant));
            conditions.push(format!("tenant = ${}", args.len()));
        }
        TenantScope::Only(None) => conditions.push("tenant IS NULL".to_owned()),
    }
    fetch_sequenced_approvals(
        ex,
        ApprovalQuery {
            condition: conditions.join(" AND "),
            args,
            order: "request_seq DESC",
            limit: Some(limit),
        },
    )
    .await
}

/// Approvals changed after `since`, oldest change first: at most `limit`, plus any changed at the same
/// moment as the last of those, so that `since = last.updated_at` on the next call misses nothing.
pub(crate) async fn fetch_approvals_changed_since<'e, E>(
    ex: E,
    since: Micros,
    limit: u32,
) -> Result<Vec<Approval>, Error>
where
    E: Executor<'e, Database = Any>,
{
    fetch_approvals(
        ex,
        ApprovalQuery {
            condition: "updated_at > $1 AND updated_at <= (SELECT MAX(updated_at) FROM \
                 (SELECT updated_at FROM approvals WHERE updated_at > $1 ORDER BY updated_at LIMIT $2) AS page)"
                .to_owned(),
            args: vec![Arg::Int(since), Arg::Int(i64::from(limit))],
            order: "updated_at, id",
            limit: None,
        },
    )
    .await
}

/// Every PENDING approval (including any past `expires_at` not yet swept), oldest request first.
pub(crate) async fn fetch_pending_approvals<'e, E>(ex: E) -> Result<Vec<Approval>, Error>
where
    E: Executor<'e, Database = Any>,
{
    fetch_approvals(
        ex,
        ApprovalQuery {
            condition: "status = 'PENDING'".to_owned(),
            args: Vec::new(),
            order: "requested_at, id",
            limit: None,
        },
    )
    .await
}

/// The kept canonical arguments: `None` when the approval is unknown or no longer keeps them.
pub(crate) async fn fetch_approval_arguments<'e, E>(
    ex: E,
    id: &str,
) -> Result<Option<String>, Error>
where
    E: Executor<'e, Database = Any>,
{
    let row = sqlx::query("SELECT arguments FROM approvals WHERE id = $1")
        .bind(id)
        .fetch_optional(ex)
        .await
        .map_err(db)?;
    Ok(row
        .map(|row| column::<Option<String>>(&row, "arguments"))
        .transpose()?
        .flatten())
}

pub(crate) async fn approval_id_taken(
    conn: &mut sqlx::AnyConnection,
    id: &str,
) -> Result<bool, Error> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM approvals WHERE id = $1")
        .bind(id)
        .fetch_one(conn)
        .await
        .map_err(db)?;
    Ok(column::<i64>(&row, "n")? > 0)
}

/// Inserts a new approval, as `approval` says but with `status` PENDING, no consumption, `arguments` kept
/// and `updated_at = now`. The caller has checked that the id is free.
pub(crate) async fn insert_approval(
    conn: &mut sqlx::AnyConnection,
    approval: &Approval,
    arguments: &str,
    request_seq: i64,
    now: Micros,
) -> Result<(), Error> {
    let sql = format!(
        "INSERT INTO approvals ({APPROVAL_COLUMNS}, arguments) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, NULL, NULL, $16, $17, $18)"
    );
    sqlx::query(&sql)
        .bind(&approval.id)
        .bind(request_seq)
        .bind(ApprovalStatus::Pending.as_str())
        .bind(&approval.session_id)
        .bind(&approval.agent)
        .bind(&approval.user)
        .bind(&approval.tool)
        .bind(&approval.call_id)
        .bind(&approval.decision_id)
        .bind(&approval.arguments_redacted)
        .bind(&approval.arguments_digest)
        .bind(json_text("approval requirements", &approval.requirements)?)
        .bind(json_text("approval reasons", &approval.reasons)?)
        .bind(approval.requested_at)
        .bind(approval.expires_at)
        .bind(now)
        .bind(&approval.tenant)
        .bind(arguments)
        .execute(conn)
        .await
        .map_err(db)?;
    Ok(())
}

/// What an ALLOW consuming an approval must match.
pub(crate) struct Consumption<'a> {
    pub(crate) approval_id: &'a str,
    pub(crate) arguments_digest: &'a str,
    pub(crate) session_id: &'a str,
    pub(crate) tool: &'a str,
    pub(crate) decision_id: &'a str,
    pub(crate) now: Micros,
}

/// Marks the approval used by `c.decision_id` if it is approved, unused, unexpired, and for exactly this
/// session, tool and arguments (one conditional UPDATE, so it is used at most once); returns it as
/// consumed, or `None` when it cannot be used (nothing changed).
pub(crate) async fn consume_approval(
    conn: &mut sqlx::AnyConnection,
    c: &Consumption<'_>,
) -> Result<Option<Approval>, Error> {
    let done = sqlx::query(
        "UPDATE approvals SET consumed_at = $6, consumed_by = $5, arguments = NULL, updated_at = $6 \
         WHERE id = $1 AND status = 'APPROVED' AND consumed_at IS NULL AND arguments_digest = $2 \
         AND session_id = $3 AND tool = $4 AND expires_at > $6",
    )
    .bind(c.approval_id)
    .bind(c.arguments_digest)
    .bind(c.session_id)
    .bind(c.tool)
    .bind(c.decision_id)
    .bind(c.now)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    if done.rows_affected() != 1 {
        return Ok(None);
    }
    fetch_approval(conn, c.approval_id).await
}

/// Gives back the tool call spent in this transaction by a decision that was then overruled.
pub(crate) async fn refund_budget(
    conn: &mut sqlx::AnyConnection,
    session_id: &str,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE sessions SET tool_calls_used = tool_calls_used - 1 WHERE id = $1 AND tool_calls_used > 0",
    )
    .bind(session_id)
    .execute(conn)
    .await
    .map_err(db)?;
    Ok(())
}

/// Stores `vote` unless this approver already voted on it; true when stored.
pub(crate) async fn insert_vote(
    conn: &mut sqlx::AnyConnection,
    approval_id: &str,
    vote: &VoteRecord,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "INSERT INTO approval_votes (approval_id, approver, groups, vote, comment, at, person) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (approval_id, approver) DO NOTHING",
    )
    .bind(approval_id)
    .bind(&vote.approver)
    .bind(json_text("vote groups", &vote.groups)?)
    .bind(vote.vote.as_str())
    .bind(&vote.comment)
    .bind(vote.at)
    .bind(&vote.person)
    .execute(conn)
    .await
    .map_err(db)?;
    Ok(done.rows_affected() == 1)
}

/// After a vote on a pending approval: its new status (which may be PENDING still) and `updated_at`;
/// the kept arguments go unless it is still usable. True when the approval was pending.
pub(crate) async fn settle_vote(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    status: ApprovalStatus,
    now: Micros,
) -> Result<bool, Error> {
    let arguments = match status {
        ApprovalStatus::Pending | ApprovalStatus::Approved => "arguments",
        ApprovalStatus::Denied | ApprovalStatus::Expired | ApprovalStatus::Cancelled => "NULL",
    };
    let sql = format!(
        "UPDATE approvals SET status = $2, updated_at = $3, arguments = {arguments} \
         WHERE id = $1 AND status = 'PENDING'"
    );
    let done = sqlx::query(&sql)
        .bind(id)
        .bind(status.as_str())
        .bind(now)
        .execute(conn)
        .await
        .map_err(db)?;
    Ok(done.rows_affected() == 1)
}

/// True when the expiry sweep has work: a pending approval with `expires_at <= now`, or an approved one
/// past it that still keeps its arguments.
pub(crate) async fn approvals_due<'e, E>(ex: E, now: Micros) -> Result<bool, Error>
where
    E: Executor<'e, Database = Any>,
{
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM (SELECT 1 AS one FROM approvals WHERE expires_at <= $1 \
         AND (status = 'PENDING' OR (status = 'APPROVED' AND arguments IS NOT NULL)) LIMIT 1) AS due",
    )
    .bind(now)
    .fetch_one(ex)
    .await
    .map_err(db)?;
    Ok(column::<i64>(&row, "n")? > 0)
}

/// Expires every pending approval with `expires_at <= now` (conditional, so each exactly once) and
/// returns them, in expiry order. Approved approvals past expiry can no longer be used either: their
/// kept arguments are dropped (their status stays APPROVED, so this is not a change watchers see).
pub(crate) async fn expire_approvals(
    conn: &mut sqlx::AnyConnection,
    now: Micros,
) -> Result<Vec<Approval>, Error> {
    let rows = sqlx::query(
        "UPDATE approvals SET status = 'EXPIRED', arguments = NULL, updated_at = $1 \
         WHERE status = 'PENDING' AND expires_at <= $1 RETURNING id",
    )
    .bind(now)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    sqlx::query(
        "UPDATE approvals SET arguments = NULL \
         WHERE status = 'APPROVED' AND arguments IS NOT NULL AND expires_at <= $1",
    )
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    let ids = rows
        .iter()
        .map(|row| column::<String>(row, "id"))
        .collect::<Result<Vec<_>, _>>()?;
    fetch_approvals_by_ids(conn, &ids).await
}

/// Cancels approval `id` if it is pending and unexpired at `now`; returns it as cancelled, or `None`
/// (nothing changed).
pub(crate) async fn cancel_approval(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    now: Micros,
) -> Result<Option<Approval>, Error> {
    let done = sqlx::query(
        "UPDATE approvals SET status = 'CANCELLED', arguments = NULL, updated_at = $2 \
         WHERE id = $1 AND status = 'PENDING' AND expires_at > $2",
    )
    .bind(id)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    if done.rows_affected() != 1 {
        return Ok(None);
    }
    fetch_approval(conn, id).await
}

/// Postgres: announces on `channel` that `id` changed. Inside the writer's transaction, so listeners
/// hear it only if (and when) the change commits.
pub(crate) async fn notify(
    conn: &mut sqlx::AnyConnection,
    channel: &str,
    id: &str,
) -> Result<(), Error> {
    // `pg_notify` returns `void`, a type the Any driver cannot decode: select a boolean instead.
    sqlx::query("SELECT pg_notify($1, $2) IS NULL AS notified")
        .bind(channel)
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

/// The last event's position; the SQL text both drivers use.
pub(crate) const CHAIN_HEAD_SQL: &str =
    "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1";

pub(crate) async fn chain_head<'e, E>(ex: E) -> Result<Option<ChainHead>, Error>
where
    E: Executor<'e, Database = Any>,
{
    let row = sqlx::query(CHAIN_HEAD_SQL)
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
