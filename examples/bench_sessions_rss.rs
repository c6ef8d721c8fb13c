//! Memory figure for `scripts/bench` and BENCHMARKS.md: the resident set of a portcullis
//! `App` holding N live sessions in the in-memory store.
//!
//! ```sh
//! cargo run --release --example bench_sessions_rss -- [--sessions 100000] [--jwt-cache]
//!     [--layout store|before] [--refresh]
//! ```
//!
//! Each session looks like one from the demo IdP: a UUID subject, email, name, username and
//! two groups. `--layout store` (the default) fills the real `MemoryStore`; `--layout before`
//! fills a plain map with the record portcullis kept until 2026-12 (the id as a `String`,
//! again as the map key, and a 900-byte ID token for `id_token_hint`), so that BENCHMARKS.md
//! can show both from one run. With `--jwt-cache` every session also gets one cached
//! identity JWT, as if each had made a request in the last 4 minutes. With `--refresh` every
//! session also holds what refresh and back-channel logout need, as a sign-in at the demo
//! IdP (oidc-provider) leaves it: the IdP's session id and a sealed 43-character refresh
//! token.
//!
//! Prints `key=value` lines (read by scripts/bench) after reading `VmRSS` from
//! /proc/self/status; with `--jwt-cache` also the mean time of one cache miss (sign and
//! insert) over the first and over the last 1000 sessions.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis::app::App;
use portcullis::app::Parts;
use portcullis::authorizer::TokenSource;
use portcullis::core::{Session, SessionId, User};
use portcullis::crypto::random_token;
use portcullis::identity::generate_pkcs8_pem;
use portcullis::session::{MemoryStore, SessionStore};

const NOW: u64 = 1_800_000_000;

/// The size of the demo IdP's ID tokens, which the record used to keep.
const BEFORE_ID_TOKEN_BYTES: usize = 900;

struct Args {
    sessions: usize,
    jwt_cache: bool,
    before: bool,
    refresh: bool,
}

/// `--layout before`: the session record as it was, for comparison.
#[allow(dead_code)] // only ever measured, never read
struct BeforeSession {
    id: String,
    user: User,
    id_token: Option<String>,
    created_at: u64,
    expires_at: u64,
}

fn parse_args() -> Args {
    let mut args = Args {
        sessions: 100_000,
        jwt_cache: false,
        before: false,
        refresh: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut number = || -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage(&format!("{flag} needs a number")))
        };
        match flag.as_str() {
            "--sessions" => args.sessions = number(),
            "--jwt-cache" => args.jwt_cache = true,
            "--refresh" => args.refresh = true,
            "--layout" => match it.next().as_deref() {
                Some("before") => args.before = true,
                Some("store") => args.before = false,
                _ => usage("--layout needs store or before"),
            },
            other => usage(&format!("unknown argument {other}")),
        }
    }
    args
}

fn usage(problem: &str) -> ! {
    eprintln!("bench_sessions_rss: {problem}");
    eprintln!(
        "usage: bench_sessions_rss [--sessions N] [--layout store|before] [--jwt-cache] [--refresh]"
    );
    std::process::exit(2)
}

/// `VmRSS` of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS in /proc/self/status")
        * 1024
}

fn user(i: usize) -> User {
    let uuid = {
        let h = format!(
            "{:032x}",
            (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
        );
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    };
    // Exact-size strings, like the ones decoded from the ID token's JSON (`format!` may
    // leave spare capacity, which would count against the current layout).
    let exact = |s: String| s.as_str().to_owned();
    User {
        subject: exact(uuid),
        email: Some(exact(format!("user{i:06}@example.com"))),
        email_verified: true,
        name: Some(exact(format!("User {i:06} Example"))),
        preferred_username: Some(exact(format!("user{i:06}"))),
        groups: vec!["staff".into(), exact(format!("team-{}", i % 50))],
        claims: Vec::new(),
    }
}

/// A session id derived from `i`, so that the sessions can be found again without keeping
/// a list of ids in memory.
fn session_id(i: usize) -> SessionId {
    SessionId::parse(&portcullis::crypto::sha256_b64(&(i as u64).to_le_bytes()))
        .expect("a SHA-256 digest is 32 bytes")
}

/// A JWT-shaped string of about `bytes` bytes: a header, claims like the demo IdP's, and
/// an RS256-sized signature, all unique per session (nothing shared between sessions).
fn id_token(u: &User, bytes: usize) -> String {
    let header = format!(
        r#"{{"alg":"RS256","typ":"JWT","kid":"{}"}}"#,
        random_token(32)
    );
    let claims = serde_json::json!({
        "sub": u.subject, "email": u.email, "email_verified": true, "name": u.name,
        "preferred_username": u.preferred_username, "groups": u.groups,
        "nonce": random_token(32), "at_hash": random_token(16), "sid": random_token(16),
        "aud": "portcullis", "exp": NOW + 3600, "iat": NOW, "iss": "http://127.0.0.1:9000",
    })
    .to_string();
    let mut token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims),
        random_token(256)
    );
    // Pad (inside the claims' alphabet) or cut to the requested size.
    while token.len() < bytes {
        token.push_str(&random_token(48));
    }
    // An exact-size allocation, like the string the token endpoint's JSON is decoded into.
    token[..bytes].to_owned()
}

/// Measures the record as it was, in a plain map (the store's own locking aside).
fn before(args: &Args) {
    let base = rss();
    let mut map: HashMap<String, Arc<BeforeSession>> = HashMap::new();
    for i in 0..args.sessions {
        let u = user(i);
        let id_token = Some(id_token(&u, BEFORE_ID_TOKEN_BYTES));
        let id = session_id(i).encode();
        let s = BeforeSession {
            id: id.clone(),
            user: u,
            id_token,
            created_at: NOW,
            expires_at: NOW + 8 * 3600,
        };
        map.insert(id, Arc::new(s));
    }
    let with_sessions = rss();
    assert_eq!(map.len(), args.sessions);
    println!("sessions={}", args.sessions);
    println!("layout=before");
    println!("rss_base_bytes={base}");
    println!("rss_with_sessions_bytes={with_sessions}");
    println!(
        "bytes_per_session={}",
        with_sessions.saturating_sub(base) / args.sessions.max(1) as u64
    );
}

fn main() {
    let args = parse_args();
    let dir = std::env::temp_dir().join(format!("portcullis-rss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    std::fs::write(dir.join("key.pem"), generate_pkcs8_pem()).expect("write key");
    std::fs::write(dir.join("cookie"), random_token(32)).expect("write cookie secret");
    std::fs::write(dir.join("client"), "s3cret").expect("write client secret");
    let yaml = r#"
authenticate_url: https://auth.example.com
idp: { issuer: "https://idp.example.com", client_id: portcullis, client_secret_file: client }
cookie: { secret_file: cookie, lifetime: 8h }
signing_key_file: key.pem
routes:
  - { name: app, from: "https://app.example.com", to: "http://127.0.0.1:9200",
      policy: { groups: [staff] } }
"#;
    let config = portcullis::config::parse(yaml, &dir).unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(MemoryStore::default());
    let parts = Parts {
        store: store.clone() as Arc<dyn SessionStore>,
        ..Parts::new(&config).expect("the memory store")
    };
    let app = App::with_parts(config, parts);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("the tokio runtime starts");
    if args.before {
        return before(&args);
    }
    let base = rss();
    let mut payload = 0usize; // bytes of string data the sessions hold, for the breakdown
    runtime.block_on(async {
        for i in 0..args.sessions {
            let mut s = Session::new(user(i), NOW, 8 * 3600);
            s.id = session_id(i);
            if args.refresh {
                let tokens = portcullis::oidc::IdpTokens {
                    access_token: None,
                    refresh_token: Some(portcullis::secret::SecretString::new(random_token(32))),
                    expires_in: Some(std::time::Duration::from_secs(3600)),
                };
                // oidc-provider's session ids are 43 characters too.
                let sid = random_token(32);
                s.idp = app
                    .sessions
                    .grant(&s.id, &tokens, Some(&sid), false, None, NOW);
            }
            payload += s.user.subject.len()
                + s.user.email.as_ref().map_or(0, String::len)
                + s.user.name.as_ref().map_or(0, String::len)
                + s.user.preferred_username.as_ref().map_or(0, String::len)
                + s.user.groups.iter().map(String::len).sum::<usize>();
            store.put(s).await.expect("memory store put");
        }
    });
    let with_sessions = rss();
    assert_eq!(store.len(), args.sessions);

    let mut jwt_bytes = 0usize;
    // Time per cache miss (sign + insert) for the first and the last 1000 sessions: the
    // difference is what inserting into a large cache costs.
    let mut first_ms = 0.0;
    let mut last_ms = 0.0;
    if args.jwt_cache {
        runtime.block_on(async {
            for i in 0..args.sessions {
                let started = std::time::Instant::now();
                let s = store
                    .get(&session_id(i), NOW)
                    .await
                    .expect("memory store get")
                    .expect("session is live");
                let r = app.routes().iter().next().expect("one route");
                let t = app.tokens().identity_token(&s, r, NOW);
                jwt_bytes += t.len();
                let ms = started.elapsed().as_secs_f64() * 1e3;
                if i < 1000 {
                    first_ms += ms;
                } else if i >= args.sessions.saturating_sub(1000) {
                    last_ms += ms;
                }
            }
        });
    }
    let with_cache = rss();

    let n = args.sessions.max(1) as u64;
    let per_session = with_sessions.saturating_sub(base) / n;
    println!("sessions={}", args.sessions);
    println!("layout=store");
    println!("refresh={}", args.refresh);
    println!("rss_base_bytes={base}");
    println!("rss_with_sessions_bytes={with_sessions}");
    println!("bytes_per_session={per_session}");
    println!("other_strings_bytes_per_session={}", payload as u64 / n);
    if args.jwt_cache {
        println!("rss_with_jwt_cache_bytes={with_cache}");
        println!(
            "jwt_cache_bytes_per_session={}",
            with_cache.saturating_sub(with_sessions) / n
        );
        println!("jwt_bytes_per_session={}", jwt_bytes as u64 / n);
        // µs per miss: the 1000 ms of 1000 misses.
        println!("jwt_miss_us_first_1000={:.1}", first_ms);
        println!("jwt_miss_us_last_1000={:.1}", last_ms);
    }
}
