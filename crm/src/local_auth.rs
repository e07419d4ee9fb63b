//! Authentication of the embedded default. Everything but the health, metrics and OpenAPI
//! endpoints is closed, as in every deployment; with no identity provider configured, `crm up`
//! creates a signing secret under the data directory, and `crm token` mints bearer tokens
//! with it for local use.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use infra::auth::{mint_hs256, AuthArgs};

pub const LOCAL_ISSUER: &str = "crm-local";
pub const LOCAL_AUDIENCE: &str = "crm";

fn secret_path(data_dir: &Path) -> PathBuf {
    data_dir.join("auth").join("hs256-secret")
}

/// The data directory's signing secret, created (64 hex characters) on first use.
pub fn local_secret(data_dir: &Path) -> anyhow::Result<String> {
    let path = secret_path(data_dir);
    if let Ok(s) = std::fs::read_to_string(&path) {
        return Ok(s.trim().to_owned());
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(secret)
}

/// When nothing is configured, uses the data directory's secret (and says so). Returns
/// whether it did.
pub fn use_local_secret_if_unconfigured(
    args: &mut AuthArgs,
    data_dir: &Path,
) -> anyhow::Result<bool> {
    let configured = args.jwt_hs256_secret.is_some()
        || args.jwt_rs256_public_key.is_some()
        || args.api_keys.is_some()
        || args.auth_disabled;
    if configured {
        return Ok(false);
    }
    args.jwt_hs256_secret = Some(local_secret(data_dir)?);
    args.jwt_issuer = Some(LOCAL_ISSUER.to_owned());
    args.jwt_audience = Some(LOCAL_AUDIENCE.to_owned());
    Ok(true)
}

/// A bearer token for `subject` with `roles`, signed with the data directory's secret (or the
/// configured HS256 secret, issuer and audience).
pub fn token(
    args: &AuthArgs,
    data_dir: &Path,
    subject: &str,
    roles: &[String],
    hours: u64,
) -> anyhow::Result<String> {
    let (secret, issuer, audience) = match &args.jwt_hs256_secret {
        Some(s) => (
            s.clone(),
            args.jwt_issuer
                .clone()
                .context("--jwt-issuer is required with --jwt-hs256-secret")?,
            args.jwt_audience
                .clone()
                .context("--jwt-audience is required with --jwt-hs256-secret")?,
        ),
        None => (
            local_secret(data_dir)?,
            LOCAL_ISSUER.to_owned(),
            LOCAL_AUDIENCE.to_owned(),
        ),
    };
    mint_hs256(
        secret.as_bytes(),
        &issuer,
        &audience,
        subject,
        roles,
        Duration::from_secs(hours * 3600),
    )
    .context("signing the token")
}
