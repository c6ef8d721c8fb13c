//! The gRPC edge: Envoy's `envoy.service.auth.v3.Authorization/Check`. Converts the
//! `CheckRequest` into a [`decision::Request`], and the [`Decision`] back into a
//! `CheckResponse`. Malformed requests are `INVALID_ARGUMENT`, which Envoy (with
//! `failure_mode_allow: false`) turns into its `status_on_error`: the door stays shut.

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use tonic::{Request, Response, Status};

use crate::app::{App, now};
use crate::decision::{self, Decision};

pub use envoy_types::ext_authz::v3::pb::AuthorizationServer;

/// The ext_authz service.
pub struct AuthzService {
    app: Arc<App>,
}

impl AuthzService {
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let started = std::time::Instant::now();
        let request = request.into_inner();
        let attributes = request
            .attributes
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("missing attributes"))?;
        let http = attributes
            .request
            .as_ref()
            .and_then(|r| r.http.as_ref())
            .ok_or_else(|| Status::invalid_argument("missing attributes.request.http"))?;
        if http.host.is_empty() || http.path.is_empty() {
            return Err(Status::invalid_argument("missing host or path"));
        }
        let req = decision::Request {
            method: &http.method,
            scheme: if http.scheme.is_empty() {
                "https"
            } else {
                &http.scheme
            },
            authority: &http.host,
            path: &http.path,
            headers: &http.headers,
            route_hint: attributes
                .context_extensions
                .get("route")
                .map(String::as_str),
        };
        let decision = self.app.decide(&req, now()).await;
        // The query is left out (apps put their own tokens there) and the decision prints
        // header names only: no log line carries a token, credential or cookie value.
        tracing::debug!(
            host = req.authority,
            path = decision::path_only(req.path),
            ?decision,
            "check"
        );
        self.app.metrics.observe_check(&decision, started.elapsed());
        Ok(Response::new(to_check_response(decision)))
    }
}

/// Converts a decision into Envoy's answer.
pub fn to_check_response(decision: Decision) -> CheckResponse {
    let mut response = CheckResponse::new();
    match decision {
        Decision::Allow(edits) => {
            let mut ok = OkHttpResponseBuilder::new();
            for (name, value) in edits.set {
                ok.add_header(
                    name,
                    value,
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    false,
                );
            }
            for name in edits.remove {
                ok.remove_header(name);
            }
            response.set_status(Status::ok("")).set_http_response(ok);
        }
        Decision::Respond(r) => {
            let mut denied = DeniedHttpResponseBuilder::new();
            denied.set_http_status(
                HttpStatusCode::try_from(i32::from(r.status)).unwrap_or(HttpStatusCode::Forbidden),
            );
            for (name, value) in r.headers {
                denied.add_header(
                    name,
                    value,
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    false,
                );
            }
            denied.set_body(r.body);
            response
                .set_status(Status::permission_denied(""))
                .set_http_response(denied);
        }
    }
    response
}
