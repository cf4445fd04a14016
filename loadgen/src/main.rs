//! `paycore-loadgen`: the command line of [`paycore_loadgen::run`]. Prints the report on
//! stdout, the progress bar and errors on stderr; exits 0 when money is conserved, 1 when it is
//! not, 2 when the run could not be carried out.

#![forbid(unsafe_code)]

use clap::Parser as _;
use paycore_loadgen::{Config, run};

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("paycore-loadgen")
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("paycore-loadgen: cannot start the runtime: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(run(config)) {
        Ok(summary) => {
            print!("{}", summary.report());
            if let Some(path) = &summary.config.json {
                println!("JSON summary: {}", path.display());
            }
            if let Some(path) = &summary.config.svg {
                println!("percentile plot: {}", path.display());
            }
            if summary.conservation.holds {
                std::process::ExitCode::SUCCESS
            } else {
                eprintln!("paycore-loadgen: money is not conserved");
                std::process::ExitCode::from(1)
            }
        }
        Err(error) => {
            eprintln!("paycore-loadgen: {error}");
            std::process::ExitCode::from(2)
        }
    }
}
