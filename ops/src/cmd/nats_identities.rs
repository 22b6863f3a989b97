//! The local stack's NATS identities (`imctl up`, authorization on by
//! default): one generated password per component, each kept in an env
//! file under the data dir that the component's process can load:
//! `<data-dir>/nats/identities/<user>.env` with `IM_NATS_USER` and
//! `IM_NATS_PASSWORD`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use im_streams::connect::NatsAuth;
use im_streams::identities::{authorization_block, Component, Secret};

/// Length of a generated password (alphanumeric): ~190 bits.
const PASSWORD_LEN: usize = 32;

/// The env file holding `component`'s identity.
pub fn env_file(data_dir: &Path, component: Component) -> PathBuf {
    data_dir
        .join("nats")
        .join("identities")
        .join(format!("{}.env", component.user()))
}

/// Every component's password: read from the data dir, or made there.
pub fn passwords(data_dir: &Path) -> anyhow::Result<BTreeMap<Component, String>> {
    let mut out = BTreeMap::new();
    for component in Component::ALL {
        let path = env_file(data_dir, component);
        let password = match std::fs::read_to_string(&path) {
            Ok(text) => password_in(&text)
                .with_context(|| format!("{} has no IM_NATS_PASSWORD", path.display()))?,
            Err(_) => {
                let password = crate::cmd::secrets::random(PASSWORD_LEN);
                let text = format!(
                    "IM_NATS_USER={}\nIM_NATS_PASSWORD={password}\n",
                    component.user()
                );
                crate::cmd::secrets::write_private(&path, &text)?;
                password
            }
        };
        out.insert(component, password);
    }
    Ok(out)
}

fn password_in(env: &str) -> Option<String> {
    env.lines()
        .find_map(|l| l.trim().strip_prefix("IM_NATS_PASSWORD="))
        .map(str::to_string)
}

/// How `component` connects to the local stack.
pub fn auth(data_dir: &Path, component: Component) -> anyhow::Result<NatsAuth> {
    let passwords = passwords(data_dir)?;
    Ok(NatsAuth::password(
        component.user(),
        passwords[&component].clone(),
    ))
}

/// The managed server's authorization: every component a user with its
/// own permissions; the harness checks readiness as the operator.
pub fn server_auth(passwords: &BTreeMap<Component, String>) -> im_testkit::ServerAuth {
    let users: Vec<(Component, Secret)> = passwords
        .iter()
        .map(|(c, p)| (*c, Secret::Inline(p.clone())))
        .collect();
    im_testkit::ServerAuth {
        authorization: authorization_block(&users),
        user: Component::Operator.user().to_string(),
        password: passwords[&Component::Operator].clone(),
        ca: None,
    }
}
