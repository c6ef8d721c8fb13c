//! `portcullis sessions list|revoke`: the admin API's client.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use tonic::metadata::MetadataValue;

use crate::admin::proto::revoke_request::Target;
use crate::admin::proto::sessions_client::SessionsClient;
use crate::admin::proto::{ListRequest, RevokeRequest, SessionInfo};
use crate::config::{self, EXIT_CONFIG};

#[derive(Subcommand)]
pub enum Action {
    /// List live sessions, of one user or of everyone.
    List {
        /// The IdP's subject or an email address.
        #[arg(long)]
        user: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End sessions on every replica: one (by the id `list` shows) or all of a user's.
    Revoke {
        #[arg(long, conflicts_with = "user", required_unless_present = "user")]
        session: Option<String>,
        /// The IdP's subject or an email address.
        #[arg(long)]
        user: Option<String>,
    },
}

/// Where the admin API is and its token: from the config's `admin` section, or given.
pub struct AdminTarget {
    pub config: Option<PathBuf>,
    pub address: Option<String>,
    pub token_file: Option<PathBuf>,
}

pub fn run(target: AdminTarget, action: Action) -> ExitCode {
    let (address, token) = match resolve(target) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let runtime = match super::runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(call(&address, &token, action)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn resolve(target: AdminTarget) -> Result<(String, String), ExitCode> {
    let AdminTarget {
        config,
        address,
        token_file,
    } = target;
    let from_config = match (&config, &address, &token_file) {
        (_, Some(_), Some(_)) => None,
        (Some(path), _, _) => match config::load(path) {
            Ok(c) => match c.admin {
                Some(a) => Some(a),
                None => {
                    eprintln!("error: the config has no admin section (admin.token_file)");
                    return Err(ExitCode::from(EXIT_CONFIG as u8));
                }
            },
            Err(errors) => {
                eprintln!("{errors}");
                return Err(ExitCode::from(EXIT_CONFIG as u8));
            }
        },
        (None, _, _) => {
            eprintln!("error: give -c CONFIG, or both --address and --token-file");
            return Err(ExitCode::from(EXIT_CONFIG as u8));
        }
    };
    let address = address
        .or_else(|| {
            from_config
                .as_ref()
                .map(|a| format!("http://{}", a.address))
        })
        .unwrap_or_default();
    let token = match (token_file, from_config) {
        (Some(f), _) => match std::fs::read_to_string(&f) {
            Ok(t) => t.trim().to_string(),
            Err(e) => {
                eprintln!("error: {}: {e}", f.display());
                return Err(ExitCode::FAILURE);
            }
        },
        (None, Some(a)) => a.token.expose().to_string(),
        (None, None) => unreachable!("resolved above"),
    };
    Ok((address, token))
}

async fn call(address: &str, token: &str, action: Action) -> Result<(), String> {
    let mut client = SessionsClient::connect(address.to_string())
        .await
        .map_err(|e| format!("cannot reach the admin API at {address}: {e}"))?;
    let bearer = MetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| "the admin token is not a valid header value".to_string())?;
    fn authed<T>(message: T, bearer: &MetadataValue<tonic::metadata::Ascii>) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.metadata_mut().insert("authorization", bearer.clone());
        r
    }
    let status = |e: tonic::Status| format!("{:?}: {}", e.code(), e.message());
    match action {
        Action::List { user, json } => {
            let sessions = client
                .list(authed(
                    ListRequest {
                        user: user.unwrap_or_default(),
                    },
                    &bearer,
                ))
                .await
                .map_err(status)?
                .into_inner()
                .sessions;
            print_sessions(&sessions, json);
        }
        Action::Revoke { session, user } => {
            let target = match (session, user) {
                (Some(s), _) => Target::Session(s),
                (None, Some(u)) => Target::User(u),
                (None, None) => return Err("name --session or --user".into()),
            };
            let revoked = client
                .revoke(authed(
                    RevokeRequest {
                        target: Some(target),
                    },
                    &bearer,
                ))
                .await
                .map_err(status)?
                .into_inner()
                .revoked;
            for id in &revoked {
                println!("{id}");
            }
            eprintln!("{} session(s) revoked", revoked.len());
        }
    }
    Ok(())
}

fn print_sessions(sessions: &[SessionInfo], json: bool) {
    if json {
        for s in sessions {
            println!(
                "{}",
                serde_json::json!({
                    "id": s.id, "subject": s.subject, "email": s.email, "name": s.name,
                    "groups": s.groups, "created_at": s.created_at, "expires_at": s.expires_at,
                    "refreshes": s.refreshes, "access_expires_at": s.access_expires_at,
                    "idp_session": s.idp_session,
                })
            );
        }
        return;
    }
    println!(
        "{:<22}  {:<30}  {:<24}  {:>10}  {:>10}  refresh",
        "id", "email", "subject", "created", "expires"
    );
    for s in sessions {
        println!(
            "{:<22}  {:<30}  {:<24}  {:>10}  {:>10}  {}",
            s.id,
            s.email,
            s.subject,
            s.created_at,
            s.expires_at,
            if s.refreshes { "yes" } else { "no" }
        );
    }
    eprintln!("{} session(s)", sessions.len());
}
