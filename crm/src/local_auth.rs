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
///
/// `crm up` and `crm token` may both find it missing at the same moment (a test starts one
/// right after the other): the secret is written to a file of this process's own and linked
/// into place, which succeeds for exactly one of them; every caller then answers with what is
/// on disk, never with a secret it generated but lost the race with.
pub fn local_secret(data_dir: &Path) -> anyhow::Result<String> {
    let path = secret_path(data_dir);
    if let Some(secret) = read_secret(&path)? {
        return Ok(secret);
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let dir = path
        .parent()
        .context("the secret's path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".hs256-secret.{}.{}",
        std::process::id(),
        &secret[..8]
    ));
    {
        use std::io::Write;
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("restricting {}", tmp.display()))?;
        }
        f.write_all(secret.as_bytes())
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
    }
    read_secret(&path)?.with_context(|| format!("{} is empty after creating it", path.display()))
}

/// The secret on disk, if there is one. A secret file is never written in place (see
/// [`local_secret`]), so one that exists is complete.
fn read_secret(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().len() >= 32 => Ok(Some(s.trim().to_owned())),
        Ok(s) => anyhow::bail!(
            "{} holds {} characters: a signing secret needs at least 32 (delete the file to have a new one made)",
            path.display(),
            s.trim().len()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The e2e flake of 2026-11-30: `crm up` and `crm token` creating the secret at the same
    /// moment each kept their own, and every token was refused. Racing creators now agree.
    #[test]
    fn racing_creators_agree_on_one_secret() -> anyhow::Result<()> {
        for round in 0..50 {
            let dir = std::env::temp_dir()
                .join(format!("crm-secret-race-{}-{round}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let dir = dir.clone();
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        barrier.wait();
                        local_secret(&dir).map_err(|e| e.to_string())
                    })
                })
                .collect();
            let mut secrets = Vec::new();
            for h in handles {
                let s = h
                    .join()
                    .map_err(|_| anyhow::anyhow!("thread panicked"))?
                    .map_err(anyhow::Error::msg)?;
                secrets.push(s);
            }
            let on_disk = std::fs::read_to_string(secret_path(&dir))?;
            for s in &secrets {
                assert_eq!(
                    s,
                    on_disk.trim(),
                    "round {round}: a caller kept its own secret"
                );
            }
            assert_eq!(on_disk.trim().len(), 64);
            std::fs::remove_dir_all(&dir)?;
        }
        Ok(())
    }

    #[test]
    fn a_short_secret_is_refused() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("crm-secret-short-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("auth"))?;
        std::fs::write(secret_path(&dir), "")?;
        assert!(local_secret(&dir).is_err());
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
