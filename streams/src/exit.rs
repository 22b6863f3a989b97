//! How the command-line tools end (`imctl`, `im-replay`): 0 when all is
//! well, 1 when the command ran and found a problem (a projection that
//! differs, a log that fails verification, a finding, a refused token), 2
//! when it could not run (bad arguments, no server, no answer). A script or
//! CI job tells "broken" from "unreachable" by the code alone.

/// A command ran to the end and found a problem: exit 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Found(pub String);

pub const OK: u8 = 0;
pub const FOUND: u8 = 1;
/// clap's own code for bad arguments, too.
pub const COULD_NOT_RUN: u8 = 2;

/// The exit code of a command that failed with `error`: `FOUND` if a
/// `Found` is anywhere in its chain, else `COULD_NOT_RUN`.
pub fn code(error: &(dyn std::error::Error + 'static)) -> u8 {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<Found>() {
            return FOUND;
        }
        next = e.source();
    }
    COULD_NOT_RUN
}

/// A tool's `main` ends here: the error printed (with its causes), then
/// the code its outcome calls for.
pub fn report<E>(outcome: Result<(), E>) -> std::process::ExitCode
where
    E: AsRef<dyn std::error::Error + Send + Sync + 'static> + std::fmt::Debug,
{
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            std::process::ExitCode::from(code(e.as_ref()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("wrapped")]
    struct Wrapped(#[source] Found);

    #[test]
    fn a_finding_anywhere_in_the_chain_is_one_anything_else_two() {
        assert_eq!(code(&Found("differs".into())), FOUND);
        assert_eq!(code(&Wrapped(Found("differs".into()))), FOUND);
        let io = std::io::Error::other("connection refused");
        assert_eq!(code(&io), COULD_NOT_RUN);
    }
}
