//! Labels that follow the principal (agent, user, tenant), not only the session: what an agent read is in
//! its context, whichever of its sessions it calls from next. Inside the writer's transaction (under the
//! chain lock), so a label added on any broker and a session opened on any other are ordered:
//! - a label a session gains is copied at once to every open session of the same principal, and held
//!   for the principal ([`share`]);
//! - a new session starts with every label the principal held less than `carry_over` ago ([`carried`]).
//!
//! Either the new session exists when a label is shared (and gets it), or it opens after (and carries
//! it): no interleaving leaves an open session of the principal without a label one of its sessions has.

use std::time::Duration;

use sqlx::{Any, AnyConnection};

use super::sql::{self, column, db};
use super::{sorted_union, Error};
use crate::clock::{micros_of, Micros};
use crate::domain::session::Session;

/// The principal's key columns: `''` stands for no user or no tenant.
fn key(s: &Session) -> (&str, &str, &str) {
    (
        s.agent.as_str(),
        s.user.as_deref().unwrap_or_default(),
        s.tenant.as_deref().unwrap_or_default(),
    )
}

/// The labels `s`'s principal held less than `carry_over` before `now`.
pub(super) async fn carried(
    tx: &mut AnyConnection,
    s: &Session,
    carry_over: Duration,
    now: Micros,
) -> Result<Vec<String>, Error> {
    let (agent, user, tenant) = key(s);
    let rows = sqlx::query::<Any>(
        "SELECT label FROM principal_labels \
         WHERE agent = $1 AND user_id = $2 AND tenant = $3 AND held_until > $4",
    )
    .bind(agent)
    .bind(user)
    .bind(tenant)
    .bind(now.saturating_sub(micros_of(carry_over)))
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    let labels = rows
        .iter()
        .map(|r| column::<String>(r, "label"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(sorted_union(&labels, &[]))
}

/// Holds `added` for `s`'s principal (until `s` expires, or `now` if later), and gives every other open
/// session of the principal all of `s`'s labels. Returns the ids of the sessions that gained labels.
pub(super) async fn share(
    tx: &mut AnyConnection,
    s: &Session,
    added: &[String],
    now: Micros,
) -> Result<Vec<String>, Error> {
    let (agent, user, tenant) = key(s);
    let held_until = s.expires_at.max(now);
    for label in added {
        sqlx::query::<Any>(
            "INSERT INTO principal_labels (agent, user_id, tenant, label, held_until) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (agent, user_id, tenant, label) DO UPDATE SET held_until = excluded.held_until \
             WHERE excluded.held_until > principal_labels.held_until",
        )
        .bind(agent)
        .bind(user)
        .bind(tenant)
        .bind(label)
        .bind(held_until)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    }
    if s.labels.is_empty() {
        return Ok(Vec::new());
    }
    // `user_id IS NULL` rather than a null-safe comparison, so the index on (agent, user_id, expires_at)
    // serves both.
    let user_is = if s.user.is_some() {
        "user_id = $2"
    } else {
        "user_id IS NULL AND $2 = ''"
    };
    let rows = sqlx::query::<Any>(&format!(
        "SELECT id, labels FROM sessions \
         WHERE agent = $1 AND {user_is} AND closed_at IS NULL AND expires_at > $3 \
         AND COALESCE(tenant, '') = $4 AND id <> $5"
    ))
    .bind(agent)
    .bind(user)
    .bind(now)
    .bind(tenant)
    .bind(&s.id)
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    let mut gained = Vec::new();
    for row in rows {
        let id: String = column(&row, "id")?;
        let held: Vec<String> =
            sql::from_json("session labels", &column::<String>(&row, "labels")?)?;
        let union = sorted_union(&held, &s.labels);
        if union != held && sql::set_session_labels(tx, &id, &union).await? {
            gained.push(id);
        }
    }
    gained.sort();
    Ok(gained)
}
