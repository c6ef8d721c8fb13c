//! Socket activation: `serve` takes the listening sockets its parent bound (the systemd
//! convention) instead of binding the configured addresses. Hermetic: only the binary.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{portcullis_bin, temp_dir, write_secrets};

/// A config whose own addresses are taken by `blocker`: only passed sockets can work.
fn config(dir: &std::path::Path, taken: std::net::SocketAddr) -> std::path::PathBuf {
    write_secrets(dir);
    let path = dir.join("portcullis.yaml");
    std::fs::write(
        &path,
        format!(
            "server: {{ grpc_address: \"{taken}\", http_address: \"{taken}\" }}
authenticate_url: https://auth.localhost:8443
idp: {{ issuer: \"http://127.0.0.1:9\", client_id: portcullis, client_secret_file: secrets/client_secret }}
cookie: {{ secret_file: secrets/cookie_secret }}
signing_key_file: secrets/signing_key.pem
routes: [{{ from: \"https://app.localhost:8443\", to: \"http://127.0.0.1:9\", policy: {{ any_authenticated_user: true }} }}]
"
        ),
    )
    .unwrap();
    path
}

/// Starts `portcullis serve` with `grpc` and `http` as descriptors 3 and 4, named.
fn serve(
    config: &std::path::Path,
    grpc: &TcpListener,
    http: &TcpListener,
    names: &str,
) -> std::process::Child {
    let (g, h) = (grpc.as_raw_fd(), http.as_raw_fd());
    let mut cmd = Command::new("/bin/sh");
    // `$$` is the shell's pid, which `exec` keeps: LISTEN_PID names the server itself.
    cmd.arg("-c")
        .arg(format!(
            "LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES={names} exec \"$0\" serve -c \"$1\""
        ))
        .arg(portcullis_bin())
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: dup2 is async-signal-safe; it clears close-on-exec on the copies.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(g, 3) < 0 || libc::dup2(h, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("start portcullis")
}

#[test]
fn serve_answers_on_the_sockets_it_was_given() {
    let dir = temp_dir("activation");
    let blocker = TcpListener::bind("127.0.0.1:0").unwrap();
    let config = config(&dir, blocker.local_addr().unwrap());
    let grpc = TcpListener::bind("127.0.0.1:0").unwrap();
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let http_addr = http.local_addr().unwrap();
    let mut child = serve(&config, &grpc, &http, "grpc:http");
    drop((grpc, http));
    // The socket was listening before the child started: the first connect queues.
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let mut s = std::net::TcpStream::connect(http_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        if out.contains("200 OK") || Instant::now() > deadline {
            break out;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("portcullis exited ({status})");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        answer.contains("200 OK") && answer.ends_with("ok"),
        "{answer}"
    );
}

#[test]
fn badly_named_sockets_are_refused_clearly() {
    let dir = temp_dir("activation-bad");
    let blocker = TcpListener::bind("127.0.0.1:0").unwrap();
    let config = config(&dir, blocker.local_addr().unwrap());
    let grpc = TcpListener::bind("127.0.0.1:0").unwrap();
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    for (names, says) in [
        ("grpc", "LISTEN_FDNAMES names 1 sockets"),
        ("grpc:admin", "the config does not have: admin"),
    ] {
        let child = serve(&config, &grpc, &http, names);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{names}: {stderr}");
        assert!(stderr.contains(says), "{names}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
