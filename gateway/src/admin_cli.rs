//! `paycore admin`: the only way to make an admin. Registration never grants the role (an
//! e-mail is not proof of anything at sign-up); an operator with access to the gateway's
//! store creates an admin account (`create`), gives the role to an existing account (`grant`)
//! or takes it away (`revoke`, which also ends every token of the account at once).
//!
//! An admin still cannot act before enabling 2FA and logging in with a code: every admin
//! route needs a session that proved a TOTP code (see `extract::AuthUser::require_admin`).

use std::io::BufRead as _;
use std::path::PathBuf;

use crate::users::{Role, Store, User};

/// `paycore admin …`.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub action: AdminAction,
}

#[derive(Debug, clap::Subcommand)]
pub enum AdminAction {
    /// Create an admin account. The password is read from stdin (--password-stdin) or from
    /// PAYCORE_ADMIN_PASSWORD. The admin then logs in, enrolls 2FA (POST
    /// /api/v1/users/2fa/enroll, /confirm) and logs in again with a code: admin routes need
    /// that.
    Create(CreateArgs),
    /// Give the admin role to an existing account.
    Grant(AccountArgs),
    /// Take the admin role away from an account; every token it holds ends at once.
    Revoke(AccountArgs),
}

/// The gateway's store (the same flags and variables as `paycore gateway`).
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// SQLite file of the gateway's store (used unless --postgres-url is given).
    #[arg(
        long,
        env = "PAYCORE_GATEWAY_SQLITE",
        default_value = "./paycore-data/gateway.sqlite"
    )]
    pub sqlite: PathBuf,
    /// PostgreSQL URL of the gateway's store.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub postgres_url: Option<String>,
    /// PostgreSQL schema of the gateway's store.
    #[arg(long, env = "PAYCORE_GATEWAY_POSTGRES_SCHEMA")]
    pub postgres_schema: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    #[arg(long)]
    pub email: String,
    #[arg(long, default_value = "")]
    pub full_name: String,
    /// Read the password from the first line of stdin.
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, clap::Args)]
pub struct AccountArgs {
    #[arg(long)]
    pub email: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

async fn open(store: &StoreArgs) -> Result<Store, String> {
    match &store.postgres_url {
        Some(url) => Store::postgres(url, store.postgres_schema.as_deref()).await,
        None => Store::sqlite(&store.sqlite).await,
    }
    .map_err(|e| format!("gateway store: {e}"))
}

fn password(from_stdin: bool) -> Result<String, String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("stdin: {e}"))?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        std::env::var("PAYCORE_ADMIN_PASSWORD").map_err(
            |_| "give the password on stdin (--password-stdin) or in PAYCORE_ADMIN_PASSWORD",
        )?
    };
    crate::routes::users::valid_password(&password).map_err(|e| e.detail)?;
    Ok(password)
}

async fn account(store: &Store, email: &str) -> Result<User, String> {
    let email = crate::routes::users::valid_email(email).map_err(|e| e.detail)?;
    store
        .user_by_email(&email)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no account with e-mail {email}"))
}

async fn create(args: CreateArgs) -> Result<String, String> {
    let email = crate::routes::users::valid_email(&args.email).map_err(|e| e.detail)?;
    let full_name = crate::routes::users::valid_name(&args.full_name).map_err(|e| e.detail)?;
    let password = password(args.password_stdin)?;
    let store = open(&args.store).await?;
    let now = crate::time::now_ms();
    let user = User {
        id: crate::auth::random_uuid().to_string(),
        email,
        password_hash: crate::auth::hash_password(password)
            .await
            .map_err(|e| e.detail)?,
        full_name,
        role: Role::Admin,
        tier: paycore_engine::Tier::Unverified,
        totp_secret: None,
        totp_enabled: false,
        created_at_ms: now,
        token_generation: 0,
    };
    match store.create_user(&user).await {
        Ok(()) => Ok(format!(
            "admin {} created (id {}); it must enroll 2FA and log in with a code before acting",
            user.email, user.id
        )),
        Err(crate::users::StoreError::Duplicate) => Err(format!(
            "an account with e-mail {} exists: `paycore admin grant` gives it the role",
            user.email
        )),
        Err(e) => Err(e.to_string()),
    }
}

async fn set_role(args: AccountArgs, role: Role) -> Result<String, String> {
    let store = open(&args.store).await?;
    let user = account(&store, &args.email).await?;
    store
        .set_role(&user.id, role, crate::time::now_ms())
        .await
        .map_err(|e| e.to_string())?;
    if role == Role::Admin {
        return Ok(format!(
            "{} is an admin; it must have 2FA and log in with a code before acting",
            user.email
        ));
    }
    store
        .bump_token_generation(&user.id)
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "{} is no admin any more; every token it held has ended",
        user.email
    ))
}

/// Runs `paycore admin …` and prints what it did.
pub fn run(args: AdminArgs) -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let done = runtime.block_on(async move {
        match args.action {
            AdminAction::Create(args) => create(args).await,
            AdminAction::Grant(args) => set_role(args, Role::Admin).await,
            AdminAction::Revoke(args) => set_role(args, Role::User).await,
        }
    })?;
    println!("{done}");
    Ok(())
}
