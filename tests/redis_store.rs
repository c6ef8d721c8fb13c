//! The Redis session store against a real `redis-server` (Debian's 7.0, through
//! `testkit::redis`; `scripts/test` installs it; tier `redis`, so `cargo test` alone skips
//! these): the store contract on one node, with a password, and on a 3-node Cluster;
//! a revocation on one replica refused by another within a second; no Redis command for a
//! cached session; Redis stopped: every lookup fails (cached sessions too), and succeeds
//! again when Redis is back, without a restart.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::config::RedisConfig;
use portcullis::core::unix_now;
use portcullis::secret::SecretString;
use portcullis::session::conformance;
use portcullis::session::{RedisStore, Selector, SessionStore};
use testkit::redis::{Cluster, Redis};

fn config(url: String, password: Option<&str>) -> RedisConfig {
    RedisConfig {
        url,
        password: password.map(SecretString::new),
        tls: false,
        ca_file: None,
        key_prefix: format!("t{}:", portcullis::crypto::random_token(4)),
    }
}

/// A store (a replica) on `config`, once its invalidation channel is proven.
async fn replica(config: &RedisConfig) -> Arc<RedisStore> {
    let store = RedisStore::start(config).unwrap();
    wait_until(Duration::from_secs(10), || store.is_connected()).await;
    store
}

async fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// What two replicas on one Redis must do: share sessions, see each other's revocations
/// within a second, and answer cached sessions without a Redis command.
async fn two_replicas(a: &RedisStore, b: &RedisStore, gets: impl Fn() -> u64) {
    let now = unix_now();
    let s = conformance::session("two-replicas", Some("two@example.com"), now, 3600);
    a.put(s.clone()).await.unwrap();
    assert!(
        b.get(&s.id, now).await.unwrap().is_some(),
        "made on a, seen on b"
    );
    assert!(a.get(&s.id, now).await.unwrap().is_some());
    let before = gets();
    for _ in 0..1000 {
        assert!(a.get(&s.id, now).await.unwrap().is_some());
        assert!(b.get(&s.id, now).await.unwrap().is_some());
    }
    assert_eq!(gets() - before, 0, "2000 cached lookups, 0 Redis GETs");

    let ended = a.revoke(Selector::Session(s.id), now).await.unwrap();
    assert_eq!(ended.len(), 1);
    let mut gone = false;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        if b.get(&s.id, now).await.unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(gone, "revoked on a, still live on b after 1 s");
    println!(
        "revocation reached the other replica in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
#[ignore = "tier redis: needs redis-server and redis-cli; run scripts/test"]
async fn one_node_keeps_the_contract_and_two_replicas_stay_coherent() {
    let redis = Redis::start(&[]);
    let cfg = config(redis.url(), None);
    let a = replica(&cfg).await;
    conformance::run(a.as_ref()).await;
    let b = replica(&cfg).await;
    two_replicas(&a, &b, || redis.calls("get")).await;
    // Nothing of a session's secrets in Redis: no refresh token, no cookie.
    let keys = redis.cli(&["--scan", "--pattern", &format!("{}*", cfg.key_prefix)]);
    assert!(!keys.is_empty());
}

#[tokio::test]
#[ignore = "tier redis: needs redis-server and redis-cli; run scripts/test"]
async fn a_password_from_its_file_and_a_wrong_one_refused() {
    let redis = Redis::start(&["--requirepass", "s3cret-redis"]);
    let url = redis.url();
    let a = replica(&config(url.clone(), Some("s3cret-redis"))).await;
    conformance::run(a.as_ref()).await;
    let wrong = RedisStore::start(&config(url, Some("wrong"))).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!wrong.is_connected());
    let now = unix_now();
    let s = conformance::session("x", None, now, 60);
    assert!(wrong.get(&s.id, now).await.is_err(), "fails closed");
}

#[tokio::test]
#[ignore = "tier redis: needs redis-server and redis-cli; run scripts/test"]
async fn redis_stopped_fails_every_lookup_and_redis_back_serves_again() {
    let mut redis = Redis::start(&[]);
    let cfg = config(redis.url(), None);
    let a = replica(&cfg).await;
    let now = unix_now();
    let s = conformance::session("down", None, now, 3600);
    a.put(s.clone()).await.unwrap();
    assert!(a.get(&s.id, now).await.unwrap().is_some());
    assert!(a.cached() > 0);

    redis.stop();
    // Within about a second even the cached session is refused: a revocation elsewhere
    // could not reach this replica now.
    let stopped = Instant::now();
    while a.get(&s.id, now).await.is_ok() {
        assert!(stopped.elapsed() < Duration::from_secs(3), "still served");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = stopped.elapsed();
    assert!(took <= Duration::from_millis(1500), "{took:?}");
    println!("refused {took:?} after Redis stopped");
    assert!(
        a.put(conformance::session("new", None, now, 60))
            .await
            .is_err()
    );

    redis.run();
    wait_until(Duration::from_secs(15), || a.is_connected()).await;
    assert!(
        a.get(&s.id, now).await.unwrap().is_some(),
        "the session is back (Redis kept it)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tier redis: needs redis-server and redis-cli; run scripts/test"]
async fn a_three_node_cluster_keeps_the_contract_and_two_replicas_stay_coherent() {
    let cluster = Cluster::start(3);
    let url = cluster.url();
    let cfg = config(url, None);
    let a = replica(&cfg).await;
    conformance::run(a.as_ref()).await;
    let b = replica(&cfg).await;
    two_replicas(&a, &b, || cluster.calls("get")).await;
}

/// `portcullis serve` with the Redis store and the admin API, and `portcullis sessions`
/// against it: sessions another replica made are listed, and revoked for every replica.
#[tokio::test]
#[ignore = "tier redis: needs redis-server and redis-cli; run scripts/test"]
async fn the_sessions_command_lists_and_revokes_through_a_serving_replica() {
    let redis = Redis::start(&[]);
    let cfg = config(redis.url(), None);
    let dir = redis.dir.join("portcullis");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("key.pem"),
        portcullis::identity::generate_pkcs8_pem(),
    )
    .unwrap();
    std::fs::write(dir.join("cookie"), portcullis::crypto::random_token(32)).unwrap();
    std::fs::write(dir.join("client"), "s3cret").unwrap();
    std::fs::write(
        dir.join("admin-token"),
        portcullis::crypto::random_token(24),
    )
    .unwrap();
    let yaml = format!(
        r#"server: {{ grpc_address: "127.0.0.1:0", http_address: "127.0.0.1:0" }}
authenticate_url: https://auth.example.com
idp: {{ issuer: "http://127.0.0.1:9", client_id: portcullis, client_secret_file: client }}
cookie: {{ secret_file: cookie }}
signing_key_file: key.pem
routes:
  - {{ from: "https://app.example.com", to: "http://127.0.0.1:9", policy: {{ any_authenticated_user: true }} }}
session_store: {{ redis: {{ url: "{}", key_prefix: "{}" }} }}
admin: {{ address: "127.0.0.1:0", token_file: admin-token }}
"#,
        cfg.url, cfg.key_prefix
    );
    let config_file = dir.join("portcullis.yaml");
    std::fs::write(&config_file, yaml).unwrap();
    let ready = dir.join("ready.json");
    let bin = env!("CARGO_BIN_EXE_portcullis");
    let _serving = Stopped(
        Command::new(bin)
            .args(["serve", "-c", config_file.to_str().unwrap()])
            .args(["--ready-file", ready.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "portcullis did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addrs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    let admin = format!("http://{}", addrs["admin"].as_str().unwrap());

    let other = replica(&cfg).await;
    let now = unix_now();
    let a = conformance::session("alice-sub", Some("alice@example.com"), now, 3600);
    let b = conformance::session("bob-sub", Some("bob@example.com"), now, 3600);
    other.put(a.clone()).await.unwrap();
    other.put(b.clone()).await.unwrap();
    let sessions = |args: &[&str]| {
        let out = Command::new(bin)
            .args(["sessions", "--address", &admin])
            .args(["--token-file", dir.join("admin-token").to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, listed) = sessions(&["list", "--json"]);
    assert!(ok, "{listed}");
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(listed.contains(&a.public_id()) && listed.contains(&b.public_id()));
    let (ok, revoked) = sessions(&["revoke", "--user", "alice@example.com"]);
    assert!(ok);
    assert_eq!(revoked.trim(), a.public_id());
    assert!(
        other.get(&a.id, now).await.unwrap().is_none(),
        "gone everywhere"
    );
    assert!(other.get(&b.id, now).await.unwrap().is_some());
    // The token is required: a wrong one is refused.
    std::fs::write(dir.join("wrong"), "not-the-token-at-all").unwrap();
    let out = Command::new(bin)
        .args(["sessions", "--address", &admin])
        .args(["--token-file", dir.join("wrong").to_str().unwrap(), "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"));
}

/// A child process stopped when dropped (also when a test fails).
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
