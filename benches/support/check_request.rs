//! Builds the `CheckRequest` Envoy sends for a plain HTTP/1.1 request, shared by the
//! microbenchmarks (`benches/decision.rs`) and `examples/bench_check.rs` (which frames it
//! for h2load). Included with `#[path]`; not a target of its own.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::google::protobuf::Timestamp;
use prost::Message;

/// One HTTP request as the client sent it.
pub struct Spec<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    /// The route name Envoy passes in `context_extensions`.
    pub route: Option<&'a str>,
    /// The client's own headers (lowercase names), e.g. `accept`, `cookie`.
    pub headers: &'a [(&'a str, &'a str)],
}

fn socket(ip: &str, port: u32) -> Option<Peer> {
    Some(Peer {
        address: Some(Address {
            address: Some(AddressKind::SocketAddress(SocketAddress {
                address: ip.to_string(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }),
        ..Default::default()
    })
}

/// The `CheckRequest` Envoy's ext_authz filter sends for `spec`: pseudo-headers and the
/// headers the connection manager adds (`x-forwarded-proto`, `x-request-id`) included.
pub fn check_request(spec: &Spec<'_>) -> CheckRequest {
    let request_id = "6a3f1c8e-2b7d-4e59-9f0a-1d2c3b4a5e6f";
    let mut headers: HashMap<String, String> = [
        (":authority", spec.authority),
        (":path", spec.path),
        (":method", spec.method),
        (":scheme", spec.scheme),
        ("x-forwarded-proto", spec.scheme),
        ("x-request-id", request_id),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in spec.headers {
        headers.insert(k.to_ascii_lowercase(), v.to_string());
    }
    let context_extensions = spec
        .route
        .map(|r| HashMap::from([("route".to_string(), r.to_string())]))
        .unwrap_or_default();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: socket("127.0.0.1", 40312),
            destination: socket("127.0.0.1", 8080),
            request: Some(AttrRequest {
                time: Some(Timestamp {
                    seconds: 1_800_000_000,
                    nanos: 123_456_000,
                }),
                http: Some(HttpRequest {
                    id: "12345678901234567890".into(),
                    method: spec.method.into(),
                    headers,
                    path: spec.path.into(),
                    host: spec.authority.into(),
                    scheme: spec.scheme.into(),
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
            }),
            context_extensions,
            ..Default::default()
        }),
    }
}

/// A gRPC message frame: a zero "compressed" flag, the big-endian length, the message.
#[allow(dead_code)] // the microbenchmarks use only `check_request`
pub fn grpc_frame(request: &CheckRequest) -> Vec<u8> {
    let body = request.encode_to_vec();
    let len = u32::try_from(body.len()).expect("a CheckRequest is far below 4 GiB");
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    out
}
