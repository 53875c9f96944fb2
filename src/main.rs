//! The `flux-img2img` binary: parse flags, run the pipeline, print the result path on stdout, and turn any error
//! into one line on stderr with exit code 2.

use clap::Parser;
use flux_img2img::cli::Args;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Args::parse();
    let result = args.into_request().and_then(|req| flux_img2img::pipeline::run(&req));
    match result {
        Ok(report) => {
            println!("{}", report.output.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
