//! The gRPC edge: Envoy's `envoy.service.auth.v3.Authorization/Check`. Converts the
//! `CheckRequest` into a [`Request`] and the [`Action`] back into a `CheckResponse`, with
//! plain functions so both conversions are tested without a server. Malformed requests are
//! `INVALID_ARGUMENT`, which Envoy (with `failure_mode_allow: false`) turns into its
//! `status_on_error`: the door stays shut.

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use tonic::{Response, Status};

use crate::app::{App, Live};
use crate::authorizer::Action;
use crate::core::Request;

pub use envoy_types::ext_authz::v3::pb::AuthorizationServer;

/// The ext_authz service.
pub struct AuthzService {
    live: Arc<Live>,
}

impl AuthzService {
    /// The service on one app.
    pub fn new(app: Arc<App>) -> Self {
        Self::live(Live::new(app))
    }

    /// The service on whatever app `live` holds (a reload swaps it between Checks).
    pub fn live(live: Arc<Live>) -> Self {
        Self { live }
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let started = std::time::Instant::now();
        let request = request.into_inner();
        let req = to_request(&request)?;
        // The authorizer writes the audit line; the action's Debug (header names only,
        // never values) is for debugging.
        let app = self.live.app();
        let decision = app.authorizer.check(&req).await;
        tracing::debug!(action = ?decision.action, "check");
        app.observe_decision(&decision, started);
        Ok(Response::new(to_check_response(decision.action)))
    }
}

/// Reads the request out of Envoy's `CheckRequest`; what is missing is the caller's error.
pub fn to_request(request: &CheckRequest) -> Result<Request<'_>, Status> {
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
    Ok(Request {
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
        source_ip: source_ip(attributes),
    })
}

/// The client's address: Envoy's `source` peer, which with `use_remote_address` and
/// `xff_num_trusted_hops` is the client as seen past the trusted proxies.
fn source_ip(
    attributes: &envoy_types::pb::envoy::service::auth::v3::AttributeContext,
) -> Option<std::net::IpAddr> {
    use envoy_types::pb::envoy::config::core::v3::address::Address;
    match attributes
        .source
        .as_ref()?
        .address
        .as_ref()?
        .address
        .as_ref()?
    {
        Address::SocketAddress(s) => s.address.parse().ok(),
        _ => None,
    }
}

/// Converts an action into Envoy's answer.
pub fn to_check_response(action: Action) -> CheckResponse {
    let mut response = CheckResponse::new();
    match action {
        Action::Forward(edits) => {
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
        Action::Respond(r) => {
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

#[cfg(test)]
mod tests;
