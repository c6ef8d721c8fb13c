//! `testkit soak` (`scripts/soak [MINUTES]`, not in CI): the real stack (Envoy, the dev IdP,
//! portcullis built for release) under half the throughput it was just measured to reach,
//! for MINUTES, with sign-ins, sign-outs and config reloads mixed in. It samples
//! portcullis's resident memory and fails (exit 1) when the memory grew 5 % or more from
//! the end of the warm-up to the end, when any request failed, when a reload was refused or
//! not counted, or when the load fell short of its rate.
//!
//! The throughput is measured in the same run, by wrk (as `scripts/bench` measures the
//! signed-in case) for alice's session through Envoy; the soak's load is then paced by the
//! test kit's own clients, which check every answer: 200 from the app, with the identity
//! JWT.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use reqwest::StatusCode;
use reqwest::header::COOKIE;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::MissedTickBehavior;

use crate::bench::stats::{self, metric_labeled, metric_sum};
use crate::bench::{
    command_output, date_utc, load_average, log, machine_description, rss_kib, wrk_command,
};
use crate::{Browser, Stack, repo};

const IDENTITY_HEADER: &str = "x-portcullis-jwt-assertion";
/// The RSS at a point is the median of the samples of this many seconds before it: one
/// sample may catch the allocator between two frees.
const RSS_WINDOW_SECS: f64 = 30.0;
/// The load may fall this far short of its rate (a reload, a sign-in) and still count.
const MIN_RATE_SHARE: f64 = 0.95;

/// The soak's settings; each is also a `SOAK_*` variable.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Minutes of load after the warm-up.
    #[arg(env = "SOAK_MINUTES", default_value_t = 10.0)]
    pub minutes: f64,
    /// Seconds of load (at the soak's rate, with the mix) before the memory baseline.
    #[arg(long, env = "SOAK_WARMUP", default_value_t = 60)]
    pub warmup: u32,
    /// Seconds of the throughput measurement (wrk).
    #[arg(long, env = "SOAK_MEASURE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub measure: u32,
    /// wrk connections of the measurement.
    #[arg(long, env = "SOAK_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,
    /// The share of the measured throughput the soak runs.
    #[arg(long, env = "SOAK_LOAD", default_value_t = 0.5)]
    pub load: f64,
    /// Paced clients (each its own connection, one request at a time) that make the load:
    /// enough that their latency never holds the rate back.
    #[arg(long, env = "SOAK_CLIENTS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub clients: u32,
    /// Seconds between two sign-in, use and sign-out cycles of a fresh browser.
    #[arg(long, env = "SOAK_SIGN_IN_EVERY", default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..))]
    pub sign_in_every: u32,
    /// Seconds between two reloads (a config edit and SIGHUP, in turn).
    #[arg(long, env = "SOAK_RELOAD_EVERY", default_value_t = 20, value_parser = clap::value_parser!(u32).range(3..))]
    pub reload_every: u32,
    /// Seconds between two RSS samples.
    #[arg(long, env = "SOAK_SAMPLE_EVERY", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub sample_every: u32,
    /// The RSS growth (%) from the warm-up's end to the end that fails the soak.
    #[arg(long, env = "SOAK_MAX_RSS_GROWTH", default_value_t = 5.0)]
    pub max_rss_growth: f64,
    /// Where the report goes (also printed); the RSS samples go beside it (`rss.csv`).
    #[arg(long, env = "SOAK_OUT", default_value = "target/soak/report.md")]
    pub out: PathBuf,
}

/// Runs the soak; returns the exit code (130/143 when interrupted; the stack stops).
pub async fn run_soak(args: SoakArgs) -> Result<i32> {
    ensure!(
        args.minutes > 0.0 && args.load > 0.0,
        "MINUTES and SOAK_LOAD must be positive"
    );
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        r = soak(&args) => r,
        _ = interrupt.recv() => Ok(130),
        _ = terminate.recv() => Ok(143),
    }
}

/// What the paced clients counted.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    /// The first failures, for the report.
    examples: Mutex<Vec<String>>,
}

impl Counts {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut examples = self.examples.lock().unwrap();
        if examples.len() < 10 {
            examples.push(what);
        }
    }

    fn done(&self) -> u64 {
        self.ok.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }
}

/// One paced client: GET the app with alice's cookie every `period`, from `offset` on,
/// until `stop`; each answer must be the app's 200 carrying the identity JWT.
async fn paced_client(
    browser: Browser,
    url: String,
    cookie: String,
    period: Duration,
    offset: Duration,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    // Behind schedule (a reload, a sign-in on the same two cores), catch up: the rate is
    // the soak's average, not its best case.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        match browser.get(&url).header(COOKIE, &cookie).send().await {
            Err(e) => counts.fail(format!("transport: {e}")),
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                if status == StatusCode::OK && body.contains(IDENTITY_HEADER) {
                    counts.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    counts.fail(format!("{status}: {body:.200}"));
                }
            }
        }
    }
}

/// Sign-ins, sign-outs and reloads done beside the load, and what went wrong in them.
#[derive(Default)]
struct Mix {
    sign_ins: u64,
    sign_outs: u64,
    file_reloads: u64,
    sighups: u64,
    failures: Vec<String>,
}

impl Mix {
    /// A fresh browser signs in as `user`, uses the app, signs out, and is refused after.
    async fn cycle(&mut self, stack: &Stack, user: &str) {
        let app = stack.url("app", "/");
        let browser = stack.browser();
        let (response, _) = stack.login(&browser, &app, user, user).await;
        if response.status() != StatusCode::OK {
            self.failures
                .push(format!("{user}'s sign-in ended at {}", response.status()));
            return;
        }
        self.sign_ins += 1;
        for _ in 0..3 {
            let status = crate::send(browser.get(&app)).await.status();
            if status != StatusCode::OK {
                self.failures
                    .push(format!("{user} signed in, then the app answered {status}"));
            }
        }
        let (response, visited) = stack.sign_out(&browser, "app").await;
        let signed_out = visited
            .last()
            .is_some_and(|u| u.path() == "/.portcullis/signed_out");
        if response.status() != StatusCode::OK || !signed_out {
            self.failures.push(format!(
                "{user}'s sign-out ended at {} ({:?})",
                response.status(),
                visited.last().map(|u| u.as_str())
            ));
            return;
        }
        self.sign_outs += 1;
        let status = crate::send(browser.get(&app)).await.status();
        if status == StatusCode::OK {
            self.failures
                .push(format!("{user} signed out, and the app still answered 200"));
        }
    }

    /// The next reload: a config edit (which portcullis notices by itself) and SIGHUP in
    /// turn.
    fn reload(&mut self, stack: &Stack) {
        let n = self.file_reloads + self.sighups + 1;
        if n % 2 == 1 {
            stack.edit_config(|c| {
                let mut lines: Vec<&str> = c
                    .lines()
                    .filter(|l| !l.starts_with("# soak reload"))
                    .collect();
                let mark = format!("# soak reload {n}");
                lines.push(&mark);
                lines.join("\n") + "\n"
            });
            self.file_reloads += 1;
        } else {
            stack.reload_portcullis();
            self.sighups += 1;
        }
    }

    fn reloads(&self) -> u64 {
        self.file_reloads + self.sighups
    }
}

/// The median of the RSS samples (seconds since the start, KiB) taken in the
/// [`RSS_WINDOW_SECS`] up to `at`.
fn rss_at(samples: &[(f64, u64)], at: f64) -> Option<u64> {
    let window: Vec<f64> = samples
        .iter()
        .filter(|(t, _)| *t <= at && *t > at - RSS_WINDOW_SECS)
        .map(|(_, kib)| *kib as f64)
        .collect();
    stats::median(&window).map(|m| m as u64)
}

/// portcullis's metrics, from its metrics listener.
async fn scrape(stack: &Stack) -> Result<String> {
    let url = format!("http://127.0.0.1:{}/metrics", stack.ports.metrics);
    let response = reqwest::get(&url)
        .await
        .with_context(|| format!("GET {url}"))?;
    ensure!(
        response.status() == StatusCode::OK,
        "GET {url}: {}",
        response.status()
    );
    Ok(response.text().await?)
}

async fn soak(args: &SoakArgs) -> Result<i32> {
    let started_at = date_utc();
    let machine = format!(
        "{} Load average before the run: {}.",
        machine_description(&[("wrk", "-v")])?,
        load_average()
    );
    log("starting the stack (Envoy, the dev IdP, portcullis)");
    // info, without the audit line of every decision: minutes of load would write
    // gigabytes, and the stack's log scan for secrets reads every line.
    let stack = Stack::builder()
        .metrics_listener()
        .log_filter("info,portcullis::audit=off")
        .start()
        .await;
    // The echo would otherwise keep every request it answered: the test kit's memory, not
    // portcullis's, but a soak's worth of it.
    stack.keep_echo_requests(false);
    let pid = stack.pid("portcullis");
    let app = stack.url("app", "/");
    let alice = stack.browser();
    stack.sign_in(&alice, "alice").await;
    let cookie = alice
        .cookie_header(&app)
        .context("alice has no cookie for the app")?;

    let envoy_url = format!("https://127.0.0.1:{}/", stack.ports.envoy);
    let host = stack.authority("app");
    log(&format!(
        "measuring the throughput: wrk -c{} for {} s, signed in through Envoy",
        args.connections, args.measure
    ));
    // A short run first: Envoy's and portcullis's first connections are not the steady state.
    command_output(&mut wrk_command(
        2,
        args.connections,
        2,
        &envoy_url,
        &host,
        Some(&cookie),
    ))?;
    let wrk = command_output(&mut wrk_command(
        2,
        args.connections,
        args.measure,
        &envoy_url,
        &host,
        Some(&cookie),
    ))?;
    let (measured, p50, p99, wrk_errors) =
        stats::parse_wrk(&wrk).map_err(|e| anyhow::anyhow!("{e}:\n{wrk}"))?;
    ensure!(
        wrk_errors == 0,
        "the measurement had {wrk_errors} failed requests:\n{wrk}"
    );
    let rate = measured * args.load;
    log(&format!(
        "measured {measured:.0} req/s (p50 {}, p99 {}); the soak runs {rate:.0} req/s with {} clients",
        stats::fmt_us(Some(p50)),
        stats::fmt_us(Some(p99)),
        args.clients
    ));

    // The stack's own reload (of the config with the ports bound) is done; count from it.
    let reloads_before = metric_labeled(
        &scrape(&stack).await?,
        "portcullis_config_reloads_total",
        "kind=\"ok\"",
    );
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let period = Duration::from_secs_f64(f64::from(args.clients) / rate);
    let clients: Vec<_> = (0..args.clients)
        .map(|i| {
            tokio::spawn(paced_client(
                Browser::new(stack.ports.envoy, &stack.certs.ca),
                app.clone(),
                cookie.clone(),
                period,
                period * i / args.clients,
                counts.clone(),
                stop.clone(),
            ))
        })
        .collect();

    let t0 = Instant::now();
    let warmup = f64::from(args.warmup);
    let end = warmup + args.minutes * 60.0;
    let mut mix = Mix::default();
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let (mut next_sample, mut next_sign_in, mut next_reload) = (0.0, 5.0, 10.0);
    let mut warm: Option<(u64, Instant)> = None;
    let mut last_log = 0.0;
    log(&format!(
        "warm-up {warmup} s, then {} min; a sign-in cycle every {} s, a reload every {} s, RSS every {} s",
        args.minutes, args.sign_in_every, args.reload_every, args.sample_every
    ));
    loop {
        let now = t0.elapsed().as_secs_f64();
        if warm.is_none() && now >= warmup {
            warm = Some((counts.done(), Instant::now()));
            log(&format!(
                "warm-up done: RSS {} KiB",
                rss_at(&samples, warmup).unwrap_or(0)
            ));
        }
        if now >= end {
            break;
        }
        if now >= next_sample {
            let kib = rss_kib(pid).context("portcullis's VmRSS (did it exit?)")?;
            samples.push((now, kib));
            next_sample += f64::from(args.sample_every);
        }
        if now >= next_sign_in {
            let user = if mix.sign_ins % 2 == 0 {
                "bob"
            } else {
                "alice"
            };
            mix.cycle(&stack, user).await;
            next_sign_in += f64::from(args.sign_in_every);
        }
        if now >= next_reload {
            mix.reload(&stack);
            next_reload += f64::from(args.reload_every);
        }
        if now - last_log >= 60.0 {
            last_log = now;
            log(&format!(
                "{:.0} s: {} requests, {} failed; {} sign-ins, {} reloads; RSS {} KiB",
                now,
                counts.done(),
                counts.failed.load(Ordering::Relaxed),
                mix.sign_ins,
                mix.reloads(),
                samples.last().map_or(0, |s| s.1)
            ));
        }
        let next = next_sample.min(next_sign_in).min(next_reload).min(end);
        let wait = (next - t0.elapsed().as_secs_f64()).max(0.0);
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
    // The last sample, at the end itself.
    samples.push((
        t0.elapsed().as_secs_f64(),
        rss_kib(pid).context("portcullis's VmRSS (did it exit?)")?,
    ));
    stop.store(true, Ordering::Relaxed);
    let (done_at_end, end_at) = (counts.done(), Instant::now());
    for client in clients {
        client.await?;
    }
    // The reloader looks every 2 s: the last edit is counted by then.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = scrape(&stack).await?;

    let (warm_done, warm_at) = warm.context("the warm-up never ended")?;
    let main_secs = (end_at - warm_at).as_secs_f64();
    let main_requests = done_at_end - warm_done;
    let achieved = main_requests as f64 / main_secs;
    let rss_start = rss_at(&samples, warmup).context("no RSS sample in the warm-up")?;
    let rss_end = rss_at(&samples, end).context("no RSS sample at the end")?;
    let growth = (rss_end as f64 / rss_start as f64 - 1.0) * 100.0;
    let main_rss = samples.iter().filter(|(t, _)| *t >= warmup).map(|s| s.1);
    let (rss_min, rss_max) = (
        main_rss.clone().min().unwrap_or(0),
        main_rss.max().unwrap_or(0),
    );
    let reloads_ok =
        metric_labeled(&metrics, "portcullis_config_reloads_total", "kind=\"ok\"") - reloads_before;
    let reloads_refused = metric_labeled(
        &metrics,
        "portcullis_config_reloads_total",
        "kind=\"refused\"",
    );
    let failed = counts.failed.load(Ordering::Relaxed);
    let checks = [
        (
            growth < args.max_rss_growth,
            format!(
                "RSS growth {growth:+.1} % (target < {} %)",
                args.max_rss_growth
            ),
        ),
        (
            failed == 0,
            format!("{failed} of {} requests failed", counts.done()),
        ),
        (
            mix.failures.is_empty(),
            format!(
                "{} sign-in cycles went wrong{}",
                mix.failures.len(),
                mix.failures
                    .first()
                    .map(|f| format!(" (first: {f})"))
                    .unwrap_or_default()
            ),
        ),
        (
            reloads_refused == 0.0 && reloads_ok == mix.reloads() as f64,
            format!(
                "{} reloads done, portcullis counted {reloads_ok} ok and {reloads_refused} refused",
                mix.reloads()
            ),
        ),
        (
            achieved >= rate * MIN_RATE_SHARE,
            format!(
                "{achieved:.0} req/s achieved of {rate:.0} (at least {:.0} %)",
                MIN_RATE_SHARE * 100.0
            ),
        ),
    ];

    let mut report = String::new();
    writeln!(report, "## scripts/soak report, {started_at}\n")?;
    writeln!(report, "Machine: {machine}\n")?;
    writeln!(
        report,
        "Throughput measured in this run (wrk -t2 -c{}, {} s, alice signed in, through Envoy): {measured:.0} req/s (p50 {}, p99 {}). The soak ran {:.0} % of it, {rate:.0} req/s from {} paced clients, for {} s of warm-up and {} min, with a sign-in, 3 requests and a sign-out of a fresh browser every {} s and a reload every {} s (a config edit and SIGHUP in turn).\n",
        args.connections,
        args.measure,
        stats::fmt_us(Some(p50)),
        stats::fmt_us(Some(p99)),
        args.load * 100.0,
        args.clients,
        args.warmup,
        args.minutes,
        args.sign_in_every,
        args.reload_every,
    )?;
    writeln!(report, "| figure | value |\n| --- | --- |")?;
    for (name, value) in [
        (
            "requests".to_string(),
            format!(
                "{} (warm-up {warm_done}, soak {main_requests} in {main_secs:.0} s)",
                counts.done()
            ),
        ),
        (
            "rate achieved in the soak".into(),
            format!("{achieved:.0} req/s"),
        ),
        ("failed requests".into(), failed.to_string()),
        (
            "sign-ins / sign-outs (cycles)".into(),
            format!("{} / {}", mix.sign_ins, mix.sign_outs),
        ),
        (
            "portcullis_sign_ins_total / sign_outs_total".into(),
            format!(
                "{} / {}",
                metric_sum(&metrics, "portcullis_sign_ins_total"),
                metric_sum(&metrics, "portcullis_sign_outs_total")
            ),
        ),
        (
            "live sessions at the end".into(),
            metric_sum(&metrics, "portcullis_sessions").to_string(),
        ),
        (
            "reloads (edits + SIGHUPs) / counted ok / refused".into(),
            format!(
                "{} ({} + {}) / {reloads_ok} / {reloads_refused}",
                mix.reloads(),
                mix.file_reloads,
                mix.sighups
            ),
        ),
        (
            "RSS at the warm-up's end → at the end".into(),
            format!(
                "{:.1} MiB → {:.1} MiB ({growth:+.2} %)",
                rss_start as f64 / 1024.0,
                rss_end as f64 / 1024.0
            ),
        ),
        (
            "RSS min / max in the soak".into(),
            format!(
                "{:.1} / {:.1} MiB",
                rss_min as f64 / 1024.0,
                rss_max as f64 / 1024.0
            ),
        ),
    ] {
        writeln!(report, "| {name} | {value} |")?;
    }
    writeln!(
        report,
        "\nRSS: portcullis's VmRSS every {} s, the median of the {RSS_WINDOW_SECS} s before each point.\n",
        args.sample_every
    )?;
    for (ok, what) in &checks {
        writeln!(report, "- {} {what}", if *ok { "PASS" } else { "FAIL" })?;
    }
    for example in counts.examples.lock().unwrap().iter() {
        writeln!(report, "- failed request: {example}")?;
    }
    for failure in &mix.failures {
        writeln!(report, "- sign-in cycle: {failure}")?;
    }

    let out = repo().join(&args.out);
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
        let csv: String = samples
            .iter()
            .map(|(t, kib)| format!("{t:.1},{kib}\n"))
            .collect();
        fs::write(dir.join("rss.csv"), format!("seconds,vmrss_kib\n{csv}"))?;
    }
    fs::write(&out, &report)?;
    println!("{report}");
    log(&format!("report written to {}", out.display()));
    Ok(if checks.iter().all(|(ok, _)| *ok) {
        0
    } else {
        1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_the_median_of_the_window_before_the_point() {
        let samples = [
            (0.0, 500),
            (5.0, 100),
            (10.0, 900),
            (15.0, 110),
            (20.0, 120),
            (40.0, 130),
        ];
        // 0 … 20 s: 100, 110, 120, 500, 900 (the spikes do not move it).
        assert_eq!(rss_at(&samples, 20.0), Some(120));
        // After 10 … 40 s: 110, 120, 130 (a sample 30 s old is out of the window).
        assert_eq!(rss_at(&samples, 40.0), Some(120));
        assert_eq!(rss_at(&samples, -1.0), None);
    }
}
