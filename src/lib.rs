//! portcullis: OpenID Connect single sign-on in front of any web app, with Envoy as the
//! data plane. See README.md for the architecture.
//!
//! Layers, each depending only on those above it (a test keeps it so, `tests/modules.rs`):
//! - `secret`, `crypto`, `pages`: leaves.
//! - [`core`]: the domain and the decision, pure.
//! - `config`, `identity`, `session`, `cockpit`, `oidc`, `metrics`: building blocks.
//! - `refresh` (the store's sessions, refreshed when due), [`authorizer`] (the work around
//!   the decision), `tokens`, [`app`] (the shared state).
//! - The edges: [`ext_authz`] (gRPC), [`web`] (HTTP), [`forward_auth`] (HTTP, for nginx,
//!   Caddy and Traefik), [`admin`] (the session API, gRPC); then `server`, `envoy`, `cli`.

pub mod admin;
pub mod app;
pub mod authorizer;
pub mod cli;
pub mod cockpit;
pub mod config;
pub mod core;
pub mod crypto;
pub mod envoy;
pub mod explain;
pub mod ext_authz;
pub mod forward_auth;
pub mod identity;
pub mod limits;
pub mod logwriter;
pub mod metrics;
pub mod oidc;
pub mod pages;
pub mod refresh;
pub mod reload;
pub mod secret;
pub mod server;
pub mod session;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tokens;
pub mod web;
