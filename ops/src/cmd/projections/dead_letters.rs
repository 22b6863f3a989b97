//! `imctl projections dead-letters [NAME] [--replay] [--json]`: the events
//! a projection set aside, and replaying them (each one's conversation
//! repaired; a letter whose event now decodes is removed). Exit 1 while
//! any letter remains: something in the log is not in the read models.

use std::time::Duration;

use im_schema::v1::{self, query_request::Query, query_response::Result as R};

use super::ask_instance;

#[derive(Debug, clap::Args)]
pub struct DeadLettersArgs {
    /// One projection; all when absent.
    pub name: Option<String>,
    /// Repair each letter's conversation and remove the letters whose
    /// events fold now.
    #[arg(long)]
    pub replay: bool,
    /// One JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub nats: im_streams::connect::NatsArgs,
    #[arg(long, env = "IM_PROJECTOR_INSTANCE", default_value = im_projectors::DEFAULT_INSTANCE)]
    pub instance: String,
}

/// A replay repairs conversations under the projections' batch locks.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn dead_letters(args: DeadLettersArgs) -> anyhow::Result<()> {
    if let Some(name) = &args.name {
        super::selected(&Some(name.clone()), false)?;
    }
    let client = args.nats.connect("imctl").await?;
    let query = Query::DeadLetters(v1::DeadLettersQuery {
        projection: args.name.clone().unwrap_or_default(),
        replay: args.replay,
    });
    let R::DeadLetters(result) =
        ask_instance(&client, &args.instance, query, REPLAY_TIMEOUT).await?
    else {
        anyhow::bail!("instance {}: not a dead-letters answer", args.instance);
    };
    match args.json {
        true => println!("{}", im_schema::to_json(&result)),
        false => print_lines(&result),
    }
    let left: usize = result.projections.iter().map(|p| p.letters.len()).sum();
    if left > 0 {
        let found = format!("{left} dead letter(s) across the projections");
        return Err(im_streams::exit::Found(found).into());
    }
    Ok(())
}

fn print_lines(result: &v1::DeadLettersResult) {
    for p in &result.projections {
        let replayed = match p.replayed {
            0 => String::new(),
            n => format!(" ({n} replayed)"),
        };
        println!("{}: {} dead letters{replayed}", p.name, p.letters.len());
        for l in &p.letters {
            println!(
                "  {} #{} {}: {}",
                l.stream, l.stream_seq, l.subject, l.reason
            );
        }
    }
}
