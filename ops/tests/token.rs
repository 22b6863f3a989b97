//! `imctl token issue` and `imctl token check`: a token the local stack
//! takes is "ok" with its user; a refused one exits 1 saying why.

use std::process::Command;

fn imctl(args: &[&str], data: &std::path::Path) -> (bool, String, String) {
    let (code, out, err) = imctl_code(args, data);
    (code == 0, out, err)
}

/// (exit code, stdout, stderr): 1 a refused token, 2 could not check.
fn imctl_code(args: &[&str], data: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_imctl"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("IM_JWT_HS256_SECRET")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_says_whose_a_token_is_or_why_it_is_refused() {
    let data = tempfile::tempdir().unwrap();
    // The secret `imctl up` keeps in its data dir.
    std::fs::write(
        data.path().join("dev-jwt-secret"),
        "a-local-secret-that-is-long-enough-32b",
    )
    .unwrap();
    let (ok, token, err) = imctl(&["token", "issue", "--user", "alice"], data.path());
    assert!(ok, "{err}");
    let (ok, out, err) = imctl(&["token", "check", &token], data.path());
    assert!(ok, "{err}");
    assert_eq!(out, "ok: user alice");

    let other = im_gateway::auth::issue_hs256("another-secret-that-is-32-bytes-long!", "alice", 60);
    let (ok, _, err) = imctl(&["token", "check", &other], data.path());
    assert!(!ok);
    assert!(
        err.contains("refused: the signature does not verify"),
        "{err}"
    );

    let (code, _, err) = imctl_code(&["token", "check", "not.a.jwt"], data.path());
    assert_eq!(code, 1, "a refusal is a problem found: {err}");
    let missing = [
        "token",
        "check",
        "not.a.jwt",
        "--jwt-rs256-public-key-file",
        "/no/key.pem",
    ];
    let (code, _, err) = imctl_code(&missing, data.path());
    assert_eq!(code, 2, "an unreadable key file: could not check: {err}");
    let (ok, _, err) = imctl(&["token", "check", "not.a.jwt"], data.path());
    assert!(!ok);
    assert!(err.contains("refused: not a JWT"), "{err}");

    let bad_user = im_gateway::auth::issue_hs256(
        &std::fs::read_to_string(data.path().join("dev-jwt-secret")).unwrap(),
        "alice@example.com",
        60,
    );
    let (ok, _, err) = imctl(&["token", "check", &bad_user], data.path());
    assert!(!ok);
    assert!(
        err.contains("claim \"sub\" is not a usable user id"),
        "{err}"
    );
}
