//! The faults suite (issue 7, "Faults"): a Postgres cluster of its own and real `broker serve` processes,
//! broken on purpose under load, then reconciled against the database.
//!
//! The load records every answer a client saw; afterwards every ALLOW must have a committed audit event,
//! every approval announced must be stored, the state made before the fault (approvals, a kill switch) must
//! be intact, `broker audit verify` must pass, and no transaction may be left open. Each scenario prints
//! its figures. Assertions are about guarantees; the only times asserted are the bounds, with
//! generous margins.
//!
//! FAST by default (CI); `FAULTS_LONG=1` for the long run:
//! `FAULTS_LONG=1 cargo nextest run -p broker --test faults --profile faults-long`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test suite: failing loudly is the point"
)]

mod broker_process;
mod cancellation;
mod database_faults;
mod failpoints;
mod figures;
mod load;
mod mode;
mod overload;
mod pg_tls;
mod postgres;
mod preserved;
mod reconcile;
mod sigkill;
mod world;
mod writer_backlog;
