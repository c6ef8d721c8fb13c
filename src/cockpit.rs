//! Cockpit single sign-on.
//!
//! On a Cockpit route, and only on `GET <url_root>/cockpit/login`, portcullis adds
//! `Authorization: Basic base64(account:TOKEN)`. cockpit-ws hands that to cockpit-session,
//! which runs the PAM stack `/etc/pam.d/cockpit`; its first line runs `portcullis pam-verify`
//! (see [`verify`]), which accepts the token only if it was signed by portcullis for this
//! host and this account, moments ago. Cockpit's own privilege separation stays intact.
//!
//! PAM hands a module at most 511 bytes of password (Linux-PAM `PAM_MAX_RESP_SIZE`), so the
//! token is deliberately compact: `typ` and `kid` header, `iss`, `aud`, `sub` (the account),
//! `iat`, `exp`, a short `jti`.
//!
//! A user in one of the route's `admin_groups` gets `"adm": true` in the token; with
//! `--admin-grants`, `pam-verify` then records a grant for this Cockpit session that
//! `portcullis pam-admin` accepts when Cockpit starts its privileged bridge through sudo
//! ([`admin`]).
//!
//! The token is signed with the same key as the identity JWTs that every upstream on a
//! Cockpit host sees, so the two kinds must be impossible to confuse: a Cockpit token has
//! its own `typ` ([`COCKPIT_TOKEN_TYP`]) and an audience of the form `cockpit:HOST`
//! ([`cockpit_audience`]), which no identity JWT carries; the verifier requires both.

use std::io::Read;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::identity::{Jwks, SigningKeys};

pub mod admin;

/// Linux-PAM passes at most this many bytes of a password to a module.
pub const PAM_MAX_TOKEN_BYTES: usize = 511;
/// Lifetime of a Cockpit login token: it is used once, right away.
pub const COCKPIT_TOKEN_TTL_SECS: u64 = 60;
/// Clock skew tolerated by the verifier.
const LEEWAY_SECS: u64 = 30;
/// The JOSE `typ` of a Cockpit login token (explicit typing, RFC 8725 section 3.11).
pub const COCKPIT_TOKEN_TYP: &str = "cockpit+jwt";
/// Accounts below this uid are system accounts, refused by default.
pub const DEFAULT_MIN_UID: u32 = 1000;

/// The `aud` of a Cockpit login token for the Cockpit route on `authority`. Identity JWTs
/// carry a bare authority (and path), never this form.
pub fn cockpit_audience(authority: &str) -> String {
    format!("cockpit:{authority}")
}

/// Claims of a Cockpit login token.
#[derive(Debug, Serialize, Deserialize)]
struct CockpitClaims {
    iss: String,
    aud: String,
    sub: String,
    iat: u64,
    exp: u64,
    jti: String,
    /// Administrative access for this Cockpit session; absent (false) for most users.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    adm: bool,
}

/// Why a Cockpit credential could not be made.
#[derive(Debug, thiserror::Error)]
#[error(
    "the Cockpit login token would be {len} bytes, over PAM's limit of {PAM_MAX_TOKEN_BYTES}; use a shorter route host name"
)]
pub struct TokenTooLong {
    pub len: usize,
}

/// Mints the `Authorization: Basic` value for `account` on the Cockpit route on `authority`;
/// `admin` grants that Cockpit session administrative access.
pub fn basic_credential(
    keys: &SigningKeys,
    issuer: &str,
    account: &str,
    admin: bool,
    authority: &str,
    now: u64,
) -> Result<String, TokenTooLong> {
    let claims = CockpitClaims {
        iss: issuer.to_string(),
        aud: cockpit_audience(authority),
        sub: account.to_string(),
        iat: now,
        exp: now + COCKPIT_TOKEN_TTL_SECS,
        jti: crate::crypto::random_token(9),
        adm: admin,
    };
    let token = keys.sign(&keys.jose_header(COCKPIT_TOKEN_TYP), &claims);
    if token.len() > PAM_MAX_TOKEN_BYTES {
        return Err(TokenTooLong { len: token.len() });
    }
    Ok(format!(
        "Basic {}",
        STANDARD.encode(format!("{account}:{token}"))
    ))
}

/// Why `pam-verify` refused a token. Each is a line on stderr; the exit code is non-zero.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("PAM_USER is not set")]
    NoUser,
    #[error("no token on stdin")]
    Empty,
    #[error("token is {0} bytes, longer than any token portcullis issues")]
    TooLong(String),
    #[error("token was already used")]
    Replayed,
    #[error("replay directory: {0}")]
    ReplayDir(String),
    #[error("cannot read stdin: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot read the JWKS file: {0}")]
    Jwks(String),
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("no key with kid {0:?} in the JWKS")]
    UnknownKid(String),
    #[error("token rejected: {0}")]
    Rejected(String),
    #[error("token has expired")]
    Expired,
    #[error("token was issued in the future")]
    IssuedInFuture,
    #[error("token is for account {token:?}, not {pam_user:?}")]
    WrongAccount { token: String, pam_user: String },
    #[error("token type {0:?} is not a Cockpit login token ({COCKPIT_TOKEN_TYP:?})")]
    WrongType(String),
    #[error("account {0:?} is refused: root and system accounts never log in by SSO")]
    SystemAccount(String),
    #[error("account {0:?} does not exist")]
    NoSuchAccount(String),
    #[error("cannot record administrative access: {0}")]
    AdminGrants(String),
}

/// Verifies a Cockpit login token: ES256 only, `typ` [`COCKPIT_TOKEN_TYP`], a key from
/// `jwks` by `kid`, `iss` equal to `issuer`, `aud` the Cockpit audience of one of
/// `audiences` (route hosts), unexpired, `iat` not in the future, and `sub` equal to
/// `pam_user`, which is not `root`.
pub fn verify(
    token: &str,
    pam_user: &str,
    jwks: &Jwks,
    issuer: &str,
    audiences: &[String],
    now: u64,
) -> Result<Verified, VerifyError> {
    if pam_user == "root" {
        return Err(VerifyError::SystemAccount(pam_user.to_string()));
    }
    if token.is_empty() {
        return Err(VerifyError::Empty);
    }
    if token.len() > PAM_MAX_TOKEN_BYTES {
        return Err(VerifyError::TooLong(token.len().to_string()));
    }
    // Name the algorithm in the refusal, whatever it is (`none`, `HS256`, ...).
    let alg = header_alg(token)?;
    if alg != "ES256" {
        return Err(VerifyError::Rejected(format!(
            "algorithm {alg:?} is not ES256"
        )));
    }
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    // An identity JWT (typ "JWT") from the same key must never pass for a Cockpit password.
    let typ = header.typ.as_deref().unwrap_or("");
    if typ != COCKPIT_TOKEN_TYP {
        return Err(VerifyError::WrongType(typ.to_string()));
    }
    let kid = header
        .kid
        .ok_or_else(|| VerifyError::Malformed("no kid".into()))?;
    let jwk = jwks
        .keys
        .iter()
        .find(|k| k.kid == kid)
        .ok_or(VerifyError::UnknownKid(kid))?;
    let key = DecodingKey::from_ec_components(&jwk.x, &jwk.y)
        .map_err(|e| VerifyError::Jwks(e.to_string()))?;
    let mut validation = Validation::new(Algorithm::ES256);
    let audiences: Vec<String> = audiences.iter().map(|a| cockpit_audience(a)).collect();
    validation.set_audience(&audiences);
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "aud", "sub", "iss"]);
    // Time is checked below against the caller's clock, so tests can pin it.
    validation.validate_exp = false;
    let data = jsonwebtoken::decode::<CockpitClaims>(token, &key, &validation)
        .map_err(|e| VerifyError::Rejected(e.to_string()))?;
    if data.claims.exp + LEEWAY_SECS <= now {
        return Err(VerifyError::Expired);
    }
    if data.claims.iat > now + LEEWAY_SECS {
        return Err(VerifyError::IssuedInFuture);
    }
    if data.claims.sub != pam_user {
        return Err(VerifyError::WrongAccount {
            token: data.claims.sub,
            pam_user: pam_user.to_string(),
        });
    }
    Ok(Verified {
        jti: data.claims.jti,
        exp: data.claims.exp,
        admin: data.claims.adm,
    })
}

/// What a verified token still needs for replay protection and administrative access.
#[derive(Debug)]
pub struct Verified {
    pub jti: String,
    pub exp: u64,
    /// The user may turn on administrative access in this Cockpit session.
    pub admin: bool,
}

fn header_alg(token: &str) -> Result<String, VerifyError> {
    let malformed = |m: &str| VerifyError::Malformed(m.to_string());
    let (header, _) = token
        .split_once('.')
        .ok_or_else(|| malformed("not a JWT"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| malformed("header is not base64url"))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| malformed("header is not JSON"))?;
    value
        .get("alg")
        .and_then(|a| a.as_str())
        .map(str::to_string)
        .ok_or_else(|| malformed("header has no alg"))
}

/// Records a token's `jti` as used, so a captured token cannot log in twice. One file per
/// token in `dir` (root-only); files older than any token's lifetime are swept.
fn claim_once(dir: &std::path::Path, verified: &Verified) -> Result<(), VerifyError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |e: std::io::Error| VerifyError::ReplayDir(format!("{}: {e}", dir.display()));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    let max_age = std::time::Duration::from_secs(2 * (COCKPIT_TOKEN_TTL_SECS + LEEWAY_SECS));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > max_age);
            if old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    // The jti is attacker-influenced only after the signature check, but hash it anyway so
    // it is always a safe file name.
    let name = crate::crypto::sha256_b64(verified.jti.as_bytes());
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join(name))
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(VerifyError::Replayed),
        Err(e) => Err(io(e)),
    }
}

/// The uid of local account `name`, through NSS (so LDAP and SSSD accounts count too).
fn uid_of(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid out-parameter for getpwnam_r.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buf` outlives it; the result is
    // read only when getpwnam_r reports success and a non-null entry.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(pwd.pw_uid)
}

/// Refuses root and system accounts: uid 0, below `min_uid`, or `nobody`'s 65534 and up.
pub fn check_account(pam_user: &str, min_uid: u32) -> Result<(), VerifyError> {
    let uid = uid_of(pam_user).ok_or_else(|| VerifyError::NoSuchAccount(pam_user.to_string()))?;
    if uid == 0 || uid < min_uid || uid >= 65534 {
        return Err(VerifyError::SystemAccount(pam_user.to_string()));
    }
    Ok(())
}

/// `portcullis pam-verify`: reads the token from stdin (as `pam_exec expose_authtok` writes
/// it) and the account from `PAM_USER`. With `admin_grants`, a token that grants
/// administrative access records that for the Cockpit session being opened (the process
/// that runs PAM, our parent); returns the account and whether it did.
pub fn pam_verify_main(
    jwks_file: &std::path::Path,
    issuer: &str,
    audiences: &[String],
    replay_dir: Option<&std::path::Path>,
    min_uid: u32,
    admin_grants: Option<&std::path::Path>,
) -> Result<(String, bool), VerifyError> {
    const READ_CAP: u64 = 64 * 1024;
    let pam_user = std::env::var("PAM_USER").map_err(|_| VerifyError::NoUser)?;
    // Read a bounded amount: anything longer than PAM's limit is not ours anyway.
    let mut buf = Vec::new();
    std::io::stdin().take(READ_CAP + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > READ_CAP {
        return Err(VerifyError::TooLong(format!("over {READ_CAP}")));
    }
    // pam_exec terminates the token with NUL; be lenient about a trailing newline too.
    while buf
        .last()
        .is_some_and(|b| *b == 0 || b.is_ascii_whitespace())
    {
        buf.pop();
    }
    let token =
        std::str::from_utf8(&buf).map_err(|_| VerifyError::Malformed("not UTF-8".into()))?;
    let text = std::fs::read_to_string(jwks_file)
        .map_err(|e| VerifyError::Jwks(format!("{}: {e}", jwks_file.display())))?;
    let jwks: Jwks = serde_json::from_str(&text)
        .map_err(|e| VerifyError::Jwks(format!("{}: {e}", jwks_file.display())))?;
    let verified = verify(
        token,
        &pam_user,
        &jwks,
        issuer,
        audiences,
        crate::core::unix_now(),
    )?;
    check_account(&pam_user, min_uid)?;
    if let Some(dir) = replay_dir {
        claim_once(dir, &verified)?;
    }
    let granted = match admin_grants {
        Some(dir) if verified.admin => {
            admin::grant(dir, &pam_user, std::os::unix::process::parent_id())
                .map_err(|e| VerifyError::AdminGrants(e.to_string()))?;
            true
        }
        _ => false,
    };
    Ok((pam_user, granted))
}

#[cfg(test)]
mod tests;
