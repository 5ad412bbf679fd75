//! `broker.v1.KillSwitchService`.

use std::pin::Pin;

use broker_proto::v1 as pb;
use broker_proto::v1::kill_switch_service_server::KillSwitchService;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::{authn, convert, status};
use crate::clock::SharedClock;
use crate::domain::broker::{Broker, Engage};
use crate::domain::killswitch::Scope;
use crate::domain::switchboard::ChangeKind;

pub struct KillSwitchApi {
    pub broker: Broker,
    pub clock: SharedClock,
    /// Flips when the server stops: watch streams end then, or graceful shutdown would wait on them forever.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::KillSwitchEvent, Status>> + Send>>;

fn scope(raw: i32) -> Result<Scope, Status> {
    Ok(
        match pb::KillSwitchScope::try_from(raw)
            .map_err(|_| status::invalid("scope", "unknown scope"))?
        {
            pb::KillSwitchScope::Unspecified => {
                return Err(status::invalid(
                    "scope",
                    "required: GLOBAL, TENANT, AGENT, USER, TOOL or SESSION",
                ))
            }
            pb::KillSwitchScope::Global => Scope::Global,
            pb::KillSwitchScope::Tenant => Scope::Tenant,
            pb::KillSwitchScope::Agent => Scope::Agent,
            pb::KillSwitchScope::User => Scope::User,
            pb::KillSwitchScope::Tool => Scope::Tool,
            pb::KillSwitchScope::Session => Scope::Session,
        },
    )
}

#[tonic::async_trait]
impl KillSwitchService for KillSwitchApi {
    #[tracing::instrument(name = "EngageKillSwitch", skip_all, fields(admin, kill_switch))]
    async fn engage(
        &self,
        req: Request<pb::EngageKillSwitchRequest>,
    ) -> Result<Response<pb::KillSwitch>, Status> {
        let caller = authn::principal(&req)?;
        tracing::Span::current().record("admin", caller.subject.as_str());
        let r = req.into_inner();
        convert::no_nul("target", [&r.target])?;
        convert::no_nul("reason", [&r.reason])?;
        let expires_at = r
            .expires_at
            .as_ref()
            .map(|t| convert::micros("expires_at", t))
            .transpose()?;
        let engage = Engage {
            scope: scope(r.scope)?,
            target: r.target,
            reason: r.reason,
            expires_at,
        };
        let k = self
            .broker
            .engage(&caller, engage)
            .await
            .map_err(status::from_domain)?;
        tracing::Span::current().record("kill_switch", k.id.as_str());
        tracing::warn!(scope = k.scope.as_str(), target = %k.target, reason = %k.reason, "kill switch engaged");
        Ok(Response::new(convert::kill_switch(
            &k,
            self.clock.now_micros(),
        )))
    }

    #[tracing::instrument(name = "ReleaseKillSwitch", skip_all, fields(admin, kill_switch))]
    async fn release(
        &self,
        req: Request<pb::ReleaseKillSwitchRequest>,
    ) -> Result<Response<pb::KillSwitch>, Status> {
        let caller = authn::principal(&req)?;
        let r = req.into_inner();
        tracing::Span::current()
            .record("admin", caller.subject.as_str())
            .record("kill_switch", r.id.as_str());
        convert::no_nul("id", [&r.id])?;
        convert::no_nul("reason", [&r.reason])?;
        let k = self
            .broker
            .release(&caller, &r.id, &r.reason)
            .await
            .map_err(status::from_domain)?;
        tracing::warn!("kill switch released");
        Ok(Response::new(convert::kill_switch(
            &k,
            self.clock.now_micros(),
        )))
    }

    async fn list_kill_switches(
        &self,
        req: Request<pb::ListKillSwitchesRequest>,
    ) -> Result<Response<pb::ListKillSwitchesResponse>, Status> {
        let caller = authn::principal(&req)?;
        let list = self
            .broker
            .list_kill_switches(&caller, req.into_inner().include_released)
            .await
            .map_err(status::from_domain)?;
        let now = self.clock.now_micros();
        Ok(Response::new(pb::ListKillSwitchesResponse {
            switches: list.iter().map(|k| convert::kill_switch(k, now)).collect(),
        }))
    }

    type WatchKillSwitchesStream = EventStream;

    async fn watch_kill_switches(
        &self,
        req: Request<pb::WatchKillSwitchesRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let caller = authn::principal(&req)?;
        let (active, changes) = self
            .broker
            .watch_kill_switches(&caller)
            .map_err(status::from_domain)?;
        let clock = self.clock.clone();
        let now = clock.now_micros();
        let first: Vec<Result<pb::KillSwitchEvent, Status>> = active
            .iter()
            .map(|k| {
                Ok(pb::KillSwitchEvent {
                    change: "ACTIVE".into(),
                    switch: Some(convert::kill_switch(k, now)),
                })
            })
            .collect();
        let updates = BroadcastStream::new(changes).map(move |change| match change {
            Ok(c) => {
                let name = match c.kind {
                    ChangeKind::Engaged => "ENGAGED",
                    ChangeKind::Released => "RELEASED",
                    ChangeKind::Expired => "EXPIRED",
                };
                Ok(pb::KillSwitchEvent {
                    change: name.into(),
                    switch: Some(convert::kill_switch(&c.switch, clock.now_micros())),
                })
            }
            // A watcher that fell behind is told so and must watch again: it never silently misses a change.
            Err(BroadcastStreamRecvError::Lagged(n)) => Err(Status::data_loss(format!(
                "watcher fell {n} changes behind; watch again"
            ))),
        });
        let mut stopping = self.stopping.clone();
        let stopped = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        let stream =
            futures::StreamExt::take_until(tokio_stream::iter(first).chain(updates), stopped);
        Ok(Response::new(Box::pin(stream)))
    }
}
