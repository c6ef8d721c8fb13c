//! The Redis session store against a real `redis-server` (Debian's 7.0; `scripts/test`
//! installs it): the store contract on one node, with a password, and on a 3-node Cluster;
//! a revocation on one replica refused by another within a second; no Redis command for a
//! cached session; Redis stopped: every lookup fails (cached sessions too), and succeeds
//! again when Redis is back, without a restart.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::config::RedisConfig;
use portcullis::core::unix_now;
use portcullis::secret::SecretString;
use portcullis::session::conformance;
use portcullis::session::{RedisStore, Selector, SessionStore};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` on a loopback port, in a temporary directory, stopped on drop.
struct Redis {
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Redis {
    fn start(extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-redis-{}-{}",
            std::process::id(),
            portcullis::crypto::random_token(6)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Self {
            port: free_port(),
            dir,
            args: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        r.run();
        r
    }

    /// (Re)starts the server on its port and directory, and waits until it answers.
    fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", self.dir.to_str().unwrap(), "--save", ""])
            // Sessions survive a restart of Redis (as they would in production).
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string()]);
        if let Some(i) = self.args.iter().position(|a| a == "--requirepass") {
            cmd.env("REDISCLI_AUTH", &self.args[i + 1]);
        }
        let out = cmd.args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// How many times `command` ran, from `INFO commandstats`.
    fn calls(&self, command: &str) -> u64 {
        let stats = self.cli(&["INFO", "commandstats"]);
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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
async fn one_node_keeps_the_contract_and_two_replicas_stay_coherent() {
    let redis = Redis::start(&[]);
    let cfg = config(format!("redis://127.0.0.1:{}", redis.port), None);
    let a = replica(&cfg).await;
    conformance::run(a.as_ref()).await;
    let b = replica(&cfg).await;
    two_replicas(&a, &b, || redis.calls("get")).await;
    // Nothing of a session's secrets in Redis: no refresh token, no cookie.
    let keys = redis.cli(&["--scan", "--pattern", &format!("{}*", cfg.key_prefix)]);
    assert!(!keys.is_empty());
}

#[tokio::test]
async fn a_password_from_its_file_and_a_wrong_one_refused() {
    let redis = Redis::start(&["--requirepass", "s3cret-redis"]);
    let url = format!("redis://127.0.0.1:{}", redis.port);
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
async fn redis_stopped_fails_every_lookup_and_redis_back_serves_again() {
    let mut redis = Redis::start(&[]);
    let cfg = config(format!("redis://127.0.0.1:{}", redis.port), None);
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
async fn a_three_node_cluster_keeps_the_contract_and_two_replicas_stay_coherent() {
    let nodes: Vec<Redis> = (0..3)
        .map(|_| Redis::start(&["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]))
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let mut create = Command::new("redis-cli");
    create.args(["--cluster", "create"]).args(&addrs);
    let out = create
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Every node must agree before clients route by slots.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes
        .iter()
        .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    {
        assert!(Instant::now() < deadline, "the cluster did not form");
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!(
        "redis-cluster://{}?node={}&node={}",
        addrs[0], addrs[1], addrs[2]
    );
    let cfg = config(url, None);
    let a = replica(&cfg).await;
    conformance::run(a.as_ref()).await;
    let b = replica(&cfg).await;
    two_replicas(&a, &b, || nodes.iter().map(|n| n.calls("get")).sum()).await;
}
