//! `portcullis check-config` and `serve` on broken configs: every problem is reported with
//! the path of the offending field, in one run, with exit code 64, before any port is bound.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use testkit::{free_port, portcullis_bin, run, temp_dir, write_secrets};

const EXIT_CONFIG: i32 = 64;

/// The problems a config may be written with.
#[derive(Default, Clone, Copy)]
struct Problems {
    unknown_idp_key: bool,
    no_issuer: bool,
    bad_from: bool,
    missing_signing_key: bool,
    no_policy: bool,
}

/// Where a test's config lives; removed on drop unless the test failed.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let dir = Dir(temp_dir("config"));
        write_secrets(&dir.0);
        dir
    }

    /// Writes a config (valid apart from `problems`) and returns its path.
    fn config(&self, name: &str, problems: Problems, grpc: u16, http: u16) -> PathBuf {
        let Problems {
            unknown_idp_key,
            no_issuer,
            bad_from,
            missing_signing_key,
            no_policy,
        } = problems;
        let mut yaml = format!(
            "server:\n  grpc_address: 127.0.0.1:{grpc}\n  http_address: 127.0.0.1:{http}\n"
        );
        yaml.push_str("authenticate_url: https://auth.localhost:8443\nidp:\n");
        if !no_issuer {
            yaml.push_str("  issuer: http://127.0.0.1:9000\n");
        }
        yaml.push_str(
            "  client_id: portcullis\n  client_secret_file: secrets/client_secret\n  scopes: [openid, email, profile, groups]\n  groups_claim: groups\n",
        );
        if unknown_idp_key {
            yaml.push_str("  bogus: 1\n");
        }
        yaml.push_str(
            "cookie:\n  name: _portcullis\n  secret_file: secrets/cookie_secret\n  lifetime: 8h\n",
        );
        let key = if missing_signing_key {
            "secrets/no_such_key.pem"
        } else {
            "secrets/signing_key.pem"
        };
        yaml.push_str(&format!(
            "signing_key_file: {key}\nidentity_header: X-Portcullis-Jwt-Assertion\nroutes:\n"
        ));
        let from = if bad_from {
            "not a url"
        } else {
            "https://app.localhost:8443"
        };
        yaml.push_str(&format!(
            "  - name: app\n    from: {from}\n    to: http://127.0.0.1:9200\n"
        ));
        if !no_policy {
            yaml.push_str("    policy: { any_authenticated_user: true }\n");
        }
        yaml.push_str(
            "  - name: admin\n    from: https://admin.localhost:8443\n    to: http://127.0.0.1:9200\n    policy: { groups: [admins] }\n",
        );
        let path = self.0.join(name);
        fs::write(&path, yaml).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("(kept {} for inspection)", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

fn check_config(path: &Path) -> Output {
    run(Command::new(portcullis_bin())
        .arg("check-config")
        .arg("-c")
        .arg(path))
}

/// Whether `line` reports `field` as `error: FILE:LINE:COLUMN: FIELD...`, with the line
/// and column of the key (or of its nearest ancestor) in `file`.
fn reports(line: &str, file: &Path, field: &str) -> bool {
    let Some(rest) = line.strip_prefix(&format!("error: {}:", file.display())) else {
        return false;
    };
    let mut parts = rest.splitn(3, ':');
    let (Some(l), Some(c), Some(tail)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    l.parse::<usize>().is_ok_and(|l| l >= 1)
        && c.parse::<usize>().is_ok_and(|c| c >= 1)
        && tail.starts_with(&format!(" {field}"))
}

/// Asserts `check-config` of `file` failed with 64 and reported each of `fields` on an
/// error line with its position.
fn assert_reports(out: &Output, file: &Path, fields: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(EXIT_CONFIG),
        "exit status; stderr:\n{stderr}"
    );
    for field in fields {
        assert!(
            stderr.lines().any(|l| reports(l, file, field)),
            "no `error: FILE:LINE:COLUMN: {field}...` line in stderr:\n{stderr}"
        );
    }
}

fn one_problem(problems: Problems, field: &str) {
    let dir = Dir::new();
    let path = dir.config("portcullis.yaml", problems, 9100, 9101);
    assert_reports(&check_config(&path), &path, &[field]);
}

#[test]
fn the_base_config_is_valid() {
    let dir = Dir::new();
    let path = dir.config("portcullis.yaml", Problems::default(), 9100, 9101);
    let out = check_config(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}:\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("config OK: 2 routes"), "stdout: {stdout}");
}

#[test]
fn an_unknown_key_is_named() {
    let problems = Problems {
        unknown_idp_key: true,
        ..Default::default()
    };
    one_problem(problems, "idp.bogus");
}

#[test]
fn a_missing_issuer_is_named() {
    let problems = Problems {
        no_issuer: true,
        ..Default::default()
    };
    one_problem(problems, "idp.issuer");
}

#[test]
fn a_bad_route_url_is_named() {
    let problems = Problems {
        bad_from: true,
        ..Default::default()
    };
    one_problem(problems, "routes[0].from");
}

#[test]
fn a_missing_signing_key_file_is_named() {
    let problems = Problems {
        missing_signing_key: true,
        ..Default::default()
    };
    one_problem(problems, "signing_key_file");
}

#[test]
fn a_route_without_policy_is_named() {
    let problems = Problems {
        no_policy: true,
        ..Default::default()
    };
    one_problem(problems, "routes[0].policy");
}

#[test]
fn every_problem_is_reported_in_one_run() {
    let all = Problems {
        unknown_idp_key: true,
        no_issuer: true,
        bad_from: true,
        missing_signing_key: true,
        no_policy: true,
    };
    let dir = Dir::new();
    let path = dir.config("portcullis.yaml", all, 9100, 9101);
    assert_reports(
        &check_config(&path),
        &path,
        &[
            "idp.bogus",
            "idp.issuer",
            "routes[0].from",
            "signing_key_file",
            "routes[0].policy",
        ],
    );
}

#[test]
fn serve_refuses_a_broken_config_before_binding() {
    let (grpc, http) = (free_port(), free_port());
    let dir = Dir::new();
    let problems = Problems {
        unknown_idp_key: true,
        ..Default::default()
    };
    let path = dir.config("portcullis.yaml", problems, grpc, http);

    let mut child = Command::new(portcullis_bin())
        .arg("serve")
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start portcullis serve");
    // A server that started would run until killed; a refused config exits at once.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("portcullis serve kept running with a broken config");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(EXIT_CONFIG), "stderr:\n{stderr}");
    assert!(
        stderr.lines().any(|l| reports(l, &path, "idp.bogus")),
        "stderr:\n{stderr}"
    );
    for port in [grpc, http] {
        TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("configured port {port} is not free afterwards: {e}"));
    }
}
