//! `callhome user ...`: user management straight on the database.

use anyhow::{Context as _, bail};
use callhome_core::{Role, Username};
use callhome_store::{NewUser, OpenOptions, UserPatch};

use crate::cli::UserAction;
use crate::config::Settings;
use crate::server::generate_password;

fn read_password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if !from_stdin {
        return Ok((generate_password(), true));
    }
    Ok((super::read_stdin_line("the password")?, false))
}

async fn hash(pw: &str) -> anyhow::Result<String> {
    callhome_api::auth::check_password_policy(pw).map_err(|e| anyhow::anyhow!("{e}"))?;
    callhome_api::auth::hash_password(
        &callhome_gateway::PasswordPool::new(1, std::time::Duration::from_secs(60)),
        pw.to_owned(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))
}

pub(super) async fn run(settings: &Settings, action: UserAction) -> anyhow::Result<()> {
    if settings.database_url.starts_with("sqlite:") {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating {}", settings.data_dir.display()))?;
    }
    let store = callhome_store::open(&settings.database_url, &OpenOptions::default())
        .await
        .with_context(|| {
            format!(
                "opening database {}",
                callhome_store::redact_url(&settings.database_url)
            )
        })?;
    let result = async {
        match action {
            UserAction::Add {
                username,
                role,
                password_stdin,
            } => {
                let username = Username::parse(&username).map_err(|e| anyhow::anyhow!("{e}"))?;
                let role: Role = role.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
                let (pw, generated) = read_password(password_stdin)?;
                let password_hash = hash(&pw).await?;
                store
                    .create_user(&NewUser {
                        username: username.to_string(),
                        password_hash,
                        role,
                    })
                    .await?;
                println!("created user {username} with role {role}");
                if generated {
                    println!("password: {pw}");
                }
            }
            UserAction::Disable { username } => set_disabled(&*store, &username, true).await?,
            UserAction::Enable { username } => set_disabled(&*store, &username, false).await?,
            UserAction::Passwd {
                username,
                password_stdin,
            } => {
                let user = store.get_user_by_name(&username).await?;
                let (pw, generated) = read_password(password_stdin)?;
                let password_hash = hash(&pw).await?;
                store
                    .update_user(
                        user.id,
                        &UserPatch {
                            password_hash: Some(password_hash),
                            ..Default::default()
                        },
                    )
                    .await?;
                println!("password of {username} changed");
                if generated {
                    println!("password: {pw}");
                }
            }
            UserAction::List => {
                for u in store.list_users().await? {
                    println!(
                        "{:<32} {:<9} {}",
                        u.username,
                        u.role,
                        if u.disabled { "disabled" } else { "enabled" }
                    );
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    store.close().await;
    result
}

async fn set_disabled(
    store: &dyn callhome_store::Store,
    username: &str,
    disabled: bool,
) -> anyhow::Result<()> {
    let user = store.get_user_by_name(username).await?;
    if user.disabled == disabled {
        bail!(
            "user {username} is already {}",
            if disabled { "disabled" } else { "enabled" }
        );
    }
    store
        .update_user(
            user.id,
            &UserPatch {
                disabled: Some(disabled),
                ..Default::default()
            },
        )
        .await?;
    println!(
        "user {username} {}",
        if disabled { "disabled" } else { "enabled" }
    );
    Ok(())
}
