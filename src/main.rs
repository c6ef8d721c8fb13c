fn main() -> std::process::ExitCode {
    portcullis::cli::run()
}
