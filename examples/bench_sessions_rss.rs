//! Memory figure for `scripts/bench` and BENCHMARKS.md: the resident set of a portcullis
//! `App` holding N live sessions in the in-memory store.
//!
//! ```sh
//! cargo run --release --example bench_sessions_rss -- [--sessions 100000]
//!     [--id-token-bytes 900] [--jwt-cache] [--layout current|proposed]
//! ```
//!
//! Each session looks like one from the demo IdP: a UUID subject, email, name, username,
//! two groups, and (unless `--id-token-bytes 0`) an ID token of about that many bytes,
//! which portcullis keeps for `id_token_hint` at sign-out. With `--jwt-cache` every session
//! also gets one cached identity JWT, as if each had made a request in the last 4 minutes.
//!
//! Prints `key=value` lines (read by scripts/bench) after reading `VmRSS` from
//! /proc/self/status; with `--jwt-cache` also the mean time of one cache miss (sign and
//! insert) over the first and over the last 1000 sessions.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis::app::App;
use portcullis::crypto::random_token;
use portcullis::identity::{User, generate_pkcs8_pem};
use portcullis::secret::SecretString;
use portcullis::session::{MemoryStore, Session, SessionStore};

const NOW: u64 = 1_800_000_000;

struct Args {
    sessions: usize,
    id_token_bytes: usize,
    jwt_cache: bool,
    proposed: bool,
}

/// `--layout proposed`: the session record this benchmark proposes (BENCHMARKS.md), for
/// comparison: no ID token, the map keyed by the id's 32 raw bytes (no id string, no
/// second copy as the key), and the user's strings as `Box<str>`.
#[allow(dead_code)] // only ever measured, never read
struct ProposedSession {
    subject: Box<str>,
    email: Option<Box<str>>,
    email_verified: Option<bool>,
    name: Option<Box<str>>,
    preferred_username: Option<Box<str>>,
    groups: Box<[Box<str>]>,
    created_at: u64,
    expires_at: u64,
}

impl ProposedSession {
    fn new(u: User) -> Self {
        Self {
            subject: u.subject.into(),
            email: u.email.map(Into::into),
            email_verified: u.email_verified,
            name: u.name.map(Into::into),
            preferred_username: u.preferred_username.map(Into::into),
            groups: u.groups.into_iter().map(Into::into).collect(),
            created_at: NOW,
            expires_at: NOW + 8 * 3600,
        }
    }
}

fn parse_args() -> Args {
    let mut args = Args {
        sessions: 100_000,
        id_token_bytes: 900,
        jwt_cache: false,
        proposed: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut number = || -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--sessions" => args.sessions = number(),
            "--id-token-bytes" => args.id_token_bytes = number(),
            "--jwt-cache" => args.jwt_cache = true,
            "--layout" => match it.next().as_deref() {
                Some("proposed") => args.proposed = true,
                Some("current") => args.proposed = false,
                _ => panic!("--layout needs current or proposed"),
            },
            other => panic!("unknown argument {other}"),
        }
    }
    args
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
        email_verified: Some(true),
        name: Some(exact(format!("User {i:06} Example"))),
        preferred_username: Some(exact(format!("user{i:06}"))),
        groups: vec!["staff".into(), exact(format!("team-{}", i % 50))],
    }
}

/// A session id shaped like a real one (43 base64url characters), derived from `i` so that
/// the sessions can be found again without keeping a list of ids in memory.
fn session_id(i: usize) -> String {
    portcullis::crypto::sha256_b64(&(i as u64).to_le_bytes())
}

/// A JWT-shaped string of about `bytes` bytes: a header, claims like the demo IdP's, and
/// an RS256-sized signature, all unique per session (nothing shared between sessions).
fn id_token(u: &User, bytes: usize) -> Option<SecretString> {
    if bytes == 0 {
        return None;
    }
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
    Some(SecretString::new(&token[..bytes]))
}

/// Measures the proposed record in a plain map (the store's own locking aside).
fn proposed(args: &Args) {
    let base = rss();
    let mut map: HashMap<[u8; 32], Arc<ProposedSession>> = HashMap::new();
    for i in 0..args.sessions {
        let digest = ring::digest::digest(&ring::digest::SHA256, &(i as u64).to_le_bytes());
        let key: [u8; 32] = digest.as_ref().try_into().expect("SHA-256 is 32 bytes");
        map.insert(key, Arc::new(ProposedSession::new(user(i))));
    }
    let with_sessions = rss();
    assert_eq!(map.len(), args.sessions);
    println!("sessions={}", args.sessions);
    println!("layout=proposed");
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
    let app = App::new(config, store.clone() as Arc<dyn SessionStore>);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("the tokio runtime starts");
    if args.proposed {
        return proposed(&args);
    }
    let base = rss();
    let mut payload = 0usize; // bytes of string data the sessions hold, for the breakdown
    let mut token_bytes = 0usize;
    runtime.block_on(async {
        for i in 0..args.sessions {
            let u = user(i);
            let token = id_token(&u, args.id_token_bytes);
            token_bytes += token.as_ref().map_or(0, |t| t.expose().len());
            let mut s = Session::new(u, token, NOW, 8 * 3600);
            s.id = session_id(i);
            payload += 2 * s.id.len() // the id, and its copy as the map key
                + s.user.subject.len()
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
                let r = app.routes.get(0);
                let t = app.tokens.get_or_mint(&s.id, 0, NOW, || {
                    app.minter
                        .mint(&s.user, &s.public_id(), &r.authority, None, NOW)
                });
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
    println!("id_token_bytes={}", args.id_token_bytes);
    println!("rss_base_bytes={base}");
    println!("rss_with_sessions_bytes={with_sessions}");
    println!("bytes_per_session={per_session}");
    println!("id_token_bytes_per_session={}", token_bytes as u64 / n);
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
