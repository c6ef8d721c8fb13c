//! Reloads in process: a config file on disk, a fake IdP, sessions in memory.

use std::sync::Arc;

use super::*;
use crate::app::Parts;
use crate::core::Session;
use crate::testing::{CONFIG, ConfigDir, FakeIdp, user};

struct Setup {
    dir: ConfigDir,
    path: PathBuf,
    live: Arc<Live>,
}

fn setup(yaml: &str) -> Setup {
    let dir = ConfigDir::new();
    let path = dir.dir.join("portcullis.yaml");
    std::fs::write(&path, yaml).unwrap();
    let config = config::load(&path).unwrap();
    let parts = Parts {
        store: Arc::new(crate::session::MemoryStore::default()),
        clock: Arc::new(crate::core::SystemClock),
        idp: Arc::new(FakeIdp::new()),
        metrics: Default::default(),
        draining: Default::default(),
    };
    let live = Live::new(Arc::new(App::with_parts(config, parts)));
    Setup { dir, path, live }
}

/// A session in the store and its cookie on `authority`.
async fn signed_in(live: &Live, authority: &str) -> (Session, String) {
    let app = live.app();
    let s = Session::new(user("bob@example.com", &[]), app.now(), 3600);
    app.store.put(s.clone()).await.unwrap();
    let set = app
        .cookies()
        .issue(s.id, authority, s.expires_at, app.now());
    (
        s,
        set.split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_string(),
    )
}

fn opens(live: &Live, cookie: &str, authority: &str) -> bool {
    let app = live.app();
    app.cookies().open(cookie, authority, app.now()).is_some()
}

#[tokio::test]
async fn a_valid_change_swaps_in_and_nobody_is_signed_out() {
    let s = setup(CONFIG);
    let (session, cookie) = signed_in(&s.live, "admin.localhost:8443").await;
    let before = s.live.app();
    assert!(before.routes().iter().any(|r| r.name == "admin"));
    // bob (no groups) becomes allowed on admin.
    std::fs::write(
        &s.path,
        CONFIG.replace(
            "policy: { groups: [admins] }",
            "policy: { any_authenticated_user: true }",
        ),
    )
    .unwrap();
    reload(&s.live, &s.path).await.unwrap();
    let after = s.live.app();
    assert!(!Arc::ptr_eq(&before, &after));
    assert!(
        Arc::ptr_eq(&before.store, &after.store),
        "the same sessions"
    );
    assert!(
        Arc::ptr_eq(&before.idp, &after.idp),
        "the IdP did not change: kept, discovered"
    );
    assert!(Arc::ptr_eq(&before.metrics, &after.metrics));
    assert!(opens(&s.live, &cookie, "admin.localhost:8443"));
    assert!(
        after
            .store
            .get(&session.id, after.now())
            .await
            .unwrap()
            .is_some()
    );
    let admin = after.routes().iter().find(|r| r.name == "admin").unwrap();
    assert!(matches!(
        admin
            .policy
            .evaluate(Some(&session.user), &Default::default()),
        crate::core::Verdict::Allow(_)
    ));
    // A change to the IdP's settings builds a new IdP (and discovers it before the swap).
    std::fs::write(
        &s.path,
        CONFIG.replace("client_id: portcullis", "client_id: other"),
    )
    .unwrap();
    reload(&s.live, &s.path).await.unwrap();
    assert!(!Arc::ptr_eq(&after.idp, &s.live.app().idp));
}

#[tokio::test]
async fn an_invalid_change_is_refused_with_check_configs_messages_and_the_old_one_serves() {
    let s = setup(CONFIG);
    let before = s.live.app();
    std::fs::write(
        &s.path,
        CONFIG
            .replace("  lifetime: 1h\n", "  lifetime: [1h]\n")
            .replace("https://app.localhost:8443", "not a url"),
    )
    .unwrap();
    let Err(ReloadError::Config(errors)) = reload(&s.live, &s.path).await else {
        panic!("accepted a broken config")
    };
    let text = errors.to_string();
    assert!(
        text.contains("cookie.lifetime") && text.contains("routes[0].from"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{}:", s.path.display())),
        "with the file and line: {text}"
    );
    assert!(Arc::ptr_eq(&before, &s.live.app()), "the old config serves");
}

#[tokio::test]
async fn the_cookie_secret_rotates_without_signing_anyone_out() {
    let s = setup(CONFIG);
    let (_, old_cookie) = signed_in(&s.live, "app.localhost:8443").await;
    // Step 1: a new secret seals, the old one still opens.
    std::fs::rename(s.dir.dir.join("cookie"), s.dir.dir.join("cookie.old")).unwrap();
    std::fs::write(
        s.dir.dir.join("cookie"),
        "fedcba9876543210fedcba9876543210\n",
    )
    .unwrap();
    let rotating = CONFIG.replace(
        "  secret_file: cookie\n",
        "  secret_file: cookie\n  previous_secret_files: [cookie.old]\n",
    );
    std::fs::write(&s.path, &rotating).unwrap();
    reload(&s.live, &s.path).await.unwrap();
    assert!(
        opens(&s.live, &old_cookie, "app.localhost:8443"),
        "old cookies still open"
    );
    let (_, new_cookie) = signed_in(&s.live, "app.localhost:8443").await;
    // Step 2, once the old cookies have expired: the old secret goes.
    std::fs::write(&s.path, CONFIG).unwrap();
    reload(&s.live, &s.path).await.unwrap();
    assert!(opens(&s.live, &new_cookie, "app.localhost:8443"));
    assert!(
        !opens(&s.live, &old_cookie, "app.localhost:8443"),
        "the old secret is retired"
    );
}

#[tokio::test]
async fn the_signing_key_rotates_publish_first_then_sign() {
    let s = setup(CONFIG);
    let old_kid = s.live.app().tokens().minter().keys().kid().to_string();
    std::fs::write(
        s.dir.dir.join("next.pem"),
        crate::identity::generate_pkcs8_pem(),
    )
    .unwrap();
    // Publish the next key while still signing with the current one.
    std::fs::write(
        &s.path,
        format!("{CONFIG}published_key_files: [next.pem]\n"),
    )
    .unwrap();
    reload(&s.live, &s.path).await.unwrap();
    let app = s.live.app();
    assert_eq!(app.tokens().minter().keys().kid(), old_kid);
    let jwks: serde_json::Value = serde_json::from_str(&app.jwks.json).unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    // Then sign with it, still publishing the old one.
    std::fs::rename(s.dir.dir.join("key.pem"), s.dir.dir.join("old.pem")).unwrap();
    std::fs::rename(s.dir.dir.join("next.pem"), s.dir.dir.join("key.pem")).unwrap();
    std::fs::write(&s.path, format!("{CONFIG}published_key_files: [old.pem]\n")).unwrap();
    reload(&s.live, &s.path).await.unwrap();
    let app = s.live.app();
    assert_ne!(app.tokens().minter().keys().kid(), old_kid);
    let jwks: serde_json::Value = serde_json::from_str(&app.jwks.json).unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.len() == 2,
        "{kids:?}"
    );
}

#[tokio::test]
async fn a_changed_file_is_noticed_and_counted() {
    let s = setup(CONFIG);
    let files = s.live.app().files.clone();
    assert!(
        files.contains(&s.path) && files.iter().any(|f| f.ends_with("key.pem")),
        "{files:?}"
    );
    let watcher = Watcher::new(s.path.clone(), files).poll_every(Duration::from_millis(20));
    let before = s.live.app();
    // A secret file the config names, not the config itself, changed before the watcher
    // even runs (as when it changes while portcullis starts): still a change.
    std::fs::write(
        s.dir.dir.join("cookie"),
        "00112233445566778899aabbccddeeff\n",
    )
    .unwrap();
    let watcher = tokio::spawn(watcher.run(s.live.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while Arc::ptr_eq(&before, &s.live.app()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !Arc::ptr_eq(&before, &s.live.app()),
        "reloaded on the secret's change"
    );
    // A broken config: refused and counted, the last good one serves.
    let good = s.live.app();
    std::fs::write(&s.path, "routes: 5\n").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !good
        .metrics
        .encode()
        .contains(r#"portcullis_config_reloads_total{kind="refused"} 1"#)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = good.metrics.encode();
    assert!(
        metrics.contains(r#"portcullis_config_reloads_total{kind="refused"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"portcullis_config_reloads_total{kind="ok"} 1"#),
        "{metrics}"
    );
    assert!(Arc::ptr_eq(&good, &s.live.app()));
    watcher.abort();
}
