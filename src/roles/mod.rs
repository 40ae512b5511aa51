//! The processes of the shop, one module each, and the entry point that runs one by name.

pub mod choreographed;
pub mod edge;
pub mod endings;
pub mod graph;
pub mod intake;
pub mod notifications;
pub mod participant;
pub mod reads;
pub mod replicas;
pub mod retries;
pub mod saga;

use crate::config::{Env, Role, Style};

/// Runs `role` with the configuration in this process's environment, until SIGTERM.
pub async fn run(role: Role) -> anyhow::Result<()> {
    let env = Env::from_env()?;
    match (role, env.style) {
        (Role::Gateway, _) => edge::run(env).await,
        (Role::Participant(service), Style::Orchestration) => {
            participant::run(service, env).await
        }
        (Role::Saga, Style::Orchestration) => saga::run(env).await,
        (Role::Participant(service), Style::Choreography) => {
            choreographed::run(service, env).await
        }
        (Role::Notifications, _) => notifications::run(env).await,
        (Role::Saga, Style::Choreography) => {
            anyhow::bail!(
                "a choreographed shop has no saga service: nobody orchestrates"
            )
        }
    }
}
