//! A no-op Envoy ext_authz server: answers every `Check` with OK and one header
//! (`x-noop-authz: 1`). It is the floor `scripts/bench` compares portcullis against: the
//! same tonic stack, runtime and socket options as `portcullis serve`, and no work.
//!
//! ```sh
//! cargo run --release --example noop_authz -- 127.0.0.1:9300 [--header-bytes N]
//!     [--vectored-writes]
//! ```
//!
//! Prints `listening ADDR` once bound (port 0 picks a free port); stops on SIGTERM/SIGINT.
//!
//! Two knobs for experiments (scripts/bench uses neither): `--header-bytes N` makes the
//! header value N bytes long (an identity JWT is ~650), and `--vectored-writes` serves plain
//! `TcpStream`s, as portcullis did before `server::grpc_io` (h2 then flushes once per DATA
//! frame of 256 bytes or more instead of coalescing answers into one write).

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
};
use envoy_types::ext_authz::v3::{CheckResponseExt, OkHttpResponseBuilder};
use tonic::{Request, Response, Status};

struct Noop {
    header_value: String,
}

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(
        &self,
        _request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let mut ok = OkHttpResponseBuilder::new();
        ok.add_header(
            "x-noop-authz",
            self.header_value.clone(),
            Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
            false,
        );
        let mut response = CheckResponse::new();
        response.set_status(Status::ok("")).set_http_response(ok);
        Ok(Response::new(response))
    }
}

fn main() -> std::process::ExitCode {
    let mut addr = "127.0.0.1:0".to_string();
    let mut header_bytes = 1;
    let mut vectored = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--header-bytes" => {
                header_bytes = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--header-bytes needs a number")
            }
            "--vectored-writes" => vectored = true,
            _ => addr = arg,
        }
    }
    let noop = Noop {
        header_value: "1".repeat(header_bytes),
    };
    // The same runtime as `portcullis serve`: multi-threaded, one worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot bind {addr}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let local = listener
            .local_addr()
            .expect("a bound socket has an address");
        println!("listening {local}");
        let server =
            tonic::transport::Server::builder().add_service(AuthorizationServer::new(noop));
        let signal = portcullis::server::shutdown_signal();
        let result = if vectored {
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            server.serve_with_incoming_shutdown(incoming, signal).await
        } else {
            let incoming = portcullis::server::grpc_io::incoming(listener);
            server.serve_with_incoming_shutdown(incoming, signal).await
        };
        match result {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}
