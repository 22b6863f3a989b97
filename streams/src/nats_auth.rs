//! How a process proves who it is to NATS, and which servers it trusts:
//! one of a user and password, a credentials file (JWT and nkey seed, for
//! a server in operator mode) or an nkey seed file; and a CA certificate
//! that makes TLS required. Every binary takes the same flags and
//! environment variables (`NatsArgs` flattens this).

use std::path::PathBuf;

use async_nats::ConnectOptions;

use crate::error::StreamsError;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct NatsAuth {
    /// NATS user name (with --nats-password).
    #[cfg_attr(
        feature = "cli",
        arg(id = "nats_user", long = "nats-user", env = "IM_NATS_USER")
    )]
    pub user: Option<String>,
    /// NATS password.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "nats_password",
            long = "nats-password",
            env = "IM_NATS_PASSWORD",
            hide_env_values = true
        )
    )]
    pub password: Option<String>,
    /// A NATS credentials file (user JWT and nkey seed).
    #[cfg_attr(
        feature = "cli",
        arg(id = "nats_creds", long = "nats-creds", env = "IM_NATS_CREDS")
    )]
    pub creds: Option<PathBuf>,
    /// A file holding an nkey seed (`SU...`).
    #[cfg_attr(
        feature = "cli",
        arg(id = "nats_nkey", long = "nats-nkey", env = "IM_NATS_NKEY")
    )]
    pub nkey: Option<PathBuf>,
    /// A CA certificate (PEM) to check the servers' certificates against;
    /// TLS is then required.
    #[cfg_attr(
        feature = "cli",
        arg(id = "nats_tls_ca", long = "nats-tls-ca", env = "IM_NATS_TLS_CA")
    )]
    pub tls_ca: Option<PathBuf>,
}

impl NatsAuth {
    /// The environment variables a child process reads these settings
    /// from (the same as the flags').
    pub fn env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        let mut env = Vec::new();
        let mut set = |name, value: Option<std::ffi::OsString>| {
            if let Some(v) = value {
                env.push((name, v));
            }
        };
        set("IM_NATS_USER", self.user.clone().map(Into::into));
        set("IM_NATS_PASSWORD", self.password.clone().map(Into::into));
        set("IM_NATS_CREDS", self.creds.clone().map(Into::into));
        set("IM_NATS_NKEY", self.nkey.clone().map(Into::into));
        set("IM_NATS_TLS_CA", self.tls_ca.clone().map(Into::into));
        env
    }
}

/// One way of proving who a process is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
    Password {
        user: String,
        password: String,
    },
    Creds(PathBuf),
    /// The seed itself, read from its file.
    Nkey(String),
}

impl NatsAuth {
    /// A user and password.
    pub fn password(user: impl Into<String>, password: impl Into<String>) -> Self {
        NatsAuth {
            user: Some(user.into()),
            password: Some(password.into()),
            ..Default::default()
        }
    }

    /// The one identity configured; two at once, or a user without a
    /// password, is a configuration error.
    pub fn identity(&self) -> Result<Identity, StreamsError> {
        let config = |m: &str| Err(StreamsError::Config(m.to_string()));
        let given = [
            self.user.is_some(),
            self.creds.is_some(),
            self.nkey.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return config("give one of a NATS user, a credentials file or an nkey seed");
        }
        match (&self.user, &self.password) {
            (Some(user), Some(password)) => {
                return Ok(Identity::Password {
                    user: user.clone(),
                    password: password.clone(),
                })
            }
            (Some(_), None) => return config("a NATS user needs a password"),
            (None, Some(_)) => return config("a NATS password needs a user"),
            (None, None) => {}
        }
        if let Some(path) = &self.creds {
            return Ok(Identity::Creds(path.clone()));
        }
        if let Some(path) = &self.nkey {
            let seed = std::fs::read_to_string(path)
                .map_err(|e| StreamsError::setting(format!("nkey seed {}", path.display()), e))?;
            return Ok(Identity::Nkey(seed.trim().to_string()));
        }
        Ok(Identity::Anonymous)
    }

    /// The client options that carry this identity and trust.
    pub async fn options(&self) -> Result<ConnectOptions, StreamsError> {
        let options = match self.identity()? {
            Identity::Anonymous => ConnectOptions::new(),
            Identity::Password { user, password } => {
                ConnectOptions::with_user_and_password(user, password)
            }
            Identity::Creds(path) => ConnectOptions::with_credentials_file(&path)
                .await
                .map_err(|e| StreamsError::setting(format!("credentials {}", path.display()), e))?,
            Identity::Nkey(seed) => ConnectOptions::with_nkey(seed),
        };
        Ok(match &self.tls_ca {
            Some(ca) => options.add_root_certificates(ca.clone()).require_tls(true),
            None => options,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_identity_at_a_time() {
        assert_eq!(NatsAuth::default().identity().unwrap(), Identity::Anonymous);
        assert_eq!(
            NatsAuth::password("u", "p").identity().unwrap(),
            Identity::Password {
                user: "u".into(),
                password: "p".into()
            }
        );
        let both = NatsAuth {
            creds: Some("x.creds".into()),
            ..NatsAuth::password("u", "p")
        };
        assert!(both.identity().is_err());
        let no_password = NatsAuth {
            user: Some("u".into()),
            ..Default::default()
        };
        assert!(no_password.identity().is_err());
        let missing = NatsAuth {
            nkey: Some("/nonexistent/seed".into()),
            ..Default::default()
        };
        let err = missing.identity().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/seed"), "{err}");
    }
}
