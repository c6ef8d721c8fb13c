//! portcullis: OpenID Connect single sign-on in front of any web app, with Envoy as the
//! data plane. See README.md for the architecture.

pub mod app;
pub mod authz;
pub mod cli;
pub mod cockpit;
pub mod config;
pub mod crypto;
pub mod decision;
pub mod envoy;
pub mod identity;
pub mod metrics;
pub mod oidc;
pub mod pages;
pub mod policy;
pub mod routes;
pub mod secret;
pub mod server;
pub mod session;
pub mod web;
