//! `imctl nats-config`: the production nats-server configuration, with
//! every component its own user and permissions (`im_streams::identities`)
//! and each password read from the server's environment
//! (`IM_NATS_<COMPONENT>_PASSWORD`). `ops/deploy/nats-server.conf` is this
//! command's output, checked by a test.

use im_streams::identities::{authorization_block, Component, Secret};

#[derive(Debug, clap::Args)]
pub struct NatsConfigArgs {}

/// The whole file.
pub fn render() -> String {
    let users: Vec<(Component, Secret)> = Component::ALL
        .into_iter()
        .map(|c| (c, Secret::Env(c.password_env())))
        .collect();
    let mut out = String::from(
        "# The IM backbone's nats-server configuration: `imctl nats-config`\n\
         # prints it (do not edit by hand; see README, \"Deploying\").\n\
         # Each component connects as its own user and may do only what its\n\
         # code does (ARCHITECTURE.md, \"Trust boundaries\"). The passwords\n\
         # come from the server's environment: IM_NATS_GATEWAY_PASSWORD,\n\
         # IM_NATS_PROJECTOR_PASSWORD, IM_NATS_OPERATOR_PASSWORD,\n\
         # IM_NATS_AUDITOR_PASSWORD.\n\n\
         listen: 0.0.0.0:4222\n\
         server_name: $IM_NATS_SERVER_NAME\n\n\
         jetstream {\n  store_dir: \"/var/lib/nats\"\n}\n\n\
         # TLS for clients: uncomment, and give every component\n\
         # --nats-tls-ca (IM_NATS_TLS_CA) with the CA that signed the cert.\n\
         # tls {\n#   cert_file: \"/etc/nats/server.pem\"\n#   key_file: \"/etc/nats/server-key.pem\"\n# }\n\n",
    );
    out.push_str(&authorization_block(&users));
    out
}

pub fn run(_args: NatsConfigArgs) -> anyhow::Result<()> {
    print!("{}", render());
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The shipped file is what the command prints: regenerate it with
    /// `imctl nats-config > ops/deploy/nats-server.conf`.
    #[test]
    fn the_shipped_config_is_the_generated_one() {
        let shipped = include_str!("../../deploy/nats-server.conf");
        assert_eq!(shipped, super::render());
    }

    /// The pinned nats-server accepts it, passwords from the environment.
    #[test]
    fn nats_server_accepts_the_shipped_config() {
        let binary = im_testkit::nats_server_binary().unwrap();
        let config = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nats-server.conf");
        let mut command = std::process::Command::new(binary);
        command
            .args(["-t", "-c", config])
            .env("IM_NATS_SERVER_NAME", "n1");
        for c in im_streams::identities::Component::ALL {
            command.env(c.password_env(), format!("{}-password", c.user()));
        }
        let out = command.output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && text.contains("is valid"), "{text}");
    }
}
