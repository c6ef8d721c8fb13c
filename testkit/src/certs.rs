//! The local CA and the TLS certificate that Envoy (and the HTTPS echo) present, made with
//! rcgen. The tests' set lives in `target/test-certs`, the demo's in `.demo/certs`; both are
//! kept between runs while they are good for more than a day, so a CA that a browser was
//! told to trust stays trusted.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::FileLock;

/// The names the demo and the tests serve (every test host, and any other `*.localhost`);
/// the certificate covers all of them.
pub fn dns_names() -> Vec<&'static str> {
    let mut names = vec!["localhost", "*.localhost"];
    names.extend(crate::browser::HOSTS);
    names
}
/// The IP address the certificate covers (HTTPS upstreams on loopback).
pub const IP: [u8; 4] = [127, 0, 0, 1];

const DAY: Duration = Duration::from_secs(86_400);
/// Browsers accept server certificates for at most 398 days.
const LEAF_DAYS: u64 = 397;
const CA_DAYS: u64 = 3650;

/// The files of one certificate set.
#[derive(Debug, Clone)]
pub struct Certs {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            cert: dir.join("tls.pem"),
            key: dir.join("tls-key.pem"),
        }
    }
}

/// The tests' certificates, made once per process (and safely across processes) in
/// `target/test-certs`.
pub fn test_certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        ensure(&crate::repo().join("target/test-certs"))
            .unwrap_or_else(|e| panic!("test certificates: {e:#}"))
    })
}

/// Makes sure `dir` holds a CA (`ca.pem`, `ca-key.pem`) and a certificate signed by it
/// (`tls.pem`, `tls-key.pem`) for [`dns_names`] and [`IP`]. Keeps what is there while the
/// CA and the certificate are good for more than a day and the certificate still covers
/// every name; a kept CA stays trusted. Safe to call from several processes at once.
pub fn ensure(dir: &Path) -> Result<Certs> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let _lock = FileLock::exclusive(&dir.join(".lock"))?;
    let certs = Certs::in_dir(dir);
    let tomorrow = SystemTime::now() + DAY;
    let mut ca = match load_ca(&certs, tomorrow) {
        Some(ca) => ca,
        None => {
            eprintln!("testkit: creating a local CA in {}", dir.display());
            make_ca(&certs)?
        }
    };
    if !leaf_ok(&certs, &ca.der, tomorrow) {
        if !ca.signs_alike {
            // A CA from elsewhere (the openssl-made one of older scripts): its name cannot be
            // rebuilt from its key, so it signs nothing new; a new CA replaces it.
            eprintln!(
                "testkit: the CA in {} cannot sign a new certificate: creating a new CA (trust it again)",
                dir.display()
            );
            ca = make_ca(&certs)?;
        }
        eprintln!("testkit: creating the TLS certificate in {}", dir.display());
        make_leaf(&certs, &ca.issuer)?;
        if !leaf_ok(&certs, &ca.der, SystemTime::now()) {
            bail!("the new certificate in {} does not verify", dir.display());
        }
    }
    Ok(certs)
}

/// The CA's distinguished name. The CN names the key, so that two demo CAs never share a
/// name, and the issuer can be rebuilt from the kept key alone.
fn ca_name(key: &KeyPair) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "portcullis demo");
    dn.push(DnType::CommonName, ca_common_name(key));
    dn
}

fn ca_common_name(key: &KeyPair) -> String {
    let id = crate::hex(&ring_sha256(key.der_bytes())[..4]);
    format!("portcullis demo CA {id}")
}

fn ring_sha256(data: &[u8]) -> Vec<u8> {
    // ring is rcgen's provider already: no second hash implementation for one fingerprint.
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

fn ca_params(key: &KeyPair) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_name(key);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = false;
    params
}

/// A CA: the issuer that signs with it, and its certificate.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: Vec<u8>,
    /// Whether `issuer` names the CA as its certificate does (one made here).
    signs_alike: bool,
}

/// The kept CA, when its files are there, match, and it is valid at `at`.
fn load_ca(certs: &Certs, at: SystemTime) -> Option<Ca> {
    let key = KeyPair::from_pem(&fs::read_to_string(&certs.ca_key).ok()?).ok()?;
    let der = pem_der(&fs::read_to_string(&certs.ca).ok()?)?;
    let (not_before, not_after) = validity(&der)?;
    if at >= not_after || SystemTime::now() < not_before {
        return None;
    }
    // The certificate must be this key's: its public key is in the DER.
    let public = key.der_bytes();
    if !der.windows(public.len()).any(|w| w == public) {
        return None;
    }
    let name = ca_common_name(&key);
    let signs_alike = der.windows(name.len()).any(|w| w == name.as_bytes());
    Some(Ca {
        issuer: Issuer::new(ca_params(&key), key),
        der,
        signs_alike,
    })
}

fn make_ca(certs: &Certs) -> Result<Ca> {
    let key = KeyPair::generate()?;
    let mut params = ca_params(&key);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(CA_DAYS as i64);
    let cert = params.self_signed(&key)?;
    write_private(&certs.ca_key, &key.serialize_pem())?;
    write_public(&certs.ca, &cert.pem())?;
    Ok(Ca {
        der: cert.der().to_vec(),
        issuer: Issuer::new(ca_params(&key), key),
        signs_alike: true,
    })
}

fn make_leaf(certs: &Certs, ca: &Issuer<'static, KeyPair>) -> Result<()> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "portcullis demo");
    dn.push(DnType::CommonName, "localhost");
    params.distinguished_name = dn;
    params.subject_alt_names = dns_names()
        .into_iter()
        .map(|n| Ok(SanType::DnsName(n.try_into()?)))
        .collect::<Result<_>>()?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from(IP)));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let serial = crate::random_bytes(16);
    params.serial_number = Some(serial.into());
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(LEAF_DAYS as i64);
    let cert = params.signed_by(&key, ca)?;
    write_private(&certs.key, &key.serialize_pem())?;
    write_public(&certs.cert, &cert.pem())?;
    Ok(())
}

/// Whether the kept certificate chains to the CA and is valid for every name at `at`.
fn leaf_ok(certs: &Certs, ca_der: &[u8], at: SystemTime) -> bool {
    let Some(der) = fs::read_to_string(&certs.cert)
        .ok()
        .and_then(|p| pem_der(&p))
    else {
        return false;
    };
    if fs::read_to_string(&certs.key)
        .ok()
        .and_then(|p| KeyPair::from_pem(&p).ok())
        .is_none_or(|k| !der.windows(k.der_bytes().len()).any(|w| w == k.der_bytes()))
    {
        return false;
    }
    let ca = CertificateDer::from(ca_der.to_vec());
    let Ok(anchor) = webpki::anchor_from_trusted_cert(&ca) else {
        return false;
    };
    let leaf = CertificateDer::from(der);
    let Ok(cert) = webpki::EndEntityCert::try_from(&leaf) else {
        return false;
    };
    let Ok(since_epoch) = at.duration_since(SystemTime::UNIX_EPOCH) else {
        return false;
    };
    let anchors = [anchor];
    let verified = cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &[],
        UnixTime::since_unix_epoch(since_epoch),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    );
    if verified.is_err() {
        return false;
    }
    let names = dns_names()
        .into_iter()
        .filter(|n| !n.starts_with('*'))
        .map(|n| n.to_string())
        // (webpki matches no wildcard on a single-label suffix such as `*.localhost`.)
        .chain(["127.0.0.1".to_string()]);
    names.into_iter().all(|n| {
        rustls_pki_types::ServerName::try_from(n)
            .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
    })
}

/// The DER of the first PEM block.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// (notBefore, notAfter) of a DER certificate.
fn validity(der: &[u8]) -> Option<(SystemTime, SystemTime)> {
    yasna::parse_der(der, |r| {
        r.read_sequence(|r| {
            let v = r.next().read_sequence(|r| {
                // version [0] EXPLICIT, optional
                r.read_optional(|r| r.read_tagged(yasna::Tag::context(0), |r| r.read_i64()))?;
                r.next().read_der()?; // serialNumber
                r.next().read_der()?; // signature
                r.next().read_der()?; // issuer
                let v = r.next().read_sequence(|r| {
                    let a = read_time(r.next())?;
                    let b = read_time(r.next())?;
                    Ok((a, b))
                })?;
                r.next().read_der()?; // subject
                r.next().read_der()?; // subjectPublicKeyInfo
                while r.read_optional(|r| r.read_der())?.is_some() {}
                Ok(v)
            })?;
            r.next().read_der()?; // signatureAlgorithm
            r.next().read_der()?; // signatureValue
            Ok(v)
        })
    })
    .ok()
}

fn read_time(r: yasna::BERReader) -> yasna::ASN1Result<SystemTime> {
    let tag = r.lookahead_tag()?;
    let secs = if tag == yasna::tags::TAG_UTCTIME {
        r.read_utctime()?.datetime().unix_timestamp()
    } else {
        r.read_generalized_time()?.datetime().unix_timestamp()
    };
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

fn write_private(path: &Path, pem: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(pem.as_bytes())?;
    fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

fn write_public(path: &Path, pem: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, pem)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
    fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_set_verifies_and_is_kept_on_the_next_call() {
        let dir = crate::temp_dir("certs");
        let certs = ensure(&dir).unwrap();
        let ca = fs::read(&certs.ca).unwrap();
        let leaf = fs::read(&certs.cert).unwrap();
        let ca_der = pem_der(&String::from_utf8(ca.clone()).unwrap()).unwrap();
        assert!(leaf_ok(&certs, &ca_der, SystemTime::now() + DAY));
        // Not valid in 400 days: the leaf's lifetime is what browsers accept.
        assert!(!leaf_ok(&certs, &ca_der, SystemTime::now() + 400 * DAY));
        ensure(&dir).unwrap();
        assert_eq!(fs::read(&certs.ca).unwrap(), ca, "the CA is kept");
        assert_eq!(
            fs::read(&certs.cert).unwrap(),
            leaf,
            "the certificate is kept"
        );
        let (_, not_after) = validity(&ca_der).unwrap();
        assert!(not_after > SystemTime::now() + 3000 * DAY);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&certs.key), 0o600);
        assert_eq!(mode(&certs.ca_key), 0o600);
        assert_eq!(mode(&certs.ca), 0o644);
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_lost_certificate_is_reissued_by_the_kept_ca() {
        let dir = crate::temp_dir("certs-reissue");
        let certs = ensure(&dir).unwrap();
        let ca = fs::read(&certs.ca).unwrap();
        let old = fs::read(&certs.cert).unwrap();
        fs::write(&certs.cert, "garbage").unwrap();
        ensure(&dir).unwrap();
        assert_eq!(fs::read(&certs.ca).unwrap(), ca, "the CA is kept");
        let new = fs::read(&certs.cert).unwrap();
        assert_ne!(new, old);
        let ca_der = pem_der(&String::from_utf8(ca).unwrap()).unwrap();
        assert!(leaf_ok(&certs, &ca_der, SystemTime::now()));
        // A certificate of another CA is replaced, and the CA is kept.
        let other = crate::temp_dir("certs-other");
        let other_certs = ensure(&other).unwrap();
        fs::copy(&other_certs.cert, &certs.cert).unwrap();
        fs::copy(&other_certs.key, &certs.key).unwrap();
        assert!(!leaf_ok(&certs, &ca_der, SystemTime::now()));
        ensure(&dir).unwrap();
        assert!(leaf_ok(&certs, &ca_der, SystemTime::now()));
        // A CA whose key is lost is replaced, and so is its certificate.
        fs::remove_file(&certs.ca_key).unwrap();
        ensure(&dir).unwrap();
        assert_ne!(
            fs::read(&certs.ca).unwrap(),
            fs::read(&other_certs.ca).unwrap()
        );
        fs::remove_dir_all(dir).ok();
        fs::remove_dir_all(other).ok();
    }

    #[test]
    fn a_ca_made_elsewhere_is_kept_until_it_must_sign_then_replaced() {
        let dir = crate::temp_dir("certs-foreign");
        let certs = Certs::in_dir(&dir);
        // A CA named otherwise (as the openssl-made one of older scripts was) and its leaf.
        let key = KeyPair::generate().unwrap();
        let mut params = ca_params(&key);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "portcullis demo CA 2026-12-07");
        params.distinguished_name = dn;
        let ca = params.self_signed(&key).unwrap();
        write_private(&certs.ca_key, &key.serialize_pem()).unwrap();
        write_public(&certs.ca, &ca.pem()).unwrap();
        make_leaf(&certs, &Issuer::new(params, key)).unwrap();
        let (old_ca, old_leaf) = (fs::read(&certs.ca).unwrap(), fs::read(&certs.cert).unwrap());
        ensure(&dir).unwrap();
        assert_eq!(
            fs::read(&certs.ca).unwrap(),
            old_ca,
            "a good CA and leaf are kept"
        );
        assert_eq!(fs::read(&certs.cert).unwrap(), old_leaf);
        fs::remove_file(&certs.cert).unwrap();
        ensure(&dir).unwrap();
        let new_ca = fs::read(&certs.ca).unwrap();
        assert_ne!(new_ca, old_ca, "a CA that cannot sign alike is replaced");
        let ca_der = pem_der(&String::from_utf8(new_ca).unwrap()).unwrap();
        assert!(leaf_ok(&certs, &ca_der, SystemTime::now()));
        fs::remove_dir_all(dir).ok();
    }
}
