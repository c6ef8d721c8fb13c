//! Helper for `scripts/bench`: the ext_authz `CheckRequest` Envoy would send for one HTTP
//! request, either written as a gRPC-framed body for h2load or sent once to a server to
//! check the answer.
//!
//! ```sh
//! bench_check body  -o FILE  --authority app.localhost:8080 [--route app] [--path /]
//!                   [--scheme http] [-H 'name: value']...
//! bench_check call  ADDR    (same request options)
//! ```
//!
//! `call` prints one line: `allow` or `deny STATUS`, then `NAME: VALUE` for each header
//! the answer sets (values longer than 40 bytes are cut, with their length added), so the
//! script can assert on it.

#[path = "../benches/support/check_request.rs"]
mod check_request;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;

use check_request::{Spec, check_request, grpc_frame};

struct Args {
    command: String,
    target: Option<String>,
    out: Option<String>,
    authority: String,
    route: Option<String>,
    path: String,
    scheme: String,
    method: String,
    headers: Vec<(String, String)>,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench_check body -o FILE | call ADDR  --authority HOST[:PORT] [--route NAME] \
         [--path PATH] [--scheme http|https] [--method GET] [-H 'name: value']..."
    );
    std::process::exit(64)
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let command = it.next().unwrap_or_else(|| usage());
    let mut args = Args {
        command,
        target: None,
        out: None,
        authority: String::new(),
        route: None,
        path: "/".into(),
        scheme: "http".into(),
        method: "GET".into(),
        headers: Vec::new(),
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "-o" => args.out = Some(value()),
            "--authority" => args.authority = value(),
            "--route" => args.route = Some(value()),
            "--path" => args.path = value(),
            "--scheme" => args.scheme = value(),
            "--method" => args.method = value(),
            "-H" => {
                let h = value();
                let (k, v) = h.split_once(':').unwrap_or_else(|| usage());
                args.headers
                    .push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
            other if !other.starts_with('-') && args.target.is_none() => {
                args.target = Some(other.to_string())
            }
            _ => usage(),
        }
    }
    if args.authority.is_empty() {
        usage();
    }
    args
}

fn main() {
    let args = parse_args();
    let headers: Vec<(&str, &str)> = args
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let request = check_request(&Spec {
        method: &args.method,
        scheme: &args.scheme,
        authority: &args.authority,
        path: &args.path,
        route: args.route.as_deref(),
        headers: &headers,
    });
    match (args.command.as_str(), &args.out, &args.target) {
        ("body", Some(out), _) => {
            let framed = grpc_frame(&request);
            std::fs::write(out, &framed).unwrap_or_else(|e| {
                eprintln!("error: write {out}: {e}");
                std::process::exit(1)
            });
            eprintln!("wrote {out} ({} bytes)", framed.len());
        }
        ("call", _, Some(addr)) => call(addr, request),
        _ => usage(),
    }
}

fn call(addr: &str, request: envoy_types::pb::envoy::service::auth::v3::CheckRequest) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let response = runtime.block_on(async {
        let mut client = AuthorizationClient::connect(format!("http://{addr}")).await?;
        Ok::<_, Box<dyn std::error::Error>>(client.check(request).await?.into_inner())
    });
    let response = response.unwrap_or_else(|e| {
        eprintln!("error: Check at {addr}: {e}");
        std::process::exit(1)
    });
    let cut = |v: &str| match v.get(..40) {
        Some(head) if v.len() > 40 => format!("{head}... ({} bytes)", v.len()),
        _ => v.to_string(),
    };
    match response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            println!("allow");
            for h in ok.headers.iter().filter_map(|o| o.header.as_ref()) {
                println!("{}: {}", h.key, cut(&h.value));
            }
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            let status = denied.status.map(|s| s.code).unwrap_or_default();
            println!("deny {status}");
            for h in denied.headers.iter().filter_map(|o| o.header.as_ref()) {
                println!("{}: {}", h.key, cut(&h.value));
            }
        }
        _ => {
            let code = response.status.map(|s| s.code).unwrap_or_default();
            println!("status {code}");
        }
    }
}
