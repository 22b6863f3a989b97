//! The operator CLI's library: one module per subcommand under `cmd/`; the
//! `imctl` binary only parses arguments and calls these.

pub mod cmd;
