//! `session_store`: where sessions live.

use std::path::{Path, PathBuf};

use super::raw::{RawRedis, RawRedisTls, RawSessionStore};
use super::{Errors, read_secret_file, resolve};
use crate::secret::SecretString;

/// Where sessions live.
#[derive(Debug, Clone, Default)]
pub enum StoreConfig {
    /// In process memory (the default): nothing to install, one replica, and a restart
    /// signs everyone out.
    #[default]
    Memory,
    Redis(RedisConfig),
}

/// A Redis deployment: one node, Sentinel or Cluster, by the URL's scheme.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis[s]://host:port[/db]`, `redis[s]-cluster://host:port[?node=host:port…]` or
    /// `redis[s]-sentinel://host:port[/db]?sentinelServiceName=NAME[&node=host:port…]`;
    /// never with a password in it.
    pub url: String,
    pub password: Option<SecretString>,
    /// TLS (a `rediss` scheme); `ca_file` replaces the system CAs.
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    /// Every key portcullis writes starts with this.
    pub key_prefix: String,
}

const SCHEMES: [&str; 6] = [
    "redis",
    "rediss",
    "redis-cluster",
    "rediss-cluster",
    "redis-sentinel",
    "rediss-sentinel",
];

pub(super) fn validate(
    raw: Option<RawSessionStore>,
    base: &Path,
    errors: &mut Errors,
) -> Option<StoreConfig> {
    let Some(RawSessionStore { memory, redis }) = raw else {
        return Some(StoreConfig::Memory);
    };
    match (memory, redis) {
        (Some(_), Some(_)) => {
            errors.push("session_store", "choose one of memory or redis");
            None
        }
        (_, Some(redis)) => validate_redis(redis, base, errors).map(StoreConfig::Redis),
        (Some(_), None) => Some(StoreConfig::Memory),
        (None, None) => {
            errors.push("session_store", "empty: set memory: {} or redis: {url: …}");
            None
        }
    }
}

fn validate_redis(raw: RawRedis, base: &Path, errors: &mut Errors) -> Option<RedisConfig> {
    let RawRedis {
        url,
        password_file,
        tls,
        key_prefix,
    } = raw;
    const AT: &str = "session_store.redis";
    let url = match url {
        Some(u) => match url::Url::parse(&u) {
            Ok(parsed) if !SCHEMES.contains(&parsed.scheme()) => {
                errors.push(
                    format!("{AT}.url"),
                    format!(
                        "{:?}: use redis:// (one node), redis-cluster:// or redis-sentinel:// (rediss… for TLS)",
                        parsed.scheme()
                    ),
                );
                None
            }
            Ok(parsed) if parsed.password().is_some() || !parsed.username().is_empty() => {
                // The URL is printed in logs and errors; the password has its own file.
                errors.push(
                    format!("{AT}.url"),
                    "has credentials in it: put the password in password_file",
                );
                None
            }
            Ok(_) => match fred::types::config::Config::from_url(&u) {
                Ok(_) => Some(u),
                Err(e) => {
                    errors.push(format!("{AT}.url"), format!("{u:?}: {e}"));
                    None
                }
            },
            Err(e) => {
                errors.push(format!("{AT}.url"), format!("{u:?} is not a URL: {e}"));
                None
            }
        },
        None => errors.missing(&format!("{AT}.url")),
    };
    let password = password_file.and_then(|f| {
        let bytes = read_secret_file(base, &f, &format!("{AT}.password_file"), 1, errors)?;
        match String::from_utf8(bytes) {
            Ok(p) => Some(SecretString::new(p)),
            Err(_) => {
                errors.push(
                    format!("{AT}.password_file"),
                    format!("{f}: not UTF-8 text"),
                );
                None
            }
        }
    });
    let scheme_tls = url.as_deref().is_some_and(|u| u.starts_with("rediss"));
    let ca_file = match tls {
        Some(RawRedisTls { ca_file }) => {
            if url.is_some() && !scheme_tls {
                errors.push(
                    format!("{AT}.tls"),
                    "TLS needs a rediss:// (or rediss-cluster://, rediss-sentinel://) URL",
                );
            }
            ca_file.and_then(|f| {
                let p = resolve(base, &f);
                match std::fs::read_to_string(&p) {
                    Ok(t) if t.contains("-----BEGIN CERTIFICATE-----") => Some(p),
                    Ok(_) => {
                        errors.push(
                            format!("{AT}.tls.ca_file"),
                            format!("{f}: no PEM certificate in it"),
                        );
                        None
                    }
                    Err(e) => {
                        errors.push(
                            format!("{AT}.tls.ca_file"),
                            format!("{f}: cannot read: {e}"),
                        );
                        None
                    }
                }
            })
        }
        None => None,
    };
    let key_prefix = key_prefix.unwrap_or_else(|| "portcullis:".into());
    if key_prefix.is_empty()
        || key_prefix
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b == b'*')
    {
        errors.push(
            format!("{AT}.key_prefix"),
            format!("{key_prefix:?}: not empty, no spaces or '*'"),
        );
    }
    Some(RedisConfig {
        url: url?,
        password,
        tls: scheme_tls,
        ca_file,
        key_prefix,
    })
}
