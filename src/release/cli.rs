//! Entry points of the Docker commands (up, release, envs, backup, backups).

use crate::cli::Cmd;
use crate::config::Config;
use crate::control::client::Client;

pub async fn run(_cmd: &Cmd, _cfg: Config, _client: Client) -> anyhow::Result<()> {
    anyhow::bail!("the Docker release commands are not built yet")
}
