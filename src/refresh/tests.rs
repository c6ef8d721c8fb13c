//! Refresh in process: two replicas (two `App`s) over one store and one fake IdP whose
//! refresh tokens rotate and are spent by use, as oidc-provider's are.

use std::time::Duration;

use super::*;
use crate::core::Clock;
use crate::session::SessionLookup;
use crate::testing::{CONFIG, TestApp, user};

/// Lookups at `now` through both replicas, `n` each, all at once.
async fn burst(
    apps: &[Arc<crate::app::App>],
    id: SessionId,
    now: u64,
    n: usize,
) -> Vec<Option<Arc<Session>>> {
    let mut tasks = Vec::new();
    for i in 0..n * apps.len() {
        let sessions = apps[i % apps.len()].sessions.clone();
        tasks.push(tokio::spawn(async move {
            sessions.session(&id, now).await.unwrap()
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn fifty_requests_on_two_replicas_at_expiry_make_one_refresh() {
    let t = TestApp::new(CONFIG);
    *t.idp.refresh_delay.lock().unwrap() = Duration::from_millis(300);
    let s = t.signed_in_session(user("alice@example.com", &[])).await;
    let old_token = t.app.sessions.refresh_token(&s).unwrap();
    let apps = [t.app.clone(), t.replica()];
    t.clock.advance(300); // the fake's tokens live 300 s: expired now
    let now = t.clock.now();
    assert_eq!(s.freshness(now), Freshness::Expired);

    let answers = burst(&apps, s.id, now, 25).await;
    assert_eq!(t.idp.refreshes(), 1, "exactly one refresh for 50 requests");
    for a in &answers {
        let a = a.as_ref().expect("every request keeps the session");
        assert_eq!(a.version, 2, "every request saw the refreshed record");
        assert_eq!(a.freshness(now), Freshness::Fresh);
    }
    let stored = t.store.get(&s.id, now).await.unwrap().unwrap();
    let new_token = t.app.sessions.refresh_token(&stored).unwrap();
    assert_ne!(new_token, old_token, "rotated");
    assert_eq!(
        t.app.metrics.refresh.refreshed.get() + apps[1].metrics.refresh.refreshed.get(),
        1
    );
}

#[tokio::test]
async fn a_session_outlives_many_token_lifetimes_without_a_new_sign_in() {
    let t = TestApp::new(CONFIG);
    t.idp
        .expires_in
        .store(20, std::sync::atomic::Ordering::SeqCst);
    let s = t.signed_in_session(user("alice@example.com", &[])).await;
    let replica = t.replica();
    for round in 1..=10u64 {
        t.clock.advance(20);
        let now = t.clock.now();
        // Alternate replicas: each refresh spends the token the other one stored.
        let app = if round % 2 == 0 { &t.app } else { &replica };
        let got = app.sessions.session(&s.id, now).await.unwrap();
        assert_eq!(got.map(|g| g.version), Some(round + 1), "round {round}");
    }
    assert_eq!(t.idp.refreshes(), 10);
    assert_eq!(t.idp.finishes(), 0, "no new sign-in");
}

#[tokio::test]
async fn a_refresh_starts_before_expiry_without_holding_the_request() {
    let t = TestApp::new(CONFIG);
    *t.idp.refresh_delay.lock().unwrap() = Duration::from_millis(200);
    let s = t.signed_in_session(user("alice@example.com", &[])).await;
    t.clock.advance(300 - 30); // in the last quarter (capped at 60 s)
    let now = t.clock.now();
    assert_eq!(s.freshness(now), Freshness::RefreshSoon);
    let started = std::time::Instant::now();
    let got = t.app.sessions.session(&s.id, now).await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_millis(100), "not held");
    assert_eq!(got.version, 1, "the session as it was");
    // Other requests meanwhile start nothing more.
    for _ in 0..5 {
        t.app.sessions.session(&s.id, now).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(t.idp.refreshes(), 1);
    assert_eq!(t.store.get(&s.id, now).await.unwrap().unwrap().version, 2);
}

#[tokio::test]
async fn a_refused_refresh_ends_the_session_for_the_request_that_found_it() {
    let t = TestApp::new(CONFIG);
    let s = t.signed_in_session(user("alice@example.com", &[])).await;
    t.idp.revoke_refresh_tokens();
    t.clock.advance(300);
    let now = t.clock.now();
    assert!(t.app.sessions.session(&s.id, now).await.unwrap().is_none());
    assert!(
        t.store.get(&s.id, now).await.unwrap().is_none(),
        "removed from the store"
    );
    assert_eq!(t.app.metrics.refresh.refused.get(), 1);
}

#[tokio::test]
async fn an_unreachable_idp_signs_nobody_out_and_is_retried_later() {
    let t = TestApp::new(CONFIG);
    let s = t.signed_in_session(user("alice@example.com", &[])).await;
    *t.idp.fail_next_refresh.lock().unwrap() = Some(OidcError::Unreachable {
        endpoint: "token",
        detail: "connection refused".into(),
    });
    t.clock.advance(300);
    let now = t.clock.now();
    let got = t.app.sessions.session(&s.id, now).await.unwrap();
    assert_eq!(got.map(|g| g.version), Some(1), "goes on as it is");
    assert_eq!(t.app.metrics.refresh.failed.get(), 1);
    // No new attempt before the retry time, then one that works.
    t.app.sessions.session(&s.id, now + 1).await.unwrap();
    assert_eq!(t.idp.refreshes(), 1);
    let later = now + RETRY_AFTER_SECS;
    let got = t.app.sessions.session(&s.id, later).await.unwrap();
    assert_eq!(got.map(|g| g.version), Some(2));
    assert_eq!(t.idp.refreshes(), 2);
}

#[tokio::test]
async fn the_lock_is_kept_through_a_refresh_slower_than_its_lease() {
    let t = TestApp::new(CONFIG);
    // Slower than the lease: without renewal the lock would lapse mid-refresh and the
    // other replica would spend the same token.
    *t.idp.refresh_delay.lock().unwrap() = LEASE + LEASE / 2;
    let s = t.signed_in_session(user("alice@example.com", &[])).await;
    let replica = t.replica();
    t.clock.advance(300);
    let now = t.clock.now();
    let first = t.app.sessions.start(Arc::new(s.clone()), now);
    tokio::time::sleep(LEASE + LEASE / 4).await;
    let second = replica.sessions.start(Arc::new(s.clone()), now);
    for mut rx in [first, second] {
        let done = rx.wait_for(Option::is_some).await.unwrap().clone().unwrap();
        assert_eq!(done.unwrap().unwrap().version, 2);
    }
    assert_eq!(t.idp.refreshes(), 1, "the token was spent once");
}

#[tokio::test]
async fn a_refresh_updates_the_user_and_keeps_the_idp_session() {
    let t = TestApp::new(CONFIG);
    let s = t.signed_in_session(user("alice@example.com", &[])).await;
    t.clock.advance(300);
    let now = t.clock.now();
    let got = t.app.sessions.session(&s.id, now).await.unwrap().unwrap();
    assert_eq!(got.idp_sid(), s.idp_sid());
    assert_eq!(got.user, s.user);
    let g = got.idp.as_ref().unwrap();
    assert_eq!(g.access_expires_at, t.clock.now() + 300);
    assert!(g.refresh_at < g.access_expires_at && g.refresh_at > now);
}
