//! Newtypes for secret material. Their `Debug` and `Display` print `[redacted]`, so a secret
//! can sit inside any config or state struct without ever reaching a log line.

use std::fmt;

/// A secret string (OIDC client secret, tokens). Read it only through [`SecretString::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Secret bytes (cookie master key, key material).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new(value: Vec<u8>) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

macro_rules! redacted {
    ($($t:ty),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[redacted]")
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[redacted]")
            }
        }
    )*};
}
redacted!(SecretString, SecretBytes);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = SecretString::new("hunter2");
        let b = SecretBytes::new(b"key".to_vec());
        assert_eq!(
            format!("{s:?} {s} {b:?} {b}"),
            "[redacted] [redacted] [redacted] [redacted]"
        );
        assert_eq!(s.expose(), "hunter2");
    }
}
