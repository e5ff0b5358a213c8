use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    modelyard_sim::main_with(modelyard_sim::Args::parse())
}
