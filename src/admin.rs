//! The session administration edge (gRPC, `portcullis.admin.v1.Sessions`): list sessions
//! and end them by session or by user, on every replica at once through the shared store.
//! Served on its own listener (`admin.address`), never through Envoy; every call carries
//! `authorization: Bearer TOKEN`, compared in constant time with `admin.token_file`.
//! Failures become a `Status` in one place, [`AdminError`]'s conversion.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::app::Live;
use crate::core::Session;
use crate::crypto::constant_time_eq;
use crate::secret::SecretString;
use crate::session::{Selector, StoreError};

/// The generated API (`proto/portcullis/admin/v1/sessions.proto`).
pub mod proto {
    tonic::include_proto!("portcullis.admin.v1");
}

use proto::revoke_request::Target;
use proto::sessions_server::{Sessions, SessionsServer};
use proto::{ListRequest, ListResponse, RevokeRequest, RevokeResponse, SessionInfo};

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
enum AdminError {
    #[error("name a session or a user to revoke")]
    NoTarget,
    #[error("an empty session id or user")]
    Empty,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::NoTarget | AdminError::Empty => Status::invalid_argument(e.to_string()),
            AdminError::Store(e) => {
                tracing::error!(error = %e, "admin API: session store unavailable");
                Status::unavailable("the session store is unavailable")
            }
        }
    }
}

/// The service, over the app's store.
pub struct AdminService {
    live: Arc<Live>,
}

/// The service with its bearer-token check, ready for a tonic server.
/// The token is the current config's, so that a reload rotates it.
pub fn service(
    live: Arc<Live>,
) -> tonic::service::interceptor::InterceptedService<
    SessionsServer<AdminService>,
    impl tonic::service::Interceptor + Clone,
> {
    let tokens = live.clone();
    let check = move |req: Request<()>| -> Result<Request<()>, Status> {
        let sent = req
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let expected = tokens
            .app()
            .admin_token
            .as_ref()
            .map(|t: &SecretString| format!("Bearer {}", t.expose()));
        if expected.is_some_and(|e| constant_time_eq(sent, e.as_bytes())) {
            Ok(req)
        } else {
            tracing::warn!("admin API: refused a call without the right token");
            Err(Status::unauthenticated("missing or wrong admin token"))
        }
    };
    SessionsServer::with_interceptor(AdminService { live }, check)
}

/// What an operator may see of a session.
pub fn to_info(s: &Session) -> SessionInfo {
    let grant = s.idp.as_deref();
    SessionInfo {
        id: s.public_id(),
        subject: s.user.subject.clone(),
        email: s.user.email.clone().unwrap_or_default(),
        name: s.user.name.clone().unwrap_or_default(),
        groups: s.user.groups.clone(),
        created_at: s.created_at,
        expires_at: s.expires_at,
        refreshes: grant.is_some_and(|g| g.refresh_token.is_some()),
        access_expires_at: grant.map_or(0, |g| g.access_expires_at),
        idp_session: s.idp_sid().unwrap_or_default().to_string(),
    }
}

#[tonic::async_trait]
impl Sessions for AdminService {
    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let ListRequest { user } = request.into_inner();
        let user = Some(user.trim()).filter(|u| !u.is_empty());
        let app = self.live.app();
        let mut sessions = app
            .store
            .list(user, app.now())
            .await
            .map_err(AdminError::from)?;
        sessions.sort_by_key(|s| s.created_at);
        Ok(Response::new(ListResponse {
            sessions: sessions.iter().map(|s| to_info(s)).collect(),
        }))
    }

    async fn revoke(
        &self,
        request: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        let target = request.into_inner().target.ok_or(AdminError::NoTarget)?;
        let selector = match &target {
            Target::Session(id) if !id.trim().is_empty() => Selector::PublicId(id.trim()),
            Target::User(user) if !user.trim().is_empty() => Selector::User(user.trim()),
            _ => return Err(AdminError::Empty.into()),
        };
        let app = self.live.app();
        let ended = app
            .store
            .revoke(selector, app.now())
            .await
            .map_err(AdminError::from)?;
        for s in &ended {
            app.tokens().forget_session(s.id);
            tracing::info!(
                user = s.user.display(),
                session = s.public_id(),
                "session revoked by the admin API"
            );
        }
        app.metrics.sessions_revoked.inc_by(ended.len() as u64);
        Ok(Response::new(RevokeResponse {
            revoked: ended.iter().map(|s| s.public_id()).collect(),
        }))
    }
}

#[cfg(test)]
mod tests;
