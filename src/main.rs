fn main() -> std::process::ExitCode {
    nurture::cli::run()
}
