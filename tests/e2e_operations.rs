//! Operating portcullis on the real stack (Envoy, the dev IdP, portcullis): the cookie
//! secret and the signing key rotated by hot reload, as README.md's "Key rotation" says,
//! while signed-in requests keep flowing; and the metrics endpoint scraped over HTTP.
//!
//! Tier `stack`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::COOKIE;
use serde_json::Value;
use testkit::bench::stats::{metric_labeled, metric_sum, metric_value};
use testkit::grafana::{jose_verify, keygen, kid_of, kids, public_key_file};
use testkit::portcullis::{with_cookie_secrets, with_keys};
use testkit::{Browser, EchoRequest, Stack, send};

const IDENTITY_HEADER: &str = "x-portcullis-jwt-assertion";

/// Concurrent clients looping requests during the rotation.
const LOAD_CLIENTS: usize = 4;

/// The metrics endpoint's text.
async fn scrape(stack: &Stack) -> String {
    assert_ne!(stack.ports.metrics, 0, "the stack has no metrics listener");
    let url = format!("http://127.0.0.1:{}/metrics", stack.ports.metrics);
    let response = reqwest::get(&url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), StatusCode::OK, "GET {url}");
    response.text().await.unwrap()
}

/// `portcullis_config_reloads_total{kind=KIND}`.
fn reloads(metrics: &str, kind: &str) -> f64 {
    metric_labeled(
        metrics,
        "portcullis_config_reloads_total",
        &format!("kind=\"{kind}\""),
    )
}

/// Applies `edit` to the config file and waits until portcullis has reloaded it (the
/// `ok` reload count reaching `n`, none refused). Returns when that was seen.
async fn edit_and_reload(stack: &Stack, n: f64, edit: impl FnOnce(&str) -> String) -> Instant {
    stack.edit_config(edit);
    until_reloads(stack, n, 0.0).await
}

/// Waits (up to 10 s: the reloader looks every 2 s) until the reload counts are `ok` and
/// `refused`, failing at once if either goes past. Returns when they were seen.
async fn until_reloads(stack: &Stack, ok: f64, refused: f64) -> Instant {
    let started = Instant::now();
    loop {
        let metrics = scrape(stack).await;
        let now = (reloads(&metrics, "ok"), reloads(&metrics, "refused"));
        assert!(
            now.0 <= ok && now.1 <= refused,
            "more reloads than config changes: {now:?}, expected {:?}",
            (ok, refused)
        );
        if now == (ok, refused) {
            return Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "reloads not at {:?} within 10 s: {now:?}",
            (ok, refused)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A secret file as the README makes one: 32 random bytes, base64, mode 0600.
fn new_cookie_secret(stack: &Stack, name: &str) {
    let value = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(testkit::random_bytes(32))
    };
    stack.note_secret(&value);
    let path = stack.dir.join("secrets").join(name);
    fs::write(&path, format!("{value}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// One request of the load: when it was sent, and what came back.
struct Sample {
    sent: Instant,
    status: Option<StatusCode>,
    /// The identity JWT the upstream received, or why there is none.
    token: Result<String, String>,
}

/// Loops GET app/ with `cookie` (a fixed header: the session as it was sealed, whatever
/// the answers set) until `stop`, recording every request.
async fn load_client(
    browser: Browser,
    url: String,
    cookie: String,
    stop: Arc<AtomicBool>,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let sample = match browser.get(&url).header(COOKIE, &cookie).send().await {
            Err(e) => Sample {
                sent,
                status: None,
                token: Err(format!("transport: {e}")),
            },
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                let token = serde_json::from_str::<Value>(&body)
                    .map_err(|e| format!("not the echo's JSON ({e}): {body:.200}"))
                    .and_then(|v| {
                        EchoRequest::from_json(&v)
                            .header(IDENTITY_HEADER)
                            .map(str::to_string)
                            .ok_or_else(|| "no identity header".to_string())
                    });
                Sample {
                    sent,
                    status: Some(status),
                    token,
                }
            }
        };
        samples.push(sample);
    }
    samples
}

/// The README's two rotations, done on a running stack while alice's session is used by
/// concurrent clients: no request fails, old sessions keep working through the cookie
/// rotation, tokens switch to the new key at step 2, the JWKS follows the three steps, and
/// every reload is counted.
#[tokio::test]
#[ignore = "tier stack: needs Envoy, the dev IdP (node, examples/demo/node_modules) and openssl; run scripts/test"]
async fn cookie_secret_and_signing_key_rotate_under_load_without_a_failed_request() {
    // Library traces of every h2 frame on two cores would hold Checks past Envoy's 1 s
    // ext_authz timeout: a 503 that is the log's doing, not the rotation's.
    let stack = Stack::builder()
        .metrics_listener()
        .quiet_libraries()
        .start()
        .await;
    // The stack's own reload (of the config with the ports bound) is done; count from it.
    let base = reloads(&scrape(&stack).await, "ok");
    let app_url = stack.url("app", "/");
    let audience = stack.authority("app");
    let alice = stack.browser();
    stack.sign_in(&alice, "alice").await;
    let alice_cookie = alice
        .cookie_header(&app_url)
        .expect("alice has cookies for the app");
    let jwks0 = stack.jwks().await;
    let old_kid = kids(&jwks0).pop().expect("one key");
    assert_eq!(kids(&jwks0), std::slice::from_ref(&old_kid));

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..LOAD_CLIENTS)
        .map(|_| {
            tokio::spawn(load_client(
                Browser::new(stack.ports.envoy, &stack.certs.ca),
                app_url.clone(),
                alice_cookie.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let pause = || tokio::time::sleep(Duration::from_secs(1));
    pause().await;

    // The cookie secret: the new one current, the old one previous.
    new_cookie_secret(&stack, "cookie_secret_2");
    let cookie_rotated = edit_and_reload(&stack, base + 1.0, |c| {
        with_cookie_secrets(c, "secrets/cookie_secret_2", &["secrets/cookie_secret"])
    })
    .await;
    // A sign-in after it (under the load): its cookies are sealed with the new secret,
    // which the end of the test proves by dropping the old one.
    let bob = stack.browser();
    stack.sign_in(&bob, "bob").await;

    // The signing key, step 1: publish the new key, keep signing with the old one.
    let old_key = stack.dir.join("secrets/signing_key.pem");
    let next_key = stack.dir.join("secrets/next_key.pem");
    keygen(&next_key);
    for line in fs::read_to_string(&next_key).unwrap().lines() {
        stack.note_secret(line);
    }
    public_key_file(&next_key);
    public_key_file(&old_key);
    edit_and_reload(&stack, base + 2.0, |c| {
        with_keys(c, "secrets/signing_key.pem", &["secrets/next_key.pub.pem"])
    })
    .await;
    let jwks1 = stack.jwks().await;
    let new_kid = kids(&jwks1)
        .into_iter()
        .find(|k| *k != old_kid)
        .unwrap_or_else(|| panic!("step 1 publishes a second key: {jwks1}"));
    assert_eq!(kids(&jwks1), [old_kid.clone(), new_kid.clone()]);
    pause().await;

    // Step 2: sign with the new key, keep publishing the old one.
    let before_step2 = Instant::now();
    let step2 = edit_and_reload(&stack, base + 3.0, |c| {
        with_keys(c, "secrets/next_key.pem", &["secrets/signing_key.pub.pem"])
    })
    .await;
    let jwks2 = stack.jwks().await;
    assert_eq!(kids(&jwks2), [new_kid.clone(), old_kid.clone()]);
    pause().await;

    // `systemctl reload`: SIGHUP with nothing changed is a reload too.
    stack.reload_portcullis();
    until_reloads(&stack, base + 4.0, 0.0).await;

    // Step 3: drop the old key.
    let step3 = edit_and_reload(&stack, base + 5.0, |c| {
        with_keys(c, "secrets/next_key.pem", &[])
    })
    .await;
    assert_eq!(kids(&stack.jwks().await), std::slice::from_ref(&new_kid));
    pause().await;

    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for client in clients {
        samples.extend(client.await.expect("a load client panicked"));
    }

    // Every request, whenever it was sent, reached the app as alice.
    let failed: Vec<String> = samples
        .iter()
        .filter(|s| s.status != Some(StatusCode::OK) || s.token.is_err())
        .map(|s| format!("{:?}: {:?}", s.status, s.token.as_ref().err()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rotation, e.g. {:?}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(5)]
    );
    let after = |t: Instant| samples.iter().filter(|s| s.sent > t).count();
    assert!(
        after(step3) > 0 && after(cookie_rotated) > after(step2) && after(step2) > after(step3),
        "the load ran through every step ({} requests; {} after the cookie rotation, {} after step 2, {} after step 3)",
        samples.len(),
        after(cookie_rotated),
        after(step2),
        after(step3)
    );

    // Each distinct token is valid (jose, against the JWKS that held both keys) and names
    // alice; it carries the old kid until step 2 was written and the new one once it was
    // swapped in.
    let mut kid_by_token: BTreeMap<&str, String> = BTreeMap::new();
    for s in &samples {
        let token = s.token.as_deref().unwrap();
        if !kid_by_token.contains_key(token) {
            let verified = jose_verify(&stack.dir, &jwks2, token, &audience)
                .unwrap_or_else(|e| panic!("an identity JWT of the load does not verify: {e}"));
            assert_eq!(
                verified["payload"]["email"], "alice@example.com",
                "{verified}"
            );
            kid_by_token.insert(token, kid_of(token));
        }
    }
    let kid = |s: &Sample| &kid_by_token[s.token.as_deref().unwrap()];
    let (mut old_before, mut new_after) = (0, 0);
    for s in &samples {
        if s.sent < before_step2 {
            assert_eq!(
                *kid(s),
                old_kid,
                "a token signed with the new key before step 2"
            );
            old_before += 1;
        } else if s.sent > step2 {
            assert_eq!(
                *kid(s),
                new_kid,
                "a token signed with the old key after step 2"
            );
            new_after += 1;
        }
    }
    assert!(
        old_before > 0 && new_after > 0,
        "{old_before} old, {new_after} new"
    );

    // The end of the cookie rotation: the old secret dropped. alice's session, sealed
    // with it, no longer opens (so the secret really changed); bob's, sealed after the
    // rotation, does (so new sign-ins were sealed with the new secret).
    edit_and_reload(&stack, base + 6.0, |c| {
        with_cookie_secrets(c, "secrets/cookie_secret_2", &[])
    })
    .await;
    let response = send(
        Browser::new(stack.ports.envoy, &stack.certs.ca)
            .get(&app_url)
            .header(COOKIE, &alice_cookie),
    )
    .await;
    assert_eq!(
        response.status(),
        StatusCode::FOUND,
        "a cookie sealed with a dropped secret is not a session"
    );
    let response = send(bob.get(&app_url)).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "bob's session was sealed with the new secret"
    );

    let metrics = scrape(&stack).await;
    assert_eq!(
        (reloads(&metrics, "ok"), reloads(&metrics, "refused")),
        (base + 6.0, 0.0)
    );
    assert_eq!(metric_sum(&metrics, "portcullis_sign_ins_total"), 2.0);
    let allowed = metric_value(
        &metrics,
        "portcullis_check_decisions_total{route=\"app\",outcome=\"allow\"}",
    );
    assert!(
        allowed >= Some(samples.len() as f64),
        "{allowed:?} allowed decisions for {} requests",
        samples.len()
    );
    eprintln!(
        "{} requests by {LOAD_CLIENTS} clients through 6 reloads, none failed; {} distinct tokens",
        samples.len(),
        kid_by_token.len()
    );
}

/// The documented metric families on `server.metrics_address` of the running stack, with
/// the values of what this test did: decisions by route and outcome, Check times, IdP calls
/// and their errors, sign-ins and sign-outs, live sessions, reloads and the build.
#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn the_metrics_endpoint_counts_what_happened() {
    let stack = Stack::builder().metrics_listener().start().await;
    let metrics = scrape(&stack).await;
    // The stack's own reload (of the config with the ports bound) is done; count from it.
    let base = reloads(&metrics, "ok");
    for (family, kind) in [
        ("portcullis_check_duration_seconds", "histogram"),
        ("portcullis_check_decisions", "counter"),
        ("portcullis_idp_request_duration_seconds", "histogram"),
        ("portcullis_idp_errors", "counter"),
        ("portcullis_sign_ins", "counter"),
        ("portcullis_sign_in_failures", "counter"),
        ("portcullis_sign_outs", "counter"),
        ("portcullis_sessions", "gauge"),
        ("portcullis_idp_up", "gauge"),
        ("portcullis_config_reloads", "counter"),
        ("portcullis_build_info", "gauge"),
    ] {
        assert!(
            metrics.contains(&format!("\n# TYPE {family} {kind}\n")),
            "no {kind} {family} in:\n{metrics}"
        );
    }
    let value = |metrics: &str, series: &str| {
        metric_value(metrics, series).unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
    };
    assert_eq!(
        value(
            &metrics,
            &format!(
                "portcullis_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    // Every route × outcome exists from the start, at 0.
    for route in ["app", "admin"] {
        for outcome in ["allow", "sign_in_required", "forbidden"] {
            let series = format!(
                "portcullis_check_decisions_total{{route=\"{route}\",outcome=\"{outcome}\"}}"
            );
            assert_eq!(value(&metrics, &series), 0.0, "{series}");
        }
    }
    assert_eq!(value(&metrics, "portcullis_sessions"), 0.0);
    assert_eq!(
        value(&metrics, "portcullis_idp_up"),
        1.0,
        "discovered and answering"
    );
    assert_eq!(value(&metrics, "portcullis_sign_ins_total"), 0.0);
    assert_eq!(
        value(&metrics, "portcullis_idp_request_duration_seconds_count"),
        0.0
    );

    let alice = stack.browser();
    stack.sign_in(&alice, "alice").await;
    let bob = stack.browser();
    stack.sign_in(&bob, "bob").await;
    // bob's first visit to admin: the hop that gives him its cookie, then the refusal.
    let (response, visited) = bob.follow(&stack.url("admin", "/")).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN, "{visited:?}");
    let signed_in = scrape(&stack).await;
    assert_eq!(value(&signed_in, "portcullis_sign_ins_total"), 2.0);
    assert_eq!(value(&signed_in, "portcullis_sessions"), 2.0);
    // Each sign-in is one call to the IdP (the code exchange, with UserInfo).
    assert_eq!(
        value(&signed_in, "portcullis_idp_request_duration_seconds_count"),
        2.0
    );

    // Known decisions, counted exactly (nothing else sends Checks meanwhile).
    const ALLOWED: usize = 25;
    for _ in 0..ALLOWED {
        let response = send(alice.get(&stack.url("app", "/"))).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = send(bob.get(&stack.url("admin", "/"))).await;
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "bob is not an admin"
    );
    let response = send(stack.browser().get(&stack.url("app", "/"))).await;
    assert_eq!(
        response.status(),
        StatusCode::FOUND,
        "no session: to the sign-in"
    );
    let after = scrape(&stack).await;
    let delta = |series: &str| value(&after, series) - value(&signed_in, series);
    for (series, want) in [
        (
            "portcullis_check_decisions_total{route=\"app\",outcome=\"allow\"}",
            ALLOWED,
        ),
        (
            "portcullis_check_decisions_total{route=\"admin\",outcome=\"forbidden\"}",
            1,
        ),
        (
            "portcullis_check_decisions_total{route=\"app\",outcome=\"sign_in_required\"}",
            1,
        ),
        (
            "portcullis_check_decisions_total{route=\"admin\",outcome=\"allow\"}",
            0,
        ),
        ("portcullis_check_duration_seconds_count", ALLOWED + 2),
    ] {
        assert_eq!(delta(series), want as f64, "{series}");
    }
    assert_eq!(
        delta("portcullis_check_duration_seconds_bucket{le=\"+Inf\"}"),
        (ALLOWED + 2) as f64
    );
    assert!(delta("portcullis_check_duration_seconds_sum") > 0.0);

    // A callback with a code the IdP never issued (the state is this browser's own): one
    // failed IdP call, counted by cause, and a failed sign-in.
    let carol = stack.browser();
    let (_, visited) = carol
        .follow_until(&stack.url("app", "/"), |u| stack.is_idp(u))
        .await;
    let authorize = visited
        .last()
        .filter(|u| stack.is_idp(u))
        .unwrap_or_else(|| panic!("the sign-in did not reach the IdP: {visited:?}"));
    let param = |name: &str| {
        authorize
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("no {name} in {authorize}"))
    };
    let mut callback = reqwest::Url::parse(&param("redirect_uri")).unwrap();
    callback
        .query_pairs_mut()
        .append_pair("code", "a-code-the-idp-never-issued")
        .append_pair("state", &param("state"));
    let response = send(carol.get(callback.as_str())).await;
    assert!(
        response.status().is_client_error() || response.status().is_server_error(),
        "a made-up code signs nobody in: {}",
        response.status()
    );
    let failed = scrape(&stack).await;
    assert_eq!(
        value(
            &failed,
            "portcullis_idp_errors_total{kind=\"invalid_grant\"}"
        ),
        1.0
    );
    assert_eq!(value(&failed, "portcullis_sign_in_failures_total"), 1.0);
    assert_eq!(value(&failed, "portcullis_sign_ins_total"), 2.0);
    assert_eq!(
        value(&failed, "portcullis_idp_request_duration_seconds_count"),
        3.0
    );

    // bob signs out: one sign-out, one session left.
    let (response, visited) = stack.sign_out(&bob, "app").await;
    assert_eq!(response.status(), StatusCode::OK, "{visited:?}");
    let signed_out = scrape(&stack).await;
    assert_eq!(value(&signed_out, "portcullis_sign_outs_total"), 1.0);
    assert_eq!(value(&signed_out, "portcullis_sessions"), 1.0);

    // Reloads: an invalid config is refused (and the old one serves), SIGHUP reloads.
    let good = fs::read_to_string(&stack.config).unwrap();
    stack.edit_config(|c| format!("{c}no_such_key: 1\n"));
    until_reloads(&stack, base, 1.0).await;
    let response = send(alice.get(&stack.url("app", "/"))).await;
    assert_eq!(response.status(), StatusCode::OK, "the old config serves");
    stack.edit_config(|_| good);
    until_reloads(&stack, base + 1.0, 1.0).await;
    stack.reload_portcullis();
    until_reloads(&stack, base + 2.0, 1.0).await;
}
