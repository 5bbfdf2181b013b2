//! `lathe chat MODEL`: talk to a base or fine-tuned model, tokens streamed
//! as the server generates them. With a prompt argument it answers once;
//! without, it reads turns from standard input until end of input.

use std::io::{BufRead, Write};

use clap::Args;
use serde_json::json;

use super::connect::Outcome;
use super::output::status_error;
use crate::proto;

#[derive(Args, Debug)]
pub struct ChatArgs {
    /// A registered base model or a fine-tuned model id (ft:...).
    pub model: String,
    /// Say this once and exit (otherwise read turns from standard input).
    pub prompt: Option<String>,
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long)]
    pub top_k: Option<u32>,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: u32,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub stop: Vec<String>,
    /// -2 to 2: lowers a token once the answer holds it.
    #[arg(long, allow_hyphen_values = true)]
    pub presence_penalty: Option<f64>,
    /// -2 to 2: lowers a token for every time the answer holds it.
    #[arg(long, allow_hyphen_values = true)]
    pub frequency_penalty: Option<f64>,
    /// Keep each turn as a stored completion (see `lathe completions`).
    #[arg(long)]
    pub store: bool,
    /// KEY=VALUE metadata kept with stored turns, repeatable.
    #[arg(long = "metadata", value_parser = super::datasets::parse_key_value, requires = "store")]
    pub metadata: Vec<(String, String)>,
}

pub async fn run(addr: &str, json_out: bool, args: ChatArgs) -> anyhow::Result<Outcome> {
    let mut client = super::connect::connect(addr).await?.models();
    let mut messages: Vec<proto::ChatMessage> = Vec::new();
    if let Some(s) = &args.system {
        messages.push(proto::ChatMessage {
            role: "system".into(),
            content: s.clone(),
        });
    }
    let once = args.prompt.is_some();
    let mut lines = std::io::stdin().lock().lines();
    loop {
        let user = match &args.prompt {
            Some(p) => p.clone(),
            None => {
                if !json_out {
                    eprint!("> ");
                }
                match lines.next() {
                    Some(l) => l?,
                    None => break,
                }
            }
        };
        messages.push(proto::ChatMessage {
            role: "user".into(),
            content: user,
        });
        let mut stream = client
            .chat(proto::ChatRequest {
                model: args.model.clone(),
                messages: messages.clone(),
                sampling: Some(proto::SamplingParams {
                    temperature: Some(args.temperature),
                    top_p: args.top_p,
                    top_k: args.top_k,
                    seed: args.seed,
                    max_tokens: Some(args.max_tokens),
                    stop: args.stop.clone(),
                    presence_penalty: args.presence_penalty,
                    frequency_penalty: args.frequency_penalty,
                    logit_bias: Default::default(),
                }),
                store: args.store,
                metadata: args.metadata.iter().cloned().collect(),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        let mut answer = String::new();
        let mut end = None;
        while let Some(msg) = stream.message().await.map_err(status_error)? {
            match msg.payload {
                Some(proto::chat_response::Payload::Delta(d)) => {
                    if !json_out {
                        print!("{d}");
                        std::io::stdout().flush()?;
                    }
                    answer.push_str(&d);
                }
                Some(proto::chat_response::Payload::End(e)) => end = Some(e),
                None => {}
            }
        }
        let end = end.unwrap_or_default();
        if json_out {
            println!(
                "{}",
                json!({"model": args.model, "content": answer, "finish_reason": end.finish_reason,
                       "usage": {"prompt_tokens": end.prompt_tokens, "completion_tokens": end.completion_tokens},
                       "completion_id": (!end.completion_id.is_empty()).then_some(&end.completion_id)})
            );
        } else {
            println!();
            if !end.completion_id.is_empty() {
                eprintln!("(stored as {})", end.completion_id);
            }
        }
        messages.push(proto::ChatMessage {
            role: "assistant".into(),
            content: answer,
        });
        if once {
            break;
        }
    }
    Ok(Outcome::Ok)
}
