//! `testkit`: the stack for people. `scripts/demo` runs `testkit demo`, `scripts/bench`
//! runs `testkit bench`, `scripts/soak` runs `testkit soak`; the scripts install the
//! packages first.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "testkit",
    about = "portcullis's whole stack: the demo, the benchmark and the soak"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the demo stack on its fixed ports until SIGINT or SIGTERM.
    Demo(testkit::demo::DemoArgs),
    /// Measure what portcullis adds to a request behind Envoy (see BENCHMARKS.md).
    Bench(testkit::bench::BenchArgs),
    /// Half the measured throughput for MINUTES with sign-ins, sign-outs and reloads;
    /// fails on memory growth or any failed request (see BENCHMARKS.md).
    Soak(testkit::soak::SoakArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the runtime starts");
    let result = runtime.block_on(async {
        match cli.command {
            Cmd::Demo(args) => testkit::demo::run_demo(args).await,
            Cmd::Bench(args) => testkit::bench::run_bench(args).await,
            Cmd::Soak(args) => testkit::soak::run_soak(args).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
