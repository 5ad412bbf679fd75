//! The least-privilege grants for the broker's Postgres role (`broker db grants --role NAME`): the owner
//! of the tables (the role that runs `broker migrate`) runs them; the broker then connects as `NAME`.
//! The startup self-check ([`super::selfcheck`]) accepts exactly such a role.

/// What the broker does with each table: audit rows and votes are only ever added.
const TABLE_RIGHTS: &[(&str, &str)] = &[
    ("audit_events", "SELECT, INSERT"),
    ("tool_calls", "SELECT, INSERT"),
    ("approval_votes", "SELECT, INSERT"),
    ("sessions", "SELECT, INSERT, UPDATE"),
    ("kill_switches", "SELECT, INSERT, UPDATE"),
    ("approvals", "SELECT, INSERT, UPDATE"),
    ("principal_labels", "SELECT, INSERT, UPDATE"),
    // Read to see that the schema is current; only `broker migrate` (as the owner) writes it.
    ("_sqlx_migrations", "SELECT"),
];

/// The broker's own functions that it calls.
const FUNCTIONS: &[&str] = &["broker_require(boolean, text)"];

use super::Error;

/// Longest Postgres identifier.
const MAX_ROLE_BYTES: usize = 63;

/// The SQL giving `role` what the broker needs on the current database, and no more. Idempotent: it
/// first revokes everything `role` holds on the broker's tables. `role` must be a plain lowercase
/// identifier (what `CREATE ROLE name` without quotes makes), so that it means the same role everywhere.
pub fn postgres_grants(role: &str) -> Result<String, Error> {
    let plain = role.len() <= MAX_ROLE_BYTES
        && role
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && role
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !plain {
        return Err(Error::invalid(format!(
            "role `{role}`: use lowercase letters, digits and `_` only (at most {MAX_ROLE_BYTES}), not starting with a digit"
        )));
    }
    let r = format!("\"{role}\"");
    let mut sql = format!(
        "-- Least privilege for the broker's database role {r} (PostgreSQL).\n\
         -- Run as the owner of the broker's tables, in the broker's database, after `broker migrate`:\n\
         --   broker db grants --role {role} | psql \"postgres://OWNER@HOST/DATABASE\"\n\
         -- The role must exist and must not own the tables; create it first if needed, e.g.\n\
         --   CREATE ROLE {r} LOGIN PASSWORD '...';\n\
         -- Then serve with `database_url = \"postgres://{role}@HOST/DATABASE\"`.\n\
         BEGIN;\n\
         DO $$ BEGIN EXECUTE format('GRANT CONNECT ON DATABASE %I TO {r}', current_database()); END $$;\n\
         GRANT USAGE ON SCHEMA public TO {r};\n"
    );
    for (table, _) in TABLE_RIGHTS {
        sql.push_str(&format!("REVOKE ALL ON {table} FROM {r};\n"));
    }
    for (table, rights) in TABLE_RIGHTS {
        sql.push_str(&format!("GRANT {rights} ON {table} TO {r};\n"));
    }
    // The audit writer's check inside its write statement (`pg_writer`); explicit, for databases where
    // functions are not executable by PUBLIC.
    for function in FUNCTIONS {
        sql.push_str(&format!(
            "REVOKE ALL ON FUNCTION {function} FROM {r};\nGRANT EXECUTE ON FUNCTION {function} TO {r};\n"
        ));
    }
    sql.push_str("COMMIT;\n");
    Ok(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_rows_are_only_selected_and_inserted() {
        let sql = postgres_grants("broker_app").unwrap();
        assert!(sql.contains("GRANT SELECT, INSERT ON audit_events TO \"broker_app\";"));
        assert!(sql.contains("REVOKE ALL ON audit_events FROM \"broker_app\";"));
        let audit_grants: Vec<&str> = sql
            .lines()
            .filter(|l| l.starts_with("GRANT") && l.contains(" audit_events "))
            .collect();
        assert_eq!(audit_grants.len(), 1, "{audit_grants:?}");
        assert!(sql.contains(
            "GRANT EXECUTE ON FUNCTION broker_require(boolean, text) TO \"broker_app\";"
        ));
        // Anything but a plain identifier is refused rather than quoted.
        for bad in [
            "",
            "1app",
            "Broker",
            "a\"; DROP TABLE x; --",
            "app$",
            &"a".repeat(64),
        ] {
            let err = postgres_grants(bad).unwrap_err().to_string();
            assert!(err.contains("role `"), "{err}");
        }
        assert!(postgres_grants("broker_app_2").is_ok());
    }
}
