//! The gateway's command line as an operator meets it: `--help` names every
//! setting and its variable, `--version`, and `--check-config` says whether
//! it would start (exit 0) or why not (exit 2), without secrets.

use std::process::Command;

const SECRET: &str = "a-secret-of-thirty-two-bytes-or-more!!";

/// Runs the binary with only `env` set: (exit code, stdout + stderr).
fn gateway(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_im-gateway"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn help_names_every_limit_and_its_variable_and_version_answers() {
    let (code, help) = gateway(&["--help"], &[]);
    assert_eq!(code, 0, "{help}");
    for (var, default) in im_gateway::Limits::default().to_env() {
        assert!(help.contains(var), "{var} missing from --help");
        assert!(
            help.contains(&format!("default: {default}")),
            "{var}'s default {default}"
        );
    }
    for var in [
        "IM_GATEWAY_LISTEN",
        "IM_NATS_URL",
        "IM_JWT_JWKS_URL",
        "IM_MEDIA_DIR",
        "IM_WEB_DIR",
    ] {
        assert!(help.contains(var), "{var} missing from --help");
    }
    let (code, version) = gateway(&["--version"], &[]);
    assert_eq!(
        (code, version.trim()),
        (0, concat!("im-gateway ", env!("CARGO_PKG_VERSION")))
    );
}

#[test]
fn check_config_says_whether_it_would_start_and_shows_no_secret() {
    let env = [
        ("IM_JWT_HS256_SECRET", SECRET),
        ("IM_GATEWAY_SENDS_PER_SEC", "7"),
        ("IM_MEDIA_DIR", "/var/lib/im/media"),
    ];
    let (code, out) = gateway(&["--check-config"], &env);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("IM_GATEWAY_SENDS_PER_SEC=7"), "{out}");
    assert!(out.contains("tokens hs256"), "{out}");
    assert!(out.contains("media disk /var/lib/im/media"), "{out}");
    assert!(!out.contains(SECRET), "a secret printed: {out}");

    for (env, why) in [
        (vec![], "set IM_JWT_HS256_SECRET, a public key file"),
        (
            vec![
                ("IM_JWT_HS256_SECRET", SECRET),
                ("IM_GATEWAY_SENDS_PER_SEC", "0"),
            ],
            "limits out of range",
        ),
        (
            vec![
                ("IM_JWT_HS256_SECRET", SECRET),
                ("IM_GATEWAY_SENDS_PER_SEC", "fast"),
            ],
            "invalid value",
        ),
        (
            vec![
                ("IM_JWT_HS256_SECRET", SECRET),
                ("IM_JWT_RS256_PUBLIC_KEY_FILE", "/no/such.pem"),
            ],
            "/no/such.pem",
        ),
        (
            vec![
                ("IM_JWT_HS256_SECRET", SECRET),
                ("IM_MEDIA_DIR", "/m"),
                ("IM_S3_ENDPOINT", "http://s3"),
            ],
            "cannot be used with",
        ),
    ] {
        let (code, out) = gateway(&["--check-config"], &env);
        assert_eq!(code, 2, "{why}: {out}");
        assert!(
            out.to_lowercase().contains(&why.to_lowercase()),
            "{why}: {out}"
        );
        assert!(!out.contains(SECRET), "a secret printed: {out}");
    }
}
