//! Session cookies: opening a value, finding the session in a `Cookie` header, and
//! stripping our cookies before a request goes upstream.
//!
//! Invariants:
//! - only a value the fixture issued opens, and only on the host it was issued for: a
//!   mutated, truncated, foreign or made-up value is no session;
//! - `session_ids` finds a session only in a header that carries a real cookie for that
//!   host, and always finds it there, whatever an attacker planted around it;
//! - `strip` never leaves a cookie that `is_ours` matches (in any spelling, in `;`- or
//!   `,`-joined headers), and `may_contain_ours` is never false when one is there (the
//!   decision skips stripping on it).

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::core::unix_now as now;
use portcullis_fuzz::{HOSTS, fields, fixture, value_of};

/// How a browser or Envoy joins cookies: HTTP/2 crumbs, two HTTP/1.1 headers, odd spacing.
const SEPARATORS: [&str; 4] = ["; ", ", ", ";", ","];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let fx = fixture();
    let codec = &fx.app.cookies();
    let now = now();
    let [value, prefix, suffix]: [String; 3] = fields(rest, 3).try_into().unwrap();

    // Which host the value is opened for: one of ours, or whatever the input says.
    let authority = match usize::from(selector & 0x07) {
        i if i < HOSTS.len() => HOSTS[i],
        _ => suffix.as_str(),
    };
    let (real_host, real_cookie) = &fx.cookies[usize::from(selector >> 3) % fx.cookies.len()];
    let real_value = value_of(real_cookie);

    // 1. An arbitrary value, and the real value edited as the input says.
    check_open(&value, authority, now);
    let edited = edit(real_value, value.as_bytes());
    check_open(&edited, real_host, now);
    check_open(&edited, authority, now);

    // 2. A header built around the real cookie, as a browser holding attacker-planted
    //    cookies (from a sibling subdomain) would send it.
    let sep = SEPARATORS[usize::from(selector >> 6)];
    let with_real = format!("{prefix}{sep}{real_cookie}{sep}{suffix}");
    for header in [prefix.as_str(), value.as_str(), with_real.as_str()] {
        check_header(header, authority, now);
        check_strip(header);
    }
    assert!(
        codec
            .session_ids(&with_real, real_host, now)
            .any(|sid| sid == fx.session.id),
        "the real cookie was not found in {with_real:?}"
    );
    let stripped = codec.strip(&with_real).unwrap_or_default();
    assert!(
        !stripped.contains(real_value),
        "the real cookie survived stripping {with_real:?}: {stripped:?}"
    );

    // 3. A name `is_ours` matches is stripped however it is spelled around (a name: no
    //    separator, `=` or surrounding whitespace in it).
    if codec.is_ours(&value) && !value.contains([';', ',', '=']) && value.trim() == value {
        for form in [format!("{value}=x"), format!("a=1, {value}=x; b=2")] {
            let rest = codec.strip(&form).unwrap_or_default();
            assert!(!rest.contains("=x"), "{form:?} left {rest:?}");
        }
    }
});

/// `open` succeeds only for a value the fixture issued for exactly this host.
fn check_open(value: &str, authority: &str, now: u64) {
    let fx = fixture();
    if let Some(sid) = fx.app.cookies().open(value, authority, now) {
        assert!(
            sid == fx.session.id,
            "opened to a session the fixture never made"
        );
        assert!(
            fx.cookie_values()
                .any(|(h, v)| h == authority && v == value.trim()),
            "{value:?} opened on {authority:?} but was never issued for it"
        );
    }
}

/// A session is found only where a real cookie for this host is.
fn check_header(header: &str, authority: &str, now: u64) {
    let fx = fixture();
    for sid in fx.app.cookies().session_ids(header, authority, now) {
        assert!(sid == fx.session.id);
        assert!(
            fx.cookie_values()
                .any(|(h, v)| h == authority && header.contains(v)),
            "{header:?} carries no cookie issued for {authority:?}"
        );
    }
}

/// Nothing of ours survives `strip`, and the decision's cheap pre-test never skips it.
fn check_strip(header: &str) {
    let codec = &fixture().app.cookies();
    let ours = |h: &str| {
        h.split([';', ','])
            .map(|p| p.split_once('=').map_or(p, |(k, _)| k).trim())
            .any(|k| codec.is_ours(k))
    };
    if ours(header) {
        assert!(
            codec.may_contain_ours(header),
            "may_contain_ours missed {header:?}"
        );
    }
    if let Some(rest) = codec.strip(header) {
        assert!(!ours(&rest), "strip({header:?}) left one of ours: {rest:?}");
        assert!(!rest.is_empty(), "strip returned an empty header");
    }
}

/// Applies edits to `value`, driven by `ops` in pairs: (kind, argument).
fn edit(value: &str, ops: &[u8]) -> String {
    let mut v: Vec<u8> = value.as_bytes().to_vec();
    for op in ops.chunks(2) {
        let (kind, arg) = (op[0], op.get(1).copied().unwrap_or(0));
        if v.is_empty() {
            break;
        }
        let at = usize::from(arg) * v.len() / 256;
        match kind % 5 {
            0 => v[at] ^= 1 << (kind >> 5),
            1 => v[at] = arg,
            2 => v.truncate(at),
            3 => {
                v.remove(at);
            }
            _ => v.insert(at, b"AQgw_-=. %"[usize::from(kind >> 4) % 10]),
        }
    }
    String::from_utf8_lossy(&v).into_owned()
}
