//! The domain: who the user is, their session, the routes and their policies, and the
//! authorization decision. Plain data and pure functions: nothing here does I/O or knows
//! about tonic, axum, the config file or the session store. `config` builds these types;
//! the edges (`ext_authz`, `web`) and the [`crate::authorizer`] use them.

pub mod clock;
pub mod cockpit;
pub mod decision;
pub mod policy;
pub mod route;
pub mod session;
pub mod user;

pub use clock::{Clock, SystemClock, unix_now};
pub use decision::{Grant, Outcome, OutcomeKind, Refusal, Request, decide};
pub use policy::{Policy, Reason, Verdict};
pub use route::{NoRoute, RoleMapping, Route, RouteId, RouteTable, authority_of};
pub use session::{Freshness, IdpGrant, SealedToken, Session, SessionId};
pub use user::User;
