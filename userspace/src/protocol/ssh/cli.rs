//! `airlock ssh ca`: the lines that make clients trust the gateway's host certificates and
//! servers trust its user certificates.

use std::path::PathBuf;

use anyhow::Context as _;

use super::authority::Authority;
use crate::config::Config;
use crate::model::Protocol;

/// Arguments of `airlock ssh ca`.
#[derive(Debug, clap::Args)]
pub struct CaArgs {
    /// The daemon's configuration (its state directory holds the CAs; its ssh targets give the
    /// host pattern).
    #[arg(long, env = "AIRLOCK_CONFIG", required_unless_present = "state_dir")]
    pub config: Option<PathBuf>,
    /// The state directory, instead of --config.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Host pattern of the `@cert-authority` line (default: the names and addresses of the
    /// ssh targets, else `*`).
    #[arg(long)]
    pub hosts: Option<String>,
    /// Print only the `known_hosts` line for clients.
    #[arg(long, conflicts_with = "user_ca")]
    pub known_hosts: bool,
    /// Print only the user CA public key, for the servers' `TrustedUserCAKeys`.
    #[arg(long)]
    pub user_ca: bool,
}

/// Prints the known_hosts line and the user CA key (creating the CAs on first use).
pub fn ca(args: &CaArgs) -> anyhow::Result<()> {
    let config = args.config.as_deref().map(Config::load).transpose()?;
    let state_dir = match (&args.state_dir, &config) {
        (Some(d), _) => d.clone(),
        (None, Some(c)) => c.daemon.state_dir.clone(),
        (None, None) => anyhow::bail!("give --config or --state-dir"),
    };
    let authority = Authority::load(&state_dir)
        .with_context(|| format!("SSH CAs in {}", state_dir.display()))?;
    let pattern = args.hosts.clone().unwrap_or_else(|| {
        let mut names: Vec<String> = config
            .iter()
            .flat_map(|c| c.targets.iter())
            .filter(|t| t.protocol == Protocol::Ssh)
            .flat_map(|t| Authority::host_principals(t))
            .collect();
        names.sort();
        names.dedup();
        if names.is_empty() {
            "*".to_owned()
        } else {
            names.join(",")
        }
    });
    let user_ca = authority
        .user_ca()
        .to_openssh()
        .context("encoding the user CA key")?;
    if args.known_hosts {
        println!("{}", authority.known_hosts_line(&pattern));
    } else if args.user_ca {
        println!("{user_ca}");
    } else {
        println!("# Clients: add to ~/.ssh/known_hosts (or /etc/ssh/ssh_known_hosts)");
        println!("{}", authority.known_hosts_line(&pattern));
        println!("# Servers: put in the file sshd_config's TrustedUserCAKeys names");
        println!("{user_ca}");
    }
    Ok(())
}
