//! Durable sessions and replicas against the real parts: Debian's `redis-server` (one node
//! and a 3-node Cluster), Envoy from `portcullis envoy-config --replica …`, the dev IdP
//! (npm oidc-provider) and two portcullis replicas, each a process of its own.
//!
//! Tier `stack` plus Redis (`scripts/test` installs redis-server and redis-tools).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use testkit::redis::{Cluster, Redis};
use testkit::{Browser, Stack, send};

const SESSION_COOKIE: &str = "__Host-_portcullis";

/// The statuses of `n` requests to the app with this browser's cookies (through Envoy,
/// which balances them over the replicas), without following redirects.
async fn statuses(stack: &Stack, browser: &Browser, n: usize) -> Vec<StatusCode> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(send(browser.get(&stack.url("app", "/"))).await.status());
    }
    out
}

/// Until every one of `n` consecutive requests answers `want` (at most `within`); returns
/// how long it took.
async fn until_all(
    stack: &Stack,
    browser: &Browser,
    want: StatusCode,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let got = statuses(stack, browser, 10).await;
        if got.iter().all(|s| *s == want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "not every request answered {want} within {within:?}: {got:?}"
        );
    }
}

/// `portcullis sessions ARGS` against replica `i`'s admin API.
fn sessions_command(stack: &Stack, i: usize, args: &[&str]) -> (bool, String) {
    let out = testkit::run(
        std::process::Command::new(testkit::portcullis_bin())
            .args(["sessions", "--address"])
            .arg(format!("http://127.0.0.1:{}", stack.replicas[i].admin))
            .arg("--token-file")
            .arg(stack.dir.join("secrets/admin_token"))
            .args(args),
    );
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Two replicas on `redis_url`, with the admin API (its token written before they start).
async fn two_replicas(redis_url: &str) -> Stack {
    // The token file must exist when the replicas start; the stack's dir is made by start,
    // so the token goes where the secrets are written: see `admin_token_file`.
    with_admin_token(two_replicas_builder(redis_url)).await
}

fn two_replicas_builder(redis_url: &str) -> testkit::StackBuilder {
    Stack::builder()
        .replicas(2)
        .redis_store(redis_url)
        .config_extra("admin: { address: \"127.0.0.1:0\", token_file: secrets/admin_token }")
        .server_option("drain_delay: 3s")
}

/// Starts the stack with an admin token in its secrets dir.
async fn with_admin_token(builder: testkit::StackBuilder) -> Stack {
    builder.admin_token().start().await
}

/// Sessions made on one replica work on the other, a restarted replica keeps them, and
/// a sign-out or a revocation on one is refused by both within a second; a cached session
/// costs Redis no command per request.
async fn replicas_share_sessions(redis_url: &str, gets: impl Fn() -> u64) {
    let mut stack = two_replicas(redis_url).await;
    let alice = stack.browser();
    let bob = stack.browser();
    stack.sign_in(&alice, "alice").await;
    stack.sign_in(&bob, "bob").await;
    assert!(
        statuses(&stack, &alice, 20)
            .await
            .iter()
            .all(|s| *s == StatusCode::OK)
    );

    // Steady state (each replica has looked bob's session up once): no Redis GET.
    statuses(&stack, &bob, 20).await;
    let before = gets();
    let ok = statuses(&stack, &bob, 200).await;
    assert!(ok.iter().all(|s| *s == StatusCode::OK), "{ok:?}");
    assert_eq!(
        gets() - before,
        0,
        "200 signed-in requests cost Redis 0 GETs"
    );

    // Either replica alone serves every session; a restarted one keeps them.
    stack.kill_replica(0);
    until_all(&stack, &alice, StatusCode::OK, Duration::from_secs(5)).await;
    stack.restart_replica(0, false).await;
    stack.kill_replica(1);
    until_all(&stack, &alice, StatusCode::OK, Duration::from_secs(5)).await;
    until_all(&stack, &bob, StatusCode::OK, Duration::from_secs(5)).await;
    stack.restart_replica(1, false).await;

    // Revocation by user through one replica's admin API: refused on both within 1 s.
    let (ok, listed) = sessions_command(&stack, 1, &["list", "--user", "alice@example.com"]);
    assert!(ok && listed.contains("alice@example.com"), "{listed}");
    let (ok, out) = sessions_command(&stack, 0, &["revoke", "--user", "alice@example.com"]);
    assert!(ok, "{out}");
    let took = until_all(&stack, &alice, StatusCode::FOUND, Duration::from_secs(1)).await;
    println!("revocation refused everywhere after {took:?}");
    assert!(
        statuses(&stack, &bob, 10)
            .await
            .iter()
            .all(|s| *s == StatusCode::OK)
    );

    // Sign-out: the session's cookie, replayed, is refused by both.
    let cookie = bob
        .cookie(&stack.url("app", "/"), SESSION_COOKIE)
        .expect("bob's cookie");
    let page = send(bob.get(&stack.url("app", "/.portcullis/sign_out"))).await;
    let (_, _) = bob.submit_form(page, &[]).await;
    let replay = stack.browser();
    replay.set_cookie(&stack.url("app", "/"), SESSION_COOKIE, &cookie);
    until_all(&stack, &replay, StatusCode::FOUND, Duration::from_secs(1)).await;
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy, the dev IdP and redis-server; run scripts/test"]
async fn two_replicas_on_one_redis_share_sessions_and_revocations() {
    let redis = Redis::start(&[]);
    replicas_share_sessions(&redis.url(), || redis.calls("get")).await;
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy, the dev IdP and redis-server; run scripts/test"]
async fn two_replicas_on_a_three_node_cluster_share_sessions_and_revocations() {
    let cluster = Cluster::start(3);
    replicas_share_sessions(&cluster.url(), || cluster.calls("get")).await;
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy, the dev IdP and redis-server; run scripts/test"]
async fn redis_stopped_under_load_answers_only_503_and_recovers_by_itself() {
    let mut redis = Redis::start(&[]);
    let stack = Stack::builder().redis_store(&redis.url()).start().await;
    let alice = stack.browser();
    stack.sign_in(&alice, "alice").await;
    // A session signed out before the cut, whose cookie a client still sends.
    let bob = stack.browser();
    stack.sign_in(&bob, "bob").await;
    let app = stack.url("app", "/");
    let cookie = bob.cookie(&app, SESSION_COOKIE).expect("bob's cookie");
    let page = send(bob.get(&stack.url("app", "/.portcullis/sign_out"))).await;
    bob.submit_form(page, &[]).await;
    let revoked = stack.browser();
    revoked.set_cookie(&app, SESSION_COOKIE, &cookie);
    until_all(&stack, &revoked, StatusCode::FOUND, Duration::from_secs(1)).await;
    until_all(&stack, &alice, StatusCode::OK, Duration::from_secs(1)).await;

    redis.stop();
    let stopped = Instant::now();
    let mut seen = Vec::new();
    while stopped.elapsed() < Duration::from_secs(3) {
        for b in [&alice, &revoked] {
            let s = send(b.get(&stack.url("app", "/"))).await.status();
            seen.push((stopped.elapsed(), std::ptr::eq(b, &revoked), s));
        }
    }
    for (at, is_revoked, s) in &seen {
        assert!(
            *s == StatusCode::SERVICE_UNAVAILABLE
                || (*s == StatusCode::OK && !is_revoked && *at < Duration::from_millis(1500))
                || (*s == StatusCode::FOUND && *is_revoked),
            "{s} at {at:?} (revoked session: {is_revoked})"
        );
    }
    for (_, _, s) in &seen[seen.len() - 2..] {
        assert_eq!(
            *s,
            StatusCode::SERVICE_UNAVAILABLE,
            "cut off: 503 for every session"
        );
    }
    // An API client gets JSON.
    let api = send(
        alice
            .get(&stack.url("app", "/"))
            .header("accept", "application/json"),
    )
    .await;
    assert_eq!(api.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(api.text().await.unwrap().contains("store_unavailable"));

    redis.run();
    until_all(&stack, &alice, StatusCode::OK, Duration::from_secs(15)).await;
    assert!(
        statuses(&stack, &revoked, 10)
            .await
            .iter()
            .all(|s| *s == StatusCode::FOUND),
        "a session revoked before the cut stays revoked"
    );
}

/// Sends `n` requests to `url`, `concurrency` at a time, while `during` runs, and counts
/// the answers that are not 200.
async fn load(
    url: String,
    browser: &Browser,
    n: usize,
    concurrency: usize,
    during: impl std::future::Future<Output = ()>,
) -> usize {
    let failed = Arc::new(AtomicUsize::new(0));
    let left = Arc::new(AtomicUsize::new(n));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let b = browser.share();
        let url = url.clone();
        let failed = failed.clone();
        let left = left.clone();
        workers.push(tokio::spawn(async move {
            while left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1))
                .is_ok()
            {
                match b.get(&url).send().await {
                    Ok(r) if r.status() == StatusCode::OK => {}
                    Ok(r) => {
                        eprintln!("load: {}", r.status());
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        eprintln!("load: {e}");
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    during.await;
    for w in workers {
        w.await.unwrap();
    }
    failed.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "tier stack: needs Envoy, the dev IdP and redis-server; run scripts/test"]
async fn a_killed_replica_and_a_rolling_restart_fail_no_request() {
    let redis = Redis::start(&[]);
    // Thousands of Checks on two cores: h2 and tonic traces of every frame would hold some
    // past Envoy's 1 s ext_authz timeout (a 503 that is the log's doing, not a failover's).
    let mut stack = with_admin_token(two_replicas_builder(&redis.url()).quiet_libraries()).await;
    let alice = stack.browser();
    stack.sign_in(&alice, "alice").await;
    until_all(&stack, &alice, StatusCode::OK, Duration::from_secs(1)).await;

    let url = stack.url("app", "/");
    // One replica killed during 3000 requests: Envoy retries the Checks it had in flight
    // on the other one.
    let kill = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stack.kill_replica(0);
    };
    let failed = load(url.clone(), &alice, 3000, 8, kill).await;
    let stats = reqwest::get(format!(
        "http://127.0.0.1:{}/stats?filter=(portcullis_authz.*(retry|cx_connect_fail|rq_total|health|rq_503|rq_reset))|ext_authz",
        stack.ports.envoy_admin
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert_eq!(
        failed, 0,
        "requests failed when a replica was killed; Envoy:\n{stats}"
    );
    stack.restart_replica(0, false).await;

    // A rolling restart (SIGTERM: NOT_SERVING for drain_delay, then drain) under load.
    let roll = async {
        for i in 0..2 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            stack.restart_replica(i, true).await;
        }
    };
    let failed = load(url, &alice, 6000, 8, roll).await;
    assert_eq!(failed, 0, "requests failed during a rolling restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "tier stack: needs Envoy, the dev IdP and redis-server; run scripts/test"]
async fn refresh_outlives_token_lifetimes_and_fifty_requests_at_expiry_refresh_once() {
    let redis = Redis::start(&[]);
    let mut stack = Stack::builder()
        .replicas(2)
        .redis_store(&redis.url())
        .idp_args(&["--access-token-ttl", "6", "--rotate-refresh-tokens"])
        // 50 requests at once, on two cores shared with the other tests: library traces of
        // every h2 frame would hold the Checks past Envoy's 1 s timeout.
        .quiet_libraries()
        .start()
        .await;
    let alice = stack.browser();
    stack.sign_in(&alice, "alice").await;
    assert_eq!(stack.idp_grants("authorization_code"), 1);

    // Three token lifetimes and more of use: refreshed beside the requests, no new sign-in.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        let got = statuses(&stack, &alice, 1).await;
        assert_eq!(got, [StatusCode::OK], "at {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let refreshed = stack.idp_grants("refresh_token");
    assert!(
        refreshed >= 3,
        "{refreshed} refreshes in 20 s of 6-second tokens"
    );
    assert_eq!(stack.idp_grants("authorization_code"), 1, "no new sign-in");

    // Idle past the token's expiry, then 50 requests at once through both replicas: one
    // refresh, and every request allowed (the rotated token was never spent twice).
    tokio::time::sleep(Duration::from_secs(7)).await;
    let before = stack.idp_grants("refresh_token");
    let url = stack.url("app", "/");
    let mut requests = Vec::new();
    for _ in 0..50 {
        let b = alice.share();
        let url = url.clone();
        requests.push(tokio::spawn(async move {
            b.get(&url).send().await.map(|r| r.status())
        }));
    }
    for r in requests {
        assert_eq!(r.await.unwrap().unwrap(), StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stack.idp_grants("refresh_token") - before,
        1,
        "50 concurrent requests at expiry, on two replicas: exactly one refresh"
    );
    assert_eq!(statuses(&stack, &alice, 5).await, [StatusCode::OK; 5]);
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy, the dev IdP and redis-server; run scripts/test"]
async fn a_logout_at_the_idp_ends_the_session_on_both_replicas_by_back_channel() {
    let redis = Redis::start(&[]);
    let mut stack = Stack::builder()
        .replicas(2)
        .redis_store(&redis.url())
        .backchannel_logout()
        .start()
        .await;
    let alice = stack.browser();
    stack.sign_in(&alice, "alice").await;
    let bob = stack.browser();
    stack.sign_in(&bob, "bob").await;
    until_all(&stack, &alice, StatusCode::OK, Duration::from_secs(1)).await;

    // Alice signs out at the IdP itself (not through portcullis): its end-session page
    // confirms with a form, and the IdP tells portcullis over the back channel.
    let end = format!("{}/session/end?client_id=portcullis", stack.idp_origin());
    let page = send(alice.get(&end)).await;
    assert_eq!(page.status(), StatusCode::OK);
    let (done, visited) = alice.submit_form(page, &[]).await;
    assert!(
        done.status().is_success() || done.status().is_redirection(),
        "{}: {}",
        done.status(),
        testkit::list(&visited)
    );
    let log = stack.proc_mut("idp").log_text();
    assert!(
        log.contains("idp: backchannel logout sent sub=alice"),
        "the IdP sent the logout token:\n{log}"
    );
    let took = until_all(&stack, &alice, StatusCode::FOUND, Duration::from_secs(2)).await;
    println!("alice refused on both replicas {took:?} after the IdP's logout");
    assert!(
        statuses(&stack, &bob, 10)
            .await
            .iter()
            .all(|s| *s == StatusCode::OK)
    );
}
