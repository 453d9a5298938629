//! The `airlock` command line (contract in shared/design.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// airlock: a host-level access gateway.
#[derive(Debug, Parser)]
#[command(name = "airlock", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: kernel programs, listeners, API, metrics.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy/config file.
    Check { file: PathBuf },
    /// Show what the policy decides for one command.
    Explain(crate::policy::cli::ExplainArgs),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config: _ } => Ok(()),
        Command::Policy { command } => match command {
            PolicyCommand::Check { file } => crate::policy::cli::check(&file),
            PolicyCommand::Explain(args) => crate::policy::cli::explain(&args),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("airlock: {e:#}");
            ExitCode::FAILURE
        }
    }
}
