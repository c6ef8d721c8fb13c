//! The bench's numbers: what wrk, h2load and portcullis's metrics print, read into rows,
//! and the markdown report made of them (the format of BENCHMARKS.md).

use std::collections::BTreeMap;
use std::fmt::Write;

/// One measurement: a case in a round.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub case: String,
    pub round: u32,
    pub rps: f64,
    /// Microseconds; `None` when nothing was measured.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub errors: u64,
    /// CPU time per request (µs) of Envoy and of the ext_authz server, when they ran.
    pub envoy_cpu: Option<f64>,
    pub authz_cpu: Option<f64>,
}

/// CPU time per request (µs) of a process that used `ticks` clock ticks while serving
/// `rps` requests a second for `secs` seconds; `None` when there is no such process.
pub fn cpu_per_request(rps: f64, secs: f64, ticks: Option<u64>) -> Option<f64> {
    // SAFETY: sysconf has no preconditions.
    let tick_us = 1e6 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ticks = ticks?;
    (rps > 0.0).then(|| ticks as f64 * tick_us / (rps * secs))
}

/// `1.89ms`, `488.00us`, `1.2s` → microseconds.
pub fn duration_us(text: &str) -> Option<f64> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// The numbers after `label` on the first line that contains it, in order.
fn numbers_after(text: &str, label: &str) -> Vec<f64> {
    let Some(line) = text.lines().find(|l| l.contains(label)) else {
        return Vec::new();
    };
    let rest = &line[line.find(label).unwrap() + label.len()..];
    rest.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|w| !w.is_empty() && w.chars().any(|c| c.is_ascii_digit()))
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// What one wrk run (`--latency`) printed.
pub fn parse_wrk(text: &str) -> Result<(f64, f64, f64, u64), String> {
    let rps = *numbers_after(text, "Requests/sec:")
        .first()
        .ok_or("wrk printed no Requests/sec")?;
    let percentile = |p: &str| {
        text.lines()
            .map(str::split_whitespace)
            .find_map(|mut w| (w.next() == Some(p)).then(|| w.next()).flatten())
            .and_then(duration_us)
            .ok_or(format!("wrk printed no {p} latency"))
    };
    let errors = numbers_after(text, "Non-2xx or 3xx responses:")
        .first()
        .copied()
        .unwrap_or(0.0)
        + numbers_after(text, "Socket errors:").iter().sum::<f64>();
    Ok((rps, percentile("50%")?, percentile("99%")?, errors as u64))
}

/// What one h2load run printed: (req/s, errors: failed + errored + timeouts + non-2xx).
pub fn parse_h2load(text: &str) -> Result<(f64, u64), String> {
    let rps = numbers_after(text, "finished in")
        .get(1)
        .copied()
        .ok_or("h2load printed no req/s")?;
    // `requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout`
    // and `status codes: N 2xx, N 3xx, N 4xx, N 5xx`: the count before each word.
    let count = |line: &str, word: &str| -> Result<f64, String> {
        let line = text
            .lines()
            .find(|l| l.starts_with(line))
            .ok_or_else(|| format!("h2load printed no {line}:\n{text}"))?;
        let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        words
            .windows(2)
            .find(|w| w[1] == word)
            .and_then(|w| w[0].parse().ok())
            .ok_or_else(|| format!("h2load printed no {word} count: {line}"))
    };
    let mut errors = 0.0;
    for word in ["failed", "errored", "timeout"] {
        errors += count("requests:", word)?;
    }
    for word in ["3xx", "4xx", "5xx"] {
        errors += count("status codes:", word)?;
    }
    Ok((rps, errors as u64))
}

/// The latencies (µs) of h2load's `--log-file` (start, status, latency µs per line), sorted.
pub fn h2load_latencies(log: &str) -> Vec<f64> {
    let mut v: Vec<f64> = log
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let k = ((p / 100.0 * sorted.len() as f64).ceil() as usize).max(1) - 1;
    Some(sorted[k.min(sorted.len() - 1)])
}

/// The median (the mean of the middle two for an even count).
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Cumulative buckets of `portcullis_check_duration_seconds`: upper bound (s) → count.
pub fn histogram(metrics: &str) -> BTreeMap<u64, f64> {
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("portcullis_check_duration_seconds_bucket{le=\"")?;
            let (le, rest) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le.to_bits(), rest.trim().parse().ok()?))
        })
        .collect()
}

/// The bucket bound (µs) that holds the p-th percentile of what was observed between two
/// readings of the histogram; `None` when nothing was.
pub fn histogram_percentile(
    before: &BTreeMap<u64, f64>,
    after: &BTreeMap<u64, f64>,
    p: f64,
) -> Option<f64> {
    let mut les: Vec<f64> = after.keys().map(|b| f64::from_bits(*b)).collect();
    les.sort_by(f64::total_cmp);
    let count = |le: f64| after[&le.to_bits()] - before.get(&le.to_bits()).copied().unwrap_or(0.0);
    let total = les.last().map(|le| count(*le))?;
    if total <= 0.0 {
        return None;
    }
    les.into_iter()
        .find(|le| count(*le) >= p / 100.0 * total)
        .map(|le| le * 1e6)
        .or(Some(f64::INFINITY))
}

/// The value of a metric line `NAME VALUE` (the sum over its label sets).
pub fn metric_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The value of a metric `NAME{…}` summed over the label sets that contain `label`
/// (`kind="ok"`).
pub fn metric_labeled(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|rest| {
            let (labels, value) = rest.split_once("} ")?;
            labels.split(',').any(|l| l == label).then_some(value)
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

/// The value of one series, named with its labels as the exposition writes them
/// (`portcullis_check_decisions_total{route="app",outcome="allow"}`); none when absent.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `VmRSS` in KiB from the text of `/proc/PID/status`.
pub fn vm_rss_kib(status: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        l.strip_prefix("VmRSS:")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// `1234.5 µs` style, as the report shows latencies.
pub fn fmt_us(v: Option<f64>) -> String {
    match v {
        None => "n/a".into(),
        Some(v) if v.is_nan() => "n/a".into(),
        Some(v) if v.is_infinite() => "> 0.5 s".into(),
        Some(v) if v >= 1000.0 => format!("{:.2} ms", v / 1000.0),
        Some(v) => format!("{v:.0} µs"),
    }
}

/// A whole number with thousands separators: `64,142`.
pub fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

/// The cases of the load table: (case, label, tool).
pub const CASES: [(&str, &str, &str); 8] = [
    ("direct", "1. Envoy alone (direct response)", "wrk"),
    ("noop", "2. Envoy + no-op ext_authz", "wrk"),
    (
        "noop_jwt",
        "2b. Envoy + no-op adding a JWT-sized header",
        "wrk",
    ),
    (
        "authn",
        "3. Envoy + portcullis, signed in (JWT added)",
        "wrk",
    ),
    (
        "redirect",
        "4. Envoy + portcullis, no session (302 to sign in)",
        "wrk",
    ),
    (
        "grpc_portcullis",
        "5. Check over gRPC: portcullis",
        "h2load",
    ),
    ("grpc_noop", "5. Check over gRPC: no-op", "h2load"),
    (
        "grpc_noop_jwt",
        "5b. Check over gRPC: no-op, JWT-sized header",
        "h2load",
    ),
];

/// The report: the machine and settings paragraphs, the load table, the per-round ratios,
/// the fixed-rate latencies, then the extra sections.
pub fn report(rows: &[Row], machine: &str, settings: &str, rate: u32, extra: &str) -> String {
    let by = |case: &str| rows.iter().filter(|r| r.case == case).collect::<Vec<_>>();
    let mut out = String::new();
    let _ = writeln!(out, "{}\n", machine.trim_end());
    let _ = writeln!(out, "{}\n", settings.trim_end());
    out.push_str("### Throughput and latency under load\n\n");
    out.push_str(
        "| case | tool | req/s median (min–max) | p50 | p99 | errors | CPU/req Envoy | CPU/req ext_authz |\n",
    );
    out.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (case, label, tool) in CASES {
        let rs = by(case);
        if rs.is_empty() {
            continue;
        }
        let rps: Vec<f64> = rs.iter().map(|r| r.rps).collect();
        let min = rps.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rps.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let med_of = |f: &dyn Fn(&Row) -> Option<f64>| {
            median(&rs.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
        };
        let cpu = |f: &dyn Fn(&Row) -> Option<f64>| {
            med_of(f).map_or("–".to_string(), |v| format!("{v:.1} µs"))
        };
        let _ = writeln!(
            out,
            "| {label} | {tool} | {} ({}–{}) | {} | {} | {} | {} | {} |",
            thousands(median(&rps).unwrap_or(f64::NAN)),
            thousands(min),
            thousands(max),
            fmt_us(med_of(&|r| r.p50)),
            fmt_us(med_of(&|r| r.p99)),
            rs.iter().map(|r| r.errors).sum::<u64>(),
            cpu(&|r| r.envoy_cpu),
            cpu(&|r| r.authz_cpu),
        );
    }
    out.push_str(
        "\np50/p99 are the medians over the rounds of each round's percentile; `errors` counts \
         non-2xx/3xx answers and socket errors (must be 0). CPU/req is the process's \
         user+system CPU time (/proc/PID/stat) during the case divided by the requests \
         served, median over the rounds.\n\n",
    );
    out.push_str("### Ratios, per round (target for 3/2 and 4/2: median ≥ 0.95)\n\n");
    out.push_str("| ratio | min | median | max | per round |\n");
    out.push_str("| --- | ---: | ---: | ---: | --- |\n");
    for (name, num, den) in [
        ("3/2 signed in ÷ no-op", "authn", "noop"),
        ("4/2 302 ÷ no-op", "redirect", "noop"),
        (
            "5/5 gRPC portcullis ÷ no-op",
            "grpc_portcullis",
            "grpc_noop",
        ),
        (
            "3/2b signed in ÷ JWT-sized no-op (reference)",
            "authn",
            "noop_jwt",
        ),
        (
            "5/5b gRPC portcullis ÷ JWT-sized no-op (reference)",
            "grpc_portcullis",
            "grpc_noop_jwt",
        ),
    ] {
        let ratios = ratios(rows, num, den);
        if ratios.is_empty() {
            continue;
        }
        let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let each: Vec<String> = ratios.iter().map(|x| format!("{x:.3}")).collect();
        let _ = writeln!(
            out,
            "| {name} | {min:.3} | {:.3} | {max:.3} | {} |",
            median(&ratios).unwrap(),
            each.join(" ")
        );
    }
    let latency_cases = [
        (
            "lat_portcullis",
            "h2load → portcullis, round trip on loopback",
        ),
        ("lat_noop", "h2load → no-op server, round trip on loopback"),
        (
            "lat_noop_jwt",
            "h2load → no-op with a JWT-sized header, round trip",
        ),
        (
            "handler",
            "portcullis's own histogram (handler only; bucket bound)",
        ),
    ];
    if latency_cases[..3].iter().any(|(c, _)| !by(c).is_empty()) {
        let _ = writeln!(
            out,
            "\n### Check latency at a fixed {rate} req/s (target: p50 ≤ 30 µs, p99 ≤ 200 µs)\n"
        );
        out.push_str("| measured where | p50 median (min–max) | p99 median (min–max) |\n");
        out.push_str("| --- | ---: | ---: |\n");
        for (case, label) in latency_cases {
            let rs: Vec<&Row> = by(case).into_iter().filter(|r| r.p50.is_some()).collect();
            if rs.is_empty() {
                continue;
            }
            let spread = |xs: Vec<f64>| {
                let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
                let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                format!(
                    "{} ({}–{})",
                    fmt_us(median(&xs)),
                    fmt_us(Some(min)),
                    fmt_us(Some(max))
                )
            };
            let _ = writeln!(
                out,
                "| {label} | {} | {} |",
                spread(rs.iter().filter_map(|r| r.p50).collect()),
                spread(rs.iter().filter_map(|r| r.p99).collect()),
            );
        }
    }
    if !extra.trim().is_empty() {
        let _ = write!(out, "\n{}\n", extra.trim_end());
    }
    out
}

/// num ÷ den throughput within each round that has both.
pub fn ratios(rows: &[Row], num: &str, den: &str) -> Vec<f64> {
    let rps = |case: &str| -> BTreeMap<u32, f64> {
        rows.iter()
            .filter(|r| r.case == case)
            .map(|r| (r.round, r.rps))
            .collect()
    };
    let (n, d) = (rps(num), rps(den));
    n.iter()
        .filter_map(|(round, n)| d.get(round).filter(|d| **d > 0.0).map(|d| n / d))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 2s test @ http://127.0.0.1:40001/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.90ms  312.52us   8.03ms   80.13%
    Req/Sec     8.46k   318.11     9.02k    75.00%
  Latency Distribution
     50%    1.89ms
     75%    2.05ms
     90%    2.25ms
     99%    2.54ms
  33656 requests in 2.00s, 3.95MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:  16827.55
Transfer/sec:      1.97MB
";

    const H2LOAD: &str = "starting benchmark...
finished in 2.00s, 64142.30 req/s, 5.20MB/s
requests: 128284 total, 128316 started, 128284 done, 128280 succeeded, 4 failed, 1 errored, 2 timeout
status codes: 128280 2xx, 3 3xx, 0 4xx, 1 5xx
traffic: 10.40MB (10905470) total, 1.10MB (1154556) headers (space savings 95.00%), 7.70MB (8080000) data
";

    #[test]
    fn wrk_output() {
        let (rps, p50, p99, errors) = parse_wrk(WRK).unwrap();
        assert_eq!(rps, 16827.55);
        assert_eq!(p50, 1890.0);
        assert_eq!(p99, 2540.0);
        assert_eq!(errors, 4 + 3);
        assert!(parse_wrk("nothing").is_err());
        assert_eq!(duration_us("488.00us"), Some(488.0));
        assert_eq!(duration_us("1.5s"), Some(1.5e6));
    }

    #[test]
    fn h2load_output() {
        assert_eq!(parse_h2load(H2LOAD).unwrap(), (64142.30, 4 + 1 + 2 + 3 + 1));
        let lat = h2load_latencies("1\t200\t30\n2\t200\t10\n3\t200\t20\n\n");
        assert_eq!(lat, [10.0, 20.0, 30.0]);
        assert_eq!(percentile(&lat, 50.0), Some(20.0));
        assert_eq!(percentile(&lat, 99.0), Some(30.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn statistics() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(thousands(64142.3), "64,142");
        assert_eq!(thousands(999.6), "1,000");
        assert_eq!(thousands(17.0), "17");
        assert_eq!(fmt_us(Some(1890.0)), "1.89 ms");
        assert_eq!(fmt_us(Some(21.4)), "21 µs");
        assert_eq!(fmt_us(Some(f64::INFINITY)), "> 0.5 s");
        assert_eq!(fmt_us(None), "n/a");
        let rows = |case: &'static str, rps: [f64; 3]| {
            rps.into_iter().enumerate().map(move |(i, rps)| Row {
                case: case.into(),
                round: i as u32 + 1,
                rps,
                ..Row::default()
            })
        };
        let all: Vec<Row> = rows("authn", [96.0, 90.0, 100.0])
            .chain(rows("noop", [100.0, 100.0, 100.0]))
            .collect();
        assert_eq!(ratios(&all, "authn", "noop"), [0.96, 0.9, 1.0]);
        let report = report(&all, "## machine", "Settings: x", 1000, "### extra\n\nend");
        assert!(
            report
                .contains("| 3/2 signed in ÷ no-op | 0.900 | 0.960 | 1.000 | 0.960 0.900 1.000 |"),
            "{report}"
        );
        assert!(report.contains("| 3. Envoy + portcullis, signed in (JWT added) | wrk | 96 (90–100) | n/a | n/a | 0 | – | – |"), "{report}");
        assert!(report.ends_with("### extra\n\nend\n"), "{report}");
    }

    #[test]
    fn the_check_histogram() {
        let before = "portcullis_check_duration_seconds_bucket{le=\"0.000002\"} 10\nportcullis_check_duration_seconds_bucket{le=\"0.000004\"} 10\nportcullis_check_duration_seconds_bucket{le=\"+Inf\"} 10\n";
        let after = "portcullis_check_duration_seconds_bucket{le=\"0.000002\"} 60\nportcullis_check_duration_seconds_bucket{le=\"0.000004\"} 109\nportcullis_check_duration_seconds_bucket{le=\"+Inf\"} 110\n";
        let (b, a) = (histogram(before), histogram(after));
        assert_eq!(histogram_percentile(&b, &a, 50.0), Some(2.0));
        assert!((histogram_percentile(&b, &a, 99.0).unwrap() - 4.0).abs() < 1e-9);
        assert_eq!(histogram_percentile(&b, &b, 50.0), None);
        let metrics = "portcullis_check_decisions_total{outcome=\"allow\"} 5\nportcullis_check_decisions_total{outcome=\"redirect\"} 2\nportcullis_identity_tokens_signed_total 3\n";
        assert_eq!(metric_sum(metrics, "portcullis_check_decisions_total"), 7.0);
        assert_eq!(
            metric_sum(metrics, "portcullis_identity_tokens_signed_total"),
            3.0
        );
        assert_eq!(
            metric_labeled(
                metrics,
                "portcullis_check_decisions_total",
                "outcome=\"allow\""
            ),
            5.0
        );
        let reloads = "# TYPE portcullis_config_reloads_total counter\nportcullis_config_reloads_total{kind=\"ok\"} 12\nportcullis_config_reloads_total{kind=\"refused\"} 0\nportcullis_config_reloads_total_x{kind=\"ok\"} 9\n";
        let kind = |k: &str| {
            metric_labeled(
                reloads,
                "portcullis_config_reloads_total",
                &format!("kind=\"{k}\""),
            )
        };
        assert_eq!(
            (kind("ok"), kind("refused"), kind("other")),
            (12.0, 0.0, 0.0)
        );
        let decisions = "portcullis_check_decisions_total{route=\"app\",outcome=\"allow\"} 7\nportcullis_check_decisions_total{route=\"admin\",outcome=\"allow\"} 1\nportcullis_check_decisions_total{route=\"app\",outcome=\"sign_in_required\"} 2\n";
        assert_eq!(
            metric_labeled(
                decisions,
                "portcullis_check_decisions_total",
                "outcome=\"allow\""
            ),
            8.0
        );
        let app_allow = "portcullis_check_decisions_total{route=\"app\",outcome=\"allow\"}";
        assert_eq!(metric_value(decisions, app_allow), Some(7.0));
        assert_eq!(
            metric_value(decisions, "portcullis_check_decisions_total{route=\"app\"}"),
            None
        );
        assert_eq!(
            metric_value(reloads, "portcullis_config_reloads_total"),
            None
        );
    }

    #[test]
    fn resident_set_size() {
        let status =
            "Name:\tportcullis\nVmPeak:\t  900000 kB\nVmRSS:\t   10240 kB\nRssAnon:\t    4000 kB\n";
        assert_eq!(vm_rss_kib(status), Some(10240));
        assert_eq!(vm_rss_kib("Name:\tzombie\n"), None);
    }
}
