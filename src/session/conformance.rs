//! The [`SessionStore`] contract as a test, run against every store: the memory store in
//! its unit tests, the Redis store against a real `redis-server` (single node and Cluster).

use std::time::Duration;

use super::store::{Selector, SessionStore};
use crate::core::{IdpGrant, Session, User};

/// A session of `subject` (with `email`, verified) from `now` for `life` seconds.
pub fn session(subject: &str, email: Option<&str>, now: u64, life: u64) -> Session {
    let user = User {
        subject: subject.into(),
        email: email.map(str::to_string),
        email_verified: email.is_some(),
        name: None,
        preferred_username: None,
        groups: vec!["staff".into()],
        claims: Vec::new(),
    };
    Session::new(user, now, life)
}

fn with_idp_sid(mut s: Session, sid: &str) -> Session {
    s.idp = Some(Box::new(IdpGrant {
        sid: Some(sid.into()),
        ..IdpGrant::default()
    }));
    s
}

/// Runs every case against `store`, which must be empty of the subjects used here (each
/// run picks fresh ones, so a shared Redis can be reused).
pub async fn run(store: &dyn SessionStore) {
    let now = crate::core::unix_now();
    let tag = crate::crypto::random_token(6);
    let alice = format!("alice-{tag}");
    let alice_email = format!("Alice-{tag}@Example.com");
    let bob = format!("bob-{tag}");

    // Put, get, expiry.
    let a1 = with_idp_sid(session(&alice, Some(&alice_email), now, 3600), "idp-1");
    let a2 = with_idp_sid(session(&alice, Some(&alice_email), now, 3600), "idp-2");
    let b1 = with_idp_sid(session(&bob, None, now, 3600), "idp-1");
    for s in [&a1, &a2, &b1] {
        store.put(s.clone()).await.unwrap();
    }
    let got = store.get(&a1.id, now).await.unwrap().expect("stored");
    assert_eq!(got.user, a1.user);
    assert_eq!(got.version, 1);
    assert_eq!(got.idp, a1.idp);
    assert!(
        store.get(&a1.id, now + 3600).await.unwrap().is_none(),
        "expired at expires_at"
    );
    let short = session(&bob, None, now, 2);
    store.put(short.clone()).await.unwrap();
    assert!(
        store.get(&short.id, now + 2).await.unwrap().is_none(),
        "expired"
    );
    store.remove(&short.id).await.unwrap();
    assert!(store.get_fresh(&a1.id, now).await.unwrap().is_some());

    // Compare-and-set on the version.
    let mut next = (*got).clone();
    next.version = 2;
    next.user.groups.push("refreshed".into());
    assert!(store.replace(next.clone()).await.unwrap(), "1 → 2");
    assert!(
        !store.replace(next.clone()).await.unwrap(),
        "2 → 2 is a lost race"
    );
    let mut stale = next.clone();
    stale.version = 4;
    assert!(!store.replace(stale).await.unwrap(), "2 → 4 skips one");
    let fresh = store.get_fresh(&a1.id, now).await.unwrap().unwrap();
    assert_eq!(fresh.version, 2);
    assert!(fresh.user.groups.contains(&"refreshed".to_string()));
    // A refresh that brings a new email: the session is found by it.
    let mut renamed = (*fresh).clone();
    renamed.version = 3;
    let new_email = format!("renamed-{tag}@example.com");
    renamed.user.email = Some(new_email.clone());
    assert!(store.replace(renamed).await.unwrap());
    let found = store.list(Some(&new_email), now).await.unwrap();
    assert_eq!(found.iter().map(|s| s.id).collect::<Vec<_>>(), vec![a1.id]);
    let mut back = (*store.get_fresh(&a1.id, now).await.unwrap().unwrap()).clone();
    back.version = 4;
    back.user.email = Some(alice_email.clone());
    assert!(store.replace(back).await.unwrap());
    let ghost = session(&bob, None, now, 60);
    let mut ghost2 = ghost.clone();
    ghost2.version = 2;
    assert!(
        !store.replace(ghost2).await.unwrap(),
        "no record is created by replace"
    );

    // Listing, by subject, by email in any case, and everyone.
    let mut ids: Vec<_> = store
        .list(Some(&alice), now)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id.encode())
        .collect();
    ids.sort();
    let mut want = vec![a1.id.encode(), a2.id.encode()];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(
        store
            .list(Some(&alice_email.to_uppercase()), now)
            .await
            .unwrap()
            .len(),
        2
    );
    let all = store.list(None, now).await.unwrap();
    for s in [&a1, &a2, &b1] {
        assert!(all.iter().any(|x| x.id == s.id), "everyone's list");
    }

    // Revocation by IdP session and subject: only bob's session of idp-1.
    let ended = store
        .revoke(
            Selector::IdpSession {
                sid: "idp-1",
                sub: Some(&bob),
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(ended.iter().map(|s| s.id).collect::<Vec<_>>(), vec![b1.id]);
    assert!(store.get(&b1.id, now).await.unwrap().is_none());
    assert!(store.get(&a1.id, now).await.unwrap().is_some());
    // By IdP session alone.
    let ended = store
        .revoke(
            Selector::IdpSession {
                sid: "idp-2",
                sub: None,
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(ended.iter().map(|s| s.id).collect::<Vec<_>>(), vec![a2.id]);
    // By user (email, another case), and by session.
    let a3 = session(&alice, Some(&alice_email), now, 3600);
    store.put(a3.clone()).await.unwrap();
    let ended = store
        .revoke(Selector::User(&alice_email.to_lowercase()), now)
        .await
        .unwrap();
    assert_eq!(ended.len(), 2, "a1 and a3");
    for s in [&a1, &a3] {
        assert!(store.get(&s.id, now).await.unwrap().is_none());
        assert!(store.get_fresh(&s.id, now).await.unwrap().is_none());
    }
    // By subject only: an email equal to the subject is no match.
    let c1 = session(&format!("carol-{tag}"), Some(&alice), now, 3600);
    store.put(c1.clone()).await.unwrap();
    assert!(
        store
            .revoke(Selector::Subject(&alice), now)
            .await
            .unwrap()
            .is_empty()
    );
    let ended = store
        .revoke(Selector::Subject(&c1.user.subject), now)
        .await
        .unwrap();
    assert_eq!(ended.iter().map(|s| s.id).collect::<Vec<_>>(), vec![c1.id]);
    let b2 = session(&bob, None, now, 3600);
    store.put(b2.clone()).await.unwrap();
    let ended = store.revoke(Selector::Session(b2.id), now).await.unwrap();
    assert_eq!(ended.len(), 1);
    assert!(
        store
            .revoke(Selector::Session(b2.id), now)
            .await
            .unwrap()
            .is_empty(),
        "already gone"
    );
    let b3 = session(&bob, None, now, 3600);
    store.put(b3.clone()).await.unwrap();
    store.remove(&b3.id).await.unwrap();
    assert!(store.get(&b3.id, now).await.unwrap().is_none());
    assert!(store.list(Some(&bob), now).await.unwrap().is_empty());

    // Single use.
    let once = format!("once-{tag}");
    assert!(store.claim_once(&once, now + 60).await.unwrap());
    assert!(!store.claim_once(&once, now + 60).await.unwrap());

    // Locks: exclusive, renewable by the holder, released, and lapsing with the lease.
    let lock = format!("lock-{tag}");
    let lease = Duration::from_millis(300);
    assert!(store.lock(&lock, "r1", lease).await.unwrap());
    assert!(!store.lock(&lock, "r2", lease).await.unwrap(), "held");
    assert!(store.lock(&lock, "r1", lease).await.unwrap(), "renewed");
    store.unlock(&lock, "r2").await.unwrap();
    assert!(
        !store.lock(&lock, "r2", lease).await.unwrap(),
        "only the holder unlocks"
    );
    store.unlock(&lock, "r1").await.unwrap();
    assert!(store.lock(&lock, "r2", lease).await.unwrap(), "released");
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    assert!(store.lock(&lock, "r3", lease).await.unwrap(), "lapsed");
    store.unlock(&lock, "r3").await.unwrap();
}
