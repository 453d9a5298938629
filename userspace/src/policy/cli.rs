//! `airlock policy check` and `airlock policy explain`. STUB: the policy issue fills these in.

use std::path::{Path, PathBuf};

/// Arguments of `airlock policy explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long)]
    pub target: String,
    #[arg(long)]
    pub identity: String,
    #[arg(long = "group")]
    pub groups: Vec<String>,
    #[arg(long)]
    pub sql: String,
    #[arg(long)]
    pub json: bool,
}

/// Validates a file and prints a summary.
pub fn check(path: &Path) -> anyhow::Result<()> {
    crate::config::Config::load(path)?;
    println!("{}: ok", path.display());
    Ok(())
}

/// Explains one decision.
pub fn explain(_args: &ExplainArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
