//! What the fuzz targets share: one configured [`App`] with a signed-in session, built once
//! per process, and the values an attacker cannot forge (the session cookie, a Cockpit
//! token) so that the targets can assert that nothing else opens a door.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use portcullis::app::{App, Parts};
use portcullis::config::{self, Config};
use portcullis::core::{Session, SystemClock, User, unix_now as now};
use portcullis::identity::generate_pkcs8_pem;
use portcullis::session::{MemoryStore, SessionStore};
use portcullis::testing::FakeIdp;

pub const APP: &str = "app.localhost:8443";
pub const ADMIN: &str = "admin.localhost:8443";
pub const APPS: &str = "apps.localhost:8443";
pub const COCKPIT: &str = "cockpit.localhost:8443";
pub const PUBLIC: &str = "public.localhost:8443";
pub const AUTH: &str = "auth.localhost:8443";
/// Every route host.
pub const ROUTE_HOSTS: [&str; 5] = [APP, ADMIN, APPS, COCKPIT, PUBLIC];
/// Every host the fixture's session has a cookie on, in the order of [`Fixture::cookies`].
pub const HOSTS: [&str; 6] = [APP, ADMIN, APPS, COCKPIT, PUBLIC, AUTH];

/// How long the fixture's session lives: longer than any fuzzing run, so that a run of
/// hours still exercises the signed-in paths.
const SESSION_SECS: u64 = 30 * 24 * 3600;

/// Every kind of route: any user, a group, a path prefix with email and domain rules (and
/// the lenient route of its host behind it), Cockpit, and a public route.
pub const CONFIG: &str = r#"
authenticate_url: https://auth.localhost:8443
idp:
  issuer: http://127.0.0.1:9
  client_id: portcullis
  client_secret_file: client
  scopes: [openid, email, profile, groups]
cookie:
  secret_file: cookie
  lifetime: 1h
signing_key_file: key.pem
routes:
  - name: app
    from: https://app.localhost:8443
    to: http://127.0.0.1:9200
    policy: { any_authenticated_user: true }
  - name: admin
    from: https://admin.localhost:8443
    to: http://127.0.0.1:9200
    policy: { groups: [admins] }
  - name: sub
    from: https://apps.localhost:8443/admin/
    to: http://127.0.0.1:9300
    policy: { emails: [alice@example.com], domains: [corp.example] }
  - name: apps
    from: https://apps.localhost:8443
    to: http://127.0.0.1:9300
    policy: { groups: [nobody-has-this] }
  - name: cockpit
    from: https://cockpit.localhost:8443
    to: http://127.0.0.1:9090
    policy: { any_authenticated_user: true }
    cockpit: {}
  - name: public
    from: https://public.localhost:8443
    to: http://127.0.0.1:9400
    policy: { public: true }
"#;

pub struct Fixture {
    pub dir: PathBuf,
    pub app: Arc<App>,
    pub runtime: tokio::runtime::Runtime,
    /// `Cookie` header value (`name=value`) of alice's session on [`APP`].
    pub app_cookie: String,
    /// The same session's cookie on [`COCKPIT`].
    pub cockpit_cookie: String,
    /// The session's cookie (`name=value`) on each of [`HOSTS`], in that order.
    pub cookies: Vec<(&'static str, String)>,
    pub session: Session,
}

/// The process-wide fixture.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build)
}

/// A config directory holding the secret files [`CONFIG`] names. Kept for the process:
/// libFuzzer exits without running destructors.
pub fn config_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("portcullis-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key.pem"), generate_pkcs8_pem()).unwrap();
        std::fs::write(dir.join("cookie"), "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::write(dir.join("client"), "s3cret\n").unwrap();
        dir
    })
}

pub fn config() -> Config {
    config::parse(CONFIG, config_dir()).expect("the fuzz config is valid")
}

fn build() -> Fixture {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The fake IdP is ready at once, so the auth host's sign-in and callback are reached.
    let app = Arc::new(App::with_parts(
        config(),
        Parts {
            store: Arc::new(MemoryStore::default()) as Arc<dyn SessionStore>,
            clock: Arc::new(SystemClock),
            idp: Arc::new(FakeIdp::new()),
            metrics: Default::default(),
            draining: Default::default(),
        },
    ));
    let user = User {
        subject: "alice".into(),
        email: Some("alice@example.com".into()),
        email_verified: true,
        name: Some("Alice".into()),
        preferred_username: Some("alice".into()),
        groups: vec!["admins".into()],
        claims: Vec::new(),
    };
    let session = Session::new(user, now(), SESSION_SECS);
    let cookie = |authority: &str| {
        let set = app
            .cookies()
            .issue(session.id, authority, session.expires_at, now());
        set.split(';').next().unwrap().to_string()
    };
    let cookies: Vec<(&'static str, String)> = HOSTS.iter().map(|h| (*h, cookie(h))).collect();
    let (app_cookie, cockpit_cookie) = (cookie(APP), cookie(COCKPIT));
    runtime.block_on(app.store.put(session.clone())).unwrap();
    Fixture {
        dir: config_dir().clone(),
        app,
        runtime,
        app_cookie,
        cockpit_cookie,
        cookies,
        session,
    }
}

impl Fixture {
    /// Every session cookie value (without its name) the fixture issued, with its host:
    /// the only values that may ever open to a session.
    pub fn cookie_values(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.cookies.iter().map(|(h, c)| (*h, value_of(c))).chain([
            (APP, value_of(&self.app_cookie)),
            (COCKPIT, value_of(&self.cockpit_cookie)),
        ])
    }

    /// Puts the fixture's session back if a fuzz input signed it out (sign-out is reachable
    /// with the real cookie), so that every input sees the same signed-in state.
    pub fn restore_session(&self) {
        self.runtime.block_on(async {
            if self
                .app
                .store
                .get(&self.session.id, now())
                .await
                .ok()
                .flatten()
                .is_none()
            {
                self.app.store.put(self.session.clone()).await.unwrap();
            }
        });
    }
}

/// The value of a `name=value` cookie.
pub fn value_of(cookie: &str) -> &str {
    cookie.split_once('=').map_or("", |(_, v)| v)
}

/// Splits fuzz input into `n` fields at `0xff` bytes (never valid UTF-8, so a field
/// boundary cannot be confused with content); missing fields are empty.
pub fn fields(data: &[u8], n: usize) -> Vec<String> {
    let mut out: Vec<String> = data
        .splitn(n, |b| *b == 0xff)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    out.resize(n, String::new());
    out
}
