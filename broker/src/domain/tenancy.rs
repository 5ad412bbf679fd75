//! Tenants: a session, and every approval it asks for, belongs to the tenant of the token that opened
//! it (the configured tenant claim; no claim is a tenant of its own, "none", never "every tenant").
//!
//! - Calls, votes and waits act only within the caller's own tenant: another tenant's session or
//!   approval is refused (`TENANT_MISMATCH`: a recorded DENY for `AuthorizeToolCall`, PERMISSION_DENIED
//!   elsewhere), whatever roles the token holds.
//! - Listings (approvals, audit events) show the caller's tenant only. Role `admin`, which already
//!   operates the whole broker (kill switches on any scope), reads every tenant: an admin's token sees
//!   all approvals (with role `approver` as well) and all audit events; it still votes only in its own.

use crate::auth::{Principal, Role};

/// The stable reason for a call or vote on another tenant's session or approval.
pub const TENANT_MISMATCH: &str = "TENANT_MISMATCH";

/// Which tenants' records a listing returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TenantScope {
    /// Every tenant's (admins; and the broker's own tools, such as the `audit list` CLI on the database).
    #[default]
    All,
    /// One tenant's; `Only(None)` is the records without a tenant.
    Only(Option<String>),
}

impl TenantScope {
    /// What `caller` may list.
    pub fn of(caller: &Principal) -> TenantScope {
        if caller.has_role(Role::Admin) {
            TenantScope::All
        } else {
            TenantScope::Only(caller.tenant.clone())
        }
    }

    /// Whether a record of `tenant` is in this scope.
    pub fn sees(&self, tenant: Option<&str>) -> bool {
        match self {
            TenantScope::All => true,
            TenantScope::Only(t) => t.as_deref() == tenant,
        }
    }
}

/// Whether `caller` acts in `tenant` (exact: tenant ids are machine ids, and a near miss is refused).
pub fn same_tenant(caller: &Principal, tenant: Option<&str>) -> bool {
    caller.tenant.as_deref() == tenant
}

/// What the caller is told when it reaches into another tenant (naming neither tenant).
pub fn mismatch_message(what: &str, id: &str) -> String {
    format!("{what} `{id}` belongs to another tenant than the caller's token names")
}
