//! `imctl token issue` and `imctl token check`: a token the local stack
//! takes is "ok" with its user; a refused one exits 1 saying why.

use std::process::Command;

fn imctl(args: &[&str], data: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_imctl"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("IM_JWT_HS256_SECRET")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_says_whose_a_token_is_or_why_it_is_refused() {
    let data = tempfile::tempdir().unwrap();
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
